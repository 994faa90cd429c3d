#include "pfbuild.h"
/*
 * libFuzzer target for pf_saslprep: the input (cut at its first NUL) as a password, which a
 * client controls when it logs in with a cleartext password against a SCRAM secret. Checks
 * the contract: a result from -ENOMEM to PF_SASLPREP_TOO_LONG, a string always returned, the raw
 * bytes for every fallback, valid UTF-8 with no prohibited ASCII control left for a prepared
 * non-ASCII input. No crash, no leak, no sanitizer report.
 */

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pgfunnel/saslprep.h"

#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool is_ascii(const char *s)
{
	for (; *s; s++) {
		if ((unsigned char)*s >= 0x80)
			return false;
	}
	return true;
}

/* Structural UTF-8 check (lead and continuation bytes), enough for an invariant. */
static bool is_utf8(const unsigned char *s)
{
	while (*s) {
		size_t k = *s < 0x80 ? 0 : *s >= 0xF0 ? 3 : *s >= 0xE0 ? 2 : *s >= 0xC2 ? 1 : 9;

		if (k == 9 || *s > 0xF4)
			return false;
		for (size_t j = 1; j <= k; j++) {
			if ((s[j] & 0xC0) != 0x80)
				return false;
		}
		s += k + 1;
	}
	return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *in = malloc(size + 1);
	char *out = NULL;
	int rc;

	if (!in)
		return 0;
	memcpy(in, data, size);
	in[size] = '\0';
	rc = pf_saslprep(in, &out);
	CHECK(rc == -ENOMEM || (rc >= PF_SASLPREP_OK && rc <= PF_SASLPREP_TOO_LONG));
	if (rc >= 0) {
		CHECK(out != NULL);
		if (rc > 0 || is_ascii(in))
			CHECK(strcmp(out, in) == 0);
		if (rc == 0 && !is_ascii(in)) {
			CHECK(*out != '\0' && is_utf8((const unsigned char *)out));
			for (const char *p = out; *p; p++)
				CHECK((unsigned char)*p >= 0x20 && *p != 0x7f);
		}
	}
	pf_saslprep_free(out);
	free(in);
	return 0;
}
