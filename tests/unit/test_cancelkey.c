#include "pfbuild.h"
/*
 * Unit tests for cancelkey: the table a CancelRequest is looked up in. A key is found only by
 * its exact (pid, key) pair — never by the right pid with a wrong key or the reverse, which is
 * what keeps one client from cancelling another's query. Adding, finding and removing keys,
 * idempotent removal (a client closed before login never added its key), keys that share a
 * bucket, the count, and a table with many keys.
 */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "pgfunnel/cancelkey.h"

static pf_cancel_table_t *new_table(void)
{
	pf_cancel_table_t *t = malloc(sizeof(*t)); /* 64 KiB of buckets: not on the stack */

	assert_non_null(t);
	pf_cancel_table_init(t);
	return t;
}

static void key_init(pf_cancel_key_t *k, uint32_t pid, uint32_t key)
{
	pf_cancel_key_init(k);
	k->pid = pid;
	k->key = key;
}

static void test_empty(void **state)
{
	pf_cancel_table_t *t = new_table();

	(void)state;
	assert_int_equal(t->count, 0);
	assert_null(pf_cancel_table_find(t, 0, 0));
	assert_null(pf_cancel_table_find(t, 1, 2));
	assert_null(pf_cancel_table_find(t, UINT32_MAX, UINT32_MAX));
	free(t);
}

static void test_add_find_remove(void **state)
{
	pf_cancel_table_t *t = new_table();
	pf_cancel_key_t a, b;

	(void)state;
	key_init(&a, 1234, 0xdeadbeef);
	key_init(&b, 5678, 0x01020304);
	pf_cancel_table_add(t, &a);
	assert_int_equal(t->count, 1);
	assert_ptr_equal(pf_cancel_table_find(t, 1234, 0xdeadbeef), &a);
	assert_null(pf_cancel_table_find(t, 5678, 0x01020304));
	pf_cancel_table_add(t, &b);
	assert_int_equal(t->count, 2);
	assert_ptr_equal(pf_cancel_table_find(t, 1234, 0xdeadbeef), &a);
	assert_ptr_equal(pf_cancel_table_find(t, 5678, 0x01020304), &b);

	pf_cancel_table_remove(t, &a);
	assert_int_equal(t->count, 1);
	assert_null(pf_cancel_table_find(t, 1234, 0xdeadbeef));
	assert_ptr_equal(pf_cancel_table_find(t, 5678, 0x01020304), &b);
	pf_cancel_table_remove(t, &b);
	assert_int_equal(t->count, 0);
	assert_null(pf_cancel_table_find(t, 5678, 0x01020304));

	/* A removed key can be added again (a key is reused only in tests, but it must work). */
	pf_cancel_table_add(t, &a);
	assert_ptr_equal(pf_cancel_table_find(t, 1234, 0xdeadbeef), &a);
	pf_cancel_table_remove(t, &a);
	assert_int_equal(t->count, 0);
	free(t);
}

static void test_remove_is_idempotent(void **state)
{
	pf_cancel_table_t *t = new_table();
	pf_cancel_key_t never, a, b;

	(void)state;
	/* A client that closes before login never added its key: removing it is harmless. */
	key_init(&never, 1, 1);
	pf_cancel_table_remove(t, &never);
	assert_int_equal(t->count, 0);

	key_init(&a, 1, 1);
	key_init(&b, 1, 2);
	pf_cancel_table_add(t, &a);
	pf_cancel_table_add(t, &b);
	/* never has the same pid and key as a but is not in the table: a stays. */
	pf_cancel_table_remove(t, &never);
	assert_int_equal(t->count, 2);
	assert_ptr_equal(pf_cancel_table_find(t, 1, 1), &a);

	pf_cancel_table_remove(t, &a);
	pf_cancel_table_remove(t, &a);
	pf_cancel_table_remove(t, &a);
	assert_int_equal(t->count, 1);
	assert_null(pf_cancel_table_find(t, 1, 1));
	assert_ptr_equal(pf_cancel_table_find(t, 1, 2), &b);
	pf_cancel_table_remove(t, &b);
	pf_cancel_table_remove(t, &b);
	assert_int_equal(t->count, 0);
	assert_null(pf_cancel_table_find(t, 1, 2));
	free(t);
}

static void test_wrong_half_not_found(void **state)
{
	pf_cancel_table_t *t = new_table();
	pf_cancel_key_t a;

	(void)state;
	key_init(&a, 0x11223344, 0x55667788);
	pf_cancel_table_add(t, &a);
	assert_ptr_equal(pf_cancel_table_find(t, 0x11223344, 0x55667788), &a);
	/* The right pid with a wrong key, and the reverse. */
	assert_null(pf_cancel_table_find(t, 0x11223344, 0x55667789));
	assert_null(pf_cancel_table_find(t, 0x11223344, 0xd5667788));
	assert_null(pf_cancel_table_find(t, 0x11223344, 0));
	assert_null(pf_cancel_table_find(t, 0x11223345, 0x55667788));
	assert_null(pf_cancel_table_find(t, 0, 0x55667788));
	/* The halves swapped, and each half twice. */
	assert_null(pf_cancel_table_find(t, 0x55667788, 0x11223344));
	assert_null(pf_cancel_table_find(t, 0x11223344, 0x11223344));
	assert_null(pf_cancel_table_find(t, 0x55667788, 0x55667788));
	pf_cancel_table_remove(t, &a);
	free(t);
}

/*
 * Keys with one pid share a bucket whatever the hash is; so do two of any 4097 pids. Each must
 * be found by its own pair, and removing one must leave the others.
 */
static void test_shared_bucket(void **state)
{
	enum { N = 8 };
	pf_cancel_table_t *t = new_table();
	pf_cancel_key_t k[N];

	(void)state;
	for (uint32_t i = 0; i < N; i++) {
		key_init(&k[i], 42, 1000 + i);
		pf_cancel_table_add(t, &k[i]);
	}
	assert_int_equal(t->count, N);
	for (uint32_t i = 0; i < N; i++)
		assert_ptr_equal(pf_cancel_table_find(t, 42, 1000 + i), &k[i]);
	assert_null(pf_cancel_table_find(t, 42, 1000 + N));
	/* Remove from the middle, the head and the tail of the bucket. */
	pf_cancel_table_remove(t, &k[3]);
	pf_cancel_table_remove(t, &k[0]);
	pf_cancel_table_remove(t, &k[N - 1]);
	assert_int_equal(t->count, N - 3);
	for (uint32_t i = 0; i < N; i++) {
		pf_cancel_key_t *want = i == 3 || i == 0 || i == N - 1 ? NULL : &k[i];

		assert_ptr_equal(pf_cancel_table_find(t, 42, 1000 + i), want);
	}
	for (uint32_t i = 0; i < N; i++)
		pf_cancel_table_remove(t, &k[i]);
	assert_int_equal(t->count, 0);
	free(t);
}

/*
 * Two keys with the same key but different pids in the same bucket (found by pigeonhole among
 * PF_CANCEL_BUCKETS + 1 pids, without knowing the hash): neither is found by the other's pid.
 */
static void test_same_key_other_pid_in_bucket(void **state)
{
	enum { N = PF_CANCEL_BUCKETS + 1 };
	pf_cancel_table_t *t = new_table();
	pf_cancel_key_t *k = calloc(N, sizeof(*k));

	(void)state;
	assert_non_null(k);
	for (uint32_t i = 0; i < N; i++) {
		key_init(&k[i], i * 7919u + 1, 0xabcdef);
		pf_cancel_table_add(t, &k[i]);
	}
	assert_int_equal(t->count, N);
	for (uint32_t i = 0; i < N; i++) {
		assert_ptr_equal(pf_cancel_table_find(t, i * 7919u + 1, 0xabcdef), &k[i]);
		assert_null(pf_cancel_table_find(t, i * 7919u + 1, 0xabcdee));
	}
	for (uint32_t i = 0; i < N; i += 2)
		pf_cancel_table_remove(t, &k[i]);
	for (uint32_t i = 0; i < N; i++)
		assert_ptr_equal(pf_cancel_table_find(t, i * 7919u + 1, 0xabcdef),
		                 i % 2 ? &k[i] : NULL);
	assert_int_equal(t->count, N / 2);
	free(k);
	free(t);
}

/* A small deterministic generator (xorshift32), so that a failure is reproducible. */
static uint32_t next_rand(uint32_t *s)
{
	uint32_t x = *s;

	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	return *s = x;
}

static void test_many_keys(void **state)
{
	enum { N = 30000 };
	pf_cancel_table_t *t = new_table();
	pf_cancel_key_t *k = calloc(N, sizeof(*k));
	uint32_t seed = 2463534242u;
	size_t removed = 0;

	(void)state;
	assert_non_null(k);
	for (size_t i = 0; i < N; i++) {
		uint32_t pid = next_rand(&seed);

		key_init(&k[i], pid, next_rand(&seed));
		pf_cancel_table_add(t, &k[i]);
	}
	assert_int_equal(t->count, N);
	for (size_t i = 0; i < N; i++) {
		assert_ptr_equal(pf_cancel_table_find(t, k[i].pid, k[i].key), &k[i]);
		assert_null(pf_cancel_table_find(t, k[i].pid, k[i].key ^ 1));
	}
	/* Remove every third, then check all again. */
	for (size_t i = 0; i < N; i += 3, removed++)
		pf_cancel_table_remove(t, &k[i]);
	assert_int_equal(t->count, N - removed);
	for (size_t i = 0; i < N; i++)
		assert_ptr_equal(pf_cancel_table_find(t, k[i].pid, k[i].key),
		                 i % 3 == 0 ? NULL : &k[i]);
	for (size_t i = 0; i < N; i++)
		pf_cancel_table_remove(t, &k[i]);
	assert_int_equal(t->count, 0);
	for (size_t i = 0; i < N; i += 997)
		assert_null(pf_cancel_table_find(t, k[i].pid, k[i].key));
	free(k);
	free(t);
}

/* The wire bytes of a key: pid then key, big-endian (as BackendKeyData sends them). */
static void wire(uint32_t pid, uint32_t key, uint8_t b[8])
{
	for (int i = 0; i < 4; i++) {
		b[i] = (uint8_t)(pid >> (24 - 8 * i));
		b[4 + i] = (uint8_t)(key >> (24 - 8 * i));
	}
}

/* PgBouncer 1.25.2 with peer_id = 4660 (0x1234) issued e.g. 43 34 12 5b 09 b4 d7 87. */
static void test_stamp_layout_pgbouncer(void **state)
{
	uint32_t pid = 0xc3ffff5bu, key = 0x09b4d784u;
	uint8_t b[8];

	(void)state;
	pf_cancel_key_stamp(&pid, &key, 0x1234);
	wire(pid, key, b);
	assert_int_equal(b[0], 0x43); /* sign bit cleared, the rest of b0 kept */
	assert_int_equal(b[1], 0x34);
	assert_int_equal(b[2], 0x12);
	assert_int_equal(b[3], 0x5b);
	assert_int_equal(b[4], 0x09);
	assert_int_equal(b[5], 0xb4);
	assert_int_equal(b[6], 0xd7);
	assert_int_equal(b[7], 0x87);
	assert_int_equal(pf_cancel_key_peer(pid), 0x1234);
	assert_int_equal(pf_cancel_key_ttl(key), 3);
	/* One forwarding takes one from the TTL and nothing else. */
	assert_int_equal(pf_cancel_key_ttl(key - 1), 2);
	assert_int_equal((key - 1) | PF_CANCEL_TTL_MASK, key);
}

static void test_stamp_every_peer_id(void **state)
{
	(void)state;
	for (int id = 1; id <= PF_CANCEL_MAX_PEER_ID; id++) {
		uint32_t pid = 0xffffffffu, key = 0;

		pf_cancel_key_stamp(&pid, &key, id);
		assert_int_equal(pf_cancel_key_peer(pid), id);
		assert_int_equal(pid >> 31, 0);
		assert_int_equal(pid & 0x7f0000ffu, 0x7f0000ffu);
		assert_int_equal(key, PF_CANCEL_TTL_MASK);
	}
}

/* Without peering the key stays random but for the pid's sign bit (as PgBouncer). */
static void test_stamp_no_peer(void **state)
{
	uint32_t pid = 0xffffffffu, key = 0xfffffffcu;

	(void)state;
	pf_cancel_key_stamp(&pid, &key, 0);
	assert_int_equal(pid, 0x7fffffffu);
	assert_int_equal(key, 0xfffffffcu);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_empty),
	        cmocka_unit_test(test_add_find_remove),
	        cmocka_unit_test(test_remove_is_idempotent),
	        cmocka_unit_test(test_wrong_half_not_found),
	        cmocka_unit_test(test_shared_bucket),
	        cmocka_unit_test(test_same_key_other_pid_in_bucket),
	        cmocka_unit_test(test_many_keys),
	        cmocka_unit_test(test_stamp_layout_pgbouncer),
	        cmocka_unit_test(test_stamp_every_peer_id),
	        cmocka_unit_test(test_stamp_no_peer),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
