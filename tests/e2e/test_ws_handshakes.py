"""The cap on WebSocket handshakes in progress (STEWARD_WS_MAX_HANDSHAKES,
docs/operations.md "Many devices per instance"): a connection arriving while that many
are accepted and not yet upgraded is closed at once and counted in
ws_accept_refused_total; upgraded sessions and closed handshakes stop counting, so the
instance admits again."""
import socket
import time

from hardening_lib import RawWs
from test_abuse import metric


def refused(server):
    return metric(server, 'ws_accept_refused_total') or 0


def closed_at_once(port, wait=5.0):
    """Connects and waits for the server to close without a word; True when it did."""
    s = socket.create_connection(('127.0.0.1', port), timeout=wait)
    try:
        s.settimeout(wait)
        try:
            return s.recv(1) == b''
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
    finally:
        s.close()


def test_handshakes_beyond_the_cap_are_closed_and_admitted_again(make_server, db_url):
    s = make_server(db_url, STEWARD_WS_MAX_HANDSHAKES=2)
    port = s.ws_port
    before = refused(s)
    # two connections that never send their upgrade: two handshakes in progress
    idle = [socket.create_connection(('127.0.0.1', port), timeout=5) for _ in range(2)]
    time.sleep(0.3)
    assert closed_at_once(port)
    assert closed_at_once(port)
    assert refused(s) - before == 2
    # the two held ones are still open: the server has not answered them
    for c in idle:
        c.settimeout(0.2)
        try:
            assert c.recv(1) != b''
        except socket.timeout:
            pass
    # closing them frees their places (lws' destroy notification)
    for c in idle:
        c.close()
    deadline = time.monotonic() + 5
    ws = None
    while time.monotonic() < deadline:
        try:
            ws = RawWs(port)
            break
        except ConnectionError:
            time.sleep(0.1)
    assert ws is not None and ws.status == 101
    # upgraded sessions do not count: more than the cap of them open one after another
    more = [RawWs(port) for _ in range(3)]
    assert [w.status for w in more] == [101, 101, 101]
    assert refused(s) - before == 2
    for w in [ws] + more:
        w.sock.close()
