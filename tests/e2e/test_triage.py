"""What a triage worker needs (issue 19, section 6) against the real binary and
PostgreSQL: the scouts list, runs with the worker's cursor, batch ingest (idempotent as
the single route, in input order, one statement), the triage verdict and reason on
proposals, and examples/triage_worker.py."""
import json
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from harness.steward import ADMIN_KEY, Steward

from conftest import finish, make_key

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope='module')
def server(db_url):
    """The module's instance, on a database that counts calls of PL/pgSQL functions (for
    test_batch_is_one_statement); set before any connection opens."""
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute(f"ALTER DATABASE {c.info.dbname} SET track_functions = 'pl'")
    s = Steward(db_url)
    yield s
    finish(s)


def uid(prefix='tri'):
    return f'{prefix}-{uuid.uuid4().hex[:10]}'


def mk_scout(server, user, **kw):
    r = server.post('/v1/scouts', json={'user_id': user, 'provider': 'gmail', **kw})
    assert r.status_code == 201, r.text
    return r.json()


def batch(server, key, scout_id, items, **kw):
    return server.post(f'/v1/scouts/{scout_id}/items/batch', key=key, json={'items': items},
                       **kw)


def proposals(sql, scout_id):
    return sql.execute('SELECT source_msg_ref, id::text, reason, triage_verdict FROM proposals '
                       'WHERE scout_id = %s ORDER BY seq', (scout_id,)).fetchall()


def invalid_fields(r):
    assert r.status_code == 422, r.text
    assert r.headers['Content-Type'].startswith('application/problem+json')
    return [e['field'] for e in r.json()['errors']]


# ---------------------------------------------------------------------------------------
# GET /v1/scouts


def test_scouts_list_filters_and_pages(server, keys):
    u1, u2 = uid('list'), uid('list')
    made = [mk_scout(server, u1), mk_scout(server, u1, enabled=False), mk_scout(server, u1),
            mk_scout(server, u2)]
    ids = [s['id'] for s in made]

    def listed(query, key=None):
        r = server.get('/v1/scouts?' + query, key=key or keys['read'])
        assert r.status_code == 200, r.text
        return r.json()

    assert [s['id'] for s in listed(f'user_id={u1}')['items']] == ids[2::-1]
    assert [s['id'] for s in listed(f'user_id={u1}&enabled=true')['items']] == [ids[2], ids[0]]
    assert [s['id'] for s in listed(f'user_id={u1}&enabled=false')['items']] == [ids[1]]
    first = listed(f'user_id={u2}')['items'][0]
    assert first == made[3] | {'last_run_at': None, 'cursor': None}
    # every user's, newest first: ours are the newest four
    assert [s['id'] for s in listed('limit=4')['items']] == ids[::-1]
    disabled = [s['id'] for s in listed('enabled=false&limit=500')['items']]
    assert ids[1] in disabled and ids[0] not in disabled
    # pages: no overlap, no gap
    seen, cursor = [], None
    while True:
        page = listed(f'user_id={u1}&limit=1' + (f'&cursor={cursor}' if cursor else ''))
        seen += [s['id'] for s in page['items']]
        cursor = page['next_cursor']
        if not cursor:
            break
    assert seen == ids[2::-1]


@pytest.mark.parametrize('query, field', [
    ('enabled=yes', 'enabled'), ('user_id=a%01b', 'user_id'), ('user_id=' + 'x' * 201, 'user_id'),
    ('cursor=nope', 'cursor'), ('limit=0', 'limit'), ('limit=501', 'limit'),
    ('provider=gmail', 'provider'),
])
def test_scouts_list_bad_input(server, keys, query, field):
    assert field in invalid_fields(server.get('/v1/scouts?' + query, key=keys['read']))


def test_scouts_list_needs_a_key(server):
    assert server.get('/v1/scouts', key=None).status_code == 401


# ---------------------------------------------------------------------------------------
# POST /v1/scouts/{id}/runs


def test_runs_set_last_run_at_and_the_cursor(server, keys, sql):
    s = mk_scout(server, uid('run'))
    path = f'/v1/scouts/{s["id"]}/runs'
    r = server.post(path, key=keys['service'])  # no body at all
    assert r.status_code == 200, r.text
    first = r.json()
    assert first['last_run_at'] is not None and first['cursor'] is None
    r = server.post(path, key=keys['service'], json={'cursor': 'msg-0042|2026-11-22'})
    assert r.json()['cursor'] == 'msg-0042|2026-11-22'
    assert r.json()['last_run_at'] > first['last_run_at']
    got = server.get(f'/v1/scouts/{s["id"]}', key=keys['read']).json()
    assert got['cursor'] == 'msg-0042|2026-11-22' and got['last_run_at'] == r.json()['last_run_at']
    # without a cursor the run keeps the stored one; null clears it; "" is a cursor too
    again = server.post(path, key=keys['service'], json={}).json()
    assert again['cursor'] == 'msg-0042|2026-11-22' and again['last_run_at'] > got['last_run_at']
    assert server.post(path, key=keys['service'], json={'cursor': None}).json()['cursor'] is None
    assert server.post(path, key=keys['service'], json={'cursor': ''}).json()['cursor'] == ''
    long = 'é' * 4096  # characters, not bytes
    assert server.post(path, key=keys['service'], json={'cursor': long}).json()['cursor'] == long


def test_runs_bad_input_changes_nothing(server, keys, sql):
    s = mk_scout(server, uid('run'))
    path = f'/v1/scouts/{s["id"]}/runs'
    server.post(path, key=keys['service'], json={'cursor': 'keep'})
    before = sql.execute('SELECT last_run_at, run_cursor FROM scouts WHERE id = %s',
                         (s['id'],)).fetchone()
    for body, field in (({'cursor': 5}, 'cursor'), ({'cursor': 'x' * 4097}, 'cursor'),
                        ({'cursor': 'a', 'ran_at': 'now'}, 'ran_at'), ([], 'body')):
        assert field in invalid_fields(server.post(path, key=keys['service'], json=body))
    assert server.post(path, key=keys['read'], json={}).status_code == 403
    assert server.post(path, key=None, json={}).status_code == 401
    assert sql.execute('SELECT last_run_at, run_cursor FROM scouts WHERE id = %s',
                       (s['id'],)).fetchone() == before
    for bad in (str(uuid.uuid4()), 'not-a-uuid'):
        r = server.post(f'/v1/scouts/{bad}/runs', key=keys['service'], json={})
        assert r.status_code == 404 and r.headers['Content-Type'].startswith(
            'application/problem+json')


# ---------------------------------------------------------------------------------------
# POST /v1/scouts/{id}/items/batch


def test_batch_is_one_statement(server, db_url):
    """Runs first of the module's batches, so the only call of scouts_ingest_batch the
    statistics can show is this one; each item went through scouts_ingest."""
    def calls():
        with psycopg.connect(db_url, autocommit=True) as c:
            return dict(c.execute('SELECT funcname, calls FROM pg_stat_user_functions WHERE '
                                  "funcname IN ('scouts_ingest_batch', 'scouts_ingest')"
                                  ).fetchall())

    s = mk_scout(server, uid('one'))
    items = [{'source_msg_ref': f'o-{i}', 'verdict': 'relevant'} for i in range(200)]
    assert batch(server, ADMIN_KEY, s['id'], items).json()['queued'] == 200
    # backends send their function statistics when idle, within about ten seconds
    deadline = time.monotonic() + 20
    while (calls().get('scouts_ingest', 0) < 200 or 'scouts_ingest_batch' not in calls()) and \
            time.monotonic() < deadline:
        time.sleep(0.25)
    got = calls()
    assert got['scouts_ingest_batch'] == 1
    assert got['scouts_ingest'] >= 200  # (the pool's warm-up calls it too)


def test_batch_answers_each_item_as_the_single_route_would(server, keys, sql):
    user = uid('batch')
    s = mk_scout(server, user, auto_trash_spam=True)
    single = server.post(f'/v1/scouts/{s["id"]}/items', key=keys['service'], json={
        'source_msg_ref': 'm-0', 'verdict': 'relevant', 'reason': 'first'})
    assert single.status_code == 201
    items = []
    for i in range(500):
        if i % 10 == 3:
            items.append({'source_msg_ref': f'm-{i}', 'verdict': 'spam'})
        else:
            items.append({'source_msg_ref': f'm-{i}', 'verdict': 'relevant', 'reason': f'r{i}',
                          'subject': f's{i}', 'snippet': 'x' * 50, 'source_type': 'email'})
    items[7] = {'source_msg_ref': 'm-5', 'verdict': 'relevant'}  # repeats item 5
    r = batch(server, keys['service'], s['id'], items)
    assert r.status_code == 200, r.text
    out = r.json()
    res = out['results']
    assert len(res) == 500
    pid = {p[0]: p[1] for p in proposals(sql, s['id'])}
    assert res[0] == {'status': 200, 'queued': False, 'reason': 'duplicate',
                      'proposal_id': single.json()['proposal_id']}
    assert res[3] == {'status': 200, 'queued': False, 'reason': 'spam', 'archive': True}
    assert res[5] == {'status': 201, 'queued': True, 'proposal_id': pid['m-5']}
    assert res[7] == {'status': 200, 'queued': False, 'reason': 'duplicate',
                      'proposal_id': pid['m-5']}
    queued = [i for i in range(500) if i % 10 != 3 and i not in (0, 7)]
    assert [res[i]['proposal_id'] for i in queued] == [pid[f'm-{i}'] for i in queued]
    assert all(res[i]['status'] == 201 for i in queued)
    assert out['queued'] == len(queued)
    assert len(pid) == len(queued) + 1  # + the single route's
    # the same batch again: nothing new, the same ids, spam still spam
    again = batch(server, keys['service'], s['id'], items).json()
    assert again['queued'] == 0
    for i, one in enumerate(again['results']):
        if i % 10 == 3:
            assert one == res[i]
        else:
            assert one == {'status': 200, 'queued': False, 'reason': 'duplicate',
                           'proposal_id': pid[items[i]['source_msg_ref']]}
    assert len(proposals(sql, s['id'])) == len(pid)
    # the proposals keep the verdict and the reason, and list them
    listed = server.get(f'/v1/users/{user}/proposals?limit=500', key=keys['read']).json()['items']
    by_ref = {p['source_msg_ref']: p for p in listed}
    assert by_ref['m-11']['triage_verdict'] == 'relevant'
    assert by_ref['m-11']['triage_reason'] == 'r11' == by_ref['m-11']['reason']
    assert by_ref['m-0']['triage_reason'] == 'first'
    assert 'm-3' not in by_ref


def test_batch_paused_user_and_counts(server, keys, sql):
    user = uid('pause')
    s = mk_scout(server, user, device_inactivity_pause_days=1)
    r = server.post('/v1/devices', json={'user_id': user, 'name': 'old'})
    assert r.status_code == 201
    sql.execute("UPDATE devices SET last_seen_at = now() - interval '3 days' WHERE user_id = %s",
                (user,))
    out = batch(server, keys['service'], s['id'], [
        {'source_msg_ref': 'p-1', 'verdict': 'relevant'},
        {'source_msg_ref': 'p-2', 'verdict': 'spam'}]).json()
    assert out == {'results': [{'status': 200, 'queued': False, 'reason': 'paused_device_inactive'},
                               {'status': 200, 'queued': False, 'reason': 'spam',
                                'archive': False}],
                   'queued': 0}


def test_batch_bad_input_changes_nothing(server, keys, sql):
    s = mk_scout(server, uid('bad'))
    ok = {'source_msg_ref': 'ok', 'verdict': 'relevant'}

    def check(body, field):
        r = server.post(f'/v1/scouts/{s["id"]}/items/batch', key=keys['service'], json=body)
        assert field in invalid_fields(r), r.text

    check({}, 'items')
    check({'items': []}, 'items')
    check({'items': ok}, 'items')
    check({'items': [ok] * 501}, 'items')
    check({'items': [ok], 'extra': 1}, 'extra')
    check({'items': [ok, ok, 5]}, 'items[2]')
    check({'items': [ok] * 7 + [{'source_msg_ref': 'x', 'verdict': 'maybe'}]}, 'items[7].verdict')
    check({'items': [ok, {'verdict': 'spam'}]}, 'items[1].source_msg_ref')
    check({'items': [ok, {'source_msg_ref': 'y', 'verdict': 'spam', 'colour': 1}]},
          'items[1].colour')
    check({'items': [ok, {'source_msg_ref': 'z', 'verdict': 'relevant', 'snippet': 'x' * 10001}]},
          'items[1].snippet')
    check([ok], 'body')
    # many bad items: the answer lists 100 problems and says how many more
    r = server.post(f'/v1/scouts/{s["id"]}/items/batch', key=keys['service'],
                    json={'items': [{'verdict': 'x'}] * 300})
    errs = r.json()['errors']
    assert r.status_code == 422 and len(errs) == 101
    assert errs[-1]['field'] == 'items' and '500 more problems' in errs[-1]['message']
    assert '300 items' in errs[-1]['message']
    assert proposals(sql, s['id']) == []
    # scope, unknown and disabled scouts
    assert batch(server, keys['read'], s['id'], [ok]).status_code == 403
    assert batch(server, None, s['id'], [ok]).status_code == 401
    for bad in (str(uuid.uuid4()), 'nope'):
        r = batch(server, keys['service'], bad, [ok])
        assert r.status_code == 404 and r.json()['detail'] == 'no such scout'
    assert server.patch(f'/v1/scouts/{s["id"]}', json={'enabled': False}).status_code == 200
    r = batch(server, keys['service'], s['id'], [ok])
    assert r.status_code == 409 and r.json()['type'].endswith('scout-disabled')
    assert proposals(sql, s['id']) == []


def test_batch_body_limit_is_8_mib(server, keys, sql):
    s = mk_scout(server, uid('big'))
    # 500 items of 2,500 characters of snippet: about 1.3 MiB, above the 1 MiB of other routes
    items = [{'source_msg_ref': f'b-{i}', 'verdict': 'relevant', 'snippet': 'y' * 2500}
             for i in range(500)]
    r = batch(server, keys['service'], s['id'], items)
    assert r.status_code == 200, r.text[:300]
    assert r.json()['queued'] == 500
    assert len(json.dumps({'items': items})) > 1 << 20
    # the single route keeps its 1 MiB
    r = server.post(f'/v1/scouts/{s["id"]}/items', key=keys['service'],
                    data=b'{"x":"' + b'y' * (1 << 20) + b'"}',
                    headers={'Content-Type': 'application/json'})
    assert r.status_code == 413
    big = b'{"items":[' + b','.join([b'{"source_msg_ref":"c","verdict":"spam","reason":"' +
                                      b'z' * 20000 + b'"}'] * 430) + b']}'
    assert len(big) > 8 << 20
    r = server.post(f'/v1/scouts/{s["id"]}/items/batch', key=keys['service'], data=big,
                    headers={'Content-Type': 'application/json'})
    assert r.status_code == 413 and '8 MiB' in r.json()['detail']
    assert len(proposals(sql, s['id'])) == 500


def test_concurrent_batches_and_single_posts_make_one_proposal_per_item(server, keys, sql):
    s = mk_scout(server, uid('race'))
    refs = [f'c-{i}' for i in range(60)]
    bodies = [[{'source_msg_ref': r, 'verdict': 'relevant'} for r in refs[k::2] + refs[:10]]
              for k in range(2)] * 3

    def one_batch(items):
        r = batch(server, keys['service'], s['id'], items)
        assert r.status_code == 200, r.text
        return [(i['source_msg_ref'], x) for i, x in zip(items, r.json()['results'])]

    def one_single(ref):
        r = server.post(f'/v1/scouts/{s["id"]}/items', key=keys['service'],
                        json={'source_msg_ref': ref, 'verdict': 'relevant'})
        assert r.status_code in (200, 201), r.text
        return [(ref, r.json() | {'status': r.status_code})]

    with ThreadPoolExecutor(8) as ex:
        futs = [ex.submit(one_batch, b) for b in bodies]
        futs += [ex.submit(one_single, r) for r in refs[::3]]
        answers = [a for f in futs for a in f.result()]
    rows = proposals(sql, s['id'])
    assert sorted(r[0] for r in rows) == sorted(refs)  # one proposal per item
    pid = {r[0]: r[1] for r in rows}
    created = [ref for ref, a in answers if a['status'] == 201]
    assert sorted(created) == sorted(refs)  # each created exactly once
    assert all(a['proposal_id'] == pid[ref] for ref, a in answers)
    assert len(answers) == sum(len(b) for b in bodies) + len(refs[::3])


# ---------------------------------------------------------------------------------------
# examples/triage_worker.py


MAIL = 'Message-ID: <{n}@example.org>\nFrom: {who}@example.org\nSubject: {subject}\n\n{body}\n'


def write_mail(folder, name, n, subject, body, who='ana'):
    with open(os.path.join(folder, name), 'w') as f:
        f.write(MAIL.format(n=n, who=who, subject=subject, body=body))


def run_worker(server, key, scout_id, mailbox, *extra):
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'examples', 'triage_worker.py'),
                        '--url', server.url, '--key', key, '--scout', scout_id,
                        '--mailbox', mailbox, '--once', *extra],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_triage_worker_example(server, db_url, sql, tmp_path):
    key = make_key(db_url, 'worker-' + uuid.uuid4().hex[:8], 'service')
    user = uid('worker')
    s = mk_scout(server, user)
    box = str(tmp_path)
    write_mail(box, '0001.eml', 1, 'Invoice 2026-11', 'Your invoice is attached.')
    write_mail(box, '0002.eml', 2, 'You are a WINNER', 'Claim your lottery prize now.',
               who='promo')
    write_mail(box, '0003.eml', 3, 'Lunch?', 'Free on Thursday?')
    write_mail(box, '0004.eml', 4, 'Re: Lunch?', 'Thursday works.')
    write_mail(box, '0005.eml', 5, 'Crypto giveaway', 'Act now!', who='x')
    out = run_worker(server, key, s['id'], box, '--batch', '2')
    assert out == {'scout_id': s['id'], 'read': 5, 'batches': 3, 'queued': 3, 'duplicate': 0,
                   'spam': 2, 'paused': 0, 'other': 0, 'cursor': '0005.eml'}
    got = server.get(f'/v1/scouts/{s["id"]}', key=key).json()
    assert got['cursor'] == '0005.eml' and got['last_run_at'] is not None
    listed = server.get(f'/v1/users/{user}/proposals', key=key).json()['items']
    assert sorted((p['source_msg_ref'], p['raw_subject'], p['triage_verdict']) for p in listed) == [
        ('<1@example.org>', 'Invoice 2026-11', 'relevant'),
        ('<3@example.org>', 'Lunch?', 'relevant'),
        ('<4@example.org>', 'Re: Lunch?', 'relevant')]
    # the next poll reads only what is new since the stored cursor
    write_mail(box, '0006.eml', 6, 'Contract', 'Please sign.')
    out = run_worker(server, key, s['id'], box)
    assert out['read'] == 1 and out['queued'] == 1 and out['cursor'] == '0006.eml'
    # nothing new: the run is recorded, the cursor stays
    before = server.get(f'/v1/scouts/{s["id"]}', key=key).json()['last_run_at']
    out = run_worker(server, key, s['id'], box)
    assert out['read'] == 0 and out['cursor'] == '0006.eml'
    after = server.get(f'/v1/scouts/{s["id"]}', key=key).json()
    assert after['last_run_at'] > before and after['cursor'] == '0006.eml'
    # a lost cursor makes the worker post everything again: nothing is queued twice
    assert server.post(f'/v1/scouts/{s["id"]}/runs', key=key, json={'cursor': None}
                       ).status_code == 200
    out = run_worker(server, key, s['id'], box, '--batch', '500')
    assert out['read'] == 6 and out['queued'] == 0 and out['duplicate'] == 4
    assert len(proposals(sql, s['id'])) == 4
