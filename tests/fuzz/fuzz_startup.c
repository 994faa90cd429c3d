#include "pfbuild.h"
/*
 * libFuzzer target for pf_proto_parse_startup(). Beyond "does not crash" (ASan/UBSan watch
 * the parser), it checks the contract: a positive result is the packet's own length and fits
 * in the input, the kind matches the request code, every returned string lies inside the
 * packet and is NUL-terminated there, the shortcuts agree with the parameter list, every error
 * is one of the documented errnos, and proper prefixes of an accepted packet ask for more.
 */

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgfunnel/proto.h"

#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint32_t be32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) |
	       (uint32_t)p[3];
}

/* s must start inside data[0..n) and have its NUL inside too. */
static void check_inside(const uint8_t *data, size_t n, const char *s)
{
	const uint8_t *p = (const uint8_t *)s;

	CHECK(p >= data && p < data + n);
	CHECK(memchr(p, 0, n - (size_t)(p - data)) != NULL);
}

static int parse_copy(const uint8_t *data, size_t n, pf_proto_startup_t *out)
{
	uint8_t *copy = malloc(n ? n : 1);
	int rc;

	CHECK(copy != NULL);
	if (n)
		memcpy(copy, data, n);
	rc = pf_proto_parse_startup(copy, n, out);
	free(copy);
	return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static pf_proto_startup_t s, s2;
	size_t n, i;
	int rc;

	rc = pf_proto_parse_startup(data, size, &s);
	if (rc < 0) {
		CHECK(rc == -EMSGSIZE || rc == -EPROTONOSUPPORT || rc == -EBADMSG || rc == -E2BIG ||
		      rc == -EINVAL);
		CHECK(size >= 4);
		return 0;
	}
	if (rc == 0) {
		/* Needing more is only possible when the packet is not all there. */
		CHECK(size < 8 || size < be32(data));
		return 0;
	}

	n = (size_t)rc;
	CHECK(n <= size);
	CHECK(n >= 8 && n <= PF_PROTO_STARTUP_MAX);
	CHECK(n == be32(data));
	switch (s.kind) {
	case PF_PROTO_STARTUP_SSL:
		CHECK(n == 8 && be32(data + 4) == PF_PROTO_SSL_REQUEST_CODE);
		break;
	case PF_PROTO_STARTUP_GSSENC:
		CHECK(n == 8 && be32(data + 4) == PF_PROTO_GSSENC_REQUEST_CODE);
		break;
	case PF_PROTO_STARTUP_CANCEL:
		CHECK(n == 16 && be32(data + 4) == PF_PROTO_CANCEL_REQUEST_CODE);
		CHECK(s.cancel_pid == be32(data + 8) && s.cancel_key == be32(data + 12));
		break;
	case PF_PROTO_STARTUP_NORMAL:
		CHECK(s.major == 3 && (be32(data + 4) >> 16) == 3);
		CHECK(s.minor == (be32(data + 4) & 0xffff));
		CHECK(data[n - 1] == 0);
		CHECK(s.nparams <= PF_PROTO_STARTUP_MAX_PARAMS);
		for (i = 0; i < s.nparams; i++) {
			check_inside(data, n, s.params[i].name);
			check_inside(data, n, s.params[i].value);
			CHECK(s.params[i].name[0] != '\0');
			CHECK((const uint8_t *)s.params[i].name >= data + 8);
		}
		check_inside(data, n, s.user);
		check_inside(data, n, s.database);
		CHECK(s.user[0] != '\0' && s.database[0] != '\0');
		CHECK(s.user == pf_proto_startup_get(&s, "user"));
		if (s.options)
			CHECK(s.options == pf_proto_startup_get(&s, "options"));
		if (s.replication)
			CHECK(s.replication == pf_proto_startup_get(&s, "replication"));
		break;
	default:
		CHECK(0);
	}

	/* Bytes after the packet do not matter, and prefixes ask for more. */
	CHECK(parse_copy(data, n, &s2) == rc);
	CHECK(s2.kind == s.kind && s2.nparams == s.nparams);
	CHECK(parse_copy(data, n - 1, &s2) == 0);
	CHECK(parse_copy(data, n / 2, &s2) == 0);
	CHECK(parse_copy(data, 7, &s2) == 0);
	CHECK(parse_copy(data, 3, &s2) == 0);
	return 0;
}
