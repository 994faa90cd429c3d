"""Protocol-level prepared statements through pgfunnel, checked against PostgreSQL itself.

Every test here is differential: a script of raw frontend bytes (pgwire's fe_* builders; what
one step sends goes out in ONE socket write, so "pipelined" means pipelined) is played twice:

  1. straight to PostgreSQL, each client (A, B) on a backend of its own, and
  2. through pgfunnel in pool_mode=transaction with max_prepared_statements on and, unless a
     test says otherwise, a pool of ONE server shared by the clients, so that every client's
     statements live on the same server under pgfunnel's names (PGFUNNEL_<n>) while another
     client uses the same names for different SQL.

Each step reads up to the ReadyForQuery it is owed (or an exact number of messages, for a
Flush) within a deadline, so a hang fails the step instead of blocking. The client must see,
step by step, exactly what PostgreSQL sent: the same message types in the same order, the same
values, the same SQLSTATE and error text (pgwire.token() form). Only what legitimately differs
is left out: ParameterStatus and NoticeResponse (backend PIDs never appear in a token).
Where a step carries an `expect`, PostgreSQL's own answer is asserted too, so the scripts
document what PostgreSQL does and a failure through pgfunnel is pgfunnel's.

Tests named test_b<N>_... are known or suspected bugs (see each docstring); they assert the
correct, PostgreSQL-identical and isolated behaviour.

    PGFUNNEL_BIN=build/pgfunnel pytest tests/integration/test_prepared_protocol.py
"""

import hashlib
import threading
import time

import pytest

import pfhelpers
import pgwire
from pgwire import (fe_bind, fe_close, fe_describe, fe_execute, fe_flush, fe_parse, fe_query,
                    fe_sync)

DEADLINE = 5.0  # seconds a correct pooler may take to answer one step
QUIET = 0.3  # after a Flush's answers: nothing more may come within this time
DB = "pt"  # the [databases] entry (appdb through a pool of pool_size servers)

S = fe_sync()
H = fe_flush()


def P(name, sql, types=()):
    return fe_parse(sql, name, types)


def B(stmt, params=(), portal=""):
    return fe_bind(portal, stmt, params)


def E(portal="", max_rows=0):
    return fe_execute(portal, max_rows)


def Q(sql):
    return fe_query(sql)


def run(name, sql=None, params=()):
    """Parse (when sql is given), Bind and Execute of a named statement (no Sync)."""
    return (P(name, sql) if sql is not None else b"") + B(name, params) + E()


def row(value, tag="SELECT 1"):
    """The answer to Bind + Execute of a one-row, one-column SELECT."""
    return ["2", "D:" + value, "C:" + tag]


# ---------------------------------------------------------------- tokens


def norm(tok):
    """A token short enough to print: long values (a 1 MB row) by length and digest."""
    if len(tok) <= 120:
        return tok
    return "%s<%d chars md5 %s>" % (tok[:12], len(tok),
                                    hashlib.md5(tok.encode()).hexdigest()[:12])


def toks(messages):
    return [norm(t) for t in pgwire.tokens(messages)]


def describe_fe(data):
    """A short readable form of frontend bytes: "P(s1:SELECT 1) B(s1) E S"."""
    msgs, rest = pgwire.split_messages(data)
    out = []
    for kind, body in msgs:
        parts = body.split(b"\0")
        if kind == "P":
            out.append("P(%s:%s)" % (parts[0].decode(errors="replace")[:20],
                                     parts[1].decode(errors="replace")[:40]))
        elif kind == "B":
            out.append("B(%s%s)" % (parts[1].decode(errors="replace")[:20],
                                    "->" + parts[0].decode() if parts[0] else ""))
        elif kind in ("D", "C"):
            out.append("%s(%s:%s)" % (kind, chr(body[0]), body[1:-1].decode(errors="replace")[:20]))
        elif kind == "Q":
            out.append("Q(%s)" % body[:-1].decode(errors="replace")[:60])
        else:
            out.append(kind)
    if len(out) > 24:
        out = out[:12] + ["... %d more ..." % (len(out) - 20)] + out[-8:]
    return " ".join(out) + (" +%d bytes" % len(rest) if rest else "")


# ---------------------------------------------------------------- scripts


class Script:
    """Steps for clients named by letters; every step is replayed identically on each side."""

    def __init__(self):
        self.steps = []

    def _add(self, **step):
        self.steps.append(step)
        return self

    def x(self, who, data, expect=None, ready=1):
        """Send data in one write, read up to the ready-th ReadyForQuery."""
        return self._add(op="x", who=who, data=data, expect=expect, ready=ready)

    def sql(self, who, text, expect=None):
        return self.x(who, Q(text), expect)

    def send(self, who, data):
        """Send data in one write, read nothing (a later read() collects the answer)."""
        return self._add(op="send", who=who, data=data, expect=None)

    def read(self, who, expect=None, ready=1):
        return self._add(op="read", who=who, expect=expect, ready=ready)

    def msgs(self, who, data, n, expect=None):
        """Send data (ending in a Flush), read exactly n messages, then nothing more may
        arrive for QUIET seconds."""
        return self._add(op="msgs", who=who, data=data, n=n, expect=expect)

    def pause(self, seconds):
        return self._add(op="pause", who=None, seconds=seconds, expect=None)

    def clients(self):
        return sorted({st["who"] for st in self.steps if st["who"]})


class Side:
    """Connections of the clients of one side (PostgreSQL direct, or through pgfunnel)."""

    def __init__(self, label, connect):
        self.label = label
        self.connect = connect
        self.conns = {}
        self.dead = set()

    def close(self):
        for c in self.conns.values():
            try:
                c.close()
            except OSError:
                pass
        self.conns = {}


def _read_ready(conn, ready, timeout):
    try:
        return toks(conn.read_until_ready(timeout, ready)), None
    except pgwire.Timeout as e:
        return toks(e.messages) + ["<no ReadyForQuery within %.0fs>" % timeout], "hang"
    except pgwire.ProtocolError as e:
        return toks(getattr(e, "messages", [])) + ["<connection closed>"], "closed"


def _read_n(conn, n, timeout):
    """Exactly n messages other than ParameterStatus/NoticeResponse, then silence."""
    deadline = time.monotonic() + timeout
    got = []
    try:
        while len([1 for k, _ in got if k not in "SN"]) < n:
            got.append(conn.read_message(max(0.0, deadline - time.monotonic())))
    except pgwire.Timeout:
        return toks(got) + ["<only these within %.0fs>" % timeout], "hang"
    except pgwire.ProtocolError:
        return toks(got) + ["<connection closed>"], "closed"
    out = toks(got)
    if not conn.is_silent(QUIET):
        extra = []
        try:
            while True:
                m = conn.poll_message()
                if m is None:
                    break
                extra.append(m)
        except pgwire.ProtocolError:
            extra.append(("<", b"closed"))
        out += ["<then, before any Sync: %s>" % toks(extra)]
    return out, None


def play_step(side, st):
    """One step on one side: its tokens (with <markers> for a hang or a closed connection)."""
    op = st["op"]
    if op == "pause":
        time.sleep(st["seconds"])
        return []
    who = st["who"]
    if who in side.dead:
        return ["<client %s already gone>" % who]
    conn = side.conns[who]
    problem = None
    if op in ("x", "send", "msgs"):
        try:
            conn.send(st["data"])
        except OSError as e:
            side.dead.add(who)
            return ["<send failed: %r>" % e]
    if op == "send":
        return []
    if op in ("x", "read"):
        out, problem = _read_ready(conn, st["ready"], DEADLINE)
    else:
        out, problem = _read_n(conn, st["n"], DEADLINE)
    if problem:
        side.dead.add(who)
    return out


def step_label(i, st):
    if st["op"] == "pause":
        return "#%d pause %.1fs" % (i, st["seconds"])
    if st["op"] == "read":
        return "#%d %s reads" % (i, st["who"])
    return "#%d %s %s: %s" % (i, st["who"], st["op"], describe_fe(st["data"]))


def play(side, script):
    for who in script.clients():
        side.conns[who] = side.connect(who)
    return side


def differential(direct, proxied, script):
    """Play script on PostgreSQL (asserting each step's expect), then through pgfunnel,
    comparing step by step; fails at the first step pgfunnel answers differently."""
    ref = []
    try:
        play(direct, script)
        for i, st in enumerate(script.steps):
            got = play_step(direct, st)
            if st.get("expect") is not None:
                assert got == st["expect"], (
                    "the test is wrong: PostgreSQL itself answered step %s with\n  %r\n"
                    "not\n  %r" % (step_label(i, st), got, st["expect"]))
            assert not any(t.startswith("<") for t in got), (
                "the test is wrong: PostgreSQL did not answer step %s: %r" % (
                    step_label(i, st), got))
            ref.append(got)
    finally:
        direct.close()
    log = []
    try:
        play(proxied, script)
        for i, st in enumerate(script.steps):
            got = play_step(proxied, st)
            if got != ref[i]:
                raise AssertionError(
                    "pgfunnel differs from PostgreSQL at step %s\n  PostgreSQL: %r\n"
                    "  pgfunnel:   %r\n---- steps before (same on both) ----\n%s" % (
                        step_label(i, st), ref[i], got, "\n".join(log[-15:])))
            log.append("%s -> %r" % (step_label(i, st), got))
    finally:
        proxied.close()
    return ref


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def role(postgres):
    return pfhelpers.new_role(postgres, "ppt")


def direct_side(postgres, role):
    name, pw = role
    return Side("PostgreSQL", lambda who: pgwire.connect(
        postgres.host, postgres.port, name, "appdb", password=pw, timeout=DEADLINE))


def proxy_side(pf, role):
    name, pw = role
    return Side("pgfunnel", lambda who: pgwire.connect(
        pf.host, pf.port, name, DB, password=pw, timeout=DEADLINE))


def start_pf(proxy, postgres, role, max_prepared=200, pool_size=1, **params):
    p = {"pool_mode": "transaction", "max_prepared_statements": max_prepared,
         "query_wait_timeout": 30}
    p.update(params)
    return proxy(databases={DB: postgres.db_entry("appdb", pool_size=pool_size)},
                 params=p, userlist={role[0]: role[1]})


def check(proxy, postgres, role, script, max_prepared=200, pool_size=1, **params):
    """differential() with a pgfunnel started for it; returns the pgfunnel (still running)."""
    pf = start_pf(proxy, postgres, role, max_prepared, pool_size, **params)
    differential(direct_side(postgres, role), proxy_side(pf, role), script)
    assert pf.is_running(), pf.all_output()[-3000:]
    return pf


def show_servers(pf):
    return [r for r in pfhelpers.show(pf, "SERVERS") if r["database"] == DB]


NOT_EXIST = "E:26000:prepared statement \"%s\" does not exist"
EXISTS = "E:42P05:prepared statement \"%s\" already exists"


# ---------------------------------------------------------------- the basics


def test_basic_named_parse_bind_execute(proxy, postgres, role):
    """Named Parse/Bind/Execute/Sync; client B uses the same name for different SQL on the
    same (only) server; named portals; a statement bound twice in one pipeline."""
    s = Script()
    s.x("A", run("s1", "SELECT 'A-s1'") + S, ["1"] + row("A-s1") + ["Z:I"])
    s.x("B", run("s1", "SELECT 'B-s1-' || $1", ["x"]) + S, ["1"] + row("B-s1-x") + ["Z:I"])
    s.x("A", run("s1") + S, row("A-s1") + ["Z:I"])
    s.x("B", run("s1", params=["y"]) + S, row("B-s1-y") + ["Z:I"])
    s.x("A", run("s1") + run("s1") + S, row("A-s1") * 2 + ["Z:I"])
    s.x("A", B("s1", portal="p1") + E("p1") + S, row("A-s1") + ["Z:I"])
    s.x("B", B("s1", ["z"], portal="p1") + E("p1") + B("s1", ["w"]) + E() + S,
        row("B-s1-z") + row("B-s1-w") + ["Z:I"])
    check(proxy, postgres, role, s)


def test_reparse_after_close(proxy, postgres, role):
    """Close, then the same name Parsed again: with other SQL, in the same write as the
    Close, and with the SQL the server still has (answered by pgfunnel)."""
    s = Script()
    s.x("A", P("s1", "SELECT 1") + S, ["1", "Z:I"])
    s.x("B", run("s1", "SELECT 1") + S, ["1"] + row("1") + ["Z:I"])
    s.x("A", fe_close("S", "s1") + S, ["3", "Z:I"])
    s.x("A", run("s1") + S, [NOT_EXIST % "s1", "Z:I"])
    s.x("A", run("s1", "SELECT 'new'") + S, ["1"] + row("new") + ["Z:I"])
    s.x("A", fe_close("S", "s1") + run("s1", "SELECT 'newer'") + S,
        ["3", "1"] + row("newer") + ["Z:I"])
    s.x("A", fe_close("S", "s1") + run("s1", "SELECT 1") + S, ["3", "1"] + row("1") + ["Z:I"])
    s.x("B", run("s1") + S, row("1") + ["Z:I"])
    s.x("A", fe_close("S", "s1") + fe_close("S", "s1") + S, ["3", "3", "Z:I"])
    s.x("A", run("s1") + S, [NOT_EXIST % "s1", "Z:I"])
    s.x("B", run("s1") + S, row("1") + ["Z:I"])
    check(proxy, postgres, role, s)


def test_duplicate_parse_is_42P05_with_client_name(proxy, postgres, role):
    """Parse of a name the client has: 42P05 naming the client's statement, the rest up to
    Sync skipped, the existing statement kept; a duplicate inside one pipeline."""
    s = Script()
    s.x("A", P("s1", "SELECT 1") + S, ["1", "Z:I"])
    s.x("A", run("s1", "SELECT 2") + S, [EXISTS % "s1", "Z:I"])
    s.x("A", P("s1", "SELECT 1") + S, [EXISTS % "s1", "Z:I"])
    s.x("A", run("s1") + S, row("1") + ["Z:I"])
    s.x("B", P("s1", "SELECT 'B'") + S, ["1", "Z:I"])
    s.x("A", P("s2", "SELECT 2") + P("s2", "SELECT 3") + run("s1") + S,
        ["1", EXISTS % "s2", "Z:I"])
    s.x("A", run("s2") + S, row("2") + ["Z:I"])
    s.x("B", run("s1") + S, row("B") + ["Z:I"])
    check(proxy, postgres, role, s)


def test_unknown_names(proxy, postgres, role):
    """Bind and Describe of a name the client does not have: 26000; Close of one is not an
    error (CloseComplete); another client's name is unknown too."""
    s = Script()
    s.x("B", P("theirs", "SELECT 'B'") + S, ["1", "Z:I"])
    s.x("A", run("nope") + S, [NOT_EXIST % "nope", "Z:I"])
    s.x("A", fe_describe("S", "nope") + S, [NOT_EXIST % "nope", "Z:I"])
    s.x("A", fe_close("S", "nope") + S, ["3", "Z:I"])
    s.x("A", run("theirs") + S, [NOT_EXIST % "theirs", "Z:I"])
    s.x("A", fe_describe("S", "theirs") + S, [NOT_EXIST % "theirs", "Z:I"])
    s.x("A", fe_describe("P", "nope") + S, ['E:34000:portal "nope" does not exist', "Z:I"])
    s.x("A", P("s1", "SELECT 1") + run("nope") + run("s1") + S,
        ["1", NOT_EXIST % "nope", "Z:I"])
    s.x("A", run("s1") + S, row("1") + ["Z:I"])
    s.x("B", run("theirs") + S, row("B") + ["Z:I"])
    check(proxy, postgres, role, s)


@pytest.mark.parametrize("max_prepared", [200, 1])
def test_describe_statement_and_portal(proxy, postgres, role, max_prepared):
    """Describe 'S' (ParameterDescription + RowDescription/NoData) and 'P'; with
    max_prepared_statements=1 B's statements evict A's, so A's Describe needs it prepared
    again first."""
    s = Script()
    total = "SELECT $1::int + $2::int AS total"
    s.x("A", P("s1", total) + fe_describe("S", "s1") + B("s1", ["2", "3"]) +
        fe_describe("P", "") + E() + S,
        ["1", "t:2", "T:total", "2", "T:total", "D:5", "C:SELECT 1", "Z:I"])
    s.x("A", P("s2", "DO $$BEGIN END$$") + fe_describe("S", "s2") + S, ["1", "t:0", "n", "Z:I"])
    s.x("B", P("s1", "SELECT 'B' AS b") + fe_describe("S", "s1") + S, ["1", "t:0", "T:b", "Z:I"])
    s.x("A", fe_describe("S", "s1") + S, ["t:2", "T:total", "Z:I"])
    s.x("B", P("s3", "SELECT 3 AS three") + S, ["1", "Z:I"])
    s.x("A", fe_describe("S", "s2") + fe_describe("S", "s1") + S,
        ["t:0", "n", "t:2", "T:total", "Z:I"])
    s.x("A", B("s1", ["1", "1"], portal="pa") + fe_describe("P", "pa") + E("pa") + S,
        ["2", "T:total", "D:2", "C:SELECT 1", "Z:I"])
    s.x("B", fe_describe("S", "s1") + fe_describe("S", "s3") + S,
        ["t:0", "T:b", "t:0", "T:three", "Z:I"])
    check(proxy, postgres, role, s, max_prepared=max_prepared)


def test_flush_without_sync(proxy, postgres, role):
    """Answers arrive at a Flush, before any Sync, including the ParseComplete and
    CloseComplete pgfunnel gives itself; B's query waits for A's Sync (one server)."""
    s = Script()
    s.x("B", P("b1", "SELECT 'shared'") + S, ["1", "Z:I"])
    s.msgs("A", run("s1", "SELECT 'f1'") + H, 4, ["1"] + row("f1"))
    s.msgs("A", P("s2", "SELECT 'shared'") + H, 1, ["1"])  # the server has it (B's)
    s.msgs("A", fe_close("S", "s1") + H, 1, ["3"])
    s.send("B", run("b1") + S)
    s.msgs("A", run("s2") + fe_describe("S", "s2") + H, 5, row("shared") + ["t:0", "T:?column?"])
    s.x("A", S, ["Z:I"])
    s.read("B", row("shared") + ["Z:I"])
    s.x("A", run("s1") + S, [NOT_EXIST % "s1", "Z:I"])
    s.msgs("A", run("s2") + H, 3, row("shared"))
    s.x("A", fe_close("S", "s2") + S, ["3", "Z:I"])
    check(proxy, postgres, role, s)


def test_error_in_the_middle_of_a_pipeline(proxy, postgres, role):
    """An error skips everything up to Sync: statements Parsed after it do not exist,
    those before do (statements are not transactional)."""
    s = Script()
    s.x("A", run("s1", "SELECT 1") + run("s2", "SELEC 2") + run("s3", "SELECT 3") + S,
        ["1"] + row("1") + ['E:42601:syntax error at or near "SELEC"', "Z:I"])
    s.x("A", run("s3") + S, [NOT_EXIST % "s3", "Z:I"])
    s.x("A", run("s2") + S, [NOT_EXIST % "s2", "Z:I"])
    s.x("A", run("s1") + S, row("1") + ["Z:I"])
    s.x("B", run("s3", "SELECT 'B3'") + S, ["1"] + row("B3") + ["Z:I"])
    div0 = "SELECT 1 / g FROM generate_series(0, 0) g"  # fails at Execute, not at Bind
    s.x("A", run("s4", div0) + run("s5", "SELECT 5") + fe_close("S", "s1") + S,
        ["1", "2", "E:22012:division by zero", "Z:I"])
    s.x("A", run("s5") + S, [NOT_EXIST % "s5", "Z:I"])
    s.x("A", run("s1") + S, row("1") + ["Z:I"])  # the Close was skipped
    s.x("A", run("s4") + S, ["2", "E:22012:division by zero", "Z:I"])
    s.x("A", P("s6", "SELECT $1::int") + S, ["1", "Z:I"])
    s.x("A", run("s1") + run("s6", params=["x"]) + run("s1") + S,
        row("1") + ['E:22P02:invalid input syntax for type integer: "x"', "Z:I"])
    s.x("A", run("s6", params=["6"]) + S, row("6") + ["Z:I"])
    s.x("B", run("s3") + S, row("B3") + ["Z:I"])
    check(proxy, postgres, role, s)


def test_many_statements_before_one_sync(proxy, postgres, role):
    """Thirty Parse/Bind/Execute before one Sync, then all of them bound again in one
    pipeline, with B using the same names for other SQL in between."""
    n = 30
    s = Script()
    s.x("A", b"".join(run("s%d" % i, "SELECT 'A%d'" % i) for i in range(n)) + S,
        sum((["1"] + row("A%d" % i) for i in range(n)), []) + ["Z:I"])
    s.x("B", b"".join(run("s%d" % i, "SELECT 'B%d'" % i) for i in range(0, n, 3)) + S,
        sum((["1"] + row("B%d" % i) for i in range(0, n, 3)), []) + ["Z:I"])
    s.x("A", b"".join(run("s%d" % i) for i in reversed(range(n))) + S,
        sum((row("A%d" % i) for i in reversed(range(n))), []) + ["Z:I"])
    s.x("B", b"".join(run("s%d" % i) for i in range(0, n, 3)) + S,
        sum((row("B%d" % i) for i in range(0, n, 3)), []) + ["Z:I"])
    check(proxy, postgres, role, s)


def test_statements_survive_transactions_on_a_shared_server(proxy, postgres, role):
    """Statements last across transactions on a pool of 1 that B shares, with the same
    names for different SQL (and one name of B's for A's SQL); B waits while A is in a
    transaction block."""
    s = Script()
    s.x("A", P("s1", "SELECT 'A1'") + P("s2", "SELECT 'A2'") + S, ["1", "1", "Z:I"])
    s.x("B", P("s1", "SELECT 'B1'") + P("s2", "SELECT 'A1'") + S, ["1", "1", "Z:I"])
    for r in range(3):
        s.sql("A", "BEGIN", ["C:BEGIN", "Z:T"])
        s.x("A", run("s1") + S, row("A1") + ["Z:T"])
        s.send("B", run("s1") + run("s2") + S)
        s.x("A", run("s2") + S, row("A2") + ["Z:T"])
        s.sql("A", "COMMIT", ["C:COMMIT", "Z:I"])
        s.read("B", row("B1") + row("A1") + ["Z:I"])
        s.x("A", Q("BEGIN") + run("s2") + run("s1") + S + Q("COMMIT"),
            ["C:BEGIN", "Z:T"] + row("A2") + row("A1") + ["Z:T", "C:COMMIT", "Z:I"], ready=3)
    check(proxy, postgres, role, s)


def test_eviction_in_rotation(proxy, postgres, role):
    """max_prepared_statements=2 and five statements used in rotation (one at a time and
    pipelined), by A and by B with the same names: every Bind gets its own statement."""
    s = Script()
    names = ["s%d" % i for i in range(5)]
    for who in ("A", "B"):
        for i, nm in enumerate(names):
            s.x(who, run(nm, "SELECT '%s%d'" % (who, i)) + S,
                ["1"] + row("%s%d" % (who, i)) + ["Z:I"])
    for r in range(2):
        for i, nm in enumerate(names):
            for who in ("A", "B"):
                s.x(who, run(nm) + S, row("%s%d" % (who, i)) + ["Z:I"])
        s.x("A", b"".join(run(nm) for nm in names) + S,
            sum((row("A%d" % i) for i in range(5)), []) + ["Z:I"])
        s.x("B", b"".join(run(nm) + fe_describe("S", nm) for nm in reversed(names)) + S,
            sum((row("B%d" % i) + ["t:0", "T:?column?"] for i in reversed(range(5))), []) +
            ["Z:I"])
    check(proxy, postgres, role, s, max_prepared=2)


@pytest.mark.parametrize("command", ["DISCARD ALL", "DEALLOCATE ALL"])
def test_discard_all_clears_the_clients_statements(proxy, postgres, role, command):
    """DISCARD ALL / DEALLOCATE ALL from the client: its statements are gone (26000), the
    names are free again; B's statements are not B's to lose."""
    s = Script()
    s.x("B", P("s1", "SELECT 'B1'") + S, ["1", "Z:I"])
    s.x("A", P("s1", "SELECT 'A1'") + P("s2", "SELECT 'A2'") + S, ["1", "1", "Z:I"])
    s.sql("A", command, ["C:" + command, "Z:I"])
    s.x("A", run("s1") + S, [NOT_EXIST % "s1", "Z:I"])
    s.x("A", fe_describe("S", "s2") + S, [NOT_EXIST % "s2", "Z:I"])
    s.x("B", run("s1") + S, row("B1") + ["Z:I"])
    s.x("A", run("s1", "SELECT 'again'") + S, ["1"] + row("again") + ["Z:I"])
    s.x("A", run("s2", "SELECT 'A2'") + S, ["1"] + row("A2") + ["Z:I"])
    s.sql("A", "BEGIN", ["C:BEGIN", "Z:T"])
    s.sql("A", "DEALLOCATE ALL", ["C:DEALLOCATE ALL", "Z:T"])
    s.x("A", run("s2") + S, [NOT_EXIST % "s2", "Z:E"])
    s.sql("A", "ROLLBACK", ["C:ROLLBACK", "Z:I"])
    s.x("A", run("s1") + S, [NOT_EXIST % "s1", "Z:I"])  # DEALLOCATE is not transactional
    s.x("B", run("s1") + S, row("B1") + ["Z:I"])
    check(proxy, postgres, role, s)


# ---------------------------------------------------------------- known or suspected bugs


@pytest.mark.parametrize("variant", ["parse_sync_bind", "close_sync_parse"])
def test_b1_sync_then_more_in_one_write(proxy, postgres, role, variant):
    """B1: Parse(s1); Sync; Bind(s1); Execute; Sync in ONE write, outside a transaction: the
    second run's Bind waits for the first run's outcome; it must not hang."""
    s = Script()
    if variant == "parse_sync_bind":
        s.x("A", P("s1", "SELECT 1") + S + run("s1") + S, ["1", "Z:I"] + row("1") + ["Z:I"],
            ready=2)
    else:
        s.x("A", P("s1", "SELECT 1") + S, ["1", "Z:I"])
        s.x("A", fe_close("S", "s1") + S + run("s1", "SELECT 2") + S + run("s1") + S,
            ["3", "Z:I", "1"] + row("2") + ["Z:I"] + row("2") + ["Z:I"], ready=3)
    s.x("B", run("s1", "SELECT 'B'") + S, ["1"] + row("B") + ["Z:I"])
    s.x("A", run("s1") + S)
    check(proxy, postgres, role, s)


def flood(conn, data, timeout):
    """Send data in one sendall() while a thread counts the answers up to one
    ReadyForQuery: ({type: count}, problem text or None)."""
    result = {}

    def reader():
        try:
            result["counts"] = conn.count_until_ready(1, timeout)
        except Exception as e:  # noqa: BLE001 - reported by the caller
            result["error"] = "%s: %s" % (type(e).__name__, e)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    conn.sock.settimeout(timeout)
    try:
        conn.sock.sendall(data)
    except OSError as e:
        result.setdefault("error", "sendall: %r" % e)
    t.join(timeout + 2)
    conn.sock.settimeout(DEADLINE)
    if t.is_alive():
        result.setdefault("error", "the reader is still waiting after %.0fs" % timeout)
    return result.get("counts"), result.get("error")


def test_b2_parse_and_70000_closes_without_flush(proxy, postgres, role):
    """B2: Parse(s1) then 70000 Close('S', ...) (s1, then names it never had) and a Sync, no
    Flush, in one large write (sendall while a thread drains): PostgreSQL answers
    ParseComplete, 70000 CloseComplete and ReadyForQuery; pgfunnel must not deadlock."""
    n = 70000
    data = P("s1", "SELECT 1") + b"".join(
        fe_close("S", "s1" if i % 2 == 0 else "c%d" % i) for i in range(n)) + S
    want = {"1": 1, "3": n, "Z": 1}
    name, pw = role
    direct = pgwire.connect(postgres.host, postgres.port, name, "appdb", password=pw,
                            timeout=DEADLINE)
    try:
        counts, err = flood(direct, data, 10)
        assert err is None and counts == want, "the test is wrong: PostgreSQL gave %r %s" % (
            counts, err)
    finally:
        direct.close()
    pf = start_pf(proxy, postgres, role)
    conn = pgwire.connect(pf.host, pf.port, name, DB, password=pw, timeout=DEADLINE)
    try:
        counts, err = flood(conn, data, 10)
        assert err is None and counts == want, (
            "PostgreSQL answered %r; through pgfunnel: %r (%s)" % (want, counts, err))
        conn.send(run("s1") + S)
        assert toks(conn.read_until_ready(DEADLINE)) == [NOT_EXIST % "s1", "Z:I"]
    finally:
        conn.abort()
    assert pf.is_running(), pf.all_output()[-3000:]


def test_b3_synthesized_answers_among_large_rows(proxy, postgres, role):
    """B3: answers pgfunnel gives itself (ParseComplete for a statement the server has,
    CloseComplete) pipelined between 1 MB rows from the server, while the client reads
    nothing for a while: the client gets well-formed messages in PostgreSQL's order."""
    big = "SELECT repeat('x', 1048576) || '%s'"
    unit = (P("", big % "a") + B("") + E() +
            P("s2", "SELECT 'small'") +  # the server has it (s1): ParseComplete by pgfunnel
            run("s2") +
            P("", big % "b") + B("") + E() +
            fe_close("S", "s2") +  # CloseComplete by pgfunnel
            P("s3", "SELECT 'small'") + fe_close("S", "s3") +
            run("s1") + S)
    answer = (["1", "2", "D:x*a", "C:SELECT 1", "1"] + row("small") +
              ["1", "2", "D:x*b", "C:SELECT 1", "3", "1", "3"] + row("small") + ["Z:I"])
    big_a = norm("D:" + "x" * 1048576 + "a")
    big_b = norm("D:" + "x" * 1048576 + "b")
    answer = [big_a if t == "D:x*a" else big_b if t == "D:x*b" else t for t in answer]
    s = Script()
    s.x("A", P("s1", "SELECT 'small'") + S, ["1", "Z:I"])
    s.send("A", unit * 3)
    s.pause(0.5)
    s.read("A", answer * 3, ready=3)
    s.msgs("A", P("", big % "c") + B("") + E() + P("s2", "SELECT 'small'") +
           fe_close("S", "s2") + run("s1") + H, 9,
           ["1", "2", norm("D:" + "x" * 1048576 + "c"), "C:SELECT 1", "1", "3"] + row("small"))
    s.x("A", S, ["Z:I"])
    check(proxy, postgres, role, s)


def test_b4_other_clients_server_names_are_unreachable(proxy, postgres, role):
    """B4: A prepares statements; B, on the same server, names PGFUNNEL_1.. in Bind,
    Describe and SQL EXECUTE: B must get 26000 as on a backend of its own, never A's rows."""
    s = Script()
    s.x("A", run("s1", "SELECT 'A-secret-1'") + run("s2", "SELECT 'A-secret-2'") +
        run("s3", "SELECT 'A-secret-3'") + S,
        ["1"] + row("A-secret-1") + ["1"] + row("A-secret-2") + ["1"] + row("A-secret-3") +
        ["Z:I"])
    for n in (1, 2, 3):
        nm = "PGFUNNEL_%d" % n
        s.x("B", run(nm) + S, [NOT_EXIST % nm, "Z:I"])
        s.x("B", fe_describe("S", nm) + S, [NOT_EXIST % nm, "Z:I"])
        s.sql("B", 'EXECUTE "%s"' % nm, [NOT_EXIST % nm, "Z:I"])
    s.x("A", run("s1") + S, row("A-secret-1") + ["Z:I"])
    check(proxy, postgres, role, s)


@pytest.mark.parametrize("body", [
    "EXECUTE 'DEALLOCATE \"PGFUNNEL_1\"'",
    "EXECUTE 'DEALLOCATE \"PGFUNNEL_1\"'; EXECUTE 'PREPARE \"PGFUNNEL_1\" AS SELECT ''B-evil'''",
], ids=["deallocate_one", "replace"])
def test_b5_sql_deallocate_hidden_in_do(proxy, postgres, role, body):
    """B5: B runs DEALLOCATE (and PREPARE) through a DO block on the shared server, where
    pgfunnel cannot see it in the command tag; A's statement must still give A's result."""
    s = Script()
    s.x("A", run("s1", "SELECT 'A-result'") + S, ["1"] + row("A-result") + ["Z:I"])
    s.sql("B", "DO $$ BEGIN %s; EXCEPTION WHEN invalid_sql_statement_name THEN NULL; END $$" % body,
          ["C:DO", "Z:I"])
    s.x("A", run("s1") + S, row("A-result") + ["Z:I"])
    s.x("A", fe_describe("S", "s1") + run("s1") + S, ["t:0", "T:?column?"] + row("A-result") +
        ["Z:I"])
    check(proxy, postgres, role, s)


def answer(conn):
    """Tokens up to the next ReadyForQuery, without ParameterStatus and NoticeResponse."""
    return [t for t in _read_ready(conn, 1, DEADLINE)[0] if t[:1] not in ("S", "N")]


@pytest.mark.parametrize("body", [
    "EXECUTE 'DEALLOCATE ALL'",
    # the real server-side name, read where any client of the pool can read it
    "EXECUTE 'DEALLOCATE ' || quote_ident((SELECT name FROM pg_prepared_statements LIMIT 1))",
], ids=["deallocate_all", "deallocate_seen"])
def test_b5_statement_taken_away_behind_pgfunnel(proxy, postgres, role, body):
    """B5, what cannot be hidden: B's DO block deallocates the statements pgfunnel prepared on
    the shared server (no command tag tells). A's next Bind gets a clean 26000 naming A's own
    statement, never another's rows, and the server is not reused: the Bind after that (on a
    new server, the statement prepared again) gives A's result."""
    name, pw = role
    pf = start_pf(proxy, postgres, role)
    a = pgwire.connect(pf.host, pf.port, name, DB, password=pw, timeout=DEADLINE)
    b = pgwire.connect(pf.host, pf.port, name, DB, password=pw, timeout=DEADLINE)
    try:
        a.send(run("s1", "SELECT 'A-result'") + S)
        assert answer(a) == (["1"] + row("A-result") + ["Z:I"])
        b.send(Q("DO $$ BEGIN %s; END $$" % body))
        assert answer(b) == (["C:DO", "Z:I"])
        a.send(run("s1") + S)
        first = answer(a)
        assert first in ((row("A-result") + ["Z:I"]),
                         ([NOT_EXIST % "s1", "Z:I"])), first
        a.send(run("s1") + S)
        assert answer(a) == (row("A-result") + ["Z:I"])
    finally:
        a.close()
        b.close()
    assert pf.is_running(), pf.all_output()[-3000:]


def test_b6_reload_to_zero_keeps_clients_apart(proxy, postgres, role):
    """B6: A prepares with max_prepared_statements=200; RELOAD with 0; B (logged in after,
    untracked) and A share the pool of 1: neither reaches the other's statement."""
    name, pw = role
    pf = start_pf(proxy, postgres, role)
    s1 = Script()
    s1.x("A", run("s1", "SELECT 'A1'") + S, ["1"] + row("A1") + ["Z:I"])
    s2 = Script()
    s2.x("B", run("s1", "SELECT 'B1'") + S, ["1"] + row("B1") + ["Z:I"])
    s2.x("A", run("s1") + S, row("A1") + ["Z:I"])
    s2.x("B", run("s1") + S, row("B1") + ["Z:I"])
    s2.x("A", run("s2", "SELECT 'A2'") + S, ["1"] + row("A2") + ["Z:I"])
    s2.x("B", run("s2") + S, [NOT_EXIST % "s2", "Z:I"])
    s2.x("A", run("s1") + run("s2") + S, row("A1") + row("A2") + ["Z:I"])
    s2.x("B", run("PGFUNNEL_1") + S, [NOT_EXIST % "PGFUNNEL_1", "Z:I"])
    s2.sql("B", 'EXECUTE "PGFUNNEL_1"', [NOT_EXIST % "PGFUNNEL_1", "Z:I"])
    s2.x("B", run("PGFUNNEL_2") + S, [NOT_EXIST % "PGFUNNEL_2", "Z:I"])
    s2.x("A", run("s1") + S, row("A1") + ["Z:I"])

    # Reference: the same on PostgreSQL, A's connection kept across both parts.
    direct = direct_side(postgres, role)
    proxied = proxy_side(pf, role)
    ref = []
    try:
        play(direct, s1)
        ref += [play_step(direct, st) for st in s1.steps]
        direct.conns["B"] = direct.connect("B")
        ref += [play_step(direct, st) for st in s2.steps]
    finally:
        direct.close()
    for st, got in zip(s1.steps + s2.steps, ref):
        assert got == st["expect"], "the test is wrong: PostgreSQL gave %r for %s" % (
            got, step_label(0, st))
    try:
        play(proxied, s1)
        got = [play_step(proxied, st) for st in s1.steps]
        p = dict(pf.params)
        p["max_prepared_statements"] = 0
        pf.write_ini(p)
        pfhelpers.console(pf, "RELOAD", dbname="pgfunnel")
        proxied.conns["B"] = proxied.connect("B")
        for st in s2.steps:
            got.append(play_step(proxied, st))
            i = len(got) - 1
            assert got[i] == ref[i], (
                "pgfunnel differs from PostgreSQL after RELOAD (max_prepared_statements=0) at "
                "step %s\n  PostgreSQL: %r\n  pgfunnel:   %r" % (
                    step_label(i, st), ref[i], got[i]))
    finally:
        proxied.close()


@pytest.mark.parametrize("command,same_sql", [
    ("DISCARD ALL", False), ("DISCARD ALL", True), ("DEALLOCATE ALL", False)])
def test_b7_discard_then_parse_in_the_same_write(proxy, postgres, role, command, same_sql):
    """B7: Query(DISCARD ALL) and, in the SAME write, Parse(s1)/Bind/Execute/Sync of a name
    the client had prepared before: on PostgreSQL the DISCARD frees s1 and the new Parse
    defines it again."""
    new = "SELECT 'one'" if same_sql else "SELECT 'two'"
    val = "one" if same_sql else "two"
    s = Script()
    s.x("A", run("s1", "SELECT 'one'") + S, ["1"] + row("one") + ["Z:I"])
    s.x("A", Q(command) + run("s1", new) + S,
        ["C:" + command, "Z:I", "1"] + row(val) + ["Z:I"], ready=2)
    s.x("A", run("s1") + S, row(val) + ["Z:I"])
    s.x("B", run("s1", "SELECT 'B'") + S, ["1"] + row("B") + ["Z:I"])
    s.x("A", run("s1") + fe_describe("S", "s1") + S, row(val) + ["t:0", "T:?column?", "Z:I"])
    s.x("A", P("s1", "SELECT 'three'") + S, [EXISTS % "s1", "Z:I"])
    check(proxy, postgres, role, s)


@pytest.mark.parametrize("variant", ["parse_known_sql", "parse_known_name", "bind_evicted"])
def test_b8_in_a_failed_transaction(proxy, postgres, role, variant):
    """B8: in a failed transaction block PostgreSQL refuses Parse and Bind with 25P02; a
    Parse of SQL the server already has (answered by pgfunnel itself), of a name the
    client has, or a Bind of an evicted statement (prepared again first) must too."""
    s = Script()
    max_prepared = 200
    s.x("A", P("s1", "SELECT 1") + S, ["1", "Z:I"])
    if variant == "bind_evicted":
        max_prepared = 1
        s.x("A", run("s2", "SELECT 2") + S, ["1"] + row("2") + ["Z:I"])
    s.sql("A", "BEGIN", ["C:BEGIN", "Z:T"])
    s.sql("A", "SELECT 1/0", ["E:22012:division by zero", "Z:E"])
    aborted = ("E:25P02:current transaction is aborted, commands ignored until end of "
               "transaction block")
    if variant == "parse_known_sql":
        s.x("A", P("s9", "SELECT 1") + S, [aborted, "Z:E"])
    elif variant == "parse_known_name":
        s.x("A", P("s1", "SELECT 1") + S, [aborted, "Z:E"])
    else:
        s.x("A", run("s1") + S, [aborted, "Z:E"])
    s.sql("A", "ROLLBACK", ["C:ROLLBACK", "Z:I"])
    s.x("A", run("s9") + S, [NOT_EXIST % "s9", "Z:I"])
    s.x("A", run("s1") + S, row("1") + ["Z:I"])
    check(proxy, postgres, role, s, max_prepared=max_prepared)


def test_b9_error_texts_name_the_clients_statement(proxy, postgres, role):
    """B9: PostgreSQL's error texts that name a statement must name the client's, never
    PGFUNNEL_n."""
    msg = "E:08P01:bind message supplies 1 parameters, but prepared statement \"%s\" requires 2"
    s = Script()
    s.x("A", P("s1", "SELECT $1::int + $2::int") + S, ["1", "Z:I"])
    s.x("A", B("s1", ["1"]) + E() + S, [msg % "s1", "Z:I"])
    s.x("A", P("s2", "SELECT $1::int * $2::int") + B("s2", ["7"]) + E() + S,
        ["1", msg % "s2", "Z:I"])
    s.x("B", P("s1", "SELECT $1::int + $2::int") + B("s1", ["1"]) + S, ["1", msg % "s1", "Z:I"])
    s.x("B", P("other", "SELECT $1::int + $2::int") + B("other", ["1"]) + S,
        ["1", msg % "other", "Z:I"])
    check(proxy, postgres, role, s)


def test_b10_pipeline_beyond_max_prepared(proxy, postgres, role):
    """B10: max_prepared_statements=3 and one pipeline of 10 distinct statements: after
    the next transaction the server keeps at most 3 (SHOW SERVERS prepared_statements, and
    what the server itself has in pg_prepared_statements)."""
    n = 10
    s = Script()
    s.x("A", b"".join(run("s%d" % i, "SELECT 'v%d'" % i) for i in range(n)) + S,
        sum((["1"] + row("v%d" % i) for i in range(n)), []) + ["Z:I"])
    s.sql("A", "SELECT 'next'", ["T:?column?", "D:next", "C:SELECT 1", "Z:I"])
    s.x("A", run("s4") + run("s0") + S, row("v4") + row("v0") + ["Z:I"])
    pf = check(proxy, postgres, role, s, max_prepared=3)
    rows = show_servers(pf)
    counts = [int(r["prepared_statements"]) for r in rows]
    name, pw = role
    with pgwire.connect(pf.host, pf.port, name, DB, password=pw, timeout=DEADLINE) as c:
        c.send(Q("SELECT count(*) FROM pg_prepared_statements"))
        real = int(c.read_answer(DEADLINE)[2][0][0])
    assert counts and max(counts) <= 3 and real <= 3, (
        "with max_prepared_statements=3: SHOW SERVERS prepared_statements %r, the server's "
        "pg_prepared_statements has %d" % (counts, real))


def test_b11_names_longer_than_63_bytes(proxy, postgres, role):
    """B11: PostgreSQL keys protocol-level statement names on their first 63 bytes
    (NAMEDATALEN-1) but names the statement as the message did in its errors: two names
    sharing 63 bytes are the same statement."""
    long1 = "a" * 63 + "X" * 10
    long2 = "a" * 63 + "Y" * 10
    s = Script()
    s.x("A", P(long1, "SELECT 1") + S, ["1", "Z:I"])
    s.x("A", run(long1) + S, row("1") + ["Z:I"])
    s.x("A", run(long2) + S, row("1") + ["Z:I"])
    s.x("A", run("a" * 63) + S, row("1") + ["Z:I"])
    s.x("A", P(long2, "SELECT 2") + S, [EXISTS % long2, "Z:I"])
    s.x("B", run(long2, "SELECT 'B'") + S, ["1"] + row("B") + ["Z:I"])
    s.x("A", fe_close("S", long2) + S, ["3", "Z:I"])
    s.x("A", run(long1) + S, [NOT_EXIST % long1, "Z:I"])
    s.x("A", run(long2, "SELECT 2") + run(long1) + S, ["1"] + row("2") * 2 + ["Z:I"])
    s.x("B", run("a" * 63 + "Z") + S, row("B") + ["Z:I"])
    check(proxy, postgres, role, s)


def test_b12_server_killed_mid_pipeline(proxy, postgres, role):
    """B12: A's server is terminated (pg_terminate_backend) in the middle of A's pipeline
    (after a Flush, while a later statement runs, more queued behind it): A gets the answers
    PostgreSQL sent, then an error and a closed connection (or a clean error and a
    connection that works like a new session), never an answer to something later; B,
    waiting on the same pool of 1, gets its own answers from another server."""
    name, pw = role
    sleeper = "SELECT pg_sleep(3) /* b12 */"
    pipeline = (run("s1", "SELECT 1") + H + run("s2", sleeper) + run("s1") +
                run("s3", "SELECT 3") + S)
    before = ["1"] + row("1")

    def kill_sleeper():
        pfhelpers.wait_query_running(postgres, sleeper, user=name)
        with postgres.connect(autocommit=True) as su:
            n = su.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                           "WHERE usename = %s AND query = %s", (name, sleeper)).fetchone()[0]
        assert n == 1, n

    def after_kill(conn):
        """Tokens until the connection closes (or DEADLINE passes: '<open>')."""
        out = []
        deadline = time.monotonic() + DEADLINE
        try:
            while True:
                out.append(conn.read_message(max(0.0, deadline - time.monotonic())))
        except pgwire.Timeout:
            return toks(out) + ["<open>"]
        except pgwire.ProtocolError:
            return toks(out) + ["<closed>"]

    # PostgreSQL: the answers up to the Flush; then, flushed with FATAL 57P01, s2's
    # ParseComplete and BindComplete; closed.
    a = pgwire.connect(postgres.host, postgres.port, name, "appdb", password=pw,
                       timeout=DEADLINE)
    try:
        a.send(pipeline)
        assert toks(a.read_messages(4, DEADLINE)) == before
        kill_sleeper()
        ref = after_kill(a)
    finally:
        a.abort()
    assert ref == ["1", "2", "E:57P01:terminating connection due to administrator command",
                   "<closed>"], ref

    pf = start_pf(proxy, postgres, role)
    a = pgwire.connect(pf.host, pf.port, name, DB, password=pw, timeout=DEADLINE)
    b = pgwire.connect(pf.host, pf.port, name, DB, password=pw, timeout=DEADLINE)
    try:
        a.send(pipeline)
        assert toks(a.read_messages(4, DEADLINE)) == before
        pfhelpers.wait_query_running(postgres, sleeper, user=name)
        b.send(run("s1", "SELECT 'B'") + S)
        kill_sleeper()
        got = after_kill(a)
        first_error = next((i for i, t in enumerate(got) if t.startswith("E:")), len(got))
        assert got[:first_error] == ref[:2] and first_error < len(got) and all(
            t.startswith("E:") or t in ("Z:I", "Z:E", "<closed>", "<open>")
            for t in got[first_error:]), (
            "after its server was terminated, A got %r (PostgreSQL: %r)" % (got, ref))
        if got[-1] == "<open>":
            # Kept open with a clean error: it must work as a fresh session would.
            a.send(run("s1") + S)
            assert toks(a.read_until_ready(DEADLINE)) in (
                [NOT_EXIST % "s1", "Z:I"], row("1") + ["Z:I"])
            a.send(run("s4", "SELECT 4") + S)
            assert toks(a.read_until_ready(DEADLINE)) == ["1"] + row("4") + ["Z:I"]
        assert toks(b.read_until_ready(DEADLINE)) == ["1"] + row("B") + ["Z:I"]
        b.send(run("s3") + S)
        assert toks(b.read_until_ready(DEADLINE)) == [NOT_EXIST % "s3", "Z:I"]
        b.send(run("s1") + S)
        assert toks(b.read_until_ready(DEADLINE)) == row("B") + ["Z:I"]
    finally:
        a.abort()
        b.abort()
    assert pf.is_running(), pf.all_output()[-3000:]
