// The browser side of tests/browser/device-client.test.mjs: imports the client module as
// published (clients/js/src/index.js, served unchanged) and exposes a small driver on
// window for page.evaluate. One page runs several clients, each for its own device; every
// WebSocket a client opens is kept, with the (possibly fake) time it was opened.
import { StewardDevice, VERSION } from '/client/index.js';

const clients = [];

function tracked(sockets) {
  return class extends WebSocket {
    constructor(url) {
      super(url);
      this.openedAt = Date.now();
      sockets.push(this);
    }
  };
}

window.steward = {
  VERSION,
  clients,
  /** Starts a client; answers its index. hold: the handler waits for release(i). */
  start({ url, deviceId, token, hold = false, storage = true }) {
    const c = { calls: [], states: [], errors: [], resolved: [], sockets: [], gate: null };
    if (hold) c.gate = new Promise((r) => (c.open = r));
    c.dev = new StewardDevice({
      url,
      deviceId,
      getToken: async () => token,
      onProposal: async (p) => {
        c.calls.push(p.id);
        if (c.gate) await c.gate;
      },
      storage: storage ? localStorage : undefined,
      WebSocket: tracked(c.sockets),
    });
    c.dev.on('state', (state, info) => c.states.push({ state, at: Date.now(), ...info }));
    c.dev.on('error', (e) => c.errors.push({ message: e.message, code: e.code }));
    c.dev.on('resolved', (id) => c.resolved.push(id));
    clients.push(c);
    c.dev.start();
    return clients.length - 1;
  },
  release(i) {
    const c = clients[i];
    c.gate = null;
    if (c.open) c.open();
  },
  view(i) {
    const c = clients[i];
    return {
      state: c.dev.state,
      stats: c.dev.stats,
      calls: c.calls,
      errors: c.errors,
      sockets: c.sockets.length,
      states: c.states,
      opened: c.sockets.map((s) => s.openedAt),
    };
  },
};
document.getElementById('status').textContent = 'ready';
