"""Red team of issue 14 (memory per client and system calls per login): interned session
parameter values, forward write requests from a per-loop free list, the SCRAM login's corked
welcome, the local address asked of the socket at SHOW time, and random bytes from a per-thread
reserve. Each case attacks as a hostile client (raw sockets, odd orders, disconnects at every
step) or, where needed, a hostile server, and asserts the behaviour: every client sees its own
session values and no other client's, no byte is lost or crosses to another client, logins end
the right way, SHOW rows are right, cancel keys are unique, pgfunnel stays up.

Meant for the ASan build (PGFUNNEL_SANITIZED=1): the conftest sanitizer gate fails a test on any
sanitizer report, including LeakSanitizer's at pgfunnel's exit."""

import base64
import hashlib
import random
import re
import signal
import socket
import struct
import threading
import time

import pytest

import pfhelpers
import pgwire

DEADLINE = 15.0


@pytest.fixture
def role(postgres):
    return pfhelpers.new_role(postgres, "pa14")


def wait_until(pred, what, timeout=DEADLINE):
    pfhelpers.wait_until(pred, timeout, what)


def connect(pf, user, pw, db="appdb", host=None, **params):
    return pgwire.connect(host or pf.host, pf.port, user, db, pw, options=params or None,
                          timeout=DEADLINE)


def settings(conn, *names):
    q = "SELECT " + ", ".join("current_setting('%s')" % n for n in names)
    return tuple(conn.simple_query(q)[0])


def clients_of(pf, user):
    return [r for r in pfhelpers.show(pf, "CLIENTS") if r["user"] == user]


def rst_close(sock):
    """Close with a TCP RST (SO_LINGER 0): the abrupt end of a crashed client."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def alive(pf, user, pw):
    with connect(pf, user, pw) as c:
        assert c.simple_query("SELECT 14") == [("14",)]


# ---------------------------------------------------------------- interned session values


def test_many_clients_distinct_values_never_cross(proxy, role):
    """Sixty clients in transaction mode on two servers, their application_name and TimeZone
    set every way (startup parameter, options -c / --, SET), many values equal, some differing
    only by case or by one byte, some long: in rounds each client must see its own values,
    clients leave and come back with other values, RELOAD runs in the middle, and at the end
    every value is the one SHOW CLIENTS shows for that client."""
    user, pw = role
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 2,
                       "max_client_conn": 200}, userlist={user: pw})
    zones = ["UTC", "Europe/Paris", "Asia/Tokyo", "America/New_York", "Etc/GMT+3"]
    rnd = random.Random(14)

    def app_value(i, gen):
        kind = i % 6
        if kind == 0:
            return "shared"                       # one value for many clients
        if kind == 1:
            return "Case%d" % (i // 6) if gen % 2 else "case%d" % (i // 6)
        if kind == 2:
            return "app-%d-%d" % (i, gen)
        if kind == 3:
            return "x" * 50 + "%02d" % (i % 100)  # equal prefixes, differ in one byte
        if kind == 4:
            return "sp ace\\back'q %d" % i          # blanks, backslash, quote
        return "dup%d" % (i % 3)

    def open_client(i, gen):
        app, tz = app_value(i, gen), zones[(i + gen) % len(zones)]
        how = (i + gen) % 4
        if how == 0:
            c = connect(pf, user, pw, application_name=app, TimeZone=tz)
        elif how == 1:
            esc = app.replace("\\", "\\\\").replace(" ", "\\ ")
            c = connect(pf, user, pw, options="-c application_name=%s --TimeZone=%s" % (esc, tz))
        elif how == 2:
            c = connect(pf, user, pw, application_name="before-set")
            c.simple_query("SET application_name = '%s'" % app.replace("'", "''"))
            c.simple_query("SET TimeZone = '%s'" % tz)
        else:
            c = connect(pf, user, pw, TimeZone=tz)
            c.simple_query("SET application_name = '%s'" % app.replace("'", "''"))
        return c, app, tz

    clients = {i: open_client(i, 0) for i in range(60)}
    for rnd_no in range(1, 7):
        order = list(clients)
        rnd.shuffle(order)
        for i in order:
            c, app, tz = clients[i]
            assert settings(c, "application_name", "TimeZone") == (app, tz), (i, rnd_no)
        # A third leave (some abruptly) and come back with other values.
        for i in rnd.sample(order, 20):
            c = clients[i][0]
            if i % 2:
                rst_close(c.sock)
            else:
                c.close()
            clients[i] = open_client(i, rnd_no)
        if rnd_no == 3:
            pfhelpers.console(pf, "RELOAD")
    want = {(app, tz) for _, app, tz in clients.values()}
    got = {(r["application_name"],) for r in clients_of(pf, user)}
    assert got == {(app,) for app, _ in want}
    for c, _, _ in clients.values():
        c.close()
    wait_until(lambda: clients_of(pf, user) == [], "every client gone")
    alive(pf, user, pw)


def test_server_reported_changes_inside_transactions(proxy, role):
    """The server reports values in the middle of a transaction (SET, SET LOCAL, a rolled back
    SET, RESET ALL, set_config() in a query): afterwards the client sees exactly what Postgres
    would show it, and the other client sharing the one server keeps its own values."""
    user, pw = role
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 1},
               userlist={user: pw})
    a = connect(pf, user, pw, application_name="alpha", TimeZone="Asia/Tokyo")
    b = connect(pf, user, pw, application_name="beta", TimeZone="UTC")

    def check(conn, app, tz):
        assert settings(conn, "application_name", "TimeZone") == (app, tz)

    check(a, "alpha", "Asia/Tokyo")
    check(b, "beta", "UTC")
    a.simple_query("BEGIN")
    a.simple_query("SET application_name = 'alpha-tx'")
    check(a, "alpha-tx", "Asia/Tokyo")
    a.simple_query("ROLLBACK")
    check(b, "beta", "UTC")
    check(a, "alpha", "Asia/Tokyo")

    a.simple_query("BEGIN; SET LOCAL TimeZone = 'Europe/Paris'; SET LOCAL application_name = 'loc'")
    check(a, "loc", "Europe/Paris")
    a.simple_query("COMMIT")
    check(b, "beta", "UTC")
    check(a, "alpha", "Asia/Tokyo")

    a.simple_query("SELECT set_config('application_name', 'via-fn', false)")
    check(b, "beta", "UTC")
    check(a, "via-fn", "Asia/Tokyo")

    b.simple_query("BEGIN; SET application_name = 'beta2'; COMMIT")
    check(a, "via-fn", "Asia/Tokyo")
    check(b, "beta2", "UTC")

    # RESET ALL: back to the server's defaults (the database's, not the client's startup).
    a.simple_query("RESET ALL")
    app, tz = settings(a, "application_name", "TimeZone")
    check(b, "beta2", "UTC")
    check(a, app, tz)
    # An error aborts a transaction holding a SET: it never happened.
    a.simple_query("SET application_name = 'again'")
    a.send_query("BEGIN; SET application_name = 'doomed'; SELECT 1/0")
    with pytest.raises(pgwire.PgError):
        a.read_result()
    a.simple_query("ROLLBACK")
    check(b, "beta2", "UTC")
    check(a, "again", tz)
    a.close()
    b.close()


def test_huge_and_odd_values(proxy, role):
    """Values at the limits and odd bytes: a startup application_name of 8000 bytes, an
    options value just under the 1024-byte limit, values differing only in bytes past what
    Postgres keeps (63), non-ASCII and invalid UTF-8 bytes (Postgres turns them into '?' at
    startup and refuses them in SET). Each client gets a clean answer (its values, or an error
    and the end of its connection), never a value of another client, and pgfunnel stays up."""
    user, pw = role
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 1},
               userlist={user: pw})
    keeper = connect(pf, user, pw, application_name="keeper")

    def keeper_ok():
        assert settings(keeper, "application_name") == ("keeper",)

    longs = []
    for tail in ("1", "2", "3"):
        c = connect(pf, user, pw, application_name="L" * 8000 + tail)
        longs.append(c)
    for c in longs:
        # Postgres keeps 63 bytes: all three read the same prefix, their own.
        assert settings(c, "application_name") == ("L" * 63,)
        keeper_ok()
    for c in longs:
        c.close()

    opt = "-c application_name=" + "o" * (1024 - len("application_name=") - 1)
    c = connect(pf, user, pw, options=opt)
    assert settings(c, "application_name") == ("o" * 63,)
    keeper_ok()
    c.close()

    # Non-ASCII: Postgres makes each such byte of application_name a '?' (and reports that);
    # the reported value is the client's from then on, on every server.
    c = connect(pf, user, pw)
    c.simple_query("SET application_name = 'caf\u00e9 \u2603'")
    assert settings(c, "application_name") == ("caf?? ???",)
    keeper_ok()
    assert settings(c, "application_name") == ("caf?? ???",)
    c.close()

    # Invalid UTF-8 straight in the startup packet: pgfunnel must not crash; whatever the
    # server makes of the SET it is sent, the client is answered (rows or an error).
    for raw_value in (b"\xff\xfe", b"ok\x80\x81", b"\xc3"):
        s = pgwire.open_socket(pf.host, pf.port, DEADLINE)
        conn = pgwire.Connection(s)
        conn.send(_startup_bytes(
            {b"user": user.encode(), b"database": b"appdb", b"application_name": raw_value}))
        _finish_login(conn, user, pw)
        conn.send_query("SELECT current_setting('application_name')")
        try:
            rows = conn.read_result()
            assert rows and rows[0][0] is not None
        except pgwire.PgError as e:
            assert e.sqlstate in ("22021", "08P01", "08006", "XX000"), e.fields
        except (pgwire.ProtocolError, EOFError, OSError):
            pass
        conn.sock.close()
        keeper_ok()
    keeper.close()
    alive(pf, user, pw)


def _startup_bytes(params):
    body = struct.pack("!I", 196608)
    for k, v in params.items():
        body += k + b"\0" + v + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def _finish_login(conn, user, pw):
    """The rest of a login whose startup packet was sent already (md5 or SCRAM)."""
    scram = None
    while True:
        kind, payload = conn.read_message(DEADLINE)
        if kind == "E":
            raise pgwire.PgError(pgwire.parse_fields(payload))
        if kind == "R":
            (code,) = struct.unpack("!I", payload[:4])
            if code == 5:
                inner = hashlib.md5(pw.encode() + user.encode()).hexdigest()
                outer = hashlib.md5(inner.encode() + payload[4:8]).hexdigest()
                conn.send(pgwire.message(b"p", b"md5" + outer.encode() + b"\0"))
            elif code == 10:
                scram = pgwire._Scram(pw)
                first = scram.client_first().encode()
                conn.send(pgwire.message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first))
                                         + first))
            elif code == 11:
                conn.send(pgwire.message(b"p", scram.client_final(payload[4:].decode()).encode()))
            elif code == 3:
                conn.send(pgwire.message(b"p", pw.encode() + b"\0"))
        elif kind == "K":
            conn.backend_key = struct.unpack("!II", payload[:8])
        elif kind == "Z":
            return


# ---------------------------------------------------------------- a hostile server and values


def _parse_sets(sql):
    """[(name, value)] of pgfunnel's parameter sync query: SET name='..'; SET name=E'..';
    SET name=$pf$..$pf$; (the literal forms vars.c writes)."""
    out, i = [], 0
    while True:
        i = sql.find("SET ", i)
        if i < 0:
            return out
        eq = sql.index("=", i)
        name, j = sql[i + 4:eq], eq + 1
        if sql[j] == "$":
            end = sql.index("$", j + 1) + 1
            tag = sql[j:end]
            k = sql.index(tag, end)
            value, i = sql[end:k], k + len(tag)
        else:
            esc = sql[j] == "E"
            j += 2 if esc else 1
            buf = []
            while True:
                ch = sql[j]
                if esc and ch == "\\":
                    buf.append(sql[j + 1])
                    j += 2
                elif ch == "'" and sql[j + 1:j + 2] == "'":
                    buf.append("'")
                    j += 2
                elif ch == "'":
                    j += 1
                    break
                else:
                    buf.append(ch)
                    j += 1
            value, i = "".join(buf), j
        out.append((name, value))


HUGE = bytes(range(1, 256)) * 1200  # 300 KB of every non-NUL byte


class ValueServer:
    """A fake Postgres that keeps session values like Postgres (startup, SET, reports) and can
    misbehave on its first connection (mode). Queries: 'SHOW app' answers its application_name;
    'REPORT' reports HUGE as application_name in the middle of a transaction (Z 'T');
    'END' ends it; anything else answers one row."""

    def __init__(self, mode):
        self.mode = mode
        self.conns = 0
        self.lock = threading.Lock()
        self.srv = pfhelpers.ScriptedServer(self.script)

    def script(self, peer):
        with self.lock:
            self.conns += 1
            n = self.conns
        hostile = n == 1
        st = peer.read_startup()
        vals = {"application_name": st.get("application_name", "srv-default").encode(),
                "TimeZone": b"Fake/Zone", "client_encoding": b"UTF8",
                "DateStyle": b"ISO, MDY", "standard_conforming_strings": b"on",
                "IntervalStyle": b"postgres"}
        peer.auth(0)
        out = b"".join(peer.message("S", k.encode() + b"\0" + v + b"\0") for k, v in vals.items())
        out += peer.message("K", struct.pack("!II", 1000 + n, 77))
        out += peer.message("Z", b"I")
        peer.sock.sendall(out)
        in_tx = False
        while True:
            kind, payload = peer.read_message()
            if kind == "X":
                return
            if kind != "Q":
                continue
            sql = payload[:-1].decode("latin-1")
            if sql.startswith("SET "):
                sets = _parse_sets(sql)
                if hostile and self.mode == "close-at-sync":
                    return
                if hostile and self.mode == "half-at-sync":
                    peer.sock.sendall(peer.message("S", b"application_name\0" + HUGE + b"\0") +
                                      peer.message("C", b"SET\0")[:3])
                    return
                if hostile and self.mode == "error-at-sync":
                    peer.sock.sendall(peer.message(
                        "E", b"SERROR\0C22023\0Mhostile sync refusal\0\0") +
                        peer.message("Z", b"I"))
                    continue
                out = b""
                for name, value in sets:
                    vals[name] = value.encode("latin-1")
                    out += peer.message("C", b"SET\0")
                    out += peer.message("S", name.encode() + b"\0" + vals[name] + b"\0")
                peer.sock.sendall(out + peer.message("Z", b"I"))
                continue
            if sql == "SHOW app":
                row = vals["application_name"]
                peer.sock.sendall(
                    peer.message("T", struct.pack("!H", 1) + b"app\0" + b"\0" * 6 +
                                 struct.pack("!IhiH", 25, -1, -1, 0)) +
                    peer.message("D", struct.pack("!HI", 1, len(row)) + row) +
                    peer.message("C", b"SHOW\0") + peer.message("Z", b"T" if in_tx else b"I"))
                continue
            if sql == "REPORT":
                in_tx = True
                vals["application_name"] = HUGE
                msg = (peer.message("C", b"BEGIN\0") +
                       peer.message("S", b"application_name\0" + HUGE + b"\0") +
                       peer.message("S", b"TimeZone\0" + HUGE[:5000] + b"\0"))
                if hostile and self.mode == "close-mid-tx":
                    peer.sock.sendall(msg)
                    return
                peer.sock.sendall(msg + peer.message("Z", b"T"))
                continue
            if sql == "END":
                in_tx = False
                peer.sock.sendall(peer.message("C", b"COMMIT\0") + peer.message("Z", b"I"))
                continue
            peer.sock.sendall(peer.message("I") + peer.message("Z", b"T" if in_tx else b"I"))

    def stop(self):
        self.srv.stop()
        return self.srv.errors


def _show_app_raw(conn):
    conn.send_query("SHOW app")
    rows = []
    while True:
        kind, payload = conn.read_message(DEADLINE)
        if kind == "D":
            (n,) = struct.unpack("!I", payload[2:6])
            rows.append(payload[6:6 + n])
        elif kind == "E":
            raise pgwire.PgError(pgwire.parse_fields(payload))
        elif kind == "Z":
            assert len(rows) == 1, rows
            return rows[0]


def _ends_with_error_or_close(conn):
    """Reads conn until an ErrorResponse or EOF (True), or ReadyForQuery (False)."""
    try:
        while True:
            kind, _ = conn.read_message(DEADLINE)
            if kind == "E":
                return True
            if kind == "Z":
                return False
    except (pgwire.ProtocolError, EOFError, OSError):
        return True


@pytest.mark.parametrize("mode", ["close-at-sync", "half-at-sync", "error-at-sync",
                                  "close-mid-tx", "report-mid-tx"])
def test_hostile_server_values(proxy, role, mode):
    """A server that closes in the middle of the parameter sync, sends half an answer after a
    300 KB value, refuses the SET, or reports 300 KB values of every byte in the middle of a
    transaction (then closes, or the client vanishes): the client in the middle gets an error
    or the end of its connection, never a hang; afterwards clients of the same pool get their
    own values from a new server, and a crowd of them come and go."""
    user, pw = role
    fake = ValueServer(mode)
    try:
        pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 1,
                           "server_login_retry": 0},
                   databases={"fake": fake.srv.db_entry()}, userlist={user: pw})
        a = connect(pf, user, pw, db="fake", application_name="alpha")
        if mode.endswith("-at-sync"):
            a.send_query("SELECT 1")
            assert _ends_with_error_or_close(a), "the sync failed yet the query was answered"
        else:
            assert a.simple_query("SHOW app") == [("alpha",)]
            a.send_query("REPORT")
            if mode == "close-mid-tx":
                assert _ends_with_error_or_close(a)
            else:
                a.read_result()
                assert _show_app_raw(a) == HUGE
                a.simple_query("END")
                # The server (the pool's only one) goes to b, whose value is set on it; back
                # to a, the 300 KB value of every byte is set again, byte for byte.
                b = connect(pf, user, pw, db="fake", application_name="beta")
                assert b.simple_query("SHOW app") == [("beta",)]
                assert _show_app_raw(a) == HUGE
                assert b.simple_query("SHOW app") == [("beta",)]
                b.close()
                rst_close(a.sock)
        a.sock.close()
        for rnd in range(3):
            crowd = [connect(pf, user, pw, db="fake", application_name="c%d-%d" % (rnd, i))
                     for i in range(8)]
            for i, c in enumerate(crowd):
                assert c.simple_query("SHOW app") == [("c%d-%d" % (rnd, i),)]
            for i, c in enumerate(crowd):
                if i % 2:
                    rst_close(c.sock)
                else:
                    c.close()
        alive(pf, user, pw)
    finally:
        errors = fake.stop()
    assert errors == []


# ---------------------------------------------------------------- forward writes, slow readers


BIG_ROWS = 20000  # rows of ~1 KB: far more than the socket buffers hold


def shutdown_now(pf):
    """SIGINT, and once it was seen a second one (shut down now): pgfunnel exits with 0."""
    n = pf.log_len()
    pf.signal(signal.SIGINT)
    pf.wait_for_log("got SIGINT", after=n)
    pf.signal(signal.SIGINT)
    assert pf.wait(DEADLINE) == 0


def big_query(seed, rows=BIG_ROWS):
    return ("SELECT i, repeat(md5('%s' || i), 30) FROM generate_series(1, %d) i /* %s */"
            % (seed, rows, seed))


def big_row(seed, i):
    return (str(i), hashlib.md5(("%s%d" % (seed, i)).encode()).hexdigest() * 30)


def wait_client_write(postgres, seeds, what):
    """Until the backends running the big queries of seeds wait to write to pgfunnel
    (wait_event ClientWrite): pgfunnel stopped reading them for a client that does not read."""
    def blocked():
        with postgres.connect(autocommit=True) as conn:
            rows = conn.execute(
                "SELECT query FROM pg_stat_activity WHERE wait_event = 'ClientWrite'").fetchall()
        return all(any("/* %s */" % s in q for (q,) in rows) for s in seeds)
    wait_until(blocked, what)


def read_big(conn, seed, rows=BIG_ROWS):
    """Reads a big query's whole answer and checks every row, in order."""
    n = 0
    while True:
        kind, payload = conn.read_message(DEADLINE)
        if kind == "D":
            n += 1
            assert pgwire.decode_data_row(payload) == big_row(seed, n), (seed, n)
        elif kind == "C":
            assert pgwire.decode_command_complete(payload) == "SELECT %d" % rows
        elif kind == "Z":
            assert n == rows, (seed, n)
            return
        elif kind == "E":
            raise pgwire.PgError(pgwire.parse_fields(payload))


def test_slow_readers_lose_nothing_and_leavers_break_nothing(proxy, postgres, role):
    """Ten clients at once start ~20 MB results and stop reading until their servers are
    blocked behind them; four then vanish (two with a RST), six read everything: each of the six
    gets every row of its own result, in order, and nothing else. The servers the leavers had
    are not handed to anybody mid-result: the next clients of the pool get right answers."""
    user, pw = role
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 10},
               userlist={user: pw})
    clients = [connect(pf, user, pw, application_name="slow%d" % i) for i in range(10)]
    seeds = ["s14x%d" % i for i in range(10)]
    for c, seed in zip(clients, seeds):
        c.send_query(big_query(seed))
    wait_client_write(postgres, seeds, "every big query blocked on a non-reading client")
    for i in range(4):
        if i % 2:
            rst_close(clients[i].sock)
        else:
            clients[i].sock.close()
    for c, seed in zip(clients[4:], seeds[4:]):
        read_big(c, seed)
        assert settings(c, "application_name") == ("slow%d" % clients.index(c),)
    for rnd in range(2):
        fresh = [connect(pf, user, pw, application_name="fresh%d" % i) for i in range(10)]
        for i, c in enumerate(fresh):
            c.send_query(big_query("f%d-%d" % (rnd, i), 2000))
        for i, c in enumerate(fresh):
            read_big(c, "f%d-%d" % (rnd, i), 2000)
            assert settings(c, "application_name") == ("fresh%d" % i,)
            c.close()
    for c in clients[4:]:
        c.close()
    wait_until(lambda: clients_of(pf, user) == [], "every client gone")


@pytest.mark.parametrize("how", ["terminate", "client-then-server", "shutdown"])
def test_server_gone_while_forward_write_pending(proxy, postgres, role, how):
    """The server ends while pgfunnel still holds its bytes for a client that does not read
    (its backend terminated; or the client vanishes first and then the backend): a reading
    client gets a prefix of its own rows, in order, then an error or the end, never a
    ReadyForQuery and never a byte of anything else; pgfunnel serves the pool on. Or pgfunnel
    is shut down right then: it exits cleanly (the sanitizer gate checks for leaks)."""
    user, pw = role
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 3},
               userlist={user: pw})
    other = connect(pf, user, pw, application_name="other")
    victims = [connect(pf, user, pw, application_name="victim%d" % i) for i in range(2)]
    seeds = ["s14t%d" % i for i in range(2)]
    for c, seed in zip(victims, seeds):
        c.send_query(big_query(seed))
    wait_client_write(postgres, seeds, "the big queries blocked")
    if how == "shutdown":
        shutdown_now(pf)
        for c in victims + [other]:
            c.sock.close()
        return
    if how == "client-then-server":
        rst_close(victims[1].sock)
    with postgres.connect(autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE query LIKE '%%/* s14t%%' AND pid <> pg_backend_pid()")
    c, seed, n = victims[0], seeds[0], 0
    ended = False
    try:
        while True:
            kind, payload = c.read_message(DEADLINE)
            if kind == "D":
                n += 1
                assert pgwire.decode_data_row(payload) == big_row(seed, n), n
            elif kind in ("E", "N"):
                ended = ended or kind == "E"
                if kind == "E":
                    break
            else:
                assert kind in ("T",), (kind, n)
    except (pgwire.ProtocolError, EOFError, OSError):
        ended = True
    assert ended and 0 < n < BIG_ROWS, n
    c.sock.close()
    assert settings(other, "application_name") == ("other",)
    for i in range(3):
        with connect(pf, user, pw, application_name="after%d" % i) as x:
            x.send_query(big_query("after%d" % i, 3000))
            read_big(x, "after%d" % i, 3000)
    other.close()


# ---------------------------------------------------------------- SCRAM logins and the cork


class RawScram:
    """A SCRAM-SHA-256 login on a raw socket, one step at a time."""

    def __init__(self, pf, user, pw, db="appdb", host=None, params=None):
        self.user, self.pw = user, pw
        self.conn = pgwire.Connection(pgwire.open_socket(host or pf.host, pf.port, DEADLINE))
        p = {"user": user, "database": db}
        p.update(params or {})
        self.conn.send(pgwire.startup_message(p))
        kind, payload = self.conn.read_message(DEADLINE)
        assert (kind, payload[:4]) == ("R", struct.pack("!I", 10)), (kind, payload)
        self.scram = pgwire._Scram(pw)
        first = self.scram.client_first().encode()
        self.conn.send(pgwire.message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) +
                                      first))
        kind, payload = self.conn.read_message(DEADLINE)
        assert (kind, payload[:4]) == ("R", struct.pack("!I", 11)), (kind, payload)
        self.server_first = payload[4:].decode()
        self.server_nonce = dict(a.split("=", 1) for a in self.server_first.split(","))["r"]

    def proof(self, wrong=False):
        final = self.scram.client_final(self.server_first)
        if wrong:
            p = final.rsplit(",p=", 1)[1]
            raw = bytearray(base64.b64decode(p))
            raw[0] ^= 1
            final = final.rsplit(",p=", 1)[0] + ",p=" + base64.b64encode(bytes(raw)).decode()
        return pgwire.message(b"p", final.encode())

    def rest(self):
        """The messages after the proof, as (kind, payload), up to ReadyForQuery or the end;
        'EOF' last when the connection ended."""
        out = []
        try:
            while True:
                kind, payload = self.conn.read_message(DEADLINE)
                out.append((kind, payload))
                if kind == "Z":
                    return out
        except (pgwire.ProtocolError, EOFError, ConnectionError):
            out.append(("EOF", b""))
            return out


def auth_code(msg):
    kind, payload = msg
    return struct.unpack("!I", payload[:4])[0] if kind == "R" else None


def assert_welcome(rs, msgs):
    """SASL final (right signature), AuthenticationOk, ParameterStatus..., BackendKeyData,
    ReadyForQuery: in that order, nothing else."""
    kinds = [k for k, _ in msgs]
    assert kinds[:2] == ["R", "R"] and auth_code(msgs[0]) == 12 and auth_code(msgs[1]) == 0, kinds
    rs.scram.verify_server_final(msgs[0][1][4:].decode())
    assert kinds[-2:] == ["K", "Z"] and set(kinds[2:-2]) == {"S"}, kinds


@pytest.fixture
def scram_proxy(proxy, role):
    user, pw = role
    return proxy(params={"auth_type": "scram-sha-256", "pool_mode": "transaction",
                         "default_pool_size": 2}, userlist={user: pw})


def test_scram_welcome_order(scram_proxy, role):
    """A SCRAM login's SASL final and welcome, on a pool that has no welcome yet (its first
    login waits for a server) and then on one that has: the same messages in the same order;
    a query pipelined in the same packet as the proof is answered after the welcome; and a
    wrong proof gets 28P01 and the end, without a SASL final."""
    user, pw = role
    pf = scram_proxy
    for _ in range(2):
        rs = RawScram(pf, user, pw, params={"application_name": "order"})
        rs.conn.send(rs.proof())
        msgs = rs.rest()
        assert_welcome(rs, msgs)
        assert dict(p[:-1].split(b"\0", 1) for k, p in msgs if k == "S")[
            b"application_name"] == b"order"
        assert rs.conn.simple_query("SELECT current_setting('application_name')") == [("order",)]
        rs.conn.close()
    rs = RawScram(pf, user, pw)
    rs.conn.send(rs.proof() + pgwire.message(b"Q", b"SELECT 41 + 1\0"))
    assert_welcome(rs, rs.rest())
    assert rs.conn.read_result() == [("42",)]
    rs.conn.close()
    for host in (pf.host, pf.unix_socket_dir):
        rs = RawScram(pf, user, pw, host=host)
        rs.conn.send(rs.proof(wrong=True))
        msgs = rs.rest()
        assert [k for k, _ in msgs] == ["E", "EOF"], msgs
        assert pgwire.parse_fields(msgs[0][1])["C"] == "28P01"
        rs.conn.sock.close()


def assert_welcome_prefix(rs, msgs):
    """The SASL final (right signature), then a prefix of the welcome cut at a message boundary
    (the connection ended), or the whole welcome."""
    kinds = [k for k, _ in msgs]
    assert msgs and auth_code(msgs[0]) == 12, kinds
    rs.scram.verify_server_final(msgs[0][1][4:].decode())
    if kinds[-1] == "Z":
        assert_welcome(rs, msgs)
        return
    assert kinds[-1] == "EOF", kinds
    body = kinds[1:-1]
    if body:
        assert auth_code(msgs[1]) == 0 and set(body[1:]) <= {"S", "K"}, kinds


@pytest.mark.parametrize("how", ["close", "rst", "shut-wr", "proof-and-terminate"])
def test_scram_client_gone_right_after_proof(scram_proxy, role, how):
    """Forty clients send their (right or wrong) proof and vanish at once: closed, reset, only
    their sending side shut (they still read), or a Terminate behind the proof. The first login
    finds a pool without a welcome (none is sent to a client that left meanwhile); after that a
    right proof gets its SASL final and the whole welcome in order, a wrong one 28P01 and the
    end. pgfunnel counts none of them afterwards and serves on."""
    user, pw = role
    pf = scram_proxy
    # A fresh pool: the first login waits for a server's welcome.
    rs = RawScram(pf, user, pw)
    if how == "shut-wr":
        rs.conn.send(rs.proof())
        rs.conn.sock.shutdown(socket.SHUT_WR)
        assert_welcome_prefix(rs, rs.rest())
    elif how == "proof-and-terminate":
        rs.conn.send(rs.proof() + pgwire.message(b"X"))
        assert_welcome_prefix(rs, rs.rest())
    else:
        rs.conn.send(rs.proof())
    rs.conn.sock.close()
    alive_scram(pf, user, pw)  # the pool has its welcome now
    for i in range(40):
        host = pf.unix_socket_dir if i % 5 == 4 else pf.host
        rs = RawScram(pf, user, pw, host=host)
        wrong = i % 3 == 2
        if how in ("proof-and-terminate", "shut-wr"):
            if how == "shut-wr":
                rs.conn.send(rs.proof(wrong))
                rs.conn.sock.shutdown(socket.SHUT_WR)
            else:
                rs.conn.send(rs.proof(wrong) + pgwire.message(b"X"))
            msgs = rs.rest()
            if wrong:
                assert [k for k, _ in msgs] == ["E", "EOF"], msgs
            elif how == "shut-wr":
                assert_welcome_prefix(rs, msgs)
            else:
                assert_welcome(rs, msgs)
            rs.conn.sock.close()
        else:
            rs.conn.sock.sendall(rs.proof(wrong))
            if how == "rst":
                rst_close(rs.conn.sock)
            else:
                rs.conn.sock.close()
    wait_until(lambda: clients_of(pf, user) == [], "no client left")
    rs = RawScram(pf, user, pw)
    rs.conn.send(rs.proof())
    assert_welcome(rs, rs.rest())
    rs.conn.close()
    alive_scram(pf, user, pw)


def alive_scram(pf, user, pw):
    with pgwire.connect(pf.host, pf.port, user, "appdb", pw, timeout=DEADLINE) as c:
        assert c.simple_query("SELECT 14") == [("14",)]


def test_scram_pool_whose_server_login_fails(proxy, postgres, role):
    """The first logins of a pool whose server login fails (no such database on the server):
    each client's right proof gets its SASL final, then an error and the end, never an
    AuthenticationOk or ReadyForQuery; a good pool beside it works."""
    user, pw = role
    pf = proxy(params={"auth_type": "scram-sha-256", "server_login_retry": 0},
               databases={"nodb": postgres.db_entry("no_such_db_14")}, userlist={user: pw})
    for i in range(6):
        rs = RawScram(pf, user, pw, db="nodb")
        rs.conn.send(rs.proof())
        msgs = rs.rest()
        kinds = [k for k, _ in msgs]
        assert "E" in kinds and kinds[-1] == "EOF" and "Z" not in kinds, kinds
        assert auth_code(msgs[0]) == 12, kinds
        rs.scram.verify_server_final(msgs[0][1][4:].decode())
        assert not any(auth_code(m) == 0 for m in msgs), kinds
        rs.conn.sock.close()
    alive_scram(pf, user, pw)


@pytest.mark.parametrize("limit", ["max_user_client_connections", "max_db_client_connections",
                                   "max_client_conn"])
def test_scram_limits_full_while_exchanges_end(proxy, role, limit):
    """A limit is full of SCRAM exchanges waiting for their proofs: one more client is refused
    (53300, before any exchange); then the waiting ones end at once, right proofs (welcome, in
    order), wrong ones (28P01), one vanishing with its proof in flight; the counters go back and
    the limit admits new clients again."""
    user, pw = role
    n = 4
    pf = proxy(params={"auth_type": "scram-sha-256", limit: n}, userlist={user: pw})
    for rnd in range(2):
        waiting = [RawScram(pf, user, pw, params={"application_name": "w%d" % i})
                   for i in range(n)]
        s = pgwire.open_socket(pf.host, pf.port, DEADLINE)
        extra = pgwire.Connection(s)
        try:
            extra.send(pgwire.startup_message({"user": user, "database": "appdb"}))
            kind, payload = extra.read_message(DEADLINE)
            assert kind == "E" and pgwire.parse_fields(payload)["C"] == "53300", (kind, payload)
        except (pgwire.ProtocolError, EOFError, ConnectionError):
            # max_client_conn may close without a word.
            assert limit == "max_client_conn"
        s.close()
        proofs = [rs.proof(wrong=i == 1) for i, rs in enumerate(waiting)]
        for rs, p in zip(waiting, proofs):
            rs.conn.sock.sendall(p)
        rst_close(waiting[3].conn.sock)
        msgs = waiting[1].rest()
        assert [k for k, _ in msgs] == ["E", "EOF"] and \
            pgwire.parse_fields(msgs[0][1])["C"] == "28P01", msgs
        for i in (0, 2):
            assert_welcome(waiting[i], waiting[i].rest())
            assert waiting[i].conn.simple_query(
                "SELECT current_setting('application_name')") == [("w%d" % i,)]
            waiting[i].conn.close()
        waiting[1].conn.sock.close()
        wait_until(lambda: clients_of(pf, user) == [], "every client gone")
    alive_scram(pf, user, pw)


def test_scram_auth_query_users_gone_after_proof(proxy, role):
    """An auth_query user (its SCRAM secret looked up in Postgres, the server login made with
    the key its proof revealed): proofs right and wrong, the client vanishing right after, a
    query pipelined behind the proof; then a normal login and query."""
    user, pw = role
    pf = proxy(params={"auth_type": "scram-sha-256", "auth_user": "postgres",
                       "pool_mode": "transaction"})
    for i in range(24):
        rs = RawScram(pf, user, pw, params={"application_name": "aq%d" % i})
        wrong = i % 4 == 1
        if i % 4 == 2:
            rs.conn.sock.sendall(rs.proof())
            rst_close(rs.conn.sock)
            continue
        if i % 4 == 3:
            rs.conn.send(rs.proof() + pgwire.message(
                b"Q", b"SELECT current_setting('application_name')\0"))
            msgs = rs.rest()
            if i > 3:
                assert_welcome(rs, msgs)
            else:  # maybe the pool's first login: none is given to a client that left
                assert_welcome_prefix(rs, msgs)
            if msgs[-1][0] == "Z":
                assert rs.conn.read_result() == [("aq%d" % i,)]
            rs.conn.close()
            continue
        rs.conn.send(rs.proof(wrong))
        msgs = rs.rest()
        if wrong:
            assert [k for k, _ in msgs] == ["E", "EOF"], msgs
            assert pgwire.parse_fields(msgs[0][1])["C"] == "28P01"
            rs.conn.sock.close()
        else:
            assert_welcome(rs, msgs)
            rs.conn.close()
    wait_until(lambda: clients_of(pf, user) == [], "no client left")
    alive_scram(pf, user, pw)


# ---------------------------------------------------------------- SHOW while sockets churn


def test_show_sockets_while_connections_churn(proxy, postgres, role):
    """While three threads log clients in and out over TCP and the unix socket (some leaving
    half way through a login, some with a RST, some in the middle of a query), SHOW CLIENTS,
    SERVERS, SOCKETS and ACTIVE_SOCKETS run again and again over both: every TCP client row
    names pgfunnel's own address and port as its local end, every unix one "unix"; every TCP
    server row a local port of its own; the console's own row is there each time."""
    user, pw = role
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 4},
               databases={"viaunix": "host=%s port=%d dbname=appdb" % (
                   postgres.socket_dir, postgres.port)},
               userlist={user: pw})
    stop = threading.Event()
    errors = []

    def churn(k):
        rnd = random.Random(k)
        n = 0
        try:
            while not stop.is_set():
                n += 1
                host = pf.unix_socket_dir if n % 3 == 0 else pf.host
                db = "viaunix" if n % 4 == 0 else "appdb"
                what = rnd.randrange(5)
                if what == 0:
                    s = pgwire.open_socket(host, pf.port, DEADLINE)
                    s.sendall(pgwire.startup_message({"user": user, "database": db})[:9])
                    rst_close(s)
                    continue
                c = pgwire.connect(host, pf.port, user, db, pw, timeout=DEADLINE)
                if what == 1:
                    c.send_query("SELECT pg_sleep(0.01)")
                    rst_close(c.sock)
                    continue
                assert c.simple_query("SELECT 1") == [("1",)]
                if what == 2:
                    rst_close(c.sock)
                else:
                    c.close()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=churn, args=(k,), daemon=True) for k in range(3)]
    for t in threads:
        t.start()
    seen_tcp = seen_unix = seen_srv = 0
    try:
        for i in range(40):
            host = pf.unix_socket_dir if i % 2 else pf.host
            with pgwire.connect(host, pf.port, "postgres", "pgbouncer",
                                postgres.passwords["postgres"], timeout=DEADLINE) as con:
                for what in ("CLIENTS", "SERVERS", "SOCKETS", "ACTIVE_SOCKETS"):
                    con.send_query("SHOW " + what)
                    _, cols, rows = con.read_answer(DEADLINE)
                    for r in (dict(zip(cols, row)) for row in rows):
                        if r["type"] == "C" or what == "CLIENTS":
                            if r["local_addr"] == "unix":
                                # A unix client: never a TCP one (a TCP row reading "unix"
                                # would be a socket asked too late, or not at all).
                                assert r["addr"] == "unix", (what, sorted(r.items()))
                                seen_unix += 1
                            else:
                                # addr may read "unix" for a TCP client whose peer was gone
                                # before pgfunnel asked for its address (getpeername fails).
                                assert r["addr"] in ("127.0.0.1", "unix") and (
                                    r["local_addr"], r["local_port"]) == (
                                    "127.0.0.1", str(pf.port)), (what, sorted(r.items()))
                                seen_tcp += 1
                        else:
                            if r["addr"] == "unix":
                                assert r["local_addr"] == "unix", (what, sorted(r.items()))
                            elif r["state"] not in ("new", "sv_login"):
                                assert r["local_addr"] == "127.0.0.1" and \
                                    int(r["local_port"]) > 0, (what, sorted(r.items()))
                                assert r["port"] == str(postgres.port), r
                            seen_srv += 1
                    if what == "CLIENTS":
                        assert any(r[cols.index("user")] == "postgres" and r[cols.index(
                            "database")] in ("pgbouncer", "pgfunnel") for r in rows), rows
    finally:
        stop.set()
        for t in threads:
            t.join(DEADLINE)
    assert errors == []
    assert seen_tcp and seen_unix and seen_srv
    wait_until(lambda: clients_of(pf, user) == [], "every churned client gone")


# ---------------------------------------------------------------- random bytes


def test_cancel_keys_nonces_salts_unique_under_many_logins(proxy, postgres, role):
    """Three hundred logins from four threads at once, by MD5 and by SCRAM (a user whose
    auth_file secret is a SCRAM verifier), all held open: every BackendKeyData differs, every
    SCRAM server nonce differs, every MD5 salt differs; a cancel with one client's key cancels
    that client's query and nobody else's."""
    user, pw = role
    suser, spw = pfhelpers.new_role(postgres, "pa14s")
    with postgres.connect(autocommit=True) as conn:
        # Postgres' own verifier: pgfunnel logs in to it with the key a proof reveals.
        (verifier,) = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s",
                                   (suser,)).fetchone()
    assert verifier.startswith("SCRAM-SHA-256$")
    pf = proxy(params={"auth_type": "md5", "pool_mode": "session", "max_client_conn": 400,
                       "default_pool_size": 4},
               userlist={user: pw, suser: verifier})
    lock = threading.Lock()
    keys, nonces, salts, conns, errors = [], [], [], [], []

    def md5_login():
        s = pgwire.open_socket(pf.host, pf.port, DEADLINE)
        c = pgwire.Connection(s)
        c.send(pgwire.startup_message({"user": user, "database": "appdb"}))
        kind, payload = c.read_message(DEADLINE)
        assert kind == "R" and struct.unpack("!I", payload[:4])[0] == 5, (kind, payload)
        salt = payload[4:8]
        inner = hashlib.md5(pw.encode() + user.encode()).hexdigest()
        c.send(pgwire.message(b"p", b"md5" + hashlib.md5(inner.encode() + salt).hexdigest()
                              .encode() + b"\0"))
        _finish_login(c, user, pw)
        return c, salt, None

    def scram_login():
        rs = RawScram(pf, suser, spw)
        rs.conn.send(rs.proof())
        msgs = rs.rest()
        assert_welcome(rs, msgs)
        rs.conn.backend_key = struct.unpack("!II", [p for k, p in msgs if k == "K"][0][:8])
        return rs.conn, None, rs.server_nonce[len(rs.scram.cnonce):]

    def worker(k):
        try:
            for i in range(75):
                c, salt, nonce = (scram_login if (i + k) % 2 else md5_login)()
                with lock:
                    conns.append(c)
                    keys.append(c.backend_key)
                    if salt is not None:
                        salts.append(salt)
                    if nonce is not None:
                        nonces.append(nonce)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert errors == []
        assert len(keys) == 300 and len(set(keys)) == 300
        assert len(nonces) == 150 and len(set(nonces)) == 150
        assert len(salts) == 150 and len(set(salts)) == 150
        assert all(len(base64.b64decode(n)) >= 18 for n in nonces)
        # One client's key cancels its query only.
        victim, bystander = conns[7], conns[8]
        victim.send_query("SELECT pg_sleep(30)")
        bystander.send_query("SELECT pg_sleep(1), 'done'")
        pfhelpers.wait_query_running(postgres, "SELECT pg_sleep(30)")
        pgwire.cancel_request(pf.host, pf.port, *victim.backend_key)
        with pytest.raises(pgwire.PgError) as ei:
            victim.read_result()
        assert ei.value.sqlstate == "57014"
        assert bystander.read_result() == [("", "done")]
    finally:
        for c in conns:
            c.close()
    wait_until(lambda: clients_of(pf, user) == [] and clients_of(pf, suser) == [],
               "every client gone")


# ---------------------------------------------------------------- client-to-server forward writes


def fill_until_blocked(sock, chunk, stall=1.0, limit=256 << 20):
    """Sends whole chunks until the peer has taken nothing for stall seconds (it stopped
    reading); returns the bytes sent. A chunk begun is finished (blocking) later by no one: the
    caller only closes or resets the socket after this."""
    sock.setblocking(False)
    sent, pending, last = 0, b"", time.monotonic()
    try:
        while sent < limit:
            if not pending:
                pending = chunk
            try:
                n = sock.send(pending)
            except BlockingIOError:
                if time.monotonic() - last > stall:
                    return sent
                time.sleep(0.01)
                continue
            pending, sent, last = pending[n:], sent + n, time.monotonic()
        raise AssertionError("the peer read %d bytes without stopping" % sent)
    finally:
        sock.setblocking(True)


class CopySink:
    """A fake Postgres that logs pgfunnel in, answers COPY with CopyInResponse and then reads
    nothing until released: pgfunnel's forward write to it stays pending. release(how):
    'close' resets the connection; 'drain' reads to the end (returns whether the end came)."""

    def __init__(self):
        self.in_copy = threading.Event()
        self.go = threading.Event()
        self.how = None
        self.ended = None
        self.srv = pfhelpers.ScriptedServer(self.script)

    def script(self, peer):
        peer.read_startup()
        peer.auth(0)
        peer.finish_login(params=(("server_version", "15.0"), ("client_encoding", "UTF8"),
                                  ("standard_conforming_strings", "on")))
        kind, payload = peer.read_message()
        assert kind == "Q", kind
        peer.send("G", b"\0" + struct.pack("!H", 0))
        self.in_copy.set()
        self.go.wait(60)
        if self.how == "close":
            rst_close(peer.sock)
            return
        self.ended = peer.wait_closed(DEADLINE)

    def release(self, how):
        self.how = how
        self.go.set()

    def stop(self):
        self.go.set()
        self.srv.stop()
        return self.srv.errors


@pytest.mark.parametrize("how", ["client-rst", "server-reset", "shutdown"])
def test_forward_write_to_server_pending(proxy, role, how):
    """A client streams COPY data to a server that stopped reading, until pgfunnel stops
    reading the client (its forward write to the server is pending). Then the client resets
    (pgfunnel must end that server: it sees the end of its connection), the server resets (the
    client gets an error or the end, not a hang), or pgfunnel is shut down (it exits cleanly,
    every write request freed: the sanitizer gate checks the leak report)."""
    user, pw = role
    sink = CopySink()
    try:
        pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 1},
                   databases={"sink": sink.srv.db_entry()}, userlist={user: pw})
        c = connect(pf, user, pw, db="sink")
        c.send_query("COPY t FROM STDIN")
        kind, _ = c.read_message(DEADLINE)
        assert kind == "G"
        assert sink.in_copy.wait(DEADLINE)
        sent = fill_until_blocked(c.sock, pgwire.message(b"d", b"x" * 65531))
        assert sent > 1 << 20, sent
        if how == "client-rst":
            rst_close(c.sock)
            sink.release("drain")
            wait_until(lambda: sink.ended is not None, "the sink read to its end")
            assert sink.ended is True, "pgfunnel kept the server of a vanished client"
            alive(pf, user, pw)
        elif how == "server-reset":
            sink.release("close")
            assert _ends_with_error_or_close(c)
            c.sock.close()
            alive(pf, user, pw)
        else:
            shutdown_now(pf)
            c.sock.close()
    finally:
        errors = sink.stop()
    assert errors == []


# ---------------------------------------------------------------- extra tracked parameters


def test_extra_slots_lazily_set_never_cross(proxy, role):
    """track_extra_parameters with two reported parameters: clients with no extra value (no
    extra slots yet), with one or both, set at startup, in options, by SET, inside transactions
    (rolled back or committed), on two servers shared by 24 clients; in rounds each sees its own
    values (or the welcome's, when it set none) and the clients come and go (some reset)."""
    user, pw = role
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 2,
                       "track_extra_parameters": "IntervalStyle, default_transaction_read_only"},
               userlist={user: pw})
    styles = [None, "postgres", "postgres_verbose", "sql_standard", "iso_8601"]
    ro = [None, "on", "off"]
    rnd = random.Random(1414)
    names = ("IntervalStyle", "default_transaction_read_only", "application_name")

    def open_client(i, gen):
        style, r = styles[(i + gen) % len(styles)], ro[(i * 7 + gen) % len(ro)]
        app = "xt%d-%d" % (i, gen)
        how = (i + gen) % 3
        params = {"application_name": app}
        if how == 0:
            if style:
                params["IntervalStyle"] = style
            if r:
                params["default_transaction_read_only"] = r
            c = connect(pf, user, pw, **params)
        elif how == 1:
            opts = " ".join("-c %s=%s" % kv for kv in (("IntervalStyle", style),
                            ("default_transaction_read_only", r)) if kv[1])
            if opts:
                params["options"] = opts
            c = connect(pf, user, pw, **params)
        else:
            c = connect(pf, user, pw, **params)
            if style:
                c.simple_query("BEGIN; SET IntervalStyle = 'iso_8601'; ROLLBACK")
                c.simple_query("BEGIN; SET IntervalStyle = '%s'; COMMIT" % style)
            if r:
                c.simple_query("SET default_transaction_read_only = %s" % r)
        return c, (style or "postgres", r or "off", app)

    clients = {i: open_client(i, 0) for i in range(24)}
    for gen in range(1, 6):
        order = list(clients)
        rnd.shuffle(order)
        for i in order:
            c, want = clients[i]
            assert settings(c, *names) == want, (i, gen)
        for i in rnd.sample(order, 8):
            c = clients[i][0]
            if i % 2:
                rst_close(c.sock)
            else:
                c.close()
            clients[i] = open_client(i, gen)
    for c, _ in clients.values():
        c.close()
    wait_until(lambda: clients_of(pf, user) == [], "every client gone")


# ---------------------------------------------------------------- the cached pid


def test_daemon_logs_its_own_pid(proxy, role):
    """pgfunnel -d forks twice after it has begun logging: every line the daemon writes (its
    "process up", the logins it serves) carries the daemon's pid, not a parent's the log
    cached before the fork; SCRAM logins in the daemon work and get distinct keys."""
    user, pw = role
    # A parameter not implemented: its warning is logged before the fork, by the parent.
    pf = proxy(params={"auth_type": "scram-sha-256", "log_connections": 1,
                       "job_name": "pa14job"}, userlist={user: pw}, daemon=True)
    keys = set()
    for _ in range(5):
        with pgwire.connect(pf.host, pf.port, user, "appdb", pw, timeout=DEADLINE) as c:
            assert c.simple_query("SELECT 1") == [("1",)]
            keys.add(c.backend_key)
    assert len(keys) == 5
    pf.wait_for_log("login attempt")
    pids = {int(p) for p in re.findall(r"^\S+ \S+ \S+ \[(\d+)\]", pf.log_text(), re.M)}
    up = re.search(r"^\S+ \S+ \S+ \[(\d+)\] LOG process up", pf.log_text(), re.M)
    assert up and int(up.group(1)) == pf.pid, (pf.pid, up and up.group(0))
    logins = re.findall(r"^\S+ \S+ \S+ \[(\d+)\] LOG .*login attempt", pf.log_text(), re.M)
    assert logins and {int(p) for p in logins} == {pf.pid}, (pf.pid, logins, pids)
    warned = re.search(r"^\S+ \S+ \S+ \[(\d+)\] WARNING .*job_name",
                       pf.log_text(), re.M)
    assert warned and int(warned.group(1)) != pf.pid, pf.log_text()
