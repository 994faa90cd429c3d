"""Reloads that change what existing pools depend on: a database's forced user changed or
removed while its pool has no servers left (the pool must never point at a freed user)."""

import pytest

import pfhelpers
from test_robust_clients import finish
from test_robust_servers import start


@pytest.fixture
def canary_role(postgres):
    return pfhelpers.new_role(postgres, "rlcan")


def pools(pf):
    cols, rows = pfhelpers.console(pf, "SHOW POOLS")
    return {(r["database"], r["user"]): r for r in pfhelpers.rows_as_dicts(cols, rows)}


def pool_is_empty(row):
    return all(row[k] == 0 for k in row if k.startswith(("cl_", "sv_")))


@pytest.mark.parametrize("new_user", ["other", None], ids=["changed", "removed"])
def test_reload_replaces_forced_user_of_empty_pool(proxy, postgres, canary_role, new_user):
    alice = pfhelpers.new_role(postgres, "rlfa")
    bob = pfhelpers.new_role(postgres, "rlfb")
    cluster_entry = postgres.db_entry("appdb", user=alice[0])
    pf, can = start(proxy, postgres, canary_role, databases={"fu": cluster_entry})
    pf.write_userlist({canary_role[0]: canary_role[1], alice[0]: alice[1], bob[0]: bob[1],
                       "postgres": postgres.passwords["postgres"]})
    pfhelpers.console(pf, "RELOAD")

    # One client through the forced user, then its server goes away (backend terminated).
    with pfhelpers.proxy_connect(pf, canary_role[0], "fu", canary_role[1]) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (alice[0],)
    with postgres.connect(autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE usename = %s", (alice[0],))
    assert pfhelpers.wait_for(lambda: pool_is_empty(pools(pf)[("fu", alice[0])]), 10), pools(pf)

    # RELOAD with another forced user (or none): the old one must outlive its pool.
    databases = dict(pf.databases)
    if new_user:
        databases["fu"] = postgres.db_entry("appdb", user=bob[0])
    else:
        databases["fu"] = postgres.db_entry("appdb")
    pf.write_ini(databases=databases)
    pfhelpers.console(pf, "RELOAD")
    seen = pools(pf)
    assert pf.is_running(), pf.all_output()[-5000:]
    old = seen.get(("fu", alice[0]))
    assert old is None or pool_is_empty(old), seen

    # New clients use the new settings.
    expect = bob[0] if new_user else canary_role[0]
    with pfhelpers.proxy_connect(pf, canary_role[0], "fu", canary_role[1]) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (expect,)
    assert ("fu", expect) in pools(pf)
    # The old user's empty pool is dropped by the janitor.
    assert pfhelpers.wait_for(lambda: ("fu", alice[0]) not in pools(pf), 10), pools(pf)
    can.expect_progress()
    can.check()
    finish(pf)


# ---------------------------------------------------------------- logfile and -u

REOPEN_FAILURES = ("could not reopen logfile", "keeping the old log settings")


@pytest.mark.skipif(not pfhelpers.is_root(), reason="-u needs root")
def test_logfile_created_as_root_is_given_to_the_user(proxy, run_user):
    pf = proxy()  # as root with -u RUN_USER (the factory's default)
    uid = pfhelpers.pwd.getpwnam(run_user).pw_uid
    assert pfhelpers.os.stat(pf.logfile).st_uid == uid
    pfhelpers.console(pf, "RELOAD")
    pf.wait_for_log(r"LOG config reloaded")
    # logrotate: move the file away, SIGHUP; the new file is the user's too.
    pfhelpers.os.rename(pf.logfile, pf.logfile + ".1")
    pf.signal(pfhelpers.signal.SIGHUP)
    assert pfhelpers.wait_for(lambda: "config reloaded" in pfhelpers.read_text(pf.logfile), 10)
    assert pfhelpers.os.stat(pf.logfile).st_uid == uid
    text = pfhelpers.read_text(pf.logfile + ".1") + pfhelpers.read_text(pf.logfile)
    for bad in REOPEN_FAILURES:
        assert bad not in text, text
    finish(pf)


@pytest.mark.skipif(not pfhelpers.is_root(), reason="-u needs root")
def test_existing_root_logfile_is_reported_at_start(proxy, run_user, tmpdir_user):
    path = pfhelpers.os.path.join(tmpdir_user, "root-owned.log")
    fd = pfhelpers.os.open(path, pfhelpers.os.O_WRONLY | pfhelpers.os.O_CREAT, 0o600)
    pfhelpers.os.close(fd)
    pf = proxy(params={"logfile": path})
    # Not chowned (pgfunnel did not create it), and said so once, at start-up.
    assert pfhelpers.os.stat(path).st_uid == 0
    pf.wait_for_log(r'WARNING logfile "%s" cannot be reopened as user "%s": Permission denied'
                    % (pfhelpers.re.escape(path), run_user))
    finish(pf)
