"""Fixtures for the black-box tests: one throwaway PostgreSQL cluster per test session,
a fresh database per test module (or per test where asked), and the real binary."""
import itertools
import os
import sys

import psycopg
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

from harness.pgcluster import PgCluster  # noqa: E402
from harness.steward import ADMIN_KEY, Steward, run_cli  # noqa: E402

_db_counter = itertools.count()


@pytest.fixture(scope='session')
def pg():
    cluster = PgCluster()
    cluster.start()
    yield cluster
    cluster.destroy()


def _new_db(pg, prefix):
    name = f'{prefix}_{os.getpid()}_{next(_db_counter)}'
    return pg.createdb(name)


@pytest.fixture(scope='module')
def db_url(pg, request):
    return _new_db(pg, request.module.__name__.split('.')[-1][:40])


@pytest.fixture
def fresh_db_url(pg, request):
    return _new_db(pg, 'f')


def finish(server: Steward):
    status = server.stop()
    reports = server.sanitizer_reports()
    assert not reports, 'sanitizer reports:\n' + '\n'.join(reports[:40])
    assert status == 0, f'steward exited with {status}:\n' + '\n'.join(server.log_lines()[-20:])


@pytest.fixture(scope='module')
def server(db_url):
    s = Steward(db_url)
    yield s
    finish(s)


@pytest.fixture
def make_server():
    """Starts extra instances with custom settings; all are stopped at the end."""
    started = []

    def make(db_url, **settings):
        s = Steward(db_url, **settings)
        started.append(s)
        return s

    yield make
    for s in started:
        if s.proc.poll() is None:
            finish(s)


@pytest.fixture(scope='module')
def sql(db_url):
    """A psycopg connection (autocommit) to the module's database, for asserting rows."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        yield conn


def make_key(db_url, name, scope):
    r = run_cli(db_url, 'keys', 'create', '--name', name, '--scope', scope)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.fixture(scope='module')
def keys(server, db_url):
    """One key per scope: {'read': ..., 'service': ..., 'admin': ...}."""
    return {scope: make_key(db_url, f'{scope}-key', scope) for scope in
            ('read', 'service')} | {'admin': ADMIN_KEY}
