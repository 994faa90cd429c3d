"""A password changed by RELOAD while a client is half-way through its SCRAM exchange: the
proof the client then sends is for the old password, which no longer admits anyone; and the
key it proves must not be kept as the new secret's (issue 10 red team)."""

import struct

import pfhelpers
import pgwire


def test_scram_exchange_spanning_a_password_change_fails(proxy, postgres):
    name, pw = pfhelpers.new_role(postgres, "sreload")
    pf = proxy(params={"auth_type": "scram-sha-256"}, userlist={name: pw})
    conn = pgwire.Connection(pgwire.open_socket(pf.host, pf.port))
    conn.send(pgwire.startup_message({"user": name, "database": "appdb"}))
    kind, payload = conn.read_message()
    assert kind == "R" and struct.unpack("!I", payload[:4])[0] == 10  # AuthenticationSASL
    scram = pgwire._Scram(pw)
    first = scram.client_first().encode()
    conn.send(pgwire.message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first))
    kind, payload = conn.read_message()
    assert kind == "R" and struct.unpack("!I", payload[:4])[0] == 11  # SASLContinue

    # The password changes now (auth_file + RELOAD), before the client proves the old one.
    users = postgres.userlist()
    users[name] = pw + "-new"
    pf.write_userlist(users)
    after = pf.log_len()
    pfhelpers.console(pf, "RELOAD")
    pf.wait_for_log(r"RELOAD", after=after)

    conn.send(pgwire.message(b"p", scram.client_final(payload[4:].decode()).encode()))
    err = pgwire.expect_error(conn, timeout=5)
    assert err is not None and err.sqlstate == "28P01", err
    conn.sock.close()

    # The new password works, the old one does not; the pool logs in to Postgres as before.
    assert pfhelpers.wait_for(lambda: _login_fails(pf, name, pw), 5)
    users[name] = pw
    pf.write_userlist(users)
    pfhelpers.console(pf, "RELOAD")
    with pgwire.connect(pf.host, pf.port, name, "appdb", pw) as ok:
        assert ok.simple_query("SELECT 'in'") == [("in",)]


def _login_fails(pf, user, password):
    try:
        pgwire.connect(pf.host, pf.port, user, "appdb", password).close()
    except pgwire.PgError as e:
        return e.sqlstate == "28P01"
    return False
