"""Robustness against server faults (issue 5): backends terminated under pgfunnel, Postgres
restarted or out of connection slots, hosts that never answer, refuse or do not exist, and
the server_login_retry back-off.

Faults that hit a whole Postgres use a dedicated cluster (module fixture `dedicated`,
max_connections 8, no superuser reserve); the well-behaved client (pfhelpers.Canary) then
uses another database of the same pgfunnel that points at the shared session cluster, and
must not notice anything."""

import time

import psycopg
import pytest

import pfhelpers
import pgwire
from test_robust_clients import finish, read_until_closed

DEDICATED_CONF = "max_connections = 8\nsuperuser_reserved_connections = 0\n"


@pytest.fixture(scope="module")
def dedicated(run_user):
    cluster = pfhelpers.start_dedicated_cluster(DEDICATED_CONF)
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def canary_role(postgres):
    return pfhelpers.new_role(postgres, "scan")


@pytest.fixture
def role(postgres):
    return pfhelpers.new_role(postgres, "svic")


def start(proxy, postgres, canary_role, role=None, params=None, databases=None):
    """pgfunnel in front of the session cluster (appdb, postgres, canarydb = appdb) plus
    databases; the canary is logged in to canarydb and already ran a query."""
    p = {"pool_mode": "transaction", "default_pool_size": 3, "server_login_retry": 1}
    p.update(params or {})
    d = {"canarydb": postgres.db_entry("appdb")}
    d.update(databases or {})
    userlist = {canary_role[0]: canary_role[1]}
    if role:
        userlist[role[0]] = role[1]
    pf = proxy(params=p, databases=d, userlist=userlist)
    can = pfhelpers.Canary(pf, canary_role[0], "canarydb", canary_role[1]).start()
    return pf, can


def fatal_errors(data):
    """The ErrorResponses in data as PgErrors (asserting each is FATAL)."""
    errs = [pgwire.PgError(pgwire.parse_fields(p)) for k, p in pgwire.whole_messages(data) if k == "E"]
    for e in errs:
        assert e.severity == "FATAL", e.fields
    return errs


def query_until_closed(conn, sql="SELECT 1"):
    """Send sql on a connection whose server died; return everything up to the close."""
    try:
        conn.send_query(sql)
    except OSError:
        pass
    return read_until_closed(conn.sock, timeout=5)


def server_closed_log(pf, db, user, after):
    return pf.wait_for_log(r"S-0x[0-9a-f]+: %s/%s@\S+ closing because" % (db, user),
                           timeout=5, after=after)


# ---------------------------------------------------------------- terminated backends


def test_terminate_idle_server_in_pool(proxy, postgres, canary_role, role):
    pf, can = start(proxy, postgres, canary_role, role)
    conn = pgwire.connect(pf.host, pf.port, role[0], "appdb", role[1])
    try:
        ((pid1,),) = conn.simple_query("SELECT pg_backend_pid()")
        n = pf.log_len()
        with postgres.connect(autocommit=True) as su:
            assert su.execute("SELECT pg_terminate_backend(%s)", (int(pid1),)).fetchone() == (
                True,)
        # pgfunnel notices on its own that the idle server died...
        server_closed_log(pf, "appdb", role[0], n)
        can.expect_progress()
        # ...and the client's next transaction simply gets another one.
        ((pid2,),) = conn.simple_query("SELECT pg_backend_pid()")
        assert pid2 != pid1
        assert conn.simple_query("SELECT 'still here'") == [("still here",)]
    finally:
        conn.close()
    can.check()
    finish(pf)


def test_terminate_idle_server_then_query_at_once(proxy, postgres, canary_role, role):
    # Same without waiting for pgfunnel to see the EOF: the backend is gone from
    # pg_stat_activity, the next query must still not fail.
    pf, can = start(proxy, postgres, canary_role, role, params={"default_pool_size": 1})
    conn = pgwire.connect(pf.host, pf.port, role[0], "appdb", role[1])
    try:
        ((pid1,),) = conn.simple_query("SELECT pg_backend_pid()")
        with postgres.connect(autocommit=True) as su:
            su.execute("SELECT pg_terminate_backend(%s)", (int(pid1),))
        assert pfhelpers.wait_for(lambda: pfhelpers.backend_count(
            postgres, "pid = %s", (int(pid1),)) == 0, 5)
        # The backend leaves pg_stat_activity before it exits: wait until the process is gone
        # (its socket closed, so pgfunnel has the EOF to read), not for pgfunnel to read it.
        pfhelpers.wait_until(lambda: not pfhelpers.pid_alive(int(pid1)), 5,
                             "backend %s exited" % pid1)
        ((pid2,),) = conn.simple_query("SELECT pg_backend_pid()")
        assert pid2 != pid1
    finally:
        conn.close()
    can.check()
    finish(pf)


def test_terminate_server_in_transaction(proxy, postgres, canary_role, role):
    pf, can = start(proxy, postgres, canary_role, role)
    conn = pgwire.connect(pf.host, pf.port, role[0], "appdb", role[1])
    try:
        conn.simple_query("BEGIN")
        ((pid,),) = conn.simple_query("SELECT pg_backend_pid()")
        with postgres.connect(autocommit=True) as su:
            su.execute("SELECT pg_terminate_backend(%s)", (int(pid),))
        errs = fatal_errors(query_until_closed(conn))
        assert errs, "the client was closed without an error"
        # The backend's own FATAL (forwarded) and/or pgfunnel's.
        assert errs[0].sqlstate in ("57P01", "08006"), [e.fields for e in errs]
        if errs[-1].sqlstate == "08006":
            assert errs[-1].message == "server conn crashed?", errs[-1].fields
    finally:
        conn.sock.close()
    can.expect_progress()
    # The same role is served again at once.
    again = pgwire.connect(pf.host, pf.port, role[0], "appdb", role[1])
    assert again.simple_query("SELECT 1") == [("1",)]
    again.close()
    can.check()
    finish(pf)


# ---------------------------------------------------------------- a whole Postgres


def test_postgres_restart(proxy, postgres, dedicated, canary_role):
    pf, can = start(proxy, postgres, canary_role, databases={"ded": dedicated.db_entry("appdb")})
    pw = dedicated.passwords["alice"]
    idle = pgwire.connect(pf.host, pf.port, "alice", "ded", pw)
    busy = pgwire.connect(pf.host, pf.port, "alice", "ded", pw)
    try:
        assert idle.simple_query("SELECT 1") == [("1",)]
        busy.simple_query("BEGIN")
        busy.simple_query("SELECT 1")
        pfhelpers.restart_cluster(dedicated, "fast")
        can.expect_progress()

        # The client in a transaction lost its server: a clear FATAL, then the close.
        errs = fatal_errors(query_until_closed(busy))
        assert errs and errs[0].sqlstate in ("57P01", "08006"), [e.fields for e in errs]

        # The idle client's next transaction runs on a new server.
        assert idle.simple_query("SELECT 'after restart'") == [("after restart",)]
    finally:
        idle.close()
        busy.sock.close()

    # New clients work without restarting pgfunnel.
    def new_client_works():
        try:
            with pgwire.connect(pf.host, pf.port, "alice", "ded", pw) as c:
                return c.simple_query("SELECT 2") == [("2",)]
        except (pgwire.PgError, pgwire.ProtocolError, OSError):
            return False

    assert pfhelpers.wait_for(new_client_works, 5, 0.2)
    can.check()
    finish(pf)


def test_postgres_out_of_connection_slots(proxy, postgres, dedicated, canary_role):
    pf, can = start(proxy, postgres, canary_role, databases={"ded": dedicated.db_entry("appdb")})
    pw = dedicated.passwords["alice"]
    hogs = []
    try:
        while len(hogs) < 20:
            try:
                hogs.append(dedicated.connect(user="alice", dbname="appdb"))
            except psycopg.OperationalError as e:
                assert "too many clients" in str(e), e
                break
        assert 0 < len(hogs) < 20
        t0 = time.monotonic()
        err, closed = pgwire.login_refused(pf.host, pf.port, "alice", "ded", pw, timeout=10)
        elapsed = time.monotonic() - t0
        assert (err.severity, err.sqlstate, err.message) == (
            "FATAL", "53300", "sorry, too many clients already"), err.fields
        assert closed
        assert elapsed < 2.0, "refused only after %.1fs" % elapsed
        can.expect_progress()
    finally:
        for h in hogs:
            h.close()

    def works():
        try:
            with pgwire.connect(pf.host, pf.port, "alice", "ded", pw) as c:
                return c.simple_query("SELECT 3") == [("3",)]
        except (pgwire.PgError, pgwire.ProtocolError, OSError):
            return False

    # After server_login_retry (1 s) pgfunnel logs in again.
    assert pfhelpers.wait_for(works, 5, 0.3)
    can.check()
    finish(pf)


# ---------------------------------------------------------------- unreachable servers


def test_server_that_accepts_and_never_answers(proxy, postgres, canary_role):
    fake = pfhelpers.FakeServer("silent")
    try:
        pf, can = start(proxy, postgres, canary_role,
                        params={"server_connect_timeout": 1},
                        databases={"hang": "host=127.0.0.1 port=%d dbname=x" % fake.port})
        t0 = time.monotonic()
        err, closed = pgwire.login_refused(pf.host, pf.port, "alice", "hang",
                                           postgres.passwords["alice"], timeout=10)
        elapsed = time.monotonic() - t0
        assert (err.severity, err.sqlstate, err.message) == (
            "FATAL", "08006", "server connection timed out (server_connect_timeout)"), err.fields
        assert closed
        assert 1.0 <= elapsed < 4.0, elapsed
        assert fake.accepts == 1
        can.expect_progress()
        can.check()
        finish(pf)
    finally:
        fake.stop()


def test_port_where_nothing_listens(proxy, postgres, canary_role, new_port):
    dead = new_port()
    pf, can = start(proxy, postgres, canary_role,
                    databases={"dead": "host=127.0.0.1 port=%d dbname=x" % dead})
    t0 = time.monotonic()
    err, closed = pgwire.login_refused(pf.host, pf.port, "alice", "dead",
                                       postgres.passwords["alice"], timeout=10)
    assert (err.severity, err.sqlstate, err.message) == (
        "FATAL", "08006", "server connection failed: connection refused"), err.fields
    assert closed
    assert time.monotonic() - t0 < 2.0
    can.check()
    finish(pf)


def test_unknown_host(proxy, postgres, canary_role):
    pf, can = start(proxy, postgres, canary_role,
                    databases={"nohost": "host=nonexistent.invalid port=5432 dbname=x"})
    t0 = time.monotonic()
    try:
        err, closed = pgwire.login_refused(pf.host, pf.port, "alice", "nohost",
                                           postgres.passwords["alice"], timeout=15)
    except pgwire.ProtocolError as e:
        time.sleep(0.3)
        raise AssertionError("no ErrorResponse (%s); pgfunnel %s; sanitizer: %s\n%s" % (
            e, "running" if pf.is_running() else "DIED", pfhelpers.sanitizer_reports(pf),
            pf.stderr_text()[-6000:]))
    assert (err.severity, err.sqlstate) == ("FATAL", "08006"), err.fields
    # PgBouncer's words for it ("closing because: server DNS lookup failed").
    assert err.message.startswith("server DNS lookup failed: "), err.fields
    assert closed
    assert time.monotonic() - t0 < 5.0
    can.check()
    finish(pf)


def test_login_retry_backs_off(proxy, postgres, canary_role):
    fake = pfhelpers.FakeServer("close")
    try:
        pf, can = start(proxy, postgres, canary_role, params={"server_login_retry": 2},
                        databases={"flaky": "host=127.0.0.1 port=%d dbname=x" % fake.port})
        pw = postgres.passwords["alice"]

        def refused():
            t = time.monotonic()
            err, closed = pgwire.login_refused(pf.host, pf.port, "alice", "flaky", pw, timeout=10)
            assert (err.severity, err.sqlstate) == ("FATAL", "08006"), err.fields
            assert closed
            return err, time.monotonic() - t

        err, _ = refused()
        assert err.message == "server closed the connection during login", err.fields
        assert fake.accepts == 1
        first = fake.times[0]
        # Within server_login_retry: refused at once, and no new connection attempt.
        while time.monotonic() - first < 1.5:
            err, took = refused()
            # PgBouncer 1.25's words, with the last failure's reason.
            assert err.message == ("server login has been failing, cached error: server closed "
                                   "the connection during login (server_login_retry)"), err.fields
            assert took < 0.5
            time.sleep(0.1)
        assert fake.accepts == 1, "pgfunnel retried %d times within server_login_retry" % (
            fake.accepts - 1)
        can.expect_progress()
        # After it: one new attempt.
        time.sleep(max(0.0, first + 2.3 - time.monotonic()))
        refused()
        assert fake.accepts == 2
        assert fake.times[1] - first >= 2.0
        can.check()
        finish(pf)
    finally:
        fake.stop()
