"""Protocol forwarding through transaction pooling (issue 3): COPY, big results, notices,
LISTEN/NOTIFY, multi-statement queries, the extended protocol, errors."""

import os
import re
import subprocess
from decimal import Decimal

import psycopg
import pytest

import pfhelpers
import pgwire


@pytest.fixture
def txpool(proxy, postgres):
    """pgfunnel in transaction mode with a pool of 2, and alice's password."""
    return proxy(params={"pool_mode": "transaction", "default_pool_size": 2}), \
        postgres.passwords["alice"]


def connect(pf, pw, **kw):
    return pfhelpers.proxy_connect(pf, "alice", "appdb", pw, **kw)


def test_copy_in_and_out(txpool, postgres):
    pf, pw = txpool
    rows = [(i, "line %d with\ttab and \\ backslash" % i) for i in range(5000)]
    with connect(pf, pw) as conn:
        conn.execute("DROP TABLE IF EXISTS fwd_copy")
        conn.execute("CREATE TABLE fwd_copy (id int, t text)")
        with conn.cursor().copy("COPY fwd_copy FROM STDIN") as cp:
            for r in rows:
                cp.write_row(r)
        conn.commit()
    with connect(pf, pw, autocommit=True) as conn:
        assert conn.execute("SELECT count(*), sum(id) FROM fwd_copy").fetchone() == (
            5000, sum(range(5000)))
        out = []
        with conn.cursor().copy("COPY (SELECT id, t FROM fwd_copy ORDER BY id) TO STDOUT") as cp:
            for row in cp.rows():
                out.append((int(row[0]), row[1]))
        assert out == rows
        with conn.cursor().copy("COPY (SELECT g, 'a' FROM generate_series(1, 3) g) TO STDOUT") as cp:
            raw = b"".join(bytes(b) for b in cp)
        assert raw == b"1\ta\n2\ta\n3\ta\n"
        # the connection is still usable, not stuck in COPY state
        assert conn.execute("SELECT 7").fetchone() == (7,)
        conn.execute("DROP TABLE fwd_copy")


def test_copy_in_error_then_usable(txpool):
    pf, pw = txpool
    with connect(pf, pw, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS fwd_copy2")
        conn.execute("CREATE TABLE fwd_copy2 (id int)")
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            with conn.cursor().copy("COPY fwd_copy2 FROM STDIN") as cp:
                cp.write(b"1\nnot-a-number\n")
        assert conn.execute("SELECT count(*) FROM fwd_copy2").fetchone() == (0,)
        conn.execute("DROP TABLE fwd_copy2")


def test_50mb_result(txpool):
    pf, pw = txpool
    with connect(pf, pw, autocommit=True) as conn:
        cur = conn.execute("SELECT i, repeat(chr(65 + i % 26), 1024 * 1024)"
                           " FROM generate_series(1, 50) i")
        n = 0
        for i, s in cur:
            n += 1
            assert len(s) == 1024 * 1024
            assert s == chr(65 + i % 26) * (1024 * 1024)
        assert n == 50
        assert conn.execute("SELECT 'after'").fetchone() == ("after",)


def test_notice_reaches_client(txpool):
    pf, pw = txpool
    notices = []
    with connect(pf, pw, autocommit=True) as conn:
        conn.add_notice_handler(lambda d: notices.append((d.severity, d.sqlstate, d.message_primary)))
        conn.execute("DO $$ BEGIN RAISE NOTICE 'hi'; END $$")
        conn.execute("DO $$ BEGIN RAISE WARNING 'careful %', 42; END $$")
    assert notices == [("NOTICE", "00000", "hi"), ("WARNING", "01000", "careful 42")]


def test_listen_notify_session_mode(proxy, postgres):
    pf = proxy(params={"pool_mode": "session"})
    pw = postgres.passwords["alice"]
    got = []
    with connect(pf, pw, autocommit=True) as listener, connect(pf, pw, autocommit=True) as sender:
        listener.add_notify_handler(lambda n: got.append((n.channel, n.payload)))
        listener.execute("LISTEN pf_chan")
        sender.execute("NOTIFY pf_chan, 'payload-1'")
        sender.execute("SELECT pg_notify('pf_chan', 'payload-2')")

        def arrived():
            listener.execute("SELECT 1")
            return len(got) >= 2

        assert pfhelpers.wait_for(arrived, 5, 0.1)
        assert got == [("pf_chan", "payload-1"), ("pf_chan", "payload-2")]


def test_notify_reaches_idle_client(proxy, postgres):
    """An asynchronous NotificationResponse is forwarded while the client sends nothing."""
    pf = proxy(params={"pool_mode": "session"})
    pw = postgres.passwords["alice"]
    with pgwire.connect(pf.host, pf.port, "alice", "appdb", pw) as listener, \
            connect(pf, pw, autocommit=True) as sender:
        listener.simple_query("LISTEN pf_idle")
        sender.execute("NOTIFY pf_idle, 'wake up'")
        listener.sock.settimeout(5)
        kind, payload = listener.read_message()
        assert kind == "A"
        assert payload[4:] == b"pf_idle\0wake up\0"


def test_multi_statement_simple_query(txpool):
    pf, pw = txpool
    with pgwire.connect(pf.host, pf.port, "alice", "appdb", pw) as conn:
        assert conn.simple_query("select 1; select 2; select 'three'") == [("1",), ("2",), ("three",)]
        with pytest.raises(pgwire.PgError) as exc:
            conn.simple_query("select 1; select 1/0; select 3")
        assert exc.value.sqlstate == "22012"
        assert conn.simple_query("select 4") == [("4",)]


@pytest.mark.parametrize("prepare", [False, None, True], ids=["unprepared", "default", "prepared"])
def test_extended_protocol_parameters(proxy, postgres, prepare):
    # Pool of one: named prepared statements live on the one server (tracking them across
    # servers is another feature).
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 1})
    pw = postgres.passwords["alice"]
    with connect(pf, pw, autocommit=True) as conn:
        for i in range(8):
            row = conn.execute("SELECT %s::int * 2, %s::text || '!', %s::numeric",
                               (i, "x%d" % i, "1.5"), prepare=prepare).fetchone()
            assert row == (i * 2, "x%d!" % i, Decimal("1.5"))
        cur = conn.cursor()
        cur.executemany("SELECT %s::int * 10", [(1,), (2,), (3,)], returning=True)
        got = [cur.fetchall()]
        while cur.nextset():
            got.append(cur.fetchall())
        assert got == [[(10,)], [(20,)], [(30,)]]
        with conn.transaction():
            r = conn.execute("SELECT %s::bytea", (b"\x00\x01\xff",), binary=True).fetchone()
            assert r == (b"\x00\x01\xff",)


def test_error_in_transaction_then_rollback(txpool):
    pf, pw = txpool
    with connect(pf, pw) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 2")
        conn.rollback()
        assert conn.execute("SELECT 3").fetchone() == (3,)
        conn.commit()


def test_syntax_error_outside_transaction(txpool):
    pf, pw = txpool
    with connect(pf, pw, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.SyntaxError):
            conn.execute("SELEC 1")
        assert conn.execute("SELECT 4").fetchone() == (4,)
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM no_such_table_here WHERE id = %s", (1,))
        assert conn.execute("SELECT %s::int", (5,)).fetchone() == (5,)
    with pgwire.connect(pf.host, pf.port, "alice", "appdb", pw) as raw:
        with pytest.raises(pgwire.PgError) as exc:
            raw.simple_query("SELEC 1")
        assert exc.value.sqlstate == "42601"
        assert raw.simple_query("SELECT 6") == [("6",)]


def test_pgbench_extended(proxy, postgres):
    role, pw = pfhelpers.new_role(postgres, "pgb")
    with postgres.connect(autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS pfbench")
        conn.execute("CREATE DATABASE pfbench OWNER %s" % role)
    env = dict(os.environ, PGPASSWORD=pw)
    env.pop("PGSERVICE", None)
    init = subprocess.run(["pgbench", "-i", "-s", "1", "-q", "-h", postgres.host,
                           "-p", str(postgres.port), "-U", role, "pfbench"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 3},
               databases={"pfbench": postgres.db_entry("pfbench")}, userlist={role: pw})
    run = subprocess.run(["pgbench", "-M", "extended", "-c", "8", "-j", "2", "-T", "3",
                          "-h", pf.host, "-p", str(pf.port), "-U", role, "pfbench"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr + pf.log_text()[-2000:]
    m = re.search(r"number of transactions actually processed: (\d+)", run.stdout)
    assert m and int(m.group(1)) > 0, run.stdout
    m = re.search(r"number of failed transactions: (\d+)", run.stdout)
    assert m and int(m.group(1)) == 0, run.stdout
    # pgbench -M extended really went through pgfunnel
    with postgres.connect(dbname="pfbench") as conn:
        assert conn.execute("SELECT count(*) FROM pgbench_history").fetchone()[0] == \
            int(re.search(r"actually processed: (\d+)", run.stdout).group(1))
