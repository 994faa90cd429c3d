/*
 * net: the per-loop context every connection shares (see include/pgfunnel/net.h).
 */
#include "pfbuild.h"

#include <assert.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "pgfunnel/net.h"

static pf_usec_t hrtime_usec(void)
{
	return (pf_usec_t)(uv_hrtime() / 1000);
}

void pf_net_init(pf_net_t *n, uv_loop_t *loop, const pf_config_t *cfg)
{
	n->loop = loop;
	n->cfg = cfg;
	n->clock = hrtime_usec;
	n->buffer_size = (size_t)(cfg->pkt_buf > 0 ? cfg->pkt_buf : 4096);
	pf_list_init(&n->throttled_conns);
	n->park_epfd = -1;
	pf_list_init(&n->dead_conns);
	pf_net_now(n);
}

/* ---- the handle slab ---- */

struct pf_net_slab_chunk {
	pf_net_slab_chunk_t *next, *prev; /* in slab_partial while a slot is free */
	pf_free_buffer_t *free;           /* slots given back */
	uint32_t used;                    /* slots handed out */
	uint32_t fresh;                   /* slots from this index on were never handed out */
};

#define SLAB_HEADER ((sizeof(pf_net_slab_chunk_t) + 15u) & ~(size_t)15u)
#define SLAB_SLOT   ((sizeof(pf_net_handle_t) + 7u) & ~(size_t)7u)
#define SLAB_SLOTS  ((uint32_t)((PF_NET_SLAB_CHUNK - SLAB_HEADER) / SLAB_SLOT))
/* Empty chunks pf_net_trim() keeps (when no other chunk has room), so a connection coming and
 * going does not map and unmap. */
#define SLAB_KEEP_EMPTY 1

static pf_net_slab_chunk_t *chunk_of(const void *slot)
{
	return (pf_net_slab_chunk_t *)((uintptr_t)slot & ~(uintptr_t)(PF_NET_SLAB_CHUNK - 1));
}

/* A PF_NET_SLAB_CHUNK-aligned chunk: twice the size mapped, the misaligned ends unmapped. */
static pf_net_slab_chunk_t *chunk_new(void)
{
	size_t len = 2 * (size_t)PF_NET_SLAB_CHUNK;
	uint8_t *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uintptr_t at;
	size_t head;

	if (p == MAP_FAILED)
		return NULL;
	at = ((uintptr_t)p + PF_NET_SLAB_CHUNK - 1) & ~(uintptr_t)(PF_NET_SLAB_CHUNK - 1);
	head = at - (uintptr_t)p;
	if (head)
		munmap(p, head);
	if (len - head > PF_NET_SLAB_CHUNK)
		munmap((uint8_t *)at + PF_NET_SLAB_CHUNK, len - head - PF_NET_SLAB_CHUNK);
	/* Anonymous pages are zero: the header starts empty. */
	return (pf_net_slab_chunk_t *)at;
}

static void chunk_link(pf_net_t *n, pf_net_slab_chunk_t *k)
{
	k->prev = NULL;
	k->next = n->slab_partial;
	if (k->next)
		k->next->prev = k;
	n->slab_partial = k;
}

static void chunk_unlink(pf_net_t *n, pf_net_slab_chunk_t *k)
{
	if (k->prev)
		k->prev->next = k->next;
	else
		n->slab_partial = k->next;
	if (k->next)
		k->next->prev = k->prev;
	k->next = k->prev = NULL;
}

pf_net_handle_t *pf_net_get_handle(pf_net_t *n)
{
	pf_net_slab_chunk_t *k = n->slab_partial;
	void *slot;

	if (!k) {
		k = chunk_new();
		if (!k)
			return NULL;
		chunk_link(n, k);
		n->slab_chunks++;
		n->handles_free += SLAB_SLOTS;
	}
	assert(k->used < SLAB_SLOTS);
	if (k->free) {
		slot = k->free;
		k->free = k->free->next;
	} else {
		assert(k->fresh < SLAB_SLOTS);
		slot = (uint8_t *)k + SLAB_HEADER + (size_t)k->fresh++ * SLAB_SLOT;
	}
	k->used++;
	n->handles_free--;
	n->handles_in_use++;
	if (k->used == SLAB_SLOTS)
		chunk_unlink(n, k);
	return slot;
}

void pf_net_put_handle(pf_net_t *n, pf_net_handle_t *h)
{
	pf_net_slab_chunk_t *k;
	pf_free_buffer_t *b = (pf_free_buffer_t *)(void *)h;

	if (!h)
		return;
	k = chunk_of(h);
	assert(k->used > 0 && n->handles_in_use > 0);
	if (k->used == SLAB_SLOTS)
		chunk_link(n, k);
	b->next = k->free;
	k->free = b;
	k->used--;
	n->handles_in_use--;
	n->handles_free++;
}

/* Unmaps the empty chunks beyond keep; none is kept while a chunk in use has a free slot. */
static void slab_release(pf_net_t *n, unsigned keep)
{
	pf_net_slab_chunk_t *k = n->slab_partial, *next;
	unsigned kept = 0;

	for (; k && keep > 0; k = k->next) {
		if (k->used > 0)
			keep = 0;
	}
	for (k = n->slab_partial; k; k = next) {
		next = k->next;
		if (k->used > 0)
			continue;
		if (kept < keep) {
			kept++;
			continue;
		}
		chunk_unlink(n, k);
		n->slab_chunks--;
		n->handles_free -= SLAB_SLOTS;
		munmap(k, PF_NET_SLAB_CHUNK);
	}
}

void pf_net_free(pf_net_t *n)
{
	while (n->free_buffers) {
		pf_free_buffer_t *b = n->free_buffers;

		n->free_buffers = b->next;
		free(b);
	}
	n->free_buffer_count = 0;
	while (n->free_wreqs) {
		pf_free_buffer_t *b = n->free_wreqs;

		n->free_wreqs = b->next;
		free(b);
	}
	n->free_wreq_count = 0;
	slab_release(n, 0);
}

uv_write_t *pf_net_get_wreq(pf_net_t *n)
{
	pf_free_buffer_t *b = n->free_wreqs;

	if (b) {
		n->free_wreqs = b->next;
		n->free_wreq_count--;
		return (uv_write_t *)(void *)b;
	}
	return malloc(sizeof(uv_write_t));
}

void pf_net_put_wreq(pf_net_t *n, uv_write_t *req)
{
	pf_free_buffer_t *b = (pf_free_buffer_t *)(void *)req;

	if (!req)
		return;
	if (n->free_wreq_count >= PF_NET_FREE_BUFFERS_MAX) {
		free(req);
		return;
	}
	b->next = n->free_wreqs;
	n->free_wreqs = b;
	n->free_wreq_count++;
}

uint8_t *pf_net_get_buffer(pf_net_t *n, uint32_t *cap)
{
	pf_free_buffer_t *b = n->free_buffers;

	*cap = (uint32_t)n->buffer_size;
	n->buffers_in_use++;
	if (b) {
		n->free_buffers = b->next;
		n->free_buffer_count--;
		return (uint8_t *)b;
	}
	return malloc(n->buffer_size);
}

void pf_net_put_buffer(pf_net_t *n, uint8_t *buf, uint32_t cap)
{
	pf_free_buffer_t *b = (pf_free_buffer_t *)buf;

	if (!buf)
		return;
	if (cap == n->buffer_size && n->buffers_in_use > 0)
		n->buffers_in_use--;
	if (cap != n->buffer_size || n->free_buffer_count >= PF_NET_FREE_BUFFERS_MAX) {
		free(buf);
		return;
	}
	b->next = n->free_buffers;
	n->free_buffers = b;
	n->free_buffer_count++;
}

/* Frees entries of a free list beyond keep; returns how many bytes went back to malloc. */
static size_t free_beyond(pf_free_buffer_t **list, size_t *count, size_t keep, size_t each)
{
	size_t freed = 0;

	while (*count > keep && *list) {
		pf_free_buffer_t *b = *list;

		*list = b->next;
		(*count)--;
		free(b);
		freed += each;
	}
	return freed;
}

void pf_net_trim(pf_net_t *n)
{
	size_t freed;

	slab_release(n, SLAB_KEEP_EMPTY);
	/* A surplus seen at two ticks in a row is not the working set of the load that runs:
	 * it was left by a burst (thousands of clients answered at once). */
	if (n->free_buffer_count <= PF_NET_FREE_KEEP && n->free_wreq_count <= PF_NET_FREE_KEEP) {
		n->surplus_ticks = 0;
		return;
	}
	if (++n->surplus_ticks < 2)
		return;
	n->surplus_ticks = 0;
	freed = free_beyond(&n->free_buffers, &n->free_buffer_count, PF_NET_FREE_KEEP,
	                    n->buffer_size);
	freed += free_beyond(&n->free_wreqs, &n->free_wreq_count, PF_NET_FREE_KEEP,
	                     sizeof(uv_write_t));
#ifdef __GLIBC__
	/* Freed chunks between live connections stay in the process until glibc is told to
	 * hand their pages back. */
	if (freed >= PF_NET_TRIM_MIN)
		malloc_trim(0);
#else
	(void)freed;
#endif
}
