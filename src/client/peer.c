/*
 * peer: CancelRequests forwarded to the other processes of a peered group (see
 * include/pgfunnel/peer.h). After PgBouncer's accept_cancel_request_for_peer(): TTL checked
 * first, then decremented, then the peer looked up; a peer's pool_size bounds its forwards in
 * flight and the rest wait their turn.
 */
#include "pfbuild.h"

#include <assert.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgfunnel/buf.h"
#include "pgfunnel/cancelkey.h"
#include "pgfunnel/config.h"
#include "pgfunnel/conn.h"
#include "pgfunnel/dns.h"
#include "pgfunnel/list.h"
#include "pgfunnel/log.h"
#include "pgfunnel/peer.h"
#include "pgfunnel/proto.h"
#include "pgfunnel/runtime.h"
#include "pgfunnel/server.h"

/* A forward waiting for a free slot of its peer. */
typedef struct peer_req {
	pf_list_node_t node;
	uint32_t pid, key; /* the TTL already decremented */
	pf_usec_t since;
} peer_req_t;

/* One peer id's forwards: those in flight and those waiting. */
typedef struct peer_slot {
	int peer_id;
	int in_flight;
	pf_list_t queue;
} peer_slot_t;

struct pf_peers {
	peer_slot_t **slots; /* one per peer id seen in [peers], never more than 65535 */
	size_t n, cap;
	size_t queued;   /* waiting forwards, over every slot */
	pf_list_t conns; /* forwarding connections, oldest first */
};

/* A short-lived connection to a peer that sends the 16 bytes of a CancelRequest. */
typedef struct peer_conn {
	pf_conn_t conn;
	pf_peers_t *owner;
	int peer_id;
	bool connected;
	uint32_t pid, key;
	int port;                 /* the peer's, for an address the DNS cache gives */
	pf_dns_waiter_t dns_wait; /* waiting for the peer's host name */
} peer_conn_t;

static void pump(pf_worker_t *w, peer_slot_t *slot);

static const pf_config_peer_t *find_peer(const pf_config_t *cfg, int id)
{
	for (size_t i = 0; i < cfg->n_peers; i++)
		if (cfg->peers[i].peer_id == id)
			return &cfg->peers[i];
	return NULL;
}

/* How many forwards to peer p may be in flight (PgBouncer: pool_size, else default_pool_size). */
static int slot_limit(const pf_config_t *cfg, const pf_config_peer_t *p)
{
	return p->pool_size >= 0 ? p->pool_size : cfg->default_pool_size;
}

/* The most forwards that may wait, over every peer: each stands for a CancelRequest that
 * PgBouncer would hold as a client connection, so max_client_conn bounds them too. */
static size_t queue_limit(const pf_config_t *cfg)
{
	return cfg->max_client_conn > 0 ? (size_t)cfg->max_client_conn : 1;
}

static pf_peers_t *get_peers(pf_worker_t *w)
{
	if (!w->peers) {
		if (!(w->peers = calloc(1, sizeof(*w->peers))))
			return NULL;
		pf_list_init(&w->peers->conns);
	}
	return w->peers;
}

static peer_slot_t *find_slot(pf_peers_t *ps, int id)
{
	for (size_t i = 0; i < ps->n; i++)
		if (ps->slots[i]->peer_id == id)
			return ps->slots[i];
	return NULL;
}

static peer_slot_t *get_slot(pf_peers_t *ps, int id)
{
	peer_slot_t *slot = find_slot(ps, id);

	if (slot)
		return slot;
	if (ps->n == ps->cap) {
		size_t cap = ps->cap ? ps->cap * 2 : 8;
		peer_slot_t **s = realloc(ps->slots, cap * sizeof(*s));

		if (!s)
			return NULL;
		ps->slots = s;
		ps->cap = cap;
	}
	if (!(slot = calloc(1, sizeof(*slot))))
		return NULL;
	slot->peer_id = id;
	pf_list_init(&slot->queue);
	ps->slots[ps->n++] = slot;
	return slot;
}

/* Ends a forwarding connection and gives back its slot; starts nothing new. */
static peer_slot_t *release(peer_conn_t *pc)
{
	pf_peers_t *ps = pc->owner;
	peer_slot_t *slot = find_slot(ps, pc->peer_id);

	assert(slot && slot->in_flight > 0);
	pf_dns_cancel(&pc->dns_wait);
	pf_list_remove(&ps->conns, &pc->conn.node);
	slot->in_flight--;
	pf_conn_close(&pc->conn); /* may free pc */
	return slot;
}

/* The forward is done (sent and answered by the peer's close, or failed): the next may go. */
static void finish(peer_conn_t *pc)
{
	pf_worker_t *w = pf_conn_worker(&pc->conn);

	if (pc->conn.closing)
		return;
	pump(w, release(pc));
}

static pf_pkt_action_t peer_on_packet(pf_conn_t *conn, const pf_proto_hdr_t *hdr,
                                      const uint8_t *pkt, size_t avail)
{
	(void)hdr;
	(void)pkt;
	(void)avail;
	/* A peer says nothing after a CancelRequest; whatever it says, the forward is over. */
	finish((peer_conn_t *)conn);
	return PF_PKT_STOP;
}

/* Raw mode (set at launch): any byte at all ends the forward, even half a message header. */
static int peer_on_raw(pf_conn_t *conn, const uint8_t *data, size_t len)
{
	(void)data;
	(void)len;
	finish((peer_conn_t *)conn);
	return -1;
}

static void peer_on_event(pf_conn_t *conn, pf_conn_event_t ev, int status)
{
	peer_conn_t *pc = (peer_conn_t *)conn;

	if (ev == PF_CONN_EV_CONNECTED && status == 0) {
		pf_buf_t b;

		pc->connected = true;
		pf_buf_init(&b);
		pf_proto_fe_cancel_request(&b, pc->pid, pc->key);
		pf_conn_send_buf(conn, &b);
		pf_buf_free(&b);
		/* The peer closes the connection once it has dealt with the request. */
		return;
	}
	if (ev == PF_CONN_EV_CONNECTED)
		pf_log_warning(NULL, "could not forward cancel request to peer %d: %s", pc->peer_id,
		               uv_strerror(status));
	if (ev != PF_CONN_EV_DRAINED)
		finish(pc);
}

static void peer_on_free(pf_conn_t *conn)
{
	free(conn);
}

static const pf_conn_ops_t peer_conn_ops = {
        .on_packet = peer_on_packet,
        .on_raw = peer_on_raw,
        .on_event = peer_on_event,
        .on_free = peer_on_free,
};

static int connect_addr(peer_conn_t *pc, const pf_sockaddr_t *addr)
{
	pf_sockaddr_t a = *addr;

	if (a.sa.sa_family == AF_INET6)
		a.in6.sin6_port = htons((uint16_t)pc->port);
	else
		a.in.sin_port = htons((uint16_t)pc->port);
	return pf_conn_connect(&pc->conn, &a.sa, NULL);
}

/* The DNS cache answered the peer's host name (release() cancels the wait first). */
static void on_peer_dns(pf_dns_waiter_t *wt, int status, const pf_sockaddr_t *addr)
{
	peer_conn_t *pc = PF_CONTAINER_OF(wt, peer_conn_t, dns_wait);
	int rc = status < 0 ? status : connect_addr(pc, addr);

	if (rc < 0)
		pc->conn.ops->on_event(&pc->conn, PF_CONN_EV_CONNECTED, rc);
}

/* Connects pc to peer p: a unix socket directory, an address, or a name through the cache. */
static int connect_peer(peer_conn_t *pc, const pf_config_peer_t *p)
{
	pf_worker_t *w = pf_conn_worker(&pc->conn);
	pf_conn_t *conn = &pc->conn;
	pf_sockaddr_t addr;
	pf_dns_t *dns;
	int rc;

	if (!p->host || !p->host[0])
		return -EINVAL;
	if (p->host[0] == '/') {
		char path[108];
		int n = snprintf(path, sizeof(path), "%s/.s.PGSQL.%d", p->host, p->port);

		if (n < 0 || (size_t)n >= sizeof(path))
			return -ENAMETOOLONG;
		return pf_conn_connect(conn, NULL, path);
	}
	if (p->host[0] == '@')
		return -EAFNOSUPPORT; /* abstract sockets need libuv >= 1.46 (as [databases]) */
	pc->port = p->port;
	memset(&addr, 0, sizeof(addr));
	if (uv_inet_pton(AF_INET, p->host, &addr.in.sin_addr) == 0) {
		addr.in.sin_family = AF_INET;
		return connect_addr(pc, &addr);
	}
	if (uv_inet_pton(AF_INET6, p->host, &addr.in6.sin6_addr) == 0) {
		addr.in6.sin6_family = AF_INET6;
		return connect_addr(pc, &addr);
	}
	if (!(dns = pf_server_dns(w)))
		return -ENOMEM;
	rc = pf_dns_resolve(dns, p->host, &pc->dns_wait, on_peer_dns, &addr);
	return rc == 1 ? connect_addr(pc, &addr) : rc; /* 0: waiting (on_peer_dns) */
}

/* Starts one forward to slot's peer (which has room). Failures are logged and dropped. */
static void launch(pf_worker_t *w, peer_slot_t *slot, uint32_t pid, uint32_t key)
{
	const pf_config_peer_t *p = find_peer(w->cfg, slot->peer_id);
	peer_conn_t *pc;
	int rc;

	if (!p) {
		/* Removed by a RELOAD while the request waited. */
		pf_log_info(NULL, "could not find peer to forward request to (peer_id %d)",
		            slot->peer_id);
		return;
	}
	if (!(pc = calloc(1, sizeof(*pc)))) {
		pf_log_warning(NULL, "cancel request for peer %d dropped: out of memory",
		               slot->peer_id);
		return;
	}
	pf_conn_init(&pc->conn, &w->net, &peer_conn_ops, false);
	pc->conn.raw_mode = true;
	pc->owner = w->peers;
	pc->peer_id = slot->peer_id;
	pc->pid = pid;
	pc->key = key;
	slot->in_flight++;
	pf_list_append(&w->peers->conns, &pc->conn.node);
	pf_log_debug(NULL, "forwarding cancellation request to peer %d", slot->peer_id);
	rc = connect_peer(pc, p);
	if (rc < 0) {
		pf_log_warning(NULL, "could not forward cancel request to peer %d: %s",
		               slot->peer_id, uv_strerror(rc));
		release(pc);
	}
}

/* Starts waiting forwards while slot's peer has room. Not re-entered: launch() never finishes
 * a forward through finish(). */
static void pump(pf_worker_t *w, peer_slot_t *slot)
{
	const pf_config_peer_t *p;
	pf_list_node_t *n;

	while ((n = pf_list_first(&slot->queue))) {
		peer_req_t *r = PF_CONTAINER_OF(n, peer_req_t, node);

		p = find_peer(w->cfg, slot->peer_id);
		if (p && slot->in_flight >= slot_limit(w->cfg, p))
			return;
		pf_list_remove(&slot->queue, n);
		assert(w->peers->queued > 0);
		w->peers->queued--;
		launch(w, slot, r->pid, r->key);
		free(r);
	}
}

void pf_peer_forward_cancel(pf_worker_t *w, const void *logobj, uint32_t pid, uint32_t key)
{
	const pf_config_t *cfg = w->cfg;
	int id = pf_cancel_key_peer(pid);
	const pf_config_peer_t *p;
	pf_peers_t *ps;
	peer_slot_t *slot;
	peer_req_t *r;

	assert(cfg->peer_id > 0 && id != cfg->peer_id);
	if (pf_cancel_key_ttl(key) == 0) {
		pf_log_info(logobj,
		            "failed to forward cancel request because its TTL was exhausted");
		return;
	}
	key--; /* the TTL is the key's two lowest bits, and not 0 */
	if (!(p = find_peer(cfg, id))) {
		pf_log_info(logobj, "could not find peer to forward request to (peer_id %d)", id);
		return;
	}
	if (!(ps = get_peers(w)) || !(slot = get_slot(ps, id))) {
		pf_log_warning(logobj, "cancel request for peer %d dropped: out of memory", id);
		return;
	}
	if (pf_list_is_empty(&slot->queue) && slot->in_flight < slot_limit(cfg, p)) {
		launch(w, slot, pid, key);
		return;
	}
	/* Behind those already waiting (a RELOAD may have made room for them: pump below). */
	if (ps->queued >= queue_limit(cfg) || !(r = calloc(1, sizeof(*r)))) {
		pf_log_warning(logobj, "cancel request for peer %d dropped: %zu already wait", id,
		               ps->queued);
		return;
	}
	r->pid = pid;
	r->key = key;
	r->since = pf_worker_now(w);
	pf_list_append(&slot->queue, &r->node);
	ps->queued++;
	pf_log_debug(logobj, "cancel request for peer %d waits: %d in flight (pool_size)", id,
	             slot->in_flight);
	pump(w, slot);
}

void pf_peer_expire(pf_worker_t *w, pf_usec_t now)
{
	const pf_config_t *cfg = w->cfg;
	pf_peers_t *ps = w->peers;
	pf_usec_t conn_timeout;
	pf_list_node_t *n;

	if (!ps)
		return;
	/* A RELOAD may have raised a pool_size or removed a peer: let the queues move. */
	for (size_t i = 0; i < ps->n; i++)
		pump(w, ps->slots[i]);
	/* Waiting forwards: cancel_wait_timeout, as PgBouncer's waiting cancel requests. */
	if (cfg->cancel_wait_timeout > 0) {
		for (size_t i = 0; i < ps->n; i++) {
			peer_slot_t *slot = ps->slots[i];

			while ((n = pf_list_first(&slot->queue))) {
				peer_req_t *r = PF_CONTAINER_OF(n, peer_req_t, node);

				if (now - r->since <= cfg->cancel_wait_timeout)
					break;
				pf_log_warning(NULL,
				               "cancel request for peer %d timed out waiting "
				               "(cancel_wait_timeout)",
				               slot->peer_id);
				pf_list_remove(&slot->queue, n);
				ps->queued--;
				free(r);
			}
		}
	}
	/* Connections: cancel_wait_timeout, else server_connect_timeout, so a peer that never
	 * answers cannot hold its slots for ever. */
	conn_timeout = cfg->cancel_wait_timeout > 0 ? cfg->cancel_wait_timeout
	                                            : cfg->server_connect_timeout;
	if (conn_timeout <= 0)
		return;
	while ((n = pf_list_first(&ps->conns))) {
		peer_conn_t *pc = PF_CONTAINER_OF(n, peer_conn_t, conn.node);

		if (now - pc->conn.connect_time <= conn_timeout)
			break;
		pf_log_warning(NULL, "cancel request forwarded to peer %d timed out", pc->peer_id);
		finish(pc);
	}
}

void pf_peer_close_all(pf_worker_t *w)
{
	pf_peers_t *ps = w->peers;
	pf_list_node_t *n;

	if (!ps)
		return;
	for (size_t i = 0; i < ps->n; i++) {
		while ((n = pf_list_pop(&ps->slots[i]->queue))) {
			ps->queued--;
			free(PF_CONTAINER_OF(n, peer_req_t, node));
		}
	}
	assert(ps->queued == 0);
	while ((n = pf_list_first(&ps->conns)))
		release(PF_CONTAINER_OF(n, peer_conn_t, conn.node));
}

void pf_peer_free(pf_worker_t *w)
{
	pf_peers_t *ps = w->peers;

	if (!ps)
		return;
	pf_peer_close_all(w);
	for (size_t i = 0; i < ps->n; i++)
		free(ps->slots[i]);
	free(ps->slots);
	free(ps);
	w->peers = NULL;
}

bool pf_peer_pool_stats(const pf_worker_t *w, size_t i, pf_peer_pool_stats_t *out)
{
	const pf_peers_t *ps = w->peers;
	const peer_slot_t *slot;
	pf_list_node_t *it, *tmp;

	if (!ps || i >= ps->n)
		return false;
	slot = ps->slots[i];
	out->peer_id = slot->peer_id;
	out->waiting = 0;
	out->connecting = 0;
	out->active = 0;
	PF_LIST_FOREACH(&slot->queue, it, tmp)
	{
		out->waiting++;
	}
	PF_LIST_FOREACH(&ps->conns, it, tmp)
	{
		const peer_conn_t *pc = PF_CONTAINER_OF(it, peer_conn_t, conn.node);

		if (pc->peer_id != slot->peer_id)
			continue;
		if (pc->connected)
			out->active++;
		else
			out->connecting++;
	}
	return true;
}
