"""The audit trail (docs/api.md, "Audit trail"): every admin write records who, what, on
what and when; GET /v1/audit lists it newest first with filters and cursors."""
import uuid

import pytest

from conftest import make_key


def uid(prefix='audit'):
    return f'{prefix}-{uuid.uuid4().hex[:12]}'


@pytest.fixture(scope='module')
def ops_key(server, db_url):
    """A second admin key, so the actor is not only admin-env."""
    return make_key(db_url, 'ops-admin', 'admin')


def audit(server, key=None, **params):
    kw = {'key': key} if key else {}
    r = server.get('/v1/audit', params=params, **kw)
    assert r.status_code == 200, r.text
    return r.json()


def test_admin_writes_are_recorded(server, keys, ops_key, sql):
    user = uid()
    assert server.put(f'/v1/bonds/{user}/rate-limit', key=ops_key,
                      json={'daily_msg_cap': 20}).status_code == 200
    assert server.post(f'/v1/bonds/{user}/notes', key=ops_key,
                       json={'note': 'secret-note-text'}).status_code == 200
    s = server.post('/v1/scouts', key=ops_key, json={'user_id': user, 'provider': 'gmail'}).json()
    assert server.patch(f'/v1/scouts/{s["id"]}', key=ops_key,
                        json={'enabled': False}).status_code == 200
    d = server.post('/v1/devices', key=ops_key, json={'user_id': user, 'name': 'pc'}).json()
    assert server.delete(f'/v1/devices/{d["device_id"]}', key=ops_key).status_code == 204
    assert server.delete(f'/v1/scouts/{s["id"]}', key=ops_key).status_code == 204
    lesson = server.post('/v1/lessons', key=keys['service'],
                         json={'lesson_type': 'gate_failure', 'root_cause': 'x'}).json()['id']
    assert server.patch(f'/v1/lessons/{lesson}', key=ops_key,
                        json={'status': 'triaged', 'root_cause': 'free text'}).status_code == 200
    assert server.post('/v1/heal', key=ops_key).status_code == 200

    got = audit(server, actor='ops-admin', limit=50)['items']
    by_action = [(e['action'], e['target']) for e in reversed(got)]
    assert by_action == [
        ('bond.cap.set', f'user:{user}'), ('bond.note.add', f'user:{user}'),
        ('scout.create', f'user:{user}'), ('scout.update', f'user:{user}'),
        ('device.create', f'user:{user}'), ('device.delete', f'user:{user}'),
        ('scout.delete', f'user:{user}'), ('lesson.update', f'lesson:{lesson}'),
        ('heal.run', 'healer:sweep')]
    assert all(e['actor'] == 'ops-admin' and e['at'].endswith('Z') for e in got)
    ids = [e['id'] for e in got]
    assert ids == sorted(ids, reverse=True)
    cap = next(e for e in got if e['action'] == 'bond.cap.set')
    assert cap['detail'] == {'old_cap': 0, 'new_cap': 20}
    note = next(e for e in got if e['action'] == 'bond.note.add')
    assert note['detail'] == {'note_chars': len('secret-note-text')}
    upd = next(e for e in got if e['action'] == 'lesson.update')
    assert sorted(upd['detail']['fields']) == ['root_cause', 'status']
    assert upd['detail']['status'] == 'triaged'
    # user content never lands in the trail
    assert sql.execute("SELECT count(*) FROM audit_log WHERE detail::text LIKE '%%secret-note%%' "
                       "OR detail::text LIKE '%%free text%%'").fetchone()[0] == 0
    # the filters
    assert [e['action'] for e in audit(server, target=f'user:{user}', action='scout.update')
            ['items']] == ['scout.update']
    assert {e['action'] for e in audit(server, target=f'user:{user}')['items']} == {
        'bond.cap.set', 'bond.note.add', 'scout.create', 'scout.update', 'device.create',
        'device.delete', 'scout.delete'}
    assert audit(server, actor='nobody-at-all')['items'] == []


def test_failed_write_records_nothing(server, ops_key, sql):
    before = sql.execute('SELECT count(*) FROM audit_log').fetchone()[0]
    assert server.put('/v1/bonds/x/rate-limit', key=ops_key,
                      json={'daily_msg_cap': -1}).status_code == 422
    assert server.delete(f'/v1/scouts/{uuid.uuid4()}', key=ops_key).status_code == 404
    assert server.patch('/v1/lessons/999999999', key=ops_key,
                        json={'status': 'triaged'}).status_code == 404
    assert sql.execute('SELECT count(*) FROM audit_log').fetchone()[0] == before


def test_paging_and_since(server, ops_key):
    user = uid('page')
    for cap in range(1, 6):
        assert server.put(f'/v1/bonds/{user}/rate-limit', key=ops_key,
                          json={'daily_msg_cap': cap}).status_code == 200
    seen, cursor = [], None
    while True:
        page = audit(server, target=f'user:{user}', limit=2, **({'cursor': cursor} if cursor else {}))
        seen += [e['detail']['new_cap'] for e in page['items']]
        cursor = page['next_cursor']
        if not cursor:
            break
    assert seen == [5, 4, 3, 2, 1]
    all_rows = audit(server, target=f'user:{user}')['items']
    third = all_rows[2]['at']
    since = audit(server, target=f'user:{user}', since=third)['items']
    assert [e['detail']['new_cap'] for e in since] == [
        e['detail']['new_cap'] for e in all_rows if e['at'] >= third]
    assert audit(server, since='2999-01-01T00:00:00Z')['items'] == []


@pytest.mark.parametrize('params,field', [
    ({'action': 'Bad Action'}, 'action'), ({'since': 'yesterday'}, 'since'),
    ({'cursor': 'nope'}, 'cursor'), ({'limit': '0'}, 'limit'), ({'bogus': '1'}, 'bogus'),
    ({'actor': 'a' * 201}, 'actor'), ({'target': 'x\x01'}, 'target')])
def test_bad_filters_are_422(server, params, field):
    r = server.get('/v1/audit', params=params)
    assert r.status_code == 422
    assert r.headers['content-type'].startswith('application/problem+json')
    assert field in [e['field'] for e in r.json()['errors']]


def test_scopes(server, keys):
    assert server.get('/v1/audit', key=keys['read']).status_code == 403
    assert server.get('/v1/audit', key=keys['service']).status_code == 403
    assert server.get('/v1/audit', key=None).status_code == 401
