"""SSLRequest handling and the unix socket listener (issue 3)."""

import socket

import psycopg
import pytest

import pfhelpers
import pgwire


def test_sslrequest_answered_n_then_startup_works(proxy, postgres):
    pf = proxy()
    s = socket.create_connection((pf.host, pf.port), timeout=5)
    s.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")  # SSLRequest (80877103)
    assert s.recv(1) == b"N"
    conn = pgwire.Connection(s)
    conn.login("alice", "appdb", postgres.passwords["alice"])
    assert conn.simple_query("SELECT current_user") == [("alice",)]
    conn.close()


def test_sslmode_prefer_works_in_clear(proxy, postgres):
    pf = proxy()
    with pfhelpers.proxy_connect(pf, "alice", "appdb", postgres.passwords["alice"],
                                 sslmode="prefer") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.pgconn.ssl_in_use is False


def test_sslmode_require_fails(proxy, postgres):
    pf = proxy()
    with pytest.raises(psycopg.OperationalError) as exc:
        pfhelpers.proxy_connect(pf, "alice", "appdb", postgres.passwords["alice"],
                                sslmode="require")
    assert "does not support SSL" in str(exc.value)
    # and pgfunnel still serves
    with pfhelpers.proxy_connect(pf, "alice", "appdb", postgres.passwords["alice"],
                                 sslmode="disable") as conn:
        assert conn.execute("SELECT 2").fetchone() == (2,)


def test_gssencrequest_answered_n(proxy, postgres):
    pf = proxy()
    s = socket.create_connection((pf.host, pf.port), timeout=5)
    s.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x30")  # GSSENCRequest (80877104)
    assert s.recv(1) == b"N"
    conn = pgwire.Connection(s)
    conn.login("alice", "appdb", postgres.passwords["alice"])
    assert conn.simple_query("SELECT 3") == [("3",)]
    conn.close()


def test_unix_socket(proxy, postgres):
    pf = proxy(params={"pool_mode": "transaction"})
    assert pfhelpers.is_socket(pf.socket_path)
    with pfhelpers.proxy_connect(pf, "alice", "appdb", postgres.passwords["alice"],
                                 host=pf.unix_socket_dir) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (
            "alice", "appdb")
        assert conn.pgconn.host.decode() == pf.unix_socket_dir
    res = pfhelpers.psql("SELECT 'via socket'", host=pf.unix_socket_dir, port=pf.port,
                         user="bob", dbname="appdb", password=postgres.passwords["bob"])
    assert res.stdout == "via socket\n", res.stderr
    with pgwire.connect(pf.unix_socket_dir, pf.port, "postgres", "pgbouncer",
                        postgres.passwords["postgres"]) as adm:
        assert adm.simple_query("SHOW VERSION")[0][0].startswith("pgfunnel ")
    # wrong password over the socket is refused the same way
    err, closed = pgwire.login_refused(pf.unix_socket_dir, pf.port, "alice", "appdb", "nope")
    assert (err.sqlstate, err.message) == ("28P01", 'password authentication failed for user "alice"')
    assert closed
