/*
 * Unit tests for log: PgBouncer's line format, the level threshold (arguments are not evaluated
 * below it), the describer prefix, the logfile sink and its reopening, and sink errors.
 */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
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

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_time_format),
	        cmocka_unit_test(test_file_sink_format_and_threshold),
	        cmocka_unit_test(test_reopen_follows_rotation),
	        cmocka_unit_test(test_sink_errors),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
