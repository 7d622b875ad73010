"""Presence by instance lease (docs/architecture.md, "Delivery in detail"): a device's hello
names the instance holding it (devices.host), each instance renews one lease row of its own
every heartbeat_s / 2 (device_hosts), and a device is online while its host's lease runs.
Idle ticks write no device row; closes are released in groups; a crashed instance's devices go
offline when its lease lapses; acks are told to other instances only when they hold another
device of the user."""
import asyncio
import re
import signal
import time

import psycopg

from harness.steward import ADMIN_KEY
from test_scouts import Device, ingest, mk_device, mk_scout, run, uid


def metric(server, name):
    text = server.get('/metrics', key=None).text
    m = re.search('^' + re.escape(name) + r' (\S+)$', text, re.M)
    return int(float(m.group(1)))


def instance_of(hello_ok):
    return hello_ok['session_id'].split('-')[0]


def online(server, user):
    """{device_id: online} of the user's devices, as the REST API reports them."""
    r = server.get(f'/v1/users/{user}/devices?limit=200')
    assert r.status_code == 200, r.text
    return {d['device_id']: d['online'] for d in r.json()['items']}


def row_versions(sql, table, key):
    """{key: xmin} of every row: an UPDATE writes a new version of the row with the
    writing transaction's id (exact and immediate, unlike pg_stat_user_tables, whose
    figures an idle backend may report seconds later)."""
    return dict(sql.execute(f'SELECT {key}::text, xmin::text FROM {table}').fetchall())


async def wait_for(pred, timeout, step=0.1):
    """Polls pred without blocking the event loop (the sockets answer the server's pings
    meanwhile: STEWARD_WS_HEARTBEAT_S=1 drops a peer silent for 7 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(step)
    return pred()


def test_idle_ticks_renew_one_lease_row_and_write_no_device(make_server, fresh_db_url):
    """STEWARD_WS_HEARTBEAT_S=1: a presence tick every second. 50 devices connected over
    3.5 s of ticks stay online while no device row is written at all; the lease row is
    renewed on every tick. The ticks also prune the lease of an instance dead for long."""
    srv = make_server(fresh_db_url, STEWARD_WS_HEARTBEAT_S=1)
    user = uid('idle')
    devs = [mk_device(srv, user, f'd{i}') for i in range(50)]

    with psycopg.connect(fresh_db_url, autocommit=True) as sql:
        # an instance dead for two days: the ticks prune its lease row and release its
        # device, keeping the lease's end as the device's last sighting
        dead = mk_device(srv, uid('dead'))
        sql.execute("INSERT INTO device_hosts VALUES ('deaddeaddeaddead', now() - interval '2 days')")
        sql.execute("UPDATE devices SET host = 'deaddeaddeaddead', "
                    "last_seen_at = now() - interval '5 days' WHERE id = %s", (dead['device_id'],))

        async def body():
            assert await wait_for(lambda: sql.execute(
                "SELECT count(*) FROM device_hosts WHERE instance = 'deaddeaddeaddead'"
            ).fetchone()[0] == 0, 5)
            host, ago = sql.execute('SELECT host, now() - last_seen_at FROM devices WHERE id = %s',
                                    (dead['device_id'],)).fetchone()
            assert host is None and 1.9 < ago.days + ago.seconds / 86400 < 2.1
            socks = await asyncio.gather(*(Device.hello(srv, d) for d in devs))
            assert all(online(srv, user).values()) and len(online(srv, user)) == 50
            dev0 = row_versions(sql, 'devices', 'id')
            lease0 = sql.execute('SELECT xmin::text, lease_until FROM device_hosts').fetchall()
            await asyncio.sleep(3.5)
            dev1 = row_versions(sql, 'devices', 'id')
            lease1 = sql.execute('SELECT xmin::text, lease_until FROM device_hosts').fetchall()
            assert len(dev0) == 51
            assert dev1 == dev0, f'{sum(dev1[k] != v for k, v in dev0.items())} device rows ' \
                                 'written by idle ticks'
            # the one lease row was rewritten, its end moved on by the ticks' 3 s or more
            assert len(lease0) == len(lease1) == 1 and lease1[0][0] != lease0[0][0]
            assert (lease1[0][1] - lease0[0][1]).total_seconds() >= 2.5
            # still online, every one of them, with the lease ahead
            assert online(srv, user) == {d['device_id']: True for d in devs}
            left = sql.execute('SELECT lease_until - now() FROM device_hosts').fetchall()
            assert len(left) == 1 and 9 < left[0][0].total_seconds() <= 12
            for s in socks:
                await s.nothing(0.01)
            await asyncio.gather(*(s.close() for s in socks))

        run(body())


def test_crashed_instance_devices_go_offline_when_its_lease_lapses(make_server, fresh_db_url):
    """SIGKILL leaves devices.host behind; the dead instance's lease (2 x 1 s + 10 s) is not
    renewed, and its devices are offline once it lapsed, while the other instance's stay."""
    a = make_server(fresh_db_url, STEWARD_WS_HEARTBEAT_S=1)
    b = make_server(fresh_db_url, STEWARD_WS_HEARTBEAT_S=1)
    user = uid('crash')
    on_a, on_b = mk_device(a, user, 'on-a'), mk_device(a, user, 'on-b')

    with psycopg.connect(fresh_db_url, autocommit=True) as sql:
        async def body():
            da = await Device.open(a, on_a)
            host_a = instance_of(await da.recv())
            db = await Device.hello(b, on_b)
            assert online(b, user) == {on_a['device_id']: True, on_b['device_id']: True}
            a.proc.send_signal(signal.SIGKILL)
            a.proc.wait()
            killed = time.monotonic()
            until = sql.execute('SELECT lease_until - now() FROM device_hosts WHERE instance = %s',
                                (host_a,)).fetchone()[0].total_seconds()
            assert 0 < until <= 12
            # the lease still runs: online, though nobody holds the socket any more
            assert online(b, user)[on_a['device_id']] is True
            assert await wait_for(lambda: not online(b, user)[on_a['device_id']], until + 3)
            took = time.monotonic() - killed
            assert until - 1.5 < took <= until + 3, (took, until)
            # the host is left behind, its lease row is not renewed
            assert sql.execute('SELECT host FROM devices WHERE id = %s',
                               (on_a['device_id'],)).fetchone()[0] == host_a
            assert online(b, user)[on_b['device_id']] is True
            await db.nothing(0.01)
            await db.close()

        run(body())
    a.kill()


def test_device_reconnected_elsewhere_stays_online_when_the_old_socket_closes(
        make_server, fresh_db_url):
    """A device's socket on A lingers after it said hello on B: when A's socket closes, A
    releases the device only where A still holds it and no hello came since, so it stays
    online (held by B); B's close then takes it offline."""
    a = make_server(fresh_db_url)
    b = make_server(fresh_db_url)
    user = uid('move')
    dev = mk_device(a, user)

    with psycopg.connect(fresh_db_url, autocommit=True) as sql:
        def host():
            return sql.execute('SELECT host FROM devices WHERE id = %s',
                               (dev['device_id'],)).fetchone()[0]

        async def body():
            old = await Device.open(a, dev)
            host_a = instance_of(await old.recv())
            assert host() == host_a
            new = await Device.open(b, dev)
            host_b = instance_of(await new.recv())
            assert host() == host_b != host_a
            before = metric(a, 'presence_release_statements_total')
            await old.close()
            # A wrote its release (matching nothing)
            assert await wait_for(lambda: metric(a, 'presence_release_statements_total') > before, 5)
            assert host() == host_b and online(a, user) == {dev['device_id']: True}
            # the same on one instance: a second socket's hello, then the first one closes
            again = await Device.hello(b, dev)
            before = metric(b, 'presence_release_statements_total')
            await new.close()
            await asyncio.sleep(0.6)  # two rounds of the release job's 250 ms
            assert host() == host_b and online(b, user) == {dev['device_id']: True}
            assert metric(b, 'presence_release_statements_total') == before  # not the last
            await again.close()
            assert await wait_for(lambda: host() is None, 5)
            assert online(a, user) == {dev['device_id']: False}
            # closed and at once back on the same instance: the release (every 250 ms)
            # mostly comes after the new hello, and must not undo it
            for _ in range(3):
                first = await Device.hello(b, dev)
                await first.close()
                back = await Device.hello(b, dev)
                await asyncio.sleep(0.6)
                assert host() == host_b and online(b, user) == {dev['device_id']: True}
                await back.close()
                assert await wait_for(lambda: host() is None, 5)

        run(body())


def test_200_concurrent_closes_are_released_in_a_few_statements(make_server, fresh_db_url):
    """200 devices close at once: every one goes offline (host cleared, last_seen_at stamped
    at the close), written by far fewer statements than devices (presence_release_*)."""
    srv = make_server(fresh_db_url)
    users = [uid(f'c{i}') for i in range(20)]
    devs = [mk_device(srv, users[i % 20], f'd{i}') for i in range(200)]
    ids = [d['device_id'] for d in devs]

    with psycopg.connect(fresh_db_url, autocommit=True) as sql:
        def held():
            return sql.execute('SELECT count(*) FROM devices WHERE id = ANY(%s::uuid[]) '
                               'AND host IS NOT NULL', (ids,)).fetchone()[0]

        async def body():
            socks = await asyncio.gather(*(Device.hello(srv, d) for d in devs))
            assert held() == 200
            seen0 = sql.execute('SELECT max(last_seen_at) FROM devices').fetchone()[0]
            stmts0 = metric(srv, 'presence_release_statements_total')
            released0 = metric(srv, 'presence_released_total')
            await asyncio.gather(*(s.close() for s in socks))
            assert await wait_for(lambda: held() == 0, 10)
            stmts = metric(srv, 'presence_release_statements_total') - stmts0
            assert metric(srv, 'presence_released_total') - released0 == 200
            print(f'\n200 closes released in {stmts} statements')
            assert 1 <= stmts <= 10
            assert sql.execute('SELECT count(*) FROM devices WHERE id = ANY(%s::uuid[]) '
                               'AND last_seen_at > %s', (ids, seen0)).fetchone()[0] == 200
            for u in users[:3]:
                assert online(srv, u) == {d['device_id']: False for d in devs[users.index(u)::20]}

        run(body())


def test_ack_is_told_to_other_instances_only_when_they_hold_a_device_of_the_user(
        make_server, fresh_db_url):
    """An ack on A notifies (a|...) when another device of the user is held by B, whose
    session gets scout_proposal_resolved; with the user's other devices on A or offline, the
    ack sends no notification at all and A's own sessions still hear of it."""
    a = make_server(fresh_db_url)
    b = make_server(fresh_db_url)
    user = uid('ack')
    s = mk_scout(a, user)
    d1, d2, d3 = (mk_device(a, user, n) for n in ('one', 'two', 'three'))
    got = []

    with psycopg.connect(fresh_db_url, autocommit=True) as listen, \
            psycopg.connect(fresh_db_url, autocommit=True) as sql:
        listen.add_notify_handler(
            lambda n: got.append(n.payload) if n.channel == 'steward_scouts' else None)
        listen.execute('LISTEN steward_scouts')

        def acks_notified():
            """The a| payloads sent up to now: a marker notified after the ack commits
            arrives after anything the ack's transaction notified."""
            marker = f'marker-{time.monotonic_ns()}'
            sql.execute('SELECT pg_notify(%s, %s)', ('steward_scouts', marker))
            deadline = time.monotonic() + 5
            while marker not in got and time.monotonic() < deadline:
                listen.execute('SELECT 1')
                time.sleep(0.02)
            assert marker in got
            out = [p for p in got if p.startswith('a|')]
            got.clear()
            return out

        def host(d):
            return sql.execute('SELECT host FROM devices WHERE id = %s',
                               (d['device_id'],)).fetchone()[0]

        async def body():
            x1 = await Device.open(a, d1)
            inst_a = instance_of(await x1.recv())
            x2 = await Device.hello(b, d2)
            pid = ingest(a, ADMIN_KEY, s['id'], 'p1').json()['proposal_id']
            assert (await x1.proposal())['id'] == pid
            assert (await x2.proposal())['id'] == pid
            acks_notified()
            await x1.ack(pid)
            assert await x1.recv() == {'type': 'ack_ok', 'proposal_id': pid}
            assert await x2.recv() == {'type': 'scout_proposal_resolved', 'proposal_id': pid}
            assert acks_notified() == [f'a|{inst_a}|{pid}|{d1["device_id"]}|{user}']

            # the other devices: one offline (B released it), one on A itself
            await x2.close()
            assert await wait_for(lambda: host(d2) is None, 5)
            x3 = await Device.hello(a, d3)
            pid2 = ingest(a, ADMIN_KEY, s['id'], 'p2').json()['proposal_id']
            assert (await x1.proposal())['id'] == pid2
            assert (await x3.proposal())['id'] == pid2
            acks_notified()
            await x1.ack(pid2)
            assert await x1.recv() == {'type': 'ack_ok', 'proposal_id': pid2}
            assert await x3.recv() == {'type': 'scout_proposal_resolved', 'proposal_id': pid2}
            assert acks_notified() == []
            for x in (x1, x3):
                await x.nothing(0.05)
                await x.close()

        run(body())


def test_overview_counts_a_device_held_under_a_live_lease_as_reached(make_server, fresh_db_url):
    """The overview's unreached users (queued proposals, no device seen for 3 days): a
    device's last_seen_at no longer moves while it stays connected, so one held by an
    instance whose lease runs counts as seen."""
    srv = make_server(fresh_db_url)
    quiet, held = uid('quiet'), uid('held')
    with psycopg.connect(fresh_db_url, autocommit=True) as sql:
        sql.execute("INSERT INTO device_hosts VALUES ('feedfacefeedface', now() + interval '1 minute')")
        for user in (quiet, held):
            s = mk_scout(srv, user)
            dev = mk_device(srv, user)
            sql.execute("UPDATE devices SET last_seen_at = now() - interval '4 days', host = %s "
                        'WHERE id = %s', ('feedfacefeedface' if user == held else None,
                                          dev['device_id']))
            assert ingest(srv, ADMIN_KEY, s['id'], 'o1').status_code == 201
        r = srv.get('/v1/overview')
        assert r.status_code == 200, r.text
        unreached = [u['user_id'] for u in r.json()['needs_attention']['unreached']]
        assert quiet in unreached and held not in unreached
