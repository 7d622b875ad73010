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
from harness.topology import PgBouncer  # noqa: E402

_db_counter = itertools.count()

# STEWARD_TEST_POOLER=pgbouncer: the instances the server and make_server fixtures start
# reach PostgreSQL through PgBouncer in transaction mode (LISTEN directly), and finish
# fails on any error line in their logs or PgBouncer's. Assertions on rows still read the
# database directly.
POOLER = os.environ.get('STEWARD_TEST_POOLER', '')
if POOLER not in ('', 'pgbouncer'):
    raise RuntimeError(f'STEWARD_TEST_POOLER: expected pgbouncer or nothing, got {POOLER!r}')


@pytest.fixture(scope='session')
def pg():
    cluster = PgCluster()
    cluster.start()
    cluster.bouncer = None
    try:
        if POOLER:
            # fewer server connections than one instance's pool: every server connection
            # serves several of steward's, so session state or a named statement left on
            # one shows up at once
            cluster.bouncer = PgBouncer(cluster, port=6432 + os.getpid() % 1000, pool_size=4)
        yield cluster
    finally:
        if cluster.bouncer:
            cluster.bouncer.destroy()
        cluster.destroy()


def _through_pooler(pg, db_url, settings):
    """The URL and settings an instance gets: db_url unchanged without a pooler."""
    if not pg.bouncer:
        return db_url, settings
    dbname = db_url.split('?')[0].rsplit('/', 1)[1]
    return pg.bouncer.url(dbname), {'STEWARD_DATABASE_POOLER': 'transaction',
                                    'STEWARD_DATABASE_LISTEN_URL': db_url} | settings


def _new_db(pg, prefix):
    name = f'{prefix}_{os.getpid()}_{next(_db_counter)}'
    return pg.createdb(name)


@pytest.fixture(scope='module')
def db_url(pg, request):
    return _new_db(pg, request.module.__name__.split('.')[-1][:40])


@pytest.fixture
def fresh_db_url(pg, request):
    return _new_db(pg, 'f')


def finish(server: Steward, bouncer=None):
    status = server.stop()
    reports = server.sanitizer_reports()
    assert not reports, 'sanitizer reports:\n' + '\n'.join(reports[:40])
    assert status == 0, f'steward exited with {status}:\n' + '\n'.join(server.log_lines()[-20:])
    if bouncer:
        errors = [r for r in server.log_records() if r.get('level') == 'error']
        assert not errors, 'errors behind pgbouncer:\n' + '\n'.join(map(str, errors[:20]))
        assert not bouncer.errors(), 'pgbouncer errors:\n' + '\n'.join(bouncer.errors()[:20])


@pytest.fixture(scope='module')
def server(pg, db_url):
    url, settings = _through_pooler(pg, db_url, {})
    s = Steward(url, **settings)
    yield s
    finish(s, pg.bouncer)


@pytest.fixture
def make_server(pg):
    """Starts extra instances with custom settings; all are stopped at the end."""
    started = []

    def make(db_url, **settings):
        url, settings = _through_pooler(pg, db_url, settings)
        s = Steward(url, **settings)
        started.append(s)
        return s

    yield make
    for s in started:
        if s.proc.poll() is None:
            finish(s, pg.bouncer)


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
