'use strict';
// The ingest sender of the WebSocket load generator (forked by ws-load.js), alone in its
// process so that the device sockets' work cannot delay its schedule or its timestamps.
// On {cmd: 'ingest', url, key, rate, prefix, preconnect, items: [{idx, scout_id}]} it
// opens `preconnect` keep-alive connections (GET /livez), then posts one
// relevant item per entry (POST /v1/scouts/{id}/items, X-Request-Id ing-<idx>) at `rate`
// per second, open loop (the schedule never waits for answers), records for each the
// process.hrtime (CLOCK_MONOTONIC) just before the request is written and when its answer
// arrived, and replies with them plus its own event-loop delay and GC pauses. ws-load.js
// calls it twice: a short warm-up, then the measured ingest.
const { monitorEventLoopDelay, PerformanceObserver } = require('perf_hooks');
const { Api, nowMs, round } = require('./lib');

function item(i, ref) {
  return { source_msg_ref: ref, verdict: 'relevant', reason: 'bench', subject: `subject ${i}`,
    snippet: 'a short snippet of the message body', source_type: 'email' };
}

// One client for the process's life: the measured ingest reuses the warm-up's keep-alive
// connections, as a long-running ingest client would.
let api = null;

async function ingest(m) {
  if (!api) api = new Api(m.url, m.key, Number(process.env.BENCH_INGEST_SOCKETS || 64));
  const n = m.items.length;
  const sent = new Float64Array(n);
  const httpAt = new Float64Array(n);
  const status = {};
  const problems = [];
  const gcs = [];
  const gcObs = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) gcs.push(e.duration);
  });
  gcObs.observe({ entryTypes: ['gc'] });
  // The sender's keep-alive connections are opened before the schedule starts, with
  // GET /livez (no database, not the ingest path), as a long-running ingest client holds
  // its connections: the first ingests then do not pay for TCP connects nor for the
  // first run of this process's request code.
  await Promise.all(Array.from({ length: m.preconnect || 0 }, () => api.request('GET', '/livez')));
  const eld = monitorEventLoopDelay({ resolution: 1 });
  eld.enable();
  const pending = [];
  const t0 = nowMs();
  let next = 0;
  await new Promise((resolve) => {
    const tick = () => {
      const due = Math.min(n, Math.floor(((nowMs() - t0) * m.rate) / 1000) + 1);
      while (next < due) {
        const k = next++;
        const { idx, scout_id: scout } = m.items[k];
        const body = item(idx, m.prefix + idx);
        sent[k] = nowMs();
        pending.push(api.request('POST', `/v1/scouts/${scout}/items`, body,
          { 'X-Request-Id': `ing-${idx}` }).then((r) => {
          httpAt[k] = nowMs();
          status[r.status] = (status[r.status] || 0) + 1;
        }, (e) => {
          status.error = (status.error || 0) + 1;
          if (problems.length < 20) problems.push(e.message);
        }));
      }
      if (next >= n) resolve(); else setTimeout(tick, 1);
    };
    tick();
  });
  const sendSeconds = (nowMs() - t0) / 1000;
  await Promise.all(pending);
  eld.disable();
  gcObs.disconnect();
  return { t0, sent, httpAt, status, problems, send_seconds: sendSeconds,
    monitor: { loop_delay_p50_ms: round(eld.percentile(50) / 1e6),
      loop_delay_p99_ms: round(eld.percentile(99) / 1e6), loop_delay_max_ms: round(eld.max / 1e6),
      gc_count: gcs.length, gc_total_ms: round(gcs.reduce((a, b) => a + b, 0)),
      gc_max_ms: round(gcs.length ? Math.max(...gcs) : 0) } };
}

process.on('message', async (m) => {
  if (m.cmd === 'exit') process.exit(0);
  let reply;
  try {
    reply = m.cmd === 'ingest' ? await ingest(m) : { error: `unknown command ${m.cmd}` };
  } catch (e) {
    reply = { error: e.message };
  }
  process.send({ id: m.id, reply });
});
