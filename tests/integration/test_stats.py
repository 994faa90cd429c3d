"""Averages over stats_period and PgBouncer's periodic "stats:" log line (log_stats).

PgBouncer's refresh_stats() logs one line per period for the whole process:
  stats: 12 xacts/s, 15 queries/s, 0 client parses/s, 0 server parses/s, 0 binds/s,
  in 1234 B/s, out 5678 B/s, xact 150 us, query 120 us, wait 3 us
Rates are per second over the period, times per transaction / query / server assignment.
"""

import datetime
import re
import time

import pfhelpers
import pgwire

STATS_RE = re.compile(
    r"^(?P<date>\S+ \S+) \S+ \[\d+\] LOG stats: (?P<xacts>\d+) xacts/s, (?P<queries>\d+) queries/s, "
    r"(?P<cparses>\d+) client parses/s, (?P<sparses>\d+) server parses/s, (?P<binds>\d+) binds/s, "
    r"in (?P<inb>\d+) B/s, out (?P<outb>\d+) B/s, xact (?P<xact_us>\d+) us, "
    r"query (?P<query_us>\d+) us, wait (?P<wait_us>\d+) us$")


def stats_lines(pf, after=0):
    """Parsed stats lines at log index >= after: dicts of ints plus 't' (seconds)."""
    out = []
    for line in pf.log_text().splitlines()[after:]:
        if " stats: " not in line:
            continue
        m = STATS_RE.match(line)
        assert m, "malformed stats line: %r" % line
        d = {k: int(v) for k, v in m.groupdict().items() if k != "date"}
        d["t"] = datetime.datetime.strptime(m.group("date"), "%Y-%m-%d %H:%M:%S.%f").timestamp()
        out.append(d)
    return out


def wait_stats_line(pf, after, timeout=5.0):
    """Wait for a stats line at index >= after; return (its log index + 1, parsed line)."""
    line = pf.wait_for_log(r" LOG stats: ", timeout=timeout, after=after)
    lines = pf.log_text().splitlines()
    idx = max(i for i, ln in enumerate(lines) if ln == line and i >= after)
    return idx + 1, stats_lines(pf, idx)[0]


def test_stats_line_rates(proxy, postgres):
    pf = proxy(params={"stats_period": 1, "log_stats": 1, "pool_mode": "transaction"})
    conn = pgwire.connect(pf.host, pf.port, "alice", "appdb", password=postgres.passwords["alice"])
    conn.simple_query("SELECT 1")  # login and first server out of the way
    # Start right after a period boundary, so the burst spans at most two periods.
    after, _ = wait_stats_line(pf, pf.log_len())
    n = 300
    t0 = time.monotonic()
    for _ in range(n):
        assert conn.simple_query("SELECT 1") == [("1",)]
    took = time.monotonic() - t0
    assert took < 0.9, "burst too slow for this test (%.2fs)" % took
    end, _ = wait_stats_line(pf, after)
    end, _ = wait_stats_line(pf, end)
    end, _ = wait_stats_line(pf, end)
    lines = stats_lines(pf, after)
    assert len(lines) >= 3
    # One line per period for the whole process (not one per database): ~1 s apart.
    for a, b in zip(lines, lines[1:]):
        assert 0.8 < b["t"] - a["t"] < 1.6, (a, b)
    total = lambda k: sum(d[k] for d in lines)  # noqa: E731
    # Each line is count / period truncated; a period lasts about a second (the janitor's
    # millisecond timer may end one a little early or late).
    assert n * 0.95 - 3 <= total("xacts") <= n * 1.05, lines
    assert n * 0.95 - 3 <= total("queries") <= n * 1.05, lines
    assert 14 * n * 0.95 - 3 <= total("inb") <= 14 * n * 1.05, lines
    assert total("outb") > total("inb")
    assert total("cparses") == total("sparses") == total("binds") == 0
    busy = [d for d in lines if d["xacts"] > 0]
    for d in busy:
        assert 0 < d["xact_us"] < 100000 and 0 < d["query_us"] < 100000, d
        assert d["query_us"] <= d["xact_us"] + 50, d
    # The last lines come after the burst: all zero.
    assert lines[-1]["xacts"] == 0 and lines[-1]["xact_us"] == 0
    conn.close()


def test_log_stats_off(proxy, postgres):
    pf = proxy(params={"stats_period": 1, "log_stats": 0})
    with pgwire.connect(pf.host, pf.port, "alice", "appdb",
                        password=postgres.passwords["alice"]) as conn:
        conn.simple_query("SELECT 1")
    # A stats period with that query has ended (SHOW STATS_AVERAGES took it), then another.
    pfhelpers.wait_until(lambda: any(int(r["query_count"]) > 0 for r in pfhelpers.show(
        pf, "STATS_AVERAGES") if r["database"] == "appdb"), 5, "a stats period with a query")
    pfhelpers.wait_until(lambda: all(int(r["query_count"]) == 0 for r in pfhelpers.show(
        pf, "STATS_AVERAGES") if r["database"] == "appdb"), 5, "the next, quiet, stats period")
    assert " stats: " not in pf.log_text()


def test_default_period_is_60s(proxy, postgres):
    pf = proxy(params={"log_stats": 1})
    assert {r["key"]: r["value"] for r in pfhelpers.show(pf, "CONFIG")}["stats_period"] == "60"
    with pgwire.connect(pf.host, pf.port, "alice", "appdb",
                        password=postgres.passwords["alice"]) as conn:
        conn.simple_query("SELECT 1")
    # Time passes (no event marks a period that does not end): 2.5 s, more than the 1 s of
    # the other tests' periods; then no period has ended, in the log or the console.
    time.sleep(2.5)
    assert " stats: " not in pf.log_text()
    assert all(int(r["query_count"]) == 0 for r in pfhelpers.show(pf, "STATS_AVERAGES"))


def test_averages_match_console_and_log(proxy, postgres):
    """SHOW STATS_AVERAGES / SHOW STATS report the averages of the period the log line covers."""
    pf = proxy(params={"stats_period": 2, "log_stats": 1, "pool_mode": "transaction"})
    conn = pgwire.connect(pf.host, pf.port, "alice", "appdb", password=postgres.passwords["alice"])
    conn.simple_query("SELECT 1")
    for attempt in range(3):
        after, _ = wait_stats_line(pf, pf.log_len(), timeout=5)
        for _ in range(100):
            conn.simple_query("SELECT 1")
        after, line = wait_stats_line(pf, after, timeout=5)
        cols, rows = pfhelpers.console(pf, "SHOW STATS_AVERAGES")
        avg = {r["database"]: r for r in pfhelpers.rows_as_dicts(cols, rows)}
        cols, rows = pfhelpers.console(pf, "SHOW STATS")
        stats = {r["database"]: r for r in pfhelpers.rows_as_dicts(cols, rows)}
        if stats_lines(pf, after):
            continue  # another period ended while we read: try again
        a, s = avg["appdb"], stats["appdb"]
        # Only appdb saw transactions, so the process-wide line equals its averages.
        assert line["xacts"] > 0
        assert int(a["xact_count"]) == int(s["avg_xact_count"]) == line["xacts"]
        assert int(a["query_count"]) == int(s["avg_query_count"]) == line["queries"]
        assert int(a["bytes_received"]) == int(s["avg_recv"]) == line["inb"]
        assert int(a["bytes_sent"]) == int(s["avg_sent"]) == line["outb"]
        assert int(a["xact_time"]) == int(s["avg_xact_time"]) == line["xact_us"]
        assert int(a["query_time"]) == int(s["avg_query_time"]) == line["query_us"]
        assert int(a["wait_time"]) == int(s["avg_wait_time"]) == line["wait_us"]
        # 100 transactions over a 2 s period: 50 per second, give or take truncation.
        assert 45 <= line["xacts"] <= 50
        assert 45 <= int(a["server_assignment_count"]) <= 50
        break
    else:
        raise AssertionError("could not read the console within one stats period")
    conn.close()


def test_avg_wait_is_per_assignment(proxy, postgres):
    """avg wait = wait time / server assignments (PgBouncer's calc_average), not per second."""
    pf = proxy(params={"stats_period": 2, "log_stats": 1, "pool_mode": "transaction",
                       "default_pool_size": 1})
    holder = pgwire.connect(pf.host, pf.port, "alice", "appdb", password=postgres.passwords["alice"])
    waiter = pgwire.connect(pf.host, pf.port, "alice", "appdb", password=postgres.passwords["alice"])
    holder.simple_query("SELECT 1")
    after, _ = wait_stats_line(pf, pf.log_len(), timeout=5)
    holder.simple_query("BEGIN")
    waiter.send_query("SELECT 2")
    # the waiter waits 0.5 s, as pgfunnel measures it
    pfhelpers.wait_pool(pf, "appdb", lambda r: pfhelpers.pool_wait_seconds(r) >= 0.5,
                        "the waiter waiting 0.5 s", user="alice")
    holder.simple_query("COMMIT")
    assert waiter.read_result() == [("2",)]
    _, line = wait_stats_line(pf, after, timeout=5)
    # Assignments in the period: BEGIN..COMMIT (1) and the waiter's (1): 0.5 s of wait over 2.
    assert line["xacts"] <= 1
    assert 200000 <= line["wait_us"] <= 400000, line
    holder.close()
    waiter.close()
