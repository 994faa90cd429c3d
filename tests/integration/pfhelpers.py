"""Shared helpers for the pgfunnel integration tests.

Everything here is plain functions and small classes so that conftest.py
(fixtures) and the test modules of later issues can use them directly:

- port allocation that cannot collide between parallel pytest processes
  (a per-port flock in a shared directory, plus a bind check),
- the unprivileged OS user that runs Postgres and pgfunnel when the tests run
  as root (initdb refuses root, pgfunnel refuses root without -u),
- a throwaway Postgres cluster (PgCluster),
- a pgfunnel process started from a generated ini (PgFunnel),
- psql, log reading and waiting helpers.

Only the standard library and psycopg (Debian's python3-psycopg) are used.
"""

import fcntl
import glob
import os
import pwd
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time

PG_BINDIR = os.environ.get("PG_BINDIR", "/usr/lib/postgresql/15/bin")
PSQL = os.path.join(PG_BINDIR, "psql")

# The system user created by scripts/install-deps.sh.
RUN_USER = os.environ.get("PGFUNNEL_TEST_USER", "pgfunnel")

# Ports handed out by alloc_port(): below Linux's default ephemeral range
# (32768-60999), so outgoing connections never hold one of them.
PORT_LOW = 21000
PORT_HIGH = 30000
PORT_LOCK_DIR = os.path.join(tempfile.gettempdir(), "pgfunnel-test-ports")

# A PgBouncer-style log line: "2026-11-26 07:00:00.123 UTC [1234] LOG message".
LOG_LINE_RE = re.compile(
    r"^(?P<date>\d{4}-\d\d-\d\d) (?P<time>\d\d:\d\d:\d\d\.\d{3}) (?P<tz>\S+) "
    r"\[(?P<pid>\d+)\] (?P<level>[A-Z]+) (?P<msg>.*)$"
)
PROCESS_UP_RE = re.compile(r"process up: ")

# PgFunnel.signal() shadows the module inside the class body.
SIGINT = signal.SIGINT


def pgfunnel_bin():
    """Path of the binary under test (PGFUNNEL_BIN), or a clear failure."""
    path = os.environ.get("PGFUNNEL_BIN")
    if not path:
        raise RuntimeError("PGFUNNEL_BIN is not set: point it at the built pgfunnel binary")
    return os.path.abspath(path)


def binary_is_pgbouncer():
    """Whether PGFUNNEL_BIN is a PgBouncer (the suites that compare run against it too)."""
    path = os.environ.get("PGFUNNEL_BIN")
    if not path:
        return False
    try:
        res = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return False
    return "PgBouncer" in res.stdout + res.stderr


UNDER_PGBOUNCER = binary_is_pgbouncer()


def beyond_pgbouncer(what):
    """A test of something pgfunnel promises beyond PgBouncer 1.25.2: a strict xfail when the
    suite runs against PgBouncer (PGFUNNEL_BIN pointing at it), an ordinary test otherwise."""
    import pytest
    return pytest.mark.xfail(UNDER_PGBOUNCER, strict=True,
                             reason="beyond PgBouncer 1.25.2: " + what)


def source_root():
    """The repository root (PGFUNNEL_SOURCE_ROOT, else derived from this file)."""
    root = os.environ.get("PGFUNNEL_SOURCE_ROOT")
    if root:
        return os.path.abspath(root)
    return os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def project_version():
    """The version in meson.build's project() call."""
    with open(os.path.join(source_root(), "meson.build"), encoding="utf-8") as f:
        text = f.read()
    m = re.search(r"project\s*\([^)]*?version\s*:\s*'([^']+)'", text, re.S)
    if not m:
        raise RuntimeError("no version in meson.build's project()")
    return m.group(1)


# ---------------------------------------------------------------- ports


_held_ports = {}  # port -> fd of its lock file, for this process


def port_bindable(port, host="127.0.0.1"):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # Same option servers use, so a port left in TIME_WAIT counts as free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def lock_port(port):
    """Take port's lock file; return True if this process now holds it.

    The lock is an flock on PORT_LOCK_DIR/<port>.lock: it is released when
    release_port() closes it or when the process dies, so a crashed pytest
    never leaks a port.
    """
    if port in _held_ports:
        return False
    os.makedirs(PORT_LOCK_DIR, exist_ok=True)
    try:
        os.chmod(PORT_LOCK_DIR, 0o1777)
    except PermissionError:
        pass
    fd = os.open(os.path.join(PORT_LOCK_DIR, "%d.lock" % port), os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _held_ports[port] = fd
    return True


def release_port(port):
    """Give back a port taken by alloc_port() or lock_port()."""
    fd = _held_ports.pop(port, None)
    if fd is not None:
        os.close(fd)


def alloc_port():
    """A TCP port on 127.0.0.1 that nobody listens on and no other test process holds."""
    span = PORT_HIGH - PORT_LOW
    start = random.randrange(span)
    for i in range(span):
        port = PORT_LOW + (start + i) % span
        if not lock_port(port):
            continue
        if port_bindable(port):
            return port
        release_port(port)
    raise RuntimeError("no free TCP port in %d-%d" % (PORT_LOW, PORT_HIGH))


def port_accepts(port, host="127.0.0.1", timeout=0.5):
    """True if a TCP connection to host:port succeeds now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------- users


def is_root():
    return os.geteuid() == 0


def ensure_run_user():
    """Make sure RUN_USER exists when running as root; return (uid, gid) or None.

    None means we are not root: servers simply run as the current user.
    """
    if not is_root():
        return None
    try:
        pw = pwd.getpwnam(RUN_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home",
             "--shell", "/usr/sbin/nologin", RUN_USER],
            check=True,
        )
        pw = pwd.getpwnam(RUN_USER)
    return pw.pw_uid, pw.pw_gid


def as_run_user(cmd):
    """cmd prefixed so it runs as RUN_USER when we are root (exec in place: same PID)."""
    if not is_root():
        return list(cmd)
    ensure_run_user()
    return ["setpriv", "--reuid=" + RUN_USER, "--regid=" + RUN_USER, "--init-groups", "--"] + list(cmd)


def make_tempdir(prefix):
    """A fresh directory under /tmp owned by RUN_USER (when root), mode 0700.

    Not pytest's tmp_path: that lives under a root-only 0700 directory the
    unprivileged user cannot traverse.
    """
    d = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    chown_run_user(d)
    return d


def chown_run_user(path):
    ids = ensure_run_user()
    if ids is not None:
        os.chown(path, ids[0], ids[1])


def write_file(path, text, mode=0o600):
    """Write text to path, owned by RUN_USER when root (so reloads can read it)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, mode)
    chown_run_user(path)


def remove_tree(path):
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- processes


def pid_alive(pid):
    """True while pid exists and is not a zombie (PID 1 may not reap orphans)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open("/proc/%d/stat" % pid, encoding="ascii", errors="replace") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return False


def wait_pid_gone(pid, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return not pid_alive(pid)


def pids_with_arg(arg):
    """PIDs of live processes that have arg as one of their command-line arguments."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % name, "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if arg.encode() in args:
            found.append(int(name))
    return found


_subreaper = None


def enable_subreaper():
    """Make this process the reaper of its orphaned descendants (Linux prctl); True if it is.

    A daemon that double-forks then stays our descendant, so waitpid() can
    report its exit status (and no zombie is left when PID 1 does not reap).
    """
    global _subreaper
    if _subreaper is None:
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            PR_SET_CHILD_SUBREAPER = 36
            _subreaper = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
        except (OSError, AttributeError):
            _subreaper = False
    return _subreaper


def reap(pid):
    """waitpid(pid) without blocking: the exit status, or None if pid is not our (dead) child."""
    try:
        got, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if got == 0:
        return None
    return os.waitstatus_to_exitcode(status)


def kill_quietly(pid, sig=signal.SIGKILL):
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def read_text(path):
    """File contents, or '' if it does not exist (yet)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def log_lines(text):
    """Parsed PgBouncer-style log lines (dicts); other lines are skipped."""
    out = []
    for line in text.splitlines():
        m = LOG_LINE_RE.match(line)
        if m:
            d = m.groupdict()
            d["pid"] = int(d["pid"])
            d["line"] = line
            out.append(d)
    return out


def wait_for(predicate, timeout, interval=0.05):
    """Poll predicate() until it returns a truthy value or timeout passes; return the value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def run_clients(n, client, timeout):
    """Runs client(i) for i in range(n), each in its own thread, and waits up to timeout for
    each; returns [(i, what went wrong)] for those that raised or had not finished."""
    errors = []

    def wrap(i):
        try:
            client(i)
        except Exception as e:  # noqa: BLE001 - reported to the test, which asserts on it
            errors.append((i, repr(e)[:2000]))

    threads = [threading.Thread(target=wrap, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    errors += [(i, "still running after %.0f s" % timeout)
               for i, t in enumerate(threads) if t.is_alive()]
    return errors


def wait_until(predicate, timeout, what, details=None, interval=0.05):
    """Poll predicate() until it returns a truthy value, and return that value; when timeout
    seconds pass first, fail (AssertionError) saying what did not happen, plus details() (a
    function returning text, e.g. the SHOW output or the log) when given.

    This is how a test waits for an event: never a fixed sleep that hopes it has happened."""
    value = wait_for(predicate, timeout, interval)
    if not value:
        text = "%s: not within %.1fs" % (what, timeout)
        if details is not None:
            try:
                text += "\n" + str(details())
            except Exception as e:  # noqa: BLE001 - the details are a courtesy
                text += "\n(details failed: %r)" % e
        raise AssertionError(text)
    return value


def is_socket(path):
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------- psql


def psql(sql, *, host="127.0.0.1", port, user="postgres", dbname="postgres",
         password=None, extra_args=(), timeout=30, check=False):
    """Run psql -X -A -t -c sql; return subprocess.CompletedProcess (text).

    check=True raises with psql's stderr when it fails.
    """
    env = dict(os.environ)
    env.pop("PGSERVICE", None)
    env["PGCONNECT_TIMEOUT"] = "5"
    if password is not None:
        env["PGPASSWORD"] = password
    else:
        env.pop("PGPASSWORD", None)
    cmd = [PSQL, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", str(host), "-p", str(port),
           "-U", user, "-d", dbname, "-c", sql] + list(extra_args)
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL)
    if check and res.returncode != 0:
        raise AssertionError("psql failed (%d): %s\n%s" % (res.returncode, " ".join(cmd),
                                                           res.stderr))
    return res


# ---------------------------------------------------------------- Postgres


class PgCluster:
    """A throwaway Postgres cluster, started by start() and removed by destroy().

    Listens on 127.0.0.1:port only, plus a unix socket in socket_dir. Every
    login needs a password: hba method md5, which does SCRAM for roles whose
    password is stored as SCRAM (alice, postgres) and MD5 for md5-stored
    ones (bob).
    """

    SUPERUSER = "postgres"
    PASSWORDS = {
        "postgres": "pg-super-secret",
        "alice": "alice-scram-secret",
        "bob": "bob-md5-secret",
    }

    def __init__(self):
        self.host = "127.0.0.1"
        self.port = None
        self.dir = None
        self.datadir = None
        self.socket_dir = None
        self.logfile = None
        self.passwords = dict(self.PASSWORDS)
        self.superuser = self.SUPERUSER
        self.bindir = PG_BINDIR

    def _run(self, cmd, **kw):
        return subprocess.run(as_run_user(cmd), cwd=self.dir, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, **kw)

    def start(self):
        self.dir = make_tempdir("pgfunnel-pg.")
        self.datadir = os.path.join(self.dir, "data")
        self.socket_dir = self.dir
        self.logfile = os.path.join(self.dir, "postgres.log")
        self.port = alloc_port()
        pwfile = os.path.join(self.dir, "pwfile")
        write_file(pwfile, self.passwords[self.superuser] + "\n")
        res = self._run([os.path.join(self.bindir, "initdb"), "-D", self.datadir,
                         "-U", self.superuser, "--auth=scram-sha-256", "--pwfile=" + pwfile,
                         "--locale=C", "--encoding=UTF8", "--no-sync"], timeout=120)
        assert res.returncode == 0, "initdb failed:\n%s\n%s" % (res.stdout, res.stderr)
        os.unlink(pwfile)
        with open(os.path.join(self.datadir, "postgresql.conf"), "a", encoding="utf-8") as f:
            f.write("\n# pgfunnel integration tests\n"
                    "listen_addresses = '127.0.0.1'\n"
                    "port = %d\n"
                    "unix_socket_directories = '%s'\n"
                    "password_encryption = 'scram-sha-256'\n"
                    "fsync = off\n"
                    "synchronous_commit = off\n"
                    "full_page_writes = off\n"
                    "max_connections = 200\n"
                    "shared_buffers = 32MB\n"
                    "log_connections = on\n"
                    "log_line_prefix = '%%m [%%p] %%q%%u@%%d '\n"
                    % (self.port, self.socket_dir))
        # initdb --auth=scram-sha-256 would refuse md5-stored passwords; the md5
        # method picks SCRAM or MD5 by how each role's password is stored.
        with open(os.path.join(self.datadir, "pg_hba.conf"), "w", encoding="utf-8") as f:
            f.write("# TYPE  DATABASE  USER  ADDRESS       METHOD\n"
                    "local   all       all                 md5\n"
                    "host    all       all   127.0.0.1/32  md5\n")
        res = self._run([os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "-l",
                         self.logfile, "-w", "-t", "60", "start"], timeout=90)
        assert res.returncode == 0, "pg_ctl start failed:\n%s\n%s\n%s" % (
            res.stdout, res.stderr, read_text(self.logfile))
        self._create_roles()
        return self

    def _create_roles(self):
        pw = self.passwords
        with self.connect(autocommit=True) as conn:
            conn.execute("CREATE ROLE alice LOGIN PASSWORD '%s'" % pw["alice"])
            conn.execute("SET password_encryption = 'md5'")
            conn.execute("CREATE ROLE bob LOGIN PASSWORD '%s'" % pw["bob"])
            conn.execute("RESET password_encryption")
            conn.execute("CREATE DATABASE appdb OWNER alice")

    def postmaster_pid(self):
        text = read_text(os.path.join(self.datadir, "postmaster.pid"))
        return int(text.split("\n", 1)[0]) if text.strip() else None

    def stop(self):
        """pg_ctl stop -m fast; SIGQUIT the postmaster by PID if that fails."""
        if not self.datadir or not os.path.exists(os.path.join(self.datadir, "postmaster.pid")):
            return
        pid = self.postmaster_pid()
        res = self._run([os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "-m", "fast",
                         "-w", "-t", "30", "stop"], timeout=60)
        if res.returncode != 0 and pid:
            kill_quietly(pid, signal.SIGQUIT)
            wait_pid_gone(pid, 10)

    def destroy(self):
        try:
            self.stop()
        finally:
            if self.port:
                release_port(self.port)
            if self.dir:
                remove_tree(self.dir)

    def conninfo(self, user=None, dbname="postgres", password=None, host=None, port=None):
        """A libpq keyword/value string; the password defaults to the user's known one."""
        user = user or self.superuser
        if password is None:
            password = self.passwords.get(user, "")
        return "host=%s port=%d user=%s dbname=%s password='%s' connect_timeout=5" % (
            host or self.host, port or self.port, user, dbname,
            password.replace("\\", "\\\\").replace("'", "\\'"))

    def connect(self, user=None, dbname="postgres", password=None, host=None, port=None, **kw):
        """psycopg.connect() to this cluster (TCP by default; host=socket_dir for the socket)."""
        import psycopg
        return psycopg.connect(self.conninfo(user, dbname, password, host, port), **kw)

    def psql(self, sql, user=None, dbname="postgres", password=None, **kw):
        user = user or self.superuser
        if password is None:
            password = self.passwords.get(user)
        return psql(sql, host=self.host, port=self.port, user=user, dbname=dbname,
                    password=password, **kw)

    def db_entry(self, dbname="postgres", **extra):
        """A [databases] value pointing at this cluster over TCP."""
        parts = ["host=%s" % self.host, "port=%d" % self.port, "dbname=%s" % dbname]
        parts += ["%s=%s" % kv for kv in extra.items()]
        return " ".join(parts)

    def userlist(self):
        """{user: plain password} for every role this fixture created."""
        return dict(self.passwords)


# ---------------------------------------------------------------- pgfunnel


def format_ini(sections):
    """Render [(section, {key: value})] as ini text; values are written as given."""
    out = []
    for name, params in sections:
        out.append("[%s]" % name)
        for k, v in params.items():
            out.append("%s = %s" % (k, v))
        out.append("")
    return "\n".join(out)


def format_userlist(users):
    """auth_file text: one `"user" "secret"` line per entry (quotes doubled)."""
    return "".join('"%s" "%s"\n' % (u.replace('"', '""'), s.replace('"', '""'))
                   for u, s in users.items())


class PgFunnel:
    """One pgfunnel process and its files (ini, userlist, log, pidfile) in its own dir.

    Create with PgFunnelFactory.start(). Attributes: proc (Popen of the
    command we ran), pid (the pgfunnel process: the daemon's in -d mode),
    host, port, dir, ini_path, userlist_path, logfile, pidfile,
    unix_socket_dir, stderr_path, cmd.
    """

    def __init__(self, workdir):
        self.dir = workdir
        self.proc = None
        self.pid = None
        self.host = "127.0.0.1"
        self.port = None
        self.params = {}
        self.databases = {}
        self.users = {}
        self.section = "pgbouncer"
        self.ini_path = os.path.join(workdir, "pgfunnel.ini")
        self.userlist_path = os.path.join(workdir, "userlist.txt")
        self.logfile = os.path.join(workdir, "pgfunnel.log")
        self.pidfile = os.path.join(workdir, "pgfunnel.pid")
        self.unix_socket_dir = workdir
        self.stderr_path = os.path.join(workdir, "stderr.txt")
        # Sanitizer reports go to <prefix>.<pid> (log_path; see sanitizer_env()).
        self.sanitizer_prefix = os.path.join(workdir, "sanitizer")
        self.cmd = None
        self.daemon = False
        self.returncode = None

    # -- files

    def write_ini(self, params=None, databases=None, users=None, section=None, extra_text=""):
        """(Re)write the ini from the given dicts (default: the current ones)."""
        if params is not None:
            self.params = dict(params)
        if databases is not None:
            self.databases = dict(databases)
        if users is not None:
            self.users = dict(users)
        if section is not None:
            self.section = section
        sections = [("databases", self.databases)]
        if self.users:
            sections.append(("users", self.users))
        sections.append((self.section, self.params))
        write_file(self.ini_path, format_ini(sections) + extra_text)

    def write_userlist(self, users):
        write_file(self.userlist_path, format_userlist(users))

    def ini_line_of(self, key):
        """1-based line number of `key =` in the ini (for FILE:LINE assertions)."""
        for i, line in enumerate(read_text(self.ini_path).splitlines(), 1):
            if re.match(r"\s*%s\s*=" % re.escape(key), line):
                return i
        raise KeyError(key)

    @property
    def socket_path(self):
        return os.path.join(self.unix_socket_dir, ".s.PGSQL.%d" % self.port)

    # -- output

    def log_text(self):
        """The logfile if it has anything, else what the process wrote to stderr."""
        text = read_text(self.logfile) if self.logfile else ""
        return text if text else read_text(self.stderr_path)

    def stderr_text(self):
        return read_text(self.stderr_path)

    def all_output(self):
        return "--- logfile %s:\n%s\n--- stdout/stderr:\n%s" % (
            self.logfile, read_text(self.logfile) if self.logfile else "", self.stderr_text())

    def log_lines(self):
        return log_lines(self.log_text())

    def wait_for_log(self, pattern, timeout=10.0, after=0):
        """Wait until a log line at index >= after matches pattern (regex); return the line.

        Fails with the whole log if it does not appear or the process exits.
        """
        rx = re.compile(pattern)

        def found():
            for line in self.log_text().splitlines()[after:]:
                if rx.search(line):
                    return line
            if not self.is_running():
                # One last look: the line may have been written just before exiting.
                for line in self.log_text().splitlines()[after:]:
                    if rx.search(line):
                        return line
                return "<exited>"
            return None

        line = wait_for(found, timeout)
        assert line and line != "<exited>", "no log line matching %r within %.0fs (%s)\n%s" % (
            pattern, timeout, "process exited" if line == "<exited>" else "still running",
            self.all_output())
        return line

    def log_len(self):
        """Number of log lines so far: pass as after= to wait for a newer line."""
        return len(self.log_text().splitlines())

    # -- process

    def is_running(self):
        if self.pid is None:
            return False
        if self.proc is not None and self.proc.pid == self.pid:
            if self.proc.poll() is not None:
                self.returncode = self.proc.returncode
                return False
            return True
        return pid_alive(self.pid)

    def signal(self, sig):
        os.kill(self.pid, sig)

    def wait(self, timeout=10.0):
        """Wait for the process to end; return its exit status (None for a daemon)."""
        if self.proc is not None and self.proc.pid == self.pid:
            try:
                self.returncode = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                raise AssertionError("pgfunnel (pid %d) still running after %.0fs\n%s" % (
                    self.pid, timeout, self.all_output()))
            return self.returncode
        assert wait_pid_gone(self.pid, timeout), "pgfunnel daemon (pid %d) still running after %.0fs\n%s" % (
            self.pid, timeout, self.all_output())
        # Known only when we are its subreaper (see enable_subreaper()).
        self.returncode = reap(self.pid) if _subreaper else None
        return self.returncode

    def stop(self, sig=SIGINT, timeout=10.0, expect=0):
        """Send sig, wait for the exit and assert the exit status is expect (None: no check).

        For a daemon the status is known only when this process is its
        subreaper (enable_subreaper(), done by start(daemon=True)); otherwise
        only its disappearance is checked. Returns the status (or None).
        """
        self.signal(sig)
        rc = self.wait(timeout)
        if expect is not None and rc is not None:
            assert rc == expect, "pgfunnel exited with %r, expected %r\ncommand: %s\n%s" % (
                rc, expect, " ".join(self.cmd), self.all_output())
        return rc

    def _pids(self):
        """Live processes of this instance: its PID, the command we ran, and any process whose
        command line names its ini (a daemon that forked when the test did not expect it to)."""
        pids = {self.pid, self.proc.pid if self.proc else None}
        pids.update(pids_with_arg(self.ini_path))
        return {pid for pid in pids if pid is not None and self._alive(pid)}

    def _alive(self, pid):
        if self.proc is not None and self.proc.pid == pid:
            return self.proc.poll() is None
        return pid_alive(pid)

    def _wait_gone(self, pids, timeout):
        return wait_for(lambda: not any(self._alive(pid) for pid in pids), timeout)

    def _reap(self):
        if self.proc is not None:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            if self.proc.pid == self.pid:
                self.returncode = self.proc.returncode
        if self.daemon and self.pid:
            wait_pid_gone(self.pid, 5)
            rc = reap(self.pid)
            if rc is not None:
                self.returncode = rc

    def kill(self):
        """SIGKILL by PID if still running (see _pids()). No sanitizer leak check runs."""
        for pid in self._pids():
            kill_quietly(pid)
        self._reap()

    def shutdown(self, grace=None, timeout=None):
        """Teardown that lets the process exit by itself, so LeakSanitizer (which runs at exit)
        and a sanitizer build's exit-time checks get their say.

        SIGINT (after a SIGCONT, in case a test stopped it): pgfunnel stops once its servers
        are released. After `grace` seconds a second SIGINT, which pgfunnel treats as "shut
        down now" (PgBouncer 1.23+). Only when it is still there `timeout` seconds later is it
        SIGKILLed. Returns None when every process of the instance exited by itself, else a
        one-line description of what had to be killed. The defaults come from
        PGFUNNEL_STOP_GRACE (2) and PGFUNNEL_STOP_TIMEOUT (30), so tests/gate/check.sh can
        prove the SIGKILL path quickly.
        """
        if grace is None:
            grace = float(os.environ.get("PGFUNNEL_STOP_GRACE", "2"))
        if timeout is None:
            timeout = float(os.environ.get("PGFUNNEL_STOP_TIMEOUT", "30"))
        pids = self._pids()
        if pids:
            for pid in pids:
                kill_quietly(pid, signal.SIGCONT)
                kill_quietly(pid, signal.SIGINT)
            if not self._wait_gone(pids, grace):
                for pid in pids:
                    kill_quietly(pid, signal.SIGINT)
                if not self._wait_gone(pids, timeout):
                    left = sorted(pid for pid in pids if self._alive(pid))
                    for pid in left:
                        kill_quietly(pid)
                    self._wait_gone(left, 5)
                    self._reap()
                    return ("pgfunnel pid %s (%s) did not exit within %.0fs of SIGINT, SIGINT: "
                            "SIGKILLed, so no exit-time leak check ran" % (
                                ",".join(map(str, left)), self.ini_path, grace + timeout))
        self._reap()
        # Died of the signal itself (no handler installed yet, or no longer): no exit-time
        # checks ran either. Known for our child, and for a daemon when we are its subreaper.
        if pids and self.returncode == -signal.SIGINT:
            return ("pgfunnel pid %d (%s) was killed by the SIGINT of the teardown (no handler), "
                    "so no exit-time leak check ran" % (self.pid, self.ini_path))
        return None

    def sanitizer_files(self):
        """The sanitizer report files its processes wrote (<sanitizer_prefix>.<pid>)."""
        return sorted(glob.glob(glob.escape(self.sanitizer_prefix) + ".*"))


class PgFunnelFactory:
    """Starts PgFunnel instances for one test and cleans all of them up.

    start() arguments:
      params: [pgbouncer] parameters; merged over defaults (listen_addr
        127.0.0.1, a free listen_port, unix_socket_dir/logfile/pidfile/auth_file
        in the instance dir, auth_type scram-sha-256). A value of None drops a
        default.
      databases, users: [databases] / [users] entries {name: value string}.
      userlist: {user: secret} written to the auth_file.
      section: name of the main section ("pgbouncer" or "pgfunnel").
      config_path: run this existing file verbatim instead (then params are
        only used to know the port / logfile; see start()).
      args: extra command-line arguments (before the config path).
      drop: "flag" = pass -u RUN_USER when root; "exec" = run the process
        itself as RUN_USER (setpriv), no -u; None = neither.
      wrapper: command prefix (e.g. valgrind ...), applied inside setpriv.
      daemon: pass -d; the started command must exit 0 and the daemon's PID
        is read from the pidfile.
      wait: wait for readiness ("process up" in the log, or the TCP port
        accepting) within timeout seconds.
    """

    def __init__(self):
        self.instances = []
        self.ports = []
        self.dirs = []

    def new_port(self):
        port = alloc_port()
        self.ports.append(port)
        return port

    def start(self, params=None, databases=None, users=None, userlist=None, *, section="pgbouncer",
              config_path=None, args=(), drop="flag", wrapper=(), daemon=False, wait=True,
              timeout=10.0, port=None):
        workdir = make_tempdir("pgfunnel-it.")
        self.dirs.append(workdir)
        pf = PgFunnel(workdir)
        self.instances.append(pf)
        pf.daemon = daemon
        if config_path is None:
            pf.port = port or self.new_port()
            merged = {
                "listen_addr": "127.0.0.1",
                "listen_port": pf.port,
                "unix_socket_dir": workdir,
                "logfile": pf.logfile,
                "pidfile": pf.pidfile,
                "auth_type": "scram-sha-256",
                "auth_file": pf.userlist_path,
            }
            merged.update(params or {})
            merged = {k: v for k, v in merged.items() if v is not None}
            pf.logfile = merged.get("logfile")
            pf.pidfile = merged.get("pidfile")
            pf.unix_socket_dir = merged.get("unix_socket_dir") or None
            pf.write_ini(merged, databases or {}, users or {}, section)
            pf.write_userlist(userlist or {})
        else:
            pf.ini_path = config_path
            pf.port = port
            p = params or {}
            pf.logfile = p.get("logfile")
            pf.pidfile = p.get("pidfile")
            pf.unix_socket_dir = p.get("unix_socket_dir")

        cmd = [pgfunnel_bin()]
        if drop == "flag" and is_root():
            ensure_run_user()
            cmd += ["-u", RUN_USER]
        if daemon:
            cmd.append("-d")
        cmd += list(args) + [pf.ini_path]
        cmd = list(wrapper) + cmd
        if drop == "exec":
            cmd = as_run_user(cmd)
        pf.cmd = cmd
        err = open(pf.stderr_path, "wb")
        try:
            pf.proc = subprocess.Popen(cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=err,
                                       stderr=subprocess.STDOUT,
                                       env=sanitizer_env(pf.sanitizer_prefix))
        finally:
            err.close()
        pf.pid = pf.proc.pid
        if daemon:
            enable_subreaper()
            try:
                rc = pf.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                raise AssertionError("pgfunnel -d did not return within %.0fs\n%s" % (
                    timeout, pf.all_output()))
            assert rc == 0, "pgfunnel -d exited with %d\ncommand: %s\n%s" % (
                rc, " ".join(cmd), pf.all_output())
            text = wait_for(lambda: read_text(pf.pidfile).strip(), timeout)
            assert text.isdigit(), "pidfile %s holds %r after -d\n%s" % (
                pf.pidfile, text, pf.all_output())
            pf.pid = int(text)
        if wait:
            self.wait_ready(pf, timeout)
        return pf

    @staticmethod
    def wait_ready(pf, timeout=10.0):
        def ready():
            if PROCESS_UP_RE.search(pf.log_text()) or PROCESS_UP_RE.search(pf.stderr_text()):
                return True
            # "process up" comes once every listener (TCP, unix socket, metrics) is open and
            # the signal handlers are installed; the TCP port alone accepts earlier. Only a
            # quiet instance without a logfile leaves nothing else to watch.
            if (pf.port and not pf.logfile and "-q" in pf.cmd and
                    port_accepts(pf.port, pf.host, 0.2)):
                return True
            if not pf.is_running():
                return "exited"
            return False

        state = wait_for(ready, timeout)
        assert state is True, "pgfunnel not ready within %.0fs (%s)\ncommand: %s\n%s" % (
            timeout, "it exited with %r" % pf.returncode if state == "exited" else "no 'process up'",
            " ".join(pf.cmd), pf.all_output())

    def stop_all(self):
        """Stops every instance still running (PgFunnel.shutdown(): gracefully, SIGKILL only
        as a last resort). Returns the list of shutdown() complaints ([] when all exited)."""
        problems = []
        for pf in self.instances:
            problem = pf.shutdown()
            if problem:
                problems.append(problem)
        return problems

    def sanitizer_reports(self):
        """Report lines of every instance (sanitizer_reports()); read them after stop_all()
        and before cleanup(), which deletes the files they are in."""
        return [line for pf in self.instances for line in sanitizer_reports(pf)]

    def cleanup(self):
        """Stops what still runs (stop_all()), releases the ports, deletes every instance dir."""
        self.stop_all()
        for port in self.ports:
            release_port(port)
        for d in self.dirs:
            remove_tree(d)


def run_pgfunnel(args, timeout=10.0, cwd=None):
    """Run PGFUNNEL_BIN with args to completion; return CompletedProcess (text)."""
    return subprocess.run([pgfunnel_bin()] + list(args), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, cwd=cwd or "/")


# ---------------------------------------------------------------- proxy tests (issue 3)


def md5_secret(user, password):
    """An auth_file md5 secret: 'md5' + md5(password + user)."""
    import hashlib
    return "md5" + hashlib.md5((password + user).encode()).hexdigest()


def scram_secret(password, iterations=4096, salt=None):
    """An auth_file / pg_authid SCRAM-SHA-256 secret for password."""
    import base64
    import hashlib
    import hmac
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server = hmac.digest(salted, b"Server Key", "sha256")
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return "SCRAM-SHA-256$%d:%s$%s:%s" % (iterations, b64(salt), b64(stored), b64(server))


def new_role(cluster, prefix="pfr", password=None, md5=False):
    """CREATE ROLE with a unique name on cluster; return (name, plain password).

    Tests that count backends in pg_stat_activity use their own role, so
    nothing left over by other tests is counted.
    """
    name = "%s_%d_%d" % (prefix, os.getpid(), random.randrange(10 ** 9))
    password = password or "pw-" + name
    with cluster.connect(autocommit=True) as conn:
        if md5:
            conn.execute("SET password_encryption = 'md5'")
        conn.execute("CREATE ROLE %s LOGIN PASSWORD '%s'" % (name, password))
        conn.execute("GRANT ALL ON SCHEMA public TO %s" % name)
    with cluster.connect(dbname="appdb", autocommit=True) as conn:
        conn.execute("GRANT ALL ON SCHEMA public TO %s" % name)
    return name, password


def start_proxy(factory, cluster, params=None, databases=None, users=None, userlist=None, **kw):
    """pgfunnel in front of cluster: databases appdb and postgres, auth_type md5,
    admin_users postgres, auth_file with the cluster's plain passwords; params /
    databases / userlist are merged over those defaults (None drops a key)."""
    p = {"auth_type": "md5", "admin_users": "postgres"}
    p.update(params or {})
    d = {"appdb": cluster.db_entry("appdb"), "postgres": cluster.db_entry("postgres")}
    d.update(databases or {})
    d = {k: v for k, v in d.items() if v is not None}
    u = cluster.userlist()
    u.update(userlist or {})
    u = {k: v for k, v in u.items() if v is not None}
    return factory.start(params=p, databases=d, users=users, userlist=u, **kw)


def proxy_connect(pf, user, dbname, password, host=None, **kw):
    """psycopg.connect() through pgfunnel (TCP, or host=a directory for its unix socket)."""
    import psycopg
    info = "host=%s port=%d user=%s dbname=%s connect_timeout=5" % (
        host or pf.host, pf.port, user, dbname)
    if password is not None:
        info += " password='%s'" % password.replace("\\", "\\\\").replace("'", "\\'")
    return psycopg.connect(info, **kw)


def console(pf, sql, user="postgres", password="pg-super-secret", dbname="pgbouncer"):
    """Run one command on pgfunnel's admin console; return (column names, rows)."""
    with proxy_connect(pf, user, dbname, password, autocommit=True, prepare_threshold=None) as conn:
        cur = conn.execute(sql)
        cols = [d.name for d in cur.description] if cur.description else []
        return cols, cur.fetchall() if cur.description else []


def rows_as_dicts(cols, rows):
    return [dict(zip(cols, r)) for r in rows]


def show(pf, what, **kw):
    """SHOW what on pf's admin console, as a list of dicts (console()'s keyword arguments)."""
    return rows_as_dicts(*console(pf, "SHOW " + what, **kw))


def show_wire(pf, what, user="postgres", password="pg-super-secret", dbname="pgbouncer"):
    """SHOW what over pgwire (values as text): for tests whose process holds more than 1024
    descriptors, where libpq's select() cannot wait on a new socket."""
    import pgwire
    with pgwire.connect(pf.host, pf.port, user, dbname, password) as c:
        c.send_query("SHOW " + what)
        _, cols, rows = c.read_answer(10.0)
    return rows_as_dicts(cols, rows)


def find_pool(rows, database, user=None):
    """The row of database's pool for user among SHOW POOLS rows (dicts), or None when there
    is no such pool. user None: database must have at most one pool (AssertionError
    otherwise)."""
    rows = [r for r in rows if r["database"] == database and (user is None or r["user"] == user)]
    assert len(rows) <= 1, "several SHOW POOLS rows for %s/%s: %r" % (database, user, rows)
    return rows[0] if rows else None


def pool_row(pf, database, user=None, **kw):
    """find_pool() in SHOW POOLS, run now on a console connection of its own."""
    return find_pool(show(pf, "POOLS", **kw), database, user)


def pool_servers(row):
    """Number of server connections a SHOW POOLS row counts (every sv_ state)."""
    return sum(int(row[k]) for k in ("sv_active", "sv_idle", "sv_used", "sv_tested",
                                     "sv_login"))


def pool_wait_seconds(row):
    """How long the oldest waiting client of a SHOW POOLS row has waited (maxwait +
    maxwait_us), in seconds."""
    return int(row["maxwait"]) + int(row["maxwait_us"]) / 1e6


def wait_pool(pf, database, pred, what, user=None, timeout=10.0, **kw):
    """Poll SHOW POOLS until database's pool (for user) exists and pred(row) holds; return
    the row. Fails naming what, with the last row and SHOW SERVERS, at the deadline."""
    got = [None]

    def ok():
        got[0] = pool_row(pf, database, user, **kw)
        return got[0] if got[0] is not None and pred(got[0]) else None

    return wait_until(ok, timeout, what, lambda: "SHOW POOLS row of %s/%s: %r\nSHOW SERVERS: "
                      "%r" % (database, user, got[0], show(pf, "SERVERS", **kw)))


def wait_clients(pf, pred, what, timeout=10.0, **kw):
    """Poll SHOW CLIENTS until pred(rows) holds (rows: list of dicts); return the rows."""
    got = [None]

    def ok():
        got[0] = show(pf, "CLIENTS", **kw)
        return got[0] if pred(got[0]) else None

    return wait_until(ok, timeout, what, lambda: "SHOW CLIENTS: %r" % (got[0],))


def backend_count(cluster, where, args=()):
    """Number of client backends in pg_stat_activity matching the SQL condition where."""
    with cluster.connect(autocommit=True) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND "
            + where, args).fetchone()[0]


def wait_backends(cluster, where, args=(), what=None, count=1, timeout=10.0):
    """Wait until at least count client backends in pg_stat_activity match the SQL condition
    where (args are its parameters); return how many do."""
    return wait_until(lambda: (lambda n: n if n >= count else 0)(
        backend_count(cluster, where, args)), timeout,
        what or "%d backend(s) with %s %r" % (count, where, args),
        lambda: "pg_stat_activity: %r" % (activity(cluster),))


def wait_query_running(cluster, query, user=None, count=1, timeout=10.0):
    """Wait until count backends (of user, when given) run query, which must start the text
    of the statement exactly, with state 'active' (the query is executing on Postgres: a
    cancel now hits it); return how many do."""
    where = "state = 'active' AND starts_with(query, %s)"
    args = (query,)
    if user is not None:
        where += " AND usename = %s"
        args += (user,)
    return wait_backends(cluster, where, args, "%d backend(s)%s running %r" % (
        count, " of " + user if user else "", query), count, timeout)


def activity(cluster):
    """(usename, datname, state, query) of every client backend but our own."""
    with cluster.connect(autocommit=True) as conn:
        return conn.execute(
            "SELECT usename, datname, state, left(query, 80) FROM pg_stat_activity WHERE "
            "backend_type = 'client backend' AND pid <> pg_backend_pid()").fetchall()


# ---------------------------------------------------------------- robustness tests (issue 5)


def proc_rss_kib(pid):
    """VmRSS of pid in KiB (from /proc/PID/status), or None if it is gone."""
    for line in read_text("/proc/%d/status" % pid).splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


def proc_fd_count(pid):
    """Number of open file descriptors of pid (/proc/PID/fd), or None if it is gone."""
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return None


SANITIZER_RE = re.compile(r"ERROR: \w*Sanitizer|\bruntime error:|SUMMARY: \w*Sanitizer|"
                          r"Sanitizer has encountered a fatal error|"
                          r"ERROR: Can't open file: .*sanitizer")


def sanitizer_env(log_prefix, base=None):
    """A copy of the environment (base, default os.environ) whose ASAN_OPTIONS and UBSAN_OPTIONS
    send every sanitizer report to the file <log_prefix>.<pid> (log_path), instead of stderr
    where a report is easily lost among other output. Options given last win."""
    env = dict(os.environ if base is None else base)
    for var in ("ASAN_OPTIONS", "UBSAN_OPTIONS"):
        opts = env.get(var, "")
        env[var] = (opts + ":" if opts else "") + "log_path=" + log_prefix
    return env


def sanitizer_reports(pf):
    """pf's sanitizer reports ([] if none): the whole text of each report file its processes
    wrote (PgFunnel.sanitizer_files()), then the lines of its stderr / log that look like one."""
    out = []
    for path in pf.sanitizer_files():
        text = read_text(path).strip()
        out.append("--- %s:" % path)
        out.extend(text.splitlines() if text else ["(empty report file)"])
    text = pf.stderr_text() + "\n" + (read_text(pf.logfile) if pf.logfile else "")
    out.extend(line for line in text.splitlines() if SANITIZER_RE.search(line))
    return out


def pg_ctl(cluster, *args, timeout=90):
    """Run pg_ctl -D <datadir> args... as the cluster's user; return CompletedProcess."""
    return cluster._run([os.path.join(cluster.bindir, "pg_ctl"), "-D", cluster.datadir] +
                        list(args), timeout=timeout)


def restart_cluster(cluster, mode="fast"):
    """pg_ctl restart -m mode, waiting until it accepts connections again."""
    res = pg_ctl(cluster, "-l", cluster.logfile, "-m", mode, "-w", "-t", "60", "restart")
    assert res.returncode == 0, "pg_ctl restart failed:\n%s\n%s\n%s" % (
        res.stdout, res.stderr, read_text(cluster.logfile)[-3000:])


def start_dedicated_cluster(extra_conf=""):
    """A new PgCluster (like the session fixture's) with extra postgresql.conf lines applied
    (by a restart after the normal start). The caller must destroy() it."""
    cluster = PgCluster()
    try:
        cluster.start()
        if extra_conf:
            with open(os.path.join(cluster.datadir, "postgresql.conf"), "a",
                      encoding="utf-8") as f:
                f.write("\n# dedicated cluster\n" + extra_conf + "\n")
            restart_cluster(cluster)
    except BaseException:
        cluster.destroy()
        raise
    return cluster


class Canary:
    """A well-behaved client: a psycopg connection through pgfunnel running `SELECT n` in a
    background thread every interval seconds, recording every failure.

        with Canary(pf, user, dbname, password) as canary:
            ... hostile things ...
            canary.expect_progress()     # at least one more good query since the last call
        canary.check()                   # no failures at all, and it ran queries throughout
    """

    def __init__(self, pf, user, dbname, password, interval=0.02):
        import threading
        self.pf = pf
        self.args = (user, dbname, password)
        self.interval = interval
        self.ok = 0
        self.errors = []
        self.max_latency = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._mark = 0

    def start(self):
        self.conn = proxy_connect(self.pf, *self.args, autocommit=True)
        self._query()  # before
        self._thread.start()
        return self

    def _query(self):
        n = self.ok + 1
        t0 = time.monotonic()
        got = self.conn.execute("SELECT %d" % n).fetchone()
        dt = time.monotonic() - t0
        self.max_latency = max(self.max_latency, dt)
        if got != (n,):
            raise AssertionError("canary got %r for SELECT %d" % (got, n))
        self.ok += 1

    def _run(self):
        while not self._stop.is_set():
            try:
                self._query()
            except Exception as e:  # noqa: BLE001 - recorded and asserted by check()
                self.errors.append("%.3f %r" % (time.monotonic(), e))
                if self.conn.closed:
                    return
                self._stop.wait(0.2)
            self._stop.wait(self.interval)

    def expect_progress(self, timeout=5.0):
        """Assert the canary completed a query since the previous call (waits up to timeout)."""
        mark = self._mark
        assert wait_for(lambda: self.ok > mark or self.errors, timeout), (
            "canary made no progress for %.0fs (stuck at %d queries)" % (timeout, self.ok))
        assert not self.errors, "canary failed: %s" % self.errors
        self._mark = self.ok

    def stop(self):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def check(self, min_queries=1, max_latency=2.0):
        """Stop; assert no failures, >= min_queries queries, none slower than max_latency,
        and one more query after the stop (the connection still works)."""
        self.stop()
        assert not self._thread.is_alive(), "canary thread stuck in a query"
        assert not self.errors, "canary failed: %s" % self.errors
        assert self.ok >= min_queries, "canary ran only %d queries" % self.ok
        assert self.max_latency <= max_latency, "a canary query took %.2fs" % self.max_latency
        self._query()  # after
        self.conn.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001
            pass


class FakeServer:
    """A TCP listener on 127.0.0.1 that plays a broken Postgres server in a thread.

    behaviour "silent": accept and never answer (the connection stays open until stop());
    "close": accept and close at once. accepts counts accepted connections; times holds
    their time.monotonic().
    """

    def __init__(self, behaviour="silent"):
        import threading
        self.behaviour = behaviour
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.port = alloc_port()
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.accepts = 0
        self.times = []
        self.held = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepts += 1
            self.times.append(time.monotonic())
            self._accepted(conn)

    def _accepted(self, conn):
        if self.behaviour == "close":
            conn.close()
        else:
            self.held.append(conn)

    def _stopped(self):
        for c in self.held:
            c.close()

    def stop(self):
        self._stop.set()
        self._thread.join(5)
        self._stopped()
        self.sock.close()
        release_port(self.port)


# ---------------------------------------------------------------- hardening tests (wip-h2)


_WIRE_CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import pgwire
host, port, user, dbname, sql = sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
out = {}
try:
    conn = pgwire.connect(host, port, user, dbname, None, timeout=5.0)
except pgwire.PgError as e:
    out = {"login": False, "sqlstate": e.sqlstate, "message": e.message}
except Exception as e:  # noqa: BLE001 - reported to the test
    out = {"login": False, "error": repr(e)}
else:
    out = {"login": True, "auth_methods": conn.auth_methods}
    try:
        out["rows"] = conn.simple_query(sql) if sql else []
    except pgwire.PgError as e:
        out.update(sqlstate=e.sqlstate, message=e.message)
    conn.close()
print(json.dumps(out))
"""


def wire_as_run_user(host, port, user, dbname, sql="", timeout=15.0):
    """Log in with pgwire (no password) from a child process running as RUN_USER (the OS user
    pgfunnel runs as under -u), then run sql; host may be a unix socket directory. Returns a
    dict: login (bool), and sqlstate/message of a refusal or error, rows of the query."""
    import json
    here = os.path.dirname(os.path.abspath(__file__))
    cmd = as_run_user(["/usr/bin/python3", "-c", _WIRE_CHILD, here, host, str(port), user,
                       dbname, sql])
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL, cwd="/")
    assert res.returncode == 0, "child failed: %s %s" % (res.stdout, res.stderr)
    return json.loads(res.stdout)


# ---------------------------------------------------------------- scripted fake servers (h1)


class FakePeer:
    """pgfunnel's server connection as a ScriptedServer script sees it: blocking helpers to read
    its startup and messages and to send Postgres backend messages (raw bytes, so a script may
    break the protocol on purpose)."""

    def __init__(self, sock):
        import struct
        self._struct = struct
        self.sock = sock
        self.sock.settimeout(10)
        self._buf = b""

    def _read(self, n):
        while len(self._buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("pgfunnel closed the connection")
            self._buf += chunk
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def read_startup(self):
        """The StartupMessage's parameters (an SSLRequest first is answered 'N')."""
        while True:
            (n,) = self._struct.unpack("!I", self._read(4))
            body = self._read(n - 4)
            (code,) = self._struct.unpack("!I", body[:4])
            if code == 80877103:  # SSLRequest
                self.sock.sendall(b"N")
                continue
            parts = body[4:].split(b"\0")
            return {parts[i].decode(): parts[i + 1].decode() for i in range(0, len(parts) - 2, 2)}

    def read_message(self):
        """(type as str, payload bytes) of the next frontend message."""
        kind = self._read(1)
        (n,) = self._struct.unpack("!I", self._read(4))
        return kind.decode(), self._read(n - 4)

    def send(self, kind, payload=b""):
        self.sock.sendall(self.message(kind, payload))

    def message(self, kind, payload=b""):
        return kind.encode() + self._struct.pack("!I", len(payload) + 4) + payload

    def auth(self, code, rest=b""):
        """An Authentication message (R) with this subtype code."""
        self.send("R", self._struct.pack("!I", code) + rest)

    def finish_login(self, params=(("server_version", "15.0"),), status=b"I"):
        """ParameterStatus for each (name, value), BackendKeyData, ReadyForQuery."""
        out = b"".join(self.message("S", n.encode() + b"\0" + v.encode() + b"\0")
                       for n, v in params)
        out += self.message("K", self._struct.pack("!II", 4242, 1234))
        out += self.message("Z", status)
        self.sock.sendall(out)

    def error(self, sqlstate, text):
        self.send("E", b"SFATAL\0C" + sqlstate.encode() + b"\0M" + text.encode() + b"\0\0")

    # SCRAM-SHA-256, the server side as Postgres speaks it (no channel binding).

    def sasl_start(self):
        """AuthenticationSASL offering SCRAM-SHA-256; returns the client-first-message."""
        self.auth(10, b"SCRAM-SHA-256\0\0")
        kind, payload = self.read_message()
        assert kind == "p", "expected SASLInitialResponse, got %r" % kind
        mech, rest = payload.split(b"\0", 1)
        assert mech == b"SCRAM-SHA-256", mech
        (n,) = self._struct.unpack("!i", rest[:4])
        self.client_first = rest[4:4 + n].decode()
        self.client_first_bare = self.client_first.split(",", 2)[2]
        self.client_nonce = dict(a.split("=", 1)
                                 for a in self.client_first_bare.split(","))["r"]
        return self.client_first

    def sasl_continue(self, iterations=4096, salt=b"pgfunnel-h1-salt"):
        """AuthenticationSASLContinue with a server-first-message extending the client nonce."""
        import base64
        self.salt, self.iterations = salt, iterations
        self.nonce = self.client_nonce + "fakeServerNonce"
        self.server_first = "r=%s,s=%s,i=%d" % (self.nonce, base64.b64encode(salt).decode(),
                                                 iterations)
        self.auth(11, self.server_first.encode())

    def read_sasl_response(self):
        kind, payload = self.read_message()
        assert kind == "p", "expected SASLResponse, got %r" % kind
        self.client_final = payload.decode()
        return self.client_final

    def sasl_final(self, password):
        """AuthenticationSASLFinal with the right server signature for password."""
        import base64
        import hashlib
        import hmac
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), self.salt, self.iterations)
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        without_proof = self.client_final.rsplit(",p=", 1)[0]
        msg = ",".join([self.client_first_bare, self.server_first, without_proof]).encode()
        sig = base64.b64encode(hmac.digest(server_key, msg, "sha256")).decode()
        self.auth(12, ("v=" + sig).encode())

    def wait_closed(self, timeout=10):
        """Read until pgfunnel closes the connection; True if it did within timeout."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
            return True
        except socket.timeout:
            return False
        except OSError:
            return True


class ScriptedServer(FakeServer):
    """A TCP listener on 127.0.0.1 that plays a deliberately misbehaving Postgres: every
    accepted connection runs script(peer) in its own thread, peer being a FakePeer. The
    connection is closed when the script returns. accepts counts connections; errors holds
    the exceptions scripts raised (EOF when pgfunnel hangs up is not one); results what the
    scripts returned."""

    def __init__(self, script):
        self.script = script
        self.errors = []
        self.results = []
        self._threads = []
        super().__init__(behaviour="script")

    def _accepted(self, conn):
        import threading
        t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
        self._threads.append(t)
        t.start()

    def _serve(self, conn):
        try:
            self.results.append(self.script(FakePeer(conn)))
        except (EOFError, ConnectionError):
            pass
        except Exception as e:  # noqa: BLE001 - reported by the test through .errors
            self.errors.append(repr(e))
        finally:
            conn.close()

    def db_entry(self, **extra):
        """A [databases] value pointing at this fake server."""
        parts = ["host=127.0.0.1", "port=%d" % self.port, "dbname=fake"]
        parts += ["%s=%s" % kv for kv in extra.items()]
        return " ".join(parts)

    def _stopped(self):
        for t in self._threads:
            t.join(5)


def proc_cpu_seconds(pid):
    """User + system CPU time pid has used so far, in seconds (from /proc/PID/stat)."""
    text = read_text("/proc/%d/stat" % pid)
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
