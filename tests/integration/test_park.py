"""Idle clients are parked (issue 14): a logged-in client without a server that has sent nothing
for a second gives its socket handle back (SHOW MEM handle_cache `used` counts the connections
that hold one) and keeps its socket in the worker's park set. Whatever happens next must look
exactly as if it had never been parked: its next queries (simple and extended, TCP and unix
socket) are answered in order; SHOW CLIENTS still shows its addresses; its EOF or reset is
noticed while parked; SUSPEND holds its query back until RESUME; KILL and client_idle_timeout
still send their FATAL before the close. Session-mode clients holding a server are not parked.

A beyond-PgBouncer feature (handle_cache is pgfunnel's own SHOW MEM row): the waits on it are
skipped against PgBouncer, the behaviour checks are not."""

import socket
import struct

import pytest

import pfhelpers
import pgwire
from test_admin_control import Admin, expect_killed

LONG = 20.0
BEYOND = pfhelpers.binary_is_pgbouncer()


@pytest.fixture
def role(postgres):
    return pfhelpers.new_role(postgres, "park")


def handles_used(adm):
    rows = {r["name"]: r for r in adm.show("MEM")}
    return int(rows["handle_cache"]["used"])


def unparked_count(adm, consoles=1):
    """Connections of pgfunnel that hold a handle, beyond the servers and `consoles` console
    sessions (this one included)."""
    return handles_used(adm) - len(adm.show("SERVERS")) - consoles


def wait_parked(adm, expect_unparked=0, consoles=1, what="the idle clients parked"):
    if BEYOND:
        return
    pfhelpers.wait_until(lambda: unparked_count(adm, consoles) <= expect_unparked, LONG, what,
                         lambda: "unparked: %d" % unparked_count(adm, consoles))


def extended_select(conn, value):
    conn.send(pgwire.fe_parse("SELECT $1::int + 1") + pgwire.fe_bind(params=(str(value),)) +
              pgwire.fe_execute() + pgwire.fe_sync())
    msgs = conn.read_until_ready(LONG)
    rows = [pgwire.decode_data_row(p) for k, p in msgs if k == "D"]
    assert [k for k, _ in msgs] == ["1", "2", "D", "C", "Z"], msgs
    return rows


def test_idle_clients_park_and_come_back(proxy, pgfunnel, role):
    name, pw = role
    pf = proxy(params={"pool_mode": "transaction"}, userlist={name: pw})
    tcp = [pgwire.connect(pf.host, pf.port, name, "appdb", pw) for _ in range(10)]
    unix = [pgwire.connect(pf.unix_socket_dir, pf.port, name, "appdb", pw) for _ in range(4)]
    clients = tcp + unix
    adm = Admin(pf)
    try:
        for i, c in enumerate(clients):
            assert c.simple_query("SELECT %d" % i) == [(str(i),)]
        wait_parked(adm)
        # SHOW CLIENTS still knows every parked client, and asks a parked socket its local
        # address.
        rows = adm.clients(name)
        assert len(rows) == len(clients)
        by_port = {int(r["port"]): r for r in rows if r["addr"] != "unix"}
        assert len(by_port) == len(tcp)
        for c in tcp:
            r = by_port[c.sock.getsockname()[1]]
            assert r["addr"] == "127.0.0.1"
            assert (r["local_addr"], int(r["local_port"])) == ("127.0.0.1", pf.port), r
        assert sum(1 for r in rows if r["addr"] == "unix") == len(unix)
        # Each comes back with its own answers, in both protocols, twice in a row.
        for i, c in enumerate(clients):
            assert c.simple_query("SELECT %d, current_user" % (i * 7)) == [(str(i * 7), name)]
            assert extended_select(c, i) == [(str(i + 1),)]
        # A pipelined pair sent at once by a parked client: both answered, in order.
        wait_parked(adm)
        for i, c in enumerate(clients):
            c.send(pgwire.fe_query("SELECT 'a%d'" % i) + pgwire.fe_query("SELECT 'b%d'" % i))
        for i, c in enumerate(clients):
            assert c.read_result() == [("a%d" % i,)]
            assert c.read_result() == [("b%d" % i,)]
    finally:
        adm.close()
        for c in clients:
            c.close()


def test_a_burst_of_parked_clients_is_answered_whole(proxy, role):
    """600 parked clients (more than one batch of the park set's wake-up) send a query at the
    same moment: each gets its own answer, none lost or given to another."""
    name, pw = role
    n = 600
    pf = proxy(params={"pool_mode": "transaction", "max_client_conn": n + 20},
               userlist={name: pw})
    clients = []
    adm = Admin(pf)
    try:
        for _ in range(n):
            clients.append(pgwire.connect(pf.host, pf.port, name, "appdb", pw))
        wait_parked(adm)
        for i, c in enumerate(clients):
            c.send(pgwire.fe_query("SELECT %d" % i))
        for i, c in enumerate(clients):
            assert c.read_result() == [(str(i),)]
    finally:
        adm.close()
        for c in clients:
            c.close()


def test_suspend_holds_a_parked_clients_query_until_resume(proxy, role):
    name, pw = role
    pf = proxy(params={"pool_mode": "transaction"}, userlist={name: pw})
    a, b = (pgwire.connect(pf.host, pf.port, name, "appdb", pw) for _ in range(2))
    adm = Admin(pf)
    try:
        a.simple_query("SELECT 1")
        b.simple_query("SELECT 1")
        wait_parked(adm)
        assert adm.run("SUSPEND") == "SUSPEND"
        a.send_query("SELECT 'after resume'")
        assert a.is_silent(1.5), "a suspended pgfunnel answered a query"
        assert adm.run("RESUME") == "RESUME"
        assert a.read_result() == [("after resume",)]
        assert b.simple_query("SELECT 'b'") == [("b",)]
    finally:
        adm.close()
        a.close()
        b.close()


def test_parked_clients_that_leave_are_noticed(proxy, role):
    name, pw = role
    pf = proxy(params={"pool_mode": "transaction"}, userlist={name: pw})
    clients = [pgwire.connect(pf.host, pf.port, name, "appdb", pw) for _ in range(6)]
    adm = Admin(pf)
    try:
        for c in clients:
            c.simple_query("SELECT 1")
        wait_parked(adm)
        clients[0].close()  # Terminate, then close
        clients[1].sock.close()  # EOF without Terminate
        clients[2].sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        clients[2].sock.close()  # reset
        clients[3].sock.shutdown(socket.SHUT_WR)  # half close: pgfunnel ends it too
        pfhelpers.wait_until(lambda: len(adm.clients(name)) == 2, LONG,
                             "the departed parked clients gone from SHOW CLIENTS",
                             lambda: adm.clients(name))
        assert pgwire.wait_closed(clients[3], LONG)
        for c in clients[4:]:
            assert c.simple_query("SELECT 'stayed'") == [("stayed",)]
    finally:
        adm.close()
        for c in clients[3:]:
            c.sock.close()


def test_kill_reaches_parked_clients_with_its_error(proxy, role):
    name, pw = role
    pf = proxy(params={"pool_mode": "transaction"}, userlist={name: pw})
    clients = [pgwire.connect(pf.host, pf.port, name, "appdb", pw) for _ in range(3)]
    adm = Admin(pf)
    try:
        for c in clients:
            c.simple_query("SELECT 1")
        wait_parked(adm)
        assert adm.run("KILL appdb") == "KILL"
        for c in clients:
            expect_killed(c)
        assert adm.run("RESUME appdb") == "RESUME"
    finally:
        adm.close()
        for c in clients:
            c.sock.close()


def test_client_idle_timeout_reaches_a_parked_client(proxy, role):
    name, pw = role
    pf = proxy(params={"pool_mode": "transaction", "client_idle_timeout": 4},
               userlist={name: pw})
    c = pgwire.connect(pf.host, pf.port, name, "appdb", pw)
    adm = Admin(pf)
    try:
        c.simple_query("SELECT 1")
        wait_parked(adm)  # parked after 1-2 s, closed after 4-5 s
        err = pgwire.expect_error(c, LONG)
        assert err is not None and err.severity == "FATAL", err
        assert "client_idle_timeout" in err.message, err.message
        assert pgwire.wait_closed(c, LONG)
    finally:
        adm.close()
        c.sock.close()


def test_session_clients_holding_a_server_stay_unparked(proxy, role):
    if BEYOND:
        pytest.skip("handle_cache is pgfunnel's own SHOW MEM row")
    name, pw = role
    pf = proxy(params={"pool_mode": "session"}, userlist={name: pw})
    s = pgwire.connect(pf.host, pf.port, name, "appdb", pw)
    adm = Admin(pf)
    try:
        s.simple_query("SELECT 1")
        # Two janitor ticks and more: a session client with its server is never parked.
        assert not pfhelpers.wait_for(lambda: unparked_count(adm) < 1, 3.0)
        assert s.simple_query("SELECT 'session'") == [("session",)]
    finally:
        adm.close()
        s.close()
