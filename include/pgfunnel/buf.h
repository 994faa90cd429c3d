/*
 * buf: a growable byte builder for the messages pgfunnel makes itself (errors, auth requests,
 * SHOW result sets, server startup). It owns its memory and has a sticky `failed` flag:
 * an allocation failure, a size overflow or a misuse sets it, every later write is a no-op,
 * and the caller checks `failed` once when the message (or batch of messages) is complete.
 * Integers are written in network byte order, as the PostgreSQL protocol wants them.
 *
 * Not thread-safe; one builder belongs to one owner. The receive-buffer pool is elsewhere.
 */
#ifndef PGFUNNEL_BUF_H
#define PGFUNNEL_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pgfunnel/util.h"

/*
 * The builder. `data[0..len)` holds the bytes written so far; `cap` is the allocated size.
 * `data` is NULL until the first write. Fields may be read directly; write them only through
 * the functions below.
 */
/* The most a builder holds (4 GiB): protocol messages are limited to 1 GiB anyway. */
#define PF_BUF_MAX ((size_t)1 << 32)

typedef struct pf_buf {
	uint8_t *data;
	size_t len, cap;
	bool failed;
} pf_buf_t;

/* Makes an empty builder that owns nothing yet (no allocation happens here). */
void pf_buf_init(pf_buf_t *b);

/* Frees the memory the builder owns and leaves it as after pf_buf_init(). Safe to call twice. */
void pf_buf_free(pf_buf_t *b);

/*
 * Empties the builder for reuse: len = 0 and `failed` cleared, the allocation kept.
 */
void pf_buf_reset(pf_buf_t *b);

/*
 * Makes room for at least n more bytes beyond len. Returns 0, or -ENOMEM (allocation failed or
 * len + n overflows) after setting `failed`; returns -ENOMEM at once when already failed.
 * Writers call this themselves; call it directly only to avoid repeated growth.
 */
int pf_buf_reserve(pf_buf_t *b, size_t n);

/* Appends one byte. */
void pf_buf_put_u8(pf_buf_t *b, uint8_t v);

/* Appends a 16-bit unsigned integer in network byte order. */
void pf_buf_put_u16(pf_buf_t *b, uint16_t v);

/* Appends a 32-bit unsigned integer in network byte order. */
void pf_buf_put_u32(pf_buf_t *b, uint32_t v);

/* Appends a 32-bit signed integer in network byte order (two's complement, e.g. -1 = ff ff ff ff).
 */
void pf_buf_put_i32(pf_buf_t *b, int32_t v);

/* Appends n bytes copied from data (borrowed; data may be NULL only when n == 0). */
void pf_buf_put_bytes(pf_buf_t *b, const void *data, size_t n);

/*
 * Appends the string s AND its terminating NUL (the protocol's String type). s NULL is a misuse:
 * it sets `failed`.
 */
void pf_buf_put_str(pf_buf_t *b, const char *s);

/*
 * Overwrites 4 bytes at offset off (which must lie inside [0, len - 4]) with v in network order;
 * an offset out of range sets `failed`. Used for length fields known only at the end.
 */
void pf_buf_set_u32(pf_buf_t *b, size_t off, uint32_t v);

/*
 * Starts a typed protocol message: appends the type byte and a placeholder Int32 length, and
 * returns the offset of the type byte, to be passed to pf_buf_msg_end() once the payload is
 * written. Messages may follow each other in one builder; they must not be nested.
 */
size_t pf_buf_msg_begin(pf_buf_t *b, uint8_t type);

/*
 * Finishes the message begun at `start`: patches its Int32 length, which counts itself and the
 * payload but not the type byte. A start that is not a begun message, or a message longer than
 * INT32_MAX, sets `failed`. No-op when already failed.
 */
void pf_buf_msg_end(pf_buf_t *b, size_t start);

/*
 * Hands the bytes to the caller, who must free() them; *len_out gets their count. The builder is
 * left empty (as after pf_buf_init). Returns NULL (and frees the memory) when `failed` is set,
 * and NULL with *len_out = 0 when nothing was written.
 */
PF_MUSTCHECK uint8_t *pf_buf_detach(pf_buf_t *b, size_t *len_out);

#endif
