/*
 * reqq: what one server still owes, request by request (see include/pgfunnel/reqq.h for the
 * protocol model).
 *
 * Invariants (checked by check() after every change in debug builds): len <= cap <=
 * PF_REQQ_MAX, cap a power of two; the oldest entry is never a COPY_END (a CopyDone or CopyFail
 * that reaches the front outside a COPY is ignored by the server, so it is dropped);
 * copy_in_open implies copy_in, and copy_in/copy_out imply that the oldest entry is a Query or an
 * Execute; skip_to_sync implies an empty queue (nothing is recorded while the server skips, and
 * the Sync that ends it is recorded as it ends it); once broken, nothing changes any more.
 * Every entry the queue removes leaves it in one of four ways, so no tag is lost: answered
 * (route's out->tag), handed out (pf_reqq_take_synth), dropped (the drop callback), or the queue
 * broke (the server is closed).
 *
 * Called by the client side (push, inject, synth: for every message it forwards or answers
 * itself) and the server side (answer/route, for every message it reads); both on the
 * worker's thread.
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

#define KIND(e)   ((unsigned)(e)&0x0fu)
#define FLAGS(e)  ((unsigned)(e)&0xf0u)
#define FIRST_CAP 16u
#define RQ_SYNTH  PF_RQ_SYNTH

static inline pf_reqq_entry_t *at(const pf_reqq_t *q, uint32_t i)
{
	return &q->ring[(q->head + i) & (q->cap - 1)];
}

#ifndef NDEBUG
static void check(const pf_reqq_t *q)
{
	assert(q->len <= q->cap && q->cap <= PF_REQQ_MAX);
	assert((q->cap & (q->cap - 1)) == 0);
	assert(q->cap == 0 ? q->ring == NULL && q->head == 0 : q->ring != NULL && q->head < q->cap);
	if (q->broken)
		return;
	assert(!q->copy_in_open || q->copy_in);
	assert(!(q->copy_in && q->copy_out));
	assert(!q->skip_to_sync || q->len == 0);
	if (q->len > 0)
		assert(KIND(at(q, 0)->e) != RQ_COPY_END);
	if (q->len <= 64) { /* bounded: a deep pipeline would make every step quadratic */
		uint32_t n = 0, nq = 0, ns = 0;

		for (uint32_t i = 0; i < q->len; i++) {
			n += KIND(at(q, i)->e) == RQ_SYNTH;
			nq += KIND(at(q, i)->e) == RQ_QUERY;
			ns += KIND(at(q, i)->e) == RQ_SYNC;
		}
		assert(n == q->n_synth && nq == q->n_query && ns == q->n_sync);
	}
	if (q->copy_in || q->copy_out)
		assert(q->len > 0 &&
		       (KIND(at(q, 0)->e) == RQ_QUERY || KIND(at(q, 0)->e) == RQ_EXECUTE));
	assert(q->copy_risky <= q->len + PF_REQQ_MAX); /* counts messages, bounded by uint32 */
}
#else
#define check(q) ((void)(q))
#endif

void pf_reqq_init(pf_reqq_t *q)
{
	memset(q, 0, sizeof(*q));
}

void pf_reqq_free(pf_reqq_t *q)
{
	free(q->ring);
	pf_reqq_init(q);
}

void pf_reqq_set_drop_cb(pf_reqq_t *q, pf_reqq_drop_cb *cb, void *arg)
{
	q->on_drop = cb;
	q->on_drop_arg = arg;
}

/* Grows the ring to at least `want` entries (want <= PF_REQQ_MAX). */
static int grow_to(pf_reqq_t *q, uint32_t want)
{
	uint32_t ncap = q->cap ? q->cap : FIRST_CAP;
	pf_reqq_entry_t *nr;

	assert(want <= PF_REQQ_MAX);
	while (ncap < want)
		ncap *= 2; /* stops at PF_REQQ_MAX at most: both are powers of two */
	if (ncap == q->cap)
		return 0;
	nr = malloc((size_t)ncap * sizeof(*nr));
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

int pf_reqq_reserve(pf_reqq_t *q, uint32_t n)
{
	if (n > PF_REQQ_MAX - q->len)
		return -ENOBUFS;
	return grow_to(q, q->len + n);
}

/* Keeps the per-kind counts (n_synth, n_query, n_sync) as entry e comes (+1) or goes (-1). */
static inline void count(pf_reqq_t *q, const pf_reqq_entry_t *e, int d)
{
	unsigned k = KIND(e->e);

	if (k == RQ_SYNTH)
		q->n_synth += (uint32_t)d;
	else if (k == RQ_QUERY)
		q->n_query += (uint32_t)d;
	else if (k == RQ_SYNC)
		q->n_sync += (uint32_t)d;
}

static int append(pf_reqq_t *q, pf_reqq_entry_t entry)
{
	if (q->len == q->cap) {
		int rc;

		if (q->len == PF_REQQ_MAX)
			return -ENOBUFS;
		rc = grow_to(q, q->len + 1);
		if (rc < 0)
			return rc;
	}
	*at(q, q->len) = entry;
	q->len++;
	count(q, &entry, 1);
	return 0;
}

/* Tells the caller that entry e leaves the queue unanswered. */
static void dropped(pf_reqq_t *q, const pf_reqq_entry_t *e)
{
	if (e->tag && q->on_drop)
		q->on_drop(q->on_drop_arg, e);
}

/* Drops the oldest entry, and any CopyDone/CopyFail behind it (ignored outside a COPY). */
static void pop(pf_reqq_t *q)
{
	assert(q->len > 0);
	count(q, at(q, 0), -1);
	do {
		q->head = (q->head + 1) & (q->cap - 1);
		q->len--;
	} while (q->len > 0 && KIND(at(q, 0)->e) == RQ_COPY_END);
	q->copy_in = q->copy_in_open = q->copy_out = false;
	q->copy_risky = 0;
}

/* Removes the n entries right behind the oldest one (the oldest one stays). */
static void remove_after_head(pf_reqq_t *q, uint32_t n)
{
	pf_reqq_entry_t oldest = *at(q, 0);

	assert(n < q->len);
	for (uint32_t i = 1; i <= n; i++) {
		count(q, at(q, i), -1);
		dropped(q, at(q, i));
	}
	q->head = (q->head + n) & (q->cap - 1);
	q->len -= n;
	*at(q, 0) = oldest;
}

static bool is_extended(unsigned kind)
{
	return kind >= RQ_PARSE && kind <= RQ_CLOSE;
}

/*
 * Records a frontend message. Returns 0 when recorded or never answered on its own, -ECANCELED
 * when the server discards it (skipping to Sync, or read as COPY data), -EPROTO when broken,
 * -ENOBUFS/-ENOMEM when nothing could be recorded (and nothing changed).
 */
static int record(pf_reqq_t *q, uint8_t fe_type, unsigned flags, uint32_t tag)
{
	uint8_t kind;
	int rc;

	if (q->broken)
		return -EPROTO;
	if (q->copy_in_open) {
		/* The server reads this as part of the COPY data stream. */
		switch (fe_type) {
		case PF_PROTO_FE_COPY_DATA:
		case PF_PROTO_FE_FLUSH:
			return 0;
		case PF_PROTO_FE_SYNC:
			q->copy_risky++;
			return -ECANCELED;
		case PF_PROTO_FE_COPY_DONE:
		case PF_PROTO_FE_COPY_FAIL:
			q->copy_in_open = false;
			return 0;
		default:
			/* Consumed by the COPY, which fails on it. */
			q->copy_risky++;
			q->copy_in_open = false;
			return -ECANCELED;
		}
	}
	/* After an error the server discards everything up to a Sync. */
	if (q->skip_to_sync && fe_type != PF_PROTO_FE_SYNC)
		return -ECANCELED;
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
		tag = 0; /* never answered on its own */
		break;
	default:
		/* Not a message the server accepts here: it answers with a FATAL error. */
		q->broken = true;
		return -EPROTO;
	}
	rc = append(q,
	            (pf_reqq_entry_t){.e = (uint8_t)(kind | (flags & PF_REQQ_FLAGS)), .tag = tag});
	if (rc < 0)
		return rc;
	q->skip_to_sync = false; /* only a Sync gets here while it is set */
	/* Query and FunctionCall end the implicit transaction of earlier extended messages, as
	 * a Sync does (postgres.c finishes the transaction command after each). */
	if (is_extended(kind))
		q->need_sync = true;
	else if (kind != RQ_COPY_END)
		q->need_sync = false;
	return 0;
}

int pf_reqq_push_any(pf_reqq_t *q, uint8_t fe_type, unsigned flags)
{
	int rc = record(q, fe_type, flags, 0);

	check(q);
	return rc == -ECANCELED || rc == -EPROTO ? 0 : rc;
}

int pf_reqq_push_tagged(pf_reqq_t *q, uint8_t fe_type, unsigned flags, uint32_t tag)
{
	int rc = record(q, fe_type, flags, tag);

	check(q);
	return rc;
}

int pf_reqq_inject(pf_reqq_t *q, uint8_t fe_type, uint32_t tag)
{
	int rc;

	if (!pf_reqq_kind_of[fe_type])
		return -EINVAL;
	if (q->broken)
		return -EPROTO;
	if (q->copy_in_open)
		return -EBUSY;
	rc = record(q, fe_type, PF_REQQ_POOLER, tag);
	check(q);
	return rc;
}

int pf_reqq_push_synth(pf_reqq_t *q, uint8_t be_type, uint32_t tag)
{
	int rc;

	if (q->broken)
		return -EPROTO;
	if (q->copy_in_open)
		return -EBUSY;
	if (q->skip_to_sync)
		return -ECANCELED;
	rc = append(q, (pf_reqq_entry_t){.e = RQ_SYNTH, .synth = be_type, .tag = tag});
	check(q);
	return rc;
}

bool pf_reqq_take_synth(pf_reqq_t *q, pf_reqq_entry_t *out)
{
	if (q->broken || q->len == 0 || KIND(at(q, 0)->e) != RQ_SYNTH)
		return false;
	if (out)
		*out = *at(q, 0);
	pop(q);
	check(q);
	return true;
}

static pf_reqq_verdict_t mismatch(pf_reqq_t *q)
{
	q->broken = true;
	return PF_REQQ_MISMATCH;
}

/*
 * CopyInResponse for the oldest request: the messages already sent behind it are read by the
 * server as COPY data, up to what ends the COPY. Returns false when one of them is an answer
 * the pooler was to give itself: the client meant its message to end the COPY, but the
 * server never saw it, so the two now disagree.
 */
static bool start_copy_in(pf_reqq_t *q)
{
	uint32_t n = 0;
	bool need;

	q->copy_in = true;
	q->copy_in_open = true;
	while (n + 1 < q->len) {
		unsigned kind = KIND(at(q, n + 1)->e);

		if (kind == RQ_SYNTH)
			return false;
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
	need = KIND(at(q, 0)->e) == RQ_EXECUTE;
	for (uint32_t i = 1; i < q->len; i++) {
		unsigned kind = KIND(at(q, i)->e);

		if (is_extended(kind))
			need = true;
		else if (kind != RQ_COPY_END && kind != RQ_SYNTH)
			need = false;
	}
	q->need_sync = need;
	return true;
}

/*
 * ErrorResponse to the oldest request, an extended-protocol message: it is done, and the server
 * discards every message up to the next Sync. *skipped counts the client's messages among
 * those (including answers the pooler was to give in their place).
 */
static void extended_error(pf_reqq_t *q, uint32_t *skipped)
{
	pop(q);
	while (q->len > 0 && KIND(at(q, 0)->e) != RQ_SYNC) {
		pf_reqq_entry_t e = *at(q, 0);

		if (!(e.e & PF_REQQ_POOLER))
			(*skipped)++;
		pop(q);
		dropped(q, &e);
	}
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

/* An answer to a Query or an Execute (which may run a COPY). */
static pf_reqq_verdict_t statement_answer(pf_reqq_t *q, unsigned kind, uint8_t be_type,
                                          uint32_t *skipped)
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
		if (!start_copy_in(q))
			return mismatch(q);
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
		extended_error(q, skipped);
		return PF_REQQ_DONE;
	case PF_PROTO_BE_READY_FOR_QUERY:
		if (!query || q->copy_in || q->copy_out)
			return mismatch(q);
		pop(q);
		return PF_REQQ_DONE;
	default:
		return mismatch(q);
	}
}

/*
 * Accounts for a server message: *ent gets the entry it answers (as it was before being
 * popped; all zero when none), *skipped the number of client messages the server skips
 * because of it.
 */
static pf_reqq_verdict_t answer(pf_reqq_t *q, uint8_t be_type, pf_reqq_entry_t *ent,
                                uint32_t *skipped)
{
	unsigned kind;

	memset(ent, 0, sizeof(*ent));
	*skipped = 0;
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
	*ent = *at(q, 0);
	kind = KIND(ent->e);
	assert(kind != RQ_COPY_END);
	switch (kind) {
	case RQ_QUERY:
	case RQ_EXECUTE:
		return statement_answer(q, kind, be_type, skipped);
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
		/* RQ_SYNTH: the pooler's own answer was not handed out before this one. */
		return mismatch(q);
	}
	if (be_type == PF_PROTO_BE_ERROR_RESPONSE) {
		extended_error(q, skipped);
		return PF_REQQ_DONE;
	}
	return mismatch(q);
}

pf_reqq_verdict_t pf_reqq_answer_any(pf_reqq_t *q, uint8_t be_type, unsigned *flags)
{
	pf_reqq_entry_t ent;
	uint32_t skipped;
	pf_reqq_verdict_t v = answer(q, be_type, &ent, &skipped);

	if (flags)
		*flags = FLAGS(ent.e);
	check(q);
	return v;
}

pf_reqq_route_t pf_reqq_route_any(pf_reqq_t *q, uint8_t be_type, pf_reqq_ans_t *out)
{
	pf_reqq_entry_t ent;
	uint32_t skipped;
	pf_reqq_verdict_t v = answer(q, be_type, &ent, &skipped);

	check(q);
	out->verdict = v;
	if (v == PF_REQQ_ASYNC || v == PF_REQQ_MISMATCH) {
		out->kind = out->flags = 0;
		out->tag = 0;
		return v == PF_REQQ_ASYNC ? PF_REQQ_FORWARD : PF_REQQ_CLOSE;
	}
	out->kind = (uint8_t)KIND(ent.e);
	out->flags = (uint8_t)FLAGS(ent.e);
	out->tag = ent.tag;
	if (!(ent.e & PF_REQQ_POOLER))
		return PF_REQQ_FORWARD;
	if (be_type != PF_PROTO_BE_ERROR_RESPONSE)
		return PF_REQQ_SWALLOW;
	return skipped > 0 ? PF_REQQ_FAILED_FORWARD : PF_REQQ_FAILED_SWALLOW;
}
