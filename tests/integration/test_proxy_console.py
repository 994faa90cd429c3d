"""The admin console (issue 3): SHOW POOLS / CLIENTS / SERVERS / VERSION / HELP, access rights,
errors. Column lists are those of /work/shared/pgbouncer-compat.md (PgBouncer 1.25's code)."""

import psycopg
import pytest

import pfhelpers
import pgwire

POOLS_COLUMNS = [
    "database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req",
    "cl_waiting_cancel_req", "sv_active", "sv_active_cancel", "sv_being_canceled", "sv_idle",
    "sv_used", "sv_tested", "sv_login", "maxwait", "maxwait_us", "pool_mode",
    "load_balance_hosts"]
SOCKET_COLUMNS = [
    "type", "user", "database", "replication", "state", "addr", "port", "local_addr",
    "local_port", "connect_time", "request_time", "wait", "wait_us", "close_needed", "ptr",
    "link", "remote_pid", "tls", "application_name", "prepared_statements", "id"]

ADMIN_PW = "pg-super-secret"


def console_conn(pf, user="postgres", password=ADMIN_PW, dbname="pgbouncer"):
    return pfhelpers.proxy_connect(pf, user, dbname, password, autocommit=True,
                                   prepare_threshold=None)


def show(conn, what):
    cur = conn.execute("SHOW " + what)
    return [d.name for d in cur.description], cur.fetchall()


@pytest.mark.parametrize("dbname", ["pgbouncer", "pgfunnel"])
def test_column_lists(proxy, postgres, version, dbname):
    pf = proxy()
    with pfhelpers.proxy_connect(pf, "alice", "appdb", postgres.passwords["alice"]) as c:
        c.execute("SELECT 1")
        with console_conn(pf, dbname=dbname) as conn:
            cols, _ = show(conn, "POOLS")
            assert cols == POOLS_COLUMNS
            cols, rows = show(conn, "CLIENTS")
            assert cols == SOCKET_COLUMNS
            assert any(r[1] == "alice" for r in rows)
            cols, rows = show(conn, "SERVERS")
            assert cols == SOCKET_COLUMNS
            assert any(r[1] == "alice" for r in rows)
            cols, rows = show(conn, "VERSION")
            assert cols == ["version"]
            assert rows == [("pgfunnel %s" % version,)]
            # command words are case-insensitive; the tag is SHOW
            cur = conn.execute("show pools")
            assert cur.statusmessage == "SHOW"
            assert [d.name for d in cur.description] == POOLS_COLUMNS


def find(rows, **match):
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


def test_values_match_reality(proxy, postgres):
    role, pw = pfhelpers.new_role(postgres, "pcon")
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 1}, userlist={role: pw})
    holder = pgwire.connect(pf.host, pf.port, role, "appdb", pw,
                            options={"application_name": "holder"})
    holder.simple_query("BEGIN")
    backend_pid = int(holder.simple_query("SELECT pg_backend_pid()")[0][0])
    waiter = pgwire.connect(pf.host, pf.port, role, "appdb", pw,
                            options={"application_name": "waiter"})
    waiter.send_query("SELECT 'served'")
    with console_conn(pf) as conn:
        def pool():
            cols, rows = show(conn, "POOLS")
            return pfhelpers.find_pool(pfhelpers.rows_as_dicts(cols, rows), "appdb", role)

        # The waiter is counted, and pgfunnel measures its wait.
        p = pfhelpers.wait_until(
            lambda: (lambda p: p if p and p["cl_waiting"] == 1 and
                     pfhelpers.pool_wait_seconds(p) > 0 else None)(pool()),
            5, "the waiter in cl_waiting with a maxwait", lambda: pool())
        assert (p["cl_active"], p["cl_waiting"], p["sv_active"], p["sv_idle"], p["sv_used"],
                p["sv_login"]) == (1, 1, 1, 0, 0, 0)
        assert p["pool_mode"] == "transaction"
        assert p["load_balance_hosts"] is None
        assert 0 < pfhelpers.pool_wait_seconds(p) < 30, p

        cols, rows = show(conn, "CLIENTS")
        clients = find(pfhelpers.rows_as_dicts(cols, rows), user=role)
        cols, rows = show(conn, "SERVERS")
        servers = find(pfhelpers.rows_as_dicts(cols, rows), user=role)
        assert len(clients) == 2 and len(servers) == 1
        h = find(clients, application_name="holder")[0]
        w = find(clients, application_name="waiter")[0]
        s = servers[0]
        assert (h["type"], h["database"], h["state"], h["addr"], h["port"]) == (
            "C", "appdb", "active", "127.0.0.1", holder.sock.getsockname()[1])
        assert h["local_port"] == pf.port
        assert (w["type"], w["state"], w["port"]) == ("C", "waiting", waiter.sock.getsockname()[1])
        assert not w["link"]
        assert (s["type"], s["database"], s["state"], s["addr"], s["port"]) == (
            "S", "appdb", "active", "127.0.0.1", postgres.port)
        assert s["remote_pid"] == backend_pid
        assert s["link"] == h["ptr"] and h["link"] == s["ptr"]
        assert s["application_name"] == "holder"
        assert len({h["id"], w["id"], s["id"]}) == 3
        assert h["connect_time"].endswith(" UTC")

        # The holder commits: the waiter gets the server, then it goes back to the pool.
        holder.simple_query("COMMIT")
        waiter.sock.settimeout(5)
        assert waiter.read_result() == [("served",)]
        p = pool()
        assert (p["cl_active"], p["cl_waiting"], p["sv_active"], p["sv_idle"]) == (2, 0, 0, 1)
        cols, rows = show(conn, "CLIENTS")
        clients = find(pfhelpers.rows_as_dicts(cols, rows), user=role)
        assert sorted(c["state"] for c in clients) == ["idle", "idle"]
        cols, rows = show(conn, "SERVERS")
        servers = find(pfhelpers.rows_as_dicts(cols, rows), user=role)
        assert [(x["state"], x["remote_pid"]) for x in servers] == [("idle", backend_pid)]
    holder.close()
    waiter.close()


def test_unlinked_values_like_pgbouncer(proxy, postgres):
    """PgBouncer writes '' (not NULL) for link and tls when there is none, and replication
    'none' for a normal connection."""
    pf = proxy(params={"pool_mode": "transaction"})
    with pfhelpers.proxy_connect(pf, "alice", "appdb", postgres.passwords["alice"]) as c:
        c.execute("SELECT 1")
        c.commit()
        with console_conn(pf) as conn:
            for what in ("CLIENTS", "SERVERS"):
                cols, rows = show(conn, what)
                r = find(pfhelpers.rows_as_dicts(cols, rows), user="alice")[0]
                assert (r["link"], r["tls"], r["replication"]) == ("", "", "none"), (what, r)


def test_stats_user_may_show(proxy, postgres):
    pf = proxy(params={"stats_users": "bob"})
    with console_conn(pf, "bob", postgres.passwords["bob"]) as conn:
        for what in ("POOLS", "CLIENTS", "SERVERS", "VERSION"):
            cols, rows = show(conn, what)
            assert cols
        cols, rows = show(conn, "CLIENTS")
        assert [r["database"] for r in pfhelpers.rows_as_dicts(cols, rows) if r["user"] == "bob"] \
            in (["pgbouncer"], ["pgfunnel"])


@pytest.mark.parametrize("dbname", ["pgbouncer", "pgfunnel"])
def test_other_user_refused(proxy, postgres, dbname):
    pf = proxy(params={"stats_users": "bob"})
    err, closed = pgwire.login_refused(pf.host, pf.port, "alice", dbname,
                                       postgres.passwords["alice"])
    assert (err.severity, err.sqlstate) == ("FATAL", "42501")
    assert closed


def test_wrong_password_on_console(proxy, postgres):
    pf = proxy()
    err, closed = pgwire.login_refused(pf.host, pf.port, "postgres", "pgbouncer", "wrong")
    assert (err.severity, err.sqlstate, err.message) == (
        "FATAL", "28P01", 'password authentication failed for user "postgres"')
    assert closed


def test_unknown_command(proxy):
    pf = proxy()
    with console_conn(pf) as conn:
        with pytest.raises(psycopg.errors.SyntaxError) as exc:
            conn.execute("FROBNICATE")
        assert exc.value.sqlstate == "42601"
        hint = exc.value.diag.message_hint or ""
        for word in ("SHOW", "POOLS", "CLIENTS", "SERVERS"):
            assert word in hint.upper(), hint
        with pytest.raises(psycopg.errors.SyntaxError):
            conn.execute("SHOW NO_SUCH_THING")
        # still usable
        assert show(conn, "VERSION")[0] == ["version"]


def test_show_help_is_a_notice(proxy):
    pf = proxy()
    notices = []
    with console_conn(pf) as conn:
        conn.add_notice_handler(lambda d: notices.append((d.severity, d.message_primary,
                                                          d.message_detail or "")))
        cur = conn.execute("SHOW HELP")
        assert cur.statusmessage == "SHOW"
    # As PgBouncer: message "Console usage", the commands in the detail.
    assert len(notices) == 1
    assert notices[0][:2] == ("NOTICE", "Console usage")
    detail = notices[0][2].upper()
    for word in ("SHOW HELP", "POOLS", "CLIENTS", "SERVERS", "VERSION"):
        assert word in detail, detail


def test_extended_protocol_refused(proxy):
    pf = proxy()
    with pfhelpers.proxy_connect(pf, "postgres", "pgbouncer", ADMIN_PW, autocommit=True) as conn:
        with pytest.raises(psycopg.OperationalError) as exc:
            conn.execute("SHOW VERSION", prepare=True)
        assert "extended query protocol not supported by admin console" in str(exc.value)
