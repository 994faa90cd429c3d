/*
 * server: the server side of the proxy — connect, log in to Postgres (cleartext, md5,
 * SCRAM-SHA-256 including passthrough of a client's SCRAM keys), remember its ParameterStatus
 * values, run the pooler's own queries (parameter sync, reset, check, connect_query) and forward
 * results to the linked client, tracking ReadyForQuery to know when it is free again.
 *
 * Exactly one function, pf_server_close(), ends a server.
 */
#ifndef PGFUNNEL_SERVER_H
#define PGFUNNEL_SERVER_H

#include <stdbool.h>
#include <stdint.h>

#include "pgfunnel/conn.h"
#include "pgfunnel/dns.h"
#include "pgfunnel/pool.h"
#include "pgfunnel/prepared.h"
#include "pgfunnel/reqq.h"
#include "pgfunnel/scram.h"
#include "pgfunnel/vars.h"

/* What the server is doing for the pooler itself (its replies are not forwarded). */
typedef enum pf_server_task {
	PF_SV_TASK_NONE = 0,
	PF_SV_TASK_LOGIN,         /* startup and authentication */
	PF_SV_TASK_CONNECT_QUERY, /* connect_query after login */
	PF_SV_TASK_SYNC_VARS,     /* SET of the client's parameters before its messages */
	PF_SV_TASK_RESET,         /* server_reset_query after a session */
	PF_SV_TASK_CHECK,         /* server_check_query before reuse */
	PF_SV_TASK_LOOKUP,        /* a query for a client still logging in (pf_server_run_lookup) */
} pf_server_task_t;

/*
 * What a lookup (pf_server_run_lookup) got back. Owned by the server until taken with
 * pf_server_take_lookup(); freed with pf_server_lookup_free().
 */
typedef struct pf_server_lookup {
	int columns;   /* of the result (its RowDescription, 0 for NoData); -1: none came */
	uint32_t rows; /* DataRows received */
	uint8_t *row;  /* the first DataRow's payload (malloc'd), NULL when none came */
	size_t row_len;
	bool failed;       /* an ErrorResponse came (the rest was skipped up to the Sync) */
	char sqlstate[6];  /* ... its SQLSTATE, "" if it had none */
	char *message;     /* ... its message (malloc'd), or NULL */
	uint8_t tx_status; /* the closing ReadyForQuery's status */
} pf_server_lookup_t;

/*
 * How far the server's SCRAM exchange got. Each step admits exactly one next Authentication
 * message (protocol docs, "SASL Authentication"): SASLContinue, then SASLFinal, whose signature
 * proves the server knows the password, then AuthenticationOk. Anything else fails the login,
 * so a server cannot skip its proof or restart the exchange.
 */
typedef enum pf_server_sasl_step {
	PF_SV_SASL_NONE = 0,   /* no exchange: any Authentication request may come */
	PF_SV_SASL_FIRST_SENT, /* client-first-message sent: only SASLContinue */
	PF_SV_SASL_FINAL_SENT, /* client-final-message sent: only SASLFinal */
	PF_SV_SASL_VERIFIED,   /* server signature checked: only AuthenticationOk */
} pf_server_sasl_step_t;

/*
 * Most ParameterStatus messages a server may send before its first ReadyForQuery. Postgres 15
 * sends 14 (a few more with extensions reporting GUCs); far above that is a hostile or broken
 * server, and the login is refused rather than storing them all as the pool's welcome.
 */
#define PF_SERVER_MAX_LOGIN_PARAMS 1000

/*
 * What a linked server keeps up to date for its client (embedded in the client; the server
 * knows it only through this struct, handed over by pf_server_attach()).
 */
typedef struct pf_server_peer {
	pf_vars_t vars;        /* the client's session parameters: a SET reported updates them */
	pf_usec_t query_start; /* when its current query began (0 = none) */
	pf_usec_t xact_start;  /* when its current transaction began (0 = none) */
	bool rq_full; /* held back: the request queue is full; resumed once half is answered */
	/* Prepared statements tracked (transaction/statement mode, max_prepared_statements > 0):
	 * its map (NULL until its first named statement), and whether it waits for the outcome
	 * of its earlier changes (resumed by the server side when they are known). */
	bool prep_on;
	bool prep_wait;
	bool prep_wait_parse; /* ... and the message waiting is a Parse */
	bool prep_barrier; /* it sent an unnamed DISCARD / DEALLOCATE (pf_server_prep_must_wait) */
	pf_prepared_client_t *prep;
} pf_server_peer_t;

typedef struct pf_server pf_server_t;

struct pf_server {
	pf_conn_t conn;         /* first: a pf_server_t * is a pf_conn_t * */
	pf_pool_server_t ps;    /* its place in the pool (state, lists, link) */
	pf_server_peer_t *peer; /* the linked client's part, while linked */
	pf_server_task_t task;
	uint32_t be_pid, be_key; /* the real BackendKeyData */
	pf_vars_t vars;          /* values the server reported */
	/* ParameterStatus values seen at login, in order (the pool's welcome). */
	size_t n_params;
	char **param_names;
	char **param_values;
	pf_reqq_t rq; /* what it still owes, request by request */
	/* The statements pgfunnel prepared on it (NULL until the first), and whether a client's
	 * SQL-level PREPARE/DEALLOCATE left it with statements pgfunnel does not know of. */
	pf_prepared_server_t *prep;
	bool prep_unsure;
	/* During login: a hash index of param_names (index + 1; 0 = empty slot), and how many
	 * ParameterStatus messages came (at most PF_SERVER_MAX_LOGIN_PARAMS). */
	uint16_t *param_index;
	uint32_t login_param_msgs;
	uint8_t tx_status; /* last ReadyForQuery status ('I', 'T', 'E') */
	bool task_failed;  /* the pooler's own query got an ErrorResponse */
	bool ready;        /* logged in (first ReadyForQuery seen) */
	pf_list_t cancels; /* cancel requests in flight for this backend */
	/* The SCRAM exchange while it runs (wiped and freed at its end), and its progress. */
	pf_scram_client_t *scram;
	pf_server_sasl_step_t sasl_step;
	char login_sqlstate[6];
	char *login_error;
	/* The server's error to the parameter sync run for the linked client (a value of the
	 * client's the server refuses): told to the client when the server is closed for it. */
	char sync_sqlstate[6];
	char *sync_error;
	char *host; /* the TCP host connected to (TLS: SNI and verify-full's name), or NULL */
	int port;   /* ... its port */
	char *path; /* the unix socket connected to, or NULL */
	/* Its place in a list of several hosts and the list's length (host_count 0: one host). */
	unsigned host_index, host_count;
	pf_dns_waiter_t dns_wait;   /* waiting for the DNS cache to resolve host */
	struct pf_tls_ctx *tls;     /* server_tls_* it negotiates TLS with (a reference), or NULL */
	pf_server_lookup_t *lookup; /* PF_SV_TASK_LOOKUP's answer, while the server holds it */
	bool lookup_answered;       /* ... complete: lookup_done() once its last message is read */
};

/* Opens a new server connection for pool (state LOGIN). Returns 0 or -errno. */
PF_MUSTCHECK int pf_server_launch(pf_pool_t *pool);

/* Ends s; its client (if linked) is told when reason makes it lose its session. Idempotent. */
void pf_server_close(pf_server_t *s, pf_server_close_reason_t reason);

/* Starts the pooler's own query (reset/check/sync) on a server; returns 0 or -errno. */
int pf_server_run_task(pf_server_t *s, pf_server_task_t task, const char *sql);

/*
 * Runs sql with n text parameters (bound values, never spliced into the text: the extended
 * query protocol, pf_proto_fe_ext_query) on s, which the pool linked to a client still logging
 * in (pf_pool_borrow) without attaching it: nothing s answers goes to that client. Every
 * message is recorded in s's request queue as the pooler's own; the answers are gathered in
 * s->lookup (the first DataRow whole, the others counted, an error's SQLSTATE and message) and,
 * once the ReadyForQuery of its Sync has come, the pool ops' lookup_done() hears of it for the
 * linked client, which takes the answer (pf_server_take_lookup) and releases s. Returns 0, or
 * -errno (nothing was sent).
 */
PF_MUSTCHECK int pf_server_run_lookup(pf_server_t *s, const char *sql, const char *const *params,
                                      size_t n);

/* The finished lookup's answer, now the caller's (pf_server_lookup_free()); NULL if none. */
pf_server_lookup_t *pf_server_take_lookup(pf_server_t *s);

/* Frees a lookup's answer (NULL is allowed). */
void pf_server_lookup_free(pf_server_lookup_t *r);

/*
 * The pool linked s (s->ps.link is set): s forwards to client_conn and keeps peer up to date.
 * Sends the parameter sync first when the client's parameters differ from the server's;
 * returns true when it did (the client is resumed when the sync is done).
 */
bool pf_server_attach(pf_server_t *s, pf_server_peer_t *peer, pf_conn_t *client_conn);

/* The linked client is done with s: s goes back to the pool (or is closed if not clean). */
void pf_server_release(pf_server_t *s);

/* The server of a pool member, a list node of a pool's server list. */
static inline pf_server_t *pf_server_of(const pf_pool_server_t *m)
{
	return m ? PF_CONTAINER_OF(m, pf_server_t, ps) : NULL;
}
static inline pf_server_t *pf_server_from_node(pf_list_node_t *n)
{
	return PF_CONTAINER_OF(n, pf_server_t, ps.node);
}

/*
 * Forwards a CancelRequest for s's backend to its host (a fresh connection). Until it is done
 * (or cancel_wait_timeout passes), s is not given to another client.
 */
void pf_server_send_cancel(pf_server_t *s);

/* Shutdown: drops every cancel request in flight. */
void pf_server_close_cancels(pf_worker_t *w);

/* Janitor: gives up on cancel requests older than cancel_wait_timeout. */
void pf_server_expire_cancels(pf_worker_t *w, pf_usec_t now);

/*
 * True when s can go back to the pool: logged in, idle transaction status, no task of the
 * pooler's own, nothing owed or half-sent in either direction (its request queue is reusable).
 */
bool pf_server_is_clean(const pf_server_t *s);

/*
 * True when s, linked in transaction or statement mode, could go back to the pool right now:
 * nothing owed or awaited, idle transaction status, nothing half-way in either direction.
 */
bool pf_server_may_release(const pf_server_t *s);

/* True when what s owes can no longer be known (a mismatch or a doubtful COPY): close it. */
bool pf_server_is_uncertain(const pf_server_t *s);

/*
 * Sends the answers pgfunnel gives the linked client itself (pf_reqq_push_synth) that are due
 * now — everything the server answered before them went to the client — after what the
 * server side has marked for forwarding. Returns false when those bytes are still being
 * written (the answers follow once they are out: the server's walk resumes and drains).
 */
bool pf_server_give_synth(pf_server_t *s);

/*
 * True when the linked client's next decision about its named statements must wait for
 * answers on their way: to changes made before a Sync it sent, or to a simple Query it sent
 * (which may DISCARD ALL or DEALLOCATE ALL), or an unnamed statement that may be one (prep_barrier:
 * until everything sent is answered); parse: for a named Parse, which waits for earlier Syncs to
 * be answered too (whether the server is in a failed transaction decides its answer).
 */
bool pf_server_prep_must_wait(pf_server_t *s, bool parse);

/* The reason's short text, as logged and as the metrics endpoint labels it. */
const char *pf_server_close_reason_name(pf_server_close_reason_t reason);

/* Formats "S-0x…: db/user@addr:port" for the log. */
size_t pf_server_describe(const pf_server_t *s, char *buf, size_t n);

/*
 * The worker's DNS cache, made on first use with the running dns_* settings applied (peer.c
 * resolves its peers' names through it too). NULL: out of memory.
 */
pf_dns_t *pf_server_dns(pf_worker_t *w);

#endif
