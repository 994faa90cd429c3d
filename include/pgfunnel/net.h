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
#define PF_NET_FREE_KEEP 16
#define PF_NET_TRIM_MIN  (64 * 1024)

typedef struct pf_net {
	uv_loop_t *loop;
	/* The settings connections read (max_packet_size, sbuf_loopcnt, tcp_*): the worker's
	 * current snapshot, replaced on reload. */
	const pf_config_t *cfg;
	/* Monotonic time in usec (uv_hrtime by default; tests set their own clock). */
	pf_usec_t (*clock)(void);
	pf_usec_t now;             /* the last reading of clock */
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
} pf_net_t;

/* Initialises n for loop (may be NULL in tests) with the settings of cfg. */
void pf_net_init(pf_net_t *n, uv_loop_t *loop, const pf_config_t *cfg);

/* Frees the buffers and write requests on the free lists. */
void pf_net_free(pf_net_t *n);

/* Reads the clock (and caches the reading in n->now). */
static inline pf_usec_t pf_net_now(pf_net_t *n)
{
	n->now = n->clock();
	return n->now;
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
uv_write_t *pf_net_get_wreq(pf_net_t *n);
void pf_net_put_wreq(pf_net_t *n, uv_write_t *req);

#endif
