// The device client (clients/js) in headless Chromium against the real steward and a
// throwaway PostgreSQL. The page imports clients/js/src/index.js unchanged, from a local
// server whose CSP allows only its own scripts (no inline script, no eval). Scenarios:
// delivery and acks, no second handler call across a reconnect, SIGKILL and restart,
// SIGSTOP past the heartbeat window, a deleted device, backoff timing under Playwright's
// clock, and no console errors. One page runs a client per scenario (a page costs seconds
// on a loaded machine); the clock scenario has its own, and runs while steward is paused.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startDatabase, Steward, launchChromium, ROOT } from '../harness/steward.mjs';
import {
  uid,
  newDevice,
  newScout,
  ingest,
  deleteDevice,
  proposalRow,
  until,
} from '../harness/devices.mjs';

const HEARTBEAT_S = 1;
const WINDOW_MS = (HEARTBEAT_S + 10) * 1000; // the client's liveness window
const FILES = {
  '/': ['tests/browser/device-client/page.html', 'text/html'],
  '/page.js': ['tests/browser/device-client/page.js', 'text/javascript'],
  '/client/index.js': ['clients/js/src/index.js', 'text/javascript'],
};
// Chromium's own line when a WebSocket cannot connect (steward killed, or a dead port):
// the network stack writes it, no script can avoid it
const CONNECT_FAILED = /^WebSocket connection to 'ws:\/\/127\.0\.0\.1:\d+\/v1\/devices\/ws' failed/;

let db, steward, web, browser, origin, page;
const pages = []; // { name, console: [], pageErrors: [] }

function serve() {
  web = createServer((req, res) => {
    const f = FILES[req.url];
    if (!f) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, {
      'content-type': f[1],
      'content-security-policy':
        "default-src 'none'; script-src 'self'; connect-src ws://127.0.0.1:*; base-uri 'none'",
    });
    res.end(readFileSync(join(ROOT, f[0])));
  });
  return new Promise((r) => web.listen(0, '127.0.0.1', r));
}

async function openPage(name, { clock = false } = {}) {
  const p = await browser.newPage();
  const rec = { name, console: [], pageErrors: [] };
  pages.push(rec);
  p.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') rec.console.push(m.text());
  });
  p.on('pageerror', (e) => rec.pageErrors.push(String(e)));
  if (clock) await p.clock.install({ time: new Date('2026-06-01T00:00:00Z') });
  await p.goto(origin + '/');
  await p.waitForFunction(() => window.steward);
  return p;
}

before(async () => {
  // the slow starts side by side
  const started = Promise.all([
    startDatabase().then(async (d) => {
      db = d;
      steward = await Steward.start(db.url, { STEWARD_WS_HEARTBEAT_S: HEARTBEAT_S });
    }),
    launchChromium().then((b) => (browser = b)),
    serve(),
  ]);
  await started;
  origin = `http://127.0.0.1:${web.address().port}`;
  page = await openPage('main');
});
after(async () => {
  if (web) web.close();
  await Promise.all([
    browser && browser.close(),
    (async () => {
      if (steward) await steward.stop();
      if (db) await db.stop();
    })(),
  ]);
});

/** A new user with a device and a scout, and a client for it on the page. */
async function client(opts = {}) {
  const user = uid();
  const dev = await newDevice(steward, user);
  const scout = await newScout(steward, user);
  const i = await page.evaluate((o) => window.steward.start(o), {
    url: steward.wsUrl,
    deviceId: dev.device_id,
    token: dev.token,
    ...opts,
  });
  const view = () => page.evaluate((k) => window.steward.view(k), i);
  const c = {
    i,
    dev,
    scout,
    view,
    release: () => page.evaluate((k) => window.steward.release(k), i),
    stop: () => page.evaluate((k) => window.steward.clients[k].dev.stop(), i),
    until: (what, fn, ms = 15000) => until(async () => fn(await view()), ms, what),
  };
  await c.until('ready', (v) => v.state === 'ready');
  return c;
}

const status = (id) => proposalRow(db.url, id)?.status;
const acked = (id) => until(() => status(id) === 'acked', 15000, `${id} acked`);

test('1. proposals ingested over REST reach the page and are acked in the database', async () => {
  const c = await client();
  const ids = [];
  for (const ref of ['b1', 'b2', 'b3']) ids.push(await ingest(steward, c.scout.id, ref));
  for (const id of ids) await acked(id);
  await c.until('ack_ok', (v) => v.stats.acks === 3, 5000);
  const v = await c.view();
  assert.deepEqual(v.calls, ids);
  assert.deepEqual(v.stats, { connects: 1, proposals: 3, duplicates: 0, acks: 3, lastError: null });
  assert.deepEqual(v.errors, []);
  // the ids seen are in localStorage, under the device's key
  const key = `steward-device:${c.dev.device_id}:seen`;
  assert.deepEqual(JSON.parse(await page.evaluate((k) => localStorage.getItem(k), key)), ids);
  await c.stop();
  assert.equal((await c.view()).state, 'stopped');
});

test('2. across a reconnect, a redelivered proposal does not reach the handler twice', async () => {
  const c = await client({ hold: true });
  const id = await ingest(steward, c.scout.id, 'r1');
  await c.until('the handler', (v) => v.calls.length === 1);
  // the connection goes while the handler still works; steward sends the proposal again
  await page.evaluate((k) => window.steward.clients[k].sockets.at(-1).close(), c.i);
  await c.until('the redelivery', (v) => v.stats.duplicates === 1);
  let v = await c.view();
  assert.equal(v.stats.connects, 2);
  assert.equal(v.sockets, 2);
  assert.equal(proposalRow(db.url, id).attempts, 2, 'steward delivered it twice');
  assert.equal(status(id), 'delivered');
  await c.release();
  await acked(id);
  v = await c.view();
  assert.deepEqual(v.calls, [id]);
  await c.stop();
});

test('3. steward SIGKILLed and restarted: the page reconnects and gets what it had not acked', async () => {
  const c = await client({ hold: true });
  const id = await ingest(steward, c.scout.id, 'k1');
  await c.until('the handler', (v) => v.calls.length === 1);
  await steward.kill();
  await c.until('backoff', (v) => v.state === 'backoff');
  await steward.restart();
  await c.until('reconnected', (v) => v.stats.connects === 2, 30000);
  await c.until('the redelivery', (v) => v.stats.duplicates === 1);
  await c.release();
  await acked(id);
  const later = await ingest(steward, c.scout.id, 'k2');
  await acked(later);
  assert.deepEqual((await c.view()).calls, [id, later]);
  await c.stop();
  assert.deepEqual(steward.sanitizerReports(), []);
});

async function paused() {
  const c = await client();
  steward.pause();
  const t0 = Date.now();
  let silent;
  try {
    await c.until('the dead connection noticed', (v) => v.state !== 'ready', WINDOW_MS + 15000);
    silent = Date.now() - t0;
  } finally {
    steward.resume();
  }
  // the heartbeats had kept it alive; the client gave up only after the window
  assert.ok(silent >= WINDOW_MS - 1500, `noticed after ${silent} ms, not before ${WINDOW_MS}`);
  assert.ok(silent < WINDOW_MS + 8000, `noticed after ${silent} ms`);
  await c.until('reconnected', (v) => v.stats.connects === 2, 30000);
  assert.match((await c.view()).stats.lastError, /silent/);
  const id = await ingest(steward, c.scout.id, 'p1');
  await acked(id);
  await c.stop();
}

async function clock() {
  // a port nobody listens on: every attempt fails at once
  const probe = createServer();
  await new Promise((r) => probe.listen(0, '127.0.0.1', r));
  const deadPort = probe.address().port;
  await new Promise((r) => probe.close(r));

  const p = await openPage('clock', { clock: true });
  await p.clock.pauseAt(new Date('2026-06-01T00:00:10Z'));
  await p.evaluate((o) => window.steward.start(o), {
    url: `ws://127.0.0.1:${deadPort}/v1/devices/ws`,
    deviceId: '6f1c0d3e-6a57-4b0e-9d53-0c3a4f0d7a21',
    token: 'dev_x',
    storage: false,
  });
  const view = () => p.evaluate(() => window.steward.view(0));
  const backoffs = (v) => v.states.filter((s) => s.state === 'backoff');
  const delays = [];
  for (let attempt = 0; attempt < 8; attempt++) {
    const v = await until(async () => {
      const x = await view();
      return backoffs(x).length === attempt + 1 && x;
    }, 15000, `backoff ${attempt + 1}`);
    const b = backoffs(v).at(-1);
    assert.equal(v.opened.length, attempt + 1);
    assert.equal(b.attempt, attempt + 1);
    assert.equal(b.code, 1006);
    const cap = Math.min(30000, 500 * 2 ** attempt);
    assert.ok(b.delay >= 100 && b.delay <= cap, `delay ${b.delay} within [100, ${cap}]`);
    delays.push(b.delay);
    await p.clock.runFor(b.delay - 1);
    await sleep(50);
    assert.equal((await view()).opened.length, attempt + 1, `no attempt before ${b.delay} ms`);
    await p.clock.runFor(1);
    const next = await until(async () => {
      const x = await view();
      return x.opened.length === attempt + 2 && x;
    }, 5000, `attempt ${attempt + 2}`);
    assert.equal(next.opened.at(-1) - b.at, b.delay, 'the attempt came when the delay ran out');
  }
  assert.ok(new Set(delays).size > 1, 'jittered');
  // the browser coming back online, or the page becoming visible, skips the wait
  const inBackoff = async () =>
    until(async () => {
      const x = await view();
      return x.state === 'backoff' && x;
    }, 15000, 'backoff');
  const n = (await inBackoff()).opened.length;
  await p.evaluate(() => window.dispatchEvent(new Event('online')));
  await until(async () => (await view()).opened.length === n + 1, 5000, 'online: at once');
  await inBackoff();
  await p.evaluate(() => document.dispatchEvent(new Event('visibilitychange')));
  await until(async () => (await view()).opened.length === n + 2, 5000, 'visible: at once');
  await p.evaluate(() => window.steward.clients[0].dev.stop());
}

// 4 waits out the liveness window in real time; 6 needs no steward and runs meanwhile
test('4 and 6', { concurrency: 2 }, async (t) => {
  await Promise.all([
    t.test('4. steward SIGSTOPped past the heartbeat window: the page drops the connection, then reconnects', paused),
    t.test('6. backoff timing under Playwright clock control', clock),
  ]);
});

test('5. the device deleted over REST: revoked, and no further connection attempts', async () => {
  const c = await client();
  const n = (await c.view()).sockets;
  await deleteDevice(steward, c.dev.device_id);
  await c.until('revoked', (v) => v.state === 'revoked');
  await sleep(1500); // a retry would come within 0.5 s
  const v = await c.view();
  assert.equal(v.state, 'revoked');
  assert.equal(v.sockets, n);
  const hellos = steward
    .logRecords()
    .filter((r) => r.msg === 'device connected' && r.device_id === c.dev.device_id);
  assert.equal(hellos.length, 1);
});

test('7. no console errors', () => {
  assert.equal(pages.length, 2);
  for (const p of pages) {
    assert.deepEqual(p.pageErrors, [], `${p.name}: uncaught errors`);
    const other = p.console.filter((t) => !CONNECT_FAILED.test(t));
    assert.deepEqual(other, [], `${p.name}: console errors and warnings`);
  }
  // the listener works: Chromium's line for each failed attempt on the dead port is there
  const clockPage = pages.find((p) => p.name === 'clock');
  assert.ok(clockPage.console.length >= 8, clockPage.console.join('\n'));
});
