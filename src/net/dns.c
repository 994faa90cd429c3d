/*
 * dns: the host name cache (see include/pgfunnel/dns.h).
 */
#include "pfbuild.h"

#include <assert.h>
#include <errno.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>

#include "pgfunnel/dns.h"
#include "pgfunnel/log.h"
#include "pgfunnel/net.h"

struct pf_dns_entry {
	pf_list_node_t node; /* dns->entries */
	pf_dns_t *dns;
	char name[PF_DNS_MAX_NAME + 1];
	pf_list_t waiters; /* pf_dns_waiter_t.node */
	void *token;       /* the lookup in flight (== the entry), NULL when none */
	void *handle;      /* the resolver's own handle of that lookup */
	bool done;         /* an answer is stored (valid until expires) */
	int status;        /* 0, or the failure's code */
	pf_usec_t expires; /* when the stored answer goes stale */
	size_t n, current; /* addresses; the next one to hand out */
	pf_sockaddr_t addrs[PF_DNS_MAX_ADDRS];
	size_t n_old; /* the previous successful answer (address-change detection) */
	pf_sockaddr_t old[PF_DNS_MAX_ADDRS];
};

struct pf_dns {
	const pf_dns_ops_t *ops;
	void *arg;
	pf_list_t entries;
	size_t pending; /* lookups in flight */
	pf_usec_t max_ttl, nxdomain_ttl;
	/* pf_dns_new_uv(): what the uv resolver needs. */
	pf_net_t *net;
	void (*addr_gone)(void *arg, const char *name, const pf_sockaddr_t *addr);
	void *gone_arg;
	pf_dns_ops_t uv_ops;
};

pf_dns_t *pf_dns_new(const pf_dns_ops_t *ops, void *arg)
{
	pf_dns_t *dns = calloc(1, sizeof(*dns));

	if (!dns)
		return NULL;
	assert(ops && ops->now && ops->lookup);
	dns->ops = ops;
	dns->arg = arg;
	pf_list_init(&dns->entries);
	dns->max_ttl = 15 * PF_USEC_PER_SEC;
	dns->nxdomain_ttl = 15 * PF_USEC_PER_SEC;
	return dns;
}

static void entry_free(pf_dns_entry_t *e)
{
	pf_list_node_t *n;

	while ((n = pf_list_pop(&e->waiters)))
		PF_CONTAINER_OF(n, pf_dns_waiter_t, node)->entry = NULL;
	if (e->token) {
		if (e->dns->ops->abandon)
			e->dns->ops->abandon(e->dns->arg, e->handle);
		e->dns->pending--;
	}
	pf_list_remove(&e->dns->entries, &e->node);
	free(e);
}

void pf_dns_free(pf_dns_t *dns)
{
	pf_list_node_t *n;

	if (!dns)
		return;
	while ((n = pf_list_first(&dns->entries)))
		entry_free(PF_CONTAINER_OF(n, pf_dns_entry_t, node));
	free(dns);
}

void pf_dns_set_ttl(pf_dns_t *dns, pf_usec_t max_ttl, pf_usec_t nxdomain_ttl)
{
	dns->max_ttl = max_ttl < 0 ? 0 : max_ttl;
	dns->nxdomain_ttl = nxdomain_ttl < 0 ? 0 : nxdomain_ttl;
}

bool pf_dns_addr_equal(const pf_sockaddr_t *a, const pf_sockaddr_t *b)
{
	if (a->sa.sa_family != b->sa.sa_family)
		return false;
	if (a->sa.sa_family == AF_INET)
		return memcmp(&a->in.sin_addr, &b->in.sin_addr, sizeof(a->in.sin_addr)) == 0;
	if (a->sa.sa_family == AF_INET6)
		return memcmp(&a->in6.sin6_addr, &b->in6.sin6_addr, sizeof(a->in6.sin6_addr)) ==
		               0 &&
		       a->in6.sin6_scope_id == b->in6.sin6_scope_id;
	return false;
}

static pf_dns_entry_t *entry_find(pf_dns_t *dns, const char *name)
{
	pf_list_node_t *it, *tmp;

	PF_LIST_FOREACH(&dns->entries, it, tmp)
	{
		pf_dns_entry_t *e = PF_CONTAINER_OF(it, pf_dns_entry_t, node);

		if (strcmp(e->name, name) == 0)
			return e;
	}
	return NULL;
}

/* Drops the entries nobody waits on whose answer is stale (to make room for a new name). */
static void prune(pf_dns_t *dns, pf_usec_t now)
{
	pf_list_node_t *it, *tmp;

	PF_LIST_FOREACH(&dns->entries, it, tmp)
	{
		pf_dns_entry_t *e = PF_CONTAINER_OF(it, pf_dns_entry_t, node);

		if (!e->token && pf_list_is_empty(&e->waiters) && (!e->done || e->expires <= now))
			entry_free(e);
	}
}

/* The next address of e's answer, round-robin over them as PgBouncer hands them out. */
static void take_addr(pf_dns_entry_t *e, pf_sockaddr_t *out)
{
	assert(e->n > 0 && e->current < e->n);
	*out = e->addrs[e->current];
	e->current = (e->current + 1) % e->n;
}

int pf_dns_resolve(pf_dns_t *dns, const char *name, pf_dns_waiter_t *w, pf_dns_cb cb,
                   pf_sockaddr_t *out)
{
	pf_usec_t now = dns->ops->now(dns->arg);
	pf_dns_entry_t *e;
	int rc;

	assert(w && cb && !w->entry);
	if (strlen(name) > PF_DNS_MAX_NAME)
		return -ENAMETOOLONG;
	e = entry_find(dns, name);
	if (!e) {
		if (dns->entries.len >= PF_DNS_MAX_NAMES)
			prune(dns, now);
		if (dns->entries.len >= PF_DNS_MAX_NAMES)
			return -EAGAIN;
		e = calloc(1, sizeof(*e));
		if (!e)
			return -ENOMEM;
		e->dns = dns;
		pf_strlcpy(e->name, name, sizeof(e->name));
		pf_list_init(&e->waiters);
		pf_list_append(&dns->entries, &e->node);
	}
	if (e->done && e->expires > now) {
		if (e->status < 0)
			return e->status;
		take_addr(e, out);
		return 1;
	}
	if (e->waiters.len >= PF_DNS_MAX_WAITERS)
		return -EAGAIN;
	if (!e->token) {
		/* Stale or never answered: a new lookup (the old answer stays for comparison). */
		e->token = e;
		dns->pending++;
		e->handle = NULL;
		rc = dns->ops->lookup(dns->arg, dns, e->name, e->token, &e->handle);
		if (rc < 0) {
			e->token = NULL;
			dns->pending--;
			return rc;
		}
	}
	w->cb = cb;
	w->entry = e;
	pf_list_append(&e->waiters, &w->node);
	return 0;
}

void pf_dns_cancel(pf_dns_waiter_t *w)
{
	if (!w->entry)
		return;
	pf_list_remove(&w->entry->waiters, &w->node);
	w->entry = NULL;
}

/* Tells ops->addr_gone about each address of the previous answer missing from the new one. */
static void report_gone(pf_dns_entry_t *e)
{
	pf_dns_t *dns = e->dns;

	if (!dns->ops->addr_gone)
		return;
	for (size_t i = 0; i < e->n_old; i++) {
		bool found = false;

		for (size_t j = 0; j < e->n && !found; j++)
			found = pf_dns_addr_equal(&e->old[i], &e->addrs[j]);
		if (!found)
			dns->ops->addr_gone(dns->arg, e->name, &e->old[i]);
	}
}

void pf_dns_answer(pf_dns_t *dns, void *token, int status, const pf_sockaddr_t *addrs, size_t n)
{
	pf_dns_entry_t *e = token;
	pf_usec_t now = dns->ops->now(dns->arg);
	pf_list_node_t *node;
	size_t kept = 0;

	assert(e && e->dns == dns && e->token == token);
	e->token = NULL;
	e->handle = NULL;
	dns->pending--;
	if (status == 0) {
		for (size_t i = 0; i < n && kept < PF_DNS_MAX_ADDRS; i++) {
			bool dup = false;

			if (addrs[i].sa.sa_family != AF_INET && addrs[i].sa.sa_family != AF_INET6)
				continue;
			/* getaddrinfo gives one address per socket type: keep each once. */
			for (size_t j = 0; j < kept && !dup; j++)
				dup = pf_dns_addr_equal(&e->addrs[j], &addrs[i]);
			if (!dup)
				e->addrs[kept++] = addrs[i];
		}
		if (kept == 0)
			status = UV_EAI_NONAME;
	}
	e->done = true;
	e->current = 0;
	if (status == 0) {
		e->n = kept;
		e->status = 0;
		e->expires = now + dns->max_ttl;
		report_gone(e);
		memcpy(e->old, e->addrs, kept * sizeof(e->addrs[0]));
		e->n_old = kept;
		pf_log_debug(NULL, "DNS: %s: %zu address(es), kept %lld s", e->name, kept,
		             (long long)(dns->max_ttl / PF_USEC_PER_SEC));
	} else {
		e->n = 0;
		e->status = status < 0 ? status : -EIO;
		e->expires = now + dns->nxdomain_ttl;
		pf_log_warning(NULL, "DNS lookup failed: %s: %s", e->name, uv_strerror(e->status));
	}
	/* Each waiter in turn; a callback may cancel others (they leave the list) or add more. */
	while ((node = pf_list_pop(&e->waiters)) != NULL) {
		pf_dns_waiter_t *w = PF_CONTAINER_OF(node, pf_dns_waiter_t, node);
		pf_sockaddr_t a;

		w->entry = NULL;
		if (e->status == 0) {
			take_addr(e, &a);
			w->cb(w, 0, &a);
		} else {
			w->cb(w, e->status, NULL);
		}
	}
}

void pf_dns_walk(const pf_dns_t *dns, pf_dns_walk_cb cb, void *arg)
{
	pf_list_node_t *it, *tmp;

	PF_LIST_FOREACH(&dns->entries, it, tmp)
	{
		const pf_dns_entry_t *e = PF_CONTAINER_OF(it, pf_dns_entry_t, node);

		if (e->done)
			cb(arg, e->name, e->expires, e->addrs, e->n);
	}
}

size_t pf_dns_name_count(const pf_dns_t *dns)
{
	return dns ? dns->entries.len : 0;
}

size_t pf_dns_pending_count(const pf_dns_t *dns)
{
	return dns ? dns->pending : 0;
}

/* ---- the libuv resolver ---- */

typedef struct uvres_lookup {
	uv_getaddrinfo_t req;
	pf_dns_t *dns; /* NULL: abandoned */
	void *token;
} uv_lookup_t;

static pf_usec_t uvres_now(void *arg)
{
	pf_dns_t *dns = arg;

	return pf_net_now(dns->net);
}

static void uvres_gone(void *arg, const char *name, const pf_sockaddr_t *addr)
{
	pf_dns_t *dns = arg;

	if (dns->addr_gone)
		dns->addr_gone(dns->gone_arg, name, addr);
}

static void on_getaddrinfo(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
	uv_lookup_t *l = req->data;
	pf_sockaddr_t addrs[PF_DNS_MAX_ADDRS];
	size_t n = 0;

	if (l->dns && status == 0) {
		for (struct addrinfo *ai = res; ai && n < PF_DNS_MAX_ADDRS; ai = ai->ai_next) {
			if (ai->ai_family == AF_INET &&
			    ai->ai_addrlen >= sizeof(struct sockaddr_in)) {
				memset(&addrs[n], 0, sizeof(addrs[n]));
				memcpy(&addrs[n].in, ai->ai_addr, sizeof(struct sockaddr_in));
				addrs[n++].in.sin_port = 0;
			} else if (ai->ai_family == AF_INET6 &&
			           ai->ai_addrlen >= sizeof(struct sockaddr_in6)) {
				memset(&addrs[n], 0, sizeof(addrs[n]));
				memcpy(&addrs[n].in6, ai->ai_addr, sizeof(struct sockaddr_in6));
				addrs[n++].in6.sin6_port = 0;
			}
		}
	}
	if (res)
		uv_freeaddrinfo(res);
	if (l->dns)
		pf_dns_answer(l->dns, l->token, status, addrs, n);
	free(l);
}

static int uvres_lookup(void *arg, pf_dns_t *dns, const char *name, void *token, void **handle)
{
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
	uv_lookup_t *l = calloc(1, sizeof(*l));
	int rc;

	(void)arg;
	if (!l)
		return -ENOMEM;
	l->dns = dns;
	l->token = token;
	l->req.data = l;
	rc = uv_getaddrinfo(dns->net->loop, &l->req, on_getaddrinfo, name, NULL, &hints);
	if (rc < 0) {
		free(l);
		return rc;
	}
	*handle = l;
	pf_log_noise(NULL, "DNS: looking up %s", name);
	return 0;
}

/* The request cannot be cancelled once in the threadpool: its answer is dropped. */
static void uvres_abandon(void *arg, void *handle)
{
	uv_lookup_t *l = handle;

	(void)arg;
	if (!l)
		return;
	l->dns = NULL;
	/* Not started yet: dequeue it (its callback still runs, with UV_ECANCELED, and frees l). */
	(void)uv_cancel((uv_req_t *)&l->req);
}

pf_dns_t *pf_dns_new_uv(pf_net_t *net,
                        void (*addr_gone)(void *arg, const char *name, const pf_sockaddr_t *addr),
                        void *arg)
{
	pf_dns_t *dns = calloc(1, sizeof(*dns));

	if (!dns)
		return NULL;
	dns->uv_ops.now = uvres_now;
	dns->uv_ops.lookup = uvres_lookup;
	dns->uv_ops.abandon = uvres_abandon;
	dns->uv_ops.addr_gone = uvres_gone;
	dns->ops = &dns->uv_ops;
	dns->arg = dns;
	dns->net = net;
	dns->addr_gone = addr_gone;
	dns->gone_arg = arg;
	pf_list_init(&dns->entries);
	dns->max_ttl = 15 * PF_USEC_PER_SEC;
	dns->nxdomain_ttl = 15 * PF_USEC_PER_SEC;
	return dns;
}
