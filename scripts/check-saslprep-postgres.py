#!/usr/bin/env python3
"""End-to-end check of pf_saslprep against a real PostgreSQL: for thousands of passwords,
Postgres builds a SCRAM verifier (ALTER ROLE ... PASSWORD, so pg_saslprep runs inside the
server) and we derive the same keys from the salt and iteration count, with the password
prepared by pf_saslprep (through the saslprep_dump test helper) and PBKDF2 from hashlib.
Every StoredKey and ServerKey must match.

The passwords: the interesting cases of tests/unit/test_saslprep.c, invalid UTF-8, and a
seeded random mix of characters that SASLprep maps, normalizes, prohibits or bidi-checks.
It connects to a database created with ENCODING 'SQL_ASCII' (made if missing) so that
passwords that are not UTF-8 reach the server unchanged.

This is a development tool, not part of the test suite (it needs a running Postgres 15 you
own; never a production server: it creates and alters a role). Example, as the Postgres user:

  initdb -D /tmp/pg -U postgres -A trust && pg_ctl -D /tmp/pg -o "-c listen_addresses='' \\
      -c unix_socket_directories=/tmp/pg -p 54329" -w start
  scripts/check-saslprep-postgres.py build/tests/saslprep_dump "host=/tmp/pg port=54329" 3000
"""

import base64
import hashlib
import hmac
import random
import subprocess
import sys

import psycopg

ROLE = "pf_saslprep_check"
DB = "pf_saslprep_sqlascii"

INTERESTING = [
    "\u2168", "e\u0301", "pass\u00adword", "pass\u00a0word", "a\u200bb", "\u1100\u1161\u11a8",
    "\u2168\u0007", "\u05d0\u2168", "a\u0340", "\ufb1d", "\u00ad", "\uff50\uff41\uff53\uff53",
    "\ufb01", "p\u00e4ssw\u00f6rd", "I\u00adX", "\u00aa", "\u0627\u0661\u0628", "\u0627a\u0628",
    "\u0661\u0627", "a\ue000", "\U000e0041x\u00e9", "\u0221\u00e9", "\u3000x\u3000",
    "\u00a8", "\u1e9b\u0323", "\u0041\u030a", "\u212b", "\uac00\u11a8", "\ufdfa",
]
INVALID = [b"caf\xe9", b"\xc3", b"a\xed\xa0\x80b", b"\xf4\x90\x80\x80", b"\xc0\xaf\xc3\xa9"]
POOL = ("aAzZ09 .-\u00e9\u00e4\u00c5\u00df\u00a0\u00ad\u200b\u2000\u3000\u2168\ufb01\uff21"
        "\u0301\u0308\u0323\u0345\u031b\u0340\u1100\u1161\u11a8\uac00\u05d0\u05d1\u05b4\u0627"
        "\u0661\u0660\ufb1d\u212b\u00aa\u00b5\u2126\u1e9b\u0007\u007f\u0085\u2028\ue000\ufdd0"
        "\U0001d400\U0001f600\u0221\u2fff\ufeff\u180e\u200e\u0f73\u0f75\u0f71\u00bd\u2474")


def passwords(n):
    rnd = random.Random(4013)
    out = [s.encode() for s in INTERESTING] + INVALID
    while len(out) < n:
        out.append("".join(rnd.choice(POOL) for _ in range(rnd.randint(1, 6))).encode())
    return out


def keys(prepared, salt, iterations):
    salted = hashlib.pbkdf2_hmac("sha256", prepared, salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    return (hashlib.sha256(client_key).digest(),
            hmac.new(salted, b"Server Key", "sha256").digest())


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    helper, dsn = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 3000
    with psycopg.connect(dsn, dbname="postgres", autocommit=True) as c:
        if not c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB,)).fetchone():
            c.execute("CREATE DATABASE %s ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' "
                      "TEMPLATE template0" % DB)
    pws = passwords(n)
    feed = "".join(p.hex() + "\n" for p in pws).encode()
    lines = subprocess.run([helper], input=feed, stdout=subprocess.PIPE,
                           check=True).stdout.decode().splitlines()
    bad = 0
    results = {}
    with psycopg.connect(dsn, dbname=DB, autocommit=True, client_encoding="SQL_ASCII") as c:
        c.execute("DROP ROLE IF EXISTS " + ROLE)
        c.execute("CREATE ROLE " + ROLE)
        c.execute("SET password_encryption = 'scram-sha-256'")
        for pw, line in zip(pws, lines):
            rc, _, hexout = line.partition(" ")
            prepared = bytes.fromhex(hexout)
            results[rc] = results.get(rc, 0) + 1
            c.execute(b"ALTER ROLE " + ROLE.encode() + b" PASSWORD '" +
                      pw.replace(b"'", b"''") + b"'")
            secret = c.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s",
                               (ROLE,)).fetchone()[0]
            if isinstance(secret, bytes):
                secret = secret.decode()
            # SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>
            params, stored_server = secret.split("$")[1:]
            iterations, salt = params.split(":")
            stored, server = stored_server.split(":")
            want = (base64.b64decode(stored), base64.b64decode(server))
            if keys(prepared, base64.b64decode(salt), int(iterations)) != want:
                bad += 1
                if bad <= 20:
                    print("MISMATCH password %s: pf_saslprep result %s -> %s" %
                          (pw.hex(), rc, hexout))
        c.execute("DROP ROLE " + ROLE)
    print("%d passwords, %d mismatches; pf_saslprep results: %s" % (len(pws), bad, results))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
