"""Users (docs/api.md, "Users and erasure"): one user-id rule, and an erasure that
leaves neither the id nor any content of the user in any table, audited with a
pseudonymised subject."""
import asyncio
import hashlib
import hmac
import json
import time
import uuid
from urllib.parse import quote

import psycopg
import pytest
import websockets

from harness.steward import ADMIN_KEY
from conftest import finish, make_key

WAIT = 5.0
ACK_TIMEOUT_S = 2


def tok(prefix):
    return f'{prefix}-{uuid.uuid4().hex[:10]}'


class Device:
    def __init__(self, ws):
        self.ws = ws

    @classmethod
    async def hello(cls, server, dev):
        ws = await websockets.connect(server.ws_url, ping_interval=None)
        d = cls(ws)
        await ws.send(json.dumps({'type': 'device_hello', 'device_id': dev['device_id'],
                                  'token': dev['token']}))
        m = await d.recv()
        assert m['type'] == 'hello_ok', m
        return d

    async def recv(self, timeout=WAIT):
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))

    async def proposal(self, timeout=WAIT):
        m = await self.recv(timeout)
        assert m['type'] == 'scout_proposal', m
        return m['proposal']


def status(sql, pid):
    return sql.execute('SELECT status FROM proposals WHERE id = %s', (pid,)).fetchone()[0]


def wait_status(sql, pid, want, limit=10):
    deadline = time.monotonic() + limit
    while status(sql, pid) != want and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status(sql, pid) == want


def text_columns(sql):
    return sql.execute(
        "SELECT c.table_name, c.column_name FROM information_schema.columns c "
        "JOIN information_schema.tables t USING (table_schema, table_name) "
        "WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE' "
        "AND c.data_type IN ('text', 'character varying', 'character', 'json', 'jsonb')"
    ).fetchall()


def hits(sql, needle):
    """Every (table, column) whose text holds needle."""
    found = []
    for table, column in text_columns(sql):
        n = sql.execute(f'SELECT count(*) FROM "{table}" WHERE strpos("{column}"::text, %s) > 0',
                        (needle,)).fetchone()[0]
        if n:
            found.append((table, column, n))
    return found


@pytest.fixture(scope='module')
def srv(db_url):
    s_ = None
    from harness.steward import Steward
    s_ = Steward(db_url, STEWARD_ACK_TIMEOUT_S=ACK_TIMEOUT_S, STEWARD_MAX_DELIVERY_ATTEMPTS=1)
    yield s_
    finish(s_)


def build_user(srv, sql, user, content):
    """A user with something of every kind; content collects the strings only this user
    holds."""
    enc = quote(user, safe='')
    note, dev_name = tok('NOTE'), tok('DEVNAME')
    content += [note, dev_name]
    r = srv.post(f'/v1/bonds/{enc}/detections',
                 json={'detection': {'phase': 'bonding', 'risk_level': 'high',
                                     'signals': {'primary': tok('SIGNAL')}},
                       'ulm_vector': {'warmth': 0.5}})
    assert r.status_code == 200, r.text
    assert srv.post(f'/v1/bonds/{enc}/notes', json={'note': note}).status_code == 200
    assert srv.put(f'/v1/bonds/{enc}/rate-limit', json={'daily_msg_cap': 5}).status_code == 200
    assert srv.post(f'/v1/bonds/{enc}/messages').status_code == 200
    scout = srv.post('/v1/scouts', json={'user_id': user, 'provider': 'gmail'}).json()
    dev = srv.post('/v1/devices', json={'user_id': user, 'name': dev_name}).json()
    return scout, dev


def ingest(srv, scout, content):
    ref, subj, snip, why = tok('REF'), tok('SUBJ'), tok('SNIP'), tok('WHY')
    content += [ref, subj, snip, why]
    r = srv.post(f'/v1/scouts/{scout["id"]}/items',
                 json={'source_msg_ref': ref, 'verdict': 'relevant', 'subject': subj,
                       'snippet': snip, 'reason': why})
    assert r.status_code == 201, r.text
    return r.json()['proposal_id']


def test_erasure_leaves_nothing_behind(srv, sql):
    # 150 characters: above the 128 bonds took, so only the one rule makes it erasable
    marker = tok('ERASEME')
    user = marker + 'é' * (150 - len(marker))
    assert len(user) == 150
    content = []
    scout, dev = build_user(srv, sql, user, content)
    bystander = tok('KEEPME')
    other_scout, _ = build_user(srv, sql, bystander, [])
    other_pid = ingest(srv, other_scout, [])

    async def deliveries():
        d = await Device.hello(srv, dev)
        pids = [ingest(srv, scout, content) for _ in range(3)]
        got = [(await d.proposal())['id'] for _ in range(3)]
        assert sorted(got) == sorted(pids)
        await d.ws.send(json.dumps({'type': 'scout_proposal_ack', 'proposal_id': pids[0]}))
        assert (await d.recv())['type'] == 'ack_ok'
        # the other two time out and fail (one attempt), with a delivery_failed lesson each
        for pid in pids[1:]:
            await asyncio.to_thread(wait_status, sql, pid, 'failed')
        last = ingest(srv, scout, content)
        assert (await d.proposal())['id'] == last
        assert status(sql, last) == 'delivered'
        statuses = sorted(status(sql, p) for p in pids + [last])
        assert statuses == ['acked', 'delivered', 'failed', 'failed']
        # erase while the device is connected: its socket is closed
        r = await asyncio.to_thread(srv.delete, f'/v1/users/{quote(user, safe="")}')
        assert r.status_code == 204, r.text
        try:
            while True:
                await d.recv()
        except websockets.ConnectionClosed:
            pass
        return d.ws.close_code

    # before: the id is in every kind of row the issue names
    lessons_before = sql.execute(
        "SELECT count(*) FROM lessons WHERE lesson_type = 'delivery_failed' "
        "AND detail->>'user_id' = %s", (user,)).fetchone()[0]
    assert lessons_before == 0
    audit_before = sql.execute("SELECT count(*) FROM audit_log WHERE target = %s",
                               ('user:' + user,)).fetchone()[0]
    assert audit_before == 4  # cap, note, scout, device
    close_code = asyncio.run(deliveries())
    assert close_code == 4403

    # after: zero hits for the id and every content string, in every text/json column
    for needle in [user, marker] + content:
        assert hits(sql, needle) == [], needle
    # the bystander is untouched
    assert hits(sql, bystander)
    assert status(sql, other_pid) == 'queued'

    # the pseudonym: HMAC-SHA256 of the id under the database's key
    key = sql.execute("SELECT value FROM steward_secrets WHERE name = 'pseudonym_key'"
                      ).fetchone()[0]
    pseudo = '~' + hmac.new(key.encode(), user.encode(), hashlib.sha256).hexdigest()
    rows = sql.execute("SELECT action, actor, detail FROM audit_log WHERE target = %s "
                       "ORDER BY id", ('user:' + pseudo,)).fetchall()
    assert [r[0] for r in rows] == ['bond.note.add', 'bond.cap.set', 'scout.create',
                                    'device.create', 'user.erase']
    erase = rows[-1]
    assert erase[1] == 'admin-env'
    assert erase[2]['counts'] == {'bonds': 1, 'bond_events': 4, 'scouts': 1, 'devices': 1,
                                  'proposals': 4, 'lessons_pseudonymised': 2,
                                  'audit_rows_pseudonymised': 4}
    # the lessons steward recorded about the user keep their counts, under the pseudonym
    assert sql.execute("SELECT count(*) FROM lessons WHERE lesson_type = 'delivery_failed' "
                       "AND detail->>'user_id' = %s", (pseudo,)).fetchone()[0] == 2
    # GET /v1/audit shows the erasure
    got = srv.get('/v1/audit', params={'action': 'user.erase'}).json()['items']
    assert got[0]['target'] == 'user:' + pseudo and got[0]['actor'] == 'admin-env'
    # erasing again: idempotent, audited with zero counts
    assert srv.delete(f'/v1/users/{quote(user, safe="")}').status_code == 204
    again = srv.get('/v1/audit', params={'action': 'user.erase'}).json()['items'][0]
    assert again['target'] == 'user:' + pseudo
    assert set(again['detail']['counts'].values()) == {0}


def test_user_id_rule_is_the_same_everywhere(srv, sql):
    long_ok = tok('LONG') + 'x' * 180
    assert len(long_ok) <= 200
    enc = quote(long_ok, safe='')
    assert srv.post('/v1/scouts', json={'user_id': long_ok, 'provider': 'gmail'}).status_code == 201
    assert srv.post(f'/v1/bonds/{enc}/detections', json={'detection': {}}).status_code == 200
    assert srv.get(f'/v1/users/{enc}/devices').status_code == 200
    assert srv.delete(f'/v1/users/{enc}').status_code == 204
    assert hits(sql, long_ok) == []
    before = sql.execute('SELECT count(*) FROM audit_log').fetchone()[0]
    for bad in ('x' * 201, '%01abc', '%C3', 'tab%09', 'del%7F'):
        for method, path, body in (('DELETE', f'/v1/users/{bad}', None),
                                   ('GET', f'/v1/bonds/{bad}', None),
                                   ('GET', f'/v1/users/{bad}/proposals', None)):
            r = srv.request(method, path, json=body)
            assert r.status_code == 422, (bad, path)
            assert r.headers['content-type'].startswith('application/problem+json')
            assert [e['field'] for e in r.json()['errors']] == ['user_id']
    for bad in ('x' * 201, 'tab\there', ''):
        r = srv.post('/v1/scouts', json={'user_id': bad, 'provider': 'gmail'})
        assert r.status_code == 422 and 'user_id' in [e['field'] for e in r.json()['errors']]
    assert sql.execute('SELECT count(*) FROM audit_log').fetchone()[0] == before
    # only admin erases
    for scope in ('read', 'service'):
        k = make_key(srv.db_url, tok(scope), scope)
        assert srv.delete('/v1/users/anyone', key=k).status_code == 403


def test_configured_key_and_the_journal_switched_off(fresh_db_url, make_server):
    """One instance for both: STEWARD_PSEUDONYM_KEY is the HMAC key when set, and the
    lessons about the user are pseudonymised with the journal off too, even without the
    lessons table."""
    secret = 'pseudonym-key-for-tests-0123'
    s = make_server(fresh_db_url, STEWARD_PSEUDONYM_KEY=secret, STEWARD_LESSONS_ENABLED='false')
    user, other = tok('OFF'), tok('OFF2')
    with psycopg.connect(fresh_db_url, autocommit=True) as sql:
        # a lesson recorded while the journal was on
        sql.execute("INSERT INTO lessons (lesson_type, source, detail) VALUES "
                    "('delivery_failed', 'auto', json_build_object('user_id', %s::text))",
                    (user,))
        for u in (user, other):
            assert s.post(f'/v1/bonds/{u}/detections',
                          json={'detection': {}}).status_code == 200
        assert s.delete(f'/v1/users/{user}').status_code == 204
        assert hits(sql, user) == []
        pseudo = '~' + hmac.new(secret.encode(), user.encode(), hashlib.sha256).hexdigest()
        got = s.get('/v1/audit', params={'action': 'user.erase'}).json()['items'][0]
        assert got['target'] == 'user:' + pseudo
        assert got['detail']['counts']['bonds'] == 1
        assert got['detail']['counts']['lessons_pseudonymised'] == 1
        assert sql.execute("SELECT detail->>'user_id' FROM lessons").fetchone()[0] == pseudo
        # without the table the erasure still goes through
        sql.execute('DROP TABLE lessons CASCADE')
        assert s.delete(f'/v1/users/{other}').status_code == 204
        assert hits(sql, other) == []
