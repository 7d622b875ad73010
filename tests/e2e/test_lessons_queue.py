"""The journal never delays the request that triggers it (issue 19, section 4): with the
lessons table locked by another session, an outcome that exhausts its retry budget
answers at once, its lesson waits in the bounded retry queue and is written once the
lock is released; overflow is counted and logged; the queue is flushed at shutdown."""
import hashlib
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg

from harness.steward import ADMIN_KEY

CONFIG = {
    'per_post_window_minutes': 90,
    'min_samples_required': 3,
    'cooldown_by_action_seconds': {'comment': 1800, 'edit': 7200, 'thread': 10800},
    'max_actions_per_window': 2,
    'max_attempts': 1,  # the first transient failure exhausts the budget
}


QUEUE_MAX = 24


def key_of(post):
    return 'sheal_' + hashlib.sha256(f'{post}:edit:tier_2'.encode()).hexdigest()[:32]


def exhaust(srv, post):
    """Reports the one transient failure that exhausts post's budget; returns (seconds,
    body)."""
    t0 = time.monotonic()
    r = srv.put(f'/v1/actions/{key_of(post)}', key=ADMIN_KEY, json={
        'post_id': post, 'action_type': 'edit', 'tier': 'tier_2', 'status': 'failed',
        'error_code': 'timeout'})
    took = time.monotonic() - t0
    assert r.status_code == 200, r.text
    return took, r.json()


def metric(srv, name):
    for line in srv.get('/metrics', key=None).text.splitlines():
        if line.startswith(name + ' '):
            return float(line.split()[1])
    raise AssertionError(f'{name} missing')


def lessons_of(db_url, posts):
    with psycopg.connect(db_url, autocommit=True) as c:
        return c.execute("SELECT work_item_id, lesson_type, stage, source, detail->>'post_id' "
                         "FROM lessons WHERE work_item_id = ANY(%s) ORDER BY id",
                         ([key_of(p) for p in posts],)).fetchall()


def wait_for(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    return pred()


class TableLock:
    """Holds LOCK TABLE lessons (ACCESS EXCLUSIVE) in its own session until released."""

    def __init__(self, db_url):
        self.conn = psycopg.connect(db_url)
        self.conn.execute('LOCK TABLE lessons')

    def release(self):
        self.conn.commit()
        self.conn.close()


def new_post():
    return 'post-' + uuid.uuid4().hex[:12]


def test_a_locked_table_never_delays_the_outcome(fresh_db_url, make_server):
    """One instance for the whole story (a start costs seconds): the bound on a caller,
    many callers at once, overflow, and the flush at shutdown."""
    srv = make_server(fresh_db_url, STEWARD_LESSONS_QUEUE_MAX=str(QUEUE_MAX))
    assert srv.put('/v1/planner/config', json=CONFIG).status_code == 200
    warm = [new_post() for _ in range(3)]  # a pooled connection's statements are ready
    for p in warm:
        exhaust(srv, p)
    assert wait_for(lambda: len(lessons_of(fresh_db_url, warm)) == 3)
    # The bound is the 50 ms. On a loaded test machine a request can take longer
    # for reasons of its own, so the best of a few rounds counts; each round's first
    # outcome really tries the locked table (the queue is empty then). Before, each
    # waited the function's 1 s lock_timeout; a caller's lock wait not applied would
    # still take the 100 ms backstop.
    best, posts = None, []
    for round_ in range(5):
        post = new_post()
        posts.append(post)
        deferred = metric(srv, 'lessons_deferred_total')
        lock = TableLock(fresh_db_url)
        try:
            took, body = exhaust(srv, post)
            assert body['attempts'] == 1 and body['should_retry'] is False
            assert metric(srv, 'lessons_queued') == 1
            assert metric(srv, 'lessons_deferred_total') == deferred + 1
            if round_ == 0:
                # a second one goes behind it without trying the table at all
                post2 = new_post()
                took2, _ = exhaust(srv, post2)
                time.sleep(0.6)  # retries meanwhile fail and keep both lessons
                assert metric(srv, 'lessons_queued') == 2
        finally:
            lock.release()
        assert wait_for(lambda: metric(srv, 'lessons_queued') == 0)
        best = took if best is None else min(best, took)
        if round_ == 0:
            got = wait_for(lambda: len(lessons_of(fresh_db_url, [post, post2])) == 2 and
                           lessons_of(fresh_db_url, [post, post2]))
            assert got == [(key_of(post), 'transient_retry', 'edit', 'auto', post),
                           (key_of(post2), 'transient_retry', 'edit', 'auto', post2)]
            best = min(best, took2)
        if best < 0.050:
            break
    assert best < 0.050, f'the best outcome took {best * 1000:.1f} ms'
    assert [r[4] for r in lessons_of(fresh_db_url, posts)] == posts  # each once, in order
    assert metric(srv, 'lessons_queue_overflow_total') == 0
    msgs = [r['msg'] for r in srv.log_records()]
    assert 'lessons journal busy; lessons queued for retry' in msgs
    assert 'queued lessons written' in msgs
    concurrent_outcomes_under_a_lock(srv, fresh_db_url)
    overflow_is_counted_and_logged_without_content(srv, fresh_db_url)
    shutdown_flushes_the_queue(srv, fresh_db_url)


def concurrent_outcomes_under_a_lock(srv, fresh_db_url):
    """Many outcomes at once against the locked table all answer, and every lesson lands
    exactly once after the release."""
    posts = [new_post() for _ in range(QUEUE_MAX)]  # exactly what the queue holds
    lock = TableLock(fresh_db_url)
    try:
        with ThreadPoolExecutor(8) as ex:
            results = list(ex.map(lambda p: exhaust(srv, p), posts))
        # under the old one-second lock wait each took a second or more
        assert max(t for t, _ in results) < 1.0, sorted(t for t, _ in results)[-3:]
        assert all(b['should_retry'] is False for _, b in results)
        assert metric(srv, 'lessons_queued') == len(posts)
    finally:
        lock.release()
    got = wait_for(lambda: len(lessons_of(fresh_db_url, posts)) == len(posts) and
                   lessons_of(fresh_db_url, posts))
    assert sorted(r[4] for r in got) == sorted(posts)  # each exactly once


def overflow_is_counted_and_logged_without_content(srv, fresh_db_url):
    """Past STEWARD_LESSONS_QUEUE_MAX lessons are dropped, counted and logged without
    their content; the oldest ones are kept and written in order."""
    posts = [new_post() for _ in range(QUEUE_MAX + 2)]
    lock = TableLock(fresh_db_url)
    try:
        for p in posts:
            exhaust(srv, p)  # (how long they take is the first part's business)
        assert metric(srv, 'lessons_queued') == QUEUE_MAX
        assert metric(srv, 'lessons_queue_overflow_total') == 2
    finally:
        lock.release()
    got = wait_for(lambda: len(lessons_of(fresh_db_url, posts)) == QUEUE_MAX and
                   lessons_of(fresh_db_url, posts))
    assert [r[4] for r in got] == posts[:QUEUE_MAX]  # the oldest, in order
    full = [r for r in srv.log_records() if r.get('msg') == 'lesson queue full; lesson dropped']
    assert 1 <= len(full) <= 2, full  # one line a second at most
    assert full[0]['level'] == 'warn' and full[0]['lesson_type'] == 'transient_retry'
    assert full[0]['queue_max'] == QUEUE_MAX and full[0]['dropped'] == 1
    text = '\n'.join(srv.log_lines())
    assert not any(p in text for p in posts)  # no user content in any line
    assert wait_for(lambda: metric(srv, 'lessons_queued') == 0)


def shutdown_flushes_the_queue(srv, fresh_db_url):
    """What is queued at SIGTERM is written once the lock goes, within the shutdown
    timeout (8 s by default)."""
    post = new_post()
    lock = TableLock(fresh_db_url)
    exhaust(srv, post)
    assert metric(srv, 'lessons_queued') == 1
    releaser = threading.Timer(1.5, lock.release)
    releaser.start()
    try:
        t0 = time.monotonic()
        assert srv.stop() == 0
        assert time.monotonic() - t0 < 8
    finally:
        releaser.join()
    assert [r[4] for r in lessons_of(fresh_db_url, [post])] == [post]
    assert not srv.sanitizer_reports()
