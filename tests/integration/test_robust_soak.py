"""The soak test's short form (issue 5): tests/soak/soak.py for about 20 s (pgbench through
pgfunnel while backends are terminated, Postgres restarts once and garbage connections hit the
listener); every one of its checks must pass. The full run is `soak.py --duration 600`."""

import json
import os
import subprocess
import sys

import pfhelpers


def test_soak_short_form(pgfunnel_bin, run_user):
    script = os.path.join(pfhelpers.source_root(), "tests", "soak", "soak.py")
    workdir = pfhelpers.make_tempdir("pgfunnel-soak.")
    try:
        out = os.path.join(workdir, "summary.json")
        res = subprocess.run(
            [sys.executable, script, "--duration", "20", "--run-seconds", "3",
             "--chaos-interval", "2", "--clients", "10", "--json", out],
            capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
        report = "exit %d\n--- stdout:\n%s\n--- stderr:\n%s" % (
            res.returncode, res.stdout[-8000:], res.stderr[-8000:])
        assert os.path.exists(out), report
        with open(out, encoding="utf-8") as f:
            summary = json.load(f)
        failed = [k for k, ok in summary["checks"].items() if not ok]
        assert failed == [], "soak checks failed: %s\n%s" % (failed, report)
        assert res.returncode == 0, report
        # The chaos really happened and pgbench really ran.
        assert summary["restarts"] == 1, report
        assert summary["terminations"] >= 1, report
        assert summary["garbage_connections"] >= 10, report
        assert summary["transactions"] > 0, report
        assert summary["runs_without_fault"] >= 1, report
    finally:
        pfhelpers.remove_tree(workdir)
