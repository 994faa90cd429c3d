"""Malformed SCRAM messages get the same answer from pgfunnel as from Postgres.

Each case logs in over a raw socket, once straight to the postgres fixture and once through a
pgfunnel with auth_type = scram-sha-256, and sends a SASLInitialResponse and (when the server
continues) a SASLResponse built from what the server sent. The outcome, the ErrorResponse's
severity, SQLSTATE, message and detail (or a successful login), must be equal on both sides,
and so must whether the server then closes the connection.

The cases follow Postgres' own parsers (src/backend/libpq/auth-sasl.c CheckSASLAuth and
auth-scram.c read_client_first_message / read_client_final_message, pqformat.c's message
readers): unknown mechanism, framing of the SASLInitialResponse, empty or NUL-bearing data,
the gs2 header (flags n/y/p, authzid), mandatory extensions, missing, misplaced and malformed
attributes, printable nonces, channel-binding data in the final message, nonce mismatch,
malformed proofs, trailing garbage, messages at and one byte past Postgres' 1024-byte limit,
other message types, and what Postgres accepts although it is unusual (empty or very long
client nonce, trailing commas, extensions, no initial response, the 'y' flag without TLS).
Wrong passwords and unknown users must give the same 28P01. pgfunnel holds alice's plain
password, or the SCRAM secret Postgres stored for her.
"""

import base64
import hashlib
import hmac
import struct

import pytest

import pgwire

DB = "appdb"
USER = "alice"
MECH = b"SCRAM-SHA-256"
CNONCE = "rOprNGfwEbeRWgbNEkqO"
DEADLINE = 10.0


# ---------------------------------------------------------------- building messages


def sasl_initial(data, mech=MECH, length=None):
    """A SASLInitialResponse: mechanism, Int32 length (len(data) unless given), data."""
    n = len(data) if length is None else length
    return pgwire.message(b"p", mech + b"\0" + struct.pack("!i", n) + data)


def sasl_response(data):
    return pgwire.message(b"p", data)


def first(bare="n=,r=" + CNONCE, header="n,,"):
    return sasl_initial((header + bare).encode())


class Exchange:
    """What a final-message builder needs: the password, client-first-bare, server-first."""

    def __init__(self, password, bare, server_first, header="n,,"):
        self.password = password
        self.bare = bare
        self.server_first = server_first
        self.header = header
        attrs = dict(a.split("=", 1) for a in server_first.split(","))
        self.nonce = attrs["r"]
        self.salt = base64.b64decode(attrs["s"])
        self.iterations = int(attrs["i"])

    def proof(self, without_proof, password=None):
        pw = (self.password if password is None else password).encode()
        salted = hashlib.pbkdf2_hmac("sha256", pw, self.salt, self.iterations)
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        auth = ",".join([self.bare, self.server_first, without_proof]).encode()
        sig = hmac.digest(stored_key, auth, "sha256")
        return base64.b64encode(bytes(a ^ b for a, b in zip(client_key, sig))).decode()

    def final(self, c="biws", nonce=None, ext="", password=None, proof=None, tail=""):
        """c=<c>,r=<nonce><ext>,p=<right proof unless given><tail> as a SASLResponse."""
        wo = "c=%s,r=%s%s" % (c, self.nonce if nonce is None else nonce, ext)
        p = self.proof(wo, password) if proof is None else proof
        return sasl_response(("%s,p=%s%s" % (wo, p, tail)).encode())


# ---------------------------------------------------------------- cases
#
# (id, first message (bytes), final builder (Exchange -> bytes) or None, user or None)
# A final builder runs only if the server continued; the first message may be a list of
# messages sent one after another, each answered, for the no-initial-response case.

def good(x):
    return x.final()


PROOF31 = base64.b64encode(b"\1" * 31).decode()
LONG = "x" * 1100
# Postgres reads SASL messages of at most 1024 bytes, the length word included.
PG_MAX_SASL = 1024


def first_of_length(n):
    """client-first in a SASLInitialResponse whose length word is n (a long nonce)."""
    return first("n=,r=" + "N" * (n - 4 - len(MECH) - 5 - len("n,,n=,r=")))


def final_of_length(n):
    """A right client-final, padded with an extension so that its length word is n."""
    def build(x):
        fixed = len("c=biws,r=%s,p=%s" % (x.nonce, "P" * 44)) + len(",x=")
        return x.final(ext=",x=" + "e" * (n - 4 - fixed))
    return build

CASES = [
    # -- SASLInitialResponse framing and mechanism (auth-sasl.c, pqformat.c)
    ("mechanism-unknown", sasl_initial(b"n,,n=,r=abc", mech=b"BOGUS"), None, None),
    ("mechanism-plus-without-tls", sasl_initial(b"n,,n=,r=abc", mech=b"SCRAM-SHA-256-PLUS"),
     None, None),
    ("mechanism-empty", sasl_initial(b"n,,n=,r=abc", mech=b""), None, None),
    ("mechanism-lowercase", sasl_initial(b"n,,n=,r=abc", mech=b"scram-sha-256"), None, None),
    ("mechanism-unterminated", pgwire.message(b"p", MECH), None, None),
    ("mechanism-unknown-no-length", pgwire.message(b"p", b"BOGUS\0"), None, None),
    ("length-missing", pgwire.message(b"p", MECH + b"\0\0\0"), None, None),
    ("length-too-big", sasl_initial(b"n,,n=,r=abc", length=12), None, None),
    ("length-too-small", sasl_initial(b"n,,n=,r=abc", length=10), None, None),
    ("length-negative", sasl_initial(b"n,,n=,r=abc", length=-2), None, None),
    ("length-minus-one-with-data", sasl_initial(b"n,,n=,r=abc", length=-1), None, None),
    ("data-empty", sasl_initial(b""), None, None),
    ("data-nul", sasl_initial(b"n,,n=,r=a\0bc"), None, None),
    ("first-too-long", first("n=,r=" + LONG), None, None),
    ("first-longest", first_of_length(PG_MAX_SASL), None, None),  # continues
    ("first-one-byte-too-long", first_of_length(PG_MAX_SASL + 1), None, None),
    ("no-initial-response", [sasl_initial(b"", length=-1),
                             sasl_response(("n,,n=,r=" + CNONCE).encode())], good, None),
    ("no-initial-response-then-empty", [sasl_initial(b"", length=-1), sasl_response(b"")],
     None, None),
    ("not-a-password-message", pgwire.message(b"Q", b"SELECT 1\0"), None, None),
    # -- gs2 header (read_client_first_message)
    ("flag-unknown", first(header="x,,"), None, None),
    ("flag-n-no-comma", first(header="nx,"), None, None),
    ("flag-n-alone", sasl_initial(b"n"), None, None),
    ("flag-y-no-comma", sasl_initial(b"y"), None, None),
    ("flag-p-without-tls", first(header="p=tls-server-end-point,,"), None, None),
    ("flag-p-bad-type", first(header="p=tls-unique,,"), None, None),
    ("flag-p-no-equals", first(header="p,,"), None, None),
    ("authzid", first(header="n,a=bob,"), None, None),
    ("header-garbage", first(header="n,x,"), None, None),
    ("header-single-comma", first(header="n,"), None, None),
    ("flag-y", first(header="y,,"), lambda x: x.final(c="eSws"), None),
    ("flag-y-final-biws", first(header="y,,"), lambda x: x.final(c="biws"), None),
    # -- client-first-message-bare
    ("mandatory-extension", first("m=ext,n=,r=" + CNONCE), None, None),
    ("username-missing", first("r=" + CNONCE), None, None),
    ("username-no-equals", first("n"), None, None),
    ("nonce-missing", first("n="), None, None),
    ("nonce-wrong-attribute", first("n=,x=" + CNONCE), None, None),
    ("nonce-no-equals", first("n=,r"), None, None),
    ("nonce-space", first("n=,r=ab c"), None, None),
    ("nonce-del", first("n=,r=ab\x7f"), None, None),
    ("nonce-non-ascii", sasl_initial(b"n,,n=,r=ab\xc3\xa4"), None, None),
    ("nonce-empty", first("n=,r="), good, None),
    ("nonce-trailing-comma", first("n=,r=%s," % CNONCE), good, None),
    ("username-odd", first("n=b=2Cob,r=" + CNONCE), good, None),
    ("extension", first("n=,r=%s,x=1,y=2" % CNONCE), good, None),
    ("extension-bad-letter", first("n=,r=%s,1=x" % CNONCE), None, None),
    ("extension-no-equals", first("n=,r=%s,x" % CNONCE), None, None),
    ("extension-empty", first("n=,r=%s,,x=1" % CNONCE), None, None),
    # -- client-final-message (read_client_final_message, scram_exchange)
    ("final-ok", first(), good, None),
    ("final-ok-trailing-comma", first(), lambda x: x.final(tail=","), None),
    ("final-ok-extension", first(), lambda x: x.final(ext=",x=1"), None),
    ("final-empty", first(), lambda x: sasl_response(b""), None),
    ("final-nul", first(), lambda x: sasl_response(b"c=biws,r=\0"), None),
    ("final-c-missing", first(),
     lambda x: sasl_response(("r=%s,p=%s" % (x.nonce, PROOF31)).encode()), None),
    ("final-c-no-equals", first(), lambda x: sasl_response(b"c"), None),
    ("final-c-eSws-with-n", first(), lambda x: x.final(c="eSws"), None),
    ("final-c-bogus", first(), lambda x: x.final(c="bogus"), None),
    ("final-c-cbind-data", first(), lambda x: x.final(c="cD10bHMtc2VydmVyLWVuZC1wb2ludCws"),
     None),
    ("final-r-missing", first(),
     lambda x: sasl_response(("c=biws,p=" + PROOF31).encode()), None),
    ("final-nonce-wrong", first(), lambda x: x.final(nonce=x.nonce + "x"), None),
    ("final-nonce-client-part-only", first(), lambda x: x.final(nonce=CNONCE), None),
    ("final-proof-missing", first(),
     lambda x: sasl_response(("c=biws,r=" + x.nonce).encode()), None),
    ("final-proof-missing-ext", first(),
     lambda x: sasl_response(("c=biws,r=%s,x=1" % x.nonce).encode()), None),
    ("final-proof-bad-base64", first(), lambda x: x.final(proof="!!!!" * 11), None),
    ("final-proof-short", first(), lambda x: x.final(proof=PROOF31), None),
    ("final-proof-unpadded", first(), lambda x: x.final(proof=x.proof(
        "c=biws,r=" + x.nonce).rstrip("=")), None),
    ("final-proof-empty", first(), lambda x: x.final(proof=""), None),
    ("final-proof-space", first(), lambda x: x.final(proof=" " + x.proof("c=biws,r=" + x.nonce)),
     None),
    ("final-garbage-after-proof", first(), lambda x: x.final(tail=",x=1"), None),
    ("final-proof-bad-and-nonce-wrong", first(),
     lambda x: x.final(nonce="nope", proof=PROOF31), None),
    ("final-c-bad-and-nonce-wrong", first(), lambda x: x.final(c="eSws", nonce="nope"), None),
    ("final-too-long", first(), lambda x: x.final(ext=",x=" + LONG), None),
    ("final-longest", first(), final_of_length(PG_MAX_SASL), None),
    ("final-one-byte-too-long", first(), final_of_length(PG_MAX_SASL + 1), None),
    ("final-not-a-password-message", first(),
     lambda x: pgwire.message(b"Q", b"SELECT 1\0"), None),
    ("final-bad-char-attribute", first(),
     lambda x: sasl_response(("c=biws,r=%s,\x01=1,p=%s" % (x.nonce, PROOF31)).encode()), None),
    # -- passwords and users
    ("wrong-password", first(), lambda x: x.final(password="not-it"), None),
    ("wrong-password-nonce-wrong", first(),
     lambda x: x.final(password="not-it", nonce=x.nonce + "x"), None),
    ("unknown-user", first(), lambda x: x.final(password="whatever"), "no_such_user"),
    ("unknown-user-malformed", first(header="x,,"), None, "no_such_user"),
    ("unknown-user-proof-short", first(), lambda x: x.final(proof=PROOF31), "no_such_user"),
]


# ---------------------------------------------------------------- running a case


def read_reply(conn):
    """The server's answer to a SASL message: ('E', fields), ('R', code, data) or
    ('closed',) when it hung up without a word."""
    while True:
        try:
            kind, payload = conn.read_message(DEADLINE)
        except pgwire.ProtocolError:
            return ("closed",)
        if kind == "E":
            return ("E", pgwire.parse_fields(payload))
        if kind == "R":
            return ("R", struct.unpack("!I", payload[:4])[0], payload[4:])
        if kind == "N":
            continue
        return ("unexpected", kind)


def outcome_of(reply):
    if reply[0] == "E":
        f = reply[1]
        return ("error", f.get("S"), f.get("C"), f.get("M"), f.get("D"))
    return reply[:2]


def run_case(host, port, password, case, user=None):
    """Plays one case; returns (outcome, closed afterwards)."""
    _, msgs, final, case_user = case
    conn = pgwire.Connection(pgwire.open_socket(host, port, DEADLINE))
    try:
        conn.send(pgwire.startup_message({"user": case_user or user or USER, "database": DB}))
        reply = read_reply(conn)
        assert reply[:2] == ("R", 10), reply  # AuthenticationSASL
        sent = [msgs] if isinstance(msgs, bytes) else msgs
        for msg in sent:
            conn.send(msg)
            reply = read_reply(conn)
            if reply[:2] != ("R", 11):
                return outcome_of(reply), pgwire.wait_closed(conn, DEADLINE)
        if final is None:
            return ("continued",), False
        last = sent[-1]
        # client-first is the data of the last message sent: after the mechanism and length
        # in a SASLInitialResponse, the whole payload of a SASLResponse.
        payload = last[5:]
        data = payload[len(MECH) + 5:] if payload.startswith(MECH + b"\0") else payload
        header_end = data.index(b",", data.index(b",") + 1) + 1
        x = Exchange(password, data[header_end:].decode(), reply[2].decode(),
                     data[:header_end].decode())
        conn.send(final(x))
        reply = read_reply(conn)
        if reply[:2] == ("R", 12):
            reply = read_reply(conn)
            if reply[:2] == ("R", 0):
                return ("ok",), False
        return outcome_of(reply), pgwire.wait_closed(conn, DEADLINE)
    finally:
        conn.sock.close()


# ---------------------------------------------------------------- the test

# The secret pgfunnel holds for alice: her plain password (pgfunnel makes a SCRAM secret from
# it) or the SCRAM secret Postgres stored. Client-first parsing does not depend on it, so only
# the cases that reach the final message run with both.
PARAMS = [(c, "plain") for c in CASES] + [(c, "scram") for c in CASES if c[2] is not None]


@pytest.fixture(scope="module")
def alice_scram_secret(postgres):
    with postgres.connect(autocommit=True) as conn:
        return conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s",
                            (USER,)).fetchone()[0]


@pytest.mark.parametrize("case,secret", PARAMS, ids=["%s-%s" % (c[0], k) for c, k in PARAMS])
def test_same_answer_as_postgres(proxy, postgres, alice_scram_secret, case, secret):
    pw = postgres.passwords[USER]
    want = run_case(postgres.host, postgres.port, pw, case)
    pf = proxy(params={"auth_type": "scram-sha-256"},
               userlist={USER: alice_scram_secret if secret == "scram" else pw})
    got = run_case(pf.host, pf.port, pw, case)
    assert got == want, "pgfunnel %r, Postgres %r" % (got, want)


def test_cases_cover_every_answer(postgres):
    """The table is not vacuous: Postgres refuses with 08P01 (with and without detail), 0A000
    and 28P01, and accepts the unusual-but-valid messages."""
    pw = postgres.passwords[USER]
    seen = {}
    for c in CASES:
        out, _ = run_case(postgres.host, postgres.port, pw, c)
        key = out[:3] + ((out[4] is not None,) if out[0] == "error" else ())
        seen.setdefault(key, c[0])
    assert set(seen) >= {("ok",), ("error", "FATAL", "08P01", True),
                         ("error", "FATAL", "08P01", False), ("error", "FATAL", "0A000", False),
                         ("error", "FATAL", "28P01", False)}, seen


if __name__ == "__main__":
    import sys
    host, port, password = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    for c in CASES:
        print(c[0], run_case(host, port, password, c))
