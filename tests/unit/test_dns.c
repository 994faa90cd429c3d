#include "pfbuild.h"
/*
 * Unit tests for the DNS cache (dns.c) with an injected clock and resolver: a successful answer
 * is kept dns_max_ttl, a failure dns_nxdomain_ttl, a new lookup after expiry, one lookup in
 * flight per name with its waiters answered together (bounded), several addresses handed out
 * in turn, addresses missing from a new answer reported, cancelled waiters not called, and
 * lookups still in flight abandoned when the cache is freed.
 */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "pgfunnel/dns.h"

#define SEC PF_USEC_PER_SEC

typedef struct fake {
	pf_usec_t now;
	int lookups;    /* lookups started */
	void *token;    /* the last one's token */
	char name[300]; /* ... and name */
	int fail_start; /* lookup() returns this when < 0 */
	int abandoned;  /* abandon() calls */
	int gone;       /* addr_gone() calls */
	char gone_addr[64];
} fake_t;

static pf_usec_t fake_now(void *arg)
{
	return ((fake_t *)arg)->now;
}

static int fake_lookup(void *arg, pf_dns_t *dns, const char *name, void *token, void **handle)
{
	fake_t *f = arg;

	(void)dns;
	if (f->fail_start < 0)
		return f->fail_start;
	f->lookups++;
	f->token = token;
	*handle = f;
	strncpy(f->name, name, sizeof(f->name) - 1);
	return 0;
}

static void fake_abandon(void *arg, void *handle)
{
	fake_t *f = arg;

	assert_ptr_equal(handle, f);
	f->abandoned++;
}

static void fake_gone(void *arg, const char *name, const pf_sockaddr_t *addr)
{
	fake_t *f = arg;

	(void)name;
	f->gone++;
	inet_ntop(AF_INET, &addr->in.sin_addr, f->gone_addr, sizeof(f->gone_addr));
}

static const pf_dns_ops_t fake_ops = {
        .now = fake_now,
        .lookup = fake_lookup,
        .abandon = fake_abandon,
        .addr_gone = fake_gone,
};

static pf_sockaddr_t v4(const char *text)
{
	pf_sockaddr_t a;

	memset(&a, 0, sizeof(a));
	a.in.sin_family = AF_INET;
	assert_int_equal(inet_pton(AF_INET, text, &a.in.sin_addr), 1);
	return a;
}

static const char *text_of(const pf_sockaddr_t *a, char *buf)
{
	return inet_ntop(AF_INET, &a->in.sin_addr, buf, 64);
}

/* A waiter recording its answer. */
typedef struct rec {
	pf_dns_waiter_t w;
	int calls;
	int status;
	char addr[64];
} rec_t;

static void rec_cb(pf_dns_waiter_t *w, int status, const pf_sockaddr_t *addr)
{
	rec_t *r = PF_CONTAINER_OF(w, rec_t, w);

	r->calls++;
	r->status = status;
	if (addr)
		text_of(addr, r->addr);
	else
		r->addr[0] = '\0';
}

static int resolve(pf_dns_t *dns, const char *name, rec_t *r, char *out)
{
	pf_sockaddr_t a;
	int rc;

	memset(r, 0, sizeof(*r));
	rc = pf_dns_resolve(dns, name, &r->w, rec_cb, &a);
	if (rc == 1)
		text_of(&a, out);
	return rc;
}

static void test_positive_ttl(void **state)
{
	fake_t f = {.now = 1000 * SEC};
	pf_dns_t *dns = pf_dns_new(&fake_ops, &f);
	pf_sockaddr_t a = v4("10.0.0.1");
	char out[64];
	rec_t r;

	(void)state;
	pf_dns_set_ttl(dns, 15 * SEC, 5 * SEC);
	assert_int_equal(resolve(dns, "db.example", &r, out), 0);
	assert_int_equal(f.lookups, 1);
	assert_string_equal(f.name, "db.example");
	assert_int_equal(r.calls, 0);
	assert_int_equal(pf_dns_pending_count(dns), 1);
	pf_dns_answer(dns, f.token, 0, &a, 1);
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.status, 0);
	assert_string_equal(r.addr, "10.0.0.1");
	assert_int_equal(pf_dns_pending_count(dns), 0);
	/* Cached: answered at once, no new lookup, until dns_max_ttl has passed. */
	f.now += 14 * SEC;
	assert_int_equal(resolve(dns, "db.example", &r, out), 1);
	assert_string_equal(out, "10.0.0.1");
	assert_int_equal(f.lookups, 1);
	f.now += 1 * SEC;
	assert_int_equal(resolve(dns, "db.example", &r, out), 0);
	assert_int_equal(f.lookups, 2);
	pf_dns_answer(dns, f.token, 0, &a, 1);
	assert_int_equal(r.calls, 1);
	assert_int_equal(f.gone, 0); /* same address: nothing changed */
	assert_int_equal(pf_dns_name_count(dns), 1);
	pf_dns_free(dns);
}

static void test_negative_ttl(void **state)
{
	fake_t f = {.now = 50 * SEC};
	pf_dns_t *dns = pf_dns_new(&fake_ops, &f);
	pf_sockaddr_t a = v4("10.0.0.2");
	char out[64];
	rec_t r;

	(void)state;
	pf_dns_set_ttl(dns, 15 * SEC, 5 * SEC);
	assert_int_equal(resolve(dns, "nx.example", &r, out), 0);
	pf_dns_answer(dns, f.token, UV_EAI_NONAME, NULL, 0);
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.status, UV_EAI_NONAME);
	/* The failure is cached dns_nxdomain_ttl: the cached code, no lookup. */
	f.now += 4 * SEC;
	assert_int_equal(resolve(dns, "nx.example", &r, out), UV_EAI_NONAME);
	assert_int_equal(f.lookups, 1);
	f.now += 1 * SEC;
	assert_int_equal(resolve(dns, "nx.example", &r, out), 0);
	assert_int_equal(f.lookups, 2);
	pf_dns_answer(dns, f.token, 0, &a, 1);
	assert_string_equal(r.addr, "10.0.0.2");
	/* A success with no usable address is a failure too. */
	f.now += 20 * SEC;
	assert_int_equal(resolve(dns, "nx.example", &r, out), 0);
	pf_dns_answer(dns, f.token, 0, NULL, 0);
	assert_int_equal(r.status, UV_EAI_NONAME);
	pf_dns_free(dns);
}

static void test_one_lookup_many_waiters(void **state)
{
	fake_t f = {.now = 1 * SEC};
	pf_dns_t *dns = pf_dns_new(&fake_ops, &f);
	pf_sockaddr_t a[2] = {v4("10.0.0.1"), v4("10.0.0.2")};
	rec_t r[4];
	char out[64];

	(void)state;
	for (int i = 0; i < 4; i++)
		assert_int_equal(resolve(dns, "db.example", &r[i], out), 0);
	assert_int_equal(f.lookups, 1);
	pf_dns_cancel(&r[2].w); /* its server went away meanwhile */
	pf_dns_cancel(&r[2].w); /* idempotent */
	pf_dns_answer(dns, f.token, 0, a, 2);
	assert_int_equal(r[0].calls, 1);
	assert_int_equal(r[1].calls, 1);
	assert_int_equal(r[2].calls, 0);
	assert_int_equal(r[3].calls, 1);
	/* Several addresses are handed out in turn. */
	assert_string_equal(r[0].addr, "10.0.0.1");
	assert_string_equal(r[1].addr, "10.0.0.2");
	assert_string_equal(r[3].addr, "10.0.0.1");
	assert_int_equal(resolve(dns, "db.example", &r[0], out), 1);
	assert_string_equal(out, "10.0.0.2");
	assert_int_equal(resolve(dns, "db.example", &r[0], out), 1);
	assert_string_equal(out, "10.0.0.1");
	pf_dns_free(dns);
}

static void test_waiters_bounded(void **state)
{
	fake_t f = {.now = 1 * SEC};
	pf_dns_t *dns = pf_dns_new(&fake_ops, &f);
	rec_t *r = calloc(PF_DNS_MAX_WAITERS + 1, sizeof(*r));
	char out[64];
	char longname[PF_DNS_MAX_NAME + 2];

	(void)state;
	assert_non_null(r);
	for (int i = 0; i < PF_DNS_MAX_WAITERS; i++)
		assert_int_equal(resolve(dns, "db.example", &r[i], out), 0);
	assert_int_equal(resolve(dns, "db.example", &r[PF_DNS_MAX_WAITERS], out), -EAGAIN);
	assert_int_equal(f.lookups, 1);
	memset(longname, 'a', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	assert_int_equal(resolve(dns, longname, &r[PF_DNS_MAX_WAITERS], out), -ENAMETOOLONG);
	/* Freed with a lookup in flight: the resolver is told to drop its answer. */
	pf_dns_free(dns);
	assert_int_equal(f.abandoned, 1);
	free(r);
}

static void test_start_failure_not_cached(void **state)
{
	fake_t f = {.now = 1 * SEC, .fail_start = -ENOMEM};
	pf_dns_t *dns = pf_dns_new(&fake_ops, &f);
	pf_sockaddr_t a = v4("10.0.0.3");
	char out[64];
	rec_t r;

	(void)state;
	assert_int_equal(resolve(dns, "db.example", &r, out), -ENOMEM);
	assert_int_equal(pf_dns_pending_count(dns), 0);
	f.fail_start = 0;
	assert_int_equal(resolve(dns, "db.example", &r, out), 0);
	pf_dns_answer(dns, f.token, 0, &a, 1);
	assert_string_equal(r.addr, "10.0.0.3");
	pf_dns_free(dns);
}

static void test_address_change(void **state)
{
	fake_t f = {.now = 1 * SEC};
	pf_dns_t *dns = pf_dns_new(&fake_ops, &f);
	pf_sockaddr_t first[2] = {v4("10.0.0.1"), v4("10.0.0.2")};
	pf_sockaddr_t second[2] = {v4("10.0.0.2"), v4("10.0.0.3")};
	char out[64];
	rec_t r;

	(void)state;
	pf_dns_set_ttl(dns, 10 * SEC, 10 * SEC);
	assert_int_equal(resolve(dns, "db.example", &r, out), 0);
	pf_dns_answer(dns, f.token, 0, first, 2);
	assert_int_equal(f.gone, 0);
	/* Expired, looked up again: 10.0.0.1 is gone (10.0.0.2 stays). */
	f.now += 10 * SEC;
	assert_int_equal(resolve(dns, "db.example", &r, out), 0);
	pf_dns_answer(dns, f.token, 0, second, 2);
	assert_int_equal(f.gone, 1);
	assert_string_equal(f.gone_addr, "10.0.0.1");
	/* A failure in between keeps the last good answer for the comparison. */
	f.now += 10 * SEC;
	assert_int_equal(resolve(dns, "db.example", &r, out), 0);
	pf_dns_answer(dns, f.token, UV_EAI_AGAIN, NULL, 0);
	assert_int_equal(f.gone, 1);
	f.now += 10 * SEC;
	assert_int_equal(resolve(dns, "db.example", &r, out), 0);
	pf_dns_answer(dns, f.token, 0, first, 1); /* only 10.0.0.1 now */
	assert_int_equal(f.gone, 3);              /* .2 and .3 gone */
	pf_dns_free(dns);
}

typedef struct walk_acc {
	int names;
	pf_usec_t expires;
	size_t n;
} walk_acc_t;

static void walk_cb(void *arg, const char *name, pf_usec_t expires, const pf_sockaddr_t *addrs,
                    size_t n)
{
	walk_acc_t *acc = arg;

	(void)name;
	(void)addrs;
	acc->names++;
	acc->expires = expires;
	acc->n = n;
}

static void test_duplicates_and_walk(void **state)
{
	fake_t f = {.now = 7 * SEC};
	pf_dns_t *dns = pf_dns_new(&fake_ops, &f);
	/* getaddrinfo lists an address once per socket type when not told one. */
	pf_sockaddr_t a[3] = {v4("10.0.0.1"), v4("10.0.0.1"), v4("10.0.0.4")};
	walk_acc_t acc = {0};
	char out[64];
	rec_t r;

	(void)state;
	pf_dns_set_ttl(dns, 15 * SEC, 15 * SEC);
	assert_int_equal(resolve(dns, "db.example", &r, out), 0);
	pf_dns_walk(dns, walk_cb, &acc);
	assert_int_equal(acc.names, 0); /* no answer yet */
	pf_dns_answer(dns, f.token, 0, a, 3);
	pf_dns_walk(dns, walk_cb, &acc);
	assert_int_equal(acc.names, 1);
	assert_int_equal(acc.n, 2);
	assert_int_equal(acc.expires, 22 * SEC);
	pf_dns_free(dns);
}

static void test_names_bounded(void **state)
{
	fake_t f = {.now = 1 * SEC};
	pf_dns_t *dns = pf_dns_new(&fake_ops, &f);
	pf_sockaddr_t a = v4("10.0.0.9");
	char name[32], out[64];
	rec_t r;

	(void)state;
	pf_dns_set_ttl(dns, 1 * SEC, 1 * SEC);
	for (int i = 0; i < PF_DNS_MAX_NAMES; i++) {
		snprintf(name, sizeof(name), "h%d.example", i);
		assert_int_equal(resolve(dns, name, &r, out), 0);
		pf_dns_answer(dns, f.token, 0, &a, 1);
	}
	assert_int_equal(pf_dns_name_count(dns), PF_DNS_MAX_NAMES);
	/* Full of fresh answers: a new name is refused; once they expired, they make room. */
	assert_int_equal(resolve(dns, "new.example", &r, out), -EAGAIN);
	f.now += 2 * SEC;
	assert_int_equal(resolve(dns, "new.example", &r, out), 0);
	assert_int_equal(pf_dns_name_count(dns), 1);
	pf_dns_free(dns);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_positive_ttl),
	        cmocka_unit_test(test_negative_ttl),
	        cmocka_unit_test(test_one_lookup_many_waiters),
	        cmocka_unit_test(test_waiters_bounded),
	        cmocka_unit_test(test_start_failure_not_cached),
	        cmocka_unit_test(test_address_change),
	        cmocka_unit_test(test_duplicates_and_walk),
	        cmocka_unit_test(test_names_bounded),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
