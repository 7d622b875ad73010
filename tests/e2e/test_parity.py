"""Issue 19, sections 1 and 7: parity with the earlier systems (the instance registry,
plan answers, the message-cap window, lessons' source, the health and performance
reports) and JSON that reads well, against a real PostgreSQL and the real binary."""
import re
import time

import psycopg

from harness.pgcluster import wait_for
from harness.steward import Steward

RFC3339 = re.compile(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$')


def live_ids(server, key=None):
    r = server.get('/v1/instances', **({'key': key} if key else {}))
    assert r.status_code == 200, r.text
    return [i['id'] for i in r.json()['items']]


# ---------------------------------------------------------------------------------------
# the instance registry


def test_instances_registry(fresh_db_url, make_server):
    a = make_server(fresh_db_url, STEWARD_INSTANCE_HEARTBEAT_S=1)
    b = make_server(fresh_db_url, STEWARD_INSTANCE_HEARTBEAT_S=1)
    ia = a.get('/v1/status').json()['instance']
    ib = b.get('/v1/status').json()['instance']
    assert wait_for(lambda: set(live_ids(a)) == {ia, ib}, timeout=10)
    items = a.get('/v1/instances').json()['items']
    assert [i['id'] for i in items] == [ia, ib]  # oldest start first
    for it in items:
        assert set(it) == {'id', 'version', 'started_at', 'heartbeat_at', 'uptime_s', 'pool',
                           'sockets', 'rss_bytes'}
        assert RFC3339.match(it['started_at']) and RFC3339.match(it['heartbeat_at'])
        assert it['version'] == a.get('/v1/status').json()['version']
        assert set(it['pool']) == {'size', 'busy', 'waiting'} and it['pool']['size'] == 8
        assert it['sockets'] == 0
        assert isinstance(it['rss_bytes'], int) and it['rss_bytes'] > 1 << 20
        assert it['uptime_s'] >= 0
    # the heartbeat moves on
    first = {i['id']: i['heartbeat_at'] for i in items}
    assert wait_for(lambda: all(i['heartbeat_at'] != first[i['id']]
                         for i in a.get('/v1/instances').json()['items']), timeout=10)
    # bad input
    r = a.get('/v1/instances?limit=5')
    assert r.status_code == 422 and r.headers['content-type'].startswith('application/problem')
    assert a.get('/v1/instances', key=None).status_code == 401
    # a killed instance stops being live after three ticks; a clean stop removes its row
    b.kill()
    assert wait_for(lambda: live_ids(a) == [ia], timeout=15)
    with psycopg.connect(fresh_db_url, autocommit=True) as conn:
        assert conn.execute('SELECT count(*) FROM instances WHERE id = %s',
                            (ib,)).fetchone()[0] == 1
        assert a.stop() == 0
        assert conn.execute('SELECT count(*) FROM instances WHERE id = %s',
                            (ia,)).fetchone()[0] == 0


def test_instances_read_scope(server, keys):
    assert wait_for(lambda: len(live_ids(server)) == 1, timeout=10)
    assert live_ids(server, key=keys['read']) == [server.get('/v1/status').json()['instance']]
