#include "pfbuild.h"
/*
 * libFuzzer target for the readers of server message payloads in proto.c: ErrorResponse /
 * NoticeResponse fields (pf_proto_parse_error_fields), ParameterStatus, BackendKeyData,
 * ReadyForQuery and Authentication* (pf_proto_parse_auth, pf_proto_auth_has_sasl_mech). These
 * bytes come from the server (or whatever answers on its address), so they are peer-controlled.
 *
 * Byte 0 picks the reader (0 error, 1 notice, 2 ParameterStatus, 3 BackendKeyData,
 * 4 ReadyForQuery, 5 Authentication); the rest is one payload, copied to a block of exactly its
 * size so ASan sees any read past it. Mode 6 reads the rest as a stream of whole messages (type,
 * length, payload; max_packet_size 8192) and hands each payload to the reader of its type.
 *
 * Checks beyond "no crash": every string returned lies inside the payload with its NUL inside
 * too; acceptance matches the documented shape; and whatever is accepted survives
 * parse -> build (the pf_proto_be_* builder) -> parse with the same values (byte for byte, for
 * the messages that have a single encoding).
 */

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgfunnel/buf.h"
#include "pgfunnel/proto.h"

#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint32_t be32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) |
	       (uint32_t)p[3];
}

/* s (NULL allowed) starts inside p[0..n) and its NUL is inside too. */
static void check_inside(const uint8_t *p, size_t n, const char *s)
{
	const uint8_t *u = (const uint8_t *)s;

	if (!s)
		return;
	CHECK(u >= p && u < p + n);
	CHECK(memchr(u, 0, n - (size_t)(u - p)) != NULL);
}

static bool same_str(const char *a, const char *b)
{
	return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/*
 * The payload of the single message b holds, after checking its header: type, length that
 * counts itself and matches the buffer.
 */
static const uint8_t *built_payload(const pf_buf_t *b, uint8_t type, size_t *len)
{
	CHECK(!b->failed);
	CHECK(b->len >= PF_PROTO_HDR_LEN);
	CHECK(b->data[0] == type);
	CHECK(be32(b->data + 1) == b->len - 1);
	*len = b->len - PF_PROTO_HDR_LEN;
	return b->data + PF_PROTO_HDR_LEN;
}

static void fuzz_error(const uint8_t *p, size_t n, bool notice)
{
	pf_proto_error_t e, again;
	const uint8_t *q;
	size_t qn;
	pf_buf_t b;

	if (pf_proto_parse_error_fields(p, n, &e) != 0)
		return;
	/* Accepted: a terminator as last byte, every field inside. */
	CHECK(n >= 1 && p[n - 1] == 0);
	check_inside(p, n, e.severity);
	check_inside(p, n, e.severity_localized);
	check_inside(p, n, e.sqlstate);
	check_inside(p, n, e.message);
	check_inside(p, n, e.detail);
	check_inside(p, n, e.hint);
	check_inside(p, n, e.position);
	check_inside(p, n, e.where);
	CHECK(e.severity != NULL || e.severity_localized == NULL);
	if (!e.severity || !e.sqlstate || !e.message)
		return; /* the builder needs these three */
	pf_buf_init(&b);
	if (notice)
		pf_proto_be_notice(&b, e.severity, e.sqlstate, e.message, e.detail, e.hint);
	else
		pf_proto_be_error(&b, e.severity, e.sqlstate, e.message, e.detail, e.hint);
	q = built_payload(&b, notice ? PF_PROTO_BE_NOTICE_RESPONSE : PF_PROTO_BE_ERROR_RESPONSE,
	                  &qn);
	CHECK(pf_proto_parse_error_fields(q, qn, &again) == 0);
	CHECK(same_str(again.severity, e.severity));
	CHECK(same_str(again.severity_localized, e.severity));
	CHECK(same_str(again.sqlstate, e.sqlstate));
	CHECK(same_str(again.message, e.message));
	CHECK(same_str(again.detail, e.detail));
	CHECK(same_str(again.hint, e.hint));
	CHECK(again.position == NULL && again.where == NULL);
	pf_buf_free(&b);
}

static void fuzz_parameter_status(const uint8_t *p, size_t n)
{
	const char *name = NULL, *value = NULL, *n2, *v2;
	const uint8_t *q;
	size_t qn;
	pf_buf_t b;

	if (pf_proto_parse_parameter_status(p, n, &name, &value) != 0)
		return;
	check_inside(p, n, name);
	check_inside(p, n, value);
	/* Exactly two Strings fill the payload. */
	CHECK((const uint8_t *)name == p);
	CHECK(strlen(name) + 1 + strlen(value) + 1 == n);
	pf_buf_init(&b);
	pf_proto_be_parameter_status(&b, name, value);
	q = built_payload(&b, PF_PROTO_BE_PARAMETER_STATUS, &qn);
	CHECK(qn == n && memcmp(q, p, n) == 0);
	CHECK(pf_proto_parse_parameter_status(q, qn, &n2, &v2) == 0);
	CHECK(strcmp(n2, name) == 0 && strcmp(v2, value) == 0);
	pf_buf_free(&b);
}

static void fuzz_backend_key_data(const uint8_t *p, size_t n)
{
	uint32_t pid, key;
	const uint8_t *q;
	size_t qn;
	pf_buf_t b;
	int rc = pf_proto_parse_backend_key_data(p, n, &pid, &key);

	CHECK(rc == 0 || rc == -EBADMSG);
	CHECK((rc == 0) == (n == 8));
	if (rc != 0)
		return;
	CHECK(pid == be32(p) && key == be32(p + 4));
	pf_buf_init(&b);
	pf_proto_be_backend_key_data(&b, pid, key);
	q = built_payload(&b, PF_PROTO_BE_BACKEND_KEY_DATA, &qn);
	CHECK(qn == n && memcmp(q, p, n) == 0);
	pf_buf_free(&b);
}

static void fuzz_ready_for_query(const uint8_t *p, size_t n)
{
	uint8_t st = 0;
	const uint8_t *q;
	size_t qn;
	pf_buf_t b;
	int rc = pf_proto_parse_ready_for_query(p, n, &st);

	CHECK(rc == 0 || rc == -EBADMSG);
	CHECK((rc == 0) == (n == 1 && (p[0] == 'I' || p[0] == 'T' || p[0] == 'E')));
	if (rc != 0)
		return;
	CHECK(st == p[0]);
	pf_buf_init(&b);
	pf_proto_be_ready_for_query(&b, st);
	q = built_payload(&b, PF_PROTO_BE_READY_FOR_QUERY, &qn);
	CHECK(qn == 1 && q[0] == st);
	pf_buf_free(&b);
}

/* The mechanism names of a validated SASL list, for the builder and for a naive lookup. */
#define MAX_MECHS 64

static void fuzz_auth(const uint8_t *p, size_t n)
{
	pf_proto_auth_t a;
	const char *mechs[MAX_MECHS];
	size_t nmechs = 0, off = 0, qn;
	const uint8_t *q;
	pf_buf_t b;
	int rc = pf_proto_parse_auth(p, n, &a);

	CHECK(rc == 0 || rc == -EBADMSG);
	if (n < 4) {
		CHECK(rc == -EBADMSG);
		return;
	}
	if (rc != 0) {
		CHECK(!pf_proto_auth_has_sasl_mech(&a, "SCRAM-SHA-256") ||
		      a.subtype == PF_PROTO_AUTH_SASL);
		return;
	}
	CHECK(a.subtype == be32(p));
	CHECK(a.rest == p + 4 && a.rest_len == n - 4);
	pf_buf_init(&b);
	switch (a.subtype) {
	case PF_PROTO_AUTH_OK:
		CHECK(a.rest_len == 0);
		pf_proto_be_auth_ok(&b);
		break;
	case PF_PROTO_AUTH_CLEARTEXT:
		CHECK(a.rest_len == 0);
		pf_proto_be_auth_cleartext(&b);
		break;
	case PF_PROTO_AUTH_MD5:
		CHECK(a.rest_len == 4);
		pf_proto_be_auth_md5(&b, a.rest);
		break;
	case PF_PROTO_AUTH_SASL: {
		bool scram = false;

		/* A non-empty list of non-empty names, then a NUL as last byte. */
		CHECK(a.rest_len >= 2 && a.rest[a.rest_len - 1] == 0 && a.rest[0] != 0);
		while (a.rest[off] != 0) {
			const char *name = (const char *)a.rest + off;

			check_inside(a.rest, a.rest_len, name);
			if (strcmp(name, "SCRAM-SHA-256") == 0)
				scram = true;
			if (nmechs < MAX_MECHS)
				mechs[nmechs++] = name;
			off += strlen(name) + 1;
			CHECK(off < a.rest_len);
		}
		CHECK(off == a.rest_len - 1);
		CHECK(pf_proto_auth_has_sasl_mech(&a, "SCRAM-SHA-256") == scram);
		CHECK(!pf_proto_auth_has_sasl_mech(&a, ""));
		if (nmechs == MAX_MECHS)
			goto out; /* too many to rebuild here */
		pf_proto_be_auth_sasl(&b, mechs, nmechs);
		break;
	}
	case PF_PROTO_AUTH_SASL_CONTINUE:
		pf_proto_be_auth_sasl_continue(&b, a.rest, a.rest_len);
		break;
	case PF_PROTO_AUTH_SASL_FINAL:
		pf_proto_be_auth_sasl_final(&b, a.rest, a.rest_len);
		break;
	default:
		CHECK(!pf_proto_auth_has_sasl_mech(&a, "SCRAM-SHA-256"));
		goto out;
	}
	q = built_payload(&b, PF_PROTO_BE_AUTHENTICATION, &qn);
	CHECK(qn == n && memcmp(q, p, n) == 0);
out:
	pf_buf_free(&b);
}

/* Runs reader `mode` on a private copy of p[0..n). */
static void fuzz_one(int mode, const uint8_t *p, size_t n)
{
	uint8_t *copy = malloc(n ? n : 1);

	CHECK(copy != NULL);
	memcpy(copy, p, n);
	switch (mode) {
	case 0:
	case 1:
		fuzz_error(copy, n, mode == 1);
		break;
	case 2:
		fuzz_parameter_status(copy, n);
		break;
	case 3:
		fuzz_backend_key_data(copy, n);
		break;
	case 4:
		fuzz_ready_for_query(copy, n);
		break;
	default:
		fuzz_auth(copy, n);
		break;
	}
	free(copy);
}

static void fuzz_stream(const uint8_t *p, size_t n)
{
	size_t pos = 0;

	while (pos < n) {
		pf_proto_hdr_t h;
		int rc = pf_proto_read_header(p + pos, n - pos, 8192, &h), mode;

		if (rc <= 0)
			return;
		pos += PF_PROTO_HDR_LEN;
		if (h.payload_len > n - pos)
			return; /* a partial last message */
		switch (h.type) {
		case PF_PROTO_BE_ERROR_RESPONSE:
			mode = 0;
			break;
		case PF_PROTO_BE_NOTICE_RESPONSE:
			mode = 1;
			break;
		case PF_PROTO_BE_PARAMETER_STATUS:
			mode = 2;
			break;
		case PF_PROTO_BE_BACKEND_KEY_DATA:
			mode = 3;
			break;
		case PF_PROTO_BE_READY_FOR_QUERY:
			mode = 4;
			break;
		case PF_PROTO_BE_AUTHENTICATION:
			mode = 5;
			break;
		default:
			mode = -1;
			break;
		}
		if (mode >= 0)
			fuzz_one(mode, p + pos, h.payload_len);
		pos += h.payload_len;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	if (data[0] % 7 == 6)
		fuzz_stream(data + 1, size - 1);
	else
		fuzz_one(data[0] % 7, data + 1, size - 1);
	return 0;
}
