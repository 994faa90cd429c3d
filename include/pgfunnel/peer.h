/*
 * peer: forwarding CancelRequests to the other processes of a peered group (peer_id, [peers]),
 * as PgBouncer does. A CancelRequest whose key carries another peer's id (cancelkey.h) is sent
 * on to that peer's host/port with its TTL one less; at most pool_size forwards to a peer are in
 * flight at once, the others wait in a bounded queue. Never blocks: every connection is a libuv
 * one on the worker's loop. The state is per worker (pf_worker_t.peers).
 */
#ifndef PGFUNNEL_PEER_H
#define PGFUNNEL_PEER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pgfunnel/runtime.h"

/*
 * A CancelRequest (pid, key) arrived whose key names another peer (w->cfg->peer_id > 0 and
 * pf_cancel_key_peer(pid) differs from it). Forwards it, queues it, or drops it with a log line
 * (TTL exhausted, unknown peer, queue full). logobj describes the requester in the log (or NULL).
 */
void pf_peer_forward_cancel(pf_worker_t *w, const void *logobj, uint32_t pid, uint32_t key);

/* One peer pool (a peer forwarded to since start) for SHOW PEER_POOLS. */
typedef struct pf_peer_pool_stats {
	int peer_id;
	int waiting;    /* queued for room under pool_size */
	int connecting; /* in flight, the connection not yet up */
	int active;     /* in flight, sent, waiting for the peer to close */
} pf_peer_pool_stats_t;

/* Fills *out with the i-th peer pool; false past the last. */
bool pf_peer_pool_stats(const pf_worker_t *w, size_t i, pf_peer_pool_stats_t *out);

/* Janitor: drops queued forwards and connections older than cancel_wait_timeout. */
void pf_peer_expire(pf_worker_t *w, pf_usec_t now);

/* Shutdown: drops every queued forward and closes every forwarding connection. */
void pf_peer_close_all(pf_worker_t *w);

/* Frees the per-worker state (after pf_peer_close_all and the loop's last run). */
void pf_peer_free(pf_worker_t *w);

#endif
