"""Process life cycle: start, listeners, log format, signals, reload, daemon mode."""

import hashlib
import os
import re
import signal

import pytest

import pfhelpers

RELOAD_RE = r"(?i)reload|re-reading"


def check_up_line(pf, version):
    """The 'process up' line has PgBouncer's format, our PID and our version."""
    ups = [rec for rec in pf.log_lines() if rec["msg"].startswith("process up: ")]
    assert len(ups) == 1, "expected one 'process up' line:\n" + pf.all_output()
    rec = ups[0]
    assert rec["level"] == "LOG"
    assert rec["pid"] == pf.pid, rec["line"]
    assert rec["msg"].startswith("process up: pgfunnel %s" % version), rec["line"]


def test_start_and_sigint(pgfunnel, version):
    pf = pgfunnel.start()
    pf.wait_for_log(r"process up: ")
    check_up_line(pf, version)
    assert pfhelpers.port_accepts(pf.port)
    assert pfhelpers.is_socket(pf.socket_path), "no unix socket %s" % pf.socket_path
    assert pfhelpers.read_text(pf.pidfile).strip() == str(pf.pid)
    # Logging also goes to stderr unless -q.
    assert "process up: " in pf.stderr_text()

    pf.stop(signal.SIGINT)
    assert re.search(r"(?i)shutting down", pf.log_text()), pf.all_output()
    assert not os.path.exists(pf.socket_path), "unix socket left behind"
    assert not os.path.exists(pf.pidfile), "pidfile left behind"
    assert not pfhelpers.port_accepts(pf.port)


def test_quiet_keeps_stderr_empty(pgfunnel):
    pf = pgfunnel.start(args=["-q"])
    pf.wait_for_log(r"process up: ")
    pf.stop()
    assert pf.stderr_text() == ""


def test_pgfunnel_section_alias(pgfunnel, version):
    pf = pgfunnel.start(section="pgfunnel")
    pf.wait_for_log(r"process up: ")
    assert pfhelpers.port_accepts(pf.port)
    pf.stop()


def test_no_unix_socket_when_dir_empty(pgfunnel):
    pf = pgfunnel.start({"unix_socket_dir": ""})
    pf.wait_for_log(r"process up: ")
    assert not [n for n in os.listdir(pf.dir) if n.startswith(".s.PGSQL")]
    pf.stop()


def shipped_socket_dir(path):
    """unix_socket_dir of the shipped ini (it names the systemd RuntimeDirectory)."""
    for line in pfhelpers.read_text(path).splitlines():
        m = re.match(r"\s*unix_socket_dir\s*=\s*(\S*)", line)
        if m:
            return m.group(1)
    return None


def test_shipped_config_verbatim(pgfunnel, source_root, new_port):
    """etc/pgfunnel.ini runs as shipped; only its listen_port is moved to a free port (so the
    test never depends on 6432 being free), in a copy that differs from it in that line alone."""
    path = os.path.join(source_root, "etc", "pgfunnel.ini")
    text = pfhelpers.read_text(path)
    assert text.strip(), "etc/pgfunnel.ini is empty"
    port = new_port()
    copy_text, n = re.subn(r"(?m)^listen_port[ \t]*=[ \t]*6432[ \t]*$",
                           "listen_port = %d" % port, text)
    assert n == 1, "etc/pgfunnel.ini must set listen_port = 6432 exactly once (found %d)" % n
    changed = [(a, b) for a, b in zip(text.splitlines(), copy_text.splitlines()) if a != b]
    assert changed == [("listen_port = 6432", "listen_port = %d" % port)], changed
    workdir = pfhelpers.make_tempdir("pgfunnel-shipped.")
    made_dir = None
    try:
        copy = os.path.join(workdir, "pgfunnel.ini")
        pfhelpers.write_file(copy, copy_text)
        # The sample expects the directory systemd's RuntimeDirectory= creates.
        sockdir = shipped_socket_dir(path)
        if sockdir and not os.path.isdir(sockdir):
            if not pfhelpers.is_root():
                pytest.skip("%s does not exist and we are not root" % sockdir)
            os.makedirs(sockdir, 0o755)
            pfhelpers.chown_run_user(sockdir)
            made_dir = sockdir
        pf = pgfunnel.start(config_path=copy, port=port, params={"unix_socket_dir": sockdir})
        assert pfhelpers.port_accepts(port)
        if sockdir:
            assert pfhelpers.is_socket(os.path.join(sockdir, ".s.PGSQL.%d" % port))
        pf.stop(signal.SIGINT)
        assert not pfhelpers.port_accepts(port)
        if sockdir:
            assert not os.path.exists(os.path.join(sockdir, ".s.PGSQL.%d" % port))
    finally:
        if made_dir:
            pfhelpers.remove_tree(made_dir)
        pfhelpers.remove_tree(workdir)


def test_sigterm_exits_0(pgfunnel):
    pf = pgfunnel.start()
    pf.stop(signal.SIGTERM)
    assert not os.path.exists(pf.socket_path)
    assert not os.path.exists(pf.pidfile)


def test_sigquit_exits_immediately(pgfunnel):
    pf = pgfunnel.start()
    pf.signal(signal.SIGQUIT)
    rc = pf.wait(10)
    assert rc == 0, "exit %r\n%s" % (rc, pf.all_output())


def show_config(pf):
    return {r["key"]: r["value"] for r in pfhelpers.show(pf, "CONFIG")}


# Lets pfhelpers.console() in: the admin user postgres with its plain password.
CONSOLE = {"params": {"auth_type": "md5", "admin_users": "postgres"},
           "userlist": {"postgres": "pg-super-secret"}}


def test_sighup_reload_valid(pgfunnel):
    pf = pgfunnel.start(dict(CONSOLE["params"], default_pool_size=10),
                        databases={"appdb": "host=127.0.0.1 dbname=appdb"},
                        userlist=CONSOLE["userlist"])
    pf.wait_for_log(r"process up: ")
    assert show_config(pf)["default_pool_size"] == "10"
    n = pf.log_len()
    pf.params["default_pool_size"] = 30
    pf.databases["otherdb"] = "host=127.0.0.1 dbname=otherdb"
    pf.write_ini()
    pf.signal(signal.SIGHUP)
    pf.wait_for_log(RELOAD_RE, after=n)
    # The reload took both changes.
    assert show_config(pf)["default_pool_size"] == "30"
    dbs = {r["name"]: r for r in pfhelpers.show(pf, "DATABASES")}
    assert "otherdb" in dbs and dbs["otherdb"]["database"] == "otherdb", dbs
    assert dbs["appdb"]["pool_size"] == 30, dbs["appdb"]
    assert pf.is_running(), pf.all_output()
    bad = [r["line"] for r in pf.log_lines() if r["level"] in ("ERROR", "FATAL")]
    assert not bad, pf.all_output()
    assert pfhelpers.port_accepts(pf.port)
    pf.stop()


def test_sighup_restart_only_change_is_refused_by_name(proxy, postgres, new_port):
    # listen_port needs a restart: the reload keeps the running value (SHOW CONFIG says so),
    # names the parameter in a warning, and applies the reloadable change next to it.
    pf = proxy(params={"default_pool_size": 10})
    n = pf.log_len()
    old_port = pf.port
    pf.params["listen_port"] = new_port()
    pf.params["default_pool_size"] = 12
    pf.write_ini()
    pf.signal(signal.SIGHUP)
    line = pf.wait_for_log(r"WARNING .*listen_port", after=n)
    assert "cannot be changed without a restart" in line, line
    pf.wait_for_log(r"config reloaded", after=n)
    cols, rows = pfhelpers.console(pf, "SHOW CONFIG")
    config = {r["key"]: r["value"] for r in pfhelpers.rows_as_dicts(cols, rows)}
    assert config["listen_port"] == str(old_port)
    assert config["default_pool_size"] == "12"
    assert pfhelpers.port_accepts(old_port)
    pf.stop()


def test_sighup_reload_broken_keeps_running(pgfunnel):
    pf = pgfunnel.start(dict(CONSOLE["params"], pool_mode="transaction"),
                        userlist=CONSOLE["userlist"])
    pf.wait_for_log(r"process up: ")
    n = pf.log_len()
    pf.params["pool_mode"] = "bogus"
    pf.write_ini()
    pf.signal(signal.SIGHUP)
    line = pf.wait_for_log(r"\b(ERROR|WARNING)\b.*pool_mode", after=n)
    assert "bogus" in line, line
    # The running configuration is kept, and the process with it.
    assert show_config(pf)["pool_mode"] == "transaction"
    assert pf.is_running(), "exited after a bad reload\n" + pf.all_output()
    assert pfhelpers.port_accepts(pf.port)
    assert pfhelpers.is_socket(pf.socket_path)

    # A later good file still reloads.
    n = pf.log_len()
    pf.params["pool_mode"] = "session"
    pf.write_ini()
    pf.signal(signal.SIGHUP)
    pf.wait_for_log(RELOAD_RE, after=n)
    assert show_config(pf)["pool_mode"] == "session"
    pf.stop()


def test_sighup_reopens_logfile(pgfunnel):
    """logrotate's pattern: move the file away, SIGHUP, the new file gets the next lines."""
    pf = pgfunnel.start()
    pf.wait_for_log(r"process up: ")
    rotated = pf.logfile + ".1"
    os.rename(pf.logfile, rotated)
    pf.signal(signal.SIGHUP)
    ok = pfhelpers.wait_for(lambda: re.search(RELOAD_RE, pfhelpers.read_text(pf.logfile)), 10)
    assert ok, "nothing logged to a fresh %s after SIGHUP\n%s" % (pf.logfile, pf.all_output())
    assert "process up: " in pfhelpers.read_text(rotated)
    pf.stop()


def test_daemon(pgfunnel, version):
    pf = pgfunnel.start(daemon=True)
    assert pf.pid != pf.proc.pid
    assert pf.proc.returncode == 0
    assert pfhelpers.pid_alive(pf.pid)
    pf.wait_for_log(r"process up: ")
    check_up_line(pf, version)
    assert pfhelpers.port_accepts(pf.port)
    assert pfhelpers.is_socket(pf.socket_path)

    pf.stop(signal.SIGINT)
    assert not pfhelpers.pid_alive(pf.pid)
    assert pfhelpers.wait_for(lambda: not os.path.exists(pf.pidfile), 5), "pidfile left behind"
    assert not os.path.exists(pf.socket_path)
    assert re.search(r"(?i)shutting down", pf.log_text()), pf.all_output()


def test_daemon_without_logfile_refused(pgfunnel):
    pf = pgfunnel.start({"logfile": None}, daemon=False, args=["-d"], wait=False)
    rc = pf.wait(10)
    out = pf.stderr_text()
    assert rc == 1, "exit %r\n%s" % (rc, out)
    assert len(out.splitlines()) == 1, "expected one line:\n%s" % out
    assert not os.path.exists(pf.pidfile)
    assert not pfhelpers.port_accepts(pf.port)


DEBIAN_OVERRIDES = ("logfile", "pidfile", "listen_port", "unix_socket_dir", "auth_file")


def test_debian_config_loads(pgfunnel, source_root, tmpdir_user, new_port):
    src = os.path.join(source_root, "tests", "unit", "data", "debian-pgbouncer.ini")
    if not os.path.exists(src):
        pytest.skip("tests/unit/data/debian-pgbouncer.ini not there yet")
    port = new_port()
    values = {
        "logfile": os.path.join(tmpdir_user, "pgbouncer.log"),
        "pidfile": os.path.join(tmpdir_user, "pgbouncer.pid"),
        "listen_port": str(port),
        "unix_socket_dir": tmpdir_user,
        "auth_file": os.path.join(tmpdir_user, "userlist.txt"),
    }
    seen = set()
    out = []
    for line in pfhelpers.read_text(src).splitlines():
        m = re.match(r"\s*(\w+)\s*=", line)
        if m and m.group(1) in values:
            seen.add(m.group(1))
            line = "%s = %s" % (m.group(1), values[m.group(1)])
        out.append(line)
    assert seen == set(DEBIAN_OVERRIDES), "Debian file lacks %s" % (set(DEBIAN_OVERRIDES) - seen)
    path = os.path.join(tmpdir_user, "pgbouncer.ini")
    pfhelpers.write_file(path, "\n".join(out) + "\n")
    secret = "md5" + hashlib.md5(b"some-password" + b"someuser").hexdigest()
    pfhelpers.write_file(values["auth_file"], '"someuser" "%s"\n' % secret)

    pf = pgfunnel.start(config_path=path, port=port,
                        params={"logfile": values["logfile"], "pidfile": values["pidfile"],
                                "unix_socket_dir": tmpdir_user})
    pf.wait_for_log(r"process up: ")
    complaints = [r["line"] for r in pf.log_lines() if r["level"] in ("WARNING", "ERROR", "FATAL")]
    assert not complaints, "stock Debian config produced complaints:\n" + pf.all_output()
    pf.stop(signal.SIGINT)
    assert not os.path.exists(values["pidfile"])


def test_fd_limit_raised_and_logged(pgfunnel):
    # The soft RLIMIT_NOFILE is raised to the hard limit and the capacity logged; a
    # max_client_conn beyond that capacity is warned about.
    pf = pgfunnel.start({"max_client_conn": "100"})
    pf.wait_for_log(r"process up: ")
    soft, hard = read_nofile(pf.pid)
    assert soft == hard, "soft limit %s not raised to the hard limit %s" % (soft, hard)
    line = [r for r in pf.log_lines() if "file descriptor limit" in r["msg"]]
    assert line and line[0]["level"] == "LOG", pf.all_output()
    assert "max_client_conn=100" in line[0]["msg"]
    pf.stop()

    big = pgfunnel.start({"max_client_conn": str(10 ** 8)})
    big.wait_for_log(r"process up: ")
    warn = [r for r in big.log_lines() if "file descriptor limit" in r["msg"]]
    assert warn and warn[0]["level"] == "WARNING", big.all_output()
    assert "less than max_client_conn=100000000" in warn[0]["msg"]
    big.stop()


def read_nofile(pid):
    """(soft, hard) 'Max open files' of a running process from /proc."""
    for line in pfhelpers.read_text("/proc/%d/limits" % pid).splitlines():
        if line.startswith("Max open files"):
            parts = line.split()
            return parts[3], parts[4]
    raise AssertionError("no Max open files line for pid %d" % pid)
