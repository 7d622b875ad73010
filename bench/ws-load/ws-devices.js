'use strict';
// One device process of the WebSocket load generator (forked by ws-load.js). It holds a
// slice of the devices, each an authenticated socket, and timestamps every frame that
// arrives with process.hrtime (CLOCK_MONOTONIC, the clock the ingest sender uses too).
// It answers the orchestrator's commands over the IPC channel:
//   connect {concurrency}  opens the slice's sockets (device_hello, waits for hello_ok)
//   phase {prefix}         resets the counters; proposals must now carry prefix + index
//   open {}                reconnects the whole slice at once (the storm), no limit
//   close {}               closes every socket
//   report {}              waits (bounded) for the acks, returns per-device arrival times
//   count {}               the phase's counters so far (the warm-up is watched with it)
//   exit {}
// and reports {ev: 'delivered'} once every device of the slice holds its proposal.
const WebSocket = require('ws');
const { monitorEventLoopDelay, PerformanceObserver } = require('perf_hooks');
const { nowMs, round } = require('./lib');

let wsUrl = '';
let devices = [];
let acked = 0;
let delivered = 0;
let wrong = 0;
let dup = 0;
let stray = 0;
const problems = [];
let eld = null;
let gcs = [];
const gcObs = new PerformanceObserver((list) => {
  for (const e of list.getEntries()) gcs.push(e.duration);
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function problem(msg) {
  if (problems.length < 20) problems.push(msg);
  else if (problems.length === 20) problems.push('... more problems omitted');
}

class Device {
  constructor(idx, d) {
    this.idx = idx; // index among all devices: the proposal's ref ends with it
    this.d = d;
    this.ws = null;
    this.authed = false;
    this.phase = null;
    this.got = 0;
    this.gotAt = 0;
    this.closeWaiter = null;
  }

  open() {
    return new Promise((resolve, reject) => {
      let settled = false;
      const ws = new WebSocket(wsUrl, { perMessageDeflate: false, handshakeTimeout: 30000 });
      this.ws = ws;
      this.authed = false;
      this.closeWaiter = null;
      ws.on('open', () => {
        ws.send(JSON.stringify({ type: 'device_hello', device_id: this.d.device_id,
          token: this.d.token, client: { app_version: 'bench' } }));
      });
      ws.on('message', (data) => {
        const t = nowMs(); // first thing: the arrival time of the frame
        let f;
        try { f = JSON.parse(data.toString()); } catch (e) { problem(`device ${this.idx}: bad JSON`); return; }
        if (f.type === 'hello_ok') {
          this.authed = true;
          if (!settled) { settled = true; resolve(t); }
        } else if (f.type === 'scout_proposal') {
          this.onProposal(f.proposal, t);
        } else if (f.type === 'ack_ok') {
          acked++;
        } else if (f.type === 'error') {
          problem(`device ${this.idx}: error frame ${JSON.stringify(f)}`);
        }
      });
      ws.on('error', (e) => {
        if (!settled) { settled = true; reject(e); }
      });
      ws.on('close', (code) => {
        this.authed = false;
        if (!settled) { settled = true; reject(new Error(`closed ${code} before hello_ok`)); }
        if (this.closeWaiter) this.closeWaiter();
      });
    });
  }

  onProposal(p, t) {
    const ref = p && p.source_msg_ref;
    this.ws.send(JSON.stringify({ type: 'scout_proposal_ack', proposal_id: p.id }));
    if (typeof ref !== 'string' || !this.phase || !ref.startsWith(this.phase)) {
      problem(`device ${this.idx}: unexpected proposal ${ref}`);
      stray++;
      return;
    }
    const idx = Number(ref.slice(this.phase.length));
    if (idx !== this.idx) {
      problem(`device ${this.idx} (${this.d.user_id}) got the proposal of device ${idx}`);
      wrong++;
      return;
    }
    this.got++;
    if (this.got === 1) {
      this.gotAt = t;
      delivered++;
      if (delivered === devices.length) process.send({ ev: 'delivered' });
    } else {
      dup++;
    }
  }

  close() {
    return new Promise((resolve) => {
      if (!this.ws || this.ws.readyState === WebSocket.CLOSED) { resolve(); return; }
      this.closeWaiter = resolve;
      this.ws.close(1000, 'bench');
    });
  }
}

async function connectAll(concurrency) {
  let failures = 0;
  let next = 0;
  async function worker() {
    for (;;) {
      const i = next++;
      if (i >= devices.length) return;
      for (let attempt = 0; attempt < 3; attempt++) {
        try {
          await devices[i].open();
          break;
        } catch (e) {
          if (attempt === 2) { failures++; problem(`device ${devices[i].idx}: ${e.message}`); }
          await sleep(100);
        }
      }
    }
  }
  const ws = [];
  for (let w = 0; w < Math.min(concurrency, devices.length); w++) ws.push(worker());
  await Promise.all(ws);
  return { failures, authenticated: devices.filter((d) => d.authed).length };
}

async function stormOpen() {
  let failures = 0;
  let lastHello = 0;
  await Promise.all(devices.map((d) => d.open().then((t) => { lastHello = Math.max(lastHello, t); },
    (e) => { failures++; problem(`storm device ${d.idx}: ${e.message}`); })));
  return { failures, last_hello_at: lastHello };
}

function startMonitor() {
  if (eld) eld.disable(); // a phase that ended without a report (the warm-up)
  eld = monitorEventLoopDelay({ resolution: 1 });
  eld.enable();
  gcs = [];
  gcObs.observe({ entryTypes: ['gc'] });
}

function stopMonitor() {
  if (!eld) return null;
  eld.disable();
  gcObs.disconnect();
  const m = { loop_delay_p50_ms: round(eld.percentile(50) / 1e6), loop_delay_p99_ms:
    round(eld.percentile(99) / 1e6), loop_delay_max_ms: round(eld.max / 1e6),
  gc_count: gcs.length, gc_total_ms: round(gcs.reduce((a, b) => a + b, 0)),
  gc_max_ms: round(gcs.length ? Math.max(...gcs) : 0) };
  eld = null;
  return m;
}

async function report() {
  const end = nowMs() + 10000;
  while (acked < delivered && nowMs() < end) await sleep(20);
  const n = devices.length;
  const idx = new Int32Array(n);
  const got = new Int32Array(n);
  const gotAt = new Float64Array(n);
  devices.forEach((d, k) => { idx[k] = d.idx; got[k] = d.got; gotAt[k] = d.gotAt; });
  return { idx, got, gotAt, delivered, wrong, dup, stray, acked, problems: problems.splice(0),
    monitor: stopMonitor() };
}

process.on('message', async (m) => {
  let reply;
  switch (m.cmd) {
    case 'init':
      wsUrl = m.wsUrl;
      devices = m.devices.map((x) => new Device(x.idx, x.d));
      reply = {};
      break;
    case 'connect':
      reply = await connectAll(m.concurrency);
      break;
    case 'phase':
      delivered = 0; wrong = 0; dup = 0; stray = 0; acked = 0;
      for (const d of devices) { d.phase = m.prefix; d.got = 0; d.gotAt = 0; }
      startMonitor();
      reply = {};
      break;
    case 'open':
      reply = await stormOpen();
      break;
    case 'close':
      await Promise.all(devices.map((d) => d.close()));
      reply = {};
      break;
    case 'report':
      reply = await report();
      break;
    case 'count':
      reply = { delivered, acked, wrong, dup, stray, problems: problems.splice(0) };
      break;
    case 'exit':
      await Promise.all(devices.map((d) => d.close()));
      process.exit(0);
      return;
    default:
      reply = { error: `unknown command ${m.cmd}` };
  }
  process.send({ id: m.id, reply });
});
