"""Red team of the drain rule (conn.c must_drain / drain_room: a conn whose buffer is full keeps
reading into a bigger one, up to 64 KiB, while output of ours waits on its socket) and of
suspend_holds (SUSPEND stops reading a conn only once nothing of ours is queued to it).

Attacks, as hostile clients and a hostile server, with raw sockets and TCP_NODELAY:
- SUSPEND while a client streams a pipeline and reads (SUSPEND must answer; nothing is
  executed once it has), and with more clients than servers (10 clients, pool of 2, most
  waiting for a server: nothing answered until RESUME, then everyone's rows in order);
- many prep_wait clients that pipeline in 1..200-byte pieces and never read (RSS per client
  bounded, others served), then reset or half-close while their drain buffer is in use;
- clients in login that flood without reading (bounded by pkt_buf);
- pipelines beyond the drain cap behind a held Parse, read slowly;
- a 200 KB message (Query, named Parse held whole, Bind) in a drained pipeline, and a
  1.1 MB named Parse there (refused: 54000);
- a fake server that floods a client with DataRows and never reads again;
- a TLS client drained while it does not read.
Transaction, statement and session mode. Meant for the ASan build (PGFUNNEL_SANITIZED=1,
or detected from the binary by conftest.py: its gate fails a test on any sanitizer
report)."""

import os
import random
import select
import socket
import ssl
import struct
import threading
import time

import pytest

import pfhelpers
import pgwire
from test_admin_control import Admin
from test_zz_attack14 import rst_close
from test_zz_attack_park import alive, tx_proxy
from test_zz_attack_sockbuf import (Duplex, answers, login_raw, plain_pipeline, pools_quiet,
                                    prep_pipeline, small_rcvbuf)
from test_zz_attack_tls import certs  # noqa: F401 - a fixture, used by name
from test_zz_attack_tls import login as tls_login_role
from test_zz_attack_tls import start_tls, still_serves

LONG = 30.0
TINY = {"sbuf_loopcnt": 1, "pkt_buf": 4096, "max_prepared_statements": 100,
        "tcp_socket_buffer": 4096}


@pytest.fixture
def role(postgres):
    return pfhelpers.new_role(postgres, "adrain")


def nodelay(sock):
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def wait_steady(value, what, interval):
    """Waits (deadline LONG) until value() is the same twice interval seconds apart."""
    last = [object()]

    def same():
        now = value()
        if now == last[0]:
            return True
        last[0] = now
        return False
    pfhelpers.wait_until(same, LONG, what, interval=interval)


class Trickler:
    """One thread that sends each socket's data in 1..200-byte pieces (TCP_NODELAY), round
    robin, without ever reading, until stopped or everything went; sent[i] says how much.
    Plain or ssl sockets: a piece the TLS layer could not take is offered again as it was (an
    SSL write must be retried with the same bytes), so whoever goes on after finish() sends
    data[sent[i]:] in pieces of at least 200 bytes."""

    def __init__(self, socks, datas, seed=0):
        self.socks, self.datas = socks, datas
        self.sent = [0] * len(socks)
        self.piece = [None] * len(socks)
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.dead = set()
        for s in socks:
            nodelay(s)
            s.setblocking(False)
        self.t = threading.Thread(target=self._run, daemon=True)

    def _send(self, i, s):
        """One piece; False when the socket takes nothing now."""
        if self.piece[i] is None:
            n = self.rng.choice((1, 2, 3, 7, 50, 200))
            self.piece[i] = self.datas[i][self.sent[i]:self.sent[i] + n]
        try:
            k = s.send(self.piece[i])
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return False
        except OSError:
            self.dead.add(i)
            return False
        self.sent[i] += k
        self.piece[i] = None if k == len(self.piece[i]) else self.piece[i][k:]
        return True

    def _run(self):
        while not self.stop.is_set():
            moved = False
            for i, s in enumerate(self.socks):
                if i in self.dead or self.sent[i] >= len(self.datas[i]):
                    continue
                for _ in range(8):
                    if not self._send(i, s):
                        break
                    moved = True
            if not moved:
                ready = [s for i, s in enumerate(self.socks)
                         if i not in self.dead and self.sent[i] < len(self.datas[i])]
                if not ready:
                    return
                select.select([], ready, [], 0.05)

    def start(self):
        self.t.start()
        return self

    def total(self):
        return sum(self.sent)

    def wait_stuck(self, what):
        """Until nothing more went for a second (the kernel buffers on both sides full)."""
        wait_steady(self.total, what, 1.0)

    def finish(self):
        self.stop.set()
        self.t.join(LONG)


# ---------------------------------------------------------------- SUSPEND while a client streams


def stream_pipeline(tag, n, answer, pad):
    """n simple queries of about pad bytes answering `answer` bytes each; also the offset
    where each query ends."""
    msgs = [pgwire.fe_query("SELECT '%s.%d', repeat('b', %d) -- %s" % (tag, i, answer, "q" * pad))
            for i in range(n)]
    ends, pos = [], 0
    for m in msgs:
        pos += len(m)
        ends.append(pos)
    return b"".join(msgs), [[("%s.%d" % (tag, i), "b" * answer)] for i in range(n)], ends


class Stream:
    """Sends data in pieces and reads (recv_size per read, pause after each) in one thread;
    keeps when each ReadyForQuery came and how much had been sent by then."""

    def __init__(self, sock, data, n_ready, sizes, recv_size, pause, seed=5):
        self.sock, self.data, self.n_ready = sock, data, n_ready
        self.sizes, self.recv_size, self.pause = sizes, recv_size, pause
        self.rng = random.Random(seed)
        self.msgs, self.buf, self.pos, self.zs, self.error = [], b"", 0, [], None
        self.frozen_at = None  # (time, pos) once told
        self.t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        from test_zz_attack_sockbuf import parse_messages
        s, deadline = self.sock, time.monotonic() + LONG * 4
        s.setblocking(False)
        try:
            while len(self.zs) < self.n_ready:
                if time.monotonic() > deadline:
                    raise TimeoutError("%d of %d answers" % (len(self.zs), self.n_ready))
                moved = False
                if self.pos < len(self.data):
                    try:
                        self.pos += s.send(
                            self.data[self.pos:self.pos + self.rng.choice(self.sizes)])
                        moved = True
                    except BlockingIOError:
                        pass
                try:
                    chunk = s.recv(self.recv_size)
                    if not chunk:
                        raise EOFError("EOF after %d answers" % len(self.zs))
                    self.buf += chunk
                    got, self.buf = parse_messages(self.buf)
                    self.msgs.extend(got)
                    now = time.monotonic()
                    self.zs.extend((now, self.pos) for k, _ in got if k == "Z")
                    moved = True
                    if self.pause:
                        time.sleep(self.pause)
                except BlockingIOError:
                    pass
                if not moved:
                    select.select([s], [s] if self.pos < len(self.data) else [], [], 0.05)
        except Exception as e:  # noqa: BLE001
            self.error = repr(e)[:1500]

    def start(self):
        self.t.start()
        return self


@pytest.mark.parametrize("mode,slow", [("session", False), ("transaction", True)])
def test_suspend_answers_while_a_client_streams(proxy, role, mode, slow):
    """A client streams a long pipeline (1 KB queries answering 2 KB, in 1..4096-byte pieces,
    TCP_NODELAY) while reading (fast, or 4 KB per 3 ms); SUSPEND is sent mid-stream
    (suspend_timeout=60). SUSPEND must answer within a few seconds, and once it has, nothing
    the client sent after that is executed before RESUME (no answer to a query whose last
    byte the client sent after the SUSPEND answer arrives before RESUME). After RESUME the
    client gets all its answers in order."""
    pf = tx_proxy(proxy, role, pool_mode=mode, suspend_timeout=60, sbuf_loopcnt=1,
                  tcp_socket_buffer=4096, default_pool_size=2)
    adm = Admin(pf)
    n = 2500
    data, expect, ends = stream_pipeline("s", n, 2000, 1000)
    c = login_raw(pf, role)
    nodelay(c.sock)
    st = Stream(c.sock, data, n, (1, 50, 200, 4096), 4096 if slow else 65536,
                0.003 if slow else 0).start()
    try:
        pfhelpers.wait_until(lambda: len(st.zs) > 300, LONG, "the stream going")
        t0 = time.monotonic()
        adm.send("SUSPEND")
        tags = adm.answer(LONG * 2)[0]
        t1 = time.monotonic()
        st.frozen_at = (t1, st.pos)  # st.pos only grows: at least what was sent by t1
        answered_then = len(st.zs)
        assert tags == ["SUSPEND"]
        # What pgfunnel had flushed by then reaches the client; then nothing until RESUME.
        wait_steady(lambda: len(st.zs), "client drained", 0.7)
        t2, quiet = time.monotonic(), len(st.zs)
        more = pfhelpers.wait_for(lambda: len(st.zs) != quiet, 2.0)
        after = [(round(z[0] - t1, 3), i) for i, z in enumerate(st.zs) if z[0] > t1]
        print("\nSUSPEND after %.2f s; answers then %d; %d answers came after it, over %.2f s "
              "(%r ... %r); quiet at %d, then %s" % (
                  t1 - t0, answered_then, len(after), t2 - t1, after[:2], after[-2:], quiet,
                  "more: %d" % len(st.zs) if more else "none"))
        assert adm.run("RESUME") == "RESUME"
        st.t.join(LONG * 4)
        assert st.error is None, st.error
        assert answers(st.msgs) == expect
        assert t1 - t0 < 5.0, "SUSPEND took %.2f s" % (t1 - t0)
        assert not more, "answers came while suspended after %.2f s of quiet" % (t2 - t1)
        # Answered after SUSPEND's answer, before RESUME: only queries sent before it (what
        # pgfunnel had read by then; how many depends on the kernel buffers, whose bytes
        # SUSPEND flushes first: 195 answers of 2 KB were seen).
        late = [i for _, i in after if i < quiet and ends[i] > st.frozen_at[1]]
        assert not late, "queries sent after SUSPEND answered were answered before RESUME: " \
            "%r (sent by then: %d bytes)" % (late[:5], st.frozen_at[1])
    finally:
        adm.close()
        c.sock.close()
    alive(pf, role)


# ---------------------------------------------------------------- memory: drained never-readers


@pytest.mark.parametrize("mode,sockbuf", [("transaction", 4096), ("statement", 0)])
def test_never_reading_prep_wait_clients_memory(proxy, role, mode, sockbuf):
    """24 clients each send a Query answering 3 MB and a named Parse behind it (prep_wait;
    in session mode a Query answering 3 MB then more queries), then trickle 1..200-byte
    pieces of Bind/Execute/Sync rounds (TCP_NODELAY) and never read: each one's output stays
    queued, so its buffer drains up to 64 KiB. pgfunnel's RSS grows well under 100 KiB per
    client, another client is served quickly meanwhile; then half reset, half half-close and
    reset, and every client goes."""
    name, pw = role
    params = dict(TINY, pool_mode=mode, default_pool_size=30, max_client_conn=200)
    if sockbuf:
        params["tcp_socket_buffer"] = sockbuf
    else:
        params.pop("tcp_socket_buffer")
    pf = tx_proxy(proxy, role, **params)
    adm = Admin(pf)
    alive(pf, role)
    rss0 = pfhelpers.proc_rss_kib(pf.pid)
    n = 24
    conns, datas = [], []
    try:
        for i in range(n):
            c = login_raw(pf, role, rcvbuf=4096)
            if mode == "statement":
                data, _ = plain_pipeline("m%d" % i, 1, 3 * 1024 * 1024)
                data += plain_pipeline("n%d" % i, 3000, 300)[0]
            else:
                data, _ = prep_pipeline("m%d" % i, 3 * 1024 * 1024, 600 * 1024, pad=40)
            conns.append(c)
            datas.append(data)
        tr = Trickler([c.sock for c in conns], datas, seed=7).start()
        try:
            tr.wait_stuck("the tricklers stuck")
            t0 = time.monotonic()
            with pgwire.connect(pf.host, pf.port, name, "postgres", pw, timeout=LONG) as o:
                assert o.simple_query("SELECT 'other'") == [("other",)]
            served = time.monotonic() - t0
            rss1 = pfhelpers.proc_rss_kib(pf.pid)
        finally:
            tr.finish()
        per = (rss1 - rss0) / n
        print("\nRSS %d -> %d KiB: %.1f KiB per never-reading client (sent %.1f MB); "
              "another client served in %.2f s" % (rss0, rss1, per, tr.total() / 1e6, served))
        assert served < 5.0
        # Well under 100 KiB per client: the 64 KiB drain buffer a never-reading client keeps
        # plus its usual ~10 KiB (74.5 measured on a release build). Under ASan each client
        # also costs redzones and the quarantined 8/16/32 KiB buffers it outgrew (186 KiB
        # measured in transaction mode), hence 300 there: a bound, not the figure.
        limit = 300 if os.environ.get("PGFUNNEL_SANITIZED") == "1" else 100
        assert per < limit, "RSS grew %.1f KiB per client" % per
        for i, c in enumerate(conns):
            if i % 2:
                rst_close(c.sock)
            else:
                c.sock.shutdown(socket.SHUT_WR)
                rst_close(c.sock)
        pfhelpers.wait_until(lambda: len(adm.clients(name)) == 0, LONG, "clients gone",
                             lambda: adm.clients(name))
        pfhelpers.wait_until(lambda: pools_quiet(adm, name), LONG, "pool quiet")
    finally:
        adm.close()
        for c in conns:
            try:
                c.sock.close()
            except OSError:
                pass
    alive(pf, role)


def test_login_flooders_bounded_by_pkt_buf(proxy, role):
    """40 clients send a startup packet, then a password message whose header says 4000 bytes
    (under pkt_buf=4096) and all of it but its last byte in 1..200-byte pieces (TCP_NODELAY),
    reading nothing: a client logging in holds no more than pkt_buf (hold_max before login,
    no drain), so once they are stuck RSS has grown well under pkt_buf x 4 per client (x 8
    under ASan: redzones). Each then sends the last byte and gets FATAL (28P01 or 08P01) and
    EOF; pgfunnel serves others throughout.
    (Complete small password messages, as an earlier version sent, are refused at the first
    one: nothing was held, and what was measured was ASan's quarantine of refused logins.)"""
    name, _ = role
    pf = tx_proxy(proxy, role, pkt_buf=4096, tcp_socket_buffer=4096, max_client_conn=200)
    alive(pf, role)
    rss0 = pfhelpers.proc_rss_kib(pf.pid)
    socks, datas = [], []
    msg = pgwire.message(b"p", b"x" * 3994 + b"\0")
    for i in range(40):
        s = pgwire.open_socket(pf.host, pf.port, LONG)
        small_rcvbuf(s, 1024)
        s.sendall(pgwire.startup_message({"user": name, "database": "appdb"}))
        datas.append(msg[:-1])
        socks.append(s)
    tr = Trickler(socks, datas, seed=3).start()
    try:
        pfhelpers.wait_until(lambda: tr.total() == 40 * (len(msg) - 1) or tr.dead, LONG,
                             "the flooders' messages sent", lambda: tr.sent)
        assert not tr.dead, "%d flooders cut off before their message ended" % len(tr.dead)
        ports = {s.getsockname()[1] for s in socks}

        def holding():
            return [r for r in pfhelpers.show(pf, "SOCKETS")
                    if r["type"] == "C" and int(r["port"]) in ports and
                    int(r["pkt_avail"]) >= len(msg) - 1]
        pfhelpers.wait_until(lambda: len(holding()) == 40, LONG,
                             "pgfunnel holding each flooder's message", holding)
        rss1 = pfhelpers.proc_rss_kib(pf.pid)
        alive(pf, role)
    finally:
        tr.finish()
    per = (rss1 - rss0) / 40
    print("\nlogin flooders: RSS %d -> %d KiB, %.1f KiB each (sent %.1f KB)" % (
        rss0, rss1, per, tr.total() / 1e3))
    sqlstates = []
    for s in socks:
        s.setblocking(True)
        s.settimeout(LONG)
        s.sendall(msg[-1:])
        buf = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except ConnectionResetError:
            pass
        got = pgwire.split_messages(buf)[0]
        errors = [pgwire.parse_fields(p) for k, p in got if k == "E"]
        sqlstates.append(errors[-1].get("C") if errors else "EOF")
        s.close()
    assert set(sqlstates) <= {"28P01", "08P01"}, sqlstates
    limit = 32 if os.environ.get("PGFUNNEL_SANITIZED") == "1" else 16
    assert per < limit, "RSS grew %.1f KiB per client logging in" % per
    alive(pf, role)


# ---------------------------------------------------------------- beyond the drain cap


@pytest.mark.parametrize("mode,sockbuf", [("transaction", 4096), ("transaction", 0),
                                          ("statement", 4096)])
def test_pipeline_beyond_drain_cap_behind_held_parse(proxy, role, mode, sockbuf):
    """A Query answering 4 MB, a named Parse behind it (held: prep_wait), then 400 KB of
    Bind/Execute/Sync rounds in 1..200-byte pieces (TCP_NODELAY) while reading 1 KB at a
    time: far more than the 64 KiB a drain may hold. Once the buffer is at its cap the conn
    stops reading again; the client's tiny segments must not stall the 4 MB answer for good.
    The client gets all its answers in order, within the deadline."""
    params = dict(TINY, pool_mode=mode)
    if sockbuf:
        params["tcp_socket_buffer"] = sockbuf
    else:
        params.pop("tcp_socket_buffer")
    pf = tx_proxy(proxy, role, **params)
    c = login_raw(pf, role)
    nodelay(c.sock)
    try:
        # (With tcp_socket_buffer=4096 the answer crawls at ~0.13 MB/s, on the old code too.)
        answer = (1 if sockbuf else 4) * 1024 * 1024
        data, expect = prep_pipeline("b", answer, 400 * 1024, pad=40)
        t0 = time.monotonic()
        got = answers(Duplex(c.sock, random.Random(11), recv_size=1024, pause=0.0001).run(
            data, len(expect), timeout=90))
        print("\nbeyond the cap: %.1f s" % (time.monotonic() - t0))
        assert got == expect
    finally:
        c.sock.close()
    alive(pf, role)


# ---------------------------------------------------------------- SUSPEND, more clients than pool


def pool_of(adm, db, user):
    return pfhelpers.find_pool(adm.show("POOLS"), db, user)


def test_suspend_with_more_clients_than_servers(proxy, role):
    """default_pool_size=2, 10 clients, each streaming one transaction (BEGIN, 300 queries of
    1 KB answering 2 KB, COMMIT) in 1..4096-byte pieces while reading (fast, or 4 KB per 3 ms):
    2 hold the servers mid-pipeline, the rest wait for one. SUSPEND (suspend_timeout=60) answers
    within 5 s, killing nobody; once the answers pgfunnel had flushed are in, nothing more is
    answered (2 s watched) and the waiting clients still wait; after RESUME every client gets
    all its answers in order, the waiting ones too."""
    name, _ = role
    pf = tx_proxy(proxy, role, suspend_timeout=60, sbuf_loopcnt=1, tcp_socket_buffer=4096,
                  default_pool_size=2, max_client_conn=100)
    adm = Admin(pf)
    n, k = 10, 300
    streams, conns = [], []
    try:
        for i in range(n):
            c = login_raw(pf, role)
            nodelay(c.sock)
            conns.append(c)
        for i, c in enumerate(conns):
            body, expect, _ = stream_pipeline("w%d" % i, k, 2000, 1000)
            data = pgwire.fe_query("BEGIN") + body + pgwire.fe_query("COMMIT")
            slow = i % 2 == 1
            streams.append((Stream(c.sock, data, k + 2, (1, 50, 200, 4096),
                                   4096 if slow else 65536, 0.003 if slow else 0,
                                   seed=i).start(), [[]] + expect + [[]]))

        def mid_pipeline():
            p = pool_of(adm, "appdb", name)
            return (int(p["sv_active"]) == 2 and int(p["cl_waiting"]) >= 6 and
                    max(len(st.zs) for st, _ in streams) > 20)
        pfhelpers.wait_until(mid_pipeline, LONG, "2 clients mid-pipeline, the rest waiting",
                             lambda: pool_of(adm, "appdb", name))
        t0 = time.monotonic()
        adm.send("SUSPEND")
        tags = adm.answer(LONG * 2)[0]
        t1 = time.monotonic()
        assert tags == ["SUSPEND"]
        assert t1 - t0 < 5.0, "SUSPEND took %.2f s (suspend_timeout=60)" % (t1 - t0)
        at_suspend = [len(st.zs) for st, _ in streams]
        wait_steady(lambda: [len(st.zs) for st, _ in streams], "what was flushed delivered",
                    0.7)
        quiet = [len(st.zs) for st, _ in streams]
        more = pfhelpers.wait_for(lambda: [len(st.zs) for st, _ in streams] != quiet, 2.0)
        pool = pool_of(adm, "appdb", name)
        clients = len(adm.clients(name))
        print("\nSUSPEND answered in %.2f s; answers then %s, quiet at %s; pool %s" % (
            t1 - t0, at_suspend, quiet, {f: pool[f] for f in ("cl_active", "cl_waiting",
                                                               "sv_active", "sv_idle")}))
        assert not more, "answers while suspended: %s -> %s" % (
            quiet, [len(st.zs) for st, _ in streams])
        assert clients == n, "%d of %d clients left under SUSPEND" % (clients, n)
        # Clients still waiting for a server (no answer yet) stay so until RESUME.
        waited = [i for i, q in enumerate(quiet) if q == 0]
        assert int(pool["cl_waiting"]) >= 2 and len(waited) >= 2, (pool, quiet)
        assert adm.run("RESUME") == "RESUME"
        for st, _ in streams:
            st.t.join(LONG * 4)
        for i, (st, expect) in enumerate(streams):
            assert st.error is None, (i, st.error)
            assert answers(st.msgs) == expect, i
    finally:
        adm.close()
        for c in conns:
            c.sock.close()
    alive(pf, role)


# ---------------------------------------------------------------- oversize message mid-drain


def big_message(kind, size):
    """A message of about size bytes, and the rows expected per ReadyForQuery it brings: a
    simple Query; a named Parse (held whole: beyond the drain cap) then Bind/Execute/Sync and
    its Close; a Bind carrying it as a parameter of a small named statement."""
    z = "z" * size
    if kind == "query":
        return pgwire.fe_query("SELECT length('%s'), 'bigq'" % z), [[(str(size), "bigq")]]
    if kind == "parse":
        msgs = (pgwire.fe_parse("SELECT length($1::text || '%s')" % z, name="big_p") +
                pgwire.fe_bind(statement="big_p", params=("x",)) + pgwire.fe_execute() +
                pgwire.fe_sync() + pgwire.fe_close("S", "big_p") + pgwire.fe_sync())
        return msgs, [[(str(size + 1),)], []]
    msgs = (pgwire.fe_parse("SELECT length($1::text)", name="big_b") + pgwire.fe_sync() +
            pgwire.fe_bind(statement="big_b", params=(z,)) + pgwire.fe_execute() +
            pgwire.fe_sync() + pgwire.fe_close("S", "big_b") + pgwire.fe_sync())
    return msgs, [[], [(str(size),)], []]


def small_buffers(sock, size=4096):
    """Small kernel buffers both ways: what the client sends waits in its own process, not in
    its kernel, once pgfunnel stops reading it. (size=1 MiB before it reads everything: with
    4 KiB ones the rest would crawl at a few hundred ms per window.)"""
    small_rcvbuf(sock, size)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def read_rest(sock, rest, n, seed, timeout=LONG * 3):
    """The client reads at last: its socket's buffers widened to 1 MiB, it sends rest in
    200..4096-byte pieces while reading until n ReadyForQuery; returns answers()."""
    small_buffers(sock, 1 << 20)
    return answers(Duplex(sock, random.Random(seed), sizes=(200, 1024, 4096), recv_size=65536,
                          pause=0).run(rest, n, timeout=timeout))


def socket_row(pf, sock):
    """pgfunnel's SHOW SOCKETS row of the client whose socket is sock (or None)."""
    port = sock.getsockname()[1]
    rows = [r for r in pfhelpers.show(pf, "SOCKETS") if r["type"] == "C" and
            int(r["port"]) == port]
    return rows[0] if rows else None


def drained_beyond(pf, sock, size):
    """Waits until pgfunnel holds more than size unprocessed bytes of that client (a buffer
    the drain grew: no other one holds more than pkt_buf); returns how many, asserting they
    are within the drain cap (64 KiB)."""
    held = [0]

    def grown():
        r = socket_row(pf, sock)
        held[0] = int(r["pkt_avail"]) if r else 0
        return held[0] > size
    pfhelpers.wait_until(grown, LONG, "the client's buffer drained past %d" % size,
                         lambda: socket_row(pf, sock))
    assert held[0] <= 64 * 1024, "held %d bytes, beyond the drain cap" % held[0]
    return held[0]


@pytest.mark.parametrize("kind", ["query", "parse", "bind"])
def test_oversize_message_mid_drain(proxy, role, kind):
    """A client whose output is blocked (a Query answering 3 MB it does not read) and whose
    input is held (a named Parse behind it: prep_wait) trickles 20 KB of Bind/Execute/Sync
    rounds, then a 200 KB message (a Query; a named Parse, which is held whole: a buffer
    beyond the 64 KiB drain cap; or a Bind carrying a 200 KB parameter), then another such
    pipeline: pgfunnel drains it past pkt_buf (SHOW SOCKETS), serves a canary and a new
    client meanwhile; once the client reads it gets every answer in order, the 200 KB one
    right; no crash, no sanitizer report."""
    name, pw = role
    pf = tx_proxy(proxy, role, **TINY)
    head, expect = prep_pipeline("o1", 512 * 1024, 20 * 1024, pad=40)
    big, big_expect = big_message(kind, 200 * 1000)
    tail, tail_expect = prep_pipeline("o2", 100, 20 * 1024, pad=40)
    data, expect = head + big + tail, expect + big_expect + tail_expect
    c = login_raw(pf, role)
    small_buffers(c.sock)
    try:
        with pfhelpers.Canary(pf, name, "appdb", pw) as canary:
            tr = Trickler([c.sock], [data], seed=13).start()
            try:
                tr.wait_stuck("the client's pipeline stuck")
                held = drained_beyond(pf, c.sock, TINY["pkt_buf"])
                canary.expect_progress()
                t0 = time.monotonic()
                with pgwire.connect(pf.host, pf.port, name, "appdb", pw, timeout=LONG) as o:
                    assert o.simple_query("SELECT 'other'") == [("other",)]
                served = time.monotonic() - t0
            finally:
                tr.finish()
            sent = tr.sent[0]
            print("\n%s: %d of %d bytes sent before the client read; pgfunnel held %d; "
                  "another client served in %.2f s" % (kind, sent, len(data), held, served))
            assert served < 5.0
            assert sent < len(head) + len(big), "the pipeline went through unstopped"
            try:
                got = read_rest(c.sock, data[sent:], len(expect), 14)
            except TimeoutError as e:
                # Held at the drain cap, pgfunnel stops reading this client. Once the client's
                # tiny segments have filled pgfunnel's 4 KiB socket's receive memory before its
                # window, Linux drops every later segment as beyond the window, the client's
                # window updates included (test_zz_attack_suspend_drain.py shows it in a
                # capture), so pgfunnel's output never learns the client reads again: a TCP
                # deadlock that no drain bound can rule out. Seen once in a CI run (ASan,
                # 2026-12-05), in none of 30 runs by hand. Open: see issue 14's stop-26 note.
                # Everyone else must still be served; any other stall fails.
                if held < 64 * 1024:
                    raise
                canary.check()
                alive(pf, role)
                pytest.xfail("stalled behind the drain cap (TCP beyond-window deadlock): %s" % e)
            assert got == expect
            canary.check()
    finally:
        c.sock.close()
    alive(pf, role)


def test_parse_beyond_hold_max_mid_drain(proxy, role):
    """The same drained pipeline with a 1.1 MB named Parse in it: beyond the 1 MiB a message
    may be held whole, it is refused as documented in client.c (FATAL 54000 "prepared
    statement too large to track"). Once the client reads it gets every answer before that
    Parse, in order, then the FATAL (or EOF: closing a socket with the client's input unread
    resets it, which may overtake the FATAL), nothing after; the server goes back clean or
    is closed (the pool is quiet), others are served."""
    name, pw = role
    pf = tx_proxy(proxy, role, **TINY)
    adm = Admin(pf)
    head, expect = prep_pipeline("h1", 512 * 1024, 20 * 1024, pad=40)
    big = pgwire.fe_parse("SELECT '%s'" % ("z" * 1100 * 1000), name="too_big") + pgwire.fe_sync()
    data = head + big + prep_pipeline("h2", 100, 20 * 1024, pad=40)[0]
    c = login_raw(pf, role)
    small_buffers(c.sock)
    try:
        tr = Trickler([c.sock], [data], seed=17).start()
        try:
            tr.wait_stuck("the client's pipeline stuck")
            drained_beyond(pf, c.sock, TINY["pkt_buf"])
        finally:
            tr.finish()
        small_buffers(c.sock, 1 << 20)
        d = Duplex(c.sock, random.Random(18), sizes=(200, 1024, 4096), recv_size=65536, pause=0)
        got = answers(d.run(data[tr.sent[0]:], len(expect) + 1, timeout=LONG * 3,
                            stop_at_error=True))
        kinds = [k for k, _ in d.msgs]
        if "E" in kinds:
            assert kinds[kinds.index("E") + 1:] == [], pgwire.tokens(d.msgs[-4:])
            assert got.pop() == [("E", "54000")], got[-1:]
            assert got == expect, len(got)
        else:
            assert d.eof
            assert got == expect[:len(got)], len(got)
        pf.wait_for_log(r"too large to track", LONG)
        pfhelpers.wait_until(lambda: len(adm.clients(name)) == 0, LONG, "client gone",
                             lambda: adm.clients(name))
        pfhelpers.wait_until(lambda: pools_quiet(adm, name), LONG, "pool quiet")
    finally:
        adm.close()
        c.sock.close()
    alive(pf, role)


# ---------------------------------------------------------------- a server that floods, never reads


class FloodServer:
    """A fake Postgres (pfhelpers.ScriptedServer) that logs pgfunnel in and answers each
    query with one row 'fake-ok', except a query containing 'flood': to that one it sends a
    RowDescription, then DataRows of 200 bytes without end, and never reads again; it stops
    when pgfunnel closes the connection (result 'closed') or after the deadline ('deadline').
    flooded[i] is how many bytes connection i has flooded so far, floods lists the
    connections that flood (in order). Idle, a connection waits for input in 0.2 s steps and
    ends ('stopped') once stop is set."""

    ROW = pgwire.message(b"D", struct.pack("!HI", 1, 200) + b"r" * 200)

    def __init__(self, deadline):
        self.deadline = deadline
        self.flooded, self.floods = {}, []
        self.stop = threading.Event()
        self.srv = pfhelpers.ScriptedServer(self.script)

    @staticmethod
    def desc(peer):
        return peer.message("T", struct.pack("!H", 1) + b"x\0" +
                            struct.pack("!IHIhih", 0, 0, 25, -1, -1, 0))

    def script(self, peer):
        me = len(self.flooded)
        self.flooded[me] = 0
        peer.read_startup()
        peer.auth(0)
        peer.finish_login()
        while True:
            while not peer._buf and not select.select([peer.sock], [], [], 0.2)[0]:
                if self.stop.is_set():
                    return "stopped"
            kind, payload = peer.read_message()
            if kind == "X":
                return "terminated"
            assert kind == "Q", kind
            if b"flood" in payload:
                break
            peer.sock.sendall(self.desc(peer) +
                              peer.message("D", struct.pack("!HI", 1, 7) + b"fake-ok") +
                              peer.message("C", b"SELECT 1\0") + peer.message("Z", b"I"))
        self.floods.append(me)
        peer.sock.sendall(self.desc(peer))
        chunk, pos = self.ROW * 500, 0
        peer.sock.settimeout(0.2)
        end = time.monotonic() + self.deadline
        while time.monotonic() < end and not self.stop.is_set():
            try:
                n = peer.sock.send(chunk[pos:])
            except socket.timeout:
                continue
            except OSError:
                return "closed"
            self.flooded[me] += n
            pos = (pos + n) % len(chunk)
        return "deadline"


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_fake_server_floods_and_never_reads(proxy, role, mode):
    """A fake server answers a client's query with DataRows without end and never reads again;
    the client (4 KB receive buffer) reads nothing and trickles 400 KB more queries (their
    forward to the server waits: that server conn's socket has output of ours queued, so it
    is drained too, up to 64 KiB). pgfunnel's RSS stays bounded once both sides are stuck
    (4 MB; 24 MB under ASan, whose quarantine keeps freed buffers), clients of another pool
    (appdb on the real server) are served meanwhile; the client leaves (RST): pgfunnel closes
    that server (the flood ends on a closed socket), does not give it to the next client
    (whose query gets a new connection and its own answer), and the pool is quiet."""
    name, pw = role
    fake = FloodServer(deadline=LONG * 4)
    try:
        pf = proxy(params={"pool_mode": mode, "tcp_socket_buffer": 4096, "sbuf_loopcnt": 1,
                           "max_client_conn": 100},
                   databases={"fake": fake.srv.db_entry()}, userlist={name: pw})
        adm = Admin(pf)
        try:
            with pgwire.connect(pf.host, pf.port, name, "fake", pw, timeout=LONG) as w:
                assert w.simple_query("SELECT 'warm'") == [("fake-ok",)]
            alive(pf, role)
            rss0 = pfhelpers.proc_rss_kib(pf.pid)
            c = pgwire.connect(pf.host, pf.port, name, "fake", pw, timeout=LONG)
            small_rcvbuf(c.sock, 4096)
            more = b"".join(pgwire.fe_query("SELECT %d -- %s" % (i, "q" * 400))
                            for i in range(1000))
            tr = Trickler([c.sock], [pgwire.fe_query("SELECT 'flood'") + more], seed=21).start()
            try:
                pfhelpers.wait_until(lambda: fake.floods, LONG, "the flood starting")
                first = fake.floods[0]
                tr.wait_stuck("the client stuck")
                wait_steady(lambda: fake.flooded[first], "the flood stuck", 1.0)
                rss1 = pfhelpers.proc_rss_kib(pf.pid)
                t0 = time.monotonic()
                with pgwire.connect(pf.host, pf.port, name, "appdb", pw, timeout=LONG) as o:
                    assert o.simple_query("SELECT 'other'") == [("other",)]
                served = time.monotonic() - t0
            finally:
                tr.finish()
            growth = rss1 - rss0
            print("\nflood: %.1f MB flooded, client sent %.1f KB; RSS %d -> %d KiB; "
                  "appdb client served in %.2f s" % (fake.flooded[first] / 1e6,
                                                     tr.total() / 1e3, rss0, rss1, served))
            assert served < 5.0
            limit = 24 * 1024 if os.environ.get("PGFUNNEL_SANITIZED") == "1" else 4 * 1024
            assert growth < limit, "RSS grew %d KiB while flooded" % growth
            accepts = fake.srv.accepts
            rst_close(c.sock)
            # The flooding server is closed, not kept for another client.
            pfhelpers.wait_until(lambda: "closed" in fake.srv.results, LONG,
                                 "pgfunnel closing the flooding server",
                                 lambda: (fake.srv.results, fake.srv.errors))
            pfhelpers.wait_until(lambda: len(adm.clients(name)) == 0, LONG, "client gone",
                                 lambda: adm.clients(name))
            with pgwire.connect(pf.host, pf.port, name, "fake", pw, timeout=LONG) as n:
                assert n.simple_query("SELECT 'again'") == [("fake-ok",)]
            assert fake.srv.accepts > accepts, "the flooded server was given to a client"
            pfhelpers.wait_until(lambda: pools_quiet(adm, name), LONG, "pools quiet")
            assert fake.srv.errors == []
        finally:
            adm.close()
        alive(pf, role)
    finally:
        fake.stop.set()
        fake.srv.stop()


# ---------------------------------------------------------------- TLS


@pytest.mark.parametrize("mode", ["transaction", "statement"])
def test_tls_client_drained_while_not_reading(pgfunnel, postgres, certs, role, mode):
    """Over TLS (client_tls_sslmode=require): a client sends a Query answering 3 MB, a named
    Parse behind it (prep_wait) and 300 KB of Bind/Execute/Sync rounds in 1..200-byte TLS
    records, reading nothing: pgfunnel drains its decrypted input past pkt_buf (SHOW
    SOCKETS) and serves another TLS client; then the client reads everything and sends the
    rest: all answers in order, no sanitizer report."""
    name, pw = role
    pf = start_tls(pgfunnel, postgres, certs, params=dict(TINY, pool_mode=mode),
                   userlist={name: pw})
    c = tls_login_role(pf, role)
    small_buffers(c.sock)
    # 300 KB: with the drain (64 KiB) and the socket's receive memory raised once pgfunnel
    # stops reading (conn.c keep_acks_readable), about 150 KB go before the client is stopped.
    data, expect = prep_pipeline("t", 512 * 1024, 300 * 1024, pad=40)
    try:
        tr = Trickler([c.sock], [data], seed=31).start()
        try:
            tr.wait_stuck("the TLS client stuck")
            held = drained_beyond(pf, c.sock, TINY["pkt_buf"])
            t0 = time.monotonic()
            still_serves(pf, role)
            served = time.monotonic() - t0
        finally:
            tr.finish()
        sent = tr.sent[0]
        print("\nTLS %s: %d of %d bytes sent before reading; pgfunnel held %d; another TLS "
              "client served in %.2f s" % (mode, sent, len(data), held, served))
        assert served < 5.0
        assert sent < len(data), "the pipeline went through unstopped"
        got = read_rest(c.sock, data[sent:], len(expect), 32)
        assert got == expect
    finally:
        c.sock.close()
    assert pf.is_running()
    still_serves(pf, role)
