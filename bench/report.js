'use strict';
// Renders the figures recorded by bench/run (one JSON record per line) as the markdown
// results file: machine, versions, every figure, the ratios and the targets met or missed.
const fs = require('fs');

const recs = {};
for (const line of fs.readFileSync(process.argv[2], 'utf8').split('\n')) {
  if (!line.trim()) continue;
  const r = JSON.parse(line);
  recs[r.name] = r.data;
}
const g = (name) => recs[name] || null;
const f = (x, d = 2) => (x === null || x === undefined || Number.isNaN(x) ? 'n/a'
  : Number(x).toLocaleString('en-US', { minimumFractionDigits: d, maximumFractionDigits: d }));
const int = (x) => f(x, 0);
const ratio = (a, b) => (a != null && b ? a / b : null);
const out = [];
const p = (s = '') => out.push(s);

const m = g('machine');
const v = g('versions');
const prm = g('params');
const targets = [];
function target(what, value, shown, ok) {
  targets.push({ what, shown, ok: value === null || value === undefined ? null : ok });
}

p(`# steward benchmark results, ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC`);
p();
p(`Produced by \`bench/run${m.mode === 'quick' ? ' --quick' : ''}\` (see bench/README.md). Client and ` +
  'server share the machine; every figure below comes from this one run, and the ' +
  'comparisons are ratios against raw PostgreSQL measured in the same minute on the same database.');
p();
p('## Machine and versions');
p();
p(`- ${m.nproc} cores (${m.cpu}), ${int(m.mem_mib)} MiB memory, Linux ${m.kernel}, fd limit ${m.fd_limit}`);
const env = (g('settings') || {}).steward_env;
p(`- ${v.steward}, commit ${v.commit}, release build (meson buildtype=release, no sanitizers), ` +
  (env ? `settings \`STEWARD_ACCESS_LOG=false ${env}\`, the rest default`
    : 'defaults except `STEWARD_ACCESS_LOG=false` (pool of 8 connections, 4 HTTP threads, 4 worker threads)'));
p(`- PostgreSQL ${v.postgresql} (throwaway cluster, unix socket, fsync/synchronous_commit off, shared_buffers 1GB)`);
p(`- wrk ${v.wrk}, node ${v.node}; libmicrohttpd ${v.libmicrohttpd}, ` +
  `libwebsockets ${v.libwebsockets}, libpq ${v.libpq}, jansson ${v.jansson}; ${v.cc}`);
p(`- mode ${m.mode}: ${prm.dur_s} s per measured run after ${prm.warm_s} s warm-up, ` +
  `${prm.conc} clients, ${prm.threads} client threads` +
  (prm.perf ? '; sampled with `perf record -F 99 -a -g` during every measured run (--perf)' : ''));
p();

const s = g('seed');
if (s) {
  p('## Seeding (through the API, 48 concurrent clients)');
  p();
  p('| phase | requests | seconds | requests/s |');
  p('|---|---:|---:|---:|');
  for (const k of ['bonds', 'posts', 'lessons', 'devices']) {
    if (s[k]) p(`| ${k} | ${int(s[k].requests)} | ${f(s[k].seconds)} | ${int(s[k].rps)} |`);
  }
  p();
}

p(`## REST at concurrency ${prm.conc}`);
p();
p('| workload | rps / tps | p50 ms | p99 ms | errors / non-2xx | CPU us/request: steward + PostgreSQL + client = total | machine busy |');
p('|---|---:|---:|---:|---:|---|---:|');
const cpu = (w) => (w.cpu_us_per_req ? `${f(w.cpu_us_per_req.steward, 1)} + ${f(w.cpu_us_per_req.postgres, 1)} + ` +
  `${f(w.cpu_us_per_req.client, 1)} = ${f(w.cpu_us_per_req.total, 1)}` : 'n/a');
const busy = (w) => (w.cpu_busy != null ? `${f(100 * w.cpu_busy, 0)}%` : 'n/a');
const errs = (w) => `${w.errors_connect + w.errors_read + w.errors_write + w.errors_timeout} / ${w.non_2xx}`;
// The pgbench comparisons run in alternating rounds (bench/run compare): NAME_rK, pg_NAME_rK,
// pg_NAME_st_rK. The table shows the round with the median steward / pgbench ratio, the
// ratio is that median, and every round is listed below the table.
const median = (xs) => { const a = xs.filter((x) => x != null).sort((x, y) => x - y); return a.length ? a[Math.floor((a.length - 1) / 2)] : null; };
const roundsOf = (name) => Object.keys(recs).filter((n) => new RegExp(`^${name}_r\\d+$`).test(n))
  .sort((a, b) => Number(a.split('_r').pop()) - Number(b.split('_r').pop())).map((n) => recs[n]);
function cmp(name) {
  const st = roundsOf(name); const pg = roundsOf(`pg_${name}`); const pgst = roundsOf(`pg_${name}_st`);
  const n = Math.min(st.length, pg.length);
  if (!n) return null;
  const rounds = [];
  for (let i = 0; i < n; i++) {
    rounds.push({ st: st[i], pg: pg[i], pgst: pgst[i] || null, r: ratio(st[i].rps, pg[i].tps),
      rst: pgst[i] ? ratio(st[i].rps, pgst[i].tps) : null, self: pgst[i] ? ratio(pgst[i].tps, pg[i].tps) : null });
  }
  const mid = [...rounds].sort((a, b) => a.r - b.r)[Math.floor((n - 1) / 2)];
  return { rounds, mid, r: mid.r, rst: median(rounds.map((x) => x.rst)), self: median(rounds.map((x) => x.self)) };
}
for (const name of ['bond_read', 'consume']) {
  const c = cmp(name);
  if (!c) continue;
  recs[name] = c.mid.st; recs[`pg_${name}`] = c.mid.pg;
  if (c.mid.pgst) recs[`pg_${name}_st`] = c.mid.pgst;
  recs[`cmp_${name}`] = c;
}
const rows = [
  ['bond_read', 'steward GET /v1/bonds/{user_id}'],
  ['pg_bond_read', 'pgbench -M prepared: the same SELECT'],
  ['pg_bond_read_st', 'pgbench, the same SELECT, with steward\'s statement_timeout=5000'],
  ['bond_read_half', 'steward GET /v1/bonds/{user_id}, paced to half of peak'],
  ['consume', 'steward POST /v1/bonds/{user_id}/messages'],
  ['pg_consume', 'pgbench -M prepared: the same conditional UPDATE ... RETURNING'],
  ['pg_consume_st', 'pgbench, the same UPDATE, with steward\'s statement_timeout=5000'],
  ['plan', 'steward POST /v1/posts/{post_id}/plan (stored metrics)'],
  ['lessons', 'steward POST /v1/lessons'],
];
for (const [k, label] of rows) {
  const w = g(k);
  if (!w) continue;
  if (k.startsWith('pg_')) p(`| ${label} | ${f(w.tps, 0)} | ${f(w.p50_ms, 3)} | ${f(w.p99_ms, 3)} | - | ${cpu(w)} | ${busy(w)} |`);
  else p(`| ${label} | ${f(w.rps, 0)} | ${f(w.p50_ms, 3)} | ${f(w.p99_ms, 3)} | ${errs(w)} | ${cpu(w)} | ${busy(w)} |`);
}
p();
p('pgbench latencies come from a 10% sample of its per-transaction log; wrk latencies from ' +
  'its own histogram (time from writing a request to its last response byte). CPU per request is ' +
  'the CPU time (user + system, from /proc) each component used during the run divided by the ' +
  'requests: steward\'s process, the whole PostgreSQL cluster (every backend and background ' +
  'process), and the load generator (wrk or pgbench); "machine busy" is their sum over the ' +
  'machine\'s CPU time. With both cores saturated, throughput is bounded by 1 / total.');
p();
const cRead = g('cmp_bond_read'); const cCons = g('cmp_consume');
if (cRead || cCons) {
  p(`Each comparison ran in ${prm.cmp_rounds} alternating rounds of ${prm.cmp_dur_s} s (steward, then pgbench, ` +
    'then pgbench with steward\'s statement_timeout), so both sides meet the same phases of the ' +
    'machine; the rows above are the round with the median ratio, and the ratio is that median. ' +
    'Every round, steward / pgbench:');
  p();
  for (const [c, label] of [[cRead, 'bond read'], [cCons, 'consume']]) {
    if (!c) continue;
    p(`- ${label}: ` + c.rounds.map((x) => `${int(x.st.rps)} / ${int(x.pg.tps)} = ${f(x.r)}x`).join('; '));
  }
  p();
}
const rRead = cRead ? cRead.r : ratio(g('bond_read') && g('bond_read').rps, g('pg_bond_read') && g('pg_bond_read').tps);
const rCons = cCons ? cCons.r : ratio(g('consume') && g('consume').rps, g('pg_consume') && g('pg_consume').tps);
const half = g('bond_read_half');
const ht = g('bond_read_half_target');
p(`- bond read: steward / pgbench = **${f(rRead)}x**`);
if (half && ht) {
  p(`- half of peak: offered ${int(ht.target_rps)} rps (peak ${int(ht.peak_rps)}), achieved ` +
    `${int(half.rps)} rps (${f((100 * half.rps) / ht.peak_rps, 0)}% of peak), p50 ${f(half.p50_ms, 3)} ms, ` +
    `p99 **${f(half.p99_ms, 3)} ms**`);
}
p(`- atomic consume: steward / pgbench = **${f(rCons)}x**`);
const st1 = g('pg_bond_read_st'); const st2 = g('pg_consume_st');
if (cRead && cCons && cRead.rst != null && cCons.rst != null) {
  p(`- for reference, against pgbench with the statement_timeout steward's connections carry (median of the rounds): bond read ` +
    `${f(cRead.rst)}x, consume ${f(cCons.rst)}x (pgbench itself: ${f(cRead.self)}x and ${f(cCons.self)}x of its plain run)`);
} else if (st1 && st2) {
  p(`- for reference, against pgbench with the statement_timeout steward's connections carry: bond read ` +
    `${f(ratio(g('bond_read').rps, st1.tps))}x, consume ${f(ratio(g('consume').rps, st2.tps))}x ` +
    `(pgbench itself: ${f(ratio(st1.tps, g('pg_bond_read').tps))}x and ${f(ratio(st2.tps, g('pg_consume').tps))}x of its plain run)`);
}
p();
target(`bond read >= 0.7x pgbench at concurrency ${prm.conc}`, rRead, `${f(rRead)}x`, rRead >= 0.7);
if (half) target('bond read p99 < 5 ms at half of peak', half.p99_ms, `${f(half.p99_ms, 3)} ms at ${int(half.rps)} rps`,
  half.p99_ms < 5);
target('atomic consume >= 0.7x pgbench UPDATE', rCons, `${f(rCons)}x`, rCons >= 0.7);

const wsKeys = Object.keys(recs).filter((k) => /^ws_\d+$/.test(k)).sort((a, b) =>
  Number(a.slice(3)) - Number(b.slice(3)));
if (wsKeys.length) {
  p('## WebSocket devices');
  p();
  p('| devices | connect s | RSS before KiB | RSS after KiB | KiB/connection | ingest p50 ms | ingest p99 ms | max ms | proposals/s | exactly own | storm: all hello_ok s | storm: all delivered s | storm exactly own |');
  p('|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|');
  const own = (x) => (!x ? 'n/a' : x.exactly_once ? 'yes'
    : `NO (${x.missing} missing, ${x.wrong_device} wrong, ${x.duplicates} dup, ${x.stray} stray)`);
  for (const k of wsKeys) {
    const w = g(k);
    const c = w.connect || {}; const i = w.ingest || {}; const st = w.storm || {};
    p(`| ${int(w.n)} | ${f(c.seconds)} | ${int(c.rss_before_kib)} | ${int(c.rss_after_kib)} | ` +
      `${f(c.kib_per_connection)} | ${f(i.latency_p50_ms)} | ${f(i.latency_p99_ms)} | ${f(i.latency_max_ms)} | ` +
      `${int(i.proposals_per_s)} | ${own(w.ingest)} | ${f(st.all_hello_ok_seconds)} | ` +
      `${f(st.all_delivered_seconds)} | ${own(w.storm)} |`);
  }
  p();
  for (const k of wsKeys) {
    const w = g(k);
    if (w.error) p(`- ${int(w.n)} devices: **the run stopped: ${w.error}**`);
    if (w.ingest) {
      p(`- ${int(w.n)} devices: ingest offered ${int(w.ingest.offered_rate)}/s, sent at ${int(w.ingest.achieved_send_rate)}/s, ` +
        `HTTP status ${JSON.stringify(w.ingest.http_status)}, ingest HTTP p50 ${f(w.ingest.http_p50_ms)} ms / p99 ${f(w.ingest.http_p99_ms)} ms` +
        (w.storm ? `; storm: sockets closed in ${f(w.storm.close_seconds)} s, queued ${JSON.stringify(w.storm.queued_while_away)} ` +
          `in ${f(w.storm.queue_seconds)} s, ${w.storm.connect_failures} reconnect failures` : ''));
    }
    if (w.warmup) {
      p(`  warm-up before the measured ingest (not measured): ${int(w.warmup.items)} items at the same rate, ` +
        `HTTP status ${JSON.stringify(w.warmup.http_status)}, ${int(w.warmup.delivered)} delivered and ` +
        `${int(w.warmup.acked)} acked after ${f(w.warmup.seconds)} s`);
    }
    const gen = w.ingest && w.ingest.generator;
    if (gen && gen.sender && gen.devices) {
      const how = gen.sender.kind === 'c'
        ? `one C sender): the sender was late on its schedule p99 / max ${f(gen.sender.loop_delay_p99_ms)} / ${f(gen.sender.loop_delay_max_ms)} ms`
        : `one Node sender): event-loop delay p99 / max ${f(gen.sender.loop_delay_p99_ms)} / ${f(gen.sender.loop_delay_max_ms)} ms ` +
          `and longest GC pause ${f(gen.sender.gc_max_ms)} ms in the sender`;
      p(`  load generator during the ingest (the devices in ${int(w.device_procs)} C process${w.device_procs === 1 ? '' : 'es'}, ${how}; the device process spent p99 / max ` +
        `${f(gen.devices.loop_delay_p99_ms)} / ${f(gen.devices.loop_delay_max_ms)} ms on one batch of socket events`);
    }
    const pw = w.ingest && w.ingest.pool_waits;
    if (pw) {
      p(`  steward's pool during the ingest: ${int(pw.checkouts)} checkouts, ${int(pw.over_1ms)} waited > 1 ms, ` +
        `${int(pw.over_5ms)} > 5 ms, ${int(pw.over_10ms)} > 10 ms`);
    }
    if (w.run && w.run.cpu_us_total) {
      const t = w.run.cpu_us_total;
      p(`  CPU seconds over the whole ${int(w.n)}-device run: steward ${f(t.steward / 1e6)}, PostgreSQL ` +
        `${f(t.postgres / 1e6)}, load generator ${f(t.client / 1e6)} (machine ${f(100 * w.run.cpu_busy, 0)}% busy)`);
    }
    if (w.problems && w.problems.length) p(`  problems: ${w.problems.slice(0, 5).join('; ')}`);
  }
  p();
  p('Latency is measured from sending the ingest POST (in the sender process) to the `scout_proposal` ' +
    'frame arriving on the device (in the device process), both stamped with CLOCK_MONOTONIC ' +
    '(clock_gettime in the C sender and device processes, process.hrtime in the Node sender when it is used), one clock for every process of the machine. The measured ingest follows a ' +
    'warm-up of one second of the same ingest for the first users (as every REST run follows its ' +
    'warm-up), whose proposals are delivered and acked before it starts. "exactly own": every device received exactly one proposal, ' +
    'its own, and nothing else. Storm: every device closes, one proposal per user is queued while they ' +
    'are away, then all devices reconnect at once; the time runs from the first connect until the last ' +
    'device holds its proposal.' + measureNote(wsKeys.map(g)));
  p();
  const big = g('ws_10000') || g(wsKeys[wsKeys.length - 1]);
  if (big && big.connect && big.ingest) {
    const n = int(big.n);
    target(`${n} sockets, RSS growth < 20 KiB per connection`, big.connect.kib_per_connection,
      `${f(big.connect.kib_per_connection)} KiB`, big.connect.kib_per_connection < 20);
    target(`ingest-to-device p99 < 20 ms at ${int(big.ingest.offered_rate)} proposals/s (${n} devices)`,
      big.ingest.latency_p99_ms, `${f(big.ingest.latency_p99_ms)} ms`,
      big.ingest.latency_p99_ms < 20 && big.ingest.exactly_once);
    if (big.storm) target(`reconnect storm of ${n} fully delivered < 10 s`, big.storm.all_delivered_seconds === null ? -1 : big.storm.all_delivered_seconds,
      big.storm.all_delivered_seconds === null ? 'not all delivered' : `${f(big.storm.all_delivered_seconds)} s`,
      big.storm.all_delivered_seconds !== null && big.storm.all_delivered_seconds < 10 && big.storm.exactly_once);
  } else {
    target('10,000 sockets (WebSocket phase)', -1, big ? `failed: ${big.error}` : 'not run', false);
  }
}

const rs = g('scale_rows_small'); const rb = g('scale_rows_big');
if (rs || rb) {
p(`## Scale: ${int(prm.scale_small)} vs ${int(prm.scale_big)} stored rows (concurrency ${prm.scale_conc})`);
p();
if (rs && rb) p(`Rows loaded through SQL (generate_series): small ${JSON.stringify(rs)}, big ${JSON.stringify(rb)}.`);
p();
p('Each size is measured in 3 alternating rounds (small, big, small, big, ...); the table gives ' +
  'the median of the rounds, the per-round p50 values follow.');
p();
p('| workload | p50 small ms | p50 big ms | big / small | p99 small ms | p99 big ms | rps small | rps big | p50 per round small / big |');
p('|---|---:|---:|---:|---:|---:|---:|---:|---|');
for (const [k, label] of [['bond_read', 'GET /v1/bonds/{user_id}'], ['plan', 'POST /v1/posts/{post_id}/plan']]) {
  const rounds = (size) => Object.keys(recs).filter((n) => n.startsWith(`scale_${k}_${size}_`)).sort().map((n) => recs[n]);
  const a = rounds('small'); const b = rounds('big');
  if (!a.length || !b.length) continue;
  const m = (xs, key) => median(xs.map((x) => x[key]));
  const r = ratio(m(b, 'p50_ms'), m(a, 'p50_ms'));
  p(`| ${label} | ${f(m(a, 'p50_ms'), 3)} | ${f(m(b, 'p50_ms'), 3)} | **${f(r)}x** | ${f(m(a, 'p99_ms'), 3)} | ${f(m(b, 'p99_ms'), 3)} | ` +
    `${int(m(a, 'rps'))} | ${int(m(b, 'rps'))} | ${a.map((x) => f(x.p50_ms, 3)).join(', ')} / ${b.map((x) => f(x.p50_ms, 3)).join(', ')} |`);
  target(`${label} p50 with ${int(prm.scale_big)} rows within 1.2x of ${int(prm.scale_small)}`, r, `${f(r)}x`, r <= 1.2);
}
p();
}

// ---- ceiling and fleet (bench/run steps; ws-load/fleet.js) ----
const own2 = (x) => (!x || x.exactly_once === undefined ? 'n/a' : x.exactly_once ? 'yes'
  : `NO (${x.missing} missing, ${x.wrong_device} wrong, ${x.duplicates} dup, ${x.stray} stray)`);
const budgetOf = (b) => (b && b.nofile ? `nofile ${int(b.nofile)}, reserve ${int(b.reserve)}, HTTP max ${int(b.http_max_connections)}, ` +
  `WS max ${int(b.ws_max_connections)}` : 'n/a');
// Per-phase CPU seconds of every component, from fleet.js's cpu marks.
function cpuTable(c, stewardsLabel) {
  if (!c) return;
  const names = { connect: 'connect', settle: 'settle (1 s)', idle: 'idle', ingest: 'ingest (measured)',
    before_ingest: 'ingest warm-up', close: 'close + drain', queue: 'queue (SQL)', storm: 'storm', aborted: 'until aborted' };
  p(`| phase | wall s | ${stewardsLabel} CPU s | PostgreSQL CPU s | servers, % of one core | device processes CPU s | ingest sender | bond reader | orchestrator |`);
  p('|---|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const [k, label] of Object.entries(names)) {
    const x = c[k];
    if (!x) continue;
    p(`| ${label} | ${f(x.wall_s)} | ${f(x.stewards_s)}${x.steward_s.length > 1 ? ` (${x.steward_s.map((v) => f(v)).join(' / ')})` : ''} | ` +
      `${f(x.postgres_s)} | ${f(x.servers_pct_of_one_core, 1)}% | ${f(x.generator_s.devices_total)} | ${f(x.generator_s.sender)} | ` +
      `${f(x.generator_s.reader)} | ${f(x.generator_s.orchestrator)} |`);
  }
  p();
}
// A storm's sessions the server closed before hello_ok (each connects again 1-2 s later,
// as a device would) and the sessions that never had hello_ok in time.
const closes = (st) => `${int(st.closed_before_hello_ok)} sessions closed by the server before hello_ok` +
  `${st.close_codes && Object.keys(st.close_codes).length ? ` (why: ${JSON.stringify(st.close_codes)})` : ''}` +
  ` and connected again (${int(st.reconnects)} reconnects), ${st.connect_failures ?? 'n/a'} without hello_ok in the end` +
  `${st.hello_ok_at_reply != null ? ` (${int(st.hello_ok_at_reply)} sessions had it)` : ''}`;
function problemsOf(x) {
  if (x.error) p(`- **the step stopped: ${x.error}**`);
  if (x.problems && x.problems.length) p(`- problems: ${x.problems.slice(0, 8).join('; ')}`);
}
function measureNote(figs) {
  const nice = (figs.find((x) => x && x.measure_nice !== undefined) || {}).measure_nice;
  return nice ? ` The processes that take the measurements (the ingest sender, and the fleet's bond reader) ran at nice ${nice}, ` +
    'the device processes and the servers at the default priority (bench/README.md).' : '';
}
const kern = g('kernel');
const kernLine = kern ? `Kernel: net.ipv4.ip_local_port_range ${kern.ip_local_port_range}, tcp_tw_reuse ${kern.tcp_tw_reuse}, ` +
  `somaxconn ${kern.somaxconn}, tcp_max_syn_backlog ${kern.tcp_max_syn_backlog}, fs.file-max ${int(kern.file_max)}, ` +
  `ulimit -n ${kern.nofile_soft} (hard ${kern.nofile_hard})` +
  (kern.huge_pages !== undefined ? `, vm.nr_hugepages ${kern.huge_pages} (PostgreSQL's shared memory in ${kern.huge_pages_postgres} of them)` : '') +
  `${kern.changed ? `; changed by bench/run: ${kern.changed}` : ''}.` : null;

const ce = g('ceiling');
if (ce) {
  const c = ce.connect || {}; const st = ce.storm || {};
  const before = (ce.instances_before || [])[0] || {}; const after = (c.instances_after || [])[0] || {};
  const end = (ce.instances_end || [])[0] || {};
  p(`## One instance at its fd ceiling: ${int(ce.n)} device sessions`);
  p();
  p(`A fresh release steward (\`${ce.steward_env || ''}\`; descriptor budget at start: ${budgetOf((ce.descriptor_budgets || [])[0])}). ` +
    'steward splits its open-file limit between HTTP and WebSocket connections in proportion to their maxima ' +
    '(src/app/sizing.c): with the default HTTP maximum (16,384) WebSocket would get about 11,000 of the 20,000 files, ' +
    'with 1,000 still 18,976, so the HTTP maximum is 900 here. ' +
    `${ce.seed ? `${int(ce.seed.users)} users (bond, scout, device) inserted through SQL in ${f(ce.seed.seconds)} s. ` : ''}` +
    'One C device process holds every socket.');
  p();
  p('| sessions after hello | connect s | RSS before KiB | RSS after KiB | KiB per session | open fds before | open fds after | storm: queued (s) | storm: all hello_ok s | storm: all hello_ok and own proposal s | storm exactly own |');
  p('|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|');
  const kib = before.rss_kib != null && after.rss_kib != null && c.ws_connections_total
    ? (after.rss_kib - before.rss_kib) / c.ws_connections_total : null;
  p(`| ${int(c.ws_connections_total)} | ${f(c.seconds)} | ${int(before.rss_kib)} | ${int(after.rss_kib)} | ${f(kib)} | ` +
    `${int(before.fds)} | ${int(after.fds)} | ${st.queued ? `${int(st.queued.queued)} (${f(st.queue_seconds)})` : 'n/a'} | ` +
    `${f(st.all_hello_ok_seconds)} | ${f(st.all_done_seconds)} | ${own2(st)} |`);
  p();
  p(`- connect: ${int(c.authenticated)} authenticated, ${int(c.failures)} failures${c.timed_out ? `, **not all within ${int(c.timeout_s)} s**` : ''}; ` +
    `storm: sockets closed and the gauge at 0 in ${f(st.close_seconds)} s (drained: ${st.server_drained}), ` +
    `proposals queued through SQL (scouts_ingest, ${st.queued ? st.queued.statements : 'n/a'} statement(s)), ` +
    `${closes(st)}, bounded at ${int(st.timeout_s)} s; at the end RSS ${int(end.rss_kib)} KiB, ${int(end.fds)} fds, ` +
    `${int(end.ws_connections)} sessions; the device process spent p99 / max ${f(st.generator && st.generator.devices && st.generator.devices.loop_delay_p99_ms)} / ` +
    `${f(st.generator && st.generator.devices && st.generator.devices.loop_delay_max_ms)} ms on one batch of socket events`);
  problemsOf(ce);
  p();
  cpuTable(ce.cpu, 'steward');
  if (kernLine) { p(kernLine); p(); }
  const okN = c.ws_connections_total === ce.n && c.failures === 0;
  target(`one instance: ${int(ce.n)} device sessions after hello, < 8 KiB RSS each`, kib === null ? -1 : kib,
    kib === null ? 'not measured' : `${int(c.ws_connections_total)} sessions, ${f(kib)} KiB each`, okN && kib < 8);
  target(`one instance: reconnect storm of ${int(ce.n)}, each with a queued proposal, drained (hello_ok and own) < 6 s`,
    st.all_done_seconds === undefined ? null : -1,
    st.all_done_seconds == null ? `not drained${ce.error ? `: ${ce.error}` : ''}` : `${f(st.all_done_seconds)} s, exactly own: ${own2(st)}`,
    st.all_done_seconds != null && st.all_done_seconds < 6 && st.exactly_once === true);
}

const fl = g('fleet');
if (fl) {
  const c = fl.connect || {}; const id = fl.idle; const ing = fl.ingest; const st = fl.storm || {};
  const I = fl.instances || 0;
  p(`## ${I} instances, one PostgreSQL: ${int(fl.n)} devices`);
  p();
  p(`${I} fresh release stewards on one database (\`${fl.steward_env || ''}\` each, own ports, one admin key); ` +
    `${fl.seed ? `${int(fl.seed.users)} users (bond, scout, device) inserted through SQL in ${f(fl.seed.seconds)} s; ` : ''}` +
    `${I} C device processes, process p holding the devices i with i mod ${I} = p, connected to instance p. ` +
    `Descriptor budget of instance 0: ${budgetOf((fl.descriptor_budgets || [])[0])}.`);
  p();
  p('| instance | sessions (ws_connections) | RSS before KiB | RSS connected KiB | RSS at end KiB | KiB per session | fds before | fds connected | fds at end |');
  p('|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  const b0 = fl.instances_before || []; const a1 = c.instances_after || []; const e2 = fl.instances_end || [];
  for (let k = 0; k < I; k++) {
    const b = b0[k] || {}; const a = a1[k] || {}; const e = e2[k] || {};
    const per = a.ws_connections ? (a.rss_kib - b.rss_kib) / a.ws_connections : null;
    p(`| ${k} | ${int(a.ws_connections)} | ${int(b.rss_kib)} | ${int(a.rss_kib)} | ${int(e.rss_kib)} | ${f(per)} | ${int(b.fds)} | ${int(a.fds)} | ${int(e.fds)} |`);
  }
  p();
  p(`- **connect**: ${int(c.ws_connections_total)} sessions in total (sum of the instances' ws_connections), ${int(c.authenticated)} ` +
    `hello_ok in ${f(c.seconds)} s (${int(c.concurrency_per_proc)} handshakes in flight per process), ${int(c.failures)} failures` +
    `${c.timed_out ? `, **not all within ${int(c.timeout_s)} s**: the step went on with the sessions there were` : ''}`);
  if (id) {
    p(`- **idle** over ${f(id.seconds)} s with every device connected: ${f(id.stewards_cpu_s)} CPU s in the ${I} stewards, ` +
      `${f(id.postgres_cpu_s)} in PostgreSQL: **${f(id.pct_of_one_core, 1)}% of one core** (heartbeat ${fl.heartbeat_s || 30} s, presence refresh every half heartbeat)`);
  }
  if (ing) {
    p(`- **ingest across instances**: ${int(ing.n)} proposals offered at ${int(ing.offered_rate)}/s through instance 0's REST for devices held by instances ` +
      `${(ing.held_by_instances || []).join(', ')}; sent at ${int(ing.achieved_send_rate)}/s, HTTP ${JSON.stringify(ing.http_status)} ` +
      `(HTTP p50 ${f(ing.http_p50_ms)} / p99 ${f(ing.http_p99_ms)} ms); POST to frame on the device p50 ${f(ing.latency_p50_ms)} ms, ` +
      `**p99 ${f(ing.latency_p99_ms)} ms**, max ${f(ing.latency_max_ms)} ms; every device exactly its own: ${own2(ing)}; ` +
      `devices not ingested received ${int(ing.others_received)}`);
    const gen = ing.generator;
    if (gen && gen.sender && gen.devices) {
      const how = gen.sender.kind === 'c'
        ? `C sender (bench/ws-load/ingest-sender.c) late on its schedule p99 / max ${f(gen.sender.loop_delay_p99_ms)} / ${f(gen.sender.loop_delay_max_ms)} ms`
        : `Node sender event-loop delay p99 / max ${f(gen.sender.loop_delay_p99_ms)} / ${f(gen.sender.loop_delay_max_ms)} ms, longest GC ${f(gen.sender.gc_max_ms)} ms`;
      p(`  generator during the ingest: ${how}; device processes p99 / max ${f(gen.devices.loop_delay_p99_ms)} / ${f(gen.devices.loop_delay_max_ms)} ms per batch of socket events`);
    }
    if (fl.ingest_warmup) p(`  warm-up before it (not measured): ${int(fl.ingest_warmup.items)} items, all delivered and acked: ${fl.ingest_warmup.all_delivered}`);
    const ci = fl.cpu && fl.cpu.ingest;
    if (ci && ing.n) {
      p(`  CPU per ingested proposal (the measured ingest phase's CPU over its proposals, deliveries and acks included): ` +
        `stewards ${f((1000 * ci.stewards_s) / ing.n)} ms (instance 0, which takes the POSTs, ${f((1000 * ci.steward_s[0]) / ing.n)} ms), ` +
        `PostgreSQL ${f((1000 * ci.postgres_s) / ing.n)} ms`);
    }
  }
  if (fl.storm) {
    const r = st.reads;
    p(`- **reconnect storm**: every device closed, every instance's gauge at 0 after ${f(st.close_seconds)} s (drained: ${st.server_drained}); ` +
      `${st.queued ? `${int(st.queued.queued)} of ${int(st.queued.items)} proposals queued through SQL (scouts_ingest, the function the ingest route calls, ` +
        `${st.queued.statements} statements of up to 10,000) in ${f(st.queue_seconds)} s` : `queueing failed: ${JSON.stringify(st.queued)}`}; ` +
      `then all reconnected at once: every hello_ok after ${f(st.all_hello_ok_seconds)} s, **every hello_ok and own proposal after ${f(st.all_done_seconds)} s** ` +
      `(bounded at ${int(st.timeout_s)} s); exactly own: ${own2(st)}; ${closes(st)}`);
    if (r) {
      p(`  bond reads during the storm (GET /v1/bonds/{user_id}, ${int(r.rate)}/s open loop over the ${I} instances, ${f(r.seconds)} s): ` +
        `${int(r.answered)} of ${int(r.sent)} answered, status ${JSON.stringify(r.status)}, ${int(r.errors)} transport errors, ` +
        `p50 ${f(r.p50_ms)} ms, **p99 ${f(r.p99_ms)} ms**, max ${f(r.max_ms)} ms (reader's event-loop delay p99 / max ${f(r.loop_delay_p99_ms)} / ${f(r.loop_delay_max_ms)} ms)`);
    }
  }
  problemsOf(fl);
  p();
  p('CPU seconds of every component in each phase (the load generator\'s processes included):');
  p();
  cpuTable(fl.cpu, 'stewards');
  if (measureNote([fl])) { p(measureNote([fl]).trim()); p(); }
  if (kernLine) { p(kernLine); p(); }
  const n = int(fl.n);
  target(`${I} instances, one PostgreSQL: ${n} device sessions in total`, c.ws_connections_total === undefined ? -1 : c.ws_connections_total,
    `${int(c.ws_connections_total)} sessions${c.seconds != null ? ` (connected in ${f(c.seconds)} s)` : ''}`,
    c.ws_connections_total === fl.n && !c.timed_out);
  if (ing) {
    target(`ingest across instances: p99 < 50 ms at ${int(ing.offered_rate)} proposals/s through one instance, every device exactly its own`,
      ing.latency_p99_ms === undefined ? -1 : ing.latency_p99_ms, `${f(ing.latency_p99_ms)} ms, exactly own: ${own2(ing)}`,
      ing.latency_p99_ms < 50 && ing.exactly_once === true);
  } else target('ingest across instances: p99 < 50 ms at 1,000 proposals/s', -1, 'not run', false);
  target(`reconnect storm of ${n}: hello_ok and own proposal < 60 s, none wrong, none missing`,
    -1, st.all_done_seconds == null ? `not drained${fl.error ? `: ${fl.error}` : ''}` : `${f(st.all_done_seconds)} s, exactly own: ${own2(st)}`,
    st.all_done_seconds != null && st.all_done_seconds < 60 && st.exactly_once === true);
  target(`idle cost with ${n} connected: all instances + PostgreSQL < 25% of one core`, -1,
    id ? `${f(id.pct_of_one_core, 1)}% over ${f(id.seconds, 0)} s` : 'not measured', !!id && id.pct_of_one_core < 25);
  const r = st.reads;
  target('a REST bond read during the storm: p99 < 100 ms', -1,
    r ? `${f(r.p99_ms)} ms (${int(r.answered)} reads, ${int(r.errors)} errors)` : 'not measured',
    !!r && r.p99_ms < 100 && r.errors === 0 && r.unanswered === 0 && Object.keys(r.status).every((k) => k === '200'));
}

p('## Targets');
p();
p('| target | measured | met |');
p('|---|---|---|');
for (const t of targets) p(`| ${t.what} | ${t.shown} | ${t.ok === null ? 'n/a' : t.ok ? 'yes' : '**no**'} |`);
p();
const rss = g('steward_rss_end');
if (rss) p(`steward RSS at the end of the main run: ${int(rss.kib)} KiB.`);
if (process.argv[3] === '--summary') {
  // The block bench/run puts into bench/README.md: headline figures and the targets.
  const sum = [];
  const file = process.argv[4] || '';
  sum.push(`Run of ${new Date().toISOString().slice(0, 10)} (${m.nproc} cores, ${int(m.mem_mib)} MiB; full ` +
    `figures in [\`results/${file}\`](results/${file})):`);
  sum.push('');
  sum.push('| target | measured | met |');
  sum.push('|---|---|---|');
  for (const t of targets) sum.push(`| ${t.what} | ${t.shown} | ${t.ok === null ? 'n/a' : t.ok ? 'yes' : '**no**'} |`);
  process.stdout.write(sum.join('\n') + '\n');
} else {
  process.stdout.write(out.join('\n') + '\n');
}
