"""Every SHOW command of the admin console: PgBouncer's exact column names in order
(../shared/pgbouncer-compat.md) and values checked against the live connections."""

import os
import re
import subprocess
import threading
import time

import psycopg
import pytest

import pfhelpers

PGBOUNCER_BIN = "/usr/sbin/pgbouncer"

SOCKET_COLS = ["type", "user", "database", "replication", "state", "addr", "port", "local_addr",
               "local_port", "connect_time", "request_time", "wait", "wait_us", "close_needed",
               "ptr", "link", "remote_pid", "tls", "application_name", "prepared_statements",
               "id"]
DEBUG_COLS = ["recv_pos", "pkt_pos", "pkt_remain", "send_pos", "send_remain", "pkt_avail",
              "send_avail"]

COLUMNS = {
    "POOLS": ["database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req",
              "cl_waiting_cancel_req", "sv_active", "sv_active_cancel", "sv_being_canceled",
              "sv_idle", "sv_used", "sv_tested", "sv_login", "maxwait", "maxwait_us",
              "pool_mode", "load_balance_hosts"],
    "STATS": ["database", "total_server_assignment_count", "total_xact_count",
              "total_query_count", "total_received", "total_sent", "total_xact_time",
              "total_query_time", "total_wait_time", "total_client_parse_count",
              "total_server_parse_count", "total_bind_count", "avg_server_assignment_count",
              "avg_xact_count", "avg_query_count", "avg_recv", "avg_sent", "avg_xact_time",
              "avg_query_time", "avg_wait_time", "avg_client_parse_count",
              "avg_server_parse_count", "avg_bind_count"],
    "STATS_TOTALS": ["database", "server_assignment_count", "xact_count", "query_count",
                     "bytes_received", "bytes_sent", "xact_time", "query_time", "wait_time",
                     "client_parse_count", "server_parse_count", "bind_count"],
    "STATS_AVERAGES": ["database", "server_assignment_count", "xact_count", "query_count",
                       "bytes_received", "bytes_sent", "xact_time", "query_time", "wait_time",
                       "avg_client_parse_count", "avg_server_parse_count", "avg_bind_count"],
    "TOTALS": ["name", "value"],
    "CLIENTS": SOCKET_COLS,
    "SERVERS": SOCKET_COLS,
    "SOCKETS": SOCKET_COLS + DEBUG_COLS,
    "ACTIVE_SOCKETS": SOCKET_COLS + DEBUG_COLS,
    "DATABASES": ["name", "host", "port", "database", "force_user", "pool_size", "min_pool_size",
                  "reserve_pool_size", "server_lifetime", "pool_mode", "load_balance_hosts",
                  "max_connections", "current_connections", "max_client_connections",
                  "current_client_connections", "paused", "disabled"],
    "USERS": ["name", "pool_size", "reserve_pool_size", "pool_mode", "max_user_connections",
              "current_connections", "max_user_client_connections",
              "current_client_connections"],
    "CONFIG": ["key", "value", "default", "changeable"],
    "LISTS": ["list", "items"],
    "MEM": ["name", "size", "used", "free", "memtotal"],
    "STATE": ["key", "value"],
    "VERSION": ["version"],
    "PEERS": ["peer_id", "host", "port", "pool_size"],
    "PEER_POOLS": ["peer_id", "cl_active_cancel_req", "cl_waiting_cancel_req",
                   "sv_active_cancel", "sv_login"],
    "DNS_HOSTS": ["hostname", "ttl", "addrs"],
    "DNS_ZONES": ["zonename", "serial", "count"],
    "FDS": ["fd", "task", "user", "database", "addr", "port", "cancel", "link",
            "client_encoding", "std_strings", "datestyle", "timezone", "password",
            "scram_client_key", "scram_server_key"],
}

LISTS_ROWS = ["databases", "users", "peers", "pools", "peer_pools", "free_clients",
              "used_clients", "login_clients", "free_servers", "used_servers", "dns_names",
              "dns_zones", "dns_queries", "dns_pending"]

COUNTERS = ["server_assignment_count", "xact_count", "query_count", "client_bytes",
            "server_bytes", "xact_time", "query_time", "wait_time", "ps_client_parse_count",
            "ps_server_parse_count", "ps_bind_count"]

TIME_RE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$")
PTR_RE = re.compile(r"^0x[0-9a-f]+$")


class Console:
    """One admin console connection; show() runs a command with the simple query protocol."""

    def __init__(self, pf, user="postgres", password="pg-super-secret"):
        self.conn = pfhelpers.proxy_connect(pf, user, "pgbouncer", password, autocommit=True,
                                            prepare_threshold=None)
        self.notices = []
        # a Diagnostic is only readable inside the handler
        self.conn.add_notice_handler(lambda d: self.notices.append(
            {"severity": d.severity, "sqlstate": d.sqlstate, "message": d.message_primary,
             "detail": d.message_detail}))

    def raw(self, sql):
        """(column names, type oids, rows as text) through libpq's PQexec."""
        res = self.conn.pgconn.exec_(sql.encode())
        if res.status == psycopg.pq.ExecStatus.FATAL_ERROR:
            raise psycopg.errors.lookup(res.error_field(psycopg.pq.DiagnosticField.SQLSTATE)
                                        .decode())(res.error_message.decode())
        cols = [res.fname(i).decode() for i in range(res.nfields)]
        oids = [res.ftype(i) for i in range(res.nfields)]
        rows = []
        for r in range(res.ntuples):
            row = []
            for i in range(res.nfields):
                v = res.get_value(r, i)
                row.append(None if v is None else v.decode())
            rows.append(row)
        return cols, oids, rows

    def show(self, what):
        """Rows of SHOW what as dicts (values typed by psycopg), via the cursor."""
        cur = self.conn.execute("SHOW " + what)
        cols = [d.name for d in cur.description]
        return cols, pfhelpers.rows_as_dicts(cols, cur.fetchall())

    def rows(self, what):
        return self.show(what)[1]

    def close(self):
        self.conn.close()


@pytest.fixture
def console_factory():
    opened = []

    def make(pf, **kw):
        c = Console(pf, **kw)
        opened.append(c)
        return c

    yield make
    for c in opened:
        try:
            c.close()
        except Exception:  # noqa: BLE001
            pass


def pool_row(con, db, user):
    """The SHOW POOLS row of db/user read on the console session con (which must exist)."""
    row = pfhelpers.find_pool(con.rows("POOLS"), db, user)
    assert row is not None, "no pool %s/%s" % (db, user)
    return row


def stats_row(con, what, db):
    rows = [r for r in con.rows(what) if r["database"] == db]
    assert len(rows) == 1, rows
    return rows[0]


# ------------------------------------------------------------------ columns of every command


@pytest.mark.parametrize("what", sorted(COLUMNS))
def test_columns_exact(proxy, console_factory, what):
    pf = proxy()
    con = console_factory(pf)
    cols, oids, rows = con.raw("SHOW %s" % what)
    assert cols == COLUMNS[what]
    # lower case works too, and so does a trailing semicolon
    cols2, _, _ = con.raw("show %s;" % what.lower())
    assert cols2 == COLUMNS[what]


def test_column_types_follow_pgbouncer(proxy, console_factory):
    pf = proxy()
    con = console_factory(pf)
    TEXT, INT4, INT8, NUMERIC = 25, 23, 20, 1700
    _, oids, _ = con.raw("SHOW STATS")
    assert oids == [TEXT] + [NUMERIC] * 22
    for what in ("STATS_TOTALS", "STATS_AVERAGES"):
        _, oids, _ = con.raw("SHOW " + what)
        assert oids == [TEXT] + [NUMERIC] * 11
    _, oids, _ = con.raw("SHOW TOTALS")
    assert oids == [TEXT, NUMERIC]
    _, oids, _ = con.raw("SHOW POOLS")
    assert oids == [TEXT, TEXT] + [INT4] * 13 + [TEXT, TEXT]
    _, oids, _ = con.raw("SHOW DATABASES")
    assert oids == [TEXT, TEXT, INT4, TEXT, TEXT, INT4, INT4, INT4, INT4, TEXT, TEXT] + [INT4] * 6
    _, oids, _ = con.raw("SHOW USERS")
    assert oids == [TEXT] * 4 + [INT4] * 4
    _, oids, _ = con.raw("SHOW CLIENTS")
    assert oids[SOCKET_COLS.index("connect_time")] == TEXT
    assert oids[SOCKET_COLS.index("ptr")] == TEXT
    assert oids[SOCKET_COLS.index("port")] == INT4
    assert oids[SOCKET_COLS.index("id")] == INT8


def test_show_help_notice(proxy, console_factory):
    pf = proxy()
    con = console_factory(pf)
    cols, _, rows = con.raw("SHOW HELP")
    assert cols == [] and rows == []
    assert len(con.notices) == 1
    n = con.notices[0]
    assert n["severity"] == "NOTICE" and n["sqlstate"] == "00000"
    assert n["message"] == "Console usage"
    detail = n["detail"]
    for what in COLUMNS:
        assert re.search(r"\b%s\b" % what, detail), what
    for cmd in ("SET key = arg", "RELOAD", "PAUSE [<db>]", "RESUME [<db>]", "DISABLE <db>",
                "ENABLE <db>", "RECONNECT [<db>]", "KILL [<db>]", "KILL_CLIENT <client_id>",
                "SUSPEND", "SHUTDOWN", "SHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS",
                "WAIT_CLOSE [<db>]"):
        assert "\t" + cmd + "\n" in detail + "\n", cmd


def test_psql_simple_protocol(proxy, postgres):
    pf = proxy()
    res = pfhelpers.psql("SHOW VERSION", port=pf.port, dbname="pgbouncer",
                         password=postgres.passwords["postgres"], check=True)
    assert res.stdout.strip() == "pgfunnel %s" % pfhelpers.project_version()
    res = pfhelpers.psql("SHOW STATE", port=pf.port, dbname="pgbouncer",
                         password=postgres.passwords["postgres"], check=True)
    assert res.stdout.split() == ["active|yes", "paused|no", "suspended|no"]
    res = pfhelpers.psql("SHOW HELP", port=pf.port, dbname="pgbouncer",
                         password=postgres.passwords["postgres"], check=True)
    assert "NOTICE:  Console usage" in res.stderr
    assert "SHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS" in res.stderr


# ------------------------------------------------------------------ values against reality


def test_active_clients_and_servers_link_to_each_other(proxy, postgres, console_factory):
    role, pw = pfhelpers.new_role(postgres, "shw")
    pf = proxy(userlist={role: pw})
    con = console_factory(pf)
    n = 3
    conns = [pfhelpers.proxy_connect(pf, role, "appdb", pw, prepare_threshold=None,
                                     application_name="app%d" % i) for i in range(n)]
    try:
        pids = []
        for c in conns:  # a transaction left open on each
            pids.append(c.execute("SELECT pg_backend_pid()").fetchone()[0])
        p = pool_row(con, "appdb", role)
        assert (p["cl_active"], p["cl_waiting"], p["sv_active"], p["sv_idle"], p["sv_used"],
                p["sv_login"]) == (n, 0, n, 0, 0, 0)
        assert (p["maxwait"], p["maxwait_us"], p["pool_mode"]) == (0, 0, "session")
        assert p["load_balance_hosts"] is None

        clients = [r for r in con.rows("CLIENTS") if r["user"] == role]
        servers = [r for r in con.rows("SERVERS") if r["user"] == role]
        assert len(clients) == n and len(servers) == n
        by_ptr = {s["ptr"]: s for s in servers}
        for cl in clients:
            assert cl["type"] == "C" and cl["state"] == "active" and cl["database"] == "appdb"
            assert cl["replication"] == "none"
            assert cl["addr"] == "127.0.0.1" and cl["local_addr"] == "127.0.0.1"
            assert cl["local_port"] == pf.port and cl["port"] > 0
            assert TIME_RE.match(cl["connect_time"]) and TIME_RE.match(cl["request_time"])
            assert PTR_RE.match(cl["ptr"]) and cl["link"] in by_ptr
            assert by_ptr[cl["link"]]["link"] == cl["ptr"]
            assert (cl["wait"], cl["wait_us"], cl["close_needed"], cl["remote_pid"]) == (0, 0, 0, 0)
            assert cl["tls"] == ""
        assert sorted(c["application_name"] for c in clients) == ["app0", "app1", "app2"]
        assert sorted(s["remote_pid"] for s in servers) == sorted(pids)
        for s in servers:
            assert s["type"] == "S" and s["state"] == "active" and s["database"] == "appdb"
            assert s["port"] == postgres.port and PTR_RE.match(s["ptr"])
        ids = [r["id"] for r in clients + servers]
        assert len(set(ids)) == len(ids) and all(i > 0 for i in ids)

        # the same rows in SOCKETS, with the PgBouncer debug state names
        socks = [r for r in con.rows("SOCKETS") if r["user"] == role]
        assert sorted(r["state"] for r in socks) == ["cl_active"] * n + ["sv_active"] * n
        assert {r["ptr"] for r in socks} == {r["ptr"] for r in clients + servers}
        for r in socks:
            for k in DEBUG_COLS:
                assert isinstance(r[k], int) and r[k] >= 0
        # nothing is buffered in an idle-in-transaction session
        assert [r for r in con.rows("ACTIVE_SOCKETS") if r["user"] == role] == []

        # SHOW DATABASES / USERS counts
        db = [r for r in con.rows("DATABASES") if r["name"] == "appdb"][0]
        assert db["current_connections"] == n and db["current_client_connections"] == n
        u = [r for r in con.rows("USERS") if r["name"] == role][0]
        assert u["current_connections"] == n and u["current_client_connections"] == n
        assert (u["pool_size"], u["reserve_pool_size"], u["pool_mode"]) == ("", "", None)
    finally:
        for c in conns:
            c.rollback()
            c.close()
    # clients gone: their servers go idle, released back to the pool
    p = pfhelpers.wait_until(lambda: (lambda p: p if p["cl_active"] == 0 else None)(
        pool_row(con, "appdb", role)), 5, "the clients gone from SHOW POOLS")
    assert (p["cl_active"], p["sv_active"], p["sv_idle"] + p["sv_used"] + p["sv_tested"]) == (0, 0, n)
    servers = [r for r in con.rows("SERVERS") if r["user"] == role]
    assert all(s["link"] == "" for s in servers)


def test_idle_client_in_transaction_mode(proxy, postgres, console_factory):
    role, pw = pfhelpers.new_role(postgres, "shi")
    pf = proxy(params={"pool_mode": "transaction"}, userlist={role: pw})
    con = console_factory(pf)
    with pfhelpers.proxy_connect(pf, role, "appdb", pw, autocommit=True,
                                 prepare_threshold=None) as c:
        c.execute("SELECT 1")
        cl = [r for r in con.rows("CLIENTS") if r["user"] == role]
        assert len(cl) == 1 and cl[0]["state"] == "idle" and cl[0]["link"] == "", cl
        p = pool_row(con, "appdb", role)
        assert (p["cl_active"], p["sv_active"], p["pool_mode"]) == (1, 0, "transaction")
        sv = [r for r in con.rows("SERVERS") if r["user"] == role]
        # (the pool may have opened a second server while the first one logged in)
        assert 1 <= len(sv) <= 2, sv
        assert all(r["state"] in ("idle", "used", "new") and r["link"] == "" for r in sv), sv
        assert [r["state"] for r in sv].count("new") <= 1, sv
    # the console's own client is listed in the console pool
    me = [r for r in con.rows("CLIENTS") if r["database"] == "pgfunnel"]
    assert len(me) == 1 and me[0]["user"] == "postgres" and me[0]["state"] == "idle"


def test_waiting_client_and_maxwait(proxy, postgres, console_factory):
    role, pw = pfhelpers.new_role(postgres, "shwt")
    pf = proxy(params={"default_pool_size": 1, "reserve_pool_size": 0,
                       "query_wait_timeout": 30}, userlist={role: pw})
    con = console_factory(pf)
    holder = pfhelpers.proxy_connect(pf, role, "appdb", pw, prepare_threshold=None)
    waiter = pfhelpers.proxy_connect(pf, role, "appdb", pw, autocommit=True,
                                     prepare_threshold=None)
    result = []
    try:
        holder.execute("SELECT 1")  # holds the only server (session mode)
        t = threading.Thread(target=lambda: result.append(
            waiter.execute("SELECT 42").fetchone()[0]))
        t.start()
        # pgfunnel measures the wait: let it reach a second
        p = pfhelpers.wait_until(lambda: (lambda p: p if p["cl_waiting"] == 1 and
                                          p["maxwait"] >= 1 else None)(
            pool_row(con, "appdb", role)), 6, "a client waiting for 1 s in SHOW POOLS",
            lambda: pool_row(con, "appdb", role))
        assert (p["cl_active"], p["cl_waiting"], p["sv_active"]) == (1, 1, 1)
        assert p["maxwait"] >= 1 and 0 <= p["maxwait_us"] < 1000000
        waiting = [r for r in con.rows("CLIENTS") if r["user"] == role and r["state"] == "waiting"]
        assert len(waiting) == 1
        w = waiting[0]
        assert w["link"] == "" and w["wait"] >= 1 and 0 <= w["wait_us"] < 1000000
        # the waiting client's wait is the pool's maxwait (same instant, within a second)
        assert abs((w["wait"] + w["wait_us"] / 1e6) - (p["maxwait"] + p["maxwait_us"] / 1e6)) < 1
        active = [r for r in con.rows("CLIENTS") if r["user"] == role and r["state"] == "active"]
        assert len(active) == 1 and active[0]["wait"] == 0
        holder.rollback()
        holder.close()
        t.join(10)
        assert result == [42]
        p = pool_row(con, "appdb", role)
        assert (p["cl_waiting"], p["maxwait"], p["maxwait_us"]) == (0, 0, 0)
    finally:
        holder.close()
        waiter.close()


def test_stats_totals_deltas(proxy, postgres, console_factory):
    role, pw = pfhelpers.new_role(postgres, "shst")
    pf = proxy(params={"pool_mode": "transaction"}, userlist={role: pw})
    con = console_factory(pf)
    k = 7
    with pfhelpers.proxy_connect(pf, role, "appdb", pw, autocommit=True,
                                 prepare_threshold=None) as c:
        c.execute("SELECT 1")
        before = stats_row(con, "STATS_TOTALS", "appdb")
        tot_before = dict((r["name"], r["value"]) for r in con.rows("TOTALS"))
        for i in range(k):
            assert c.execute("SELECT %d" % i).fetchone()[0] == i
        after = stats_row(con, "STATS_TOTALS", "appdb")
        tot_after = dict((r["name"], r["value"]) for r in con.rows("TOTALS"))
        # and transactions of three statements each
        with c.transaction():
            c.execute("SELECT 1")
            c.execute("SELECT 2")
        after2 = stats_row(con, "STATS_TOTALS", "appdb")
        stats = stats_row(con, "STATS", "appdb")
    assert after["xact_count"] - before["xact_count"] == k
    assert after["query_count"] - before["query_count"] == k
    assert after["server_assignment_count"] - before["server_assignment_count"] == k
    assert after["bytes_received"] > before["bytes_received"]
    assert after["bytes_sent"] > before["bytes_sent"]
    assert after["query_time"] >= before["query_time"]
    # BEGIN; SELECT 1; SELECT 2; COMMIT: one transaction, four queries
    assert after2["xact_count"] - after["xact_count"] == 1
    assert after2["query_count"] - after["query_count"] == 4
    # SHOW STATS carries the same totals under total_* names
    for name in ("server_assignment_count", "xact_count", "query_count"):
        assert stats["total_" + name] == after2[name]
    assert stats["total_received"] == after2["bytes_received"]
    assert stats["total_sent"] == after2["bytes_sent"]
    # SHOW TOTALS: the sum over databases; the console's own traffic is not pooled
    assert list(tot_after) == ["total_" + n for n in COUNTERS] + ["avg_" + n for n in COUNTERS]
    assert tot_after["total_xact_count"] - tot_before["total_xact_count"] == k
    assert tot_after["total_query_count"] - tot_before["total_query_count"] == k
    assert tot_after["total_client_bytes"] > tot_before["total_client_bytes"]


def test_stats_averages_are_db_stats_avg(proxy, postgres, console_factory):
    role, pw = pfhelpers.new_role(postgres, "shav")
    pf = proxy(params={"pool_mode": "transaction", "stats_period": 1}, userlist={role: pw})
    con = console_factory(pf)
    with pfhelpers.proxy_connect(pf, role, "appdb", pw, autocommit=True,
                                 prepare_threshold=None) as c:
        # about 50 queries/s for several periods
        deadline = time.time() + 3.5
        while time.time() < deadline:
            c.execute("SELECT 1")
            time.sleep(0.02)
        avg = stats_row(con, "STATS_AVERAGES", "appdb")
        stats = stats_row(con, "STATS", "appdb")
    assert 5 <= avg["xact_count"] <= 100, avg
    assert avg["query_count"] == avg["xact_count"]
    for n in ("server_assignment_count", "xact_count", "query_count", "xact_time",
              "query_time", "wait_time"):
        assert stats["avg_" + n] == avg[n] or abs(stats["avg_" + n] - avg[n]) <= avg[n], n
    assert stats["avg_recv"] > 0 and stats["avg_sent"] > 0


def test_show_config_lists_every_parameter(proxy, console_factory, source_root):
    pf = proxy(params={"default_pool_size": 17})
    con = console_factory(pf)
    with open(os.path.join(source_root, "src", "config", "config.c"), encoding="utf-8") as f:
        text = f.read()
    table = re.findall(r"^\s*P_[A-Z]+\((\w+),\s*(RELOAD|RESTART),", text, re.M)
    assert len(table) > 80
    rows = con.rows("CONFIG")
    assert [r["key"] for r in rows] == sorted(n for n, _ in table)
    expected = {n: ("yes" if r == "RELOAD" else "no") for n, r in table}
    assert {r["key"]: r["changeable"] for r in rows} == expected
    by_key = {r["key"]: r for r in rows}
    assert by_key["default_pool_size"]["value"] == "17"
    assert by_key["default_pool_size"]["default"] == "20"
    assert by_key["listen_port"]["value"] == str(pf.port)
    assert by_key["listen_port"]["changeable"] == "no"
    assert by_key["pool_mode"]["value"] == "session"
    assert by_key["server_reset_query"]["default"] == "DISCARD ALL"


def test_stats_users_can_show_but_not_fds(proxy, postgres, console_factory):
    role, pw = pfhelpers.new_role(postgres, "shsu")
    pf = proxy(params={"stats_users": role}, userlist={role: pw})
    con = console_factory(pf, user=role, password=pw)
    for what in COLUMNS:
        if what == "FDS":
            continue
        cols, _, _ = con.raw("SHOW " + what)
        assert cols == COLUMNS[what], what
    with pytest.raises(psycopg.Error) as ei:
        con.raw("SHOW FDS")
    assert "admin access needed" in str(ei.value)
    # the console still works afterwards
    assert con.raw("SHOW VERSION")[2] == [["pgfunnel %s" % pfhelpers.project_version()]]


def test_show_fds_never_shows_secrets(proxy, postgres, console_factory):
    role, pw = pfhelpers.new_role(postgres, "shfd")
    pf = proxy(userlist={role: pw})
    con = console_factory(pf)
    with pfhelpers.proxy_connect(pf, role, "appdb", pw, prepare_threshold=None) as c:
        c.execute("SELECT 1")
        cols, _, rows = con.raw("SHOW FDS")
        rows = [dict(zip(cols, r)) for r in rows]
        assert any(r["task"] == "pooler" and r["addr"] == "127.0.0.1"
                   and r["port"] == str(pf.port) for r in rows)
        mine = [r for r in rows if r["user"] == role]
        clients = [r for r in mine if r["task"] == "client"]
        servers = [r for r in mine if r["task"] == "server"]
        assert len(clients) == 1 and len(servers) == len(con.rows("SERVERS"))
        client = clients[0]
        linked = [r for r in servers if r["link"] != "0"]
        assert len(linked) == 1, servers
        assert client["link"] == linked[0]["fd"] and linked[0]["link"] == client["fd"]
        assert client["database"] == "appdb"
        assert client["client_encoding"] == "UTF8"
        for r in rows:
            assert r["password"] is None
            assert r["scram_client_key"] is None and r["scram_server_key"] is None
            assert int(r["fd"]) >= 0
        # no secret of any kind in the whole answer
        blob = repr(rows)
        assert pw not in blob and pfhelpers.md5_secret(role, pw) not in blob


def test_lists_and_mem_match_live_connections(proxy, postgres, console_factory):
    role, pw = pfhelpers.new_role(postgres, "shlm")
    pf = proxy(userlist={role: pw})
    con = console_factory(pf)
    conns = [pfhelpers.proxy_connect(pf, role, "appdb", pw, prepare_threshold=None)
             for _ in range(4)]
    try:
        for c in conns:
            c.execute("SELECT 1")
        cols, lists = con.show("LISTS")
        lists_d = {r["list"]: r["items"] for r in lists}
        assert [r["list"] for r in lists] == LISTS_ROWS
        clients = con.rows("CLIENTS")
        servers = con.rows("SERVERS")
        pools = con.rows("POOLS")
        dbs = con.rows("DATABASES")
        assert lists_d["used_clients"] == len(clients) == 5  # 4 + this console
        assert lists_d["used_servers"] == len(servers) == 4
        assert lists_d["pools"] == len(pools)
        assert lists_d["databases"] == len(dbs)
        assert lists_d["login_clients"] == 0
        assert lists_d["peers"] == lists_d["peer_pools"] == 0
        for k in ("dns_names", "dns_zones", "dns_queries", "dns_pending"):
            assert lists_d[k] == 0
        mem = {r["name"]: r for r in con.rows("MEM")}
        assert mem["client_cache"]["used"] == lists_d["used_clients"]
        assert mem["server_cache"]["used"] == lists_d["used_servers"]
        assert mem["pool_cache"]["used"] == lists_d["pools"]
        assert mem["db_cache"]["used"] >= lists_d["databases"]
        assert mem["user_cache"]["used"] >= lists_d["users"] >= 1
        for r in mem.values():
            assert r["size"] > 0
            assert r["memtotal"] == r["size"] * (r["used"] + r["free"]), r
        assert mem["iobuf_cache"]["size"] == 4096  # pkt_buf
    finally:
        for c in conns:
            c.close()


def test_show_databases_values(proxy, postgres, console_factory):
    pf = proxy(params={"default_pool_size": 13, "max_db_connections": 50,
                       "server_lifetime": 1800},
               databases={"small": postgres.db_entry("appdb", pool_size=3, pool_mode="transaction",
                                                     max_db_connections=9),
                          "lb": "host=127.0.0.1,localhost port=%d dbname=appdb" % postgres.port})
    con = console_factory(pf)
    dbs = {r["name"]: r for r in con.rows("DATABASES")}
    assert set(dbs) == {"appdb", "postgres", "small", "lb", "pgfunnel"}
    a = dbs["appdb"]
    assert (a["host"], a["port"], a["database"], a["force_user"]) == (
        "127.0.0.1", postgres.port, "appdb", None)
    assert (a["pool_size"], a["min_pool_size"], a["reserve_pool_size"]) == (13, 0, 0)
    assert (a["server_lifetime"], a["pool_mode"], a["load_balance_hosts"]) == (1800, None, None)
    assert (a["max_connections"], a["paused"], a["disabled"]) == (50, 0, 0)
    assert a["max_client_connections"] == 0
    s = dbs["small"]
    assert (s["pool_size"], s["pool_mode"], s["max_connections"], s["database"]) == (
        3, "transaction", 9, "appdb")
    assert dbs["lb"]["load_balance_hosts"] == "round-robin"
    adm = dbs["pgfunnel"]
    assert (adm["database"], adm["force_user"], adm["pool_mode"], adm["port"]) == (
        "pgfunnel", "pgbouncer", "statement", pf.port)
    assert adm["current_client_connections"] == 1


def test_show_users_config_values(proxy, postgres, console_factory):
    role, pw = pfhelpers.new_role(postgres, "shus")
    pf = proxy(params={"max_user_connections": 40},
               users={role: "pool_size=4 reserve_pool_size=2 pool_mode=transaction "
                            "max_user_connections=6 max_user_client_connections=8"},
               userlist={role: pw})
    con = console_factory(pf)
    # listed from [users] before anyone logs in
    u = [r for r in con.rows("USERS") if r["name"] == role]
    assert len(u) == 1
    with pfhelpers.proxy_connect(pf, role, "appdb", pw, autocommit=True,
                                 prepare_threshold=None) as c:
        c.execute("SELECT 1")
        u = [r for r in con.rows("USERS") if r["name"] == role]
        assert len(u) == 1
        u = u[0]
        assert u["pool_size"].strip() == "4" and u["reserve_pool_size"].strip() == "2"
        assert (u["pool_mode"], u["max_user_connections"], u["max_user_client_connections"]) == (
            "transaction", 6, 8)
        assert u["current_client_connections"] == 1
        pg = [r for r in con.rows("USERS") if r["name"] == "postgres"][0]
        assert pg["max_user_connections"] == 40 and pg["pool_size"] == ""


def test_show_users_lists_every_auth_file_user(proxy, postgres, console_factory):
    # As PgBouncer, SHOW USERS lists the auth_file's users before they ever log in, each once.
    pf = proxy(userlist={"never_logged_in_1": "x", "never_logged_in_2": "y"})
    con = console_factory(pf)
    names = [r["name"] for r in con.rows("USERS")]
    for name in ("never_logged_in_1", "never_logged_in_2", "alice", "bob", "postgres"):
        assert names.count(name) == 1, (name, names)
    u = [r for r in con.rows("USERS") if r["name"] == "never_logged_in_1"][0]
    assert (u["current_connections"], u["current_client_connections"]) == (0, 0)


def test_show_state_peers_dns(proxy, console_factory):
    pf = proxy()
    con = console_factory(pf)
    assert con.raw("SHOW STATE")[2] == [["active", "yes"], ["paused", "no"],
                                        ["suspended", "no"]]
    for what in ("PEERS", "PEER_POOLS", "DNS_HOSTS", "DNS_ZONES"):
        assert con.raw("SHOW " + what)[2] == []


def test_show_peers_rows(proxy, pgfunnel, console_factory):
    pf = proxy()
    pf.kill()
    assert pfhelpers.wait_for(lambda: not pfhelpers.port_accepts(pf.port), 10)
    pf.write_ini(extra_text="\n[peers]\n1 = host=127.0.0.1 port=7001\n"
                            "2 = host=/tmp port=7002 pool_size=5\n")
    pf2 = pgfunnel.start(config_path=pf.ini_path, port=pf.port,
                         params={"logfile": pf.logfile, "pidfile": pf.pidfile,
                                 "unix_socket_dir": pf.unix_socket_dir})
    # (the shared logfile already says "process up": wait for the port itself)
    assert pfhelpers.wait_for(lambda: pfhelpers.port_accepts(pf2.port), 10)
    con = console_factory(pf2)
    assert con.raw("SHOW PEERS")[2] == [["1", "127.0.0.1", "7001", "20"],
                                        ["2", "/tmp", "7002", "5"]]
    assert {r["list"]: r["items"] for r in con.rows("LISTS")}["peers"] == 2


# ------------------------------------------------------------------ PgBouncer 1.18 side by side


def is_subsequence(small, big):
    it = iter(big)
    return all(x in it for x in small)


@pytest.mark.skipif(not os.access(PGBOUNCER_BIN, os.X_OK), reason="pgbouncer not installed")
def test_pgbouncer_118_columns_are_a_subsequence(proxy, postgres, console_factory, new_port,
                                                 tmpdir_user):
    port = new_port()
    d = tmpdir_user
    users = os.path.join(d, "userlist.txt")
    pfhelpers.write_file(users, '"postgres" "%s"\n' % postgres.passwords["postgres"])
    ini = os.path.join(d, "pgbouncer.ini")
    pfhelpers.write_file(ini, pfhelpers.format_ini([
        ("databases", {"appdb": postgres.db_entry("appdb")}),
        ("pgbouncer", {"listen_addr": "127.0.0.1", "listen_port": port,
                       "unix_socket_dir": d, "auth_type": "md5", "auth_file": users,
                       "admin_users": "postgres", "logfile": os.path.join(d, "pgb.log"),
                       "pidfile": os.path.join(d, "pgb.pid")})]))
    for p in (users, ini):
        pfhelpers.chown_run_user(p)
    cmd = [PGBOUNCER_BIN, ini]
    if pfhelpers.is_root():
        cmd = ["runuser", "-u", pfhelpers.RUN_USER, "--"] + cmd
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        assert pfhelpers.wait_for(lambda: pfhelpers.port_accepts(port), 10)
        pf = proxy()
        ours = console_factory(pf)
        info = "host=127.0.0.1 port=%d user=postgres dbname=pgbouncer password=%s" % (
            port, postgres.passwords["postgres"])
        with psycopg.connect(info, autocommit=True) as theirs:
            compared = 0
            for what in sorted(COLUMNS):
                res = theirs.pgconn.exec_(("SHOW " + what).encode())
                if res.status != psycopg.pq.ExecStatus.TUPLES_OK:
                    continue  # 1.18 lacks it
                their_cols = [res.fname(i).decode() for i in range(res.nfields)]
                our_cols = ours.raw("SHOW " + what)[0]
                # 1.24 renamed SHOW DATABASES' reserve_pool
                their_cols = ["reserve_pool_size" if c == "reserve_pool" else c
                              for c in their_cols]
                assert is_subsequence(their_cols, our_cols), "%s %s %s" % (what, their_cols, our_cols)
                compared += 1
            assert compared >= 15
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
