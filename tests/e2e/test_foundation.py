"""Issue 2: the service foundation, driven over the wire against the real binary."""
import asyncio
import concurrent.futures
import http.client
import json
import os
import socket
import subprocess
import time

import psycopg
import pytest
import requests
import websockets

from conftest import finish, make_key
from harness.pgcluster import PgCluster, wait_for
from harness.steward import ADMIN_KEY, Steward, binary, run_cli


def problem(r, status):
    assert r.status_code == status, r.text
    assert r.headers['content-type'].startswith('application/problem+json')
    body = r.json()
    assert body['status'] == status
    assert body['type'].startswith('/problems/')
    assert body['title'] and body['detail']
    return body


# ---------------------------------------------------------------- operations

def test_livez_readyz_and_request_ids(server):
    r = server.get('/livez', key=None)
    assert r.status_code == 200 and r.json() == {'status': 'ok'}
    assert r.headers['X-Request-Id']
    r = server.get('/readyz', key=None)
    assert r.status_code == 200
    assert r.json()['status'] == 'ready' and r.json()['schema_version'] >= 1
    r = server.get('/livez', key=None, headers={'X-Request-Id': 'abc-123.x_y'})
    assert r.headers['X-Request-Id'] == 'abc-123.x_y'
    r = server.get('/livez', key=None, headers={'X-Request-Id': 'bad id with spaces'})
    assert r.headers['X-Request-Id'] != 'bad id with spaces' and r.headers['X-Request-Id']
    ids = {server.get('/livez', key=None).headers['X-Request-Id'] for _ in range(5)}
    assert len(ids) == 5


def test_access_log_is_json_and_never_holds_secrets(server):
    server.get('/readyz', key=None, headers={'X-Request-Id': 'log-probe-1'})
    # the line is written when the request completes, just after the response went out
    deadline = time.monotonic() + 2
    while True:
        recs = [r for r in server.log_records() if r.get('request_id') == 'log-probe-1']
        if recs or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert recs, 'no access line'
    rec = recs[-1]
    for field in ('ts', 'level', 'msg', 'method', 'route', 'status', 'duration_ms'):
        assert field in rec
    assert rec['route'] == '/readyz' and rec['status'] == 200 and rec['method'] == 'GET'
    server.get('/v1/lessons', key='stw_not_a_real_key_123456')
    text = '\n'.join(server.log_lines())
    assert ADMIN_KEY not in text
    assert 'stw_not_a_real_key_123456' not in text


def test_unknown_route_and_wrong_method(server):
    body = problem(server.get('/v1/nope'), 404)
    assert body['type'] == '/problems/not-found'
    r = server.delete('/livez')
    body = problem(r, 405)
    assert r.headers['Allow'] == 'GET'
    r = server.request('PUT', '/v1/lessons')
    problem(r, 405)
    assert set(r.headers['Allow'].split(', ')) == {'GET', 'POST'}


def _raw_get(server, path):
    """GET without client-side URL normalisation (requests re-quotes bad escapes)."""
    conn = http.client.HTTPConnection('127.0.0.1', server.http_port, timeout=10)
    conn.putrequest('GET', path, skip_accept_encoding=True)
    conn.putheader('Authorization', f'Bearer {ADMIN_KEY}')
    conn.endheaders()
    r = conn.getresponse()
    body = json.loads(r.read())
    conn.close()
    return r.status, body


def test_bad_path_parameter_encoding(server):
    for path in ('/v1/lessons/%zz', '/v1/lessons/a%00b', '/v1/lessons/a%2', '/v1/lessons/' + 'x' * 600):
        status, body = _raw_get(server, path)
        assert status == 400 and body['type'] == '/problems/bad-request', (path, body)


def test_malformed_json_names_line_and_column(server, keys):
    r = server.post('/v1/lessons', key=keys['service'], data='{"lesson_type":\n "x",, }',
                    headers={'Content-Type': 'application/json'})
    body = problem(r, 400)
    assert 'line 2' in body['detail'] and 'column' in body['detail']
    for bad in (b'{"a": "\xff"}', b'{"a": "\\u0000"}', b'[' * 5000 + b']' * 5000,
                b'{"a":1,"a":2}', b'{"n": 1' + b'0' * 400 + b'}'):
        r = server.post('/v1/lessons', key=keys['service'], data=bad,
                        headers={'Content-Type': 'application/json'})
        problem(r, 400)


def test_schema_errors_list_every_field(server, keys):
    r = server.post('/v1/lessons', key=keys['service'],
                    json={'lesson_type': 'Not A Slug', 'colour': 'red', 'detail': [1]})
    body = problem(r, 422)
    fields = {e['field'] for e in body['errors']}
    assert {'lesson_type', 'colour', 'detail'} <= fields
    r = server.post('/v1/lessons', key=keys['service'], json=[1, 2])
    problem(r, 422)


def test_content_type_and_body_limit(server, keys):
    r = server.post('/v1/lessons', key=keys['service'], data='{"lesson_type":"x"}',
                    headers={'Content-Type': 'text/plain'})
    problem(r, 415)
    r = server.post('/v1/lessons', key=keys['service'], data='{"lesson_type":"x"}')
    problem(r, 415)
    big = '{"lesson_type":"x","root_cause":"' + 'a' * (1024 * 1024 + 10) + '"}'
    r = server.post('/v1/lessons', key=keys['service'], data=big,
                    headers={'Content-Type': 'application/json'})
    problem(r, 413)

    def chunks():
        yield b'{"lesson_type":"x","root_cause":"'
        for _ in range(40):
            yield b'a' * 32768
        yield b'"}'
    r = server.post('/v1/lessons', key=keys['service'], data=chunks(),
                    headers={'Content-Type': 'application/json'})
    problem(r, 413)
    # the server still answers afterwards
    assert server.get('/livez', key=None).status_code == 200


def test_auth_statuses_per_scope(server, keys):
    problem(server.get('/v1/lessons', key=None), 401)
    problem(server.get('/v1/lessons', key='stw_unknown_key_0000000000'), 401)
    r = server.get('/v1/lessons', key=None, headers={'Authorization': 'Basic Zm9vOmJhcg=='})
    problem(r, 401)
    assert server.get('/v1/lessons', key=keys['read']).status_code == 200
    body = problem(server.post('/v1/lessons', key=keys['read'], json={'lesson_type': 'x'}), 403)
    assert 'service' in body['detail']
    assert server.post('/v1/lessons', key=keys['service'],
                       json={'lesson_type': 'gate_failure', 'source': 'manual'}).status_code == 201
    problem(server.patch('/v1/lessons/1', key=keys['service'], json={'status': 'closed'}), 403)
    assert server.patch('/v1/lessons/1', key=keys['admin'],
                        json={'status': 'closed'}).status_code == 200


def test_keys_created_and_revoked_from_the_cli(server, db_url):
    secret = make_key(db_url, 'cli-made', 'read')
    assert secret.startswith('stw_') and len(secret) >= 36
    assert server.get('/v1/lessons', key=secret).status_code == 200
    dup = run_cli(db_url, 'keys', 'create', '--name', 'cli-made', '--scope', 'read')
    assert dup.returncode == 1 and 'active key has that name' in dup.stderr
    bad = run_cli(db_url, 'keys', 'create', '--name', 'x', '--scope', 'root')
    assert bad.returncode == 2
    r = run_cli(db_url, 'keys', 'revoke', '--name', 'cli-made')
    assert r.returncode == 0, r.stderr
    assert wait_for(lambda: server.get('/v1/lessons', key=secret).status_code == 401, 5)
    r = run_cli(db_url, 'keys', 'revoke', '--name', 'cli-made')
    assert r.returncode == 1
    with psycopg.connect(db_url) as c:
        row = c.execute("SELECT key_hash, revoked_at IS NOT NULL FROM api_keys "
                        "WHERE name = 'cli-made'").fetchone()
    assert row[1] and secret not in row[0] and len(row[0]) == 64


def test_pool_of_two_under_200_concurrent_requests(fresh_db_url, make_server):
    s = make_server(fresh_db_url, STEWARD_DB_POOL_SIZE=2, STEWARD_DB_ACQUIRE_TIMEOUT_MS=50,
                    STEWARD_ACCESS_LOG='false')
    key = make_key(fresh_db_url, 'reader', 'read')

    def one(i):
        try:
            r = s.get('/v1/lessons?limit=5', key=key, timeout=20)
            return r.status_code, r.headers.get('Retry-After'), r.text
        except requests.RequestException as e:
            return 'error', None, str(e)

    with concurrent.futures.ThreadPoolExecutor(max_workers=64) as ex:
        results = list(ex.map(one, range(200)))
    statuses = [r[0] for r in results]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) > 0
    for status, retry, text in results:
        if status == 503:
            assert retry is not None and json.loads(text)['status'] == 503


# ---------------------------------------------------------------- database outage

def test_readyz_follows_the_database_and_heals_without_restart(make_server):
    cluster = PgCluster()
    try:
        cluster.start()
        url = cluster.createdb('outage')
        s = make_server(url, STEWARD_DB_ACQUIRE_TIMEOUT_MS=500)
        assert s.get('/readyz', key=None).status_code == 200
        cluster.stop()
        r = s.get('/readyz', key=None, timeout=10)
        assert r.status_code == 503 and r.headers.get('Retry-After')
        r = s.get('/v1/lessons', timeout=10)
        assert r.status_code == 503 and r.headers.get('Retry-After')
        assert s.get('/livez', key=None).status_code == 200
        cluster.start()
        assert wait_for(lambda: s.get('/readyz', key=None).status_code == 200, 5)
        assert s.get('/v1/lessons').status_code == 200
        assert s.proc.poll() is None
    finally:
        cluster.destroy()


# ---------------------------------------------------------------- migrations

def test_two_instances_started_together_apply_migrations_once(fresh_db_url):
    a = Steward(fresh_db_url, wait=False)
    b = Steward(fresh_db_url, wait=False)
    try:
        a.wait_serving()
        b.wait_serving()
        applied = [r for s in (a, b) for r in s.log_records() if r.get('msg') == 'migration applied']
        with psycopg.connect(fresh_db_url) as c:
            rows = c.execute('SELECT version, count(*) FROM schema_migrations GROUP BY version').fetchall()
        assert rows and len(applied) == len(rows)
        assert all(n == 1 for _, n in rows)
    finally:
        finish(a)
        finish(b)


def test_edited_or_newer_schema_stops_start_up(fresh_db_url):
    assert run_cli(fresh_db_url, 'migrate').returncode == 0
    with psycopg.connect(fresh_db_url, autocommit=True) as c:
        c.execute("UPDATE schema_migrations SET checksum = repeat('0', 64) WHERE version = 1")
    r = run_cli(fresh_db_url, 'migrate')
    assert r.returncode == 1 and 'edited after it was applied' in r.stderr
    s = Steward(fresh_db_url, wait=False)
    assert s.proc.wait(20) == 1
    assert any('edited after it was applied' in line for line in s.log_lines())
    with psycopg.connect(fresh_db_url, autocommit=True) as c:
        c.execute('DELETE FROM schema_migrations WHERE version = 1')
        c.execute("INSERT INTO schema_migrations (version, name, checksum) "
                  "VALUES (9999, '9999_future.sql', 'x')")
    r = run_cli(fresh_db_url, 'migrate')
    assert r.returncode == 1 and 'newer than this binary' in r.stderr


# ---------------------------------------------------------------- commands and config

def test_invalid_configuration_names_the_variable(fresh_db_url):
    for var, value in (('STEWARD_HTTP_PORT', 'eighty'), ('STEWARD_DB_POOL_SIZE', '0'),
                       ('STEWARD_LESSONS_ENABLED', 'perhaps'), ('STEWARD_LOG_LEVEL', 'loud')):
        r = run_cli(fresh_db_url, 'serve', **{var: value})
        assert r.returncode == 2
        assert var in r.stderr


def test_version_and_healthcheck(server, db_url):
    r = subprocess.run([binary(), 'version'], text=True, stdout=subprocess.PIPE)
    assert r.returncode == 0 and r.stdout.startswith('steward ')
    ok = run_cli(db_url, 'healthcheck', STEWARD_HTTP_PORT=server.http_port)
    assert ok.returncode == 0
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        free_port = sock.getsockname()[1]
    bad = run_cli(db_url, 'healthcheck', STEWARD_HTTP_PORT=free_port)
    assert bad.returncode == 1


# ---------------------------------------------------------------- WebSocket layer

async def _recv_close(ws, timeout=5):
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except websockets.ConnectionClosed as e:
        return e.code
    except asyncio.TimeoutError:
        return None


def test_ws_hello_timeout(fresh_db_url, make_server):
    s = make_server(fresh_db_url, STEWARD_WS_HELLO_TIMEOUT_S=1)

    async def go():
        async with websockets.connect(s.ws_url) as ws:
            t0 = time.monotonic()
            code = await _recv_close(ws, 5)
            return code, time.monotonic() - t0
    code, elapsed = asyncio.run(go())
    assert code == 4408
    assert 0.5 < elapsed < 4


def test_ws_frames_before_hello_and_bad_frames(server):
    async def go(payload):
        async with websockets.connect(server.ws_url) as ws:
            await ws.send(payload)
            first = json.loads(await asyncio.wait_for(ws.recv(), 5))
            return first, await _recv_close(ws)
    frame, code = asyncio.run(go('{"type":"scout_proposal_ack","proposal_id":"1"}'))
    assert frame == {'type': 'error', 'code': 'unauthorized'} and code == 4401
    frame, code = asyncio.run(go('{not json'))
    assert frame == {'type': 'error', 'code': 'bad_frame'} and code == 4401


def test_ws_oversize_frame_closes_1009(server):
    async def go():
        async with websockets.connect(server.ws_url, max_size=None) as ws:
            await ws.send('{"type":"device_hello","pad":"' + 'x' * (70 * 1024) + '"}')
            return await _recv_close(ws)
    assert asyncio.run(go()) == 1009


def test_ws_wrong_path_is_refused(server):
    async def go():
        async with websockets.connect(f'ws://127.0.0.1:{server.ws_port}/elsewhere'):
            pass
    with pytest.raises(Exception):
        asyncio.run(go())


# ---------------------------------------------------------------- shutdown

def test_sigterm_with_open_connections_exits_zero(fresh_db_url):
    s = Steward(fresh_db_url)

    async def go():
        async with websockets.connect(s.ws_url) as ws:
            keepalive = requests.Session()
            assert keepalive.get(s.url + '/livez').status_code == 200
            t0 = time.monotonic()
            s.signal()
            code = await _recv_close(ws, 10)
            return code, time.monotonic() - t0
    code, elapsed = asyncio.run(go())
    assert code == 1012
    assert s.proc.wait(10) == 0
    assert elapsed < 8
    assert any(r.get('msg') == 'stopped' for r in s.log_records())
    finish(s)


def test_every_migration_file_is_compiled_in():
    from harness.steward import ROOT
    files = sorted(f for f in os.listdir(os.path.join(ROOT, 'migrations')) if f.endswith('.sql'))
    numbers = [int(f.split('_', 1)[0]) for f in files]
    assert numbers == list(range(1, len(files) + 1)), files
    out = subprocess.run([binary(), 'version'], text=True, stdout=subprocess.PIPE).stdout
    assert f'(schema {len(files)})' in out
