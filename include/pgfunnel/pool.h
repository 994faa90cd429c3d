/*
 * pool: databases, users and the pools that join them; linking clients to servers; limits;
 * the waiting queue.
 *
 * A pool is keyed by (database, user) where user is the database's forced user if it has one,
 * else the client's login name. Every client and server of a pool is in exactly one of the pool's
 * lists, and its state constant names that list; only pf_pool_set_client_state() and
 * pf_pool_set_server_state() move them, so SHOW POOLS counts are list lengths.
 *
 * Waiting clients are served in arrival order: a server that becomes free goes to the client
 * that has waited longest.
 *
 * The pool knows clients and servers only by the members embedded in them (pf_pool_client_t,
 * pf_pool_server_t) and acts on them through pf_pool_ops_t, so it runs (and is unit tested)
 * without sockets or libuv calls; the time comes from the worker's clock.
 */
#ifndef PGFUNNEL_POOL_H
#define PGFUNNEL_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pgfunnel/auth.h"
#include "pgfunnel/config.h"
#include "pgfunnel/list.h"
#include "pgfunnel/runtime.h"
#include "pgfunnel/scram.h"
#include "pgfunnel/util.h"

typedef struct pf_pool pf_pool_t;
typedef struct pf_pool_client pf_pool_client_t;
typedef struct pf_pool_server pf_pool_server_t;

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
	PF_CLOSE_CLIENT_DB_CLIENT_LIMIT,   /* max_db_client_connections */
	PF_CLOSE_CLIENT_USER_CLIENT_LIMIT, /* max_user_client_connections */
	PF_CLOSE_CLIENT_TX_TIMEOUT,        /* transaction_timeout */
	PF_CLOSE_CLIENT_PQEXEC,            /* disable_pqexec: it sent a Query message */
	PF_CLOSE_CLIENT_CONFIG_CHANGED,    /* server_fast_close: its server must be closed */
	PF_CLOSE_CLIENT_REASONS            /* how many there are */
} pf_close_reason_t;

/* Why a server connection ends. */
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
	PF_SV_CLOSE_OVER_SIZE, /* released while its pool is over a lowered size or limit */
	PF_SV_CLOSE_REASONS    /* how many there are */
} pf_server_close_reason_t;

/* Where a client is; the comment names the list it lives on. */
typedef enum pf_client_state {
	PF_CL_FREE = 0,      /* on no list (being created or freed) */
	PF_CL_LOGIN,         /* worker->login_clients: startup and authentication */
	PF_CL_WAITING_LOGIN, /* pool->waiting_clients: authenticated, waits for server params */
	PF_CL_ACTIVE,        /* pool->active_clients: logged in, linked or idle */
	PF_CL_WAITING,       /* pool->waiting_clients: needs a server, none free yet */
	PF_CL_CANCEL,        /* worker->cancel_clients: forwarding a cancel request */
} pf_client_state_t;

/* Where a server is; the comment names the list it lives on. */
typedef enum pf_server_state {
	PF_SV_FREE = 0, /* on no list */
	PF_SV_LOGIN,    /* pool->new_servers: connecting and logging in */
	PF_SV_IDLE,     /* pool->idle_servers: ready for a client */
	PF_SV_ACTIVE,   /* pool->active_servers: linked to a client */
	PF_SV_USED,     /* pool->used_servers: released, needs server_check_query before reuse */
	PF_SV_TESTED,   /* pool->tested_servers: running server_reset_query or the check query */
} pf_server_state_t;

/* A user's secret: for checking clients and for logging in to Postgres. */
typedef struct pf_secret {
	pf_auth_secret_kind_t kind;
	bool present;
	char *text;              /* plain password or md5 secret; NULL for SCRAM */
	pf_scram_secret_t scram; /* SCRAM only */
	/* ClientKey learnt from a client's successful SCRAM login (PgBouncer's passthrough). */
	bool has_client_key;
	uint8_t scram_client_key[PF_SCRAM_KEY_LEN];
} pf_secret_t;

/*
 * A login name known to the pooler: from auth_file, a database's forced user, the auth_user
 * that auth_query lookups log in as, or a user an auth_query lookup found.
 */
typedef struct pf_user {
	pf_list_node_t node; /* worker->users, or dyn_db->dyn_users (a forced user: no list) */
	char *name;
	pf_secret_t secret;
	uint32_t secret_gen;      /* bumped when a reload changes the secret */
	int pool_mode;            /* from [users], or PF_POOL_INHERIT */
	int pool_size;            /* -1 = inherit */
	int reserve_pool_size;    /* -1 = inherit */
	int max_user_connections; /* 0 or -1 = unlimited (global applies) */
	/* [users] timeouts; -1 = the global setting applies. */
	pf_usec_t query_timeout;
	pf_usec_t query_wait_timeout;
	pf_usec_t idle_transaction_timeout;
	pf_usec_t transaction_timeout;
	pf_usec_t client_idle_timeout;
	int server_count; /* servers of every pool of this user */
	int client_count;
	/* Its max_user_client_connections from [users]; 0 or -1: the global one applies. */
	int max_user_client_connections;
	/*
	 * Pools whose ->user is this one. A forced user its database stopped using (reload) is
	 * retired and freed with its last pool, so no pool ever points at a freed user.
	 */
	int pool_refs;
	bool retired;
	/*
	 * Found by an auth_query lookup for a client of this database (PgBouncer's "dynamic
	 * credentials", kept per database as PgBouncer does): its secret is the one the last
	 * lookup returned. It lives while a client (client_count) or a pool (pool_refs) refers to
	 * it, and the janitor drops its pools once they are empty. NULL for every other user.
	 */
	pf_database_t *dyn_db;
	/* Made in worker->users only to be an auth_user (pf_worker_auth_user): while it has no
	 * secret from auth_file, no client logs in as it (pf_worker_find_user skips it). */
	bool lookup_only;
} pf_user_t;

/* The statistics a pool keeps (SHOW STATS reads them; the admin issue completes the set). */
typedef struct pf_pool_stats {
	uint64_t server_assignment_count;
	uint64_t xact_count;
	uint64_t query_count;
	uint64_t bytes_received;
	uint64_t bytes_sent;
	uint64_t xact_time;  /* usec */
	uint64_t query_time; /* usec */
	uint64_t wait_time;  /* usec */
	uint64_t client_parse_count;
	uint64_t server_parse_count;
	uint64_t bind_count;
} pf_pool_stats_t;

/* Upper bounds (usec) of the wait-time histogram buckets; the last bucket is +Inf. */
#define PF_POOL_WAIT_BUCKETS 12
extern const pf_usec_t pf_pool_wait_bounds[PF_POOL_WAIT_BUCKETS - 1];

/* A [databases] entry as the running pooler uses it (or one auto-created from "*"). */
typedef struct pf_database {
	pf_list_node_t node; /* worker->databases */
	char *name;
	char *host; /* NULL: the default unix socket directory */
	int port;
	char *dbname;
	pf_user_t *forced_user; /* owned; NULL when clients log in as themselves */
	char *connect_query;
	char *startup_client_encoding;
	char *startup_datestyle;
	char *startup_timezone;
	char *startup_application_name;
	int pool_size;                /* -1 = default_pool_size */
	int min_pool_size;            /* -1 = global */
	int reserve_pool_size;        /* -1 = global */
	int max_db_connections;       /* -1 = global */
	int pool_mode;                /* PF_POOL_INHERIT = global */
	pf_usec_t server_lifetime;    /* -1 = global */
	pf_usec_t query_wait_timeout; /* -1 = global */
	bool autodb;                  /* created from the "*" entry */
	bool admin;                   /* the console's virtual database */
	bool paused;
	bool disabled;
	bool in_config; /* false: removed by a reload, freed once unused */
	pf_usec_t inactive_since;
	int server_count;
	int client_count;
	/* Clients that name it since their startup, logged in or not: it is not freed while one
	 * still points at it (a client answering its password has c->db but is not counted in
	 * client_count until it logs in). */
	int client_refs;
	/* Clients counted against max_db_client_connections: from their startup packet's database
	 * lookup to their close, logged in or not (PgBouncer's client_connection_count). */
	int client_conns;
	/* Its max_db_client_connections; 0 or -1: the global one applies. */
	int max_db_client_connections;
	bool lb_disable; /* load_balance_hosts=disable: stay on one host until it fails */
	/* The entry's auth_user, auth_query and auth_dbname; NULL: the global one applies
	 * (pf_database_auth_user() and friends). */
	char *auth_user;
	char *auth_query;
	char *auth_dbname;
	pf_list_t dyn_users; /* users auth_query lookups found for its clients (pf_user_t.dyn_db) */
	/*
	 * Statistics of pools that were freed (so totals never go backwards), the totals at the
	 * start of the current stats_period and the averages of the last complete period (counts
	 * and bytes per second; times per transaction or query), as SHOW STATS reports them.
	 */
	pf_pool_stats_t stats_retired;
	pf_pool_stats_t stats_period_start;
	pf_pool_stats_t stats_avg;
} pf_database_t;

/*
 * The pool's part of a client: embedded in pf_client_t (client.h), which the pool never sees.
 * Only the pool writes these fields; the layers above read them.
 */
struct pf_pool_client {
	pf_list_node_t node; /* the list its state names */
	pf_pool_t *pool;     /* NULL until it logged in to a pool */
	pf_pool_server_t *link;
	pf_client_state_t state;
	bool ping;            /* its last request was an empty query (a connection check) */
	bool wait_notified;   /* told query_wait_notify's NOTICE (once per wait) */
	pf_usec_t wait_start; /* when it started waiting (0 = not waiting) */
	pf_usec_t released;   /* when its last server went back to the pool (0 = never) */
};

/* The pool's part of a server: embedded in pf_server_t (server.h). */
struct pf_pool_server {
	pf_list_node_t node; /* the list its state names */
	pf_pool_t *pool;
	pf_pool_client_t *link;
	pf_server_state_t state;
	bool close_needed;    /* RECONNECT, changed settings: close when released */
	bool test_is_reset;   /* in PF_SV_TESTED: running server_reset_query (else the check) */
	pf_usec_t born;       /* when its connection was started (server_lifetime) */
	pf_usec_t last_used;  /* when it was last released */
	pf_usec_t test_start; /* when its reset or check query was sent */
};

/*
 * What the pool asks of the layers above (registered in worker->pool_ops by the process
 * layer; unit tests register fakes). The pool decides; these carry the decisions out.
 */
typedef struct pf_pool_ops {
	/* Opens a server connection for pool, which joins with pf_pool_add_server(). 0/-errno. */
	int (*launch_server)(pf_pool_t *pool);
	/* Ends a server, a client (message and sqlstate may be NULL: the reason's own text). */
	void (*close_server)(pf_pool_server_t *s, pf_server_close_reason_t reason);
	void (*close_client)(pf_pool_client_t *c, pf_close_reason_t reason, const char *sqlstate,
	                     const char *message);
	/* s was linked to c (both members already say so): let c's messages flow. */
	void (*linked)(pf_pool_server_t *s, pf_pool_client_t *c);
	/* c's server is ready for c's messages again (a parameter sync ended, its request
	 * queue has room again). */
	void (*resume_client)(pf_pool_client_t *c);
	/* c has the pool's welcome parameters: finish its login. */
	void (*login_done)(pf_pool_client_t *c);
	/* The query c borrowed its server for (pf_pool_borrow) has its whole answer. */
	void (*lookup_done)(pf_pool_client_t *c);
	/* Sends server_reset_query (reset) or server_check_query on s. 0 or -errno. */
	int (*test_server)(pf_pool_server_t *s, bool reset, const char *sql);
	/* Whether s may be reused: logged in, idle, nothing owed or half-sent (server.c). */
	bool (*server_is_clean)(const pf_pool_server_t *s);
	/* Whether what s still owes cannot be known (closed as PF_SV_CLOSE_UNCERTAIN). */
	bool (*server_is_uncertain)(const pf_pool_server_t *s);
	/* Whether a cancel request for s's backend is still in flight. */
	bool (*server_has_cancels)(const pf_pool_server_t *s);
	/* Whether a message of c's is only partly passed on (its server cannot be reused). */
	bool (*client_mid_message)(const pf_pool_client_t *c);
	/* Logs a warning about s (the log names the server as the other lines do). */
	void (*warn_server)(const pf_pool_server_t *s, const char *text);
} pf_pool_ops_t;

/* A (database, user) pool. */
struct pf_pool {
	pf_list_node_t node; /* worker->pools */
	pf_worker_t *worker;
	pf_database_t *db;
	pf_user_t *user; /* the user servers log in as (forced or the clients' own) */
	pf_list_t active_clients;
	pf_list_t waiting_clients;
	size_t waiting_login_count; /* of waiting_clients, those in PF_CL_WAITING_LOGIN */
	pf_list_t active_servers;
	pf_list_t idle_servers;
	pf_list_t used_servers;
	pf_list_t tested_servers;
	pf_list_t new_servers;
	/* ParameterStatus values of the first server: what a logging-in client is told. */
	size_t n_welcome;
	char **welcome_names;
	char **welcome_values;
	bool welcome_ready;
	pf_usec_t last_login_failure; /* server_login_retry backs off from here */
	char last_login_error[200];   /* ... and why (told to clients refused meanwhile) */
	/* Position in the database's host list (PgBouncer's per-pool rrcounter): the next host
	 * (load_balance_hosts=round-robin) or the current one (disable); server.c's choice. */
	unsigned host_rr;
	/* Server logins that failed in a row (reset by one that works): with a host list, the
	 * waiting clients wait while another host is left to try (pf_pool_server_failed). */
	unsigned login_fail_streak;
	/* ErrorResponses sent to clients by SQLSTATE class ("23", "42", ...). */
	struct {
		char cls[2];
		uint64_t count;
	} errors[32];
	size_t n_error_classes;
	uint64_t errors_other; /* classes beyond the table */
	/* Clients that waited for a server, by wait time (pf_pool_wait_bounds) and in total. */
	uint64_t wait_buckets[PF_POOL_WAIT_BUCKETS];
	uint64_t wait_count;
	pf_usec_t last_server_gone;
	pf_pool_stats_t stats;
};

/* Adds b's counters to a. */
void pf_pool_stats_add(pf_pool_stats_t *a, const pf_pool_stats_t *b);

/* Counts a client that waited usec for a server in pool's wait histogram. */
void pf_pool_note_wait(pf_pool_t *pool, pf_usec_t usec);

/* Moves a pool-less client between the worker's lists (PF_CL_LOGIN, PF_CL_CANCEL, FREE). */
void pf_pool_set_worker_client_state(pf_worker_t *w, pf_pool_client_t *c, pf_client_state_t st);

/* Effective settings of a pool: per-user over per-database over global. */
int pf_pool_mode(const pf_pool_t *pool);
int pf_pool_size(const pf_pool_t *pool);
pf_usec_t pf_pool_query_timeout(const pf_pool_t *pool);
pf_usec_t pf_pool_idle_transaction_timeout(const pf_pool_t *pool);
/* transaction_timeout: the pool user's [users] value over the global one (0 = off). */
pf_usec_t pf_pool_transaction_timeout(const pf_pool_t *pool);
pf_usec_t pf_pool_client_idle_timeout(const pf_pool_t *pool);

/* Finds or creates the pool for (db, user). Returns NULL on ENOMEM. */
pf_pool_t *pf_pool_get(pf_worker_t *w, pf_database_t *db, pf_user_t *user);

/*
 * A client still logging in (PF_CL_LOGIN, in no pool) borrows a server of pool for a query of
 * the pooler's own on its behalf (an auth_query lookup): it joins pool and, like
 * pf_pool_acquire(), is linked to an idle server (true: ops->linked() has run) or waits in
 * PF_CL_WAITING, subject to query_wait_timeout, while servers open (false). It counts in SHOW
 * POOLS of pool meanwhile, as in PgBouncer.
 */
bool pf_pool_borrow(pf_worker_t *w, pf_pool_t *pool, pf_pool_client_t *c);

/* The borrowing client c has no server any more: back to PF_CL_LOGIN (w's list), in no pool. */
void pf_pool_end_borrow(pf_worker_t *w, pf_pool_client_t *c);

/* Moves a client/server to the list of state (removing it from its current one). */
void pf_pool_set_client_state(pf_pool_client_t *c, pf_client_state_t state);
void pf_pool_set_server_state(pf_pool_server_t *s, pf_server_state_t state);

/* Prepares a client's member (on no list); the client joins with pf_pool_set_client_state(). */
void pf_pool_client_init(pf_pool_client_t *c);

/* A new server connection of pool, started at now: in PF_SV_LOGIN. */
void pf_pool_add_server(pf_pool_t *pool, pf_pool_server_t *s, pf_usec_t now);

/*
 * Called when a logged-in client has a message for a server and has none. Links an idle server
 * (returns true), or queues the client (returns false; it is linked later) and opens servers as
 * the limits allow.
 */
bool pf_pool_acquire(pf_pool_client_t *c);

/*
 * Called when an authenticated client needs the pool's welcome parameters: finishes its login
 * now when they are known (returns true) or queues it and opens a server (returns false).
 */
bool pf_pool_login_client(pf_pool_client_t *c);

/*
 * Unlinks a server from its client; the server goes back to the pool (after a reset if the mode
 * wants one) or is closed when it is not in a clean state.
 */
void pf_pool_release_server(pf_pool_server_t *s);

/*
 * The second half of pf_pool_release_server(), after any cancel in flight is done: reset query
 * in session mode, then back to the pool.
 */
void pf_pool_finish_release(pf_pool_server_t *s);

/* A server finished a reset or a check: hand it to a waiting client or park it. */
void pf_pool_server_ready(pf_pool_server_t *s);

/* A server finished logging in (connect_query included): logins work, the back-off after a
 * failed one ends; then as pf_pool_server_ready(). */
void pf_pool_server_logged_in(pf_pool_server_t *s);

/*
 * A server ends (from its close): unlinks it (its client, if any, stays in the pool's active
 * list without a server) and takes it off the pool's lists.
 */
void pf_pool_server_gone(pf_pool_server_t *s);

/* A client ends: takes it off its list (w's for a client without a pool). It has no server. */
void pf_pool_client_gone(pf_worker_t *w, pf_pool_client_t *c);

/* Undoes a link from the server's side (s is being closed; its client goes on or is closed). */
void pf_pool_unlink(pf_pool_server_t *s);

/* A server failed to connect or log in (the server's ErrorResponse fields or NULL). */
void pf_pool_server_failed(pf_pool_t *pool, const char *sqlstate, const char *message,
                           unsigned host_count);

/* Opens servers while clients wait and limits allow. */
void pf_pool_launch(pf_pool_t *pool);

/* RESUME, reload: gives idle servers to waiting clients, then opens servers for the rest. */
void pf_pool_kick(pf_pool_t *pool);

/* Stores the welcome parameters (n name/value pairs, copied). Returns 0 or -ENOMEM. */
int pf_pool_set_welcome(pf_pool_t *pool, size_t n, char *const *names, char *const *values);

/*
 * RECONNECT / PAUSE: tags every server of db's pools (NULL: every database but the console) to
 * be closed when released, and closes the idle ones now.
 */
void pf_pool_tag_reconnect(pf_worker_t *w, const pf_database_t *db);

/*
 * Periodic maintenance (janitor), at loop time now: connect timeouts, idle servers past
 * server_idle_timeout or server_lifetime, stuck tests, query_wait_timeout, min_pool_size and
 * the reserve pool. (Client-side timeouts of linked clients are the client layer's.)
 */
void pf_pool_maintain(pf_pool_t *pool, pf_usec_t now);

/* Closes every client of list l (the head each time: closing one may close others). */
void pf_pool_close_clients(pf_worker_t *w, pf_list_t *l, pf_close_reason_t reason);

/* KILL, shutdown: closes every client and server of pool p. */
void pf_pool_close_all(pf_pool_t *p, pf_close_reason_t client_reason,
                       pf_server_close_reason_t server_reason);

/*
 * Asserts the invariants above (every member on the list its state names, belonging to pool;
 * links symmetric and only between active members; waiting_login_count right). Debug and
 * sanitizer builds only; a no-op with NDEBUG.
 */
void pf_pool_check(const pf_pool_t *pool);

/* Total servers of the pool in every state. */
size_t pf_pool_server_count(const pf_pool_t *pool);

/*
 * What a client is told while server_login_retry holds logins back: PgBouncer's words ("server
 * login has been failing, try again later (server_login_retry)") and the last failure's reason.
 */
void pf_pool_login_failing_text(const pf_pool_t *pool, char *buf, size_t n);

/* Frees a pool that has no clients and no servers. */
void pf_pool_free(pf_pool_t *pool);

/* Names of the console's virtual database. */
#define PF_ADMIN_DBNAME       "pgfunnel"
#define PF_ADMIN_DBNAME_ALIAS "pgbouncer"

/*
 * Brings the runtime databases in line with the worker's config snapshot: updates existing ones
 * (tagging their servers for reconnect when the connection settings changed), adds new ones and
 * retires removed ones. Returns 0 or -ENOMEM.
 */
PF_MUSTCHECK int pf_database_sync_config(pf_worker_t *w);

/* Periodic: drops auto-created databases idle longer than autodb_idle_timeout. */
void pf_database_maintain(pf_worker_t *w, pf_usec_t now);

/* Frees every database, pool and user (at exit, when no connection is left). */
void pf_database_free_all(pf_worker_t *w);
void pf_user_free_all(pf_worker_t *w);

/* Refreshes every known user's secret from the worker's auth_file (after it was reloaded). */
void pf_user_sync_auth_file(pf_worker_t *w);

/* Effective limits and timeouts of a pool's database (per-database over global). */
pf_usec_t pf_database_server_lifetime(const pf_database_t *db, const pf_config_t *cfg);

/*
 * The runtime database for a client's database name: a configured one, one auto-created from
 * "*", or NULL. The admin console's names (pgfunnel, pgbouncer) give the console database.
 */
pf_database_t *pf_worker_find_database(pf_worker_t *w, const char *name);

/* The user for a login name from auth_file (created on first use), or NULL if unknown. */
pf_user_t *pf_worker_find_user(pf_worker_t *w, const char *name);

/*
 * The user an auth_user name logs in as: the auth_file user of that name, or (not in auth_file)
 * one without a secret, for a server that lets it in without a password, which no client can
 * log in as. Created on first use in worker->users. Returns NULL on ENOMEM.
 */
pf_user_t *pf_worker_auth_user(pf_worker_t *w, const char *name);

/* A database's auth_user, auth_query and auth_dbname: its own, else the global one (NULL). */
const char *pf_database_auth_user(const pf_database_t *db, const pf_config_t *cfg);
const char *pf_database_auth_query(const pf_database_t *db, const pf_config_t *cfg);
const char *pf_database_auth_dbname(const pf_database_t *db, const pf_config_t *cfg);

/*
 * What an auth_query lookup for a client of db found: the user `name` among db's dynamic users
 * (created on first use, with the [users] settings of that name) with `secret` as its secret —
 * a plain password, an md5 or a SCRAM secret; NULL or "" for none, which no password matches.
 * Each lookup sets it anew: a changed secret bumps secret_gen (logins that began with the old
 * one fail) and forgets a ClientKey learnt from the old one. The caller takes a client
 * reference (client_count++) and ends it with pf_user_client_gone(). Returns NULL on ENOMEM.
 */
pf_user_t *pf_database_found_user(pf_database_t *db, const pf_config_t *cfg, const char *name,
                                  const char *secret);

/* A client stops referring to u (its c->user): a dynamic user nothing refers to is freed. */
void pf_user_client_gone(pf_user_t *u);

#endif
