"""Starts the real steward binary on free ports and talks to it."""
import json
import os
import signal
import subprocess
import tempfile
import time

import requests

ADMIN_KEY = 'stw_test_admin_key_0123456789abcdef'
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def binary() -> str:
    path = os.environ.get('STEWARD_BIN') or os.path.join(ROOT, 'build-test', 'steward')
    if not os.path.exists(path):
        raise RuntimeError(f'steward binary not found at {path}; build first')
    return path


def base_env(db_url: str, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith('STEWARD_')}
    env.update({
        'STEWARD_DATABASE_URL': db_url,
        'STEWARD_HTTP_PORT': '0',
        'STEWARD_WS_PORT': '0',
        'STEWARD_ADMIN_KEY': ADMIN_KEY,
        'STEWARD_LOG_LEVEL': 'info',
        # no drain unless a test asks for it (tests/e2e/test_drain.py): stops stay quick
        'STEWARD_DRAIN_S': '0',
        'ASAN_OPTIONS': 'detect_leaks=1:abort_on_error=0:halt_on_error=1',
        'UBSAN_OPTIONS': 'print_stacktrace=1:halt_on_error=1',
        'LSAN_OPTIONS': 'suppressions=' + os.path.join(ROOT, 'tests', 'harness', 'lsan.supp'),
    })
    env.update({k: str(v) for k, v in extra.items() if v is not None})
    for k in [k for k, v in extra.items() if v is None]:  # None: leave the setting unset
        env.pop(k, None)
    return env


def run_cli(db_url: str, *args, **extra) -> subprocess.CompletedProcess:
    return subprocess.run([binary(), *args], env=base_env(db_url, **extra), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)


class Steward:
    """One steward process. Logs go to a file; ports are read from its 'serving' line."""

    def __init__(self, db_url: str, wait: bool = True, **settings):
        self.db_url = db_url
        self.settings = settings
        fd, self.log_path = tempfile.mkstemp(prefix='steward-', suffix='.log')
        os.close(fd)
        self.proc = None
        self.http_port = self.ws_port = None
        self.start(wait)

    def start(self, wait: bool = True):
        self.log_file = open(self.log_path, 'a')
        self._serving_before = self._serving_count()
        self.proc = subprocess.Popen([binary(), 'serve'], env=base_env(self.db_url,
                                     **self.settings), stdout=self.log_file,
                                     stderr=subprocess.STDOUT)
        if wait:
            self.wait_serving()

    def log_lines(self):
        with open(self.log_path, errors='replace') as f:
            return f.read().splitlines()

    def log_records(self):
        out = []
        for line in self.log_lines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def _serving_count(self) -> int:
        return len([r for r in self.log_records() if r.get('msg') == 'serving'])

    def wait_serving(self, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            recs = [r for r in self.log_records() if r.get('msg') == 'serving']
            if len(recs) > self._serving_before:
                self.http_port = recs[-1]['http_port']
                self.ws_port = recs[-1]['ws_port']
                return
            if self.proc.poll() is not None:
                raise RuntimeError('steward exited early:\n' + '\n'.join(self.log_lines()[-30:]))
            time.sleep(0.05)
        raise RuntimeError('steward did not start:\n' + '\n'.join(self.log_lines()[-30:]))

    @property
    def url(self) -> str:
        return f'http://127.0.0.1:{self.http_port}'

    @property
    def ws_url(self) -> str:
        return f'ws://127.0.0.1:{self.ws_port}/v1/devices/ws'

    def request(self, method: str, path: str, key: str | None = ADMIN_KEY, **kw):
        headers = kw.pop('headers', {})
        if key:
            headers['Authorization'] = f'Bearer {key}'
        kw.setdefault('timeout', 30)
        return requests.request(method, self.url + path, headers=headers, **kw)

    def get(self, path, **kw):
        return self.request('GET', path, **kw)

    def post(self, path, **kw):
        return self.request('POST', path, **kw)

    def put(self, path, **kw):
        return self.request('PUT', path, **kw)

    def patch(self, path, **kw):
        return self.request('PATCH', path, **kw)

    def delete(self, path, **kw):
        return self.request('DELETE', path, **kw)

    def cli(self, *args):
        return run_cli(self.db_url, *args, **self.settings)

    def signal(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log_file.close()

    def sanitizer_reports(self):
        bad = ('ERROR: AddressSanitizer', 'ERROR: LeakSanitizer', 'runtime error:',
               'SUMMARY: UndefinedBehaviorSanitizer')
        return [line for line in self.log_lines() if any(b in line for b in bad)]
