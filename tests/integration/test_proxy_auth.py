"""Client authentication and pool logins through pgfunnel (issue 3), against the postgres fixture.

Client-side auth is tested with a pooler-only user, carol, and a database entry `fdb` that
forces user=alice with her password: whatever carol's auth_type / secret, the login to Postgres
is the same, so only pgfunnel's client authentication varies. Pool logins that use the auth_file
secret (no forced user) are tested separately.
"""

import psycopg
import pytest

import pfhelpers
import pgwire

CAROL_PW = "carol-pw"

# Authentication request codes: 0 Ok, 3 cleartext, 5 MD5, 10/11/12 SASL.
SASL = [10, 11, 12, 0]

SECRETS = {
    "plain": lambda: CAROL_PW,
    "md5": lambda: pfhelpers.md5_secret("carol", CAROL_PW),
    "scram": lambda: pfhelpers.scram_secret(CAROL_PW),
}

# (auth_type, secret kind, expected auth request codes, password the client sends)
MATRIX = [
    ("trust", "plain", [0], None),
    ("trust", "md5", [0], None),
    ("trust", "scram", [0], None),
    ("plain", "plain", [3, 0], CAROL_PW),
    ("plain", "md5", [3, 0], CAROL_PW),
    ("plain", "scram", [3, 0], CAROL_PW),
    ("md5", "plain", [5, 0], CAROL_PW),
    ("md5", "md5", [5, 0], CAROL_PW),
    ("md5", "scram", SASL, CAROL_PW),
    ("scram-sha-256", "plain", SASL, CAROL_PW),
    ("scram-sha-256", "scram", SASL, CAROL_PW),
]


def forced_db(postgres):
    return postgres.db_entry("appdb", user="alice", password=postgres.passwords["alice"])


def start_auth(proxy, postgres, auth_type, secret):
    return proxy(params={"auth_type": auth_type}, databases={"fdb": forced_db(postgres)},
                 userlist={"carol": secret})


@pytest.mark.parametrize("auth_type,kind,codes,password", MATRIX,
                         ids=["%s-%s" % (m[0], m[1]) for m in MATRIX])
def test_login_matrix(proxy, postgres, auth_type, kind, codes, password):
    pf = start_auth(proxy, postgres, auth_type, SECRETS[kind]())
    with pgwire.connect(pf.host, pf.port, "carol", "fdb", password) as conn:
        assert conn.auth_methods == codes
        assert conn.simple_query("SELECT current_user, current_database()") == [("alice", "appdb")]
    with pfhelpers.proxy_connect(pf, "carol", "fdb", password) as conn:
        assert conn.execute("SELECT 40 + 2").fetchone() == (42,)


@pytest.mark.parametrize("auth_type,kind", [m[:2] for m in MATRIX if m[0] != "trust"],
                         ids=["%s-%s" % m[:2] for m in MATRIX if m[0] != "trust"])
def test_wrong_password(proxy, postgres, auth_type, kind):
    pf = start_auth(proxy, postgres, auth_type, SECRETS[kind]())
    err, closed = pgwire.login_refused(pf.host, pf.port, "carol", "fdb", "not-" + CAROL_PW)
    assert (err.severity, err.sqlstate, err.message) == (
        "FATAL", "28P01", 'password authentication failed for user "carol"')
    assert closed
    with pytest.raises(psycopg.OperationalError) as exc:
        pfhelpers.proxy_connect(pf, "carol", "fdb", "wrong")
    assert 'password authentication failed for user "carol"' in str(exc.value)


@pytest.mark.parametrize("auth_type", ["plain", "md5", "scram-sha-256"])
def test_unknown_user_same_answer_as_wrong_password(proxy, postgres, auth_type):
    pf = start_auth(proxy, postgres, auth_type, CAROL_PW)
    err, closed = pgwire.login_refused(pf.host, pf.port, "zed", "fdb", "whatever")
    assert (err.severity, err.sqlstate, err.message) == (
        "FATAL", "28P01", 'password authentication failed for user "zed"')
    assert closed


def test_trust_unknown_user(proxy, postgres):
    pf = start_auth(proxy, postgres, "trust", CAROL_PW)
    err, closed = pgwire.login_refused(pf.host, pf.port, "zed", "fdb")
    assert (err.severity, err.sqlstate, err.message) == ("FATAL", "28000", "no such user: zed")
    assert closed


def test_scram_auth_with_md5_secret_fails(proxy, postgres):
    pf = start_auth(proxy, postgres, "scram-sha-256", SECRETS["md5"]())
    err, closed = pgwire.login_refused(pf.host, pf.port, "carol", "fdb", CAROL_PW)
    assert (err.severity, err.sqlstate) == ("FATAL", "28P01")
    assert closed


@pytest.mark.parametrize("auth_type", ["trust", "md5", "scram-sha-256"])
def test_unknown_database(proxy, postgres, auth_type):
    pf = start_auth(proxy, postgres, auth_type, CAROL_PW)
    err, closed = pgwire.login_refused(pf.host, pf.port, "carol", "nodb", CAROL_PW)
    assert (err.severity, err.sqlstate, err.message) == ("FATAL", "3D000", "no such database: nodb")
    assert closed


def test_auth_type_any(proxy, postgres):
    pf = proxy(params={"auth_type": "any"}, databases={"fdb": forced_db(postgres)},
               userlist={})
    with pgwire.connect(pf.host, pf.port, "anybody-at-all", "fdb") as conn:
        assert conn.auth_methods == [0]
        assert conn.simple_query("SELECT current_user") == [("alice",)]


def test_psql_login(proxy, postgres):
    pf = start_auth(proxy, postgres, "md5", SECRETS["md5"]())
    res = pfhelpers.psql("SELECT current_user || '@' || current_database()", port=pf.port,
                         user="carol", dbname="fdb", password=CAROL_PW, check=True)
    assert res.stdout == "alice@appdb\n"
    bad = pfhelpers.psql("SELECT 1", port=pf.port, user="carol", dbname="fdb", password="nope")
    assert bad.returncode == 2
    assert 'password authentication failed for user "carol"' in bad.stderr


# ------------------------------------------------ pool logins with the auth_file secret


def pg_authid_secret(postgres, role):
    with postgres.connect(autocommit=True) as conn:
        return conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s",
                            (role,)).fetchone()[0]


@pytest.mark.parametrize("user,kind", [("alice", "plain"), ("bob", "plain"), ("bob", "md5")])
def test_pool_login_with_auth_file_secret(proxy, postgres, user, kind):
    pw = postgres.passwords[user]
    secret = pw if kind == "plain" else pfhelpers.md5_secret(user, pw)
    pf = proxy(params={"auth_type": "md5"}, userlist={user: secret})
    with pfhelpers.proxy_connect(pf, user, "appdb", pw) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (
            user, "appdb")


@pytest.mark.parametrize("auth_type", ["scram-sha-256", "md5"])
def test_scram_passthrough(proxy, postgres, auth_type):
    """auth_file holds alice's SCRAM secret copied from pg_authid: pgfunnel has no password to
    log in to Postgres with, only the ClientKey of a client that logged in with SCRAM."""
    secret = pg_authid_secret(postgres, "alice")
    assert secret.startswith("SCRAM-SHA-256$")
    pf = proxy(params={"auth_type": auth_type, "pool_mode": "transaction"},
               userlist={"alice": secret})
    pw = postgres.passwords["alice"]
    with pgwire.connect(pf.host, pf.port, "alice", "appdb", pw) as first:
        assert first.auth_methods == SASL
        assert first.simple_query("SELECT current_user") == [("alice",)]
        # A second server must be opened while the first is held in a transaction: it too
        # logs in with the stored keys.
        first.simple_query("BEGIN")
        pid1 = first.simple_query("SELECT pg_backend_pid()")
        with pfhelpers.proxy_connect(pf, "alice", "appdb", pw, autocommit=True) as second:
            pid2 = second.execute("SELECT pg_backend_pid()::text").fetchone()
            assert [pid2] != pid1
        first.simple_query("COMMIT")


def test_pool_login_failure_passed_to_client(proxy, postgres):
    pf = proxy(databases={"bad": postgres.db_entry("appdb", user="alice", password="wrong")},
               userlist={"carol": CAROL_PW})
    err, closed = pgwire.login_refused(pf.host, pf.port, "carol", "bad", CAROL_PW)
    assert (err.severity, err.sqlstate, err.message) == (
        "FATAL", "28P01", 'password authentication failed for user "alice"')
    assert closed


def test_scram_secret_without_scram_client_cannot_log_in(proxy, postgres):
    """With trust there is no SCRAM exchange with the client, so no ClientKey: pgfunnel cannot
    log in to Postgres with a SCRAM secret, and the client is told so instead of hanging."""
    secret = pg_authid_secret(postgres, "alice")
    pf = proxy(params={"auth_type": "trust"}, userlist={"alice": secret})
    err, closed = pgwire.login_refused(pf.host, pf.port, "alice", "appdb", timeout=10)
    assert err.severity == "FATAL"
    assert closed
