// Types for steward-device (hand-written; src/index.js is the code).

export declare const VERSION: string;
/** How many proposal ids are remembered to drop redeliveries. */
export declare const MAX_SEEN: number;

export type DeviceState =
  | 'idle'
  | 'connecting'
  | 'ready'
  | 'backoff'
  | 'stopped'
  | 'unauthorized'
  | 'revoked';

/** A proposal as steward sends it (docs/protocol.md); unknown fields are kept. */
export interface Proposal {
  id: string;
  scout_id: string;
  source_type: string;
  source_msg_ref: string;
  raw_subject: string | null;
  raw_snippet: string | null;
  category: string;
  payload: unknown;
  triaged_at: string;
  expires_at: string;
  [field: string]: unknown;
}

export interface DeviceStats {
  /** Sessions that reached hello_ok. */
  connects: number;
  /** Proposals handed to onProposal (each once). */
  proposals: number;
  /** Redeliveries dropped (and acked again). */
  duplicates: number;
  /** Acks steward confirmed (ack_ok). */
  acks: number;
  lastError: string | null;
}

/** Where the ids of handled proposals survive a restart; sync or async. */
export interface DeviceStorage {
  get(key: string): string | null | undefined | Promise<string | null | undefined>;
  set(key: string, value: string): void | Promise<void>;
}

/** localStorage (or anything with getItem/setItem) works as storage too. */
export interface WebStorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

/** The part of a WebSocket the client uses: the browser's, or Node's `ws`. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: any }) => void) | null;
  onclose: ((ev: { code: number; reason?: string }) => void) | null;
  onerror: ((ev: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  terminate?(): void;
}

export interface StewardDeviceOptions {
  /** ws://host:8081/v1/devices/ws (wss:// behind a TLS proxy). */
  url: string;
  deviceId: string;
  /** Called before every connect. */
  getToken: () => string | Promise<string>;
  /** Resolving acks the proposal; throwing leaves it unacked (steward sends it again). */
  onProposal?: (proposal: Proposal) => void | Promise<void>;
  storage?: DeviceStorage | WebStorageLike;
  /** A WebSocket constructor where there is no global one (Node: require('ws')). */
  WebSocket?: new (url: string) => WebSocketLike;
}

export interface StateInfo {
  /** backoff: the wait before the next attempt, in ms. */
  delay?: number;
  /** backoff: failed attempts since the last stable connection. */
  attempt?: number;
  /** backoff: the close code, when a close caused it. */
  code?: number;
  /** ready: the session id and heartbeat interval from hello_ok. */
  sessionId?: string;
  heartbeatS?: number;
}

export interface DeviceError extends Error {
  /** steward's error code ('not_found', ...), a close code, or 'protocol'. */
  code?: string | number;
  proposalId?: string;
}

export interface StewardDeviceEvents {
  state: (state: DeviceState, info: StateInfo) => void;
  proposal: (proposal: Proposal) => void;
  resolved: (proposalId: string) => void;
  error: (err: DeviceError) => void;
}

export declare class StewardDevice {
  constructor(options: StewardDeviceOptions);
  readonly state: DeviceState;
  readonly stats: DeviceStats;
  on<E extends keyof StewardDeviceEvents>(event: E, fn: StewardDeviceEvents[E]): () => void;
  start(): this;
  /** Final: no reconnect after it. */
  stop(): void;
  /** Reconnect now if waiting, check a connection for silence: call on powerMonitor 'resume'. */
  wake(): void;
}

/** The wait before attempt `attempt` (0, 1, ...), in ms. */
export declare function backoffDelay(attempt: number, random?: () => number): number;
export declare function closePolicy(code: number): 'reauth' | 'revoked' | 'retry';
