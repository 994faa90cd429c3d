"""Red team of a client's small first receive buffer (PF_CONN_SMALL_RBUF = 512 bytes, malloc'd):
it becomes a full pkt_buf one (move_rbuf, same offsets) when it fills or outgrows, stays
full-size until the client parks, and does not move while a forward write borrows it.

Attacks: messages and pipelines of every size around 512 and around pkt_buf, headers split at
the 512 edge, one byte per send; extended-protocol pipelines with renamed heads
(max_prepared_statements, transaction mode) straddling 512; a multi-MB COPY after small
queries; parked clients waking with a 100 KB query or a split header; resets and half-closes
mid-message at the edge; clients queued (pool_size 1) with bytes in their small buffers while
another streams; odd pkt_buf sizes (513, 600); startup packets around 512 and a startup
pipelined with queries (trust); TLS clients; console commands > 512 bytes.

Every test asserts each client's own answers, in order, nothing lost or foreign, and that
pgfunnel stays up. Meant for the ASan build (the conftest gate fails on any report)."""

import socket
import struct
import threading

import pytest

import pfhelpers
import pgwire
from test_admin_control import Admin
from test_park import unparked_count, wait_parked
from test_zz_attack14 import rst_close
from test_zz_attack_park import alive, connect, tx_proxy

LONG = 20.0
SMALL = 512
BEYOND = pfhelpers.binary_is_pgbouncer()


@pytest.fixture
def role(postgres):
    return pfhelpers.new_role(postgres, "asmall")


# ---------------------------------------------------------------- helpers


def q_exact(tag, total):
    """A Query message of exactly total bytes answering one row (tag, padding)."""
    head = "SELECT '%s', '" % tag
    tail = "'"
    pad = total - (1 + 4 + len(head) + len(tail) + 1)
    assert pad >= 0, (tag, total)
    pad_s = ("%s-" % tag * (pad // (len(tag) + 1) + 1))[:pad]
    msg = pgwire.fe_query(head + pad_s + tail)
    assert len(msg) == total
    return msg, (tag, pad_s)


def rows_by_answer(messages):
    """The rows of each answer (up to its ReadyForQuery) in messages; an error fails."""
    out, cur = [], []
    for kind, payload in messages:
        if kind == "D":
            cur.append(pgwire.decode_data_row(payload))
        elif kind == "E":
            raise AssertionError("error: %r" % pgwire.parse_fields(payload))
        elif kind == "Z":
            out.append(cur)
            cur = []
    return out


def read_rows(conn, n_ready, timeout=LONG):
    """Rows (and no error) of the next n_ready answers, by answer."""
    return rows_by_answer(conn.read_until_ready(timeout, count=n_ready))




def pools_idle(adm, user):
    rows = [r for r in adm.show("POOLS") if r["user"] == user]
    return all(int(r["sv_active"]) == 0 and int(r["cl_waiting"]) == 0 for r in rows)


def send_bytewise(conn, data):
    for i in range(len(data)):
        conn.sock.sendall(data[i:i + 1])


# ---------------------------------------------------------------- sizes at the 512 edge


@pytest.mark.parametrize("pkt_buf", [513, 600, 4096])
def test_two_messages_straddling_512_every_offset(proxy, role, pkt_buf):
    """Fresh clients (small buffer) each send, in one write, a query of k bytes (k = 495..530)
    and a second one of 1300 bytes: the 512 edge falls everywhere in the second's header and
    body; then a query of pkt_buf-3 .. pkt_buf+3 bytes. All answers right and in order."""
    pf = tx_proxy(proxy, role, pkt_buf=pkt_buf)
    for k in range(495, 531):
        c = connect(pf, role)
        try:
            m1, r1 = q_exact("a%d" % k, k)
            m2, r2 = q_exact("b%d" % k, 1300)
            m3, r3 = q_exact("c%d" % k, pkt_buf - 3 + (k % 7))
            c.send(m1 + m2 + m3)
            assert read_rows(c, 3) == [[r1], [r2], [r3]], k
        finally:
            c.close()
    alive(pf, role)


def test_sizes_around_512_and_4096_split_everywhere(proxy, role):
    """Per size (505..520, 4090..4100): a fresh client sends the query cut at 511/512/513
    bytes and at the 5-byte header, with the rest a moment later (after pgfunnel has read
    the first part: the answer cannot come before), and one byte at a time for 512/513."""
    pf = tx_proxy(proxy, role)
    sizes = list(range(505, 521)) + list(range(4090, 4101))
    for size in sizes:
        for cut in (3, 511, 512, 513):
            if cut >= size:
                continue
            c = connect(pf, role)
            try:
                msg, row = q_exact("s%d_%d" % (size, cut), size)
                c.send(msg[:cut])
                assert c.is_silent(0.01)
                c.send(msg[cut:])
                assert read_rows(c, 1) == [[row]], (size, cut)
                # The same client again (its later buffers are full-size now).
                msg, row = q_exact("t%d_%d" % (size, cut), size)
                c.send(msg)
                assert read_rows(c, 1) == [[row]]
            finally:
                c.close()
    for size in (511, 512, 513, 520):
        c = connect(pf, role)
        try:
            msg, row = q_exact("byte%d" % size, size)
            send_bytewise(c, msg)
            assert read_rows(c, 1) == [[row]]
        finally:
            c.close()
    alive(pf, role)


def test_many_small_messages_in_one_send(proxy, role):
    """60 queries of 25-40 bytes in one write (about 2 KB: the small buffer fills mid-message
    and moves with processed bytes before it), then 200 more byte-split at odd places."""
    pf = tx_proxy(proxy, role)
    c = connect(pf, role)
    try:
        msgs, rows = [], []
        for i in range(60):
            m, r = q_exact("m%d" % i, 25 + i % 16)
            msgs.append(m)
            rows.append([r])
        c.send(b"".join(msgs))
        assert read_rows(c, 60) == rows
        msgs, rows = [], []
        for i in range(200):
            m, r = q_exact("n%d" % i, 30 + (i * 7) % 500)
            msgs.append(m)
            rows.append([r])
        data = b"".join(msgs)
        pos, step = 0, 509
        while pos < len(data):
            c.send(data[pos:pos + step])
            pos += step
            step = 1 + (step * 31) % 700
        assert read_rows(c, 200) == rows
    finally:
        c.close()
    alive(pf, role)


# ---------------------------------------------------------------- prepared statements


def prepared_round(c, name, tag, pad):
    """Parse(named) + Bind + Execute + Sync with a padded parameter; returns the bytes and
    the expected row."""
    data = (pgwire.fe_parse("SELECT $1::text || '-%s'" % tag, name=name) +
            pgwire.fe_bind(statement=name, params=("p" * pad,)) +
            pgwire.fe_execute() + pgwire.fe_sync())
    return data, ("p" * pad + "-" + tag,)


def test_prepared_pipelines_straddling_512(proxy, role):
    """max_prepared_statements=100, transaction mode, pool of 2 shared by 3 clients: named
    Parse/Bind/Execute/Sync pipelines whose renamed heads (Bind, Parse) fall at or across the
    512 edge, with the statement name long enough (300 bytes) that a head alone needs more
    than the small buffer has left; fresh clients and reused ones; all rows right."""
    pf = tx_proxy(proxy, role, max_prepared_statements=100, default_pool_size=2)
    clients = [connect(pf, role) for _ in range(3)]
    try:
        for rnd in range(3):
            for ci, c in enumerate(clients):
                for lead in (440, 470, 490, 500, 505, 508, 510, 512):
                    name = ("st%d_%d_" % (ci, lead)) + "n" * (300 if lead % 2 else 20)
                    m0, r0 = q_exact("lead%d" % lead, lead)
                    d1, r1 = prepared_round(c, name, "x%d" % lead, lead % 50)
                    # The same named statement again: Bind only (renamed head).
                    d2 = (pgwire.fe_bind(statement=name, params=("q" * 600,)) +
                          pgwire.fe_execute() + pgwire.fe_sync())
                    r2 = ("q" * 600 + "-x%d" % lead,)
                    d3 = pgwire.fe_close("S", name) + pgwire.fe_sync()
                    c.send(m0 + d1 + d2 + d3)
                    msgs = c.read_until_ready(LONG, count=4)
                    rows = [pgwire.decode_data_row(p) for k, p in msgs if k == "D"]
                    errs = [pgwire.parse_fields(p) for k, p in msgs if k == "E"]
                    assert errs == [], errs
                    assert rows == [r0, r1, r2], (rnd, ci, lead, rows)
            if rnd == 1:
                clients.append(connect(pf, role))
    finally:
        for c in clients:
            c.close()
    alive(pf, role)


def test_prepared_parallel_clients_one_server(proxy, role):
    """Four threads, pool of 1, max_prepared_statements=100: each pipelines named rounds of
    varying sizes across 512 (queued behind each other with their bytes in small buffers);
    each gets exactly its own rows."""
    pf = tx_proxy(proxy, role, max_prepared_statements=100, default_pool_size=1)
    errors = []

    def run(ci):
        try:
            c = connect(pf, role)
            try:
                for i in range(12):
                    name = "s%d" % (i % 3)
                    d, r = prepared_round(c, name, "c%d_%d" % (ci, i), 380 + 17 * i)
                    c.send(d)
                    msgs = c.read_until_ready(LONG)
                    rows = [pgwire.decode_data_row(p) for k, p in msgs if k == "D"]
                    errs = [pgwire.parse_fields(p) for k, p in msgs if k == "E"]
                    assert errs == [] and rows == [r], (ci, i, rows, errs)
                    c.send(pgwire.fe_close("S", name) + pgwire.fe_sync())
                    c.read_until_ready(LONG)
            finally:
                c.close()
        except Exception as e:  # noqa: BLE001
            errors.append((ci, repr(e)))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(LONG * 3)
    assert errors == []
    alive(pf, role)


# ---------------------------------------------------------------- COPY


def test_copy_megabytes_after_small_queries(proxy, role):
    """Small queries, then in one transaction COPY FROM STDIN of ~4 MB in CopyData messages
    of odd sizes (the first straddling 512), then small queries again: the server saw every
    byte in order (md5 compared)."""
    import hashlib
    pf = tx_proxy(proxy, role)
    c = connect(pf, role)
    try:
        for i in range(5):
            assert c.simple_query("SELECT %d" % i) == [(str(i),)]
        lines = []
        n = 0
        while n < (4 << 20):
            line = "%07d:%s" % (len(lines), "c" * (len(lines) * 37 % 900))
            lines.append(line)
            n += len(line) + 1
        blob = ("\n".join(lines) + "\n").encode()
        pre = (pgwire.fe_query("BEGIN") +
               pgwire.fe_query("CREATE TEMP TABLE t_copy(i serial, x text) ON COMMIT DROP") +
               pgwire.fe_query("COPY t_copy(x) FROM STDIN"))
        c.send(pre)
        msgs = c.read_until_ready(LONG, count=2)
        assert [k for k, _ in msgs if k == "E"] == []
        kind, _ = c.read_message(LONG)
        assert kind == "G"
        pos, step, chunks = 0, 511 - len(pre) % 512, []
        while pos < len(blob):
            chunks.append(pgwire.fe_copy_data(blob[pos:pos + step]))
            pos += step
            step = 1 + (step * 13 + 7) % 70000
        data = b"".join(chunks) + pgwire.fe_copy_done()
        sender = threading.Thread(target=c.send, args=(data,))
        sender.start()
        msgs = c.read_until_ready(LONG * 2)
        sender.join(LONG)
        assert [k for k, _ in msgs] == ["C", "Z"], pgwire.tokens(msgs)
        want = hashlib.md5(("".join(line for line in lines)).encode()).hexdigest()
        rows = c.simple_query("SELECT count(*), md5(string_agg(x, '' ORDER BY i)) FROM t_copy")
        assert rows == [(str(len(lines)), want)]
        assert c.simple_query("COMMIT") == []
        for i in range(5):
            m, r = q_exact("after%d" % i, 500 + i * 5)
            c.send(m)
            assert read_rows(c, 1) == [[r]]
    finally:
        c.close()
    alive(pf, role)


# ---------------------------------------------------------------- parking


@pytest.mark.skipif(BEYOND, reason="parking is pgfunnel's")
def test_parked_clients_wake_with_edge_and_huge_messages(proxy, role):
    """Clients fill a small buffer (full-size from then on), park (full-size forgotten), then
    wake with: a 100 KB query; a header split at byte 2 and the rest (512 bytes) later; a
    513-byte query one byte at a time; 2 queries totalling 1030 bytes. Twice each, parking in
    between; all answers right; pgfunnel parks them again."""
    pf = tx_proxy(proxy, role)
    adm = Admin(pf)
    cs = [connect(pf, role) for _ in range(4)]
    try:
        for rnd in range(2):
            for i, c in enumerate(cs):
                m, r = q_exact("fill%d" % i, 700)
                c.send(m)
                assert read_rows(c, 1) == [[r]]
            wait_parked(adm)
            m, r = q_exact("big%d" % rnd, 100 * 1024)
            cs[0].send(m)
            m, r1 = q_exact("split%d" % rnd, 517)
            cs[1].send(m[:2])
            pfhelpers.wait_until(lambda: unparked_count(adm) >= 1, LONG, "a client woken")
            assert cs[1].is_silent(0.01)
            cs[1].send(m[2:])
            m2, r2 = q_exact("bw%d" % rnd, 513)
            send_bytewise(cs[2], m2)
            ma, ra = q_exact("pa%d" % rnd, 515)
            mb, rb = q_exact("pb%d" % rnd, 515)
            cs[3].send(ma + mb)
            assert read_rows(cs[0], 1) == [[r]]
            assert read_rows(cs[1], 1) == [[r1]]
            assert read_rows(cs[2], 1) == [[r2]]
            assert read_rows(cs[3], 2) == [[ra], [rb]]
            wait_parked(adm)
    finally:
        adm.close()
        for c in cs:
            c.close()
    alive(pf, role)


# ---------------------------------------------------------------- disconnects at the edge


@pytest.mark.parametrize("how", ["rst", "fin", "shut_wr"])
def test_disconnect_mid_message_at_the_edge(proxy, role, how):
    """Clients send a whole query plus part of the next such that they stop at 511/512/513
    bytes (the small buffer full or just past it), or a 600-byte query cut at 512, then
    reset / close / half-close. pgfunnel stays up, no server is left busy, and a client that
    stays meanwhile sees only its own answers."""
    pf = tx_proxy(proxy, role, default_pool_size=2)
    adm = Admin(pf)
    watcher = connect(pf, role)
    try:
        for total in (511, 512, 513, 600, 4200):
            for first in (0, 100, 505):
                c = connect(pf, role)
                if first:
                    m1, r1 = q_exact("w%d" % first, first)
                else:
                    m1, r1 = b"", None
                m2, _ = q_exact("cut%d" % total, max(total, 600) if first else total + 100)
                data = (m1 + m2)[:total]
                c.send(data)
                if r1 is not None:
                    assert read_rows(c, 1) == [[r1]]
                if how == "rst":
                    rst_close(c.sock)
                elif how == "fin":
                    c.sock.close()
                else:
                    c.sock.shutdown(socket.SHUT_WR)
                    try:
                        c.sock.settimeout(LONG)
                        while c.sock.recv(65536):
                            pass
                    except OSError:
                        pass
                    c.sock.close()
                m, r = q_exact("watch%d_%d" % (total, first), 300 + total % 300)
                watcher.send(m)
                assert read_rows(watcher, 1) == [[r]]
        pfhelpers.wait_until(lambda: pools_idle(adm, role[0]), LONG, "no server left busy",
                             lambda: adm.show("POOLS"))
    finally:
        adm.close()
        watcher.close()
    alive(pf, role)


# ---------------------------------------------------------------- queued with a busy pool


def test_queued_clients_with_bytes_in_small_buffers(proxy, role, postgres):
    """pool_size 1: a holder keeps the only server (BEGIN + advisory lock); 12 clients queue
    with 300..5000 bytes of pipelined queries each (some still in the small buffer, some
    beyond it, one 200 KB); a streamer in another pool... (the same pool, queued too). When
    the holder commits every client gets exactly its own answers in order."""
    pf = tx_proxy(proxy, role, default_pool_size=1, max_prepared_statements=100)
    adm = Admin(pf)
    holder = connect(pf, role)
    qs = [connect(pf, role) for _ in range(12)]
    try:
        holder.send(pgwire.fe_query("BEGIN") + pgwire.fe_query("SELECT 1"))
        holder.read_until_ready(LONG, count=2)
        plans = []
        for i, c in enumerate(qs):
            msgs, rows = [], []
            sizes = [(300 + 97 * i) % 700 + 20, 500 + i, 512 - i, 1024 + 300 * i]
            if i == 5:
                sizes.append(200 * 1024)
            for j, s in enumerate(sizes):
                m, r = q_exact("q%d_%d" % (i, j), s)
                msgs.append(m)
                rows.append([r])
            if i % 3 == 0:
                d, r = prepared_round(c, "qs%d" % i, "pr%d" % i, 450)
                msgs.append(d)
                rows.append([r])
            data = b"".join(msgs)
            t = threading.Thread(target=c.send, args=(data,))
            t.start()
            plans.append((c, rows, t))
        pfhelpers.wait_until(
            lambda: sum(int(r["cl_waiting"]) for r in adm.show("POOLS")
                        if r["user"] == role[0]) >= 12,
            LONG, "12 clients queued", lambda: adm.show("POOLS"))
        m, r = q_exact("holder", 530)
        holder.send(m + pgwire.fe_query("SELECT repeat('h', 300000)") +
                    pgwire.fe_query("COMMIT"))
        assert read_rows(holder, 3) == [[r], [("h" * 300000,)], []]
        for c, rows, t in plans:
            assert read_rows(c, len(rows), LONG * 2) == rows
            t.join(LONG)
    finally:
        adm.close()
        holder.close()
        for c in qs:
            c.close()
    alive(pf, role)


# ---------------------------------------------------------------- RELOAD of pkt_buf


def test_reload_pkt_buf_while_clients_mid_message(proxy, role):
    """Clients hold the first 300 / 511 / 512 / 700 bytes of a query (small buffer, or just
    moved) while RELOAD sets pkt_buf to 512, 8192, 600 (restart-only: it must not change the
    buffers under them); then the rest: the right answers; then new clients likewise."""
    pf = tx_proxy(proxy, role, pkt_buf=4096)
    adm = Admin(pf)
    try:
        for size in (512, 8192, 600):
            cs, pend = [], []
            for n, cut in enumerate((300, 511, 512, 700)):
                c = connect(pf, role)
                m, r = q_exact("rl%d_%d" % (size, cut), 900 + n)
                c.send(m[:cut])
                cs.append(c)
                pend.append((m[cut:], r))
            pf.params["pkt_buf"] = size
            pf.write_ini()
            assert adm.run("RELOAD") == "RELOAD"
            for c, (rest, r) in zip(cs, pend):
                assert c.is_silent(0.01)
                c.send(rest)
                assert read_rows(c, 1) == [[r]]
                m, r2 = q_exact("again%d" % size, 5000)
                c.send(m)
                assert read_rows(c, 1) == [[r2]]
                c.close()
            c = connect(pf, role)
            m1, r1 = q_exact("new%d" % size, 510)
            m2, r2 = q_exact("new2%d" % size, 9000)
            c.send(m1 + m2)
            assert read_rows(c, 2) == [[r1], [r2]]
            c.close()
    finally:
        adm.close()
    alive(pf, role)


# ---------------------------------------------------------------- startup / raw mode


def startup_exact(user, total, extra_key="application_name"):
    """A startup packet of exactly total bytes (padding in application_name)."""
    base = pgwire.startup_message({"user": user, "database": "appdb", extra_key: ""})
    pad = total - len(base)
    assert pad >= 0
    pkt = pgwire.startup_message({"user": user, "database": "appdb", extra_key: "a" * pad})
    assert len(pkt) == total
    return pkt


def test_startup_packets_around_512_with_pipelined_queries(proxy, role):
    """auth_type trust: startup packets of 505..520 and 4090..4100 bytes (one send with two
    queries right behind them that cross 512 / pkt_buf, and one byte at a time for a few):
    logged in, both queries answered in order."""
    name, pw = role
    pf = proxy(params={"pool_mode": "transaction", "auth_type": "trust"}, userlist={name: pw})
    cases = [(t, False) for t in list(range(505, 521)) + [4090, 4096, 4100, 9000]]
    cases += [(511, True), (512, True), (513, True)]
    for total, bytewise in cases:
        s = pgwire.open_socket(pf.host, pf.port, LONG)
        c = pgwire.Connection(s)
        try:
            m1, r1 = q_exact("su%d" % total, 200)
            m2, r2 = q_exact("sv%d" % total, 700)
            data = startup_exact(name, total) + m1 + m2
            if bytewise:
                send_bytewise(c, data)
            else:
                c.send(data)
            msgs = c.read_until_ready(LONG, count=3)
            kinds = [k for k, _ in msgs]
            assert "E" not in kinds, [pgwire.parse_fields(p) for k, p in msgs if k == "E"]
            rows = [pgwire.decode_data_row(p) for k, p in msgs if k == "D"]
            assert rows == [r1, r2], total
        finally:
            c.close()
    alive(pf, role)


def test_md5_login_with_password_message_across_edge(proxy, role):
    """Startup of 500 bytes, then (after the md5 challenge) the password message and two
    queries in one write, with a 400-byte prefix; also an oversized password message (600
    bytes of garbage) is refused cleanly."""
    name, pw = role
    pf = tx_proxy(proxy, role)
    import hashlib
    for variant in ("good", "long"):
        s = pgwire.open_socket(pf.host, pf.port, LONG)
        c = pgwire.Connection(s)
        try:
            c.send(startup_exact(name, 500))
            kind, payload = c.read_message(LONG)
            assert kind == "R" and struct.unpack("!I", payload[:4])[0] == 5
            if variant == "good":
                inner = hashlib.md5(pw.encode() + name.encode()).hexdigest()
                outer = hashlib.md5(inner.encode() + payload[4:8]).hexdigest()
                pmsg = pgwire.message(b"p", b"md5" + outer.encode() + b"\0")
                m1, r1 = q_exact("pw1", 470)
                m2, r2 = q_exact("pw2", 600)
                c.send(pmsg + m1 + m2)
                msgs = c.read_until_ready(LONG, count=3)
                rows = [pgwire.decode_data_row(p) for k, p in msgs if k == "D"]
                assert rows == [r1, r2]
            else:
                c.send(pgwire.message(b"p", b"md5" + b"f" * 600 + b"\0"))
                kind, payload = c.read_message(LONG)
                assert kind == "E", (kind, payload)
        finally:
            c.close()
    alive(pf, role)


# ---------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def certs(run_user):
    import tlscerts
    c = tlscerts.TlsCerts()
    yield c
    c.destroy()


def test_tls_clients_around_512(pgfunnel, postgres, certs, role):
    """TLS clients (SSLRequest, then TLS): queries of 505..520 bytes, two queries straddling
    512 in one write, a 100 KB query, and a pipeline of 50 small ones; each its own answers."""
    from test_tls import client_tls, tls_context, tls_login
    name, pw = role
    p = {"pool_mode": "transaction"}
    p.update(client_tls(certs, "require"))
    pf = pfhelpers.start_proxy(pgfunnel, postgres, params=p, userlist={name: pw})
    for size in list(range(505, 521)) + [100 * 1024]:
        c = tls_login(pf, name, "appdb", pw, tls_context())
        try:
            m, r = q_exact("tls%d" % size, size)
            m2, r2 = q_exact("tlsb%d" % size, 1000)
            c.send(m + m2)
            assert read_rows_blocking(c, 2) == [[r], [r2]]
            ms, rs = [], []
            for i in range(50):
                mm, rr = q_exact("tp%d" % i, 30 + i)
                ms.append(mm)
                rs.append([rr])
            c.send(b"".join(ms))
            assert read_rows_blocking(c, 50) == rs
        finally:
            c.close()
    assert pf.is_running()


def read_rows_blocking(conn, n_ready):
    """read_rows for a TLS connection (blocking reads: pgwire's timed ones poll the raw
    socket, which misses data the TLS layer has buffered)."""
    msgs = []
    while n_ready > 0:
        msgs.append(conn.read_message())
        n_ready -= msgs[-1][0] == "Z"
    return rows_by_answer(msgs)


# ---------------------------------------------------------------- console


def test_console_commands_longer_than_512(proxy, role):
    """Admin console: SHOW commands padded with blanks to 505..520 and 5000 bytes, one
    write with three of them, one byte at a time for 513: each answered."""
    pf = tx_proxy(proxy, role)
    adm = Admin(pf)
    try:
        for total in list(range(505, 521)) + [5000]:
            sql = "SHOW VERSION"
            pad = total - (1 + 4 + len(sql) + 1) - 1
            q = pgwire.fe_query("%s%s;" % (sql, " " * pad))
            assert len(q) == total
            adm.conn.send(q + pgwire.fe_query("SHOW STATE") + q)
            msgs = adm.conn.read_until_ready(LONG, count=3)
            assert [pgwire.parse_fields(p) for k, p in msgs if k == "E"] == [], total
            assert len([k for k, _ in msgs if k == "C"]) == 3
            if total == 513:
                send_bytewise(adm.conn, q)
                msgs = adm.conn.read_until_ready(LONG)
                assert [k for k, _ in msgs if k == "E"] == []
    finally:
        adm.close()
    alive(pf, role)


# ---------------------------------------------------------------- randomized pipelines


def random_round(rng, cid, n, prepared):
    """Bytes of one random pipeline and the rows expected per ReadyForQuery."""
    parts, expect = [], []
    for j in range(rng.randint(1, 6)):
        tag = "r%d_%d_%d" % (cid, n, j)
        kind = rng.choice("QQQEPB" if prepared else "QQQE")
        size = rng.choice([rng.randint(25, 520), rng.randint(500, 530), rng.randint(4080, 4110),
                           rng.randint(600, 20000)])
        if kind == "Q":
            m, r = q_exact(tag, max(size, 40))
            parts.append(m)
            expect.append([r])
        elif kind == "E":
            pad = max(0, size - 60)
            parts.append(pgwire.fe_parse("SELECT $1::text, '%s'" % tag) +
                         pgwire.fe_bind(params=("e" * pad,)) + pgwire.fe_describe("P") +
                         pgwire.fe_execute() + pgwire.fe_sync())
            expect.append([("e" * pad, tag)])
        else:
            name = "ps_%d_%d" % (cid, rng.randint(0, 3)) + "x" * rng.choice([0, 100, 400])
            pad = max(0, size - 80)
            d, r = prepared_round(None, name, tag, pad)
            parts.append(d + pgwire.fe_close("S", name) + pgwire.fe_sync())
            expect.append([r])
            expect.append([])
    return b"".join(parts), expect


def send_randomly_cut(rng, conn, data):
    pos = 0
    while pos < len(data):
        step = rng.choice([1, 2, 5, 507, 511, 512, 513, rng.randint(1, 9000)])
        conn.send(data[pos:pos + step])
        pos += step


@pytest.mark.parametrize("cfg", ["default", "small_pkt_buf", "prepared_pool1", "tiny_socket"])
def test_random_pipelines_many_clients(proxy, role, cfg):
    """Six clients in threads, 25 random pipelines each (simple queries, unnamed extended
    rounds, named prepared rounds with long names; sizes around 512, pkt_buf and beyond) sent
    in randomly cut pieces (1, 511, 512, 513 bytes, ...): each client gets exactly its own rows,
    in order. Configs: defaults; sbuf_loopcnt=1 + pkt_buf=600 + max_prepared_statements=100;
    max_prepared_statements=100 with a pool of 1; the second with tcp_socket_buffer=4096 as
    well. That last one stalled clients for good while pgfunnel sized its sockets after the
    TCP handshake (see test_socket_buffer.py): the kernel dropped what a client sent beyond
    the shrunk buffer, the ACKs of the answers a waiting named Parse needed included."""
    import random
    params = {"default": {},
              "small_pkt_buf": {"sbuf_loopcnt": 1, "pkt_buf": 600, "max_prepared_statements": 100},
              "prepared_pool1": {"max_prepared_statements": 100, "default_pool_size": 1},
              "tiny_socket": {"sbuf_loopcnt": 1, "pkt_buf": 600, "max_prepared_statements": 100,
                              "tcp_socket_buffer": 4096}}[cfg]
    prepared = "max_prepared_statements" in params
    pf = tx_proxy(proxy, role, **params)

    def run(cid):
        rng = random.Random(cid * 1000 + len(cfg))
        c = connect(pf, role)
        try:
            for n in range(25):
                data, expect = random_round(rng, cid, n, prepared)
                t = threading.Thread(target=send_randomly_cut, args=(rng, c, data))
                t.start()
                got = read_rows(c, len(expect), LONG * 2)
                t.join(LONG)
                assert got == expect, (cid, n, [len(g) for g in got])
        finally:
            c.close()

    assert pfhelpers.run_clients(6, run, LONG * 4) == []
    alive(pf, role)


# ---------------------------------------------------------------- output blocked, suspend


def test_unread_results_while_sending_across_512(proxy, role):
    """A client pipelines 150 queries of 300..900 bytes each answering 60 KB, in one thread,
    without reading until everything is sent (pgfunnel's output to it blocks, so it stops
    reading with bytes in the small or just-moved buffer); then reads: every answer in order."""
    pf = tx_proxy(proxy, role)
    c = connect(pf, role)
    try:
        msgs, expect = [], []
        for i in range(150):
            tag = "u%d" % i
            sql_head = "SELECT '%s', repeat('%s', 60000), '" % (tag, chr(97 + i % 26))
            size = 300 + (i * 41) % 600
            pad = size - (1 + 4 + len(sql_head) + 2)
            msgs.append(pgwire.fe_query(sql_head + "p" * pad + "'"))
            expect.append([(tag, chr(97 + i % 26) * 60000, "p" * pad)])
        data = b"".join(msgs)
        t = threading.Thread(target=c.send, args=(data,))
        t.start()
        got = read_rows(c, 150, LONG * 2)
        t.join(LONG)
        assert not t.is_alive()
        assert got == expect
    finally:
        c.close()
    alive(pf, role)


def test_suspend_resume_with_half_messages(proxy, role):
    """Clients hold 100 / 511 / 512 / 513 / 2000 bytes of a 3000-byte query when SUSPEND
    comes; the rest is sent while suspended; after RESUME each gets its answer."""
    pf = tx_proxy(proxy, role)
    adm = Admin(pf)
    cs, pend = [], []
    try:
        for cut in (100, 511, 512, 513, 2000):
            c = connect(pf, role)
            m, r = q_exact("sus%d" % cut, 3000)
            c.send(m[:cut])
            cs.append(c)
            pend.append((m[cut:], r))
        assert adm.run("SUSPEND") == "SUSPEND"
        for c, (rest, _) in zip(cs, pend):
            c.send(rest)
        for c in cs:
            assert c.is_silent(0.05)
        assert adm.run("RESUME") == "RESUME"
        for c, (_, r) in zip(cs, pend):
            assert read_rows(c, 1) == [[r]]
    finally:
        adm.close()
        for c in cs:
            c.close()
    alive(pf, role)
