#include "pfbuild.h"
/*
 * libFuzzer target for what a client sends while it authenticates: the PasswordMessage and
 * SASLInitialResponse framing (pf_proto_parse_password, pf_proto_parse_sasl_initial_response).
 * Byte 0 picks the parser, the rest is the message payload, copied into its own heap block so
 * that ASan sees any read past it. Checks: every pointer returned lies inside the payload, the
 * strings end inside it, the lengths add up exactly to the payload, and what was accepted is
 * rebuilt byte for byte by the frontend builders (pf_proto_fe_password,
 * pf_proto_fe_sasl_initial_response).
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pgfunnel/buf.h"
#include "pgfunnel/proto.h"

#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int inside(const uint8_t *p, const uint8_t *base, size_t len)
{
	return p >= base && p <= base + len;
}

static void check_rebuilt(const pf_buf_t *b, const uint8_t *payload, size_t len)
{
	CHECK(!b->failed);
	CHECK(b->len == len + PF_PROTO_HDR_LEN);
	CHECK(b->data[0] == 'p');
	CHECK(memcmp(b->data + PF_PROTO_HDR_LEN, payload, len) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *payload;
	size_t len;
	pf_buf_t b;

	if (size < 1)
		return 0;
	len = size - 1;
	payload = malloc(len ? len : 1);
	if (!payload)
		return 0;
	memcpy(payload, data + 1, len);
	pf_buf_init(&b);
	if (data[0] & 1) {
		const char *mech;
		const uint8_t *resp;
		size_t rlen;

		if (pf_proto_parse_sasl_initial_response(payload, len, &mech, &resp, &rlen) == 0) {
			size_t mlen;

			CHECK((const uint8_t *)mech == payload);
			mlen = strnlen(mech, len);
			CHECK(mlen > 0 && mlen < len);
			if (resp) {
				CHECK(inside(resp, payload, len) &&
				      inside(resp + rlen, payload, len));
				CHECK(mlen + 1 + 4 + rlen == len);
				pf_proto_fe_sasl_initial_response(&b, mech, resp, rlen);
				check_rebuilt(&b, payload, len);
			} else {
				CHECK(rlen == 0 && mlen + 1 + 4 == len);
			}
		}
	} else {
		const char *pw;

		if (pf_proto_parse_password(payload, len, &pw) == 0) {
			CHECK((const uint8_t *)pw == payload);
			CHECK(strnlen(pw, len) == len - 1);
			pf_proto_fe_password(&b, pw);
			check_rebuilt(&b, payload, len);
		}
	}
	pf_buf_free(&b);
	free(payload);
	return 0;
}
