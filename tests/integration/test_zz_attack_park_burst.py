"""Red team of the park set's drain loop (c7dcc3a: on_park_ready drains park_epfd 256 events at a
time until a call returns fewer). To make the bursts real (every parked socket ready in the very
same wake-up, several full 256-event batches), pgfunnel is stopped with SIGSTOP while hundreds of
parked clients act at once, and continued with SIGCONT: the park set's first epoll_wait then sees
all of them, mixed with resets, half-closes, partial messages, new connections and console
commands queued on the same wake-up.

Meant for the ASan build (PGFUNNEL_SANITIZED=1): the conftest sanitizer gate fails a test on any
sanitizer report of an instance it started, including LeakSanitizer's at exit."""

import contextlib
import os
import signal
import socket
import struct
import time

import pytest

import pfhelpers
import pgwire
from test_admin_control import Admin
from test_park import unparked_count, wait_parked
from test_zz_attack14 import rst_close
from test_zz_attack_park import alive, connect, pools_idle, tx_proxy, \
    wait_fds_back, warm_up

LONG = 30.0
BEYOND = pfhelpers.binary_is_pgbouncer()


@pytest.fixture
def role(postgres):
    return pfhelpers.new_role(postgres, "aburst")


@contextlib.contextmanager
def stopped(pf):
    """pgfunnel does not run inside the block: whatever the clients do meanwhile is all ready
    at its next wake-up."""
    pf.signal(signal.SIGSTOP)
    try:
        yield
    finally:
        pf.signal(signal.SIGCONT)


def read_all(conn, timeout=LONG):
    """Every message until the peer closes: [(kind, payload)]."""
    out = []
    conn.sock.settimeout(timeout)
    while True:
        try:
            out.append(conn.read_message(timeout))
        except pgwire.ProtocolError as e:
            assert "closed" in str(e), e
            return out
        except OSError:
            return out


def own_rows(msgs):
    return [pgwire.decode_data_row(p) for k, p in msgs if k == "D"]


def login_many(pf, role, n, unix_every=4, db="appdb"):
    name, pw = role
    out = []
    for i in range(n):
        host = pf.unix_socket_dir if unix_every and i % unix_every == 0 else pf.host
        out.append(pgwire.connect(host, pf.port, name, db, pw, timeout=LONG))
    return out


# ---------------------------------------------------------------- one wake-up, every kind


def test_stopped_burst_of_every_kind_of_client(proxy, role):
    """900 parked clients act while pgfunnel is stopped (so its park set holds more than three
    full 256-event batches at once): a query; a query then a reset; a reset only; a query then a
    half-close; a header only (the rest sent after the wake-up); one byte only; a query then a
    plain close; a Terminate; a query and a Terminate in one write. Survivors get exactly their own answers, the partial senders too
    once they finish; every leaver is forgotten; fds and servers come back; then they all park
    again and a second stopped burst answers them once more."""
    user = role[0]
    n = 900
    pf = tx_proxy(proxy, role, default_pool_size=5, max_client_conn=n + 50)
    adm = Admin(pf)
    base_fds = warm_up(pf, adm, role)
    clients = login_many(pf, role, n)
    kinds = {}
    try:
        wait_parked(adm)
        msgs = {i: pgwire.fe_query("SELECT 'b%d', repeat('x', %d)" % (i, i % 7 * 100))
                for i in range(n)}
        with stopped(pf):
            for i, c in enumerate(clients):
                k = i % 9
                kinds[i] = k
                m = msgs[i]
                if k == 0:
                    c.send(m)
                elif k == 1:
                    c.send(m)
                    rst_close(c.sock)
                elif k == 2:
                    rst_close(c.sock)
                elif k == 3:
                    c.send(m)
                    c.sock.shutdown(socket.SHUT_WR)
                elif k == 4:
                    c.send(m[:5])
                elif k == 5:
                    c.send(m[:1])
                elif k == 6:
                    c.send(m)
                    c.sock.close()
                elif k == 7:
                    c.send(pgwire.fe_terminate())
                else:
                    c.send(m + pgwire.fe_terminate())
        for i, c in enumerate(clients):
            if kinds[i] in (4, 5):
                c.send(msgs[i][5 if kinds[i] == 4 else 1:])
        for i, c in enumerate(clients):
            k = kinds[i]
            want = ("b%d" % i, "x" * (i % 7 * 100))
            if k in (0, 4, 5):
                assert c.read_result() == [want], i
            elif k == 3:
                got = read_all(c)
                assert [m[0] for m in got] in (["T", "D", "C", "Z"], []), (i, got)
                assert own_rows(got) in ([want], []), i
                c.sock.close()
            elif k == 7:
                assert read_all(c) == [], i
                c.sock.close()
            elif k == 8:
                got = read_all(c)
                assert [m[0] for m in got] in (["T", "D", "C", "Z"], []), (i, got)
                assert own_rows(got) in ([want], []), i
                c.sock.close()
        live = [i for i in range(n) if kinds[i] in (0, 4, 5)]
        pfhelpers.wait_until(lambda: len(adm.clients(user)) == len(live), LONG,
                             "the leavers gone", lambda: len(adm.clients(user)))
        pfhelpers.wait_until(lambda: pools_idle(adm, user), LONG, "servers idle",
                             lambda: adm.show("POOLS"))
        # The survivors park again; a second stopped burst, pipelined pairs.
        wait_parked(adm)
        with stopped(pf):
            for i in live:
                clients[i].send(pgwire.fe_query("SELECT %d" % i) +
                                pgwire.fe_query("SELECT %d" % -i))
        for i in live:
            assert clients[i].read_result() == [(str(i),)], i
            assert clients[i].read_result() == [(str(-i),)], i
        wait_parked(adm)
        for i in live:
            if i % 2:
                rst_close(clients[i].sock)
            else:
                clients[i].close()
        pfhelpers.wait_until(lambda: len(adm.clients(user)) == 0, LONG, "all gone",
                             lambda: len(adm.clients(user)))
        wait_fds_back(pf, adm, base_fds)
        alive(pf, role)
    finally:
        adm.close()
        for c in clients:
            c.sock.close()


@pytest.mark.parametrize("n", [255, 256, 257, 512, 2048])
def test_stopped_burst_at_batch_edges(proxy, role, n):
    """Exactly n parked clients (around and at multiples of the 256-event batch, so the drain's
    last epoll_wait returns 0, 1 or 255) all speak in one wake-up, half of them a pipelined pair:
    each gets its own answers in order, then all leave at once (every other with a reset) while
    pgfunnel is stopped, and SHOW CLIENTS forgets them all."""
    user = role[0]
    pf = tx_proxy(proxy, role, default_pool_size=4, max_client_conn=n + 50,
                  listen_backlog=4096)
    adm = Admin(pf)
    clients = login_many(pf, role, n, unix_every=3)
    try:
        wait_parked(adm)
        with stopped(pf):
            for i, c in enumerate(clients):
                q = pgwire.fe_query("SELECT 'a%d'" % i)
                c.send(q + pgwire.fe_query("SELECT 'b%d'" % i) if i % 2 else q)
        for i, c in enumerate(clients):
            assert c.read_result() == [("a%d" % i,)], i
            if i % 2:
                assert c.read_result() == [("b%d" % i,)], i
        wait_parked(adm)
        with stopped(pf):
            for i, c in enumerate(clients):
                if i % 2:
                    rst_close(c.sock)
                else:
                    c.close()
        pfhelpers.wait_until(lambda: len(adm.clients(user)) == 0, LONG, "all gone",
                             lambda: len(adm.clients(user)))
        alive(pf, role)
    finally:
        adm.close()
        for c in clients:
            c.sock.close()


def test_park_and_unpark_in_the_same_wake_up(proxy, role):
    """Group A (300) has just been answered and is idle, unparked; group B (300) is parked;
    group C (300) has just been answered too. pgfunnel is stopped for more than the park
    threshold and a janitor tick, during which B and C send a query: on the wake-up the
    janitor parks A and (its bytes unread in the socket) C, and the park set, readable at once,
    gives C its handle back in the same loop iteration, with all of B. Everyone gets its own
    answer; A answers its next query."""
    user = role[0]
    pf = tx_proxy(proxy, role, default_pool_size=4)
    adm = Admin(pf)
    clients = login_many(pf, role, 900)
    a, b, c = clients[0::3], clients[1::3], clients[2::3]
    try:
        wait_parked(adm)
        for i, x in enumerate(a + c):
            x.send(pgwire.fe_query("SELECT %d" % i))
        for i, x in enumerate(a + c):
            assert x.read_result() == [(str(i),)]
        with stopped(pf):
            for i, x in enumerate(b):
                x.send(pgwire.fe_query("SELECT 'b%d'" % i))
            for i, x in enumerate(c):
                x.send(pgwire.fe_query("SELECT 'c%d'" % i))
            # (Timing, not correctness: past the park threshold and a janitor tick.)
            time.sleep(2.2)
        for i, x in enumerate(b):
            assert x.read_result() == [("b%d" % i,)], i
        for i, x in enumerate(c):
            assert x.read_result() == [("c%d" % i,)], i
        for i, x in enumerate(a):
            assert x.simple_query("SELECT 'a%d'" % i) == [("a%d" % i,)], i
        wait_parked(adm)
        for x in clients:
            x.close()
        pfhelpers.wait_until(lambda: len(adm.clients(user)) == 0, LONG, "all gone",
                             lambda: len(adm.clients(user)))
        alive(pf, role)
    finally:
        adm.close()
        for x in clients:
            x.sock.close()


def test_stopped_burst_with_new_logins_and_garbage(proxy, role):
    """While pgfunnel is stopped: 600 parked clients query, 40 new clients connect (their
    startup packets queued), 30 parked clients send a malformed message (a negative length, a
    1 GB length, an unknown type), 30 send a huge header and reset. After the wake-up: the
    queries are answered, the new clients log in and work, the garbage senders are refused
    and closed, and pgfunnel stays up."""
    name, pw = role
    user = name
    n = 600
    pf = tx_proxy(proxy, role, default_pool_size=4, max_client_conn=n + 200)
    adm = Admin(pf)
    good = login_many(pf, role, n)
    bad = login_many(pf, role, 60, unix_every=3)
    fresh = []
    try:
        wait_parked(adm)
        with stopped(pf):
            for i, c in enumerate(good):
                c.send(pgwire.fe_query("SELECT 'g%d'" % i))
            for i, c in enumerate(bad):
                if i % 4 == 0:
                    c.send(b"Q" + (-5).to_bytes(4, "big", signed=True) + b"x")
                elif i % 4 == 1:
                    c.send(b"Q" + (1 << 30).to_bytes(4, "big") + b"SELECT")
                elif i % 4 == 2:
                    c.send(b"\x01" + (8).to_bytes(4, "big") + b"abcd")
                else:
                    c.send(b"Q" + (200 << 20).to_bytes(4, "big") + b"S" * 1000)
                    rst_close(c.sock)
            for i in range(40):
                s = socket.create_connection((pf.host, pf.port), timeout=LONG)
                s.sendall(pgwire.startup_message({"user": name, "database": "appdb"}))
                fresh.append(s)
        for i, c in enumerate(good):
            assert c.read_result() == [("g%d" % i,)], i
        for i, c in enumerate(bad):
            if i % 4 != 3:
                got = read_all(c)
                assert [k for k, _ in got if k in ("D", "Z")] == [], (i, got)
                c.sock.close()
        # The new clients finish their logins on the queued startup packets.
        for s in fresh:
            s.close()
        for i in range(20):
            with connect(pf, role) as c:
                assert c.simple_query("SELECT 'f%d'" % i) == [("f%d" % i,)]
        pfhelpers.wait_until(lambda: len(adm.clients(user)) == n, LONG, "only the good left",
                             lambda: len(adm.clients(user)))
        alive(pf, role)
    finally:
        adm.close()
        for c in good + bad:
            c.sock.close()
        for s in fresh:
            s.close()


# ---------------------------------------------------------------- console in the same wake-up


def test_stopped_burst_with_kill_db_and_console(proxy, postgres, role):
    """Parked clients of two databases query while pgfunnel is stopped, and the console's
    SHOW CLIENTS; KILL victim; SHOW SOCKETS; RELOAD (a smaller pool) are queued for the same
    wake-up. Victims end
    with FATAL 57P01 and a close (never another's rows); survivors get their own answers; fds
    back; after RESUME the victim database takes clients again."""
    name, pw = role
    user = name
    pf = proxy(params={"pool_mode": "transaction", "max_client_conn": 1000,
                       "default_pool_size": 4},
               userlist={name: pw}, databases={"victim": postgres.db_entry("appdb")})
    adm = Admin(pf)
    base_fds = warm_up(pf, adm, role)
    keep = login_many(pf, role, 400)
    vic = login_many(pf, role, 300, db="victim")
    try:
        wait_parked(adm)
        pf.params["default_pool_size"] = 2
        pf.write_ini()
        with stopped(pf):
            for i, c in enumerate(keep):
                c.send(pgwire.fe_query("SELECT 'k%d'" % i))
            for i, c in enumerate(vic):
                if i % 3:
                    c.send(pgwire.fe_query("SELECT 'v%d'" % i))
            adm.send("SHOW CLIENTS")
            adm.send("KILL victim")
            adm.send("SHOW SOCKETS")
            adm.send("RELOAD")
        tags = []
        for _ in range(4):
            t, _, _ = adm.answer()
            tags += t
        assert tags == ["SHOW", "KILL", "SHOW", "RELOAD"], tags
        for i, c in enumerate(keep):
            assert c.read_result() == [("k%d" % i,)], i
        for i, c in enumerate(vic):
            got = read_all(c)
            errs = [pgwire.PgError(pgwire.parse_fields(p)) for k, p in got if k == "E"]
            assert [(e.severity, e.sqlstate) for e in errs] == [("FATAL", "57P01")], (i, got)
            assert own_rows(got) in ([], [("v%d" % i,)]), (i, got)
            c.sock.close()
        assert adm.run("RESUME") == "RESUME"
        with pgwire.connect(pf.host, pf.port, name, "victim", pw, timeout=LONG) as c:
            assert c.simple_query("SELECT 'again'") == [("again",)]
        pfhelpers.wait_until(lambda: len(adm.clients(user)) == len(keep), LONG,
                             "victims gone", lambda: len(adm.clients(user)))
        for c in keep:
            c.close()
        pfhelpers.wait_until(lambda: len(adm.clients(user)) == 0, LONG, "all gone")
        wait_fds_back(pf, adm, base_fds)
        alive(pf, role)
    finally:
        adm.close()
        for c in keep + vic:
            c.sock.close()


@pytest.mark.parametrize("cmd", ["PAUSE", "SUSPEND"])
def test_stopped_burst_while_paused_or_suspended(proxy, role, cmd):
    """PAUSE (or SUSPEND) queued on the same wake-up as 600 parked clients' queries and 100
    resets: nothing is answered until RESUME (the unparked sockets wait, read or not), the
    resets are noticed after RESUME at the latest, then every survivor gets its own answer."""
    user = role[0]
    pf = tx_proxy(proxy, role, default_pool_size=3)
    adm = Admin(pf)
    clients = login_many(pf, role, 700)
    try:
        for c in clients[:3]:
            c.simple_query("SELECT 1")
        wait_parked(adm)
        with stopped(pf):
            adm.send(cmd)
            for i, c in enumerate(clients):
                if i % 7 == 6:
                    rst_close(c.sock)
                else:
                    c.send(pgwire.fe_query("SELECT 'p%d'" % i))
        tags, _, _ = adm.answer()
        assert tags == [cmd], tags
        live = [i for i in range(len(clients)) if i % 7 != 6]
        for i in live[::50]:
            assert clients[i].is_silent(0.2), "answered while %s" % cmd
        assert adm.run("SHOW CLIENTS") == "SHOW"
        assert adm.run("RESUME") == "RESUME"
        for i in live:
            assert clients[i].read_result() == [("p%d" % i,)], i
        pfhelpers.wait_until(lambda: len(adm.clients(user)) == len(live), LONG,
                             "the reset ones gone", lambda: len(adm.clients(user)))
        alive(pf, role)
    finally:
        adm.close()
        for c in clients:
            c.sock.close()


# ---------------------------------------------------------------- one server, reset query


def test_stopped_burst_on_one_server_with_reset(proxy, role):
    """A transaction pool of size 1 with server_reset_query_always and a reset query; 500 parked clients (half extended protocol) wake at once and queue for
    the one server: each gets its own answer in order, and the server's backend never changes."""
    pf = tx_proxy(proxy, role, default_pool_size=1, server_reset_query="DISCARD ALL",
                  server_reset_query_always=1)
    adm = Admin(pf)
    clients = login_many(pf, role, 500)
    try:
        pid = clients[0].simple_query("SELECT pg_backend_pid()")[0][0]
        wait_parked(adm)
        with stopped(pf):
            for i, c in enumerate(clients):
                if i % 2:
                    c.send(pgwire.fe_parse("SELECT $1::int * 3, pg_backend_pid()") +
                           pgwire.fe_bind(params=(str(i),)) + pgwire.fe_execute() +
                           pgwire.fe_sync())
                else:
                    c.send(pgwire.fe_query("SELECT %d, pg_backend_pid()" % i))
        for i, c in enumerate(clients):
            if i % 2:
                msgs = c.read_until_ready(LONG)
                assert [k for k, _ in msgs] == ["1", "2", "D", "C", "Z"], (i, msgs)
                assert own_rows(msgs) == [(str(3 * i), pid)], i
            else:
                assert c.read_result() == [(str(i), pid)], i
        alive(pf, role)
    finally:
        adm.close()
        for c in clients:
            c.close()


# ---------------------------------------------------------------- fd pressure


def fd_total(pf):
    return len(os.listdir("/proc/%d/fd" % pf.pid))


def test_burst_under_fd_pressure(proxy, role):
    """pgfunnel runs with a hard fd limit of 320 and is filled up to it with parked clients (a
    few left over are taken by new clients), so that a park's dup, an accept and a server login
    all meet EMFILE; then every parked client queries in the same wake-up while 60 more try to
    connect. Each parked one is answered on the servers already open, they cannot park again
    (no fd for the dup) yet keep working, pgfunnel stays up, and the fds come back."""
    name, pw = role
    user = name
    limit = 320
    pf = proxy(params={"pool_mode": "transaction", "max_client_conn": 1000,
                       "default_pool_size": 4},
               userlist={name: pw}, wrapper=["prlimit", "--nofile=%d:%d" % (limit, limit), "--"])
    adm = Admin(pf)
    base_fds = warm_up(pf, adm, role)
    clients, extra = [], []
    try:
        # Four servers open (four clients in a transaction at once).
        four = login_many(pf, role, 4)
        for c in four:
            c.simple_query("BEGIN")
        for c in four:
            c.simple_query("COMMIT")
        clients += four
        wait_parked(adm)
        # Parked clients up to the limit, less two (each park dups while the original lives).
        while fd_total(pf) < limit - 2:
            clients.append(connect(pf, role))
        wait_parked(adm)
        # Two more without a park (no fd to dup for them): the table is full.
        for _ in range(2):
            try:
                clients.append(pgwire.connect(pf.host, pf.port, name, "appdb", pw, timeout=5))
            except (OSError, pgwire.ProtocolError, pgwire.PgError):
                break
        n = len(clients)
        assert fd_total(pf) >= limit - 1, fd_total(pf)
        with stopped(pf):
            for i, c in enumerate(clients):
                c.send(pgwire.fe_query("SELECT 'e%d'" % i))
            for _ in range(60):
                try:
                    extra.append(socket.create_connection((pf.host, pf.port), timeout=2))
                except OSError:
                    break
        for i, c in enumerate(clients):
            assert c.read_result() == [("e%d" % i,)], i
        # Through a couple of janitor ticks (parks that cannot dup), and again.
        if not BEYOND:
            pfhelpers.wait_for(lambda: unparked_count(adm) < 5, 3.0)
        # The pressure was real: the table stayed full, and the clients could not park again.
        assert fd_total(pf) >= limit - 1, fd_total(pf)
        if not BEYOND:
            assert unparked_count(adm) > n // 2, unparked_count(adm)
        for i, c in enumerate(clients):
            assert c.simple_query("SELECT 'again%d'" % i) == [("again%d" % i,)], i
        assert pf.is_running()
        for s in extra:
            s.close()
        for c in clients:
            c.close()
        pfhelpers.wait_until(lambda: len(adm.clients(user)) == 0, LONG, "all gone",
                             lambda: len(adm.clients(user)))
        wait_fds_back(pf, adm, base_fds)
        assert n > 250
        alive(pf, role)
    finally:
        adm.close()
        for c in clients:
            c.sock.close()
        for s in extra:
            s.close()


# ---------------------------------------------------------------- timeouts and cancels


def test_stopped_burst_meets_client_idle_timeout(proxy, role):
    """client_idle_timeout 3: 400 parked clients all send a query in the wake-up in which their
    idle timeout also falls due (pgfunnel stopped across the deadline). Each client gets its
    own answer or the idle-timeout FATAL (never another's rows, never a hang), and is closed in
    the end; nobody is left behind and pgfunnel stays up."""
    user = role[0]
    n = 400
    pf = tx_proxy(proxy, role, default_pool_size=4, client_idle_timeout=3)
    adm = Admin(pf)
    clients = login_many(pf, role, n)
    try:
        # Every request_time within a few milliseconds.
        for i, c in enumerate(clients):
            c.send(pgwire.fe_query("SELECT 0"))
        for c in clients:
            assert c.read_result() == [("0",)]
        t0 = time.monotonic()
        wait_parked(adm)
        # (Timing, not correctness: either outcome below is right.)
        time.sleep(max(0.0, t0 + 2.9 - time.monotonic()))
        with stopped(pf):
            for i, c in enumerate(clients):
                c.send(pgwire.fe_query("SELECT 'i%d'" % i))
            time.sleep(0.4)
        answered = fatal = 0
        for i, c in enumerate(clients):
            got = read_all(c)
            rows = own_rows(got)
            assert rows in ([], [("i%d" % i,)]), (i, got)
            for k, p in got:
                if k == "E":
                    e = pgwire.PgError(pgwire.parse_fields(p))
                    assert e.severity == "FATAL" and "client_idle_timeout" in e.message, \
                        (i, e.fields)
                    fatal += 1
            answered += len(rows)
            c.sock.close()
        assert fatal > 0
        pfhelpers.wait_until(lambda: len(adm.clients(user)) == 0, LONG, "all gone",
                             lambda: len(adm.clients(user)))
        pfhelpers.wait_until(lambda: pools_idle(adm, user), LONG, "servers idle")
        alive(pf, role)
    finally:
        adm.close()
        for c in clients:
            c.sock.close()


def test_stopped_burst_with_cancel_requests(proxy, role):
    """300 parked clients: in one wake-up, half of them send a query and a CancelRequest for
    each of those arrives on a new connection; the other half get a CancelRequest while parked
    and idle. Each query ends with its own answer or a 57014 cancel (then ReadyForQuery); the
    idle ones, whose cancels found nothing to cancel, answer their next query normally."""
    user = role[0]
    n = 300
    pf = tx_proxy(proxy, role, default_pool_size=4, listen_backlog=1024)
    adm = Admin(pf)
    clients = login_many(pf, role, n)
    cancels = []
    try:
        wait_parked(adm)
        with stopped(pf):
            for i, c in enumerate(clients):
                if i % 2 == 0:
                    c.send(pgwire.fe_query("SELECT 'c%d'" % i))
            for i, c in enumerate(clients):
                pid, secret = c.backend_key
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) if i % 3 == 0 else \
                    socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.settimeout(LONG)
                if i % 3 == 0:
                    s.connect(os.path.join(pf.unix_socket_dir, ".s.PGSQL.%d" % pf.port))
                else:
                    s.connect((pf.host, pf.port))
                s.sendall(struct.pack("!IIII", 16, 80877102, pid, secret))
                cancels.append(s)
        for s in cancels:
            try:
                while s.recv(1024):
                    pass
            except OSError:
                pass
            s.close()
        for i, c in enumerate(clients):
            if i % 2:
                continue
            msgs = c.read_until_ready(LONG)
            rows = own_rows(msgs)
            errs = [pgwire.PgError(pgwire.parse_fields(p)) for k, p in msgs if k == "E"]
            if errs:
                assert [e.sqlstate for e in errs] == ["57014"] and rows == [], (i, msgs)
            else:
                assert rows == [("c%d" % i,)], (i, msgs)
        wait_parked(adm)
        for i, c in enumerate(clients):
            if i % 2:
                assert c.simple_query("SELECT 'n%d'" % i) == [("n%d" % i,)], i
        for c in clients:
            c.close()
        pfhelpers.wait_until(lambda: len(adm.clients(user)) == 0, LONG, "all gone")
        alive(pf, role)
    finally:
        adm.close()
        for c in clients:
            c.sock.close()
        for s in cancels:
            s.close()
