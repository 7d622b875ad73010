'use strict';
// Device sessions over one or several steward instances on one database: the ceiling and
// fleet steps of bench/run (bench/README.md). Instance p gets the devices i with
// i % instances == p, held by C device process p (ws-devices.c), at most --max-per-proc
// sockets each so that no generator process reaches its open-file limit. Phases (--phases):
//  connect  every device opens its socket, device_hello, waits for hello_ok; each
//           instance's RSS, open fds (/proc/PID/fd) and ws_connections (/metrics) before
//           and after;
//  idle     all connected, nothing sent: CPU seconds of every instance and of the whole
//           PostgreSQL cluster over --idle-seconds, as a share of one core;
//  ingest   --rate proposals/s through instance 0's REST (POST /v1/scouts/{id}/items, open
//           loop, the ws-ingest.js sender) for --ingest devices held by the other instances
//           (all devices with one instance), after a 1 s warm-up; latency from POST to
//           the frame on the device; every device exactly its own, the others nothing;
//  storm    every device closes; once every instance's ws_connections is 0 one proposal
//           per user is queued through SQL (scouts_ingest, the function steward's ingest
//           route calls), then every device reconnects at once: time until every device
//           has hello_ok and its own proposal; meanwhile (--read-rate > 0) reader.js reads
//           bonds (GET /v1/bonds/{user}) over every instance, open loop.
// Each phase is bounded, the whole run by --budget seconds; a phase that times out is
// reported as such with what it measured, and the run goes on when it can. CPU seconds of
// every instance, PostgreSQL and each generator process are recorded for every phase.
// Prints one JSON object on stdout; exits 1 when a check failed, 2 on the budget.
const fs = require('fs');
const { execFileSync, spawn } = require('child_process');
const { parseArgs, Api, percentile, nowMs, rssKiB, round, Child, LineChild, measuring } = require('./lib');

const args = parseArgs(process.argv.slice(2), {
  'http-urls': '', 'ws-urls': '', pids: '', 'pg-pidfile': '', key: '', devices: 'devices.json',
  n: '', phases: 'connect,idle,ingest,storm', 'idle-seconds': '30', ingest: '10000',
  rate: '1000', warmup: '1', 'read-rate': '100', 'connect-concurrency': '200',
  'max-per-proc': '19000', budget: '300', 'connect-timeout': '120', 'storm-timeout': '75',
  'ingest-timeout': '30', psql: '', 'ttl-days': '30', 'queue-chunk': '10000', tag: `f${Date.now()}`,
  raw: '', 'device-bin': '', 'ingest-bin': '',
});
const HTTP = args['http-urls'].split(',').filter(Boolean);
const WS = args['ws-urls'].split(',').filter(Boolean);
const PIDS = args.pids.split(',').filter(Boolean).map(Number);
const I = HTTP.length;
if (!I || WS.length !== I || PIDS.length !== I) throw new Error('--http-urls, --ws-urls and --pids must list every instance');
const all = JSON.parse(fs.readFileSync(args.devices, 'utf8'));
const N = Number(args.n || all.length);
if (all.length < N) throw new Error(`devices file has ${all.length} devices, need ${N}`);
const devs = all.slice(0, N);
if (Math.ceil(N / I) > Number(args['max-per-proc'])) {
  throw new Error(`${Math.ceil(N / I)} devices per generator process exceed --max-per-proc ${args['max-per-proc']}`);
}
const PHASES = new Set(args.phases.split(','));
const T0 = nowMs();
const DEADLINE = T0 + Number(args.budget) * 1000;
const apis = HTTP.map((u) => new Api(u, args.key, 8));
const problems = [];
const out = { n: N, instances: I, device_procs: I, phases: [...PHASES] };
const CLK = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;

function problem(msg) {
  if (problems.length < 30) problems.push(msg);
  else if (problems.length === 30) problems.push('... more problems omitted');
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const left = () => DEADLINE - nowMs();
// ms: the smaller of a phase's own bound and what the budget leaves (keeping 15 s to
// gather, close and report)
const bound = (ms) => Math.max(1000, Math.min(ms, left() - 15000));
// Resolves what p resolves, or `fallback` after ms.
const within = (p, ms, fallback) => Promise.race([p, sleep(ms).then(() => fallback)]);

// ---- /proc -------------------------------------------------------------------------------
function stat(pid) {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return { ppid: Number(f[1]), ticks: Number(f[11]) + Number(f[12]), reaped: Number(f[13]) + Number(f[14]) };
  } catch (e) {
    return null;
  }
}
const ticks = (pid) => { const s = stat(pid); return s ? s.ticks : 0; };
// The PostgreSQL cluster: the postmaster with the children it has reaped, plus its live
// children (every backend and background process).
function pgTicks() {
  let pm;
  try { pm = Number(fs.readFileSync(args['pg-pidfile'], 'utf8').split('\n')[0]); } catch (e) { return null; }
  const s = stat(pm);
  if (!s) return null;
  let t = s.ticks + s.reaped;
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    const c = stat(d);
    if (c && c.ppid === pm) t += c.ticks;
  }
  return t;
}
function fdCount(pid) {
  try { return fs.readdirSync(`/proc/${pid}/fd`).length; } catch (e) { return null; }
}
function rss(pid) {
  try { return rssKiB(pid); } catch (e) { return null; }
}

async function wsConnections(k) {
  try {
    const r = await apis[k].request('GET', '/metrics');
    const m = /^ws_connections(?:\{[^}]*\})?\s+(\d+)/m.exec(r.text);
    return m ? Number(m[1]) : null;
  } catch (e) {
    return null;
  }
}
// Each instance's RSS, open descriptors and ws_connections.
async function instances() {
  const conns = await Promise.all(HTTP.map((_, k) => wsConnections(k)));
  return PIDS.map((pid, k) => ({ rss_kib: rss(pid), fds: fdCount(pid), ws_connections: conns[k] }));
}

// ---- children ----------------------------------------------------------------------------
let slicesDelivered = 0;
let allDelivered = null;
function onEvent(m) {
  if (m.ev === 'delivered') {
    slicesDelivered++;
    if (slicesDelivered === I && allDelivered) allDelivered();
  }
}
// Device process p holds the devices i % I == p and connects them to instance p.
const procs = [];
for (let p = 0; p < I; p++) {
  procs.push(new LineChild(args['device-bin'], [WS[p], args.devices, String(N), String(p), String(I)], onEvent));
}
let sender = null;
let partialConnect = false; // the connect phase ran out of time
let reader = null;
const callAll = (cmd, extra) => Promise.all(procs.map((c) => c.call(cmd, extra)));

// CPU ticks of everything measured, for per-phase CPU seconds.
function cpuSnap() {
  return { t: nowMs(), stewards: PIDS.map(ticks), pg: pgTicks(),
    devices: procs.map((c) => ticks(c.proc.pid)), sender: sender ? ticks(sender.proc.pid) : 0,
    reader: reader ? ticks(reader.proc.pid) : 0,
    self: Math.round(((process.cpuUsage().user + process.cpuUsage().system) / 1e6) * CLK) };
}
function cpuDelta(a, b) {
  const s = (x) => round(x / CLK, 2);
  const wall = (b.t - a.t) / 1000;
  const st = b.stewards.map((x, k) => x - a.stewards[k]);
  const stTotal = st.reduce((x, y) => x + y, 0);
  const pg = a.pg !== null && b.pg !== null ? b.pg - a.pg : null;
  const dev = b.devices.map((x, k) => x - a.devices[k]);
  return { wall_s: round(wall, 2), steward_s: st.map(s), stewards_s: s(stTotal), postgres_s: pg === null ? null : s(pg),
    servers_pct_of_one_core: pg === null ? null : round((100 * (stTotal + pg)) / CLK / wall, 1),
    generator_s: { devices: dev.map(s), devices_total: s(dev.reduce((x, y) => x + y, 0)),
      sender: s(b.sender - a.sender), reader: s(b.reader - a.reader), orchestrator: s(b.self - a.self) } };
}
out.cpu = {};
let lastSnap = null;
function cpuMark(name) {
  const now = cpuSnap();
  if (lastSnap) out.cpu[name] = cpuDelta(lastSnap, now);
  lastSnap = now;
}

function waitDelivered(ms) {
  if (slicesDelivered >= I) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => { allDelivered = null; resolve(false); }, ms);
    allDelivered = () => { clearTimeout(timer); allDelivered = null; resolve(true); };
  });
}
// Starts a phase: proposals now carry prefix + index; expect (indices) owe one each, or
// every device when absent.
async function phase(prefix, expect) {
  slicesDelivered = 0;
  await callAll('phase', expect ? { prefix, expect } : { prefix });
}
async function waitFor(pred, ms, step) {
  const end = nowMs() + ms;
  while (nowMs() < end) {
    if (await pred()) return true;
    await sleep(step || 50);
  }
  return false;
}

// Every device process's report: per-device arrival times by index, exactness counters
// summed, and the devices of `expect` (all when null) that have nothing.
async function gather(expect) {
  const reps = await within(callAll('report'), 20000, null);
  if (!reps) { problem('the device processes did not report within 20 s'); return null; }
  const got = new Int32Array(N);
  const gotAt = new Float64Array(N);
  const sum = { delivered: 0, wrong_device: 0, duplicates: 0, stray: 0 };
  const monitors = [];
  for (const r of reps) {
    for (let k = 0; k < r.idx.length; k++) { got[r.idx[k]] = r.got[k]; gotAt[r.idx[k]] = r.gotAt[k]; }
    sum.delivered += r.delivered; sum.wrong_device += r.wrong; sum.duplicates += r.dup; sum.stray += r.stray;
    for (const p of r.problems) problem(p);
    monitors.push(r.monitor);
  }
  let missing = 0;
  const want = expect || Array.from({ length: N }, (_, i) => i);
  for (const i of want) if (got[i] === 0) missing++;
  const ex = { expected: want.length, ...sum, missing,
    exactly_once: missing === 0 && sum.wrong_device === 0 && sum.duplicates === 0 && sum.stray === 0 };
  const ms = monitors.filter(Boolean);
  const worst = { loop_delay_p99_ms: round(Math.max(...ms.map((m) => m.loop_delay_p99_ms))),
    loop_delay_max_ms: round(Math.max(...ms.map((m) => m.loop_delay_max_ms))) };
  return { got, gotAt, ex, worst };
}

// Runs SQL through psql (unix socket, trust), bounded; resolves stdout.
function psql(sql, ms) {
  const cmd = args.psql.split(' ').filter(Boolean);
  return new Promise((resolve, reject) => {
    const p = spawn(cmd[0], cmd.slice(1).concat(['-v', 'ON_ERROR_STOP=1', '-qtAX', '-f', '-']),
      { stdio: ['pipe', 'pipe', 'pipe'] });
    let so = '';
    let se = '';
    p.stdout.on('data', (d) => { so += d; });
    p.stderr.on('data', (d) => { se += d; });
    const timer = setTimeout(() => { p.kill(); reject(new Error(`psql: no answer within ${ms} ms`)); }, ms);
    p.on('exit', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(so); else reject(new Error(`psql exited ${code}: ${se.slice(0, 300)}`));
    });
    p.stdin.end(sql);
  });
}

// Queues one proposal per device (ref prefix + index) through scouts_ingest, the function
// steward's POST /v1/scouts/{id}/items calls (same arguments as its route with a relevant
// item), --queue-chunk devices per statement, each statement its own transaction: each
// queued item sends its 'q' notification at commit, as through the API.
async function queueAll(prefix, ms) {
  const chunk = Number(args['queue-chunk']);
  const ttl = Number(args['ttl-days']);
  const stmts = [];
  for (let lo = 0; lo < N; lo += chunk) {
    const rows = [];
    for (let i = lo; i < Math.min(N, lo + chunk); i++) rows.push(`('${devs[i].scout_id}',${i})`);
    stmts.push('SELECT count(*) FILTER (WHERE q.outcome = \'queued\'), count(*) FROM (VALUES ' + rows.join(',') +
      `) AS v(s, n), LATERAL scouts_ingest(v.s::uuid, '${prefix}' || v.n, false, 'email', 'bench', ` +
      `'subject ' || v.n, 'a short snippet of the message body', ${ttl}) AS q;`);
  }
  const res = await psql(stmts.join('\n'), ms);
  let queued = 0;
  let total = 0;
  for (const line of res.trim().split('\n')) {
    const [a, b] = line.split('|').map(Number);
    queued += a; total += b;
  }
  return { queued, items: total, statements: stmts.length };
}

async function closeAll(ms) {
  const r = await within(callAll('close'), ms, null);
  if (!r) problem(`closing the sockets took more than ${ms} ms`);
}

// ---- phases --------------------------------------------------------------------------------
async function connect() {
  out.instances_before = await instances();
  cpuMark('start');
  const conc = Math.max(1, Math.ceil(Number(args['connect-concurrency']) / I));
  const tc = nowMs();
  const ms = bound(Number(args['connect-timeout']) * 1000);
  const conns = await within(callAll('connect', { concurrency: conc }), ms, null);
  const seconds = (nowMs() - tc) / 1000;
  cpuMark('connect');
  let counts = conns;
  if (!conns) {
    // out of time: stop connecting (count ends the connect), report what connected, and
    // go on with the sessions there are: the idle cost and the ingest over them, and a
    // storm that reconnects every device
    counts = await within(callAll('count'), 5000, null);
    if (!counts) throw new Error('connect: the device processes do not answer');
    partialConnect = true;
    problem(`connect: not every device had hello_ok within ${round(ms / 1000, 0)} s`);
  }
  await sleep(1000);
  const after = await instances();
  const failures = conns ? conns.reduce((a, c) => a + c.failures, 0) : null;
  const authed = (c) => (c.authenticated !== undefined ? c.authenticated : c.authed);
  out.connect = { seconds: round(seconds, 2), concurrency_per_proc: conc, failures,
    timed_out: !conns, timeout_s: round(ms / 1000, 0),
    authenticated: counts.reduce((a, c) => a + authed(c), 0),
    per_proc_authenticated: counts.map(authed),
    ws_connections_total: after.reduce((a, x) => a + (x.ws_connections || 0), 0),
    instances_after: after,
    rss_growth_kib_per_session: round(after.reduce((a, x, k) => a + (x.rss_kib - out.instances_before[k].rss_kib), 0) /
      Math.max(1, after.reduce((a, x) => a + (x.ws_connections || 0), 0)), 2) };
  if (failures) problem(`connect: ${failures} devices could not connect`);
  cpuMark('settle');
}

async function idle() {
  const secs = Number(args['idle-seconds']);
  cpuMark('before_idle');
  // what the budget leaves after keeping a third of it (at most 60 s) for the later phases
  const reserve = Math.min(60000, (Number(args.budget) * 1000) / 3);
  await sleep(Math.min(secs * 1000, Math.max(1000, left() - reserve)));
  cpuMark('idle');
  const c = out.cpu.idle;
  out.idle = { seconds: c.wall_s, stewards_cpu_s: c.stewards_s, postgres_cpu_s: c.postgres_s,
    pct_of_one_core: c.servers_pct_of_one_core, ws_connections: (await instances()).map((x) => x.ws_connections) };
}

async function ingest() {
  // the devices held by every instance but 0 (every device with one instance), first first
  // (after a connect that ran out of time, among the devices that have their session)
  let have = null;
  if (partialConnect) {
    have = new Uint8Array(N);
    for (const r of await callAll('authed')) for (const i of r.idx) have[i] = 1;
  }
  const targets = [];
  for (let i = 0; i < N && targets.length < Number(args.ingest); i++) {
    if ((I === 1 || i % I !== 0) && (!have || have[i])) targets.push(i);
  }
  const rate = Number(args.rate);
  // the C sender (bench/ws-load/ingest-sender.c) when given, else the Node one: same
  // commands, same replies
  sender = args['ingest-bin'] ? new LineChild(args['ingest-bin'], [], () => {})
    : new Child('ws-ingest.js', () => {});
  out.measure_nice = measuring(sender);
  const items = (ids) => ids.map((i) => ({ idx: i, scout_id: devs[i].scout_id }));
  const send = (prefix, ids) => sender.call('ingest', { url: HTTP[0], key: args.key, rate, prefix, preconnect: 8, items: items(ids) });
  // warm-up: the same ingest for the first W targets, delivered and acked before the
  // measured ingest (not measured)
  const W = Math.min(targets.length, Math.round(rate * Number(args.warmup)));
  if (W > 0) {
    const wp = `${args.tag}-w-`;
    const tw = nowMs();
    await phase(wp, targets.slice(0, W));
    const ws = await within(send(wp, targets.slice(0, W)), bound(30000), null);
    let c = null;
    const done = ws && await waitFor(async () => {
      const cs = await callAll('count');
      c = { delivered: 0, acked: 0, wrong: 0, dup: 0, stray: 0 };
      for (const x of cs) for (const k of Object.keys(c)) c[k] += x[k];
      return c.delivered >= W && c.acked >= W;
    }, bound(20000), 50);
    out.ingest_warmup = { items: W, seconds: round((nowMs() - tw) / 1000, 2), http_status: ws && ws.status, counts: c, all_delivered: !!done };
    if (!done) problem(`ingest warm-up: ${JSON.stringify(out.ingest_warmup)}`);
  }
  const ip = `${args.tag}-i-`;
  await phase(ip, targets);
  cpuMark('before_ingest');
  const ms = bound(Number(args['ingest-timeout']) * 1000 + (targets.length * 1000) / rate);
  const delivered = waitDelivered(ms);
  const s = await within(send(ip, targets), ms, null);
  const ok = await delivered;
  cpuMark('ingest');
  await sleep(500); // late duplicates and strays show up here
  const g = await gather(targets);
  if (!s || !g) {
    out.ingest = { n: targets.length, error: !s ? 'the sender did not finish' : 'no device report', all_delivered: ok };
    problem(`ingest: ${out.ingest.error}`);
    return;
  }
  for (const p of s.problems) problem(p);
  const lat = [];
  const httpLat = [];
  const raw = ['i sent_ms http_ms device_ms'];
  for (let k = 0; k < targets.length; k++) {
    const i = targets[k];
    if (s.httpAt[k] > 0) httpLat.push(s.httpAt[k] - s.sent[k]);
    if (g.got[i] > 0) lat.push(g.gotAt[i] - s.sent[k]);
    if (args.raw) {
      raw.push(`${i} ${(s.sent[k] - s.t0).toFixed(3)} ${(s.httpAt[k] - s.sent[k]).toFixed(3)} ` +
        `${g.got[i] ? (g.gotAt[i] - s.sent[k]).toFixed(3) : 'NA'}`);
    }
  }
  if (args.raw) fs.writeFileSync(args.raw, raw.join('\n') + '\n');
  out.ingest = { n: targets.length, through_instance: 0,
    held_by_instances: [...new Set(targets.map((i) => i % I))].sort(), offered_rate: rate,
    send_seconds: round(s.send_seconds, 2), achieved_send_rate: round(targets.length / s.send_seconds, 0),
    http_status: s.status, http_p50_ms: round(percentile(httpLat, 50)), http_p99_ms: round(percentile(httpLat, 99)),
    latency_p50_ms: round(percentile(lat, 50)), latency_p99_ms: round(percentile(lat, 99)),
    latency_max_ms: round(percentile(lat, 100)), all_delivered: ok, ...g.ex,
    others_received: g.ex.stray,
    generator: { sender: s.monitor, devices: g.worst } };
}

async function storm() {
  const tc = nowMs();
  await closeAll(bound(30000));
  const drained = await waitFor(async () => (await instances()).every((x) => x.ws_connections === 0), bound(30000), 200);
  const closeSeconds = (nowMs() - tc) / 1000;
  out.storm = { close_seconds: round(closeSeconds, 2), server_drained: drained };
  if (!drained) problem(`storm: ws_connections did not reach 0: ${JSON.stringify((await instances()).map((x) => x.ws_connections))}`);
  cpuMark('close');
  const sp = `${args.tag}-s-`;
  await phase(sp);
  const tq = nowMs();
  try {
    out.storm.queued = await queueAll(sp, bound(60000));
  } catch (e) {
    out.storm.queued = { error: e.message };
    throw new Error(`storm: queueing failed: ${e.message}`);
  }
  out.storm.queue_seconds = round((nowMs() - tq) / 1000, 2);
  out.storm.queue_method = 'SQL: scouts_ingest per user, one statement per chunk';
  if (out.storm.queued.queued !== N) problem(`storm: ${out.storm.queued.queued} of ${N} proposals queued`);
  cpuMark('queue');
  const readRate = Number(args['read-rate']);
  if (readRate > 0) {
    reader = new Child('reader.js', () => {});
    out.measure_nice = measuring(reader);
    await reader.call('start', { urls: HTTP, key: args.key, rate: readRate, users: devs.map((d) => d.user_id) });
    await sleep(1000); // its first second (first runs of its code) is not measured
    await reader.call('reset');
  }
  const ms = bound(Number(args['storm-timeout']) * 1000);
  const stormDelivered = waitDelivered(ms);
  const ts = nowMs();
  // a device the server closes before its hello_ok connects again 1-2 s later, as a real
  // device would; how many did, and with which close codes, is reported
  const opens = within(callAll('open', { timeout_ms: Math.round(ms), retry: true }), ms + 2000, null);
  const ok = await stormDelivered;
  const op = await opens;
  const reads = reader ? await within(reader.call('stop'), 10000, null) : null;
  cpuMark('storm');
  await sleep(500);
  const g = await gather(null);
  const failed = op ? op.reduce((a, o) => a + o.failures, 0) : null;
  const lastHello = op ? Math.max(...op.map((o) => o.last_hello_at)) : null;
  const codes = {};
  for (const o of op || []) for (const [k, v] of Object.entries(o.close_codes || {})) codes[k] = (codes[k] || 0) + v;
  let lastGot = 0;
  if (g) for (const x of g.gotAt) if (x > lastGot) lastGot = x;
  Object.assign(out.storm, { timeout_s: round(ms / 1000, 0),
    all_hello_ok_seconds: op && !failed ? round((lastHello - ts) / 1000, 2) : null,
    all_delivered_seconds: ok && g ? round((lastGot - ts) / 1000, 2) : null,
    // every device has hello_ok and its own proposal: the later of the two
    all_done_seconds: ok && g && op && !failed ? round((Math.max(lastGot, lastHello) - ts) / 1000, 2) : null,
    connect_failures: failed, closed_before_hello_ok: op ? op.reduce((a, o) => a + o.closed_early, 0) : null,
    reconnects: op ? op.reduce((a, o) => a + o.retries, 0) : null, close_codes: codes,
    hello_ok_at_reply: op ? op.reduce((a, o) => a + o.authed, 0) : null, all_delivered: ok, ...(g ? g.ex : {}),
    generator: { devices: g ? g.worst : null }, reads });
  if (!ok) problem(`storm: not every device had its proposal within ${round(ms / 1000, 0)} s`);
}

async function main() {
  await connect();
  if (PHASES.has('idle')) await idle();
  if (PHASES.has('ingest')) await ingest();
  if (PHASES.has('storm')) await storm();
  out.instances_end = await instances();
  await closeAll(10000);
  finish();
}

function verdict() {
  out.problems = problems;
  out.seconds = round((nowMs() - T0) / 1000, 1);
  out.ok = problems.length === 0 && !out.error && (!out.ingest || out.ingest.exactly_once === true) &&
    (!out.storm || out.storm.exactly_once === true);
}

// Prints the figures and exits once every child has exited.
function finish() {
  verdict();
  console.log(JSON.stringify(out));
  const kids = procs.concat([sender, reader].filter(Boolean));
  let n = kids.length;
  const done = () => { if (--n === 0) process.exit(out.ok ? 0 : 1); };
  for (const c of kids) {
    if (c.proc.exitCode !== null || c.proc.signalCode !== null) done();
    else { c.proc.once('exit', done); c.exit(); }
  }
  setTimeout(() => process.exit(out.ok ? 0 : 1), 10000).unref();
}

function abort(msg, code) {
  console.error(`fleet: ${msg}`);
  out.error = msg;
  try { cpuMark('aborted'); } catch (e) { /* figures as they are */ }
  verdict();
  for (const c of procs.concat([sender, reader].filter(Boolean))) c.proc.kill();
  console.log(JSON.stringify(out));
  process.exit(code);
}

setTimeout(() => abort('overall time limit (--budget) reached', 2), Number(args.budget) * 1000).unref();
main().catch((e) => abort(e.message, 1));
