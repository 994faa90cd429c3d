"""Red-team attacks on the request-queue accounting, the conn layer, hostile servers and the
auth path (wip-atk).

These attacks found bugs, all fixed since; their tests stay as regressions (docstrings say
"Was a bug"):
  test_pipelined_copydone_for_two_copies_pins_server          reqq.c push/start_copy_in
  test_idle_client_pins_server_past_idle_transaction_timeout  flush/copydone/parse_describe_flush
  test_hostile_bytes_after_last_ready_go_to_next_client       conn.c FORWARD_LAST + pool release
  test_release_recursion_many_waiting_flush_terminate         stack overflow (ASan)
  test_hostile_server_auth[sasl_twice]                        LeakSanitizer
  test_hostile_server_auth[sasl_ok_without_final]             SCRAM server check skipped
  test_hostile_server_many_parameter_status_at_login          O(n^2) stall
  test_server_dies_mid_message_client_stream_framing          FATAL inside a forwarded message
  test_backend_terminated_mid_row_error_inside_row            (same, real Postgres)
  test_ready_while_client_mid_message_then_idle               server kept after mid-message RFQ
The others are regressions for attacks that held up.

Every value a client asks for names the client, so an answer that reaches the wrong client
is detectable."""

import socket
import struct
import threading
import time

import pytest

import pfhelpers
import pgwire
from test_robust_clients import finish  # noqa: F401 - also used by test_zz_attack2
from test_robust_memory import settled_rss_kib


# ---------------------------------------------------------------- wire helpers


def msg(kind, payload=b""):
    return kind + struct.pack("!I", len(payload) + 4) + payload


def cstr(s):
    return (s if isinstance(s, bytes) else s.encode()) + b"\0"


def Q(sql):
    return msg(b"Q", cstr(sql))


def P(sql, name=""):
    return msg(b"P", cstr(name) + cstr(sql) + struct.pack("!H", 0))


def B(portal="", stmt=""):
    return msg(b"B", cstr(portal) + cstr(stmt) + struct.pack("!HHH", 0, 0, 0))


def E(portal="", maxrows=0):
    return msg(b"E", cstr(portal) + struct.pack("!I", maxrows))


def D(kind=b"P", name=""):
    return msg(b"D", kind + cstr(name))


SYNC = msg(b"S")
FLUSH = msg(b"H")
COPY_DONE = msg(b"c")


def CD(data):
    return msg(b"d", data)


def CF(text="nope"):
    return msg(b"f", cstr(text))


def pools(pf, db):
    cols, rows = pfhelpers.console(pf, "SHOW POOLS")
    return [r for r in pfhelpers.rows_as_dicts(cols, rows) if r["database"] == db]


def servers(pf, db):
    cols, rows = pfhelpers.console(pf, "SHOW SERVERS")
    return [r for r in pfhelpers.rows_as_dicts(cols, rows) if r["database"] == db]


@pytest.fixture
def role(postgres):
    return pfhelpers.new_role(postgres, "atk")


@pytest.fixture(scope="module")
def copy_table(postgres):
    with postgres.connect(dbname="appdb", autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS atk_copy (x text)")
        conn.execute("GRANT ALL ON atk_copy TO PUBLIC")
    return "atk_copy"


def one_server(proxy, role, mode="transaction", extra=None):
    p = {"pool_mode": mode, "default_pool_size": 1, "max_db_connections": 1,
         "query_wait_timeout": 30}
    p.update(extra or {})
    return proxy(params=p, userlist={role[0]: role[1]})


def wire(pf, role, db="appdb"):
    return pgwire.connect(pf.host, pf.port, role[0], db, role[1], timeout=5.0)


def b_check(pf, role, tag="B", timeout=4.0, db="appdb"):
    """Client B logs in, asks for its own name and must get exactly that back in time."""
    with wire(pf, role, db) as b:
        b.sock.settimeout(timeout)
        t0 = time.monotonic()
        rows = b.simple_query("SELECT '%s-own'" % tag)
        assert rows == [("%s-own" % tag,)], rows
        return time.monotonic() - t0


# ---------------------------------------------------------------- 1/2: queue accounting


def test_pipelined_copydone_for_two_copies_pins_server(proxy, role, copy_table):
    """Was a bug, now a regression test: a simple Query holding two COPY FROM STDIN with all CopyData/CopyDone sent up
    front (legal: the server reads them as it goes) makes reqq.c count only one CopyDone
    (push() drops a second consecutive COPY_END); at the second CopyInResponse the model
    thinks the COPY is still open, the CommandComplete then sets `broken`, so
    ready_for_query() never releases the server: A holds the only server while idle and B
    waits (query_wait_timeout)."""
    pf = one_server(proxy, role)
    a = wire(pf, role)
    a.send(Q("COPY atk_copy FROM STDIN; COPY atk_copy FROM STDIN") + CD(b"A1\n") + COPY_DONE +
           CD(b"A2\n") + COPY_DONE)
    msgs = a.read_until_ready(5.0, count=1)
    assert [k for k, _ in msgs if k in "GCEZ"] == ["G", "C", "G", "C", "Z"], msgs
    # A is idle now (ReadyForQuery 'I'), so in transaction mode the server is free.
    try:
        b_check(pf, role, timeout=2.0)
    except socket.timeout:
        sv = servers(pf, "appdb")
        pytest.fail("B got no server while A is idle: SHOW SERVERS %r" % sv)
    finally:
        a.close()
    finish(pf)


# ---------------------------------------------------------------- 3: hostile servers


def be_row(*vals):
    p = struct.pack("!H", len(vals))
    for v in vals:
        v = v.encode()
        p += struct.pack("!i", len(v)) + v
    return msg(b"D", p)


def be_cc(tag="SELECT 1"):
    return msg(b"C", cstr(tag))


def be_z(st=b"I"):
    return msg(b"Z", st)


def be_err(text="boom", severity="ERROR", code="XX000"):
    return msg(b"E", b"S" + cstr(severity) + b"V" + cstr(severity) + b"C" + cstr(code) +
               b"M" + cstr(text) + b"\0")


WELCOME = b"".join(msg(b"S", cstr(k) + cstr(v)) for k, v in [
    ("server_version", "15.0"), ("server_encoding", "UTF8"), ("client_encoding", "UTF8"),
    ("DateStyle", "ISO, MDY"), ("TimeZone", "UTC"), ("integer_datetimes", "on"),
    ("standard_conforming_strings", "on"), ("application_name", ""),
    ("IntervalStyle", "postgres"), ("is_superuser", "off"), ("session_authorization", "x")])


class FakePg:
    """A scripted 'Postgres' on 127.0.0.1: logs anyone in (AuthenticationOk), then runs
    script(sock, index) in a thread per connection. Queries are read with pgwire.read_frontend_message()."""

    def __init__(self, script, auth=None):
        self.script = script
        self.auth = auth
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.port = pfhelpers.alloc_port()
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.conns = []
        self.errors = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            idx = len(self.conns)
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c, idx), daemon=True).start()

    def _serve(self, c, idx):
        try:
            c.settimeout(30)
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while True:
                (n,) = struct.unpack("!I", pgwire.recv_exact(c, 4))
                body = pgwire.recv_exact(c, n - 4)
                if struct.unpack("!I", body[:4])[0] == 80877103:
                    c.sendall(b"N")
                    continue
                break
            if self.auth and not self.auth(c):
                return
            c.sendall(msg(b"R", struct.pack("!I", 0)) + WELCOME +
                      msg(b"K", struct.pack("!II", 4242 + idx, 7)) + be_z())
            self.script(c, idx)
        except (EOFError, OSError):
            pass
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.errors.append(repr(e))

    def entry(self):
        return "host=127.0.0.1 port=%d dbname=fake" % self.port

    def stop(self):
        self._stop.set()
        self._thread.join(5)
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass
        self.sock.close()
        pfhelpers.release_port(self.port)


def answer_queries(c, extra_first=b"", hold_first=None):
    """Answers every Query with one row: the query text after SELECT (the client's name).
    hold_first: a (received, release) pair of threading.Events: received is set when the
    first Query has arrived, whose answer then waits until the test sets release."""
    first = True
    while True:
        kind, payload = pgwire.read_frontend_message(c)
        if kind == b"X":
            return
        if kind != b"Q":
            continue
        text = payload[:-1].decode().replace("SELECT ", "").strip("'")
        if first and hold_first:
            hold_first[0].set()
            if not hold_first[1].wait(30):
                raise AssertionError("the test never released the first answer")
        c.sendall(be_row(text) + be_cc() + be_z() + (extra_first if first else b""))
        first = False


@pytest.fixture
def fake_env(proxy, postgres, role):
    """(start(script, **params) -> (pf, fake), role): pgfunnel with database 'fake' (pool of
    one server) at a FakePg and appdb at the real cluster for a canary."""
    made = []

    def start(script, auth=None, **params):
        fake = FakePg(script, auth)
        made.append(fake)
        p = {"pool_mode": "transaction", "default_pool_size": 1, "query_wait_timeout": 30,
             "server_login_retry": 1}
        p.update(params)
        pf = proxy(params=p, databases={"fake": fake.entry()}, userlist={role[0]: role[1]})
        return pf, fake
    yield start, role
    for f in made:
        f.stop()


def test_hostile_bytes_after_last_ready_go_to_next_client(fake_env):
    """Was a bug, now a regression test: the fake server answers A's query and, in the same segment, sends one more
    DataRow after the ReadyForQuery that frees it. ready_for_query() returns
    PF_PKT_FORWARD_LAST, server_on_forwarded() releases the server and the pool links the
    waiting client B at once (pf_server_link -> B's Query is pushed), then pf_conn_process()
    goes on with the rest of the same read buffer, now with s->link == B: B receives the
    DataRow the server sent while it was linked to A (pf_server_is_clean() does not look at
    pf_conn_has_input(), and the release happens inside the server's message walk)."""
    start, role = fake_env
    received, release = threading.Event(), threading.Event()
    pf, fake = start(lambda c, i: answer_queries(c, extra_first=be_row("LEAK-for-A"),
                                                 hold_first=(received, release)))
    a = wire(pf, role, "fake")
    b = wire(pf, role, "fake")
    try:
        a.send_query("SELECT 'A'")
        # A holds the only server (its Query reached it); B queues behind it; only then may
        # the server answer A, with the extra DataRow after the ReadyForQuery.
        pfhelpers.wait_until(lambda: received.is_set(), 10, "A's Query reached the server")
        b.send_query("SELECT 'B'")
        pfhelpers.wait_pool(pf, "fake", lambda r: int(r["cl_waiting"]) == 1,
                            "B waits for the server A holds")
    finally:
        release.set()
    got_a = pgwire.data_values(a.read_until_ready(5.0, count=1))
    got_b = pgwire.data_values(b.read_until_ready(5.0, count=1))
    a.close()
    b.close()
    assert got_a == ["A"], got_a
    assert got_b == ["B"], "B got %r" % got_b
    finish(pf)


def _row_for(text):
    return be_row(text) + be_cc() + be_z()


HOSTILE = {
    # name: function(sock, text) doing the misbehaviour for the first query of connection 0
    "extra_ready": lambda c, t: c.sendall(_row_for(t) + be_z()),
    "unasked_parse_complete": lambda c, t: c.sendall(msg(b"1") + _row_for(t)),
    "copy_in_to_select": lambda c, t: c.sendall(msg(b"G", b"\0\0\0")),
    "copy_both": lambda c, t: c.sendall(msg(b"W", b"\0\0\0") + msg(b"d", b"A-copyboth")),
    "error_without_request": lambda c, t: c.sendall(_row_for(t) + be_err("A-stray")),
    "split_per_byte": lambda c, t: [c.sendall(bytes([x])) for x in _row_for(t)],
    "huge_length": lambda c, t: c.sendall(b"D" + struct.pack("!I", 0x7ffffff0) + b"A" * 5000),
    "close_mid_message": lambda c, t: (c.sendall(_row_for(t)[:7]), c.close()),
    "garbage_type0": lambda c, t: c.sendall(b"\0\0\0\0\0" + _row_for(t)),
    "negative_length": lambda c, t: c.sendall(b"D\xff\xff\xff\xff"),
    "rfq_bad_status": lambda c, t: c.sendall(be_row(t) + be_cc() + msg(b"Z", b"Q")),
    "rfq_in_transaction_then_idle": lambda c, t: c.sendall(be_row(t) + be_cc() + be_z(b"T")),
}


def hostile_script(behaviour):
    def script(c, idx):
        first = idx == 0
        while True:
            kind, payload = pgwire.read_frontend_message(c)
            if kind == b"X":
                return
            if kind != b"Q":
                continue
            text = payload[:-1].decode().replace("SELECT ", "").strip("'")
            if first:
                first = False
                HOSTILE[behaviour](c, text)
                continue
            c.sendall(_row_for(text))
    return script


def drain(conn, timeout=2.0):
    """Everything conn gets within timeout (or until it is closed)."""
    conn.sock.settimeout(0.2)
    data = b""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            chunk = conn.sock.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            break
        if not chunk:
            break
        data += conn.buf + chunk
        conn.buf = b""
    return data


@pytest.mark.parametrize("behaviour", sorted(HOSTILE))
def test_hostile_server_answers(fake_env, postgres, behaviour):
    """The only server of db 'fake' misbehaves on A's first query; afterwards client B on the
    same db must get its own answer (or an error), never a byte tagged A; a canary on the
    real cluster keeps working; no sanitizer report."""
    start, role = fake_env
    pf, fake = start(hostile_script(behaviour), server_connect_timeout=3)
    can = pfhelpers.Canary(pf, role[0], "appdb", role[1]).start()
    a = wire(pf, role, "fake")
    a.send_query("SELECT 'A'")
    got_a = drain(a, 0.5)
    a.sock.close()
    # A is told something (its answer, the server's own bytes as they came, or pgfunnel's
    # error), all of it A's: every value names A, an error is pgfunnel's "server conn
    # crashed?" (the server broke the protocol), and the stray error the server sends after
    # the ReadyForQuery that ended A's request reaches nobody.
    msgs_a, _ = pgwire.split_messages(got_a)
    assert got_a, "A was told nothing about its query"
    assert all(v is not None and v.startswith("A") for v in pgwire.data_values(msgs_a)), (
        "A got %r" % msgs_a)
    for kind, payload in msgs_a:
        if kind == "E":
            err = pgwire.PgError(pgwire.parse_fields(payload))
            assert (err.severity, err.sqlstate, err.message) == (
                "FATAL", "08006", "server conn crashed?"), err.fields
    assert b"A-stray" not in got_a, msgs_a
    if any(k == "Z" for k, _ in msgs_a):
        # A complete answer is A's row, once.
        assert [k for k, _ in msgs_a if k in "DZ"] == ["D", "Z"], msgs_a
    b = wire(pf, role, "fake")
    b.send_query("SELECT 'B'")
    b.sock.settimeout(5)
    try:
        got_b = b.read_until_ready(5.0, count=1)
    except (pgwire.ProtocolError, OSError) as e:
        got_b = [("closed", repr(e).encode())]
    b.sock.close()
    vals = pgwire.data_values(got_b)
    assert all("A" not in v for v in vals if v), "B got %r" % got_b
    assert not any(k == "E" and b"A-stray" in p for k, p in got_b), got_b
    can.check()
    assert not fake.errors, fake.errors
    finish(pf)


# ---------------------------------------------------------------- 1: disconnects / concurrency


def F_backend_pid():
    # FunctionCall pg_backend_pid() (oid 2026): no argument formats, no arguments, text result
    return msg(b"F", struct.pack("!IHHH", 2026, 0, 0, 0))


def sequences(t):
    """(name, bytes, number of ReadyForQuery) for client tag t; every value names t."""
    return [
        ("two_queries", Q("SELECT '%s-1'" % t) + Q("SELECT '%s-2'" % t), 2),
        ("extended", P("SELECT '%s-3'" % t) + B() + D() + E() + SYNC, 1),
        ("extended_error", P("SELECT 1/0") + B() + E() + Q("SELECT '%s-x'" % t) + SYNC +
         Q("SELECT '%s-4'" % t), 2),
        ("flush_then_sync", P("SELECT '%s-5'" % t) + B() + D() + E() + FLUSH + SYNC, 1),
        ("copy_in", Q("COPY atk_copy FROM STDIN") + CD(b"%s-6\n" % t.encode()) + COPY_DONE, 1),
        ("copy_in_fail", Q("COPY atk_copy FROM STDIN") + CD(b"x\n") + CF() +
         Q("SELECT '%s-7'" % t), 2),
        ("copy_in_query_inside", Q("COPY atk_copy FROM STDIN") + Q("SELECT '%s-y'" % t) +
         Q("SELECT '%s-8'" % t), None),  # Postgres 15 ends the session on this
        ("copy_in_extended", P("COPY atk_copy FROM STDIN") + B() + E() + SYNC +
         CD(b"%s-9\n" % t.encode()) + FLUSH + COPY_DONE + SYNC, 1),
        ("copy_out", Q("COPY (SELECT '%s-10' FROM generate_series(1,300)) TO STDOUT" % t), 1),
        ("copy_out_extended", P("COPY (SELECT '%s-11') TO STDOUT" % t) + B() + E() + SYNC, 1),
        ("empty", Q("") + P("") + B() + E() + SYNC, 2),
        ("function_call", F_backend_pid() + Q("SELECT '%s-12'" % t), 2),
        ("begin_commit", Q("BEGIN") + Q("SELECT '%s-13'" % t) + Q("COMMIT"), 3),
        ("suspended", P("SELECT '%s-14' FROM generate_series(1,5)" % t) + B() + E(maxrows=2) +
         E(maxrows=2) + SYNC, 1),
        ("close_describe", P("SELECT '%s-15'" % t, "s1") + D(b"S", "s1") + msg(b"C", b"Ss1\0") +
         SYNC, 1),
        ("copydone_outside_copy", COPY_DONE + Q("SELECT '%s-16'" % t) + COPY_DONE + CF() +
         CD(b"zz") + Q("SELECT '%s-17'" % t), 2),
    ]


def own_values_only(vals, t):
    for v in vals:
        if v is None or v.isdigit():
            continue
        assert v.startswith(t + "-") or v.startswith(t.encode().decode() + "-"), (
            "client %s got %r" % (t, v))


@pytest.mark.parametrize("part", [0, 1, 2, 3])
@pytest.mark.parametrize("mode", ["transaction", "statement", "session"])
def test_disconnect_at_every_message_boundary(proxy, role, copy_table, mode, part):
    """A sends a prefix of each sequence (cut inside and at every message boundary) and hangs
    up; client B then must get exactly its own answer within 3 s (B stays connected in
    transaction/statement mode, logs in anew each time in session mode). A quarter of the
    sequences per part."""
    pf = one_server(proxy, role, mode)
    persistent = mode != "session"
    b = wire(pf, role) if persistent else None
    n = 0
    for name, data, _ in sequences("A")[part::4]:
        cuts = set()
        pos = 0
        for _k, p in pgwire.split_messages(data)[0]:
            cuts.update({pos + 1, pos + 5 + len(p) // 2})
            pos += 5 + len(p)
        cuts.add(len(data))
        for cut in sorted(cuts):
            a = pgwire.Connection(pgwire.open_socket(pf.host, pf.port, 5))
            a.login(role[0], "appdb", role[1])
            a.send(data[:cut])
            if cut % 2:
                time.sleep(0.01)
            a.sock.close()
            n += 1
            bb = b if persistent else wire(pf, role)
            bb.sock.settimeout(3)
            try:
                rows = bb.simple_query("SELECT 'B-%d'" % n)
            except socket.timeout:
                pytest.fail("B stuck after A sent %s[:%d] and left; servers %r" % (
                    name, cut, servers(pf, "appdb")))
            assert rows == [("B-%d" % n,)], (name, cut, rows)
            if not persistent:
                bb.close()
    if b:
        b.close()
    finish(pf)


def _worker(pf, role, t, rounds, errors, seed, mode):
    import random
    rnd = random.Random(seed)
    try:
        conn = wire(pf, role)
        conn.sock.settimeout(10)
        # Statement mode refuses an explicit transaction block: leave that one out there.
        seqs = [x for x in sequences(t)
                if x[2] and not (mode == "statement" and x[0] == "begin_commit")]
        for _ in range(rounds):
            name, data, nz = rnd.choice(seqs)
            if rnd.random() < 0.3:
                for i in range(0, len(data), 3):  # split into 3-byte writes
                    conn.send(data[i:i + 3])
            else:
                conn.send(data)
            got = conn.read_until_ready(10, count=nz)
            own_values_only(pgwire.data_values(got), t)
        conn.close()
    except Exception as e:  # noqa: BLE001
        errors.append("%s: %r" % (t, e))


@pytest.mark.parametrize("mode", ["transaction", "statement"])
def test_concurrent_odd_pipelines_no_cross_talk(proxy, role, copy_table, mode):
    """Four clients on a pool of one server run random odd sequences (some split into 3-byte
    writes); every value each one gets must be its own."""
    pf = one_server(proxy, role, mode)
    errors = []
    ths = [threading.Thread(target=_worker, args=(pf, role, t, 60, errors, i, mode))
           for i, t in enumerate(["A", "B", "C", "D"])]
    for th in ths:
        th.start()
    for th in ths:
        th.join(60)
    assert not errors, "\n".join(errors + [l for l in pf.log_text().splitlines() if "closing" in l or "WARN" in l][-12:])
    finish(pf)


# ---------------------------------------------------------------- 5: auth path


def startup(user, db):
    return pgwire.startup_message({"user": user, "database": db})


def sasl_init(first, mech=b"SCRAM-SHA-256", dlen=None):
    first = first if isinstance(first, bytes) else first.encode()
    return msg(b"p", mech + b"\0" + struct.pack("!I", len(first) if dlen is None else dlen) +
               first)


def auth_exchange(pf, role, steps, timeout=3.0):
    """Log in, then for each step: bytes to send, or a callable(server_first) -> bytes, or
    'read' (one message). Returns everything received until the close (or timeout)."""
    s = socket.create_connection((pf.host, pf.port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = pgwire.Connection(s)
    got = []
    conn.send(startup(role[0], "appdb"))
    try:
        got.append(conn.read_message())  # the authentication request
        for st in steps:
            if st == "read":
                got.append(conn.read_message())
            elif callable(st):
                conn.send(st(got[-1][1][4:].decode()))
            else:
                conn.send(st)
        while True:
            got.append(conn.read_message())
    except (pgwire.ProtocolError, OSError):
        pass
    finally:
        s.close()
    return got


def _scram_cases(pw):
    sc = pgwire._Scram(pw)
    first = sc.client_first()
    good_init = sasl_init(first)
    cases = {
        "init_no_nul": msg(b"p", b"SCRAM-SHA-256"),
        "init_short_len": msg(b"p", b"SCRAM-SHA-256\0\0\0"),
        "init_len_huge": sasl_init(first, dlen=0xffffffff),
        "init_len_minus": sasl_init(first, dlen=len(first) - 1),
        "init_len_zero_empty": sasl_init(b""),
        "init_wrong_mech": sasl_init(first, mech=b"SCRAM-SHA-1"),
        "init_plus_mech": sasl_init("p=tls-server-end-point,," + sc.first_bare,
                                    mech=b"SCRAM-SHA-256-PLUS"),
        "init_cbind_p": sasl_init("p=tls-server-end-point,," + sc.first_bare),
        "init_cbind_y": sasl_init("y,," + sc.first_bare),
        "init_authzid": sasl_init("n,a=postgres," + sc.first_bare),
        "init_ext_m": sasl_init("n,,m=ext,n=,r=abc"),
        "init_no_nonce": sasl_init("n,,n=,r="),
        "init_nonce_comma": sasl_init("n,,n=,r=a,b"),
        "init_nonce_nonprint": sasl_init(b"n,,n=,r=\x01\x02\xff"),
        "init_nul_inside": sasl_init(b"n,,n=\0,r=abc"),
        "init_huge_nonce": sasl_init("n,,n=,r=" + "x" * 3000),
        "init_bigger_than_pkt_buf": sasl_init("n,,n=,r=" + "x" * 70000),
        "init_twice": good_init + good_init,
        "password_instead": msg(b"p", b"secret\0"),
        "query_instead": Q("SELECT 1"),
        "terminate": msg(b"X"),
        "type0": b"\0\0\0\0\x08abcd",
        "len3": b"p\0\0\0\x03",
    }
    steps = {k: [v] for k, v in cases.items()}
    # "y,,": the client could bind but thinks we cannot -- valid without TLS; end it
    steps["init_cbind_y"] = [cases["init_cbind_y"], "read", msg(b"X")]
    # after a good SASLInitialResponse
    finals = {
        "final_empty": msg(b"p", b""),
        "final_garbage": msg(b"p", b"\xff" * 50),
        "final_no_proof": lambda sf: msg(b"p", ("c=biws,r=" + sf.split(",")[0][2:]).encode()),
        "final_wrong_nonce": msg(b"p", b"c=biws,r=zzz,p=AAAA"),
        "final_bad_b64": lambda sf: msg(b"p", ("c=biws,r=%s,p=!!!!" % sf.split(",")[0][2:]
                                               ).encode()),
        "final_short_proof": lambda sf: msg(b"p", ("c=biws,r=%s,p=AAAA" % sf.split(",")[0][2:]
                                                   ).encode()),
        "final_long_proof": lambda sf: msg(b"p", ("c=biws,r=%s,p=%s" % (
            sf.split(",")[0][2:], "A" * 400)).encode()),
        "final_ext_then_proof": lambda sf: msg(b"p", ("c=biws,r=%s,x=1,y=,p=%s" % (
            sf.split(",")[0][2:], "A" * 44)).encode()),
        "final_proof_not_last": lambda sf: msg(b"p", ("c=biws,r=%s,p=%s,z=1" % (
            sf.split(",")[0][2:], "A" * 44)).encode()),
        "final_cbind_y": lambda sf: msg(b"p", ("c=eSws,r=%s,p=%s" % (
            sf.split(",")[0][2:], "A" * 44)).encode()),
        "final_nul": lambda sf: msg(b"p", ("c=biws,r=%s\0,p=%s" % (
            sf.split(",")[0][2:], "A" * 44)).encode()),
        "final_then_init_again": good_init,
        "final_query": Q("SELECT 1"),
        "final_terminate": msg(b"X"),
        "final_wrong_password": lambda sf: msg(b"p", pgwire._Scram.client_final(
            _with_pw(sc, "wrong"), sf).encode()),
    }
    for k, v in finals.items():
        steps[k] = [good_init, "read", v]
    return steps


def _with_pw(sc, pw):
    import copy
    x = copy.copy(sc)
    x.password = pw.encode()
    return x


@pytest.mark.parametrize("part", ["initial", "final"])
def test_scram_malformed_messages(proxy, role, part):
    """Malformed, repeated, misordered and oversized SASL messages: each ends the login with
    an error (never AuthenticationOk), pgfunnel stays up, no sanitizer report; a good login
    works afterwards."""
    pf = proxy(params={"auth_type": "scram-sha-256", "pkt_buf": 4096},
               userlist={role[0]: role[1]})
    for name, steps in _scram_cases(role[1]).items():
        if name.startswith("final") != (part == "final"):
            continue
        got = auth_exchange(pf, role, steps)
        kinds = [k for k, _ in got]
        oks = [p for k, p in got if k == "R" and p[:4] == b"\0\0\0\0"]
        assert not oks, (name, got)
        assert "Z" not in kinds, (name, got)
    with wire(pf, role) as c:
        assert c.simple_query("SELECT 'ok'") == [("ok",)]
    finish(pf)


def test_scram_disconnect_at_every_byte(proxy, role):
    """The client hangs up after every byte of a SCRAM exchange."""
    pf = proxy(params={"auth_type": "scram-sha-256"}, userlist={role[0]: role[1]})
    sc = pgwire._Scram(role[1])
    data = startup(role[0], "appdb") + sasl_init(sc.client_first())
    for cut in range(1, len(data)):
        s = socket.create_connection((pf.host, pf.port), timeout=3)
        s.sendall(data[:cut])
        s.close()
    def logged_in_clients():
        # Until pgfunnel has seen every hang-up they still count against max_client_conn, so
        # the console itself may be refused (53300) for a moment: that is not an answer yet.
        try:
            cols, rows = pfhelpers.console(pf, "SHOW CLIENTS")
        except Exception:  # noqa: BLE001
            return None
        return len(rows)
    ok = pfhelpers.wait_for(lambda: (lambda n: n is not None and n <= 1)(logged_in_clients()), 5)
    assert ok, "clients still listed 5 s after they hung up: %r" % (
        pfhelpers.console(pf, "SHOW CLIENTS")[1][:5],)
    with wire(pf, role) as c:
        assert c.simple_query("SELECT 'ok'") == [("ok",)]
    finish(pf)


@pytest.mark.parametrize("auth", ["md5", "plain"])
def test_password_message_malformed(proxy, role, auth):
    pf = proxy(params={"auth_type": auth}, userlist={role[0]: role[1]})
    cases = [msg(b"p", b""), msg(b"p", b"abc"), msg(b"p", b"ab\0cd\0"),
             msg(b"p", b"x" * 100000 + b"\0"), msg(b"p", b"md5\0"),
             msg(b"p", b"md5" + b"z" * 32 + b"\0"), msg(b"p", role[1].encode() + b"\0") * 2,
             sasl_init("n,,n=,r=abc"), Q("SELECT 1"), msg(b"X")]
    for data in cases:
        got = auth_exchange(pf, role, [data])
        if data == msg(b"p", role[1].encode() + b"\0") * 2 and auth == "plain":
            continue  # the first one is right
        assert not [p for k, p in got if k == "R" and p[:4] == b"\0\0\0\0"], (data[:40], got)
    with wire(pf, role) as c:
        assert c.simple_query("SELECT 'ok'") == [("ok",)]
    finish(pf)


# ---------------------------------------------------------------- 4: resource bounds


def _sender(sock, data, errors):
    try:
        sock.sendall(data)
    except OSError as e:
        errors.append(repr(e))


@pytest.mark.parametrize("what", ["sync", "parse_sync"])
def test_request_queue_bound_100k(proxy, role, what):
    """70k Syncs (or Parse+Sync pairs) pipelined by a client that reads nothing for 1 s:
    pgfunnel's memory stays bounded, then every answer arrives in order and the server is
    reusable."""
    pf = one_server(proxy, role)
    rss0 = pfhelpers.proc_rss_kib(pf.pid)
    a = wire(pf, role)
    n = 70000  # more than PF_REQQ_MAX (65536) owed at once
    unit = SYNC if what == "sync" else P("SELECT 1") + SYNC
    errors = []
    th = threading.Thread(target=_sender, args=(a.sock, unit * n, errors), daemon=True)
    th.start()
    rss1 = settled_rss_kib(pf.pid)
    counts = a.count_until_ready(n, 60)
    th.join(10)
    assert not errors, errors
    assert counts.get("Z") == n and counts.get("E", 0) == 0, counts
    if what == "parse_sync":
        assert counts.get("1") == n, counts
    assert rss1 - rss0 < 64 * 1024, "RSS grew by %d KiB" % (rss1 - rss0)
    b_check(pf, role, timeout=3)
    a.close()
    finish(pf)


def test_client_never_reads_big_result(proxy, role, postgres):
    """A client asks for ~200 MB and reads nothing: pgfunnel's RSS stays bounded and a canary
    (another database, same pgfunnel) is not slowed."""
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 2},
               userlist={role[0]: role[1]})
    can = pfhelpers.Canary(pf, role[0], "postgres", role[1]).start()
    rss0 = pfhelpers.proc_rss_kib(pf.pid)
    a = wire(pf, role)
    a.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    a.send_query("SELECT repeat('A', 1000) FROM generate_series(1, 200000)")
    can.expect_progress()
    rss1 = settled_rss_kib(pf.pid)
    a.sock.close()
    assert rss1 - rss0 < 32 * 1024, "RSS grew by %d KiB" % (rss1 - rss0)
    can.check()
    finish(pf)


def test_ssl_request_flood_unread(proxy, role):
    """One connection sends SSLRequest 200k times and reads nothing; 100 others send
    CancelRequests with made-up keys. RSS stays bounded, pgfunnel stays responsive."""
    pf = one_server(proxy, role)
    rss0 = pfhelpers.proc_rss_kib(pf.pid)
    s = socket.create_connection((pf.host, pf.port), timeout=5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    errors = []
    th = threading.Thread(target=_sender, args=(s, struct.pack("!II", 8, 80877103) * 200000,
                                                errors), daemon=True)
    th.start()
    for i in range(100):
        c = socket.create_connection((pf.host, pf.port), timeout=5)
        c.sendall(struct.pack("!IIII", 16, 80877102, i, i))
        c.close()
    rss1 = settled_rss_kib(pf.pid)
    b_check(pf, role, timeout=3)
    s.close()
    th.join(5)
    assert rss1 - rss0 < 32 * 1024, "RSS grew by %d KiB" % (rss1 - rss0)
    finish(pf)


def test_console_client_never_reads(proxy, role):
    """A console client pipelines 20k SHOW commands and reads nothing: RSS bounded; the
    console and the pool keep answering others."""
    pf = one_server(proxy, role)
    rss0 = pfhelpers.proc_rss_kib(pf.pid)
    c = pgwire.connect(pf.host, pf.port, "postgres", "pgbouncer", "pg-super-secret")
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    errors = []
    data = (Q("SHOW CONFIG") + Q("SHOW CLIENTS") + Q("SHOW HELP")) * 7000
    th = threading.Thread(target=_sender, args=(c.sock, data, errors), daemon=True)
    th.start()
    rss1 = settled_rss_kib(pf.pid)
    # a new console session gets a true answer
    assert {r["key"]: r["value"] for r in pfhelpers.show_wire(pf, "STATE")} == {
        "active": "yes", "paused": "no", "suspended": "no"}
    b_check(pf, role, timeout=3)
    c.sock.close()
    th.join(5)
    assert rss1 - rss0 < 32 * 1024, "RSS grew by %d KiB" % (rss1 - rss0)
    finish(pf)


# ---------------------------------------------------------------- framing of our own errors


def framing_problems(data):
    """None when data is a sequence of whole backend messages, else a description."""
    pos = 0
    kinds = []
    while pos < len(data):
        if len(data) - pos < 5:
            return "trailing %r after %r" % (data[pos:], kinds)
        (n,) = struct.unpack("!I", data[pos + 1:pos + 5])
        if n < 4 or pos + 1 + n > len(data):
            return "message %r of length %d at %d does not fit in %d bytes (after %r)" % (
                chr(data[pos]), n, pos, len(data), kinds[-5:])
        kinds.append(chr(data[pos]))
        pos += 1 + n
    if kinds and kinds[-1] != "E":
        return "last message %r is no ErrorResponse (%r)" % (kinds[-1], kinds[-5:])
    return None


def read_all_until_closed(sock, timeout=5.0):
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except (ConnectionResetError, socket.timeout):
            return data
        if not chunk:
            return data
        data += chunk


def test_server_dies_mid_message_client_stream_framing(fake_env):
    """The server sends the first 7 bytes of a DataRow and closes. pgfunnel has already
    forwarded those 7 bytes to the client (PF_PKT_FORWARD streams a message as it arrives),
    so it must close the client without a word: an ErrorResponse of its own would be read as
    the rest of the DataRow and desynchronise the client's stream."""
    start, role = fake_env
    pf, fake = start(hostile_script("close_mid_message"))
    a = wire(pf, role, "fake")
    a.send_query("SELECT 'A'")
    got = a.buf + read_all_until_closed(a.sock)
    a.sock.close()
    assert got == _row_for("A")[:7], got
    finish(pf)


def test_backend_terminated_mid_row_error_inside_row(proxy, role, postgres):
    """Was a bug, now a regression test: real Postgres. The backend is terminated (pg_terminate_backend: Postgres sends
    no error while it is inside a message) while a 100 MB row flows to a client that keeps
    up; pgfunnel sees EOF mid-message and its "server connection lost" ErrorResponse lands
    inside the DataRow the client is reading."""
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 1},
               userlist={role[0]: role[1]})
    a = wire(pf, role)
    a.send_query("SELECT repeat('A', 100000000)")
    a.sock.settimeout(10)
    data = a.buf
    while len(data) < 2000000:
        chunk = a.sock.recv(1 << 20)
        if not chunk:
            break
        data += chunk
    with postgres.connect(autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE usename = %s AND pid <> pg_backend_pid()", (role[0],))
    data += read_all_until_closed(a.sock)
    a.sock.close()
    # The stream ends inside the 100 MB DataRow (EOF mid-message is fine for a client); our
    # own ErrorResponse must not be written into the middle of the row.
    assert b"SFATAL" not in data[-400:], "ErrorResponse inside the DataRow: %r" % data[-200:]
    finish(pf)


# ---------------------------------------------------------------- recursion on release


def waiting_raw(pf, db):
    """cl_waiting of db from SHOW POOLS, over pgwire (psycopg's select() cannot take fds
    above 1024)."""
    return sum(int(r["cl_waiting"]) for r in pfhelpers.show_wire(pf, "POOLS")
               if r["database"] == db)


def _queue_flush_terminate(pf, role, n):
    """n clients that log in (trust), send Flush (which queues them for a server) and
    Terminate, all in one write, and keep their sockets open."""
    socks = []
    data = startup(role[0], "appdb") + FLUSH + msg(b"X")
    for _ in range(n):
        s = socket.create_connection((pf.host, pf.port), timeout=10)
        s.sendall(data)
        socks.append(s)
    return socks


def test_release_recursion_many_waiting_flush_terminate(proxy, role):
    """Was a bug (stack overflow), now a regression test: A holds the only server (BEGIN). N clients queue for it with
    Flush+Terminate. When A commits, pf_pool_release_server -> pf_pool_server_ready ->
    give_server -> pf_server_link -> pf_client_resume (nested processing of the waiting
    client) -> Flush forwarded (no request: server stays clean) -> Terminate ->
    pf_client_close -> pf_pool_release_server -> ... one nesting level per waiting client,
    all on one stack."""
    n = 1200  # with a 512 KiB stack; ~15000 overflow the default 8 MiB one
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 1,
                       "max_db_connections": 1, "max_client_conn": n + 50,
                       "auth_type": "trust", "query_wait_timeout": 60},
               userlist={role[0]: role[1]}, wrapper=["prlimit", "--stack=524288", "--"])
    a = wire(pf, role)
    a.simple_query("BEGIN")
    socks = _queue_flush_terminate(pf, role, n)
    assert pfhelpers.wait_for(lambda: waiting_raw(pf, "appdb") >= n, 60), waiting_raw(
        pf, "appdb")
    a.simple_query("COMMIT")
    # The chain has run once nobody waits any more (or pgfunnel died trying).
    pfhelpers.wait_for(lambda: not pf.is_running() or waiting_raw(pf, "appdb") == 0, 30)
    alive = pf.is_running()
    for s in socks:
        s.close()
    assert alive, "pgfunnel died:\n" + pf.all_output()[-3000:]
    b_check(pf, role, timeout=5)
    a.close()
    finish(pf)


def test_ready_while_client_mid_message_then_idle(proxy, role):
    """Was a bug, now a regression test: A sends a Query and the first bytes of a CopyData (ignored by the server outside
    a COPY); the ReadyForQuery arrives while A is mid-message, so ready_for_query() keeps the
    server (pf_conn_mid_message). A then completes the message and goes idle, but nothing
    re-checks the release when a client's message ends (client.c / conn.c): the idle A pins
    the only server until it sends another query or leaves."""
    pf = one_server(proxy, role)
    a = wire(pf, role)
    cd = CD(b"z" * 100)
    a.send(Q("SELECT 'A-1'") + cd[:20])
    got = a.read_until_ready(5.0, count=1)
    assert pgwire.data_values(got) == ["A-1"], got
    a.send(cd[20:])
    try:
        b_check(pf, role, timeout=2.0)
    except socket.timeout:
        pytest.fail("B got no server while A is idle: %r" % servers(pf, "appdb"))
    a.close()
    finish(pf)


def test_hostile_server_never_reads_and_floods(fake_env):
    """Server 0 never reads after login and sends DataRows forever; client A pushes 20 MB
    at it and reads nothing. pgfunnel's RSS stays bounded, a canary on the real cluster keeps
    going, and when A leaves the server is closed (not reused)."""
    stop = threading.Event()

    def script(c, idx):
        if idx == 0:
            row = be_row("A" * 1000) * 64
            try:
                while not stop.is_set():
                    c.sendall(row)
            except OSError:
                return
        answer_queries(c)
    start, role = fake_env
    pf, fake = start(script)
    can = pfhelpers.Canary(pf, role[0], "appdb", role[1]).start()
    rss0 = pfhelpers.proc_rss_kib(pf.pid)
    a = wire(pf, role, "fake")
    a.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    errors = []
    th = threading.Thread(target=_sender, args=(a.sock, Q("SELECT 'A'") +
                                                 CD(b"x" * 100000) * 200, errors), daemon=True)
    th.start()
    can.expect_progress()
    rss1 = settled_rss_kib(pf.pid)
    a.sock.close()
    stop.set()
    assert rss1 - rss0 < 32 * 1024, "RSS grew by %d KiB" % (rss1 - rss0)
    b = wire(pf, role, "fake")
    b.send_query("SELECT 'B'")
    assert pgwire.data_values(b.read_until_ready(5.0, count=1)) == ["B"]
    b.close()
    can.check()
    finish(pf)


def R(code, rest=b""):
    return msg(b"R", struct.pack("!I", code) + rest)


SASL_OFFER = R(10, b"SCRAM-SHA-256\0\0")


def _auth_sasl_twice(c):
    c.sendall(SASL_OFFER)
    pgwire.read_frontend_message(c)
    c.sendall(SASL_OFFER)
    pgwire.read_frontend_message(c)
    return True  # then AuthenticationOk


def _auth_ok_without_final(c):
    c.sendall(SASL_OFFER)
    pgwire.read_frontend_message(c)
    return True


def _auth_continue_garbage(c):
    c.sendall(SASL_OFFER)
    pgwire.read_frontend_message(c)
    c.sendall(R(11, b"r=zzz,s=!!,i=-1"))
    pgwire.read_frontend_message(c)
    return True


def _auth_final_first(c):
    c.sendall(SASL_OFFER)
    pgwire.read_frontend_message(c)
    c.sendall(R(12, b"v=AAAA"))
    return True


def _auth_continue_twice(c):
    c.sendall(SASL_OFFER)
    _k, p = pgwire.read_frontend_message(c)
    cnonce = p.split(b"r=", 1)[1].decode()
    sf = R(11, ("r=%sXYZ,s=QUJDRA==,i=4096" % cnonce).encode())
    c.sendall(sf)
    pgwire.read_frontend_message(c)
    c.sendall(sf)
    pgwire.read_frontend_message(c)
    return True


def _auth_md5_then_sasl(c):
    c.sendall(R(5, b"salt"))
    pgwire.read_frontend_message(c)
    c.sendall(SASL_OFFER)
    pgwire.read_frontend_message(c)
    return True


def _auth_huge_iterations(c):
    c.sendall(SASL_OFFER)
    _k, p = pgwire.read_frontend_message(c)
    cnonce = p.split(b"r=", 1)[1].decode()
    c.sendall(R(11, ("r=%sXYZ,s=QUJDRA==,i=2147483647" % cnonce).encode()))
    pgwire.read_frontend_message(c)
    return True


SERVER_AUTH = {
    "sasl_twice": _auth_sasl_twice,
    "sasl_ok_without_final": _auth_ok_without_final,
    "sasl_continue_garbage": _auth_continue_garbage,
    "sasl_final_first": _auth_final_first,
    "sasl_continue_twice": _auth_continue_twice,
    "md5_then_sasl": _auth_md5_then_sasl,
    "huge_iterations": _auth_huge_iterations,
}


@pytest.mark.parametrize("case", [
    "sasl_twice",
    "sasl_ok_without_final",
    "sasl_continue_garbage", "sasl_final_first", "sasl_continue_twice", "md5_then_sasl",
    "huge_iterations"])
def test_hostile_server_auth(fake_env, case):
    """The fake server's login misbehaves; pgfunnel must not leak (LSan at exit), crash or
    hang, and a client gets an answer or an error within a few seconds.

    Was a bug for sasl_twice: server.c handle_auth() case PF_PROTO_AUTH_SASL does
    `s->scram = calloc(...)` over an existing exchange: LeakSanitizer reports the first
    pf_scram_client state and the copy of the plain password (scram.c pf_scram_client_start
    strdup), never cleansed.
    Was a bug for sasl_ok_without_final: AuthenticationOk in the middle of SCRAM (before
    AuthenticationSASLFinal) is accepted (handle_auth case PF_PROTO_AUTH_OK returns true
    while s->scram is set), so the server's signature is never checked -- the "not the
    server we expect" check is bypassed by an impostor that simply skips it."""
    start, role = fake_env
    pf, fake = start(lambda c, i: answer_queries(c), auth=SERVER_AUTH[case],
                     server_connect_timeout=3, server_login_retry=1)
    t0 = time.monotonic()
    try:
        with wire(pf, role, "fake") as a:
            a.sock.settimeout(8)
            a.simple_query("SELECT 'A'")
            outcome = "logged in"
    except (pgwire.PgError, pgwire.ProtocolError, OSError) as e:
        outcome = repr(e)
    assert time.monotonic() - t0 < 8
    if case == "sasl_ok_without_final":
        assert outcome != "logged in", "SCRAM never finished, yet pgfunnel used the server"
    finish(pf)


def test_cancel_race_never_hits_next_client(proxy, role):
    """A cancels its own short query right around the moment it finishes; B is queued for the
    same (only) server. B's queries must never be cancelled by A's late CancelRequest."""
    pf = one_server(proxy, role)
    a = wire(pf, role)
    b = wire(pf, role)
    b.sock.settimeout(10)
    a.sock.settimeout(10)
    hits = []
    for i in range(12):
        a.send_query("SELECT pg_sleep(0.05), 'A'")
        time.sleep(0.005)
        b.send_query("SELECT pg_sleep(0.05), 'B-%d'" % i)
        time.sleep(0.035 + (i % 10) * 0.003)
        pgwire.cancel_request(pf.host, pf.port, *a.backend_key)
        try:
            a.read_result()
        except pgwire.PgError:
            pass
        try:
            rows = b.read_result()
            assert rows == [("", "B-%d" % i)], rows
        except pgwire.PgError as e:
            hits.append((i, e.sqlstate, e.message))
    a.close()
    b.close()
    assert not hits, "B's queries cancelled by A's CancelRequest: %r" % hits
    finish(pf)


def test_tracked_params_do_not_follow_server_to_next_client(proxy, role):
    """A sets DateStyle / TimeZone / application_name / IntervalStyle (startup and SET); B,
    who asked for nothing, must see the defaults on the same server, not A's values."""
    pf = one_server(proxy, role)
    with wire(pf, role) as b0:
        defaults = b0.simple_query("SELECT current_setting('DateStyle'), "
                                   "current_setting('TimeZone'), "
                                   "current_setting('application_name'), "
                                   "current_setting('IntervalStyle')")
    a = pgwire.connect(pf.host, pf.port, role[0], "appdb", role[1],
                       options={"application_name": "A-app", "DateStyle": "German"})
    a.simple_query("SET TimeZone = 'Asia/Tokyo'")
    a.simple_query("SET IntervalStyle = 'sql_standard'")
    a.close()
    with wire(pf, role) as b:
        got = b.simple_query("SELECT current_setting('DateStyle'), "
                             "current_setting('TimeZone'), "
                             "current_setting('application_name'), "
                             "current_setting('IntervalStyle')")
    assert got == defaults, "B sees %r, defaults %r" % (got, defaults)
    finish(pf)


@pytest.mark.parametrize("opening", ["flush", "parse_describe_flush",
                                     "copydone", "begin"])
def test_idle_client_pins_server_past_idle_transaction_timeout(proxy, role, opening):
    """Was a bug, now a regression test: in transaction mode a client whose first message is a Flush (or a CopyDone, or
    Parse+Describe+Flush without Sync) gets the only server linked (pool.c pf_pool_acquire)
    and keeps it for good: no ReadyForQuery ever comes to trigger the release
    (server.c ready_for_query is the only release point), s->tx_status is still the 'I' of
    the last ReadyForQuery and c->query_start is 0, so pool.c pf_pool_maintain applies
    neither idle_transaction_timeout nor query_timeout nor client_idle_timeout. A 5-byte
    message from an idle client pins a pool forever."""
    pf = one_server(proxy, role, extra={"idle_transaction_timeout": 1, "query_timeout": 1,
                                        "client_idle_timeout": 1})
    a = wire(pf, role)
    if opening == "begin":  # control: idle_transaction_timeout frees the server
        a.simple_query("BEGIN")
    elif opening == "flush":
        a.send(FLUSH)
    elif opening == "copydone":
        a.send(COPY_DONE)
    else:
        a.send(P("SELECT 'A'") + D(b"S") + FLUSH)
        a.sock.settimeout(5)
        kinds = [a.read_message()[0] for _ in range(3)]
        assert kinds == ["1", "t", "T"], kinds
    try:
        b_check(pf, role, timeout=2.5)
    except socket.timeout:
        pytest.fail("B got no server in 2.5 s (timeouts 1 s): %r" % servers(pf, "appdb"))
    a.sock.close()
    finish(pf)


# ---------------------------------------------------------------- console


CONSOLE_INPUTS = [
    'SHOW "POOLS"', 'SHOW ""', 'SHOW "', 'SHOW "a""b"', "SHOW " + "X" * 300, "SHOW POOLS x",
    "SHOW\tCLIENTS;;;  ", "show\nservers", "SHOW POOLS; SHOW CLIENTS", "KILL_CLIENT -1",
    "KILL_CLIENT 18446744073709551616", "KILL_CLIENT 0x1", "KILL_CLIENT 99999999999",
    "KILL_CLIENT", "KILL_CLIENT 1 2", 'PAUSE "pgbouncer"', "PAUSE pgbouncer", "RESUME pgbouncer",
    "RECONNECT pgbouncer", "DISABLE pgbouncer", "ENABLE pgbouncer", "KILL nosuchdb",
    'KILL "appdb', "WAIT_CLOSE nosuch", "SET", "SET x", "SET log_connections",
    "SET log_connections = ", "SET log_connections = 'unterminated",
    "SET log_connections = '" + "x" * 2000 + "'", "SET log_connections TO 1",
    "SET application_name = 'x'", "SET listen_port = 1", "SET max_packet_size = -1",
    "SET max_packet_size = 99999999999999", "SET pkt_buf = 1", "SET \"log_connections\" = 1",
    "SELECT 1", "SHOW \x01\x02", "\xff\xfe", "", ";", "   ", "SUSPEND x", "RELOAD now",
    "SHUTDOWN maybe", "SHOW HELP", "SHOW STATS", "SHOW FDS", "SHOW LISTS", "SHOW MEM",
    "SHOW DNS_HOSTS", "SHOW DNS_ZONES", "SHOW SOCKETS", "SHOW ACTIVE_SOCKETS", "SHOW USERS",
    "SHOW DATABASES", "SHOW STATS_TOTALS", "SHOW STATS_AVERAGES", "SHOW TOTALS",
    "SHOW VERSION", "SHOW STATE", "SHOW CONFIG", "SHOW PEERS", "SHOW PEER_POOLS",
]


def test_console_odd_commands(proxy, role):
    """Odd console input, one connection, reconnecting when the console hangs up; the pool
    and the console keep working, no sanitizer report."""
    pf = one_server(proxy, role)
    c = None
    for sql in CONSOLE_INPUTS:
        if c is None:
            c = pgwire.connect(pf.host, pf.port, "postgres", "pgbouncer", "pg-super-secret")
            c.sock.settimeout(5)
        try:
            c.send(msg(b"Q", sql.encode("latin-1") + b"\0"))
            c.read_until_ready(5.0, count=1)
        except (pgwire.ProtocolError, OSError):
            c.sock.close()
            c = None
    # raw oddities: Query without NUL, extended protocol, Sync, empty Query
    for raw in [msg(b"Q", b"SHOW POOLS"), msg(b"Q", b""), P("SHOW POOLS"), SYNC, FLUSH,
                msg(b"Q", b"SHOW\0POOLS\0")]:
        s = pgwire.connect(pf.host, pf.port, "postgres", "pgbouncer", "pg-super-secret")
        s.send(raw)
        drain(s, 0.2)
        s.sock.close()
    if c:
        c.close()
    # a new console session gets a true answer
    assert {r["key"]: r["value"] for r in pfhelpers.show_wire(pf, "STATE")} == {
        "active": "yes", "paused": "no", "suspended": "no"}
    b_check(pf, role)
    finish(pf)


@pytest.mark.parametrize("tail", ["terminate", "invalid_type", "password_msg", "startup_again",
                                  "zero_length_query", "huge_header_then_close"])
def test_odd_message_inside_copy_or_pipeline(proxy, role, copy_table, tail):
    """A starts a COPY FROM STDIN (and a pipeline behind it), then sends something odd; B must
    get exactly its own answer afterwards."""
    pf = one_server(proxy, role)
    a = wire(pf, role)
    a.send(Q("COPY atk_copy FROM STDIN") + CD(b"A-1\n"))
    a.sock.settimeout(5)
    assert a.read_message()[0] == "G"
    odd = {
        "terminate": msg(b"X"),
        "invalid_type": msg(b"A", b"xx"),
        "password_msg": msg(b"p", b"pw\0"),
        "startup_again": pgwire.startup_message({"user": role[0], "database": "appdb"}),
        "zero_length_query": b"Q\0\0\0\x04" + SYNC,
        "huge_header_then_close": b"d\x10\0\0\0" + b"x" * 1000,
    }[tail]
    a.send(P("SELECT 'A-2'") + B() + E() + odd + SYNC)
    drain(a, 0.3)
    a.sock.close()
    b_check(pf, role, timeout=3)
    finish(pf)


def test_hostile_server_many_parameter_status_at_login(fake_env):
    """Was a bug, now a regression test: a server sends 20000 distinct ParameterStatus before its first ReadyForQuery.
    server.c remember_param() keeps every one (no bound) and looks each name up linearly:
    O(n^2) strcmp on the worker's only thread, so every other client stalls (the canary on
    the real cluster sees multi-second latency); afterwards every client login to that pool
    is sent all 20000 parameters (4.5 s stall measured with 40000)."""
    def auth(c):
        c.sendall(R(0) + b"".join(msg(b"S", cstr("p%06d" % i) + cstr("v")) for i in range(20000)))
        return True
    start, role = fake_env
    pf, fake = start(lambda c, i: answer_queries(c), auth=auth, server_connect_timeout=30)
    can = pfhelpers.Canary(pf, role[0], "appdb", role[1]).start()
    t0 = time.monotonic()
    try:
        with wire(pf, role, "fake") as a:
            a.sock.settimeout(30)
            nparams = len(a.params)
            a.simple_query("SELECT 'A'")
    except (pgwire.PgError, pgwire.ProtocolError, OSError):
        nparams = None
    dt = time.monotonic() - t0
    can.check(max_latency=1.0)
    assert nparams is None or nparams < 1000, "a client got %d ParameterStatus" % nparams
    # The client behind that server is not stalled either: it gets its answer (or its
    # refusal) as fast as the canary gets its own (the quadratic walk took seconds).
    assert dt < 1.0, "A's login and query took %.2f s" % dt
    finish(pf)


@pytest.mark.parametrize("variant", ["ok", "error"])
def test_query_after_unsynced_extended_messages(proxy, role, variant):
    """Parse/Bind/Execute without Sync, then a simple Query (which ends the implicit
    transaction when the extended messages succeeded, and is skipped after an error until
    the Sync). A then goes idle; B must get its own answer, and A's next query its own."""
    pf = one_server(proxy, role)
    a = wire(pf, role)
    sql = "SELECT 'A-1'" if variant == "ok" else "SELECT 1/0"
    a.send(P(sql) + B() + E() + Q("SELECT 'A-2'") + SYNC)
    got = a.read_until_ready(5.0, count=2 if variant == "ok" else 1)
    vals = pgwire.data_values(got)
    assert vals == (["A-1", "A-2"] if variant == "ok" else []), got
    b_check(pf, role, timeout=2)
    assert a.simple_query("SELECT 'A-3'") == [("A-3",)]
    a.close()
    finish(pf)
