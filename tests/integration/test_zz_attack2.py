"""Red-team attacks, round 2 (wip-atk2): the DRAINED release, deferred links, EOF delivery,
the admin wait loop and statement mode after the round-1 fixes.

These attacks found bugs, all fixed since; their tests stay as regressions (docstrings say
"Was a bug"): links made while a server was still reading its own input left a lone-Flush
client holding it (server.c: the server's drain now retries the release); pf_admin_poll spun
when a resumed console command closed the next console (admin.c: the walk restarts); statement
mode could be kept open with a half-sent message (server.c ready_for_query). The others are
regressions for attacks that held up.
"""

import socket
import struct
import threading
import time

import pytest

import pfhelpers
import pgwire
from test_zz_attack import (  # noqa: F401 - fixtures are used by name
    CD, COPY_DONE, FLUSH, SYNC, Q, P, B, E, D, msg, cstr, finish, one_server,
    pools, role, servers, startup, wire, b_check, copy_table,
    fake_env, be_row, be_cc, be_z)


def raw_login(pf, params, timeout=5.0):
    """Raw socket logged in with auth_type trust and the given startup params."""
    s = socket.create_connection((pf.host, pf.port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c = pgwire.Connection(s)
    c.send(pgwire.startup_message(params))
    c.read_until_ready(timeout, count=1)
    return c


def pool_row(pf, db="appdb"):
    rows = pools(pf, db)
    return rows[0] if rows else {}


def settled(pf, db="appdb", **want):
    def ok():
        r = pool_row(pf, db)
        return all(int(r.get(k, -1)) == v for k, v in want.items())
    return pfhelpers.wait_for(ok, 5)


# ---------------------------------------------------------------- DRAINED release


def test_param_sync_then_lone_flush_pins_server(proxy, postgres, role):
    """Was a bug, now a regression test: A logs in with its own application_name (so linking it runs a parameter-sync
    task) and sends a lone Flush. The Flush waits while the SET runs (client_on_packet:
    s->task != NONE -> STOP); task_done() resumes A from inside the server's own message walk,
    the Flush goes through and A's PF_CONN_EV_DRAINED asks pf_server_may_release(), which says
    no because the server's ReadyForQuery is still unprocessed input
    (pf_conn_has_input(&s->conn): rpos is advanced only after task_packet returns). Nothing
    re-checks later: the idle A pins the only server, B waits for query_wait_timeout.
    Likely cause: server.c task_done (SYNC_VARS) resuming the client inside task_packet."""
    pf = one_server(proxy, role, extra={"auth_type": "trust"})
    a = raw_login(pf, {"user": role[0], "database": "appdb", "application_name": "A-app"})
    a.send(FLUSH)
    # The Flush linked A and its SET ran to the end (A's Flush goes through right after).
    pfhelpers.wait_backends(postgres, "usename = %s AND application_name = %s AND state = 'idle'"
                            " AND starts_with(query, 'SET application_name')",
                            (role[0], "A-app"), "the parameter sync SET ran for A")
    try:
        b_check(pf, role, timeout=2.0)
    except socket.timeout:
        pytest.fail("B got no server while A is idle after a Flush: %r" % servers(pf, "appdb"))
    a.close()
    finish(pf)


def test_param_sync_then_query_released(proxy, role):
    """Holds: the same with a Query instead of a lone Flush is released at ReadyForQuery."""
    pf = one_server(proxy, role, extra={"auth_type": "trust"})
    a = raw_login(pf, {"user": role[0], "database": "appdb", "application_name": "A-app"})
    a.send(Q("SELECT current_setting('application_name')"))
    assert pgwire.data_values(a.read_until_ready(5.0, count=1)) == ["A-app"]
    b_check(pf, role, timeout=2.0)
    a.close()
    finish(pf)


# ---------------------------------------------------------------- admin wait loop


def admin(pf):
    return pgwire.connect(pf.host, pf.port, "postgres", "pgbouncer", "pg-super-secret",
                          timeout=5.0)


def client_ids(pf):
    cols, rows = pfhelpers.console(pf, "SHOW CLIENTS")
    return pfhelpers.rows_as_dicts(cols, rows)


@pytest.mark.parametrize("kill_b", [
    pytest.param(True, id="kill_next_console"),
    pytest.param(False, id="kill_unknown_id")])
def test_wait_close_then_kill_client(proxy, kill_role, kill_b):
    """Was a bug (kill_next_console), now a regression test: console A runs RECONNECT, then WAIT_CLOSE with KILL_CLIENT <console B>
    pipelined behind it; B logged in right after A, so it is A's successor in the admin
    pool's active_clients. When the busy server closes, pf_admin_poll() answers A and
    pf_conn_resume()s it inside PF_LIST_FOREACH(&p->active_clients): KILL_CLIENT closes B,
    pf_list_remove() self-links B's node, which is the loop's saved next pointer, and the
    loop spins on B forever: the whole worker hangs (100% CPU, nobody is answered).
    Likely cause: admin.c pf_admin_poll (iteration over a list the resumed command changes)."""
    role = kill_role
    pf = one_server(proxy, role)
    x = wire(pf, role)
    x.simple_query("BEGIN")
    a = admin(pf)
    bb = admin(pf)
    # Ids are handed out in order: x, x's server, A, B (the pool is full: nothing else).
    xid = [int(r["id"]) for r in client_ids(pf) if r["database"] == "appdb"][0]
    srv = [int(r["id"]) for r in servers(pf, "appdb")]
    assert srv == [xid + 1], (xid, srv)
    bid = xid + 3
    run_wait_close_kill(pf, x, a, bid if kill_b else 987654)
    for c in (a, bb, x):
        c.close()
    finish(pf)


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0


def console_unread(pf, conn):
    """Bytes pgfunnel has read from console client conn but not processed yet (SHOW SOCKETS
    pkt_avail of its row), or None while it has no row."""
    port = conn.sock.getsockname()[1]
    for r in pfhelpers.show(pf, "SOCKETS"):
        if r["type"] == "C" and int(r["port"]) == port:
            return int(r["pkt_avail"])
    return None


def run_wait_close_kill(pf, x, a, victim):
    a.simple_query("RECONNECT appdb")
    kill = Q("KILL_CLIENT %d" % victim)
    a.send(Q("WAIT_CLOSE appdb") + kill)
    # WAIT_CLOSE is waiting: pgfunnel holds the KILL_CLIENT behind it, read but unprocessed.
    pfhelpers.wait_until(lambda: console_unread(pf, a) == len(kill), 5,
                         "WAIT_CLOSE waits with KILL_CLIENT held",
                         lambda: pfhelpers.show(pf, "SOCKETS"))
    x.simple_query("COMMIT")
    try:
        got = a.read_until_ready(3, count=2)
        b_check(pf, role=_ROLE[0], timeout=3)
    except (socket.timeout, OSError) as e:
        t0 = cpu_seconds(pf.pid)
        time.sleep(1)
        spin = cpu_seconds(pf.pid) - t0
        pf.stop(pfhelpers.SIGKILL if hasattr(pfhelpers, "SIGKILL") else 9, timeout=10,
                expect=None)
        pytest.fail("pgfunnel stopped answering after WAIT_CLOSE + KILL_CLIENT (%r); it used "
                    "%.2f s of CPU in the next second" % (e, spin))
    tags = b"".join(p for k, p in got if k == "C")
    assert b"WAIT_CLOSE" in tags, got


_ROLE = []


@pytest.fixture
def kill_role(role):
    _ROLE[:] = [role]
    return role


# ---------------------------------------------------------------- statement mode


def test_statement_mode_transaction_kept_by_mid_message(proxy, role):
    """Was a bug, now a regression test: in statement mode a client keeps a transaction open over several statements by
    always having half a CopyData (ignored outside a COPY) in flight when the ReadyForQuery
    comes: ready_for_query() returns FORWARD for any status while the client is mid-message,
    before the statement-mode check, so 'T' reaches the client and the server stays linked.
    Likely cause: server.c ready_for_query (the mid-message test precedes the
    PF_POOL_STATEMENT close)."""
    pf = one_server(proxy, role, mode="statement")
    a = wire(pf, role)
    cd = CD(b"z" * 100)
    a.send(Q("BEGIN") + cd[:20])
    a.sock.settimeout(3)
    got = []
    try:
        got += a.read_until_ready(5.0, count=1)
        a.send(cd[20:] + Q("SELECT 'A-2'") + cd[:20])
        got += a.read_until_ready(5.0, count=1)
    except (socket.timeout, OSError, EOFError, ConnectionError, pgwire.ProtocolError):
        pass  # closed: statement mode refused the open transaction
    statuses = [p for k, p in got if k == "Z"]
    assert b"T" not in statuses or "A-2" not in pgwire.data_values(got), (
        "two statements ran in one transaction in statement mode: %r" % got)
    a.close()
    finish(pf)


# ---------------------------------------------------------------- queued chains (hold up)


def raw_queue(pf, role, tail, n):
    """n raw clients (trust) that send startup + tail in one write and keep the socket."""
    socks = []
    for _ in range(n):
        s = socket.create_connection((pf.host, pf.port), timeout=10)
        s.sendall(startup(role[0], "appdb") + tail)
        socks.append(s)
    return socks


def read_all(s, timeout=3.0):
    s.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        pass
    return data


@pytest.mark.parametrize("mode", ["transaction", "statement"])
@pytest.mark.parametrize("loopcnt", [1, 0])
def test_queued_chain_leavers_and_askers(proxy, role, mode, loopcnt):
    """Holds: A holds the only server; 40 clients queue behind it, each sending
    Flush+Terminate, Query+Terminate, CopyDone+Terminate, Sync+Terminate or a named Query it
    stays for (mixed), with sbuf_loopcnt=1 forcing throttling next to the link deferral
    (depth 16). When A finishes, every staying client gets exactly its own answer once, and
    SHOW POOLS settles (nobody active or waiting, one server)."""
    pf = one_server(proxy, role, mode=mode,
                    extra={"auth_type": "trust", "sbuf_loopcnt": loopcnt,
                           "max_client_conn": 200})
    a = wire(pf, role)
    a.send(Q("SELECT pg_sleep(0.5)"))
    kinds = [FLUSH, Q("SELECT 'gone'"), COPY_DONE, SYNC, None]
    socks, names = [], []
    for i in range(40):
        k = kinds[i % len(kinds)]
        if k is None:
            name = "asker-%d" % i
            tail = Q("SELECT '%s'" % name)
        else:
            name = None
            tail = k + msg(b"X")
        socks += raw_queue(pf, role, tail, 1)
        names.append(name)
    a.read_until_ready(5, count=1)
    for s, name in zip(socks, names):
        if name is None:
            continue
        got = []
        data = b""
        s.settimeout(5)
        while [k for k, _ in pgwire.split_messages(data)[0]].count("Z") < 2:
            chunk = s.recv(65536)
            assert chunk, "%s closed: %r" % (name, data)
            data += chunk
        got = pgwire.split_messages(data)[0]
        vals = pgwire.data_values(got)
        assert vals == [name], (name, got)
        assert [k for k, _ in got].count("Z") == 2 and got[-1][0] == "Z", (name, got)
        s.sendall(msg(b"X"))
    for s in socks:
        s.close()
    assert settled(pf, cl_active=1, cl_waiting=0, sv_active=0, sv_idle=1), pool_row(pf)
    b_check(pf, role, timeout=2)
    a.close()
    finish(pf)


def test_kill_client_while_queued_and_deferred(proxy, role):
    """Holds: 40 clients queue with a lone Flush behind A; KILL_CLIENT hits every third one
    while queued, then A finishes: the chain links, defers (depth 16) and releases the rest,
    the killed ones are gone cleanly, B is served and the counts settle."""
    pf = one_server(proxy, role, extra={"auth_type": "trust", "max_client_conn": 200})
    a = wire(pf, role)
    a.simple_query("BEGIN")
    socks = raw_queue(pf, role, FLUSH, 40)
    assert pfhelpers.wait_for(lambda: int(pool_row(pf).get("cl_waiting", 0)) >= 40, 5)
    ids = [int(r["id"]) for r in client_ids(pf)
           if r["database"] == "appdb" and r["state"] == "waiting"]
    with admin(pf) as adm:
        for cid in ids[::3]:
            adm.simple_query("KILL_CLIENT %d" % cid)
        adm.send(Q("SHOW POOLS"))
        a.simple_query("COMMIT")
        adm.read_until_ready(5.0, count=1)
    assert settled(pf, cl_waiting=0, sv_active=0), pool_row(pf)
    b_check(pf, role, timeout=2)
    for s in socks:
        s.close()
    a.close()
    finish(pf)


@pytest.mark.parametrize("tail", ["flush", "copydone", "sync", "parse_sync", "query"])
def test_byte_split_pipeline_then_idle_releases(proxy, role, tail):
    """Holds: A sends Query + tail one byte at a time (every split point relative to the
    server's ReadyForQuery, which arrives while A is still trickling), then goes idle; its
    answers are its own and complete, and B gets the only server at once."""
    pf = one_server(proxy, role)
    a = wire(pf, role)
    extra = {"flush": FLUSH, "copydone": COPY_DONE, "sync": SYNC,
             "parse_sync": P("SELECT 'A-p'") + B() + E() + SYNC,
             "query": Q("SELECT 'A-q'")}[tail]
    data = Q("SELECT 'A-1'") + CD(b"x" * 30) + extra + CD(b"y" * 10)
    for i in range(len(data)):
        a.send(data[i:i + 1])
        time.sleep(0.002)
    want = {"flush": 1, "copydone": 1, "sync": 2, "parse_sync": 2, "query": 2}[tail]
    got = a.read_until_ready(3, count=want)
    vals = pgwire.data_values(got)
    assert vals == {"parse_sync": ["A-1", "A-p"], "query": ["A-1", "A-q"]}.get(tail, ["A-1"]), got
    # pgfunnel has taken in every message A trickled (the trailing CopyData too): A is idle.
    pfhelpers.wait_until(lambda: received(pf) >= len(data), 5,
                         "pgfunnel received all %d bytes A sent" % len(data),
                         lambda: pfhelpers.show(pf, "STATS"))
    b_check(pf, role, timeout=2)
    assert a.is_silent(0.2)
    a.close()
    finish(pf)


def received(pf, db="appdb"):
    """SHOW STATS total_received of db: bytes of the client messages pgfunnel took in."""
    rows = [r for r in pfhelpers.show(pf, "STATS") if r["database"] == db]
    return int(rows[0]["total_received"]) if rows else 0


def _answer_once_then_close(c, idx):
    """Answers the first Query (its text after SELECT) and closes right after the
    ReadyForQuery, in the same segment."""
    while True:
        kind, payload = pgwire.read_frontend_message(c)
        if kind == b"X":
            return
        if kind != b"Q":
            continue
        text = payload[:-1].decode().replace("SELECT ", "").strip("'")
        c.sendall(be_row(text) + be_cc() + be_z())
        c.shutdown(socket.SHUT_RDWR)
        c.close()
        return


def test_server_dies_after_ready_while_chain_deferred(fake_env, role):
    """Was a bug (same cause as test_new_server_login_links_lone_flush_client_pins): after the
    first fake server dies, the next one logs in and pf_pool_server_ready() gives it to the
    first queued client from inside login_packet (its ReadyForQuery still unprocessed input);
    that client's lone Flush goes through, its DRAINED release is refused
    (pf_conn_has_input(&s->conn)) and it pins the server: the askers behind it hang.
    Intent: every fake server answers one query and closes right after its ReadyForQuery;
    40 clients queue with a lone Flush (the chain links 16 inline and defers the rest, some
    of which are linked to a server that is dying) among 8 askers. Every asker gets its own
    value or a clean error, never another's; pgfunnel keeps serving (canary on appdb)."""
    start, _ = fake_env
    pf, fake = start(_answer_once_then_close, auth_type="trust", max_client_conn=200)
    a = wire(pf, role, "fake")
    a.send(Q("SELECT 'A'"))
    # The first server answered A and died, and pgfunnel has seen it go.
    assert pgwire.data_values(a.read_until_ready(5.0, count=1)) == ["A"]
    pfhelpers.wait_until(lambda: servers(pf, "fake") == [], 5, "the first fake server is gone",
                         lambda: servers(pf, "fake"))
    socks, names = [], []
    for i in range(48):
        name = "asker-%d" % i if i % 6 == 5 else None
        tail = Q("SELECT '%s'" % name) if name else FLUSH
        s = socket.create_connection((pf.host, pf.port), timeout=10)
        s.sendall(startup(role[0], "fake") + tail)
        socks.append(s)
        names.append(name)
    deadline = time.monotonic() + 4
    for s, name in zip(socks, names):
        if name is None:
            continue
        data = b""
        s.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            while [k for k, _ in pgwire.split_messages(data)[0]].count("Z") < 2:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            cl = [(r["state"], r["link"], r["id"]) for r in client_ids(pf)
                  if r["database"] == "fake"]
            pytest.fail("%s hung: %r\nPOOL %r\nSERVERS %r\nCLIENTS %r\nLOG %s" % (
                name, pgwire.split_messages(data)[0][-1:], pool_row(pf, "fake"), servers(pf, "fake"), cl,
                "\n".join(pf.log_text().splitlines()[-25:])))
        vals = pgwire.data_values(pgwire.split_messages(data)[0])
        assert vals in ([name], []), (name, pgwire.split_messages(data)[0])
    for s in socks:
        s.close()
    a.close()
    b_check(pf, role, timeout=3)
    finish(pf)


def test_new_server_login_links_lone_flush_client_pins(proxy, role):
    """Was a bug, now a regression test: C waits for the only server with a lone Flush; A, holding it in a transaction,
    leaves, so the dirty server is closed and a new one opened for C. At the new server's
    login ReadyForQuery, login_packet -> pf_pool_server_ready -> give_server ->
    pf_server_link resumes C inside the server's message walk: the Flush goes through, C's
    DRAINED asks pf_server_may_release(), which refuses because that ReadyForQuery is still
    unprocessed input (rpos advances only after on_packet returns). Nothing re-checks: the
    idle C pins the server for good and B waits for query_wait_timeout. The same happens for
    every link made from a task's ReadyForQuery (task_done: SYNC_VARS, CONNECT_QUERY, CHECK).
    Likely cause: server.c login_packet/task_done linking inside the walk +
    pf_server_may_release's pf_conn_has_input test, with no re-check in server_on_event."""
    pf = one_server(proxy, role)
    a = wire(pf, role)
    a.simple_query("BEGIN")
    c = wire(pf, role)
    c.send(FLUSH)
    assert pfhelpers.wait_for(lambda: int(pool_row(pf).get("cl_waiting", 0)) == 1, 3)
    a.close()
    # A's dirty server closed, a new one logged in and was given to C (its Flush went through).
    pfhelpers.wait_until(lambda: (lambda r: r and int(r["cl_waiting"]) == 0 and
                                  int(r["sv_login"]) == 0)(pool_row(pf)), 5,
                         "C got the new server", lambda: (pool_row(pf), servers(pf, "appdb")))
    try:
        b_check(pf, role, timeout=2.0)
    except socket.timeout:
        pytest.fail("B got no server while C is idle after a Flush: %r" % servers(pf, "appdb"))
    c.close()
    finish(pf)


def test_check_query_link_lone_flush_client_pins(proxy, postgres, role):
    """Was a bug (same cause as test_new_server_login_links_lone_flush_client_pins): with
    server_check_delay=0 every acquire runs server_check_query; the checked server goes to
    the waiting C from task_done() -> pf_pool_server_ready() inside task_packet, C's lone
    Flush goes through, its DRAINED release is refused (the check's ReadyForQuery is still
    unprocessed input) and C pins the only server."""
    pf = one_server(proxy, role, extra={"server_check_delay": 0,
                                        "server_check_query": "select 1"})
    c = wire(pf, role)
    # The server C's login opened is idle in the pool (so the next acquire checks it).
    assert settled(pf, sv_idle=1, sv_active=0, sv_login=0), pool_row(pf)
    c.send(FLUSH)
    # The check query ran, then the server went to C (its Flush goes through at once).
    pfhelpers.wait_backends(postgres, "usename = %s AND query = 'select 1' AND state = 'idle'",
                            (role[0],), "server_check_query ran")
    try:
        b_check(pf, role, timeout=2.0)
    except socket.timeout:
        pytest.fail("B got no server while C is idle after a Flush: %r" % servers(pf, "appdb"))
    c.close()
    finish(pf)
