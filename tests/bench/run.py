#!/usr/bin/python3
"""Side-by-side benchmark: pgfunnel vs PgBouncer in front of a throwaway PostgreSQL 15.

One command (as root or as an ordinary user; root runs the servers as the
unprivileged system user `pgfunnel`, created if missing):

    tests/bench/run.py [--duration 10] [--rounds 3] [--quick] [--pooler-only]
                       [--baseline OTHER_PGFUNNEL_BINARY] [--pgbouncer PGBOUNCER_BINARY]
                       [--set default|prepared|tls|all] [--max-prepared-statements 200]
                       [--tls-key rsa|ec] [--channel-binding prefer|disable|require]

--baseline adds a third pooler, "baseline" (another pgfunnel build, e.g. the commit before a
change), measured in the same run, interleaved with the others, and compared with pgfunnel.

--pgbouncer picks the PgBouncer binary (default Debian's /usr/sbin/pgbouncer, 1.18); its version
comes from `--version`. --max-prepared-statements N (default 200) goes into both poolers' ini;
PgBouncer older than 1.21 does not know the key and gets none (it then passes named statements
through unmanaged, which breaks them in transaction mode: its -M prepared rows are skipped).

--set chooses the scenarios by name: "default" (the five below), "prepared" (protocol-level
prepared statements in transaction mode: select-only with pgbench -M prepared and -M extended,
50 clients over the pool of 20, each on both poolers, all four runs interleaved in every round),
"tls" (TLS on either leg, see below) or "all". --scenario NAME (repeatable) picks single
scenarios of any set instead.

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
     create a SCRAM user `bench` and a database `pgbench` (pgbench -i -s 10).
  2. Write ONE ini + userlist (scram-sha-256, plain password so both poolers
     can log in to PostgreSQL with SCRAM, pool_mode=transaction,
     default_pool_size=20, max_client_conn=1000), copied per pooler with only
     listen_port and file paths changed, and start pgfunnel and PgBouncer.
  3. For each scenario, run pgbench against each pooler alternately
     (A, B, A, B, ... for --rounds rounds).
  4. Per run: TPS, average latency, failed transactions, pooler CPU time per
     transaction (utime+stime from /proc/PID/stat around the run, divided by
     the transactions processed) and pooler RSS after the run.
  5. Print a table per scenario with medians over the rounds and the ratio
     pgfunnel/PgBouncer for TPS and CPU per transaction; for the "prepared" set also
     pgfunnel prepared/extended and pgfunnel prepared / PgBouncer prepared.
  6. Stop everything it started (by PID; pg_ctl stop for PostgreSQL) and
     remove its temp dir, also on Ctrl-C or failure.

Exit status: 0 if every pgbench run finished without errors or failed
transactions and both poolers stayed up; 1 otherwise; 2 on bad usage or a
set-up failure (PostgreSQL or a pooler did not start).

Stdlib only; no third-party modules.
"""

import argparse
import json
import os
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

RUN_USER = "pgfunnel"
DB_USER = "bench"
DB_PASSWORD = "bench-scram-password"
DB_NAME = "pgbench"
PG_BINDIR_DEFAULT = "/usr/lib/postgresql/15/bin"
HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_ROOT = os.path.dirname(os.path.dirname(HERE))

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
SCENARIO_SETS["all"] = SCENARIOS + PREPARED_SCENARIOS + TLS_SCENARIOS

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


def cpu_seconds(pid):
    """utime + stime of pid (all its threads) in seconds, from /proc/PID/stat."""
    with open("/proc/%d/stat" % pid, encoding="ascii", errors="replace") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the comm field: state is field 3 (index 0 here); utime 14, stime 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


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

    def start(self, scale):
        self._run([self._bin("initdb"), "-D", self.datadir, "-U", "postgres", "--auth=trust",
                   "--locale=C", "--encoding=UTF8", "--no-sync"], timeout=120)
        with open(os.path.join(self.datadir, "postgresql.conf"), "a", encoding="utf-8") as f:
            f.write("\n# pgfunnel benchmark (tests/bench/run.py)\n"
                    "listen_addresses = '127.0.0.1'\n"
                    "port = %d\n"
                    "unix_socket_directories = '%s'\n"
                    "max_connections = 200\n"
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
            "max_client_conn = 1000\n"
            "logfile = %s\n"
            "pidfile = %s\n"
            % (DB_NAME, pg_port, DB_NAME, port, os.path.join(workdir, "userlist.txt"),
               os.path.join(workdir, name + ".log"), os.path.join(workdir, name + ".pid"))
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
                 version=None, profile="plain", tls=None, pg_ssl=False):
        self.name = name
        self.profile = profile
        # Files and report lines: "pgfunnel", or "pgfunnel-client-tls" for another profile.
        self.label = name if profile == "plain" else "%s-%s" % (name, profile)
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

    def start(self):
        # Foreground, -q: logs only to its logfile (stdout/stderr kept in NAME.out).
        cmd = as_run_user([self.binary, "-q"] + self.extra_args + [self.ini])
        with open(self.outfile, "wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=self.workdir, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SetupError("%s exited with status %d at start-up:\n%s\n%s" % (
                    self.label, self.proc.returncode, read_text(self.outfile), tail(self.logfile)))
            if port_accepts(self.port):
                self.rss_trace.append(("start", rss_kib(self.pid)))
                return
            time.sleep(0.05)
        raise SetupError("%s did not listen on port %d within 15 s:\n%s\n%s" % (
            self.label, self.port, read_text(self.outfile), tail(self.logfile)))

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


# ---------------------------------------------------------------- pgbench

RE_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
RE_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)
RE_LATENCY = re.compile(r"^latency average = ([0-9.]+) ms", re.M)
RE_TPS_EXCL = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M)
RE_TPS_INCL = re.compile(r"^tps = ([0-9.]+) \(including (?:reconnection times|connections establishing)\)",
                         re.M)


def pgbench_env(sslmode="disable", channel_binding=None):
    env = dict(os.environ, PGPASSWORD=DB_PASSWORD, PGSSLMODE=sslmode)
    env.pop("PGCHANNELBINDING", None)
    if channel_binding and sslmode != "disable":
        env["PGCHANNELBINDING"] = channel_binding
    return env


def run_pgbench(bindir, pooler, args, duration, tps_kind, sslmode="disable",
                channel_binding=None):
    """One pgbench run against pooler; a dict of measurements (errors listed in "errors")."""
    cmd = [os.path.join(bindir, "pgbench"), "-n", "-T", str(duration), "-h", "127.0.0.1",
           "-p", str(pooler.port), "-U", DB_USER] + args + [DB_NAME]
    env = pgbench_env(sslmode, channel_binding)
    cpu0 = cpu_seconds(pooler.pid)
    t0 = time.monotonic()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                             env=env, timeout=duration + 120)
        rc, out, err = res.returncode, res.stdout, res.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = -1, e.stdout or "", (e.stderr or "") + "\n(pgbench timed out)"
        out = out.decode() if isinstance(out, bytes) else out
        err = err.decode() if isinstance(err, bytes) else err
    wall = time.monotonic() - t0
    alive = pooler.alive()
    cpu1 = cpu_seconds(pooler.pid) if alive else cpu0
    rss = rss_kib(pooler.pid) if alive else 0

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
    r["cpu_s"] = cpu1 - cpu0
    r["cpu_us_per_txn"] = (r["cpu_s"] * 1e6 / r["txns"]) if r["txns"] else None
    r["rss_kib"] = rss

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
        "tps": med([r["tps"] for r in runs]),
        "latency_ms": med([r["latency_ms"] for r in runs]),
        "cpu_us_per_txn": med([r["cpu_us_per_txn"] for r in runs]),
        "rss_kib": max((r["rss_kib"] for r in runs), default=0),
        "failed": sum(r["failed"] for r in runs),
        "all_tps": [r["tps"] for r in runs],
        "all_cpu": [r["cpu_us_per_txn"] for r in runs],
    }


def ratio(a, b):
    return a / b if a and b else None


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
        print("%-40s TPS x%s, CPU/txn x%s%s" % (label + ":", fmt(tps, ".2f"), fmt(cpu, ".2f"),
                                                extra))
        out[key] = {"tps": tps, "cpu_us_per_txn": cpu}

    print()
    print("== prepared statements: ratios of medians (%d round%s) ==" % (
        rounds, "" if rounds == 1 else "s"))
    if prep.get("pgfunnel") and ext.get("pgfunnel"):
        line("pgfunnel prepared / pgfunnel extended", "pgfunnel_prepared_vs_extended",
             prep["pgfunnel"], ext["pgfunnel"], paired=True)
    if prep.get("pgfunnel") and prep.get("pgbouncer"):
        line("pgfunnel prepared / pgbouncer prepared", "pgfunnel_vs_pgbouncer_prepared",
             prep["pgfunnel"], prep["pgbouncer"])
    if ext.get("pgfunnel") and ext.get("pgbouncer"):
        line("pgfunnel extended / pgbouncer extended", "pgfunnel_vs_pgbouncer_extended",
             ext["pgfunnel"], ext["pgbouncer"])
    if prep.get("pgbouncer") and ext.get("pgbouncer"):
        line("pgbouncer prepared / pgbouncer extended", "pgbouncer_prepared_vs_extended",
             prep["pgbouncer"], ext["pgbouncer"], paired=True)
    if prep.get("pgfunnel") and prep.get("baseline"):
        line("pgfunnel prepared / baseline prepared", "pgfunnel_vs_baseline_prepared",
             prep["pgfunnel"], prep["baseline"])
    sys.stdout.flush()
    return out


def print_table(name, cmdline, rounds, duration, poolers, results, env=""):
    print()
    print("== %s: %spgbench %s -T %d  (%d round%s, medians) ==" % (
        name, env + " " if env else "", cmdline, duration, rounds, "" if rounds == 1 else "s"))
    print("%-10s %10s %11s %11s %9s %7s   %s | %s" % (
        "pooler", "TPS", "latency ms", "CPU us/txn", "RSS MiB", "failed", "TPS per round",
        "CPU us/txn per round"))
    sums = {}
    for p in poolers:
        s = summarize(results[p.name])
        sums[p.name] = s
        print("%-10s %10s %11s %11s %9s %7d   %s | %s" % (
            p.name, fmt(s["tps"], ".1f"), fmt(s["latency_ms"], ".3f"),
            fmt(s["cpu_us_per_txn"], ".1f"), "%.1f" % (s["rss_kib"] / 1024.0), s["failed"],
            " ".join(fmt(t, ".0f") for t in s["all_tps"]),
            " ".join(fmt(c, ".1f") for c in s["all_cpu"])))
    if "pgfunnel" in sums and "pgbouncer" in sums:
        a, b = sums["pgfunnel"], sums["pgbouncer"]
        tps_ratio = a["tps"] / b["tps"] if a["tps"] and b["tps"] else None
        cpu_ratio = (a["cpu_us_per_txn"] / b["cpu_us_per_txn"]
                     if a["cpu_us_per_txn"] and b["cpu_us_per_txn"] else None)
        print("pgfunnel/pgbouncer: TPS x%s, CPU/txn x%s" % (fmt(tps_ratio, ".2f"),
                                                            fmt(cpu_ratio, ".2f")))
        if tps_ratio is not None and tps_ratio < 0.5:
            print("  !! pgfunnel below 50%% of PgBouncer's TPS in %s" % name)
    if "pgfunnel" in sums and "baseline" in sums:
        a, b = sums["pgfunnel"], sums["baseline"]
        tps_ratio = a["tps"] / b["tps"] if a["tps"] and b["tps"] else None
        cpu_ratio = (a["cpu_us_per_txn"] / b["cpu_us_per_txn"]
                     if a["cpu_us_per_txn"] and b["cpu_us_per_txn"] else None)
        lat_ratio = (a["latency_ms"] / b["latency_ms"]
                     if a["latency_ms"] and b["latency_ms"] else None)
        print("pgfunnel/baseline: TPS x%s, CPU/txn x%s, latency x%s" % (
            fmt(tps_ratio, ".2f"), fmt(cpu_ratio, ".2f"), fmt(lat_ratio, ".2f")))
    sys.stdout.flush()
    return sums


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
                    help="scenario set: default (%s), prepared (%s), tls (%s) or all (default:"
                    " default)" % (", ".join(s[0] for s in SCENARIOS),
                                   ", ".join(s[0] for s in PREPARED_SCENARIOS),
                                   ", ".join(s[0] for s in TLS_SCENARIOS)))
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
    ap.add_argument("--baseline", default=None, metavar="PATH",
                    help="another pgfunnel binary, measured in the same run as \"baseline\"")
    ap.add_argument("--pgbouncer", metavar="PATH",
                    default=("/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK)
                             else shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"),
                    help="PgBouncer binary (default Debian's /usr/sbin/pgbouncer, else from PATH)")
    ap.add_argument("--pg-bindir", default=PG_BINDIR_DEFAULT,
                    help="PostgreSQL 15 bin directory (default %s)" % PG_BINDIR_DEFAULT)
    ap.add_argument("--verbose-pooler", action="count", default=0,
                    help="pass -v to pgfunnel (repeatable); its log grows accordingly")
    ap.add_argument("--json", metavar="PATH", help="also write all runs as JSON to PATH")
    ap.add_argument("--keep", action="store_true",
                    help="keep the temp dir (logs, ini, data) instead of removing it")
    a = ap.parse_args(argv)
    if a.quick:
        a.duration, a.rounds = 3, 1
    if a.duration < 1 or a.rounds < 1:
        ap.error("--duration and --rounds must be >= 1")
    if a.max_prepared_statements < 0:
        ap.error("--max-prepared-statements must be >= 0")
    a.pgfunnel = a.pgfunnel or find_pgfunnel()
    # The poolers start in the temp dir: relative paths are the caller's.
    a.pgfunnel = a.pgfunnel and os.path.abspath(a.pgfunnel)
    a.baseline = a.baseline and os.path.abspath(a.baseline)
    a.pgbouncer = os.path.abspath(a.pgbouncer)
    if not a.pgfunnel or not os.access(a.pgfunnel, os.X_OK):
        ap.error("pgfunnel binary not found; build it (meson setup build-bench --buildtype=release"
                 " && ninja -C build-bench) or pass --pgfunnel")
    if not os.access(os.path.join(a.pg_bindir, "pgbench"), os.X_OK):
        ap.error("no pgbench in %s (install postgresql-15 or pass --pg-bindir)" % a.pg_bindir)
    if not a.pooler_only and not os.access(a.pgbouncer, os.X_OK):
        log("PgBouncer not found at %s: benchmarking pgfunnel only" % a.pgbouncer)
        a.pooler_only = True
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


def print_tls_summary(rounds, duration, summary):
    """The TLS scenarios in one table: medians and pgfunnel/PgBouncer ratios."""
    names = [s[0] for s in TLS_SCENARIOS if s[0] in summary]
    pair = ("pgfunnel", "pgbouncer")
    if not names:
        return None
    shown = [p for p in pair if any(p in summary[n] for n in names)]
    print()
    print("== TLS: medians over %d round%s of %d s ==" % (rounds, "" if rounds == 1 else "s",
                                                        duration))
    head = "%-12s" % "scenario"
    for p in shown:
        head += " %12s %12s" % (p + " TPS", "CPU us/txn")
    if len(shown) == 2:
        head += " %8s %8s" % ("TPS x", "CPU x")
    print(head)
    out = {}
    for n in names:
        row = "%-12s" % n
        for p in shown:
            s = summary[n].get(p)
            row += " %12s %12s" % (fmt(s and s["tps"], ".1f"),
                                   fmt(s and s["cpu_us_per_txn"], ".1f"))
        if len(shown) == 2 and all(p in summary[n] for p in pair):
            a, b = summary[n]["pgfunnel"], summary[n]["pgbouncer"]
            t, c = ratio(a["tps"], b["tps"]), ratio(a["cpu_us_per_txn"], b["cpu_us_per_txn"])
            row += " %8s %8s" % (fmt(t, ".2f"), fmt(c, ".2f"))
            out[n] = {"tps": t, "cpu_us_per_txn": c}
        print(row)
    if out:
        print("(ratios: pgfunnel/PgBouncer; TPS x > 1 and CPU x < 1 favour pgfunnel)")
    sys.stdout.flush()
    return out


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

        pg = Postgres(a.pg_bindir, workdir, ids, tls=tls if pg_ssl else None)
        log("starting PostgreSQL on port %d%s and initialising pgbench -s %d ..." % (
            pg.port, " (ssl=on)" if pg_ssl else "", a.scale))
        t0 = time.monotonic()
        pg.start(a.scale)
        log("  done in %.1f s" % (time.monotonic() - t0))

        write_file(os.path.join(workdir, "userlist.txt"),
                   '"%s" "%s"\n' % (DB_USER, DB_PASSWORD), ids)
        mps = a.max_prepared_statements
        # (name, binary, extra args, max_prepared_statements, PgBouncer version)
        specs = [("pgfunnel", a.pgfunnel, ["-v"] * a.verbose_pooler, mps, None)]
        if a.baseline:
            specs.append(("baseline", a.baseline, ["-v"] * a.verbose_pooler, mps, None))
        if not a.pooler_only:
            version = pgbouncer_version(a.pgbouncer)
            if version is None:
                raise SetupError("cannot tell the version of %s (--version)" % a.pgbouncer)
            specs.append(("pgbouncer", a.pgbouncer, [],
                          mps if version >= PGBOUNCER_PREPARED_MIN else None, version))

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

        summary = {}
        poolers = []
        current = None
        for group in groups:
            profile = scenario_profile(group[0][0])
            if profile != current:
                for p in poolers:
                    if p.stop_checked():
                        failed = True
                poolers = start_profile(profile)
                current = profile
            sslmode = PROFILE_CLIENT_SSLMODE[profile]
            results = {sc[0]: {p.name: [] for p in poolers if runnable(p, sc[1])}
                       for sc in group}
            for sc in group:
                for p in poolers:
                    if not runnable(p, sc[1]):
                        print("note: %s skipped for %s: no max_prepared_statements there (PgBouncer"
                              " < 1.21, or --max-prepared-statements 0)" % (sc[0], p.name))
            for rnd in range(a.rounds):
                for name, args, tps_kind in group:
                    for p in poolers:
                        if p.name not in results[name]:
                            continue
                        r = run_pgbench(a.pg_bindir, p, args, a.duration, tps_kind, sslmode,
                                        a.channel_binding)
                        r["scenario"], r["round"] = name, rnd + 1
                        results[name][p.name].append(r)
                        all_runs.append(r)
                        log("  %-24s round %d %-9s tps %s lat %s ms cpu %s us/txn rss %d KiB%s" % (
                            name, rnd + 1, p.name, fmt(r["tps"], ".1f"),
                            fmt(r["latency_ms"], ".3f"), fmt(r["cpu_us_per_txn"], ".1f"),
                            r["rss_kib"],
                            ("  ERRORS: " + "; ".join(r["errors"])) if r["errors"] else ""))
                        if r["errors"]:
                            failed = True
                            log(r["stderr"].strip()[-2000:])
                        if not p.alive():
                            raise SetupError("%s died during %s:\n%s\n%s" % (
                                p.label, name, read_text(p.outfile), tail(p.logfile)))
                        time.sleep(0.5)
            for p in poolers:
                p.rss_trace.append(("+".join(sc[0] for sc in group), rss_kib(p.pid)))
            for name, args, _ in group:
                summary[name] = print_table(
                    name, " ".join(args), a.rounds, a.duration,
                    [p for p in poolers if p.name in results[name]], results[name],
                    "" if sslmode == "disable" else "PGSSLMODE=" + sslmode)
            if group[0][0] in prepared_names:
                summary["prepared-ratios"] = print_prepared_ratios(a.rounds, results)
        tls_ratios = print_tls_summary(a.rounds, a.duration, summary)
        if tls_ratios:
            summary["tls-ratios"] = tls_ratios

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
                           "pgbouncer": {"path": a.pgbouncer,
                                         "version": next((s[4] for s in specs if s[4]), None)},
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
