"""Bond ledger (docs/api.md): baseline rules, atomic consume, admin audit, erasure, listing,
validation and concurrency, asserted on bodies and on rows."""
import datetime
import re
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import pytest

TIME_RE = re.compile(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$')
ADMIN_NAME = 'admin-env'  # the key STEWARD_ADMIN_KEY is stored under


def parse_time(s):
    assert TIME_RE.match(s), s
    return datetime.datetime.fromisoformat(s.replace('Z', '+00:00'))


def detect(server, user, detection=None, vector=None, key=None, **kw):
    body = {'detection': detection if detection is not None else {}}
    if vector is not None:
        body['ulm_vector'] = vector
    return server.post(f'/v1/bonds/{quote(user, safe="")}/detections', json=body,
                       **({'key': key} if key else {}), **kw)


def events(server, user, **params):
    r = server.get(f'/v1/bonds/{user}/events', params=params)
    assert r.status_code == 200, r.text
    return r.json()['items']


def row(sql, user, cols='*'):
    cur = sql.execute(f'SELECT {cols} FROM bonds WHERE user_id = %s', (user,))
    names = [d.name for d in cur.description]
    r = cur.fetchone()
    return dict(zip(names, r)) if r else None


def event_rows(sql, user):
    return sql.execute('SELECT event_type, detail, data FROM bond_events WHERE user_id = %s '
                       'ORDER BY id DESC', (user,)).fetchall()


def field_errors(r):
    assert r.status_code == 422, (r.status_code, r.text)
    assert r.headers['content-type'].startswith('application/problem+json')
    return {e['field']: e['message'] for e in r.json()['errors']}


# ---------------------------------------------------------------------------------------
# entries, detections, events


def test_unknown_user_reads(server, sql):
    r = server.get('/v1/bonds/nobody')
    assert r.status_code == 404
    assert r.json()['type'] == '/problems/not-found'
    assert server.get('/v1/bonds/nobody/events').status_code == 404
    r = server.get('/v1/bonds/nobody/rate-limit')
    assert r.status_code == 200
    assert r.json() == {'allowed': True, 'remaining': -1, 'cap': 0, 'count': 0}
    assert 'RateLimit' not in r.headers
    assert row(sql, 'nobody') is None  # reads never create the entry


def test_first_detection_creates_entry_and_logs_events(server, sql):
    before = datetime.datetime.now(datetime.timezone.utc)
    r = detect(server, 'u-first', {
        'phase': 'bonding', 'risk_level': 'medium', 'childhood_archetype': 'explorer',
        'egg_status': {'status': 'hatching'}, 'confidence': 0.85,
        'signals': {'primary': 'shared_memory'}, 'turn_count': 12,
    }, {'curiosity': 0.5})
    assert r.status_code == 200, r.text
    body = r.json()
    bond, event = body['bond'], body['event']
    assert set(body) == {'bond', 'event'}
    assert list(bond) == ['user_id', 'phase', 'prev_phase', 'archetype', 'phase_entered_at',
                          'turn_count', 'peak_nodes', 'risk_level', 'daily_msg_cap',
                          'daily_msg_count', 'daily_msg_reset_at', 'egg_status', 'notes',
                          'last_updated']
    assert bond['user_id'] == 'u-first'
    assert bond['phase'] == 'bonding' and bond['prev_phase'] == 'dormant'
    assert bond['archetype'] == 'explorer' and bond['egg_status'] == 'hatching'
    assert bond['risk_level'] == 'medium' and bond['turn_count'] == 12
    assert bond['peak_nodes'] == {'curiosity': 0.5}
    assert bond['daily_msg_cap'] == 0 and bond['daily_msg_count'] == 0
    assert bond['notes'] == []
    for k in ('phase_entered_at', 'daily_msg_reset_at', 'last_updated'):
        assert parse_time(bond[k]) >= before - datetime.timedelta(seconds=5)
    assert bond['phase_entered_at'] == bond['last_updated']
    assert event == {'timestamp': bond['last_updated'], 'event_type': 'phase_transition',
                     'detail': 'dormant -> bonding',
                     'data': {'from': 'dormant', 'to': 'bonding', 'confidence': 0.85,
                              'primary_signal': 'shared_memory'}}
    # newest first: the risk change was logged after the phase transition
    items = events(server, 'u-first')
    assert [e['event_type'] for e in items] == ['risk_change', 'phase_transition']
    assert items[0]['detail'] == 'risk: low -> medium'
    assert items[0]['data'] == {'from': 'low', 'to': 'medium'}
    assert items[1] == event
    assert server.get('/v1/bonds/u-first').json() == bond
    rec = row(sql, 'u-first')
    assert rec['phase'] == 'bonding' and rec['risk_level'] == 'medium'
    assert rec['turn_count'] == 12 and rec['event_count'] == 2
    assert event_rows(sql, 'u-first') == [
        ('risk_change', 'risk: low -> medium', {'from': 'low', 'to': 'medium'}),
        ('phase_transition', 'dormant -> bonding',
         {'from': 'dormant', 'to': 'bonding', 'confidence': 0.85,
          'primary_signal': 'shared_memory'})]


def test_empty_detection_moves_back_and_resets_labels(server, sql):
    detect(server, 'u-back', {'phase': 'attached', 'risk_level': 'high',
                              'childhood_archetype': 'guardian', 'egg_status': {'status': 'laid'},
                              'turn_count': 40})
    r = detect(server, 'u-back', {})
    assert r.status_code == 200
    bond, event = r.json()['bond'], r.json()['event']
    assert bond['phase'] == 'dormant' and bond['prev_phase'] == 'attached'
    assert bond['risk_level'] == 'low'
    assert bond['archetype'] == 'unknown' and bond['egg_status'] == 'none'
    assert bond['turn_count'] == 40  # kept when not given
    assert event['detail'] == 'attached -> dormant'
    assert event['data'] == {'from': 'attached', 'to': 'dormant', 'confidence': 0.0,
                             'primary_signal': ''}
    items = events(server, 'u-back')
    assert [e['detail'] for e in items] == ['risk: high -> low', 'attached -> dormant',
                                           'risk: low -> high', 'dormant -> attached']
    assert row(sql, 'u-back')['event_count'] == 4


def test_same_phase_and_risk_log_nothing(server, sql):
    first = detect(server, 'u-same', {'phase': 'curious', 'turn_count': 1}).json()
    r = detect(server, 'u-same', {'phase': 'curious', 'turn_count': 2})
    assert r.status_code == 200
    assert r.json()['event'] is None
    bond = r.json()['bond']
    assert bond['turn_count'] == 2
    assert bond['phase_entered_at'] == first['bond']['phase_entered_at']
    assert parse_time(bond['last_updated']) > parse_time(first['bond']['last_updated'])
    assert len(events(server, 'u-same')) == 1


def test_peaks_only_rise_and_round_half_even_on_binary(server, sql):
    r = detect(server, 'u-peaks', {}, {'a': 0.12345, 'b': -1.5, 'c': 123.45675,
                                       'd': 0.03125, 'e': 0})
    peaks = r.json()['bond']['peak_nodes']
    # printf("%.4f"): 0.12345 is stored just above ...45, 123.45675 just below ...75,
    # 0.03125 is an exact half (to even); nodes never above 0 are not stored
    assert peaks == {'a': 0.1235, 'c': 123.4567, 'd': 0.0312}
    r = detect(server, 'u-peaks', {}, {'a': 0.1, 'c': 200, 'b': 0.00005})
    assert r.json()['bond']['peak_nodes'] == {'a': 0.1235, 'b': 0.0001, 'c': 200,
                                              'd': 0.0312}
    r = detect(server, 'u-peaks', {}, {'a': 0.12351})  # above the stored 0.1235
    assert r.json()['bond']['peak_nodes']['a'] == 0.1235
    stored = row(sql, 'u-peaks', 'peak_nodes::text AS p')['p']
    assert stored == '{"a": 0.1235, "b": 0.0001, "c": 200, "d": 0.0312}'
    assert server.get('/v1/bonds/u-peaks').json()['peak_nodes'] == {
        'a': 0.1235, 'b': 0.0001, 'c': 200, 'd': 0.0312}


def test_events_limit_default_and_cursor(server, sql):
    for i in range(30):
        detect(server, 'u-many', {'phase': f'p{i % 2}', 'risk_level': f'r{i % 2}'})
    assert row(sql, 'u-many')['event_count'] == 60
    items = events(server, 'u-many')
    assert len(items) == 50  # default limit
    assert items[0]['event_type'] == 'risk_change' and items[0]['detail'] == 'risk: r0 -> r1'
    assert items[1]['detail'] == 'p0 -> p1'
    stamps = [parse_time(e['timestamp']) for e in items]
    assert stamps == sorted(stamps, reverse=True)
    r = server.get('/v1/bonds/u-many/events', params={'limit': 25})
    page1 = r.json()
    assert len(page1['items']) == 25 and page1['next_cursor']
    page2 = server.get('/v1/bonds/u-many/events', params={'limit': 25, 'cursor':
                                                          page1['next_cursor']}).json()
    page3 = server.get('/v1/bonds/u-many/events', params={'limit': 25, 'cursor':
                                                          page2['next_cursor']}).json()
    assert len(page2['items']) == 25 and len(page3['items']) == 10
    assert page3['next_cursor'] is None
    assert page1['items'] + page2['items'] == events(server, 'u-many', limit=50)
    assert page3['items'][-1]['detail'] == 'dormant -> p0'
    r = server.get('/v1/bonds/u-many/events', params={'cursor': 'nonsense'})
    assert field_errors(r) == {'cursor': 'is not a cursor from this list'}
    assert 'limit' in field_errors(server.get('/v1/bonds/u-many/events',
                                              params={'limit': 0}))


def test_event_cap_keeps_newest_500(server, sql):
    user = 'u-cap500'
    detect(server, user, {'phase': 'p0'})
    sql.execute("""INSERT INTO bond_events (user_id, event_type, detail, data, created_at)
                   SELECT %s, 'ulm_spike', 'old ' || g, '{}'::jsonb, now()
                   FROM generate_series(1, 499) g""", (user,))
    sql.execute('UPDATE bonds SET event_count = 500 WHERE user_id = %s', (user,))
    r = detect(server, user, {'phase': 'p1', 'risk_level': 'high'})
    assert r.status_code == 200
    n, oldest = sql.execute("SELECT count(*), min(detail) FILTER (WHERE detail LIKE 'old %%')"
                            " FROM bond_events WHERE user_id = %s", (user,)).fetchone()
    assert n == 500
    assert row(sql, user)['event_count'] == 500
    # the first event (dormant -> p0) and 'old 1' were the oldest two: gone
    details = {d for (d,) in sql.execute('SELECT detail FROM bond_events WHERE user_id = %s',
                                         (user,))}
    assert 'dormant -> p0' not in details and 'old 1' not in details
    assert 'old 2' in details and 'p0 -> p1' in details and 'risk: low -> high' in details


# ---------------------------------------------------------------------------------------
# rate limit


def test_rate_limit_cap_consume_and_refusal(server, sql, keys):
    user = 'u-rate'
    r = server.put(f'/v1/bonds/{user}/rate-limit', json={'daily_msg_cap': 3})
    assert r.status_code == 200, r.text
    assert r.json()['daily_msg_cap'] == 3 and r.json()['user_id'] == user
    ev = events(server, user)
    assert ev[0]['event_type'] == 'admin_action'
    assert ev[0]['detail'] == 'rate limit: 0 -> 3 msgs/day'
    assert ev[0]['data'] == {'old_cap': 0, 'new_cap': 3, 'actor': ADMIN_NAME}

    r = server.get(f'/v1/bonds/{user}/rate-limit', key=keys['read'])
    assert r.json() == {'allowed': True, 'remaining': 3, 'cap': 3, 'count': 0}
    assert r.headers['RateLimit-Policy'] == '"daily";q=3;w=86400'
    for i in range(1, 4):
        r = server.post(f'/v1/bonds/{user}/messages', key=keys['service'])
        assert r.status_code == 200, r.text
        assert r.json() == {'allowed': True, 'remaining': 3 - i, 'cap': 3, 'count': i}
        assert r.headers['RateLimit-Policy'] == '"daily";q=3;w=86400'
        m = re.fullmatch(r'"daily";r=(\d+);t=(\d+)', r.headers['RateLimit'])
        assert m and int(m.group(1)) == 3 - i and 86390 <= int(m.group(2)) <= 86401
    r = server.post(f'/v1/bonds/{user}/messages', key=keys['service'])
    assert r.status_code == 429
    assert r.headers['content-type'].startswith('application/problem+json')
    p = r.json()
    assert p['type'] == '/problems/quota-exceeded' and p['status'] == 429
    assert p['cap'] == 3 and p['count'] == 3 and p['remaining'] == 0
    retry = int(r.headers['Retry-After'])
    assert 86390 <= retry <= 86401
    assert r.headers['RateLimit'] == f'"daily";r=0;t={retry}'
    assert r.headers['RateLimit-Policy'] == '"daily";q=3;w=86400'
    assert row(sql, user)['daily_msg_count'] == 3

    # the check reports the refusal without writing anything
    xmin = row(sql, user, 'xmin::text AS x')['x']
    r = server.get(f'/v1/bonds/{user}/rate-limit')
    assert r.json() == {'allowed': False, 'remaining': 0, 'cap': 3, 'count': 3}
    assert row(sql, user, 'xmin::text AS x')['x'] == xmin


def test_window_resets_after_86401_seconds(server, sql):
    user = 'u-reset'
    server.put(f'/v1/bonds/{user}/rate-limit', json={'daily_msg_cap': 2})
    for _ in range(2):
        assert server.post(f'/v1/bonds/{user}/messages').status_code == 200
    assert server.post(f'/v1/bonds/{user}/messages').status_code == 429
    # exactly 86400 s is not more than 86400 s
    sql.execute("UPDATE bonds SET daily_msg_reset_at = now() - interval '86399.5 seconds'"
                " WHERE user_id = %s", (user,))
    assert server.get(f'/v1/bonds/{user}/rate-limit').json()['allowed'] is False
    sql.execute("UPDATE bonds SET daily_msg_reset_at = now() - interval '86401 seconds'"
                " WHERE user_id = %s", (user,))
    before = row(sql, user, 'daily_msg_count, daily_msg_reset_at, xmin::text AS x')
    r = server.get(f'/v1/bonds/{user}/rate-limit')
    assert r.json() == {'allowed': True, 'remaining': 2, 'cap': 2, 'count': 0}
    assert r.headers['RateLimit'] == '"daily";r=2;t=86401'
    assert row(sql, user, 'daily_msg_count, daily_msg_reset_at, xmin::text AS x') == before
    r = server.post(f'/v1/bonds/{user}/messages')
    assert r.status_code == 200
    assert r.json() == {'allowed': True, 'remaining': 1, 'cap': 2, 'count': 1}
    rec = row(sql, user, 'daily_msg_count, now() - daily_msg_reset_at AS age')
    assert rec['daily_msg_count'] == 1 and rec['age'] < datetime.timedelta(seconds=30)
    reset_at = parse_time(server.get(f'/v1/bonds/{user}').json()['daily_msg_reset_at'])
    assert datetime.datetime.now(datetime.timezone.utc) - reset_at < datetime.timedelta(
        seconds=30)


def test_cap_zero_admits_everything_and_counts(server, sql):
    user = 'u-free'
    for i in range(1, 4):
        r = server.post(f'/v1/bonds/{user}/messages')  # creates the entry on first use
        assert r.status_code == 200
        assert r.json() == {'allowed': True, 'remaining': -1, 'cap': 0, 'count': i}
        assert 'RateLimit' not in r.headers and 'RateLimit-Policy' not in r.headers
    assert server.get(f'/v1/bonds/{user}/rate-limit').json() == {
        'allowed': True, 'remaining': -1, 'cap': 0, 'count': 3}
    rec = row(sql, user)
    assert rec['daily_msg_count'] == 3 and rec['phase'] == 'dormant'
    assert rec['event_count'] == 0
    # lowering the cap below the count refuses; setting it back to 0 admits again
    r = server.put(f'/v1/bonds/{user}/rate-limit', json={'daily_msg_cap': 2})
    assert server.post(f'/v1/bonds/{user}/messages').status_code == 429
    assert server.get(f'/v1/bonds/{user}/rate-limit').json() == {
        'allowed': False, 'remaining': 0, 'cap': 2, 'count': 3}
    r = server.put(f'/v1/bonds/{user}/rate-limit', json={'daily_msg_cap': 0})
    assert [e['detail'] for e in events(server, user)] == [
        'rate limit: 2 -> 0 msgs/day', 'rate limit: 0 -> 2 msgs/day']
    assert server.post(f'/v1/bonds/{user}/messages').json()['count'] == 4


def test_concurrent_consumes_admit_exactly_the_cap(server, sql, keys):
    user = 'u-race'
    server.put(f'/v1/bonds/{user}/rate-limit', json={'daily_msg_cap': 10})

    def send(_):
        return server.post(f'/v1/bonds/{user}/messages', key=keys['service'])

    with ThreadPoolExecutor(max_workers=25) as ex:
        answers = list(ex.map(send, range(50)))
    codes = [a.status_code for a in answers]
    assert codes.count(200) == 10 and codes.count(429) == 40, codes
    assert sorted(a.json()['count'] for a in answers if a.status_code == 200) == list(
        range(1, 11))
    assert row(sql, user)['daily_msg_count'] == 10


def test_concurrent_first_consumes_create_one_entry(server, sql):
    user = 'u-race-new'
    with ThreadPoolExecutor(max_workers=20) as ex:
        answers = list(ex.map(lambda _: server.post(f'/v1/bonds/{user}/messages'), range(20)))
    assert all(a.status_code == 200 for a in answers)
    assert sorted(a.json()['count'] for a in answers) == list(range(1, 21))
    assert sql.execute('SELECT count(*) FROM bonds WHERE user_id = %s',
                       (user,)).fetchone()[0] == 1


# ---------------------------------------------------------------------------------------
# notes and admin audit


def test_notes_format_truncation_and_limit(server, sql):
    user = 'u-notes'
    long_note = 'é' * 120 + ' tail'
    before = datetime.datetime.now(datetime.timezone.utc).replace(second=0, microsecond=0)
    r = server.post(f'/v1/bonds/{user}/notes', json={'note': long_note})
    after = datetime.datetime.now(datetime.timezone.utc)
    assert r.status_code == 200, r.text
    notes = r.json()['notes']
    assert len(notes) == 1
    m = re.fullmatch(r'\[(\d{4}-\d\d-\d\d \d\d:\d\d)\] (.*)', notes[0], re.S)
    assert m and m.group(2) == long_note
    stamp = datetime.datetime.strptime(m.group(1), '%Y-%m-%d %H:%M').replace(
        tzinfo=datetime.timezone.utc)
    assert before <= stamp <= after
    ev = events(server, user)[0]
    assert ev['event_type'] == 'admin_action'
    assert ev['detail'] == 'note added: ' + 'é' * 100
    assert ev['data'] == {'note': long_note, 'actor': ADMIN_NAME}
    # the minute in the note is the minute of the event
    assert parse_time(ev['timestamp']).strftime('%Y-%m-%d %H:%M') == m.group(1)

    for i in range(22):
        assert server.post(f'/v1/bonds/{user}/notes', json={'note': f'n{i}'}).status_code == 200
    notes = server.get(f'/v1/bonds/{user}').json()['notes']
    assert len(notes) == 20
    assert [n.split('] ', 1)[1] for n in notes] == [f'n{i}' for i in range(2, 22)]
    assert len(row(sql, user, 'notes')['notes']) == 20
    assert row(sql, user)['event_count'] == 23
    short = server.post(f'/v1/bonds/{user}/notes', json={'note': 'x' * 100}).json()
    assert short['notes'][-1].endswith('] ' + 'x' * 100)
    assert events(server, user)[0]['detail'] == 'note added: ' + 'x' * 100


def test_admin_actor_is_the_key_name(server, sql, db_url):
    from conftest import make_key
    secret = make_key(db_url, 'ops-alice', 'admin')
    r = server.post('/v1/bonds/u-actor/notes', key=secret, json={'note': 'called them'})
    assert r.status_code == 200
    r = server.put('/v1/bonds/u-actor/rate-limit', key=secret, json={'daily_msg_cap': 7})
    assert r.status_code == 200
    rows = event_rows(sql, 'u-actor')
    assert rows[0] == ('admin_action', 'rate limit: 0 -> 7 msgs/day',
                       {'old_cap': 0, 'new_cap': 7, 'actor': 'ops-alice'})
    assert rows[1] == ('admin_action', 'note added: called them',
                       {'note': 'called them', 'actor': 'ops-alice'})


def test_scopes(server, sql, keys):
    detect(server, 'u-scope', {'phase': 'x'})
    read, service = keys['read'], keys['service']
    for key in (read, service):
        assert server.put('/v1/bonds/u-scope/rate-limit', key=key,
                          json={'daily_msg_cap': 1}).status_code == 403
        r = server.post('/v1/bonds/u-scope/notes', key=key, json={'note': 'n'})
        assert r.status_code == 403 and r.json()['type'] == '/problems/forbidden'
        assert server.delete('/v1/users/u-scope', key=key).status_code == 403
    assert detect(server, 'u-scope', {'phase': 'y'}, key=read).status_code == 403
    assert server.post('/v1/bonds/u-scope/messages', key=read).status_code == 403
    assert detect(server, 'u-scope', {'phase': 'y'}, key=service).status_code == 200
    assert server.post('/v1/bonds/u-scope/messages', key=service).status_code == 200
    for path in ('/v1/bonds', '/v1/bonds/u-scope', '/v1/bonds/u-scope/events',
                 '/v1/bonds/u-scope/rate-limit'):
        assert server.get(path, key=read).status_code == 200, path
        assert server.get(path, key=None).status_code == 401, path
    rec = row(sql, 'u-scope')
    assert rec['daily_msg_cap'] == 0 and rec['notes'] == [] and rec['phase'] == 'y'
    assert rec['daily_msg_count'] == 1


# ---------------------------------------------------------------------------------------
# erasure


def test_erasure_removes_everything(server, sql, keys):
    user = 'u-erase'
    detect(server, user, {'phase': 'bonding', 'risk_level': 'high'}, {'n': 1})
    server.post(f'/v1/bonds/{user}/notes', json={'note': 'private'})
    server.put(f'/v1/bonds/{user}/rate-limit', json={'daily_msg_cap': 5})
    server.post(f'/v1/bonds/{user}/messages')
    detect(server, 'u-erase-other', {'phase': 'bonding'})
    assert len(event_rows(sql, user)) == 4
    r = server.delete(f'/v1/users/{user}')
    assert r.status_code == 204 and r.content == b''
    assert row(sql, user) is None
    assert event_rows(sql, user) == []
    assert server.get(f'/v1/bonds/{user}').status_code == 404
    assert server.get(f'/v1/bonds/{user}/events').status_code == 404
    assert server.get(f'/v1/bonds/{user}/rate-limit').json() == {
        'allowed': True, 'remaining': -1, 'cap': 0, 'count': 0}
    listed = [b['user_id'] for b in server.get('/v1/bonds', params={'limit': 500}).json()['items']]
    assert user not in listed and 'u-erase-other' in listed
    assert row(sql, 'u-erase-other') is not None
    # idempotent
    assert server.delete(f'/v1/users/{user}').status_code == 204
    assert server.delete('/v1/users/never-seen').status_code == 204
    # a new write starts from the defaults
    r = detect(server, user, {})
    assert r.json()['event'] is None and r.json()['bond']['peak_nodes'] == {}


# ---------------------------------------------------------------------------------------
# listing


def test_list_filters_order_and_cursor(server, sql, keys):
    sql.execute("DELETE FROM bonds WHERE user_id LIKE 'l-%%'")
    for i in range(6):
        detect(server, f'l-{i}', {'phase': 'alpha' if i % 2 else 'beta',
                                  'risk_level': 'high' if i % 3 == 0 else 'low'})
    # an older entry moves to the top when written again
    server.post('/v1/bonds/l-0/notes', json={'note': 'touch'})
    r = server.get('/v1/bonds', params={'limit': 500}, key=keys['read'])
    ours = [b['user_id'] for b in r.json()['items'] if b['user_id'].startswith('l-')]
    assert ours == ['l-0', 'l-5', 'l-4', 'l-3', 'l-2', 'l-1']
    stamps = [parse_time(b['last_updated']) for b in r.json()['items']]
    assert stamps == sorted(stamps, reverse=True)

    def ids(**params):
        out, cursor = [], None
        while True:
            q = dict(params, limit=2)
            if cursor:
                q['cursor'] = cursor
            page = server.get('/v1/bonds', params=q).json()
            assert len(page['items']) <= 2
            out += [b['user_id'] for b in page['items']]
            cursor = page['next_cursor']
            if not cursor:
                return [i for i in out if i.startswith('l-')]

    assert ids(phase='alpha') == ['l-5', 'l-3', 'l-1']
    assert ids(risk_level='high') == ['l-0', 'l-3']
    assert ids(phase='beta', risk_level='high') == ['l-0']
    assert ids(phase='beta', risk_level='low') == ['l-4', 'l-2']
    assert server.get('/v1/bonds', params={'phase': 'nothing'}).json() == {
        'items': [], 'next_cursor': None}
    item = server.get('/v1/bonds', params={'phase': 'beta', 'risk_level': 'high'}).json()
    assert item['items'][0] == server.get('/v1/bonds/l-0').json()
    assert field_errors(server.get('/v1/bonds', params={'cursor': 'zzz'})) == {
        'cursor': 'is not a cursor from this list'}
    errs = field_errors(server.get('/v1/bonds', params={'phase': 'x' * 65,
                                                        'risk_level': '\x01'}))
    assert set(errs) == {'phase', 'risk_level'}
    assert 'limit' in field_errors(server.get('/v1/bonds', params={'limit': 501}))


def test_list_queries_use_indexes(server, sql):
    names = {r[0] for r in sql.execute(
        "SELECT indexname FROM pg_indexes WHERE tablename IN ('bonds', 'bond_events')")}
    assert {'bonds_updated', 'bonds_phase_updated', 'bonds_risk_updated',
            'bond_events_user_id'} <= names
    # with the alternatives priced out (the test table is tiny), each list query is
    # answered by walking an index in order: a sort would mean no index fits
    queries = {
        'bonds_updated': '',
        'bonds_phase_updated': "phase = 'alpha' AND",
        'bonds_risk_updated': "risk_level = 'high' AND",
    }
    for knob in ('enable_seqscan', 'enable_bitmapscan', 'enable_sort'):
        sql.execute(f'SET {knob} = off')
    try:
        for index, where in queries.items():
            plan = '\n'.join(r[0] for r in sql.execute(
                f"EXPLAIN SELECT * FROM bonds WHERE {where} (last_updated, id) < "
                "('infinity'::timestamptz, 9223372036854775807) "
                "ORDER BY last_updated DESC, id DESC LIMIT 51"))
            assert f'Index Scan using {index}' in plan and 'Sort' not in plan, plan
        plan = '\n'.join(r[0] for r in sql.execute(
            "EXPLAIN SELECT * FROM bond_events WHERE user_id = 'u-first' AND id < 100 "
            "ORDER BY id DESC LIMIT 51"))
        assert 'bond_events_user_id' in plan and 'Sort' not in plan, plan
    finally:
        sql.execute('RESET ALL')


# ---------------------------------------------------------------------------------------
# validation


def test_validation_names_every_field(server, sql):
    r = server.post('/v1/bonds/u-val/detections', json={
        'detection': {'phase': 7, 'risk_level': '', 'mood': 'x', 'confidence': 'high',
                      'turn_count': -1, 'egg_status': {'status': 'ok', 'colour': 'blue'},
                      'signals': {'primary': 3, 'secondary': 'y'}},
        'ulm_vector': {'a': 'big', 'b': True, 'c': None, 'd': 1.5},
        'extra': 1})
    errs = field_errors(r)
    assert set(errs) == {'detection.phase', 'detection.risk_level', 'detection.mood',
                         'detection.confidence', 'detection.turn_count',
                         'detection.egg_status.colour', 'detection.signals.primary',
                         'detection.signals.secondary', 'ulm_vector.a', 'ulm_vector.b',
                         'ulm_vector.c', 'extra'}
    assert errs['extra'] == 'unknown field'
    assert errs['ulm_vector.a'] == 'must be a finite number'
    assert errs['detection.mood'] == 'unknown field'
    assert field_errors(server.post('/v1/bonds/u-val/detections', json={})) == {
        'detection': 'is required'}
    assert 'detection' in field_errors(server.post('/v1/bonds/u-val/detections',
                                                   json={'detection': []}))
    assert 'ulm_vector' in field_errors(server.post('/v1/bonds/u-val/detections',
                                                    json={'detection': {}, 'ulm_vector': [1]}))
    r = server.post('/v1/bonds/u-val/detections', data='{"detection": {}, "ulm_vector": '
                    '{"a": 1e999}}', headers={'Content-Type': 'application/json'})
    assert r.status_code in (400, 422)
    assert server.post('/v1/bonds/u-val/detections', data='{"detection": ',
                       headers={'Content-Type': 'application/json'}).status_code == 400

    assert field_errors(server.post('/v1/bonds/u-val/notes', json={'note': ''})) == {
        'note': 'must be 1 to 2000 characters'}
    assert 'note' in field_errors(server.post('/v1/bonds/u-val/notes', json={'note': 'é' * 2001}))
    assert server.post('/v1/bonds/u-val/notes', json={'note': 'é' * 2000}).status_code == 200
    assert set(field_errors(server.post('/v1/bonds/u-val/notes',
                                        json={'note': 'a', 'by': 'me'}))) == {'by'}
    assert 'note' in field_errors(server.post('/v1/bonds/u-val/notes', json={}))

    for bad in (-1, 1.5, '3', 1000001, None, True):
        errs = field_errors(server.put('/v1/bonds/u-val/rate-limit', json={'daily_msg_cap': bad}))
        assert set(errs) == {'daily_msg_cap'}, bad
    assert server.put('/v1/bonds/u-val/rate-limit',
                      json={'daily_msg_cap': 1000000}).status_code == 200
    assert set(field_errors(server.put('/v1/bonds/u-val/rate-limit',
                                       json={'daily_msg_cap': 1, 'x': 0}))) == {'x'}
    assert set(field_errors(server.post('/v1/bonds/u-val/messages', json={'n': 2}))) == {'n'}

    for bad in ('x' * 201, '%01abc', '%C3', 'tab%09'):
        for method, path in (('GET', ''), ('GET', '/events'), ('GET', '/rate-limit'),
                             ('POST', '/messages')):
            r = server.request(method, f'/v1/bonds/{bad}{path}')
            assert field_errors(r) == {
                'user_id': 'must be 1 to 200 printable characters (valid UTF-8)'}, (bad, path)
        assert set(field_errors(server.delete(f'/v1/users/{bad}'))) == {'user_id'}
        assert set(field_errors(server.post(f'/v1/bonds/{bad}/detections',
                                            json={'detection': {}}))) == {'user_id'}
    ok = 'é' * 200  # the one user-id rule of src/users (bonds took 128 before)
    assert detect(server, ok, {}).status_code == 200
    assert server.get(f'/v1/bonds/{quote(ok)}').json()['user_id'] == ok
    # nothing invalid was stored
    assert row(sql, 'u-val', 'notes, daily_msg_cap, phase') == {
        'notes': row(sql, 'u-val', 'notes')['notes'], 'daily_msg_cap': 1000000,
        'phase': 'dormant'}
    assert sql.execute("SELECT count(*) FROM bond_events WHERE user_id = 'u-val' AND "
                       "event_type <> 'admin_action'").fetchone()[0] == 0


# ---------------------------------------------------------------------------------------
# concurrency of the writers


def test_concurrent_detections_keep_max_peaks_and_serial_transitions(server, sql):
    user = 'u-conc'
    phases = ['a', 'b', 'c', 'b', 'a', 'a', 'c', 'b', 'c', 'a',
              'b', 'b', 'c', 'a', 'c', 'b', 'a', 'c', 'a', 'b']
    risks = ['low', 'high'] * 10

    def send(i):
        vec = {'x': i / 7.0, 'y': (20 - i) * 0.3, f'own{i}': 0.5 + i, 'z': -i}
        r = detect(server, user, {'phase': phases[i], 'risk_level': risks[i],
                                  'confidence': i / 100}, vec)
        assert r.status_code == 200, r.text
        return r.json()

    with ThreadPoolExecutor(max_workers=20) as ex:
        answers = list(ex.map(send, range(20)))
    peaks = server.get(f'/v1/bonds/{user}').json()['peak_nodes']
    want = {'x': round(19 / 7.0, 4), 'y': 6.0} | {f'own{i}': 0.5 + i for i in range(20)}
    assert peaks == want
    assert 'z' not in peaks

    # the serial order is the order of last_updated (the clock read under the row lock)
    ordered = sorted(answers, key=lambda a: parse_time(a['bond']['last_updated']))
    assert len({a['bond']['last_updated'] for a in answers}) == 20
    expected, phase, risk = [], 'dormant', 'low'
    for a in ordered:
        b = a['bond']
        if b['phase'] != phase:
            expected.append(('phase_transition', f"{phase} -> {b['phase']}"))
            assert a['event']['detail'] == f"{phase} -> {b['phase']}"
            assert b['prev_phase'] == phase
        else:
            assert a['event'] is None
        if b['risk_level'] != risk:
            expected.append(('risk_change', f"risk: {risk} -> {b['risk_level']}"))
        phase, risk = b['phase'], b['risk_level']
    logged = [(t, d) for t, d, _ in reversed(event_rows(sql, user))]
    assert logged == expected
    assert row(sql, user)['event_count'] == len(expected)
    assert row(sql, user)['phase'] == ordered[-1]['bond']['phase']


def test_event_cap_holds_under_concurrency(server, sql):
    user = 'u-conc500'

    def send(i):
        r = server.put(f'/v1/bonds/{user}/rate-limit', json={'daily_msg_cap': i + 1})
        assert r.status_code == 200, r.text

    with ThreadPoolExecutor(max_workers=16) as ex:
        list(ex.map(send, range(600)))
    rows = sql.execute('SELECT data FROM bond_events WHERE user_id = %s ORDER BY id',
                       (user,)).fetchall()
    assert len(rows) == 500
    assert row(sql, user)['event_count'] == 500
    # the kept events are the newest 500 of one unbroken chain of cap changes
    data = [d for (d,) in rows]
    for older, newer in zip(data, data[1:]):
        assert newer['old_cap'] == older['new_cap']
    assert data[-1]['new_cap'] == row(sql, user)['daily_msg_cap']
    assert len({d['new_cap'] for d in data}) == 500


@pytest.mark.parametrize('path', ['/v1/bonds/u-ctype/detections', '/v1/bonds/u-ctype/notes'])
def test_body_must_be_json(server, path):
    r = server.post(path, data='note=x', headers={'Content-Type': 'text/plain'})
    assert r.status_code == 415
