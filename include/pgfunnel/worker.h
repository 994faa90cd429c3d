/*
 * worker: the process layer of one event loop — creates the runtime state (runtime.h), opens
 * the listeners and accepts on them, runs the janitor, and carries out reloads, PAUSE/RESUME,
 * SUSPEND and the shutdown sequence. It registers the callbacks through which the lower layers
 * report news upwards (pf_worker_ops_t, pf_pool_ops_t) and is the only module that knows them
 * all.
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

#include "pgfunnel/config.h"
#include "pgfunnel/runtime.h"
#include "pgfunnel/util.h"

/*
 * Creates a worker on loop with the config snapshot cfg (the worker takes its own reference,
 * dropped when pf_worker_set_config() replaces it or the worker is freed). Returns 0 or -errno.
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
 * Installs the TLS contexts for new client and server connections (either may be NULL: off),
 * taking over the caller's references; connections already using the old ones keep them. When
 * server_changed, servers are replaced as they are released (PgBouncer reconnects after a
 * change of TLS settings), so no server keeps TLS settings that are no longer configured.
 */
void pf_worker_set_tls(pf_worker_t *w, struct pf_tls_ctx *accept, struct pf_tls_ctx *connect,
                       bool server_changed);

/* Installs the HBA and ident-map rules for new logins (either may be NULL), taking them over;
 * the old ones are freed (no login keeps a pointer into them past its start_auth). */
void pf_worker_set_auth_rules(pf_worker_t *w, struct pf_hba *hba, struct pf_ident *ident);

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

/* Called when the last client or server of a shutdown goes away: completes it when possible. */
void pf_worker_check_shutdown(pf_worker_t *w);

/* SHUTDOWN WAIT_FOR_CLIENTS: closes every client that is between transactions. */
void pf_worker_close_idle_clients(pf_worker_t *w);

/* (Re)reads auth_file; on failure keeps the previous one and logs why. */
void pf_worker_load_auth_file(pf_worker_t *w);

/* Closes every client and server (shutdown, KILL). */
void pf_worker_close_all(pf_worker_t *w);

/* Gives free servers to waiting clients in every pool (after RESUME or a reload). */
void pf_worker_kick_pools(pf_worker_t *w);

/* Registers how clients and servers are named in log lines. */
void pf_worker_setup_logging(void);

#endif
