"""Pooling through pgfunnel (issue 3): many clients over few servers, transaction boundaries,
clients that vanish mid-transaction, session reset, pool modes."""

import os
import socket
import subprocess
import struct
import threading
import time

import psycopg
import pytest

import pfhelpers
import pgwire


def table(postgres, role, name, ddl="id int"):
    """A fresh table in appdb owned by role."""
    with postgres.connect(dbname="appdb", autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS %s" % name)
        conn.execute("CREATE TABLE %s (%s)" % (name, ddl))
        conn.execute("ALTER TABLE %s OWNER TO %s" % (name, role))


def xact_commits(postgres):
    """pg_stat_database.xact_commit of appdb, as of now."""
    with postgres.connect(dbname="appdb", autocommit=True) as pg:
        return pg.execute("SELECT xact_commit FROM pg_stat_database "
                          "WHERE datname = 'appdb'").fetchone()[0]


def test_300_clients_through_5_servers(proxy, postgres):
    role, pw = pfhelpers.new_role(postgres, "p300")
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 5,
                       "max_client_conn": 400, "query_wait_timeout": 60},
               userlist={role: pw})
    nclients, nxact = 300, 20
    errors, done = [], []
    max_backends = [0]
    saw_waiting = [0]
    max_servers_in_pools = [0]
    stop = threading.Event()
    start = threading.Barrier(nclients + 1, timeout=60)
    commits_before = xact_commits(postgres)

    def client(i):
        try:
            # prepare_threshold=None: no named prepared statements (another feature)
            with pfhelpers.proxy_connect(pf, role, "appdb", pw, prepare_threshold=None) as conn:
                start.wait()
                for j in range(nxact):
                    with conn.transaction():
                        a = conn.execute("SELECT pg_backend_pid(), %s::int", (i,)).fetchone()
                        b = conn.execute("SELECT pg_backend_pid(), %s::int", (j,)).fetchone()
                    assert a[0] == b[0] and (a[1], b[1]) == (i, j), (a, b)
            done.append(i)
        except Exception as e:  # noqa: BLE001
            errors.append("client %d: %r" % (i, e))
            try:
                start.abort()
            except Exception:  # noqa: BLE001
                pass

    def monitor():
        with postgres.connect(autocommit=True) as pg, \
                pfhelpers.proxy_connect(pf, "postgres", "pgbouncer",
                                        postgres.passwords["postgres"], autocommit=True,
                                        prepare_threshold=None) as adm:
            while not stop.is_set():
                n = pg.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s",
                               (role,)).fetchone()[0]
                max_backends[0] = max(max_backends[0], n)
                cur = adm.execute("SHOW POOLS")
                cols = [d.name for d in cur.description]
                for row in pfhelpers.rows_as_dicts(cols, cur.fetchall()):
                    if row["user"] == role and row["database"] == "appdb":
                        sv = sum(row[k] for k in ("sv_active", "sv_idle", "sv_used",
                                                  "sv_tested", "sv_login"))
                        max_servers_in_pools[0] = max(max_servers_in_pools[0], sv)
                        saw_waiting[0] = max(saw_waiting[0], row["cl_waiting"])
                time.sleep(0.02)

    mon = threading.Thread(target=monitor)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(nclients)]
    for t in threads:
        t.start()
    mon.start()
    try:
        start.wait()
    except threading.BrokenBarrierError:
        pass
    t0 = time.monotonic()
    for t in threads:
        t.join(120)
    stop.set()
    mon.join(10)
    elapsed = time.monotonic() - t0
    assert not errors, "%d clients failed, first: %s\n%s" % (
        len(errors), errors[:3], pf.log_text()[-3000:])
    assert len(done) == nclients
    assert 1 <= max_backends[0] <= 5, max_backends[0]
    assert 1 <= max_servers_in_pools[0] <= 5, max_servers_in_pools[0]
    assert saw_waiting[0] > 0, "cl_waiting never > 0 in %.1fs" % elapsed
    # Every transaction really went through Postgres (as a commit of its own). A backend
    # reports its counts when it exits: stop pgfunnel, which closes its servers.
    pf.stop()
    pfhelpers.wait_until(lambda: xact_commits(postgres) - commits_before >= nclients * nxact,
                         10, "%d more commits in appdb" % (nclients * nxact),
                         lambda: "only %d" % (xact_commits(postgres) - commits_before))


def test_backend_stable_inside_transaction(proxy, postgres):
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 2})
    pw = postgres.passwords["alice"]
    with pfhelpers.proxy_connect(pf, "alice", "appdb", pw, autocommit=True) as a, \
            pfhelpers.proxy_connect(pf, "alice", "appdb", pw, autocommit=True) as b:
        a.execute("BEGIN")
        pid_a = a.execute("SELECT pg_backend_pid()").fetchone()[0]
        b_pids = set()
        for _ in range(5):
            b_pids.add(b.execute("SELECT pg_backend_pid()").fetchone()[0])
            assert a.execute("SELECT pg_backend_pid()").fetchone()[0] == pid_a
        a.execute("COMMIT")
        assert len(b_pids) == 1 and pid_a not in b_pids


def test_clients_share_backends_outside_transactions(proxy, postgres):
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 1})
    pw = postgres.passwords["alice"]
    with pfhelpers.proxy_connect(pf, "alice", "appdb", pw, autocommit=True) as a, \
            pfhelpers.proxy_connect(pf, "alice", "appdb", pw, autocommit=True) as b:
        pids = set()
        for _ in range(3):
            pids.add(a.execute("SELECT pg_backend_pid()").fetchone()[0])
            pids.add(b.execute("SELECT pg_backend_pid()").fetchone()[0])
        assert len(pids) == 1


def abort_socket(sock):
    """Close with an RST, as a killed process would on a busy connection."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("how", ["rst", "kill-psql"])
def test_client_gone_mid_transaction(proxy, postgres, how):
    role, pw = pfhelpers.new_role(postgres, "pgone")
    tbl = "gone_" + role
    table(postgres, role, tbl)
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 1},
               userlist={role: pw})
    if how == "rst":
        conn = pgwire.connect(pf.host, pf.port, role, "appdb", pw)
        conn.simple_query("BEGIN; INSERT INTO %s VALUES (1)" % tbl)
        pid = int(conn.simple_query("SELECT pg_backend_pid()")[0][0])
        abort_socket(conn.sock)
    else:
        env = dict(os.environ, PGPASSWORD=pw)
        p = subprocess.Popen([pfhelpers.PSQL, "-X", "-A", "-t", "-q", "-h", pf.host,
                              "-p", str(pf.port), "-U", role, "-d", "appdb",
                              "-v", "ON_ERROR_STOP=1"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
        p.stdin.write("BEGIN;\nINSERT INTO %s VALUES (1);\nSELECT 'pid=' || pg_backend_pid();\n"
                      % tbl)
        p.stdin.flush()
        line = p.stdout.readline()
        assert line.startswith("pid="), line
        pid = int(line[4:])
        p.kill()
        p.wait(5)

    def no_open_xact():
        return pfhelpers.backend_count(
            postgres, "usename = %s AND state LIKE 'idle in transaction%%'", (role,)) == 0

    assert pfhelpers.wait_for(no_open_xact, 5), pf.log_text()[-2000:]
    # the server that was inside the transaction is closed, not reused
    assert pfhelpers.wait_for(lambda: pfhelpers.backend_count(postgres, "pid = %s", (pid,)) == 0, 5)
    # The pool (one server) still works; the next client is not inside the dead transaction.
    with pgwire.connect(pf.host, pf.port, role, "appdb", pw) as nxt:
        assert nxt.simple_query("SELECT count(*) FROM %s" % tbl) == [("0",)]
        nxt.simple_query("BEGIN")
        nxt.simple_query("COMMIT")
        assert [n.get("C") for n in nxt.notices] == []
    with postgres.connect(dbname="appdb") as pg:
        assert pg.execute("SELECT count(*) FROM %s" % tbl).fetchone() == (0,)


def test_session_mode_reset_between_clients(proxy, postgres):
    pf = proxy(params={"pool_mode": "session", "default_pool_size": 1})
    pw = postgres.passwords["alice"]
    with pfhelpers.proxy_connect(pf, "alice", "appdb", pw, autocommit=True) as a:
        pid = a.execute("SELECT pg_backend_pid()").fetchone()[0]
        a.execute("SET work_mem = '7MB'")
        a.execute("SET myapp.flag = 'on'")
        a.execute("PREPARE pf_stmt AS SELECT 1")
        a.execute("CREATE TEMP TABLE pf_tmp (x int)")
        for _ in range(3):  # persists within the session
            assert a.execute("SHOW work_mem").fetchone() == ("7MB",)
            assert a.execute("SELECT current_setting('myapp.flag')").fetchone() == ("on",)
            assert a.execute("SELECT pg_backend_pid()").fetchone()[0] == pid
    with pfhelpers.proxy_connect(pf, "alice", "appdb", pw, autocommit=True) as b:
        assert b.execute("SELECT pg_backend_pid()").fetchone()[0] == pid
        assert b.execute("SHOW work_mem").fetchone() == ("4MB",)
        assert b.execute("SELECT current_setting('myapp.flag', true)").fetchone()[0] in (None, "")
        assert b.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)
        assert b.execute("SELECT count(*) FROM pg_class WHERE relname = 'pf_tmp'"
                         " AND relpersistence = 't'").fetchone() == (0,)


# ------------------------------------------------ pool modes


def assert_statement_mode_refuses(pf, user, password, dbname="appdb"):
    with pgwire.connect(pf.host, pf.port, user, dbname, password) as conn:
        assert conn.simple_query("SELECT 1") == [("1",)]
        conn.send_query("BEGIN")
        err = pgwire.expect_error(conn)
        assert err is not None, "BEGIN accepted in statement mode"
        # PgBouncer 1.25's code and words (applications such as PostgREST match the pair).
        assert (err.severity, err.sqlstate, err.message) == (
            "FATAL", "08P01", "transaction blocks not allowed in statement pooling mode")
        assert pgwire.wait_closed(conn, 5), "client not disconnected after the refusal"


def test_statement_mode_refuses_transactions(proxy, postgres):
    pf = proxy(params={"pool_mode": "statement", "default_pool_size": 1})
    pw = postgres.passwords["alice"]
    assert_statement_mode_refuses(pf, "alice", pw)
    with pfhelpers.proxy_connect(pf, "alice", "appdb", pw) as conn:
        with pytest.raises(psycopg.Error) as exc:
            with conn.transaction():
                conn.execute("SELECT 1")
        assert "transaction blocks not allowed in statement pooling mode" in str(exc.value)


def test_statement_mode_next_client_not_in_transaction(proxy, postgres):
    pf = proxy(params={"pool_mode": "statement", "default_pool_size": 1})
    pw = postgres.passwords["alice"]
    assert_statement_mode_refuses(pf, "alice", pw)
    with pgwire.connect(pf.host, pf.port, "alice", "appdb", pw) as conn:
        # now() is the transaction start: equal to statement_timestamp() only outside a block
        assert conn.simple_query("SELECT now() = statement_timestamp()") == [("t",)]
        assert conn.simple_query("SELECT 2") == [("2",)]


def wait_timeout_pool(pf, user, pw, dbname="appdb"):
    """True if a second client gets a server while a first one is connected and idle
    (transaction/statement mode), False if it waits until query_wait_timeout ends it (session
    mode: the only server stays with the first client). Any other error fails."""
    with pfhelpers.proxy_connect(pf, user, dbname, pw, autocommit=True) as a:
        a.execute("SELECT 1")
        try:
            with pfhelpers.proxy_connect(pf, user, dbname, pw, autocommit=True) as b:
                b.execute("SELECT 1")
                a.execute("SELECT 1")
                return True
        except psycopg.Error as e:
            # pgfunnel's FATAL query_wait_timeout (57014, then it closes: libpq reports the
            # message, without the SQLSTATE, as a lost connection).
            first = str(e).splitlines()[0] if str(e) else ""
            assert (e.sqlstate == "57014" or isinstance(e, psycopg.OperationalError)) and \
                first.endswith("query_wait_timeout"), (
                    "expected query_wait_timeout, got %r (sqlstate %s)" % (e, e.sqlstate))
            # The first client keeps its server throughout.
            assert a.execute("SELECT 'a still served'").fetchone() == ("a still served",)
            return False


def pool_modes(pf):
    cols, rows = pfhelpers.console(pf, "SHOW POOLS")
    return {(r["database"], r["user"]): r["pool_mode"] for r in pfhelpers.rows_as_dicts(cols, rows)}


def test_pool_mode_overrides(proxy, postgres):
    pf = proxy(
        params={"pool_mode": "session", "default_pool_size": 1, "query_wait_timeout": 1},
        databases={"txdb": postgres.db_entry("appdb", pool_mode="transaction"),
                   "stdb": postgres.db_entry("appdb", pool_mode="statement")},
        users={"bob": "pool_mode=statement"})
    apw, bpw = postgres.passwords["alice"], postgres.passwords["bob"]
    # global session: a connected client keeps its server
    assert wait_timeout_pool(pf, "alice", apw, "appdb") is False
    # per database: transaction
    assert wait_timeout_pool(pf, "alice", apw, "txdb") is True
    with pfhelpers.proxy_connect(pf, "alice", "txdb", apw) as conn:
        with conn.transaction():
            conn.execute("SELECT 1")
    # per database: statement
    assert_statement_mode_refuses(pf, "alice", apw, "stdb")
    # per user (over database and global): bob is in statement mode everywhere
    assert_statement_mode_refuses(pf, "bob", bpw, "appdb")
    assert_statement_mode_refuses(pf, "bob", bpw, "txdb")
    modes = pool_modes(pf)
    assert modes[("appdb", "alice")] == "session"
    assert modes[("txdb", "alice")] == "transaction"
    assert modes[("stdb", "alice")] == "statement"
    assert modes[("appdb", "bob")] == "statement"
    assert modes[("txdb", "bob")] == "statement"


def test_custom_server_reset_query(proxy, postgres):
    pf = proxy(params={"pool_mode": "session", "default_pool_size": 1,
                       "server_reset_query": "RESET ALL"})
    pw = postgres.passwords["alice"]
    with pfhelpers.proxy_connect(pf, "alice", "appdb", pw, autocommit=True) as a:
        pid = a.execute("SELECT pg_backend_pid()").fetchone()[0]
        a.execute("SET work_mem = '7MB'")
        a.execute("PREPARE pf_kept AS SELECT 1")
    with pfhelpers.proxy_connect(pf, "alice", "appdb", pw, autocommit=True) as b:
        assert b.execute("SELECT pg_backend_pid()").fetchone()[0] == pid
        assert b.execute("SHOW work_mem").fetchone() == ("4MB",)  # RESET ALL ran
        # ... and DISCARD ALL did not: the prepared statement survives
        assert b.execute("SELECT name FROM pg_prepared_statements").fetchall() == [("pf_kept",)]


def test_no_reset_query_in_transaction_mode(proxy, postgres):
    """server_reset_query is for session pooling only (server_reset_query_always = 0).
    The probe is an SQL-level prepared statement, which DISCARD ALL would drop; with
    max_prepared_statements > 0 pgfunnel closes a server that ran SQL PREPARE instead of
    handing it on (test_prepared_protocol.py), so tracking is off here, as in PgBouncer < 1.21."""
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 1,
                       "max_prepared_statements": 0})
    pw = postgres.passwords["alice"]
    with pfhelpers.proxy_connect(pf, "alice", "appdb", pw, autocommit=True) as a:
        a.execute("PREPARE pf_tx_kept AS SELECT 1")
    with pfhelpers.proxy_connect(pf, "alice", "appdb", pw, autocommit=True) as b:
        assert b.execute("SELECT name FROM pg_prepared_statements").fetchall() == [
            ("pf_tx_kept",)]
        b.execute("DEALLOCATE pf_tx_kept")


def check_runs(postgres, seq):
    with postgres.connect(dbname="appdb", autocommit=True) as conn:
        return conn.execute("SELECT last_value, is_called FROM %s" % seq).fetchone()


@pytest.mark.parametrize("delay,expect_checks", [("0", True), ("30", False)])
def test_server_check_query_runs_after_server_check_delay(proxy, postgres, delay,
                                                         expect_checks):
    # A check query with a visible side effect: nextval() of a sequence. With
    # server_check_delay 0 every reuse of an idle server is checked first; with 30 s a server
    # used a moment ago is not (and a fresh one never is).
    seq = "pf_check_seq_%s" % delay
    with postgres.connect(dbname="appdb", autocommit=True) as conn:
        conn.execute("DROP SEQUENCE IF EXISTS %s" % seq)
        conn.execute("CREATE SEQUENCE %s" % seq)
        conn.execute("GRANT USAGE, SELECT, UPDATE ON SEQUENCE %s TO alice" % seq)
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 1,
                       "server_check_delay": delay,
                       "server_check_query": "SELECT nextval('%s')" % seq})
    pw = postgres.passwords["alice"]
    with pfhelpers.proxy_connect(pf, "alice", "appdb", pw, autocommit=True) as a:
        for i in range(5):
            time.sleep(0.01)  # the server's last use is now in the past
            assert a.execute("SELECT %s::int" % i).fetchone() == (i,)
    last, called = check_runs(postgres, seq)
    if expect_checks:
        assert called and last >= 4, (last, called)  # the first query got a fresh server
    else:
        assert not called, "server_check_query ran although the server was used just now"
