#include "pfbuild.h"
/*
 * libFuzzer target for the message-header reader. Input: byte 0 picks max_packet_size (one of
 * the bounds 0, 1, 4, 5, INT32_MAX, INT32_MAX + 1, UINT32_MAX - 1, UINT32_MAX and a few usual
 * values; or, for byte 0 >= 16, the next four bytes as the limit itself), byte 1 seeds the
 * fragment sizes, the rest is the stream. The stream is walked twice: once
 * with pf_proto_read_header() on the whole buffer, once through pf_proto_hdr_feed() in
 * fragments of 1..16 bytes (each its own heap block, so ASan catches reads past a fragment),
 * skipping payloads in both. Checks: consumed never exceeds what was offered (nor 5), a 0
 * result consumed everything, and both walks see the same headers and end the same way.
 */

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgfunnel/proto.h"

#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_HDRS 256

/* How a walk ended: the error, or 0 with `partial` header bytes pending at the end. */
typedef struct walk {
	pf_proto_hdr_t hdrs[MAX_HDRS];
	size_t nhdrs;
	int end_rc;
	size_t partial;
} walk_t;

static void walk_whole(const uint8_t *p, size_t n, uint32_t max, walk_t *w)
{
	size_t pos = 0;

	memset(w, 0, sizeof(*w));
	while (pos < n && w->nhdrs < MAX_HDRS) {
		pf_proto_hdr_t h;
		int rc = pf_proto_read_header(p + pos, n - pos, max, &h);

		if (rc == 0) {
			w->partial = n - pos;
			return;
		}
		if (rc < 0) {
			CHECK(rc == -EBADMSG || rc == -EMSGSIZE);
			w->end_rc = rc;
			return;
		}
		CHECK(rc == PF_PROTO_HDR_LEN);
		CHECK(h.len >= 4 && h.len <= max && h.payload_len == h.len - 4 && h.type != 0);
#ifdef PF_PROTO_MAX_MSG_LEN
		/* The wire length is a signed Int32, whatever max_packet_size allows; so len + 1
		 * (the whole message with its type byte) cannot wrap in a uint32_t. */
		CHECK(h.len <= PF_PROTO_MAX_MSG_LEN);
#endif
		w->hdrs[w->nhdrs++] = h;
		pos += PF_PROTO_HDR_LEN;
		pos += n - pos < h.payload_len ? n - pos : h.payload_len;
	}
}

static void walk_fragments(const uint8_t *p, size_t n, uint32_t max, uint32_t seed, walk_t *w)
{
	pf_proto_hdr_reader_t r;
	size_t pos = 0, skip = 0;

	memset(w, 0, sizeof(*w));
	pf_proto_hdr_reader_init(&r);
	while (pos < n && w->nhdrs < MAX_HDRS) {
		size_t flen, off = 0;
		uint8_t *frag;

		seed = seed * 1103515245u + 12345u;
		flen = 1 + ((seed >> 16) & 15);
		if (flen > n - pos)
			flen = n - pos;
		frag = malloc(flen);
		CHECK(frag != NULL);
		memcpy(frag, p + pos, flen);
		while (off < flen && w->nhdrs < MAX_HDRS) {
			pf_proto_hdr_t h;
			size_t consumed = (size_t)-1;
			int rc;

			if (skip) {
				size_t k = flen - off < skip ? flen - off : skip;

				off += k;
				skip -= k;
				continue;
			}
			rc = pf_proto_hdr_feed(&r, frag + off, flen - off, &consumed, max, &h);
			CHECK(consumed <= flen - off);
			CHECK(consumed <= PF_PROTO_HDR_LEN);
			off += consumed;
			if (rc < 0) {
				CHECK(rc == -EBADMSG || rc == -EMSGSIZE);
				w->end_rc = rc;
				free(frag);
				return;
			}
			if (rc == 0) {
				CHECK(off == flen);
				CHECK(r.have > 0 && r.have < PF_PROTO_HDR_LEN);
				continue;
			}
			CHECK(rc == 1);
			CHECK(r.have == 0);
			w->hdrs[w->nhdrs++] = h;
			skip = h.payload_len;
		}
		free(frag);
		pos += flen;
	}
	w->partial = r.have;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint32_t maxes[16] = {
	        0,
	        1,
	        4,
	        5,
	        64,
	        8192,
	        1u << 20,
	        0x7fffffff,
	        0x80000000,
	        0xfffffff0,
	        UINT32_MAX - 1,
	        UINT32_MAX,
	        UINT32_MAX,
	        0,
	        1,
	        UINT32_MAX - 1,
	};
	static walk_t whole, frag;
	uint32_t max;
	size_t i;

	if (size < 2)
		return 0;
	if (data[0] < 16) {
		max = maxes[data[0]];
	} else {
		if (size < 6)
			return 0;
		max = (uint32_t)data[2] << 24 | (uint32_t)data[3] << 16 | (uint32_t)data[4] << 8 |
		      data[5];
		data += 4;
		size -= 4;
	}
	walk_whole(data + 2, size - 2, max, &whole);
	walk_fragments(data + 2, size - 2, max, data[1], &frag);

	CHECK(whole.nhdrs == frag.nhdrs);
	for (i = 0; i < whole.nhdrs; i++) {
		CHECK(whole.hdrs[i].type == frag.hdrs[i].type);
		CHECK(whole.hdrs[i].len == frag.hdrs[i].len);
		CHECK(whole.hdrs[i].payload_len == frag.hdrs[i].payload_len);
	}
	if (whole.nhdrs < MAX_HDRS) {
		CHECK(whole.end_rc == frag.end_rc);
		CHECK(whole.partial == frag.partial);
	}
	return 0;
}
