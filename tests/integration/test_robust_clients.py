"""Robustness against hostile and broken clients (issue 5).

Every test runs a well-behaved psycopg client (pfhelpers.Canary, its own role) through the
same pgfunnel before, during and after the hostile client, asserts the exact SQLSTATE the
hostile client gets where the protocol allows one, and ends with finish(): pgfunnel still
running, no sanitizer report (the suite is meant for an ASan+UBSan build), and an immediate
shutdown (SIGQUIT) that exits 0 (LeakSanitizer turns a leak into a non-zero status)."""

import random
import signal
import select
import socket
import struct
import time

import pytest

import pfhelpers
import pgwire

SSL_REQUEST = struct.pack("!II", 8, 80877103)
STARTUP_MAX = 10000  # Postgres' MAX_STARTUP_PACKET_LENGTH


@pytest.fixture
def canary_role(postgres):
    return pfhelpers.new_role(postgres, "rcan")


@pytest.fixture
def role(postgres):
    return pfhelpers.new_role(postgres, "rbad")


def start(proxy, canary_role, role=None, params=None):
    userlist = {canary_role[0]: canary_role[1]}
    if role:
        userlist[role[0]] = role[1]
    return proxy(params=params, userlist=userlist)


def canary(pf, canary_role):
    return pfhelpers.Canary(pf, canary_role[0], "appdb", canary_role[1]).start()


def finish(pf):
    """pgfunnel survived, reported nothing to the sanitizers, and shuts down cleanly."""
    assert pf.is_running(), "pgfunnel died\n" + pf.all_output()[-5000:]
    assert not pfhelpers.sanitizer_reports(pf), pf.all_output()[-20000:]
    rc = pf.stop(signal.SIGQUIT, timeout=15, expect=None)
    reports = pfhelpers.sanitizer_reports(pf)
    assert rc == 0 and not reports, "exit %r after SIGQUIT, sanitizer: %s\n%s" % (
        rc, reports, pf.stderr_text()[-20000:])


def raw(pf, timeout=5.0):
    s = socket.create_connection((pf.host, pf.port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_until_closed(s, timeout=5.0):
    """Everything the peer sends until it closes (AssertionError if it stays open)."""
    s.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            raise AssertionError("connection still open after %.0fs; got %r" % (timeout, data))
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
        if time.monotonic() > deadline:
            raise AssertionError("connection still open; got %r" % data[:200])


def fatal_of(data):
    """The single FATAL ErrorResponse in data (after any other messages) as PgError."""
    msgs = pgwire.whole_messages(data)
    errors = [pgwire.PgError(pgwire.parse_fields(p)) for k, p in msgs if k == "E"]
    assert len(errors) == 1, "expected one ErrorResponse, got %r" % msgs
    assert msgs[-1][0] == "E", "the error must be the last message: %r" % msgs
    assert errors[0].severity == "FATAL", errors[0].fields
    return errors[0]


def assert_fatal(data, sqlstate, message=None):
    err = fatal_of(data)
    assert err.sqlstate == sqlstate, err.fields
    if message is not None:
        assert err.message == message, err.fields
    return err


def expected_for_startup(data):
    """(sqlstate, message) pgfunnel (like Postgres) must answer a startup packet with, or None
    when it is not decidable without more bytes."""
    if len(data) < 8:
        return None
    plen, code = struct.unpack("!II", data[:8])
    if plen < 8 or plen > STARTUP_MAX:
        return ("08P01", "invalid length of startup packet")
    if code in (80877103, 80877104, 80877102):
        return None
    if code >> 16 != 3:
        return ("0A000", "unsupported frontend protocol or request code")
    return None


# ---------------------------------------------------------------- startup packets


def test_random_bytes_as_startup(proxy, canary_role):
    pf = start(proxy, canary_role)
    can = canary(pf, canary_role)
    rng = random.Random(5)
    cases = 0
    while cases < 200:
        # Half of them with a plausible length so that the request code is what is wrong.
        data = bytes(rng.randrange(256) for _ in range(rng.choice([8, 16, 64, 300])))
        if cases % 2:
            data = struct.pack("!I", len(data)) + data[4:]
        want = expected_for_startup(data)
        if want is None:
            continue
        cases += 1
        s = raw(pf)
        try:
            s.sendall(data)
            reply = read_until_closed(s)
        finally:
            s.close()
        err = fatal_of(reply)
        assert (err.sqlstate, err.message) == want, (data, err.fields)
    can.expect_progress()
    can.check()
    finish(pf)


@pytest.mark.parametrize("data, sqlstate, message", [
    (struct.pack("!I", 0), "08P01", "invalid length of startup packet"),
    (struct.pack("!I", 4), "08P01", "invalid length of startup packet"),
    (struct.pack("!I", 7) + b"\xff\xfe\xfd", "08P01", "invalid length of startup packet"),
    (struct.pack("!I", 8) + b"\xde\xad\xbe\xef", "0A000",
     "unsupported frontend protocol or request code"),
    (struct.pack("!I", 10001) + struct.pack("!I", 196608) + b"user\0x\0\0", "08P01",
     "invalid length of startup packet"),
    (struct.pack("!I", 2 ** 31 - 1) + b"garbage!", "08P01", "invalid length of startup packet"),
    (struct.pack("!I", 0xffffffff) + b"garbage!", "08P01", "invalid length of startup packet"),
    # Version 3.0 but no parameters and no terminator.
    (struct.pack("!II", 8, 196608), "08P01", "invalid startup packet layout"),
    # Parameters not NUL-terminated.
    (struct.pack("!II", 20, 196608) + b"user\0abcdefg", "08P01",
     "invalid startup packet layout"),
    # Protocol 2.0.
    (struct.pack("!II", 17, 0x20000) + b"user\0bob\0\0", "0A000",
     "unsupported frontend protocol or request code"),
    # A well-formed packet without a user.
    (pgwire.startup_message({"database": "appdb"}), "28000",
     "no PostgreSQL user name specified in startup packet"),
], ids=["len0", "len4", "len7", "len8-garbage", "len10001", "len2^31-1", "len2^32-1",
        "len8-v3-empty", "unterminated", "v2", "no-user"])
def test_bad_startup_packet(proxy, canary_role, data, sqlstate, message):
    pf = start(proxy, canary_role)
    can = canary(pf, canary_role)
    s = raw(pf)
    try:
        s.sendall(data)
        assert_fatal(read_until_closed(s), sqlstate, message)
    finally:
        s.close()
    can.check(min_queries=1)
    finish(pf)


def test_ssl_request_then_garbage(proxy, canary_role):
    pf = start(proxy, canary_role)
    can = canary(pf, canary_role)
    for garbage in (
        # A TLS ClientHello, as a client that ignores the 'N' would send.
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)),
        b"\x00\x00\x00\x08\x00\x00\x00\x00",
        b"\xff" * 32,
    ):
        s = raw(pf)
        try:
            s.sendall(SSL_REQUEST)
            s.settimeout(5)
            assert s.recv(1) == b"N"
            s.sendall(garbage)
            want = expected_for_startup(garbage)
            assert want is not None
            assert_fatal(read_until_closed(s), *want)
        finally:
            s.close()
    # Two SSLRequests in a row: the second is refused like Postgres does (no 'N' again,
    # or an error), but pgfunnel must not loop or crash.
    s = raw(pf)
    try:
        s.sendall(SSL_REQUEST)
        assert s.recv(1) == b"N"
        s.sendall(SSL_REQUEST + b"x" * 16)
        reply = read_until_closed(s)
        assert reply[:1] in (b"N", b"E"), reply
    finally:
        s.close()
    can.check(min_queries=1)
    finish(pf)


# ---------------------------------------------------------------- after login


def login(pf, role):
    conn = pgwire.connect(pf.host, pf.port, role[0], "appdb", role[1])
    assert conn.simple_query("SELECT 1") == [("1",)]
    return conn


@pytest.mark.parametrize("announce", [10001, 2 ** 20, 2 ** 31 - 1])
def test_message_longer_than_max_packet_size(proxy, canary_role, role, announce):
    pf = start(proxy, canary_role, role, {"max_packet_size": 10000})
    can = canary(pf, canary_role)
    conn = login(pf, role)
    try:
        # Only the header and a little of the body: pgfunnel must refuse on the header.
        conn.send(b"Q" + struct.pack("!I", announce) + b"SELECT ")
        assert_fatal(read_until_closed(conn.sock), "08P01", "message too long (max_packet_size)")
    finally:
        conn.sock.close()
    # A message just below the limit still works.
    conn = login(pf, role)
    sql = "SELECT '%s'" % ("y" * 9000)
    assert conn.simple_query(sql) == [("y" * 9000,)]
    conn.close()
    can.check()
    finish(pf)


@pytest.mark.parametrize("kind", ["Z", "T", "R", "K", "\x00"])
def test_backend_only_message_type(proxy, canary_role, role, kind):
    pf = start(proxy, canary_role, role)
    can = canary(pf, canary_role)
    conn = login(pf, role)
    try:
        conn.send(pgwire.message(kind.encode(), b"I" if kind == "Z" else b"\0\0"))
        assert_fatal(read_until_closed(conn.sock), "08P01",
                     "invalid frontend message type %d" % ord(kind))
    finally:
        conn.sock.close()
    can.check(min_queries=1)
    finish(pf)


@pytest.mark.parametrize("length", [0, 3])
def test_message_length_below_4(proxy, canary_role, role, length):
    pf = start(proxy, canary_role, role)
    can = canary(pf, canary_role)
    conn = login(pf, role)
    try:
        conn.send(b"Q" + struct.pack("!I", length) + b"SELECT 1\0")
        assert_fatal(read_until_closed(conn.sock), "08P01")
    finally:
        conn.sock.close()
    can.check(min_queries=1)
    finish(pf)


def test_half_startup_then_stall_hits_client_login_timeout(proxy, canary_role):
    pf = start(proxy, canary_role, params={"client_login_timeout": 1})
    can = canary(pf, canary_role)
    full = pgwire.startup_message({"user": canary_role[0], "database": "appdb"})
    stalled = []
    try:
        t0 = time.monotonic()
        for cut in (2, 6, len(full) - 3):
            s = raw(pf)
            s.sendall(full[:cut])
            stalled.append(s)
        can.expect_progress()
        for s in stalled:
            reply = read_until_closed(s, timeout=5)
            assert_fatal(reply, "08006", "client_login_timeout")
        elapsed = time.monotonic() - t0
        assert 0.9 <= elapsed < 4.0, elapsed
    finally:
        for s in stalled:
            s.close()
    # The canary itself is logged in: client_login_timeout does not apply to it.
    can.check()
    finish(pf)


def wait_socket(pf, conn, pred, what):
    """Wait until pred holds for the SHOW SOCKETS row of conn's client (found by port)."""
    port = conn.sock.getsockname()[1]

    def mine():
        return [r for r in pfhelpers.show(pf, "SOCKETS") if r["type"] == "C" and r["port"] == port]

    pfhelpers.wait_until(lambda: [r for r in mine() if pred(r)], 5, what, mine)


def test_half_message_after_login_waits_without_blocking_others(proxy, canary_role, role):
    pf = start(proxy, canary_role, role, {"pool_mode": "transaction", "default_pool_size": 2})
    can = canary(pf, canary_role)
    conn = login(pf, role)
    try:
        msg = pgwire.message(b"Q", b"SELECT 'finally'\0")
        conn.send(msg[:3])  # not even a whole header
        wait_socket(pf, conn, lambda r: r["recv_pos"] == 3, "pgfunnel holding the 3 bytes")
        can.expect_progress()
        conn.send(msg[3:9])  # header and part of the body
        # pgfunnel forwards the message as it comes: 9 bytes of it went to the server
        wait_socket(pf, conn, lambda r: r["pkt_remain"] == len(msg) - 9,
                    "pgfunnel forwarding the message, %d bytes to come" % (len(msg) - 9))
        can.expect_progress()
        # Others of the same pool are not blocked either.
        other = login(pf, role)
        assert other.simple_query("SELECT 2") == [("2",)]
        other.close()
        conn.send(msg[9:])
        conn.sock.settimeout(5)
        assert conn.read_result() == [("finally",)]
        assert conn.simple_query("SELECT 3") == [("3",)]
    finally:
        conn.close()
    can.check()
    finish(pf)


def test_client_that_never_reads_its_results(proxy, postgres, canary_role, role):
    pf = start(proxy, canary_role, role, {"pool_mode": "transaction", "query_timeout": 2,
                                          "default_pool_size": 2})
    can = canary(pf, canary_role)
    conn = login(pf, role)
    rss0 = pfhelpers.proc_rss_kib(pf.pid)
    try:
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # About 20 MB of rows; not a byte is read.
        conn.send_query("SELECT repeat('x', 1000) FROM generate_series(1, 20000)")
        assert pfhelpers.wait_for(lambda: pfhelpers.backend_count(
            postgres, "usename = %s AND state = 'active'", (role[0],)) == 1, 3)
        t0 = time.monotonic()
        # pgfunnel stopped reading the server: the backend blocks writing; others go on
        pfhelpers.wait_backends(postgres, "usename = %s AND wait_event = 'ClientWrite'",
                                (role[0],), "the backend blocked writing to pgfunnel")
        for _ in range(3):
            can.expect_progress()
        # query_timeout ends the client and frees (closes) its server.
        gone = pfhelpers.wait_for(lambda: pfhelpers.backend_count(
            postgres, "usename = %s", (role[0],)) == 0, 6)
        assert gone, "the server of the stuck client is still there after query_timeout:\n%s" % (
            pfhelpers.console(pf, "SHOW SERVERS"),)
        assert time.monotonic() - t0 < 5
        cols, rows = pfhelpers.console(pf, "SHOW SERVERS")
        assert [r for r in pfhelpers.rows_as_dicts(cols, rows) if r["user"] == role[0]] == []
        # pgfunnel stopped reading from the server instead of buffering 20 MB.
        grew = pfhelpers.proc_rss_kib(pf.pid) - rss0
        assert grew < 8 * 1024, "RSS grew by %d KiB while the client did not read" % grew
    finally:
        conn.sock.close()
    # Its role can be served again.
    again = login(pf, role)
    again.close()
    can.check()
    finish(pf)


def test_2000_connections_opened_at_once_and_dropped(proxy, canary_role):
    pf = start(proxy, canary_role, params={"max_client_conn": 3000, "listen_backlog": 4096})
    can = canary(pf, canary_role)
    fds0 = pfhelpers.proc_fd_count(pf.pid)
    startup = pgwire.startup_message({"user": canary_role[0], "database": "appdb"})
    socks = []
    try:
        for i in range(2000):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex((pf.host, pf.port))
            socks.append(s)
        # every connect has completed (writable); poll(), as select() stops at fd 1024
        poller = select.poll()
        pending = {s.fileno() for s in socks}
        for fd in pending:
            poller.register(fd, select.POLLOUT)
        deadline = time.monotonic() + 10
        while pending and time.monotonic() < deadline:
            for fd, _ in poller.poll(100):
                pending.discard(fd)
                poller.unregister(fd)
        assert not pending, "%d of 2000 connects still pending" % len(pending)
        for i, s in enumerate(socks):
            try:
                if i % 3 == 1:
                    s.send(startup[:5])  # half a startup packet
                elif i % 3 == 2:
                    s.send(startup)  # a whole one: gets an auth request, never answers
            except OSError:
                pass
        assert pfhelpers.wait_for(lambda: pfhelpers.proc_fd_count(pf.pid) > fds0 + 1500, 5), (
            "pgfunnel holds only %d fds (baseline %d)" % (pfhelpers.proc_fd_count(pf.pid), fds0))
        can.expect_progress()
    finally:
        for s in socks:
            s.close()
    back = pfhelpers.wait_for(lambda: pfhelpers.proc_fd_count(pf.pid) <= fds0, 5)
    assert back, "fd count %d did not return to the baseline %d" % (
        pfhelpers.proc_fd_count(pf.pid), fds0)
    cols, rows = pfhelpers.console(pf, "SHOW CLIENTS")
    left = [r for r in pfhelpers.rows_as_dicts(cols, rows) if r["user"] != "postgres"]
    assert len(left) == 1, left  # only the canary
    can.check()
    finish(pf)


def test_failed_logins_in_a_loop(proxy, canary_role, role):
    pf = start(proxy, canary_role, role)
    can = canary(pf, canary_role)

    def fail_login():
        t0 = time.monotonic()
        err, closed = pgwire.login_refused(pf.host, pf.port, role[0], "appdb", "wrong-password")
        assert (err.severity, err.sqlstate) == ("FATAL", "28P01"), err.fields
        assert closed
        return time.monotonic() - t0

    for _ in range(50):  # warm-up
        fail_login()
    rss0 = pfhelpers.proc_rss_kib(pf.pid)
    worst = max(fail_login() for _ in range(400))
    rss1 = pfhelpers.proc_rss_kib(pf.pid)
    assert worst < 1.0, "a failed login took %.2fs" % worst
    assert rss1 - rss0 < 4096, "RSS grew from %d to %d KiB over 400 failed logins" % (rss0, rss1)
    # The right password still works at once.
    login(pf, role).close()
    can.check()
    finish(pf)


def test_random_cancel_requests_cancel_nothing(proxy, canary_role, role):
    pf = start(proxy, canary_role, role, {"pool_mode": "transaction"})
    can = canary(pf, canary_role)
    busy = login(pf, role)
    try:
        busy.send_query("SELECT pg_sleep(1.5), 'not cancelled'")
        rng = random.Random(7)
        t0 = time.monotonic()
        for i in range(200):
            pid, key = rng.getrandbits(32), rng.getrandbits(32)
            if i == 0 and busy.backend_key:
                pid = busy.backend_key[0]  # the right pid with a wrong key
                key = (busy.backend_key[1] + 1) & 0xffffffff
            s = raw(pf)
            try:
                s.sendall(struct.pack("!IIII", 16, 80877102, pid, key))
                assert read_until_closed(s) == b"", "a CancelRequest got an answer"
            finally:
                s.close()
        assert time.monotonic() - t0 < 3.0
        busy.sock.settimeout(5)
        assert busy.read_result() == [("", "not cancelled")]
    finally:
        busy.close()
    can.check()
    finish(pf)


def test_client_vanishes_mid_query(proxy, postgres, canary_role, role):
    pf = start(proxy, canary_role, role, {"pool_mode": "transaction", "default_pool_size": 2})
    can = canary(pf, canary_role)
    for i in range(3):
        conn = login(pf, role)
        sql = "SELECT pg_sleep(4), %d" % i
        conn.send_query(sql)
        assert pfhelpers.wait_for(lambda: pfhelpers.backend_count(
            postgres, "usename = %s AND state = 'active' AND query = %s", (role[0], sql)) == 1, 3)
        conn.sock.close()  # no Terminate: just gone
        # The server was in the middle of a query: pgfunnel must drop it (like PgBouncer it
        # does not wait for the query) rather than keep it or hand it to someone else.
        # Postgres itself only notices the closed socket when the query ends.

        def role_servers():
            cols, rows = pfhelpers.console(pf, "SHOW SERVERS")
            return [r for r in pfhelpers.rows_as_dicts(cols, rows) if r["user"] == role[0]]

        assert pfhelpers.wait_for(lambda: role_servers() == [], 3), role_servers()
        can.expect_progress()
    again = login(pf, role)
    assert again.simple_query("SELECT 'fresh'") == [("fresh",)]
    again.close()
    can.check()
    finish(pf)
