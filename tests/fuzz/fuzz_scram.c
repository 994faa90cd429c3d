#include "pfbuild.h"
/*
 * libFuzzer target for the SCRAM/MD5 parsers. The first byte picks a mode, the next two give
 * where the rest splits into two peer messages:
 *   0: server side (fixed secret, fixed server nonce): part 1 as client-first, part 2 as
 *      client-final; every -EPROTO/-ENOTSUP comes with Postgres' error text;
 *   1: client side with passthrough keys (fixed client nonce): part 1 as server-first, part 2
 *      as server-final;
 *   2: the same with a password (PBKDF2 through a cache; iteration counts of 5+ digits are
 *      replaced by passthrough so a unit never takes seconds);
 *   3: the whole rest as a stored secret (pf_scram_secret_parse) and as an MD5 response.
 * Fixed nonces let the fuzzer reach the proof checks. No crash, no leak, no sanitizer report.
 */

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pgfunnel/scram.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char secret_text[] =
        "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"
        "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";

static pf_scram_cache_t *cache;

static bool has_big_iterations(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i + 1 < n; i++) {
		if (p[i] != 'i' || p[i + 1] != '=')
			continue;
		size_t d = 0;
		while (i + 2 + d < n && p[i + 2 + d] >= '0' && p[i + 2 + d] <= '9')
			d++;
		if (d >= 5)
			return true;
	}
	return false;
}

static void fuzz_server(const uint8_t *a, size_t an, const uint8_t *b, size_t bn)
{
	pf_scram_secret_t s;
	pf_scram_server_t srv;
	uint8_t ck[32];
	char out[PF_SCRAM_SERVER_FIRST_MAX];
	size_t n;
	int rc;

	if (pf_scram_secret_parse(secret_text, &s) != 0)
		abort();
	if (pf_scram_server_start(&srv, &s) != 0 || pf_scram_server_set_nonce(&srv, "SNONCE") != 0)
		abort();
	rc = pf_scram_server_first(&srv, a, an, out, sizeof(out), &n);
	if (rc == 0) {
		if (n != strlen(out))
			abort();
		rc = pf_scram_server_final(&srv, b, bn, out, sizeof(out), &n);
		if (rc == 0 && pf_scram_server_client_key(&srv, ck) != 0)
			abort();
	}
	/* A refusal always says what to tell the client, in Postgres' words; nothing else does. */
	if ((rc == -EPROTO || rc == -ENOTSUP) != (pf_scram_server_error(&srv)->sqlstate != NULL))
		abort();
	if (pf_scram_server_error(&srv)->sqlstate && !pf_scram_server_error(&srv)->message)
		abort();
	pf_scram_server_clear(&srv);
}

static void fuzz_client(const uint8_t *a, size_t an, const uint8_t *b, size_t bn, bool password)
{
	static const uint8_t ck[32] = {1, 2, 3}, sk[32] = {4, 5, 6};
	pf_scram_client_t cl;
	char out[2 * PF_SCRAM_MAX_MSG_LEN];
	size_t n;
	int rc;

	if (password && !has_big_iterations(a, an))
		rc = pf_scram_client_start(&cl, "pencil", NULL, NULL, cache);
	else
		rc = pf_scram_client_start(&cl, NULL, ck, sk, NULL);
	if (rc != 0 || pf_scram_client_set_nonce(&cl, "CNONCE") != 0)
		abort();
	if (pf_scram_client_first(&cl, out, sizeof(out), &n) != 0)
		abort();
	if (pf_scram_client_final(&cl, a, an, out, sizeof(out), &n) == 0) {
		if (n != strlen(out))
			abort();
		(void)pf_scram_client_verify(&cl, b, bn);
	}
	pf_scram_client_clear(&cl);
}

static void fuzz_text(const uint8_t *p, size_t n)
{
	static const uint8_t salt[4] = {1, 2, 3, 4};
	pf_scram_secret_t s;
	char buf[PF_SCRAM_SECRET_MAX_LEN];
	char *str = malloc(n + 1);

	if (!str)
		return;
	memcpy(str, p, n);
	str[n] = '\0';
	if (pf_scram_secret_parse(str, &s) == 0) {
		/* Whatever parses must format back to a string that parses to the same secret. */
		pf_scram_secret_t t;
		if (pf_scram_secret_format(&s, buf, sizeof(buf)) <= 0 ||
		    pf_scram_secret_parse(buf, &t) != 0 || memcmp(&s, &t, sizeof(s)) != 0)
			abort();
	}
	(void)pf_md5_verify("md5d18bf5f8eddaae3aed1d69b23a252748", salt, str);
	(void)pf_md5_is_secret(str);
	free(str);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t split;

	if (!cache && pf_scram_cache_new(64, &cache) != 0)
		abort();
	if (size < 3)
		return 0;
	split = ((size_t)data[1] << 8 | data[2]);
	data += 3;
	size -= 3;
	if (split > size)
		split = size;
	switch (data[-3] & 3) {
	case 0:
		fuzz_server(data, split, data + split, size - split);
		break;
	case 1:
		fuzz_client(data, split, data + split, size - split, false);
		break;
	case 2:
		fuzz_client(data, split, data + split, size - split, true);
		break;
	default:
		fuzz_text(data, size);
		break;
	}
	return 0;
}
