"""Host lists, load_balance_hosts and the DNS cache (issue 13), as PgBouncer 1.25 does them.

Two dedicated Postgres clusters listen on the SAME port, one on 127.0.0.1 and one on
127.0.0.2 (a [databases] host list shares one port), so `host=127.0.0.1,127.0.0.2` is a real
two-server list; inet_server_addr() and SHOW SERVERS tell which one served. Tests stop one
of them (pg_ctl stop -m fast) mid-run; an autouse fixture starts them again afterwards.

The DNS tests use names /etc/hosts resolves without any network (localhost) and a reserved
name that never resolves (RFC 2606 .invalid); the logs (verbose=1) and SHOW DNS_HOSTS show
the cache at work. The address-change logic (servers to an address that vanished are closed)
is covered by tests/unit/test_dns.c, since no local name changes address without editing
/etc/hosts.
"""

import os
import socket
import threading
import time

import psycopg
import pytest

import pfhelpers
import pgwire

HOST_A = "127.0.0.1"
HOST_B = "127.0.0.2"


@pytest.fixture(scope="module")
def pair(run_user):
    """Two clusters on HOST_A:port and HOST_B:port (the same port)."""
    a = pfhelpers.start_dedicated_cluster()
    b = None
    try:
        b = pfhelpers.start_dedicated_cluster(
            "listen_addresses = '%s'\nport = %d\n" % (HOST_B, a.port))
        b.own_port = b.port
        b.host, b.port = HOST_B, a.port
        yield a, b
    finally:
        if b is not None:
            b.port = getattr(b, "own_port", b.port)
            b.destroy()
        a.destroy()


def running(cluster):
    return os.path.exists(os.path.join(cluster.datadir, "postmaster.pid"))


def pg_start(cluster):
    res = pfhelpers.pg_ctl(cluster, "-l", cluster.logfile, "-w", "-t", "60", "start")
    assert res.returncode == 0, res.stderr + pfhelpers.read_text(cluster.logfile)[-2000:]


def pg_stop(cluster, mode="fast"):
    res = pfhelpers.pg_ctl(cluster, "-m", mode, "-w", "-t", "60", "stop")
    assert res.returncode == 0, res.stderr


@pytest.fixture(autouse=True)
def both_running(request):
    """Every test starts (and leaves) with both clusters up."""
    if "pair" not in request.fixturenames:
        yield
        return
    a, b = request.getfixturevalue("pair")
    for c in (a, b):
        if not running(c):
            pg_start(c)
    yield
    for c in (a, b):
        if not running(c):
            pg_start(c)


def start_lb(pgfunnel, pair, mode, params=None, hosts=None):
    a, b = pair
    p = {"auth_type": "md5", "admin_users": "postgres", "server_login_retry": 1,
         "default_pool_size": 10, "pool_mode": "session", "verbose": 1}
    p.update(params or {})
    d = {"lb": "host=%s port=%d dbname=postgres load_balance_hosts=%s" % (
        hosts or "%s,%s" % (HOST_A, HOST_B), a.port, mode)}
    return pgfunnel.start(params=p, databases=d, userlist=a.userlist())


def connect(pf, dbname="lb", **kw):
    return pfhelpers.proxy_connect(pf, "postgres", dbname, "pg-super-secret", autocommit=True,
                                   **kw)


def served_by(conn):
    return conn.execute("SELECT host(inet_server_addr())").fetchone()[0]


def server_addrs(pf, db="lb"):
    return sorted(r["addr"] for r in pfhelpers.show(pf, "SERVERS") if r["database"] == db)


def test_round_robin_each_new_server_to_the_next_host(pgfunnel, pair):
    pf = start_lb(pgfunnel, pair, "round-robin")
    conns = [connect(pf) for _ in range(4)]  # session mode: one server each
    try:
        hosts = [served_by(c) for c in conns]
        assert sorted(hosts) == [HOST_A, HOST_A, HOST_B, HOST_B], hosts
        # Server connections are opened one at a time, each to the next host in turn.
        assert hosts[0] != hosts[1] and hosts[2] != hosts[3], hosts
        assert server_addrs(pf) == [HOST_A, HOST_A, HOST_B, HOST_B]
    finally:
        for c in conns:
            c.close()


def test_disable_stays_on_first_host(pgfunnel, pair):
    pf = start_lb(pgfunnel, pair, "disable")
    conns = [connect(pf) for _ in range(4)]
    try:
        assert [served_by(c) for c in conns] == [HOST_A] * 4
        assert server_addrs(pf) == [HOST_A] * 4
    finally:
        for c in conns:
            c.close()


def query_loop(pf, n, dbname="lb", deadline=30.0):
    """n short client sessions, one after the other: (hosts served, errors)."""
    hosts, errors = [], []
    end = time.monotonic() + deadline
    while len(hosts) < n and time.monotonic() < end:
        try:
            with connect(pf, dbname) as c:
                hosts.append(served_by(c))
        except psycopg.Error as e:
            errors.append(str(e))
            time.sleep(0.05)
    return hosts, errors


def test_round_robin_survives_a_stopped_host(pgfunnel, pair):
    a, b = pair
    pf = start_lb(pgfunnel, pair, "round-robin",
                  params={"pool_mode": "transaction", "default_pool_size": 4})
    # Four servers, two per host.
    conns = [connect(pf) for _ in range(4)]
    for c in conns:
        c.execute("BEGIN")
        served_by(c)
    for c in conns:
        c.execute("COMMIT")
        c.close()
    assert server_addrs(pf) == [HOST_A, HOST_A, HOST_B, HOST_B]
    pg_stop(b)
    # Postgres ended host B's backends: pgfunnel sees those servers go.
    pfhelpers.wait_until(lambda: server_addrs(pf) == [HOST_A, HOST_A], 10,
                         "the servers to the stopped host to be closed",
                         lambda: pfhelpers.show(pf, "SERVERS"))
    hosts, errors = query_loop(pf, 40)
    # Clients keep working on host A: the idle servers there serve them, and a new server
    # connection that goes to B (its turn) fails without touching a client that a server
    # can still serve.
    assert hosts == [HOST_A] * 40, (hosts, errors)
    assert errors == []
    # Now make it open new servers: several clients at once, in transactions.
    many = [connect(pf) for _ in range(4)]
    try:
        got, errs = [], []
        for c in many:
            try:
                c.execute("BEGIN")
                got.append(served_by(c))
            except psycopg.Error as e:
                errs.append(str(e))
        assert got and set(got) == {HOST_A}, (got, errs)
    finally:
        for c in many:
            c.close()
    # B back: round-robin uses it again.
    pg_start(b)

    def both_again():
        hosts2, _ = query_loop(pf, 1)
        with_b = []
        cs = []
        try:
            for _ in range(4):
                c = connect(pf)
                cs.append(c)
                c.execute("BEGIN")
                with_b.append(served_by(c))
        except psycopg.Error:
            return False
        finally:
            for c in cs:
                c.close()
        return HOST_B in with_b or HOST_B in server_addrs(pf)
    pfhelpers.wait_until(both_again, 20, "host B to be used again")


def test_disable_fails_over_and_does_not_come_back(pgfunnel, pair):
    a, b = pair
    pf = start_lb(pgfunnel, pair, "disable", params={"pool_mode": "transaction"})
    hosts, errors = query_loop(pf, 5)
    assert hosts == [HOST_A] * 5 and errors == []
    pg_stop(a)
    pfhelpers.wait_until(lambda: server_addrs(pf) == [], 10,
                         "the servers to the stopped host to be closed")
    # The next server connection goes to A and fails; the one after goes to B and stays there.
    hosts, errors = query_loop(pf, 10)
    assert hosts == [HOST_B] * 10, (hosts, errors)
    # As PgBouncer 1.25: the client that waited through the failed attempt waits until the
    # next one reaches B (pf_pool_server_failed: another host is left to try). No error.
    assert errors == [], errors
    assert server_addrs(pf) == [HOST_B]
    # A comes back: disable does not move back by itself.
    pg_start(a)
    conns = [connect(pf) for _ in range(3)]
    try:
        for c in conns:
            c.execute("BEGIN")
        assert [served_by(c) for c in conns] == [HOST_B] * 3
    finally:
        for c in conns:
            c.close()
    # Only a failure of B moves it on again: back to A.
    pg_stop(b)
    pfhelpers.wait_until(lambda: server_addrs(pf) == [], 10,
                         "the servers to host B to be closed")
    hosts, errors = query_loop(pf, 5)
    assert hosts == [HOST_A] * 5, (hosts, errors)


# ---------------------------------------------------------------- DNS


def start_dns(proxy, postgres, host, params=None):
    p = {"server_login_retry": 1, "verbose": 1, "pool_mode": "transaction"}
    p.update(params or {})
    d = {"named": "host=%s port=%d dbname=postgres" % (host, postgres.port)}
    return proxy(params=p, databases=d)


def named(pf):
    return connect(pf, "named")


def dns_hosts(pf):
    return {r["hostname"]: r for r in pfhelpers.show(pf, "DNS_HOSTS")}


def count_lines(pf, needle):
    return sum(needle in line for line in pf.log_text().splitlines())


def test_dns_name_cached(proxy, postgres):
    pf = start_dns(proxy, postgres, "localhost")
    with named(pf) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
    rows = dns_hosts(pf)
    assert list(rows) == ["localhost"]
    assert rows["localhost"]["addrs"] == "127.0.0.1:0"
    assert 0 <= rows["localhost"]["ttl"] <= 15
    lists = {r["list"]: r["items"] for r in pfhelpers.show(pf, "LISTS")}
    assert lists["dns_names"] == 1 and lists["dns_queries"] == 0
    # More server connections within dns_max_ttl: no new lookup.
    pfhelpers.console(pf, "RECONNECT named")
    with named(pf) as c:
        assert c.execute("SELECT 2").fetchone() == (2,)
    assert count_lines(pf, "DNS: localhost: 1 address(es)") == 1


def test_dns_answer_expires(proxy, postgres):
    pf = start_dns(proxy, postgres, "localhost", {"dns_max_ttl": 1})
    with named(pf) as c:
        c.execute("SELECT 1")
    assert count_lines(pf, "DNS: localhost: 1 address(es)") == 1
    pfhelpers.wait_until(lambda: dns_hosts(pf)["localhost"]["ttl"] == 0, 5,
                         "the answer to expire")
    time.sleep(1.1)  # ttl is shown in whole seconds: past the expiry for sure
    pfhelpers.console(pf, "RECONNECT named")
    pfhelpers.wait_until(lambda: not [r for r in pfhelpers.show(pf, "SERVERS")
                                      if r["database"] == "named"], 10, "servers closed")
    with named(pf) as c:
        c.execute("SELECT 1")
    assert count_lines(pf, "DNS: localhost: 1 address(es)") == 2


def test_dns_failure_cached(proxy, postgres):
    pf = start_dns(proxy, postgres, "no-such-host.invalid",
                   {"dns_nxdomain_ttl": 3, "server_login_retry": 0})
    with pytest.raises(psycopg.OperationalError) as ei:
        named(pf)
    assert "server DNS lookup failed" in str(ei.value)
    assert count_lines(pf, "DNS lookup failed: no-such-host.invalid") == 1
    row = dns_hosts(pf)["no-such-host.invalid"]
    assert row["addrs"] == "" and 0 <= row["ttl"] <= 3
    # Within dns_nxdomain_ttl: refused at once from the cache, no new lookup.
    with pytest.raises(psycopg.OperationalError) as ei:
        named(pf)
    assert "server DNS lookup failed" in str(ei.value)
    assert count_lines(pf, "DNS lookup failed: no-such-host.invalid") == 1
    # After it: looked up again.
    pfhelpers.wait_until(lambda: dns_hosts(pf)["no-such-host.invalid"]["ttl"] == 0, 6,
                         "the failure to expire")
    time.sleep(1.1)
    with pytest.raises(psycopg.OperationalError):
        named(pf)
    assert count_lines(pf, "DNS lookup failed: no-such-host.invalid") == 2
    # The other databases are not disturbed.
    with pfhelpers.proxy_connect(pf, "alice", "appdb", "alice-scram-secret") as c:
        assert c.execute("SELECT 1").fetchone() == (1,)


def test_dns_name_in_host_list(pgfunnel, pair):
    # A name and an address in one list, round-robin: both serve.
    pf = start_lb(pgfunnel, pair, "round-robin", hosts="localhost,%s" % HOST_B)
    conns = [connect(pf) for _ in range(2)]
    try:
        assert sorted(served_by(c) for c in conns) == [HOST_A, HOST_B]
        assert dns_hosts(pf)["localhost"]["addrs"] == "127.0.0.1:0"
    finally:
        for c in conns:
            c.close()


# ---------------------------------------------------------------- hostile


def test_clients_vanish_while_name_resolves(proxy, postgres):
    """dns_max_ttl=0: every server connection waits for a lookup. Clients (trust auth, so the
    startup alone makes the pool open a server) drop at each step: right after the startup
    packet, after half of it, after the first answer byte; then logins racing with lookups,
    half of them abandoned at once. pgfunnel stays consistent and keeps serving."""
    pf = start_dns(proxy, postgres, "localhost",
                   {"dns_max_ttl": 0, "default_pool_size": 2, "auth_type": "trust"})
    startup = pgwire.startup_message({"user": "postgres", "database": "named"})
    for i in range(30):
        s = pgwire.open_socket(pf.host, pf.port, 5)
        try:
            if i % 3 == 0:
                s.sendall(startup[: len(startup) // 2])
            elif i % 3 == 1:
                s.sendall(startup)
            else:
                s.sendall(startup)
                try:
                    s.recv(1)
                except OSError:
                    pass
        finally:
            s.close()
        if i % 10 == 9:
            pfhelpers.console(pf, "RECONNECT named")

    def one(k):
        try:
            c = named(pf)
            if k % 2:
                c.close()
                return
            c.execute("SELECT 1")
            c.close()
        except psycopg.Error:
            pass
    ts = [threading.Thread(target=one, args=(k,)) for k in range(20)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    with named(pf) as c:
        assert c.execute("SELECT 42").fetchone() == (42,)
    assert pf.is_running()
    pfhelpers.wait_until(lambda: {r["list"]: r["items"] for r in pfhelpers.show(pf, "LISTS")}
                         ["dns_queries"] == 0, 10, "no lookup left in flight")


def test_reload_and_shutdown_with_lookups_pending(proxy, postgres):
    pf = start_dns(proxy, postgres, "localhost", {"dns_max_ttl": 0})
    with named(pf) as c:
        c.execute("SELECT 1")
    # A name too long for DNS: refused cleanly, others unaffected.
    long_name = "a" * 300
    d = dict(pf.databases)
    d["toolong"] = "host=%s port=%d dbname=postgres" % (long_name, postgres.port)
    pf.write_ini(databases=d)
    pfhelpers.console(pf, "RELOAD")
    with pytest.raises(psycopg.OperationalError):
        connect(pf, "toolong")
    with named(pf) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
    # Logins in flight while the process shuts down.
    ts = []
    for _ in range(5):
        t = threading.Thread(target=lambda: query_loop(pf, 1, "named", deadline=3))
        t.start()
        ts.append(t)
    pf.stop()
    for t in ts:
        t.join(10)


# ---------------------------------------------------------------- resolv_conf and zone checks


class FakeDns:
    """A tiny authoritative DNS server on 127.0.0.1:<free port> (UDP): A records from
    self.a {name: [ipv4, ...]}, SOA serials from self.soa {zone: serial}; NXDOMAIN otherwise.
    Counts the queries it answered by (name, type)."""

    def __init__(self):
        self.a, self.soa, self.queries = {}, {}, {}
        self.evil = None  # f(qid, question, qtype) -> reply bytes, replacing the real answer
        self.port = pfhelpers.alloc_port()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.settimeout(0.2)
        self.stopped = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @staticmethod
    def _name(labels):
        return b"".join(bytes([len(l)]) + l.encode() for l in labels.split(".") if l) + b"\0"

    def _serve(self):
        import struct
        while not self.stopped:
            try:
                data, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            if len(data) < 12:
                continue
            qid, _flags, qd = struct.unpack("!HHH", data[:6])
            pos, labels = 12, []
            while pos < len(data) and data[pos]:
                n = data[pos]
                labels.append(data[pos + 1:pos + 1 + n].decode("ascii", "replace"))
                pos += 1 + n
            pos += 1
            if qd != 1 or pos + 4 > len(data):
                continue
            qtype, _qclass = struct.unpack("!HH", data[pos:pos + 4])
            question = data[12:pos + 4]
            name = ".".join(labels).lower()
            self.queries[(name, qtype)] = self.queries.get((name, qtype), 0) + 1
            answers = []
            known = name in self.a or name in self.soa
            if qtype == 1:
                for ip in self.a.get(name, []):
                    answers.append(struct.pack("!HHHIH", 0xC00C, 1, 1, 1, 4) +
                                   socket.inet_aton(ip))
            elif qtype == 6 and name in self.soa:
                rdata = (self._name("ns." + name) + self._name("admin." + name) +
                         struct.pack("!IIIII", self.soa[name], 60, 60, 600, 1))
                answers.append(struct.pack("!HHHIH", 0xC00C, 6, 1, 1, len(rdata)) + rdata)
            if self.evil:
                reply = self.evil(qid, question, qtype)
                if reply:  # None: a nameserver that never answers
                    self.sock.sendto(reply, peer)
                continue
            flags = 0x8580 if known else 0x8583  # QR AA RD RA; NXDOMAIN when unknown
            reply = struct.pack("!HHHHHH", qid, flags, 1, len(answers), 0, 0) + question
            self.sock.sendto(reply + b"".join(answers), peer)

    def stop(self):
        self.stopped = True
        self.thread.join(2)
        self.sock.close()
        pfhelpers.release_port(self.port)


@pytest.fixture
def fake_dns():
    d = FakeDns()
    try:
        yield d
    finally:
        d.stop()


def test_zone_serial_change_moves_servers(pgfunnel, pair, fake_dns, tmpdir_user):
    """resolv_conf points at the fake DNS server; dns_zone_check_period=1. When the zone's
    serial grows and the name now gives another address, servers to the old address are
    closed (the idle one at once, the busy one when released) and new ones go to the new
    address, as PgBouncer's zone check + tag_host_addr_dirty do."""
    a, b = pair
    fake_dns.a["db.pgf.test"] = [HOST_A]
    fake_dns.soa["pgf.test"] = 1
    conf = os.path.join(tmpdir_user, "resolv.conf")
    pfhelpers.write_file(conf, "# test\nnameserver 127.0.0.1:%d\n" % fake_dns.port, 0o644)
    p = {"auth_type": "md5", "admin_users": "postgres", "verbose": 1, "pool_mode": "session",
         "server_login_retry": 1, "resolv_conf": conf, "dns_zone_check_period": 1,
         "dns_max_ttl": 3600}
    pf = pgfunnel.start(params=p, databases={
        "zoned": "host=db.pgf.test port=%d dbname=postgres" % a.port}, userlist=a.userlist())
    busy, idle = connect(pf, "zoned"), connect(pf, "zoned")
    try:
        assert served_by(busy) == HOST_A and served_by(idle) == HOST_A
        assert dns_hosts(pf)["db.pgf.test"]["addrs"] == "127.0.0.1:0"
        assert fake_dns.queries.get(("db.pgf.test", 1), 0) >= 1
        pf.wait_for_log(r"zone 'pgf.test' serial changed: old=0 new=1")
        zones = pfhelpers.show(pf, "DNS_ZONES")
        assert zones == [{"zonename": "pgf.test", "serial": 1, "count": 1}], zones
        idle.close()
        pfhelpers.wait_until(lambda: len(server_addrs(pf, "zoned")) == 2, 5, "idle server")
        # The name moves to host B.
        fake_dns.a["db.pgf.test"] = [HOST_B]
        fake_dns.soa["pgf.test"] = 2
        pf.wait_for_log(r"zone 'pgf.test' serial changed: old=1 new=2", timeout=10)
        pfhelpers.wait_until(lambda: dns_hosts(pf)["db.pgf.test"]["addrs"] == "127.0.0.2:0",
                             10, "the new address in the cache")
        pf.wait_for_log(r"db.pgf.test no longer resolves to 127.0.0.1")
        # The idle server to the old address goes; the busy one stays while its client uses it.
        pfhelpers.wait_until(lambda: server_addrs(pf, "zoned") == [HOST_A], 10,
                             "the idle server to the old address to be closed",
                             lambda: pfhelpers.show(pf, "SERVERS"))
        assert served_by(busy) == HOST_A
        with connect(pf, "zoned") as fresh:
            assert served_by(fresh) == HOST_B
    finally:
        busy.close()
    # Released: closed, not returned to the pool.
    pfhelpers.wait_until(lambda: HOST_A not in server_addrs(pf, "zoned"), 10,
                         "the busy server to the old address to be closed on release",
                         lambda: pfhelpers.show(pf, "SERVERS"))
    with connect(pf, "zoned") as c:
        assert served_by(c) == HOST_B


def test_resolv_conf_without_nameserver(pgfunnel, postgres, tmpdir_user):
    conf = os.path.join(tmpdir_user, "resolv.conf")
    pfhelpers.write_file(conf, "search example.com\nnameserver ::1\n", 0o644)
    pf = pfhelpers.start_proxy(pgfunnel, postgres, params={"resolv_conf": conf},
                               databases={"named": "host=localhost port=%d dbname=postgres"
                                          % postgres.port})
    # Logged, and the system resolver is used: localhost still resolves.
    with connect(pf, "named") as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
    pf.wait_for_log(r"resolv_conf .*: no usable nameserver line")


def test_hostile_dns_answers(pgfunnel, postgres, fake_dns, tmpdir_user):
    """Malformed answers from the nameserver (records running past the packet, an SOA cut
    short, wrong record sizes, a compression-pointer loop, hundreds of records, truncation):
    lookups fail or fall back, zone checks fail, nothing else is disturbed."""
    import struct
    fake_dns.soa["pgf.test"] = 1
    conf = os.path.join(tmpdir_user, "resolv.conf")
    pfhelpers.write_file(conf, "nameserver 127.0.0.1:%d\n" % fake_dns.port, 0o644)

    def hdr(qid, an, flags=0x8580):
        return struct.pack("!HHHHHH", qid, flags, 1, an, 0, 0)

    evils = [
        # A record whose rdlength runs past the end of the packet.
        lambda qid, q, t: hdr(qid, 1) + q + struct.pack("!HHHIH", 0xC00C, 1, 1, 1, 200) + b"\1",
        # SOA with its serial fields cut short.
        lambda qid, q, t: hdr(qid, 1) + q + struct.pack("!HHHIH", 0xC00C, 6, 1, 1, 6) +
        b"\0\0\0\0\0\0",
        # An "A" record of 16 bytes, an AAAA of 4.
        lambda qid, q, t: hdr(qid, 2) + q + struct.pack("!HHHIH", 0xC00C, 1, 1, 1, 16) +
        b"\x7f" * 16 + struct.pack("!HHHIH", 0xC00C, 28, 1, 1, 4) + b"\x7f\0\0\1",
        # SOA whose MNAME is a compression pointer to itself.
        lambda qid, q, t: hdr(qid, 1) + q + struct.pack("!HHHIH", 0xC00C, 6, 1, 1, 22) +
        struct.pack("!H", 12 + len(q) + 12) + b"\0" * 20,
        # 300 A records (more than are kept).
        lambda qid, q, t: hdr(qid, 300) + q + b"".join(
            struct.pack("!HHHIH", 0xC00C, 1, 1, 1, 4) + bytes([127, 0, i // 256, i % 256 or 1])
            for i in range(300)),
        # Header claiming answers, none present; truncated flag.
        lambda qid, q, t: hdr(qid, 5, 0x8780) + q,
        # Just a header.
        lambda qid, q, t: struct.pack("!H", qid) + b"\x85",
    ]
    p = {"resolv_conf": conf, "dns_zone_check_period": 1, "dns_max_ttl": 0,
         "dns_nxdomain_ttl": 0, "server_login_retry": 0, "verbose": 1}
    pf = pfhelpers.start_proxy(pgfunnel, postgres, params=p, databases={
        "evil": "host=db.pgf.test port=%d dbname=postgres" % postgres.port,
        "named": "host=localhost port=%d dbname=postgres" % postgres.port})
    for evil in evils:
        fake_dns.evil = evil
        n = fake_dns.queries.get(("pgf.test", 6), 0)
        try:
            with connect(pf, "evil") as c:
                c.execute("SELECT 1")
        except psycopg.Error:
            pass
        # A zone check went through this answer too.
        pfhelpers.wait_until(lambda: fake_dns.queries.get(("pgf.test", 6), 0) > n, 10,
                             "a zone check")
        with connect(pf, "named") as c:
            assert c.execute("SELECT 1").fetchone() == (1,)
    fake_dns.evil = None
    assert pf.is_running()


def test_name_with_two_addresses_hands_them_out_in_turn(pgfunnel, pair, fake_dns, tmpdir_user):
    """A name with several addresses: each new server connection takes the next address of
    the cached answer (PgBouncer's deliver_info), so one name spreads over both clusters."""
    a, b = pair
    fake_dns.a["multi.pgf.test"] = [HOST_A, HOST_B]
    conf = os.path.join(tmpdir_user, "resolv.conf")
    pfhelpers.write_file(conf, "nameserver 127.0.0.1:%d\n" % fake_dns.port, 0o644)
    p = {"auth_type": "md5", "admin_users": "postgres", "pool_mode": "session",
         "resolv_conf": conf}
    pf = pgfunnel.start(params=p, databases={
        "multi": "host=multi.pgf.test port=%d dbname=postgres" % a.port}, userlist=a.userlist())
    conns = [connect(pf, "multi") for _ in range(4)]
    try:
        hosts = [served_by(c) for c in conns]
        assert sorted(hosts) == [HOST_A, HOST_A, HOST_B, HOST_B], hosts
        assert dns_hosts(pf)["multi.pgf.test"]["addrs"] == "127.0.0.1:0,127.0.0.2:0"
        assert fake_dns.queries[("multi.pgf.test", 1)] == 1  # one lookup for all four
    finally:
        for c in conns:
            c.close()


def test_shutdown_while_nameserver_is_silent(pgfunnel, postgres, fake_dns, tmpdir_user):
    """The nameserver never answers: lookups sit in the thread pool (glibc retries). Clients
    waiting on them, a zone check in flight, then a shutdown: pgfunnel exits cleanly (the
    abandoned lookups are freed when they end; no leak, no use after free)."""
    fake_dns.evil = lambda qid, q, t: None
    conf = os.path.join(tmpdir_user, "resolv.conf")
    pfhelpers.write_file(conf, "nameserver 127.0.0.1:%d\n" % fake_dns.port, 0o644)
    p = {"resolv_conf": conf, "dns_zone_check_period": 1}
    pf = pfhelpers.start_proxy(pgfunnel, postgres, params=p, databases={
        "silent": "host=db.pgf.test port=%d dbname=postgres" % postgres.port})
    results = []

    def try_login():
        try:
            with connect(pf, "silent") as c:
                c.execute("SELECT 1")
            results.append("ok")
        except psycopg.Error as e:
            results.append(str(e))
    ts = [threading.Thread(target=try_login) for _ in range(3)]
    for t in ts:
        t.start()
    pfhelpers.wait_until(lambda: fake_dns.queries.get(("db.pgf.test", 1), 0) >= 1, 10,
                         "the lookup to reach the nameserver")
    lists = {r["list"]: r["items"] for r in pfhelpers.show(pf, "LISTS")}
    assert lists["dns_queries"] == 1  # one lookup for the waiting logins
    with pfhelpers.proxy_connect(pf, "alice", "appdb", "alice-scram-secret") as c:
        assert c.execute("SELECT 1").fetchone() == (1,)  # the loop is not blocked
    t0 = time.monotonic()
    pf.stop(sig=__import__("signal").SIGQUIT, timeout=30)
    assert time.monotonic() - t0 < 20
    for t in ts:
        t.join(10)
    assert "ok" not in results
