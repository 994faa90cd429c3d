"""Red team of issue 13 (peers, DNS cache, limits and timeouts, track_extra_parameters, rolling
restart / shutdown): a hostile client's attacks, each asserting the behaviour (the right error,
a clean close, pgfunnel alive, other clients undisturbed, counters back to their baseline).

Meant for the ASan build (PGFUNNEL_SANITIZED=1): the conftest sanitizer gate fails a test on any
sanitizer report."""

import signal
import socket
import struct
import time

import pytest

import pfhelpers
import pgwire

DB_LIMIT = "client connections exceeded (max_db_client_connections)"
USER_LIMIT = "client connections exceeded (max_user_client_connections)"


@pytest.fixture
def role(postgres):
    return pfhelpers.new_role(postgres, "pa13")


def wait_until(pred, what, timeout=10.0):
    pfhelpers.wait_until(pred, timeout, what)


def db_conns(pf, db):
    for r in pfhelpers.show(pf, "DATABASES"):
        if r["name"] == db:
            return r["current_client_connections"]
    raise AssertionError("no database %s" % db)


def user_conns(pf, user):
    for r in pfhelpers.show(pf, "USERS"):
        if r["name"] == user:
            return r["current_client_connections"]
    return 0


# ---------------------------------------------------------------- SET injection


EVIL = [
    "x'; CREATE TABLE pwn13a(); --",
    "x\\'; CREATE TABLE pwn13b(); --",
    "\\",
    "a\\\\'' ''\\",
    "x$$; CREATE TABLE pwn13c(); --$$",
]


def _no_pwn(postgres):
    with postgres.connect(dbname="appdb", autocommit=True) as conn:
        rows = conn.execute("SELECT relname FROM pg_class WHERE relname LIKE 'pwn13%'").fetchall()
        for (name,) in rows:  # left for no other test
            conn.execute("DROP TABLE IF EXISTS %s" % name)
    assert rows == [], rows


@pytest.mark.parametrize("scs", ["on", "off"])
def test_tracked_values_cannot_inject_into_set(proxy, postgres, role, scs):
    """A tracked value with quotes and backslashes, from a startup parameter and from options
    (escaped blanks), is set on the next server verbatim and runs no second statement, with
    standard_conforming_strings on and off."""
    user, pw = role
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 1},
               userlist={user: pw})
    other = pgwire.connect(pf.host, pf.port, user, "appdb", pw,
                           options={"application_name": "other"})
    for value in EVIL:
        esc = value.replace("\\", "\\\\").replace(" ", "\\ ")
        for opts in ({"application_name": value}, {"options": "-c application_name=" + esc},
                     {"options": "--application_name=" + esc}):
            c = pgwire.connect(pf.host, pf.port, user, "appdb", pw, options=opts)
            if scs == "off":
                c.simple_query("SET standard_conforming_strings = off")
            for _ in range(2):
                # The single server goes to the other client in between: the value is set
                # again each time.
                assert other.simple_query("SELECT current_setting('application_name')") == [
                    ("other",)]
                got = c.simple_query("SELECT current_setting('application_name')")
                assert got == [(value,)], (opts, got)
            c.close()
    _no_pwn(postgres)
    assert other.simple_query("SELECT 1") == [("1",)]
    other.close()


def test_hostile_options_refused_cleanly(proxy, role):
    """Malformed, huge and many options: a FATAL 0A000 and a close, nothing else."""
    user, pw = role
    pf = proxy(params={"max_db_client_connections": 2}, userlist={user: pw})
    bad = ["-c", "-c =x", "-cx", "--=y", "-d x=y", "x", "-c a=b -", "-c a=b\\",
           "-c application_name=" + "A" * 100000, " ".join(["-c application_name=x"] * 3000),
           "-c work_mem=1MB", "-c application_name=\xff\xfe"]
    for opt in bad:
        try:
            c = pgwire.connect(pf.host, pf.port, user, "appdb", pw, options={"options": opt})
        except pgwire.PgError as e:
            assert e.sqlstate in ("0A000", "08P01"), (opt[:40], e)
            continue
        except pgwire.ProtocolError:
            continue
        # Accepted ones must work and carry the value.
        assert c.simple_query("SELECT 1") == [("1",)]
        c.close()
    wait_until(lambda: db_conns(pf, "appdb") == 0, "appdb count back to 0")
    a = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    b = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    err, closed = pgwire.login_refused(pf.host, pf.port, user, "appdb", pw)
    assert err.message == DB_LIMIT and closed
    a.close()
    b.close()


# ---------------------------------------------------------------- limit counters


def _raw(pf):
    return pgwire.open_socket(pf.host, pf.port)


def _attacks(pf, user, pw, postgres):
    """Every way of leaving a login half-done, once."""
    su = {"user": user, "database": "appdb"}
    # Connect and go.
    _raw(pf).close()
    # Half a startup packet.
    s = _raw(pf)
    s.sendall(pgwire.startup_message(su)[:7])
    s.close()
    # SSLRequest then go; SSLRequest then startup then go before the password.
    s = _raw(pf)
    s.sendall(struct.pack("!II", 8, 80877103))
    s.recv(1)
    s.close()
    s = _raw(pf)
    s.sendall(struct.pack("!II", 8, 80877104))  # GSSENCRequest
    s.recv(1)
    s.sendall(pgwire.startup_message(su))
    conn = pgwire.Connection(s)
    assert conn.read_message(timeout=5)[0] == "R"
    s.close()
    # Startup, password asked, reset by the peer.
    s = _raw(pf)
    s.sendall(pgwire.startup_message(su))
    pgwire.Connection(s).read_message(timeout=5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    # Wrong password, unknown database, refused options, protocol 4.0.
    for kw in ({"password": pw + "x"}, {"dbname": "nosuchdb"},
               {"options": {"options": "-c work_mem=1"}}, {"options": {"foo": "bar"}}):
        args = {"password": pw, "dbname": "appdb", "options": None}
        args.update(kw)
        try:
            pgwire.login_refused(pf.host, pf.port, user, args["dbname"], args["password"],
                                 options=args["options"])
        except pgwire.ProtocolError:
            pass
    # Cancel requests (random key, then the key of a live client).
    pgwire.cancel_request(pf.host, pf.port, 1234, 5678)
    c = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    pgwire.cancel_request(pf.host, pf.port, *c.backend_key)
    # A startup packet with the database twice and a password that never comes, then a
    # second startup packet on the same connection.
    s = _raw(pf)
    s.sendall(pgwire.startup_message(su))
    pgwire.Connection(s).read_message(timeout=5)
    s.sendall(pgwire.startup_message(su))
    try:
        while s.recv(4096):
            pass
    except OSError:
        pass
    s.close()
    # A logged-in client that goes without Terminate, one mid-query.
    c.close()
    c = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    c.send_query("SELECT pg_sleep(0.2)")
    c.sock.close()


def test_limit_counters_back_to_baseline_after_every_attack(proxy, postgres, role):
    user, pw = role
    pf = proxy(params={"max_db_client_connections": 3, "max_user_client_connections": 3,
                       "max_client_conn": 6},
               userlist={user: pw})
    for _ in range(3):
        _attacks(pf, user, pw, postgres)
    wait_until(lambda: db_conns(pf, "appdb") == 0 and user_conns(pf, user) == 0,
               "counters back to 0")
    # Exactly the limit is admitted, and the next is refused.
    held = [pgwire.connect(pf.host, pf.port, user, "appdb", pw) for _ in range(3)]
    err, closed = pgwire.login_refused(pf.host, pf.port, user, "appdb", pw)
    assert err.message in (DB_LIMIT, USER_LIMIT) and closed, err
    for h in held:
        assert h.simple_query("SELECT 1") == [("1",)]
        h.close()
    wait_until(lambda: db_conns(pf, "appdb") == 0, "appdb count back to 0")


def test_limit_counters_across_reload_and_kill_client(proxy, postgres, role):
    user, pw = role
    pf = proxy(params={"max_db_client_connections": 4}, userlist={user: pw})
    held = [pgwire.connect(pf.host, pf.port, user, "appdb", pw) for _ in range(4)]
    # RELOAD lowers the limit below what is connected, then raises it again.
    for limit in (1, 0, 2, 4):
        p = dict(pf.params)
        p["max_db_client_connections"] = limit
        pf.write_ini(params=p)
        pfhelpers.console(pf, "RELOAD")
    assert db_conns(pf, "appdb") == 4
    err, _ = pgwire.login_refused(pf.host, pf.port, user, "appdb", pw)
    assert err.message == DB_LIMIT
    # KILL_CLIENT of two of them.
    ids = [r["id"] for r in pfhelpers.show(pf, "CLIENTS") if r["user"] == user][:2]
    assert len(ids) == 2
    for i in ids:
        pfhelpers.console(pf, "KILL_CLIENT %s" % i)
    wait_until(lambda: db_conns(pf, "appdb") == 2, "two slots freed")
    # KILL of the database closes the rest.
    pfhelpers.console(pf, "KILL appdb")
    wait_until(lambda: db_conns(pf, "appdb") == 0, "all slots freed")
    pfhelpers.console(pf, "RESUME appdb")
    for h in held:
        h.sock.close()
    again = [pgwire.connect(pf.host, pf.port, user, "appdb", pw) for _ in range(4)]
    err, _ = pgwire.login_refused(pf.host, pf.port, user, "appdb", pw)
    assert err.message == DB_LIMIT
    for a in again:
        a.close()


# ---------------------------------------------------------------- timeouts


def test_transaction_timeout_extended_flush_no_sync(proxy, postgres, role):
    """A client that leaves Parse/Bind/Execute + Flush without Sync in a transaction is closed
    by transaction_timeout; the server it held never carries that transaction to the next
    client."""
    user, pw = role
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 1,
                       "transaction_timeout": 1},
               userlist={user: pw})
    c = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    c.simple_query("BEGIN")
    c.simple_query("CREATE TEMP TABLE t13(x int)")
    c.send(pgwire.fe_parse("INSERT INTO t13 VALUES (1)") + pgwire.fe_bind() +
           pgwire.fe_execute() + pgwire.fe_flush())
    err = pgwire.expect_error(c, 10)
    assert err is not None and err.message == "transaction timeout", err
    assert pgwire.wait_closed(c, 5)
    d = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    assert d.simple_query("SELECT count(*) FROM pg_class WHERE relname = 't13'") == [("0",)]
    assert d.simple_query("SELECT 1") == [("1",)]
    d.close()


def test_transaction_timeout_while_client_reads_slowly(proxy, postgres, role):
    """transaction_timeout strikes while a large result is half-way to a client that does not
    read: what the client gets is whole messages (never an error inside a DataRow), and the
    next client of the single server gets a clean one."""
    user, pw = role
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 1,
                       "transaction_timeout": 1},
               userlist={user: pw})
    c = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    c.send(pgwire.fe_query("BEGIN; SELECT repeat('x', 1000) FROM generate_series(1, 200000)"))
    pf.wait_for_log(r"transaction timeout", timeout=15)
    data = c.buf
    c.sock.settimeout(10)
    deadline = time.monotonic() + 30
    try:
        while True:
            chunk = c.sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
            assert time.monotonic() < deadline, "still sending after 30 s: %d bytes" % len(data)
    except OSError:
        pass
    # Whatever arrived parses as whole messages of the result; the last may be cut short.
    msgs, _ = pgwire.split_messages(data)
    kinds = {k for k, _ in msgs}
    assert kinds <= {"C", "Z", "T", "D", "E"}, kinds
    for k, p in msgs:
        if k == "D":
            assert p[:2] == b"\x00\x01" and len(p) == 2 + 4 + 1000, p[:16]
    d = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    assert d.simple_query("SELECT 'clean', current_setting('transaction_read_only')") == [
        ("clean", "off")]
    d.simple_query("BEGIN")
    d.simple_query("COMMIT")
    d.close()


def test_query_wait_notify_with_pipelined_client(proxy, postgres, role):
    """A pipelined client that waits for the server between its queries gets the queue NOTICE
    between whole messages, and all its answers in order."""
    user, pw = role
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 1,
                       "query_wait_notify": 1},
               userlist={user: pw})
    holder = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    holder.simple_query("BEGIN")
    c = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    c.send(pgwire.fe_query("SELECT 1") + pgwire.fe_parse("SELECT 2") + pgwire.fe_bind() +
           pgwire.fe_execute() + pgwire.fe_sync() + pgwire.fe_query("SELECT 3"))
    deadline = time.monotonic() + 10
    while not c.notices:
        kind, payload = c.read_message(timeout=max(0.0, deadline - time.monotonic()))
        assert kind == "N", kind
        c.notices.append(pgwire.parse_fields(payload))
    holder.simple_query("COMMIT")
    got = []
    for _ in range(3):
        got.append(c.read_until_ready(10))
    vals = [pgwire.data_values(m) for m in got]
    assert vals == [["1"], ["2"], ["3"]], vals
    assert c.simple_query("SELECT 4") == [("4",)]
    c.close()
    holder.close()


# ---------------------------------------------------------------- disable_pqexec


def test_disable_pqexec_odd_messages(proxy, role):
    user, pw = role
    pf = proxy(params={"disable_pqexec": 1}, userlist={user: pw})
    for payload in (b"\0", b";\0", b"SELECT 1;SELECT 2\0", b"", b"x" * 70000):
        c = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
        c.send(pgwire.message(b"Q", payload))
        err = pgwire.expect_error(c, 5)
        assert err is not None and err.message in ("PQexec disallowed",) or \
            err.sqlstate == "08P01", err
        assert pgwire.wait_closed(c, 3)
    # Half a Query message header, then EOF.
    c = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    c.send(b"Q\0\0")
    c.sock.close()
    # The console: refused too, and the extended protocol keeps working for others.
    c = pgwire.connect(pf.host, pf.port, "postgres", "pgbouncer", "pg-super-secret")
    c.send_query("SHOW VERSION")
    err = pgwire.expect_error(c, 5)
    assert err is not None and err.message == "PQexec disallowed", err
    with pfhelpers.proxy_connect(pf, user, "appdb", pw, autocommit=True) as conn:
        assert conn.execute("SELECT %s::int", (7,)).fetchone() == (7,)


# ---------------------------------------------------------------- shutdown


def test_sigterm_mid_copy_and_pipeline(proxy, postgres, role):
    """SIGTERM (then SIGINT) while clients are mid-COPY, mid-pipeline and mid-login: each is
    closed cleanly, pgfunnel exits with status 0 and no sanitizer report."""
    user, pw = role
    pf = proxy(params={"pool_mode": "session"}, userlist={user: pw})
    copy = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    copy.simple_query("CREATE TEMP TABLE c13(x text)")
    copy.send(pgwire.fe_query("COPY c13 FROM STDIN"))
    assert copy.read_message(timeout=5)[0] == "G"
    copy.send(pgwire.fe_copy_data(b"abc\n") + b"d\0\0")  # half a CopyData
    pipe = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    pipe.send((pgwire.fe_parse("SELECT pg_sleep(0.05)") + pgwire.fe_bind() +
               pgwire.fe_execute()) * 50)
    half = _raw(pf)
    half.sendall(pgwire.startup_message({"user": user, "database": "appdb"}))
    pgwire.Connection(half).read_message(timeout=5)
    pf.signal(signal.SIGTERM)
    pf.signal(signal.SIGINT)
    for c in (copy, pipe):
        assert pgwire.wait_closed(c, 15)
    assert pgwire.wait_closed(pgwire.Connection(half), 15)
    assert pf.wait(timeout=20) == 0



# ---------------------------------------------------------------- peers


from test_peers import BlackHole, Pair, forge  # noqa: E402


def test_peer_queue_bounded_by_max_client_conn_and_reload_away(pgfunnel, postgres):
    """A flood of CancelRequests for a silent peer: at most max_client_conn wait (the rest are
    dropped with a log line); a RELOAD that removes the peer lets the waiting ones go (dropped:
    no peer); a RESET-ing peer ends its forwards; shutdown is clean."""
    hole = BlackHole()
    rst = socket.socket()
    rst.bind(("127.0.0.1", 0))
    rst.listen(64)
    try:
        p = Pair(pgfunnel, postgres,
                 extra_peers=("5 = host=127.0.0.1 port=%d pool_size=1\n"
                              "6 = host=127.0.0.1 port=%d pool_size=1\n"
                              % (hole.port, rst.getsockname()[1])),
                 params={"cancel_wait_timeout": 0, "server_connect_timeout": 60,
                         "max_client_conn": 10})
        for i in range(40):
            p.cancel_via(0, *forge(5, ttl=1 + i % 3))
        pfhelpers.wait_until(lambda: p.show(0, "PEER_POOLS")[0][1:4] == (1, 10, 1) or
                             p.show(0, "PEER_POOLS")[0][1:3] == (10, 1), 10,
                             "ten forwards waiting", lambda: p.show(0, "PEER_POOLS"))
        assert p.count(0, "cancel request for peer 5 dropped: 10 already wait") >= 1
        # Peer 6 accepts and resets at once: each forward ends (the queue is full, so one at
        # a time).
        rst.settimeout(10)

        def peer6():
            return [r for r in p.show(0, "PEER_POOLS") if r[0] == 6]
        for _ in range(3):
            p.cancel_via(0, *forge(6))
            s, _ = rst.accept()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
            pfhelpers.wait_until(lambda: peer6() == [(6, 0, 0, 0, 0)], 10,
                                 "the reset forward to end", peer6)
        # TTL 0 keys are never forwarded.
        n = len(hole.received())
        p.cancel_via(0, *forge(5, ttl=0))
        assert p.count(0, "TTL was exhausted") >= 1
        # RELOAD without peer 5 (and 6): the waiting forwards are dropped.
        p.extra_peers = ""
        p.write(0)
        p.reload(0)
        pfhelpers.wait_until(lambda: all(r[2] == 0 for r in p.show(0, "PEER_POOLS")), 10,
                             "the queue to drain after the RELOAD",
                             lambda: p.show(0, "PEER_POOLS"))
        assert len(hole.received()) == n
        with p.connect(0) as c:
            assert c.simple_query("SELECT 1") == [("1",)]
        p.alive()
        p.pfs[0].stop()
        p.pfs[1].stop()
    finally:
        hole.close()
        rst.close()


# ---------------------------------------------------------------- shutdown / suspend


def test_suspend_then_sigterm_then_reload(proxy, postgres, role):
    """SUSPEND with a client mid-transaction and one mid-message, then SIGTERM, RELOAD during
    the shutdown, and a second SIGTERM: the process exits 0, nothing leaks."""
    user, pw = role
    pf = proxy(params={"pool_mode": "transaction"}, userlist={user: pw})
    tx = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    tx.simple_query("BEGIN")
    half = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    half.send(pgwire.fe_query("SELECT 1")[:6])
    con = pgwire.connect(pf.host, pf.port, "postgres", "pgbouncer", "pg-super-secret")
    con.send_query("SUSPEND")
    con.read_answer(10)
    pf.signal(signal.SIGTERM)
    con.send_query("RELOAD")
    try:
        con.read_answer(10)
    except (pgwire.PgError, pgwire.ProtocolError):
        pass
    pf.signal(signal.SIGTERM)
    assert pf.wait(timeout=20) == 0
    for c in (tx, half, con):
        assert pgwire.wait_closed(c, 5)


def test_accept_room_flood_then_console_and_clients(proxy, postgres, role):
    """max_client_conn=4: a flood of connections that never send a startup packet takes the
    4 + 32 places of the accept room; the ones beyond are closed at once. When the flood goes,
    counts return to 0 and clients log in again; the console is never refused at the startup
    packet."""
    user, pw = role
    pf = proxy(params={"max_client_conn": 4}, userlist={user: pw})
    held = [pgwire.connect(pf.host, pf.port, user, "appdb", pw) for _ in range(4)]
    # The fifth client is refused at its startup packet, the console is not.
    err, closed = pgwire.login_refused(pf.host, pf.port, user, "appdb", pw)
    assert "max_client_conn" in err.message and closed, err
    con = pgwire.connect(pf.host, pf.port, "postgres", "pgbouncer", "pg-super-secret")
    con.send_query("SHOW LISTS")
    con.read_answer(10)
    flood = []
    for _ in range(60):
        try:
            flood.append(_raw(pf))
        except OSError:
            break
    # Those beyond the room (4 + 32, five already in) are closed by pgfunnel.
    wait_until(lambda: pf.log_text().count("closing because: connection limit reached") >= 60 - 31,
               "the flood beyond the room to be closed")
    for s in flood:
        s.close()
    for h in held:
        assert h.simple_query("SELECT 1") == [("1",)]
        h.close()
    con.close()

    def all_gone():
        r = pfhelpers.show(pf, "LISTS")
        lists = {x["list"]: x["items"] for x in r}
        return lists.get("used_clients") == 1  # the console asking
    wait_until(all_gone, "client count back to the console alone")
    again = [pgwire.connect(pf.host, pf.port, user, "appdb", pw) for _ in range(4)]
    for a in again:
        a.close()


def test_server_fast_close_with_pipelined_client(proxy, postgres, role):
    """server_fast_close in session mode: RECONNECT while a client's pipeline runs; the client
    gets every answer of its pipeline, whole and in order, and only then is closed with
    PgBouncer's words; its next connection is on a new backend."""
    user, pw = role
    pf = proxy(params={"pool_mode": "session", "server_fast_close": 1}, userlist={user: pw})
    c = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    (pid0,), = c.simple_query("SELECT pg_backend_pid()")
    n = 30
    pipe = b"".join(pgwire.fe_parse("SELECT %d, pg_sleep(0.02)" % i) + pgwire.fe_bind() +
                    pgwire.fe_execute() for i in range(n)) + pgwire.fe_sync()
    c.send(pipe)
    pfhelpers.console(pf, "RECONNECT appdb")
    msgs = c.read_until_ready(30)
    vals = [v for k, p in msgs if k == "D" for v in pgwire.decode_data_row(p)[:1]]
    assert vals == [str(i) for i in range(n)], vals
    err = pgwire.expect_error(c, 10)
    assert err is not None and err.message == "database configuration changed", err
    assert pgwire.wait_closed(c, 5)
    d = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    (pid1,), = d.simple_query("SELECT pg_backend_pid()")
    assert pid1 != pid0
    d.close()


def test_wait_for_clients_shutdown_with_client_not_reading(proxy, postgres, role):
    """SIGTERM (wait for clients) while a client in transaction mode has a large result it does
    not read: the process waits for it; a second SIGTERM ends it at once, cleanly."""
    user, pw = role
    pf = proxy(params={"pool_mode": "transaction"}, userlist={user: pw})
    c = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    c.send(pgwire.fe_query("SELECT repeat('y', 1000) FROM generate_series(1, 100000)"))
    other = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    pf.signal(signal.SIGTERM)
    # The idle one is closed at once (its transaction is over), the stuck one stays.
    assert pgwire.wait_closed(other, 10)
    assert pf.is_running()
    pf.signal(signal.SIGTERM)
    assert pf.wait(timeout=20) == 0
    assert pgwire.wait_closed(c, 10)


@pytest.mark.parametrize("scs", ["on", "off"])
def test_sjis_value_cannot_break_out_of_set_literal(proxy, postgres, role, scs):
    """Shift-JIS lets 0x5c (backslash) be the second byte of a character: a tracked value
    ending a character with it must not turn the doubled quote or backslash pgfunnel writes
    into the end of the literal (CVE-2006-2314's shape). Either the value is set or the
    client gets an error; no second statement ever runs."""
    user, pw = role
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 1},
               userlist={user: pw})

    def sjis_client(app):
        s = pgwire.open_socket(pf.host, pf.port)
        body = struct.pack("!I", 196608)
        for k, v in ((b"user", user.encode()), (b"database", b"appdb"),
                     (b"client_encoding", b"SJIS"), (b"application_name", app)):
            body += k + b"\0" + v + b"\0"
        body += b"\0"
        s.sendall(struct.pack("!I", len(body) + 4) + body)
        conn = pgwire.Connection(s)
        kind, payload = conn.read_message(timeout=5)
        assert kind == "R"
        (code,) = struct.unpack("!I", payload[:4])
        assert code == 5, code
        import hashlib
        inner = hashlib.md5(pw.encode() + user.encode()).hexdigest()
        outer = hashlib.md5(inner.encode() + payload[4:8]).hexdigest()
        conn.send(pgwire.message(b"p", b"md5" + outer.encode() + b"\0"))
        conn.read_until_ready(5)
        return conn

    other = sjis_client(b"other")
    if scs == "off":
        # Left on the single server for whoever comes next (transaction pooling): escapes in
        # '' strings, and \' accepted even in SJIS.
        other.simple_query("SET standard_conforming_strings = off")
        other.simple_query("SET backslash_quote = on")
    evil = sjis_client(b"\x95\x5c'; CREATE TABLE pwn13d(); --")
    for _ in range(3):
        for c in (other, evil):
            try:
                c.send_query("SELECT 1")
                c.read_until_ready(10)
            except (pgwire.PgError, pgwire.ProtocolError, OSError):
                pass
    _no_pwn(postgres)
    assert pf.is_running()
    with pfhelpers.proxy_connect(pf, user, "appdb", pw, autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


# ---------------------------------------------------------------- auth_query users


def test_auth_query_user_counters_after_vanishing_logins(proxy, postgres):
    """auth_query users (slow lookup): clients vanish while their lookup runs, after it, during
    the password; unknown users; wrong passwords. The per-user and per-database client counts
    come back to 0 and exactly the limit logs in again."""
    auth, apw = pfhelpers.new_role(postgres, "pa13a")
    looked, lpw = pfhelpers.new_role(postgres, "pa13l")
    with postgres.connect(autocommit=True) as conn:
        conn.execute("GRANT pg_read_all_data TO %s" % auth)
    pf = proxy(params={"auth_user": auth, "pool_mode": "transaction",
                       "max_user_client_connections": 2, "max_db_client_connections": 3,
                       "auth_query": "SELECT usename, passwd FROM pg_shadow WHERE usename=$1 "
                                     "AND pg_sleep(0.2) IS NOT NULL"},
               userlist={auth: apw})
    su = {"user": looked, "database": "appdb"}
    for _ in range(3):
        # Gone while the lookup runs.
        socks = []
        for _ in range(5):
            s = _raw(pf)
            s.sendall(pgwire.startup_message(su))
            socks.append(s)
        for s in socks:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        # Gone at the password request.
        s = _raw(pf)
        s.sendall(pgwire.startup_message(su))
        pgwire.Connection(s).read_message(timeout=10)
        s.close()
        # Unknown user, wrong password.
        for u, p in (("nosuch_pa13", "x"), (looked, lpw + "x")):
            try:
                pgwire.login_refused(pf.host, pf.port, u, "appdb", p, timeout=10)
            except pgwire.ProtocolError:
                pass

    def counts():
        users = {r["name"]: r["current_client_connections"] for r in pfhelpers.show(pf, "USERS")}
        return users.get(looked, 0), db_conns(pf, "appdb")
    wait_until(lambda: counts() == (0, 0), "counts back to 0")
    a = pgwire.connect(pf.host, pf.port, looked, "appdb", lpw)
    b = pgwire.connect(pf.host, pf.port, looked, "appdb", lpw)
    err, closed = pgwire.login_refused(pf.host, pf.port, looked, "appdb", lpw, timeout=10)
    assert err.message == USER_LIMIT and closed, err
    assert a.simple_query("SELECT current_user::text") == [(looked,)]
    a.close()
    b.close()
    wait_until(lambda: counts() == (0, 0), "counts back to 0 again")


def test_transaction_timeout_mid_copy_data(proxy, postgres, role):
    """transaction_timeout while the client is half-way through a CopyData: the client is told
    and closed, the server (mid-COPY) is not given to the next client."""
    user, pw = role
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 1,
                       "transaction_timeout": 1},
               userlist={user: pw})
    c = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    c.simple_query("BEGIN")
    c.simple_query("CREATE TEMP TABLE cp13(x text)")
    c.send(pgwire.fe_query("COPY cp13 FROM STDIN"))
    assert c.read_message(timeout=5)[0] == "G"
    c.send(pgwire.fe_copy_data(b"one\n") + b"d\0\0\0\x20two")  # the second one cut short
    err = pgwire.expect_error(c, 10)
    assert err is not None and err.message == "transaction timeout", err
    assert pgwire.wait_closed(c, 5)
    d = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    assert d.simple_query("SELECT count(*) FROM pg_class WHERE relname = 'cp13'") == [("0",)]
    d.close()


def test_reload_during_wait_for_clients_shutdown(proxy, postgres, role):
    """SHUTDOWN WAIT_FOR_CLIENTS with a client in a transaction; RELOADs changing the limits
    and pool settings meanwhile; the client finishes its transaction and is closed; exit 0."""
    user, pw = role
    pf = proxy(params={"pool_mode": "transaction", "max_db_client_connections": 5},
               userlist={user: pw})
    c = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    c.simple_query("BEGIN")
    con = pgwire.connect(pf.host, pf.port, "postgres", "pgbouncer", "pg-super-secret")
    con.send_query("SHUTDOWN WAIT_FOR_CLIENTS")
    con.read_answer(10)
    for limit in (1, 0, 3):
        p = dict(pf.params)
        p["max_db_client_connections"] = limit
        p["default_pool_size"] = limit + 1
        pf.write_ini(params=p)
        con.send_query("RELOAD")
        try:
            con.read_answer(10)
        except pgwire.PgError:
            pass
    assert c.simple_query("SELECT 'still here'") == [("still here",)]
    c.send(pgwire.fe_query("COMMIT"))
    try:
        c.read_until_ready(10)
    except pgwire.ProtocolError:
        pass
    assert pgwire.wait_closed(c, 10)
    con.close()
    assert pf.wait(timeout=20) == 0


# ---------------------------------------------------------------- DNS


from test_hosts_dns import FakeDns  # noqa: E402


def test_dns_flipping_answers_and_serials(pgfunnel, postgres, tmpdir_user):
    """A nameserver that answers each query differently: the address flips between the real
    server and a dead one, the SOA serial jumps up, down, to 0 and to 2^32-1, every other answer
    carries a wrong ID or comes late. Clients keep being served (or get an error), pgfunnel
    stays alive, RELOAD and shutdown in the middle are clean."""
    import os
    dns = FakeDns()
    try:
        state = {"n": 0}
        serials = [1, 2, 0xFFFFFFFF, 0, 7, 3]

        def evil(qid, q, t):
            state["n"] += 1
            n = state["n"]
            if n % 5 == 0:
                qid ^= 0x5555  # wrong ID: the resolver ignores it and retries or times out
            if t == 1:
                ip = "127.0.0.1" if n % 2 else "127.0.0.9"
                ans = struct.pack("!HHHIH", 0xC00C, 1, 1, 0, 4) + socket.inet_aton(ip)
            elif t == 6:
                rdata = (dns._name("ns.pgf.test") + dns._name("a.pgf.test") +
                         struct.pack("!IIIII", serials[n % len(serials)], 60, 60, 600, 1))
                ans = struct.pack("!HHHIH", 0xC00C, 6, 1, 0, len(rdata)) + rdata
            else:
                return struct.pack("!HHHHHH", qid, 0x8583, 1, 0, 0, 0) + q
            return struct.pack("!HHHHHH", qid, 0x8580, 1, 1, 0, 0) + q + ans
        dns.evil = evil
        conf = os.path.join(tmpdir_user, "resolv.conf")
        pfhelpers.write_file(conf, "nameserver 127.0.0.1:%d\n" % dns.port, 0o644)
        p = {"resolv_conf": conf, "dns_zone_check_period": 1, "dns_max_ttl": 0,
             "dns_nxdomain_ttl": 0, "server_login_retry": 0, "verbose": 1,
             "pool_mode": "transaction", "server_lifetime": 1}
        pf = pfhelpers.start_proxy(pgfunnel, postgres, params=p, databases={
            "flip": "host=db.pgf.test port=%d dbname=postgres" % postgres.port})
        ok = 0
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            try:
                with pfhelpers.proxy_connect(pf, "alice", "flip", "alice-scram-secret",
                                             autocommit=True) as c:
                    c.execute("SELECT 1")
                ok += 1
                pfhelpers.console(pf, "RECONNECT flip")
            except Exception:  # noqa: BLE001 - a dead address is an error for the client
                pass
            if ok == 2:
                pfhelpers.console(pf, "RELOAD")
        assert ok >= 1
        assert dns.queries.get(("pgf.test", 6), 0) >= 2  # zone checks went through it too
        assert pf.is_running()
        with pfhelpers.proxy_connect(pf, "alice", "appdb", "alice-scram-secret") as c:
            assert c.execute("SELECT 1").fetchone() == (1,)
        pf.stop(timeout=30)
    finally:
        dns.stop()


def test_transaction_timeout_implicit_transaction_without_sync(proxy, postgres, role):
    """No BEGIN: Parse/Bind/Execute + Flush and never a Sync keeps the server in an implicit
    transaction; transaction_timeout ends it like any other, and the next client of the single
    server is served."""
    user, pw = role
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 1,
                       "transaction_timeout": 1},
               userlist={user: pw})
    c = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    c.send(pgwire.fe_parse("SELECT 1") + pgwire.fe_bind() + pgwire.fe_execute() +
           pgwire.fe_flush())
    err = pgwire.expect_error(c, 10)
    assert err is not None and err.message == "transaction timeout", err
    assert pgwire.wait_closed(c, 5)
    d = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    assert d.simple_query("SELECT 2") == [("2",)]
    d.close()


def test_transaction_timeout_and_a_lone_flush(proxy, postgres, role):
    """A Flush, then a Parse + Sync that leaves the server idle, then time well past
    transaction_timeout: the client's next transaction (running across a janitor tick) is not
    cut short by a clock the Flush started (ReadyForQuery 'I' stopped it)."""
    user, pw = role
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 2,
                       "transaction_timeout": 2},
               userlist={user: pw})
    c = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    c.send(pgwire.fe_flush())
    alone = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    alone.send(pgwire.fe_flush())
    c.send(pgwire.fe_parse("SELECT 1") + pgwire.fe_sync())
    c.read_until_ready(5)
    # The time passing is the point here: more than transaction_timeout.
    time.sleep(3)
    assert c.simple_query("SELECT 'alive', pg_sleep(1.2)::text") == [("alive", "")]
    # The client that sent only a Flush: PgBouncer starts its clock too (its server is not
    # ready); it is either closed for that or runs its query in full, never disturbs others.
    try:
        assert alone.simple_query("SELECT 'alone', pg_sleep(1.2)::text") == [("alone", "")]
    except (pgwire.PgError, pgwire.ProtocolError, OSError):
        pass
    c.close()
    alone.close()
    assert pf.is_running()
