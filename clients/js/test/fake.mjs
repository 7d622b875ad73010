// A scripted WebSocket for the unit tests: each instance is one connection attempt; the
// test opens it, feeds it frames and closes it.
export class FakeSocket {
  static all = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    this.closedWith = null;
    FakeSocket.all.push(this);
  }
  send(text) {
    if (this.readyState !== 1) throw new Error('send on a socket that is not open');
    this.sent.push(JSON.parse(text));
  }
  close(code) {
    this.closedWith = code ?? 1005;
    this.readyState = 3;
  }
  terminate() {
    this.closedWith = 'terminated';
    this.readyState = 3;
  }
  // the server's side
  open() {
    this.readyState = 1;
    this.onopen({});
  }
  recv(frame) {
    this.onmessage({ data: typeof frame === 'string' ? frame : JSON.stringify(frame) });
  }
  drop(code = 1006) {
    this.readyState = 3;
    this.onclose({ code, reason: '' });
  }
  acks() {
    return this.sent.filter((f) => f.type === 'scout_proposal_ack').map((f) => f.proposal_id);
  }
  static last() {
    return FakeSocket.all.at(-1);
  }
  static reset() {
    FakeSocket.all = [];
  }
}

/** Lets promise callbacks run (setImmediate is left real by the fake timers). */
export const flush = () => new Promise((r) => setImmediate(r));

export const proposal = (id) => ({
  type: 'scout_proposal',
  proposal: { id, scout_id: 's', source_type: 'gmail', raw_subject: 'subject ' + id },
});
