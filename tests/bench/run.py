#!/usr/bin/python3
"""Side-by-side benchmark: pgfunnel vs PgBouncer in front of a throwaway PostgreSQL 15.

One command (as root or as an ordinary user; root runs the servers as the
unprivileged system user `pgfunnel`, created if missing):

    tests/bench/run.py [--duration 10] [--rounds 3] [--quick] [--pooler-only]
                       [--baseline OTHER_PGFUNNEL_BINARY] [--pgbouncer PGBOUNCER_BINARY ...]
                       [--set default|prepared|tls|goals|bulk|all] [--max-prepared-statements 200]
                       [--tls-key rsa|ec] [--channel-binding prefer|disable|require]
                       [--tail-duration 20] [--idle-query select1|none] [--goal KEY=RATIO]

--baseline adds another pooler, "baseline" (another pgfunnel build, e.g. the commit before a
change), measured in the same run, interleaved with the others, and compared with pgfunnel.

--pgbouncer PATH (repeatable) picks the PgBouncer binaries; by default both of Debian's
/usr/sbin/pgbouncer (1.18) and ../shared/anchors/pgbouncer-1.25.2 (beside the repository's
directory) that exist. Each is named after the version its `--version` prints
("pgbouncer-1.18", "pgbouncer-1.25"), and pgfunnel's ratios are given to each of them.
--max-prepared-statements N (default 200) goes into every pooler's ini; PgBouncer older than
1.21 does not know the key and gets none (it then passes named statements through unmanaged,
which breaks them in transaction mode: its -M prepared rows are skipped).

--set chooses the scenarios by name: "default" (the five below), "prepared" (protocol-level
prepared statements in transaction mode: select-only with pgbench -M prepared and -M extended,
50 clients over the pool of 20, each on every pooler, all runs interleaved in every round),
"tls" (TLS on either leg, see below), "goals" (exactly the rows of issue 14's goal table, see
below), "bulk" (big-rows: pgbench -f tests/bench/big-row.sql -c 20 -j 2, every transaction
one 256 KiB row, to see what streaming costs per byte) or "all" (every scenario of every set
once). --scenario NAME (repeatable) picks single
scenarios of any set instead.

The "goals" set, each scenario interleaved over the poolers in every round (A, B, C, then
B, C, A, ...: the order turns each round):
  select-only          pgbench -S -c 200 -j 2: pooler CPU us/txn and TPS             (row 1)
  select-only-extended the same with -M extended: CPU us/txn                        (row 2)
  1-client-latency     pgbench -S -c 1, and the same straight to PostgreSQL as the pseudo-
                       pooler "direct" in the same rounds: latency added = the pooler's
                       median mean latency - direct's (mean latency = 1/TPS, finer than
                       pgbench's "latency average"; "direct" is in the default set too)  (row 3)
  select-only-20       pgbench -S -c 20 -j 2 through the poolers and the floor (below): not a
                       row; the least CPU per transaction a proxy could spend, for rows 1-2
  scram-login-16       pgbench -S -C -c 20 -j 2 as user bench16, whose userlist entry is a
  scram-login-4096     SCRAM secret of 16 (4096) iterations, the same secret as its PostgreSQL
                       password (CREATE ROLE ... PASSWORD 'SCRAM-SHA-256$...' stores it
                       verbatim; pg_read_all_data): the pooler checks the client's proof against
                       the secret and logs in to PostgreSQL with the ClientKey it recovered.
                       Every transaction is a login: CPU us/txn = CPU per login        (row 4)
  idle-memory          per round and pooler a FRESH pooler instance (memory an earlier run
                       freed would hide the growth), warmed up with pgbench -S -c 20 as
                       bench16, its VmRSS read; then a Python asyncio client
                       (tests/bench/benchwire.py) opens 5000 connections that log in as
                       bench16 (SCRAM, 64 logins in flight), each runs one SELECT 1 (or, with
                       --idle-query none, no query) and stays idle, holding no server in
                       transaction mode; once SHOW POOLS counts all 5000 in cl_active, VmRSS
                       every 0.5 s until it has not moved for 3 s (at most 15 s: the clients
                       sit idle; what a pooler returns after the burst of logins is not
                       counted; the reading at "all seen" is logged too): bytes per client =
                       delta RSS / 5000. The instance is then stopped
                       (checked like the final stop). CPU per login is shown too.     (row 5)
  tail-10k             pgbench -S -c 10000 -j 2 -l as bench16, -T --tail-duration (default
                       20 s; connection set-up comes first and is not timed): p50 and p99 of
                       the per-transaction latencies pgbench -l logged (the timed part only),
                       p99/p50 per round, medians. pgbench 15 waits with ppoll(), so 10000
                       sockets per process work once RLIMIT_NOFILE allows them. After each
                       run the pooler's SHOW POOLS must drop the 10000 clients within 120 s.
                       The goal row counts every transaction; "w/o 1st tx" is p99/p50 without
                       each client's first, which all start at once and form a burst that
                       queues behind itself (p99 is the burst's for every pooler).  (row 6)
The final table "issue 14 goals" has one row per figure: pgfunnel's, each PgBouncer's, the
ratio pgfunnel/PgBouncer to each, the goal and "met?". A goal is a ratio pgfunnel must reach
against every PgBouncer of the run (at most it for costs, at least it for TPS); all default to
1 (parity) and --goal KEY=RATIO (keys: cpu-select, tps-select, cpu-extended, latency-added,
login-16, login-4096, idle-bytes, tail-p99-p50) sets one. A figure <= 0 (say, no added
latency) is compared as such instead of as a ratio. Goals met or not do not change the exit
status.

Sockets: RLIMIT_NOFILE is raised before anything starts (soft to hard; as root the hard limit
too, towards 65536, where the kernel lets it), so pgbench, the Python client and the poolers
(which inherit it) can hold 10000 sockets; when a chosen scenario needs more than the limit
allows, that is a set-up failure. Every pooler's ini has max_client_conn=12000 and
admin_users=bench (for SHOW POOLS / SHOW LISTS). PostgreSQL gets max_connections=300: each
pooler may hold 20 servers for each of bench, bench16 and bench4096.

The floor (--floor PATH, by default tests/nullproxy of the build pgfunnel comes from, when it
was built; --floor none leaves it out): tests/bench/nullproxy.c, a proxy that forwards bytes
between each client and its own server connection with one read() and one write() each way
from one epoll loop, parsing nothing and pooling nothing (logins pass through to PostgreSQL).
It runs as the pseudo-pooler "floor" in 1-client-latency, where a pooler and it make the same
system calls (per transaction: epoll_wait, read and write on each side): its added latency and
CPU per transaction are what the kernel and the wake-ups cost any proxy of this design (a
user-space process relaying TCP through read/write), so a pooler's figure above the floor's is
its own. The goals table then shows the latency row over the floor. (Not at 200 clients: one
server per client there is 200 backends, and PostgreSQL on 2 CPUs serves them at a tenth of
the pooled rate, a different load.) The goals set therefore also runs select-only-20
(pgbench -S -c 20 -j 2, as many clients as the pool has servers, so every pooler keeps one
server per client like the floor) with the floor, and the final table shows its CPU per
transaction there next to the poolers' and its ratio to each PgBouncer: the least CPU any proxy
of this design could spend, against the goal of rows 1 and 2.

--instructions (instead of the scenarios): each pooler's user-space instructions per operation,
counted by valgrind's callgrind, which other load on the machine does not disturb: a select-only
transaction (pgbench -S -c 20 -j 2 -t N, simple and extended protocol) and a SCRAM login (pgbench
-S -C -c 4 -t N), all as bench16. Every pooler lives twice per operation, under a short and a
long pgbench; (instructions of the long life - of the short) / (operations of the long - of
the short) is one operation's cost, start-up and shutdown cancelling out. The kernel's work for
the system calls is not counted: it compares code, the scenarios compare CPU time.

The "tls" set (same ini otherwise: transaction mode, pool 20, SCRAM with the plain userlist):
  tls-select   pgbench -S -c 200 -j 2, PGSSLMODE=require; poolers with client_tls_sslmode=require
  tls-connect  pgbench -S -C -c 20 -j 2, PGSSLMODE=require: every transaction is a TCP connect,
               a TLS handshake and a SCRAM login (SCRAM-SHA-256-PLUS where the pooler offers
               channel binding and libpq's channel_binding=prefer takes it; --channel-binding
               sets PGCHANNELBINDING for the TLS runs); TPS = handshakes per second
  tls-server   pgbench -S -c 200 -j 2 over plain TCP; poolers with server_tls_sslmode=require
               toward a PostgreSQL with ssl=on (started so only when this scenario runs; the
               other scenarios then get server_tls_sslmode=disable, so their server leg stays
               plain as before)
One self-signed key + certificate (openssl req; --tls-key rsa = RSA 2048, the default, or ec =
ECDSA P-256) is made in the temp dir, readable by the servers' user only, and serves both poolers
(and PostgreSQL). The poolers run with one configuration "profile" at a time (plain, client-tls,
server-tls): when the next scenario needs another one they are stopped (checked like the final
stop) and started again with it, then warmed up. The protocol and cipher each pooler negotiates
(openssl s_client -starttls postgres), whether it offers channel binding, and the TLS state of
PostgreSQL's connections from the pooler (pg_stat_ssl) are printed as notes.

What it does:
  1. initdb + start a PostgreSQL 15 on a free loopback port (fsync=off,
     synchronous_commit=off, shared_buffers=128MB, max_connections=200),
     create a SCRAM user `bench` and a database `pgbench` (pgbench -i -s 10),
     and the users bench16 and bench4096 with SCRAM secrets as passwords.
  2. Write ONE ini + userlist (scram-sha-256, plain password for bench so every
     pooler can log in to PostgreSQL with SCRAM, the SCRAM secrets of bench16
     and bench4096, pool_mode=transaction, default_pool_size=20,
     max_client_conn=12000), copied per pooler with only listen_port and file
     paths changed, and start pgfunnel and each PgBouncer.
  3. For each scenario, run pgbench against each pooler alternately
     (A, B, C, then B, C, A, then C, A, B, ... for --rounds rounds: no pooler always
     runs first, right after the previous scenario's load).
  4. Per run: TPS, average latency, failed transactions, pooler CPU time per
     transaction (utime+stime from /proc/PID/stat around the run, divided by
     the transactions processed) and pooler RSS after the run.
  5. Print a table per scenario with medians over the rounds and the ratios
     pgfunnel/PgBouncer (to each PgBouncer) for TPS and CPU per transaction; for
     the "prepared" set also pgfunnel prepared/extended and pgfunnel prepared /
     PgBouncer prepared; for the goals set the final goal table.
  6. Stop everything it started (by PID; pg_ctl stop for PostgreSQL) and
     remove its temp dir, also on Ctrl-C or failure.

Exit status: 0 if every pgbench run (and idle-memory round) finished without
errors or failed transactions and every pooler stayed up and shut down cleanly; 1 otherwise; 2 on bad usage or a
set-up failure (PostgreSQL or a pooler did not start).

Stdlib only; no third-party modules.
"""

import argparse
import asyncio
import json
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import benchwire  # tests/bench/benchwire.py (this script's directory is on sys.path)

RUN_USER = "pgfunnel"
DB_USER = "bench"
DB_PASSWORD = "bench-scram-password"
DB_NAME = "pgbench"
PG_BINDIR_DEFAULT = "/usr/lib/postgresql/15/bin"
HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_ROOT = os.path.dirname(os.path.dirname(HERE))
# PgBouncer 1.18 (Debian 12's package) and 1.25.2 (the reference build in shared/anchors/,
# beside the repository's directory).
PGBOUNCER_DEFAULTS = [
    "/usr/sbin/pgbouncer",
    os.path.normpath(os.path.join(SOURCE_ROOT, "..", "shared", "anchors", "pgbouncer-1.25.2")),
]

# (name, pgbench arguments, which tps line is meaningful)
#   "excl": "tps = N (without initial connection time)"
#   "incl": "tps = N (including reconnection times)"   (-C: every transaction logs in)
SCENARIOS = [
    ("select-only", ["-S", "-c", "200", "-j", "2", "-M", "simple"], "excl"),
    ("select-only-extended", ["-S", "-c", "200", "-j", "2", "-M", "extended"], "excl"),
    ("connect-per-txn", ["-S", "-C", "-c", "50", "-j", "2", "-M", "simple"], "incl"),
    ("tpc-b", ["-c", "100", "-j", "2", "-M", "simple"], "excl"),
    ("1-client-latency", ["-S", "-c", "1", "-M", "simple"], "excl"),
]

# The "prepared" set: one group, its scenarios interleaved round by round (prepared and extended
# runs of a round see the same machine), 50 clients over default_pool_size=20. -j 2 is safe:
# pgbench 15 prepares with a blocking PQprepare() per client on its first transaction, but every
# request it sends ends with a Sync and -S is one autocommit statement, so a server goes back to
# the pool as soon as its answer is written, whoever reads it (checked: no stall with -j 2).
PREPARED_CLIENTS = "50"
PREPARED_SCENARIOS = [
    ("prepared-select", ["-S", "-c", PREPARED_CLIENTS, "-j", "2", "-M", "prepared"], "excl"),
    ("prepared-select-extended", ["-S", "-c", PREPARED_CLIENTS, "-j", "2", "-M", "extended"],
     "excl"),
]

SCENARIO_SETS = {
    "default": SCENARIOS,
    "prepared": PREPARED_SCENARIOS,
    "tls": None,  # filled in below
    "all": None,
}

# The "tls" set. Each scenario names the pooler configuration it needs (TLS_PROFILE) and what
# pgbench asks for (PGSSLMODE); everything else is the default set's. 200 clients over TLS: each
# client's handshake happens before the timed part (TPS "without initial connection time") but
# its CPU is in the pooler's CPU per transaction (200 handshakes over a whole run: noise).
# -C with 20 clients: every transaction is a connect + handshake + SCRAM login + one SELECT.
TLS_SCENARIOS = [
    ("tls-select", ["-S", "-c", "200", "-j", "2", "-M", "simple"], "excl"),
    ("tls-connect", ["-S", "-C", "-c", "20", "-j", "2", "-M", "simple"], "incl"),
    ("tls-server", ["-S", "-c", "200", "-j", "2", "-M", "simple"], "excl"),
]
SCENARIO_SETS["tls"] = TLS_SCENARIOS

# The "goals" set: exactly the rows of issue 14's goal table (see the docstring). Scenarios of
# a special kind are not plain pgbench runs: "idle" (idle-memory: a Python client holds
# IDLE_CLIENTS logged-in connections) and "tail" (tail-10k: pgbench -l, percentiles of the
# per-transaction latencies). scram-login-* log in as the users of SCRAM_USERS.
LOGIN_ARGS = ["-S", "-C", "-c", "20", "-j", "2", "-M", "simple"]
# select-only with as many clients as the pool has servers: every client keeps one server, so
# the floor (one server per client) carries the same load as the poolers here, which it cannot
# at 200 clients (200 backends).
FLOOR_SELECT = ("select-only-20", ["-S", "-c", "20", "-j", "2", "-M", "simple"], "excl")
TAIL_CLIENTS = 10000
IDLE_CLIENTS = 5000
GOALS_SCENARIOS = [
    SCENARIOS[0],  # select-only (row 1)
    SCENARIOS[1],  # select-only-extended (row 2)
    SCENARIOS[4],  # 1-client-latency, with the "direct" pseudo-pooler (row 3)
    FLOOR_SELECT,  # not a row: rows 1 and 2 measured against the floor where it can run
    ("scram-login-16", LOGIN_ARGS, "incl"),  # row 4
    ("scram-login-4096", LOGIN_ARGS, "incl"),
    ("idle-memory", [], "idle"),  # row 5
    ("tail-10k", ["-S", "-c", str(TAIL_CLIENTS), "-j", "2", "-M", "simple"], "tail"),  # row 6
]
SCENARIO_SETS["goals"] = GOALS_SCENARIOS

# The "bulk" set: big answers streamed through the pooler (each transaction one 256 KiB row,
# 20 clients on the pool of 20), where sbuf_loopcnt and the read/write path per byte count.
BULK_SCRIPT = os.path.join(HERE, "big-row.sql")
BULK_SCENARIOS = [
    ("big-rows", ["-f", BULK_SCRIPT, "-c", "20", "-j", "2", "-M", "simple"], "excl"),
]
SCENARIO_SETS["bulk"] = BULK_SCENARIOS
SCENARIO_SETS["all"] = []
for _sc in SCENARIOS + PREPARED_SCENARIOS + TLS_SCENARIOS + GOALS_SCENARIOS + BULK_SCENARIOS:
    if _sc[0] not in [x[0] for x in SCENARIO_SETS["all"]]:
        SCENARIO_SETS["all"].append(_sc)

# Users with a SCRAM secret (not a password) in the userlist, the same secret as their
# PostgreSQL password: name -> iterations. Their password (for the clients) is PASSWORDS[name].
SCRAM_USERS = {"bench16": 16, "bench4096": 4096}
PASSWORDS = {DB_USER: DB_PASSWORD, "bench16": "bench16-scram-password",
             "bench4096": "bench4096-scram-password"}
# Which user a scenario's clients log in as (absent: DB_USER). idle-memory and tail-10k take the
# 16-iteration user so that thousands of logins cost the client (Python, pgbench) little.
SCENARIO_USER = {"scram-login-16": "bench16", "scram-login-4096": "bench4096",
                 "idle-memory": "bench16", "tail-10k": "bench16"}
# Scenarios measured against PostgreSQL directly too, as the pseudo-pooler "direct".
DIRECT_SCENARIOS = {"1-client-latency"}
# Scenarios measured through the floor (--floor: tests/bench/nullproxy.c, a byte-forwarding proxy
# that pairs every client with its own server and parses nothing) too, as the pseudo-pooler
# "floor": what the kernel and the wake-ups cost any proxy on this design.
FLOOR_SCENARIOS = {"1-client-latency", "select-only-20"}
# The file descriptors the biggest scenario needs per process (pgbench's and the pooler's client
# sockets, plus servers, logs, slack); RLIMIT_NOFILE is raised before anything starts.
NOFILE_WANT = 65536
NOFILE_NEED = {"tail-10k": TAIL_CLIENTS + 500, "idle-memory": IDLE_CLIENTS + 500}
MAX_CLIENT_CONN = 12000

# Pooler configuration profile per scenario (absent: "plain", the default set's ini), and the
# sslmode pgbench uses with each profile.
TLS_PROFILE = {"tls-select": "client-tls", "tls-connect": "client-tls", "tls-server": "server-tls"}
PROFILE_CLIENT_SSLMODE = {"plain": "disable", "client-tls": "require", "server-tls": "disable"}


def scenario_profile(name):
    return TLS_PROFILE.get(name, "plain")

# PgBouncer manages protocol-level prepared statements (max_prepared_statements) from 1.21 on.
PGBOUNCER_PREPARED_MIN = (1, 21)

CLK_TCK = os.sysconf("SC_CLK_TCK")


class SetupError(Exception):
    """PostgreSQL or a pooler could not be started: exit status 2."""


class Interrupted(Exception):
    """SIGTERM/SIGHUP received: unwind through the finally blocks."""


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- users, files


def run_ids():
    """(uid, gid) of RUN_USER when we are root (creating the user if missing), else None."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(RUN_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                        "--shell", "/usr/sbin/nologin", RUN_USER], check=True)
        pw = pwd.getpwnam(RUN_USER)
    return pw.pw_uid, pw.pw_gid


def as_run_user(cmd):
    """cmd run as RUN_USER when root; setpriv execs in place, so the PID is the program's."""
    if os.geteuid() != 0:
        return list(cmd)
    return ["setpriv", "--reuid=" + RUN_USER, "--regid=" + RUN_USER, "--init-groups", "--"] + list(cmd)


def chown_run_user(path, ids):
    if ids is not None:
        os.chown(path, ids[0], ids[1])


def write_file(path, text, ids, mode=0o600):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, mode)
    chown_run_user(path, ids)


def read_text(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def tail(path, n=30):
    lines = read_text(path).splitlines()
    return "\n".join(lines[-n:])


# ---------------------------------------------------------------- ports, processes

_ports_taken = set()


def free_port():
    """A loopback TCP port that was free a moment ago and not handed out before by us."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _ports_taken:
            _ports_taken.add(port)
            return port
    raise SetupError("no free port")


def port_accepts(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def pid_alive(pid):
    """True while pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid, encoding="ascii", errors="replace") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return False


def cpu_split(pid):
    """(utime, stime) of pid (all its threads) in seconds, from /proc/PID/stat: user-space and
    kernel time."""
    with open("/proc/%d/stat" % pid, encoding="ascii", errors="replace") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the comm field: state is field 3 (index 0 here); utime 14, stime 15.
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_seconds(pid):
    """utime + stime of pid (all its threads) in seconds, from /proc/PID/stat."""
    return sum(cpu_split(pid))


def raise_nofile(need):
    """Raise RLIMIT_NOFILE (soft to the hard limit; as root the hard one to NOFILE_WANT first,
    within fs.nr_open) so that pgbench, the Python client and the poolers, which inherit it, can
    hold thousands of sockets. The soft limit reached; SetupError if it is below need."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < NOFILE_WANT and os.geteuid() == 0:
        try:
            nr_open = int(read_text("/proc/sys/fs/nr_open").strip() or NOFILE_WANT)
        except ValueError:
            nr_open = NOFILE_WANT
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, min(NOFILE_WANT, nr_open)))
        except (ValueError, OSError):
            pass
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and soft < need:
        raise SetupError("RLIMIT_NOFILE is %d (hard limit), the scenarios need %d: raise it"
                         " (ulimit -Hn) or run as root" % (soft, need))
    return soft


def rss_kib(pid):
    """VmRSS of pid in KiB (0 if unreadable)."""
    for line in read_text("/proc/%d/status" % pid).splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# ---------------------------------------------------------------- TLS files


def make_tls_files(workdir, ids, kind):
    """A self-signed certificate and its key for 127.0.0.1 made with the openssl CLI, owned by
    the servers' user (the key 0600, as PostgreSQL requires): (cert path, key path, description)."""
    cert = os.path.join(workdir, "tls.crt")
    key = os.path.join(workdir, "tls.key")
    if kind == "ec":
        newkey, desc = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"], "ECDSA P-256"
    else:
        newkey, desc = ["-newkey", "rsa:2048"], "RSA 2048"
    cmd = (["openssl", "req", "-x509", "-nodes", "-sha256", "-days", "2"] + newkey
           + ["-keyout", key, "-out", cert, "-subj", "/CN=127.0.0.1",
              "-addext", "subjectAltName=IP:127.0.0.1"])
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                             timeout=60)
    except OSError as e:
        raise SetupError("openssl CLI not usable: %s" % e)
    if res.returncode != 0:
        raise SetupError("%s failed (%d):\n%s%s" % (" ".join(cmd), res.returncode, res.stdout,
                                                     res.stderr))
    os.chmod(key, 0o600)
    os.chmod(cert, 0o644)
    chown_run_user(key, ids)
    chown_run_user(cert, ids)
    return cert, key, desc + " self-signed (openssl req)"


def tls_peek(port):
    """(protocol, cipher, peer key) that `openssl s_client -starttls postgres` negotiates with the
    listener on port, or None."""
    try:
        res = subprocess.run(["openssl", "s_client", "-starttls", "postgres", "-brief",
                              "-connect", "127.0.0.1:%d" % port],
                             capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = res.stdout + res.stderr
    proto = re.search(r"^Protocol version: (\S+)", text, re.M)
    cipher = re.search(r"^Ciphersuite: (\S+)", text, re.M)
    peer = re.search(r"^(?:Peer s|S)ignature type: (\S+)", text, re.M)
    group = re.search(r"^(?:Server Temp Key|Negotiated TLS1.3 group): (.+)$", text, re.M)
    if not proto or not cipher:
        return None
    return "%s %s%s%s" % (proto.group(1), cipher.group(1),
                          ", signature " + peer.group(1) if peer else "",
                          ", key exchange " + group.group(1).strip() if group else "")


# ---------------------------------------------------------------- PostgreSQL


class Postgres:
    def __init__(self, bindir, workdir, ids, tls=None):
        self.bindir = bindir
        self.ids = ids
        self.tls = tls  # (cert, key): ssl = on with them
        self.datadir = os.path.join(workdir, "pgdata")
        self.sockdir = workdir
        self.logfile = os.path.join(workdir, "postgres.log")
        self.port = free_port()
        self.started = False

    def _bin(self, name):
        return os.path.join(self.bindir, name)

    def _run(self, cmd, timeout, env=None):
        res = subprocess.run(as_run_user(cmd), cwd=self.sockdir, capture_output=True, text=True,
                             stdin=subprocess.DEVNULL, timeout=timeout, env=env)
        if res.returncode != 0:
            raise SetupError("%s failed (%d):\n%s%s\n%s" % (
                " ".join(cmd), res.returncode, res.stdout, res.stderr, tail(self.logfile)))
        return res

    def start(self, scale, secrets=None):
        """initdb, start, the bench user and database, pgbench -i; secrets = {user: SCRAM
        secret} makes those users too, with the secret as their password (stored verbatim)."""
        self._run([self._bin("initdb"), "-D", self.datadir, "-U", "postgres", "--auth=trust",
                   "--locale=C", "--encoding=UTF8", "--no-sync"], timeout=120)
        with open(os.path.join(self.datadir, "postgresql.conf"), "a", encoding="utf-8") as f:
            f.write("\n# pgfunnel benchmark (tests/bench/run.py)\n"
                    "listen_addresses = '127.0.0.1'\n"
                    "port = %d\n"
                    "unix_socket_directories = '%s'\n"
                    "max_connections = 300\n"
                    "fsync = off\n"
                    "synchronous_commit = off\n"
                    "full_page_writes = off\n"
                    "shared_buffers = 128MB\n"
                    "password_encryption = 'scram-sha-256'\n"
                    % (self.port, self.sockdir))
            if self.tls:
                f.write("ssl = on\n"
                        "ssl_cert_file = '%s'\n"
                        "ssl_key_file = '%s'\n" % self.tls)
        # Local socket: trust (set-up as superuser); TCP (the poolers, pgbench -i): SCRAM.
        with open(os.path.join(self.datadir, "pg_hba.conf"), "w", encoding="utf-8") as f:
            f.write("local  all  all                trust\n"
                    "host   all  all  127.0.0.1/32  scram-sha-256\n")
        self._run([self._bin("pg_ctl"), "-D", self.datadir, "-l", self.logfile, "-w", "-t", "60",
                   "start"], timeout=90)
        self.started = True
        psql = [self._bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.sockdir,
                "-p", str(self.port), "-U", "postgres", "-d", "postgres", "-c"]
        self._run(psql + ["CREATE ROLE %s LOGIN PASSWORD '%s'" % (DB_USER, DB_PASSWORD)], timeout=30)
        self._run(psql + ["CREATE DATABASE %s OWNER %s" % (DB_NAME, DB_USER)], timeout=60)
        for user, secret in sorted((secrets or {}).items()):
            self._run(psql + ["CREATE ROLE %s LOGIN PASSWORD '%s'" % (user, secret)], timeout=30)
            self._run(psql + ["GRANT pg_read_all_data TO %s" % user], timeout=30)
            stored = self.query("SELECT rolpassword FROM pg_authid WHERE rolname = '%s'" % user)
            if stored != [secret]:
                raise SetupError("PostgreSQL did not store %s's SCRAM secret verbatim: %r" % (
                    user, stored))
        # Initialise over TCP with SCRAM, exactly like the clients will authenticate.
        env = dict(os.environ, PGPASSWORD=DB_PASSWORD)
        self._run([self._bin("pgbench"), "-i", "-q", "-s", str(scale), "-h", "127.0.0.1",
                   "-p", str(self.port), "-U", DB_USER, DB_NAME], timeout=600, env=env)

    def query(self, sql):
        """Rows of sql (unaligned, '|'-separated) as the superuser over the unix socket."""
        res = self._run([self._bin("psql"), "-X", "-q", "-A", "-t", "-h", self.sockdir,
                         "-p", str(self.port), "-U", "postgres", "-d", "postgres", "-c", sql],
                        timeout=30)
        return [l for l in res.stdout.splitlines() if l]

    def stop(self):
        if not self.started:
            return
        self.started = False
        pidtext = read_text(os.path.join(self.datadir, "postmaster.pid"))
        res = subprocess.run(as_run_user([self._bin("pg_ctl"), "-D", self.datadir, "-m", "fast",
                                          "-w", "-t", "30", "stop"]),
                             capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
        if res.returncode != 0 and pidtext.strip():
            pid = int(pidtext.split("\n", 1)[0])
            try:
                os.kill(pid, signal.SIGQUIT)
            except OSError:
                pass


# ---------------------------------------------------------------- poolers


def make_ini(pg_port, port, workdir, name, max_prepared=None, profile="plain", tls=None,
             pg_ssl=False):
    """The common configuration; only listen_port and file paths differ per pooler (and
    max_prepared_statements, left out for a PgBouncer that does not know it). name is the file
    name stem (pooler name, plus the profile unless plain). profile "client-tls" adds
    client_tls_sslmode=require with the key/cert tls = (cert, key), "server-tls"
    server_tls_sslmode=require; the others get server_tls_sslmode=disable when PostgreSQL has
    ssl=on (pg_ssl), so their server leg stays plain TCP as with an ssl=off PostgreSQL."""
    extra = ""
    if profile == "client-tls":
        extra = ("client_tls_sslmode = require\n"
                 "client_tls_cert_file = %s\n"
                 "client_tls_key_file = %s\n"
                 "server_tls_sslmode = disable\n" % tls)
    elif profile == "server-tls":
        extra = "server_tls_sslmode = require\n"
    elif pg_ssl:
        extra = "server_tls_sslmode = disable\n"
    return ("[databases]\n"
            "%s = host=127.0.0.1 port=%d dbname=%s\n"
            "\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            "listen_port = %d\n"
            "unix_socket_dir =\n"
            "auth_type = scram-sha-256\n"
            "auth_file = %s\n"
            "pool_mode = transaction\n"
            "default_pool_size = 20\n"
            "max_client_conn = %d\n"
            "admin_users = %s\n"
            "logfile = %s\n"
            "pidfile = %s\n"
            % (DB_NAME, pg_port, DB_NAME, port, os.path.join(workdir, "userlist.txt"),
               MAX_CLIENT_CONN, DB_USER, os.path.join(workdir, name + ".log"), os.path.join(workdir, name + ".pid"))
            + ("max_prepared_statements = %d\n" % max_prepared if max_prepared is not None
               else "")
            + extra)


def pgbouncer_version(binary):
    """(major, minor, patch) from `PATH --version` ("PgBouncer 1.25.2"), or None."""
    try:
        res = subprocess.run(as_run_user([binary, "--version"]), capture_output=True, text=True,
                             stdin=subprocess.DEVNULL, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"PgBouncer (\d+)\.(\d+)(?:\.(\d+))?", res.stdout + res.stderr)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)) if m else None


class Pooler:
    def __init__(self, name, binary, workdir, pg_port, ids, extra_args=(), max_prepared=None,
                 version=None, profile="plain", tls=None, pg_ssl=False, label=None):
        self.name = name
        self.profile = profile
        # Files and report lines: "pgfunnel", or "pgfunnel-client-tls" for another profile (or
        # label, e.g. "pgfunnel-idle1" for a fresh instance of one scenario round).
        self.label = label or (name if profile == "plain" else "%s-%s" % (name, profile))
        self.stop_result = None  # (problem or None, note) once stopped by stop_checked()
        self.version = version  # PgBouncer's (major, minor, patch); None for pgfunnel
        # Manages protocol-level prepared statements in transaction mode (max_prepared set).
        self.prepared = max_prepared is not None and max_prepared > 0
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.ini = os.path.join(workdir, self.label + ".ini")
        self.logfile = os.path.join(workdir, self.label + ".log")
        self.outfile = os.path.join(workdir, self.label + ".out")
        self.extra_args = list(extra_args)
        self.proc = None
        self.rss_trace = []  # (label, KiB)
        self.exit_note = ""
        write_file(self.ini, make_ini(pg_port, self.port, workdir, self.label, max_prepared,
                                      profile, tls, pg_ssl), ids)

    @property
    def pid(self):
        return self.proc.pid

    def command(self):
        # Foreground, -q: logs only to its logfile (stdout/stderr kept in NAME.out).
        return as_run_user([self.binary, "-q"] + self.extra_args + [self.ini])

    start_timeout = 15  # seconds until the pooler must listen

    def start(self):
        with open(self.outfile, "wb") as out:
            self.proc = subprocess.Popen(self.command(), cwd=self.workdir, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SetupError("%s exited with status %d at start-up:\n%s\n%s" % (
                    self.label, self.proc.returncode, read_text(self.outfile), tail(self.logfile)))
            if port_accepts(self.port):
                self.rss_trace.append(("start", rss_kib(self.pid)))
                return
            time.sleep(0.05)
        raise SetupError("%s did not listen on port %d within %d s:\n%s\n%s" % (
            self.label, self.port, self.start_timeout, read_text(self.outfile),
            tail(self.logfile)))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=10):
        """SIGTERM, then SIGKILL after timeout s; None if it exited cleanly, else what went wrong."""
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            return "%s had already exited (status %d)" % (self.label, self.proc.returncode)
        try:
            cpu0 = cpu_seconds(self.pid)
        except OSError:
            cpu0 = None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                busy = cpu_seconds(self.pid) - cpu0 if cpu0 is not None else None
            except OSError:
                busy = None
            self.proc.kill()
            self.proc.wait(timeout=10)
            return ("%s did not exit within %d s of SIGTERM (used %s s of CPU meanwhile); killed"
                    % (self.label, timeout, fmt(busy, ".2f")))
        # Not a failure: PgBouncer 1.18 logs "got SIGTERM, fast exit" and exits with status 1.
        self.exit_note = "exited with status %d %.1f s after SIGTERM" % (rc, time.monotonic() - t0)
        return None

    def stop_checked(self):
        """stop() once, remembering the outcome for the report: the problem (None if clean)."""
        if self.stop_result is None:
            problem = self.stop()
            self.stop_result = (problem, self.exit_note)
        return self.stop_result[0]

    def log_problems(self, limit=8):
        """(count, first distinct messages) of ERROR/WARNING/FATAL/PANIC lines in the logfile."""
        count = 0
        seen = []
        for line in read_text(self.logfile).splitlines():
            if re.search(r"\b(ERROR|WARNING|FATAL|PANIC)\b", line):
                count += 1
                # Drop timestamp / pid / connection ids so repeats collapse.
                msg = re.sub(r"^\S+ \S+ (\S+ )?\[\d+\] ", "", line)
                msg = re.sub(r"\b[SC]-0x[0-9a-f]+\b", "X", msg)
                msg = re.sub(r"\d+", "N", msg)
                if msg not in seen and len(seen) < limit:
                    seen.append(msg)
        return count, seen


class Direct:
    """The pseudo-pooler "direct": pgbench straight to PostgreSQL (no pooler CPU or RSS)."""

    name = label = "direct"
    profile = "plain"
    prepared = True
    pid = None

    def __init__(self, pg):
        self.pg = pg
        self.port = pg.port
        self.binary = "PostgreSQL %d" % pg.port

    def alive(self):
        return True


class Floor(Pooler):
    """The pseudo-pooler "floor": nullproxy LISTEN_PORT PG_PORT (no ini, no auth of its own:
    the client's login goes through to PostgreSQL; one server connection per client)."""

    def __init__(self, binary, workdir, pg_port):  # pylint: disable=super-init-not-called
        self.name = self.label = "floor"
        self.profile = "plain"
        self.stop_result = None
        self.version = None
        self.prepared = True
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.logfile = self.outfile = os.path.join(workdir, "floor.out")
        self.extra_args = [str(self.port), str(pg_port)]
        self.proc = None
        self.rss_trace = []
        self.exit_note = ""

    def command(self):
        return [self.binary] + self.extra_args


# ---------------------------------------------------------------- pgbench

RE_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
RE_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)
RE_LATENCY = re.compile(r"^latency average = ([0-9.]+) ms", re.M)
RE_TPS_EXCL = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M)
RE_TPS_INCL = re.compile(r"^tps = ([0-9.]+) \(including (?:reconnection times|connections establishing)\)",
                         re.M)


class CallgrindPooler(Pooler):
    """A pooler run under valgrind --tool=callgrind, to count its user-space instructions (Ir)
    over a whole life (start-up and shutdown included; --instructions subtracts two lives)."""

    start_timeout = 120  # valgrind's start-up takes seconds

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cg_out = os.path.join(self.workdir, self.label + ".callgrind")

    def command(self):
        return as_run_user(["valgrind", "--tool=callgrind", "--callgrind-out-file=" + self.cg_out,
                            self.binary, "-q"] + self.extra_args + [self.ini])

    def instructions(self):
        """Ir of the whole run, from the callgrind file written at exit (after stop())."""
        m = re.search(r"^(?:summary|totals): (\d+)", read_text(self.cg_out), re.M)
        if not m:
            raise SetupError("no callgrind totals in %s:\n%s" % (self.cg_out,
                                                                 read_text(self.outfile)))
        return int(m.group(1))


# --instructions: (name, user, pgbench arguments without -t, operations per -t unit, short and
# long -t). Each pooler lives twice per workload, once per -t; the difference of the two lives'
# instruction counts over the difference of operations is the cost of one operation, start-up,
# warm-up and shutdown cancelling out. All as bench16 (a 16-iteration SCRAM secret): with
# DB_USER's plain-text password PgBouncer runs a 4096-iteration PBKDF2 (about 33 million
# instructions) for every server it opens, and how many of the 20 it opens varies with timing.
INSTRUCTION_WORKLOADS = [
    ("select-only transaction", "bench16", ["-S", "-c", "20", "-j", "2", "-M", "simple"], 20,
     100, 600),
    ("-M extended transaction", "bench16", ["-S", "-c", "20", "-j", "2", "-M", "extended"], 20,
     100, 600),
    ("SCRAM login (16 it.)", "bench16", ["-S", "-C", "-c", "4", "-j", "1", "-M", "simple"], 4,
     50, 300),
]


def pgbench_count(bindir, pooler, args, count, user):
    """pgbench -t count through pooler; the number of transactions it processed."""
    cmd = [os.path.join(bindir, "pgbench"), "-n", "-t", str(count), "-h", "127.0.0.1",
           "-p", str(pooler.port), "-U", user] + args + [DB_NAME]
    res = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                         env=pgbench_env(user=user), timeout=1800)
    m = RE_PROCESSED.search(res.stdout)
    done = int(m.group(1)) if m else 0
    if res.returncode != 0 or not done:
        raise SetupError("pgbench through %s failed (status %d):\n%s%s" % (
            pooler.label, res.returncode, res.stdout[-2000:], res.stderr[-2000:]))
    return done


def count_instructions(a, pg, specs, workdir, ids, titles):
    """--instructions: user-space instructions per operation of every pooler under callgrind
    (noise-free, unlike CPU time on a shared machine), and pgfunnel's ratio to each other."""
    if not shutil.which("valgrind"):
        raise SetupError("--instructions needs valgrind (scripts/install-deps.sh installs it)")
    names = [sp[0] for sp in specs]
    table = {}
    for wl, user, args, per_t, t_short, t_long in INSTRUCTION_WORKLOADS:
        table[wl] = {}
        for name, binary, extra, mp, version in specs:
            counts = []
            for t in (t_short, t_long):
                p = CallgrindPooler(name, binary, workdir, pg.port, ids, extra, max_prepared=mp,
                                    version=version, label="%s-cg" % name)
                p.start()
                try:
                    done = pgbench_count(a.pg_bindir, p, args, t, user)
                finally:
                    problem = p.stop(timeout=120)
                if problem:
                    raise SetupError(problem)
                counts.append((done, p.instructions()))
            (d0, i0), (d1, i1) = counts
            per_op = (i1 - i0) / (d1 - d0) if d1 > d0 else None
            table[wl][name] = per_op
            log("  %-26s %-16s %s instructions per operation (%d and %d operations: %d, %d Ir)"
                % (wl, name, fmt(per_op, ".0f"), d0, d1, i0, i1))
    print()
    print("== user-space instructions per operation (callgrind Ir; pgbench -t, two lives per"
          " pooler) ==")
    others = [n for n in names if n != "pgfunnel"]
    head = "%-26s" % "operation"
    for n in names:
        head += " %16s" % titles.get(n, n)
    for n in others:
        head += " %14s" % ("x " + titles.get(n, n).replace("PgBouncer ", "PgB "))
    print(head)
    for wl in table:
        row = "%-26s" % wl
        for n in names:
            row += " %16s" % fmt(table[wl][n], ".0f")
        for n in others:
            row += " %14s" % fmt(ratio(table[wl]["pgfunnel"], table[wl][n]), ".2f")
        print(row)
    print("(the pooler's own code and its libraries in user space; the kernel's work for its"
          " system calls, most of its CPU here, is not counted)")
    sys.stdout.flush()
    return table


def pgbench_env(sslmode="disable", channel_binding=None, user=DB_USER):
    env = dict(os.environ, PGPASSWORD=PASSWORDS[user], PGSSLMODE=sslmode)
    env.pop("PGCHANNELBINDING", None)
    if channel_binding and sslmode != "disable":
        env["PGCHANNELBINDING"] = channel_binding
    return env


def latency_log(prefix):
    """Per-transaction latencies in ms from pgbench -l files PREFIX.PID[.THREAD] (each line
    "client_id transaction_no time_us script_no epoch epoch_us"; a failed or skipped
    transaction has no number there): (sorted latencies, lines not counted, sorted latencies of
    the transactions after each client's first, sorted per-client means of those, transactions
    completed per second of the run). The files are removed.

    Every client's first transaction starts in the same instant (pgbench starts them all once
    the connections are made), so with 10000 clients they form a burst that queues behind
    itself; the latencies without them are the steady state's. The per-client means tell
    unfairness (some clients served later than others, which a FIFO wait queue would not do)
    from stalls of the whole machine (every client waits longer for a while: the per-second
    counts dip, and every client's mean moves alike)."""
    lats, other, steady = [], 0, []
    per_client, per_second = {}, {}
    d, base = os.path.split(prefix)
    for fn in sorted(os.listdir(d)):
        if not fn.startswith(base + "."):
            continue
        path = os.path.join(d, fn)
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2].isdigit():
                    lats.append(int(parts[2]) / 1000.0)
                    if parts[1].isdigit() and int(parts[1]) > 1:
                        steady.append(lats[-1])
                        acc = per_client.setdefault(parts[0], [0.0, 0])
                        acc[0] += lats[-1]
                        acc[1] += 1
                    if len(parts) >= 5 and parts[4].isdigit():
                        per_second[int(parts[4])] = per_second.get(int(parts[4]), 0) + 1
                else:
                    other += 1
        os.unlink(path)
    lats.sort()
    steady.sort()
    means = sorted(total / n for total, n in per_client.values())
    return lats, other, steady, means, [per_second[t] for t in sorted(per_second)]


def percentile(sorted_values, q):
    """Nearest-rank percentile q (0..100) of an ascending list, None if empty."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, int(-(-q * len(sorted_values) // 100)) - 1))
    return sorted_values[k]


def run_pgbench(bindir, pooler, args, duration, tps_kind, sslmode="disable",
                channel_binding=None, user=DB_USER, log_prefix=None, timeout=120):
    """One pgbench run against pooler; a dict of measurements (errors listed in "errors").
    log_prefix: pgbench -l --log-prefix=log_prefix, and p50/p99 of the logged (timed)
    transactions' latencies in the result. timeout: seconds allowed beyond duration."""
    cmd = [os.path.join(bindir, "pgbench"), "-n", "-T", str(duration), "-h", "127.0.0.1",
           "-p", str(pooler.port), "-U", user] + args
    if log_prefix:
        cmd += ["-l", "--log-prefix=" + log_prefix]
    cmd += [DB_NAME]
    env = pgbench_env(sslmode, channel_binding, user)
    cpu0 = cpu_seconds(pooler.pid) if pooler.pid else None
    user0 = cpu_split(pooler.pid)[0] if pooler.pid else None
    t0 = time.monotonic()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                             env=env, timeout=duration + timeout,
                             cwd=os.path.dirname(log_prefix) if log_prefix else None)
        rc, out, err = res.returncode, res.stdout, res.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = -1, e.stdout or "", (e.stderr or "") + "\n(pgbench timed out)"
        out = out.decode() if isinstance(out, bytes) else out
        err = err.decode() if isinstance(err, bytes) else err
    wall = time.monotonic() - t0
    alive = pooler.alive()
    cpu1 = cpu_seconds(pooler.pid) if alive and pooler.pid else cpu0
    user1 = cpu_split(pooler.pid)[0] if alive and pooler.pid else user0
    rss = rss_kib(pooler.pid) if alive and pooler.pid else 0

    r = {"pooler": pooler.name, "profile": pooler.profile, "sslmode": sslmode, "rc": rc,
         "wall_s": round(wall, 2), "errors": []}
    m = RE_PROCESSED.search(out)
    r["txns"] = int(m.group(1)) if m else 0
    m = RE_FAILED.search(out)
    r["failed"] = int(m.group(1)) if m else 0
    m = RE_LATENCY.search(out)
    r["latency_ms"] = float(m.group(1)) if m else None
    m = (RE_TPS_INCL if tps_kind == "incl" else RE_TPS_EXCL).search(out)
    r["tps"] = float(m.group(1)) if m else None
    r["cpu_s"] = cpu1 - cpu0 if cpu0 is not None else None
    r["cpu_us_per_txn"] = (r["cpu_s"] * 1e6 / r["txns"]) if r["txns"] and cpu0 is not None else None
    # The user-space part (utime): what the pooler's own code costs, the rest being the kernel's
    # work for its system calls.
    r["user_us_per_txn"] = ((user1 - user0) * 1e6 / r["txns"]
                            if r["txns"] and user0 is not None else None)
    r["rss_kib"] = rss
    # Mean latency from the TPS (6 decimals) rather than pgbench's "latency average" (1 us
    # steps): clients / TPS, what pgbench computes its average from.
    clients = int(args[args.index("-c") + 1]) if "-c" in args else 1
    r["latency_us"] = clients * 1e6 / r["tps"] if r["tps"] else None
    m = re.search(r"^initial connection time = ([0-9.]+) ms", out, re.M)
    r["conn_time_ms"] = float(m.group(1)) if m else None
    if log_prefix:
        lats, other, steady, means, per_second = latency_log(log_prefix)
        r["logged_txns"], r["logged_other"] = len(lats), other
        r["p50_ms"], r["p99_ms"] = percentile(lats, 50), percentile(lats, 99)
        r["p99_p50"] = ratio(r["p99_ms"], r["p50_ms"])
        r["steady_p99_p50"] = ratio(percentile(steady, 99), percentile(steady, 50))
        # Fairness: p99/p50 of the clients' mean latencies (1.0: every client waited alike).
        r["client_p99_p50"] = ratio(percentile(means, 99), percentile(means, 50))
        # Stalls: the slowest second's completions / the median second's (first and last
        # seconds left out: partial).
        inner = sorted(per_second[1:-1])
        r["tps_dip"] = ratio(inner[0], percentile(inner, 50)) if inner else None
        if lats and r["txns"] and len(lats) != r["txns"]:
            r["errors"].append("pgbench -l logged %d transactions, reported %d" % (
                len(lats), r["txns"]))

    if not alive:
        r["errors"].append("%s is no longer running (exit status %s)" % (pooler.name,
                                                                         pooler.proc.returncode))
    if rc != 0:
        r["errors"].append("pgbench exit status %d" % rc)
    if r["failed"]:
        r["errors"].append("%d failed transactions" % r["failed"])
    if r["tps"] is None or r["txns"] == 0:
        r["errors"].append("no tps / transactions in pgbench output")
    aborted = [l for l in err.splitlines() if "aborted" in l or "error" in l.lower()]
    if aborted:
        r["errors"].append("pgbench stderr: %s%s" % (
            aborted[0].strip(), " (+%d more lines)" % (len(aborted) - 1) if len(aborted) > 1 else ""))
    r["stdout"] = out
    r["stderr"] = err
    return r


# ---------------------------------------------------------------- report


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, spec):
    return format(v, spec) if v is not None else "-"


def summarize(runs):
    return {
        "tps": med([r.get("tps") for r in runs]),
        "latency_ms": med([r.get("latency_ms") for r in runs]),
        "latency_us": med([r.get("latency_us") for r in runs]),
        "cpu_us_per_txn": med([r.get("cpu_us_per_txn") for r in runs]),
        "user_us_per_txn": med([r.get("user_us_per_txn") for r in runs]),
        "rss_kib": max((r.get("rss_kib") or 0 for r in runs), default=0),
        "failed": sum(r.get("failed") or 0 for r in runs),
        "all_tps": [r.get("tps") for r in runs],
        "all_cpu": [r.get("cpu_us_per_txn") for r in runs],
        "all_latency": [r.get("latency_ms") for r in runs],
        # tail-10k (pgbench -l): medians over the rounds of each round's percentiles
        "p50_ms": med([r.get("p50_ms") for r in runs]),
        "p99_ms": med([r.get("p99_ms") for r in runs]),
        "p99_p50": med([r.get("p99_p50") for r in runs]),
        "all_p99_p50": [r.get("p99_p50") for r in runs],
        "steady_p99_p50": med([r.get("steady_p99_p50") for r in runs]),
        "client_p99_p50": med([r.get("client_p99_p50") for r in runs]),
        "tps_dip": med([r.get("tps_dip") for r in runs]),
        "conn_time_ms": med([r.get("conn_time_ms") for r in runs]),
        # idle-memory
        "bytes_per_client": med([r.get("bytes_per_client") for r in runs]),
        "all_bytes_per_client": [r.get("bytes_per_client") for r in runs],
        "cpu_us_per_login": med([r.get("cpu_us_per_login") for r in runs]),
    }


def ratio(a, b):
    return a / b if a and b else None


def bouncer_names(names):
    """The PgBouncer poolers among names (they are called "pgbouncer-MAJOR.MINOR...")."""
    return [n for n in names if n.startswith("pgbouncer")]


def print_prepared_ratios(rounds, results):
    """The "prepared" set's cross-scenario ratios (medians; per-round pairs for pgfunnel)."""
    prep, ext = results.get("prepared-select", {}), results.get("prepared-select-extended", {})
    out = {}

    def line(label, key, a_runs, b_runs, paired=False):
        a, b = summarize(a_runs), summarize(b_runs)
        tps, cpu = ratio(a["tps"], b["tps"]), ratio(a["cpu_us_per_txn"], b["cpu_us_per_txn"])
        extra = ""
        if paired:
            per = [ratio(x["tps"], y["tps"]) for x, y in zip(a_runs, b_runs)]
            per_cpu = [ratio(x["cpu_us_per_txn"], y["cpu_us_per_txn"])
                       for x, y in zip(a_runs, b_runs)]
            extra = "  (per round: TPS %s; CPU %s)" % (" ".join(fmt(v, ".2f") for v in per),
                                                     " ".join(fmt(v, ".2f") for v in per_cpu))
        print("%-46s TPS x%s, CPU/txn x%s%s" % (label + ":", fmt(tps, ".2f"), fmt(cpu, ".2f"),
                                                extra))
        out[key] = {"tps": tps, "cpu_us_per_txn": cpu}

    print()
    print("== prepared statements: ratios of medians (%d round%s) ==" % (
        rounds, "" if rounds == 1 else "s"))
    if prep.get("pgfunnel") and ext.get("pgfunnel"):
        line("pgfunnel prepared / pgfunnel extended", "pgfunnel_prepared_vs_extended",
             prep["pgfunnel"], ext["pgfunnel"], paired=True)
    for b in bouncer_names(sorted(set(prep) | set(ext))):
        if prep.get("pgfunnel") and prep.get(b):
            line("pgfunnel prepared / %s prepared" % b, "pgfunnel_vs_%s_prepared" % b,
                 prep["pgfunnel"], prep[b])
        if ext.get("pgfunnel") and ext.get(b):
            line("pgfunnel extended / %s extended" % b, "pgfunnel_vs_%s_extended" % b,
                 ext["pgfunnel"], ext[b])
        if prep.get(b) and ext.get(b):
            line("%s prepared / %s extended" % (b, b), "%s_prepared_vs_extended" % b,
                 prep[b], ext[b], paired=True)
    if prep.get("pgfunnel") and prep.get("baseline"):
        line("pgfunnel prepared / baseline prepared", "pgfunnel_vs_baseline_prepared",
             prep["pgfunnel"], prep["baseline"])
    sys.stdout.flush()
    return out


def print_table(name, cmdline, rounds, duration, poolers, results, env=""):
    """A scenario's medians per pooler and pgfunnel's ratios to every other pooler; for
    1-client-latency with "direct", the latency each pooler adds; for tail-10k, the logged
    percentiles."""
    print()
    print("== %s: %spgbench %s -T %d  (%d round%s, medians) ==" % (
        name, env + " " if env else "", cmdline, duration, rounds, "" if rounds == 1 else "s"))
    print("%-15s %10s %11s %11s %9s %7s   %s | %s" % (
        "pooler", "TPS", "latency ms", "CPU us/txn", "RSS MiB", "failed", "TPS per round",
        "CPU us/txn per round"))
    sums = {}
    for p in poolers:
        s = summarize(results[p.name])
        sums[p.name] = s
        print("%-15s %10s %11s %11s %9s %7d   %s | %s" % (
            p.name, fmt(s["tps"], ".1f"), fmt(s["latency_ms"], ".3f"),
            fmt(s["cpu_us_per_txn"], ".1f"),
            "%.1f" % (s["rss_kib"] / 1024.0) if p.pid else "-", s["failed"],
            " ".join(fmt(t, ".0f") for t in s["all_tps"]),
            " ".join(fmt(c, ".1f") for c in s["all_cpu"])))
    if any(s["p50_ms"] is not None for s in sums.values()):
        print("%-15s %10s %10s %8s %11s %11s %8s %14s   %s" % (
            "latency log", "p50 ms", "p99 ms", "p99/p50", "w/o 1st tx", "per client", "tps dip",
            "conn. set-up s", "p99/p50 per round"))
        for p in poolers:
            s = sums[p.name]
            print("%-15s %10s %10s %8s %11s %11s %8s %14s   %s" % (
                p.name, fmt(s["p50_ms"], ".3f"), fmt(s["p99_ms"], ".3f"),
                fmt(s["p99_p50"], ".2f"), fmt(s["steady_p99_p50"], ".2f"),
                fmt(s["client_p99_p50"], ".2f"), fmt(s["tps_dip"], ".2f"),
                fmt(s["conn_time_ms"] and s["conn_time_ms"] / 1000.0, ".1f"),
                " ".join(fmt(v, ".2f") for v in s["all_p99_p50"])))
        print("(w/o 1st tx: without each client's first transaction; per client: p99/p50 of the"
              " clients' mean latencies w/o 1st tx, 1.00 = every client waited alike; tps dip:"
              " the slowest second's completions / the median second's, low = the machine"
              " stalled)")
    direct = sums.get("direct")
    if direct and direct["latency_us"] is not None:
        for n, s in sums.items():
            if n != "direct" and s["latency_us"] is not None:
                s["added_latency_us"] = s["latency_us"] - direct["latency_us"]
        print("mean latency (clients/TPS), medians: %s; added over direct: %s" % (
            ", ".join("%s %s us" % (n, fmt(s["latency_us"], ".1f")) for n, s in sums.items()),
            ", ".join("%s %s us" % (n, fmt(s.get("added_latency_us"), ".1f"))
                      for n, s in sums.items() if n != "direct")))
    others = [n for n in sums if n not in ("pgfunnel", "direct")]
    if "pgfunnel" in sums:
        a = sums["pgfunnel"]
        for n in others:
            b = sums[n]
            tps_ratio = ratio(a["tps"], b["tps"])
            cpu_ratio = ratio(a["cpu_us_per_txn"], b["cpu_us_per_txn"])
            extra = ""
            if n == "baseline":
                extra = ", latency x%s" % fmt(ratio(a["latency_ms"], b["latency_ms"]), ".2f")
            if a["p99_p50"] is not None:
                extra += ", p99/p50 x%s" % fmt(ratio(a["p99_p50"], b["p99_p50"]), ".2f")
            if direct:
                extra += ", added latency x%s" % fmt(ratio(a.get("added_latency_us"),
                                                           b.get("added_latency_us")), ".2f")
            print("pgfunnel/%s: TPS x%s, CPU/txn x%s%s" % (n, fmt(tps_ratio, ".2f"),
                                                          fmt(cpu_ratio, ".2f"), extra))
            if n != "baseline" and tps_ratio is not None and tps_ratio < 0.5:
                print("  !! pgfunnel below 50%% of %s's TPS in %s" % (n, name))
    sys.stdout.flush()
    return sums


def print_idle_table(rounds, poolers, results, query):
    """idle-memory: medians of bytes per client (VmRSS growth / clients) per pooler."""
    print()
    print("== idle-memory: %d logged-in idle clients (user %s, %s), fresh pooler per round"
          " (%d round%s, medians) ==" % (IDLE_CLIENTS, SCENARIO_USER["idle-memory"],
                                         "one SELECT 1 each, then idle" if query
                                         else "no query, idle after login",
                                         rounds, "" if rounds == 1 else "s"))
    print("%-15s %12s %12s %12s %10s   %s" % ("pooler", "bytes/client", "RSS before", "RSS after",
                                            "CPU us/cl", "bytes/client per round"))
    sums = {}
    for p in poolers:
        runs = results[p]
        s = summarize(runs)
        sums[p] = s
        print("%-15s %12s %9s MiB %9s MiB %10s   %s" % (
            p, fmt(s["bytes_per_client"], ".0f"),
            fmt(med([r.get("rss_before_kib") for r in runs]) and
                med([r.get("rss_before_kib") for r in runs]) / 1024.0, ".1f"),
            fmt(med([r.get("rss_after_kib") for r in runs]) and
                med([r.get("rss_after_kib") for r in runs]) / 1024.0, ".1f"),
            fmt(s["cpu_us_per_login"], ".1f"),
            " ".join(fmt(v, ".0f") for v in s["all_bytes_per_client"])))
    if "pgfunnel" in sums:
        for n in sums:
            if n != "pgfunnel":
                print("pgfunnel/%s: bytes/client x%s" % (n, fmt(ratio(
                    sums["pgfunnel"]["bytes_per_client"], sums[n]["bytes_per_client"]), ".2f")))
    sys.stdout.flush()
    return sums


def print_tls_summary(rounds, duration, summary):
    """The TLS scenarios in one table: medians and pgfunnel/PgBouncer ratios."""
    names = [s[0] for s in TLS_SCENARIOS if s[0] in summary]
    if not names:
        return None
    shown = []
    for n in names:
        shown += [p for p in summary[n] if p not in shown]
    shown.sort(key=lambda p: (p != "pgfunnel", p))
    bouncers = bouncer_names(shown) if "pgfunnel" in shown else []
    print()
    print("== TLS: medians over %d round%s of %d s ==" % (rounds, "" if rounds == 1 else "s",
                                                        duration))
    head = "%-12s" % "scenario"
    for p in shown:
        head += " %16s %10s" % (p + " TPS", "CPU us/txn")
    for b in bouncers:
        head += " %22s" % ("TPS x/CPU x vs " + b.replace("pgbouncer-", "PgB "))
    print(head)
    out = {}
    for n in names:
        row = "%-12s" % n
        for p in shown:
            s = summary[n].get(p)
            row += " %16s %10s" % (fmt(s and s["tps"], ".1f"),
                                   fmt(s and s["cpu_us_per_txn"], ".1f"))
        for b in bouncers:
            if "pgfunnel" in summary[n] and b in summary[n]:
                a, c = summary[n]["pgfunnel"], summary[n][b]
                t, u = ratio(a["tps"], c["tps"]), ratio(a["cpu_us_per_txn"], c["cpu_us_per_txn"])
                row += " %22s" % ("%s / %s" % (fmt(t, ".2f"), fmt(u, ".2f")))
                out.setdefault(n, {})[b] = {"tps": t, "cpu_us_per_txn": u}
        print(row)
    if out:
        print("(ratios: pgfunnel/PgBouncer; TPS x > 1 and CPU x < 1 favour pgfunnel)")
    sys.stdout.flush()
    return out


# Issue 14's goal table: (key, figure, scenario, summary field, lower is better, goal). A goal
# is the ratio pgfunnel/PgBouncer that pgfunnel must reach against EVERY PgBouncer of the run
# (at most goal when lower is better, at least goal otherwise), or for ABSOLUTE_GOALS
# pgfunnel's own figure.
GOALS = [
    ("cpu-select", "select-only 200 cl/pool 20: CPU us/txn", "select-only", "cpu_us_per_txn",
     True, 0.5),
    ("tps-select", "select-only 200 cl/pool 20: TPS", "select-only", "tps", False, 1.15),
    ("cpu-extended", "-M extended 200 cl: CPU us/txn", "select-only-extended", "cpu_us_per_txn",
     True, 0.5),
    ("latency-added", "1 client: latency added us", "1-client-latency", "added_latency_us",
     True, 0.6),
    ("login-16", "SCRAM login 16 it.: CPU us/login", "scram-login-16", "cpu_us_per_txn", True,
     0.5),
    ("login-4096", "SCRAM login 4096 it.: CPU us/login", "scram-login-4096", "cpu_us_per_txn",
     True, 0.5),
    ("idle-bytes", "%d idle clients: bytes/client" % IDLE_CLIENTS, "idle-memory",
     "bytes_per_client", True, 512),
    ("tail-p99-p50", "%d clients/pool 20: p99/p50" % TAIL_CLIENTS, "tail-10k", "p99_p50", True,
     1.3),
]
# Not goals: figures the final table shows next to the floor's (key, figure, scenario, field).
FLOOR_EVIDENCE = [
    ("cpu-select-20", "select-only 20 cl/pool 20: CPU us/txn", "select-only-20",
     "cpu_us_per_txn"),
]
# Goals that are pgfunnel's own figure, not a ratio to PgBouncer (issue 14: at most 512 bytes
# per idle client; p99/p50 at most 1.3).
ABSOLUTE_GOALS = {"idle-bytes", "tail-p99-p50"}


def print_goal_summary(summary, bouncers, goals, titles):
    """The final table, one row per goal of issue 14 whose scenario ran: the figure for every
    pooler, pgfunnel's ratio to each PgBouncer, the goal and whether it is met. titles: pooler
    name -> column title ("PgBouncer 1.25.2"). A dict by key."""
    rows = [g for g in GOALS if g[2] in summary]
    evidence = [e for e in FLOOR_EVIDENCE
                if summary.get(e[2], {}).get("floor", {}).get(e[3]) is not None]
    if not rows and not evidence:
        return None
    hb = [titles.get(b, b) for b in bouncers]
    print()
    print("== issue 14 goals: pgfunnel vs %s (medians) ==" % (" and ".join(hb) or "no PgBouncer"))
    head = "%-40s %10s" % ("figure", "pgfunnel")
    for b in hb:
        head += " %16s" % b
    for b in hb:
        head += " %14s" % ("x " + b.replace("PgBouncer ", "PgB "))
    head += " %7s %5s" % ("goal", "met?")
    print(head)
    out = {}
    for key, label, scen, field, lower, default in rows:
        goal = goals.get(key, default)
        a = summary[scen].get("pgfunnel", {}).get(field)
        vals = [summary[scen].get(b, {}).get(field) for b in bouncers]
        ratios = [ratio(a, v) if a is not None and v is not None and v > 0 else None
                  for v in vals]
        # A figure of 0 or below (an added latency under the direct one, no RSS growth) makes a
        # ratio meaningless: compare the figures themselves then.
        met_each = []
        for v, r in zip(vals, ratios):
            if a is None or v is None:
                met_each.append(None)
            elif r is not None:
                met_each.append(r <= goal if lower else r >= goal)
            else:
                met_each.append(a <= v if lower else a >= v)
        met = (None if not met_each or any(m is None for m in met_each)
               else all(met_each))
        if key in ABSOLUTE_GOALS:
            met = None if a is None else (a <= goal if lower else a >= goal)
        digits = ".2f" if field == "p99_p50" else ".1f" if field != "bytes_per_client" else ".0f"
        row = "%-40s %10s" % (label, fmt(a, digits))
        for v in vals:
            row += " %16s" % fmt(v, digits)
        for r in ratios:
            row += " %14s" % fmt(r, ".2f")
        row += " %7s %5s" % (("<=" if lower else ">=") + format(goal, "g")
                             + ("*" if key in ABSOLUTE_GOALS else ""),
                             "-" if met is None else "yes" if met else "NO")
        print(row)
        out[key] = {"figure": label, "pgfunnel": a, "values": dict(zip(bouncers, vals)),
                    "ratios": dict(zip(bouncers, ratios)), "goal": goal,
                    "lower_is_better": lower, "met": met}
    print("(ratio = pgfunnel / PgBouncer; goal: the ratio to every PgBouncer, * = pgfunnel's own"
          " figure; a figure <= 0 compares the figures instead)")
    # Where the CPU goes: the user-space part of each CPU row (utime, 1/CLK_TCK resolution).
    cpu_rows = [g for g in rows if g[3] == "cpu_us_per_txn"]
    if cpu_rows:
        print("user-space part of the CPU rows (utime us per transaction/login; the rest is "
              "the kernel's work for the pooler's system calls):")
        for key, label, scen, field, lower, default in cpu_rows:
            row = "  %-38s %10s" % (label, fmt(summary[scen].get("pgfunnel", {})
                                                .get("user_us_per_txn"), ".1f"))
            for b in bouncers:
                row += " %16s" % fmt(summary[scen].get(b, {}).get("user_us_per_txn"), ".1f")
            print(row)
    floor_rows = [g for g in rows if g[3] in ("cpu_us_per_txn", "added_latency_us")
                  and summary[g[2]].get("floor", {}).get(g[3]) is not None]
    if floor_rows:
        print("over the floor (the figure minus the floor's, the byte-forwarding nullproxy's;"
              " its figure first), and the ratio of those:")
        for key, label, scen, field, lower, default in floor_rows:
            base = summary[scen]["floor"][field]
            a = summary[scen].get("pgfunnel", {}).get(field)
            over = [None if v is None else v - base
                    for v in [a] + [summary[scen].get(b, {}).get(field) for b in bouncers]]
            row = "  %-38s %10s" % (label, fmt(base, ".1f"))
            for v in over:
                row += " %16s" % fmt(v, "+.1f")
            for v in over[1:]:
                row += " %14s" % fmt(ratio(over[0], v) if over[0] is not None and v and v > 0
                                     else None, ".2f")
            print(row)
        out["floor"] = {g[0]: summary[g[2]]["floor"].get(g[3]) for g in floor_rows}
    if evidence:
        print("the floor where it carries the poolers' load (a client per server; not a goal):"
              " the floor's figure, then pgfunnel's and each PgBouncer's, then the floor's"
              " ratio to each PgBouncer, the least any proxy of this design could reach:")
        head = "  %-38s %10s %16s" % ("", "floor", "pgfunnel")
        for b in hb:
            head += " %16s" % b
        for b in hb:
            head += " %14s" % ("floor x " + b.replace("PgBouncer ", "PgB "))
        print(head)
        for key, label, scen, field in evidence:
            base = summary[scen]["floor"][field]
            vals = [summary[scen].get(b, {}).get(field) for b in ["pgfunnel"] + bouncers]
            row = "  %-38s %10s" % (label, fmt(base, ".1f"))
            for v in vals:
                row += " %16s" % fmt(v, ".1f")
            for v in vals[1:]:
                row += " %14s" % fmt(ratio(base, v) if v else None, ".2f")
            print(row)
            out.setdefault("evidence", {})[key] = {
                "floor": base, "values": dict(zip(["pgfunnel"] + bouncers, vals))}
    sys.stdout.flush()
    return out


# ---------------------------------------------------------------- main


def find_pgfunnel():
    for cand in ("build-bench", "build"):
        path = os.path.join(SOURCE_ROOT, cand, "pgfunnel")
        if os.access(path, os.X_OK):
            return path
    return shutil.which("pgfunnel")


def parse_args(argv):
    ap = argparse.ArgumentParser(description="pgfunnel vs PgBouncer side-by-side pgbench benchmark")
    ap.add_argument("--duration", type=int, default=10, help="seconds per pgbench run (default 10)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds per scenario and pooler; medians are reported (default 3)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 3 s per run, 1 round (overrides --duration/--rounds)")
    ap.add_argument("--pooler-only", action="store_true",
                    help="benchmark pgfunnel alone (automatic when PgBouncer is not installed)")
    ap.add_argument("--set", default="default", choices=sorted(SCENARIO_SETS), dest="scenario_set",
                    help="scenario set: default (%s), prepared (%s), tls (%s), goals (%s) or all"
                    " (default: default)" % (", ".join(s[0] for s in SCENARIOS),
                                             ", ".join(s[0] for s in PREPARED_SCENARIOS),
                                             ", ".join(s[0] for s in TLS_SCENARIOS),
                                             ", ".join(s[0] for s in GOALS_SCENARIOS)))
    ap.add_argument("--instructions", action="store_true",
                    help="instead of the scenarios: count each pooler's user-space instructions"
                    " per select-only transaction (simple and extended) and per SCRAM login"
                    " under valgrind's callgrind (noise-free; about 10 minutes)")
    ap.add_argument("--scenario", action="append", metavar="NAME",
                    choices=[s[0] for s in SCENARIO_SETS["all"]],
                    help="run only this scenario, of any set (repeatable; overrides --set)")
    ap.add_argument("--max-prepared-statements", type=int, default=200, metavar="N",
                    help="max_prepared_statements for both poolers (default 200; left out for a"
                    " PgBouncer older than 1.21)")
    ap.add_argument("--tls-key", choices=["rsa", "ec"], default="rsa",
                    help="key of the TLS scenarios' self-signed certificate: rsa (RSA 2048, the"
                    " default) or ec (ECDSA P-256)")
    ap.add_argument("--channel-binding", choices=["prefer", "disable", "require"], default=None,
                    help="PGCHANNELBINDING for pgbench's TLS runs (default: unset, i.e. libpq's"
                    " prefer: SCRAM-SHA-256-PLUS with a pooler that offers it; require fails"
                    " against one that does not, such as PgBouncer 1.25)")
    ap.add_argument("--scale", type=int, default=10, help="pgbench -i scale factor (default 10)")
    ap.add_argument("--pgfunnel", default=None,
                    help="pgfunnel binary (default build-bench/pgfunnel, then build/pgfunnel, then PATH)")
    ap.add_argument("--floor", default=None, metavar="PATH",
                    help="the floor proxy (default: tests/nullproxy beside the pgfunnel binary,"
                    " if built; 'none' to leave it out)")
    ap.add_argument("--baseline", default=None, metavar="PATH",
                    help="another pgfunnel binary, measured in the same run as \"baseline\"")
    ap.add_argument("--pgbouncer", metavar="PATH", action="append",
                    help="a PgBouncer binary (repeatable; default: %s when present, else"
                    " pgbouncer from PATH)" % " and ".join(PGBOUNCER_DEFAULTS))
    ap.add_argument("--tail-duration", type=int, default=20, metavar="S",
                    help="pgbench -T of tail-10k (default 20; --quick: 10), whatever --duration")
    ap.add_argument("--idle-query", choices=["select1", "none"], default="select1",
                    help="idle-memory clients: one SELECT 1 after login, then idle (default), or"
                    " no query at all")
    ap.add_argument("--goal", action="append", default=[], metavar="KEY=RATIO",
                    help="override a goal of the final table (keys: %s)" % ", ".join(
                        g[0] for g in GOALS))
    ap.add_argument("--pg-bindir", default=PG_BINDIR_DEFAULT,
                    help="PostgreSQL 15 bin directory (default %s)" % PG_BINDIR_DEFAULT)
    ap.add_argument("--verbose-pooler", action="count", default=0,
                    help="pass -v to pgfunnel (repeatable); its log grows accordingly")
    ap.add_argument("--json", metavar="PATH", help="also write all runs as JSON to PATH")
    ap.add_argument("--keep", action="store_true",
                    help="keep the temp dir (logs, ini, data) instead of removing it")
    a = ap.parse_args(argv)
    if a.quick:
        a.duration, a.rounds, a.tail_duration = 3, 1, 10
    if a.duration < 1 or a.rounds < 1:
        ap.error("--duration and --rounds must be >= 1")
    if a.max_prepared_statements < 0:
        ap.error("--max-prepared-statements must be >= 0")
    a.pgfunnel = a.pgfunnel or find_pgfunnel()
    # The poolers start in the temp dir: relative paths are the caller's.
    a.pgfunnel = a.pgfunnel and os.path.abspath(a.pgfunnel)
    a.baseline = a.baseline and os.path.abspath(a.baseline)
    if a.floor is None and a.pgfunnel:
        cand = os.path.join(os.path.dirname(os.path.abspath(a.pgfunnel)), "tests", "nullproxy")
        a.floor = cand if os.access(cand, os.X_OK) else "none"
    if a.floor == "none":
        a.floor = None
    elif a.floor and not os.access(a.floor, os.X_OK):
        ap.error("--floor %s is not an executable" % a.floor)
    a.floor = a.floor and os.path.abspath(a.floor)
    explicit = a.pgbouncer is not None
    if not explicit:
        a.pgbouncer = [b for b in PGBOUNCER_DEFAULTS if os.access(b, os.X_OK)]
        if not a.pgbouncer and shutil.which("pgbouncer"):
            a.pgbouncer = [shutil.which("pgbouncer")]
    a.pgbouncer = [os.path.abspath(b) for b in a.pgbouncer]
    if not a.pgfunnel or not os.access(a.pgfunnel, os.X_OK):
        ap.error("pgfunnel binary not found; build it (meson setup build-bench --buildtype=release"
                 " && ninja -C build-bench) or pass --pgfunnel")
    if not os.access(os.path.join(a.pg_bindir, "pgbench"), os.X_OK):
        ap.error("no pgbench in %s (install postgresql-15 or pass --pg-bindir)" % a.pg_bindir)
    if a.tail_duration < 1:
        ap.error("--tail-duration must be >= 1")
    goals = {}
    for g in a.goal:
        key, _, value = g.partition("=")
        if key not in [x[0] for x in GOALS]:
            ap.error("--goal %s: no such goal (keys: %s)" % (g, ", ".join(x[0] for x in GOALS)))
        try:
            goals[key] = float(value)
        except ValueError:
            ap.error("--goal %s: the goal is a number (a ratio pgfunnel/PgBouncer)" % g)
    a.goal = goals
    if not a.pooler_only:
        missing = [b for b in a.pgbouncer if not os.access(b, os.X_OK)]
        if missing and explicit:
            ap.error("PgBouncer binary not found: %s" % ", ".join(missing))
        if not a.pgbouncer:
            log("PgBouncer not found at %s: benchmarking pgfunnel only" % " or ".join(
                PGBOUNCER_DEFAULTS))
            a.pooler_only = True
    if a.pooler_only:
        a.pgbouncer = []
    return a


def on_signal(signum, _frame):
    raise Interrupted("signal %d" % signum)


def check_channel_binding(bindir, pooler):
    """Whether pooler completes a SCRAM-SHA-256-PLUS login over TLS (psql with
    channel_binding=require); None if psql could not be run."""
    env = pgbench_env("require", "require")
    try:
        res = subprocess.run([os.path.join(bindir, "psql"), "-X", "-A", "-t", "-h", "127.0.0.1",
                              "-p", str(pooler.port), "-U", DB_USER, "-d", DB_NAME, "-c",
                              "SELECT 1"], capture_output=True, text=True,
                             stdin=subprocess.DEVNULL, env=env, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.returncode == 0


def main(argv):
    a = parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    ids = run_ids()
    workdir = tempfile.mkdtemp(prefix="pgfunnel-bench.", dir="/tmp")
    chown_run_user(workdir, ids)
    pg = None
    instances = []  # every pooler process started (one per pooler and profile), for the report
    failed = False
    all_runs = []
    try:
        if a.scenario:
            scenarios = [s for s in SCENARIO_SETS["all"] if s[0] in a.scenario]
        else:
            scenarios = SCENARIO_SETS[a.scenario_set]
        profiles = {scenario_profile(sc[0]) for sc in scenarios}
        tls = tls_desc = None
        if profiles - {"plain"}:
            cert, key, tls_desc = make_tls_files(workdir, ids, a.tls_key)
            tls = (cert, key)
        # PostgreSQL speaks TLS only when a scenario needs it on the server leg.
        pg_ssl = "server-tls" in profiles
        # Thousands of sockets in pgbench, the Python client and the poolers (they inherit it).
        nofile = raise_nofile(max([NOFILE_NEED.get(sc[0], 0) for sc in scenarios] + [0]))

        pg = Postgres(a.pg_bindir, workdir, ids, tls=tls if pg_ssl else None)
        log("starting PostgreSQL on port %d%s and initialising pgbench -s %d ..." % (
            pg.port, " (ssl=on)" if pg_ssl else "", a.scale))
        t0 = time.monotonic()
        # Every SCRAM secret user exists in every run (cheap): all sets share one userlist.
        secrets = {u: benchwire.scram_secret(PASSWORDS[u], it) for u, it in SCRAM_USERS.items()}
        pg.start(a.scale, secrets)
        log("  done in %.1f s" % (time.monotonic() - t0))

        write_file(os.path.join(workdir, "userlist.txt"),
                   '"%s" "%s"\n' % (DB_USER, DB_PASSWORD)
                   + "".join('"%s" "%s"\n' % (u, secrets[u]) for u in sorted(secrets)), ids)
        mps = a.max_prepared_statements
        # (name, binary, extra args, max_prepared_statements, PgBouncer version)
        specs = [("pgfunnel", a.pgfunnel, ["-v"] * a.verbose_pooler, mps, None)]
        if a.baseline:
            specs.append(("baseline", a.baseline, ["-v"] * a.verbose_pooler, mps, None))
        for binary in a.pgbouncer:
            version = pgbouncer_version(binary)
            if version is None:
                raise SetupError("cannot tell the version of %s (--version)" % binary)
            # "pgbouncer-1.18", "pgbouncer-1.25" (the patch level too if two share major.minor)
            name = "pgbouncer-%d.%d" % version[:2]
            if any(sp[0] == name for sp in specs):
                name = "pgbouncer-%d.%d.%d" % version
                while any(sp[0] == name for sp in specs):
                    name += "b"
            specs.append((name, binary, [],
                          mps if version >= PGBOUNCER_PREPARED_MIN else None, version))
        bouncers = [sp[0] for sp in specs if sp[4] is not None]

        # A group's scenarios are interleaved round by round: the "prepared" set is one group,
        # every other scenario a group of its own (one after the other, as always). The poolers
        # run with the configuration profile of the group at hand.
        prepared_names = [s[0] for s in PREPARED_SCENARIOS]
        groups = []
        for sc in scenarios:
            if sc[0] in prepared_names and groups and groups[-1][0][0] in prepared_names:
                groups[-1].append(sc)
            else:
                groups.append([sc])

        if a.instructions:
            summary = {"instructions": count_instructions(a, pg, specs, workdir, ids, {
                sp[0]: "PgBouncer " + ".".join(map(str, sp[4])) for sp in specs if sp[4]})}
            if a.json:
                with open(a.json, "w", encoding="utf-8") as f:
                    json.dump({"summary": summary}, f, indent=1)
            return 0

        def start_profile(profile):
            """Start every pooler with profile's configuration, print the TLS notes, warm up."""
            started = []
            for name, binary, extra, mp, version in specs:
                p = Pooler(name, binary, workdir, pg.port, ids, extra, max_prepared=mp,
                           version=version, profile=profile, tls=tls, pg_ssl=pg_ssl)
                instances.append(p)
                p.start()
                started.append(p)
                log("%s (%s) pid %d on 127.0.0.1:%d%s" % (
                    p.name, p.binary, p.pid, p.port,
                    "" if profile == "plain" else ", profile " + profile))
            sslmode = PROFILE_CLIENT_SSLMODE[profile]
            if profile != "plain":
                print()
                print("profile %s: %s" % (profile, {
                    "client-tls": "client_tls_sslmode=require, server_tls_sslmode=disable;"
                                  " pgbench PGSSLMODE=require%s" % (
                                      "" if not a.channel_binding
                                      else " PGCHANNELBINDING=" + a.channel_binding),
                    "server-tls": "client_tls_sslmode=disable (plain clients),"
                                  " server_tls_sslmode=require toward PostgreSQL ssl=on"}[profile]))
            for p in started:
                if profile == "client-tls":
                    peek = tls_peek(p.port)
                    cb = check_channel_binding(a.pg_bindir, p)
                    mech = ("SCRAM-SHA-256" if a.channel_binding == "disable" or not cb
                            else "SCRAM-SHA-256-PLUS")
                    print("  %-10s TLS toward clients: %s; channel binding %s -> pgbench logs in"
                          " with %s" % (p.name, peek or "? (openssl s_client failed)",
                                        "offered" if cb else "not offered" if cb is False else "?",
                                        mech))
            # Warm-up: open the server pools so the first measured run does not pay for it.
            for p in started:
                r = run_pgbench(a.pg_bindir, p, ["-S", "-c", "20", "-j", "2", "-M", "simple"], 2,
                                "excl", sslmode, a.channel_binding)
                if r["errors"]:
                    log("warm-up against %s failed: %s\n%s%s" % (
                        p.label, "; ".join(r["errors"]), r["stdout"], r["stderr"]))
                    raise SetupError("%s does not serve pgbench:\n%s" % (p.label,
                                                                        tail(p.logfile)))
            if profile != "plain" and pg_ssl:
                rows = pg.query("SELECT CASE WHEN s.ssl THEN s.version || ' ' || s.cipher"
                                " ELSE 'plain' END, count(*) FROM pg_stat_ssl s"
                                " JOIN pg_stat_activity a USING (pid)"
                                " WHERE a.usename = '%s' GROUP BY 1 ORDER BY 1" % DB_USER)
                print("  PostgreSQL's connections from the poolers after the warm-up: %s" % (
                    ", ".join("%s: %s" % tuple(r.split("|", 1)) for r in rows) or "none"))
            sys.stdout.flush()
            return started

        pg_version = subprocess.run([os.path.join(a.pg_bindir, "postgres"), "--version"],
                                    capture_output=True, text=True).stdout.strip()
        print("pgfunnel benchmark: %s; %s; %d s x %d round(s); %d CPU(s); CLK_TCK %d" % (
            ", ".join(name + (" (PgBouncer %s)" % ".".join(map(str, version))
                              if version else "") for name, _, _, _, version in specs),
            pg_version or "PostgreSQL ?", a.duration, a.rounds, os.cpu_count(), CLK_TCK))
        print("pool_mode=transaction default_pool_size=20 auth_type=scram-sha-256 "
              "max_prepared_statements=%d%s; TPS excludes connection time except "
              "connect-per-txn (-C)" % (
                  a.max_prepared_statements,
                  "".join(" (not for %s)" % name for name, _, _, mp, version in specs
                          if not (mp is not None and mp > 0) and version is not None)))
        if tls:
            print("TLS: %s; both poolers' defaults otherwise (protocols secure, ciphers default);"
                  " tls-connect (-C) TPS includes connection time%s" % (
                      tls_desc, "; PostgreSQL ssl=on for tls-server" if pg_ssl else ""))

        def runnable(p, args):
            """-M prepared needs a pooler that manages prepared statements (transaction mode)."""
            return p.prepared or "prepared" not in args

        def wait_clients_gone(p, user, timeout=120):
            """Poll p's SHOW POOLS until no client of user is left (after a run of thousands):
            None, or what was still there at the deadline."""
            deadline = time.monotonic() + timeout
            seen = None
            while time.monotonic() < deadline:
                try:
                    seen = asyncio.run(benchwire.pool_clients(p.port, DB_USER, DB_PASSWORD,
                                                              DB_NAME, user))
                except (OSError, ConnectionError, asyncio.IncompleteReadError,
                        benchwire.WireError) as e:
                    seen = e
                else:
                    if seen[0] == 0 and seen[1] == 0:
                        return None
                time.sleep(0.2)
            return "%s still lists clients of %s %d s after pgbench ended: %s" % (
                p.name, user, timeout, seen)

        def log_run(name, rnd, p, r):
            extra = ""
            if r.get("p99_p50") is not None:
                extra = (" p50 %s ms p99 %s ms p99/p50 %s (w/o 1st tx %s, per client %s,"
                         " tps dip %s)" % (
                             fmt(r["p50_ms"], ".3f"), fmt(r["p99_ms"], ".3f"),
                             fmt(r["p99_p50"], ".2f"), fmt(r.get("steady_p99_p50"), ".2f"),
                             fmt(r.get("client_p99_p50"), ".2f"), fmt(r.get("tps_dip"), ".2f")))
            log("  %-24s round %d %-15s tps %s lat %s ms cpu %s us/txn rss %d KiB%s%s" % (
                name, rnd, p.name, fmt(r["tps"], ".1f"), fmt(r["latency_ms"], ".3f"),
                fmt(r["cpu_us_per_txn"], ".1f"), r["rss_kib"], extra,
                ("  ERRORS: " + "; ".join(r["errors"])) if r["errors"] else ""))

        def report_errors(p, r):
            """The run's pgbench stderr and the pooler's own log lines of the run."""
            log(r.get("stderr", "").strip()[-2000:])
            if p.pid:
                # What the pooler logged meanwhile (a refused login is a LOG "closing because"
                # line in PgBouncer's format): the problem lines first, then the last lines.
                lines = read_text(p.logfile).splitlines()[r.get("log_line0", 0):]
                bad = [l for l in lines if re.search(
                    r"\b(ERROR|WARNING|FATAL|PANIC)\b|closing because|fail", l)]
                log("  %s log during the run: %d line(s), %d of them ERROR/WARNING/FATAL or"
                    " \"closing because\"/fail%s" % (p.label, len(lines), len(bad),
                                                     ", the first ones:" if bad else ""))
                for l in bad[:12]:
                    log("    " + l)
                log("  its last lines:")
                for l in lines[-8:]:
                    log("    " + l)

        def idle_round(spec, rnd):
            """idle-memory, one round, one pooler: a fresh instance (so that memory the run before
            freed does not hide the growth), warmed up as the idle user; VmRSS before and with
            IDLE_CLIENTS logged-in idle clients; stopped (checked) at the end."""
            name, binary, extra, mp, version = spec
            user = SCENARIO_USER["idle-memory"]
            p = Pooler(name, binary, workdir, pg.port, ids, extra, max_prepared=mp,
                       version=version, label="%s-idle%d" % (name, rnd))
            instances.append(p)
            p.start()
            r = {"pooler": name, "profile": "plain", "scenario": "idle-memory", "round": rnd,
                 "errors": [], "clients": IDLE_CLIENTS, "user": user, "tps": None,
                 "latency_ms": None, "cpu_us_per_txn": None, "failed": 0, "rss_kib": 0}
            w = run_pgbench(a.pg_bindir, p, ["-S", "-c", "20", "-j", "2", "-M", "simple"], 2,
                            "excl", user=user)
            if w["errors"]:
                r["errors"].append("warm-up as %s: %s" % (user, "; ".join(w["errors"])))
                r["stderr"] = w["stderr"]
            else:
                rss0 = rss_kib(p.pid)
                cpu0 = cpu_seconds(p.pid)
                query = "SELECT 1" if a.idle_query == "select1" else None
                out = asyncio.run(benchwire.idle_clients(
                    p.port, user, DB_NAME, PASSWORDS[user], IDLE_CLIENTS, query,
                    (DB_USER, DB_PASSWORD), measure=lambda: (rss_kib(p.pid), cpu_seconds(p.pid))))
                r["login_s"] = out.get("login_s")
                r["settle_s"] = out.get("settle_s")
                r["logged_in"] = out.get("logged_in")
                r["seen"] = out.get("seen")
                for msg, n in sorted(out["errors"].items()):
                    r["errors"].append("%d x %s" % (n, msg))
                r["rss_before_kib"] = rss0
                if out["measured"]:
                    rss1, _ = out["measured"]
                    rss_seen, cpu1 = out["measured_at_seen"]
                    r["rss_after_kib"] = r["rss_kib"] = rss1
                    r["rss_at_seen_kib"] = rss_seen
                    r["idle_s"] = out.get("idle_s")
                    r["bytes_per_client"] = (rss1 - rss0) * 1024.0 / IDLE_CLIENTS
                    r["bytes_per_client_at_seen"] = (rss_seen - rss0) * 1024.0 / IDLE_CLIENTS
                    r["cpu_us_per_login"] = (cpu1 - cpu0) * 1e6 / IDLE_CLIENTS
            if not p.alive():
                r["errors"].append("%s is no longer running (exit status %s)" % (
                    p.label, p.proc.returncode))
            else:
                gone = wait_clients_gone(p, user)
                if gone:
                    r["errors"].append(gone)
            problem = p.stop_checked()
            if problem:
                r["errors"].append(problem)
            log("  %-24s round %d %-15s %s bytes/client (RSS %s -> %s KiB after %s s idle, %s KiB"
                " when all were seen; %s logged in in %s s,"
                " all seen after %s s; %s us CPU/login)%s" % (
                    "idle-memory", rnd, name, fmt(r.get("bytes_per_client"), ".0f"),
                    r.get("rss_before_kib", "-"), r.get("rss_after_kib", "-"),
                    fmt(r.get("idle_s"), ".1f"), r.get("rss_at_seen_kib", "-"),
                    r.get("logged_in", "-"), fmt(r.get("login_s"), ".1f"),
                    fmt(r.get("settle_s"), ".1f"), fmt(r.get("cpu_us_per_login"), ".1f"),
                    ("  ERRORS: " + "; ".join(r["errors"])) if r["errors"] else ""))
            return p, r

        summary = {}
        poolers = []
        current = None
        floor = None  # the Floor, started with the first scenario that has it
        for group in groups:
            if group[0][2] == "idle":
                # Fresh poolers per round, interleaved; the profile's poolers stay up (idle).
                name = group[0][0]
                results = {sp[0]: [] for sp in specs}
                for rnd in range(1, a.rounds + 1):
                    k = (rnd - 1) % len(specs)
                    for spec in specs[k:] + specs[:k]:  # the order turns each round
                        p, r = idle_round(spec, rnd)
                        results[spec[0]].append(r)
                        all_runs.append(r)
                        if r["errors"]:
                            failed = True
                            report_errors(p, r)
                summary[name] = print_idle_table(a.rounds, [sp[0] for sp in specs], results,
                                                 a.idle_query == "select1")
                continue
            profile = scenario_profile(group[0][0])
            if profile != current:
                for p in poolers:
                    if p.stop_checked():
                        failed = True
                poolers = start_profile(profile)
                current = profile
            sslmode = PROFILE_CLIENT_SSLMODE[profile]
            if a.floor and floor is None and any(sc[0] in FLOOR_SCENARIOS for sc in group):
                floor = Floor(a.floor, workdir, pg.port)
                instances.append(floor)
                floor.start()
                log("floor (%s) pid %d on 127.0.0.1:%d" % (floor.binary, floor.pid, floor.port))
            targets = {sc[0]: [p for p in poolers if runnable(p, sc[1])]
                       + ([Direct(pg)] if sc[0] in DIRECT_SCENARIOS else [])
                       + ([floor] if floor and sc[0] in FLOOR_SCENARIOS else [])
                       for sc in group}
            results = {n: {p.name: [] for p in t} for n, t in targets.items()}
            for sc in group:
                for p in poolers:
                    if not runnable(p, sc[1]):
                        print("note: %s skipped for %s: no max_prepared_statements there (PgBouncer"
                              " < 1.21, or --max-prepared-statements 0)" % (sc[0], p.name))
            for rnd in range(a.rounds):
                for name, args, tps_kind in group:
                    user = SCENARIO_USER.get(name, DB_USER)
                    tail_run = tps_kind == "tail"
                    # The order turns each round, so that no pooler always runs first (right
                    # after the previous scenario's load) or last.
                    order = targets[name][rnd % len(targets[name]):] + \
                        targets[name][:rnd % len(targets[name])]
                    for p in order:
                        log_line0 = len(read_text(p.logfile).splitlines()) if p.pid else 0
                        r = run_pgbench(a.pg_bindir, p, args,
                                        a.tail_duration if tail_run else a.duration, tps_kind,
                                        sslmode, a.channel_binding, user=user,
                                        log_prefix=(os.path.join(workdir, "txlog-%s" % p.name)
                                                    if tail_run else None),
                                        timeout=600 if tail_run else 120)
                        r["scenario"], r["round"], r["user"] = name, rnd + 1, user
                        r["log_line0"] = log_line0
                        if tail_run and p.alive():
                            gone = wait_clients_gone(p, user)
                            if gone:
                                r["errors"].append(gone)
                        results[name][p.name].append(r)
                        all_runs.append(r)
                        log_run(name, rnd + 1, p, r)
                        if r["errors"]:
                            failed = True
                            report_errors(p, r)
                        if not p.alive():
                            raise SetupError("%s died during %s:\n%s\n%s" % (
                                p.label, name, read_text(p.outfile), tail(p.logfile)))
                        time.sleep(0.5)
            for p in poolers:
                p.rss_trace.append(("+".join(sc[0] for sc in group), rss_kib(p.pid)))
            for name, args, tps_kind in group:
                user = SCENARIO_USER.get(name, DB_USER)
                summary[name] = print_table(
                    name, " ".join(args + (["-l"] if tps_kind == "tail" else []))
                    + ("" if user == DB_USER else "  (user %s)" % user), a.rounds,
                    a.tail_duration if tps_kind == "tail" else a.duration,
                    targets[name], results[name],
                    "" if sslmode == "disable" else "PGSSLMODE=" + sslmode)
            if group[0][0] in prepared_names:
                summary["prepared-ratios"] = print_prepared_ratios(a.rounds, results)
        tls_ratios = print_tls_summary(a.rounds, a.duration, summary)
        if tls_ratios:
            summary["tls-ratios"] = tls_ratios
        goals = print_goal_summary(summary, bouncers, a.goal, {
            sp[0]: "PgBouncer " + ".".join(map(str, sp[4])) for sp in specs if sp[4]})
        if goals:
            summary["goals"] = goals

        print()
        for p in instances:
            print("%s RSS KiB: %s" % (p.label, ", ".join("%s %d" % t for t in p.rss_trace)))
        for p in instances:
            count, msgs = p.log_problems()
            print("%s log: %d ERROR/WARNING/FATAL line(s)%s" % (p.label, count,
                                                               ":" if msgs else ""))
            for m in msgs:
                print("    " + m)
        # Orderly stop, checked: a pooler that hangs or fails on SIGTERM is a failure too (those
        # of an earlier profile were stopped, and checked, when the profile changed).
        for p in instances:
            problem = p.stop_checked()
            print("%s shutdown: %s" % (p.label, problem or p.stop_result[1]))
            if problem:
                failed = True
                print("    log tail: " + tail(p.logfile, 5).replace("\n", "\n    "))
        if a.json:
            with open(a.json, "w", encoding="utf-8") as f:
                json.dump({"duration": a.duration, "rounds": a.rounds,
                           "max_prepared_statements": a.max_prepared_statements,
                           "pgbouncer": [{"name": sp[0], "path": sp[1], "version": sp[4]}
                                         for sp in specs if sp[4] is not None],
                           "rlimit_nofile": nofile,
                           "tls": ({"key": tls_desc, "channel_binding": a.channel_binding,
                                    "postgres_ssl": pg_ssl} if tls else None),
                           "summary": summary,
                           "runs": [{k: v for k, v in r.items() if k not in ("stdout", "stderr")}
                                    for r in all_runs]}, f, indent=1)
        if failed:
            print("\nFAILED: pgbench errors, failed transactions or a pooler that did not shut down"
                  " (see above)")
        return 1 if failed else 0
    except SetupError as e:
        log("benchmark aborted: %s" % e)
        return 2
    except (KeyboardInterrupt, Interrupted):
        log("interrupted; cleaning up")
        return 130
    finally:
        for p in instances:
            try:
                p.stop()
            except Exception as e:  # keep cleaning up
                log("stopping %s: %s" % (p.label, e))
        if pg is not None:
            try:
                pg.stop()
            except Exception as e:
                log("stopping PostgreSQL: %s" % e)
        if a.keep:
            log("kept %s" % workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
