// Unit tests of the device client with node:test's fake timers and a scripted socket:
// backoff bounds and jitter, the reset after a stable connection, the close-code policy,
// liveness, the dedupe set and its bounds, acks across reconnects, and the storage adapter.
import { test, mock, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import {
  StewardDevice,
  backoffDelay,
  closePolicy,
  MAX_SEEN,
  VERSION,
} from '../src/index.js';
import { FakeSocket, flush, proposal } from './fake.mjs';

const DEVICE = '6f1c0d3e-6a57-4b0e-9d53-0c3a4f0d7a21';

beforeEach(() => {
  FakeSocket.reset();
  mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 });
});
afterEach(() => mock.timers.reset());

function device(extra = {}) {
  const seen = [];
  const states = [];
  const errors = [];
  let tokens = 0;
  const dev = new StewardDevice({
    url: 'ws://steward.test/v1/devices/ws',
    deviceId: DEVICE,
    getToken: async () => `dev_token_${++tokens}`,
    onProposal: async (p) => seen.push(p.id),
    WebSocket: FakeSocket,
    ...extra,
  });
  dev.on('state', (s, info) => states.push({ s, ...info }));
  dev.on('error', (e) => errors.push(e));
  return { dev, seen, states, errors, tokens: () => tokens };
}

/** Opens the newest socket and completes the hello. */
async function hello(heartbeat_s = 30) {
  await flush();
  const ws = FakeSocket.last();
  ws.open();
  ws.recv({ type: 'hello_ok', session_id: 'i-1', server_time: 'x', heartbeat_s });
  await flush();
  return ws;
}

const tick = async (ms) => {
  mock.timers.tick(ms);
  await flush();
};

test('backoffDelay: full jitter between 100 ms and a cap doubling from 0.5 s to 30 s', () => {
  const caps = [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000];
  caps.forEach((cap, attempt) => {
    assert.equal(backoffDelay(attempt, () => 0), 100, `floor at attempt ${attempt}`);
    assert.equal(backoffDelay(attempt, () => 1), cap, `cap at attempt ${attempt}`);
  });
  assert.equal(backoffDelay(1000, () => 1), 30000);
  // jitter: spread over the whole range, not clustered
  const xs = Array.from({ length: 2000 }, () => backoffDelay(6));
  assert.ok(Math.min(...xs) >= 100 && Math.max(...xs) <= 30000);
  assert.ok(Math.min(...xs) < 3000 && Math.max(...xs) > 27000, 'covers the range');
  assert.ok(new Set(xs).size > 1000, 'values vary');
});

test('failed connects back off within the bounds, and never retry before the delay', async () => {
  const { dev, states } = device();
  dev.start();
  for (let attempt = 0; attempt < 9; attempt++) {
    await flush();
    const ws = FakeSocket.last();
    assert.equal(FakeSocket.all.length, attempt + 1);
    ws.drop(1006);
    const b = states.at(-1);
    assert.equal(b.s, 'backoff');
    assert.equal(b.code, 1006);
    assert.equal(b.attempt, attempt + 1);
    const cap = Math.min(30000, 500 * 2 ** attempt);
    assert.ok(b.delay >= 100 && b.delay <= cap, `delay ${b.delay} within [100, ${cap}]`);
    await tick(b.delay - 1);
    assert.equal(FakeSocket.all.length, attempt + 1, 'no attempt before the delay');
    assert.equal(dev.state, 'backoff');
    await tick(1);
    assert.equal(dev.state, 'connecting');
  }
  dev.stop();
});

test('the backoff starts over after 10 s of stable connection, not before', async () => {
  const { dev, states } = device();
  dev.start();
  for (let i = 0; i < 4; i++) {
    await flush();
    FakeSocket.last().drop(1006);
    await tick(states.at(-1).delay);
  }
  let ws = await hello();
  await tick(9000); // not stable yet
  ws.drop(1001);
  assert.equal(states.at(-1).attempt, 5, 'the count goes on');
  await tick(states.at(-1).delay);
  ws = await hello();
  await tick(10000);
  ws.drop(1001);
  assert.equal(states.at(-1).attempt, 1, 'starts over');
  assert.ok(states.at(-1).delay <= 500);
  dev.stop();
});

test('close codes: which retry with backoff, which end, and 4401 retries once with a new token', async () => {
  assert.equal(closePolicy(4401), 'reauth');
  assert.equal(closePolicy(4403), 'revoked');
  for (const code of [1001, 1006, 1008, 1011, 1012, 1013, 4408, 1000, 1005])
    assert.equal(closePolicy(code), 'retry', `close ${code}`);

  // retried with backoff, each
  for (const code of [1001, 1006, 1008, 1012, 1013, 4408]) {
    FakeSocket.reset();
    const { dev, errors } = device();
    dev.start();
    await hello();
    FakeSocket.last().drop(code);
    assert.equal(dev.state, 'backoff', `close ${code}`);
    assert.equal(errors.length, 0, `close ${code} is no error`);
    await tick(30000);
    assert.equal(FakeSocket.all.length, 2, `close ${code} reconnects`);
    dev.stop();
  }

  // protocol errors: reported, then retried
  FakeSocket.reset();
  let d = device();
  d.dev.start();
  await hello();
  FakeSocket.last().drop(1007);
  assert.equal(d.dev.state, 'backoff');
  assert.equal(d.errors.length, 1);
  assert.equal(d.errors[0].code, 1007);
  d.dev.stop();

  // 4401: a fresh token at once, then terminal
  FakeSocket.reset();
  d = device();
  d.dev.start();
  await flush();
  FakeSocket.last().open();
  FakeSocket.last().recv({ type: 'error', code: 'unauthorized' });
  FakeSocket.last().drop(4401);
  assert.equal(d.dev.state, 'connecting', 'no wait before the one retry');
  await flush();
  assert.equal(FakeSocket.all.length, 2);
  assert.equal(d.tokens(), 2, 'the token is fetched again');
  FakeSocket.last().open();
  assert.equal(FakeSocket.last().sent[0].token, 'dev_token_2');
  FakeSocket.last().drop(4401);
  assert.equal(d.dev.state, 'unauthorized');
  await tick(120000);
  assert.equal(FakeSocket.all.length, 2, 'no attempt after unauthorized');
  assert.deepEqual(d.errors, [], 'an error frame that comes with a close is not reported twice');

  // a 4401 after a good session gets its one retry again
  FakeSocket.reset();
  d = device();
  d.dev.start();
  await flush();
  FakeSocket.last().drop(4401);
  await hello();
  assert.equal(d.dev.state, 'ready');
  FakeSocket.last().drop(4401);
  assert.equal(d.dev.state, 'connecting');
  d.dev.stop();

  // 4403: revoked, for good
  FakeSocket.reset();
  d = device();
  d.dev.start();
  await hello();
  FakeSocket.last().drop(4403);
  assert.equal(d.dev.state, 'revoked');
  await tick(120000);
  assert.equal(FakeSocket.all.length, 1);
  d.dev.wake();
  d.dev.start();
  await flush();
  assert.equal(FakeSocket.all.length, 1, 'wake and start do nothing after revoked');
});

test('error frames are reported; a garbled frame reconnects; unknown types are ignored', async () => {
  const { dev, errors, states } = device();
  dev.start();
  const ws = await hello();
  ws.recv({ type: 'heartbeat' });
  ws.recv({ type: 'something_new', x: 1 });
  assert.equal(dev.state, 'ready');
  assert.equal(errors.length, 0);
  ws.recv({ type: 'error', code: 'not_found', proposal_id: 'p-x' });
  assert.equal(errors.length, 1);
  assert.equal(errors[0].code, 'not_found');
  assert.equal(errors[0].proposalId, 'p-x');
  ws.recv('{not json');
  assert.equal(errors.length, 2);
  assert.equal(errors[1].code, 'protocol');
  assert.equal(dev.state, 'backoff');
  assert.equal(states.at(-1).s, 'backoff');
  assert.equal(ws.closedWith, 'terminated', 'the socket is let go');
  assert.match(dev.stats.lastError, /JSON object/);
  dev.stop();
});

test('the hello carries the device id, the token and the client name and version', async () => {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url)));
  assert.equal(VERSION, pkg.version);
  const { dev } = device();
  dev.start();
  await flush();
  const ws = FakeSocket.last();
  assert.equal(ws.url, 'ws://steward.test/v1/devices/ws');
  assert.deepEqual(ws.sent, []);
  ws.open();
  assert.deepEqual(ws.sent, [
    {
      type: 'device_hello',
      device_id: DEVICE,
      token: 'dev_token_1',
      client: { name: 'steward-device', version: pkg.version },
    },
  ]);
  dev.stop();
  assert.equal(ws.closedWith, 1000);
  assert.equal(dev.state, 'stopped');
});

test('liveness: silence past heartbeat_s + 10 s drops the connection; heartbeats keep it', async () => {
  const { dev, states } = device();
  dev.start();
  let ws = await hello(5);
  for (let i = 0; i < 12; i++) {
    await tick(5000);
    ws.recv({ type: 'heartbeat' });
  }
  assert.equal(dev.state, 'ready', 'a minute of heartbeats');
  await tick(14999);
  assert.equal(dev.state, 'ready');
  await tick(1);
  assert.equal(dev.state, 'backoff', '15 s of silence');
  assert.equal(ws.closedWith, 'terminated');
  assert.match(dev.stats.lastError, /silent/);
  await tick(states.at(-1).delay);
  assert.equal(FakeSocket.all.length, 2);
  // no hello_ok within 15 s of connecting
  await flush();
  FakeSocket.last().open();
  await tick(15000);
  assert.equal(dev.state, 'backoff');
  dev.stop();
});

test('wake() reconnects at once from backoff, and checks a quiet connection', async () => {
  const { dev } = device();
  dev.start();
  await flush();
  FakeSocket.last().drop(1006);
  assert.equal(dev.state, 'backoff');
  dev.wake();
  await flush();
  assert.equal(FakeSocket.all.length, 2);
  await hello(30);
  dev.wake();
  assert.equal(dev.state, 'ready', 'a live connection stays');
  // the machine slept: no timer ran, but the clock moved
  mock.timers.setTime(Date.now() + 3600_000);
  dev.wake();
  assert.equal(dev.state, 'backoff');
  dev.stop();
});

test('stop is final: no reconnect, no ack, no state change after it', async () => {
  const { dev, states } = device();
  dev.start();
  const ws = await hello();
  dev.stop();
  assert.equal(ws.closedWith, 1000);
  const n = states.length;
  ws.drop(1006); // the close event after stop
  await tick(300000);
  dev.start();
  dev.wake();
  await flush();
  assert.equal(FakeSocket.all.length, 1);
  assert.equal(states.length, n);
  assert.equal(dev.state, 'stopped');
});

test('each proposal reaches the handler once; a duplicate is acked again', async () => {
  const { dev, seen } = device();
  const events = [];
  const off = dev.on('proposal', (p) => events.push(p.id));
  dev.on('resolved', (id) => events.push('resolved ' + id));
  dev.start();
  const ws = await hello();
  ws.recv(proposal('p1'));
  ws.recv(proposal('p2'));
  ws.recv(proposal('p1')); // while its handler runs: not acked twice
  await flush();
  assert.deepEqual(seen, ['p1', 'p2']);
  assert.deepEqual(ws.acks(), ['p1', 'p2']);
  ws.recv(proposal('p1'));
  await flush();
  assert.deepEqual(seen, ['p1', 'p2']);
  assert.deepEqual(ws.acks(), ['p1', 'p2', 'p1']);
  ws.recv({ type: 'ack_ok', proposal_id: 'p1' });
  ws.recv({ type: 'scout_proposal_resolved', proposal_id: 'p9' });
  off();
  ws.recv(proposal('p3'));
  await flush();
  assert.deepEqual(events, ['p1', 'p2', 'resolved p9']);
  assert.deepEqual(dev.stats, {
    connects: 1,
    proposals: 3,
    duplicates: 2,
    acks: 1,
    lastError: null,
  });
  dev.stop();
});

test('a handler that throws leaves the proposal unacked; its redelivery runs it again', async () => {
  let fail = true;
  const calls = [];
  const { dev, errors } = device({
    onProposal: async (p) => {
      calls.push(p.id);
      if (fail) throw new Error('disk full');
    },
  });
  dev.start();
  const ws = await hello();
  ws.recv(proposal('p1'));
  await flush();
  assert.deepEqual(ws.acks(), []);
  assert.equal(errors.length, 1);
  assert.equal(errors[0].message, 'disk full');
  assert.equal(errors[0].proposalId, 'p1');
  fail = false;
  ws.recv(proposal('p1'));
  await flush();
  assert.deepEqual(calls, ['p1', 'p1']);
  assert.deepEqual(ws.acks(), ['p1']);
  dev.stop();
});

test('acks that could not be sent, or were not confirmed, go out after the next hello', async () => {
  let release;
  const gate = new Promise((r) => (release = r));
  const { dev, states } = device({
    onProposal: async (p) => {
      if (p.id === 'slow') await gate;
    },
  });
  dev.start();
  let ws = await hello();
  ws.recv(proposal('fast'));
  ws.recv(proposal('slow'));
  await flush();
  assert.deepEqual(ws.acks(), ['fast']); // sent, never confirmed
  ws.drop(1006);
  release();
  await flush();
  await tick(states.at(-1).delay);
  await flush();
  ws = FakeSocket.last();
  ws.open();
  assert.deepEqual(ws.acks(), [], 'nothing before hello_ok');
  ws.recv({ type: 'hello_ok', session_id: 'i-2', server_time: 'x', heartbeat_s: 30 });
  assert.deepEqual(ws.acks().sort(), ['fast', 'slow']);
  ws.recv({ type: 'ack_ok', proposal_id: 'fast' });
  ws.recv({ type: 'ack_ok', proposal_id: 'slow' });
  ws.drop(1006);
  await tick(states.at(-1).delay);
  ws = await hello();
  assert.deepEqual(ws.acks(), [], 'confirmed acks are not sent again');
  dev.stop();
});

test(`the dedupe set keeps the ${MAX_SEEN} most recent ids`, async () => {
  const { dev, seen } = device({ onProposal: (p) => seen.push(p.id) });
  dev.start();
  const ws = await hello();
  for (let i = 0; i <= MAX_SEEN; i++) ws.recv(proposal('id-' + i));
  await flush();
  assert.equal(seen.length, MAX_SEEN + 1);
  ws.recv(proposal('id-' + MAX_SEEN)); // the newest: still known
  ws.recv(proposal('id-1')); // the oldest kept
  await flush();
  assert.equal(seen.length, MAX_SEEN + 1);
  ws.recv(proposal('id-0')); // pushed out by the 10,001st
  await flush();
  assert.equal(seen.length, MAX_SEEN + 2);
  assert.equal(seen.at(-1), 'id-0');
  assert.equal(dev.stats.duplicates, 2);
  dev.stop();
});

function memoryStorage({ async = false } = {}) {
  const map = new Map();
  const writes = [];
  return {
    map,
    writes,
    get: (k) => (async ? Promise.resolve(map.get(k)) : map.get(k)),
    set: (k, v) => {
      writes.push(k);
      map.set(k, v);
      return async ? Promise.resolve() : undefined;
    },
  };
}

test('storage: ids seen survive a restart, through a sync or an async adapter', async () => {
  for (const async of [false, true]) {
    FakeSocket.reset();
    const storage = memoryStorage({ async });
    let d = device({ storage });
    d.dev.start();
    let ws = await hello();
    for (const id of ['a', 'b', 'c', 'd', 'e']) ws.recv(proposal(id));
    await flush();
    assert.deepEqual(d.seen, ['a', 'b', 'c', 'd', 'e']);
    const key = `steward-device:${DEVICE}:seen`;
    assert.deepEqual(JSON.parse(storage.map.get(key)), ['a', 'b', 'c', 'd', 'e']);
    assert.ok(storage.writes.length <= 2, `a burst is coalesced (${storage.writes.length} writes)`);
    d.dev.stop();

    // the app restarts: a new client, the same storage
    d = device({ storage });
    d.dev.start();
    ws = await hello();
    ws.recv(proposal('c'));
    ws.recv(proposal('f'));
    await flush();
    assert.deepEqual(d.seen, ['f'], `async=${async}`);
    assert.deepEqual(ws.acks(), ['c', 'f']);
    d.dev.stop();
  }
});

test('storage: the ack waits until the id is stored; localStorage works as is', async () => {
  let done;
  const map = new Map();
  const storage = {
    get: () => undefined,
    set: (k, v) =>
      new Promise((r) => {
        map.set(k, v);
        done = r;
      }),
  };
  const { dev } = device({ storage });
  dev.start();
  const ws = await hello();
  ws.recv(proposal('p1'));
  await flush();
  assert.deepEqual(ws.acks(), [], 'not acked before the write finished');
  done();
  await flush();
  assert.deepEqual(ws.acks(), ['p1']);
  dev.stop();

  const items = new Map([[`steward-device:${DEVICE}:seen`, '["old"]']]);
  const local = { getItem: (k) => items.get(k) ?? null, setItem: (k, v) => items.set(k, v) };
  const d = device({ storage: local });
  d.dev.start();
  const ws2 = await hello();
  ws2.recv(proposal('old'));
  ws2.recv(proposal('new'));
  await flush();
  assert.deepEqual(d.seen, ['new']);
  assert.deepEqual(JSON.parse(items.get(`steward-device:${DEVICE}:seen`)), ['old', 'new']);
  d.dev.stop();

  // garbage in storage is reported, and the client still runs
  const bad = device({ storage: { get: () => '{"no": 1}', set: () => {} } });
  bad.dev.start();
  await hello();
  assert.equal(bad.dev.state, 'ready');
  assert.equal(bad.errors.length, 1);
  bad.dev.stop();
});

test('options are checked; a failing getToken backs off', async () => {
  assert.throws(() => new StewardDevice({ url: 'ws://x', deviceId: 'd' }), TypeError);
  if (typeof globalThis.WebSocket === 'undefined')
    assert.throws(
      () => new StewardDevice({ url: 'ws://x', deviceId: 'd', getToken: () => 't' }),
      /WebSocket/,
    );
  const { dev, errors } = device({
    getToken: async () => {
      throw new Error('keychain locked');
    },
  });
  dev.start();
  await flush();
  assert.equal(dev.state, 'backoff');
  assert.equal(errors[0].message, 'keychain locked');
  assert.equal(FakeSocket.all.length, 0);
  dev.stop();
});
