"""Self-healing sweeps, performance reports, status and /metrics (docs/api.md, issue 7),
against a real PostgreSQL and the real binary."""
import asyncio
import concurrent.futures
import hashlib
import json
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
                      'ws_connections', 'degraded',
                      'success_without_outcome', 'pool_queue', 'database_issues',
                      'circuit_open'}


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


def actions_of(rep):
    return {a['kind']: a['count'] for a in rep['event_data']['actions']}


# ---------------------------------------------------------------------------------------
# arranging work for a sweep through the routes and SQL


class Work:
    """Proposals in every state a sweep cares about, aged through SQL."""

    def __init__(self, server, sql, tag):
        self.server, self.sql, self.tag = server, sql, tag
        r = server.post('/v1/scouts', json={'user_id': f'u-{tag}', 'provider': 'imap'})
        assert r.status_code == 201, r.text
        self.scout = r.json()['id']
        self.p = {}
        for name in ('expired1', 'expired2', 'requeue', 'fail', 'recent', 'fresh'):
            r = server.post(f'/v1/scouts/{self.scout}/items',
                            json={'source_msg_ref': f'{tag}-{name}', 'verdict': 'relevant',
                                  'subject': f'subject {name}', 'snippet': f'snippet {name}'})
            assert r.status_code == 201, r.text
            self.p[name] = r.json()['proposal_id']
        ex = sql.execute
        ex("UPDATE proposals SET expires_at = now() - interval '1 minute' "
           "WHERE id = ANY(%s::uuid[])", ([self.p['expired1'], self.p['expired2']],))
        ex("UPDATE proposals SET status = 'delivered', delivered_at = now() - interval '2 hours', "
           "first_delivered_at = now() - interval '2 hours', delivery_attempts = 1 "
           "WHERE id = %s", (self.p['requeue'],))
        ex("UPDATE proposals SET status = 'delivered', delivered_at = now() - interval '2 hours', "
           "first_delivered_at = now() - interval '3 hours', delivery_attempts = 10 "
           "WHERE id = %s", (self.p['fail'],))
        ex("UPDATE proposals SET status = 'delivered', delivered_at = now(), "
           "first_delivered_at = now(), delivery_attempts = 1 WHERE id = %s", (self.p['recent'],))

        # planner actions: two stuck, one running recently, one old failure, one recent
        self.k = {}
        for name, status, age in (('stuck1', 'running', '2 hours'), ('stuck2', 'running', '3 hours'),
                                  ('running', 'running', '1 minute'),
                                  ('old_failed', 'failed', '10 days'),
                                  ('new_failed', 'failed', '1 day')):
            post = f'post-{tag}-{name}'
            key = 'sheal_' + hashlib.sha256(f'{post}:comment:tier_1'.encode()).hexdigest()[:32]
            body = {'post_id': post, 'action_type': 'comment', 'tier': 'tier_1',
                    'status': status}
            if status == 'failed':
                body['error_code'] = 'network_error'
            r = server.put(f'/v1/actions/{key}', json=body)
            assert r.status_code == 200, r.text
            ex('UPDATE actions SET initiated_at = now() - %s::interval '
               'WHERE idempotency_key = %s', (age, key))
            self.k[name] = key

    expected = {'deliveries_requeued': 1, 'deliveries_failed': 1, 'proposals_expired': 2,
                'stuck_actions_reset': 2, 'actions_archived': 1}

    def action(self, name):
        return self.sql.execute('SELECT status, error_code FROM actions '
                                'WHERE idempotency_key = %s', (self.k[name],)).fetchone()

    def status(self, name):
        return self.sql.execute('SELECT status, raw_subject, raw_snippet FROM proposals '
                                'WHERE id = %s', (self.p[name],)).fetchone()

    def assert_done_once(self):
        assert self.status('expired1') == ('expired', None, None)
        assert self.status('expired2') == ('expired', None, None)
        assert self.status('requeue')[0] == 'queued'
        assert self.status('fail')[0] == 'failed'
        assert self.status('recent') == ('delivered', 'subject recent', 'snippet recent')
        assert self.status('fresh') == ('queued', 'subject fresh', 'snippet fresh')
        lessons = self.sql.execute(
            "SELECT count(*) FROM lessons WHERE lesson_type = 'delivery_failed' "
            "AND work_item_id = %s", (self.p['fail'],)).fetchone()[0]
        assert lessons == 1
        assert self.action('stuck1') == ('failed', 'timeout')
        assert self.action('stuck2') == ('failed', 'timeout')
        assert self.action('running') == ('running', None)
        assert self.action('new_failed') == ('failed', 'network_error')
        assert self.action('old_failed') is None
        archived = self.sql.execute('SELECT count(*), min(status) FROM actions_archive '
                                    'WHERE idempotency_key = %s',
                                    (self.k['old_failed'],)).fetchone()
        assert archived == (1, 'failed')
        stuck = self.sql.execute(
            "SELECT work_item_id, stage FROM lessons WHERE lesson_type = 'stuck_recovered' "
            "AND work_item_id = ANY(%s) ORDER BY work_item_id",
            ([self.k['stuck1'], self.k['stuck2']],)).fetchall()
        assert stuck == sorted([(self.k['stuck1'], 'comment'), (self.k['stuck2'], 'comment')])


# ---------------------------------------------------------------------------------------
# POST /v1/heal and the report


def test_heal_does_the_arranged_work(fresh_db_url, make_server):
    # a fresh instance: the scouts' own delivery timer (every 30 s) has not fired yet
    s = make_server(fresh_db_url)
    with psycopg.connect(fresh_db_url, autocommit=True) as sql:
        w = Work(s, sql, 'a')
        before = metrics(s)
        r = heal(s)
        assert r.status_code == 200, r.text
        rep = r.json()
        got = actions_of(rep)
        for kind, n in Work.expected.items():
            assert got[kind] == n, (kind, got)
        h = rep['event_data']['system_health']
        assert (h['requeued_deliveries'], h['failed_deliveries'], h['expired_proposals'],
                h['stuck_actions'], h['archived_actions']) == (1, 1, 2, 2, 1)
        assert [a['kind'] for a in rep['event_data']['actions']] == [
            'stuck_actions_reset', 'deliveries_requeued', 'deliveries_failed',
            'proposals_expired', 'actions_archived', 'missing_outcomes_marked']
        assert h['degraded'] is False and rep['event_data']['errors'] == []
        w.assert_done_once()
        after = metrics(s)
        assert sample(after, 'proposals', event='expired') - \
            sample(before, 'proposals', event='expired') == 2
        assert sample(after, 'proposals', event='failed') - \
            sample(before, 'proposals', event='failed') == 1
        # a second sweep finds nothing left to do
        again = actions_of(heal(s).json())
        assert all(again[k] == 0 for k in Work.expected)
        w.assert_done_once()


def test_failing_step_does_not_undo_the_others(fresh_db_url, make_server):
    s = make_server(fresh_db_url, STEWARD_DB_STATEMENT_TIMEOUT_MS='400')
    with psycopg.connect(fresh_db_url, autocommit=True) as sql:
        w = Work(s, sql, 'f')
        # the delivery pass cannot get at proposals (statement timeout), expiry neither;
        # the report still lists what ran and the failures, and says degraded
        blocker = psycopg.connect(fresh_db_url)
        blocker.execute('LOCK TABLE proposals IN ACCESS EXCLUSIVE MODE')
        r = heal(s)
        blocker.rollback()
        blocker.close()
        assert r.status_code == 200, r.text
        ev = r.json()['event_data']
        steps = sorted(e['step'] for e in ev['errors'])
        assert steps == ['delivery_pass', 'expire_proposals']
        assert all(e['error'] == 'unavailable' for e in ev['errors'])
        assert 'deliveries_requeued' not in actions_of(r.json())
        # the planner steps ran and committed although the scouts steps failed
        assert actions_of(r.json())['stuck_actions_reset'] == 2
        assert actions_of(r.json())['actions_archived'] == 1
        assert w.action('stuck1') == ('failed', 'timeout') and w.action('old_failed') is None
        assert ev['system_health']['degraded'] is True
        assert ev['system_health']['db_latency_ms'] is not None
        assert w.status('expired1')[0] == 'queued' and w.status('requeue')[0] == 'delivered'
        hb = heartbeat(sql, 'heal_sweep', ev['instance'])
        assert hb[1] == 'partial' and len(hb[3]['errors']) == 2
        lesson = sql.execute(
            "SELECT work_item_id, stage, source, detail FROM lessons "
            "WHERE lesson_type = 'health_degraded'").fetchall()
        assert len(lesson) == 1
        assert lesson[0][:3] == ('system_health', 'step_failed', 'auto')
        assert lesson[0][3]['report_id'] == r.json()['id']
        assert lesson[0][3]['system_health']['degraded'] is True
        fams = metrics(s)
        assert sample(fams, 'heal_step_failures') == 2
        # health_degraded and two stuck_recovered were written through this instance
        assert sample(fams, 'lessons_recorded') >= 3
        # the server still serves, and the next sweep does the work
        r = heal(s)
        assert r.status_code == 200 and r.json()['event_data']['errors'] == []
        for kind in ('deliveries_requeued', 'deliveries_failed', 'proposals_expired'):
            assert actions_of(r.json())[kind] == Work.expected[kind]
        assert actions_of(r.json())['stuck_actions_reset'] == 0
        w.assert_done_once()
        # a problem that persists is one lesson (the journal deduplicates it)
        blocker = psycopg.connect(fresh_db_url)
        blocker.execute('LOCK TABLE proposals IN ACCESS EXCLUSIVE MODE')
        r = heal(s)
        blocker.rollback()
        blocker.close()
        assert r.json()['event_data']['system_health']['degraded'] is True
        assert sql.execute("SELECT count(*) FROM lessons "
                           "WHERE lesson_type = 'health_degraded'").fetchone()[0] == 1


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
    r = heal(server, data='x', headers={'Content-Type': 'text/plain'})
    assert r.status_code == 415
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


def test_routes_without_query_parameters_name_every_one_given(server, keys):
    for path in ('/v1/status', '/v1/instances'):
        r = server.get(path + '?colour=red&size=9', key=keys['read'])
        assert r.status_code == 422, path
        assert r.headers['content-type'].startswith('application/problem+json')
        assert sorted(e['field'] for e in r.json()['errors']) == ['colour', 'size'], path
        assert all(e['message'] == 'unknown query parameter' for e in r.json()['errors'])
        assert server.get(path, key=keys['read']).status_code == 200, path


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
    assert st['delivery']['window_s'] == 86400
    assert {'counts', 'queued_to_delivered_ms', 'delivered_to_acked_ms'} <= set(st['delivery'])
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

        # a burst against both: every call sweeps or is told the turn is taken, the
        # arranged work is done exactly once, and the sweeps never overlapped in time
        w = Work(a, sql, 'two')
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            rs = list(pool.map(lambda i: heal(a if i % 2 else b), range(12)))
        codes = [r.status_code for r in rs]
        assert set(codes) <= {200, 409} and 200 in codes
        for kind, n in Work.expected.items():
            assert sum(actions_of(r.json()).get(kind, 0) for r in rs
                       if r.status_code == 200) == n, kind
        w.assert_done_once()
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
    for post, status in (('perf-ok', 'success'), ('perf-bad', 'failed')):
        key = 'sheal_' + hashlib.sha256(f'{post}:edit:tier_2'.encode()).hexdigest()[:32]
        assert s.put(f'/v1/actions/{key}', json={'post_id': post, 'action_type': 'edit',
                                                  'tier': 'tier_2', 'status': status}
                     ).status_code == 200
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
        assert route_sum(events, '/v1/actions/{idempotency_key}', 'PUT') == 2
        # action outcomes of the interval, from the planner
        acts = [e['actions'] for e in events if e['actions']['succeeded'] or
                e['actions']['failed']]
        assert acts and acts[0]['succeeded'] == 1 and acts[0]['failed'] == 1
        assert acts[0]['success_rate'] == 0.5
        for e in events:
            assert {'timestamp', 'since', 'interval_s', 'routes', 'delivery', 'actions',
                    'pool', 'recommendations'} <= set(e)
            assert set(e['pool']) == {'waits', 'timeouts', 'wait_p95_ms'}
            assert {'queued_to_delivered_ms', 'delivered_to_acked_ms'} <= set(e['delivery'])
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
    # (a periodic sweep on the whole second may hold the turn for a moment)
    assert wait_for(lambda: heal(s).status_code == 200, timeout=5)

    # the database stops in the middle of a sweep: the report cannot be stored. A
    # periodic sweep may hold the turn, waiting on the same lock: that request is
    # answered 409 at once, so let the lock go and ask again.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        for _ in range(20):
            blocker = psycopg.connect(url)
            blocker.execute('LOCK TABLE system_events IN EXCLUSIVE MODE')
            f = pool.submit(heal, s)
            try:
                r = f.result(timeout=0.5)
            except concurrent.futures.TimeoutError:
                break  # this sweep holds the turn and waits on the lock
            blocker.close()
            assert r.status_code == 409, r.text
        else:
            pytest.fail('a periodic sweep held the turn every time')
        own_pg.stop('immediate')
        r = f.result()
    blocker.close()
    assert r.status_code == 200, r.text
    assert r.json()['id'] is None  # what it did is answered and logged, not stored
    recs = s.log_records()
    assert any(x['msg'] == 'sweep report could not be stored' for x in recs)

    # with the database down: sweeps fail fast, the process keeps serving (a periodic
    # sweep on the whole second, failing, may hold this instance's turn for a moment: 409)
    deadline = time.monotonic() + 5
    r = heal(s)
    while r.status_code == 409 and time.monotonic() < deadline:
        time.sleep(0.1)
        r = heal(s)
    assert r.status_code == 503 and r.headers['Retry-After'], r.text
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
    # this instance may take back the turn it could not release (a periodic sweep on the
    # whole second may hold it for a moment)
    assert wait_for(lambda: heal(s).status_code == 200, timeout=5)
    r = s.get('/v1/reports?event_type=self_healing_report&limit=1').json()['items'][0]
    assert r['id'] is not None
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
    # WebSocket and proposal traffic
    r = server.post('/v1/scouts', json={'user_id': 'u-metrics', 'provider': 'imap'})
    scout = r.json()['id']
    for i in range(2):
        assert server.post(f'/v1/scouts/{scout}/items',
                           json={'source_msg_ref': f'm-{i}', 'verdict': 'relevant'}
                           ).status_code == 201

    async def bad_hello():
        async with websockets.connect(server.ws_url) as ws:
            await ws.send(json.dumps({'type': 'device_hello', 'device_id': 'nope',
                                      'token': 'wrong'}))
            return json.loads(await ws.recv())
    assert asyncio.run(bad_hello())['code'] == 'unauthorized'
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
    assert delta('proposals', event='queued') == 2
    assert delta('ws_frames', direction='in', type='device_hello') == 1
    assert delta('ws_frames', direction='out', type='error') == 1
