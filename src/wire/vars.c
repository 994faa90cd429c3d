/*
 * vars: tracked session parameters and the SET query that syncs them (see vars.h).
 */
#include "pfbuild.h"

#include <assert.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgfunnel/config.h"
#include "pgfunnel/scram.h"
#include "pgfunnel/util.h"
#include "pgfunnel/vars.h"

static const char *const builtin_names[PF_VAR_BUILTIN_COUNT] = {
        [PF_VAR_CLIENT_ENCODING] = "client_encoding",
        [PF_VAR_DATESTYLE] = "DateStyle",
        [PF_VAR_TIMEZONE] = "TimeZone",
        [PF_VAR_STANDARD_CONFORMING_STRINGS] = "standard_conforming_strings",
        [PF_VAR_APPLICATION_NAME] = "application_name",
};

/* track_extra_parameters, as configured (process-wide: it changes only at start-up). */
static char extra_names[PF_VAR_EXTRA_MAX][PF_VAR_NAME_MAX + 1];
static int n_extra;

/* A name Postgres could know as a GUC, safe to write unquoted into SET. */
static bool guc_name_ok(const char *name)
{
	if (!((name[0] >= 'a' && name[0] <= 'z') || (name[0] >= 'A' && name[0] <= 'Z') ||
	      name[0] == '_'))
		return false;
	for (const char *p = name; *p; p++) {
		char ch = *p;

		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		      (ch >= '0' && ch <= '9') || ch == '_' || ch == '.'))
			return false;
	}
	return true;
}

int pf_vars_configure(const char *list, char *err, size_t errlen)
{
	char names[PF_VAR_EXTRA_MAX][PF_VAR_NAME_MAX + 1];
	char item[PF_VAR_NAME_MAX + 2];
	const char *cursor = list;
	int n = 0, len;

	while ((len = pf_config_list_next(&cursor, item, sizeof(item))) != 0) {
		bool dup = false;

		if (len < 0 || (size_t)len > PF_VAR_NAME_MAX) {
			snprintf(err, errlen,
			         "track_extra_parameters: a name is longer than %d bytes",
			         PF_VAR_NAME_MAX);
			return -EINVAL;
		}
		if (!guc_name_ok(item)) {
			snprintf(err, errlen,
			         "track_extra_parameters: \"%s\" is not a parameter name", item);
			return -EINVAL;
		}
		if (pf_strcaseeq(item, "options") || pf_strcaseeq(item, "user") ||
		    pf_strcaseeq(item, "database")) {
			snprintf(err, errlen, "track_extra_parameters: \"%s\" cannot be tracked",
			         item);
			return -EINVAL;
		}
		for (int i = 0; i < PF_VAR_BUILTIN_COUNT && !dup; i++)
			dup = pf_strcaseeq(item, builtin_names[i]);
		for (int i = 0; i < n && !dup; i++)
			dup = pf_strcaseeq(item, names[i]);
		if (dup)
			continue;
		if (n == PF_VAR_EXTRA_MAX) {
			snprintf(err, errlen, "track_extra_parameters: more than %d names",
			         PF_VAR_EXTRA_MAX);
			return -EINVAL;
		}
		memcpy(names[n++], item, (size_t)len + 1);
	}
	memset(extra_names, 0, sizeof(extra_names));
	memcpy(extra_names, names, sizeof(names[0]) * (size_t)n);
	n_extra = n;
	return 0;
}

int pf_var_extra_count(void)
{
	return n_extra;
}

const char *pf_var_name(pf_var_id_t id)
{
	assert((int)id >= 0 && id < PF_VAR_COUNT);
	if (id < PF_VAR_BUILTIN_COUNT)
		return builtin_names[id];
	if ((int)(id - PF_VAR_EXTRA) < n_extra)
		return extra_names[id - PF_VAR_EXTRA];
	return NULL;
}

int pf_var_lookup(const char *name)
{
	for (int i = 0; i < PF_VAR_BUILTIN_COUNT; i++) {
		if (pf_strcaseeq(name, builtin_names[i]))
			return i;
	}
	for (int i = 0; i < n_extra; i++) {
		if (pf_strcaseeq(name, extra_names[i]))
			return PF_VAR_EXTRA + i;
	}
	return -1;
}

int pf_vars_parse_options(const char *options,
                          bool (*fn)(void *arg, const char *name, const char *value), void *arg)
{
	char buf[PF_VAR_OPTION_MAX + 1];
	const char *p = options;

	for (;;) {
		size_t len = 0;
		char *eq;

		while (*p == ' ' || (*p >= '\t' && *p <= '\r'))
			p++;
		if (!*p)
			return 0;
		if (p[0] != '-' || (p[1] != 'c' && p[1] != '-'))
			return -EINVAL;
		if (p[1] == 'c') {
			p += 2;
			while (*p == ' ' || (*p >= '\t' && *p <= '\r'))
				p++;
		} else {
			p += 2; /* "--name=value": the argument follows at once */
		}
		/* One argument: up to an unescaped blank; a backslash takes the next byte as is. */
		while (*p && !(*p == ' ' || (*p >= '\t' && *p <= '\r'))) {
			if (*p == '\\') {
				p++;
				if (!*p)
					break;
			}
			if (len == PF_VAR_OPTION_MAX)
				return -E2BIG;
			buf[len++] = *p++;
		}
		buf[len] = '\0';
		eq = memchr(buf, '=', len);
		if (!eq || eq == buf)
			return -EINVAL;
		*eq = '\0';
		if (!fn(arg, buf, eq + 1))
			return 1;
	}
}

/* ---- interned values ---- */

typedef struct vstr {
	struct vstr *next; /* in its bucket */
	uint32_t refs;     /* the slots pointing at s */
	uint32_t hash;
	char s[];
} vstr_t;

static vstr_t **vtab;     /* buckets; vtab_cap is 0 or a power of two */
static uint32_t vtab_cap; /* buckets */
static size_t vtab_n;     /* values */

static vstr_t *vstr_of(const char *s)
{
	return (vstr_t *)(void *)((char *)(uintptr_t)s - offsetof(vstr_t, s));
}

/* Values are chosen by clients (application_name, SET ...): a keyed hash with a random key, so
 * that nobody can prepare values that all land in one bucket. */
static uint64_t vkey[2];
static bool vkey_set;

static uint32_t vhash(const char *s, size_t len)
{
	if (!vkey_set) {
		/* Without randomness the table still works, with a fixed key. */
		if (pf_random_bytes(vkey, sizeof(vkey)) != 0)
			vkey[0] = 0x9e3779b97f4a7c15ull, vkey[1] = (uint64_t)(uintptr_t)&vkey;
		vkey_set = true;
	}
	return (uint32_t)pf_siphash24(vkey[0], vkey[1], s, len);
}

/* Doubles the bucket array (or makes the first); false when out of memory (the table still
 * works, only with longer chains). */
static bool vtab_grow(void)
{
	uint32_t ncap = vtab_cap ? vtab_cap * 2 : 64;
	vstr_t **nb;

	if (vtab_cap >= (1u << 30))
		return false;
	nb = calloc(ncap, sizeof(*nb));
	if (!nb)
		return false;
	for (uint32_t i = 0; i < vtab_cap; i++) {
		vstr_t *e = vtab[i];

		while (e) {
			vstr_t *next = e->next;

			e->next = nb[e->hash & (ncap - 1)];
			nb[e->hash & (ncap - 1)] = e;
			e = next;
		}
	}
	free(vtab);
	vtab = nb;
	vtab_cap = ncap;
	return true;
}

/* value's shared copy with one more reference, or NULL when out of memory. */
static const char *intern(const char *value)
{
	size_t len = strlen(value);
	uint32_t h = vhash(value, len);
	vstr_t *e;

	if (vtab_cap) {
		for (e = vtab[h & (vtab_cap - 1)]; e; e = e->next) {
			if (e->hash == h && strcmp(e->s, value) == 0) {
				/* Each reference is a slot of a live connection: far below 2^32. */
				assert(e->refs < UINT32_MAX);
				e->refs++;
				return e->s;
			}
		}
	}
	if ((vtab_n >= vtab_cap || !vtab_cap) && !vtab_grow() && !vtab_cap)
		return NULL;
	e = malloc(sizeof(*e) + len + 1);
	if (!e)
		return NULL;
	e->refs = 1;
	e->hash = h;
	memcpy(e->s, value, len + 1);
	e->next = vtab[h & (vtab_cap - 1)];
	vtab[h & (vtab_cap - 1)] = e;
	vtab_n++;
	return e->s;
}

static void unintern(const char *s)
{
	vstr_t *e, **pp;

	if (!s)
		return;
	e = vstr_of(s);
	assert(e->refs > 0 && vtab_cap);
	if (--e->refs > 0)
		return;
	for (pp = &vtab[e->hash & (vtab_cap - 1)]; *pp != e; pp = &(*pp)->next)
		assert(*pp);
	*pp = e->next;
	vtab_n--;
	free(e);
	if (vtab_n == 0) {
		free(vtab);
		vtab = NULL;
		vtab_cap = 0;
	}
}

size_t pf_vars_interned(void)
{
	return vtab_n;
}

const char *pf_vars_intern(const char *s)
{
	return intern(s);
}

void pf_vars_release(const char *s)
{
	unintern(s);
}

const char *pf_vars_get_extra(const pf_vars_t *vars, pf_var_id_t id)
{
	assert((int)id >= PF_VAR_EXTRA && (int)(id - PF_VAR_EXTRA) < PF_VAR_EXTRA_MAX);
	if ((int)(id - PF_VAR_EXTRA) >= n_extra)
		return NULL;
	if (n_extra == 1)
		return vars->extra.one;
	return vars->extra.many ? vars->extra.many[id - PF_VAR_EXTRA] : NULL;
}

static const char **slot(pf_vars_t *vars, pf_var_id_t id)
{
	if ((int)id < PF_VAR_BUILTIN_COUNT)
		return &vars->v[id];
	assert((int)(id - PF_VAR_EXTRA) < n_extra);
	if (n_extra == 1)
		return &vars->extra.one;
	if (!vars->extra.many) {
		vars->extra.many = calloc((size_t)n_extra, sizeof(*vars->extra.many));
		if (!vars->extra.many)
			return NULL;
	}
	return &vars->extra.many[id - PF_VAR_EXTRA];
}

int pf_vars_set(pf_vars_t *vars, pf_var_id_t id, const char *value)
{
	const char *copy = NULL;
	const char **sl;

	assert((int)id >= 0 && (int)id < PF_VAR_EXTRA + n_extra);
	if (!value && !pf_vars_get(vars, id))
		return 0;
	sl = slot(vars, id);
	if (!sl)
		return -ENOMEM;
	if (value) {
		if (*sl && strcmp(*sl, value) == 0)
			return 0;
		copy = intern(value);
		if (!copy)
			return -ENOMEM;
	}
	unintern(*sl);
	*sl = copy;
	return 0;
}

int pf_vars_copy(pf_vars_t *dst, const pf_vars_t *src)
{
	int end = PF_VAR_EXTRA + n_extra;

	for (int i = 0; i < end; i++) {
		int rc = pf_vars_set(dst, (pf_var_id_t)i, pf_vars_get(src, (pf_var_id_t)i));

		if (rc < 0)
			return rc;
	}
	return 0;
}

void pf_vars_clear(pf_vars_t *vars)
{
	for (int i = 0; i < PF_VAR_BUILTIN_COUNT; i++) {
		unintern(vars->v[i]);
		vars->v[i] = NULL;
	}
	if (n_extra == 1) {
		unintern(vars->extra.one);
		vars->extra.one = NULL;
	} else if (vars->extra.many) {
		for (int i = 0; i < n_extra; i++)
			unintern(vars->extra.many[i]);
		free(vars->extra.many);
		vars->extra.many = NULL;
	}
}

/*
 * A dollar-quoted literal ($pf$...$pf$, or $pfN$ when the value holds "$pf"): no escape
 * processing at all, whatever standard_conforming_strings or backslash_quote say. Its '$'s
 * are never the trail byte of a multibyte character in any client encoding Postgres knows
 * (SJIS, BIG5, GBK, UHC, GB18030 trail bytes are 0x30 and above), so no value can swallow
 * the delimiter.
 */
static void put_dollar_literal(pf_buf_t *sql, const char *value)
{
	char tag[24] = "$pf";
	size_t taglen;

	/* The tag without its closing '$' must not occur in the value: then neither can the
	 * tag, nor can the value's end run into the closing delimiter. */
	for (unsigned n = 1; strstr(value, tag); n++)
		snprintf(tag, sizeof(tag), "$pf%u", n);
	taglen = strlen(tag);
	tag[taglen++] = '$';
	pf_buf_put_bytes(sql, tag, taglen);
	pf_buf_put_bytes(sql, value, strlen(value));
	pf_buf_put_bytes(sql, tag, taglen);
}

static void put_literal(pf_buf_t *sql, const char *value, bool backslash_escapes)
{
	/* With escapes on, a backslash would be written doubled; in a client encoding whose
	 * multibyte characters may end in 0x5c (SJIS, BIG5, GBK...), a value ending a character
	 * with it turns our first backslash into part of that character, and the second then
	 * escapes the quote that follows (CVE-2006-2314's shape; Postgres's backslash_quote
	 * guards it only when a client has not set that to on). Such values go dollar-quoted. */
	if (backslash_escapes && strchr(value, '\\')) {
		put_dollar_literal(sql, value);
		return;
	}
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
	int end = PF_VAR_EXTRA + n_extra; /* the slots past it are never set */
	int n = 0;

	/* Runs at every attach (each transaction in transaction mode): the configured slots
	 * only, and a name only for a SET that is written. */
	for (int i = 0; i < end; i++) {
		const char *w = pf_vars_get(wanted, (pf_var_id_t)i);
		const char *s = pf_vars_get(server, (pf_var_id_t)i);
		const char *name;

		/* Interned: equal values are the same pointer. */
		assert(!w || !s || (w == s) == (strcmp(w, s) == 0));
		if (!w || w == s)
			continue;
		if (i >= PF_VAR_EXTRA && !s)
			continue; /* not reported by this server: see vars.h */
		name = pf_var_name((pf_var_id_t)i);
		assert(name);
		pf_buf_put_bytes(sql, "SET ", 4);
		pf_buf_put_bytes(sql, name, strlen(name));
		pf_buf_put_u8(sql, '=');
		put_literal(sql, w, escapes);
		pf_buf_put_u8(sql, ';');
		n++;
	}
	return n;
}
