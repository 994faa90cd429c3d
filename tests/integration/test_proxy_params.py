"""Session parameters follow their client across servers (transaction pooling, issue 3), and
startup parameters pgfunnel does not know are refused unless ignored."""

import os

import pytest

import pfhelpers
import pgwire


def server_defaults(postgres):
    """What a fresh alice session on appdb sees, straight from Postgres."""
    with postgres.connect("alice", "appdb", autocommit=True) as conn:
        return {k: conn.execute("SHOW %s" % k).fetchone()[0]
                for k in ("TimeZone", "DateStyle", "IntervalStyle", "application_name",
                          "client_encoding", "standard_conforming_strings")}


@pytest.fixture
def one_server(proxy, postgres):
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 1})
    return pf, postgres.passwords["alice"]


def connect(pf, pw, **kw):
    return pfhelpers.proxy_connect(pf, "alice", "appdb", pw, autocommit=True, **kw)


def show(conn, name):
    return conn.execute("SHOW %s" % name).fetchone()[0]


def same_backend(a, b):
    pa = a.execute("SELECT pg_backend_pid()").fetchone()[0]
    pb = b.execute("SELECT pg_backend_pid()").fetchone()[0]
    return pa == pb


@pytest.mark.parametrize("name,value", [
    ("TimeZone", "Asia/Tokyo"),
    ("DateStyle", "SQL, DMY"),
    ("IntervalStyle", "sql_standard"),
    ("application_name", "set-by-a"),
    ("standard_conforming_strings", "off"),
])
def test_set_follows_client(one_server, postgres, name, value):
    pf, pw = one_server
    default = server_defaults(postgres)[name]
    assert default != value
    with connect(pf, pw) as a, connect(pf, pw) as b:
        assert same_backend(a, b)  # one server for both: pgfunnel must re-SET
        a.execute("SET %s = '%s'" % (name, value))
        for _ in range(3):
            assert show(b, name) == default
            assert show(a, name) == value
            assert b.info.parameter_status(name) == default
            assert a.info.parameter_status(name) == value
        # inside a transaction too
        with a.transaction():
            assert show(a, name) == value
        with b.transaction():
            assert show(b, name) == default
        # and after RESET, a is back to the default
        a.execute("RESET %s" % name)
        assert show(a, name) == default
        assert show(b, name) == default


def test_timezone_affects_results_per_client(one_server, postgres):
    pf, pw = one_server
    with connect(pf, pw) as a, connect(pf, pw) as b:
        a.execute("SET TimeZone = 'Asia/Tokyo'")
        b.execute("SET TimeZone = 'UTC'")
        q = "SELECT to_char('2026-01-01 00:00:00+00'::timestamptz, 'YYYY-MM-DD HH24:MI')"
        for _ in range(3):
            assert a.execute(q).fetchone()[0] == "2026-01-01 09:00"
            assert b.execute(q).fetchone()[0] == "2026-01-01 00:00"


def test_startup_parameters_follow_client(one_server, postgres):
    pf, pw = one_server
    with pgwire.connect(pf.host, pf.port, "alice", "appdb", pw,
                        options={"application_name": "app-A", "TimeZone": "Asia/Tokyo",
                                 "DateStyle": "German, DMY"}) as a, \
            pgwire.connect(pf.host, pf.port, "alice", "appdb", pw,
                           options={"application_name": "app-B",
                                    "client_encoding": "LATIN1"}) as b:
        assert a.params["application_name"] == "app-A"
        assert b.params["application_name"] == "app-B"
        assert a.params["TimeZone"] == "Asia/Tokyo"
        assert b.params["client_encoding"] == "LATIN1"
        default = server_defaults(postgres)
        q = ("SELECT current_setting('application_name'), current_setting('TimeZone'),"
             " current_setting('DateStyle'), current_setting('client_encoding'),"
             " pg_backend_pid()")
        for _ in range(3):
            ra = a.simple_query(q)[0]
            rb = b.simple_query(q)[0]
            assert ra[:4] == ("app-A", "Asia/Tokyo", "German, DMY", "UTF8")
            assert rb[:4] == ("app-B", default["TimeZone"], default["DateStyle"], "LATIN1")
            assert ra[4] == rb[4]
        # The server-side view (pg_stat_activity) names the client running right now.
        assert b.simple_query("SELECT application_name FROM pg_stat_activity"
                              " WHERE pid = pg_backend_pid()") == [("app-B",)]


def test_rewritten_value_is_not_set_again(proxy, postgres):
    """A value the server rewrites (an application_name from the startup packet, cut at 63
    bytes) becomes the client's effective value after the first sync: the next transactions on
    the same server send no SET (it was SET again at every attach, one extra round trip per
    transaction). Counted in PostgreSQL's own statement log, switched on for alice on the
    postgres database only."""
    marker = "long-app-%s" % os.urandom(4).hex()
    name = (marker + "-" + "x" * 100)[:100]
    postgres.psql("ALTER ROLE alice IN DATABASE postgres SET log_statement = 'all'")
    try:
        pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 1})
        pw = postgres.passwords["alice"]
        with pfhelpers.proxy_connect(pf, "alice", "postgres", pw, autocommit=True,
                                     application_name=name) as a:
            for _ in range(10):
                assert a.execute("SHOW application_name").fetchone()[0] == name[:63]
        syncs = [l for l in pfhelpers.read_text(postgres.logfile).splitlines()
                 if "statement: SET application_name='" in l and marker in l]
        # The first attach syncs the value the client asked for; the server reports it cut to
        # 63 bytes, which is what the client has from then on: no second SET.
        assert len(syncs) == 1, syncs
    finally:
        postgres.psql("ALTER ROLE alice IN DATABASE postgres RESET log_statement")


def test_unknown_startup_parameter_refused(proxy, postgres):
    pf = proxy()
    for name in ("extra_float_digits", "pf_no_such_param"):
        err, closed = pgwire.login_refused(pf.host, pf.port, "alice", "appdb",
                                           postgres.passwords["alice"], options={name: "2"})
        assert (err.severity, err.sqlstate, err.message) == (
            "FATAL", "0A000", "unsupported startup parameter: %s" % name)
        assert closed


def test_ignore_startup_parameters(proxy, postgres):
    pf = proxy(params={"ignore_startup_parameters": "extra_float_digits, search_path"})
    pw = postgres.passwords["alice"]
    with pgwire.connect(pf.host, pf.port, "alice", "appdb", pw,
                        options={"extra_float_digits": "2", "search_path": "x"}) as conn:
        assert conn.simple_query("SELECT 1") == [("1",)]
    err, _ = pgwire.login_refused(pf.host, pf.port, "alice", "appdb", pw,
                                  options={"geqo": "off"})
    assert (err.sqlstate, err.message) == ("0A000", "unsupported startup parameter: geqo")
    # psycopg itself does not send extra_float_digits; pgjdbc does. psql works as is.
    res = pfhelpers.psql("SELECT 2", port=pf.port, user="alice", dbname="appdb", password=pw)
    assert res.stdout == "2\n", res.stderr
