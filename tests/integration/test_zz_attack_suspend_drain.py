"""SUSPEND while output of ours waits on a client's socket (conn.c suspend_holds: SUSPEND stops
reading a conn only once nothing of ours is queued to it).

The client: default receive buffer (so its window scale is 10), a 4 KiB send buffer set after
login, TCP_NODELAY; pgfunnel with tcp_socket_buffer=4096. It sends a 30 KB Query in one go (big
segments: pgfunnel's socket sizes its receive window for segments like those) and two queries
answering 512 KB each, reads nothing, and once pgfunnel's output to it waits (its receive queue
stays full) the console sends SUSPEND. The client then trickles 600 small queries in 1..7-byte
pieces and, once that is done or stuck, starts reading.

pgfunnel reading on (the fix), the trickle goes into its buffer for the client (the drain), the
client's ACKs come in, the output goes, and SUSPEND answers within a second of the client
reading.
Stopped at once (`return c->suspended;`, as PgBouncer does), the tiny segments fill the
socket's receive memory before its window: Linux drops the next one and shrinks the window to
zero at its start, and every segment the client sends from then on lies past that edge and is
dropped unread (TcpExtBeyondWindow), its retransmissions and its window updates alike (a pure
ACK carries the client's snd_nxt, 7 bytes past the edge in a capture). pgfunnel never learns
that the client's window opened: the output never goes and SUSPEND waits until
suspend_timeout (30 s here), which then drops the client. Measured on Linux 6.18: the fix
answers 0.4 s after the client reads, in session and transaction mode; the old rule not
within 8 s (with a 15 s suspend_timeout: not before it expired and dropped the client).
Without the 30 KB Query, or with a big client send buffer, the old rule does not stall.

Meant for the ASan build too (the conftest gate fails a test on any sanitizer report)."""

import fcntl
import random
import select
import socket
import struct
import termios
import threading
import time

import pytest

import pfhelpers
import pgwire
from test_admin_control import Admin
from test_zz_attack_park import alive, tx_proxy
from test_zz_attack_sockbuf import answers, login_raw, parse_messages, plain_pipeline

LONG = 30.0
# SUSPEND's answer once the client reads: well within a second (the janitor's tick) with the
# fix; never before suspend_timeout without it.
ANSWER_WITHIN = 8.0


@pytest.fixture
def role(postgres):
    return pfhelpers.new_role(postgres, "asusdrain")


def unread(sock):
    """Bytes in sock's receive queue."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


def steady(value, what, interval):
    """Waits (deadline LONG) until value() is the same twice interval seconds apart; returns
    it."""
    last = [object()]

    def same():
        now = value()
        if now == last[0]:
            return True
        last[0] = now
        return False
    pfhelpers.wait_until(same, LONG, what, interval=interval)
    return last[0]


class Client:
    """One thread: sends data[pos:limit] in 1..7-byte pieces (non-blocking, TCP_NODELAY) and
    reads nothing until `reading` is set, then reads everything too, until n_ready
    ReadyForQuery (or an error, or stop)."""

    def __init__(self, sock, data, pos, n_ready, seed=3):
        self.sock, self.data, self.n_ready = sock, data, n_ready
        self.pos = self.limit = pos
        self.rng = random.Random(seed)
        self.msgs, self.buf, self.zs, self.error = [], b"", 0, None
        self.reading = threading.Event()
        self.stop = threading.Event()
        sock.setblocking(False)
        self.t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        s, piece = self.sock, None
        try:
            while self.zs < self.n_ready and not self.stop.is_set():
                moved = False
                if self.pos < self.limit:
                    if piece is None:
                        piece = self.data[self.pos:self.pos + self.rng.choice((1, 2, 3, 7))]
                    try:
                        k = s.send(piece)
                        self.pos += k
                        piece = None if k == len(piece) else piece[k:]
                        moved = True
                    except BlockingIOError:
                        pass
                if self.reading.is_set():
                    try:
                        chunk = s.recv(65536)
                        if not chunk:
                            raise EOFError("EOF after %d answers" % self.zs)
                        self.buf += chunk
                        got, self.buf = parse_messages(self.buf)
                        self.msgs.extend(got)
                        self.zs += sum(1 for k, _ in got if k == "Z")
                        moved = True
                    except BlockingIOError:
                        pass
                if not moved:
                    select.select([s] if self.reading.is_set() else [],
                                  [s] if self.pos < self.limit else [], [], 0.05)
        except Exception as e:  # noqa: BLE001
            self.error = repr(e)[:1500]

    def start(self):
        self.t.start()
        return self


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_suspend_while_output_waits_and_client_trickles(proxy, role, mode):
    """A client whose output from pgfunnel waits (two 512 KB answers it does not read, after a
    30 KB Query sent whole) trickles 600 small queries in 1..7-byte pieces after SUSPEND, then
    reads: SUSPEND (suspend_timeout=30) must answer within 8 s of the client reading; after
    RESUME the client gets every answer in order and pgfunnel serves others."""
    pf = tx_proxy(proxy, role, pool_mode=mode, suspend_timeout=30, sbuf_loopcnt=1,
                  pkt_buf=4096, tcp_socket_buffer=4096)
    adm = Admin(pf)
    c = login_raw(pf, role)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pad = pgwire.fe_query("SELECT 'pad' -- " + "p" * 30000)
    big, big_expect = plain_pipeline("big", 2, 512 * 1024)
    small, small_expect = plain_pipeline("sm", 600, 10)
    head = pad + big
    expect = [[("pad",)]] + big_expect + small_expect
    c.sock.sendall(head)
    cl = Client(c.sock, head + small, len(head), len(expect)).start()
    try:
        queued = steady(lambda: unread(c.sock), "the client's receive queue full", 0.5)
        assert queued > 0
        t0 = time.monotonic()
        adm.send("SUSPEND")
        cl.limit = len(cl.data)
        sent = steady(lambda: cl.pos, "the trickle done or stuck", 1.0) - len(head)
        # The output still waits on the client's socket: SUSPEND cannot have answered.
        assert not adm.pending(0), "SUSPEND answered before the client read its output"
        t1 = time.monotonic()
        cl.reading.set()
        answered = pfhelpers.wait_for(lambda: adm.pending(0.05), ANSWER_WITHIN)
        t2 = time.monotonic()
        print("\n%s: %d bytes unread by the client; trickled %d of %d bytes in %.2f s after "
              "SUSPEND; SUSPEND %s %.2f s after the client began to read; %d answers then" % (
                  mode, queued, sent, len(small), t1 - t0,
                  "answered" if answered else "not answered", t2 - t1, cl.zs))
        assert answered, ("SUSPEND not answered within %.0f s of the client reading (its "
                          "output still waits on it)" % ANSWER_WITHIN)
        assert adm.answer(LONG)[0] == ["SUSPEND"]
        assert adm.run("RESUME") == "RESUME"
        cl.t.join(LONG * 2)
        assert cl.error is None, cl.error
        assert not cl.t.is_alive(), "after RESUME: %d of %d answers" % (cl.zs, len(expect))
        assert answers(cl.msgs) == expect
    finally:
        cl.stop.set()
        adm.close()  # (still suspended: the last console session gone, pgfunnel resumes)
        c.sock.close()
    alive(pf, role)
