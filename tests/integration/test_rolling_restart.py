"""Rolling restart and shutdown/SUSPEND/RELOAD under load (issue 13).

- SIGTERM (SHUTDOWN WAIT_FOR_CLIENTS) closes each client as soon as its transaction is over
  (at once when it is idle), serves what the listener had queued, then exits.
- so_reuseport rolling restart: a new pgfunnel beside the old one, SIGTERM to the old one, no
  failed transaction for pgbench -C nor for a psycopg_pool application.
- SUSPEND stops accepting until RESUME (PgBouncer).
- SIGINT (WAIT_FOR_SERVERS) under continuous load: "server shutting down", exit in seconds.
- RELOAD lowering pool_size under load: the pool shrinks as servers are released.
- Hostile: raw clients at each step of a shutdown, SUSPEND+SHUTDOWN, RELOAD during shutdown.
"""
import os
import re
import shutil
import signal
import subprocess
import threading
import time

import psycopg
import pytest

import pfhelpers
import pgwire

PGBENCH = shutil.which("pgbench") or os.path.join(pfhelpers.PG_BINDIR, "pgbench")
ADMIN_PW = "pg-super-secret"

pytestmark = pytest.mark.skipif(not os.access(PGBENCH, os.X_OK), reason="pgbench missing")


def start(pgfunnel, postgres, port=None, **params):
    p = {"pool_mode": "transaction", "default_pool_size": "10", "max_client_conn": "500",
         "log_connections": "0", "log_disconnections": "0", "query_wait_timeout": "60"}
    p.update(params)
    return pfhelpers.start_proxy(pgfunnel, postgres, params=p, port=port)


def console(pf, sql):
    """The admin console through pf's own unix socket (its TCP port may be shared)."""
    with psycopg.connect(host=pf.unix_socket_dir, port=pf.port, user="postgres",
                         password=ADMIN_PW, dbname="pgbouncer", autocommit=True,
                         prepare_threshold=None, connect_timeout=5) as conn:
        cur = conn.execute(sql)
        if not cur.description:
            return []
        cols = [d.name for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]


def xact_count(pf, db="appdb"):
    return sum(int(r["total_xact_count"]) for r in console(pf, "SHOW STATS")
               if r["database"] == db)


def connect(pf, postgres, user="alice", **kw):
    return psycopg.connect(postgres.conninfo(user=user, dbname="appdb", host="127.0.0.1",
                                             port=pf.port), autocommit=True,
                           connect_timeout=5, **kw)


def pgbench(pf, postgres, tmpdir, *args, user="alice"):
    script = os.path.join(tmpdir, "select.sql")
    with open(script, "w") as f:
        f.write("SELECT 1;\n")
    env = dict(os.environ, PGPASSWORD=postgres.passwords[user], PGCONNECT_TIMEOUT="10")
    env.pop("PGSERVICE", None)
    proc = subprocess.Popen([PGBENCH, "-n", "-f", script, "-h", "127.0.0.1", "-p",
                             str(pf.port), "-U", user, *args, "appdb"],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out = {}

    def collect():
        out["stdout"], out["stderr"] = proc.communicate()

    t = threading.Thread(target=collect, daemon=True)
    t.start()

    def finish(timeout):
        t.join(timeout)
        assert not t.is_alive(), "pgbench did not finish"
        return proc.returncode, out["stdout"], out["stderr"]

    return proc, finish


def failed_transactions(stdout):
    m = re.search(r"number of failed transactions: (\d+)", stdout)
    return int(m.group(1)) if m else None


@pytest.fixture
def tmpdir_rr():
    d = pfhelpers.make_tempdir("pf-restart.")
    yield d
    pfhelpers.remove_tree(d)


# ------------------------------------------------------------------ 1. SIGTERM at tx boundary


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_sigterm_closes_clients_after_their_transaction(pgfunnel, postgres, mode):
    pf = start(pgfunnel, postgres, pool_mode=mode)
    idle = connect(pf, postgres)
    busy = connect(pf, postgres)
    assert idle.execute("select 1").fetchone() == (1,)
    busy.execute("begin")
    assert busy.execute("select 2").fetchone() == (2,)
    pf.signal(signal.SIGTERM)
    pf.wait_for_log(r"got SIGTERM")
    # The idle client goes at once: one client left (the one in its transaction).
    pfhelpers.wait_until(
        lambda: len([c for c in console(pf, "SHOW CLIENTS") if c["database"] == "appdb"]) == 1,
        5, "the idle client closed")
    with pytest.raises(psycopg.OperationalError, match="shutting down"):
        idle.execute("select 1")
    # The transaction goes on undisturbed, ends, and then its client is closed.
    assert busy.execute("select 3").fetchone() == (3,)
    assert pf.is_running()
    busy.execute("commit")
    assert pf.wait(5) == 0
    with pytest.raises(psycopg.OperationalError):
        busy.execute("select 1")


def test_sigterm_serves_pipelined_query_then_closes(pgfunnel, postgres):
    """A client that has already sent its next query when its transaction ends is served."""
    pf = start(pgfunnel, postgres)
    c = pgwire.connect("127.0.0.1", pf.port, "alice", "appdb", password=postgres.passwords["alice"])
    c.simple_query("begin")
    pf.signal(signal.SIGTERM)
    pf.wait_for_log(r"got SIGTERM")
    c.send(pgwire.fe_query("commit") + pgwire.fe_query("select 42"))
    msgs = c.read_until_ready(5, count=2)
    assert any(pgwire.token(k, p) == "D:42" for k, p in msgs), msgs
    # Then the FATAL and the close.
    k, p = c.read_message(5)
    assert k == "E" and pgwire.decode_error(p)["C"] == "57P01"
    assert pf.wait(5) == 0
    c.close()


# ------------------------------------------------------------------ 2. rolling restart


def pool_app(conninfo, stop, counts, errors, nthreads=20):
    """A psycopg_pool application: each thread takes a connection, checks it as psycopg_pool
    3.2's check_connection does (an empty query; a broken one is replaced, not counted), then
    runs one transaction, counted as ok or failed."""
    from psycopg_pool import ConnectionPool

    pool = ConnectionPool(conninfo, min_size=nthreads, max_size=nthreads,
                          kwargs={"autocommit": True}, timeout=20, reconnect_timeout=20)
    lock = threading.Lock()

    def worker():
        while not stop.is_set():
            try:
                conn = pool.getconn()
            except Exception as e:  # noqa: BLE001 - counted
                with lock:
                    errors.append("getconn: %r" % e)
                continue
            try:
                conn.execute("")
            except psycopg.Error:
                pool.putconn(conn)  # broken: the pool discards it and opens another
                with lock:
                    counts["replaced"] += 1
                continue
            try:
                with conn.transaction():
                    conn.execute("select 1").fetchone()
                    conn.execute("select 2").fetchone()
                with lock:
                    counts["ok"] += 1
            except Exception as e:  # noqa: BLE001 - counted
                with lock:
                    counts["failed"] += 1
                    errors.append(repr(e))
            finally:
                pool.putconn(conn)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(nthreads)]
    pool.wait(20)
    for t in threads:
        t.start()
    return pool, threads


def test_rolling_restart_with_so_reuseport_loses_nothing(pgfunnel, postgres, tmpdir_rr):
    old = start(pgfunnel, postgres, so_reuseport="1", default_pool_size="20")
    bench, finish = pgbench(old, postgres, tmpdir_rr, "-C", "-c", "50", "-j", "2", "-T", "14")
    stop = threading.Event()
    counts = {"ok": 0, "failed": 0, "replaced": 0}
    errors = []
    conninfo = postgres.conninfo(user="alice", dbname="appdb", host="127.0.0.1", port=old.port)
    pool, threads = pool_app(conninfo + " connect_timeout=10", stop, counts, errors)
    try:
        pfhelpers.wait_until(lambda: xact_count(old) > 200, 15, "load on the old process")
        new = start(pgfunnel, postgres, port=old.port, so_reuseport="1",
                    default_pool_size="20")
        new.wait_for_log(r"process up|listening on", timeout=10)
        ok_before = counts["ok"]
        old.signal(signal.SIGTERM)
        old.wait_for_log(r"got SIGTERM")
        assert old.wait(20) == 0, "the old process must exit while the load goes on"
        # The load keeps going on the new process alone.
        pfhelpers.wait_until(lambda: counts["ok"] > ok_before + 200, 15,
                             "application transactions after the switch")
        pfhelpers.wait_until(lambda: xact_count(new) > 200, 15, "load on the new process")
        time.sleep(2)  # a few more seconds of load on the new one (not an event wait)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        pool.close()
    rc, out, err = finish(60)
    assert rc == 0, "pgbench failed (%d):\n%s\n%s\n%s" % (rc, out, err, old.all_output())
    assert failed_transactions(out) in (0, None), out
    assert not re.search(r"(?i)\berror\b|aborted", err), err
    assert counts["failed"] == 0 and not errors, (counts, errors[:5])
    assert counts["ok"] > 0
    assert new.is_running()


# ------------------------------------------------------------------ 3. SUSPEND


def test_suspend_stops_accepting_until_resume(pgfunnel, postgres):
    pf = start(pgfunnel, postgres)
    admin = psycopg.connect(host=pf.unix_socket_dir, port=pf.port, user="postgres",
                            password=ADMIN_PW, dbname="pgbouncer", autocommit=True,
                            prepare_threshold=None)
    admin.execute("SUSPEND")
    result = {}

    def try_login():
        try:
            c = connect(pf, postgres)
            result["value"] = c.execute("select 7").fetchone()[0]
            c.close()
        except Exception as e:  # noqa: BLE001
            result["error"] = e

    t = threading.Thread(target=try_login, daemon=True)
    t.start()
    # While suspended, no new connection is accepted: not even the startup exchange happens.
    raw = pgwire.Connection(pgwire.open_socket("127.0.0.1", pf.port, 5))
    raw.send(pgwire.startup_message({"user": "alice", "database": "appdb"}))
    assert raw.is_silent(1.5), "a connection made during SUSPEND must not be served"
    assert "value" not in result and "error" not in result
    assert not any(c["database"] == "appdb" for c in console_rows(admin, "SHOW CLIENTS"))
    admin.execute("RESUME")
    t.join(10)
    assert result.get("value") == 7, result
    # The raw connection is served too (asked for a password).
    k, _ = raw.read_message(5)
    assert k == "R"
    raw.close()


def test_suspend_resumes_when_its_console_leaves(pgfunnel, postgres):
    """PgBouncer: a SUSPEND whose console sessions are all gone resumes by itself (no listener
    would let a new console in to RESUME)."""
    pf = start(pgfunnel, postgres)
    admin = psycopg.connect(host=pf.unix_socket_dir, port=pf.port, user="postgres",
                            password=ADMIN_PW, dbname="pgbouncer", autocommit=True,
                            prepare_threshold=None)
    admin.execute("SUSPEND")
    raw = pgwire.Connection(pgwire.open_socket("127.0.0.1", pf.port, 5))
    raw.send(pgwire.startup_message({"user": "alice", "database": "appdb"}))
    assert raw.is_silent(1.0), "a connection made during SUSPEND must not be served"
    n = pf.log_len()
    admin.close()
    pf.wait_for_log(r"admin disappeared when suspended, doing RESUME", after=n)
    k, _ = raw.read_message(5)
    assert k == "R"
    raw.close()
    c = connect(pf, postgres)
    assert c.execute("select 8").fetchone()[0] == 8
    c.close()
    admin.close()


def console_rows(conn, sql):
    cur = conn.execute(sql)
    cols = [d.name for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


# ------------------------------------------------------------------ 4. SIGINT under load


def test_sigint_under_continuous_load_exits(pgfunnel, postgres, tmpdir_rr):
    pf = start(pgfunnel, postgres, default_pool_size="5")
    bench, finish = pgbench(pf, postgres, tmpdir_rr, "-c", "20", "-j", "2", "-T", "60")
    pfhelpers.wait_until(lambda: xact_count(pf) > 200, 15, "load")
    t0 = time.monotonic()
    pf.signal(signal.SIGINT)
    assert pf.wait(5) == 0, "SIGINT must end the process within seconds under load"
    assert time.monotonic() - t0 < 5
    rc, out, err = finish(30)
    assert rc != 0
    assert "server shutting down" in err, err


# ------------------------------------------------------------------ 5. RELOAD lowers pool_size


def test_reload_lowering_pool_size_under_load(pgfunnel, postgres, tmpdir_rr):
    pf = start(pgfunnel, postgres, default_pool_size="6")
    bench, finish = pgbench(pf, postgres, tmpdir_rr, "-c", "20", "-j", "2", "-T", "12")

    def servers():
        return len([s for s in console(pf, "SHOW SERVERS") if s["database"] == "appdb"])

    pfhelpers.wait_until(lambda: servers() == 6, 15, "6 servers under load")
    params = dict(pf.params)
    params["default_pool_size"] = "2"
    pf.write_ini(params)
    console(pf, "RELOAD")
    pfhelpers.wait_until(lambda: servers() <= 2, 5, "the pool shrunk to 2 servers")
    n = xact_count(pf)
    pfhelpers.wait_until(lambda: xact_count(pf) > n + 100, 10, "load goes on with 2 servers")
    assert servers() <= 2
    rc, out, err = finish(60)
    assert rc == 0, (out, err)
    assert failed_transactions(out) in (0, None), out
    assert re.search(r"pool over its size", pf.log_text())


# ------------------------------------------------------------------ 6. hostile


def test_hostile_shutdown_sequences(pgfunnel, postgres):
    pw = postgres.passwords["alice"]
    pf = start(pgfunnel, postgres, client_login_timeout="3")
    # 1. half a startup packet, 2. logged in mid-message, 3. in a transaction, 4. idle
    half = pgwire.Connection(pgwire.open_socket("127.0.0.1", pf.port, 5))
    half.send_partial(pgwire.startup_message({"user": "alice", "database": "appdb"}), 5)
    mid = pgwire.connect("127.0.0.1", pf.port, "alice", "appdb", password=pw)
    mid.simple_query("select 1")
    mid.send_partial(pgwire.fe_query("select 123"), 3)
    intx = pgwire.connect("127.0.0.1", pf.port, "alice", "appdb", password=pw)
    intx.simple_query("begin")
    # SUSPEND then SHUTDOWN WAIT_FOR_CLIENTS, a RELOAD during the shutdown, then RESUME.
    admin = psycopg.connect(host=pf.unix_socket_dir, port=pf.port, user="postgres",
                            password=ADMIN_PW, dbname="pgbouncer", autocommit=True,
                            prepare_threshold=None)
    admin.execute("SUSPEND")
    admin.execute("SHUTDOWN WAIT_FOR_CLIENTS")
    admin.execute("RELOAD")
    admin.execute("RESUME")
    # The rest of the half-sent query is served: the client is mid-message.
    mid.send(pgwire.fe_query("select 123")[3:])
    msgs = mid.read_until_ready(5)
    assert any(pgwire.token(k, p) == "D:123" for k, p in msgs), msgs
    # ... and then closed (its transaction is over).
    k, p = mid.read_message(5)
    assert k == "E" and pgwire.decode_error(p)["C"] == "57P01"
    # A new login over the unix socket (kept for the console) is refused.
    with pytest.raises(psycopg.OperationalError, match="shutting down"):
        psycopg.connect(host=pf.unix_socket_dir, port=pf.port, user="alice", password=pw,
                        dbname="appdb", connect_timeout=3)
    # The transaction goes on; its client vanishes without a word mid-transaction.
    assert intx.simple_query("select 5") == [("5",)]
    intx.abort()
    # The half startup packet is dropped at client_login_timeout; then the process exits.
    assert pf.wait(10) == 0
    half.close()
    admin.close()


def test_hostile_sigint_then_sigterm_and_disconnects(pgfunnel, postgres):
    pw = postgres.passwords["alice"]
    pf = start(pgfunnel, postgres)
    a = pgwire.connect("127.0.0.1", pf.port, "alice", "appdb", password=pw)
    a.simple_query("begin")
    b = pgwire.connect("127.0.0.1", pf.port, "alice", "appdb", password=pw)
    pf.signal(signal.SIGINT)
    pf.wait_for_log(r"got SIGINT")
    # b needs a server: refused with PgBouncer's words.
    b.send(pgwire.fe_query("select 1"))
    k, p = b.read_message(5)
    assert k == "E"
    f = pgwire.decode_error(p)
    assert f["M"] == "server shutting down" and f["C"] == "08P01", f
    # a keeps its server until it disconnects (abruptly): then the process exits.
    assert a.simple_query("select 9") == [("9",)]
    a.abort()
    assert pf.wait(5) == 0
    b.close()


def test_reboot_option_is_deprecated_like_pgbouncer(pgfunnel, postgres):
    """-R: PgBouncer 1.25 warns "Online restart is deprecated, use so_reuseport instead"."""
    pf = pfhelpers.start_proxy(pgfunnel, postgres, args=("-R",))
    pf.wait_for_log(r"WARNING Online restart is deprecated, use so_reuseport instead")
    c = connect(pf, postgres)
    assert c.execute("select 1").fetchone() == (1,)
    c.close()


def test_sigterm_warns_about_tcp_migrate_req(pgfunnel, postgres):
    pf = start(pgfunnel, postgres, so_reuseport="1")
    with open("/proc/sys/net/ipv4/tcp_migrate_req") as f:
        migrate = int(f.read())
    pf.signal(signal.SIGTERM)
    assert pf.wait(5) == 0
    warned = "tcp_migrate_req = 0" in pf.log_text()
    assert warned == (migrate == 0), pf.log_text()


def test_hostile_login_in_flight_at_sigterm_is_served_then_closed(pgfunnel, postgres):
    """A client accepted before SIGTERM, still logging in (md5 asked), may finish its login;
    between transactions it is then closed; the process exits."""
    pw = postgres.passwords["alice"]
    pf = start(pgfunnel, postgres)
    raw = pgwire.Connection(pgwire.open_socket("127.0.0.1", pf.port, 5))
    raw.send(pgwire.startup_message({"user": "alice", "database": "appdb"}))
    k, p = raw.read_message(5)
    assert k == "R"
    pf.signal(signal.SIGTERM)
    pf.wait_for_log(r"got SIGTERM")
    import hashlib
    import struct
    salt = p[4:8]
    assert struct.unpack("!I", p[:4])[0] == 5
    inner = hashlib.md5(pw.encode() + b"alice").hexdigest()
    outer = hashlib.md5(inner.encode() + salt).hexdigest()
    raw.send(pgwire.message(b"p", b"md5" + outer.encode() + b"\0"))
    kinds = []
    while True:
        k, p = raw.read_message(5)
        kinds.append(k)
        if k in ("Z", "E"):
            break
    assert kinds[-1] == "Z", kinds
    raw.send(pgwire.fe_query("select 11"))
    msgs = raw.read_until_ready(5)
    assert any(pgwire.token(k, p) == "D:11" for k, p in msgs), msgs
    k, p = raw.read_message(5)
    assert k == "E" and pgwire.decode_error(p)["C"] == "57P01"
    assert pf.wait(5) == 0
    raw.close()


def test_hostile_queued_client_gets_server_shutting_down(pgfunnel, postgres):
    pw = postgres.passwords["alice"]
    pf = start(pgfunnel, postgres, default_pool_size="1")
    a = pgwire.connect("127.0.0.1", pf.port, "alice", "appdb", password=pw)
    a.simple_query("begin")
    b = pgwire.connect("127.0.0.1", pf.port, "alice", "appdb", password=pw)
    b.send(pgwire.fe_query("select 1"))  # waits for the one server
    assert b.is_silent(0.5)
    pf.signal(signal.SIGINT)
    k, p = b.read_message(5)
    assert k == "E" and pgwire.decode_error(p)["M"] == "server shutting down"
    # Disconnect mid-transaction: the server is not reused; the process exits.
    a.abort()
    assert pf.wait(5) == 0
    b.close()


def test_hostile_suspend_queue_then_shutdown_and_reload(pgfunnel, postgres):
    """Connections queued during SUSPEND, then SHUTDOWN WAIT_FOR_CLIENTS (drains them), a
    RELOAD lowering pool_size during the shutdown, RESUME: nothing crashes, all ends."""
    pw = postgres.passwords["alice"]
    pf = start(pgfunnel, postgres, default_pool_size="4")
    intx = pgwire.connect("127.0.0.1", pf.port, "alice", "appdb", password=pw)
    intx.simple_query("begin")
    admin = psycopg.connect(host=pf.unix_socket_dir, port=pf.port, user="postgres",
                            password=ADMIN_PW, dbname="pgbouncer", autocommit=True,
                            prepare_threshold=None)
    admin.execute("SUSPEND")
    queued = []
    for i in range(5):
        s = pgwire.Connection(pgwire.open_socket("127.0.0.1", pf.port, 5))
        s.send(pgwire.startup_message({"user": "alice", "database": "appdb"}))
        if i % 2:
            s.abort()  # gone before it was ever accepted
        else:
            queued.append(s)
    admin.execute("SHUTDOWN WAIT_FOR_CLIENTS")
    params = dict(pf.params)
    params["default_pool_size"] = "1"
    pf.write_ini(params)
    admin.execute("RELOAD")
    admin.execute("RESUME")
    for s in queued:  # drained: asked for a password, then dropped by the test
        k, _ = s.read_message(5)
        assert k == "R"
        s.abort()
    pf.wait_for_log(r"took \d+ queued connections? from 127\.0\.0\.1:%d" % pf.port)
    assert intx.simple_query("select 4") == [("4",)]
    intx.simple_query("commit")
    assert pf.wait(10) == 0
    admin.close()
