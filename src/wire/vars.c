/*
 * vars: tracked session parameters and the SET query that syncs them (see vars.h).
 */
#include "pfbuild.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "pgfunnel/vars.h"

static const char *const names[PF_VAR_COUNT] = {
        [PF_VAR_CLIENT_ENCODING] = "client_encoding",
        [PF_VAR_DATESTYLE] = "DateStyle",
        [PF_VAR_TIMEZONE] = "TimeZone",
        [PF_VAR_STANDARD_CONFORMING_STRINGS] = "standard_conforming_strings",
        [PF_VAR_APPLICATION_NAME] = "application_name",
        [PF_VAR_INTERVALSTYLE] = "IntervalStyle",
};

const char *pf_var_name(pf_var_id_t id)
{
	return names[id];
}

int pf_var_lookup(const char *name)
{
	for (int i = 0; i < PF_VAR_COUNT; i++) {
		if (pf_strcaseeq(name, names[i]))
			return i;
	}
	return -1;
}

int pf_vars_set(pf_vars_t *vars, pf_var_id_t id, const char *value)
{
	char *copy = NULL;

	if (value) {
		if (vars->v[id] && strcmp(vars->v[id], value) == 0)
			return 0;
		copy = strdup(value);
		if (!copy)
			return -ENOMEM;
	}
	free(vars->v[id]);
	vars->v[id] = copy;
	return 0;
}

int pf_vars_copy(pf_vars_t *dst, const pf_vars_t *src)
{
	for (int i = 0; i < PF_VAR_COUNT; i++) {
		int rc = pf_vars_set(dst, (pf_var_id_t)i, src->v[i]);

		if (rc < 0)
			return rc;
	}
	return 0;
}

void pf_vars_clear(pf_vars_t *vars)
{
	for (int i = 0; i < PF_VAR_COUNT; i++) {
		free(vars->v[i]);
		vars->v[i] = NULL;
	}
}

static void put_literal(pf_buf_t *sql, const char *value, bool backslash_escapes)
{
	if (backslash_escapes)
		pf_buf_put_u8(sql, 'E');
	pf_buf_put_u8(sql, '\'');
	for (const char *p = value; *p; p++) {
		if (*p == '\'' || (backslash_escapes && *p == '\\'))
			pf_buf_put_u8(sql, (uint8_t)*p);
		pf_buf_put_u8(sql, (uint8_t)*p);
	}
	pf_buf_put_u8(sql, '\'');
}

int pf_vars_build_set(const pf_vars_t *wanted, const pf_vars_t *server, pf_buf_t *sql)
{
	const char *scs = server->v[PF_VAR_STANDARD_CONFORMING_STRINGS];
	/* An E'' literal with doubled backslashes reads the same whatever the setting: used
	 * unless the server said standard_conforming_strings is on. */
	bool escapes = !scs || strcmp(scs, "on") != 0;
	int n = 0;

	for (int i = 0; i < PF_VAR_COUNT; i++) {
		const char *w = wanted->v[i];
		const char *s = server->v[i];

		if (!w || (s && strcmp(w, s) == 0))
			continue;
		pf_buf_put_bytes(sql, "SET ", 4);
		pf_buf_put_bytes(sql, names[i], strlen(names[i]));
		pf_buf_put_u8(sql, '=');
		put_literal(sql, w, escapes);
		pf_buf_put_u8(sql, ';');
		n++;
	}
	return n;
}
