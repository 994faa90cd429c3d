"""Red-team attacks on TLS (branch redtls): pgfunnel as a TLS server to hostile clients and as a
TLS client of hostile servers, on a sanitizer build.

Targets: src/net/tls.c (memory-BIO transport: read/write paths, the idle handle, early
plaintext, tls_release), src/net/conn.c (read_start/stop, try_write/write, queued, linger),
src/client/client.c (handle_ssl_request, direct TLS in client_on_raw, "SSL required",
SCRAM-SHA-256-PLUS), src/server/server.c (request_tls_or_start, server_on_raw, TLS errors),
src/process/main.c (RELOAD of TLS settings), src/auth/scram.c (channel binding).

Tests named test_bug_* expose a real pgfunnel bug and assert the correct behaviour (they fail
until it is fixed); every other test is a regression for an attack that held up. Bugs found:
  test_bug_key_update_storm_grows_memory_without_bound            tls.c deliver()/pump():
      what SSL_peek/SSL_read write (TLS 1.3 KeyUpdate answers) stays in the write BIO until
      the conn next writes: unbounded memory per idle client (1.2 M KeyUpdates: +49 MiB RSS)
  test_bug_server_key_update_storm_grows_memory_without_bound     the same on a pooled server
  test_bug_renegotiation_attempt_left_unanswered                   the same root cause: the
      no_renegotiation alert is never sent, a TLS 1.2 client that renegotiates hangs
  test_bug_plain_scram_over_tls_fails_with_hashless_certificate   client.c
      auth_sasl_initial_response() computes tls-server-end-point for every SCRAM login over
      TLS: with an Ed25519 / RSA-PSS certificate even plain SCRAM-SHA-256 ("n,,") is refused
  test_bug_tls_refusal_hidden_while_a_doomed_server_lives          pool.c
      pf_pool_server_failed(): a server tagged close_needed by the RELOAD keeps waiting
      clients waiting the whole query_wait_timeout, without the TLS reason
"""

import base64
import ctypes
import ctypes.util
import hashlib
import hmac
import os
import select
import signal
import socket
import ssl
import struct
import threading
import time

import pytest

import pfhelpers
import pgwire
import tlscerts
from test_tls import (SSL_REQUEST, client_hello, client_tls, raw_socket,
                      read_until_closed, ssl_request, tls_context, tls_login, tls_socket)

DEADLINE = 10.0
DB = "appdb"


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def certs(run_user):
    c = tlscerts.TlsCerts()
    yield c
    c.destroy()


@pytest.fixture(scope="module")
def ssl_pg(certs):
    cluster = tlscerts.SslCluster(certs)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="module")
def role(postgres):
    return pfhelpers.new_role(postgres, "atls")


def start_tls(pgfunnel, postgres, certs, mode="require", params=None, **kw):
    p = {"client_login_timeout": 30, "query_wait_timeout": 30}
    p.update(client_tls(certs, mode))
    p.update(params or {})
    return pfhelpers.start_proxy(pgfunnel, postgres, params=p, **kw)


def alive(pf):
    assert pf.is_running(), "pgfunnel died\n" + pf.all_output()[-6000:]


def login(pf, role, ctx=None, direct=False, app=None):
    return tls_login(pf, role[0], DB, role[1], ctx or tls_context(), app=app, direct=direct)


def still_serves(pf, role):
    """A fresh TLS login and query work (pgfunnel and its loop are fine)."""
    conn = login(pf, role)
    try:
        assert conn.simple_query("SELECT 'ok'") == [("ok",)]
    finally:
        conn.close()


def rss(pf):
    v = pfhelpers.proc_rss_kib(pf.pid)
    assert v is not None, "pgfunnel gone\n" + pf.all_output()[-4000:]
    return v


# ---------------------------------------------------------------- raw OpenSSL (ctypes)


_LIBSSL = None


def libssl():
    """The libssl Python's _ssl module uses (ctypes), for what the ssl module cannot do."""
    global _LIBSSL
    if _LIBSSL is None:
        lib = ctypes.CDLL(ctypes.util.find_library("ssl") or "libssl.so.3")
        for name, args in (("SSL_key_update", [ctypes.c_void_p, ctypes.c_int]),
                           ("SSL_do_handshake", [ctypes.c_void_p]),
                           ("SSL_get_error", [ctypes.c_void_p, ctypes.c_int]),
                           ("SSL_version", [ctypes.c_void_p]),
                           ("SSL_renegotiate", [ctypes.c_void_p]),
                           ("SSL_is_server", [ctypes.c_void_p])):
            getattr(lib, name).argtypes = args
            getattr(lib, name).restype = ctypes.c_int
        lib.SSL_clear_options.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
        lib.SSL_clear_options.restype = ctypes.c_uint64
        _LIBSSL = lib
    return _LIBSSL


def ssl_pointer(obj, server=False):
    """The SSL * of an ssl.SSLSocket / SSLObject (PySSLSocket: PyObject_HEAD, Socket, ssl)."""
    inner = obj._sslobj
    ptr = ctypes.c_void_p.from_address(id(inner) + 3 * ctypes.sizeof(ctypes.c_void_p)).value
    lib = libssl()
    assert ptr and lib.SSL_version(ptr) in (0x0303, 0x0304) and lib.SSL_is_server(ptr) == int(server), \
        "could not find the SSL * of the Python socket"
    return ptr


def key_update_storm(sock, count, deadline, server=False, drained=None):
    """Sends count TLS 1.3 KeyUpdate(update_requested) messages on the SSLSocket sock. It never
    reads through TLS; with drained (a dict) it reads the raw ciphertext that comes back (so
    that a peer that answers is never blocked by us), counting it in drained["bytes"] and a
    close in drained["closed"]. Returns how many were sent by the deadline."""
    lib = libssl()
    p = ssl_pointer(sock, server)
    sent = 0

    def drain(wait):
        if drained is None or drained.get("closed"):
            return
        while select.select([sock], [], [], wait)[0]:
            wait = 0
            try:
                chunk = socket.socket.recv(sock, 1 << 20)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                chunk = b""
            if not chunk:
                drained["closed"] = True
                return
            drained["bytes"] = drained.get("bytes", 0) + len(chunk)

    while sent < count and time.monotonic() < deadline:
        assert lib.SSL_key_update(p, 1) == 1
        while True:
            r = lib.SSL_do_handshake(p)
            if r == 1:
                break
            e = lib.SSL_get_error(p, r)
            if drained is not None and drained.get("closed"):
                return sent
            assert e == 3, "SSL_do_handshake error %d" % e  # SSL_ERROR_WANT_WRITE
            left = deadline - time.monotonic()
            if left <= 0:
                return sent
            drain(0)
            select.select([], [sock], [], min(left, 0.2))
        sent += 1
        if sent % 64 == 0:
            drain(0)
    return sent


# ================================================================ hostile clients: TLS layer


def raw_recv_until(sock, want, timeout):
    """Ciphertext arriving on the TLS socket sock (read from its fd, bypassing TLS) until want
    bytes came, the peer closed, or timeout. Returns (bytes, closed)."""
    deadline = time.monotonic() + timeout
    got = 0
    while got < want:
        left = deadline - time.monotonic()
        if left <= 0:
            return got, False
        r, _, _ = select.select([sock], [], [], left)
        if not r:
            continue
        try:
            chunk = socket.socket.recv(sock, 1 << 20)
        except (ConnectionResetError, BlockingIOError):
            return got, True
        if not chunk:
            return got, True
        got += len(chunk)
    return got, False


def test_bug_key_update_storm_grows_memory_without_bound(pgfunnel, postgres, certs, role):
    """A logged-in TLS 1.3 client sends KeyUpdate(update_requested) records and nothing else.
    OpenSSL answers each, inside SSL_peek/SSL_read, with a KeyUpdate of its own written to the
    memory write BIO; tls.c flushes that BIO only when the conn itself writes (flush_out from
    tls_try_write / tls_write / handshake), never after deliver()'s reads. An idle client is
    never written to, so the answers pile up in its wbio: ~27 bytes kept per 27-byte record
    the client sends, without bound (measured: 1.2 M KeyUpdates, 31 MiB sent, pgfunnel RSS
    +49 MiB), and the client never gets the answers RFC 8446 4.6.3 requires.
    Fix (tls.c pump/deliver): flush what SSL_read/SSL_peek left in wbio (with the usual write
    backpressure), or refuse/close past a bound.
    Asserts: within 5 s of 30000 requests, pgfunnel's answers (>= 20 bytes each) reached the
    client, or pgfunnel closed the connection."""
    pf = start_tls(pgfunnel, postgres, certs, userlist={role[0]: role[1]})
    conn = login(pf, role)
    try:
        assert conn.sock.version() == "TLSv1.3"
        count = 30000
        drained = {}
        sent = key_update_storm(conn.sock, count, time.monotonic() + 30, drained=drained)
        assert sent == count or drained.get("closed"), "could only send %d KeyUpdates" % sent
        got, closed = raw_recv_until(conn.sock, count * 20 - drained.get("bytes", 0), 5.0)
        got += drained.get("bytes", 0)
        closed = closed or drained.get("closed", False)
        alive(pf)
        assert closed or got >= count * 20, (
            "%d KeyUpdate requests sent: pgfunnel sent back only %d bytes (its answers stay in "
            "its memory write BIO) and kept the connection" % (count, got))
    finally:
        conn.close()
    still_serves(pf, role)



def test_bug_renegotiation_attempt_left_unanswered(pgfunnel, postgres, certs, role):
    """Same root cause as the KeyUpdate bug: a logged-in TLS 1.2 client starts a
    renegotiation (a new ClientHello). pgfunnel refuses renegotiation (SSL_OP_NO_RENEGOTIATION):
    OpenSSL writes a no_renegotiation alert into the write BIO inside SSL_peek -- and nothing
    sends it until pgfunnel next writes to that client. The client, waiting for a ServerHello
    or the refusal, hangs (and each further attempt adds to pgfunnel's buffered output).
    Asserts pgfunnel answers (alert, or closes) within 5 s."""
    pf = start_tls(pgfunnel, postgres, certs, userlist={role[0]: role[1]})
    conn = login(pf, role, ctx=tls_context(max_version=ssl.TLSVersion.TLSv1_2))
    try:
        assert conn.sock.version() == "TLSv1.2"
        lib = libssl()
        p = ssl_pointer(conn.sock)
        lib.SSL_clear_options(p, 1 << 30)  # SSL_OP_NO_RENEGOTIATION, set by Python
        assert lib.SSL_renegotiate(p) == 1
        lib.SSL_do_handshake(p)  # sends the ClientHello; wants to read the answer
        got, closed = raw_recv_until(conn.sock, 1, 5.0)
        alive(pf)
        assert got or closed, "renegotiation ClientHello left unanswered for 5 s"
    finally:
        conn.close()
    still_serves(pf, role)

# ---------------------------------------------------------------- a TLS client over MemoryBIO


class BioSock:
    """A socket-like TLS client (sendall / recv, as pgwire.Connection uses) over ssl.MemoryBIO,
    writing its ciphertext wchunk bytes per send() and reading it rchunk bytes per recv(): the
    records reach pgfunnel cut anywhere. Optionally starts with an SSLRequest (or direct)."""

    def __init__(self, port, ctx=None, direct=False, wchunk=1 << 20, rchunk=1 << 20,
                 timeout=DEADLINE, hostname="localhost", sock=None):
        self.raw = sock or raw_socket(port, timeout)
        self.wchunk, self.rchunk = wchunk, rchunk
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = (ctx or tls_context()).wrap_bio(self.inc, self.out, server_hostname=hostname)
        if not direct:
            assert ssl_request(self.raw) == b"S"

    def _push(self):
        data = self.out.read()
        for i in range(0, len(data), self.wchunk):
            self.raw.sendall(data[i:i + self.wchunk])

    def _pull(self):
        chunk = self.raw.recv(self.rchunk)
        if not chunk:
            self.inc.write_eof()
            return False
        self.inc.write(chunk)
        return True

    def handshake(self):
        while True:
            try:
                self.obj.do_handshake()
                self._push()
                return self
            except ssl.SSLWantReadError:
                self._push()
                if not self._pull():
                    raise ConnectionError("closed during the handshake")

    def sendall(self, data):
        self.obj.write(data)
        self._push()

    def recv(self, n):
        while True:
            try:
                return self.obj.read(n)
            except ssl.SSLWantReadError:
                if not self._pull():
                    return b""
            except ssl.SSLZeroReturnError:
                return b""

    def settimeout(self, t):
        self.raw.settimeout(t)

    def fileno(self):
        return self.raw.fileno()

    def close_notify(self):
        """Sends close_notify (our side's orderly end of TLS) without waiting for the peer's."""
        try:
            self.obj.unwrap()
        except ssl.SSLWantReadError:
            pass
        self._push()

    def close(self):
        self.raw.close()


def bio_login(pf, role, **kw):
    s = BioSock(pf.port, **kw).handshake()
    conn = pgwire.Connection(s)
    conn.login(role[0], DB, role[1])
    return conn


def refusal(data):
    """The ErrorResponse fields in data (plaintext backend bytes), or None."""
    for kind, payload in pgwire.split_messages(data)[0]:
        if kind == "E":
            return pgwire.parse_fields(payload)
    return None


def test_ssl_request_and_client_hello_in_one_write_refused(pgfunnel, postgres, certs, role):
    """SSLRequest with the ClientHello in the same write (bytes a man in the middle could have
    injected before encryption began, CVE-2021-23214): no 'S', a plaintext FATAL
    "received unencrypted data after SSL request", connection closed."""
    pf = start_tls(pgfunnel, postgres, certs, userlist={role[0]: role[1]})
    s = raw_socket(pf.port)
    try:
        s.sendall(SSL_REQUEST + client_hello())
        data = read_until_closed(s)
    finally:
        s.close()
    assert not data.startswith(b"S"), data[:40]
    err = refusal(data)
    assert err and err.get("C") == "08P01" and \
        err.get("M") == "received unencrypted data after SSL request", data[:200]
    still_serves(pf, role)


def test_ssl_request_with_startup_in_one_write_refused(pgfunnel, postgres, certs, role):
    """The same with a plaintext StartupMessage after the SSLRequest (libpq's sslmode=prefer
    race an injector would use): refused, never logged in."""
    pf = start_tls(pgfunnel, postgres, certs, mode="prefer", userlist={role[0]: role[1]})
    s = raw_socket(pf.port)
    try:
        s.sendall(SSL_REQUEST + pgwire.startup_message({"user": role[0], "database": DB}))
        data = read_until_closed(s)
    finally:
        s.close()
    err = refusal(data)
    assert err and err.get("M") == "received unencrypted data after SSL request", data[:200]
    assert b"R\x00\x00\x00" not in data


def test_second_ssl_request_inside_tls_refused(pgfunnel, postgres, certs, role):
    """An SSLRequest sent again inside the TLS session is refused (Postgres: unsupported
    frontend protocol 1234.5679) over TLS, and the connection closes."""
    pf = start_tls(pgfunnel, postgres, certs, userlist={role[0]: role[1]})
    s = tls_socket(pf.port, tls_context())
    try:
        s.sendall(SSL_REQUEST)
        data = read_until_closed(s)
    finally:
        s.close()
    err = refusal(data)
    assert err and err.get("C") == "08P01" and "1234.5679" in err.get("M", ""), data[:200]
    still_serves(pf, role)


def test_gssenc_then_ssl_request_then_tls(pgfunnel, postgres, certs, role):
    """GSSENCRequest ('N') then SSLRequest ('S') then TLS and a login: works."""
    pf = start_tls(pgfunnel, postgres, certs, userlist={role[0]: role[1]})
    raw = raw_socket(pf.port)
    try:
        raw.sendall(struct.pack("!II", 8, 80877104))
        assert pgwire.recv_exact(raw, 1) == b"N"
        assert ssl_request(raw) == b"S"
        s = tls_context().wrap_socket(raw, server_hostname="localhost")
        conn = pgwire.Connection(s)
        conn.login(role[0], DB, role[1])
        assert conn.simple_query("SELECT 1") == [("1",)]
    finally:
        raw.close()


def test_ssl_request_on_unix_socket_answered_n(pgfunnel, postgres, certs, role):
    """client_tls_sslmode=require: on the unix socket SSLRequest is answered 'N' (as Postgres)
    and a plaintext login there is allowed (TLS is required of TCP clients only)."""
    pf = start_tls(pgfunnel, postgres, certs, userlist={role[0]: role[1]})
    s = pgwire.open_socket(pf.unix_socket_dir, pf.port)
    try:
        assert ssl_request(s) == b"N"
        conn = pgwire.Connection(s)
        conn.login(role[0], DB, role[1])
        assert conn.simple_query("SELECT 'unix'") == [("unix",)]
        # a direct-TLS-looking first byte on the unix socket is just a bad startup packet
    finally:
        s.close()
    s = pgwire.open_socket(pf.unix_socket_dir, pf.port)
    try:
        s.sendall(client_hello())
        data = read_until_closed(s)
    finally:
        s.close()
    err = refusal(data)
    assert err and "startup packet" in err.get("M", ""), data[:200]


@pytest.mark.parametrize("direct", [False, True], ids=["sslrequest", "direct"])
def test_handshake_and_session_one_byte_at_a_time(pgfunnel, postgres, certs, role, direct):
    """Every ciphertext byte in its own send() (TCP_NODELAY), both ways: the handshake, the
    login and a 100 kB result come through intact (records cut anywhere)."""
    pf = start_tls(pgfunnel, postgres, certs, userlist={role[0]: role[1]})
    ctx = tls_context(alpn=["postgresql"] if direct else None)
    s = BioSock(pf.port, ctx, direct=direct, wchunk=1, rchunk=7).handshake()
    conn = pgwire.Connection(s)
    try:
        conn.login(role[0], DB, role[1])
        rows = conn.simple_query("SELECT repeat('x', 100000) || 'end'")
        assert rows == [("x" * 100000 + "end",)]
    finally:
        s.close()
    still_serves(pf, role)


@pytest.mark.parametrize("alpn", [["http/1.1", "postgresql", "h2"], ["postgresql", "x" * 200]],
                         ids=["middle", "first-of-long"])
def test_direct_tls_alpn_list_containing_postgresql(pgfunnel, postgres, certs, role, alpn):
    """Direct TLS offering "postgresql" among other protocols: selected, login works."""
    pf = start_tls(pgfunnel, postgres, certs, userlist={role[0]: role[1]})
    conn = login(pf, role, ctx=tls_context(alpn=alpn), direct=True)
    try:
        assert conn.sock.selected_alpn_protocol() == "postgresql"
        assert conn.simple_query("SELECT 2") == [("2",)]
    finally:
        conn.close()


@pytest.mark.parametrize("alpn", [["postgres"], ["postgresqlx"], ["xpostgresql"],
                                  ["POSTGRESQL"]])
def test_direct_tls_near_miss_alpn_refused(pgfunnel, postgres, certs, role, alpn):
    """ALPN names close to "postgresql" are not it: the handshake fails."""
    pf = start_tls(pgfunnel, postgres, certs, userlist={role[0]: role[1]})
    with pytest.raises((ssl.SSLError, ConnectionError)):
        conn = login(pf, role, ctx=tls_context(alpn=alpn), direct=True)
        conn.close()
    still_serves(pf, role)


def hello_with_alpn_payload(payload):
    """Python's ClientHello (ALPN "postgresql") with the ALPN extension's data replaced by
    payload (lengths of the extension, the extension block, the handshake and the record
    fixed up): malformed ALPN lists."""
    hello = bytearray(_hello_with_alpn())
    # record(5) handshake(4) version(2) random(32)
    pos = 5 + 4 + 2 + 32
    pos += 1 + hello[pos]                                   # session id
    pos += 2 + struct.unpack("!H", hello[pos:pos + 2])[0]   # cipher suites
    pos += 1 + hello[pos]                                   # compression
    ext_len_at = pos
    end = pos + 2 + struct.unpack("!H", hello[pos:pos + 2])[0]
    pos += 2
    while pos < end:
        etype, elen = struct.unpack("!HH", hello[pos:pos + 4])
        if etype == 16:
            new = struct.pack("!HH", 16, len(payload)) + payload
            delta = len(new) - (4 + elen)
            hello[pos:pos + 4 + elen] = new
            for at, fmt in ((ext_len_at, "!H"), (3, "!H")):
                (v,) = struct.unpack(fmt, hello[at:at + 2])
                hello[at:at + 2] = struct.pack(fmt, v + delta)
            hs = int.from_bytes(hello[6:9], "big") + delta
            hello[6:9] = hs.to_bytes(3, "big")
            return bytes(hello)
        pos += 4 + elen
    raise AssertionError("no ALPN extension in the ClientHello")


def _hello_with_alpn():
    ctx = tls_context(alpn=["postgresql"])
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


MALFORMED_ALPN = {
    "list-len-too-big": struct.pack("!H", 200) + b"\x0apostgresql",
    "name-len-too-big": struct.pack("!H", 11) + b"\x0bpostgresql",
    "name-len-zero": struct.pack("!H", 12) + b"\x00\x0apostgresql"[:12],
    "empty-list": struct.pack("!H", 0),
    "no-list-len": b"",
    "truncated-name": struct.pack("!H", 11) + b"\xffpostgresql",
    "trailing-byte": struct.pack("!H", 11) + b"\x0apostgresql" + b"\x00",
}


@pytest.mark.parametrize("name", sorted(MALFORMED_ALPN))
def test_direct_tls_malformed_alpn_refused(pgfunnel, postgres, certs, role, name):
    """A direct-TLS ClientHello whose ALPN extension is malformed: refused with an alert and
    closed (nothing read out of bounds: alpn_select's walk and OpenSSL's parser), and
    pgfunnel serves on."""
    pf = start_tls(pgfunnel, postgres, certs, userlist={role[0]: role[1]})
    s = raw_socket(pf.port)
    try:
        s.sendall(hello_with_alpn_payload(MALFORMED_ALPN[name]))
        data = read_until_closed(s)
    finally:
        s.close()
    # an alert record (0x15), or a server flight that then fails: never a ServerHello alone
    # that waits for more: the connection is closed either way (read_until_closed).
    assert data[:1] in (b"\x15", b"\x16", b""), data[:20]
    still_serves(pf, role)


# ---------------------------------------------------------------- abandoned handshakes


def rst_close(s):
    """Close with a RST (SO_LINGER 0)."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    s.close()


def login_sockets(pf):
    """SHOW SOCKETS rows of clients still logging in (SHOW CLIENTS does not list them)."""
    return [r for r in pfhelpers.show(pf, "SOCKETS") if r.get("state") == "cl_login"]


def login_client_count(pf):
    return len(login_sockets(pf))


def abandon_at(pf, role, step, hello):
    """Opens a TLS connection to pf, goes as far as step, then returns its raw socket (the
    caller closes it)."""
    raw = raw_socket(pf.port)
    if step == "connect":
        return raw
    if step.startswith("direct-prefix-"):
        raw.sendall(hello[:int(step.rsplit("-", 1)[1])])
        return raw
    raw.sendall(SSL_REQUEST)
    if step == "sslrequest":
        return raw
    assert pgwire.recv_exact(raw, 1) == b"S"
    if step == "after-S":
        return raw
    if step.startswith("prefix-"):
        raw.sendall(hello[:int(step.split("-", 1)[1])])
        return raw
    b = BioSock(pf.port, sock=raw, direct=True)
    if step == "server-flight":
        try:
            b.obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        b._push()
        b._pull()  # the server's flight; our Finished is never sent
        return raw
    b.handshake()
    if step == "handshake-done":
        return raw
    start = pgwire.startup_message({"user": role[0], "database": DB})
    if step == "half-startup":
        b.sendall(start[:len(start) // 2])
        return raw
    b.sendall(start)
    kind, _ = pgwire.Connection(b).read_message()
    assert kind == "R"
    return raw  # "auth-request"


STEPS = ["connect", "sslrequest", "after-S", "prefix-1", "prefix-5", "prefix-6", "prefix-100",
         "prefix-last", "server-flight", "handshake-done", "half-startup", "auth-request",
         "direct-prefix-1", "direct-prefix-6", "direct-prefix-last"]


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_close_at_every_handshake_step(pgfunnel, postgres, certs, role, how):
    """A client that leaves (FIN or RST) at each step of SSLRequest / direct TLS / handshake /
    startup: every such client is gone from SHOW CLIENTS promptly (no login slot held), a
    canary TLS session keeps working, nothing leaks (the sanitizer's exit check)."""
    pf = start_tls(pgfunnel, postgres, certs, userlist={role[0]: role[1]})
    hello = client_hello()
    canary = login(pf, role)
    try:
        for step in STEPS:
            st = step.replace("last", str(len(hello) - 1))
            s = abandon_at(pf, role, st, hello)
            if how == "rst":
                rst_close(s)
            else:
                s.close()
            assert canary.simple_query("SELECT '%s'" % step) == [(step,)]
        pfhelpers.wait_until(lambda: login_client_count(pf) == 0, DEADLINE,
                             "abandoned logins are gone",
                             lambda: login_sockets(pf))
    finally:
        canary.close()
    alive(pf)


def test_half_open_handshakes_closed_by_client_login_timeout(pgfunnel, postgres, certs, role):
    """client_login_timeout=2: clients that stop at every step of the handshake (and after
    it, before a startup packet) are all closed by pgfunnel in time, while a TLS session
    that logged in stays."""
    pf = start_tls(pgfunnel, postgres, certs, params={"client_login_timeout": 2},
                   userlist={role[0]: role[1]})
    hello = client_hello()
    socks = []
    t0 = time.monotonic()
    try:
        for step in STEPS[1:-3] + ["direct-prefix-6"]:
            for _ in range(3):
                if step == "auth-request":
                    continue
                socks.append((step, abandon_at(pf, role, step.replace("last", str(len(hello) - 1)), hello)))
        canary = login(pf, role)
        assert login_client_count(pf) >= len(socks) - 3
        still_open = []
        for step, s in socks:
            try:
                read_until_closed(s, timeout=max(0.5, t0 + 12 - time.monotonic()))
            except AssertionError:
                still_open.append(step)
        assert not still_open, "not closed by client_login_timeout=2 within 12 s: %r" % (
            still_open,)
        assert canary.simple_query("SELECT 'stays'") == [("stays",)]
        canary.close()
        pfhelpers.wait_until(lambda: login_client_count(pf) == 0, DEADLINE, "no login left")
    finally:
        for _, s in socks:
            s.close()
    assert "client_login_timeout" in pf.log_text()


def test_show_clients_while_handshakes_in_flight(pgfunnel, postgres, certs, role):
    """SHOW SOCKETS (and the other SHOWs) while clients sit mid-handshake: they show as
    cl_login with an empty tls column (nothing read from a half-made SSL), a client that logged
    in shows its TLS version in SHOW CLIENTS."""
    pf = start_tls(pgfunnel, postgres, certs, userlist={role[0]: role[1]})
    hello = client_hello()
    socks = [abandon_at(pf, role, st, hello) for st in
             ("after-S", "prefix-100", "server-flight", "handshake-done", "direct-prefix-6")]
    try:
        conn = login(pf, role, app="shown")
        pfhelpers.wait_until(lambda: login_client_count(pf) == 5, DEADLINE,
                             "5 logins in SHOW SOCKETS", lambda: login_sockets(pf))
        # four mid-handshake (""), one whose handshake is done but sent no startup packet
        tls = sorted(r["tls"] for r in login_sockets(pf))
        assert tls[:4] == [""] * 4 and tls[4].startswith("TLSv1.3/"), tls
        rows = pfhelpers.show(pf, "CLIENTS")
        shown = [r for r in rows if r.get("application_name") == "shown"]
        assert len(shown) == 1 and shown[0]["tls"].startswith("TLSv1.3/"), shown
        for what in ("FDS", "STATS", "POOLS", "LISTS", "SERVERS", "ACTIVE_SOCKETS"):
            try:
                pfhelpers.show(pf, what)
            except Exception as e:  # noqa: BLE001 - SHOW FDS may be refused; must not crash
                assert "FDS" in what, e
        alive(pf)
        conn.close()
    finally:
        for s in socks:
            s.close()


# ---------------------------------------------------------------- backpressure, slow readers


BIG_QUERY = "SELECT repeat('x', 1000000) FROM generate_series(1, 200)"  # ~200 MB of rows


def backend_waits_on_client(postgres, user):
    with postgres.connect(autocommit=True) as su:
        rows = su.execute("SELECT wait_event FROM pg_stat_activity WHERE usename = %s AND "
                          "state = 'active'", (user,)).fetchall()
    return any(r[0] == "ClientWrite" for r in rows)


def stalled_growth(pf, postgres, role, sock_factory):
    """RSS growth (KiB) of pgfunnel while a client that sent BIG_QUERY does not read: measured
    once the backend is blocked writing (pgfunnel stopped reading it) and RSS settled."""
    warm = sock_factory()
    assert warm.simple_query("SELECT 1") == [("1",)]
    warm.close()
    conn = sock_factory()
    try:
        before = rss(pf)
        conn.send(pgwire.fe_query(BIG_QUERY))
        pfhelpers.wait_until(lambda: backend_waits_on_client(postgres, role[0]), 30,
                             "the backend blocks on ClientWrite (backpressure reached it)")
        samples = [rss(pf)]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            samples.append(rss(pf))
            if len(samples) >= 5 and max(samples[-5:]) - min(samples[-5:]) < 512:
                break
            time.sleep(0.1)
        return max(samples) - before
    finally:
        rst_close(conn.sock)


def test_tls_client_that_does_not_read_keeps_memory_bounded(pgfunnel, postgres, certs, role):
    """A client that asks for ~200 MB of rows and never reads: over TLS as over plaintext,
    pgfunnel stops reading the server (the backend blocks in ClientWrite) and its memory stays
    bounded (the TLS read BIO, write BIO and tls_out copies do not grow with the result)."""
    pf = start_tls(pgfunnel, postgres, certs, mode="prefer", userlist={role[0]: role[1]})

    def tls_conn():
        return login(pf, role)

    def plain_conn():
        return pgwire.connect(pf.host, pf.port, role[0], DB, role[1])

    tls_growth = stalled_growth(pf, postgres, role, tls_conn)
    pfhelpers.wait_until(lambda: not backend_waits_on_client(postgres, role[0]), 20,
                         "the abandoned backend ends")
    plain_growth = stalled_growth(pf, postgres, role, plain_conn)
    assert tls_growth < 24 * 1024 and tls_growth < plain_growth + 16 * 1024, (
        "RSS growth while a client does not read 200 MB: TLS %d KiB, plaintext %d KiB" % (
            tls_growth, plain_growth))
    still_serves(pf, role)


@pytest.mark.parametrize("rchunk", [1, 3])
def test_tls_reader_taking_few_bytes_per_read(pgfunnel, postgres, certs, role, rchunk):
    """A client reading pgfunnel's ciphertext 1 (or 3) bytes per recv(), with a 300 kB result:
    intact, and a canary session is not slowed down meanwhile."""
    pf = start_tls(pgfunnel, postgres, certs, userlist={role[0]: role[1]})
    conn = bio_login(pf, role, rchunk=rchunk)
    canary = login(pf, role)
    try:
        conn.send(pgwire.fe_query("SELECT md5(g::text) FROM generate_series(1, 10000) g"))
        t0 = time.monotonic()
        assert canary.simple_query("SELECT 'quick'") == [("quick",)]
        assert time.monotonic() - t0 < 2.0
        msgs = conn.read_until_ready(60)
        vals = pgwire.data_values(msgs)
        assert vals == [hashlib.md5(str(g).encode()).hexdigest() for g in range(1, 10001)]
    finally:
        conn.sock.close()
        canary.close()


# ---------------------------------------------------------------- endings


def pool_settles(pf):
    def ok():
        r = pfhelpers.pool_row(pf, DB) or {}
        return r and int(r["cl_active"]) == 0 and int(r["sv_active"]) == 0
    pfhelpers.wait_until(ok, DEADLINE, "pool settles", lambda: pfhelpers.pool_row(pf, DB))


@pytest.mark.parametrize("ending", ["close_notify", "close_notify+garbage", "close_notify+record",
                                    "fin", "rst", "garbage-record", "alert"])
def test_session_endings_mid_transaction(pgfunnel, postgres, certs, role, ending):
    """A TLS client inside a transaction ends in every way: close_notify (then garbage bytes,
    or another record after it), a FIN or RST without close_notify, a garbage record, a fatal
    alert. pgfunnel closes the client, the server does not go back to the pool inside the
    transaction (it is reset or closed), and the next client gets a clean session."""
    pf = start_tls(pgfunnel, postgres, certs, userlist={role[0]: role[1]},
                   params={"pool_mode": "session", "server_reset_query": "DISCARD ALL"})
    conn = bio_login(pf, role)
    b = conn.sock
    assert conn.simple_query("BEGIN") == []
    assert conn.simple_query("CREATE TEMP TABLE leftover (x int)") == []
    if ending.startswith("close_notify"):
        b.close_notify()
        if ending == "close_notify+garbage":
            b.raw.sendall(b"\x00" * 64 + b"garbage")
        elif ending == "close_notify+record":
            b.raw.sendall(b"\x17\x03\x03\x00\x20" + os.urandom(32))
    elif ending == "garbage-record":
        b.raw.sendall(b"\x17\x03\x03\x00\x40" + os.urandom(64))
    elif ending == "alert":
        b.raw.sendall(b"\x15\x03\x03\x00\x02\x02\x28")  # plaintext fatal handshake_failure
    if ending == "rst":
        rst_close(b.raw)
    elif ending != "fin":
        try:
            read_until_closed(b.raw)
        finally:
            b.raw.close()
    else:
        b.raw.close()
    pool_settles(pf)
    again = login(pf, role)
    try:
        assert again.simple_query("SELECT count(*) FROM pg_class WHERE relname = 'leftover'"
                                  ) == [("0",)]
        assert again.simple_query("SELECT 'clean'") == [("clean",)]
    finally:
        again.close()


# ---------------------------------------------------------------- shutdown with TLS clients


def tls_crowd(pf, postgres, role):
    """TLS clients in every state pgfunnel can hold one in: mid-handshake at several steps,
    handshake done without startup, waiting for SCRAM, logged in idle, inside a transaction,
    a big result not being read (ciphertext queued in tls_out writes), and after a KeyUpdate
    burst (answers held in the write BIO). Returns the sockets/connections to close."""
    hello = client_hello()
    held = []
    for st in ("sslrequest", "after-S", "prefix-100", "server-flight", "handshake-done",
               "half-startup", "auth-request", "direct-prefix-6"):
        held.append(abandon_at(pf, role, st, hello))
    idle = login(pf, role)
    held.append(idle)
    tx = login(pf, role)
    assert tx.simple_query("BEGIN") == []
    held.append(tx)
    big = login(pf, role)
    big.send(pgwire.fe_query(BIG_QUERY))
    held.append(big)
    ku = login(pf, role)
    assert key_update_storm(ku.sock, 200, time.monotonic() + 10) == 200
    held.append(ku)
    pfhelpers.wait_until(lambda: backend_waits_on_client(postgres, role[0]), 30,
                         "the big result is backpressured")
    return held


def close_all(held):
    for h in held:
        try:
            (h.sock if hasattr(h, "sock") else h).close()
        except OSError:
            pass


@pytest.mark.parametrize("signals", [("SIGQUIT",), ("SIGINT", "SIGINT"), ("SIGTERM", "SIGTERM"),
                                     ("SIGTERM", "SIGQUIT")])
def test_signals_with_tls_clients_in_every_state(pgfunnel, postgres, certs, role, signals):
    """With TLS clients in every state (tls_crowd), shutdown signals (a second one means now):
    pgfunnel exits promptly with status 0 and no sanitizer report (LeakSanitizer runs at exit:
    SSL objects, BIOs, held plaintext, tls_out copies and idle handles all freed)."""
    pf = start_tls(pgfunnel, postgres, certs, userlist={role[0]: role[1]})
    held = tls_crowd(pf, postgres, role)
    try:
        for i, name in enumerate(signals):
            pf.signal(getattr(signal, name))
            if i + 1 < len(signals):
                pf.wait_for_log(r"got %s" % name)
        rc = pf.wait(20)
        assert rc == 0, pf.all_output()[-4000:]
        reports = pfhelpers.sanitizer_reports(pf)
        assert not reports, "\n".join(reports[:80])
    finally:
        close_all(held)


def test_admin_shutdown_with_tls_clients_in_every_state(pgfunnel, postgres, certs, role):
    """The console's SHUTDOWN (immediate) with the same crowd: clean exit, no report."""
    pf = start_tls(pgfunnel, postgres, certs, userlist={role[0]: role[1]})
    held = tls_crowd(pf, postgres, role)
    try:
        try:
            pfhelpers.console(pf, "SHUTDOWN")
        except Exception:  # noqa: BLE001 - the console may be cut by the shutdown itself
            pass
        assert pf.wait(20) == 0, pf.all_output()[-4000:]
        reports = pfhelpers.sanitizer_reports(pf)
        assert not reports, "\n".join(reports[:80])
    finally:
        close_all(held)


# ---------------------------------------------------------------- console commands under TLS load


class Admin:
    """One console session over the unix socket (plaintext there even with TLS required)."""

    def __init__(self, pf):
        self.conn = pgwire.connect(pf.unix_socket_dir, pf.port, "postgres", "pgbouncer",
                                   "pg-super-secret")

    def run(self, sql, timeout=30.0):
        self.conn.send_query(sql)
        tags, _, rows = self.conn.read_answer(timeout)
        return tags, rows

    def show(self, what):
        self.conn.send_query("SHOW " + what)
        _, cols, rows = self.conn.read_answer(30.0)
        return [dict(zip(cols, r)) for r in rows]

    def close(self):
        self.conn.close()


class TlsWorkers:
    """n threads, each a TLS session running queries in a loop (and logging in again when
    pgfunnel closes it); .done counts finished queries, .errors the unexpected failures."""

    def __init__(self, pf, role, n=4):
        self.pf, self.role = pf, role
        self.done = 0
        self.errors = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(n)]
        for t in self.threads:
            t.start()

    def _run(self, i):
        while not self.stop.is_set():
            try:
                conn = login(self.pf, self.role, app="worker%d" % i)
            except (OSError, ssl.SSLError, pgwire.ProtocolError, pgwire.PgError):
                time.sleep(0.05)
                continue
            try:
                while not self.stop.is_set():
                    rows = conn.simple_query("SELECT %d, repeat('y', 20000)" % i)
                    if rows != [(str(i), "y" * 20000)]:
                        self.errors.append("worker %d got %r" % (i, rows[:1]))
                    self.done += 1
            except (OSError, ssl.SSLError, pgwire.ProtocolError, pgwire.PgError, EOFError):
                pass
            finally:
                conn.close()

    def progress(self, what, timeout=20.0):
        start = self.done
        pfhelpers.wait_until(lambda: self.done >= start + 10, timeout,
                             "TLS workers make progress after %s" % what)

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(30)
        assert not self.errors, self.errors[:5]


def test_console_commands_during_tls_traffic(pgfunnel, postgres, certs, role):
    """TLS sessions run queries while the console does KILL_CLIENT (of a TLS client whose big
    result is backpressured), RECONNECT, PAUSE/RESUME, SUSPEND (which must flush or, past
    suspend_timeout, kill that backpressured TLS client) and RESUME, RELOAD with a swapped
    certificate, SET client_tls_sslmode back and forth: every command answers, the sessions
    go on, nobody gets another's rows, pgfunnel stays clean."""
    served = certs.install(certs.server, "served-admin")
    pf = start_tls(pgfunnel, postgres, certs, userlist={role[0]: role[1]},
                   params={"pool_mode": "transaction", "suspend_timeout": 2,
                           "client_tls_key_file": served.key,
                           "client_tls_cert_file": served.cert,
                           "default_pool_size": 3})
    adm = Admin(pf)
    workers = TlsWorkers(pf, role)
    big = None
    try:
        workers.progress("start")
        # a TLS client with a backpressured big result, then KILL_CLIENT of it
        big = login(pf, role, app="bigreader")
        big.send(pgwire.fe_query(BIG_QUERY))
        pfhelpers.wait_until(lambda: backend_waits_on_client(postgres, role[0]), 30,
                             "the big result is backpressured")
        cid = [r["id"] for r in adm.show("CLIENTS") if r["application_name"] == "bigreader"]
        assert len(cid) == 1
        assert adm.run("KILL_CLIENT %s" % cid[0])[0] == ["KILL_CLIENT"]
        workers.progress("KILL_CLIENT")
        assert adm.run("RECONNECT")[0] == ["RECONNECT"]
        workers.progress("RECONNECT")
        assert adm.run("PAUSE")[0] == ["PAUSE"]
        assert adm.run("RESUME")[0] == ["RESUME"]
        workers.progress("PAUSE/RESUME")
        # SUSPEND with another backpressured TLS client: flushed or killed by suspend_timeout
        big.close()
        big = login(pf, role, app="bigreader2")
        big.send(pgwire.fe_query(BIG_QUERY))
        pfhelpers.wait_until(lambda: backend_waits_on_client(postgres, role[0]), 30,
                             "the second big result is backpressured")
        t0 = time.monotonic()
        assert adm.run("SUSPEND", timeout=20)[0] == ["SUSPEND"]
        assert time.monotonic() - t0 < 10
        assert adm.run("RESUME")[0] == ["RESUME"]
        workers.progress("SUSPEND/RESUME")
        certs.install(certs.other_server, "served-admin")
        assert adm.run("RELOAD")[0] == ["RELOAD"]
        workers.progress("RELOAD with a new certificate")
        assert adm.run("SET client_tls_sslmode = 'allow'")[0] == ["SET"]
        workers.progress("SET client_tls_sslmode = allow")
        assert adm.run("SET client_tls_sslmode = 'require'")[0] == ["SET"]
        workers.progress("SET client_tls_sslmode = require")
        alive(pf)
    finally:
        workers.finish()
        if big:
            big.close()
        adm.close()
        certs.install(certs.server, "served-admin")


def finish_handshake_and_login(pf, role, raw, cafile):
    """Completes a TLS session whose SSLRequest was answered (raw) and logs in."""
    b = BioSock(pf.port, tls_context(cafile), sock=raw, direct=True).handshake()
    der = b.obj.getpeercert(binary_form=True)
    conn = pgwire.Connection(b)
    conn.login(role[0], DB, role[1])
    assert conn.simple_query("SELECT 'late'") == [("late",)]
    return tlscerts.cert_serial(der)


def test_reload_swaps_certificate_while_handshakes_in_flight(pgfunnel, postgres, certs, role):
    """Clients that got 'S' before a RELOAD that swaps the certificate for one of another CA
    finish their handshake afterwards on the certificate they started with (their SSL keeps
    its context), new clients get the new one, nothing leaks when the old context goes."""
    served = certs.install(certs.server, "served-midhs")
    pf = start_tls(pgfunnel, postgres, certs, userlist={role[0]: role[1]},
                   params={"client_tls_key_file": served.key,
                           "client_tls_cert_file": served.cert})
    early = []
    for _ in range(5):
        raw = raw_socket(pf.port)
        assert ssl_request(raw) == b"S"
        early.append(raw)
    try:
        certs.install(certs.other_server, "served-midhs")
        adm = Admin(pf)
        assert adm.run("RELOAD")[0] == ["RELOAD"]
        adm.close()
        for raw in early:
            assert finish_handshake_and_login(pf, role, raw, certs.ca.cert) == \
                certs.server.serial
        raw = raw_socket(pf.port)
        assert ssl_request(raw) == b"S"
        assert finish_handshake_and_login(pf, role, raw, certs.other_ca.cert) == \
            certs.other_server.serial
    finally:
        for raw in early:
            raw.close()
        certs.install(certs.server, "served-midhs")


def test_500_tls_clients_at_once(pgfunnel, postgres, certs, role):
    """500 TLS clients connect, handshake and log in at the same time (transaction pooling,
    10 servers), each runs a query naming itself: all served, each its own answer."""
    n = 500
    pf = start_tls(pgfunnel, postgres, certs, userlist={role[0]: role[1]},
                   params={"pool_mode": "transaction", "default_pool_size": 10,
                           "max_client_conn": 1000})
    results = [None] * n
    gate = threading.Barrier(n)

    def one(i):
        try:
            gate.wait(60)
            conn = login(pf, role)
            try:
                results[i] = conn.simple_query("SELECT %d" % i)
            finally:
                conn.close()
        except Exception as e:  # noqa: BLE001 - reported below
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    bad = [(i, r) for i, r in enumerate(results) if r != [(str(i),)]]
    assert not bad, "%d of %d failed, e.g. %r" % (len(bad), n, bad[:5])
    alive(pf)


# ================================================================ hostile servers


def server_ctx(certs):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs.server.cert, certs.server.key)
    ctx.set_alpn_protocols(["postgresql"])
    return ctx


def read_ssl_request(peer):
    (n,) = struct.unpack("!I", peer._read(4))
    body = peer._read(n - 4)
    assert n == 8 and struct.unpack("!I", body)[0] == 80877103, \
        "expected an SSLRequest first, got %r" % body[:8]


def tls_accept(peer, certs):
    """Answers the SSLRequest 'S' and completes TLS as the server; peer reads/writes through
    it from then on."""
    read_ssl_request(peer)
    peer.sock.sendall(b"S")
    peer.sock = server_ctx(certs).wrap_socket(peer.sock, server_side=True)


def serve_login(peer):
    peer.read_startup()
    peer.auth(0)
    peer.finish_login(params=[("server_version", "16.0"), ("client_encoding", "UTF8"),
                              ("standard_conforming_strings", "on"), ("DateStyle", "ISO, MDY"),
                              ("integer_datetimes", "on"), ("TimeZone", "UTC")])


def answer_queries(peer, on_query):
    """Reads frontend messages; a Query whose text contains 'attack' goes to on_query(peer,
    sql), any other is answered with an empty result. Returns when pgfunnel leaves."""
    while True:
        kind, payload = peer.read_message()
        if kind == "X":
            return
        if kind != "Q":
            continue
        sql = payload[:-1].decode()
        if "attack" in sql:
            if on_query(peer, sql) == "stop":
                return
        else:
            peer.sock.sendall(peer.message("C", b"SELECT 0\0") + peer.message("Z", b"I"))


def row_description():
    return (struct.pack("!H", 1) + b"v\0" + struct.pack("!IhIhih", 0, 0, 25, -1, -1, 0))


def data_row(value):
    return struct.pack("!HI", 1, len(value)) + value


def fake_env(pgfunnel, role, script, sslmode="require", params=None):
    fake = pfhelpers.ScriptedServer(script)
    p = {"server_tls_sslmode": sslmode, "server_connect_timeout": 3, "server_login_retry": 1,
         "query_wait_timeout": 15, "auth_type": "md5", "server_lifetime": 3600,
         "admin_users": "postgres"}
    p.update(params or {})
    pf = pgfunnel.start(params=p, databases={DB: fake.db_entry()},
                        userlist={role[0]: role[1], "postgres": "pg-super-secret"})
    return fake, pf


def client_outcome(pf, role, sql="SELECT 'attack'", timeout=20.0):
    """Logs in (plaintext client leg) and runs sql: ("rows", rows) or ("error", sqlstate,
    message) or ("closed", text); with how long it took."""
    t0 = time.monotonic()
    try:
        conn = pgwire.connect(pf.host, pf.port, role[0], DB, role[1], timeout=timeout)
        try:
            conn.sock.settimeout(timeout)
            out = ("rows", conn.simple_query(sql))
        finally:
            conn.close()
    except pgwire.PgError as e:
        out = ("error", e.sqlstate, e.message)
    except (pgwire.ProtocolError, OSError, EOFError) as e:
        out = ("closed", repr(e))
    return out, time.monotonic() - t0


SSL_ANSWERS = {
    # answer bytes after the SSLRequest -> words the client's error must contain
    "S+extra": (b"SXYZ", "unencrypted data after its SSL response"),
    "S+startup-answer": (b"S" + b"R\x00\x00\x00\x08\x00\x00\x00\x00",
                         "unencrypted data after its SSL response"),
    "N": (b"N", "server does not support SSL, but SSL was required"),
    "E": (b"E\x00\x00\x00\x40SFATAL\x00C28000\x00Mno pg_hba.conf entry for you\x00\x00"
          .ljust(0x41, b"\x00"), "error response during SSL exchange"),
    "other-byte": (b"Q", "invalid response to SSL negotiation"),
    "nul": (b"\x00", "invalid response to SSL negotiation"),
}


@pytest.mark.parametrize("name", sorted(SSL_ANSWERS))
def test_server_bad_answer_to_ssl_request(pgfunnel, role, name):
    """server_tls_sslmode=require and a server that answers the SSLRequest with 'S' plus
    bytes (CVE-2021-23222), 'N', 'E' and an error, or another byte: the waiting client gets
    an error naming it promptly, and the server never sees a plaintext startup packet."""
    answer, words = SSL_ANSWERS[name]
    seen = []

    def script(peer):
        read_ssl_request(peer)
        peer.sock.sendall(answer)
        peer.sock.settimeout(5)
        try:
            while True:
                chunk = peer.sock.recv(65536)
                if not chunk:
                    return
                seen.append(chunk)
        except OSError:
            return

    fake, pf = fake_env(pgfunnel, role, script)
    try:
        out, took = client_outcome(pf, role)
        assert out[0] == "error" and words in out[2], out
        assert took < 8, "the client waited %.1fs" % took
        plain = b"".join(seen)
        assert b"user\x00" not in plain and b"database\x00" not in plain, plain[:200]
        alive(pf)
    finally:
        fake.stop()
    assert not fake.errors, fake.errors


HANDSHAKE_FAULTS = ["garbage", "close", "alert", "plaintext-after-S", "http"]


@pytest.mark.parametrize("fault", HANDSHAKE_FAULTS)
def test_server_breaks_tls_handshake(pgfunnel, role, fault):
    """After 'S' the server answers pgfunnel's ClientHello with garbage, closes, sends a fatal
    alert, answers in plaintext (AuthenticationOk), or speaks HTTP: the client gets an error
    promptly, and pgfunnel keeps no server connection."""
    def script(peer):
        read_ssl_request(peer)
        peer.sock.sendall(b"S")
        hello = peer.sock.recv(65536)
        assert hello[:1] == b"\x16", hello[:10]
        if fault == "garbage":
            peer.sock.sendall(os.urandom(300))
        elif fault == "alert":
            peer.sock.sendall(b"\x15\x03\x03\x00\x02\x02\x28")
        elif fault == "plaintext-after-S":
            peer.sock.sendall(b"R\x00\x00\x00\x08\x00\x00\x00\x00")
        elif fault == "http":
            peer.sock.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        if fault != "close":
            try:
                peer.sock.settimeout(5)
                while peer.sock.recv(65536):
                    pass
            except OSError:
                pass

    fake, pf = fake_env(pgfunnel, role, script)
    try:
        out, took = client_outcome(pf, role)
        assert out[0] == "error" and "TLS" in out[2], out
        assert took < 8, "the client waited %.1fs" % took
        pfhelpers.wait_until(lambda: pfhelpers.pool_servers(pfhelpers.pool_row(pf, DB)) == 0,
                             DEADLINE, "no server connection left")
    finally:
        fake.stop()


def test_server_that_never_handshakes_times_out(pgfunnel, role):
    """'S' then silence (never a ServerHello): server_connect_timeout=3 ends the attempt and the
    waiting client hears of it (query_wait_timeout 15 at the latest): no hang, no leak."""
    def script(peer):
        read_ssl_request(peer)
        peer.sock.sendall(b"S")
        peer.sock.settimeout(30)
        try:
            while peer.sock.recv(65536):
                pass
        except OSError:
            pass

    fake, pf = fake_env(pgfunnel, role, script)
    try:
        out, took = client_outcome(pf, role, timeout=30)
        assert out[0] == "error", out
        assert took < 20, "the client waited %.1fs" % took
    finally:
        fake.stop()


def tls_fake(certs, on_query, ready=None):
    """A script: TLS as required, login, then answer_queries(on_query)."""
    def script(peer):
        tls_accept(peer, certs)
        serve_login(peer)
        if ready is not None:
            ready.append(peer)
        answer_queries(peer, on_query)
    return script


def test_server_huge_result_to_client_that_does_not_read(pgfunnel, role, certs):
    """A TLS server streams ~200 MB of rows as fast as it can to a client that never reads:
    pgfunnel stops reading the server (the fake's send blocks) and its memory stays bounded."""
    progress = {"sent": 0}

    def on_query(peer, sql):
        peer.sock.settimeout(60)
        row = peer.message("D", data_row(b"z" * 1000000))
        peer.sock.sendall(peer.message("T", row_description()))
        for _ in range(200):
            peer.sock.sendall(row)
            progress["sent"] += len(row)
        peer.sock.sendall(peer.message("C", b"SELECT 200\0") + peer.message("Z", b"I"))

    fake, pf = fake_env(pgfunnel, role, tls_fake(certs, on_query))
    try:
        conn = pgwire.connect(pf.host, pf.port, role[0], DB, role[1])
        assert conn.simple_query("SELECT 1") == []
        before = rss(pf)
        conn.send(pgwire.fe_query("SELECT 'attack'"))
        last = [-1, time.monotonic()]

        def stalled():
            if progress["sent"] != last[0]:
                last[:] = [progress["sent"], time.monotonic()]
                return False
            return time.monotonic() - last[1] > 1.0
        pfhelpers.wait_until(stalled, 60, "the fake server's sending stalls (backpressure)")
        grown = rss(pf) - before
        assert progress["sent"] < 100 * 1000000, "pgfunnel took %d bytes" % progress["sent"]
        assert grown < 24 * 1024, "RSS grew by %d KiB" % grown
        rst_close(conn.sock)
    finally:
        fake.stop()


MIDRESULT_FAULTS = ["garbage", "close_notify", "plain-alert", "fin", "rst", "truncated-record"]


@pytest.mark.parametrize("fault", MIDRESULT_FAULTS)
def test_server_breaks_tls_mid_result(pgfunnel, role, certs, fault):
    """A TLS server sends half a result, then garbage ciphertext, close_notify, a plaintext
    alert, a FIN or RST, or half a record and a FIN: the client gets the rows before and an
    error (or a closed connection) promptly, never garbage as rows; the next query works on a
    new server connection."""
    calls = {"n": 0}

    def on_query(peer, sql):
        calls["n"] += 1
        if calls["n"] > 1:
            peer.sock.sendall(peer.message("T", row_description()) +
                              peer.message("D", data_row(b"fine")) +
                              peer.message("C", b"SELECT 1\0") + peer.message("Z", b"I"))
            return None
        peer.sock.sendall(peer.message("T", row_description()) +
                          peer.message("D", data_row(b"before")))
        raw = peer.sock
        if fault == "garbage":
            socket.socket.sendall(raw, b"\x17\x03\x03\x00\x40" + os.urandom(64))
        elif fault == "close_notify":
            peer.sock = raw.unwrap()
        elif fault == "plain-alert":
            socket.socket.sendall(raw, b"\x15\x03\x03\x00\x02\x02\x50")
        elif fault == "truncated-record":
            socket.socket.sendall(raw, b"\x17\x03\x03\x01\x00" + os.urandom(20))
        elif fault == "rst":
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return "stop"

    fake, pf = fake_env(pgfunnel, role, tls_fake(certs, on_query))
    try:
        conn = pgwire.connect(pf.host, pf.port, role[0], DB, role[1])
        conn.sock.settimeout(DEADLINE)
        t0 = time.monotonic()
        conn.send(pgwire.fe_query("SELECT 'attack'"))
        try:
            got = ("ready", conn.read_until_ready(DEADLINE))
        except pgwire.Timeout as e:
            raise AssertionError("no error and no close within %.0fs: %r" % (
                DEADLINE, getattr(e, "messages", None)))
        except (pgwire.ProtocolError, OSError) as e:
            got = ("closed", getattr(e, "messages", []))
        assert time.monotonic() - t0 < 8
        kinds = [k for k, _ in got[1]]
        values = [p for k, p in got[1] if k == "D"]
        assert all(v == data_row(b"before") for v in values), values[:3]
        if got[0] == "ready":
            assert "E" in kinds, kinds
        conn.close()
        out, _ = client_outcome(pf, role)
        assert out == ("rows", [("fine",)]), out
    finally:
        fake.stop()


def test_server_ciphertext_one_byte_per_send(pgfunnel, role, certs):
    """A TLS server whose ciphertext arrives one byte per send() (TCP_NODELAY) for the whole
    handshake and a 50 kB result: intact."""
    def script(peer):
        read_ssl_request(peer)
        peer.sock.sendall(b"S")
        raw = peer.sock
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = server_ctx(certs).wrap_bio(inc, out, server_side=True)

        class Slow:
            def recv(self, n):
                while True:
                    try:
                        return obj.read(n)
                    except ssl.SSLWantReadError:
                        chunk = raw.recv(65536)
                        if not chunk:
                            return b""
                        inc.write(chunk)

            def sendall(self, data):
                obj.write(data)
                flush()

            def settimeout(self, t):
                raw.settimeout(t)

        def flush():
            data = out.read()
            for i in range(len(data)):
                raw.send(data[i:i + 1])

        while True:
            try:
                obj.do_handshake()
                flush()
                break
            except ssl.SSLWantReadError:
                flush()
                inc.write(raw.recv(65536))
        peer.sock = Slow()
        serve_login(peer)

        def on_query(p, sql):
            p.sock.sendall(p.message("T", row_description()) +
                           p.message("D", data_row(b"q" * 50000)) +
                           p.message("C", b"SELECT 1\0") + p.message("Z", b"I"))
        answer_queries(peer, on_query)

    fake, pf = fake_env(pgfunnel, role, script)
    try:
        out, _ = client_outcome(pf, role, timeout=60)
        assert out == ("rows", [("q" * 50000,)]), str(out)[:200]
    finally:
        fake.stop()
    assert not fake.errors, fake.errors


def test_bug_server_key_update_storm_grows_memory_without_bound(pgfunnel, role, certs):
    """The KeyUpdate bug on the server leg: a TLS server (hostile, or any peer) whose idle
    pooled connection gets KeyUpdate(update_requested) records. pgfunnel reads its idle
    servers (to see them go), so OpenSSL answers each into the connection's write BIO, which is
    flushed only when a query is sent to that server: the answers pile up in pgfunnel's memory
    while the pool holds the connection idle. Asserts the answers come back (or pgfunnel drops
    the connection) within 5 s of 30000 requests."""
    ready, done = [], threading.Event()

    def script(peer):
        tls_accept(peer, certs)
        serve_login(peer)
        kind, _ = peer.read_message()
        assert kind == "Q"
        peer.sock.sendall(peer.message("C", b"SELECT 0\0") + peer.message("Z", b"I"))
        ready.append(peer)  # from now on only the test thread uses the SSL object
        done.wait(60)

    fake, pf = fake_env(pgfunnel, role, script, params={"server_reset_query": ""})
    try:
        out, _ = client_outcome(pf, role, sql="SELECT 1")
        assert out == ("rows", []), out
        pfhelpers.wait_until(lambda: ready, DEADLINE, "the fake answered its query")
        peer = ready[0]
        count = 30000
        peer.sock.settimeout(DEADLINE)
        drained = {}
        sent = key_update_storm(peer.sock, count, time.monotonic() + 30, server=True,
                                drained=drained)
        assert sent == count or drained.get("closed"), "could only send %d" % sent
        got, closed = raw_recv_until(peer.sock, count * 20 - drained.get("bytes", 0), 5.0)
        got += drained.get("bytes", 0)
        closed = closed or drained.get("closed", False)
        alive(pf)
        assert closed or got >= count * 20, (
            "%d KeyUpdate requests sent to pgfunnel's idle server connection: %d bytes came "
            "back, connection kept" % (count, got))
    finally:
        done.set()
        fake.stop()


# ================================================================ SCRAM-SHA-256-PLUS


def cert_hash(der):
    return hashlib.sha256(der).digest()  # ECDSA-with-SHA256 certificates: SHA-256


def scram_exchange(sock, role, mech, gs2, cbind_data=None, c_override=None, password=None):
    """Runs a SCRAM exchange on sock (after the startup packet's SASL request was read).
    gs2: the gs2 header ("n,,", "y,,", "p=tls-server-end-point,,"). Returns the first
    ErrorResponse's fields, or "ok" after AuthenticationOk and ReadyForQuery; proof is kept
    in .proof for log checks."""
    conn = pgwire.Connection(sock)
    cnonce = base64.b64encode(os.urandom(18)).decode()
    bare = "n=,r=" + cnonce
    first = (gs2 + bare).encode()
    conn.send(pgwire.message(b"p", mech.encode() + b"\0" + struct.pack("!I", len(first)) +
                             first))
    kind, payload = conn.read_message()
    if kind == "E":
        return pgwire.parse_fields(payload), None
    assert kind == "R" and struct.unpack("!I", payload[:4])[0] == 11, (kind, payload[:20])
    server_first = payload[4:].decode()
    attrs = dict(a.split("=", 1) for a in server_first.split(","))
    salted = hashlib.pbkdf2_hmac("sha256", (password or role[1]).encode(),
                                 base64.b64decode(attrs["s"]), int(attrs["i"]))
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored = hashlib.sha256(client_key).digest()
    cval = c_override if c_override is not None else base64.b64encode(
        gs2.encode() + (cbind_data or b"")).decode()
    without = "c=%s,r=%s" % (cval, attrs["r"])
    auth = ",".join([bare, server_first, without]).encode()
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(
        client_key, hmac.digest(stored, auth, "sha256")))).decode()
    conn.send(pgwire.message(b"p", (without + ",p=" + proof).encode()))
    while True:
        kind, payload = conn.read_message()
        if kind == "E":
            return pgwire.parse_fields(payload), proof
        if kind == "Z":
            return "ok", proof


def sasl_start(sock, role):
    sock.sendall(pgwire.startup_message({"user": role[0], "database": DB}))
    kind, payload = pgwire.Connection(sock).read_message()
    assert kind == "R" and struct.unpack("!I", payload[:4])[0] == 10, (kind, payload[:20])
    return [m.decode() for m in payload[4:].split(b"\0") if m]


@pytest.fixture
def plus_pf(pgfunnel, postgres, certs, role):
    return start_tls(pgfunnel, postgres, certs, mode="prefer", userlist={role[0]: role[1]},
                     params={"auth_type": "scram-sha-256"})


PLUS_CASES = {
    # name: (mech, gs2, cbind source, c= override, expected (sqlstate, message) or "ok")
    "good": ("SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,", "own", None, "ok"),
    "other-cert-hash": ("SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,", "other", None,
                        ("28000", "SCRAM channel binding check failed")),
    "no-cbind-data": ("SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,", "none", None,
                      ("28000", "SCRAM channel binding check failed")),
    "hash-plus-byte": ("SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,", "own+", None,
                       ("28000", "SCRAM channel binding check failed")),
    "c-biws": ("SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,", "own", "biws",
               ("28000", "SCRAM channel binding check failed")),
    "c-not-base64": ("SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,", "own", "!!!!",
                     ("28000", "SCRAM channel binding check failed")),
    "tls-unique": ("SCRAM-SHA-256-PLUS", "p=tls-unique,,", "own", None,
                   ("08P01", "unsupported SCRAM channel-binding type")),
    "plus-with-n": ("SCRAM-SHA-256-PLUS", "n,,", None, None, ("08P01", None)),
    "plus-with-y": ("SCRAM-SHA-256-PLUS", "y,,", None, None, ("08P01", None)),
    "plain-with-p": ("SCRAM-SHA-256", "p=tls-server-end-point,,", "own", None,
                     ("08P01", None)),
    "y-over-tls": ("SCRAM-SHA-256", "y,,", None, None,
                   ("28000", "SCRAM channel binding negotiation error")),
    "n-over-tls": ("SCRAM-SHA-256", "n,,", None, None, "ok"),
    "authzid": ("SCRAM-SHA-256-PLUS", "p=tls-server-end-point,a=postgres,", "own", None,
                ("0A000", None)),
}


@pytest.mark.parametrize("name", sorted(PLUS_CASES))
def test_scram_plus_over_tls(plus_pf, certs, role, name):
    """SCRAM over TLS with every channel-binding variant: the right hash logs in; another
    certificate's hash, none, one byte more, c=biws, c= that is not base64 fail with 28000
    "SCRAM channel binding check failed"; tls-unique, PLUS with n/y, plain SCRAM with p=, an
    authzid are refused; 'y' over TLS is the downgrade refusal (28000). No error message, and
    no log line, carries the password or the proof."""
    mech, gs2, src, cover, want = PLUS_CASES[name]
    s = tls_socket(plus_pf.port, tls_context(certs.ca.cert))
    try:
        assert sorted(sasl_start(s, role)) == ["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"]
        own = cert_hash(s.getpeercert(binary_form=True))
        cb = {"own": own, "other": cert_hash(certs.other_server.der()), "none": b"",
              "own+": own + b"\0", None: None}[src]
        got, proof = scram_exchange(s, role, mech, gs2, cb, cover)
    finally:
        s.close()
    if want == "ok":
        assert got == "ok", got
    else:
        assert got != "ok", "%s logged in" % name
        assert got.get("C") == want[0], got
        if want[1]:
            assert got.get("M") == want[1], got
        text = " ".join(got.values())
        assert role[1] not in text and (proof is None or proof not in text)
    log = plus_pf.log_text()
    assert role[1] not in log
    if proof:
        assert proof not in log


def test_scram_plus_refused_on_plaintext(plus_pf, role):
    """Over plaintext only SCRAM-SHA-256 is offered, and a client that picks -PLUS anyway is
    refused as an invalid mechanism (08P01), not bound to nothing."""
    s = raw_socket(plus_pf.port)
    try:
        assert sasl_start(s, role) == ["SCRAM-SHA-256"]
        got, _ = scram_exchange(s, role, "SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,", b"")
    finally:
        s.close()
    assert got != "ok" and got.get("C") == "08P01" and \
        got.get("M") == "client selected an invalid SASL authentication mechanism", got


def self_signed(certs, name, keyalg):
    """A self-signed certificate for localhost whose signature algorithm is keyalg's own
    (ed25519, ed448, or rsa-pss): no hash in its signature algorithm identifier."""
    cert, key = certs.path(name + ".crt"), certs.path(name + ".key")
    args = {"ed25519": ["-newkey", "ed25519"], "ed448": ["-newkey", "ed448"],
            "rsa-pss": ["-newkey", "rsa-pss", "-pkeyopt", "rsa_keygen_bits:2048",
                        "-sigopt", "rsa_padding_mode:pss"]}[keyalg]
    certs._openssl("req", "-x509", "-new", "-nodes", "-keyout", key, "-out", cert, "-days",
                   "30", "-subj", "/CN=localhost", *args)
    certs._own(key, 0o600)
    certs._own(cert, 0o644)
    return tlscerts.Cert(name, cert, key, 0, "localhost")


@pytest.mark.parametrize("keyalg", ["ed25519", "rsa-pss"])
def test_bug_plain_scram_over_tls_fails_with_hashless_certificate(pgfunnel, postgres, certs,
                                                                    role, keyalg):
    """pgfunnel serving an Ed25519 (or RSA-PSS) certificate: its signature algorithm names no
    digest, so tls-server-end-point is undefined (RFC 5929) and pf_tls_server_end_point()
    returns -ENOTSUP. client.c auth_sasl_initial_response() computes it for EVERY SCRAM login
    over TLS, before looking at the mechanism, and closes the client with 08P01 "could not get
    the TLS channel binding data" -- so a client that chose plain SCRAM-SHA-256 ("n,,", no
    binding: psql channel_binding=disable, JDBC, most drivers) cannot log in over TLS at all.
    Postgres computes the hash only for SCRAM-SHA-256-PLUS (be_tls_get_certificate_hash is
    called from read_client_final_message for cbind_flag 'p'). Fix: get the binding data only
    when plus, or do not offer PLUS when the certificate has no usable hash."""
    served = self_signed(certs, "hashless-" + keyalg, keyalg)
    pf = start_tls(pgfunnel, postgres, certs, userlist={role[0]: role[1]},
                   params={"auth_type": "scram-sha-256", "client_tls_key_file": served.key,
                           "client_tls_cert_file": served.cert})
    s = tls_socket(pf.port, tls_context())
    try:
        sasl_start(s, role)
        got, _ = scram_exchange(s, role, "SCRAM-SHA-256", "n,,")
    finally:
        s.close()
    assert got == "ok", "plain SCRAM-SHA-256 over TLS refused: %r" % (got,)


# ================================================================ real Postgres with ssl=on


def pg_login(pf, cluster, timeout=10):
    return pfhelpers.proxy_connect(pf, "alice", "appdb", cluster.passwords["alice"],
                                   autocommit=True)


@pytest.mark.parametrize("mode", ["verify-ca", "verify-full"])
def test_unverifiable_server_fails_every_waiting_client_promptly(pgfunnel, ssl_pg, certs, mode):
    """server_tls_ca_file names an unrelated CA: 12 clients asking at once each get a FATAL
    naming the verification failure within a few seconds (none hangs until query_wait_timeout
    = 60), no server connection is kept, and pgfunnel does not spin retrying (CPU stays low)."""
    import psycopg
    pf = pfhelpers.start_proxy(pgfunnel, ssl_pg, params={
        "server_tls_sslmode": mode, "server_tls_ca_file": certs.other_ca.cert,
        "query_wait_timeout": 60, "server_login_retry": 1},
        databases={"appdb": "host=localhost port=%d dbname=appdb" % ssl_pg.port})
    errors = [None] * 12
    took = [None] * 12

    def one(i):
        t0 = time.monotonic()
        try:
            with pg_login(pf, ssl_pg) as conn:
                conn.execute("SELECT 1")
                errors[i] = "logged in"
        except psycopg.OperationalError as e:
            errors[i] = str(e)
        took[i] = time.monotonic() - t0

    cpu0 = pfhelpers.proc_cpu_seconds(pf.pid)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert all(e and "certificate verify failed" in e for e in errors), errors
    assert max(took) < 10, took
    assert pfhelpers.proc_cpu_seconds(pf.pid) - cpu0 < 5
    pfhelpers.wait_until(lambda: pfhelpers.pool_servers(pfhelpers.pool_row(pf, "appdb")) == 0,
                         DEADLINE, "no server left")


def login_refusal(pf, cluster):
    """The error text of a login through pf that must fail (AssertionError with SHOW SERVERS
    and the log when it works)."""
    import psycopg
    try:
        with pg_login(pf, cluster) as conn:
            row = conn.execute("SELECT pid, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                               ).fetchone()
    except psycopg.OperationalError as e:
        return str(e)
    raise AssertionError("login worked (backend %r); SHOW SERVERS %r\n%s" % (
        row, pfhelpers.show(pf, "SERVERS"), pf.log_text()[-3000:]))


def reload_with(pf, **changes):
    params = dict(pf.params)
    params.update(changes)
    pf.write_ini(params=params)
    pfhelpers.console(pf, "RELOAD")


def busy_tls_session(pgfunnel, ssl_pg, **params):
    base = {"server_tls_sslmode": "require", "pool_mode": "session", "query_wait_timeout": 12,
            "server_login_retry": 1}
    base.update(params)
    pf = pfhelpers.start_proxy(pgfunnel, ssl_pg, params=base,
                               databases={"appdb": "host=localhost port=%d dbname=appdb"
                                          % ssl_pg.port})
    busy = pg_login(pf, ssl_pg)
    busy.execute("BEGIN")
    pid = busy.execute("SELECT pg_backend_pid()").fetchone()[0]
    return pf, busy, pid


def test_reload_server_tls_mode_while_servers_busy(pgfunnel, ssl_pg, certs):
    """A session holds a TLS server inside a transaction while RELOAD switches
    server_tls_sslmode to disable: the busy session keeps its TLS server to its end; then its
    server is not reused (tagged by the RELOAD), a new login gets Postgres's "no encryption"
    refusal; RELOAD to verify-full with a wrong CA: "certificate verify failed"; RELOAD to
    verify-ca with the right CA: logins over TLS again."""
    pf, busy, pid = busy_tls_session(pgfunnel, ssl_pg)
    try:
        reload_with(pf, server_tls_sslmode="disable")
        assert busy.execute("SELECT pid, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                            ).fetchone() == (pid, True)
        busy.execute("COMMIT")
    finally:
        busy.close()
    t0 = time.monotonic()
    assert "no encryption" in login_refusal(pf, ssl_pg)
    reload_with(pf, server_tls_sslmode="verify-full", server_tls_ca_file=certs.other_ca.cert)
    assert "certificate verify failed" in login_refusal(pf, ssl_pg)
    assert time.monotonic() - t0 < 10
    reload_with(pf, server_tls_sslmode="verify-ca", server_tls_ca_file=certs.ca.cert)
    with pg_login(pf, ssl_pg) as conn:
        new_pid, on = conn.execute("SELECT pid, ssl FROM pg_stat_ssl "
                                   "WHERE pid = pg_backend_pid()").fetchone()
    assert on is True and new_pid != pid


def test_bug_tls_refusal_hidden_while_a_doomed_server_lives(pgfunnel, ssl_pg, certs):
    """A session holds a server (in a transaction) when RELOAD makes server TLS fail
    (verify-full against an unrelated CA; the RELOAD also tags the busy server for reconnect,
    pf_pool_tag_reconnect: it will be closed, never handed to anyone). A new client's query
    waits for a server: every attempt fails with "certificate verify failed", but
    pool.c pf_pool_server_failed() fails waiting clients only when the pool has no server at
    all ("While other servers live, waiting clients will get one of them") -- and the doomed
    busy server counts. The client waits the whole query_wait_timeout (12 s here; 120 s by
    default) and then gets "query_wait_timeout", never the reason. Expected: the TLS refusal
    within a few seconds (servers tagged close_needed -- or any busy session server in session
    mode -- should not count as servers that will come)."""
    pf, busy, pid = busy_tls_session(pgfunnel, ssl_pg)
    try:
        reload_with(pf, server_tls_sslmode="verify-full", server_tls_ca_file=certs.other_ca.cert)
        servers = pfhelpers.show(pf, "SERVERS")
        assert [int(r["close_needed"]) for r in servers] == [1], servers
        t0 = time.monotonic()
        text = login_refusal(pf, ssl_pg)
        took = time.monotonic() - t0
        assert "certificate verify failed" in text and took < 8, (
            "after %.1fs the client got: %r" % (took, text))
    finally:
        busy.close()


