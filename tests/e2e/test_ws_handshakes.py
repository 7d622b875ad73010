"""The cap on WebSocket handshakes in progress (STEWARD_WS_MAX_HANDSHAKES,
docs/operations.md "Many devices per instance"): once that many connections are accepted
and not yet upgraded, the instance stops accepting (ws_accept_pauses_total); a further
connection waits in the kernel's accept queue, unanswered but not refused, and is served
when half of the handshakes are done. STEWARD_WS_LISTEN_BACKLOG sets that queue's depth."""
import socket
import subprocess
import threading
import time

from hardening_lib import RawWs
from test_abuse import metric


def pauses(server):
    return metric(server, 'ws_accept_pauses_total') or 0


def upgrade_in_background(port):
    """Starts a WebSocket upgrade on a thread; returns (thread, result dict)."""
    out = {}

    def run():
        try:
            out['ws'] = RawWs(port, timeout=10)
        except OSError as e:
            out['error'] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def test_handshakes_at_the_cap_pause_accepts_and_nobody_is_refused(make_server, db_url):
    s = make_server(db_url, STEWARD_WS_MAX_HANDSHAKES=2)
    port = s.ws_port
    before = pauses(s)
    # two connections that never send their upgrade: two handshakes in progress
    idle = [socket.create_connection(('127.0.0.1', port), timeout=5) for _ in range(2)]
    time.sleep(0.3)
    assert pauses(s) - before == 1
    # a third one connects (the kernel queues it) but is not served while paused
    t, out = upgrade_in_background(port)
    t.join(1.0)
    assert t.is_alive() and not out, out
    # closing one held connection brings the count to half the cap: accepts resume
    idle[0].close()
    t.join(5)
    assert not t.is_alive()
    assert 'error' not in out, out
    assert out['ws'].status == 101
    # the other held one is still open: the server has not answered or closed it
    idle[1].settimeout(0.2)
    try:
        assert idle[1].recv(1) != b''
    except socket.timeout:
        pass
    idle[1].close()
    # upgraded sessions do not count: more than the cap of them open one after another
    more = [RawWs(port) for _ in range(4)]
    assert [w.status for w in more] == [101, 101, 101, 101]
    for w in [out['ws']] + more:
        w.sock.close()


def listen_backlog(port):
    """The accept queue depth of the socket listening on port (ss shows it as Send-Q)."""
    lines = subprocess.run(['ss', '-Hltn', f'sport = :{port}'], capture_output=True, text=True,
                           check=True).stdout.split('\n')
    rows = [ln.split() for ln in lines if ln.strip()]
    assert rows, f'nothing listens on {port}'
    return int(rows[0][2])


def test_the_listen_backlog_is_set_within_somaxconn(make_server, db_url):
    with open('/proc/sys/net/core/somaxconn') as f:
        somaxconn = int(f.read())
    s = make_server(db_url, STEWARD_WS_LISTEN_BACKLOG=100)
    assert listen_backlog(s.ws_port) == min(100, somaxconn)
    assert not [r for r in s.log_records() if 'listening socket not found' in r['msg']]
    s2 = make_server(db_url, STEWARD_WS_LISTEN_BACKLOG=0)
    assert listen_backlog(s2.ws_port) == min(4096, somaxconn)  # lws' own


def test_the_accept_rate_spaces_connections_out(make_server, db_url):
    # 5 per second, a burst of one: ten connections take at least 9 / 5 s
    s = make_server(db_url, STEWARD_WS_ACCEPT_RATE=5)
    before = pauses(s)
    t0 = time.monotonic()
    runs = [upgrade_in_background(s.ws_port) for _ in range(10)]
    for t, _ in runs:
        t.join(15)
    took = time.monotonic() - t0
    assert [out.get('ws').status if 'ws' in out else out for _, out in runs] == [101] * 10
    assert took >= 1.6, took
    assert pauses(s) - before >= 8
    for _, out in runs:
        out['ws'].sock.close()
