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

Extended protocol and raw bytes: fe_parse/fe_bind/fe_describe/fe_execute/fe_close/fe_sync/
fe_flush/fe_copy_data/fe_copy_done/fe_copy_fail/fe_function_call/fe_query/fe_terminate build one
frontend message each (bytes), so a test can concatenate them into one write or send any prefix
of them (Connection.send_partial). Connection.send_parse(...) etc. send one at once.
Connection.read_message(timeout) returns the next (type, payload) or raises Timeout;
read_until_ready(timeout) returns every message up to and including ReadyForQuery.
Decoders: decode_data_row, decode_command_complete, decode_ready, decode_row_description,
decode_error (= parse_fields). token(kind, payload) turns a message into a short readable string
("D:A:1", "C:SELECT 1", "Z:I", "E:42601:syntax error ...") for exact sequence assertions.

    conn.send(fe_parse("SELECT 'x'") + fe_bind() + fe_execute() + fe_sync())
    assert tokens(conn.read_until_ready(5)) == ["1", "2", "D:x", "C:SELECT 1", "Z:I"]
"""

import base64
import hashlib
import hmac
import os
import select
import socket
import struct
import time

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


class Timeout(ProtocolError, TimeoutError):
    """No whole message arrived within the timeout (the bytes read so far stay buffered).
    Also a TimeoutError (= socket.timeout), like the socket's own timeout."""


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


def readable(sock, timeout):
    """True if sock has something to read (data or EOF) within timeout seconds. poll(), not
    select(): tests that hold thousands of sockets have descriptors above 1024."""
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLPRI)
    return bool(poller.poll(max(0.0, timeout) * 1000))


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

    def _fill(self, n, deadline=None):
        while len(self.buf) < n:
            if deadline is None:
                chunk = self.sock.recv(65536)
            else:
                left = max(0.0, deadline - time.monotonic())
                if not readable(self.sock, left):
                    raise Timeout("no whole message within the timeout (%d bytes buffered: %r)"
                                  % (len(self.buf), self.buf[:80]))
                chunk = self.sock.recv(65536)
            if not chunk:
                raise ProtocolError("connection closed by peer")
            self.buf += chunk

    def read_message(self, timeout=None):
        """Next backend message as (type byte as str, payload bytes).

        timeout None: block as the socket's own timeout says (socket.timeout when it passes);
        a number of seconds: raise Timeout when no whole message arrived by then (0 polls).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        self._fill(5, deadline)
        kind = chr(self.buf[0])
        (length,) = struct.unpack("!I", self.buf[1:5])
        if length < 4:
            raise ProtocolError("bad message length %d" % length)
        self._fill(1 + length, deadline)
        payload = self.buf[5:1 + length]
        self.buf = self.buf[1 + length:]
        return kind, payload

    def poll_message(self):
        """The next message if a whole one is buffered or readable right now, else None."""
        try:
            return self.read_message(timeout=0)
        except Timeout:
            return None

    def read_until_ready(self, timeout, count=1):
        """Every message up to and including the count-th next ReadyForQuery, as
        [(type, payload)]; Timeout (carrying .messages read so far) if they do not all come
        within timeout seconds."""
        deadline = time.monotonic() + timeout
        out = []
        while True:
            try:
                kind, payload = self.read_message(max(0.0, deadline - time.monotonic()))
            except ProtocolError as e:
                e.messages = out
                e.args = ("%s; got before: %r" % (e.args[0] if e.args else e, tokens(out)),)
                raise
            out.append((kind, payload))
            if kind == "Z":
                count -= 1
                if count <= 0:
                    return out

    def count_until_ready(self, count, timeout):
        """Read until count ReadyForQuery arrived, keeping only how many messages of each
        type came ({type: n}); for floods too big to keep. Whatever follows the count-th
        ReadyForQuery stays buffered. AssertionError if the connection closes first, Timeout
        if they do not all come within timeout seconds."""
        deadline = time.monotonic() + timeout
        counts = {}
        seen = pos = 0
        buf = self.buf
        while seen < count:
            while seen < count and len(buf) - pos >= 5:
                (n,) = struct.unpack("!I", buf[pos + 1:pos + 5])
                if n < 4:
                    raise ProtocolError("bad message length %d" % n)
                if len(buf) - pos < 1 + n:
                    break
                kind = chr(buf[pos])
                counts[kind] = counts.get(kind, 0) + 1
                seen += kind == "Z"
                pos += 1 + n
            if seen >= count:
                break
            buf, pos = buf[pos:], 0
            left = deadline - time.monotonic()
            if left <= 0 or not readable(self.sock, left):
                self.buf = buf
                raise Timeout("%d of %d ReadyForQuery within the timeout: %r" % (
                    seen, count, counts))
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                self.buf = buf
                raise AssertionError("closed after %d ReadyForQuery: %r" % (seen, counts))
            buf += chunk
        self.buf = buf[pos:]
        return counts

    def read_answer(self, timeout):
        """Read up to ReadyForQuery: (command tags, column names, rows of text); the first
        ErrorResponse is raised as PgError after ReadyForQuery arrives."""
        tags, cols, rows, error = [], [], [], None
        for kind, payload in self.read_until_ready(timeout):
            if kind == "T":
                cols = decode_row_description(payload)
            elif kind == "D":
                rows.append(decode_data_row(payload))
            elif kind == "C":
                tags.append(decode_command_complete(payload))
            elif kind == "E":
                error = error or PgError(parse_fields(payload))
            elif kind == "N":
                self.notices.append(parse_fields(payload))
        if error:
            raise error
        return tags, cols, rows

    def read_messages(self, n, timeout):
        """Exactly the next n messages (Timeout with .messages if they do not all come)."""
        deadline = time.monotonic() + timeout
        out = []
        while len(out) < n:
            try:
                out.append(self.read_message(max(0.0, deadline - time.monotonic())))
            except ProtocolError as e:
                e.messages = out
                e.args = ("%s; got before: %r" % (e.args[0] if e.args else e, tokens(out)),)
                raise
        return out

    def is_silent(self, timeout):
        """True if nothing at all (no byte, no EOF) arrives within timeout seconds.

        Only for asserting that something does NOT happen, after the event that would cause it
        has been observed some other way; never as a wait for something to happen."""
        if self.buf:
            return False
        return not readable(self.sock, timeout)

    # -- raw and extended-protocol sends (see the fe_* builders)

    def send_partial(self, data, nbytes):
        """Send only the first nbytes of data (e.g. half a message); returns the rest."""
        self.sock.sendall(data[:nbytes])
        return data[nbytes:]

    def send_parse(self, sql, name="", param_types=()):
        self.send(fe_parse(sql, name, param_types))

    def send_bind(self, portal="", statement="", params=(), param_formats=(), result_formats=()):
        self.send(fe_bind(portal, statement, params, param_formats, result_formats))

    def send_describe(self, kind, name=""):
        self.send(fe_describe(kind, name))

    def send_execute(self, portal="", max_rows=0):
        self.send(fe_execute(portal, max_rows))

    def send_close(self, kind, name=""):
        self.send(fe_close(kind, name))

    def send_sync(self):
        self.send(fe_sync())

    def send_flush(self):
        self.send(fe_flush())

    def send_copy_data(self, data):
        self.send(fe_copy_data(data))

    def send_copy_done(self):
        self.send(fe_copy_done())

    def send_copy_fail(self, reason):
        self.send(fe_copy_fail(reason))

    def send_function_call(self, oid, args=(), arg_formats=(), result_format=0):
        self.send(fe_function_call(oid, args, arg_formats, result_format))

    def abort(self):
        """Drop the connection without Terminate (a client that just vanishes)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

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
                rows.append(decode_data_row(payload))
            elif kind == "E":
                error = error or PgError(parse_fields(payload))
            elif kind == "N":
                self.notices.append(parse_fields(payload))
            elif kind == "Z":
                if error:
                    raise error
                return rows


# ---------------------------------------------------------------- extended protocol builders
#
# Each returns one whole frontend message (protocol 3.0, "Message Formats" in the PostgreSQL
# documentation) as bytes. Text values may be str (encoded as UTF-8) or bytes; None is NULL.


def _cstr(text):
    if isinstance(text, str):
        text = text.encode()
    return text + b"\0"


def _value(v):
    if v is None:
        return struct.pack("!i", -1)
    if isinstance(v, str):
        v = v.encode()
    return struct.pack("!i", len(v)) + v


def fe_query(sql):
    return message(b"Q", _cstr(sql))


def fe_parse(sql, name="", param_types=()):
    """Parse: statement name, query text, parameter type OIDs (0 = unspecified)."""
    return message(b"P", _cstr(name) + _cstr(sql) + struct.pack("!H", len(param_types)) +
                   b"".join(struct.pack("!I", t) for t in param_types))


def fe_bind(portal="", statement="", params=(), param_formats=(), result_formats=()):
    """Bind: portal, statement, parameter format codes, values (text unless formats say 1),
    result format codes."""
    body = _cstr(portal) + _cstr(statement)
    body += struct.pack("!H", len(param_formats)) + b"".join(
        struct.pack("!H", f) for f in param_formats)
    body += struct.pack("!H", len(params)) + b"".join(_value(v) for v in params)
    body += struct.pack("!H", len(result_formats)) + b"".join(
        struct.pack("!H", f) for f in result_formats)
    return message(b"B", body)


def fe_describe(kind, name=""):
    """Describe: kind "S" (statement: ParameterDescription + RowDescription/NoData) or "P"
    (portal: RowDescription/NoData)."""
    assert kind in ("S", "P"), kind
    return message(b"D", kind.encode() + _cstr(name))


def fe_execute(portal="", max_rows=0):
    """Execute: portal, row limit (0 = all; a limit that is reached ends in PortalSuspended)."""
    return message(b"E", _cstr(portal) + struct.pack("!I", max_rows))


def fe_close(kind, name=""):
    assert kind in ("S", "P"), kind
    return message(b"C", kind.encode() + _cstr(name))


def fe_sync():
    return message(b"S")


def fe_flush():
    return message(b"H")


def fe_copy_data(data):
    if isinstance(data, str):
        data = data.encode()
    return message(b"d", data)


def fe_copy_done():
    return message(b"c")


def fe_copy_fail(reason):
    return message(b"f", _cstr(reason))


def fe_function_call(oid, args=(), arg_formats=(), result_format=0):
    """FunctionCall (the legacy fast-path, answered by FunctionCallResponse + ReadyForQuery)."""
    body = struct.pack("!I", oid)
    body += struct.pack("!H", len(arg_formats)) + b"".join(
        struct.pack("!H", f) for f in arg_formats)
    body += struct.pack("!H", len(args)) + b"".join(_value(v) for v in args)
    body += struct.pack("!H", result_format)
    return message(b"F", body)


def fe_terminate():
    return message(b"X")


# ---------------------------------------------------------------- backend message decoders


def decode_data_row(payload):
    """DataRow -> tuple of str (text format, UTF-8) or None for NULL."""
    (n,) = struct.unpack("!H", payload[:2])
    pos, row = 2, []
    for _ in range(n):
        (ln,) = struct.unpack("!i", payload[pos:pos + 4])
        pos += 4
        if ln < 0:
            row.append(None)
        else:
            row.append(payload[pos:pos + ln].decode("utf-8", "replace"))
            pos += ln
    return tuple(row)


def decode_command_complete(payload):
    """CommandComplete -> its tag ("SELECT 1", "COPY 3", ...)."""
    return payload.rstrip(b"\0").decode()


def decode_ready(payload):
    """ReadyForQuery -> transaction status "I", "T" or "E"."""
    return chr(payload[0])


def decode_row_description(payload):
    """RowDescription -> column names."""
    (n,) = struct.unpack("!H", payload[:2])
    pos, cols = 2, []
    for _ in range(n):
        end = payload.index(b"\0", pos)
        cols.append(payload[pos:end].decode())
        pos = end + 1 + 18
    return cols


def decode_function_result(payload):
    """FunctionCallResponse -> value as str (None for NULL)."""
    (ln,) = struct.unpack("!i", payload[:4])
    return None if ln < 0 else payload[4:4 + ln].decode("utf-8", "replace")


decode_error = parse_fields


def split_messages(data):
    """Cut a byte string of protocol messages (type byte, int32 length, payload; backend
    messages, or frontend ones after the startup packet) into ([(type, payload)], rest):
    rest is a trailing incomplete message (b"" when data ends on a message boundary).
    ProtocolError for a length field below 4."""
    out = []
    pos = 0
    while len(data) - pos >= 5:
        (n,) = struct.unpack("!I", data[pos + 1:pos + 5])
        if n < 4:
            raise ProtocolError("message %r at offset %d has length %d" % (
                chr(data[pos]), pos, n))
        if len(data) - pos < 1 + n:
            break
        out.append((chr(data[pos]), data[pos + 5:pos + 1 + n]))
        pos += 1 + n
    return out, data[pos:]


def whole_messages(data):
    """split_messages(data)'s messages; AssertionError when data does not end on a message
    boundary."""
    msgs, rest = split_messages(data)
    assert rest == b"", "trailing partial message %r after %r" % (
        rest[:80], [k for k, _ in msgs[-5:]])
    return msgs


def data_values(messages):
    """The values of every DataRow (and the data of every CopyData) in messages, flattened
    into one list (None for NULL)."""
    vals = []
    for kind, payload in messages:
        if kind == "D":
            vals.extend(decode_data_row(payload))
        elif kind == "d":
            vals.append(payload.decode("utf-8", "replace"))
    return vals


def token(kind, payload):
    """A short, exact, readable form of one backend message for sequence assertions:
    "1" ParseComplete, "2" BindComplete, "3" CloseComplete, "n" NoData, "s" PortalSuspended,
    "I" EmptyQueryResponse, "G"/"H" CopyIn/OutResponse, "c" CopyDone, "d:<data>", "t:<nparams>",
    "T:<col,...>", "D:<v|v>", "C:<tag>", "E:<SQLSTATE>:<message>", "N:<SQLSTATE>:<message>",
    "Z:<status>", "V:<value>", "S:<name>=<value>", "A:<channel>"; anything else is its type."""
    if kind == "D":
        return "D:" + "|".join("NULL" if v is None else v for v in decode_data_row(payload))
    if kind == "C":
        return "C:" + decode_command_complete(payload)
    if kind in ("E", "N"):
        f = parse_fields(payload)
        return "%s:%s:%s" % (kind, f.get("C"), f.get("M"))
    if kind == "Z":
        return "Z:" + decode_ready(payload)
    if kind == "T":
        return "T:" + ",".join(decode_row_description(payload))
    if kind == "t":
        return "t:%d" % struct.unpack("!H", payload[:2])
    if kind == "d":
        return "d:" + payload.decode("utf-8", "replace")
    if kind == "V":
        v = decode_function_result(payload)
        return "V:" + ("NULL" if v is None else v)
    if kind == "S":
        return "S:" + "=".join(p.decode() for p in payload.rstrip(b"\0").split(b"\0", 1))
    if kind == "A":
        return "A:" + payload[4:].split(b"\0")[0].decode()
    return kind


def tokens(messages, skip="SN"):
    """token() of each (type, payload), leaving out the types in skip (by default the
    asynchronous ParameterStatus and NoticeResponse)."""
    return [token(k, p) for k, p in messages if k not in skip]


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


def recv_exact(sock, n):
    """Exactly n bytes from sock (its own timeout applies); EOFError if it closes first."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("peer closed after %d of %d bytes" % (len(data), n))
        data += chunk
    return data


def read_frontend_message(sock):
    """The next frontend message (type byte as bytes, payload) a peer sends on sock, for fake
    servers (after the startup packet)."""
    kind = recv_exact(sock, 1)
    (n,) = struct.unpack("!I", recv_exact(sock, 4))
    if n < 4:
        raise ProtocolError("frontend message %r has length %d" % (kind, n))
    return kind, recv_exact(sock, n - 4)


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
