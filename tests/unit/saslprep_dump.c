#include "pfbuild.h"
/*
 * Helper for tests/unit/saslprep_model.py and scripts/check-saslprep-postgres.py: reads one
 * hex-encoded password per line on stdin and writes "<result> <hex of pf_saslprep's output>"
 * per line on stdout, so a Python reference model can compare millions of inputs at once.
 * Not a test by itself.
 */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgfunnel/saslprep.h"

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int main(void)
{
	static char line[1 << 16];
	static char raw[1 << 15];

	while (fgets(line, sizeof(line), stdin)) {
		size_t n = strcspn(line, "\r\n");
		size_t k = 0;
		char *out = NULL;
		int rc;

		if (n % 2 != 0 || n / 2 >= sizeof(raw)) {
			fprintf(stderr, "bad input line\n");
			return 2;
		}
		for (size_t i = 0; i < n; i += 2) {
			int hi = hexval(line[i]), lo = hexval(line[i + 1]);

			if (hi < 0 || lo < 0) {
				fprintf(stderr, "bad hex\n");
				return 2;
			}
			raw[k++] = (char)(hi << 4 | lo);
		}
		raw[k] = '\0';
		if (memchr(raw, '\0', k)) {
			fprintf(stderr, "NUL in input\n");
			return 2;
		}
		rc = pf_saslprep(raw, &out);
		if (rc < 0) {
			fprintf(stderr, "pf_saslprep: %d\n", rc);
			return 1;
		}
		printf("%d ", rc);
		for (const unsigned char *p = (const unsigned char *)out; *p; p++)
			printf("%02x", *p);
		putchar('\n');
		pf_saslprep_free(out);
	}
	return ferror(stdin) ? 1 : 0;
}
