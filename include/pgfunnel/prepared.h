/*
 * prepared: protocol-level named prepared statements in transaction and statement mode
 * (max_prepared_statements) — which statements each client has under which names, which ones
 * each server has, and what to send so that a client's statement exists wherever it runs.
 *
 * Three kinds of state, all owned by one worker:
 * - The registry: every distinct statement (the bytes of a Parse after its name: query text,
 *   parameter count and types) once, with the server-side name pgfunnel gives it
 *   (PGFUNNEL_<n>, n never reused). Reference-counted by the clients and servers that have it.
 * - A client's map: its statement names -> registry statements. Created on its first named
 *   Parse; cleared by DISCARD ALL / DEALLOCATE ALL.
 * - A server's set: the statements prepared on it, in least-recently-used order, at most
 *   max_prepared_statements (beyond that the oldest is closed on the server first).
 *
 * The client side asks for a plan for each named Parse, Bind, Describe 'S' and Close 'S'
 * (pf_prepared_parse/_use/_close): which statement to close on the server first, which to
 * prepare there first, what to rename the client's statement name to, whether pgfunnel
 * answers the message itself. The caller records each message sent or answered in the
 * server's request queue with the plan's tags, in the plan's order.
 *
 * Outcomes are known only later (a Parse can fail; after an error the server skips every
 * message up to the next Sync), so every change is provisional until its tag is resolved
 * (pf_prepared_resolve: answered, failed or skipped): a change made for a message that fails
 * or is skipped is undone, newest first, so the maps always say what the server did. Two rules
 * keep that exact:
 * - Changes wait for their outcome in one run of messages (up to a Sync). Before deciding on a
 *   message after a Sync while changes of the run before it are still unresolved, the client
 *   must wait (pf_prepared_must_wait): the answers are on their way (the Sync made the server
 *   flush), and the decision depends on them.
 * - An error fails the message it answers and every later one of the run; so a failure undoes
 *   every change from the failed tag on, and the tags of the messages the server skips after it
 *   find nothing left to undo.
 * When a client's link to its server ends with changes unresolved (the server broke, or the
 * client left), they are dropped without being undone and the map is marked broken
 * (pf_prepared_is_broken): its owner closes the client.
 *
 * Pure bookkeeping: no I/O. Bounds: a client may have at most PF_PREPARED_CLIENT_MAX
 * statements of at most PF_PREPARED_CLIENT_MAX_BYTES in all (a Parse beyond them is refused);
 * a server at most max_prepared_statements (plus the changes of the run under way); the
 * unresolved changes are bounded by the request queue (PF_REQQ_MAX entries, three changes
 * each at most).
 */
#ifndef PGFUNNEL_PREPARED_H
#define PGFUNNEL_PREPARED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pgfunnel/util.h"

/* The server-side names: this prefix, 8 hex digits drawn at random per registry, '_' and a
 * decimal number (pf_prepared_registry_prefix() gives all but the number). */
#define PF_PREPARED_PREFIX     "PGFUNNEL_"
#define PF_PREPARED_PREFIX_MAX 20
/* Room for a server-side name with its NUL. */
#define PF_PREPARED_NAME_MAX 40
/* The bytes of a client's statement name that count (Postgres: NAMEDATALEN - 1). */
#define PF_PREPARED_NAME_SIG 63
/* The most statements one plan closes on the server to get back within the limit. */
#define PF_PREPARED_EVICT_MAX 8
/* The most statements one client may have, and their total size. */
#define PF_PREPARED_CLIENT_MAX       65536u
#define PF_PREPARED_CLIENT_MAX_BYTES (64u * 1024u * 1024u)

typedef struct pf_prepared_registry pf_prepared_registry_t;
typedef struct pf_prepared_client pf_prepared_client_t;
typedef struct pf_prepared_server pf_prepared_server_t;

/* A statement of the registry (read-only for callers). */
typedef struct pf_prepared_stmt {
	struct pf_prepared_stmt *hnext; /* registry bucket chain */
	uint64_t hash;
	uint32_t refs;     /* client names, server entries and unresolved changes holding it */
	uint32_t body_len; /* bytes of body */
	char name[PF_PREPARED_NAME_MAX]; /* its server-side name, NUL-terminated */
	uint8_t body[];                  /* the Parse payload after the statement name */
} pf_prepared_stmt_t;

/* What to do for one client message (see pf_prepared_parse). Pointers stay valid until the
 * next call on the same client. */
typedef struct pf_prepared_plan {
	/* First inject Close 'S' of these on the server (the n_evict first). */
	const pf_prepared_stmt_t *evict[PF_PREPARED_EVICT_MAX];
	uint32_t evict_tag[PF_PREPARED_EVICT_MAX];
	uint8_t n_evict;
	const pf_prepared_stmt_t *inject; /* then inject a Parse of this (or NULL) */
	uint32_t inject_tag;
	/* The client's message: forwarded with its statement name replaced by rename (NULL: as
	 * the client sent it), or, when synth is set, answered by pgfunnel with a message of
	 * type synth (ParseComplete '1', CloseComplete '3') instead. Recorded with tag (0: none).
	 */
	const char *rename;
	const pf_prepared_stmt_t *stmt; /* the statement a Bind or Describe names (or NULL) */
	uint8_t synth;
	uint32_t tag;
	/* Counters for SHOW STATS: the message created a client statement, sent a Parse to the
	 * server (injected or the client's own), bound a named statement. */
	uint8_t client_parses, server_parses, binds;
} pf_prepared_plan_t;

/* ---- registry ---- */

/* A new empty registry; key (16 bytes) seeds its hash (random per process). NULL: no memory. */
pf_prepared_registry_t *pf_prepared_registry_new(const uint8_t key[16]);

/* Frees r; every client and server of it must be freed first. */
void pf_prepared_registry_free(pf_prepared_registry_t *r);

/* The server-side names' common beginning, e.g. "PGFUNNEL_1f0c93ab_". */
const char *pf_prepared_registry_prefix(const pf_prepared_registry_t *r);

/* How many statements r holds, and their bytes. */
uint32_t pf_prepared_registry_count(const pf_prepared_registry_t *r);
size_t pf_prepared_registry_bytes(const pf_prepared_registry_t *r);

/* ---- clients ---- */

/* A client's empty map (NULL: no memory). */
pf_prepared_client_t *pf_prepared_client_new(pf_prepared_registry_t *r);

/* Frees c (NULL is fine) and lets go of its statements; unresolved changes are dropped. */
void pf_prepared_client_free(pf_prepared_client_t *c);

/* How many statements the client has (SHOW CLIENTS prepared_statements). */
uint32_t pf_prepared_client_count(const pf_prepared_client_t *c);

/*
 * A named Parse: name (NUL-terminated, not empty; only its first PF_PREPARED_NAME_SIG bytes
 * count, here and below) and the payload after it (body, len bytes). s is the server the
 * message goes to; max its max_prepared_statements (> 0); aborted: s is known to be in a
 * failed transaction (the Parse is then sent for the server to refuse, never answered here).
 * - A name the client has already: the plan makes the server itself answer 42P05 (the
 *   existing statement is made present on the server, and the client's Parse is renamed to
 *   it; pf_prepared_dup_name() gives the client's name for the error text).
 * - Otherwise the name now means this statement; if the server has it, the plan answers
 *   ParseComplete itself (synth '1'); if not, the client's Parse is renamed and forwarded.
 * Returns 0 with *plan filled; -EMFILE when the client would exceed PF_PREPARED_CLIENT_MAX or
 * PF_PREPARED_CLIENT_MAX_BYTES; -ENOMEM (nothing changed in either case).
 */
PF_MUSTCHECK int pf_prepared_parse(pf_prepared_client_t *c, pf_prepared_server_t *s, uint32_t max,
                                   bool aborted, const char *name, const uint8_t *body, size_t len,
                                   pf_prepared_plan_t *plan);

/*
 * A Bind or Describe 'S' of statement name (not empty): when the client has it, the plan
 * renames it (making it present on s first); otherwise the plan leaves the message as it is
 * (the server answers 26000 with the client's own name, as Postgres does). is_bind counts it.
 * Returns 0, or -ENOMEM (nothing changed).
 */
PF_MUSTCHECK int pf_prepared_use(pf_prepared_client_t *c, pf_prepared_server_t *s, uint32_t max,
                                 const char *name, bool is_bind, pf_prepared_plan_t *plan);

/*
 * A Close 'S' of name: pgfunnel answers CloseComplete itself (the statement stays on the
 * servers for others); the client's name is gone once that answer is given. Closing a name the
 * client does not have is not an error (as in Postgres). Returns 0.
 */
PF_MUSTCHECK int pf_prepared_close(pf_prepared_client_t *c, const char *name,
                                   pf_prepared_plan_t *plan);

/*
 * The outcome of the message recorded with tag: ok (answered without error, or its
 * synthesized answer given) or failed (an ErrorResponse, or skipped by the server). Tags of
 * changes already undone are ignored. Unknown tags are ignored.
 */
void pf_prepared_resolve(pf_prepared_client_t *c, uint32_t tag, bool ok);

/*
 * For the ErrorResponse answering the message recorded with tag: the client's statement name
 * when that message was a duplicate Parse (pgfunnel rewrites the server's 42P05 text to name
 * it), else NULL. Valid until the tag is resolved.
 */
const char *pf_prepared_dup_name(const pf_prepared_client_t *c, uint32_t tag);

/*
 * The client's name for the statement whose server-side name is sname (len bytes, not
 * NUL-terminated), or NULL (for error texts, which should never show pgfunnel's names; a
 * walk over the client's names).
 */
const char *pf_prepared_client_name_of(const pf_prepared_client_t *c, const char *sname,
                                       size_t len);

/* The client sent a Sync (forwarded): the changes so far belong to a finished run. */
void pf_prepared_sync(pf_prepared_client_t *c);

/* True when the client must wait before its next decision (see the header comment). */
bool pf_prepared_must_wait(const pf_prepared_client_t *c);

/* True while changes of the client's wait for their outcome. */
bool pf_prepared_has_pending(const pf_prepared_client_t *c);

/*
 * The client's link to its server ended: unresolved changes are dropped (they refer to that
 * server); if there were any, the map is marked broken.
 */
void pf_prepared_detach(pf_prepared_client_t *c);

/* True once the map can no longer be trusted: close the client. */
bool pf_prepared_is_broken(const pf_prepared_client_t *c);

/*
 * DISCARD ALL / DEALLOCATE ALL completed on server s (may be NULL) for client c (may be
 * NULL): every statement settled before it is gone from both; changes still unresolved (made
 * for messages after it) keep their effect.
 */
void pf_prepared_discard(pf_prepared_client_t *c, pf_prepared_server_t *s);

/* ---- servers ---- */

/* A server's empty set (NULL: no memory). */
pf_prepared_server_t *pf_prepared_server_new(pf_prepared_registry_t *r);

/* Frees s (NULL is fine); no client's unresolved change may refer to it (detach first). */
void pf_prepared_server_free(pf_prepared_server_t *s);

/* How many statements are prepared on s (SHOW SERVERS prepared_statements). */
uint32_t pf_prepared_server_count(const pf_prepared_server_t *s);

/*
 * True when s may hold statements pgfunnel does not know of (a client ran SQL-level PREPARE or
 * DEALLOCATE there, or memory ran out while undoing a change): it must not serve another client.
 */
bool pf_prepared_server_is_unsure(const pf_prepared_server_t *s);
void pf_prepared_server_set_unsure(pf_prepared_server_t *s);

/* For tests: whether s has the statement of that server-side name (a linear scan); the
 * server-side name a client's name stands for now (NULL: none). */
bool pf_prepared_server_has_name(const pf_prepared_server_t *s, const char *name);
const char *pf_prepared_client_lookup(const pf_prepared_client_t *c, const char *name);

/* True when s has the statement (for tests). */
bool pf_prepared_server_has(const pf_prepared_server_t *s, const pf_prepared_stmt_t *st);

/*
 * Checks the invariants of a client's map and change log and of the given servers' sets (names
 * hashed where they belong, counts and sizes, one pin per unresolved change, records in tag
 * order). Returns 0, or a negative number naming the first one broken. For tests and fuzzing.
 */
int pf_prepared_check(const pf_prepared_client_t *c, const pf_prepared_server_t *const *servers,
                      size_t nservers);

#endif
