'use strict';
// The bond reader of the fleet benchmark (forked by fleet.js), alone in its process so that
// the orchestrator's work cannot delay its schedule or its timestamps.
// On {cmd: 'start', urls, key, rate, users: [user ids]} it opens two keep-alive
// connections per instance (GET /livez), then sends GET /v1/bonds/{user} for a random
// user at `rate` per second in all, open loop (the schedule never waits for answers),
// request k to urls[k % urls.length]; on {cmd: 'stop'} it stops sending, waits (at most
// 5 s) for the answers still due and replies with the latency of each answered read (from
// just before the request is written to the end of its answer) as p50/p99/max, the
// statuses, the transport errors and its own event-loop delay. {cmd: 'reset'} forgets what
// was measured so far (the first second's reads, before the phase of interest, take the
// first run of the process's request code out of the figures) and keeps sending.
const { monitorEventLoopDelay } = require('perf_hooks');
const { Api, nowMs, percentile, round } = require('./lib');

let run = null;

async function start(m) {
  const apis = m.urls.map((u) => new Api(u, m.key, 16));
  await Promise.all(apis.flatMap((a) => [a.request('GET', '/livez'), a.request('GET', '/livez')]));
  const r = { lat: [], status: {}, errors: 0, problems: [], pending: new Set(), sent: 0,
    stopped: false, eld: monitorEventLoopDelay({ resolution: 1 }), epoch: 0, sentBase: 0 };
  r.eld.enable();
  const t0 = nowMs();
  r.t0 = t0;
  const tick = () => {
    if (r.stopped) return;
    const due = Math.floor(((nowMs() - t0) * m.rate) / 1000) + 1;
    while (r.sent < due) {
      const k = r.sent++;
      const user = m.users[Math.floor(Math.random() * m.users.length)];
      const t = nowMs();
      const epoch = r.epoch;
      const p = apis[k % apis.length].request('GET', `/v1/bonds/${encodeURIComponent(user)}`).then((res) => {
        if (epoch !== r.epoch) return;
        r.lat.push(nowMs() - t);
        r.status[res.status] = (r.status[res.status] || 0) + 1;
      }, (e) => {
        if (epoch !== r.epoch) return;
        r.errors++;
        if (r.problems.length < 10) r.problems.push(e.message);
      }).finally(() => r.pending.delete(p));
      r.pending.add(p);
    }
    setTimeout(tick, 1);
  };
  tick();
  run = r;
  return { started: true };
}

function reset() {
  const r = run;
  if (!r) return { error: 'not started' };
  r.epoch++;
  r.lat = [];
  r.status = {};
  r.errors = 0;
  r.problems = [];
  r.sentBase = r.sent;
  r.t0 = nowMs();
  r.eld.reset();
  return { reset: true };
}

async function stop() {
  const r = run;
  if (!r) return { error: 'not started' };
  r.stopped = true;
  const seconds = (nowMs() - r.t0) / 1000;
  const unanswered = await Promise.race([Promise.all([...r.pending]).then(() => 0),
    new Promise((res) => setTimeout(() => res(r.pending.size), 5000))]);
  r.eld.disable();
  const sent = r.sent - r.sentBase;
  return { seconds: round(seconds, 2), sent, answered: r.lat.length, unanswered,
    rate: round(sent / seconds, 0), status: r.status, errors: r.errors, problems: r.problems,
    p50_ms: round(percentile(r.lat, 50)), p99_ms: round(percentile(r.lat, 99)),
    max_ms: round(percentile(r.lat, 100)),
    loop_delay_p99_ms: round(r.eld.percentile(99) / 1e6), loop_delay_max_ms: round(r.eld.max / 1e6) };
}

process.on('message', async (m) => {
  if (m.cmd === 'exit') process.exit(0);
  let reply;
  try {
    if (m.cmd === 'start') reply = await start(m);
    else if (m.cmd === 'reset') reply = reset();
    else if (m.cmd === 'stop') reply = await stop();
    else reply = { error: `unknown command ${m.cmd}` };
  } catch (e) {
    reply = { error: e.message };
  }
  process.send({ id: m.id, reply });
});
