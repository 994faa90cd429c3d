#include "pfbuild.h"
/*
 * buf: growable byte builder with a sticky failure flag (see include/pgfunnel/buf.h).
 *
 * Invariants: len <= cap; data is NULL iff cap == 0; once `failed` is set nothing is appended
 * until pf_buf_reset(). Growth doubles the capacity (from PF_BUF_MIN_CAP), so appending n bytes
 * one at a time costs O(n). Callers: proto builders, admin result sets, auth exchanges.
 */

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pgfunnel/buf.h"

#define PF_BUF_MIN_CAP 64

void pf_buf_init(pf_buf_t *b)
{
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
	b->failed = false;
}

void pf_buf_free(pf_buf_t *b)
{
	free(b->data);
	pf_buf_init(b);
}

void pf_buf_reset(pf_buf_t *b)
{
	b->len = 0;
	b->failed = false;
}

int pf_buf_reserve(pf_buf_t *b, size_t n)
{
	size_t need, cap;
	uint8_t *p;

	if (b->failed)
		return -ENOMEM;
	if (n <= b->cap - b->len)
		return 0;
	/* Nothing pgfunnel builds comes near this; a larger request is a bug or an overflow. */
	if (n > PF_BUF_MAX - b->len)
		goto fail;
	need = b->len + n;
	cap = b->cap ? b->cap : PF_BUF_MIN_CAP;
	while (cap < need) {
		if (cap > PF_BUF_MAX / 2) {
			cap = need;
			break;
		}
		cap *= 2;
	}
	p = realloc(b->data, cap);
	if (!p)
		goto fail;
	b->data = p;
	b->cap = cap;
	return 0;
fail:
	b->failed = true;
	return -ENOMEM;
}

void pf_buf_put_u8(pf_buf_t *b, uint8_t v)
{
	if (pf_buf_reserve(b, 1) < 0)
		return;
	b->data[b->len++] = v;
}

void pf_buf_put_u16(pf_buf_t *b, uint16_t v)
{
	if (pf_buf_reserve(b, 2) < 0)
		return;
	b->data[b->len++] = (uint8_t)(v >> 8);
	b->data[b->len++] = (uint8_t)v;
}

static void put_u32_at(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

void pf_buf_put_u32(pf_buf_t *b, uint32_t v)
{
	if (pf_buf_reserve(b, 4) < 0)
		return;
	put_u32_at(b->data + b->len, v);
	b->len += 4;
}

void pf_buf_put_i32(pf_buf_t *b, int32_t v)
{
	/* Conversion to unsigned is defined modulo 2^32: exactly the two's complement bits. */
	pf_buf_put_u32(b, (uint32_t)v);
}

void pf_buf_put_bytes(pf_buf_t *b, const void *data, size_t n)
{
	if (n == 0)
		return;
	if (!data) {
		b->failed = true;
		return;
	}
	if (pf_buf_reserve(b, n) < 0)
		return;
	memcpy(b->data + b->len, data, n);
	b->len += n;
}

void pf_buf_put_str(pf_buf_t *b, const char *s)
{
	if (!s) {
		b->failed = true;
		return;
	}
	pf_buf_put_bytes(b, s, strlen(s) + 1);
}

void pf_buf_set_u32(pf_buf_t *b, size_t off, uint32_t v)
{
	if (b->failed)
		return;
	if (b->len < 4 || off > b->len - 4) {
		b->failed = true;
		return;
	}
	put_u32_at(b->data + off, v);
}

size_t pf_buf_msg_begin(pf_buf_t *b, uint8_t type)
{
	size_t start = b->len;

	pf_buf_put_u8(b, type);
	pf_buf_put_u32(b, 0);
	return start;
}

void pf_buf_msg_end(pf_buf_t *b, size_t start)
{
	size_t n;

	if (b->failed)
		return;
	if (start > b->len || b->len - start < 5) {
		b->failed = true;
		return;
	}
	/* The length counts itself and the payload, not the type byte. */
	n = b->len - start - 1;
	if (n > INT32_MAX) {
		b->failed = true;
		return;
	}
	put_u32_at(b->data + start + 1, (uint32_t)n);
}

uint8_t *pf_buf_detach(pf_buf_t *b, size_t *len_out)
{
	uint8_t *p = b->data;

	*len_out = 0;
	if (b->failed || b->len == 0) {
		pf_buf_free(b);
		return NULL;
	}
	*len_out = b->len;
	pf_buf_init(b);
	return p;
}
