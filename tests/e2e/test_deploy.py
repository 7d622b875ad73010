"""What deploy/ ships for watching steward, checked with Debian's promtool against a live
instance, and W3C trace context on REST and in device_hello (docs/operations.md)."""
import asyncio
import json
import os
import re
import shutil
import subprocess
import time
import uuid

import websockets
import yaml

from harness.steward import ROOT

PROMTOOL = shutil.which('promtool') or '/usr/bin/promtool'
RULES = os.path.join(ROOT, 'deploy', 'prometheus', 'alerts.yaml')
RULE_TESTS = os.path.join(ROOT, 'deploy', 'prometheus', 'alerts_test.yaml')
DASHBOARD = os.path.join(ROOT, 'deploy', 'grafana', 'steward.json')
OPERATIONS = os.path.join(ROOT, 'docs', 'operations.md')

# PromQL words that look like metric names
PROMQL_WORDS = {'and', 'or', 'unless', 'by', 'without', 'on', 'ignoring', 'group_left',
                'group_right', 'bool', 'offset', 'inf', 'nan'}
SYNTHETIC = {'up'}  # written by Prometheus itself, not by steward


def promtool(*args, stdin=None):
    return subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, text=True,
                          timeout=60)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads: identifiers outside label matchers, strings
    and grouping clauses that are not followed by '(' (functions, aggregations)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r'\{[^}]*\}', '', e)
    e = re.sub(r'\[[^\]]*\]', '', e)
    e = re.sub(r'\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)', ' ', e)
    names = set()
    for m in re.finditer(r'[A-Za-z_:][A-Za-z0-9_:]*', e):
        word, rest = m.group(0), e[m.end():].lstrip()
        if rest.startswith('(') or word.lower() in PROMQL_WORDS:
            continue
        if m.start() > 0 and (e[m.start() - 1].isdigit() or e[m.start() - 1] == '.'):
            continue  # a unit or exponent of a number, e.g. 5m, 1e3
        names.add(word)
    return names


def test_metric_names_parser():
    assert metric_names('sum by (instance) (rate(a_total{x="y",code=~"5.."}[5m])) / '
                        'sum by (instance) (b{job="s"}) > 0.05 and on(instance) c_d') == \
        {'a_total', 'b', 'c_d'}
    assert metric_names('time() - max(heal_x{j="1"}) > 3600') == {'heal_x'}


def rule_exprs():
    with open(RULES) as f:
        doc = yaml.safe_load(f)
    return {r['alert']: r['expr'] for g in doc['groups'] for r in g['rules']}


def dashboard_exprs():
    with open(DASHBOARD) as f:
        dash = json.load(f)
    return [t['expr'] for p in dash['panels'] for t in p['targets']]


def scrape(server):
    # some traffic first, so that request series exist
    for _ in range(3):
        assert server.get('/readyz', key=None).status_code == 200
    assert server.get('/v1/nothing-here').status_code == 404
    r = server.get('/metrics', key=None)
    assert r.status_code == 200
    return r.text


def sample_names(text: str) -> set[str]:
    return {re.match(r'[A-Za-z_:][A-Za-z0-9_:]*', line).group(0)
            for line in text.splitlines() if line and not line.startswith('#')}


def test_promtool_check_rules():
    r = promtool('check', 'rules', RULES)
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'SUCCESS: 6 rules found' in r.stdout


def test_promtool_unit_tests_cover_every_alert():
    r = promtool('test', 'rules', RULE_TESTS)
    assert r.returncode == 0, r.stdout + r.stderr
    with open(RULE_TESTS) as f:
        tests = yaml.safe_load(f)['tests']
    firing = {t['alertname'] for g in tests for t in g['alert_rule_test'] if t['exp_alerts']}
    quiet = {t['alertname'] for g in tests for t in g['alert_rule_test'] if not t['exp_alerts']}
    assert firing == set(rule_exprs()) and quiet == set(rule_exprs())


def test_every_alert_has_a_runbook():
    with open(OPERATIONS) as f:
        ops = f.read()
    with open(RULES) as f:
        doc = yaml.safe_load(f)
    for g in doc['groups']:
        for rule in g['rules']:
            name = rule['alert']
            assert rule['annotations']['runbook'] == f'docs/operations.md#{name.lower()}'
            assert re.search(rf'^#### {name}$', ops, re.M), f'no runbook section for {name}'


def test_promtool_check_metrics_on_a_live_scrape(server):
    text = scrape(server)
    r = promtool('check', 'metrics', stdin=text)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), \
        r.stdout + r.stderr


def test_every_metric_in_the_dashboard_and_the_rules_is_scraped(server):
    have = sample_names(scrape(server))
    wanted = {}
    for alert, expr in rule_exprs().items():
        for n in metric_names(expr):
            wanted.setdefault(n, []).append(f'alert {alert}')
    for expr in dashboard_exprs():
        for n in metric_names(expr):
            wanted.setdefault(n, []).append('dashboard')
    assert len(wanted) >= 15
    missing = {n: where for n, where in wanted.items() if n not in have and n not in SYNTHETIC}
    assert not missing, missing


# ---------------------------------------------------------------- trace context

TRACE = '4bf92f3577b34da6a3ce929d0e0e4736'
PARENT = '00f067aa0ba902b7'


def test_traceparent_is_echoed_and_on_every_line_of_its_request(server):
    tp = f'00-{TRACE}-{PARENT}-01'
    user = f'trace-{uuid.uuid4().hex[:8]}'
    r = server.delete(f'/v1/users/{user}', headers={'traceparent': tp, 'X-Request-Id': 'rq-1'})
    assert r.status_code == 204
    assert r.headers['traceparent'] == tp and r.headers['X-Request-Id'] == 'rq-1'
    # requests without one, before and after on the same threads, carry none
    for _ in range(20):
        r2 = server.get('/livez', key=None)
        assert 'traceparent' not in r2.headers
    deadline = time.monotonic() + 5
    while True:
        recs = server.log_records()
        mine = [x for x in recs if x.get('trace_id') == TRACE]
        if len(mine) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    # the capability's line (written on a handler thread) and the access line
    assert {x['msg'] for x in mine} == {'user erased', 'request'}, mine
    assert [x['request_id'] for x in mine if x['msg'] == 'request'] == ['rq-1']
    others = [x for x in recs if x.get('msg') == 'request' and x.get('request_id') != 'rq-1']
    assert others and all('trace_id' not in x for x in others)


def test_malformed_traceparent_is_ignored(server):
    for bad in (f'00-{TRACE.upper()}-{PARENT}-01', f'00-{"0" * 32}-{PARENT}-01',
                f'ff-{TRACE}-{PARENT}-01', f'00-{TRACE}-{PARENT}-01-extra', 'garbage',
                f'00-{TRACE}-{"0" * 16}-01'):
        r = server.get('/livez', key=None, headers={'traceparent': bad})
        assert r.status_code == 200 and 'traceparent' not in r.headers, bad
    # a later version may append fields; the echo is the version 00 part
    later = f'01-{TRACE[:-1]}1-{PARENT}-01-more'
    r = server.get('/livez', key=None, headers={'traceparent': later})
    assert r.headers['traceparent'] == f'00-{TRACE[:-1]}1-{PARENT}-01'


def test_traceparent_in_device_hello(server):
    r = server.post('/v1/devices', json={'user_id': f'tr-{uuid.uuid4().hex[:8]}', 'name': 'x'})
    assert r.status_code == 201
    dev = r.json()
    trace = uuid.uuid4().hex
    tp = f'00-{trace}-{PARENT}-00'

    async def go():
        async with websockets.connect(server.ws_url, ping_interval=None) as ws:
            await ws.send(json.dumps({'type': 'device_hello', 'device_id': dev['device_id'],
                                      'token': dev['token'], 'traceparent': tp}))
            return json.loads(await asyncio.wait_for(ws.recv(), 5))
    ok = asyncio.run(go())
    assert ok['type'] == 'hello_ok' and ok['traceparent'] == tp
    deadline = time.monotonic() + 5
    while not (lines := [x for x in server.log_records() if x.get('trace_id') == trace]):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert [x['msg'] for x in lines] == ['device connected']
    assert lines[0]['device_id'] == dev['device_id'] and dev['token'] not in json.dumps(lines)
