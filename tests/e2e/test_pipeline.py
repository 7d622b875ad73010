"""Pipelined hot paths: GET /v1/bonds/{user_id} and POST /v1/bonds/{user_id}/messages
answer from database threads that batch many requests' statements into one round trip.
These tests prove that batching never mixes answers, that one stuck statement does not
hold up the others, that a request waiting on the database survives SIGTERM with a real
answer, and that killed connections never turn into a 500."""
import json
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import requests

from harness.steward import ADMIN_KEY
from hardening_lib import RawHttp


def metric(server, name):
    text = server.get('/metrics').text
    m = re.search(rf'^{name} (\d+)$', text, re.M)
    assert m, f'{name} missing from /metrics'
    return int(m.group(1))


def raw_conns(s, n):
    """n keep-alive connections to s, each accepted and used once before it serves a
    burst. A burst written over them leaves the test in a few microseconds per request,
    close enough for the server's loop to read it in the same rounds (requests' threads,
    taking turns on the GIL, send them 100 us or more apart, often one per round)."""
    conns = [RawHttp(s.http_port) for _ in range(n)]
    for c in conns:
        c.send('GET', '/livez')
        assert c.read_response()[0] == 200
    return conns


def consume(conn, user):
    conn.send('POST', f'/v1/bonds/{user}/messages',
              {'Authorization': f'Bearer {ADMIN_KEY}', 'Content-Length': '0'})


def answer(conn, seconds):
    """(status, parsed body) of the next answer on conn, or None after seconds."""
    r = conn.response_within(seconds)
    return None if r is None else (r[0], json.loads(r[2]))


def bursts_until_regrouped(s, path, work, check):
    """Sends GET or POST path.format(key) for every key of work from 32 threads, passes
    each answer to check(key, status, body), and repeats (10 bursts at most) until a
    failing statement has landed inside a group: db_pipeline_regrouped_total rose. Then
    asserts that, and that groups formed (fewer round trips than statements)."""
    method, _, path = path.partition(' ')
    stmts0 = metric(s, 'db_pipeline_statements_total')
    batches0 = metric(s, 'db_pipeline_batches_total')
    regrouped0 = metric(s, 'db_pipeline_regrouped_total')

    def call(key):
        r = s.request(method, path.format(key))
        return key, r.status_code, r.json()

    total = 0
    for _ in range(10):
        with ThreadPoolExecutor(32) as ex:
            for key, status, body in ex.map(call, work):
                check(key, status, body)
        total += len(work)
        if metric(s, 'db_pipeline_regrouped_total') > regrouped0:
            break
    assert metric(s, 'db_pipeline_regrouped_total') > regrouped0
    stmts = metric(s, 'db_pipeline_statements_total') - stmts0
    batches = metric(s, 'db_pipeline_batches_total') - batches0
    assert stmts >= total and batches < stmts, (stmts, batches)


def test_concurrent_reads_each_get_their_own_entry(server, sql):
    users = [f'pipe-read-{i}' for i in range(60)]
    for i, u in enumerate(users):
        r = server.put(f'/v1/bonds/{u}/rate-limit', json={'daily_msg_cap': i + 1})
        assert r.status_code == 200, r.text
    missing = [f'pipe-none-{i}' for i in range(40)]
    stmts0 = metric(server, 'db_pipeline_statements_total')
    batches0 = metric(server, 'db_pipeline_batches_total')

    def read(u):
        r = server.get(f'/v1/bonds/{u}')
        return u, r.status_code, r.json()

    work = (users + missing) * 8
    with ThreadPoolExecutor(64) as ex:
        results = list(ex.map(read, work))
    assert len(results) == 800
    caps = {u: i + 1 for i, u in enumerate(users)}
    for u, status, body in results:
        if u in caps:
            assert status == 200, body
            assert body['user_id'] == u
            assert body['daily_msg_cap'] == caps[u]
        else:
            assert status == 404, body
            assert body['detail'] == 'no bond entry for this user'
    stmts = metric(server, 'db_pipeline_statements_total') - stmts0
    batches = metric(server, 'db_pipeline_batches_total') - batches0
    assert stmts >= 800
    assert 0 < batches < stmts  # 64 clients at once: some round trips carried several
    assert metric(server, 'db_pipeline_expired_total') == 0


def test_concurrent_consumes_across_users_count_exactly(server, sql):
    users = [f'pipe-cons-{i}' for i in range(10)]
    for u in users:
        assert server.put(f'/v1/bonds/{u}/rate-limit', json={'daily_msg_cap': 25}).status_code == 200

    def consume(u):
        r = server.post(f'/v1/bonds/{u}/messages')
        return u, r.status_code, r.json()

    with ThreadPoolExecutor(48) as ex:
        results = list(ex.map(consume, users * 40))  # 40 tries per user, cap 25
    for u in users:
        mine = [(s, b) for uu, s, b in results if uu == u]
        ok = [b for s, b in mine if s == 200]
        refused = [b for s, b in mine if s == 429]
        assert len(ok) == 25 and len(refused) == 15, [s for s, _ in mine]
        assert sorted(b['remaining'] for b in ok) == list(range(25))
        assert all(b['allowed'] is False and b['count'] == 25 for b in refused)
        count = sql.execute('SELECT daily_msg_count FROM bonds WHERE user_id = %s', (u,)).fetchone()
        assert count == (25,)


def test_first_consume_creates_the_entry_once(server, sql):
    """The no-entry path chains three statements (consume, read, insert, consume)."""
    def consume(_):
        return server.post('/v1/bonds/pipe-new-user/messages').status_code

    with ThreadPoolExecutor(32) as ex:
        codes = list(ex.map(consume, range(64)))
    assert codes == [200] * 64
    assert sql.execute("SELECT daily_msg_count, daily_msg_cap FROM bonds "
                       "WHERE user_id = 'pipe-new-user'").fetchone() == (64, 0)


def test_locked_row_does_not_hold_up_other_reads(server, db_url, sql):
    assert server.put('/v1/bonds/pipe-locked/rate-limit', json={'daily_msg_cap': 5}).status_code == 200
    assert server.put('/v1/bonds/pipe-free/rate-limit', json={'daily_msg_cap': 7}).status_code == 200
    with psycopg.connect(db_url) as locker:
        locker.execute("SELECT 1 FROM bonds WHERE user_id = 'pipe-locked' FOR UPDATE")
        out = {}
        t = threading.Thread(target=lambda: out.update(
            r=server.post('/v1/bonds/pipe-locked/messages')))
        t.start()
        time.sleep(0.3)  # the consume now waits for the row lock inside PostgreSQL
        start = time.monotonic()
        for _ in range(30):
            r = server.get('/v1/bonds/pipe-free')
            assert r.status_code == 200 and r.json()['daily_msg_cap'] == 7
        assert time.monotonic() - start < 3.0
        assert t.is_alive()  # still waiting on the lock
        locker.rollback()
    t.join(10)
    assert out['r'].status_code == 200, out['r'].text
    assert out['r'].json() == {'allowed': True, 'remaining': 4, 'cap': 5, 'count': 1}


def test_sigterm_while_a_request_waits_on_the_database(pg, db_url, sql, make_server):
    s = make_server(db_url, STEWARD_DB_STATEMENT_TIMEOUT_MS='1500')
    assert s.put('/v1/bonds/pipe-term/rate-limit', json={'daily_msg_cap': 5}).status_code == 200
    with psycopg.connect(db_url) as locker:
        locker.execute("SELECT 1 FROM bonds WHERE user_id = 'pipe-term' FOR UPDATE")
        out = {}
        t = threading.Thread(target=lambda: out.update(r=s.post('/v1/bonds/pipe-term/messages')))
        t.start()
        time.sleep(0.3)
        s.signal(signal.SIGTERM)
        t.join(10)
        locker.rollback()
    r = out['r']
    assert r.status_code == 503, r.text  # statement_timeout, answered before the exit
    assert r.headers['Retry-After'] == '1'
    assert r.headers['content-type'].startswith('application/problem+json')
    assert s.stop() == 0
    assert sql.execute("SELECT daily_msg_count FROM bonds WHERE user_id = 'pipe-term'").fetchone() == (0,)


def test_killed_connections_never_answer_500(server, sql):
    users = [f'pipe-kill-{i}' for i in range(8)]
    for u in users:
        assert server.put(f'/v1/bonds/{u}/rate-limit', json={'daily_msg_cap': 0}).status_code == 200
    stop = threading.Event()
    killed = [0]

    def killer():
        while not stop.is_set():
            killed[0] += sql.execute(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'steward' AND pid <> pg_backend_pid()) k").fetchone()[0]
            time.sleep(0.05)

    def work(i):
        u = users[i % len(users)]
        if i % 2:
            r = server.post(f'/v1/bonds/{u}/messages')
        else:
            r = server.get(f'/v1/bonds/{u}')
        return i % 2, u, r.status_code

    k = threading.Thread(target=killer)
    k.start()
    try:
        with ThreadPoolExecutor(32) as ex:
            results = list(ex.map(work, range(1500)))
    finally:
        stop.set()
        k.join()
    assert killed[0] > 0
    assert {s for _, _, s in results} <= {200, 503}, sorted({s for _, _, s in results})
    for u in users:
        ok = sum(1 for c, uu, s in results if c and uu == u and s == 200)
        unavailable = sum(1 for c, uu, s in results if c and uu == u and s == 503)
        count = sql.execute('SELECT daily_msg_count FROM bonds WHERE user_id = %s', (u,)).fetchone()[0]
        # every admitted message is counted; a 503 may or may not have committed
        assert ok <= count <= ok + unavailable, (u, ok, unavailable, count)
    # and the service is healthy again afterwards
    assert server.get(f'/v1/bonds/{users[0]}').status_code == 200


def test_connections_killed_while_idle_are_replaced_before_use(server, sql):
    """A pooled connection whose backend was terminated while idle is found dead before
    anything is sent on it, replaced, and the request answers normally (no 503)."""
    assert server.put('/v1/bonds/pipe-idle/rate-limit', json={'daily_msg_cap': 0}).status_code == 200
    for round_ in range(3):
        with ThreadPoolExecutor(16) as ex:  # open several pooled connections
            assert set(ex.map(lambda _: server.get('/v1/bonds/pipe-idle').status_code,
                              range(64))) == {200}
        killed = sql.execute(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'steward' AND pid <> pg_backend_pid()) k").fetchone()[0]
        assert killed > 0
        time.sleep(0.2)
        codes = [server.post('/v1/bonds/pipe-idle/messages').status_code for _ in range(10)]
        codes += [server.get('/v1/bonds/pipe-idle').status_code for _ in range(10)]
        assert codes == [200] * 20, (round_, codes)
    assert sql.execute("SELECT daily_msg_count FROM bonds WHERE user_id = 'pipe-idle'").fetchone() == (30,)


def test_reads_share_a_sync_and_one_failing_read_fails_alone(pg, db_url, sql, make_server):
    """A lane sends consecutive bond reads as one group (one Sync, one write each way):
    fewer round trips than reads. A read that fails inside a group (here a stored
    timestamp of 'infinity' that cannot be converted to microseconds) makes the reads after it in that
    group fail with PIPELINE_ABORTED; those are run again alone, so every other read still
    gets its own entry, and the failing one answers as it does on its own."""
    s = make_server(db_url, STEWARD_HTTP_LOOPS='1')
    users = [f'grp-{i}' for i in range(24)]
    for i, u in enumerate(users):
        assert s.put(f'/v1/bonds/{u}/rate-limit', json={'daily_msg_cap': i + 1}).status_code == 200
    assert s.put('/v1/bonds/grp-bad/rate-limit', json={'daily_msg_cap': 1}).status_code == 200
    sql.execute("UPDATE bonds SET phase_entered_at = 'infinity' WHERE user_id = 'grp-bad'")
    alone = s.get('/v1/bonds/grp-bad')
    # a stored row that cannot be served is the server's fault, whatever read it is in
    assert alone.status_code == 500 and alone.json()['type'] == '/problems/internal', alone.text
    caps = {u: i + 1 for i, u in enumerate(users)}

    def check(u, status, body):
        if u == 'grp-bad':
            assert status == alone.status_code and body['type'] == alone.json()['type'], body
        else:
            assert status == 200 and body['user_id'] == u and \
                body['daily_msg_cap'] == caps[u], (u, status, body)

    bursts_until_regrouped(s, 'GET /v1/bonds/{}', (users + ['grp-bad'] * 6) * 4, check)
    sql.execute("UPDATE bonds SET phase_entered_at = now() WHERE user_id = 'grp-bad'")
    r = s.get('/v1/bonds/grp-bad')
    assert r.status_code == 200 and r.json()['daily_msg_cap'] == 1


def test_consumes_share_a_transaction_and_one_failing_consume_fails_alone(pg, db_url, sql,
                                                                          make_server):
    """A lane sends consecutive consumes as one group: one transaction, one Sync. None of
    them is answered before that transaction committed. When one fails inside a group
    (here a stored count at the integer maximum, which +1 overflows), PostgreSQL rolls
    back the whole group, so every consume of it runs again alone: each other consume
    is counted exactly once, and the failing one answers as it does on its own."""
    s = make_server(db_url, STEWARD_HTTP_LOOPS='1')
    users = [f'wgrp-{i}' for i in range(24)]
    for u in users:
        assert s.put(f'/v1/bonds/{u}/rate-limit', json={'daily_msg_cap': 0}).status_code == 200
    assert s.put('/v1/bonds/wgrp-bad/rate-limit', json={'daily_msg_cap': 0}).status_code == 200
    sql.execute("UPDATE bonds SET daily_msg_count = 2147483647 WHERE user_id = 'wgrp-bad'")
    alone = s.post('/v1/bonds/wgrp-bad/messages')
    assert alone.status_code >= 400 and alone.status_code != 500, alone.text
    assert alone.headers['content-type'].startswith('application/problem+json')
    admitted = {u: 0 for u in users}

    def check(u, status, body):
        if u == 'wgrp-bad':
            assert status == alone.status_code and body == alone.json(), body
        else:
            assert status == 200 and body['allowed'] is True and body['cap'] == 0, (u, body)
            admitted[u] += 1

    bursts_until_regrouped(s, 'POST /v1/bonds/{}/messages', (users + ['wgrp-bad'] * 6) * 3,
                           check)
    counts = dict(sql.execute("SELECT user_id, daily_msg_count FROM bonds "
                              "WHERE user_id LIKE 'wgrp-%'").fetchall())
    assert counts.pop('wgrp-bad') == 2147483647
    assert counts == admitted  # nothing of a rolled-back group lost or counted twice


def test_a_locked_row_holds_up_its_group_only_briefly(pg, db_url, sql, make_server):
    """A consume grouped with others that waits on a row locked elsewhere stops waiting
    after the group's lock_timeout (50 ms): the group rolls back and its consumes run
    again alone, the waiting one last. So while the lock is still held, the others of the
    group are answered and counted; the locked user's consume goes through once the lock
    is released. statement_timeout is long here: without the group's bound, the others
    would wait for the lock holder, and no group would ever be run again.
    A burst whose locked consume went out alone instead (so that later ones were
    pipelined behind it, which the lane's stall rule bounds, not this) is repeated."""
    s = make_server(db_url, STEWARD_HTTP_LOOPS='1', STEWARD_DB_STATEMENT_TIMEOUT_MS='30000')
    users = [f'wlock-{i:02d}' for i in range(40)]
    for u in users + ['wlock-held']:
        assert s.put(f'/v1/bonds/{u}/rate-limit', json={'daily_msg_cap': 0}).status_code == 200
    burst = users[:20] + ['wlock-held'] + users[20:]  # the locked one mid burst
    conns = raw_conns(s, len(burst))
    admitted = {u: 0 for u in users + ['wlock-held']}
    clean = False
    for _ in range(8):
        regrouped0 = metric(s, 'db_pipeline_regrouped_total')
        with psycopg.connect(db_url) as locker:
            locker.execute("SELECT 1 FROM bonds WHERE user_id = 'wlock-held' FOR UPDATE")
            for c, u in zip(conns, burst):
                consume(c, u)
            answers = {}
            deadline = time.monotonic() + 5
            for i, c in enumerate(conns):
                if i != 20:
                    answers[i] = answer(c, deadline - time.monotonic())
            answered_while_locked = all(a is not None for a in answers.values())
            assert not conns[20].answered()  # it waits for the row lock
            locker.rollback()
        answers[20] = answer(conns[20], 60)
        for i, c in enumerate(conns):
            if answers[i] is None:
                answers[i] = answer(c, 60)
            status, body = answers[i]
            assert status == 200 and body['allowed'] is True, (burst[i], status, body)
            admitted[burst[i]] += 1
        if answered_while_locked and metric(s, 'db_pipeline_regrouped_total') > regrouped0:
            clean = True
            break
    for c in conns:
        c.close()
    assert clean, 'no burst had its group bounded by lock_timeout'
    counts = dict(sql.execute("SELECT user_id, daily_msg_count FROM bonds "
                              "WHERE user_id LIKE 'wlock-%'").fetchall())
    assert counts == admitted


def test_consumes_behind_a_waiting_one_run_on_another_backend(pg, db_url, sql, make_server):
    """While a group of consumes is in flight on a lane's connection, the next group runs
    on a second connection, not pipelined behind it. So a consume waiting on a row lock
    held elsewhere does not hold up the consumes that arrive right after it, even within
    the 20 ms before the lane's stall rule would move new statements elsewhere: in at
    least one of 5 bursts all of them are answered within 12 ms of being sent (with one
    write connection per lane they wait for the stall rule, 18 ms or more, every time)."""
    s = make_server(db_url, STEWARD_HTTP_LOOPS='1', STEWARD_DB_STATEMENT_TIMEOUT_MS='30000')
    users = [f'wnext-{i}' for i in range(12)]
    for u in users + ['wnext-held']:
        assert s.put(f'/v1/bonds/{u}/rate-limit', json={'daily_msg_cap': 0}).status_code == 200
    conns = raw_conns(s, len(users) + 1)
    took = []
    for burst in range(1, 6):
        with psycopg.connect(db_url) as locker:
            locker.execute("SELECT 1 FROM bonds WHERE user_id = 'wnext-held' FOR UPDATE")
            consume(conns[0], 'wnext-held')
            time.sleep(0.002)  # the held one goes first, alone
            t0 = time.monotonic()
            for c, u in zip(conns[1:], users):
                consume(c, u)
            answers = [answer(c, 5) for c in conns[1:]]
            took.append(time.monotonic() - t0)
            assert all(a is not None for a in answers)  # all while the lock is held
            assert not conns[0].answered()
            locker.rollback()
        for status, body in answers + [answer(conns[0], 60)]:
            assert status == 200 and body['count'] == burst, body
        if took[-1] < 0.012:
            break
    for c in conns:
        c.close()
    assert min(took) < 0.012, took


def test_consumes_waiting_for_a_free_connection_move_on_when_the_others_turn_late(
        pg, db_url, sql, make_server):
    """Two consumes wait on rows locked elsewhere, one on each of the lane's two write
    connections, so a third consume right behind them waits in the lane for a connection
    free of writes. Once the two are 20 ms late they no longer count, and the lane wakes
    up by itself to send the third on another connection: it is answered while both
    locks are still held."""
    s = make_server(db_url, STEWARD_HTTP_LOOPS='1', STEWARD_DB_STATEMENT_TIMEOUT_MS='30000')
    names = ['wlate-a', 'wlate-b', 'wlate-c']
    for u in names:
        assert s.put(f'/v1/bonds/{u}/rate-limit', json={'daily_msg_cap': 0}).status_code == 200
    sessions = [requests.Session() for _ in names]
    for sess in sessions:
        sess.headers['Authorization'] = f'Bearer {ADMIN_KEY}'
        assert sess.get(s.url + '/livez', timeout=10).status_code == 200
    with ThreadPoolExecutor(len(names)) as ex, psycopg.connect(db_url) as locker:
        locker.execute("SELECT 1 FROM bonds WHERE user_id IN ('wlate-a', 'wlate-b') FOR UPDATE")
        futures = []
        for sess, u in zip(sessions, names):
            futures.append(ex.submit(sess.post, f'{s.url}/v1/bonds/{u}/messages', timeout=60))
            time.sleep(0.003)
        free = futures[2]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not free.done():
            time.sleep(0.01)
        answered_while_locked = free.done()
        assert not futures[0].done() and not futures[1].done()
        locker.rollback()
        for f in futures:
            r = f.result(timeout=60)
            assert r.status_code == 200 and r.json()['count'] == 1, r.text
    for sess in sessions:
        sess.close()
    assert answered_while_locked
