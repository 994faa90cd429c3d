"""Query cancellation through pgfunnel (issue 3)."""

import threading
import time

import psycopg
import pytest

import pfhelpers
import pgwire


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_psycopg_cancel(proxy, postgres, mode):
    pf = proxy(params={"pool_mode": mode, "default_pool_size": 2})
    pw = postgres.passwords["alice"]
    with pfhelpers.proxy_connect(pf, "alice", "appdb", pw, autocommit=True) as conn, \
            pfhelpers.proxy_connect(pf, "alice", "appdb", pw, autocommit=True) as other:
        timer = threading.Timer(0.5, conn.cancel)
        t0 = time.monotonic()
        timer.start()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled) as exc:
                conn.execute("SELECT pg_sleep(10)")
        finally:
            timer.cancel()
        elapsed = time.monotonic() - t0
        assert exc.value.sqlstate == "57014"
        assert elapsed < 4, elapsed
        # both connections still work, and the other one was not canceled
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert other.execute("SELECT pg_sleep(0.2), 2").fetchone()[1] == 2


def test_raw_cancel_with_right_key(proxy, postgres):
    pf = proxy(params={"pool_mode": "transaction"})
    with pgwire.connect(pf.host, pf.port, "alice", "appdb", postgres.passwords["alice"]) as conn:
        assert conn.backend_key is not None
        conn.send_query("SELECT pg_sleep(10)")
        time.sleep(0.3)
        t0 = time.monotonic()
        pgwire.cancel_request(pf.host, pf.port, *conn.backend_key)
        conn.sock.settimeout(5)
        with pytest.raises(pgwire.PgError) as exc:
            conn.read_result()
        assert exc.value.sqlstate == "57014"
        assert time.monotonic() - t0 < 3
        assert conn.simple_query("SELECT 'still here'") == [("still here",)]


def test_cancel_with_wrong_key_does_nothing(proxy, postgres):
    pf = proxy(params={"pool_mode": "transaction"})
    with pgwire.connect(pf.host, pf.port, "alice", "appdb", postgres.passwords["alice"]) as conn:
        pid, secret = conn.backend_key
        conn.send_query("SELECT pg_sleep(1.5), 'done'")
        time.sleep(0.3)
        pgwire.cancel_request(pf.host, pf.port, pid, secret ^ 1)
        pgwire.cancel_request(pf.host, pf.port, pid ^ 1, secret)
        conn.sock.settimeout(5)
        assert conn.read_result() == [("", "done")]
