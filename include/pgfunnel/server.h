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

#include "pgfunnel/client.h"
#include "pgfunnel/conn.h"
#include "pgfunnel/pool.h"
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
} pf_server_task_t;

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

typedef enum pf_server_close_reason {
	PF_SV_CLOSE_CONNECT_FAILED,
	PF_SV_CLOSE_LOGIN_FAILED,
	PF_SV_CLOSE_EOF,          /* Postgres closed the connection */
	PF_SV_CLOSE_ERROR,        /* socket error */
	PF_SV_CLOSE_PROTOCOL,     /* bytes that are not the protocol */
	PF_SV_CLOSE_CLIENT_GONE,  /* its client left mid-transaction */
	PF_SV_CLOSE_LIFETIME,     /* server_lifetime */
	PF_SV_CLOSE_IDLE_TIMEOUT, /* server_idle_timeout */
	PF_SV_CLOSE_CONNECT_TIMEOUT,
	PF_SV_CLOSE_RESET_FAILED, /* reset/check/sync query failed */
	PF_SV_CLOSE_SHUTDOWN,
	PF_SV_CLOSE_ADMIN,     /* RECONNECT / KILL */
	PF_SV_CLOSE_POOL_GONE, /* database removed or too many servers after reload */
	PF_SV_CLOSE_STATEMENT_MODE,
	PF_SV_CLOSE_EVICTED,   /* idle, closed to make room under max_db/user_connections */
	PF_SV_CLOSE_UNCERTAIN, /* what it still owes cannot be known: never reused */
	PF_SV_CLOSE_REASONS    /* how many there are */
} pf_server_close_reason_t;

struct pf_server {
	pf_conn_t conn; /* first: a pf_server_t * is a pf_conn_t * */
	pf_server_state_t state;
	pf_pool_t *pool;
	pf_client_t *link;
	pf_server_task_t task;
	uint32_t be_pid, be_key; /* the real BackendKeyData */
	pf_vars_t vars;          /* values the server reported */
	/* ParameterStatus values seen at login, in order (the pool's welcome). */
	size_t n_params;
	char **param_names;
	char **param_values;
	pf_reqq_t rq; /* what it still owes, request by request */
	/* During login: a hash index of param_names (index + 1; 0 = empty slot), and how many
	 * ParameterStatus messages came (at most PF_SERVER_MAX_LOGIN_PARAMS). */
	uint16_t *param_index;
	uint32_t login_param_msgs;
	uint8_t tx_status;   /* last ReadyForQuery status ('I', 'T', 'E') */
	bool close_needed;   /* RECONNECT or lifetime: close at release */
	bool task_failed;    /* the pooler's own query got an ErrorResponse */
	bool ready;          /* logged in (first ReadyForQuery seen) */
	pf_usec_t last_used; /* when it was last released */
	pf_list_t cancels;   /* cancel requests in flight for this backend */
	bool cancel_hold;    /* released, held back until those cancels are done */
	/* When the running task's query was sent (the janitor times out a tested server). */
	pf_usec_t task_start;
	/* The SCRAM exchange while it runs (wiped and freed at its end), and its progress. */
	pf_scram_client_t *scram;
	pf_server_sasl_step_t sasl_step;
	char login_sqlstate[6];
	char *login_error;
};

/*
 * Closes every client of l for reason (clients' lists; closing one may close others, so the
 * head is taken each time), and every client and server of pool p (KILL, shutdown). Part of
 * pool.c, declared here where both close-reason enums are known.
 */
void pf_pool_close_clients(pf_list_t *l, pf_close_reason_t reason);
void pf_pool_close_all(pf_pool_t *p, pf_close_reason_t client_reason,
                       pf_server_close_reason_t server_reason);

/* Opens a new server connection for pool (state LOGIN). Returns 0 or -errno. */
PF_MUSTCHECK int pf_server_launch(pf_pool_t *pool);

/* Ends s; its client (if linked) is told when reason makes it lose its session. Idempotent. */
void pf_server_close(pf_server_t *s, pf_server_close_reason_t reason);

/* Starts the pooler's own query (reset/check/sync) on a server; returns 0 or -errno. */
int pf_server_run_task(pf_server_t *s, pf_server_task_t task, const char *sql);

/* Links c and s; syncs parameters first when needed. */
void pf_server_link(pf_server_t *s, pf_client_t *c);

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

/* How deep pf_server_link() resumes newly linked clients inline before deferring to the loop. */
#define PF_SERVER_LINK_DEPTH_MAX 16

/* True when what s owes can no longer be known (a mismatch or a doubtful COPY): close it. */
bool pf_server_is_uncertain(const pf_server_t *s);

/* The reason's short text, as logged and as the metrics endpoint labels it. */
const char *pf_server_close_reason_name(pf_server_close_reason_t reason);

/* Formats "S-0x…: db/user@addr:port" for the log. */
size_t pf_server_describe(const pf_server_t *s, char *buf, size_t n);

#endif
