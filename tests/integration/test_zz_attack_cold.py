"""Red team of the client's cold part (include/pgfunnel/client.h pf_client_cold_t): the
login-only state (SCRAM exchange, HBA map=, auth_query lookup's database, secret_gen, md5 salt)
and the console's waiting-command state moved out of pf_client_t into a part allocated at
accept, dropped at login (kept for a console session) and freed with the client.

Each case is a hostile or broken client on the login and console paths: authentication
messages after the login, a second startup packet, SCRAM messages out of order or twice,
disconnects (FIN and RST) at every step of every method on cold and warm pools, auth_query
lookups that are slow, refused or killed while their clients leave or are killed, peer with an
HBA map= (through a lookup too), a RELOAD during SCRAM exchanges, console commands that wait
while their sessions leave or are killed, SHUTDOWN from the console, client_login_timeout
mid-exchange, cancel requests. Each asserts the behaviour; with PGFUNNEL_SANITIZED=1 any
ASan/UBSan/LeakSanitizer report fails the test that started the instance."""

import base64
import hashlib
import hmac
import os
import pathlib
import random
import shutil
import signal
import socket
import ssl
import struct
import tempfile
import threading

import pytest

import pfhelpers
import pgwire
from test_zz_attack14 import rst_close

DEADLINE = 15.0
AUTH_PW = "cold-auth-pw"
CONSOLE_DBS = ("pgbouncer", "pgfunnel")


# ---------------------------------------------------------------- helpers


def leave(conn, how):
    if how == "rst":
        rst_close(conn.sock)
    else:
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        conn.sock.close()


def raw(pf, host=None):
    return pgwire.Connection(pgwire.open_socket(host or pf.host, pf.port, DEADLINE))


def code_of(payload):
    return struct.unpack("!I", payload[:4])[0]


def read_auth(conn):
    """The next Authentication request code and its data; PgError for an ErrorResponse."""
    while True:
        kind, payload = conn.read_message(DEADLINE)
        if kind == "E":
            raise pgwire.PgError(pgwire.parse_fields(payload))
        if kind == "N":
            continue
        assert kind == "R", (kind, payload)
        return code_of(payload), payload[4:]


def read_to_ready(conn):
    """Messages up to ReadyForQuery; PgError for an ErrorResponse."""
    while True:
        kind, payload = conn.read_message(DEADLINE)
        if kind == "E":
            raise pgwire.PgError(pgwire.parse_fields(payload))
        if kind == "Z":
            return


def sasl_initial(first, mech=b"SCRAM-SHA-256"):
    return pgwire.message(b"p", mech + b"\0" + struct.pack("!i", len(first)) + first)


def error_then_closed(conn, timeout=DEADLINE):
    """Reads until an ErrorResponse (returned as PgError) then checks the peer closes; a
    ReadyForQuery first fails the test."""
    err = pgwire.expect_error(conn, timeout)
    assert err is not None, "ReadyForQuery instead of an error"
    assert pgwire.wait_closed(conn, timeout), "connection stayed open after %s" % err
    return err


def login_steps(conn, method, user, db, pw, split=False):
    """Drives a login one step at a time (a generator: yields a step name before each next
    action, so the caller may leave there). method: md5, plain, scram, trust."""
    start = pgwire.startup_message({"user": user, "database": db})
    yield "connected"
    if split:
        conn.send(start[:7])
        yield "half-startup"
        conn.send(start[7:])
    else:
        conn.send(start)
    yield "startup-sent"
    if method == "trust":
        read_to_ready(conn)
        yield "logged-in"
        return
    code, data = read_auth(conn)
    yield "auth-requested"
    if method in ("md5", "plain"):
        if method == "md5":
            assert code == 5, code
            inner = hashlib.md5(pw.encode() + user.encode()).hexdigest()
            msg = pgwire.message(b"p", b"md5" + hashlib.md5(inner.encode() + data[:4])
                                 .hexdigest().encode() + b"\0")
        else:
            assert code == 3, code
            msg = pgwire.message(b"p", pw.encode() + b"\0")
        conn.send(msg[:6])
        yield "half-password"
        conn.send(msg[6:])
        yield "password-sent"
    else:
        assert code == 10, code
        scram = pgwire._Scram(pw)
        msg = sasl_initial(scram.client_first().encode())
        conn.send(msg[:9])
        yield "half-initial"
        conn.send(msg[9:])
        yield "initial-sent"
        code, data = read_auth(conn)
        assert code == 11, code
        yield "server-first-read"
        fin = pgwire.message(b"p", scram.client_final(data.decode()).encode())
        conn.send(fin[:10])
        yield "half-final"
        conn.send(fin[10:])
        yield "final-sent"
    read_to_ready(conn)
    yield "logged-in"


def login(pf, method, user, pw, db="appdb", host=None):
    conn = raw(pf, host)
    for _ in login_steps(conn, method, user, db, pw):
        pass
    return conn


def query_ok(conn, sql="SELECT 1", want=(("1",),)):
    assert conn.simple_query(sql) == [tuple(r) for r in want]


def alive(pf, user, pw, method="md5", db="appdb"):
    conn = login(pf, method, user, pw, db)
    try:
        query_ok(conn, "SELECT 42", [("42",)])
    finally:
        conn.close()


def clients_settled(pf, extra=0, timeout=DEADLINE):
    """Only the console connection that asks (plus extra) is left in SHOW CLIENTS."""
    return pfhelpers.wait_clients(pf, lambda rows: len(rows) <= 1 + extra,
                                  "clients gone", timeout=timeout)


def client_ids(pf, user=None, state=None):
    rows = pfhelpers.show(pf, "CLIENTS")
    return [r["id"] for r in rows if (user is None or r["user"] == user) and
            (state is None or r["state"] == state)]


class Console:
    """A console session over pgwire (postgres, md5): send() now, answer() later."""

    def __init__(self, pf):
        self.conn = pgwire.connect(pf.host, pf.port, "postgres", "pgbouncer",
                                   "pg-super-secret", timeout=DEADLINE)

    def send(self, sql):
        self.conn.send_query(sql)

    def answer(self, timeout=DEADLINE):
        msgs = self.conn.read_until_ready(timeout)
        for k, p in msgs:
            if k == "E":
                raise pgwire.PgError(pgwire.parse_fields(p))
        return [pgwire.decode_command_complete(p) for k, p in msgs if k == "C"]

    def run(self, sql, timeout=DEADLINE):
        self.send(sql)
        return self.answer(timeout)

    def pending(self, timeout=0.3):
        return not self.conn.is_silent(timeout)


@pytest.fixture(scope="module")
def roles(postgres):
    """Roles of this module: an md5 one and a SCRAM one (both in the auth_file as plain
    passwords), an auth_user, looked-up users (never in the auth_file), and functions for
    auth_query in appdb (a slow one, a failing one)."""
    tag = "%d_%d" % (random.randrange(10 ** 6), os.getpid())

    class R:
        pass

    r = R()
    r.tag = tag
    r.md5, r.scram = "cm5_" + tag, "csc_" + tag
    r.auth = "cau_" + tag
    r.lu_md5, r.lu_scram = "clm_" + tag, "cls_" + tag
    r.pw = {r.md5: "md5pw-" + tag, r.scram: "scrampw-" + tag, r.auth: AUTH_PW,
            r.lu_md5: "lumd5-" + tag, r.lu_scram: "luscram-" + tag}
    with postgres.connect(autocommit=True) as conn:
        conn.execute("CREATE ROLE %s LOGIN PASSWORD '%s'" % (r.scram, r.pw[r.scram]))
        conn.execute("CREATE ROLE %s LOGIN PASSWORD '%s'" % (r.lu_scram, r.pw[r.lu_scram]))
        conn.execute("CREATE ROLE %s LOGIN PASSWORD '%s'" % (r.auth, AUTH_PW))
        conn.execute("GRANT pg_read_all_data TO %s" % r.auth)
        conn.execute("SET password_encryption = 'md5'")
        conn.execute("CREATE ROLE %s LOGIN PASSWORD '%s'" % (r.md5, r.pw[r.md5]))
        conn.execute("CREATE ROLE %s LOGIN PASSWORD '%s'" % (r.lu_md5, r.pw[r.lu_md5]))
    with postgres.connect(dbname="appdb", autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS pfcold")
        conn.execute("""CREATE OR REPLACE FUNCTION pfcold.slow(p text)
            RETURNS TABLE(u text, p2 text) LANGUAGE sql SECURITY DEFINER
            SET search_path = pg_catalog AS $$
            SELECT rolname::text, rolpassword FROM pg_authid, pg_sleep(1.5)
            WHERE rolname = p $$""")
        conn.execute("""CREATE OR REPLACE FUNCTION pfcold.stuck(p text)
            RETURNS TABLE(u text, p2 text) LANGUAGE sql AS $$
            SELECT p, pg_sleep(60)::text $$""")
        conn.execute("""CREATE OR REPLACE FUNCTION pfcold.fails(p text)
            RETURNS TABLE(u text, p2 text) LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'refused lookup of %', p; END $$""")
        conn.execute("GRANT USAGE ON SCHEMA pfcold TO %s" % r.auth)
        conn.execute("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA pfcold TO %s" % r.auth)
        for u in (r.md5, r.scram, r.lu_md5, r.lu_scram):
            conn.execute("GRANT ALL ON SCHEMA public TO %s" % u)
    yield r
    with postgres.connect(autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE query LIKE '%%pfcold.%%' AND pid <> pg_backend_pid()")


def userlist(roles, scram_secret=False):
    """The auth_file: plain passwords; roles.scram's as a SCRAM verifier with scram_secret
    (then auth_type md5 gives it a SCRAM exchange)."""
    return {roles.md5: roles.pw[roles.md5],
            roles.scram: (pfhelpers.scram_secret(roles.pw[roles.scram]) if scram_secret
                          else roles.pw[roles.scram]),
            roles.auth: AUTH_PW}


def end_stuck(postgres):
    with postgres.connect(autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE query LIKE '%%pfcold.%%' AND pid <> pg_backend_pid()")


# ---------------------------------------------------------------- after the login


@pytest.mark.parametrize("method", ["md5", "plain", "scram"])
def test_auth_messages_after_login_are_protocol_errors(proxy, roles, method):
    """A logged-in client sends a PasswordMessage / SASLResponse / SASLInitialResponse (its
    cold part is gone): a protocol error, never a crash. Also pipelined right behind the
    password (or the SCRAM final) in the same write, on a pool with no welcome yet (the login
    waits for a server's parameters) and on a warm one; and on the console, whose cold part
    stays."""
    auth = {"md5": "md5", "plain": "plain", "scram": "scram-sha-256"}[method]
    pf = proxy(params={"auth_type": auth, "pool_mode": "transaction"}, userlist=userlist(roles))
    user, pw = (roles.scram, roles.pw[roles.scram]) if method == "scram" else (
        roles.md5, roles.pw[roles.md5])
    extras = [pgwire.message(b"p", b"md5deadbeef\0"),
              pgwire.message(b"p", b"c=biws,r=xx,p=AAAA"),
              sasl_initial(b"n,,n=,r=abc"),
              pgwire.message(b"p", b"")]
    # Sequential: after a whole login (and a query), each kind of stray auth message.
    for extra in extras:
        conn = login(pf, method, user, pw)
        query_ok(conn)
        conn.send(extra)
        err = error_then_closed(conn)
        assert err.sqlstate == "08P01", err.fields
    # Pipelined right after the answer to the last auth request, cold pool first (the first
    # login of this pool waits for a server's parameters) then warm.
    for round_ in range(3):
        conn = raw(pf)
        steps = login_steps(conn, method, user, "postgres" if round_ == 0 else "appdb", pw)
        # Run up to the last message the client sends, then append the stray one in the same
        # write as that message's second half.
        last = "half-password" if method != "scram" else "half-final"
        for step in steps:
            if step == last:
                break
        conn.send(random.choice(extras))
        try:
            for step in steps:
                pass
        except pgwire.PgError as e:
            assert e.sqlstate == "08P01", e.fields
            conn.sock.close()
            continue
        err = error_then_closed(conn)
        assert err.sqlstate == "08P01", err.fields
    # Console: a stray 'p' after its (password) login, and pipelined behind the password.
    conn = login(pf, method, "postgres", "pg-super-secret", db="pgbouncer")
    conn.send(pgwire.message(b"p", b"md5deadbeef\0"))
    assert error_then_closed(conn).sqlstate == "08P01"
    alive(pf, user, pw, method)
    clients_settled(pf)


def second_startup_cases(proxy, roles):
    """A second StartupMessage (or SSLRequest, CancelRequest) where an auth answer is due, or
    after the login: refused as a protocol error."""
    pf = proxy(params={"auth_type": "md5"}, userlist=userlist(roles))
    u, pw = roles.md5, roles.pw[roles.md5]
    second = [pgwire.startup_message({"user": u, "database": "appdb"}),
              struct.pack("!II", 8, 80877103),
              struct.pack("!IIII", 16, 80877102, 1, 2)]
    for pkt in second:
        # Mid-login: instead of the password.
        conn = raw(pf)
        conn.send(pgwire.startup_message({"user": u, "database": "appdb"}))
        assert read_auth(conn)[0] == 5
        conn.send(pkt)
        err = error_then_closed(conn)
        assert err.sqlstate == "08P01", err.fields
        # Logged in.
        conn = login(pf, "md5", u, pw)
        conn.send(pkt)
        err = error_then_closed(conn)
        assert err.sqlstate == "08P01", err.fields
        # Pipelined with the first one.
        conn = raw(pf)
        conn.send(pgwire.startup_message({"user": u, "database": "appdb"}) + pkt)
        try:
            read_auth(conn)
            err = error_then_closed(conn)
        except pgwire.PgError as e:
            err = e
        assert err.sqlstate == "08P01", err.fields
        conn.sock.close()
    alive(pf, u, pw)
    clients_settled(pf)


def test_out_of_order_login_messages(proxy, roles):
    """second_startup_cases(), then scram_out_of_order_cases()."""
    second_startup_cases(proxy, roles)
    scram_out_of_order_cases(proxy, roles)


def scram_out_of_order_cases(proxy, roles):
    """SCRAM messages twice or out of order: two SASLInitialResponses in one write, the
    initial response sent again after server-first, client-first again as the final, a final
    with a right proof sent twice, garbage in every slot. Each ends with an error (or a login,
    where the first message was right and the duplicate came after it), nothing else."""
    pf = proxy(params={"auth_type": "scram-sha-256"}, userlist=userlist(roles))
    u, pw = roles.scram, roles.pw[roles.scram]

    def begin():
        conn = raw(pf)
        conn.send(pgwire.startup_message({"user": u, "database": "appdb"}))
        assert read_auth(conn)[0] == 10
        return conn

    # Two initial responses in one write: the second is taken as the final, which it is not.
    conn = begin()
    s = pgwire._Scram(pw)
    first = sasl_initial(s.client_first().encode())
    conn.send(first + first)
    code, _ = read_auth(conn)
    assert code == 11
    assert error_then_closed(conn).sqlstate == "08P01"
    # The initial response again after server-first.
    conn = begin()
    conn.send(first)
    read_auth(conn)
    conn.send(first)
    assert error_then_closed(conn).sqlstate == "08P01"
    # A right final twice in one write: logged in, then the duplicate is a stray 'p'.
    conn = begin()
    s = pgwire._Scram(pw)
    conn.send(sasl_initial(s.client_first().encode()))
    code, data = read_auth(conn)
    fin = pgwire.message(b"p", s.client_final(data.decode()).encode())
    conn.send(fin + fin)
    code, data = read_auth(conn)
    assert code == 12
    read_to_ready(conn)
    err = error_then_closed(conn)
    assert err.sqlstate == "08P01", err.fields
    # Garbage in each slot.
    for garbage in (b"", b"\0", b"SCRAM-SHA-256\0\x7f\xff\xff\xff", b"SCRAM-SHA-256\0\0\0\0\5abc",
                    b"SCRAM-SHA-256-PLUS\0" + struct.pack("!i", 11) + b"p=x,,n=,r=ab",
                    b"X" * 5000):
        conn = begin()
        conn.send(pgwire.message(b"p", garbage))
        err = error_then_closed(conn)
        # Over PG_MAX_SASL_MESSAGE_LENGTH: a failed exchange (28P01), as in Postgres.
        assert err.sqlstate in ("08P01", "28000", "28P01"), (garbage[:40], err.fields)
    for garbage in (b"", b"c=biws", b"c=biws,r=zz,p=AAAA", b"\xff" * 300, b"c=biws,r=" + b"A" * 5000):
        conn = begin()
        s = pgwire._Scram(pw)
        conn.send(sasl_initial(s.client_first().encode()))
        read_auth(conn)
        conn.send(pgwire.message(b"p", garbage))
        err = error_then_closed(conn)
        assert err.sqlstate in ("08P01", "28P01", "28000"), err.fields
    # Late client-first (no initial response), then garbage as client-first.
    conn = begin()
    conn.send(pgwire.message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", -1)))
    code, data = read_auth(conn)
    assert code == 11 and data == b""
    conn.send(pgwire.message(b"p", b"not,a,client,first"))
    assert error_then_closed(conn).sqlstate == "08P01"
    alive(pf, u, pw, "scram")
    clients_settled(pf)


# ---------------------------------------------------------------- leaving at every step


@pytest.mark.parametrize("method", ["md5", "plain", "scram", "trust"])
def test_leaving_at_every_step(proxy, postgres, roles, method):
    """The client leaves (FIN and RST) at every step of its login, on a pool with no welcome
    yet (a fresh database each time: its first login waits for a server's parameters) and on
    a warm one. No client is left behind, the next logins work, no sanitizer report."""
    auth = {"md5": "md5", "plain": "plain", "scram": "scram-sha-256", "trust": "trust"}[method]
    user, pw = (roles.scram, roles.pw[roles.scram]) if method == "scram" else (
        roles.md5, roles.pw[roles.md5])
    steps = [s for s in ("connected", "half-startup", "startup-sent", "auth-requested",
                         "half-password", "password-sent", "half-initial", "initial-sent",
                         "server-first-read", "half-final", "final-sent", "logged-in")]
    cold = ["c%02d" % i for i in range(2 * len(steps) + 2)]
    pf = proxy(params={"auth_type": auth, "pool_mode": "transaction"},
               databases={d: postgres.db_entry("appdb") for d in cold},
               userlist=userlist(roles))
    n_cold = 0
    seen = set()
    for how in ("fin", "rst"):
        for target in steps:
            for db in (cold[n_cold], "appdb"):
                conn = raw(pf)
                reached = False
                for step in login_steps(conn, method, user, db, pw, split=True):
                    if step == target:
                        reached = True
                        break
                if reached:
                    seen.add(target)
                leave(conn, how)
            n_cold += 1
    assert "logged-in" in seen and "startup-sent" in seen, seen
    clients_settled(pf)
    alive(pf, user, pw, method)
    alive(pf, user, pw, method, db=cold[-1])
    clients_settled(pf)


def test_tls_scram_plus_leaving_at_every_step(proxy, roles, certs):
    """SCRAM-SHA-256-PLUS over TLS (channel binding data kept in the cold part): the client
    leaves at each step (FIN, RST, TLS close_notify); a logged-in TLS client that sends a
    SASLResponse gets a protocol error; the next PLUS login works."""
    pf = proxy(params={"auth_type": "scram-sha-256", "client_tls_sslmode": "require",
                       "client_tls_key_file": certs.server.key,
                       "client_tls_cert_file": certs.server.cert,
                       "client_tls_ca_file": certs.ca.cert}, userlist=userlist(roles))
    u, pw = roles.scram, roles.pw[roles.scram]
    steps = ["handshake", "startup-sent", "sasl-read", "initial-sent", "server-first-read",
             "final-sent", "logged-in", "stray-p"]
    for how in ("fin", "rst", "notify"):
        for target in steps:
            r = scram_plus(pf, certs, u, pw, stop_at=target, how=how)
            if target == "stray-p":
                assert r == "08P01", r
            else:
                assert r == target, r
    assert scram_plus(pf, certs, u, pw) == "in"
    clients_settled(pf)


@pytest.fixture(scope="module")
def certs(run_user):
    import tlscerts
    c = tlscerts.TlsCerts()
    yield c
    c.destroy()


def scram_plus(pf, certs, user, password, stop_at=None, how="fin"):
    raw_sock = socket.create_connection((pf.host, pf.port), timeout=DEADLINE)
    raw_sock.sendall(struct.pack("!II", 8, 80877103))
    assert pgwire.recv_exact(raw_sock, 1) == b"S"
    ctx = ssl.create_default_context(cafile=certs.ca.cert)
    sock = ctx.wrap_socket(raw_sock, server_hostname="localhost")
    conn = pgwire.Connection(sock)

    def out(step):
        if step != stop_at:
            return False
        if how == "notify":
            try:
                sock.unwrap()
            except (OSError, ValueError, ssl.SSLError):
                pass
            raw_sock.close()
        elif how == "rst":
            rst_close(raw_sock)
        else:
            sock.close()
        return True

    try:
        if out("handshake"):
            return "handshake"
        sock.sendall(pgwire.startup_message({"user": user, "database": "appdb"}))
        if out("startup-sent"):
            return "startup-sent"
        code, data = read_auth(conn)
        assert code == 10 and b"SCRAM-SHA-256-PLUS" in data, (code, data)
        if out("sasl-read"):
            return "sasl-read"
        cb = hashlib.sha256(sock.getpeercert(binary_form=True)).digest()
        gs2 = "p=tls-server-end-point,,"
        cnonce = base64.b64encode(os.urandom(18)).decode()
        bare = "n=,r=" + cnonce
        sock.sendall(sasl_initial((gs2 + bare).encode(), b"SCRAM-SHA-256-PLUS"))
        if out("initial-sent"):
            return "initial-sent"
        code, data = read_auth(conn)
        assert code == 11, code
        if out("server-first-read"):
            return "server-first-read"
        server_first = data.decode()
        attrs = dict(a.split("=", 1) for a in server_first.split(","))
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs["s"]),
                                     int(attrs["i"]))
        ck = hmac.digest(salted, b"Client Key", "sha256")
        wo = "c=%s,r=%s" % (base64.b64encode(gs2.encode() + cb).decode(), attrs["r"])
        auth = ",".join([bare, server_first, wo]).encode()
        sig = hmac.digest(hashlib.sha256(ck).digest(), auth, "sha256")
        proof = base64.b64encode(bytes(a ^ b for a, b in zip(ck, sig))).decode()
        sock.sendall(pgwire.message(b"p", ("%s,p=%s" % (wo, proof)).encode()))
        if out("final-sent"):
            return "final-sent"
        read_to_ready(conn)
        if out("logged-in"):
            return "logged-in"
        if stop_at == "stray-p":
            sock.sendall(pgwire.message(b"p", ("%s,p=%s" % (wo, proof)).encode()))
            err = pgwire.expect_error(conn, DEADLINE)
            return err.sqlstate if err else "ready"
        sock.sendall(pgwire.message(b"Q", b"SELECT 1\0"))
        read_to_ready(conn)
        return "in"
    finally:
        try:
            sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------- RELOAD during SCRAM


def test_reload_during_many_scram_exchanges(proxy, postgres, roles):
    """Twelve SCRAM exchanges wait for their proofs; a RELOAD changes the user's password
    (secret_gen moves) and another RELOAD changes it back; then some clients leave (FIN, RST)
    and the rest send their old-password proofs: all refused with 28P01, none logged in.
    md5 and plain exchanges of another user that span the RELOADs still log in."""
    u, pw = roles.scram, roles.pw[roles.scram]
    pf = proxy(params={"auth_type": "scram-sha-256"}, userlist=userlist(roles))
    pending = []
    for _ in range(12):
        conn = raw(pf)
        s = pgwire._Scram(pw)
        conn.send(pgwire.startup_message({"user": u, "database": "appdb"}))
        assert read_auth(conn)[0] == 10
        conn.send(sasl_initial(s.client_first().encode()))
        code, data = read_auth(conn)
        assert code == 11
        pending.append((conn, s, data))
    users = postgres.userlist()
    users.update(userlist(roles))
    users[u] = pw + "-new"
    pf.write_userlist(users)
    pfhelpers.console(pf, "RELOAD")
    users[u] = pw
    pf.write_userlist(users)
    pfhelpers.console(pf, "RELOAD")
    for i, (conn, s, data) in enumerate(pending):
        if i % 4 == 0:
            leave(conn, "fin")
        elif i % 4 == 1:
            leave(conn, "rst")
        else:
            conn.send(pgwire.message(b"p", s.client_final(data.decode()).encode()))
            err = error_then_closed(conn)
            assert err.sqlstate == "28P01", err.fields
    alive(pf, u, pw, "scram")
    clients_settled(pf)


# ---------------------------------------------------------------- auth_query lookups


def aq_proxy(proxy, postgres, roles, auth_query=None, **params):
    p = {"auth_type": "md5", "auth_user": roles.auth, "pool_mode": "transaction",
         "default_pool_size": 2}
    if auth_query:
        p["auth_query"] = auth_query
    p.update(params)
    return proxy(params=p, userlist=userlist(roles))


def start_lookup(pf, user, db="appdb"):
    conn = raw(pf)
    conn.send(pgwire.startup_message({"user": user, "database": db}))
    return conn


def test_slow_lookups_left_killed_and_timed_out(proxy, postgres, roles):
    """auth_query takes 1.5 s (pg_sleep): clients whose lookup runs or waits for the auth
    pool's server leave (FIN, RST), are killed with KILL_CLIENT, or send their password before
    the answer (held back); the rest finish and log in. Nothing is left; the lookups' database
    references are dropped (SHOW DATABASES current_connections back to its idle value)."""
    pf = aq_proxy(proxy, postgres, roles, "SELECT * FROM pfcold.slow($1)",
                  client_login_timeout=30)
    u, pw = roles.lu_md5, roles.pw[roles.lu_md5]
    conns = [start_lookup(pf, u) for _ in range(8)]
    pfhelpers.wait_query_running(postgres, "SELECT * FROM pfcold.slow($1)")
    # Kill two of them from the console while they borrow (or wait for) a lookup server.
    rows = [r for r in pfhelpers.show(pf, "CLIENTS") if r["user"] == roles.auth or
            r["user"] == u]
    ids = [r["id"] for r in rows][:2]
    assert ids, pfhelpers.show(pf, "CLIENTS")
    for cid in ids:
        pfhelpers.console(pf, "KILL_CLIENT %s" % cid)
    leave(conns[0], "fin")
    leave(conns[1], "rst")
    # The others answer their md5 request once it comes.
    got = []
    for conn in conns[2:]:
        try:
            code, data = read_auth(conn)
        except (pgwire.PgError, pgwire.ProtocolError, OSError) as e:
            got.append(("gone", getattr(e, "sqlstate", None)))
            continue
        assert code == 5, code
        inner = hashlib.md5(pw.encode() + u.encode()).hexdigest()
        conn.send(pgwire.message(b"p", b"md5" + hashlib.md5(inner.encode() + data[:4])
                                 .hexdigest().encode() + b"\0"))
        read_to_ready(conn)
        query_ok(conn)
        got.append("in")
        conn.close()
    assert got.count("in") >= len(conns) - 4, got
    assert all(g == "in" or g[1] in (None, "57P01") for g in got), got
    clients_settled(pf, timeout=30)
    alive(pf, u, pw)
    clients_settled(pf)


def test_lookup_refused_or_killed_by_postgres(proxy, postgres, roles):
    """The lookup fails in Postgres (an exception), its backend is terminated mid-query, or
    the auth_user's login is refused: each client gets an error and is closed, a pipelined
    password behind the startup packet never logs anyone in, and the pooler goes on."""
    u, pw = roles.lu_md5, roles.pw[roles.lu_md5]
    pf = aq_proxy(proxy, postgres, roles, "SELECT * FROM pfcold.fails($1)")
    conn = start_lookup(pf, u)
    conn.send(pgwire.message(b"p", b"md5" + b"0" * 32 + b"\0"))
    err = error_then_closed(conn)
    assert err.sqlstate == "08P01", err.fields
    # Terminated mid-query.
    pf2 = aq_proxy(proxy, postgres, roles, "SELECT * FROM pfcold.stuck($1)",
                   client_login_timeout=30)
    conns = [start_lookup(pf2, u) for _ in range(3)]
    pfhelpers.wait_query_running(postgres, "SELECT * FROM pfcold.stuck($1)")
    leave(conns[2], "rst")
    end_stuck(postgres)
    for conn in conns[:2]:
        try:
            err = pgwire.expect_error(conn, DEADLINE)
        except pgwire.ProtocolError:
            err = None
        if err is not None:
            assert err.severity == "FATAL", err.fields
        conn.sock.close()
    clients_settled(pf2, timeout=30)
    # The auth_user's own login refused by Postgres.
    users = userlist(roles)
    users[roles.auth] = "wrong-" + AUTH_PW
    pf3 = proxy(params={"auth_type": "scram-sha-256", "auth_user": roles.auth},
                userlist=users)
    for _ in range(3):
        conn = start_lookup(pf3, roles.lu_scram)
        err = error_then_closed(conn)
        # Postgres' refusal, then the cached one (server_login_retry).
        assert err.sqlstate in ("28P01", "08006"), err.fields
        assert 'password authentication failed for user "%s"' % roles.auth in err.message
    clients_settled(pf3)
    # Still serving: a real lookup on pf (its query changed by RELOAD) works.
    pf.params["auth_query"] = None
    pf.write_ini({k: v for k, v in pf.params.items() if v is not None})
    pfhelpers.console(pf, "RELOAD")
    alive(pf, u, pw)


def test_login_timeout_mid_exchange_and_mid_lookup(proxy, postgres, roles):
    """client_login_timeout=1 strikes clients stuck at every step: half a startup packet,
    after SSLRequest's 'N', waiting to answer md5, between SCRAM messages (md5 user with a
    SCRAM secret: the switch to SCRAM), in a stuck lookup. All closed; no leak."""
    pf = aq_proxy(proxy, postgres, roles, "SELECT * FROM pfcold.stuck($1)",
                  client_login_timeout=1)
    stuck = []
    c = raw(pf)
    c.send(pgwire.startup_message({"user": roles.md5, "database": "appdb"})[:6])
    stuck.append(c)
    c = raw(pf)
    c.send(struct.pack("!II", 8, 80877103))
    stuck.append(c)
    c = raw(pf)
    c.send(pgwire.startup_message({"user": roles.md5, "database": "appdb"}))
    assert read_auth(c)[0] == 5
    stuck.append(c)
    # A user the auth_file holds a SCRAM secret for gets SCRAM under md5.
    c = raw(pf)
    c.send(pgwire.startup_message({"user": roles.scram, "database": "appdb"}))
    code, _ = read_auth(c)
    c.send(sasl_initial(pgwire._Scram("x").client_first().encode()))
    stuck.append(c)
    c = start_lookup(pf, roles.lu_md5)
    stuck.append(c)
    c = start_lookup(pf, roles.lu_scram)
    stuck.append(c)
    for c in stuck:
        assert pgwire.wait_closed(c, DEADLINE), "still open after client_login_timeout"
        c.sock.close()
    clients_settled(pf)
    end_stuck(postgres)


# ---------------------------------------------------------------- peer with map=


@pytest.fixture
def hba_dir():
    """A directory the pgfunnel user can read (pytest's tmp_path is root's, mode 0700)."""
    d = pathlib.Path(tempfile.mkdtemp(prefix="pgfunnel-cold."))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_peer_map_through_auth_query(pgfunnel, postgres, roles, hba_dir):
    """auth_type=hba, `local all all peer map=m`, the user not in the auth_file: the map name
    (in the cold part) must survive the auth_query lookup and be checked after it. A mapped
    OS user logs in, an unmapped target is refused; clients leaving mid-lookup (slow lookup)
    and right after their startup packet leave nothing behind."""
    d = hba_dir
    me = __import__("pwd").getpwuid(os.getuid()).pw_name
    hba = d / "hba.conf"
    hba.write_text("local all all peer map=m\nhost all all 127.0.0.1/32 md5\n")
    ident = d / "ident.conf"
    ident.write_text("m %s %s\nm %s postgres\n" % (me, roles.lu_md5, me))
    for f in (hba, ident):
        os.chmod(f, 0o644)
    p = {"auth_type": "hba", "auth_hba_file": str(hba), "auth_ident_file": str(ident),
         "auth_user": roles.auth, "pool_mode": "transaction",
         "auth_query": "SELECT * FROM pfcold.slow($1)", "client_login_timeout": 30}
    pf = pfhelpers.start_proxy(pgfunnel, postgres, params=p, userlist=userlist(roles))
    sockdir = pf.unix_socket_dir
    conn = login(pf, "trust", roles.lu_md5, None, host=sockdir)
    query_ok(conn, "SELECT current_user", [(roles.lu_md5,)])
    conn.close()
    # Unmapped: refused after its lookup.
    conn = raw(pf, sockdir)
    conn.send(pgwire.startup_message({"user": roles.lu_scram, "database": "appdb"}))
    err = error_then_closed(conn)
    assert err.message == 'Peer authentication failed for user "%s"' % roles.lu_scram, err.fields
    # Leaving mid-lookup, FIN and RST, and right away.
    for how in ("fin", "rst"):
        for wait in (True, False):
            conns = [raw(pf, sockdir) for _ in range(3)]
            for c in conns:
                c.send(pgwire.startup_message({"user": roles.lu_md5, "database": "appdb"}))
            if wait:
                pfhelpers.wait_query_running(postgres, "SELECT * FROM pfcold.slow($1)")
            for c in conns:
                leave(c, how)
    clients_settled(pf, timeout=30)
    conn = login(pf, "trust", roles.lu_md5, None, host=sockdir)
    query_ok(conn)
    conn.close()
    # The console through the same peer map= rule (no lookup for it): its cold part stays for
    # its commands once the map is dropped.
    adm = login(pf, "trust", "postgres", None, db="pgbouncer", host=sockdir)
    adm.simple_query("PAUSE appdb")
    adm.simple_query("RESUME appdb")
    adm.send(pgwire.message(b"p", b"\0"))
    assert error_then_closed(adm).sqlstate == "08P01"
    clients_settled(pf)


def test_cert_map_login_and_leaving(pgfunnel, postgres, roles, certs, hba_dir):
    """auth_type=hba `hostssl ... cert map=cm`: the certificate's CN maps through the ident
    map kept in the cold part. A mapped certificate logs in (then a stray PasswordMessage is a
    protocol error); an unmapped one is refused; clients leave right after the handshake and
    right after the startup packet (FIN, RST)."""
    hba = hba_dir / "hba.conf"
    hba.write_text("hostssl all all 127.0.0.1/32 cert map=cm\n"
                   "host all all 127.0.0.1/32 reject\nlocal pgbouncer postgres trust\n")
    ident = hba_dir / "ident.conf"
    ident.write_text("cm coldcert %s\n" % roles.md5)
    for f in (hba, ident):
        os.chmod(f, 0o644)
    p = {"auth_type": "hba", "auth_hba_file": str(hba), "auth_ident_file": str(ident),
         "client_tls_sslmode": "verify-ca", "client_tls_key_file": certs.server.key,
         "client_tls_cert_file": certs.server.cert, "client_tls_ca_file": certs.ca.cert,
         "pool_mode": "transaction"}
    pf = pfhelpers.start_proxy(pgfunnel, postgres, params=p, userlist=userlist(roles))
    good, other = certs.client("coldcert"), certs.client("coldother")

    def tls_conn(cert):
        raw_sock = socket.create_connection((pf.host, pf.port), timeout=DEADLINE)
        raw_sock.sendall(struct.pack("!II", 8, 80877103))
        assert pgwire.recv_exact(raw_sock, 1) == b"S"
        ctx = ssl.create_default_context(cafile=certs.ca.cert)
        ctx.load_cert_chain(cert.cert, cert.key)
        return raw_sock, pgwire.Connection(ctx.wrap_socket(raw_sock, server_hostname="localhost"))

    _, conn = tls_conn(good)
    for _ in login_steps(conn, "trust", roles.md5, "appdb", None):
        pass
    query_ok(conn, "SELECT current_user", [(roles.md5,)])
    conn.send(pgwire.message(b"p", b"x\0"))
    assert error_then_closed(conn).sqlstate == "08P01"
    conn.sock.close()
    _, conn = tls_conn(other)
    conn.send(pgwire.startup_message({"user": roles.md5, "database": "appdb"}))
    err = error_then_closed(conn)
    assert err.message == 'certificate authentication failed for user "%s"' % roles.md5, \
        err.fields
    conn.sock.close()
    for how in ("fin", "rst"):
        for startup in (False, True):
            raw_sock, conn = tls_conn(good)
            if startup:
                conn.send(pgwire.startup_message({"user": roles.md5, "database": "postgres"}))
            if how == "rst":
                rst_close(raw_sock)
            else:
                conn.sock.close()

    def settled():
        # The console over the unix socket (TCP clients need a certificate here).
        with pgwire.connect(pf.unix_socket_dir, pf.port, "postgres", "pgbouncer") as adm:
            adm.send_query("SHOW CLIENTS")
            _, cols, rows = adm.read_answer(DEADLINE)
        return len(rows) <= 1

    pfhelpers.wait_until(settled, DEADLINE, "clients gone")


# ---------------------------------------------------------------- console


def hold_transaction(pf, roles):
    conn = login(pf, "md5", roles.md5, roles.pw[roles.md5])
    conn.simple_query("BEGIN")
    conn.simple_query("SELECT 1")
    return conn


def test_console_waiting_commands_left_and_killed(proxy, postgres, roles):
    """A transaction holds a server; consoles issue PAUSE, PAUSE appdb, WAIT_CLOSE,
    WAIT_CLOSE appdb (they wait: the waiting state is in the cold part). Some of them leave
    (FIN, RST), one is killed by another console's KILL_CLIENT, one sends more commands while
    it waits; then the transaction ends: the remaining ones get their answers, in order, and
    RESUME brings the pool back."""
    pf = proxy(params={"auth_type": "md5", "pool_mode": "session"}, userlist=userlist(roles))
    tx = hold_transaction(pf, roles)
    ctl = Console(pf)
    cmds = ["PAUSE", "PAUSE appdb", "WAIT_CLOSE", "WAIT_CLOSE appdb"] * 3
    waiters = []
    for sql in cmds:
        c = Console(pf)
        c.send(sql)
        waiters.append((sql, c))
    # Pipelined commands behind a waiting one.
    waiters[2][1].send("SHOW VERSION")
    waiters[2][1].send("SHOW POOLS")
    leave(waiters[0][1].conn, "fin")
    leave(waiters[1][1].conn, "rst")
    # KILL_CLIENT of a waiting console (ids from SHOW CLIENTS of the pgbouncer database).
    rows = [r for r in pfhelpers.show(pf, "CLIENTS") if r["database"] in CONSOLE_DBS]
    victim_port = waiters[3][1].conn.sock.getsockname()[1]
    victim = [r["id"] for r in rows if int(r["port"]) == victim_port]
    assert victim, (victim_port, rows)
    assert ctl.run("KILL_CLIENT %s" % victim[0]) == ["KILL_CLIENT"]
    assert pgwire.wait_closed(waiters[3][1].conn, DEADLINE)
    # Still waiting: the transaction is open (PAUSE waits for its server).
    assert not waiters[4][1].pending(0.3)
    tx.simple_query("COMMIT")
    tx.close()
    for sql, c in waiters[4:]:
        got = c.answer()
        assert got == [sql.split()[0]], (sql, got)
    # The one with pipelined commands: its PAUSE, then SHOW VERSION, then SHOW POOLS.
    w = waiters[2][1]
    assert w.answer() == [waiters[2][0]]
    w.answer()
    w.answer()
    assert ctl.run("RESUME") == ["RESUME"]
    for sql, c in waiters[2:]:
        c.conn.close()
    ctl.conn.close()
    alive(pf, roles.md5, roles.pw[roles.md5])
    clients_settled(pf)
    pause_of_a_database_reload_removes(proxy, postgres, roles)


def pause_of_a_database_reload_removes(proxy, postgres, roles):
    """PAUSE appdb2 waits for an open transaction (the waiting database is in the console's cold
    part); a RELOAD drops appdb2 from the config; the transaction ends: PAUSE answers, nothing
    is read from the freed database."""
    dbs = {"appdb2": postgres.db_entry("appdb")}
    pf = proxy(params={"auth_type": "md5", "pool_mode": "session"}, databases=dbs,
               userlist=userlist(roles))
    tx = login(pf, "md5", roles.md5, roles.pw[roles.md5], db="appdb2")
    tx.simple_query("BEGIN")
    waiter = Console(pf)
    waiter.send("PAUSE appdb2")
    assert not waiter.pending(0.3), "PAUSE answered during a transaction"
    pf.databases.pop("appdb2")
    pf.write_ini()
    ctl = Console(pf)
    assert ctl.run("RELOAD") == ["RELOAD"]
    tx.simple_query("COMMIT")
    tx.close()
    assert waiter.answer() == ["PAUSE"]
    assert ctl.run("RESUME") == ["RESUME"]
    waiter.conn.close()
    ctl.conn.close()
    alive(pf, roles.md5, roles.pw[roles.md5])
    clients_settled(pf)


def test_many_consoles_and_suspend_left_behind(proxy, roles):
    """Thirty console sessions at once log in (md5 and SCRAM users of admin_users), some
    SUSPEND / RESUME, some leave mid-login or mid-command; a SUSPEND whose console leaves
    makes the pooler resume by itself."""
    pf = proxy(params={"auth_type": "md5", "admin_users": "postgres,%s" % roles.scram},
               userlist=userlist(roles, scram_secret=True))
    errors = []

    def one(i):
        try:
            if i % 5 == 0:
                conn = raw(pf)
                steps = login_steps(conn, "md5", "postgres", "pgbouncer", "pg-super-secret")
                for step in steps:
                    if step == ("auth-requested" if i % 10 else "half-password"):
                        break
                leave(conn, "rst" if i % 2 else "fin")
                return
            user, pw, m = (("postgres", "pg-super-secret", "md5") if i % 2 else
                           (roles.scram, roles.pw[roles.scram], "scram"))
            conn = login(pf, m, user, pw, db="pgbouncer")
            for sql in ("SHOW CLIENTS", "SHOW POOLS", "SHOW STATS"):
                conn.simple_query(sql)
            if i % 3 == 0:
                conn.send_query("SHOW SERVERS")
                leave(conn, "rst")
                return
            conn.close()
        except Exception as e:  # noqa: BLE001
            errors.append((i, repr(e)))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    # SUSPEND, then its console leaves: the pooler resumes by itself.
    c = Console(pf)
    assert c.run("SUSPEND") == ["SUSPEND"]
    leave(c.conn, "rst")
    pf.wait_for_log("admin disappeared when suspended, doing RESUME")
    alive(pf, roles.md5, roles.pw[roles.md5])
    clients_settled(pf)


def test_kill_client_mid_login(proxy, postgres, roles):
    """KILL_CLIENT of clients that are mid-login: waiting for a server's parameters (first
    login of a pool whose server does not answer), and mid-lookup. Killed with 57P01; the
    pooler goes on."""
    silent = pfhelpers.FakeServer("silent")
    try:
        pf = proxy(params={"auth_type": "md5", "auth_user": roles.auth,
                           "auth_query": "SELECT * FROM pfcold.stuck($1)",
                           "client_login_timeout": 60, "query_wait_timeout": 60},
                   databases={"dead": "host=127.0.0.1 port=%d dbname=appdb" % silent.port},
                   userlist=userlist(roles))
        # Waiting for the welcome (its password was right; no server answers).
        waiting = raw(pf)
        for step in login_steps(waiting, "md5", roles.md5, "dead", roles.pw[roles.md5]):
            if step == "password-sent":
                break
        # Mid-lookup.
        looking = start_lookup(pf, roles.lu_md5)
        pfhelpers.wait_query_running(postgres, "SELECT * FROM pfcold.stuck($1)")

        def ids():
            rows = pfhelpers.show(pf, "CLIENTS")
            return [r for r in rows if r["database"] not in CONSOLE_DBS] or None

        rows = pfhelpers.wait_until(lambda: (lambda r: r if r and len(r) >= 2 else None)(ids()),
                                    DEADLINE, "both clients listed")
        c = Console(pf)
        for r in rows:
            assert c.run("KILL_CLIENT %s" % r["id"]) == ["KILL_CLIENT"], rows
        for conn in (waiting, looking):
            err = error_then_closed(conn)
            assert err.sqlstate == "57P01", err.fields
        c.conn.close()
        clients_settled(pf)
        alive(pf, roles.md5, roles.pw[roles.md5])
    finally:
        end_stuck(postgres)
        silent.stop()


def test_shutdown_from_console_with_waiters_and_logins(proxy, roles):
    """SHUTDOWN from a console while another console's PAUSE waits and clients are mid-login
    (md5 requested, SCRAM half-way): the process exits with 0 and LeakSanitizer finds
    nothing (the fixture reads its report)."""
    pf = proxy(params={"auth_type": "md5", "pool_mode": "session"},
               userlist=userlist(roles, scram_secret=True))
    tx = hold_transaction(pf, roles)
    waiter = Console(pf)
    waiter.send("PAUSE")
    mids = []
    for user, m in ((roles.md5, "md5"), (roles.scram, "scram"), (roles.md5, "md5")):
        conn = raw(pf)
        for step in login_steps(conn, m, user, "appdb", roles.pw[user]):
            if step in ("auth-requested", "server-first-read"):
                if m == "md5" or step == "server-first-read":
                    break
        mids.append(conn)
    ctl = Console(pf)
    ctl.send("SHUTDOWN")
    rc = pf.wait(DEADLINE)
    assert rc == 0, pf.all_output()
    for c in mids + [tx.sock, waiter.conn.sock, ctl.conn.sock]:
        (c.sock if hasattr(c, "sock") else c).close()


def test_cancel_requests_and_sigint_exit(proxy, postgres, roles):
    """Cancel requests (never logged in, cold part freed with them): right key on a running
    query, wrong keys, a CancelRequest with bytes after it, half a CancelRequest then RST,
    sixty at once; then SIGINT: exit status 0."""
    pf = proxy(params={"auth_type": "md5"}, userlist=userlist(roles))
    # pgwire.Connection.login keeps the BackendKeyData (login_steps does not).
    conn = pgwire.connect(pf.host, pf.port, roles.md5, "appdb", roles.pw[roles.md5])
    pid, key = conn.backend_key
    conn.send_query("SELECT pg_sleep(30)")
    pfhelpers.wait_query_running(postgres, "SELECT pg_sleep(30)", user=roles.md5)
    # Junk first, then the right key.
    for _ in range(20):
        pgwire.cancel_request(pf.host, pf.port, random.getrandbits(32), random.getrandbits(32))
    s = pgwire.open_socket(pf.host, pf.port)
    s.sendall(struct.pack("!IIII", 16, 80877102, pid, key ^ 1) + b"garbage after it")
    s.close()
    s = pgwire.open_socket(pf.host, pf.port)
    s.sendall(struct.pack("!IIII", 16, 80877102, pid, key)[:10])
    rst_close(s)

    def burst():
        for _ in range(10):
            pgwire.cancel_request(pf.host, pf.port, random.getrandbits(32),
                                  random.getrandbits(32))

    threads = [threading.Thread(target=burst) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    pgwire.cancel_request(pf.host, pf.port, pid, key)
    with pytest.raises(pgwire.PgError) as ei:
        conn.read_result()
    assert ei.value.sqlstate == "57014", ei.value.fields
    query_ok(conn)
    conn.close()
    clients_settled(pf)
    pf.stop(signal.SIGINT, timeout=DEADLINE, expect=0)
