#include "pfbuild.h"
/*
 * Unit tests for authquery's pure part: what an auth_query answer says (pf_authq_read_answer)
 * — a user and its secret, no user, or an answer auth_query may not give — and the request
 * queue's account of a lookup's messages (Parse, Bind, Describe, Execute, Sync) for every
 * answer Postgres can give them, so that a server is reusable after a lookup exactly when
 * everything it owed has arrived.
 */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "pgfunnel/authquery.h"
#include "pgfunnel/buf.h"
#include "pgfunnel/proto.h"
#include "pgfunnel/reqq.h"

/* A lookup that got one DataRow built from types and the values after it (see
 * pf_proto_be_data_row), 'I' at the end, and the RowDescription's column count. */
static pf_server_lookup_t *answer(int columns, uint32_t rows, const char *types, ...)
{
	pf_server_lookup_t *r = calloc(1, sizeof(*r));
	pf_buf_t b;
	va_list ap;

	assert_non_null(r);
	r->columns = columns;
	r->rows = rows;
	r->tx_status = PF_PROTO_TX_IDLE;
	if (types) {
		pf_buf_init(&b);
		va_start(ap, types);
		pf_proto_be_data_row_v(&b, types, ap);
		va_end(ap);
		assert_false(b.failed);
		r->row_len = b.len - 5;
		r->row = malloc(r->row_len);
		assert_non_null(r->row);
		memcpy(r->row, b.data + 5, r->row_len);
		pf_buf_free(&b);
	}
	return r;
}

static int read_answer(pf_server_lookup_t *r, char **name, char **secret, char *why)
{
	int rc = pf_authq_read_answer(r, name, secret, why, 200);

	pf_server_lookup_free(r);
	return rc;
}

static void test_found(void **state)
{
	char *name, *secret, why[200];

	(void)state;
	assert_int_equal(read_answer(answer(2, 1, "ss", "alice", "md5abc"), &name, &secret, why),
	                 PF_AUTHQ_FOUND);
	assert_string_equal(name, "alice");
	assert_string_equal(secret, "md5abc");
	free(name);
	free(secret);
	/* NULL and empty passwords: a user without a secret. */
	assert_int_equal(
	        read_answer(answer(2, 1, "ss", "bob", (const char *)NULL), &name, &secret, why),
	        PF_AUTHQ_FOUND);
	assert_string_equal(name, "bob");
	assert_null(secret);
	free(name);
	assert_int_equal(read_answer(answer(2, 1, "ss", "bob", ""), &name, &secret, why),
	                 PF_AUTHQ_FOUND);
	assert_null(secret);
	free(name);
	/* No RowDescription seen (cannot happen after a Describe, but the row decides). */
	assert_int_equal(read_answer(answer(-1, 1, "ss", "carol", "pw"), &name, &secret, why),
	                 PF_AUTHQ_FOUND);
	free(name);
	free(secret);
}

static void test_unknown(void **state)
{
	char *name = (char *)"x", *secret = (char *)"x", why[200];

	(void)state;
	assert_int_equal(read_answer(answer(2, 0, NULL), &name, &secret, why), PF_AUTHQ_UNKNOWN);
	assert_null(name);
	assert_null(secret);
	/* A name that is not valid in the server's encoding names nobody. */
	{
		pf_server_lookup_t *r = answer(-1, 0, NULL);

		r->failed = true;
		strcpy(r->sqlstate, "22021");
		assert_int_equal(read_answer(r, &name, &secret, why), PF_AUTHQ_UNKNOWN);
	}
}

static void test_bad(void **state)
{
	char *name, *secret, why[200];
	pf_server_lookup_t *r;

	(void)state;
	assert_int_equal(read_answer(answer(2, 2, "ss", "a", "b"), &name, &secret, why),
	                 PF_AUTHQ_BAD);
	assert_string_equal(why, "auth_query returned 2 rows, expected at most one");
	/* Wrong columns: known from the RowDescription even with no row, or from the row. */
	assert_int_equal(read_answer(answer(3, 0, NULL), &name, &secret, why), PF_AUTHQ_BAD);
	assert_string_equal(why, "expected 2 columns from auth_query, not 3");
	assert_int_equal(read_answer(answer(0, 0, NULL), &name, &secret, why), PF_AUTHQ_BAD);
	assert_string_equal(why, "expected 2 columns from auth_query, not 0");
	assert_int_equal(read_answer(answer(-1, 1, "s", "a"), &name, &secret, why), PF_AUTHQ_BAD);
	assert_string_equal(why, "expected 2 columns from auth_query, not 1");
	assert_int_equal(
	        read_answer(answer(2, 1, "ss", (const char *)NULL, "pw"), &name, &secret, why),
	        PF_AUTHQ_BAD);
	assert_string_equal(why, "auth_query response contained null user name");
	assert_null(name);
	assert_null(secret);

	r = answer(2, 0, NULL);
	r->failed = true;
	strcpy(r->sqlstate, "42501");
	r->message = strdup("permission denied for table pg_authid");
	assert_int_equal(read_answer(r, &name, &secret, why), PF_AUTHQ_BAD);
	assert_string_equal(why, "error response from auth_query: 42501 permission denied for "
	                         "table pg_authid");
	r = answer(2, 1, "ss", "a", "b");
	r->tx_status = PF_PROTO_TX_BLOCK;
	assert_int_equal(read_answer(r, &name, &secret, why), PF_AUTHQ_BAD);
	assert_string_equal(why, "auth_query left a transaction open");

	/* A NUL byte inside a value (text never has one) and a malformed row. */
	r = answer(2, 1, "ss", "ab", "cd");
	r->row[2 + 4 + 1] = '\0'; /* "a\0" */
	assert_int_equal(read_answer(r, &name, &secret, why), PF_AUTHQ_BAD);
	assert_string_equal(why, "auth_query response contained a NUL byte");
	assert_null(name);
	r = answer(2, 1, "ss", "ab", "cd");
	r->row_len--;
	assert_int_equal(read_answer(r, &name, &secret, why), PF_AUTHQ_BAD);
}

/* Pushes a lookup's messages as pf_server_run_lookup does. */
static void push_lookup(pf_reqq_t *q)
{
	for (const char *t = PF_PROTO_EXT_QUERY_TYPES; *t; t++)
		assert_int_equal(pf_reqq_push(q, (uint8_t)*t, PF_REQQ_POOLER), 0);
	assert_false(pf_reqq_is_idle(q));
}

/* Feeds the answers (backend types); every one must be accounted for, the last completes. */
static void answers(pf_reqq_t *q, const char *types)
{
	for (const char *t = types; *t; t++) {
		pf_reqq_verdict_t v = pf_reqq_answer(q, (uint8_t)*t, NULL);

		assert_true(v == PF_REQQ_ANSWER || v == PF_REQQ_DONE || v == PF_REQQ_ASYNC);
		if (t[1])
			assert_false(pf_reqq_is_reusable(q));
	}
	assert_true(pf_reqq_is_reusable(q));
}

static void test_lookup_requests(void **state)
{
	pf_reqq_t q;

	(void)state;
	pf_reqq_init(&q);
	/* A row; no row; two rows with a notice; NoData (not a SELECT); an error at Parse, at
	 * Bind and at Execute (the rest is skipped up to the Sync); a ParameterStatus. */
	static const char *const cases[] = {
	        "12TDCZ", "12TCZ", "12TDNDCZ", "12nCZ", "EZ", "1EZ", "12TEZ", "12TSDCZ",
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		push_lookup(&q);
		answers(&q, cases[i]);
	}
	/* An answer that matches nothing breaks the queue: never reusable. */
	push_lookup(&q);
	assert_int_equal(pf_reqq_answer(&q, 'Z', NULL), PF_REQQ_MISMATCH);
	assert_false(pf_reqq_is_reusable(&q));
	pf_reqq_free(&q);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_found),
	        cmocka_unit_test(test_unknown),
	        cmocka_unit_test(test_bad),
	        cmocka_unit_test(test_lookup_requests),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
