/*
 * reqq: the request queue of one server connection — every answer the server still owes, in
 * order, and to whom.
 *
 * The client side pushes each message it forwards (pf_reqq_push); the server side hands every
 * message type the server sends to pf_reqq_answer(), which says which request it answers and
 * pops the request when its answer is complete. A server may be given to another client only
 * when pf_reqq_is_reusable() holds: nothing owed, no extended-protocol work waiting for a Sync,
 * no COPY under way, and nothing seen that the model could not account for.
 *
 * The model is PostgreSQL's own (protocol-flow "Extended Query", "COPY Operations"):
 * - Query, FunctionCall and Sync each end with exactly one ReadyForQuery.
 * - Parse, Bind, Close answer with ParseComplete/BindComplete/CloseComplete, Describe with
 *   [ParameterDescription] RowDescription|NoData, Execute with DataRow* then CommandComplete,
 *   EmptyQueryResponse, PortalSuspended, or a COPY; the answers flow when the server flushes.
 * - After an ErrorResponse to an extended-protocol message the server discards every message up
 *   to the next Sync.
 * - During COPY FROM STDIN the server reads the client's stream as COPY data: CopyData is data,
 *   Flush and Sync are ignored, CopyDone/CopyFail end it, any other message ends it with an
 *   error and is consumed. The pooler learns that a COPY started (CopyInResponse) only after it
 *   may have forwarded more messages, so those are re-read in that light. When a COPY IN ends
 *   with an error while Syncs (or a consumed message) were sent into it, the server may have read
 *   them before or after the error; which one cannot be known, so the server is marked doubtful
 *   and is closed instead of being reused (pf_reqq_is_reusable() is false for good).
 *
 * Pure bookkeeping: no I/O, no libuv. Memory: one byte per owed request, in a ring that grows
 * from 16 entries up to PF_REQQ_MAX; pf_reqq_push() reports a full queue so the caller can stop
 * reading from the client until answers drain it (the server always flushes before its own
 * output buffer holds PF_REQQ_MAX answers, so that cannot deadlock).
 */
#ifndef PGFUNNEL_REQQ_H
#define PGFUNNEL_REQQ_H

#include <stdbool.h>
#include <stdint.h>

#include "pgfunnel/util.h"

/* The most requests one server may owe at once (one byte each). */
#define PF_REQQ_MAX 65536u

/* Entry flags (pf_reqq_push's flags, pf_reqq_answer's *flags). */
#define PF_REQQ_POOLER 0x10u /* the pooler's own request: its answer is not forwarded */

/* What a server message is, for the request queue. */
typedef enum pf_reqq_verdict {
	PF_REQQ_ASYNC,  /* not an answer (NoticeResponse, NotificationResponse, ParameterStatus) */
	PF_REQQ_ANSWER, /* part of the answer to the oldest request; *flags are that request's */
	PF_REQQ_DONE,   /* ... and its last message: that request is no longer owed */
	PF_REQQ_MISMATCH, /* answers nothing that was sent: the queue is broken from now on */
} pf_reqq_verdict_t;

typedef struct pf_reqq {
	uint8_t *ring; /* cap entries (a power of two), or NULL while cap is 0 */
	uint32_t cap, head, len;
	uint32_t copy_risky; /* Syncs / a consumed message sent into the COPY IN under way */
	bool copy_in;        /* the oldest request is a COPY FROM STDIN being served */
	bool copy_in_open;   /* ... and the client has not yet sent what ends it */
	bool copy_out;       /* the oldest request is sending COPY TO STDOUT data */
	bool skip_to_sync;   /* after an extended-protocol error the server waits for a Sync */
	bool need_sync;      /* extended-protocol messages sent since the last Sync */
	bool doubtful;       /* a COPY ended in a way that leaves some answers unknown */
	bool broken;         /* something did not match: nothing here can be trusted */
} pf_reqq_t;

/* Entry kinds (the low four bits of an entry; the high four are PF_REQQ_* flags). */
enum {
	PF_RQ_QUERY = 1,
	PF_RQ_FUNCTION,
	PF_RQ_PARSE, /* PF_RQ_PARSE..PF_RQ_CLOSE: extended-protocol messages awaiting a Sync */
	PF_RQ_BIND,
	PF_RQ_DESCRIBE,
	PF_RQ_EXECUTE,
	PF_RQ_CLOSE,
	PF_RQ_SYNC,
	PF_RQ_COPY_END, /* CopyDone/CopyFail: ends a COPY IN the server may be about to start */
};

/* The entry kind a frontend message type records in the common case (0: none). */
extern const uint8_t pf_reqq_kind_of[256];
/* The backend message type that completes an entry of each kind in the common case. */
extern const uint8_t pf_reqq_done_by[16];

/* An empty queue (no memory held). */
void pf_reqq_init(pf_reqq_t *q);

/* Frees the ring; q is empty again. */
void pf_reqq_free(pf_reqq_t *q);

/* pf_reqq_push() and pf_reqq_answer() in full; the inline versions below call them. */
PF_MUSTCHECK int pf_reqq_push_any(pf_reqq_t *q, uint8_t fe_type, unsigned flags);
pf_reqq_verdict_t pf_reqq_answer_any(pf_reqq_t *q, uint8_t be_type, unsigned *flags);

/*
 * Records that a frontend message of type fe_type goes to the server now (call it before the
 * message's first byte is forwarded). flags: 0 for a client's message, PF_REQQ_POOLER for the
 * pooler's own. Returns 0, -ENOBUFS when PF_REQQ_MAX requests are owed already (nothing was
 * recorded: hold the message back until answers arrive), or -ENOMEM.
 * Inline for the common case (a message that records an entry, no COPY or error pending).
 */
PF_MUSTCHECK static inline int pf_reqq_push(pf_reqq_t *q, uint8_t fe_type, unsigned flags)
{
	unsigned kind = pf_reqq_kind_of[fe_type];

	if (kind && !(q->copy_in_open | q->skip_to_sync | q->broken) && q->len < q->cap) {
		q->ring[(q->head + q->len) & (q->cap - 1)] = (uint8_t)(kind | (flags & 0xf0u));
		q->len++;
		q->need_sync = kind >= PF_RQ_PARSE && kind <= PF_RQ_CLOSE;
		return 0;
	}
	return pf_reqq_push_any(q, fe_type, flags);
}

/*
 * Accounts for a message of type be_type that the server sent. *flags (may be NULL) gets the
 * flags of the request it answers (0 when none). On PF_REQQ_MISMATCH q->broken is set.
 * Inline for the common case: a DataRow, or the message that completes the oldest request.
 */
static inline pf_reqq_verdict_t pf_reqq_answer(pf_reqq_t *q, uint8_t be_type, unsigned *flags)
{
	if (!flags && q->len > 0 && !(q->broken | q->copy_in | q->copy_out)) {
		uint32_t mask = q->cap - 1;
		unsigned kind = q->ring[q->head] & 0x0fu;

		if (be_type == 'D' && (kind == PF_RQ_QUERY || kind == PF_RQ_EXECUTE))
			return PF_REQQ_ANSWER;
		/* A Query's RowDescription, CommandComplete, EmptyQueryResponse: more follows. */
		if (kind == PF_RQ_QUERY && (be_type == 'T' || be_type == 'C' || be_type == 'I'))
			return PF_REQQ_ANSWER;
		if (pf_reqq_done_by[kind] == be_type &&
		    (q->len == 1 || (q->ring[(q->head + 1) & mask] & 0x0fu) != PF_RQ_COPY_END)) {
			q->head = (q->head + 1) & mask;
			q->len--;
			return PF_REQQ_DONE;
		}
	}
	return pf_reqq_answer_any(q, be_type, flags);
}

/* True when the server owes nothing and waits for nothing from the client. */
static inline bool pf_reqq_is_idle(const pf_reqq_t *q)
{
	return q->len == 0 && !q->need_sync && !q->skip_to_sync && !q->copy_in_open && !q->broken;
}

/* True when the server may serve another client (idle, and nothing was ever in doubt). */
static inline bool pf_reqq_is_reusable(const pf_reqq_t *q)
{
	return pf_reqq_is_idle(q) && !q->doubtful;
}

/* How many requests are owed. */
static inline uint32_t pf_reqq_len(const pf_reqq_t *q)
{
	return q->len;
}

#endif
