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
 * The pooler's own messages in a client's stream (prepared statements in transaction mode):
 * - Injected: a message pgfunnel writes to the server right before the client's next message
 *   (a Parse the server lacks before the client's Bind, a Close evicting a statement, a Sync).
 *   pf_reqq_inject() records it with PF_REQQ_POOLER, and pf_reqq_route() says its answer is
 *   swallowed; it is still consumed in order. If an earlier message fails, the server skips
 *   the injected one with the rest: it is dropped from the queue and its tag reported to the
 *   drop callback (the statement was not made). If the injected message itself fails, the
 *   server skips the client's messages behind it up to the Sync, so its ErrorResponse stands
 *   for theirs: pf_reqq_route() says PF_REQQ_FAILED_FORWARD. When no client message was
 *   skipped (the pooler's own Sync ended the run), PF_REQQ_FAILED_SWALLOW: the client saw
 *   nothing, the caller decides (tell the client, or close).
 * - Synthesized: an answer the pooler gives the client itself, in its place in the order (the
 *   ParseComplete for a client's Parse of a statement the server has already, the
 *   CloseComplete for a Close the pooler keeps to itself). pf_reqq_push_synth() records it;
 *   pf_reqq_take_synth() hands it out once every answer before it went to the client. If an
 *   earlier message fails, it is dropped as the server would have skipped the client's message.
 * - Tags: a caller's 32-bit number on an entry (0: none), given back with its answer
 *   (pf_reqq_route()'s out->tag; an ErrorResponse means the message failed), with
 *   pf_reqq_take_synth(), or to the drop callback when the entry is removed unanswered
 *   (skipped after an error, or read as COPY data). So the prepared-statement layer learns the
 *   fate of every Parse and Close it sent or answered, and never believes a statement exists
 *   on a server when it does not. Once the queue is broken no tag is reported again: the
 *   server is closed, and everything known about it goes with it.
 *
 * Streaming a Parse or Bind larger than the hold buffer with a rewritten name: the names come
 * first in the message (Bind: portal then statement), so only the start needs holding.
 * pf_proto_read_names() says whether the bytes held contain the names (0: hold more, up to the
 * hold buffer; still 0 with a full buffer: the name is too long to rewrite — refuse the
 * message); pf_proto_rename() then builds the few new bytes (type, new length, names) into a
 * small buffer of the caller's, and the sender writes them followed by the original message
 * from tail_off on, streamed as it arrives like any forwarded message. The request is
 * recorded (pf_reqq_push) before the prefix is written, as for any message.
 *
 * Pure bookkeeping: no I/O, no libuv. Memory: one 8-byte entry per owed request (kind, flags,
 * synthesized type, tag), in a ring that grows from 16 entries up to PF_REQQ_MAX (512 KiB at
 * most, only for a client pipelining that many messages; servers are few); pf_reqq_push()
 * reports a full queue so the caller can stop reading from the client until answers drain it
 * (the server always flushes before its own output buffer holds PF_REQQ_MAX answers, so that
 * cannot deadlock).
 */
#ifndef PGFUNNEL_REQQ_H
#define PGFUNNEL_REQQ_H

#include <stdbool.h>
#include <stdint.h>

#include "pgfunnel/util.h"

/* The most requests one server may owe at once (one entry each). */
#define PF_REQQ_MAX 65536u

/* Entry flags (pf_reqq_push's flags, pf_reqq_answer's *flags). */
#define PF_REQQ_POOLER 0x10u /* the pooler's own request: its answer is not forwarded */
#define PF_REQQ_FLAGS  0xf0u /* every bit a caller may set (the others are free for later) */

/* What a server message is, for the request queue. */
typedef enum pf_reqq_verdict {
	PF_REQQ_ASYNC,  /* not an answer (NoticeResponse, NotificationResponse, ParameterStatus) */
	PF_REQQ_ANSWER, /* part of the answer to the oldest request; *flags are that request's */
	PF_REQQ_DONE,   /* ... and its last message: that request is no longer owed */
	PF_REQQ_MISMATCH, /* answers nothing that was sent: the queue is broken from now on */
} pf_reqq_verdict_t;

/* One owed request. */
typedef struct pf_reqq_entry {
	uint8_t e;     /* kind (PF_RQ_*, low four bits) | flags (PF_REQQ_POOLER, high four) */
	uint8_t synth; /* PF_RQ_SYNTH: the backend message type the pooler sends; else 0 */
	uint16_t zero; /* always 0 (padding, kept defined) */
	uint32_t tag;  /* the caller's, 0 for none */
} pf_reqq_entry_t;

/*
 * Called for each tagged entry removed without an answer: the server skipped its message after
 * an earlier error, or read it as COPY data (a synthesized entry: the client's message would
 * have been skipped). Called from inside pf_reqq_route()/pf_reqq_answer(); it must not touch
 * the queue.
 */
typedef void pf_reqq_drop_cb(void *arg, const pf_reqq_entry_t *e);

typedef struct pf_reqq {
	pf_reqq_entry_t *ring; /* cap entries (a power of two), or NULL while cap is 0 */
	uint32_t cap, head, len;
	uint32_t n_synth;    /* entries of kind PF_RQ_SYNTH among them */
	uint32_t n_query;    /* simple Queries among them */
	uint32_t n_sync;     /* Syncs among them */
	uint32_t copy_risky; /* Syncs / a consumed message sent into the COPY IN under way */
	bool copy_in;        /* the oldest request is a COPY FROM STDIN being served */
	bool copy_in_open;   /* ... and the client has not yet sent what ends it */
	bool copy_out;       /* the oldest request is sending COPY TO STDOUT data */
	bool skip_to_sync;   /* after an extended-protocol error the server waits for a Sync */
	bool need_sync;      /* extended-protocol messages sent since the last Sync */
	bool doubtful;       /* a COPY ended in a way that leaves some answers unknown */
	bool broken;         /* something did not match: nothing here can be trusted */
	pf_reqq_drop_cb *on_drop;
	void *on_drop_arg;
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
	PF_RQ_SYNTH,    /* an answer the pooler gives the client itself (pf_reqq_push_synth) */
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
		q->ring[(q->head + q->len) & (q->cap - 1)] =
		        (pf_reqq_entry_t){.e = (uint8_t)(kind | (flags & PF_REQQ_FLAGS))};
		q->len++;
		q->n_query += kind == PF_RQ_QUERY;
		q->n_sync += kind == PF_RQ_SYNC;
		q->need_sync = kind >= PF_RQ_PARSE && kind <= PF_RQ_CLOSE;
		return 0;
	}
	return pf_reqq_push_any(q, fe_type, flags);
}

/*
 * Accounts for a message of type be_type that the server sent. *flags (may be NULL) gets the
 * flags of the request it answers (0 when none). On PF_REQQ_MISMATCH q->broken is set.
 * Inline for the common case: a DataRow, or the message that completes the oldest request.
 * Tags of answered entries are not reported here (pf_reqq_route() does); dropped ones are.
 */
/*
 * The common case of an answer, shared by pf_reqq_answer() and pf_reqq_route_client(): a
 * DataRow or other message within the oldest request, or the one that completes it, outside
 * COPY. client_only: only for the client's own untagged request (no pooler flag, no tag, not a
 * synthesized answer). Returns PF_REQQ_ANSWER or PF_REQQ_DONE (accounted for), or
 * PF_REQQ_MISMATCH meaning "not the common case": nothing was changed.
 */
static inline pf_reqq_verdict_t pf_reqq_answer_common(pf_reqq_t *q, uint8_t be_type,
                                                      bool client_only)
{
	if (q->len > 0 && !(q->broken | q->copy_in | q->copy_out)) {
		pf_reqq_entry_t e = q->ring[q->head];
		uint32_t mask = q->cap - 1;
		unsigned kind = e.e & 0x0fu;

		if (client_only && (e.e >= 0x10u || e.tag != 0 || kind == PF_RQ_SYNTH))
			return PF_REQQ_MISMATCH;
		if (be_type == 'D' && (kind == PF_RQ_QUERY || kind == PF_RQ_EXECUTE))
			return PF_REQQ_ANSWER;
		/* A Query's RowDescription, CommandComplete, EmptyQueryResponse: more follows. */
		if (kind == PF_RQ_QUERY && (be_type == 'T' || be_type == 'C' || be_type == 'I'))
			return PF_REQQ_ANSWER;
		if (pf_reqq_done_by[kind] == be_type &&
		    (q->len == 1 || (q->ring[(q->head + 1) & mask].e & 0x0fu) != PF_RQ_COPY_END)) {
			q->head = (q->head + 1) & mask;
			q->len--;
			q->n_query -= kind == PF_RQ_QUERY;
			q->n_sync -= kind == PF_RQ_SYNC;
			return PF_REQQ_DONE;
		}
	}
	return PF_REQQ_MISMATCH;
}

static inline pf_reqq_verdict_t pf_reqq_answer(pf_reqq_t *q, uint8_t be_type, unsigned *flags)
{
	if (!flags) {
		pf_reqq_verdict_t v = pf_reqq_answer_common(q, be_type, false);

		if (v != PF_REQQ_MISMATCH)
			return v;
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

/* True when the oldest entry is an answer the pooler gives itself (pf_reqq_take_synth). */
static inline bool pf_reqq_synth_due(const pf_reqq_t *q)
{
	return PF_UNLIKELY(q->n_synth > 0) && (q->ring[q->head].e & 0x0fu) == PF_RQ_SYNTH;
}

/* How many requests are owed. */
static inline uint32_t pf_reqq_len(const pf_reqq_t *q)
{
	return q->len;
}

/* True once something did not match: the server must not be reused (close it). */
static inline bool pf_reqq_is_broken(const pf_reqq_t *q)
{
	return q->broken;
}

/* ---- The pooler's own messages, tags and answer routing ---- */

/* Sets the drop callback (NULL: none); pf_reqq_init() and pf_reqq_free() clear it. */
void pf_reqq_set_drop_cb(pf_reqq_t *q, pf_reqq_drop_cb *cb, void *arg);

/*
 * Makes room for n more entries, so that the next n pf_reqq_push*() / pf_reqq_inject() calls
 * cannot fail for want of room (call it before injecting, so that the injected message and the
 * client's message behind it are recorded together or not at all). Returns 0, -ENOBUFS when
 * more than PF_REQQ_MAX requests would be owed (nothing changed), or -ENOMEM.
 */
PF_MUSTCHECK int pf_reqq_reserve(pf_reqq_t *q, uint32_t n);

/*
 * pf_reqq_push() with a tag (see above) and an exact account of what was recorded. Returns 0
 * (recorded, or a message that is never answered on its own: Flush, CopyData, ...; the tag of
 * such a message is ignored), -ECANCELED when the server will discard the message — skipping to
 * a Sync after an error, or reading it as COPY data — so nothing is recorded, no answer comes
 * and it has no effect (a client's message is forwarded all the same), -EPROTO when the queue
 * is broken (nothing recorded), -ENOBUFS or -ENOMEM (nothing recorded).
 */
PF_MUSTCHECK int pf_reqq_push_tagged(pf_reqq_t *q, uint8_t fe_type, unsigned flags, uint32_t tag);

/*
 * Records a message of the pooler's own, fe_type (one that the server answers: Parse, Bind,
 * Describe, Execute, Close, Sync, Query, FunctionCall), about to be written to the server right
 * before the client's next message; its answer is swallowed (PF_REQQ_POOLER). Returns 0: write
 * it now; -ECANCELED: the server is skipping to a Sync after an error and would discard it —
 * do not write it (it would have no effect; the client's message behind it is discarded as
 * well). An injected Sync is the exception: it ends the skipping, so the client's messages
 * behind it would run; inject one only where no client message follows (e.g. to recover a
 * server its client left mid-pipeline). -EBUSY: a COPY FROM STDIN is under way — do not write it
 * (it would fail the COPY); -EPROTO: the queue is broken; -EINVAL: fe_type is not answered on its
 * own; -ENOBUFS or -ENOMEM: nothing recorded (pf_reqq_reserve() first avoids both).
 */
PF_MUSTCHECK int pf_reqq_inject(pf_reqq_t *q, uint8_t fe_type, uint32_t tag);

/*
 * Records an answer the pooler owes the client itself — a message of type be_type (e.g.
 * ParseComplete) for a client message that is not forwarded — in its place after everything
 * owed so far. Returns 0: recorded, hand it out when pf_reqq_take_synth() says so;
 * -ECANCELED: the server is skipping to a Sync, as it would have skipped the client's message:
 * answer nothing; -EBUSY: a COPY FROM STDIN is under way: forward the client's message instead
 * (the server fails the COPY on it, as it would have); -EPROTO, -ENOBUFS, -ENOMEM: nothing
 * recorded.
 */
PF_MUSTCHECK int pf_reqq_push_synth(pf_reqq_t *q, uint8_t be_type, uint32_t tag);

/*
 * When the oldest entry is a synthesized answer, pops it into *out (may be NULL) and returns
 * true: send a message of type out->synth to the client now. Call it in a loop after
 * pf_reqq_push_synth() and after each message pf_reqq_route() routed (once that message has
 * gone to the client or been swallowed). A server message that arrives while a synthesized
 * answer leads the queue is a mismatch.
 */
bool pf_reqq_take_synth(pf_reqq_t *q, pf_reqq_entry_t *out);

/* What to do with a message the server sent (pf_reqq_route). */
typedef enum pf_reqq_route {
	PF_REQQ_FORWARD, /* send it to the client (answers to the client, asynchronous messages) */
	PF_REQQ_SWALLOW, /* consume it: it answers the pooler's own message */
	/* An ErrorResponse to the pooler's own message (out->tag: it had no effect). The server
	 * skipped the client's messages behind it up to the next Sync, so it is their error:
	 * send it to the client. */
	PF_REQQ_FAILED_FORWARD,
	/* The same, but no client message was skipped (the pooler's own Sync ended the run, or
	 * a pooler's Query failed): consume it; the caller decides whether to tell the client or
	 * close the server. If q->skip_to_sync is now set, the server discards the client's next
	 * messages up to its Sync, and the client would never learn why. */
	PF_REQQ_FAILED_SWALLOW,
	PF_REQQ_CLOSE, /* answers nothing sent (PF_REQQ_MISMATCH): close the server */
} pf_reqq_route_t;

/* What pf_reqq_route() found. */
typedef struct pf_reqq_ans {
	pf_reqq_verdict_t verdict; /* as pf_reqq_answer() */
	uint8_t kind;              /* PF_RQ_* of the request answered; 0 for ASYNC or MISMATCH */
	uint8_t flags;             /* its flags */
	uint32_t tag; /* its tag: with verdict DONE it is answered (with be_type 'E': it failed) */
} pf_reqq_ans_t;

/*
 * The hot path of routing: true when be_type answers (or streams within) the client's own
 * oldest request, untagged, and was accounted for — forward it; false when anything else
 * applies (a pooler's or tagged entry, a synthesized answer, an async message, COPY, a
 * mismatch): nothing was changed, call pf_reqq_route().
 */
static inline bool pf_reqq_route_client(pf_reqq_t *q, uint8_t be_type)
{
	return pf_reqq_answer_common(q, be_type, true) != PF_REQQ_MISMATCH;
}

/* pf_reqq_route() in full; the inline version calls it. */
pf_reqq_route_t pf_reqq_route_any(pf_reqq_t *q, uint8_t be_type, pf_reqq_ans_t *out);

/*
 * pf_reqq_answer() for a server message of type be_type, saying in addition where it goes and
 * which entry it answered (*out, never NULL). Entries the server skips are dropped, tagged ones
 * reported to the drop callback before this returns. Inline for the common case: an answer to
 * a client's untagged request.
 */
static inline pf_reqq_route_t pf_reqq_route(pf_reqq_t *q, uint8_t be_type, pf_reqq_ans_t *out)
{
	if (q->len > 0) {
		pf_reqq_entry_t e = q->ring[q->head];

		if (e.e < 0x10u && e.tag == 0 && e.e != PF_RQ_SYNTH) {
			pf_reqq_verdict_t v = pf_reqq_answer(q, be_type, NULL);
			bool answered = v == PF_REQQ_ANSWER || v == PF_REQQ_DONE;

			out->verdict = v;
			out->kind = answered ? e.e : 0;
			out->flags = 0;
			out->tag = 0;
			return v == PF_REQQ_MISMATCH ? PF_REQQ_CLOSE : PF_REQQ_FORWARD;
		}
	}
	return pf_reqq_route_any(q, be_type, out);
}

#endif
