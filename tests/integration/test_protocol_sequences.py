"""Randomised protocol sequences from two raw clients over a one-server pool (seeded, replayable).

Two pgwire clients, A and B, talk to one database entry with pool_size=1 (transaction mode, and
session mode with fewer steps). Each step one of them, chosen by a seeded random generator, does
one thing: a simple Query (one or several statements, failing or not, empty), a
Parse/Bind/[Describe]/Execute unit (with a row limit, Close, and a Flush or Sync or neither), a
lone Flush or Sync, a FunctionCall, COPY FROM STDIN (simple, or extended in libpq's shape with
the Sync before the data) with CopyData / CopyDone / CopyFail, an error at Parse, Bind or Execute,
half a message (the rest comes later or never), a disconnect (then a reconnect), or a wait.

Every value a statement returns, and every error it raises, carries a tag naming the client, its
connection and a sequence number ('A3:17'). A model of what PostgreSQL answers to each message
(ReadyForQuery per Sync/Query/FunctionCall, skip-to-Sync after an extended-protocol error, Sync
and Flush ignored during COPY IN, output buffered until a flush point) gives each client the exact
sequence of messages it must receive. The checker asserts that every message a client receives is
the next one of its own sequence: no message answering the other client, nothing out of order,
nothing extra. Whenever the driver waits, it first completes the other client's pending work (the
rest of a half message, CopyDone, Sync) so that a correct pooler owes both clients everything;
each wait has a deadline, so a hang fails too.

The model is checked against PostgreSQL itself (test_model_matches_postgres: each client on its
own backend, no pooler), so a failure through pgfunnel is pgfunnel's.

    PGFUNNEL_SEQ_SEEDS=1-200 [PGFUNNEL_SEQ_STEPS=60] pytest tests/integration/test_protocol_sequences.py

PGFUNNEL_SEQ_SEEDS is a comma list of seeds and ranges (a-b); it replaces the default seeds of
every test here. A failure prints the mode, seed, the reason and the whole step log.
"""

import collections
import fnmatch
import os
import random
import re
import select
import time

import pytest

import pfhelpers
import pgwire
from pgwire import (fe_bind, fe_close, fe_copy_data, fe_copy_done, fe_copy_fail, fe_describe,
                    fe_execute, fe_flush, fe_function_call, fe_parse, fe_query, fe_sync,
                    fe_terminate)

DEADLINE = 5.0  # seconds a correct pooler may take to deliver everything owed
TX_SEEDS, TX_STEPS = list(range(1, 21)), 40
SESSION_SEEDS, SESSION_STEPS = list(range(101, 113)), 25
DIRECT_SEEDS = [1, 2, 3]


def seeds_from_env(default):
    text = os.environ.get("PGFUNNEL_SEQ_SEEDS", "").strip()
    if not text:
        return default
    out = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.extend(range(int(lo), int(hi) + 1))
        elif part:
            out.append(int(part))
    return out


def steps_from_env(default):
    return int(os.environ.get("PGFUNNEL_SEQ_STEPS", default))


TAG_RE = re.compile(r"\b([AB])(\d+):(\d+)")


class SeqFailure(AssertionError):
    pass


# ---------------------------------------------------------------- statements
#
# kind: (SQL for a tag, columns RowDescription names, parameter count, result)
# result: ("rows", [values]) | ("error", phase, sqlstate, message) | ("copy",)


def statement(kind, tag):
    if kind == "sel":
        return "SELECT '%s'" % tag, "?column?", 0, ("rows", [tag])
    if kind == "sleep":
        return "SELECT '%s' FROM pg_sleep(0.05)" % tag, "?column?", 0, ("rows", [tag])
    if kind == "rows":
        return ("SELECT '%s-' || g FROM generate_series(1, 3) g" % tag, "?column?", 0,
                ("rows", ["%s-%d" % (tag, g) for g in (1, 2, 3)]))
    if kind == "parse_err":
        return ('SELECT 1 AS "%s" "%s"' % (tag, tag), None, 0,
                ("error", "parse", "42601", 'syntax error at or near ""%s""' % tag))
    if kind == "bind_err":
        return ("SELECT $1::int", "int4", 1,
                ("error", "bind", "22P02", 'invalid input syntax for type integer: "%s"' % tag))
    if kind == "exec_err":
        return ("SELECT (CASE WHEN random() >= 0 THEN '%s' END)::int" % tag, "int4", 0,
                ("error", "exec", "22P02", 'invalid input syntax for type integer: "%s"' % tag))
    if kind == "copy":
        return "COPY seq_copy FROM STDIN", None, 0, ("copy",)
    raise ValueError(kind)


# ---------------------------------------------------------------- the model of one connection


class Model:
    """What PostgreSQL answers, message by message, on one connection.

    expected: tokens (pgwire.token form; '*' is a wildcard) still to be received, in order.
    due: how many of the first expected tokens Postgres has flushed (must arrive); the rest
    may arrive early (a full output buffer) but need not until the next flush point.
    """

    def __init__(self):
        self.expected = collections.deque()
        self.due = 0
        self.skip = False  # an extended-protocol error: ignore all but Sync
        self.copy = None  # None | "simple" | "ext": COPY IN in progress
        self.copy_rows = 0
        self.open = False  # extended messages (or COPY) since the last Sync
        self.portal = None  # (kind, tag, rows left) of the unnamed portal
        self.stmt = None  # (kind, tag) of the unnamed statement

    def _add(self, toks, flush=False):
        self.expected.extend(toks)
        if flush:
            self.due = len(self.expected)

    def _error(self, sqlstate, msg):
        # ErrorResponse is flushed at once (elog.c send_message_to_frontend), with all before it.
        self._add(["E:%s:%s" % (sqlstate, msg)], flush=True)

    def apply(self, m):
        """Account for message m (a Msg) having been sent completely. Returns a note for the
        step log when Postgres ignores the message (else None)."""
        k = m.kind
        if self.copy is not None:
            if k == "d":
                self.copy_rows += m.info
            elif k in ("H", "S"):
                return "%s ignored during COPY IN" % k  # copyfromparse.c CopyGetData
            elif k == "c":
                mode, self.copy = self.copy, None
                self._add(["C:COPY %d" % self.copy_rows], flush=(mode == "simple"))
                if mode == "simple":
                    self._add(["Z:I"], flush=True)
            elif k == "f":
                mode, self.copy = self.copy, None
                self._error("57014", "COPY from stdin failed: %s" % m.info)
                if mode == "simple":
                    self._add(["Z:I"], flush=True)
                else:
                    self.skip = True
            else:
                raise AssertionError("generator sent %r during COPY" % k)
            return None
        if k in ("P", "B", "D", "E", "C", "H"):
            self.open = True
        if self.skip and k != "S":
            return "%s ignored (skip till Sync)" % k  # postgres.c: ignore_till_sync
        if k == "S":
            self.skip = False
            self.open = False
            self.portal = self.stmt = None  # the implicit transaction ends (portal gone)
            self._add(["Z:I"], flush=True)
        elif k == "H":
            self.due = len(self.expected)
        elif k == "Q":
            self._query(m.info)
        elif k == "F":
            self._add(["V:%s" % m.info, "Z:I"], flush=True)
        elif k == "P":
            kind, tag = m.info
            res = statement(kind, tag)[3]
            if res[0] == "error" and res[1] == "parse":
                self._error(res[2], res[3])
                self.skip = True
                self.stmt = None
            else:
                self._add(["1"])
                self.stmt = (kind, tag)
        elif k == "B":
            kind, tag = self.stmt
            res = statement(kind, tag)[3]
            if res[0] == "error" and res[1] == "bind":
                self._error(res[2], res[3])
                self.skip = True
            else:
                self._add(["2"])
                self.portal = [kind, tag, list(res[1]) if res[0] == "rows" else None]
        elif k == "D":
            which = m.info
            kind, tag = self.stmt
            _, col, nparams, res = statement(kind, tag)
            if which == "S":
                self._add(["t:%d" % nparams])
            self._add(["n"] if col is None else ["T:" + col])
        elif k == "E":
            kind, tag, rows = self.portal
            res = statement(kind, tag)[3]
            if res[0] == "error":
                self._error(res[2], res[3])
                self.skip = True
            elif res[0] == "copy":
                self.copy, self.copy_rows = "ext", 0
                self._add(["G"], flush=True)  # ReceiveCopyBegin flushes
            else:
                limit = m.info
                take = list(rows if not limit else rows[:limit])
                del rows[:len(take)]
                self._add(["D:" + v for v in take])
                if limit and len(take) == limit:
                    self._add(["s"])
                else:
                    self._add(["C:SELECT %d" % len(take)])
        elif k == "C":
            self._add(["3"])
            self.portal = None
        elif k in ("d", "c", "f"):
            return "%s ignored outside COPY" % k  # postgres.c
        else:
            raise AssertionError("no model for %r" % k)
        return None

    def _query(self, info):
        qkind, tags = info
        if qkind == "empty":
            self._add(["I", "Z:I"], flush=True)
        elif qkind == "sel":
            self._add(["T:?column?", "D:" + tags[0], "C:SELECT 1", "Z:I"], flush=True)
        elif qkind == "multi":
            for t in tags:
                self._add(["T:?column?", "D:" + t, "C:SELECT 1"])
            self._add(["Z:I"], flush=True)
        elif qkind == "err":
            self._error("22P02", 'invalid input syntax for type integer: "%s"' % tags[0])
            self._add(["Z:I"], flush=True)
        elif qkind == "multi_err":
            self._add(["T:?column?", "D:" + tags[0], "C:SELECT 1"])
            self._error("22P02", 'invalid input syntax for type integer: "%s"' % tags[1])
            self._add(["Z:I"], flush=True)
        elif qkind == "copy":
            self.copy, self.copy_rows = "simple", 0
            self._add(["G"], flush=True)
        else:
            raise AssertionError(qkind)


class Msg:
    def __init__(self, kind, data, info=None, text=""):
        self.kind, self.data, self.info, self.text = kind, data, info, text


# ---------------------------------------------------------------- a client


class Client:
    def __init__(self, run, name):
        self.run = run
        self.name = name
        self.gen = 0
        self.seq = 0
        self.conn = None
        self.model = None
        self.outbox = collections.deque()  # [Msg, bytes already sent]
        self.received = 0

    # -- connection

    def connect(self):
        self.gen += 1
        self.seq = 0
        t0 = time.monotonic()
        try:
            self.conn = self.run.login()
        except Exception as e:  # noqa: BLE001 - reported with the log
            self.conn = None
            self.run.fail("%s could not log in (%.1fs): %r" % (self.name, time.monotonic() - t0,
                                                               e))
        self.model = Model()
        self.outbox.clear()
        self.run.log("%s%d connected" % (self.name, self.gen))

    @property
    def id(self):
        return "%s%d" % (self.name, self.gen)

    def tag(self):
        self.seq += 1
        return "%s%d:%d" % (self.name, self.gen, self.seq)

    def disconnect(self, how):
        self.run.log("%s disconnects (%s) with %d owed: %s" % (
            self.id, how, len(self.model.expected), list(self.model.expected)[:8]))
        if how == "terminate":
            try:
                self.conn.send(fe_terminate())
            except OSError:
                pass
            self.conn.sock.close()
        else:
            self.conn.abort()
        self.conn = None
        self.model = None
        self.outbox.clear()

    # -- sending

    def queue(self, msgs):
        for m in msgs:
            self.outbox.append([m, 0])

    def pending_bytes(self):
        return sum(len(m.data) - sent for m, sent in self.outbox)

    def send(self, nbytes=None):
        """Send nbytes of the outbox (all by default) in one write; apply the model to every
        message whose last byte went out."""
        total = self.pending_bytes() if nbytes is None else min(nbytes, self.pending_bytes())
        chunks, done, left = [], [], total
        while left > 0:
            item = self.outbox[0]
            m, sent = item
            n = min(left, len(m.data) - sent)
            chunks.append(m.data[sent:sent + n])
            item[1] += n
            left -= n
            if item[1] == len(m.data):
                done.append(self.outbox.popleft()[0])
        data = b"".join(chunks)
        try:
            self.conn.send(data)
        except OSError as e:
            self.run.fail("%s: send failed: %r" % (self.id, e))
        names = "".join(m.kind for m in done)
        partial = " + %d/%d bytes of %s" % (self.outbox[0][1], len(self.outbox[0][0].data),
                                           self.outbox[0][0].kind) if self.outbox else ""
        self.run.log("%s sends %s%s %s" % (self.id, names or "-", partial,
                                           "; ".join(m.text for m in done if m.text)))
        notes = [n for n in (self.model.apply(m) for m in done) if n]
        if notes:
            self.run.log("%s   (Postgres: %s)" % (self.id, ", ".join(notes)))

    # -- receiving

    def pump(self):
        """Check every whole message that has arrived (never blocks)."""
        if self.conn is None:
            return
        while True:
            try:
                msg = self.conn.poll_message()
            except pgwire.ProtocolError as e:
                self.run.fail("%s: %s (still owed %s)" % (self.id, e, list(self.model.expected)))
            if msg is None:
                return
            self.check(*msg)

    def check(self, kind, payload):
        if kind in ("S", "N"):
            self.run.log("%s recv %s (ignored)" % (self.id, pgwire.token(kind, payload)))
            return
        tok = pgwire.token(kind, payload)
        self.received += 1
        for letter, gen, seq in TAG_RE.findall(tok):
            if letter != self.name:
                self.run.fail("%s received %r, an answer to %s%s's message (cross-client leak); "
                              "it was owed %s" % (self.id, tok, letter, gen,
                                                  list(self.model.expected)))
            if int(gen) != self.gen:
                self.run.fail("%s received %r, an answer to its earlier connection %s%s" % (
                    self.id, tok, letter, gen))
        exp = self.model.expected
        if not exp:
            self.run.fail("%s received %r but was owed nothing" % (self.id, tok))
        want = exp.popleft()
        self.model.due = max(0, self.model.due - 1)
        if not (fnmatch.fnmatchcase(tok, want) if "*" in want else tok == want):
            self.run.fail("%s received %r, expected %r (then %s)" % (
                self.id, tok, want, list(exp)[:10]))
        self.run.log("%s recv %s" % (self.id, tok))

    def owes(self):
        return self.conn is not None and self.model.due > 0


# ---------------------------------------------------------------- the driver


class Run:
    def __init__(self, seed, steps, mode, login, fn_oid):
        self.seed, self.steps, self.mode = seed, steps, mode
        self.login = login
        self.fn_oid = fn_oid
        self.rng = random.Random(seed)
        self.lines = []
        self.step = 0
        self.t0 = time.monotonic()
        self.clients = [Client(self, "A"), Client(self, "B")]
        self.owner = None  # session mode: the client holding the server
        self.queued = None  # session mode: the client waiting for it

    def log(self, text):
        self.lines.append("%6.3f #%02d %s" % (time.monotonic() - self.t0, self.step, text))

    def fail(self, reason):
        owed = ["%s owed %s" % (c.id, list(c.model.expected)[:10])
                for c in self.clients if c.conn is not None]
        raise SeqFailure(
            "protocol sequence failed: mode=%s seed=%d step=%d\n%s\n%s\n"
            "replay: PGFUNNEL_SEQ_SEEDS=%d PGFUNNEL_SEQ_STEPS=%d pytest -k '%s'\n"
            "---- step log ----\n%s" % (
                self.mode, self.seed, self.step, reason, "; ".join(owed), self.seed, self.steps,
                self.mode, "\n".join(self.lines[-400:])))

    # -- waiting

    def pump_all(self):
        for c in self.clients:
            c.pump()

    def wait_due(self, clients, what):
        """Read until every client in clients has received all it is owed, within DEADLINE."""
        deadline = time.monotonic() + DEADLINE
        while True:
            self.pump_all()
            late = [c for c in clients if c.owes()]
            if not late:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                self.fail("hang: %s; after %.0fs %s" % (what, DEADLINE, ", ".join(
                    "%s still owed %s" % (c.id, list(c.model.expected)[:c.model.due])
                    for c in late)))
            socks = [c.conn.sock for c in self.clients if c.conn is not None]
            select.select(socks, [], [], min(left, 0.5))

    def close_unit(self, c):
        """Whatever makes c's pending work complete: the rest of a half message, the end of a
        COPY, a Sync."""
        if c.conn is None:
            return
        if c.outbox:
            c.send()
        msgs = []
        if c.model.copy is not None:
            if self.rng.random() < 0.7:
                msgs.append(Msg("c", fe_copy_done()))
            else:
                t = c.tag()
                msgs.append(Msg("f", fe_copy_fail(t), t, "CopyFail %s" % t))
            if c.model.copy == "ext":
                msgs.append(Msg("S", fe_sync()))
        elif c.model.open or c.model.skip:
            msgs.append(Msg("S", fe_sync()))
        if msgs:
            c.queue(msgs)
            c.send()

    def settle(self, why):
        self.log("settle (%s)" % why)
        live = [c for c in self.clients if c.conn is not None]
        if self.mode != "session":
            for c in live:
                self.close_unit(c)
            self.wait_due(live, "both clients' work complete (%s)" % why)
            return
        for c in live:
            self.close_unit(c)
        if self.owner is not None:
            self.wait_due([self.owner], "the owner's work complete (%s)" % why)
        if self.queued is not None and self.queued.model.expected:
            self.log("%s leaves so that queued %s gets the server" % (self.owner.id,
                                                                       self.queued.id))
            self.drop(self.owner, "abort")
            self.wait_due([self.owner], "the queued client's work complete (%s)" % why)

    def drop(self, c, how):
        c.disconnect(how)
        if self.mode == "session":
            if self.owner is c:
                self.owner, self.queued = self.queued, None
            elif self.queued is c:
                self.queued = None

    # -- session mode ownership

    def claim(self, c):
        """Session mode: c is about to send; decide whether it holds the server or queues."""
        if self.owner is c or self.queued is c:
            return
        if self.owner is None:
            # Take the free server with a query answered before anything else happens, so who
            # holds the server does not depend on which write pgfunnel reads first.
            t = c.tag()
            c.queue([Msg("Q", fe_query("SELECT '%s'" % t), ("sel", [t]), "claim %s" % t)])
            c.send()
            self.owner = c
            self.wait_due([c], "%s's claim of the free server" % c.id)
        else:
            self.queued = c
            self.log("%s queues behind %s" % (c.id, self.owner.id))

    # -- actions

    def gen_query(self, c):
        r = self.rng.random()
        if r < 0.35:
            t = c.tag()
            return [Msg("Q", fe_query("SELECT '%s'" % t), ("sel", [t]), "Q sel %s" % t)]
        if r < 0.45:
            t = c.tag()
            return [Msg("Q", fe_query("SELECT '%s' FROM pg_sleep(0.05)" % t), ("sel", [t]),
                        "Q sleep %s" % t)]
        if r < 0.6:
            ts = [c.tag() for _ in range(self.rng.randint(2, 3))]
            sql = "; ".join("SELECT '%s'" % t for t in ts)
            return [Msg("Q", fe_query(sql), ("multi", ts), "Q multi %s" % ",".join(ts))]
        if r < 0.72:
            t = c.tag()
            return [Msg("Q", fe_query("SELECT '%s'::int" % t), ("err", [t]), "Q err %s" % t)]
        if r < 0.8:
            t1, t2 = c.tag(), c.tag()
            sql = "SELECT '%s'; SELECT '%s'::int; SELECT 'never'" % (t1, t2)
            return [Msg("Q", fe_query(sql), ("multi_err", [t1, t2]), "Q multi_err %s" % t2)]
        if r < 0.87:
            return [Msg("Q", fe_query(""), ("empty", []), "Q empty")]
        t = c.tag()
        return [Msg("Q", fe_query("COPY seq_copy FROM STDIN"), ("copy", []), "Q copy %s" % t)]

    def gen_ext(self, c):
        kind = self.rng.choice(["sel", "sel", "sel", "sleep", "rows", "rows", "parse_err",
                                "bind_err", "exec_err", "copy"])
        t = c.tag()
        sql, col, nparams, res = statement(kind, t)
        msgs = [Msg("P", fe_parse(sql), (kind, t), "%s %s" % (kind, t))]
        if self.rng.random() < 0.2:
            msgs.append(Msg("D", fe_describe("S"), "S"))
        params = [t] if nparams else []
        msgs.append(Msg("B", fe_bind(params=params)))
        if self.rng.random() < 0.25 and kind != "copy":
            msgs.append(Msg("D", fe_describe("P"), "P"))
        if kind == "rows" and self.rng.random() < 0.5:
            msgs.append(Msg("E", fe_execute(max_rows=2), 2))
            msgs.append(Msg("E", fe_execute(), 0))
        else:
            msgs.append(Msg("E", fe_execute(), 0))
        if kind == "copy":
            r = self.rng.random()
            if r < 0.6:
                msgs.append(Msg("S", fe_sync()))  # what libpq sends
            elif r < 0.8:
                msgs.append(Msg("H", fe_flush()))
            return msgs
        if self.rng.random() < 0.15:
            msgs.append(Msg("C", fe_close("P")))
        r = self.rng.random()
        if r < 0.45:
            msgs.append(Msg("S", fe_sync()))
        elif r < 0.75:
            msgs.append(Msg("H", fe_flush()))
        return msgs

    def gen_copy(self, c):
        r = self.rng.random()
        if r < 0.55:
            rows = [c.tag() for _ in range(self.rng.randint(1, 3))]
            data = "".join(t + "\n" for t in rows)
            return [Msg("d", fe_copy_data(data), len(rows), "CopyData %s" % ",".join(rows))]
        if r < 0.75:
            msgs = [Msg("c", fe_copy_done())]
        elif r < 0.9:
            t = c.tag()
            msgs = [Msg("f", fe_copy_fail(t), t, "CopyFail %s" % t)]
        else:
            # A stray Flush or Sync: PostgreSQL ignores both during COPY IN.
            return [Msg("H", fe_flush())] if self.rng.random() < 0.5 else [Msg("S", fe_sync())]
        if c.model.copy == "ext" and self.rng.random() < 0.8:
            msgs.append(Msg("S", fe_sync()))
        return msgs

    def act(self, c):
        rng = self.rng
        if c.conn is None:
            c.connect()
            return
        if c.outbox:
            r = rng.random()
            if r < 0.15:
                self.drop(c, "abort")
            elif r < 0.45:
                c.send(rng.randint(1, c.pending_bytes()))
            else:
                c.send()
            return
        r = rng.random()
        if r < 0.05:
            self.drop(c, rng.choice(["abort", "terminate"]))
            return
        if r < 0.13:
            self.settle("random wait")
            return
        if self.mode == "session":
            self.claim(c)
        if c.model.copy is not None:
            msgs = self.gen_copy(c)
        else:
            r = rng.random()
            if r < 0.3:
                msgs = self.gen_query(c)
            elif r < 0.72:
                msgs = self.gen_ext(c)
            elif r < 0.8:
                msgs = [Msg("S", fe_sync())]
            elif r < 0.85:
                msgs = [Msg("H", fe_flush())]
            else:
                t = c.tag()
                prefix, seq = t.split(":")
                msgs = [Msg("F", fe_function_call(self.fn_oid, [prefix + ":", seq]), t,
                            "FunctionCall textcat -> %s" % t)]
        c.queue(msgs)
        if rng.random() < 0.12:
            c.send(rng.randint(1, c.pending_bytes() - 1) if c.pending_bytes() > 1 else None)
        else:
            c.send()

    def play(self):
        for c in self.clients:
            c.connect()
        for self.step in range(1, self.steps + 1):
            self.act(self.rng.choice(self.clients))
            self.pump_all()
        self.step += 1
        self.settle("end")
        self.final_check()
        return self

    def final_check(self):
        """Each client, in turn holding the server, is answered exactly one more time."""
        order = [c for c in self.clients if c is self.owner] + [
            c for c in self.clients if c is not self.owner]
        for c in order:
            if c.conn is None:
                c.connect()
            if self.mode == "session" and self.owner is not None and self.owner is not c:
                self.drop(self.owner, "terminate")
            if self.mode == "session" and self.owner is None:
                self.claim(c)
            t = c.tag()
            c.queue([Msg("Q", fe_query("SELECT '%s'" % t), ("sel", [t]), "final %s" % t)])
            c.send()
            self.wait_due([c], "%s's final query" % c.id)
        for c in self.clients:
            if c.conn is not None:
                assert not c.model.expected, (c.id, list(c.model.expected))


# ---------------------------------------------------------------- fixtures and tests


@pytest.fixture(scope="module")
def textcat_oid(postgres):
    with postgres.connect(autocommit=True) as conn:
        return conn.execute(
            "SELECT 'pg_catalog.textcat(text,text)'::regprocedure::oid").fetchone()[0]


def make_table(postgres, role):
    with postgres.connect(dbname="appdb", autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS seq_copy")
        conn.execute("CREATE TABLE seq_copy (v text)")
        conn.execute("ALTER TABLE seq_copy OWNER TO %s" % role)


def run_through_pgfunnel(proxy, postgres, oid, mode, seed, steps):
    role, pw = pfhelpers.new_role(postgres, "seq")
    make_table(postgres, role)
    pf = proxy(databases={"seq": postgres.db_entry("appdb", pool_size=1, pool_mode=mode)},
               params={"query_wait_timeout": 60}, userlist={role: pw})

    def login():
        return pgwire.connect(pf.host, pf.port, role, "seq", password=pw, timeout=DEADLINE)

    run = Run(seed, steps, mode, login, oid).play()
    assert pf.is_running(), pf.all_output()[-3000:]
    assert sum(c.received for c in run.clients) > 10, "the run checked almost nothing"
    return run


@pytest.mark.parametrize("seed", seeds_from_env(TX_SEEDS))
def test_sequences_transaction_mode(proxy, postgres, textcat_oid, seed):
    run_through_pgfunnel(proxy, postgres, textcat_oid, "transaction", seed,
                         steps_from_env(TX_STEPS))


@pytest.mark.parametrize("seed", seeds_from_env(SESSION_SEEDS))
def test_sequences_session_mode(proxy, postgres, textcat_oid, seed):
    run_through_pgfunnel(proxy, postgres, textcat_oid, "session", seed,
                         steps_from_env(SESSION_STEPS))


@pytest.mark.parametrize("seed", seeds_from_env(DIRECT_SEEDS))
def test_model_matches_postgres(postgres, textcat_oid, seed):
    """The same driver straight against PostgreSQL (each client its own backend): the model of
    what Postgres answers is right, so failures through pgfunnel are pgfunnel's."""
    role, pw = pfhelpers.new_role(postgres, "seqd")
    make_table(postgres, role)

    def login():
        return pgwire.connect(postgres.host, postgres.port, role, "appdb", password=pw,
                              timeout=DEADLINE)

    run = Run(seed, steps_from_env(TX_STEPS), "direct", login, textcat_oid).play()
    assert sum(c.received for c in run.clients) > 20, "the run checked almost nothing"
