"""Helpers of the hardening tests: a raw HTTP/1.1 client (keep-alive, any bytes in the
request line, headers and body), a raw WebSocket client (any opcode, any payload, even
invalid UTF-8 in a text frame), and a table-by-table checksum of a database."""
import base64
import os
import select
import socket
import struct

import psycopg


class RawHttp:
    """One keep-alive connection that sends exactly the bytes it is given."""

    def __init__(self, port, timeout=10.0):
        self.port = port
        self.timeout = timeout
        self.sock = None
        self.buf = b''

    def connect(self):
        self.close()
        self.sock = socket.create_connection(('127.0.0.1', self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b''

    def close(self):
        if self.sock:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError('closed by the server')
        self.buf += chunk

    def read_response(self, head=False):
        """(status, headers, body). Nothing is taken from the buffer before the whole
        answer is in (a read that times out leaves it for the next one)."""
        while b'\r\n\r\n' not in self.buf:
            self._fill()
        raw, _, rest = self.buf.partition(b'\r\n\r\n')
        lines = raw.decode('latin-1').split('\r\n')
        status = int(lines[0].split(' ')[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(':')
            headers[k.strip().lower()] = v.strip()
        n = 0 if head or status in (204, 304) else int(headers.get('content-length', '0'))
        while len(rest) < n:
            self._fill()
            rest = self.buf.partition(b'\r\n\r\n')[2]
        body, self.buf = rest[:n], rest[n:]
        if headers.get('connection', '').lower() == 'close':
            self.close()
        return status, headers, body

    def send(self, method, target, headers=None, body=b''):
        """Sends one request and leaves its answer to read_response: requests sent this
        way over many connections leave a few microseconds apart."""
        if self.sock is None:
            self.connect()
        self.sock.sendall(build(method, target, headers or {}, body))

    def answered(self):
        """Whether bytes of an answer wait to be read."""
        return bool(self.buf) or bool(select.select([self.sock], [], [], 0)[0])

    def response_within(self, seconds):
        """read_response() when the whole answer is in within seconds, else None."""
        self.sock.settimeout(max(seconds, 0.001))
        try:
            return self.read_response()
        except TimeoutError:
            return None
        finally:
            self.sock.settimeout(self.timeout)

    def request(self, method, target, headers=None, body=b'', send_length=True):
        """Sends one request (target and header values are bytes or str, sent as they
        are) and returns (status, headers, body). Reconnects once when a kept-alive
        connection was closed by the server before the request."""
        for attempt in (0, 1):
            if self.sock is None:
                self.connect()
            try:
                self.sock.sendall(build(method, target, headers or {}, body, send_length))
                return self.read_response(head=method == 'HEAD')
            except (ConnectionError, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt:
                    raise


def as_bytes(v):
    return v if isinstance(v, bytes) else str(v).encode('utf-8', 'surrogateescape')


def build(method, target, headers, body, send_length=True):
    out = [as_bytes(method) + b' ' + as_bytes(target) + b' HTTP/1.1', b'Host: 127.0.0.1']
    for k, v in headers.items():
        out.append(as_bytes(k) + b': ' + as_bytes(v))
    if body and send_length and not any(k.lower() == 'content-length' for k in headers):
        out.append(b'Content-Length: ' + str(len(body)).encode())
    return b'\r\n'.join(out) + b'\r\n\r\n' + as_bytes(body)


class RawWs:
    """A WebSocket client over a plain socket: sends frames with any opcode and payload."""

    def __init__(self, port, path='/v1/devices/ws', timeout=10.0):
        self.sock = socket.create_connection(('127.0.0.1', port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f'GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n'
                           f'Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n'
                           f'Sec-WebSocket-Version: 13\r\n\r\n').encode())
        self.buf = b''
        while b'\r\n\r\n' not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b'\r\n\r\n', 1)
        self.status = int(head.split(b' ')[1])

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError('closed')
        self.buf += chunk

    def send(self, payload, opcode=1, fin=True):
        payload = as_bytes(payload)
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([(0x80 if fin else 0) | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack('>H', n)
        else:
            head += bytes([0x80 | 127]) + struct.pack('>Q', n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def recv(self):
        """Returns (opcode, payload); a close frame is (8, payload) with the code first."""
        while True:
            while len(self.buf) < 2:
                self._fill()
            b0, b1 = self.buf[0], self.buf[1]
            n = b1 & 0x7f
            off = 2
            if n == 126:
                while len(self.buf) < 4:
                    self._fill()
                n = struct.unpack('>H', self.buf[2:4])[0]
                off = 4
            elif n == 127:
                while len(self.buf) < 10:
                    self._fill()
                n = struct.unpack('>Q', self.buf[2:10])[0]
                off = 10
            while len(self.buf) < off + n:
                self._fill()
            payload, self.buf = self.buf[off:off + n], self.buf[off + n:]
            op = b0 & 0x0f
            if op == 9:  # ping: answer and go on
                self.send(payload, opcode=10)
                continue
            return op, payload

    def close_code(self):
        """Reads until the close frame; returns its code (or None when the socket ended)."""
        try:
            while True:
                op, p = self.recv()
                if op == 8:
                    return struct.unpack('>H', p[:2])[0] if len(p) >= 2 else 1005
        except (ConnectionError, OSError):
            return None

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# Columns that move with use, not with writes: an API key's last use.
MOVING_COLUMNS = {'api_keys': ('last_used_at',)}


def table_checksums(db_url, skip=()):
    """{table: md5 of every row's text, in a stable order} for every table in public,
    leaving out the columns that move with use (MOVING_COLUMNS)."""
    out = {}
    with psycopg.connect(db_url, autocommit=True) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]
        for t in tables:
            if t in skip:
                continue
            row = 'x::text'
            if t in MOVING_COLUMNS:
                cols = ', '.join(f"'{c}'" for c in MOVING_COLUMNS[t])
                row = f'(to_jsonb(x) - ARRAY[{cols}])::text'
            q = (f'SELECT count(*), md5(coalesce(string_agg({row}, chr(10) ORDER BY {row}), '
                 f"'')) FROM \"{t}\" x")
            out[t] = tuple(conn.execute(q).fetchone())
    return out
