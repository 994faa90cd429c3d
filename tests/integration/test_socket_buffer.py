"""Socket options of the listeners: tcp_socket_buffer sizes the kernel buffers before the TCP
handshake, and a RELOAD of it or of tcp_defer_accept reaches the listening sockets.

The window the two ends agree on (its scale, the first size advertised) follows the receive
buffer at handshake time. pgfunnel used to size a socket after it was connected: the peer had
been told it may send more than the shrunk buffer holds, the kernel dropped the excess, the
peer's ACKs riding on it included, and the peer waited for its retransmission timer. Answers
crawled at 0.2 s per window (a 6 MB pipeline took over two minutes at 16384 against PgBouncer's
1.3 s), and a client pipelining named prepared statements in small pieces could stall for good.
Now a listening socket is sized before listen() (accepted sockets inherit it; a RELOAD resizes
the listeners) and a server socket before connect(). Needs `ss` (iproute2)."""

import random
import re
import socket
import subprocess
import threading
import time

import pytest

import pfhelpers
import pgwire
from test_admin_control import Admin
from test_zz_attack_park import alive, connect, tx_proxy
from test_zz_attack_smallbuf import read_rows, send_randomly_cut

LONG = 30.0


@pytest.fixture
def role(postgres):
    return pfhelpers.new_role(postgres, "sockbuf")


def pf_sockets(pf, filt):
    """[(rb, tb, rcv_wscale)] of pgfunnel's established TCP sockets that match the ss filter."""
    out = subprocess.run(["ss", "-Htmnip", "state", "established", filt], check=True,
                         capture_output=True, text=True, timeout=10).stdout
    res, cur = [], None
    for line in out.splitlines():
        if not line.startswith((" ", "\t")):
            cur = ("pid=%d," % pf.pid) in line
            continue
        if not cur:
            continue
        mem = re.search(r"skmem:\(r\d+,rb(\d+),t\d+,tb(\d+)", line)
        ws = re.search(r"wscale:(\d+),(\d+)", line)
        assert mem and ws, line
        res.append((int(mem.group(1)), int(mem.group(2)), int(ws.group(2))))
    return res


def client_side(pf, c):
    return pf_sockets(pf, "( sport = :%d and dport = :%d )" % (pf.port, c.sock.getsockname()[1]))


def server_side(pf, postgres):
    return pf_sockets(pf, "( dport = :%d )" % postgres.port)


def test_sockets_are_sized_before_the_handshake(proxy, role, postgres):
    """tcp_socket_buffer=4096: pgfunnel's socket to a client and to the server have 4096-byte
    buffers (the kernel shows twice that), and a receive window scale of 0 (a window scaled
    for a 4 KB buffer, as only a buffer sized before the handshake gives; sized after it, the
    scale is the default buffer's, 7 or more)."""
    pf = tx_proxy(proxy, role, tcp_socket_buffer=4096, server_lifetime=3600)
    c = connect(pf, role)
    try:
        assert c.simple_query("SELECT 1") == [("1",)]
        assert client_side(pf, c) == [(8192, 8192, 0)]
        servers = server_side(pf, postgres)
        assert servers and all(s == (8192, 8192, 0) for s in servers), servers
    finally:
        c.close()


@pfhelpers.beyond_pgbouncer("a RELOAD of tcp_socket_buffer resizes the listening sockets")
def test_reload_sizes_the_sockets_of_new_clients(proxy, role):
    """tcp_socket_buffer 0 -> 4096 by RELOAD: a client connected before keeps the default
    buffers; one connected after gets 4096-byte ones, sized before its handshake."""
    pf = tx_proxy(proxy, role)
    adm = Admin(pf)
    before = connect(pf, role)
    try:
        old = client_side(pf, before)
        assert len(old) == 1 and old[0][2] > 0 and old[0][0] > 8192, old
        pf.params["tcp_socket_buffer"] = 4096
        pf.write_ini()
        assert adm.run("RELOAD") == "RELOAD"
        after = connect(pf, role)
        try:
            assert after.simple_query("SELECT 'after'") == [("after",)]
            assert client_side(pf, after) == [(8192, 8192, 0)]
            assert client_side(pf, before) == old
            assert before.simple_query("SELECT 'before'") == [("before",)]
        finally:
            after.close()
    finally:
        before.close()
        adm.close()


@pytest.mark.parametrize("size", [4096, 16384])
def test_small_buffers_carry_big_pipelined_answers(proxy, role, size):
    """Four clients each pipeline 150 queries (100..3000 bytes) answering 40 KB each, sent in
    randomly cut pieces while they read: every answer arrives in order within the deadline
    (before the fix, 16384 took 130 s a round and 4096 stalled)."""
    pf = tx_proxy(proxy, role, tcp_socket_buffer=size, sbuf_loopcnt=1)

    def run(cid):
        rng = random.Random(size + cid)
        c = connect(pf, role)
        try:
            for rnd in range(2):
                msgs, expect = [], []
                for i in range(150):
                    tag = "b%d_%d_%d" % (cid, rnd, i)
                    pad = "p" * rng.randint(100, 3000)
                    msgs.append(pgwire.fe_query(
                        "SELECT '%s', repeat('x', 40000), '%s'" % (tag, pad)))
                    expect.append([(tag, "x" * 40000, pad)])
                t = threading.Thread(target=send_randomly_cut,
                                     args=(rng, c, b"".join(msgs)))
                start = time.monotonic()
                t.start()
                got = read_rows(c, len(expect), LONG)
                took = time.monotonic() - start
                t.join(LONG)
                assert not t.is_alive()
                assert got == expect, (cid, rnd)
                # 6 MB of answers: about a second here; 130 s when the buffers were sized
                # after the handshake.
                assert took < LONG, (cid, rnd, took)
        finally:
            c.close()

    assert pfhelpers.run_clients(4, run, LONG * 4) == []
    alive(pf, role)


def login_clients(adm):
    return int({r["list"]: r["items"] for r in adm.show("LISTS")}["login_clients"])


def test_reload_of_tcp_defer_accept_reaches_the_listeners(proxy, role):
    """tcp_defer_accept 0 -> 30 -> 0 by RELOAD. A connection that sends nothing is accepted at
    once with 0 (a login client); with 30 it is not, while a client that connects after it and
    sends its startup packet is (had the RELOAD not reached the listener, the silent one, first
    in the accept queue, would have been accepted before it); back to 0, a silent one is
    accepted again."""
    pf = tx_proxy(proxy, role, tcp_defer_accept=0)
    adm = Admin(pf)
    silent = []
    try:
        def reload(secs):
            pf.params["tcp_defer_accept"] = secs
            pf.write_ini()
            assert adm.run("RELOAD") == "RELOAD"

        def connect_silent():
            s = socket.create_connection((pf.host, pf.port), timeout=LONG)
            silent.append(s)

        base = login_clients(adm)
        connect_silent()
        pfhelpers.wait_until(lambda: login_clients(adm) == base + 1, LONG,
                             "a silent connection accepted with tcp_defer_accept=0")
        reload(30)
        connect_silent()
        with connect(pf, role) as c:
            assert c.simple_query("SELECT 'talks'") == [("talks",)]
        assert login_clients(adm) == base + 1
        reload(0)
        connect_silent()
        pfhelpers.wait_until(lambda: login_clients(adm) == base + 2, LONG,
                             "a silent connection accepted after tcp_defer_accept went back to 0")
    finally:
        for s in silent:
            s.close()
        adm.close()


def test_a_client_stopped_with_a_full_buffer_gets_room_for_acks(proxy, role):
    """tcp_socket_buffer=4096, pool of 1. A client waits for the server (another one holds it in
    a transaction) while pipelining 12 KB: pgfunnel reads until its buffer is full and stops.
    Its socket's receive buffer is then raised to 64 KiB (the kernel shows 131072), though no
    output of ours waits on it yet: once our answers wait for the client's ACKs, tiny segments
    of the client filling an 8 KiB receive queue would get those ACKs dropped for good
    (keep_acks_readable). The client gets all its answers; a client that never stopped keeps
    its 4096 buffer."""
    pf = tx_proxy(proxy, role, tcp_socket_buffer=4096, default_pool_size=1)
    holder, waiter, calm = connect(pf, role), connect(pf, role), None
    try:
        assert holder.simple_query("BEGIN") == []
        n = 120
        waiter.sock.sendall(b"".join(pgwire.fe_query("SELECT %d, '%s'" % (i, "w" * 80))
                                     for i in range(n)))
        raised = pfhelpers.wait_for(lambda: client_side(pf, waiter) == [(131072, 8192, 0)], LONG)
        assert raised, client_side(pf, waiter)
        assert holder.simple_query("COMMIT") == []
        assert read_rows(waiter, n, LONG) == [[(str(i), "w" * 80)] for i in range(n)]
        calm = connect(pf, role)
        assert calm.simple_query("SELECT 'calm'") == [("calm",)]
        assert client_side(pf, calm) == [(8192, 8192, 0)]
    finally:
        for c in (holder, waiter, calm):
            if c:
                c.close()
