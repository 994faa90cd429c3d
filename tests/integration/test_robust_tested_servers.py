"""A server stuck in pgfunnel's own server_reset_query or server_check_query (state tested) is
closed after server_idle_timeout, as PgBouncer's janitor closes tested servers, instead of
being held forever while clients wait for it."""

import time

import pytest

import pfhelpers
from test_robust_clients import finish
from test_robust_servers import start

# Hangs for the victim role only: the canary's servers run the same query and must not hang.
STUCK_QUERY = ("SELECT pg_sleep(CASE WHEN current_user LIKE 'tsvic%' THEN 25 ELSE 0 END) "
               "/* pgfunnel-h1-stuck */")


@pytest.fixture
def canary_role(postgres):
    return pfhelpers.new_role(postgres, "tscan")


@pytest.fixture
def role(postgres):
    name, pw = pfhelpers.new_role(postgres, "tsvic")
    yield name, pw
    # Stuck backends sleep on after pgfunnel hung up: end them, the cluster is shared.
    with postgres.connect(autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE query LIKE %s AND pid <> pg_backend_pid()",
                     ("%pgfunnel-h1-stuck%",))


def sv_tested(pf, user):
    cols, rows = pfhelpers.console(pf, "SHOW POOLS")
    for r in pfhelpers.rows_as_dicts(cols, rows):
        if (r["database"], r["user"]) == ("appdb", user):
            return r["sv_tested"]
    return None


def test_stuck_server_reset_query_is_closed(proxy, postgres, canary_role, role):
    pf, can = start(proxy, postgres, canary_role, role, params={
        "pool_mode": "session", "server_reset_query": STUCK_QUERY, "server_idle_timeout": 1})
    with pfhelpers.proxy_connect(pf, role[0], "appdb", role[1]) as conn:
        conn.execute("SELECT 1")
    # The session ended: the reset query runs (and hangs).
    assert pfhelpers.wait_for(lambda: sv_tested(pf, role[0]) == 1, 5)
    t0 = time.monotonic()
    pf.wait_for_log(r"S-0x[0-9a-f]+: appdb/%s@\S+ server_reset_query did not finish within "
                    r"server_idle_timeout" % role[0], timeout=8)
    pf.wait_for_log(r"appdb/%s@\S+ closing because: server idle timeout" % role[0], timeout=5)
    assert time.monotonic() - t0 < 5
    assert sv_tested(pf, role[0]) == 0
    # The next session gets a fresh server.
    with pfhelpers.proxy_connect(pf, role[0], "appdb", role[1]) as conn:
        assert conn.execute("SELECT 2").fetchone() == (2,)
    can.check()
    finish(pf)


def test_stuck_server_check_query_is_closed(proxy, postgres, canary_role, role):
    pf, can = start(proxy, postgres, canary_role, role, params={
        "pool_mode": "transaction", "server_check_query": STUCK_QUERY, "server_check_delay": 0,
        "server_idle_timeout": 1, "default_pool_size": 1})
    with pfhelpers.proxy_connect(pf, role[0], "appdb", role[1]) as conn:
        conn.execute("SELECT 1")
    # The idle server is checked before its next use; the check hangs, the client waits.
    t0 = time.monotonic()
    with pfhelpers.proxy_connect(pf, role[0], "appdb", role[1]) as conn:
        assert conn.execute("SELECT 2").fetchone() == (2,)
    elapsed = time.monotonic() - t0
    pf.wait_for_log(r"S-0x[0-9a-f]+: appdb/%s@\S+ server_check_query did not finish within "
                    r"server_idle_timeout" % role[0], timeout=1)
    assert elapsed < 6, "the waiting client was served after %.1fs" % elapsed
    can.check()
    finish(pf)
