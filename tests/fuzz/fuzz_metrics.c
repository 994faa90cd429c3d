#include "pfbuild.h"
/*
 * libFuzzer target for the metrics endpoint's HTTP request parser (pf_metrics_parse_request):
 * whatever a scraper, or anyone who reaches metrics_port, sends. The input is the bytes received
 * so far, in a block of exactly that size (ASan sees any read past it).
 *
 * Checks: the status is one the contract lists; HEAD is reported only with 200; 200 only for a
 * request line that starts with "GET " or "HEAD "; 431 only once PF_METRICS_MAX_REQUEST bytes
 * are in; "incomplete" (0) for the whole input means incomplete for each prefix too; and once a
 * prefix holds a complete head, the verdict on it stands whatever bytes follow (the server
 * answers as soon as the head is in, so the bytes after it must not change the answer).
 */

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pgfunnel/metrics.h"

#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The verdict on the first n bytes, parsed from a copy of exactly n bytes. */
static int verdict(const uint8_t *data, size_t n, bool *head)
{
	char *copy = malloc(n ? n : 1);
	int rc;

	CHECK(copy != NULL);
	memcpy(copy, data, n);
	*head = true; /* must be cleared unless the answer is 200 for HEAD */
	rc = pf_metrics_parse_request(copy, n, head);
	free(copy);
	switch (rc) {
	case 0:
	case 200:
	case 400:
	case 404:
	case 405:
	case 431:
	case 505:
		break;
	default:
		CHECK(!"status not in the contract");
	}
	CHECK(!*head || rc == 200);
	if (rc == 200)
		CHECK((n >= 4 && memcmp(data, "GET ", 4) == 0) ||
		      (n >= 5 && memcmp(data, "HEAD ", 5) == 0));
	if (*head)
		CHECK(memcmp(data, "HEAD ", 5) == 0);
	if (rc == 0)
		CHECK(n < PF_METRICS_MAX_REQUEST);
	if (rc == 431)
		CHECK(n >= PF_METRICS_MAX_REQUEST);
	return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	bool head, phead;
	int rc = verdict(data, size, &head);
	size_t cuts[4], i;

	/* A few prefixes (not all: that would be quadratic). */
	cuts[0] = size / 2;
	cuts[1] = size ? size - 1 : 0;
	cuts[2] = size > 0 ? data[0] % (size + 1) : 0;
	cuts[3] = size > 1 ? ((size_t)data[size - 1] * 31) % (size + 1) : 0;
	for (i = 0; i < 4; i++) {
		int prc = verdict(data, cuts[i], &phead);

		if (rc == 0)
			CHECK(prc == 0);
		/* A complete head in the prefix: the longer input gets the same answer. */
		if (prc != 0 && prc != 431) {
			CHECK(prc == rc);
			CHECK(phead == head);
		}
	}
	return 0;
}
