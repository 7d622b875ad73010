"""Every route the binary registers is documented in openapi.yaml, and the served
document is the one in the repository."""
import os
import subprocess

import yaml

from harness.steward import ROOT, binary

METHODS = {'get', 'put', 'post', 'patch', 'delete'}


def spec():
    with open(os.path.join(ROOT, 'openapi.yaml')) as f:
        return yaml.safe_load(f)


def registered_routes():
    out = subprocess.run([binary(), 'routes'], check=True, text=True,
                         stdout=subprocess.PIPE).stdout
    return {tuple(line.split(' ', 1)) for line in out.splitlines() if line}


def test_every_registered_route_is_documented():
    paths = spec()['paths']
    documented = {(m.upper(), p) for p, ops in paths.items() for m in ops if m in METHODS}
    missing = sorted(registered_routes() - documented)
    assert not missing, f'routes missing from openapi.yaml: {missing}'


def test_every_documented_route_exists():
    paths = spec()['paths']
    documented = {(m.upper(), p) for p, ops in paths.items() for m in ops if m in METHODS}
    extra = sorted(documented - registered_routes())
    assert not extra, f'openapi.yaml documents routes the binary lacks: {extra}'


def test_documented_operations_have_responses_and_examples():
    for path, ops in spec()['paths'].items():
        for method, op in ops.items():
            if method not in METHODS:
                continue
            assert op.get('responses'), f'{method} {path} has no responses'
            assert op.get('summary'), f'{method} {path} has no summary'


def test_served_document_matches_repository(server):
    r = server.get('/openapi.yaml', key=None)
    assert r.status_code == 200
    assert r.headers['content-type'].startswith('application/yaml')
    with open(os.path.join(ROOT, 'openapi.yaml')) as f:
        assert r.text == f.read()


def _has_example(node):
    if isinstance(node, dict):
        return 'example' in node or 'examples' in node or any(_has_example(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_example(v) for v in node)
    return False


def _resolve(doc, node):
    if isinstance(node, dict) and '$ref' in node:
        for part in node['$ref'].lstrip('#/').split('/'):
            doc = doc[part]
        return doc
    return node


def test_every_success_response_has_an_example():
    doc = spec()
    for path, ops in doc['paths'].items():
        for method, op in ops.items():
            if method not in METHODS or '204' in op['responses']:
                continue
            ok = [_has_example(_resolve(doc, r)) for code, r in op['responses'].items()
                  if str(code).startswith('2')]
            assert any(ok), f'{method} {path}: no example on its success response'
