"""The WebSocket event loop (libwebsockets on a libuv loop steward owns): the hello
deadline shared by many sessions, replies queued by worker threads waking the loop,
close codes reaching the peer, SIGTERM with many sockets open, and a clean failure when
the port is taken."""
import asyncio
import base64
import json
import os
import socket
import struct
import time
import uuid

import websockets

from conftest import finish
from harness.steward import Steward


def mk_device(server, user):
    r = server.post('/v1/devices', json={'user_id': user, 'name': 'laptop'})
    assert r.status_code == 201, r.text
    return r.json()


async def closed(ws, timeout=10):
    """Reads until the server closes; returns (close code, monotonic time of the close,
    frames read before). The code is None when nothing closed within timeout."""
    frames = []
    try:
        while True:
            frames.append(await asyncio.wait_for(ws.recv(), timeout))
    except websockets.ConnectionClosed:
        pass
    except asyncio.TimeoutError:
        return None, time.monotonic(), frames
    return ws.close_code, time.monotonic(), frames


async def hello(server, dev):
    ws = await websockets.connect(server.ws_url, ping_interval=None)
    await ws.send(json.dumps({'type': 'device_hello', 'device_id': dev['device_id'],
                              'token': dev['token']}))
    m = json.loads(await asyncio.wait_for(ws.recv(), 20))
    assert m['type'] == 'hello_ok', m
    return ws


def test_hello_deadline_for_many_sessions_in_waves(make_server, db_url):
    """Three waves of 100 silent sockets, 0.7 s apart, and 20 devices that say hello in
    the first wave: every silent one is closed 4408 about 2 s after its own connect (the
    deadline queue is in arrival order), none earlier; the devices stay open."""
    s = make_server(db_url, STEWARD_WS_HELLO_TIMEOUT_S=2)
    devs = [mk_device(s, f'fifo-{uuid.uuid4().hex[:10]}') for _ in range(20)]

    async def silent():
        ws = await websockets.connect(s.ws_url, ping_interval=None)
        return ws, time.monotonic()

    async def body():
        waves = []
        authed = []
        for w in range(3):
            if w:
                await asyncio.sleep(0.7)
            conns = await asyncio.gather(*(silent() for _ in range(100)))
            if w == 0:
                authed = await asyncio.gather(*(hello(s, d) for d in devs))
            waves.append(conns)
        results = await asyncio.gather(*(closed(ws, 10) for conns in waves for ws, _ in conns))
        opened = [t for conns in waves for _, t in conns]
        # the devices outlived every deadline and still answer
        for ws in authed:
            pid = str(uuid.uuid4())
            await ws.send(json.dumps({'type': 'scout_proposal_ack', 'proposal_id': pid}))
            m = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert m == {'type': 'error', 'code': 'not_found', 'proposal_id': pid}, m
            await ws.close()
        return results, opened

    results, opened = asyncio.run(body())
    codes = [code for code, _, _ in results]
    assert codes.count(4408) == 300, codes
    assert all(frames == [] for _, _, frames in results)
    lived = [t_close - t_open for (_, t_close, _), t_open in zip(results, opened)]
    assert min(lived) > 1.9 and max(lived) < 4.0, (min(lived), max(lived))


def test_sigterm_with_hundreds_of_sockets(fresh_db_url):
    """200 devices that said hello (each hello_ok queued by a worker thread and sent by
    the loop) and 100 silent sockets: SIGTERM closes all 300 with 1012, and steward
    exits 0 with a clean sanitizer log."""
    s = Steward(fresh_db_url, STEWARD_WORKER_THREADS=4)
    devs = [mk_device(s, f'term-{uuid.uuid4().hex[:10]}') for _ in range(200)]

    async def body():
        sem = asyncio.Semaphore(50)

        async def one(d):
            async with sem:
                return await hello(s, d)
        authed = await asyncio.gather(*(one(d) for d in devs))
        silent = await asyncio.gather(*(websockets.connect(s.ws_url, ping_interval=None)
                                        for _ in range(100)))
        deadline = time.monotonic() + 5  # the last handshakes may still be registering
        while 'ws_connections 300\n' not in (m := s.get('/metrics').text):
            assert time.monotonic() < deadline, [x for x in m.splitlines() if 'ws_' in x]
            await asyncio.sleep(0.05)
        t0 = time.monotonic()
        s.signal()
        results = await asyncio.gather(*(closed(ws, 10) for ws in authed + silent))
        return results, time.monotonic() - t0

    results, elapsed = asyncio.run(body())
    codes = [code for code, _, _ in results]
    assert codes.count(1012) == 300, sorted(set(codes))
    assert elapsed < 8
    assert s.proc.wait(15) == 0
    assert any(r.get('msg') == 'stopped' for r in s.log_records())
    finish(s)


def test_close_codes_reach_the_peer(server):
    """Every close steward decides on carries its code (the socket is closed from outside
    its own callback, so the close frame is written before the connection goes)."""
    async def one(payload):
        ws = await websockets.connect(server.ws_url, ping_interval=None, max_size=None)
        await ws.send(payload)
        return await closed(ws)

    async def body():
        return await asyncio.gather(
            one('{"type":"scout_proposal_ack","proposal_id":"x"}'),  # before hello
            one('{"type":"device_hello","pad":"' + 'x' * (70 * 1024) + '"}'),
            *[one('{"type":"nope"}') for _ in range(20)])

    results = asyncio.run(body())
    assert results[0][0] == 4401 and json.loads(results[0][2][0])['code'] == 'unauthorized'
    assert results[1][0] == 1009
    assert all(r[0] == 4401 for r in results[2:])

    # a text frame that is not UTF-8 (sent raw: the client library refuses to)
    sock, data = raw_ws(server.ws_port)
    payload = b'{"type":"\xc3\x28"}'
    mask = os.urandom(4)
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask +
                 bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    while len(data) < 4:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    sock.close()
    assert data[:1] == b'\x88', data  # a close frame, not a dropped connection
    assert struct.unpack('>H', data[2:4])[0] == 1007


def raw_ws(port):
    """A WebSocket client by hand (answers nothing by itself): returns the socket and
    the bytes that followed the 101 response."""
    sock = socket.create_connection(('127.0.0.1', port), timeout=20)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f'GET /v1/devices/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n'
                  f'Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n'
                  f'Sec-WebSocket-Version: 13\r\n\r\n').encode())
    buf = b''
    while b'\r\n\r\n' not in buf:
        buf += sock.recv(4096)
    head, rest = buf.split(b'\r\n\r\n', 1)
    assert b' 101 ' in head.split(b'\r\n')[0], head
    return sock, rest


def test_heartbeat_pings_and_drops_a_silent_peer(make_server, db_url):
    """STEWARD_WS_HEARTBEAT_S=1: a peer that never answers is pinged and dropped once it
    has been silent for 2 * 1 + 5 s, and gets no heartbeat frame (it never said hello); a
    device that answers pings stays, and while steward has nothing else to send it, it
    gets {"type":"heartbeat"} about every second (the one timer checks every 250 ms)."""
    s = make_server(db_url, STEWARD_WS_HEARTBEAT_S=1, STEWARD_WS_HELLO_TIMEOUT_S=60)
    dev = mk_device(s, f'beat-{uuid.uuid4().hex[:10]}')

    async def body():
        answering = await hello(s, dev)
        beats = []

        async def listen():
            while True:
                m = json.loads(await answering.recv())
                assert m == {'type': 'heartbeat'}, m
                beats.append(time.monotonic())

        listener = asyncio.create_task(listen())
        loop = asyncio.get_running_loop()

        def silent():
            sock, data = raw_ws(s.ws_port)
            t0 = time.monotonic()
            pings = texts = 0
            while True:
                while len(data) >= 2:
                    n = data[1] & 0x7f
                    if len(data) < 2 + n:
                        break
                    if data[0] & 0x0f == 9:
                        pings += 1
                    if data[0] & 0x0f == 1:
                        texts += 1
                    data = data[2 + n:]
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            sock.close()
            return pings, texts, time.monotonic() - t0

        pings, texts, lived = await loop.run_in_executor(None, silent)
        listener.cancel()
        # the answering peer has been silent as long, but its pongs count
        pong = await answering.ping()
        await asyncio.wait_for(pong, 5)
        await answering.close()
        return pings, texts, lived, beats

    pings, texts, lived, beats = asyncio.run(body())
    assert pings >= 1
    assert texts == 0
    assert 6.5 < lived < 10, lived
    assert len(beats) >= 5, beats
    gaps = [b - a for a, b in zip(beats, beats[1:])]
    assert all(0.9 < g < 2.5 for g in gaps), gaps


def test_ws_port_in_use_exits_1_cleanly(server, db_url):
    """A taken WebSocket port stops start-up with exit 1 and a message naming the
    variable; the half-built server comes down without a leak or a crash."""
    s = Steward(db_url, wait=False, STEWARD_WS_PORT=server.ws_port)
    assert s.proc.wait(30) == 1
    s.log_file.close()
    errors = [r for r in s.log_records() if r.get('msg') == 'cannot start the WebSocket server']
    assert errors and 'STEWARD_WS_PORT' in errors[0]['error'], s.log_lines()[-10:]
    assert not s.sanitizer_reports(), '\n'.join(s.log_lines()[-40:])
