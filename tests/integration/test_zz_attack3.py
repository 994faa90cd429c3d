"""Red-team attacks, round 3 (wip-atk3): the restructured core (pool members and pool ops,
conn steps and deferred send errors, reqq routing, reference-counted config under RELOAD,
per-user timeouts).

Each test says whether it found a bug ("Was a bug") or is a regression for an attack that
held up. Bugs found (all fixed):
  test_autodb_dropped_while_client_authenticates            client.c/pool.c: c->db freed (UAF)
  test_database_removed_by_reload_while_client_authenticates  (same, RELOAD removing the entry)
  test_hostile_answer_to_server_check_query[extra_*]        server.c task_packet: bytes behind
  test_hostile_answer_to_parameter_sync[extra_*]            our own ReadyForQuery misrouted
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
from pgwire import data_values, recv_exact
from pgwire import read_frontend_message as read_fe
from test_robust_clients import finish  # noqa: F401
from test_zz_attack import (  # noqa: F401 - fixtures are used by name
    CD, COPY_DONE, FLUSH, SYNC, Q, P, B, E, D, msg, cstr, pools,
    role, servers, startup, wire, b_check, copy_table, fake_env,
    be_row, be_cc, be_z, be_err, WELCOME)


def parse_all(data):
    """The whole messages in data (a partial one at the end is left out)."""
    return pgwire.split_messages(data)[0]


def read_n_ready(conn, n, timeout=5.0):
    """Messages up to and including the n-th ReadyForQuery."""
    return conn.read_until_ready(timeout, count=n)

DEADLINE = 10.0


def admin_conn(pf):
    return pgwire.connect(pf.host, pf.port, "postgres", "pgbouncer", "pg-super-secret",
                          timeout=10.0)


def pool_rows(pf, db="appdb"):
    return pools(pf, db)


def wait_settled(pf, db="appdb", timeout=DEADLINE, **want):
    """Waits until SHOW POOLS of db shows the wanted counts (sums over the db's pools)."""
    last = {}

    def ok():
        rows = pool_rows(pf, db)
        tot = {}
        for r in rows:
            for k in want:
                tot[k] = tot.get(k, 0) + int(r.get(k, 0))
        last.clear()
        last.update(tot)
        last["rows"] = rows
        return all(tot.get(k, 0) == v for k, v in want.items())
    if not pfhelpers.wait_for(ok, timeout):
        pytest.fail("pool %s did not settle to %r: %r" % (db, want, last))


def raw(pf, user, db="appdb", params=None, timeout=5.0):
    """A raw socket that has sent a startup (trust auth) and read up to ReadyForQuery."""
    s = socket.create_connection((pf.host, pf.port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c = pgwire.Connection(s)
    p = {"user": user, "database": db}
    p.update(params or {})
    c.send(pgwire.startup_message(p))
    read_n_ready(c, 1, timeout)
    return c


def quiet_close(c):
    try:
        (c.sock if hasattr(c, "sock") else c).close()
    except OSError:
        pass


# ---------------------------------------------------------------- chaos


def _client_loop(pf, user, stop, errors, seed, names):
    rnd = random.Random(seed)
    while not stop.is_set():
        tag = "c%d_%d" % (seed, rnd.randrange(1 << 30))
        try:
            params = {"user": user, "database": "appdb"}
            if rnd.random() < 0.5:
                params["application_name"] = "app-%d" % rnd.randrange(4)
            s = socket.create_connection((pf.host, pf.port), timeout=5)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            data = pgwire.startup_message(params)
            act = rnd.randrange(10)
            if act == 0:
                # disconnect mid-startup
                s.sendall(data[:rnd.randrange(1, len(data))])
                s.close()
                continue
            c = pgwire.Connection(s)
            q = Q("SELECT '%s'" % tag)
            ext = P("SELECT '%s'" % tag) + B() + E() + SYNC
            body = rnd.choice([q, ext, q + q, ext + q, Q("BEGIN") + q + Q("COMMIT")])
            nready = {q: 1, ext: 1, q + q: 2, ext + q: 2}.get(body, 3)
            if act == 1:
                # pipelined startup + query, vanish before reading
                c.send(data + body)
                s.close()
                continue
            c.send(data)
            hello = read_n_ready(c, 1, 8)
            keys = [p for k, p in hello if k == "K"]
            key = struct.unpack("!II", keys[0]) if keys else (1, 2)
            if act == 2:
                # split at every byte, slowly
                for i in range(len(body)):
                    c.send(body[i:i + 1])
                got = read_n_ready(c, nready, 10)
            elif act == 3:
                # half a message then leave
                c.send(body[:rnd.randrange(1, len(body))])
                time.sleep(rnd.random() * 0.05)
                s.close()
                continue
            elif act == 4:
                # query then leave without reading
                c.send(body)
                s.close()
                continue
            elif act == 5:
                # COPY in, partial then leave
                c.send(Q("COPY atk3_copy FROM STDIN") + CD(b"x\n"))
                time.sleep(rnd.random() * 0.05)
                s.close()
                continue
            elif act == 6:
                # cancel in flight (its own key), then maybe leave before the answer
                c.send(Q("SELECT pg_sleep(0.2), '%s'" % tag))
                time.sleep(rnd.random() * 0.1)
                s2 = socket.create_connection((pf.host, pf.port), timeout=5)
                s2.sendall(struct.pack("!IIII", 16, 80877102, key[0], key[1]))
                if rnd.random() < 0.5:
                    s.close()
                    s2.close()
                    continue
                s2.close()
                got = read_n_ready(c, 1, 10)
                s.close()
                continue
            elif act == 7:
                # extended messages without a Sync (a lone Flush), then leave or finish
                c.send(P("SELECT '%s'" % tag) + B() + D() + E() + FLUSH)
                if rnd.random() < 0.5:
                    time.sleep(rnd.random() * 0.05)
                    s.close()
                    continue
                c.send(SYNC)
                got = read_n_ready(c, 1, 10)
            else:
                c.send(body)
                got = read_n_ready(c, nready, 10)
            vals = [v for v in data_values(got) if v and v.startswith("c")]
            for v in vals:
                if v != tag:
                    errors.append("isolation: %s got %s" % (tag, v))
            c.send(msg(b"X"))
            s.close()
        except (OSError, EOFError, pgwire.ProtocolError, socket.timeout, pgwire.PgError):
            pass
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))


@pytest.mark.parametrize("mode", ["transaction", "session", "statement"])
def test_chaos_console_and_clients(proxy, postgres, role, mode):
    """Random hostile clients (splits, disconnects at every step, param syncs, cancels,
    COPY left half-way) race with PAUSE/RESUME/KILL/RECONNECT/RELOAD/SUSPEND from the console,
    with server_check_query on every reuse and server_reset_query always. Afterwards the pool
    settles (no sv_active / cl_waiting stuck), a client gets its own answer, no sanitizer
    report."""
    with postgres.connect(dbname="appdb", autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS atk3_copy (x text)")
        conn.execute("GRANT ALL ON atk3_copy TO PUBLIC")
    pf = proxy(params={"auth_type": "trust", "pool_mode": mode,
                       "default_pool_size": 2, "max_db_connections": 3,
                       "query_wait_timeout": 4, "server_check_query": "select 1",
                       "server_check_delay": 0, "server_reset_query": "DISCARD ALL",
                       "server_reset_query_always": 1, "suspend_timeout": 1},
               userlist={role[0]: role[1]})
    stop = threading.Event()
    errors = []
    seconds = float(os.environ.get("ATK3_CHAOS_SECONDS", "12"))
    threads = [threading.Thread(target=_client_loop,
                                args=(pf, role[0], stop, errors, i, None), daemon=True)
               for i in range(8)]
    for t in threads:
        t.start()
    rnd = random.Random(7)
    a = admin_conn(pf)
    a.sock.settimeout(10)
    t_end = time.monotonic() + seconds
    cmds = ["PAUSE appdb", "RESUME appdb", "KILL appdb", "RESUME", "RECONNECT appdb",
            "RELOAD", "SUSPEND", "RESUME", "RECONNECT", "KILL"]
    log = []
    while time.monotonic() < t_end:
        cmd = rnd.choice(cmds)
        if cmd == "RELOAD":
            size = rnd.choice([1, 2, 4])
            pf.write_ini(dict(pf.params, default_pool_size=size))
        log.append(cmd)
        try:
            a.send(Q(cmd))
            read_n_ready(a, 1, 10)
        except socket.timeout:
            pytest.fail("console hung on %s; history %r" % (cmd, log[-20:]))
        if cmd in ("PAUSE appdb", "SUSPEND", "KILL", "KILL appdb"):
            time.sleep(rnd.random() * 0.2)
            a.send(Q("RESUME"))
            read_n_ready(a, 1, 10)
        time.sleep(rnd.random() * 0.1)
    stop.set()
    for t in threads:
        t.join(30)
    assert not errors, errors[:10]
    a.close()
    wait_settled(pf, cl_waiting=0, sv_active=0, cl_active=0)
    b_check(pf, role, timeout=8)
    finish(pf)



# ---------------------------------------------------------------- databases freed under a login


def md5_password(user, password, salt):
    import hashlib
    inner = hashlib.md5((password + user).encode()).hexdigest()
    return "md5" + hashlib.md5(inner.encode() + salt).hexdigest()


def test_autodb_dropped_while_client_authenticates(proxy, postgres, role):
    """Was a bug, now a regression test: a client's startup names an auto-created database
    (the "*" entry); the client points at it (c->db) from its startup on, but the database
    counts the client only once it has logged in (login_ok: db->client_count++). While the
    client is still answering the password request the janitor sees the database without
    clients or servers and drops it after autodb_idle_timeout (pf_database_maintain ->
    database_free). The password then arrives: login_ok() reads c->db->admin,
    c->db->forced_user and pf_pool_get(w, c->db, ...) from freed memory (ASan
    heap-use-after-free), and a pool is made for a freed database. Fixed: a client counts in
    db->client_refs from its startup to its close, and the janitor keeps such a database."""
    pf = proxy(params={"auth_type": "md5", "autodb_idle_timeout": 1},
               databases={"*": postgres.db_entry("appdb").replace("dbname=appdb", "")
                          + " dbname=appdb"},
               userlist={role[0]: role[1]})
    s = socket.create_connection((pf.host, pf.port), timeout=10)
    c = pgwire.Connection(s)
    c.send(pgwire.startup_message({"user": role[0], "database": "autox"}))
    kind, payload = c.read_message(timeout=5)
    assert kind == "R" and struct.unpack("!I", payload[:4])[0] == 5, (kind, payload)
    salt = payload[4:8]
    # A second auto-database, made after autox and left at once, shows when the janitor has
    # dropped what it may drop.
    y = pgwire.Connection(socket.create_connection((pf.host, pf.port), timeout=10))
    y.send(pgwire.startup_message({"user": role[0], "database": "autoy"}))
    y.read_message(timeout=5)
    y.close()
    pf.wait_for_log(r"dropping idle auto-database: autoy", timeout=10)
    assert "dropping idle auto-database: autox" not in pf.log_text()
    c.send(msg(b"p", cstr(md5_password(role[0], role[1], salt))))
    read_n_ready(c, 1, 10)
    c.send(Q("SELECT 'A-own'"))
    assert data_values(read_n_ready(c, 1, 10)) == ["A-own"]
    c.close()
    finish(pf)


def test_database_removed_by_reload_while_client_authenticates(proxy, postgres, role):
    """Was a bug, now a regression test: the same with a [databases] entry a RELOAD removes
    while the client is between its startup and its password: the janitor freed the
    database (not in the config, no counted clients) under the client, whose login then
    read it. A second removed entry nobody uses ("gone2") shows when the janitor has dropped
    what it may drop. The client must then log in and be served without touching freed
    memory."""
    pf = proxy(params={"auth_type": "md5"},
               databases={"gone": postgres.db_entry("appdb"),
                          "gone2": postgres.db_entry("appdb")},
               userlist={role[0]: role[1]})
    s = socket.create_connection((pf.host, pf.port), timeout=10)
    c = pgwire.Connection(s)
    c.send(pgwire.startup_message({"user": role[0], "database": "gone"}))
    kind, payload = c.read_message(timeout=5)
    assert kind == "R" and struct.unpack("!I", payload[:4])[0] == 5, (kind, payload)
    salt = payload[4:8]
    dbs = dict(pf.databases)
    del dbs["gone"], dbs["gone2"]
    pf.write_ini(databases=dbs)
    pfhelpers.console(pf, "RELOAD")
    pf.wait_for_log(r"dropping database removed from the config: gone2", timeout=10)
    assert "removed from the config: gone\n" not in pf.log_text()
    c.send(msg(b"p", cstr(md5_password(role[0], role[1], salt))))
    read_n_ready(c, 1, 10)
    c.send(Q("SELECT 'A-own'"))
    assert data_values(read_n_ready(c, 1, 10)) == ["A-own"]
    c.close()
    b_check(pf, role, timeout=8)
    finish(pf)


# ---------------------------------------------------------------- full request queue


@pytest.mark.parametrize("slow", [False, True], ids=["fast_reader", "slow_reader"])
def test_request_queue_overflow_pipeline(proxy, role, slow):
    """Holds: a client pipelines far more Syncs and Queries than the request queue holds
    (rq_full: the client is held back and resumed by the server's drain), optionally reading
    slowly so the server side is under backpressure at the same time. Every answer arrives,
    in order, and the server is free afterwards."""
    pf = proxy(params={"auth_type": "trust", "pool_mode": "transaction", "default_pool_size": 1,
                       "max_db_connections": 1, "query_wait_timeout": 30},
               userlist={role[0]: role[1]})
    a = raw(pf, role[0])
    n, per = 2000, 40  # 80000 Syncs: more than PF_REQQ_MAX (65536) owed at once
    body = b"".join(SYNC * per + Q("SELECT 'A-%d'" % i) for i in range(n))
    t = threading.Thread(target=a.sock.sendall, args=(body,), daemon=True)
    t.start()
    a.sock.settimeout(30)
    vals = []
    zs = 0
    deadline = time.monotonic() + 60
    while zs < (per + 1) * n and time.monotonic() < deadline:
        kind, payload = a.read_message()
        if kind == "Z":
            zs += 1
            if slow and zs % 5000 == 0:
                time.sleep(0.05)
        elif kind == "D":
            vals += data_values([(kind, payload)])
    t.join(10)
    assert zs == (per + 1) * n
    assert vals == ["A-%d" % i for i in range(n)]
    b_check(pf, role, timeout=5)
    a.close()
    finish(pf)


# ---------------------------------------------------------------- hostile answers to our own queries


def _answer(text):
    return be_row(text) + be_cc() + be_z()


OWN_QUERY_HOSTILE = {
    # what the fake server does with the pooler's own query (check "select 1" or a SET)
    "error": lambda c: c.sendall(be_err("no check for you") + be_z()),
    "ready_in_transaction": lambda c: c.sendall(be_cc() + be_z(b"T")),
    "extra_row_after_ready": lambda c: c.sendall(be_cc() + be_z() + be_row("LEAK-own")),
    "extra_ready": lambda c: c.sendall(be_cc() + be_z() + be_z()),
    "close_mid_message": lambda c: (c.sendall((be_cc() + be_z())[:6]), c.close()),
    "parameter_flood": lambda c: c.sendall(b"".join(
        msg(b"S", cstr("application_name") + cstr("flood-%d" % i)) for i in range(3000)) +
        be_cc() + be_z()),
    "per_byte": lambda c: [c.sendall(bytes([x])) for x in be_cc() + be_z()],
}


def own_query_script(behaviour, own):
    def script(c, idx):
        while True:
            kind, payload = read_fe(c)
            if kind == b"X":
                return
            if kind != b"Q":
                continue
            text = payload[:-1].decode()
            if own(text):
                if idx == 0:
                    OWN_QUERY_HOSTILE[behaviour](c)
                    if behaviour == "close_mid_message":
                        return
                else:
                    c.sendall(be_cc() + be_z())
                continue
            c.sendall(_answer(text.replace("SELECT ", "").strip("'")))
    return script


@pytest.mark.parametrize("behaviour", sorted(OWN_QUERY_HOSTILE))
def test_hostile_answer_to_server_check_query(fake_env, behaviour):
    """A fake server misbehaves in its answer to server_check_query (checked before every
    reuse: server_check_delay=0). Client A uses the server first; B's acquire runs the check.
    B must get exactly its own answer (a fresh server if the checked one is unusable),
    nothing the server sent for the check, and the pool must settle.
    Was a bug for [extra_row_after_ready] and [extra_ready], now a regression test: bytes in
    the same read behind the check's ReadyForQuery were processed after task_done() had
    handed the server to the waiting client (pf_pool_server_ready -> give_server ->
    link_pair -> the client's Query pushed), so the request queue counted them as the
    client's answer: the client got the stray row, or a stray ReadyForQuery that ended its
    query early (its real answer then freed... and reached whoever came next). Fixed in
    server.c task_packet: such a server is closed."""
    start, role = fake_env
    pf, fake = start(own_query_script(behaviour, lambda t: t == "select 1"),
                     server_check_query="select 1", server_check_delay=0,
                     max_db_connections=1, server_login_retry=0)
    a = wire(pf, role, "fake")
    assert a.simple_query("SELECT 'A'") == [("A",)]
    a.close()
    for tag in ("B", "C"):
        with wire(pf, role, "fake") as b:
            b.sock.settimeout(8)
            got = read_after(b, "SELECT '%s'" % tag)
            assert data_values(got) == [tag], (behaviour, got)
    wait_settled(pf, "fake", cl_waiting=0, sv_active=0)
    assert not fake.errors, fake.errors
    finish(pf)


def read_after(conn, sql):
    conn.send(Q(sql))
    return read_n_ready(conn, 1, 8)


@pytest.mark.parametrize("behaviour", sorted(OWN_QUERY_HOSTILE))
def test_hostile_answer_to_parameter_sync(fake_env, behaviour):
    """A fake server misbehaves in its answer to the parameter sync (the SET a client with its
    own application_name gets on a server that has another value). The client is either
    served its own answer or refused with an error; never something meant for the sync, and
    the pool settles; a later client is served.
    Was a bug for [extra_row_after_ready] and [extra_ready] (the same cause as the check
    query: task_done() resumed the client inside the server's walk, and the bytes behind the
    sync's ReadyForQuery were routed as the answer to the client's Query; with an extra
    ReadyForQuery the server was released while the client's real answer was still coming,
    to the next client), now a regression test."""
    start, role = fake_env
    pf, fake = start(own_query_script(behaviour, lambda t: t.upper().startswith("SET ")),
                     max_db_connections=1, server_login_retry=0)
    a = raw_md5(pf, role, "fake", {"application_name": "A-app"})
    a.send(Q("SELECT 'A'"))
    try:
        got = read_n_ready(a, 1, 8)
        vals = data_values(got)
        assert vals == ["A"], (behaviour, got)
    except (EOFError, OSError, pgwire.ProtocolError, pgwire.PgError):
        pass
    a.close()
    wait_settled(pf, "fake", cl_waiting=0, sv_active=0)
    with wire(pf, role, "fake") as b:
        b.sock.settimeout(8)
        assert data_values(read_after(b, "SELECT 'B'")) == ["B"]
    assert not fake.errors, fake.errors
    finish(pf)


def raw_md5(pf, role, db, params):
    p = {"user": role[0], "database": db}
    p.update(params)
    s = socket.create_connection((pf.host, pf.port), timeout=10)
    c = pgwire.Connection(s)
    c.send(pgwire.startup_message(p))
    while True:
        kind, payload = c.read_message(timeout=8)
        if kind == "R":
            code = struct.unpack("!I", payload[:4])[0]
            if code == 5:
                c.send(msg(b"p", cstr(md5_password(role[0], role[1], payload[4:8]))))
            elif code == 10:
                raise AssertionError("SCRAM not handled here")
        elif kind == "Z":
            return c
        elif kind == "E":
            raise pgwire.PgError(pgwire.parse_fields(payload))
