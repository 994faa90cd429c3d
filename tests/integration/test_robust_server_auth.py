"""A hostile or broken server during pgfunnel's own login to it: SCRAM messages out of order
(AuthenticationOk before the server proved it knows the password, SASLFinal before
SASLContinue, SASLContinue twice, a second AuthenticationSASL), a SCRAM iteration count that
would stall the event loop, and a flood of ParameterStatus messages.

Each server is a ScriptedServer (pfhelpers): a fake Postgres that speaks just enough of the
protocol, the one place a fake is right. The waiting client must get an ErrorResponse with the
SQLSTATE, pgfunnel's log must name the reason, pgfunnel stays up, and a canary client on a
real database keeps working throughout."""

import time

import pytest

import pfhelpers
import pgwire
from test_robust_clients import finish
from test_robust_servers import start

FAKE_USER = "fakeuser"
FAKE_PASSWORD = "fake-scram-secret"


@pytest.fixture
def canary_role(postgres):
    return pfhelpers.new_role(postgres, "sacan")


def with_fake(proxy, postgres, canary_role, script, params=None):
    """A running ScriptedServer(script) and a pgfunnel whose database "fake" points at it
    (forced user FAKE_USER with a plain password, so pgfunnel runs SCRAM itself), plus the
    canary on a real database. Returns (fake, pf, canary)."""
    fake = pfhelpers.ScriptedServer(script)
    try:
        p = {"server_login_retry": 0}
        p.update(params or {})
        pf, can = start(proxy, postgres, canary_role, params=p, databases={
            "fake": fake.db_entry(user=FAKE_USER, password=FAKE_PASSWORD)})
    except BaseException:
        fake.stop()
        raise
    return fake, pf, can


def refused(pf, canary_role, sqlstate, message, timeout=10):
    """A login to "fake" is refused with FATAL sqlstate message, and the connection closes."""
    err, closed = pgwire.login_refused(pf.host, pf.port, canary_role[0], "fake", canary_role[1],
                                       timeout=timeout)
    assert (err.severity, err.sqlstate, err.message) == ("FATAL", sqlstate, message), err.fields
    assert closed
    return err


def logged(pf, message):
    """pgfunnel's log has the server login failure with this reason."""
    return pf.wait_for_log(r"S-0x[0-9a-f]+: fake/%s@\S+ server login failed: %s" % (
        FAKE_USER, pfhelpers.re.escape(message)), timeout=5)


def check_done(fake, pf, can):
    assert not fake.errors, fake.errors
    can.expect_progress()
    can.check()
    finish(pf)


# ---------------------------------------------------------------- SCRAM out of order

AUTH_OK_EARLY = ("server sent AuthenticationOk before proving it knows the password "
                 "(SCRAM exchange not finished)")


def ok_after_client_first(peer):
    """Answers the client-first-message with AuthenticationOk: no proof at all."""
    peer.read_startup()
    peer.sasl_start()
    peer.auth(0)
    peer.finish_login()
    return peer.wait_closed()


def ok_after_client_final(peer):
    """Answers the client-final-message with AuthenticationOk instead of SASLFinal."""
    peer.read_startup()
    peer.sasl_start()
    peer.sasl_continue()
    peer.read_sasl_response()
    peer.auth(0)
    peer.finish_login()
    return peer.wait_closed()


@pytest.mark.parametrize("script", [ok_after_client_first, ok_after_client_final])
def test_auth_ok_before_server_signature(proxy, postgres, canary_role, script):
    fake, pf, can = with_fake(proxy, postgres, canary_role, script)
    try:
        refused(pf, canary_role, "08P01", AUTH_OK_EARLY)
        logged(pf, AUTH_OK_EARLY)
        # The fake server's thread sees the close on its own time: wait for it.
        pfhelpers.wait_for(lambda: fake.results, 10)
        assert fake.results == [True], "pgfunnel did not close the impostor's connection"
        check_done(fake, pf, can)
    finally:
        fake.stop()


def final_before_continue(peer):
    peer.read_startup()
    peer.sasl_start()
    peer.auth(12, b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
    return peer.wait_closed()


def continue_twice(peer):
    peer.read_startup()
    peer.sasl_start()
    peer.sasl_continue()
    peer.read_sasl_response()
    peer.sasl_continue()
    return peer.wait_closed()


def sasl_restarted(peer):
    """A second AuthenticationSASL in the middle of the exchange (the first state held the
    plain password: it must be wiped and freed, not leaked)."""
    peer.read_startup()
    peer.sasl_start()
    peer.auth(10, b"SCRAM-SHA-256\0\0")
    return peer.wait_closed()


def sasl_after_final(peer):
    """A complete, correct exchange, then AuthenticationSASL again instead of Ok."""
    peer.read_startup()
    peer.sasl_start()
    peer.sasl_continue()
    peer.read_sasl_response()
    peer.sasl_final(FAKE_PASSWORD)
    peer.auth(10, b"SCRAM-SHA-256\0\0")
    return peer.wait_closed()


def cleartext_during_scram(peer):
    """A downgrade in the middle of SCRAM: asks for the cleartext password instead."""
    peer.read_startup()
    peer.sasl_start()
    peer.auth(3)
    return peer.wait_closed()


@pytest.mark.parametrize("script,message", [
    (final_before_continue, "server sent AuthenticationSASLFinal during the SCRAM exchange, "
                            "expected AuthenticationSASLContinue"),
    (continue_twice, "server sent AuthenticationSASLContinue during the SCRAM exchange, "
                     "expected AuthenticationSASLFinal"),
    (sasl_restarted, "server sent AuthenticationSASL during the SCRAM exchange, "
                     "expected AuthenticationSASLContinue"),
    (sasl_after_final, "server sent AuthenticationSASL during the SCRAM exchange, "
                       "expected AuthenticationOk"),
    (cleartext_during_scram, "server sent AuthenticationCleartextPassword during the SCRAM "
                             "exchange, expected AuthenticationSASLContinue"),
], ids=["final-before-continue", "continue-twice", "sasl-restarted", "sasl-after-final",
        "cleartext-during-scram"])
def test_scram_messages_out_of_order(proxy, postgres, canary_role, script, message):
    fake, pf, can = with_fake(proxy, postgres, canary_role, script)
    try:
        refused(pf, canary_role, "08P01", message)
        logged(pf, message)
        pfhelpers.wait_for(lambda: fake.results, 10)
        assert fake.results == [True], "pgfunnel did not close the connection"
        check_done(fake, pf, can)
    finally:
        fake.stop()


def good_scram(peer):
    """A server that does everything right (the control case): login, then idle."""
    peer.read_startup()
    peer.sasl_start()
    peer.sasl_continue()
    peer.read_sasl_response()
    peer.sasl_final(FAKE_PASSWORD)
    peer.auth(0)
    peer.finish_login(params=[("server_version", "15.0"), ("client_encoding", "UTF8")])
    return peer.wait_closed(timeout=30)


def test_correct_scram_exchange_still_logs_in(proxy, postgres, canary_role):
    fake, pf, can = with_fake(proxy, postgres, canary_role, good_scram)
    try:
        conn = pgwire.connect(pf.host, pf.port, canary_role[0], "fake", canary_role[1])
        assert conn.params.get("server_version") == "15.0", conn.params
        conn.close()
        check_done(fake, pf, can)
    finally:
        fake.stop()


# ---------------------------------------------------------------- event-loop stalls

ITERATION_REFUSAL = ("server asks for 1000000 SCRAM iterations, more than the 600000 "
                     "pgfunnel allows (PBKDF2 runs on the event loop)")
HOSTILE_LOGINS = 4


def huge_iterations(peer):
    peer.read_startup()
    peer.sasl_start()
    # A fresh salt each time, so no derivation cache could hide the cost.
    peer.sasl_continue(iterations=1000000, salt=pfhelpers.os.urandom(16))
    try:
        peer.read_sasl_response()
    except EOFError:
        return "refused"
    return "computed"


def test_scram_iteration_count_is_capped(proxy, postgres, canary_role):
    fake, pf, can = with_fake(proxy, postgres, canary_role, huge_iterations)
    try:
        cpu0 = pfhelpers.proc_cpu_seconds(pf.pid)
        for _ in range(HOSTILE_LOGINS):
            refused(pf, canary_role, "28000", ITERATION_REFUSAL)
            can.expect_progress()
        cpu = pfhelpers.proc_cpu_seconds(pf.pid) - cpu0
        logged(pf, ITERATION_REFUSAL)
        pfhelpers.wait_for(lambda: len(fake.results) >= HOSTILE_LOGINS, 10)
        assert fake.results == ["refused"] * HOSTILE_LOGINS, fake.results
        # Each PBKDF2 of 1e6 rounds costs ~0.4 s of the loop; refused, none runs.
        assert cpu < 0.25 * HOSTILE_LOGINS, "pgfunnel used %.2fs of CPU" % cpu
        assert can.max_latency < 1.0, "a canary query took %.2fs" % can.max_latency
        check_done(fake, pf, can)
    finally:
        fake.stop()


FLOOD = 20000


def parameter_flood(peer):
    peer.read_startup()
    peer.auth(0)  # trust
    msgs = [peer.message("S", b"p%d\0v\0" % i) for i in range(FLOOD)]
    try:
        peer.sock.sendall(b"".join(msgs))
        peer.finish_login()
    except OSError:
        return "cut off"
    return "sent all"


PARAM_REFUSAL = "server sent more than 1000 ParameterStatus messages during login"


def test_parameter_status_flood_is_refused(proxy, postgres, canary_role):
    fake, pf, can = with_fake(proxy, postgres, canary_role, parameter_flood)
    try:
        cpu0 = pfhelpers.proc_cpu_seconds(pf.pid)
        refused(pf, canary_role, "08P01", PARAM_REFUSAL)
        cpu = pfhelpers.proc_cpu_seconds(pf.pid) - cpu0
        logged(pf, PARAM_REFUSAL)
        assert cpu < 1.0, "pgfunnel used %.2fs of CPU" % cpu
        assert can.max_latency < 1.0, "a canary query took %.2fs" % can.max_latency
        check_done(fake, pf, can)
    finally:
        fake.stop()


def many_parameters(peer):
    """1000 ParameterStatus at login (the most allowed), some names repeated with new values:
    the last value of each name is what clients get."""
    peer.read_startup()
    peer.auth(0)
    params = [("p%d" % i, "first") for i in range(500)]
    params += [("p%d" % i, "second") for i in range(0, 500, 2)]
    params += [("server_version", "15.0")] * 249
    assert len(params) == 999
    peer.finish_login(params=params + [("last", "yes")])
    return peer.wait_closed(timeout=30)


def test_parameter_status_up_to_the_cap(proxy, postgres, canary_role):
    fake, pf, can = with_fake(proxy, postgres, canary_role, many_parameters)
    try:
        conn = pgwire.connect(pf.host, pf.port, canary_role[0], "fake", canary_role[1])
        got = conn.params
        conn.close()
        assert got["p0"] == "second" and got["p1"] == "first" and got["p498"] == "second"
        assert got["p499"] == "first" and got["last"] == "yes", got
        assert len([k for k in got if k.startswith("p") and k[1:].isdigit()]) == 500
        check_done(fake, pf, can)
    finally:
        fake.stop()
