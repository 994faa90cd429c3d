#include "pfbuild.h"
/*
 * Unit tests for saslprep: the examples of RFC 4013 section 3 (as Postgres answers them), NFKC
 * (compatibility mappings, composition, canonical ordering, blocking, exclusions, Hangul),
 * mapping (B.1, C.1.2), prohibited and unassigned characters, the bidi rule, invalid UTF-8,
 * and SCRAM secrets that PostgreSQL 15 built for non-ASCII passwords, reproduced through
 * pf_scram_secret_from_password. tests/unit/saslprep_model.py checks every code point against
 * a Python model of pg_saslprep; scripts/check-saslprep-postgres.py against a live server.
 */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "pgfunnel/saslprep.h"
#include "pgfunnel/scram.h"

/* Runs pf_saslprep and checks both the result code and the output bytes. */
static void expect(const char *in, int rc, const char *out)
{
	char *got = (char *)0x1;
	int r = pf_saslprep(in, &got);

	if (r != rc)
		fail_msg("pf_saslprep(\"%s\") = %d (%s), expected %d (%s)", in, r,
		         pf_saslprep_result_name(r), rc, pf_saslprep_result_name(rc));
	assert_non_null(got);
	if (strcmp(got, out) != 0)
		fail_msg("pf_saslprep(\"%s\") gave \"%s\", expected \"%s\"", in, got, out);
	pf_saslprep_free(got);
}

/* A fallback: the raw bytes come back, with the reason. */
static void expect_raw(const char *in, int rc)
{
	assert_true(rc > 0);
	expect(in, rc, in);
}

/* ---- RFC 4013 section 3 ---- */

static void test_rfc4013_examples(void **state)
{
	(void)state;
	expect("I\xc2\xadX", PF_SASLPREP_OK, "IX"); /* SOFT HYPHEN mapped to nothing */
	expect("user", PF_SASLPREP_OK, "user");
	expect("USER", PF_SASLPREP_OK, "USER");       /* case preserved */
	expect("\xc2\xaa", PF_SASLPREP_OK, "a");      /* U+00AA: NFKC */
	expect("\xe2\x85\xa8", PF_SASLPREP_OK, "IX"); /* U+2168 ROMAN NUMERAL NINE: NFKC */
	/*
	 * "<U+0007>: Error - prohibited character". Postgres returns pure ASCII unchanged before
	 * any check, so the password is the raw byte either way; with a non-ASCII character the
	 * full profile runs and BELL is refused (raw bytes, not "IX\a").
	 */
	expect("\x07", PF_SASLPREP_OK, "\x07");
	expect_raw("\xe2\x85\xa8\x07", PF_SASLPREP_PROHIBITED);
	/* "<U+0627><U+0031>: Error - bidirectional check" (RandALCat first but not last). */
	expect_raw("\xd8\xa7"
	           "1",
	           PF_SASLPREP_BIDI);
}

/* Over Postgres' 1024 bytes: raw, in bounded time, even for a run of 20000 combining marks
 * (whose canonical ordering would be quadratic). */
static void test_too_long_is_raw(void **state)
{
	size_t n = 1 + 20000 * 2 * 2;
	char *p = malloc(n + 1), *out = NULL;
	size_t o = 0;

	(void)state;
	assert_non_null(p);
	p[o++] = 'a';
	for (int i = 0; i < 20000; i++) {
		memcpy(p + o, "\xcc\x81", 2); /* U+0301, class 230 */
		o += 2;
	}
	for (int i = 0; i < 20000; i++) {
		memcpy(p + o, "\xcc\x96", 2); /* U+0316, class 220 */
		o += 2;
	}
	p[o] = '\0';
	assert_int_equal(pf_saslprep(p, &out), PF_SASLPREP_TOO_LONG);
	assert_string_equal(out, p);
	pf_saslprep_free(out);
	/* 1024 bytes exactly are still prepared: "\xe2\x85\xa8" (U+2168) becomes "IX". */
	memset(p, 'a', 1021);
	memcpy(p + 1021, "\xe2\x85\xa8", 3);
	p[1024] = '\0';
	assert_int_equal(pf_saslprep(p, &out), PF_SASLPREP_OK);
	assert_int_equal(strlen(out), 1023);
	assert_memory_equal(out + 1021, "IX", 2);
	pf_saslprep_free(out);
	free(p);
}

static void test_ascii_unchanged(void **state)
{
	(void)state;
	expect("", PF_SASLPREP_OK, "");
	expect("pass word, with \"punctuation\" & ~", PF_SASLPREP_OK,
	       "pass word, with \"punctuation\" & ~");
	expect("\x01\x1f\x7f tab\there", PF_SASLPREP_OK, "\x01\x1f\x7f tab\there");
}

/* ---- NFKC ---- */

static void test_nfkc(void **state)
{
	(void)state;
	/* Compatibility mappings. */
	expect("\xef\xac\x81", PF_SASLPREP_OK, "fi"); /* U+FB01 ligature */
	expect("\xef\xbd\x90\xef\xbd\x81\xef\xbd\x93\xef\xbd\x93", PF_SASLPREP_OK, "pass");
	expect("\xc2\xbd", PF_SASLPREP_OK,
	       "1\xe2\x81\x84"
	       "2");                                     /* U+00BD -> 1 U+2044 2 */
	expect("\xe2\x91\xb4", PF_SASLPREP_OK, "(1)");   /* U+2474 */
	expect("\xc2\xa8", PF_SASLPREP_OK, " \xcc\x88"); /* U+00A8 -> space + U+0308 */
	/* Composed stays, decomposed composes; singletons go to their target. */
	expect("caf\xc3\xa9", PF_SASLPREP_OK, "caf\xc3\xa9");
	expect("cafe\xcc\x81", PF_SASLPREP_OK, "caf\xc3\xa9");
	expect("\xe2\x84\xab", PF_SASLPREP_OK, "\xc3\x85"); /* U+212B ANGSTROM -> U+00C5 */
	expect("A\xcc\x8a", PF_SASLPREP_OK, "\xc3\x85");
	/* UAX #15's example: U+1E9B U+0323 -> U+1E69 under NFKC. */
	expect("\xe1\xba\x9b\xcc\xa3", PF_SASLPREP_OK, "\xe1\xb9\xa9");
	/* Canonical ordering: dot below (220) before acute (230), whatever the input order. */
	expect("a\xcc\x81\xcc\xa3", PF_SASLPREP_OK, "\xe1\xba\xa1\xcc\x81");
	expect("a\xcc\xa3\xcc\x81", PF_SASLPREP_OK, "\xe1\xba\xa1\xcc\x81");
	/* Blocked: the second acute has the class of the first, which did not compose. */
	expect("a\xcc\x81\xcc\x81", PF_SASLPREP_OK, "\xc3\xa1\xcc\x81");
	/* A starter between blocks: e x U+0301 keeps the accent on x. */
	expect("ex\xcc\x81", PF_SASLPREP_OK, "ex\xcc\x81");
	/* Composition exclusion: U+0958 decomposes and does not come back. */
	expect("\xe0\xa5\x98", PF_SASLPREP_OK, "\xe0\xa4\x95\xe0\xa4\xbc");
	/* Two starters composing (Bengali vowel sign O from E + AA). */
	expect("\xe0\xa6\x95\xe0\xa7\x87\xe0\xa6\xbe", PF_SASLPREP_OK, "\xe0\xa6\x95\xe0\xa7\x8b");
	/* Hangul: L V -> LV, L V T -> LVT, LV T -> LVT, syllables unchanged, LVT T stays. */
	expect("\xe1\x84\x80\xe1\x85\xa1", PF_SASLPREP_OK, "\xea\xb0\x80");
	expect("\xe1\x84\x80\xe1\x85\xa1\xe1\x86\xa8", PF_SASLPREP_OK, "\xea\xb0\x81");
	expect("\xea\xb0\x80\xe1\x86\xa8", PF_SASLPREP_OK, "\xea\xb0\x81");
	expect("\xed\x9e\xa3", PF_SASLPREP_OK, "\xed\x9e\xa3");
	expect("\xea\xb0\x81\xe1\x86\xa8", PF_SASLPREP_OK, "\xea\xb0\x81\xe1\x86\xa8");
	/* The longest decomposition (U+FDFA, 18 code points, Arabic: RandALCat). */
	expect("\xef\xb7\xba", PF_SASLPREP_OK,
	       "\xd8\xb5\xd9\x84\xd9\x89 \xd8\xa7\xd9\x84\xd9\x84\xd9\x87 \xd8\xb9\xd9\x84\xd9\x8a"
	       "\xd9\x87 \xd9\x88\xd8\xb3\xd9\x84\xd9\x85");
}

/* ---- mapping ---- */

static void test_mapping(void **state)
{
	(void)state;
	/* B.1: removed. */
	expect("pass\xc2\xadword", PF_SASLPREP_OK, "password");
	expect("a\xe2\x80\x8d"
	       "b\xef\xb8\x8f",
	       PF_SASLPREP_OK, "ab");                               /* ZWJ, VS16 */
	expect("\xef\xbb\xbf\xc3\xa9", PF_SASLPREP_OK, "\xc3\xa9"); /* BOM as ZWNBSP */
	/* C.1.2: to U+0020; U+200B is in both tables and Postgres maps it to a space. */
	expect("pass\xc2\xa0word", PF_SASLPREP_OK, "pass word");
	expect("\xe3\x80\x80x\xe3\x80\x80", PF_SASLPREP_OK, " x ");
	expect("a\xe2\x80\x8b"
	       "b",
	       PF_SASLPREP_OK, "a b");
	/* Nothing left: the raw bytes (Postgres refuses an empty SASLprep result). */
	expect_raw("\xc2\xad", PF_SASLPREP_EMPTY);
	expect_raw("\xc2\xad\xe2\x81\xa0\xef\xb8\x80", PF_SASLPREP_EMPTY);
}

/* ---- prohibited, unassigned ---- */

static void test_prohibited(void **state)
{
	(void)state;
	expect_raw("\xc3\xa9\x07", PF_SASLPREP_PROHIBITED);      /* C.2.1 */
	expect_raw("\xc3\xa9\x7f", PF_SASLPREP_PROHIBITED);      /* C.2.1 DEL */
	expect_raw("\xc2\x85\xc3\xa9", PF_SASLPREP_PROHIBITED);  /* C.2.2 NEL */
	expect_raw("a\xe2\x80\xa8", PF_SASLPREP_PROHIBITED);     /* C.2.2 LINE SEPARATOR */
	expect_raw("\xee\x80\x80", PF_SASLPREP_PROHIBITED);      /* C.3 private use */
	expect_raw("\xf3\xb0\x80\x80", PF_SASLPREP_PROHIBITED);  /* C.3 plane 15 */
	expect_raw("\xef\xb7\x90", PF_SASLPREP_PROHIBITED);      /* C.4 U+FDD0 */
	expect_raw("\xf0\x9f\xbf\xbe", PF_SASLPREP_PROHIBITED);  /* C.4 U+1FFFE */
	expect_raw("\xef\xbf\xbd", PF_SASLPREP_PROHIBITED);      /* C.6 U+FFFD */
	expect_raw("\xe2\xbf\xb0", PF_SASLPREP_PROHIBITED);      /* C.7 U+2FF0 */
	expect_raw("a\xe2\x80\x8e", PF_SASLPREP_PROHIBITED);     /* C.8 LRM */
	expect_raw("\xf3\xa0\x80\x81x", PF_SASLPREP_PROHIBITED); /* C.9 U+E0001 */
	/*
	 * Postgres checks the mapped input, not the NFKC output: U+0340 (C.8) is refused although
	 * NFKC turns it into U+0300, so "a" U+0340 is hashed raw, not as U+00E0.
	 */
	expect_raw("a\xcd\x80", PF_SASLPREP_PROHIBITED);
	/* Unassigned in Unicode 3.2 (A.1), assigned since. */
	expect_raw("\xc8\xa1", PF_SASLPREP_UNASSIGNED);                             /* U+0221 */
	expect_raw("x\xf0\x9f\x98\x80", PF_SASLPREP_UNASSIGNED);                    /* U+1F600 */
	expect_raw("\xe1\x84\x80\xe1\x85\xa1\xe1\x86\xa7", PF_SASLPREP_UNASSIGNED); /* U+11A7 */
	/* The first offending character decides the reason, as Postgres' loop does. */
	expect_raw("\xc8\xa1\x07", PF_SASLPREP_UNASSIGNED);
	expect_raw("\x07\xc8\xa1", PF_SASLPREP_PROHIBITED);
}

/* ---- bidi (RFC 3454 section 6) ---- */

static void test_bidi(void **state)
{
	(void)state;
	expect("\xd7\x90\xd7\x91", PF_SASLPREP_OK, "\xd7\x90\xd7\x91"); /* R R */
	expect("\xd8\xa7\xd9\xa1\xd8\xa8", PF_SASLPREP_OK,
	       "\xd8\xa7\xd9\xa1\xd8\xa8");                                   /* AL AN AL */
	expect("\xd7\x90 1 \xd7\x91", PF_SASLPREP_OK, "\xd7\x90 1 \xd7\x91"); /* neutrals inside */
	expect_raw("\xd7\x90"
	           "a\xd7\x91",
	           PF_SASLPREP_BIDI); /* LCat with RandALCat */
	expect_raw("a\xd7\x90", PF_SASLPREP_BIDI);
	expect_raw("\xd7\x90"
	           "1",
	           PF_SASLPREP_BIDI); /* RandALCat first, not last */
	expect_raw("1\xd7\x90", PF_SASLPREP_BIDI);
	/* U+2168 is LCat: with Hebrew it breaks the rule, so no NFKC either. */
	expect_raw("\xd7\x90\xe2\x85\xa8", PF_SASLPREP_BIDI);
	/*
	 * Checked before NFKC, as Postgres does: U+FB1D is RandALCat, alone it passes, and its
	 * NFKC (U+05D9 U+05B4) ends with a mark that is not; the RFC order would refuse it.
	 */
	expect("\xef\xac\x9d", PF_SASLPREP_OK, "\xd7\x99\xd6\xb4");
}

/* ---- UTF-8 ---- */

static void test_invalid_utf8(void **state)
{
	(void)state;
	expect_raw("caf\xe9", PF_SASLPREP_INVALID_UTF8);              /* Latin-1 */
	expect_raw("\xc3", PF_SASLPREP_INVALID_UTF8);                 /* truncated */
	expect_raw("a\xe2\x82", PF_SASLPREP_INVALID_UTF8);            /* truncated */
	expect_raw("\xc0\xaf", PF_SASLPREP_INVALID_UTF8);             /* overlong '/' */
	expect_raw("\xe0\x80\xaf", PF_SASLPREP_INVALID_UTF8);         /* overlong */
	expect_raw("\xf0\x80\x80\xaf", PF_SASLPREP_INVALID_UTF8);     /* overlong */
	expect_raw("\xed\xa0\x80", PF_SASLPREP_INVALID_UTF8);         /* surrogate */
	expect_raw("\xf4\x90\x80\x80", PF_SASLPREP_INVALID_UTF8);     /* above U+10FFFF */
	expect_raw("\xf8\x88\x80\x80\x80", PF_SASLPREP_INVALID_UTF8); /* 5 bytes */
	expect_raw("\x80"
	           "abc",
	           PF_SASLPREP_INVALID_UTF8); /* lone continuation */
	expect_raw("\xc3\xa9\xff", PF_SASLPREP_INVALID_UTF8);
	/* The largest valid scalar is fine up to the unassigned check. */
	expect_raw("\xf4\x8f\xbf\xbd", PF_SASLPREP_PROHIBITED); /* U+10FFFD: C.3 */
}

static void test_arguments(void **state)
{
	char *out = (char *)0x1;

	(void)state;
	assert_int_equal(pf_saslprep(NULL, &out), -EINVAL);
	assert_null(out);
	assert_int_equal(pf_saslprep("x", NULL), -EINVAL);
	pf_saslprep_free(NULL);
	assert_string_equal(pf_saslprep_result_name(PF_SASLPREP_OK), "ok");
	assert_string_equal(pf_saslprep_result_name(PF_SASLPREP_BIDI), "bidirectional rule");
	assert_string_equal(pf_saslprep_result_name(-ENOMEM), "out of memory");
	assert_string_equal(pf_saslprep_result_name(99), "invalid");
}

/* ---- secrets made by PostgreSQL 15 ---- */

/*
 * Made on PostgreSQL 15.18 (Debian 15.18-0+deb12u1): SET password_encryption =
 * 'scram-sha-256'; CREATE ROLE r PASSWORD '...'; SELECT rolpassword FROM pg_authid, in a
 * database with ENCODING 'SQL_ASCII' so that the Latin-1 password arrives as its bytes.
 * "prepared" is what SASLprep must give; "other" is a plausible wrong preparation (the raw
 * bytes, or the RFC's order of steps), which must NOT reproduce the secret: that is what
 * makes each vector able to fail.
 */
static const struct {
	const char *name;
	const char *password;
	int rc;
	const char *prepared;
	const char *other;
	const char *secret;
} pg_vectors[] = {
        {"U+2168", "\xe2\x85\xa8", PF_SASLPREP_OK, "IX", "\xe2\x85\xa8",
         "SCRAM-SHA-256$4096:7h0yxzfSNEeLqmB8eW21HQ==$Y0RZKVEC4j7Crwb8eqjFgIYi3SN+AHvBprDmIsSCzzI="
         ":OdFHRw7wWEcKKxKtj60CMuLSlOz0iliqE6QDn5SlB2I="},
        {"decomposed", "cafe\xcc\x81", PF_SASLPREP_OK, "caf\xc3\xa9", "cafe\xcc\x81",
         "SCRAM-SHA-256$4096:khrNelvgF/NkYH59LdnW/g==$Cwl3+7GSvesqXmxAGnPNg8dtJRkXWSf/+1V5SJvDM5c="
         ":hjPqXqsg7z5hTc4cjOtQINO/0T1k4OGCL7x/YqSAfNQ="},
        {"soft hyphen", "pass\xc2\xadword", PF_SASLPREP_OK, "password", "pass\xc2\xadword",
         "SCRAM-SHA-256$4096:76V7g2Xnq2/MwkcNQvC18A==$qafGxi0Z03SJYD4/uXUPtI9ZvXPxjdycxqeuGvdibA0="
         ":bppRfckEKps5DYeikxp1tyj7Qrr57tz4+sfUUDgVEI4="},
        {"no-break space", "pass\xc2\xa0word", PF_SASLPREP_OK, "pass word", "pass\xc2\xa0word",
         "SCRAM-SHA-256$4096:03dCNKCn0CT7InMj4nmiiw==$JL5z8zenWWibLtISuhbjku9k27Neu/mi2baIwPdHBE8="
         ":Cgf6zFXOQj0NWnAouQD7lqkZd2HI8ZHme3CuuyUi8wA="},
        {"zero width space",
         "a\xe2\x80\x8b"
         "b",
         PF_SASLPREP_OK, "a b", "ab",
         "SCRAM-SHA-256$4096:CL6VutO1i5yOeY9BkL8/gQ==$xpv6rEunQxUgPjhOG1/7oekEyz2ZjtEuD9V7vo8kqZ8="
         ":OFTwN9QzJajHp26pfwr9QFfyE0qe2t6h5bwyU3FObc0="},
        {"jamo", "\xe1\x84\x80\xe1\x85\xa1\xe1\x86\xa8", PF_SASLPREP_OK, "\xea\xb0\x81",
         "\xe1\x84\x80\xe1\x85\xa1\xe1\x86\xa8",
         "SCRAM-SHA-256$4096:B7RRhdCqGElAnT6KELgkrQ==$FiplR+KVIVDqcgz5lVHG13VwN3caUocpdBgB4U3q2ms="
         ":kwJie7FDuXBjBqOWwwG4Q1XRALJzzIY7hkhCgsT91XQ="},
        {"full width", "\xef\xbd\x90\xef\xbd\x81\xef\xbd\x93\xef\xbd\x93", PF_SASLPREP_OK, "pass",
         "\xef\xbd\x90\xef\xbd\x81\xef\xbd\x93\xef\xbd\x93",
         "SCRAM-SHA-256$4096:xwyxtMNndsRWt1MR27elFw==$VfcbSGcsFmRMyycw90zZRE7lFD9CaQ9ftY/5yfbzkpw="
         ":NjxHFNauf4/s1woX1FGr/UypuJQz6OPeFlvSTMPh8Lo="},
        {"U+00AA", "\xc2\xaa", PF_SASLPREP_OK, "a", "\xc2\xaa",
         "SCRAM-SHA-256$4096:hSJfnOC5a1UyC2hVutlqtw==$S+7buTe5IlLRjZ8dPL6ghtXf6A58UftpFlFP3AEtG/U="
         ":iwbcXmaj2CgkMlDpQt1RqyVegBzz92o5zd60Y50IBGc="},
        {"BELL: raw", "\xe2\x85\xa8\x07", PF_SASLPREP_PROHIBITED, "\xe2\x85\xa8\x07", "IX\x07",
         "SCRAM-SHA-256$4096:JLKdKYcanRIlNlelQ2ts9A==$ksQ/Jz4GnKH+Uup8HseV43Nk80c6QUcMBnBADrGEdkM="
         ":Sj7ZLTbDth98ryZNEjTelFVNdR3hPwJPaafGpoxeJmY="},
        {"bidi: raw", "\xd7\x90\xe2\x85\xa8", PF_SASLPREP_BIDI, "\xd7\x90\xe2\x85\xa8",
         "\xd7\x90IX",
         "SCRAM-SHA-256$4096:mbMQLRJ+Ho1N4BQeMvzZfA==$rYU9jHEhc3UGQ02nfJ0Eh5Ncc9Gsy7X8RvyO5XL6RZs="
         ":4OYCDyL6IHTrHr73xuw45mKJ4jKEhgtbThXceGN3A2k="},
        {"Latin-1: raw", "caf\xe9", PF_SASLPREP_INVALID_UTF8, "caf\xe9", "caf\xc3\xa9",
         "SCRAM-SHA-256$4096:EyCI/Ksui2Vy+udHL47Uqw==$Nd4TYoZEQyZR1gOsoSzxZU1rvawbVSxNuMh3MOXDkL0="
         ":IXuRmjgKF7dIz8d+PHetds/CpvNDzLIrGDhBExnWStw="},
        {"U+0340 checked before NFKC: raw", "a\xcd\x80", PF_SASLPREP_PROHIBITED, "a\xcd\x80",
         "\xc3\xa0",
         "SCRAM-SHA-256$4096:T/ZiKpwIQmtu3H5+8lYPaQ==$HoUYrNiTPMeYzSxREVwrToJVcO8DcvQ/rkeWvPu95VA="
         ":sbLjGT2t5LKbdfFQkzeGhzhbtcDB3wejRTCS5FXCJy8="},
        {"U+FB1D bidi before NFKC", "\xef\xac\x9d", PF_SASLPREP_OK, "\xd7\x99\xd6\xb4",
         "\xef\xac\x9d",
         "SCRAM-SHA-256$4096:UKdKXBWwuldguFMOS0lbug==$Nt20EhtC3E6NsY3j/j8wpYA5kH3YNo+Ecd8rbb54zDw="
         ":AzZqGY897gsGfIWKgJQxA2/DT3gz6k8t/eQlyBud6EA="},
        {"only a soft hyphen: raw", "\xc2\xad", PF_SASLPREP_EMPTY, "\xc2\xad", "",
         "SCRAM-SHA-256$4096:LnJNOorjGnNAEim1E8AYiA==$eEe7YNXhKw8NSA/+VxymZ10UwbxpFYEP2raL5Tj46g0="
         ":J1GJtJYhlbI4IiXr8FpUjCWNBbum5ep6ymtWduha3Ik="},
};

/* StoredKey of PBKDF2 over exactly these bytes, without pgfunnel's code. */
static void plain_stored_key(const char *bytes, const pf_scram_secret_t *s, uint8_t out[32])
{
	uint8_t salted[32], ck[32];
	unsigned int len;

	assert_int_equal(PKCS5_PBKDF2_HMAC(bytes, (int)strlen(bytes), s->salt, (int)s->salt_len,
	                                   s->iterations, EVP_sha256(), 32, salted),
	                 1);
	assert_non_null(
	        HMAC(EVP_sha256(), salted, 32, (const uint8_t *)"Client Key", 10, ck, &len));
	assert_int_equal(EVP_Digest(ck, 32, out, &len, EVP_sha256(), NULL), 1);
}

static void test_postgres_secrets(void **state)
{
	(void)state;
	for (size_t i = 0; i < PF_ARRAY_SIZE(pg_vectors); i++) {
		pf_scram_secret_t pg, mine;
		char text[PF_SCRAM_SECRET_MAX_LEN];
		uint8_t key[32];

		print_message("vector: %s\n", pg_vectors[i].name);
		expect(pg_vectors[i].password, pg_vectors[i].rc, pg_vectors[i].prepared);
		assert_int_equal(pf_scram_secret_parse(pg_vectors[i].secret, &pg), 0);
		assert_int_equal(pf_scram_secret_from_password(pg_vectors[i].password, pg.salt,
		                                               pg.salt_len, pg.iterations, &mine,
		                                               NULL),
		                 0);
		assert_true(pf_scram_secret_format(&mine, text, sizeof(text)) > 0);
		assert_string_equal(text, pg_vectors[i].secret);
		/* The reference PBKDF2 over the prepared bytes agrees, the other preparation not.
		 */
		plain_stored_key(pg_vectors[i].prepared, &pg, key);
		assert_memory_equal(key, pg.stored_key, 32);
		plain_stored_key(pg_vectors[i].other, &pg, key);
		assert_memory_not_equal(key, pg.stored_key, 32);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_rfc4013_examples),
	        cmocka_unit_test(test_ascii_unchanged),
	        cmocka_unit_test(test_too_long_is_raw),
	        cmocka_unit_test(test_nfkc),
	        cmocka_unit_test(test_mapping),
	        cmocka_unit_test(test_prohibited),
	        cmocka_unit_test(test_bidi),
	        cmocka_unit_test(test_invalid_utf8),
	        cmocka_unit_test(test_arguments),
	        cmocka_unit_test(test_postgres_secrets),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
