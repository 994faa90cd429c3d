/*
 * Unit tests for log: PgBouncer's line format, the level threshold (arguments are not evaluated
 * below it), the describer prefix, the logfile sink and its reopening, and sink errors.
 */
#include "pfbuild.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <setjmp.h>
#include <cmocka.h>

#include "pgfunnel/log.h"

static char *read_all(const char *path)
{
	static char buf[8192];
	FILE *f = fopen(path, "r");
	size_t n;

	if (!f)
		return NULL;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

static void test_time_format(void **state)
{
	char buf[64];

	(void)state;
	setenv("TZ", "UTC", 1);
	tzset();
	/* 2026-11-26 07:00:00.123456 UTC */
	assert_int_equal(pf_log_format_time(buf, sizeof(buf), 1795676400123456LL), 27);
	assert_string_equal(buf, "2026-11-26 07:00:00.123 UTC");
	/* The same second again (formatted from the thread's cache), then the next one. */
	assert_int_equal(pf_log_format_time(buf, sizeof(buf), 1795676400999999LL), 27);
	assert_string_equal(buf, "2026-11-26 07:00:00.999 UTC");
	assert_int_equal(pf_log_format_time(buf, sizeof(buf), 1795676401000001LL), 27);
	assert_string_equal(buf, "2026-11-26 07:00:01.000 UTC");
	assert_int_equal(pf_log_format_time(buf, sizeof(buf), 1795676400500000LL), 27);
	assert_string_equal(buf, "2026-11-26 07:00:00.500 UTC");
	/* A short buffer gets what fits, NUL-terminated. */
	assert_int_equal(pf_log_format_time(buf, 11, 1795676400123456LL), 10);
	assert_string_equal(buf, "2026-11-26");
	assert_int_equal(pf_log_format_time(buf, 0, 1795676400123456LL), 0);
}

/* Zone names of any length (TZ="<name>offset"): the whole name, or the UTC offset when it is
 * longer than the cache holds; never an empty zone field. Each call is a new second, so none
 * comes from the cache of another zone. */
static void test_time_format_long_zone_names(void **state)
{
	char buf[160];

	(void)state;
	setenv("TZ", "<PgfunnelLongZoneNameXYZ>-1", 1);
	tzset();
	assert_int_equal(pf_log_format_time(buf, sizeof(buf), 1795676402123456LL), 47);
	assert_string_equal(buf, "2026-11-26 08:00:02.123 PgfunnelLongZoneNameXYZ");
	setenv("TZ", "<PgfunnelZoneNameLongerThanTheSixtyFourBytesThatTheCacheHoldsForAZone>-1", 1);
	tzset();
	assert_int_equal(pf_log_format_time(buf, sizeof(buf), 1795676403123456LL), 29);
	assert_string_equal(buf, "2026-11-26 08:00:03.123 +0100");
	setenv("TZ", "UTC", 1);
	tzset();
}

static int evaluated;

static int side_effect(void)
{
	return ++evaluated;
}

static size_t describe(const void *obj, char *buf, size_t n)
{
	return (size_t)snprintf(buf, n, "C-%s:", (const char *)obj);
}

static void test_file_sink_format_and_threshold(void **state)
{
	char path[] = "/tmp/pf-test-log-XXXXXX";
	char err[256], expect[128];
	int fd = mkstemp(path);
	const char *text;

	(void)state;
	assert_true(fd >= 0);
	close(fd);
	setenv("TZ", "UTC", 1);
	tzset();
	pf_log_set_stderr(false);
	pf_log_set_describer(describe);
	assert_int_equal(pf_log_open(path, false, NULL, NULL, err, sizeof(err)), 0);

	pf_log_set_verbosity(0); /* LOG and above */
	evaluated = 0;
	pf_log_debug(NULL, "hidden %d", side_effect());
	assert_int_equal(evaluated, 0); /* below the threshold: arguments not evaluated */
	pf_log_info("0x1: appdb/alice@127.0.0.1:5000", "login attempt %d", side_effect());
	assert_int_equal(evaluated, 1);
	pf_log_warning(NULL, "plain warning");
	pf_log_set_verbosity(2);
	pf_log_noise(NULL, "noise now visible");
	pf_log_set_verbosity(0);

	text = read_all(path);
	assert_non_null(text);
	snprintf(expect, sizeof(expect),
	         " [%d] LOG C-0x1: appdb/alice@127.0.0.1:5000: login attempt 1\n", (int)getpid());
	assert_non_null(strstr(text, expect));
	snprintf(expect, sizeof(expect), " [%d] WARNING plain warning\n", (int)getpid());
	assert_non_null(strstr(text, expect));
	assert_non_null(strstr(text, "] NOISE noise now visible\n"));
	assert_null(strstr(text, "hidden"));
	/* Every line starts with the PgBouncer timestamp "YYYY-MM-DD HH:MM:SS.mmm UTC". */
	assert_int_equal(text[4], '-');
	assert_int_equal(text[10], ' ');
	assert_int_equal(text[19], '.');
	assert_memory_equal(text + 23, " UTC [", 6);

	pf_log_close();
	pf_log_set_describer(NULL);
	unlink(path);
}

static void test_reopen_follows_rotation(void **state)
{
	char path[] = "/tmp/pf-test-log-XXXXXX";
	char rotated[64], err[256];
	int fd = mkstemp(path);

	(void)state;
	assert_true(fd >= 0);
	close(fd);
	snprintf(rotated, sizeof(rotated), "%s.1", path);
	pf_log_set_stderr(false);
	pf_log_set_verbosity(0);
	assert_int_equal(pf_log_open(path, false, NULL, NULL, err, sizeof(err)), 0);
	pf_log_info(NULL, "before rotation");
	assert_int_equal(rename(path, rotated), 0);
	assert_int_equal(pf_log_reopen(), 0);
	pf_log_info(NULL, "after rotation");
	assert_non_null(strstr(read_all(rotated), "before rotation"));
	assert_null(strstr(read_all(rotated), "after rotation"));
	assert_non_null(strstr(read_all(path), "after rotation"));
	pf_log_close();
	unlink(path);
	unlink(rotated);
}

static void test_sink_errors(void **state)
{
	char err[256];

	(void)state;
	assert_true(pf_log_open("/nonexistent-dir/x.log", false, NULL, NULL, err, sizeof(err)) < 0);
	assert_non_null(strstr(err, "/nonexistent-dir/x.log"));
	assert_int_equal(pf_log_open(NULL, true, "pgfunnel", "nosuchfacility", err, sizeof(err)),
	                 -EINVAL);
	assert_non_null(strstr(err, "nosuchfacility"));
	assert_int_equal(pf_log_open(NULL, true, "pgfunnel-test", "local0", err, sizeof(err)), 0);
	pf_log_close();
}

/* Escapes srclen bytes into a buffer of n bytes; checks the result. */
static void escape_is(const char *src, size_t srclen, size_t n, const char *want)
{
	char dst[256];
	size_t len;

	assert_true(n <= sizeof(dst));
	memset(dst, 'Z', sizeof(dst));
	len = pf_log_escape(dst, n, src, srclen);
	assert_string_equal(dst, want);
	assert_int_equal(len, strlen(want));
	assert_true(len < n);
}

#define ESC(lit, want) escape_is(lit, sizeof(lit) - 1, 256, want)

static void test_escape(void **state)
{
	(void)state;
	ESC("appdb/alice@127.0.0.1:5000 login attempt", "appdb/alice@127.0.0.1:5000 login attempt");
	/* A newline in a name would start a forged line. */
	ESC("bob\n2026-12-02 12:00:00.000 UTC [1] LOG forged",
	    "bob\\n2026-12-02 12:00:00.000 UTC [1] LOG forged");
	ESC("a\rb\tc", "a\\rb\\tc");
	ESC("\x01\x1b[31m\x7f", "\\x01\\x1b[31m\\x7f");
	escape_is("a\0b", 3, 256, "a\\x00b");
	/* Backslash doubles, so an escape in the output always means an escaped byte. */
	ESC("a\\x0ab", "a\\\\x0ab");
	/* Well-formed UTF-8 passes; broken or dangerous sequences are escaped byte by byte. */
	ESC("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80",
	    "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
	ESC("\xc3", "\\xc3");                            /* truncated */
	ESC("\xc3(", "\\xc3(");                          /* bad continuation */
	ESC("\xc0\xaf", "\\xc0\\xaf");                   /* overlong '/' */
	ESC("\xe0\x80\xaf", "\\xe0\\x80\\xaf");          /* overlong */
	ESC("\xed\xa0\x80", "\\xed\\xa0\\x80");          /* surrogate */
	ESC("\xf4\x90\x80\x80", "\\xf4\\x90\\x80\\x80"); /* above U+10FFFF */
	ESC("\xff\xfe", "\\xff\\xfe");
	ESC("\xc2\x9b"
	    "31m",
	    "\\xc2\\x9b"
	    "31m");                          /* C1 CSI */
	ESC("\xc2\xa0", "\xc2\xa0");         /* U+00A0 is fine */
	ESC("\xe2\x80\xa8", "\xe2\x80\xa8"); /* valid UTF-8 passes */
	/* A short buffer never holds half an escape or half a character. */
	escape_is("ab\n", 3, 4, "ab");
	escape_is("ab\n", 3, 5, "ab\\n");
	escape_is("a\x01", 2, 5, "a");
	escape_is("a\x01", 2, 6, "a\\x01");
	escape_is("a\xe2\x82\xac", 4, 4, "a");
	escape_is("a\xe2\x82\xac", 4, 5, "a\xe2\x82\xac");
	escape_is("abc", 3, 1, "");
	{
		char one = 'Z';

		assert_int_equal(pf_log_escape(&one, 0, "x", 1), 0);
		assert_int_equal(one, 'Z');
	}
}

/* A line whose prefix and message carry a newline stays one line in the logfile. */
static void test_line_is_escaped(void **state)
{
	char path[] = "/tmp/pf-test-log-XXXXXX";
	char err[256];
	int fd = mkstemp(path);
	const char *text;
	int lines = 0;

	(void)state;
	assert_true(fd >= 0);
	close(fd);
	pf_log_set_stderr(false);
	pf_log_set_describer(describe);
	pf_log_set_verbosity(0);
	assert_int_equal(pf_log_open(path, false, NULL, NULL, err, sizeof(err)), 0);
	pf_log_info("0x1: appdb/x\nLOG forged@h:1", "login attempt: user=%s",
	            "y\r\n2026-01-01 00:00:00.000 UTC [1] LOG forged");
	pf_log_close();
	pf_log_set_describer(NULL);
	text = read_all(path);
	assert_non_null(text);
	for (const char *p = text; *p; p++)
		lines += *p == '\n';
	assert_int_equal(lines, 1);
	assert_non_null(strstr(text, "LOG C-0x1: appdb/x\\nLOG forged@h:1: login attempt: "
	                             "user=y\\r\\n2026-01-01 00:00:00.000 UTC [1] LOG forged\n"));
	unlink(path);
}

#define LOG_THREADS 4
#define LOG_LINES   5000

static void *log_hammer(void *arg)
{
	int id = (int)(intptr_t)arg;

	for (int i = 0; i < LOG_LINES; i++)
		pf_log_info(NULL, "hammer t%d n%d end", id, i);
	return NULL;
}

/* Counts the complete hammer lines in path; fails on a torn one. */
static size_t count_hammer_lines(const char *path)
{
	FILE *f = fopen(path, "r");
	char line[512];
	size_t n = 0;

	assert_non_null(f);
	while (fgets(line, sizeof(line), f)) {
		const char *h = strstr(line, "] LOG hammer t");

		if (!h)
			continue;
		if (!strstr(h, " end\n"))
			fail_msg("torn line: %s", line);
		n++;
	}
	fclose(f);
	return n;
}

/*
 * Threads log while the main thread switches the logfile back and forth and reopens it (what
 * RELOAD and SIGHUP do): every line lands whole in one file or the other, none is lost to a
 * descriptor closed under a writer.
 */
static void test_sinks_reconfigured_while_threads_log(void **state)
{
	char a[] = "/tmp/pf-test-log-XXXXXX", b[] = "/tmp/pf-test-log-XXXXXX";
	char err[256];
	pthread_t th[LOG_THREADS];
	int fa = mkstemp(a), fb = mkstemp(b);

	(void)state;
	assert_true(fa >= 0 && fb >= 0);
	close(fa);
	close(fb);
	pf_log_set_stderr(false);
	pf_log_set_verbosity(0);
	assert_int_equal(pf_log_open(a, false, NULL, NULL, err, sizeof(err)), 0);
	for (int i = 0; i < LOG_THREADS; i++)
		assert_int_equal(pthread_create(&th[i], NULL, log_hammer, (void *)(intptr_t)i), 0);
	for (int i = 0; i < 300; i++) {
		assert_int_equal(pf_log_open(i % 2 ? a : b, false, NULL, NULL, err, sizeof(err)),
		                 0);
		assert_int_equal(pf_log_reopen(), 0);
		pf_log_set_verbosity(i % 3 == 0 ? 1 : 0); /* the threshold changes too: LOG stays */
	}
	for (int i = 0; i < LOG_THREADS; i++)
		assert_int_equal(pthread_join(th[i], NULL), 0);
	pf_log_set_verbosity(0);
	pf_log_close();
	assert_int_equal(count_hammer_lines(a) + count_hammer_lines(b), LOG_THREADS * LOG_LINES);
	unlink(a);
	unlink(b);
}

static void test_utf8_valid(void **state)
{
	(void)state;
	assert_true(pf_utf8_valid("", 0));
	assert_true(pf_utf8_valid("s1", 2));
	assert_true(pf_utf8_valid("caf\xc3\xa9", 5));
	assert_true(pf_utf8_valid("\xf0\x9f\x98\x80", 4));
	assert_false(pf_utf8_valid("\xff\xfe"
	                           "ab",
	                           4));
	assert_false(pf_utf8_valid("\xc3", 1));             /* cut short */
	assert_false(pf_utf8_valid("\xc0\xaf", 2));         /* overlong */
	assert_false(pf_utf8_valid("\xed\xa0\x80", 3));     /* surrogate */
	assert_false(pf_utf8_valid("\xf4\x90\x80\x80", 4)); /* above U+10FFFF */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_time_format),
	        cmocka_unit_test(test_time_format_long_zone_names),
	        cmocka_unit_test(test_file_sink_format_and_threshold),
	        cmocka_unit_test(test_reopen_follows_rotation),
	        cmocka_unit_test(test_sink_errors),
	        cmocka_unit_test(test_escape),
	        cmocka_unit_test(test_utf8_valid),
	        cmocka_unit_test(test_line_is_escaped),
	        cmocka_unit_test(test_sinks_reconfigured_while_threads_log),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
