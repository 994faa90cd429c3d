/*
 * reqq: what one server still owes, request by request (see include/pgfunnel/reqq.h for the
 * protocol model).
 *
 * Invariants: len <= cap <= PF_REQQ_MAX; the oldest entry is never a COPY_END (a CopyDone or
 * CopyFail that reaches the front outside a COPY is ignored by the server, so it is dropped);
 * copy_in_open implies copy_in, and copy_in/copy_out imply that the oldest entry is a Query or an
 * Execute; once broken, nothing changes any more.
 *
 * Called by the client side (push, for every message it forwards) and the server side (answer,
 * for every message it reads); both on the worker's thread.
 */
#include "pfbuild.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "pgfunnel/proto.h"
#include "pgfunnel/reqq.h"

#define RQ_QUERY    PF_RQ_QUERY
#define RQ_FUNCTION PF_RQ_FUNCTION
#define RQ_PARSE    PF_RQ_PARSE
#define RQ_BIND     PF_RQ_BIND
#define RQ_DESCRIBE PF_RQ_DESCRIBE
#define RQ_EXECUTE  PF_RQ_EXECUTE
#define RQ_CLOSE    PF_RQ_CLOSE
#define RQ_SYNC     PF_RQ_SYNC
#define RQ_COPY_END PF_RQ_COPY_END

/* For the inline fast paths in reqq.h; everything else goes through the functions here. */
const uint8_t pf_reqq_kind_of[256] = {
        [PF_PROTO_FE_QUERY] = RQ_QUERY,       [PF_PROTO_FE_FUNCTION_CALL] = RQ_FUNCTION,
        [PF_PROTO_FE_PARSE] = RQ_PARSE,       [PF_PROTO_FE_BIND] = RQ_BIND,
        [PF_PROTO_FE_DESCRIBE] = RQ_DESCRIBE, [PF_PROTO_FE_EXECUTE] = RQ_EXECUTE,
        [PF_PROTO_FE_CLOSE] = RQ_CLOSE,       [PF_PROTO_FE_SYNC] = RQ_SYNC,
};
const uint8_t pf_reqq_done_by[16] = {
        [RQ_QUERY] = PF_PROTO_BE_READY_FOR_QUERY,    [RQ_FUNCTION] = PF_PROTO_BE_READY_FOR_QUERY,
        [RQ_PARSE] = PF_PROTO_BE_PARSE_COMPLETE,     [RQ_BIND] = PF_PROTO_BE_BIND_COMPLETE,
        [RQ_DESCRIBE] = PF_PROTO_BE_ROW_DESCRIPTION, [RQ_EXECUTE] = PF_PROTO_BE_COMMAND_COMPLETE,
        [RQ_CLOSE] = PF_PROTO_BE_CLOSE_COMPLETE,     [RQ_SYNC] = PF_PROTO_BE_READY_FOR_QUERY,
};

#define KIND(e)   ((e)&0x0fu)
#define FLAGS(e)  ((e)&0xf0u)
#define FIRST_CAP 16u

void pf_reqq_init(pf_reqq_t *q)
{
	memset(q, 0, sizeof(*q));
}

void pf_reqq_free(pf_reqq_t *q)
{
	free(q->ring);
	pf_reqq_init(q);
}

static inline uint8_t *at(const pf_reqq_t *q, uint32_t i)
{
	return &q->ring[(q->head + i) & (q->cap - 1)];
}

static int grow(pf_reqq_t *q)
{
	uint32_t ncap = q->cap ? q->cap * 2 : FIRST_CAP;
	uint8_t *nr;

	if (ncap > PF_REQQ_MAX)
		return -ENOBUFS;
	nr = malloc(ncap);
	if (!nr)
		return -ENOMEM;
	for (uint32_t i = 0; i < q->len; i++)
		nr[i] = *at(q, i);
	free(q->ring);
	q->ring = nr;
	q->cap = ncap;
	q->head = 0;
	return 0;
}

static int append(pf_reqq_t *q, uint8_t entry)
{
	if (q->len == q->cap) {
		int rc = grow(q);

		if (rc < 0)
			return rc;
	}
	*at(q, q->len) = entry;
	q->len++;
	return 0;
}

/* Drops the oldest entry, and any CopyDone/CopyFail behind it (ignored outside a COPY). */
static void pop(pf_reqq_t *q)
{
	assert(q->len > 0);
	do {
		q->head = (q->head + 1) & (q->cap - 1);
		q->len--;
	} while (q->len > 0 && KIND(*at(q, 0)) == RQ_COPY_END);
	q->copy_in = q->copy_in_open = q->copy_out = false;
	q->copy_risky = 0;
}

/* Removes the n entries right behind the oldest one (the oldest one stays). */
static void remove_after_head(pf_reqq_t *q, uint32_t n)
{
	uint8_t oldest = *at(q, 0);

	assert(n < q->len);
	q->head = (q->head + n) & (q->cap - 1);
	q->len -= n;
	*at(q, 0) = oldest;
}

static bool is_extended(unsigned kind)
{
	return kind >= RQ_PARSE && kind <= RQ_CLOSE;
}

int pf_reqq_push_any(pf_reqq_t *q, uint8_t fe_type, unsigned flags)
{
	uint8_t kind;

	if (q->broken)
		return 0;
	if (q->copy_in_open) {
		/* The server reads this as part of the COPY data stream. */
		switch (fe_type) {
		case PF_PROTO_FE_COPY_DATA:
		case PF_PROTO_FE_FLUSH:
			return 0;
		case PF_PROTO_FE_SYNC:
			q->copy_risky++;
			return 0;
		case PF_PROTO_FE_COPY_DONE:
		case PF_PROTO_FE_COPY_FAIL:
			q->copy_in_open = false;
			return 0;
		default:
			/* Consumed by the COPY, which fails on it. */
			q->copy_risky++;
			q->copy_in_open = false;
			return 0;
		}
	}
	if (q->skip_to_sync) {
		/* After an error the server discards everything up to a Sync. */
		if (fe_type != PF_PROTO_FE_SYNC)
			return 0;
		q->skip_to_sync = false;
	}
	switch (fe_type) {
	case PF_PROTO_FE_QUERY:
		kind = RQ_QUERY;
		break;
	case PF_PROTO_FE_FUNCTION_CALL:
		kind = RQ_FUNCTION;
		break;
	case PF_PROTO_FE_PARSE:
		kind = RQ_PARSE;
		break;
	case PF_PROTO_FE_BIND:
		kind = RQ_BIND;
		break;
	case PF_PROTO_FE_DESCRIBE:
		kind = RQ_DESCRIBE;
		break;
	case PF_PROTO_FE_EXECUTE:
		kind = RQ_EXECUTE;
		break;
	case PF_PROTO_FE_CLOSE:
		kind = RQ_CLOSE;
		break;
	case PF_PROTO_FE_SYNC:
		kind = RQ_SYNC;
		break;
	case PF_PROTO_FE_FLUSH:
	case PF_PROTO_FE_COPY_DATA:
		return 0; /* no answer of their own; CopyData outside a COPY is ignored */
	case PF_PROTO_FE_COPY_DONE:
	case PF_PROTO_FE_COPY_FAIL:
		/* Ignored by the server unless a request still owed starts a COPY IN. Each one
		 * is kept: a Query may run several COPYs, each ended by its own. */
		if (q->len == 0)
			return 0;
		kind = RQ_COPY_END;
		break;
	default:
		/* Not a message the server accepts here: it answers with a FATAL error. */
		q->broken = true;
		return 0;
	}
	{
		int rc = append(q, (uint8_t)(kind | (flags & 0xf0u)));

		if (rc < 0)
			return rc;
	}
	/* Query and FunctionCall end the implicit transaction of earlier extended messages, as
	 * a Sync does (postgres.c finishes the transaction command after each). */
	if (is_extended(kind))
		q->need_sync = true;
	else if (kind != RQ_COPY_END)
		q->need_sync = false;
	return 0;
}

/*
 * CopyInResponse for the oldest request: the messages already sent behind it are read by the
 * server as COPY data, up to what ends the COPY.
 */
static void start_copy_in(pf_reqq_t *q)
{
	uint32_t n = 0;
	bool need;

	q->copy_in = true;
	q->copy_in_open = true;
	while (n + 1 < q->len) {
		unsigned kind = KIND(*at(q, n + 1));

		n++;
		if (kind == RQ_SYNC) {
			q->copy_risky++;
			continue;
		}
		if (kind != RQ_COPY_END)
			q->copy_risky++; /* consumed; the COPY fails on it */
		q->copy_in_open = false;
		break;
	}
	if (n > 0)
		remove_after_head(q, n);
	/* An Execute still needs a Sync after its COPY, unless one is queued behind it. */
	need = KIND(*at(q, 0)) == RQ_EXECUTE;
	for (uint32_t i = 1; i < q->len; i++) {
		unsigned kind = KIND(*at(q, i));

		if (is_extended(kind))
			need = true;
		else if (kind != RQ_COPY_END)
			need = false;
	}
	q->need_sync = need;
}

/* ErrorResponse to an extended-protocol message: everything up to the next Sync is discarded. */
static void extended_error(pf_reqq_t *q)
{
	while (q->len > 0 && KIND(*at(q, 0)) != RQ_SYNC)
		pop(q);
	if (q->len == 0)
		q->skip_to_sync = true;
}

/* The COPY IN of the oldest request ended (CommandComplete or ErrorResponse). */
static void end_copy_in(pf_reqq_t *q, bool error)
{
	if (!q->copy_in)
		return;
	if (error && q->copy_risky > 0)
		q->doubtful = true;
	if (!error && q->copy_in_open)
		q->broken = true; /* done before the client ended it: not PostgreSQL */
	q->copy_in = q->copy_in_open = false;
	q->copy_risky = 0;
}

static pf_reqq_verdict_t mismatch(pf_reqq_t *q)
{
	q->broken = true;
	return PF_REQQ_MISMATCH;
}

/* An answer to a Query or an Execute (which may run a COPY). */
static pf_reqq_verdict_t statement_answer(pf_reqq_t *q, unsigned kind, uint8_t be_type)
{
	bool query = kind == RQ_QUERY;

	switch (be_type) {
	case PF_PROTO_BE_DATA_ROW:
		return PF_REQQ_ANSWER;
	case PF_PROTO_BE_ROW_DESCRIPTION:
		return query ? PF_REQQ_ANSWER : mismatch(q);
	case PF_PROTO_BE_COMMAND_COMPLETE:
	case PF_PROTO_BE_EMPTY_QUERY_RESPONSE:
	case PF_PROTO_BE_PORTAL_SUSPENDED:
		if (be_type == PF_PROTO_BE_PORTAL_SUSPENDED && query)
			return mismatch(q);
		end_copy_in(q, false);
		if (q->broken)
			return PF_REQQ_MISMATCH;
		q->copy_out = false;
		if (query)
			return PF_REQQ_ANSWER;
		pop(q);
		return PF_REQQ_DONE;
	case PF_PROTO_BE_COPY_IN_RESPONSE:
		if (q->copy_in || q->copy_out)
			return mismatch(q);
		start_copy_in(q);
		return PF_REQQ_ANSWER;
	case PF_PROTO_BE_COPY_OUT_RESPONSE:
		if (q->copy_in || q->copy_out)
			return mismatch(q);
		q->copy_out = true;
		return PF_REQQ_ANSWER;
	case PF_PROTO_BE_COPY_DATA:
	case PF_PROTO_BE_COPY_DONE:
		return q->copy_out ? PF_REQQ_ANSWER : mismatch(q);
	case PF_PROTO_BE_ERROR_RESPONSE:
		end_copy_in(q, true);
		q->copy_out = false;
		if (query)
			return PF_REQQ_ANSWER; /* ReadyForQuery follows */
		extended_error(q);
		return PF_REQQ_DONE;
	case PF_PROTO_BE_READY_FOR_QUERY:
		if (!query || q->copy_in || q->copy_out)
			return mismatch(q);
		pop(q);
		return PF_REQQ_DONE;
	default:
		/* CopyBothResponse (replication) and everything else: not modelled. */
		return mismatch(q);
	}
}

pf_reqq_verdict_t pf_reqq_answer_any(pf_reqq_t *q, uint8_t be_type, unsigned *flags)
{
	unsigned kind;

	if (flags)
		*flags = 0;
	switch (be_type) {
	case PF_PROTO_BE_NOTICE_RESPONSE:
	case PF_PROTO_BE_NOTIFICATION_RESPONSE:
	case PF_PROTO_BE_PARAMETER_STATUS:
		return PF_REQQ_ASYNC;
	default:
		break;
	}
	if (q->broken || q->len == 0)
		return mismatch(q);
	kind = KIND(*at(q, 0));
	assert(kind != RQ_COPY_END);
	if (flags)
		*flags = FLAGS(*at(q, 0));
	switch (kind) {
	case RQ_QUERY:
	case RQ_EXECUTE:
		return statement_answer(q, kind, be_type);
	case RQ_FUNCTION:
		if (be_type == PF_PROTO_BE_FUNCTION_CALL_RESPONSE ||
		    be_type == PF_PROTO_BE_ERROR_RESPONSE)
			return PF_REQQ_ANSWER;
		if (be_type != PF_PROTO_BE_READY_FOR_QUERY)
			return mismatch(q);
		pop(q);
		return PF_REQQ_DONE;
	case RQ_SYNC:
		if (be_type == PF_PROTO_BE_ERROR_RESPONSE)
			return PF_REQQ_ANSWER; /* the implicit COMMIT failed; ReadyForQuery follows
			                        */
		if (be_type != PF_PROTO_BE_READY_FOR_QUERY)
			return mismatch(q);
		pop(q);
		return PF_REQQ_DONE;
	case RQ_DESCRIBE:
		if (be_type == PF_PROTO_BE_PARAMETER_DESCRIPTION)
			return PF_REQQ_ANSWER;
		if (be_type == PF_PROTO_BE_ROW_DESCRIPTION || be_type == PF_PROTO_BE_NO_DATA) {
			pop(q);
			return PF_REQQ_DONE;
		}
		break;
	case RQ_PARSE:
		if (be_type == PF_PROTO_BE_PARSE_COMPLETE) {
			pop(q);
			return PF_REQQ_DONE;
		}
		break;
	case RQ_BIND:
		if (be_type == PF_PROTO_BE_BIND_COMPLETE) {
			pop(q);
			return PF_REQQ_DONE;
		}
		break;
	case RQ_CLOSE:
		if (be_type == PF_PROTO_BE_CLOSE_COMPLETE) {
			pop(q);
			return PF_REQQ_DONE;
		}
		break;
	default:
		return mismatch(q);
	}
	if (be_type == PF_PROTO_BE_ERROR_RESPONSE) {
		extended_error(q);
		return PF_REQQ_DONE;
	}
	return mismatch(q);
}
