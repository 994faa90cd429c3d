/*
 * dns: the host name cache (see include/pgfunnel/dns.h).
 */
#include "pfbuild.h"

#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <resolv.h>
#include <stdio.h>
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
	/* resolv_conf: lookups through glibc's stub resolver, to these nameservers. */
	bool use_res;
	struct sockaddr_in ns[MAXNS];
	int n_ns;
	/* dns_zone_check_period: the SOA serial of each zone (the part of a name after its first
	 * dot), checked every zone_period; a zone whose serial grew has its names looked up
	 * again. */
	uv_timer_t *zone_timer;
	pf_usec_t zone_period;
	struct zone_work *zone_work; /* the check in flight */
	struct pf_dns_zone {
		char name[PF_DNS_MAX_NAME + 1];
		uint32_t serial;
	} zones[PF_DNS_MAX_ZONES];
	size_t n_zones;
};

/* A new cache's common part (PgBouncer's default TTLs until pf_dns_set_ttl). */
static void dns_init(pf_dns_t *dns, const pf_dns_ops_t *ops, void *arg)
{
	assert(ops && ops->now && ops->lookup);
	dns->ops = ops;
	dns->arg = arg;
	pf_list_init(&dns->entries);
	dns->max_ttl = 15 * PF_USEC_PER_SEC;
	dns->nxdomain_ttl = 15 * PF_USEC_PER_SEC;
}

pf_dns_t *pf_dns_new(const pf_dns_ops_t *ops, void *arg)
{
	pf_dns_t *dns = calloc(1, sizeof(*dns));

	if (dns)
		dns_init(dns, ops, arg);
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

static void free_handle(uv_handle_t *h)
{
	free(h);
}

static void zone_abandon(pf_dns_t *dns);

void pf_dns_free(pf_dns_t *dns)
{
	pf_list_node_t *n;

	if (!dns)
		return;
	while ((n = pf_list_first(&dns->entries)))
		entry_free(PF_CONTAINER_OF(n, pf_dns_entry_t, node));
	zone_abandon(dns);
	if (dns->zone_timer)
		uv_close((uv_handle_t *)dns->zone_timer, free_handle);
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

/* The zone of a name: what follows its first dot, or NULL. */
static const char *zone_of(const char *name)
{
	const char *dot = strchr(name, '.');

	return dot && dot[1] ? dot + 1 : NULL;
}

static void zone_register(pf_dns_t *dns, const char *name)
{
	const char *z = zone_of(name);

	if (!z)
		return;
	for (size_t i = 0; i < dns->n_zones; i++)
		if (strcasecmp(dns->zones[i].name, z) == 0)
			return;
	if (dns->n_zones < PF_DNS_MAX_ZONES) {
		pf_strlcpy(dns->zones[dns->n_zones].name, z, sizeof(dns->zones[0].name));
		dns->zones[dns->n_zones++].serial = 0;
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
		zone_register(dns, name);
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

/* ---- glibc's stub resolver (resolv_conf, zone checks), in the thread pool ---- */

typedef struct res_work {
	uv_work_t req;
	pf_dns_t *dns; /* NULL: abandoned */
	void *token;
	char name[PF_DNS_MAX_NAME + 1];
	struct sockaddr_in ns[MAXNS];
	int n_ns;
	int status;
	size_t n;
	pf_sockaddr_t addrs[PF_DNS_MAX_ADDRS];
} res_work_t;

typedef struct zone_work {
	uv_work_t req;
	pf_dns_t *dns; /* NULL: abandoned */
	struct sockaddr_in ns[MAXNS];
	int n_ns;
	size_t n;
	char names[PF_DNS_MAX_ZONES][PF_DNS_MAX_NAME + 1];
	uint32_t serials[PF_DNS_MAX_ZONES];
	bool ok[PF_DNS_MAX_ZONES];
} zone_work_t;

/* A resolver state (thread-local use only) asking ns[] when given, else the system's. */
static int res_open(struct __res_state *st, const struct sockaddr_in *ns, int n_ns)
{
	memset(st, 0, sizeof(*st));
	if (res_ninit(st) != 0)
		return -1;
	if (n_ns > 0) {
		st->nscount = n_ns;
		for (int i = 0; i < n_ns; i++)
			st->nsaddr_list[i] = ns[i];
	}
	st->retrans = 2; /* seconds per try */
	st->retry = 2;
	return 0;
}

/* Adds the A/AAAA records of a DNS answer to w's addresses. */
static void add_answers(const unsigned char *buf, int len, res_work_t *w)
{
	ns_msg msg;
	ns_rr rr;

	if (ns_initparse(buf, len, &msg) < 0)
		return;
	for (int i = 0; i < ns_msg_count(msg, ns_s_an) && w->n < PF_DNS_MAX_ADDRS; i++) {
		pf_sockaddr_t *a = &w->addrs[w->n];

		if (ns_parserr(&msg, ns_s_an, i, &rr) < 0)
			break;
		memset(a, 0, sizeof(*a));
		if (ns_rr_type(rr) == ns_t_a && ns_rr_rdlen(rr) == 4) {
			a->in.sin_family = AF_INET;
			memcpy(&a->in.sin_addr, ns_rr_rdata(rr), 4);
			w->n++;
		} else if (ns_rr_type(rr) == ns_t_aaaa && ns_rr_rdlen(rr) == 16) {
			a->in6.sin6_family = AF_INET6;
			memcpy(&a->in6.sin6_addr, ns_rr_rdata(rr), 16);
			w->n++;
		}
	}
}

static void res_lookup_work(uv_work_t *req)
{
	res_work_t *w = req->data;
	struct __res_state st;
	unsigned char buf[4096];
	int types[] = {ns_t_a, ns_t_aaaa};
	bool again = false;

	w->status = UV_EAI_NONAME;
	if (res_open(&st, w->ns, w->n_ns) == 0) {
		for (size_t i = 0; i < PF_ARRAY_SIZE(types); i++) {
			int len = res_nquery(&st, w->name, ns_c_in, types[i], buf, sizeof(buf));

			if (len > 0)
				add_answers(buf, len, w);
			else if (st.res_h_errno == TRY_AGAIN)
				again = true;
		}
		res_nclose(&st);
	}
	if (w->n > 0) {
		w->status = 0;
		return;
	}
	/* Not in DNS: the system's lookup (/etc/hosts first, as c-ares reads it too). */
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
	int rc = getaddrinfo(w->name, NULL, &hints, &res);

	for (struct addrinfo *ai = rc == 0 ? res : NULL; ai && w->n < PF_DNS_MAX_ADDRS;
	     ai = ai->ai_next) {
		pf_sockaddr_t *a = &w->addrs[w->n];

		memset(a, 0, sizeof(*a));
		if (ai->ai_family == AF_INET && ai->ai_addrlen >= sizeof(struct sockaddr_in)) {
			memcpy(&a->in, ai->ai_addr, sizeof(a->in));
			a->in.sin_port = 0;
			w->n++;
		} else if (ai->ai_family == AF_INET6 &&
		           ai->ai_addrlen >= sizeof(struct sockaddr_in6)) {
			memcpy(&a->in6, ai->ai_addr, sizeof(a->in6));
			a->in6.sin6_port = 0;
			w->n++;
		}
	}
	if (res)
		freeaddrinfo(res);
	w->status = w->n > 0 ? 0 : again ? UV_EAI_AGAIN : UV_EAI_NONAME;
}

static void res_lookup_done(uv_work_t *req, int status)
{
	res_work_t *w = req->data;

	if (w->dns)
		pf_dns_answer(w->dns, w->token, status < 0 ? status : w->status, w->addrs, w->n);
	free(w);
}

static int uvres_lookup(void *arg, pf_dns_t *dns, const char *name, void *token, void **handle)
{
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
	int rc;

	(void)arg;
	if (dns->use_res) {
		res_work_t *w = calloc(1, sizeof(*w));

		if (!w)
			return -ENOMEM;
		w->dns = dns;
		w->token = token;
		pf_strlcpy(w->name, name, sizeof(w->name));
		memcpy(w->ns, dns->ns, sizeof(w->ns));
		w->n_ns = dns->n_ns;
		w->req.data = w;
		rc = uv_queue_work(dns->net->loop, &w->req, res_lookup_work, res_lookup_done);
		if (rc < 0) {
			free(w);
			return rc;
		}
		*handle = w;
		return 0;
	}
	uv_lookup_t *l = calloc(1, sizeof(*l));

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
	pf_dns_t *dns = arg;

	if (!handle)
		return;
	if (dns->use_res) {
		res_work_t *w = handle;

		w->dns = NULL;
		(void)uv_cancel((uv_req_t *)&w->req);
		return;
	}
	uv_lookup_t *l = handle;

	l->dns = NULL;
	/* Not started yet: dequeue it (its callback still runs, with UV_ECANCELED, and frees l). */
	(void)uv_cancel((uv_req_t *)&l->req);
}

int pf_dns_set_resolv_conf(pf_dns_t *dns, const char *path)
{
	FILE *f = fopen(path, "r");
	char line[512];

	if (!f)
		return -errno;
	dns->n_ns = 0;
	while (fgets(line, sizeof(line), f)) {
		char addr[64], *colon;
		unsigned port = NS_DEFAULTPORT;
		struct sockaddr_in *sin = &dns->ns[dns->n_ns];

		if (sscanf(line, " nameserver %63s", addr) != 1)
			continue;
		if ((colon = strchr(addr, ':')) && !strchr(colon + 1, ':')) {
			char *end;
			unsigned long p = strtoul(colon + 1, &end, 10);

			if (*end || p == 0 || p > 65535) {
				pf_log_warning(NULL, "resolv_conf %s: bad nameserver %s", path,
				               addr);
				continue;
			}
			port = (unsigned)p;
			*colon = '\0';
		}
		memset(sin, 0, sizeof(*sin));
		if (inet_pton(AF_INET, addr, &sin->sin_addr) != 1) {
			pf_log_warning(NULL, "resolv_conf %s: nameserver %s ignored (IPv4 only)",
			               path, addr);
			continue;
		}
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)port);
		if (++dns->n_ns == MAXNS)
			break;
	}
	fclose(f);
	if (dns->n_ns == 0)
		return -ENOENT;
	dns->use_res = true;
	return 0;
}

/* ---- zone checks ---- */

/* The serial of an SOA answer, or false. */
static bool soa_serial(const unsigned char *buf, int len, uint32_t *serial)
{
	ns_msg msg;
	ns_rr rr;
	char name[NS_MAXDNAME];

	if (ns_initparse(buf, len, &msg) < 0)
		return false;
	for (int i = 0; i < ns_msg_count(msg, ns_s_an); i++) {
		const unsigned char *p, *end;
		int k;

		if (ns_parserr(&msg, ns_s_an, i, &rr) < 0)
			return false;
		if (ns_rr_type(rr) != ns_t_soa)
			continue;
		p = ns_rr_rdata(rr);
		end = p + ns_rr_rdlen(rr);
		for (int part = 0; part < 2; part++) { /* MNAME, RNAME */
			k = dn_expand(ns_msg_base(msg), ns_msg_end(msg), p, name, sizeof(name));
			if (k < 0 || k > end - p)
				return false;
			p += k;
		}
		if (end - p < 20)
			return false;
		*serial = ns_get32(p);
		return true;
	}
	return false;
}

static void zone_check_work(uv_work_t *req)
{
	zone_work_t *w = req->data;
	struct __res_state st;
	unsigned char buf[4096];

	if (res_open(&st, w->ns, w->n_ns) != 0)
		return;
	for (size_t i = 0; i < w->n; i++) {
		int len = res_nquery(&st, w->names[i], ns_c_in, ns_t_soa, buf, sizeof(buf));

		w->ok[i] = len > 0 && soa_serial(buf, len, &w->serials[i]);
	}
	res_nclose(&st);
}

/* Starts a new lookup of e (no waiter): its answer refreshes the cache (and reports gone
 * addresses). */
static void requeue(pf_dns_t *dns, pf_dns_entry_t *e)
{
	if (e->token)
		return;
	e->token = e;
	e->handle = NULL;
	dns->pending++;
	if (dns->ops->lookup(dns->arg, dns, e->name, e->token, &e->handle) < 0) {
		e->token = NULL;
		dns->pending--;
	}
}

static void zone_check_done(uv_work_t *req, int status)
{
	zone_work_t *w = req->data;
	pf_dns_t *dns = w->dns;

	if (!dns || status < 0) {
		if (dns)
			dns->zone_work = NULL;
		free(w);
		return;
	}
	dns->zone_work = NULL;
	for (size_t i = 0; i < w->n; i++) {
		struct pf_dns_zone *z = NULL;

		for (size_t j = 0; j < dns->n_zones && !z; j++)
			if (strcasecmp(dns->zones[j].name, w->names[i]) == 0)
				z = &dns->zones[j];
		if (!z)
			continue;
		if (!w->ok[i]) {
			pf_log_debug(NULL, "failure to get zone '%s' serial", z->name);
			continue;
		}
		/* Serial arithmetic (RFC 1982): newer when the difference is positive. */
		if ((int32_t)(w->serials[i] - z->serial) <= 0) {
			pf_log_debug(NULL, "zone '%s' unchanged: serial=%u", z->name, z->serial);
			continue;
		}
		pf_log_info(NULL, "zone '%s' serial changed: old=%u new=%u", z->name, z->serial,
		            w->serials[i]);
		z->serial = w->serials[i];
		pf_list_node_t *it, *tmp;

		PF_LIST_FOREACH(&dns->entries, it, tmp)
		{
			pf_dns_entry_t *e = PF_CONTAINER_OF(it, pf_dns_entry_t, node);
			const char *ez = zone_of(e->name);

			if (e->done && ez && strcasecmp(ez, z->name) == 0)
				requeue(dns, e);
		}
	}
	free(w);
}

static void on_zone_timer(uv_timer_t *t)
{
	pf_dns_t *dns = t->data;
	zone_work_t *w;

	if (dns->zone_work || dns->n_zones == 0)
		return;
	if (!(w = calloc(1, sizeof(*w))))
		return;
	w->dns = dns;
	memcpy(w->ns, dns->ns, sizeof(w->ns));
	w->n_ns = dns->use_res ? dns->n_ns : 0;
	for (size_t i = 0; i < dns->n_zones; i++)
		pf_strlcpy(w->names[w->n++], dns->zones[i].name, sizeof(w->names[0]));
	w->req.data = w;
	if (uv_queue_work(dns->net->loop, &w->req, zone_check_work, zone_check_done) < 0) {
		free(w);
		return;
	}
	dns->zone_work = w;
}

static void zone_abandon(pf_dns_t *dns)
{
	if (dns->zone_work) {
		dns->zone_work->dns = NULL;
		(void)uv_cancel((uv_req_t *)&dns->zone_work->req);
		dns->zone_work = NULL;
	}
}

int pf_dns_set_zone_check(pf_dns_t *dns, pf_usec_t period)
{
	int rc;

	if (!dns->net)
		return -EINVAL;
	if (period <= 0) {
		if (dns->zone_timer)
			uv_timer_stop(dns->zone_timer);
		dns->zone_period = 0;
		return 0;
	}
	if (period == dns->zone_period)
		return 0;
	if (!dns->zone_timer) {
		if (!(dns->zone_timer = calloc(1, sizeof(*dns->zone_timer))))
			return -ENOMEM;
		rc = uv_timer_init(dns->net->loop, dns->zone_timer);
		if (rc < 0) {
			free(dns->zone_timer);
			dns->zone_timer = NULL;
			return rc;
		}
		dns->zone_timer->data = dns;
		uv_unref((uv_handle_t *)dns->zone_timer); /* never keeps the loop alive */
	}
	dns->zone_period = period;
	uint64_t ms = (uint64_t)(period / 1000);

	return uv_timer_start(dns->zone_timer, on_zone_timer, ms ? ms : 1, ms ? ms : 1);
}

void pf_dns_walk_zones(const pf_dns_t *dns, pf_dns_zone_cb cb, void *arg)
{
	for (size_t i = 0; i < dns->n_zones; i++) {
		size_t names = 0;
		pf_list_node_t *it, *tmp;

		PF_LIST_FOREACH(&dns->entries, it, tmp)
		{
			const char *ez = zone_of(PF_CONTAINER_OF(it, pf_dns_entry_t, node)->name);

			names += ez && strcasecmp(ez, dns->zones[i].name) == 0;
		}
		cb(arg, dns->zones[i].name, dns->zones[i].serial, names);
	}
}

size_t pf_dns_zone_count(const pf_dns_t *dns)
{
	return dns ? dns->n_zones : 0;
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
	dns_init(dns, &dns->uv_ops, dns);
	dns->net = net;
	dns->addr_gone = addr_gone;
	dns->gone_arg = arg;
	return dns;
}
