/*
 * conn: one socket with its receive buffer, shared by clients and servers.
 *
 * A conn reads into a receive buffer of pkt_buf bytes taken from the worker's free list when data
 * arrives and given back when it is empty, so an idle connection holds no buffer. A client starts
 * with a small one (PF_CONN_SMALL_RBUF bytes: a query waiting for a server holds no more), which
 * becomes a full one the first time it fills, and then stays full-size until the client parks. The
 * bytes are walked message by message; the owner's packet handler decides for each message whether
 * it is forwarded to the linked peer, skipped, or acted on. Consecutive forwarded messages go out
 * as one write that borrows the receive buffer; while such a write is pending the conn stops
 * reading and processing (backpressure), and resumes when the peer's socket has taken the bytes.
 *
 * Messages pgfunnel makes itself go out through pf_conn_send(), which copies what the socket
 * does not take at once. libuv keeps writes on one stream in order, so a forwarded region and a
 * message of ours never overtake each other.
 */
#ifndef PGFUNNEL_CONN_H
#define PGFUNNEL_CONN_H

#include <assert.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <uv.h>

#include "pgfunnel/buf.h"
#include "pgfunnel/list.h"
#include "pgfunnel/net.h"
#include "pgfunnel/proto.h"
#include "pgfunnel/transport.h"
#include "pgfunnel/util.h"

typedef struct pf_conn pf_conn_t;

/* The largest message a conn holds whole to act on (ErrorResponse, ParameterStatus, admin). */
#define PF_CONN_HOLD_MAX (1024u * 1024u)

/* A client's first receive buffer (see above): a typical query fits, and 10,000 clients queued
 * for a server at once touch 5 MB instead of 40 (the page faults of a burst's first reads). */
#define PF_CONN_SMALL_RBUF 512u

/*
 * A peer address: IPv4, IPv6, or just the family AF_UNIX (unix socket paths are not kept).
 * 28 bytes instead of sockaddr_storage's 128, twice per connection.
 */
typedef union pf_sockaddr {
	struct sockaddr sa;
	struct sockaddr_in in;
	struct sockaddr_in6 in6;
} pf_sockaddr_t;

/*
 * Sets a TCP socket's kernel send and receive buffers to size bytes (tcp_socket_buffer; nothing
 * when size <= 0). Only before the handshake: the window the two ends agree on (its scale, the
 * first advertised size) follows the receive buffer at that time, and a buffer shrunk after it
 * takes less than the peer was told it may send; the kernel drops the rest (our peer's ACKs
 * riding on it included) and the peer waits for its retransmission timer: 0.2 s pauses, or
 * for good. So a listening socket gets it before listen() (accepted sockets inherit it), a
 * server socket before connect().
 */
void pf_conn_size_socket(int fd, int size);

/* What a packet handler tells the loop to do with the message at hand. */
typedef enum pf_pkt_action {
	PF_PKT_FORWARD,  /* send the whole message to c->peer (coalesced with its neighbours) */
	PF_PKT_SKIP,     /* drop the whole message */
	PF_PKT_CONSUMED, /* the handler dealt with the whole message (it was entirely in buffer) */
	PF_PKT_NEED_WHOLE, /* call again when the whole message is in the buffer */
	PF_PKT_FLUSH,      /* flush what is queued for forwarding, then call again */
	PF_PKT_STOP,       /* stop processing; the message stays; pf_conn_resume() restarts */
	/* Forward the whole message (entirely in the buffer) in one write with what precedes
	 * it, then call ops->on_forwarded(). */
	PF_PKT_FORWARD_LAST,
	/* Call again once the first pf_conn_need_head() bytes of the message are buffered (a
	 * name near its start; the rest need not fit: large messages stream). */
	PF_PKT_NEED_HEAD,
	/* pf_conn_replace_head() sent a replacement for the message's first bytes: forward the
	 * rest of the message as it arrives. */
	PF_PKT_REPLACED,
} pf_pkt_action_t;

/* Events besides messages, handed to the owner's event handler. */
typedef enum pf_conn_event {
	PF_CONN_EV_CONNECTED, /* outgoing connect finished (status 0 or -errno) */
	PF_CONN_EV_EOF,       /* the peer closed its side */
	/* A read error, -EBADMSG or -EMSGSIZE for a refused header, -ENOBUFS for a message
	 * longer than hold_max that must be held whole (status). */
	PF_CONN_EV_ERROR,
	PF_CONN_EV_DRAINED, /* processing ran out of bytes (after a batch of reads) */
} pf_conn_event_t;

typedef struct pf_conn_ops {
	/*
	 * Called for each message header at a message boundary. pkt points at the type byte; avail
	 * bytes of the message (at most hdr->len + 1) are in the buffer. Must not free c.
	 */
	pf_pkt_action_t (*on_packet)(pf_conn_t *c, const pf_proto_hdr_t *hdr, const uint8_t *pkt,
	                             size_t avail);
	/*
	 * Called for raw bytes while c->raw_mode is set (the startup phase, before message
	 * framing applies). Returns how many bytes it consumed (0 = needs more), or a negative
	 * value after it closed c.
	 */
	int (*on_raw)(pf_conn_t *c, const uint8_t *data, size_t len);
	void (*on_event)(pf_conn_t *c, pf_conn_event_t ev, int status);
	/*
	 * After PF_PKT_FORWARD_LAST: the bytes are queued to the peer (possibly still being
	 * written, in which case c reads no more until they are out). May relink c.
	 */
	void (*on_forwarded)(pf_conn_t *c);
	/* Called from the close callback, once nothing refers to c any more: free it here. */
	void (*on_free)(pf_conn_t *c);
} pf_conn_ops_t;

struct pf_conn {
	/* The libuv handle (from the loop's slab): NULL before the socket exists, and while the
	 * connection is parked (pf_conn_park); set from the first open to the close callback. */
	pf_net_handle_t *h;
	const pf_conn_ops_t *ops;
	pf_net_t *net;     /* the loop it lives on */
	pf_transport_t tp; /* every byte in or out of the socket passes through it */
	pf_conn_t *peer;   /* where PF_PKT_FORWARD sends bytes; NULL = nowhere (dropped) */
	uint64_t id;       /* unique for the life of the process (SHOW CLIENTS id) */
	bool is_unix : 1;
	bool is_client : 1;
	bool raw_mode : 1;        /* before framing: startup packet, SSL negotiation */
	bool closing : 1;         /* pf_conn_close() was called */
	bool reading : 1;         /* uv_read_start is active */
	bool read_paused : 1;     /* the owner holds processing back (reading goes on until full) */
	bool suspended : 1;       /* SUSPEND: no reading until RESUME */
	bool throttled : 1;       /* sbuf_loopcnt reached: reading resumes next loop iteration */
	bool resume_pending : 1;  /* pf_conn_defer_resume(): processing resumes next iteration */
	bool fwd_pending : 1;     /* a forward write borrows rbuf */
	bool in_process : 1;      /* re-entrancy guard for pf_conn_process() */
	bool handle_open : 1;     /* the uv handle is initialised and not yet closed */
	bool connect_pending : 1; /* an outgoing connect request refers to c */
	bool lingering : 1;       /* closing: waiting for queued bytes to leave */
	bool out_blocked : 1;     /* too much of our own output queued: no processing (reading goes
	                           * on until the buffer is full) */
	bool read_done : 1;       /* the peer's EOF or a read error ended reading (read_status) */
	bool end_delivered : 1;   /* ... and ops->on_event() was told */
	bool fwd_open : 1;        /* fwd_start is valid */
	bool pkt_forward : 1;     /* pkt_remain's bytes are forwarded (else skipped) */
	bool parked : 1;          /* idle without a handle: park_fd waits in net->park_epfd */
	bool reap : 1;            /* handle-less after a park: freed from net->reaper when closed */
	bool rbuf_small : 1;      /* rbuf is a small buffer (PF_CONN_SMALL_RBUF bytes, malloc's) */
	bool rbuf_full_size : 1; /* a client that filled a small buffer: full ones until it parks */
	bool rcvbuf_raised : 1;  /* SO_RCVBUF raised once (see keep_acks_readable in conn.c) */
	/* The two ends' codes are libuv's (-errno, >= -4095), stored in 16 bits (pf_conn_status16)
	 * to keep the struct small: one of these per idle client. */
	int16_t read_status;     /* 0 for EOF, else the read error */
	int16_t send_error;      /* our own output failed (-errno): reported as PF_CONN_EV_ERROR */
	int park_fd;             /* while parked: the socket */
	uint32_t reads_this_iteration;
	uint8_t *rbuf;
	uint32_t rcap, rpos, rend; /* unprocessed bytes are rbuf[rpos, rend) */
	uint32_t fwd_start;        /* start of the forward region not yet flushed */
	uint32_t pkt_remain;       /* bytes of the current message still to pass */
	uint32_t head;             /* PF_PKT_NEED_HEAD: bytes wanted; PF_PKT_REPLACED: replaced */
	uint32_t hold_max;       /* the largest message held whole (PF_CONN_HOLD_MAX by default) */
	uint32_t out_queued;     /* bytes of our own output (with overhead) the socket holds */
	uint32_t progress;       /* bumped by every read and every forward write */
	uint32_t progress_seen;  /* ... as the janitor last saw it (pf_conn_is_abandoned) */
	uv_write_t *fwd_req; /* while fwd_pending: the forward write's request (pf_net_get_wreq) */
	struct pf_conn_splices *splices; /* replaced heads in the forward region (or NULL) */
	pf_sockaddr_t addr;              /* remote (28 bytes: the next field fills its tail) */
	uint32_t read_iteration; /* loop iteration of reads_this_iteration (low 32 bits) */
	pf_usec_t connect_time;
	pf_usec_t request_time;
	pf_list_node_t node; /* the list its state puts it in */
	/* worker->throttled_conns while throttled or resume_pending; net->dead_conns to reap */
	pf_list_node_t throttle_node;
};

/* A libuv status (< 0) as pf_conn_t keeps it: anything below int16_t (never from libuv, whose
 * codes are >= -4095) is kept as UV_EIO rather than wrapped into a wrong or positive code. */
static inline int16_t pf_conn_status16(long status)
{
	assert(status < 0);
	return status >= INT16_MIN ? (int16_t)status : (int16_t)UV_EIO;
}

/* Initialises c (zeroed by the caller) with ops; the handle is not yet created. */
void pf_conn_init(pf_conn_t *c, pf_net_t *net, const pf_conn_ops_t *ops, bool is_client);

/* Accepts a pending connection from listener into c and starts reading. Returns 0 or -errno. */
PF_MUSTCHECK int pf_conn_accept(pf_conn_t *c, uv_stream_t *listener, bool is_unix);

/* Takes over fd, a TCP socket accept(2) returned (a listener being drained), and starts
 * reading. Returns 0 or -errno (fd is closed on failure). */
PF_MUSTCHECK int pf_conn_adopt_tcp(pf_conn_t *c, uv_loop_t *loop, int fd);

/*
 * Starts an outgoing connection to addr (TCP) or to the unix socket path (when path != NULL).
 * ops->on_event(PF_CONN_EV_CONNECTED, status) follows. Returns 0 or -errno (then nothing
 * follows, and c must still be closed with pf_conn_close()).
 */
PF_MUSTCHECK int pf_conn_connect(pf_conn_t *c, const struct sockaddr *addr, const char *path);

/* Re-runs processing of buffered bytes and restarts reading as appropriate. */
void pf_conn_resume(pf_conn_t *c);

/*
 * Holds back (true) or allows (false) processing of c's input: buffered bytes stay; the socket is
 * still read until the buffer is full (so an EOF or reset is noticed), then reading stops.
 */
void pf_conn_pause_reading(pf_conn_t *c, bool paused);

/*
 * Processes c's buffered input a little later, from the event loop (which does not block
 * meanwhile), instead of now: bounds the nesting of one connection's work inside another's.
 */
void pf_conn_defer_resume(pf_conn_t *c);

/* Lets a connection throttled by sbuf_loopcnt read again (the worker's next iteration). */
void pf_conn_unthrottle(pf_conn_t *c);

/* A new loop iteration began: throttled connections read again, deferred ones process. */
void pf_conn_next_iteration(pf_net_t *n);

/* SUSPEND (true) / RESUME (false): stops or restarts reading, independently of pausing. */
void pf_conn_suspend(pf_conn_t *c, bool on);

/*
 * Sends the whole messages already marked for forwarding but not yet written (from inside a
 * packet handler: those before the current message) to the peer now.
 */
void pf_conn_flush(pf_conn_t *c);

/*
 * From inside on_packet, before returning PF_PKT_NEED_HEAD: the handler needs the first n bytes
 * of the message at hand (n <= its length and <= hold_max) to decide.
 */
void pf_conn_need_head(pf_conn_t *c, uint32_t n);

/*
 * From inside on_packet, before returning PF_PKT_REPLACED: the first skip bytes of the message at
 * hand (all in the buffer) are not forwarded; len bytes of prefix go to the peer in their place
 * (copied if the socket does not take them at once), after everything forwarded before, and the
 * rest of the message follows as it arrives. This is how a name inside Parse/Bind/Describe/
 * Close/Execute is rewritten without copying the payload (pf_proto_rename makes the prefix).
 */
void pf_conn_replace_head(pf_conn_t *c, const void *prefix, size_t len, uint32_t skip);

/* Replaced heads kept in the forward region until it is written (one writev with the bytes
 * around them, instead of a write of their own each). */
#define PF_CONN_SPLICES      8
#define PF_CONN_SPLICE_BYTES 512
typedef struct pf_conn_splices {
	uint32_t n, used; /* splices, bytes of data used */
	struct {
		uint32_t at, skip; /* rbuf offset of the replaced bytes, and how many */
		uint32_t off, len; /* the replacement in data, or in own */
		uint8_t *own;      /* a replacement too big for data (malloc'd), or NULL */
	} s[PF_CONN_SPLICES];
	uint8_t *retired[PF_CONN_SPLICES]; /* own buffers a forward write in flight uses */
	uint32_t n_retired;
	uint8_t data[PF_CONN_SPLICE_BYTES];
} pf_conn_splices_t;

/* Walks the buffered messages (see pf_conn_ops_t). Safe to call at any time. */
void pf_conn_process(pf_conn_t *c);

/*
 * Sends len bytes that pgfunnel made (borrowed; copied if the socket does not take them at
 * once). Dropped silently when c is closing. Nothing to check: when the bytes cannot be sent
 * (no memory, a socket error) the connection is broken and the owner gets PF_CONN_EV_ERROR
 * from the loop, after the current callback.
 */
void pf_conn_send(pf_conn_t *c, const void *data, size_t len);

/* Sends a builder's content (see pf_conn_send; a builder that failed breaks c) and empties it. */
void pf_conn_send_buf(pf_conn_t *c, pf_buf_t *b);

/*
 * Gathers c's output (pf_conn_send*) until pf_conn_uncork(c), which sends it in one write:
 * messages that go out together (a login's SASL final and its welcome) cost one system call
 * and wake the client once. One connection at a time; pf_conn_close() uncorks first.
 */
void pf_conn_cork(pf_conn_t *c);
void pf_conn_uncork(pf_conn_t *c);
/* The cork's buffer is kept between uses up to this size. */
#define PF_CONN_CORK_KEEP 8192

/*
 * Closes c: stops reading, lets already queued writes finish (bounded), then closes the handle.
 * ops->on_free(c) runs once the handle is closed and no forward write borrows c's buffer.
 * Idempotent.
 */
void pf_conn_close(pf_conn_t *c);

/*
 * For the janitor, once a second: true when c is not reading (buffer full, or its EOF waits
 * behind unprocessed bytes), neither read nor forwarded anything since the previous call, and
 * the peer has closed or reset the connection. One poll(2) call.
 */
bool pf_conn_is_abandoned(pf_conn_t *c);

/* True while bytes of c wait in the kernel-side queue of libuv (c's own writes). */
bool pf_conn_has_pending_writes(const pf_conn_t *c);

/* True while a message read from c is only partly passed on (or skipped). */
static inline bool pf_conn_mid_message(const pf_conn_t *c)
{
	return c->pkt_remain > 0;
}

/* True when c has buffered bytes not yet processed. */
static inline bool pf_conn_has_input(const pf_conn_t *c)
{
	return c->rpos < c->rend;
}

/*
 * Formats an address (sa: any struct sockaddr, e.g. a pf_sockaddr_t) as text ("127.0.0.1",
 * "::1", "unix" for anything else) and its port.
 */
void pf_conn_addr_text(const void *sa, char *host, size_t n, int *port);

/* c's socket, or -1 (not yet open, closing, closed). */
int pf_conn_fd(const pf_conn_t *c);

/*
 * Parks c if it is idle: connected, reading, nothing buffered, queued or in flight either way,
 * no peer, plain transport. A parked connection keeps its socket but not its libuv handle (the
 * slot goes back to the loop's slab): the socket waits in the loop's park epoll set, and the
 * first byte, EOF or error on it, or any call here that needs the handle (a send, SHOW's local
 * address), gives it a handle again and reading resumes as before. Returns true when parked.
 * For the janitor, on clients that have been idle a while: a park and the unpark after it cost
 * a few system calls (dup, epoll_ctl, close).
 */
bool pf_conn_park(pf_conn_t *c);

/* Closes the park epoll set of n (all its connections closed or unparked) and frees the conns
 * closed since the reaper last ran. */
void pf_conn_park_shutdown(pf_net_t *n);

/* c's local address, asked of the socket now (zeroed when unknown: not connected, closing);
 * AF_UNIX for a unix socket. Not kept in every connection: only SHOW needs it. */
void pf_conn_local_addr(const pf_conn_t *c, pf_sockaddr_t *out);

#endif
