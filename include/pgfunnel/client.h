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

#include "pgfunnel/cancelkey.h"
#include "pgfunnel/conn.h"
#include "pgfunnel/pool.h"
#include "pgfunnel/runtime.h"
#include "pgfunnel/scram.h"
#include "pgfunnel/server.h"
#include "pgfunnel/vars.h"

/* A console command that answers later. */
typedef enum pf_admin_wait {
	PF_ADMIN_WAIT_NONE = 0,
	PF_ADMIN_WAIT_PAUSE,   /* until every server of the scope is gone */
	PF_ADMIN_WAIT_CLOSE,   /* WAIT_CLOSE: until no server of the scope is tagged for closing */
	PF_ADMIN_WAIT_SUSPEND, /* SUSPEND: until every socket buffer is flushed (suspend_timeout) */
} pf_admin_wait_t;

/* Longest HBA map= name a client's rule may name (Postgres' NAMEDATALEN). */
#define PF_CLIENT_MAP_MAX 64

/*
 * What a client needs only while it logs in, and a console session for its whole life: kept out
 * of pf_client_t (allocated with the client, freed once it is logged in unless it is a console
 * session), so that the thousands of idle clients of a big pool do not carry it.
 */
typedef struct pf_client_cold {
	/* login */
	char *method_map; /* the HBA rule's map= (peer, cert), NULL for none */
	pf_scram_server_t *scram;
	/* An auth_query lookup runs (authquery.h, auth_lookup): c borrows a server of the
	 * auth_user's pool in lookup_db (held by a client_refs of its own), not yet of a pool of
	 * its own. */
	pf_database_t *lookup_db;
	uint32_t secret_gen; /* the user's secret_gen when its password exchange began */
	uint8_t md5_salt[4];
	uint8_t method;    /* how it authenticates (client.c's METHOD_*) */
	uint8_t auth_step; /* which password message it waits for (client.c's AUTH_*) */
	bool method_dn : 1;      /* cert names: the whole subject (clientname=DN), not the CN */
	bool tls_negotiated : 1; /* it sent SSLRequest (or began direct TLS): no second one */
	bool auth_lookup : 1;    /* pf_client_in_lookup() */
	/* console flags (sharing the login flags' byte) */
	bool admin : 1;           /* logged in to the console (pf_client_is_console) */
	bool admin_can_write : 1; /* admin_users rather than stats_users */
	bool admin_kill_self : 1; /* KILL_CLIENT named the console client itself */
	/* console */
	pf_database_t *admin_wait_db; /* PAUSE / WAIT_CLOSE in progress for this database (NULL =
	                               * all) */
	pf_admin_wait_t admin_wait;   /* ... which of them */
	int admin_shutdown;           /* pf_shutdown_mode_t a SHUTDOWN asked for */
} pf_client_cold_t;

struct pf_client {
	pf_conn_t conn;        /* first: a pf_client_t * is a pf_conn_t * */
	pf_pool_client_t pc;   /* its place in the pool (state, lists, link) */
	pf_server_peer_t peer; /* what its server keeps up to date (vars, timings) */
	pf_database_t *db;
	pf_user_t *user;        /* the login name the client authenticated as */
	const char *user_name;  /* interned (pf_vars_intern) */
	const char *db_name;    /* interned */
	pf_cancel_key_t ck;     /* the BackendKeyData we gave it, in the worker's table */
	/* While logging in (every PF_CL_LOGIN client has it), and for a console session; else
	 * NULL. Its flags and steps live there, not here: a logged-in client is 408 bytes, the
	 * size below which malloc's chunk for it drops to 416 (5000 idle clients: 40 KB). */
	pf_client_cold_t *cold;
};

/* Logged in to the console (admin or stats database). */
static inline bool pf_client_is_console(const pf_client_t *c)
{
	return c->cold && c->cold->admin;
}

/* Logging in, its user looked up by auth_query on a borrowed server (authquery.h). */
static inline bool pf_client_in_lookup(const pf_client_t *c)
{
	return c->cold && c->cold->auth_lookup;
}

/* The client of a pool member; a list node of a pool's client list. */
static inline pf_client_t *pf_client_of(const pf_pool_client_t *m)
{
	return m ? PF_CONTAINER_OF(m, pf_client_t, pc) : NULL;
}
static inline pf_client_t *pf_client_from_node(pf_list_node_t *n)
{
	return PF_CONTAINER_OF(n, pf_client_t, pc.node);
}

/* The server linked to c, or NULL; the client linked to s, or NULL. */
static inline pf_server_t *pf_client_server(const pf_client_t *c)
{
	return pf_server_of(c->pc.link);
}
static inline pf_client_t *pf_server_client(const pf_server_t *s)
{
	return pf_client_of(s->ps.link);
}

/*
 * True when c asks for the console as the user "pgbouncer" or "pgfunnel" over the unix socket
 * from the OS user that runs pgfunnel (SO_PEERCRED uid = getuid()): PgBouncer admits exactly
 * that (as "pgbouncer") without a password, with admin rights. Any other name goes through
 * admin_users / stats_users and the normal authentication, whoever the peer is.
 */
bool pf_client_peer_is_owner(const pf_client_t *c);

/* True for the user names pf_client_peer_is_owner() accepts: "pgbouncer" and "pgfunnel". */
bool pf_client_is_owner_name(const char *user);

/* Accepts a connection from listener and starts the login. */
void pf_client_accept(pf_worker_t *w, uv_stream_t *listener, bool is_unix);
/* A TCP connection accept(2) returned while a listener is drained before it closes. */
void pf_client_accept_fd(pf_worker_t *w, int fd);

/*
 * Ends c for reason. message (may be NULL) overrides the table's client text; sqlstate too.
 * Idempotent. c is freed later (after the socket closes); callers must not use it afterwards
 * except for checking c->conn.closing.
 */
void pf_client_close(pf_client_t *c, pf_close_reason_t reason, const char *sqlstate,
                     const char *message);

/* pf_client_close with a DETAIL field (may be NULL) in the ErrorResponse the client is sent. */
void pf_client_close_detail(pf_client_t *c, pf_close_reason_t reason, const char *sqlstate,
                            const char *message, const char *detail);

/*
 * c's auth_query lookup is over (c->user is the user it found, or NULL for an unknown name):
 * its password exchange begins as it would have for an auth_file user, and its input is
 * processed again. c may be closed on return.
 */
void pf_client_auth_continue(pf_client_t *c);

/* Sends the welcome (AuthenticationOk, ParameterStatus…, BackendKeyData, ReadyForQuery). */
void pf_client_finish_login(pf_client_t *c);

/*
 * max_user_client_connections for c's login user (c->user, already counted in its
 * client_count): false when c is one too many — c is then closed with PgBouncer's message.
 * Called at the startup packet and again when an auth_query lookup found the user.
 */
bool pf_client_check_user_limit(pf_client_t *c);

/* The client got a server (or its server finished syncing parameters): process its input. */
void pf_client_resume(pf_client_t *c);

/* Sends an ErrorResponse without closing (e.g. admin console errors). */
void pf_client_send_error(pf_client_t *c, const char *severity, const char *sqlstate,
                          const char *message, const char *detail);

/* The reason's short text, as logged and as the metrics endpoint labels it. */
const char *pf_client_close_reason_name(pf_close_reason_t reason);

/*
 * Janitor, for each pool: closes clients whose peer is gone while they cannot read, and
 * applies client_idle_timeout, query_timeout and idle_transaction_timeout (the [users] value
 * over the global one).
 */
void pf_client_maintain(pf_pool_t *pool, pf_usec_t now);

/* Janitor: closes clients that have been logging in for longer than client_login_timeout. */
void pf_client_check_login_timeouts(pf_worker_t *w, pf_usec_t now);

/* Formats "C-0x…: db/user@addr:port" for the log. */
size_t pf_client_describe(const pf_client_t *c, char *buf, size_t n);

#endif
