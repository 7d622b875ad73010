"""Concurrent single ingests (POST /v1/scouts/{id}/items) are written together: one
statement, one transaction and one commit for the ingests waiting at once, so that their
notifications wake every instance's listener once per group rather than once per item
(docs/architecture.md, "An ingest"). Each caller still gets its own item's answer."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg

from test_scouts import ingest, mk_scout
from test_scouts_hello_batch import counter


def test_concurrent_ingests_share_statements_and_each_gets_its_own_answer(server, keys, db_url):
    users = [f'ig-{i}-{time.monotonic_ns()}' for i in range(30)]
    scouts = [mk_scout(server, u)['id'] for u in users]
    off = mk_scout(server, f'ig-off-{time.monotonic_ns()}')['id']
    r = server.request('PATCH', f'/v1/scouts/{off}', json={'enabled': False})
    assert r.status_code == 200, r.text
    unknown = '00000000-0000-4000-8000-000000000001'
    # 240 distinct items, 40 of them sent twice at once, 10 to a disabled scout and 10 to
    # an unknown one
    work = [(scouts[i % 30], f'ref-{i}') for i in range(240)]
    work += [(scouts[i % 30], f'ref-{i}') for i in range(40)]
    work += [(off, f'off-{i}') for i in range(10)] + [(unknown, f'unk-{i}') for i in range(10)]
    before = counter(server, 'scouts_ingest_statements_total')

    # A lock on proposals holds the first group's statement, so that the others queue
    # behind it and form groups (as they do when the database is busy).
    hold = psycopg.connect(db_url)
    hold.execute('LOCK TABLE proposals IN SHARE ROW EXCLUSIVE MODE')
    release = threading.Timer(1.5, hold.rollback)
    release.start()
    with ThreadPoolExecutor(max_workers=64) as pool:
        answers = list(pool.map(lambda w: ingest(server, keys['service'], w[0], w[1]), work))
    release.join()
    hold.close()
    statements = counter(server, 'scouts_ingest_statements_total') - before

    by_item = {}
    for (scout, ref), r in zip(work, answers):
        if scout == off:
            assert r.status_code == 409, r.text
            continue
        if scout == unknown:
            assert r.status_code == 404, r.text
            continue
        assert r.status_code in (200, 201), r.text
        by_item.setdefault((scout, ref), []).append((r.status_code, r.json()))
    assert len(by_item) == 240
    for (scout, ref), got in by_item.items():
        codes = sorted(c for c, _ in got)
        ids = {b['proposal_id'] for _, b in got}
        # one proposal per item; the second sending of an item is a duplicate of it
        assert len(ids) == 1, got
        assert codes == ([200, 201] if int(ref.split('-')[1]) < 40 else [201]), got
        for c, b in got:
            assert b == ({'queued': True, 'proposal_id': b['proposal_id']} if c == 201 else
                         {'queued': False, 'reason': 'duplicate', 'proposal_id': b['proposal_id']})
    with psycopg.connect(db_url, autocommit=True) as sql:
        rows = sql.execute('SELECT scout_id::text, source_msg_ref, id::text FROM proposals '
                           'WHERE scout_id = ANY(%s::uuid[])', (scouts,)).fetchall()
    assert {(s, r): i for s, r, i in rows} == {k: v[0][1]['proposal_id'] for k, v in by_item.items()}
    # 300 requests, written in fewer statements (one per group; at most
    # STEWARD_HTTP_THREADS, 4 here, wait at once); one per request without groups
    assert statements < 260, statements


def test_a_lone_ingest_is_not_delayed(server, keys):
    s = mk_scout(server, f'ig-lone-{time.monotonic_ns()}')['id']
    ingest(server, keys['service'], s, 'warm')
    t0 = time.monotonic()
    r = ingest(server, keys['service'], s, 'lone')
    took = time.monotonic() - t0
    assert r.status_code == 201 and r.json()['queued'] is True
    assert took < 0.5, took
