"""track_extra_parameters (PgBouncer 1.20+, default IntervalStyle): the listed parameters are
tracked per client like the built-in five (client_encoding, DateStyle, TimeZone,
standard_conforming_strings, application_name). A value the client sends at startup (as a
parameter of its own or as "-c name=value" in options) or sets with SET (Postgres reports it with
ParameterStatus) is set again on whichever server the client gets next.

Transaction pooling with two servers: a holder client keeps one server in a transaction so that
the tracked client is forced onto the other one, and back (checked with pg_backend_pid()).

Runs against PgBouncer 1.25.2 too (PGFUNNEL_BIN=/work/shared/anchors/pgbouncer-1.25.2): tests
marked beyond_pgbouncer() are what pgfunnel does beyond it.
"""

import socket
import struct

import pytest

import pfhelpers
import pgwire


UNDER_PGBOUNCER = pfhelpers.UNDER_PGBOUNCER
beyond_pgbouncer = pfhelpers.beyond_pgbouncer


ISTYLE_DEFAULT = "postgres"
# pgfunnel refuses a startup parameter with feature_not_supported; PgBouncer says 08P01.
REFUSED = "08P01" if UNDER_PGBOUNCER else "0A000"
Q = ("SELECT pg_backend_pid(), current_setting('IntervalStyle'),"
     " current_setting('default_transaction_read_only')")


def start(proxy, extra, pool_size=2, **params):
    p = {"pool_mode": "transaction", "default_pool_size": pool_size}
    if extra is not None:
        p["track_extra_parameters"] = extra
    p.update(params)
    return proxy(params=p)


def connect(pf, postgres, **kw):
    return pfhelpers.proxy_connect(pf, "alice", "appdb", postgres.passwords["alice"],
                                   autocommit=True, **kw)


def raw(pf, postgres, options):
    return pgwire.connect(pf.host, pf.port, "alice", "appdb", postgres.passwords["alice"],
                          options=options)


def row(conn):
    if isinstance(conn, pgwire.Connection):
        pid, istyle, ro = conn.simple_query(Q)[0]
        return int(pid), istyle, ro
    return conn.execute(Q).fetchone()


def hop(holder, client, rounds=4):
    """Runs Q on client `rounds` times, every other time while holder keeps a server in a
    transaction (so client must use the other one). Returns the rows; asserts that client ran on
    two different backends and never on the held one."""
    rows = []
    for i in range(rounds):
        if i % 2 == 0:
            holder.execute("BEGIN")
            held = holder.execute("SELECT pg_backend_pid()").fetchone()[0]
            r = row(client)
            assert r[0] != held
            holder.execute("COMMIT")
        else:
            r = row(client)
        rows.append(r)
    assert len({r[0] for r in rows}) == 2, rows
    return rows


# ---------------------------------------------------------------- restored across servers


def test_set_follows_client_across_servers(proxy, postgres):
    pf = start(proxy, None)  # the default: IntervalStyle
    with connect(pf, postgres) as a, connect(pf, postgres) as b, \
            connect(pf, postgres) as holder:
        a.execute("SET IntervalStyle = 'iso_8601'")
        assert a.info.parameter_status("IntervalStyle") == "iso_8601"
        for r in hop(holder, a, 6):
            assert r[1] == "iso_8601"
        # b, with the default, sees the default on both servers (both had a's value).
        for r in hop(holder, b, 4):
            assert r[1] == ISTYLE_DEFAULT
        assert holder.execute("SHOW IntervalStyle").fetchone()[0] == ISTYLE_DEFAULT
        # An interval renders per client.
        assert a.execute("SELECT '1 day'::interval::text").fetchone()[0] == "P1D"
        assert b.execute("SELECT '1 day'::interval::text").fetchone()[0] == "1 day"


@pytest.mark.parametrize("how", ["options", "parameter"])
def test_startup_value_follows_client(proxy, postgres, how):
    """The value from the startup packet: in options ("-c IntervalStyle=iso_8601", what libpq's
    PGOPTIONS sends) or as a startup parameter of its own."""
    pf = start(proxy, None)
    with connect(pf, postgres) as holder:
        if how == "options":
            a = connect(pf, postgres, options="-c IntervalStyle=iso_8601")
        else:
            a = raw(pf, postgres, {"IntervalStyle": "iso_8601"})
        with a:
            if how == "options":
                assert a.info.parameter_status("IntervalStyle") == "iso_8601"
            else:
                assert a.params["IntervalStyle"] == "iso_8601"
            for r in hop(holder, a, 6):
                assert r[1] == "iso_8601"
            assert holder.execute("SHOW IntervalStyle").fetchone()[0] == ISTYLE_DEFAULT


def test_second_tracked_parameter(proxy, postgres):
    """default_transaction_read_only (reported by Postgres 14+) next to IntervalStyle; names
    are matched case-insensitively (config, SET and startup)."""
    pf = start(proxy, "intervalstyle, DEFAULT_TRANSACTION_READ_ONLY")
    with connect(pf, postgres) as holder, connect(pf, postgres) as a, \
            connect(pf, postgres,
                    options="-c default_transaction_read_only=on") as s, \
            raw(pf, postgres, {"Default_Transaction_Read_Only": "on",
                               "intervalSTYLE": "sql_standard"}) as w:
        a.execute("SET default_transaction_read_only = on")
        a.execute("SET IntervalStyle = 'iso_8601'")
        for r in hop(holder, a, 6):
            assert r[1:] == ("iso_8601", "on")
        for r in hop(holder, s, 4):
            assert r[1:] == (ISTYLE_DEFAULT, "on")
        for r in hop(holder, w, 4):
            assert r[1:] == ("sql_standard", "on")
        # a write fails for the read-only clients, not for holder
        with pytest.raises(Exception, match="read-only"):
            a.execute("CREATE TEMP TABLE t_ro (x int)")
        assert row(holder)[1:] == (ISTYLE_DEFAULT, "off")
        holder.execute("BEGIN")
        holder.execute("CREATE TEMP TABLE t_rw (x int)")
        holder.execute("ROLLBACK")


def test_untracked_parameter_not_restored(proxy, postgres):
    """default_transaction_read_only when not listed: its SET stays on the server it ran on
    (others' sessions see it there; the client does not keep it on another server) — the
    difference tracking makes. One server, so that both clients share it."""
    pf = start(proxy, "IntervalStyle", pool_size=1)
    with connect(pf, postgres) as a, connect(pf, postgres) as b:
        a.execute("SET default_transaction_read_only = on")
        assert row(b)[2] == "on"  # not tracked: b inherits a's setting
        b.execute("RESET default_transaction_read_only")
        assert row(a)[2] == "off"  # and a lost its own
    pf2 = start(proxy, "IntervalStyle,default_transaction_read_only", pool_size=1)
    with connect(pf2, postgres) as a, connect(pf2, postgres) as b:
        a.execute("SET default_transaction_read_only = on")
        pa, pb = row(a), row(b)
        assert pa[0] == pb[0]
        assert (pa[2], pb[2]) == ("on", "off")
        assert row(a)[2] == "on"


def test_untracked_extra_startup_parameter_refused(proxy, postgres):
    """With track_extra_parameters empty, IntervalStyle is no longer accepted in the startup
    packet (PgBouncer's "unsupported startup parameter"), as a parameter or in options."""
    pf = start(proxy, "")
    pw = postgres.passwords["alice"]
    err, closed = pgwire.login_refused(pf.host, pf.port, "alice", "appdb", pw,
                                       options={"IntervalStyle": "iso_8601"})
    assert (err.severity, err.sqlstate, err.message) == (
        "FATAL", REFUSED, "unsupported startup parameter: IntervalStyle")
    assert closed
    err, closed = pgwire.login_refused(pf.host, pf.port, "alice", "appdb", pw,
                                       options={"options": "-c IntervalStyle=iso_8601"})
    assert (err.sqlstate, err.message) == (
        REFUSED, "unsupported startup parameter in options: IntervalStyle")
    # Not tracked: a SET stays on its server only (one server here, shared).
    with connect(pf, postgres) as a:
        a.execute("SET IntervalStyle = 'iso_8601'")
        assert row(a)[1] == "iso_8601"


@pytest.mark.parametrize("reset", ["RESET IntervalStyle", "RESET ALL", "DISCARD ALL",
                                   "SET IntervalStyle TO DEFAULT"])
def test_reset_goes_back_to_default(proxy, postgres, reset):
    pf = start(proxy, "IntervalStyle,default_transaction_read_only")
    with connect(pf, postgres) as holder, \
            connect(pf, postgres, options="-c IntervalStyle=sql_standard") as a:
        a.execute("SET IntervalStyle = 'iso_8601'")
        for r in hop(holder, a, 2):
            assert r[1] == "iso_8601"
        a.execute(reset)
        for r in hop(holder, a, 4):
            assert r[1] == ISTYLE_DEFAULT


def test_unreported_tracked_parameter(proxy, postgres):
    """search_path is not reported by Postgres 15: tracking it lets it through the startup
    packet, but it is never set on a server (PgBouncer: only reported parameters can be
    tracked), and no SET goes to the server for it on each transaction."""
    pf = start(proxy, "IntervalStyle,search_path")
    with connect(pf, postgres) as holder, \
            connect(pf, postgres, options="-c search_path=nowhere") as a, \
            raw(pf, postgres, {"search_path": "nowhere"}) as w:
        for conn in (a, w):
            for _ in range(2):
                holder.execute("BEGIN")
                holder.execute("SELECT 1")
                if conn is a:
                    sp = a.execute("SHOW search_path").fetchone()[0]
                else:
                    sp = w.simple_query("SHOW search_path")[0][0]
                holder.execute("COMMIT")
                assert sp == '"$user", public'
        # A client's own SET of it is not undone on the same server.
        a.execute("BEGIN")
        a.execute("SET search_path = elsewhere")
        a.execute("COMMIT")
        assert a.execute("SHOW search_path").fetchone()[0] in ("elsewhere", '"$user", public')


# ---------------------------------------------------------------- options


def test_options_rules(proxy, postgres):
    pf = start(proxy, None)
    pw = postgres.passwords["alice"]

    def refused(opts):
        err, closed = pgwire.login_refused(pf.host, pf.port, "alice", "appdb", pw,
                                           options={"options": opts})
        assert closed
        return err.sqlstate, err.message

    only_c = ("unsupported options startup parameter: only '-c config=val' and "
              "'--config=val' are allowed")
    assert refused("--IntervalStyle iso_8601") == (REFUSED, only_c)
    assert refused("-c IntervalStyle") == (REFUSED, only_c)
    assert refused("-c IntervalStyle=iso_8601 -B 10") == (REFUSED, only_c)
    assert refused("--") == (REFUSED, only_c)
    assert refused("-c geqo=off") == (REFUSED, "unsupported startup parameter in options: geqo")
    assert refused("--geqo=off") == (REFUSED, "unsupported startup parameter in options: geqo")
    # Several, built-in ones too, both forms, blanks escaped with a backslash.
    with raw(pf, postgres, {"options": " --IntervalStyle=iso_8601  -cDateStyle=SQL,\\ DMY "
                                       "-c application_name=opt\\ app"}) as w:
        assert w.params["IntervalStyle"] == "iso_8601"
        assert w.params["DateStyle"] == "SQL, DMY"
        assert w.params["application_name"] == "opt app"
        assert w.simple_query("SELECT current_setting('IntervalStyle'),"
                              " current_setting('DateStyle'),"
                              " current_setting('application_name')") == [
            ("iso_8601", "SQL, DMY", "opt app")]
    # An empty options is fine.
    with raw(pf, postgres, {"options": ""}) as w:
        assert w.simple_query("SELECT 1") == [("1",)]


def test_options_with_ignore_startup_parameters(proxy, postgres):
    """ignore_startup_parameters naming a parameter drops it from options; naming options
    drops every untracked one, while tracked ones still apply (PgBouncer's rules)."""
    pw = postgres.passwords["alice"]
    pf = start(proxy, None, ignore_startup_parameters="geqo")
    with raw(pf, postgres, {"options": "-c geqo=off -c IntervalStyle=iso_8601"}) as w:
        assert w.simple_query("SELECT current_setting('geqo'),"
                              " current_setting('IntervalStyle')") == [("on", "iso_8601")]
    err, _ = pgwire.login_refused(pf.host, pf.port, "alice", "appdb", pw,
                                  options={"options": "-c jit=off"})
    assert err.message == "unsupported startup parameter in options: jit"
    pf = start(proxy, None, ignore_startup_parameters="options")
    with raw(pf, postgres, {"options": "-c jit=off -c IntervalStyle=iso_8601"}) as w:
        assert w.simple_query("SELECT current_setting('jit'),"
                              " current_setting('IntervalStyle')") == [("on", "iso_8601")]
    # ... but not other forms of argument (PgBouncer 1.25.2 refuses them too).
    err, _ = pgwire.login_refused(pf.host, pf.port, "alice", "appdb", pw,
                                  options={"options": "-c geqo=off -B 10"})
    assert (err.sqlstate, err.message) == (
        REFUSED, "unsupported options startup parameter: only '-c config=val' and "
                 "'--config=val' are allowed")
    with connect(pf, postgres, options="-c IntervalStyle=sql_standard -c geqo=off") as a:
        assert a.execute("SELECT current_setting('IntervalStyle')").fetchone()[0] == \
            "sql_standard"


@beyond_pgbouncer("PgBouncer 1.25.2 takes a 3000-byte value and then never sets it "
                  "(too long to quote), so the client keeps the previous client's value")
def test_options_value_too_long(proxy, postgres):
    pf = start(proxy, None)
    err, closed = pgwire.login_refused(pf.host, pf.port, "alice", "appdb",
                                       postgres.passwords["alice"],
                                       options={"options": "-c IntervalStyle=" + "x" * 3000})
    assert closed
    assert (err.sqlstate, err.message) == (
        REFUSED, "unsupported options startup parameter: parameter too long")


@beyond_pgbouncer("PgBouncer 1.25.2 refuses options made of blanks only, and accepts an "
                  "empty name (-c =x)")
def test_options_blank_and_empty_name(proxy, postgres):
    pf = start(proxy, None)
    with raw(pf, postgres, {"options": "   "}) as w:
        assert w.simple_query("SELECT 1") == [("1",)]
    for opts in ("-c =x", "--=x"):
        err, _ = pgwire.login_refused(pf.host, pf.port, "alice", "appdb",
                                      postgres.passwords["alice"], options={"options": opts})
        assert err.sqlstate == REFUSED and "only '-c config=val'" in err.message


# ---------------------------------------------------------------- configuration


@beyond_pgbouncer("PgBouncer starts with any list (names go into SET unchecked)")
@pytest.mark.parametrize("value,words", [
    ("IntervalStyle,search_path;DROP TABLE t", "is not a parameter name"),
    ("options", "cannot be tracked"),
    ("a" * 64, "longer than 63"),
    (",".join("p%d" % i for i in range(33)), "more than 32"),
])
def test_bad_list_refused_at_start(pgfunnel, postgres, value, words):
    pf = pfhelpers.start_proxy(pgfunnel, postgres, params={"track_extra_parameters": value},
                               wait=False)
    assert pf.wait(15) != 0
    assert words in pf.all_output(), pf.all_output()
    assert not pfhelpers.port_accepts(pf.port)


def test_reload_keeps_tracked_set(proxy, postgres):
    """A restart parameter: RELOAD with another list changes nothing."""
    pf = start(proxy, "IntervalStyle")
    params = dict(pf.params)
    params["track_extra_parameters"] = "default_transaction_read_only"
    pf.write_ini(params=params)
    pfhelpers.console(pf, "RELOAD")
    with connect(pf, postgres) as holder, \
            connect(pf, postgres, options="-c IntervalStyle=iso_8601") as a:
        for r in hop(holder, a, 4):
            assert r[1] == "iso_8601"
        set_pid = a.execute("SELECT pg_backend_pid(), set_config("
                            "'default_transaction_read_only', 'on', false)").fetchone()[0]
        # not tracked (the new list was not taken): only the server it ran on has it
        rows = hop(holder, a, 4)
        assert [r[2] for r in rows if r[0] != set_pid] == ["off"] * 2


# ---------------------------------------------------------------- hostile


def startup_bytes(params):
    body = struct.pack("!I", 196608)
    for k, v in params.items():
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def test_hostile_startup_options(proxy, postgres):
    """Odd options values through a raw socket: each gets an error or works, and the pooler
    keeps serving."""
    pf = start(proxy, "IntervalStyle,default_transaction_read_only")
    pw = postgres.passwords["alice"]
    cases = [
        "-c", "-c =", "-c =x", "-", "\\", "-c IntervalStyle=\\", "-c a=b" * 200,
        "-c IntervalStyle=" + "\\" * 1500, " " * 5000, "-c " * 1000,
        "-c IntervalStyle=x';SELECT pg_sleep(10);--",
        "-c IntervalStyle=\x01\x7f\xff",
    ]
    for opts in cases:
        try:
            with raw(pf, postgres, {"options": opts}) as w:
                w.simple_query("SELECT 1")
        except (pgwire.PgError, pgwire.ProtocolError, OSError):
            pass
    # disconnects at each byte of a startup packet carrying options
    pkt = startup_bytes({"user": "alice", "database": "appdb",
                         "options": "-c IntervalStyle=iso_8601"
                                    " -c default_transaction_read_only=on"})
    for cut in range(0, len(pkt), 7):
        s = socket.create_connection((pf.host, pf.port), timeout=5)
        s.sendall(pkt[:cut])
        s.close()
    with connect(pf, postgres, options="-c IntervalStyle=iso_8601") as a, \
            connect(pf, postgres) as holder:
        for r in hop(holder, a, 4):
            assert r[1] == "iso_8601"
        for r in hop(a, holder, 2):
            assert r[1] == ISTYLE_DEFAULT


def test_bad_startup_value_does_not_leak(proxy, postgres):
    """A value the server rejects (SET fails): the client gets the error, and no other client
    is disturbed; a value crafted to end the literal stays a value."""
    pf = start(proxy, "IntervalStyle,default_transaction_read_only")
    with connect(pf, postgres) as holder:
        for bad in ("bogus", "x';SET default_transaction_read_only=on;--", "iso_8601\\"):
            try:
                with raw(pf, postgres, {"IntervalStyle": bad}) as w:
                    w.simple_query("SELECT 1")
            except (pgwire.PgError, pgwire.ProtocolError, OSError):
                pass
            with connect(pf, postgres) as b:
                for _ in range(2):
                    holder.execute("BEGIN")
                    holder.execute("SELECT 1")
                    r = row(b)
                    holder.execute("COMMIT")
                    assert r[1:] == (ISTYLE_DEFAULT, "off")
                    assert row(holder)[1:] == (ISTYLE_DEFAULT, "off")


@beyond_pgbouncer("PgBouncer closes the client without a word when the SET of its value fails")
def test_refused_value_is_told_to_the_client(proxy, postgres):
    """A tracked value the server refuses: the client is told the server's own error (as
    PostgreSQL tells it at login), not a bare disconnect."""
    pf = start(proxy, "IntervalStyle")
    w = raw(pf, postgres, {"IntervalStyle": "bogus"})
    try:
        w.send_query("SELECT 1")
        err = pgwire.expect_error(w, timeout=10)
        assert err is not None, "no error for a value the server refused"
        assert (err.severity, err.sqlstate) == ("FATAL", "22023"), err.fields
        assert "intervalstyle" in err.message.lower() and "bogus" in err.message, err.message
        assert pgwire.wait_closed(w, 5)
    finally:
        w.close()
    with connect(pf, postgres) as b:
        assert row(b)[1] == ISTYLE_DEFAULT


def test_many_parameter_changes(proxy, postgres):
    """A client flipping both tracked parameters on every transaction, two others watching."""
    pf = start(proxy, "IntervalStyle,default_transaction_read_only")
    styles = ["iso_8601", "sql_standard", "postgres_verbose", "postgres"]
    with connect(pf, postgres) as a, connect(pf, postgres) as b, \
            connect(pf, postgres) as holder:
        for i in range(12):
            st = styles[i % len(styles)]
            ro = "on" if i % 2 else "off"
            a.execute("SET IntervalStyle = %s" % st)
            a.execute("SET default_transaction_read_only = %s" % ro)
            holder.execute("BEGIN")
            holder.execute("SELECT 1")
            assert row(a)[1:] == (st, ro)
            assert row(b)[1:] == (ISTYLE_DEFAULT, "off")
            holder.execute("COMMIT")
            assert row(a)[1:] == (st, ro)
            assert row(holder)[1:] == (ISTYLE_DEFAULT, "off")


@pytest.mark.parametrize("end", ["ROLLBACK", "COMMIT"])
def test_set_local_and_rolled_back_set(proxy, postgres, end):
    """A SET undone by ROLLBACK, and SET LOCAL (undone at either end): Postgres reports the
    value going back, so the client keeps the default on every server."""
    pf = start(proxy, "IntervalStyle,default_transaction_read_only")
    with connect(pf, postgres) as holder, connect(pf, postgres) as a:
        a.execute("BEGIN")
        a.execute("SET IntervalStyle = 'iso_8601'" if end == "ROLLBACK"
                  else "SET LOCAL IntervalStyle = 'iso_8601'")
        a.execute("SET LOCAL default_transaction_read_only = on")
        assert a.execute("SHOW IntervalStyle").fetchone()[0] == "iso_8601"
        a.execute(end)
        for r in hop(holder, a, 4):
            assert r[1:] == (ISTYLE_DEFAULT, "off")


def test_client_gone_during_sync(proxy, postgres):
    """Clients that send a query and vanish while their parameters are being set on a server:
    the servers stay usable and nobody inherits their values."""
    pf = start(proxy, "IntervalStyle,default_transaction_read_only")
    pkt = startup_bytes({"user": "alice", "database": "appdb",
                         "options": "-c IntervalStyle=iso_8601"
                                    " -c default_transaction_read_only=on"})
    with connect(pf, postgres) as holder, connect(pf, postgres) as b:
        for i in range(20):
            with raw(pf, postgres, {"IntervalStyle": "sql_standard",
                                    "default_transaction_read_only": "on"}) as w:
                if i % 2:
                    holder.execute("BEGIN")
                    holder.execute("SELECT 1")
                w.send(pgwire.fe_query("SELECT pg_sleep(0.01)"))
                w.abort()
                if i % 2:
                    holder.execute("COMMIT")
            s = socket.create_connection((pf.host, pf.port), timeout=5)
            s.sendall(pkt)
            s.close()
        for r in hop(holder, b, 4):
            assert r[1:] == (ISTYLE_DEFAULT, "off")
        for r in hop(b, holder, 2):
            assert r[1:] == (ISTYLE_DEFAULT, "off")
