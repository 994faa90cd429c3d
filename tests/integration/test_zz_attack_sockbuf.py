"""Red team of small socket buffers and of clients that stop reading: tcp_socket_buffer sizes a
socket before its TCP handshake (pf_conn_size_socket: the listeners before listen(), server
sockets before connect()). Sized after it, as pgfunnel did, a socket took less than its peer had
been told it may send; Linux dropped the excess, with the ACKs our output waited for riding on
it, and a client whose input pgfunnel held back (a named Parse waiting for the answers before
it) stalled for good, or a pipeline crawled at one window per 0.2 s retransmission timer. On
that code 8 of these 15 cases stall; none does now. A client's input stays bounded by pkt_buf
(hold_max for a message held whole) whatever it pipelines.

Attacks, as hostile clients and a hostile server: named Parse behind an unanswered Query with
70 KB+ pipelines in 1..200-byte pieces read slowly (tcp_socket_buffer=4096, pkt_buf 600 / 513;
transaction, statement and session mode; TLS clients); an oversize message (max_packet_size)
and a client reset / half-close in the middle of such a pipeline; 200 clients (40 with servers,
in prep_wait, 160 queued for one) and 12 console sessions that pipeline big answers and never
read (RSS bounded; others still served), then vanish (RST, or FIN then RST); a client still logging in
that floods without reading the auth request (held no more than pkt_buf; an oversize password
message refused cleanly); SUSPEND/RESUME, PAUSE/RESUME, RELOAD of tcp_socket_buffer and KILL
while clients are mid-pipeline; a fake server that stops reading and floods rows while pgfunnel's
forwards to it wait.

Every test asserts each client's own answers in order (or an exact prefix then the right
FATAL) and that pgfunnel stays up; meant for the ASan build (the conftest gate fails on any
sanitizer report)."""

import random
import select
import socket
import ssl
import struct
import subprocess
import threading
import time

import pytest

import pfhelpers
import pgwire
from test_admin_control import Admin
from test_zz_attack14 import rst_close
from test_zz_attack_park import alive, connect, tx_proxy

LONG = 30.0
TINY = {"sbuf_loopcnt": 1, "pkt_buf": 600, "max_prepared_statements": 100,
        "tcp_socket_buffer": 4096}
PIECES = (1, 2, 3, 7, 50, 200)


@pytest.fixture
def role(postgres):
    return pfhelpers.new_role(postgres, "asockbuf")


# ---------------------------------------------------------------- helpers


def parse_messages(buf):
    """(whole messages in buf as (type, payload), the rest)."""
    out, pos = [], 0
    while len(buf) - pos >= 5:
        (n,) = struct.unpack("!I", buf[pos + 1:pos + 5])
        if len(buf) - pos < 1 + n:
            break
        out.append((chr(buf[pos]), buf[pos + 5:pos + 1 + n]))
        pos += 1 + n
    return out, buf[pos:]


def socket_state(sock):
    """Both ends of sock's TCP connection as ss sees them (queues, windows, memory), for a
    stall's report: a kernel that stopped passing ACKs looks different from a pooler that
    stopped writing."""
    try:
        port = sock.getsockname()[1]
        return subprocess.run(["ss", "-tmoin", "( sport = :%d or dport = :%d )" % (port, port)],
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return "ss: %s" % e


class Duplex:
    """Sends data in pieces while reading slowly (recv_size bytes per read, pause after each),
    in one thread with a non-blocking socket (so that a TLS socket works too), until n_ready
    ReadyForQuery (or an error, or EOF once everything is read). Plain or ssl sockets."""

    def __init__(self, sock, rng, sizes=PIECES, recv_size=1024, pause=0.0003):
        self.sock, self.rng, self.sizes = sock, rng, sizes
        self.recv_size, self.pause = recv_size, pause
        self.msgs, self.buf, self.eof = [], b"", False

    def run(self, data, n_ready, timeout=LONG * 2, stop_at_error=False):
        sock = self.sock
        sock.setblocking(False)
        deadline = time.monotonic() + timeout
        pos, piece, seen = 0, None, 0
        try:
            while seen < n_ready and not self.eof:
                moved = False
                if pos < len(data):
                    if piece is None:
                        piece = data[pos:pos + self.rng.choice(self.sizes)]
                    try:
                        n = sock.send(piece)
                        pos += n
                        piece = None if n == len(piece) else piece[n:]
                        moved = True
                    except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                        pass
                    except (BrokenPipeError, ConnectionResetError):
                        pos = len(data)  # pgfunnel closed: read what it said
                try:
                    chunk = sock.recv(self.recv_size)
                    if chunk:
                        self.buf += chunk
                        got, self.buf = parse_messages(self.buf)
                        self.msgs.extend(got)
                        seen += sum(1 for k, _ in got if k == "Z")
                        if stop_at_error and any(k == "E" for k, _ in got):
                            break
                        if self.pause:
                            time.sleep(self.pause)
                    else:
                        self.eof = True
                    moved = True
                except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
                except ConnectionResetError:
                    self.eof = True
                if time.monotonic() > deadline:
                    raise TimeoutError("%d of %d ReadyForQuery, sent %d of %d; last %r; %d bytes "
                                       "unparsed\n%s" % (
                                           seen, n_ready, pos, len(data),
                                           pgwire.tokens(self.msgs[-4:]), len(self.buf),
                                           socket_state(sock)))
                if not moved and not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                    select.select([sock], [sock] if pos < len(data) else [], [], 0.05)
        finally:
            sock.setblocking(True)
            sock.settimeout(LONG)
        return self.msgs


def answers(msgs):
    """Rows per ReadyForQuery; an error as ('E', sqlstate) among them, a trailing FATAL
    (no ReadyForQuery after it) as a last group of its own."""
    out, cur = [], []
    for kind, payload in msgs:
        if kind == "D":
            cur.append(pgwire.decode_data_row(payload))
        elif kind == "E":
            cur.append(("E", pgwire.parse_fields(payload).get("C")))
        elif kind == "Z":
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


def prep_pipeline(tag, answer, size, name=None, pad=300):
    """A Query answering `answer` bytes, a named Parse (waits for that answer: prep_wait)
    + Sync, Bind/Execute/Sync rounds until the pipeline is `size` bytes, Close + Sync.
    Returns (bytes, rows expected per ReadyForQuery)."""
    name = name or "st_" + tag
    parts = [pgwire.fe_query("SELECT repeat('a', %d), '%s'" % (answer, tag)),
             pgwire.fe_parse("SELECT $1::text || '-%s'" % tag, name=name), pgwire.fe_sync()]
    expect = [[("a" * answer, tag)], []]
    total, i = sum(map(len, parts)), 0
    while total < size:
        p = "%s.%d." % (tag, i) + "p" * pad
        m = pgwire.fe_bind(statement=name, params=(p,)) + pgwire.fe_execute() + pgwire.fe_sync()
        parts.append(m)
        total += len(m)
        expect.append([(p + "-" + tag,)])
        i += 1
    parts.append(pgwire.fe_close("S", name) + pgwire.fe_sync())
    expect.append([])
    return b"".join(parts), expect


def plain_pipeline(tag, n, answer):
    """n simple queries answering `answer` bytes each."""
    data = b"".join(pgwire.fe_query("SELECT '%s.%d', repeat('b', %d)" % (tag, i, answer))
                    for i in range(n))
    return data, [[("%s.%d" % (tag, i), "b" * answer)] for i in range(n)]


def small_rcvbuf(sock, size=4096):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def login_raw(pf, role, rcvbuf=None):
    c = connect(pf, role)
    if rcvbuf:
        small_rcvbuf(c.sock, rcvbuf)
    return c


def pools_quiet(adm, user):
    rows = [r for r in adm.show("POOLS") if r["user"] == user]
    return all(int(r["sv_active"]) == 0 and int(r["cl_waiting"]) == 0 and
               int(r["cl_active"]) == 0 for r in rows)


# ---------------------------------------------------------------- prep_wait pipelines


@pytest.mark.parametrize("mode,pkt_buf", [("transaction", 600), ("transaction", 513),
                                          ("statement", 600), ("session", 513)])
def test_prep_wait_pipelines_in_tiny_pieces(proxy, role, mode, pkt_buf):
    """tcp_socket_buffer=4096, sbuf_loopcnt=1: two clients at once each send a Query answering
    60 KB, a named Parse behind it (waits for that answer), then 80 KB of Bind/Execute/Sync
    rounds and a Close, in 1..200-byte pieces while reading 1 KB at a time; then a 20 KB one
    byte by byte. Each gets exactly its own rows in order. (pgfunnel-old stalls here.)"""
    params = dict(TINY, pkt_buf=pkt_buf, pool_mode=mode)
    pf = tx_proxy(proxy, role, **params)

    def run(ci):
        rng = random.Random(ci * 31 + pkt_buf)
        c = login_raw(pf, role)
        try:
            data, expect = prep_pipeline("c%d" % ci, 60000, 80 * 1024)
            assert answers(Duplex(c.sock, rng).run(data, len(expect))) == expect
            data, expect = prep_pipeline("d%d" % ci, 20000, 20 * 1024, pad=40)
            assert answers(Duplex(c.sock, rng, sizes=(1,)).run(data, len(expect))) == expect
        finally:
            c.close()

    assert pfhelpers.run_clients(2, run, LONG * 4) == []
    alive(pf, role)


def test_tls_clients_prep_wait_in_tiny_pieces(pgfunnel, postgres, role):
    """The same over TLS (client_tls_sslmode=require): the TLS transport reads the socket
    through its own layer, whose reading stops and restarts with the conn's."""
    import tlscerts
    from test_tls import client_tls, tls_context, tls_socket
    certs = tlscerts.TlsCerts()
    try:
        name, pw = role
        p = dict(TINY, pool_mode="transaction")
        p.update(client_tls(certs, "require"))
        pf = pfhelpers.start_proxy(pgfunnel, postgres, params=p, userlist={name: pw})
        for ci in range(2):
            rng = random.Random(ci)
            s = tls_socket(pf.port, tls_context())
            c = pgwire.Connection(s)
            try:
                c.login(name, "appdb", pw)
                data, expect = prep_pipeline("t%d" % ci, 50000, 80 * 1024)
                assert answers(Duplex(s, rng).run(data, len(expect))) == expect
            finally:
                c.close()
        assert pf.is_running()
    finally:
        certs.destroy()


def test_oversize_message_in_a_waiting_pipeline(proxy, role):
    """max_packet_size=30000: behind a prep_wait and 40 KB of rounds comes a 40 KB query:
    the client gets every answer before it, then FATAL 08P01, then EOF; the server is not
    left behind (the pool empties)."""
    pf = tx_proxy(proxy, role, max_packet_size=30000, **TINY)
    adm = Admin(pf)
    try:
        c = login_raw(pf, role)
        data, expect = prep_pipeline("o", 20000, 40 * 1024)
        big = pgwire.fe_query("SELECT '" + "z" * 40000 + "'")
        d = Duplex(c.sock, random.Random(3))
        got = answers(d.run(data + big + plain_pipeline("after", 3, 10)[0], len(expect) + 1,
                            stop_at_error=True))
        # The walk reaches the oversize header once what precedes it is forwarded, maybe
        # before all of it is answered: an exact prefix of the answers, then the FATAL and
        # nothing after it, or EOF (closing with our unread input resets the connection,
        # which may overtake the FATAL still in pgfunnel's socket).
        kinds = [k for k, _ in d.msgs]
        if "E" in kinds:
            assert kinds[kinds.index("E") + 1:] == [], pgwire.tokens(d.msgs[-6:])
            assert got[-1][-1:] == [("E", "08P01")], got[-2:]
            got[-1] = got[-1][:-1]
            if not got[-1]:
                got.pop()
        else:
            assert d.eof
        n = len(got)
        assert got[:n - 1] == expect[:n - 1] and got[-1] == expect[n - 1][:len(got[-1])], n
        pf.wait_for_log(r"max_packet_size|message too long", LONG)
        assert pgwire.wait_closed(c, LONG)
        c.sock.close()
        pfhelpers.wait_until(lambda: pools_quiet(adm, role[0]), LONG, "pool quiet")
    finally:
        adm.close()
    alive(pf, role)


@pytest.mark.parametrize("how", ["rst", "fin"])
def test_disconnect_mid_pipeline(proxy, role, how):
    """Clients that stop at various points of a prep_wait pipeline (after 1, 20, 64, 70 KB
    sent, having read 0 or some of the answers) and reset or half-close: pgfunnel releases or
    closes their servers, forgets them, and others are served."""
    pf = tx_proxy(proxy, role, default_pool_size=2, **TINY)
    adm = Admin(pf)
    try:
        for cut_kb in (1, 20, 64, 70):
            for read_some in (False, True):
                c = login_raw(pf, role)
                data, expect = prep_pipeline("x%d" % cut_kb, 30000, 90 * 1024)
                c.sock.setblocking(False)
                sent, deadline = 0, time.monotonic() + LONG
                while sent < cut_kb * 1024 and time.monotonic() < deadline:
                    try:
                        sent += c.sock.send(data[sent:min(sent + 7, cut_kb * 1024)])
                    except BlockingIOError:
                        select.select([], [c.sock], [], 0.05)
                    if read_some:
                        try:
                            c.sock.recv(512)
                        except BlockingIOError:
                            pass
                c.sock.setblocking(True)
                if how == "rst":
                    rst_close(c.sock)
                else:
                    c.sock.shutdown(socket.SHUT_WR)
                    c.sock.settimeout(LONG)
                    try:
                        while c.sock.recv(65536):
                            pass
                    except (ConnectionResetError, socket.timeout):
                        pass
                    c.sock.close()
        pfhelpers.wait_until(lambda: len(adm.clients(role[0])) == 0, LONG, "clients gone",
                             lambda: adm.clients(role[0]))
        pfhelpers.wait_until(lambda: pools_quiet(adm, role[0]), LONG, "pool quiet")
    finally:
        adm.close()
    alive(pf, role)


# ---------------------------------------------------------------- memory: clients that never read


def push(sock, data, deadline):
    """Send as much of data as the socket takes without blocking (for clients that never
    read): returns how much went."""
    sock.setblocking(False)
    sent = 0
    try:
        while sent < len(data) and time.monotonic() < deadline:
            try:
                sent += sock.send(data[sent:sent + 65536])
            except BlockingIOError:
                break
    finally:
        sock.setblocking(True)
    return sent


def test_many_non_reading_clients_memory_bounded(proxy, role):
    """200 clients that never read: 40 with servers (a Query answering 5 MB, a named Parse
    that waits for it, then 1 MB of rounds), 160 queued for a
    server with 1 MB of queries each, and 12 console sessions pipelining 200 SHOW CLIENTS;
    all keep sending what the sockets take for a while. pgfunnel's RSS stays bounded (about
    2 x pkt_buf per client with output waiting, 256 KiB + one answer per console), and
    another client is served meanwhile. Then half reset, half send a FIN and then reset: every
    client and server of theirs goes, the pool is quiet, the RSS comes back down."""
    name, _ = role
    pf = tx_proxy(proxy, role, default_pool_size=40, max_client_conn=500, pool_mode="transaction",
                  max_prepared_statements=100, query_wait_timeout=0)
    adm = Admin(pf)
    alive(pf, role)
    rss0 = pfhelpers.proc_rss_kib(pf.pid)
    clients = []
    try:
        linked = []
        for i in range(40):
            c = connect(pf, role)
            small_rcvbuf(c.sock, 4096)
            data, _ = prep_pipeline("m%d" % i, 5 * 1024 * 1024, 1024 * 1024)
            linked.append((c, data))
            clients.append(c)
            push(c.sock, data, time.monotonic() + 2)
        pfhelpers.wait_until(
            lambda: int(pfhelpers.find_pool(adm.show("POOLS"), "appdb", name)["sv_active"]) == 40,
            LONG, "40 servers linked")
        queued = []
        for i in range(160):
            c = connect(pf, role)
            small_rcvbuf(c.sock, 4096)
            data = b"".join(pgwire.fe_query("SELECT %d -- %s" % (j, "f" * 480))
                            for j in range(2000))
            queued.append((c, data))
            clients.append(c)
        consoles = []
        for i in range(12):
            a = Admin(pf)
            small_rcvbuf(a.conn.sock, 4096)
            consoles.append((a.conn, pgwire.fe_query("SHOW CLIENTS") * 200))
        everyone = linked + queued + consoles
        offsets = [0] * len(everyone)
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            moved = 0
            for k, (c, data) in enumerate(everyone):
                if offsets[k] < len(data):
                    n = push(c.sock, data[offsets[k]:], deadline)
                    offsets[k] += n
                    moved += n
            if not moved:
                break
            time.sleep(0.05)
        sent_mb = sum(offsets) / 1e6
        # Everyone has sent what the kernel takes; pgfunnel holds what it read.
        # Another client (of another pool: appdb's 40 servers are taken) is served.
        t0 = time.monotonic()
        with pgwire.connect(pf.host, pf.port, name, "postgres", role[1], timeout=LONG) as o:
            assert o.simple_query("SELECT 'other'") == [("other",)]
        assert time.monotonic() - t0 < 15
        rss1 = pfhelpers.proc_rss_kib(pf.pid)
        growth = rss1 - rss0
        print("\nRSS before %d KiB, with 200+12 non-readers %d KiB (growth %d KiB; "
              "clients sent %.1f MB)" % (rss0, rss1, growth, sent_mb))
        # 40 x 2 x pkt_buf + 160 x pkt_buf + 12 x (256 KiB + 2 answers + pkt_buf),
        # doubled for ASan's redzones, plus its 16 MB quarantine and slack.
        assert growth < 64 * 1024, "RSS grew by %d KiB" % growth
        assert sent_mb > 60, sent_mb
        # (A FIN alone would wait behind the bytes still in the client's send queue, which
        # pgfunnel does not read: a half-closed client that never reads legitimately stays.
        # So: a FIN, then the close that resets the unread answers.)
        for k, (c, _) in enumerate(everyone):
            if k % 2:
                rst_close(c.sock)
            else:
                c.sock.shutdown(socket.SHUT_WR)
        for c, _ in everyone:
            c.sock.close()
        pfhelpers.wait_until(lambda: len(adm.clients(name)) == 0, LONG * 2, "clients gone",
                             lambda: len(adm.clients(name)))
        pfhelpers.wait_until(lambda: pools_quiet(adm, name), LONG, "pool quiet")
        rss2 = pfhelpers.proc_rss_kib(pf.pid)
        print("RSS after they left %d KiB" % rss2)
        alive(pf, role)
    finally:
        adm.close()
        for c in clients:
            try:
                c.sock.close()
            except OSError:
                pass


# ---------------------------------------------------------------- login


def test_login_client_floods_without_reading(proxy, role):
    """A client sends its startup packet and then 2 MB (garbage as password messages that
    claim 100000 bytes, or many small ones) without reading the md5 request: it is held no
    more than pkt_buf (FATAL 08P01 for the oversize one, 28P01 for a wrong password) and
    pgfunnel's RSS does not grow with the flood."""
    name, _ = role
    pf = tx_proxy(proxy, role, tcp_socket_buffer=4096, pkt_buf=600)
    rss0 = pfhelpers.proc_rss_kib(pf.pid)
    results = []
    for variant in ("oversize", "small", "oversize-bytewise"):
        s = pgwire.open_socket(pf.host, pf.port, LONG)
        small_rcvbuf(s, 2048)
        c = pgwire.Connection(s)
        c.send(pgwire.startup_message({"user": name, "database": "appdb"}))
        if variant.startswith("oversize"):
            flood = b"p" + struct.pack("!I", 100000) + b"x" * 99996
        else:
            flood = pgwire.message(b"p", b"md5" + b"0" * 32 + b"\0") * 20000
        flood += b"y" * (2 * 1024 * 1024 - len(flood))
        d = Duplex(s, random.Random(1), sizes=(1, 3) if "bytewise" in variant else (65536,),
                   pause=0)
        d.run(flood if "bytewise" not in variant else flood[:120000], 1, stop_at_error=True)
        err = [pgwire.parse_fields(p) for k, p in d.msgs if k == "E"]
        assert [k for k, _ in d.msgs][:1] == ["R"], d.msgs[:3]
        assert len(err) == 1, d.msgs
        results.append((variant, err[0].get("S"), err[0].get("C")))
        assert pgwire.wait_closed(c, LONG)
        s.close()
    assert results == [("oversize", "FATAL", "08P01"), ("small", "FATAL", "28P01"),
                       ("oversize-bytewise", "FATAL", "08P01")], results
    growth = pfhelpers.proc_rss_kib(pf.pid) - rss0
    assert growth < 8 * 1024, growth
    alive(pf, role)


# ---------------------------------------------------------------- console commands mid-pipeline


@pytest.mark.parametrize("command", ["SUSPEND", "PAUSE", "RELOAD", "KILL"])
def test_console_commands_while_clients_mid_pipeline(proxy, role, command):
    """Three clients in tiny-socket prep_wait pipelines (80 KB, 1..200-byte pieces, read
    slowly) while the console runs SUSPEND/RESUME, PAUSE/RESUME, RELOAD (tcp_socket_buffer
    4096 -> 16384 -> 4096) or KILL appdb in the middle: every client gets its own rows in
    order; under KILL an exact prefix of them, then FATAL 57P01 and EOF."""
    pf = tx_proxy(proxy, role, default_pool_size=3, **TINY)
    adm = Admin(pf)
    results, errors = {}, []
    started = threading.Barrier(4)

    def run(ci):
        try:
            rng = random.Random(ci + 100)
            c = login_raw(pf, role)
            try:
                data, expect = prep_pipeline("k%d" % ci, 60000, 80 * 1024)
                started.wait(LONG)
                d = Duplex(c.sock, rng)
                try:
                    d.run(data, len(expect), stop_at_error=True)
                except (TimeoutError, OSError) as e:
                    if command != "KILL":
                        raise
                    results[ci] = ("error", repr(e))
                    return
                results[ci] = (answers(d.msgs), expect, d)
            finally:
                c.sock.close()
        except Exception as e:  # noqa: BLE001
            errors.append((ci, repr(e)[:1500]))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        started.wait(LONG)
        # Mid-pipeline: each client has a server and has sent part of its pipeline.
        pfhelpers.wait_until(
            lambda: int(pfhelpers.find_pool(adm.show("POOLS"), "appdb", role[0])
                        ["sv_active"]) >= 1, LONG, "clients at work")
        if command == "SUSPEND":
            assert adm.run("SUSPEND") == "SUSPEND"
            assert adm.run("RESUME") == "RESUME"
        elif command == "PAUSE":
            adm.send("PAUSE appdb")
            assert adm.answer(LONG * 2)[0] == ["PAUSE"]
            assert adm.run("RESUME appdb") == "RESUME"
        elif command == "RELOAD":
            for size in (16384, 4096):
                pf.write_ini(params=dict(pf.params, tcp_socket_buffer=size))
                assert adm.run("RELOAD") == "RELOAD"
                assert adm.config("tcp_socket_buffer") == str(size)
        else:
            assert adm.run("KILL appdb") == "KILL"
            assert adm.run("RESUME appdb") == "RESUME"
        for t in threads:
            t.join(LONG * 4)
        assert errors == []
        for ci in range(3):
            res = results[ci]
            if command == "KILL":
                if res[0] == "error":
                    continue
                got, expect, _ = res
                if got == expect:
                    continue
                # Killed: an exact prefix of its answers (the last one maybe cut short),
                # then FATAL 57P01, or nothing more (the reset that a close with unread
                # input makes may overtake the FATAL).
                if got and got[-1][-1:] == [("E", "57P01")]:
                    got[-1] = got[-1][:-1]
                    if not got[-1]:
                        got.pop()
                assert all(("E", "57P01") not in g for g in got), got[-3:]
                assert got == expect[:len(got)] or (
                    got[:-1] == expect[:len(got) - 1] and
                    got[-1] == expect[len(got) - 1][:len(got[-1])]), (ci, len(got))
            else:
                got, expect, _ = res
                assert got == expect, ci
    finally:
        adm.close()
    alive(pf, role)


# ---------------------------------------------------------------- a server that stops reading


def test_fake_server_stops_reading_and_floods(pgfunnel, role):
    """A fake server answers the first Query with 30000 rows of 200 bytes (6 MB) and reads
    nothing more meanwhile, then reads everything and answers the rest; the client pipelines
    2 MB of further queries in pieces (their forward to the server waits, the server conn's
    own socket has output queued) while reading slowly: the client gets all rows in order,
    then every other answer; pgfunnel's RSS stays bounded."""
    rows = 30000
    more = 2000
    row = pgwire.message(b"D", struct.pack("!HI", 1, 200) + b"r" * 200)

    def script(peer):
        peer.read_startup()
        peer.auth(0)
        peer.finish_login()
        kind, _ = peer.read_message()
        assert kind == "Q"
        peer.sock.sendall(peer.message("T", struct.pack("!H", 1) + b"x\0" +
                                       struct.pack("!IHIhih", 0, 0, 25, -1, -1, 0)))
        chunk = row * 500
        for _ in range(rows // 500):
            peer.sock.sendall(chunk)
        peer.send("C", b"SELECT %d\0" % rows)
        peer.send("Z", b"I")
        out = []
        for i in range(more):
            kind, payload = peer.read_message()
            assert kind == "Q", kind
            out.append(peer.message("T", struct.pack("!H", 1) + b"x\0" +
                                    struct.pack("!IHIhih", 0, 0, 25, -1, -1, 0)) +
                       peer.message("D", struct.pack("!HI", 1, 4) + b"%04d" % i) +
                       peer.message("C", b"SELECT 1\0") + peer.message("Z", b"I"))
            if len(out) == 50:
                peer.sock.sendall(b"".join(out))
                out = []
        peer.sock.sendall(b"".join(out))
        return "done"

    srv = pfhelpers.ScriptedServer(script)
    try:
        pf = pgfunnel.start(params={"auth_type": "trust", "pool_mode": "session",
                                    "tcp_socket_buffer": 4096, "sbuf_loopcnt": 1},
                            databases={"fake": srv.db_entry()}, userlist={"u": "x"})
        rss0 = pfhelpers.proc_rss_kib(pf.pid)
        s = pgwire.open_socket(pf.host, pf.port, LONG)
        c = pgwire.Connection(s)
        c.login("u", "fake")
        data = pgwire.fe_query("SELECT flood") + b"".join(
            pgwire.fe_query("SELECT %d -- %s" % (i, "q" * 1000)) for i in range(more))
        d = Duplex(s, random.Random(9), sizes=(7, 300, 4096), recv_size=8192, pause=0.0002)
        peak = [0]

        def watch():
            while not stop.is_set():
                peak[0] = max(peak[0], pfhelpers.proc_rss_kib(pf.pid) or 0)
                time.sleep(0.05)
        stop = threading.Event()
        w = threading.Thread(target=watch, daemon=True)
        w.start()
        try:
            msgs = d.run(data, 1 + more, timeout=LONG * 3)
        finally:
            stop.set()
            w.join(5)
        got = answers(msgs)
        # The fake server closes once it has answered: in session mode the client is told so
        # (08006), which can come in the same read as the last answer.
        if len(got) == 2 + more:
            assert got.pop() == [("E", "08006")], got[-1]
        assert len(got) == 1 + more
        assert got[0] == [("r" * 200,)] * rows
        assert [g for g in got[1:]] == [[("%04d" % i,)] for i in range(more)]
        c.close()
        print("\nRSS %d KiB before, peak %d KiB" % (rss0, peak[0]))
        assert peak[0] - rss0 < 24 * 1024, (rss0, peak[0])
        pfhelpers.wait_until(lambda: srv.results == ["done"], LONG, "fake server done",
                             lambda: srv.errors)
        assert srv.errors == []
        assert pf.is_running()
    finally:
        srv.stop()
