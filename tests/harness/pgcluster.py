"""A throwaway PostgreSQL cluster for tests: initdb + pg_ctl as the unprivileged
`postgres` user (PostgreSQL refuses to run as root), unix socket only, no fsync."""
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time


def pg_bindir() -> str:
    env = os.environ.get('STEWARD_PG_BINDIR')
    if env:
        return env
    found = sorted(glob.glob('/usr/lib/postgresql/*/bin/initdb'),
                   key=lambda p: int(p.split('/')[4]))
    if not found:
        raise RuntimeError('PostgreSQL server binaries not found (install postgresql)')
    return os.path.dirname(found[-1])


def _as_postgres(cmd, **kw):
    if os.geteuid() == 0:
        cmd = ['runuser', '-u', 'postgres', '--'] + cmd
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, **kw)


class PgCluster:
    def __init__(self, port: int = 5432, max_connections: int = 300, initdb: bool = True):
        self.bindir = pg_bindir()
        self.root = tempfile.mkdtemp(prefix='steward-pg-')
        self.data = os.path.join(self.root, 'data')
        self.sock = self.root
        self.port = port
        self.max_connections = max_connections
        self.log = os.path.join(self.root, 'postgres.log')
        if os.geteuid() == 0:
            pw = pwd.getpwnam('postgres')
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        os.chmod(self.root, 0o755)
        # settings added to the command line by start (name -> value)
        self.extra = {}
        if initdb:
            _as_postgres([os.path.join(self.bindir, 'initdb'), '-D', self.data, '-A', 'trust',
                          '-U', 'postgres', '--no-sync', '-E', 'UTF8', '--locale=C.UTF-8'])

    def start(self):
        settings = {'synchronous_commit': 'off'} | self.extra
        opts = (f"-k {self.sock} -p {self.port} -c listen_addresses='' -c fsync=off "
                f"-c full_page_writes=off "
                f"-c max_connections={self.max_connections} -c shared_buffers=128MB " +
                ' '.join(f"-c {k}={v}" for k, v in settings.items()))
        _as_postgres([os.path.join(self.bindir, 'pg_ctl'), '-D', self.data, '-l', self.log,
                      '-o', opts, '-w', '-t', '30', 'start'])

    def stop(self, mode: str = 'fast'):
        _as_postgres([os.path.join(self.bindir, 'pg_ctl'), '-D', self.data, '-m', mode, '-w',
                      'stop'])

    def restart(self):
        self.stop()
        self.start()

    def url(self, dbname: str = 'postgres') -> str:
        return f'postgresql:///{dbname}?host={self.sock}&port={self.port}&user=postgres'

    def createdb(self, name: str):
        _as_postgres([os.path.join(self.bindir, 'createdb'), '-h', self.sock, '-p',
                      str(self.port), '-U', 'postgres', name])
        return self.url(name)

    def destroy(self):
        try:
            self.stop('immediate')
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


def wait_for(pred, timeout: float = 10.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            return v
        time.sleep(interval)
