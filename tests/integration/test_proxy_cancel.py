"""Query cancellation through pgfunnel (issue 3)."""

import threading
import time

import psycopg
import pytest

import pfhelpers
import pgwire


def retry_once(fn):
    """fn(), run again if canceled: Postgres may deliver a cancel signal twice (pid and process
    group), so the canceled client's own next query can be canceled too, as without a pooler."""
    try:
        return fn()
    except (psycopg.errors.QueryCanceled, pgwire.PgError) as e:
        if getattr(e, "sqlstate", None) != "57014":
            raise
        return fn()


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_psycopg_cancel(proxy, postgres, mode):
    pf = proxy(params={"pool_mode": mode, "default_pool_size": 2})
    pw = postgres.passwords["alice"]
    with pfhelpers.proxy_connect(pf, "alice", "appdb", pw, autocommit=True) as conn:
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
        # the connection still works (another client's query surviving a cancel: see
        # test_cancel_does_not_hit_the_next_client)
        assert pfhelpers.wait_for(lambda: retry_once(lambda: conn.execute("SELECT 1").fetchone())
                                  == (1,), 1)


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
        assert retry_once(lambda: conn.simple_query("SELECT 'still here'")) == [("still here",)]


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


def test_cancel_does_not_hit_the_next_client(proxy, postgres):
    """Postgres may signal a canceled backend more than once (pid and process group): the
    server must not serve another client until the cancel request to Postgres is finished
    (PgBouncer's sv_active_cancel / sv_being_canceled), or that client's query is canceled.
    One server, so the next client always gets the canceled one; repeated to catch the race."""
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 1})
    pw = postgres.passwords["alice"]
    with pfhelpers.proxy_connect(pf, "alice", "appdb", pw, autocommit=True) as conn, \
            pfhelpers.proxy_connect(pf, "alice", "appdb", pw, autocommit=True) as other:
        for i in range(15):
            timer = threading.Timer(0.15, conn.cancel)
            timer.start()
            try:
                with pytest.raises(psycopg.errors.QueryCanceled):
                    conn.execute("SELECT pg_sleep(5)")
            finally:
                timer.cancel()
            try:
                assert other.execute("SELECT pg_sleep(0.05), %s::int" % i).fetchone()[1] == i
            except psycopg.errors.QueryCanceled:
                raise AssertionError("iteration %d: the next client's query was canceled\n%s"
                                     % (i, pf.log_text()[-1500:]))
