"""Helpers of tests/bench/run.py that need the PostgreSQL wire protocol: SCRAM secrets, an asyncio
client that logs in with SCRAM-SHA-256 and runs simple queries, and the "idle-memory" driver
(thousands of logged-in idle clients in one process). Stdlib only.

    secret = scram_secret("pw", 16)          # SCRAM-SHA-256$16:<salt>$<StoredKey>:<ServerKey>
    conn = await login("127.0.0.1", port, "bench16", "pgbench", "pw")
    cols, rows = await conn.query("SELECT 1")
    await conn.close()

The client follows the idea of tests/integration/pgwire.py (same SCRAM steps, RFC 5802/7677 as
PostgreSQL does them, no channel binding), written for asyncio so that one process can hold
thousands of connections.
"""

import asyncio
import base64
import hashlib
import hmac
import os
import struct

PROTOCOL_3_0 = 196608


class WireError(Exception):
    """A login or query failed: an ErrorResponse (fields in .fields) or a protocol surprise."""

    def __init__(self, msg, fields=None):
        super().__init__(msg)
        self.fields = fields or {}


def b64(data):
    return base64.b64encode(data).decode("ascii")


def scram_keys(password, salt, iterations):
    """(ClientKey, StoredKey, ServerKey) of password (ASCII: SASLprep is the identity)."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    return client_key, stored_key, server_key


def scram_secret(password, iterations, salt=None):
    """The secret PostgreSQL stores for password with password_encryption = scram-sha-256:
    SCRAM-SHA-256$<iterations>:<salt b64>$<StoredKey b64>:<ServerKey b64> (16-byte random salt,
    as PostgreSQL makes it). PostgreSQL takes it verbatim in CREATE ROLE ... PASSWORD, and the
    poolers take it as an auth_file entry."""
    salt = os.urandom(16) if salt is None else salt
    _, stored_key, server_key = scram_keys(password, salt, iterations)
    return "SCRAM-SHA-256$%d:%s$%s:%s" % (iterations, b64(salt), b64(stored_key), b64(server_key))


def _message(kind, payload=b""):
    return kind + struct.pack("!I", len(payload) + 4) + payload


def _fields(payload):
    out = {}
    for part in payload.split(b"\0"):
        if part:
            out[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return out


class Conn:
    def __init__(self, reader, writer):
        self.reader = reader
        self.writer = writer

    async def read_message(self):
        head = await self.reader.readexactly(5)
        kind = chr(head[0])
        (length,) = struct.unpack("!I", head[1:])
        payload = await self.reader.readexactly(length - 4) if length > 4 else b""
        return kind, payload

    async def query(self, sql):
        """Simple query: (column names, rows of text values); an ErrorResponse raises WireError
        once ReadyForQuery has arrived."""
        self.writer.write(_message(b"Q", sql.encode("utf-8") + b"\0"))
        await self.writer.drain()
        cols, rows, err = [], [], None
        while True:
            kind, payload = await self.read_message()
            if kind == "T":
                (n,) = struct.unpack("!H", payload[:2])
                pos, cols = 2, []
                for _ in range(n):
                    end = payload.index(b"\0", pos)
                    cols.append(payload[pos:end].decode())
                    pos = end + 1 + 18
            elif kind == "D":
                (n,) = struct.unpack("!H", payload[:2])
                pos, row = 2, []
                for _ in range(n):
                    (ln,) = struct.unpack("!i", payload[pos:pos + 4])
                    pos += 4
                    if ln < 0:
                        row.append(None)
                    else:
                        row.append(payload[pos:pos + ln].decode("utf-8", "replace"))
                        pos += ln
                rows.append(row)
            elif kind == "E":
                err = _fields(payload)
            elif kind == "Z":
                if err:
                    raise WireError("%s: %s" % (err.get("C"), err.get("M")), err)
                return cols, rows

    async def close(self):
        try:
            self.writer.write(_message(b"X"))
            self.writer.close()
            await self.writer.wait_closed()
        except (OSError, ConnectionError):
            pass

    def abort(self):
        self.writer.transport.abort()


async def login(host, port, user, dbname, password):
    """A logged-in Conn (SCRAM-SHA-256, MD5 or cleartext as asked; trust too), at ReadyForQuery."""
    reader, writer = await asyncio.open_connection(host, port)
    conn = Conn(reader, writer)
    try:
        params = b"user\0" + user.encode() + b"\0database\0" + dbname.encode() + b"\0\0"
        writer.write(struct.pack("!II", len(params) + 8, PROTOCOL_3_0) + params)
        await writer.drain()
        first_bare = auth_message = server_sig = None
        while True:
            kind, payload = await conn.read_message()
            if kind == "E":
                f = _fields(payload)
                raise WireError("login refused: %s %s" % (f.get("C"), f.get("M")), f)
            if kind == "R":
                (code,) = struct.unpack("!I", payload[:4])
                if code == 0:
                    continue
                if code == 3:
                    writer.write(_message(b"p", password.encode() + b"\0"))
                elif code == 5:
                    inner = hashlib.md5(password.encode() + user.encode()).hexdigest()
                    outer = hashlib.md5(inner.encode() + payload[4:8]).hexdigest()
                    writer.write(_message(b"p", b"md5" + outer.encode() + b"\0"))
                elif code == 10:
                    mechs = [m.decode() for m in payload[4:].split(b"\0") if m]
                    if "SCRAM-SHA-256" not in mechs:
                        raise WireError("no SCRAM-SHA-256 among %r" % mechs)
                    cnonce = b64(os.urandom(18))
                    first_bare = "n=,r=" + cnonce
                    first = ("n,," + first_bare).encode()
                    writer.write(_message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first))
                                          + first))
                elif code == 11:
                    server_first = payload[4:].decode()
                    attrs = dict(x.split("=", 1) for x in server_first.split(","))
                    nonce = attrs["r"]
                    if not nonce.startswith(first_bare[5:]):
                        raise WireError("server nonce does not extend ours")
                    client_key, stored_key, server_key = scram_keys(
                        password, base64.b64decode(attrs["s"]), int(attrs["i"]))
                    without_proof = "c=biws,r=" + nonce
                    auth_message = ",".join([first_bare, server_first, without_proof]).encode()
                    sig = hmac.digest(stored_key, auth_message, "sha256")
                    proof = bytes(x ^ y for x, y in zip(client_key, sig))
                    server_sig = b64(hmac.digest(server_key, auth_message, "sha256"))
                    writer.write(_message(b"p", (without_proof + ",p=" + b64(proof)).encode()))
                elif code == 12:
                    attrs = dict(x.split("=", 1) for x in payload[4:].decode().split(","))
                    if attrs.get("v") != server_sig:
                        raise WireError("SCRAM server signature mismatch")
                else:
                    raise WireError("unsupported authentication request %d" % code)
                await writer.drain()
            elif kind == "Z":
                return conn
            elif kind not in "SKN":
                raise WireError("unexpected message %r during login" % kind)
    except BaseException:
        conn.abort()
        raise


async def pool_clients(port, admin_user, admin_password, dbname, user):
    """(cl_active, cl_waiting, used_clients) from the pooler's admin console: SHOW POOLS summed
    over the rows of (dbname, user), and SHOW LISTS used_clients (None if absent)."""
    conn = await login("127.0.0.1", port, admin_user, "pgbouncer", admin_password)
    try:
        cols, rows = await conn.query("SHOW POOLS")
        active = waiting = 0
        for row in rows:
            r = dict(zip(cols, row))
            if r.get("database") == dbname and r.get("user") == user:
                active += int(r.get("cl_active") or 0)
                waiting += int(r.get("cl_waiting") or 0)
        cols, rows = await conn.query("SHOW LISTS")
        used = None
        for row in rows:
            if row and row[0] == "used_clients":
                used = int(row[1])
        return active, waiting, used
    finally:
        await conn.close()


async def idle_clients(port, user, dbname, password, count, query, admin, measure,
                       concurrency=64, login_timeout=60.0, settle_timeout=60.0):
    """Open count connections to port that log in as user (at most concurrency logins in flight),
    each runs query (None: none) and then stays idle; wait until the pooler's SHOW POOLS
    reports them all in cl_active (admin = (admin user, password)); call measure() then
    ("measured_at_seen") and every 0.5 s until its first value (RSS) has not changed for 3 s or
    15 s passed ("idle_s"); close them. A dict: "measured" (the last reading, None if not reached),
    "logged_in", "errors" (distinct messages, counted), "login_s", "settle_s", "seen" (the last
    (cl_active, cl_waiting, used_clients))."""
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(concurrency)
    conns, errors = [], {}

    async def one():
        async with sem:
            try:
                conn = await asyncio.wait_for(login("127.0.0.1", port, user, dbname, password),
                                              login_timeout)
                try:
                    if query:
                        await asyncio.wait_for(conn.query(query), login_timeout)
                except BaseException:
                    conn.abort()
                    raise
                conns.append(conn)
            except (OSError, ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError,
                    WireError) as e:
                msg = "%s: %s" % (type(e).__name__, e)
                errors[msg] = errors.get(msg, 0) + 1

    out = {"measured": None, "errors": errors, "seen": None}
    t0 = loop.time()
    try:
        await asyncio.gather(*(one() for _ in range(count)))
        out["login_s"] = loop.time() - t0
        out["logged_in"] = len(conns)
        t1 = loop.time()
        deadline = t1 + settle_timeout
        while not errors:
            try:
                out["seen"] = await pool_clients(port, admin[0], admin[1], dbname, user)
            except (OSError, ConnectionError, asyncio.IncompleteReadError, WireError) as e:
                msg = "admin console: %s: %s" % (type(e).__name__, e)
                errors[msg] = errors.get(msg, 0) + 1
                break
            if out["seen"][0] >= count:
                out["settle_s"] = loop.time() - t1
                # Idle means sitting there: the first reading, then readings every 0.5 s until
                # the RSS has not moved for 3 s (at most 15 s), so that what a pooler frees or
                # returns once the logins are over is not counted.
                out["measured_at_seen"] = first = measure()
                samples = [first]
                stable_until = loop.time() + 15.0
                while loop.time() < stable_until:
                    await asyncio.sleep(0.5)
                    samples.append(measure())
                    if len(samples) >= 7 and len({m[0] for m in samples[-7:]}) == 1:
                        break
                out["measured"] = samples[-1]
                out["idle_s"] = 0.5 * (len(samples) - 1)
                break
            if loop.time() > deadline:
                msg = "SHOW POOLS cl_active stayed at %d of %d for %.0f s" % (
                    out["seen"][0], count, settle_timeout)
                errors[msg] = 1
                break
            await asyncio.sleep(0.1)
    finally:
        for i in range(0, len(conns), 500):
            await asyncio.gather(*(c.close() for c in conns[i:i + 500]))
    return out
