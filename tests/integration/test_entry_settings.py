"""Per-user ([users]) and per-database ([databases]) settings are honoured, not just parsed
(issue 10): query_timeout, query_wait_timeout, idle_transaction_timeout, client_idle_timeout
per user over the global value, query_wait_timeout per database, load_balance_hosts=disable.
Keys that are accepted for compatibility but not implemented yet say so in the log.

Each test compares a user (or database) with the setting against one without it, in the same
pgfunnel, so a setting that is ignored, or applied to everybody, fails."""

import socket
import time

import pytest

import pfhelpers
import pgwire


@pytest.fixture
def two_roles(postgres):
    return pfhelpers.new_role(postgres, "pset"), pfhelpers.new_role(postgres, "pset")


def silent_for(conn, secs):
    """True when nothing at all (no message, no EOF) arrives on conn for secs seconds: the
    client is still waiting. Longer than the other client's timeout plus a janitor tick."""
    if conn.buf:
        return False
    conn.sock.settimeout(secs)
    try:
        conn.sock.recv(1, socket.MSG_PEEK)
    except (socket.timeout, TimeoutError):
        return True
    return False


def timed_error(conn, timeout=6):
    t0 = time.monotonic()
    err = pgwire.expect_error(conn, timeout=timeout)
    return err, time.monotonic() - t0


def test_user_query_timeout(proxy, two_roles):
    (slow, spw), (other, opw) = two_roles
    pf = proxy(params={"pool_mode": "transaction"}, users={slow: "query_timeout=1"},
               userlist={slow: spw, other: opw})
    a = pgwire.connect(pf.host, pf.port, slow, "appdb", spw)
    b = pgwire.connect(pf.host, pf.port, other, "appdb", opw)
    a.send_query("SELECT pg_sleep(8)")
    b.send_query("SELECT pg_sleep(2.5), 'other done'")
    err, elapsed = timed_error(a)
    assert err is not None and err.sqlstate == "57014", err
    assert 0.9 <= elapsed <= 4, elapsed
    # The user without the setting is not cut off (global query_timeout is 0).
    b.sock.settimeout(10)
    assert b.read_result() == [("", "other done")]
    a.close()
    b.close()


def test_user_client_idle_timeout(proxy, two_roles):
    (idle, ipw), (other, opw) = two_roles
    pf = proxy(users={idle: "client_idle_timeout=1"}, userlist={idle: ipw, other: opw})
    a = pgwire.connect(pf.host, pf.port, idle, "appdb", ipw)
    b = pgwire.connect(pf.host, pf.port, other, "appdb", opw)
    t0 = time.monotonic()
    assert pgwire.wait_closed(a, 6)
    assert 0.9 <= time.monotonic() - t0 <= 4
    a.sock.close()
    # The other user's idle client outlives it by several janitor ticks.
    t1 = time.monotonic()
    while time.monotonic() - t1 < 2.5:
        assert not pgwire.wait_closed(b, 0.5)
    assert b.simple_query("SELECT 'still here'") == [("still here",)]
    b.close()


def test_user_idle_transaction_timeout(proxy, postgres, two_roles):
    (lazy, lpw), (other, opw) = two_roles
    pf = proxy(params={"pool_mode": "transaction"}, users={lazy: "idle_transaction_timeout=1"},
               userlist={lazy: lpw, other: opw})
    a = pgwire.connect(pf.host, pf.port, lazy, "appdb", lpw)
    b = pgwire.connect(pf.host, pf.port, other, "appdb", opw)
    a.simple_query("BEGIN")
    b.simple_query("BEGIN")
    err, elapsed = timed_error(a)
    assert err is not None and err.sqlstate == "25P03", err
    assert 0.9 <= elapsed <= 4, elapsed
    # The other user's transaction, idle as long and longer, is still open.
    time.sleep(1.5)  # let more janitor ticks pass: the point is that nothing happens
    assert b.simple_query("SELECT 'in tx'") == [("in tx",)]
    b.simple_query("COMMIT")
    a.close()
    b.close()


def waiting_error(pf, user, pw, holder):
    """A second client of user queues behind holder (pool size 1); its error and wait."""
    w = pgwire.connect(pf.host, pf.port, user, "appdb", pw)
    w.send_query("SELECT 'served'")
    return w, timed_error(w)


def test_user_query_wait_timeout(proxy, two_roles):
    (impatient, ipw), (other, opw) = two_roles
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 1,
                       "query_wait_timeout": 0},
               users={impatient: "query_wait_timeout=1"}, userlist={impatient: ipw, other: opw})
    ha = pgwire.connect(pf.host, pf.port, impatient, "appdb", ipw)
    ha.simple_query("BEGIN")
    hb = pgwire.connect(pf.host, pf.port, other, "appdb", opw)
    hb.simple_query("BEGIN")
    wa, (err, elapsed) = waiting_error(pf, impatient, ipw, ha)
    assert err is not None and err.sqlstate == "57014", err
    assert 0.9 <= elapsed <= 4, elapsed
    # The other user's waiter (global query_wait_timeout 0 = off) still waits, then is served.
    wb = pgwire.connect(pf.host, pf.port, other, "appdb", opw)
    wb.send_query("SELECT 'served'")
    assert silent_for(wb, 2.5)
    hb.simple_query("COMMIT")
    wb.sock.settimeout(5)
    assert wb.read_result() == [("served",)]
    for c in (ha, hb, wa, wb):
        c.close()


def test_database_query_wait_timeout(proxy, postgres, two_roles):
    (user, pw), _ = two_roles
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 1,
                       "query_wait_timeout": 0},
               databases={"fastfail": postgres.db_entry("appdb", query_wait_timeout=1),
                          "patient": postgres.db_entry("appdb")},
               userlist={user: pw})
    holders = []
    for db in ("fastfail", "patient"):
        h = pgwire.connect(pf.host, pf.port, user, db, pw)
        h.simple_query("BEGIN")
        holders.append(h)
    wf = pgwire.connect(pf.host, pf.port, user, "fastfail", pw)
    wf.send_query("SELECT 1")
    err, elapsed = timed_error(wf)
    assert err is not None and err.sqlstate == "57014", err
    assert 0.9 <= elapsed <= 4, elapsed
    wp = pgwire.connect(pf.host, pf.port, user, "patient", pw)
    wp.send_query("SELECT 'patient served'")
    assert silent_for(wp, 2.5)
    holders[1].simple_query("COMMIT")
    wp.sock.settimeout(5)
    assert wp.read_result() == [("patient served",)]
    for c in holders + [wf, wp]:
        c.close()


def test_entry_limit_keys_are_no_longer_reported(proxy, postgres, two_roles):
    """max_db_client_connections and transaction_timeout are implemented now (issue 13;
    test_settings_limits.py checks what they do): setting them draws no warning."""
    (user, pw), _ = two_roles
    pf = proxy(databases={"withlimit": postgres.db_entry("appdb", max_db_client_connections=5,
                                                         query_wait_timeout=9)},
               users={user: "transaction_timeout=5 query_timeout=3 "
                            "max_user_client_connections=4"},
               userlist={user: pw})
    c = pgwire.connect(pf.host, pf.port, user, "withlimit", pw)
    assert c.simple_query("SELECT 1") == [("1",)]
    c.close()
    assert "is not implemented by pgfunnel yet" not in pf.log_text(), pf.log_text()


def test_load_balance_hosts_disable_stays_on_first_host(proxy, postgres, two_roles):
    """Postgres listens on 127.0.0.1 only: 127.0.0.2 refuses. disable keeps every server on the
    first host; round-robin would send every second connection to the refusing one."""
    (user, pw), _ = two_roles
    hosts = "127.0.0.1,127.0.0.2"
    pf = proxy(params={"pool_mode": "session", "default_pool_size": 4,
                       "server_login_retry": 0},
               databases={"lb": "host=%s port=%d dbname=appdb load_balance_hosts=disable"
                          % (hosts, postgres.port),
                          "rr": "host=%s port=%d dbname=appdb load_balance_hosts=round-robin"
                          % (hosts, postgres.port)},
               userlist={user: pw})
    conns = [pgwire.connect(pf.host, pf.port, user, "lb", pw) for _ in range(4)]
    for c in conns:
        assert c.simple_query("SELECT inet_server_addr()::text") == [("127.0.0.1/32",)]
    assert "server connection failed" not in pf.log_text()
    for c in conns:
        c.close()
    # Round-robin does try the second host (and fails there): the setting makes the difference.
    rr = [pgwire.connect(pf.host, pf.port, user, "rr", pw) for _ in range(2)]
    for c in rr:
        c.send_query("SELECT 1")
    pf.wait_for_log(r"server connection failed|cannot connect to the server")
    for c in rr:
        c.close()
