"""Issue 13, limits part: PgBouncer 1.25 settings that pgfunnel used to accept "for
compatibility" now do what they say: max_db_client_connections (global, per database),
max_user_client_connections (global, per user), transaction_timeout (global, per user),
query_wait_notify, server_fast_close, disable_pqexec, conffile.

Messages are PgBouncer 1.25.2's (checked against its source and binary strings):
  client connections exceeded (max_db_client_connections)
  client connections exceeded (max_user_client_connections)
  transaction timeout
  No server connection available in postgres backend, client being queued  (NOTICE, 00000)
  database configuration changed
  PQexec disallowed
Each test compares a limited database / user against an unlimited one in the same pgfunnel,
so a setting that is ignored, or applied to everybody, fails.

The expected behaviour is PgBouncer 1.25.2's, observed by running this file against it:

    PGFUNNEL_BIN=/work/shared/anchors/pgbouncer-1.25.2 /usr/bin/python3 -m pytest -q \
        -p no:cacheprovider -rfEsxX tests/integration/test_settings_limits.py

All pass there but the one marked beyond_pgbouncer(); PgBouncer sends SQLSTATE 08P01 where
pgfunnel sends 53300 (the limits), 25P04 (transaction timeout) and 57P01 (server_fast_close).
Observed there too: admin_users are counted against the console's limit but never refused; the
queue NOTICE comes once per wait after more than query_wait_notify whole seconds; the timeouts
and server_fast_close fire within PgBouncer's 1/3 s janitor tick (pgfunnel: 1 s)."""

import os
import socket
import struct
import time

import psycopg
import pytest

import pfhelpers
import pgwire


# The file also runs against PgBouncer 1.25.2 (PGFUNNEL_BIN=/work/shared/anchors/...): the same
# behaviour and messages; PgBouncer sends 08P01 where pgfunnel sends a precise SQLSTATE.
UNDER_PGBOUNCER = pfhelpers.UNDER_PGBOUNCER
beyond_pgbouncer = pfhelpers.beyond_pgbouncer


def sqlstate(ours):
    return "08P01" if UNDER_PGBOUNCER else ours


DB_LIMIT = "client connections exceeded (max_db_client_connections)"
USER_LIMIT = "client connections exceeded (max_user_client_connections)"
QUEUED = "No server connection available in postgres backend, client being queued"


@pytest.fixture
def roles(postgres):
    return [pfhelpers.new_role(postgres, "plim") for _ in range(2)]


def refused(pf, user, db, pw):
    err, closed = pgwire.login_refused(pf.host, pf.port, user, db, pw)
    return err, closed


def reload(pf, **params):
    p = dict(pf.params)
    for k, v in params.items():
        if v is None:
            p.pop(k, None)
        else:
            p[k] = v
    pf.write_ini(params=p)
    pfhelpers.console(pf, "RELOAD")


def show_config(pf):
    return {r["key"]: r["value"] for r in pfhelpers.show(pf, "CONFIG")}


def wait_error(conn, timeout):
    """The ErrorResponse that arrives on conn within timeout, and how long it took."""
    t0 = time.monotonic()
    err = pgwire.expect_error(conn, timeout=timeout)
    return err, time.monotonic() - t0


# ---------------------------------------------------------------- max_db_client_connections


def test_db_client_limit_global_refuses_next_and_admits_after_one_leaves(proxy, roles):
    (user, pw), _ = roles
    pf = proxy(params={"max_db_client_connections": 2}, userlist={user: pw})
    a = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    b = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    err, closed = refused(pf, user, "appdb", pw)
    assert err.message == DB_LIMIT and err.sqlstate == sqlstate("53300") and closed, err
    assert err.severity == "FATAL"
    pf.wait_for_log(r"closing because: client connections exceeded \(max_db_client_connections\)")
    # Another database has its own count.
    others = [pgwire.connect(pf.host, pf.port, user, "postgres", pw) for _ in range(2)]
    # The connected ones are untouched; one leaves, and the next is admitted.
    assert a.simple_query("SELECT 'a'") == [("a",)]
    b.close()
    deadline = time.monotonic() + 5
    while True:
        try:
            c = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
            break
        except pgwire.PgError as e:
            assert e.message == DB_LIMIT and time.monotonic() < deadline, e
            time.sleep(0.05)
    assert c.simple_query("SELECT 'c'") == [("c",)]
    for x in [a, c] + others:
        x.close()


def test_db_client_limit_per_database_beats_global(proxy, postgres, roles):
    (user, pw), _ = roles
    pf = proxy(params={"max_db_client_connections": 3},
               databases={"tight": postgres.db_entry("appdb", max_db_client_connections=1),
                          "loose": postgres.db_entry("appdb", max_db_client_connections=5)},
               userlist={user: pw})
    t = pgwire.connect(pf.host, pf.port, user, "tight", pw)
    err, _ = refused(pf, user, "tight", pw)
    assert err.message == DB_LIMIT, err
    loose = [pgwire.connect(pf.host, pf.port, user, "loose", pw) for _ in range(5)]
    err, _ = refused(pf, user, "loose", pw)
    assert err.message == DB_LIMIT, err
    glob = [pgwire.connect(pf.host, pf.port, user, "appdb", pw) for _ in range(3)]
    err, _ = refused(pf, user, "appdb", pw)
    assert err.message == DB_LIMIT, err
    for x in [t] + loose + glob:
        x.close()


def test_db_client_limit_counts_clients_before_they_authenticate(proxy, roles):
    """PgBouncer counts a client from its startup packet: one still answering its password
    holds a slot, and the next is refused before its own password exchange."""
    (user, pw), _ = roles
    pf = proxy(params={"max_db_client_connections": 1}, userlist={user: pw})
    s = pgwire.open_socket(pf.host, pf.port)
    s.sendall(pgwire.startup_message({"user": user, "database": "appdb"}))
    conn = pgwire.Connection(s)
    kind, _ = conn.read_message(timeout=5)
    assert kind == "R"  # asked for its password; it does not answer yet
    err, closed = refused(pf, user, "appdb", None)
    assert err.message == DB_LIMIT and closed, err
    s.close()  # leaves mid-authentication: its slot is given back
    pfhelpers.wait_until(lambda: _can_login(pf, user, "appdb", pw), 5, "slot freed")


def _can_login(pf, user, db, pw):
    try:
        pgwire.connect(pf.host, pf.port, user, db, pw).close()
        return True
    except pgwire.PgError as e:
        assert e.message in (DB_LIMIT, USER_LIMIT), e
        return False


def test_db_client_limit_reload_applies_to_new_clients_only(proxy, roles):
    (user, pw), _ = roles
    pf = proxy(userlist={user: pw})
    conns = [pgwire.connect(pf.host, pf.port, user, "appdb", pw) for _ in range(3)]
    reload(pf, max_db_client_connections=2)
    err, _ = refused(pf, user, "appdb", pw)
    assert err.message == DB_LIMIT, err
    # Those over the new limit stay connected.
    for c in conns:
        assert c.simple_query("SELECT 1") == [("1",)]
    reload(pf, max_db_client_connections=4)
    conns.append(pgwire.connect(pf.host, pf.port, user, "appdb", pw))
    err, _ = refused(pf, user, "appdb", pw)
    assert err.message == DB_LIMIT, err
    reload(pf, max_db_client_connections=None)
    conns.append(pgwire.connect(pf.host, pf.port, user, "appdb", pw))
    for c in conns:
        c.close()


def test_db_client_limit_console_admin_users_exempt(proxy, postgres):
    """The global limit applies to the console too, except to admin_users (PgBouncer)."""
    stats, spw = pfhelpers.new_role(postgres, "plims")
    pf = proxy(params={"max_db_client_connections": 1, "stats_users": stats},
               userlist={stats: spw})
    admins = [pgwire.connect(pf.host, pf.port, "postgres", "pgbouncer", "pg-super-secret")
              for _ in range(3)]
    # admin_users are counted (PgBouncer counts them too), just not refused.
    err, _ = refused(pf, stats, "pgbouncer", spw)
    assert err.message == DB_LIMIT, err
    for a in admins:
        a.close()
    pfhelpers.wait_until(lambda: _can_login(pf, stats, "pgbouncer", spw), 5, "console slot")
    s1 = pgwire.connect(pf.host, pf.port, stats, "pgbouncer", spw)
    err, _ = refused(pf, stats, "pgbouncer", spw)
    assert err.message == DB_LIMIT, err
    s1.close()


# ---------------------------------------------------------------- max_user_client_connections


def test_user_client_limit_per_user_over_all_databases(proxy, roles):
    (lim, lpw), (free, fpw) = roles
    pf = proxy(users={lim: "max_user_client_connections=2"}, userlist={lim: lpw, free: fpw})
    a = pgwire.connect(pf.host, pf.port, lim, "appdb", lpw)
    b = pgwire.connect(pf.host, pf.port, lim, "postgres", lpw)
    err, closed = refused(pf, lim, "appdb", lpw)
    assert err.message == USER_LIMIT and err.sqlstate == sqlstate("53300") and closed, err
    err, _ = refused(pf, lim, "postgres", lpw)
    assert err.message == USER_LIMIT, err
    frees = [pgwire.connect(pf.host, pf.port, free, "appdb", fpw) for _ in range(4)]
    a.close()
    pfhelpers.wait_until(lambda: _can_login(pf, lim, "appdb", lpw), 5, "user slot freed")
    for x in [b] + frees:
        x.close()


def test_user_client_limit_global_and_user_override(proxy, roles):
    (big, bpw), (small, spw) = roles
    pf = proxy(params={"max_user_client_connections": 1},
               users={big: "max_user_client_connections=3"}, userlist={big: bpw, small: spw})
    bigs = [pgwire.connect(pf.host, pf.port, big, "appdb", bpw) for _ in range(3)]
    err, _ = refused(pf, big, "appdb", bpw)
    assert err.message == USER_LIMIT, err
    s = pgwire.connect(pf.host, pf.port, small, "appdb", spw)
    err, _ = refused(pf, small, "appdb", spw)
    assert err.message == USER_LIMIT, err
    # RELOAD lifts the global limit: small gets its second connection.
    reload(pf, max_user_client_connections=None)
    s2 = pgwire.connect(pf.host, pf.port, small, "appdb", spw)
    for x in bigs + [s, s2]:
        x.close()


# ---------------------------------------------------------------- transaction_timeout


def test_transaction_timeout_fires_not_earlier(proxy, roles):
    (user, pw), _ = roles
    pf = proxy(params={"transaction_timeout": 2, "pool_mode": "session"}, userlist={user: pw})
    c = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    # Idle outside a transaction: never affected.
    idle = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    t0 = time.monotonic()
    c.simple_query("BEGIN")
    time.sleep(0.9)
    assert c.simple_query("SELECT 'alive at 1s'") == [("alive at 1s",)]
    assert time.monotonic() - t0 < 1.9
    err, _ = wait_error(c, 5)
    elapsed = time.monotonic() - t0
    assert err is not None and err.message == "transaction timeout", err
    assert err.sqlstate == sqlstate("25P04") and err.severity == "FATAL", err
    assert 2.0 <= elapsed <= 4.5, elapsed
    assert pgwire.wait_closed(c, 3)
    pf.wait_for_log(r"closing because: transaction timeout")
    assert idle.simple_query("SELECT 'idle ok'") == [("idle ok",)]
    # A single statement running that long counts too (PgBouncer: from xact_start).
    t0 = time.monotonic()
    idle.send_query("SELECT pg_sleep(10)")
    err, _ = wait_error(idle, 6)
    assert err is not None and err.message == "transaction timeout", err
    assert 2.0 <= time.monotonic() - t0 <= 4.5
    # A new transaction gets its full time again.
    d = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    for _ in range(3):
        d.simple_query("BEGIN")
        time.sleep(0.6)
        d.simple_query("COMMIT")
    assert d.simple_query("SELECT 'd'") == [("d",)]
    d.close()


def test_transaction_timeout_per_user(proxy, roles):
    (slow, spw), (other, opw) = roles
    pf = proxy(params={"pool_mode": "transaction"}, users={slow: "transaction_timeout=1"},
               userlist={slow: spw, other: opw})
    a = pgwire.connect(pf.host, pf.port, slow, "appdb", spw)
    b = pgwire.connect(pf.host, pf.port, other, "appdb", opw)
    a.simple_query("BEGIN")
    b.simple_query("BEGIN")
    err, elapsed = wait_error(a, 5)
    assert err is not None and err.message == "transaction timeout", err
    assert 0.9 <= elapsed <= 3.5
    time.sleep(1.5)  # more janitor ticks: the other user's transaction is left alone
    assert b.simple_query("SELECT 'open'") == [("open",)]
    b.simple_query("COMMIT")
    b.close()


def test_transaction_timeout_reload(proxy, roles):
    (user, pw), _ = roles
    pf = proxy(userlist={user: pw})
    c = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    reload(pf, transaction_timeout=1)
    c.simple_query("BEGIN")
    err, _ = wait_error(c, 5)
    assert err is not None and err.message == "transaction timeout", err


# ---------------------------------------------------------------- query_wait_notify


def _holder_and_waiter(pf, user, pw):
    h = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    h.simple_query("BEGIN")
    w = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    w.send_query("SELECT 'served'")
    return h, w


def test_query_wait_notify_after_whole_seconds_once_per_wait(proxy, roles):
    (user, pw), _ = roles
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 1,
                       "query_wait_notify": 1, "query_wait_timeout": 0}, userlist={user: pw})
    h, w = _holder_and_waiter(pf, user, pw)
    t0 = time.monotonic()
    kind, payload = w.read_message(timeout=5)
    elapsed = time.monotonic() - t0
    assert kind == "N", kind
    f = pgwire.parse_fields(payload)
    assert f["M"] == QUEUED and f["C"] == "00000" and f["S"] == "NOTICE", f
    # PgBouncer compares whole seconds: with 1 the notice comes once 2 s have passed.
    assert 1.9 <= elapsed <= 4.0, elapsed
    assert w.is_silent(1.5)  # only once
    h.simple_query("COMMIT")
    w.sock.settimeout(5)
    assert w.read_result() == [("served",)]
    # Once per wait: the next wait is told again.
    h.simple_query("BEGIN")
    w.send_query("SELECT 'again'")
    kind, payload = w.read_message(timeout=5)
    assert kind == "N" and pgwire.parse_fields(payload)["M"] == QUEUED
    h.simple_query("COMMIT")
    assert w.read_result() == [("again",)]
    h.close()
    w.close()


def test_query_wait_notify_zero_is_silent_and_reload(proxy, roles):
    (user, pw), _ = roles
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 1,
                       "query_wait_notify": 0, "query_wait_timeout": 0}, userlist={user: pw})
    h, w = _holder_and_waiter(pf, user, pw)
    assert w.is_silent(2.5)
    h.simple_query("COMMIT")
    assert w.read_result() == [("served",)]
    w.close()
    reload(pf, query_wait_notify=1)
    h.simple_query("BEGIN")
    w2 = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    w2.send_query("SELECT 'x'")
    kind, payload = w2.read_message(timeout=5)
    assert kind == "N" and pgwire.parse_fields(payload)["M"] == QUEUED
    h.simple_query("COMMIT")
    assert w2.read_result() == [("x",)]
    h.close()
    w2.close()


def test_query_wait_notify_psycopg_sees_notice(proxy, roles):
    (user, pw), _ = roles
    pf = proxy(params={"pool_mode": "session", "default_pool_size": 1,
                       "query_wait_notify": 1, "query_wait_timeout": 0}, userlist={user: pw})
    h = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    h.simple_query("SELECT 1")  # holds the only server for its session
    notices = []
    with pfhelpers.proxy_connect(pf, user, "appdb", pw, autocommit=True) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary))
        import threading
        threading.Timer(3.0, h.close).start()
        assert conn.execute("SELECT 'after wait'").fetchone() == ("after wait",)
    assert notices == [QUEUED], notices


# ---------------------------------------------------------------- server_fast_close


def test_server_fast_close_session_mode(proxy, roles):
    (user, pw), (other, opw) = roles
    pf = proxy(params={"pool_mode": "session", "server_fast_close": 1}, userlist={user: pw})
    c = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    c.simple_query("BEGIN")
    c.simple_query("SELECT 1")
    pfhelpers.console(pf, "RECONNECT appdb")
    # Not in the middle of its transaction.
    time.sleep(1.5)
    assert c.simple_query("SELECT 'in tx'") == [("in tx",)]
    c.simple_query("COMMIT")
    t0 = time.monotonic()
    err, _ = wait_error(c, 4)
    assert err is not None and err.message == "database configuration changed", err
    assert time.monotonic() - t0 <= 3
    assert pgwire.wait_closed(c, 3)
    # A new client gets a fresh server.
    d = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    assert d.simple_query("SELECT 'fresh'") == [("fresh",)]
    d.close()


def test_server_fast_close_off_keeps_session(proxy, roles):
    (user, pw), _ = roles
    pf = proxy(params={"pool_mode": "session"}, userlist={user: pw})
    c = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    c.simple_query("SELECT 1")
    pfhelpers.console(pf, "RECONNECT appdb")
    assert c.is_silent(2.5)
    assert c.simple_query("SELECT 'kept'") == [("kept",)]
    # Turned on by reload: now it goes.
    reload(pf, server_fast_close=1)
    err, _ = wait_error(c, 4)
    assert err is not None and err.message == "database configuration changed", err
    c.sock.close()


# ---------------------------------------------------------------- disable_pqexec


def test_disable_pqexec(proxy, roles):
    (user, pw), _ = roles
    pf = proxy(params={"disable_pqexec": 1}, userlist={user: pw})
    # The extended protocol works.
    with pfhelpers.proxy_connect(pf, user, "appdb", pw, autocommit=True) as conn:
        assert conn.execute("SELECT %s::int + 1", (41,)).fetchone() == (42,)
    c = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    c.send_query("SELECT 1")
    err = pgwire.expect_error(c, 5)
    assert err is not None and err.message == "PQexec disallowed", err
    assert err.sqlstate == "08P01"
    assert pgwire.wait_closed(c, 3)
    pf.wait_for_log(r'client used "Query" packet type')


def test_disable_pqexec_needs_restart(proxy, roles):
    (user, pw), _ = roles
    pf = proxy(userlist={user: pw})
    p = dict(pf.params)
    p["disable_pqexec"] = 1
    pf.write_ini(params=p)
    pfhelpers.console(pf, "RELOAD")
    c = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    assert c.simple_query("SELECT 'still allowed'") == [("still allowed",)]
    c.close()


# ---------------------------------------------------------------- conffile


def test_conffile_shown_and_redirects_reload(proxy, roles):
    (user, pw), _ = roles
    pf = proxy(userlist={user: pw})
    assert show_config(pf)["conffile"] == pf.ini_path
    other = os.path.join(pf.dir, "other.ini")
    p = dict(pf.params)
    p["query_wait_notify"] = 7
    pfhelpers.write_file(other, pfhelpers.format_ini(
        [("databases", pf.databases), ("pgbouncer", p)]))
    pfhelpers.chown_run_user(other)
    reload(pf, conffile=other)
    assert show_config(pf)["conffile"] == other
    # The next reload reads the other file.
    pfhelpers.console(pf, "RELOAD")
    cfg = show_config(pf)
    assert cfg["query_wait_notify"] == "7" and cfg["conffile"] == other, cfg


# ---------------------------------------------------------------- hostile


def test_hostile_limits_counts_survive_odd_orders(proxy, roles):
    """Disconnects at every step of a login never leak a slot of the limits."""
    (user, pw), _ = roles
    pf = proxy(params={"max_db_client_connections": 2, "max_user_client_connections": 2},
               userlist={user: pw})
    startup = pgwire.startup_message({"user": user, "database": "appdb"})
    for step in range(6):
        socks = []
        for _ in range(4):
            s = pgwire.open_socket(pf.host, pf.port)
            if step == 0:
                s.sendall(startup[:7])  # half a startup packet
            elif step == 1:
                s.sendall(startup)  # then leave while asked for the password
            elif step == 2:
                s.sendall(struct.pack("!II", 8, 80877103))  # SSLRequest
            elif step == 3:
                s.sendall(startup + pgwire.message(b"p", b"wrong\0"))
            elif step == 4:
                s.sendall(startup + b"\xff" * 64)  # garbage for a password message
            else:
                s.sendall(startup)
                s.shutdown(socket.SHUT_WR)
            socks.append(s)
        time.sleep(0.2)
        for s in socks:
            s.close()
    # Logged-in clients that leave mid-query, mid-transaction, with a Terminate.
    for how in ("query", "tx", "terminate"):
        c = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
        if how == "query":
            c.send_query("SELECT pg_sleep(5)")
        elif how == "tx":
            c.simple_query("BEGIN")
        else:
            c.send(pgwire.fe_terminate())
        c.sock.close()
    # All slots come back: two clients log in, the third is refused.
    def two_in():
        try:
            a = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
        except pgwire.PgError:
            return False
        try:
            b = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
        except pgwire.PgError:
            a.close()
            return False
        two_in.conns = (a, b)
        return True
    pfhelpers.wait_until(two_in, 10, "both slots free again")
    err, _ = refused(pf, user, "appdb", pw)
    assert err.message in (DB_LIMIT, USER_LIMIT), err
    rows = {r["name"]: r for r in pfhelpers.show(pf, "DATABASES")}
    assert rows["appdb"]["current_client_connections"] == 2
    for c in two_in.conns:
        c.close()
    assert pf.is_running()


def test_hostile_pqexec_pipelined_and_half_sent(proxy, roles):
    (user, pw), _ = roles
    pf = proxy(params={"disable_pqexec": 1, "max_db_client_connections": 3},
               userlist={user: pw})
    # A Query pipelined behind a Parse/Sync: the extended part is answered, then refused.
    c = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    c.send(pgwire.fe_parse("SELECT 1") + pgwire.fe_sync() + pgwire.fe_query("SELECT 2"))
    err = None
    c.sock.settimeout(5)
    while True:
        kind, payload = c.read_message(timeout=5)
        if kind == "E":
            err = pgwire.PgError(pgwire.parse_fields(payload))
            break
    assert err.message == "PQexec disallowed", err
    assert pgwire.wait_closed(c, 3)
    # Half a Query message, then gone: nothing breaks, the slot comes back.
    for _ in range(5):
        d = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
        d.send(pgwire.fe_query("SELECT 3")[:6])
        d.sock.close()
    pfhelpers.wait_until(lambda: _can_login(pf, user, "appdb", pw), 5, "slots back")
    assert pf.is_running()


@beyond_pgbouncer("PgBouncer splices its error into the half-forwarded DataRow")
def test_hostile_transaction_timeout_mid_forwarded_message(proxy, roles):
    """The timeout strikes while a huge DataRow is half-way to a client that does not read:
    nothing of ours may be spliced into it (the client is closed without a word)."""
    (user, pw), _ = roles
    pf = proxy(params={"transaction_timeout": 3, "pool_mode": "session"}, userlist={user: pw})
    c = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    c.send_query("SELECT repeat('x', 30000000)")  # far more than the socket buffers hold
    pf.wait_for_log(r"closing because: transaction timeout", timeout=10)
    data = bytearray(c.buf)
    c.sock.settimeout(10)
    while True:
        chunk = c.sock.recv(1 << 20)
        if not chunk:
            break
        data += chunk
    assert b"transaction timeout" not in bytes(data)
    # The stream is a RowDescription then a truncated DataRow: nothing after it.
    msgs, rest = pgwire.split_messages(bytes(data))
    assert [k for k, _ in msgs] == ["T"] and rest[:1] == b"D", ([k for k, _ in msgs], rest[:8])
    c.sock.close()
    # The pooler and the pool are fine: the next client is served.
    d = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    assert d.simple_query("SELECT 'ok'") == [("ok",)]
    d.close()


def test_user_client_limit_for_auth_query_users(proxy, postgres):
    """A user found by auth_query (not in auth_file) is counted once found and limited like
    one from auth_file (PgBouncer checks after the lookup answer)."""
    auth, apw = pfhelpers.new_role(postgres, "plima")
    looked, lpw = pfhelpers.new_role(postgres, "pliml")
    with postgres.connect(autocommit=True) as conn:
        conn.execute("GRANT pg_read_all_data TO %s" % auth)
    pf = proxy(params={"auth_user": auth, "pool_mode": "transaction"},
               users={looked: "max_user_client_connections=1"}, userlist={auth: apw})
    a = pgwire.connect(pf.host, pf.port, looked, "appdb", lpw)
    assert a.simple_query("SELECT current_user::text") == [(looked,)]
    err, closed = refused(pf, looked, "appdb", lpw)
    assert err.message == USER_LIMIT and closed, err
    a.close()
    pfhelpers.wait_until(lambda: _can_login(pf, looked, "appdb", lpw), 5, "slot freed")
    assert pf.is_running()


def test_conffile_set_on_console(proxy, roles):
    (user, pw), _ = roles
    pf = proxy(userlist={user: pw})
    other = os.path.join(pf.dir, "other2.ini")
    p = dict(pf.params)
    p["query_wait_notify"] = 9
    pfhelpers.write_file(other, pfhelpers.format_ini(
        [("databases", pf.databases), ("pgbouncer", p)]))
    pfhelpers.chown_run_user(other)
    pfhelpers.console(pf, "SET conffile = '%s'" % other)
    assert show_config(pf)["conffile"] == other
    pfhelpers.console(pf, "RELOAD")
    cfg = show_config(pf)
    assert cfg["query_wait_notify"] == "9", cfg
    # A conffile that cannot be read: the reload fails, the running config stays.
    pfhelpers.console(pf, "SET conffile = '%s'" % os.path.join(pf.dir, "missing.ini"))
    with pytest.raises(psycopg.Error):
        pfhelpers.console(pf, "RELOAD")
    assert show_config(pf)["query_wait_notify"] == "9"
    assert pgwire.connect(pf.host, pf.port, user, "appdb", pw).simple_query("SELECT 1") == [("1",)]
