// The harness itself: a real steward on a throwaway PostgreSQL answers the browser, and a
// SIGKILL and restart on the same ports brings it back. The client and deck tests build on it.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { startDatabase, Steward, launchChromium } from '../harness/steward.mjs';

let db;
let steward;
before(async () => {
  db = await startDatabase();
  steward = await Steward.start(db.url);
});
after(async () => {
  if (steward) await steward.stop();
  if (db) await db.stop();
});

test('Chromium reaches steward and reads its JSON', async () => {
  const browser = await launchChromium();
  try {
    const page = await browser.newPage();
    const res = await page.goto(steward.url + '/readyz');
    assert.equal(res.status(), 200);
    const body = JSON.parse(await page.textContent('body'));
    assert.equal(body.status, 'ready');
  } finally {
    await browser.close();
  }
});

test('a killed steward restarts on the same ports', async () => {
  const port = steward.httpPort;
  await steward.kill();
  await assert.rejects(fetch(steward.url + '/livez'));
  await steward.restart();
  assert.equal(steward.httpPort, port);
  const res = await steward.request('GET', '/livez', { key: null });
  assert.equal(res.status, 200);
  assert.deepEqual(steward.sanitizerReports(), []);
});
