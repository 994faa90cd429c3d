"""Peering (issue 13): peer_id and [peers], cancel forwarding between pgfunnel processes that
share one port through so_reuseport, as PgBouncer 1.19+ does.

Two pgfunnel processes, peer_id 1 and 2, listen on the same TCP port; each also has a unix
socket directory of its own, which is the address [peers] gives for it (PgBouncer's documented
set-up). The cancel key a client gets says which process owns it: bytes 1-2 of the key hold the
peer id (low byte first), the two low bits of byte 7 a TTL of 3 (checked against PgBouncer
1.25.2; tests/unit/test_cancelkey.c holds the bytes it issued).
"""

import os
import random
import socket
import struct
import threading
import time

import pytest

import pfhelpers
import pgwire

SLEEP = "SELECT pg_sleep(30)"


def key_peer(pid):
    b = struct.pack("!I", pid)
    return b[1] | b[2] << 8


def key_ttl(secret):
    return secret & 3


def forge(peer_id, ttl=3, rnd=None):
    """A (pid, secret) pair carrying peer_id and ttl, the rest random."""
    rnd = rnd or random.Random()
    pid = rnd.getrandbits(31) & 0x7F0000FF | (peer_id & 0xFF) << 16 | (peer_id >> 8 & 0xFF) << 8
    secret = rnd.getrandbits(32) & ~3 | ttl
    return pid, secret


class Pair:
    """Two peered pgfunnel processes on one shared port."""

    def __init__(self, factory, postgres, pool_size=None, extra_peers="", params=None,
                 drop="flag"):
        self.factory = factory
        self.postgres = postgres
        self.port = factory.new_port()
        self.dirs = []
        for _ in range(2):
            d = pfhelpers.make_tempdir("pf-peers.")
            factory.dirs.append(d)
            self.dirs.append(d)
        self.pool_size = pool_size
        self.extra_peers = extra_peers
        self.params = dict(params or {})
        self.drop = drop
        self.pfs = [self._start(i) for i in range(2)]

    def peers_text(self, skip=()):
        lines = ["[peers]"]
        for i, d in enumerate(self.dirs):
            if i + 1 in skip:
                continue
            line = "%d = host=%s port=%d" % (i + 1, d, self.port)
            if self.pool_size is not None:
                line += " pool_size=%d" % self.pool_size
            lines.append(line)
        return "\n".join(lines) + "\n" + self.extra_peers

    def ini_text(self, i, skip=()):
        d = self.dirs[i]
        params = {
            "listen_addr": "127.0.0.1",
            "listen_port": self.port,
            "so_reuseport": 1,
            "unix_socket_dir": d,
            "peer_id": i + 1,
            "logfile": os.path.join(d, "pgfunnel.log"),
            "pidfile": os.path.join(d, "pgfunnel.pid"),
            "auth_type": "md5",
            "auth_file": os.path.join(d, "userlist.txt"),
            "admin_users": "postgres",
            "pool_mode": "transaction",
            "default_pool_size": 40,
            "verbose": 1,
        }
        params.update(self.params)
        dbs = {"appdb": self.postgres.db_entry("appdb"),
               "postgres": self.postgres.db_entry("postgres")}
        return (pfhelpers.format_ini([("databases", dbs), ("pgbouncer", params)]) +
                self.peers_text(skip))

    def write(self, i, skip=()):
        d = self.dirs[i]
        pfhelpers.write_file(os.path.join(d, "pgfunnel.ini"), self.ini_text(i, skip))

    def _start(self, i):
        d = self.dirs[i]
        self.write(i)
        pfhelpers.write_file(os.path.join(d, "userlist.txt"),
                             pfhelpers.format_userlist(self.postgres.userlist()))
        return self.factory.start(config_path=os.path.join(d, "pgfunnel.ini"), port=self.port,
                                  params={"logfile": os.path.join(d, "pgfunnel.log"),
                                          "pidfile": os.path.join(d, "pgfunnel.pid"),
                                          "unix_socket_dir": d},
                                  drop=self.drop)

    def connect(self, i=None, user="alice"):
        """A pgwire client through the shared port (i=None) or process i's unix socket."""
        pw = self.postgres.passwords[user]
        if i is None:
            return pgwire.connect("127.0.0.1", self.port, user, "appdb", pw)
        return pgwire.connect(self.dirs[i], self.port, user, "appdb", pw)

    def sock(self, i):
        return os.path.join(self.dirs[i], ".s.PGSQL.%d" % self.port)

    def cancel_via(self, i, pid, secret):
        """CancelRequest on a new connection: process i's unix socket, or the shared port."""
        pgwire.cancel_request("127.0.0.1" if i is None else self.dirs[i], self.port, pid, secret)

    def reload(self, i):
        """RELOAD on process i's console (its unix socket: the shared port could be either);
        the answer comes once the new config is in place."""
        import psycopg
        info = "host=%s port=%d user=postgres dbname=pgbouncer connect_timeout=5 password='%s'" % (
            self.dirs[i], self.port, self.postgres.passwords["postgres"])
        with psycopg.connect(info, autocommit=True, prepare_threshold=None) as conn:
            conn.execute("RELOAD")

    def show(self, i, what):
        import psycopg
        info = "host=%s port=%d user=postgres dbname=pgbouncer connect_timeout=5 password='%s'" % (
            self.dirs[i], self.port, self.postgres.passwords["postgres"])
        with psycopg.connect(info, autocommit=True, prepare_threshold=None) as conn:
            return [tuple(r) for r in conn.execute("SHOW " + what).fetchall()]

    def count(self, i, pattern):
        return sum(1 for line in self.pfs[i].log_text().splitlines() if pattern in line)

    def alive(self):
        for pf in self.pfs:
            assert pf.is_running(), pf.all_output()


@pytest.fixture
def pair(pgfunnel, postgres):
    def make(**kw):
        return Pair(pgfunnel, postgres, **kw)
    return make


def expect_canceled(conn, deadline=5.0):
    conn.sock.settimeout(deadline)
    with pytest.raises(pgwire.PgError) as exc:
        conn.read_result()
    assert exc.value.sqlstate == "57014", exc.value.fields


def still_running(conn, wait=0.5):
    """No answer to the running query within wait seconds."""
    conn.sock.settimeout(wait)
    with pytest.raises((pgwire.Timeout, socket.timeout)):
        conn.read_message(wait)


def owner(conn):
    return key_peer(conn.backend_key[0])


def start_queries(pair, conns, postgres):
    for c in conns:
        c.send_query(SLEEP)
    pfhelpers.wait_query_running(postgres, SLEEP, "alice", count=len(conns), timeout=15)


def test_keys_carry_peer_id_and_ttl(pair):
    p = pair()
    for i in range(2):
        for _ in range(5):
            with p.connect(i) as c:
                pid, secret = c.backend_key
                assert key_peer(pid) == i + 1
                assert key_ttl(secret) == 3
                assert pid >> 31 == 0
    # Keys are otherwise random.
    keys = set()
    for _ in range(10):
        with p.connect(0) as c:
            keys.add(c.backend_key)
    assert len(keys) == 10


def test_cancel_forwarded_to_owner_unix(pair, postgres):
    """Deterministic: a cancel sent to the process that does not own the client."""
    p = pair()
    for owner_i in range(2):
        other = 1 - owner_i
        with p.connect(owner_i) as c, p.connect(owner_i) as bystander:
            assert owner(c) == owner_i + 1
            fwd_before = p.count(other, "forwarding cancellation request to peer %d" % (owner_i + 1))
            c.send_query(SLEEP)
            bystander.send_query("SELECT pg_sleep(1.5), 'done'")
            pfhelpers.wait_query_running(postgres, SLEEP, "alice")
            t0 = time.monotonic()
            p.cancel_via(other, *c.backend_key)
            expect_canceled(c)
            assert time.monotonic() - t0 < 4
            # The other client's query was not touched.
            bystander.sock.settimeout(10)
            rows = bystander.read_result()
            assert rows[-1] == "done" or "done" in str(rows), rows
            assert pfhelpers.wait_for(lambda: p.count(other, "forwarding cancellation request "
                                                      "to peer %d" % (owner_i + 1)) > fwd_before, 5)
    p.alive()


def test_every_cancel_through_shared_port_succeeds(pair, postgres):
    """Many clients through the shared port; each canceled by a CancelRequest on a new TCP
    connection to the shared port, wherever the kernel puts it. Rounds go on until both
    processes have forwarded (each round's cancels must all succeed)."""
    p = pair()
    owners = set()
    for rnd in range(6):
        conns = [p.connect() for _ in range(16)]
        try:
            owners.update(owner(c) for c in conns)
            start_queries(p, conns, postgres)
            for c in conns:
                t0 = time.monotonic()
                p.cancel_via(None, *c.backend_key)
                expect_canceled(c)
                assert time.monotonic() - t0 < 4
        finally:
            for c in conns:
                c.close()
        if (p.count(0, "forwarding cancellation request to peer 2") and
                p.count(1, "forwarding cancellation request to peer 1")):
            break
    assert owners == {1, 2}
    assert p.count(0, "forwarding cancellation request to peer 2") > 0, p.pfs[0].all_output()
    assert p.count(1, "forwarding cancellation request to peer 1") > 0, p.pfs[1].all_output()
    p.alive()


def test_burst_beyond_pool_size_queues(pair, postgres):
    """pool_size=1 per peer: a burst of cancels to the wrong process waits its turn, and every
    one of them still arrives."""
    p = pair(pool_size=1)
    conns = [p.connect(0) for _ in range(8)]
    try:
        start_queries(p, conns, postgres)
        threads = [threading.Thread(target=p.cancel_via, args=(1,) + c.backend_key)
                   for c in conns]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        for c in conns:
            expect_canceled(c, 8)
    finally:
        for c in conns:
            c.close()
    p.alive()


def test_queued_forward_expires(pair, postgres):
    """pool_size=0: nothing may be in flight to the peer, the forward waits, and is given up
    after cancel_wait_timeout (logged); the query goes on."""
    p = pair(pool_size=0, params={"cancel_wait_timeout": 1})
    with p.connect(0) as c:
        c.send_query(SLEEP)
        pfhelpers.wait_query_running(postgres, SLEEP, "alice")
        n = p.pfs[1].log_len()
        p.cancel_via(1, *c.backend_key)
        p.pfs[1].wait_for_log("cancel request for peer 1 timed out waiting", after=n)
        still_running(c)
    p.alive()


def test_reload_lets_queued_forward_go(pair, postgres):
    """A forward waiting for room (pool_size=0) goes once a RELOAD gives the peer room."""
    p = pair(pool_size=0, params={"cancel_wait_timeout": 30})
    with p.connect(0) as c:
        c.send_query(SLEEP)
        pfhelpers.wait_query_running(postgres, SLEEP, "alice")
        assert p.show(1, "PEER_POOLS") == []
        p.cancel_via(1, *c.backend_key)
        still_running(c, 1.5)
        # peer_id, cl_active_cancel_req, cl_waiting_cancel_req, sv_active_cancel, sv_login
        assert p.show(1, "PEER_POOLS") == [(1, 0, 1, 0, 0)]
        p.pool_size = None
        p.write(1)
        p.reload(1)
        expect_canceled(c, 5)
        pfhelpers.wait_until(lambda: p.show(1, "PEER_POOLS") == [(1, 0, 0, 0, 0)], 5,
                             "the peer pool to empty")
    p.alive()


def test_unknown_peer_dropped(pair, postgres):
    p = pair()
    with p.connect(0) as c:
        c.send_query(SLEEP)
        pfhelpers.wait_query_running(postgres, SLEEP, "alice")
        n = p.pfs[1].log_len()
        pid, secret = forge(77)
        p.cancel_via(1, pid, secret)
        p.pfs[1].wait_for_log("could not find peer to forward request to", after=n)
        # Peer id 0 (a key from a process without peering) is an unknown peer too.
        n = p.pfs[0].log_len()
        p.cancel_via(0, *forge(0))
        p.pfs[0].wait_for_log("could not find peer to forward request to", after=n)
        still_running(c)
        p.cancel_via(0, *c.backend_key)
        expect_canceled(c)
    p.alive()


def test_forwarding_loop_ends_with_ttl(pair, postgres):
    """Peer 3 points at process 2 in process 1's [peers] and at process 1 in process 2's: a key
    of peer 3 bounces 1 -> 2 -> 1 -> 2 and is dropped there, its TTL spent."""
    p = pair()
    for i in range(2):
        p.extra_peers = "3 = host=%s port=%d\n" % (p.dirs[1 - i], p.port)
        p.write(i)
    for i in range(2):
        p.reload(i)

    def fwd3():
        return p.count(0, "to peer 3") + p.count(1, "to peer 3")

    def dropped():
        return p.count(0, "TTL was exhausted") + p.count(1, "TTL was exhausted")

    with p.connect(0) as c:
        c.send_query(SLEEP)
        pfhelpers.wait_query_running(postgres, SLEEP, "alice")
        p.cancel_via(0, *forge(3))
        pfhelpers.wait_until(lambda: dropped() == 1, 5, "the TTL drop",
                             lambda: p.pfs[0].all_output() + p.pfs[1].all_output())
        # Three forwards (TTL 3 -> 0: 1 -> 2, 2 -> 1, 1 -> 2), then process 2 drops it.
        assert fwd3() == 3, p.pfs[0].all_output() + p.pfs[1].all_output()
        assert p.count(1, "TTL was exhausted") == 1
        # A key that arrives with TTL 0 is dropped at once.
        p.cancel_via(0, *forge(3, ttl=0))
        pfhelpers.wait_until(lambda: dropped() == 2, 5, "the second TTL drop")
        assert fwd3() == 3
        still_running(c)
    p.alive()


def test_reload_changes_peers(pair, postgres):
    p = pair()
    # Process 2 forgets peer 1: a cancel for a client of 1 sent to 2 is dropped.
    p.write(1, skip=(1,))
    n = p.pfs[1].log_len()
    p.reload(1)
    with p.connect(0) as c:
        c.send_query(SLEEP)
        pfhelpers.wait_query_running(postgres, SLEEP, "alice")
        p.cancel_via(1, *c.backend_key)
        p.pfs[1].wait_for_log("could not find peer to forward request to", after=n)
        still_running(c)
        # Back: forwarded again.
        p.write(1)
        p.reload(1)
        p.cancel_via(1, *c.backend_key)
        expect_canceled(c)
    p.alive()


def test_peer_down_and_unreachable(pair, postgres):
    """A peer that is not there: the forward fails, is logged, and nothing else suffers."""
    p = pair(extra_peers="5 = host=127.0.0.1 port=1\n6 = host=/nonexistent/dir\n")
    with p.connect(0) as c:
        c.send_query(SLEEP)
        pfhelpers.wait_query_running(postgres, SLEEP, "alice")
        for peer in (5, 6):
            n = p.pfs[0].log_len()
            p.cancel_via(0, *forge(peer))
            p.pfs[0].wait_for_log("could not forward cancel request to peer %d" % peer, after=n)
        still_running(c)
        p.cancel_via(0, *c.backend_key)
        expect_canceled(c)
    p.alive()


def test_hostile_cancel_requests(pair, postgres):
    """Raw bytes: truncated CancelRequests at every length, disconnects, a flood of random keys
    with random peer ids through the shared port; afterwards a real cancel still works and no
    other client was canceled."""
    p = pair(pool_size=2)
    with p.connect(0) as c, p.connect(1) as d:
        c.send_query(SLEEP)
        d.send_query(SLEEP)
        pfhelpers.wait_query_running(postgres, SLEEP, "alice", count=2)
        good = struct.pack("!IIII", 16, 80877102, *forge(2))
        for i in range(2):
            for cut in range(len(good)):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(p.sock(i))
                s.sendall(good[:cut])
                s.close()
        # A CancelRequest followed by junk, and one with a wrong length.
        for payload in (good + b"junk" * 10, struct.pack("!IIIII", 20, 80877102, 1, 2, 3)):
            s = socket.create_connection(("127.0.0.1", p.port))
            s.sendall(payload)
            s.settimeout(5)
            try:
                while s.recv(1024):
                    pass
            except OSError:
                pass
            s.close()
        rnd = random.Random(1313)
        threads = []
        for _ in range(8):
            def flood(seed):
                r = random.Random(seed)
                for _ in range(40):
                    pid, secret = forge(r.choice([0, 1, 2, 3, 9, 255, 256, 16383, 65535]),
                                        r.randrange(4), r)
                    try:
                        p.cancel_via(None, pid, secret)
                    except OSError:
                        pass
            threads.append(threading.Thread(target=flood, args=(rnd.random(),)))
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        p.alive()
        still_running(c)
        still_running(d)
        p.cancel_via(None, *c.backend_key)
        expect_canceled(c)
        still_running(d)
        p.cancel_via(None, *d.backend_key)
        expect_canceled(d)
    p.alive()


# ------------------------------------------------------------------ a PgBouncer 1.25 peer

PGBOUNCER_125 = os.environ.get("PGBOUNCER_125_BIN", "/work/shared/anchors/pgbouncer-1.25.2")


@pytest.mark.skipif(not os.access(PGBOUNCER_125, os.X_OK), reason="PgBouncer 1.25 not available")
def test_pgbouncer_125_peer_interoperates(pair, postgres):
    """pgfunnel (peer 1) and PgBouncer 1.25 (peer 2) on one port: each forwards the other's
    cancels, so their keys share a layout. Only a cross-check: skipped without the binary."""
    import subprocess
    # SO_REUSEPORT wants one uid for every socket on the port: pgfunnel binds as the run
    # user too (it would bind as root and then drop with -u).
    p = pair(drop="exec")
    # Process 2 becomes PgBouncer: stop the pgfunnel there, start PgBouncer on its config.
    p.pfs[1].stop()
    d = p.dirs[1]
    ini = os.path.join(d, "pgbouncer.ini")
    text = p.ini_text(1)
    pfhelpers.write_file(ini, text)
    proc = subprocess.Popen(pfhelpers.as_run_user([PGBOUNCER_125, ini]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pfhelpers.wait_until(lambda: pfhelpers.is_socket(p.sock(1)), 10, "PgBouncer's socket",
                             lambda: pfhelpers.read_text(os.path.join(d, "pgfunnel.log")))
        for owner_i, via in ((0, 1), (1, 0)):
            with p.connect(owner_i) as c:
                assert owner(c) == owner_i + 1
                assert key_ttl(c.backend_key[1]) == 3
                c.send_query(SLEEP)
                pfhelpers.wait_query_running(postgres, SLEEP, "alice")
                p.cancel_via(via, *c.backend_key)
                expect_canceled(c)
    finally:
        proc.terminate()
        proc.wait(10)


class BlackHole:
    """A TCP listener that accepts, records what it receives and never answers or closes."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.data = []
        self.lock = threading.Lock()
        self.stop = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        self.sock.settimeout(0.1)
        while not self.stop:
            try:
                s, _ = self.sock.accept()
            except OSError:
                continue
            s.settimeout(2)
            try:
                data = b""
                while len(data) < 16:
                    chunk = s.recv(16 - len(data))
                    if not chunk:
                        break
                    data += chunk
            except OSError:
                pass
            with self.lock:
                self.conns.append(s)
                self.data.append(data)

    def received(self):
        with self.lock:
            return list(self.data)

    def close(self):
        self.stop = True
        self.thread.join(5)
        for s in self.conns:
            s.close()
        self.sock.close()


def test_silent_peer_bounded_and_shutdown(pair, postgres):
    """A peer that accepts and never answers: forwards beyond pool_size wait, the one in flight
    is given up after cancel_wait_timeout, the TTL on the wire is one less; a shutdown with a
    forward in flight is clean (the sanitizer gate checks leaks)."""
    hole = BlackHole()
    try:
        p = pair(extra_peers="5 = host=127.0.0.1 port=%d pool_size=1\n" % hole.port,
                 params={"cancel_wait_timeout": 2})
        keys = [forge(5, rnd=random.Random(i)) for i in range(3)]
        for k in keys:
            p.cancel_via(0, *k)
        pfhelpers.wait_until(lambda: len(hole.received()) == 1, 5, "one forward in flight")
        pid, secret = struct.unpack("!II", hole.received()[0][8:16])
        assert struct.unpack("!II", hole.received()[0][:8]) == (16, 80877102)
        assert (pid, secret) == (keys[0][0], keys[0][1] - 1)  # TTL 3 -> 2, nothing else
        assert p.show(0, "PEER_POOLS") == [(5, 1, 2, 1, 0)]
        # Everything is given up in time (at most pool_size=1 at once: never 2 in flight).
        pfhelpers.wait_until(lambda: p.show(0, "PEER_POOLS") == [(5, 0, 0, 0, 0)], 15,
                             "the silent peer's forwards to be given up",
                             lambda: p.pfs[0].all_output())
        assert p.count(0, "cancel request forwarded to peer 5 timed out") >= 1
        # Shut down with a forward in flight.
        n = len(hole.received())
        p.cancel_via(0, *forge(5))
        pfhelpers.wait_until(lambda: len(hole.received()) == n + 1, 5, "a new forward")
        p.pfs[0].stop()
        p.pfs[1].stop()
    finally:
        hole.close()


@pytest.mark.parametrize("reply", [b"\xff" * 64, struct.pack("!cI", b"E", 0x7FFFFFF0), b"N"])
def test_peer_answering_garbage(pair, postgres, reply):
    """A 'peer' that answers the forwarded CancelRequest with junk (a byte, a huge header, a
    stream of 0xff): the forward ends at once, nothing else is disturbed."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held = []

    def serve():
        srv.settimeout(10)
        try:
            for _ in range(3):
                s, _ = srv.accept()
                s.recv(16)
                s.sendall(reply)
                held.append(s)  # kept open: only the reply can end the forward
        except OSError:
            pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        p = pair(extra_peers="5 = host=127.0.0.1 port=%d pool_size=1\n" % srv.getsockname()[1],
                 params={"cancel_wait_timeout": 30})
        with p.connect(0) as c:
            c.send_query(SLEEP)
            pfhelpers.wait_query_running(postgres, SLEEP, "alice")
            for _ in range(3):
                p.cancel_via(0, *forge(5))
            # All three went through the single slot one after another, long before
            # cancel_wait_timeout: each ended on the junk reply.
            pfhelpers.wait_until(lambda: len(held) == 3 and
                                 p.show(0, "PEER_POOLS") == [(5, 0, 0, 0, 0)], 10,
                                 "the junk replies to end the forwards",
                                 lambda: p.pfs[0].all_output())
            still_running(c)
            p.cancel_via(None, *c.backend_key)
            expect_canceled(c)
        p.alive()
    finally:
        srv.close()
        for s in held:
            s.close()


def test_peer_by_host_name_resolved_through_dns_cache(pair, postgres):
    """A peer named by a host name (not an address) is reached through the worker's DNS cache;
    a name that does not resolve drops the forward with a log line and disturbs nothing."""
    # Dual-stack listener: "localhost" may resolve to ::1 as well as 127.0.0.1.
    srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.bind(("::", 0))
    srv.listen(16)
    got = []

    def serve():
        srv.settimeout(10)
        try:
            while len(got) < 2:
                s, _ = srv.accept()
                got.append(pgwire.recv_exact(s, 16))
                s.close()  # the peer's answer: it dealt with the request
        except OSError:
            pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        p = pair(extra_peers="5 = host=localhost port=%d\n6 = host=no-such-peer.invalid port=%d\n"
                 % (srv.getsockname()[1], srv.getsockname()[1]))
        keys = [forge(5, rnd=random.Random(i)) for i in range(2)]
        for k in keys:
            p.cancel_via(0, *k)
        pfhelpers.wait_until(lambda: len(got) == 2, 10, "two forwards by name",
                             lambda: p.pfs[0].all_output())
        assert sorted(struct.unpack("!IIII", g)[2:] for g in got) == sorted(
            (pid, secret - 1) for pid, secret in keys)
        p.cancel_via(0, *forge(6))
        pfhelpers.wait_until(lambda: p.count(0, "could not forward cancel request to peer 6") >= 1,
                             10, "the unresolvable peer's forward to be dropped",
                             lambda: p.pfs[0].all_output())
        with p.connect(0) as c:
            assert c.simple_query("SELECT 1") == [("1",)]
    finally:
        srv.close()
        t.join(5)
