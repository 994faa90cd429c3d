#include "pfbuild.h"
/*
 * Unit tests for reqq: message sequences a client sends and the answers PostgreSQL gives, checked
 * answer by answer — pipelines, errors in the middle of a pipeline (the server skips to Sync),
 * Flush without Sync, COPY IN/OUT in both protocols (Syncs ignored during COPY IN), the empty
 * query, answers that match nothing, the bound on owed requests and the pooler's own requests;
 * then the routing of each answer (forward, swallow, failed) with injected messages, tags,
 * drops and answers the pooler synthesizes.
 */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "pgfunnel/reqq.h"

/* Sends each frontend message type in types, as a client would. */
static void send_msgs(pf_reqq_t *q, const char *types)
{
	for (const char *t = types; *t; t++)
		assert_int_equal(pf_reqq_push(q, (uint8_t)*t, 0), 0);
}

/*
 * Feeds the backend message types in types; verdicts gives the expected verdict of each:
 * 'a' async, '.' part of an answer, 'd' done, 'x' mismatch.
 */
static void answer(pf_reqq_t *q, const char *types, const char *verdicts)
{
	assert_int_equal(strlen(types), strlen(verdicts));
	for (size_t i = 0; types[i]; i++) {
		pf_reqq_verdict_t want = verdicts[i] == 'a'   ? PF_REQQ_ASYNC
		                         : verdicts[i] == '.' ? PF_REQQ_ANSWER
		                         : verdicts[i] == 'd' ? PF_REQQ_DONE
		                                              : PF_REQQ_MISMATCH;
		pf_reqq_verdict_t got = pf_reqq_answer(q, (uint8_t)types[i], NULL);

		if (got != want)
			fail_msg("answer %zu ('%c'): verdict %d, expected %d", i, types[i], got,
			         want);
	}
}

/* The tags the drop callback reported, in order, as "4 9 ". */
typedef struct drop_log {
	char text[256];
	unsigned n;
} drop_log_t;

static void log_drop(void *arg, const pf_reqq_entry_t *e)
{
	drop_log_t *log = arg;
	size_t used = strlen(log->text);

	assert_true(e->tag != 0); /* only tagged entries are reported */
	snprintf(log->text + used, sizeof(log->text) - used, "%u ", (unsigned)e->tag);
	log->n++;
}

static void init_logged(pf_reqq_t *q, drop_log_t *log)
{
	memset(log, 0, sizeof(*log));
	pf_reqq_init(q);
	pf_reqq_set_drop_cb(q, log_drop, log);
}

/*
 * Routes the backend message types in types; routes gives the expected route of each:
 * 'f' forward, 's' swallow, 'F' failed-forward, 'W' failed-swallow, 'c' close. The last
 * answer is left in *last (may be NULL).
 */
static void route(pf_reqq_t *q, const char *types, const char *routes, pf_reqq_ans_t *last)
{
	pf_reqq_ans_t ans;

	assert_int_equal(strlen(types), strlen(routes));
	for (size_t i = 0; types[i]; i++) {
		pf_reqq_route_t want = routes[i] == 'f'   ? PF_REQQ_FORWARD
		                       : routes[i] == 's' ? PF_REQQ_SWALLOW
		                       : routes[i] == 'F' ? PF_REQQ_FAILED_FORWARD
		                       : routes[i] == 'W' ? PF_REQQ_FAILED_SWALLOW
		                                          : PF_REQQ_CLOSE;
		pf_reqq_route_t got = pf_reqq_route(q, (uint8_t)types[i], &ans);

		if (got != want)
			fail_msg("message %zu ('%c'): route %d, expected %d", i, types[i], got,
			         want);
	}
	if (last)
		*last = ans;
}

/* Injects one message of the pooler's, as the prepared-statement layer would. */
static void inject(pf_reqq_t *q, uint8_t type, uint32_t tag)
{
	assert_int_equal(pf_reqq_reserve(q, 2), 0);
	assert_int_equal(pf_reqq_inject(q, type, tag), 0);
}

static void test_simple_query(void **state)
{
	pf_reqq_t q;

	(void)state;
	pf_reqq_init(&q);
	assert_true(pf_reqq_is_reusable(&q));
	send_msgs(&q, "Q");
	assert_false(pf_reqq_is_idle(&q));
	answer(&q, "TDDCZ", "....d");
	assert_true(pf_reqq_is_reusable(&q));
	/* Two statements in one Query: one ReadyForQuery. */
	send_msgs(&q, "Q");
	answer(&q, "TDCTDCZ", "......d");
	assert_true(pf_reqq_is_reusable(&q));
	pf_reqq_free(&q);
}

static void test_two_queries_back_to_back(void **state)
{
	pf_reqq_t q;

	(void)state;
	pf_reqq_init(&q);
	send_msgs(&q, "QQ");
	answer(&q, "TDCZ", "...d");
	assert_false(pf_reqq_is_idle(&q)); /* the second one is still owed */
	assert_int_equal(pf_reqq_len(&q), 1);
	answer(&q, "TDCZ", "...d");
	assert_true(pf_reqq_is_reusable(&q));
	pf_reqq_free(&q);
}

static void test_empty_query(void **state)
{
	pf_reqq_t q;

	(void)state;
	pf_reqq_init(&q);
	send_msgs(&q, "Q");
	answer(&q, "IZ", ".d");
	assert_true(pf_reqq_is_reusable(&q));
	pf_reqq_free(&q);
}

static void test_extended_pipeline(void **state)
{
	pf_reqq_t q;

	(void)state;
	pf_reqq_init(&q);
	/* Parse, Bind, Describe portal, Execute, Sync, twice (several Syncs in flight). */
	send_msgs(&q, "PBDESPBDESC");
	assert_int_equal(pf_reqq_len(&q), 11);
	answer(&q, "12TDCZ", "ddd.dd");
	assert_false(pf_reqq_is_idle(&q));
	answer(&q, "12nCZ", "ddddd");
	/* The Close is owed, and it is not followed by a Sync yet. */
	assert_int_equal(pf_reqq_len(&q), 1);
	answer(&q, "3", "d");
	assert_int_equal(pf_reqq_len(&q), 0);
	assert_false(pf_reqq_is_idle(&q));
	send_msgs(&q, "S");
	answer(&q, "Z", "d");
	assert_true(pf_reqq_is_reusable(&q));
	pf_reqq_free(&q);
}

static void test_describe_statement_and_portal_suspended(void **state)
{
	pf_reqq_t q;

	(void)state;
	pf_reqq_init(&q);
	send_msgs(&q, "PDBES");
	answer(&q, "1tT2DDsZ", "d.dd..dd");
	assert_true(pf_reqq_is_reusable(&q));
	send_msgs(&q, "PDS");
	answer(&q, "1tnZ", "d.dd");
	assert_true(pf_reqq_is_reusable(&q));
	pf_reqq_free(&q);
}

static void test_flush_without_sync(void **state)
{
	pf_reqq_t q;

	(void)state;
	pf_reqq_init(&q);
	send_msgs(&q, "PBEH");
	answer(&q, "12DC", "dd.d");
	/* Everything answered, but the server waits for a Sync: not to be reused. */
	assert_int_equal(pf_reqq_len(&q), 0);
	assert_false(pf_reqq_is_idle(&q));
	send_msgs(&q, "S");
	answer(&q, "Z", "d");
	assert_true(pf_reqq_is_reusable(&q));
	pf_reqq_free(&q);
}

static void test_error_in_the_middle_of_a_pipeline(void **state)
{
	pf_reqq_t q;

	(void)state;
	pf_reqq_init(&q);
	send_msgs(&q, "PBEPBESPBES");
	/* The first Execute fails: the second Parse/Bind/Execute produce nothing. */
	answer(&q, "12E", "ddd");
	assert_int_equal(pf_reqq_len(&q), 5); /* the Sync, then the last Parse/Bind/Execute/Sync */
	answer(&q, "Z", "d");
	answer(&q, "12CZ", "dddd");
	assert_true(pf_reqq_is_reusable(&q));
	pf_reqq_free(&q);
}

static void test_error_before_the_sync_is_sent(void **state)
{
	pf_reqq_t q;

	(void)state;
	pf_reqq_init(&q);
	send_msgs(&q, "PH");
	answer(&q, "E", "d");
	/* Nothing owed, but the server discards everything until a Sync. */
	assert_int_equal(pf_reqq_len(&q), 0);
	assert_true(q.skip_to_sync);
	assert_false(pf_reqq_is_idle(&q));
	send_msgs(&q, "BEQ"); /* discarded by the server */
	assert_int_equal(pf_reqq_len(&q), 0);
	send_msgs(&q, "S");
	assert_false(q.skip_to_sync);
	answer(&q, "Z", "d");
	assert_true(pf_reqq_is_reusable(&q));
	pf_reqq_free(&q);
}

static void test_sync_commit_error_and_function_call(void **state)
{
	pf_reqq_t q;

	(void)state;
	pf_reqq_init(&q);
	send_msgs(&q, "PBES");
	answer(&q, "12CEZ", "ddd.d"); /* a deferred constraint fails at the implicit COMMIT */
	assert_true(pf_reqq_is_reusable(&q));
	send_msgs(&q, "FF");
	answer(&q, "VZEZ", ".d.d");
	assert_true(pf_reqq_is_reusable(&q));
	pf_reqq_free(&q);
}

static void test_query_ends_extended_work(void **state)
{
	pf_reqq_t q;

	(void)state;
	pf_reqq_init(&q);
	send_msgs(&q, "PQ");
	assert_false(q.need_sync); /* the Query commits the implicit transaction */
	answer(&q, "1CZ", "d.d");
	assert_true(pf_reqq_is_reusable(&q));
	pf_reqq_free(&q);
}

static void test_simple_copy_in(void **state)
{
	pf_reqq_t q;

	(void)state;
	pf_reqq_init(&q);
	send_msgs(&q, "Q");
	answer(&q, "G", ".");
	assert_true(q.copy_in_open);
	send_msgs(&q, "dddc");
	assert_false(q.copy_in_open);
	assert_int_equal(pf_reqq_len(&q), 1);
	answer(&q, "CZ", ".d");
	assert_true(pf_reqq_is_reusable(&q));
	/* CopyFail: an error, then ReadyForQuery; nothing in doubt. */
	send_msgs(&q, "Q");
	answer(&q, "G", ".");
	send_msgs(&q, "df");
	answer(&q, "EZ", ".d");
	assert_true(pf_reqq_is_reusable(&q));
	pf_reqq_free(&q);
}

static void test_extended_copy_in_as_libpq_sends_it(void **state)
{
	pf_reqq_t q;

	(void)state;
	pf_reqq_init(&q);
	/* libpq: Parse/Bind/Describe/Execute/Sync, then the data, CopyDone and another Sync. The
	 * first Sync reaches the server during COPY IN and is ignored. */
	send_msgs(&q, "PBDES");
	answer(&q, "12n", "ddd");
	answer(&q, "G", ".");
	assert_int_equal(pf_reqq_len(&q), 1); /* only the Execute: its Sync was read as COPY data */
	assert_true(q.need_sync);
	send_msgs(&q, "ddHc");
	send_msgs(&q, "S");
	answer(&q, "C", "d");
	assert_false(pf_reqq_is_idle(&q));
	answer(&q, "Z", "d");
	assert_true(pf_reqq_is_reusable(&q));
	pf_reqq_free(&q);
}

static void test_extended_copy_fail_is_doubtful(void **state)
{
	pf_reqq_t q;

	(void)state;
	pf_reqq_init(&q);
	send_msgs(&q, "PBES");
	answer(&q, "12G", "dd.");
	send_msgs(&q, "dfS");
	answer(&q, "EZ", "dd");
	/* Nothing owed, but had the COPY failed before the first Sync was read, a second
	 * ReadyForQuery would follow: the server is not reused. */
	assert_true(pf_reqq_is_idle(&q));
	assert_true(q.doubtful);
	assert_false(pf_reqq_is_reusable(&q));
	pf_reqq_free(&q);
}

static void test_copy_data_sent_before_copy_in_response(void **state)
{
	pf_reqq_t q;

	(void)state;
	pf_reqq_init(&q);
	/* A client that does not wait for CopyInResponse: CopyDone is queued, then re-read. */
	send_msgs(&q, "QddcQ");
	assert_int_equal(pf_reqq_len(&q), 3);
	answer(&q, "G", ".");
	assert_false(q.copy_in_open);
	assert_int_equal(pf_reqq_len(&q), 2);
	answer(&q, "CZ", ".d");
	answer(&q, "TDCZ", "...d");
	assert_true(pf_reqq_is_reusable(&q));
	pf_reqq_free(&q);
}

static void test_two_copies_in_one_query_pipelined(void **state)
{
	pf_reqq_t q;

	(void)state;
	pf_reqq_init(&q);
	/* "COPY a FROM STDIN; COPY b FROM STDIN" with both data streams sent up front. */
	send_msgs(&q, "QdcdcQ");
	answer(&q, "G", ".");
	assert_false(q.copy_in_open);
	answer(&q, "CG", "..");
	assert_false(q.copy_in_open);
	answer(&q, "CZ", ".d");
	answer(&q, "TDCZ", "...d");
	assert_true(pf_reqq_is_reusable(&q));
	pf_reqq_free(&q);
}

static void test_message_consumed_by_copy(void **state)
{
	pf_reqq_t q;

	(void)state;
	pf_reqq_init(&q);
	send_msgs(&q, "Q");
	answer(&q, "G", ".");
	send_msgs(&q, "dQ"); /* the COPY reads the Query as an unexpected message and fails */
	assert_int_equal(pf_reqq_len(&q), 1);
	answer(&q, "EZ", ".d");
	assert_true(pf_reqq_is_idle(&q));
	assert_false(pf_reqq_is_reusable(&q));
	pf_reqq_free(&q);
}

static void test_copy_done_outside_copy_is_ignored(void **state)
{
	pf_reqq_t q;

	(void)state;
	pf_reqq_init(&q);
	send_msgs(&q, "cfd"); /* nothing owed: ignored at once */
	assert_int_equal(pf_reqq_len(&q), 0);
	send_msgs(&q, "Qcc");
	assert_int_equal(pf_reqq_len(&q), 3); /* kept, in case the Query copies */
	answer(&q, "TCZ", "..d");
	assert_int_equal(pf_reqq_len(&q), 0);
	assert_true(pf_reqq_is_reusable(&q));
	pf_reqq_free(&q);
}

static void test_copy_out(void **state)
{
	pf_reqq_t q;

	(void)state;
	pf_reqq_init(&q);
	send_msgs(&q, "Q");
	answer(&q, "HddcCZ", ".....d");
	assert_true(pf_reqq_is_reusable(&q));
	send_msgs(&q, "BES");
	answer(&q, "2HdcCZ", "d...dd");
	assert_true(pf_reqq_is_reusable(&q));
	pf_reqq_free(&q);
}

static void test_mismatches(void **state)
{
	pf_reqq_t q;
	unsigned flags = 99;

	(void)state;
	pf_reqq_init(&q);
	/* Asynchronous messages match nothing and are fine at any time. */
	answer(&q, "NAS", "aaa");
	assert_true(pf_reqq_is_reusable(&q));
	/* A ReadyForQuery nobody asked for. */
	assert_int_equal(pf_reqq_answer(&q, 'Z', &flags), PF_REQQ_MISMATCH);
	assert_int_equal(flags, 0);
	assert_true(q.broken);
	assert_false(pf_reqq_is_idle(&q));
	send_msgs(&q, "QS");
	assert_int_equal(pf_reqq_len(&q), 0); /* nothing is tracked once broken */
	pf_reqq_free(&q);

	pf_reqq_init(&q);
	send_msgs(&q, "P");
	answer(&q, "2", "x"); /* BindComplete for a Parse */
	assert_false(pf_reqq_is_idle(&q));
	pf_reqq_free(&q);

	pf_reqq_init(&q);
	send_msgs(&q, "Q");
	answer(&q, "W", "x"); /* CopyBoth (replication) is not modelled */
	pf_reqq_free(&q);

	pf_reqq_init(&q);
	send_msgs(&q, "Q");
	answer(&q, "Gc", ".x"); /* CopyDone from the server during COPY IN */
	pf_reqq_free(&q);

	pf_reqq_init(&q);
	send_msgs(&q, "Q");
	answer(&q, "GC", ".x"); /* complete before the client ended the COPY */
	pf_reqq_free(&q);

	pf_reqq_init(&q);
	assert_int_equal(pf_reqq_push(&q, 'p', 0), 0); /* not a message after login */
	assert_true(q.broken);
	pf_reqq_free(&q);
}

static void test_pooler_requests_are_flagged(void **state)
{
	pf_reqq_t q;
	unsigned flags = 0;

	(void)state;
	pf_reqq_init(&q);
	assert_int_equal(pf_reqq_push(&q, 'Q', PF_REQQ_POOLER), 0);
	send_msgs(&q, "Q");
	assert_int_equal(pf_reqq_answer(&q, 'C', &flags), PF_REQQ_ANSWER);
	assert_int_equal(flags, PF_REQQ_POOLER);
	assert_int_equal(pf_reqq_answer(&q, 'Z', &flags), PF_REQQ_DONE);
	assert_int_equal(flags, PF_REQQ_POOLER);
	assert_int_equal(pf_reqq_answer(&q, 'C', &flags), PF_REQQ_ANSWER);
	assert_int_equal(flags, 0);
	assert_int_equal(pf_reqq_answer(&q, 'N', &flags), PF_REQQ_ASYNC);
	assert_int_equal(flags, 0);
	pf_reqq_free(&q);
}

static void test_bound(void **state)
{
	pf_reqq_t q;

	(void)state;
	pf_reqq_init(&q);
	for (uint32_t i = 0; i < PF_REQQ_MAX; i++)
		assert_int_equal(pf_reqq_push(&q, 'S', 0), 0);
	assert_int_equal(pf_reqq_push(&q, 'S', 0), -ENOBUFS);
	assert_int_equal(pf_reqq_len(&q), PF_REQQ_MAX);
	assert_int_equal(pf_reqq_answer(&q, 'Z', NULL), PF_REQQ_DONE);
	assert_int_equal(pf_reqq_push(&q, 'S', 0), 0);
	/* The ring wraps around: every answer still pops exactly one request. */
	for (uint32_t i = 0; i < PF_REQQ_MAX; i++)
		assert_int_equal(pf_reqq_answer(&q, 'Z', NULL), PF_REQQ_DONE);
	assert_true(pf_reqq_is_reusable(&q));
	pf_reqq_free(&q);
}

static void test_route_client_pipeline(void **state)
{
	pf_reqq_t q;
	drop_log_t log;
	pf_reqq_ans_t ans;

	(void)state;
	init_logged(&q, &log);
	/* Parse/Bind/Describe/Execute before one Sync, with a notice in the middle: all the
	 * client's, all forwarded, each popping its own entry. */
	send_msgs(&q, "PBDEPBDES");
	route(&q, "12TD", "ffff", &ans);
	assert_int_equal(ans.verdict, PF_REQQ_ANSWER);
	assert_int_equal(ans.kind, PF_RQ_EXECUTE);
	route(&q, "N", "f", &ans);
	assert_int_equal(ans.verdict, PF_REQQ_ASYNC);
	assert_int_equal(ans.kind, 0);
	route(&q, "C12nI", "fffff", &ans);
	assert_int_equal(ans.verdict, PF_REQQ_DONE);
	assert_int_equal(ans.kind, PF_RQ_EXECUTE);
	route(&q, "Z", "f", &ans);
	assert_int_equal(ans.kind, PF_RQ_SYNC);
	assert_true(pf_reqq_is_reusable(&q));
	/* Simple Query with several statements, the empty query, COPY OUT and COPY IN. */
	send_msgs(&q, "QQQ");
	route(&q, "TDCTDCZ", "fffffff", NULL);
	route(&q, "IZ", "ff", NULL);
	route(&q, "HdcCZ", "fffff", NULL);
	send_msgs(&q, "Q");
	route(&q, "G", "f", NULL);
	send_msgs(&q, "ddc");
	route(&q, "CZ", "ff", NULL);
	assert_true(pf_reqq_is_reusable(&q));
	/* Something nobody asked for. */
	route(&q, "2", "c", &ans);
	assert_int_equal(ans.verdict, PF_REQQ_MISMATCH);
	assert_true(pf_reqq_is_broken(&q));
	assert_int_equal(log.n, 0);
	pf_reqq_free(&q);
}

/* The inline fast path and the full function agree, message by message. */
static void test_route_inline_matches_full(void **state)
{
	static const char *const fe[] = {"PBDES", "PBEPBES", "QQ", "PBEH", "Q", "PBES"};
	static const char *const be[] = {"12TDCZ", "12E12CZ", "TDCZIZ", "12DCZ", "GdCZ", "12GCZ"};
	pf_reqq_t a, b;

	(void)state;
	for (size_t t = 0; t < sizeof(fe) / sizeof(fe[0]); t++) {
		pf_reqq_init(&a);
		pf_reqq_init(&b);
		send_msgs(&a, fe[t]);
		send_msgs(&b, fe[t]);
		for (size_t i = 0; be[t][i]; i++) {
			pf_reqq_ans_t x, y;
			pf_reqq_route_t rx = pf_reqq_route(&a, (uint8_t)be[t][i], &x);
			pf_reqq_route_t ry = pf_reqq_route_any(&b, (uint8_t)be[t][i], &y);

			assert_int_equal(rx, ry);
			assert_int_equal(x.verdict, y.verdict);
			assert_int_equal(x.kind, y.kind);
			assert_int_equal(x.flags, y.flags);
			assert_int_equal(x.tag, y.tag);
			assert_int_equal(pf_reqq_len(&a), pf_reqq_len(&b));
		}
		assert_int_equal(pf_reqq_is_idle(&a), pf_reqq_is_idle(&b));
		pf_reqq_free(&a);
		pf_reqq_free(&b);
	}
}

static void test_tagged_client_parse(void **state)
{
	pf_reqq_t q;
	drop_log_t log;
	pf_reqq_ans_t ans;

	(void)state;
	init_logged(&q, &log);
	/* A client's Parse with a rewritten name: its ParseComplete says the statement exists. */
	assert_int_equal(pf_reqq_push_tagged(&q, 'P', 0, 11), 0);
	assert_int_equal(pf_reqq_push_tagged(&q, 'P', 0, 12), 0);
	send_msgs(&q, "S");
	route(&q, "1", "f", &ans);
	assert_int_equal(ans.verdict, PF_REQQ_DONE);
	assert_int_equal(ans.kind, PF_RQ_PARSE);
	assert_int_equal(ans.tag, 11);
	/* The second fails: its tag comes with the ErrorResponse, not as a drop. */
	route(&q, "E", "f", &ans);
	assert_int_equal(ans.tag, 12);
	assert_int_equal(ans.verdict, PF_REQQ_DONE);
	route(&q, "Z", "f", &ans);
	assert_int_equal(ans.tag, 0);
	assert_int_equal(log.n, 0);
	assert_true(pf_reqq_is_reusable(&q));
	pf_reqq_free(&q);
}

static void test_error_drops_tagged_entries(void **state)
{
	pf_reqq_t q;
	drop_log_t log;

	(void)state;
	init_logged(&q, &log);
	/* P B E, then a tagged Parse (the client's), an injected Parse and a Bind, then Sync, then
	 * a tagged Parse after the Sync. The first Execute fails: the server skips up to Sync. */
	send_msgs(&q, "PBE");
	assert_int_equal(pf_reqq_push_tagged(&q, 'P', 0, 4), 0);
	inject(&q, 'P', 9);
	send_msgs(&q, "BS");
	assert_int_equal(pf_reqq_push_tagged(&q, 'P', 0, 5), 0);
	route(&q, "12", "ff", NULL);
	route(&q, "E", "f", NULL);
	assert_string_equal(log.text, "4 9 ");
	assert_int_equal(pf_reqq_len(&q), 2); /* the Sync, the last Parse */
	route(&q, "Z1", "ff", NULL);
	assert_string_equal(log.text, "4 9 ");     /* 5 was answered, not dropped */
	assert_true(pf_reqq_is_idle(&q) == false); /* the last Parse awaits a Sync */
	send_msgs(&q, "S");
	route(&q, "Z", "f", NULL);
	assert_true(pf_reqq_is_reusable(&q));
	pf_reqq_free(&q);
}

static void test_injected_parse_swallowed(void **state)
{
	pf_reqq_t q;
	drop_log_t log;
	pf_reqq_ans_t ans;

	(void)state;
	init_logged(&q, &log);
	/* The client binds a statement this server lacks: Parse injected before its Bind. */
	inject(&q, 'P', 7);
	send_msgs(&q, "BES");
	assert_int_equal(pf_reqq_len(&q), 4);
	route(&q, "1", "s", &ans);
	assert_int_equal(ans.verdict, PF_REQQ_DONE);
	assert_int_equal(ans.kind, PF_RQ_PARSE);
	assert_int_equal(ans.flags, PF_REQQ_POOLER);
	assert_int_equal(ans.tag, 7);
	route(&q, "2DDCZ", "fffff", &ans);
	assert_int_equal(ans.flags, 0);
	assert_true(pf_reqq_is_reusable(&q));
	/* In the middle of the client's own pipeline, answered in order. */
	send_msgs(&q, "PBE");
	inject(&q, 'P', 8);
	send_msgs(&q, "BES");
	route(&q, "12C", "fff", NULL);
	route(&q, "1", "s", &ans);
	assert_int_equal(ans.tag, 8);
	route(&q, "2CZ", "fff", NULL);
	assert_true(pf_reqq_is_reusable(&q));
	/* With Flush instead of Sync: answered, but the server still waits for a Sync. */
	inject(&q, 'P', 9);
	send_msgs(&q, "BEH");
	route(&q, "12DC", "sfff", NULL);
	assert_int_equal(pf_reqq_len(&q), 0);
	assert_false(pf_reqq_is_idle(&q));
	send_msgs(&q, "S");
	route(&q, "Z", "f", NULL);
	assert_true(pf_reqq_is_reusable(&q));
	assert_int_equal(log.n, 0);
	pf_reqq_free(&q);
}

static void test_injected_close(void **state)
{
	pf_reqq_t q;
	drop_log_t log;
	pf_reqq_ans_t ans;

	(void)state;
	init_logged(&q, &log);
	/* LRU eviction: a Close and the Parse of the statement that replaces it, then the
	 * client's Bind/Execute/Sync. */
	inject(&q, 'C', 5);
	inject(&q, 'P', 6);
	send_msgs(&q, "BES");
	route(&q, "3", "s", &ans);
	assert_int_equal(ans.kind, PF_RQ_CLOSE);
	assert_int_equal(ans.tag, 5);
	route(&q, "1", "s", &ans);
	assert_int_equal(ans.tag, 6);
	route(&q, "2CZ", "fff", NULL);
	assert_true(pf_reqq_is_reusable(&q));
	pf_reqq_free(&q);
}

static void test_injected_message_fails(void **state)
{
	pf_reqq_t q;
	drop_log_t log;
	pf_reqq_ans_t ans;

	(void)state;
	init_logged(&q, &log);
	/* The injected Parse fails (the table went away): the server skips the client's Bind and
	 * Execute, so the error is theirs and goes to the client; then its Sync's ReadyForQuery. */
	inject(&q, 'P', 7);
	send_msgs(&q, "BES");
	route(&q, "E", "F", &ans);
	assert_int_equal(ans.verdict, PF_REQQ_DONE);
	assert_int_equal(ans.tag, 7);
	assert_int_equal(pf_reqq_len(&q), 1);
	route(&q, "Z", "f", NULL);
	assert_true(pf_reqq_is_reusable(&q));
	/* The same before the client's Sync was sent: the server skips until it comes. */
	inject(&q, 'P', 8);
	send_msgs(&q, "BH");
	route(&q, "E", "F", &ans);
	assert_int_equal(ans.tag, 8);
	assert_true(q.skip_to_sync);
	assert_int_equal(pf_reqq_push_tagged(&q, 'E', 0, 0), -ECANCELED);
	send_msgs(&q, "S");
	route(&q, "Z", "f", NULL);
	assert_true(pf_reqq_is_reusable(&q));
	/* A run of the pooler's own (Parse + Sync): no client message skipped, nothing for the
	 * client; the caller decides. The client's Query behind runs normally. */
	inject(&q, 'P', 9);
	inject(&q, 'S', 0);
	send_msgs(&q, "Q");
	route(&q, "E", "W", &ans);
	assert_int_equal(ans.tag, 9);
	route(&q, "Z", "s", &ans);
	assert_int_equal(ans.kind, PF_RQ_SYNC);
	route(&q, "CZ", "ff", NULL);
	assert_true(pf_reqq_is_reusable(&q));
	/* An injected Close right before the client's Sync: nothing of the client's skipped. */
	send_msgs(&q, "PBE");
	inject(&q, 'C', 10);
	send_msgs(&q, "S");
	route(&q, "12C", "fff", NULL);
	route(&q, "E", "W", &ans);
	assert_int_equal(ans.tag, 10);
	route(&q, "Z", "f", NULL);
	/* Several of the pooler's own skipped: still nothing of the client's. */
	inject(&q, 'P', 11);
	inject(&q, 'P', 12);
	inject(&q, 'S', 0);
	send_msgs(&q, "Q");
	route(&q, "E", "W", &ans);
	assert_int_equal(ans.tag, 11);
	assert_string_equal(log.text, "12 ");
	route(&q, "Z", "s", NULL);
	route(&q, "CZ", "ff", NULL);
	assert_true(pf_reqq_is_reusable(&q));
	/* A pooler's Query (a task) that fails: its error and ReadyForQuery are swallowed. */
	assert_int_equal(pf_reqq_push(&q, 'Q', PF_REQQ_POOLER), 0);
	route(&q, "NE", "fW", &ans);
	assert_int_equal(ans.verdict, PF_REQQ_ANSWER);
	route(&q, "Z", "s", NULL);
	assert_true(pf_reqq_is_reusable(&q));
	assert_int_equal(log.n, 1);
	pf_reqq_free(&q);
}

static void test_inject_refused(void **state)
{
	pf_reqq_t q;
	drop_log_t log;

	(void)state;
	init_logged(&q, &log);
	assert_int_equal(pf_reqq_inject(&q, 'H', 1), -EINVAL); /* Flush has no answer */
	assert_int_equal(pf_reqq_inject(&q, 'd', 1), -EINVAL);
	assert_int_equal(pf_reqq_len(&q), 0);
	/* Skipping to Sync after an error: an injected Parse would be discarded. */
	send_msgs(&q, "PH");
	route(&q, "E", "f", NULL);
	assert_int_equal(pf_reqq_inject(&q, 'P', 1), -ECANCELED);
	assert_int_equal(pf_reqq_push_synth(&q, '1', 1), -ECANCELED);
	assert_int_equal(pf_reqq_push_tagged(&q, 'B', 0, 2), -ECANCELED);
	assert_int_equal(pf_reqq_push(&q, 'B', 0), 0); /* the old API: silently nothing */
	assert_int_equal(pf_reqq_len(&q), 0);
	/* ... except a Sync of the pooler's, which ends the skipping (the client left). */
	assert_int_equal(pf_reqq_inject(&q, 'S', 0), 0);
	assert_false(q.skip_to_sync);
	route(&q, "Z", "s", NULL);
	assert_true(pf_reqq_is_reusable(&q));
	/* COPY FROM STDIN under way: would be read as COPY data. */
	send_msgs(&q, "Q");
	route(&q, "G", "f", NULL);
	assert_int_equal(pf_reqq_inject(&q, 'P', 1), -EBUSY);
	assert_int_equal(pf_reqq_push_synth(&q, '1', 1), -EBUSY);
	assert_int_equal(pf_reqq_push_tagged(&q, 'd', 0, 0), 0);
	assert_int_equal(pf_reqq_push_tagged(&q, 'S', 0, 0), -ECANCELED); /* ignored by COPY */
	assert_int_equal(pf_reqq_push_tagged(&q, 'c', 0, 0), 0);
	route(&q, "CZ", "ff", NULL);
	assert_int_equal(pf_reqq_len(&q), 0);
	/* Broken: nothing is recorded. */
	route(&q, "Z", "c", NULL);
	assert_int_equal(pf_reqq_inject(&q, 'P', 1), -EPROTO);
	assert_int_equal(pf_reqq_push_synth(&q, '1', 1), -EPROTO);
	assert_int_equal(pf_reqq_push_tagged(&q, 'P', 0, 1), -EPROTO);
	assert_false(pf_reqq_take_synth(&q, NULL));
	assert_int_equal(pf_reqq_len(&q), 0);
	assert_int_equal(log.n, 0);
	pf_reqq_free(&q);
}

static void test_synthesized_answers(void **state)
{
	pf_reqq_t q;
	drop_log_t log;
	pf_reqq_entry_t e;

	(void)state;
	init_logged(&q, &log);
	/* Nothing owed: the pooler's ParseComplete goes out at once. */
	assert_int_equal(pf_reqq_push_synth(&q, '1', 3), 0);
	assert_true(pf_reqq_take_synth(&q, &e));
	assert_int_equal(e.synth, '1');
	assert_int_equal(e.tag, 3);
	assert_false(pf_reqq_take_synth(&q, &e));
	assert_int_equal(pf_reqq_len(&q), 0);
	/* Behind a Bind/Execute: only after the Execute's last answer, before the Sync's. */
	send_msgs(&q, "BE");
	assert_int_equal(pf_reqq_push_synth(&q, '1', 4), 0);
	assert_false(pf_reqq_take_synth(&q, &e));
	send_msgs(&q, "BES");
	route(&q, "2D", "ff", NULL);
	assert_false(pf_reqq_take_synth(&q, &e));
	route(&q, "C", "f", NULL);
	assert_true(pf_reqq_take_synth(&q, &e));
	assert_int_equal(e.tag, 4);
	assert_false(pf_reqq_take_synth(&q, &e));
	route(&q, "2CZ", "fff", NULL);
	assert_true(pf_reqq_is_reusable(&q));
	/* Two in a row, then a Close the pooler keeps to itself. */
	assert_int_equal(pf_reqq_push_synth(&q, '1', 0), 0);
	assert_int_equal(pf_reqq_push_synth(&q, '3', 0), 0);
	assert_true(pf_reqq_take_synth(&q, &e));
	assert_int_equal(e.synth, '1');
	assert_true(pf_reqq_take_synth(&q, &e));
	assert_int_equal(e.synth, '3');
	assert_int_equal(pf_reqq_len(&q), 0);
	/* An earlier failure: the server would have skipped the client's Parse, so no
	 * ParseComplete; the synthesized one is dropped with the others. */
	send_msgs(&q, "BE");
	assert_int_equal(pf_reqq_push_synth(&q, '1', 5), 0);
	send_msgs(&q, "BES");
	route(&q, "2E", "ff", NULL);
	assert_string_equal(log.text, "5 ");
	assert_false(pf_reqq_take_synth(&q, &e));
	route(&q, "Z", "f", NULL);
	assert_true(pf_reqq_is_reusable(&q));
	/* An injected Parse failing where the only client message behind it was answered by
	 * the pooler: still the client's error. */
	inject(&q, 'P', 6);
	assert_int_equal(pf_reqq_push_synth(&q, '1', 0), 0);
	send_msgs(&q, "S");
	route(&q, "E", "F", NULL);
	route(&q, "Z", "f", NULL);
	assert_true(pf_reqq_is_reusable(&q));
	pf_reqq_free(&q);
}

static void test_synthesized_answer_not_taken(void **state)
{
	pf_reqq_t q;

	(void)state;
	pf_reqq_init(&q);
	assert_int_equal(pf_reqq_push_synth(&q, '1', 0), 0);
	send_msgs(&q, "PS");
	route(&q, "1", "c", NULL); /* the pooler's answer should have gone first */
	assert_true(pf_reqq_is_broken(&q));
	pf_reqq_free(&q);

	/* A client pipelining a COPY FROM STDIN and a Parse the pooler answered itself: the
	 * client meant the Parse to end the COPY, which the server never saw. */
	pf_reqq_init(&q);
	send_msgs(&q, "Q");
	assert_int_equal(pf_reqq_push_synth(&q, '1', 0), 0);
	route(&q, "G", "c", NULL);
	pf_reqq_free(&q);
}

static void test_copy_consumes_tagged_entries(void **state)
{
	pf_reqq_t q;
	drop_log_t log;

	(void)state;
	init_logged(&q, &log);
	/* A Query that turns out to be COPY FROM STDIN, with an injected Parse and the client's
	 * Bind pipelined behind it: the Parse is read as COPY data, which fails the COPY. */
	send_msgs(&q, "Q");
	inject(&q, 'P', 8);
	send_msgs(&q, "BS");
	route(&q, "G", "f", NULL);
	assert_string_equal(log.text, "8 ");
	assert_false(q.copy_in_open);
	route(&q, "EZ", "ff", NULL);
	assert_int_equal(pf_reqq_len(&q), 2); /* the Bind and Sync behind */
	route(&q, "E", "f", NULL);            /* unnamed statement does not exist */
	route(&q, "Z", "f", NULL);
	assert_true(pf_reqq_is_idle(&q));
	assert_false(pf_reqq_is_reusable(&q)); /* doubtful: as for any consumed message */
	pf_reqq_free(&q);
}

static void test_reserve_and_bounds(void **state)
{
	pf_reqq_t q;
	drop_log_t log;

	(void)state;
	init_logged(&q, &log);
	assert_int_equal(pf_reqq_reserve(&q, UINT32_MAX), -ENOBUFS);
	assert_int_equal(pf_reqq_reserve(&q, PF_REQQ_MAX + 1), -ENOBUFS);
	assert_int_equal(pf_reqq_reserve(&q, 0), 0);
	assert_int_equal(pf_reqq_reserve(&q, 100), 0);
	assert_int_equal(q.cap, 128);
	for (uint32_t i = 0; i + 1 < PF_REQQ_MAX; i++)
		assert_int_equal(pf_reqq_push(&q, 'S', 0), 0);
	assert_int_equal(pf_reqq_reserve(&q, 2), -ENOBUFS); /* injected + client's: no room */
	assert_int_equal(pf_reqq_reserve(&q, 1), 0);
	assert_int_equal(pf_reqq_inject(&q, 'P', 1), 0);
	assert_int_equal(pf_reqq_inject(&q, 'P', 2), -ENOBUFS);
	assert_int_equal(pf_reqq_push_synth(&q, '1', 3), -ENOBUFS);
	assert_int_equal(pf_reqq_push_tagged(&q, 'B', 0, 4), -ENOBUFS);
	assert_int_equal(pf_reqq_reserve(&q, UINT32_MAX), -ENOBUFS);
	assert_int_equal(pf_reqq_len(&q), PF_REQQ_MAX);
	for (uint32_t i = 0; i + 1 < PF_REQQ_MAX; i++)
		assert_int_equal(pf_reqq_route(&q, 'Z', &(pf_reqq_ans_t){0}), PF_REQQ_FORWARD);
	route(&q, "1", "s", NULL);
	assert_int_equal(pf_reqq_len(&q), 0);
	assert_int_equal(log.n, 0);
	pf_reqq_free(&q);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_simple_query),
	        cmocka_unit_test(test_two_queries_back_to_back),
	        cmocka_unit_test(test_empty_query),
	        cmocka_unit_test(test_extended_pipeline),
	        cmocka_unit_test(test_describe_statement_and_portal_suspended),
	        cmocka_unit_test(test_flush_without_sync),
	        cmocka_unit_test(test_error_in_the_middle_of_a_pipeline),
	        cmocka_unit_test(test_error_before_the_sync_is_sent),
	        cmocka_unit_test(test_sync_commit_error_and_function_call),
	        cmocka_unit_test(test_query_ends_extended_work),
	        cmocka_unit_test(test_simple_copy_in),
	        cmocka_unit_test(test_extended_copy_in_as_libpq_sends_it),
	        cmocka_unit_test(test_extended_copy_fail_is_doubtful),
	        cmocka_unit_test(test_copy_data_sent_before_copy_in_response),
	        cmocka_unit_test(test_two_copies_in_one_query_pipelined),
	        cmocka_unit_test(test_message_consumed_by_copy),
	        cmocka_unit_test(test_copy_done_outside_copy_is_ignored),
	        cmocka_unit_test(test_copy_out),
	        cmocka_unit_test(test_mismatches),
	        cmocka_unit_test(test_pooler_requests_are_flagged),
	        cmocka_unit_test(test_bound),
	        cmocka_unit_test(test_route_client_pipeline),
	        cmocka_unit_test(test_route_inline_matches_full),
	        cmocka_unit_test(test_tagged_client_parse),
	        cmocka_unit_test(test_error_drops_tagged_entries),
	        cmocka_unit_test(test_injected_parse_swallowed),
	        cmocka_unit_test(test_injected_close),
	        cmocka_unit_test(test_injected_message_fails),
	        cmocka_unit_test(test_inject_refused),
	        cmocka_unit_test(test_synthesized_answers),
	        cmocka_unit_test(test_synthesized_answer_not_taken),
	        cmocka_unit_test(test_copy_consumes_tagged_entries),
	        cmocka_unit_test(test_reserve_and_bounds),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
