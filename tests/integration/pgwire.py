"""A tiny Postgres v3 wire-protocol client for tests that need exact protocol details.

libpq/psycopg hide what the server sent when a login fails (psycopg's
OperationalError has no sqlstate then), and they cannot send malformed or
partial messages. This client can: it logs in with trust, cleartext, MD5 or
SCRAM-SHA-256 (no channel binding), runs simple queries, and exposes every
ErrorResponse field.

    conn = pgwire.connect("127.0.0.1", port, "alice", "appdb", password="...")
    rows = conn.simple_query("SELECT 1")       # [('1',)]
    conn.close()

A refused login raises PgError with .fields ({'S': 'FATAL', 'C': '28P01', ...}).
"""

import base64
import hashlib
import hmac
import os
import socket
import struct

PROTOCOL_3_0 = 196608


class PgError(Exception):
    """An ErrorResponse: fields maps the one-letter field codes to their text."""

    def __init__(self, fields):
        self.fields = fields
        self.sqlstate = fields.get("C")
        self.severity = fields.get("V") or fields.get("S")
        self.message = fields.get("M")
        super().__init__("%s %s: %s" % (self.severity, self.sqlstate, self.message))


class ProtocolError(Exception):
    """The peer sent something this client did not expect (or closed the connection)."""


def parse_fields(payload):
    """ErrorResponse / NoticeResponse payload -> {code: text}."""
    fields = {}
    for part in payload.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


def message(kind, payload=b""):
    """One frontend message: type byte (b'' for startup-style), int32 length, payload."""
    return kind + struct.pack("!I", len(payload) + 4) + payload


def startup_message(params, protocol=PROTOCOL_3_0):
    body = struct.pack("!I", protocol)
    for k, v in params.items():
        body += k.encode() + b"\0" + v.encode() + b"\0"
    return message(b"", body + b"\0")


class Connection:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.params = {}  # ParameterStatus
        self.backend_key = None  # (pid, secret)
        self.notices = []
        self.auth_methods = []  # authentication request codes seen, in order

    # -- raw I/O

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ProtocolError("connection closed by peer")
            self.buf += chunk

    def read_message(self):
        """Next backend message as (type byte as str, payload bytes)."""
        self._fill(5)
        kind = chr(self.buf[0])
        (length,) = struct.unpack("!I", self.buf[1:5])
        if length < 4:
            raise ProtocolError("bad message length %d" % length)
        self._fill(1 + length)
        payload = self.buf[5:1 + length]
        self.buf = self.buf[1 + length:]
        return kind, payload

    def close(self):
        try:
            self.send(message(b"X"))
        except OSError:
            pass
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- login

    def login(self, user, dbname, password=None, options=None):
        params = {"user": user, "database": dbname}
        params.update(options or {})
        self.send(startup_message(params))
        scram = None
        while True:
            kind, payload = self.read_message()
            if kind == "E":
                raise PgError(parse_fields(payload))
            if kind == "N":
                self.notices.append(parse_fields(payload))
            elif kind == "R":
                (code,) = struct.unpack("!I", payload[:4])
                self.auth_methods.append(code)
                if code == 0:
                    pass
                elif code == 3:
                    self._need(password)
                    self.send(message(b"p", password.encode() + b"\0"))
                elif code == 5:
                    self._need(password)
                    inner = hashlib.md5(password.encode() + user.encode()).hexdigest()
                    outer = hashlib.md5(inner.encode() + payload[4:8]).hexdigest()
                    self.send(message(b"p", b"md5" + outer.encode() + b"\0"))
                elif code == 10:
                    mechs = [m.decode() for m in payload[4:].split(b"\0") if m]
                    if "SCRAM-SHA-256" not in mechs:
                        raise ProtocolError("no SCRAM-SHA-256 in %r" % mechs)
                    self._need(password)
                    scram = _Scram(password)
                    first = scram.client_first().encode()
                    self.send(message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first))
                elif code == 11:
                    self.send(message(b"p", scram.client_final(payload[4:].decode()).encode()))
                elif code == 12:
                    scram.verify_server_final(payload[4:].decode())
                else:
                    raise ProtocolError("unsupported authentication request %d" % code)
            elif kind == "S":
                k, v = payload[:-1].split(b"\0", 1)
                self.params[k.decode()] = v.decode()
            elif kind == "K":
                self.backend_key = struct.unpack("!II", payload[:8])
            elif kind == "Z":
                return self
            else:
                raise ProtocolError("unexpected message %r during login" % kind)

    @staticmethod
    def _need(password):
        if password is None:
            raise ProtocolError("server asked for a password and none was given")

    # -- queries

    def simple_query(self, sql):
        """Run sql with the simple query protocol; return rows of text (None for NULL).

        Rows of every statement are concatenated; the first ErrorResponse is
        raised as PgError after ReadyForQuery arrives.
        """
        self.send_query(sql)
        return self.read_result()

    def send_query(self, sql):
        """Send a simple Query message without waiting (read_result() collects the answer)."""
        self.send(message(b"Q", sql.encode() + b"\0"))

    def read_result(self):
        """Read up to ReadyForQuery; return rows like simple_query() (raises PgError)."""
        rows, error = [], None
        while True:
            kind, payload = self.read_message()
            if kind == "D":
                (n,) = struct.unpack("!H", payload[:2])
                pos, row = 2, []
                for _ in range(n):
                    (ln,) = struct.unpack("!i", payload[pos:pos + 4])
                    pos += 4
                    if ln < 0:
                        row.append(None)
                    else:
                        row.append(payload[pos:pos + ln].decode())
                        pos += ln
                rows.append(tuple(row))
            elif kind == "E":
                error = error or PgError(parse_fields(payload))
            elif kind == "N":
                self.notices.append(parse_fields(payload))
            elif kind == "Z":
                if error:
                    raise error
                return rows


class _Scram:
    """Client side of SCRAM-SHA-256 (RFC 5802/7677) as Postgres uses it: no channel binding."""

    def __init__(self, password):
        self.password = password.encode()
        self.cnonce = base64.b64encode(os.urandom(18)).decode()
        self.first_bare = "n=,r=" + self.cnonce

    def client_first(self):
        return "n,," + self.first_bare

    def client_final(self, server_first):
        attrs = dict(a.split("=", 1) for a in server_first.split(","))
        nonce, salt, iters = attrs["r"], base64.b64decode(attrs["s"]), int(attrs["i"])
        if not nonce.startswith(self.cnonce):
            raise ProtocolError("server nonce does not extend ours")
        salted = hashlib.pbkdf2_hmac("sha256", self.password, salt, iters)
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = "c=biws,r=" + nonce
        auth_message = ",".join([self.first_bare, server_first, without_proof]).encode()
        signature = hmac.digest(stored_key, auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        self.server_signature = base64.b64encode(
            hmac.digest(server_key, auth_message, "sha256")).decode()
        return without_proof + ",p=" + base64.b64encode(proof).decode()

    def verify_server_final(self, server_final):
        attrs = dict(a.split("=", 1) for a in server_final.split(","))
        if attrs.get("v") != self.server_signature:
            raise ProtocolError("server signature mismatch: %r" % server_final)


def open_socket(host, port, timeout=10.0):
    """A connected socket: TCP, or a unix socket when host is a directory (libpq's rule)."""
    if host.startswith("/"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(os.path.join(host, ".s.PGSQL.%d" % port))
        return s
    s = socket.create_connection((host, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def connect(host, port, user, dbname, password=None, options=None, timeout=10.0):
    """Open a connection and log in; raises PgError when the server refuses."""
    conn = Connection(open_socket(host, port, timeout))
    try:
        return conn.login(user, dbname, password, options)
    except BaseException:
        conn.sock.close()
        raise


def cancel_request(host, port, pid, secret, timeout=5.0):
    """Send a CancelRequest for (pid, secret) on a new connection and wait for it to close."""
    s = open_socket(host, port, timeout)
    try:
        s.sendall(struct.pack("!IIII", 16, 80877102, pid, secret))
        try:
            while s.recv(1024):
                pass
        except OSError:
            pass
    finally:
        s.close()


def login_refused(host, port, user, dbname, password=None, options=None, timeout=5.0):
    """Log in expecting a refusal; return (PgError, closed) where closed tells whether the
    server closed the connection after the error (EOF within timeout).

    Fails (AssertionError) if the login succeeds.
    """
    conn = Connection(open_socket(host, port, timeout))
    try:
        try:
            conn.login(user, dbname, password, options)
        except PgError as e:
            err = e
        else:
            raise AssertionError("login of %s to %s succeeded" % (user, dbname))
        return err, wait_closed(conn, timeout)
    finally:
        conn.sock.close()


def wait_closed(conn, timeout=5.0):
    """True if the peer closes conn within timeout (anything still buffered is skipped)."""
    conn.sock.settimeout(timeout)
    try:
        while True:
            chunk = conn.sock.recv(65536)
            if not chunk:
                return True
    except socket.timeout:
        return False
    except OSError:
        return True


def expect_error(conn, timeout=5.0):
    """Read messages until an ErrorResponse (returned as PgError) or ReadyForQuery (None).

    For errors after which the server closes the connection without ReadyForQuery
    (FATAL); ProtocolError if the connection closes first.
    """
    conn.sock.settimeout(timeout)
    while True:
        kind, payload = conn.read_message()
        if kind == "E":
            return PgError(parse_fields(payload))
        if kind == "N":
            conn.notices.append(parse_fields(payload))
        if kind == "Z":
            return None
