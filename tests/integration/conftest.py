"""Fixtures for the pgfunnel integration tests (see pfhelpers.py for the machinery).

- run_user:   session; the unprivileged user (name) servers run as when root,
              None when the tests do not run as root.
- port:       a free TCP port on 127.0.0.1, held for the test (factory: new_port).
- new_port:   function returning a fresh free port each call, all released after the test.
- postgres:   session; a PgCluster (roles postgres/alice(scram)/bob(md5), database appdb).
- pgfunnel:   function; a PgFunnelFactory: pgfunnel.start(params, databases, users, userlist, ...)
              returns a running PgFunnel; every instance is killed by PID at teardown.
- pgfunnel_bin, source_root, version: paths and meson.build's project version.

Run standalone: PGFUNNEL_BIN=build/pgfunnel /usr/bin/python3 -m pytest tests/integration
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import pfhelpers  # noqa: E402


def pytest_report_header(config):
    return "pgfunnel: %s (as %s)" % (
        os.environ.get("PGFUNNEL_BIN", "PGFUNNEL_BIN not set"),
        "root, servers run as %s" % pfhelpers.RUN_USER if pfhelpers.is_root() else "non-root")


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
        factory.cleanup()
    # With a sanitizer build (scripts/test.sh runs the suite on one too), any ASan, UBSan or
    # LeakSanitizer report an instance printed fails the test that started it.
    reports = [line for pf in factory.instances for line in pfhelpers.sanitizer_reports(pf)]
    if reports:
        pytest.fail("sanitizer report from pgfunnel:\n" + "\n".join(reports[:40]))


@pytest.fixture
def proxy(postgres, pgfunnel):
    """Factory: proxy(params=..., databases=..., users=..., userlist=...) starts a pgfunnel in
    front of the postgres fixture (pfhelpers.start_proxy: appdb and postgres databases,
    auth_type md5, admin_users postgres, the cluster's plain passwords in the auth_file)."""
    def start(**kw):
        return pfhelpers.start_proxy(pgfunnel, postgres, **kw)
    return start
