"""Hello storms (issue 23): concurrent device_hellos are checked in one statement per batch
(STEWARD_WS_HELLO_BATCH) and their first delivery passes run as one statement per group of
users. Each hello still gets its own answer: hello_ok and its user's proposals, unauthorized
(4401) for a bad token, an unknown or a deleted device, unavailable (1013) when the database
is away. Batches are made deterministic by holding a row lock on a device whose hello then
waits inside the statement: every hello arriving meanwhile goes into the next batch."""
import asyncio
import hashlib
import os
import re
import resource
import secrets
import time
import uuid

import psycopg
import pytest
import websockets

from harness.pgcluster import PgCluster, wait_for
from harness.steward import Steward
from test_scouts import Device, run

UNAUTHORIZED = [{'type': 'error', 'code': 'unauthorized'}]
UNAVAILABLE = [{'type': 'error', 'code': 'unavailable'}]


def counter(server, name, labels=''):
    text = server.get('/metrics', key=None).text
    m = re.search(rf'^{re.escape(name + labels)} (\d+)$', text, re.M)
    assert m, f'{name}{labels} not in /metrics'
    return int(m.group(1))


def hellos_in(server):
    return counter(server, 'ws_frames_total', '{direction="in",type="device_hello"}')


def mk_users(sql, n, tag, proposals=True):
    """n users with one device each (and one queued proposal each): [(user, device, token,
    proposal id)]."""
    users = [f'hb-{tag}-{i}' for i in range(n)]
    tokens = [f'dev_{secrets.token_hex(32)}' for _ in range(n)]
    with sql.cursor() as cur:
        cur.execute(
            "INSERT INTO devices (user_id, name, token_hash) SELECT u, 'storm', h "
            "FROM unnest(%s::text[], %s::text[]) AS t(u, h)",
            (users, [hashlib.sha256(t.encode()).hexdigest() for t in tokens]))
        if proposals:
            cur.execute(
                "INSERT INTO proposals (scout_id, user_id, source_type, source_msg_ref, "
                "raw_subject, raw_snippet, expires_at) SELECT gen_random_uuid(), u, 'gmail', "
                "'own-' || u, 'subject', 'snippet', now() + interval '1 day' "
                "FROM unnest(%s::text[]) u", (users,))
    devs = dict(sql.execute("SELECT user_id, id::text FROM devices WHERE user_id LIKE %s",
                            (f'hb-{tag}-%',)).fetchall())
    pids = dict(sql.execute("SELECT user_id, id::text FROM proposals WHERE user_id LIKE %s",
                            (f'hb-{tag}-%',)).fetchall())
    return [(u, devs[u], t, pids.get(u)) for u, t in zip(users, tokens)]


async def connect(server):
    return Device(await websockets.connect(server.ws_url, max_size=2 ** 20, ping_interval=None))


async def hello(d, device_id, token):
    await d.send({'type': 'device_hello', 'device_id': device_id, 'token': token})


def steward_waits_on_lock(db_url):
    """True once a backend of steward waits for a row lock in the hello statement."""
    with psycopg.connect(db_url, autocommit=True) as c:
        return c.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                         "AND query LIKE '%%FOR UPDATE OF d%%'").fetchone()[0] > 0


def wait_hellos(server, target):
    assert wait_for(lambda: hellos_in(server) >= target, timeout=10)
    time.sleep(0.1)  # from the service thread into the pending list


# ------------------------------------------------------------------------ storm


def test_storm_of_1000_hellos_costs_few_statements(make_server, fresh_db_url):
    """1,000 devices of 1,000 users, each user with one queued proposal, say hello at once:
    every device gets hello_ok and exactly its own proposal, and the token checks and first
    passes take far fewer statements than hellos."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    n = 1000
    srv = make_server(fresh_db_url)
    with psycopg.connect(fresh_db_url, autocommit=True) as sql:
        people = mk_users(sql, n, uuid.uuid4().hex[:8])
    h0 = counter(srv, 'ws_hello_statements_total')
    p0 = counter(srv, 'scouts_pass_statements_total')

    async def body():
        sem = asyncio.Semaphore(200)

        async def open_one():
            async with sem:
                return await connect(srv)

        conns = await asyncio.gather(*(open_one() for _ in range(n)))
        # every socket open first, then all hellos at once
        await asyncio.gather(*(hello(c, dev, tok) for c, (_, dev, tok, _) in zip(conns, people)))

        async def answer(c):
            return await c.recv(timeout=60), await c.proposal(timeout=60)

        got = await asyncio.gather(*(answer(c) for c in conns))
        for (ok, prop), (user, _, _, pid) in zip(got, people):
            assert ok['type'] == 'hello_ok', ok
            assert prop['id'] == pid and prop['source_msg_ref'] == f'own-{user}'
        # nothing else for anyone
        extra = await asyncio.gather(*(c.nothing(0.5) for c in conns))
        assert extra == [None] * n
        with psycopg.connect(fresh_db_url, autocommit=True) as sql:
            # held by this instance, whose presence lease runs
            assert sql.execute("SELECT count(*) FROM devices d JOIN device_hosts h "
                               "ON h.instance = d.host WHERE h.lease_until > now()"
                               ).fetchone()[0] == n
        await asyncio.gather(*(c.close() for c in conns))

    run(body())
    hellos = counter(srv, 'ws_hello_statements_total') - h0
    passes = counter(srv, 'scouts_pass_statements_total') - p0
    print(f'\n{n} hellos: {hellos} hello statements, {passes} pass statements')
    assert 1 <= hellos < 300, hellos
    assert 1 <= passes < 300, passes
    with psycopg.connect(fresh_db_url, autocommit=True) as sql:
        assert sql.execute("SELECT count(*) FROM proposals WHERE status = 'delivered' "
                           "AND delivery_attempts = 1").fetchone()[0] == n


def test_catch_up_after_listener_reconnect_is_grouped(make_server, fresh_db_url):
    """300 connected devices of 300 users, each user then given a proposal nobody was told
    about: when the notification listener reconnects, its catch-up delivers each device its
    own proposal in a couple of grouped pass statements, not one per user."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    n = 300
    srv = make_server(fresh_db_url)
    with psycopg.connect(fresh_db_url, autocommit=True) as sql:
        people = mk_users(sql, n, uuid.uuid4().hex[:8], proposals=False)

    async def body():
        sem = asyncio.Semaphore(100)

        async def one(dev, tok):
            async with sem:
                return await Device.hello(srv, {'device_id': dev, 'token': tok})

        conns = await asyncio.gather(*(one(dev, tok) for _, dev, tok, _ in people))
        # hello_ok goes out before the batch's pass: wait for the last passes to be over
        last = -1
        while (now := counter(srv, 'scouts_pass_statements_total')) != last:
            last = now
            await asyncio.sleep(0.5)
        with psycopg.connect(fresh_db_url, autocommit=True) as sql:
            # queued without a notification: only a catch-up finds them
            pids = dict(sql.execute(
                "INSERT INTO proposals (scout_id, user_id, source_type, source_msg_ref, "
                "expires_at) SELECT gen_random_uuid(), u, 'gmail', 'late-' || u, "
                "now() + interval '1 day' FROM unnest(%s::text[]) u RETURNING user_id, id::text",
                ([u for u, _, _, _ in people],)).fetchall())
            await asyncio.gather(*(c.nothing(0.5) for c in conns[:20]))
            p0 = counter(srv, 'scouts_pass_statements_total')
            listeners = sql.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                "datname = current_database() AND query LIKE 'LISTEN%%' "
                "AND pid <> pg_backend_pid()").fetchall()
            assert listeners
        got = await asyncio.gather(*(c.proposal(timeout=20) for c in conns))
        for p, (user, _, _, _) in zip(got, people):
            assert p['id'] == pids[user] and p['source_msg_ref'] == f'late-{user}'
        passes = counter(srv, 'scouts_pass_statements_total') - p0
        print(f'\ncatch-up of {n} users: {passes} pass statements')
        assert 1 <= passes <= 6, passes
        await asyncio.gather(*(c.close() for c in conns))

    run(body())


# ------------------------------------------------------------------------ mixed batches


@pytest.fixture
def batch_server(make_server, fresh_db_url):
    return make_server(fresh_db_url), fresh_db_url


def test_mixed_batch_each_hello_gets_its_own_answer(batch_server):
    """One batch holding two good hellos, a wrong token, an unknown device and a device
    deleted while the batch's statement waits for its row: the good ones get hello_ok and
    their own proposal, the others unauthorized (4401); exactly two hello statements ran."""
    srv, db_url = batch_server
    with psycopg.connect(db_url, autocommit=True) as sql:
        (_, blocker, btok, bpid), (u1, d1, t1, p1), (u2, d2, t2, p2), (_, bad, _, _), \
            (_, gone, gtok, _) = mk_users(sql, 5, uuid.uuid4().hex[:8])
    h0 = counter(srv, 'ws_hello_statements_total')
    r0 = counter(srv, 'ws_hello_rejected_total', '{reason="bad_token"}')
    lock = psycopg.connect(db_url)
    deleter = psycopg.connect(db_url)

    async def body():
        conns = [await connect(srv) for _ in range(6)]
        n0 = hellos_in(srv)
        # batch 1: the blocker, whose row another transaction holds
        lock.execute('SELECT 1 FROM devices WHERE id = %s FOR UPDATE', (blocker,))
        await hello(conns[0], blocker, btok)
        assert wait_for(lambda: steward_waits_on_lock(db_url), timeout=10)
        # batch 2 gathers meanwhile
        await hello(conns[1], d1, t1)
        await hello(conns[2], bad, 'dev_not-the-token')
        await hello(conns[3], str(uuid.uuid4()), 'dev_whatever')
        await hello(conns[4], gone, gtok)
        await hello(conns[5], d2, t2)
        wait_hellos(srv, n0 + 6)
        # the deleted device: its row is deleted (not committed yet) before batch 2 runs, so
        # batch 2's statement waits for it and then finds it gone
        deleter.execute('DELETE FROM devices WHERE id = %s', (gone,))
        lock.commit()
        assert (await conns[0].recv())['type'] == 'hello_ok'
        assert (await conns[0].proposal())['id'] == bpid
        assert wait_for(lambda: steward_waits_on_lock(db_url), timeout=10)
        deleter.commit()
        for i, pid in ((1, p1), (5, p2)):
            assert (await conns[i].recv())['type'] == 'hello_ok'
            assert (await conns[i].proposal())['id'] == pid
        for i in (2, 3, 4):
            code, frames = await conns[i].closed()
            assert frames == UNAUTHORIZED and code == 4401, (i, code, frames)
        for i in (0, 1, 5):
            await conns[i].nothing(0.3)
            await conns[i].close()

    try:
        run(body())
    finally:
        lock.close()
        deleter.close()
    assert counter(srv, 'ws_hello_statements_total') - h0 == 2
    assert counter(srv, 'ws_hello_rejected_total', '{reason="bad_token"}') - r0 == 3


def test_two_sockets_of_one_device_in_one_batch(batch_server):
    """Two sockets of one device with its token and a third with a wrong one, in one batch:
    both good sockets get hello_ok and the user's proposal (each session its own window), the
    third unauthorized."""
    srv, db_url = batch_server
    with psycopg.connect(db_url, autocommit=True) as sql:
        (_, blocker, btok, bpid), (_, dev, tok, pid) = mk_users(sql, 2, uuid.uuid4().hex[:8])
    h0 = counter(srv, 'ws_hello_statements_total')
    lock = psycopg.connect(db_url)

    async def body():
        conns = [await connect(srv) for _ in range(4)]
        n0 = hellos_in(srv)
        lock.execute('SELECT 1 FROM devices WHERE id = %s FOR UPDATE', (blocker,))
        await hello(conns[0], blocker, btok)
        assert wait_for(lambda: steward_waits_on_lock(db_url), timeout=10)
        await hello(conns[1], dev, tok)
        await hello(conns[2], dev, 'dev_wrong')
        await hello(conns[3], dev.upper(), tok)  # the same device, spelt in capitals
        wait_hellos(srv, n0 + 4)
        lock.commit()
        assert (await conns[0].recv())['type'] == 'hello_ok'
        assert (await conns[0].proposal())['id'] == bpid
        sids = set()
        for i in (1, 3):
            ok = await conns[i].recv()
            assert ok['type'] == 'hello_ok', ok
            sids.add(ok['session_id'])
            assert (await conns[i].proposal())['id'] == pid
        assert len(sids) == 2
        code, frames = await conns[2].closed()
        assert frames == UNAUTHORIZED and code == 4401
        for i in (0, 1, 3):
            await conns[i].nothing(0.3)
            await conns[i].close()

    try:
        run(body())
    finally:
        lock.close()
    assert counter(srv, 'ws_hello_statements_total') - h0 == 2


# ------------------------------------------------------------------------ database away


@pytest.fixture
def own_pg():
    """A cluster of its own: the test stops it."""
    cluster = PgCluster(port=7000 + os.getpid() % 1000)
    cluster.start()
    yield cluster
    cluster.destroy()


def test_database_stopped_during_a_batch(own_pg):
    """PostgreSQL stops while a batch's statement runs and the next batch waits: every hello
    of both gets unavailable and close 1013, the instance keeps serving and, once the
    database is back, a hello succeeds."""
    db_url = own_pg.createdb('hellobatch')
    srv = Steward(db_url, STEWARD_DB_ACQUIRE_TIMEOUT_MS='500')
    try:
        with psycopg.connect(db_url, autocommit=True) as sql:
            people = mk_users(sql, 21, uuid.uuid4().hex[:8], proposals=False)
        r0 = counter(srv, 'ws_hello_rejected_total', '{reason="unavailable"}')
        lock = psycopg.connect(db_url)

        async def body():
            conns = [await connect(srv) for _ in people]
            n0 = hellos_in(srv)
            lock.execute('SELECT 1 FROM devices WHERE id = %s FOR UPDATE', (people[0][1],))
            await hello(conns[0], people[0][1], people[0][2])
            assert wait_for(lambda: steward_waits_on_lock(db_url), timeout=10)
            for c, (_, dev, tok, _) in zip(conns[1:], people[1:]):
                await hello(c, dev, tok)
            wait_hellos(srv, n0 + len(people))
            own_pg.stop('fast')
            answers = await asyncio.gather(*(c.closed(timeout=15) for c in conns))
            for code, frames in answers:
                assert frames == UNAVAILABLE and code == 1013, (code, frames)

        try:
            run(body())
        finally:
            try:
                lock.close()
            except psycopg.Error:
                pass
        assert counter(srv, 'ws_hello_rejected_total', '{reason="unavailable"}') - r0 == 21
        own_pg.start()

        async def again():
            d = await Device.hello(srv, {'device_id': people[0][1], 'token': people[0][2]})
            await d.close()

        deadline = time.monotonic() + 20
        while True:
            try:
                run(again())
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
    finally:
        status = srv.stop()
        assert not srv.sanitizer_reports()
        assert status == 0
