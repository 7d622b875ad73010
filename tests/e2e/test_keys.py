"""API keys over REST (docs/api.md, "API keys"): list, create (secret shown once),
revoke, expiry, last use, the audit rows, and a revocation reaching another instance
within a second through the notification rather than the periodic refresh."""
import datetime
import re
import time

import pytest

from harness.steward import ADMIN_KEY
from conftest import finish, make_key

SECRET_RE = re.compile(r'^stw_[0-9a-f]{48}$')


def iso(dt):
    return dt.strftime('%Y-%m-%dT%H:%M:%S.%fZ')


def create(server, key=ADMIN_KEY, **body):
    return server.post('/v1/keys', key=key, json=body)


def whoami(server, key):
    """A cheap admin-or-read call with this key: its status."""
    return server.get('/v1/planner/config', key=key).status_code


def test_create_use_list_revoke(server, sql):
    r = create(server, name='rest-ci', scope='read')
    assert r.status_code == 201, r.text
    assert 'no-store' in r.headers['cache-control']
    body = r.json()
    assert SECRET_RE.match(body['secret'])
    assert body['name'] == 'rest-ci' and body['scope'] == 'read'
    assert body['revoked_at'] is None and body['expires_at'] is None
    assert body['last_used_at'] is None and body['created_at'].endswith('Z')
    secret = body['secret']
    assert whoami(server, secret) == 200
    assert server.get('/v1/audit', key=secret).status_code == 403  # read scope only
    # the secret is shown once: never in a list, nor its hash
    listed = server.get('/v1/keys')
    assert listed.status_code == 200
    text = listed.text
    key_hash = sql.execute("SELECT key_hash FROM api_keys WHERE name = 'rest-ci'").fetchone()[0]
    assert secret not in text and key_hash not in text and 'stw_' not in text
    mine = [k for k in listed.json()['items'] if k['name'] == 'rest-ci']
    assert len(mine) == 1
    assert set(mine[0]) == {'id', 'name', 'scope', 'created_at', 'last_used_at', 'revoked_at',
                            'expires_at'}
    # one active key per name
    r = create(server, name='rest-ci', scope='admin')
    assert r.status_code == 409
    assert r.headers['content-type'].startswith('application/problem+json')
    # revoke: at once on this instance
    assert server.delete('/v1/keys/rest-ci').status_code == 204
    assert whoami(server, secret) == 401
    assert server.delete('/v1/keys/rest-ci').status_code == 404
    revoked = [k for k in server.get('/v1/keys').json()['items'] if k['name'] == 'rest-ci']
    assert revoked[0]['revoked_at'] is not None
    # the name is free again
    r = create(server, name='rest-ci', scope='service')
    assert r.status_code == 201 and r.json()['secret'] != secret
    assert server.delete('/v1/keys/rest-ci').status_code == 204
    trail = server.get('/v1/audit', params={'target': 'key:rest-ci'}).json()['items']
    assert [(e['action'], e['actor']) for e in reversed(trail)] == [
        ('key.create', 'admin-env'), ('key.revoke', 'admin-env'),
        ('key.create', 'admin-env'), ('key.revoke', 'admin-env')]
    assert trail[-1]['detail'] == {'scope': 'read', 'expires_at': None}


def test_last_used_at_is_recorded(server):
    secret = create(server, name='rest-used', scope='read').json()['secret']
    deadline = time.time() + 15
    used = None
    while time.time() < deadline and not used:
        assert whoami(server, secret) == 200
        time.sleep(0.3)
        used = next(k for k in server.get('/v1/keys').json()['items']
                    if k['name'] == 'rest-used')['last_used_at']
    assert used is not None
    never = create(server, name='rest-unused', scope='read').json()
    time.sleep(0.1)
    assert next(k for k in server.get('/v1/keys').json()['items']
                if k['name'] == 'rest-unused')['last_used_at'] is None
    assert never['secret']


def test_expiry(server):
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=2)
    r = create(server, name='rest-expiring', scope='read', expires_at=iso(soon))
    assert r.status_code == 201, r.text
    secret = r.json()['secret']
    assert r.json()['expires_at'] is not None
    assert whoami(server, secret) == 200
    time.sleep(max(0, (soon - datetime.datetime.now(datetime.timezone.utc)).total_seconds())
               + 0.3)
    assert whoami(server, secret) == 401
    # an expired key's name can be taken again
    r = create(server, name='rest-expiring', scope='read')
    assert r.status_code == 201
    assert whoami(server, r.json()['secret']) == 200


@pytest.mark.parametrize('body,field', [
    ({'scope': 'read'}, 'name'),
    ({'name': 'has space', 'scope': 'read'}, 'name'),
    ({'name': 'x' * 65, 'scope': 'read'}, 'name'),
    ({'name': 'ok-name'}, 'scope'),
    ({'name': 'ok-name', 'scope': 'root'}, 'scope'),
    ({'name': 'ok-name', 'scope': 'read', 'expires_at': 'tomorrow'}, 'expires_at'),
    ({'name': 'ok-name', 'scope': 'read', 'expires_at': '2001-01-01T00:00:00Z'}, 'expires_at'),
    ({'name': 'ok-name', 'scope': 'read', 'secret': 'stw_mine'}, 'secret'),
])
def test_bad_create_is_422_and_changes_nothing(server, sql, body, field):
    before = sql.execute('SELECT count(*) FROM api_keys').fetchone()[0]
    r = server.post('/v1/keys', json=body)
    assert r.status_code == 422, r.text
    assert r.headers['content-type'].startswith('application/problem+json')
    assert field in [e['field'] for e in r.json()['errors']]
    assert sql.execute('SELECT count(*) FROM api_keys').fetchone()[0] == before


def test_other_bad_input(server, keys, sql):
    before = sql.execute('SELECT count(*), count(revoked_at) FROM api_keys').fetchone()
    assert server.post('/v1/keys', data='[]',
                       headers={'Content-Type': 'application/json'}).status_code in (400, 422)
    assert server.delete('/v1/keys/bad%20name').status_code == 422
    assert server.delete('/v1/keys/no-such-key').status_code == 404
    assert server.get('/v1/keys', params={'bogus': '1'}).status_code == 422
    assert server.get('/v1/keys', params={'cursor': 'zzz'}).status_code == 422
    for k in (keys['read'], keys['service']):
        assert server.get('/v1/keys', key=k).status_code == 403
        assert create(server, key=k, name='nope', scope='admin').status_code == 403
        assert server.delete('/v1/keys/read-key', key=k).status_code == 403
    assert sql.execute('SELECT count(*), count(revoked_at) FROM api_keys').fetchone() == before


def test_paging(server):
    for i in range(3):
        assert create(server, name=f'rest-page-{i}', scope='read').status_code == 201
    seen, cursor = [], None
    while True:
        page = server.get('/v1/keys', params={'limit': 2, **({'cursor': cursor} if cursor
                                                             else {})}).json()
        seen += [k['id'] for k in page['items']]
        cursor = page['next_cursor']
        if not cursor:
            break
    assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen))
    assert {f'rest-page-{i}' for i in range(3)} <= {
        k['name'] for k in server.get('/v1/keys', params={'limit': 500}).json()['items']}


def test_cli_stays_and_is_audited(server, db_url):
    secret = make_key(db_url, 'cli-made', 'read')
    assert whoami(server, secret) == 200
    r = server.cli('keys', 'revoke', '--name', 'cli-made')
    assert r.returncode == 0, r.stderr
    trail = server.get('/v1/audit', params={'target': 'key:cli-made'}).json()['items']
    assert [(e['action'], e['actor']) for e in reversed(trail)] == [
        ('key.create', 'cli'), ('key.revoke', 'cli')]


def wait_401(server, secret, limit_s):
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        if whoami(server, secret) == 401:
            return time.monotonic() - t0
        time.sleep(0.02)
    return None


def test_revocation_reaches_another_instance_within_a_second(fresh_db_url, make_server):
    # a refresh period far beyond the test: only the notification can tell instance B
    slow = {'STEWARD_AUTH_CACHE_REFRESH_MS': 600000}
    a = make_server(fresh_db_url, **slow)
    via_rest = create(a, name='shared-rest', scope='read').json()['secret']
    via_cli = make_key(fresh_db_url, 'shared-cli', 'read')
    b = make_server(fresh_db_url, **slow)  # loads both keys into its snapshot at start
    assert whoami(b, via_rest) == 200 and whoami(b, via_cli) == 200
    assert a.delete('/v1/keys/shared-rest').status_code == 204
    took = wait_401(b, via_rest, 5)
    assert took is not None and took < 1.0, took
    r = b.cli('keys', 'revoke', '--name', 'shared-cli')
    assert r.returncode == 0, r.stderr
    for s in (a, b):
        took = wait_401(s, via_cli, 5)
        assert took is not None and took < 1.0, took
    finish(b)
