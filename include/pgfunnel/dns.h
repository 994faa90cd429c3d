/*
 * dns: a cache of host name lookups in front of the resolver, as PgBouncer's dnslookup.c keeps
 * one.
 *
 * - One entry per name. A successful answer is kept dns_max_ttl, a failure (NXDOMAIN or any
 *   resolver error) dns_nxdomain_ttl; the first request after that starts a new lookup.
 * - One lookup in flight per name; the requests that arrive meanwhile wait on the entry (at
 *   most PF_DNS_MAX_WAITERS of them) and are all answered when it completes.
 * - A name with several addresses hands them out in turn, one per request.
 * - When a new answer lacks an address the previous successful answer had, ops->addr_gone is
 *   told (the servers connected to it are closed once released, as PgBouncer does).
 *
 * The cache itself does no I/O: ops->lookup starts a lookup and its answer comes back through
 * pf_dns_answer(); ops->now is the clock. pf_dns_new_uv() gives the libuv resolver (the
 * threadpool's getaddrinfo, never blocking the loop); unit tests inject their own.
 */
#ifndef PGFUNNEL_DNS_H
#define PGFUNNEL_DNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "pgfunnel/conn.h"
#include "pgfunnel/list.h"
#include "pgfunnel/util.h"

#define PF_DNS_MAX_ADDRS   16   /* addresses kept per name (the rest are ignored) */
#define PF_DNS_MAX_WAITERS 4096 /* requests queued on one name while its lookup runs */
#define PF_DNS_MAX_NAMES   1024 /* names cached; unused expired ones are dropped first */
#define PF_DNS_MAX_NAME    255  /* longest name looked up (RFC 1035) */
#define PF_DNS_MAX_ZONES   64   /* zones whose SOA serial dns_zone_check_period follows */

typedef struct pf_dns pf_dns_t;
typedef struct pf_dns_entry pf_dns_entry_t;
typedef struct pf_dns_waiter pf_dns_waiter_t;

/*
 * A request waiting for a lookup: embedded in the caller's object. cb gets status 0 and the
 * address (port 0: the caller sets it), or a negative libuv/errno code and NULL. cb is called
 * at most once, never from inside pf_dns_resolve(); pf_dns_cancel() before it runs prevents it.
 */
typedef void (*pf_dns_cb)(pf_dns_waiter_t *w, int status, const pf_sockaddr_t *addr);
struct pf_dns_waiter {
	pf_list_node_t node;
	pf_dns_entry_t *entry; /* NULL when not waiting */
	pf_dns_cb cb;
};

typedef struct pf_dns_ops {
	/* The current time (monotonic, usec). */
	pf_usec_t (*now)(void *arg);
	/*
	 * Starts a lookup of name; its answer must come later (never from inside this call)
	 * through pf_dns_answer(dns, token, ...). *handle may be set to the resolver's own handle
	 * for abandon. Returns 0, or -errno when it cannot start (pf_dns_resolve returns that).
	 */
	int (*lookup)(void *arg, pf_dns_t *dns, const char *name, void *token, void **handle);
	/* The lookup behind handle is no longer wanted (the cache is being freed): its answer,
	 * when it comes, must not reach pf_dns_answer(). May be NULL. */
	void (*abandon)(void *arg, void *handle);
	/* A new answer for name lacks addr, which the previous one had. May be NULL. */
	void (*addr_gone)(void *arg, const char *name, const pf_sockaddr_t *addr);
} pf_dns_ops_t;

/* A cache with the given ops (copied pointer: ops must outlive it). NULL: out of memory. */
pf_dns_t *pf_dns_new(const pf_dns_ops_t *ops, void *arg);

/*
 * A cache resolving with uv_getaddrinfo on loop (the threadpool), clock = pf_net_now(net);
 * addr_gone(arg, name, addr) as in ops (may be NULL).
 */
pf_dns_t *pf_dns_new_uv(pf_net_t *net,
                        void (*addr_gone)(void *arg, const char *name, const pf_sockaddr_t *addr),
                        void *arg);

/*
 * resolv_conf: read path's "nameserver ADDR" lines (IPv4; at most 3, as glibc; "ADDR:PORT" is
 * accepted too, which tests use) and look names up with glibc's stub resolver (res_nquery in
 * the thread pool) asking those servers, falling back to the system's getaddrinfo (so
 * /etc/hosts names still resolve) when DNS has no answer. 0, or -errno (no nameserver, file
 * unreadable). Only for a cache from pf_dns_new_uv(), before its first lookup.
 */
PF_MUSTCHECK int pf_dns_set_resolv_conf(pf_dns_t *dns, const char *path);

/*
 * dns_zone_check_period (usec, 0 = off): every period, query the SOA serial of each zone of the
 * cached names and look again at the names of a zone whose serial grew, as PgBouncer does.
 * Only for a cache from pf_dns_new_uv(). Returns 0 or -errno.
 */
int pf_dns_set_zone_check(pf_dns_t *dns, pf_usec_t period);

/* For SHOW DNS_ZONES: each zone followed, its last serial, how many cached names it has. */
typedef void (*pf_dns_zone_cb)(void *arg, const char *zone, uint32_t serial, size_t names);
void pf_dns_walk_zones(const pf_dns_t *dns, pf_dns_zone_cb cb, void *arg);
size_t pf_dns_zone_count(const pf_dns_t *dns);

/* Frees the cache; waiters still queued are dropped without a call (cancel them first). */
void pf_dns_free(pf_dns_t *dns);

/* dns_max_ttl and dns_nxdomain_ttl (usec); read when an answer is stored. */
void pf_dns_set_ttl(pf_dns_t *dns, pf_usec_t max_ttl, pf_usec_t nxdomain_ttl);

/*
 * Resolves name for w. Returns 1 with *out filled (a fresh cached answer: no callback), 0 when
 * w waits (cb is called later), or a negative code: a fresh cached failure (the lookup's own
 * code), -ENAMETOOLONG, -EAGAIN (too many waiters), -ENOMEM.
 */
PF_MUSTCHECK int pf_dns_resolve(pf_dns_t *dns, const char *name, pf_dns_waiter_t *w, pf_dns_cb cb,
                                pf_sockaddr_t *out);

/* Removes w from its queue, if it waits. Idempotent. */
void pf_dns_cancel(pf_dns_waiter_t *w);

/*
 * The answer to the lookup token: status 0 and n addresses (IPv4/IPv6 only; copied), or a
 * negative code. Answers every waiter. Called by the resolver behind ops->lookup.
 */
void pf_dns_answer(pf_dns_t *dns, void *token, int status, const pf_sockaddr_t *addrs, size_t n);

/* For SHOW DNS_HOSTS: each cached name with the time its answer expires and its addresses. */
typedef void (*pf_dns_walk_cb)(void *arg, const char *name, pf_usec_t expires,
                               const pf_sockaddr_t *addrs, size_t n);
void pf_dns_walk(const pf_dns_t *dns, pf_dns_walk_cb cb, void *arg);

/* Names cached, lookups in flight (SHOW LISTS' dns_names / dns_queries). */
size_t pf_dns_name_count(const pf_dns_t *dns);
size_t pf_dns_pending_count(const pf_dns_t *dns);

/* Same address (family and address; the port is ignored). */
bool pf_dns_addr_equal(const pf_sockaddr_t *a, const pf_sockaddr_t *b);

#endif
