'use strict';
// What 10,000 idle device sessions cost steward: holds N authenticated sockets open with
// ws-devices (which answers pings and ignores heartbeat frames) and reads steward's CPU
// time from /proc over a window. Run against a release build, e.g. once with the default
// STEWARD_WS_HEARTBEAT_S and once with 5 (the heartbeat frame's share grows sixfold).
//   node bench/ws-load/idle.js --pid <steward pid> --ws ws://127.0.0.1:8081/v1/devices/ws \
//     --devices devices.json (from seed.js --phases devices) --n 10000 --seconds 60
// Prints one JSON line: the sessions held, the window, steward's CPU share (all threads,
// and its busiest thread: the WebSocket service thread when the sessions are idle).
const fs = require('fs');
const path = require('path');
const readline = require('readline');
const { spawn } = require('child_process');
const { parseArgs } = require('./lib');

const args = parseArgs(process.argv.slice(2), {
  pid: '', ws: 'ws://127.0.0.1:8081/v1/devices/ws', devices: 'devices.json', n: '10000',
  seconds: '60', settle: '5',
  'device-bin': path.join(__dirname, '..', '..', 'build-release', 'bench-ws-devices'),
});
const HZ = 100; // USER_HZ: /proc/<pid>/stat counts clock ticks

function ticks(file) {
  const f = fs.readFileSync(file, 'utf8');
  const rest = f.slice(f.lastIndexOf(')') + 2).split(' '); // after "pid (comm) "
  return Number(rest[11]) + Number(rest[12]); // utime + stime
}

function sample(pid) {
  const threads = {};
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      threads[tid] = ticks(`/proc/${pid}/task/${tid}/stat`);
    } catch {
      /* the thread ended */
    }
  }
  return { at: process.hrtime.bigint(), total: ticks(`/proc/${pid}/stat`), threads };
}

async function main() {
  const n = Number(args.n);
  const proc = spawn(args['device-bin'], [args.ws, args.devices, String(n), '0', '1'],
    { stdio: ['pipe', 'pipe', 'inherit'] });
  const replies = new Map();
  readline.createInterface({ input: proc.stdout }).on('line', (line) => {
    const m = JSON.parse(line);
    if (m.id && replies.has(m.id)) replies.get(m.id)(m);
  });
  const call = (id, cmd, extra = {}) => new Promise((resolve) => {
    replies.set(id, resolve);
    proc.stdin.write(JSON.stringify({ id, cmd, ...extra }) + '\n');
  });
  const connected = await call(1, 'connect', { concurrency: 200 });
  await new Promise((r) => setTimeout(r, Number(args.settle) * 1000));
  const a = sample(args.pid);
  await new Promise((r) => setTimeout(r, Number(args.seconds) * 1000));
  const b = sample(args.pid);
  const counts = await call(2, 'count');
  proc.stdin.write(JSON.stringify({ cmd: 'exit' }) + '\n');
  const secs = Number(b.at - a.at) / 1e9;
  const pct = (t) => Math.round((t / HZ / secs) * 1000) / 10;
  const busiest = Math.max(...Object.keys(b.threads).map((t) => b.threads[t] - (a.threads[t] || 0)));
  console.log(JSON.stringify({
    sessions: n, seconds: Math.round(secs), connect: connected.reply, counts: counts.reply,
    cpu_pct: pct(b.total - a.total), busiest_thread_cpu_pct: pct(busiest),
  }));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
