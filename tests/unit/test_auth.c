/*
 * Unit tests for auth: auth_file parsing (quoting, comments, each secret kind, bad lines,
 * messages without secrets), lookups among many users. SCRAM secrets are decoded by
 * pf_scram_secret_parse(), whose strictness test_scram covers.
 */
#include "pfbuild.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <cmocka.h>

#include "pgfunnel/auth.h"

#define DATA_DIR PF_SOURCE_ROOT "/tests/unit/data"

/* SCRAM secret of password "s3cret", salt bytes 0..15, 4096 iterations (made with Python). */
#define SCRAM_SECRET                                                                               \
	"SCRAM-SHA-256$4096:AAECAwQFBgcICQoLDA0ODw==$gJ4pC97thnuVQBJdGIO+xGHlnKL1Zx2S+230NRJ3HR8=" \
	":"                                                                                        \
	"KGKxEt3VINf+beX/v4NCNbxlZg8u9RrT3JVaR+py5ig="

static const uint8_t scram_stored_key[32] = {
        0x80, 0x9e, 0x29, 0x0b, 0xde, 0xed, 0x86, 0x7b, 0x95, 0x40, 0x12,
        0x5d, 0x18, 0x83, 0xbe, 0xc4, 0x61, 0xe5, 0x9c, 0xa2, 0xf5, 0x67,
        0x1d, 0x92, 0xfb, 0x6d, 0xf4, 0x35, 0x12, 0x77, 0x1d, 0x1f,
};
static const uint8_t scram_server_key[32] = {
        0x28, 0x62, 0xb1, 0x12, 0xdd, 0xd5, 0x20, 0xd7, 0xfe, 0x6d, 0xe5,
        0xff, 0xbf, 0x83, 0x42, 0x35, 0xbc, 0x65, 0x66, 0x0f, 0x2e, 0xf5,
        0x1a, 0xd3, 0xdc, 0x95, 0x5a, 0x47, 0xea, 0x72, 0xe6, 0x28,
};

static pf_auth_file_t *parse_ok(const char *text)
{
	pf_auth_file_t *af = NULL;
	char err[256] = "";
	int rc = pf_auth_file_parse(text, strlen(text), "t.txt", &af, err, sizeof(err));

	if (rc != 0)
		fail_msg("unexpected error %d: %s", rc, err);
	assert_non_null(af);
	return af;
}

/* text must fail with exactly want, and the message must not contain secret (if given). */
static void parse_fails(const char *text, const char *want, const char *secret)
{
	pf_auth_file_t *af = NULL;
	char err[512] = "";

	assert_int_equal(pf_auth_file_parse(text, strlen(text), "t.txt", &af, err, sizeof(err)),
	                 -EINVAL);
	assert_null(af);
	assert_string_equal(err, want);
	if (secret && strstr(err, secret))
		fail_msg("secret leaked into \"%s\"", err);
}

static void test_fixture_file(void **state)
{
	pf_auth_file_t *af = NULL;
	const pf_auth_entry_t *e;
	char err[256];

	(void)state;
	assert_int_equal(pf_auth_file_load(DATA_DIR "/userlist.txt", &af, err, sizeof(err)), 0);
	assert_int_equal(pf_auth_file_count(af), 4);

	e = pf_auth_file_find(af, "alice");
	assert_non_null(e);
	assert_int_equal(e->kind, PF_AUTH_SECRET_PLAIN);
	assert_string_equal(e->secret, "plain pass");

	e = pf_auth_file_find(af, "bob");
	assert_non_null(e);
	assert_int_equal(e->kind, PF_AUTH_SECRET_MD5);
	assert_string_equal(e->secret, "md5fd5865cd777939b563c385d1ccbbfaab");

	e = pf_auth_file_find(af, "carol");
	assert_non_null(e);
	assert_int_equal(e->kind, PF_AUTH_SECRET_SCRAM);
	assert_string_equal(e->secret, SCRAM_SECRET);
	assert_int_equal(e->scram.iterations, 4096);
	assert_int_equal(e->scram.salt_len, 16);
	for (int i = 0; i < 16; i++)
		assert_int_equal(e->scram.salt[i], i);
	assert_memory_equal(e->scram.stored_key, scram_stored_key, 32);
	assert_memory_equal(e->scram.server_key, scram_server_key, 32);

	/* "" is one quote in both fields; text after the second field is ignored. */
	e = pf_auth_file_find(af, "dan \"the man\"");
	assert_non_null(e);
	assert_string_equal(e->secret, "say \"hi\"");
	assert_int_equal(e->kind, PF_AUTH_SECRET_PLAIN);

	assert_null(pf_auth_file_find(af, "Alice"));
	assert_null(pf_auth_file_find(af, "eve"));
	pf_auth_file_free(af);
	pf_auth_file_free(NULL);
}

static void test_md5_detection(void **state)
{
	pf_auth_file_t *af;

	(void)state;
	/* The PgBouncer docs' example: user admin, password 1234. */
	af = parse_ok("\"admin\" \"md545f2603610af569b6155c45067268c6b\"\n"
	              "\"upper\" \"md545F2603610AF569B6155C45067268C6B\"\n"
	              "\"short\" \"md545f2603610af569b6155c45067268c6\"\n"
	              "\"long\" \"md545f2603610af569b6155c45067268c6b0\"\n"
	              "\"nothex\" \"md545f2603610af569b6155c45067268c6g\"\n"
	              "\"MD5\" \"MD545f2603610af569b6155c45067268c6b\"\n"
	              "\"empty\" \"\"\n");
	assert_int_equal(pf_auth_file_find(af, "admin")->kind, PF_AUTH_SECRET_MD5);
	assert_int_equal(pf_auth_file_find(af, "upper")->kind, PF_AUTH_SECRET_MD5);
	assert_string_equal(pf_auth_file_find(af, "upper")->secret,
	                    "md545f2603610af569b6155c45067268c6b");
	assert_int_equal(pf_auth_file_find(af, "short")->kind, PF_AUTH_SECRET_PLAIN);
	assert_int_equal(pf_auth_file_find(af, "long")->kind, PF_AUTH_SECRET_PLAIN);
	assert_int_equal(pf_auth_file_find(af, "nothex")->kind, PF_AUTH_SECRET_PLAIN);
	assert_int_equal(pf_auth_file_find(af, "MD5")->kind, PF_AUTH_SECRET_PLAIN);
	assert_int_equal(pf_auth_file_find(af, "empty")->kind, PF_AUTH_SECRET_PLAIN);
	assert_string_equal(pf_auth_file_find(af, "empty")->secret, "");
	pf_auth_file_free(af);
}

static void test_layout(void **state)
{
	pf_auth_file_t *af;

	(void)state;
	af = parse_ok("; comment\r\n"
	              "   # another comment \"x\" \"y\"\n"
	              "\n"
	              "\t  \n"
	              "  \"u1\"\t\"p1\"\r\n"
	              "\"u2\" \"p2\" tail \"x\" \"y\"\n"
	              "\"u3\" \"p;3#\"\n"
	              "\"u1\" \"p1-again\"\n"
	              "\"last\" \"no newline\"");
	assert_int_equal(pf_auth_file_count(af), 4);
	/* The last line of a user wins, as in PgBouncer. */
	assert_string_equal(pf_auth_file_find(af, "u1")->secret, "p1-again");
	assert_string_equal(pf_auth_file_find(af, "u2")->secret, "p2");
	assert_string_equal(pf_auth_file_find(af, "u3")->secret, "p;3#");
	assert_string_equal(pf_auth_file_find(af, "last")->secret, "no newline");
	pf_auth_file_free(af);

	af = parse_ok("");
	assert_int_equal(pf_auth_file_count(af), 0);
	assert_null(pf_auth_file_find(af, "x"));
	pf_auth_file_free(af);
}

static void test_bad_lines(void **state)
{
	(void)state;
	parse_fails("\"ok\" \"x\"\nbob \"pw\"\n", "t.txt:2: expected a double-quoted user name",
	            NULL);
	parse_fails("\"bob \"pw\"\n", "t.txt:1: user \"bob \": expected a double-quoted secret",
	            NULL);
	parse_fails("\"bob\n\"x\" \"y\"\n", "t.txt:1: unterminated user name", NULL);
	parse_fails("\"bob\"\n", "t.txt:1: user \"bob\": expected a double-quoted secret", NULL);
	parse_fails("\"bob\" hunter2\n", "t.txt:1: user \"bob\": expected a double-quoted secret",
	            "hunter2");
	parse_fails("\"bob\" \"hunter2\n", "t.txt:1: user \"bob\": unterminated secret", "hunter2");
	parse_fails("\"\" \"pw\"\n", "t.txt:1: empty user name", NULL);
}

static void test_bad_scram(void **state)
{
	static const char *const bad[] = {
	        "SCRAM-SHA-256$",
	        "SCRAM-SHA-256$4096:AAECAwQFBgcICQoLDA0ODw==",
	        "SCRAM-SHA-256$0:AAECAwQFBgcICQoLDA0ODw==$gJ4pC97thnuVQBJdGIO+xGHlnKL1Zx2S+"
	        "230NRJ3HR8=:"
	        "KGKxEt3VINf+beX/v4NCNbxlZg8u9RrT3JVaR+py5ig=",
	        "SCRAM-SHA-256$x1:AAECAwQFBgcICQoLDA0ODw==$gJ4pC97thnuVQBJdGIO+xGHlnKL1Zx2S+"
	        "230NRJ3HR8="
	        ":KGKxEt3VINf+beX/v4NCNbxlZg8u9RrT3JVaR+py5ig=",
	        "SCRAM-SHA-256$4096:$gJ4pC97thnuVQBJdGIO+xGHlnKL1Zx2S+230NRJ3HR8=:"
	        "KGKxEt3VINf+beX/v4NCNbxlZg8u9RrT3JVaR+py5ig=",
	        "SCRAM-SHA-256$4096:AAECAwQFBgcICQoLDA0ODw=$gJ4pC97thnuVQBJdGIO+xGHlnKL1Zx2S+"
	        "230NRJ3HR8=:"
	        "KGKxEt3VINf+beX/v4NCNbxlZg8u9RrT3JVaR+py5ig=",
	        /* StoredKey one byte short */
	        "SCRAM-SHA-256$4096:AAECAwQFBgcICQoLDA0ODw==$gJ4pC97thnuVQBJdGIO+xGHlnKL1Zx2S+"
	        "230NRJ3HQ==:"
	        "KGKxEt3VINf+beX/v4NCNbxlZg8u9RrT3JVaR+py5ig=",
	        /* ServerKey with a character outside base64 */
	        "SCRAM-SHA-256$4096:AAECAwQFBgcICQoLDA0ODw==$gJ4pC97thnuVQBJdGIO+xGHlnKL1Zx2S+"
	        "230NRJ3HR8=:"
	        "KGKxEt3VINf+beX/v4NCNbxlZg8u9RrT3JVaR+py5i*=",
	        /* extra field */
	        SCRAM_SECRET ":AAAA",
	        /* ServerKey missing */
	        "SCRAM-SHA-256$4096:AAECAwQFBgcICQoLDA0ODw==$gJ4pC97thnuVQBJdGIO+xGHlnKL1Zx2S+"
	        "230NRJ3HR8=",
	};

	(void)state;
	for (size_t i = 0; i < PF_ARRAY_SIZE(bad); i++) {
		char text[512];

		snprintf(text, sizeof(text), "; users\n\"u\" \"%s\"\n", bad[i]);
		parse_fails(text,
		            "t.txt:2: user \"u\": malformed SCRAM-SHA-256 secret (expected "
		            "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> in base64)",
		            "AAECAwQFBgcICQoLDA0ODw");
	}
}

static void test_many_users(void **state)
{
	enum { N = 5000 };
	size_t cap = (size_t)N * 40, len = 0;
	char *text = malloc(cap);
	pf_auth_file_t *af;
	char name[32], secret[32];

	(void)state;
	assert_non_null(text);
	/* Reverse order, so the table really has to be sorted. */
	for (int i = N - 1; i >= 0; i--)
		len += (size_t)snprintf(text + len, cap - len, "\"user%d\" \"pw%d\"\n", i, i);
	af = parse_ok(text);
	assert_int_equal(pf_auth_file_count(af), N);
	for (int i = 0; i < N; i++) {
		const pf_auth_entry_t *e;

		snprintf(name, sizeof(name), "user%d", i);
		snprintf(secret, sizeof(secret), "pw%d", i);
		e = pf_auth_file_find(af, name);
		if (!e || strcmp(e->secret, secret) != 0)
			fail_msg("lookup of %s failed", name);
	}
	assert_null(pf_auth_file_find(af, "user5000"));
	assert_null(pf_auth_file_find(af, "user"));
	assert_null(pf_auth_file_find(af, ""));
	pf_auth_file_free(af);
	free(text);
}

static void test_missing_file(void **state)
{
	pf_auth_file_t *af = NULL;
	char err[256];

	(void)state;
	assert_int_equal(pf_auth_file_load(DATA_DIR "/nope.txt", &af, err, sizeof(err)), -ENOENT);
	assert_null(af);
	assert_string_equal(err, DATA_DIR "/nope.txt: cannot open: No such file or directory");
	assert_int_equal(pf_auth_file_load(DATA_DIR, &af, err, sizeof(err)), -EISDIR);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_fixture_file), cmocka_unit_test(test_md5_detection),
	        cmocka_unit_test(test_layout),       cmocka_unit_test(test_bad_lines),
	        cmocka_unit_test(test_bad_scram),    cmocka_unit_test(test_many_users),
	        cmocka_unit_test(test_missing_file),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
