"""Red team of client parking (issue 14's follow-up): a logged-in client without a server that
has been silent for a second loses its libuv handle and waits, as a dup'ed socket, in the
worker's park epoll set; its first byte, EOF or reset (or any send of ours) gives it a handle
from the slab again.

Each case attacks as a hostile or broken client (partial and huge messages right after the
park, data followed by an immediate reset, half-close, pipelined floods, hundreds of parked
clients waking in the same instant), or through the console and signals (PAUSE, SUSPEND,
RECONNECT, KILL, KILL_CLIENT racing the client's own disconnect, RELOAD of pkt_buf, SHOW of
every socket list, SHUTDOWN and the shutdown signals), and asserts what an unparked client
would see: its own answers, in order, nothing lost, nothing crossed; the right FATALs; no fd
left behind; pgfunnel exits cleanly (exit 0: the worker's exit-time asserts hold).

Meant for the ASan build (PGFUNNEL_SANITIZED=1): the conftest sanitizer gate fails a test on any
sanitizer report of an instance it started, including LeakSanitizer's at exit."""

import os
import re
import signal
import socket
import threading
import time

import pytest

import pfhelpers
import pgwire
from test_admin_control import Admin, expect_killed
from test_park import handles_used, unparked_count, wait_parked
from test_zz_attack14 import rst_close

LONG = 20.0
BEYOND = pfhelpers.binary_is_pgbouncer()


@pytest.fixture
def role(postgres):
    return pfhelpers.new_role(postgres, "apark")


# ---------------------------------------------------------------- helpers


def tx_proxy(proxy, role, **params):
    name, pw = role
    p = {"pool_mode": "transaction", "max_client_conn": 1000}
    p.update(params)
    return proxy(params=p, userlist={name: pw})


def connect(pf, role, host=None, app=None):
    name, pw = role
    return pgwire.connect(host or pf.host, pf.port, name, "appdb", pw,
                          options={"application_name": app} if app else None, timeout=LONG)


def fd_count(pf):
    return pfhelpers.proc_fd_count(pf.pid)


def client_fds(pf, adm):
    """pgfunnel's fds beyond its server connections (listeners, log, console, the park set,
    clients)."""
    return fd_count(pf) - len(adm.show("SERVERS"))


def warm_up(pf, adm, role):
    """One client parks and leaves (the park set exists from then on); returns the baseline
    of client_fds()."""
    user = role[0]
    before = len(adm.clients(user))
    c = connect(pf, role)
    c.simple_query("SELECT 1")
    wait_parked(adm)
    c.close()
    pfhelpers.wait_until(lambda: len(adm.clients(user)) == before, LONG, "warm-up client gone")
    return client_fds(pf, adm)


def wait_fds_back(pf, adm, base):
    pfhelpers.wait_until(lambda: client_fds(pf, adm) <= base, LONG,
                         "pgfunnel's fds (beyond servers) back to %d" % base,
                         lambda: "now %s; %s" % (client_fds(pf, adm), os.listdir(
                             "/proc/%d/fd" % pf.pid)))


def alive(pf, role):
    assert pf.is_running(), "pgfunnel died\n" + pf.all_output()[-6000:]
    with connect(pf, role) as c:
        assert c.simple_query("SELECT 'alive'") == [("alive",)]


def pools_idle(adm, user):
    rows = [r for r in adm.show("POOLS") if r["user"] == user]
    return all(int(r["sv_active"]) == 0 and int(r["cl_waiting"]) == 0 for r in rows)


def socket_inodes(pid):
    """{fd: inode} of pid's sockets."""
    out = {}
    base = "/proc/%d/fd" % pid
    for name in os.listdir(base):
        try:
            link = os.readlink(os.path.join(base, name))
        except OSError:
            continue
        m = re.match(r"socket:\[(\d+)\]", link)
        if m:
            out[int(name)] = int(m.group(1))
    return out


def tcp_inode_ports():
    """{inode: (local port, remote port)} of the TCP sockets of this host (IPv4)."""
    out = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            lport = int(parts[1].split(":")[1], 16)
            rport = int(parts[2].split(":")[1], 16)
            out[int(parts[9])] = (lport, rport)
    return out


# ---------------------------------------------------------------- partial / huge messages


@pytest.mark.parametrize("unix", [False, True], ids=["tcp", "unix"])
def test_partial_message_after_park_then_rest_much_later(proxy, role, unix):
    """A parked client wakes with one byte, then the rest of the header, then all but the last
    byte of the body, each a couple of janitor ticks apart: while a message is half-read it must stay unparked (its bytes are
    in pgfunnel's buffer), and the whole message gets its answer; then it parks again."""
    pf = tx_proxy(proxy, role)
    adm = Admin(pf)
    c = connect(pf, role, host=pf.unix_socket_dir if unix else None)
    other = connect(pf, role)
    try:
        assert c.simple_query("SELECT 1") == [("1",)]
        assert other.simple_query("SELECT 1") == [("1",)]
        wait_parked(adm)
        msg = pgwire.fe_query("SELECT 'partial-%s', repeat('z', 3000)" % ("u" if unix else "t"))
        cuts = [1, 5, len(msg) - 1]
        pos = 0
        for cut in cuts:
            c.send(msg[pos:cut])
            pos = cut
            # Mid-message: it must not be parked again (wait two janitor ticks and more).
            if not BEYOND:
                pfhelpers.wait_until(lambda: unparked_count(adm) == 1, LONG,
                                     "the client woken by its bytes")
                assert not pfhelpers.wait_for(lambda: unparked_count(adm) == 0, 2.2), \
                    "a client half-way through a message was parked"
            assert c.is_silent(0.05)
        c.send(msg[pos:])
        rows = c.read_result()
        assert rows == [("partial-%s" % ("u" if unix else "t"), "z" * 3000)]
        # The other client, parked all along, is unaffected.
        assert other.simple_query("SELECT 'other'") == [("other",)]
        wait_parked(adm)
        assert c.simple_query("SELECT 'again'") == [("again",)]
    finally:
        adm.close()
        c.close()
        other.close()


def test_huge_message_right_after_park(proxy, role):
    """The first bytes after a park are a 6 MB Query (pkt_buf is 4096) and, in the same write,
    an extended-protocol round with a 3 MB parameter and a small query: all answered, in
    order, with the right lengths; a second parked client sends the same at the same time."""
    pf = tx_proxy(proxy, role, pkt_buf=4096)
    adm = Admin(pf)
    a, b = connect(pf, role), connect(pf, role, host=pf.unix_socket_dir)
    try:
        a.simple_query("SELECT 1")
        b.simple_query("SELECT 1")
        wait_parked(adm)
        big = "x" * (6 << 20)
        par = "y" * (3 << 20)
        data = (pgwire.fe_query("SELECT length('%s')" % big) +
                pgwire.fe_parse("SELECT length($1::text)") + pgwire.fe_bind(params=(par,)) +
                pgwire.fe_execute() + pgwire.fe_sync() +
                pgwire.fe_query("SELECT 'tail'"))
        senders = [threading.Thread(target=conn.send, args=(data,)) for conn in (a, b)]
        for t in senders:
            t.start()
        for conn in (a, b):
            msgs = conn.read_until_ready(LONG * 2, count=3)
            rows = [pgwire.decode_data_row(p) for k, p in msgs if k == "D"]
            assert rows == [(str(6 << 20),), (str(3 << 20),), ("tail",)], rows
            assert [k for k, _ in msgs if k == "E"] == []
        for t in senders:
            t.join(LONG)
        wait_parked(adm)
        assert a.simple_query("SELECT 'a'") == [("a",)]
        assert b.simple_query("SELECT 'b'") == [("b",)]
    finally:
        adm.close()
        a.close()
        b.close()


# ---------------------------------------------------------------- leaving while parked


def test_data_then_reset_or_eof_while_parked(proxy, role):
    """Parked clients send a query (some a slow one) and at once reset, close, or half-close:
    pgfunnel must notice each, every server goes back idle, SHOW CLIENTS forgets them, the
    survivors (parked meanwhile) get their answers, and no fd is left behind."""
    user = role[0]
    pf = tx_proxy(proxy, role, default_pool_size=4)
    adm = Admin(pf)
    keep = [connect(pf, role) for _ in range(3)]
    base_fds = warm_up(pf, adm, role)
    leavers = [connect(pf, role, host=pf.unix_socket_dir if i % 4 == 3 else None)
               for i in range(24)]
    try:
        for c in keep + leavers:
            c.simple_query("SELECT 1")
        wait_parked(adm)
        for i, c in enumerate(leavers):
            q = "SELECT pg_sleep(0.3)" if i % 2 else "SELECT %d" % i
            how = (i // 2) % 3
            c.send(pgwire.fe_query(q))
            if how == 0:
                rst_close(c.sock)
            elif how == 1:
                c.sock.close()
            else:
                c.sock.shutdown(socket.SHUT_WR)
        pfhelpers.wait_until(lambda: len(adm.clients(user)) == len(keep), LONG,
                             "the leavers gone from SHOW CLIENTS", lambda: adm.clients(user))
        pfhelpers.wait_until(lambda: pools_idle(adm, user), LONG, "servers back idle",
                             lambda: adm.show("POOLS"))
        for c in leavers:
            if c.sock.fileno() >= 0:
                assert pgwire.wait_closed(c, LONG)
                c.sock.close()
        for i, c in enumerate(keep):
            assert c.simple_query("SELECT 'keep%d'" % i) == [("keep%d" % i,)]
        wait_fds_back(pf, adm, base_fds)
    finally:
        adm.close()
        for c in keep:
            c.close()


def test_half_close_after_query_like_unparked(proxy, role):
    """A client sends a query and shuts its write side at once. pgfunnel answers then closes, or
    closes at once (which one depends on whether the EOF is read before the answer comes, for
    an unparked client as well): a parked client must get one of those two, never a part of an
    answer, and be closed in the end."""
    pf = tx_proxy(proxy, role)
    adm = Admin(pf)

    def outcome(conn):
        conn.send(pgwire.fe_query("SELECT 'hc'"))
        conn.sock.shutdown(socket.SHUT_WR)
        got = []
        try:
            while True:
                got.append(conn.read_message(LONG)[0])
        except pgwire.ProtocolError as e:
            assert "closed" in str(e), e
        conn.sock.close()
        return got

    try:
        fresh = connect(pf, role)
        fresh.simple_query("SELECT 1")
        whole, nothing = ["T", "D", "C", "Z"], []
        assert outcome(fresh) in (whole, nothing)
        parked = connect(pf, role)
        parked.simple_query("SELECT 1")
        wait_parked(adm)
        assert outcome(parked) in (whole, nothing)
    finally:
        adm.close()


# ---------------------------------------------------------------- many at once


def test_pipelined_flood_from_a_parked_client(proxy, role):
    """400 queries in one write from a parked client, its socket reading nothing until all are
    sent; then 400 extended rounds. Every answer comes, in order, once."""
    pf = tx_proxy(proxy, role, default_pool_size=2)
    adm = Admin(pf)
    c = connect(pf, role)
    try:
        c.simple_query("SELECT 1")
        wait_parked(adm)
        n = 400
        data = b"".join(pgwire.fe_query("SELECT %d, repeat('q', 200)" % i) for i in range(n))
        t = threading.Thread(target=c.send, args=(data,))
        t.start()
        msgs = c.read_until_ready(LONG * 2, count=n)
        t.join(LONG)
        rows = [pgwire.decode_data_row(p)[0] for k, p in msgs if k == "D"]
        assert rows == [str(i) for i in range(n)]
        wait_parked(adm)
        data = b"".join(pgwire.fe_parse("SELECT $1::int * 2") +
                        pgwire.fe_bind(params=(str(i),)) + pgwire.fe_execute() +
                        pgwire.fe_sync() for i in range(n))
        t = threading.Thread(target=c.send, args=(data,))
        t.start()
        msgs = c.read_until_ready(LONG * 2, count=n)
        t.join(LONG)
        rows = [pgwire.decode_data_row(p)[0] for k, p in msgs if k == "D"]
        assert rows == [str(2 * i) for i in range(n)]
    finally:
        adm.close()
        c.close()


def test_hundreds_of_parked_clients_wake_at_once(proxy, role):
    """640 parked clients (TCP and unix) send a query in the same instant (more than ten
    64-event drains of the park set): each gets exactly its own answer; then they all leave at
    once, half with a reset, and every fd and handle goes back."""
    user = role[0]
    pf = tx_proxy(proxy, role, default_pool_size=6)
    adm = Admin(pf)
    base_fds = warm_up(pf, adm, role)
    base_handles = handles_used(adm)
    n = 640
    clients = []
    try:
        for i in range(n):
            clients.append(connect(pf, role, host=pf.unix_socket_dir if i % 5 == 0 else None))
        wait_parked(adm)
        for i, c in enumerate(clients):
            c.send(pgwire.fe_query("SELECT 'w%d'" % i))
        for i, c in enumerate(clients):
            assert c.read_result() == [("w%d" % i,)], i
        wait_parked(adm)
        # A second wave, pipelined pairs.
        for i, c in enumerate(clients):
            c.send(pgwire.fe_query("SELECT %d" % i) + pgwire.fe_query("SELECT %d" % -i))
        for i, c in enumerate(clients):
            assert c.read_result() == [(str(i),)]
            assert c.read_result() == [(str(-i),)]
        wait_parked(adm)
        for i, c in enumerate(clients):
            if i % 2:
                rst_close(c.sock)
            else:
                c.close()
        pfhelpers.wait_until(lambda: len(adm.clients(user)) == 0, LONG, "all gone",
                             lambda: len(adm.clients(user)))
        wait_fds_back(pf, adm, base_fds)
        if not BEYOND:
            pfhelpers.wait_until(
                lambda: handles_used(adm) - len(adm.show("SERVERS")) <= base_handles, LONG,
                "handles back", lambda: adm.show("MEM"))
        alive(pf, role)
    finally:
        adm.close()
        for c in clients:
            c.sock.close()


# ---------------------------------------------------------------- console


def test_pause_resume_and_reconnect_with_parked_clients(proxy, postgres, role):
    """PAUSE with parked clients: a parked client's query waits (silently) until RESUME, then is
    answered; RECONNECT: parked clients' next queries run on new backends."""
    pf = tx_proxy(proxy, role, default_pool_size=2)
    adm = Admin(pf)
    clients = [connect(pf, role) for _ in range(6)]
    try:
        pids = set()
        for c in clients:
            pids.add(c.simple_query("SELECT pg_backend_pid()")[0][0])
        wait_parked(adm)
        assert adm.run("PAUSE") == "PAUSE"
        for i, c in enumerate(clients[:3]):
            c.send_query("SELECT 'paused%d'" % i)
        for c in clients[:3]:
            assert c.is_silent(0.5), "a paused pgfunnel answered"
        assert adm.run("RESUME") == "RESUME"
        for i, c in enumerate(clients[:3]):
            assert c.read_result() == [("paused%d" % i,)]
        wait_parked(adm)
        assert adm.run("RECONNECT") == "RECONNECT"
        new = set()
        for c in clients:
            new.add(c.simple_query("SELECT pg_backend_pid()")[0][0])
        assert not (new & pids), "RECONNECT left old backends in use: %s" % (new & pids)
    finally:
        adm.close()
        for c in clients:
            c.close()


def test_kill_client_racing_the_clients_own_disconnect(proxy, role):
    """Parked clients are KILL_CLIENTed while they disconnect in the same instant (reset, FIN,
    Terminate), or send a query in that instant; untouched parked ones stay usable; every fd
    goes back."""
    user = role[0]
    pf = tx_proxy(proxy, role)
    adm = Admin(pf)
    base_fds = warm_up(pf, adm, role)
    clients = [connect(pf, role, host=pf.unix_socket_dir if i % 3 == 0 else None,
                       app="k%d" % i) for i in range(40)]
    try:
        for c in clients:
            c.simple_query("SELECT 1")
        wait_parked(adm)
        ids = {r["application_name"]: r["id"] for r in adm.clients(user)}
        kills = []
        for i, c in enumerate(clients[:32]):
            how = i % 4
            if how == 0:
                rst_close(c.sock)
            elif how == 1:
                c.sock.close()
            elif how == 2:
                c.close()
            else:
                c.send(pgwire.fe_query("SELECT 'racing'"))
            kills.append("KILL_CLIENT %s" % ids["k%d" % i])
        # All the kills in one write: they run back to back, with the disconnects in flight.
        adm.conn.send(b"".join(pgwire.fe_query(k) for k in kills))
        for _ in kills:
            try:
                adm.answer()
            except pgwire.PgError as e:
                # Already gone when its turn came: PgBouncer's "client not found".
                assert "no client" in e.message or "not found" in e.message, e.fields
        for i, c in enumerate(clients[:32]):
            if i % 4 == 3:
                msgs = []
                try:
                    while True:
                        msgs.append(c.read_message(LONG))
                except (pgwire.ProtocolError, ConnectionResetError):
                    pass
                # Answered then killed, or killed first (its FATAL may be lost to the reset
                # that closing a socket with its query unread sends, as for any client):
                # nothing after a FATAL, the connection closed.
                kinds = [k for k, _ in msgs]
                assert "E" not in kinds or kinds[-1] == "E", kinds
                c.sock.close()
        pfhelpers.wait_until(lambda: len(adm.clients(user)) == 8, LONG, "8 left",
                             lambda: adm.clients(user))
        for i, c in enumerate(clients[32:]):
            assert c.simple_query("SELECT 'left%d'" % i) == [("left%d" % i,)]
        for c in clients[32:]:
            c.close()
        wait_fds_back(pf, adm, base_fds)
    finally:
        adm.close()
        for c in clients:
            c.sock.close()


def test_kill_database_then_parked_clients_of_others(proxy, role):
    """KILL of one database reaches its parked clients with the FATAL (TCP and unix), the parked
    clients of the other database are not touched."""
    name, pw = role
    pf = tx_proxy(proxy, role)
    adm = Admin(pf)
    app = [connect(pf, role, host=pf.unix_socket_dir if i % 2 else None) for i in range(6)]
    pg = [pgwire.connect(pf.host, pf.port, name, "postgres", pw) for _ in range(4)]
    try:
        for c in app + pg:
            c.simple_query("SELECT 1")
        wait_parked(adm)
        assert adm.run("KILL appdb") == "KILL"
        for c in app:
            expect_killed(c)
        for i, c in enumerate(pg):
            assert c.simple_query("SELECT 'pg%d'" % i) == [("pg%d" % i,)]
        assert adm.run("RESUME appdb") == "RESUME"
        alive(pf, role)
    finally:
        adm.close()
        for c in app:
            c.sock.close()
        for c in pg:
            c.close()


def test_reload_with_parked_clients(proxy, role):
    """RELOADs (pool size, timeouts, and a pkt_buf that only a restart applies) while clients
    are parked: each then gets big and small answers right, and a 1 MB query from every parked
    client at once too."""
    pf = tx_proxy(proxy, role, pkt_buf=8192)
    adm = Admin(pf)
    clients = [connect(pf, role, host=pf.unix_socket_dir if i % 3 == 0 else None)
               for i in range(8)]
    try:
        for c in clients:
            c.simple_query("SELECT repeat('a', 100000)")
        for n, size in enumerate((2048, 65536)):
            wait_parked(adm)
            pf.params["pkt_buf"] = size
            pf.params["default_pool_size"] = 2 + n
            pf.params["client_idle_timeout"] = 100 + n
            pf.write_ini()
            assert adm.run("RELOAD") == "RELOAD"
            assert adm.config("default_pool_size") == str(2 + n)
            wait_parked(adm)
            for i, c in enumerate(clients):
                rows = c.simple_query("SELECT %d, repeat('b', %d)" % (i, 50000 + i))
                assert rows == [(str(i), "b" * (50000 + i))]
            wait_parked(adm)
            big = "q" * (1 << 20)
            for c in clients:
                c.send(pgwire.fe_query("SELECT %d, md5('%s')" % (n, big)))
            for c in clients:
                rows = c.read_result()
                assert len(rows) == 1 and rows[0][0] == str(n) and len(rows[0][1]) == 32
    finally:
        adm.close()
        for c in clients:
            c.close()


def test_show_lists_while_parked(proxy, role):
    """SHOW CLIENTS / FDS / SOCKETS / ACTIVE_SOCKETS / LISTS / MEM with every client parked:
    each parked client listed once, SHOW FDS's fd of each is the very socket of that client
    (its inode's remote port), a unix client's remote_pid is ours, and after all that every
    client still gets its own answers."""
    user = role[0]
    pf = tx_proxy(proxy, role)
    adm = Admin(pf)
    tcp = [connect(pf, role, app="t%d" % i) for i in range(6)]
    unix = [connect(pf, role, host=pf.unix_socket_dir, app="u%d" % i) for i in range(3)]
    try:
        for c in tcp + unix:
            c.simple_query("SELECT 1")
        wait_parked(adm)
        for _ in range(3):
            rows = adm.clients(user)
            assert len(rows) == 9
            for r in rows:
                if r["addr"] == "unix":
                    assert int(r["remote_pid"]) == os.getpid(), r
            fds = [r for r in adm.show("FDS") if r["task"] == "client" and r["user"] == user]
            assert len(fds) == 9, fds
            inodes = socket_inodes(pf.pid)
            ports = tcp_inode_ports()
            by_port = {c.sock.getsockname()[1]: c for c in tcp}
            for r in fds:
                fd = int(r["fd"])
                assert fd in inodes, "SHOW FDS names fd %d, not a socket of pgfunnel" % fd
                if r["addr"] != "unix":
                    lport, rport = ports.get(inodes[fd], (None, None))
                    assert lport == pf.port and rport == int(r["port"]), (r, lport, rport)
                    assert rport in by_port
            assert len({int(r["fd"]) for r in fds}) == 9
            socks = [r for r in adm.show("SOCKETS") if r["user"] == user and r["type"] == "C"]
            assert len(socks) == 9, socks
            for r in socks:
                if r["addr"] != "unix":
                    assert (r["local_addr"], int(r["local_port"])) == ("127.0.0.1", pf.port)
            adm.show("ACTIVE_SOCKETS")
            adm.show("LISTS")
            adm.show("MEM")
            # Still parked after all that asking (SHOW must not leave them unparked) and the
            # next round's SHOW runs against parked ones again.
            wait_parked(adm)
        for i, c in enumerate(tcp + unix):
            assert c.simple_query("SELECT 's%d'" % i) == [("s%d" % i,)]
    finally:
        adm.close()
        for c in tcp + unix:
            c.close()


def test_cancel_with_a_parked_clients_key(proxy, postgres, role):
    """A CancelRequest with a parked client's key (even repeated, while another client's query
    runs on the only server) cancels nothing, and the parked client is still fine."""
    pf = tx_proxy(proxy, role, default_pool_size=1)
    adm = Admin(pf)
    parked = connect(pf, role)
    busy = connect(pf, role)
    try:
        parked.simple_query("SELECT 1")
        busy.simple_query("SELECT 1")
        wait_parked(adm)
        busy.send_query("SELECT pg_sleep(1.5), 'slept'")
        pfhelpers.wait_query_running(postgres, "SELECT pg_sleep(1.5), 'slept'", user=role[0])
        pid, secret = parked.backend_key
        for _ in range(5):
            pgwire.cancel_request(pf.host, pf.port, pid, secret)
        assert busy.read_result() == [("", "slept")]
        assert parked.simple_query("SELECT 'still'") == [("still",)]
        # And its own key cancels its own running query.
        parked.send_query("SELECT pg_sleep(20)")
        pfhelpers.wait_query_running(postgres, "SELECT pg_sleep(20)", user=role[0])
        pgwire.cancel_request(pf.host, pf.port, pid, secret)
        err = pgwire.expect_error(parked, LONG)
        assert err is not None and err.sqlstate == "57014", err
    finally:
        adm.close()
        parked.close()
        busy.close()


def test_query_wait_timeout_and_idle_timeout_on_parked_clients(proxy, role):
    """With the only server held in a transaction, parked clients' queries wait and get
    query_wait_timeout; other parked clients that say nothing get client_idle_timeout; the
    holder is untouched; fds go back."""
    user = role[0]
    pf = tx_proxy(proxy, role, default_pool_size=1, query_wait_timeout=3,
                  client_idle_timeout=6)
    adm = Admin(pf)
    base_fds = warm_up(pf, adm, role)
    holder = connect(pf, role)
    waiters = [connect(pf, role) for _ in range(4)]
    idlers = [connect(pf, role, host=pf.unix_socket_dir if i % 2 else None) for i in range(4)]
    try:
        for c in waiters + idlers:
            c.simple_query("SELECT 1")
        holder.simple_query("BEGIN")
        wait_parked(adm, expect_unparked=1)
        for c in waiters:
            c.send_query("SELECT 'never'")
        for c in waiters:
            err = pgwire.expect_error(c, LONG)
            assert err is not None and "query_wait_timeout" in err.message, err
            assert pgwire.wait_closed(c, LONG)
        for c in idlers:
            err = pgwire.expect_error(c, LONG)
            assert err is not None and "client_idle_timeout" in err.message, err
            assert pgwire.wait_closed(c, LONG)
        holder.simple_query("COMMIT")
        assert [r["user"] for r in adm.clients(user)] == [user]
        holder.close()
        wait_fds_back(pf, adm, base_fds)
    finally:
        adm.close()
        for c in waiters + idlers + [holder]:
            c.sock.close()


def test_fd_and_handle_accounting_over_park_cycles(proxy, role):
    """Fifty clients go through five park/unpark cycles (woken by a query, by a console KILL
    that misses them, by SHOW), then leave in every way: pgfunnel's fd count and SHOW MEM's
    handle_cache come back to where they started."""
    user = role[0]
    pf = tx_proxy(proxy, role, default_pool_size=3)
    adm = Admin(pf)
    base_fds = warm_up(pf, adm, role)
    base_handles = handles_used(adm) - len(adm.show("SERVERS"))
    clients = [connect(pf, role, host=pf.unix_socket_dir if i % 4 == 0 else None)
               for i in range(50)]
    try:
        for cycle in range(5):
            wait_parked(adm)
            assert client_fds(pf, adm) <= base_fds + 50, "fds grow while parked"
            for i, c in enumerate(clients):
                assert c.simple_query("SELECT %d" % (cycle * 100 + i)) == \
                    [(str(cycle * 100 + i),)]
        wait_parked(adm)
        for i, c in enumerate(clients):
            how = i % 4
            if how == 0:
                c.close()
            elif how == 1:
                rst_close(c.sock)
            elif how == 2:
                c.sock.shutdown(socket.SHUT_WR)
            else:
                c.sock.close()
        pfhelpers.wait_until(lambda: len(adm.clients(user)) == 0, LONG, "all gone",
                             lambda: adm.clients(user))
        for c in clients:
            c.sock.close()
        wait_fds_back(pf, adm, base_fds)
        if not BEYOND:
            pfhelpers.wait_until(
                lambda: handles_used(adm) - len(adm.show("SERVERS")) <= base_handles, LONG,
                "handles back", lambda: adm.show("MEM"))
    finally:
        adm.close()
        for c in clients:
            c.sock.close()


def test_suspend_then_parked_clients_leave_and_speak(proxy, role):
    """SUSPEND while clients are parked; meanwhile one sends a query, one resets, one sends a
    query and closes; the console goes away (pgfunnel resumes by itself): the query is
    answered, the leavers are gone, nothing else moved."""
    user = role[0]
    pf = tx_proxy(proxy, role)
    adm = Admin(pf)
    a, b, c, d = (connect(pf, role, host=pf.unix_socket_dir if i == 3 else None)
                  for i in range(4))
    try:
        for x in (a, b, c, d):
            x.simple_query("SELECT 1")
        wait_parked(adm)
        assert adm.run("SUSPEND") == "SUSPEND"
        a.send_query("SELECT 'after'")
        rst_close(b.sock)
        c.send_query("SELECT 'gone'")
        c.sock.close()
        assert a.is_silent(1.0)
        adm.close()  # the last console leaves: RESUME by itself
        assert a.read_result() == [("after",)]
        assert d.simple_query("SELECT 'd'") == [("d",)]
        adm = Admin(pf)
        pfhelpers.wait_until(lambda: len(adm.clients(user)) == 2, LONG, "b and c gone",
                             lambda: adm.clients(user))
        pfhelpers.wait_until(lambda: pools_idle(adm, user), LONG, "servers idle",
                             lambda: adm.show("POOLS"))
    finally:
        adm.close()
        for x in (a, d):
            x.close()


def test_session_clients_with_servers_and_tls_clients_never_park(proxy, role):
    """Session mode with client TLS allowed: a plain client holding its server and a TLS client
    (holding a server or not) stay unparked through several janitor ticks, the plain client
    without a server parks; all sessions survive, the TLS client keeps working."""
    if BEYOND:
        pytest.skip("handle_cache is pgfunnel's own SHOW MEM row")
    import tlscerts
    from test_tls import client_tls, tls_context, tls_login
    name, pw = role
    certs = tlscerts.TlsCerts()
    try:
        pf = proxy(params=dict({"pool_mode": "session"}, **client_tls(certs, "allow")),
                   userlist={name: pw})
        adm = Admin(pf)
        holding = connect(pf, role)
        fresh = connect(pf, role)
        tls_idle = tls_login(pf, name, "appdb", pw, tls_context())
        tls_holding = tls_login(pf, name, "appdb", pw, tls_context())
        try:
            holding.simple_query("SET application_name = 'sess'")
            tls_holding.simple_query("SET application_name = 'tsess'")
            wait_parked(adm, expect_unparked=3, what="the plain client without a server parked")
            assert not pfhelpers.wait_for(lambda: unparked_count(adm) < 3, 2.5), \
                "a TLS client or a session client holding its server was parked"
            assert holding.simple_query("SHOW application_name") == [("sess",)]
            assert tls_holding.simple_query("SHOW application_name") == [("tsess",)]
            assert tls_idle.simple_query("SELECT 'tls'") == [("tls",)]
            assert fresh.simple_query("SELECT 'fresh'") == [("fresh",)]
        finally:
            adm.close()
            for c in (holding, fresh, tls_idle, tls_holding):
                c.close()
    finally:
        certs.destroy()


def test_reload_dropping_the_database_of_parked_clients(proxy, postgres, role):
    """RELOAD removes the database parked clients use: they stay usable until they leave (as
    PgBouncer: a removed database lives while it has clients), then the database goes; a
    SIGINT then shuts down cleanly (exit 0, every handle back)."""
    name, pw = role
    pf = proxy(params={"pool_mode": "transaction"}, userlist={name: pw},
               databases={"gone": postgres.db_entry("appdb")})
    adm = Admin(pf)
    clients = [pgwire.connect(pf.unix_socket_dir if i % 2 else pf.host, pf.port, name, "gone",
                              pw) for i in range(6)]
    keep = connect(pf, role)
    try:
        for c in clients + [keep]:
            c.simple_query("SELECT 1")
        wait_parked(adm)
        del pf.databases["gone"]
        pf.write_ini()
        assert adm.run("RELOAD") == "RELOAD"
        wait_parked(adm)
        for i, c in enumerate(clients):
            try:
                rows = c.simple_query("SELECT 'g%d'" % i)
                assert rows == [("g%d" % i,)]
            except pgwire.PgError as e:
                # Refused in words is acceptable; a silent close or a hang is not.
                assert e.severity in ("ERROR", "FATAL"), e.fields
        for c in clients:
            c.close()
        assert keep.simple_query("SELECT 'keep'") == [("keep",)]
        wait_parked(adm)
        adm.close()
        pf.signal(signal.SIGINT)
        assert pgwire.wait_closed(keep, LONG)
        rc = pf.wait(LONG)
        assert rc == 0, "exit %r\n%s" % (rc, pf.all_output()[-4000:])
        assert "shutdown complete" in pf.log_text()
    finally:
        adm.close()
        keep.sock.close()
        for c in clients:
            c.sock.close()


def test_random_clients_straddling_the_park_moment(proxy, role):
    """Thirty clients act at random moments around the one-second park threshold (so their
    bytes race the janitor's park): single and pipelined queries, messages split with pauses,
    1 MB queries, leaving in every way and coming back; meanwhile the console asks SHOW
    FDS / SOCKETS / CLIENTS / MEM and KILL_CLIENTs idle victims. Every answer is the client's
    own, every victim gets its FATAL, pgfunnel stays up, fds come back."""
    import random
    user = role[0]
    pf = tx_proxy(proxy, role, default_pool_size=4)
    adm = Admin(pf)
    base_fds = warm_up(pf, adm, role)
    stop = time.monotonic() + 14.0
    errors = []
    answered = [0]
    lock = threading.Lock()

    def worker(k):
        rnd = random.Random(k)
        host = pf.unix_socket_dir if k % 3 == 0 else None
        c = connect(pf, role, host=host)
        try:
            while time.monotonic() < stop:
                time.sleep(rnd.choice((0.0, 0.3, 0.95, 1.0, 1.05, 1.1, 1.3, 2.1)))
                act = rnd.randrange(7)
                tag = "k%d_%d" % (k, rnd.randrange(10 ** 6))
                if act == 0:
                    assert c.simple_query("SELECT '%s'" % tag) == [(tag,)]
                elif act == 1:
                    c.send(b"".join(pgwire.fe_query("SELECT '%s_%d'" % (tag, j))
                                    for j in range(5)))
                    for j in range(5):
                        assert c.read_result() == [("%s_%d" % (tag, j),)]
                elif act == 2:
                    msg = pgwire.fe_query("SELECT '%s'" % tag)
                    cut = rnd.randrange(1, len(msg))
                    c.send(msg[:cut])
                    time.sleep(rnd.choice((0.2, 1.0, 1.5)))
                    c.send(msg[cut:])
                    assert c.read_result() == [(tag,)]
                elif act == 3:
                    big = "b" * (1 << 20)
                    c.send(pgwire.fe_query("SELECT '%s', length('%s')" % (tag, big)))
                    assert c.read_result() == [(tag, str(1 << 20))]
                elif act == 4:
                    how = rnd.randrange(4)
                    if how == 0:
                        c.close()
                    elif how == 1:
                        rst_close(c.sock)
                    elif how == 2:
                        c.send(pgwire.fe_query("SELECT pg_sleep(0.1)"))
                        rst_close(c.sock)
                    else:
                        c.sock.shutdown(socket.SHUT_WR)
                        pgwire.wait_closed(c, LONG)
                        c.sock.close()
                    c = connect(pf, role, host=host)
                elif act == 5:
                    c.send(pgwire.fe_parse("SELECT $1::text") +
                           pgwire.fe_bind(params=(tag,)) + pgwire.fe_execute() +
                           pgwire.fe_sync())
                    msgs = c.read_until_ready(LONG)
                    assert [pgwire.decode_data_row(p) for k2, p in msgs if k2 == "D"] == \
                        [(tag,)]
                else:
                    c.send(pgwire.fe_query("SELECT '%s'" % tag))
                    time.sleep(0.01)
                    assert c.read_result() == [(tag,)]
                with lock:
                    answered[0] += 1
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append("client %d: %r" % (k, e))
        finally:
            c.close()

    victims = [connect(pf, role, app="victim%d" % i) for i in range(12)]
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(30)]
    try:
        for v in victims:
            v.simple_query("SELECT 1")
        for t in threads:
            t.start()
        rnd = random.Random(7)
        killed = []
        while time.monotonic() < stop:
            adm.show(rnd.choice(("FDS", "SOCKETS", "CLIENTS", "MEM", "ACTIVE_SOCKETS")))
            if len(killed) < len(victims) and rnd.random() < 0.1:
                i = len(killed)
                rows = [r for r in adm.clients(user) if r["application_name"] == "victim%d" % i]
                assert len(rows) == 1, rows
                assert adm.run("KILL_CLIENT %s" % rows[0]["id"]) == "KILL_CLIENT"
                killed.append(i)
            time.sleep(0.05)
        for t in threads:
            t.join(LONG * 2)
        assert not errors, errors
        assert answered[0] > 100, answered
        for i, v in enumerate(victims):
            if i in killed:
                expect_killed(v)
            else:
                assert v.simple_query("SELECT 'v%d'" % i) == [("v%d" % i,)]
                v.close()
        pfhelpers.wait_until(lambda: len(adm.clients(user)) == 0, LONG, "all gone",
                             lambda: adm.clients(user))
        wait_fds_back(pf, adm, base_fds)
        alive(pf, role)
    finally:
        adm.close()
        for v in victims:
            v.sock.close()


# ---------------------------------------------------------------- shutdown


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SHUTDOWN", "WAIT_FOR_CLIENTS",
                                 "SIGQUIT"])
def test_shutdown_with_parked_clients(proxy, role, how):
    """Parked clients (TCP and unix) when the pooler shuts down: they are closed, and
    pgfunnel exits 0 with
    "shutdown complete" (the worker's exit-time asserts: every handle back, nothing parked)."""
    pf = tx_proxy(proxy, role)
    adm = Admin(pf)
    clients = [connect(pf, role, host=pf.unix_socket_dir if i % 2 else None) for i in range(8)]
    try:
        for c in clients:
            c.simple_query("SELECT 1")
        wait_parked(adm)
        if how in ("SHUTDOWN", "WAIT_FOR_CLIENTS"):
            adm.send("SHUTDOWN" if how == "SHUTDOWN" else "SHUTDOWN WAIT_FOR_CLIENTS")
        else:
            pf.signal(getattr(signal, how))
        for c in clients:
            assert pgwire.wait_closed(c, LONG), "a parked client was not closed (%s)" % how
        rc = pf.wait(LONG)
        assert rc == 0, "pgfunnel exited with %r after %s\n%s" % (rc, how,
                                                                  pf.all_output()[-4000:])
        assert "shutdown complete" in pf.log_text(), pf.all_output()[-4000:]
    finally:
        adm.close()
        for c in clients:
            c.sock.close()
