/*
 * net: the per-loop context every connection shares (see include/pgfunnel/net.h).
 */
#include "pfbuild.h"

#include <stdlib.h>
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
	pf_net_now(n);
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
