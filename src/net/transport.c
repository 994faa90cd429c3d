/*
 * transport: the plain socket transport (see include/pgfunnel/transport.h).
 */
#include "pfbuild.h"

#include "pgfunnel/transport.h"

static int plain_read_start(pf_transport_t *t, uv_stream_t *s, uv_alloc_cb alloc, uv_read_cb read)
{
	(void)t;
	return uv_read_start(s, alloc, read);
}

static int plain_read_stop(pf_transport_t *t, uv_stream_t *s)
{
	(void)t;
	return uv_read_stop(s);
}

static int plain_try_write(pf_transport_t *t, uv_stream_t *s, const uv_buf_t *bufs, unsigned n)
{
	(void)t;
	return uv_try_write(s, bufs, n);
}

static int plain_write(pf_transport_t *t, uv_write_t *req, uv_stream_t *s, const uv_buf_t *bufs,
                       unsigned n, uv_write_cb cb)
{
	(void)t;
	return uv_write(req, s, bufs, n, cb);
}

static size_t plain_queued(const pf_transport_t *t, const uv_stream_t *s)
{
	(void)t;
	return s->write_queue_size;
}

static int plain_shutdown(pf_transport_t *t, uv_shutdown_t *req, uv_stream_t *s, uv_shutdown_cb cb)
{
	(void)t;
	return uv_shutdown(req, s, cb);
}

const pf_transport_ops_t pf_transport_plain = {
        .name = "plain",
        .read_start = plain_read_start,
        .read_stop = plain_read_stop,
        .try_write = plain_try_write,
        .write = plain_write,
        .queued = plain_queued,
        .shutdown = plain_shutdown,
        .release = NULL,
};
