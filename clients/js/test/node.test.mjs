// The client in Node with the `ws` package (the Electron main process case), against the
// real steward binary and a throwaway PostgreSQL: delivery and acks, no second handler
// call for a redelivery across a reconnect, and a SIGKILLed steward coming back.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { startDatabase, Steward } from '../../../tests/harness/steward.mjs';
import {
  uid,
  newDevice,
  newScout,
  ingest,
  proposalRow,
  until,
} from '../../../tests/harness/devices.mjs';
import { StewardDevice } from '../src/index.js';

let db;
let steward;
before(async () => {
  db = await startDatabase();
  steward = await Steward.start(db.url, { STEWARD_WS_HEARTBEAT_S: 2 });
});
after(async () => {
  if (steward) await steward.stop();
  if (db) await db.stop();
});

/** A client for a new device of a new user, stopped when the test ends; sockets lists
 * every WebSocket it opened. */
async function setup(t, onProposal) {
  const user = uid();
  const dev = await newDevice(steward, user);
  const scout = await newScout(steward, user);
  const sockets = [];
  class Tracked extends WebSocket {
    constructor(url) {
      super(url);
      sockets.push(this);
    }
  }
  const calls = [];
  const client = new StewardDevice({
    url: steward.wsUrl,
    deviceId: dev.device_id,
    getToken: async () => dev.token,
    onProposal: async (p) => {
      calls.push(p.id);
      if (onProposal) await onProposal(p);
    },
    WebSocket: Tracked,
  });
  t.after(() => client.stop());
  const errors = [];
  client.on('error', (e) => errors.push(e));
  return { client, calls, sockets, scout, errors };
}

const acked = (id) => proposalRow(db.url, id)?.status === 'acked';

test('Node: proposals ingested over REST reach the handler and are acked', async (t) => {
  const { client, calls, scout, errors } = await setup(t);
  const ready = new Promise((r) => client.on('state', (s) => s === 'ready' && r()));
  client.start();
  await ready;
  const ids = [];
  for (const ref of ['n1', 'n2', 'n3']) ids.push(await ingest(steward, scout.id, ref));
  await until(() => ids.every(acked), 10000, 'acked in the database');
  await until(() => client.stats.acks === 3, 5000, 'ack_ok');
  assert.deepEqual(calls, ids);
  assert.deepEqual(client.stats, { connects: 1, proposals: 3, duplicates: 0, acks: 3, lastError: null });
  assert.deepEqual(errors, []);
  client.stop();
  const logged = steward.logRecords().filter((r) => r.msg === 'device connected');
  assert.ok(logged.some((r) => r.client === 'steward-device' && r.client_version === '0.1.0'));
});

test('Node: across a reconnect, a redelivered proposal does not reach the handler twice', async (t) => {
  let release;
  const gate = new Promise((r) => (release = r));
  const { client, calls, sockets, scout } = await setup(t, () => gate);
  client.start();
  await until(() => client.state === 'ready');
  const id = await ingest(steward, scout.id, 'r1');
  await until(() => calls.length === 1, 10000, 'the handler');
  sockets[0].terminate(); // the connection drops while the handler still works
  await until(() => client.stats.duplicates === 1, 10000, 'the redelivery');
  assert.equal(client.stats.connects, 2);
  assert.equal(proposalRow(db.url, id).attempts, 2, 'steward delivered it twice');
  release();
  await until(() => acked(id), 10000, 'acked in the database');
  assert.deepEqual(calls, [id]);
  client.stop();
});

test('Node: steward SIGKILLed and restarted: the client comes back and gets what it had not acked', async (t) => {
  let fail = true;
  const { client, calls, scout, errors } = await setup(t, async () => {
    if (fail) throw new Error('not stored');
  });
  const states = [];
  client.on('state', (s) => states.push(s));
  client.start();
  await until(() => client.state === 'ready');
  const id = await ingest(steward, scout.id, 'k1');
  await until(() => errors.length === 1, 10000, 'the failed handler');
  fail = false;
  await steward.kill();
  await until(() => client.state === 'backoff', 10000, 'backoff');
  await steward.restart();
  await until(() => acked(id), 20000, 'acked after the restart');
  assert.deepEqual(calls, [id, id]);
  assert.ok(client.stats.connects >= 2);
  assert.ok(states.includes('backoff'));
  const later = await ingest(steward, scout.id, 'k2');
  await until(() => acked(later), 10000, 'a new proposal');
  client.stop();
  assert.deepEqual(steward.sanitizerReports(), []);
});
