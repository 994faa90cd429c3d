"""Red team of the login path after the client's login-only and console flags moved into its
cold part (pf_client_cold_t: method, auth_step, tls_negotiated, auth_lookup, admin,
admin_can_write, admin_kill_self) and db->client_conns became counted from the startup packet's
database lookup to the close (no db_counted flag).

Hostile clients: messages pipelined behind the password and the SCRAM final (and before the
password), SSLRequest twice, GSSENCRequest then SSLRequest, a second StartupMessage after the
login, CancelRequests mid-login; many clients leaving at every step of SCRAM and of an
auth_query lookup at once; the console as admin and as a stats_users-only user (write commands,
KILL_CLIENT of itself, of a client mid-lookup and mid-exchange, pipelined commands behind the
console's password, SHOW while others are mid-login); max_db_client_connections refusals and
every other refusal (DISABLE, PAUSE, a database removed and re-added by RELOAD, wrong password,
unknown user, SHUTDOWN WAIT_FOR_CLIENTS, max_client_conn) with the counter checked exactly while
clients are held and back to 0 afterwards, and N logins admitted again.

With PGFUNNEL_SANITIZED=1 any ASan/UBSan/LeakSanitizer report fails the test that started the
instance (conftest's pgfunnel fixture), as does an instance that had to be SIGKILLed."""

import concurrent.futures
import hashlib
import os
import random
import socket
import struct
import threading

import pytest

import pfhelpers
import pgwire

DEADLINE = 15.0
AUTH_PW = "l2-auth-pw"
ADMIN_PW = "pg-super-secret"
STATS_USER = "l2stats"
STATS_PW = "l2-stats-pw"
GATE = 4242427
CONSOLE_DBS = ("pgbouncer", "pgfunnel")
DB_LIMIT = "client connections exceeded (max_db_client_connections)"
CONN_LIMIT = "no more connections allowed (max_client_conn)"
SSL_REQ = struct.pack("!II", 8, 80877103)
GSS_REQ = struct.pack("!II", 8, 80877104)


def cancel_pkt(pid, key):
    return struct.pack("!IIII", 16, 80877102, pid, key)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def roles(postgres):
    """An md5 role and a SCRAM role (both in the auth_file), an auth_user, two looked-up roles
    (never in the auth_file; md5 and SCRAM in pg_authid), and pfl2.gated(): auth_query's
    function, which waits on an advisory lock the test may hold (Gate)."""
    tag = "%d_%d" % (random.randrange(10 ** 6), os.getpid())

    class R:
        pass

    r = R()
    r.md5, r.scram, r.auth = "l2m_" + tag, "l2s_" + tag, "l2a_" + tag
    r.lu_md5, r.lu_scram = "l2lm_" + tag, "l2ls_" + tag
    r.pw = {r.md5: "md5pw-" + tag, r.scram: "scrampw-" + tag, r.auth: AUTH_PW,
            r.lu_md5: "lumd5-" + tag, r.lu_scram: "luscram-" + tag}
    with postgres.connect(autocommit=True) as conn:
        conn.execute("CREATE ROLE %s LOGIN PASSWORD '%s'" % (r.scram, r.pw[r.scram]))
        conn.execute("CREATE ROLE %s LOGIN PASSWORD '%s'" % (r.lu_scram, r.pw[r.lu_scram]))
        conn.execute("CREATE ROLE %s LOGIN PASSWORD '%s'" % (r.auth, AUTH_PW))
        conn.execute("SET password_encryption = 'md5'")
        conn.execute("CREATE ROLE %s LOGIN PASSWORD '%s'" % (r.md5, r.pw[r.md5]))
        conn.execute("CREATE ROLE %s LOGIN PASSWORD '%s'" % (r.lu_md5, r.pw[r.lu_md5]))
    with postgres.connect(dbname="appdb", autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS pfl2")
        conn.execute("""CREATE OR REPLACE FUNCTION pfl2.gated(p text)
            RETURNS TABLE(u text, p2 text) LANGUAGE plpgsql SECURITY DEFINER
            SET search_path = pg_catalog AS $$
            BEGIN
              PERFORM pg_advisory_xact_lock_shared(%d);
              RETURN QUERY SELECT rolname::text, rolpassword FROM pg_authid WHERE rolname = p;
            END $$""" % GATE)
        conn.execute("GRANT USAGE ON SCHEMA pfl2 TO %s" % r.auth)
        conn.execute("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA pfl2 TO %s" % r.auth)
    yield r


def userlist(roles):
    return {roles.md5: roles.pw[roles.md5], roles.scram: roles.pw[roles.scram],
            roles.auth: AUTH_PW, STATS_USER: STATS_PW}


LOOKUP = {"auth_user": None, "auth_query": "SELECT u, p2 FROM pfl2.gated($1)"}


def lookup_params(roles, **extra):
    p = dict(LOOKUP, auth_user=roles.auth)
    p.update(extra)
    return p


class Gate:
    """Holds the advisory lock pfl2.gated() waits on: lookups hang while closed."""

    def __init__(self, postgres):
        self.conn = postgres.connect(dbname="appdb", autocommit=True)
        self.closed = False

    def close(self):
        self.conn.execute("SELECT pg_advisory_lock(%d)" % GATE)
        self.closed = True

    def open(self):
        if self.closed:
            self.conn.execute("SELECT pg_advisory_unlock(%d)" % GATE)
            self.closed = False

    def end(self):
        self.open()
        self.conn.close()


# ---------------------------------------------------------------- wire helpers


def raw(pf, host=None):
    return pgwire.Connection(pgwire.open_socket(host or pf.host, pf.port, DEADLINE))


def read_auth(conn):
    """The next Authentication request (code, data); PgError for an ErrorResponse."""
    while True:
        kind, payload = conn.read_message(DEADLINE)
        if kind == "E":
            raise pgwire.PgError(pgwire.parse_fields(payload))
        if kind == "N":
            continue
        assert kind == "R", (kind, payload)
        return struct.unpack("!I", payload[:4])[0], payload[4:]


def read_to_ready(conn):
    """Messages up to ReadyForQuery (returned); PgError for an ErrorResponse."""
    out = []
    while True:
        kind, payload = conn.read_message(DEADLINE)
        out.append((kind, payload))
        if kind == "K":
            conn.backend_key = struct.unpack("!II", payload[:8])
        if kind == "E":
            raise pgwire.PgError(pgwire.parse_fields(payload))
        if kind == "Z":
            return out


def password_msg(code, data, user, pw):
    if code == 5:
        inner = hashlib.md5(pw.encode() + user.encode()).hexdigest()
        return pgwire.message(b"p", b"md5" + hashlib.md5(inner.encode() + data[:4])
                              .hexdigest().encode() + b"\0")
    assert code == 3, code
    return pgwire.message(b"p", pw.encode() + b"\0")


def sasl_initial(first, mech=b"SCRAM-SHA-256"):
    return pgwire.message(b"p", mech + b"\0" + struct.pack("!i", len(first)) + first)


def error_then_closed(conn, timeout=DEADLINE):
    err = pgwire.expect_error(conn, timeout)
    assert err is not None, "ReadyForQuery instead of an error"
    assert pgwire.wait_closed(conn, timeout), "connection stayed open after %s" % err.fields
    return err


def login_steps(conn, user, db, pw, tail=b""):
    """Drives a login (whatever method pgfunnel asks for), yielding a step name before each
    next action; tail goes out in the same write as the last message the client sends."""
    conn.send(pgwire.startup_message({"user": user, "database": db}))
    yield "startup-sent"
    code, data = read_auth(conn)
    yield "auth-requested"
    if code in (3, 5):
        conn.send(password_msg(code, data, user, pw) + tail)
        yield "password-sent"
    elif code == 10:
        scram = pgwire._Scram(pw)
        conn.send(sasl_initial(scram.client_first().encode()))
        yield "initial-sent"
        code, data = read_auth(conn)
        assert code == 11, code
        yield "server-first-read"
        conn.send(pgwire.message(b"p", scram.client_final(data.decode()).encode()) + tail)
        yield "final-sent"
        code, data = read_auth(conn)
        assert code == 12, code
        scram.verify_server_final(data.decode())
    else:
        assert code == 0, code
        if tail:
            conn.send(tail)
        read_to_ready(conn)
        yield "logged-in"
        return
    code, _ = read_auth(conn)
    assert code == 0, code
    read_to_ready(conn)
    yield "logged-in"


def login(pf, user, pw, db="appdb", tail=b"", host=None):
    conn = raw(pf, host)
    for _ in login_steps(conn, user, db, pw, tail):
        pass
    return conn


def run_to(pf, user, pw, target, db="appdb"):
    """A connection left at step target of its login (the generator, to go on)."""
    conn = raw(pf)
    steps = login_steps(conn, user, db, pw)
    for step in steps:
        if step == target:
            return conn, steps
    raise AssertionError("login of %s never reached %s" % (user, target))


def finish(steps):
    for _ in steps:
        pass


def leave(conn, how):
    if how == "rst":
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    else:
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    conn.sock.close()


def query_ok(conn, sql="SELECT 1", want=(("1",),)):
    assert conn.simple_query(sql) == [tuple(r) for r in want]


def alive(pf, user, pw, db="appdb"):
    conn = login(pf, user, pw, db)
    try:
        query_ok(conn, "SELECT 42", [("42",)])
    finally:
        conn.close()


class Console:
    """A console session over pgwire."""

    def __init__(self, pf, user="postgres", pw=ADMIN_PW, db="pgbouncer", host=None):
        self.conn = pgwire.connect(host or pf.host, pf.port, user, db, pw, timeout=DEADLINE)

    def run(self, sql):
        """(tags, rows as dicts); PgError for an error (the session stays)."""
        self.conn.send_query(sql)
        tags, cols, rows = self.conn.read_answer(DEADLINE)
        return tags, [dict(zip(cols, r)) for r in rows]

    def rows(self, sql):
        return self.run(sql)[1]

    def close(self):
        self.conn.close()


def db_conns(pf, name, console=None):
    rows = console.rows("SHOW DATABASES") if console else pfhelpers.show(pf, "DATABASES")
    for r in rows:
        if r["name"] == name or (name in CONSOLE_DBS and r["name"] in CONSOLE_DBS):
            return int(r["current_client_connections"])
    return None


def wait_db_conns(pf, name, want, console=None, timeout=DEADLINE):
    got = [None]

    def ok():
        got[0] = db_conns(pf, name, console)
        return got[0] == want

    pfhelpers.wait_until(ok, timeout, "%s current_client_connections == %r" % (name, want),
                         lambda: "last: %r; SHOW SOCKETS: %r" % (
                             got[0], [(r["type"], r["user"], r["database"], r["state"])
                                      for r in pfhelpers.show(pf, "SOCKETS")]))


def login_sockets(pf):
    return [r for r in pfhelpers.show(pf, "SOCKETS") if r["state"] == "cl_login"]


def settled(pf, dbs=("appdb",)):
    """No client left logging in, and every listed database's count back to 0."""
    pfhelpers.wait_until(lambda: not login_sockets(pf), DEADLINE, "no cl_login socket",
                         lambda: repr(login_sockets(pf)))
    for d in dbs:
        wait_db_conns(pf, d, 0)


def refused(pf, user, db, pw, host=None):
    """The PgError of a refused login (the peer must close after it)."""
    err, closed = pgwire.login_refused(host or pf.host, pf.port, user, db, pw, timeout=DEADLINE)
    assert closed, err.fields
    return err


def parallel(n, fn):
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(n, 32)) as ex:
        return list(ex.map(fn, range(n)))


def my_client_id(console):
    port = console.conn.sock.getsockname()[1]
    ids = [r["id"] for r in console.rows("SHOW CLIENTS")
           if r["database"] in CONSOLE_DBS and int(r["port"]) == port]
    assert len(ids) == 1, ids
    return ids[0]


# ---------------------------------------------------------------- pipelining


@pytest.mark.parametrize("auth_type", ["md5", "plain", "scram-sha-256"])
def test_queries_pipelined_behind_the_last_auth_message(proxy, postgres, roles, auth_type):
    """Queries (simple and extended) in the same write as the password / SCRAM final: answered
    in order once the login is done, on a pool with no welcome yet and on a warm one, for a
    user of the auth_file and one found by auth_query; Terminate there closes cleanly; a Query
    before the password is a protocol error. No count is left behind."""
    cold = ["cold%d" % i for i in range(4)]
    pf = proxy(params=lookup_params(roles, auth_type=auth_type, pool_mode="transaction"),
               databases={d: postgres.db_entry("appdb") for d in cold},
               userlist=userlist(roles))
    file_user = roles.scram if auth_type == "scram-sha-256" else roles.md5
    lu_user = roles.lu_scram if auth_type == "scram-sha-256" else roles.lu_md5
    tail = (pgwire.fe_query("SELECT 7") + pgwire.fe_parse("SELECT $1::int + 1") +
            pgwire.fe_bind(params=["41"]) + pgwire.fe_execute() + pgwire.fe_sync() +
            pgwire.fe_query("SELECT 9"))
    n_cold = 0
    for user in (file_user, lu_user):
        for db in (cold[n_cold], "appdb", cold[n_cold + 1], "appdb"):
            conn = login(pf, user, roles.pw[user], db, tail=tail)
            rows = []
            for _ in range(3):
                for kind, payload in conn.read_until_ready(DEADLINE):
                    assert kind != "E", pgwire.parse_fields(payload)
                    if kind == "D":
                        rows.append(pgwire.decode_data_row(payload))
            assert rows == [("7",), ("42",), ("9",)], rows
            query_ok(conn)
            conn.close()
        n_cold += 2
    # Terminate right behind the password: a clean close, nothing answered after the login.
    for user in (file_user, lu_user):
        conn = login(pf, user, roles.pw[user], tail=pgwire.fe_terminate())
        assert pgwire.wait_closed(conn, DEADLINE)
    # A Query pipelined with the startup packet, before any password: 08P01.
    for user in (file_user, lu_user, "nosuch_" + file_user):
        conn = raw(pf)
        conn.send(pgwire.startup_message({"user": user, "database": "appdb"}) +
                  pgwire.fe_query("SELECT 1"))
        try:
            read_auth(conn)
            err = error_then_closed(conn)
        except pgwire.PgError as e:
            err = e
        assert err.sqlstate == "08P01", err.fields
        conn.sock.close()
    settled(pf, ["appdb"] + cold)
    alive(pf, file_user, roles.pw[file_user])


def test_console_login_with_pipelined_commands(proxy, roles):
    """The console's password (plain auth: startup and password in one write) with commands
    behind it, then KILL_CLIENT of its own id pipelined with one more command: the KILL is
    answered, the session closed with 57P01, the command after it never runs; a stats user's
    KILL_CLIENT of itself is refused (42501) and its session goes on."""
    pf = proxy(params={"auth_type": "plain", "stats_users": STATS_USER},
               userlist=userlist(roles))
    for db in ("pgbouncer", "pgfunnel"):
        conn = raw(pf)
        conn.send(pgwire.startup_message({"user": "postgres", "database": db}) +
                  pgwire.message(b"p", ADMIN_PW.encode() + b"\0") +
                  pgwire.fe_query("SHOW VERSION") + pgwire.fe_query("SHOW DATABASES") +
                  pgwire.fe_query("SHOW CLIENTS;;") + pgwire.fe_query("SHOW LISTS"))
        code, _ = read_auth(conn)
        assert code == 3
        code, _ = read_auth(conn)
        assert code == 0
        read_to_ready(conn)
        tags = []
        for _ in range(4):
            for kind, payload in conn.read_until_ready(DEADLINE):
                assert kind != "E", pgwire.parse_fields(payload)
                if kind == "C":
                    tags.append(pgwire.decode_command_complete(payload))
        assert tags == ["SHOW"] * 4, tags
        conn.close()
    # KILL_CLIENT of itself, with a command pipelined behind.
    for round_ in range(3):
        con = Console(pf)
        me = my_client_id(con)
        con.conn.send(pgwire.fe_query("KILL_CLIENT %s" % me) + pgwire.fe_query("SHOW VERSION"))
        msgs = []
        try:
            while True:
                kind, payload = con.conn.read_message(DEADLINE)
                msgs.append((kind, payload))
                if kind == "E":
                    break
        except pgwire.ProtocolError:
            pass
        tags = [pgwire.decode_command_complete(p) for k, p in msgs if k == "C"]
        errs = [pgwire.parse_fields(p) for k, p in msgs if k == "E"]
        assert tags == ["KILL_CLIENT"], msgs
        assert errs and errs[0]["C"] == "57P01" and errs[0]["S"] == "FATAL", errs
        assert pgwire.wait_closed(con.conn, DEADLINE)
    # A stats user may not kill anyone, itself included.
    st = Console(pf, STATS_USER, STATS_PW)
    me = my_client_id(st)
    with pytest.raises(pgwire.PgError) as ei:
        st.run("KILL_CLIENT %s" % me)
    assert ei.value.sqlstate == "42501", ei.value.fields
    assert st.run("SHOW VERSION")[0] == ["SHOW"]
    st.close()
    settled(pf)
    wait_db_conns(pf, "pgbouncer", 1)  # the asking console only


# ---------------------------------------------------------------- startup packet oddities


def test_startup_packet_oddities(proxy, postgres, roles):
    """SSLRequest twice (apart and in one write), GSSENCRequest then SSLRequest then a login,
    a second StartupMessage after the login and mid-exchange, CancelRequests on fresh
    connections while others are mid-login (a random key; the key of a client running a query:
    it is cancelled), a CancelRequest with bytes behind it."""
    pf = proxy(params={"auth_type": "md5"}, userlist=userlist(roles))
    u, pw = roles.md5, roles.pw[roles.md5]
    # SSLRequest twice.
    for together in (False, True):
        conn = raw(pf)
        if together:
            conn.send(SSL_REQ + SSL_REQ)
        else:
            conn.send(SSL_REQ)
            assert pgwire.recv_exact(conn.sock, 1) == b"N"
            conn.send(SSL_REQ)
        if together:
            assert pgwire.recv_exact(conn.sock, 1) == b"N"
        err = error_then_closed(conn)
        assert err.sqlstate == "08P01", err.fields
    # GSSENCRequest, then SSLRequest, then a login (in one write and step by step).
    conn = raw(pf)
    conn.send(GSS_REQ)
    assert pgwire.recv_exact(conn.sock, 1) == b"N"
    conn.send(SSL_REQ)
    assert pgwire.recv_exact(conn.sock, 1) == b"N"
    finish(login_steps(conn, u, "appdb", pw))
    query_ok(conn)
    conn.close()
    conn = raw(pf)
    conn.send(GSS_REQ + SSL_REQ)
    assert pgwire.recv_exact(conn.sock, 2) == b"NN"
    finish(login_steps(conn, u, "appdb", pw))
    query_ok(conn)
    # A second StartupMessage after the login.
    conn.send(pgwire.startup_message({"user": u, "database": "appdb"}))
    assert error_then_closed(conn).sqlstate == "08P01"
    # ... and mid-exchange (instead of the password), and an SSLRequest there.
    for second in (pgwire.startup_message({"user": u, "database": "appdb"}), SSL_REQ,
                   cancel_pkt(1, 2)):
        conn, steps = run_to(pf, u, pw, "auth-requested")
        conn.send(second)
        assert error_then_closed(conn).sqlstate == "08P01"
    # CancelRequests on fresh connections while clients are mid-login: nothing happens to
    # them, they log in.
    mid = [run_to(pf, u, pw, "auth-requested") for _ in range(4)]
    for _ in range(10):
        pgwire.cancel_request(pf.host, pf.port, random.getrandbits(32), random.getrandbits(32))
    for conn, steps in mid:
        finish(steps)
        query_ok(conn)
        conn.close()
    # A cancel for a running query, sent while another client is mid-login.
    victim = login(pf, u, pw)
    half, steps = run_to(pf, u, pw, "auth-requested")
    victim.send_query("SELECT pg_sleep(30)")
    pfhelpers.wait_query_running(postgres, "SELECT pg_sleep(30)", user=u)
    pgwire.cancel_request(pf.host, pf.port, *victim.backend_key)
    with pytest.raises(pgwire.PgError) as ei:
        victim.read_result()
    assert ei.value.sqlstate == "57014", ei.value.fields
    query_ok(victim)
    finish(steps)
    query_ok(half)
    # A CancelRequest with more bytes behind it: the connection just closes.
    s = pgwire.open_socket(pf.host, pf.port, DEADLINE)
    s.sendall(cancel_pkt(*victim.backend_key) + pgwire.startup_message({"user": u,
                                                                         "database": "appdb"}))
    assert pgwire.wait_closed(pgwire.Connection(s), DEADLINE)
    s.close()
    query_ok(victim)
    victim.close()
    half.close()
    settled(pf)


# ---------------------------------------------------------------- many leaving at once


def test_many_clients_leave_mid_scram_and_mid_lookup(proxy, postgres, roles):
    """With lookups held at a gate: clients parked after their startup (mid-lookup and
    mid-SCRAM), after client-first, after the server-first; SHOW CLIENTS / DATABASES / POOLS /
    SOCKETS / FDS meanwhile; the count is exactly the number of clients that sent a startup
    packet. Then all leave at once (FIN and RST) while the lookups still hang: the count goes
    to exactly 0, and both kinds of users log in again. Then 48 threads leave at random steps
    with the gate open, while a console keeps asking."""
    pf = proxy(params=lookup_params(roles, auth_type="scram-sha-256", default_pool_size=30,
                                    stats_users=STATS_USER),
               userlist=userlist(roles))
    fu, lu = roles.scram, roles.lu_scram
    alive(pf, fu, roles.pw[fu])
    alive(pf, lu, roles.pw[lu])
    gate = Gate(postgres)
    try:
        gate.close()
        held = []
        # Mid-lookup: the startup is sent, the lookup waits at the gate.
        for _ in range(6):
            conn = raw(pf)
            conn.send(pgwire.startup_message({"user": lu, "database": "appdb"}))
            held.append(conn)
        for target in ("auth-requested", "initial-sent", "server-first-read"):
            for _ in range(3):
                held.append(run_to(pf, fu, roles.pw[fu], target)[0])
        # Half a startup packet: not counted (no database yet).
        half = raw(pf)
        half.send_partial(pgwire.startup_message({"user": fu, "database": "appdb"}), 9)
        con = Console(pf)
        st = Console(pf, STATS_USER, STATS_PW)
        wait_db_conns(pf, "appdb", len(held), console=con)
        pfhelpers.wait_query_running(postgres, "SELECT u, p2 FROM pfl2.gated($1)", count=6)
        for c in (con, st):
            for what in ("CLIENTS", "DATABASES", "POOLS", "SOCKETS", "USERS", "STATS",
                         "SERVERS", "LISTS"):
                c.run("SHOW " + what)
        assert con.run("SHOW FDS")[0] == ["SHOW"]
        with pytest.raises(pgwire.PgError):
            st.run("SHOW FDS")
        # The looked-up clients are listed in the auth pool; the others are logging in.
        socks = con.rows("SHOW SOCKETS")
        assert len([r for r in socks if r["state"] == "cl_login"]) >= 9 + 1, socks
        assert db_conns(pf, "appdb", con) == len(held)
        for i, conn in enumerate(held):
            leave(conn, "rst" if i % 2 else "fin")
        half.sock.close()
        wait_db_conns(pf, "appdb", 0, console=con)
        pfhelpers.wait_until(lambda: not [r for r in con.rows("SHOW SOCKETS")
                                          if r["state"] == "cl_login"],
                             DEADLINE, "no client logging in")
        assert db_conns(pf, "appdb", st) == 0
        con.close()
        st.close()
        gate.open()
        alive(pf, fu, roles.pw[fu])
        alive(pf, lu, roles.pw[lu])
    finally:
        gate.end()

    steps = ("startup-sent", "auth-requested", "initial-sent", "server-first-read",
             "final-sent", "logged-in")
    stop = threading.Event()
    errors = []

    def asker():
        try:
            c = Console(pf)
            while not stop.is_set():
                c.run("SHOW DATABASES")
                c.run("SHOW CLIENTS")
                c.run("SHOW SOCKETS")
            c.close()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=asker)
    t.start()

    def one(i):
        rnd = random.Random(i)
        user = (fu, lu, "nosuch_l2_%d" % i)[i % 3]
        target = rnd.choice(steps)
        conn = raw(pf)
        try:
            for step in login_steps(conn, user, "appdb", roles.pw.get(user, "x")):
                if step == target:
                    break
        except pgwire.PgError as e:
            assert user.startswith("nosuch") and e.sqlstate == "28P01", e.fields
        leave(conn, rnd.choice(("fin", "rst")))

    try:
        parallel(48, one)
    finally:
        stop.set()
        t.join(DEADLINE)
    assert not errors, errors
    settled(pf)
    alive(pf, fu, roles.pw[fu])
    alive(pf, lu, roles.pw[lu])


# ---------------------------------------------------------------- console


WRITE_COMMANDS = ["PAUSE", "PAUSE appdb", "RESUME", "DISABLE appdb", "ENABLE appdb", "KILL appdb",
                  "KILL_CLIENT 1", "RELOAD", "SET verbose = 1", "SUSPEND", "RECONNECT",
                  "RECONNECT appdb", "WAIT_CLOSE", "SHUTDOWN", "SHUTDOWN WAIT_FOR_CLIENTS"]


def test_console_users_and_kill_client_mid_login(proxy, postgres, roles):
    """Admin and stats_users-only sessions: every write command of a stats user is refused
    with 42501 and its session goes on (the pooler too); a user in neither list is refused at
    login. KILL_CLIENT of a client mid-lookup closes it (57P01) and frees its count; a client
    mid-exchange (not in any pool) is not found (42704) and logs in afterwards; KILL_CLIENT of
    another console."""
    pf = proxy(params=lookup_params(roles, auth_type="md5", stats_users=STATS_USER),
               userlist=userlist(roles))
    adm = Console(pf)
    st = Console(pf, STATS_USER, STATS_PW)
    for cmd in WRITE_COMMANDS:
        with pytest.raises(pgwire.PgError) as ei:
            st.run(cmd)
        assert ei.value.sqlstate == "42501", (cmd, ei.value.fields)
        assert st.run("SHOW VERSION")[0] == ["SHOW"]
    assert pf.is_running()
    assert adm.rows("SHOW DATABASES")
    # A user in neither list, and a wrong console password.
    for user, pw in ((roles.md5, roles.pw[roles.md5]), (STATS_USER, "wrong")):
        for db in ("pgbouncer", "pgfunnel"):
            err = refused(pf, user, db, pw)
            assert err.sqlstate in ("42501", "28P01"), err.fields
    alive(pf, roles.md5, roles.pw[roles.md5])
    gate = Gate(postgres)
    try:
        gate.close()
        lu = roles.lu_md5
        looking = []
        for _ in range(3):
            conn = raw(pf)
            conn.send(pgwire.startup_message({"user": lu, "database": "appdb"}))
            looking.append(conn)
        exch, steps = run_to(pf, roles.md5, roles.pw[roles.md5], "auth-requested")
        wait_db_conns(pf, "appdb", 4, console=adm)
        by_port = {c.sock.getsockname()[1]: c for c in looking}

        def lookups_listed():
            rows = [r for r in adm.rows("SHOW CLIENTS") if r["user"] == lu]
            return rows if len(rows) == 3 else None

        rows = pfhelpers.wait_until(lookups_listed, DEADLINE, "three lookups listed")
        assert sorted(int(r["port"]) for r in rows) == sorted(by_port), rows
        victims = [by_port[int(r["port"])] for r in rows[:2]]
        survivor = by_port[int(rows[2]["port"])]
        for r in rows[:2]:
            assert adm.run("KILL_CLIENT %s" % r["id"])[0] == ["KILL_CLIENT"]
        for conn in victims:
            err = error_then_closed(conn)
            assert err.sqlstate == "57P01", err.fields
        wait_db_conns(pf, "appdb", 2, console=adm)
        assert survivor.is_silent(0.2)
        # The client mid-exchange is in no pool: not found; it still logs in.
        login_ids = [r["id"] for r in adm.rows("SHOW SOCKETS")
                     if r["state"] == "cl_login" and r["user"] == roles.md5]
        assert len(login_ids) == 1, login_ids
        try:
            adm.run("KILL_CLIENT %s" % login_ids[0])
            mid_killed = True
        except pgwire.PgError as e:
            assert e.sqlstate == "42704", e.fields
            mid_killed = False
        if mid_killed:
            assert error_then_closed(exch).sqlstate == "57P01"
        else:
            finish(steps)
            query_ok(exch)
        exch.close()
        gate.open()
        # The lookup left logs in.
        code, data = read_auth(survivor)
        survivor.send(password_msg(code, data, lu, roles.pw[lu]))
        assert read_auth(survivor)[0] == 0
        read_to_ready(survivor)
        query_ok(survivor)
        survivor.close()
    finally:
        gate.end()
    # KILL_CLIENT of another console, of the stats one by the admin.
    sid = my_client_id(st)
    assert adm.run("KILL_CLIENT %s" % sid)[0] == ["KILL_CLIENT"]
    assert error_then_closed(st.conn).sqlstate == "57P01"
    wait_db_conns(pf, "pgbouncer", 1, console=adm)
    settled(pf)
    adm.close()
    alive(pf, roles.lu_md5, roles.pw[roles.lu_md5])


# ---------------------------------------------------------------- max_db_client_connections


def reload_with(pf, databases=None, **params):
    p = dict(pf.params)
    for k, v in params.items():
        if v is None:
            p.pop(k, None)
        else:
            p[k] = v
    pf.write_ini(params=p, databases=databases)
    pfhelpers.console(pf, "RELOAD")


def test_db_client_limit_exact_through_every_refusal(proxy, postgres, roles):
    """max_db_client_connections = 3 on database lim: held clients (logged in, mid-exchange,
    mid-lookup) are counted exactly; the 4th is refused (53300) however it comes; refusals by
    wrong password, unknown user (file and lookup), DISABLE, PAUSE, a RELOAD that removes the
    database under clients mid-login (and adds it back) each leave the count where it was; it
    is 0 after each round and 3 logins are admitted again every time."""
    N = 3
    dbs = {"lim": postgres.db_entry("appdb", max_db_client_connections=N)}
    pf = proxy(params=lookup_params(roles, auth_type="md5", stats_users=STATS_USER,
                                    pool_mode="transaction"),
               databases=dbs, userlist=userlist(roles))
    u, pw = roles.md5, roles.pw[roles.md5]
    lu, lpw = roles.lu_md5, roles.pw[roles.lu_md5]
    con = Console(pf)

    def full_round():
        held = [login(pf, u, pw, "lim") for _ in range(N)]
        assert db_conns(pf, "lim", con) == N
        for _ in range(2):
            err = refused(pf, u, "lim", pw)
            assert (err.sqlstate, err.message) == ("53300", DB_LIMIT), err.fields
        for h in held:
            query_ok(h)
            h.close()
        wait_db_conns(pf, "lim", 0, console=con)

    full_round()
    # Held at every stage of a login: logged in, mid-exchange, mid-lookup.
    gate = Gate(postgres)
    try:
        gate.close()
        a = login(pf, u, pw, "lim")
        b, bsteps = run_to(pf, u, pw, "auth-requested", db="lim")
        c = raw(pf)
        c.send(pgwire.startup_message({"user": lu, "database": "lim"}))
        wait_db_conns(pf, "lim", N, console=con)
        # The 4th, every way: file user, lookup user, unknown user, the console's stats user.
        for user in (u, lu, "nosuch_l2", lu):
            err = refused(pf, user, "lim", pw)
            assert (err.sqlstate, err.message) == ("53300", DB_LIMIT), (user, err.fields)
        ps = parallel(12, lambda i: refused(pf, (u, lu)[i % 2], "lim", pw))
        assert all(e.sqlstate == "53300" for e in ps), [e.fields for e in ps]
        assert db_conns(pf, "lim", con) == N
        gate.open()
        code, data = read_auth(c)
        c.send(password_msg(code, data, lu, lpw))
        read_auth(c)
        read_to_ready(c)
        finish(bsteps)
        for x in (a, b, c):
            query_ok(x)
        assert db_conns(pf, "lim", con) == N
        for x in (a, b, c):
            leave(x, "rst")
        wait_db_conns(pf, "lim", 0, console=con)
    finally:
        gate.end()
    full_round()
    # Wrong passwords and unknown users, many at once (with one held slot).
    keep = login(pf, u, pw, "lim")

    def bad(i):
        user = (u, lu, "nosuch_%d" % i, STATS_USER)[i % 4]
        return refused(pf, user, "lim", "wrong-%d" % i)

    errs = parallel(24, bad)
    for e in errs:
        assert e.sqlstate in ("28P01", "53300"), e.fields
    assert any(e.sqlstate == "28P01" for e in errs)
    wait_db_conns(pf, "lim", 1, console=con)
    keep.close()
    wait_db_conns(pf, "lim", 0, console=con)
    full_round()
    # DISABLE: refused with 57P03 (the count goes up and down inside the refusal).
    assert con.run("DISABLE lim")[0] == ["DISABLE"]
    for user in (u, lu, "nosuch_l2"):
        err = refused(pf, user, "lim", pw)
        assert err.sqlstate == "57P03", err.fields
    assert db_conns(pf, "lim", con) == 0
    assert con.run("ENABLE lim")[0] == ["ENABLE"]
    full_round()
    # PAUSE: logins of a warm pool go through, queries wait; the limit still holds.
    con.conn.send_query("PAUSE lim")
    con.conn.read_answer(DEADLINE)
    held = []
    for _ in range(N):
        c = raw(pf)
        steps = login_steps(c, u, "lim", pw)
        for step in steps:
            if step == "password-sent":
                break
        held.append((c, steps))
    wait_db_conns(pf, "lim", N, console=con)
    err = refused(pf, u, "lim", pw)
    assert (err.sqlstate, err.message) == ("53300", DB_LIMIT), err.fields
    assert con.run("RESUME lim")[0] == ["RESUME"]
    for c, steps in held:
        finish(steps)
        query_ok(c)
        c.close()
    wait_db_conns(pf, "lim", 0, console=con)
    full_round()
    # RELOAD removes lim while clients are mid-login and logged in, then adds it back.
    a = login(pf, u, pw, "lim")
    b, bsteps = run_to(pf, u, pw, "auth-requested", db="lim")
    wait_db_conns(pf, "lim", 2, console=con)
    without = {k: v for k, v in pf.databases.items() if k != "lim"}
    with_lim = dict(pf.databases)
    pf.write_ini(databases=without)
    con.run("RELOAD")
    assert db_conns(pf, "lim", con) is None
    err = refused(pf, u, "lim", pw)
    assert err.sqlstate == "3D000", err.fields
    try:
        finish(bsteps)
        query_ok(b)
    except (pgwire.PgError, pgwire.ProtocolError, AssertionError):
        pass
    try:
        query_ok(a)
    except (pgwire.PgError, pgwire.ProtocolError):
        pass
    pf.write_ini(databases=with_lim)
    con.run("RELOAD")
    live = db_conns(pf, "lim", con)
    assert live is not None and 0 <= live <= 2, live
    for x in (a, b):
        x.sock.close()
    wait_db_conns(pf, "lim", 0, console=con)
    full_round()
    # Removed and added back with nobody connected, twice.
    for _ in range(2):
        pf.write_ini(databases=without)
        con.run("RELOAD")
        pf.write_ini(databases=with_lim)
        con.run("RELOAD")
    full_round()
    con.close()
    settled(pf, ("appdb", "lim"))


def test_shutdown_refusal_keeps_the_count(proxy, roles):
    """SHUTDOWN WAIT_FOR_CLIENTS with a client in a transaction: new logins (unix socket) are
    refused with 57P01, the count stays exactly at the one held client, the console still
    reports it, and the process exits 0 once that client leaves."""
    pf = proxy(params={"auth_type": "md5", "max_db_client_connections": 2},
               userlist=userlist(roles))
    u, pw = roles.md5, roles.pw[roles.md5]
    a = login(pf, u, pw)
    a.simple_query("BEGIN")
    con = Console(pf, host=pf.unix_socket_dir)
    assert con.run("SHUTDOWN WAIT_FOR_CLIENTS")[0] == ["SHUTDOWN"]
    pf.wait_for_log(r"SHUTDOWN WAIT_FOR_CLIENTS requested")
    con2 = Console(pf, host=pf.unix_socket_dir)
    for _ in range(5):
        err = refused(pf, u, "appdb", pw, host=pf.unix_socket_dir)
        assert err.sqlstate == "57P01", err.fields
    for _ in range(3):
        err = refused(pf, "nosuch", "appdb", pw, host=pf.unix_socket_dir)
        assert err.sqlstate == "57P01", err.fields
    assert db_conns(pf, "appdb", con2) == 1
    query_ok(a)
    a.simple_query("COMMIT")
    assert pf.wait(DEADLINE) == 0
    for c in (a, con, con2):
        c.conn.close() if isinstance(c, Console) else c.close()


def test_max_client_conn_and_auth_failures_in_parallel(proxy, roles):
    """max_client_conn = 4 with 4 held: 30 parallel logins all refused with 53300 while the
    console still gets in; then 40 parallel auth failures (wrong md5 and SCRAM passwords,
    unknown users, garbage proofs) with a canary querying throughout: every one 28P01 (or
    08P01 for garbage), the canary unharmed, counts back to 0, 4 logins admitted again."""
    pf = proxy(params={"auth_type": "scram-sha-256", "max_client_conn": 4},
               userlist=userlist(roles))
    u, pw = roles.scram, roles.pw[roles.scram]
    held = [login(pf, u, pw) for _ in range(4)]

    def attempt(i):
        try:
            conn = login(pf, u, pw)
        except pgwire.PgError as e:
            return e.sqlstate, e.message
        conn.close()
        return "ok", None

    got = parallel(30, attempt)
    assert all(g == ("53300", CONN_LIMIT) for g in got), got
    assert db_conns(pf, "appdb") == 4
    for h in held:
        query_ok(h)
    for h in held[1:]:
        h.close()
    canary = held[0]
    wait_db_conns(pf, "appdb", 1)
    reload_with(pf, max_client_conn=200)

    def fail(i):
        kind = i % 4
        conn = raw(pf)
        try:
            if kind in (0, 1):
                user = u if kind == 0 else "nosuch_%d" % i
                for _ in login_steps(conn, user, "appdb", "wrong"):
                    pass
                return "logged-in"
            conn.send(pgwire.startup_message({"user": u, "database": "appdb"}))
            assert read_auth(conn)[0] == 10
            s = pgwire._Scram(pw)
            conn.send(sasl_initial(s.client_first().encode()))
            code, data = read_auth(conn)
            final = s.client_final(data.decode())
            if kind == 2:
                final = final[:final.index(",p=")] + ",p=" + "A" * 44
            else:
                final = final.replace("c=biws", "c=eSws")
            conn.send(pgwire.message(b"p", final.encode()))
            read_auth(conn)
            return "logged-in"
        except pgwire.PgError as e:
            return e.sqlstate
        finally:
            conn.sock.close()

    done = threading.Event()
    counts = [0]

    def canary_loop():
        while not done.is_set():
            query_ok(canary, "SELECT 5", [("5",)])
            counts[0] += 1

    t = threading.Thread(target=canary_loop)
    t.start()
    try:
        results = []
        for _ in range(2):
            results += parallel(20, fail)
    finally:
        done.set()
        t.join(DEADLINE)
    assert all(r in ("28P01", "08P01") for r in results), results
    assert counts[0] > 0
    query_ok(canary)
    canary.close()
    settled(pf)
    held = [login(pf, u, pw) for _ in range(4)]
    for h in held:
        query_ok(h)
        h.close()
    settled(pf)


# ---------------------------------------------------------------- more refusal paths


def test_trust_lookup_with_query_behind_the_startup(proxy, postgres, roles):
    """auth_type trust with auth_query: the startup packet and a Query in one write; the lookup
    holds the Query back, the login needs no password (the cold part is dropped at once) and
    the Query is answered; an unknown user is refused without touching the count; clients
    leaving mid-lookup of a trust login leave no count."""
    pf = proxy(params=lookup_params(roles, auth_type="trust", auth_dbname="appdb"),
               userlist=userlist(roles))
    lu = roles.lu_md5
    for db in ("appdb", "postgres", "appdb"):
        conn = raw(pf)
        conn.send(pgwire.startup_message({"user": lu, "database": db}) +
                  pgwire.fe_query("SELECT 11") + pgwire.fe_query("SELECT 12"))
        assert read_auth(conn)[0] == 0
        read_to_ready(conn)
        assert conn.read_result() == [("11",)]
        assert conn.read_result() == [("12",)]
        conn.close()
    gate = Gate(postgres)
    try:
        gate.close()
        held = []
        for i in range(8):
            conn = raw(pf)
            conn.send(pgwire.startup_message({"user": lu, "database": "appdb"}) +
                      pgwire.fe_query("SELECT 1"))
            held.append(conn)
        wait_db_conns(pf, "appdb", 8)
        for i, conn in enumerate(held):
            leave(conn, "rst" if i % 2 else "fin")
        wait_db_conns(pf, "appdb", 0)
    finally:
        gate.end()
    for _ in range(3):
        err = refused(pf, "nosuch_trust_l2", "appdb", None)
        assert err.sqlstate in ("28000", "28P01"), err.fields
    settled(pf, ("appdb", "postgres"))
    conn = login(pf, lu, None)
    query_ok(conn)
    conn.close()


def test_reload_flapping_a_database_under_concurrent_logins(proxy, postgres, roles):
    """A database removed and added back by RELOAD ten times while 24 threads log in to it,
    query and leave (or leave mid-login): every login either works or is refused with 3D000 /
    53300 / 57P01 / 08P01; afterwards its count is exactly 0 and N logins (not N+1) are
    admitted."""
    N = 4
    entry = postgres.db_entry("appdb", max_db_client_connections=N)
    pf = proxy(params={"auth_type": "md5"}, databases={"flap": entry},
               userlist=userlist(roles))
    u, pw = roles.md5, roles.pw[roles.md5]
    with_flap = dict(pf.databases)
    without = {k: v for k, v in with_flap.items() if k != "flap"}
    stop = threading.Event()
    seen = {}
    lock = threading.Lock()

    def worker(i):
        rnd = random.Random(i)
        while not stop.is_set():
            target = rnd.choice(("startup-sent", "auth-requested", "password-sent",
                                 "logged-in", "query"))
            conn = raw(pf)
            what = "ok"
            try:
                for step in login_steps(conn, u, "flap", pw):
                    if step == target:
                        break
                if target == "query":
                    query_ok(conn)
            except pgwire.PgError as e:
                what = e.sqlstate
                assert e.sqlstate in ("3D000", "53300", "57P01", "08P01"), e.fields
            except (pgwire.ProtocolError, OSError):
                what = "closed"
            finally:
                leave(conn, rnd.choice(("fin", "rst")))
            with lock:
                seen[what] = seen.get(what, 0) + 1

    with concurrent.futures.ThreadPoolExecutor(max_workers=24) as ex:
        futs = [ex.submit(worker, i) for i in range(24)]
        con = Console(pf)
        for _ in range(10):
            pf.write_ini(databases=without)
            con.run("RELOAD")
            con.run("SHOW DATABASES")
            pf.write_ini(databases=with_flap)
            con.run("RELOAD")
            con.rows("SHOW DATABASES")
        stop.set()
        for f in futs:
            f.result(timeout=60)
    assert seen.get("ok", 0) > 0 and seen.get("3D000", 0) > 0, seen
    wait_db_conns(pf, "flap", 0, console=con)
    held = [login(pf, u, pw, "flap") for _ in range(N)]
    err = refused(pf, u, "flap", pw)
    assert (err.sqlstate, err.message) == ("53300", DB_LIMIT), err.fields
    for h in held:
        query_ok(h)
        h.close()
    wait_db_conns(pf, "flap", 0, console=con)
    con.close()
    settled(pf, ("appdb", "flap"))


def test_login_timeout_user_limit_and_console_limit_counts(proxy, roles):
    """client_login_timeout closes clients parked after their startup (counted until then,
    0 after); max_user_client_connections refuses after the database count went up (it comes
    back down); the global max_db_client_connections counts console sessions too: admin_users
    are let past it, a stats user is refused while they fill it and admitted once they
    leave."""
    pf = proxy(params={"auth_type": "md5", "client_login_timeout": 1,
                       "max_user_client_connections": 2, "max_db_client_connections": 3,
                       "stats_users": STATS_USER},
               userlist=userlist(roles))
    u, pw = roles.md5, roles.pw[roles.md5]
    parked = [run_to(pf, u, pw, "auth-requested")[0] for _ in range(2)]
    parked += [run_to(pf, roles.scram, roles.pw[roles.scram], "auth-requested")[0]]
    assert db_conns(pf, "appdb") == 3
    for conn in parked:
        err = error_then_closed(conn, timeout=DEADLINE)
        assert err.sqlstate in ("08P01", "57P01", "08006"), err.fields
    wait_db_conns(pf, "appdb", 0)
    # The user limit: two of u, the third refused; the database count stays at 2.
    a, b = login(pf, u, pw), login(pf, u, pw)
    for _ in range(3):
        err = refused(pf, u, "appdb", pw)
        assert err.sqlstate == "53300", err.fields
        assert "max_user_client_connections" in err.message, err.fields
    assert db_conns(pf, "appdb") == 2
    c = login(pf, roles.scram, roles.pw[roles.scram])
    err = refused(pf, roles.scram, "appdb", roles.pw[roles.scram])
    assert (err.sqlstate, err.message) == ("53300", DB_LIMIT), err.fields
    for x in (a, b, c):
        query_ok(x)
        x.close()
    wait_db_conns(pf, "appdb", 0)
    # Console sessions: admins fill the console database past the limit.
    admins = [Console(pf) for _ in range(4)]
    assert db_conns(pf, "pgfunnel", admins[0]) == 4
    err = refused(pf, STATS_USER, "pgbouncer", STATS_PW)
    assert (err.sqlstate, err.message) == ("53300", DB_LIMIT), err.fields
    assert db_conns(pf, "pgfunnel", admins[0]) == 4
    for x in admins[1:]:
        x.close()
    wait_db_conns(pf, "pgfunnel", 1, console=admins[0])
    st = Console(pf, STATS_USER, STATS_PW)
    assert db_conns(pf, "pgfunnel", st) == 2
    st.close()
    admins[0].close()
    settled(pf)


def test_console_commands_naming_the_console_database(proxy, roles):
    """KILL / PAUSE / DISABLE / RECONNECT / WAIT_CLOSE / RESUME / ENABLE naming the console's
    own database (both names), by a console with others open and one mid-login: each is
    answered or refused, never a crash; a KILL that closes the asking console itself closes it
    with 57P01; afterwards the console count equals the sessions alive and a new console works
    (after ENABLE)."""
    pf = proxy(params={"auth_type": "md5", "stats_users": STATS_USER}, userlist=userlist(roles))
    cmds = ["PAUSE %s", "RESUME %s", "DISABLE %s", "ENABLE %s", "RECONNECT %s", "WAIT_CLOSE %s",
            "KILL %s", "RESUME %s", "KILL_CLIENT 0"]
    for name in CONSOLE_DBS:
        for cmd in cmds:
            sql = cmd % name if "%s" in cmd else cmd
            others = [Console(pf), Console(pf, STATS_USER, STATS_PW)]
            mid = raw(pf)
            mid.send(pgwire.startup_message({"user": "postgres", "database": name}))
            assert read_auth(mid)[0] == 5
            con = Console(pf)
            try:
                tags, _ = con.run(sql)
                gone = False
            except pgwire.PgError as e:
                if e.severity == "FATAL":
                    assert e.sqlstate == "57P01", (sql, e.fields)
                    gone = True
                else:
                    assert e.sqlstate in ("42601", "42704", "0A000", "42501", "08P01", "42809"), (
                        sql, e.fields)
                    gone = False
            except pgwire.ProtocolError:
                gone = True
            if not gone:
                # Its session goes on (or was closed by its own KILL after the answer).
                try:
                    con.run("SHOW VERSION")
                except pgwire.PgError as e:
                    assert e.severity == "FATAL" and e.sqlstate == "57P01", (sql, e.fields)
                    gone = True
                except pgwire.ProtocolError:
                    gone = True
            # Undo whatever it did, from a fresh session (or the held one).
            fixer = None
            for cand in [con] * (not gone) + others:
                try:
                    cand.run("ENABLE %s" % name)
                    cand.run("RESUME %s" % name)
                except pgwire.PgError as e:
                    if e.severity == "FATAL":
                        continue
                except (pgwire.ProtocolError, OSError):
                    continue
                fixer = cand
                break
            if fixer is None:
                fixer = Console(pf)
                try:
                    fixer.run("ENABLE %s" % name)
                    fixer.run("RESUME %s" % name)
                except pgwire.PgError:
                    pass
            # The half-logged-in console finishes or is refused cleanly.
            try:
                mid.send(password_msg(5, b"\0\0\0\0", "postgres", "x"))
                err = pgwire.expect_error(mid, DEADLINE)
                assert err is not None and err.sqlstate in ("28P01", "57P01", "57P03",
                                                            "08P01"), err
            except (pgwire.ProtocolError, OSError):
                pass
            mid.sock.close()
            for x in [con] + others:
                x.conn.sock.close()
            assert pf.is_running(), sql
            fresh = Console(pf)
            wait_db_conns(pf, name, 1, console=fresh)
            fresh.close()
            if fixer is not con and fixer not in others:
                fixer.close()
    settled(pf)
    alive(pf, roles.md5, roles.pw[roles.md5])
