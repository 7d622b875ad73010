// Devices, scouts and proposals over steward's REST API, for the device client's tests
// (clients/js/test and tests/browser). Mirrors mk_device, mk_scout and ingest of
// tests/e2e/test_scouts.py.
import { randomUUID } from 'node:crypto';
import { psql } from './steward.mjs';

export const uid = (prefix = 'user') => `${prefix}-${randomUUID().slice(0, 12)}`;

async function ok(res, status, what) {
  if (res.status !== status)
    throw new Error(`${what}: ${res.status} ${JSON.stringify(res.body)}`);
  return res.body;
}

/** A device of user: { device_id, token, ... }. */
export async function newDevice(steward, user, name = 'laptop') {
  return ok(await steward.request('POST', '/v1/devices', { body: { user_id: user, name } }), 201, 'device');
}

export async function newScout(steward, user) {
  return ok(await steward.request('POST', '/v1/scouts', { body: { user_id: user, provider: 'gmail' } }), 201, 'scout');
}

/** Posts a relevant item; answers the id of the proposal it queued. */
export async function ingest(steward, scoutId, ref) {
  const body = { source_msg_ref: ref, verdict: 'relevant', subject: `subject ${ref}`, snippet: `snippet ${ref}` };
  const r = await ok(await steward.request('POST', `/v1/scouts/${scoutId}/items`, { body }), 201, 'ingest');
  return r.proposal_id;
}

export async function deleteDevice(steward, deviceId) {
  return ok(await steward.request('DELETE', `/v1/devices/${deviceId}`), 204, 'delete device');
}

/** The proposal's status and delivery attempts, as the database holds them. */
export function proposalRow(dbUrl, id) {
  const rows = psql(dbUrl, "SELECT status, delivery_attempts FROM proposals WHERE id = :'id'", { id });
  return rows.length ? { status: rows[0][0], attempts: Number(rows[0][1]) } : null;
}

/** Polls fn until it answers something truthy; rejects after ms. */
export async function until(fn, ms = 10000, what = 'condition') {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
