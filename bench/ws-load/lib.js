'use strict';
// Shared helpers of the seeder and the WebSocket load generators: a keep-alive JSON
// client for steward's REST API, a bounded-concurrency runner, percentiles, argv parsing,
// and the command channel to the child processes (a forked Node child, the C device process).
const http = require('http');
const fs = require('fs');
const path = require('path');
const readline = require('readline');
const { fork, spawn } = require('child_process');

function parseArgs(argv, defaults) {
  const out = Object.assign({}, defaults);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) throw new Error(`unexpected argument ${a}`);
    const eq = a.indexOf('=');
    if (eq > 0) {
      out[a.slice(2, eq)] = a.slice(eq + 1);
    } else {
      out[a.slice(2)] = argv[++i];
    }
  }
  return out;
}

class Api {
  constructor(baseUrl, key, maxSockets) {
    const u = new URL(baseUrl);
    this.host = u.hostname;
    this.port = Number(u.port);
    this.key = key;
    this.agent = new http.Agent({ keepAlive: true, maxSockets: maxSockets || 64 });
  }

  // Resolves {status, body (parsed JSON or null), text}; rejects only on transport errors.
  request(method, path, body, extraHeaders) {
    const data = body === undefined ? null : Buffer.from(JSON.stringify(body));
    const headers = Object.assign({ Authorization: `Bearer ${this.key}` }, extraHeaders);
    if (data) {
      headers['Content-Type'] = 'application/json';
      headers['Content-Length'] = data.length;
    }
    return new Promise((resolve, reject) => {
      const req = http.request({ host: this.host, port: this.port, method, path, headers,
        agent: this.agent }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let parsed = null;
          try { parsed = text ? JSON.parse(text) : null; } catch (e) { parsed = null; }
          resolve({ status: res.statusCode, body: parsed, text });
        });
        res.on('error', reject);
      });
      req.setTimeout(30000, () => req.destroy(new Error(`timeout ${method} ${path}`)));
      req.on('error', reject);
      if (data) req.write(data);
      req.end();
    });
  }

  // Like request, but retries transport errors a few times (connection resets under load)
  // and throws unless the status is one of the expected ones.
  async expect(method, path, body, statuses) {
    let lastErr;
    for (let attempt = 0; attempt < 4; attempt++) {
      try {
        const r = await this.request(method, path, body);
        if (!statuses.includes(r.status)) {
          throw new Error(`${method} ${path} -> ${r.status}: ${r.text.slice(0, 300)}`);
        }
        return r;
      } catch (e) {
        lastErr = e;
        if (/ -> \d{3}:/.test(e.message) && !/ -> 503:/.test(e.message)) throw e;
        await new Promise((res) => setTimeout(res, 50 * (attempt + 1)));
      }
    }
    throw lastErr;
  }
}

// Runs fn(i) for i in [0, n) with at most `concurrency` in flight; rejects on first error.
async function runPool(n, concurrency, fn) {
  let next = 0;
  let failed = null;
  async function worker() {
    while (failed === null) {
      const i = next++;
      if (i >= n) return;
      try {
        await fn(i);
      } catch (e) {
        failed = e;
      }
    }
  }
  const workers = [];
  for (let w = 0; w < Math.min(concurrency, n); w++) workers.push(worker());
  await Promise.all(workers);
  if (failed) throw failed;
}

// Nearest-rank percentile of an array of numbers (sorted copy).
function percentile(values, p) {
  if (values.length === 0) return null;
  const s = Float64Array.from(values).sort();
  const rank = Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1));
  return s[rank];
}

function nowMs() {
  return Number(process.hrtime.bigint()) / 1e6;
}

function rssKiB(pid) {
  const text = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /VmRSS:\s+(\d+)\s+kB/.exec(text);
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]);
}

function round(x, digits) {
  if (x === null || x === undefined || !Number.isFinite(x)) return null;
  const f = 10 ** (digits === undefined ? 2 : digits);
  return Math.round(x * f) / f;
}

// A child process answering {id, cmd, ...} with {id, reply}; {ev} messages go to onEvent.
// How messages travel is the subclass's: send(m) writes one, and it calls receive(m) for
// each that arrives.
class Peer {
  constructor(name, proc, onEvent) {
    this.name = name;
    this.proc = proc;
    this.onEvent = onEvent;
    this.waiters = new Map();
    this.seq = 0;
    proc.on('exit', (code) => {
      for (const w of this.waiters.values()) w.reject(new Error(`${name} exited ${code}`));
      this.waiters.clear();
    });
  }

  receive(m) {
    if (m.ev) { this.onEvent(m); return; }
    const w = this.waiters.get(m.id);
    this.waiters.delete(m.id);
    if (!w) return;
    if (m.reply && m.reply.error) w.reject(new Error(`${this.name}: ${m.reply.error}`));
    else w.resolve(m.reply);
  }

  call(cmd, extra) {
    const id = ++this.seq;
    return new Promise((resolve, reject) => {
      this.waiters.set(id, { resolve, reject });
      this.send(Object.assign({ id, cmd }, extra));
    });
  }

  exit() {
    if (this.proc.exitCode === null) this.send({ cmd: 'exit' });
  }
}

// A forked Node child, over Node's IPC channel.
class Child extends Peer {
  constructor(file, onEvent) {
    super(file, fork(path.join(__dirname, file), [], { serialization: 'advanced',
      stdio: ['ignore', 'ignore', 'inherit', 'ipc'] }), onEvent);
    this.proc.on('message', (m) => this.receive(m));
  }

  send(m) {
    if (this.proc.connected) this.proc.send(m);
  }
}

// The C device process, over JSON lines on its stdin and stdout.
class LineChild extends Peer {
  constructor(bin, argv, onEvent) {
    super(bin, spawn(bin, argv, { stdio: ['pipe', 'pipe', 'inherit'] }), onEvent);
    readline.createInterface({ input: this.proc.stdout }).on('line', (line) => this.receive(JSON.parse(line)));
  }

  send(m) {
    if (this.proc.stdin.writable) this.proc.stdin.write(JSON.stringify(m) + '\n');
  }
}

// The processes that take latency measurements (the ingest sender, the bond reader) run
// at nice BENCH_MEASURE_NICE (-10 by default): on this machine the servers and the device
// processes keep both CPUs busy in a storm, and a measuring process waiting for a CPU
// would count its own wait as the servers' latency (the reader's event-loop delay was
// p99 44-70 ms there at nice 0). The device processes stand for remote machines and keep
// the default priority. Returns the nice the process got (0 when it could not be set).
function measuring(child) {
  const nice = Number(process.env.BENCH_MEASURE_NICE ?? -10);
  try {
    require('os').setPriority(child.proc.pid, nice);
    return nice;
  } catch {
    return 0;
  }
}

module.exports = { parseArgs, Api, runPool, percentile, nowMs, rssKiB, round, Peer, Child, LineChild,
  measuring };
