"""auth_user / auth_query / auth_dbname: users missing from auth_file are looked up in Postgres.

The users looked up here are never in the auth_file; the auth_user (aqa_*) is, with its
password. Postgres stores each role's secret (md5 or SCRAM); the default auth_query returns it
from pg_authid, which aqa_* may read (pg_read_all_data). A SECURITY DEFINER function
pgbouncer.get_auth(name), as PgBouncer's documentation recommends, exists only in appdb: it
logs every name it is asked about (pgbouncer.lookups), so a test can see exactly what reached
Postgres, and only aql_* (which cannot read pg_authid itself) uses it.
"""

import base64
import concurrent.futures
import hashlib
import random
import struct
import time

import psycopg
import pytest

import pfhelpers
import pgwire

AUTH_PW = "aq-auth-pw"
SQL_GET_AUTH = "SELECT * FROM pgbouncer.get_auth($1)"


class Roles:
    """Names of the roles this module creates (unique per run)."""


def _sql(cluster, dbname, *stmts):
    with cluster.connect(dbname=dbname, autocommit=True) as conn:
        for s in stmts:
            conn.execute(s)


@pytest.fixture(scope="module")
def roles(postgres):
    r = Roles()
    tag = "%d_%d" % (random.randrange(10 ** 6), int(time.time()) % 10 ** 6)
    r.auth = "aqa_" + tag          # the auth_user: reads pg_authid
    r.low = "aql_" + tag           # an auth_user that can only call pgbouncer.get_auth()
    r.md5 = "aqm_" + tag           # password stored as md5
    r.scram = "aqs_" + tag         # password stored as SCRAM
    r.expired = "aqe_" + tag       # rolvaliduntil in the past
    r.target = "aqt_" + tag        # what an injected name would reach if it were SQL
    r.many = ["aqc%d_%s" % (i, tag) for i in range(10)]
    r.pw = {r.md5: "md5-pw-" + tag, r.scram: "scram-pw-" + tag, r.expired: "exp-pw",
            r.target: "target-pw-" + tag}
    r.pw.update({u: "pw-%d-%s" % (i, tag) for i, u in enumerate(r.many)})
    stmts = [
        "CREATE ROLE %s LOGIN PASSWORD '%s'" % (r.auth, AUTH_PW),
        "GRANT pg_read_all_data TO %s" % r.auth,
        "CREATE ROLE %s LOGIN PASSWORD '%s'" % (r.low, AUTH_PW),
        "CREATE ROLE %s LOGIN PASSWORD '%s'" % (r.scram, r.pw[r.scram]),
        "CREATE ROLE %s LOGIN PASSWORD '%s' VALID UNTIL '2001-01-01'" % (r.expired,
                                                                          r.pw[r.expired]),
        "SET password_encryption = 'md5'",
        "CREATE ROLE %s LOGIN PASSWORD '%s'" % (r.target, r.pw[r.target]),
        "CREATE ROLE %s LOGIN PASSWORD '%s'" % (r.md5, r.pw[r.md5]),
    ]
    for i, u in enumerate(r.many):
        stmts.append("SET password_encryption = '%s'" % ("md5" if i % 2 else "scram-sha-256"))
        stmts.append("CREATE ROLE %s LOGIN PASSWORD '%s'" % (u, r.pw[u]))
    _sql(postgres, "postgres", *stmts)
    _sql(postgres, "appdb",
         "CREATE SCHEMA IF NOT EXISTS pgbouncer",
         "CREATE TABLE IF NOT EXISTS pgbouncer.lookups (name text, at timestamptz DEFAULT now())",
         """CREATE OR REPLACE FUNCTION pgbouncer.get_auth(p_usename text)
            RETURNS TABLE(username text, password text)
            LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
            BEGIN
                INSERT INTO pgbouncer.lookups(name) VALUES (p_usename);
                RETURN QUERY SELECT rolname::text,
                    CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END
                    FROM pg_authid WHERE rolname = p_usename AND rolcanlogin;
            END $$""",
         "REVOKE ALL ON FUNCTION pgbouncer.get_auth(text) FROM PUBLIC",
         "GRANT USAGE ON SCHEMA pgbouncer TO %s" % r.low,
         "GRANT EXECUTE ON FUNCTION pgbouncer.get_auth(text) TO %s" % r.low,
         # Answers auth_query must not give, for the error tests.
         """CREATE OR REPLACE FUNCTION pgbouncer.two_rows(p text) RETURNS TABLE(u text, p2 text)
            LANGUAGE sql AS $$ SELECT p, 'x' UNION ALL SELECT p, 'y' $$""",
         """CREATE OR REPLACE FUNCTION pgbouncer.three_cols(p text)
            RETURNS TABLE(u text, p2 text, p3 text) LANGUAGE sql AS $$ SELECT p, 'x', 'z' $$""",
         """CREATE OR REPLACE FUNCTION pgbouncer.null_name(p text) RETURNS TABLE(u text, p2 text)
            LANGUAGE sql AS $$ SELECT NULL::text, 'x' $$""",
         """CREATE OR REPLACE FUNCTION pgbouncer.null_pw(p text) RETURNS TABLE(u text, p2 text)
            LANGUAGE sql AS $$ SELECT p, NULL::text $$""",
         """CREATE OR REPLACE FUNCTION pgbouncer.fails(p text) RETURNS TABLE(u text, p2 text)
            LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'lookup of % failed', p; END $$""",
         """CREATE OR REPLACE FUNCTION pgbouncer.slow(p text) RETURNS TABLE(u text, p2 text)
            LANGUAGE sql AS $$ SELECT p, pg_sleep(60)::text $$""",
         "GRANT USAGE ON SCHEMA pgbouncer TO %s" % r.auth,
         "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA pgbouncer TO %s" % r.auth)
    # Logins go to appdb's public schema too (the tests create no tables there).
    return r


def start(proxy, roles, params=None, databases=None, **kw):
    """pgfunnel with the auth_user in the auth_file (and the fixture's users), auth_type md5,
    global auth_user = roles.auth unless params say otherwise."""
    p = {"auth_type": "md5", "auth_user": roles.auth, "pool_mode": "transaction"}
    p.update(params or {})
    p = {k: v for k, v in p.items() if v is not None}
    return proxy(params=p, databases=databases, userlist={roles.auth: AUTH_PW, roles.low: AUTH_PW},
                 **kw)


@pytest.fixture
def end_slow_lookups(postgres):
    """Ends the backends still running pgbouncer.slow() (Postgres does not notice that the
    socket of a busy backend closed)."""
    yield
    _sql(postgres, "postgres", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
         "WHERE query LIKE '%pgbouncer.slow%' AND pid <> pg_backend_pid()")


def refused(pf, user, password, dbname="appdb"):
    err, closed = pgwire.login_refused(pf.host, pf.port, user, dbname, password, timeout=15)
    assert closed, "the connection stayed open after %s" % err
    return err


def assert_wrong_password(err, user):
    assert (err.severity, err.sqlstate, err.message) == (
        "FATAL", "28P01", 'password authentication failed for user "%s"' % user), err.fields


def lookups(postgres):
    with postgres.connect(dbname="appdb", autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT name FROM pgbouncer.lookups ORDER BY at")]


def clear_lookups(postgres):
    _sql(postgres, "appdb", "TRUNCATE pgbouncer.lookups")


# ---------------------------------------------------------------- logins


@pytest.mark.parametrize("auth_type", ["md5", "scram-sha-256", "plain"])
def test_looked_up_users_log_in_and_query(proxy, postgres, roles, auth_type):
    pf = start(proxy, roles, {"auth_type": auth_type})
    # md5 with a SCRAM secret switches to SCRAM (as for auth_file secrets); scram-sha-256 with
    # an md5 secret cannot work (it fails like a wrong password, below).
    users = [roles.scram] + ([roles.md5] if auth_type != "scram-sha-256" else [])
    for user in users:
        if auth_type == "plain" and user == roles.scram:
            # Cleartext proves the password but gives no SCRAM ClientKey: the pool cannot log
            # in to Postgres with a SCRAM verifier alone (as for auth_file secrets, and as in
            # PgBouncer).
            err = refused(pf, user, roles.pw[user])
            assert err.sqlstate == "28P01" and "SCRAM keys" in err.message, err.fields
            continue
        with pgwire.connect(pf.host, pf.port, user, "appdb", roles.pw[user]) as conn:
            expect = {"plain": [3, 0], "md5": [5, 0] if user == roles.md5 else [10, 11, 12, 0],
                      "scram-sha-256": [10, 11, 12, 0]}[auth_type]
            assert conn.auth_methods == expect
            assert conn.simple_query("SELECT current_user") == [(user,)]
        with pfhelpers.proxy_connect(pf, user, "appdb", roles.pw[user]) as conn:
            for i in range(3):
                with conn.transaction():
                    assert conn.execute("SELECT current_user, %s::int", (i,)).fetchone() == (
                        user, i)
    if auth_type == "scram-sha-256":
        assert_wrong_password(refused(pf, roles.md5, roles.pw[roles.md5]), roles.md5)


@pytest.mark.parametrize("auth_type", ["md5", "scram-sha-256", "plain"])
def test_plain_password_from_auth_query(proxy, postgres, roles, auth_type):
    """A query may return a plain password: it checks the client under every auth_type and
    logs the pool in to Postgres whatever method the server asks for."""
    pw = roles.pw[roles.target]
    pf = start(proxy, roles, {"auth_type": auth_type, "auth_query":
                              "SELECT rolname, '%s'::text FROM pg_roles WHERE rolname = $1" % pw})
    with pgwire.connect(pf.host, pf.port, roles.target, "appdb", pw) as c:
        assert c.simple_query("SELECT current_user") == [(roles.target,)]
    assert_wrong_password(refused(pf, roles.target, pw + "x"), roles.target)


def test_psql_logs_in(proxy, postgres, roles):
    pf = start(proxy, roles)
    res = pfhelpers.psql("SELECT current_user", host=pf.host, port=pf.port, user=roles.md5,
                         dbname="appdb", password=roles.pw[roles.md5])
    assert res.returncode == 0 and res.stdout.strip() == roles.md5, (res.stdout, res.stderr)


@pytest.mark.parametrize("auth_type,known,methods", [
    ("md5", "md5", [5]),
    ("scram-sha-256", "scram", [10, 11]),
    ("plain", "md5", [3]),
], ids=["md5", "scram-sha-256", "plain"])
def test_unknown_user_answered_like_a_wrong_password(proxy, postgres, roles, auth_type, known,
                                                     methods):
    pf = start(proxy, roles, {"auth_type": auth_type})
    known = getattr(roles, known)
    wrong = pgwire.Connection(pgwire.open_socket(pf.host, pf.port))
    unknown = pgwire.Connection(pgwire.open_socket(pf.host, pf.port))
    with pytest.raises(pgwire.PgError) as e1:
        wrong.login(known, "appdb", "not-the-password")
    with pytest.raises(pgwire.PgError) as e2:
        unknown.login("aq_nobody", "appdb", "not-the-password")
    assert_wrong_password(e1.value, known)
    assert_wrong_password(e2.value, "aq_nobody")
    # The same exchange up to the refusal: under SCRAM a fake one (AuthenticationSASL, then
    # SASLContinue) for the unknown name too, so a client cannot tell the two apart.
    assert wrong.auth_methods == methods
    # Under md5 a name without a secret gets what pg_authid's users mostly have (SCRAM by
    # default since PostgreSQL 14), as Postgres gives it password_encryption's type; a user
    # whose secret is md5 does get the md5 challenge.
    assert unknown.auth_methods == ([10, 11] if auth_type == "md5" else methods)
    wrong.close()
    unknown.close()
    # And the refusal is not remembered: the right password works right after.
    with pgwire.connect(pf.host, pf.port, known, "appdb", roles.pw[known]) as c:
        assert c.simple_query("SELECT current_user") == [(known,)]


def test_expired_password_refused(proxy, postgres, roles):
    pf = start(proxy, roles)
    assert_wrong_password(refused(pf, roles.expired, roles.pw[roles.expired]), roles.expired)
    # Postgres itself refuses it too (the secret is stale, not merely absent).
    with pytest.raises(psycopg.OperationalError):
        postgres.connect(user=roles.expired, password=roles.pw[roles.expired]).close()


def test_null_or_empty_password_admits_nobody(proxy, postgres, roles):
    """PgBouncer stores a NULL password as the plain text "md5", which a client can match; a
    NULL (or empty) password must match nothing."""
    pf = start(proxy, roles, {"auth_user": roles.auth, "auth_query":
                              "SELECT * FROM pgbouncer.null_pw($1)", "auth_type": "plain"},
               databases={"appdb": postgres.db_entry("appdb")})
    for pw in ("md5", "", "x"):
        assert_wrong_password(refused(pf, roles.md5, pw), roles.md5)


def test_auth_file_users_are_not_looked_up(proxy, postgres, roles):
    # The query fails whenever it runs: alice (in the auth_file) never makes it run.
    pf = start(proxy, roles, {"auth_query": "SELECT * FROM pgbouncer.fails($1)"})
    with pgwire.connect(pf.host, pf.port, "alice", "appdb", postgres.passwords["alice"]) as c:
        assert c.simple_query("SELECT current_user") == [("alice",)]
    assert "auth_query" not in pf.log_text()


# ---------------------------------------------------------------- the name is a value


INJECTIONS = [
    "x' OR '1'='1",
    # Each of these makes the default query return the target's row if spliced into the SQL
    # text in place of $1: as it is, or inside quotes.
    "'%s' --",
    "x' OR rolname = '%s' --",
    "%s' --",
]


def test_user_name_is_a_bound_parameter(proxy, postgres, roles):
    pf = start(proxy, roles, {"auth_type": "plain"})
    names = [n % roles.target if "%s" in n else n for n in INJECTIONS]
    names.append("a\\b'\"c ünï 😀 ;--")
    for name in names:
        # The target's password would let the spliced lookup in; bound, the name is unknown.
        assert_wrong_password(refused(pf, name, roles.pw[roles.target]), name)
    # The target itself logs in with it (so the refusals above are not about the password).
    with pgwire.connect(pf.host, pf.port, roles.target, "appdb", roles.pw[roles.target]) as c:
        assert c.simple_query("SELECT current_user") == [(roles.target,)]


def test_name_not_in_server_encoding_is_unknown(proxy, postgres, roles):
    """Bytes that are not UTF-8 cannot name a role of a UTF-8 cluster: Postgres refuses the
    bound value (22021) and the client is told what any unknown user is told."""
    pf = start(proxy, roles)
    conn = pgwire.Connection(pgwire.open_socket(pf.host, pf.port, 10))
    body = struct.pack("!I", pgwire.PROTOCOL_3_0) + b"user\0bad\xff\xfename\0database\0appdb\0\0"
    conn.send(struct.pack("!I", len(body) + 4) + body)
    kind, payload = conn.read_message(10)
    # Unknown under md5 with auth_query: the SCRAM exchange most users get, failing at the end.
    assert kind == "R" and struct.unpack("!I", payload[:4])[0] == 10, (kind, payload)
    first = b"n,,n=,r=abcdefghijklmnopqrstuvwx"
    conn.send(pgwire.message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first))
    kind, payload = conn.read_message(10)
    assert kind == "R" and struct.unpack("!I", payload[:4])[0] == 11, (kind, payload)
    attrs = dict(a.split("=", 1) for a in payload[4:].decode().split(","))
    conn.send(pgwire.message(b"p", ("c=biws,r=%s,p=%s" % (
        attrs["r"], base64.b64encode(b"\0" * 32).decode())).encode()))
    kind, payload = conn.read_message(10)
    assert kind == "E", (kind, payload)
    fields = pgwire.parse_fields(payload)
    assert fields["C"] == "28P01" and fields["M"].startswith(
        "password authentication failed for user"), fields
    conn.close()


def test_names_reach_postgres_unchanged(proxy, postgres, roles):
    """Through a query that records its argument: Postgres receives each name exactly."""
    clear_lookups(postgres)
    pf = start(proxy, roles, {"auth_user": roles.low, "auth_query": SQL_GET_AUTH})
    names = ["x' OR '1'='1", "a\\b'\"c ünï 😀", "$1", "'; DROP TABLE pgbouncer.lookups; --"]
    for name in names:
        assert_wrong_password(refused(pf, name, "pw"), name)
    assert lookups(postgres) == names


# ---------------------------------------------------------------- where the lookup runs


def test_custom_security_definer_query(proxy, postgres, roles):
    clear_lookups(postgres)
    pf = start(proxy, roles, {"auth_user": roles.low, "auth_query": SQL_GET_AUTH})
    with pgwire.connect(pf.host, pf.port, roles.md5, "appdb", roles.pw[roles.md5]) as c:
        assert c.simple_query("SELECT current_user") == [(roles.md5,)]
    assert lookups(postgres) == [roles.md5]
    # The low auth_user cannot run the default query: the custom one did the work.
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with postgres.connect(user=roles.low, password=AUTH_PW, dbname="appdb") as conn:
            conn.execute("SELECT rolpassword FROM pg_authid")


def test_per_database_auth_user_overrides_global(proxy, postgres, roles):
    # The global auth_user cannot log in at all (no such role); appdb's own one can.
    pf = start(proxy, roles, {"auth_user": "aq_no_such_role"},
               databases={"appdb": postgres.db_entry("appdb", auth_user=roles.auth),
                          "postgres": postgres.db_entry("postgres")})
    with pgwire.connect(pf.host, pf.port, roles.md5, "appdb", roles.pw[roles.md5]) as c:
        assert c.simple_query("SELECT current_database()") == [("appdb",)]
    err = refused(pf, roles.md5, roles.pw[roles.md5], dbname="postgres")
    assert err.sqlstate == "28P01" and "aq_no_such_role" in err.message, err.fields
    # Per-database auth_query overrides the global one too.
    clear_lookups(postgres)
    pf = start(proxy, roles, {"auth_user": roles.low},
               databases={"appdb": postgres.db_entry("appdb",
                                                     auth_query="'%s'" % SQL_GET_AUTH)})
    with pgwire.connect(pf.host, pf.port, roles.scram, "appdb", roles.pw[roles.scram]) as c:
        assert c.simple_query("SELECT current_user") == [(roles.scram,)]
    assert lookups(postgres) == [roles.scram]


def test_auth_dbname(proxy, postgres, roles):
    """pgbouncer.get_auth exists in appdb only: clients of "postgres" are looked up there."""
    clear_lookups(postgres)
    authdb = postgres.db_entry("appdb")
    pf = start(proxy, roles, {"auth_user": roles.low, "auth_query": SQL_GET_AUTH,
                              "auth_dbname": "authdb"},
               databases={"authdb": authdb, "postgres": postgres.db_entry("postgres"),
                          "direct": postgres.db_entry("postgres", auth_dbname="nosuchdb")})
    with pgwire.connect(pf.host, pf.port, roles.md5, "postgres", roles.pw[roles.md5]) as c:
        assert c.simple_query("SELECT current_database(), current_user") == [
            ("postgres", roles.md5)]
    assert lookups(postgres) == [roles.md5]
    # The auth pool shows under authdb, the client's under postgres.
    pools = {(r["database"], r["user"]) for r in pfhelpers.show(pf, "POOLS")}
    assert ("authdb", roles.low) in pools and ("postgres", roles.md5) in pools, pools
    # A per-database auth_dbname naming no database: PgBouncer's "bouncer config error".
    after = pf.log_len()
    err = refused(pf, roles.md5, roles.pw[roles.md5], dbname="direct")
    assert (err.sqlstate, err.message) == ("08P01", "bouncer config error"), err.fields
    pf.wait_for_log(r'authentication database "nosuchdb" is not configured', after=after)


def test_auth_dbname_from_fallback_database(proxy, postgres, roles):
    """As in PgBouncer, auth_dbname may name a database the "*" entry creates."""
    clear_lookups(postgres)
    pf = start(proxy, roles, {"auth_user": roles.low, "auth_query": SQL_GET_AUTH,
                              "auth_dbname": "appdb"},
               databases={"appdb": None, "*": "host=%s port=%d" % (postgres.host, postgres.port)})
    with pgwire.connect(pf.host, pf.port, roles.scram, "postgres",
                        roles.pw[roles.scram]) as c:
        assert c.simple_query("SELECT current_database()") == [("postgres",)]
    assert lookups(postgres) == [roles.scram]


def test_auth_dbname_reserved_console(proxy, postgres, roles, pgfunnel):
    pf = start(proxy, roles, databases={
        "cons": postgres.db_entry("appdb", auth_dbname="pgbouncer")})
    after = pf.log_len()
    err = refused(pf, roles.md5, roles.pw[roles.md5], dbname="cons")
    assert (err.sqlstate, err.message) == ("08P01", "bouncer config error")
    pf.wait_for_log(r'cannot use the reserved "pgbouncer" database as an auth_dbname',
                    after=after)
    # As a global parameter it is refused when the file is loaded.
    bad = pgfunnel.start(params={"auth_dbname": "pgbouncer"}, wait=False)
    assert bad.wait(10) != 0
    assert 'cannot use the reserved "pgbouncer" database as an auth_dbname' in bad.all_output()


# ---------------------------------------------------------------- answers auth_query may not give


@pytest.mark.parametrize("func,log", [
    ("two_rows", r"auth_query returned 2 rows, expected at most one"),
    ("three_cols", r"expected 2 columns from auth_query, not 3"),
    ("null_name", r"auth_query response contained null user name"),
    ("fails", r"error response from auth_query: P0001 lookup of .* failed"),
])
def test_bad_answers_close_the_client(proxy, postgres, roles, func, log):
    pf = start(proxy, roles, {"auth_query": "SELECT * FROM pgbouncer.%s($1)" % func,
                              "default_pool_size": 1})
    after = pf.log_len()
    err = refused(pf, roles.md5, "whatever")
    assert (err.severity, err.sqlstate, err.message) == ("FATAL", "08P01", "bouncer config error")
    pf.wait_for_log(log, after=after)
    # The server it ran on was clean afterwards: back in the pool (one server, reused), not
    # closed; the next lookup runs on it.
    row = pfhelpers.pool_row(pf, "appdb", roles.auth)
    assert row["sv_idle"] == 1 and row["cl_active"] == 0 and row["cl_waiting"] == 0, (
        row, pf.log_text())
    err = refused(pf, roles.md5, "whatever")
    assert err.message == "bouncer config error"
    assert "closing because" not in "".join(
        line for line in pf.log_text().splitlines()[after:] if "/%s@" % roles.auth in line)


# ---------------------------------------------------------------- concurrency


def test_concurrent_logins_get_their_own_answers(proxy, postgres, roles):
    """50 logins of 10 users at once through an auth pool of 2 servers: each lookup gets the
    answer for its own name, the right passwords work, the wrong ones do not."""
    pf = start(proxy, roles, {"auth_type": "md5", "default_pool_size": 20,
                              "max_client_conn": 200},
               users={roles.auth: "pool_size=2"})
    jobs = []
    for i in range(50):
        user = roles.many[i % 10]
        good = i % 5 != 3
        pw = roles.pw[user] if good else roles.pw[roles.many[(i + 1) % 10]]
        jobs.append((user, pw, good))

    def attempt(job):
        user, pw, good = job
        try:
            with pgwire.connect(pf.host, pf.port, user, "appdb", pw, timeout=30) as c:
                return ("in", c.simple_query("SELECT current_user")[0][0])
        except pgwire.PgError as e:
            return ("refused", e.sqlstate, e.message)

    with concurrent.futures.ThreadPoolExecutor(50) as ex:
        results = list(ex.map(attempt, jobs))
    for (user, pw, good), res in zip(jobs, results):
        if good:
            assert res == ("in", user), (user, res)
        else:
            assert res == ("refused", "28P01",
                           'password authentication failed for user "%s"' % user), (user, res)
    # The auth pool never had more than its 2 servers, and they are idle again.
    row = pfhelpers.pool_row(pf, "appdb", roles.auth)
    assert pfhelpers.pool_servers(row) <= 2 and row["cl_active"] == row["cl_waiting"] == 0, row


# ---------------------------------------------------------------- failures and limits


def test_auth_pool_cannot_connect(proxy, postgres, roles, new_port):
    dead = new_port()  # nothing listens there
    pf = start(proxy, roles, {"auth_dbname": "authdb", "server_login_retry": 30},
               databases={"authdb": "host=127.0.0.1 port=%d dbname=appdb" % dead})
    t0 = time.monotonic()
    err = refused(pf, roles.md5, roles.pw[roles.md5])
    assert time.monotonic() - t0 < 5  # told at once, not after query_wait_timeout
    assert err.severity == "FATAL" and err.sqlstate == "08006", err.fields
    assert "server connection failed" in err.message, err.fields
    err = refused(pf, roles.md5, roles.pw[roles.md5])
    assert err.sqlstate == "08006" and err.message.startswith(
        "server login has been failing, cached error: server connection failed"), err.fields


def test_auth_user_with_wrong_password(proxy, postgres, roles):
    pf = proxy(params={"auth_type": "md5", "auth_user": roles.auth},
               userlist={roles.auth: "not-" + AUTH_PW})
    err = refused(pf, roles.md5, roles.pw[roles.md5])
    # Postgres's words about the auth_user, as PgBouncer passes them on.
    assert (err.sqlstate, err.message) == (
        "28P01", 'password authentication failed for user "%s"' % roles.auth), err.fields


def test_stuck_lookup_bounded_by_client_login_timeout(proxy, postgres, roles, end_slow_lookups):
    pf = start(proxy, roles, {"auth_query": "SELECT * FROM pgbouncer.slow($1)",
                              "client_login_timeout": 2})
    t0 = time.monotonic()
    err = refused(pf, roles.md5, roles.pw[roles.md5])
    elapsed = time.monotonic() - t0
    assert 1.5 <= elapsed < 10, elapsed
    assert err.message.startswith("client_login_timeout"), err.fields
    # Its server was mid-query: closed, not reused.
    pfhelpers.wait_pool(pf, "appdb", lambda r: pfhelpers.pool_servers(r) == 0,
                        "the stuck lookup's server closed", user=roles.auth)


def test_client_leaving_mid_lookup(proxy, postgres, roles, end_slow_lookups):
    pf = start(proxy, roles, {"auth_query": "SELECT * FROM pgbouncer.slow($1)"})
    conn = pgwire.Connection(pgwire.open_socket(pf.host, pf.port))
    conn.send(pgwire.startup_message({"user": roles.md5, "database": "appdb"}))
    pfhelpers.wait_query_running(postgres, "SELECT * FROM pgbouncer.slow($1)")
    row = pfhelpers.pool_row(pf, "appdb", roles.auth)
    assert row["cl_active"] == 1 and row["sv_active"] == 1, row
    conn.close()
    pfhelpers.wait_pool(pf, "appdb", lambda r: pfhelpers.pool_servers(r) == 0 and
                        r["cl_active"] == 0, "the lookup's server closed", user=roles.auth)
    # The next login is looked up on a new server.
    pf2 = start(proxy, roles)
    with pgwire.connect(pf2.host, pf2.port, roles.md5, "appdb", roles.pw[roles.md5]) as c:
        assert c.simple_query("SELECT 1") == [("1",)]


def test_query_wait_timeout_for_a_server(proxy, postgres, roles, end_slow_lookups):
    """The auth pool's only server is held by a stuck lookup: the next one waits for a server
    and gets query_wait_timeout, as in PgBouncer."""
    pf = start(proxy, roles, {"auth_query": "SELECT * FROM pgbouncer.slow($1)",
                              "default_pool_size": 1, "query_wait_timeout": 2,
                              "client_login_timeout": 30})
    stuck = pgwire.Connection(pgwire.open_socket(pf.host, pf.port))
    stuck.send(pgwire.startup_message({"user": roles.md5, "database": "appdb"}))
    pfhelpers.wait_query_running(postgres, "SELECT * FROM pgbouncer.slow($1)")
    t0 = time.monotonic()
    err = refused(pf, roles.scram, roles.pw[roles.scram])
    assert 1.5 <= time.monotonic() - t0 < 10
    assert (err.sqlstate, err.message) == ("57014", "query_wait_timeout"), err.fields
    stuck.close()


# ---------------------------------------------------------------- reload and lifetime


def test_reload_changes_auth_query(proxy, postgres, roles):
    pf = start(proxy, roles, {"auth_query": "SELECT * FROM pgbouncer.null_pw($1)"})
    assert_wrong_password(refused(pf, roles.md5, roles.pw[roles.md5]), roles.md5)
    params = dict(pf.params)
    params["auth_query"] = ("SELECT rolname, rolpassword FROM pg_authid "
                            "WHERE rolname = $1 AND rolcanlogin")
    pf.write_ini(params)
    pfhelpers.console(pf, "RELOAD")
    with pgwire.connect(pf.host, pf.port, roles.md5, "appdb", roles.pw[roles.md5]) as c:
        assert c.simple_query("SELECT current_user") == [(roles.md5,)]
    # Per database, by reload too.
    dbs = dict(pf.databases)
    dbs["appdb"] = postgres.db_entry("appdb", auth_query="'SELECT * FROM pgbouncer.null_pw($1)'")
    pf.write_ini(databases=dbs)
    pfhelpers.console(pf, "RELOAD")
    assert_wrong_password(refused(pf, roles.md5, roles.pw[roles.md5]), roles.md5)


def test_password_change_seen_at_next_login(proxy, postgres, roles):
    """Each login is looked up anew (PgBouncer keeps no cache): a password changed in Postgres
    works at once, the old one no longer does."""
    name, pw = pfhelpers.new_role(postgres, "aqchg")
    pf = start(proxy, roles, {"pool_mode": "session"})
    with pgwire.connect(pf.host, pf.port, name, "appdb", pw) as c:
        assert c.simple_query("SELECT 1") == [("1",)]
        _sql(postgres, "postgres", "ALTER ROLE %s PASSWORD '%s-2'" % (name, pw))
        assert_wrong_password(refused(pf, name, pw), name)
        with pgwire.connect(pf.host, pf.port, name, "appdb", pw + "-2") as c2:
            assert c2.simple_query("SELECT 2") == [("2",)]
        # The session that logged in before keeps working.
        assert c.simple_query("SELECT 3") == [("3",)]


def test_looked_up_user_pool_dropped_when_unused(proxy, postgres, roles):
    pf = start(proxy, roles, {"server_idle_timeout": 1})
    with pgwire.connect(pf.host, pf.port, roles.md5, "appdb", roles.pw[roles.md5]) as c:
        assert c.simple_query("SELECT 1") == [("1",)]
        assert pfhelpers.find_pool(pfhelpers.show(pf, "POOLS"), "appdb", roles.md5)
    # Its client gone and its server idle past server_idle_timeout, the pool (and the user
    # the lookup found) goes; the next login makes them again.
    pfhelpers.wait_until(
        lambda: not pfhelpers.find_pool(pfhelpers.show(pf, "POOLS"), "appdb", roles.md5),
        15, "the looked-up user's pool dropped")
    with pgwire.connect(pf.host, pf.port, roles.md5, "appdb", roles.pw[roles.md5]) as c:
        assert c.simple_query("SELECT 2") == [("2",)]


def test_trust_with_auth_query(proxy, postgres, roles):
    pf = start(proxy, roles, {"auth_type": "trust"})
    with pgwire.connect(pf.host, pf.port, roles.md5, "appdb", roles.pw[roles.md5]) as c:
        assert c.auth_methods[0] == 0  # no password asked of the client
        assert c.simple_query("SELECT current_user") == [(roles.md5,)]
    err = refused(pf, "aq_nobody", None)
    assert (err.sqlstate, err.message) == ("28000", "no such user: aq_nobody"), err.fields
