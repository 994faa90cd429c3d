/*
 * net: what every connection on one event loop shares — the libuv loop, the clock, loop
 * iteration counting for sbuf_loopcnt, connections whose work waits for the next iteration,
 * connection ids and the free list of receive buffers.
 *
 * The worker embeds one pf_net_t; connections only know this part of it, so the network layer
 * does not depend on anything above it.
 */
#ifndef PGFUNNEL_NET_H
#define PGFUNNEL_NET_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "pgfunnel/config.h"
#include "pgfunnel/list.h"
#include "pgfunnel/util.h"

/* A receive buffer waiting on the free list. */
typedef struct pf_free_buffer {
	struct pf_free_buffer *next;
} pf_free_buffer_t;

/* Receive buffers kept for reuse; beyond this they go back to malloc. */
#define PF_NET_FREE_BUFFERS_MAX 1024
/* What pf_net_trim() leaves on each free list, and the least it frees before asking glibc to
 * return the pages (malloc_trim). */
#define PF_NET_FREE_KEEP 8
#define PF_NET_TRIM_MIN  (64 * 1024)

/*
 * A connection's libuv handle. It lives outside the connection, in the loop's slab, so a
 * connection parked while idle (pf_conn_park) gives its 264 bytes back.
 */
typedef union pf_net_handle {
	uv_handle_t handle;
	uv_stream_t stream;
	uv_tcp_t tcp;
	uv_pipe_t pipe;
} pf_net_handle_t;

/* The handle slab: aligned chunks of this many bytes, each a header and slots. */
#define PF_NET_SLAB_CHUNK (16u * 1024u)

typedef struct pf_net_slab_chunk pf_net_slab_chunk_t;

typedef struct pf_net {
	uv_loop_t *loop;
	/* The settings connections read (max_packet_size, sbuf_loopcnt, tcp_*): the worker's
	 * current snapshot, replaced on reload. */
	const pf_config_t *cfg;
	/* Monotonic time in usec (uv_hrtime by default; tests set their own clock). */
	pf_usec_t (*clock)(void);
	pf_usec_t now; /* the last reading of clock */
	/* The reading in now serves the rest of this loop phase (per_iteration: set by the worker,
	 * whose loop marks it stale before and after the poll; see pf_net_clock_stale). */
	bool now_fresh, per_iteration;
	uint64_t iteration;        /* loop iterations (pf_conn_next_iteration) */
	pf_list_t throttled_conns; /* conns throttled or with a deferred resume */
	uint64_t next_id;
	/* receive buffers of buffer_size bytes */
	pf_free_buffer_t *free_buffers;
	size_t free_buffer_count;
	size_t buffers_in_use; /* buffer_size receive buffers held by connections */
	size_t buffer_size;
	/* forward write requests (pf_net_get_wreq): a connection holds one only while its
	 * forward write is in flight, not for its whole life */
	pf_free_buffer_t *free_wreqs;
	size_t free_wreq_count;
	unsigned surplus_ticks; /* pf_net_trim() calls in a row that saw a surplus */
	/* connection handles (pf_net_get_handle): chunks with a free slot, and counts */
	pf_net_slab_chunk_t *slab_partial;
	size_t handles_in_use, handles_free, slab_chunks;
	/* parked connections (conn.c): their sockets wait in this epoll set, which the loop
	 * watches through park_poll (both made at the first park) */
	int park_epfd;
	uv_poll_t *park_poll;
	size_t parked;
	/* conns closed without a handle after a park (nothing to close asynchronously): freed by
	 * reaper from the loop, never inside the pf_conn_close() that ended them */
	pf_list_t dead_conns;
	uv_idle_t *reaper;
} pf_net_t;

/* Initialises n for loop (may be NULL in tests) with the settings of cfg. */
void pf_net_init(pf_net_t *n, uv_loop_t *loop, const pf_config_t *cfg);

/* Frees the buffers and write requests on the free lists, and the handle chunks not in use. */
void pf_net_free(pf_net_t *n);

/*
 * The clock: read once per loop phase when n->per_iteration, as PgBouncer reads its cached
 * time once per event loop iteration (a reading costs more than all the rest of a forwarded
 * message's bookkeeping on some virtual machines), else at every call. The reading is cached in
 * n->now.
 */
static inline pf_usec_t pf_net_now(pf_net_t *n)
{
	if (!n->now_fresh) {
		n->now = n->clock();
		n->now_fresh = n->per_iteration;
	}
	return n->now;
}

/* The loop is about to wait for I/O, or has run what the wait brought: the next pf_net_now()
 * reads the clock again. */
static inline void pf_net_clock_stale(pf_net_t *n)
{
	n->now_fresh = false;
}

/* A fresh connection id (unique for the life of the process). */
static inline uint64_t pf_net_next_id(pf_net_t *n)
{
	return ++n->next_id;
}

/*
 * Takes a receive buffer of buffer_size bytes (from the free list, else malloc); *cap receives
 * its size. Returns NULL on ENOMEM. pf_net_put_buffer() takes it back (any size: buffers that
 * are not buffer_size bytes are freed).
 */
uint8_t *pf_net_get_buffer(pf_net_t *n, uint32_t *cap);
void pf_net_put_buffer(pf_net_t *n, uint8_t *buf, uint32_t cap);

/*
 * Called once a second (the janitor): free-list entries beyond PF_NET_FREE_KEEP that stayed
 * unused for two calls go back to malloc, and glibc returns the freed pages to the system, so a
 * burst's buffers do not stay in the pooler's memory for good.
 */
void pf_net_trim(pf_net_t *n);

/* A write request from the free list (else malloc; NULL on ENOMEM), and back. */
/*
 * A handle slot of the slab (uninitialised), or NULL without memory. Slots come from
 * page-aligned chunks that go back to the system (munmap) when all their slots are free, so
 * handles given back by thousands of idle connections leave no holes between live objects.
 */
pf_net_handle_t *pf_net_get_handle(pf_net_t *n);
/* Gives a slot back (its handle closed: after the uv_close callback). NULL is ignored. */
void pf_net_put_handle(pf_net_t *n, pf_net_handle_t *h);

uv_write_t *pf_net_get_wreq(pf_net_t *n);
void pf_net_put_wreq(pf_net_t *n, uv_write_t *req);

#endif
