"""Red-team attacks on protocol-level prepared statements in transaction mode
(max_prepared_statements; wip-red).

Targets: client.c prepared_packet/apply_plan/send_injected/queue_full, server.c
prepared_error/put_client_names/pf_server_give_synth/note_command/ready_for_query and the
drain handling, prepared.c, reqq.c, and conn.c pf_conn_replace_head + flush_forward/
forward_bufs (renamed heads kept as "splices" in the forward region, one writev).

Every value a client asks for carries the client's id, so an answer that reaches the wrong
client is detectable. Tests named test_bug_* expose a real pgfunnel bug and assert the correct
behaviour (they fail until it is fixed); every other test is a regression for an attack that
held up. Bugs found (see each docstring):
  test_bug_slow_reader_injects_while_server_write_pending   conn.c pf_conn_replace_head
      assert(!fwd_pending) after send_injected()'s flush went pending: SIGABRT
  test_bug_injected_parse_over_256k_deadlocks_server        conn.c out_blocked on a server
      conn stops reading that server while our own output to it waits: deadlock
  test_bug_extended_discard_all_then_named_in_same_write    prepared_packet decides named
      messages before an extended-protocol DISCARD/DEALLOCATE ALL is answered
  test_bug_parse_known_sql_decided_in_stale_failed_state     `aborted` from a stale
  test_bug_parse_known_sql_synthesized_although_transaction_fails_first   tx_status
  test_bug_client_waiting_for_outcome_hangs_on_broken_queue  prep_wait never resumed once
      the request queue is broken (no tags resolve): client hangs, server held
  test_bug_error_rewrite_is_quadratic                        put_client_names x
      pf_prepared_client_name_of (linear walk of up to 65536 names per quoted name)
  test_bug_statement_name_not_valid_utf8                     names never checked (low)
Knobs for longer random runs: ATK_PREP_SECONDS (default 3), ATK_PREP_SEED.
"""

import os
import random
import re
import struct
import threading
import time

import pytest

import pfhelpers
import pgwire
from pgwire import (fe_bind, fe_close, fe_describe, fe_execute, fe_flush, fe_parse, fe_query,
                    fe_sync, data_values)
from test_prepared_protocol import (Script, check, row, run, toks, NOT_EXIST, EXISTS, DB, S, H, P,
                                    B, E, Q)
from test_robust_clients import finish

DEADLINE = 10.0
# The random multi-client tests: seconds each and a seed offset (longer runs: raise them).
SECONDS = float(os.environ.get("ATK_PREP_SECONDS", "3"))
SEED = int(os.environ.get("ATK_PREP_SEED", "0"))


@pytest.fixture(scope="module")
def role(postgres):
    return pfhelpers.new_role(postgres, "apr")


def start(proxy, postgres, role, max_prepared=200, pool_size=1, **params):
    p = {"pool_mode": "transaction", "max_prepared_statements": max_prepared,
         "query_wait_timeout": 30}
    p.update(params)
    return proxy(databases={DB: postgres.db_entry("appdb", pool_size=pool_size)},
                 params=p, userlist={role[0]: role[1]})


def connect(pf, role, timeout=DEADLINE):
    return pgwire.connect(pf.host, pf.port, role[0], DB, password=role[1], timeout=timeout)


def answer(conn, ready=1, timeout=DEADLINE):
    """Tokens (no ParameterStatus/Notice) up to the ready-th ReadyForQuery."""
    return toks(conn.read_until_ready(timeout, ready))


def pool_row(pf):
    cols, rows = pfhelpers.console(pf, "SHOW POOLS")
    for r in pfhelpers.rows_as_dicts(cols, rows):
        if r["database"] == DB:
            return r
    return None


def server_rows(pf):
    cols, rows = pfhelpers.console(pf, "SHOW SERVERS")
    return [r for r in pfhelpers.rows_as_dicts(cols, rows) if r["database"] == DB]


def dead_or(pf, pred):
    """For wait_for: true once pgfunnel died or pred() holds (console errors while it dies
    count as died)."""
    def check():
        if not pf.is_running():
            return True
        try:
            return pred()
        except Exception:  # noqa: BLE001 - the console of a dying pgfunnel
            return not pf.is_running()
    return check


def settled(pf, timeout=DEADLINE):
    """Waits until no client of the pool is active or waiting and no server is active."""
    last = {}

    def ok():
        r = pool_row(pf) or {}
        last.clear()
        last.update(r)
        return all(int(r.get(k, 0)) == 0 for k in ("cl_active", "cl_waiting", "sv_active"))
    pfhelpers.wait_until(ok, timeout, "pool %s settles" % DB, lambda: last)


def alive(pf):
    assert pf.is_running(), "pgfunnel died\n" + pf.all_output()[-6000:]


def backend_wait_event(postgres, user):
    with postgres.connect(autocommit=True) as su:
        return [r[0] for r in su.execute(
            "SELECT wait_event FROM pg_stat_activity WHERE usename = %s AND state = 'active'",
            (user,)).fetchall()]


def read_all_answers(conn, ready, timeout):
    """({type: count}, data values of the non-x rows) up to `ready` ReadyForQuery."""
    deadline = time.monotonic() + timeout
    counts, vals = {}, []
    seen = 0
    while seen < ready:
        try:
            kind, payload = conn.read_message(max(0.0, deadline - time.monotonic()))
        except pgwire.ProtocolError as e:
            e.args = ("%s; got before: %r %r" % (e, counts, vals[-5:]),)
            raise
        counts[kind] = counts.get(kind, 0) + 1
        if kind == "Z":
            seen += 1
        elif kind == "D":
            v = pgwire.decode_data_row(payload)
            if v and v[0] is not None and not v[0].startswith("xxxx"):
                vals.append(v[0])
        elif kind == "E":
            vals.append("E:" + pgwire.parse_fields(payload).get("M", ""))
    return counts, vals


BIG_OUTPUT = "SELECT repeat('x', 8000) FROM generate_series(1, 3000)"  # 24 MB of rows


# ---------------------------------------------------------------- writev / splices / injects


def test_bug_slow_reader_injects_while_server_write_pending(proxy, postgres, role):
    """BUG (conn.c pf_conn_replace_head / client.c send_injected): the client pipelines Binds
    of statements the server does not have (max_prepared_statements=1, so each Bind needs an
    injected Parse) behind a query with 24 MB of rows, and does not read. Postgres blocks
    writing those rows, stops reading, and the server socket fills: send_injected() calls
    pf_conn_flush() on the client conn, whose forward region (the previous Bind's splice and
    Execute) now goes out as a pending write (fwd_pending), and then apply_plan() calls
    pf_conn_replace_head(), which asserts !c->fwd_pending -> SIGABRT, every client of the
    process is dropped. (Without asserts the new splice would overwrite sp->data that the
    pending writev still points at, and the splice would be recorded at an offset of a
    buffer that can be released before it is written.)
    Correct: pgfunnel stays up; once the client reads, every answer arrives in order."""
    # Small socket buffers on pgfunnel's side, so the server socket fills early.
    pf = start(proxy, postgres, role, max_prepared=1, tcp_socket_buffer=32768)
    n = 300
    pad = "/*" + "p" * 30000 + "*/"
    a = connect(pf, role)
    a.sock.settimeout(30)
    # Each Parse waits for the one before (Sync between): the server keeps only the last.
    a.send(b"".join(P("s%d" % i, "SELECT 'A-%d' %s" % (i, pad)) + S for i in range(n)))
    counts = a.count_until_ready(n, 30)
    assert counts == {"1": n, "Z": n}, counts
    pipeline = (P("", BIG_OUTPUT) + B("") + E() +
                b"".join(B("s%d" % i) + E() for i in range(n)) + S)
    sender = threading.Thread(target=a.sock.sendall, args=(pipeline,), daemon=True)
    sender.start()
    # pgfunnel has handled every Bind once it tracks all n statements as on the server (or
    # it died); not asserted: a fixed pgfunnel may hold the Binds back instead.
    pfhelpers.wait_for(dead_or(pf, lambda: any(
        int(r["prepared_statements"]) >= n for r in server_rows(pf))), 10)
    alive(pf)
    counts, vals = read_all_answers(a, 1, 60)
    assert vals == ["A-%d" % i for i in range(n)], vals[:5]
    assert counts.get("D") == 3000 + n, counts
    a.close()
    alive(pf)
    settled(pf)
    finish(pf)


def test_bug_injected_parse_over_256k_deadlocks_server(proxy, postgres, role):
    """BUG (conn.c out_blocked on a server conn / client.c send_injected): a well-behaved
    client (it reads everything) prepared a ~1 MB statement; after RECONNECT the server it
    gets next does not have it, so its Bind makes pgfunnel inject the 1 MB Parse with
    pf_conn_send(). The Bind follows a query with 24 MB of rows in the same pipeline:
    Postgres is busy writing rows and does not read, so most of the Parse is queued as
    pgfunnel's own output on the server conn; past PF_CONN_OUT_MAX (256 KiB) the conn sets
    out_blocked, which stops *processing the server's input*, i.e. forwarding its rows to
    the client. Postgres then blocks writing, never reads the rest of the Parse, and the
    queue never drains: a deadlock (the client hangs until a timeout kills it).
    Correct: every answer arrives (backpressure on our own output to a server must not stop
    reading that server)."""
    pf = start(proxy, postgres, role, tcp_socket_buffer=32768)
    a = connect(pf, role)
    a.sock.settimeout(30)
    big = "SELECT 'A-big' /*" + "b" * 1000000 + "*/"
    a.send(P("big", big) + S)
    assert answer(a) == ["1", "Z:I"]
    pfhelpers.console(pf, "RECONNECT")
    pfhelpers.wait_until(lambda: not server_rows(pf), DEADLINE, "the old server is closed")
    a.send(P("", BIG_OUTPUT) + B("") + E() + B("big") + E() + S)
    try:
        counts, vals = read_all_answers(a, 1, 10)
    except pgwire.Timeout as e:
        waits = backend_wait_event(postgres, role[0])
        a.abort()  # frees the stuck server, so the teardown can stop pgfunnel
        pytest.fail("deadlock: the answers stopped (%s); Postgres waits on %r" % (e, waits))
    assert vals == ["A-big"], vals
    assert counts.get("D") == 3001, counts
    a.close()
    alive(pf)
    finish(pf)


# ---------------------------------------------------------------- decisions made on stale state


@pytest.mark.parametrize("command", ["DISCARD ALL", "DEALLOCATE ALL"])
@pytest.mark.parametrize("then", ["bind", "reparse"])
def test_bug_extended_discard_all_then_named_in_same_write(proxy, postgres, role, command,
                                                          then):
    """BUG (client.c prepared_packet / server.c pf_server_prep_must_wait + note_command):
    named messages after a *simple* Query wait for its answer (it might be a DISCARD ALL), but
    not after DISCARD ALL / DEALLOCATE ALL sent with the extended protocol (Parse/Bind/
    Execute of the unnamed statement, then Sync). In the same write, a Bind of s1 after it is
    decided before the CommandComplete arrives: renamed to PGFUNNEL_..., which the DISCARD
    just dropped; the 26000 then names pgfunnel's statement (the client's map no longer
    has s1 when the error is rewritten) instead of "s1". And a Parse of s1 with new SQL is
    taken for a duplicate (42P05 planned, sent under the old server-side name), which the
    server accepts (the DISCARD dropped that name): the client sees ParseComplete and the
    row, but the DISCARD's CommandComplete then cleared s1 from the client's map, so its
    next Bind of s1 gets 26000 (and PGFUNNEL_n now means the new SQL on that server while
    the registry says the old one).
    Correct (PostgreSQL): 26000 naming s1; the new Parse succeeds and s1 means the new SQL
    from then on, on every server."""
    s = Script()
    s.x("A", run("s1", "SELECT 'old'") + S, ["1"] + row("old") + ["Z:I"])
    discard = P("", command) + B("") + E() + S
    if then == "bind":
        s.x("A", discard + run("s1") + S,
            ["1", "2", "C:" + command, "Z:I", NOT_EXIST % "s1", "Z:I"], ready=2)
        s.x("A", run("s1") + S, [NOT_EXIST % "s1", "Z:I"])
    else:
        s.x("A", discard + run("s1", "SELECT 'new'") + S,
            ["1", "2", "C:" + command, "Z:I", "1"] + row("new") + ["Z:I"], ready=2)
        s.x("A", run("s1") + S, row("new") + ["Z:I"])
        s.x("B", run("s9", "SELECT 'B'") + S, ["1"] + row("B") + ["Z:I"])
        s.x("A", run("s1") + S, row("new") + ["Z:I"])
    pf = check(proxy, postgres, role, s)
    finish(pf)


def test_bug_parse_known_sql_decided_in_stale_failed_state(proxy, postgres, role):
    """BUG (prepared.c pf_prepared_parse `aborted` / client.c prepared_packet): the decision
    "the server is in a failed transaction" uses the status of the last ReadyForQuery, even
    when a ROLLBACK sent (extended protocol, no named statement, so no wait) before the Parse
    in the same write will have ended that transaction. A Parse of SQL the server already has
    is then sent under the existing server-side name "for the server to refuse"; the server,
    no longer in a failed transaction, answers 42P05 'prepared statement "s9" already exists'.
    Correct (PostgreSQL): ROLLBACK, then ParseComplete and s9's row."""
    s = Script()
    s.x("A", P("s1", "SELECT 'known'") + S, ["1", "Z:I"])
    s.sql("A", "BEGIN", ["C:BEGIN", "Z:T"])
    s.sql("A", "SELECT 1/0", ["E:22012:division by zero", "Z:E"])
    s.x("A", P("", "ROLLBACK") + B("") + E() + S + run("s9", "SELECT 'known'") + S,
        ["1", "2", "C:ROLLBACK", "Z:I", "1"] + row("known") + ["Z:I"], ready=2)
    s.x("A", run("s9") + S, row("known") + ["Z:I"])
    pf = check(proxy, postgres, role, s)
    finish(pf)


def test_bug_parse_known_sql_synthesized_although_transaction_fails_first(proxy, postgres,
                                                                          role):
    """BUG (same place, the other way round): inside a transaction block, one write carries a
    failing statement (unnamed, extended protocol) and Sync, then a Parse of SQL the server
    already has. pgfunnel decides on the last known status (in a transaction, not failed)
    and answers ParseComplete itself, and records s9 as prepared. PostgreSQL refuses the
    Parse with 25P02 (the transaction failed in between), so s9 does not exist after the
    ROLLBACK; through pgfunnel it does.
    Correct: 25P02 for the Parse; after ROLLBACK, 26000 for s9."""
    aborted = ("E:25P02:current transaction is aborted, commands ignored until end of "
               "transaction block")
    s = Script()
    s.x("A", P("s1", "SELECT 'known'") + S, ["1", "Z:I"])
    s.sql("A", "BEGIN", ["C:BEGIN", "Z:T"])
    s.x("A", P("", "SELECT 1/0") + B("") + E() + S + P("s9", "SELECT 'known'") + S,
        ["1", "E:22012:division by zero", "Z:E", aborted, "Z:E"], ready=2)
    s.sql("A", "ROLLBACK", ["C:ROLLBACK", "Z:I"])
    s.x("A", run("s9") + S, [NOT_EXIST % "s9", "Z:I"])
    pf = check(proxy, postgres, role, s)
    finish(pf)


# ---------------------------------------------------------------- partial messages


def direct_answer(postgres, role, setup, data, ready=1):
    """PostgreSQL's own tokens for data (after setup), on a fresh backend."""
    c = pgwire.connect(postgres.host, postgres.port, role[0], "appdb", password=role[1],
                       timeout=DEADLINE)
    try:
        if setup:
            c.send(setup)
            answer(c, setup.count(S) + setup.count(b"Q\0"))
        c.send(data)
        return answer(c, ready)
    finally:
        c.close()


def split_pipeline(i):
    """One self-contained pipeline of every named message kind (it leaves nothing behind):
    names long enough to straddle reads, SQL alternating so that with
    max_prepared_statements=1 the Bind of "keep" needs an injected Parse and an eviction."""
    nm = "split_statement_name_%02d_%s" % (i % 2, "n" * 20)
    sql = "SELECT $1::text || '-%s'" % ("x" if i % 2 else "y")
    return (P(nm, sql) + fe_describe("S", nm) + B(nm, ["A%d" % i], portal="portal_pp") +
            fe_describe("P", "portal_pp") + E("portal_pp") + B("keep") + E() +
            fe_close("P", "portal_pp") + fe_close("S", nm) + S)


SPLIT_SETUP = P("keep", "SELECT 'keep'") + S


def test_split_at_every_byte(proxy, postgres, role):
    """Holds: a pipeline of Parse/Describe/Bind/Describe/Execute/Bind(injected)/Close/Close/
    Sync of named statements sent in two writes split at every byte offset (names split
    across reads, a Bind whose statement name ends exactly at a read boundary, headers cut in
    half), with max_prepared_statements=1 so Binds need injected Parses and evictions: every
    answer equals PostgreSQL's."""
    pf = start(proxy, postgres, role, max_prepared=1)
    want = {v: direct_answer(postgres, role, SPLIT_SETUP, split_pipeline(v)) for v in (0, 1)}
    a = connect(pf, role)
    a.send(SPLIT_SETUP)
    assert answer(a) == ["1", "Z:I"]
    n = len(split_pipeline(0))
    for k in range(1, n):
        data = split_pipeline(k)
        a.send(data[:k])
        time.sleep(0.003)  # a read boundary at k (not a wait for an event)
        a.send(data[k:])
        got = answer(a)
        assert got == [t.replace("A%d" % (k % 2), "A%d" % k) for t in want[k % 2]], (k, got)
    a.close()
    alive(pf)
    settled(pf)
    finish(pf)


def test_byte_by_byte_pipeline_two_clients(proxy, postgres, role):
    """Holds: two clients on one server each trickle the pipeline one byte per write (the
    same names, other SQL) while the other's pipelines are in flight: answers equal
    PostgreSQL's and never carry the other client's tag."""
    pf = start(proxy, postgres, role, max_prepared=1)
    want = direct_answer(postgres, role, SPLIT_SETUP, split_pipeline(1))
    errors = []

    def trickle(tag):
        try:
            c = connect(pf, role)
            c.send(SPLIT_SETUP)
            answer(c)
            for r in range(2):
                data = split_pipeline(1).replace(b"A1", tag.encode())
                for i in range(len(data)):
                    c.send(data[i:i + 1])
                    if i % 7 == 0:
                        time.sleep(0.001)
                got = answer(c)
                exp = [t.replace("A1", tag) for t in want]
                if got != exp:
                    errors.append((tag, got, exp))
            c.close()
        except Exception as e:  # noqa: BLE001
            errors.append((tag, repr(e)))
    ts = [threading.Thread(target=trickle, args=(t,)) for t in ("Q7", "R8")]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors, errors
    alive(pf)
    settled(pf)
    finish(pf)


# ---------------------------------------------------------------- names: long, huge, broken


def test_names_around_63_bytes_and_64k(proxy, postgres, role):
    """Holds: statement names of 62/63/64 bytes (Parse, Bind, Describe, Close, duplicate
    Parse) and of 64 KiB (Parse, Bind, and a duplicate Parse whose 42P05 quotes the whole
    name; PostgreSQL refuses Describe/Close messages over 10000 bytes), beside B using the
    same names for other SQL: identical to PostgreSQL."""
    s = Script()
    for nm in ("a" * 62, "b" * 63, "c" * 64, "h" * 65536):
        small = len(nm) < 1000
        s.x("A", run(nm, "SELECT 'A-%d'" % len(nm)) + (fe_describe("S", nm) if small else b"") +
            S, ["1"] + row("A-%d" % len(nm)) + (["t:0", "T:?column?"] if small else []) +
            ["Z:I"])
        s.x("B", run(nm, "SELECT 'B-%d'" % len(nm)) + S, ["1"] + row("B-%d" % len(nm)) + ["Z:I"])
        # (expected texts quoting a 64 KiB name are compared with PostgreSQL's only)
        s.x("A", P(nm, "SELECT 'other'") + S, [EXISTS % nm, "Z:I"] if small else None)
        s.x("A", run(nm[:63] + "zz") + S, row("A-%d" % len(nm)) + ["Z:I"]
            if len(nm) >= 63 else [NOT_EXIST % (nm[:63] + "zz"), "Z:I"])
        if small:
            s.x("A", fe_close("S", nm) + run(nm) + S, ["3", NOT_EXIST % nm, "Z:I"])
        else:
            s.x("A", fe_close("S", nm[:63]) + run(nm) + S)
        s.x("B", run(nm) + S, row("B-%d" % len(nm)) + ["Z:I"])
    pf = check(proxy, postgres, role, s)
    finish(pf)


def test_huge_portal_names_with_named_statements(proxy, postgres, role):
    """Holds: Binds of named statements with portal names of 1000-9900 bytes (PostgreSQL
    refuses Describe/Execute/Close over 10000 bytes) (the renamed
    head no longer fits a splice: the fallback path writes it on its own), several in one
    write, mixed with short ones that do use splices; Describe/Execute/Close of those
    portals: identical to PostgreSQL."""
    s = Script()
    s.x("A", P("s1", "SELECT $1::text") + P("s2", "SELECT 'two'") + S, ["1", "1", "Z:I"])
    data, want = b"", []
    for i, ln in enumerate((1000, 1, 2000, 63, 9900, 5, 1500)):
        portal = ("p%d_" % i) + "q" * ln
        data += (B("s1", ["v%d" % i], portal=portal) + fe_describe("P", portal) +
                 E(portal) + B("s2") + E() + fe_close("P", portal))
        want += ["2", "T:text", "D:v%d" % i, "C:SELECT 1"] + row("two") + ["3"]
    s.x("A", data + S, want + ["Z:I"])
    s.x("B", run("s1", "SELECT 'B'") + S, ["1"] + row("B") + ["Z:I"])
    s.x("A", data + S, want + ["Z:I"])
    pf = check(proxy, postgres, role, s)
    finish(pf)


@pytest.mark.parametrize("namelen", [1, 40, 63])
def test_many_renamed_heads_in_one_read(proxy, postgres, role, namelen):
    """Holds: 200 renamed Bind/Describe messages in one write (far more than 8 splices and
    512 bytes of replacement heads per forward region), with named portals, interleaved
    with unnamed ones; then the same with a Flush after every 3: identical to PostgreSQL."""
    names = ["%s%03d" % ("n" * max(0, namelen - 3), i) for i in range(5)]
    s = Script()
    s.x("A", b"".join(P(nm, "SELECT '%d'::text AS c%d" % (i, i)) for i, nm in enumerate(names))
        + S, ["1"] * 5 + ["Z:I"])
    data, want = b"", []
    for i in range(200):
        k = i % 5
        portal = "pt%d" % i if i % 2 else ""
        data += B(names[k], portal=portal) + fe_describe("S", names[k]) + E(portal)
        want += ["2", "t:0", "T:c%d" % k, "D:%d" % k, "C:SELECT 1"]
        if i % 9 == 0:
            data += P("", "SELECT 'u'") + B("") + E()
            want += ["1"] + row("u")
    s.x("A", data + S, want + ["Z:I"])
    s.x("B", b"".join(P(nm, "SELECT 'B'") for nm in names) + S, ["1"] * 5 + ["Z:I"])
    s.x("A", data + S, want + ["Z:I"])
    pf = check(proxy, postgres, role, s)
    finish(pf)


def test_bug_statement_name_not_valid_utf8(proxy, postgres, role):
    """BUG (low; client.c prepared_packet / prepared.c pf_prepared_parse): PostgreSQL
    checks a statement name's encoding (client_encoding UTF8) and refuses a name with
    invalid bytes: 22021 'invalid byte sequence for encoding "UTF8": 0xff'. pgfunnel renames
    the name before the server sees it, so it accepts the statement (ParseComplete), and
    later quotes the raw bytes in error texts it rewrites (a duplicate Parse's 42P05), i.e.
    sends the client an ErrorResponse that is not valid UTF-8.
    Correct: the same 22021 as PostgreSQL (the Parse refused, nothing recorded)."""
    bad = b"\xff\xfeab"
    s = Script()
    s.x("A", fe_parse("SELECT 1", bad) + S,
        ['E:22021:invalid byte sequence for encoding "UTF8": 0xff', "Z:I"])
    s.x("A", fe_parse("SELECT 2", bad) + S,
        ['E:22021:invalid byte sequence for encoding "UTF8": 0xff', "Z:I"])
    pf = check(proxy, postgres, role, s)
    finish(pf)


MALFORMED = {
    # name: bytes of a named message that PostgreSQL refuses as malformed
    "bind_name_without_nul": b"B" + struct.pack("!I", 4 + 9) + b"\0s1s1s1s1",
    "parse_name_without_nul": b"P" + struct.pack("!I", 4 + 6) + b"s1s1s1",
    "describe_bad_kind": b"D" + struct.pack("!I", 4 + 4) + b"Xs1\0",
    "close_trailing_bytes": b"C" + struct.pack("!I", 4 + 6) + b"Ss1\0zz",
    "bind_length_short": b"B" + struct.pack("!I", 4 + 4) + b"\0s1\0" + b"\0\0\0\0\0\0",
    "bind_length_long_then_gone": b"B" + struct.pack("!I", 4 + 5000) + b"\0s1\0\0\0\0\0\0\0",
    "huge_name_no_nul_1mb": b"B" + struct.pack("!I", 4 + 1100000) + b"\0" + b"x" * 1100000,
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_named_messages(proxy, postgres, role, case):
    """Holds: malformed named messages (names without their NUL, a Describe kind other than
    S/P, bytes after a Close's name, lengths that lie either way, a 1 MB name that never
    ends) give the client an ErrorResponse and/or a closed connection, never a hang; the
    server it was on serves B correctly afterwards (same names, other SQL), and counts
    return to zero."""
    pf = start(proxy, postgres, role)
    a = connect(pf, role)
    a.send(run("s1", "SELECT 'A'") + S)
    assert answer(a) == ["1"] + row("A") + ["Z:I"]
    a.sock.settimeout(DEADLINE)
    try:
        a.send(MALFORMED[case] + S)
    except OSError:
        pass
    if case == "bind_length_long_then_gone":
        a.abort()
    else:
        got = []
        try:
            while True:
                got.append(a.read_message(DEADLINE))
                if got[-1][0] == "Z":
                    break
        except pgwire.Timeout:
            pytest.fail("no answer to a malformed message within %.0fs: %r" % (
                DEADLINE, toks(got)))
        except (pgwire.ProtocolError, OSError):
            got.append(("closed", b""))
        kinds = [k for k, _ in got]
        assert "E" in kinds or kinds == ["closed"], toks(got[:-1])
        a.abort()
    b = connect(pf, role)
    b.send(run("s1", "SELECT 'B'") + S)
    assert answer(b) == ["1"] + row("B") + ["Z:I"]
    b.close()
    alive(pf)
    settled(pf)
    finish(pf)


# ---------------------------------------------------------------- many clients, one model


class Model:
    """One client's view: its statement names -> the suffix their SQL appends to the tag
    bound as $1. Generates random pipelines (always ending in Sync) with the tokens
    PostgreSQL answers, so that every answer can be checked exactly, tags included."""

    NAMES = ["s0", "s1", "s2", "s3", "n" * 63, "s5"]

    def __init__(self, cid, rnd):
        self.cid = cid
        self.rnd = rnd
        self.map = {}
        self.n = 0

    def sql(self, suffix):
        return "SELECT $1::text || '%s'" % suffix

    def batch(self):
        r = self.rnd
        data, want = b"", []
        ready = 1
        if r.random() < 0.08:
            cmd = r.choice(["DISCARD ALL", "DEALLOCATE ALL"])
            data += Q(cmd)
            want += ["C:" + cmd, "Z:I"]
            ready += 1
            self.map.clear()
        for _ in range(r.randrange(1, 12)):
            nm = r.choice(self.NAMES)
            op = r.random()
            if nm not in self.map:
                if op < 0.1:  # an unknown name: 26000, the rest up to Sync is skipped
                    data += B(nm, ["x"]) + E()
                    want += [NOT_EXIST % nm]
                    break
                # shared SQL (same text for every client) or the client's own
                suffix = "-common-%s" % nm[:2] if r.random() < 0.5 else "-%s-%s" % (
                    self.cid, nm[:2])
                data += P(nm, self.sql(suffix))
                want += ["1"]
                self.map[nm] = suffix
            elif op < 0.55:
                self.n += 1
                tag = "%s:%d" % (self.cid, self.n)
                portal = "" if r.random() < 0.7 else "p%d" % self.n
                data += B(nm, [tag], portal=portal) + E(portal)
                want += ["2", "D:%s%s" % (tag, self.map[nm]), "C:SELECT 1"]
            elif op < 0.7:
                data += fe_describe("S", nm)
                want += ["t:1", "T:?column?"]
            elif op < 0.85:
                data += fe_close("S", nm)
                want += ["3"]
                del self.map[nm]
            elif op < 0.95:
                data += H
            else:
                data += P(nm, "SELECT 'dup'")
                want += [EXISTS % nm]
                break
        data += S
        want += ["Z:I"]
        return data, want, ready


def run_clients(pf, role, nclients, seconds, seed, abort_rate=0.0, errors=None):
    errors = [] if errors is None else errors
    stop = time.monotonic() + seconds
    done = [0]

    def worker(i):
        rnd = random.Random(seed * 1000 + i)
        cid = "c%d" % i
        try:
            c = connect(pf, role)
            m = Model(cid, rnd)
            while time.monotonic() < stop:
                data, want, ready = m.batch()
                if abort_rate and rnd.random() < abort_rate:
                    # vanish at a random byte of the pipeline, or after it unread
                    c.send(data[:rnd.randrange(1, len(data) + 1)])
                    c.abort()
                    c = connect(pf, role)
                    m = Model(cid, rnd)
                    continue
                c.send(data)
                got = answer(c, ready, 20)
                if got != want:
                    errors.append("%s sent %s\n got  %r\n want %r" % (
                        cid, data[:300], got, want))
                    return
                done[0] += 1
            c.close()
        except Exception as e:  # noqa: BLE001 - reported by the test
            errors.append("%s: %r" % (cid, e))
    ts = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(nclients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(seconds + 60)
    assert not any(t.is_alive() for t in ts), "a client hung"
    return errors, done[0]


@pytest.mark.parametrize("nclients,pool_size,max_prepared", [
    (2, 1, 1), (5, 1, 2), (10, 2, 200), (6, 2, 1)])
def test_clients_share_names_on_few_servers(proxy, postgres, role, nclients, pool_size,
                                            max_prepared):
    """Holds: 2-10 clients on pools of 1-2 servers, max_prepared_statements 1/2/200, use the
    same six names (one 63 bytes long) for shared and for their own SQL in random pipelines
    (Parse/Bind/Describe/Close/Flush, named portals, DISCARD ALL / DEALLOCATE ALL in the same
    write, unknown names and duplicate Parses that fail the rest of the pipeline): every
    answer is exactly what PostgreSQL answers and carries the client's own tag; the pool
    settles and the servers hold at most max_prepared_statements statements afterwards."""
    pf = start(proxy, postgres, role, max_prepared=max_prepared, pool_size=pool_size)
    errors, done = run_clients(pf, role, nclients, SECONDS, seed=nclients + SEED)
    assert not errors, errors[:3]
    assert done > nclients, done
    alive(pf)
    settled(pf)
    # Over the limit only while a pipeline needs it: the next use sheds the excess.
    c = connect(pf, role)
    c.send(Q("SELECT 1"))
    answer(c)
    c.send(Q("SELECT count(*) FROM pg_prepared_statements"))
    real = int(data_values(c.read_until_ready(DEADLINE))[0])
    c.close()
    assert real <= max(max_prepared, 6) + 8, real
    finish(pf)


@pytest.mark.parametrize("pool_size,max_prepared", [(1, 1), (2, 3)])
def test_clients_vanish_at_every_step(proxy, postgres, role, pool_size, max_prepared):
    """Holds: like the test above, but clients also vanish at a random byte of a pipeline
    (mid-message, between Parse and Sync, after a Sync while pgfunnel waits for the outcome
    of earlier changes, or with the whole pipeline unread) and come back as new clients:
    those who stay get exactly their answers; no server is handed on with a half-done
    pipeline; counts return to zero."""
    pf = start(proxy, postgres, role, max_prepared=max_prepared, pool_size=pool_size)
    errors, done = run_clients(pf, role, 6, SECONDS, seed=77 + pool_size + SEED,
                               abort_rate=0.25)
    assert not errors, errors[:3]
    alive(pf)
    settled(pf)
    errors, done = run_clients(pf, role, 2, 0.5, seed=5)
    assert not errors, errors[:3]
    settled(pf)
    finish(pf)


# ---------------------------------------------------------------- hostile servers


from test_zz_attack import FakePg, msg, cstr, be_row, be_cc, be_z  # noqa: E402

NAME_RE = re.compile(rb"^(PGFUNNEL_[0-9a-f]{8}_)([0-9]+)$")


def be_error(code, text, severity="ERROR"):
    if isinstance(text, str):
        text = text.encode()
    return msg(b"E", b"S" + cstr(severity) + b"V" + cstr(severity) + b"C" + cstr(code) +
               b"M" + text + b"\0\0")


def _garbage_error(c, name, st):
    prefix = NAME_RE.match(name).group(1)
    text = (b'prepared statement "' + name + b'zz\xff\xfe" ' + b"PGFUNNEL_ " + prefix + b" " +
            prefix + b"9" * 60 + b" " + name[:-1] + b" " + name + name + b" " + prefix)
    c.sendall(be_error("26000", text))
    return "error"


HOSTILE_PREP = {
    # what the fake server does with the first renamed Parse it gets (name: PGFUNNEL_...);
    # returns "error" (it now skips to Sync), "close", or None (goes on normally)
    "nodata_for_parse": lambda c, n, st: c.sendall(msg(b"n")),
    "datarow_for_parse": lambda c, n, st: c.sendall(be_row("LEAK-wrong")),
    "parse_complete_twice": lambda c, n, st: (st.__setitem__(n, "A"),
                                              c.sendall(msg(b"1") + msg(b"1")))[-1],
    "close_complete_for_parse": lambda c, n, st: c.sendall(msg(b"3")),
    "ready_for_parse": lambda c, n, st: c.sendall(be_z()),
    "error_prefix_garbage": _garbage_error,
    "error_7000_bytes_of_names": lambda c, n, st: (
        c.sendall(be_error("42P05", b" ".join([n] * (7000 // (len(n) + 1))))), "error")[-1],
    "error_200k_of_names": lambda c, n, st: (
        c.sendall(be_error("26000", b" ".join([n] * (200000 // (len(n) + 1))))), "error")[-1],
    "error_unterminated_fields": lambda c, n, st: (
        c.sendall(msg(b"E", b"SERROR\0C42P05\0M" + n)), "error")[-1],
    "fatal_then_close": lambda c, n, st: (
        c.sendall(be_error("57P01", b"bye " + n, "FATAL")), "close")[-1],
    "close_mid_message": lambda c, n, st: (c.sendall((msg(b"1") + msg(b"2"))[:7]), "close")[-1],
    "notice_flood_with_names": lambda c, n, st: (st.__setitem__(n, "A"), c.sendall(
        b"".join(msg(b"N", b"SNOTICE\0C00000\0M" + n + b"\0\0") for _ in range(2000)) +
        msg(b"1")))[-1],
}


HOSTILE_INJECTED = {
    # what the fake server does with pgfunnel's first injected Close (evicting a statement)
    # or injected Parse (a statement prepared again: a name it has seen before)
    "error_for_injected_close": ("close", lambda c, n, st: (
        c.sendall(be_error("XX000", b"no close for " + n)), "error")[-1]),
    "two_close_completes": ("close", lambda c, n, st: (
        st.pop(n, None), c.sendall(msg(b"3") + msg(b"3")))[-1]),
    "error_for_injected_parse": ("reparse", lambda c, n, st: (
        c.sendall(be_error("42P01", b'relation "t" of ' + n + b" does not exist")), "error")[-1]),
    "bindcomplete_for_injected_parse": ("reparse", lambda c, n, st: c.sendall(msg(b"2"))),
    "close_at_injected_parse": ("reparse", lambda c, n, st: "close"),
}


def fake_extended(behaviour):
    """A fake Postgres that speaks enough of the extended protocol for named statements
    (values: the quoted literal of "SELECT '<v>'"), misbehaving on connection 0's first
    renamed Parse as HOSTILE_PREP[behaviour] says (or on its first injected Close or
    re-Parse, HOSTILE_INJECTED)."""
    def script(c, idx):
        stmts, portals = {}, {}
        seen = set()
        skipping = False
        hostile = idx == 0
        on, act = HOSTILE_INJECTED.get(behaviour, ("parse", HOSTILE_PREP.get(behaviour)))
        while True:
            kind, payload = pgwire.read_frontend_message(c)
            out = b""
            if kind == b"X":
                return
            if skipping and kind != b"S":
                continue
            if kind == b"P":
                name, rest = payload.split(b"\0", 1)
                sql = rest.split(b"\0", 1)[0].decode()
                again = name in seen
                seen.add(name)
                if hostile and NAME_RE.match(name) and (on == "parse" or
                                                        (on == "reparse" and again)):
                    hostile = False
                    res = act(c, name, stmts)
                    if res == "close":
                        c.close()
                        return
                    skipping = res == "error"
                    continue
                if name and name in stmts:
                    out = be_error("42P05", b'prepared statement "%s" already exists' % name)
                    skipping = True
                else:
                    stmts[name] = sql.split("'")[1] if "'" in sql else sql
                    out = msg(b"1")
            elif kind == b"B":
                portal, rest = payload.split(b"\0", 1)
                stmt = rest.split(b"\0", 1)[0]
                if stmt not in stmts:
                    out = be_error("26000", b'prepared statement "%s" does not exist' % stmt)
                    skipping = True
                else:
                    portals[portal] = stmts[stmt]
                    out = msg(b"2")
            elif kind == b"E":
                out = be_row(portals.get(payload.split(b"\0")[0], "?")) + be_cc()
            elif kind == b"D":
                out = (msg(b"t", b"\0\0") if payload[:1] == b"S" else b"") + msg(
                    b"T", b"\0\1" + cstr("v") + b"\0" * 18)
            elif kind == b"C":
                if hostile and on == "close" and NAME_RE.match(payload[1:-1]):
                    hostile = False
                    res = act(c, payload[1:-1], stmts)
                    if res == "close":
                        c.close()
                        return
                    skipping = res == "error"
                    continue
                if payload[:1] == b"S":
                    stmts.pop(payload[1:-1], None)
                out = msg(b"3")
            elif kind == b"S":
                skipping = False
                out = be_z()
            elif kind == b"Q":
                text = payload[:-1].decode()
                out = be_row(text.split("'")[1] if "'" in text else text) + be_cc() + be_z()
            if out:
                c.sendall(out)
    return script


@pytest.fixture
def fake_prepared(proxy, postgres, role):
    made = []

    def start_fake(script, **params):
        fake = FakePg(script)
        made.append(fake)
        p = {"pool_mode": "transaction", "default_pool_size": 1, "query_wait_timeout": 30,
             "server_login_retry": 0, "max_prepared_statements": 200}
        p.update(params)
        pf = proxy(params=p, databases={"fake": fake.entry()}, userlist={role[0]: role[1]})
        return pf, fake
    yield start_fake
    for f in made:
        f.stop()


def fake_pool(pf):
    cols, rows = pfhelpers.console(pf, "SHOW POOLS")
    return [r for r in pfhelpers.rows_as_dicts(cols, rows) if r["database"] == "fake"][0]


@pytest.mark.parametrize("behaviour", sorted(HOSTILE_PREP))
def test_hostile_server_answers_renamed_parse(fake_prepared, role, behaviour):
    """Holds: a server that answers pgfunnel's renamed Parse with the wrong message, two
    ParseCompletes, a ReadyForQuery, an ErrorResponse quoting PGFUNNEL_ names with garbage
    after them (non-digits, 60 digits, the bare prefix, unterminated fields), error texts of
    7 KB and 200 KB made of server-side names, a flood of notices, a FATAL, or that closes
    mid-message: client A gets an answer (what the broken server sent reaches the client it
    serves, as with PgBouncer), an ErrorResponse, or a close, never a hang; the server is
    not reused: client B, next on the pool with the same name for other SQL, gets exactly
    its own answer; the pool settles."""
    pf, fake = fake_prepared(fake_extended(behaviour))
    a = pgwire.connect(pf.host, pf.port, role[0], "fake", role[1], timeout=DEADLINE)
    a.send(P("s1", "SELECT 'A'") + B("s1") + E() + S)
    got = []
    try:
        while True:
            got.append(a.read_message(DEADLINE))
            if got[-1][0] == "Z":
                break
    except pgwire.Timeout:
        pytest.fail("A hangs: %r" % toks(got))
    except (pgwire.ProtocolError, OSError):
        got.append(("<closed>", b""))
    # What the server itself sent wrongly reaches the client it serves (as with PgBouncer);
    # what matters is that it goes no further.
    vals = data_values([m for m in got if m[0] == "D"])
    assert all(v in ("A", "LEAK-wrong") for v in vals), toks(got)
    a.abort()
    pfhelpers.wait_until(lambda: int(fake_pool(pf)["cl_active"]) == 0, DEADLINE,
                         "A's close is noticed")
    b = pgwire.connect(pf.host, pf.port, role[0], "fake", role[1], timeout=DEADLINE)
    b.send(P("s1", "SELECT 'B'") + B("s1") + E() + S)
    assert answer(b) == ["1", "2", "D:B", "C:SELECT 1", "Z:I"]
    b.send(B("s1") + E() + S)
    assert answer(b) == ["2", "D:B", "C:SELECT 1", "Z:I"]
    b.close()
    pfhelpers.wait_until(lambda: all(int(fake_pool(pf)[k]) == 0 for k in (
        "cl_active", "cl_waiting", "sv_active")), DEADLINE, "the fake pool settles")
    assert not fake.errors, fake.errors
    finish(pf)


WAIT_ON_BROKEN = ["two_close_completes", "bindcomplete_for_injected_parse"]


@pytest.mark.parametrize("behaviour", sorted(set(HOSTILE_INJECTED) - set(WAIT_ON_BROKEN)))
def test_hostile_server_answers_injected_messages(fake_prepared, role, behaviour):
    """Holds: with max_prepared_statements=1, A's second statement evicts the first
    (injected Close) and binding the first again prepares it anew (injected Parse); the
    server fails or mis-answers those, or closes: A gets answers, an ErrorResponse or a
    close, never a hang; B (same names, other SQL) then gets exactly its own answers; the
    pool settles."""
    hostile_injected(fake_prepared, role, behaviour)


@pytest.mark.parametrize("behaviour", WAIT_ON_BROKEN)
def test_bug_client_waiting_for_outcome_hangs_on_broken_queue(fake_prepared, role, behaviour):
    """BUG (server.c PF_CONN_EV_DRAINED / client.c prepared_packet): A sends, in one write,
    Parse(s2)+Bind+Execute+Sync (evicting s1: an injected Close), then Bind(s1) (needs
    the outcome of the first run: prep_wait) and more. The server answers pgfunnel's own
    message with something that matches nothing (a second CloseComplete; a BindComplete for
    the injected Parse): the request queue is marked broken, and a broken queue reports no
    tag any more, so the statement changes of the first run are never resolved and
    pf_prepared_must_wait() stays true. The drain handler resumes a waiting client only
    when it need not wait: A is never resumed (prepared_packet would close it with 08006
    on the broken queue), never gets an answer or an error, and holds the server forever.
    Correct: A gets an ErrorResponse and/or is closed within a deadline."""
    hostile_injected(fake_prepared, role, behaviour)


def hostile_injected(fake_prepared, role, behaviour):
    pf, fake = fake_prepared(fake_extended(behaviour), max_prepared_statements=1)
    a = pgwire.connect(pf.host, pf.port, role[0], "fake", role[1], timeout=DEADLINE)
    a.send(run("s1", "SELECT 'A1'") + S)
    assert answer(a) == ["1"] + row("A1") + ["Z:I"]
    got = []
    try:
        a.send(run("s2", "SELECT 'A2'") + S + run("s1") + S + run("s2") + S)
        for _ in range(3):
            while True:
                got.append(a.read_message(5))
                if got[-1][0] == "Z":
                    break
    except pgwire.Timeout:
        a.abort()
        pytest.fail("A hangs: %r" % toks(got))
    except (pgwire.ProtocolError, OSError):
        got.append(("<closed>", b""))
    vals = data_values([m for m in got if m[0] == "D"])
    assert all(v in ("A1", "A2") for v in vals), toks(got)
    a.abort()
    pfhelpers.wait_until(lambda: int(fake_pool(pf)["cl_active"]) == 0, DEADLINE,
                         "A's close is noticed")
    b = pgwire.connect(pf.host, pf.port, role[0], "fake", role[1], timeout=DEADLINE)
    for i in range(2):
        b.send(run("s1", "SELECT 'B1'") + S if i == 0 else run("s1") + S)
        assert answer(b) == (["1"] if i == 0 else []) + row("B1") + ["Z:I"]
        b.send(run("s2", "SELECT 'B2'") + S if i == 0 else run("s2") + S)
        assert answer(b) == (["1"] if i == 0 else []) + row("B2") + ["Z:I"]
    b.close()
    pfhelpers.wait_until(lambda: all(int(fake_pool(pf)[k]) == 0 for k in (
        "cl_active", "cl_waiting", "sv_active")), DEADLINE, "the fake pool settles")
    assert not fake.errors, fake.errors
    finish(pf)


# ---------------------------------------------------------------- COPY, DISCARD, rotation


@pytest.fixture(scope="module")
def copy_table(postgres):
    with postgres.connect(dbname="appdb", autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS atkp_copy (x text)")
        conn.execute("GRANT ALL ON atkp_copy TO PUBLIC")
    return "atkp_copy"


def CDATA(data):
    return pgwire.fe_copy_data(data)


CDONE = pgwire.fe_copy_done()


def test_copy_in_the_middle_of_named_pipelines(proxy, postgres, role, copy_table):
    """Holds: COPY FROM STDIN (simple and extended protocol, finished, failed, and one that
    receives named Parse/Bind messages before its CopyInResponse arrives) in the same writes
    as named statements, B sharing the names: identical to PostgreSQL."""
    t = copy_table
    s = Script()
    s.x("A", P("s1", "SELECT 'A1'") + S, ["1", "Z:I"])
    s.x("B", P("s1", "SELECT 'B1'") + S, ["1", "Z:I"])
    s.x("A", run("s1") + S + Q("COPY %s FROM STDIN" % t) + CDATA("a\n") + CDONE + run("s1") + S,
        row("A1") + ["Z:I", "G", "C:COPY 1", "Z:I"] + row("A1") + ["Z:I"], ready=3)
    s.x("A", P("c", "COPY %s FROM STDIN" % t) + B("c") + E() + CDATA("b\n") + CDONE +
        run("s1") + run("s2", "SELECT 'A2'") + S,
        ["1", "2", "G", "C:COPY 1"] + row("A1") + ["1"] + row("A2") + ["Z:I"])
    s.x("A", Q("COPY %s FROM STDIN" % t) + CDATA("c\n") + pgwire.fe_copy_fail("nope") +
        run("s3", "SELECT 'A3'") + S,
        ["G", "E:57014:COPY from stdin failed: nope", "Z:I", "1"] + row("A3") + ["Z:I"],
        ready=2)
    s.x("A", run("s1") + run("s2") + run("s3") + S,
        row("A1") + row("A2") + row("A3") + ["Z:I"])
    s.x("B", run("s1") + run("s2") + S, row("B1") + [NOT_EXIST % "s2", "Z:I"])
    pf = check(proxy, postgres, role, s, max_prepared=2)
    # Named messages sent into a COPY before its CopyInResponse: PostgreSQL ends the
    # connection (protocol synchronization lost); so must pgfunnel, and B goes on.
    lost = "E:08P01:terminating connection because protocol synchronization was lost"
    for into, want in [
            (Q("COPY %s FROM STDIN" % t) + run("s4", "SELECT 'A4'") + S + run("s1") + S,
             ["G", "E:08P01:unexpected message type 0x50 during COPY from stdin", lost]),
            (P("c", "COPY %s FROM STDIN" % t) + B("c") + E() + CDATA("d\n") + run("s1") +
             CDONE + S,
             ["1", "2", "G", "E:08P01:unexpected message type 0x42 during COPY from stdin",
              lost])]:
        for conn in (pgwire.connect(postgres.host, postgres.port, role[0], "appdb",
                                    password=role[1], timeout=DEADLINE), connect(pf, role)):
            conn.send(P("s1", "SELECT 'x'") + S)
            answer(conn)
            conn.send(into)
            got = []
            with pytest.raises(pgwire.ProtocolError):
                while True:
                    got.append(conn.read_message(DEADLINE))
            # (pgfunnel may add its own "server conn crashed?" error, as PgBouncer does)
            assert toks(got)[:len(want)] == want and all(
                t.startswith("E:") for t in toks(got)[len(want):]), toks(got)
            conn.abort()
    b = connect(pf, role)
    b.send(run("s1", "SELECT 'B'") + S)
    assert answer(b) == ["1"] + row("B") + ["Z:I"]
    b.close()
    settled(pf)
    finish(pf)


def test_rotation_max1_with_flushes(proxy, postgres, role):
    """Holds: max_prepared_statements=1, four statements bound in rotation 100 times in one
    pipeline with a Flush after each Execute (answers flow, so evictions resume mid
    pipeline), then Describe/Close/re-Parse in rotation; B's same names in between:
    identical to PostgreSQL."""
    names = ["r%d" % i for i in range(4)]
    s = Script()
    s.x("A", b"".join(P(nm, "SELECT 'A-%s'" % nm) for nm in names) + S, ["1"] * 4 + ["Z:I"])
    s.x("B", b"".join(P(nm, "SELECT 'B-%s'" % nm) for nm in names) + S, ["1"] * 4 + ["Z:I"])
    data, want = b"", []
    for i in range(100):
        nm = names[(i * 3) % 4]
        data += B(nm) + E() + H
        want += row("A-" + nm)
    s.x("A", data + S, want + ["Z:I"])
    data, want = b"", []
    for i in range(12):
        nm = names[i % 4]
        data += (fe_describe("S", nm) + fe_close("S", nm) + P(nm, "SELECT 'A-%s'" % nm) +
                 B(nm) + E())
        want += ["t:0", "T:?column?", "3", "1"] + row("A-" + nm)
    s.x("A", data + S, want + ["Z:I"])
    s.x("B", b"".join(run(nm) for nm in names) + S,
        sum((row("B-" + nm) for nm in names), []) + ["Z:I"])
    pf = check(proxy, postgres, role, s, max_prepared=1)
    finish(pf)


def test_close_of_statements_other_clients_use(proxy, postgres, role):
    """Holds: A and B prepare the same SQL under the same and under other names; A closes
    its names (one in a pipeline that then fails, so the Close is skipped), re-Parses one
    with other SQL; B's statements keep working; with max_prepared_statements=1."""
    s = Script()
    s.x("A", run("s1", "SELECT 'same'") + run("a2", "SELECT 'same'") + S,
        ["1"] + row("same") + ["1"] + row("same") + ["Z:I"])
    s.x("B", run("s1", "SELECT 'same'") + run("b2", "SELECT 'same'") + S,
        ["1"] + row("same") + ["1"] + row("same") + ["Z:I"])
    s.x("A", fe_close("S", "s1") + run("s1") + S, ["3", NOT_EXIST % "s1", "Z:I"])
    s.x("B", run("s1") + run("b2") + S, row("same") * 2 + ["Z:I"])
    s.x("A", fe_close("S", "a2") + run("nope") + S, ["3", NOT_EXIST % "nope", "Z:I"])
    s.x("A", run("a2") + S, [NOT_EXIST % "a2", "Z:I"])
    s.x("A", run("s1", "SELECT 'A-new'") + S, ["1"] + row("A-new") + ["Z:I"])
    s.x("B", run("s1") + fe_close("S", "b2") + run("s1") + S,
        row("same") + ["3"] + row("same") + ["Z:I"])
    s.x("A", run("b2", "SELECT 'same'") + run("s1") + S,
        ["1"] + row("same") + row("A-new") + ["Z:I"])
    pf = check(proxy, postgres, role, s, max_prepared=1)
    finish(pf)


def test_thousands_of_named_binds_without_sync(proxy, postgres, role):
    """Holds: 6000 named Bind/Execute (five statements, max_prepared_statements=3, so
    statements are prepared again within the pipeline) without a Sync, a Flush every 250,
    one Sync at the end, sent while a thread reads: the same messages as PostgreSQL, the
    values in order."""
    names = ["t%d" % i for i in range(5)]
    setup = b"".join(P(nm, "SELECT '%s'" % nm) for nm in names) + S
    data = b"".join(B(names[i % 5]) + E() + (H if i % 250 == 249 else b"")
                    for i in range(6000)) + S
    want_vals = [names[i % 5] for i in range(6000)]
    pf = start(proxy, postgres, role, max_prepared=3)
    for conn in (pgwire.connect(postgres.host, postgres.port, role[0], "appdb",
                                password=role[1], timeout=DEADLINE), connect(pf, role)):
        conn.send(setup)
        assert answer(conn) == ["1"] * 5 + ["Z:I"]
        t = threading.Thread(target=conn.sock.sendall, args=(data,), daemon=True)
        t.start()
        counts, vals = read_all_answers(conn, 1, 30)
        t.join(10)
        assert counts == {"2": 6000, "D": 6000, "C": 6000, "Z": 1}, counts
        assert vals == want_vals
        conn.close()
    alive(pf)
    settled(pf)
    finish(pf)


# ---------------------------------------------------------------- limits


LIMIT = 65536


def fill_to_limit(pf, role):
    """A client with LIMIT statement names (all for the same SQL: answered by pgfunnel
    itself after the first, so this is quick)."""
    a = connect(pf, role)
    a.sock.settimeout(60)
    data = b"".join(P("n%05d" % i, "SELECT $1::int") for i in range(LIMIT)) + S
    t = threading.Thread(target=a.sock.sendall, args=(data,), daemon=True)
    t.start()
    assert a.count_until_ready(1, 60) == {"1": LIMIT, "Z": 1}
    t.join(10)
    return a


def test_65536_statements_per_client(proxy, postgres, role):
    """Holds: a client may have 65536 statements; at the limit a Close frees a slot for a
    new Parse; the next Parse gets 54000 and the connection is closed; the server is clean
    for B afterwards (same names, other SQL) and the registry holds nothing of A's."""
    pf = start(proxy, postgres, role)
    a = fill_to_limit(pf, role)
    rows = [r for r in pfhelpers.show(pf, "CLIENTS") if r["database"] == DB]
    assert max(int(r["prepared_statements"]) for r in rows) == LIMIT, rows
    a.send(fe_close("S", "n00000") + P("extra1", "SELECT 'e1'") + B("extra1") + E() + S)
    assert answer(a) == ["3", "1"] + row("e1") + ["Z:I"]
    a.send(P("extra2", "SELECT 'e2'") + S)
    got = []
    with pytest.raises(pgwire.ProtocolError):
        while True:
            got.append(a.read_message(DEADLINE))
    assert [t[:6] for t in toks(got)] == ["E:5400"], toks(got)
    a.abort()
    b = connect(pf, role)
    b.send(run("n00001", "SELECT 'B'") + S)
    assert answer(b) == ["1"] + row("B") + ["Z:I"]
    b.close()
    settled(pf)
    finish(pf)


def test_bug_error_rewrite_is_quadratic(proxy, postgres, role):
    """BUG (server.c put_client_names -> prepared.c pf_prepared_client_name_of): every
    server-side name found in an ErrorResponse is looked up by walking ALL of the client's
    statement names (a linear scan, up to 65536), and an error of up to 8 KB may quote
    hundreds of names: a client with 65536 statements that provokes errors echoing its own
    input (SELECT '<PGFUNNEL_..._1 repeated 300 times>'::int: the prefix is in
    pg_prepared_statements for every client of the pool) makes pgfunnel do ~20 million
    string compares per error, on the one worker thread: four such errors stall every
    client of the process for seconds (measured: 0.8 s per error with ASan). The same
    errors without a real server-side name cost nothing.
    Correct: the cost of rewriting an error does not depend on how many statements the
    client has (a lookup by server-side name): the CPU pgfunnel spends on the errors with
    names is within 10x (+0.3 s) of the same errors without."""
    pf = start(proxy, postgres, role)
    a = fill_to_limit(pf, role)
    a.send(Q("SELECT name FROM pg_prepared_statements LIMIT 1"))
    name = data_values(a.read_until_ready(DEADLINE))[0]
    prefix = name[:name.rindex("_") + 1]
    lit = " ".join([name] * 300)
    cpu = []
    for text in (lit.replace(prefix, "PGFUNNEL_00000000_"), lit):
        t0 = pfhelpers.proc_cpu_seconds(pf.pid)
        a.send(b"".join(Q("SELECT '%s'::int" % text) for _ in range(4)))
        assert a.count_until_ready(4, 60) == {"E": 4, "Z": 4}
        cpu.append(pfhelpers.proc_cpu_seconds(pf.pid) - t0)
    a.close()
    assert cpu[1] <= 10 * cpu[0] + 0.3, (
        "4 errors quoting a server-side name 300 times cost pgfunnel %.2fs of CPU, the same "
        "errors without a real name %.2fs" % (cpu[1], cpu[0]))
    finish(pf)


# ---------------------------------------------------------------- slow readers, kills, reload


def test_slow_reader_renamed_binds_partial_writev(proxy, postgres, role):
    """Holds: statements already on the server (no injects), the client pipelines 600
    renamed Binds carrying 30 KB parameters each (splices followed by streamed tails)
    behind 24 MB of rows and does not read: the server socket fills, the writev of the
    forward region with its splices goes out in pieces (a replaced head cut mid-way);
    then the client reads: every answer is right (PostgreSQL would reject a corrupted
    Bind), in order."""
    pf = start(proxy, postgres, role, tcp_socket_buffer=32768)
    a = connect(pf, role)
    a.sock.settimeout(30)
    names = ["w%d_%s" % (i, "q" * 50) for i in range(3)]
    a.send(b"".join(P(nm, "SELECT $2::text || '-' || length($1::text) || '-%d'" % i)
                    for i, nm in enumerate(names)) + S)
    assert answer(a) == ["1"] * 3 + ["Z:I"]
    n = 600
    pad = "p" * 30000
    pipeline = (P("", BIG_OUTPUT) + B("") + E() + b"".join(
        B(names[i % 3], [pad, "A%d" % i], portal="port%d" % i) + E("port%d" % i)
        for i in range(n)) + S)
    sender = threading.Thread(target=a.sock.sendall, args=(pipeline,), daemon=True)
    sender.start()
    pfhelpers.wait_for(dead_or(pf, lambda: backend_wait_event(postgres, role[0]) ==
                               ["ClientWrite"]), 10)
    alive(pf)
    counts, vals = read_all_answers(a, 1, 60)
    sender.join(10)
    assert vals == ["A%d-30000-%d" % (i, i % 3) for i in range(n)], vals[:3]
    a.close()
    alive(pf)
    settled(pf)
    finish(pf)


def test_server_terminated_mid_pipeline_with_injects(proxy, postgres, role):
    """Holds: max_prepared_statements=1; A's pipeline binds statements that need injected
    Closes and Parses around a pg_sleep; its backend is terminated while the sleep runs, and
    A's next pipeline (after a Sync: waiting for the outcome) is queued behind. A gets the
    answers PostgreSQL sent, then an error and/or a close, never a later answer; B then
    uses the same names for other SQL on a new server and gets exactly its answers."""
    pf = start(proxy, postgres, role, max_prepared=1)
    sleeper = "SELECT pg_sleep(5) /* atkp */"
    a = connect(pf, role)
    a.send(P("z", sleeper) + P("s1", "SELECT 'A1'") + P("s2", "SELECT 'A2'") + S)
    assert answer(a) == ["1", "1", "1", "Z:I"]
    a.send(run("s1") + H + B("z") + E() + run("s2") + run("s1") + S + run("s2") + S)
    assert toks(a.read_messages(3, DEADLINE)) == row("A1")
    pfhelpers.wait_query_running(postgres, sleeper, user=role[0])
    with postgres.connect(autocommit=True) as su:
        su.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = %s",
                   (sleeper,))
    got = []
    try:
        while True:
            got.append(a.read_message(DEADLINE))
    except pgwire.Timeout:
        got.append(("<open>", b""))
    except pgwire.ProtocolError:
        got.append(("<closed>", b""))
    t = toks(got)
    assert "D:A2" not in t and "D:A1" not in t, t
    assert any(x.startswith("E:") for x in t), t
    a.abort()
    b = connect(pf, role)
    b.send(run("s1", "SELECT 'B1'") + run("z", "SELECT 'Bz'") + S)
    assert answer(b) == ["1"] + row("B1") + ["1"] + row("Bz") + ["Z:I"]
    b.close()
    settled(pf)
    finish(pf)


def test_reload_max_prepared_statements_under_load(proxy, postgres, role):
    """Holds: six clients (logged in while tracking is on) run the random pipelines of
    test_clients_share_names_on_few_servers while RELOAD switches max_prepared_statements
    between 1, 3, 200 and 0 every 0.2 s (pool of 2): every answer stays exact and carries
    the client's tag; the pool settles."""
    pf = start(proxy, postgres, role, max_prepared=200, pool_size=2)
    errors = []
    result = {}
    t = threading.Thread(target=lambda: result.update(
        r=run_clients(pf, role, 6, SECONDS, seed=313 + SEED, errors=errors)), daemon=True)
    t.start()
    params = dict(pf.params)
    i = 0
    while t.is_alive() and not errors:
        params["max_prepared_statements"] = [1, 3, 200, 0][i % 4]
        i += 1
        pf.write_ini(params)
        pfhelpers.console(pf, "RELOAD")
        time.sleep(0.2)  # pacing of the reloads, not a wait for an event
    t.join(60)
    assert not errors, errors[:3]
    assert result["r"][1] > 6, result
    alive(pf)
    settled(pf)
    finish(pf)
