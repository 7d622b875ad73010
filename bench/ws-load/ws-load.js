'use strict';
// WebSocket device load generator for steward (SPEC 5). With the devices written by
// seed.js (one device and one scout per user) it:
//  1. reads steward's VmRSS, opens --n authenticated device sockets (device_hello, waits
//     for hello_ok), reads VmRSS again: KiB per connection;
//  2. ingests one relevant item per user over REST (POST /v1/scouts/{id}/items) at --rate
//     items per second, open loop, and measures for each the time from sending the POST to
//     the scout_proposal frame on the user's device (every device acks what it gets);
//     checks that every device got exactly its own proposal and nothing else;
//  3. reconnect storm: every device disconnects, one proposal per user is queued while
//     they are away, then all devices reconnect at once; measures the time from the first
//     connect until every device holds its pending proposal (same exactness checks).
// Prints one JSON object on stdout. Exits 1 when a check fails or a phase times out.
const fs = require('fs');
const WebSocket = require('ws');
const { monitorEventLoopDelay, PerformanceObserver } = require('perf_hooks');
const { parseArgs, Api, runPool, percentile, nowMs, rssKiB, round } = require('./lib');

const args = parseArgs(process.argv.slice(2), {
  url: 'http://127.0.0.1:8080', 'ws-url': 'ws://127.0.0.1:8081/v1/devices/ws', key: '',
  devices: 'devices.json', n: '1000', pid: '', rate: '1000', tag: `r${Date.now()}`,
  'connect-concurrency': '200', timeout: '60', storm: 'true', raw: '',
});
const N = Number(args.n);
const RATE = Number(args.rate);
const TIMEOUT_MS = Number(args.timeout) * 1000;
const PID = Number(args.pid);
const all = JSON.parse(fs.readFileSync(args.devices, 'utf8'));
if (all.length < N) throw new Error(`devices file has ${all.length} devices, need ${N}`);
const devs = all.slice(0, N);
const api = new Api(args.url, args.key, 64);
const problems = [];

function problem(msg) {
  if (problems.length < 20) problems.push(msg);
  else if (problems.length === 20) problems.push('... more problems omitted');
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Per device state for the current phase.
class Device {
  constructor(idx, d) {
    this.idx = idx;
    this.d = d;
    this.ws = null;
    this.authed = false;
    this.phase = null; // ref prefix of the phase whose proposal this device expects
    this.got = 0;
    this.gotAt = 0;
    this.onEvent = null;
  }

  // Opens the socket and resolves when hello_ok arrives (rejects on close/error first).
  open() {
    return new Promise((resolve, reject) => {
      let settled = false;
      const ws = new WebSocket(args['ws-url'], { perMessageDeflate: false, handshakeTimeout: 30000 });
      this.ws = ws;
      this.authed = false;
      this.closeWaiter = null;
      ws.on('open', () => {
        ws.send(JSON.stringify({ type: 'device_hello', device_id: this.d.device_id,
          token: this.d.token, client: { app_version: 'bench' } }));
      });
      ws.on('message', (data) => {
        let f;
        try { f = JSON.parse(data.toString()); } catch (e) { problem(`device ${this.idx}: bad JSON`); return; }
        if (f.type === 'hello_ok') {
          this.authed = true;
          if (!settled) { settled = true; resolve(); }
        } else if (f.type === 'scout_proposal') {
          this.onProposal(f.proposal);
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

  onProposal(p) {
    const t = nowMs();
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
      if (delivered === N && allDelivered) allDelivered();
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

let acked = 0;
let delivered = 0;
let wrong = 0;
let dup = 0;
let stray = 0;
let allDelivered = null;
const devices = devs.map((d, i) => new Device(i, d));

function resetCounters(phase) {
  delivered = 0; wrong = 0; dup = 0; stray = 0; acked = 0;
  for (const d of devices) { d.phase = phase; d.got = 0; d.gotAt = 0; }
}

function waitDelivered(ms) {
  if (delivered >= N) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => { allDelivered = null; resolve(false); }, ms);
    allDelivered = () => { clearTimeout(timer); allDelivered = null; resolve(true); };
  });
}

async function waitFor(pred, ms, step) {
  const end = nowMs() + ms;
  while (nowMs() < end) {
    if (await pred()) return true;
    await sleep(step || 20);
  }
  return false;
}

async function wsConnections() {
  const r = await api.request('GET', '/metrics');
  const m = /^ws_connections(?:\{[^}]*\})?\s+(\d+)/m.exec(r.text);
  return m ? Number(m[1]) : null;
}

function item(i, ref) {
  return { source_msg_ref: ref, verdict: 'relevant', reason: 'bench', subject: `subject ${i}`,
    snippet: 'a short snippet of the message body', source_type: 'email' };
}

function exactness() {
  let missing = 0;
  for (const d of devices) if (d.got === 0) missing++;
  return { delivered, missing, wrong_device: wrong, duplicates: dup, stray,
    exactly_once: missing === 0 && wrong === 0 && dup === 0 && stray === 0 };
}

async function connectAll(concurrency) {
  const t0 = nowMs();
  let failures = 0;
  await runPool(N, concurrency, async (i) => {
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        await devices[i].open();
        return;
      } catch (e) {
        if (attempt === 2) { failures++; problem(`device ${i}: ${e.message}`); }
        await sleep(100);
      }
    }
  });
  return { seconds: (nowMs() - t0) / 1000, failures };
}

const out = { n: N, rate: RATE };

async function main() {
  // 1. sockets and memory
  const rss0 = rssKiB(PID);
  const c = await connectAll(Number(args['connect-concurrency']));
  await sleep(1000);
  const rss1 = rssKiB(PID);
  out.connect = { seconds: round(c.seconds, 2), failures: c.failures,
    authenticated: devices.filter((d) => d.authed).length, server_ws_connections: await wsConnections(),
    rss_before_kib: rss0, rss_after_kib: rss1, kib_per_connection: round((rss1 - rss0) / N, 2) };
  if (c.failures) throw new Error(`${c.failures} devices could not connect`);

  // 2. ingest at a controlled rate, open loop
  const ingestPrefix = `${args.tag}-i-`;
  resetCounters(ingestPrefix);
  const sent = new Float64Array(N);
  const httpLat = [];
  const httpAt = new Float64Array(N);
  const httpStatus = {};
  const gcs = [];
  const gcObs = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) gcs.push(e.duration);
  });
  gcObs.observe({ entryTypes: ['gc'] });
  const eld = monitorEventLoopDelay({ resolution: 1 });
  eld.enable();
  const t0 = nowMs();
  let nextIdx = 0;
  const pending = [];
  await new Promise((resolve) => {
    const tick = () => {
      const due = Math.min(N, Math.floor(((nowMs() - t0) * RATE) / 1000) + 1);
      while (nextIdx < due) {
        const i = nextIdx++;
        const ts = nowMs();
        sent[i] = ts;
        pending.push(api.request('POST', `/v1/scouts/${devices[i].d.scout_id}/items`,
          item(i, ingestPrefix + i), { 'X-Request-Id': `ing-${i}` }).then((r) => {
          httpAt[i] = nowMs();
          httpLat.push(httpAt[i] - ts);
          httpStatus[r.status] = (httpStatus[r.status] || 0) + 1;
        }, (e) => { httpStatus.error = (httpStatus.error || 0) + 1; problem(e.message); }));
      }
      if (nextIdx >= N) resolve(); else setTimeout(tick, 1);
    };
    tick();
  });
  const sendSeconds = (nowMs() - t0) / 1000;
  await Promise.all(pending);
  const ok = await waitDelivered(TIMEOUT_MS);
  eld.disable();
  gcObs.disconnect();
  await sleep(500); // late duplicates would show up here
  if (args.raw) {
    const lines = ['i sent_ms http_ms device_ms'];
    for (const d of devices) {
      const i = d.idx;
      lines.push(`${i} ${(sent[i] - t0).toFixed(3)} ${(httpAt[i] - sent[i]).toFixed(3)} ${d.got ? (d.gotAt - sent[i]).toFixed(3) : 'NA'}`);
    }
    fs.writeFileSync(args.raw, lines.join('\n') + '\n');
  }
  const lat = devices.filter((d) => d.got > 0).map((d) => d.gotAt - sent[d.idx]);
  const lastAt = Math.max(...devices.map((d) => d.gotAt));
  out.ingest = { offered_rate: RATE, send_seconds: round(sendSeconds, 2),
    achieved_send_rate: round(N / sendSeconds, 0), http_status: httpStatus,
    http_p50_ms: round(percentile(httpLat, 50)), http_p99_ms: round(percentile(httpLat, 99)),
    latency_p50_ms: round(percentile(lat, 50)), latency_p99_ms: round(percentile(lat, 99)),
    latency_max_ms: round(percentile(lat, 100)),
    proposals_per_s: ok ? round(N / ((lastAt - t0) / 1000), 0) : null,
    all_delivered: ok, ...exactness(),
    generator: { loop_delay_p50_ms: round(eld.percentile(50) / 1e6), loop_delay_p99_ms:
      round(eld.percentile(99) / 1e6), loop_delay_max_ms: round(eld.max / 1e6),
    gc_count: gcs.length, gc_total_ms: round(gcs.reduce((a, b) => a + b, 0)),
    gc_max_ms: round(gcs.length ? Math.max(...gcs) : 0) } };
  await waitFor(() => acked >= delivered, 10000);

  // 3. reconnect storm
  if (args.storm === 'true') {
    const tc = nowMs();
    await Promise.all(devices.map((d) => d.close()));
    const drained = await waitFor(async () => (await wsConnections()) === 0, 20000, 100);
    const closeSeconds = (nowMs() - tc) / 1000;
    const stormPrefix = `${args.tag}-s-`;
    resetCounters(stormPrefix);
    const tq = nowMs();
    const qStatus = {};
    await runPool(N, 64, async (i) => {
      const r = await api.request('POST', `/v1/scouts/${devices[i].d.scout_id}/items`,
        item(i, stormPrefix + i));
      qStatus[r.status] = (qStatus[r.status] || 0) + 1;
    });
    const queueSeconds = (nowMs() - tq) / 1000;
    const ts = nowMs();
    let helloAll = null;
    let helloCount = 0;
    let failures = 0;
    const opens = devices.map((d) => d.open().then(() => {
      if (++helloCount === N) helloAll = nowMs();
    }, (e) => { failures++; problem(`storm device ${d.idx}: ${e.message}`); }));
    const okStorm = await waitDelivered(TIMEOUT_MS);
    const stormSeconds = (nowMs() - ts) / 1000;
    await Promise.race([Promise.all(opens), sleep(1000)]);
    await sleep(500);
    out.storm = { close_seconds: round(closeSeconds, 2), server_drained: drained,
      queued_while_away: qStatus, queue_seconds: round(queueSeconds, 2),
      all_hello_ok_seconds: helloAll ? round((helloAll - ts) / 1000, 2) : null,
      all_delivered_seconds: okStorm ? round(stormSeconds, 2) : null, connect_failures: failures,
      all_delivered: okStorm, ...exactness() };
    await waitFor(() => acked >= delivered, 10000);
  }
  await Promise.all(devices.map((d) => d.close()));
  out.problems = problems;
  out.ok = problems.length === 0 && out.ingest.exactly_once &&
    (!out.storm || out.storm.exactly_once);
  console.log(JSON.stringify(out));
  process.exit(out.ok ? 0 : 1);
}

const hardStop = setTimeout(() => {
  console.error('ws-load: overall time limit reached');
  out.error = 'overall time limit reached';
  out.problems = problems;
  out.ok = false;
  console.log(JSON.stringify(out));
  process.exit(2);
}, Number(args.timeout) * 2000 + 60000);
hardStop.unref();

main().catch((e) => {
  console.error(`ws-load: ${e.stack || e.message}`);
  out.error = e.message;
  out.problems = problems;
  out.ok = false;
  console.log(JSON.stringify(out));
  process.exit(1);
});
