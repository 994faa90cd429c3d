"""Fixtures for the pgfunnel integration tests (see pfhelpers.py for the machinery).

- run_user:   session; the unprivileged user (name) servers run as when root,
              None when the tests do not run as root.
- port:       a free TCP port on 127.0.0.1, held for the test (factory: new_port).
- new_port:   function returning a fresh free port each call, all released after the test.
- postgres:   session; a PgCluster (roles postgres/alice(scram)/bob(md5), database appdb).
- pgfunnel:   function; a PgFunnelFactory: pgfunnel.start(params, databases, users, userlist, ...)
              returns a running PgFunnel. At teardown every instance still running is stopped
              gracefully (SIGINT, then SIGINT again; SIGKILL only as a last resort), then
              the sanitizer reports are read, then the instance dirs are deleted.
- pgfunnel_bin, source_root, version: paths and meson.build's project version.

The sanitizer gate (a binary built with -Db_sanitize=address,undefined: PGFUNNEL_SANITIZED=1,
or detected from the binary): every pgfunnel process writes its ASan/UBSan/LeakSanitizer reports
to a file of its own (log_path): an instance of the pgfunnel fixture to <its dir>/sanitizer.<pid>,
any other pgfunnel a test runs to a session directory. Any report fails the test that caused it,
and so does an instance that had to be SIGKILLed at teardown (its leak check never ran).
UBSan is made fatal (halt_on_error=1) and ASan's quarantine is capped (quarantine_size_mb=16,
default 256) so the tests that watch pgfunnel's RSS measure pgfunnel and not the quarantine.
scripts/test.sh proves the gate fires with a binary that has planted bugs (-Dplanted_bug=true).

Skips: PGFUNNEL_NO_SKIP=1 (scripts/test.sh sets it when it runs as root and has installed every
dependency) turns every skip into a failure, except those whose reason matches ALLOWED_SKIPS.

Run standalone: PGFUNNEL_BIN=build/pgfunnel /usr/bin/python3 -m pytest tests/integration
"""

import os
import re
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import pfhelpers  # noqa: E402


# Sanitizer options for every pgfunnel the tests run. Ours come first, so options already in
# the environment override them (e.g. ASAN_OPTIONS=detect_leaks=0 while debugging); log_path is
# added last by pfhelpers.sanitizer_env().
ASAN_DEFAULTS = "detect_leaks=1:halt_on_error=1:abort_on_error=0:quarantine_size_mb=16"
UBSAN_DEFAULTS = "halt_on_error=1:print_stacktrace=1"

# Skips that may happen even where scripts/test.sh installed every dependency (as root, which
# is when it sets PGFUNNEL_NO_SKIP=1); any other skip then fails. Reasons are regexes.
ALLOWED_SKIPS = [
    # The sanitizer run skips the valgrind test: a sanitizer build cannot run under valgrind,
    # and LeakSanitizer checks that build instead.
    r"cannot run under valgrind",
]

_session_sanitizer_dir = None


def binary_is_sanitized(path):
    """True when path is an ASan build (it carries the runtime's __asan_init symbol name)."""
    try:
        with open(path, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


def pytest_configure(config):
    global _session_sanitizer_dir
    # Every test has a deadline (pytest.ini's timeout): a hang must fail, not stall the suite.
    # Where scripts/test.sh installed every dependency, running without it is an error.
    if os.environ.get("PGFUNNEL_NO_SKIP") == "1" and not config.pluginmanager.hasplugin("timeout"):
        raise pytest.UsageError("PGFUNNEL_NO_SKIP=1 but the pytest-timeout plugin is missing "
                                "(Debian: python3-pytest-timeout; scripts/install-deps.sh)")
    path = os.environ.get("PGFUNNEL_BIN")
    if "PGFUNNEL_SANITIZED" not in os.environ and path and binary_is_sanitized(path):
        os.environ["PGFUNNEL_SANITIZED"] = "1"
    if os.environ.get("PGFUNNEL_SANITIZED") == "1":
        for var, defaults in (("ASAN_OPTIONS", ASAN_DEFAULTS), ("UBSAN_OPTIONS", UBSAN_DEFAULTS)):
            given = os.environ.get(var, "")
            os.environ[var] = defaults + (":" + given if given else "")
        # Reports of pgfunnel processes the fixture did not start (run_pgfunnel(), Popen in
        # tests); writable for the unprivileged user a pgfunnel may have switched to.
        _session_sanitizer_dir = tempfile.mkdtemp(prefix="pgfunnel-san.", dir="/tmp")
        os.chmod(_session_sanitizer_dir, 0o1777)
        env = pfhelpers.sanitizer_env(os.path.join(_session_sanitizer_dir, "report"))
        for var in ("ASAN_OPTIONS", "UBSAN_OPTIONS"):
            os.environ[var] = env[var]


def pytest_unconfigure(config):
    if _session_sanitizer_dir:
        shutil.rmtree(_session_sanitizer_dir, ignore_errors=True)


def pytest_report_header(config):
    return "pgfunnel: %s (as %s)%s" % (
        os.environ.get("PGFUNNEL_BIN", "PGFUNNEL_BIN not set"),
        "root, servers run as %s" % pfhelpers.RUN_USER if pfhelpers.is_root() else "non-root",
        "\nsanitizer gate: ASAN_OPTIONS=%s UBSAN_OPTIONS=%s" % (
            os.environ.get("ASAN_OPTIONS"), os.environ.get("UBSAN_OPTIONS"))
        if os.environ.get("PGFUNNEL_SANITIZED") == "1" else "")


@pytest.fixture(autouse=True)
def session_sanitizer_reports():
    """Fails the test during which a pgfunnel outside the fixture wrote a sanitizer report."""
    if not _session_sanitizer_dir:
        yield
        return
    before = set(os.listdir(_session_sanitizer_dir))
    yield
    new = sorted(set(os.listdir(_session_sanitizer_dir)) - before)
    if new:
        lines = []
        for name in new:
            lines.append("--- %s:" % name)
            lines.extend(pfhelpers.read_text(os.path.join(_session_sanitizer_dir, name))
                         .splitlines()[:60])
        pytest.fail("sanitizer report from a pgfunnel the test ran:\n" + "\n".join(lines),
                    pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With PGFUNNEL_NO_SKIP=1 a skip whose reason is not in ALLOWED_SKIPS fails the test."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("PGFUNNEL_NO_SKIP") != "1" or not report.skipped:
        return
    if hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if any(re.search(rx, reason) for rx in ALLOWED_SKIPS):
        return
    report.outcome = "failed"
    report.longrepr = ("unexpected skip (PGFUNNEL_NO_SKIP=1; allowed skips are listed in "
                       "tests/integration/conftest.py ALLOWED_SKIPS): %s" % reason)


@pytest.fixture(scope="session")
def pgfunnel_bin():
    path = pfhelpers.pgfunnel_bin()
    assert os.access(path, os.X_OK), "PGFUNNEL_BIN=%s is not an executable" % path
    return path


@pytest.fixture(scope="session")
def source_root():
    return pfhelpers.source_root()


@pytest.fixture(scope="session")
def version():
    return pfhelpers.project_version()


@pytest.fixture(scope="session")
def run_user():
    ids = pfhelpers.ensure_run_user()
    return pfhelpers.RUN_USER if ids is not None else None


@pytest.fixture
def new_port():
    ports = []

    def alloc():
        p = pfhelpers.alloc_port()
        ports.append(p)
        return p

    yield alloc
    for p in ports:
        pfhelpers.release_port(p)


@pytest.fixture
def port(new_port):
    return new_port()


@pytest.fixture
def tmpdir_user():
    """A temp dir under /tmp owned by the unprivileged user (when root), removed afterwards."""
    d = pfhelpers.make_tempdir("pgfunnel-tmp.")
    yield d
    pfhelpers.remove_tree(d)


@pytest.fixture(scope="session")
def postgres(run_user):
    cluster = pfhelpers.PgCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def pgfunnel(pgfunnel_bin, run_user):
    factory = pfhelpers.PgFunnelFactory()
    try:
        yield factory
    finally:
        # Order matters: a graceful stop lets LeakSanitizer run at exit; the reports are read
        # before cleanup() deletes the instance dirs they are in.
        problems = factory.stop_all()
        reports = factory.sanitizer_reports()
        factory.cleanup()
    # With a sanitizer build (scripts/test.sh runs the suite on one too), any ASan, UBSan or
    # LeakSanitizer report an instance wrote fails the test that started it; so does an
    # instance that had to be SIGKILLed, since its exit-time leak check never ran.
    if os.environ.get("PGFUNNEL_SANITIZED") != "1":
        problems = []
    if reports or problems:
        pytest.fail("\n".join(["sanitizer gate:"] + problems +
                              (["sanitizer report from pgfunnel:"] + reports[:80] if reports
                               else [])), pytrace=False)


@pytest.fixture
def proxy(postgres, pgfunnel):
    """Factory: proxy(params=..., databases=..., users=..., userlist=...) starts a pgfunnel in
    front of the postgres fixture (pfhelpers.start_proxy: appdb and postgres databases,
    auth_type md5, admin_users postgres, the cluster's plain passwords in the auth_file)."""
    def start(**kw):
        return pfhelpers.start_proxy(pgfunnel, postgres, **kw)
    return start
