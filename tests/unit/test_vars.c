#include "pfbuild.h"
/*
 * Unit tests for vars: the names of the tracked session parameters and their lookup, setting,
 * copying and clearing values, and above all pf_vars_build_set(), whose values come from the
 * client (startup packet, or a ParameterStatus relayed while linked) and end up inside SQL run
 * on a shared server. Each SET is checked as a whole string, then re-read the way the server's
 * lexer would read it (standard_conforming_strings on or off) to show that hostile values —
 * quotes, backslashes, control characters, multibyte UTF-8, very long strings — come back
 * exactly and never end the literal early.
 */

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgfunnel/vars.h"

/* main() configures track_extra_parameters' default, IntervalStyle: the first extra slot. */
#define PF_VAR_INTERVALSTYLE PF_VAR_EXTRA

/* Sets id in v to value, which must succeed. */
static void put(pf_vars_t *v, pf_var_id_t id, const char *value)
{
	assert_int_equal(pf_vars_set(v, id, value), 0);
}

/*
 * Runs pf_vars_build_set() on a fresh builder and checks both the SQL (whole string) and the
 * number of SETs it reports.
 */
static void expect_sql(const pf_vars_t *wanted, const pf_vars_t *server, const char *sql, int n)
{
	pf_buf_t b;
	int got;

	pf_buf_init(&b);
	got = pf_vars_build_set(wanted, server, &b);
	assert_false(b.failed);
	if (b.len != strlen(sql) || (b.len > 0 && memcmp(b.data, sql, b.len) != 0))
		fail_msg("SQL\n  got:    %.*s\n  wanted: %s", (int)b.len,
		         b.data ? (char *)b.data : "", sql);
	assert_int_equal(got, n);
	pf_buf_free(&b);
}

/* ---- a model of the server's lexer, for the SQL built here ---- */

/*
 * Reads one string literal at *p the way PostgreSQL's scanner does (scan.l): '...' with ''
 * for a quote, where backslash escapes apply only when standard_conforming_strings is off,
 * E'...' where they always apply, and $tag$...$tag$ with none. The value goes to out (a buffer of
 * cap bytes); *p moves past the closing quote. Returns 0, or -1 if the literal is malformed
 * (unterminated, truncated escape, a NUL made by an escape).
 */
static int lex_literal(const char **p, int scs_on, char *out, size_t cap)
{
	const char *s = *p;
	size_t n = 0;
	int escapes = !scs_on;

	if (*s == '$') {
		/* $tag$...$tag$: no escapes; ends at the first occurrence of the delimiter. */
		const char *end = strchr(s + 1, '$'), *close;
		char delim[64];
		size_t dlen;

		if (!end)
			return -1;
		dlen = (size_t)(end - s) + 1;
		for (const char *t = s + 1; t < end; t++)
			if (!((*t >= 'a' && *t <= 'z') || *t == '_' ||
			      (t > s + 1 && *t >= '0' && *t <= '9')))
				return -1;
		if (dlen >= sizeof(delim))
			return -1;
		memcpy(delim, s, dlen);
		delim[dlen] = '\0';
		close = strstr(s + dlen, delim);
		if (!close || (size_t)(close - (s + dlen)) + 1 > cap)
			return -1;
		memcpy(out, s + dlen, (size_t)(close - (s + dlen)));
		out[close - (s + dlen)] = '\0';
		*p = close + dlen;
		return 0;
	}
	if (*s == 'E' || *s == 'e') {
		escapes = 1;
		s++;
	}
	if (*s++ != '\'')
		return -1;
	for (;;) {
		char c = *s++;

		if (c == '\0')
			return -1;
		if (c == '\'') {
			if (*s != '\'')
				break;
			s++;
		} else if (c == '\\' && escapes) {
			c = *s++;
			switch (c) {
			case '\0':
				return -1;
			case 'b':
				c = '\b';
				break;
			case 'f':
				c = '\f';
				break;
			case 'n':
				c = '\n';
				break;
			case 'r':
				c = '\r';
				break;
			case 't':
				c = '\t';
				break;
			default:
				if (c >= '0' && c <= '7') {
					int v = c - '0';

					for (int i = 0; i < 2 && *s >= '0' && *s <= '7'; i++)
						v = v * 8 + (*s++ - '0');
					c = (char)v;
					if (c == '\0')
						return -1;
				}
				/* Any other character stands for itself (\\, \', ...). */
				break;
			}
		}
		if (n + 1 >= cap)
			return -1;
		out[n++] = c;
	}
	out[n] = '\0';
	*p = s;
	return 0;
}

/*
 * Parses sql as a server with the given standard_conforming_strings would: a sequence of
 * "SET <name>=<literal>;" and nothing else. Fills got with the values by variable and returns
 * the number of statements, or fails the test on anything else (an unknown name, a literal
 * that ends early and leaves text behind, a name set twice).
 */
static int parse_sets(const char *sql, int scs_on, pf_vars_t *got)
{
	const char *p = sql;
	int n = 0;
	size_t cap = strlen(sql) + 1;
	char *name = malloc(cap), *value = malloc(cap);

	assert_non_null(name);
	assert_non_null(value);
	while (*p) {
		size_t len;
		int id;

		if (strncmp(p, "SET ", 4) != 0)
			fail_msg("statement %d does not start with SET: %s", n, p);
		p += 4;
		len = strcspn(p, "=");
		if (p[len] != '=')
			fail_msg("statement %d has no '='", n);
		memcpy(name, p, len);
		name[len] = '\0';
		id = pf_var_lookup(name);
		if (id < 0)
			fail_msg("statement %d sets an untracked name: %s", n, name);
		if (pf_vars_get(got, (pf_var_id_t)id))
			fail_msg("statement %d sets %s twice", n, name);
		p += len + 1;
		if (lex_literal(&p, scs_on, value, cap) < 0)
			fail_msg("statement %d: malformed literal", n);
		if (*p != ';')
			fail_msg("statement %d: text after the literal: %.40s", n, p);
		p++;
		put(got, (pf_var_id_t)id, value);
		n++;
	}
	free(name);
	free(value);
	return n;
}

/*
 * Builds the SET query for wanted against a server whose standard_conforming_strings is scs
 * ("on", "off" or NULL = unknown), reads it back as a server with scs_on would, and checks
 * that every wanted value comes back byte for byte.
 */
static void expect_round_trip(const pf_vars_t *wanted, const char *scs, int scs_on)
{
	pf_vars_t server = {0}, got = {0};
	pf_buf_t b;
	int n, want_n = 0;

	put(&server, PF_VAR_STANDARD_CONFORMING_STRINGS, scs);
	/* Extra parameters are synced only when the server reported them: it did here. */
	for (int i = PF_VAR_EXTRA; i < PF_VAR_EXTRA + pf_var_extra_count(); i++)
		put(&server, (pf_var_id_t)i, "server's own");
	pf_buf_init(&b);
	n = pf_vars_build_set(wanted, &server, &b);
	pf_buf_put_u8(&b, 0);
	assert_false(b.failed);
	assert_int_equal(parse_sets((const char *)b.data, scs_on, &got), n);
	for (int i = 0; i < PF_VAR_EXTRA + pf_var_extra_count(); i++) {
		const char *w = pf_vars_get(wanted, (pf_var_id_t)i);

		if (i == PF_VAR_STANDARD_CONFORMING_STRINGS && w && scs && strcmp(w, scs) == 0)
			w = NULL; /* equal to the server's: not sent */
		if (!w) {
			assert_null(pf_vars_get(&got, (pf_var_id_t)i));
			continue;
		}
		want_n++;
		assert_non_null(pf_vars_get(&got, (pf_var_id_t)i));
		if (strcmp(pf_vars_get(&got, (pf_var_id_t)i), w) != 0)
			fail_msg("%s read back as \"%s\", wanted \"%s\"", pf_var_name(i),
			         pf_vars_get(&got, (pf_var_id_t)i), w);
	}
	assert_int_equal(n, want_n);
	pf_buf_free(&b);
	pf_vars_clear(&server);
	pf_vars_clear(&got);
}

/* ---- names ---- */

static void test_names(void **state)
{
	(void)state;
	/* Exactly as Postgres spells them in ParameterStatus. */
	assert_string_equal(pf_var_name(PF_VAR_CLIENT_ENCODING), "client_encoding");
	assert_string_equal(pf_var_name(PF_VAR_DATESTYLE), "DateStyle");
	assert_string_equal(pf_var_name(PF_VAR_TIMEZONE), "TimeZone");
	assert_string_equal(pf_var_name(PF_VAR_STANDARD_CONFORMING_STRINGS),
	                    "standard_conforming_strings");
	assert_string_equal(pf_var_name(PF_VAR_APPLICATION_NAME), "application_name");
	assert_string_equal(pf_var_name(PF_VAR_INTERVALSTYLE), "IntervalStyle");
	assert_int_equal(PF_VAR_BUILTIN_COUNT, 5);
	assert_int_equal(pf_var_extra_count(), 1);
	/* Extra slots beyond the configured ones have no name. */
	for (int i = PF_VAR_EXTRA + 1; i < PF_VAR_COUNT; i++)
		assert_null(pf_var_name((pf_var_id_t)i));
}

static void test_lookup(void **state)
{
	(void)state;
	for (int i = 0; i < PF_VAR_EXTRA + pf_var_extra_count(); i++)
		assert_int_equal(pf_var_lookup(pf_var_name(i)), i);
	/* GUC names are case-insensitive; clients send "datestyle" or "TIMEZONE". */
	assert_int_equal(pf_var_lookup("datestyle"), PF_VAR_DATESTYLE);
	assert_int_equal(pf_var_lookup("DATESTYLE"), PF_VAR_DATESTYLE);
	assert_int_equal(pf_var_lookup("timezone"), PF_VAR_TIMEZONE);
	assert_int_equal(pf_var_lookup("Application_Name"), PF_VAR_APPLICATION_NAME);
	assert_int_equal(pf_var_lookup("intervalstyle"), PF_VAR_INTERVALSTYLE);
	/* Untracked names, prefixes, extensions and near misses. */
	assert_int_equal(pf_var_lookup(""), -1);
	assert_int_equal(pf_var_lookup("search_path"), -1);
	assert_int_equal(pf_var_lookup("server_version"), -1);
	assert_int_equal(pf_var_lookup("extra_float_digits"), -1);
	assert_int_equal(pf_var_lookup("Date"), -1);
	assert_int_equal(pf_var_lookup("DateStyle "), -1);
	assert_int_equal(pf_var_lookup(" DateStyle"), -1);
	assert_int_equal(pf_var_lookup("DateStyleX"), -1);
	assert_int_equal(pf_var_lookup("client_encodin"), -1);
	assert_int_equal(pf_var_lookup("application_name;"), -1);
}

/* ---- values ---- */

static void test_set_copies_and_clears(void **state)
{
	pf_vars_t v = {0};
	char src[16];

	(void)state;
	strcpy(src, "ISO, MDY");
	put(&v, PF_VAR_DATESTYLE, src);
	assert_ptr_not_equal(pf_vars_get(&v, (pf_var_id_t)PF_VAR_DATESTYLE), src);
	strcpy(src, "changed");
	assert_string_equal(pf_vars_get(&v, (pf_var_id_t)PF_VAR_DATESTYLE),
	                    "ISO, MDY");       /* a copy, not the caller's */
	put(&v, PF_VAR_DATESTYLE, "ISO, MDY"); /* the same value again */
	assert_string_equal(pf_vars_get(&v, (pf_var_id_t)PF_VAR_DATESTYLE), "ISO, MDY");
	put(&v, PF_VAR_DATESTYLE, "German");
	assert_string_equal(pf_vars_get(&v, (pf_var_id_t)PF_VAR_DATESTYLE), "German");
	put(&v, PF_VAR_DATESTYLE, "");
	assert_non_null(pf_vars_get(
	        &v, (pf_var_id_t)PF_VAR_DATESTYLE)); /* empty is a value, not "unknown" */
	assert_string_equal(pf_vars_get(&v, (pf_var_id_t)PF_VAR_DATESTYLE), "");
	put(&v, PF_VAR_DATESTYLE, NULL);
	assert_null(pf_vars_get(&v, (pf_var_id_t)PF_VAR_DATESTYLE));
	for (int i = 0; i < PF_VAR_EXTRA + pf_var_extra_count(); i++)
		assert_null(
		        pf_vars_get(&v, (pf_var_id_t)i)); /* one slot does not touch the others */

	put(&v, PF_VAR_TIMEZONE, "UTC");
	put(&v, PF_VAR_APPLICATION_NAME, "app");
	pf_vars_clear(&v);
	for (int i = 0; i < PF_VAR_EXTRA + pf_var_extra_count(); i++)
		assert_null(pf_vars_get(&v, (pf_var_id_t)i));
	pf_vars_clear(&v); /* twice is harmless */
}

static void test_copy(void **state)
{
	pf_vars_t src = {0}, dst = {0};

	(void)state;
	put(&src, PF_VAR_CLIENT_ENCODING, "UTF8");
	put(&src, PF_VAR_TIMEZONE, "Europe/Paris");
	put(&src, PF_VAR_APPLICATION_NAME, "");
	put(&dst, PF_VAR_TIMEZONE, "UTC");
	put(&dst, PF_VAR_DATESTYLE, "German"); /* src has none: every value is copied, NULL too */
	assert_int_equal(pf_vars_copy(&dst, &src), 0);
	for (int i = 0; i < PF_VAR_EXTRA + pf_var_extra_count(); i++) {
		if (!pf_vars_get(&src, (pf_var_id_t)i)) {
			assert_null(pf_vars_get(&dst, (pf_var_id_t)i));
			continue;
		}
		assert_string_equal(pf_vars_get(&dst, (pf_var_id_t)i),
		                    pf_vars_get(&src, (pf_var_id_t)i));
		/* Interned: equal values are one shared copy. */
		assert_ptr_equal(pf_vars_get(&dst, (pf_var_id_t)i),
		                 pf_vars_get(&src, (pf_var_id_t)i));
	}
	pf_vars_clear(&src);
	assert_string_equal(pf_vars_get(&dst, (pf_var_id_t)PF_VAR_TIMEZONE), "Europe/Paris");
	pf_vars_clear(&dst);
}

/* Equal values anywhere share one copy, counted: the last slot to drop it frees it; a single
 * extra parameter's value is held in place. */
static void test_interned_values(void **state)
{
	pf_vars_t a = {0}, b = {0};
	size_t base = pf_vars_interned();
	char buf[16];

	(void)state;
	put(&a, PF_VAR_DATESTYLE, "ISO, MDY");
	strcpy(buf, "ISO, MDY");
	put(&b, PF_VAR_DATESTYLE, buf);
	assert_ptr_equal(pf_vars_get(&a, PF_VAR_DATESTYLE), pf_vars_get(&b, PF_VAR_DATESTYLE));
	assert_int_equal(pf_vars_interned(), base + 1);
	put(&b, PF_VAR_TIMEZONE, "ISO, MDY"); /* another slot, the same text: still one copy */
	assert_int_equal(pf_vars_interned(), base + 1);
	put(&a, PF_VAR_DATESTYLE, "German");
	assert_int_equal(pf_vars_interned(), base + 2);
	assert_string_equal(pf_vars_get(&b, PF_VAR_DATESTYLE), "ISO, MDY");
	assert_null(a.extra.one);
	put(&a, PF_VAR_INTERVALSTYLE, "iso_8601");
	/* The one extra parameter tracked by default is held in place: nothing allocated. */
	assert_ptr_equal(a.extra.one, pf_vars_get(&a, PF_VAR_INTERVALSTYLE));
	assert_string_equal(pf_vars_get(&a, PF_VAR_INTERVALSTYLE), "iso_8601");
	assert_null(pf_vars_get(&b, PF_VAR_INTERVALSTYLE));
	pf_vars_clear(&b); /* "ISO, MDY" had two references from b only */
	assert_int_equal(pf_vars_interned(), base + 2);
	pf_vars_clear(&a);
	assert_null(a.extra.one);
	assert_int_equal(pf_vars_interned(), base);
	/* Many distinct values grow the table; all come back intact. */
	pf_vars_t many[300];
	memset(many, 0, sizeof(many));
	for (int i = 0; i < 300; i++) {
		snprintf(buf, sizeof(buf), "app%d", i);
		put(&many[i], PF_VAR_APPLICATION_NAME, buf);
	}
	assert_int_equal(pf_vars_interned(), base + 300);
	for (int i = 0; i < 300; i++) {
		snprintf(buf, sizeof(buf), "app%d", i);
		assert_string_equal(pf_vars_get(&many[i], PF_VAR_APPLICATION_NAME), buf);
		pf_vars_clear(&many[i]);
	}
	assert_int_equal(pf_vars_interned(), base);
}

/* ---- which SETs ---- */

static void test_nothing_to_do(void **state)
{
	pf_vars_t wanted = {0}, server = {0};

	(void)state;
	expect_sql(&wanted, &server, "", 0);
	put(&server, PF_VAR_TIMEZONE, "UTC");
	put(&server, PF_VAR_DATESTYLE, "ISO, MDY");
	expect_sql(&wanted, &server, "", 0); /* a value the client never had is not reset */
	put(&wanted, PF_VAR_TIMEZONE, "UTC");
	put(&wanted, PF_VAR_DATESTYLE, "ISO, MDY");
	expect_sql(&wanted, &server, "", 0); /* all equal */
	put(&wanted, PF_VAR_APPLICATION_NAME, "");
	put(&server, PF_VAR_APPLICATION_NAME, "");
	expect_sql(&wanted, &server, "", 0); /* empty on both sides is equal too */
	pf_vars_clear(&wanted);
	pf_vars_clear(&server);
}

static void test_only_differences(void **state)
{
	pf_vars_t wanted = {0}, server = {0};

	(void)state;
	put(&server, PF_VAR_CLIENT_ENCODING, "UTF8");
	put(&server, PF_VAR_DATESTYLE, "ISO, MDY");
	put(&server, PF_VAR_TIMEZONE, "UTC");
	put(&server, PF_VAR_STANDARD_CONFORMING_STRINGS, "on");
	put(&server, PF_VAR_APPLICATION_NAME, "psql");
	put(&server, PF_VAR_INTERVALSTYLE, "postgres");

	put(&wanted, PF_VAR_CLIENT_ENCODING, "UTF8");
	put(&wanted, PF_VAR_TIMEZONE, "Europe/Paris");
	put(&wanted, PF_VAR_APPLICATION_NAME, "psql");
	expect_sql(&wanted, &server, "SET TimeZone='Europe/Paris';", 1);

	put(&wanted, PF_VAR_DATESTYLE, "German, DMY");
	put(&wanted, PF_VAR_INTERVALSTYLE, "iso_8601");
	expect_sql(&wanted, &server,
	           "SET DateStyle='German, DMY';SET TimeZone='Europe/Paris';"
	           "SET IntervalStyle='iso_8601';",
	           3);

	/* The comparison is exact: Postgres reports canonical values, a case change is a change. */
	put(&wanted, PF_VAR_DATESTYLE, NULL);
	put(&wanted, PF_VAR_INTERVALSTYLE, NULL);
	put(&wanted, PF_VAR_TIMEZONE, "utc");
	expect_sql(&wanted, &server, "SET TimeZone='utc';", 1);
	pf_vars_clear(&wanted);
	pf_vars_clear(&server);
}

static void test_every_name_in_order(void **state)
{
	pf_vars_t wanted = {0}, server = {0};

	(void)state;
	put(&wanted, PF_VAR_CLIENT_ENCODING, "LATIN1");
	put(&wanted, PF_VAR_DATESTYLE, "SQL, DMY");
	put(&wanted, PF_VAR_TIMEZONE, "Asia/Tokyo");
	put(&wanted, PF_VAR_STANDARD_CONFORMING_STRINGS, "on");
	put(&wanted, PF_VAR_APPLICATION_NAME, "batch");
	put(&wanted, PF_VAR_INTERVALSTYLE, "sql_standard");
	/* A server that reported nothing (NULL = unknown) gets every wanted built-in value, in
	 * E'' literals (they read the same whatever its standard_conforming_strings is); an
	 * extra one only once the server has reported it (PgBouncer's rule). */
	expect_sql(&wanted, &server,
	           "SET client_encoding=E'LATIN1';SET DateStyle=E'SQL, DMY';"
	           "SET TimeZone=E'Asia/Tokyo';SET standard_conforming_strings=E'on';"
	           "SET application_name=E'batch';",
	           5);
	put(&server, PF_VAR_INTERVALSTYLE, "postgres");
	expect_sql(&wanted, &server,
	           "SET client_encoding=E'LATIN1';SET DateStyle=E'SQL, DMY';"
	           "SET TimeZone=E'Asia/Tokyo';SET standard_conforming_strings=E'on';"
	           "SET application_name=E'batch';SET IntervalStyle=E'sql_standard';",
	           6);
	pf_vars_clear(&wanted);
	pf_vars_clear(&server);
}

static void test_appends(void **state)
{
	pf_vars_t wanted = {0}, server = {0};
	pf_buf_t b;

	(void)state;
	put(&wanted, PF_VAR_TIMEZONE, "UTC");
	pf_buf_init(&b);
	pf_buf_put_bytes(&b, "X;", 2);
	assert_int_equal(pf_vars_build_set(&wanted, &server, &b), 1);
	assert_int_equal(b.len, strlen("X;SET TimeZone=E'UTC';"));
	assert_memory_equal(b.data, "X;SET TimeZone=E'UTC';", b.len);
	/* Nothing to do leaves the builder as it was. */
	put(&server, PF_VAR_TIMEZONE, "UTC");
	assert_int_equal(pf_vars_build_set(&wanted, &server, &b), 0);
	assert_int_equal(b.len, strlen("X;SET TimeZone=E'UTC';"));
	pf_buf_free(&b);
	pf_vars_clear(&wanted);
	pf_vars_clear(&server);
}

/* ---- quoting ---- */

/* The SQL for application_name = value against a server whose scs is as given. */
static void expect_app(const char *value, const char *scs, const char *sql)
{
	pf_vars_t wanted = {0}, server = {0};

	put(&wanted, PF_VAR_APPLICATION_NAME, value);
	put(&server, PF_VAR_STANDARD_CONFORMING_STRINGS, scs);
	expect_sql(&wanted, &server, sql, 1);
	pf_vars_clear(&wanted);
	pf_vars_clear(&server);
}

static void test_quotes(void **state)
{
	(void)state;
	expect_app("O'Brien", "on", "SET application_name='O''Brien';");
	expect_app("'", "on", "SET application_name='''';");
	expect_app("''", "on", "SET application_name='''''';");
	expect_app("x';DROP TABLE t;--", "on", "SET application_name='x'';DROP TABLE t;--';");
	/* Double quotes and semicolons are plain characters inside a literal. */
	expect_app("a\"b;c", "on", "SET application_name='a\"b;c';");
	expect_app("O'Brien", "off", "SET application_name=E'O''Brien';");
	expect_app("x';DROP TABLE t;--", "off", "SET application_name=E'x'';DROP TABLE t;--';");
}

/*
 * With standard_conforming_strings on, a backslash in '' is an ordinary character: doubling it
 * would change the value. With it off, '' strings take backslash escapes, and an E'' string
 * with each backslash doubled is not safe either: in a client encoding whose characters may
 * end in 0x5c (SJIS, BIG5, GBK), a value ending a character with it swallows the first of the
 * two backslashes, and the second escapes the quote after it. So a value with a backslash goes
 * dollar-quoted ($pf$, another tag when the value holds "$pf"). The server parses a whole
 * simple Query before running any of it, so its setting at the time the query arrives decides,
 * even when the query itself changes standard_conforming_strings.
 */
static void test_backslashes(void **state)
{
	pf_vars_t wanted = {0}, server = {0};

	(void)state;
	expect_app("a\\b", "on", "SET application_name='a\\b';");
	expect_app("x\\", "on", "SET application_name='x\\';");
	expect_app("\\'", "on", "SET application_name='\\''';");
	expect_app("a\\b", "off", "SET application_name=$pf$a\\b$pf$;");
	/* A trailing backslash escapes nothing. */
	expect_app("x\\", "off", "SET application_name=$pf$x\\$pf$;");
	expect_app("\\'", "off", "SET application_name=$pf$\\'$pf$;");
	expect_app("x\\';SELECT 1;--", "off", "SET application_name=$pf$x\\';SELECT 1;--$pf$;");
	expect_app("\\n\\x41\\101", NULL, "SET application_name=$pf$\\n\\x41\\101$pf$;");
	/* SJIS: 0x95 0x5c is one character, then a quote. */
	expect_app("\x95\\';SELECT 1;--", "off",
	           "SET application_name=$pf$\x95\\';SELECT 1;--$pf$;");
	/* The tag is never in the value, and the value's end cannot run into it. */
	expect_app("\\$pf$;SELECT 1;--", "off",
	           "SET application_name=$pf1$\\$pf$;SELECT 1;--$pf1$;");
	expect_app("\\$pf", "off", "SET application_name=$pf1$\\$pf$pf1$;");
	expect_app("\\$pf$pf1", "off", "SET application_name=$pf2$\\$pf$pf1$pf2$;");

	put(&server, PF_VAR_STANDARD_CONFORMING_STRINGS, "off");
	put(&wanted, PF_VAR_STANDARD_CONFORMING_STRINGS, "on");
	put(&wanted, PF_VAR_APPLICATION_NAME, "a\\b");
	expect_sql(&wanted, &server,
	           "SET standard_conforming_strings=E'on';SET application_name=$pf$a\\b$pf$;", 2);
	put(&server, PF_VAR_STANDARD_CONFORMING_STRINGS, "on");
	put(&wanted, PF_VAR_STANDARD_CONFORMING_STRINGS, "off");
	expect_sql(&wanted, &server,
	           "SET standard_conforming_strings='off';SET application_name='a\\b';", 2);
	pf_vars_clear(&wanted);
	pf_vars_clear(&server);
}

static void test_unusual_bytes(void **state)
{
	(void)state;
	/* Multibyte UTF-8 passes byte for byte (no byte of a UTF-8 sequence is ' or \). */
	expect_app("caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x90\x98", "on",
	           "SET application_name='caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x90\x98';");
	expect_app("\xc3\xa9'\xc3\xa9", "off", "SET application_name=E'\xc3\xa9''\xc3\xa9';");
	/* Bytes that are not UTF-8 are not the pooler's to judge: passed as they are. */
	expect_app("\xff\xfe", "on", "SET application_name='\xff\xfe';");
	/* Control characters are legal inside a literal and are not escaped. */
	expect_app("a\nb\tc\rd\x01\x1f\x7f", "on",
	           "SET application_name='a\nb\tc\rd\x01\x1f\x7f';");
	expect_app("a\nb\x01", "off", "SET application_name=E'a\nb\x01';");
	/* The empty value is a value: it is set, as ''. */
	expect_app("", "on", "SET application_name='';");
	expect_app("", "off", "SET application_name=E'';");
}

static void test_long_value(void **state)
{
	enum { N = 100000 };
	pf_vars_t wanted = {0}, server = {0};
	char *value = malloc(N + 1), *sql;
	size_t quotes = 0, len;
	pf_buf_t b;

	(void)state;
	assert_non_null(value);
	for (size_t i = 0; i < N; i++) {
		value[i] = i % 97 == 0 ? '\'' : (char)('a' + i % 26);
		quotes += value[i] == '\'';
	}
	value[N] = '\0';
	put(&wanted, PF_VAR_APPLICATION_NAME, value);
	put(&server, PF_VAR_STANDARD_CONFORMING_STRINGS, "on");
	pf_buf_init(&b);
	assert_int_equal(pf_vars_build_set(&wanted, &server, &b), 1);
	assert_false(b.failed);
	len = strlen("SET application_name='';") + N + quotes;
	assert_int_equal(b.len, len);
	sql = (char *)b.data;
	assert_memory_equal(sql, "SET application_name='", 22);
	assert_memory_equal(sql + len - 2, "';", 2);
	pf_buf_free(&b);

	expect_round_trip(&wanted, "on", 1);
	value[N - 1] = '\\';
	put(&wanted, PF_VAR_APPLICATION_NAME, value);
	expect_round_trip(&wanted, "off", 0);
	free(value);
	pf_vars_clear(&wanted);
	pf_vars_clear(&server);
}

/* Values a client might send to break out of the literal, read back by a model of the lexer. */
static const char *const hostile[] = {
        "'",
        "\\",
        "\\'",
        "'\\",
        "\\\\'",
        "''';--",
        "x\\';SET role='postgres';--",
        "E'x'",
        "$$;SELECT 1;$$",
        "\\000",
        "\\x27",
        "\\u0027",
        "a\nb;\r\nSELECT 1",
        "\xc3\xa9\\\xe6\x97\xa5'",
        "\x95\\';SELECT 1;--",
        "\\$pf",
        "\\$pf$",
        "$pf1\\$pf",
        "\\$pf$pf1$pf2$pf3",
        "",
};
#define N_HOSTILE (sizeof(hostile) / sizeof(hostile[0]))

static void test_hostile_values_round_trip(void **state)
{
	(void)state;
	for (size_t i = 0; i < N_HOSTILE; i++) {
		for (int id = 0; id < PF_VAR_EXTRA + pf_var_extra_count(); id++) {
			pf_vars_t wanted = {0};

			if (id == PF_VAR_STANDARD_CONFORMING_STRINGS)
				continue;
			put(&wanted, (pf_var_id_t)id, hostile[i]);
			put(&wanted, PF_VAR_TIMEZONE, hostile[(i + 1) % N_HOSTILE]);
			expect_round_trip(&wanted, "on", 1);
			expect_round_trip(&wanted, "off", 0);
			/* The query that changes the setting is still read with the old one. */
			put(&wanted, PF_VAR_STANDARD_CONFORMING_STRINGS, "off");
			expect_round_trip(&wanted, "on", 1);
			put(&wanted, PF_VAR_STANDARD_CONFORMING_STRINGS, "on");
			expect_round_trip(&wanted, "off", 0);
			pf_vars_clear(&wanted);
		}
	}
}

/*
 * Was a bug (hardening): when the server never reported standard_conforming_strings, the value
 * was quoted as if it were on; were it actually off, "x\';SELECT 1;--" would end the literal and
 * run SELECT 1. An unknown setting now gets an E'' literal with doubled backslashes, which reads
 * the same under either setting.
 */
static void test_unknown_scs_is_safe_both_ways(void **state)
{
	pf_vars_t wanted = {0};

	(void)state;
	expect_app("O'Brien", NULL, "SET application_name=E'O''Brien';");
	expect_app("O'Brien\\", NULL, "SET application_name=$pf$O'Brien\\$pf$;");
	for (size_t i = 0; i < N_HOSTILE; i++) {
		put(&wanted, PF_VAR_APPLICATION_NAME, hostile[i]);
		expect_round_trip(&wanted, NULL, 1);
		expect_round_trip(&wanted, NULL, 0);
	}
	pf_vars_clear(&wanted);
}

/* ---- track_extra_parameters ---- */

/* Configures list, which must succeed. */
static void configure(const char *list)
{
	char err[200];

	if (pf_vars_configure(list, err, sizeof(err)) < 0)
		fail_msg("\"%s\" refused: %s", list ? list : "(null)", err);
}

/* Configures list, which must be refused with a message containing what (nothing changes). */
static void configure_fails(const char *list, const char *what)
{
	char err[200] = "";

	assert_int_equal(pf_vars_configure(list, err, sizeof(err)), -EINVAL);
	if (!strstr(err, what))
		fail_msg("\"%s\": message \"%s\" lacks \"%s\"", list, err, what);
	assert_int_equal(pf_var_extra_count(), 1);
	assert_string_equal(pf_var_name(PF_VAR_EXTRA), "IntervalStyle");
}

static void test_configure(void **state)
{
	char list[4096];
	size_t len = 0;

	(void)state;
	/* Several names, blanks around them, a repeat in another case, built-ins: skipped. */
	configure(" IntervalStyle ,default_transaction_read_only,, intervalstyle, TIMEZONE,"
	          "application_name,citus.my_param");
	assert_int_equal(pf_var_extra_count(), 3);
	assert_string_equal(pf_var_name(PF_VAR_EXTRA), "IntervalStyle");
	assert_string_equal(pf_var_name(PF_VAR_EXTRA + 1), "default_transaction_read_only");
	assert_string_equal(pf_var_name(PF_VAR_EXTRA + 2), "citus.my_param");
	assert_null(pf_var_name(PF_VAR_EXTRA + 3));
	assert_int_equal(pf_var_lookup("DEFAULT_TRANSACTION_READ_ONLY"), PF_VAR_EXTRA + 1);
	assert_int_equal(pf_var_lookup("timezone"), PF_VAR_TIMEZONE);
	assert_int_equal(pf_var_lookup("citus.MY_PARAM"), PF_VAR_EXTRA + 2);
	assert_int_equal(pf_var_lookup("citus"), -1);
	/* Empty: only the built-in five. */
	configure("");
	assert_int_equal(pf_var_extra_count(), 0);
	assert_int_equal(pf_var_lookup("IntervalStyle"), -1);
	assert_null(pf_var_name(PF_VAR_EXTRA));
	configure(NULL);
	assert_int_equal(pf_var_extra_count(), 0);
	configure("IntervalStyle");

	/* Names go unquoted into SET: anything but a GUC-like name is refused. */
	configure_fails("IntervalStyle,search_path;DROP TABLE t", "not a parameter name");
	configure_fails("a b", "not a parameter name");
	configure_fails("\"IntervalStyle\"", "not a parameter name");
	configure_fails("1abc", "not a parameter name");
	configure_fails(".abc", "not a parameter name");
	configure_fails("x=1", "not a parameter name");
	configure_fails("x'", "not a parameter name");
	configure_fails("options", "cannot be tracked");
	configure_fails("OPTIONS", "cannot be tracked");
	configure_fails("user", "cannot be tracked");
	configure_fails("database", "cannot be tracked");
	/* Bounds: a name of 63 bytes is fine, 64 is not; 32 names are fine, 33 are not. */
	memset(list, 'a', 63);
	list[63] = '\0';
	configure(list);
	assert_int_equal(pf_var_extra_count(), 1);
	assert_int_equal(strlen(pf_var_name(PF_VAR_EXTRA)), 63);
	configure("IntervalStyle");
	memset(list, 'a', 64);
	list[64] = '\0';
	configure_fails(list, "longer than 63");
	memset(list, 'a', 3000);
	list[3000] = '\0';
	configure_fails(list, "longer than 63");
	for (int i = 0; i < PF_VAR_EXTRA_MAX; i++)
		len += (size_t)snprintf(list + len, sizeof(list) - len, "p%d,", i);
	configure(list);
	assert_int_equal(pf_var_extra_count(), PF_VAR_EXTRA_MAX);
	assert_int_equal(pf_var_lookup("P31"), PF_VAR_EXTRA + 31);
	assert_string_equal(pf_var_name(PF_VAR_COUNT - 1), "p31");
	configure("IntervalStyle");
	snprintf(list + len, sizeof(list) - len, "p%d", PF_VAR_EXTRA_MAX);
	configure_fails(list, "more than 32");
	/* Repeats do not count towards the bound. */
	len = 0;
	for (int i = 0; i < 100; i++)
		len += (size_t)snprintf(list + len, sizeof(list) - len, "x,X,");
	configure(list);
	assert_int_equal(pf_var_extra_count(), 1);
	configure("IntervalStyle");
}

static void test_extra_needs_reported_value(void **state)
{
	pf_vars_t wanted = {0}, server = {0};

	(void)state;
	configure("IntervalStyle, default_transaction_read_only");
	assert_null(wanted.extra.many);
	put(&wanted, PF_VAR_EXTRA, "iso_8601");
	put(&wanted, PF_VAR_EXTRA + 1, "on");
	/* Two extras: an array of two slots, allocated at the first one set. */
	assert_non_null(wanted.extra.many);
	assert_string_equal(wanted.extra.many[1], "on");
	/* Unknown on the server: nothing (PgBouncer's rule). */
	expect_sql(&wanted, &server, "", 0);
	put(&server, PF_VAR_STANDARD_CONFORMING_STRINGS, "on");
	put(&server, PF_VAR_EXTRA + 1, "off");
	expect_sql(&wanted, &server, "SET default_transaction_read_only='on';", 1);
	put(&server, PF_VAR_EXTRA, "postgres");
	expect_sql(&wanted, &server,
	           "SET IntervalStyle='iso_8601';SET default_transaction_read_only='on';", 2);
	put(&server, PF_VAR_EXTRA + 1, "on");
	expect_sql(&wanted, &server, "SET IntervalStyle='iso_8601';", 1);
	/* Not wanted: never sent, whatever the server has. */
	put(&wanted, PF_VAR_EXTRA, NULL);
	expect_sql(&wanted, &server, "", 0);
	pf_vars_clear(&wanted);
	pf_vars_clear(&server);
	configure("IntervalStyle");
}

/* Collects what pf_vars_parse_options() walks as "name=value;" pairs. */
typedef struct collected {
	char text[4096];
	int stop_after; /* 0: never */
	int n;
} collected_t;

static bool collect(void *arg, const char *name, const char *value)
{
	collected_t *c = arg;
	size_t len = strlen(c->text);

	snprintf(c->text + len, sizeof(c->text) - len, "%s=%s;", name, value);
	c->n++;
	return c->stop_after == 0 || c->n < c->stop_after;
}

static void expect_options(const char *options, int rc, const char *pairs)
{
	collected_t c = {.text = ""};

	assert_int_equal(pf_vars_parse_options(options, collect, &c), rc);
	assert_string_equal(c.text, pairs);
}

static void test_parse_options(void **state)
{
	char big[PF_VAR_OPTION_MAX + 64];
	collected_t c = {.text = "", .stop_after = 1};

	(void)state;
	expect_options("", 0, "");
	expect_options("   ", 0, "");
	expect_options("-c IntervalStyle=iso_8601", 0, "IntervalStyle=iso_8601;");
	expect_options("-cIntervalStyle=iso_8601", 0, "IntervalStyle=iso_8601;");
	expect_options("  -c  a=1 \t-c b=2  ", 0, "a=1;b=2;");
	expect_options("-c a=", 0, "a=;");
	expect_options("-c a=x=y", 0, "a=x=y;");
	/* Backslash escapes: a blank, a backslash, and one at the very end (dropped). */
	expect_options("-c DateStyle=ISO,\\ DMY", 0, "DateStyle=ISO, DMY;");
	expect_options("-c a=x\\\\y", 0, "a=x\\y;");
	expect_options("-c a=x\\", 0, "a=x;");
	/* Anything but -c name=value. */
	expect_options("--IntervalStyle=iso_8601", 0, "IntervalStyle=iso_8601;");
	expect_options("--a=1 -c b=2 --c=x\\ y", 0, "a=1;b=2;c=x y;");
	expect_options("--IntervalStyle iso_8601", -EINVAL, "");
	expect_options("-- a=1", -EINVAL, "");
	expect_options("--", -EINVAL, "");
	expect_options("--=x", -EINVAL, "");
	expect_options("-c", -EINVAL, "");
	expect_options("-c ", -EINVAL, "");
	expect_options("-c a", -EINVAL, "");
	expect_options("-c =x", -EINVAL, "");
	expect_options("-c a=1 -d 5", -EINVAL, "a=1;");
	expect_options("-C a=1", -EINVAL, "");
	expect_options("c a=1", -EINVAL, "");
	expect_options("-", -EINVAL, "");
	/* The callback stops the walk. */
	assert_int_equal(pf_vars_parse_options("-c a=1 -c b=2", collect, &c), 1);
	assert_string_equal(c.text, "a=1;");
	/* Bounds: an argument of PF_VAR_OPTION_MAX bytes is fine, one more is not. */
	memcpy(big, "-c a=", 5);
	memset(big + 5, 'v', PF_VAR_OPTION_MAX - 2);
	big[5 + PF_VAR_OPTION_MAX - 2] = '\0';
	c = (collected_t){.text = ""};
	assert_int_equal(pf_vars_parse_options(big, collect, &c), 0);
	assert_int_equal(strlen(c.text), PF_VAR_OPTION_MAX + 1);
	memset(big + 5, 'v', PF_VAR_OPTION_MAX - 1);
	big[5 + PF_VAR_OPTION_MAX - 1] = '\0';
	expect_options(big, -E2BIG, "");
}

/* Every pair walked from arbitrary input: a non-empty name without '=', within the bound. */
static bool check_pair(void *arg, const char *name, const char *value)
{
	int *n = arg;

	assert_true(name[0] != '\0');
	assert_null(strchr(name, '='));
	assert_true(strlen(name) + 1 + strlen(value) <= PF_VAR_OPTION_MAX);
	(*n)++;
	return true;
}

static void test_parse_options_random(void **state)
{
	static const char alphabet[] = "-c =\\\tab-c--=";
	char buf[2 * PF_VAR_OPTION_MAX + 8];
	unsigned seed = 12345;

	(void)state;
	for (int round = 0; round < 20000; round++) {
		size_t len;
		int n = 0, rc;

		seed = seed * 1103515245u + 12345u;
		len = (seed >> 8) % (round % 10 == 0 ? sizeof(buf) - 1 : 24);
		for (size_t i = 0; i < len; i++) {
			seed = seed * 1103515245u + 12345u;
			buf[i] = alphabet[(seed >> 16) % (sizeof(alphabet) - 1)];
		}
		buf[len] = '\0';
		rc = pf_vars_parse_options(buf, check_pair, &n);
		assert_true(rc == 0 || rc == -EINVAL || rc == -E2BIG);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_configure),
	        cmocka_unit_test(test_extra_needs_reported_value),
	        cmocka_unit_test(test_parse_options),
	        cmocka_unit_test(test_parse_options_random),
	        cmocka_unit_test(test_names),
	        cmocka_unit_test(test_lookup),
	        cmocka_unit_test(test_set_copies_and_clears),
	        cmocka_unit_test(test_copy),
	        cmocka_unit_test(test_interned_values),
	        cmocka_unit_test(test_nothing_to_do),
	        cmocka_unit_test(test_only_differences),
	        cmocka_unit_test(test_every_name_in_order),
	        cmocka_unit_test(test_appends),
	        cmocka_unit_test(test_quotes),
	        cmocka_unit_test(test_backslashes),
	        cmocka_unit_test(test_unusual_bytes),
	        cmocka_unit_test(test_long_value),
	        cmocka_unit_test(test_hostile_values_round_trip),
	        cmocka_unit_test(test_unknown_scs_is_safe_both_ways),
	};
	char err[200];

	if (pf_vars_configure("IntervalStyle", err, sizeof(err)) < 0)
		return 1;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
