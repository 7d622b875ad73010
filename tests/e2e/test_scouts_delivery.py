"""Item ingest in one round trip and delivery passes that fetch and mark in one statement
(docs/protocol.md): the order of the ingest rules, concurrent ingest counted in answers, rows and
frames, and the in-flight window rules with several sessions of one user."""
import asyncio
import concurrent.futures
import random
import re
import time

import psycopg

from harness.steward import ADMIN_KEY
from test_scouts import Device, ingest, mk_device, mk_scout, row, run, uid


def queued_total(server):
    text = server.get('/metrics', key=None).text
    return int(re.search(r'^proposals_total\{event="queued"\} (\d+)$', text, re.M).group(1))


def attempts(sql, pid):
    return row(sql, pid)[1]


def test_ingest_rule_order(server, keys, sql):
    """Scout, then disabled, then spam, then duplicate, then pause; only a new item counts."""
    user = uid()
    s = mk_scout(server, user, auto_trash_spam=True)
    k = keys['service']
    before = queued_total(server)
    r = ingest(server, k, s['id'], 'm-1')
    assert r.status_code == 201
    pid = r.json()['proposal_id']
    assert r.json() == {'queued': True, 'proposal_id': pid}
    # source_type defaults to the scout's provider
    assert sql.execute('SELECT source_type, user_id, scout_id::text FROM proposals WHERE id = %s',
                       (pid,)).fetchone() == ('gmail', user, s['id'])

    # the user's only device has not been seen for 8 days: paused, but a repeat of an item
    # already queued is still a duplicate and spam is still spam
    dev = mk_device(server, user)
    sql.execute("UPDATE devices SET last_seen_at = now() - interval '8 days' WHERE id = %s",
                (dev['device_id'],))
    r = ingest(server, k, s['id'], 'm-1')
    assert r.status_code == 200
    assert r.json() == {'queued': False, 'reason': 'duplicate', 'proposal_id': pid}
    r = ingest(server, k, s['id'], 'm-2')
    assert r.status_code == 200 and r.json() == {'queued': False, 'reason': 'paused_device_inactive'}
    r = ingest(server, k, s['id'], 'm-3', verdict='spam')
    assert r.status_code == 200 and r.json() == {'queued': False, 'reason': 'spam', 'archive': True}
    # a connected device counts as seen
    sql.execute("UPDATE devices SET connected_until = now() + interval '1 minute' WHERE id = %s",
                (dev['device_id'],))
    r = ingest(server, k, s['id'], 'm-4')
    assert r.status_code == 201
    sql.execute("UPDATE devices SET connected_until = NULL WHERE id = %s", (dev['device_id'],))
    # so does a device held by an instance whose lease runs, and one whose host's lease
    # lapsed within the scout's window (its last sighting), but not longer ago
    for lease, code in (("now() + interval '1 minute'", 201),
                        ("now() - interval '6 days'", 201),
                        ("now() - interval '8 days'", 200)):
        sql.execute(f"INSERT INTO device_hosts VALUES ('rule-order', {lease}) "
                    'ON CONFLICT (instance) DO UPDATE SET lease_until = EXCLUDED.lease_until')
        sql.execute("UPDATE devices SET host = 'rule-order' WHERE id = %s", (dev['device_id'],))
        r = ingest(server, k, s['id'], f'm-4-{code}-{lease[6]}')
        assert r.status_code == code, (lease, r.text)
    sql.execute("UPDATE devices SET host = NULL WHERE id = %s", (dev['device_id'],))
    sql.execute("DELETE FROM device_hosts WHERE instance = 'rule-order'")

    # disabled comes before duplicate and spam
    assert server.patch(f'/v1/scouts/{s["id"]}', json={'enabled': False}).status_code == 200
    for kw in ({}, {'verdict': 'spam'}):
        r = ingest(server, k, s['id'], 'm-1', **kw)
        assert r.status_code == 409 and r.json()['type'] == '/problems/scout-disabled'
    # an unknown scout is 404 whatever the item
    assert server.delete(f'/v1/scouts/{s["id"]}').status_code == 204
    r = ingest(server, k, s['id'], 'm-1')
    assert r.status_code == 404 and r.headers['content-type'].startswith('application/problem+json')

    refs = [x[0] for x in sql.execute('SELECT source_msg_ref FROM proposals WHERE user_id = %s '
                                      'ORDER BY seq', (user,))]
    assert refs == ['m-1', 'm-4', 'm-4-201-+', 'm-4-201--']
    assert queued_total(server) - before == 4


def test_concurrent_ingest_counts_and_each_proposal_delivered_once(server, keys, sql):
    """80 concurrent posts, 20 distinct items each sent 4 times across two users: 20 answers
    201, 60 duplicates naming the winner, 20 rows, and each connected device receives
    exactly its user's 10 proposals, once each."""
    users = [uid(), uid()]
    scouts = [mk_scout(server, u) for u in users]
    devs = [mk_device(server, u) for u in users]
    posts = [(u, f'c-{i}') for u in range(2) for i in range(10)] * 4
    random.shuffle(posts)
    before = queued_total(server)

    async def body():
        conns = [await Device.hello(server, d) for d in devs]
        loop = asyncio.get_running_loop()
        with concurrent.futures.ThreadPoolExecutor(32) as ex:
            answers = await asyncio.gather(*(
                loop.run_in_executor(ex, ingest, server, keys['service'], scouts[u]['id'], ref)
                for u, ref in posts))
        by_item = {}
        for (u, ref), r in zip(posts, answers):
            assert r.status_code in (200, 201), r.text
            by_item.setdefault((u, ref), []).append(r)
        assert sum(r.status_code == 201 for r in answers) == 20
        assert sum(r.status_code == 200 and r.json()['reason'] == 'duplicate'
                   for r in answers) == 60
        winners = {}
        for item, rs in by_item.items():
            assert len(rs) == 4
            assert sum(r.status_code == 201 for r in rs) == 1
            assert len({r.json()['proposal_id'] for r in rs}) == 1
            winners[item] = rs[0].json()['proposal_id']
        for u in range(2):
            got = [await conns[u].proposal() for _ in range(10)]
            assert sorted(p['id'] for p in got) == sorted(
                pid for (uu, _), pid in winners.items() if uu == u)
            assert all(p['scout_id'] == scouts[u]['id'] for p in got)
        for c in conns:
            await c.nothing(0.5)
        for u in range(2):
            for (uu, _), pid in winners.items():
                if uu == u:
                    await conns[u].ack(pid)
                    assert await conns[u].recv() == {'type': 'ack_ok', 'proposal_id': pid}
        for c in conns:
            await c.nothing(0.3)
            await c.close()
        return winners

    winners = run(body())
    for u in range(2):
        assert sql.execute("SELECT count(*), count(*) FILTER (WHERE status = 'acked' AND "
                           "delivery_attempts = 1) FROM proposals WHERE user_id = %s",
                           (users[u],)).fetchone() == (10, 10)
    assert queued_total(server) - before == 20
    assert len(winners) == 20


def test_window_rules_with_two_sessions(make_server, fresh_db_url):
    """STEWARD_MAX_INFLIGHT=3 and two devices of one user: each session has its own
    window; an ack tops up every full window in one pass; a window with room gets no pass
    after an ack, yet a new proposal still reaches both."""
    srv = make_server(fresh_db_url, STEWARD_MAX_INFLIGHT=3)
    user = uid()
    s = mk_scout(srv, user)
    da, db = mk_device(srv, user, 'a'), mk_device(srv, user, 'b')
    pids = [ingest(srv, ADMIN_KEY, s['id'], f'w{i}').json()['proposal_id'] for i in range(1, 6)]

    with psycopg.connect(fresh_db_url, autocommit=True) as sql:
        async def body():
            a = await Device.hello(srv, da)
            assert [(await a.proposal())['id'] for _ in range(3)] == pids[:3]
            await a.nothing(0.3)
            b = await Device.hello(srv, db)
            assert [(await b.proposal())['id'] for _ in range(3)] == pids[:3]
            await b.nothing(0.3)
            assert [attempts(sql, p) for p in pids] == [2, 2, 2, 0, 0]

            # A acks w1: both windows were full, one pass sends w4 to both
            await a.ack(pids[0])
            assert await a.recv() == {'type': 'ack_ok', 'proposal_id': pids[0]}
            assert (await a.proposal())['id'] == pids[3]
            assert await b.recv() == {'type': 'scout_proposal_resolved', 'proposal_id': pids[0]}
            assert (await b.proposal())['id'] == pids[3]
            assert attempts(sql, pids[3]) == 1
            await a.ack(pids[1])
            assert await a.recv() == {'type': 'ack_ok', 'proposal_id': pids[1]}
            assert (await a.proposal())['id'] == pids[4]
            assert await b.recv() == {'type': 'scout_proposal_resolved', 'proposal_id': pids[1]}
            assert (await b.proposal())['id'] == pids[4]
            # full windows, nothing left to send
            await a.ack(pids[2])
            assert await a.recv() == {'type': 'ack_ok', 'proposal_id': pids[2]}
            assert await b.recv() == {'type': 'scout_proposal_resolved', 'proposal_id': pids[2]}
            # windows with room: the ack is answered and resolved, nothing else
            await a.ack(pids[3])
            assert await a.recv() == {'type': 'ack_ok', 'proposal_id': pids[3]}
            assert await b.recv() == {'type': 'scout_proposal_resolved', 'proposal_id': pids[3]}
            await a.nothing(0.3)
            await b.nothing(0.1)
            # B acks what it holds; a live proposal reaches both
            await b.ack(pids[4])
            assert await b.recv() == {'type': 'ack_ok', 'proposal_id': pids[4]}
            assert await a.recv() == {'type': 'scout_proposal_resolved', 'proposal_id': pids[4]}
            t0 = time.monotonic()
            live = ingest(srv, ADMIN_KEY, s['id'], 'w6').json()['proposal_id']
            assert (await a.proposal(timeout=1.0))['id'] == live
            assert (await b.proposal(timeout=1.0))['id'] == live
            assert time.monotonic() - t0 < 1.0
            assert attempts(sql, live) == 1
            await a.nothing(0.3)
            await b.nothing(0.1)
            await a.close()
            await b.close()

        run(body())
        assert [attempts(sql, p) for p in pids] == [2, 2, 2, 1, 1]
        assert [row(sql, p)[0] for p in pids] == ['acked'] * 5


def test_requeued_proposal_goes_again_to_every_session(make_server, fresh_db_url):
    """A proposal both sessions hold and nobody acks is queued again by the ack-timeout
    sweep and sent again to both (one more attempt), then resolved by one ack."""
    srv = make_server(fresh_db_url, STEWARD_ACK_TIMEOUT_S=1, STEWARD_MAX_DELIVERY_ATTEMPTS=5)
    user = uid()
    s = mk_scout(srv, user)
    da, db = mk_device(srv, user, 'a'), mk_device(srv, user, 'b')

    with psycopg.connect(fresh_db_url, autocommit=True) as sql:
        async def body():
            a = await Device.hello(srv, da)
            b = await Device.hello(srv, db)
            pid = ingest(srv, ADMIN_KEY, s['id'], 'slow').json()['proposal_id']
            assert (await a.proposal())['id'] == pid
            assert (await b.proposal())['id'] == pid
            # One statement marks it for both sessions, unless the pass of a's hello
            # was still running when the ingest woke it: that pass saw a alone, and the
            # pass it reran sent b its copy (each hello delivery counts).
            first = attempts(sql, pid)
            assert first in (1, 2)
            t0 = time.monotonic()
            assert (await a.proposal(timeout=4))['id'] == pid
            assert (await b.proposal(timeout=4))['id'] == pid
            assert time.monotonic() - t0 >= 0.9
            assert attempts(sql, pid) == first + 1
            await a.ack(pid)
            assert await a.recv() == {'type': 'ack_ok', 'proposal_id': pid}
            assert await b.recv() == {'type': 'scout_proposal_resolved', 'proposal_id': pid}
            await a.nothing(1.5)
            await b.nothing(0.1)
            await a.close()
            await b.close()
            return pid, first

        pid, first = run(body())
        st = row(sql, pid)
        assert st[0] == 'acked' and st[1] == first + 1


def test_devices_deleted_while_the_listener_was_down_are_closed_after_it_reconnects(
        make_server, fresh_db_url):
    """A device's deletion is missed only while the listener's connection is down, so
    that is when steward looks for them: 300 devices connected (more than one check
    statement holds, 256), 40 deleted behind steward's back (no notification, as if sent
    while nobody listened). The presence ticks (every second here) leave them be; once the
    listener's connection is cut and comes back, exactly those are closed 4403, whichever
    statement carried them, and the others are still served."""
    srv = make_server(fresh_db_url, STEWARD_WS_HEARTBEAT_S=2)
    devs = [mk_device(srv, uid(f'p{i}')) for i in range(300)]
    ids = [d['device_id'] for d in devs]
    gone = set(random.sample(range(300), 40))

    with psycopg.connect(fresh_db_url, autocommit=True) as sql:
        async def body():
            socks = await asyncio.gather(*(Device.hello(srv, d) for d in devs))
            sql.execute('DELETE FROM devices WHERE id = ANY(%s::uuid[])',
                        ([ids[i] for i in gone],))
            # two presence ticks: nothing is checked per tick any more
            await asyncio.sleep(2.2)
            for i in random.sample(sorted(gone), 5):
                await socks[i].nothing(0.01)
                assert socks[i].ws.close_code is None
            assert sql.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                               "WHERE application_name = 'steward-listen' "
                               "AND datname = current_database()").fetchone()[0] == 1
            closed = await asyncio.gather(*(socks[i].closed(timeout=10) for i in gone))
            assert [c for c, _ in closed] == [4403] * 40
            assert all(frames == [] for _, frames in closed)
            assert any(r.get('msg') == 'notification listener lost its connection'
                       for r in srv.log_records())
            # the others are still served
            for i in random.sample([i for i in range(300) if i not in gone], 20):
                await socks[i].nothing(0.05)
                assert socks[i].ws.close_code is None
            await asyncio.gather(*(socks[i].close() for i in range(300) if i not in gone))

        run(body())


def test_a_pass_reads_only_its_users_pending_proposals(make_server, fresh_db_url):
    """Statistics taken while nothing was pending (the usual state: proposals are acked
    within milliseconds) once let the planner serve a user's delivery pass from the
    expiry index, reading every pending proposal of every user. With 500 proposals
    pending for other users, 10 hellos each get their own proposal through the per-user
    index, and the expiry index is not read at all."""
    srv = make_server(fresh_db_url)
    with psycopg.connect(fresh_db_url, autocommit=True) as sql:
        def add(users, status, per_user):
            sql.execute(
                "INSERT INTO proposals (scout_id, user_id, source_type, source_msg_ref, status, "
                "expires_at, acked_at) SELECT gen_random_uuid(), u, 'gmail', u || '-' || k, %s, "
                "now() + interval '1 day', CASE WHEN %s = 'acked' THEN now() END "
                "FROM unnest(%s::text[]) u, generate_series(1, %s) k", (status, status, users, per_user))

        add([uid('acked') for _ in range(200)], 'acked', 10)
        sql.execute('ANALYZE proposals')
        add([uid('other') for _ in range(500)], 'queued', 1)
        users = [uid('mine') for _ in range(10)]
        devs = [mk_device(srv, u) for u in users]
        add(users, 'queued', 1)
        mine = dict(sql.execute('SELECT user_id, id::text FROM proposals WHERE user_id = ANY(%s)',
                                (users,)).fetchall())

        def stats():
            rows = sql.execute("SELECT indexrelname, idx_scan, idx_tup_read FROM pg_stat_user_indexes "
                               "WHERE indexrelname IN ('proposals_pending', 'proposals_expiring')")
            return {name: (scans, read) for name, scans, read in rows.fetchall()}

        before = stats()

        async def body():
            for u, d in zip(users, devs):
                dev = await Device.hello(srv, d)
                assert (await dev.proposal())['id'] == mine[u]
                await dev.close()

        run(body())
        # backends report their counters when idle, at most once a second
        deadline = time.monotonic() + 15
        while True:
            after = stats()
            delta = {k: (after[k][0] - before[k][0], after[k][1] - before[k][1]) for k in after}
            if delta['proposals_pending'][0] >= 10 or delta['proposals_expiring'][1] > 0 \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        # no entry read from the expiry index (the periodic expiry sweep may scan it once
        # and find nothing expired: a pass served from it would read the 510 pending)
        assert delta['proposals_expiring'][1] == 0, delta
        assert delta['proposals_pending'][0] >= 10 and delta['proposals_pending'][1] < 100, delta
        assert sql.execute("SELECT count(*) FROM proposals WHERE status = 'delivered'").fetchone()[0] == 10
