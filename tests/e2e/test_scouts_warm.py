"""Warming of the database connections for proposal ingest and delivery: at start and
after the database came back, every pooled connection is opened and the ingest and
delivery statements run on it once with inputs that match nothing, so the first
proposals do not pay for cold connections; nothing is written by it."""
import time

import psycopg

from harness.steward import ADMIN_KEY
from test_scouts import Device, ingest, mk_device, mk_scout, run

TABLES = ('scouts', 'devices', 'proposals', 'lessons')


def warm_lines(server):
    return [r for r in server.log_records() if r.get('msg') == 'database connections warmed']


def wait_warm_lines(server, n, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = warm_lines(server)
        if len(lines) >= n:
            return lines
        time.sleep(0.05)
    raise AssertionError(f'fewer than {n} warm-up lines: {warm_lines(server)}')


def pool_backends(db_url):
    with psycopg.connect(db_url, autocommit=True) as c:
        return c.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'steward' "
                         "AND datname = current_database()").fetchone()[0]


def row_counts(db_url):
    with psycopg.connect(db_url, autocommit=True) as c:
        return {t: c.execute(f'SELECT count(*) FROM {t}').fetchone()[0] for t in TABLES}


def test_every_pooled_connection_is_warmed_at_start_and_nothing_is_written(make_server, fresh_db_url):
    srv = make_server(fresh_db_url, STEWARD_DB_POOL_SIZE=5)
    lines = wait_warm_lines(srv, 1)
    assert lines[0]['level'] == 'info', lines
    assert lines[0]['connections'] == 5, lines
    assert 'error' not in lines[0], lines
    # every connection of the pool is open before any request asked for one
    assert pool_backends(fresh_db_url) == 5
    assert row_counts(fresh_db_url) == {t: 0 for t in TABLES}
    assert srv.get('/v1/status').status_code == 200


def test_warmed_again_after_the_database_came_back_and_delivery_works(make_server, fresh_db_url):
    srv = make_server(fresh_db_url, STEWARD_DB_POOL_SIZE=4)
    wait_warm_lines(srv, 1)
    scout = mk_scout(srv, 'warm-user')
    dev = mk_device(srv, 'warm-user')
    with psycopg.connect(fresh_db_url, autocommit=True) as c:
        killed = c.execute(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name IN ('steward', 'steward-listen') "
            "AND datname = current_database() AND pid <> pg_backend_pid()) k").fetchone()[0]
    assert killed >= 2
    lines = wait_warm_lines(srv, 2)
    assert lines[1]['connections'] == 4 and 'error' not in lines[1], lines
    assert pool_backends(fresh_db_url) == 4

    async def go():
        d = await Device.hello(srv, dev)
        r = ingest(srv, ADMIN_KEY, scout['id'], 'warm-1')
        assert r.status_code == 201, r.text
        p = await d.proposal()
        assert p['source_msg_ref'] == 'warm-1'
        await d.ack(p['id'])
        m = await d.recv()
        assert m == {'type': 'ack_ok', 'proposal_id': p['id']}, m
        await d.nothing()
        await d.ws.close()

    run(go())
