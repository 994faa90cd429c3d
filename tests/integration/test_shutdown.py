"""Shutdown with clients and servers in flight (PgBouncer 1.23+ signal meanings):
SIGTERM waits for clients to leave, SIGINT waits for servers to be released, a second signal
or SIGQUIT means now. Every case must end with exit status 0 and nothing left running."""
import signal

import psycopg
import pytest

import pfhelpers


def proxy(pgfunnel, postgres, **params):
    p = {"pool_mode": "transaction", "default_pool_size": "4"}
    p.update(params)
    return pfhelpers.start_proxy(pgfunnel, postgres, params=p)


def connect(pf, postgres, user="alice"):
    return psycopg.connect(postgres.conninfo(user=user, dbname="appdb", host="127.0.0.1",
                                             port=pf.port), autocommit=True)


def test_sigterm_after_servers_were_used_exits(pgfunnel, postgres):
    # Regression: closing pooled servers during shutdown re-entered the close-all loop and
    # spun forever.
    pf = proxy(pgfunnel, postgres)
    conns = [connect(pf, postgres) for _ in range(3)]
    for c in conns:
        assert c.execute("select 1").fetchone() == (1,)
    for c in conns:
        c.close()
    pf.stop(signal.SIGTERM, timeout=5)


def test_sigterm_waits_for_clients(pgfunnel, postgres):
    pf = proxy(pgfunnel, postgres)
    c = connect(pf, postgres)
    assert c.execute("select 1").fetchone() == (1,)
    # In a transaction: between transactions it would be closed at once (test_rolling_restart).
    c.execute("begin")
    pf.signal(signal.SIGTERM)
    pf.wait_for_log(r"got SIGTERM")
    # New clients are not accepted any more; the connected client keeps working.
    with pytest.raises(psycopg.OperationalError):
        connect(pf, postgres)
    assert c.execute("select 2").fetchone() == (2,)
    assert pf.is_running(), "SIGTERM must wait while a client is connected"
    c.close()
    assert pf.wait(5) == 0


def test_sigint_waits_for_servers_then_ends_clients(pgfunnel, postgres):
    pf = proxy(pgfunnel, postgres)
    c = connect(pf, postgres)
    c.execute("begin")
    pid = c.execute("select pg_backend_pid()").fetchone()[0]
    pf.signal(signal.SIGINT)
    pf.wait_for_log(r"got SIGINT")
    assert c.execute("select pg_backend_pid()").fetchone()[0] == pid
    assert pf.is_running(), "SIGINT must wait while a server is in a transaction"
    c.execute("commit")
    assert pf.wait(5) == 0
    with pytest.raises(psycopg.OperationalError):
        c.execute("select 1")


def test_second_sigterm_is_immediate(pgfunnel, postgres):
    pf = proxy(pgfunnel, postgres)
    c = connect(pf, postgres)
    c.execute("begin")
    pf.signal(signal.SIGTERM)
    pf.wait_for_log(r"got SIGTERM")
    assert c.execute("select 2").fetchone() == (2,)
    assert pf.is_running()
    pf.signal(signal.SIGTERM)
    assert pf.wait(5) == 0
    with pytest.raises(psycopg.OperationalError):
        c.execute("select 1")
