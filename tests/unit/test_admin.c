/*
 * Unit tests for the admin console's word parser (pf_admin_next_word) and client id parser
 * (pf_admin_parse_id), and the user names of the unix-socket owner login: the pure pieces of
 * the console, without sockets.
 */
#include "pfbuild.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include "pgfunnel/admin.h"

/* Reads one word of text; checks the result, the word and what is left. */
static void word_is(const char *text, bool upper, int want_rc, const char *want_word,
                    const char *want_rest)
{
	char buf[16];
	const char *s = text;
	int rc = pf_admin_next_word(&s, buf, sizeof(buf), upper);

	assert_int_equal(rc, want_rc);
	if (rc >= 0)
		assert_string_equal(buf, want_word);
	assert_string_equal(s, want_rest);
}

static void test_next_word(void **state)
{
	(void)state;
	word_is("pause appdb", true, 1, "PAUSE", " appdb");
	word_is("  appdb  ", false, 1, "appdb", "  ");
	word_is("app-db.x_1;", false, 1, "app-db.x_1", ";");
	word_is("", false, 0, "", "");
	word_is("   ", false, 0, "", "");
	word_is("  =1", false, 0, "", "=1");
	word_is("-1", false, 1, "-1", "");
	/* Quoted identifiers keep their case and may hold anything but NUL. */
	word_is("\"AppDb\" x", true, 1, "AppDb", " x");
	word_is("\"a b;c\"", false, 1, "a b;c", "");
	word_is("\"a\"\"b\"", false, 1, "a\"b", "");
	word_is("\"\"\"\"", false, 1, "\"", "");
	/* Unterminated and empty quoted identifiers are errors, not a word. */
	word_is("\"appdb", false, -EINVAL, NULL, "\"appdb");
	word_is(" \"appdb\"\"", false, -EINVAL, NULL, " \"appdb\"\"");
	word_is("\"", false, -EINVAL, NULL, "\"");
	word_is("\"\"", false, -EINVAL, NULL, "\"\"");
	word_is("\"\" appdb", false, -EINVAL, NULL, "\"\" appdb");
	/* A word is never cut short to fit (buf holds 15 bytes and the NUL). */
	word_is("abcdefghijklmno", false, 1, "abcdefghijklmno", "");
	word_is("abcdefghijklmnop", false, -ENAMETOOLONG, NULL, "abcdefghijklmnop");
	word_is("\"abcdefghijklmno\"", false, 1, "abcdefghijklmno", "");
	word_is("\"abcdefghijklmnop\"", false, -ENAMETOOLONG, NULL, "\"abcdefghijklmnop\"");
	{
		char one[1];
		const char *s = "x";

		assert_int_equal(pf_admin_next_word(&s, one, 1, false), -ENAMETOOLONG);
		assert_int_equal(pf_admin_next_word(&s, one, 0, false), -ENAMETOOLONG);
		s = "";
		assert_int_equal(pf_admin_next_word(&s, one, 1, false), 0);
	}
}

static void id_is(const char *text, int want_rc, uint64_t want)
{
	uint64_t v = 12345;

	assert_int_equal(pf_admin_parse_id(text, &v), want_rc);
	assert_true(want_rc == 0 ? v == want : v == 12345);
}

static void test_parse_id(void **state)
{
	(void)state;
	id_is("0", 0, 0);
	id_is("1", 0, 1);
	id_is("0001", 0, 1);
	id_is("18446744073709551615", 0, UINT64_MAX);
	id_is("18446744073709551616", -ERANGE, 0);
	id_is("99999999999999999999999", -ERANGE, 0);
	/* strtoull took these: "-1" as 2^64-1. */
	id_is("-1", -EINVAL, 0);
	id_is("+1", -EINVAL, 0);
	id_is(" 1", -EINVAL, 0);
	id_is("1 ", -EINVAL, 0);
	id_is("1x", -EINVAL, 0);
	id_is("0x10", -EINVAL, 0);
	id_is("", -EINVAL, 0);
}

static void test_owner_names(void **state)
{
	(void)state;
	/* PgBouncer's special user, and ours; nothing else, not even by case. */
	assert_true(pf_client_is_owner_name("pgbouncer"));
	assert_true(pf_client_is_owner_name("pgfunnel"));
	assert_false(pf_client_is_owner_name("PGBOUNCER"));
	assert_false(pf_client_is_owner_name("pgbouncer "));
	assert_false(pf_client_is_owner_name("postgres"));
	assert_false(pf_client_is_owner_name(""));
	assert_false(pf_client_is_owner_name(NULL));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_next_word),
	        cmocka_unit_test(test_parse_id),
	        cmocka_unit_test(test_owner_names),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
