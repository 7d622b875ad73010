"""Abuse resistance (issue 24), against the real binary: ids in any case, slow heads,
per-address caps, keys decided before the body, framing and head checks, WebSocket
floods, the descriptor budget, refused hellos in /metrics, and every log line JSON.
Each test failed on the build before these fixes."""
import json
import os
import re
import socket
import stat
import struct
import tempfile
import threading
import time
import uuid

import psycopg
import pytest

from harness.pgcluster import wait_for
from harness.steward import ADMIN_KEY, Steward
from hardening_lib import RawWs

AUTH = ('Authorization: Bearer ' + ADMIN_KEY).encode()


def raw_exchange(port, data, wait=5.0, src=None):
    """Sends data on a fresh connection; returns (status or None, headers, body, closed):
    closed tells whether the server ended the connection after its answer."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(wait)
    if src:
        s.bind((src, 0))
    s.connect(('127.0.0.1', port))
    s.sendall(data)
    buf = b''
    deadline = time.monotonic() + wait
    try:
        while b'\r\n\r\n' not in buf and time.monotonic() < deadline:
            c = s.recv(65536)
            if not c:
                break
            buf += c
        if b'\r\n\r\n' not in buf:
            return None, {}, buf, True
        head, _, body = buf.partition(b'\r\n\r\n')
        lines = head.decode('latin-1').split('\r\n')
        status = int(lines[0].split(' ')[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (ln.partition(':') for ln in lines[1:])}
        n = int(headers.get('content-length', '0'))
        while len(body) < n:
            c = s.recv(65536)
            if not c:
                break
            body += c
        s.settimeout(1.0)
        try:
            closed = s.recv(1) == b''
        except socket.timeout:
            closed = False
        return status, headers, body[:n], closed
    except (socket.timeout, ConnectionError):
        return None, {}, buf, True
    finally:
        s.close()


def metric(server, name):
    text = server.get('/metrics', key=None).text
    m = re.search('^' + re.escape(name) + r' (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


def new_device(server, user):
    r = server.post('/v1/devices', json={'user_id': user, 'name': 'laptop'})
    assert r.status_code == 201, r.text
    return r.json()


def hello(port, device_id, token):
    ws = RawWs(port)
    assert ws.status == 101
    ws.send(json.dumps({'type': 'device_hello', 'device_id': device_id, 'token': token}))
    return ws


def recv_json(ws):
    while True:
        op, p = ws.recv()
        if op == 1:
            return json.loads(p)
        if op == 8:
            return {'type': 'closed', 'code': struct.unpack('>H', p[:2])[0] if len(p) >= 2 else 1005}


# ---------------------------------------------------------------- item 1


def test_uppercase_hello_is_closed_when_the_device_is_deleted(server):
    dev = new_device(server, 'abuse-u1')
    ws = hello(server.ws_port, dev['device_id'].upper(), dev['token'])
    try:
        assert recv_json(ws)['type'] == 'hello_ok'
        assert server.delete(f"/v1/devices/{dev['device_id']}").status_code == 204
        ws.sock.settimeout(5)
        assert ws.close_code() == 4403
    finally:
        ws.close()


# ---------------------------------------------------------------- item 10


@pytest.mark.parametrize('name,data', [
    ('no Host', b'GET /readyz HTTP/1.1\r\n\r\n'),
    ('bare LF', b'GET /readyz HTTP/1.1\nHost: x\n\n'),
    ('bare LF in one field', b'GET /readyz HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n'),
    ('folded field', b'GET /readyz HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n'),
    ('NUL in the path', b'GET /v1/bonds/a\x00b HTTP/1.1\r\nHost: x\r\n' + AUTH + b'\r\n\r\n'),
    ('NUL in a value', b'GET /v1/bonds/a HTTP/1.1\r\nHost: x\r\n' + AUTH + b'\x00junk\r\n\r\n'),
])
def test_malformed_heads_are_400(server, name, data):
    status, _, _, closed = raw_exchange(server.http_port, data)
    assert status == 400, name
    assert closed, name
    # and well-formed heads still pass: cookies (parsed by libmicrohttpd), empty and
    # padded values, tabs, HTTP/1.0 without Host
    for ok_head in (b'GET /readyz HTTP/1.1\r\nHost: x\r\nCookie: a=b; c=d\r\nX-E:\r\n'
                    b'X-S:   v  \r\nConnection: close\r\n\r\n',
                    b'GET /readyz HTTP/1.1\r\nHost:\tx\r\nX-A:\t b\t\r\nConnection: close\r\n\r\n',
                    b'GET /readyz HTTP/1.0\r\n\r\n'):
        ok, _, _, _ = raw_exchange(server.http_port, ok_head)
        assert ok == 200, ok_head


# ---------------------------------------------------------------- item 5


def test_request_smuggling_primitives(server):
    p = server.http_port
    lesson = b'{"lesson_type":"gate_failure","repo":"w","detail":{}}'
    # two different lengths: 400 and closed (the old build ran the tail as a request)
    tail = b'GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n'
    body = lesson + tail
    st, _, _, closed = raw_exchange(
        p, b'POST /v1/lessons HTTP/1.1\r\nHost: x\r\n' + AUTH +
        b'\r\nContent-Type: application/json\r\nContent-Length: ' + str(len(lesson)).encode() +
        b'\r\nContent-Length: ' + str(len(body)).encode() + b'\r\n\r\n' + body)
    assert st == 400 and closed
    # a length and a coding: answered, then closed
    chunk = b'%x\r\n%s\r\n0\r\n\r\n' % (len(lesson), lesson)
    st, h, _, closed = raw_exchange(
        p, b'POST /v1/lessons HTTP/1.1\r\nHost: x\r\n' + AUTH +
        b'\r\nContent-Type: application/json\r\nContent-Length: 4\r\n'
        b'Transfer-Encoding: chunked\r\n\r\n' + chunk)
    assert st == 201 and closed
    # an unknown coding: 501 at once, not silence until the timeout
    for te in (b'gzip, chunked', b'xchunked'):
        t0 = time.monotonic()
        st, _, _, closed = raw_exchange(
            p, b'POST /v1/lessons HTTP/1.1\r\nHost: x\r\n' + AUTH +
            b'\r\nContent-Type: application/json\r\nTransfer-Encoding: ' + te + b'\r\n\r\n', wait=4)
        assert st == 501 and closed and time.monotonic() - t0 < 3, te


# ---------------------------------------------------------------- items 3 and 7


def test_unknown_key_is_401_before_the_body(server):
    p = server.http_port
    for i in range(2):  # a key never seen, then the same from the negative cache
        t0 = time.monotonic()
        st, _, _, _ = raw_exchange(
            p, b'POST /v1/lessons HTTP/1.1\r\nHost: x\r\n'
            b'Authorization: Bearer stw_made_up_key_0123456789abcdef\r\n'
            b'Content-Type: application/json\r\nContent-Length: 1048576\r\n\r\n', wait=4)
        assert st == 401, i  # the body was never sent
        assert time.monotonic() - t0 < 3
    # 401 before 415 / 400 for a wrong key
    for i, extra in enumerate([b'Content-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}',
                               b'Content-Type: application/json\r\nContent-Length: 3\r\n\r\n{x}']):
        st, _, _, _ = raw_exchange(
            p, b'POST /v1/lessons HTTP/1.1\r\nHost: x\r\n'
            b'Authorization: Bearer stw_other_made_up_key_' + str(i).encode() + b'\r\n' + extra)
        assert st == 401
    # a malformed key: 401 with no lookup at all
    st, _, _, _ = raw_exchange(p, b'GET /v1/lessons HTTP/1.1\r\nHost: x\r\n'
                               b'Authorization: Bearer short\r\n\r\n')
    assert st == 401


def test_wrong_key_flood_costs_no_query_per_request(server):
    before = metric(server, 'db_pool_wait_seconds_count')
    for _ in range(100):
        r = server.get('/v1/lessons', key='stw_flooded_wrong_key_0123456789')
        assert r.status_code == 401
    after = metric(server, 'db_pool_wait_seconds_count')
    assert after - before < 20, (before, after)


def test_key_created_after_start_works_with_a_body(server, db_url):
    from conftest import make_key
    key = make_key(db_url, f'late-{uuid.uuid4().hex[:8]}', 'service')
    # at once: the snapshot does not hold it yet, the database does
    r = server.post('/v1/lessons', key=key,
                    json={'lesson_type': 'gate_failure', 'repo': 'w', 'detail': {},
                          'source': 'manual'})
    assert r.status_code == 201, r.text
    r = server.post('/v1/lessons', key=key, data='{x', headers={'Content-Type': 'application/json'})
    assert r.status_code == 400


# ---------------------------------------------------------------- item 2


def test_slow_head_is_cut_and_one_address_cannot_hold_every_slot(make_server, db_url):
    s = make_server(db_url, STEWARD_HTTP_HEADER_TIMEOUT_S=2,
                    STEWARD_HTTP_MAX_CONNECTIONS_PER_ADDRESS=8)
    # a head trickled a byte at a time is closed at its deadline
    c = socket.create_connection(('127.0.0.1', s.http_port), timeout=1)
    c.sendall(b'GET /readyz HTTP/1.1\r\n')
    t0 = time.monotonic()
    closed_at = None
    while time.monotonic() - t0 < 8:
        try:
            c.sendall(b'X')
            c.settimeout(0.4)
            if c.recv(1) == b'':
                closed_at = time.monotonic() - t0
                break
        except socket.timeout:
            continue
        except OSError:
            closed_at = time.monotonic() - t0
            break
    c.close()
    assert closed_at is not None and 1.5 <= closed_at <= 5, closed_at
    # one address holding its cap of half-sent heads: its next connection is closed,
    # another address is served
    held = []
    for _ in range(8):
        h = socket.create_connection(('127.0.0.1', s.http_port), timeout=2)
        h.sendall(b'GET /readyz HTTP/1.1\r\n')
        held.append(h)
    time.sleep(0.3)
    st, _, _, _ = raw_exchange(s.http_port, b'GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n', wait=2)
    assert st is None
    st, _, _, _ = raw_exchange(s.http_port, b'GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n', wait=3,
                               src='127.0.0.2')
    assert st == 200
    for h in held:
        h.close()
    time.sleep(0.3)
    st, _, _, _ = raw_exchange(s.http_port, b'GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n', wait=3)
    assert st == 200


# ---------------------------------------------------------------- items 4, 8, 9


def test_binary_frame_before_hello_closes_4401_with_one_reply(server):
    ws = RawWs(server.ws_port)
    try:
        for _ in range(200):
            ws.send(b'\x00\x01', opcode=2)
        errors, code = 0, None
        ws.sock.settimeout(5)
        try:
            while True:
                op, p = ws.recv()
                if op == 1:
                    errors += 1
                elif op == 8:
                    code = struct.unpack('>H', p[:2])[0]
                    break
        except (ConnectionError, OSError):
            pass
        assert code == 4401
        assert errors <= 2, errors
    finally:
        ws.close()


def test_refused_hellos_are_counted_and_logged(server):
    before = metric(server, 'ws_hello_rejected_total{reason="bad_token"}') or 0
    dev = new_device(server, 'abuse-u8')
    ws = hello(server.ws_port, dev['device_id'], 'not-the-token')
    try:
        assert recv_json(ws) == {'type': 'error', 'code': 'unauthorized'}
    finally:
        ws.close()
    assert wait_for(lambda: (metric(server, 'ws_hello_rejected_total{reason="bad_token"}') or 0)
                    >= before + 1, timeout=5)
    assert metric(server, 'ws_hello_rejected_total{reason="malformed"}') is not None
    recs = [r for r in server.log_records() if r.get('msg') == 'device hello rejected']
    assert any(r.get('device_id') == dev['device_id'] and r['level'] == 'warn' for r in recs)
    assert not any('not-the-token' in line for line in server.log_lines())


def test_ack_flood_is_cut_and_hellos_do_not_wait(make_server, db_url):
    s = make_server(db_url, STEWARD_WS_MAX_FRAMES_PER_S=500, STEWARD_WORKER_THREADS=1)
    flooder = new_device(s, 'abuse-flood')
    ws = hello(s.ws_port, flooder['device_id'], flooder['token'])
    assert recv_json(ws)['type'] == 'hello_ok'
    stop = threading.Event()

    def flood():
        frame = json.dumps({'type': 'scout_proposal_ack', 'proposal_id': str(uuid.uuid4())})
        try:
            while not stop.is_set():
                for _ in range(200):
                    ws.send(frame)
        except OSError:
            pass

    t = threading.Thread(target=flood, daemon=True)
    t.start()
    try:
        time.sleep(0.3)
        # another device's hello is answered promptly while the flood runs
        other = new_device(s, 'abuse-other')
        t0 = time.monotonic()
        w2 = hello(s.ws_port, other['device_id'], other['token'])
        w2.sock.settimeout(5)
        m = recv_json(w2)
        took = time.monotonic() - t0
        w2.close()
        assert m['type'] == 'hello_ok' and took < 2, (m, took)
    finally:
        stop.set()
        t.join(5)
    ws.sock.settimeout(5)
    assert ws.close_code() == 1008
    ws.close()
    assert wait_for(lambda: (metric(s, 'ws_sessions_limited_total') or 0) >= 1, timeout=5)


# ---------------------------------------------------------------- item 6


def with_nofile(monkeypatch, n):
    """Makes the next server start under `ulimit -n n` (a wrapper script)."""
    real = os.environ.get('STEWARD_BIN') or os.path.join(
        os.path.dirname(__file__), '..', '..', 'build-test', 'steward')
    d = tempfile.mkdtemp(prefix='steward-nofile-')
    wrapper = os.path.join(d, 'steward')
    with open(wrapper, 'w') as f:
        f.write(f'#!/bin/sh\nulimit -n {n}\nexec {os.path.abspath(real)} "$@"\n')
    os.chmod(wrapper, stat.S_IRWXU)
    monkeypatch.setenv('STEWARD_BIN', wrapper)


def test_descriptor_budget_from_the_open_file_limit(make_server, db_url, monkeypatch):
    with_nofile(monkeypatch, 256)
    s = make_server(db_url)
    # more sockets than the descriptors: refused, no spinning and no log flood
    lines0 = len(s.log_lines())
    pid = s.proc.pid
    cpu0 = sum(int(x) for x in open(f'/proc/{pid}/stat').read().split(')')[1].split()[11:13])
    socks = []
    for i in range(300):
        try:
            socks.append(socket.create_connection(
                ('127.0.0.1', s.ws_port if i % 2 else s.http_port), timeout=2))
        except OSError:
            pass
    time.sleep(3)
    cpu = sum(int(x) for x in open(f'/proc/{pid}/stat').read().split(')')[1].split()[11:13])
    lines = len(s.log_lines()) - lines0
    for c in socks:
        c.close()
    hz = os.sysconf('SC_CLK_TCK')
    assert (cpu - cpu0) / hz < 1.5, (cpu - cpu0) / hz
    assert lines < 50, lines
    assert wait_for(lambda: s.get('/readyz', key=None).status_code == 200, timeout=10)
    rec = [r for r in s.log_records() if r.get('msg') == 'descriptor budget']
    assert rec, 'no descriptor budget line'
    b = rec[-1]
    assert b['nofile'] == 256
    assert b['http_max_connections'] + b['ws_max_connections'] + b['reserve'] <= 256
    # libwebsockets' own lines (its accept errors among them) are JSON lines with ts too
    assert all('ts' in r for r in s.log_records())


def test_device_port_full_closes_at_accept(make_server, db_url, monkeypatch):
    # Device sockets past the instance's share of the open-file limit: handshakes
    # (connections that never send their upgrade) count with the sessions, and one past
    # the share is closed as soon as accepted, so the process never reaches the limit:
    # at it, libwebsockets' accept fails and comes straight back (a spinning core), and
    # the database pool cannot open a connection.
    with_nofile(monkeypatch, 256)
    s = make_server(db_url)
    b = [r for r in s.log_records() if r.get('msg') == 'descriptor budget'][-1]
    assert b['nofile'] == 256
    pid = s.proc.pid
    socks, closed = [], 0
    for _ in range(300):
        c = socket.create_connection(('127.0.0.1', s.ws_port), timeout=2)
        socks.append(c)
    time.sleep(1)
    held = len(os.listdir(f'/proc/{pid}/fd'))
    for c in socks:
        c.settimeout(0.2)
        try:
            closed += c.recv(1) == b''
        except socket.timeout:
            pass
        except ConnectionError:
            closed += 1
    for c in socks:
        c.close()
    assert held < 256, held
    # every connection past the share was closed by the instance, the rest held open
    assert 300 - b['ws_max_connections'] <= closed < 300, (closed, b)
    assert wait_for(lambda: s.get('/readyz', key=None).status_code == 200, timeout=10)
    assert metric(s, 'ws_accept_refused_total') >= 300 - b['ws_max_connections']
    text = '\n'.join(s.log_lines())
    assert 'Too many open files' not in text and 'accept: errno' not in text
    # room again once they are gone: a device upgrades
    assert wait_for(lambda: RawWs(s.ws_port, timeout=5).status == 101, timeout=10)


# ---------------------------------------------------------------- item 11


def test_every_line_is_json_when_postgres_ends_connections(make_server, db_url):
    s = make_server(db_url)
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                  "WHERE application_name LIKE 'steward%' AND pid <> pg_backend_pid()")
    # the listener, idle, reads its FATAL as a notice
    assert wait_for(lambda: any(r.get('msg') == 'database notice' for r in s.log_records()),
                    timeout=10)
    assert wait_for(lambda: s.get('/readyz', key=None).status_code == 200, timeout=10)
    s.stop()
    bad = []
    for line in s.log_lines():
        try:
            rec = json.loads(line)
            if 'ts' not in rec:
                bad.append(line)
        except ValueError:
            bad.append(line)
    assert not bad, bad[:5]
