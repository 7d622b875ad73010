"""Self-healing sweeps, performance reports, status and /metrics (SPEC 6, issue 7),
against a real PostgreSQL and the real binary."""
import asyncio
import concurrent.futures
import re
import subprocess
import time

import psycopg
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from harness.pgcluster import PgCluster, wait_for
from harness.steward import binary

SYSTEM_HEALTH_KEYS = {'stuck_actions', 'requeued_deliveries', 'failed_deliveries',
                      'expired_proposals', 'archived_actions', 'db_latency_ms', 'pool_waiting',
                      'ws_connections', 'degraded'}


# ---------------------------------------------------------------------------------------
# helpers


def metrics(server):
    """Parses /metrics with the Prometheus reference parser; returns {family: family}."""
    r = server.get('/metrics', key=None)
    assert r.status_code == 200
    assert r.headers['content-type'].startswith('text/plain; version=0.0.4')
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def sample(fams, family, name=None, **labels):
    """The value of one sample (0 when absent); counters default to <family>_total."""
    if name is None:
        name = family + '_total' if fams[family].type == 'counter' else family
    for s in fams[family].samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return 0


def registered_routes():
    out = subprocess.run([binary(), 'routes'], check=True, text=True,
                         stdout=subprocess.PIPE).stdout
    return [tuple(line.split(' ', 1)) for line in out.splitlines() if line]


def heal(server, key=None, **kw):
    return server.post('/v1/heal', **({'key': key} if key else {}), **kw)


def instance_of(server):
    return server.get('/v1/status').json()['instance']


def heartbeat(sql, job, instance):
    return sql.execute('SELECT instance, status, execution_time_ms, detail, last_run_at '
                       'FROM job_heartbeats WHERE job_name = %s',
                       (f'{job}:{instance}',)).fetchone()


def sweep_rows(sql):
    return sql.execute("SELECT id, event_data FROM system_events "
                       "WHERE event_type = 'self_healing_report' ORDER BY id").fetchall()


# ---------------------------------------------------------------------------------------
# POST /v1/heal and the report


def test_heal_report_matches_spec_and_is_stored(server, sql):
    before = metrics(server)
    r = heal(server)
    assert r.status_code == 200, r.text
    rep = r.json()
    assert set(rep) == {'id', 'event_type', 'created_at', 'event_data'}
    assert rep['event_type'] == 'self_healing_report'
    ev = rep['event_data']
    assert {'timestamp', 'actions', 'system_health'} <= set(ev)
    assert set(ev['system_health']) == SYSTEM_HEALTH_KEYS
    assert ev['system_health']['degraded'] is False
    assert ev['system_health']['pool_waiting'] == 0
    assert ev['system_health']['ws_connections'] == 0
    assert 0 <= ev['system_health']['db_latency_ms'] < 250
    assert ev['errors'] == []
    for a in ev['actions']:
        assert set(a) == {'kind', 'count'}
        assert isinstance(a['count'], int)
    assert ev['timestamp'].endswith('Z') and rep['created_at'].endswith('Z')
    # the row is what the route answered, field for field
    row = sql.execute('SELECT event_type, event_data FROM system_events WHERE id = %s',
                      (rep['id'],)).fetchone()
    assert row[0] == 'self_healing_report'
    assert row[1] == ev
    # heartbeat of this instance, lease released
    inst = ev['instance']
    hb = heartbeat(sql, 'heal_sweep', inst)
    assert hb[0] == inst and hb[1] == 'ok' and hb[2] >= 0
    assert hb[3]['report_id'] == rep['id'] and hb[3]['errors'] == []
    lease = sql.execute("SELECT holder, claimed_until < now(), last_finished_at IS NOT NULL "
                        "FROM healer_leases WHERE job_name = 'heal_sweep'").fetchone()
    assert lease == (inst, True, True)
    after = metrics(server)
    assert sample(after, 'heal_runs') == sample(before, 'heal_runs') + 1


def test_heal_scopes_and_bad_input(server, keys, sql):
    n = len(sweep_rows(sql))
    r = heal(server, key=keys['read'])
    assert r.status_code == 403
    assert r.headers['content-type'].startswith('application/problem+json')
    assert heal(server, key=keys['service']).status_code == 403
    r = server.post('/v1/heal', key=None)
    assert r.status_code == 401
    r = heal(server, json={'force': True, 'dry_run': 1})
    assert r.status_code == 422
    assert sorted(e['field'] for e in r.json()['errors']) == ['dry_run', 'force']
    r = heal(server, json=[1])
    assert r.status_code == 422
    r = heal(server, data='{"x":', headers={'Content-Type': 'application/json'})
    assert r.status_code == 400
    assert 'line 1' in r.json()['detail']
    r = server.post('/v1/heal?now=1')
    assert r.status_code == 422 and r.json()['errors'][0]['field'] == 'now'
    # nothing was swept by the refused calls
    assert len(sweep_rows(sql)) == n
    # an empty object body is fine
    assert heal(server, json={}).status_code == 200
    assert len(sweep_rows(sql)) == n + 1


# ---------------------------------------------------------------------------------------
# GET /v1/reports


def test_reports_list_filters_and_pages(server, keys, sql):
    for _ in range(3):
        assert heal(server).status_code == 200
    sql.execute("INSERT INTO system_events (event_type, event_data) VALUES "
                "('performance_optimization_report', '{\"routes\": []}'), "
                "('some_other_event', '{\"secret\": 1}')")
    want = [r[0] for r in sql.execute(
        "SELECT id FROM system_events WHERE event_type IN "
        "('self_healing_report', 'performance_optimization_report') ORDER BY id DESC")]
    got, cursor = [], None
    while True:
        q = '/v1/reports?limit=2' + (f'&cursor={cursor}' if cursor else '')
        r = server.get(q, key=keys['read'])
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body['items']) <= 2
        got += [i['id'] for i in body['items']]
        cursor = body['next_cursor']
        if not cursor:
            break
    assert got == want  # newest first, every report once, other events never listed
    r = server.get('/v1/reports?event_type=performance_optimization_report', key=keys['read'])
    items = r.json()['items']
    assert items and all(i['event_type'] == 'performance_optimization_report' for i in items)
    r = server.get('/v1/reports?event_type=self_healing_report&limit=1', key=keys['read'])
    body = r.json()
    assert len(body['items']) == 1 and body['next_cursor']
    top = body['items'][0]
    assert top['id'] == sweep_rows(sql)[-1][0]
    assert set(top['event_data']['system_health']) == SYSTEM_HEALTH_KEYS


def test_reports_bad_input(server, keys):
    cases = {
        '/v1/reports?event_type=some_other_event': ['event_type'],
        '/v1/reports?limit=0': ['limit'],
        '/v1/reports?limit=501': ['limit'],
        '/v1/reports?cursor=not-a-cursor': ['cursor'],
        '/v1/reports?colour=red&limit=x': ['colour', 'limit'],
    }
    for path, fields in cases.items():
        r = server.get(path, key=keys['read'])
        assert r.status_code == 422, path
        assert r.headers['content-type'].startswith('application/problem+json')
        assert sorted(e['field'] for e in r.json()['errors']) == sorted(fields), path
    assert server.get('/v1/reports', key=None).status_code == 401


# ---------------------------------------------------------------------------------------
# GET /v1/status


def test_status_shape(server, keys):
    assert heal(server).status_code == 200
    r = server.get('/v1/status', key=keys['read'])
    assert r.status_code == 200, r.text
    st = r.json()
    assert {'version', 'uptime_s', 'pool', 'ws', 'delivery', 'lessons',
            'last_sweep'} <= set(st)
    assert st['version'] == server.cli('version').stdout.split()[1]
    assert isinstance(st['uptime_s'], int) and st['uptime_s'] >= 0
    assert set(st['pool']) == {'size', 'open', 'busy', 'idle', 'waiting', 'acquired_total',
                               'timeouts_total'}
    assert st['pool']['size'] == 8 and st['pool']['busy'] >= 0
    assert set(st['ws']) == {'connections', 'authenticated', 'queued_bytes'}
    assert st['database']['reachable'] is True
    assert st['lessons']['enabled'] is True and 'by_type' in st['lessons']
    last = st['last_sweep']
    assert last['event_type'] == 'self_healing_report'
    newest = server.get('/v1/reports?event_type=self_healing_report&limit=1').json()['items'][0]
    assert last == newest
    assert server.get('/v1/status?verbose=1', key=keys['read']).status_code == 422
    assert server.get('/v1/status', key=None).status_code == 401


def test_status_and_sweep_count_websocket_connections(server):
    async def run():
        async with websockets.connect(server.ws_url):
            async with websockets.connect(server.ws_url):
                await asyncio.sleep(0.2)
                st = await asyncio.to_thread(lambda: server.get('/v1/status').json())
                rep = await asyncio.to_thread(lambda: heal(server).json())
                fams = await asyncio.to_thread(metrics, server)
                return st, rep, fams
    st, rep, fams = asyncio.run(run())
    assert st['ws']['connections'] == 2
    assert rep['event_data']['system_health']['ws_connections'] == 2
    assert sample(fams, 'ws_connections') == 2


def test_status_without_lessons(db_url, make_server):
    s = make_server(db_url, STEWARD_LESSONS_ENABLED='false')
    st = s.get('/v1/status').json()
    assert st['lessons'] == {'enabled': False}


# ---------------------------------------------------------------------------------------
# one instance at a time


def test_two_instances_sweep_once(fresh_db_url, make_server):
    a = make_server(fresh_db_url)
    b = make_server(fresh_db_url)
    ia, ib = instance_of(a), instance_of(b)
    with psycopg.connect(fresh_db_url, autocommit=True) as sql:
        # Hold the winner inside its sweep: its report insert waits for this lock, so the
        # other instance's claim certainly meets a live turn.
        blocker = psycopg.connect(fresh_db_url)
        blocker.execute('LOCK TABLE system_events IN EXCLUSIVE MODE')
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            fa = pool.submit(heal, a)
            fb = pool.submit(heal, b)
            done, _ = concurrent.futures.wait([fa, fb], timeout=4,
                                              return_when=concurrent.futures.FIRST_COMPLETED)
            assert len(done) == 1, 'exactly one sweep returned while the other held the turn'
            loser = done.pop().result()
            blocker.commit()
            blocker.close()
            ra, rb = fa.result(), fb.result()
        assert sorted([ra.status_code, rb.status_code]) == [200, 409]
        assert loser.status_code == 409
        winner_inst = ia if ra.status_code == 200 else ib
        loser_inst = ib if winner_inst == ia else ia
        assert winner_inst in loser.json()['detail']
        assert loser.headers['Retry-After']
        assert len(sweep_rows(sql)) == 1
        assert heartbeat(sql, 'heal_sweep', winner_inst)[1] == 'ok'
        hb = heartbeat(sql, 'heal_sweep', loser_inst)
        assert hb[1] == 'skipped'
        assert hb[3] == {'reason': 'running_elsewhere', 'holder': winner_inst}
        skipped = metrics(a if loser_inst == ia else b)
        assert sample(skipped, 'heal_skipped') == 1
        assert sample(skipped, 'heal_runs') == 0

        # a burst against both: every call sweeps or is told the turn is taken, and the
        # sweeps that ran never overlapped in time
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            rs = list(pool.map(lambda i: heal(a if i % 2 else b), range(12)))
        codes = [r.status_code for r in rs]
        assert set(codes) <= {200, 409} and 200 in codes
        assert len(sweep_rows(sql)) == 1 + codes.count(200)
        spans = sorted(sql.execute(
            "SELECT (event_data->>'timestamp')::timestamptz, "
            "(event_data->>'timestamp')::timestamptz "
            "+ make_interval(secs => (event_data->>'duration_ms')::float8 / 1000) "
            "FROM system_events WHERE event_type = 'self_healing_report'").fetchall())
        for (s1, e1), (s2, e2) in zip(spans, spans[1:]):
            assert e1 <= s2, (e1, s2)


# ---------------------------------------------------------------------------------------
# timers


def test_periodic_sweep_fires(fresh_db_url, make_server):
    s = make_server(fresh_db_url, STEWARD_HEAL_INTERVAL_S='1')
    with psycopg.connect(fresh_db_url, autocommit=True) as sql:
        assert wait_for(lambda: len(sweep_rows(sql)) >= 1, timeout=10)
        assert wait_for(lambda: sample(metrics(s), 'heal_runs') >= 1, timeout=5)
        hb = heartbeat(sql, 'heal_sweep', instance_of(s))
        assert hb[1] in ('ok', 'skipped')
        # the timer keeps firing, about once per interval
        assert wait_for(lambda: len(sweep_rows(sql)) >= 3, timeout=10)
        times = [r[0] for r in sql.execute(
            "SELECT created_at FROM system_events WHERE event_type = 'self_healing_report' "
            "ORDER BY id")]
        gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:])]
        assert all(g >= 0.5 for g in gaps), gaps


def test_performance_report_counts_requests(fresh_db_url, make_server):
    s = make_server(fresh_db_url, STEWARD_PERF_INTERVAL_S='1')
    inst = instance_of(s)
    for _ in range(7):
        assert s.get('/livez', key=None).status_code == 200
    for i in range(3):
        assert s.get(f'/v1/no-such-thing/{i}').status_code == 404

    def perf_events(sql):
        return [r[0] for r in sql.execute(
            "SELECT event_data FROM system_events WHERE event_type = "
            "'performance_optimization_report' AND event_data->>'instance' = %s ORDER BY id",
            (inst,))]

    def route_sum(events, route, method, field='requests'):
        return sum(x[field] for e in events for x in e['routes']
                   if x['route'] == route and x['method'] == method)

    with psycopg.connect(fresh_db_url, autocommit=True) as sql:
        assert wait_for(lambda: route_sum(perf_events(sql), '/livez', 'GET') == 7, timeout=10)
        n = len(perf_events(sql))
        assert wait_for(lambda: len(perf_events(sql)) >= n + 2, timeout=10)
        events = perf_events(sql)
        # the intervals partition the traffic: nothing counted twice, nothing lost
        assert route_sum(events, '/livez', 'GET') == 7
        assert route_sum(events, 'unmatched', 'any') == 3
        assert route_sum(events, 'unmatched', 'any', 'client_errors') == 3
        assert route_sum(events, '/livez', 'GET', 'server_errors') == 0
        assert route_sum(events, '/v1/status', 'GET') == 1
        for e in events:
            assert {'timestamp', 'since', 'interval_s', 'routes', 'delivery', 'actions',
                    'pool', 'recommendations'} <= set(e)
            assert set(e['pool']) == {'waits', 'timeouts', 'wait_p95_ms'}
            assert e['recommendations'] == []
            for x in e['routes']:
                assert x['requests'] > 0
                assert x['p50_ms'] <= x['p95_ms'] <= x['p99_ms']
        for prev, nxt in zip(events, events[1:]):
            assert nxt['since'] == prev['timestamp']
        hb = heartbeat(sql, 'perf_report', inst)
        assert hb[1] == 'ok'
    assert sample(metrics(s), 'perf_reports') >= len(events)


# ---------------------------------------------------------------------------------------
# the database goes away


@pytest.fixture
def own_pg():
    cluster = PgCluster()
    cluster.start()
    yield cluster
    cluster.destroy()


def test_sweep_with_database_stopped(own_pg, make_server):
    url = own_pg.createdb('healer_outage')
    s = make_server(url, STEWARD_HEAL_INTERVAL_S='1', STEWARD_PERF_INTERVAL_S='1')
    inst = instance_of(s)
    assert heal(s).status_code == 200

    # the database stops in the middle of a sweep: the report cannot be stored
    blocker = psycopg.connect(url)
    blocker.execute('LOCK TABLE system_events IN EXCLUSIVE MODE')
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        f = pool.submit(heal, s)
        time.sleep(0.5)
        own_pg.stop('immediate')
        r = f.result()
    blocker.close()
    assert r.status_code == 200, r.text
    assert r.json()['id'] is None  # what it did is answered and logged, not stored
    recs = s.log_records()
    assert any(x['msg'] == 'sweep report could not be stored' for x in recs)

    # with the database down: sweeps fail fast, the process keeps serving
    r = heal(s)
    assert r.status_code == 503 and r.headers['Retry-After']
    assert s.get('/livez', key=None).status_code == 200
    assert s.get('/readyz', key=None).status_code == 503
    st = s.get('/v1/status')
    assert st.status_code == 200
    st = st.json()
    assert st['database']['reachable'] is False
    assert st['lessons'] is None and st['last_sweep']['id'] is None
    assert wait_for(lambda: any(x['msg'] == 'sweep could not claim its turn'
                                for x in s.log_records()), timeout=5)
    assert wait_for(lambda: any(x['msg'] == 'performance report could not be stored'
                                for x in s.log_records()), timeout=5)
    assert s.proc.poll() is None

    own_pg.start()
    assert wait_for(lambda: s.get('/readyz', key=None).status_code == 200, timeout=15)
    # this instance may take back the turn it could not release
    r = heal(s)
    assert r.status_code == 200, r.text
    assert r.json()['id'] is not None
    with psycopg.connect(url, autocommit=True) as sql:
        assert heartbeat(sql, 'heal_sweep', inst)[1] in ('ok', 'skipped')


# ---------------------------------------------------------------------------------------
# /metrics


def test_metrics_exposition(server, keys):
    before = metrics(server)
    for _ in range(5):
        assert server.get('/livez', key=None).status_code == 200
    assert server.get('/v1/status', key=keys['read']).status_code == 200
    assert server.get('/v1/reports?limit=0', key=keys['read']).status_code == 422
    # a route with a path parameter, if any is registered: its label is the template
    templated = sorted(p for m, p in registered_routes() if m == 'GET' and '{' in p)
    raw = None
    if templated:
        template = templated[0]
        raw = re.sub(r'\{[^}]+\}', '987654321', template)
        server.get(raw, key=keys['admin'])
    assert server.get('/v1/nothing/here/5555').status_code == 404
    assert heal(server).status_code == 200
    fams = metrics(server)

    types = {
        'http_requests': 'counter', 'http_request_duration_seconds': 'histogram',
        'db_pool_connections': 'gauge', 'db_pool_wait_seconds': 'histogram',
        'ws_connections': 'gauge', 'ws_frames': 'counter', 'proposals': 'counter',
        'heal_runs': 'counter', 'lessons_recorded': 'counter',
    }
    for name, typ in types.items():
        assert name in fams, name
        assert fams[name].type == typ, name

    def delta(family, name=None, **labels):
        return sample(fams, family, name, **labels) - sample(before, family, name, **labels)

    assert delta('http_requests', 'http_requests_total', route='/livez', method='GET',
                 code='200') == 5
    assert delta('http_request_duration_seconds', 'http_request_duration_seconds_count',
                 route='/livez', method='GET') == 5
    assert delta('http_requests', 'http_requests_total', route='/v1/reports', method='GET',
                 code='422') == 1
    if raw:
        assert sum(s.value for s in fams['http_requests'].samples
                   if s.labels['route'] == template and s.labels['method'] == 'GET') >= 1
    assert delta('http_requests', 'http_requests_total', route='unmatched', method='any',
                 code='404') == 1
    assert delta('heal_runs') == 1
    # labels are route templates, never raw paths
    routes = {s.labels['route'] for s in fams['http_requests'].samples}
    assert not any('987654321' in r or '5555' in r for r in routes)
    for s in fams['http_requests'].samples:
        assert set(s.labels) == {'route', 'method', 'code'}
    # histogram buckets are cumulative and end at +Inf == count
    buckets = [s for s in fams['http_request_duration_seconds'].samples
               if s.name.endswith('_bucket') and s.labels['route'] == '/livez']
    values = [s.value for s in buckets]
    assert values == sorted(values) and buckets[-1].labels['le'] == '+Inf'
    assert values[-1] == sample(fams, 'http_request_duration_seconds',
                                'http_request_duration_seconds_count', route='/livez',
                                method='GET')
    states = {s.labels['state'] for s in fams['db_pool_connections'].samples}
    assert {'busy', 'idle', 'waiting'} <= states
    assert sample(fams, 'db_pool_connections', state='size') == 8
    assert sample(fams, 'db_pool_wait_seconds', 'db_pool_wait_seconds_count') > \
        sample(before, 'db_pool_wait_seconds', 'db_pool_wait_seconds_count')
    frames = {(s.labels['direction'], s.labels['type']) for s in fams['ws_frames'].samples}
    assert ('in', 'device_hello') in frames and ('out', 'scout_proposal') in frames
    events = {s.labels['event'] for s in fams['proposals'].samples}
    assert events == {'queued', 'delivered', 'acked', 'expired', 'failed'}
