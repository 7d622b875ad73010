"""Scouts, devices and proposal delivery over WebSocket (docs/protocol.md), against the real binary
and a real PostgreSQL, with python3-websockets (asyncio) as the Electron device."""
import asyncio
import concurrent.futures
import hashlib
import json
import os
import resource
import secrets
import time
import uuid

import psycopg
import pytest
import websockets

from harness.pgcluster import PgCluster
from harness.steward import ADMIN_KEY

WAIT = 5.0


def uid(prefix='user'):
    return f'{prefix}-{uuid.uuid4().hex[:12]}'


def mk_scout(server, user, **kw):
    r = server.post('/v1/scouts', json={'user_id': user, 'provider': 'gmail', **kw})
    assert r.status_code == 201, r.text
    return r.json()


def mk_device(server, user, name='laptop'):
    r = server.post('/v1/devices', json={'user_id': user, 'name': name})
    assert r.status_code == 201, r.text
    return r.json()


def ingest(server, key, scout_id, ref, **kw):
    body = {'source_msg_ref': ref, 'verdict': 'relevant', 'subject': f'subject {ref}',
            'snippet': f'snippet {ref}', **kw}
    return server.post(f'/v1/scouts/{scout_id}/items', key=key, json=body)


def row(sql, pid):
    return sql.execute('SELECT status, delivery_attempts, raw_subject, raw_snippet, acked_at, '
                       'delivered_at FROM proposals WHERE id = %s', (pid,)).fetchone()


class Device:
    """One device connection."""

    def __init__(self, ws):
        self.ws = ws

    @classmethod
    async def open(cls, server, dev, token=None):
        ws = await websockets.connect(server.ws_url, max_size=2 ** 20, ping_interval=None)
        d = cls(ws)
        await d.send({'type': 'device_hello', 'device_id': dev['device_id'],
                      'token': token or dev['token']})
        return d

    @classmethod
    async def hello(cls, server, dev):
        d = await cls.open(server, dev)
        m = await d.recv()
        assert m['type'] == 'hello_ok', m
        return d

    async def send(self, obj):
        await self.ws.send(json.dumps(obj))

    async def _next(self, timeout):
        """The next frame but heartbeats (clients ignore them; STEWARD_WS_HEARTBEAT_S=1 or 2
        in some tests sends them within the test)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            m = json.loads(await asyncio.wait_for(self.ws.recv(), max(left, 0.001)))
            if m != {'type': 'heartbeat'}:
                return m

    async def recv(self, timeout=WAIT):
        return await self._next(timeout)

    async def proposal(self, timeout=WAIT):
        m = await self.recv(timeout)
        assert m['type'] == 'scout_proposal', m
        return m['proposal']

    async def ack(self, pid):
        await self.send({'type': 'scout_proposal_ack', 'proposal_id': pid})

    async def nothing(self, timeout=0.4):
        try:
            m = await self._next(timeout)
        except asyncio.TimeoutError:
            return
        raise AssertionError(f'unexpected frame {m}')

    async def closed(self, timeout=WAIT):
        """Reads until the server closes; returns (close code, frames read before)."""
        frames = []
        try:
            while True:
                frames.append(await self._next(timeout))
        except websockets.ConnectionClosed:
            pass
        return self.ws.close_code, frames

    async def close(self):
        await self.ws.close()


def run(coro):
    return asyncio.run(coro)


# ------------------------------------------------------------------------ REST


def test_rest_validation_and_scopes(server, keys, sql):
    r = server.post('/v1/scouts', json={'provider': '', 'enabled': 'yes', 'colour': 1,
                                        'device_inactivity_pause_days': 0})
    assert r.status_code == 422
    fields = {e['field'] for e in r.json()['errors']}
    assert fields == {'user_id', 'provider', 'enabled', 'colour', 'device_inactivity_pause_days'}
    assert server.post('/v1/scouts', key=keys['read'],
                       json={'user_id': 'u', 'provider': 'gmail'}).status_code == 403
    assert server.post('/v1/scouts', key=keys['service'],
                       json={'user_id': 'u', 'provider': 'gmail'}).status_code == 403
    r = server.post('/v1/scouts', data='{"user_id": ', headers={'Content-Type': 'application/json'})
    assert r.status_code == 400
    assert server.get('/v1/scouts/not-a-uuid').status_code == 404
    assert server.get(f'/v1/scouts/{uuid.uuid4()}').status_code == 404
    assert server.post(f'/v1/scouts/{uuid.uuid4()}/items', key=keys['service'],
                       json={'source_msg_ref': 'x', 'verdict': 'relevant'}).status_code == 404

    user = uid()
    scout = mk_scout(server, user)
    r = server.post(f'/v1/scouts/{scout["id"]}/items', key=keys['service'],
                    json={'verdict': 'maybe', 'subject': 5, 'extra': True})
    assert r.status_code == 422
    assert {e['field'] for e in r.json()['errors']} == {'source_msg_ref', 'verdict', 'subject',
                                                        'extra'}
    assert server.post(f'/v1/scouts/{scout["id"]}/items', key=keys['read'],
                       json={'source_msg_ref': 'x', 'verdict': 'relevant'}).status_code == 403

    r = server.post('/v1/devices', json={'user_id': '', 'name': 'a\nb', 'token': 'mine'})
    assert r.status_code == 422
    assert {e['field'] for e in r.json()['errors']} == {'user_id', 'name', 'token'}
    assert server.post('/v1/devices', key=keys['service'],
                       json={'user_id': user, 'name': 'x'}).status_code == 403
    assert server.delete(f'/v1/devices/{uuid.uuid4()}').status_code == 404
    assert server.delete('/v1/devices/nope').status_code == 404

    r = server.get(f'/v1/users/{user}/proposals?status=lost', key=keys['read'])
    assert r.status_code == 422 and r.json()['errors'][0]['field'] == 'status'
    assert server.get(f'/v1/users/{user}/proposals?limit=0', key=keys['read']).status_code == 422
    assert server.get(f'/v1/users/{user}/devices?cursor=zzz', key=keys['read']).status_code == 422
    r = server.patch(f'/v1/scouts/{scout["id"]}', json={'user_id': 'other', 'enabled': 3})
    assert r.status_code == 422
    assert {e['field'] for e in r.json()['errors']} == {'user_id', 'enabled'}
    assert server.patch(f'/v1/scouts/{scout["id"]}', json={}).status_code == 422


def test_scout_crud_and_audit(server, keys, sql):
    user = uid()
    s = mk_scout(server, user, auto_trash_spam=True, device_inactivity_pause_days=3)
    assert s['user_id'] == user and s['provider'] == 'gmail' and s['enabled'] is True
    assert s['auto_trash_spam'] is True and s['device_inactivity_pause_days'] == 3
    r = server.get(f'/v1/scouts/{s["id"]}', key=keys['read'])
    assert r.status_code == 200 and r.json() == s
    r = server.patch(f'/v1/scouts/{s["id"]}', json={'enabled': False, 'provider': 'imap'})
    assert r.status_code == 200
    assert r.json()['enabled'] is False and r.json()['provider'] == 'imap'
    assert r.json()['auto_trash_spam'] is True
    assert server.delete(f'/v1/scouts/{s["id"]}').status_code == 204
    assert server.get(f'/v1/scouts/{s["id"]}').status_code == 404
    assert server.delete(f'/v1/scouts/{s["id"]}').status_code == 404
    rows = sql.execute(
        "SELECT action, actor, target FROM audit_log WHERE detail->>'scout_id' = %s "
        "ORDER BY id", (s['id'],)).fetchall()
    assert rows == [(a, 'admin-env', f'user:{user}')
                    for a in ('scout.create', 'scout.update', 'scout.delete')]


def test_ingest_rules(server, keys, sql):
    user = uid()
    s = mk_scout(server, user)
    k = keys['service']
    r = ingest(server, k, s['id'], 'spam-1', verdict='spam')
    assert r.status_code == 200 and r.json() == {'queued': False, 'reason': 'spam', 'archive': False}
    trash = mk_scout(server, user, auto_trash_spam=True)
    r = ingest(server, k, trash['id'], 'spam-2', verdict='spam')
    assert r.json() == {'queued': False, 'reason': 'spam', 'archive': True}
    assert sql.execute('SELECT count(*) FROM proposals WHERE user_id = %s',
                       (user,)).fetchone()[0] == 0

    # no device at all: queued
    r = ingest(server, k, s['id'], 'm-1', source_type='email')
    assert r.status_code == 201 and r.json()['queued'] is True
    pid = r.json()['proposal_id']
    st = sql.execute("SELECT status, source_type, raw_subject, reason, "
                     "expires_at - triaged_at = interval '30 days' FROM proposals WHERE id = %s",
                     (pid,)).fetchone()
    assert st == ('queued', 'email', 'subject m-1', None, True)
    r = ingest(server, k, s['id'], 'm-1')
    assert r.status_code == 200
    assert r.json() == {'queued': False, 'reason': 'duplicate', 'proposal_id': pid}

    # a device registered long ago and not seen since pauses the scout
    dev = mk_device(server, user)
    sql.execute("UPDATE devices SET last_seen_at = now() - interval '8 days' WHERE id = %s",
                (dev['device_id'],))
    r = ingest(server, k, s['id'], 'm-2')
    assert r.status_code == 200 and r.json() == {'queued': False, 'reason': 'paused_device_inactive'}
    # ...unless the scout allows a longer absence
    assert server.patch(f'/v1/scouts/{s["id"]}',
                        json={'device_inactivity_pause_days': 10}).status_code == 200
    assert ingest(server, k, s['id'], 'm-3').status_code == 201
    # a newly registered device counts as seen
    assert server.patch(f'/v1/scouts/{s["id"]}',
                        json={'device_inactivity_pause_days': 7}).status_code == 200
    mk_device(server, user, 'new phone')
    assert ingest(server, k, s['id'], 'm-4').status_code == 201

    # disabled scout
    assert server.patch(f'/v1/scouts/{s["id"]}', json={'enabled': False}).status_code == 200
    r = ingest(server, k, s['id'], 'm-5')
    assert r.status_code == 409 and r.headers['content-type'].startswith('application/problem+json')
    assert sql.execute("SELECT count(*) FROM proposals WHERE source_msg_ref = 'm-5' AND "
                       "user_id = %s", (user,)).fetchone()[0] == 0

    # list, newest first, filtered and paged
    r = server.get(f'/v1/users/{user}/proposals?limit=2', key=keys['read'])
    body = r.json()
    assert [p['source_msg_ref'] for p in body['items']] == ['m-4', 'm-3']
    r = server.get(f'/v1/users/{user}/proposals?limit=2&cursor={body["next_cursor"]}',
                   key=keys['read'])
    assert [p['source_msg_ref'] for p in r.json()['items']] == ['m-1']
    assert r.json()['next_cursor'] is None
    r = server.get(f'/v1/users/{user}/proposals?status=acked', key=keys['read'])
    assert r.json() == {'items': [], 'next_cursor': None}


def test_ingest_concurrent_duplicates(server, keys, sql):
    user = uid()
    s = mk_scout(server, user)
    with concurrent.futures.ThreadPoolExecutor(20) as ex:
        results = list(ex.map(lambda _: ingest(server, keys['service'], s['id'], 'same'),
                              range(20)))
    codes = sorted(r.status_code for r in results)
    assert codes == [200] * 19 + [201]
    ids = {r.json()['proposal_id'] for r in results}
    assert len(ids) == 1
    assert sum(r.json().get('reason') == 'duplicate' for r in results) == 19
    assert sql.execute("SELECT count(*) FROM proposals WHERE scout_id = %s AND "
                       "source_msg_ref = 'same'", (s['id'],)).fetchone()[0] == 1


# ------------------------------------------------------------------------ device auth


def test_hello_ok_bad_token_revoked_and_early_frames(server, keys, sql):
    user = uid()
    dev = mk_device(server, user)

    async def body():
        d = await Device.open(server, dev)
        m = await d.recv()
        assert m['type'] == 'hello_ok' and m['heartbeat_s'] == 30
        assert isinstance(m['session_id'], str) and m['server_time'].endswith('Z')
        assert list(m) == ['type', 'session_id', 'server_time', 'heartbeat_s']
        # online while connected
        r = server.get(f'/v1/users/{user}/devices', key=keys['read']).json()
        assert r['items'][0]['online'] is True and r['items'][0]['device_id'] == dev['device_id']
        assert 'token' not in r['items'][0]
        await d.close()

        bad = await Device.open(server, dev, token='dev_' + '0' * 64)
        code, frames = await bad.closed()
        assert frames == [{'type': 'error', 'code': 'unauthorized'}] and code == 4401

        unknown = await Device.open(server, {'device_id': str(uuid.uuid4()), 'token': 'x'})
        code, frames = await unknown.closed()
        assert frames == [{'type': 'error', 'code': 'unauthorized'}] and code == 4401

        ws = await websockets.connect(server.ws_url, ping_interval=None)
        early = Device(ws)
        await early.ack(str(uuid.uuid4()))
        code, frames = await early.closed()
        assert frames == [{'type': 'error', 'code': 'unauthorized'}] and code == 4401

        ws = await websockets.connect(server.ws_url, ping_interval=None)
        await ws.send('{not json')
        code, frames = await Device(ws).closed()
        assert frames == [{'type': 'error', 'code': 'bad_frame'}] and code == 4401

        # authenticated: unknown types and bad frames keep the connection
        d = await Device.hello(server, dev)
        await d.send({'type': 'dance'})
        assert await d.recv() == {'type': 'error', 'code': 'unknown_type'}
        await d.send({'type': 'scout_proposal_ack'})
        assert await d.recv() == {'type': 'error', 'code': 'bad_frame'}
        await d.send({'type': 'device_hello', 'device_id': dev['device_id'], 'token': dev['token']})
        assert await d.recv() == {'type': 'error', 'code': 'already_authenticated'}
        await d.close()

        # revoked: the device is deleted, its token no longer opens a session
        assert server.delete(f'/v1/devices/{dev["device_id"]}').status_code == 204
        revoked = await Device.open(server, dev)
        code, frames = await revoked.closed()
        assert frames == [{'type': 'error', 'code': 'unauthorized'}] and code == 4401

    run(body())
    # the device went offline when its socket closed
    assert sql.execute('SELECT count(*) FROM devices WHERE user_id = %s', (user,)).fetchone()[0] == 0


def test_hello_client_is_checked_and_logged(server):
    """device_hello may name its client library ({"name", "version"}: 1 to 64 characters
    of [A-Za-z0-9._+@/-] each; other members are ignored). steward logs it on connect,
    without the token; what is not such a value is not logged (the name shows as
    "invalid"), and never refuses the hello: older clients sent other shapes."""
    dev = mk_device(server, uid())
    cases = [
        ({'name': 'steward-device', 'version': '0.1.0-rc.1+b7', 'os': 'linux'},
         ('steward-device', '0.1.0-rc.1+b7')),
        (None, ('unknown', None)),
        ({'app_version': 'bench'}, ('invalid', None)),
        ('steward-device', ('invalid', None)),
        ({'name': 'steward device', 'version': '1'}, ('invalid', '1')),
        ({'name': 'x' * 65, 'version': 'y' * 65}, ('invalid', None)),
        ({'name': 'a', 'version': 1}, ('a', None)),
        ({'name': 'a\nb', 'version': '\u00fc'}, ('invalid', None)),
    ]

    async def body():
        for client, _ in cases:
            ws = await websockets.connect(server.ws_url, ping_interval=None)
            d = Device(ws)
            frame = {'type': 'device_hello', 'device_id': dev['device_id'], 'token': dev['token']}
            if client is not None:
                frame['client'] = client
            await d.send(frame)
            assert (await d.recv())['type'] == 'hello_ok', client
            await d.close()

    run(body())
    lines = [r for r in server.log_records() if r.get('msg') == 'device connected'
             and r.get('device_id') == dev['device_id']]
    assert [(r['client'], r.get('client_version')) for r in lines] == [c[1] for c in cases]
    assert all(dev['token'] not in str(r) and 'os' not in r for r in lines)


def test_hello_checks_the_token_and_marks_presence_in_one_statement(server, sql):
    """A wrong token (another device's, or none that exists) writes nothing; the right one
    has the device seen and held by this instance, whose lease runs 2 x heartbeat + 10 s,
    by the time hello_ok arrives (the check and the presence update are one statement)."""
    user = uid()
    dev, other = mk_device(server, user, 'a'), mk_device(server, user, 'b')

    def presence(d):
        return sql.execute('SELECT d.last_seen_at, d.host, h.lease_until - now() FROM devices d '
                           'LEFT JOIN device_hosts h ON h.instance = d.host '
                           'WHERE d.id = %s', (d['device_id'],)).fetchone()

    before = presence(dev), presence(other)
    assert before[0][1:] == (None, None) and before[1][1:] == (None, None)

    async def body():
        for token in (other['token'], 'dev_' + 'f' * 64, 'x'):
            bad = await Device.open(server, dev, token=token)
            code, frames = await bad.closed()
            assert frames == [{'type': 'error', 'code': 'unauthorized'}] and code == 4401
        assert (presence(dev), presence(other)) == before
        d = await Device.open(server, dev)
        ok = await d.recv()
        seen, host, left = presence(dev)
        assert seen > before[0][0] and host == ok['session_id'].split('-')[0]
        assert 50 < left.total_seconds() <= 70
        assert presence(other) == before[1]
        await d.close()

    run(body())


def test_hello_timeout(make_server, db_url):
    s = make_server(db_url, STEWARD_WS_HELLO_TIMEOUT_S=1)

    async def body():
        ws = await websockets.connect(s.ws_url, ping_interval=None)
        t0 = time.monotonic()
        code, frames = await Device(ws).closed()
        assert code == 4408 and frames == []
        assert 0.8 < time.monotonic() - t0 < 3

    run(body())


def test_offline_after_close(server, keys):
    user = uid()
    dev = mk_device(server, user)

    async def body():
        d = await Device.hello(server, dev)
        await d.close()

    run(body())
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        item = server.get(f'/v1/users/{user}/devices', key=keys['read']).json()['items'][0]
        if not item['online']:
            break
        time.sleep(0.05)
    assert item['online'] is False and item['last_seen_at']


# ------------------------------------------------------------------------ delivery


def test_delivery_on_connect_in_order_and_live(server, keys, sql):
    user = uid()
    s = mk_scout(server, user)
    dev = mk_device(server, user)
    pids = [ingest(server, keys['service'], s['id'], f'r{i}').json()['proposal_id']
            for i in range(3)]
    # an expired proposal is never delivered
    sql.execute("UPDATE proposals SET expires_at = now() - interval '1 s' WHERE id = %s",
                (pids[1],))

    async def body():
        d = await Device.hello(server, dev)
        got = [await d.proposal() for _ in range(2)]
        assert [p['id'] for p in got] == [pids[0], pids[2]]
        p = got[0]
        assert list(p) == ['id', 'scout_id', 'source_type', 'source_msg_ref', 'raw_subject',
                           'raw_snippet', 'category', 'payload', 'triaged_at', 'expires_at']
        assert p['scout_id'] == s['id'] and p['source_type'] == 'gmail'
        assert p['raw_subject'] == 'subject r0' and p['raw_snippet'] == 'snippet r0'
        assert p['category'] == 'unprocessed' and p['payload'] is None
        await d.nothing()
        st = row(sql, pids[0])
        assert st[0] == 'delivered' and st[1] == 1 and st[5] is not None
        assert row(sql, pids[1])[0] == 'queued'

        t0 = time.monotonic()
        r = ingest(server, keys['service'], s['id'], 'live')
        live = await d.proposal(timeout=1.0)
        took = time.monotonic() - t0
        assert live['id'] == r.json()['proposal_id'] and took < 1.0
        print(f'\nsame-instance ingest-to-device {took * 1000:.1f} ms')

        # a reconnect gets the unacked ones again, each counted
        await d.close()
        d = await Device.hello(server, dev)
        again = [await d.proposal() for _ in range(3)]
        assert [p['id'] for p in again] == [pids[0], pids[2], live['id']]
        assert row(sql, pids[0])[1] == 2
        await d.close()

    run(body())


def test_ack_idempotent_cross_user_and_resolved(server, keys, sql):
    user, other = uid(), uid()
    s, so = mk_scout(server, user), mk_scout(server, other)
    d1, d2, do = mk_device(server, user, 'one'), mk_device(server, user, 'two'), mk_device(server, other)
    pid = ingest(server, keys['service'], s['id'], 'a1').json()['proposal_id']
    opid = ingest(server, keys['service'], so['id'], 'o1').json()['proposal_id']

    async def body():
        a = await Device.hello(server, d1)
        b = await Device.hello(server, d2)
        assert (await a.proposal())['id'] == pid
        assert (await b.proposal())['id'] == pid
        o = await Device.hello(server, do)
        assert (await o.proposal())['id'] == opid
        before = row(sql, opid)

        # another user's proposal: not_found and nothing changes
        await a.ack(opid)
        assert await a.recv() == {'type': 'error', 'code': 'not_found', 'proposal_id': opid}
        assert row(sql, opid) == before
        unknown = str(uuid.uuid4())
        await a.ack(unknown)
        assert await a.recv() == {'type': 'error', 'code': 'not_found', 'proposal_id': unknown}
        await a.ack('garbage')
        assert await a.recv() == {'type': 'error', 'code': 'not_found', 'proposal_id': 'garbage'}

        await a.ack(pid)
        assert await a.recv() == {'type': 'ack_ok', 'proposal_id': pid}
        assert await b.recv() == {'type': 'scout_proposal_resolved', 'proposal_id': pid}
        st = row(sql, pid)
        assert st[0] == 'acked' and st[2] is None and st[3] is None and st[4] is not None
        acked_at = st[4]
        await a.ack(pid)
        assert await a.recv() == {'type': 'ack_ok', 'proposal_id': pid}
        await b.ack(pid)
        assert await b.recv() == {'type': 'ack_ok', 'proposal_id': pid}
        assert row(sql, pid)[4] == acked_at
        await a.nothing(0.3)
        await b.nothing(0.1)
        await o.nothing(0.1)
        assert row(sql, opid) == before
        for d in (a, b, o):
            await d.close()

    run(body())


def test_two_instances_live_resolved_and_delete(server, keys, sql, make_server, db_url):
    other = make_server(db_url)
    user = uid()
    s = mk_scout(server, user)
    d1, d2 = mk_device(server, user, 'on-b'), mk_device(server, user, 'on-a')

    async def body():
        on_b = await Device.hello(other, d1)
        on_a = await Device.hello(server, d2)
        t0 = time.monotonic()
        pid = ingest(server, keys['service'], s['id'], 'x1').json()['proposal_id']
        assert (await on_b.proposal(timeout=1.0))['id'] == pid
        took = time.monotonic() - t0
        assert took < 1.0
        print(f'\ncross-instance ingest-to-device {took * 1000:.1f} ms')
        assert (await on_a.proposal(timeout=1.0))['id'] == pid
        # ingest through the other instance as well
        pid2 = ingest(other, keys['service'], s['id'], 'x2').json()['proposal_id']
        assert (await on_a.proposal(timeout=1.0))['id'] == pid2
        assert (await on_b.proposal(timeout=1.0))['id'] == pid2

        # ack on A: the device on B hears it is resolved
        await on_a.ack(pid)
        assert await on_a.recv() == {'type': 'ack_ok', 'proposal_id': pid}
        assert await on_b.recv() == {'type': 'scout_proposal_resolved', 'proposal_id': pid}

        # deleting the device through A closes its socket on B with 4403
        assert server.delete(f'/v1/devices/{d1["device_id"]}').status_code == 204
        code, frames = await on_b.closed()
        assert code == 4403 and frames == []
        await on_a.nothing(0.2)
        await on_a.close()

    run(body())


def test_notification_payloads_byte_for_byte(server, keys, sql, db_url):
    """What the instances tell each other on the channel steward_scouts, as a listener
    receives it (src/scouts/scouts_notify.h): instances of the previous version read
    these payloads during a rolling upgrade, so they must stay exactly the same."""
    got = []
    user, gone = uid('a|b'), uid()  # the user id is the last field and may hold '|'
    s, sg = mk_scout(server, user), mk_scout(server, gone)
    dev, elsewhere = mk_device(server, user), mk_device(server, user, 'held elsewhere')
    # an ack is told to the other instances only when another device of the user is held
    # by one of them (test_scouts_presence.py): here by a made-up instance with a live lease
    sql.execute("INSERT INTO device_hosts VALUES ('feedfacefeedface', now() + interval '5 minutes')")
    sql.execute("UPDATE devices SET host = 'feedfacefeedface' WHERE id = %s",
                (elsewhere['device_id'],))
    with psycopg.connect(db_url, autocommit=True) as listen:
        listen.add_notify_handler(
            lambda n: got.append(n.payload) if n.channel == 'steward_scouts' else None)
        listen.execute('LISTEN steward_scouts')

        def expect(want):
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline:
                listen.execute('SELECT 1')  # takes in what arrived meanwhile
                hit = [p for p in got if want(p)]
                if hit:
                    got.clear()
                    return hit
                time.sleep(0.05)
            raise AssertionError(f'not among {got}')

        pid = ingest(server, keys['service'], s['id'], 'n1').json()['proposal_id']
        assert expect(lambda p: p.endswith(user)) == [f'q|{user}']

        async def ack():
            d = await Device.hello(server, dev)
            assert (await d.proposal())['id'] == pid
            await d.ack(pid.upper())  # taken in lowercase, and notified so
            assert await d.recv() == {'type': 'ack_ok', 'proposal_id': pid}
            await d.close()

        run(ack())
        acked = expect(lambda p: p.startswith('a|'))
        assert len(acked) == 1
        kind, instance, rest = acked[0].split('|', 2)
        assert len(instance) == 16 and all(c in '0123456789abcdef' for c in instance)
        assert rest == f'{pid}|{dev["device_id"]}|{user}'

        assert server.delete(f'/v1/devices/{dev["device_id"]}').status_code == 204
        assert expect(lambda p: p.startswith('d|')) == [f'd|{dev["device_id"]}|{user}']
        sql.execute("DELETE FROM device_hosts WHERE instance = 'feedfacefeedface'")

        assert server.delete(f'/v1/users/{gone}').status_code == 204
        assert expect(lambda p: p.startswith('u|')) == [f'u|{gone}']

        # the one sender: kind and parts joined with '|'; a NULL part sends an empty
        # payload, as the concatenations it replaced did
        sql.execute("SELECT steward_notify('a', 'i', 'p', 'd', 'x|y')")
        assert expect(lambda p: p.startswith('a|i|')) == ['a|i|p|d|x|y']
        sql.execute("SELECT steward_notify('q', NULL)")
        assert expect(lambda p: p == '') == ['']
    assert sg['user_id'] == gone


def test_user_erasure_removes_scouts_devices_proposals_and_closes_sockets(
        server, keys, sql, make_server, db_url):
    other = make_server(db_url)
    user, keep = uid(), uid()
    s, sk = mk_scout(server, user), mk_scout(server, keep)
    d_here, d_there, d_keep = mk_device(server, user), mk_device(server, user), mk_device(server, keep)
    ingest(server, keys['service'], s['id'], 'e1')
    kpid = ingest(server, keys['service'], sk['id'], 'k1').json()['proposal_id']

    async def body():
        a = await Device.hello(server, d_here)
        b = await Device.hello(other, d_there)
        k = await Device.hello(server, d_keep)
        await a.proposal()
        await b.proposal()
        assert (await k.proposal())['id'] == kpid
        assert server.delete(f'/v1/users/{user}').status_code == 204
        assert (await a.closed())[0] == 4403
        assert (await b.closed())[0] == 4403
        await k.nothing(0.3)
        await k.close()

    run(body())
    for table in ('scouts', 'devices', 'proposals'):
        assert sql.execute(f'SELECT count(*) FROM {table} WHERE user_id = %s',
                           (user,)).fetchone()[0] == 0
        assert sql.execute(f'SELECT count(*) FROM {table} WHERE user_id = %s',
                           (keep,)).fetchone()[0] == 1
    assert server.get(f'/v1/scouts/{s["id"]}').status_code == 404


def test_inflight_window_500_in_order(server, keys, sql):
    user = uid()
    s = mk_scout(server, user)
    dev = mk_device(server, user)
    sql.execute(
        "INSERT INTO proposals (scout_id, user_id, source_type, source_msg_ref, raw_subject, "
        "triaged_at, expires_at) SELECT %s, %s, 'gmail', 'w' || lpad(g::text, 4, '0'), "
        "'s' || g, now() - interval '1 hour' + g * interval '1 ms', now() + interval '1 day' "
        "FROM generate_series(1, 500) g", (s['id'], user))

    async def body():
        d = await Device.hello(server, dev)
        first = [await d.proposal() for _ in range(32)]
        await d.nothing(0.5)  # the window is full
        assert sql.execute("SELECT count(*) FROM proposals WHERE user_id = %s AND "
                           "status = 'delivered'", (user,)).fetchone()[0] == 32
        received = [p['source_msg_ref'] for p in first]
        outstanding = {p['id'] for p in first}
        acked = 0
        while acked < 500:
            batch = list(outstanding)
            outstanding.clear()
            for pid in batch:
                await d.ack(pid)
            oks = 0
            want_new = min(32, 500 - len(received))
            while oks < len(batch) or len(outstanding) < want_new:
                m = await d.recv()
                if m['type'] == 'ack_ok':
                    oks += 1
                else:
                    assert m['type'] == 'scout_proposal', m
                    received.append(m['proposal']['source_msg_ref'])
                    outstanding.add(m['proposal']['id'])
                    assert len(outstanding) <= 32
            acked += len(batch)
        assert received == ['w%04d' % i for i in range(1, 501)]
        await d.nothing(0.3)
        await d.close()

    t0 = time.monotonic()
    run(body())
    print(f'\n500 queued delivered 32 at a time in {time.monotonic() - t0:.2f} s')
    assert sql.execute("SELECT count(*) FROM proposals WHERE user_id = %s AND status = 'acked' "
                       "AND delivery_attempts = 1 AND raw_subject IS NULL",
                       (user,)).fetchone()[0] == 500


def test_redelivery_after_ack_timeout_then_failed_with_one_lesson(make_server, fresh_db_url):
    srv = make_server(fresh_db_url, STEWARD_ACK_TIMEOUT_S=1, STEWARD_MAX_DELIVERY_ATTEMPTS=2)
    user = uid()
    s = mk_scout(srv, user)
    dev = mk_device(srv, user)
    pid = ingest(srv, ADMIN_KEY, s['id'], 'slow').json()['proposal_id']

    with psycopg.connect(fresh_db_url, autocommit=True) as sql:
        async def body():
            d = await Device.hello(srv, dev)
            assert (await d.proposal())['id'] == pid
            t0 = time.monotonic()
            again = await d.proposal(timeout=4)
            assert again['id'] == pid and time.monotonic() - t0 >= 0.9
            assert row(sql, pid)[:2] == ('delivered', 2)
            deadline = time.monotonic() + 5
            while row(sql, pid)[0] != 'failed' and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert row(sql, pid)[:2] == ('failed', 2)
            await d.nothing(1.5)  # failed: not sent again
            await d.close()

        run(body())
        lessons = sql.execute("SELECT lesson_type, work_item_id, stage, source, detail FROM lessons "
                              "WHERE lesson_type = 'delivery_failed'").fetchall()
        assert len(lessons) == 1
        lt, work, stage, source, detail = lessons[0]
        assert (lt, work, stage, source) == ('delivery_failed', pid, 'delivery', 'auto')
        assert detail['user_id'] == user and detail['attempts'] == 2
        assert sql.execute('SELECT failed_at IS NOT NULL FROM proposals WHERE id = %s',
                           (pid,)).fetchone()[0]


def test_kill9_before_ack_redelivers_after_restart(make_server, db_url, keys, sql):
    srv = make_server(db_url)
    user = uid()
    s = mk_scout(srv, user)
    dev = mk_device(srv, user)
    pid = ingest(srv, keys['service'], s['id'], 'k1').json()['proposal_id']

    async def first():
        d = await Device.hello(srv, dev)
        assert (await d.proposal())['id'] == pid
        srv.kill()  # SIGKILL after delivery, before the ack
        await d.closed()

    run(first())
    assert row(sql, pid)[:2] == ('delivered', 1)
    srv.start()

    async def second():
        d = await Device.hello(srv, dev)
        p = await d.proposal()
        assert p['id'] == pid and p['raw_subject'] == 'subject k1'
        await d.ack(pid)
        assert await d.recv() == {'type': 'ack_ok', 'proposal_id': pid}
        await d.close()

    run(second())
    assert row(sql, pid)[:2] == ('acked', 2)


def test_postgres_restart_keeps_live_delivery(make_server):
    cluster = PgCluster()
    cluster.start()
    srv = None
    try:
        url = cluster.createdb('restart')
        srv = make_server(url, STEWARD_DB_ACQUIRE_TIMEOUT_MS=500)
        user = uid()
        s = mk_scout(srv, user)
        dev = mk_device(srv, user)

        async def body():
            d = await Device.hello(srv, dev)
            cluster.restart()
            # the socket survived the outage; the next ingest still arrives live
            deadline = time.monotonic() + 20
            while True:
                r = ingest(srv, ADMIN_KEY, s['id'], 'after')
                if r.status_code != 503 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert r.status_code == 201, r.text
            p = await d.proposal(timeout=3)
            assert p['id'] == r.json()['proposal_id']
            await d.ack(p['id'])
            assert (await d.recv())['type'] == 'ack_ok'
            await d.close()

        run(body())
        # the proposal may have come through a retried pass before the listener's backoff
        # (100, 200, 400 ms ...) ended: wait for the listener's reconnect, not assume it
        deadline = time.monotonic() + 10
        while not any(rec.get('msg') == 'notification listener connected'
                      for rec in srv.log_records()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert any(rec.get('msg') == 'notification listener connected'
                   for rec in srv.log_records())
    finally:
        if srv:
            status = srv.stop()
            assert not srv.sanitizer_reports()
            assert status == 0
        cluster.destroy()


# ------------------------------------------------------------------------ scale


def test_1000_devices_each_get_their_own(make_server, db_url, keys, sql):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    srv = make_server(db_url)
    # STEWARD_SCOUTS_LOAD_N=10000 with a release build gives the figures in docs/performance.md
    n = int(os.environ.get('STEWARD_SCOUTS_LOAD_N', '1000'))
    tag = uuid.uuid4().hex[:8]
    users = [f'load-{tag}-{i}' for i in range(n)]
    tokens = [f'dev_{secrets.token_hex(32)}' for _ in range(n)]
    with sql.cursor() as cur:
        cur.execute(
            "INSERT INTO devices (user_id, name, token_hash) SELECT u, 'load', h "
            "FROM unnest(%s::text[], %s::text[]) AS t(u, h)",
            (users, [hashlib.sha256(t.encode()).hexdigest() for t in tokens]))
        cur.execute("INSERT INTO scouts (user_id, provider) SELECT u, 'gmail' FROM unnest(%s::text[]) u",
                    (users,))
    devs = dict(sql.execute("SELECT user_id, id::text FROM devices WHERE user_id LIKE %s",
                            (f'load-{tag}-%',)).fetchall())
    scouts = dict(sql.execute("SELECT user_id, id::text FROM scouts WHERE user_id LIKE %s",
                              (f'load-{tag}-%',)).fetchall())

    def rss_kib():
        with open(f'/proc/{srv.proc.pid}/status') as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1])

    def cpu_s():
        with open(f'/proc/{srv.proc.pid}/stat') as f:
            fields = f.read().rsplit(')', 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')

    async def body():
        rss0 = rss_kib()
        sem = asyncio.Semaphore(200)

        async def connect(i):
            async with sem:
                return await Device.hello(srv, {'device_id': devs[users[i]], 'token': tokens[i]})

        t0 = time.monotonic()
        conns = await asyncio.gather(*(connect(i) for i in range(n)))
        t_conn = time.monotonic() - t0
        rss1 = rss_kib()
        sent_at = {}

        def post(i):
            sent_at[i] = time.monotonic()
            r = ingest(srv, keys['service'], scouts[users[i]], f'own-{users[i]}')
            assert r.status_code == 201, r.text
            return r.json()['proposal_id']

        loop = asyncio.get_running_loop()
        results = {}
        pids = {}

        async def receive(i):
            p = await conns[i].proposal(timeout=120)
            results[i] = (p, time.monotonic())

        with concurrent.futures.ThreadPoolExecutor(16) as ex:
            # latency: one ingest at a time while every socket is connected
            probes = min(100, n)
            for i in range(probes):
                task = asyncio.create_task(receive(i))
                pids[i] = await loop.run_in_executor(ex, post, i)
                await task
            lat = sorted((results[i][1] - sent_at[i]) * 1000 for i in range(probes))
            # throughput: everybody else at once, 16 posts in flight
            receivers = [asyncio.create_task(receive(i)) for i in range(probes, n)]
            t1, c1 = time.monotonic(), cpu_s()
            posted = await asyncio.gather(*(loop.run_in_executor(ex, post, i)
                                            for i in range(probes, n)))
            pids.update(zip(range(probes, n), posted))
            await asyncio.gather(*receivers)
            t_all, c_all = time.monotonic() - t1, cpu_s() - c1
        for i in range(n):
            p, _ = results[i]
            assert p['source_msg_ref'] == f'own-{users[i]}' and p['id'] == pids[i]
        # nobody receives anything else
        extra = await asyncio.gather(*(c.nothing(0.3) for c in conns[:50]))
        assert extra == [None] * 50
        await asyncio.gather(*(c.close() for c in conns))
        per_conn = (rss1 - rss0) / n
        bulk = n - probes
        print(f'\n{n} devices: connected+hello in {t_conn:.2f} s; one ingest at a time: '
              f'ingest-to-device p50 {lat[len(lat) // 2]:.1f} ms p99 '
              f'{lat[min(len(lat) - 1, int(len(lat) * 0.99))]:.1f} ms; {bulk} concurrent '
              f'ingests delivered in {t_all:.2f} s ({bulk / max(t_all, 1e-9):.0f}/s, steward CPU '
              f'{c_all * 1000 / bulk:.2f} ms per ingest+delivery); steward RSS '
              f'{rss0} -> {rss1} KiB ({per_conn:.1f} KiB per connection)')

    run(body())
    assert sql.execute("SELECT count(*) FROM proposals WHERE user_id LIKE %s AND "
                       "status = 'delivered' AND delivery_attempts = 1",
                       (f'load-{tag}-%',)).fetchone()[0] == n
