#include "pfbuild.h"
/*
 * Unit tests for buf: exact bytes of every writer, growth, reset, message framing, detach and
 * the sticky failed flag.
 */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "pgfunnel/buf.h"

static void assert_buf_bytes(const pf_buf_t *b, const void *expected, size_t n)
{
	assert_false(b->failed);
	assert_int_equal(b->len, n);
	assert_memory_equal(b->data, expected, n);
}

static void test_init_is_empty(void **state)
{
	pf_buf_t b;

	(void)state;
	memset(&b, 0xa5, sizeof(b));
	pf_buf_init(&b);
	assert_null(b.data);
	assert_int_equal(b.len, 0);
	assert_int_equal(b.cap, 0);
	assert_false(b.failed);
	pf_buf_free(&b);
	pf_buf_free(&b); /* idempotent */
	assert_null(b.data);
}

static void test_put_integers_network_order(void **state)
{
	static const uint8_t expected[] = {
	        0x7f,                   /* u8 */
	        0x12, 0x34,             /* u16 */
	        0xde, 0xad, 0xbe, 0xef, /* u32 */
	        0xff, 0xff, 0xff, 0xff, /* i32 -1 */
	        0x80, 0x00, 0x00, 0x00, /* i32 INT32_MIN */
	        0x00, 0x00, 0x00, 0x2a, /* i32 42 */
	        0xff, 0xff,             /* u16 65535 */
	};
	pf_buf_t b;

	(void)state;
	pf_buf_init(&b);
	pf_buf_put_u8(&b, 0x7f);
	pf_buf_put_u16(&b, 0x1234);
	pf_buf_put_u32(&b, 0xdeadbeef);
	pf_buf_put_i32(&b, -1);
	pf_buf_put_i32(&b, INT32_MIN);
	pf_buf_put_i32(&b, 42);
	pf_buf_put_u16(&b, 65535);
	assert_buf_bytes(&b, expected, sizeof(expected));
	pf_buf_free(&b);
}

static void test_put_str_writes_nul(void **state)
{
	static const uint8_t expected[] = {'a', 'b', 'c', 0, 0, 'x', 'y'};
	pf_buf_t b;

	(void)state;
	pf_buf_init(&b);
	pf_buf_put_str(&b, "abc");
	pf_buf_put_str(&b, "");
	pf_buf_put_bytes(&b, "xyz", 2);
	pf_buf_put_bytes(&b, NULL, 0); /* nothing, not a failure */
	assert_buf_bytes(&b, expected, sizeof(expected));
	pf_buf_free(&b);
}

static void test_growth_keeps_content(void **state)
{
	pf_buf_t b;
	size_t i;

	(void)state;
	pf_buf_init(&b);
	for (i = 0; i < 100000; i++)
		pf_buf_put_u8(&b, (uint8_t)(i * 7));
	assert_false(b.failed);
	assert_int_equal(b.len, 100000);
	assert_true(b.cap >= b.len);
	/* Doubling growth: never more than twice what is needed. */
	assert_true(b.cap < 2 * 100000);
	for (i = 0; i < 100000; i++)
		assert_int_equal(b.data[i], (uint8_t)(i * 7));
	pf_buf_free(&b);
}

static void test_reserve(void **state)
{
	pf_buf_t b;
	uint8_t *p;

	(void)state;
	pf_buf_init(&b);
	assert_int_equal(pf_buf_reserve(&b, 1000), 0);
	assert_true(b.cap >= 1000);
	assert_int_equal(b.len, 0);
	p = b.data;
	pf_buf_put_bytes(&b, "0123456789", 10);
	/* Reserved room: no reallocation. */
	assert_ptr_equal(b.data, p);
	assert_int_equal(pf_buf_reserve(&b, 0), 0);
	pf_buf_free(&b);
}

static void test_reset_keeps_memory(void **state)
{
	static const uint8_t expected[] = {'h', 'i', 0};
	pf_buf_t b;
	uint8_t *p;
	size_t cap;

	(void)state;
	pf_buf_init(&b);
	pf_buf_put_str(&b, "some text that takes room");
	p = b.data;
	cap = b.cap;
	pf_buf_reset(&b);
	assert_int_equal(b.len, 0);
	assert_ptr_equal(b.data, p);
	assert_int_equal(b.cap, cap);
	pf_buf_put_str(&b, "hi");
	assert_buf_bytes(&b, expected, sizeof(expected));
	pf_buf_free(&b);
}

static void test_sticky_failed_on_overflow(void **state)
{
	static const uint8_t expected[] = {'o', 'k', 0};
	pf_buf_t b;

	(void)state;
	pf_buf_init(&b);
	pf_buf_put_str(&b, "ok");
	assert_int_equal(pf_buf_reserve(&b, SIZE_MAX), -ENOMEM);
	assert_true(b.failed);
	assert_int_equal(b.len, 3);
	/* Every later write is a no-op, even one that would fit. */
	pf_buf_put_u8(&b, 1);
	pf_buf_put_u16(&b, 1);
	pf_buf_put_u32(&b, 1);
	pf_buf_put_str(&b, "x");
	pf_buf_put_bytes(&b, "x", 1);
	assert_int_equal(b.len, 3);
	assert_true(b.failed);
	assert_int_equal(pf_buf_reserve(&b, 1), -ENOMEM);
	/* The bytes written before the failure are intact; reset clears the flag. */
	assert_memory_equal(b.data, expected, 3);
	pf_buf_reset(&b);
	assert_false(b.failed);
	pf_buf_put_str(&b, "ok");
	assert_buf_bytes(&b, expected, sizeof(expected));
	pf_buf_free(&b);
}

static void test_misuse_sets_failed(void **state)
{
	pf_buf_t b;

	(void)state;
	pf_buf_init(&b);
	pf_buf_put_str(&b, NULL);
	assert_true(b.failed);
	pf_buf_reset(&b);
	pf_buf_put_bytes(&b, NULL, 3);
	assert_true(b.failed);
	pf_buf_reset(&b);
	pf_buf_put_u16(&b, 0);
	pf_buf_set_u32(&b, 0, 1); /* only 2 bytes: out of range */
	assert_true(b.failed);
	pf_buf_free(&b);
}

static void test_set_u32(void **state)
{
	static const uint8_t expected[] = {0xaa, 0x01, 0x02, 0x03, 0x04, 0xbb};
	pf_buf_t b;

	(void)state;
	pf_buf_init(&b);
	pf_buf_put_u8(&b, 0xaa);
	pf_buf_put_u32(&b, 0);
	pf_buf_put_u8(&b, 0xbb);
	pf_buf_set_u32(&b, 1, 0x01020304);
	assert_buf_bytes(&b, expected, sizeof(expected));
	pf_buf_set_u32(&b, 3, 0); /* 3 + 4 > 6 */
	assert_true(b.failed);
	pf_buf_free(&b);
}

static void test_msg_framing(void **state)
{
	/* Query "SELECT 1" then Terminate: the length counts itself, not the type byte. */
	static const uint8_t expected[] = {
	        'Q', 0x00, 0x00, 0x00, 0x0d, 'S',  'E',  'L',  'E',  'C',
	        'T', ' ',  '1',  0x00, 'X',  0x00, 0x00, 0x00, 0x04,
	};
	pf_buf_t b;
	size_t s1, s2;

	(void)state;
	pf_buf_init(&b);
	s1 = pf_buf_msg_begin(&b, 'Q');
	assert_int_equal(s1, 0);
	pf_buf_put_str(&b, "SELECT 1");
	pf_buf_msg_end(&b, s1);
	s2 = pf_buf_msg_begin(&b, 'X');
	assert_int_equal(s2, 14);
	pf_buf_msg_end(&b, s2);
	assert_buf_bytes(&b, expected, sizeof(expected));
	pf_buf_free(&b);
}

static void test_msg_end_bad_start(void **state)
{
	pf_buf_t b;

	(void)state;
	pf_buf_init(&b);
	pf_buf_put_u8(&b, 'Q');
	pf_buf_put_u16(&b, 0);
	pf_buf_msg_end(&b, 0); /* fewer than 5 bytes since start */
	assert_true(b.failed);
	pf_buf_reset(&b);
	(void)pf_buf_msg_begin(&b, 'X');
	pf_buf_msg_end(&b, 100); /* beyond len */
	assert_true(b.failed);
	pf_buf_free(&b);
}

static void test_detach(void **state)
{
	static const uint8_t expected[] = {'Z', 0x00, 0x00, 0x00, 0x05, 'I'};
	pf_buf_t b;
	uint8_t *p;
	size_t n = 99;
	size_t start;

	(void)state;
	pf_buf_init(&b);
	p = pf_buf_detach(&b, &n);
	assert_null(p);
	assert_int_equal(n, 0);

	start = pf_buf_msg_begin(&b, 'Z');
	pf_buf_put_u8(&b, 'I');
	pf_buf_msg_end(&b, start);
	p = pf_buf_detach(&b, &n);
	assert_non_null(p);
	assert_int_equal(n, sizeof(expected));
	assert_memory_equal(p, expected, sizeof(expected));
	assert_null(b.data);
	assert_int_equal(b.len, 0);
	assert_int_equal(b.cap, 0);
	free(p);

	pf_buf_put_u8(&b, 1);
	b.failed = true;
	p = pf_buf_detach(&b, &n);
	assert_null(p);
	assert_int_equal(n, 0);
	assert_null(b.data);
	assert_false(b.failed);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_init_is_empty),
	        cmocka_unit_test(test_put_integers_network_order),
	        cmocka_unit_test(test_put_str_writes_nul),
	        cmocka_unit_test(test_growth_keeps_content),
	        cmocka_unit_test(test_reserve),
	        cmocka_unit_test(test_reset_keeps_memory),
	        cmocka_unit_test(test_sticky_failed_on_overflow),
	        cmocka_unit_test(test_misuse_sets_failed),
	        cmocka_unit_test(test_set_u32),
	        cmocka_unit_test(test_msg_framing),
	        cmocka_unit_test(test_msg_end_bad_start),
	        cmocka_unit_test(test_detach),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
