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


def cancel_when_running(postgres, conn, query, user="alice"):
    """A thread that cancels conn (psycopg) once Postgres runs query (pg_stat_activity says
    'active'); errors end up in the returned list after join()."""
    errors = []

    def run():
        try:
            pfhelpers.wait_query_running(postgres, query, user)
            conn.cancel()
        except Exception as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.errors = errors
    return t


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_psycopg_cancel(proxy, postgres, mode):
    pf = proxy(params={"pool_mode": mode, "default_pool_size": 2})
    pw = postgres.passwords["alice"]
    with pfhelpers.proxy_connect(pf, "alice", "appdb", pw, autocommit=True) as conn:
        canceller = cancel_when_running(postgres, conn, "SELECT pg_sleep(10)")
        t0 = time.monotonic()
        canceller.start()
        with pytest.raises(psycopg.errors.QueryCanceled) as exc:
            conn.execute("SELECT pg_sleep(10)")
        elapsed = time.monotonic() - t0
        canceller.join(10)
        assert not canceller.errors, canceller.errors
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
        pfhelpers.wait_query_running(postgres, "SELECT pg_sleep(10)", "alice")
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
        pfhelpers.wait_query_running(postgres, "SELECT pg_sleep(1.5), 'done'", "alice")
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
            sql = "SELECT pg_sleep(5), %d" % i
            canceller = cancel_when_running(postgres, conn, sql)
            canceller.start()
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute(sql)
            canceller.join(10)
            assert not canceller.errors, canceller.errors
            try:
                assert other.execute("SELECT pg_sleep(0.05), %s::int" % i).fetchone()[1] == i
            except psycopg.errors.QueryCanceled:
                raise AssertionError("iteration %d: the next client's query was canceled\n%s"
                                     % (i, pf.log_text()[-1500:]))
