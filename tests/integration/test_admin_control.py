"""The console's control commands and the signals, with real clients in flight.

PgBouncer's semantics (usage.html, "Process controlling commands" and "Signals"):
PAUSE / RESUME / SUSPEND / DISABLE / ENABLE / RECONNECT / WAIT_CLOSE / KILL / KILL_CLIENT /
RELOAD / SET / SHUTDOWN [WAIT_FOR_CLIENTS|WAIT_FOR_SERVERS], SIGUSR1 = PAUSE, SIGUSR2 = RESUME,
SIGHUP = RELOAD. Every test checks what clients and Postgres observe (answers held back then
delivered, backend pids in pg_stat_activity, SQLSTATEs) and what SHOW reports, not just tags.

Data clients and the console use pgwire (a query can be sent now and its answer read later);
each test uses its own role so pg_stat_activity counts only its own backends.
"""

import os
import signal
import threading
import socket
import time

import pytest

import pfhelpers
import pgwire

ADMIN_PW = "pg-super-secret"
BLOCKED = 0.6  # seconds a held-back answer must stay away
LONG = 10.0  # generous wait for things that must happen


# ---------------------------------------------------------------- helpers


class Admin:
    """One console session (pgwire): run() = send + answer; send()/answer() split for
    commands that answer later (PAUSE, WAIT_CLOSE)."""

    def __init__(self, pf, user="postgres", password=ADMIN_PW, host=None, dbname="pgbouncer"):
        self.conn = pgwire.connect(host or pf.host, pf.port, user, dbname, password)

    def send(self, sql):
        self.conn.send_query(sql)

    def pending(self, timeout):
        return not self.conn.is_silent(timeout)

    def answer(self, timeout=LONG):
        return self.conn.read_answer(timeout)

    def run(self, sql, timeout=LONG):
        """The command's tag (raises PgError for an ERROR)."""
        self.send(sql)
        tags, _, _ = self.answer(timeout)
        assert len(tags) == 1, tags
        return tags[0]

    def show(self, what):
        self.send("SHOW " + what)
        tags, cols, rows = self.answer()
        assert tags == ["SHOW"], tags
        return [dict(zip(cols, r)) for r in rows]

    def state(self):
        return {r["key"]: r["value"] for r in self.show("STATE")}

    def database(self, name):
        return [r for r in self.show("DATABASES") if r["name"] == name][0]

    def config(self, key):
        return [r for r in self.show("CONFIG") if r["key"] == key][0]["value"]

    def clients(self, user):
        return [r for r in self.show("CLIENTS") if r["user"] == user]

    def close(self):
        self.conn.close()


def error_of(fn, *args):
    """The PgError fn(*args) raises (fails if it raises none)."""
    with pytest.raises(pgwire.PgError) as exc:
        fn(*args)
    return exc.value


def client(pf, role, pw, dbname="appdb", app=None):
    return pgwire.connect(pf.host, pf.port, role, dbname, pw,
                          options={"application_name": app} if app else None)


def backend_pid(conn):
    return int(conn.simple_query("SELECT pg_backend_pid()")[0][0])


def backend_pids(cluster, role, dbname=None):
    """PIDs of role's backends in pg_stat_activity (optionally only those on dbname)."""
    sql = "SELECT pid FROM pg_stat_activity WHERE usename = %s"
    args = [role]
    if dbname:
        sql += " AND datname = %s"
        args.append(dbname)
    with cluster.connect(autocommit=True) as conn:
        return {r[0] for r in conn.execute(sql, args).fetchall()}


def wait_pids(cluster, role, expected, dbname=None, timeout=LONG):
    """Wait until role's backends are exactly expected; assert it."""
    got = pfhelpers.wait_for(lambda: backend_pids(cluster, role, dbname) == expected, timeout)
    assert got, "backends of %s: %r, expected %r" % (role, backend_pids(cluster, role, dbname),
                                                     expected)


def expect_killed(conn):
    """conn gets FATAL 57P01 and is closed."""
    err = pgwire.expect_error(conn, LONG)
    assert err is not None, "no error before ReadyForQuery"
    assert (err.severity, err.sqlstate) == ("FATAL", "57P01"), err.fields
    assert err.message == "admin forced disconnect", err.message  # PgBouncer's words
    assert pgwire.wait_closed(conn, LONG), "connection still open after FATAL"


class InThread:
    """Run fn() in a thread; result / error afterwards."""

    def __init__(self, fn):
        self.result = None
        self.error = None

        def run():
            try:
                self.result = fn()
            except BaseException as e:  # noqa: BLE001 - reported by join()
                self.error = e

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def running(self):
        return self.thread.is_alive()

    def join(self, timeout=LONG):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "still blocked after %.0fs" % timeout
        if self.error:
            raise self.error
        return self.result


def wait_queued(pf, db, role, n, what):
    """Wait until n clients of db/role wait for a server (SHOW POOLS cl_waiting)."""
    pfhelpers.wait_pool(pf, db, lambda r: r["cl_waiting"] == n, what, user=role, timeout=LONG)


def new_client_query(pf, role, pw, sql, dbname="appdb"):
    """Log in as a new client and run sql (in the calling thread)."""
    with client(pf, role, pw, dbname) as c:
        return c.simple_query(sql)


@pytest.fixture
def setup(proxy, postgres):
    """Factory: (pf, role, password) with a fresh role, pool_mode transaction."""
    def start(pool_size=2, **params):
        role, pw = pfhelpers.new_role(postgres, "pfctl")
        p = {"pool_mode": "transaction", "default_pool_size": pool_size}
        p.update(params)
        return proxy(params=p, userlist={role: pw}), role, pw
    return start


# ---------------------------------------------------------------- PAUSE / RESUME


def test_pause_waits_for_transaction_then_holds_queries_until_resume(setup, postgres):
    pf, role, pw = setup(pool_size=2)
    a, b = client(pf, role, pw), client(pf, role, pw)
    a.simple_query("BEGIN")
    pid_a = backend_pid(a)
    pid_b = backend_pid(b)  # served and released: an idle server
    assert pid_a != pid_b
    wait_pids(postgres, role, {pid_a, pid_b})
    adm, mon = Admin(pf), Admin(pf)

    adm.send("PAUSE")
    # The idle server is disconnected at once; the answer waits for A's transaction.
    wait_pids(postgres, role, {pid_a})
    assert not adm.pending(BLOCKED), "PAUSE answered while a transaction was open"
    assert mon.state()["paused"] == "yes"
    # B's next query gets no server.
    b.send_query("SELECT pg_backend_pid()")
    assert b.is_silent(BLOCKED), "a query ran during PAUSE"
    wait_queued(pf, "appdb", role, 1, "B queued")
    # A's transaction goes on, on its own backend, until it commits.
    assert backend_pid(a) == pid_a
    a.simple_query("COMMIT")
    assert adm.answer()[0] == ["PAUSE"]
    assert pfhelpers.pool_servers(pfhelpers.pool_row(pf, "appdb", role)) == 0
    wait_pids(postgres, role, set())
    # Still paused: B keeps waiting, a new query of A as well.
    a.send_query("SELECT 'a after'")
    assert b.is_silent(BLOCKED) and a.is_silent(0)

    assert adm.run("RESUME") == "RESUME"
    new_b = int(b.read_answer(LONG)[2][0][0])
    assert new_b not in (pid_a, pid_b)
    assert a.read_answer(LONG)[2] == [("a after",)]
    assert mon.state()["paused"] == "no"
    assert backend_pid(b) not in (pid_a, pid_b)


def test_pause_one_database_quoted_lowercase(setup, postgres):
    pf, role, pw = setup(pool_size=2)
    a = client(pf, role, pw, "appdb")
    c = client(pf, role, pw, "postgres")
    a.simple_query("SELECT 1")
    # A transaction on the other database does not delay PAUSE appdb.
    c.simple_query("BEGIN")
    pid_c = backend_pid(c)
    adm = Admin(pf)
    assert adm.run('pause "appdb";', timeout=5) == "PAUSE"
    wait_pids(postgres, role, set(), "appdb")
    assert adm.database("appdb")["paused"] == "1"
    assert adm.database("postgres")["paused"] == "0"
    assert adm.state()["paused"] == "no"  # only one database is paused
    a.send_query("SELECT 'held'")
    assert a.is_silent(BLOCKED), "a query on the paused database ran"
    # The other database is untouched: same backend, queries run.
    assert backend_pid(c) == pid_c
    assert c.simple_query("SELECT 'other db'") == [("other db",)]
    c.simple_query("COMMIT")
    # A client arriving meanwhile waits as well.
    t = InThread(lambda: new_client_query(pf, role, pw, "SELECT 'newcomer'"))
    wait_queued(pf, "appdb", role, 2, "A and the newcomer queued on the paused database")
    assert t.running(), "a new client of the paused database was served"

    assert adm.run("Resume appdb") == "RESUME"
    assert a.read_answer(LONG)[2] == [("held",)]
    assert t.join() == [("newcomer",)]
    assert adm.database("appdb")["paused"] == "0"


def test_pause_unknown_database(setup):
    pf, role, pw = setup()
    adm = Admin(pf)
    err = error_of(adm.run, "PAUSE no_such_db")
    assert (err.severity, err.sqlstate) == ("ERROR", "3D000"), err.fields
    assert adm.state()["paused"] == "no"


@pytest.mark.parametrize("cmd,words", [
    ("PAUSE", "cannot pause admin db"), ("RESUME", "cannot resume admin db"),
    ("DISABLE", "cannot disable admin db"), ("ENABLE", "cannot disable admin db"),
    ("RECONNECT", "cannot reconnect admin db"), ("KILL", "cannot kill admin db"),
    ("WAIT_CLOSE", "cannot wait in admin db")])
def test_commands_naming_the_console_are_refused(setup, postgres, cmd, words):
    """A command naming the console database (pgfunnel, or its alias pgbouncer) gets
    PgBouncer's words for it ("cannot pause admin db: pgbouncer"; SQLSTATE 42809, PgBouncer
    08P01), changes nothing, and the console goes on answering."""
    pf, role, pw = setup()
    adm = Admin(pf)
    for name in ("pgfunnel", "pgbouncer"):
        err = error_of(adm.run, "%s %s" % (cmd, name))
        assert (err.severity, err.sqlstate, err.message) == (
            "ERROR", "42809", "%s: %s" % (words, name)), err.fields
    assert adm.state()["paused"] == "no"
    assert adm.database("appdb")["paused"] == "0" and adm.database("appdb")["disabled"] == "0"
    assert new_client_query(pf, role, pw, "SELECT 'still'") == [("still",)]


# ---------------------------------------------------------------- SUSPEND


def test_suspend_stops_reading_sockets_until_resume(setup, postgres):
    pf, role, pw = setup(pool_size=2)
    a, b = client(pf, role, pw), client(pf, role, pw)
    a.simple_query("SELECT 1")
    # B's query is on the server when SUSPEND comes (it waits for an advisory lock the test
    # holds), and ends during SUSPEND: its answer must not be read from the server.
    key = 0x5e5 << 20 | os.getpid() & 0xfffff
    with postgres.connect(dbname="appdb", autocommit=True) as locker:  # locks are per database
        locker.execute("SELECT pg_advisory_lock(%s)", (key,))
        b.send_query("SELECT pg_advisory_xact_lock(%d), 'late'" % key)
        pfhelpers.wait_backends(postgres, "usename = %s AND state = 'active' AND "
                                "wait_event_type = 'Lock'", (role,),
                                "B's query waiting for the lock", timeout=LONG)
        adm = Admin(pf)
        assert adm.run("SUSPEND") == "SUSPEND"
        a.send_query("SELECT 'during suspend'")
        locker.execute("SELECT pg_advisory_unlock(%s)", (key,))
    # B's query is over: its answer waits in the server socket.
    pfhelpers.wait_backends(postgres, "usename = %s AND state = 'idle' AND "
                            "starts_with(query, 'SELECT pg_advisory_xact_lock(')", (role,),
                            "B's query finished on Postgres", timeout=LONG)
    assert a.is_silent(BLOCKED), "a client socket was read during SUSPEND"
    assert b.is_silent(0), "a server socket was read during SUSPEND"
    # The console stays usable.
    assert adm.state()["suspended"] == "yes"

    assert adm.run("RESUME") == "RESUME"
    assert a.read_answer(LONG)[2] == [("during suspend",)]
    assert b.read_answer(LONG)[2] == [("", "late")]
    assert adm.state() == {"active": "yes", "paused": "no", "suspended": "no"}


def tcp_send_queue(local, remote):
    """tx_queue of the loopback TCP socket local -> remote ((ip, port) pairs), from /proc."""
    def hexaddr(a):
        ip = socket.inet_aton(a[0])
        return "%08X:%04X" % (int.from_bytes(ip, "little"), a[1])
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[1] == hexaddr(local) and parts[2] == hexaddr(remote):
                return int(parts[4].split(":")[0], 16)
    return None


def wait_send_queue_stuck(sock, timeout=LONG):
    """Waits until the peer's (pgfunnel's) send queue towards sock holds bytes and has not
    moved over several polls: its socket is full, the client is not reading."""
    me, peer = sock.getsockname(), sock.getpeername()
    seen = []

    def stuck():
        seen.append(tcp_send_queue(peer, me))
        last = seen[-6:]
        return len(last) == 6 and last[0] and all(v == last[0] for v in last)
    assert pfhelpers.wait_for(stuck, timeout, interval=0.1), seen[-10:]


def test_suspend_waits_for_flush_then_drops_after_suspend_timeout(setup, postgres):
    # SUSPEND answers only once every socket buffer is flushed; a client that does not read
    # keeps its buffer full, so after suspend_timeout it is dropped and SUSPEND answers.
    pf, role, pw = setup(pool_size=2, suspend_timeout=2)
    slow = client(pf, role, pw)
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.send_query("SELECT repeat('x', 1024 * 1024) FROM generate_series(1, 20)")
    # pgfunnel's writes to the non-reading client are queued: it stopped reading the server,
    # whose backend now blocks writing the result.
    pfhelpers.wait_backends(postgres, "usename = %s AND wait_event = 'ClientWrite'", (role,),
                            "the backend blocked writing to pgfunnel", timeout=LONG)
    # ClientWrite can be a passing moment; the state meant here is pgfunnel's socket to the
    # client full (its send queue no longer moving), so that a write of pgfunnel's waits.
    wait_send_queue_stuck(slow.sock)
    well = client(pf, role, pw)
    adm = Admin(pf)
    t0 = time.monotonic()
    adm.send("SUSPEND")
    assert not adm.pending(1.0), "SUSPEND answered while a client's buffer was not flushed"
    assert adm.answer(timeout=6)[0] == ["SUSPEND"]
    assert 1.5 <= time.monotonic() - t0 <= 5.0
    assert adm.run("RESUME") == "RESUME"
    assert well.simple_query("SELECT 'still served'") == [("still served",)]
    assert pfhelpers.wait_for(lambda: "suspend_timeout" in pf.log_text(), LONG), pf.log_text()


# ---------------------------------------------------------------- DISABLE / ENABLE


def test_disable_refuses_new_logins_existing_clients_go_on(setup, postgres):
    pf, role, pw = setup(pool_size=1)
    a = client(pf, role, pw)
    pid_a = backend_pid(a)
    adm = Admin(pf)
    assert adm.run("DISABLE appdb") == "DISABLE"
    assert adm.database("appdb")["disabled"] == "1"
    err, closed = pgwire.login_refused(pf.host, pf.port, role, "appdb", pw)
    assert (err.severity, err.sqlstate) == ("FATAL", "57P03"), err.fields
    assert err.message == 'database "appdb" is disabled', err.message  # PgBouncer's words
    assert closed
    # Other databases and existing clients are not affected.
    with client(pf, role, pw, "postgres") as c:
        assert c.simple_query("SELECT 'other'") == [("other",)]
    a.simple_query("BEGIN")
    # Pool size 1 here: the pool's only server, still the same backend.
    assert backend_pid(a) == pid_a
    assert a.simple_query("SELECT 'still here'") == [("still here",)]
    a.simple_query("COMMIT")

    assert adm.run("enable appdb;") == "ENABLE"
    assert adm.database("appdb")["disabled"] == "0"
    assert new_client_query(pf, role, pw, "SELECT 'back'") == [("back",)]


def test_disable_needs_a_database(setup):
    pf, role, pw = setup()
    adm = Admin(pf)
    err = error_of(adm.run, "DISABLE")
    assert (err.severity, err.sqlstate) == ("ERROR", "42601"), err.fields
    assert new_client_query(pf, role, pw, "SELECT 1") == [("1",)]


# ---------------------------------------------------------------- RECONNECT / WAIT_CLOSE


def test_reconnect_idle_now_busy_on_release_and_wait_close(setup, postgres):
    pf, role, pw = setup(pool_size=2)
    a, b = client(pf, role, pw), client(pf, role, pw)
    b.simple_query("BEGIN")
    pid_b = backend_pid(b)
    pid_a = backend_pid(a)  # the second server, idle afterwards
    assert pid_a != pid_b
    wait_pids(postgres, role, {pid_a, pid_b})
    adm = Admin(pf)
    # Nothing tagged yet: WAIT_CLOSE answers at once.
    assert adm.run("WAIT_CLOSE") == "WAIT_CLOSE"

    assert adm.run("RECONNECT appdb") == "RECONNECT"
    # The idle server is closed now; the busy one stays with its transaction.
    wait_pids(postgres, role, {pid_b})
    adm.send("WAIT_CLOSE appdb")
    assert not adm.pending(BLOCKED), "WAIT_CLOSE answered while a tagged server was left"
    assert backend_pid(b) == pid_b
    # A's next transaction gets a fresh backend (not tagged: WAIT_CLOSE does not wait for it).
    new_a = backend_pid(a)
    assert new_a not in (pid_a, pid_b)
    assert not adm.pending(0.2)
    b.simple_query("COMMIT")
    assert adm.answer()[0] == ["WAIT_CLOSE"]
    assert pid_b not in backend_pids(postgres, role)
    new_b = backend_pid(b)
    assert new_b not in (pid_a, pid_b)
    assert adm.run("wait_close") == "WAIT_CLOSE"


def test_reconnect_all_databases(setup, postgres):
    pf, role, pw = setup(pool_size=2)
    a, c = client(pf, role, pw, "appdb"), client(pf, role, pw, "postgres")
    pid_a, pid_c = backend_pid(a), backend_pid(c)
    adm = Admin(pf)
    assert adm.run("RECONNECT") == "RECONNECT"
    wait_pids(postgres, role, set())
    assert adm.run("WAIT_CLOSE") == "WAIT_CLOSE"
    assert backend_pid(a) != pid_a and backend_pid(c) != pid_c


# ---------------------------------------------------------------- KILL / KILL_CLIENT


def test_kill_database_drops_its_clients_then_new_ones_wait(setup, postgres):
    pf, role, pw = setup(pool_size=3)
    idle, busy = client(pf, role, pw), client(pf, role, pw)
    other = client(pf, role, pw, "postgres")
    busy.simple_query("BEGIN")
    pid_busy = backend_pid(busy)
    idle.simple_query("SELECT 1")
    pid_other = backend_pid(other)
    adm = Admin(pf)
    assert adm.run("KILL appdb") == "KILL"
    expect_killed(idle)
    expect_killed(busy)
    wait_pids(postgres, role, set(), "appdb")
    assert pid_busy not in backend_pids(postgres, role)
    # The other database keeps its client and backend.
    assert backend_pid(other) == pid_other
    assert adm.database("appdb")["paused"] == "1"
    assert [c for c in adm.clients(role) if c["database"] == "appdb"] == []

    # A new client of the killed database waits until RESUME.
    t = InThread(lambda: new_client_query(pf, role, pw, "SELECT 'after kill'"))
    wait_queued(pf, "appdb", role, 1, "the new client queued on the killed database")
    assert t.running(), "a new client of a killed database was served before RESUME: %r" % (
        t.result if t.error is None else t.error)
    assert adm.run("RESUME appdb") == "RESUME"
    assert t.join() == [("after kill",)]


def test_kill_without_database_drops_everything_but_the_console(setup, postgres):
    pf, role, pw = setup(pool_size=2)
    a, c = client(pf, role, pw, "appdb"), client(pf, role, pw, "postgres")
    a.simple_query("BEGIN")
    backend_pid(a)
    backend_pid(c)
    adm = Admin(pf)
    assert adm.run("KILL") == "KILL"
    expect_killed(a)
    expect_killed(c)
    wait_pids(postgres, role, set())
    # The console session survives.
    assert adm.clients(role) == []
    t = InThread(lambda: new_client_query(pf, role, pw, "SELECT 'x'", "postgres"))
    wait_queued(pf, "postgres", role, 1, "the new client queued after KILL")
    assert t.running(), "a new client was served after KILL before RESUME"
    assert adm.run("RESUME") == "RESUME"
    assert t.join() == [("x",)]


def test_kill_client_by_id(setup, postgres):
    pf, role, pw = setup(pool_size=2)
    victim = client(pf, role, pw, app="victim")
    bystander = client(pf, role, pw, app="bystander")
    victim.simple_query("BEGIN")
    pid_victim = backend_pid(victim)
    pid_by = backend_pid(bystander)
    adm = Admin(pf)
    rows = [r for r in adm.clients(role) if r["application_name"] == "victim"]
    assert len(rows) == 1
    assert adm.run("KILL_CLIENT %s" % rows[0]["id"]) == "KILL_CLIENT"
    expect_killed(victim)
    # Its server was inside a transaction: it cannot go back to the pool.
    pfhelpers.wait_for(lambda: pid_victim not in backend_pids(postgres, role), LONG)
    assert pid_victim not in backend_pids(postgres, role)
    assert [r["application_name"] for r in adm.clients(role)] == ["bystander"]
    assert bystander.simple_query("SELECT 'fine'") == [("fine",)]
    # The bystander's (idle) server is not touched.
    assert backend_pids(postgres, role) == {pid_by}

    err = error_of(adm.run, "KILL_CLIENT 987654321")
    assert (err.severity, err.sqlstate) == ("ERROR", "42704"), err.fields
    assert [r["application_name"] for r in adm.clients(role)] == ["bystander"]


# ---------------------------------------------------------------- access rights


CONTROL_COMMANDS = ["PAUSE", "PAUSE appdb", "RESUME", "SUSPEND", "DISABLE appdb",
                    "ENABLE appdb", "RECONNECT", "WAIT_CLOSE", "KILL appdb", "KILL",
                    "KILL_CLIENT 1", "RELOAD", "SHUTDOWN", "SHUTDOWN WAIT_FOR_CLIENTS",
                    "SET default_pool_size = 7"]


def test_stats_user_may_not_control(setup, postgres):
    pf, role, pw = setup(stats_users="bob")
    a = client(pf, role, pw)
    a.simple_query("BEGIN")
    pid_a = backend_pid(a)
    bob = Admin(pf, "bob", postgres.passwords["bob"])
    for cmd in CONTROL_COMMANDS:
        err = error_of(bob.run, cmd)
        assert (err.severity, err.sqlstate, err.message) == (
            "ERROR", "42501", "admin access needed"), (cmd, err.fields)
    # Nothing happened: same backend, not paused / suspended, config unchanged, still up.
    assert bob.state() == {"active": "yes", "paused": "no", "suspended": "no"}
    assert backend_pid(a) == pid_a
    a.simple_query("COMMIT")
    assert bob.config("default_pool_size") == "2"
    assert new_client_query(pf, role, pw, "SELECT 'ok'") == [("ok",)]
    assert pf.is_running()


# ---------------------------------------------------------------- RELOAD / SET / SIGHUP


def hold_and_queue(pf, role, pw):
    """Pool size 1: A holds a transaction, B and C queue for a server. Returns (a, b, c, pid_a)."""
    a = client(pf, role, pw)
    a.simple_query("BEGIN")
    pid_a = backend_pid(a)
    b, c = client(pf, role, pw), client(pf, role, pw)
    for x in (b, c):
        x.send_query("BEGIN; SELECT pg_backend_pid()")
    assert b.is_silent(0.3) and c.is_silent(0)
    return a, b, c, pid_a


def check_three_backends(pf, postgres, role, a, b, c, pid_a):
    pid_b = int(b.read_answer(LONG)[2][0][0])
    pid_c = int(c.read_answer(LONG)[2][0][0])
    assert len({pid_a, pid_b, pid_c}) == 3
    wait_pids(postgres, role, {pid_a, pid_b, pid_c})
    p = pfhelpers.pool_row(pf, "appdb", role)
    assert (p["cl_waiting"], p["sv_active"]) == (0, 3), p
    for x in (a, b, c):
        x.simple_query("COMMIT")


def test_reload_pool_size_applies_to_running_pool(setup, postgres):
    pf, role, pw = setup(pool_size=1)
    adm = Admin(pf)
    a, b, c, pid_a = hold_and_queue(pf, role, pw)
    wait_queued(pf, "appdb", role, 2, "B and C queued")
    pf.params["default_pool_size"] = 3
    pf.write_ini(pf.params)
    assert adm.run("RELOAD") == "RELOAD"
    check_three_backends(pf, postgres, role, a, b, c, pid_a)
    assert adm.config("default_pool_size") == "3"


def test_reload_changed_connection_string_replaces_servers(setup, postgres):
    # The database entry now points at another Postgres database: idle servers go at once, a
    # busy one when released, and every client gets the new database from then on.
    pf, role, pw = setup(pool_size=2)
    adm = Admin(pf)
    idle = client(pf, role, pw)
    assert idle.simple_query("SELECT current_database()") == [("appdb",)]
    busy = client(pf, role, pw)
    busy.simple_query("BEGIN")
    pid_busy = backend_pid(busy)
    pf.databases["appdb"] = postgres.db_entry("postgres")
    pf.write_ini()
    assert adm.run("RELOAD") == "RELOAD"
    # The transaction keeps its backend (and database) until it ends.
    assert backend_pid(busy) == pid_busy
    assert busy.simple_query("SELECT current_database()") == [("appdb",)]
    busy.simple_query("COMMIT")
    assert idle.simple_query("SELECT current_database()") == [("postgres",)]
    assert busy.simple_query("SELECT current_database()") == [("postgres",)]
    with client(pf, role, pw) as fresh:
        assert fresh.simple_query("SELECT current_database()") == [("postgres",)]
    wait_pids(postgres, role, set(), "appdb")  # no backend of the old database is left


def test_reload_broken_file_keeps_old_config(setup, postgres):
    pf, role, pw = setup(pool_size=2)
    a = client(pf, role, pw)
    a.simple_query("BEGIN")
    pid_a = backend_pid(a)
    adm = Admin(pf)
    good = pfhelpers.read_text(pf.ini_path)
    params = dict(pf.params, default_pool_size="lots")
    pf.write_ini(params)
    err = error_of(adm.run, "RELOAD")
    assert (err.severity, err.sqlstate, err.message) == (
        "ERROR", "F0000", "RELOAD failed, see logs for details"), err.fields
    # The old config stays and the running clients go on.
    assert adm.config("default_pool_size") == "2"
    assert backend_pid(a) == pid_a
    a.simple_query("COMMIT")
    assert new_client_query(pf, role, pw, "SELECT 'alive'") == [("alive",)]
    pfhelpers.write_file(pf.ini_path, good)
    assert adm.run("RELOAD") == "RELOAD"


def test_set_pool_size_online(setup, postgres):
    pf, role, pw = setup(pool_size=1)
    adm = Admin(pf)
    a, b, c, pid_a = hold_and_queue(pf, role, pw)
    wait_queued(pf, "appdb", role, 2, "B and C queued")
    assert adm.run("SET default_pool_size = 3") == "SET"
    check_three_backends(pf, postgres, role, a, b, c, pid_a)
    assert adm.config("default_pool_size") == "3"


def test_set_errors_and_driver_settings(setup):
    pf, role, pw = setup(pool_size=2)
    adm = Admin(pf)
    err = error_of(adm.run, "SET listen_port = %d" % (pf.port + 1))
    assert (err.severity, err.sqlstate) == ("ERROR", "55P02"), err.fields
    err = error_of(adm.run, "SET no_such_parameter = 1")
    assert (err.severity, err.sqlstate) == ("ERROR", "42704"), err.fields
    assert adm.run("SET client_encoding = 'UTF8'") == "SET"
    assert adm.config("listen_port") == str(pf.port)
    assert adm.config("default_pool_size") == "2"
    # Quoted values work for reloadable parameters too.
    assert adm.run("set default_pool_size = '4';") == "SET"
    assert adm.config("default_pool_size") == "4"
    assert new_client_query(pf, role, pw, "SELECT 1") == [("1",)]


def test_sighup_pool_size_applies_to_running_pool(setup, postgres):
    pf, role, pw = setup(pool_size=1)
    adm = Admin(pf)
    a, b, c, pid_a = hold_and_queue(pf, role, pw)
    wait_queued(pf, "appdb", role, 2, "B and C queued")
    pf.params["default_pool_size"] = 3
    pf.write_ini(pf.params)
    n = pf.log_len()
    pf.signal(signal.SIGHUP)
    pf.wait_for_log(r"got SIGHUP", after=n)
    check_three_backends(pf, postgres, role, a, b, c, pid_a)
    assert adm.config("default_pool_size") == "3"


# ---------------------------------------------------------------- SIGUSR1 / SIGUSR2


def test_sigusr1_pauses_sigusr2_resumes(setup, postgres):
    pf, role, pw = setup(pool_size=2)
    a, b = client(pf, role, pw), client(pf, role, pw)
    a.simple_query("BEGIN")
    pid_a = backend_pid(a)
    pid_b = backend_pid(b)
    adm = Admin(pf)
    n = pf.log_len()
    pf.signal(signal.SIGUSR1)
    pf.wait_for_log(r"got SIGUSR1", after=n)
    assert adm.state()["paused"] == "yes"
    wait_pids(postgres, role, {pid_a})
    b.send_query("SELECT pg_backend_pid()")
    assert b.is_silent(BLOCKED), "a query ran after SIGUSR1"
    assert backend_pid(a) == pid_a
    a.simple_query("COMMIT")
    wait_pids(postgres, role, set())
    assert pfhelpers.pool_servers(pfhelpers.pool_row(pf, "appdb", role)) == 0
    assert b.is_silent(0.3)

    n = pf.log_len()
    pf.signal(signal.SIGUSR2)
    pf.wait_for_log(r"got SIGUSR2", after=n)
    assert int(b.read_answer(LONG)[2][0][0]) not in (pid_a, pid_b)
    assert adm.state()["paused"] == "no"


# ---------------------------------------------------------------- SHUTDOWN


def test_shutdown_immediate(setup, postgres):
    pf, role, pw = setup(pool_size=2)
    a = client(pf, role, pw)
    a.simple_query("BEGIN")
    pid_a = backend_pid(a)
    adm = Admin(pf)
    adm.send("SHUTDOWN")
    tags, _, _ = adm.answer()
    assert tags == ["SHUTDOWN"]
    assert pf.wait(LONG) == 0
    assert pgwire.wait_closed(a, LONG)
    wait_pids(postgres, role, set())
    assert pid_a not in backend_pids(postgres, role)


def test_shutdown_wait_for_clients(setup, postgres):
    pf, role, pw = setup(pool_size=2)
    a = client(pf, role, pw)
    assert a.simple_query("SELECT 1") == [("1",)]
    # In a transaction: an idle client would be closed at once (pgfunnel, beyond PgBouncer).
    a.simple_query("BEGIN")
    adm = Admin(pf)
    n = pf.log_len()
    assert adm.run("SHUTDOWN WAIT_FOR_CLIENTS") == "SHUTDOWN"
    pf.wait_for_log(r"SHUTDOWN WAIT_FOR_CLIENTS requested", after=n)
    assert pf.is_running(), "exited while a client was connected"
    # No new client over TCP ...
    try:
        c = pgwire.connect(pf.host, pf.port, role, "appdb", pw, timeout=5)
    except pgwire.PgError as e:
        assert (e.severity, e.sqlstate) == ("FATAL", "57P01"), e.fields
    except (OSError, pgwire.ProtocolError):
        pass
    else:
        c.close()
        raise AssertionError("a new TCP client was accepted after SHUTDOWN WAIT_FOR_CLIENTS")
    # ... but the console over the unix socket still works, and does not keep it alive.
    unix = Admin(pf, host=pf.unix_socket_dir)
    assert [r["user"] for r in unix.clients(role)] == [role]
    # The connected client goes on.
    assert a.simple_query("SELECT 'still served'") == [("still served",)]
    assert pf.is_running()
    a.close()
    assert pf.wait(LONG) == 0


def test_shutdown_wait_for_servers(setup, postgres):
    pf, role, pw = setup(pool_size=2)
    a = client(pf, role, pw)
    a.simple_query("BEGIN")
    pid_a = backend_pid(a)
    adm = Admin(pf)
    n = pf.log_len()
    assert adm.run("shutdown wait_for_servers;") == "SHUTDOWN"
    pf.wait_for_log(r"SHUTDOWN wait_for_servers requested", after=n)
    assert backend_pid(a) == pid_a
    assert pf.is_running(), "exited while a server was in a transaction"
    a.simple_query("COMMIT")
    assert pf.wait(LONG) == 0
    wait_pids(postgres, role, set())
