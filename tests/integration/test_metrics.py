"""The Prometheus endpoint (metrics_port / metrics_addr; pgfunnel's own, off by default).

A strict little parser checks the exposition format (HELP and TYPE before each family's samples,
label syntax and escapes, histograms cumulative and ending in +Inf == _count); values are checked
against SHOW POOLS / SHOW STATS_TOTALS read between two scrapes with no traffic in between, and
counter deltas against exactly known traffic sent with the raw wire client.
"""

import os
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pfhelpers
import pgwire

# ---------------------------------------------------------------- exposition parser

NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


class ParseError(AssertionError):
    pass


def parse_labels(text, lineno):
    """'a="x",b="y\\"z"' -> {'a': 'x', 'b': 'y"z'} (strict: quotes, escapes, commas)."""
    labels, i = {}, 0
    while i < len(text):
        m = LABEL_NAME_RE.match(text, i)
        if not m:
            raise ParseError("line %d: bad label name at %r" % (lineno, text[i:]))
        name = m.group(0)
        i = m.end()
        if text[i:i + 2] != '="':
            raise ParseError("line %d: expected =\" after %s" % (lineno, name))
        i += 2
        value = []
        while True:
            if i >= len(text):
                raise ParseError("line %d: unterminated label value" % lineno)
            c = text[i]
            if c == "\\":
                nxt = text[i + 1:i + 2]
                if nxt not in ("\\", '"', "n"):
                    raise ParseError("line %d: bad escape \\%s" % (lineno, nxt))
                value.append("\n" if nxt == "n" else nxt)
                i += 2
            elif c == '"':
                i += 1
                break
            elif c == "\n":
                raise ParseError("line %d: raw newline in label value" % lineno)
            else:
                value.append(c)
                i += 1
        if name in labels:
            raise ParseError("line %d: label %s twice" % (lineno, name))
        labels[name] = "".join(value)
        if i < len(text):
            if text[i] != ",":
                raise ParseError("line %d: expected , at %r" % (lineno, text[i:]))
            i += 1
    return labels


def parse_value(text, lineno):
    if text in ("+Inf", "-Inf", "NaN"):
        return float(text)
    if not re.fullmatch(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?", text):
        raise ParseError("line %d: bad value %r" % (lineno, text))
    return float(text)


def parse_exposition(body):
    """Text format 0.0.4 -> {family: {'type', 'help', 'samples': [(name, labels, value)]}}."""
    assert body.endswith("\n"), "exposition does not end with a newline"
    families, current = {}, None
    seen_samples = set()
    for lineno, line in enumerate(body[:-1].split("\n"), 1):
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            if not NAME_RE.fullmatch(name):
                raise ParseError("line %d: bad family name %r" % (lineno, name))
            if name in families:
                raise ParseError("line %d: family %s appears twice" % (lineno, name))
            if re.search(r"\\[^\\n]", help_text.replace("\\\\", "")):
                raise ParseError("line %d: bad escape in HELP" % lineno)
            current = {"name": name, "help": help_text, "type": None, "samples": []}
            families[name] = current
            continue
        if line.startswith("# TYPE "):
            name, _, typ = line[7:].partition(" ")
            if current is None or name != current["name"] or current["type"] or current["samples"]:
                raise ParseError("line %d: TYPE %s not right after its HELP" % (lineno, name))
            if typ not in TYPES:
                raise ParseError("line %d: bad type %r" % (lineno, typ))
            current["type"] = typ
            continue
        if line.startswith("#") or not line:
            raise ParseError("line %d: unexpected line %r" % (lineno, line))
        m = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)", line)
        if not m:
            raise ParseError("line %d: bad sample line %r" % (lineno, line))
        name, labels_text, value_text = m.groups()
        if current is None or current["type"] is None:
            raise ParseError("line %d: sample %s before HELP/TYPE" % (lineno, name))
        allowed = {current["name"]}
        if current["type"] == "histogram":
            allowed = {current["name"] + s for s in ("_bucket", "_sum", "_count")}
        if name not in allowed:
            raise ParseError("line %d: sample %s outside its family %s" % (
                lineno, name, current["name"]))
        labels = parse_labels(labels_text, lineno) if labels_text else {}
        key = (name, tuple(sorted(labels.items())))
        if key in seen_samples:
            raise ParseError("line %d: duplicate sample %r" % (lineno, key))
        seen_samples.add(key)
        current["samples"].append((name, labels, parse_value(value_text, lineno)))
    for fam in families.values():
        if fam["type"] == "counter":
            assert fam["name"].endswith("_total"), fam["name"]
            for _, _, v in fam["samples"]:
                assert v >= 0, fam["name"]
        if fam["type"] == "histogram":
            check_histogram(fam)
    return families


def check_histogram(fam):
    series = {}
    for name, labels, value in fam["samples"]:
        rest = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        s = series.setdefault(rest, {"buckets": [], "sum": None, "count": None})
        if name.endswith("_bucket"):
            assert "le" in labels, "bucket without le in %s" % fam["name"]
            s["buckets"].append((parse_value(labels["le"], 0), value))
        elif name.endswith("_sum"):
            s["sum"] = value
        else:
            s["count"] = value
    for rest, s in series.items():
        b = s["buckets"]
        assert b and s["sum"] is not None and s["count"] is not None, (fam["name"], rest)
        les = [le for le, _ in b]
        assert les == sorted(les) and len(set(les)) == len(les), (fam["name"], rest, les)
        assert les[-1] == float("inf"), (fam["name"], rest)
        counts = [c for _, c in b]
        assert counts == sorted(counts), "buckets not cumulative: %r" % (counts,)
        assert counts[-1] == s["count"], "+Inf bucket %r != _count %r" % (counts[-1], s["count"])
        assert s["sum"] >= 0


def value(fams, family, sample=None, **labels):
    """The value of the one sample of family matching labels (sample: full sample name)."""
    fam = fams[family]
    found = [v for n, l, v in fam["samples"]
             if (sample or family) == n and all(l.get(k) == str(x) for k, x in labels.items())]
    assert len(found) == 1, "%s%r: %d samples" % (sample or family, labels, len(found))
    return found[0]


# ---------------------------------------------------------------- HTTP helpers


def http(port, path="/metrics", method="GET", timeout=5.0):
    """(status, headers dict (lower-case names), body text) of one request."""
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read().decode()


def scrape(port):
    status, headers, body = http(port)
    assert status == 200, (status, body)
    assert headers["content-type"].startswith("text/plain; version=0.0.4"), headers
    assert int(headers["content-length"]) == len(body.encode())
    return parse_exposition(body)


def raw_request(port, data, timeout=10.0):
    """Send raw bytes, read until the server closes; return (bytes read, seconds taken)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    t0 = time.monotonic()
    try:
        if data:
            s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out, time.monotonic() - t0
    finally:
        s.close()


def listening_tcp_ports(pid):
    """TCP ports pid listens on (from its socket inodes and /proc/<pid>/net/tcp{,6})."""
    inodes = set()
    fd_dir = "/proc/%d/fd" % pid
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        m = re.fullmatch(r"socket:\[(\d+)\]", target)
        if m:
            inodes.add(m.group(1))
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = open("/proc/%d/net/%s" % (pid, table), encoding="ascii").read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


def start(proxy, new_port, userlist=None, **params):
    mport = new_port()
    p = {"metrics_port": mport}
    p.update(params)
    pf = proxy(params=p, userlist=userlist)
    pf.metrics_port = mport
    # The harness may see the main port accept before the metrics listener is open.
    pf.wait_for_log(r"LOG metrics endpoint on ", timeout=5)
    return pf


def wire(pf, postgres, user="alice", dbname="appdb"):
    return pgwire.connect(pf.host, pf.port, user, dbname, password=postgres.passwords[user])


class Counted:
    """A raw wire connection that counts the bytes it sends and receives after login."""

    def __init__(self, conn):
        self.conn = conn
        self.sent = 0
        self.received = 0

    def query(self, sql):
        msg = pgwire.message(b"Q", sql.encode() + b"\0")
        self.conn.send(msg)
        self.sent += len(msg)
        error = None
        while True:
            kind, payload = self.conn.read_message()
            self.received += 5 + len(payload)
            if kind == "E":
                error = pgwire.parse_fields(payload)
            if kind == "Z":
                return error


# ---------------------------------------------------------------- tests


def test_off_by_default(proxy):
    pf = proxy()
    assert listening_tcp_ports(pf.pid) == {pf.port}
    assert "metrics endpoint" not in pf.log_text()
    cols, rows = pfhelpers.console(pf, "SHOW CONFIG")
    cfg = {r[0]: r for r in rows}
    assert cfg["metrics_port"][1:] == ("0", "0", "no")
    assert cfg["metrics_addr"][1:] == ("127.0.0.1", "127.0.0.1", "no")


def test_scrape_basics(proxy, new_port, version):
    pf = start(proxy, new_port)
    assert listening_tcp_ports(pf.pid) == {pf.port, pf.metrics_port}
    pf.wait_for_log(r"LOG metrics endpoint on http://127\.0\.0\.1:%d/metrics$" % pf.metrics_port)
    fams = scrape(pf.metrics_port)
    assert value(fams, "pgfunnel_up") == 1
    assert fams["pgfunnel_up"]["type"] == "gauge"
    assert value(fams, "pgfunnel_build_info", version=version) == 1
    start_time = value(fams, "process_start_time_seconds")
    assert time.time() - 60 < start_time <= time.time()
    assert value(fams, "pgfunnel_clients") == 0
    for fam in ("pgfunnel_pool_clients", "pgfunnel_pool_servers", "pgfunnel_pool_max_wait_seconds",
                "pgfunnel_pool_errors_total", "pgfunnel_pool_wait_seconds",
                "pgfunnel_database_transactions_total", "pgfunnel_database_queries_total",
                "pgfunnel_database_received_bytes_total", "pgfunnel_database_sent_bytes_total",
                "pgfunnel_database_transaction_seconds_total",
                "pgfunnel_database_query_seconds_total", "pgfunnel_database_wait_seconds_total",
                "pgfunnel_database_server_assignments_total"):
        assert fam in fams, fam
    assert fams["pgfunnel_pool_wait_seconds"]["type"] == "histogram"
    assert fams["pgfunnel_database_queries_total"]["type"] == "counter"
    # Every configured database has its counters from the start.
    for db in ("appdb", "postgres"):
        assert value(fams, "pgfunnel_database_queries_total", database=db) == 0

    # HEAD: the same headers, no body.
    status, headers, body = http(pf.metrics_port, method="HEAD")
    assert status == 200 and body == ""
    assert int(headers["content-length"]) > 1000
    assert headers["connection"] == "close"


def test_http_errors_and_limits(proxy, new_port):
    pf = start(proxy, new_port)
    port = pf.metrics_port
    for path in ("/", "/metricsx", "/metrics/", "/favicon.ico"):
        status, headers, body = http(port, path)
        assert (status, body) == (404, "Not Found\n"), path
    for method in ("POST", "PUT", "DELETE"):
        status, headers, body = http(port, method=method)
        assert status == 405, method
        assert headers["allow"] == "GET, HEAD"
    status, _, _ = http(port, "/metrics?x=1")
    assert status == 200

    out, _ = raw_request(port, b"GARBAGE\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 Bad Request\r\n"), out
    out, _ = raw_request(port, b"GET /metrics HTTP/2.0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 505 "), out
    # A head of 9000 bytes without its end: 431, then the connection closes.
    out, took = raw_request(port, b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 9000)
    assert out.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), out
    assert took < 4
    # A bare HTTP/1.0 request line works too.
    out, _ = raw_request(port, b"GET /metrics HTTP/1.0\n\n")
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and b"\npgfunnel_up 1\n" in out

    # An idle connection (nothing sent) is closed after about 5 seconds, a half-sent one too.
    out, took = raw_request(port, b"")
    assert out == b"" and 4 < took < 8, took
    out, took = raw_request(port, b"GET /metr")
    assert out == b"" and 4 < took < 8, took

    # At most 16 connections at once: the 17th is closed at once; after, scrapes work again.
    fds = pfhelpers.proc_fd_count(pf.pid)
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(16)]
    try:
        # pgfunnel has accepted all 16 (a descriptor each)
        pfhelpers.wait_until(lambda: pfhelpers.proc_fd_count(pf.pid) >= fds + 16, 10,
                             "16 metrics connections accepted",
                             lambda: "fds %s, before %d" % (pfhelpers.proc_fd_count(pf.pid), fds))
        out, took = raw_request(port, b"", timeout=3)
        assert out == b"" and took < 2, took
    finally:
        for s in held:
            s.close()
    pfhelpers.wait_until(lambda: pfhelpers.proc_fd_count(pf.pid) <= fds, 10,
                         "the 16 metrics connections closed by pgfunnel",
                         lambda: "fds %s, before %d" % (pfhelpers.proc_fd_count(pf.pid), fds))
    assert value(scrape(port), "pgfunnel_up") == 1
    # The pooler itself never noticed.
    assert pfhelpers.console(pf, "SHOW VERSION")[1]


def test_values_agree_with_console(proxy, new_port, postgres):
    pf = start(proxy, new_port, pool_mode="transaction", default_pool_size=2)
    busy1 = wire(pf, postgres)
    busy2 = wire(pf, postgres)
    idle = wire(pf, postgres)
    waiter = wire(pf, postgres)
    idle.simple_query("SELECT 1")
    busy1.simple_query("BEGIN")
    busy2.simple_query("BEGIN")
    waiter.send_query("SELECT 42")  # no server free: it waits
    pfhelpers.wait_pool(pf, "appdb", lambda r: r["cl_waiting"] == 1 and
                        pfhelpers.pool_wait_seconds(r) >= 0.3, "the waiter queued for 0.3 s",
                        user="alice")

    with pfhelpers.proxy_connect(pf, "postgres", "pgbouncer", postgres.passwords["postgres"],
                                 autocommit=True, prepare_threshold=None) as con:
        s1 = scrape(pf.metrics_port)
        cur = con.execute("SHOW POOLS")
        pools = pfhelpers.rows_as_dicts([d.name for d in cur.description], cur.fetchall())
        cur = con.execute("SHOW STATS_TOTALS")
        totals = pfhelpers.rows_as_dicts([d.name for d in cur.description], cur.fetchall())
        s2 = scrape(pf.metrics_port)

    assert value(s1, "pgfunnel_clients") == value(s2, "pgfunnel_clients") == 5
    seen = set()
    for row in pools:
        lab = {"database": row["database"], "user": row["user"]}
        seen.add((row["database"], row["user"]))
        for s in (s1, s2):
            cl = {st: value(s, "pgfunnel_pool_clients", state=st, **lab)
                  for st in ("active", "idle", "waiting")}
            assert cl["active"] + cl["idle"] == row["cl_active"], (lab, cl, row)
            assert cl["waiting"] == row["cl_waiting"], (lab, cl, row)
            for st, col in (("active", "sv_active"), ("idle", "sv_idle"), ("used", "sv_used"),
                            ("tested", "sv_tested"), ("login", "sv_login")):
                assert value(s, "pgfunnel_pool_servers", state=st, **lab) == row[col], (lab, st)
        console_wait = row["maxwait"] + row["maxwait_us"] / 1e6
        w1 = value(s1, "pgfunnel_pool_max_wait_seconds", **lab)
        w2 = value(s2, "pgfunnel_pool_max_wait_seconds", **lab)
        assert w1 - 1e-6 <= console_wait <= w2 + 1e-6, (lab, w1, console_wait, w2)
    # The pools the scrape shows are exactly SHOW POOLS' rows.
    scraped = {(l["database"], l["user"]) for _, l, _ in s1["pgfunnel_pool_clients"]["samples"]}
    assert scraped == seen
    appdb = [r for r in pools if r["database"] == "appdb"][0]
    assert (appdb["cl_waiting"], appdb["sv_active"]) == (1, 2)
    assert value(s1, "pgfunnel_pool_clients", database="appdb", user="alice", state="active") == 2
    assert value(s1, "pgfunnel_pool_clients", database="appdb", user="alice", state="idle") == 1
    assert value(s1, "pgfunnel_pool_max_wait_seconds", database="appdb", user="alice") >= 0.25

    names = {
        "server_assignment_count": ("pgfunnel_database_server_assignments_total", 1),
        "xact_count": ("pgfunnel_database_transactions_total", 1),
        "query_count": ("pgfunnel_database_queries_total", 1),
        "bytes_received": ("pgfunnel_database_received_bytes_total", 1),
        "bytes_sent": ("pgfunnel_database_sent_bytes_total", 1),
        "xact_time": ("pgfunnel_database_transaction_seconds_total", 1e6),
        "query_time": ("pgfunnel_database_query_seconds_total", 1e6),
        "wait_time": ("pgfunnel_database_wait_seconds_total", 1e6),
        "client_parse_count": ("pgfunnel_database_client_parses_total", 1),
        "server_parse_count": ("pgfunnel_database_server_parses_total", 1),
        "bind_count": ("pgfunnel_database_binds_total", 1),
    }
    assert "appdb" in {r["database"] for r in totals}
    for row in totals:
        for col, (fam, scale) in names.items():
            v1 = round(value(s1, fam, database=row["database"]) * scale)
            v2 = round(value(s2, fam, database=row["database"]) * scale)
            assert v1 <= int(row[col]) <= v2, (row["database"], col, v1, row[col], v2)
            if row["database"] != "pgfunnel":
                assert v1 == v2 == int(row[col]), (row["database"], col, v1, row[col], v2)
    assert value(s1, "pgfunnel_database_queries_total", database="appdb") == 3

    # The waiter gets a server once busy1 commits; its wait lands in the histogram and totals.
    busy1.simple_query("COMMIT")
    assert waiter.read_result() == [("42",)]
    s3 = scrape(pf.metrics_port)
    lab = {"database": "appdb", "user": "alice"}
    c1 = value(s1, "pgfunnel_pool_wait_seconds", "pgfunnel_pool_wait_seconds_count", **lab)
    c3 = value(s3, "pgfunnel_pool_wait_seconds", "pgfunnel_pool_wait_seconds_count", **lab)
    assert c3 == c1 + 1
    sum3 = value(s3, "pgfunnel_pool_wait_seconds", "pgfunnel_pool_wait_seconds_sum", **lab)
    assert sum3 >= 0.25
    assert abs(value(s3, "pgfunnel_database_wait_seconds_total", database="appdb") - sum3) < 1e-6
    # The new wait (>= 0.25 s) is not in the 0.1 bucket (earlier waits may be, on a busy
    # machine, whatever they are).
    assert value(s3, "pgfunnel_pool_wait_seconds", "pgfunnel_pool_wait_seconds_bucket",
                 le="0.1", **lab) == value(s1, "pgfunnel_pool_wait_seconds",
                                           "pgfunnel_pool_wait_seconds_bucket", le="0.1", **lab)
    for conn in (busy1, busy2, idle, waiter):
        conn.close()


def test_counter_deltas_exact(proxy, new_port, postgres):
    pf = start(proxy, new_port, pool_mode="transaction")
    c = Counted(wire(pf, postgres))
    assert c.query("SELECT 1") is None  # warm-up: the pool has its server
    c.sent = c.received = 0
    k, e = 37, 5
    lab = {"database": "appdb"}
    s1 = scrape(pf.metrics_port)
    t0 = time.monotonic()
    for _ in range(k):
        assert c.query("SELECT 1") is None
    for _ in range(e):
        assert c.query("SELECT 1/0")["C"] == "22012"
    elapsed = time.monotonic() - t0
    s2 = scrape(pf.metrics_port)

    def delta(fam, **labels):
        return value(s2, fam, **labels) - value(s1, fam, **labels)

    assert delta("pgfunnel_database_queries_total", **lab) == k + e
    assert delta("pgfunnel_database_transactions_total", **lab) == k + e
    assert delta("pgfunnel_database_server_assignments_total", **lab) == k + e
    assert delta("pgfunnel_database_received_bytes_total", **lab) == c.sent == 14 * k + 16 * e
    assert delta("pgfunnel_database_sent_bytes_total", **lab) == c.received
    assert 0 < delta("pgfunnel_database_query_seconds_total", **lab) <= elapsed
    assert 0 < delta("pgfunnel_database_transaction_seconds_total", **lab) <= elapsed
    errs = {l["class"]: v for _, l, v in s2["pgfunnel_pool_errors_total"]["samples"]
            if l["database"] == "appdb" and l["user"] == "alice"}
    before = {l["class"]: v for _, l, v in s1["pgfunnel_pool_errors_total"]["samples"]
              if l["database"] == "appdb" and l["user"] == "alice"}
    assert errs.get("22", 0) - before.get("22", 0) == e
    assert set(errs) == {"22"}
    # The other database saw nothing.
    assert delta("pgfunnel_database_queries_total", database="postgres") == 0
    c.conn.close()


def test_label_values_escaped(proxy, new_port, postgres):
    """A user name with a quote and a backslash comes out escaped and parses back."""
    name = 'we"ird\\u%d' % os.getpid()
    with postgres.connect(autocommit=True) as conn:
        conn.execute('DROP ROLE IF EXISTS "%s"' % name.replace('"', '""'))
        conn.execute("CREATE ROLE \"%s\" LOGIN PASSWORD 'pw-weird'" % name.replace('"', '""'))
    pf = start(proxy, new_port, userlist={name: "pw-weird"}, pool_mode="transaction")
    mport = pf.metrics_port
    conn = pgwire.connect(pf.host, pf.port, name, "appdb", password="pw-weird")
    assert conn.simple_query("SELECT current_user") == [(name,)]
    status, _, body = http(mport)
    assert status == 200
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    assert 'pgfunnel_pool_clients{database="appdb",user="%s",state="idle"} 1\n' % escaped in body
    fams = parse_exposition(body)
    assert value(fams, "pgfunnel_pool_clients", database="appdb", user=name, state="idle") == 1
    conn.close()


def test_scrape_during_pgbench_load(proxy, new_port, postgres):
    pgbench = os.path.join(pfhelpers.PG_BINDIR, "pgbench")
    env = dict(os.environ, PGPASSWORD=postgres.passwords["postgres"])
    init = subprocess.run([pgbench, "-i", "-s", "1", "-q", "-h", postgres.host, "-p",
                           str(postgres.port), "-U", "postgres", "appdb"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stderr
    pf = start(proxy, new_port, pool_mode="transaction", default_pool_size=4,
               max_client_conn=50)
    before = scrape(pf.metrics_port)
    results, stop = [], threading.Event()

    def scraper():
        while not stop.is_set():
            try:
                fams = scrape(pf.metrics_port)
                results.append(value(fams, "pgfunnel_database_transactions_total",
                                     database="appdb"))
            except Exception as exc:  # noqa: BLE001 - reported below
                results.append(exc)
            time.sleep(0.05)

    t = threading.Thread(target=scraper)
    t.start()
    try:
        run = subprocess.run([pgbench, "-n", "-S", "-c", "8", "-j", "2", "-T", "4",
                              "--protocol=simple", "-h", "127.0.0.1", "-p", str(pf.port),
                              "-U", "postgres", "appdb"],
                             env=env, capture_output=True, text=True, timeout=60)
    finally:
        stop.set()
        t.join(10)
    assert run.returncode == 0, run.stdout + run.stderr
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors[:3]
    assert len(results) >= 20
    assert results == sorted(results), "transactions_total went backwards"
    m = re.search(r"number of transactions actually processed: (\d+)", run.stdout)
    assert m, run.stdout
    done = int(m.group(1))
    after = scrape(pf.metrics_port)
    delta = (value(after, "pgfunnel_database_transactions_total", database="appdb")
             - value(before, "pgfunnel_database_transactions_total", database="appdb"))
    assert done > 100
    assert done <= delta <= done + 16, (done, delta)
    # The pool keeps serving.
    with pfhelpers.proxy_connect(pf, "alice", "appdb", postgres.passwords["alice"],
                                 autocommit=True) as conn:
        assert conn.execute("SELECT 7").fetchone() == (7,)


def test_shutdown_with_scrape_connections_open(proxy, new_port, postgres):
    """During SHUTDOWN WAIT_FOR_CLIENTS the endpoint still answers; at the end it closes with
    everything else, open scrape connections included, and the loop ends clean."""
    import signal
    pf = start(proxy, new_port)
    client = wire(pf, postgres)
    idle_scraper = socket.create_connection(("127.0.0.1", pf.metrics_port), timeout=5)
    half_sent = socket.create_connection(("127.0.0.1", pf.metrics_port), timeout=5)
    half_sent.sendall(b"GET /metrics HTTP/1.1\r\n")
    pf.signal(signal.SIGTERM)
    pf.wait_for_log(r"SIGTERM", timeout=5)
    fams = scrape(pf.metrics_port)
    assert value(fams, "pgfunnel_clients") == 1
    client.close()
    assert pf.wait(10) == 0
    for s in (idle_scraper, half_sent):
        s.settimeout(2)
        assert s.recv(100) == b""
        s.close()
    text = pf.log_text()
    assert "shutdown complete" in text
    assert "still had open handles" not in text
    assert not pfhelpers.port_accepts(pf.metrics_port)


def test_disconnects_counted_by_reason(proxy, new_port, postgres):
    # Every ended connection is counted once under its reason: a wrong password, a
    # query_timeout, a normal exit.
    pf = start(proxy, new_port, query_timeout=1, default_pool_size=1, pool_mode="transaction")
    fam = "pgfunnel_client_disconnects_total"
    before = scrape(pf.metrics_port)
    err, closed = pgwire.login_refused(pf.host, pf.port, "alice", "appdb", "wrong")
    assert err.sqlstate == "28P01" and closed
    slow = wire(pf, postgres)
    slow.send_query("SELECT pg_sleep(5)")
    assert pgwire.expect_error(slow, timeout=10).sqlstate == "57014"
    with wire(pf, postgres) as ok:
        ok.simple_query("SELECT 1")
    assert pfhelpers.wait_for(
        lambda: value(scrape(pf.metrics_port), fam, reason="client close request") -
        value(before, fam, reason="client close request") == 1, 5)
    after = scrape(pf.metrics_port)
    for reason, n in (("authentication failed", 1), ("query_timeout", 1)):
        assert value(after, fam, reason=reason) - value(before, fam, reason=reason) == n, reason
    # The server under the timed-out query was closed with its client.
    assert value(after, "pgfunnel_server_disconnects_total",
                 reason="client disconnected while the server was not idle") >= 1
