"""Hardening against the security issue's findings (wip-h2): length arithmetic with the largest
max_packet_size, the unix-socket admin login, log injection through names, the console's word
parser, heap addresses in SHOW output, and TLS modes that would fail open.

Every test here was seen failing against main before the fixes (fca17a1), except the ones whose
docstring calls them a regression guard (and a few parametrized cases that exercise what already
worked, such as "KILL_CLIENT +1"). Run them on the ASan build
(PGFUNNEL_BIN=build-san/pgfunnel PGFUNNEL_SANITIZED=1): the pgfunnel fixture fails a test on
any sanitizer report."""

import re
import struct

import psycopg
import pytest

import pfhelpers
import pgwire


def _start_refused(pgfunnel, params, postgres=None):
    """Start an instance that must refuse its config; return it once it exited (non-zero)."""
    d = {"appdb": postgres.db_entry("appdb")} if postgres else {"appdb": "host=127.0.0.1"}
    pf = pgfunnel.start(params=params, databases=d, wait=False)
    rc = pf.wait(10)
    assert rc not in (0, None), "pgfunnel started with %r\n%s" % (params, pf.all_output())
    return pf


def _reload_refused(pf, key, value, keep):
    """Rewrite key = value in the ini, RELOAD (refused: F0000), and check the running value
    stays `keep` (SHOW CONFIG) and a log line names the parameter."""
    params = dict(pf.params)
    params[key] = value
    pf.write_ini(params)
    after = pf.log_len()
    with pytest.raises(psycopg.Error) as ei:
        pfhelpers.console(pf, "RELOAD")
    assert ei.value.sqlstate == "F0000", ei.value
    pf.wait_for_log(r'config reload failed, keeping the old config: .*parameter "%s"' %
                    re.escape(key), after=after)
    cols, rows = pfhelpers.console(pf, "SHOW CONFIG")
    cfg = {r[0]: r[1] for r in rows}
    assert cfg[key] == keep, cfg[key]
    assert pf.is_running()


def _raw_login(pf, user, dbname, password, host=None):
    return pgwire.connect(host or pf.host, pf.port, user, dbname, password)


# ---------------------------------------------------------------- 1. max_packet_size


@pytest.mark.parametrize("value", ["4294967295", "2147483648"])
def test_max_packet_size_above_int32_refused_at_load(pgfunnel, postgres, value):
    pf = _start_refused(pgfunnel, {"max_packet_size": value}, postgres)
    line = pf.ini_line_of("max_packet_size")
    assert re.search(r'pgfunnel\.ini:%d: parameter "max_packet_size": invalid value "%s" '
                     r'\(expected an integer from 0 to 2147483647\)' % (line, value),
                     pf.all_output()), pf.all_output()


def test_max_packet_size_reload_and_set_above_int32_refused(proxy):
    pf = proxy(params={"max_packet_size": "2147483647"})
    _reload_refused(pf, "max_packet_size", "4294967295", "2147483647")
    with pytest.raises(psycopg.Error) as ei:
        pfhelpers.console(pf, "SET max_packet_size = 4294967295")
    assert ei.value.sqlstate == "22023", ei.value
    assert "max_packet_size" in str(ei.value)


def test_huge_lengths_with_largest_max_packet_size(proxy, postgres):
    """Regression guard: a SASLInitialResponse and, after login, a Query whose length field is
    0xFFFFFFFF get 08P01 "message too long" (no heap overflow in auth, no endless loop), and
    pgfunnel keeps serving. (Before the fix this needed max_packet_size = 4294967295, which
    the config now refuses, so with the largest accepted value it passes on main too.)"""
    pf = proxy(params={"max_packet_size": "2147483647", "auth_type": "scram-sha-256"})
    conn = pgwire.Connection(pgwire.open_socket(pf.host, pf.port))
    try:
        conn.send(pgwire.startup_message({"user": "postgres", "database": "appdb"}))
        kind, payload = conn.read_message()
        assert kind == "R" and struct.unpack("!I", payload[:4])[0] == 10  # AuthenticationSASL
        conn.send(b"p" + struct.pack("!I", 0xFFFFFFFF) + b"SCRAM-SHA-256\0" + b"\0" * 64)
        err = pgwire.expect_error(conn)
        assert err and err.sqlstate == "08P01" and "max_packet_size" in err.message, err
        assert pgwire.wait_closed(conn)
    finally:
        conn.sock.close()

    conn = _raw_login(pf, "postgres", "appdb", "pg-super-secret")
    try:
        assert conn.simple_query("SELECT 1") == [("1",)]
        conn.send(b"Q" + struct.pack("!I", 0xFFFFFFFF) + b"SELECT 1\0")
        err = pgwire.expect_error(conn)
        assert err and err.sqlstate == "08P01" and "max_packet_size" in err.message, err
        assert pgwire.wait_closed(conn)
    finally:
        conn.sock.close()
    # Still serving, promptly.
    with _raw_login(pf, "postgres", "appdb", "pg-super-secret") as c2:
        assert c2.simple_query("SELECT 2") == [("2",)]
    assert pf.is_running()


# ---------------------------------------------------------------- 6. TLS modes that need TLS
# (tests/integration/test_tls.py covers TLS itself; these check that no mode fails open.)


@pytest.mark.parametrize("value", ["allow", "prefer", "require", "verify-ca", "verify-full"])
def test_client_tls_mode_without_files_refuses_to_start(pgfunnel, postgres, value):
    """Any client_tls_sslmode but disable needs a key and a certificate: without them pgfunnel
    does not start (rather than serving plaintext to clients that were promised TLS)."""
    pf = _start_refused(pgfunnel, {"client_tls_sslmode": value}, postgres)
    assert "client_tls_key_file and client_tls_cert_file must be set" in pf.all_output(), \
        pf.all_output()
    assert not pfhelpers.port_accepts(pf.port)


@pytest.mark.parametrize("value", ["require", "verify-ca", "verify-full"])
def test_server_tls_mode_requiring_tls_never_logs_in_plain(proxy, value):
    """The test Postgres has ssl=off: a server_tls_sslmode that requires TLS fails the login
    with a clear error instead of falling back to plaintext."""
    pf = proxy(params={"server_tls_sslmode": value})
    with pytest.raises(pgwire.PgError) as ei:
        _raw_login(pf, "postgres", "appdb", "pg-super-secret")
    assert ei.value.sqlstate == "08006", ei.value
    assert "server does not support SSL, but SSL was required" in str(ei.value), ei.value


@pytest.mark.parametrize("value", ["disable", "allow", "prefer"])
def test_server_tls_modes_allowing_plaintext_still_work(proxy, value):
    pf = proxy(params={"server_tls_sslmode": value})
    with pfhelpers.proxy_connect(pf, "postgres", "appdb", "pg-super-secret") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        cols, rows = pfhelpers.console(pf, "SHOW SERVERS")
        assert rows and all(r[cols.index("tls")] == "" for r in rows), rows


def test_client_tls_reload_and_set_to_require_without_files_refused(proxy):
    pf = proxy()
    params = dict(pf.params)
    params["client_tls_sslmode"] = "require"
    pf.write_ini(params)
    after = pf.log_len()
    with pytest.raises(psycopg.Error) as ei:
        pfhelpers.console(pf, "RELOAD")
    assert ei.value.sqlstate == "F0000", ei.value
    pf.wait_for_log(r"config reload failed, keeping the old config: .*client_tls_key_file",
                    after=after)
    with pytest.raises(psycopg.Error) as ei:
        pfhelpers.console(pf, "SET client_tls_sslmode = 'verify-full'")
    assert ei.value.sqlstate == "F0000", ei.value
    cols, rows = pfhelpers.console(pf, "SHOW CONFIG")
    assert {r[0]: r[1] for r in rows}["client_tls_sslmode"] == "disable"
    with pfhelpers.proxy_connect(pf, "postgres", "appdb", "pg-super-secret") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


# ---------------------------------------------------------------- 4. console word parser


def _console_error(pf, sql):
    with pytest.raises(psycopg.Error) as ei:
        pfhelpers.console(pf, sql)
    return ei.value


@pytest.mark.parametrize("sql", ["KILL_CLIENT -1", "KILL_CLIENT +1", "KILL_CLIENT 1x",
                                 "KILL_CLIENT 0x1"])
def test_kill_client_refuses_non_numbers(proxy, sql):
    pf = proxy()
    with pfhelpers.proxy_connect(pf, "postgres", "appdb", "pg-super-secret") as victim:
        err = _console_error(pf, sql)
        assert err.sqlstate == "42601", err
        assert err.diag.message_primary == 'invalid command "%s", use SHOW HELP;' % sql
        assert victim.execute("SELECT 1").fetchone() == (1,)
    assert pf.is_running()


def test_kill_client_id_too_large(proxy):
    pf = proxy()
    err = _console_error(pf, "KILL_CLIENT 99999999999999999999999")
    assert err.sqlstate == "42704" and "no client with id" in str(err), err


@pytest.mark.parametrize("sql", ['PAUSE "appdb', 'PAUSE ""', 'RESUME "appdb""',
                                 'PAUSE "appdb"x', "PAUSE appdb x", 'DISABLE "" appdb',
                                 "SHOW POOLS extra", 'SHOW "POOLS'])
def test_console_syntax_errors(proxy, sql):
    pf = proxy()
    err = _console_error(pf, sql)
    assert err.sqlstate == "42601", err
    assert err.diag.message_primary.startswith("invalid command"), err
    cols, rows = pfhelpers.console(pf, "SHOW STATE")
    assert dict(rows)["paused"] == "no"


def test_console_long_name_not_truncated(proxy):
    """A database name longer than the console's buffer is refused, not cut to a prefix that
    may name another database."""
    pf = proxy()
    err = _console_error(pf, "PAUSE " + "appdb" + "x" * 400)
    assert err.sqlstate == "42601", err
    err = _console_error(pf, "SET server_reset_query = '%s'" % ("x" * 1100))
    assert err.sqlstate == "22023", err
    cols, rows = pfhelpers.console(pf, "SHOW STATE")
    assert dict(rows)["paused"] == "no"


def test_console_quoted_names_still_work(proxy, postgres):
    pf = proxy(databases={'"my""db"': postgres.db_entry("appdb")})
    assert pfhelpers.console(pf, 'PAUSE "my""db"') == ([], [])
    cols, rows = pfhelpers.console(pf, "SHOW DATABASES")
    paused = {r[cols.index("name")]: r[cols.index("paused")] for r in rows}
    assert paused['my"db'] == 1 and paused["appdb"] == 0, paused
    assert pfhelpers.console(pf, 'RESUME "my""db"') == ([], [])


# ---------------------------------------------------------------- 2. unix-socket admin


def _unix_console(pf, user, sql=""):
    return pfhelpers.wire_as_run_user(pf.unix_socket_dir, pf.port, user, "pgbouncer", sql)


@pytest.mark.skipif(not pfhelpers.is_root(), reason="needs root to act as pgfunnel's OS user")
@pytest.mark.parametrize("user", ["postgres", "alice", "pgfunnelx", "PGBOUNCER"])
def test_unix_owner_under_other_name_is_not_admin(proxy, user):
    """The OS user that runs pgfunnel, over the unix socket, under a name other than
    pgbouncer/pgfunnel, gets no password-less console: postgres (an admin_user) must give its
    password, and an unlisted name is refused."""
    pf = proxy()
    res = _unix_console(pf, user, "SHUTDOWN")
    assert not res["login"], res
    if user == "postgres":
        assert "password" in res.get("error", ""), res  # asked for one; none was given
    else:
        assert res["sqlstate"] == "42501", res
        assert 'not allowed to connect to the admin console as user "%s"' % user in \
            res["message"], res
    assert pf.is_running()
    cols, rows = pfhelpers.console(pf, "SHOW STATE")
    assert dict(rows)["active"] == "yes"


@pytest.mark.skipif(not pfhelpers.is_root(), reason="needs root to act as pgfunnel's OS user")
@pytest.mark.parametrize("user", ["pgbouncer", "pgfunnel"])
def test_unix_owner_as_pgbouncer_is_admin(proxy, user):
    pf = proxy()
    after = pf.log_len()
    res = _unix_console(pf, user, "PAUSE appdb")
    assert res["login"] and "sqlstate" not in res, res
    assert res["auth_methods"] == [0], res  # AuthenticationOk at once: no password asked
    pf.wait_for_log(r"%s access from unix socket" % user, after=after)
    cols, rows = pfhelpers.console(pf, "SHOW DATABASES")
    paused = {r[cols.index("name")]: r[cols.index("paused")] for r in rows}
    assert paused["appdb"] == 1, paused
    assert _unix_console(pf, user, "RESUME appdb")["login"]


@pytest.mark.skipif(not pfhelpers.is_root(), reason="needs root to act as pgfunnel's OS user")
def test_pgbouncer_name_over_tcp_or_other_uid_needs_password(proxy):
    pf = proxy()
    # Over TCP, as pgfunnel's OS user: not the unix socket, so no special login.
    res = pfhelpers.wire_as_run_user(pf.host, pf.port, "pgbouncer", "pgbouncer", "SHOW STATE")
    assert not res["login"] and res["sqlstate"] == "42501", res
    # Over the unix socket, as root (another uid).
    err, closed = pgwire.login_refused(pf.unix_socket_dir, pf.port, "pgbouncer", "pgbouncer")
    assert err.sqlstate == "42501" and closed, err


# ---------------------------------------------------------------- 3. log injection

FORGED = "2026-12-02 12:00:00.000 UTC [1] LOG FORGEDLINE"


def _raw_startup(pf, params, host=None):
    """Send a startup packet with raw byte values; return the first error (or None)."""
    body = struct.pack("!I", pgwire.PROTOCOL_3_0)
    for k, v in params.items():
        body += k.encode() + b"\0" + v + b"\0"
    conn = pgwire.Connection(pgwire.open_socket(host or pf.host, pf.port))
    try:
        conn.send(pgwire.message(b"", body + b"\0"))
        try:
            kind, payload = conn.read_message()
        except pgwire.ProtocolError:
            return None
        if kind == "E":
            return pgwire.PgError(pgwire.parse_fields(payload))
        if kind == "R" and struct.unpack("!I", payload[:4])[0] == 5:  # md5: answer wrong
            conn.send(pgwire.message(b"p", b"md5" + b"0" * 32 + b"\0"))
        return pgwire.expect_error(conn)
    finally:
        conn.sock.close()


@pytest.mark.parametrize("field", ["user", "database"])
def test_names_cannot_forge_log_lines(proxy, field):
    pf = proxy(params={"log_connections": "1", "log_disconnections": "1",
                       "log_pooler_errors": "1"})
    evil = ("x\n" + FORGED + "\r\n" + FORGED + "\x1b[2J\xff").encode("latin-1")
    params = {"user": b"postgres", "database": b"appdb"}
    params[field] = evil
    after = pf.log_len()
    err = _raw_startup(pf, params)
    assert err is not None and err.sqlstate in ("28P01", "3D000"), err
    pf.wait_for_log(r"FORGEDLINE", after=after)
    text = pf.log_text()
    assert not re.search(r"(?m)^2026-12-02 12:00:00\.000 UTC \[1\] LOG FORGEDLINE", text), text
    assert "x\\n2026-12-02 12:00:00.000 UTC [1] LOG FORGEDLINE\\r\\n" in text, text[-2000:]
    assert "\\x1b[2J\\xff" in text
    assert "\x1b" not in text
    assert pf.is_running()


def test_console_and_app_name_cannot_forge_log_lines(proxy):
    pf = proxy(params={"log_connections": "1"})
    after = pf.log_len()
    # A SET value is logged ("SET key = value"): a quoted value may hold a newline.
    pfhelpers.console(pf, "SET server_reset_query = 'DISCARD ALL\n%s'" % FORGED)
    # An invalid command echoes the text in the error; application_name travels with the client.
    with pytest.raises(psycopg.Error):
        pfhelpers.console(pf, "PAUSE x\n%s" % FORGED)
    with pfhelpers.proxy_connect(pf, "postgres", "appdb", "pg-super-secret",
                                 application_name="app\n" + FORGED) as conn:
        conn.execute("SELECT 1")
    pf.wait_for_log(r"FORGEDLINE", after=after)
    text = pf.log_text()
    assert not re.search(r"(?m)^2026-12-02 12:00:00\.000 UTC \[1\] LOG FORGEDLINE", text), text
    assert pf.is_running()


# ---------------------------------------------------------------- 5. no heap addresses in SHOW


def test_show_ptr_and_link_are_ids_not_addresses(proxy):
    """ptr is the connection's id in hex (stable, unique, not a heap address), link the
    linked connection's ptr, the same in SHOW CLIENTS, SERVERS and SOCKETS, and it is the value
    in the C-0x…/S-0x… log prefixes."""
    pf = proxy(params={"log_connections": "1"})
    with pfhelpers.proxy_connect(pf, "postgres", "appdb", "pg-super-secret") as conn:
        conn.execute("BEGIN")
        conn.execute("SELECT 1")  # linked while the transaction is open
        lists = {}
        for what in ("CLIENTS", "SERVERS", "SOCKETS", "ACTIVE_SOCKETS"):
            cols, rows = pfhelpers.console(pf, "SHOW " + what)
            lists[what] = pfhelpers.rows_as_dicts(cols, rows)
        for what, rows in lists.items():
            for r in rows:
                assert r["ptr"] == "0x%x" % r["id"], (what, r)
                assert r["link"] == "" or re.match(r"^0x[0-9a-f]+$", r["link"]), (what, r)
        mine = [c for c in lists["CLIENTS"] if c["database"] == "appdb"]
        assert len(mine) == 1, lists["CLIENTS"]
        by_ptr = {s["ptr"]: s for s in lists["SERVERS"]}
        assert by_ptr[mine[0]["link"]]["link"] == mine[0]["ptr"]
        socks = {r["ptr"]: r for r in lists["SOCKETS"]}
        assert socks[mine[0]["ptr"]]["link"] == mine[0]["link"]
        pf.wait_for_log(r"C-%s: appdb/postgres@127\.0\.0\.1:\d+ login attempt" %
                        re.escape(mine[0]["ptr"]))
        conn.execute("COMMIT")
