"""Graceful drain behind a real load balancer (haproxy, tests/harness/haproxy.py).

Two instances behind haproxy, which health-checks each on GET /readyz; 200 devices are
connected through it and a REST client ingests proposals through it all along. SIGTERM
one instance: its /readyz answers 503 at once while its other routes still answer,
haproxy takes it out, after STEWARD_DRAIN_S its device sockets close with 1012, every
device is connected to the other instance within 10 s of the signal, it exits 0, every
proposal reaches its device and the REST client never sees a 5xx or a connection error."""
import asyncio
import hashlib
import json
import secrets
import threading
import time
import uuid

import requests
import websockets

from conftest import finish
from harness.haproxy import Haproxy
from harness.steward import Steward

N_DEVICES = 200
DRAIN_S = 3


def _seed(sql, n):
    tag = uuid.uuid4().hex[:8]
    users = [f'drain-{tag}-{i}' for i in range(n)]
    tokens = [f'dev_{secrets.token_hex(32)}' for _ in range(n)]
    with sql.cursor() as cur:
        cur.execute(
            "INSERT INTO devices (user_id, name, token_hash) SELECT u, 'drain', h "
            "FROM unnest(%s::text[], %s::text[]) AS t(u, h)",
            (users, [hashlib.sha256(t.encode()).hexdigest() for t in tokens]))
        cur.execute("INSERT INTO scouts (user_id, provider) SELECT u, 'gmail' "
                    "FROM unnest(%s::text[]) u", (users,))
    devs = dict(sql.execute("SELECT user_id, id::text FROM devices WHERE user_id LIKE %s",
                            (f'drain-{tag}-%',)).fetchall())
    scouts = dict(sql.execute("SELECT user_id, id::text FROM scouts WHERE user_id LIKE %s",
                              (f'drain-{tag}-%',)).fetchall())
    return users, tokens, devs, scouts


class RestClient(threading.Thread):
    """Ingests one proposal after another through the proxy (users in turn) and reads a
    scout back, recording every status and every connection error."""

    def __init__(self, url, key, users, scouts):
        super().__init__(daemon=True)
        self.url, self.key, self.users, self.scouts = url, key, users, scouts
        self.stop_flag = threading.Event()
        self.statuses = []
        self.errors = []
        self.posted = {}  # proposal id -> user

    def run(self):
        s = requests.Session()
        h = {'Authorization': f'Bearer {self.key}'}
        i = 0
        while not self.stop_flag.is_set():
            user = self.users[i % len(self.users)]
            sid = self.scouts[user]
            try:
                r = s.post(f'{self.url}/v1/scouts/{sid}/items', headers=h, timeout=10,
                           json={'source_msg_ref': f'ref-{i}', 'verdict': 'relevant',
                                 'subject': f'subject {i}'})
                self.statuses.append(r.status_code)
                if r.status_code == 201:
                    self.posted[r.json()['proposal_id']] = user
                r = s.get(f'{self.url}/v1/scouts/{sid}', headers=h, timeout=10)
                self.statuses.append(r.status_code)
            except requests.RequestException as e:
                self.errors.append(repr(e))
            i += 1
            time.sleep(0.01)


class Dev:
    """One device through the proxy: acks what it gets and reconnects when closed."""

    def __init__(self, url, user, device_id, token):
        self.url, self.user = url, user
        self.hello = {'type': 'device_hello', 'device_id': device_id, 'token': token}
        self.received = set()
        self.closes = []      # (code, monotonic time)
        self.sessions = []    # (session_id, monotonic time of hello_ok)
        self.connected = asyncio.Event()
        self.done = False

    async def run(self):
        while not self.done:
            try:
                async with websockets.connect(self.url, ping_interval=None,
                                              max_size=2 ** 20) as ws:
                    await ws.send(json.dumps(self.hello))
                    async for raw in ws:
                        m = json.loads(raw)
                        if m['type'] == 'hello_ok':
                            self.sessions.append((m['session_id'], time.monotonic()))
                            self.connected.set()
                        elif m['type'] == 'scout_proposal':
                            pid = m['proposal']['id']
                            self.received.add(pid)
                            await ws.send(json.dumps({'type': 'scout_proposal_ack',
                                                      'proposal_id': pid}))
                    self.closes.append((ws.close_code, time.monotonic()))
            except websockets.ConnectionClosed as e:
                self.closes.append((e.rcvd.code if e.rcvd else None, time.monotonic()))
            except (OSError, websockets.WebSocketException) as e:
                self.closes.append((repr(e), time.monotonic()))
                await asyncio.sleep(0.1)


def _instance(session_id):
    return session_id.rsplit('-', 1)[0]


def test_sigterm_behind_haproxy_moves_devices_and_loses_nothing(db_url, sql, keys):
    a = Steward(db_url, STEWARD_DRAIN_S=DRAIN_S)
    b = Steward(db_url)
    proxy = Haproxy([a, b])
    try:
        users, tokens, devs, scouts = _seed(sql, N_DEVICES)
        devices = [Dev(proxy.ws_url, u, devs[u], t) for u, t in zip(users, tokens)]
        client = RestClient(proxy.url, keys['service'], users, scouts)

        async def body():
            # which instance a session is on: its session id starts with the instance's
            probe = await websockets.connect(a.ws_url, ping_interval=None)
            await probe.send(json.dumps(devices[0].hello))
            a_name = _instance(json.loads(await probe.recv())['session_id'])
            await probe.close()

            tasks = [asyncio.create_task(d.run()) for d in devices]
            await asyncio.wait_for(asyncio.gather(*(d.connected.wait() for d in devices)), 30)
            on_a = [d for d in devices if _instance(d.sessions[-1][0]) == a_name]
            assert 20 < len(on_a) < N_DEVICES - 20, len(on_a)  # both instances carry some
            client.start()
            await asyncio.sleep(1.0)

            t0 = time.monotonic()
            a.signal()
            # /readyz fails at once, everything else is still served
            loop = asyncio.get_running_loop()
            await asyncio.sleep(0.2)
            ready = await loop.run_in_executor(None, lambda: a.get('/readyz', key=None))
            assert ready.status_code == 503, ready.text
            assert 'draining' in ready.json()['detail']
            sid = scouts[users[0]]
            live = await loop.run_in_executor(None, lambda: a.get(f'/v1/scouts/{sid}'))
            assert live.status_code == 200, live.text
            assert time.monotonic() - t0 < DRAIN_S - 1

            # every device ends up on the other instance within 10 s
            while True:
                moved = all(_instance(d.sessions[-1][0]) != a_name for d in devices)
                if moved:
                    break
                assert time.monotonic() - t0 < 10, \
                    sum(_instance(d.sessions[-1][0]) == a_name for d in devices)
                await asyncio.sleep(0.05)
            took = time.monotonic() - t0
            status = await loop.run_in_executor(None, lambda: a.proc.wait(15))
            await asyncio.sleep(1.0)  # the REST client goes on through the survivor
            client.stop_flag.set()
            await loop.run_in_executor(None, client.join, 15)

            # every proposal the client got a 201 for reaches its user's device
            by_user = {d.user: d for d in devices}
            deadline = time.monotonic() + 10
            while True:
                missing = [p for p, u in client.posted.items() if p not in by_user[u].received]
                if not missing or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            for d in devices:
                d.done = True
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return on_a, took, status, missing

        on_a, took, status, missing = asyncio.run(body())
        print(f'\n{len(on_a)} devices moved within {took:.2f} s of SIGTERM '
              f'(drain {DRAIN_S} s); {len(client.posted)} proposals, '
              f'{len(client.statuses)} REST requests')
        assert status == 0
        # the moved devices were closed with 1012 (service restart), nobody else was closed
        for d in on_a:
            assert d.closes and d.closes[0][0] == 1012, d.closes
        assert all(not d.closes for d in devices if d not in on_a)
        assert not client.errors, client.errors[:5]
        assert client.statuses and all(s < 500 for s in client.statuses), \
            sorted(set(client.statuses))
        assert len(client.posted) > 50
        assert not missing, f'{len(missing)} proposals never reached their device'
        recs = a.log_records()
        msgs = [r.get('msg') for r in recs]
        assert 'draining' in msgs and msgs.index('draining') < msgs.index('shutting down')
        assert not a.sanitizer_reports()
    finally:
        proxy.stop()
        if a.proc.poll() is None:
            a.kill()
        finish(b)


def test_second_signal_cuts_the_drain_short(fresh_db_url):
    s = Steward(fresh_db_url, STEWARD_DRAIN_S=60)
    t0 = time.monotonic()
    s.signal()
    deadline = time.monotonic() + 5
    while s.get('/readyz', key=None).status_code != 503:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert s.get('/livez', key=None).status_code == 200
    s.signal()
    assert s.proc.wait(15) == 0
    assert time.monotonic() - t0 < 15
    msgs = [r.get('msg') for r in s.log_records()]
    assert 'second signal: drain cut short' in msgs
    finish(s)
