"""Connection limits, pool sizes and timeouts (issue 3). Every test uses its own Postgres role
so that backends are counted in pg_stat_activity without interference. Timeouts are checked
by a 1-second janitor: waits allow ~2 s of slack."""

import socket
import time

import pytest

import pfhelpers
import pgwire


@pytest.fixture
def role(postgres):
    return pfhelpers.new_role(postgres, "plim")


def waiting(pf, db, user):
    r = pfhelpers.pool_row(pf, db, user)
    return r["cl_waiting"] if r else 0


def wait_queued(pf, db, user, seconds, servers):
    """Wait until pgfunnel has kept a client of db/user waiting for `seconds` (SHOW POOLS
    maxwait, pgfunnel's own measure: its 1-second janitor has run meanwhile), then assert the
    pool still has exactly `servers` servers and is not opening another one."""
    row = pfhelpers.wait_pool(pf, db, lambda r: pfhelpers.pool_wait_seconds(r) >= seconds,
                              "a client of %s/%s waiting %.1fs" % (db, user, seconds),
                              user=user, timeout=seconds + 5)
    assert row["cl_waiting"] == 1, row
    assert row["sv_login"] == 0 and pfhelpers.pool_servers(row) == servers, row


def backends(postgres, *roles):
    return pfhelpers.backend_count(postgres, "usename = ANY(%s)", (list(roles),))


def hold(pf, user, pw, db="appdb"):
    """A client inside a transaction (holding a server in transaction mode)."""
    conn = pgwire.connect(pf.host, pf.port, user, db, pw)
    conn.simple_query("BEGIN")
    conn.simple_query("SELECT 1")
    return conn


def start_waiting(pf, user, pw, db="appdb", sql="SELECT 'served'"):
    conn = pgwire.connect(pf.host, pf.port, user, db, pw)
    conn.send_query(sql)
    return conn


def test_max_client_conn(proxy, postgres, role):
    name, pw = role
    pf = proxy(params={"max_client_conn": 3}, userlist={name: pw})
    conns = [pgwire.connect(pf.host, pf.port, name, "appdb", pw) for _ in range(3)]
    try:
        err, closed = pgwire.login_refused(pf.host, pf.port, name, "appdb", pw)
        assert (err.severity, err.sqlstate, err.message) == (
            "FATAL", "53300", "no more connections allowed (max_client_conn)")
        assert closed
        conns.pop().close()

        def can_login():
            try:
                c = pgwire.connect(pf.host, pf.port, name, "appdb", pw)
            except pgwire.PgError:
                return False
            conns.append(c)
            return True

        assert pfhelpers.wait_for(can_login, 3, 0.1)
        assert conns[-1].simple_query("SELECT 1") == [("1",)]
        # Full: the console still gets in, under either name (PgBouncer checks the limit at
        # the startup packet and never refuses the "pgbouncer" database).
        for db in ("pgbouncer", "pgfunnel"):
            cols, rows = pfhelpers.console(pf, "SHOW LISTS", dbname=db)
            lists = dict(rows)
            assert int(lists["used_clients"]) >= 4, lists
    finally:
        for c in conns:
            c.close()


def test_max_client_conn_flood_refused_at_accept(proxy, postgres, role):
    """Connections that never send a startup packet may exceed max_client_conn only by a bounded
    room (left for console sessions, which still get in); past it they are refused at once."""
    name, pw = role
    pf = proxy(params={"max_client_conn": 2, "client_login_timeout": 60}, userlist={name: pw})
    flood = []
    try:
        # Within the room: idle sockets do not keep the console out, clients are refused.
        def half_startup():
            # One byte of a startup packet: past TCP_DEFER_ACCEPT, stuck before the limit check.
            sock = pgwire.open_socket(pf.host, pf.port)
            sock.sendall(b"\x00")
            return sock

        flood = [half_startup() for _ in range(20)]
        assert pfhelpers.wait_for(
            lambda: int(dict(pfhelpers.console(pf, "SHOW LISTS")[1])["used_clients"]) >= 20, 5)
        err, closed = pgwire.login_refused(pf.host, pf.port, name, "appdb", pw)
        assert (err.sqlstate, err.message) == (
            "53300", "no more connections allowed (max_client_conn)") and closed, err.fields
        refused_at = None
        for i in range(20, 80):
            s = half_startup()
            flood.append(s)
            if pgwire.readable(s, 1.0):
                try:
                    data = s.recv(4096)
                except ConnectionResetError:
                    data = b""
                assert b"C53300\x00Mno more connections allowed (max_client_conn)" in data, data
                refused_at = i
                break
        # 2 allowed + 32 of room: the 35th connection (index 34) is the first refused.
        assert refused_at == 34, refused_at
    finally:
        for s in flood:
            s.close()


def test_default_pool_size(proxy, postgres, role):
    name, pw = role
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 2}, userlist={name: pw})
    a, b = hold(pf, name, pw), hold(pf, name, pw)
    c = start_waiting(pf, name, pw)
    assert pfhelpers.wait_for(lambda: waiting(pf, "appdb", name) == 1, 3)
    assert backends(postgres, name) == 2
    a.simple_query("COMMIT")
    c.sock.settimeout(5)
    assert c.read_result() == [("served",)]
    assert backends(postgres, name) == 2
    for x in (a, b, c):
        x.close()


def test_max_db_connections(proxy, postgres):
    r1, pw1 = pfhelpers.new_role(postgres, "pdb1")
    r2, pw2 = pfhelpers.new_role(postgres, "pdb2")
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 5},
               databases={"limdb": postgres.db_entry("appdb", max_db_connections=2)},
               userlist={r1: pw1, r2: pw2})
    a = hold(pf, r1, pw1, "limdb")
    b = hold(pf, r2, pw2, "limdb")
    c = start_waiting(pf, r1, pw1, "limdb")
    assert pfhelpers.wait_for(lambda: waiting(pf, "limdb", r1) == 1, 3)
    wait_queued(pf, "limdb", r1, 1.2, servers=1)
    assert backends(postgres, r1, r2) == 2
    a.simple_query("COMMIT")
    c.sock.settimeout(5)
    assert c.read_result() == [("served",)]
    assert backends(postgres, r1, r2) == 2
    for x in (a, b, c):
        x.close()


def test_max_user_connections(proxy, postgres, role):
    name, pw = role
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 5,
                       "max_user_connections": 2}, userlist={name: pw})
    a = hold(pf, name, pw, "appdb")
    b = hold(pf, name, pw, "postgres")
    c = start_waiting(pf, name, pw, "appdb")
    assert pfhelpers.wait_for(lambda: waiting(pf, "appdb", name) == 1, 3)
    wait_queued(pf, "appdb", name, 1.2, servers=1)
    assert backends(postgres, name) == 2
    a.simple_query("COMMIT")
    c.sock.settimeout(5)
    assert c.read_result() == [("served",)]
    for x in (a, b, c):
        x.close()


def test_per_user_max_user_connections(proxy, postgres, role):
    name, pw = role
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 5},
               users={name: "max_user_connections=1"}, userlist={name: pw})
    a = hold(pf, name, pw, "appdb")
    c = start_waiting(pf, name, pw, "appdb")  # pool_size 5 would allow it
    assert pfhelpers.wait_for(lambda: waiting(pf, "appdb", name) == 1, 3)
    wait_queued(pf, "appdb", name, 1.2, servers=1)
    assert backends(postgres, name) == 1
    a.close()  # closed inside a transaction: its server is closed too
    c.sock.settimeout(5)
    assert c.read_result() == [("served",)]
    c.close()


def test_reserve_pool(proxy, postgres, role):
    name, pw = role
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 1,
                       "reserve_pool_size": 1, "reserve_pool_timeout": 0.5},
               userlist={name: pw})
    a = hold(pf, name, pw)
    t0 = time.monotonic()
    b = start_waiting(pf, name, pw)
    b.sock.settimeout(5)
    assert b.read_result() == [("served",)]
    elapsed = time.monotonic() - t0
    assert 0.4 <= elapsed <= 3.0, elapsed
    assert backends(postgres, name) == 2
    # the reserve (1) is used up: while a and b hold their servers, c waits
    b.simple_query("BEGIN")
    b.simple_query("SELECT 1")
    c = start_waiting(pf, name, pw)
    # three reserve_pool_timeouts and a janitor run later, c still waits: no third server
    wait_queued(pf, "appdb", name, 1.5, servers=2)
    assert backends(postgres, name) == 2
    b.simple_query("COMMIT")
    c.sock.settimeout(5)
    assert c.read_result() == [("served",)]
    for x in (a, b, c):
        x.close()


def test_min_pool_size(proxy, postgres, role):
    name, pw = role
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 5, "min_pool_size": 3},
               userlist={name: pw})
    with pgwire.connect(pf.host, pf.port, name, "appdb", pw) as conn:
        conn.simple_query("SELECT 1")
    assert pfhelpers.wait_for(lambda: backends(postgres, name) == 3, 4), backends(postgres, name)
    # A backend that dies is replaced by the janitor, and by no more than that one.
    with postgres.connect(autocommit=True) as pg:
        pids = {r[0] for r in pg.execute(
            "SELECT pid FROM pg_stat_activity WHERE usename = %s", (name,))}
        victim = min(pids)
        pg.execute("SELECT pg_terminate_backend(%s)", (victim,))
    pfhelpers.wait_backends(postgres, "usename = %s AND NOT pid = ANY(%s)", (name, list(pids)),
                            "a backend replacing the terminated one (min_pool_size)")
    row = pfhelpers.wait_pool(pf, "appdb", lambda r: r["sv_login"] == 0,
                              "the replacement server logged in", user=name)
    assert pfhelpers.pool_servers(row) == 3 and row["sv_idle"] == 3, row
    assert backends(postgres, name) == 3  # and not more


def test_waiting_clients_served_in_arrival_order(proxy, postgres, role):
    name, pw = role
    tbl = "ord_" + name
    with postgres.connect(dbname="appdb", autocommit=True) as conn:
        conn.execute("CREATE TABLE %s (id serial, who text)" % tbl)
        conn.execute("ALTER TABLE %s OWNER TO %s" % (tbl, name))
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 1}, userlist={name: pw})
    a = hold(pf, name, pw)
    waiters = []
    for i, who in enumerate(["w1", "w2", "w3", "w4", "w5"]):
        waiters.append(start_waiting(pf, name, pw,
                                     sql="INSERT INTO %s (who) VALUES ('%s')" % (tbl, who)))
        assert pfhelpers.wait_for(lambda: waiting(pf, "appdb", name) == i + 1, 3)
    a.simple_query("COMMIT")
    for w in waiters:
        w.sock.settimeout(5)
        assert w.read_result() == []
    with postgres.connect(dbname="appdb") as conn:
        got = [r[0] for r in conn.execute("SELECT who FROM %s ORDER BY id" % tbl)]
    assert got == ["w1", "w2", "w3", "w4", "w5"]
    for x in [a] + waiters:
        x.close()


def test_query_wait_timeout(proxy, postgres, role):
    name, pw = role
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 1,
                       "query_wait_timeout": 1}, userlist={name: pw})
    a = hold(pf, name, pw)
    t0 = time.monotonic()
    b = start_waiting(pf, name, pw)
    err = pgwire.expect_error(b, timeout=5)
    elapsed = time.monotonic() - t0
    assert err is not None and err.sqlstate == "57014", err
    assert 0.9 <= elapsed <= 3.5, elapsed
    assert a.simple_query("SELECT 'a ok'") == [("a ok",)]
    a.close()
    b.close()


def test_query_timeout(proxy, postgres, role):
    name, pw = role
    pf = proxy(params={"pool_mode": "transaction", "query_timeout": 1}, userlist={name: pw})
    conn = pgwire.connect(pf.host, pf.port, name, "appdb", pw)
    assert conn.simple_query("SELECT 1") == [("1",)]
    t0 = time.monotonic()
    conn.send_query("SELECT pg_sleep(6)")
    err = pgwire.expect_error(conn, timeout=5)
    elapsed = time.monotonic() - t0
    assert err is not None and err.sqlstate == "57014", err
    assert err.message == "query timeout", err.message  # PgBouncer's words
    assert 0.9 <= elapsed <= 3.5, elapsed
    conn.close()
    # the pool still serves
    with pgwire.connect(pf.host, pf.port, name, "appdb", pw) as again:
        assert again.simple_query("SELECT 2") == [("2",)]


def test_idle_transaction_timeout(proxy, postgres, role):
    name, pw = role
    tbl = "itx_" + name
    with postgres.connect(dbname="appdb", autocommit=True) as conn:
        conn.execute("CREATE TABLE %s (x int)" % tbl)
        conn.execute("ALTER TABLE %s OWNER TO %s" % (tbl, name))
    pf = proxy(params={"pool_mode": "transaction", "idle_transaction_timeout": 1},
               userlist={name: pw})
    conn = pgwire.connect(pf.host, pf.port, name, "appdb", pw)
    conn.simple_query("BEGIN")
    conn.simple_query("INSERT INTO %s VALUES (1)" % tbl)
    t0 = time.monotonic()
    err = pgwire.expect_error(conn, timeout=5)
    elapsed = time.monotonic() - t0
    assert err is not None and err.sqlstate == "25P03", err
    assert err.message == "idle transaction timeout", err.message  # PgBouncer's words
    assert 0.9 <= elapsed <= 3.5, elapsed
    assert pgwire.wait_closed(conn, 2)
    conn.sock.close()
    assert pfhelpers.wait_for(lambda: pfhelpers.backend_count(
        postgres, "usename = %s AND state LIKE 'idle in transaction%%'", (name,)) == 0, 3)
    with postgres.connect(dbname="appdb") as pg:
        assert pg.execute("SELECT count(*) FROM %s" % tbl).fetchone() == (0,)


def test_client_idle_timeout(proxy, postgres, role):
    name, pw = role
    pf = proxy(params={"client_idle_timeout": 1}, userlist={name: pw})
    conn = pgwire.connect(pf.host, pf.port, name, "appdb", pw)
    t0 = time.monotonic()
    assert pgwire.wait_closed(conn, 5)
    elapsed = time.monotonic() - t0
    assert 0.9 <= elapsed <= 3.5, elapsed
    conn.sock.close()
    # a client that keeps talking is not idle
    with pgwire.connect(pf.host, pf.port, name, "appdb", pw) as busy:
        for _ in range(6):
            time.sleep(0.4)
            assert busy.simple_query("SELECT 1") == [("1",)]


@pytest.mark.parametrize("stage", ["nothing", "startup-only"])
def test_client_login_timeout(proxy, postgres, role, stage):
    name, pw = role
    pf = proxy(params={"client_login_timeout": 1}, userlist={name: pw})
    s = socket.create_connection((pf.host, pf.port), timeout=5)
    if stage == "startup-only":  # never answers the password request
        s.sendall(pgwire.startup_message({"user": name, "database": "appdb"}))
    t0 = time.monotonic()
    conn = pgwire.Connection(s)
    assert pgwire.wait_closed(conn, 5)
    elapsed = time.monotonic() - t0
    assert 0.9 <= elapsed <= 3.5, elapsed
    s.close()


def test_server_idle_timeout(proxy, postgres, role):
    name, pw = role
    pf = proxy(params={"server_idle_timeout": 1}, userlist={name: pw})
    with pgwire.connect(pf.host, pf.port, name, "appdb", pw) as conn:
        conn.simple_query("SELECT 1")
    t0 = time.monotonic()
    assert backends(postgres, name) == 1  # kept in the pool at first
    assert pfhelpers.wait_for(lambda: backends(postgres, name) == 0, 4)
    assert time.monotonic() - t0 >= 0.5


def test_server_lifetime(proxy, postgres, role):
    name, pw = role
    pf = proxy(params={"pool_mode": "transaction", "server_lifetime": 1}, userlist={name: pw})
    with pgwire.connect(pf.host, pf.port, name, "appdb", pw) as conn:
        pid = conn.simple_query("SELECT pg_backend_pid()")[0][0]
        assert pfhelpers.wait_for(lambda: pfhelpers.backend_count(
            postgres, "pid = %s", (int(pid),)) == 0, 4)
        new_pid = conn.simple_query("SELECT pg_backend_pid()")[0][0]
        assert new_pid != pid
