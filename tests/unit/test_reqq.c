#include "pfbuild.h"
/*
 * Unit tests for reqq: message sequences a client sends and the answers PostgreSQL gives, checked
 * answer by answer — pipelines, errors in the middle of a pipeline (the server skips to Sync),
 * Flush without Sync, COPY IN/OUT in both protocols (Syncs ignored during COPY IN), the empty
 * query, answers that match nothing, the bound on owed requests and the pooler's own requests.
 */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
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
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
