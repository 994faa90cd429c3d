"""Client isolation on a one-server pool, through the wire (pgwire's raw client, real Postgres).

Every database entry here has pool_size=1, so client B gets the very server client A used. Each
test drives A into a protocol state the pooler must account for (an unsynced Execute still
running, half a message, skip-till-Sync after an error, COPY IN with the Sync libpq sends before
the data, a client queued for the server) and then asserts the exact messages B receives: its own
answer and nothing else, within a deadline. A psycopg Canary (own role, its own pool) checks that
pgfunnel keeps serving everyone else meanwhile.

Nothing here sleeps to prove an event: waits poll SHOW POOLS / SHOW CLIENTS / pg_stat_activity
with a deadline, and every read has a timeout (pgwire.Timeout fails the test)."""

import socket
import struct
import threading
import time

import pytest

import pfhelpers
import pgwire
from pgwire import (fe_bind, fe_copy_data, fe_copy_done, fe_copy_fail, fe_execute, fe_flush,
                    fe_parse, fe_query, fe_sync, tokens)

DEADLINE = 5.0  # seconds any expected answer may take (pg_sleep(1) included)
B_OWN = ["T:?column?", "D:B-own-result", "C:SELECT 1", "Z:I"]


def select_tokens(value, status="I", column="?column?"):
    """What a simple `SELECT '<value>'` answers."""
    return ["T:" + column, "D:" + value, "C:SELECT 1", "Z:" + status]


class Setup:
    """pgfunnel with one-server pools in front of the postgres fixture.

    Database entries (all appdb): iso (transaction), isosess (session), isoforced (transaction,
    server user forced to self.role whatever the login user). Tables iso_marker, iso_copy and
    iso_big belong to self.role. A canary runs on its own role and pool."""

    def __init__(self, proxy, postgres):
        self.postgres = postgres
        self.role, self.pw = pfhelpers.new_role(postgres, "iso")
        can_role, can_pw = pfhelpers.new_role(postgres, "isocan")
        one = {"pool_size": 1}
        self.pf = proxy(
            params={"pool_mode": "transaction", "query_wait_timeout": 60},
            databases={
                "iso": postgres.db_entry("appdb", pool_mode="transaction", **one),
                "isosess": postgres.db_entry("appdb", pool_mode="session", **one),
                "isoforced": postgres.db_entry("appdb", pool_mode="transaction", user=self.role,
                                               password=self.pw, **one),
            },
            userlist={self.role: self.pw, can_role: can_pw})
        with postgres.connect(dbname="appdb", autocommit=True) as conn:
            for name in ("iso_marker", "iso_copy", "iso_big"):
                conn.execute("DROP TABLE IF EXISTS %s" % name)
                conn.execute("CREATE TABLE %s (v text)" % name)
                conn.execute("ALTER TABLE %s OWNER TO %s" % (name, self.role))
        self.canary = pfhelpers.Canary(self.pf, can_role, "appdb", can_pw).start()

    def login(self, db="iso", user=None):
        user = user or self.role
        pw = self.pw if user == self.role else self.postgres.passwords[user]
        conn = pgwire.connect(self.pf.host, self.pf.port, user, db, password=pw,
                              timeout=DEADLINE)
        return conn

    def pool(self, db):
        """SHOW POOLS row (dict) of the pool of database db (the one user it has here)."""
        cols, rows = pfhelpers.console(self.pf, "SHOW POOLS")
        mine = [r for r in pfhelpers.rows_as_dicts(cols, rows) if r["database"] == db]
        assert len(mine) <= 1, mine
        return mine[0] if mine else None

    def wait_pool(self, db, pred, what, timeout=DEADLINE):
        """Poll SHOW POOLS until pred(row) holds; AssertionError naming what otherwise."""
        ok = pfhelpers.wait_for(lambda: (lambda r: r is not None and pred(r))(self.pool(db)),
                                timeout)
        assert ok, "%s within %.0fs; SHOW POOLS row: %r\nSHOW SERVERS: %r" % (
            what, timeout, self.pool(db), pfhelpers.console(self.pf, "SHOW SERVERS"))

    def client_ports(self):
        cols, rows = pfhelpers.console(self.pf, "SHOW CLIENTS")
        return {r["port"] for r in pfhelpers.rows_as_dicts(cols, rows)}

    def backends(self, where, args=()):
        return pfhelpers.backend_count(self.postgres, "usename = %s AND " + where,
                                       (self.role,) + tuple(args))

    def finish(self):
        self.canary.check(max_latency=DEADLINE)
        assert self.pf.is_running(), self.pf.all_output()[-5000:]


@pytest.fixture
def iso(proxy, postgres):
    s = Setup(proxy, postgres)
    try:
        yield s
    finally:
        s.canary.stop()


def answer(conn, data, timeout=DEADLINE, what="answer"):
    """Send data, return the tokens of everything up to ReadyForQuery (fails on timeout)."""
    conn.send(data)
    try:
        return tokens(conn.read_until_ready(timeout))
    except pgwire.Timeout as e:
        raise AssertionError("%s: no ReadyForQuery within %.0fs: %s" % (what, timeout, e)) \
            from None


def assert_own_answer(conn, sql, expected, what):
    """conn gets exactly `expected` for sql, nothing buffered after it, and a second query
    afterwards is answered exactly too (the stream is still in step)."""
    got = answer(conn, fe_query(sql), what=what)
    assert got == expected, "%s: got %r, expected %r" % (what, got, expected)
    assert conn.buf == b"", "%s: bytes after ReadyForQuery: %r" % (what, conn.buf)
    again = answer(conn, fe_query("SELECT 'B-again'"), what=what + ", second query")
    assert again == select_tokens("B-again"), "%s, second query: %r" % (what, again)


# ---------------------------------------------------------------- (a) unsynced Execute


@pytest.mark.parametrize("users", ["same-user", "forced-server-user"])
def test_unsynced_execute_then_disconnect_leaks_nothing(iso, users):
    """A: Parse/Bind/Execute of a 1 s query plus Flush, no Sync, and gone. B, on the same
    (only) server, must see exactly its own result: none of A's ParseComplete, BindComplete,
    DataRow or CommandComplete."""
    db, (ua, ub) = ("iso", (None, None)) if users == "same-user" else (
        "isoforced", ("alice", "bob"))
    a = iso.login(db, ua)
    b = iso.login(db, ub)
    sql = "SELECT 'A-secret-data' FROM pg_sleep(1)"
    a.send(fe_parse(sql) + fe_bind() + fe_execute() + fe_flush())
    assert pfhelpers.wait_for(lambda: iso.backends("state = 'active' AND query = %s", (sql,)),
                              DEADLINE), "A's statement never started"
    a.abort()
    got = answer(b, fe_query("SELECT 'B-own-result'"))
    assert not any("A-secret" in t for t in got), "B received A's results: %r" % got
    assert got == B_OWN
    assert_own_answer(b, "SELECT 'B-own-result'", B_OWN, "B after A left")
    b.close()
    iso.finish()


# ---------------------------------------------------------------- (b) Query + unsynced Execute


def test_pipelined_query_then_unsynced_execute_keeps_the_server(iso):
    """A pipelines a simple Query and an unsynced Parse/Bind/Execute/Flush of a 1 s query. The
    Query's ReadyForQuery does not end A's use of the server: B, waiting for the only server,
    must not get it while A's Execute runs; A gets its Execute results, B exactly its own."""
    a = iso.login()
    b = iso.login()
    a.send(fe_query("SELECT 'A-first'") +
           fe_parse("SELECT 'A-second' FROM pg_sleep(1)") + fe_bind() + fe_execute() +
           fe_flush())
    assert tokens(a.read_until_ready(DEADLINE)) == select_tokens("A-first")
    # Still running A's Execute; B asks now.
    b.send(fe_query("SELECT 'B-own-result'"))
    try:
        a_rest = tokens(a.read_messages(4, DEADLINE))
    except pgwire.Timeout as e:
        b_got = tokens(b.read_until_ready(DEADLINE)) if not b.is_silent(0.5) else []
        raise AssertionError("A never got its Execute results (%s); B got %r" % (e, b_got))
    assert a_rest == ["1", "2", "D:A-second", "C:SELECT 1"]
    # A has not sent Sync: the server is still A's, B has had no answer.
    assert b.poll_message() is None, "B was answered while A held the server: %r" % (b.buf,)
    assert answer(a, fe_sync()) == ["Z:I"]
    got = tokens(b.read_until_ready(DEADLINE))
    assert got == B_OWN, "B got %r" % got
    a.close()
    b.close()
    iso.finish()


# ---------------------------------------------------------------- (c) half a message


def half_parse():
    msg = fe_parse("SELECT 'A-half-parse-" + "x" * 200 + "'")
    return msg[:len(msg) // 2]


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_half_a_parse_then_disconnect(iso, mode):
    """A sends the first half of a Parse and disconnects. The server holds half a message: it
    must not serve B as it is (B's Query would be swallowed as the rest of the Parse). In
    session mode the server must not stay `tested` (its reset query stuck behind the half
    message) and the next client must be served."""
    db = "iso" if mode == "transaction" else "isosess"
    a = iso.login(db)
    # A warm server sits idle in the pool (transaction) or is A's (session), so the header of
    # the half message links it at once and the half message goes out before A's EOF is read.
    assert answer(a, fe_query("SELECT 'A-warm'")) == select_tokens("A-warm")
    a.send(half_parse())
    a.abort()
    if mode == "session":
        iso.wait_pool(db, lambda r: r["cl_active"] == 0 and r["sv_tested"] == 0
                      and r["sv_login"] == 0,
                      "the only server is still tested/logging in after A left")
    b = iso.login(db)
    assert_own_answer(b, "SELECT 'B-own-result'", B_OWN, "B after A's half Parse")
    b.close()
    iso.finish()


# ---------------------------------------------------------------- (d) failed Parse + Flush


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_failed_parse_and_flush_then_disconnect(iso, mode):
    """A: a Parse with a syntax error and a Flush, ErrorResponse read, gone without Sync. The
    server now skips everything until a Sync: the next client's Query must still be answered."""
    db = "iso" if mode == "transaction" else "isosess"
    a = iso.login(db)
    a.send(fe_parse("SELEC 'A-broken'") + fe_flush())
    got = tokens(a.read_messages(1, DEADLINE))
    assert got == ['E:42601:syntax error at or near "SELEC"'], got
    a.abort()
    b = iso.login(db)
    assert_own_answer(b, "SELECT 'B-own-result'", B_OWN, "B after A's failed Parse")
    b.close()
    iso.finish()


# ---------------------------------------------------------------- (e) pipelines


def test_two_queries_in_one_write_from_two_clients(iso):
    a, b = iso.login(), iso.login()
    for i in range(20):
        a.send(fe_query("SELECT 'A-%d-1'" % i) + fe_query("SELECT 'A-%d-2'" % i))
        b.send(fe_query("SELECT 'B-%d-1'" % i) + fe_query("SELECT 'B-%d-2'" % i))
        for conn, name in ((a, "A"), (b, "B")):
            got = tokens(conn.read_until_ready(DEADLINE) + conn.read_until_ready(DEADLINE))
            assert got == (select_tokens("%s-%d-1" % (name, i)) +
                           select_tokens("%s-%d-2" % (name, i))), (name, i, got)
    assert a.buf == b.buf == b""
    a.close()
    b.close()
    iso.finish()


def ext_select(value):
    return fe_parse("SELECT '%s'" % value) + fe_bind() + fe_execute()


def ext_select_tokens(value):
    return ["1", "2", "D:" + value, "C:SELECT 1"]


def test_several_syncs_in_flight_from_two_clients(iso):
    a, b = iso.login(), iso.login()
    for i in range(10):
        for conn, name in ((a, "A"), (b, "B")):
            conn.send(b"".join(ext_select("%s-%d-%d" % (name, i, k)) + fe_sync()
                               for k in range(3)))
        for conn, name in ((a, "A"), (b, "B")):
            got = tokens(conn.read_until_ready(DEADLINE) + conn.read_until_ready(DEADLINE) +
                         conn.read_until_ready(DEADLINE))
            want = []
            for k in range(3):
                want += ext_select_tokens("%s-%d-%d" % (name, i, k)) + ["Z:I"]
            assert got == want, (name, i, got)
    assert a.buf == b.buf == b""
    a.close()
    b.close()
    iso.finish()


def test_error_in_the_middle_of_a_pipeline(iso):
    """Parse ok, Bind of a failing statement, more Execute, Sync: Postgres skips to the Sync;
    the client gets exactly that, and the next pipeline (and B) work."""
    a, b = iso.login(), iso.login()
    for i in range(5):
        a.send(ext_select("A-ok-%d" % i) +
               fe_parse("SELECT $1::int") + fe_bind(params=["A-bad-%d" % i]) + fe_execute() +
               fe_execute() + ext_select("A-skipped-%d" % i) + fe_sync() +
               ext_select("A-after-%d" % i) + fe_sync())
        b.send(fe_query("SELECT 'B-%d'" % i))
        got = tokens(a.read_until_ready(DEADLINE) + a.read_until_ready(DEADLINE))
        assert got == (ext_select_tokens("A-ok-%d" % i) + [
            "1", 'E:22P02:invalid input syntax for type integer: "A-bad-%d"' % i, "Z:I"] +
            ext_select_tokens("A-after-%d" % i) + ["Z:I"]), got
        assert tokens(b.read_until_ready(DEADLINE)) == select_tokens("B-%d" % i)
    a.close()
    b.close()
    iso.finish()


def test_flush_without_sync_then_sync_later(iso):
    """A: Parse/Bind/Execute/Flush, reads its results, later Sync. B's Query, sent in between,
    waits for A's Sync and is answered exactly."""
    a, b = iso.login(), iso.login()
    for i in range(5):
        a.send(ext_select("A-%d" % i) + fe_flush())
        assert tokens(a.read_messages(4, DEADLINE)) == ext_select_tokens("A-%d" % i)
        b.send(fe_query("SELECT 'B-%d'" % i))
        a.send(ext_select("A-%d-more" % i) + fe_flush())
        assert tokens(a.read_messages(4, DEADLINE)) == ext_select_tokens("A-%d-more" % i)
        assert b.poll_message() is None, "B was answered while A held the server"
        assert answer(a, fe_sync()) == ["Z:I"]
        assert tokens(b.read_until_ready(DEADLINE)) == select_tokens("B-%d" % i)
    a.close()
    b.close()
    iso.finish()


# ---------------------------------------------------------------- (f) COPY and Sync


COPY_SHAPES = {
    # name: (first write, messages then, second write, messages then)
    "extended-copydone": (
        fe_parse("COPY iso_copy FROM STDIN") + fe_bind() + fe_execute() + fe_sync(),
        ["1", "2", "G"],
        fe_copy_data("A-row-1\n") + fe_copy_data("A-row-2\n") + fe_copy_done() + fe_sync(),
        ["C:COPY 2", "Z:I"]),
    "extended-copyfail": (
        fe_parse("COPY iso_copy FROM STDIN") + fe_bind() + fe_execute() + fe_sync(),
        ["1", "2", "G"],
        fe_copy_data("A-row-1\n") + fe_copy_fail("A-gives-up") + fe_sync(),
        ["E:57014:COPY from stdin failed: A-gives-up", "Z:I"]),
    "simple-copydone": (
        fe_query("COPY iso_copy FROM STDIN"),
        ["G"],
        fe_copy_data("A-row-1\n") + fe_copy_data("A-row-2\n") + fe_copy_done(),
        ["C:COPY 2", "Z:I"]),
    "simple-copyfail": (
        fe_query("COPY iso_copy FROM STDIN"),
        ["G"],
        fe_copy_data("A-row-1\n") + fe_copy_fail("A-gives-up"),
        ["E:57014:COPY from stdin failed: A-gives-up", "Z:I"]),
}


@pytest.mark.parametrize("shape", list(COPY_SHAPES))
def test_copy_in_ends_idle_and_frees_the_server(iso, shape):
    """COPY FROM STDIN as libpq sends it (extended: Parse/Bind/Execute/Sync, CopyData,
    CopyDone/CopyFail, Sync; Postgres ignores the first Sync during COPY IN, so one
    ReadyForQuery comes). A ends idle and, still connected, no longer holds the only server:
    B gets it at once."""
    first, first_want, second, second_want = COPY_SHAPES[shape]
    a = iso.login()
    a.send(first)
    assert tokens(a.read_messages(len(first_want), DEADLINE)) == first_want
    assert answer(a, second) == second_want
    # A stays connected and idle; B must be served promptly.
    b = iso.login()
    got = answer(b, fe_query("SELECT 'B-own-result'"),
                 what="B, while A is idle after its COPY (%s)" % shape)
    assert got == B_OWN, got
    rows = 2 if shape.endswith("copydone") else 0
    assert answer(b, fe_query("SELECT count(*) FROM iso_copy")) == select_tokens(str(rows), column="count")
    # And A can go on.
    assert answer(a, fe_query("SELECT 'A-again'")) == select_tokens("A-again")
    a.close()
    b.close()
    iso.finish()


# ---------------------------------------------------------------- (g) a queued client leaves


def test_client_that_leaves_while_queued_runs_nothing(iso):
    """A holds the only server in a transaction; B sends an INSERT, is queued, and disconnects.
    B must disappear from SHOW CLIENTS while still queued, and its INSERT must never run."""
    a = iso.login()
    assert answer(a, fe_query("BEGIN")) == ["C:BEGIN", "Z:T"]
    assert answer(a, fe_query("SELECT 'A-in-tx'")) == select_tokens("A-in-tx", "T")
    b = iso.login()
    b_port = b.sock.getsockname()[1]
    b.send(fe_query("INSERT INTO iso_marker VALUES ('B-must-never-run')"))
    iso.wait_pool("iso", lambda r: r["cl_waiting"] == 1, "B was not queued for the server")
    b.abort()
    b_gone = pfhelpers.wait_for(lambda: b_port not in iso.client_ports(), DEADLINE)
    assert answer(a, fe_query("COMMIT")) == ["C:COMMIT", "Z:I"]
    # Whatever was queued ahead of C ran before C's query (one server, FIFO).
    c = iso.login()
    assert answer(c, fe_query("SELECT count(*) FROM iso_marker")) == select_tokens("0", column="count"), (
        "the INSERT of a client that had left ran (B %s from SHOW CLIENTS)" % (
            "was gone" if b_gone else "was still listed %.0fs after it left" % DEADLINE))
    assert b_gone, "B still listed by SHOW CLIENTS %.0fs after it disconnected" % DEADLINE
    a.close()
    c.close()
    iso.finish()


# ---------------------------------------------------------------- (h) a server that stops reading


def test_server_that_stops_reading_a_copy_stream(iso):
    """Postgres stops reading from its socket: A's COPY waits for a lock another session holds
    while A streams 64 MiB of CopyData. pgfunnel must not buffer the stream (the sender blocks,
    RSS stays flat), must keep serving the canary, and the COPY completes once the lock goes."""
    chunk_rows = 1000
    row = "A-%s\n" % ("y" * 1020)
    chunk = fe_copy_data(row * chunk_rows)  # about 1 MiB
    nchunks = 64
    holder = iso.postgres.connect(dbname="appdb")
    holder.execute("LOCK TABLE iso_big IN ACCESS EXCLUSIVE MODE")
    a = iso.login()
    rss0 = pfhelpers.proc_rss_kib(iso.pf.pid)
    sent = [0]
    failure = []

    def stream():
        try:
            a.send(fe_query("COPY iso_big FROM STDIN"))
            for _ in range(nchunks):
                a.sock.sendall(chunk)
                sent[0] += 1
        except Exception as e:  # noqa: BLE001 - reported below
            failure.append(repr(e))

    a.sock.settimeout(60)
    t = threading.Thread(target=stream, daemon=True)
    t.start()
    try:
        assert pfhelpers.wait_for(lambda: iso.backends(
            "wait_event_type = 'Lock' AND query LIKE 'COPY iso_big%%'"), DEADLINE), (
            "A's COPY is not waiting for the lock")

        # The sender stalls: its count stops moving (polled, bounded by a deadline).
        last = [-1, time.monotonic()]

        def stalled():
            if sent[0] != last[0]:
                last[:] = [sent[0], time.monotonic()]
                return False
            return time.monotonic() - last[1] > 1.0

        assert pfhelpers.wait_for(stalled, 15, interval=0.1), "the sender never stalled"
        assert t.is_alive() and not failure, failure
        assert sent[0] < nchunks, "all %d MiB went through while Postgres read nothing" % nchunks
        grew = pfhelpers.proc_rss_kib(iso.pf.pid) - rss0
        assert grew < 8 * 1024, "pgfunnel RSS grew by %d KiB while Postgres read nothing" % grew
        iso.canary.expect_progress()
    finally:
        holder.rollback()
        holder.close()
    t.join(60)
    assert not t.is_alive() and not failure, ("stream did not finish", failure)
    got = tokens(a.read_messages(1, DEADLINE))
    assert got == ["G"], got
    assert answer(a, fe_copy_done(), timeout=30) == ["C:COPY %d" % (nchunks * chunk_rows), "Z:I"]
    assert answer(a, fe_query("SELECT count(*) FROM iso_big")) == select_tokens(
        str(nchunks * chunk_rows), column="count")
    a.close()
    iso.finish()


def test_client_stuck_behind_a_server_that_stops_reading_is_noticed_when_it_leaves(iso):
    """Postgres stops reading A's COPY stream (a lock another session holds), so pgfunnel's
    forward to it stays pending and A's buffer is full; then A disconnects. pgfunnel must
    notice (no read can tell it: it asks the kernel) and let both A and its server go, instead
    of keeping them until the lock is released."""
    chunk = fe_copy_data(("A-%s\n" % ("z" * 1020)) * 1000)  # about 1 MiB
    holder = iso.postgres.connect(dbname="appdb")
    holder.execute("LOCK TABLE iso_big IN ACCESS EXCLUSIVE MODE")
    try:
        a = iso.login()
        a_port = a.sock.getsockname()[1]
        a.send(fe_query("COPY iso_big FROM STDIN"))
        assert pfhelpers.wait_for(lambda: iso.backends(
            "wait_event_type = 'Lock' AND query LIKE 'COPY iso_big%%'"), DEADLINE), (
            "A's COPY is not waiting for the lock")
        # Fill every buffer on the way: stop once nothing more is taken for a second.
        a.sock.setblocking(False)
        pending, idle_since = chunk, time.monotonic()
        while time.monotonic() - idle_since < 1.0:
            try:
                n = a.sock.send(pending)
            except BlockingIOError:
                time.sleep(0.02)
                continue
            pending = pending[n:] or chunk
            idle_since = time.monotonic()
        assert a_port in iso.client_ports()
        # Its last bytes still sit in its own send queue (pgfunnel's window is closed), so a
        # FIN would wait behind them: the process dies and its socket is reset.
        a.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        a.sock.close()
        assert pfhelpers.wait_for(lambda: a_port not in iso.client_ports(), DEADLINE), (
            "A still listed %.0fs after it left while stuck" % DEADLINE)
        # Its server went too (it was mid-COPY), while the lock is still held. (Postgres itself
        # notices the closed socket only once the lock is released.)
        iso.wait_pool("iso", lambda r: r["sv_active"] == 0 and r["cl_active"] == 0,
                      "A's server was not let go")
    finally:
        holder.rollback()
        holder.close()
    b = iso.login()
    assert_own_answer(b, "SELECT 'B-own'", select_tokens("B-own"), "B after A left")
    b.close()
    iso.finish()
