"""Lessons journal (docs/api.md, issue 3) against a real PostgreSQL: REST routes, the kill
switch, dedup under concurrency, validation, PATCH rules, the snapshot, and the
never-raise internal C API (driven through the test_lessons helper binary)."""
import json
import os
import subprocess
import threading

import psycopg
import pytest

from harness.steward import ADMIN_KEY, binary

# ---------------------------------------------------------------------------------------
# helpers


def driver(db_url, enabled, window, *args):
    """Runs the internal C API (lessons_record_auto / lessons_snapshot) through the
    test_lessons driver; returns (parsed stdout, JSON log records from stderr)."""
    exe = os.path.join(os.path.dirname(binary()), 'tests', 'test_lessons')
    env = {k: v for k, v in os.environ.items() if not k.startswith('STEWARD_')}
    env['ASAN_OPTIONS'] = 'detect_leaks=1:halt_on_error=1'
    r = subprocess.run([exe, 'db', db_url, '1' if enabled else '0', str(window), *args],
                       env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert 'Sanitizer' not in r.stderr and 'runtime error' not in r.stderr, r.stderr
    logs = []
    for line in r.stderr.splitlines():
        try:
            logs.append(json.loads(line))
        except ValueError:
            pass
    return json.loads(r.stdout), logs


def rows(sql, where='true', params=()):
    cur = sql.execute(f'SELECT id, lesson_type, work_item_id, stage, source, status, detail '
                      f'FROM lessons WHERE {where} ORDER BY id', params)
    return cur.fetchall()


# ---------------------------------------------------------------------------------------
# internal C API: never-raise, dedup, thread safety, snapshot


def test_record_auto_writes_and_deduplicates(server, db_url, sql):
    out, logs = driver(db_url, True, 3600, 'record', 'transient_retry', 'wi-c1', 'deploy',
                       '{"attempts": 3, "note": "h\\u00e9"}')
    assert out['written'] is True
    assert [r for r in logs if r['level'] != 'info'] == []
    got = rows(sql, "work_item_id = 'wi-c1'")
    assert len(got) == 1
    assert got[0][1:6] == ('transient_retry', 'wi-c1', 'deploy', 'auto', 'new')
    assert got[0][6] == {'attempts': 3, 'note': 'hé'}
    out, _ = driver(db_url, True, 3600, 'record', 'transient_retry', 'wi-c1', 'deploy')
    assert out['written'] is False
    assert len(rows(sql, "work_item_id = 'wi-c1'")) == 1


def test_record_auto_concurrent_threads_write_one_row(server, db_url, sql):
    out, _ = driver(db_url, True, 3600, 'race', '20', 'stuck_recovered', 'wi-race-c', 'post')
    assert out == {'written': 1, 'counted': 1}
    assert len(rows(sql, "work_item_id = 'wi-race-c'")) == 1
    # NULL work_item_id and stage compare as equal
    out, _ = driver(db_url, True, 3600, 'race', '20', 'health_degraded', '-', '-')
    assert out == {'written': 1, 'counted': 1}
    assert len(rows(sql, "lesson_type = 'health_degraded' AND work_item_id IS NULL")) == 1


def test_record_auto_never_raises_on_a_dropped_table(make_server, fresh_db_url):
    s = make_server(fresh_db_url)  # applies the migrations
    with psycopg.connect(fresh_db_url, autocommit=True) as conn:
        conn.execute('DROP TABLE lessons')
    out, logs = driver(fresh_db_url, True, 3600, 'record', 'delivery_failed', 'p-1', 'deliver')
    assert out['written'] is False
    assert out['elapsed_ms'] < 1000
    warns = [r for r in logs if r['level'] == 'warn']
    assert len(warns) == 1, logs
    assert warns[0]['msg'] == 'lesson not recorded'
    assert warns[0]['lesson_type'] == 'delivery_failed'
    assert warns[0]['sqlstate'] == '42P01'
    assert [r for r in logs if r['level'] == 'error'] == []
    # the running instance is unaffected
    assert s.get('/livez', key=None).status_code == 200


def test_record_auto_never_raises_without_privileges(make_server, fresh_db_url, pg):
    make_server(fresh_db_url)
    with psycopg.connect(fresh_db_url, autocommit=True) as conn:
        conn.execute("CREATE ROLE lessons_limited LOGIN PASSWORD 'pw'")
        conn.execute('GRANT USAGE ON SCHEMA public TO lessons_limited')
        conn.execute('GRANT EXECUTE ON FUNCTION lessons_record TO lessons_limited')
        conn.execute('REVOKE ALL ON lessons FROM lessons_limited')
    info = psycopg.conninfo.conninfo_to_dict(fresh_db_url)
    info.update(user='lessons_limited', password='pw')
    limited = psycopg.conninfo.make_conninfo(**info)
    try:
        out, logs = driver(limited, True, 3600, 'record', 'gate_failure', 'wi-r', 'ci')
        assert out['written'] is False
        warns = [r for r in logs if r['level'] == 'warn']
        assert len(warns) == 1 and warns[0]['sqlstate'] == '42501', logs
    finally:
        with psycopg.connect(fresh_db_url, autocommit=True) as conn:
            conn.execute('REVOKE ALL ON SCHEMA public FROM lessons_limited')
            conn.execute('REVOKE ALL ON FUNCTION lessons_record FROM lessons_limited')
            conn.execute('DROP ROLE lessons_limited')


def test_c_api_switched_off_touches_no_table(make_server, fresh_db_url):
    make_server(fresh_db_url)
    with psycopg.connect(fresh_db_url, autocommit=True) as conn:
        conn.execute('DROP TABLE lessons')
    out, logs = driver(fresh_db_url, False, 3600, 'record', 'gate_failure', 'w', 's')
    assert out['written'] is False
    assert [r for r in logs if r['level'] in ('warn', 'error')] == []
    out, logs = driver(fresh_db_url, False, 3600, 'snapshot')
    assert out == {'enabled': False}
    assert [r for r in logs if r['level'] in ('warn', 'error')] == []


def test_c_snapshot_counts(make_server, fresh_db_url):
    make_server(fresh_db_url)
    with psycopg.connect(fresh_db_url, autocommit=True) as conn:
        out, _ = driver(fresh_db_url, True, 3600, 'snapshot')
        assert out == {'enabled': True, 'total': 0, 'by_type': {}, 'by_status': {},
                       'last_24h': 0, 'newest_at': None}
        for wid in ('a', 'b', 'c'):
            driver(fresh_db_url, True, 3600, 'record', 'transient_retry', wid, 'x')
        driver(fresh_db_url, True, 3600, 'record', 'stuck_recovered', 'a', 'x')
        conn.execute("UPDATE lessons SET status = 'closed', "
                     "created_at = now() - interval '2 days' WHERE work_item_id = 'a'")
        out, _ = driver(fresh_db_url, True, 3600, 'snapshot')
        newest = conn.execute('SELECT max(created_at) FROM lessons').fetchone()[0]
    assert out['enabled'] is True
    assert out['total'] == 4
    assert out['by_type'] == {'transient_retry': 3, 'stuck_recovered': 1}
    assert out['by_status'] == {'closed': 2, 'new': 2}
    assert out['last_24h'] == 2
    assert out['newest_at'] == newest.strftime('%Y-%m-%dT%H:%M:%S.%fZ').replace('.000000Z', 'Z')


# ---------------------------------------------------------------------------------------
# REST: recording, validation, round trip


def lesson_row(sql, lesson_id):
    cur = sql.execute('SELECT * FROM lessons WHERE id = %s', (lesson_id,))
    cols = [d.name for d in cur.description]
    row = cur.fetchone()
    return dict(zip(cols, row)) if row else None


def iso(ts):
    s = ts.strftime('%Y-%m-%dT%H:%M:%S.%fZ')
    return s.replace('.000000Z', 'Z')


def test_post_validation_names_every_bad_field(server, keys, sql):
    before = sql.execute('SELECT count(*) FROM lessons').fetchone()[0]
    r = server.post('/v1/lessons', key=keys['service'], json={
        'lesson_type': 'Gate-Failure', 'status': 'NEW', 'attribution': 'plat form',
        'target_domain': 'x' * 65, 'source': 'robot', 'detail': ['not', 'an', 'object'],
        'work_item_id': '', 'stage': 7, 'root_cause': 'r' * 4001, 'colour': 'red',
        'id': 5, 'created_at': '2026-01-01T00:00:00Z'})
    assert r.status_code == 422
    assert r.headers['content-type'].startswith('application/problem+json')
    fields = sorted(e['field'] for e in r.json()['errors'])
    assert fields == sorted(['lesson_type', 'status', 'attribution', 'target_domain', 'source',
                             'detail', 'work_item_id', 'stage', 'root_cause', 'colour', 'id',
                             'created_at'])
    msgs = {e['field']: e['message'] for e in r.json()['errors']}
    assert msgs['lesson_type'] == 'must match ^[a-z0-9_]{1,64}$'
    assert msgs['colour'] == 'unknown field'
    assert msgs['detail'] == 'must be an object'
    # lesson_type is required; the body must be an object
    r = server.post('/v1/lessons', key=keys['service'], json={'repo': 'a/b'})
    assert r.status_code == 422
    assert r.json()['errors'] == [{'field': 'lesson_type', 'message': 'is required'}]
    r = server.post('/v1/lessons', key=keys['service'], json=['gate_failure'])
    assert r.status_code == 422 and r.json()['errors'][0]['field'] == 'body'
    r = server.post('/v1/lessons', key=keys['service'], data='{"lesson_type": ',
                    headers={'Content-Type': 'application/json'})
    assert r.status_code == 400
    assert sql.execute('SELECT count(*) FROM lessons').fetchone()[0] == before


def test_post_scope_and_auth(server, keys):
    assert server.post('/v1/lessons', key=None, json={'lesson_type': 'x'}).status_code == 401
    r = server.post('/v1/lessons', key=keys['read'], json={'lesson_type': 'x'})
    assert r.status_code == 403


def test_post_round_trips_every_field_and_detail(server, keys, sql):
    detail = {
        'nested': {'list': [1, -2, 3.25, None, True, False, {'deep': ['é', '日本語', '😀']}],
                   'empty': {}, 'empty_list': []},
        'big_int': 9007199254740993, 'max_int': 9223372036854775807,
        'min_int': -9223372036854775808, 'float': 0.1, 'tiny': 5e-324,
        'huge': 1.7976931348623157e308, 'neg': -1234.5678e-10, 'one_point_o': 1.0,
        'unicode "quoted" \\ key\n': 'tab\there', 'z': 1, 'a': 2,
    }
    body = {'lesson_type': 'merge_hold', 'work_item_id': 'wi-rt', 'task_id': 'T-1',
            'stage': 'merge', 'agent': 'builder-7', 'repo': 'acme/shop',
            'root_cause': 'conflict on\nmain', 'suggestion': 'rebase earlier',
            'status': 'in_progress', 'related_task': 'T-0', 'attribution': 'project',
            'target_repo': 'acme/infra', 'target_domain': 'quality', 'source': 'manual',
            'detail': detail}
    r = server.post('/v1/lessons', key=keys['service'], json=body)
    assert r.status_code == 201, r.text
    out = r.json()
    assert out['recorded'] is True and set(out) == {'recorded', 'id'}
    lid = out['id']
    got = server.get(f'/v1/lessons/{lid}', key=keys['read'])
    assert got.status_code == 200
    lesson = got.json()
    assert lesson['detail'] == detail
    assert list(lesson['detail']) == list(detail)  # key order kept too
    for k, v in body.items():
        assert lesson[k] == v, k
    row = lesson_row(sql, lid)
    assert row['detail'] == detail
    assert row['lesson_type'] == 'merge_hold' and row['source'] == 'manual'
    assert lesson['created_at'] == iso(row['created_at'])
    assert lesson['updated_at'] == lesson['created_at']
    assert set(lesson) == set(body) | {'id', 'created_at', 'updated_at'}


def test_post_defaults(server, keys, sql):
    r = server.post('/v1/lessons', key=keys['service'], json={'lesson_type': 'future_kind'})
    assert r.status_code == 201
    lesson = server.get(f"/v1/lessons/{r.json()['id']}").json()
    assert lesson['status'] == 'new' and lesson['source'] == 'auto'
    assert lesson['detail'] == {}
    for k in ('work_item_id', 'task_id', 'stage', 'agent', 'repo', 'root_cause', 'suggestion',
              'related_task', 'attribution', 'target_repo', 'target_domain'):
        assert lesson[k] is None, k
    row = lesson_row(sql, r.json()['id'])
    assert row['status'] == 'new' and row['source'] == 'auto' and row['detail'] == {}


def test_get_unknown_or_malformed_id_is_404(server, keys):
    for path in ('/v1/lessons/999999999', '/v1/lessons/abc', '/v1/lessons/0',
                 '/v1/lessons/-1', '/v1/lessons/99999999999999999999'):
        r = server.get(path, key=keys['read'])
        assert r.status_code == 404, path
        assert r.json()['detail'] == 'no such lesson'


# ---------------------------------------------------------------------------------------
# REST: dedup


def post_many(server, key, body, n):
    results = [None] * n
    barrier = threading.Barrier(n)

    def one(i):
        barrier.wait()
        results[i] = server.post('/v1/lessons', key=key, json=body)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.mark.parametrize('wid,stage', [('wi-race', 'deploy'), (None, None), ('wi-race', None)])
def test_concurrent_identical_auto_records_write_one_row(make_server, db_url, keys, sql, wid,
                                                         stage):
    # an instance with enough HTTP threads and connections that all 20 run at once
    wide = make_server(db_url, STEWARD_HTTP_THREADS='20', STEWARD_DB_POOL_SIZE='24')
    body = {'lesson_type': 'transient_retry', 'source': 'auto', 'detail': {'n': 1}}
    if wid:
        body['work_item_id'] = wid
    if stage:
        body['stage'] = stage
    results = post_many(wide, keys['service'], body, 20)
    created = [r for r in results if r.status_code == 201]
    assert len(created) == 1, [r.text for r in results]
    lid = created[0].json()['id']
    dups = [r.json() for r in results if r.status_code == 200]
    assert len(dups) == 19
    assert all(d == {'recorded': False, 'reason': 'deduplicated', 'duplicate_of': lid}
               for d in dups)
    n = sql.execute('SELECT count(*) FROM lessons WHERE lesson_type = %s AND source = %s AND '
                    'work_item_id IS NOT DISTINCT FROM %s AND stage IS NOT DISTINCT FROM %s',
                    ('transient_retry', 'auto', wid, stage)).fetchone()[0]
    assert n == 1


def test_manual_records_are_never_deduplicated(server, keys, sql):
    body = {'lesson_type': 'gate_failure', 'work_item_id': 'wi-manual', 'stage': 'ci',
            'source': 'manual'}
    results = post_many(server, keys['service'], body, 10)
    assert sorted(r.status_code for r in results) == [201] * 10
    assert len({r.json()['id'] for r in results}) == 10
    n = sql.execute("SELECT count(*) FROM lessons WHERE work_item_id = 'wi-manual'").fetchone()[0]
    assert n == 10
    # a manual record does not make a later auto record a duplicate either
    r = server.post('/v1/lessons', key=keys['service'], json=body | {'source': 'auto'})
    assert r.status_code == 201
    # a caller that omits source is deduplicated like an auto record (the earlier
    # journal's default)
    del body['source']
    again = server.post('/v1/lessons', key=keys['service'], json=body)
    assert again.status_code == 200, again.text
    assert again.json()['duplicate_of'] == r.json()['id']


def test_dedup_window_edges_and_key(server, keys, sql):
    body = {'lesson_type': 'deploy_degraded', 'work_item_id': 'wi-win', 'stage': 'rollout',
            'source': 'auto'}
    first = server.post('/v1/lessons', key=keys['service'], json=body)
    assert first.status_code == 201
    fid = first.json()['id']
    # inside the window (moved back to 59 minutes ago): still a duplicate
    sql.execute("UPDATE lessons SET created_at = now() - interval '59 minutes' WHERE id = %s",
                (fid,))
    r = server.post('/v1/lessons', key=keys['service'], json=body)
    assert r.status_code == 200 and r.json()['duplicate_of'] == fid
    # just outside the window (3600 s + 1 s ago): written
    sql.execute("UPDATE lessons SET created_at = now() - interval '3601 seconds' WHERE id = %s",
                (fid,))
    r = server.post('/v1/lessons', key=keys['service'], json=body)
    assert r.status_code == 201 and r.json()['id'] != fid
    # any difference in the key is another lesson
    for change in ({'stage': 'canary'}, {'work_item_id': 'wi-win-2'}, {'stage': None},
                   {'lesson_type': 'gate_failure'}):
        r = server.post('/v1/lessons', key=keys['service'], json=body | change)
        assert r.status_code == 201, change
    n = sql.execute("SELECT count(*) FROM lessons WHERE work_item_id LIKE 'wi-win%%'").fetchone()[0]
    assert n == 6


def test_window_zero_disables_dedup(make_server, fresh_db_url):
    s = make_server(fresh_db_url, STEWARD_LESSONS_DEDUP_WINDOW_S='0')
    body = {'lesson_type': 'transient_retry', 'work_item_id': 'w', 'stage': 's', 'source': 'auto'}
    results = post_many(s, ADMIN_KEY, body, 5)
    assert [r.status_code for r in results] == [201] * 5
    with psycopg.connect(fresh_db_url) as conn:
        assert conn.execute('SELECT count(*) FROM lessons').fetchone()[0] == 5


def test_metrics_count_written_rows(make_server, fresh_db_url):
    s = make_server(fresh_db_url)

    def counter():
        for line in s.get('/metrics', key=None).text.splitlines():
            if line.startswith('lessons_recorded_total '):
                return int(line.split()[1])
        raise AssertionError('lessons_recorded_total missing')

    assert counter() == 0
    body = {'lesson_type': 'gate_failure', 'work_item_id': 'm', 'source': 'auto'}
    assert s.post('/v1/lessons', json=body).status_code == 201
    assert s.post('/v1/lessons', json=body).status_code == 200
    assert s.post('/v1/lessons', json={'lesson_type': 'x'}).status_code == 201
    assert counter() == 2


# ---------------------------------------------------------------------------------------
# REST: lists


def test_list_filters_combine_and_paginate_stably(make_server, fresh_db_url):
    s = make_server(fresh_db_url)
    ids = []
    for i in range(12):
        body = {'lesson_type': 'gate_failure' if i % 2 else 'merge_hold',
                'status': 'closed' if i % 3 == 0 else 'new',
                'repo': 'acme/a' if i < 6 else 'acme/b', 'work_item_id': f'w{i % 4}',
                'source': 'manual'}
        r = s.post('/v1/lessons', json=body)
        assert r.status_code == 201
        ids.append((r.json()['id'], body))

    def expect(**flt):
        return [i for i, b in sorted(ids, reverse=True)
                if all(b[k] == v for k, v in flt.items())]

    def listed(query):
        r = s.get('/v1/lessons' + query)
        assert r.status_code == 200, r.text
        return r.json()

    page = listed('')
    assert page['enabled'] is True and page['next_cursor'] is None
    assert [x['id'] for x in page['items']] == expect()
    for q, flt in (('?lesson_type=gate_failure', {'lesson_type': 'gate_failure'}),
                   ('?status=closed', {'status': 'closed'}),
                   ('?repo=acme/b', {'repo': 'acme/b'}),
                   ('?work_item_id=w1', {'work_item_id': 'w1'}),
                   ('?lesson_type=gate_failure&status=new&repo=acme/a',
                    {'lesson_type': 'gate_failure', 'status': 'new', 'repo': 'acme/a'}),
                   ('?lesson_type=merge_hold&status=closed&repo=acme/b&work_item_id=w2',
                    {'lesson_type': 'merge_hold', 'status': 'closed', 'repo': 'acme/b',
                     'work_item_id': 'w2'})):
        got = listed(q)['items']
        assert [x['id'] for x in got] == expect(**flt), q
        assert all(all(x[k] == v for k, v in flt.items()) for x in got)
    assert listed('?lesson_type=nothing_like_this')['items'] == []

    # pages of 5 while new lessons arrive: every old lesson exactly once, in order
    seen = []
    page = listed('?limit=5')
    seen += [x['id'] for x in page['items']]
    while page['next_cursor']:
        assert s.post('/v1/lessons', json={'lesson_type': 'gate_failure',
                                           'source': 'manual'}).status_code == 201
        page = listed(f"?limit=5&cursor={page['next_cursor']}")
        assert len(page['items']) <= 5
        seen += [x['id'] for x in page['items']]
    assert seen == expect()
    # filtered pagination
    seen = []
    page = listed('?lesson_type=merge_hold&limit=2')
    seen += [x['id'] for x in page['items']]
    while page['next_cursor']:
        page = listed(f"?lesson_type=merge_hold&limit=2&cursor={page['next_cursor']}")
        seen += [x['id'] for x in page['items']]
    assert seen == expect(lesson_type='merge_hold')


def test_list_bad_parameters_are_422(server, keys):
    r = server.get('/v1/lessons?lesson_type=Bad-Type&status=&limit=0&cursor=nope&colour=red',
                   key=keys['read'])
    assert r.status_code == 422
    assert sorted(e['field'] for e in r.json()['errors']) == \
        ['colour', 'cursor', 'lesson_type', 'limit', 'status']
    assert r.json()['detail'] == 'the request has 5 invalid fields'
    r = server.get('/v1/lessons?lesson_type=Bad-Type&status=x%20y&cursor=nope&colour=red'
                   '&repo=a%09b', key=keys['read'])
    assert r.status_code == 422
    assert sorted(e['field'] for e in r.json()['errors']) == \
        ['colour', 'cursor', 'lesson_type', 'repo', 'status']
    assert server.get('/v1/lessons', key=None).status_code == 401


# ---------------------------------------------------------------------------------------
# REST: PATCH


def test_patch_changes_only_allowed_fields(server, keys, sql):
    r = server.post('/v1/lessons', key=keys['service'], json={
        'lesson_type': 'gate_failure', 'work_item_id': 'wi-p', 'repo': 'acme/p',
        'target_repo': 'acme/old', 'detail': {'k': 'v'}})
    lid = r.json()['id']
    sql.execute("UPDATE lessons SET created_at = created_at - interval '1 hour', "
                "updated_at = updated_at - interval '1 hour' WHERE id = %s", (lid,))
    before = lesson_row(sql, lid)
    changes = {'status': 'linked', 'attribution': 'both', 'target_domain': 'scale',
               'related_task': 'T-9', 'root_cause': 'cause', 'suggestion': 'fix it',
               'target_repo': None}
    r = server.patch(f'/v1/lessons/{lid}', json=changes)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out['updated'] is True and set(out) == {'updated', 'lesson'}
    lesson = out['lesson']
    for k, v in changes.items():
        assert lesson[k] == v, k
    after = lesson_row(sql, lid)
    for k, v in changes.items():
        assert after[k] == v, k
    for k in ('lesson_type', 'work_item_id', 'repo', 'source', 'detail', 'created_at'):
        assert after[k] == before[k], k
    assert after['updated_at'] > before['updated_at']
    assert lesson['created_at'] == iso(before['created_at'])
    assert lesson['updated_at'] == iso(after['updated_at'])
    assert server.get(f'/v1/lessons/{lid}').json() == lesson


def test_patch_rejects_other_fields_and_changes_nothing(server, keys, sql):
    lid = server.post('/v1/lessons', key=keys['service'],
                      json={'lesson_type': 'gate_failure', 'stage': 's'}).json()['id']
    before = lesson_row(sql, lid)
    cases = [
        ({'status': 'closed', 'lesson_type': 'merge_hold'}, ['lesson_type']),
        ({'status': 'closed', 'stage': 'x', 'source': 'auto', 'detail': {},
          'created_at': '2020-01-01T00:00:00Z', 'updated_at': '2020-01-01T00:00:00Z',
          'id': 1, 'work_item_id': 'w', 'task_id': 't', 'agent': 'a', 'repo': 'r'},
         ['agent', 'created_at', 'detail', 'id', 'repo', 'source', 'stage', 'task_id',
          'updated_at', 'work_item_id']),
        ({'status': 'closed', 'colour': 'red'}, ['colour']),
        ({'status': None}, ['status']),
        ({'status': 'Closed', 'attribution': 'x y', 'target_domain': 5,
          'related_task': '', 'suggestion': 's' * 4001}, ['attribution', 'related_task',
                                                         'status', 'suggestion',
                                                         'target_domain']),
        ({}, ['body']),
    ]
    for body, fields in cases:
        r = server.patch(f'/v1/lessons/{lid}', json=body)
        assert r.status_code == 422, body
        assert sorted(e['field'] for e in r.json()['errors']) == fields, body
    msgs = {e['field']: e['message'] for e in server.patch(
        f'/v1/lessons/{lid}', json={'lesson_type': 'x', 'bogus': 1}).json()['errors']}
    assert msgs == {'lesson_type': 'may not be changed', 'bogus': 'unknown field'}
    assert lesson_row(sql, lid) == before


def test_patch_scope_and_missing(server, keys):
    lid = server.post('/v1/lessons', key=keys['service'],
                      json={'lesson_type': 'gate_failure', 'source': 'manual'}).json()['id']
    assert server.patch(f'/v1/lessons/{lid}', key=keys['service'],
                        json={'status': 'closed'}).status_code == 403
    assert server.patch(f'/v1/lessons/{lid}', key=keys['read'],
                        json={'status': 'closed'}).status_code == 403
    r = server.patch('/v1/lessons/987654321', json={'status': 'closed'})
    assert r.status_code == 404 and r.json()['detail'] == 'no such lesson'
    assert server.patch('/v1/lessons/x', json={'status': 'closed'}).status_code == 404


# ---------------------------------------------------------------------------------------
# REST: snapshot


def test_snapshot_counts_match_rows(make_server, fresh_db_url):
    s = make_server(fresh_db_url)
    empty = s.get('/v1/lessons/snapshot').json()
    assert empty == {'enabled': True, 'total': 0, 'by_type': {}, 'by_status': {},
                     'last_24h': 0, 'newest_at': None}
    for t, st in (('gate_failure', 'new'), ('gate_failure', 'closed'), ('merge_hold', 'new'),
                  ('new_kind', 'in_progress'), ('gate_failure', 'new')):
        assert s.post('/v1/lessons', json={'lesson_type': t, 'status': st,
                                           'source': 'manual'}).status_code == 201
    with psycopg.connect(fresh_db_url, autocommit=True) as conn:
        conn.execute("UPDATE lessons SET created_at = now() - interval '25 hours' "
                     "WHERE id = (SELECT min(id) FROM lessons)")
        snap = s.get('/v1/lessons/snapshot').json()
        by_type = dict(conn.execute('SELECT lesson_type, count(*) FROM lessons '
                                    'GROUP BY 1').fetchall())
        by_status = dict(conn.execute('SELECT status, count(*) FROM lessons '
                                      'GROUP BY 1').fetchall())
        recent = conn.execute("SELECT count(*) FROM lessons "
                              "WHERE created_at > now() - interval '24 hours'").fetchone()[0]
        newest = conn.execute('SELECT max(created_at) FROM lessons').fetchone()[0]
    assert snap == {'enabled': True, 'total': 5, 'by_type': by_type, 'by_status': by_status,
                    'last_24h': recent, 'newest_at': iso(newest)}
    assert by_type == {'gate_failure': 3, 'merge_hold': 1, 'new_kind': 1}
    assert recent == 4


# ---------------------------------------------------------------------------------------
# kill switch and a broken table over REST


def test_kill_switch_rest_touches_no_table(make_server, fresh_db_url):
    s = make_server(fresh_db_url, STEWARD_LESSONS_ENABLED='false')
    with psycopg.connect(fresh_db_url, autocommit=True) as conn:
        conn.execute('DROP TABLE lessons')
    r = s.post('/v1/lessons', json={'lesson_type': 'gate_failure', 'source': 'auto'})
    assert r.status_code == 200 and r.json() == {'recorded': False, 'reason': 'disabled'}
    r = s.post('/v1/lessons', json={'lesson_type': 'gate_failure'})
    assert r.status_code == 200 and r.json() == {'recorded': False, 'reason': 'disabled'}
    r = s.get('/v1/lessons?lesson_type=gate_failure&limit=5')
    assert r.status_code == 200
    assert r.json() == {'enabled': False, 'items': [], 'next_cursor': None}
    r = s.patch('/v1/lessons/1', json={'status': 'closed'})
    assert r.status_code == 200 and r.json() == {'updated': False, 'reason': 'disabled'}
    r = s.get('/v1/lessons/snapshot')
    assert r.status_code == 200 and r.json() == {'enabled': False}
    r = s.get('/v1/lessons/1')
    assert r.status_code == 404
    assert 'switched off' in r.json()['detail']
    # input is still checked, without touching anything
    r = s.post('/v1/lessons', json={'lesson_type': 'Bad'})
    assert r.status_code == 422 and r.json()['errors'][0]['field'] == 'lesson_type'
    r = s.patch('/v1/lessons/1', json={'lesson_type': 'x'})
    assert r.status_code == 422
    assert [x for x in s.log_records() if x.get('level') in ('warn', 'error')] == []
    with psycopg.connect(fresh_db_url) as conn:
        assert conn.execute("SELECT to_regclass('lessons')").fetchone()[0] is None


def test_missing_table_while_enabled_is_500_logged_with_request_id(make_server, fresh_db_url):
    s = make_server(fresh_db_url)
    with psycopg.connect(fresh_db_url, autocommit=True) as conn:
        conn.execute('DROP TABLE lessons CASCADE')
    for method, path, body in (('GET', '/v1/lessons', None),
                               ('POST', '/v1/lessons', {'lesson_type': 'x'}),
                               ('GET', '/v1/lessons/snapshot', None),
                               ('GET', '/v1/lessons/1', None),
                               ('PATCH', '/v1/lessons/1', {'status': 'closed'})):
        rid = f'lessons-missing-{method.lower()}-{len(path)}'
        r = s.request(method, path, json=body, headers={'X-Request-Id': rid})
        assert r.status_code == 500, (method, path, r.text)
        assert r.headers['X-Request-Id'] == rid
        assert r.json()['detail'] == 'internal error; the request id is in the logs'
        logged = [x for x in s.log_records()
                  if x.get('level') == 'error' and x.get('request_id') == rid]
        assert logged, (method, path)
    assert any(x.get('sqlstate') == '42P01' for x in s.log_records())
