"""TLS on both legs: clients to pgfunnel (client_tls_*) and pgfunnel to Postgres (server_tls_*).

The expected behaviour is PgBouncer 1.25.2's, observed by running this file against it:

    PGFUNNEL_BIN=/work/shared/anchors/pgbouncer-1.25.2 /usr/bin/python3 -m pytest -q \
        -p no:cacheprovider -rfEsxX tests/integration/test_tls.py

(the fixtures start it like pgfunnel, with -u as root). The tests marked beyond_pgbouncer()
assert what pgfunnel promises beyond PgBouncer; against PgBouncer they are strict xfails.

Certificates come from tlscerts.TlsCerts (a CA, an unrelated CA, a localhost certificate with the
IP SAN 127.0.0.1 and one without it, one for a wrong host name, client certificates). Client-leg
tests run in front of the session's plain `postgres` (ssl=off: server_tls_sslmode's default,
prefer, falls back to plaintext there), so only the client leg is TLS. Server-leg tests use
`ssl_pg`, a cluster with ssl=on whose pg_hba.conf accepts TCP logins over TLS only.

PgBouncer 1.25.2, as observed (OpenSSL 3.0, Debian 12):
- client_tls_sslmode=require, plaintext client: FATAL 08P01 "SSL required", connection closed.
- client_tls_sslmode=disable: SSLRequest answered 'N'.
- SHOW CLIENTS / SHOW SERVERS `tls`: '' for plaintext; "<protocol>/<cipher>" for TLS 1.3
  ("TLSv1.3/TLS_AES_256_GCM_SHA384"); a TLS 1.2 client adds the key exchange,
  "TLSv1.2/ECDHE-ECDSA-AES256-GCM-SHA384/ECDH=X25519"; a TLS 1.2 server connection does not
  ("TLSv1.2/ECDHE-ECDSA-AES256-GCM-SHA384").
- server_tls_sslmode default prefer (TLS when Postgres offers it); allow also ends up on TLS
  against a TLS-only Postgres; disable gets Postgres's pg_hba refusal relayed as is.
- A server certificate that fails verification: PgBouncer only logs "TLS handshake error:
  handshake failed: error:0A000086:SSL routines::certificate verify failed" (or "name
  `127.0.0.1' not present in server certificate") and retries; the client waits until its own
  timeout. pgfunnel fails the waiting client at once with the reason (beyond PgBouncer).
- RELOAD re-reads the certificate files even when their paths did not change; connected TLS
  clients stay. A RELOAD whose certificate cannot be loaded answers F0000 "RELOAD failed, see
  logs for additional details" and keeps serving the old certificate.
- client_tls_sslmode other than disable without client_tls_key_file/cert_file: refuses to start,
  "To allow TLS connections from clients, client_tls_key_file and client_tls_cert_file must be
  set." then "FATAL TLS setup failed".
- Direct TLS (no SSLRequest, ALPN "postgresql"): supported; ALPN "http/1.1" is refused with a
  no_application_protocol alert; no ALPN at all is ACCEPTED by PgBouncer, whereas Postgres 17
  refuses it, which is what pgfunnel promises (beyond PgBouncer).
- SCRAM channel binding: PgBouncer never offers SCRAM-SHA-256-PLUS (libpq: "channel binding is
  required, but server did not offer an authentication method that supports channel binding");
  pgfunnel does over TLS (beyond PgBouncer).
- Garbage, a plaintext StartupMessage, or a close after 'S': the connection is closed at once,
  no plaintext ErrorResponse (log: "TLS handshake error: ... wrong version number").
"""

import hashlib
import os
import re
import socket
import ssl
import struct
import subprocess
import time

import psycopg
import pytest

import pfhelpers
import pgwire
import tlscerts

SSL_REQUEST = struct.pack("!II", 8, 80877103)
PGBENCH = os.path.join(pfhelpers.PG_BINDIR, "pgbench")


UNDER_PGBOUNCER = pfhelpers.UNDER_PGBOUNCER
beyond_pgbouncer = pfhelpers.beyond_pgbouncer


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def certs(run_user):
    c = tlscerts.TlsCerts()
    yield c
    c.destroy()


@pytest.fixture(scope="module")
def ssl_pg(certs):
    """Postgres with ssl=on serving certs.server (SAN localhost + 127.0.0.1), TCP over TLS only."""
    cluster = tlscerts.SslCluster(certs)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="module")
def noip_pg(certs):
    """Like ssl_pg, but serving certs.server_noip (SAN DNS:localhost only, no IP)."""
    cluster = tlscerts.SslCluster(certs, server=certs.server_noip)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


def client_tls(certs, mode="require", served=None, **extra):
    """[pgbouncer] parameters for TLS toward clients, serving `served` (default certs.server)."""
    served = served or certs.server
    params = {"client_tls_sslmode": mode, "client_tls_key_file": served.key,
              "client_tls_cert_file": served.cert, "client_tls_ca_file": certs.ca.cert}
    params.update(extra)
    return params


def db_at(cluster, host, dbname="appdb", **extra):
    """A [databases] value for cluster reached as host (e.g. "localhost" for verify-full)."""
    parts = ["host=%s" % host, "port=%d" % cluster.port, "dbname=%s" % dbname]
    parts += ["%s=%s" % kv for kv in extra.items()]
    return " ".join(parts)


def conninfo(pf, user, dbname, host="127.0.0.1", **params):
    parts = ["host=%s" % host, "port=%d" % pf.port, "user=%s" % user, "dbname=%s" % dbname,
             "connect_timeout=10"]
    parts += ["%s='%s'" % (k, v) for k, v in params.items()]
    return " ".join(parts)


def libpq_env(password=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if "PGFUNNEL_BIN" in os.environ:
        env["PGFUNNEL_BIN"] = os.environ["PGFUNNEL_BIN"]
    if password is not None:
        env["PGPASSWORD"] = password
    return env


def run_psql(info, password, *commands, timeout=60):
    """psql -X -A -t -d info -c command...; CompletedProcess (text)."""
    cmd = [pfhelpers.PSQL, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", info]
    for c in commands:
        cmd += ["-c", c]
    return subprocess.run(cmd, env=libpq_env(password), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def connect(info, password, **kw):
    return psycopg.connect(info, password=password, **kw)


# ---------------------------------------------------------------- raw TLS clients


def tls_context(cafile=None, alpn=None, max_version=None):
    """A client SSLContext: verifying against cafile (host name checked) or verifying nothing."""
    if cafile:
        ctx = ssl.create_default_context(cafile=cafile)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if max_version:
        ctx.maximum_version = max_version
    return ctx


def raw_socket(port, timeout=10.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def ssl_request(sock):
    """Send SSLRequest; return the one-byte answer."""
    sock.sendall(SSL_REQUEST)
    return pgwire.recv_exact(sock, 1)


def tls_socket(port, ctx, server_hostname="localhost", direct=False, timeout=10.0):
    """A TLS socket to port: SSLRequest first (must be answered 'S'), or direct TLS."""
    raw = raw_socket(port, timeout)
    try:
        if not direct:
            answer = ssl_request(raw)
            assert answer == b"S", "SSLRequest answered %r, not 'S'" % answer
        return ctx.wrap_socket(raw, server_hostname=server_hostname)
    except BaseException:
        raw.close()
        raise


def tls_login(pf, user, dbname, password, ctx, app=None, direct=False,
              server_hostname="localhost"):
    """A pgwire.Connection logged in over TLS (only login / simple_query on it: pgwire's
    timed reads poll the socket, which does not see data the TLS layer already buffered)."""
    sock = tls_socket(pf.port, ctx, server_hostname, direct)
    conn = pgwire.Connection(sock)
    try:
        conn.login(user, dbname, password, {"application_name": app} if app else None)
    except BaseException:
        sock.close()
        raise
    return conn


def served_certificate(port, server_hostname="localhost"):
    """The DER certificate pgfunnel serves on port (SSLRequest, then an unverified handshake)."""
    s = tls_socket(port, tls_context(), server_hostname)
    try:
        return s.getpeercert(binary_form=True)
    finally:
        s.close()


def served_serial(port):
    return tlscerts.cert_serial(served_certificate(port))


def client_hello():
    """The bytes of a real TLS ClientHello (Python's), for half-handshake tests."""
    ctx = tls_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    assert hello[:1] == b"\x16" and len(hello) > 100, hello[:16]
    return hello


def read_until_closed(sock, timeout=5.0):
    """Everything the peer sends until it closes (AssertionError if it is still open at the
    deadline). A reset counts as closed."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("connection still open after %.0fs; got %r" % (timeout,
                                                                               data[:200]))
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            return data
        except ssl.SSLError as e:
            return data + b"<ssl error: %s>" % str(e).encode()
        if not chunk:
            return data
        data += chunk


def rows_by_app(rows, app):
    return [r for r in rows if r.get("application_name") == app]


def one_client(pf, app, **kw):
    """The SHOW CLIENTS row of the client with application_name app (waits for it)."""
    rows = pfhelpers.wait_clients(pf, lambda rows: len(rows_by_app(rows, app)) == 1,
                                  "one client with application_name %s" % app, **kw)
    return rows_by_app(rows, app)[0]


def logs_in_over_tls(pf, user, dbname, password):
    """True if a login through pf works now and its Postgres backend uses TLS."""
    try:
        with pfhelpers.proxy_connect(pf, user, dbname, password) as conn:
            return backend_tls(conn)[0] is True
    except psycopg.OperationalError:
        return False


def backend_tls(conn):
    """(ssl, version, cipher) of the Postgres backend conn (through pgfunnel) is linked to."""
    return conn.execute("SELECT ssl, version, cipher FROM pg_stat_ssl "
                        "WHERE pid = pg_backend_pid()").fetchone()


# ================================================================ client leg


MODES = [
    # (libpq sslmode, host the client names, sslrootcert?)
    ("require", "127.0.0.1", False),
    ("verify-ca", "127.0.0.1", True),
    ("verify-full", "localhost", True),
    ("verify-full", "127.0.0.1", True),   # the certificate's IP SAN
]
MODE_IDS = ["%s-%s" % (m[0], m[1]) for m in MODES]


@pytest.mark.parametrize("sslmode,host,root", MODES, ids=MODE_IDS)
def test_psql_over_tls(pgfunnel, postgres, certs, sslmode, host, root):
    """psql with sslmode=require / verify-ca / verify-full logs in through pgfunnel
    (client_tls_sslmode=require) and the session really is TLS (psql's \\conninfo)."""
    pf = pfhelpers.start_proxy(pgfunnel, postgres, params=client_tls(certs))
    extra = {"sslmode": sslmode, "application_name": "psql_tls_probe"}
    if root:
        extra["sslrootcert"] = certs.ca.cert
    info = conninfo(pf, "alice", "appdb", host, **extra)
    res = run_psql(info, postgres.passwords["alice"], "\\conninfo",
                   "SELECT current_user || '@' || current_database()")
    assert res.returncode == 0, res.stderr
    assert re.search(r"^SSL connection \(protocol: TLSv1\.[23], cipher: \S+", res.stdout,
                     re.M), res.stdout
    assert "alice@appdb\n" in res.stdout


@pytest.mark.parametrize("sslmode,host,root", MODES, ids=MODE_IDS)
def test_psycopg_over_tls(pgfunnel, postgres, certs, sslmode, host, root):
    """psycopg (libpq) with the same modes: ssl_in_use, and SHOW CLIENTS lists the session with
    a TLS `tls` value."""
    pf = pfhelpers.start_proxy(pgfunnel, postgres, params=client_tls(certs))
    extra = {"sslmode": sslmode, "application_name": "psycopg_tls_probe"}
    if root:
        extra["sslrootcert"] = certs.ca.cert
    with connect(conninfo(pf, "alice", "appdb", host, **extra), postgres.passwords["alice"],
                 autocommit=True) as conn:
        assert conn.pgconn.ssl_in_use is True
        assert conn.execute("SELECT current_user, 6 * 7").fetchone() == ("alice", 42)
        row = one_client(pf, "psycopg_tls_probe")
        assert re.fullmatch(r"TLSv1\.[23]/[A-Z0-9_-]+(/ECDH=\w+)?", row["tls"]), row


def test_plain_client_refused_when_tls_required(pgfunnel, postgres, certs):
    """client_tls_sslmode=require: a plaintext login gets PgBouncer's FATAL 08P01 "SSL
    required" and the connection is closed; libpq with sslmode=disable sees the same text."""
    pf = pfhelpers.start_proxy(pgfunnel, postgres, params=client_tls(certs))
    err, closed = pgwire.login_refused(pf.host, pf.port, "alice", "appdb",
                                       postgres.passwords["alice"])
    assert (err.severity, err.sqlstate, err.message) == ("FATAL", "08P01", "SSL required"), \
        err.fields
    assert closed
    # SSLRequest answered 'N' is not an option either: it must be 'S'.
    s = raw_socket(pf.port)
    try:
        assert ssl_request(s) == b"S"
    finally:
        s.close()
    res = run_psql(conninfo(pf, "alice", "appdb", sslmode="disable"),
                   postgres.passwords["alice"], "SELECT 1")
    assert res.returncode == 2
    assert "FATAL:  SSL required" in res.stderr, res.stderr
    # and TLS clients are still served
    with connect(conninfo(pf, "alice", "appdb", sslmode="require"),
                 postgres.passwords["alice"]) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_client_tls_disable_answers_n(pgfunnel, postgres, certs):
    """client_tls_sslmode=disable (even with key and certificate configured): SSLRequest is
    answered 'N' and the client goes on in plaintext; libpq sslmode=prefer falls back to
    plaintext, sslmode=require fails with libpq's "server does not support SSL"."""
    pf = pfhelpers.start_proxy(pgfunnel, postgres, params=client_tls(certs, "disable"))
    s = raw_socket(pf.port)
    try:
        assert ssl_request(s) == b"N"
        conn = pgwire.Connection(s)
        conn.login("alice", "appdb", postgres.passwords["alice"])
        assert conn.simple_query("SELECT 'plain'") == [("plain",)]
    finally:
        s.close()
    with connect(conninfo(pf, "alice", "appdb", sslmode="prefer", application_name="plainpref"),
                 postgres.passwords["alice"], autocommit=True) as conn:
        assert conn.pgconn.ssl_in_use is False
        assert conn.execute("SELECT 2").fetchone() == (2,)
        assert one_client(pf, "plainpref")["tls"] == ""
    with pytest.raises(psycopg.OperationalError) as exc:
        connect(conninfo(pf, "alice", "appdb", sslmode="require"), postgres.passwords["alice"])
    assert "server does not support SSL, but SSL was required" in str(exc.value)


def test_verify_full_against_wrong_host_certificate_fails(pgfunnel, postgres, certs):
    """pgfunnel serving a certificate for wrong-host.invalid (signed by the right CA):
    verify-full fails on the host name, verify-ca (same CA, no name check) works, and a client
    trusting another CA fails on the chain."""
    pf = pfhelpers.start_proxy(pgfunnel, postgres,
                               params=client_tls(certs, served=certs.wrong_host))
    pw = postgres.passwords["alice"]
    res = run_psql(conninfo(pf, "alice", "appdb", "localhost", sslmode="verify-full",
                            sslrootcert=certs.ca.cert), pw, "SELECT 1")
    assert res.returncode == 2
    assert ('server certificate for "wrong-host.invalid" does not match host name "localhost"'
            in res.stderr), res.stderr
    res = run_psql(conninfo(pf, "alice", "appdb", "localhost", sslmode="verify-ca",
                            sslrootcert=certs.ca.cert), pw, "SELECT 'ca ok'")
    assert res.returncode == 0 and res.stdout == "ca ok\n", res.stderr
    res = run_psql(conninfo(pf, "alice", "appdb", "localhost", sslmode="verify-ca",
                            sslrootcert=certs.other_ca.cert), pw, "SELECT 1")
    assert res.returncode == 2
    assert "certificate verify failed" in res.stderr, res.stderr


@pytest.mark.parametrize("mode", ["verify-ca", "verify-full"])
def test_client_certificate_required(pgfunnel, postgres, certs, mode):
    """client_tls_sslmode=verify-ca / verify-full: a client without a certificate is refused in
    the handshake ("certificate required" alert), one whose certificate another CA signed gets
    "unknown ca", one with a certificate from client_tls_ca_file logs in."""
    pf = pfhelpers.start_proxy(pgfunnel, postgres, params=client_tls(certs, mode))
    pw = postgres.passwords["alice"]
    base = dict(sslmode="verify-full", sslrootcert=certs.ca.cert)
    res = run_psql(conninfo(pf, "alice", "appdb", "localhost", **base), pw, "SELECT 1")
    assert res.returncode == 2
    assert "certificate required" in res.stderr, res.stderr
    stranger = certs.issue("stranger-alice", cn="alice", client=True, ca=certs.other_ca)
    res = run_psql(conninfo(pf, "alice", "appdb", "localhost", sslcert=stranger.cert,
                            sslkey=stranger.key, **base), pw, "SELECT 1")
    assert res.returncode == 2
    assert "unknown ca" in res.stderr, res.stderr
    mine = certs.client("alice")
    res = run_psql(conninfo(pf, "alice", "appdb", "localhost", sslcert=mine.cert,
                            sslkey=mine.key, **base), pw, "SELECT 'cert ok'")
    assert res.returncode == 0 and res.stdout == "cert ok\n", res.stderr


def test_tls_column_clients(pgfunnel, postgres, certs):
    """SHOW CLIENTS `tls` as PgBouncer fills it (client_tls_sslmode=prefer: TLS and plaintext
    clients side by side): TLS 1.3 "TLSv1.3/<cipher>", TLS 1.2 "TLSv1.2/<cipher>/ECDH=X25519",
    plaintext ''. SHOW SERVERS `tls` is '' toward the plaintext Postgres."""
    pf = pfhelpers.start_proxy(pgfunnel, postgres, params=client_tls(certs, "prefer"))
    pw = postgres.passwords["alice"]
    t13 = tls_login(pf, "alice", "appdb", pw, tls_context(certs.ca.cert), app="tls13")
    t12 = tls_login(pf, "alice", "appdb", pw,
                    tls_context(certs.ca.cert, max_version=ssl.TLSVersion.TLSv1_2), app="tls12")
    plain = pgwire.connect(pf.host, pf.port, "alice", "appdb", pw,
                           options={"application_name": "plain"})
    try:
        assert t13.sock.version() == "TLSv1.3"
        assert t12.sock.version() == "TLSv1.2"
        rows = pfhelpers.show(pf, "CLIENTS")
        assert one_client(pf, "tls13")["tls"] == "TLSv1.3/" + t13.sock.cipher()[0], rows
        assert one_client(pf, "tls12")["tls"] == "TLSv1.2/%s/ECDH=X25519" % (
            t12.sock.cipher()[0]), rows
        assert one_client(pf, "plain")["tls"] == "", rows
        servers = pfhelpers.show(pf, "SERVERS")
        assert servers and all(r["tls"] == "" for r in servers), servers
        for c in (t13, t12, plain):
            assert c.simple_query("SELECT 1") == [("1",)]
    finally:
        for c in (t13, t12, plain):
            c.close()


# ================================================================ server leg


SERVER_MODES = ["prefer", "allow", "require", "verify-ca", "verify-full"]


@pytest.mark.parametrize("mode", [None] + SERVER_MODES, ids=["default"] + SERVER_MODES)
def test_server_tls_modes_use_tls(pgfunnel, ssl_pg, certs, mode):
    """Against a Postgres that accepts TCP logins over TLS only: the default (prefer) and every
    mode but disable log in, and pg_stat_ssl shows TLS for pgfunnel's backend. allow too, as in
    PgBouncer 1.25.2 (observed: TLS, not plaintext). The verify modes get the right CA and the
    server as localhost."""
    params = {}
    if mode:
        params["server_tls_sslmode"] = mode
    if mode in ("verify-ca", "verify-full"):
        params["server_tls_ca_file"] = certs.ca.cert
    pf = pfhelpers.start_proxy(pgfunnel, ssl_pg, params=params,
                               databases={"appdb": db_at(ssl_pg, "localhost")})
    with pfhelpers.proxy_connect(pf, "alice", "appdb", ssl_pg.passwords["alice"]) as conn:
        on, version, cipher = backend_tls(conn)
        assert on is True
        assert version in ("TLSv1.2", "TLSv1.3")
        servers = pfhelpers.show(pf, "SERVERS")
        assert [r["tls"] for r in servers] == ["%s/%s" % (version, cipher)], servers


def test_server_tls_disable_gets_hba_refusal(pgfunnel, ssl_pg):
    """server_tls_sslmode=disable against the hostssl-only Postgres: Postgres's own refusal is
    relayed to the client, with its SQLSTATE and text."""
    pf = pfhelpers.start_proxy(pgfunnel, ssl_pg, params={"server_tls_sslmode": "disable"})
    err, closed = pgwire.login_refused(pf.host, pf.port, "alice", "appdb",
                                       ssl_pg.passwords["alice"], timeout=10)
    assert (err.severity, err.sqlstate, err.message) == (
        "FATAL", "28000",
        'no pg_hba.conf entry for host "127.0.0.1", user "alice", database "appdb", '
        'no encryption'), err.fields
    assert closed


@pytest.mark.parametrize("mode", ["verify-ca", "verify-full"])
@beyond_pgbouncer("PgBouncer keeps the client waiting and only logs the verification failure")
def test_server_wrong_ca_fails_with_reason(pgfunnel, ssl_pg, certs, mode):
    """server_tls_ca_file is an unrelated CA: the login fails promptly with FATAL 08006 whose
    text says the certificate verification failed (PgBouncer's log words, OpenSSL's "certificate
    verify failed"); the log says it too. Then a RELOAD with the right CA fixes new logins."""
    pf = pfhelpers.start_proxy(pgfunnel, ssl_pg, params={
        "server_tls_sslmode": mode, "server_tls_ca_file": certs.other_ca.cert,
        "server_login_retry": 1},
        databases={"appdb": db_at(ssl_pg, "localhost")})
    pw = ssl_pg.passwords["alice"]
    t0 = time.monotonic()
    err, closed = pgwire.login_refused(pf.host, pf.port, "alice", "appdb", pw, timeout=15)
    assert time.monotonic() - t0 < 10
    assert (err.severity, err.sqlstate) == ("FATAL", "08006"), err.fields
    assert re.search(r"certificate verif", err.message, re.I), err.fields
    assert closed
    pf.wait_for_log(r"certificate verify failed")
    pf.write_ini(params=dict(pf.params, server_tls_ca_file=certs.ca.cert))
    pfhelpers.console(pf, "RELOAD")
    # server_login_retry (1 s) may refuse a login at once after the failure: poll.
    pfhelpers.wait_until(lambda: logs_in_over_tls(pf, "alice", "appdb", pw), 15,
                         "a login over verified TLS after RELOAD with the right CA",
                         lambda: pf.log_text()[-3000:])


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_server_verify_full_by_name_and_ip(pgfunnel, ssl_pg, certs, host):
    """verify-full with the right CA: the server named localhost matches the DNS SAN, named
    127.0.0.1 matches the IP SAN."""
    pf = pfhelpers.start_proxy(pgfunnel, ssl_pg, params={
        "server_tls_sslmode": "verify-full", "server_tls_ca_file": certs.ca.cert},
        databases={"appdb": db_at(ssl_pg, host)})
    with pfhelpers.proxy_connect(pf, "alice", "appdb", ssl_pg.passwords["alice"]) as conn:
        assert backend_tls(conn)[0] is True


def test_server_verify_full_without_ip_san_by_name(pgfunnel, noip_pg, certs):
    """The server's certificate has no IP SAN: verify-full naming it localhost works."""
    pf = pfhelpers.start_proxy(pgfunnel, noip_pg, params={
        "server_tls_sslmode": "verify-full", "server_tls_ca_file": certs.ca.cert},
        databases={"appdb": db_at(noip_pg, "localhost")})
    with pfhelpers.proxy_connect(pf, "alice", "appdb", noip_pg.passwords["alice"]) as conn:
        assert backend_tls(conn)[0] is True


@beyond_pgbouncer("PgBouncer keeps the client waiting and only logs \"name `127.0.0.1' not "
                  "present in server certificate\"")
def test_server_verify_full_without_ip_san_by_ip_fails(pgfunnel, noip_pg, certs):
    """The server's certificate has no IP SAN: verify-full naming it 127.0.0.1 fails (FATAL
    08006 about the certificate), while verify-ca (no name check) works."""
    pf = pfhelpers.start_proxy(pgfunnel, noip_pg, params={
        "server_tls_sslmode": "verify-full", "server_tls_ca_file": certs.ca.cert,
        "server_login_retry": 1},
        databases={"appdb": db_at(noip_pg, "127.0.0.1"),
                   "caonly": db_at(noip_pg, "127.0.0.1")})
    pw = noip_pg.passwords["alice"]
    err, closed = pgwire.login_refused(pf.host, pf.port, "alice", "appdb", pw, timeout=15)
    assert (err.severity, err.sqlstate) == ("FATAL", "08006"), err.fields
    assert re.search(r"certificate", err.message, re.I), err.fields
    assert closed
    pf.write_ini(params=dict(pf.params, server_tls_sslmode="verify-ca"))
    pfhelpers.console(pf, "RELOAD")
    pfhelpers.wait_until(lambda: logs_in_over_tls(pf, "alice", "caonly", pw), 15,
                         "a verify-ca login after RELOAD", lambda: pf.log_text()[-3000:])


def test_server_client_certificate(pgfunnel, ssl_pg, certs):
    """server_tls_key_file / server_tls_cert_file: pgfunnel presents a client certificate to
    Postgres, whose pg_hba lets CERT_USER in by certificate only. Without them, Postgres's
    refusal ("connection requires a valid client certificate") is relayed."""
    mine = certs.client(tlscerts.CERT_USER)
    entry = db_at(ssl_pg, "localhost", user=tlscerts.CERT_USER)
    pf = pfhelpers.start_proxy(pgfunnel, ssl_pg, params={
        "server_tls_sslmode": "verify-full", "server_tls_ca_file": certs.ca.cert,
        "server_tls_key_file": mine.key, "server_tls_cert_file": mine.cert},
        databases={"certdb": entry})
    with pfhelpers.proxy_connect(pf, "alice", "certdb", ssl_pg.passwords["alice"]) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (tlscerts.CERT_USER,)
        dn = conn.execute("SELECT client_dn FROM pg_stat_ssl "
                          "WHERE pid = pg_backend_pid()").fetchone()[0]
        assert dn.endswith("CN=" + tlscerts.CERT_USER), dn
    pf2 = pfhelpers.start_proxy(pgfunnel, ssl_pg, params={
        "server_tls_sslmode": "verify-full", "server_tls_ca_file": certs.ca.cert},
        databases={"certdb": entry})
    err, closed = pgwire.login_refused(pf2.host, pf2.port, "alice", "certdb",
                                       ssl_pg.passwords["alice"], timeout=10)
    assert (err.severity, err.sqlstate, err.message) == (
        "FATAL", "28000", "connection requires a valid client certificate"), err.fields


@pytest.mark.parametrize("protocols", ["secure", "tlsv1.2"])
def test_tls_column_servers(pgfunnel, ssl_pg, certs, protocols):
    """SHOW SERVERS `tls` is "<protocol>/<cipher>" exactly as pg_stat_ssl reports them for that
    backend (remote_pid), TLS 1.2 included (no key-exchange suffix on server connections), and
    server_tls_protocols=tlsv1.2 is obeyed."""
    pf = pfhelpers.start_proxy(pgfunnel, ssl_pg, params={
        "server_tls_sslmode": "require", "server_tls_protocols": protocols})
    with pfhelpers.proxy_connect(pf, "alice", "appdb", ssl_pg.passwords["alice"]) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        on, version, cipher = backend_tls(conn)
        assert on is True
        if protocols == "tlsv1.2":
            assert version == "TLSv1.2"
        rows = [r for r in pfhelpers.show(pf, "SERVERS") if int(r["remote_pid"]) == pid]
        assert len(rows) == 1, pfhelpers.show(pf, "SERVERS")
        assert rows[0]["tls"] == "%s/%s" % (version, cipher), rows


# ================================================================ both legs


def both_legs(pgfunnel, ssl_pg, certs, **params):
    p = client_tls(certs)
    p.update({"server_tls_sslmode": "verify-full", "server_tls_ca_file": certs.ca.cert})
    p.update(params)
    return pfhelpers.start_proxy(pgfunnel, ssl_pg, params=p,
                                 databases={"appdb": db_at(ssl_pg, "localhost")})


ROWS = 100
ROW_SQL = "repeat(md5(i::text), 31250)"  # 1,000,000 characters per row, different per row


def test_100mb_results_cross_both_legs_intact(pgfunnel, ssl_pg, certs):
    """100 MB of SELECT result and 100 MB of COPY TO STDOUT, then 50 MB of COPY FROM STDIN, all
    through TLS client <-> pgfunnel <-> TLS Postgres; every byte is checked against an md5()
    Postgres computes over the same data."""
    pf = both_legs(pgfunnel, ssl_pg, certs)
    info = conninfo(pf, "alice", "appdb", "localhost", sslmode="verify-full",
                    sslrootcert=certs.ca.cert)
    with connect(info, ssl_pg.passwords["alice"], autocommit=True) as conn:
        assert conn.pgconn.ssl_in_use is True
        assert backend_tls(conn)[0] is True
        # SELECT, streamed row by row
        want = conn.execute("SELECT md5(string_agg(%s, '' ORDER BY i)) "
                            "FROM generate_series(1, %d) i" % (ROW_SQL, ROWS)).fetchone()[0]
        h, n, size = hashlib.md5(), 0, 0
        with conn.cursor() as cur:
            for i, payload in cur.stream("SELECT i, %s FROM generate_series(1, %d) i ORDER BY i"
                                         % (ROW_SQL, ROWS)):
                n += 1
                assert i == n
                data = payload.encode()
                size += len(data)
                h.update(data)
        assert (n, size) == (ROWS, ROWS * 1000000)
        assert h.hexdigest() == want
        # COPY out
        want = conn.execute(
            "SELECT md5(string_agg(i::text || E'\\t' || %s || E'\\n', '' ORDER BY i)) "
            "FROM generate_series(1, %d) i" % (ROW_SQL, ROWS)).fetchone()[0]
        h, size = hashlib.md5(), 0
        with conn.cursor() as cur:
            with cur.copy("COPY (SELECT i, %s FROM generate_series(1, %d) i ORDER BY i) "
                          "TO STDOUT" % (ROW_SQL, ROWS)) as copy:
                for chunk in copy:
                    size += len(chunk)
                    h.update(chunk)
        assert size > ROWS * 1000000
        assert h.hexdigest() == want
        # COPY in: 50 rows of 1 MB of random hex
        conn.execute("CREATE TEMP TABLE tls_in (n int, payload text)")
        h = hashlib.md5()
        with conn.cursor() as cur:
            with cur.copy("COPY tls_in (n, payload) FROM STDIN") as copy:
                for n in range(1, 51):
                    payload = os.urandom(500000).hex()
                    h.update(payload.encode())
                    copy.write_row((n, payload))
        got = conn.execute("SELECT count(*), sum(length(payload)), "
                           "md5(string_agg(payload, '' ORDER BY n)) FROM tls_in").fetchone()
        assert got == (50, 50 * 1000000, h.hexdigest())
        assert conn.execute("SELECT 'still fine'").fetchone() == ("still fine",)


def test_pgbench_50_tls_clients_transaction_mode(pgfunnel, ssl_pg, certs):
    """pgbench -c 50 -S over verify-full TLS through pgfunnel in transaction mode, with TLS to
    Postgres too: every transaction processed, none failed; the pool's servers are all TLS."""
    pw = ssl_pg.passwords["alice"]
    direct = "host=127.0.0.1 port=%d user=alice dbname=appdb sslmode=require" % ssl_pg.port
    res = subprocess.run([PGBENCH, "-i", "-s", "1", "-q", direct], env=libpq_env(pw),
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    pf = both_legs(pgfunnel, ssl_pg, certs, pool_mode="transaction", default_pool_size=10,
                   max_client_conn=120)
    clients, per_client = 50, 40
    info = conninfo(pf, "alice", "appdb", "localhost", sslmode="verify-full",
                    sslrootcert=certs.ca.cert)
    res = subprocess.run([PGBENCH, "-n", "-S", "-c", str(clients), "-j", "2", "-t",
                          str(per_client), info], env=libpq_env(pw), capture_output=True,
                         text=True, timeout=240, stdin=subprocess.DEVNULL)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    total = clients * per_client
    assert "number of transactions actually processed: %d/%d" % (total, total) in out, out
    m = re.search(r"number of failed transactions: (\d+)", out)
    assert m and m.group(1) == "0", out
    # A server launched for a client that waited near the end may still be in its handshake
    # (state "new", no TLS yet): wait for the pool to settle, then every server is TLS.
    pfhelpers.wait_until(lambda: all(r["state"] != "new" for r in pfhelpers.show(pf, "SERVERS")),
                         30, "servers still logging in", lambda: pfhelpers.show(pf, "SERVERS"))
    servers = pfhelpers.show(pf, "SERVERS")
    assert 0 < len(servers) <= 10, servers
    assert all(r["tls"].startswith("TLSv1.") for r in servers), servers


# ================================================================ reload


def test_reload_serves_new_certificate_and_keeps_clients(pgfunnel, postgres, certs):
    """The key and certificate files are replaced (same paths) by a certificate from another CA,
    then RELOAD: new connections get the new certificate (its serial), verify against the new
    CA only; TLS clients connected before keep working, still over TLS."""
    live = certs.install(certs.server, "live")
    pf = pfhelpers.start_proxy(pgfunnel, postgres, params=client_tls(certs, served=live))
    pw = postgres.passwords["alice"]
    assert served_serial(pf.port) == certs.server.serial
    old = connect(conninfo(pf, "alice", "appdb", "localhost", sslmode="verify-full",
                           sslrootcert=certs.ca.cert), pw, autocommit=True)
    old_raw = tls_login(pf, "alice", "appdb", pw, tls_context(certs.ca.cert), app="old_raw")
    try:
        old.execute("CREATE TEMP TABLE kept (v int)")
        old.execute("INSERT INTO kept VALUES (1)")
        certs.install(certs.other_server, "live")
        # Not before the RELOAD: the running configuration serves the certificate it loaded.
        assert served_serial(pf.port) == certs.server.serial
        pfhelpers.console(pf, "RELOAD")
        pfhelpers.wait_until(lambda: served_serial(pf.port) == certs.other_server.serial, 10,
                             "the new certificate served after RELOAD",
                             lambda: pf.log_text()[-3000:])
        res = run_psql(conninfo(pf, "alice", "appdb", "localhost", sslmode="verify-full",
                                sslrootcert=certs.other_ca.cert), pw, "SELECT 'new chain'")
        assert res.returncode == 0 and res.stdout == "new chain\n", res.stderr
        res = run_psql(conninfo(pf, "alice", "appdb", "localhost", sslmode="verify-full",
                                sslrootcert=certs.ca.cert), pw, "SELECT 1")
        assert res.returncode == 2 and "certificate verify failed" in res.stderr, res.stderr
        # The clients from before the RELOAD: same sessions, still TLS.
        assert old.pgconn.ssl_in_use is True
        old.execute("INSERT INTO kept VALUES (2)")
        assert old.execute("SELECT sum(v) FROM kept").fetchone() == (3,)
        assert old_raw.simple_query("SELECT 'old raw'") == [("old raw",)]
        assert tlscerts.cert_serial(old_raw.sock.getpeercert(binary_form=True)) == \
            certs.server.serial
    finally:
        old.close()
        old_raw.close()


def test_reload_with_unreadable_certificate_keeps_old(pgfunnel, postgres, certs):
    """RELOAD naming a certificate file that does not exist fails (F0000 "RELOAD failed ...")
    and changes nothing: the old certificate is still served, new TLS logins work, connected
    clients stay."""
    pf = pfhelpers.start_proxy(pgfunnel, postgres, params=client_tls(certs))
    pw = postgres.passwords["alice"]
    with connect(conninfo(pf, "alice", "appdb", sslmode="require"), pw,
                 autocommit=True) as conn:
        pf.write_ini(params=dict(pf.params, client_tls_cert_file=certs.path("missing.crt")))
        with pytest.raises(psycopg.Error) as exc:
            pfhelpers.console(pf, "RELOAD")
        assert exc.value.sqlstate == "F0000", exc.value
        assert str(exc.value).startswith("RELOAD failed"), exc.value
        assert pf.is_running()
        assert served_serial(pf.port) == certs.server.serial
        assert conn.execute("SELECT 'kept'").fetchone() == ("kept",)
        res = run_psql(conninfo(pf, "alice", "appdb", "localhost", sslmode="verify-full",
                                sslrootcert=certs.ca.cert), pw, "SELECT 'new ok'")
        assert res.returncode == 0 and res.stdout == "new ok\n", res.stderr


@pytest.mark.parametrize("mode", ["allow", "prefer", "require", "verify-ca", "verify-full"])
def test_tls_mode_without_key_files_refused_at_start(pgfunnel, postgres, certs, mode):
    """Any client_tls_sslmode but disable without client_tls_key_file / client_tls_cert_file:
    the process refuses to start (exit status not 0), with PgBouncer's words, and never
    listens."""
    pf = pfhelpers.start_proxy(pgfunnel, postgres, params={"client_tls_sslmode": mode},
                               wait=False)
    rc = pf.wait(15)
    assert rc != 0
    assert ("client_tls_key_file and client_tls_cert_file must be set"
            in pf.all_output()), pf.all_output()
    assert not pfhelpers.port_accepts(pf.port)


def test_client_verify_full_without_ca_file_refused_at_start(pgfunnel, postgres, certs):
    """client_tls_sslmode=verify-full with key and certificate but no client_tls_ca_file (there
    would be nothing to verify client certificates against): refused at start-up, with
    PgBouncer's "client_tls_sslmode requires client_tls_ca_file"."""
    params = client_tls(certs, "verify-full")
    del params["client_tls_ca_file"]
    pf = pfhelpers.start_proxy(pgfunnel, postgres, params=params, wait=False)
    rc = pf.wait(15)
    assert rc != 0
    assert "client_tls_sslmode requires client_tls_ca_file" in pf.all_output(), pf.all_output()


# ================================================================ direct TLS (sslnegotiation)


def test_direct_tls_with_alpn(pgfunnel, postgres, certs):
    """Postgres 17's direct TLS: no SSLRequest, a TLS ClientHello with ALPN "postgresql" at
    once; the certificate verifies, ALPN "postgresql" is selected, the login works, and SHOW
    CLIENTS shows the session as TLS. (libpq 15 cannot do this; a Python TLS socket does.)"""
    pf = pfhelpers.start_proxy(pgfunnel, postgres, params=client_tls(certs))
    conn = tls_login(pf, "alice", "appdb", postgres.passwords["alice"],
                     tls_context(certs.ca.cert, alpn=["postgresql"]), app="direct",
                     direct=True)
    try:
        assert conn.sock.selected_alpn_protocol() == "postgresql"
        assert conn.simple_query("SELECT current_user") == [("alice",)]
        assert one_client(pf, "direct")["tls"] == "%s/%s" % (conn.sock.version(),
                                                            conn.sock.cipher()[0])
    finally:
        conn.close()


def test_direct_tls_with_other_alpn_refused(pgfunnel, postgres, certs):
    """Direct TLS offering only ALPN "http/1.1": the handshake fails with a
    no_application_protocol alert (as Postgres 17 and PgBouncer 1.25 do)."""
    pf = pfhelpers.start_proxy(pgfunnel, postgres, params=client_tls(certs))
    with pytest.raises(ssl.SSLError) as exc:
        s = tls_socket(pf.port, tls_context(certs.ca.cert, alpn=["http/1.1"]), direct=True)
        s.close()
    assert "no application protocol" in str(exc.value).lower(), exc.value
    with connect(conninfo(pf, "alice", "appdb", sslmode="require"),
                 postgres.passwords["alice"]) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@beyond_pgbouncer("PgBouncer 1.25.2 accepts a direct TLS connection without ALPN")
def test_direct_tls_without_alpn_refused(pgfunnel, postgres, certs):
    """Direct TLS without the ALPN extension is refused, as Postgres 17 does ("received direct
    SSL connection request without ALPN protocol negotiation extension"): either the handshake
    fails or the connection is closed without an authentication request."""
    pf = pfhelpers.start_proxy(pgfunnel, postgres, params=client_tls(certs))
    try:
        s = tls_socket(pf.port, tls_context(certs.ca.cert), direct=True)
    except (ssl.SSLError, ConnectionError):
        pass
    else:
        try:
            try:
                s.sendall(pgwire.startup_message({"user": "alice", "database": "appdb"}))
                s.settimeout(10)
                first = s.recv(1)
            except (ssl.SSLError, ConnectionError):
                first = b""
            assert first in (b"", b"E"), (
                "direct TLS without ALPN was accepted: the StartupMessage got %r (an "
                "authentication request) instead of a refusal" % first)
            if first == b"E":
                assert read_until_closed(s, 5) is not None
        finally:
            s.close()
    with connect(conninfo(pf, "alice", "appdb", sslmode="require"),
                 postgres.passwords["alice"]) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


# ================================================================ hostile handshakes


def test_broken_handshakes_do_not_disturb_others(pgfunnel, postgres, certs):
    """With a TLS canary running queries throughout: after 'S', garbage, a plaintext
    StartupMessage or zeros get the connection closed promptly without a plaintext
    ErrorResponse; half a ClientHello then a close, and a direct-TLS ClientHello cut short,
    leave nothing behind; a handshake stalled half-way does not keep a new TLS client from
    logging in at once. pgfunnel keeps running."""
    pf = pfhelpers.start_proxy(pgfunnel, postgres, params=client_tls(certs))
    can = pfhelpers.Canary(pf, "bob", "appdb", postgres.passwords["bob"]).start()
    stalled = []
    try:
        assert can.conn.pgconn.ssl_in_use is True
        for what, data in (
            ("garbage", b"\xff" * 64),
            ("plaintext startup", pgwire.startup_message({"user": "alice",
                                                         "database": "appdb"})),
            ("zeros", b"\0" * 8),
        ):
            s = raw_socket(pf.port)
            try:
                assert ssl_request(s) == b"S"
                s.sendall(data)
                got = read_until_closed(s, 5)
                # A TLS alert record (0x15) at most; never a plaintext ErrorResponse.
                assert got == b"" or got[:1] == b"\x15", (what, got[:100])
            finally:
                s.close()
            can.expect_progress()
        hello = client_hello()
        # Half a ClientHello after 'S', then gone.
        s = raw_socket(pf.port)
        assert ssl_request(s) == b"S"
        s.sendall(hello[:len(hello) // 2])
        s.close()
        # Half a direct-TLS ClientHello, then gone.
        s = raw_socket(pf.port)
        s.sendall(hello[:len(hello) // 2])
        s.close()
        can.expect_progress()
        # Handshakes stalled half-way, left open while others log in.
        for direct in (False, True):
            s = raw_socket(pf.port)
            if not direct:
                assert ssl_request(s) == b"S"
            s.sendall(hello[:len(hello) // 2])
            stalled.append(s)
        t0 = time.monotonic()
        with connect(conninfo(pf, "alice", "appdb", "localhost", sslmode="verify-full",
                              sslrootcert=certs.ca.cert), postgres.passwords["alice"]) as conn:
            assert conn.execute("SELECT 'not blocked'").fetchone() == ("not blocked",)
        assert time.monotonic() - t0 < 3.0
        can.expect_progress()
        assert pf.is_running()
    finally:
        for s in stalled:
            s.close()
    can.check()
    assert pf.is_running(), pf.all_output()[-3000:]


# ================================================================ channel binding


def sasl_mechanisms(sock, user, dbname):
    """Send a StartupMessage on sock (plain or TLS) and return the mechanisms of the
    AuthenticationSASL request that must answer it."""
    sock.sendall(pgwire.startup_message({"user": user, "database": dbname}))
    conn = pgwire.Connection(sock)
    kind, payload = conn.read_message()
    assert kind == "R", (kind, payload)
    (code,) = struct.unpack("!I", payload[:4])
    assert code == 10, "authentication request %d, not SASL" % code
    return [m.decode() for m in payload[4:].split(b"\0") if m]


def alice_secret(postgres, kind):
    """alice's auth_file secret: her plain password, or her SCRAM secret from pg_authid (so that
    pgfunnel logs in to Postgres with the ClientKey of her SCRAM exchange)."""
    if kind == "plain":
        return postgres.passwords["alice"]
    with postgres.connect(autocommit=True) as conn:
        secret = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'alice'"
                              ).fetchone()[0]
    assert secret.startswith("SCRAM-SHA-256$"), secret
    return secret


@pytest.mark.parametrize("secret", ["plain", "scram"])
@beyond_pgbouncer("PgBouncer does not offer SCRAM-SHA-256-PLUS (no channel binding)")
def test_channel_binding_require(pgfunnel, postgres, certs, secret):
    """auth_type=scram-sha-256 over TLS: pgfunnel offers SCRAM-SHA-256-PLUS besides
    SCRAM-SHA-256 (as Postgres does over TLS), never over plaintext; psql with
    channel_binding=require logs in (auth_file secret plain, or the SCRAM secret of pg_authid:
    the server login then uses the ClientKey of a channel-bound exchange), and a wrong password
    is still refused."""
    pf = pfhelpers.start_proxy(pgfunnel, postgres,
                               params=client_tls(certs, "prefer", auth_type="scram-sha-256"),
                               userlist={"alice": alice_secret(postgres, secret)})
    s = tls_socket(pf.port, tls_context(certs.ca.cert))
    try:
        mechs = sasl_mechanisms(s, "alice", "appdb")
    finally:
        s.close()
    assert sorted(mechs) == ["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"], mechs
    s = raw_socket(pf.port)
    try:
        assert sasl_mechanisms(s, "alice", "appdb") == ["SCRAM-SHA-256"]
    finally:
        s.close()
    base = dict(sslmode="verify-full", sslrootcert=certs.ca.cert, channel_binding="require")
    res = run_psql(conninfo(pf, "alice", "appdb", "localhost", **base),
                   postgres.passwords["alice"], "SELECT current_user")
    assert res.returncode == 0 and res.stdout == "alice\n", res.stderr
    res = run_psql(conninfo(pf, "alice", "appdb", "localhost", **base), "wrong-password",
                   "SELECT 1")
    assert res.returncode == 2
    assert 'password authentication failed for user "alice"' in res.stderr, res.stderr


@pytest.mark.parametrize("secret", ["plain", "scram"])
def test_scram_over_tls_with_libpq_default_channel_binding(pgfunnel, postgres, certs, secret):
    """libpq's default channel_binding=prefer over TLS (its SCRAM says "y": it could bind)
    logs in with auth_type=scram-sha-256, whatever pgfunnel offers."""
    pf = pfhelpers.start_proxy(pgfunnel, postgres,
                               params=client_tls(certs, auth_type="scram-sha-256"),
                               userlist={"alice": alice_secret(postgres, secret)})
    res = run_psql(conninfo(pf, "alice", "appdb", "localhost", sslmode="verify-full",
                            sslrootcert=certs.ca.cert), postgres.passwords["alice"],
                   "SELECT current_user")
    assert res.returncode == 0 and res.stdout == "alice\n", res.stderr


# ================================================================ defaults


TLS_DEFAULTS = {
    "client_tls_sslmode": "disable",
    "client_tls_key_file": "",
    "client_tls_cert_file": "",
    "client_tls_ca_file": "",
    "client_tls_protocols": "secure",
    "client_tls_ciphers": "default",
    "client_tls13_ciphers": None,
    "client_tls_ecdhcurve": "auto",
    "client_tls_dheparams": "auto",
    "server_tls_sslmode": "prefer",
    "server_tls_ca_file": "",
    "server_tls_key_file": "",
    "server_tls_cert_file": "",
    "server_tls_protocols": "secure",
    "server_tls_ciphers": "default",
    "server_tls13_ciphers": None,
}


def test_tls_defaults_in_show_config(pgfunnel, postgres):
    """SHOW CONFIG lists every TLS parameter with PgBouncer 1.25.2's default (value = default,
    NULL for the unset *_tls13_ciphers), all changeable."""
    pf = pfhelpers.start_proxy(pgfunnel, postgres)
    rows = {r["key"]: r for r in pfhelpers.show(pf, "CONFIG")}
    got = {k: (rows[k]["value"], rows[k]["default"], rows[k]["changeable"])
           for k in TLS_DEFAULTS if k in rows}
    assert got == {k: (v, v, "yes") for k, v in TLS_DEFAULTS.items()}
