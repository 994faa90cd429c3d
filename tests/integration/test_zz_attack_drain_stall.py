"""Reproducer of the drain-cap stall (test_zz_attack_drain.py::test_oversize_message_mid_drain
xfail): a client whose output from pgfunnel waits (a Query answering 512 KB, unread) and whose
input pgfunnel holds (a named Parse behind it: prep_wait) pipelines Bind/Execute/Sync rounds:
pgfunnel keeps reading it (must_drain) up to the 64 KiB drain cap, then stops. Here the client
sends in 200-byte pieces until pgfunnel holds nearly the cap, then in `piece`-byte pieces
(TCP_NODELAY) until nothing more goes, so that pgfunnel's socket receive queue fills with tiny
segments after it stopped reading. Then the client reads (its receive buffer raised to 1 MiB)
and sends the rest; it must get every answer in order. Not within STALL_AFTER seconds, the
stall is told apart: if pgfunnel's TCP has seen the client's window open (ss: its snd_wnd to
the client > 0) only a retransmission timer backed off during the trickle is left (up to 120 s:
a segment of ours the client's 4 KiB buffer dropped), and the test waits for it (SLOW); if not,
the client's ACKs are being dropped: the stall for good (STALL), a failure.
On Linux 6.18, tcp_socket_buffer=4096: the code before keep_acks_readable() (conn.c) stalls for
good in every run of (1, 4096) and (7, 4096).

On a stall it prints both ends' `ss -tmoin`, the TcpExt drop/prune/window counters (nstat) over
the run, and, with PGFUNNEL_DRAIN_TRACE=1 and a writable tracefs (root), the kernel drop reasons (skb:kfree_skb, matched
to pgfunnel's socket through tcp:tcp_probe) of the segments pgfunnel's socket got from the
client while stalled. Run: PGFUNNEL_BIN=... [PGFUNNEL_DRAIN_SLOW=1] [PGFUNNEL_DRAIN_TRACE=1] python3 -m pytest -s\ntest_zz_attack_drain_stall.py (the trace needs root and tracefs).
"""

import os
import random
import re
import select
import socket
import subprocess
import threading
import time

import pytest

import pfhelpers
from test_zz_attack_drain import TINY, nodelay, small_buffers, socket_row
from test_zz_attack_park import alive, tx_proxy
from test_zz_attack_sockbuf import Duplex, answers, login_raw, prep_pipeline

LONG = 30.0
CAP = 64 * 1024
STALL_AFTER = 25.0
TRACE = "/sys/kernel/tracing"
COUNTERS = ("TcpExtTCPRcvQDrop", "TcpExtTCPZeroWindowDrop", "TcpExtBeyondWindow",
            "TcpExtPruneCalled", "TcpExtRcvPruned", "TcpExtTCPRcvCollapsed",
            "TcpExtTCPWantZeroWindowAdv", "TcpExtTCPToZeroWindowAdv",
            "TcpExtTCPFromZeroWindowAdv", "TcpExtOfoPruned", "TcpExtTCPOFODrop",
            "TcpExtTCPBacklogDrop", "TcpExtTCPRcvQDrop", "TcpExtTCPWinProbe")


@pytest.fixture
def role(postgres):
    return pfhelpers.new_role(postgres, "adstall")


def nstat():
    out = subprocess.run(["nstat", "-saz"], capture_output=True, text=True).stdout
    vals = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 2 and f[0] in COUNTERS:
            vals[f[0]] = int(f[1])
    return vals


def sendq(pf_port, port):
    """Send-Q of pgfunnel's socket (local port pf_port) to the client's port."""
    for line in ss(port).splitlines():
        f = line.split()
        if len(f) >= 5 and f[3].endswith(":%d" % pf_port) and f[4].endswith(":%d" % port):
            return int(f[2])
    return 0


def ss(port):
    return subprocess.run(["ss", "-tmoin", "( sport = :%d or dport = :%d )" % (port, port)],
                          capture_output=True, text=True).stdout.strip()


class Tracer:
    """A tracefs instance of its own: tcp:tcp_probe of the client's connection (both sockets)
    and skb:kfree_skb with a TCP drop reason (plus PROTO_MEM). Removed by close()."""

    def __init__(self, client_port):
        self.dir = None
        if (os.geteuid() != 0 or not os.path.isdir(TRACE + "/instances") or
                not os.environ.get("PGFUNNEL_DRAIN_TRACE")):
            return
        d = "%s/instances/pfdrain%d" % (TRACE, os.getpid())
        try:
            os.mkdir(d)
            self.dir = d
            self._w("buffer_size_kb", "16384")
            self._w("events/tcp/tcp_probe/filter",
                    "sport == %d || dport == %d" % (client_port, client_port))
            self._w("events/skb/kfree_skb/filter",
                    "reason == 20 || (reason >= 30 && reason <= 53)")
            self._w("events/tcp/tcp_probe/enable", "1")
            self._w("events/skb/kfree_skb/enable", "1")
        except OSError:
            self.close()

    def _w(self, name, text):
        with open("%s/%s" % (self.dir, name), "w") as f:
            f.write(text)

    def clear(self):
        if self.dir:
            self._w("trace", "")

    def summary(self, client_port):
        """Drop reasons per receiving socket (pgfunnel's / the client's), from the trace."""
        if not self.dir:
            return "no tracefs"
        with open(self.dir + "/trace") as f:
            text = f.read()
        sk_of = {}  # skaddr -> "pgfunnel" / "client"
        skb_to = {}
        probes = {"pgfunnel": 0, "client": 0}
        for m in re.finditer(r"tcp_probe: .*? src=\S+:(\d+) dest=\S+:(\d+) .*?data_len=(\d+) "
                             r".*?rcv_wnd=(\d+) .*?skbaddr=(\S+) skaddr=(\S+)", text):
            who = "client" if int(m.group(1)) == client_port else "pgfunnel"
            sk_of[m.group(6)] = who
            skb_to[m.group(5)] = who
            probes[who] += 1
        drops = {}
        for m in re.finditer(r"kfree_skb: skbaddr=(\S+) rx_sk=(\S+) .*?reason: (\S+)", text):
            who = sk_of.get(m.group(2)) or skb_to.get(m.group(1))
            if who:
                drops[(who, m.group(3))] = drops.get((who, m.group(3)), 0) + 1
        last = [line for line in text.splitlines() if "tcp_probe" in line][-6:]
        return "segments in: %r; drops: %r\n  last probes:\n  %s" % (
            probes, drops, "\n  ".join(re.sub(r"\s+family=AF_INET", "", x)[-330:]
                                       for x in last))

    def close(self):
        if not self.dir:
            return
        for ev in ("tcp/tcp_probe", "skb/kfree_skb"):
            try:
                self._w("events/%s/enable" % ev, "0")
            except OSError:
                pass
        try:
            os.rmdir(self.dir)
        except OSError:
            pass
        self.dir = None


def first_messages(data, n):
    pos = 0
    for _ in range(n):
        pos += 1 + int.from_bytes(data[pos + 1:pos + 5], "big")
    return pos


def trickle(sock, data, pos, piece, until, idle=1.5):
    """Sends data[pos:] in `piece`-byte pieces (non-blocking) until until(pos) or nothing went
    for idle seconds; returns pos."""
    sock.setblocking(False)
    last = time.monotonic()
    while pos < len(data) and not until(pos):
        try:
            pos += sock.send(data[pos:pos + piece])
            last = time.monotonic()
        except BlockingIOError:
            if time.monotonic() - last > idle:
                break
            select.select([], [sock], [], 0.05)
    return pos


# (1, 0) is left out: with the kernel's default buffers its 1-byte trickle takes minutes.
# (1, 4096) takes 5-8 minutes and (7, 0) sends 12 MB: they exist only with
# PGFUNNEL_DRAIN_SLOW=1 (not skips: the suite allows none).
CASES = [(7, 4096)] + ([(1, 4096), (7, 0)] if os.environ.get("PGFUNNEL_DRAIN_SLOW") else [])


@pytest.mark.timeout(900)
@pytest.mark.parametrize("piece,sockbuf", CASES)
def test_drain_cap_stall(proxy, role, piece, sockbuf):
    params = dict(TINY, pool_mode="transaction")
    if sockbuf:
        params["tcp_socket_buffer"] = sockbuf
    else:
        params.pop("tcp_socket_buffer")
    pf = tx_proxy(proxy, role, **params)
    c = login_raw(pf, role)
    small_buffers(c.sock)
    nodelay(c.sock)
    port = c.sock.getsockname()[1]
    # With the kernel's default buffers the answer must outgrow pgfunnel's send buffer (4 MiB
    # at most, tcp_wmem) for output of ours to wait in pgfunnel (the drain's condition).
    answer = (512 if sockbuf else 12 * 1024) * 1024
    data, expect = prep_pipeline("r", answer, 200 * 1024, pad=40)
    tracer = None
    try:
        # The Query and the Parse + Sync in one go; wait until the answer fills our buffers.
        pos = first_messages(data, 3)
        c.sock.sendall(data[:pos])
        # Until our output to the client waits (pgfunnel's Send-Q to it), the drain is off.
        pfhelpers.wait_until(lambda: sendq(pf.port, port) > 0, LONG,
                             "pgfunnel's output to the client waiting", lambda: ss(port))
        held = [0]

        def near_cap(p):
            if p % 2048 > 200:
                return False
            r = socket_row(pf, c.sock)
            held[0] = int(r["pkt_avail"]) if r else 0
            return held[0] >= CAP - 3000
        pos = trickle(c.sock, data, pos, 200, near_cap)
        assert held[0] >= CAP - 3000, "pgfunnel held only %d (sent %d)" % (held[0], pos)
        n0 = nstat()
        tracer = Tracer(port)
        pos = trickle(c.sock, data, pos, piece, lambda p: False)
        r = socket_row(pf, c.sock)
        held[0] = int(r["pkt_avail"]) if r else 0
        stuck = ss(port)
        n1 = nstat()
        trickled = tracer.summary(port) if tracer else "-"
        tracer.clear() if tracer else None
        small_buffers(c.sock, 1 << 20)
        box, t0 = {}, time.monotonic()

        def run():
            try:
                box["msgs"] = Duplex(c.sock, random.Random(14), sizes=(200, 1024, 4096),
                                     recv_size=65536, pause=0).run(data[pos:], len(expect),
                                                                   timeout=STALL_AFTER + 200)
            except Exception as e:  # noqa: BLE001
                box["error"] = e
        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join(STALL_AFTER)
        dt = time.monotonic() - t0
        slow = None
        if t.is_alive():
            # Did the client's window update reach pgfunnel's TCP (its snd_wnd to the client no
            # longer 0)? Then only a retransmission timer (backed off while the client did not
            # read) is left: wait for it (TCP_RTO_MAX is 120 s).
            m = re.search(r"127\.0\.0\.1:\d+\s+127\.0\.0\.1:%d\b[^\n]*\n[^\n]*snd_wnd:(\d+)" % port, ss(port))
            if m and int(m.group(1)) > 0:
                slow = ss(port)
                t.join(130)
                dt = time.monotonic() - t0
        if t.is_alive():
            n2 = nstat()
            report = ("\nSTALL piece=%d sockbuf=%d: pgfunnel held %d, client sent %d of %d; "
                      "no end %.0f s after the client began to read\n"
                      "ss when stuck:\n%s\nss now:\n%s\nnstat while trickling tiny: %r\n"
                      "nstat while reading: %r\ntrace while trickling tiny: %s\n"
                      "trace while reading: %s" % (
                          piece, sockbuf, held[0], pos, len(data), dt, stuck, ss(port),
                          {k: n1[k] - n0.get(k, 0) for k in n1 if n1[k] != n0.get(k, 0)},
                          {k: n2[k] - n1.get(k, 0) for k in n2 if n2[k] != n1.get(k, 0)},
                          trickled, tracer.summary(port) if tracer else "-"))
            print(report)
            c.sock.close()  # ends the Duplex thread with an error
            t.join(LONG)
            pytest.fail(report)
        print("\n%s piece=%d sockbuf=%d: pgfunnel held %d, client sent %d before reading; "
              "done %.1f s after; nstat while trickling tiny: %r\ntrace while trickling tiny: %s"
              % (
                  "SLOW (window update seen, retransmission timer)" if slow else "OK",
                  piece, sockbuf, held[0], pos, dt,
                  {k: n1[k] - n0.get(k, 0) for k in n1 if n1[k] != n0.get(k, 0)}, trickled))
        assert "error" not in box, box.get("error")
        assert answers(box["msgs"]) == expect
    finally:
        if tracer:
            tracer.close()
        c.sock.close()
    alive(pf, role)
