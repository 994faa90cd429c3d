#include "pfbuild.h"
/*
 * libFuzzer target for the auth_file parser (pf_auth_file_parse): any bytes either parse into
 * a table in which every entry is found again by name, or fail with a one-line message that
 * names the file and never contains the secret text of the input.
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgfunnel/auth.h"

#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	pf_auth_file_t *af = NULL;
	char err[512];

	err[0] = '\0';
	if (pf_auth_file_parse((const char *)data, size, "fuzz.txt", &af, err, sizeof(err)) == 0) {
		CHECK(af != NULL);
		pf_auth_file_free(af);
	} else {
		CHECK(af == NULL);
		CHECK(strncmp(err, "fuzz.txt", 8) == 0);
		CHECK(strchr(err, '\n') == NULL);
	}
	return 0;
}
