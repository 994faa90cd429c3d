/*
 * transport: how a connection's bytes cross its socket. Every read and write of a conn goes
 * through its transport, so a transport that transforms bytes (TLS over memory BIOs) fits in
 * without touching the client, server or pool code.
 *
 * The plain transport is the socket itself: reads land straight in the conn's receive buffer
 * and forwarded regions are written from it (zero-copy), with libuv's write queue giving
 * backpressure. A transforming transport keeps its own state (t->state), reads the socket into
 * its own buffer and hands the conn's read callback plaintext in the buffer the conn's alloc
 * callback gave; it writes what it made of the conn's bytes and runs the conn's write callback
 * once the conn's buffers are no longer needed. Forwarded bytes always go out through the
 * transport of the connection they are written to.
 */
#ifndef PGFUNNEL_TRANSPORT_H
#define PGFUNNEL_TRANSPORT_H

#include <stddef.h>
#include <uv.h>

typedef struct pf_transport pf_transport_t;

typedef struct pf_transport_ops {
	const char *name; /* "plain" (SHOW CLIENTS/SERVERS tls column reads it) */
	/* Starts or stops delivering bytes, with libuv's contract for alloc and read. */
	int (*read_start)(pf_transport_t *t, uv_stream_t *s, uv_alloc_cb alloc, uv_read_cb read);
	int (*read_stop)(pf_transport_t *t, uv_stream_t *s);
	/* Writes what can go now: the number of bytes taken, UV_EAGAIN when none, or an error. */
	int (*try_write)(pf_transport_t *t, uv_stream_t *s, const uv_buf_t *bufs, unsigned n);
	/* Queues bufs, borrowed until cb(req, status) runs. 0 or a libuv error. */
	int (*write)(pf_transport_t *t, uv_write_t *req, uv_stream_t *s, const uv_buf_t *bufs,
	             unsigned n, uv_write_cb cb);
	/* Bytes accepted by write() and not yet handed to the kernel. */
	size_t (*queued)(const pf_transport_t *t, const uv_stream_t *s);
	/* Ends the write side once everything queued is out (TLS: after close_notify). */
	int (*shutdown)(pf_transport_t *t, uv_shutdown_t *req, uv_stream_t *s, uv_shutdown_cb cb);
	/* Frees t->state (the handle is closed). May be NULL. */
	void (*release)(pf_transport_t *t);
} pf_transport_ops_t;

struct pf_transport {
	const pf_transport_ops_t *ops;
	void *state; /* the transport's own, NULL for plain */
};

/* The socket itself. */
extern const pf_transport_ops_t pf_transport_plain;

#endif
