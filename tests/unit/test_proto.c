#include "pfbuild.h"
/*
 * Unit tests for proto. Expected wire bytes are written out literally from the PostgreSQL
 * "Message Formats" page, never computed with the code under test.
 */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgfunnel/proto.h"

/* A byte-string literal and its length without the implicit trailing NUL. */
#define LIT(s) (const uint8_t *)(s), (sizeof(s) - 1)

/* ---- helpers ---- */

static void assert_bytes(const pf_buf_t *b, const uint8_t *expected, size_t n)
{
	assert_false(b->failed);
	if (b->len != n || memcmp(b->data, expected, n) != 0) {
		size_t i;

		print_message("got %zu bytes:", b->len);
		for (i = 0; i < b->len; i++)
			print_message(" %02x", b->data[i]);
		print_message("\n");
	}
	assert_int_equal(b->len, n);
	assert_memory_equal(b->data, expected, n);
}

/* Parses a copy of the packet in a heap buffer of exactly n bytes, so ASan sees any overread. */
static int parse_startup_exact(const uint8_t *data, size_t n, pf_proto_startup_t *out,
                               uint8_t **copy)
{
	*copy = malloc(n ? n : 1);
	assert_non_null(*copy);
	memcpy(*copy, data, n);
	return pf_proto_parse_startup(*copy, n, out);
}

/*
 * Feeds every proper prefix of a valid packet (each in its own exact-size buffer) and checks
 * that each asks for more, then checks the whole packet parses to its full length.
 */
static void assert_needs_more_until_complete(const uint8_t *data, size_t n)
{
	pf_proto_startup_t s;
	size_t k;

	for (k = 0; k < n; k++) {
		uint8_t *copy;
		int rc = parse_startup_exact(data, k, &s, &copy);

		if (rc != 0)
			print_message("prefix %zu of %zu: rc %d\n", k, n, rc);
		assert_int_equal(rc, 0);
		free(copy);
	}
}

/* ---- startup packet ---- */

static const char startup_basic[] = "\x00\x00\x00\x36"
                                    "\x00\x03\x00\x00"
                                    "user\0bob\0"
                                    "database\0shop\0"
                                    "application_name\0psql\0"
                                    "\0";

static void test_startup_normal(void **state)
{
	pf_proto_startup_t s;
	uint8_t *copy;
	int rc;

	(void)state;
	rc = parse_startup_exact(LIT(startup_basic), &s, &copy);
	assert_int_equal(rc, 54);
	assert_int_equal(s.kind, PF_PROTO_STARTUP_NORMAL);
	assert_int_equal(s.major, 3);
	assert_int_equal(s.minor, 0);
	assert_int_equal(s.nparams, 3);
	assert_string_equal(s.params[0].name, "user");
	assert_string_equal(s.params[0].value, "bob");
	assert_string_equal(s.params[1].name, "database");
	assert_string_equal(s.params[1].value, "shop");
	assert_string_equal(s.params[2].name, "application_name");
	assert_string_equal(s.params[2].value, "psql");
	assert_string_equal(s.user, "bob");
	assert_string_equal(s.database, "shop");
	assert_null(s.options);
	assert_null(s.replication);
	/* Pointers go into the caller's data, not into copies. */
	assert_ptr_equal(s.user, (const char *)copy + 13);
	assert_ptr_equal(s.database, (const char *)copy + 26);
	assert_string_equal(pf_proto_startup_get(&s, "application_name"), "psql");
	assert_null(pf_proto_startup_get(&s, "Application_Name"));
	assert_null(pf_proto_startup_get(&s, "client_encoding"));
	free(copy);
	assert_needs_more_until_complete(LIT(startup_basic));
}

static void test_startup_trailing_bytes_not_consumed(void **state)
{
	static const char two[] = "\x00\x00\x00\x12"
	                          "\x00\x03\x00\x00"
	                          "user\0bob\0"
	                          "\0"
	                          "Q\x00\x00\x00";
	pf_proto_startup_t s;

	(void)state;
	assert_int_equal(pf_proto_parse_startup(LIT(two), &s), 18);
	assert_string_equal(s.user, "bob");
}

static void test_startup_database_defaults_to_user(void **state)
{
	static const char no_db[] = "\x00\x00\x00\x12"
	                            "\x00\x03\x00\x00"
	                            "user\0bob\0"
	                            "\0";
	static const char empty_db[] = "\x00\x00\x00\x1c"
	                               "\x00\x03\x00\x00"
	                               "user\0bob\0"
	                               "database\0\0"
	                               "\0";
	pf_proto_startup_t s;

	(void)state;
	assert_int_equal(pf_proto_parse_startup(LIT(no_db), &s), 18);
	assert_string_equal(s.database, "bob");
	assert_ptr_equal(s.database, s.user);
	assert_int_equal(pf_proto_parse_startup(LIT(empty_db), &s), 28);
	assert_string_equal(s.database, "bob");
	/* The raw parameter is still there, empty. */
	assert_string_equal(pf_proto_startup_get(&s, "database"), "");
}

static void test_startup_options_replication_and_repeats(void **state)
{
	static const char pkt[] = "\x00\x00\x00\x46"
	                          "\x00\x03\x00\x00"
	                          "user\0a\0"
	                          "options\0-c x=1\0"
	                          "replication\0database\0"
	                          "user\0b\0"
	                          "database\0d\0"
	                          "\0";
	pf_proto_startup_t s;

	(void)state;
	assert_int_equal(pf_proto_parse_startup(LIT(pkt), &s), 70);
	assert_int_equal(s.nparams, 5);
	/* As in Postgres, a repeated name keeps its last value. */
	assert_string_equal(s.user, "b");
	assert_string_equal(pf_proto_startup_get(&s, "user"), "b");
	assert_string_equal(s.database, "d");
	assert_string_equal(s.options, "-c x=1");
	assert_string_equal(s.replication, "database");
}

static void test_startup_missing_user(void **state)
{
	static const char no_user[] = "\x00\x00\x00\x17"
	                              "\x00\x03\x00\x00"
	                              "database\0shop\0"
	                              "\0";
	static const char empty_user[] = "\x00\x00\x00\x0f"
	                                 "\x00\x03\x00\x00"
	                                 "user\0\0"
	                                 "\0";
	static const char no_params[] = "\x00\x00\x00\x09"
	                                "\x00\x03\x00\x00"
	                                "\0";
	pf_proto_startup_t s;

	(void)state;
	assert_int_equal(pf_proto_parse_startup(LIT(no_user), &s), -EINVAL);
	assert_int_equal(pf_proto_parse_startup(LIT(empty_user), &s), -EINVAL);
	assert_int_equal(pf_proto_parse_startup(LIT(no_params), &s), -EINVAL);
}

static void test_startup_malformed_params(void **state)
{
	/* Parameters end without the final NUL. */
	static const char no_final_nul[] = "\x00\x00\x00\x11"
	                                   "\x00\x03\x00\x00"
	                                   "user\0bob\0";
	/* Odd count: a name with no value. */
	static const char odd[] = "\x00\x00\x00\x1a"
	                          "\x00\x03\x00\x00"
	                          "user\0bob\0"
	                          "database\0";
	/* Odd count where the final NUL is taken as the value: then no terminator. */
	static const char odd2[] = "\x00\x00\x00\x1b"
	                           "\x00\x03\x00\x00"
	                           "user\0bob\0"
	                           "database\0"
	                           "\0";
	/* An empty name (early terminator) followed by more data. */
	static const char empty_name[] = "\x00\x00\x00\x13"
	                                 "\x00\x03\x00\x00"
	                                 "\0"
	                                 "user\0bob\0"
	                                 "\0";
	/* A value with no NUL before the packet ends. */
	static const char unterminated[] = "\x00\x00\x00\x10"
	                                   "\x00\x03\x00\x00"
	                                   "user\0bob";
	/* Two NULs at the end: the terminator is not the last byte. */
	static const char two_terminators[] = "\x00\x00\x00\x13"
	                                      "\x00\x03\x00\x00"
	                                      "user\0bob\0"
	                                      "\0\0";
	/* Length 8 with protocol 3.0: no room even for the terminator. */
	static const char bare[] = "\x00\x00\x00\x08"
	                           "\x00\x03\x00\x00";
	pf_proto_startup_t s;
	uint8_t *copy;

	(void)state;
	assert_int_equal(parse_startup_exact(LIT(no_final_nul), &s, &copy), -EBADMSG);
	free(copy);
	assert_int_equal(parse_startup_exact(LIT(odd), &s, &copy), -EBADMSG);
	free(copy);
	assert_int_equal(parse_startup_exact(LIT(odd2), &s, &copy), -EBADMSG);
	free(copy);
	assert_int_equal(parse_startup_exact(LIT(empty_name), &s, &copy), -EBADMSG);
	free(copy);
	assert_int_equal(parse_startup_exact(LIT(unterminated), &s, &copy), -EBADMSG);
	free(copy);
	assert_int_equal(parse_startup_exact(LIT(two_terminators), &s, &copy), -EBADMSG);
	free(copy);
	assert_int_equal(parse_startup_exact(LIT(bare), &s, &copy), -EBADMSG);
	free(copy);
}

/* Builds a startup packet with `user` plus (n - 1) other parameters "pNN" = "v". */
static size_t make_many_params(uint8_t *p, size_t cap, unsigned n)
{
	size_t off = 8;
	unsigned i;

	memcpy(p + off, "user\0u\0", 7);
	off += 7;
	for (i = 1; i < n; i++) {
		int k = snprintf((char *)p + off, cap - off, "p%02u", i);

		off += (size_t)k + 1;
		memcpy(p + off, "v\0", 2);
		off += 2;
	}
	p[off++] = 0;
	p[0] = 0;
	p[1] = 0;
	p[2] = (uint8_t)(off >> 8);
	p[3] = (uint8_t)off;
	p[4] = 0;
	p[5] = 3;
	p[6] = 0;
	p[7] = 0;
	return off;
}

static void test_startup_too_many_params(void **state)
{
	uint8_t pkt[2048];
	pf_proto_startup_t s;
	size_t n;

	(void)state;
	n = make_many_params(pkt, sizeof(pkt), PF_PROTO_STARTUP_MAX_PARAMS);
	assert_int_equal(pf_proto_parse_startup(pkt, n, &s), (int)n);
	assert_int_equal(s.nparams, 64);
	assert_string_equal(s.params[63].name, "p63");
	n = make_many_params(pkt, sizeof(pkt), PF_PROTO_STARTUP_MAX_PARAMS + 1);
	assert_int_equal(pf_proto_parse_startup(pkt, n, &s), -E2BIG);
}

static void test_startup_ssl_gssenc(void **state)
{
	static const char ssl[] = "\x00\x00\x00\x08\x04\xd2\x16\x2f";
	static const char gss[] = "\x00\x00\x00\x08\x04\xd2\x16\x30";
	/* The client may already send a TLS ClientHello byte after it: not consumed. */
	static const char ssl_more[] = "\x00\x00\x00\x08\x04\xd2\x16\x2f\x16";
	static const char ssl_len16[] = "\x00\x00\x00\x10\x04\xd2\x16\x2f";
	static const char gss_len9[] = "\x00\x00\x00\x09\x04\xd2\x16\x30";
	pf_proto_startup_t s;
	uint8_t *copy;

	(void)state;
	assert_int_equal(parse_startup_exact(LIT(ssl), &s, &copy), 8);
	assert_int_equal(s.kind, PF_PROTO_STARTUP_SSL);
	free(copy);
	assert_needs_more_until_complete(LIT(ssl));
	assert_int_equal(parse_startup_exact(LIT(gss), &s, &copy), 8);
	assert_int_equal(s.kind, PF_PROTO_STARTUP_GSSENC);
	free(copy);
	assert_needs_more_until_complete(LIT(gss));
	assert_int_equal(pf_proto_parse_startup(LIT(ssl_more), &s), 8);
	assert_int_equal(s.kind, PF_PROTO_STARTUP_SSL);
	/* Wrong lengths are refused as soon as the code is seen. */
	assert_int_equal(pf_proto_parse_startup(LIT(ssl_len16), &s), -EMSGSIZE);
	assert_int_equal(pf_proto_parse_startup(LIT(gss_len9), &s), -EMSGSIZE);
}

static void test_startup_cancel(void **state)
{
	static const char cancel[] = "\x00\x00\x00\x10"
	                             "\x04\xd2\x16\x2e"
	                             "\x00\x00\x30\x39"
	                             "\xde\xad\xbe\xef";
	static const char cancel_len8[] = "\x00\x00\x00\x08\x04\xd2\x16\x2e";
	static const char cancel_len12[] = "\x00\x00\x00\x0c"
	                                   "\x04\xd2\x16\x2e"
	                                   "\x00\x00\x30\x39";
	static const char cancel_len20[] = "\x00\x00\x00\x14"
	                                   "\x04\xd2\x16\x2e"
	                                   "\x00\x00\x30\x39"
	                                   "\xde\xad\xbe\xef"
	                                   "\x00\x00\x00\x00";
	pf_proto_startup_t s;
	uint8_t *copy;

	(void)state;
	assert_int_equal(parse_startup_exact(LIT(cancel), &s, &copy), 16);
	assert_int_equal(s.kind, PF_PROTO_STARTUP_CANCEL);
	assert_int_equal(s.cancel_pid, 12345);
	assert_int_equal(s.cancel_key, 0xdeadbeefu);
	free(copy);
	assert_needs_more_until_complete(LIT(cancel));
	assert_int_equal(pf_proto_parse_startup(LIT(cancel_len8), &s), -EMSGSIZE);
	assert_int_equal(pf_proto_parse_startup(LIT(cancel_len12), &s), -EMSGSIZE);
	assert_int_equal(pf_proto_parse_startup(LIT(cancel_len20), &s), -EMSGSIZE);
}

static void test_startup_versions(void **state)
{
	static const char v31[] = "\x00\x00\x00\x12"
	                          "\x00\x03\x00\x01"
	                          "user\0bob\0"
	                          "\0";
	static const char v3_ffff[] = "\x00\x00\x00\x12"
	                              "\x00\x03\xff\xff"
	                              "user\0bob\0"
	                              "\0";
	static const char v20[] = "\x00\x00\x00\x12"
	                          "\x00\x02\x00\x00"
	                          "user\0bob\0"
	                          "\0";
	static const char v40[] = "\x00\x00\x00\x12"
	                          "\x00\x04\x00\x00"
	                          "user\0bob\0"
	                          "\0";
	/* 1234.5681: the next request code nobody defined. */
	static const char unknown[] = "\x00\x00\x00\x08\x04\xd2\x16\x31";
	/* A v2.0 header announcing a long packet is refused from its first 8 bytes. */
	static const char v20_prefix[] = "\x00\x00\x01\x28\x00\x02\x00\x00";
	pf_proto_startup_t s;

	(void)state;
	assert_int_equal(pf_proto_parse_startup(LIT(v31), &s), 18);
	assert_int_equal(s.kind, PF_PROTO_STARTUP_NORMAL);
	assert_int_equal(s.major, 3);
	assert_int_equal(s.minor, 1);
	assert_needs_more_until_complete(LIT(v31));
	assert_int_equal(pf_proto_parse_startup(LIT(v3_ffff), &s), 18);
	assert_int_equal(s.minor, 0xffff);
	assert_int_equal(pf_proto_parse_startup(LIT(v20), &s), -EPROTONOSUPPORT);
	assert_int_equal(pf_proto_parse_startup(LIT(v40), &s), -EPROTONOSUPPORT);
	assert_int_equal(pf_proto_parse_startup(LIT(unknown), &s), -EPROTONOSUPPORT);
	assert_int_equal(pf_proto_parse_startup(LIT(v20_prefix), &s), -EPROTONOSUPPORT);
}

static void test_startup_lengths(void **state)
{
	static const char len0[] = "\x00\x00\x00\x00\x00\x03\x00\x00";
	static const char len4[] = "\x00\x00\x00\x04\x00\x03\x00\x00";
	static const char len7[] = "\x00\x00\x00\x07\x00\x03\x00\x00";
	static const char len10000[] = "\x00\x00\x27\x10\x00\x03\x00\x00";
	static const char len10001[] = "\x00\x00\x27\x11\x00\x03\x00\x00";
	static const char len_int_max[] = "\x7f\xff\xff\xff\x00\x03\x00\x00";
	static const char len_u32_max[] = "\xff\xff\xff\xff\x00\x03\x00\x00";
	pf_proto_startup_t s;
	uint8_t *copy;

	(void)state;
	assert_int_equal(pf_proto_parse_startup(LIT(len0), &s), -EMSGSIZE);
	assert_int_equal(pf_proto_parse_startup(LIT(len4), &s), -EMSGSIZE);
	assert_int_equal(pf_proto_parse_startup(LIT(len7), &s), -EMSGSIZE);
	assert_int_equal(pf_proto_parse_startup(LIT(len10001), &s), -EMSGSIZE);
	assert_int_equal(pf_proto_parse_startup(LIT(len_int_max), &s), -EMSGSIZE);
	assert_int_equal(pf_proto_parse_startup(LIT(len_u32_max), &s), -EMSGSIZE);
	/* The length alone (4 bytes) is enough to refuse. */
	assert_int_equal(parse_startup_exact((const uint8_t *)len10001, 4, &s, &copy), -EMSGSIZE);
	free(copy);
	assert_int_equal(parse_startup_exact((const uint8_t *)len0, 4, &s, &copy), -EMSGSIZE);
	free(copy);
	/* The maximum is allowed: 8 of 10000 bytes means "need more". */
	assert_int_equal(pf_proto_parse_startup(LIT(len10000), &s), 0);
	/* Fewer than 4 bytes: need more, whatever they are. */
	assert_int_equal(pf_proto_parse_startup((const uint8_t *)len_u32_max, 3, &s), 0);
	assert_int_equal(pf_proto_parse_startup((const uint8_t *)len_u32_max, 0, &s), 0);
}

static void test_startup_max_length_accepted(void **state)
{
	uint8_t *pkt = calloc(1, PF_PROTO_STARTUP_MAX);
	pf_proto_startup_t s;
	size_t vlen;

	(void)state;
	assert_non_null(pkt);
	/* 8 header + "user\0" (5) + value + NUL + final NUL = 10000. */
	vlen = PF_PROTO_STARTUP_MAX - 8 - 5 - 1 - 1;
	pkt[2] = 0x27;
	pkt[3] = 0x10;
	pkt[5] = 3;
	memcpy(pkt + 8, "user", 5);
	memset(pkt + 13, 'u', vlen);
	assert_int_equal(pf_proto_parse_startup(pkt, PF_PROTO_STARTUP_MAX - 1, &s), 0);
	assert_int_equal(pf_proto_parse_startup(pkt, PF_PROTO_STARTUP_MAX, &s),
	                 PF_PROTO_STARTUP_MAX);
	assert_int_equal(strlen(s.user), vlen);
	free(pkt);
}

static void test_protocol_option(void **state)
{
	(void)state;
	assert_true(pf_proto_is_protocol_option("_pq_.compression"));
	assert_true(pf_proto_is_protocol_option("_pq_."));
	assert_false(pf_proto_is_protocol_option("_pq_"));
	assert_false(pf_proto_is_protocol_option("user"));
	assert_false(pf_proto_is_protocol_option(""));
}

/* ---- header reader ---- */

/* ReadyForQuery 'I', CommandComplete "SELECT 1", EmptyQueryResponse, DataRow of one NULL. */
static const char stream[] = "Z\x00\x00\x00\x05I"
                             "C\x00\x00\x00\x0dSELECT 1\0"
                             "I\x00\x00\x00\x04"
                             "D\x00\x00\x00\x0a\x00\x01\xff\xff\xff\xff";

static const pf_proto_hdr_t stream_hdrs[] = {
        {'Z', 5, 1, 6},
        {'C', 13, 9, 14},
        {'I', 4, 0, 5},
        {'D', 10, 6, 11},
};

/*
 * Walks `stream` in fragments of `step` bytes, skipping payloads, and checks the headers.
 * Each fragment is copied to an exact-size heap buffer so ASan catches overreads.
 */
static void walk_stream(size_t step)
{
	const uint8_t *data = (const uint8_t *)stream;
	size_t total = sizeof(stream) - 1;
	pf_proto_hdr_reader_t r;
	size_t pos = 0, skip = 0, nh = 0;

	pf_proto_hdr_reader_init(&r);
	while (pos < total) {
		size_t n = total - pos < step ? total - pos : step;
		size_t off = 0;
		uint8_t *frag = malloc(n);

		assert_non_null(frag);
		memcpy(frag, data + pos, n);
		while (off < n) {
			pf_proto_hdr_t h;
			size_t consumed = 99;
			int rc;

			if (skip) {
				size_t k = n - off < skip ? n - off : skip;

				off += k;
				skip -= k;
				continue;
			}
			rc = pf_proto_hdr_feed(&r, frag + off, n - off, &consumed, 1000, &h);
			assert_true(rc == 0 || rc == 1);
			assert_true(consumed <= n - off);
			assert_true(consumed <= PF_PROTO_HDR_LEN);
			off += consumed;
			if (rc == 0) {
				assert_int_equal(off, n);
				continue;
			}
			assert_true(nh < PF_ARRAY_SIZE(stream_hdrs));
			assert_int_equal(h.type, stream_hdrs[nh].type);
			assert_int_equal(h.len, stream_hdrs[nh].len);
			assert_int_equal(h.payload_len, stream_hdrs[nh].payload_len);
			assert_int_equal(h.total, stream_hdrs[nh].total);
			nh++;
			skip = h.payload_len;
		}
		free(frag);
		pos += n;
	}
	assert_int_equal(nh, PF_ARRAY_SIZE(stream_hdrs));
	assert_int_equal(skip, 0);
	assert_int_equal(r.have, 0);
}

static void test_hdr_one_byte_at_a_time(void **state)
{
	(void)state;
	walk_stream(1);
}

static void test_hdr_various_fragments(void **state)
{
	size_t step;

	(void)state;
	for (step = 2; step <= sizeof(stream); step++)
		walk_stream(step);
}

static void test_hdr_fast_path(void **state)
{
	static const char z[] = "Z\x00\x00\x00\x05I";
	pf_proto_hdr_t h;
	pf_proto_hdr_reader_t r;
	size_t consumed;

	(void)state;
	assert_int_equal(pf_proto_read_header(LIT(z), 8192, &h), 5);
	assert_int_equal(h.type, 'Z');
	assert_int_equal(h.len, 5);
	assert_int_equal(h.payload_len, 1);
	assert_int_equal(pf_proto_read_header((const uint8_t *)z, 4, 8192, &h), 0);
	pf_proto_hdr_reader_init(&r);
	assert_int_equal(pf_proto_hdr_feed(&r, LIT(z), &consumed, 8192, &h), 1);
	assert_int_equal(consumed, 5);
	assert_int_equal(h.type, 'Z');
	assert_int_equal(r.have, 0);
	/* Nothing offered: nothing consumed, need more. */
	assert_int_equal(pf_proto_hdr_feed(&r, (const uint8_t *)z, 0, &consumed, 8192, &h), 0);
	assert_int_equal(consumed, 0);
}

static void test_hdr_bad_lengths(void **state)
{
	static const char bad[][6] = {
	        "Q\x00\x00\x00\x00",
	        "Q\x00\x00\x00\x01",
	        "Q\x00\x00\x00\x02",
	        "Q\x00\x00\x00\x03",
	};
	pf_proto_hdr_reader_t r;
	pf_proto_hdr_t h;
	size_t i, j, consumed;

	(void)state;
	for (i = 0; i < PF_ARRAY_SIZE(bad); i++) {
		const uint8_t *p = (const uint8_t *)bad[i];

		assert_int_equal(pf_proto_read_header(p, 5, 8192, &h), -EBADMSG);
		pf_proto_hdr_reader_init(&r);
		assert_int_equal(pf_proto_hdr_feed(&r, p, 5, &consumed, 8192, &h), -EBADMSG);
		pf_proto_hdr_reader_init(&r);
		for (j = 0; j < 4; j++) {
			assert_int_equal(pf_proto_hdr_feed(&r, p + j, 1, &consumed, 8192, &h), 0);
			assert_int_equal(consumed, 1);
		}
		assert_int_equal(pf_proto_hdr_feed(&r, p + 4, 1, &consumed, 8192, &h), -EBADMSG);
		assert_int_equal(consumed, 1);
	}
}

static void test_hdr_type_zero(void **state)
{
	/* What a StartupMessage sent mid-session looks like: first length byte 0. */
	static const char zero[] = "\x00\x00\x00\x00\x12";
	pf_proto_hdr_reader_t r;
	pf_proto_hdr_t h;
	size_t consumed;

	(void)state;
	assert_int_equal(pf_proto_read_header(LIT(zero), 8192, &h), -EBADMSG);
	pf_proto_hdr_reader_init(&r);
	assert_int_equal(pf_proto_hdr_feed(&r, LIT(zero), &consumed, 8192, &h), -EBADMSG);
}

static void test_hdr_max_packet_size(void **state)
{
	/* Length field 0x2000 = 8192. */
	static const char at_max[] = "d\x00\x00\x20\x00";
	static const char over_max[] = "d\x00\x00\x20\x01";
	static const char huge[] = "d\xff\xff\xff\xff";
	pf_proto_hdr_reader_t r;
	pf_proto_hdr_t h;
	size_t consumed, j;

	(void)state;
	assert_int_equal(pf_proto_read_header(LIT(at_max), 8192, &h), 5);
	assert_int_equal(h.len, 8192);
	assert_int_equal(h.payload_len, 8188);
	assert_int_equal(pf_proto_read_header(LIT(over_max), 8192, &h), -EMSGSIZE);
	assert_int_equal(pf_proto_read_header(LIT(huge), 8192, &h), -EMSGSIZE);
	/* Whatever the caller's limit, a length above INT32_MAX is refused: len + 1 fits. */
	assert_int_equal(pf_proto_read_header(LIT(huge), UINT32_MAX, &h), -EMSGSIZE);

	pf_proto_hdr_reader_init(&r);
	for (j = 0; j < 4; j++)
		assert_int_equal(pf_proto_hdr_feed(&r, (const uint8_t *)over_max + j, 1, &consumed,
		                                   8192, &h),
		                 0);
	assert_int_equal(
	        pf_proto_hdr_feed(&r, (const uint8_t *)over_max + 4, 1, &consumed, 8192, &h),
	        -EMSGSIZE);
	pf_proto_hdr_reader_init(&r);
	for (j = 0; j < 4; j++)
		assert_int_equal(
		        pf_proto_hdr_feed(&r, (const uint8_t *)at_max + j, 1, &consumed, 8192, &h),
		        0);
	assert_int_equal(pf_proto_hdr_feed(&r, (const uint8_t *)at_max + 4, 1, &consumed, 8192, &h),
	                 1);
	assert_int_equal(h.type, 'd');
	assert_int_equal(h.len, 8192);
}

/* Reads a header with wire length len against limit max; returns the reader's result. */
static int read_len(uint32_t len, uint32_t max, pf_proto_hdr_t *h)
{
	uint8_t b[5] = {'Q', (uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8),
	                (uint8_t)len};
	pf_proto_hdr_reader_t r;
	pf_proto_hdr_t h2;
	size_t consumed;
	int rc = pf_proto_read_header(b, 5, max, h);

	/* The byte-at-a-time reader must agree with the fast path. */
	pf_proto_hdr_reader_init(&r);
	for (int i = 0; i < 4; i++)
		assert_int_equal(pf_proto_hdr_feed(&r, b + i, 1, &consumed, max, &h2), 0);
	assert_int_equal(pf_proto_hdr_feed(&r, b + 4, 1, &consumed, max, &h2), rc < 0 ? rc : 1);
	if (rc > 0)
		assert_int_equal(h2.total, h->total);
	return rc;
}

/*
 * The lengths at the bounds (0, 1, max-1, max, max+1, INT32_MAX, UINT32_MAX) against limits at
 * the bounds: a header the reader accepts always has total = len + 1 without wrapping, so no
 * caller can compute a whole-message size of 0 (the max_packet_size = 4294967295 bug).
 */
static void test_hdr_length_bounds(void **state)
{
	static const uint32_t limits[] = {0,
	                                  1,
	                                  4,
	                                  5,
	                                  8192,
	                                  PF_PROTO_MAX_MSG_LEN - 1,
	                                  PF_PROTO_MAX_MSG_LEN,
	                                  PF_PROTO_MAX_MSG_LEN + 1u,
	                                  UINT32_MAX - 1,
	                                  UINT32_MAX};
	pf_proto_hdr_t h;

	(void)state;
	for (size_t i = 0; i < PF_ARRAY_SIZE(limits); i++) {
		uint32_t max = limits[i];
		uint32_t eff = max < PF_PROTO_MAX_MSG_LEN ? max : PF_PROTO_MAX_MSG_LEN;
		uint32_t lens[] = {0,          1,   3,       4,          5,
		                   eff - 1,    eff, eff + 1, UINT32_MAX, PF_PROTO_MAX_MSG_LEN,
		                   0x80000000u};

		for (size_t j = 0; j < PF_ARRAY_SIZE(lens); j++) {
			uint32_t len = lens[j];
			int rc = read_len(len, max, &h);

			if (len < 4) {
				assert_int_equal(rc, -EBADMSG);
			} else if (len > eff) {
				assert_int_equal(rc, -EMSGSIZE);
			} else {
				assert_int_equal(rc, PF_PROTO_HDR_LEN);
				assert_int_equal(h.len, len);
				assert_int_equal(h.payload_len, len - 4);
				assert_int_equal(h.total, (uint64_t)len + 1);
				assert_true(h.total > h.len);
			}
		}
	}
	/* The largest message the protocol allows is accepted, and its total still fits. */
	assert_int_equal(read_len(PF_PROTO_MAX_MSG_LEN, UINT32_MAX, &h), PF_PROTO_HDR_LEN);
	assert_int_equal(h.total, 0x80000000u);
}

static void test_type_predicates(void **state)
{
	static const char fe[] = "BCdcfDEHFpPQSX";
	static const char be[] = "RK23CdcGHWDIEVvnNAtS1sZT";
	unsigned t;

	(void)state;
	for (t = 0; t < 256; t++) {
		bool want_fe = t != 0 && strchr(fe, (int)t) != NULL;
		bool want_be = t != 0 && strchr(be, (int)t) != NULL;

		if (pf_proto_is_fe_type((uint8_t)t) != want_fe ||
		    pf_proto_is_be_type((uint8_t)t) != want_be)
			print_message("type 0x%02x\n", t);
		assert_int_equal(pf_proto_is_fe_type((uint8_t)t), want_fe);
		assert_int_equal(pf_proto_is_be_type((uint8_t)t), want_be);
	}
}

/* ---- backend builders ---- */

static void test_be_error(void **state)
{
	static const char expected[] = "E\x00\x00\x00\x28"
	                               "SFATAL\0"
	                               "VFATAL\0"
	                               "C28P01\0"
	                               "Mno such user\0"
	                               "\0";
	static const char expected_dh[] = "E\x00\x00\x00\x30"
	                                  "SFATAL\0"
	                                  "VFATAL\0"
	                                  "C28P01\0"
	                                  "Mno such user\0"
	                                  "Dd1\0"
	                                  "Hh1\0"
	                                  "\0";
	static const char expected_h[] = "N\x00\x00\x00\x2c"
	                                 "SFATAL\0"
	                                 "VFATAL\0"
	                                 "C28P01\0"
	                                 "Mno such user\0"
	                                 "Hh1\0"
	                                 "\0";
	pf_buf_t b;

	(void)state;
	pf_buf_init(&b);
	pf_proto_be_error(&b, "FATAL", "28P01", "no such user", NULL, NULL);
	assert_bytes(&b, LIT(expected));
	pf_buf_reset(&b);
	pf_proto_be_error(&b, "FATAL", "28P01", "no such user", "d1", "h1");
	assert_bytes(&b, LIT(expected_dh));
	pf_buf_reset(&b);
	pf_proto_be_notice(&b, "FATAL", "28P01", "no such user", NULL, "h1");
	assert_bytes(&b, LIT(expected_h));
	pf_buf_free(&b);
}

static void test_be_notice(void **state)
{
	static const char expected[] = "N\x00\x00\x00\x33"
	                               "SWARNING\0"
	                               "VWARNING\0"
	                               "C01000\0"
	                               "Mcareful\0"
	                               "Dmore\0"
	                               "Hless\0"
	                               "\0";
	pf_buf_t b;

	(void)state;
	pf_buf_init(&b);
	pf_proto_be_notice(&b, "WARNING", "01000", "careful", "more", "less");
	assert_bytes(&b, LIT(expected));
	pf_buf_free(&b);
}

static void test_be_auth(void **state)
{
	static const char ok[] = "R\x00\x00\x00\x08\x00\x00\x00\x00";
	static const char clear[] = "R\x00\x00\x00\x08\x00\x00\x00\x03";
	static const char md5[] = "R\x00\x00\x00\x0c\x00\x00\x00\x05\x01\x02\xfe\xff";
	static const char sasl[] = "R\x00\x00\x00\x2a\x00\x00\x00\x0a"
	                           "SCRAM-SHA-256-PLUS\0"
	                           "SCRAM-SHA-256\0"
	                           "\0";
	static const char sasl_cont[] = "R\x00\x00\x00\x0d\x00\x00\x00\x0b"
	                                "r=abc";
	static const char sasl_final[] = "R\x00\x00\x00\x0d\x00\x00\x00\x0c"
	                                 "v=xyz";
	static const uint8_t salt[4] = {0x01, 0x02, 0xfe, 0xff};
	static const char *const mechs[] = {"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"};
	pf_buf_t b;

	(void)state;
	pf_buf_init(&b);
	pf_proto_be_auth_ok(&b);
	assert_bytes(&b, LIT(ok));
	pf_buf_reset(&b);
	pf_proto_be_auth_cleartext(&b);
	assert_bytes(&b, LIT(clear));
	pf_buf_reset(&b);
	pf_proto_be_auth_md5(&b, salt);
	assert_bytes(&b, LIT(md5));
	pf_buf_reset(&b);
	pf_proto_be_auth_sasl(&b, mechs, 2);
	assert_bytes(&b, LIT(sasl));
	pf_buf_reset(&b);
	pf_proto_be_auth_sasl_continue(&b, "r=abc", 5);
	assert_bytes(&b, LIT(sasl_cont));
	pf_buf_reset(&b);
	pf_proto_be_auth_sasl_final(&b, "v=xyz", 5);
	assert_bytes(&b, LIT(sasl_final));
	pf_buf_free(&b);
}

static void test_be_session_messages(void **state)
{
	static const char expected[] = "S\x00\x00\x00\x19"
	                               "client_encoding\0UTF8\0"
	                               "K\x00\x00\x00\x0c\x00\x00\x30\x39\xde\xad\xbe\xef"
	                               "Z\x00\x00\x00\x05T"
	                               "C\x00\x00\x00\x09SHOW\0"
	                               "I\x00\x00\x00\x04"
	                               "v\x00\x00\x00\x15\x00\x03\x00\x00\x00\x00\x00\x01"
	                               "_pq_.foo\0";
	static const char *const opts[] = {"_pq_.foo"};
	pf_buf_t b;

	(void)state;
	pf_buf_init(&b);
	pf_proto_be_parameter_status(&b, "client_encoding", "UTF8");
	pf_proto_be_backend_key_data(&b, 12345, 0xdeadbeef);
	pf_proto_be_ready_for_query(&b, PF_PROTO_TX_BLOCK);
	pf_proto_be_command_complete(&b, "SHOW");
	pf_proto_be_empty_query(&b);
	pf_proto_be_negotiate_protocol_version(&b, PF_PROTO_VERSION_3_0, opts, 1);
	assert_bytes(&b, LIT(expected));
	pf_buf_free(&b);
}

static void test_be_negotiate_no_options(void **state)
{
	static const char expected[] = "v\x00\x00\x00\x0c\x00\x03\x00\x00\x00\x00\x00\x00";
	pf_buf_t b;

	(void)state;
	pf_buf_init(&b);
	pf_proto_be_negotiate_protocol_version(&b, PF_PROTO_VERSION_3_0, NULL, 0);
	assert_bytes(&b, LIT(expected));
	pf_buf_free(&b);
}

static void test_be_row_description(void **state)
{
	static const char expected[] =
	        "T\x00\x00\x00\x72\x00\x05"
	        /* name: text (25), typlen -1 */
	        "name\0\x00\x00\x00\x00\x00\x00\x00\x00\x00\x19\xff\xff\xff\xff\xff\xff\x00\x00"
	        /* n: int4 (23), typlen 4 */
	        "n\0\x00\x00\x00\x00\x00\x00\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00"
	        /* ok: bool (16), typlen 1 */
	        "ok\0\x00\x00\x00\x00\x00\x00\x00\x00\x00\x10\x00\x01\xff\xff\xff\xff\x00\x00"
	        /* big: int8 (20), typlen 8 */
	        "big\0\x00\x00\x00\x00\x00\x00\x00\x00\x00\x14\x00\x08\xff\xff\xff\xff\x00\x00"
	        /* num: numeric (1700), typlen -1 */
	        "num\0\x00\x00\x00\x00\x00\x00\x00\x00\x06\xa4\xff\xff\xff\xff\xff\xff\x00\x00";
	static const char *const names[] = {"name", "n", "ok", "big", "num"};
	pf_buf_t b;

	(void)state;
	pf_buf_init(&b);
	pf_proto_be_row_description(&b, "sibqN", names);
	assert_bytes(&b, LIT(expected));
	pf_buf_free(&b);
}

static void test_be_data_row(void **state)
{
	static const char expected[] = "D\x00\x00\x00\x44\x00\x06"
	                               "\x00\x00\x00\x03"
	                               "abc"
	                               "\xff\xff\xff\xff"
	                               "\x00\x00\x00\x03"
	                               "-42"
	                               "\x00\x00\x00\x01"
	                               "t"
	                               "\x00\x00\x00\x0b"
	                               "-9000000000"
	                               "\x00\x00\x00\x14"
	                               "18446744073709551615";
	static const char expected_b[] = "D\x00\x00\x00\x0b\x00\x01\x00\x00\x00\x01"
	                                 "f";
	static const char expected_empty[] = "D\x00\x00\x00\x0e\x00\x02"
	                                     "\x00\x00\x00\x00"
	                                     "\x00\x00\x00\x00";
	pf_buf_t b;

	(void)state;
	pf_buf_init(&b);
	pf_proto_be_data_row(&b, "ssibqN", "abc", (const char *)NULL, (int32_t)-42, 7,
	                     (int64_t)-9000000000LL, (uint64_t)UINT64_MAX);
	assert_bytes(&b, LIT(expected));
	pf_buf_reset(&b);
	pf_proto_be_data_row(&b, "b", 0);
	assert_bytes(&b, LIT(expected_b));
	pf_buf_reset(&b);
	/* Empty strings are zero-length values, not NULL. */
	pf_proto_be_data_row(&b, "ss", "", "");
	assert_bytes(&b, LIT(expected_empty));
	pf_buf_free(&b);
}

static void test_be_unknown_column_type(void **state)
{
	static const char *const names[] = {"a", "b"};
	pf_buf_t b;

	(void)state;
	pf_buf_init(&b);
	pf_proto_be_row_description(&b, "sx", names);
	assert_true(b.failed);
	pf_buf_reset(&b);
	pf_proto_be_data_row(&b, "x", 1);
	assert_true(b.failed);
	pf_buf_free(&b);
}

/* ---- frontend builders ---- */

static void test_fe_startup(void **state)
{
	static const char expected[] = "\x00\x00\x00\x20"
	                               "\x00\x03\x00\x00"
	                               "user\0bob\0"
	                               "database\0shop\0"
	                               "\0";
	static const pf_proto_param_t params[] = {{"user", "bob"}, {"database", "shop"}};
	pf_buf_t b;
	pf_proto_startup_t s;

	(void)state;
	pf_buf_init(&b);
	pf_proto_fe_startup(&b, params, 2);
	assert_bytes(&b, LIT(expected));
	/* And our own parser accepts what we build. */
	assert_int_equal(pf_proto_parse_startup(b.data, b.len, &s), 32);
	assert_string_equal(s.database, "shop");
	pf_buf_free(&b);
}

static void test_fe_startup_after_other_bytes(void **state)
{
	static const char expected[] = "\xaa"
	                               "\x00\x00\x00\x12"
	                               "\x00\x03\x00\x00"
	                               "user\0bob\0"
	                               "\0";
	static const pf_proto_param_t params[] = {{"user", "bob"}};
	pf_buf_t b;

	(void)state;
	pf_buf_init(&b);
	pf_buf_put_u8(&b, 0xaa);
	pf_proto_fe_startup(&b, params, 1);
	assert_bytes(&b, LIT(expected));
	pf_buf_free(&b);
}

static void test_fe_messages(void **state)
{
	static const char expected[] = "p\x00\x00\x00\x0bsecret\0"
	                               "p\x00\x00\x00\x1f"
	                               "SCRAM-SHA-256\0"
	                               "\x00\x00\x00\x09"
	                               "n,,n=,r=x"
	                               "p\x00\x00\x00\x16"
	                               "SCRAM-SHA-256\0"
	                               "\xff\xff\xff\xff"
	                               "p\x00\x00\x00\x0a"
	                               "c=biws"
	                               "Q\x00\x00\x00\x0dSELECT 1\0"
	                               "X\x00\x00\x00\x04";
	pf_buf_t b;

	(void)state;
	pf_buf_init(&b);
	pf_proto_fe_password(&b, "secret");
	pf_proto_fe_sasl_initial_response(&b, "SCRAM-SHA-256", "n,,n=,r=x", 9);
	pf_proto_fe_sasl_initial_response(&b, "SCRAM-SHA-256", NULL, 0);
	pf_proto_fe_sasl_response(&b, "c=biws", 6);
	pf_proto_fe_query(&b, "SELECT 1");
	pf_proto_fe_terminate(&b);
	assert_bytes(&b, LIT(expected));
	pf_buf_free(&b);
}

/* auth_query's lookup: the user name is a bound value, never part of the SQL text. */
static void test_fe_ext_query(void **state)
{
	static const char expected[] =
	        /* Parse: unnamed statement, the SQL, no parameter types */
	        "P\x00\x00\x00\x1b\0SELECT a FROM t($1)\0\x00\x00"
	        /* Bind: unnamed portal and statement, text params, 2 values, text results */
	        "B\x00\x00\x00\x1e\0\0\x00\x00\x00\x02"
	        "\x00\x00\x00\x0ax' OR '1'="
	        "\xff\xff\xff\xff"
	        "\x00\x00"
	        /* Describe the portal, Execute it without a row limit, Sync */
	        "D\x00\x00\x00\x06P\0"
	        "E\x00\x00\x00\x09\0\x00\x00\x00\x00"
	        "S\x00\x00\x00\x04";
	const char *params[] = {"x' OR '1'=", NULL};
	pf_buf_t b;

	(void)state;
	assert_string_equal(PF_PROTO_EXT_QUERY_TYPES, "PBDES");
	pf_buf_init(&b);
	pf_proto_fe_ext_query(&b, "SELECT a FROM t($1)", params, 2);
	assert_bytes(&b, LIT(expected));
	pf_buf_free(&b);
}

static void test_fe_cancel_and_ssl(void **state)
{
	static const char expected[] = "\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x30\x39"
	                               "\xde\xad\xbe\xef"
	                               "\x00\x00\x00\x08\x04\xd2\x16\x2f";
	pf_buf_t b;

	(void)state;
	pf_buf_init(&b);
	pf_proto_fe_cancel_request(&b, 12345, 0xdeadbeef);
	pf_proto_fe_ssl_request(&b);
	assert_bytes(&b, LIT(expected));
	pf_buf_free(&b);
}

/* ---- payload readers ---- */

static void test_parse_error_fields(void **state)
{
	static const char payload[] = "SERREUR\0"
	                              "VERROR\0"
	                              "C42P01\0"
	                              "Mrelation \"x\" does not exist\0"
	                              "P15\0"
	                              "Fparse_relation.c\0"
	                              "L1392\0"
	                              "Rparserror\0"
	                              "\0";
	static const char s_only[] = "SFATAL\0C53300\0Mtoo many\0\0";
	static const char terminator_only[] = "\0";
	pf_proto_error_t e;

	(void)state;
	assert_int_equal(pf_proto_parse_error_fields(LIT(payload), &e), 0);
	assert_string_equal(e.severity, "ERROR");
	assert_string_equal(e.severity_localized, "ERREUR");
	assert_string_equal(e.sqlstate, "42P01");
	assert_string_equal(e.message, "relation \"x\" does not exist");
	assert_string_equal(e.position, "15");
	assert_null(e.detail);
	assert_null(e.hint);
	assert_null(e.where);
	assert_ptr_equal(e.sqlstate, payload + 16);

	assert_int_equal(pf_proto_parse_error_fields(LIT(s_only), &e), 0);
	assert_string_equal(e.severity, "FATAL");
	assert_string_equal(e.sqlstate, "53300");
	assert_string_equal(e.message, "too many");

	assert_int_equal(pf_proto_parse_error_fields(LIT(terminator_only), &e), 0);
	assert_null(e.severity);
	assert_null(e.message);
}

static void test_parse_error_fields_malformed(void **state)
{
	static const char no_terminator[] = "SERROR\0C42P01\0";
	static const char unterminated_field[] = "SERROR\0Mabc";
	static const char code_at_end[] = "SERROR\0M";
	static const char after_terminator[] = "SERROR\0\0X";
	pf_proto_error_t e;

	(void)state;
	assert_int_equal(pf_proto_parse_error_fields((const uint8_t *)"", 0, &e), -EBADMSG);
	assert_int_equal(pf_proto_parse_error_fields(LIT(no_terminator), &e), -EBADMSG);
	assert_int_equal(pf_proto_parse_error_fields(LIT(unterminated_field), &e), -EBADMSG);
	assert_int_equal(pf_proto_parse_error_fields(LIT(code_at_end), &e), -EBADMSG);
	assert_int_equal(pf_proto_parse_error_fields(LIT(after_terminator), &e), -EBADMSG);
}

static void test_parse_parameter_status(void **state)
{
	static const char ok[] = "TimeZone\0UTC\0";
	static const char empty_value[] = "application_name\0\0";
	const char *name, *value;

	(void)state;
	assert_int_equal(pf_proto_parse_parameter_status(LIT(ok), &name, &value), 0);
	assert_string_equal(name, "TimeZone");
	assert_string_equal(value, "UTC");
	assert_int_equal(pf_proto_parse_parameter_status(LIT(empty_value), &name, &value), 0);
	assert_string_equal(name, "application_name");
	assert_string_equal(value, "");
	assert_int_equal(pf_proto_parse_parameter_status(LIT(""), &name, &value), -EBADMSG);
	assert_int_equal(pf_proto_parse_parameter_status(LIT("a\0"), &name, &value), -EBADMSG);
	assert_int_equal(pf_proto_parse_parameter_status(LIT("a\0b"), &name, &value), -EBADMSG);
	assert_int_equal(pf_proto_parse_parameter_status(LIT("a\0b\0x"), &name, &value), -EBADMSG);
	assert_int_equal(pf_proto_parse_parameter_status(LIT("a\0b\0\0"), &name, &value), -EBADMSG);
}

static void test_parse_backend_key_data(void **state)
{
	uint32_t pid = 0, key = 0;

	(void)state;
	assert_int_equal(pf_proto_parse_backend_key_data(LIT("\x00\x00\x30\x39\xde\xad\xbe\xef"),
	                                                 &pid, &key),
	                 0);
	assert_int_equal(pid, 12345);
	assert_int_equal(key, 0xdeadbeefu);
	assert_int_equal(
	        pf_proto_parse_backend_key_data(LIT("\x00\x00\x30\x39\xde\xad\xbe"), &pid, &key),
	        -EBADMSG);
	assert_int_equal(pf_proto_parse_backend_key_data(
	                         LIT("\x00\x00\x30\x39\xde\xad\xbe\xef\x00"), &pid, &key),
	                 -EBADMSG);
}

static void test_parse_password_and_sasl_initial_response(void **state)
{
	const char *pw, *mech;
	const uint8_t *data;
	size_t dlen;

	(void)state;
	assert_int_equal(pf_proto_parse_password(LIT("secret\0"), &pw), 0);
	assert_string_equal(pw, "secret");
	assert_int_equal(pf_proto_parse_password(LIT("\0"), &pw), 0);
	assert_string_equal(pw, "");
	assert_int_equal(pf_proto_parse_password(LIT(""), &pw), -EBADMSG);
	assert_int_equal(pf_proto_parse_password(LIT("secret"), &pw), -EBADMSG);
	assert_int_equal(pf_proto_parse_password(LIT("sec\0ret\0"), &pw), -EBADMSG);

	assert_int_equal(pf_proto_parse_sasl_initial_response(LIT("SCRAM-SHA-256\0\0\0\0\3abc"),
	                                                      &mech, &data, &dlen),
	                 0);
	assert_string_equal(mech, "SCRAM-SHA-256");
	assert_int_equal(dlen, 3);
	assert_memory_equal(data, "abc", 3);
	/* -1: no initial response. */
	assert_int_equal(pf_proto_parse_sasl_initial_response(
	                         LIT("SCRAM-SHA-256\0\377\377\377\377"), &mech, &data, &dlen),
	                 0);
	assert_null(data);
	assert_int_equal(dlen, 0);
	/* Lengths that do not add up, a missing length, no name, no NUL, negative lengths. */
	assert_int_equal(pf_proto_parse_sasl_initial_response(LIT("SCRAM-SHA-256\0\0\0\0\4abc"),
	                                                      &mech, &data, &dlen),
	                 -ENODATA);
	assert_int_equal(pf_proto_parse_sasl_initial_response(LIT("SCRAM-SHA-256\0\0\0\0\2abc"),
	                                                      &mech, &data, &dlen),
	                 -EMSGSIZE);
	assert_int_equal(pf_proto_parse_sasl_initial_response(LIT("SCRAM-SHA-256\0\0\0"), &mech,
	                                                      &data, &dlen),
	                 -ENODATA);
	assert_int_equal(
	        pf_proto_parse_sasl_initial_response(LIT("\0\0\0\0\0"), &mech, &data, &dlen),
	        -EBADMSG);
	assert_int_equal(
	        pf_proto_parse_sasl_initial_response(LIT("SCRAM-SHA-256"), &mech, &data, &dlen),
	        -EBADMSG);
	assert_int_equal(pf_proto_parse_sasl_initial_response(
	                         LIT("SCRAM-SHA-256\0\377\377\377\376x"), &mech, &data, &dlen),
	                 -ENODATA);
	assert_int_equal(pf_proto_parse_sasl_initial_response(
	                         LIT("SCRAM-SHA-256\0\377\377\377\377x"), &mech, &data, &dlen),
	                 -EMSGSIZE);
}

static void test_parse_data_row(void **state)
{
	/* Columns "rolname", NULL, "" and "md5x". */
	static const char row[] = "\x00\x04"
	                          "\x00\x00\x00\x07rolname"
	                          "\xff\xff\xff\xff"
	                          "\x00\x00\x00\x00"
	                          "\x00\x00\x00\x04md5x";
	pf_proto_col_t cols[3];
	uint16_t n = 0;

	(void)state;
	assert_int_equal(pf_proto_parse_data_row(LIT(row), cols, 3, &n), 0);
	assert_int_equal(n, 4);
	assert_int_equal(cols[0].len, 7);
	assert_memory_equal(cols[0].data, "rolname", 7);
	assert_null(cols[1].data);
	assert_non_null(cols[2].data); /* an empty value is not NULL */
	assert_int_equal(cols[2].len, 0);
	/* max 0: only counted */
	assert_int_equal(pf_proto_parse_data_row(LIT(row), NULL, 0, &n), 0);
	assert_int_equal(n, 4);
	assert_int_equal(pf_proto_parse_data_row(LIT("\x00\x00"), NULL, 0, &n), 0);
	assert_int_equal(n, 0);

	/* Malformed: short, a length past the end, a negative length other than -1, trailing
	 * bytes, a missing column. */
	assert_int_equal(pf_proto_parse_data_row(LIT("\x00"), cols, 3, &n), -EBADMSG);
	assert_int_equal(pf_proto_parse_data_row(LIT("\x00\x01\x00\x00\x00\x05"
	                                             "abcd"),
	                                         cols, 3, &n),
	                 -EBADMSG);
	assert_int_equal(pf_proto_parse_data_row(LIT("\x00\x01\xff\xff\xff\xfe"), cols, 3, &n),
	                 -EBADMSG);
	assert_int_equal(pf_proto_parse_data_row(LIT("\x00\x01\x00\x00\x00\x01"
	                                             "ab"),
	                                         cols, 3, &n),
	                 -EBADMSG);
	assert_int_equal(pf_proto_parse_data_row(LIT("\x00\x02\x00\x00\x00\x01"
	                                             "a"),
	                                         cols, 3, &n),
	                 -EBADMSG);
	assert_int_equal(pf_proto_parse_data_row(LIT("\x00\x01\x00\x00"), cols, 3, &n), -EBADMSG);
}

static void test_parse_row_description(void **state)
{
	static const char *const names[] = {"rolname", "rolpassword"};
	uint16_t n = 0;
	pf_buf_t b;

	(void)state;
	pf_buf_init(&b);
	pf_proto_be_row_description(&b, "ss", names);
	assert_false(b.failed);
	assert_int_equal(pf_proto_parse_row_description(b.data + 5, b.len - 5, &n), 0);
	assert_int_equal(n, 2);
	/* One byte short, one too many, a name without its NUL. */
	assert_int_equal(pf_proto_parse_row_description(b.data + 5, b.len - 6, &n), -EBADMSG);
	pf_buf_put_u8(&b, 0);
	assert_int_equal(pf_proto_parse_row_description(b.data + 5, b.len - 5, &n), -EBADMSG);
	pf_buf_free(&b);
	assert_int_equal(pf_proto_parse_row_description(LIT("\x00\x00"), &n), 0);
	assert_int_equal(n, 0);
	assert_int_equal(pf_proto_parse_row_description(LIT("\x00\x01name"), &n), -EBADMSG);
	assert_int_equal(pf_proto_parse_row_description(LIT("\x00"), &n), -EBADMSG);
}

static void test_parse_ready_for_query(void **state)
{
	uint8_t st = 0;

	(void)state;
	assert_int_equal(pf_proto_parse_ready_for_query(LIT("I"), &st), 0);
	assert_int_equal(st, 'I');
	assert_int_equal(pf_proto_parse_ready_for_query(LIT("T"), &st), 0);
	assert_int_equal(st, 'T');
	assert_int_equal(pf_proto_parse_ready_for_query(LIT("E"), &st), 0);
	assert_int_equal(st, 'E');
	assert_int_equal(pf_proto_parse_ready_for_query(LIT("X"), &st), -EBADMSG);
	assert_int_equal(pf_proto_parse_ready_for_query(LIT(""), &st), -EBADMSG);
	assert_int_equal(pf_proto_parse_ready_for_query(LIT("II"), &st), -EBADMSG);
}

static void test_parse_auth(void **state)
{
	static const char sasl[] = "\x00\x00\x00\x0a"
	                           "SCRAM-SHA-256-PLUS\0"
	                           "SCRAM-SHA-256\0"
	                           "\0";
	pf_proto_auth_t a;

	(void)state;
	assert_int_equal(pf_proto_parse_auth(LIT("\x00\x00\x00\x00"), &a), 0);
	assert_int_equal(a.subtype, PF_PROTO_AUTH_OK);
	assert_int_equal(a.rest_len, 0);
	assert_int_equal(pf_proto_parse_auth(LIT("\x00\x00\x00\x03"), &a), 0);
	assert_int_equal(a.subtype, PF_PROTO_AUTH_CLEARTEXT);

	assert_int_equal(pf_proto_parse_auth(LIT("\x00\x00\x00\x05\x01\x02\x03\x04"), &a), 0);
	assert_int_equal(a.subtype, PF_PROTO_AUTH_MD5);
	assert_int_equal(a.rest_len, 4);
	assert_memory_equal(a.rest, "\x01\x02\x03\x04", 4);

	assert_int_equal(pf_proto_parse_auth(LIT(sasl), &a), 0);
	assert_int_equal(a.subtype, PF_PROTO_AUTH_SASL);
	assert_true(pf_proto_auth_has_sasl_mech(&a, "SCRAM-SHA-256"));
	assert_true(pf_proto_auth_has_sasl_mech(&a, "SCRAM-SHA-256-PLUS"));
	assert_false(pf_proto_auth_has_sasl_mech(&a, "SCRAM-SHA"));

	assert_int_equal(pf_proto_parse_auth(LIT("\x00\x00\x00\x0br=abc,s=x,i=4096"), &a), 0);
	assert_int_equal(a.subtype, PF_PROTO_AUTH_SASL_CONTINUE);
	assert_int_equal(a.rest_len, 16);
	assert_false(pf_proto_auth_has_sasl_mech(&a, "SCRAM-SHA-256"));
	assert_int_equal(pf_proto_parse_auth(LIT("\x00\x00\x00\x0c"), &a), 0);
	assert_int_equal(a.subtype, PF_PROTO_AUTH_SASL_FINAL);
	assert_int_equal(a.rest_len, 0);
	/* Unknown subtypes are handed back for the caller to refuse. */
	assert_int_equal(pf_proto_parse_auth(LIT("\x00\x00\x00\x63xyz"), &a), 0);
	assert_int_equal(a.subtype, 99);
}

static void test_parse_auth_malformed(void **state)
{
	pf_proto_auth_t a;

	(void)state;
	assert_int_equal(pf_proto_parse_auth(LIT(""), &a), -EBADMSG);
	assert_int_equal(pf_proto_parse_auth(LIT("\x00\x00\x00"), &a), -EBADMSG);
	assert_int_equal(pf_proto_parse_auth(LIT("\x00\x00\x00\x00\x00"), &a), -EBADMSG);
	assert_int_equal(pf_proto_parse_auth(LIT("\x00\x00\x00\x03x"), &a), -EBADMSG);
	assert_int_equal(pf_proto_parse_auth(LIT("\x00\x00\x00\x05\x01\x02\x03"), &a), -EBADMSG);
	assert_int_equal(pf_proto_parse_auth(LIT("\x00\x00\x00\x05\x01\x02\x03\x04\x05"), &a),
	                 -EBADMSG);
	/* SASL: empty list, missing final NUL, unterminated name, data after the end. */
	assert_int_equal(pf_proto_parse_auth(LIT("\x00\x00\x00\x0a\0"), &a), -EBADMSG);
	assert_int_equal(pf_proto_parse_auth(LIT("\x00\x00\x00\x0a"), &a), -EBADMSG);
	assert_int_equal(pf_proto_parse_auth(LIT("\x00\x00\x00\x0aSCRAM-SHA-256\0"), &a), -EBADMSG);
	assert_int_equal(pf_proto_parse_auth(LIT("\x00\x00\x00\x0aSCRAM"), &a), -EBADMSG);
	assert_int_equal(pf_proto_parse_auth(LIT("\x00\x00\x00\x0aSCRAM\0\0x"), &a), -EBADMSG);
}

/* ---- Names in extended-protocol messages ---- */

/* pf_proto_read_names() on a heap copy of exactly n bytes, so ASan sees any overread. */
static int read_names_exact(const uint8_t *msg, size_t n, pf_proto_names_t *out, uint8_t **copy)
{
	*copy = malloc(n ? n : 1);
	assert_non_null(*copy);
	memcpy(*copy, msg, n);
	return pf_proto_read_names(*copy, n, out);
}

/*
 * Renames msg as a streaming sender would: the names are read from a copy of only the first
 * names.end bytes, then the prefix plus the original bytes from tail_off on must be `want`.
 */
static void assert_renamed(const uint8_t *msg, size_t n, const char *portal, const char *stmt,
                           const uint8_t *want, size_t want_n)
{
	pf_proto_names_t names;
	pf_proto_renamed_t r;
	uint8_t prefix[64], *copy, *got;

	assert_int_equal(read_names_exact(msg, n, &names, &copy), 1);
	free(copy);
	assert_int_equal(names.total, n);
	assert_int_equal(read_names_exact(msg, names.end, &names, &copy), 1);
	assert_int_equal(pf_proto_rename(&names, portal, stmt, prefix, sizeof(prefix), &r), 0);
	free(copy);
	assert_int_equal(r.tail_off, names.end);
	assert_int_equal(r.total, want_n);
	assert_int_equal(r.prefix_len + (n - r.tail_off), want_n);
	got = malloc(want_n);
	assert_non_null(got);
	memcpy(got, prefix, r.prefix_len);
	memcpy(got + r.prefix_len, msg + r.tail_off, n - r.tail_off);
	assert_memory_equal(got, want, want_n);
	free(got);
}

static void test_read_names(void **state)
{
	pf_proto_names_t nm;
	uint8_t *copy;

	(void)state;
	/* Bind: portal "p", statement "s1", one binary parameter 42, no result formats. */
	assert_int_equal(read_names_exact(LIT("B\x00\x00\x00\x19p\0s1\0\x00\x01\x00\x01\x00\x01"
	                                      "\x00\x00\x00\x04\x00\x00\x00\x2a\x00\x00"),
	                                  &nm, &copy),
	                 1);
	assert_int_equal(nm.type, 'B');
	assert_int_equal(nm.kind, 0);
	assert_int_equal(nm.total, 26);
	assert_int_equal(nm.end, 10);
	assert_string_equal(nm.portal, "p");
	assert_int_equal(nm.portal_len, 1);
	assert_ptr_equal(nm.portal, (const char *)copy + 5);
	assert_string_equal(nm.stmt, "s1");
	assert_int_equal(nm.stmt_len, 2);
	free(copy);
	/* Describe/Close: the kind byte says which name it is. */
	assert_int_equal(read_names_exact(LIT("D\x00\x00\x00\x08Ss1\0"), &nm, &copy), 1);
	assert_int_equal(nm.kind, 'S');
	assert_string_equal(nm.stmt, "s1");
	assert_null(nm.portal);
	assert_int_equal(nm.end, 9);
	free(copy);
	assert_int_equal(read_names_exact(LIT("C\x00\x00\x00\x06P\0"), &nm, &copy), 1);
	assert_int_equal(nm.kind, 'P');
	assert_string_equal(nm.portal, "");
	assert_null(nm.stmt);
	free(copy);
	/* Execute: the portal, then the row limit. Parse: an empty name and query. */
	assert_int_equal(read_names_exact(LIT("E\x00\x00\x00\x0b"
	                                      "c1\0\x00\x00\x00\x00"),
	                                  &nm, &copy),
	                 1);
	assert_string_equal(nm.portal, "c1");
	assert_null(nm.stmt);
	assert_int_equal(nm.end, 8);
	free(copy);
	assert_int_equal(read_names_exact(LIT("P\x00\x00\x00\x08\0\0\x00\x00"), &nm, &copy), 1);
	assert_string_equal(nm.stmt, "");
	assert_int_equal(nm.end, 6);
	free(copy);
	/* Bytes past the message are not looked at: the next message follows. */
	assert_int_equal(
	        read_names_exact(LIT("D\x00\x00\x00\x08Ss1\0S\x00\x00\x00\x04"), &nm, &copy), 1);
	assert_int_equal(nm.total, 9);
	free(copy);
}

/* Every prefix of a message shorter than its names asks for more; from there on, it is known. */
static void test_read_names_partial(void **state)
{
	static const struct {
		const char *bytes;
		size_t n, end;
	} msgs[] = {
	        {"P\x00\x00\x00\x27"
	         "a_longer_statement_name\0select 1\0\x00\x00",
	         40, 29},
	        {"B\x00\x00\x00\x11p1\0s22\0\x00\x00\x00\x00\x00\x00", 18, 12},
	        {"D\x00\x00\x00\x08Ss1\0", 9, 9},
	        {"C\x00\x00\x00\x07Pc\0", 8, 8},
	        {"E\x00\x00\x00\x0b"
	         "c1\0\x00\x00\x00\x00",
	         12, 8},
	};

	(void)state;
	for (size_t m = 0; m < sizeof(msgs) / sizeof(msgs[0]); m++) {
		for (size_t k = 0; k <= msgs[m].n; k++) {
			pf_proto_names_t nm;
			uint8_t *copy;
			int rc = read_names_exact((const uint8_t *)msgs[m].bytes, k, &nm, &copy);

			if (rc != (k < msgs[m].end ? 0 : 1))
				fail_msg("message %zu, %zu bytes: %d", m, k, rc);
			if (rc == 1)
				assert_int_equal(nm.end, msgs[m].end);
			free(copy);
		}
	}
}

static void test_read_names_malformed(void **state)
{
	static const struct {
		const char *bytes;
		size_t n;
		int rc;
	} bad[] = {
	        {"Q\x00\x00\x00\x05\0", 6, -EINVAL},              /* not a named message */
	        {"S", 1, -EINVAL},                                /* known from the type byte */
	        {"P\x00\x00\x00\x03", 5, -EBADMSG},               /* length below 4 */
	        {"P\x80\x00\x00\x00", 5, -EBADMSG},               /* above Int32 */
	        {"D\x00\x00\x00\x04", 5, -EBADMSG},               /* no kind byte */
	        {"D\x00\x00\x00\x07Xs\0", 8, -EBADMSG},           /* kind not S/P */
	        {"C\x00\x00\x00\x06Q", 6, -EBADMSG},              /* ... seen before the name */
	        {"D\x00\x00\x00\x06Ss\0", 8, -EBADMSG},           /* NUL only past the message */
	        {"D\x00\x00\x00\x09Ss1\0x", 10, -EBADMSG},        /* bytes after the name */
	        {"E\x00\x00\x00\x08\0\x00\x00\x00", 9, -EBADMSG}, /* row limit cut short */
	        {"E\x00\x00\x00\x0a\0\x00\x00\x00\x00\x00", 11, -EBADMSG},   /* bytes after it */
	        {"E\x00\x00\x00\x04", 5, -EBADMSG},                          /* no portal at all */
	        {"B\x00\x00\x00\x0b\0\0\x00\x00\x00\x00\x00", 12, -EBADMSG}, /* counts cut short */
	        {"B\x00\x00\x00\x06\0s", 7, -EBADMSG},         /* statement without NUL */
	        {"P\x00\x00\x00\x07\0\x00\x00", 8, -EBADMSG},  /* no room for query + Int16 */
	        {"P\x00\x00\x00\x05s", 6, -EBADMSG},           /* name without NUL */
	        {"P\x00\x00\x00\x05sQ\0\0\0\0", 11, -EBADMSG}, /* ... NULs in the next one */
	        {"B\x00\x00\x00\x06\0sQ\0\0\0\0\0\0\0", 15, -EBADMSG}, /* the same, in a Bind */
	};
	pf_proto_names_t nm;
	uint8_t *copy;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int rc = read_names_exact((const uint8_t *)bad[i].bytes, bad[i].n, &nm, &copy);

		if (rc != bad[i].rc)
			fail_msg("case %zu: %d, expected %d", i, rc, bad[i].rc);
		free(copy);
	}
	assert_int_equal(pf_proto_read_names((const uint8_t *)"", 0, &nm), 0);
	/* The smallest valid Parse, Bind and Execute. */
	assert_int_equal(read_names_exact(LIT("P\x00\x00\x00\x08\0\0\x00\x00"), &nm, &copy), 1);
	free(copy);
	assert_int_equal(
	        read_names_exact(LIT("B\x00\x00\x00\x0c\0\0\x00\x00\x00\x00\x00\x00"), &nm, &copy),
	        1);
	free(copy);
	assert_int_equal(read_names_exact(LIT("E\x00\x00\x00\x09\0\x00\x00\x00\x00"), &nm, &copy),
	                 1);
	free(copy);
}

static void test_rename(void **state)
{
	(void)state;
	/* Parse "s1" -> "PF_1": length 18 -> 20, query and parameter count untouched. */
	assert_renamed(LIT("P\x00\x00\x00\x12s1\0select 1\0\x00\x00"), NULL, "PF_1",
	               LIT("P\x00\x00\x00\x14PF_1\0select 1\0\x00\x00"));
	/* Bind: the statement only (unnamed portal kept), both, the statement with portal kept. */
	assert_renamed(LIT("B\x00\x00\x00\x0e\0s1\0\x00\x00\x00\x00\x00\x00"), NULL, "PF_1",
	               LIT("B\x00\x00\x00\x10\0PF_1\0\x00\x00\x00\x00\x00\x00"));
	assert_renamed(LIT("B\x00\x00\x00\x19p\0s1\0\x00\x01\x00\x01\x00\x01\x00\x00\x00\x04"
	                   "\x00\x00\x00\x2a\x00\x00"),
	               "", "PF_22",
	               LIT("B\x00\x00\x00\x1b\0PF_22\0\x00\x01\x00\x01\x00\x01\x00\x00\x00\x04"
	                   "\x00\x00\x00\x2a\x00\x00"));
	assert_renamed(LIT("B\x00\x00\x00\x19p\0s1\0\x00\x01\x00\x01\x00\x01\x00\x00\x00\x04"
	                   "\x00\x00\x00\x2a\x00\x00"),
	               NULL, "PF_22",
	               LIT("B\x00\x00\x00\x1cp\0PF_22\0\x00\x01\x00\x01\x00\x01\x00\x00\x00\x04"
	                   "\x00\x00\x00\x2a\x00\x00"));
	/* Describe/Close of a statement or a portal: the whole message is the prefix. */
	assert_renamed(LIT("D\x00\x00\x00\x08Ss1\0"), NULL, "PF_1",
	               LIT("D\x00\x00\x00\x0aSPF_1\0"));
	assert_renamed(LIT("D\x00\x00\x00\x06P\0"), "c", NULL, LIT("D\x00\x00\x00\x07Pc\0"));
	assert_renamed(LIT("C\x00\x00\x00\x08Ss1\0"), NULL, "", LIT("C\x00\x00\x00\x06S\0"));
	/* Execute: the portal, row limit untouched. */
	assert_renamed(LIT("E\x00\x00\x00\x09\0\x00\x00\x00\x07"), "c1", NULL,
	               LIT("E\x00\x00\x00\x0b"
	                   "c1\0\x00\x00\x00\x07"));
	/* Nothing renamed: the same message. */
	assert_renamed(LIT("B\x00\x00\x00\x0e\0s1\0\x00\x00\x00\x00\x00\x00"), NULL, NULL,
	               LIT("B\x00\x00\x00\x0e\0s1\0\x00\x00\x00\x00\x00\x00"));
}

static void test_rename_refused(void **state)
{
	pf_proto_names_t nm;
	pf_proto_renamed_t r;
	uint8_t prefix[32], *copy;

	(void)state;
	/* A name the message does not have. */
	assert_int_equal(read_names_exact(LIT("E\x00\x00\x00\x09\0\x00\x00\x00\x00"), &nm, &copy),
	                 1);
	assert_int_equal(pf_proto_rename(&nm, NULL, "s", prefix, sizeof(prefix), &r), -EINVAL);
	free(copy);
	assert_int_equal(read_names_exact(LIT("D\x00\x00\x00\x08Ss1\0"), &nm, &copy), 1);
	assert_int_equal(pf_proto_rename(&nm, "p", NULL, prefix, sizeof(prefix), &r), -EINVAL);
	free(copy);
	assert_int_equal(
	        read_names_exact(LIT("P\x00\x00\x00\x12s1\0select 1\0\x00\x00"), &nm, &copy), 1);
	assert_int_equal(pf_proto_rename(&nm, "p", "x", prefix, sizeof(prefix), &r), -EINVAL);
	/* The prefix buffer: "P" + length + "PF_1\0" is exactly 10 bytes. */
	assert_int_equal(pf_proto_rename(&nm, NULL, "PF_1", prefix, 10, &r), 0);
	assert_int_equal(r.prefix_len, 10);
	assert_int_equal(pf_proto_rename(&nm, NULL, "PF_1", prefix, 9, &r), -ENOSPC);
	assert_int_equal(pf_proto_rename(&nm, NULL, "PF_1", prefix, 4, &r), -ENOSPC);
	assert_int_equal(pf_proto_rename(&nm, NULL, "PF_1", NULL, 0, &r), -ENOSPC);
	assert_int_equal(pf_proto_rename(&nm, NULL, "a_name_longer_than_the_buffer", prefix,
	                                 sizeof(prefix), &r),
	                 -ENOSPC);
	free(copy);
	/* A kept name counts too: Bind "long_portal"/"s1" with 14 bytes of room. */
	assert_int_equal(read_names_exact(LIT("B\x00\x00\x00\x19long_portal\0s1\0\x00\x00\x00\x00"
	                                      "\x00\x00"),
	                                  &nm, &copy),
	                 1);
	assert_int_equal(pf_proto_rename(&nm, NULL, "", prefix, 17, &r), -ENOSPC);
	assert_int_equal(pf_proto_rename(&nm, NULL, "", prefix, 18, &r), 0);
	free(copy);
}

static void test_rename_length_bounds(void **state)
{
	pf_proto_names_t nm;
	pf_proto_renamed_t r;
	uint8_t prefix[16], *copy;

	(void)state;
	/* A Parse of the largest length, of which only the start is here: a longer name would
	 * overflow the Int32 length; an equally long one is fine. */
	assert_int_equal(read_names_exact(LIT("P\x7f\xff\xff\xff\0"), &nm, &copy), 1);
	assert_int_equal(nm.total, 0x80000000u);
	assert_int_equal(pf_proto_rename(&nm, NULL, "abc", prefix, sizeof(prefix), &r), -EMSGSIZE);
	assert_int_equal(pf_proto_rename(&nm, NULL, "", prefix, sizeof(prefix), &r), 0);
	assert_int_equal(r.total, 0x80000000u);
	assert_int_equal(r.prefix_len, 6);
	assert_memory_equal(prefix, "P\x7f\xff\xff\xff\0", 6);
	free(copy);
	/* Shorter names shrink it. */
	assert_int_equal(read_names_exact(LIT("P\x7f\xff\xff\xff"
	                                      "abc\0"),
	                                  &nm, &copy),
	                 1);
	assert_int_equal(pf_proto_rename(&nm, NULL, "", prefix, sizeof(prefix), &r), 0);
	assert_int_equal(r.total, 0x80000000u - 3);
	assert_memory_equal(prefix, "P\x7f\xff\xff\xfc\0", 6);
	free(copy);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_startup_normal),
	        cmocka_unit_test(test_startup_trailing_bytes_not_consumed),
	        cmocka_unit_test(test_startup_database_defaults_to_user),
	        cmocka_unit_test(test_startup_options_replication_and_repeats),
	        cmocka_unit_test(test_startup_missing_user),
	        cmocka_unit_test(test_startup_malformed_params),
	        cmocka_unit_test(test_startup_too_many_params),
	        cmocka_unit_test(test_startup_ssl_gssenc),
	        cmocka_unit_test(test_startup_cancel),
	        cmocka_unit_test(test_startup_versions),
	        cmocka_unit_test(test_startup_lengths),
	        cmocka_unit_test(test_startup_max_length_accepted),
	        cmocka_unit_test(test_protocol_option),
	        cmocka_unit_test(test_hdr_one_byte_at_a_time),
	        cmocka_unit_test(test_hdr_various_fragments),
	        cmocka_unit_test(test_hdr_fast_path),
	        cmocka_unit_test(test_hdr_bad_lengths),
	        cmocka_unit_test(test_hdr_type_zero),
	        cmocka_unit_test(test_hdr_max_packet_size),
	        cmocka_unit_test(test_hdr_length_bounds),
	        cmocka_unit_test(test_type_predicates),
	        cmocka_unit_test(test_be_error),
	        cmocka_unit_test(test_be_notice),
	        cmocka_unit_test(test_be_auth),
	        cmocka_unit_test(test_be_session_messages),
	        cmocka_unit_test(test_be_negotiate_no_options),
	        cmocka_unit_test(test_be_row_description),
	        cmocka_unit_test(test_be_data_row),
	        cmocka_unit_test(test_be_unknown_column_type),
	        cmocka_unit_test(test_fe_startup),
	        cmocka_unit_test(test_fe_startup_after_other_bytes),
	        cmocka_unit_test(test_fe_messages),
	        cmocka_unit_test(test_fe_ext_query),
	        cmocka_unit_test(test_fe_cancel_and_ssl),
	        cmocka_unit_test(test_parse_error_fields),
	        cmocka_unit_test(test_parse_error_fields_malformed),
	        cmocka_unit_test(test_parse_parameter_status),
	        cmocka_unit_test(test_parse_backend_key_data),
	        cmocka_unit_test(test_parse_password_and_sasl_initial_response),
	        cmocka_unit_test(test_parse_data_row),
	        cmocka_unit_test(test_parse_row_description),
	        cmocka_unit_test(test_parse_ready_for_query),
	        cmocka_unit_test(test_parse_auth),
	        cmocka_unit_test(test_parse_auth_malformed),
	        cmocka_unit_test(test_read_names),
	        cmocka_unit_test(test_read_names_partial),
	        cmocka_unit_test(test_read_names_malformed),
	        cmocka_unit_test(test_rename),
	        cmocka_unit_test(test_rename_refused),
	        cmocka_unit_test(test_rename_length_bounds),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
