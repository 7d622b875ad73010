"""Planner (docs/api.md, issue 4) through the real API against a real PostgreSQL: metrics
ingest, every plan reason string, check order, cooldown expiry and the window cap by
pinned `now`, the claim race, outcomes and attempts, the retry policy, the retry
budget's lesson (and that a broken journal never fails the outcome), the config row,
and the healer-facing sweeps (driven through the test_planner helper binary)."""
import hashlib
import json
import os
import subprocess
import threading
import uuid
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from harness.steward import ADMIN_KEY, binary

UTC = timezone.utc
TRANSIENT = ('timeout', 'rate_limit', 'service_unavailable', 'network_error')
DEFAULT_CONFIG = {
    'per_post_window_minutes': 90,
    'min_samples_required': 3,
    'cooldown_by_action_seconds': {'comment': 1800, 'edit': 7200, 'thread': 10800},
    'max_actions_per_window': 2,
    'max_attempts': 5,
}
TIERS = {'comment': 'tier_1', 'edit': 'tier_2', 'thread': 'tier_3'}

# ---------------------------------------------------------------------------------------
# helpers


def key_of(post, action):
    raw = f'{post}:{action}:{TIERS[action]}'.encode()
    return 'sheal_' + hashlib.sha256(raw).hexdigest()[:32]


def rfc(t):
    t = t.astimezone(UTC)
    return f'{t.year:04d}-' + t.strftime('%m-%dT%H:%M:%S.%fZ')


def parse(s):
    return datetime.fromisoformat(s.replace('Z', '+00:00'))


def new_post():
    return 'post-' + uuid.uuid4().hex[:12]


# Counter series ending at `now`, one point every 10 minutes, shaped for each tier:
# thread: no engagement at all (score 1); edit: 9 per 400 impressions (score exactly
# 0.55); comment: plenty of engagement (score 0).
SHAPES = {
    'thread': [(0, 0), (500, 0), (1000, 0)],
    'edit': [(0, 0), (200, 4), (400, 9)],
    'comment': [(0, 0), (50, 10), (100, 50)],
}
SCORES = {'thread': 1.0, 'edit': 0.55, 'comment': 0.0}


def points(now, shape):
    pairs = SHAPES[shape] if isinstance(shape, str) else shape
    n = len(pairs)
    return [{'timestamp': rfc(now - timedelta(minutes=10 * (n - 1 - i))),
             'impressions': imp, 'engagements': eng} for i, (imp, eng) in enumerate(pairs)]


def plan(server, post, keys, now=None, metrics=None, claim=None, key=None):
    body = {}
    if now is not None:
        body['now'] = rfc(now)
    if metrics is not None:
        body['metrics'] = metrics
    if claim is not None:
        body['claim'] = claim
    r = server.post(f'/v1/posts/{post}/plan', key=key or keys['service'] or ADMIN_KEY, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def outcome(server, keys, post, action, status, error_code=None, outcome_obj=None):
    body = {'post_id': post, 'action_type': action, 'tier': TIERS[action], 'status': status}
    if error_code is not None:
        body['error_code'] = error_code
    if outcome_obj is not None:
        body['outcome'] = outcome_obj
    r = server.put(f'/v1/actions/{key_of(post, action)}', key=keys['service'] or ADMIN_KEY,
                   json=body)
    assert r.status_code == 200, r.text
    return r.json()


def eligible(post, action, score=None):
    return {'post_id': post, 'eligible': True,
            'stagnation_score': SCORES[action] if score is None else score,
            'tier': TIERS[action], 'action_type': action, 'idempotency_key': key_of(post, action)}


def fields(resp):
    assert resp.status_code == 422, resp.text
    assert resp.headers['content-type'].startswith('application/problem+json')
    return {e['field']: e['message'] for e in resp.json()['errors']}


def driver(db_url, *args):
    """The healer-facing C API (planner_recover_stuck, _archive_failed, _action_stats)."""
    exe = os.path.join(os.path.dirname(binary()), 'tests', 'test_planner')
    env = {k: v for k, v in os.environ.items() if not k.startswith('STEWARD_')}
    env['ASAN_OPTIONS'] = 'detect_leaks=1:halt_on_error=1'
    r = subprocess.run([exe, 'db', db_url, *args], env=env, text=True, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60)
    assert r.returncode == 0, r.stderr
    assert 'Sanitizer' not in r.stderr and 'runtime error' not in r.stderr, r.stderr
    return json.loads(r.stdout)


def db_now(sql):
    return sql.execute('SELECT now()').fetchone()[0]


def set_config(server, **changes):
    body = json.loads(json.dumps(DEFAULT_CONFIG)) | changes
    r = server.put('/v1/planner/config', json=body)
    assert r.status_code == 200, r.text
    return r.json()


# ---------------------------------------------------------------------------------------
# metrics ingest


def test_metrics_store_and_upsert(server, keys, sql):
    post = new_post()
    t = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    r = server.post(f'/v1/posts/{post}/metrics', key=keys['service'],
                    json={'points': points(t, 'thread')})
    assert r.status_code == 200 and r.json() == {'stored': 3}
    # same timestamps again with new values: upserted, not duplicated; a timestamp given
    # twice in one request keeps its last values
    pts = points(t, [(1, 1), (2, 2), (3, 3)])
    pts.append(dict(pts[0], impressions=77, engagements=7))
    r = server.post(f'/v1/posts/{post}/metrics', key=keys['service'], json={'points': pts})
    assert r.status_code == 200 and r.json() == {'stored': 3}
    rows = sql.execute('SELECT "timestamp", impressions, engagements FROM post_metrics '
                       'WHERE post_id = %s ORDER BY "timestamp"', (post,)).fetchall()
    assert [(a, b) for _, a, b in rows] == [(77, 7), (2, 2), (3, 3)]
    assert rows[-1][0] == t
    # offsets are normalised to UTC
    r = server.post(f'/v1/posts/{post}/metrics', key=keys['service'], json={'points': [
        {'timestamp': '2026-11-22T12:30:00+02:00', 'impressions': 5, 'engagements': 0}]})
    assert r.status_code == 200
    assert sql.execute('SELECT impressions FROM post_metrics WHERE post_id = %s AND '
                       '"timestamp" = %s', (post, t + timedelta(minutes=30))).fetchone() \
        == (5,)


def test_metrics_bad_input_names_every_field(server, keys, sql):
    post = new_post()
    good = {'timestamp': '2026-11-22T10:00:00Z', 'impressions': 1, 'engagements': 0}
    body = {'points': [
        dict(good, timestamp='2026-11-22 10:00'),
        dict(good, colour='red'),
        dict(good, impressions=-1),
        dict(good, engagements=1.5),
        {'timestamp': '2026-02-30T00:00:00Z'},
        'nope',
    ], 'extra': 1}
    got = fields(server.post(f'/v1/posts/{post}/metrics', key=keys['service'], json=body))
    assert got == {
        'points[0].timestamp': 'must be an RFC 3339 date-time such as 2026-11-22T10:00:00Z',
        'points[1].colour': 'unknown field',
        'points[2].impressions': 'must be >= 0',
        'points[3].engagements': 'must be an integer',
        'points[4].timestamp': 'must be an RFC 3339 date-time such as 2026-11-22T10:00:00Z',
        'points[4].impressions': 'is required',
        'points[4].engagements': 'is required',
        'points[5]': 'must be an object',
        'extra': 'unknown field',
    }
    for bad in ({'points': []}, {'points': [good] * 1001}, {'points': good}, {}):
        got = fields(server.post(f'/v1/posts/{post}/metrics', key=keys['service'], json=bad))
        assert list(got) == ['points']
    r = server.post(f'/v1/posts/{post}/metrics', key=keys['service'],
                    json={'points': [dict(good, timestamp=f'2026-11-22T10:{i // 60:02d}:'
                                          f'{i % 60:02d}Z') for i in range(1000)]})
    assert r.status_code == 200 and r.json() == {'stored': 1000}
    r = server.post(f'/v1/posts/{post}/metrics', key=keys['service'], data='{"points": [',
                    headers={'Content-Type': 'application/json'})
    assert r.status_code == 400
    assert sql.execute('SELECT count(*) FROM post_metrics WHERE post_id = %s',
                       (post,)).fetchone() == (1000,)
    # scopes: read keys cannot write
    assert server.post(f'/v1/posts/{post}/metrics', key=keys['read'],
                       json={'points': [good]}).status_code == 403


# ---------------------------------------------------------------------------------------
# plan: reasons, tiers, window, check order


def test_insufficient_samples_stored_and_inline(server, keys):
    post = new_post()
    t = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    server.post(f'/v1/posts/{post}/metrics', key=keys['service'],
                json={'points': points(t, [(0, 0), (10, 0)])})
    assert plan(server, post, keys, now=t) == {
        'eligible': False, 'reason': 'insufficient_samples', 'sample_count': 2}
    assert plan(server, new_post(), keys) == {
        'eligible': False, 'reason': 'insufficient_samples', 'sample_count': 0}
    assert plan(server, post, keys, now=t, metrics=[]) == {
        'eligible': False, 'reason': 'insufficient_samples', 'sample_count': 0}


def test_tiers_from_stored_and_inline_metrics(server, keys):
    t = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    for action in ('thread', 'edit', 'comment'):
        post = new_post()
        r = server.post(f'/v1/posts/{post}/metrics', key=keys['service'],
                        json={'points': points(t, action)})
        assert r.status_code == 200
        assert plan(server, post, keys, now=t) == eligible(post, action)
        # inline metrics are evaluated instead of the stored ones
        other = 'comment' if action != 'comment' else 'thread'
        assert plan(server, post, keys, now=t, metrics=points(t, other)) == \
            eligible(post, other)
    # exactly 0.8: 1 engagement per 100 impressions is a thread
    post = new_post()
    got = plan(server, post, keys, now=t, metrics=points(t, [(0, 0), (50, 0), (100, 1)]))
    assert got == eligible(post, 'thread', 0.8)
    # decreasing counters clamp to zero: score 1
    got = plan(server, post, keys, now=t, metrics=points(t, [(900, 90), (800, 80), (700, 70)]))
    assert got == eligible(post, 'thread', 1.0)


def test_window_edge_by_pinned_now(server, keys):
    post = new_post()
    t = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    pts = [{'timestamp': rfc(t - timedelta(minutes=90)), 'impressions': 0, 'engagements': 0},
           {'timestamp': rfc(t - timedelta(minutes=40)), 'impressions': 500, 'engagements': 0},
           {'timestamp': rfc(t), 'impressions': 1000, 'engagements': 0}]
    server.post(f'/v1/posts/{post}/metrics', key=keys['service'], json={'points': pts})
    assert plan(server, post, keys, now=t)['eligible'] is True
    later = t + timedelta(microseconds=1)
    assert plan(server, post, keys, now=later) == {
        'eligible': False, 'reason': 'insufficient_samples', 'sample_count': 2}
    # the same edge through inline metrics
    assert plan(server, post, keys, now=t, metrics=pts)['eligible'] is True
    assert plan(server, post, keys, now=later, metrics=pts)['sample_count'] == 2


def test_duplicate_action_for_success_and_running_only(server, keys):
    t = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    for status, dup in (('success', True), ('running', True), ('failed', False)):
        post = new_post()
        outcome(server, keys, post, 'thread', status, 'content_rejected'
                if status == 'failed' else None)
        # pinned far after the action: no frequency or cooldown in the way
        got = plan(server, post, keys, now=t + timedelta(days=400),
                   metrics=points(t + timedelta(days=400), 'thread'))
        if dup:
            assert got == {'eligible': False, 'reason': 'duplicate_action',
                           'idempotency_key': key_of(post, 'thread')}
        else:
            assert got == eligible(post, 'thread')


def test_window_frequency_cap_and_check_order(server, keys, sql):
    post = new_post()
    outcome(server, keys, post, 'comment', 'failed', 'content_rejected')
    outcome(server, keys, post, 'edit', 'failed', 'content_rejected')
    init = parse(outcome(server, keys, post, 'edit', 'failed', 'content_rejected')
                 ['initiated_at'])
    first = sql.execute('SELECT min(initiated_at) FROM actions WHERE post_id = %s',
                        (post,)).fetchone()[0]
    now = init + timedelta(seconds=1)
    # two actions in the window: a thread (no cooldown of its own) is still refused
    assert plan(server, post, keys, now=now, metrics=points(now, 'thread')) == {
        'eligible': False, 'reason': 'window_frequency_exceeded'}
    # frequency is checked before cooldown (comment is also cooling down here)
    assert plan(server, post, keys, now=now, metrics=points(now, 'comment')) == {
        'eligible': False, 'reason': 'window_frequency_exceeded'}
    # duplicate is checked before frequency
    outcome(server, keys, post, 'thread', 'success')
    assert plan(server, post, keys, now=now, metrics=points(now, 'thread'))['reason'] == \
        'duplicate_action'
    # samples are checked before everything
    assert plan(server, post, keys, now=now, metrics=points(now, [(0, 0)]))['reason'] == \
        'insufficient_samples'
    # once the older actions leave the window (initiated_at >= now - 90 min) the cap
    # lifts: at first + 90 min the comment is exactly on the edge and still counts
    edge = first + timedelta(minutes=90)
    newest = sql.execute('SELECT max(initiated_at) FROM actions WHERE post_id = %s',
                         (post,)).fetchone()[0]
    assert plan(server, post, keys, now=edge, metrics=points(edge, 'edit'))['reason'] == \
        'window_frequency_exceeded'
    past = newest + timedelta(minutes=90, microseconds=1)
    # all three left the window; edit's 2 h cooldown is still active
    assert plan(server, post, keys, now=past, metrics=points(past, 'edit')) == {
        'eligible': False, 'reason': 'action_cooldown_active'}
    # comment's 30 min cooldown has expired
    assert plan(server, post, keys, now=past, metrics=points(past, 'comment')) == \
        eligible(post, 'comment')


def test_cooldown_expiry_by_pinned_now(server, keys):
    for action, secs in (('comment', 1800), ('edit', 7200), ('thread', 10800)):
        post = new_post()
        init = parse(outcome(server, keys, post, action, 'failed', 'content_rejected')
                     ['initiated_at'])
        before = init + timedelta(seconds=secs) - timedelta(microseconds=1)
        assert plan(server, post, keys, now=before, metrics=points(before, action)) == {
            'eligible': False, 'reason': 'action_cooldown_active'}
        at = init + timedelta(seconds=secs)
        assert plan(server, post, keys, now=at, metrics=points(at, action)) == \
            eligible(post, action)
        # other action types are not cooled down by this one
        if action != 'comment':
            assert plan(server, post, keys, now=before,
                        metrics=points(before, 'comment')) == eligible(post, 'comment')


def test_cooldown_and_config_changes_apply_per_request(server, keys):
    post = new_post()
    init = parse(outcome(server, keys, post, 'comment', 'failed', 'x')['initiated_at'])
    now = init + timedelta(seconds=100)
    assert plan(server, post, keys, now=now, metrics=points(now, 'comment'))['reason'] == \
        'action_cooldown_active'
    try:
        set_config(server, cooldown_by_action_seconds={'comment': 100, 'edit': 7200,
                                                       'thread': 10800},
                   min_samples_required=2)
        assert plan(server, post, keys, now=now, metrics=points(now, 'comment')) == \
            eligible(post, 'comment')
        got = plan(server, new_post(), keys, now=now, metrics=points(now, [(0, 0), (9, 0)]))
        assert got['eligible'] is True
    finally:
        set_config(server)


def test_extreme_window_and_now(server, keys):
    post = new_post()
    early = datetime(1, 1, 1, 0, 30, tzinfo=UTC)
    assert plan(server, post, keys, now=early)['sample_count'] == 0
    try:
        set_config(server, per_post_window_minutes=2 ** 31 - 1)
        t = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
        assert plan(server, post, keys, now=t, metrics=points(t, 'thread')) == \
            eligible(post, 'thread')
        got = plan(server, post, keys, now=datetime(9999, 12, 31, 23, 59, tzinfo=UTC))
        assert got['sample_count'] == 0
    finally:
        set_config(server)


# ---------------------------------------------------------------------------------------
# claim


def test_claim_race_yields_exactly_one_eligible(server, keys, sql):
    post = new_post()
    now = datetime.now(UTC)
    r = server.post(f'/v1/posts/{post}/metrics', key=keys['service'],
                    json={'points': points(now, 'thread')})
    assert r.status_code == 200
    results, errors = [], []
    barrier = threading.Barrier(20)

    def one():
        try:
            barrier.wait()
            results.append(plan(server, post, keys, claim=True))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=one) for _ in range(20)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert len(results) == 20
    winners = [r for r in results if r['eligible']]
    assert len(winners) == 1
    assert winners[0] == eligible(post, 'thread') | {'claimed': True}
    losers = [r for r in results if not r['eligible']]
    assert all(r == {'eligible': False, 'reason': 'duplicate_action',
                     'idempotency_key': key_of(post, 'thread')} for r in losers)
    rows = sql.execute('SELECT idempotency_key, status, attempts, action_type, tier FROM actions '
                       'WHERE post_id = %s', (post,)).fetchall()
    assert rows == [(key_of(post, 'thread'), 'running', 0, 'thread', 'tier_3')]
    # the claimed action completes: one attempt
    done = outcome(server, keys, post, 'thread', 'success', outcome_obj={'url': 'https://x/1'})
    assert done['attempts'] == 1 and done['status'] == 'success'
    assert done['outcome'] == {'url': 'https://x/1'}


def test_claim_resets_a_failed_action_and_plain_plan_writes_nothing(server, keys, sql):
    post = new_post()
    first = outcome(server, keys, post, 'edit', 'failed', 'timeout')
    later = parse(first['initiated_at']) + timedelta(hours=3)
    got = plan(server, post, keys, now=later, metrics=points(later, 'edit'))
    assert got == eligible(post, 'edit')
    assert sql.execute('SELECT status FROM actions WHERE post_id = %s', (post,)).fetchall() == \
        [('failed',)]
    got = plan(server, post, keys, now=later, metrics=points(later, 'edit'), claim=True)
    assert got == eligible(post, 'edit') | {'claimed': True}
    row = sql.execute('SELECT status, attempts, error_code, initiated_at > %s FROM actions '
                      'WHERE post_id = %s', (parse(first['initiated_at']), post)).fetchone()
    assert row == ('running', 1, None, True)
    got = plan(server, post, keys, now=later, metrics=points(later, 'edit'), claim=True)
    assert got['reason'] == 'duplicate_action'
    # claim false behaves like no claim
    other = new_post()
    assert plan(server, other, keys, now=later, metrics=points(later, 'edit'),
                claim=False) == eligible(other, 'edit')
    assert sql.execute('SELECT count(*) FROM actions WHERE post_id = %s',
                       (other,)).fetchone() == (0,)


def test_plan_bad_input(server, keys):
    post = new_post()
    r = server.post(f'/v1/posts/{post}/plan', key=keys['service'], json={
        'now': 'yesterday', 'claim': 'yes', 'metrics': [{'timestamp': 'x', 'impressions': -2,
                                                        'engagements': 0, 'z': 1}],
        'dry_run': True})
    assert fields(r) == {
        'now': 'must be an RFC 3339 date-time such as 2026-11-22T10:00:00Z',
        'claim': 'must be a boolean',
        'metrics[0].timestamp': 'must be an RFC 3339 date-time such as 2026-11-22T10:00:00Z',
        'metrics[0].impressions': 'must be >= 0',
        'metrics[0].z': 'unknown field',
        'dry_run': 'unknown field',
    }
    r = server.post(f'/v1/posts/{post}/plan', key=keys['service'], json=[1])
    assert r.status_code == 422
    r = server.post(f'/v1/posts/{post}/plan', key=keys['service'],
                    json={'metrics': [{}] * 1001})
    assert list(fields(r)) == ['metrics']
    assert server.post(f'/v1/posts/{post}/plan', key=keys['read'], json={}).status_code == 403
    assert server.post(f'/v1/posts/{post}/plan', key=None, json={}).status_code == 401
    # no body at all is a plan on stored metrics at the database clock
    r = server.post(f'/v1/posts/{post}/plan', key=keys['service'])
    assert r.status_code == 200 and r.json()['reason'] == 'insufficient_samples'
    # a post id with a control character
    r = server.post('/v1/posts/a%01b/plan', key=keys['service'], json={})
    assert list(fields(r)) == ['post_id']


# ---------------------------------------------------------------------------------------
# outcomes, attempts, retry


def test_outcome_upsert_counts_attempts(server, keys, sql):
    post = new_post()
    k = key_of(post, 'comment')
    a = outcome(server, keys, post, 'comment', 'running')
    assert a['attempts'] == 1 and a['status'] == 'running' and a['idempotency_key'] == k
    assert set(a) == {'idempotency_key', 'post_id', 'action_type', 'tier', 'status', 'attempts',
                      'initiated_at', 'outcome', 'error_code', 'should_retry',
                      'retry_after_seconds', 'retry_at'}
    b = outcome(server, keys, post, 'comment', 'failed', 'timeout', {'http': 504})
    assert b['attempts'] == 2 and b['error_code'] == 'timeout' and b['outcome'] == {'http': 504}
    assert parse(b['initiated_at']) > parse(a['initiated_at'])
    # outcome and error_code are replaced, not merged
    c = outcome(server, keys, post, 'comment', 'success')
    assert c['attempts'] == 3 and c['outcome'] is None and c['error_code'] is None
    row = sql.execute('SELECT status, attempts, outcome, error_code, initiated_at FROM actions '
                      'WHERE idempotency_key = %s', (k,)).fetchone()
    assert row[:4] == ('success', 3, None, None) and row[4] == parse(c['initiated_at'])
    got = server.get(f'/v1/actions/{k}', key=keys['read'])
    assert got.status_code == 200
    assert got.json() == c | {'should_retry': False, 'retry_after_seconds': None,
                              'retry_at': None}


def test_concurrent_outcomes_count_every_attempt(server, keys, sql):
    post = new_post()
    barrier = threading.Barrier(10)
    codes = []

    def one():
        barrier.wait()
        body = {'post_id': post, 'action_type': 'edit', 'tier': 'tier_2', 'status': 'failed',
                'error_code': 'content_rejected'}
        codes.append(server.put(f'/v1/actions/{key_of(post, "edit")}', key=keys['service'],
                                json=body).status_code)

    threads = [threading.Thread(target=one) for _ in range(10)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert codes == [200] * 10
    assert sql.execute('SELECT count(*), max(attempts) FROM actions WHERE post_id = %s',
                       (post,)).fetchone() == (1, 10)


@pytest.mark.parametrize('code', TRANSIENT)
def test_retry_true_for_each_transient_code(server, keys, code):
    post = new_post()
    a = outcome(server, keys, post, 'thread', 'failed', code)
    assert a['should_retry'] is True
    assert 15 <= a['retry_after_seconds'] <= 30
    assert parse(a['retry_at']) == parse(a['initiated_at']) + \
        timedelta(seconds=a['retry_after_seconds'])
    g = server.get(f'/v1/actions/{key_of(post, "thread")}', key=keys['read']).json()
    assert g == a
    b = outcome(server, keys, post, 'thread', 'failed', code)
    assert b['should_retry'] is True and 30 <= b['retry_after_seconds'] <= 60
    # the same failure marked success or running is not retried
    for status in ('success', 'running'):
        c = outcome(server, keys, post, 'thread', status, code)
        assert c['should_retry'] is False and c['retry_after_seconds'] is None


@pytest.mark.parametrize('code', [None, 'content_rejected', 'TIMEOUT', 'timeout ', 'auth_error'])
def test_retry_false_for_other_codes(server, keys, code):
    post = new_post()
    a = outcome(server, keys, post, 'comment', 'failed', code)
    assert a['should_retry'] is False
    assert a['retry_after_seconds'] is None and a['retry_at'] is None
    g = server.get(f'/v1/actions/{key_of(post, "comment")}', key=keys['read']).json()
    assert g['should_retry'] is False and g['retry_after_seconds'] is None


def test_outcome_bad_input(server, keys):
    post = new_post()
    k = key_of(post, 'edit')
    r = server.put(f'/v1/actions/{k}', key=keys['service'], json={
        'post_id': post, 'action_type': 'reply', 'tier': 'tier_9', 'status': 'done',
        'outcome': [1], 'error_code': 5, 'attempts': 3})
    assert fields(r) == {
        'action_type': 'must be comment, edit or thread',
        'tier': 'must be tier_1, tier_2 or tier_3',
        'status': 'must be running, success or failed',
        'outcome': 'must be an object',
        'error_code': 'must be a string',
        'attempts': 'unknown field',
    }
    r = server.put(f'/v1/actions/{k}', key=keys['service'], json={
        'post_id': post, 'action_type': 'edit', 'tier': 'tier_3', 'status': 'failed'})
    assert fields(r) == {'tier': 'must be tier_2 for action_type edit'}
    r = server.put(f'/v1/actions/{k}', key=keys['service'], json={})
    assert set(fields(r)) == {'post_id', 'action_type', 'tier', 'status'}
    # a key that is not the one of (post_id, action_type, tier)
    r = server.put(f'/v1/actions/{key_of(post, "thread")}', key=keys['service'], json={
        'post_id': post, 'action_type': 'edit', 'tier': 'tier_2', 'status': 'failed'})
    assert list(fields(r)) == ['idempotency_key']
    assert k in fields(r)['idempotency_key']
    r = server.put('/v1/actions/not-a-key', key=keys['service'], json={
        'post_id': post, 'action_type': 'edit', 'tier': 'tier_2', 'status': 'failed'})
    assert list(fields(r)) == ['idempotency_key']
    assert server.put(f'/v1/actions/{k}', key=keys['read'], json={}).status_code == 403
    assert server.get(f'/v1/actions/{k}', key=keys['read']).status_code == 404
    assert server.get('/v1/actions/whatever', key=keys['read']).status_code == 404


def test_actions_list_newest_first_with_cursor(server, keys):
    post = new_post()
    for action in ('thread', 'comment', 'edit'):
        outcome(server, keys, post, action, 'failed', 'x')
    outcome(server, keys, post, 'thread', 'success')  # now the newest
    seen, cursor = [], None
    for _ in range(4):
        q = f'?limit=1&cursor={cursor}' if cursor else '?limit=1'
        r = server.get(f'/v1/posts/{post}/actions{q}', key=keys['read'])
        assert r.status_code == 200
        body = r.json()
        seen += [i['action_type'] for i in body['items']]
        cursor = body['next_cursor']
        if cursor is None:
            break
    assert seen == ['thread', 'edit', 'comment']
    full = server.get(f'/v1/posts/{post}/actions', key=keys['read']).json()
    assert [i['action_type'] for i in full['items']] == seen and full['next_cursor'] is None
    assert set(full['items'][0]) == {'idempotency_key', 'post_id', 'action_type', 'tier',
                                     'status', 'attempts', 'initiated_at', 'outcome',
                                     'error_code'}
    assert server.get(f'/v1/posts/{new_post()}/actions', key=keys['read']).json() == \
        {'items': [], 'next_cursor': None}
    r = server.get(f'/v1/posts/{post}/actions?cursor=bogus&limit=0', key=keys['read'])
    assert r.status_code == 422
    r = server.get(f'/v1/posts/{post}/actions?cursor=bogus', key=keys['read'])
    assert list(fields(r)) == ['cursor']
    r = server.get(f'/v1/posts/{post}/actions?status=failed', key=keys['read'])
    assert fields(r) == {'status': 'unknown query parameter'}


# ---------------------------------------------------------------------------------------
# retry budget and its lesson


def lessons_for(sql, key):
    return sql.execute("SELECT lesson_type, work_item_id, stage, source, detail FROM lessons "
                       "WHERE work_item_id = %s ORDER BY id", (key,)).fetchall()


def test_budget_exhaustion_records_exactly_one_lesson(fresh_db_url, make_server):
    # dedup off, so a second recording attempt by the planner would show as a second row
    srv = make_server(fresh_db_url, STEWARD_LESSONS_DEDUP_WINDOW_S='0')
    keys = {'service': None}
    body = dict(DEFAULT_CONFIG, max_attempts=3)
    assert srv.put('/v1/planner/config', json=body).status_code == 200
    post = new_post()
    k = key_of(post, 'edit')
    with psycopg.connect(fresh_db_url, autocommit=True) as sql:
        for i, code in enumerate(('timeout', 'rate_limit'), start=1):
            a = outcome(srv, keys, post, 'edit', 'failed', code)
            assert a['attempts'] == i and a['should_retry'] is True
            assert lessons_for(sql, k) == []
        a = outcome(srv, keys, post, 'edit', 'failed', 'network_error')
        assert a['attempts'] == 3 and a['should_retry'] is False
        assert a['retry_after_seconds'] is None
        got = lessons_for(sql, k)
        assert got == [('transient_retry', k, 'edit', 'auto',
                        {'post_id': post, 'tier': 'tier_2', 'error_code': 'network_error',
                         'attempts': 3, 'max_attempts': 3})]
        # further failures past the budget record nothing more
        for code in ('timeout', 'service_unavailable'):
            assert outcome(srv, keys, post, 'edit', 'failed', code)['should_retry'] is False
        assert len(lessons_for(sql, k)) == 1
        # a non-transient failure reaching the budget is not a transient_retry
        other = new_post()
        for _ in range(3):
            outcome(srv, keys, other, 'edit', 'failed', 'content_rejected')
        assert lessons_for(sql, key_of(other, 'edit')) == []


def test_lesson_failure_never_fails_the_outcome(fresh_db_url, make_server):
    srv = make_server(fresh_db_url)
    assert srv.put('/v1/planner/config',
                   json=dict(DEFAULT_CONFIG, max_attempts=1)).status_code == 200
    with psycopg.connect(fresh_db_url, autocommit=True) as sql:
        sql.execute('DROP TABLE lessons CASCADE')
    post = new_post()
    r = srv.put(f'/v1/actions/{key_of(post, "thread")}', json={
        'post_id': post, 'action_type': 'thread', 'tier': 'tier_3', 'status': 'failed',
        'error_code': 'timeout'})
    assert r.status_code == 200, r.text
    assert r.json()['attempts'] == 1 and r.json()['should_retry'] is False
    warns = [x for x in srv.log_records() if x.get('level') == 'warn'
             and x.get('lesson_type') == 'transient_retry']
    assert warns, srv.log_lines()[-10:]
    with psycopg.connect(fresh_db_url, autocommit=True) as sql:
        assert sql.execute('SELECT attempts, status FROM actions WHERE post_id = %s',
                           (post,)).fetchone() == (1, 'failed')


# ---------------------------------------------------------------------------------------
# config


def test_config_get_put_and_audit(server, keys, sql):
    r = server.get('/v1/planner/config', key=keys['read'])
    assert r.status_code == 200
    body = r.json()
    assert {k: body[k] for k in DEFAULT_CONFIG} == DEFAULT_CONFIG
    assert server.put('/v1/planner/config', key=keys['service'],
                      json=DEFAULT_CONFIG).status_code == 403
    try:
        new = dict(DEFAULT_CONFIG, per_post_window_minutes=60, max_attempts=7)
        got = set_config(server, per_post_window_minutes=60, max_attempts=7)
        assert {k: got[k] for k in DEFAULT_CONFIG} == new
        assert got['updated_by'] == 'admin-env'
        again = server.get('/v1/planner/config', key=keys['read']).json()
        assert again == got
        actor, target, detail = sql.execute(
            "SELECT actor, target, detail FROM audit_log WHERE action = 'planner.config.set' "
            "ORDER BY id DESC LIMIT 1").fetchone()
        assert actor == 'admin-env' and target == 'planner:config'
        assert detail['config']['max_attempts'] == 7
        # a GET body can be PUT back as is (read-only fields are ignored)
        assert server.put('/v1/planner/config', json=again).status_code == 200
    finally:
        set_config(server)
    assert {k: v for k, v in server.get('/v1/planner/config').json().items()
            if k in DEFAULT_CONFIG} == DEFAULT_CONFIG


def test_config_validation_names_every_field(server, sql):
    before = sql.execute('SELECT updated_at FROM planner_config').fetchone()
    r = server.put('/v1/planner/config', json={
        'per_post_window_minutes': 0, 'min_samples_required': -1,
        'cooldown_by_action_seconds': {'comment': 10, 'edit': '5', 'reply': 3},
        'max_actions_per_window': 1.5, 'colour': 'red'})
    assert fields(r) == {
        'per_post_window_minutes': 'must be >= 1',
        'min_samples_required': 'must be >= 1',
        'cooldown_by_action_seconds.edit': 'must be an integer',
        'cooldown_by_action_seconds.thread': 'is required',
        'cooldown_by_action_seconds.reply': 'unknown field',
        'max_actions_per_window': 'must be an integer',
        'max_attempts': 'is required',
        'colour': 'unknown field',
    }
    r = server.put('/v1/planner/config', json=dict(DEFAULT_CONFIG,
                                                   cooldown_by_action_seconds=[1, 2, 3],
                                                   max_attempts=2 ** 31))
    assert fields(r) == {'cooldown_by_action_seconds': 'must be an object',
                         'max_attempts': 'must be <= 2147483647'}
    assert sql.execute('SELECT updated_at FROM planner_config').fetchone() == before


# ---------------------------------------------------------------------------------------
# indexes: plan cost does not depend on other posts or on history outside the window


def test_plan_queries_use_indexes(server, keys, sql):
    post = new_post()
    sql.execute("INSERT INTO post_metrics (post_id, \"timestamp\", impressions, engagements) "
                "SELECT 'bulk-' || (g % 500), now() - g * interval '1 minute', g, 0 "
                "FROM generate_series(1, 20000) g")
    sql.execute("INSERT INTO post_metrics (post_id, \"timestamp\", impressions, engagements) "
                "SELECT %s, now() - g * interval '1 minute', g, 0 "
                "FROM generate_series(100, 20000) g", (post,))
    sql.execute('ANALYZE post_metrics')
    sql.execute('ANALYZE actions')
    plan_text = '\n'.join(r[0] for r in sql.execute(
        "EXPLAIN SELECT count(*) FROM post_metrics WHERE post_id = %s "
        "AND \"timestamp\" >= now() - interval '90 minutes'", (post,)).fetchall())
    assert 'Seq Scan' not in plan_text and 'post_metrics_pkey' in plan_text
    got = plan(server, post, keys)
    assert got == {'eligible': False, 'reason': 'insufficient_samples', 'sample_count': 0}


# ---------------------------------------------------------------------------------------
# healer-facing sweeps (C API through the driver; SQL arranges the timestamps)


def test_recover_stuck_archive_and_stats(server, keys, sql, db_url):
    post = new_post()
    outcome(server, keys, post, 'thread', 'running')
    outcome(server, keys, post, 'edit', 'failed', 'content_rejected')
    outcome(server, keys, post, 'comment', 'success')
    fresh = new_post()
    outcome(server, keys, fresh, 'thread', 'running')
    # only this post's running action is old enough to be stuck
    sql.execute("UPDATE actions SET initiated_at = now() - interval '2 hours' "
                "WHERE post_id = %s", (post,))
    out = driver(db_url, 'recover', '1800')
    assert out == {'result': 'ok', 'count': 1}
    row = sql.execute('SELECT status, error_code, attempts FROM actions WHERE '
                      'idempotency_key = %s', (key_of(post, 'thread'),)).fetchone()
    assert row == ('failed', 'timeout', 2)
    assert sql.execute('SELECT status FROM actions WHERE post_id = %s',
                       (fresh,)).fetchone() == ('running',)
    got = lessons_for(sql, key_of(post, 'thread'))
    assert [(g[0], g[2], g[3]) for g in got] == [('stuck_recovered', 'thread', 'auto')]
    assert got[0][4]['post_id'] == post and got[0][4]['attempts'] == 2
    # the retry policy applies to the recovered action
    g = server.get(f'/v1/actions/{key_of(post, "thread")}', key=keys['read']).json()
    assert g['should_retry'] is True
    assert driver(db_url, 'recover', '1800') == {'result': 'ok', 'count': 0}

    # stats since 3 hours ago: this post's success and two failures (plus other tests')
    since = rfc(db_now(sql) - timedelta(hours=3))
    stats = driver(db_url, 'stats', since)
    expect = sql.execute("SELECT count(*) FILTER (WHERE status = 'success'), "
                         "count(*) FILTER (WHERE status = 'failed') FROM actions "
                         "WHERE initiated_at >= %s", (parse(since),)).fetchone()
    assert (stats['succeeded'], stats['failed']) == expect
    assert stats['succeeded'] >= 1 and stats['failed'] >= 2

    # archive: failed actions older than 7 days move, everything else stays
    sql.execute("UPDATE actions SET initiated_at = now() - interval '8 days' "
                "WHERE post_id = %s", (post,))
    before = sql.execute("SELECT count(*) FROM actions WHERE status = 'failed' AND "
                         "initiated_at < now() - interval '7 days'").fetchone()[0]
    assert before >= 2
    out = driver(db_url, 'archive', '7')
    assert out == {'result': 'ok', 'count': before}
    assert sql.execute('SELECT action_type FROM actions WHERE post_id = %s',
                       (post,)).fetchall() == [('comment',)]
    arch = sql.execute('SELECT action_type, status, attempts FROM actions_archive WHERE '
                       'post_id = %s ORDER BY action_type', (post,)).fetchall()
    assert arch == [('edit', 'failed', 1), ('thread', 'failed', 2)]
    # an archived action is still readable by key
    g = server.get(f'/v1/actions/{key_of(post, "edit")}', key=keys['read']).json()
    assert g['archived'] is True and g['status'] == 'failed'


def test_recover_stuck_exhausting_the_budget_records_transient_retry(fresh_db_url,
                                                                     make_server):
    srv = make_server(fresh_db_url)
    assert srv.put('/v1/planner/config',
                   json=dict(DEFAULT_CONFIG, max_attempts=1)).status_code == 200
    post = new_post()
    # a claim (attempts 0) that never reports back
    now = datetime.now(UTC)
    got = plan(srv, post, {'service': None}, metrics=points(now, 'thread'), claim=True)
    assert got['claimed'] is True
    with psycopg.connect(fresh_db_url, autocommit=True) as sql:
        sql.execute("UPDATE actions SET initiated_at = now() - interval '1 hour'")
        assert driver(fresh_db_url, 'recover', '1800') == {'result': 'ok', 'count': 1}
        k = key_of(post, 'thread')
        assert [r[0] for r in lessons_for(sql, k)] == ['stuck_recovered', 'transient_retry']
        assert sql.execute('SELECT attempts, status FROM actions').fetchone() == (1, 'failed')
