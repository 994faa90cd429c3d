#include "pfbuild.h"
/*
 * Unit tests for the metrics exposition (exact bytes of the formatting helpers, escaping,
 * cumulative histogram buckets, a whole render of a hand-built worker), the HTTP request
 * classifier, and stats' averages and "stats:" log line.
 */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgfunnel/buf.h"
#include "pgfunnel/metrics.h"
#include "pgfunnel/pool.h"
#include "pgfunnel/stats.h"
#include "pgfunnel/runtime.h"

/* The builder's bytes as a NUL-terminated string (the builder keeps owning them). */
static const char *text_of(pf_buf_t *b)
{
	pf_buf_put_u8(b, 0);
	assert_false(b->failed);
	b->len--;
	return (const char *)b->data;
}

static void test_label_value_escaping(void **state)
{
	pf_buf_t b;

	(void)state;
	pf_buf_init(&b);
	pf_metrics_put_label_value(&b, "plain");
	assert_string_equal(text_of(&b), "plain");
	pf_buf_reset(&b);
	pf_metrics_put_label_value(&b, "a\\b\"c\nd");
	assert_string_equal(text_of(&b), "a\\\\b\\\"c\\nd");
	pf_buf_reset(&b);
	pf_metrics_put_label_value(&b, "\\\\\"\n\n");
	assert_string_equal(text_of(&b), "\\\\\\\\\\\"\\n\\n");
	pf_buf_reset(&b);
	/* Tabs, carriage returns and UTF-8 pass unchanged; NULL is the empty string. */
	pf_metrics_put_label_value(&b, "t\tr\r\xc3\xa9");
	assert_string_equal(text_of(&b), "t\tr\r\xc3\xa9");
	pf_buf_reset(&b);
	pf_metrics_put_label_value(&b, NULL);
	assert_int_equal(b.len, 0);
	pf_buf_free(&b);
}

static void test_family_help_type(void **state)
{
	pf_buf_t b;

	(void)state;
	pf_buf_init(&b);
	pf_metrics_put_family(&b, "pgfunnel_x_total", "counter", "Says \"hi\" \\ and\nmore.");
	assert_string_equal(text_of(&b), "# HELP pgfunnel_x_total Says \"hi\" \\\\ and\\nmore.\n"
	                                 "# TYPE pgfunnel_x_total counter\n");
	pf_buf_free(&b);
}

static void test_sample_lines(void **state)
{
	pf_buf_t b;
	const pf_metrics_label_t l[] = {{"database", "app\"db"}, {"user", "a\\b"}};
	pf_metrics_label_t many[PF_METRICS_MAX_LABELS + 1];

	(void)state;
	pf_buf_init(&b);
	pf_metrics_put_sample(&b, "m", NULL, 0, "1");
	pf_metrics_put_sample(&b, "m", l, 1, "2");
	pf_metrics_put_sample(&b, "m", l, 2, "3.5");
	assert_string_equal(text_of(&b), "m 1\n"
	                                 "m{database=\"app\\\"db\"} 2\n"
	                                 "m{database=\"app\\\"db\",user=\"a\\\\b\"} 3.5\n");
	/* More labels than allowed: the builder fails instead of writing a partial line. */
	for (size_t i = 0; i < PF_ARRAY_SIZE(many); i++)
		many[i] = l[0];
	pf_buf_reset(&b);
	pf_metrics_put_sample(&b, "m", many, PF_ARRAY_SIZE(many), "1");
	assert_true(b.failed);
	pf_buf_free(&b);
}

static void test_number_formats(void **state)
{
	char buf[32];

	(void)state;
	assert_string_equal(pf_metrics_fmt_u64(buf, sizeof(buf), 0), "0");
	assert_string_equal(pf_metrics_fmt_u64(buf, sizeof(buf), UINT64_MAX),
	                    "18446744073709551615");
	assert_string_equal(pf_metrics_fmt_seconds(buf, sizeof(buf), 0), "0");
	assert_string_equal(pf_metrics_fmt_seconds(buf, sizeof(buf), -7), "0");
	assert_string_equal(pf_metrics_fmt_seconds(buf, sizeof(buf), 1), "0.000001");
	assert_string_equal(pf_metrics_fmt_seconds(buf, sizeof(buf), 100), "0.0001");
	assert_string_equal(pf_metrics_fmt_seconds(buf, sizeof(buf), 500000), "0.5");
	assert_string_equal(pf_metrics_fmt_seconds(buf, sizeof(buf), 1500000), "1.5");
	assert_string_equal(pf_metrics_fmt_seconds(buf, sizeof(buf), 3000000), "3");
	assert_string_equal(pf_metrics_fmt_seconds(buf, sizeof(buf), 12345678), "12.345678");
	assert_string_equal(pf_metrics_fmt_seconds(buf, sizeof(buf), 86400000010), "86400.00001");
}

static void test_histogram_cumulative(void **state)
{
	pf_buf_t b;
	const pf_usec_t bounds[] = {100, 1000000, 5000000};
	const uint64_t counts[] = {2, 0, 5, 1};
	const pf_metrics_label_t l[] = {{"database", "d"}};

	(void)state;
	pf_buf_init(&b);
	pf_metrics_put_histogram(&b, "w_seconds", l, 1, bounds, 3, counts, 7250000);
	assert_string_equal(text_of(&b), "w_seconds_bucket{database=\"d\",le=\"0.0001\"} 2\n"
	                                 "w_seconds_bucket{database=\"d\",le=\"1\"} 2\n"
	                                 "w_seconds_bucket{database=\"d\",le=\"5\"} 7\n"
	                                 "w_seconds_bucket{database=\"d\",le=\"+Inf\"} 8\n"
	                                 "w_seconds_sum{database=\"d\"} 7.25\n"
	                                 "w_seconds_count{database=\"d\"} 8\n");
	pf_buf_free(&b);
}

static void test_wait_bounds_ascending(void **state)
{
	(void)state;
	for (size_t i = 1; i < PF_ARRAY_SIZE(pf_pool_wait_bounds); i++)
		assert_true(pf_pool_wait_bounds[i - 1] < pf_pool_wait_bounds[i]);
}

static int parse(const char *req, bool *head)
{
	return pf_metrics_parse_request(req, strlen(req), head);
}

static void test_parse_request(void **state)
{
	bool head = true;
	char big[PF_METRICS_MAX_REQUEST];

	(void)state;
	assert_int_equal(parse("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &head), 200);
	assert_false(head);
	assert_int_equal(parse("HEAD /metrics HTTP/1.0\r\n\r\n", &head), 200);
	assert_true(head);
	assert_int_equal(parse("GET /metrics?name[]=x HTTP/1.1\n\n", &head), 200);
	assert_false(head);
	assert_int_equal(parse("GET http://h:9/metrics HTTP/1.1\r\n\r\n", &head), 200);
	/* Incomplete heads wait for more. */
	assert_int_equal(parse("", &head), 0);
	assert_int_equal(parse("GET /metrics HTTP/1.1\r\n", &head), 0);
	assert_int_equal(parse("GET /metrics HTTP/1.1\r\nHost: x\r\n\r", &head), 0);
	/* Other paths, other methods (the path decides first), bad lines and versions. */
	assert_int_equal(parse("GET / HTTP/1.1\r\n\r\n", &head), 404);
	assert_int_equal(parse("GET /metricsx HTTP/1.1\r\n\r\n", &head), 404);
	assert_int_equal(parse("GET /metrics/ HTTP/1.1\r\n\r\n", &head), 404);
	assert_int_equal(parse("POST /x HTTP/1.1\r\n\r\n", &head), 404);
	assert_int_equal(parse("POST /metrics HTTP/1.1\r\n\r\n", &head), 405);
	assert_int_equal(parse("get /metrics HTTP/1.1\r\n\r\n", &head), 405);
	assert_int_equal(parse("DELETE /metrics HTTP/1.1\r\n\r\n", &head), 405);
	assert_int_equal(parse("GET /metrics HTTP/2.0\r\n\r\n", &head), 505);
	assert_int_equal(parse("GET /metrics HTTP/1.10\r\n\r\n", &head), 505);
	assert_int_equal(parse("GET /metrics\r\n\r\n", &head), 400);
	assert_int_equal(parse("GET  /metrics HTTP/1.1\r\n\r\n", &head), 400);
	assert_int_equal(parse("\r\n\r\n", &head), 400);
	assert_int_equal(parse("GET /metrics FTP/1.1\r\n\r\n", &head), 400);
	/* A head that fills the whole buffer without ending: 431; one byte less: keep reading. */
	memset(big, 'a', sizeof(big));
	assert_int_equal(pf_metrics_parse_request(big, sizeof(big), &head), 431);
	assert_int_equal(pf_metrics_parse_request(big, sizeof(big) - 1, &head), 0);
}

static void test_average(void **state)
{
	pf_pool_stats_t old = {0}, cur = {0}, avg;

	(void)state;
	old.xact_count = 100;
	old.xact_time = 5000;
	cur.xact_count = 130;
	cur.xact_time = 5000 + 30 * 150;
	cur.query_count = 45;
	cur.query_time = 45 * 120 + 44;
	cur.server_assignment_count = 9;
	cur.wait_time = 28;
	cur.bytes_received = 3702;
	cur.bytes_sent = 17034;
	cur.client_parse_count = 6;
	cur.server_parse_count = 3;
	cur.bind_count = 7;
	pf_stats_average(&cur, &old, 3 * PF_USEC_PER_SEC, &avg);
	assert_int_equal(avg.xact_count, 10);
	assert_int_equal(avg.query_count, 15);
	assert_int_equal(avg.server_assignment_count, 3);
	assert_int_equal(avg.bytes_received, 1234);
	assert_int_equal(avg.bytes_sent, 5678);
	assert_int_equal(avg.client_parse_count, 2);
	assert_int_equal(avg.server_parse_count, 1);
	assert_int_equal(avg.bind_count, 2); /* 7/3 truncated, as PgBouncer */
	assert_int_equal(avg.xact_time, 150);
	assert_int_equal(avg.query_time, 120); /* (5400 + 44) / 45 truncated */
	assert_int_equal(avg.wait_time, 3);    /* per server assignment: 28 / 9 */

	/* No events: times are 0, not a division by zero; no time: everything 0. */
	pf_stats_average(&old, &old, PF_USEC_PER_SEC, &avg);
	assert_int_equal(avg.xact_time, 0);
	assert_int_equal(avg.query_time, 0);
	assert_int_equal(avg.wait_time, 0);
	pf_stats_average(&cur, &old, 0, &avg);
	assert_int_equal(avg.xact_count, 0);
	assert_int_equal(avg.xact_time, 0);

	/* Huge byte counts do not overflow: 2^62 bytes over 2 s. */
	memset(&old, 0, sizeof(old));
	memset(&cur, 0, sizeof(cur));
	cur.bytes_sent = (uint64_t)1 << 62;
	pf_stats_average(&cur, &old, 2 * PF_USEC_PER_SEC, &avg);
	assert_true(avg.bytes_sent == (uint64_t)1 << 61);
}

static void test_stats_line(void **state)
{
	pf_pool_stats_t avg = {0};
	char line[512];
	const char *expect =
	        "stats: 12 xacts/s, 15 queries/s, 1 client parses/s, 2 server parses/s, "
	        "3 binds/s, in 1234 B/s, out 5678 B/s, xact 150 us, query 120 us, "
	        "wait 3 us";

	(void)state;
	avg.xact_count = 12;
	avg.query_count = 15;
	avg.client_parse_count = 1;
	avg.server_parse_count = 2;
	avg.bind_count = 3;
	avg.bytes_received = 1234;
	avg.bytes_sent = 5678;
	avg.xact_time = 150;
	avg.query_time = 120;
	avg.wait_time = 3;
	assert_int_equal(pf_stats_format_line(&avg, line, sizeof(line)), strlen(expect));
	assert_string_equal(line, expect);
	assert_int_equal(pf_stats_format_line(&avg, line, 10), 9);
	assert_string_equal(line, "stats: 12");
}

/* The fake worker's clock: a fixed loop time. */
static pf_usec_t fixed_clock(void)
{
	return 0;
}

/* A worker with one database and one pool, built by hand (no loop, no sockets). */
typedef struct fake {
	pf_worker_t w;
	pf_database_t db;
	pf_user_t user;
	pf_pool_t pool;
} fake_t;

static void fake_init(fake_t *f)
{
	memset(f, 0, sizeof(*f));
	pf_list_init(&f->w.pools);
	pf_list_init(&f->w.databases);
	f->w.net.clock = fixed_clock;
	f->w.start_wall = 1700000000250000;
	f->w.client_count = 4;
	f->db.name = "app\"db";
	f->user.name = "al\\ice";
	pf_list_append(&f->w.databases, &f->db.node);
	f->pool.db = &f->db;
	f->pool.user = &f->user;
	f->pool.worker = &f->w;
	pf_list_init(&f->pool.active_clients);
	pf_list_init(&f->pool.waiting_clients);
	pf_list_init(&f->pool.active_servers);
	pf_list_init(&f->pool.idle_servers);
	pf_list_init(&f->pool.used_servers);
	pf_list_init(&f->pool.tested_servers);
	pf_list_init(&f->pool.new_servers);
	pf_list_append(&f->w.pools, &f->pool.node);
}

static void assert_has_line(const char *text, const char *line)
{
	char needle[1024];
	bool found;

	assert_true(strlen(line) + 3 <= sizeof(needle));
	snprintf(needle, sizeof(needle), "\n%s\n", line);
	found = strstr(text, needle) != NULL;
	if (!found)
		print_error("missing line: %s\n", line);
	assert_true(found);
}

static void test_render(void **state)
{
	fake_t *f = malloc(sizeof(*f));
	pf_buf_t b;
	const char *t;
	const char *pl = "database=\"app\\\"db\",user=\"al\\\\ice\"";
	char line[256];

	(void)state;
	assert_non_null(f);
	fake_init(f);
	f->pool.stats.xact_count = 7;
	f->pool.stats.wait_time = 1500;
	f->db.stats_retired.xact_count = 3;
	f->db.stats_retired.query_time = 2500000;
	pf_pool_note_wait(&f->pool, 50);
	pf_pool_note_wait(&f->pool, 100);
	pf_pool_note_wait(&f->pool, 101);
	pf_pool_note_wait(&f->pool, 20000000);
	pf_stats_note_error(&f->pool, "23505");
	pf_stats_note_error(&f->pool, "23503");
	pf_stats_note_error(&f->pool, "42601");

	pf_buf_init(&b);
	pf_metrics_render(&f->w, &b);
	t = text_of(&b);
	assert_true(strncmp(t, "# HELP pgfunnel_up ", 19) == 0);
	assert_has_line(t, "# TYPE pgfunnel_up gauge");
	assert_has_line(t, "pgfunnel_up 1");
	assert_has_line(t, "pgfunnel_build_info{version=\"" PF_VERSION "\"} 1");
	assert_has_line(t, "process_start_time_seconds 1700000000.25");
	assert_has_line(t, "pgfunnel_clients 4");
	snprintf(line, sizeof(line), "pgfunnel_pool_clients{%s,state=\"waiting\"} 0", pl);
	assert_has_line(t, line);
	snprintf(line, sizeof(line), "pgfunnel_pool_servers{%s,state=\"login\"} 0", pl);
	assert_has_line(t, line);
	snprintf(line, sizeof(line), "pgfunnel_pool_max_wait_seconds{%s} 0", pl);
	assert_has_line(t, line);
	snprintf(line, sizeof(line), "pgfunnel_pool_errors_total{%s,class=\"23\"} 2", pl);
	assert_has_line(t, line);
	snprintf(line, sizeof(line), "pgfunnel_pool_errors_total{%s,class=\"42\"} 1", pl);
	assert_has_line(t, line);
	assert_has_line(t, "# TYPE pgfunnel_pool_wait_seconds histogram");
	snprintf(line, sizeof(line), "pgfunnel_pool_wait_seconds_bucket{%s,le=\"0.0001\"} 2", pl);
	assert_has_line(t, line);
	snprintf(line, sizeof(line), "pgfunnel_pool_wait_seconds_bucket{%s,le=\"0.0005\"} 3", pl);
	assert_has_line(t, line);
	snprintf(line, sizeof(line), "pgfunnel_pool_wait_seconds_bucket{%s,le=\"10\"} 3", pl);
	assert_has_line(t, line);
	snprintf(line, sizeof(line), "pgfunnel_pool_wait_seconds_bucket{%s,le=\"+Inf\"} 4", pl);
	assert_has_line(t, line);
	snprintf(line, sizeof(line), "pgfunnel_pool_wait_seconds_sum{%s} 0.0015", pl);
	assert_has_line(t, line);
	snprintf(line, sizeof(line), "pgfunnel_pool_wait_seconds_count{%s} 4", pl);
	assert_has_line(t, line);
	/* Database totals include the pools already freed (stats_retired). */
	assert_has_line(t, "# TYPE pgfunnel_database_transactions_total counter");
	assert_has_line(t, "pgfunnel_database_transactions_total{database=\"app\\\"db\"} 10");
	assert_has_line(t, "pgfunnel_database_query_seconds_total{database=\"app\\\"db\"} 2.5");
	assert_has_line(t, "pgfunnel_database_wait_seconds_total{database=\"app\\\"db\"} 0.0015");
	assert_int_equal(t[b.len - 1], '\n');
	pf_buf_free(&b);
	free(f);
}

/* Every sample's family was announced by HELP then TYPE before it, and families do not repeat. */
static void test_render_structure(void **state)
{
	fake_t *f = malloc(sizeof(*f));
	pf_buf_t b;
	char *t, *save = NULL, *line;
	char family[128] = "", typed[128] = "";
	char seen[64][128];
	size_t nseen = 0, samples = 0;

	(void)state;
	assert_non_null(f);
	fake_init(f);
	pf_buf_init(&b);
	pf_metrics_render(&f->w, &b);
	t = strdup(text_of(&b));
	assert_non_null(t);
	for (line = strtok_r(t, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char name[128];

		if (strncmp(line, "# HELP ", 7) == 0) {
			sscanf(line + 7, "%127s", family);
			for (size_t i = 0; i < nseen; i++)
				assert_string_not_equal(seen[i], family);
			assert_true(nseen < 64);
			strcpy(seen[nseen++], family);
			typed[0] = '\0';
			continue;
		}
		if (strncmp(line, "# TYPE ", 7) == 0) {
			sscanf(line + 7, "%127s", typed);
			assert_string_equal(typed, family);
			continue;
		}
		sscanf(line, "%127[a-zA-Z0-9_:]", name);
		assert_string_equal(typed, family);
		assert_true(strncmp(name, family, strlen(family)) == 0);
		samples++;
	}
	assert_true(nseen >= 20);
	assert_true(samples > nseen);
	free(t);
	pf_buf_free(&b);
	free(f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_label_value_escaping),
	        cmocka_unit_test(test_family_help_type),
	        cmocka_unit_test(test_sample_lines),
	        cmocka_unit_test(test_number_formats),
	        cmocka_unit_test(test_histogram_cumulative),
	        cmocka_unit_test(test_wait_bounds_ascending),
	        cmocka_unit_test(test_parse_request),
	        cmocka_unit_test(test_average),
	        cmocka_unit_test(test_stats_line),
	        cmocka_unit_test(test_render),
	        cmocka_unit_test(test_render_structure),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
