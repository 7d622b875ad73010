"""scripts/check-layers: it fails, naming the file, the line and the rule, on each kind of
forbidden arrow planted in a copy of the tree, and passes on the real tree."""
import os
import shutil
import subprocess

import pytest

REPO = os.path.join(os.path.dirname(__file__), '..', '..')
CHECK = os.path.join(REPO, 'scripts', 'check-layers')


def run(*args):
    r = subprocess.run(['/usr/bin/python3', CHECK, *args], capture_output=True, text=True,
                       timeout=60)
    return r.returncode, r.stdout


@pytest.fixture
def tree(tmp_path):
    for d in ('src', 'include'):
        shutil.copytree(os.path.join(REPO, d), tmp_path / d)
    return tmp_path


def plant(tree, path, line):
    """Adds line after the first line of path; returns its line number (2)."""
    p = tree / path
    text = p.read_text().split('\n', 1)
    p.write_text(text[0] + '\n' + line + '\n' + text[1])
    return 2


@pytest.mark.parametrize('path, include, rule', [
    ('src/core/buf.c', '"steward/pool.h"', 'core -> db: core imports nothing of ours'),
    ('src/core/json.c', '<libpq-fe.h>', 'core -> db: core imports nothing of ours'),
    ('src/db/pool.c', '<microhttpd.h>', 'db -> http: db uses core only'),
    ('src/metrics/metrics.c', '"steward/ws.h"', 'metrics -> ws: metrics is a leaf'),
    ('src/http/server.c', '"steward/dbpipe.h"', 'http -> db: http uses core and metrics only'),
    ('src/ws/ws.c', '"steward/scouts.h"', 'ws -> scouts: ws uses core and metrics only'),
    ('src/bonds/bonds.c', '"steward/ws.h"',
     "bonds -> ws: a capability's logic sees no HTTP or WebSocket"),
    ('include/steward/bonds.h', '"steward/router.h"',
     "bonds -> http: a capability's logic sees no HTTP or WebSocket"),
    ('src/scouts/scouts_http.c', '"steward/ws.h"', 'scouts -> ws: an x_http.c adapter sees no ws'),
    ('src/bonds/bonds_http.c', '<microhttpd.h>',
     'bonds -> http: an x_http.c adapter sees only http.h and router.h of http'),
    ('src/scouts/scouts.c', '"steward/bonds.h"',
     'scouts -> bonds: a capability reaches another only through hooks wired in app'),
    ('src/http/http.c', '"steward/app.h"', 'http -> app: nothing uses app'),
    ('src/planner/planner.c', '"steward/app.h"', 'planner -> app: nothing uses app'),
    ('src/bonds/bonds.c', '"scouts/scouts_int.h"',
     'a private header is included only from its own folder (src/scouts)'),
    ('src/db/sql.c', '"steward/nosuch.h"', 'unknown header: add it to the layer table'),
])
def test_planted_include_fails(tree, path, include, rule):
    line = plant(tree, path, f'#include {include}')
    rc, out = run('--root', str(tree))
    assert rc == 1, out
    assert f'{path}:{line}: #include {include}: {rule}' in out, out


@pytest.mark.parametrize('path, include', [
    ('src/bonds/bonds.c', '"steward/lessons.h"'),  # any capability may record lessons
    ('src/bonds/bonds_http.c', '"steward/router.h"'),
    ('src/scouts/scouts_ws.c', '"steward/ws.h"'),
    ('src/http/server.c', '"steward/metrics.h"'),
    ('src/app/app.c', '"steward/ws.h"'),
    ('src/scouts/scouts_listen.c', '"scouts_int.h"'),
])
def test_allowed_include_is_not_reported(tree, path, include):
    line = plant(tree, path, f'#include {include}')
    _, out = run('--root', str(tree))
    assert f'{path}:{line}:' not in out, out


def test_unknown_folder_fails(tree):
    (tree / 'src' / 'misc').mkdir()
    (tree / 'src' / 'misc' / 'x.c').write_text('int x;\n')
    rc, out = run('--root', str(tree))
    assert rc == 1
    assert 'src/misc/x.c:1: unknown folder or header: add it to the layer table' in out, out


def compile_object(build, obj, code):
    src = build / (obj + '.c')
    src.write_text(code)
    out = build / 'libsteward_core.a.p' / obj
    out.parent.mkdir(exist_ok=True)
    subprocess.run(['cc', '-c', '-o', str(out), str(src)], check=True)


@pytest.mark.parametrize('caller, callee, rule', [
    ('bonds_bonds', 'scouts_scouts',
     'bonds -> scouts: a capability reaches another only through hooks wired in app'),
    ('bonds_bonds', 'http_http', "bonds -> http: a capability's logic sees no HTTP"),
    ('core_buf', 'db_pool', 'core -> db: core imports nothing of ours'),
    ('http_server', 'db_dbpipe', 'http -> db: http uses core and metrics only'),
])
def test_call_across_a_layer_fails(tmp_path, caller, callee, rule):
    """A forward declaration calls into a forbidden layer: only the objects show it."""
    root, build = tmp_path / 'root', tmp_path / 'build'
    (root / 'src').mkdir(parents=True)
    build.mkdir()
    compile_object(build, f'src_{callee}.c.o', 'int layers_target(void) { return 7; }\n')
    compile_object(build, f'src_{caller}.c.o',
                   'int layers_target(void);\nint layers_caller(void);\n'
                   'int layers_caller(void) { return layers_target(); }\n')
    rc, out = run('--root', str(root), '--build', str(build))
    assert rc == 1, out
    folder, name = caller.split('_', 1)
    assert (f'src/{folder}/{name}.c:1: calls layers_target (defined in '
            f'src/{callee.replace("_", "/", 1)}.c): {rule}') in out, out

    # the same call into a layer below is fine
    os.remove(build / 'libsteward_core.a.p' / f'src_{callee}.c.o')
    compile_object(build, 'src_core_err.c.o', 'int layers_target(void) { return 7; }\n')
    rc, out = run('--root', str(root), '--build', str(build))
    assert rc == 0, out


def test_calls_need_a_build(tmp_path):
    (tmp_path / 'src').mkdir()
    rc, out = run('--root', str(tmp_path), '--build', str(tmp_path))
    assert rc == 1
    assert 'no object of the library' in out


def test_real_tree_passes():
    build = os.environ.get('STEWARD_BIN')
    args = ['--build', os.path.dirname(build)] if build else []
    rc, out = run(*args)
    assert rc == 0, out
