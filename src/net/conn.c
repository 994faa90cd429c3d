/*
 * conn: socket I/O shared by clients and servers — the receive buffer, the message walk, the
 * coalesced forwarding with backpressure, our own writes, and the close sequence.
 *
 * Invariants:
 * - rbuf is NULL or holds rcap bytes; unprocessed bytes are [rpos, rend); while fwd_pending a
 *   write borrows [fwd_start, rpos) and neither reading nor compaction happens.
 * - A conn is freed (ops->on_free) only when its handle is closed and no write borrows rbuf.
 * - Nothing but pf_conn_close() and pf_conn_park() calls uv_close() on a connection handle; a
 *   parked conn has no handle (h NULL, handle_open false) and its socket in net->park_epfd,
 *   and nothing of it is buffered, queued or in flight.
 * - Reading goes on while processing is held back (paused by the owner, or a forward write
 *   pending) as long as the buffer has room, so a peer's EOF or error is seen in every state;
 *   only processing waits. A read never grows the buffer beyond pkt_buf (a client's small
 *   first buffer becomes a full one; only holding a whole message grows further, up to
 *   hold_max), and bytes read while paused are not processed until resumed. One exception:
 *   while output of ours waits on the conn's own socket, a full buffer grows (up to
 *   PF_CONN_DRAIN_MAX) so that the socket is drained (must_drain).
 * - Our own output that the socket did not take is bounded: past PF_CONN_OUT_MAX queued bytes
 *   the conn neither reads nor processes until the peer has taken them (out_blocked).
 */
#include "pfbuild.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/un.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "pgfunnel/conn.h"
#include "pgfunnel/log.h"
#include "pgfunnel/net.h"

/* What a conn may queue of its own output before it stops reading and processing. */
#define PF_CONN_OUT_MAX (256u * 1024u)

/* How far a conn's buffer grows to keep its socket drained while output to it waits (see
 * must_drain). */
#define PF_CONN_DRAIN_MAX (64u * 1024u)

/* What a conn's socket receive buffer (SO_RCVBUF) is raised to once it stops reading with its
 * buffer full (see keep_acks_readable). */
#define PF_CONN_STOPPED_RCVBUF (64 * 1024)

/* A copy of bytes libuv could not write at once. */
typedef struct owned_write {
	uv_write_t req;
	size_t len;
	uint8_t data[];
} owned_write_t;

static void maybe_free(pf_conn_t *c);
static void update_reading(pf_conn_t *c);
static bool unpark(pf_conn_t *c);
static void reap_later(pf_conn_t *c);
static void park_leave(pf_conn_t *c);

/* Tells the owner about the EOF or read error that ended reading (once). */
static void deliver_end(pf_conn_t *c)
{
	if (c->end_delivered || c->closing)
		return;
	c->end_delivered = true;
	if (c->send_error) /* our own output failed first: that is the end to report */
		c->ops->on_event(c, PF_CONN_EV_ERROR, c->send_error);
	else if (c->read_status == 0)
		c->ops->on_event(c, PF_CONN_EV_EOF, 0);
	else
		c->ops->on_event(c, PF_CONN_EV_ERROR, c->read_status);
}

void pf_conn_init(pf_conn_t *c, pf_net_t *net, const pf_conn_ops_t *ops, bool is_client)
{
	c->ops = ops;
	c->net = net;
	c->tp.ops = &pf_transport_plain;
	c->is_client = is_client;
	c->id = pf_net_next_id(net);
	c->hold_max = PF_CONN_HOLD_MAX;
	c->park_fd = -1;
	c->connect_time = pf_net_now(net);
	c->request_time = c->connect_time;
	pf_list_node_init(&c->node);
	pf_list_node_init(&c->throttle_node);
}

/* Frees the big replacements of a forward write that is done. */
static void free_retired(pf_conn_t *c)
{
	pf_conn_splices_t *sp = c->splices;

	while (sp && sp->n_retired > 0)
		free(sp->retired[--sp->n_retired]);
}

/* Gives rbuf back (a small one to malloc, a full one to the free list). */
static void put_rbuf(pf_conn_t *c)
{
	if (c->rbuf_small)
		free(c->rbuf);
	else
		pf_net_put_buffer(c->net, c->rbuf, c->rcap);
	c->rbuf = NULL;
	c->rbuf_small = false;
}

static void release_buffer(pf_conn_t *c)
{
	/* Splices waiting in the forward region refer to offsets in rbuf. */
	if (c->rbuf && !c->fwd_pending && c->rpos == c->rend && (!c->splices || !c->splices->n)) {
		put_rbuf(c);
		c->rcap = c->rpos = c->rend = 0;
		c->fwd_open = false;
	}
}

/* A fresh rbuf: small for a client that has not outgrown one since it last parked (pkt_buf is
 * restart-only, so a small buffer is smaller than a full one for the life of the process). */
static bool take_rbuf(pf_conn_t *c)
{
	if (c->is_client && !c->rbuf_full_size && PF_CONN_SMALL_RBUF < c->net->buffer_size) {
		c->rbuf = malloc(PF_CONN_SMALL_RBUF);
		c->rcap = PF_CONN_SMALL_RBUF;
		c->rbuf_small = c->rbuf != NULL;
	} else {
		c->rbuf = pf_net_get_buffer(c->net, &c->rcap);
	}
	c->rpos = c->rend = 0;
	return c->rbuf != NULL;
}

/*
 * Whether a conn whose buffer is full keeps reading anyway, into a bigger one (up to
 * PF_CONN_DRAIN_MAX): while bytes of ours to its socket wait for the peer. They leave only as
 * the peer's ACKs come in, and Linux (6.x) drops what arrives on a socket whose receive queue
 * is over its memory, ACKs included: the window it advertised was sized from big segments, so
 * a peer's small ones fill the memory first, and its later ACKs (past our window's edge, or
 * riding on data into a zero window) are dropped unread. A client pipelining in small pieces
 * behind a message held back (a named Parse waiting for earlier answers) then never saw those
 * answers go, for good. Not while a write borrows the buffer (it cannot move then), nor
 * before login (hold_max is pkt_buf then: a client logging in holds no more).
 */
static bool must_drain(const pf_conn_t *c)
{
	return !c->fwd_pending && c->rcap < PF_CONN_DRAIN_MAX && c->rcap < c->hold_max &&
	       pf_conn_has_pending_writes(c);
}

/* Whether a full rbuf can still take more bytes: compaction, a small one becoming full-size, or
 * a drain (all only while no write borrows it). */
static bool rbuf_can_widen(const pf_conn_t *c)
{
	return !c->fwd_pending && (c->rpos > 0 || c->rbuf_small || must_drain(c));
}

/* Replaces rbuf by one of ncap bytes (> rcap) with the same contents at the same offsets (the
 * forward region and splices refer to them). */
static bool move_rbuf(pf_conn_t *c, uint32_t ncap, bool pooled)
{
	uint32_t cap = ncap;
	uint8_t *nb = pooled ? pf_net_get_buffer(c->net, &cap) : malloc(ncap);

	assert(!c->fwd_pending && ncap > c->rcap);
	if (!nb)
		return false;
	memcpy(nb, c->rbuf, c->rend);
	put_rbuf(c);
	c->rbuf = nb;
	c->rcap = cap;
	return true;
}

/*
 * Makes room for at least need more bytes after rend, compacting and (when grow) growing the
 * buffer up to hold_max; returns false when impossible.
 */
static bool make_room(pf_conn_t *c, uint32_t need, bool grow)
{
	if (!c->rbuf && !take_rbuf(c))
		return false;
	if (c->rcap - c->rend >= need)
		return true;
	if (c->fwd_pending)
		return false;
	if (c->rbuf_small) {
		/* Outgrown: a full-size buffer now, and for this client's next ones. */
		c->rbuf_full_size = true;
		if (!move_rbuf(c, (uint32_t)c->net->buffer_size, true))
			return false;
		if (c->rcap - c->rend >= need)
			return true;
	}
	if (c->rpos > 0) {
		/* Only unprocessed bytes remain: no write borrows the region before rpos. */
		memmove(c->rbuf, c->rbuf + c->rpos, c->rend - c->rpos);
		c->rend -= c->rpos;
		c->rpos = 0;
		assert(!c->fwd_open || !c->splices || c->splices->n == 0);
		c->fwd_open = false;
	}
	if (c->rcap - c->rend >= need)
		return true;
	if (!grow || (uint64_t)c->rend + need > c->hold_max)
		return false;
	uint32_t ncap = c->rcap;

	while (ncap - c->rend < need)
		ncap *= 2;
	return move_rbuf(c, ncap, false);
}

/*
 * TCP options from the config, as PgBouncer applies them to both sides: keepalive with the
 * kernel defaults unless tcp_keepidle/keepintvl/keepcnt say otherwise, and TCP_NODELAY.
 * tcp_socket_buffer is not among them: it is set before the handshake (pf_conn_size_socket).
 */
static void tune_tcp(pf_conn_t *c)
{
	const pf_config_t *cfg = c->net->cfg;
	uv_os_fd_t fd;
	int on = 1;

	uv_tcp_nodelay(&c->h->tcp, 1);
	if (uv_fileno(&c->h->handle, &fd) < 0)
		return;
	if (cfg->tcp_keepalive) {
		setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on));
		if (cfg->tcp_keepidle > 0)
			setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &cfg->tcp_keepidle,
			           sizeof(cfg->tcp_keepidle));
		if (cfg->tcp_keepintvl > 0)
			setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &cfg->tcp_keepintvl,
			           sizeof(cfg->tcp_keepintvl));
		if (cfg->tcp_keepcnt > 0)
			setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cfg->tcp_keepcnt,
			           sizeof(cfg->tcp_keepcnt));
	}
	if (cfg->tcp_user_timeout > 0) {
		unsigned int ms = (unsigned int)cfg->tcp_user_timeout;

		setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ms, sizeof(ms));
	}
}

void pf_conn_size_socket(int fd, int size)
{
	if (size <= 0)
		return;
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
}

/* Room to read into while the socket must be drained (must_drain): a buffer twice as big. */
static bool drain_room(pf_conn_t *c)
{
	uint32_t ncap;

	if (!c->rbuf || !must_drain(c))
		return false;
	ncap = c->rcap * 2 < PF_CONN_DRAIN_MAX ? c->rcap * 2 : PF_CONN_DRAIN_MAX;
	ncap = ncap < c->hold_max ? ncap : c->hold_max;
	if (c->rbuf_small)
		c->rbuf_full_size = true;
	return move_rbuf(c, ncap, false);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	pf_conn_t *c = h->data;

	(void)suggested;
	if (c->closing || (!make_room(c, 1, false) && !drain_room(c))) {
		buf->base = NULL;
		buf->len = 0;
		return;
	}
	buf->base = (char *)c->rbuf + c->rend;
	buf->len = c->rcap - c->rend;
}

/*
 * sbuf_loopcnt: after that many reads in one loop iteration a connection yields until the next
 * iteration, so one busy connection (a big result) cannot starve the others. libuv would read
 * a readable stream up to 32 times in a row.
 */
static void count_read(pf_conn_t *c)
{
	pf_net_t *w = c->net;
	int limit = w->cfg->sbuf_loopcnt;

	if (limit <= 0 || c->closing)
		return;
	if (c->read_iteration != (uint32_t)w->iteration) {
		c->read_iteration = (uint32_t)w->iteration;
		c->reads_this_iteration = 0;
	}
	if (++c->reads_this_iteration < (uint32_t)limit || c->throttled)
		return;
	if (!c->resume_pending)
		pf_list_append(&w->throttled_conns, &c->throttle_node);
	c->throttled = true;
	update_reading(c);
}

void pf_conn_unthrottle(pf_conn_t *c)
{
	bool resume = c->resume_pending && !c->closing;

	if (!c->throttled && !c->resume_pending)
		return;
	c->throttled = false;
	c->resume_pending = false;
	pf_list_remove(&c->net->throttled_conns, &c->throttle_node);
	if (resume)
		pf_conn_resume(c);
	else
		update_reading(c);
}

void pf_conn_next_iteration(pf_net_t *n)
{
	pf_list_node_t *node;

	n->iteration++;
	while ((node = pf_list_first(&n->throttled_conns)))
		pf_conn_unthrottle(PF_CONTAINER_OF(node, pf_conn_t, throttle_node));
}

void pf_conn_defer_resume(pf_conn_t *c)
{
	if (c->closing || c->resume_pending)
		return;
	if (!c->throttled)
		pf_list_append(&c->net->throttled_conns, &c->throttle_node);
	c->resume_pending = true;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	pf_conn_t *c = s->data;

	(void)buf;
	if (c->closing)
		return;
	if (nread > 0) {
		c->rend += (uint32_t)nread;
		c->progress++;
		/* A small buffer a read filled: more is coming (a big query, a COPY); the next
		 * buffers are full-size, so a stream does not go 512 bytes per read. */
		if (PF_UNLIKELY(c->rbuf_small) && c->rend == c->rcap)
			c->rbuf_full_size = true;
		if (c->read_paused || c->out_blocked)
			update_reading(c); /* kept for later; stops when the buffer is full */
		else
			pf_conn_process(c);
		count_read(c);
		return;
	}
	if (nread == 0)
		return;
	if (nread == UV_ENOBUFS) {
		/* No room: stop until processing or a flush frees some. */
		c->tp.ops->read_stop(&c->tp, &c->h->stream);
		c->reading = false;
		return;
	}
	c->tp.ops->read_stop(&c->tp, &c->h->stream);
	c->reading = false;
	c->read_done = true;
	c->read_status = nread == UV_EOF ? 0 : pf_conn_status16(nread);
	/* Bytes that arrived before the end are still passed on first (a server's last rows and
	 * its FATAL error; pf_conn_process() tells the end once they are through or can go no
	 * further); a client queued for a server leaves with its input. */
	if (c->read_paused)
		deliver_end(c);
	else
		pf_conn_process(c);
}

/*
 * SUSPEND stops reading a socket only while nothing of ours is queued to it: that output waits
 * for the peer's ACKs, which the kernel drops with the rest on a receive queue nobody reads
 * (see must_drain). Stopped at once (as PgBouncer does), the output never went, SUSPEND waited
 * for it until suspend_timeout, and after RESUME the client stayed stalled.
 */
static bool suspend_holds(const pf_conn_t *c)
{
	return c->suspended && !pf_conn_has_pending_writes(c);
}

/*
 * A conn stops reading with its buffer full (the drain at its cap, a write borrowing the buffer,
 * our own output over PF_CONN_OUT_MAX) while output of ours waits on its socket: what the peer
 * sends from now on stays in the kernel's receive queue, and the ACKs our output waits for come
 * with it. Linux (6.18) counts each segment's truesize against sk_rcvbuf (a 1-byte one costs ~1
 * KiB until the queue is collapsed); when a segment does not fit even after collapsing, it is
 * dropped (PROTO_MEM) and a zero window is advertised from that segment's start (ICSK_ACK_NOMEM).
 * The peer has sent past that edge, so from then on each of its segments lies beyond our window
 * and is dropped before its ACK is read (tcp_sequence(): TCP_INVALID_SEQUENCE for its window
 * updates, TCP_INVALID_END_SEQUENCE for its retransmissions while the queue is not empty). Our
 * output never learns that the peer reads again, and the conn never reads again: a stall for good.
 * With tcp_socket_buffer=4096 (8 KiB of receive memory) a client trickling 1- or 7-byte segments
 * at the drain cap got there every time (test_zz_attack_drain_stall.py), with a 32 KiB buffer
 * still, not with 64 KiB. So the socket's receive buffer is raised, once, to
 * PF_CONN_STOPPED_RCVBUF (rmem_max caps it; never lowered; a bigger one is left alone): the kernel
 * then has room, after collapsing, for the last window of tiny segments. It is raised the first
 * time the conn stops reading with its buffer full, whether or not output waits in libuv then: the
 * output may sit in the kernel's send queue only, or come later (a server's next rows), and a
 * raise after the first drop comes too late (the zero window stays until we read; a CI run stalled
 * once, 1 MB answer short, with the raise tied to libuv's queue; not reproduced here). The price:
 * a peer that does not read parks up to that much more in the kernel (kernel memory, not ours), as
 * it may with the kernel's default buffers anyway.
 */
static void keep_acks_readable(pf_conn_t *c)
{
	int size = PF_CONN_STOPPED_RCVBUF, cur = 0;
	socklen_t len = sizeof(cur);
	uv_os_fd_t fd;

	c->rcvbuf_raised = true;
	if (c->is_unix || uv_fileno(&c->h->handle, &fd) < 0)
		return;
	/* getsockopt() reports the doubled value the kernel uses (see socket(7)). */
	if (getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &cur, &len) == 0 && cur >= 2 * size)
		return;
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
}

static void update_reading(pf_conn_t *c)
{
	bool full = c->rbuf && c->rend == c->rcap && !rbuf_can_widen(c);
	bool want = c->handle_open && !c->closing && !c->read_done && !suspend_holds(c) &&
	            !c->throttled && !full;

	if (want && !c->reading) {
		if (c->tp.ops->read_start(&c->tp, &c->h->stream, on_alloc, on_read) == 0)
			c->reading = true;
	} else if (!want && c->reading) {
		c->tp.ops->read_stop(&c->tp, &c->h->stream);
		c->reading = false;
	}
	if (full && !c->rcvbuf_raised && c->handle_open)
		keep_acks_readable(c);
}

static void on_forward_written(uv_write_t *req, int status)
{
	pf_conn_t *c = req->data;

	(void)status; /* A failed write shows up on the peer as an error or EOF. */
	assert(req == c->fwd_req);
	pf_net_put_wreq(c->net, req);
	c->fwd_req = NULL;
	c->fwd_pending = false;
	free_retired(c);
	c->progress++;
	/* A suspended peer stops reading once nothing is queued to it (suspend_holds). */
	if (c->peer && c->peer->suspended && !c->peer->closing)
		update_reading(c->peer);
	if (c->closing) {
		maybe_free(c);
		return;
	}
	release_buffer(c);
	pf_conn_resume(c);
}

/*
 * Writes the forward region [fwd_start, rpos) to the peer. Returns true when processing may go
 * on (everything written at once, or nothing to write), false when a write now borrows rbuf.
 */
/*
 * The forward region as buffers: the bytes of rbuf from fwd_start to rpos, with each splice's
 * replacement in place of the bytes it replaces. Returns how many buffers, *total their bytes.
 */
static unsigned forward_bufs(pf_conn_t *c, uv_buf_t *b, size_t *total)
{
	const pf_conn_splices_t *sp = c->splices;
	uint32_t pos = c->fwd_start;
	unsigned nb = 0;

	*total = c->rpos - c->fwd_start;
	for (uint32_t i = 0; sp && i < sp->n; i++) {
		assert(sp->s[i].at >= pos && sp->s[i].at + sp->s[i].skip <= c->rpos);
		if (sp->s[i].at > pos)
			b[nb++] = uv_buf_init((char *)c->rbuf + pos, sp->s[i].at - pos);
		b[nb++] =
		        uv_buf_init((char *)(sp->s[i].own ? sp->s[i].own : sp->data + sp->s[i].off),
		                    sp->s[i].len);
		*total = *total - sp->s[i].skip + sp->s[i].len;
		pos = sp->s[i].at + sp->s[i].skip;
	}
	if (c->rpos > pos)
		b[nb++] = uv_buf_init((char *)c->rbuf + pos, c->rpos - pos);
	return nb;
}

static void send_failed(pf_conn_t *c, int status);

static bool flush_forward(pf_conn_t *c)
{
	pf_conn_t *peer = c->peer;
	uv_buf_t bufs[2 * PF_CONN_SPLICES + 1], *b = bufs;
	unsigned nb;
	size_t total;
	int n, rc;

	if (!c->fwd_open)
		return true;
	c->fwd_open = false;
	nb = forward_bufs(c, bufs, &total);
	/* The replacements stay where they are until a write of them is done: inline ones are
	 * not overwritten meanwhile (pf_conn_replace_head), big ones are freed after it. */
	if (c->splices) {
		pf_conn_splices_t *sp = c->splices;

		assert(sp->n_retired == 0);
		for (uint32_t i = 0; i < sp->n; i++)
			if (sp->s[i].own)
				sp->retired[sp->n_retired++] = sp->s[i].own;
		sp->n = sp->used = 0;
	}
	if (PF_UNLIKELY(peer && peer->parked) && total > 0)
		unpark(peer); /* (a parked conn is nobody's peer: a defence) */
	if (total == 0 || !peer || peer->closing || !peer->handle_open || peer->send_error) {
		/* Nothing, or nobody to send to: the bytes are dropped. A peer whose own output
		 * failed (send_error) misses bytes of its stream already: nothing may follow the
		 * gap (it is ended from the loop). */
		free_retired(c);
		return true;
	}
	c->progress++;
	n = peer->tp.ops->try_write(&peer->tp, &peer->h->stream, bufs, nb);
	if (n == (int)total) {
		free_retired(c);
		return true;
	}
	if (n > 0) {
		/* Skip what went out: whole buffers, then part of one. */
		while ((size_t)n >= b->len) {
			n -= (int)b->len;
			b++;
			nb--;
		}
		b->base += n;
		b->len -= (size_t)n;
	} else if (n != UV_EAGAIN && n != UV_ENOSYS) {
		free_retired(c);
		return true; /* the peer's own read side reports the failure */
	}
	assert(!c->fwd_req);
	c->fwd_req = pf_net_get_wreq(c->net);
	if (!c->fwd_req) {
		/* The peer's byte stream would miss these bytes: it is broken. */
		free_retired(c);
		send_failed(peer, -ENOMEM);
		return true;
	}
	c->fwd_req->data = c;
	rc = peer->tp.ops->write(&peer->tp, c->fwd_req, &peer->h->stream, b, nb,
	                         on_forward_written);
	if (rc < 0) {
		/* The bytes are lost (libuv could not copy the buffer list, the socket refused):
		 * the peer's stream is broken, whatever its read side says. */
		pf_net_put_wreq(c->net, c->fwd_req);
		c->fwd_req = NULL;
		free_retired(c);
		send_failed(peer, rc);
		return true;
	}
	c->fwd_pending = true;
	if (!peer->reading)
		update_reading(peer); /* output waits on its socket: keep it drained */
	return false;
}

void pf_conn_flush(pf_conn_t *c)
{
	if (!c->closing && !c->fwd_pending)
		flush_forward(c);
}

/* What the message walk does after one step. */
typedef enum walk {
	WALK_ON,    /* next message */
	WALK_BREAK, /* stop walking; flush what is marked for forwarding */
	WALK_OUT,   /* stop walking now (a write borrows the buffer, or we were told to stop) */
} walk_t;

/* Marks the bytes at rpos as the start of the forward region (if none is open). */
static inline void open_forward(pf_conn_t *c)
{
	if (!c->fwd_open) {
		c->fwd_open = true;
		c->fwd_start = c->rpos;
	}
}

/* Raw bytes before message framing (startup, SSL negotiation). */
static walk_t walk_raw(pf_conn_t *c, uint32_t avail, bool *starved)
{
	int n = c->ops->on_raw(c, c->rbuf + c->rpos, avail);

	if (n <= 0) {
		if (n == 0 && !c->closing)
			make_room(c, 1, true);
		*starved = n == 0;
		return WALK_BREAK;
	}
	c->rpos += (uint32_t)n;
	return c->out_blocked ? WALK_OUT : WALK_ON;
}

/* More bytes of a message already decided on (forwarded or skipped). */
static void walk_rest(pf_conn_t *c, uint32_t avail)
{
	uint32_t n = avail < c->pkt_remain ? avail : c->pkt_remain;

	if (c->pkt_forward)
		open_forward(c);
	c->rpos += n;
	c->pkt_remain -= n;
}

/* Carries out what the owner's handler decided for the message of total bytes at rpos. */
static walk_t apply_action(pf_conn_t *c, pf_pkt_action_t act, uint32_t total, uint32_t have,
                           bool *starved)
{
	switch (act) {
	case PF_PKT_FORWARD:
		open_forward(c);
		c->pkt_forward = true;
		c->pkt_remain = total;
		return WALK_ON;
	case PF_PKT_SKIP: {
		/* When a write now borrows the buffer, the skip starts once it is done: the forward
		 * region ends at rpos either way. */
		bool flushed = flush_forward(c);

		c->pkt_forward = false;
		c->pkt_remain = total;
		return flushed ? WALK_ON : WALK_OUT;
	}
	case PF_PKT_CONSUMED: {
		/* The forward region ends before it: what precedes goes out now (a write that is
		 * still pending borrows only bytes before this message). */
		bool flushed = flush_forward(c);

		c->rpos += total;
		return !flushed || c->out_blocked || c->read_paused ? WALK_OUT : WALK_ON;
	}
	case PF_PKT_NEED_WHOLE:
		if (!flush_forward(c))
			return WALK_OUT;
		if (!make_room(c, total - have, true)) {
			c->ops->on_event(c, PF_CONN_EV_ERROR, -ENOBUFS);
			return WALK_OUT;
		}
		*starved = true;
		return WALK_OUT;
	case PF_PKT_FLUSH:
		return flush_forward(c) ? WALK_ON : WALK_OUT;
	case PF_PKT_STOP:
		flush_forward(c);
		return WALK_OUT;
	case PF_PKT_FORWARD_LAST: {
		bool done;

		open_forward(c);
		c->rpos += total;
		done = flush_forward(c);
		c->ops->on_forwarded(c);
		return done ? WALK_ON : WALK_OUT;
	}
	case PF_PKT_NEED_HEAD: {
		uint32_t want = c->head;

		assert(want > have && want <= total);
		if (!flush_forward(c))
			return WALK_OUT;
		if (!make_room(c, want - have, true)) {
			c->ops->on_event(c, PF_CONN_EV_ERROR, -ENOBUFS);
			return WALK_OUT;
		}
		*starved = true;
		return WALK_OUT;
	}
	case PF_PKT_REPLACED:
		/* The prefix went out (pf_conn_replace_head); the replaced bytes are dropped and
		 * the rest of the message is forwarded behind it. */
		assert(c->head <= have);
		c->rpos += c->head;
		c->pkt_forward = true;
		c->pkt_remain = total - c->head;
		c->head = 0;
		return c->fwd_pending ? WALK_OUT : WALK_ON;
	}
	assert(!"unknown packet action");
	return WALK_OUT;
}

void pf_conn_need_head(pf_conn_t *c, uint32_t n)
{
	c->head = n;
}

void pf_conn_replace_head(pf_conn_t *c, const void *prefix, size_t len, uint32_t skip)
{
	pf_conn_t *peer = c->peer;
	pf_conn_splices_t *sp = c->splices;

	assert(!c->fwd_pending && skip > 0);
	if (!sp && (sp = c->splices = calloc(1, sizeof(*sp))) != NULL)
		sp->n = sp->used = 0;
	if (sp && sp->n == PF_CONN_SPLICES)
		flush_forward(c); /* full: what is there goes first (it may stay in flight) */
	if (sp && len <= UINT32_MAX) {
		uint8_t *own = NULL;

		/* Inline while no write in flight uses the inline bytes; else a buffer of its
		 * own, so that no replacement ever waits in our own output queue (which would
		 * stop the server's answers from being read, PF_CONN_OUT_MAX). */
		if (c->fwd_pending || len > PF_CONN_SPLICE_BYTES - sp->used)
			own = malloc(len ? len : 1);
		if (own || (!c->fwd_pending && len <= PF_CONN_SPLICE_BYTES - sp->used)) {
			/* Kept in the forward region: written with the bytes around it. */
			open_forward(c);
			sp->s[sp->n].at = c->rpos;
			sp->s[sp->n].skip = skip;
			sp->s[sp->n].len = (uint32_t)len;
			sp->s[sp->n].own = own;
			sp->s[sp->n].off = own ? 0 : sp->used;
			memcpy(own ? own : sp->data + sp->used, prefix, len);
			if (!own)
				sp->used += (uint32_t)len;
			sp->n++;
			c->head = skip;
			return;
		}
	}

	/* What was marked for forwarding before this message goes first; a write of it that is
	 * still pending is overtaken by nothing (writes on one stream stay in order). */
	flush_forward(c);
	c->head = skip;
	if (peer && !peer->closing && peer->handle_open) {
		pf_conn_send(peer, prefix, len);
		c->progress++;
	}
}

/* A message boundary at rpos: reads the header and asks the owner's handler. */
static walk_t walk_message(pf_conn_t *c, uint32_t avail, bool *starved)
{
	pf_proto_hdr_t hdr;
	uint32_t have;
	int rc;

	if (avail < PF_PROTO_HDR_LEN) {
		if (flush_forward(c)) {
			make_room(c, PF_PROTO_HDR_LEN - avail, true);
			*starved = true;
		}
		return WALK_BREAK;
	}
	rc = pf_proto_read_header(c->rbuf + c->rpos, avail, c->net->cfg->max_packet_size, &hdr);
	if (rc < 0) {
		flush_forward(c);
		c->ops->on_event(c, PF_CONN_EV_ERROR, rc);
		return WALK_BREAK;
	}
	have = avail < hdr.total ? avail : hdr.total;
	return apply_action(c, c->ops->on_packet(c, &hdr, c->rbuf + c->rpos, have), hdr.total, have,
	                    starved);
}

/* After a walk: buffer and reading follow, and the owner hears the end of input or a drain. */
static void walk_done(pf_conn_t *c, bool starved)
{
	c->in_process = false;
	if (c->closing)
		return;
	release_buffer(c);
	update_reading(c);
	if (c->closing || c->fwd_pending)
		return;
	if (c->read_done && (c->rpos == c->rend || starved || c->read_paused))
		deliver_end(c);
	else if (c->rpos == c->rend)
		c->ops->on_event(c, PF_CONN_EV_DRAINED, 0);
}

void pf_conn_process(pf_conn_t *c)
{
	bool starved = false; /* stopped for want of bytes not yet read */
	walk_t w = WALK_ON;

	if (c->in_process)
		return;
	if (PF_UNLIKELY(c->send_error)) {
		/* Broken by a failed send: the owner ends it (once). */
		if (!c->end_delivered && !c->closing) {
			c->end_delivered = true;
			c->ops->on_event(c, PF_CONN_EV_ERROR, c->send_error);
		}
		return;
	}
	c->in_process = true;
	/* Paused by the owner or by our own output: processing waits. (Only a handler's own
	 * replies can block output, so that is checked after the handlers that send them.) */
	if (c->read_paused || c->out_blocked)
		w = WALK_OUT;
	while (w == WALK_ON && !c->closing && !c->fwd_pending && c->rpos < c->rend) {
		uint32_t avail = c->rend - c->rpos;

		assert(c->rpos <= c->rend && c->rend <= c->rcap);
		if (c->raw_mode)
			w = walk_raw(c, avail, &starved);
		else if (c->pkt_remain > 0)
			walk_rest(c, avail);
		else
			w = walk_message(c, avail, &starved);
	}
	if (w != WALK_OUT && !c->closing && !c->fwd_pending)
		flush_forward(c);
	walk_done(c, starved);
}

void pf_conn_resume(pf_conn_t *c)
{
	if (c->closing)
		return;
	pf_conn_process(c);
	if (!c->closing)
		update_reading(c);
}

void pf_conn_pause_reading(pf_conn_t *c, bool paused)
{
	c->read_paused = paused;
	update_reading(c);
}

void pf_conn_suspend(pf_conn_t *c, bool on)
{
	c->suspended = on;
	update_reading(c);
}

static void on_owned_written(uv_write_t *req, int status)
{
	owned_write_t *w = (owned_write_t *)req;
	pf_conn_t *c = req->data;

	(void)status;
	c->out_queued -= (uint32_t)(sizeof(*w) + w->len);
	/* It may have held a password or SCRAM proof on its way to a server. */
	OPENSSL_cleanse(w->data, w->len);
	free(w);
	if (c->closing) {
		maybe_free(c);
		return;
	}
	if (c->suspended)
		update_reading(c); /* stops once nothing is queued (suspend_holds) */
	/* Below half the bound again: read and process what waits. */
	if (c->out_blocked && c->out_queued <= PF_CONN_OUT_MAX / 2) {
		c->out_blocked = false;
		pf_conn_resume(c);
	}
}

/*
 * Our own output could not be sent (no memory for the copy, or the socket refused it): the
 * connection is broken. The owner hears it as PF_CONN_EV_ERROR from the loop, never from inside
 * the call that sent, so no caller has to handle a failure in the middle of what it was doing.
 */
static void send_failed(pf_conn_t *c, int status)
{
	assert(status < 0);
	if (c->send_error)
		return;
	c->send_error = pf_conn_status16(status);
	pf_conn_defer_resume(c);
}

/* pf_conn_cork(): the one connection (per thread) whose output is being gathered. */
static _Thread_local struct {
	pf_conn_t *c;
	pf_buf_t buf;
} cork;

void pf_conn_cork(pf_conn_t *c)
{
	assert(!cork.c);
	if (cork.c)
		pf_conn_uncork(cork.c);
	cork.c = c;
	pf_buf_reset(&cork.buf);
}

void pf_conn_uncork(pf_conn_t *c)
{
	if (cork.c != c)
		return;
	cork.c = NULL;
	if (cork.buf.len || cork.buf.failed) {
		size_t used = cork.buf.len;

		pf_conn_send_buf(c, &cork.buf);
		/* A welcome holds the client's cancel key: not left behind for anyone to find. */
		if (cork.buf.data)
			explicit_bzero(cork.buf.data, used);
	}
	if (cork.buf.cap > PF_CONN_CORK_KEEP)
		pf_buf_free(&cork.buf);
}

void pf_conn_send(pf_conn_t *c, const void *data, size_t len)
{
	uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
	owned_write_t *w;
	int n;

	if (PF_UNLIKELY(c->parked) && !c->closing && len > 0 && !unpark(c))
		return;
	if (c->closing || !c->handle_open || len == 0 || c->send_error)
		return;
	if (PF_UNLIKELY(cork.c == c)) {
		pf_buf_put_bytes(&cork.buf, data, len);
		return;
	}
	n = c->tp.ops->try_write(&c->tp, &c->h->stream, &b, 1);
	if (n == (int)len)
		return;
	if (n < 0 && n != UV_EAGAIN && n != UV_ENOSYS) {
		send_failed(c, n);
		return;
	}
	if (n < 0)
		n = 0;
	w = malloc(sizeof(*w) + len - (size_t)n);
	if (!w) {
		send_failed(c, -ENOMEM);
		return;
	}
	w->len = len - (size_t)n;
	w->req.data = c;
	memcpy(w->data, (const uint8_t *)data + n, w->len);
	b = uv_buf_init((char *)w->data, (unsigned)w->len);
	n = c->tp.ops->write(&c->tp, &w->req, &c->h->stream, &b, 1, on_owned_written);
	if (n < 0) {
		free(w);
		send_failed(c, n);
		return;
	}
	/* Counted with the copy's overhead, so that many tiny replies are bounded too. */
	c->out_queued += (uint32_t)(sizeof(*w) + w->len);
	if (c->out_queued > PF_CONN_OUT_MAX && !c->out_blocked)
		c->out_blocked = true;
	if (!c->reading)
		update_reading(c); /* output waits on its socket: keep it drained */
}

void pf_conn_send_buf(pf_conn_t *c, pf_buf_t *b)
{
	if (b->failed)
		send_failed(c, -ENOMEM);
	else
		pf_conn_send(c, b->data, b->len);
	pf_buf_reset(b);
}

bool pf_conn_has_pending_writes(const pf_conn_t *c)
{
	return c->handle_open && c->tp.ops->queued(&c->tp, &c->h->stream) > 0;
}

/* Gives c a handle from the slab and initialises it (TCP or unix, as c->is_unix says). */
static int open_handle(pf_conn_t *c, uv_loop_t *loop)
{
	pf_net_handle_t *h = pf_net_get_handle(c->net);
	int rc;

	assert(!c->h && !c->handle_open);
	if (!h)
		return UV_ENOMEM;
	rc = c->is_unix ? uv_pipe_init(loop, &h->pipe, 0) : uv_tcp_init(loop, &h->tcp);
	if (rc < 0) {
		/* Nothing registered: the slot is not a live handle, it goes straight back. */
		pf_net_put_handle(c->net, h);
		return rc;
	}
	h->handle.data = c;
	c->h = h;
	c->handle_open = true;
	return 0;
}

/* Accepts from listener, or (listener NULL) adopts fd, a TCP socket accept(2) returned. */
static int accept_or_adopt(pf_conn_t *c, uv_loop_t *loop, uv_stream_t *listener, int fd,
                           bool is_unix)
{
	int rc, len;

	c->is_unix = is_unix;
	rc = open_handle(c, loop);
	if (rc < 0) {
		if (!listener)
			close(fd);
		return rc;
	}
	c->handle_open = true;
	if (listener) {
		rc = uv_accept(listener, &c->h->stream);
	} else {
		rc = uv_tcp_open(&c->h->tcp, fd);
		if (rc < 0)
			close(fd);
	}
	if (rc < 0)
		return rc;
	if (!is_unix) {
		len = sizeof(c->addr);
		uv_tcp_getpeername(&c->h->tcp, (struct sockaddr *)&c->addr, &len);
		tune_tcp(c);
	} else {
		c->addr.sa.sa_family = AF_UNIX;
	}
	update_reading(c);
	return 0;
}

void pf_conn_local_addr(const pf_conn_t *c, pf_sockaddr_t *out)
{
	memset(out, 0, sizeof(*out));
	if (c->is_unix) {
		out->sa.sa_family = AF_UNIX;
	} else if (!c->closing && (c->handle_open || c->parked)) {
		socklen_t len = sizeof(*out);

		if (getsockname(pf_conn_fd(c), &out->sa, &len) < 0)
			memset(out, 0, sizeof(*out));
	}
}

int pf_conn_accept(pf_conn_t *c, uv_stream_t *listener, bool is_unix)
{
	return accept_or_adopt(c, listener->loop, listener, -1, is_unix);
}

int pf_conn_adopt_tcp(pf_conn_t *c, uv_loop_t *loop, int fd)
{
	return accept_or_adopt(c, loop, NULL, fd, false);
}

static void on_connected(uv_connect_t *req, int status)
{
	pf_conn_t *c = req->data;

	free(req);
	c->connect_pending = false;
	if (c->closing) {
		maybe_free(c);
		return;
	}
	if (status == 0 && !c->is_unix)
		tune_tcp(c);
	c->ops->on_event(c, PF_CONN_EV_CONNECTED, status);
	if (status == 0 && !c->closing)
		update_reading(c);
}

int pf_conn_connect(pf_conn_t *c, const struct sockaddr *addr, const char *path)
{
	uv_loop_t *loop = c->net->loop;
	uv_connect_t *req = malloc(sizeof(*req));
	int rc;

	if (!req)
		return -ENOMEM;
	c->is_unix = path != NULL;
	rc = open_handle(c, loop);
	if (rc < 0) {
		free(req);
		return rc;
	}
	req->data = c;
	if (path) {
		c->addr.sa.sa_family = AF_UNIX;
		c->connect_pending = true;
		uv_pipe_connect(req, &c->h->pipe, path, on_connected);
		return 0;
	}
	memcpy(&c->addr, addr,
	       addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
	                                   : sizeof(struct sockaddr_in));
	if (c->net->cfg->tcp_socket_buffer > 0) {
		/* Sized before the handshake (see pf_conn_size_socket): our own socket, then. */
		int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);

		if (fd < 0) {
			free(req);
			return -errno;
		}
		pf_conn_size_socket(fd, c->net->cfg->tcp_socket_buffer);
		rc = uv_tcp_open(&c->h->tcp, fd);
		if (rc < 0) {
			close(fd);
			free(req);
			return rc;
		}
	}
	rc = uv_tcp_connect(req, &c->h->tcp, addr, on_connected);
	if (rc < 0) {
		free(req);
		return rc;
	}
	c->connect_pending = true;
	return 0;
}

/* Closing: how long queued bytes (a final ErrorResponse) may take to leave before a hard close. */
#define CLOSE_LINGER_MS 5000

typedef struct close_linger {
	uv_shutdown_t req;
	uv_timer_t timer;
	pf_conn_t *conn;
	bool shutdown_done;
} close_linger_t;

static void maybe_free(pf_conn_t *c)
{
	if (!c->closing || c->handle_open || c->fwd_pending || c->connect_pending || c->lingering ||
	    c->out_queued > 0 || c->reap)
		return;
	if (c->rbuf)
		put_rbuf(c);
	if (c->splices) {
		free_retired(c);
		for (uint32_t i = 0; i < c->splices->n; i++)
			free(c->splices->s[i].own);
	}
	free(c->splices);
	c->splices = NULL;
	if (c->tp.ops->release)
		c->tp.ops->release(&c->tp);
	c->ops->on_free(c);
}

static void on_handle_closed(uv_handle_t *h)
{
	pf_conn_t *c = h->data;

	assert(c->h == (pf_net_handle_t *)h);
	c->handle_open = false;
	c->h = NULL;
	pf_net_put_handle(c->net, (pf_net_handle_t *)h);
	maybe_free(c);
}

static void close_handle(pf_conn_t *c)
{
	if (c->handle_open && !uv_is_closing(&c->h->handle))
		uv_close(&c->h->handle, on_handle_closed);
}

static void on_linger_timer_closed(uv_handle_t *h)
{
	close_linger_t *l = h->data;
	pf_conn_t *c = l->conn;

	free(l);
	c->lingering = false;
	maybe_free(c);
}

static void free_linger(uv_handle_t *h)
{
	free(h->data);
}

static void linger_finish(close_linger_t *l)
{
	close_handle(l->conn);
	if (!uv_is_closing((uv_handle_t *)&l->timer))
		uv_close((uv_handle_t *)&l->timer, on_linger_timer_closed);
}

static void on_linger_shutdown(uv_shutdown_t *req, int status)
{
	close_linger_t *l = req->data;

	(void)status;
	l->shutdown_done = true;
	linger_finish(l);
}

static void on_linger_timeout(uv_timer_t *t)
{
	close_linger_t *l = t->data;

	/* Closing the handle cancels the shutdown request; its callback runs before the close. */
	close_handle(l->conn);
}

void pf_conn_close(pf_conn_t *c)
{
	if (c->closing)
		return;
	pf_conn_uncork(c); /* what was gathered goes before the end */
	c->closing = true;
	pf_conn_unthrottle(c);
	c->peer = NULL;
	if (c->parked) {
		/* Nothing of ours is queued on a parked socket: it just closes. */
		park_leave(c);
		close(c->park_fd);
		c->park_fd = -1;
		c->reap = true;
	}
	if (c->reading) {
		c->tp.ops->read_stop(&c->tp, &c->h->stream);
		c->reading = false;
	}
	if (!c->handle_open) {
		if (c->reap)
			reap_later(c);
		else
			maybe_free(c); /* never opened: nothing refers to it yet */
		return;
	}
	if (!c->connect_pending && c->tp.ops->queued(&c->tp, &c->h->stream) > 0) {
		close_linger_t *l = calloc(1, sizeof(*l));

		if (l && uv_timer_init(c->net->loop, &l->timer) == 0) {
			l->conn = c;
			l->req.data = l;
			l->timer.data = l;
			if (c->tp.ops->shutdown(&c->tp, &l->req, &c->h->stream,
			                        on_linger_shutdown) == 0) {
				c->lingering = true;
				uv_timer_start(&l->timer, on_linger_timeout, CLOSE_LINGER_MS, 0);
				return;
			}
			l->timer.data = l;
			uv_close((uv_handle_t *)&l->timer, free_linger);
		} else {
			free(l);
		}
	}
	close_handle(c);
}

/* ---- parking ---- */

/* A handle slot given back once its close callback ran (the conn may have moved on). */
static void on_parked_handle_closed(uv_handle_t *h)
{
	pf_net_put_handle(h->data, (pf_net_handle_t *)h);
}

static void on_park_ready(uv_poll_t *p, int status, int events);

static void on_park_closed(uv_handle_t *h)
{
	free(h);
}

/* Frees the conns closed without a handle (the reaper, from the loop; or at shutdown). */
static void reap_dead(pf_net_t *n)
{
	pf_list_node_t *node;

	while ((node = pf_list_first(&n->dead_conns))) {
		pf_conn_t *c = PF_CONTAINER_OF(node, pf_conn_t, throttle_node);

		pf_list_remove(&n->dead_conns, node);
		assert(c->closing && c->reap);
		c->reap = false;
		maybe_free(c);
	}
}

static void on_reap(uv_idle_t *h)
{
	pf_net_t *n = h->data;

	reap_dead(n);
	uv_idle_stop(h);
}

/* c (closing, without a handle) is freed from the loop's next iteration: whoever closed it may
 * still use it until then, as with a handle's close callback. */
static void reap_later(pf_conn_t *c)
{
	pf_net_t *n = c->net;

	assert(c->closing && c->reap && !c->handle_open && !c->throttled && !c->resume_pending);
	pf_list_append(&n->dead_conns, &c->throttle_node);
	if (n->reaper)
		uv_idle_start(n->reaper, on_reap);
}

/* The park epoll set of n, made at the first park; the loop watches it without being kept
 * alive by it. */
static bool park_set_open(pf_net_t *n)
{
	uv_poll_t *p;

	if (n->park_poll)
		return true;
	if (!n->loop)
		return false;
	n->park_epfd = epoll_create1(EPOLL_CLOEXEC);
	if (n->park_epfd < 0)
		return false;
	p = malloc(sizeof(*p));
	if (!p || uv_poll_init(n->loop, p, n->park_epfd) < 0) {
		free(p);
		close(n->park_epfd);
		n->park_epfd = -1;
		return false;
	}
	p->data = n;
	if (uv_poll_start(p, UV_READABLE, on_park_ready) < 0) {
		uv_close((uv_handle_t *)p, on_park_closed);
		close(n->park_epfd);
		n->park_epfd = -1;
		return false;
	}
	uv_unref((uv_handle_t *)p);
	n->park_poll = p;
	if (!n->reaper) {
		/* Made with the set, so no conn can need it and find none (then no park). */
		uv_idle_t *r = malloc(sizeof(*r));

		if (!r || uv_idle_init(n->loop, r) < 0) {
			free(r);
			pf_conn_park_shutdown(n);
			return false;
		}
		r->data = n;
		n->reaper = r;
	}
	return true;
}

void pf_conn_park_shutdown(pf_net_t *n)
{
	assert(n->parked == 0);
	reap_dead(n);
	if (n->reaper) {
		uv_close((uv_handle_t *)n->reaper, on_park_closed);
		n->reaper = NULL;
	}
	if (!n->park_poll)
		return;
	uv_close((uv_handle_t *)n->park_poll, on_park_closed);
	n->park_poll = NULL;
	close(n->park_epfd);
	n->park_epfd = -1;
}

bool pf_conn_park(pf_conn_t *c)
{
	pf_net_t *n = c->net;
	struct epoll_event ev;
	uv_os_fd_t fd;
	int pfd;

	if (c->parked || c->closing || !c->handle_open || !c->reading || c->read_done ||
	    c->connect_pending || c->tp.ops != &pf_transport_plain || c->rbuf || c->fwd_pending ||
	    c->pkt_remain || c->peer || c->out_queued || c->send_error || c->throttled ||
	    c->resume_pending || c->lingering || c->tp.ops->queued(&c->tp, &c->h->stream) > 0 ||
	    cork.c == c || uv_is_closing(&c->h->handle) || uv_fileno(&c->h->handle, &fd) < 0 ||
	    !park_set_open(n))
		return false;
	/* libuv closes the socket with the handle: the set watches a duplicate. (libuv takes the
	 * original out of its own epoll set before it closes it.) */
	pfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	if (pfd < 0)
		return false;
	memset(&ev, 0, sizeof(ev));
	ev.events = EPOLLIN | EPOLLRDHUP;
	ev.data.ptr = c;
	if (epoll_ctl(n->park_epfd, EPOLL_CTL_ADD, pfd, &ev) < 0) {
		close(pfd);
		return false;
	}
	c->tp.ops->read_stop(&c->tp, &c->h->stream);
	c->reading = false;
	c->handle_open = false;
	c->h->handle.data = n;
	uv_close(&c->h->handle, on_parked_handle_closed);
	c->h = NULL;
	c->parked = true;
	c->park_fd = pfd;
	c->rbuf_full_size = false; /* what it sends when it wakes starts small again */
	n->parked++;
	return true;
}

/* Takes c's socket out of the park set (not closing it). */
static void park_leave(pf_conn_t *c)
{
	assert(c->parked && c->net->parked > 0);
	epoll_ctl(c->net->park_epfd, EPOLL_CTL_DEL, c->park_fd, NULL);
	c->parked = false;
	c->net->parked--;
}

/*
 * Gives a parked c a handle again and lets it read. Returns false when that failed: c then has
 * no socket, and its owner hears PF_CONN_EV_ERROR from the loop.
 */
static bool unpark(pf_conn_t *c)
{
	int fd = c->park_fd, rc;

	if (!c->parked)
		return true;
	park_leave(c);
	c->park_fd = -1;
	rc = open_handle(c, c->net->loop);
	if (rc == 0)
		rc = c->is_unix ? uv_pipe_open(&c->h->pipe, fd) : uv_tcp_open(&c->h->tcp, fd);
	if (rc < 0) {
		if (c->h) {
			/* The handle never took the socket: closing it leaves fd to us. */
			c->h->handle.data = c->net;
			uv_close(&c->h->handle, on_parked_handle_closed);
			c->h = NULL;
			c->handle_open = false;
		}
		close(fd);
		c->reap = true; /* its close frees it from the loop */
		send_failed(c, rc);
		return false;
	}
	update_reading(c);
	return true;
}

/*
 * Parked sockets with something to read (bytes, EOF, an error): they get their handles back,
 * and libuv reads them from its next poll on. All that are ready go at once: taken a few per
 * loop iteration, the last of a burst (thousands of idle clients that all send when a load
 * starts) waited behind clients that had been served and spoke again meanwhile. Each unpark
 * takes its socket out of the set, so this ends.
 */
static void on_park_ready(uv_poll_t *p, int status, int events)
{
	pf_net_t *n = p->data;
	struct epoll_event ev[256];
	int got;

	(void)status;
	(void)events;
	do {
		got = epoll_wait(n->park_epfd, ev, (int)PF_ARRAY_SIZE(ev), 0);
		for (int i = 0; i < got; i++)
			unpark(ev[i].data.ptr);
	} while (got == (int)PF_ARRAY_SIZE(ev));
}

int pf_conn_fd(const pf_conn_t *c)
{
	uv_os_fd_t fd;

	if (c->parked)
		return c->park_fd;
	if (!c->handle_open || uv_fileno(&c->h->handle, &fd) < 0)
		return -1;
	return fd;
}

bool pf_conn_is_abandoned(pf_conn_t *c)
{
	int fd;
	struct pollfd p;
	bool moved = c->progress != c->progress_seen;

	c->progress_seen = c->progress;
	/* A parked socket is watched for its end by the park set. */
	if (c->reading || moved || c->throttled || c->closing || !c->handle_open ||
	    c->connect_pending || (fd = pf_conn_fd(c)) < 0)
		return false;
	p.fd = fd;
	p.events = POLLRDHUP;
	p.revents = 0;
	return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

void pf_conn_addr_text(const void *sa, char *host, size_t n, int *port)
{
	const struct sockaddr *ss = sa;

	*port = 0;
	if (ss->sa_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;

		inet_ntop(AF_INET, &sin->sin_addr, host, (socklen_t)n);
		*port = ntohs(sin->sin_port);
	} else if (ss->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;

		inet_ntop(AF_INET6, &sin6->sin6_addr, host, (socklen_t)n);
		*port = ntohs(sin6->sin6_port);
	} else {
		pf_strlcpy(host, "unix", n);
	}
}
