// The package as published: at most 4 KB minified and gzipped, hand-written types that
// tsc accepts for an app's use (and that refuse misuse), the same names exported by the
// code and declared by the types, and no dependencies.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { minify } from 'terser';
import * as client from '../src/index.js';

const PKG = join(dirname(fileURLToPath(import.meta.url)), '..');
const ROOT = join(PKG, '..', '..');
const BUDGET = 4096;

test(`the client is at most ${BUDGET} bytes minified and gzipped`, async (t) => {
  const src = readFileSync(join(PKG, 'src', 'index.js'), 'utf8');
  const min = await minify(src, { module: true, compress: { passes: 2 }, mangle: true });
  const gz = gzipSync(min.code, { level: 9 }).length;
  t.diagnostic(`${src.length} bytes, ${min.code.length} minified, ${gz} minified and gzipped`);
  assert.ok(gz <= BUDGET, `${gz} bytes minified and gzipped, over ${BUDGET}`);
  // the minified module still works: it is what a bundler would ship
  const mod = await import('data:text/javascript,' + encodeURIComponent(min.code));
  assert.equal(typeof mod.StewardDevice, 'function');
  assert.equal(mod.backoffDelay(0, () => 1), 500);
});

test('index.d.ts: an app type-checks against it, and misuse does not (tsc --noEmit)', async () => {
  const tsc = join(ROOT, 'node_modules', '.bin', 'tsc');
  const project = join(PKG, 'test', 'types', 'tsconfig.json');
  try {
    await promisify(execFile)(tsc, ['--noEmit', '-p', project], { cwd: ROOT });
  } catch (e) {
    assert.fail(`tsc found errors:\n${e.stdout}${e.stderr}`);
  }
});

test('the code exports what the types declare; the package has no dependencies', () => {
  const dts = readFileSync(join(PKG, 'index.d.ts'), 'utf8');
  const declared = [...dts.matchAll(/^export declare (?:class|function|const) (\w+)/gm)]
    .map((m) => m[1])
    .sort();
  assert.deepEqual(Object.keys(client).sort(), declared);
  const pkg = JSON.parse(readFileSync(join(PKG, 'package.json'), 'utf8'));
  assert.equal(pkg.name, 'steward-device');
  assert.equal(pkg.type, 'module');
  assert.equal(pkg.exports['.'].default, './src/index.js');
  assert.equal(pkg.types, './index.d.ts');
  for (const k of ['dependencies', 'peerDependencies', 'optionalDependencies'])
    assert.equal(pkg[k], undefined, k);
});
