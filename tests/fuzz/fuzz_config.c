#include "config.h"
/*
 * libFuzzer target for the config parser (pf_config_load_string): any text must either load
 * into a snapshot whose every parameter formats, or fail with a one-line message naming the
 * file. Inputs with '%' are skipped so that %include never reads files of the machine.
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgfunnel/config.h"

#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void ignore_warning(void *arg, const char *file, int line, const char *msg)
{
	(void)arg;
	(void)line;
	CHECK(file != NULL && msg != NULL && strchr(msg, '\n') == NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text, err[512], value[4096];
	pf_config_t *cfg = NULL;
	size_t count;
	const pf_config_param_t *params = pf_config_params(&count);

	if (memchr(data, '%', size))
		return 0;
	text = malloc(size + 1);
	if (!text)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	err[0] = '\0';
	if (pf_config_load_string(text, "fuzz.ini", &cfg, ignore_warning, NULL, err, sizeof(err)) ==
	    0) {
		CHECK(cfg != NULL);
		for (size_t i = 0; i < count; i++)
			(void)pf_config_format(cfg, &params[i], value, sizeof(value));
		for (size_t i = 0; i < cfg->n_dbs; i++)
			CHECK(pf_config_find_db(cfg, cfg->dbs[i].name) == &cfg->dbs[i]);
		pf_config_free(cfg);
	} else {
		CHECK(cfg == NULL);
		CHECK(strncmp(err, "fuzz.ini", 8) == 0);
		CHECK(strchr(err, '\n') == NULL);
	}
	free(text);
	return 0;
}
