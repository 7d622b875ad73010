"""Ack storms (issue 23): concurrent scout_proposal_acks are taken in one statement per batch
(up to STEWARD_WS_HELLO_BATCH acks), and each ack still gets the answer it got alone: ack_ok
(also for a proposal acked before, or twice in the batch), not_found for an unknown id or
another user's proposal, unavailable when the database is away; a flip tells the user's other
devices here once. Batches are made deterministic by holding a row lock on a proposal whose
ack then waits inside the statement: every ack arriving meanwhile goes into the next batch."""
import asyncio
import hashlib
import os
import resource
import secrets
import time
import uuid

import psycopg
import pytest

from harness.pgcluster import PgCluster, wait_for
from harness.steward import Steward
from test_scouts import Device, run
from test_scouts_hello_batch import connect, counter, hello, mk_users


def acks_in(server):
    return counter(server, 'ws_frames_total', '{direction="in",type="scout_proposal_ack"}')


def ack_statements(server):
    return counter(server, 'ws_ack_statements_total')


def steward_waits_on_lock(db_url):
    """True once a backend of steward waits for a row lock in an ack statement (the batch's
    or the one-ack form, both set acked_device_id)."""
    with psycopg.connect(db_url, autocommit=True) as c:
        return c.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                         "AND query LIKE '%%acked_device_id%%'").fetchone()[0] > 0


def wait_acks(server, target):
    assert wait_for(lambda: acks_in(server) >= target, timeout=10)
    time.sleep(0.1)  # from the service thread into the pending list


def ok(pid):
    return {'type': 'ack_ok', 'proposal_id': pid}


def not_found(pid):
    return {'type': 'error', 'code': 'not_found', 'proposal_id': pid}


def unavailable(pid):
    return {'type': 'error', 'code': 'unavailable', 'proposal_id': pid}


def resolved(pid):
    return {'type': 'scout_proposal_resolved', 'proposal_id': pid}


def state(sql, pid):
    return sql.execute("SELECT status, acked_device_id::text, acked_at, raw_subject, "
                       "delivery_attempts FROM proposals WHERE id = %s", (pid,)).fetchone()


async def online(server, people):
    """Every device of people says hello and gets its own proposal: [Device]."""
    sem = asyncio.Semaphore(100)

    async def one(dev, tok, pid):
        async with sem:
            d = await Device.hello(server, {'device_id': dev, 'token': tok})
            assert (await d.proposal(timeout=60))['id'] == pid
            return d

    return await asyncio.gather(*(one(dev, tok, pid) for _, dev, tok, pid in people))


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ------------------------------------------------------------------------ storm


def test_storm_of_500_acks_costs_few_statements(make_server, fresh_db_url):
    """500 devices of 500 users, each with its proposal delivered, ack at once: every ack gets
    ack_ok, every proposal ends acked by its device, and the acks take far fewer statements
    than acks."""
    raise_nofile()
    n = 500
    srv = make_server(fresh_db_url)
    with psycopg.connect(fresh_db_url, autocommit=True) as sql:
        people = mk_users(sql, n, uuid.uuid4().hex[:8])

    async def body():
        conns = await online(srv, people)
        a0 = ack_statements(srv)
        await asyncio.gather(*(c.ack(pid) for c, (_, _, _, pid) in zip(conns, people)))
        got = await asyncio.gather(*(c.recv(timeout=60) for c in conns))
        assert got == [ok(pid) for _, _, _, pid in people]
        extra = await asyncio.gather(*(c.nothing(0.5) for c in conns))
        assert extra == [None] * n
        stmts = ack_statements(srv) - a0
        await asyncio.gather(*(c.close() for c in conns))
        return stmts

    stmts = run(body())
    print(f'\n{n} acks: {stmts} ack statements')
    assert 1 <= stmts < 150, stmts
    with psycopg.connect(fresh_db_url, autocommit=True) as sql:
        rows = sql.execute("SELECT p.user_id, p.status, p.acked_device_id::text = d.id::text "
                           "FROM proposals p JOIN devices d ON d.user_id = p.user_id "
                           "WHERE p.user_id = ANY(%s)", ([u for u, _, _, _ in people],)).fetchall()
        assert len(rows) == n
        assert all(st == 'acked' and mine for _, st, mine in rows), rows[:5]


def proposals_read(sql):
    """(sequential scans, tuples updated) of the proposals table, as flushed so far."""
    return sql.execute("SELECT seq_scan, n_tup_upd FROM pg_stat_user_tables "
                       "WHERE relname = 'proposals'").fetchone()


def test_acks_find_proposals_by_key_only(make_server, fresh_db_url):
    """Acks look proposals up by primary key and never read the whole table: with 10,000 acked
    proposals of other users stored and fresh statistics (under which the planner once hashed
    a batch of acks against a scan of every proposal, guessing 100 acks per batch), 200 acks
    leave the table's count of sequential scans where it was, and every ack is applied."""
    raise_nofile()
    n = 200
    srv = make_server(fresh_db_url)
    with psycopg.connect(fresh_db_url, autocommit=True) as sql:
        sql.execute("INSERT INTO proposals (scout_id, user_id, source_type, source_msg_ref, "
                    "expires_at, status, delivered_at, acked_at) SELECT gen_random_uuid(), "
                    "'old-' || (i % 500), 'gmail', 'old-' || i, now() + interval '1 day', "
                    "'acked', now(), now() FROM generate_series(1, 10000) i")
        people = mk_users(sql, n, uuid.uuid4().hex[:8])
        sql.execute("ANALYZE proposals")

    async def body():
        conns = await online(srv, people)
        with psycopg.connect(fresh_db_url, autocommit=True) as sql:
            # every backend's statistics are flushed within a second or two of going idle
            assert wait_for(lambda: proposals_read(sql)[1] >= n, timeout=15)
            time.sleep(2)
            scans0, upd0 = proposals_read(sql)
            await asyncio.gather(*(c.ack(pid) for c, (_, _, _, pid) in zip(conns, people)))
            got = await asyncio.gather(*(c.recv(timeout=60) for c in conns))
            assert got == [ok(pid) for _, _, _, pid in people]
            assert wait_for(lambda: proposals_read(sql)[1] >= upd0 + n, timeout=15)
            time.sleep(2)
            scans, upd = proposals_read(sql)
            assert (scans - scans0, upd - upd0) == (0, n)
            acked = sql.execute("SELECT count(*) FROM proposals WHERE status = 'acked' "
                                "AND user_id = ANY(%s)", ([u for u, _, _, _ in people],))
            assert acked.fetchone()[0] == n
        await asyncio.gather(*(c.close() for c in conns))

    run(body())


# ------------------------------------------------------------------------ mixed batches


@pytest.fixture
def batch_server(make_server, fresh_db_url):
    return make_server(fresh_db_url), fresh_db_url


def block(lock, pid):
    lock.execute('SELECT 1 FROM proposals WHERE id = %s FOR UPDATE', (pid,))


def test_mixed_batch_each_ack_gets_its_own_answer(batch_server):
    """One batch holding, from one session, a good ack, an unknown proposal id, another user's
    proposal (which that user acks in the same batch), the same good ack again and an ack of
    a proposal acked before: each gets the answer it got alone, in arrival order, and exactly
    two ack statements ran for the two batches."""
    srv, db_url = batch_server
    with psycopg.connect(db_url, autocommit=True) as sql:
        (_, _, _, zp), (ua, da, _, pa1), (_, db_, _, pb) = people = \
            mk_users(sql, 3, uuid.uuid4().hex[:8])
        pa2 = sql.execute(
            "INSERT INTO proposals (scout_id, user_id, source_type, source_msg_ref, "
            "raw_subject, raw_snippet, expires_at, triaged_at) SELECT gen_random_uuid(), %s, "
            "'gmail', 'second', 's', 's', now() + interval '1 day', now() + interval '1 s' "
            "RETURNING id::text", (ua,)).fetchone()[0]
    lock = psycopg.connect(db_url)

    async def body():
        z, a, b = await online(srv, people)
        assert (await a.proposal())['id'] == pa2
        await a.ack(pa2)
        assert await a.recv() == ok(pa2)
        with psycopg.connect(db_url, autocommit=True) as sql:
            before = state(sql, pa2)
        s0, n0 = ack_statements(srv), acks_in(srv)
        # batch 1: z's ack, whose proposal another transaction holds
        block(lock, zp)
        await z.ack(zp)
        assert wait_for(lambda: steward_waits_on_lock(db_url), timeout=10)
        # batch 2 gathers meanwhile
        unknown = str(uuid.uuid4())
        for pid in (pa1, unknown, pb, pa1.upper(), pa2):
            await a.ack(pid)
        await b.ack(pb)
        wait_acks(srv, n0 + 7)
        lock.commit()
        assert await z.recv() == ok(zp)
        assert [await a.recv() for _ in range(5)] == \
            [ok(pa1), not_found(unknown), not_found(pb), ok(pa1), ok(pa2)]
        assert await b.recv() == ok(pb)
        for d in (z, a, b):
            await d.nothing(0.3)
        assert ack_statements(srv) - s0 == 2
        with psycopg.connect(db_url, autocommit=True) as sql:
            assert state(sql, pa1)[:2] == ('acked', da)
            assert state(sql, pb)[:2] == ('acked', db_)
            assert state(sql, pa2) == before  # acked before: untouched
        for d in (z, a, b):
            await d.close()

    try:
        run(body())
    finally:
        lock.close()


def test_two_sessions_of_one_user_ack_one_proposal_in_one_batch(batch_server):
    """Two devices of one user ack the same proposal in one batch: the first flips it (once:
    acked by that device, delivery state consistent), both get ack_ok, and the other device
    hears scout_proposal_resolved exactly once, before its own ack_ok."""
    srv, db_url = batch_server
    with psycopg.connect(db_url, autocommit=True) as sql:
        (_, _, _, zp), (user, d1, t1, pid) = people = mk_users(sql, 2, uuid.uuid4().hex[:8])
        t2 = f'dev_{secrets.token_hex(32)}'
        d2 = sql.execute("INSERT INTO devices (user_id, name, token_hash) VALUES (%s, 'two', %s) "
                         "RETURNING id::text",
                         (user, hashlib.sha256(t2.encode()).hexdigest())).fetchone()[0]
    r0 = counter(srv, 'ws_frames_total', '{direction="out",type="scout_proposal_resolved"}')
    lock = psycopg.connect(db_url)

    async def body():
        z, one = await online(srv, people)
        two = await Device.hello(srv, {'device_id': d2, 'token': t2})
        assert (await two.proposal())['id'] == pid
        with psycopg.connect(db_url, autocommit=True) as sql:
            attempts = state(sql, pid)[4]
        s0, n0 = ack_statements(srv), acks_in(srv)
        block(lock, zp)
        await z.ack(zp)
        assert wait_for(lambda: steward_waits_on_lock(db_url), timeout=10)
        await one.ack(pid)
        await two.ack(pid)
        wait_acks(srv, n0 + 3)
        lock.commit()
        assert await z.recv() == ok(zp)
        assert await one.recv() == ok(pid)
        assert [await two.recv(), await two.recv()] == [resolved(pid), ok(pid)]
        for d in (z, one, two):
            await d.nothing(0.4)
        assert ack_statements(srv) - s0 == 2
        with psycopg.connect(db_url, autocommit=True) as sql:
            st, by, acked_at, subject, tries = state(sql, pid)
            assert (st, by, subject, tries) == ('acked', d1, None, attempts)
            assert acked_at is not None
        for d in (z, one, two):
            await d.close()

    try:
        run(body())
    finally:
        lock.close()
    assert counter(srv, 'ws_frames_total',
                   '{direction="out",type="scout_proposal_resolved"}') - r0 == 1


# ------------------------------------------------------------------------ database away


@pytest.fixture
def own_pg():
    """A cluster of its own: the test stops it."""
    cluster = PgCluster(port=7000 + (os.getpid() + 500) % 1000)
    cluster.start()
    yield cluster
    cluster.destroy()


def test_database_stopped_during_an_ack_batch(own_pg):
    """PostgreSQL stops while a batch's statement runs and the next batch waits: every ack of
    both gets unavailable (sessions stay open), nothing is acked, the instance keeps serving
    and, once the database is back, acking again works."""
    db_url = own_pg.createdb('ackbatch')
    srv = Steward(db_url, STEWARD_DB_ACQUIRE_TIMEOUT_MS='500')
    try:
        with psycopg.connect(db_url, autocommit=True) as sql:
            people = mk_users(sql, 21, uuid.uuid4().hex[:8])
        lock = psycopg.connect(db_url)

        async def body():
            conns = await online(srv, people)
            n0 = acks_in(srv)
            block(lock, people[0][3])
            await conns[0].ack(people[0][3])
            assert wait_for(lambda: steward_waits_on_lock(db_url), timeout=10)
            for c, (_, _, _, pid) in zip(conns[1:], people[1:]):
                await c.ack(pid)
            wait_acks(srv, n0 + len(people))
            own_pg.stop('fast')
            got = await asyncio.gather(*(c.recv(timeout=15) for c in conns))
            assert got == [unavailable(pid) for _, _, _, pid in people]
            own_pg.start()
            # the same sessions ack again once the database answers
            deadline = time.monotonic() + 20
            for c, (_, _, _, pid) in zip(conns, people):
                while True:
                    await c.ack(pid)
                    m = await c.recv(timeout=15)
                    if m == ok(pid):
                        break
                    assert m == unavailable(pid) and time.monotonic() < deadline, m
                    await asyncio.sleep(0.3)
            for c in conns:
                await c.nothing(0.2)
                await c.close()

        try:
            run(body())
        finally:
            try:
                lock.close()
            except psycopg.Error:
                pass
        with psycopg.connect(db_url, autocommit=True) as sql:
            assert sql.execute("SELECT count(*) FROM proposals WHERE status = 'acked' "
                               "AND id = ANY(%s::uuid[])",
                               ([p for _, _, _, p in people],)).fetchone()[0] == len(people)
    finally:
        status = srv.stop()
        assert not srv.sanitizer_reports()
        assert status == 0


def test_acks_beyond_the_queue_bound_are_refused(make_server, fresh_db_url):
    """With STEWARD_WORKER_QUEUE_MAX=2 and one batch's statement waiting on a lock, two more
    acks wait for the next batch and a third is refused: unavailable and close 1013, counted
    in ws_work_refused_total; the waiting ones are answered ack_ok once the lock goes."""
    srv = make_server(fresh_db_url, STEWARD_WORKER_QUEUE_MAX='2')
    db_url = fresh_db_url
    with psycopg.connect(db_url, autocommit=True) as sql:
        people = mk_users(sql, 4, uuid.uuid4().hex[:8])
    f0 = counter(srv, 'ws_work_refused_total')
    lock = psycopg.connect(db_url)

    async def body():
        conns = await online(srv, people)
        pids = [pid for _, _, _, pid in people]
        n0 = acks_in(srv)
        block(lock, pids[0])
        await conns[0].ack(pids[0])
        assert wait_for(lambda: steward_waits_on_lock(db_url), timeout=10)
        await conns[1].ack(pids[1])
        await conns[2].ack(pids[2])
        wait_acks(srv, n0 + 3)
        await conns[3].ack(pids[3])
        code, frames = await conns[3].closed()
        assert (code, frames) == (1013, [{'type': 'error', 'code': 'unavailable'}])
        lock.commit()
        for c, pid in zip(conns[:3], pids):
            assert await c.recv() == ok(pid)
            await c.nothing(0.2)
            await c.close()
        with psycopg.connect(db_url, autocommit=True) as sql:
            assert state(sql, pids[3])[0] == 'delivered'

    try:
        run(body())
    finally:
        lock.close()
    assert counter(srv, 'ws_work_refused_total') - f0 == 1
