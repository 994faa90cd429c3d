"""Red-team round 2 on protocol-level prepared statements (wip-red2): attacks on the round-1
fixes (commit f51eca6): splices with buffers of their own (conn.c pf_conn_replace_head /
flush_forward / free_retired), the named-Parse-after-Sync wait and the DISCARD/DEALLOCATE
barrier (client.c may_forget_statements, server.c pf_server_prep_must_wait, prep_wait in
ready_for_query and on DRAINED), injected messages riding in the replacement (apply_plan /
build_injected), error rewriting and statement mode.

Tests named test_bug_* expose a real pgfunnel bug and assert the correct (PostgreSQL) behaviour:
they fail until it is fixed. The others are regressions for attacks that held up.
Findings (see each docstring):
  test_bug_barrier_missed[...]        client.c may_forget_statements / client_on_packet: an
      extended-protocol DISCARD ALL / DEALLOCATE ALL that does not *start* with the keyword
      (a comment, a form feed) or that runs as a *named* statement sets no barrier: a named
      Bind in the same write is renamed before the DISCARD is answered (26000 names
      pgfunnel's PGFUNNEL_ name to the client, the server is retired).
Held up: lowercase/whitespace/split unnamed DISCARD Parses, Flush-only and Sync-less barriers,
COPY behind a barrier, 1000 x [named Parse Bind Execute Sync] in one write (read concurrently
or at the end), statement mode, a waiting client vs pg_terminate_backend/PAUSE/RECONNECT/KILL/
RELOAD, 200-300 KB injected Parses in rotation behind 24 MB of rows or a pg_sleep with a slow
or vanishing client.
Flake (test_zz_attack_prepared.py::test_reload_max_prepared_statements_under_load, ~3 in 45
runs under load): a client whose statements are all prepared gets 26000 'prepared statement
"s3" does not exist' for B(s2)E B(nn)E B(s3)E S (error rewritten, so pgfunnel mapped the
server-side name: its registry believed the server held it; seed 31), or 42P05 'already
exists' for a Parse it believed absent (seed 2): pgfunnel's per-server registry and the
server disagree after RELOADs of max_prepared_statements (1/3/200/0) mid-pipeline. Not
reproduced deterministically; see the report.
"""

import threading
import time

import pytest

import pfhelpers
import pgwire
from pgwire import fe_describe, fe_close
from test_prepared_protocol import Script, check, row, run, toks, NOT_EXIST, EXISTS, DB
from test_robust_clients import finish
from test_zz_attack_prepared import (P, B, E, Q, S, H, start, connect, answer, settled, alive,
                                     server_rows, read_all_answers, BIG_OUTPUT,
                                     DEADLINE, CDATA, CDONE)


@pytest.fixture(scope="module")
def role(postgres):
    return pfhelpers.new_role(postgres, "apr2")


@pytest.fixture(scope="module")
def copy_table(postgres):
    with postgres.connect(dbname="appdb", autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS atkp2_copy (x text)")
        conn.execute("GRANT ALL ON atkp2_copy TO PUBLIC")
    return "atkp2_copy"


def direct(postgres, role):
    return pgwire.connect(postgres.host, postgres.port, role[0], "appdb", password=role[1],
                          timeout=DEADLINE)


# ---------------------------------------------------------------- the DISCARD barrier


BARRIER_MISSED = {
    # an unnamed DISCARD ALL / DEALLOCATE ALL that PostgreSQL runs, not starting with the word
    "comment_first": "/* x */ DISCARD ALL",
    "line_comment_first": "-- x\nDEALLOCATE ALL",
    "form_feed_first": "\fDISCARD ALL",
}

BARRIER_HELD = {
    "lowercase": "discard all",
    "whitespace_first": " \t\r\n deallocate   all",
    "deallocate_prepare_all": "DEALLOCATE PREPARE ALL",
}


def discard_script(text, named=False):
    """A holds s1; then, in one write, text (unnamed, or as named statement d) runs with
    Sync, and a named Bind of s1 follows: PostgreSQL says s1 does not exist."""
    tag = "DEALLOCATE ALL" if "ealloc" in text.lower() else "DISCARD ALL"
    s = Script()
    s.x("A", run("s1", "SELECT 'old'") + S, ["1"] + row("old") + ["Z:I"])
    if named:
        s.x("A", P("d", text) + S, ["1", "Z:I"])
        s.x("A", B("d") + E() + S + run("s1") + S,
            ["2", "C:" + tag, "Z:I", NOT_EXIST % "s1", "Z:I"], ready=2)
    else:
        s.x("A", P("", text) + B("") + E() + S + run("s1") + S,
            ["1", "2", "C:" + tag, "Z:I", NOT_EXIST % "s1", "Z:I"], ready=2)
    s.x("A", run("s1", "SELECT 'new'") + S, ["1"] + row("new") + ["Z:I"])
    s.x("B", run("s1", "SELECT 'B'") + S, ["1"] + row("B") + ["Z:I"])
    s.x("A", run("s1") + S, row("new") + ["Z:I"])
    return s


@pytest.mark.parametrize("case", sorted(BARRIER_MISSED) + ["named_statement"])
def test_bug_barrier_missed(proxy, postgres, role, case):
    """BUG (client.c client_on_packet / may_forget_statements): the barrier that makes named
    messages wait behind an extended-protocol DISCARD ALL / DEALLOCATE ALL is set only for an
    *unnamed* Parse whose text *starts* (after spaces, tabs, CR, LF) with DISCARD or
    DEALLOCATE. PostgreSQL also runs it after a comment or a form feed, and as a named
    statement (Parse d 'DISCARD ALL' once; later Bind d + Execute). The Bind of s1 in the same
    write is then renamed before the DISCARD is answered: the client gets 26000 quoting
    pgfunnel's server-side name PGFUNNEL_<hex>_<n> instead of "s1" (its map was cleared by
    then, so the error is not rewritten).
    Correct (PostgreSQL): 26000 'prepared statement "s1" does not exist'."""
    text = "DISCARD ALL" if case == "named_statement" else BARRIER_MISSED[case]
    pf = check(proxy, postgres, role, discard_script(text, named=case == "named_statement"))
    finish(pf)


@pytest.mark.parametrize("case", sorted(BARRIER_HELD))
def test_barrier_spellings(proxy, postgres, role, case):
    """Holds: lowercase, leading whitespace, DEALLOCATE PREPARE ALL: like PostgreSQL."""
    pf = check(proxy, postgres, role, discard_script(BARRIER_HELD[case]))
    finish(pf)


@pytest.mark.parametrize("cut", [1, 5, 6, 9, 12])
def test_barrier_unnamed_parse_split(proxy, postgres, role, cut):
    """Holds: the unnamed Parse of DISCARD ALL arrives cut after `cut` bytes (type byte,
    header, the empty name, 'DIS', 'DISCARD'), the rest (Bind, Execute, Sync, a named Bind
    of s1, Sync) in a second write: like PostgreSQL."""
    data = P("", "DISCARD ALL") + B("") + E() + S + run("s1") + S
    want = ["1", "2", "C:DISCARD ALL", "Z:I", NOT_EXIST % "s1", "Z:I"]
    pf = start(proxy, postgres, role)
    for conn in (direct(postgres, role), connect(pf, role)):
        conn.send(run("s1", "SELECT 'old'") + S)
        assert answer(conn) == ["1"] + row("old") + ["Z:I"]
        conn.send(data[:cut])
        time.sleep(0.05)  # a read boundary (not a wait for an event)
        conn.send(data[cut:])
        assert answer(conn, 2) == want
        conn.close()
    alive(pf)
    settled(pf)
    finish(pf)


def test_barrier_flush_only_and_no_sync(proxy, postgres, role):
    """Holds: DISCARD ALL (unnamed) then named messages with only Flushes: the answers come
    without a Sync; then with neither Flush nor Sync (nothing is owed until the client
    sends Sync, which must not hang); lowercase with leading whitespace: like PostgreSQL."""
    s = Script()
    s.x("A", run("s1", "SELECT 'A1'") + S, ["1"] + row("A1") + ["Z:I"])
    s.msgs("A", P("", "DISCARD ALL") + B("") + E() + H + run("s1") + H, 4,
           ["1", "2", "C:DISCARD ALL", NOT_EXIST % "s1"])
    s.x("A", S, ["Z:I"])
    s.x("A", run("s2", "SELECT 'A2'") + S, ["1"] + row("A2") + ["Z:I"])
    s.send("A", P("", "  \n deallocate all") + B("") + E() + run("s2") +
           run("s3", "SELECT 'A3'"))
    s.pause(0.3)
    s.x("A", S, ["1", "2", "C:DEALLOCATE ALL", NOT_EXIST % "s2", "Z:I"])
    s.msgs("A", P("", "DISCARD ALL") + H + run("s3", "SELECT 'A3'") + H, 5,
           ["1", "1"] + row("A3"))
    s.x("A", S, ["Z:I"])
    s.x("B", run("s2", "SELECT 'B2'") + S, ["1"] + row("B2") + ["Z:I"])
    s.x("A", run("s3") + S, row("A3") + ["Z:I"])
    pf = check(proxy, postgres, role, s)
    settled(pf)
    finish(pf)


def test_barrier_with_copy(proxy, postgres, role, copy_table):
    """Holds: DEALLOCATE ALL then a COPY FROM STDIN (extended protocol) then a named Bind in
    one write; and a simple-protocol COPY after an unnamed DISCARD ALL without Sync: like
    PostgreSQL."""
    t = copy_table
    s = Script()
    s.x("A", run("s1", "SELECT 'A1'") + S, ["1"] + row("A1") + ["Z:I"])
    s.x("A", P("", "DEALLOCATE ALL") + B("") + E() + P("", "COPY %s FROM STDIN" % t) +
        B("") + E() + CDATA("x\n") + CDONE + run("s1") + S,
        ["1", "2", "C:DEALLOCATE ALL", "1", "2", "G", "C:COPY 1", NOT_EXIST % "s1", "Z:I"])
    s.x("A", run("s1", "SELECT 'A1b'") + S, ["1"] + row("A1b") + ["Z:I"])
    s.x("A", P("", "DISCARD ALL") + B("") + E() + S + Q("COPY %s FROM STDIN" % t) +
        CDATA("y\n") + CDONE + run("s1") + S,
        ["1", "2", "C:DISCARD ALL", "Z:I", "G", "C:COPY 1", "Z:I", NOT_EXIST % "s1", "Z:I"],
        ready=3)
    s.x("B", run("s1", "SELECT 'B'") + S, ["1"] + row("B") + ["Z:I"])
    pf = check(proxy, postgres, role, s)
    settled(pf)
    finish(pf)


# ---------------------------------------------------------------- named Parse after Syncs


def many_sync_pipeline(n):
    data, vals = b"", []
    for i in range(n):
        if i % 97 == 13:
            data += P("m%d" % i, "SELECT 'v%d'" % i) + B("nope%d" % i) + E() + S
            vals.append('E:prepared statement "nope%d" does not exist' % i)
        else:
            data += P("m%d" % i, "SELECT 'v%d'" % (i % 300)) + B("m%d" % i) + E() + S
            vals.append("v%d" % (i % 300))
    return data, vals


@pytest.mark.parametrize("reading", ["concurrently", "at_the_end"])
def test_named_parse_after_1000_syncs(proxy, postgres, role, reading):
    """Holds: 1000 x [Parse(named, new name) Bind Execute Sync] in one write (each named
    Parse waits until the Syncs before it are answered: 1000 round trips), some failing
    (unknown Bind), max_prepared_statements=50 (evictions), read concurrently or only after
    the whole write went out: the same answers as PostgreSQL, no deadlock; settles."""
    n = 1000
    data, want_vals = many_sync_pipeline(n)
    pf = start(proxy, postgres, role, max_prepared=50)
    results = []
    for conn in (direct(postgres, role), connect(pf, role)):
        conn.sock.settimeout(30)
        t0 = time.monotonic()
        if reading == "concurrently":
            th = threading.Thread(target=conn.sock.sendall, args=(data,), daemon=True)
            th.start()
            counts, vals = read_all_answers(conn, n, 30)
            th.join(10)
        else:
            conn.sock.sendall(data)  # ~45 KB: fits the socket buffers
            counts, vals = read_all_answers(conn, n, 30)
        results.append((counts, vals, time.monotonic() - t0))
        conn.close()
    assert results[1][:2] == results[0][:2]
    assert results[0][1] == want_vals
    alive(pf)
    settled(pf)
    finish(pf)


def test_statement_mode_named_pipelines(proxy, postgres, role):
    """Holds: pool_mode=statement, two clients on one server, named Parse/Bind/Execute/Sync
    pipelines several per write (a named Parse waits for the Sync before it: the server is
    not released at that ReadyForQuery), Describe, Close, duplicate Parse: like PostgreSQL."""
    s = Script()
    s.x("A", run("s1", "SELECT 'A1'") + S + run("s2", "SELECT 'A2'") + S + run("s1") + S,
        ["1"] + row("A1") + ["Z:I", "1"] + row("A2") + ["Z:I"] + row("A1") + ["Z:I"], ready=3)
    s.x("B", run("s1", "SELECT 'B1'") + S + P("s1", "SELECT 'x'") + S + run("s1") + S,
        ["1"] + row("B1") + ["Z:I", EXISTS % "s1", "Z:I"] + row("B1") + ["Z:I"], ready=3)
    s.x("A", fe_describe("S", "s2") + fe_close("S", "s2") + S + run("s2", "SELECT 'A2b'") + S +
        run("s1") + S,
        ["t:0", "T:?column?", "3", "Z:I", "1"] + row("A2b") + ["Z:I"] + row("A1") + ["Z:I"],
        ready=3)
    s.x("B", run("s2") + S + run("s2", "SELECT 'B2'") + S,
        [NOT_EXIST % "s2", "Z:I", "1"] + row("B2") + ["Z:I"], ready=2)
    pf = check(proxy, postgres, role, s, pool_mode="statement")
    settled(pf)
    finish(pf)


# ---------------------------------------------------------------- a waiting client and the world


SLEEP = "SELECT pg_sleep(1.5) /* atkp2 */"

WAIT_EVENTS = ["terminate", "pause", "reconnect", "kill", "reload_0", "reload_1"]


@pytest.mark.parametrize("event", WAIT_EVENTS)
def test_waiting_client_and_console(proxy, postgres, role, event):
    """Holds: A's named Parse waits behind its simple Query (a pg_sleep) (prep_wait); while it
    waits its backend is terminated, or the console PAUSEs (RESUME later), RECONNECTs, KILLs
    the database (RESUME after), or RELOADs max_prepared_statements to 0 or 1: A gets every answer
    (pause/reconnect/reload), or an error and/or a close (terminate/kill), never a hang or
    another's answer; B (same name, other SQL) then gets exactly its answers; settles."""
    pf = start(proxy, postgres, role, max_prepared=200)
    a = connect(pf, role)
    a.send(run("s0", "SELECT 'A0'") + S)
    assert answer(a) == ["1"] + row("A0") + ["Z:I"]
    a.send(Q(SLEEP) + run("s1", "SELECT 'A1'") + run("s0") + S + run("s1") + S)
    pfhelpers.wait_query_running(postgres, SLEEP, user=role[0])
    if event == "terminate":
        with postgres.connect(autocommit=True) as su:
            su.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                       "query = %s", (SLEEP,))
    elif event == "pause":
        th = threading.Thread(target=pfhelpers.console, args=(pf, "PAUSE %s" % DB),
                              daemon=True)
        th.start()
    elif event == "reconnect":
        pfhelpers.console(pf, "RECONNECT %s" % DB)
    elif event == "kill":
        pfhelpers.console(pf, "KILL %s" % DB)
    else:
        params = dict(pf.params)
        params["max_prepared_statements"] = int(event[-1])
        pf.write_ini(params)
        pfhelpers.console(pf, "RELOAD")
    got = []
    try:
        while len([1 for k, _ in got if k == "Z"]) < 3:
            got.append(a.read_message(DEADLINE))
    except pgwire.Timeout:
        got.append(("<open>", b""))
    except pgwire.ProtocolError:
        got.append(("<closed>", b""))
    t = toks(got)
    if event == "pause":
        th.join(DEADLINE)
        assert not th.is_alive(), "PAUSE did not complete"
        pfhelpers.console(pf, "RESUME %s" % DB)
    if event == "kill":
        pfhelpers.console(pf, "RESUME %s" % DB)  # KILL leaves the database paused
    full = (["T:pg_sleep", "D:", "C:SELECT 1", "Z:I", "1"] + row("A1") + row("A0") +
            ["Z:I"] + row("A1") + ["Z:I"])
    if event in ("terminate", "kill"):
        assert "<open>" not in t, t
        assert any(x.startswith("E:") for x in t), t
        assert "D:A1" not in t and "D:A0" not in t, t
    else:
        assert t == full, t
    a.abort()
    b = connect(pf, role)
    b.send(run("s1", "SELECT 'B1'") + run("s0", "SELECT 'B0'") + S)
    assert answer(b) == ["1"] + row("B1") + ["1"] + row("B0") + ["Z:I"]
    b.close()
    alive(pf)
    settled(pf)
    finish(pf)


# ---------------------------------------------------------------- big splices, slow peers


def big_sql(tag, size):
    return "SELECT '%s' /*%s*/" % (tag, "b" * size)


NAMES63 = ["%s%d" % ("n" * 62, i) for i in range(4)]


def rotation_pipeline(n, head):
    """head, then n x [Bind(names63[i%4]) Describe(S) Execute] and a Sync: more than 8
    renamed heads and 512 bytes of them per read, each Bind needing (max 1) an injected Close
    and a big Parse."""
    data, vals = head, []
    for i in range(n):
        nm = NAMES63[i % 4]
        data += B(nm, portal="p%d" % i) + fe_describe("S", nm) + E("p%d" % i)
        vals.append("big%d" % (i % 4))
    return data + S, vals


def prepare_big(conn, size):
    conn.send(b"".join(P(nm, big_sql("big%d" % i, size)) for i, nm in enumerate(NAMES63)) + S)
    assert answer(conn, timeout=30) == ["1"] * 4 + ["Z:I"]


def test_big_injects_rotation_slow_reader(proxy, postgres, role):
    """Holds: max_prepared_statements=1, four 63-byte names for 200 KB statements; a pipeline
    of 40 renamed Bind/Describe/Execute (each Bind injects a Close and a 200 KB Parse: big
    splices with buffers of their own, more than 8 per read, > 512 bytes of heads) behind
    24 MB of rows; the client reads slowly (small reads with pauses): every answer right, in
    order; pgfunnel holds at most a few MB for it; settles."""
    pf = start(proxy, postgres, role, max_prepared=1, tcp_socket_buffer=32768)
    a = connect(pf, role)
    a.sock.settimeout(30)
    prepare_big(a, 200000)
    data, want = rotation_pipeline(40, P("", BIG_OUTPUT) + B("") + E())
    sender = threading.Thread(target=a.sock.sendall, args=(data,), daemon=True)
    sender.start()
    time.sleep(0.5)  # slow reader: nothing read for a while
    deadline = time.monotonic() + 60
    counts, vals, z = {}, [], 0
    k = 0
    while z < 1:
        kind, payload = a.read_message(max(0.1, deadline - time.monotonic()))
        counts[kind] = counts.get(kind, 0) + 1
        k += 1
        if k % 500 == 0:
            time.sleep(0.01)
        if kind == "Z":
            z += 1
        elif kind == "D":
            v = pgwire.decode_data_row(payload)[0]
            if not v.startswith("xxxx"):
                vals.append(v)
    sender.join(10)
    assert vals == want, vals[:6]
    assert counts.get("D") == 3000 + 40 and counts.get("t") == 40, counts
    a.close()
    alive(pf)
    settled(pf)
    finish(pf)


@pytest.mark.parametrize("when", ["server_sleeping", "client_not_reading"])
def test_client_vanishes_during_big_splice_write(proxy, postgres, role, when):
    """Holds: after RECONNECT the server has none of A's four 300 KB statements; A's pipeline
    binds them in rotation (max_prepared_statements=1: injected Closes and 300 KB Parses as
    splices with buffers of their own) while the server does not read (pg_sleep first) or
    while A does not read (24 MB of rows first); A vanishes while those writes are in
    flight. pgfunnel stays up, no sanitizer report; the server is not handed on half-fed:
    B with the same names for other SQL gets exactly its answers; settles."""
    pf = start(proxy, postgres, role, max_prepared=1, tcp_socket_buffer=32768)
    a = connect(pf, role)
    a.sock.settimeout(30)
    prepare_big(a, 300000)
    pfhelpers.console(pf, "RECONNECT %s" % DB)
    pfhelpers.wait_until(lambda: not server_rows(pf), DEADLINE, "the old server is closed")
    head = (P("", "SELECT pg_sleep(1) /* atkp2 big */") if when == "server_sleeping"
            else P("", BIG_OUTPUT)) + B("") + E()
    data, _ = rotation_pipeline(24, head)
    sender = threading.Thread(target=lambda: (a.sock.sendall(data)), daemon=True)
    sender.start()
    time.sleep(0.6)
    a.abort()
    sender.join(10)
    alive(pf)
    b = connect(pf, role)
    b.sock.settimeout(30)
    b.send(b"".join(run(nm, "SELECT 'B%d'" % i) for i, nm in enumerate(NAMES63)) + S)
    assert answer(b, timeout=30) == sum((["1"] + row("B%d" % i) for i in range(4)), []) + ["Z:I"]
    b.close()
    alive(pf)
    settled(pf, 30)
    finish(pf)
