// steward-device: the device client for steward's WebSocket protocol (docs/protocol.md in
// the steward repository). No dependencies and no build step: it runs as is in a browser or
// an Electron renderer (global WebSocket) and in Node >= 18, the Electron main process,
// where the caller passes a constructor such as the `ws` package's.

export const VERSION = '0.1.0';
/** How many proposal ids are remembered to drop redeliveries (the most recent ones). */
export const MAX_SEEN = 10000;

const BASE_MS = 500; // the first backoff cap; it doubles per failed attempt
const CAP_MS = 30000; // the largest backoff cap
const FLOOR_MS = 100; // the shortest backoff wait: never a zero-delay loop
const STABLE_MS = 10000; // connected this long, the backoff starts over
const GRACE_MS = 10000; // silence past heartbeat_s + this means the connection is dead
const CONNECT_MS = 15000; // from opening the socket to hello_ok
const TERMINAL = ['stopped', 'unauthorized', 'revoked'];

/**
 * Full-jitter exponential backoff: a uniform wait between FLOOR_MS and a cap that doubles
 * from BASE_MS per failed attempt (0, 1, 2, ...) up to CAP_MS.
 */
export function backoffDelay(attempt, random = Math.random) {
  const cap = Math.min(CAP_MS, BASE_MS * 2 ** Math.min(attempt, 16));
  return Math.round(FLOOR_MS + random() * (cap - FLOOR_MS));
}

/** What a close code means to the client: 'reauth' (4401), 'revoked' (4403) or 'retry'. */
export function closePolicy(code) {
  return code === 4401 ? 'reauth' : code === 4403 ? 'revoked' : 'retry';
}

// Close codes that say this client broke the protocol: reported through 'error'.
const PROTOCOL_CODES = [1002, 1003, 1007, 1009, 1010];

function error(message, code) {
  const e = new Error(message);
  if (code !== undefined) e.code = code;
  return e;
}

export class StewardDevice {
  #o;
  #WS;
  #store;
  #state = 'idle';
  #stats = { connects: 0, proposals: 0, duplicates: 0, acks: 0, lastError: null };
  #listeners = new Map();
  #seen = new Set(); // ids handled, oldest first
  #busy = new Set(); // ids whose handler runs or whose id is being stored
  #acks = new Set(); // ids to ack until steward confirms (ack_ok)
  #sock = null;
  #ready = false; // the socket passed hello_ok
  #gen = 0; // bumped whenever a pending connect must be abandoned
  #attempt = 0;
  #reauth = false;
  #timer; // backoff wait
  #stable; // resets the backoff once the connection held STABLE_MS
  #watch; // liveness check
  #lastRx = 0;
  #limit = 0;
  #chain = Promise.resolve(); // storage writes, one after the other
  #saving = null; // the write not yet begun, which later callers share
  #unlisten = null;

  constructor(options = {}) {
    const o = options;
    if (!o.url || !o.deviceId || typeof o.getToken !== 'function')
      throw new TypeError('steward-device: url, deviceId and getToken are required');
    this.#WS = o.WebSocket || globalThis.WebSocket;
    if (typeof this.#WS !== 'function')
      throw new TypeError('steward-device: no global WebSocket here: pass options.WebSocket');
    this.#o = o;
    const s = o.storage;
    this.#store = !s
      ? null
      : s.get
        ? s
        : { get: (k) => s.getItem(k), set: (k, v) => s.setItem(k, v) }; // localStorage
  }

  /** 'idle' | 'connecting' | 'ready' | 'backoff' | 'stopped' | 'unauthorized' | 'revoked' */
  get state() {
    return this.#state;
  }

  /** A copy of the counters. */
  get stats() {
    return { ...this.#stats };
  }

  /** Subscribes to 'state', 'proposal', 'resolved' or 'error'; returns the unsubscribe. */
  on(event, fn) {
    if (!this.#listeners.has(event)) this.#listeners.set(event, new Set());
    const set = this.#listeners.get(event);
    const entry = (...args) => fn(...args); // the same fn may be added twice
    set.add(entry);
    return () => set.delete(entry);
  }

  /** Connects, and keeps connecting until stop() or a terminal state. */
  start() {
    if (this.#state !== 'idle') return this;
    this.#set('connecting');
    const g = globalThis;
    const d = g.document;
    if (typeof g.addEventListener === 'function') {
      const wake = () => this.wake();
      const shown = () => d.visibilityState === 'visible' && this.wake();
      g.addEventListener('online', wake);
      if (d) d.addEventListener('visibilitychange', shown);
      this.#unlisten = () => {
        g.removeEventListener('online', wake);
        if (d) d.removeEventListener('visibilitychange', shown);
      };
    }
    const gen = this.#gen;
    this.#load().then(() => gen === this.#gen && this.#connect());
    return this;
  }

  /** Closes the connection for good: no reconnect after it. */
  stop() {
    if (this.#state !== 'stopped') this.#end('stopped');
  }

  /**
   * Reconnects now when waiting to retry, and checks a connection for silence (after the
   * machine slept): call it on Electron's powerMonitor 'resume'. The browser's 'online'
   * event and the page becoming visible call it by themselves.
   */
  wake() {
    if (this.#state === 'backoff') this.#connect();
    else if (this.#state === 'ready') this.#check();
  }

  #set(state, info) {
    if (state === this.#state) return;
    this.#state = state;
    this.#emit('state', state, info || {});
  }

  #emit(event, ...args) {
    for (const fn of [...(this.#listeners.get(event) || [])]) {
      try {
        fn(...args);
      } catch (e) {
        queueMicrotask(() => {
          throw e; // a listener's own bug: reported, and the client carries on
        });
      }
    }
  }

  #fail(e) {
    this.#stats.lastError = String((e && e.message) || e);
    this.#emit('error', e);
  }

  #terminal() {
    return TERMINAL.includes(this.#state);
  }

  #end(state) {
    this.#gen++;
    clearTimeout(this.#timer);
    this.#drop(1000);
    if (this.#unlisten) this.#unlisten();
    this.#unlisten = null;
    this.#set(state);
  }

  async #connect() {
    if (this.#terminal()) return;
    clearTimeout(this.#timer);
    this.#drop();
    this.#set('connecting');
    const gen = ++this.#gen;
    let token, ws;
    try {
      token = await this.#o.getToken();
      if (gen !== this.#gen) return;
      if (typeof token !== 'string' || !token) throw error('getToken gave no token');
      ws = new this.#WS(this.#o.url);
    } catch (e) {
      if (gen !== this.#gen) return;
      this.#fail(e);
      return this.#backoff();
    }
    this.#sock = ws;
    this.#arm(CONNECT_MS);
    ws.onopen = () => {
      const client = { name: 'steward-device', version: VERSION };
      this.#send({ type: 'device_hello', device_id: this.#o.deviceId, token, client });
    };
    ws.onmessage = (ev) => ws === this.#sock && this.#frame(ev.data);
    ws.onclose = (ev) => ws === this.#sock && this.#closed(ev.code);
    ws.onerror = () => {}; // a close event follows
  }

  #send(frame) {
    const ws = this.#sock;
    if (!ws || ws.readyState !== 1) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  // Lets go of the socket: its events are ignored from now on.
  #drop(code) {
    const ws = this.#sock;
    this.#sock = null;
    this.#ready = false;
    clearTimeout(this.#watch);
    clearTimeout(this.#stable);
    if (!ws) return;
    const none = () => {};
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = none;
    try {
      if (code && ws.readyState === 1) ws.close(code);
      else if (ws.terminate) ws.terminate(); // Node's ws: no closing handshake with the dead
      else if (ws.readyState === 1) ws.close();
      // a browser socket still connecting is left to fail on its own: close() would log
    } catch {
      /* already closed */
    }
  }

  #closed(code) {
    this.#drop();
    this.#stats.lastError = 'closed ' + code;
    const policy = closePolicy(code);
    if (policy === 'revoked') return this.#end('revoked');
    if (policy === 'reauth') {
      if (this.#reauth) return this.#end('unauthorized');
      this.#reauth = true;
      return this.#connect(); // once, with a token fetched again
    }
    if (PROTOCOL_CODES.includes(code)) this.#fail(error('steward closed: protocol error', code));
    this.#backoff(code);
  }

  #backoff(code) {
    this.#drop();
    const delay = backoffDelay(this.#attempt++);
    this.#set('backoff', { delay, attempt: this.#attempt, code });
    this.#timer = setTimeout(() => this.#connect(), delay);
  }

  // Liveness: a socket must hear from steward within #limit of the last frame.
  #arm(limit) {
    this.#limit = limit;
    this.#lastRx = Date.now();
    this.#check();
  }

  #check() {
    clearTimeout(this.#watch);
    const left = this.#lastRx + this.#limit - Date.now();
    if (left > 0) this.#watch = setTimeout(() => this.#check(), left);
    else {
      this.#stats.lastError = 'steward was silent for ' + this.#limit + ' ms';
      this.#backoff();
    }
  }

  #frame(data) {
    this.#lastRx = Date.now();
    let f;
    try {
      f = JSON.parse(data);
    } catch {
      f = null;
    }
    if (!f || typeof f !== 'object' || typeof f.type !== 'string')
      return this.#broken('steward sent a frame that is not a JSON object with a type');
    const pid = f.proposal_id;
    switch (f.type) {
      case 'hello_ok':
        return this.#hello(f);
      case 'scout_proposal':
        return this.#proposal(f.proposal);
      case 'ack_ok':
        this.#acks.delete(pid);
        this.#stats.acks++;
        return;
      case 'scout_proposal_resolved':
        return this.#emit('resolved', pid);
      case 'error':
        // unauthorized and unavailable (of a hello) come with a close: its code decides
        if (f.code === 'not_found') this.#acks.delete(pid);
        if (pid || (f.code !== 'unauthorized' && f.code !== 'unavailable')) {
          const e = error('steward: ' + f.code, f.code);
          if (pid) e.proposalId = pid;
          this.#fail(e);
        }
        return;
      default:
      // 'heartbeat', and frame types this version does not know: ignored
    }
  }

  #broken(message) {
    this.#fail(error(message, 'protocol'));
    this.#backoff();
  }

  #hello(f) {
    if (this.#ready) return;
    this.#ready = true;
    this.#reauth = false;
    const hb = f.heartbeat_s > 0 ? f.heartbeat_s : 30;
    this.#arm(hb * 1000 + GRACE_MS);
    this.#stats.connects++;
    this.#stable = setTimeout(() => (this.#attempt = 0), STABLE_MS);
    this.#set('ready', { sessionId: f.session_id, heartbeatS: hb });
    for (const id of this.#acks) this.#ack(id); // what could not be sent before
  }

  #proposal(p) {
    const id = p && p.id;
    if (typeof id !== 'string') return this.#broken('steward sent a proposal without an id');
    if (this.#busy.has(id)) {
      this.#stats.duplicates++; // acked once its handler is done
    } else if (this.#seen.has(id)) {
      this.#stats.duplicates++;
      this.#remember(id);
      this.#ack(id);
    } else {
      this.#stats.proposals++;
      this.#handle(id, p);
    }
  }

  async #handle(id, p) {
    this.#busy.add(id);
    try {
      this.#emit('proposal', p);
      if (this.#o.onProposal) await this.#o.onProposal(p);
    } catch (e) {
      this.#busy.delete(id); // unacked: steward sends it again, and the handler runs again
      if (e && typeof e === 'object' && !e.proposalId) e.proposalId = id;
      return this.#fail(e);
    }
    this.#remember(id);
    await this.#save();
    this.#busy.delete(id);
    this.#ack(id);
  }

  #ack(id) {
    if (this.#state === 'stopped') return;
    this.#acks.add(id);
    if (this.#ready) this.#send({ type: 'scout_proposal_ack', proposal_id: id });
  }

  #remember(id) {
    this.#seen.delete(id);
    this.#seen.add(id);
    if (this.#seen.size > MAX_SEEN) this.#seen.delete(this.#seen.values().next().value);
  }

  #key() {
    return 'steward-device:' + this.#o.deviceId + ':seen';
  }

  async #load() {
    if (!this.#store) return;
    try {
      const text = await this.#store.get(this.#key());
      const ids = text ? JSON.parse(text) : [];
      if (!Array.isArray(ids)) throw error('stored ids are not a list');
      for (const id of ids) if (typeof id === 'string') this.#remember(id);
    } catch (e) {
      this.#fail(e);
    }
  }

  // Stores the ids seen. Writes run one at a time; calls made before a write begins share
  // it, so a burst of proposals costs one write, not one each.
  #save() {
    if (!this.#store) return Promise.resolve();
    if (!this.#saving) {
      this.#saving = this.#chain = this.#chain.then(async () => {
        this.#saving = null;
        try {
          await this.#store.set(this.#key(), JSON.stringify([...this.#seen]));
        } catch (e) {
          this.#fail(e);
        }
      });
    }
    return this.#saving;
  }
}
