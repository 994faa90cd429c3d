"""pgfunnel under valgrind: start, reload, shut down; no memory errors, no definite leaks."""

import os
import shutil
import signal

import pytest

import pfhelpers

VALGRIND = shutil.which("valgrind")


@pytest.mark.skipif(VALGRIND is None, reason="valgrind not installed")
@pytest.mark.skipif(os.environ.get("PGFUNNEL_SANITIZED") == "1",
                    reason="a sanitizer build cannot run under valgrind (LeakSanitizer checks it)")
def test_start_reload_stop_under_valgrind(pgfunnel, postgres):
    vglog = None

    def valgrind_output():
        return "--- valgrind (%s):\n%s" % (vglog, pfhelpers.read_text(vglog))

    # Runs as the unprivileged user itself (setpriv, same PID) rather than
    # with -u: valgrind and a set-uid switch do not mix well.
    wrapper_dir = pfhelpers.make_tempdir("pgfunnel-vg.")
    try:
        vglog = os.path.join(wrapper_dir, "valgrind.log")
        wrapper = [VALGRIND, "--quiet", "--leak-check=full",
                   "--show-leak-kinds=definite,indirect",
                   "--errors-for-leak-kinds=definite,indirect",
                   "--error-exitcode=99", "--log-file=" + vglog]
        databases = {"appdb": postgres.db_entry("appdb"), "*": postgres.db_entry("postgres")}
        pf = pgfunnel.start({"pool_mode": "transaction"}, databases=databases,
                            userlist=postgres.userlist(), drop="exec", wrapper=wrapper,
                            timeout=60)
        pf.wait_for_log(r"process up: ", timeout=60)

        n = pf.log_len()
        pf.params["default_pool_size"] = 7
        pf.write_ini()
        pf.signal(signal.SIGHUP)
        pf.wait_for_log(r"(?i)reload|re-reading", timeout=30, after=n)

        pf.signal(signal.SIGINT)
        try:
            rc = pf.proc.wait(60)
        except Exception:
            pytest.fail("still running 60 s after SIGINT\n%s\n%s" % (
                pf.all_output(), valgrind_output()))
        assert rc != 99, "valgrind reported errors or leaks\n" + valgrind_output()
        assert rc == 0, "exit %d\n%s\n%s" % (rc, pf.all_output(), valgrind_output())
    finally:
        pfhelpers.remove_tree(wrapper_dir)
