"""RELOAD every 100 ms under pgbench load (issue 10, part 5: reference-counted config snapshots).

pgbench -c 8 runs TPC-B-like transactions through pgfunnel (transaction pooling) while the
admin console RELOADs every 100 ms, each time with a different default_pool_size and a
different pool_size for the benchmark's [databases] entry, so every RELOAD really installs a
new snapshot and frees the one before it while servers and clients are busy. SHOW CONFIG and
SHOW DATABASES must show each change at once; pgbench must finish with no error; pgfunnel must
still run and, on a sanitizer build (PGFUNNEL_SANITIZED=1), report nothing (the pgfunnel
fixture checks the reports at teardown, finish() before it).

Duration: 15 s by default; 60 s with PGFUNNEL_LONG=1; PGFUNNEL_RELOAD_LOAD_SECONDS=N wins over
both.
"""

import os
import re
import shutil
import subprocess
import threading
import time

import pytest

import pfhelpers
from test_robust_clients import finish

PGBENCH = shutil.which("pgbench") or os.path.join(pfhelpers.PG_BINDIR, "pgbench")
CLIENTS = 8
RELOAD_INTERVAL = 0.1
# (default_pool_size, pool_size of the bench database), alternated on every RELOAD.
SETTINGS = [(20, 6), (12, 4)]


def duration():
    given = os.environ.get("PGFUNNEL_RELOAD_LOAD_SECONDS")
    if given:
        return int(given)
    return 60 if os.environ.get("PGFUNNEL_LONG") == "1" else 15


@pytest.fixture
def bench_db(postgres):
    """A role and a database of its own, initialised by pgbench -i (scale 1)."""
    role, password = pfhelpers.new_role(postgres, "rll")
    dbname = "rll_%d" % os.getpid()
    with postgres.connect(autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS %s" % dbname)
        conn.execute("CREATE DATABASE %s OWNER %s" % (dbname, role))
    env = pgenv(password)
    res = subprocess.run([PGBENCH, "-i", "-q", "-s", "1", "-h", postgres.host,
                          "-p", str(postgres.port), "-U", role, dbname],
                         env=env, capture_output=True, text=True, timeout=300,
                         stdin=subprocess.DEVNULL)
    assert res.returncode == 0, "pgbench -i failed:\n%s%s" % (res.stdout, res.stderr)
    yield role, password, dbname
    with postgres.connect(autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS %s WITH (FORCE)" % dbname)


def pgenv(password):
    env = dict(os.environ)
    env["PGPASSWORD"] = password
    env["PGCONNECT_TIMEOUT"] = "10"
    env.pop("PGSERVICE", None)
    return env


def config_value(console, name):
    rows = console.execute("SHOW CONFIG").fetchall()
    for row in rows:
        if row[0] == name:
            return row[1]
    raise AssertionError("SHOW CONFIG has no %s" % name)


def database_pool_size(console, name):
    cur = console.execute("SHOW DATABASES")
    cols = [d.name for d in cur.description]
    for row in pfhelpers.rows_as_dicts(cols, cur.fetchall()):
        if row["name"] == name:
            return row["pool_size"]
    raise AssertionError("SHOW DATABASES has no %s" % name)


@pytest.mark.skipif(not os.access(PGBENCH, os.X_OK), reason="pgbench is not installed")
def test_reload_every_100ms_under_pgbench(proxy, postgres, bench_db):
    role, password, dbname = bench_db
    secs = duration()
    params = {"pool_mode": "transaction", "default_pool_size": SETTINGS[0][0],
              "max_client_conn": 200, "query_wait_timeout": 60,
              "log_connections": 0, "log_disconnections": 0}

    def databases(pool_size):
        return {"bench": postgres.db_entry(dbname, pool_size=pool_size)}

    pf = proxy(params=params, databases=databases(SETTINGS[0][1]), userlist={role: password})
    base_params = dict(pf.params)
    base_databases = dict(pf.databases)

    bench = subprocess.Popen(
        [PGBENCH, "-n", "-c", str(CLIENTS), "-j", "2", "-T", str(secs), "-M", "simple",
         "-h", pf.host, "-p", str(pf.port), "-U", role, "bench"],
        env=pgenv(password), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    out = {}

    def collect():
        out["stdout"], out["stderr"] = bench.communicate()

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()

    reloads = 0
    mismatches = []
    console = pfhelpers.proxy_connect(pf, "postgres", "pgbouncer",
                                      postgres.passwords["postgres"], autocommit=True,
                                      prepare_threshold=None)
    try:
        next_at = time.monotonic()
        while bench.poll() is None:
            default_size, db_size = SETTINGS[(reloads + 1) % len(SETTINGS)]
            p = dict(base_params, default_pool_size=default_size)
            d = dict(base_databases, **databases(db_size))
            pf.write_ini(params=p, databases=d)
            console.execute("RELOAD")
            reloads += 1
            got = (config_value(console, "default_pool_size"),
                   database_pool_size(console, "bench"))
            if got != (str(default_size), db_size):
                mismatches.append((reloads, got, (default_size, db_size)))
            next_at += RELOAD_INTERVAL
            time.sleep(max(0.0, next_at - time.monotonic()))
    finally:
        console.close()
        if bench.poll() is None:
            bench.kill()
        reader.join(secs + 120)

    stdout, stderr = out.get("stdout", ""), out.get("stderr", "")
    report = "pgbench exit %r, %d reloads\nstdout:\n%s\nstderr:\n%s\npgfunnel:\n%s" % (
        bench.returncode, reloads, stdout, stderr[-5000:], pf.all_output()[-5000:])
    assert bench.returncode == 0, report
    processed = re.search(r"number of transactions actually processed: (\d+)", stdout)
    assert processed and int(processed.group(1)) > 0, report
    print("%d s: %s transactions, %d reloads" % (secs, processed.group(1), reloads))
    failed = re.search(r"number of failed transactions: (\d+)", stdout)
    assert failed is None or int(failed.group(1)) == 0, report
    assert "error" not in stderr.lower() and "abort" not in stderr.lower(), report
    # Every 100 ms, less what a RELOAD and two SHOWs take on a slow (sanitizer) build.
    assert reloads >= secs * 3, report
    assert not mismatches, "changes not visible after RELOAD: %s" % mismatches[:10]
    text = pf.log_text()
    assert text.count("config reloaded") >= reloads, report
    bad = [line for line in text.splitlines() if re.search(r"\] (ERROR|FATAL) ", line)]
    assert not bad, "\n".join(bad[:20])
    finish(pf)
