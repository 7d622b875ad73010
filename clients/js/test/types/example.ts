// Type-checked by clients/js/test/package.test.mjs (tsc --noEmit): how an app uses the
// client, and, marked @ts-expect-error, uses the types must refuse.
import {
  StewardDevice,
  backoffDelay,
  type DeviceState,
  type DeviceStats,
  type Proposal,
  type WebSocketLike,
} from 'steward-device';

declare const store: Map<string, string>;
declare function saveToDisk(p: Proposal): Promise<void>;

const dev = new StewardDevice({
  url: 'ws://localhost:8081/v1/devices/ws',
  deviceId: '935a3137-df80-4a2b-a590-55ca7c7ec1ae',
  getToken: async () => 'dev_token',
  onProposal: async (p) => {
    const subject: string | null = p.raw_subject;
    if (subject) await saveToDisk(p);
  },
  storage: { get: (k) => store.get(k), set: (k, v) => void store.set(k, v) },
});
const off: () => void = dev.on('state', (state, info) => {
  const s: DeviceState = state;
  if (s === 'backoff') console.log(info.delay, info.attempt, info.code);
});
off();
dev.on('proposal', (p) => console.log(p.id.toUpperCase()));
dev.on('resolved', (id) => console.log(id.length));
dev.on('error', (e) => console.log(e.message, e.code, e.proposalId));
dev.start().wake();
const stats: DeviceStats = dev.stats;
const n: number = stats.connects + stats.proposals + stats.duplicates + stats.acks;
const last: string | null = stats.lastError;
dev.stop();
console.log(n, last, backoffDelay(3), backoffDelay(3, Math.random));

// localStorage as is, and a WebSocket constructor of one's own (Node's ws fits the shape)
declare const NodeWS: new (url: string) => WebSocketLike;
new StewardDevice({
  url: 'ws://x',
  deviceId: 'd',
  getToken: () => 't',
  storage: localStorage,
  WebSocket: NodeWS,
});

// @ts-expect-error getToken is required
new StewardDevice({ url: 'ws://x', deviceId: 'd' });
// @ts-expect-error no such event
dev.on('message', () => {});
// @ts-expect-error the resolved listener gets an id, not a proposal
dev.on('resolved', (p: Proposal) => p);
// @ts-expect-error state is read-only
dev.state = 'ready';
// @ts-expect-error not a state
const bad: DeviceState = 'open';
// @ts-expect-error getToken answers a string
new StewardDevice({ url: 'ws://x', deviceId: 'd', getToken: async () => 42 });
console.log(bad);
