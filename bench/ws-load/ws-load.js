'use strict';
// WebSocket device load generator for steward (docs/protocol.md). With the devices written by
// seed.js (one device and one scout per user) it:
//  1. reads steward's VmRSS, opens --n authenticated device sockets (device_hello, waits
//     for hello_ok), reads VmRSS again: KiB per connection;
//  2. warms up: ingests --warmup seconds' worth of items at --rate for the first users and
//     waits until their devices hold and have acked them (not measured; every REST
//     workload of the suite has its warm-up too), then
//     ingests one relevant item per user over REST (POST /v1/scouts/{id}/items) at --rate
//     items per second, open loop, and measures for each the time from sending the POST to
//     the scout_proposal frame on the user's device (every device acks what it gets);
//     checks that every device got exactly its own proposal and nothing else;
//  3. reconnect storm: every device disconnects, one proposal per user is queued while
//     they are away, then all devices reconnect at once; measures the time from the first
//     connect until every device holds its pending proposal (same exactness checks).
//
// The work is spread over processes so that the generator measures steward rather than
// its own event loop: a C process (ws-devices.c, built by bench/run; --device-procs splits
// the devices over several) holds the sockets, one process (ws-ingest.js) sends the
// ingest POSTs, and this one only orchestrates and reads /metrics. Every
// timestamp is CLOCK_MONOTONIC (process.hrtime, clock_gettime), one clock for every
// process of the machine: a latency is the device process's arrival time of the frame
// minus the sender's time just before it wrote the POST.
// Prints one JSON object on stdout. Exits 1 when a check fails or a phase times out.
const fs = require('fs');
const path = require('path');
const { parseArgs, Api, runPool, percentile, nowMs, rssKiB, round, Child, LineChild, measuring } = require('./lib');

const args = parseArgs(process.argv.slice(2), {
  url: 'http://127.0.0.1:8080', 'ws-url': 'ws://127.0.0.1:8081/v1/devices/ws', key: '',
  devices: 'devices.json', n: '1000', pid: '', rate: '1000', tag: `r${Date.now()}`,
  'connect-concurrency': '200', timeout: '60', storm: 'true', raw: '', 'device-procs': '1',
  preconnect: '8', warmup: '1', 'ingest-bin': '',
  'device-bin': path.join(__dirname, '..', '..', 'build-release', 'bench-ws-devices'),
});
const N = Number(args.n);
const RATE = Number(args.rate);
const TIMEOUT_MS = Number(args.timeout) * 1000;
const PID = Number(args.pid);
// The device sockets are held by ws-devices.c: one process (an epoll loop, no GC) unless
// --device-procs asks for more.
const PROCS = Math.max(1, Math.min(N, Number(args['device-procs']) || 1));
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

let slicesDelivered = 0;
let allDelivered = null;
function onEvent(m) {
  if (m.ev === 'delivered') {
    slicesDelivered++;
    if (slicesDelivered === PROCS && allDelivered) allDelivered();
  }
}

// Device i goes to process i % PROCS.
const procs = [];
for (let p = 0; p < PROCS; p++) {
  procs.push(new LineChild(args['device-bin'],
    [args['ws-url'], args.devices, String(N), String(p), String(PROCS)], onEvent));
}
// the C sender (bench/ws-load/ingest-sender.c) when given, else the Node one: same
// commands, same replies
const sender = args['ingest-bin'] ? new LineChild(args['ingest-bin'], [], () => {})
  : new Child('ws-ingest.js', () => {});
const measureNice = measuring(sender);
const callAll = (cmd, extra) => Promise.all(procs.map((c) => c.call(cmd, extra)));

function waitDelivered(ms) {
  if (slicesDelivered >= PROCS) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => { allDelivered = null; resolve(false); }, ms);
    allDelivered = () => { clearTimeout(timer); allDelivered = null; resolve(true); };
  });
}

async function phase(prefix) {
  slicesDelivered = 0;
  await callAll('phase', { prefix });
}

async function waitFor(pred, ms, step) {
  const end = nowMs() + ms;
  while (nowMs() < end) {
    if (await pred()) return true;
    await sleep(step || 20);
  }
  return false;
}

// steward's pool wait histogram (cumulative buckets by upper bound in seconds, and the
// count), to tell how many checkouts of a phase waited for a connection and how long.
async function poolWaits() {
  const r = await api.request('GET', '/metrics');
  const out = { buckets: {}, count: 0 };
  for (const m of r.text.matchAll(/^db_pool_wait_seconds_bucket\{le="([^"]+)"\} (\d+)$/gm)) {
    out.buckets[m[1]] = Number(m[2]);
  }
  const c = /^db_pool_wait_seconds_count (\d+)$/m.exec(r.text);
  out.count = c ? Number(c[1]) : 0;
  return out;
}

// The checkouts between two poolWaits snapshots, and how many waited longer than 1 ms,
// 5 ms and 10 ms.
function poolWaitDelta(a, b) {
  const over = (le) => (b.count - (b.buckets[le] || 0)) - (a.count - (a.buckets[le] || 0));
  return { checkouts: b.count - a.count, over_1ms: over('0.001'), over_5ms: over('0.005'),
    over_10ms: over('0.01') };
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

// Gathers every device process's report: per-device arrival times by device index and
// the exactness counters summed.
async function gather() {
  const reps = await callAll('report');
  const got = new Int32Array(N);
  const gotAt = new Float64Array(N);
  const sum = { delivered: 0, wrong_device: 0, duplicates: 0, stray: 0 };
  const monitors = [];
  for (const r of reps) {
    for (let k = 0; k < r.idx.length; k++) { got[r.idx[k]] = r.got[k]; gotAt[r.idx[k]] = r.gotAt[k]; }
    sum.delivered += r.delivered; sum.wrong_device += r.wrong; sum.duplicates += r.dup;
    sum.stray += r.stray;
    for (const p of r.problems) problem(p);
    monitors.push(r.monitor);
  }
  let missing = 0;
  for (let i = 0; i < N; i++) if (got[i] === 0) missing++;
  const ex = { ...sum, missing, exactly_once: missing === 0 && sum.wrong_device === 0 &&
    sum.duplicates === 0 && sum.stray === 0 };
  return { got, gotAt, ex, monitors };
}

// The worst of the device processes' figures (the time spent on one batch of socket
// events, reported as loop_delay; the gc_ figures are 0 in C).
function worst(monitors) {
  const ms = monitors.filter(Boolean);
  const max = (k) => round(Math.max(...ms.map((m) => m[k])));
  return { loop_delay_p99_ms: max('loop_delay_p99_ms'), loop_delay_max_ms: max('loop_delay_max_ms'),
    gc_max_ms: max('gc_max_ms'), gc_total_ms: round(ms.reduce((a, m) => a + m.gc_total_ms, 0)) };
}

const out = { n: N, rate: RATE, device_procs: PROCS, measure_nice: measureNice };

// Has the sender post one item for each of devs[0, n) at RATE, refs prefix + index.
function ingestBy(prefix, n) {
  return sender.call('ingest', { url: args.url, key: args.key, rate: RATE, prefix,
    preconnect: Number(args.preconnect),
    items: devs.slice(0, n).map((d, i) => ({ idx: i, scout_id: d.scout_id })) });
}

async function main() {
  // 1. sockets and memory
  const rss0 = rssKiB(PID);
  const tc0 = nowMs();
  const conns = await callAll('connect',
    { concurrency: Math.max(1, Math.ceil(Number(args['connect-concurrency']) / PROCS)) });
  const connectSeconds = (nowMs() - tc0) / 1000;
  const failures = conns.reduce((a, c) => a + c.failures, 0);
  await sleep(1000);
  const rss1 = rssKiB(PID);
  out.connect = { seconds: round(connectSeconds, 2), failures,
    authenticated: conns.reduce((a, c) => a + c.authenticated, 0),
    server_ws_connections: await wsConnections(),
    rss_before_kib: rss0, rss_after_kib: rss1, kib_per_connection: round((rss1 - rss0) / N, 2) };
  if (failures) throw new Error(`${failures} devices could not connect`);

  // 2. warm-up: the same ingest for the first W users, its proposals delivered and acked
  // before the measured ingest starts. It takes the first run of every code path (the
  // generator's JIT, steward's and PostgreSQL's first inserts) out of the measurement.
  const W = Math.min(N, Math.round(RATE * Number(args.warmup)));
  if (W > 0) {
    const warmPrefix = `${args.tag}-w-`;
    await phase(warmPrefix);
    const tw = nowMs();
    const ws = await ingestBy(warmPrefix, W);
    for (const p of ws.problems) problem(p);
    let c = null;
    const done = await waitFor(async () => {
      const cs = await callAll('count');
      c = { delivered: 0, acked: 0, wrong: 0, dup: 0, stray: 0 };
      for (const x of cs) {
        for (const k of Object.keys(c)) c[k] += x[k];
        for (const p of x.problems) problem(`warm-up: ${p}`);
      }
      return c.delivered >= W && c.acked >= W;
    }, TIMEOUT_MS, 20);
    out.warmup = { items: W, seconds: round((nowMs() - tw) / 1000, 2), http_status: ws.status,
      delivered: c.delivered, acked: c.acked, all_delivered: done };
    if (!done || c.wrong || c.dup || c.stray) {
      problem(`warm-up: ${JSON.stringify(out.warmup)}, wrong ${c.wrong}, duplicates ${c.dup}, stray ${c.stray}`);
    }
  }

  // 3. ingest at a controlled rate, open loop, from the sender process
  const ingestPrefix = `${args.tag}-i-`;
  await phase(ingestPrefix);
  const pw0 = await poolWaits();
  const delivered = waitDelivered(TIMEOUT_MS + N * 1000 / RATE);
  const s = await ingestBy(ingestPrefix, N);
  for (const p of s.problems) problem(p);
  const ok = await delivered;
  const pw1 = await poolWaits();
  await sleep(500); // late duplicates would show up here
  const g = await gather();
  const lat = [];
  const httpLat = [];
  let lastAt = 0;
  for (let i = 0; i < N; i++) {
    if (s.httpAt[i] > 0) httpLat.push(s.httpAt[i] - s.sent[i]);
    if (g.got[i] > 0) { lat.push(g.gotAt[i] - s.sent[i]); lastAt = Math.max(lastAt, g.gotAt[i]); }
  }
  if (args.raw) {
    const lines = ['i sent_ms http_ms device_ms'];
    for (let i = 0; i < N; i++) {
      lines.push(`${i} ${(s.sent[i] - s.t0).toFixed(3)} ${(s.httpAt[i] - s.sent[i]).toFixed(3)} ` +
        `${g.got[i] ? (g.gotAt[i] - s.sent[i]).toFixed(3) : 'NA'}`);
    }
    fs.writeFileSync(args.raw, lines.join('\n') + '\n');
  }
  out.ingest = { offered_rate: RATE, send_seconds: round(s.send_seconds, 2),
    achieved_send_rate: round(N / s.send_seconds, 0), http_status: s.status,
    http_p50_ms: round(percentile(httpLat, 50)), http_p99_ms: round(percentile(httpLat, 99)),
    latency_p50_ms: round(percentile(lat, 50)), latency_p99_ms: round(percentile(lat, 99)),
    latency_max_ms: round(percentile(lat, 100)),
    proposals_per_s: ok ? round(N / ((lastAt - s.t0) / 1000), 0) : null,
    all_delivered: ok, delivered: g.ex.delivered, ...g.ex,
    pool_waits: poolWaitDelta(pw0, pw1),
    generator: { sender: s.monitor, devices: worst(g.monitors) } };

  // 4. reconnect storm
  if (args.storm === 'true') {
    const tc = nowMs();
    await callAll('close');
    const drained = await waitFor(async () => (await wsConnections()) === 0, 20000, 100);
    const closeSeconds = (nowMs() - tc) / 1000;
    const stormPrefix = `${args.tag}-s-`;
    await phase(stormPrefix);
    const tq = nowMs();
    const qStatus = {};
    await runPool(N, 64, async (i) => {
      const r = await api.request('POST', `/v1/scouts/${devs[i].scout_id}/items`,
        item(i, stormPrefix + i));
      qStatus[r.status] = (qStatus[r.status] || 0) + 1;
    });
    const queueSeconds = (nowMs() - tq) / 1000;
    const stormDelivered = waitDelivered(TIMEOUT_MS);
    const ts = nowMs();
    const opens = callAll('open');
    const okStorm = await stormDelivered;
    const op = await Promise.race([opens, sleep(5000).then(() => null)]);
    await sleep(500);
    const gs = await gather();
    const lastStorm = Math.max(...gs.gotAt);
    const failed = op ? op.reduce((a, o) => a + o.failures, 0) : null;
    const lastHello = op && !failed ? Math.max(...op.map((o) => o.last_hello_at)) : null;
    out.storm = { close_seconds: round(closeSeconds, 2), server_drained: drained,
      queued_while_away: qStatus, queue_seconds: round(queueSeconds, 2),
      all_hello_ok_seconds: lastHello ? round((lastHello - ts) / 1000, 2) : null,
      all_delivered_seconds: okStorm ? round((lastStorm - ts) / 1000, 2) : null,
      connect_failures: failed, all_delivered: okStorm, delivered: gs.ex.delivered, ...gs.ex,
      generator: { devices: worst(gs.monitors) } };
  }
  await Promise.all(procs.map((c) => c.call('close')));
  out.problems = problems;
  out.ok = problems.length === 0 && out.ingest.exactly_once &&
    (!out.storm || out.storm.exactly_once);
  finish(out.ok ? 0 : 1);
}

// Prints the figures and exits once every child has exited and been reaped, so that
// their CPU time counts in this process's children's (bench/run reads it with `times`).
function finish(code) {
  console.log(JSON.stringify(out));
  const kids = procs.concat([sender]);
  let left = kids.length;
  const done = () => { if (--left === 0) process.exit(code); };
  for (const c of kids) {
    if (c.proc.exitCode !== null || c.proc.signalCode !== null) done();
    else { c.proc.once('exit', done); c.exit(); }
  }
  setTimeout(() => process.exit(code), 10000).unref();
}

const hardStop = setTimeout(() => {
  console.error('ws-load: overall time limit reached');
  out.error = 'overall time limit reached';
  out.problems = problems;
  out.ok = false;
  for (const c of procs) c.proc.kill();
  sender.proc.kill();
  console.log(JSON.stringify(out));
  process.exit(2);
}, Number(args.timeout) * 2000 + 60000);
hardStop.unref();

main().catch((e) => {
  console.error(`ws-load: ${e.stack || e.message}`);
  out.error = e.message;
  out.problems = problems;
  out.ok = false;
  for (const c of procs) c.proc.kill();
  sender.proc.kill();
  console.log(JSON.stringify(out));
  process.exit(1);
});
