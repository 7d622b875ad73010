"""Production topologies with the real components: a primary with a streaming standby
that gets promoted (steward on a two-host URL), connection parameters that belong to the
operator, and the checks behind a transaction-mode pooler. The pooler run of the core
modules is scripts/test's STEWARD_TEST_POOLER=pgbouncer stage."""
import asyncio
import concurrent.futures
import threading
import time

import psycopg
import pytest

from harness.pgcluster import wait_for
from harness.steward import Steward, run_cli
from harness.topology import PgPair
from test_scouts import Device, ingest, mk_device, mk_scout, uid
from conftest import finish, make_key

DEVICES = 100


def backends(db_url, dbname):
    # client backends only: an autovacuum worker on the database has no application_name
    with psycopg.connect(db_url, autocommit=True) as c:
        return sorted(r[0] for r in c.execute(
            'SELECT application_name FROM pg_stat_activity WHERE datname = %s '
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend'", (dbname,)))


# ------------------------------------------------------ parameters of the operator


def test_url_parameters_win_over_stewards_defaults(pg, make_server):
    db = pg.createdb('topo_params')
    s = make_server(db + '&application_name=ops-chosen')
    assert s.get('/readyz', key=None).status_code == 200
    names = set(wait_for(lambda: backends(db, 'topo_params') or None, 5))
    # the pool and the listener keep the operator's name
    assert names == {'ops-chosen'}, names
    finish(s)
    s = make_server(db)
    assert s.get('/readyz', key=None).status_code == 200
    assert wait_for(lambda: set(backends(db, 'topo_params')) ==
                    {'steward', 'steward-listen'}, 5), backends(db, 'topo_params')
    # one listening connection for both channels (proposals and key revocations): each
    # listening backend is woken at every notifying commit, whatever the channel
    assert backends(db, 'topo_params').count('steward-listen') == 1


# ------------------------------------------------------------- pooler settings


def test_transaction_pooler_needs_a_listen_url(pg):
    r = run_cli(pg.createdb('topo_nolisten'), 'serve', STEWARD_DATABASE_POOLER='transaction')
    assert r.returncode != 0
    assert 'STEWARD_DATABASE_LISTEN_URL: must be set' in r.stderr
    r = run_cli(pg.url(), 'serve', STEWARD_DATABASE_POOLER='statement')
    assert r.returncode != 0 and 'expected none or transaction' in r.stderr


def test_readyz_fails_when_the_probe_never_reaches_the_listener(pg, make_server):
    """The pool and the listener on two different databases: the NOTIFY sent through the
    pool never arrives, and /readyz says why."""
    pooled, listened = pg.createdb('topo_probe_a'), pg.createdb('topo_probe_b')
    s = make_server(pooled, STEWARD_DATABASE_POOLER='transaction',
                    STEWARD_DATABASE_LISTEN_URL=listened)
    # the same database on both: ready (the probe came back), also after the 5 s
    same = make_server(pooled, STEWARD_DATABASE_POOLER='transaction',
                       STEWARD_DATABASE_LISTEN_URL=pooled)
    started = time.monotonic()
    r = wait_for(lambda: (lambda r: r if r.status_code == 503 else None)(
        s.get('/readyz', key=None)), 12)
    assert r is not None, 'readyz never failed'
    assert r.headers.get('Retry-After')
    assert 'did not reach the listener on STEWARD_DATABASE_LISTEN_URL' in r.json()['detail']
    assert any(x.get('msg') == 'notification probe not heard' for x in s.log_records())
    time.sleep(max(0.0, 5.5 - (time.monotonic() - started)))
    assert same.get('/readyz', key=None).status_code == 200


# -------------------------------------------------------------------- failover


@pytest.fixture(scope='module')
def pair():
    p = PgPair(sync=True, port=5441 + (threading.get_native_id() % 200) * 2)
    p.createdb('steward_fo')
    yield p
    p.destroy()


def test_a_standby_alone_is_not_ready_and_writes_answer_503(pair):
    """Without target_session_attrs the connection may land on a standby: 25006 is a 503
    with Retry-After (never a 500) and /readyz says there is no writable primary."""
    url = pair.url('steward_fo')  # the primary applies the migrations first
    s = Steward(url)
    finish(s)
    key = make_key(url, 'sb-service', 'service')
    assert wait_for(lambda: pair.replayed(), 10)
    sb = pair.standby
    # no admin key to ensure: that would be a write
    s = Steward(f'postgresql:///steward_fo?host={sb.sock}&port={sb.port}&user=postgres'
                '&target_session_attrs=any', STEWARD_ADMIN_KEY=None)
    try:
        r = s.get('/readyz', key=None)
        assert r.status_code == 503 and 'read-only' in r.json()['detail']
        assert r.headers.get('Retry-After')
        for i in range(5):
            r = s.post('/v1/lessons', key=key,
                       json={'lesson_type': 'gate_failure', 'repo': f'sb/{i}'})
            assert r.status_code == 503, r.text
            assert r.headers.get('Retry-After')
    finally:
        finish(s)


class Writer(threading.Thread):
    """Records lessons back to back; keeps every answer (start time, status, id,
    Retry-After)."""

    def __init__(self, server):
        super().__init__(daemon=True)
        self.server = server
        self.stop = threading.Event()
        self.answers = []
        self.errors = []

    def run(self):
        i = 0
        while not self.stop.is_set():
            i += 1
            t = time.monotonic()
            try:
                r = self.server.post('/v1/lessons', timeout=15, json={
                    'lesson_type': 'gate_failure', 'repo': f'fo/{i}', 'detail': {'n': i}})
                body = r.json() if r.status_code < 300 else {}
                self.answers.append((t, r.status_code, body.get('id'),
                                     r.headers.get('Retry-After')))
                if r.status_code == 503:
                    time.sleep(0.05)
            except Exception as e:  # noqa: BLE001 - every failure is counted
                self.errors.append(repr(e))


def test_failover_to_the_promoted_standby(pair):
    url = pair.url('steward_fo')
    s = Steward(url, STEWARD_LESSONS_DEDUP_WINDOW_S='0')
    try:
        key = make_key(url, 'fo-service', 'service')
        users = [uid('fo') for _ in range(DEVICES)]
        with concurrent.futures.ThreadPoolExecutor(8) as ex:
            scouts = list(ex.map(lambda u: mk_scout(s, u)['id'], users))
            devs = list(ex.map(lambda u: mk_device(s, u), users))
        writer = Writer(s)

        async def body():
            loop = asyncio.get_running_loop()
            devices = await asyncio.gather(*(Device.hello(s, d) for d in devs))
            writer.start()
            await asyncio.sleep(1.0)
            await loop.run_in_executor(None, pair.primary.stop, 'immediate')
            # no writable primary: not ready, and writes answer 503
            await asyncio.sleep(2.0)
            r = await loop.run_in_executor(None, lambda: s.get('/readyz', key=None))
            assert r.status_code == 503 and r.headers.get('Retry-After'), r.text
            promoted = await loop.run_in_executor(None, pair.promote)
            # writes succeed again within 5 s of the promotion
            ok_at = await loop.run_in_executor(None, lambda: wait_for(
                lambda: next((a[0] for a in writer.answers
                              if a[0] >= promoted and a[1] == 201), None), 10, 0.02))
            assert ok_at is not None, 'no write succeeded after the promotion'
            assert ok_at - promoted <= 5.0, f'first write {ok_at - promoted:.1f} s after'
            await asyncio.sleep(0.5)
            writer.stop.set()
            # proposals ingested after the promotion reach the connected devices
            with concurrent.futures.ThreadPoolExecutor(8) as ex:
                rs = list(ex.map(lambda sc: ingest(s, key, sc, f'after-{sc}'), scouts))
            assert [r.status_code for r in rs] == [201] * DEVICES, [r.text for r in rs[:3]]
            got = await asyncio.gather(*(d.proposal(timeout=20) for d in devices))
            assert [p['source_msg_ref'] for p in got] == [f'after-{sc}' for sc in scouts]
            await asyncio.gather(*(d.close() for d in devices))

        asyncio.run(body())
        writer.join(20)
        statuses = {a[1] for a in writer.answers}
        assert statuses <= {201, 503}, statuses
        assert all(a[3] for a in writer.answers if a[1] == 503)
        assert not writer.errors, writer.errors[:5]
        done = [a[2] for a in writer.answers if a[1] == 201]
        assert len(done) >= 5 and sum(a[1] == 503 for a in writer.answers) > 0
        # synchronous replication: every acknowledged write is on the new primary
        new = pair.standby.url('steward_fo')
        with psycopg.connect(new, autocommit=True) as c:
            have = {r[0] for r in c.execute('SELECT id FROM lessons WHERE id = ANY(%s)',
                                            (done,))}
        assert have == set(done), f'{len(set(done) - have)} acknowledged writes lost'
        assert s.get('/readyz', key=None).status_code == 200
        recs = s.log_records()
        assert any(r.get('msg') == 'notification listener connected' for r in recs)
        assert not [r for r in recs if r.get('level') == 'error'], \
            [r for r in recs if r.get('level') == 'error'][:5]
    finally:
        finish(s)
