/*
 * client: the client side of the proxy — startup packet, SSL/GSS refusal, authentication against
 * auth_file, the welcome messages, then message forwarding while linked to a server.
 *
 * Exactly one function, pf_client_close(), ends a client: it decides what the client is told,
 * what happens to its server, what is logged and counted.
 */
#ifndef PGFUNNEL_CLIENT_H
#define PGFUNNEL_CLIENT_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "pgfunnel/conn.h"
#include "pgfunnel/pool.h"
#include "pgfunnel/scram.h"
#include "pgfunnel/vars.h"

/* Why a client or server connection ends. One table maps each to log text and client message. */
typedef enum pf_close_reason {
	PF_CLOSE_CLIENT_EXIT,     /* Terminate message */
	PF_CLOSE_CLIENT_EOF,      /* socket closed by the client */
	PF_CLOSE_CLIENT_ERROR,    /* socket error */
	PF_CLOSE_CLIENT_PROTOCOL, /* bytes that are not the protocol */
	PF_CLOSE_CLIENT_STARTUP,  /* bad startup packet / parameters (message given) */
	PF_CLOSE_CLIENT_AUTH,     /* authentication failed (message given) */
	PF_CLOSE_CLIENT_NO_DB,    /* unknown database */
	PF_CLOSE_CLIENT_LIMIT,    /* max_client_conn and friends */
	PF_CLOSE_CLIENT_LOGIN_TIMEOUT,
	PF_CLOSE_CLIENT_IDLE_TIMEOUT,
	PF_CLOSE_CLIENT_WAIT_TIMEOUT,
	PF_CLOSE_CLIENT_QUERY_TIMEOUT,
	PF_CLOSE_CLIENT_IDLE_TX_TIMEOUT,
	PF_CLOSE_CLIENT_SERVER_GONE,     /* its server died */
	PF_CLOSE_CLIENT_SERVER_LOGIN,    /* no server could log in (message given) */
	PF_CLOSE_CLIENT_SERVER_GONE_MID, /* its server died half-way through a message to it */
	PF_CLOSE_CLIENT_STATEMENT_MODE,
	PF_CLOSE_CLIENT_SHUTDOWN,
	PF_CLOSE_CLIENT_ADMIN_KILL,
	PF_CLOSE_CLIENT_CANCEL_DONE, /* a cancel request connection finished */
	PF_CLOSE_CLIENT_DB_DISABLED,
	PF_CLOSE_CLIENT_OOM,
	PF_CLOSE_CLIENT_REASONS /* how many there are */
} pf_close_reason_t;

/* A console command that answers later. */
typedef enum pf_admin_wait {
	PF_ADMIN_WAIT_NONE = 0,
	PF_ADMIN_WAIT_PAUSE,   /* until every server of the scope is gone */
	PF_ADMIN_WAIT_CLOSE,   /* WAIT_CLOSE: until no server of the scope is tagged for closing */
	PF_ADMIN_WAIT_SUSPEND, /* SUSPEND: until every socket buffer is flushed (suspend_timeout) */
} pf_admin_wait_t;

struct pf_client {
	pf_conn_t conn; /* first: a pf_client_t * is a pf_conn_t * */
	pf_client_state_t state;
	pf_pool_t *pool;
	pf_database_t *db;
	pf_user_t *user; /* the login name the client authenticated as */
	pf_server_t *link;
	char *user_name;
	char *db_name;
	pf_vars_t vars;
	uint32_t cancel_pid, cancel_key; /* the BackendKeyData we gave it */
	pf_list_node_t cancel_node;      /* worker's cancel-key bucket */
	bool admin;                      /* logged in to the console */
	bool admin_can_write;            /* admin_users rather than stats_users */
	bool admin_kill_self;            /* KILL_CLIENT named the console client itself */
	pf_admin_wait_t admin_wait;      /* PAUSE / WAIT_CLOSE in progress */
	pf_database_t *admin_wait_db;    /* ... for this database (NULL = all) */
	int admin_shutdown;              /* pf_shutdown_mode_t a SHUTDOWN asked for */
	bool wait_counted;
	bool rq_full; /* held back: its server's request queue is full (server.c resumes it) */
	pf_usec_t wait_start;  /* when it started waiting (0 = not waiting) */
	pf_usec_t xact_start;  /* when its current transaction began */
	pf_usec_t query_start; /* when its current query began */
	/* login */
	uint8_t auth_step;
	uint8_t md5_salt[4];
	pf_scram_server_t *scram;
	/* cancel request being forwarded */
	uint32_t cancel_target_pid, cancel_target_key;
};

/* Accepts a connection from listener and starts the login. */
void pf_client_accept(pf_worker_t *w, uv_stream_t *listener, bool is_unix);

/*
 * Ends c for reason. message (may be NULL) overrides the table's client text; sqlstate too.
 * Idempotent. c is freed later (after the socket closes); callers must not use it afterwards
 * except for checking c->conn.closing.
 */
void pf_client_close(pf_client_t *c, pf_close_reason_t reason, const char *sqlstate,
                     const char *message);

/* Sends the welcome (AuthenticationOk, ParameterStatus…, BackendKeyData, ReadyForQuery). */
void pf_client_finish_login(pf_client_t *c);

/* The client got a server (or its server finished syncing parameters): process its input. */
void pf_client_resume(pf_client_t *c);

/* Sends an ErrorResponse without closing (e.g. admin console errors). */
void pf_client_send_error(pf_client_t *c, const char *severity, const char *sqlstate,
                          const char *message, const char *detail);

/* The reason's short text, as logged and as the metrics endpoint labels it. */
const char *pf_client_close_reason_name(pf_close_reason_t reason);

/* Janitor: closes clients that have been logging in for longer than client_login_timeout. */
void pf_client_check_login_timeouts(pf_worker_t *w, pf_usec_t now);

/* Formats "C-0x…: db/user@addr:port" for the log. */
size_t pf_client_describe(const pf_client_t *c, char *buf, size_t n);

#endif
