#!/usr/bin/env python3
"""Differential test of pf_saslprep against a reference model of PostgreSQL's pg_saslprep.

The model is written from Postgres' src/common/saslprep.c (the order of its steps, the ASCII
shortcut, mapping C.1.2 before B.1, the prohibited/unassigned/bidi checks made on the mapped
string before NFKC) on top of Python's own implementations: the `stringprep` module for the
RFC 3454 tables and `unicodedata.normalize("NFKC")` (Unicode 14.0 in Python 3.11, as in
PostgreSQL 15) for normalization. pf_saslprep shares only the tables' source with it, not a
line of NFKC code.

Inputs: every non-ASCII code point where the tables differ (alone; combining marks also after
"a", before another mark, inside Hebrew), every primary composite's pair with
and without blocking marks between, Hangul jamo sequences, and a seeded random mix of
combining marks, starters, jamo, bidi, mapped and prohibited characters.

Usage: saslprep_model.py HELPER   (HELPER = the saslprep_dump test binary)
Exit status 0 when every output and result code agree; 1 with the first differences shown.
"""

import random
import stringprep
import subprocess
import sys
import unicodedata

OK, INVALID_UTF8, EMPTY, PROHIBITED, UNASSIGNED, BIDI = range(6)


def prohibited(ch):
    return (stringprep.in_table_c12(ch) or stringprep.in_table_c21_c22(ch)
            or stringprep.in_table_c3(ch) or stringprep.in_table_c4(ch)
            or stringprep.in_table_c5(ch) or stringprep.in_table_c6(ch)
            or stringprep.in_table_c7(ch) or stringprep.in_table_c8(ch)
            or stringprep.in_table_c9(ch))


def model(raw):
    """(result, output bytes) as pg_saslprep + its callers' raw fallback would give them."""
    if all(b < 0x80 for b in raw):
        return OK, raw
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError:
        return INVALID_UTF8, raw
    mapped = []
    for ch in s:
        if stringprep.in_table_c12(ch):
            mapped.append(" ")
        elif not stringprep.in_table_b1(ch):
            mapped.append(ch)
    if not mapped:
        return EMPTY, raw
    for ch in mapped:
        if prohibited(ch):
            return PROHIBITED, raw
        if stringprep.in_table_a1(ch):
            return UNASSIGNED, raw
    if any(stringprep.in_table_d1(ch) for ch in mapped):
        if (any(stringprep.in_table_d2(ch) for ch in mapped)
                or not stringprep.in_table_d1(mapped[0])
                or not stringprep.in_table_d1(mapped[-1])):
            return BIDI, raw
    return OK, unicodedata.normalize("NFKC", "".join(mapped)).encode("utf-8")


def code_points():
    """Every non-ASCII scalar value of planes 0 and 1 and of the CJK compatibility supplement,
    a sample of the unified ideographs of planes 2 and 3 (all alike: no decomposition, class
    0, LCat or unassigned in 3.2), and the edges of the other planes."""
    for cp in list(range(0x80, 0xD800)) + list(range(0xE000, 0x20000)):
        yield cp
    for cp in range(0x20000, 0x40000):
        if 0x2F800 <= cp < 0x2FA20 or cp % 61 == 0 or (cp & 0xFFFF) >= 0xFFFE:
            yield cp
    for plane in range(4, 17):
        base = plane << 16
        for cp in (base, base + 1, base + 0xFFFD, base + 0xFFFE, base + 0xFFFF):
            yield cp
    for cp in range(0xE0000, 0xE0200):
        yield cp


def inputs():
    comps = []
    marks = []
    for cp in range(0x80, 0x30000):
        if 0xD800 <= cp < 0xE000:
            continue
        ch = chr(cp)
        if unicodedata.combining(ch):
            marks.append(ch)
        dec = unicodedata.decomposition(ch)
        if dec and not dec.startswith("<"):
            parts = [chr(int(x, 16)) for x in dec.split()]
            if len(parts) == 2:
                comps.append(parts)
    for cp in code_points():
        ch = chr(cp)
        yield ch.encode("utf-8")
    for ch in marks:
        yield ("a" + ch).encode()
        yield ("a" + ch + "\u0301").encode()
        yield ("\u05d0" + ch + "\u05d0").encode()
    # Pairs, and pairs split by marks of lower, equal and higher class (blocked or not).
    for a, b in comps:
        yield (a + b).encode()
        for m in ("\u0316", "\u0301", "\u0345", "\u031b", "\u0f71"):
            yield (a + m + b).encode()
            yield (a + b + m).encode()
        yield (a + "x" + b).encode()
    # Hangul: L V, L V T, LV T, LVT T, broken sequences.
    for l in range(0x1100, 0x1114):
        for v in range(0x1161, 0x1177, 3):
            yield (chr(l) + chr(v)).encode()
            for t in (0x11A7, 0x11A8, 0x11C2, 0x11C3):
                yield (chr(l) + chr(v) + chr(t)).encode()
    for s in (0xAC00, 0xAC01, 0xD788, 0xD7A3):
        for t in (0x11A7, 0x11A8, 0x11C2, 0x11C3):
            yield (chr(s) + chr(t)).encode()
    rnd = random.Random(20240501)
    pool = (marks[:200] + [a for a, _ in comps[:300]] + [b for _, b in comps[:300]]
            + [chr(c) for c in range(0x1100, 0x1200)] + [chr(c) for c in range(0xAC00, 0xAC40)]
            + list("aAzé\u00a0\u00ad\u200b\u2168\ufb01\u05d0\u05d1\u0627\u05b4\u0660\u0030"
                   "\ufb1d\u0340\u0007\u2028\ue000\ufdd0\U000e0001\u0221\u3000"))
    for _ in range(30000):
        n = rnd.randint(1, 8)
        yield "".join(rnd.choice(pool) for _ in range(n)).encode("utf-8")
    # Invalid UTF-8.
    for bad in (b"\xc3", b"a\xc3(", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80",
                b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xff", b"\x80", b"\xe2\x82",
                b"\xf0\x9f\x98", b"caf\xe9"):
        yield bad


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    items = [x for x in inputs() if b"\0" not in x]
    feed = "".join(x.hex() + "\n" for x in items).encode()
    res = subprocess.run([sys.argv[1]], input=feed, stdout=subprocess.PIPE, check=True)
    lines = res.stdout.decode().splitlines()
    if len(lines) != len(items):
        print("helper answered %d lines for %d inputs" % (len(lines), len(items)))
        return 1
    bad = 0
    for raw, line in zip(items, lines):
        rc, _, hexout = line.partition(" ")
        got = (int(rc), bytes.fromhex(hexout))
        want = model(raw)
        if got != want:
            bad += 1
            if bad <= 20:
                print("input %s: pf_saslprep %s %s, model %s %s" %
                      (raw.hex(), got[0], got[1].hex(), want[0], want[1].hex()))
    print("%d inputs, %d differences" % (len(items), bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
