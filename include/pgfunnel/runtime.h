/*
 * runtime: the state one event loop owns — its network context, config snapshot, databases,
 * users and pools, login and cancel bookkeeping, counters — and the callbacks through which
 * lower layers report to the process layer. Data and small inline helpers only: the modules
 * that act on it sit above (pool, server, client, console, worker).
 *
 * Everything here is read and changed from the loop's thread only.
 */
#ifndef PGFUNNEL_RUNTIME_H
#define PGFUNNEL_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "pgfunnel/auth.h"
#include "pgfunnel/cancelkey.h"
#include "pgfunnel/config.h"
#include "pgfunnel/conn.h"
#include "pgfunnel/list.h"
#include "pgfunnel/net.h"
#include "pgfunnel/prepared.h"
#include "pgfunnel/scram.h"
#include "pgfunnel/util.h"

typedef struct pf_worker pf_worker_t;
typedef struct pf_peers pf_peers_t; /* peer.c */
typedef struct pf_client pf_client_t;
typedef struct pf_database pf_database_t;
typedef struct pf_user pf_user_t;

/* How a shutdown proceeds (PgBouncer 1.23+ semantics; see pgbouncer-compat.md, Signals). */
typedef enum pf_shutdown_mode {
	PF_SHUTDOWN_NONE = 0,
	PF_SHUTDOWN_WAIT_FOR_CLIENTS, /* SIGTERM: stop accepting, exit when no client is left */
	PF_SHUTDOWN_WAIT_FOR_SERVERS, /* SIGINT: stop accepting, exit when every server is released
	                               */
	PF_SHUTDOWN_IMMEDIATE,        /* SIGQUIT or a second SIGTERM/SIGINT */
} pf_shutdown_mode_t;

#define PF_WORKER_MAX_LISTENERS 16

/*
 * What the console asks of the process (main owns the config snapshot and the shutdown):
 * reload the config file (0 or -errno), begin a shutdown, install a changed copy of the config
 * (SET; takes ownership of cfg on success, returns 0 or -errno).
 */
typedef struct pf_worker_hooks {
	int (*reload)(void *arg);
	void (*shutdown)(void *arg, pf_shutdown_mode_t mode);
	int (*set_config)(void *arg, pf_config_t *cfg);
} pf_worker_hooks_t;

/*
 * News the lower layers send up to the process layer, and the console's control requests
 * (worker.c registers them): the callee decides what follows.
 */
typedef struct pf_worker_ops {
	/* A client or server went away, or a server went back to its pool: a shutdown or a
	 * console command that waits (PAUSE, WAIT_CLOSE) may complete now. */
	void (*settled)(pf_worker_t *w);
	/* Gives free servers to waiting clients in every pool (RESUME). */
	void (*kick_pools)(pf_worker_t *w);
	/* SUSPEND (true) / RESUME (false) of every socket. */
	void (*set_suspended)(pf_worker_t *w, bool on);
	/* A client logged in to the console; a message from a console client. */
	void (*console_login)(pf_client_t *c);
	pf_pkt_action_t (*console_packet)(pf_client_t *c, const pf_proto_hdr_t *hdr,
	                                  const uint8_t *pkt, size_t avail);
	/* A logging-in client's user must be looked up with auth_query (authquery.h). */
	void (*auth_query)(pf_client_t *c);
} pf_worker_ops_t;

/* A listening socket. */
typedef struct pf_listener {
	union {
		uv_handle_t handle;
		uv_stream_t stream;
		uv_tcp_t tcp;
		uv_pipe_t pipe;
	} h;
	pf_worker_t *worker;
	bool is_unix;
	bool open;
	bool held; /* SUSPEND: libuv holds an accepted connection of ours (RESUME takes it) */
	char desc[128];
	char path[108]; /* unix socket file to remove at exit ("" = none) */
} pf_listener_t;

/*
 * Everything that lives on one loop. Modules of the proxy (client, server, pool, admin) read and
 * change it from the loop's thread only.
 */
struct pf_worker {
	pf_net_t net; /* the loop, clock, buffers: all that connections see */
	const pf_config_t *cfg;
	const pf_worker_ops_t *ops;         /* news for the process layer (worker.c) */
	const struct pf_pool_ops *pool_ops; /* what the pool asks of clients and servers */
	pf_listener_t listeners[PF_WORKER_MAX_LISTENERS];
	size_t nlisteners;
	size_t open_handles; /* listeners, the janitor, the check and prepare handles */
	uv_timer_t janitor;
	uv_check_t iteration_check;     /* counts loop iterations, lifts sbuf_loopcnt throttling */
	uv_prepare_t iteration_prepare; /* before the poll: the clock is read again after it */
	int link_depth; /* links resuming clients inline, nested this deep (session.c) */
	/* login_clients: clients in PF_CL_LOGIN; cancel_clients: PF_CL_CANCEL. */
	pf_list_t login_clients;
	pf_list_t cancel_conns; /* CancelRequests on their way to Postgres, oldest first */
	pf_list_t cancel_clients;
	pf_list_t databases;
	pf_list_t users; /* from auth_file, created on first use */
	pf_list_t pools;
	size_t client_count; /* every client connection, for max_client_conn */
	/* Connections ended, by pf_close_reason_t / pf_server_close_reason_t (metrics). */
	uint64_t client_closes[32];
	uint64_t server_closes[32];
	pf_cancel_table_t cancel_keys;
	pf_peers_t *peers; /* cancel forwarding to [peers] (peer.c); NULL until first used */
	pf_auth_file_t *auth_file;
	pf_scram_cache_t *scram_cache;
	uint8_t mock_key[32];             /* fake SCRAM secrets for unknown users */
	pf_prepared_registry_t *prepared; /* every tracked prepared statement (prepared.h) */
	bool paused;                      /* PAUSE / SIGUSR1: no server is given to a client */
	bool suspended;                   /* SUSPEND: no socket is read */
	/* The host name cache (dns.h), made on first use (server.c). */
	struct pf_dns *dns;
	pf_usec_t suspend_start;
	pf_shutdown_mode_t shutdown;
	/* WAIT_FOR_CLIENTS: clients whose connection id is at most this were accepted before
	 * the listeners closed (or drained from their queues): they may still log in. */
	uint64_t shutdown_last_id;
	void (*shutdown_done)(void *);
	void *shutdown_arg;
	bool done_reported;
	bool closing_all; /* pf_worker_check_shutdown() is closing every connection */
	bool in_admin_poll;
	bool admin_waiting; /* a console command may wait (pf_admin_poll walks only then) */
	bool settle_due;    /* ops->settled() was called: checked after this iteration's I/O */
	const pf_worker_hooks_t *hooks;
	void *hooks_arg;
	pf_usec_t start_time;
	pf_usec_t start_wall;
	pf_usec_t stats_stamp;      /* loop time of the last stats_period boundary (stats.c) */
	struct pf_metrics *metrics; /* the metrics endpoint, NULL when off (metrics.c) */
	/* TLS toward clients and toward servers (tls.h), NULL when off; built by the process
	 * layer from the config snapshot (pf_worker_set_tls). */
	struct pf_tls_ctx *tls_accept;
	struct pf_tls_ctx *tls_connect;
	/* auth_hba_file (auth_type=hba) and auth_ident_file rules (hba.h), NULL when unused;
	 * loaded by the process layer (pf_worker_set_auth_rules). */
	struct pf_hba *hba;
	struct pf_ident *ident;
};

/* The worker a connection lives on. */
static inline pf_worker_t *pf_conn_worker(const pf_conn_t *c)
{
	return PF_CONTAINER_OF(c->net, pf_worker_t, net);
}

/* The current config snapshot. */
static inline const pf_config_t *pf_worker_config(const pf_worker_t *w)
{
	return w->cfg;
}

/* The monotonic clock in usec (also cached in w->net.now). */
static inline pf_usec_t pf_worker_now(pf_worker_t *w)
{
	return pf_net_now(&w->net);
}

/* The wall-clock time (usec since the epoch) of a loop time t from pf_worker_now(). */
static inline pf_usec_t pf_worker_wall_time(const pf_worker_t *w, pf_usec_t t)
{
	return w->start_wall + (t - w->start_time);
}

/* Tells the process layer that a client or server went away or a server was released. */
static inline void pf_worker_settled(pf_worker_t *w)
{
	if (w->ops && w->ops->settled)
		w->ops->settled(w);
}

#endif
