"""Red-team attacks on the authentication crypto of a710ee3 / b83484f / cd58cac: pgfunnel's own
HMAC-SHA-256 (scram.c pf_scram_hmac over a digest fetched once) on every path that uses it, the
per-second cached log timestamp (log.c pf_log_format_time) and ASCII-only pf_strcaseeq (util.c).
Complements test_scram_errors.py (every malformed client message against Postgres) and
test_robust_server_auth.py (a fake server's SCRAM messages out of order).

pgfunnel as the SCRAM server (a hostile client on a raw socket):
  - ServerSignature, salt and iteration count checked against Python's hmac for a SCRAM secret
    (4096 iterations, 16-byte salt), an odd one (1234 iterations, 64-byte salt: the largest the
    auth_file takes), a plain auth_file password (PBKDF2 with scram_iterations, then its cache),
    over client nonces of 0 to 940 characters (AuthMessages of 2 to 46 SHA-256 blocks); the
    unknown-user mock exchange looks like a real one (a stable 16-byte salt per name).
  - every kind of wrong proof (bit flips, zero, ClientKey without the XOR, a proof over another
    AuthMessage, a replayed proof or whole message from an earlier exchange) is 28P01.
  - framing: the whole login dribbled byte by byte, or in one write with the startup; length
    words past the caps (refused before the body arrives) or under 4; out-of-order and
    repeated SASL messages and odd proofs, answered as Postgres answers them.
  - disconnects (FIN and RST) at every step leave no login socket and no client behind.
  - 200 logins at once (right, wrong, unknown, mock) while a canary runs queries.
  - auth_type md5 with md5 and plain secrets (md5_hex2): right, wrong and malformed responses,
    answered as Postgres answers them.
  - the plain-password cache across RELOADs of scram_iterations and of the password.
pgfunnel as the SCRAM client (a hostile fake Postgres, pfhelpers.ScriptedServer): bad nonces,
salts, iteration counts, truncated or huge server-first / server-final messages, bad signatures,
hang-ups: every waiting client gets its FATAL error, the log names it, pgfunnel never answers a
bad server-first, a canary keeps working, pgfunnel exits cleanly (no sanitizer report, no leak).
Log lines keep "YYYY-MM-DD HH:MM:SS.mmm TZ" across second boundaries under several TZ values;
parameter names fold ASCII letters only.

Bug found (fixed with this file): b83484f cached the zone in 16 bytes, and a longer zone name
(TZ="<PgfunnelLongZoneNameXYZ>-1") left every log line without its zone field
("2026-12-06 21:55:58.415  [20789] LOG ..."); test_log_timestamps_across_second_boundaries
[long-zone-name] and [overlong-zone-name] fail on b83484f.
"""

import base64
import concurrent.futures
import datetime
import hashlib
import hmac
import os
import re
import socket
import struct
import threading
import time

import pytest

import pfhelpers
import pgwire
from test_robust_clients import finish
from test_scram_errors import run_case, sasl_initial, sasl_response

DEADLINE = 10.0
SCRAM_ITERATIONS = 2345  # scram_iterations for plain auth_file passwords (not the default)


def b64(b):
    return base64.b64encode(b).decode()


def keys(password, salt, iterations):
    """(ClientKey, StoredKey, ServerKey) of password."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    ck = hmac.digest(salted, b"Client Key", "sha256")
    return ck, hashlib.sha256(ck).digest(), hmac.digest(salted, b"Server Key", "sha256")


def wrong_password_msg(user):
    return 'password authentication failed for user "%s"' % user


class Roles:
    """Roles of this module (unique names); each .x is (name, password)."""


@pytest.fixture(scope="module")
def roles(postgres):
    r = Roles()
    tag = "%d_%d" % (os.getpid(), int(time.time() * 1000) % 10 ** 8)
    r.tag = tag
    # SCRAM verifiers made here, with known salts, stored in Postgres and in the auth_file
    # alike, so the ClientKey a client reveals also logs pgfunnel in to Postgres.
    r.sc = ("ac_sc_" + tag, "sc-pw-" + tag)
    r.sc_salt, r.sc_iter = os.urandom(16), 4096
    r.odd = ("ac_odd_" + tag, "odd-pw-\u00e9-" + tag)
    r.odd_salt, r.odd_iter = os.urandom(64), 1234
    r.pl = ("ac_pl_" + tag, "pl-pw-" + tag)  # plain password in the auth_file
    r.md = ("ac_md_" + tag, "md-pw-" + tag)  # md5 in Postgres and the auth_file
    r.sc_secret = pfhelpers.scram_secret(r.sc[1], r.sc_iter, r.sc_salt)
    r.odd_secret = pfhelpers.scram_secret(r.odd[1], r.odd_iter, r.odd_salt)
    with postgres.connect(autocommit=True) as conn:
        for (name, pw), stored in ((r.sc, r.sc_secret), (r.odd, r.odd_secret), (r.pl, None)):
            conn.execute("CREATE ROLE %s LOGIN PASSWORD '%s'" % (name, stored or pw))
        conn.execute("SET password_encryption = 'md5'")
        conn.execute("CREATE ROLE %s LOGIN PASSWORD '%s'" % r.md)
    r.userlist = {r.sc[0]: r.sc_secret, r.odd[0]: r.odd_secret, r.pl[0]: r.pl[1],
                  r.md[0]: pfhelpers.md5_secret(*r.md)}
    r.passwords = dict([r.sc, r.odd, r.pl, r.md])
    yield r
    with postgres.connect(autocommit=True) as conn:
        for name in (r.sc[0], r.odd[0], r.pl[0], r.md[0]):
            conn.execute("DROP ROLE IF EXISTS %s" % name)


def start(proxy, roles, **params):
    p = {"auth_type": "scram-sha-256", "scram_iterations": SCRAM_ITERATIONS,
         "pool_mode": "transaction", "default_pool_size": 4, "max_client_conn": 400}
    p.update(params)
    return proxy(params=p, userlist=roles.userlist)


# ---------------------------------------------------------------- a SCRAM client on a raw socket


def read_reply(conn, timeout=DEADLINE):
    """The next reply, skipping N/S/K: ('E', fields), ('R', code, data), ('Z',), ('closed',),
    ('silent',) when nothing came within timeout, or ('unexpected', type)."""
    while True:
        try:
            kind, payload = conn.read_message(timeout)
        except pgwire.Timeout:
            return ("silent",)
        except pgwire.ProtocolError:
            return ("closed",)
        if kind == "E":
            return ("E", pgwire.parse_fields(payload))
        if kind == "R":
            return ("R", struct.unpack("!I", payload[:4])[0], payload[4:])
        if kind == "Z":
            return ("Z",)
        if kind in "NSK":
            continue
        return ("unexpected", kind)


def refusal(conn):
    """(SQLSTATE, message) of the FATAL error conn gets next; asserts the close after it."""
    reply = read_reply(conn)
    assert reply[0] == "E", reply
    f = reply[1]
    assert f.get("S") == "FATAL", f
    assert pgwire.wait_closed(conn, DEADLINE), "not closed after %r" % f
    return f.get("C"), f.get("M")


class Scram:
    """One SCRAM exchange with pgfunnel, driven step by step."""

    def __init__(self, pf, user, cnonce=None, bare_extra=""):
        self.user = user
        self.cnonce = b64(os.urandom(18)) if cnonce is None else cnonce
        self.bare = "n=,r=" + self.cnonce + bare_extra
        self.conn = pgwire.Connection(pgwire.open_socket(pf.host, pf.port, DEADLINE))

    def startup(self):
        self.conn.send(pgwire.startup_message({"user": self.user, "database": "appdb"}))
        reply = read_reply(self.conn)
        assert reply[:2] == ("R", 10), reply
        return self

    def first(self):
        self.conn.send(sasl_initial(("n,," + self.bare).encode()))
        reply = read_reply(self.conn)
        assert reply[:2] == ("R", 11), reply
        self.server_first = reply[2].decode()
        attrs = dict(a.split("=", 1) for a in self.server_first.split(","))
        self.nonce, self.salt, self.iterations = attrs["r"], b64d(attrs["s"]), int(attrs["i"])
        return self

    def auth_message(self, without_proof):
        return ",".join([self.bare, self.server_first, without_proof]).encode()

    def final(self, password, ext="", nonce=None):
        """(client-final message, expected ServerSignature)."""
        wo = "c=biws,r=%s%s" % (self.nonce if nonce is None else nonce, ext)
        ck, sk, srv = keys(password, self.salt, self.iterations)
        am = self.auth_message(wo)
        proof = bytes(a ^ b for a, b in zip(ck, hmac.digest(sk, am, "sha256")))
        self.proof = proof
        return ("%s,p=%s" % (wo, b64(proof))).encode(), b64(hmac.digest(srv, am, "sha256"))

    def close(self):
        self.conn.sock.close()


def b64d(s):
    return base64.b64decode(s, validate=True)


def full_login(pf, user, password, cnonce=None, bare_extra="", ext=""):
    """A whole SCRAM login; returns (server-first salt, iterations). Asserts pgfunnel's
    ServerSignature equals Python's, AuthenticationOk, ReadyForQuery and current_user."""
    x = Scram(pf, user, cnonce, bare_extra).startup().first()
    try:
        msg, want_sig = x.final(password, ext)
        x.conn.send(sasl_response(msg))
        reply = read_reply(x.conn)
        assert reply[:2] == ("R", 12), reply
        assert reply[2].decode() == "v=" + want_sig, (reply, want_sig)
        assert read_reply(x.conn)[:2] == ("R", 0)
        assert read_reply(x.conn) == ("Z",)
        assert x.conn.simple_query("SELECT current_user") == [(user,)]
        return x.salt, x.iterations
    finally:
        x.conn.close()


# ---------------------------------------------------------------- HMAC on every key path

# Client nonce lengths: the AuthMessage crosses SHA-256's 55/64-byte padding edges and grows to
# the longest nonce whose client-final still fits the 1024 bytes Postgres reads: 940).
NONCE_LENGTHS = [0, 1, 7, 8, 9, 63, 64, 65, 500, 940]


def test_server_signature_is_rfc_hmac_for_every_secret_kind(proxy, roles):
    """Logins of a SCRAM-secret user (4096 iterations), one with 1234 iterations and a 64-byte
    salt, and a plain auth_file password (PBKDF2 with scram_iterations = 2345, then cached):
    server-first carries the verifier's own salt and count (the plain user: a 16-byte salt that
    stays the same on the next login, from the cache), and the ServerSignature is the one
    Python's hmac computes, for client nonces of every size up to the message cap. Each login
    also has pgfunnel log in to Postgres with SCRAM (its client side): with the ClientKey the
    SCRAM users revealed, with PBKDF2 for the plain one."""
    pf = start(proxy, roles)
    for (name, pw), salt, it in ((roles.sc, roles.sc_salt, roles.sc_iter),
                                 (roles.odd, roles.odd_salt, roles.odd_iter)):
        for n in NONCE_LENGTHS:
            got = full_login(pf, name, pw, cnonce="N" * n)
            assert got == (salt, it), (name, n, got)
    seen = set()
    for n in NONCE_LENGTHS:
        got = full_login(pf, roles.pl[0], roles.pl[1], cnonce="p" * n)
        seen.add(got)
    assert len(seen) == 1, seen
    salt, it = seen.pop()
    assert it == SCRAM_ITERATIONS and len(salt) == 16
    # Extensions in client-first and client-final are part of the AuthMessage.
    full_login(pf, roles.sc[0], roles.sc[1], bare_extra=",x=1,y=" + "e" * 200, ext=",z=2")
    finish(pf)


def test_wrong_proofs_are_28P01(proxy, roles):
    """Every kind of wrong proof, for a SCRAM secret, a plain password, an md5-only user and
    an unknown user (the last two run the mock exchange): FATAL 28P01 with Postgres' words,
    then the close. A message replayed from an earlier exchange fails on its nonce (08P01
    "invalid SCRAM response"); its proof under the new nonce is 28P01. The mock exchange looks
    like a real one: 16-byte salt, 4096 iterations, a 24-character server nonce, the same salt
    for the same name each time and another one for another name."""
    pf = start(proxy, roles)
    unknown = "ac_nobody_" + roles.tag

    def flip(bit):
        def f(x, pw):
            msg, _ = x.final(pw)
            p = bytearray(x.proof)
            p[bit // 8] ^= 1 << (bit % 8)
            return msg.rsplit(b",p=", 1)[0] + b",p=" + b64(bytes(p)).encode()
        return f

    def proof_is(fn):
        def f(x, pw):
            wo = "c=biws,r=" + x.nonce
            ck, sk, _ = keys(pw, x.salt, x.iterations)
            return ("%s,p=%s" % (wo, b64(fn(ck, sk, x.auth_message(wo))))).encode()
        return f

    def over_other_message(x, pw):
        # The proof signs an AuthMessage without the extension the message carries.
        msg, _ = x.final(pw)
        wo, p = msg.rsplit(b",p=", 1)
        return wo + b",x=1,p=" + p

    cases = [
        ("wrong-password", lambda x, pw: x.final(pw + "x")[0]),
        ("first-bit", flip(0)),
        ("last-bit", flip(255)),
        ("middle-bit", flip(131)),
        ("zero", proof_is(lambda ck, sk, am: bytes(32))),
        ("client-key", proof_is(lambda ck, sk, am: ck)),
        ("signature-only", proof_is(lambda ck, sk, am: hmac.digest(sk, am, "sha256"))),
        ("stored-key-as-proof", proof_is(lambda ck, sk, am: sk)),
        ("other-auth-message", over_other_message),
    ]
    users = [(roles.sc[0], roles.sc[1]), (roles.pl[0], roles.pl[1]),
             (roles.md[0], roles.md[1]), (unknown, "whatever")]
    for user, pw in users:
        for cid, build in cases:
            x = Scram(pf, user).startup().first()
            try:
                x.conn.send(sasl_response(build(x, pw)))
                got = refusal(x.conn)
                assert got == ("28P01", wrong_password_msg(user)), (user, cid, got)
            finally:
                x.close()

    # Replays: a whole good client-final, then its proof under a fresh nonce.
    x = Scram(pf, roles.sc[0]).startup().first()
    old, _ = x.final(roles.sc[1])
    old_proof = old.rsplit(b",p=", 1)[1]
    x.conn.send(sasl_response(old))
    assert read_reply(x.conn)[:2] == ("R", 12)
    x.conn.close()
    y = Scram(pf, roles.sc[0], cnonce=x.cnonce).startup().first()
    assert y.nonce != x.nonce
    y.conn.send(sasl_response(old))
    reply = read_reply(y.conn)
    assert reply[0] == "E" and (reply[1]["C"], reply[1]["M"], reply[1].get("D")) == (
        "08P01", "invalid SCRAM response", "Nonce does not match."), reply
    y.close()
    y = Scram(pf, roles.sc[0], cnonce=x.cnonce).startup().first()
    y.conn.send(sasl_response(("c=biws,r=%s,p=" % y.nonce).encode() + old_proof))
    assert refusal(y.conn) == ("28P01", wrong_password_msg(roles.sc[0]))
    y.close()

    # The mock exchange's server-first.
    def server_first(user):
        x = Scram(pf, user).startup().first()
        x.close()
        return x

    a1, a2, b = server_first(unknown), server_first(unknown), server_first(unknown + "b")
    m1, m2 = server_first(roles.md[0]), server_first(roles.md[0])
    for x in (a1, b, m1):
        assert len(x.salt) == 16 and x.iterations == 4096, x.server_first
        assert x.nonce.startswith(x.cnonce) and len(x.nonce) == len(x.cnonce) + 24
    assert a1.salt == a2.salt and m1.salt == m2.salt
    assert len({a1.salt, b.salt, m1.salt}) == 3
    assert a1.nonce[len(a1.cnonce):] != a2.nonce[len(a2.cnonce):]
    full_login(pf, roles.sc[0], roles.sc[1])
    finish(pf)


# ---------------------------------------------------------------- framing and order

def sasl_first(bare="n=,r=abcdef", header="n,,"):
    return sasl_initial((header + bare).encode())


# (id, first message(s), final builder or None, user or None) as test_scram_errors.run_case
# plays them; each must get the answer Postgres gives.
ORDER_CASES = [
    ("initial-twice", sasl_first(), lambda x: sasl_first(), None),
    ("final-as-initial", sasl_response(b"c=biws,r=abcdef,p=" + b"A" * 44), None, None),
    ("password-as-initial", pgwire.message(b"p", b"alice-scram-secret\0"), None, None),
    ("initial-then-password", sasl_first(), lambda x: pgwire.message(b"p", b"pw\0"), None),
    ("final-sync", sasl_first(), lambda x: pgwire.message(b"S"), None),
    ("final-proof-33-bytes", sasl_first(), lambda x: x.final(proof=b64(b"\1" * 33)), None),
    ("final-proof-48-bytes", sasl_first(), lambda x: x.final(proof=b64(b"\1" * 48)), None),
    ("final-proof-1000-chars", sasl_first(), lambda x: x.final(proof="A" * 900), None),
    ("final-proof-pad-inside", sasl_first(), lambda x: x.final(proof="AA==" + "A" * 40), None),
    ("final-proof-pad-3rd", sasl_first(), lambda x: x.final(proof="A" * 42 + "=A"), None),
    ("final-proof-nul-b64", sasl_first(), lambda x: x.final(proof="AAA\x01" + "A" * 40), None),
    ("final-two-proofs", sasl_first(), lambda x: x.final(tail=",p=" + b64(bytes(32))), None),
    ("final-proof-before-nonce", sasl_first(),
     lambda x: sasl_response(("c=biws,p=%s,r=%s" % (b64(bytes(32)), x.nonce)).encode()), None),
    ("final-nonce-truncated", sasl_first(), lambda x: x.final(nonce=x.nonce[:-1]), None),
    ("final-nonce-empty", sasl_first(), lambda x: x.final(nonce=""), None),
    ("final-c-empty", sasl_first(), lambda x: x.final(c=""), None),
    ("final-only-c", sasl_first(), lambda x: sasl_response(b"c=biws"), None),
    ("final-high-bytes", sasl_first(),
     lambda x: sasl_response(("c=biws,r=%s,x=\xff\xfe,p=" % x.nonce).encode("latin-1")
                             + b64(bytes(32)).encode()), None),
    ("final-ok-long-client-nonce", sasl_first("n=,r=" + "Q" * 900), lambda x: x.final(), None),
    ("unknown-user-initial-twice", sasl_first(), lambda x: sasl_first(), "ac_no_such_user"),
]


def raw_answer(host, port, user, msgs, timeout=DEADLINE):
    """Startup as user, then each of msgs (bytes) once the previous got an answer: the last
    answer as ('E', sqlstate, message, detail), ('R', code), ('closed',) or ('silent',),
    and whether the connection was closed after it."""
    conn = pgwire.Connection(pgwire.open_socket(host, port, timeout))
    try:
        conn.send(pgwire.startup_message({"user": user, "database": "appdb"}))
        reply = read_reply(conn, timeout)
        for m in msgs:
            conn.send(m)
            reply = read_reply(conn, timeout)
        out = reply[:2] if reply[0] != "E" else (
            "E", reply[1].get("C"), reply[1].get("M"), reply[1].get("D"))
        return out, reply[0] in ("closed",) or pgwire.wait_closed(conn, 1 if out == (
            "silent",) else timeout)
    finally:
        conn.sock.close()


def test_out_of_order_and_odd_sasl_messages_answered_as_postgres(proxy, postgres):
    """Repeated and out-of-order SASL messages, odd proofs (33 or 48 bytes, padding inside,
    two of them), proofs before nonces, Terminate or Sync instead of the final: pgfunnel's
    answer (SQLSTATE, message, detail, close) is Postgres' own."""
    pw = postgres.passwords["alice"]
    pf = proxy(params={"auth_type": "scram-sha-256"}, userlist={"alice": pw})
    bad = []
    for case in ORDER_CASES:
        want = run_case(postgres.host, postgres.port, pw, case)
        got = run_case(pf.host, pf.port, pw, case)
        if got != want:
            bad.append("%s: pgfunnel %r, Postgres %r" % (case[0], got, want))
    assert not bad, "\n".join(bad)
    finish(pf)


def huge(kind=b"p", length=0x7FFFFFFF):
    return kind + struct.pack("!I", length)


def test_length_words_past_the_caps(proxy, postgres, roles):
    """A SASL message whose length word is past Postgres' 1024-byte cap (2 GB, or 1025) and
    whose body never comes is refused at once with 28P01, as Postgres refuses it (same answer,
    known and unknown users alike); pgfunnel does not wait for the body. Its own answers where
    Postgres differs: a length word under 4 is 08P01 "invalid message length" (Postgres: 28P01),
    a 2 GB PasswordMessage under md5 is 08P01 "authentication message too long (pkt_buf)"
    (Postgres hangs up without a word), Terminate during SCRAM closes without an error
    (Postgres: 08P01 "expected SASL response")."""
    pw = postgres.passwords["alice"]
    pf = proxy(params={"auth_type": "scram-sha-256"}, userlist={"alice": pw})
    pfm = proxy(params={"auth_type": "md5"})
    as_postgres = [
        ("first-2GB", "alice", [huge()]),
        ("first-1025", "alice", [huge(length=1025)]),
        ("final-2GB", "alice", [sasl_first(), huge()]),
        ("final-1025", "alice", [sasl_first(), huge(length=1025)]),
        ("unknown-first-2GB", "ac_nobody", [huge()]),
        ("unknown-final-1025", "ac_nobody", [sasl_first(), huge(length=1025)]),
    ]
    bad = []
    for cid, user, msgs in as_postgres:
        want = raw_answer(postgres.host, postgres.port, user, msgs)
        got = raw_answer(pf.host, pf.port, user, msgs)
        if got != want or got != (("E", "28P01", wrong_password_msg(user), None), True):
            bad.append("%s: pgfunnel %r, Postgres %r" % (cid, got, want))
    invalid_len = (("E", "08P01", "invalid message length", None), True)
    own = [
        ("first-len-3", "alice", [huge(length=3)], pf, invalid_len),
        ("first-len-0", "alice", [huge(length=0)], pf, invalid_len),
        ("final-len-3", "alice", [sasl_first(), huge(length=3)], pf, invalid_len),
        ("md5-len-3", "bob", [huge(length=3)], pfm, invalid_len),
        ("md5-2GB", "bob", [huge()], pfm,
         (("E", "08P01", "authentication message too long (pkt_buf)", None), True)),
        ("final-terminate", "alice", [sasl_first(), pgwire.message(b"X")], pf,
         (("closed",), True)),
    ]
    for cid, user, msgs, target, want in own:
        got = raw_answer(target.host, target.port, user, msgs)
        if got != want:
            bad.append("%s: pgfunnel %r, expected %r" % (cid, got, want))
    assert not bad, "\n".join(bad)
    finish(pf)
    finish(pfm)


def test_login_dribbled_byte_by_byte_and_pipelined(proxy, roles):
    """The startup, the SASLInitialResponse and the SASLResponse sent one byte per write
    (pgfunnel answers none of them before its last byte), and the startup with the
    SASLInitialResponse in one write: both log in, with the right ServerSignature."""
    pf = start(proxy, roles)
    user, pw = roles.pl

    def dribble(conn, data):
        for i in range(len(data)):
            conn.send(data[i:i + 1])
            if i < len(data) - 1:
                assert conn.poll_message() is None, "answer before byte %d of %d" % (
                    i + 1, len(data))

    for pipelined in (False, True):
        x = Scram(pf, user)
        startup = pgwire.startup_message({"user": user, "database": "appdb"})
        initial = sasl_initial(("n,," + x.bare).encode())
        if pipelined:
            x.conn.send(startup + initial)
        else:
            dribble(x.conn, startup)
        assert read_reply(x.conn)[:2] == ("R", 10)
        if not pipelined:
            dribble(x.conn, initial)
        reply = read_reply(x.conn)
        assert reply[:2] == ("R", 11), reply
        x.server_first = reply[2].decode()
        attrs = dict(a.split("=", 1) for a in x.server_first.split(","))
        x.nonce, x.salt, x.iterations = attrs["r"], b64d(attrs["s"]), int(attrs["i"])
        msg, sig = x.final(pw)
        if pipelined:
            x.conn.send(sasl_response(msg) + pgwire.fe_query("SELECT current_user"))
        else:
            dribble(x.conn, sasl_response(msg))
        assert read_reply(x.conn) == ("R", 12, ("v=" + sig).encode())
        assert read_reply(x.conn)[:2] == ("R", 0)
        assert read_reply(x.conn) == ("Z",)
        if pipelined:
            msgs = x.conn.read_until_ready(DEADLINE)
            assert pgwire.data_values(msgs) == [user], msgs
        else:
            assert x.conn.simple_query("SELECT current_user") == [(user,)]
        x.conn.close()
    finish(pf)


# ---------------------------------------------------------------- disconnects and crowds

def login_sockets(pf):
    return [r for r in pfhelpers.show(pf, "SOCKETS") if r["state"] == "cl_login"]


def appdb_clients(pf):
    return [r for r in pfhelpers.show(pf, "CLIENTS") if r["database"] == "appdb"]


def hang_up(sock, rst):
    if rst:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


STEPS = ["connected", "startup-half", "startup", "initial-header", "initial-half",
         "initial-unread", "first-read", "final-half", "final-unread", "logged-in"]


def run_to_step(pf, user, pw, step):
    """A socket left at step of a SCRAM login."""
    x = Scram(pf, user)
    if step == "connected":
        return x.conn.sock
    startup = pgwire.startup_message({"user": user, "database": "appdb"})
    if step == "startup-half":
        x.conn.send(startup[:len(startup) // 2])
        return x.conn.sock
    x.startup()
    initial = sasl_initial(("n,," + x.bare).encode())
    cut = {"startup": 0, "initial-header": 5, "initial-half": len(initial) // 2}
    if step in cut:
        x.conn.send(initial[:cut[step]])
        return x.conn.sock
    if step == "initial-unread":
        x.conn.send(initial)
        return x.conn.sock
    x.first()
    msg, _ = x.final(pw)
    final = sasl_response(msg)
    if step == "first-read":
        return x.conn.sock
    if step == "final-half":
        x.conn.send(final[:len(final) // 2])
        return x.conn.sock
    x.conn.send(final)
    if step == "logged-in":
        reply = read_reply(x.conn)
        while reply[0] == "R":
            reply = read_reply(x.conn)
        assert reply == ("Z",) or user.startswith("ac_nobody"), reply
    return x.conn.sock


def test_disconnects_at_every_step(proxy, roles):
    """Clients of a SCRAM user, a plain-password user and an unknown user (mock) hang up (FIN,
    or RST) at every step of the exchange, mid-message included: no login socket and no
    client is left behind, and logins still work."""
    pf = start(proxy, roles)
    unknown = ("ac_nobody_" + roles.tag, "x")
    for rst in (False, True):
        for user, pw in (roles.sc, roles.pl, unknown):
            for step in STEPS:
                hang_up(run_to_step(pf, user, pw, step), rst)
    pfhelpers.wait_until(lambda: not login_sockets(pf) and not appdb_clients(pf), DEADLINE,
                         "no client left", lambda: repr((login_sockets(pf), appdb_clients(pf))))
    full_login(pf, roles.sc[0], roles.sc[1])
    full_login(pf, roles.pl[0], roles.pl[1])
    finish(pf)


CROWD = 200


def one_login(pf, kind, user, pw, barrier):
    """('in', current_user) or ('refused', sqlstate, message)."""
    barrier.wait(DEADLINE * 3)
    conn = pgwire.Connection(pgwire.open_socket(pf.host, pf.port, DEADLINE * 3))
    try:
        try:
            conn.login(user, "appdb", pw)
        except pgwire.PgError as e:
            return ("refused", e.sqlstate, e.message)
        return ("in", conn.simple_query("SELECT current_user")[0][0])
    finally:
        conn.close()


def test_200_logins_at_once_while_queries_run(proxy, roles):
    """200 SCRAM logins start at once (a barrier): right passwords of a SCRAM-secret user and a
    plain-password user, wrong passwords, unknown users and an md5-only user (mock exchange),
    while a canary client runs queries. Each right login gets in as its own user, every other
    is 28P01 with its own name; the canary never fails."""
    pf = start(proxy, roles)
    can = pfhelpers.Canary(pf, roles.pl[0], "appdb", roles.pl[1]).start()
    kinds = [("sc", roles.sc[0], roles.sc[1]), ("pl", roles.pl[0], roles.pl[1]),
             ("wrong", roles.pl[0], "nope"), ("unknown", "ac_nobody_%d", "nope"),
             ("mock", roles.md[0], roles.md[1])]
    plan = []
    for i in range(CROWD):
        kind, user, pw = kinds[i % len(kinds)]
        plan.append((kind, user % i if "%d" in user else user, pw))
    barrier = threading.Barrier(CROWD)
    with concurrent.futures.ThreadPoolExecutor(max_workers=CROWD) as ex:
        results = list(ex.map(lambda p: one_login(pf, p[0], p[1], p[2], barrier), plan))
    bad = []
    for (kind, user, _), res in zip(plan, results):
        want = ("in", user) if kind in ("sc", "pl") else ("refused", "28P01",
                                                         wrong_password_msg(user))
        if res != want:
            bad.append((kind, user, res))
    assert not bad, bad[:10]
    can.expect_progress()
    can.check()
    finish(pf)


# ---------------------------------------------------------------- md5

def md5_hex(data):
    return hashlib.md5(data).hexdigest()


def md5_answer(host, port, user, respond, timeout=DEADLINE):
    """Startup as user; expects AuthenticationMD5Password, sends respond(salt) (bytes, the
    whole message); returns ('in',), ('E', sqlstate, message) or ('closed',)."""
    conn = pgwire.Connection(pgwire.open_socket(host, port, timeout))
    try:
        conn.send(pgwire.startup_message({"user": user, "database": "appdb"}))
        reply = read_reply(conn, timeout)
        assert reply[:2] == ("R", 5), reply
        conn.send(respond(reply[2][:4]))
        reply = read_reply(conn, timeout)
        if reply[:2] == ("R", 0):
            return ("in",)
        if reply[0] == "E":
            assert pgwire.wait_closed(conn, timeout)
            return ("E", reply[1].get("C"), reply[1].get("M"))
        return reply[:1]
    finally:
        conn.sock.close()


def md5_cases(user, pw):
    inner = md5_hex((pw + user).encode()).encode()

    def right(salt):
        return b"md5" + md5_hex(inner + salt).encode()

    def msg(body):
        return lambda salt: pgwire.message(b"p", body(salt))

    other_salt = b"\0\1\2\3"
    return [
        ("right", msg(lambda s: right(s) + b"\0")),
        ("wrong-password", msg(lambda s: b"md5" + md5_hex(
            md5_hex((pw + "x" + user).encode()).encode() + s).encode() + b"\0")),
        ("uppercase-hex", msg(lambda s: b"md5" + right(s)[3:].upper() + b"\0")),
        ("no-prefix", msg(lambda s: right(s)[3:] + b"\0")),
        ("truncated", msg(lambda s: right(s)[:-1] + b"\0")),
        ("one-more-char", msg(lambda s: right(s) + b"0\0")),
        ("no-nul", msg(lambda s: right(s))),
        ("nul-then-garbage", msg(lambda s: right(s) + b"\0xx\0")),
        ("empty", msg(lambda s: b"\0")),
        ("no-payload", msg(lambda s: b"")),
        ("other-salt", msg(lambda s: right(other_salt if s != other_salt else b"\4\5\6\7")
                           + b"\0")),
        ("pass-the-secret", msg(lambda s: b"md5" + inner + b"\0")),
        ("cleartext", msg(lambda s: pw.encode() + b"\0")),
        ("query-instead", lambda s: pgwire.fe_query("SELECT 1")),
    ]


def test_md5_auth_answers_as_postgres(proxy, postgres, roles):
    """auth_type md5: an md5 auth_file secret (md5_hex2 over the once-fetched MD5) and a plain
    password (pgfunnel makes the md5 secret): the right response logs in; wrong ones, the hex
    in capitals, without the "md5" prefix, one character short or long, without its NUL,
    garbage after it, an empty one, one for another salt, the secret itself, the cleartext
    password or a Query instead: pgfunnel answers each with Postgres' SQLSTATE, and with
    Postgres' message too except where pgfunnel words framing faults its own way (08P01) and
    an empty password (28P01 "password authentication failed", Postgres: "empty password
    returned by client")."""
    bob = ("bob", postgres.passwords["bob"])
    pf = proxy(params={"auth_type": "md5"},
               userlist=dict(roles.userlist, bob=pfhelpers.md5_secret(*bob)))
    pfp = proxy(params={"auth_type": "md5"}, userlist={roles.md[0]: roles.md[1]})
    bad = []
    for target, (user, pw) in ((pf, roles.md), (pf, bob), (pfp, roles.md)):
        for cid, respond in md5_cases(user, pw):
            want = md5_answer(postgres.host, postgres.port, user, respond)
            got = md5_answer(target.host, target.port, user, respond)
            own_words = cid in ("no-nul", "nul-then-garbage", "no-payload", "query-instead",
                                "empty")
            if got[:2] != want[:2] or (got != want and not own_words):
                bad.append("%s %s: pgfunnel %r, Postgres %r" % (user, cid, got, want))
    assert not bad, "\n".join(bad)
    # Logged in for real, with a query.
    conn = pgwire.connect(pf.host, pf.port, roles.md[0], "appdb", roles.md[1])
    assert conn.simple_query("SELECT current_user") == [(roles.md[0],)]
    conn.close()
    finish(pf)
    finish(pfp)


# ---------------------------------------------------------------- a hostile Postgres

FAKE_USER = "fakeuser"
FAKE_PASSWORD = "fake-scram-secret"
EXCHANGE_FAILED = 'SCRAM exchange with the server failed for user "%s"' % FAKE_USER
BAD_SIGNATURE = "the server's SCRAM signature is wrong: not the server we expect"
MALFORMED_AUTH = "malformed authentication request from server"
SERVER_GONE = "server closed the connection during login"
SALT = b"hostile-salt-16b"


def sfirst(nonce="{n}X", salt=None, it="4096", extra=""):
    """A server-first builder: peer -> bytes ({n} in nonce is the client's nonce)."""
    def build(peer):
        s = b64(SALT) if salt is None else salt
        return ("r=%s,s=%s,i=%s%s" % (nonce.format(n=peer.client_nonce), s, it, extra)).encode(
            "latin-1")
    return build


def right_signature(peer, password=FAKE_PASSWORD):
    _, _, server_key = keys(password, peer.salt, peer.iterations)
    without_proof = peer.client_final.rsplit(",p=", 1)[0]
    am = ",".join([peer.client_first_bare, peer.server_first, without_proof]).encode()
    return b64(hmac.digest(server_key, am, "sha256"))


def after_first(server_first):
    """Script: sends server_first(peer) and reports whether pgfunnel answered it or hung up."""
    def script(peer):
        peer.read_startup()
        peer.sasl_start()
        peer.auth(11, server_first(peer))
        try:
            kind, _ = peer.read_message()
        except EOFError:
            return "closed"
        return "answered %s" % kind
    return script


def after_final(server_final, then_ok=False, salt=SALT, iterations=4096):
    """Script: a good server-first, then server_final(peer) (bytes) as SASLFinal."""
    def script(peer):
        peer.read_startup()
        peer.sasl_start()
        peer.sasl_continue(iterations=iterations, salt=salt)
        peer.read_sasl_response()
        peer.auth(12, server_final(peer))
        if then_ok:
            peer.auth(0)
            peer.finish_login()
            return "logged in" if peer.wait_closed(timeout=30) else "left open"
        return "closed" if peer.wait_closed() else "left open"
    return script


def raw_bytes(step, data, close=True):
    """Script: runs up to step ('startup', 'first', 'final'), then sends data and hangs up."""
    def script(peer):
        peer.read_startup()
        if step in ("first", "final"):
            peer.sasl_start()
        if step == "final":
            peer.sasl_continue()
            peer.read_sasl_response()
        if data:
            peer.sock.sendall(data(peer) if callable(data) else data)
        if close:
            peer.sock.shutdown(socket.SHUT_RDWR)
            return "hung up"
        return "closed" if peer.wait_closed() else "left open"
    return script


def r_msg(payload, length=None):
    return b"R" + struct.pack("!I", len(payload) + 4 if length is None else length) + payload


HOSTILE = [
    # server-first: pgfunnel must not answer it, and must tell the client.
    ("nonce-foreign", after_first(sfirst(nonce="AAAAAAAAAAAAAAAAAAAAAAAAfake")), "28P01",
     EXCHANGE_FAILED, "closed"),
    ("nonce-ours-only", after_first(sfirst(nonce="{n}")), "28P01", EXCHANGE_FAILED, "closed"),
    ("nonce-ours-truncated", after_first(lambda p: sfirst(nonce=p.client_nonce[:-1])(p)),
     "28P01", EXCHANGE_FAILED, "closed"),
    ("nonce-nonprintable", after_first(sfirst(nonce="{n}ab\x01cd")), "28P01", EXCHANGE_FAILED,
     "closed"),
    ("nonce-high-byte", after_first(sfirst(nonce="{n}ab\xffcd")), "28P01", EXCHANGE_FAILED,
     "closed"),
    ("nonce-comma", after_first(sfirst(nonce="{n}ab,cd")), "28P01", EXCHANGE_FAILED, "closed"),
    ("salt-empty", after_first(sfirst(salt="")), "28P01", EXCHANGE_FAILED, "closed"),
    ("salt-bad-base64", after_first(sfirst(salt="!!!!")), "28P01", EXCHANGE_FAILED, "closed"),
    ("salt-unpadded", after_first(sfirst(salt=b64(b"12345").rstrip("="))), "28P01",
     EXCHANGE_FAILED, "closed"),
    ("salt-65-bytes", after_first(sfirst(salt=b64(os.urandom(65)))), "28P01", EXCHANGE_FAILED,
     "closed"),
    ("salt-700-bytes", after_first(sfirst(salt=b64(os.urandom(700)))), "28P01",
     EXCHANGE_FAILED, "closed"),
    ("iterations-0", after_first(sfirst(it="0")), "28P01", EXCHANGE_FAILED, "closed"),
    ("iterations-negative", after_first(sfirst(it="-4096")), "28P01", EXCHANGE_FAILED,
     "closed"),
    ("iterations-empty", after_first(sfirst(it="")), "28P01", EXCHANGE_FAILED, "closed"),
    ("iterations-hex", after_first(sfirst(it="0x1000")), "28P01", EXCHANGE_FAILED, "closed"),
    ("iterations-plus", after_first(sfirst(it="+4096")), "28P01", EXCHANGE_FAILED, "closed"),
    ("iterations-int-max-plus-1", after_first(sfirst(it="2147483648")), "28P01",
     EXCHANGE_FAILED, "closed"),
    ("iterations-11-digits", after_first(sfirst(it="99999999999")), "28P01", EXCHANGE_FAILED,
     "closed"),
    ("iterations-int-max", after_first(sfirst(it="2147483647")), "28000",
     "server asks for 2147483647 SCRAM iterations, more than the 600000 pgfunnel allows "
     "(PBKDF2 runs on the event loop)", "closed"),
    ("iterations-missing", after_first(lambda p: ("r=%sX,s=%s" % (p.client_nonce, b64(SALT)))
                                       .encode()), "28P01", EXCHANGE_FAILED, "closed"),
    ("attributes-swapped", after_first(lambda p: ("s=%s,r=%sX,i=4096" % (
        b64(SALT), p.client_nonce)).encode()), "28P01", EXCHANGE_FAILED, "closed"),
    ("truncated-mid-attribute", after_first(lambda p: ("r=%sX,s" % p.client_nonce).encode()),
     "28P01", EXCHANGE_FAILED, "closed"),
    ("trailing-comma", after_first(sfirst(extra=",")), "28P01", EXCHANGE_FAILED, "closed"),
    ("empty", after_first(lambda p: b""), "28P01", EXCHANGE_FAILED, "closed"),
    ("nul-inside", after_first(sfirst(extra=",x=a\0b")), "28P01", EXCHANGE_FAILED, "closed"),
    ("1025-bytes", after_first(lambda p: sfirst(extra=",x=" + "e" * (1025 - len(
        sfirst()(p)) - 3))(p)), "28P01", EXCHANGE_FAILED, "closed"),
    ("200-KB", after_first(sfirst(extra=",x=" + "e" * 200000)), "28P01", EXCHANGE_FAILED,
     "closed"),
    # server-final: a wrong or malformed proof of the server's identity.
    ("signature-wrong", after_final(lambda p: ("v=" + b64(os.urandom(32))).encode()), "28P01",
     BAD_SIGNATURE, "closed"),
    ("signature-other-password", after_final(
        lambda p: ("v=" + right_signature(p, "not-" + FAKE_PASSWORD)).encode()), "28P01",
     BAD_SIGNATURE, "closed"),
    ("signature-one-bit-off", after_final(lambda p: ("v=" + b64(bytes(
        [b64d(right_signature(p))[0] ^ 1]) + b64d(right_signature(p))[1:])).encode()),
     "28P01", BAD_SIGNATURE, "closed"),
    ("signature-31-bytes", after_final(lambda p: ("v=" + b64(b64d(right_signature(p))[:31]))
                                       .encode()), "28P01", BAD_SIGNATURE, "closed"),
    ("signature-33-bytes", after_final(lambda p: ("v=" + b64(b64d(right_signature(p)) + b"\0"))
                                       .encode()), "28P01", BAD_SIGNATURE, "closed"),
    ("signature-bad-base64", after_final(lambda p: b"v=" + b"*" * 44), "28P01", BAD_SIGNATURE,
     "closed"),
    ("signature-empty", after_final(lambda p: b"v="), "28P01", BAD_SIGNATURE, "closed"),
    ("final-empty", after_final(lambda p: b""), "28P01", BAD_SIGNATURE, "closed"),
    ("final-server-error", after_final(lambda p: b"e=invalid-proof"), "28P01", BAD_SIGNATURE,
     "closed"),
    ("final-nul", after_final(lambda p: ("v=" + right_signature(p)).encode() + b"\0"), "28P01",
     BAD_SIGNATURE, "closed"),
    ("final-garbage-after", after_final(lambda p: ("v=%s,garbage" % right_signature(p))
                                        .encode()), "28P01", BAD_SIGNATURE, "closed"),
    ("final-100-KB", after_final(lambda p: ("v=%s,x=%s" % (right_signature(p), "e" * 100000))
                                 .encode()), "28P01", BAD_SIGNATURE, "closed"),
    # Truncated Authentication messages and hang-ups at every step.
    ("auth-2-bytes", raw_bytes("startup", r_msg(b"\0\0"), close=False), "08P01",
     MALFORMED_AUTH, "closed"),
    ("continue-cut-short", raw_bytes("first", r_msg(struct.pack("!I", 11) + b"r=abc",
                                                    length=200)), "08006", SERVER_GONE,
     "hung up"),
    ("final-cut-short", raw_bytes("final", r_msg(struct.pack("!I", 12) + b"v=", length=60)),
     "08006", SERVER_GONE, "hung up"),
    ("gone-after-startup", raw_bytes("startup", b""), "08006", SERVER_GONE, "hung up"),
    ("gone-after-client-first", raw_bytes("first", b""), "08006", SERVER_GONE, "hung up"),
    ("gone-after-client-final", raw_bytes("final", b""), "08006", SERVER_GONE, "hung up"),
]



def tolerant_script(peer):
    """A correct exchange with an odd but valid server-first (1 iteration, a 1-byte salt, an
    extension) and an extension after the signature: pgfunnel logs in."""
    peer.read_startup()
    peer.sasl_start()
    peer.salt, peer.iterations = b"\x07", 1
    peer.nonce = peer.client_nonce + "~!tolerated"
    peer.server_first = "r=%s,s=%s,i=1,x=ext" % (peer.nonce, b64(peer.salt))
    peer.auth(11, peer.server_first.encode())
    peer.read_sasl_response()
    peer.auth(12, ("v=%s,y=ext" % right_signature(peer)).encode())
    peer.auth(0)
    peer.finish_login()
    return "logged in" if peer.wait_closed(timeout=30) else "left open"


def test_hostile_server_during_pgfunnels_scram_login(proxy, postgres):
    """pgfunnel logs in to a fake Postgres with SCRAM (plain password): for each way the fake
    breaks the exchange (nonces that do not extend ours or are not printable, empty, bad,
    unpadded or oversized salts, iteration counts that are 0, negative, empty, hex, past
    INT_MAX or at it, missing or swapped attributes, empty, NUL-bearing, 1025-byte and 200 KB
    server-first messages; wrong, short, long, bad-base64, empty, error, NUL-bearing,
    garbage-trailing and 100 KB server-final messages; truncated Authentication messages;
    hang-ups at each step) the waiting client gets FATAL with the SQLSTATE and message for it,
    pgfunnel's log names it, pgfunnel never answers a bad server-first (the fake sees its
    connection closed), a valid but odd exchange (1 iteration, 1-byte salt, extensions) still
    logs in, a canary on the real Postgres keeps working, and pgfunnel exits cleanly."""
    canary_role = pfhelpers.new_role(postgres, "accan")
    fakes = {}
    try:
        for cid, script, *_ in HOSTILE:
            fakes[cid] = pfhelpers.ScriptedServer(script)
        fakes["tolerated"] = pfhelpers.ScriptedServer(tolerant_script)
        dbs = {"f_" + cid.replace("-", "_"): f.db_entry(user=FAKE_USER, password=FAKE_PASSWORD)
               for cid, f in fakes.items()}
        dbs["canarydb"] = postgres.db_entry("appdb")
        pf = proxy(params={"server_login_retry": 0, "pool_mode": "transaction",
                           "auth_type": "scram-sha-256"},
                   databases=dbs, userlist={canary_role[0]: canary_role[1]})
        can = pfhelpers.Canary(pf, canary_role[0], "canarydb", canary_role[1]).start()
        bad = []
        for cid, _, sqlstate, message, result in HOSTILE:
            db = "f_" + cid.replace("-", "_")
            err, closed = pgwire.login_refused(pf.host, pf.port, canary_role[0], db,
                                               canary_role[1], timeout=DEADLINE)
            got = (err.severity, err.sqlstate, err.message, closed)
            if got != ("FATAL", sqlstate, message, True):
                bad.append("%s: client got %r" % (cid, got))
            fake = fakes[cid]
            pfhelpers.wait_for(lambda: fake.results or fake.errors, DEADLINE)
            if fake.results != [result] or fake.errors:
                bad.append("%s: fake %r %r" % (cid, fake.results, fake.errors))
            said = ("closing because: server closed the connection" if message == SERVER_GONE
                    else "server login failed: " + message)
            if not re.search(r"S-0x[0-9a-f]+: %s/%s@\S+ %s" % (db, FAKE_USER, re.escape(said)),
                             pf.log_text()):
                bad.append("%s: no log line" % cid)
            can.expect_progress()
        assert not bad, "\n".join(bad)
        conn = pgwire.connect(pf.host, pf.port, canary_role[0], "f_tolerated", canary_role[1])
        conn.close()
        can.check()
        finish(pf)
        # The server stayed in its pool until pgfunnel exited.
        pfhelpers.wait_for(lambda: fakes["tolerated"].results, DEADLINE)
        assert fakes["tolerated"].results == ["logged in"], fakes["tolerated"].errors
    finally:
        for f in fakes.values():
            f.stop()


# ---------------------------------------------------------------- log timestamps

LINE_HEAD = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})\.(\d{3}) (\S+) \[(\d+)\] [A-Z]+ ")


@pytest.mark.parametrize("tz,zone,offset", [
    ("PFT-5:30", "PFT", 5.5 * 3600),
    ("<-03>3", "-03", -3 * 3600),
    ("<PgfunnelLongZoneNameXYZ>-1", "PgfunnelLongZoneNameXYZ", 3600),
    ("<PgfunnelZoneNameLongerThanTheSixtyFourBytesThatTheCacheHoldsForAZone>-1", "+0100", 3600),
], ids=["half-hour-east", "numeric-west", "long-zone-name", "overlong-zone-name"])
def test_log_timestamps_across_second_boundaries(proxy, roles, monkeypatch, tz, zone, offset):
    """pgfunnel under TZ=tz logs refused logins until its lines span at least three distinct
    seconds: every line starts "YYYY-MM-DD HH:MM:SS.mmm <zone> [pid] LEVEL ", the zone is the
    one TZ names, the local time is the wall clock shifted by the zone's offset (within the
    test's own start and end, give or take a second), and the times never go backwards.
    Bug (b83484f, log.c pf_log_format_time): the cached zone had room for 15 characters and a
    longer name (TZ="<PgfunnelLongZoneNameXYZ>-1") was dropped, leaving "...:58.415  [pid]"
    with no zone; now the whole name up to 63 characters, the UTC offset past that."""
    monkeypatch.setenv("TZ", tz)
    t0 = time.time()
    pf = start(proxy, roles)
    seconds = set()
    deadline = time.monotonic() + DEADLINE
    i = 0
    while len(seconds) < 3:
        assert time.monotonic() < deadline, "log lines of only %r" % seconds
        err, _ = pgwire.login_refused(pf.host, pf.port, "ac_nobody_%d" % i, "appdb", "x")
        assert err.sqlstate == "28P01"
        i += 1
        seconds = {m.group(1) for m in map(LINE_HEAD.match, pf.log_text().splitlines()) if m}
    t1 = time.time()
    finish(pf)
    last = None
    lines = [ln for ln in pf.log_text().splitlines() if ln.strip()]
    assert len(lines) > 3
    for line in lines:
        m = LINE_HEAD.match(line)
        assert m, "log line without the timestamp format: %r" % line
        assert m.group(3) == zone, line
        local = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").replace(
            microsecond=int(m.group(2)) * 1000, tzinfo=datetime.timezone.utc)
        utc = local.timestamp() - offset
        assert t0 - 1 <= utc <= t1 + 1, (line, t0, t1)
        assert last is None or utc >= last, line
        last = utc


# ---------------------------------------------------------------- parameter names

def test_parameter_names_fold_ascii_letters_only(proxy, roles):
    """Startup parameter names are matched without regard to ASCII case (pf_strcaseeq):
    DATESTYLE, timezone, APPLICATION_NAME and a track_extra_parameters name in another case
    reach the server; names that differ only in non-ASCII letters (a dotless or dotted Turkish
    I, a Latin-1 byte) or in the punctuation next to the letters ('[' for '{') are not any
    known parameter: 0A000 "unsupported startup parameter"."""
    pf = start(proxy, roles, track_extra_parameters="intervalSTYLE")
    user, pw = roles.pl
    conn = pgwire.Connection(pgwire.open_socket(pf.host, pf.port, DEADLINE))
    conn.login(user, "appdb", pw, options={"DATESTYLE": "SQL, DMY", "timezone": "Asia/Kolkata",
                                           "APPLICATION_NAME": "ac-app",
                                           "INTERVALSTYLE": "iso_8601"})
    rows = conn.simple_query("SELECT current_setting('DateStyle'), current_setting('TimeZone'),"
                             " current_setting('application_name'),"
                             " current_setting('IntervalStyle')")
    assert rows == [("SQL, DMY", "Asia/Kolkata", "ac-app", "iso_8601")], rows
    conn.close()
    for name in ("t\u0131mezone", "T\u0130MEZONE", "datestyl\u00e9", "application[name"):
        conn = pgwire.Connection(pgwire.open_socket(pf.host, pf.port, DEADLINE))
        try:
            conn.send(pgwire.startup_message({"user": user, "database": "appdb", name: "x"}))
            got = refusal(conn)
        finally:
            conn.sock.close()
        assert got == ("0A000", "unsupported startup parameter: " + name), got
    finish(pf)


def test_plain_password_cache_follows_reloads(proxy, postgres, roles):
    """A plain auth_file password: its derived secret is cached (the same salt login after
    login); RELOAD with another scram_iterations gives server-first that count and a fresh
    salt; RELOAD with another password (changed in Postgres too) refuses the old one with 28P01
    and logs the new one in: no login is ever served from a stale cache entry, and the
    ServerSignature is right each time."""
    name, pw = pfhelpers.new_role(postgres, "acrl")
    pf = start(proxy, roles)
    userlist = dict(roles.userlist, postgres=postgres.passwords["postgres"], **{name: pw})
    pf.write_userlist(userlist)
    pfhelpers.console(pf, "RELOAD")
    s1 = full_login(pf, name, pw)
    assert full_login(pf, name, pw) == s1 and s1[1] == SCRAM_ITERATIONS
    pf.write_ini(params=dict(pf.params, scram_iterations=3001))
    pfhelpers.console(pf, "RELOAD")
    s2 = full_login(pf, name, pw)
    assert s2[1] == 3001 and s2[0] != s1[0], (s1, s2)
    new_pw = pw + "-new"
    with postgres.connect(autocommit=True) as c:
        c.execute("ALTER ROLE %s PASSWORD '%s'" % (name, new_pw))
    userlist[name] = new_pw
    pf.write_userlist(userlist)
    pfhelpers.console(pf, "RELOAD")
    err, closed = pgwire.login_refused(pf.host, pf.port, name, "appdb", pw, timeout=DEADLINE)
    assert (err.sqlstate, err.message, closed) == ("28P01", wrong_password_msg(name), True)
    s3 = full_login(pf, name, new_pw)
    assert s3[1] == 3001 and s3[0] not in (s1[0], s2[0])
    finish(pf)
