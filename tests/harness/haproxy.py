"""A real haproxy (Debian's package) in front of steward instances, for the drain tests.

One frontend for REST and one for the device WebSocket, each balancing over the instances
and health-checking every instance on its own GET /readyz (the WebSocket servers are
checked on their instance's HTTP port). A server that fails two checks 300 ms apart is
taken out; `timeout tunnel` keeps upgraded WebSocket connections open."""
import os
import shutil
import socket
import subprocess
import tempfile
import time

HAPROXY = shutil.which('haproxy') or '/usr/sbin/haproxy'

CONFIG = """\
global
    maxconn 4096

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    timeout http-keep-alive 10s
    retries 3
    option redispatch
    default-server inter 300ms fall 2 rise 2

frontend rest
    bind 127.0.0.1:{rest_port}
    default_backend steward_rest

frontend devices
    bind 127.0.0.1:{ws_port}
    default_backend steward_ws

backend steward_rest
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
{rest_servers}

backend steward_ws
    balance leastconn
    option httpchk GET /readyz
    http-check expect status 200
{ws_servers}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class Haproxy:
    """haproxy in the foreground (-db) over the given steward instances (harness.steward)."""

    def __init__(self, instances):
        self.rest_port, self.ws_port = free_port(), free_port()
        rest = '\n'.join(f'    server s{i} 127.0.0.1:{s.http_port} check'
                         for i, s in enumerate(instances))
        ws = '\n'.join(f'    server s{i} 127.0.0.1:{s.ws_port} check port {s.http_port}'
                       for i, s in enumerate(instances))
        self.dir = tempfile.mkdtemp(prefix='steward-haproxy-')
        self.cfg = os.path.join(self.dir, 'haproxy.cfg')
        with open(self.cfg, 'w') as f:
            f.write(CONFIG.format(rest_port=self.rest_port, ws_port=self.ws_port,
                                  rest_servers=rest, ws_servers=ws))
        check = subprocess.run([HAPROXY, '-c', '-f', self.cfg], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError('haproxy rejects its configuration:\n' + check.stdout + check.stderr)
        self.log_path = os.path.join(self.dir, 'haproxy.log')
        self.log = open(self.log_path, 'w')
        self.proc = subprocess.Popen([HAPROXY, '-db', '-f', self.cfg], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self._wait_listening()

    def _wait_listening(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError('haproxy exited:\n' + open(self.log_path).read())
            try:
                socket.create_connection(('127.0.0.1', self.rest_port), 0.2).close()
                socket.create_connection(('127.0.0.1', self.ws_port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError('haproxy did not listen')

    @property
    def url(self) -> str:
        return f'http://127.0.0.1:{self.rest_port}'

    @property
    def ws_url(self) -> str:
        return f'ws://127.0.0.1:{self.ws_port}/v1/devices/ws'

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
