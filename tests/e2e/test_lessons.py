"""Lessons journal (SPEC 3, issue 3) against a real PostgreSQL: REST routes, the kill
switch, dedup under concurrency, validation, PATCH rules, the snapshot, and the
never-raise internal C API (driven through the test_lessons helper binary)."""
import json
import os
import subprocess
import threading

import psycopg
import pytest

from harness.steward import binary

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
