#include "pfbuild.h"
/*
 * libFuzzer target for the in-flight rename of Parse/Bind/Describe/Close/Execute
 * (pf_proto_read_names, pf_proto_rename). Input: byte 0 picks the new names' lengths, byte 1 how
 * many bytes of the message are "at hand", the rest is the message. Every prefix of the message
 * is offered in a heap block of exactly that size (ASan catches any read past it), and:
 * - 0 (need more) may only come while fewer bytes than the whole message are at hand, and a
 *   result once final (1 or an error) never changes as more bytes arrive;
 * - with 1, the names lie inside [5, end), NUL-terminated, end <= total and end <= avail;
 * - the renamed message, prefix + original tail, is again a well-formed message of the same
 *   type whose names are the new ones and whose tail bytes are the original ones.
 */

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pgfunnel/proto.h"

#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_MSG 4096

static uint32_t get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void check_renamed(const uint8_t *msg, const pf_proto_names_t *n, uint8_t sel)
{
	char portal[64], stmt[64];
	size_t plen = sel & 31, slen = (sel >> 3) & 31;
	uint8_t prefix[160], *whole;
	pf_proto_renamed_t out;
	pf_proto_names_t again;
	size_t wlen;
	int rc;

	memset(portal, 'p', plen);
	portal[plen] = '\0';
	memset(stmt, 's', slen);
	stmt[slen] = '\0';
	rc = pf_proto_rename(n, n->portal ? portal : NULL, n->stmt ? stmt : NULL, prefix,
	                     sizeof(prefix), &out);
	CHECK(rc == 0 || rc == -ENOSPC || rc == -EMSGSIZE);
	if (rc < 0)
		return;
	CHECK(out.prefix_len <= sizeof(prefix) && out.tail_off == n->end &&
	      out.tail_off <= n->total);
	wlen = out.prefix_len + (n->total - out.tail_off);
	CHECK(wlen == out.total);
	whole = malloc(wlen);
	CHECK(whole != NULL);
	memcpy(whole, prefix, out.prefix_len);
	memcpy(whole + out.prefix_len, msg + out.tail_off, n->total - out.tail_off);
	CHECK(whole[0] == n->type && get_u32(whole + 1) + 1 == wlen);
	CHECK(pf_proto_read_names(whole, wlen, &again) == 1);
	CHECK(again.type == n->type && again.kind == n->kind && again.total == wlen);
	CHECK((again.portal != NULL) == (n->portal != NULL));
	CHECK((again.stmt != NULL) == (n->stmt != NULL));
	if (again.portal)
		CHECK(again.portal_len == plen && memcmp(again.portal, portal, plen) == 0);
	if (again.stmt)
		CHECK(again.stmt_len == slen && memcmp(again.stmt, stmt, slen) == 0);
	CHECK(wlen - again.end == n->total - n->end);
	free(whole);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *msg;
	size_t mlen, step;
	int final_rc = 0;
	pf_proto_names_t final_names;

	if (size < 3 || size - 2 > MAX_MSG)
		return 0;
	msg = data + 2;
	mlen = size - 2;
	step = 1 + data[1] % 7;
	memset(&final_names, 0, sizeof(final_names));
	for (size_t avail = 0; avail <= mlen;
	     avail += (avail + step <= mlen || avail == mlen) ? step : mlen - avail) {
		uint8_t *copy = malloc(avail ? avail : 1);
		pf_proto_names_t n;
		int rc;

		CHECK(copy != NULL);
		memcpy(copy, msg, avail);
		rc = pf_proto_read_names(copy, avail, &n);
		CHECK(rc == 1 || rc == 0 || rc == -EINVAL || rc == -EBADMSG);
		if (final_rc != 0) {
			/* A verdict, once reached, holds with more bytes. */
			CHECK(rc == final_rc);
			if (rc == 1)
				CHECK(n.end == final_names.end && n.total == final_names.total);
		} else if (rc != 0) {
			final_rc = rc;
			final_names = n;
		}
		if (rc == 1) {
			CHECK(n.end >= 5 && n.end <= n.total && n.end <= avail);
			if (n.portal)
				CHECK(n.portal >= (const char *)copy + 5 &&
				      n.portal + n.portal_len < (const char *)copy + n.end &&
				      n.portal[n.portal_len] == '\0');
			if (n.stmt)
				CHECK(n.stmt >= (const char *)copy + 5 &&
				      n.stmt + n.stmt_len < (const char *)copy + n.end &&
				      n.stmt[n.stmt_len] == '\0');
			if (avail >= n.total)
				check_renamed(copy, &n, data[0]);
		}
		free(copy);
		if (avail == mlen)
			break;
	}
	return 0;
}
