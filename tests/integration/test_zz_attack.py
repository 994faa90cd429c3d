"""Red-team attacks on the request-queue accounting, the conn layer, hostile servers and the
auth path (wip-atk). Tests marked `# FAILS:` in their docstring show a bug at the time of
writing; the others are regressions for attacks that held up.

Every value a client asks for names the client, so an answer that reaches the wrong client
is detectable."""

import signal
import socket
import struct
import threading
import time

import pytest

import pfhelpers
import pgwire


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


def parse_all(data):
    out = []
    while len(data) >= 5:
        (n,) = struct.unpack("!I", data[1:5])
        if len(data) < 1 + n:
            break
        out.append((chr(data[0]), data[5:1 + n]))
        data = data[1 + n:]
    return out


def read_n_ready(conn, n, timeout=5.0):
    """Messages up to and including the n-th ReadyForQuery."""
    conn.sock.settimeout(timeout)
    out = []
    while n > 0:
        kind, payload = conn.read_message()
        out.append((kind, payload))
        if kind == "Z":
            n -= 1
    return out


def data_values(msgs):
    vals = []
    for kind, payload in msgs:
        if kind == "D":
            (cnt,) = struct.unpack("!H", payload[:2])
            pos = 2
            for _ in range(cnt):
                (ln,) = struct.unpack("!i", payload[pos:pos + 4])
                pos += 4
                vals.append(None if ln < 0 else payload[pos:pos + ln].decode(errors="replace"))
                pos += max(ln, 0)
        elif kind == "d":
            vals.append(payload.decode(errors="replace"))
    return vals


def finish(pf):
    """pgfunnel survived, reported nothing to the sanitizers, and shuts down cleanly."""
    assert pf.is_running(), "pgfunnel died\n" + pf.all_output()[-5000:]
    assert not pfhelpers.sanitizer_reports(pf), pf.all_output()[-20000:]
    rc = pf.stop(signal.SIGQUIT, timeout=15, expect=None)
    reports = pfhelpers.sanitizer_reports(pf)
    assert rc == 0 and not reports, "exit %r after SIGQUIT, sanitizer: %s\n%s" % (
        rc, reports, pf.stderr_text()[-20000:])


BUG = "FAILS (bug, see docstring)"


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


@pytest.mark.xfail(strict=True, reason="BUG: reqq drops the 2nd pipelined CopyDone; server pinned")
def test_pipelined_copydone_for_two_copies_pins_server(proxy, role, copy_table):
    """FAILS: a simple Query holding two COPY FROM STDIN with all CopyData/CopyDone sent up
    front (legal: the server reads them as it goes) makes reqq.c count only one CopyDone
    (push() drops a second consecutive COPY_END); at the second CopyInResponse the model
    thinks the COPY is still open, the CommandComplete then sets `broken`, so
    ready_for_query() never releases the server: A holds the only server while idle and B
    waits (query_wait_timeout)."""
    pf = one_server(proxy, role)
    a = wire(pf, role)
    a.send(Q("COPY atk_copy FROM STDIN; COPY atk_copy FROM STDIN") + CD(b"A1\n") + COPY_DONE +
           CD(b"A2\n") + COPY_DONE)
    msgs = read_n_ready(a, 1)
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
