'use strict';
// Seeds steward through its public API, concurrently: per index i in [0, users)
//   bonds:   PUT  /v1/bonds/u<i>/rate-limit   (creates the bond with a cap the run never hits)
//   posts:   POST /v1/posts/p<i>/metrics       (4 points inside the planner window)
//   lessons: POST /v1/lessons                  (manual lessons, never deduplicated)
//   devices: POST /v1/devices + POST /v1/scouts (one device and one scout per user;
//            written to --out as JSON for ws-load.js)
// Prints one JSON line: per phase the count, seconds and requests per second.
const fs = require('fs');
const { parseArgs, Api, runPool, nowMs, round } = require('./lib');

const args = parseArgs(process.argv.slice(2), {
  url: 'http://127.0.0.1:8080', key: '', users: '10000', phases: 'bonds,posts,lessons,devices',
  concurrency: '48', out: 'devices.json', cap: '1000000',
});
const users = Number(args.users);
const conc = Number(args.concurrency);
const api = new Api(args.url, args.key, conc);

function points(i) {
  const now = Date.now();
  const base = 1000 + (i % 13) * 50;
  const eng = [0, 1, 3, 8, 20][i % 5];
  const out = [];
  for (let k = 0; k < 4; k++) {
    out.push({
      timestamp: new Date(now - (40 - 10 * k) * 60000).toISOString().replace(/\.\d+Z$/, 'Z'),
      impressions: base + k * 100,
      engagements: Math.round((eng * k) / 3),
    });
  }
  return out;
}

const phases = {
  async bonds() {
    await runPool(users, conc, (i) => api.expect('PUT', `/v1/bonds/u${i}/rate-limit`,
      { daily_msg_cap: Number(args.cap) }, [200]));
    return users;
  },
  async posts() {
    await runPool(users, conc, (i) => api.expect('POST', `/v1/posts/p${i}/metrics`,
      { points: points(i) }, [200]));
    return users;
  },
  async lessons() {
    const types = ['gate_failure', 'merge_hold', 'transient_retry', 'deploy_degraded'];
    await runPool(users, conc, (i) => api.expect('POST', '/v1/lessons', {
      lesson_type: types[i % 4], work_item_id: `w${i}`, stage: 'build', repo: 'bench/app',
      root_cause: 'seeded by bench/run', detail: { seq: i },
    }, [201]));
    return users;
  },
  async devices() {
    const rows = new Array(users);
    await runPool(users, conc, async (i) => {
      const d = await api.expect('POST', '/v1/devices', { user_id: `u${i}`, name: `bench-${i}` },
        [201]);
      const s = await api.expect('POST', '/v1/scouts', { user_id: `u${i}`, provider: 'imap' },
        [201]);
      rows[i] = { user_id: `u${i}`, device_id: d.body.device_id, token: d.body.token,
        scout_id: s.body.id };
    });
    fs.writeFileSync(args.out, JSON.stringify(rows));
    return users * 2;
  },
};

(async () => {
  const report = { users };
  for (const name of args.phases.split(',').filter(Boolean)) {
    if (!phases[name]) throw new Error(`unknown phase ${name}`);
    const t0 = nowMs();
    const n = await phases[name]();
    const s = (nowMs() - t0) / 1000;
    report[name] = { requests: n, seconds: round(s, 2), rps: round(n / s, 0) };
  }
  console.log(JSON.stringify(report));
  process.exit(0);
})().catch((e) => {
  console.error(`seed: ${e.message}`);
  process.exit(1);
});
