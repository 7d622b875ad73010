#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/) from real
requests and frames: the README walk-through, the e2e tests' bodies, the WebSocket
protocol (docs/protocol.md). Run it again after changing the input format of a target; the
files are committed. Files named by a hash were added by `fuzz_<target> -merge=1` after
the long runs (inputs that reach new code); drop them when the input format changes."""
import hashlib
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
DEV = '3f2b8c1e-4d5a-4b6c-9e7f-0a1b2c3d4e5f'
TOKEN = 'dev_' + '0123456789abcdef' * 4
PID = '8d7c6b5a-4e3f-4a1b-8c2d-1e0f9a8b7c6d'
IK = 'sheal_' + hashlib.sha256(b'p1:comment:tier_1').hexdigest()[:32]
POINTS = [{'timestamp': '2026-11-22T10:00:00Z', 'impressions': 100, 'engagements': 5},
          {'timestamp': '2026-11-22T10:20:00Z', 'impressions': 400, 'engagements': 6},
          {'timestamp': '2026-11-22T10:40:00Z', 'impressions': 900, 'engagements': 6}]


def write(target, name, data):
    d = os.path.join(HERE, 'corpus', target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), 'wb') as f:
        f.write(data)


def http(target, name, route, param='', query='', body=None):
    b = b'' if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    write(target, name, bytes([route]) + param.encode() + b'\n' + query.encode() + b'\n' + b)


METHODS = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD', 'OPTIONS', 'get', '', 'TRACE']


def router(name, method, path, cap=255):
    write('router', name, bytes([METHODS.index(method), cap]) + path.encode())


def main():
    # router: real paths of every route, plus encodings
    for i, (m, p) in enumerate([
            ('GET', '/livez'), ('GET', '/readyz'), ('GET', '/metrics'), ('GET', '/openapi.yaml'),
            ('POST', '/v1/lessons'), ('GET', '/v1/lessons'), ('GET', '/v1/lessons/snapshot'),
            ('GET', '/v1/lessons/42'), ('PATCH', '/v1/lessons/42'),
            ('POST', '/v1/posts/p1/metrics'), ('POST', '/v1/posts/p1/plan'),
            ('GET', '/v1/posts/p%2F1/actions'), ('PUT', f'/v1/actions/{IK}'),
            ('GET', f'/v1/actions/{IK}'), ('GET', '/v1/planner/config'),
            ('PUT', '/v1/planner/config'), ('GET', '/v1/bonds'), ('GET', '/v1/bonds/u1'),
            ('POST', '/v1/bonds/u1/detections'), ('GET', '/v1/bonds/u%C3%A9/rate-limit'),
            ('PUT', '/v1/bonds/u1/rate-limit'), ('POST', '/v1/bonds/u1/messages'),
            ('POST', '/v1/bonds/u1/notes'), ('GET', '/v1/bonds/u1/events'),
            ('DELETE', '/v1/users/u1'), ('POST', '/v1/scouts'), ('GET', f'/v1/scouts/{DEV}'),
            ('PATCH', f'/v1/scouts/{DEV}'), ('DELETE', f'/v1/scouts/{DEV}'),
            ('POST', f'/v1/scouts/{DEV}/items'), ('GET', '/v1/users/u1/proposals'),
            ('POST', '/v1/devices'), ('GET', '/v1/users/u1/devices'),
            ('DELETE', f'/v1/devices/{DEV}'), ('POST', '/v1/heal'), ('GET', '/v1/reports'),
            ('GET', '/v1/status'), ('PUT', '/v1/lessons'), ('GET', '/v1/bonds/%zz'),
            ('GET', '/v1/bonds/' + 'a' * 600), ('GET', '/v1//bonds'), ('GET', '/v1/bonds/u1/')]):
        router(f'route{i:02d}', m, p)

    # config: values in the order of config_doc_at; \x01 leaves a variable unset
    unset = '\x01'
    write('config', 'defaults', '\0'.join([unset] * 40))
    write('config', 'typical', '\0'.join([
        'postgresql://steward:secret@db/steward', unset, '0.0.0.0', 'a-long-admin-secret-1234',
        'debug', 'false', '8080', '8081', '8', '2000', '5000', '4', '4', '8', 'true', '3600',
        '30', '300', '10', '32', '1048576', '30', '10', '20000', '900', '7200', '1800', '7',
        '250', '4', '50', '5', '250', '2000']))
    write('config', 'bad', '\0'.join(['', '', '', 'short', 'loud', 'maybe', '-1', '70000',
                                      '0', 'x', '99999999999999999999', ' 4', '4 ']))

    # WebSocket frames, before hello (first byte even) and after (odd)
    frames = {
        'hello': {'type': 'device_hello', 'device_id': DEV, 'token': TOKEN,
                  'client': {'app_version': '1.4.2'}},
        'hello_bad': {'type': 'device_hello', 'device_id': 'nope', 'token': 'x'},
        'ack': {'type': 'scout_proposal_ack', 'proposal_id': PID},
        'ack_upper': {'type': 'scout_proposal_ack', 'proposal_id': PID.upper()},
        'ack_bad': {'type': 'scout_proposal_ack', 'proposal_id': 7},
        'unknown': {'type': 'ping'},
        'no_type': {'proposal_id': PID},
    }
    for name, f in frames.items():
        for authed in (0, 1):
            write('ws', f'{name}_{authed}', bytes([authed]) + json.dumps(f).encode())
    write('ws', 'garbage_0', b'\x00not json')
    write('ws', 'garbage_1', b'\x01[1,2')

    # lessons: POST /v1/lessons (0), GET list (1), snapshot (2), GET id (3), PATCH id (4)
    http('lessons', 'post', 0, body={'lesson_type': 'gate_failure', 'repo': 'web',
                                     'detail': {'check': 'lint'}})
    http('lessons', 'post_full', 0, body={
        'lesson_type': 'merge_hold', 'work_item_id': 'wi-1', 'task_id': 't-1', 'stage': 'ci',
        'agent': 'bot', 'repo': 'api', 'root_cause': 'flaky', 'suggestion': 'retry',
        'status': 'new', 'related_task': 't-0', 'attribution': 'platform',
        'target_repo': 'api', 'target_domain': 'reliability', 'source': 'auto',
        'detail': {'a': [1, 2, {'b': None}]}})
    http('lessons', 'list', 1, query='lesson_type=gate_failure&limit=10&cursor=abc')
    http('lessons', 'snapshot', 2)
    http('lessons', 'get', 3, param='42')
    http('lessons', 'patch', 4, param='42', body={'status': 'closed', 'root_cause': 'x'})
    http('lessons', 'patch_bad', 4, param='42', body={'lesson_type': 'x'})

    # planner: metrics (0), plan (1), post actions (2), PUT action (3), GET action (4),
    # GET config (5), PUT config (6)
    http('planner', 'metrics', 0, param='p1', body={'points': POINTS})
    http('planner', 'plan', 1, param='p1', body={'now': '2026-11-22T10:45:00Z', 'claim': True})
    http('planner', 'plan_metrics', 1, param='p1', body={'metrics': POINTS})
    http('planner', 'plan_empty', 1, param='p1')
    http('planner', 'actions', 2, param='p1', query='limit=5')
    http('planner', 'put_action', 3, param=IK, body={
        'post_id': 'p1', 'action_type': 'comment', 'tier': 'tier_1', 'status': 'failed',
        'outcome': {'reason': 'x'}, 'error_code': 'timeout'})
    http('planner', 'get_action', 4, param=IK)
    http('planner', 'config', 5)
    http('planner', 'put_config', 6, body={
        'per_post_window_minutes': 90, 'min_samples_required': 3,
        'cooldown_by_action_seconds': {'comment': 1800, 'edit': 7200, 'thread': 10800},
        'max_actions_per_window': 2, 'max_attempts': 5})

    # bonds: list (0), get (1), detections (2), rate-limit get (3), put (4), messages (5),
    # notes (6), events (7), erase (8)
    http('bonds', 'list', 0, query='phase=bonding&risk_level=low&limit=2')
    http('bonds', 'get', 1, param='u1')
    http('bonds', 'detect', 2, param='u1', body={
        'detection': {'phase': 'bonding', 'risk_level': 'medium',
                      'childhood_archetype': 'explorer', 'egg_status': {'status': 'warm'},
                      'confidence': 0.8, 'signals': {'primary': 'trust'}, 'turn_count': 12},
        'ulm_vector': {'trust': 0.42, 'joy': 0.123456}})
    http('bonds', 'detect_empty', 2, param='u%C3%A9', body={'detection': {}})
    http('bonds', 'rate', 3, param='u1')
    http('bonds', 'cap', 4, param='u1', body={'daily_msg_cap': 20})
    http('bonds', 'consume', 5, param='u1')
    http('bonds', 'note', 6, param='u1', body={'note': 'called support'})
    http('bonds', 'events', 7, param='u1', query='limit=3')
    http('bonds', 'erase', 8, param='u1')

    # scouts: create (0), get (1), patch (2), delete (3), items (4), proposals (5)
    http('scouts', 'create', 0, body={'user_id': 'u1', 'provider': 'gmail', 'enabled': True,
                                      'auto_trash_spam': False,
                                      'device_inactivity_pause_days': 7})
    http('scouts', 'get', 1, param=DEV)
    http('scouts', 'patch', 2, param=DEV, body={'enabled': False})
    http('scouts', 'delete', 3, param=DEV)
    http('scouts', 'item', 4, param=DEV, body={
        'source_msg_ref': 'msg-1', 'verdict': 'relevant', 'reason': 'invoice',
        'subject': 'Your invoice', 'snippet': 'Amount due', 'source_type': 'email'})
    http('scouts', 'spam', 4, param=DEV, body={'source_msg_ref': 'msg-2', 'verdict': 'spam'})
    http('scouts', 'proposals', 5, param='u1', query='status=queued&limit=10')

    # devices: register (0), list (1), delete (2)
    http('devices', 'register', 0, body={'user_id': 'u1', 'name': 'laptop'})
    http('devices', 'list', 1, param='u1', query='limit=2')
    http('devices', 'delete', 2, param=DEV)


if __name__ == '__main__':
    main()
