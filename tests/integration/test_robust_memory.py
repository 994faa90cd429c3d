"""Memory a peer can make pgfunnel hold is bounded (security issue, item 3).

- A console user that pipelines SHOW CONFIG without reading: pgfunnel stops reading and
  answering once 256 KiB of its replies wait in the socket, and every reply still arrives, in
  order, once the client reads.
- A stream of SSLRequests whose 'N' answers are never read: bounded the same way.
- Before login, an authentication message larger than pkt_buf is refused (08P01) instead of
  being held (up to 1 MiB before).

Each test checks RSS growth of the pgfunnel process against a bound far below what the unbounded
code reached, keeps a canary client working throughout, and ends with a clean shutdown."""

import socket
import struct
import time

import pytest

import pfhelpers
import pgwire
from test_robust_clients import SSL_REQUEST, canary, finish, raw, read_until_closed, assert_fatal

# What the unbounded code grew by in these scenarios was hundreds of MiB; the bound leaves room
# for allocator and sanitizer noise.
RSS_GROWTH_LIMIT_KIB = 30 * 1024


@pytest.fixture
def canary_role(postgres):
    return pfhelpers.new_role(postgres, "mcan")


def start(proxy, canary_role, params=None):
    return proxy(params=params, userlist={canary_role[0]: canary_role[1]})


def send_until_blocked(sock, chunk, max_bytes, stall=2.0, whole=True):
    """Sends chunk repeatedly until max_bytes went out or the peer has taken nothing for
    stall seconds (it stopped reading). With whole, the chunk in flight is completed (the
    peer must read on later). Returns the number of chunks sent."""
    sock.setblocking(False)
    sent = 0
    pending = b""
    last_progress = time.monotonic()
    while sent < max_bytes:
        if not pending:
            pending = chunk
        try:
            n = sock.send(pending)
        except BlockingIOError:
            if time.monotonic() - last_progress > stall:
                break
            time.sleep(0.01)
            continue
        pending = pending[n:]
        sent += n
        last_progress = time.monotonic()
    sock.setblocking(True)
    # Whole chunks only: finish the one in flight so the stream stays well formed.
    if whole and pending and pending is not chunk:
        sock.settimeout(30)
        sock.sendall(pending)
        sent += len(pending)
    return sent // len(chunk)


def settled_rss_kib(pid, quiet=1.0, timeout=20.0):
    """RSS of pid once it has not changed for quiet seconds (pgfunnel done with its input)."""
    last, since = pfhelpers.proc_rss_kib(pid), time.monotonic()
    deadline = since + timeout
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = pfhelpers.proc_rss_kib(pid)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


def test_console_replies_do_not_pile_up(proxy, canary_role):
    pf = start(proxy, canary_role)
    can = canary(pf, canary_role)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect((pf.host, pf.port))
    conn = pgwire.Connection(s).login("postgres", "pgbouncer", "pg-super-secret")
    one = conn.simple_query("SHOW CONFIG")
    assert len(one) > 50
    rss0 = pfhelpers.proc_rss_kib(pf.pid)

    query = pgwire.message(b"Q", b"SHOW CONFIG;\0")
    n = send_until_blocked(s, query, 12000 * len(query))
    grown = settled_rss_kib(pf.pid) - rss0
    print("console: %d queries sent, RSS grew by %d KiB" % (n, grown))
    assert grown < RSS_GROWTH_LIMIT_KIB, "RSS grew by %d KiB for %d unread replies" % (grown, n)
    can.expect_progress()

    # Nothing was lost: every query is answered, in order, with the whole result.
    s.settimeout(60)
    for i in range(n):
        rows = conn.read_result()
        assert len(rows) == len(one), "reply %d of %d has %d rows" % (i, n, len(rows))
    conn.close()
    # Generous: tens of MiB of replies go out on a shared, possibly sanitized, 2-core machine.
    can.check(max_latency=10.0)
    finish(pf)


def test_repeated_ssl_requests_refused(proxy, canary_role):
    """SSLRequests that a client sends without reading the answers cannot pile 'N's up in
    pgfunnel's memory: as in Postgres, the second one (after 'N') is refused as an unknown
    protocol and the connection closes; other clients are not disturbed."""
    pf = start(proxy, canary_role)
    can = canary(pf, canary_role)
    s = raw(pf)
    try:
        s.sendall(SSL_REQUEST * 4096)
    except (BrokenPipeError, ConnectionResetError):
        pass  # closed while we were still sending: that is the point
    data = read_until_closed(s)
    assert data[:1] == b"N", data[:20]
    assert_fatal(data[1:], "08P01",
                 "unsupported frontend protocol 1234.5679: server supports 3.0 to 3.0")
    can.expect_progress()
    can.check()
    finish(pf)


def test_auth_message_larger_than_pkt_buf(proxy, canary_role, postgres):
    pf = start(proxy, canary_role, params={"pkt_buf": "4096"})
    can = canary(pf, canary_role)
    s = raw(pf)
    s.sendall(pgwire.startup_message({"user": canary_role[0], "database": "appdb"}))
    kind, payload = pgwire.Connection(s).read_message()
    assert kind == "R" and struct.unpack("!I", payload[:4])[0] == 5, (kind, payload)
    # An md5 answer padded far past pkt_buf: refused before it is held whole.
    big = b"md5" + b"0" * 8000 + b"\0"
    s.sendall(pgwire.message(b"p", big))
    assert_fatal(read_until_closed(s), "08P01", "authentication message too long (pkt_buf)")
    # A normal login on the same pgfunnel still works.
    with pgwire.connect(pf.host, pf.port, canary_role[0], "appdb", canary_role[1]) as c:
        assert c.simple_query("SELECT 1") == [("1",)]
    can.expect_progress()
    can.check()
    finish(pf)
