#!/usr/bin/python3
"""Soak test: pgbench through pgfunnel while a chaos thread breaks things (issue 5).

Starts its own Postgres cluster and pgfunnel (tests/integration/pfhelpers.py; as the
unprivileged test user when run as root), then for --duration seconds:

- runs many short pgbench runs in a loop (transaction pooling, --clients clients each, -T
  --run-seconds): pgbench 15 aborts a client on a lost connection, so each run is counted on
  its own (transactions, errors);
- a chaos thread every --chaos-interval seconds either terminates 1-3 random backends of
  the pooled role (pg_terminate_backend) or throws a burst of garbage connections at the
  listener (random bytes, bad lengths, half startup packets, SSLRequest then garbage,
  connect-and-drop); once, at 40% of the duration, it restarts Postgres (pg_ctl restart -m
  fast);
- pgfunnel's RSS and fd count are sampled every second.

At the end it checks (exit status 1 if any check fails):
  alive          pgfunnel is still running
  no_idle_tx     no backend of the role is `idle in transaction` (within 5 s)
  rss            RSS at the end <= RSS after the first run + --rss-bound-mib
  fds            fd count at the end <= before any client + default_pool_size + 4
  explained      every pgbench run with errors overlapped a fault (termination or restart,
                 +-2 s); runs without a fault had no errors, and every run made progress
                 unless Postgres was down during it
  progress       transactions were processed after the last fault
  clean_exit     after SIGQUIT pgfunnel exits 0 with no sanitizer report (with an ASan
                 build LeakSanitizer reports leaks at exit)

The binary is $PGFUNNEL_BIN. For an ASan build the allocator quarantine (256 MiB by default,
which would look like growth) is capped at 16 MiB for pgfunnel; see tests/soak/README.

    PGFUNNEL_BIN=build/pgfunnel tests/soak/soak.py --duration 600
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

import pfhelpers  # noqa: E402
import pgwire  # noqa: E402

PGBENCH = shutil.which("pgbench") or os.path.join(pfhelpers.PG_BINDIR, "pgbench")
POOL_SIZE = 10
FAULT_SLACK = 2.0


def log(fmt, *args):
    sys.stdout.write("[%7.1f] %s\n" % (time.monotonic() - T0, fmt % args))
    sys.stdout.flush()


T0 = time.monotonic()


class Soak:
    def __init__(self, args):
        self.args = args
        self.cluster = None
        self.factory = None
        self.pf = None
        self.role = None
        self.pw = None
        self.stop = threading.Event()
        self.runs = []  # dicts, one per pgbench run
        self.faults = []  # (kind, start, end, detail)
        self.garbage = 0  # garbage connections thrown
        self.garbage_bursts = 0
        self.samples = []  # (t, rss_kib, fds)
        self.chaos_errors = []
        self.rng = random.Random(args.seed)

    # -- setup / teardown

    def setup(self):
        pfhelpers.ensure_run_user()
        if self.args.asan_quarantine_mb is not None:
            opts = os.environ.get("ASAN_OPTIONS", "")
            os.environ["ASAN_OPTIONS"] = ":".join(
                [o for o in opts.split(":") if o] +
                ["quarantine_size_mb=%d" % self.args.asan_quarantine_mb])
        self.cluster = pfhelpers.PgCluster().start()
        self.role, self.pw = pfhelpers.new_role(self.cluster, "soak")
        env = self.pgenv()
        res = subprocess.run([PGBENCH, "-i", "-q", "-s", "1", "-h", self.cluster.host,
                              "-p", str(self.cluster.port), "-U", self.role, "appdb"],
                             env=env, capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            raise RuntimeError("pgbench -i failed:\n%s%s" % (res.stdout, res.stderr))
        self.factory = pfhelpers.PgFunnelFactory()
        self.pf = pfhelpers.start_proxy(
            self.factory, self.cluster,
            params={"pool_mode": "transaction", "default_pool_size": POOL_SIZE,
                    "max_client_conn": 1000, "server_login_retry": 1,
                    "server_connect_timeout": 5, "query_wait_timeout": 30,
                    "client_login_timeout": 5, "log_connections": 0,
                    "log_disconnections": 0},
            userlist={self.role: self.pw})
        time.sleep(0.3)
        self.fds_before = pfhelpers.proc_fd_count(self.pf.pid)
        log("postgres on port %d, pgfunnel (pid %d) on port %d, role %s",
            self.cluster.port, self.pf.pid, self.pf.port, self.role)

    def teardown(self):
        if self.factory:
            self.factory.cleanup()
        if self.cluster:
            self.cluster.destroy()

    def pgenv(self):
        env = dict(os.environ)
        env["PGPASSWORD"] = self.pw
        env["PGCONNECT_TIMEOUT"] = "10"
        env.pop("PGSERVICE", None)
        return env

    # -- workers

    def pgbench_loop(self, end):
        env = self.pgenv()
        while time.monotonic() < end - 1:
            secs = max(1, min(self.args.run_seconds, int(end - time.monotonic())))
            cmd = [PGBENCH, "-n", "-c", str(self.args.clients), "-j", "2", "-T", str(secs),
                   "-h", self.pf.host, "-p", str(self.pf.port), "-U", self.role, "appdb"]
            t0 = time.monotonic()
            try:
                res = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                     timeout=secs + 120)
                out, err, rc = res.stdout, res.stderr, res.returncode
            except subprocess.TimeoutExpired as e:
                out, err, rc = e.stdout or "", (e.stderr or "") + "\nTIMEOUT", -1
            t1 = time.monotonic()
            m = re.search(r"number of transactions actually processed: (\d+)", out)
            errors = [line for line in err.splitlines()
                      if "error:" in line and "Run was aborted" not in line]
            if rc == -1:
                errors.append("pgbench hung: killed after %d s" % (secs + 120))
            run = {"start": t0, "end": t1, "seconds": secs, "rc": rc,
                   "transactions": int(m.group(1)) if m else 0, "errors": len(errors),
                   "error_lines": errors[:5]}
            self.runs.append(run)
            log("pgbench run %d: %d s, %d transactions, %d errors, rc %d%s",
                len(self.runs), secs, run["transactions"], run["errors"], rc,
                (" (" + errors[0][:150] + ")") if errors else "")

    def chaos_loop(self, end):
        restart_at = T_START + self.args.duration * 0.4
        restarted = False
        tick = 0
        while not self.stop.wait(self.args.chaos_interval):
            now = time.monotonic()
            if now > end - self.args.quiet_tail:
                continue
            try:
                if not restarted and now >= restart_at:
                    restarted = True
                    self.restart_postgres()
                elif tick % 2 == 0:
                    self.terminate_backends(self.rng.randint(1, 3))
                else:
                    self.throw_garbage(self.rng.randint(10, 40))
            except Exception as e:  # noqa: BLE001 - reported, and a failed check
                self.chaos_errors.append("%.1f %r" % (now - T0, e))
                log("chaos action failed: %r", e)
            tick += 1

    def sampler(self):
        while not self.stop.wait(1.0):
            rss = pfhelpers.proc_rss_kib(self.pf.pid)
            fds = pfhelpers.proc_fd_count(self.pf.pid)
            self.samples.append((time.monotonic(), rss, fds))

    # -- chaos actions

    def terminate_backends(self, k):
        t = time.monotonic()
        with self.cluster.connect(autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid, state, pg_terminate_backend(pid) FROM ("
                "  SELECT pid, state FROM pg_stat_activity WHERE usename = %s"
                "  ORDER BY random() LIMIT %s) s", (self.role, k)).fetchall()
        states = [r[1] for r in rows]
        if rows:
            self.faults.append(("terminate", t, time.monotonic(), states))
        log("chaos: terminated %d backend(s) %s", len(rows), states)

    def restart_postgres(self):
        t = time.monotonic()
        self.faults.append(("restart", t, None, None))
        pfhelpers.restart_cluster(self.cluster, "fast")
        t1 = time.monotonic()
        self.faults[-1] = ("restart", t, t1, None)
        log("chaos: restarted Postgres in %.1f s", t1 - t)

    def throw_garbage(self, n):
        startup = pgwire.startup_message({"user": self.role, "database": "appdb"})
        ssl = struct.pack("!II", 8, 80877103)
        kinds = [
            lambda: bytes(self.rng.randrange(256) for _ in range(self.rng.randint(1, 200))),
            lambda: struct.pack("!I", self.rng.choice([0, 4, 7, 10001, 2 ** 31 - 1])) + b"junk",
            lambda: startup[:self.rng.randint(1, len(startup) - 1)],
            lambda: ssl + b"\x16\x03\x01\x02\x00" + bytes(60),
            lambda: b"",
            lambda: startup + b"Z\0\0\0\x05I",  # login, then a backend-only message
        ]
        socks = []
        for _ in range(n):
            try:
                s = socket.create_connection((self.pf.host, self.pf.port), timeout=2)
                data = self.rng.choice(kinds)()
                if data:
                    s.sendall(data)
                socks.append(s)
            except OSError:
                pass
        time.sleep(0.2)
        for s in socks:
            s.close()
        self.garbage += n
        self.garbage_bursts += 1
        log("chaos: %d garbage connections", n)

    # -- checks

    def fault_near(self, run):
        for kind, t0, t1, _ in self.faults:
            t1 = t1 if t1 is not None else time.monotonic()
            if t0 <= run["end"] + FAULT_SLACK and t1 >= run["start"] - FAULT_SLACK:
                return kind
        return None

    def idle_in_transaction(self):
        with self.cluster.connect(autocommit=True) as conn:
            return conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND "
                "state LIKE 'idle in transaction%%'", (self.role,)).fetchone()[0]

    def run(self):
        global T_START
        T_START = time.monotonic()
        end = T_START + self.args.duration
        threads = [threading.Thread(target=self.sampler, daemon=True),
                   threading.Thread(target=self.chaos_loop, args=(end,), daemon=True)]
        for t in threads:
            t.start()
        try:
            self.pgbench_loop(end)
        finally:
            self.stop.set()
            for t in threads:
                t.join(120)
        return self.check()

    def check(self):
        checks = {}
        alive = self.pf.is_running()
        checks["alive"] = alive
        idle_tx = pfhelpers.wait_for(lambda: self.idle_in_transaction() == 0, 5) if alive else False
        checks["no_idle_tx"] = bool(idle_tx)

        first_end = self.runs[0]["end"] if self.runs else T_START
        after_warmup = [s for s in self.samples if s[0] >= first_end and s[1]]
        rss_start = after_warmup[0][1] if after_warmup else None
        rss_end = pfhelpers.proc_rss_kib(self.pf.pid) if alive else None
        rss_max = max((s[1] for s in self.samples if s[1]), default=None)
        checks["rss"] = bool(rss_start and rss_end and
                             rss_end - rss_start <= self.args.rss_bound_mib * 1024)
        fds_end = pfhelpers.proc_fd_count(self.pf.pid) if alive else None
        checks["fds"] = fds_end is not None and fds_end <= self.fds_before + POOL_SIZE + 4

        unexplained, stalled = [], []
        for i, r in enumerate(self.runs, 1):
            fault = self.fault_near(r)
            r["fault"] = fault
            if r["errors"] and not fault:
                unexplained.append(i)
            if r["transactions"] == 0 and fault != "restart":
                stalled.append(i)
        checks["explained"] = not unexplained and not stalled and not self.chaos_errors
        last_fault = max((f[2] or f[1] for f in self.faults), default=T_START)
        checks["progress"] = any(r["transactions"] > 0 and r["start"] > last_fault
                                 for r in self.runs)

        # Clean exit (and, with ASan, no leaks).
        reports = pfhelpers.sanitizer_reports(self.pf)
        rc = None
        if alive:
            self.pf.signal(signal.SIGQUIT)
            try:
                rc = self.pf.wait(30)
            except AssertionError:
                rc = "still running"
            reports = pfhelpers.sanitizer_reports(self.pf)
        checks["clean_exit"] = rc == 0 and not reports

        total_tx = sum(r["transactions"] for r in self.runs)
        total_err = sum(r["errors"] for r in self.runs)
        terminations = [f for f in self.faults if f[0] == "terminate"]
        restarts = [f for f in self.faults if f[0] == "restart"]
        summary = {
            "duration": self.args.duration,
            "clients": self.args.clients,
            "runs": len(self.runs),
            "runs_with_errors": sum(1 for r in self.runs if r["errors"]),
            "runs_without_fault": sum(1 for r in self.runs if not r["fault"]),
            "transactions": total_tx,
            "tps": round(total_tx / max(1e-9, sum(r["end"] - r["start"] for r in self.runs)), 1),
            "errors": total_err,
            "unexplained_runs": unexplained,
            "stalled_runs": stalled,
            "terminations": len(terminations),
            "backends_terminated": sum(len(f[3]) for f in terminations),
            "terminated_states": sorted({s for f in terminations for s in f[3]}),
            "restarts": len(restarts),
            "restart_seconds": [round(f[2] - f[1], 2) for f in restarts if f[2]],
            "garbage_connections": self.garbage,
            "garbage_bursts": self.garbage_bursts,
            "chaos_errors": self.chaos_errors,
            "rss_kib": {"start": rss_start, "end": rss_end, "max": rss_max},
            "fds": {"before": self.fds_before, "end": fds_end},
            "rss_timeline": [(round(s[0] - T_START), s[1], s[2])
                             for s in self.samples[::max(1, len(self.samples) // 30)]],
            "sanitizer_reports": reports[:20],
            "exit_status": rc,
            "error_samples": [e for r in self.runs for e in r["error_lines"]][:10],
            "checks": checks,
            "ok": all(checks.values()),
        }
        return summary


def print_summary(s):
    p = print
    p("")
    p("==== pgfunnel soak summary ====")
    p("duration %d s, %d pgbench runs x %d clients (transaction pooling, pool size %d)" % (
        s["duration"], s["runs"], s["clients"], POOL_SIZE))
    p("transactions: %d (%.1f tps), errors: %d in %d runs, %d runs without any fault" % (
        s["transactions"], s["tps"], s["errors"], s["runs_with_errors"],
        s["runs_without_fault"]))
    p("chaos: %d terminations (%d backends, states %s), %d Postgres restart(s) %s, "
      "%d garbage connections in %d bursts" % (
          s["terminations"], s["backends_terminated"], ",".join(s["terminated_states"]),
          s["restarts"], s["restart_seconds"], s["garbage_connections"], s["garbage_bursts"]))
    r = s["rss_kib"]
    growth = (r["end"] - r["start"]) if r["start"] and r["end"] else None
    p("RSS KiB: after warm-up %s, end %s, max %s, growth %s KiB" % (
        r["start"], r["end"], r["max"], growth))
    p("fds: before clients %s, end %s" % (s["fds"]["before"], s["fds"]["end"]))
    p("RSS over time (s: KiB/fds): " + "  ".join("%d:%s/%s" % t for t in s["rss_timeline"]))
    if s["error_samples"]:
        p("error samples:")
        for e in s["error_samples"]:
            p("  " + e[:200])
    if s["unexplained_runs"] or s["stalled_runs"] or s["chaos_errors"]:
        p("unexplained runs %s, stalled runs %s, chaos errors %s" % (
            s["unexplained_runs"], s["stalled_runs"], s["chaos_errors"]))
    if s["sanitizer_reports"]:
        p("sanitizer: " + "\n  ".join(s["sanitizer_reports"]))
    p("pgfunnel exit status after SIGQUIT: %s" % s["exit_status"])
    p("checks: " + ", ".join("%s %s" % (k, "ok" if v else "FAILED")
                             for k, v in s["checks"].items()))
    p("RESULT: %s" % ("PASS" if s["ok"] else "FAIL"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=60, help="seconds (default 60)")
    ap.add_argument("--clients", type=int, default=20, help="pgbench -c (default 20)")
    ap.add_argument("--run-seconds", type=int, default=5, help="pgbench -T per run (5)")
    ap.add_argument("--chaos-interval", type=float, default=3.0, help="seconds (3)")
    ap.add_argument("--quiet-tail", type=float, default=None,
                    help="no chaos in the last N seconds (default: 2 pgbench runs)")
    ap.add_argument("--rss-bound-mib", type=int, default=20, help="allowed RSS growth (20)")
    ap.add_argument("--asan-quarantine-mb", type=int, default=16,
                    help="ASAN_OPTIONS quarantine_size_mb for pgfunnel (16; -1: leave as is)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="also write the summary as JSON to this file")
    args = ap.parse_args(argv)
    if args.quiet_tail is None:
        args.quiet_tail = 2 * args.run_seconds + 1
    if args.asan_quarantine_mb < 0:
        args.asan_quarantine_mb = None
    pfhelpers.pgfunnel_bin()  # fails early without PGFUNNEL_BIN

    soak = Soak(args)
    try:
        soak.setup()
        summary = soak.run()
    finally:
        soak.teardown()
    print_summary(summary)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1, default=str)
    return 0 if summary["ok"] else 1


T_START = time.monotonic()

if __name__ == "__main__":
    sys.exit(main())
