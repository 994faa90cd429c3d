"""Red-team attacks, round 3 (wip-atk3): the restructured core (pool members and pool ops,
conn steps and deferred send errors, reqq routing, reference-counted config under RELOAD,
per-user timeouts).

Each test says whether it found a bug ("Was a bug") or is a regression for an attack that
held up.
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
from test_zz_attack import (  # noqa: F401 - fixtures are used by name
    CD, COPY_DONE, FLUSH, SYNC, Q, P, B, E, D, msg, cstr, data_values, finish, pools,
    read_n_ready, role, servers, startup, wire, b_check, parse_all, copy_table, fake_env,
    be_row, be_cc, be_z, be_err, read_fe, recv_exact, WELCOME)

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
            read_n_ready(c, 1, 8)
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
                # cancel in flight
                c.send(Q("SELECT pg_sleep(0.2), '%s'" % tag))
                s2 = socket.create_connection((pf.host, pf.port), timeout=5)
                s2.sendall(struct.pack("!IIII", 16, 80877102, 1, 2))
                s2.close()
                got = read_n_ready(c, 1, 10)
                s.close()
                continue
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
