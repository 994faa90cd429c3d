#include "pfbuild.h"
/*
 * Unit tests for util: the string hash used by small name indexes (FNV-1a reference values),
 * constant-time comparison and bounded string copying.
 */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "pgfunnel/util.h"

static void test_hash_str_reference_values(void **state)
{
	(void)state;
	/* The published 32-bit FNV-1a test vectors. */
	assert_true(pf_hash_str("") == 0x811c9dc5u);
	assert_true(pf_hash_str("a") == 0xe40c292cu);
	assert_true(pf_hash_str("foobar") == 0xbf9cf968u);
}

static void test_hash_str_spreads_parameter_names(void **state)
{
	/* 1000 names like a hostile server's ParameterStatus flood land in many slots of 2048. */
	static unsigned char used[2048];
	char name[32];
	size_t distinct = 0;

	(void)state;
	for (int i = 0; i < 1000; i++) {
		snprintf(name, sizeof(name), "p%d", i);
		unsigned slot = pf_hash_str(name) & 2047u;

		if (!used[slot]++)
			distinct++;
	}
	assert_true(distinct > 700);
	/* High bytes count (no sign extension of char). */
	assert_true(pf_hash_str("\xff") != pf_hash_str("\x7f"));
}

static void test_memeq_ct(void **state)
{
	(void)state;
	assert_true(pf_memeq_ct("abc", "abc", 3));
	assert_false(pf_memeq_ct("abc", "abd", 3));
	assert_true(pf_memeq_ct("", "x", 0));
}

static void test_strlcpy_truncates(void **state)
{
	char buf[4];

	(void)state;
	assert_int_equal(pf_strlcpy(buf, "abcdef", sizeof(buf)), 6);
	assert_string_equal(buf, "abc");
	assert_int_equal(pf_strlcpy(buf, "ab", sizeof(buf)), 2);
	assert_string_equal(buf, "ab");
}

/* SipHash-2-4's reference vectors (the paper's appendix; the first and the 15-byte one). */
static void test_strcaseeq_ascii_only(void **state)
{
	(void)state;
	assert_true(pf_strcaseeq("DateStyle", "datestyle"));
	assert_true(pf_strcaseeq("TIMEZONE", "TimeZone"));
	assert_true(pf_strcaseeq("", ""));
	assert_false(pf_strcaseeq("datestyle", "datestyl"));
	assert_false(pf_strcaseeq("a", ""));
	assert_false(pf_strcaseeq("", "a"));
	/* Only letters fold: '@' '[' '`' '{' and high bytes (Latin-1 Ä/ä) stay themselves. */
	assert_false(pf_strcaseeq("@", "`"));
	assert_false(pf_strcaseeq("[", "{"));
	assert_false(pf_strcaseeq("\xc4", "\xe4"));
	assert_true(pf_strcaseeq("\xc4x", "\xc4X"));
}

static void test_siphash24_vectors(void **state)
{
	uint8_t msg[64];

	(void)state;
	for (int i = 0; i < 64; i++)
		msg[i] = (uint8_t)i;
	assert_true(pf_siphash24(0x0706050403020100ull, 0x0f0e0d0c0b0a0908ull, msg, 0) ==
	            0x726fdb47dd0e0e31ull);
	assert_true(pf_siphash24(0x0706050403020100ull, 0x0f0e0d0c0b0a0908ull, msg, 15) ==
	            0xa129ca6149be45e5ull);
	/* Another key, another hash. */
	assert_true(pf_siphash24(1, 2, msg, 15) != 0xa129ca6149be45e5ull);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_siphash24_vectors),
	        cmocka_unit_test(test_hash_str_reference_values),
	        cmocka_unit_test(test_hash_str_spreads_parameter_names),
	        cmocka_unit_test(test_memeq_ct),
	        cmocka_unit_test(test_strlcpy_truncates),
	        cmocka_unit_test(test_strcaseeq_ascii_only),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
