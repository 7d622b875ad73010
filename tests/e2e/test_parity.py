"""Issue 19, sections 1 and 7: parity with the earlier systems (the instance registry,
plan answers, the message-cap window, lessons' source, the health and performance
reports) and JSON that reads well, against a real PostgreSQL and the real binary."""
import hashlib
import json
import re

import psycopg
import pytest

from harness.pgcluster import wait_for
from harness.steward import Steward

RFC3339 = re.compile(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$')


def live_ids(server, key=None):
    r = server.get('/v1/instances', **({'key': key} if key else {}))
    assert r.status_code == 200, r.text
    return [i['id'] for i in r.json()['items']]


# ---------------------------------------------------------------------------------------
# the instance registry


def test_instances_registry_and_one_performance_report_per_period(fresh_db_url, make_server):
    """Two instances: both in the registry; the performance report is written once per
    period by one of them and carries both instances' figures and the slow jobs."""
    settings = {'STEWARD_INSTANCE_HEARTBEAT_S': 1, 'STEWARD_PERF_INTERVAL_S': 2,
                'STEWARD_PERF_OFFSET_S': 3}
    a = make_server(fresh_db_url, **settings)
    b = make_server(fresh_db_url, **settings)
    ia = a.get('/v1/status').json()['instance']
    ib = b.get('/v1/status').json()['instance']
    ids = {ia, ib}
    assert wait_for(lambda: set(live_ids(a)) == ids, timeout=10)
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

    with psycopg.connect(fresh_db_url, autocommit=True) as sql:
        def reports():
            return [r[0] for r in sql.execute(
                "SELECT event_data FROM system_events WHERE event_type = "
                "'performance_optimization_report' ORDER BY id").fetchall()]

        assert wait_for(lambda: any({i['id'] for i in r['instances']} == ids
                                    for r in reports()), timeout=10), reports()
        # a job run of 400 s (the earlier job's "slow jobs") and a quick one
        sql.execute("INSERT INTO job_heartbeats (job_name, instance, last_run_at, "
                    "execution_time_ms, status) VALUES ('nightly_export:h1', 'h1', now(), "
                    "400000, 'ok'), ('quick_job:h1', 'h1', now(), 20, 'ok')")
        n = len(reports())
        assert wait_for(lambda: len(reports()) >= n + 2, timeout=10)
        reps = reports()
        # one report per 2 s period for both instances together, at offset 1 s (3 mod 2):
        # odd seconds
        periods = [int((ts_seconds(r['timestamp']) - 1) // 2) for r in reps]
        assert len(periods) == len(set(periods)), [r['timestamp'] for r in reps]
        for r in reps:
            assert (ts_seconds(r['timestamp']) - 1) % 2 < 1, r['timestamp']
            assert r['instance'] in ids
            assert r['schedule'] == {'sweep': {'interval_s': 900, 'offset_s': 300},
                                     'report': {'interval_s': 2, 'offset_s': 1}}
        with_slow = [r for r in reps[n:] if r['slow_jobs']]
        assert with_slow, reps[n:]
        full = with_slow[0]
        assert [(j['job'], j['instance'], j['execution_time_ms'])
                for j in full['slow_jobs']] == [('nightly_export', 'h1', 400000)]
        assert any('more than 5 minutes' in t for t in full['recommendations'])
        assert {i['id'] for i in full['instances']} == ids
        for inst in full['instances']:
            m = inst['memory']
            assert m['rss_bytes'] > 1 << 20 and m['limit_bytes'] > m['rss_bytes']
            assert m['limit_source'] in ('cgroup', 'physical')
            assert m['pressure_pct'] == pytest.approx(m['rss_bytes'] * 100 / m['limit_bytes'],
                                                      abs=0.001)
            assert m['level'] == 'ok'
            assert set(inst['pool']) >= {'size', 'busy', 'waiting'}
            assert inst['sockets'] == 0 and isinstance(inst['requests_total'], int)
        # a report covers the last period only: a later one no longer lists the slow run
        assert wait_for(lambda: reports()[-1]['slow_jobs'] == [], timeout=8)
        # the instance that did not lead records a skipped heartbeat
        assert sql.execute("SELECT count(*) FROM job_heartbeats WHERE job_name LIKE "
                           "'perf_report:%%' AND status = 'skipped'").fetchone()[0] >= 1

        # a killed instance stops being live after three ticks; a clean stop removes its row
        b.kill()
        assert wait_for(lambda: live_ids(a) == [ia], timeout=15)
        assert wait_for(lambda: [i['id'] for i in reports()[-1]['instances']] == [ia], 8)
        assert sql.execute('SELECT count(*) FROM instances WHERE id = %s',
                           (ib,)).fetchone()[0] == 1
        assert a.stop() == 0
        assert sql.execute('SELECT count(*) FROM instances WHERE id = %s',
                           (ia,)).fetchone()[0] == 0

def test_instances_read_scope(server, keys):
    assert wait_for(lambda: len(live_ids(server)) == 1, timeout=10)
    assert live_ids(server, key=keys['read']) == [server.get('/v1/status').json()['instance']]


# ---------------------------------------------------------------------------------------
# helpers shared by the parity tests

TIERS = {'comment': 'tier_1', 'edit': 'tier_2', 'thread': 'tier_3'}


def key_of(post, action):
    raw = f'{post}:{action}:{TIERS[action]}'.encode()
    return 'sheal_' + hashlib.sha256(raw).hexdigest()[:32]


def put_outcome(server, post, action, status, outcome=None, raw=None):
    body = {'post_id': post, 'action_type': action, 'tier': TIERS[action], 'status': status}
    if outcome is not None:
        body['outcome'] = outcome
    kw = {'data': raw, 'headers': {'Content-Type': 'application/json'}} if raw else \
        {'json': body}
    r = server.put(f'/v1/actions/{key_of(post, action)}', **kw)
    assert r.status_code == 200, r.text
    return r


# ---------------------------------------------------------------------------------------
# the message-cap window starts at the first consume


def test_first_cap_window_starts_at_first_consume(server, sql):
    user = 'cap-window-user'
    r = server.post(f'/v1/bonds/{user}/detections',
                    json={'detection': {'phase': 'bonding', 'risk_level': 'low'}})
    assert r.status_code in (200, 201), r.text
    assert server.put(f'/v1/bonds/{user}/rate-limit', json={'daily_msg_cap': 2}).status_code == 200
    # the entry was created 23 h 59 min before its first message
    sql.execute("UPDATE bonds SET daily_msg_reset_at = now() - interval '23 hours 59 minutes' "
                "WHERE user_id = %s", (user,))
    check = server.get(f'/v1/bonds/{user}/rate-limit')
    assert check.status_code == 200, check.text
    # no window runs yet: a whole one would start now
    assert check.json()['remaining'] == 2
    assert check.headers['RateLimit'] == '"daily";r=2;t=86401'
    first = server.post(f'/v1/bonds/{user}/messages')
    assert first.status_code == 200, first.text
    started = sql.execute("SELECT now() - daily_msg_reset_at < interval '10 seconds', "
                          "daily_msg_count FROM bonds WHERE user_id = %s", (user,)).fetchone()
    assert started == (True, 1)
    t = int(first.headers['RateLimit'].rsplit('t=', 1)[1])
    assert 86390 <= t <= 86401, first.headers['RateLimit']
    assert server.post(f'/v1/bonds/{user}/messages').status_code == 200
    third = server.post(f'/v1/bonds/{user}/messages')
    assert third.status_code == 429
    assert 86390 <= int(third.headers['Retry-After']) <= 86401
    # a window that has run keeps its start (the second message did not move it)
    again = sql.execute("SELECT daily_msg_count FROM bonds WHERE user_id = %s",
                        (user,)).fetchone()[0]
    assert again == 2


# ---------------------------------------------------------------------------------------
# the health report: the earlier sweep's five figures


def test_sweep_reports_missing_outcomes_pool_queue_and_database(server, sql, keys):
    post = 'parity-missing-outcome'
    put_outcome(server, post, 'comment', 'success')             # no outcome
    put_outcome(server, post, 'edit', 'success', {'url': 'u'})  # has one
    r = server.post('/v1/heal')
    assert r.status_code == 200, r.text
    h = r.json()['event_data']['system_health']
    assert h['success_without_outcome'] >= 1
    assert h['pool_queue'] == {'waiting': 0, 'level': 'ok'}
    assert h['database_issues'] == [] and h['circuit_open'] is False
    kinds = {a['kind']: a['count'] for a in r.json()['event_data']['actions']}
    assert kinds['missing_outcomes_marked'] >= 1
    # listable per post
    r = server.get(f'/v1/posts/{post}/actions?needs_recovery=true', key=keys['read'])
    assert r.status_code == 200, r.text
    items = r.json()['items']
    assert [i['idempotency_key'] for i in items] == [key_of(post, 'comment')]
    assert items[0]['needs_recovery'] is True and items[0]['outcome'] is None
    full = server.get(f'/v1/posts/{post}/actions').json()['items']
    assert {i['action_type']: i['needs_recovery'] for i in full} == {'comment': True,
                                                                    'edit': False}
    # a second sweep marks nothing new but still counts it
    again = server.post('/v1/heal').json()
    assert {a['kind']: a['count'] for a in again['event_data']['actions']}[
        'missing_outcomes_marked'] == 0
    assert again['event_data']['system_health']['success_without_outcome'] == \
        h['success_without_outcome']
    # the outcome arrives: the mark goes
    put_outcome(server, post, 'comment', 'success', {'url': 'v'})
    assert server.get(f'/v1/posts/{post}/actions?needs_recovery=true').json()['items'] == []
    # bad input changes nothing
    r = server.get(f'/v1/posts/{post}/actions?needs_recovery=yes')
    assert r.status_code == 422 and r.json()['errors'][0]['field'] == 'needs_recovery'


def test_circuit_open_while_the_database_is_away(pg, fresh_db_url, make_server):
    s = make_server(fresh_db_url, STEWARD_DB_ACQUIRE_TIMEOUT_MS='500')
    dbname = fresh_db_url.split(':///', 1)[1].split('?')[0]
    st = s.get('/v1/status').json()
    assert st['database']['reachable'] is True and st['database']['circuit_open'] is False
    with psycopg.connect(pg.url('postgres'), autocommit=True) as adm:
        # the database refuses new connections and steward's are ended: unreachable
        adm.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
        try:
            adm.execute('SELECT pg_terminate_backend(pid) FROM pg_stat_activity '
                        'WHERE datname = %s', (dbname,))
            assert wait_for(lambda: s.get('/v1/status').json()['database']['circuit_open'], 10)
            assert s.get('/v1/status').json()['database']['reachable'] is False
            r = s.get('/v1/lessons')
            assert r.status_code == 503 and r.headers.get('Retry-After')
        finally:
            adm.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
    assert wait_for(lambda: not s.get('/v1/status').json()['database']['circuit_open'], 10)
    assert s.get('/v1/lessons').status_code == 200


# ---------------------------------------------------------------------------------------
# the performance report: once per period for the deployment, every instance's figures


def ts_seconds(text):
    from datetime import datetime
    return datetime.fromisoformat(text.replace('Z', '+00:00')).timestamp()


# ---------------------------------------------------------------------------------------
# JSON that reads well


def test_doubles_print_shortest_and_client_key_order_is_kept(server, sql):
    # 1 - 20 * (1/800) is the double nearest 0.975 (%.17g would print 0.97499999999999998)
    pts = [{'timestamp': f'2026-11-22T10:{m:02d}:00Z', 'impressions': i, 'engagements': e}
           for m, i, e in ((0, 0, 0), (20, 400, 0), (40, 800, 1))]
    r = server.post('/v1/posts/parity-json/plan',
                    json={'now': '2026-11-22T10:45:00Z', 'metrics': pts})
    assert r.status_code == 200
    assert '"stagnation_score":0.975,' in r.text, r.text
    assert '9999' not in r.text
    # a stored report's reals read back short as well
    rep = server.post('/v1/heal').text
    assert not re.search(r'\d\.\d*(0000000|9999999)\d', rep), rep
    # outcome keys come back in the order sent, compact; the jsonb column still serves
    # queries
    raw = ('{"post_id":"parity-json","action_type":"comment","tier":"tier_1",'
           '"status":"success","outcome":{"zeta": 1, "alpha": {"y": 3.132, "b": [2, 1]},'
           ' "mid": null}}')
    put = put_outcome(server, 'parity-json', 'comment', 'success', raw=raw)
    want = '"outcome":{"zeta":1,"alpha":{"y":3.132,"b":[2,1]},"mid":null}'
    assert want in put.text, put.text
    got = server.get(f"/v1/actions/{key_of('parity-json', 'comment')}")
    assert want in got.text, got.text
    listed = server.get('/v1/posts/parity-json/actions')
    assert want in listed.text
    assert sql.execute("SELECT outcome->'alpha'->>'y' FROM actions WHERE post_id = "
                       "'parity-json'").fetchone()[0] == '3.132'
    # the lessons journal's detail too
    detail = '{"zeta":{"k2":1,"k1":0.1},"alpha":[true]}'
    r = server.post('/v1/lessons', data='{"lesson_type":"gate_failure","detail":' + detail + '}',
                    headers={'Content-Type': 'application/json'})
    assert r.status_code == 201, r.text
    got = server.get(f"/v1/lessons/{r.json()['id']}")
    assert '"detail":' + detail in got.text, got.text
    # bad input changes nothing
    bad = server.put(f"/v1/actions/{key_of('parity-json', 'comment')}",
                     json={'post_id': 'parity-json', 'action_type': 'comment',
                           'tier': 'tier_1', 'status': 'success', 'outcome': [1]})
    assert bad.status_code == 422
    assert want in server.get(f"/v1/actions/{key_of('parity-json', 'comment')}").text
    json.loads(got.text)
