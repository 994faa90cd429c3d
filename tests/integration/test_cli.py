"""Command line: -V, -h, bad options, bad config files, root refusal."""

import os
import re

import pytest

import pfhelpers
from pfhelpers import run_pgfunnel

OPTIONS = [
    ("-d", "--daemon"),
    ("-R", "--reboot"),
    ("-q", "--quiet"),
    ("-v", "--verbose"),
    ("-u", "--user"),
    ("-V", "--version"),
    ("-h", "--help"),
]


def user_args():
    """-u RUN_USER when root, so the config checks are reached instead of the root refusal."""
    if pfhelpers.is_root():
        pfhelpers.ensure_run_user()
        return ["-u", pfhelpers.RUN_USER]
    return []


def one_line(res):
    """Assert the run failed with status 1 and exactly one non-empty stderr line; return it."""
    lines = res.stderr.splitlines()
    assert res.returncode == 1, "exit %d, stderr:\n%s" % (res.returncode, res.stderr)
    assert len(lines) == 1 and lines[0].strip(), "expected exactly one stderr line:\n%r" % res.stderr
    return lines[0]


def write_ini(d, port, extra_lines=()):
    """A small valid ini in d (plus extra_lines in [pgbouncer]); return its path."""
    path = os.path.join(d, "pgfunnel.ini")
    text = "\n".join([
        "[databases]",
        "appdb = host=127.0.0.1 port=5432 dbname=appdb",
        "",
        "[pgbouncer]",
        "listen_addr = 127.0.0.1",
        "listen_port = %d" % port,
        "unix_socket_dir = %s" % d,
        "logfile = %s" % os.path.join(d, "pgfunnel.log"),
        "auth_type = md5",
        "auth_file = %s" % os.path.join(d, "userlist.txt"),
    ] + list(extra_lines)) + "\n"
    pfhelpers.write_file(path, text)
    pfhelpers.write_file(os.path.join(d, "userlist.txt"), '"alice" "secret"\n')
    return path


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version(pgfunnel_bin, version, flag):
    res = run_pgfunnel([flag])
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0] == "pgfunnel %s" % version
    assert res.stderr == ""


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help(pgfunnel_bin, flag):
    res = run_pgfunnel([flag])
    assert res.returncode == 0, res.stderr
    text = res.stdout + res.stderr
    missing = [o for pair in OPTIONS for o in pair
               if not re.search(r"(^|[\s,\[])%s\b" % re.escape(o), text)]
    assert not missing, "help does not mention %s:\n%s" % (missing, text)


@pytest.mark.parametrize("args,needle", [
    (["--no-such-option", "x.ini"], "no-such-option"),
    (["-Z", "x.ini"], "Z"),
])
def test_unknown_option(pgfunnel_bin, args, needle):
    line = one_line(run_pgfunnel(args))
    assert needle in line


def test_missing_config_argument(pgfunnel_bin):
    one_line(run_pgfunnel(user_args()))


def test_too_many_arguments(pgfunnel_bin):
    one_line(run_pgfunnel(user_args() + ["a.ini", "b.ini"]))


def test_nonexistent_config(pgfunnel_bin, tmpdir_user):
    path = os.path.join(tmpdir_user, "does-not-exist.ini")
    line = one_line(run_pgfunnel(user_args() + [path]))
    assert path in line


def test_bad_value_names_file_line_and_parameter(pgfunnel_bin, tmpdir_user, port):
    path = write_ini(tmpdir_user, port, ["default_pool_size = 5", "pool_mode = bogus"])
    lineno = pfhelpers.read_text(path).splitlines().index("pool_mode = bogus") + 1
    line = one_line(run_pgfunnel(user_args() + [path]))
    assert line.startswith("pgfunnel: %s:%d: " % (path, lineno)), line
    assert "pool_mode" in line
    assert not pfhelpers.port_accepts(port)


def test_bad_number_names_file_line_and_parameter(pgfunnel_bin, tmpdir_user, port):
    path = write_ini(tmpdir_user, port, ["max_client_conn = lots"])
    lineno = pfhelpers.read_text(path).splitlines().index("max_client_conn = lots") + 1
    line = one_line(run_pgfunnel(user_args() + [path]))
    assert line.startswith("pgfunnel: %s:%d: " % (path, lineno)), line
    assert "max_client_conn" in line


def test_unknown_parameter_refused(pgfunnel_bin, tmpdir_user, port):
    # PgBouncer refuses a parameter it does not know ("unknown parameter:
    # pgbouncer/x", FATAL), and so do we: a typo must not pass silently.
    path = write_ini(tmpdir_user, port, ["frobnicate_level = 3"])
    lineno = pfhelpers.read_text(path).splitlines().index("frobnicate_level = 3") + 1
    line = one_line(run_pgfunnel(user_args() + [path]))
    assert line.startswith("pgfunnel: %s:%d: " % (path, lineno)), line
    assert "frobnicate_level" in line


def test_unimplemented_parameter_warns_and_starts(pgfunnel):
    # A PgBouncer parameter pgfunnel does not implement (job_name: a Windows
    # service setting in PgBouncer) is accepted with a warning naming it.
    pf = pgfunnel.start({"job_name": "pgf7"})
    n = pf.ini_line_of("job_name")
    # Warnings found while reading the config are kept until the log sinks are open, so they
    # reach both stderr and the logfile (where a daemon's only output goes).
    for where, text in (("stderr", pf.stderr_text()), ("logfile", pf.log_text())):
        warnings = [rec for rec in pfhelpers.log_lines(text)
                    if rec["level"] == "WARNING" and "job_name" in rec["msg"]]
        assert len(warnings) == 1, \
            "expected one WARNING naming job_name on %s:\n%s" % (where, pf.all_output())
        assert "%s:%d" % (pf.ini_path, n) in warnings[0]["msg"], warnings[0]["line"]
    assert pf.is_running()
    pf.stop()


def test_nonexistent_user(pgfunnel_bin, tmpdir_user, port):
    path = write_ini(tmpdir_user, port)
    line = one_line(run_pgfunnel(["-u", "no-such-user-pgfunnel", path]))
    assert "no-such-user-pgfunnel" in line


@pytest.mark.skipif(not pfhelpers.is_root(), reason="needs root")
def test_root_without_user_refused(pgfunnel_bin, tmpdir_user, port):
    path = write_ini(tmpdir_user, port)
    line = one_line(run_pgfunnel([path]))
    assert "root" in line.lower()
    assert not pfhelpers.port_accepts(port)
