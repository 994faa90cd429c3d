/*
 * worker: one libuv event loop and everything that lives on it — listeners, clients, servers and
 * this worker's share of the pools.
 *
 * The first version runs one worker on the main loop; the interface keeps the loop, the config
 * snapshot and the shutdown sequence per worker so that N workers (each with its own SO_REUSEPORT
 * listener) fit without changing callers.
 */
#ifndef PGFUNNEL_WORKER_H
#define PGFUNNEL_WORKER_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <uv.h>

#include "pgfunnel/auth.h"
#include "pgfunnel/config.h"
#include "pgfunnel/list.h"
#include "pgfunnel/scram.h"
#include "pgfunnel/util.h"

typedef struct pf_worker pf_worker_t;
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
#define PF_CANCEL_BUCKETS       4096

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
	char desc[128];
	char path[108]; /* unix socket file to remove at exit ("" = none) */
} pf_listener_t;

/* A receive buffer waiting on the free list. */
typedef struct pf_free_buffer {
	struct pf_free_buffer *next;
} pf_free_buffer_t;

/*
 * Everything that lives on one loop. Modules of the proxy (client, server, pool, admin) read and
 * change it from the loop's thread only.
 */
struct pf_worker {
	uv_loop_t *loop;
	const pf_config_t *cfg;
	pf_listener_t listeners[PF_WORKER_MAX_LISTENERS];
	size_t nlisteners;
	size_t open_handles; /* listeners + timer */
	uv_timer_t janitor;
	uv_check_t iteration_check; /* counts loop iterations, lifts sbuf_loopcnt throttling */
	uint64_t iteration;
	int link_depth; /* pf_server_link() resuming clients inline, nested this deep */
	pf_list_t throttled_conns;
	pf_usec_t now; /* loop time, refreshed each janitor tick and on demand */
	uint64_t next_id;
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
	pf_list_t cancel_buckets[PF_CANCEL_BUCKETS];
	pf_auth_file_t *auth_file;
	pf_scram_cache_t *scram_cache;
	uint8_t mock_key[32]; /* fake SCRAM secrets for unknown users */
	/* receive buffers of pkt_buf bytes */
	pf_free_buffer_t *free_buffers;
	size_t free_buffer_count;
	size_t buffers_in_use; /* pkt_buf-sized receive buffers held by connections */
	size_t buffer_size;
	bool paused;    /* PAUSE / SIGUSR1: no server is given to a client */
	bool suspended; /* SUSPEND: no socket is read */
	pf_usec_t suspend_start;
	pf_shutdown_mode_t shutdown;
	void (*shutdown_done)(void *);
	void *shutdown_arg;
	bool done_reported;
	bool closing_all; /* pf_worker_check_shutdown() is closing every connection */
	bool in_admin_poll;
	const pf_worker_hooks_t *hooks;
	void *hooks_arg;
	pf_usec_t start_time;
	pf_usec_t start_wall;
	pf_usec_t stats_stamp;      /* loop time of the last stats_period boundary (stats.c) */
	struct pf_metrics *metrics; /* the metrics endpoint, NULL when off (metrics.c) */
};

/*
 * Creates a worker on loop with the config snapshot cfg (borrowed; the caller keeps it alive
 * until pf_worker_set_config() replaces it or the worker is freed). Returns 0 or -errno.
 */
PF_MUSTCHECK int pf_worker_create(uv_loop_t *loop, const pf_config_t *cfg, pf_worker_t **out);

/*
 * Opens the listeners from cfg: TCP on listen_addr:listen_port and the unix socket
 * .s.PGSQL.<port> in unix_socket_dir. When owner_uid is not (uid_t)-1 the socket file is given to
 * that user (pgfunnel drops privileges after binding and must be able to remove it at exit).
 * Returns 0, or -errno with a one-line reason in err.
 */
PF_MUSTCHECK int pf_worker_listen(pf_worker_t *w, uid_t owner_uid, gid_t owner_gid, char *err,
                                  size_t errlen);

/* Human-readable list of what the worker listens on ("127.0.0.1:6432, unix:/tmp/.s.PGSQL.6432"). */
size_t pf_worker_describe_listeners(const pf_worker_t *w, char *buf, size_t n);

/*
 * Replaces the config snapshot (reload). Pools pick up new sizes and timeouts; listeners keep
 * their addresses until restart.
 */
void pf_worker_set_config(pf_worker_t *w, const pf_config_t *cfg);

/*
 * Begins or escalates a shutdown. done(arg) is called once, from the loop, when the worker has
 * closed every handle it owns; the caller then stops the loop and calls pf_worker_free().
 */
void pf_worker_shutdown(pf_worker_t *w, pf_shutdown_mode_t mode, void (*done)(void *), void *arg);

/* The current shutdown mode (PF_SHUTDOWN_NONE while running normally). */
pf_shutdown_mode_t pf_worker_shutdown_mode(const pf_worker_t *w);

/* SIGUSR1 / PAUSE and SIGUSR2 / RESUME for every pool of this worker. */
void pf_worker_pause(pf_worker_t *w);
void pf_worker_resume(pf_worker_t *w);

/* SUSPEND (true): stop reading every client and server socket; RESUME (false) reads again. */
void pf_worker_set_suspended(pf_worker_t *w, bool on);

/* Frees a worker whose shutdown has completed. */
void pf_worker_free(pf_worker_t *w);

/* The loop, the current config, a fresh connection id, the cached loop time in usec. */
static inline uv_loop_t *pf_worker_loop(const pf_worker_t *w)
{
	return w->loop;
}
static inline const pf_config_t *pf_worker_config(const pf_worker_t *w)
{
	return w->cfg;
}
static inline uint64_t pf_worker_next_id(pf_worker_t *w)
{
	return ++w->next_id;
}
pf_usec_t pf_worker_now(pf_worker_t *w);

/*
 * Takes a receive buffer of pkt_buf bytes (from the free list, else malloc); *cap receives its
 * size. Returns NULL on ENOMEM. pf_worker_put_buffer() takes it back (any size: buffers that
 * are not pkt_buf bytes are freed).
 */
uint8_t *pf_worker_get_buffer(pf_worker_t *w, uint32_t *cap);
void pf_worker_put_buffer(pf_worker_t *w, uint8_t *buf, uint32_t cap);

/*
 * The runtime database for a client's database name: a configured one, one auto-created from
 * "*", or NULL. The admin console's names (pgfunnel, pgbouncer) give the console database.
 */
pf_database_t *pf_worker_find_database(pf_worker_t *w, const char *name);

/* The user for a login name from auth_file (created on first use), or NULL if unknown. */
pf_user_t *pf_worker_find_user(pf_worker_t *w, const char *name);

/* Cancel-key registry: add a logged-in client, remove it, find one by its key. */
void pf_worker_add_cancel_key(pf_worker_t *w, pf_client_t *c);
void pf_worker_remove_cancel_key(pf_worker_t *w, pf_client_t *c);
pf_client_t *pf_worker_find_cancel_key(pf_worker_t *w, uint32_t pid, uint32_t key);

/* Called when the last client or server of a shutdown goes away: completes it when possible. */
void pf_worker_check_shutdown(pf_worker_t *w);

/* (Re)reads auth_file; on failure keeps the previous one and logs why. */
void pf_worker_load_auth_file(pf_worker_t *w);

/* Closes every client and server (shutdown, KILL). */
void pf_worker_close_all(pf_worker_t *w);

/* Gives free servers to waiting clients in every pool (after RESUME or a reload). */
void pf_worker_kick_pools(pf_worker_t *w);

/* Registers how clients and servers are named in log lines. */
void pf_worker_setup_logging(void);

/* The wall-clock time (usec since the epoch) of a loop time t from pf_worker_now(). */
pf_usec_t pf_worker_wall_time(const pf_worker_t *w, pf_usec_t t);

#endif
