"""auth_type = hba through the wire: a table of (auth_hba_file rules, connection) -> decision,
against a real Postgres, with psycopg over TCP, the unix socket and TLS; peer with an ident map,
cert with client certificates; RELOAD of the rules. (tests/unit/test_hba.c decides the same
kind of table without sockets.)"""
import os
import pathlib
import pwd
import shutil
import tempfile

import psycopg
import pytest

import pfhelpers
import tlscerts


@pytest.fixture(scope="module")
def certs(run_user):
    c = tlscerts.TlsCerts()
    yield c
    c.destroy()


@pytest.fixture
def tmp_path():
    """A directory the pgfunnel user can read (pytest's own tmp_path is root's, mode 0700)."""
    d = tempfile.mkdtemp(prefix="pgfunnel-hba.")
    os.chmod(d, 0o755)
    yield pathlib.Path(d)
    shutil.rmtree(d, ignore_errors=True)


def os_user():
    return pwd.getpwuid(os.getuid()).pw_name


def proxy_with_rules(pgfunnel, postgres, tmp_path, rules, ident=None, params=None, files=None):
    hba = tmp_path / "hba.conf"
    hba.write_text(rules)
    for name, text in (files or {}).items():
        (tmp_path / name).write_text(text)
    p = {"auth_type": "hba", "auth_hba_file": str(hba), "pool_mode": "transaction"}
    if ident is not None:
        (tmp_path / "ident.conf").write_text(ident)
        p["auth_ident_file"] = str(tmp_path / "ident.conf")
    for f in tmp_path.iterdir():
        os.chmod(f, 0o644)
    p.update(params or {})
    return pfhelpers.start_proxy(pgfunnel, postgres, params=p)


def attempt(pf, user, dbname="appdb", password=None, via="tcp", **kw):
    """Log in and run a query; returns "ok" or the error text."""
    host = pf.unix_socket_dir if via == "unix" else None
    try:
        with pfhelpers.proxy_connect(pf, user, dbname, password, host=host, **kw) as conn:
            assert conn.execute("SELECT current_user").fetchone()[0] == user
            return "ok"
    except psycopg.OperationalError as e:
        return str(e)


NO_ENTRY = 'no pg_hba.conf entry for host "%s", user "%s", database "%s", %s'
REJECTS = 'pg_hba.conf rejects connection for host "%s", user "%s", database "%s", %s'

# (rules, [(user, dbname, password, via, expected)]); expected "ok" or a text the error has.
TABLE = [
    ("host all all 127.0.0.1/32 scram-sha-256\n", [
        ("alice", "appdb", "alice-scram-secret", "tcp", "ok"),
        ("alice", "appdb", "wrong", "tcp", 'password authentication failed for user "alice"'),
        ("alice", "appdb", None, "unix",
         NO_ENTRY % ("[local]", "alice", "appdb", "no encryption")),
    ]),
    ("host all all 10.0.0.0/8 trust\n", [
        ("alice", "appdb", None, "tcp",
         NO_ENTRY % ("127.0.0.1", "alice", "appdb", "no encryption")),
    ]),
    ("host all bob 127.0.0.1/32 reject\nhost all all 127.0.0.1/32 trust\n", [
        ("bob", "appdb", "bob-md5-secret", "tcp",
         REJECTS % ("127.0.0.1", "bob", "appdb", "no encryption")),
        ("alice", "appdb", None, "tcp", "ok"),  # trust: no password asked
    ]),
    # First match wins: the trust line after the reject never applies to bob.
    ("local all all trust\nhost all all 0.0.0.0/0 reject\n", [
        ("alice", "appdb", None, "unix", "ok"),
        ("alice", "appdb", "alice-scram-secret", "tcp",
         REJECTS % ("127.0.0.1", "alice", "appdb", "no encryption")),
    ]),
    ("host appdb all 127.0.0.1/32 md5\nhost all all 127.0.0.1/32 reject\n", [
        ("bob", "appdb", "bob-md5-secret", "tcp", "ok"),
        ("bob", "postgres", "bob-md5-secret", "tcp",
         REJECTS % ("127.0.0.1", "bob", "postgres", "no encryption")),
    ]),
    ("host all all 127.0.0.1 255.255.255.255 password\n", [
        ("bob", "appdb", "bob-md5-secret", "tcp", "ok"),
        ("bob", "appdb", "nope", "tcp", 'password authentication failed for user "bob"'),
    ]),
    ("host sameuser all 127.0.0.1/32 trust\n", [
        ("postgres", "postgres", None, "tcp", "ok"),
        ("alice", "appdb", None, "tcp", NO_ENTRY % ("127.0.0.1", "alice", "appdb",
                                                   "no encryption")),
    ]),
    ("host all @users.txt 127.0.0.1/32 trust\n", [
        ("alice", "appdb", None, "tcp", "ok"),
        ("bob", "appdb", None, "tcp", NO_ENTRY % ("127.0.0.1", "bob", "appdb", "no encryption")),
    ]),
    ("hostssl all all 127.0.0.1/32 trust\n", [
        ("alice", "appdb", None, "tcp", NO_ENTRY % ("127.0.0.1", "alice", "appdb",
                                                   "no encryption")),
    ]),
    ("local all all peer\n", [
        # The test's OS user is none of the database users.
        ("alice", "appdb", None, "unix", 'Peer authentication failed for user "alice"'),
    ]),
]


@pytest.mark.parametrize("rules,cases", TABLE, ids=[r.splitlines()[0] for r, _ in TABLE])
def test_hba_table(pgfunnel, postgres, tmp_path, rules, cases):
    pf = proxy_with_rules(pgfunnel, postgres, tmp_path, rules,
                          files={"users.txt": "# who\nalice\n"})
    for user, dbname, password, via, expected in cases:
        got = attempt(pf, user, dbname, password, via)
        if expected == "ok":
            assert got == "ok", (rules, user, via, got)
        else:
            assert expected in got, (rules, user, via, got)


def test_peer_with_ident_map(pgfunnel, postgres, tmp_path):
    """peer map=: the OS user of the connecting process maps to alice, not to bob."""
    pf = proxy_with_rules(pgfunnel, postgres, tmp_path, "local all all peer map=m\n",
                          ident="m %s alice\nm /^nobody$ bob\n" % os_user())
    assert attempt(pf, "alice", via="unix") == "ok"
    got = attempt(pf, "bob", via="unix")
    assert 'Peer authentication failed for user "bob"' in got, got


def test_hostssl_and_cert(pgfunnel, postgres, tmp_path, certs):
    """hostssl lines see TLS clients only; cert takes the user from the client certificate's
    CN (a certificate of another user is refused); clientcert=verify-full on a password line
    demands both."""
    rules = ("hostssl appdb alice 127.0.0.1/32 cert\n"
             "hostssl appdb bob 127.0.0.1/32 scram-sha-256 clientcert=verify-full\n"
             "hostnossl all all 127.0.0.1/32 reject\n")
    params = {"client_tls_sslmode": "verify-ca", "client_tls_key_file": certs.server.key,
              "client_tls_cert_file": certs.server.cert, "client_tls_ca_file": certs.ca.cert}
    pf = proxy_with_rules(pgfunnel, postgres, tmp_path, rules, params=params)
    alice, bob = certs.client("alice"), certs.client("bob")

    def tls(cert):
        return dict(sslmode="verify-ca", sslrootcert=certs.ca.cert, sslcert=cert.cert,
                    sslkey=cert.key)

    assert attempt(pf, "alice", **tls(alice)) == "ok"
    got = attempt(pf, "alice", **tls(bob))
    assert 'certificate authentication failed for user "alice"' in got, got
    assert attempt(pf, "bob", password="bob-md5-secret", **tls(bob)) == "ok"
    got = attempt(pf, "bob", password="bob-md5-secret", **tls(alice))
    assert "certificate validation (clientcert=verify-full) failed" in got, got
    # verify-ca: a plain TCP client never reaches the rules.
    assert "SSL required" in attempt(pf, "alice", sslmode="disable")


def test_reload_changes_rules_and_keeps_old_on_error(pgfunnel, postgres, tmp_path):
    pf = proxy_with_rules(pgfunnel, postgres, tmp_path, "host all all 127.0.0.1/32 trust\n"
                          "local all all trust\n")
    with pfhelpers.proxy_connect(pf, "alice", "appdb", None) as kept:
        (tmp_path / "hba.conf").write_text("host all alice 127.0.0.1/32 reject\n"
                                           "host all all 127.0.0.1/32 trust\nlocal all all trust\n")
        pfhelpers.console(pf, "RELOAD", password=None)
        got = attempt(pf, "alice")
        assert REJECTS % ("127.0.0.1", "alice", "appdb", "no encryption") in got, got
        assert attempt(pf, "bob") == "ok"
        # A connected client is not affected by the new rules.
        assert kept.execute("SELECT 1").fetchone() == (1,)
        # An unreadable file: RELOAD fails, the rules in force stay.
        os.unlink(tmp_path / "hba.conf")
        with pytest.raises(psycopg.Error) as ei:
            pfhelpers.console(pf, "RELOAD", password=None)
        assert ei.value.sqlstate == "F0000", ei.value
        pf.wait_for_log(r"config reload failed, keeping the old config: .*hba\.conf")
        assert attempt(pf, "bob") == "ok"
        assert "rejects" in attempt(pf, "alice")


def test_skipped_lines_are_warned(pgfunnel, postgres, tmp_path):
    pf = proxy_with_rules(pgfunnel, postgres, tmp_path,
                          "host all alice samehost reject\nhost all all 127.0.0.1/32 trust\n")
    pf.wait_for_log(r"hba\.conf:1: .*samehost")
    pf.wait_for_log(r"1 line\(s\) skipped")
    # The skipped reject does not apply (as in PgBouncer): the next line does.
    assert attempt(pf, "alice") == "ok"


def test_hba_without_file_refuses_to_start(pgfunnel, postgres):
    pf = pgfunnel.start(params={"auth_type": "hba"},
                        databases={"appdb": postgres.db_entry("appdb")}, wait=False)
    rc = pf.wait(10)
    assert rc not in (0, None), pf.all_output()
    assert "auth_type = hba needs auth_hba_file" in pf.all_output()
