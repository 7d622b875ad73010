"""Security checks (issue 10): the scope matrix of every route, device tokens that never
cross users, SQL metacharacters stored verbatim, and no secret in any log."""
import asyncio
import glob
import hashlib
import json
import os
import re
import subprocess
import time
import urllib.parse
import uuid

import pytest
import requests
import websockets

from harness.pgcluster import wait_for
from harness.steward import ADMIN_KEY, binary
from conftest import make_key

# The route tables of docs/api.md: the scope each documented route needs.
DOCUMENTED_SCOPES = {
    ('POST', '/v1/posts/{post_id}/metrics'): 'service',
    ('POST', '/v1/posts/{post_id}/plan'): 'service',
    ('PUT', '/v1/actions/{idempotency_key}'): 'service',
    ('GET', '/v1/actions/{idempotency_key}'): 'read',
    ('GET', '/v1/posts/{post_id}/actions'): 'read',
    ('GET', '/v1/planner/config'): 'read',
    ('PUT', '/v1/planner/config'): 'admin',
    ('POST', '/v1/lessons'): 'service',
    ('GET', '/v1/lessons'): 'read',
    ('GET', '/v1/lessons/{id}'): 'read',
    ('PATCH', '/v1/lessons/{id}'): 'admin',
    ('GET', '/v1/lessons/snapshot'): 'read',
    ('GET', '/v1/bonds'): 'read',
    ('GET', '/v1/bonds/{user_id}'): 'read',
    ('POST', '/v1/bonds/{user_id}/detections'): 'service',
    ('GET', '/v1/bonds/{user_id}/rate-limit'): 'read',
    ('POST', '/v1/bonds/{user_id}/messages'): 'service',
    ('PUT', '/v1/bonds/{user_id}/rate-limit'): 'admin',
    ('POST', '/v1/bonds/{user_id}/notes'): 'admin',
    ('GET', '/v1/bonds/{user_id}/events'): 'read',
    ('DELETE', '/v1/users/{user_id}'): 'admin',
    ('POST', '/v1/scouts'): 'admin',
    ('GET', '/v1/scouts/{id}'): 'read',
    ('PATCH', '/v1/scouts/{id}'): 'admin',
    ('DELETE', '/v1/scouts/{id}'): 'admin',
    ('POST', '/v1/scouts/{id}/items'): 'service',
    ('GET', '/v1/users/{user_id}/proposals'): 'read',
    ('POST', '/v1/devices'): 'admin',
    ('GET', '/v1/users/{user_id}/devices'): 'read',
    ('DELETE', '/v1/devices/{id}'): 'admin',
    ('POST', '/v1/heal'): 'admin',
    ('GET', '/v1/reports'): 'read',
    ('GET', '/v1/status'): 'read',
    ('GET', '/v1/instances'): 'read',
    ('GET', '/livez'): 'none',
    ('GET', '/readyz'): 'none',
    ('GET', '/metrics'): 'none',
    ('GET', '/openapi.yaml'): 'none',
}
# pytest imports every test module before it runs any: this is the session's start
COLLECTED_AT = time.time()
RANK = {'none': 0, 'read': 1, 'service': 2, 'admin': 3}

# Secrets have recognisable shapes: API keys stw_ + 48 hex, device tokens dev_ + 64 hex.
SECRET_RE = re.compile(r'stw_[0-9a-f]{48}|dev_[0-9a-f]{64}|' + re.escape(ADMIN_KEY))


def binary_routes():
    out = subprocess.run([binary(), 'routes', '--scopes'], check=True, text=True,
                         stdout=subprocess.PIPE).stdout
    return [tuple(line.split(' ')) for line in out.splitlines() if line]


def fill(pattern, value='x'):
    return re.sub(r'\{[a-z_]+\}', value, pattern)


def test_binary_scopes_match_the_documented_table():
    routes = binary_routes()
    assert len(routes) == len(DOCUMENTED_SCOPES)
    for method, pattern, scope in routes:
        assert (method, pattern) in DOCUMENTED_SCOPES, f'{method} {pattern} is not documented'
        assert DOCUMENTED_SCOPES[(method, pattern)] == scope, (method, pattern, scope)
        # the scope rule of docs/api.md: every /v1 GET needs read; writes need more
        if pattern.startswith('/v1/'):
            assert (scope == 'read') == (method == 'GET'), (method, pattern, scope)
        else:
            assert scope == 'none'


@pytest.fixture(scope='module')
def all_keys(server, db_url, keys):
    revoked = make_key(db_url, 'to-be-revoked', 'admin')
    r = server.cli('keys', 'revoke', '--name', 'to-be-revoked')
    assert r.returncode == 0, r.stderr
    # the snapshot refresh (2 s) drops it everywhere
    assert wait_for(lambda: server.get('/v1/status', key=revoked).status_code == 401, 5)
    return dict(keys, revoked=revoked, none=None)


def expected(route_scope, who):
    """The status class the scope rule gives: 401, 403, or 'pass' (authorised)."""
    if route_scope == 'none':
        return 'pass'
    if who in ('none', 'revoked'):
        return 401
    return 'pass' if RANK[who] >= RANK[route_scope] else 403


def test_every_route_with_every_scope(server, all_keys, sql):
    before = sql.execute('SELECT count(*) FROM lessons').fetchone()[0]
    seen = 0
    for method, pattern, scope in binary_routes():
        for who in ('none', 'revoked', 'read', 'service', 'admin'):
            # ids nobody uses, so authorised writes touch nothing real
            path = fill(pattern, 'sec-' + uuid.uuid4().hex[:8])
            kw = {'json': {}} if method in ('POST', 'PUT', 'PATCH') else {}
            r = server.request(method, path, key=all_keys[who], **kw)
            want = expected(scope, who)
            ctx = f'{method} {pattern} as {who}: {r.status_code} {r.text[:200]}'
            if want == 'pass':
                assert r.status_code not in (401, 403), ctx
                assert r.status_code < 500, ctx
            else:
                assert r.status_code == want, ctx
                assert r.headers['Content-Type'] == 'application/problem+json', ctx
                assert r.json()['status'] == want, ctx
                if want == 401:
                    assert r.headers.get('WWW-Authenticate') == 'Bearer', ctx
            seen += 1
    assert seen == len(DOCUMENTED_SCOPES) * 5
    # {} is not a lesson: nothing was stored by the authorised POSTs either
    assert sql.execute('SELECT count(*) FROM lessons').fetchone()[0] == before


def test_malformed_authorization_headers_are_401(server):
    for h in ('', 'Bearer', 'Bearer ', 'Basic abc', 'bearer', 'Bearer ' + 'a' * 5000,
              'Bearer stw_' + '0' * 48, 'Bearer ' + ADMIN_KEY + 'x', 'Bearer ' + ADMIN_KEY[:-1],
              'Bearer \t' + ADMIN_KEY + ' trailing'):
        r = requests.get(server.url + '/v1/status', headers={'Authorization': h}, timeout=10)
        assert r.status_code == 401, (h[:40], r.status_code)
        assert r.json()['status'] == 401


# ------------------------------------------------------------ device tokens and users

def mk_device(server, user):
    r = server.post('/v1/devices', json={'user_id': user, 'name': 'laptop'})
    assert r.status_code == 201, r.text
    return r.json()


def queue(server, key, user, ref):
    r = server.post('/v1/scouts', json={'user_id': user, 'provider': 'gmail'})
    assert r.status_code == 201, r.text
    sid = r.json()['id']
    r = server.post(f'/v1/scouts/{sid}/items', key=key, json={
        'source_msg_ref': ref, 'verdict': 'relevant', 'subject': f'for {user}',
        'snippet': 'private'})
    assert r.status_code == 201, r.text
    return r.json()['proposal_id']


async def ws_hello(server, device_id, token):
    ws = await websockets.connect(server.ws_url, ping_interval=None)
    await ws.send(json.dumps({'type': 'device_hello', 'device_id': device_id, 'token': token}))
    return ws


async def recv(ws, timeout=5.0):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


def test_device_tokens_never_reach_another_users_data(server, keys, sql):
    ua, ub = 'alice-' + uuid.uuid4().hex[:6], 'bob-' + uuid.uuid4().hex[:6]
    da, db = mk_device(server, ua), mk_device(server, ub)
    pa = queue(server, keys['service'], ua, 'ref-a')
    pb = queue(server, keys['service'], ub, 'ref-b')

    # a device token is not an API key: every /v1 route refuses it
    for method, pattern, scope in binary_routes():
        if scope == 'none':
            continue
        for user in (ua, ub):
            r = server.request(method, fill(pattern, user), key=da['token'],
                               **({'json': {}} if method in ('POST', 'PUT', 'PATCH') else {}))
            assert r.status_code == 401, (method, pattern, r.status_code)

    async def scenario():
        # A's device id with B's token, and B's device id with A's token: refused
        for dev, tok in ((da['device_id'], db['token']), (db['device_id'], da['token'])):
            ws = await ws_hello(server, dev, tok)
            m = await recv(ws)
            assert m == {'type': 'error', 'code': 'unauthorized'}
            with pytest.raises(websockets.ConnectionClosed) as ei:
                await asyncio.wait_for(ws.recv(), 5)
            assert ei.value.rcvd.code == 4401
        # A's device sees A's proposal only, and cannot ack B's
        ws = await ws_hello(server, da['device_id'], da['token'])
        assert (await recv(ws))['type'] == 'hello_ok'
        m = await recv(ws)
        assert m['type'] == 'scout_proposal' and m['proposal']['id'] == pa
        await ws.send(json.dumps({'type': 'scout_proposal_ack', 'proposal_id': pb}))
        m = await recv(ws)
        assert m == {'type': 'error', 'code': 'not_found', 'proposal_id': pb}
        # nothing else arrives (B's proposal is never sent to A)
        with pytest.raises(asyncio.TimeoutError):
            await recv(ws, 1.0)
        await ws.close()

    asyncio.run(scenario())
    st = sql.execute('SELECT status, acked_at FROM proposals WHERE id = %s', (pb,)).fetchone()
    assert st == ('queued', None)
    # over REST, listing is by user: A's list never carries B's proposal, and the ids differ
    items = server.get(f'/v1/users/{ua}/proposals', key=keys['read']).json()['items']
    assert [p['id'] for p in items] == [pa]


# ------------------------------------------------------------ SQL metacharacters

META = [
    "O'Brien \"quoted\" \\backslash\\ ;-- $1 $2::text %s %d ?",
    "'); DROP TABLE lessons; --",
    "\\x00\\' OR '1'='1' /* */ `tick` E'\\n'",
    'ünïcödé ☃ 😀 中文 עברית \u200b \u00a0',
]


def test_sql_metacharacters_are_stored_and_returned_verbatim(server, keys, sql):
    svc = keys['service']
    for i, s in enumerate(META):
        # lessons: every free-text field
        fields = {'work_item_id': s, 'task_id': s, 'stage': s, 'agent': s, 'repo': s,
                  'root_cause': s, 'suggestion': s, 'related_task': s, 'target_repo': s,
                  'detail': {s: s, 'nested': [s]}}
        r = server.post('/v1/lessons', key=svc,
                        json={'lesson_type': 'gate_failure', 'source': 'manual', **fields})
        assert r.status_code == 201, r.text
        lesson = server.get(f"/v1/lessons/{r.json()['id']}", key=svc).json()
        for k, v in fields.items():
            assert lesson[k] == v, k
        found = server.get('/v1/lessons', key=svc, params={'repo': s}).json()['items']
        assert [x['id'] for x in found] == [lesson['id']]

        # bonds: the user id (a path parameter) and a note
        user = f'{s}-{i}'
        enc = urllib.parse.quote(user, safe='')
        r = server.post(f'/v1/bonds/{enc}/notes', json={'note': s})
        assert r.status_code == 200, r.text
        bond = server.get(f'/v1/bonds/{enc}', key=svc).json()
        assert bond['user_id'] == user
        assert bond['notes'][-1].endswith('] ' + s)
        assert sql.execute('SELECT count(*) FROM bonds WHERE user_id = %s',
                           (user,)).fetchone()[0] == 1

        # planner: post id and idempotency key in the path, error_code and outcome
        post = f'post {s}'
        penc = urllib.parse.quote(post, safe='')
        ik = 'sheal_' + hashlib.sha256(f'{post}:comment:tier_1'.encode()).hexdigest()[:32]
        r = server.put(f'/v1/actions/{ik}', key=svc, json={
            'post_id': post, 'action_type': 'comment', 'tier': 'tier_1', 'status': 'failed',
            'error_code': s, 'outcome': {'text': s}})
        assert r.status_code == 200, r.text
        act = server.get(f'/v1/actions/{ik}', key=svc).json()
        assert act['post_id'] == post and act['error_code'] == s
        assert act['outcome'] == {'text': s} and act['idempotency_key'] == ik
        listed = server.get(f'/v1/posts/{penc}/actions', key=svc).json()['items']
        assert [a['idempotency_key'] for a in listed] == [ik]

        # scouts and devices: user id, provider, device name, item fields
        r = server.post('/v1/scouts', json={'user_id': user, 'provider': s})
        assert r.status_code == 201, r.text
        scout = r.json()
        assert scout['user_id'] == user and scout['provider'] == s
        r = server.post('/v1/devices', json={'user_id': user, 'name': s})
        assert r.status_code == 201, r.text
        devs = server.get(f'/v1/users/{enc}/devices', key=svc).json()['items']
        assert [d['name'] for d in devs] == [s]
        r = server.post(f"/v1/scouts/{scout['id']}/items", key=svc, json={
            'source_msg_ref': s, 'verdict': 'relevant', 'reason': s, 'subject': s,
            'snippet': s, 'source_type': 'email'})
        assert r.status_code == 201, r.text
        props = server.get(f'/v1/users/{enc}/proposals', key=svc).json()['items']
        assert len(props) == 1
        p = props[0]
        assert p['source_msg_ref'] == s and p['raw_subject'] == s and p['raw_snippet'] == s
    # every table is still there and holds what was written
    assert sql.execute("SELECT count(*) FROM lessons WHERE repo = ANY(%s)",
                       (META,)).fetchone()[0] == len(META)


# ------------------------------------------------------------ secrets in logs

def scan_logs(paths):
    hits = []
    for p in paths:
        try:
            with open(p, errors='replace') as f:
                for n, line in enumerate(f, 1):
                    if SECRET_RE.search(line):
                        hits.append(f'{p}:{n}: {line[:200]}')
        except OSError:
            pass
    return hits


def test_no_secret_in_any_log_of_this_run(server, keys, all_keys, request):
    # exercise the paths most likely to leak: bad keys, revoked keys, device tokens
    dev = mk_device(server, 'log-user')
    for k in (keys['read'], all_keys['revoked'], dev['token'], 'stw_' + 'f' * 48):
        server.post('/v1/heal', key=k)
        server.get('/v1/status?token=' + k, key=k)
        server.get('/v1/lessons/' + k, key=k)

    async def ws_cases():
        ws = await ws_hello(server, dev['device_id'], 'dev_' + '0' * 64)
        await recv(ws)
        ws = await ws_hello(server, dev['device_id'], dev['token'])
        await recv(ws)
        await ws.send(json.dumps({'type': dev['token'], 'token': dev['token']}))
        await recv(ws)
        await ws.close()

    asyncio.run(ws_cases())
    # this module's server, and every steward log written during this pytest session
    since = COLLECTED_AT - 5
    paths = [p for p in glob.glob(os.path.join(os.path.dirname(server.log_path), 'steward-*.log'))
             if os.path.getmtime(p) >= since]
    assert server.log_path in paths
    hits = scan_logs(paths)
    assert not hits, 'secrets in logs:\n' + '\n'.join(hits[:20])
