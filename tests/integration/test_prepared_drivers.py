"""Real drivers with protocol-level prepared statements through pgfunnel in transaction mode
(max_prepared_statements, default 200): asyncpg's statement cache, psycopg 3 with
prepare_threshold=0 (also in pipeline mode), pgbench -M prepared, pgjdbc with
prepareThreshold=1, node-postgres named queries; and, on a pool of one server, two clients
using one statement name for different SQL, a client's Close, and max_prepared_statements=0
(names pass straight through, as in PgBouncer).

Every load runs many clients over a small pool, so a client's statements must be made to exist
on whichever server it is given next; every result is checked and no error is allowed.

The drivers are Debian packages (python3-asyncpg, python3-psycopg, postgresql-client-15,
libpostgresql-jdbc-java + default-jdk-headless, nodejs) and node-postgres from npm, pinned in
drivers/node/package-lock.json; scripts/install-deps.sh installs them all (and runs npm ci), so
a test skips only where a driver really is missing.
"""

import asyncio
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading

import pytest
from psycopg import pq

import pfhelpers
import pgwire

HERE = os.path.dirname(os.path.abspath(__file__))
JAVA_SRC = os.path.join(HERE, "drivers", "java", "PreparedLoad.java")
NODE_DIR = os.path.join(HERE, "drivers", "node")
# Written by scripts/install-deps.sh and by node_modules_ready() after npm ci: the sha256 of the
# package-lock.json that node_modules was installed from.
NODE_STAMP = os.path.join(NODE_DIR, "node_modules", ".pgfunnel-lock.sha256")
PGJDBC_JAR = "/usr/share/java/postgresql.jar"
PGBENCH = shutil.which("pgbench") or os.path.join(pfhelpers.PG_BINDIR, "pgbench")


def tx_proxy(proxy, role, pw, **params):
    """pgfunnel in transaction mode with role in its auth_file."""
    p = {"pool_mode": "transaction", "max_client_conn": 300, "query_wait_timeout": 60}
    p.update(params)
    return proxy(params=p, userlist={role: pw})


def role_backends(postgres, role):
    return pfhelpers.backend_count(postgres, "usename = %s", (role,))


def server_prepared(pf, role):
    """prepared_statements of each of role's server connections (SHOW SERVERS)."""
    return [row["prepared_statements"] for row in pfhelpers.show(pf, "SERVERS")
            if row["user"] == role]


def assert_pool_did_the_work(pf, postgres, role, pool_size, most_statements):
    """The load ran over at most pool_size servers, which hold the driver's named statements
    (so it really used them), each distinct statement once per server whatever the number of
    clients that prepared it."""
    assert 1 <= role_backends(postgres, role) <= pool_size
    counts = server_prepared(pf, role)
    assert counts and len(counts) <= pool_size, counts
    assert 1 <= max(counts) <= most_statements, counts


def log_tail(pf, n=3000):
    return "\n--- pgfunnel log (tail):\n" + pf.log_text()[-n:]


# ---------------------------------------------------------------- 1. asyncpg


def test_asyncpg_statement_cache(proxy, postgres):
    """asyncpg's default statement cache (named statements, Parse once per connection, then
    Bind/Execute only): 50 connections x 200 queries over 5 servers."""
    try:
        import asyncpg
    except ImportError:
        pytest.skip("asyncpg is not installed (Debian: python3-asyncpg; scripts/install-deps.sh)")
    role, pw = pfhelpers.new_role(postgres, "drvapg")
    pf = tx_proxy(proxy, role, pw, default_pool_size=5)
    ntasks, nqueries = 50, 200
    errors, done = [], []

    async def task(i):
        conn = await asyncpg.connect(host=pf.host, port=pf.port, user=role, password=pw,
                                     database="appdb", timeout=10)
        try:
            for j in range(nqueries):
                v, tag = i * 100000 + j, "t%d-%d" % (i, j)
                if j % 10 == 9:
                    async with conn.transaction():
                        row = await conn.fetchrow("SELECT $1::int * 2, $2::text", v, tag)
                        n = await conn.fetchval("SELECT length($1::text) + $2::int", tag, i)
                    assert n == len(tag) + i, (i, j, n)
                elif j % 10 == 5:
                    k = 1 + (i + j) % 6
                    rows = await conn.fetch(
                        "SELECT g, g * $1::int FROM generate_series(1, $2::int) AS g ORDER BY g",
                        i, k)
                    assert [tuple(r) for r in rows] == [(g, g * i) for g in range(1, k + 1)], (
                        i, j, rows)
                    row = await conn.fetchrow("SELECT $1::int * 2, $2::text", v, tag)
                else:
                    row = await conn.fetchrow("SELECT $1::int * 2, $2::text", v, tag)
                assert tuple(row) == (v * 2, tag), (i, j, tuple(row))
            done.append(i)
        finally:
            await conn.close(timeout=10)

    async def main():
        async def guarded(i):
            try:
                await task(i)
            except Exception as e:  # noqa: BLE001
                errors.append("task %d: %r" % (i, e))
        await asyncio.wait_for(asyncio.gather(*(guarded(i) for i in range(1, ntasks + 1))), 90)

    asyncio.run(main())
    assert not errors, "%d of %d tasks failed, first: %s%s" % (
        len(errors), ntasks, errors[:3], log_tail(pf))
    assert sorted(done) == list(range(1, ntasks + 1))
    assert_pool_did_the_work(pf, postgres, role, 5, 10)


# ---------------------------------------------------------------- 2. psycopg 3


def test_psycopg_prepare_threshold_0(proxy, postgres):
    """psycopg 3 with prepare_threshold=0 (every query a named statement from its first
    execution): 10 connections in threads over 3 servers, autocommit and transactions."""
    role, pw = pfhelpers.new_role(postgres, "drvpsy")
    pf = tx_proxy(proxy, role, pw, default_pool_size=3)
    nconns, nqueries = 10, 300
    errors, done = [], []
    start = threading.Barrier(nconns, timeout=30)

    def client(i):
        try:
            with pfhelpers.proxy_connect(pf, role, "appdb", pw, autocommit=True,
                                         prepare_threshold=0) as conn:
                start.wait()
                for j in range(nqueries):
                    v, tag = i * 100000 + j, "p%d-%d" % (i, j)
                    if j % 7 == 6:
                        with conn.transaction():
                            row = conn.execute("SELECT %s::int * 2, %s::text", (v, tag)).fetchone()
                            n = conn.execute("SELECT length(%s::text) + %s::int",
                                             (tag, i)).fetchone()[0]
                        assert n == len(tag) + i, (i, j, n)
                    else:
                        row = conn.execute("SELECT %s::int * 2, %s::text", (v, tag)).fetchone()
                    assert row == (v * 2, tag), (i, j, row)
                    if j % 10 == 0:
                        k = 1 + (i + j) % 5
                        rows = conn.execute("SELECT g, g * %s::int FROM generate_series(1, %s::int)"
                                            " AS g ORDER BY g", (i, k)).fetchall()
                        assert rows == [(g, g * i) for g in range(1, k + 1)], (i, j, rows)
            done.append(i)
        except Exception as e:  # noqa: BLE001
            errors.append("client %d: %r" % (i, e))
            start.abort()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(1, nconns + 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads), "clients still running after 90 s"
    assert not errors, "%d of %d clients failed, first: %s%s" % (
        len(errors), nconns, errors[:3], log_tail(pf))
    assert sorted(done) == list(range(1, nconns + 1))
    assert_pool_did_the_work(pf, postgres, role, 3, 10)


def test_psycopg_pipeline_prepared(proxy, postgres):
    """psycopg 3 pipeline mode with prepared statements: each batch is sent as one pipeline
    (Parse of new names, then Bind/Execute, one Sync per transaction) by 6 connections over 2
    servers; results are read after the pipeline."""
    role, pw = pfhelpers.new_role(postgres, "drvpip")
    pf = tx_proxy(proxy, role, pw, default_pool_size=2)
    nconns, nbatches, batch = 6, 25, 20
    errors, done = [], []
    start = threading.Barrier(nconns, timeout=30)

    def client(i):
        try:
            with pfhelpers.proxy_connect(pf, role, "appdb", pw, autocommit=True,
                                         prepare_threshold=0) as conn:
                start.wait()
                for b in range(nbatches):
                    expected, cursors = [], []
                    with conn.pipeline():
                        for k in range(batch):
                            v, tag = i * 100000 + b * 100 + k, "q%d-%d-%d" % (i, b, k)
                            cur = conn.cursor()
                            if k % 3 == 0:
                                cur.execute("SELECT %s::int * 2, %s::text", (v, tag))
                                expected.append([(v * 2, tag)])
                            elif k % 3 == 1:
                                cur.execute("SELECT %s::text || '/' || %s::int", (tag, k))
                                expected.append([("%s/%d" % (tag, k),)])
                            else:
                                n = 1 + (i + k) % 4
                                cur.execute("SELECT g + %s::int FROM generate_series(1, %s::int)"
                                            " AS g ORDER BY g", (v, n))
                                expected.append([(v + g,) for g in range(1, n + 1)])
                            cursors.append(cur)
                        if b % 5 == 4:
                            # A transaction inside the pipeline: its statements share one Sync.
                            with conn.transaction():
                                cur = conn.cursor()
                                cur.execute("SELECT %s::int * 2, %s::text", (b, "tx"))
                                expected.append([(b * 2, "tx")])
                                cursors.append(cur)
                    got = [cur.fetchall() for cur in cursors]
                    assert got == expected, (i, b, got, expected)
            done.append(i)
        except Exception as e:  # noqa: BLE001
            errors.append("client %d: %r" % (i, e))
            start.abort()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(1, nconns + 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads), "clients still running after 90 s"
    assert not errors, "%d of %d clients failed, first: %s%s" % (
        len(errors), nconns, errors[:3], log_tail(pf))
    assert sorted(done) == list(range(1, nconns + 1))
    assert_pool_did_the_work(pf, postgres, role, 2, 10)


# ---------------------------------------------------------------- 3. pgbench -M prepared


@pytest.fixture
def bench_db(postgres):
    """A role and a database of its own, initialised by pgbench -i (scale 1)."""
    role, pw = pfhelpers.new_role(postgres, "drvpgb")
    dbname = "drvpgb_%d" % os.getpid()
    with postgres.connect(autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS %s" % dbname)
        conn.execute("CREATE DATABASE %s OWNER %s" % (dbname, role))
    env = dict(os.environ, PGPASSWORD=pw, PGCONNECT_TIMEOUT="10")
    env.pop("PGSERVICE", None)
    res = subprocess.run([PGBENCH, "-i", "-q", "-s", "1", "-h", postgres.host,
                          "-p", str(postgres.port), "-U", role, dbname],
                         env=env, capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL)
    assert res.returncode == 0, "pgbench -i failed:\n%s%s" % (res.stdout, res.stderr)
    yield role, pw, dbname, env
    with postgres.connect(autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS %s WITH (FORCE)" % dbname)


@pytest.mark.skipif(not os.access(PGBENCH, os.X_OK),
                    reason="pgbench is not installed (Debian: postgresql-client-15)")
def test_pgbench_prepared_100_clients_pool_10(proxy, postgres, bench_db):
    role, pw, dbname, env = bench_db
    pf = proxy(params={"pool_mode": "transaction", "default_pool_size": 10,
                       "max_client_conn": 300, "query_wait_timeout": 60},
               databases={dbname: postgres.db_entry(dbname)}, userlist={role: pw})
    clients, per_client = 100, 30
    # -j = -c: with fewer threads than clients, a thread can wait for a server inside one
    # client's transaction while another of its clients holds the server it needs.
    run = subprocess.run([PGBENCH, "-n", "-M", "prepared", "-c", str(clients), "-j", str(clients),
                          "-t", str(per_client), "-h", pf.host, "-p", str(pf.port), "-U", role,
                          dbname], env=env, capture_output=True, text=True, timeout=90,
                         stdin=subprocess.DEVNULL)
    report = "pgbench exit %d\nstdout:\n%s\nstderr:\n%s%s" % (
        run.returncode, run.stdout, run.stderr[-3000:], log_tail(pf))
    assert run.returncode == 0, report
    m = re.search(r"number of transactions actually processed: (\d+)/(\d+)", run.stdout)
    assert m and int(m.group(1)) == int(m.group(2)) == clients * per_client, report
    m = re.search(r"number of failed transactions: (\d+)", run.stdout)
    assert m and int(m.group(1)) == 0, report
    assert "error" not in run.stderr.lower(), report
    # Every transaction really ran: one pgbench_history row each.
    with postgres.connect(dbname=dbname) as conn:
        assert conn.execute("SELECT count(*) FROM pgbench_history").fetchone()[0] == \
            clients * per_client
    # pgbench's TPC-B script has 7 statements (BEGIN and END included).
    assert_pool_did_the_work(pf, postgres, role, 10, 7)


# ---------------------------------------------------------------- 4. pgjdbc


def test_pgjdbc_prepare_threshold_1(proxy, postgres):
    """pgjdbc (prepareThreshold=1: named server statements S_n from the first execution), 50
    threads with a connection each over 5 servers; tests/integration/drivers/java."""
    javac, java = shutil.which("javac"), shutil.which("java")
    if not javac or not java or not os.path.exists(PGJDBC_JAR):
        pytest.skip("pgjdbc or a JDK is not installed (Debian: libpostgresql-jdbc-java, "
                    "default-jdk-headless; scripts/install-deps.sh)")
    role, pw = pfhelpers.new_role(postgres, "drvjdbc")
    # pgjdbc sends extra_float_digits in its startup packet.
    pf = tx_proxy(proxy, role, pw, default_pool_size=5,
                  ignore_startup_parameters="extra_float_digits")
    nthreads, iterations = 50, 100
    with tempfile.TemporaryDirectory(prefix="pgfunnel-jdbc.") as classes:
        res = subprocess.run([javac, "-d", classes, "-cp", PGJDBC_JAR, JAVA_SRC],
                             capture_output=True, text=True, timeout=120,
                             stdin=subprocess.DEVNULL)
        assert res.returncode == 0, "javac failed:\n%s%s" % (res.stdout, res.stderr)
        url = "jdbc:postgresql://%s:%d/appdb" % (pf.host, pf.port)
        run = subprocess.run([java, "-cp", PGJDBC_JAR + os.pathsep + classes, "PreparedLoad",
                              url, role, pw, str(nthreads), str(iterations)],
                             capture_output=True, text=True, timeout=120,
                             stdin=subprocess.DEVNULL)
    report = "java exit %d\nstdout:\n%s\nstderr:\n%s%s" % (
        run.returncode, run.stdout[-5000:], run.stderr[-3000:], log_tail(pf))
    m = re.search(r"PreparedLoad: threads=(\d+) finished=(\d+) queries=(\d+) errors=(\d+)",
                  run.stdout)
    assert run.returncode == 0 and m, report
    # 2 queries per iteration, plus one every 4th.
    want = nthreads * (2 * iterations + (iterations + 3) // 4)
    assert (int(m.group(2)), int(m.group(3)), int(m.group(4))) == (nthreads, want, 0), report
    assert_pool_did_the_work(pf, postgres, role, 5, 10)


# ---------------------------------------------------------------- 5. node-postgres


def lock_digest():
    with open(os.path.join(NODE_DIR, "package-lock.json"), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def node_modules_ready():
    """None when drivers/node/node_modules matches package-lock.json (running npm ci first if
    it does not), else why node-postgres cannot be had (skip reason)."""
    digest = lock_digest()
    if pfhelpers.read_text(NODE_STAMP).strip() == digest:
        return None
    npm = shutil.which("npm")
    if not npm:
        return ("node-postgres is not installed in tests/integration/drivers/node and npm is "
                "missing (Debian: npm; scripts/install-deps.sh runs npm ci)")
    res = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR,
                         capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, "npm ci failed:\n%s%s" % (res.stdout, res.stderr)
    with open(NODE_STAMP, "w", encoding="utf-8") as f:
        f.write(digest + "\n")
    return None


def test_node_postgres_named_queries(proxy, postgres):
    """node-postgres named queries ({name, text, values}) from 100 separate pg.Clients over 5
    servers; tests/integration/drivers/node/prepared.js."""
    node = shutil.which("node")
    if not node:
        pytest.skip("node is not installed (Debian: nodejs; scripts/install-deps.sh)")
    why = node_modules_ready()
    if why:
        pytest.skip(why)
    role, pw = pfhelpers.new_role(postgres, "drvnode")
    pf = tx_proxy(proxy, role, pw, default_pool_size=5)
    nclients, iterations = 100, 40
    run = subprocess.run([node, "prepared.js", pf.host, str(pf.port), role, pw, "appdb",
                          str(nclients), str(iterations)], cwd=NODE_DIR,
                         capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
    report = "node exit %d\nstdout:\n%s\nstderr:\n%s%s" % (
        run.returncode, run.stdout[-5000:], run.stderr[-3000:], log_tail(pf))
    lines = run.stdout.strip().splitlines()
    assert lines, report
    summary = json.loads(lines[-1])
    assert run.returncode == 0 and not summary["errors"], report
    want = nclients * (2 * iterations + (iterations + 3) // 4)
    assert (summary["finished"], summary["queries"]) == (nclients, want), report
    assert_pool_did_the_work(pf, postgres, role, 5, 10)


# ---------------------------------------------------------------- 6. names on one server


def pq_ok(res, status=pq.ExecStatus.COMMAND_OK):
    assert res.status == status, "%s: %s" % (
        pq.ExecStatus(res.status).name, (res.error_message or b"").decode(errors="replace"))
    return res


def pq_row(pgconn, name, *params):
    """exec_prepared(name, params) on the raw libpq connection: the first row, as text."""
    res = pq_ok(pgconn.exec_prepared(name, [str(p).encode() for p in params]),
                pq.ExecStatus.TUPLES_OK)
    return tuple(res.get_value(0, c).decode() for c in range(res.nfields))


def pq_sqlstate(res):
    assert res.status == pq.ExecStatus.FATAL_ERROR, pq.ExecStatus(res.status).name
    return res.error_field(pq.DiagnosticField.SQLSTATE).decode()


def wire_prepare(conn, name, sql):
    conn.send(pgwire.fe_parse(sql, name) + pgwire.fe_sync())
    assert pgwire.tokens(conn.read_until_ready(10)) == ["1", "Z:I"]


def wire_exec(conn, name, *params):
    conn.send(pgwire.fe_bind("", name, params) + pgwire.fe_execute() + pgwire.fe_sync())
    return pgwire.tokens(conn.read_until_ready(10))


def test_same_name_different_sql_and_close(proxy, postgres):
    """On a pool of ONE server: clients A and B (libpq, via psycopg's raw PGconn) prepare
    different SQL under the same name "s1" and each gets its own results, interleaved across
    transactions on that one server; a name only A prepared does not exist for B; a third
    client's protocol Close of its "s1" is honoured (26000 afterwards, the name free for a new
    Parse) and touches neither A's nor B's "s1"."""
    role, pw = pfhelpers.new_role(postgres, "drvname")
    pf = tx_proxy(proxy, role, pw, default_pool_size=1)
    with pfhelpers.proxy_connect(pf, role, "appdb", pw, autocommit=True) as a, \
            pfhelpers.proxy_connect(pf, role, "appdb", pw, autocommit=True) as b:
        pa, pb = a.pgconn, b.pgconn
        pq_ok(pa.prepare(b"s1", b"SELECT 'A:' || $1::text, pg_backend_pid()"))
        pq_ok(pb.prepare(b"s1", b"SELECT $1::int * -1, pg_backend_pid()"))
        pq_ok(pa.prepare(b"only_a", b"SELECT 'only A'"))
        pids = set()
        for i in range(30):
            if i % 3 == 2:
                # Explicit transactions, interleaved: A's and B's run one after the other on
                # the one server.
                pq_ok(pa.exec_(b"BEGIN"))
                ra1 = pq_row(pa, b"s1", "x%d" % i)
                ra2 = pq_row(pa, b"s1", "y%d" % i)
                pq_ok(pa.exec_(b"COMMIT"))
                pq_ok(pb.exec_(b"BEGIN"))
                rb1 = pq_row(pb, b"s1", i)
                pq_ok(pb.exec_(b"COMMIT"))
                assert (ra1[0], ra2[0], rb1[0]) == ("A:x%d" % i, "A:y%d" % i, str(-i))
                pids.update((ra1[1], ra2[1], rb1[1]))
            else:
                ra = pq_row(pa, b"s1", "v%d" % i)
                rb = pq_row(pb, b"s1", i)
                assert (ra[0], rb[0]) == ("A:v%d" % i, str(-i)), (ra, rb)
                pids.update((ra[1], rb[1]))
        assert len(pids) == 1, "pool of one server, but backends %s" % pids
        assert pq_row(pa, b"only_a") == ("only A",)
        assert pq_sqlstate(pb.exec_prepared(b"only_a", [])) == "26000"

        # A third client over the wire: prepare "s1" (different SQL again), Close it.
        with pgwire.connect(pf.host, pf.port, role, "appdb", password=pw) as c:
            wire_prepare(c, "s1", "SELECT 'C:' || $1::text")
            assert wire_exec(c, "s1", "1") == ["2", "D:C:1", "C:SELECT 1", "Z:I"]
            assert pq_row(pa, b"s1", "a")[0] == "A:a"
            c.send(pgwire.fe_close("S", "s1") + pgwire.fe_sync())
            assert pgwire.tokens(c.read_until_ready(10)) == ["3", "Z:I"]
            # Closed for C: Bind and Describe of the name fail as in PostgreSQL ...
            toks = wire_exec(c, "s1", "2")
            assert toks[0].startswith("E:26000:") and toks[-1] == "Z:I", toks
            c.send(pgwire.fe_describe("S", "s1") + pgwire.fe_sync())
            toks = pgwire.tokens(c.read_until_ready(10))
            assert toks[0].startswith("E:26000:") and toks[-1] == "Z:I", toks
            # ... A's and B's "s1" are untouched ...
            assert pq_row(pa, b"s1", "b")[0] == "A:b"
            assert pq_row(pb, b"s1", 7)[0] == "-7"
            # ... and the name is free again for C.
            wire_prepare(c, "s1", "SELECT 'C2:' || $1::text")
            assert wire_exec(c, "s1", "3") == ["2", "D:C2:3", "C:SELECT 1", "Z:I"]
            # Closing a name that does not exist is not an error (as in PostgreSQL).
            c.send(pgwire.fe_close("S", "never_prepared") + pgwire.fe_sync())
            assert pgwire.tokens(c.read_until_ready(10)) == ["3", "Z:I"]
        assert pq_row(pa, b"s1", "c")[0] == "A:c"
        assert pq_row(pb, b"s1", 8)[0] == "-8"


def test_max_prepared_statements_0_passes_names_through(proxy, postgres):
    """max_prepared_statements=0 turns tracking off, as in PgBouncer: names reach the server as
    the client sent them, so on a pool of one server in transaction mode a statement client A
    prepared is visible to client B (and a second Parse of the name fails with 42P05, from
    Postgres itself)."""
    role, pw = pfhelpers.new_role(postgres, "drvoff")
    pf = tx_proxy(proxy, role, pw, default_pool_size=1, max_prepared_statements=0)
    with pfhelpers.proxy_connect(pf, role, "appdb", pw, autocommit=True) as a, \
            pfhelpers.proxy_connect(pf, role, "appdb", pw, autocommit=True) as b:
        pa, pb = a.pgconn, b.pgconn
        pq_ok(pa.prepare(b"shared_s1", b"SELECT 'made by A:' || $1::text, pg_backend_pid()"))
        ra = pq_row(pa, b"shared_s1", "1")
        rb = pq_row(pb, b"shared_s1", "2")
        assert rb[0] == "made by A:2" and rb[1] == ra[1], (ra, rb)
        # The server holds the client's own name, not a pgfunnel one.
        assert b.execute("SELECT name FROM pg_prepared_statements").fetchall() == [("shared_s1",)]
        assert pq_sqlstate(pb.prepare(b"shared_s1", b"SELECT 2")) == "42P05"
        assert server_prepared(pf, role) == [0]
