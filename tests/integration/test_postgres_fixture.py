"""The postgres fixture itself: later tests rely on its roles and auth methods."""

import psycopg
import pytest

import pgwire


def test_alice_scram(postgres):
    with postgres.connect("alice", "appdb") as conn:
        row = conn.execute("SELECT current_user, current_database()").fetchone()
    assert row == ("alice", "appdb")


def test_bob_md5(postgres):
    with postgres.connect("bob") as conn:
        row = conn.execute("SELECT current_user, current_database()").fetchone()
    assert row == ("bob", "postgres")


def test_password_storage(postgres):
    # alice must authenticate with SCRAM and bob with MD5: the hba method md5
    # chooses by how the password is stored.
    with postgres.connect() as conn:
        rows = dict(conn.execute(
            "SELECT rolname, left(rolpassword, 14) FROM pg_authid"
            " WHERE rolname IN ('postgres', 'alice', 'bob')").fetchall())
    assert rows["postgres"] == "SCRAM-SHA-256$"
    assert rows["alice"] == "SCRAM-SHA-256$"
    assert rows["bob"].startswith("md5") and len(rows["bob"]) == 14


@pytest.mark.parametrize("user", ["alice", "bob"])
def test_wrong_password_psycopg(postgres, user):
    with pytest.raises(psycopg.OperationalError) as exc:
        postgres.connect(user, password="not-the-password")
    assert 'password authentication failed for user "%s"' % user in str(exc.value)


# Authentication request codes: 5 = MD5Password, 10 = SASL, 0 = Ok.
@pytest.mark.parametrize("user,methods", [("alice", [10, 11, 12, 0]), ("bob", [5, 0])])
def test_wire_login_methods(postgres, user, methods):
    with pgwire.connect(postgres.host, postgres.port, user, "appdb",
                        postgres.passwords[user]) as conn:
        assert conn.auth_methods == methods
        assert conn.simple_query("SELECT current_user, 1 + 1, NULL") == [(user, "2", None)]
        assert conn.params["server_version"].startswith("15")


@pytest.mark.parametrize("user", ["alice", "bob"])
def test_wrong_password_28P01(postgres, user):
    with pytest.raises(pgwire.PgError) as exc:
        pgwire.connect(postgres.host, postgres.port, user, "appdb", "not-the-password")
    err = exc.value
    assert err.sqlstate == "28P01"
    assert err.severity == "FATAL"
    assert err.message == 'password authentication failed for user "%s"' % user


def test_unix_socket(postgres):
    with postgres.connect("alice", host=postgres.socket_dir) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_psql_helper(postgres):
    res = postgres.psql("SELECT 6 * 7", user="alice", dbname="appdb", check=True)
    assert res.stdout == "42\n"
    bad = postgres.psql("SELECT 1", user="bob", password="wrong")
    assert bad.returncode == 2
    assert 'password authentication failed for user "bob"' in bad.stderr
