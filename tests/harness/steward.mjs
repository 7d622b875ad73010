// The Node side of the test harness: a throwaway PostgreSQL (tests/harness/pgserve.py) and
// the real steward binary on free ports, for the JavaScript tests (node:test) of the device
// client and the Observation Deck. Mirrors tests/harness/steward.py.
//
//   import { startDatabase, Steward, launchChromium } from '../harness/steward.mjs';
//   const db = await startDatabase();            // db.url, await db.stop()
//   const s = await Steward.start(db.url, { STEWARD_WS_HEARTBEAT_S: 2 });
//   await s.request('GET', '/v1/bonds');        // admin key by default
//   s.pause(); s.resume(); await s.kill(); await s.restart(); await s.stop();
//   psql(db.url, "SELECT status FROM proposals WHERE id = :'id'", { id });
import { spawn, execFileSync } from 'node:child_process';
import { openSync, closeSync, readFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const ADMIN_KEY = 'stw_test_admin_key_0123456789abcdef';
const PYTHON = '/usr/bin/python3';
let logSerial = 0;

export function stewardBinary() {
  const path = process.env.STEWARD_BIN || join(ROOT, 'build-test', 'steward');
  if (!existsSync(path)) throw new Error(`steward binary not found at ${path}; build first`);
  return path;
}

let dbSerial = 0;

/**
 * A throwaway database. When STEWARD_TEST_PG_URL names a running cluster (scripts/js-test
 * starts one for all the files), a fresh database in it, dropped by stop(): starting a
 * cluster takes seconds. Else a cluster of its own; resolves once it accepts connections.
 */
export async function startDatabase() {
  const shared = process.env.STEWARD_TEST_PG_URL;
  if (shared) {
    dbSerial += 1;
    const name = `js_${process.pid}_${dbSerial}`;
    execFileSync('psql', [shared, '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-c', `CREATE DATABASE ${name}`]);
    const u = new URL(shared);
    u.pathname = '/' + name;
    return {
      url: u.toString(),
      async stop() {
        execFileSync('psql', [shared, '-X', '-q', '-c', `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`]);
      },
    };
  }
  const proc = spawn(PYTHON, [join(ROOT, 'tests', 'harness', 'pgserve.py')], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  proc.stderr.on('data', (d) => (err += d));
  const url = await new Promise((resolve, reject) => {
    proc.stdout.on('data', (d) => {
      out += d;
      const nl = out.indexOf('\n');
      if (nl >= 0) resolve(out.slice(0, nl).trim());
    });
    proc.on('exit', (code) => reject(new Error(`pgserve exited ${code}: ${err}`)));
  });
  return {
    url,
    async stop() {
      if (proc.exitCode !== null) return;
      const done = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGTERM');
      await done;
    },
  };
}

/**
 * Runs SQL through psql against dbUrl; answers the rows as arrays of text. vars become psql
 * variables, so values go in quoted as :'name' and never into the statement text.
 */
export function psql(dbUrl, query, vars = {}) {
  const args = [dbUrl, '-X', '-A', '-t', '-q', '-F', '\t', '-v', 'ON_ERROR_STOP=1'];
  for (const [k, v] of Object.entries(vars)) args.push('-v', `${k}=${v}`);
  const out = execFileSync('psql', args, { input: query, encoding: 'utf8' });
  return out
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => l.split('\t'));
}

function baseEnv(dbUrl, settings) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('STEWARD_')) env[k] = v;
  Object.assign(env, {
    STEWARD_DATABASE_URL: dbUrl,
    STEWARD_HTTP_PORT: '0',
    STEWARD_WS_PORT: '0',
    STEWARD_ADMIN_KEY: ADMIN_KEY,
    STEWARD_LOG_LEVEL: 'info',
    ASAN_OPTIONS: 'detect_leaks=1:abort_on_error=0:halt_on_error=1',
    UBSAN_OPTIONS: 'print_stacktrace=1:halt_on_error=1',
    LSAN_OPTIONS: 'suppressions=' + join(ROOT, 'tests', 'harness', 'lsan.supp'),
  });
  for (const [k, v] of Object.entries(settings)) env[k] = String(v);
  return env;
}

/** One steward process; logs go to a file, ports come from its "serving" line. */
export class Steward {
  constructor(dbUrl, settings) {
    this.dbUrl = dbUrl;
    this.settings = settings;
    // steward-*.log in the temporary directory: ./scripts/test scans these for secrets
    logSerial += 1;
    this.logPath = join(tmpdir(), `steward-js-${process.pid}-${logSerial}.log`);
    this.proc = null;
    this.httpPort = this.wsPort = null;
  }

  static async start(dbUrl, settings = {}) {
    const s = new Steward(dbUrl, settings);
    await s.#spawn();
    return s;
  }

  logRecords() {
    let text = '';
    try {
      text = readFileSync(this.logPath, 'utf8');
    } catch {
      return [];
    }
    const out = [];
    for (const line of text.split('\n')) {
      try {
        out.push(JSON.parse(line));
      } catch {
        /* not a JSON line */
      }
    }
    return out;
  }

  async #spawn() {
    const before = this.logRecords().filter((r) => r.msg === 'serving').length;
    const fd = openSync(this.logPath, 'a');
    this.proc = spawn(stewardBinary(), ['serve'], {
      env: baseEnv(this.dbUrl, this.settings),
      stdio: ['ignore', fd, fd],
    });
    closeSync(fd);
    const deadline = Date.now() + 30000;
    while (Date.now() < deadline) {
      const serving = this.logRecords().filter((r) => r.msg === 'serving');
      if (serving.length > before) {
        this.httpPort = serving.at(-1).http_port;
        this.wsPort = serving.at(-1).ws_port;
        return;
      }
      if (this.proc.exitCode !== null) break;
      await sleep(50);
    }
    throw new Error('steward did not start:\n' + readFileSync(this.logPath, 'utf8').slice(-3000));
  }

  get url() {
    return `http://127.0.0.1:${this.httpPort}`;
  }

  get wsUrl() {
    return `ws://127.0.0.1:${this.wsPort}/v1/devices/ws`;
  }

  /** A REST call; answers { status, headers, body } with body parsed when it is JSON. */
  async request(method, path, { key = ADMIN_KEY, body, headers = {} } = {}) {
    const h = { ...headers };
    if (key) h.authorization = `Bearer ${key}`;
    let payload;
    if (body !== undefined) {
      h['content-type'] = 'application/json';
      payload = JSON.stringify(body);
    }
    const res = await fetch(this.url + path, { method, headers: h, body: payload });
    const text = await res.text();
    let parsed = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      /* not JSON */
    }
    return { status: res.status, headers: res.headers, body: parsed };
  }

  /** SIGSTOP: the process stays, its sockets stay open, nothing answers. */
  pause() {
    this.proc.kill('SIGSTOP');
  }

  resume() {
    this.proc.kill('SIGCONT');
  }

  async #wait(signal, timeoutMs) {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return this.proc.exitCode;
    const done = new Promise((r) => this.proc.once('exit', (code) => r(code)));
    this.proc.kill(signal);
    const t = setTimeout(() => this.proc.kill('SIGKILL'), timeoutMs);
    const code = await done;
    clearTimeout(t);
    return code;
  }

  /** SIGKILL: no goodbye to anyone. */
  async kill() {
    this.resume();
    await this.#wait('SIGKILL', 5000);
  }

  /** Starts the process again on the same ports (after kill or stop). */
  async restart() {
    this.settings = {
      ...this.settings,
      STEWARD_HTTP_PORT: this.httpPort,
      STEWARD_WS_PORT: this.wsPort,
    };
    await this.#spawn();
  }

  /** SIGTERM and wait; answers the exit status. */
  async stop() {
    this.resume();
    return this.#wait('SIGTERM', 15000);
  }

  sanitizerReports() {
    const text = existsSync(this.logPath) ? readFileSync(this.logPath, 'utf8') : '';
    const bad = ['ERROR: AddressSanitizer', 'ERROR: LeakSanitizer', 'runtime error:'];
    return text.split('\n').filter((l) => bad.some((b) => l.includes(b)));
  }
}

/** Runs SQL through psql against dbUrl; answers its unaligned, tuples-only output. */
export function psqlText(dbUrl, text) {
  return execFileSync('psql', [dbUrl, '-v', 'ON_ERROR_STOP=1', '-qAtX', '-c', text], {
    encoding: 'utf8',
  }).trim();
}

/** Debian's Chromium through playwright-core (no browser is downloaded). */
export async function launchChromium() {
  const { chromium } = await import('playwright-core');
  return chromium.launch({
    executablePath: process.env.STEWARD_CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-dev-shm-usage'],
  });
}
