"""The targets of scripts/test.sh's "sanitizer gate" check, which runs this file against a
pgfunnel built with deliberate memory bugs (-Dplanted_bug=true, tests/gate/planted_bug.c) and
requires it to FAIL with the sanitizer's report; against a normal build they simply pass.

Neither test stops pgfunnel itself: the instance is left to the pgfunnel fixture's teardown
(graceful stop, then the reports), and the command-line run to the session report directory,
since those are the paths the gate has to prove.
"""

import socket

import pfhelpers


def test_instance_left_running_for_teardown(pgfunnel):
    pf = pgfunnel.start({"auth_type": "trust"})
    with socket.create_connection((pf.host, pf.port), timeout=5):
        pass
    assert pf.is_running(), pf.all_output()


def test_command_line_run(pgfunnel_bin, version):
    res = pfhelpers.run_pgfunnel(["--version"])
    assert version in res.stdout + res.stderr, res
