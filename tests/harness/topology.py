"""Bigger deployments for tests: a primary with a streaming standby made by
`pg_basebackup -R`, and PgBouncer in front of a cluster. Everything runs as the
`postgres` user (neither PostgreSQL nor PgBouncer runs as root) and listens on unix
sockets in throwaway directories, so several test runs never collide."""
import os
import shutil
import signal
import subprocess
import tempfile
import time

from harness.pgcluster import PgCluster, _as_postgres, wait_for


class PgPair:
    """A primary and a hot standby streaming from it. sync: the primary waits for the
    standby to flush every commit (synchronous_standby_names = '*'), so a write it
    acknowledged survives the primary's loss."""

    def __init__(self, sync: bool = True, port: int = 5441):
        self.primary = PgCluster(port=port)
        self.primary.extra = {'wal_level': 'replica', 'max_wal_senders': '4'}
        if sync:
            self.primary.extra |= {'synchronous_commit': 'on',
                                   'synchronous_standby_names': "'*'"}
        self.primary.start()
        self.standby = PgCluster(port=port + 1, initdb=False)
        _as_postgres([os.path.join(self.standby.bindir, 'pg_basebackup'), '-h',
                      self.primary.sock, '-p', str(self.primary.port), '-U', 'postgres',
                      '-D', self.standby.data, '-R', '-X', 'stream', '--no-sync'])
        self.standby.extra = {'hot_standby': 'on'}
        self.standby.start()
        assert wait_for(lambda: self.streaming(), 20), 'standby does not stream'

    def streaming(self) -> bool:
        out = _as_postgres([os.path.join(self.primary.bindir, 'psql'), '-h', self.primary.sock,
                            '-p', str(self.primary.port), '-U', 'postgres', '-Atc',
                            'SELECT count(*) FROM pg_stat_replication '
                            "WHERE state = 'streaming'"]).stdout.strip()
        return out == '1'

    def replayed(self) -> bool:
        """Whether the standby has replayed everything the primary wrote so far."""
        out = _as_postgres([os.path.join(self.primary.bindir, 'psql'), '-h', self.primary.sock,
                            '-p', str(self.primary.port), '-U', 'postgres', '-Atc',
                            'SELECT replay_lsn >= pg_current_wal_lsn() '
                            'FROM pg_stat_replication']).stdout.strip()
        return out == 't'

    def createdb(self, name: str):
        self.primary.createdb(name)

    def url(self, dbname: str, **params) -> str:
        """A two-host URL: the primary first, the standby second."""
        q = {'host': f'{self.primary.sock},{self.standby.sock}',
             'port': f'{self.primary.port},{self.standby.port}', 'user': 'postgres',
             'target_session_attrs': 'read-write'} | params
        return f'postgresql:///{dbname}?' + '&'.join(f'{k}={v}' for k, v in q.items())

    def promote(self) -> float:
        """Promotes the standby; returns the monotonic time the promotion completed. To
        fail over, stop the primary abruptly first: primary.stop('immediate')."""
        _as_postgres([os.path.join(self.standby.bindir, 'pg_ctl'), '-D', self.standby.data,
                      '-w', '-t', '30', 'promote'])
        return time.monotonic()

    def destroy(self):
        self.standby.destroy()
        self.primary.destroy()


class PgBouncer:
    """Debian's pgbouncer in front of cluster, on a unix socket only. Every database of
    the cluster is reachable under its own name."""

    def __init__(self, cluster: PgCluster, pool_mode: str = 'transaction', port: int = 6432,
                 pool_size: int = 20):
        self.bin = shutil.which('pgbouncer') or '/usr/sbin/pgbouncer'
        if not os.path.exists(self.bin):
            raise RuntimeError('pgbouncer not found (install pgbouncer)')
        self.root = tempfile.mkdtemp(prefix='steward-bouncer-')
        self.port = port
        self.log = os.path.join(self.root, 'pgbouncer.log')
        ini = os.path.join(self.root, 'pgbouncer.ini')
        users = os.path.join(self.root, 'users.txt')
        with open(users, 'w') as f:
            f.write('"postgres" ""\n')
        with open(ini, 'w') as f:
            f.write(f"""[databases]
* = host={cluster.sock} port={cluster.port} user=postgres

[pgbouncer]
listen_addr =
listen_port = {port}
unix_socket_dir = {self.root}
auth_type = trust
auth_file = {users}
pool_mode = {pool_mode}
default_pool_size = {pool_size}
max_client_conn = 1000
max_db_connections = 0
server_reset_query =
ignore_startup_parameters = extra_float_digits
logfile = {self.log}
pidfile = {os.path.join(self.root, 'pgbouncer.pid')}
log_connections = 0
log_disconnections = 0
""")
        if os.geteuid() == 0:
            import pwd
            pw = pwd.getpwnam('postgres')
            for p in (self.root, ini, users):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        cmd = [self.bin, ini]
        if os.geteuid() == 0:
            cmd = ['runuser', '-u', 'postgres', '--'] + cmd
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        sock = os.path.join(self.root, f'.s.PGSQL.{port}')
        if not wait_for(lambda: os.path.exists(sock), 10):
            self.destroy()
            raise RuntimeError('pgbouncer did not start')

    def url(self, dbname: str) -> str:
        return f'postgresql:///{dbname}?host={self.root}&port={self.port}&user=postgres'

    def errors(self):
        """Lines of its log at ERROR or worse (WARNING lines name client mistakes)."""
        try:
            with open(self.log, errors='replace') as f:
                return [line.rstrip() for line in f if ' ERROR ' in line or ' FATAL ' in line]
        except FileNotFoundError:
            return []

    def destroy(self):
        # runuser does not pass signals on: stop pgbouncer itself (SIGTERM: at once)
        try:
            with open(os.path.join(self.root, 'pgbouncer.pid')) as f:
                os.kill(int(f.read().strip()), signal.SIGTERM)
        except (OSError, ValueError):
            pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)
