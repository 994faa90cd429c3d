/*
 * Documentation coverage: every [pgbouncer] parameter of the config table must be documented
 * in man/pgfunnel.5 (a ".TP" line followed by ".B <name>") and appear in etc/pgfunnel.ini as
 * "<name> =" (optionally commented out as ";<name> =" or "; <name> ="); every [databases],
 * [users] and [peers] key must be documented in man/pgfunnel.5 the same way.
 */
#include "pfbuild.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <cmocka.h>

#include "pgfunnel/config.h"

#define MAN_PAGE   PF_SOURCE_ROOT "/man/pgfunnel.5"
#define SAMPLE_INI PF_SOURCE_ROOT "/etc/pgfunnel.ini"

typedef struct {
	char **lines;
	size_t n;
} lines_t;

static lines_t read_lines(const char *path)
{
	lines_t l = {NULL, 0};
	size_t cap = 0;
	char buf[4096];
	FILE *f = fopen(path, "r");

	if (!f)
		fail_msg("cannot open %s", path);
	while (fgets(buf, sizeof(buf), f)) {
		size_t len = strlen(buf);

		while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r' ||
		                   buf[len - 1] == ' ' || buf[len - 1] == '\t'))
			buf[--len] = '\0';
		if (l.n == cap) {
			cap = cap ? cap * 2 : 256;
			l.lines = realloc(l.lines, cap * sizeof(*l.lines));
			assert_non_null(l.lines);
		}
		l.lines[l.n] = strdup(buf);
		assert_non_null(l.lines[l.n]);
		l.n++;
	}
	fclose(f);
	return l;
}

static void free_lines(lines_t *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->lines[i]);
	free(l->lines);
}

/* A ".TP" line directly followed by ".B name". */
static bool man_documents(const lines_t *man, const char *name)
{
	for (size_t i = 0; i + 1 < man->n; i++) {
		const char *b = man->lines[i + 1];

		if (strcmp(man->lines[i], ".TP") != 0 || strncmp(b, ".B ", 3) != 0)
			continue;
		b += 3;
		while (*b == ' ')
			b++;
		if (strcmp(b, name) == 0)
			return true;
	}
	return false;
}

/* A line matching ^;? ?name = */
static bool ini_mentions(const lines_t *ini, const char *name)
{
	size_t n = strlen(name);

	for (size_t i = 0; i < ini->n; i++) {
		const char *s = ini->lines[i];

		if (*s == ';')
			s++;
		if (*s == ' ')
			s++;
		if (strncmp(s, name, n) == 0 && strncmp(s + n, " =", 2) == 0)
			return true;
	}
	return false;
}

/* Appends name to a comma list in buf (size n). */
static void note_missing(char *buf, size_t n, const char *name)
{
	size_t len = strlen(buf);

	snprintf(buf + len, n - len, "%s%s", len ? ", " : "", name);
}

static void test_parameters_documented(void **state)
{
	lines_t man = read_lines(MAN_PAGE);
	size_t count;
	const pf_config_param_t *params = pf_config_params(&count);
	char missing[8192] = "";

	(void)state;
	for (size_t i = 0; i < count; i++) {
		if (!man_documents(&man, params[i].name))
			note_missing(missing, sizeof(missing), params[i].name);
	}
	free_lines(&man);
	if (missing[0])
		fail_msg("parameters missing from man/pgfunnel.5 (.TP + .B name): %s", missing);
}

/*
 * The sentence man/pgfunnel.5 uses for a parameter pgfunnel accepts but ignores. Its presence
 * in a main-section entry must agree with the table's implemented flag, so the page never
 * promises what the code does not do (nor hides what it does).
 */
#define NOT_IMPLEMENTED_NOTE "Accepted for compatibility; pgfunnel does not act on it"

/* Whether the main-section entry for name (before DATABASE SECTION) carries the note. */
static int man_says_not_implemented(const lines_t *man, const char *name)
{
	for (size_t i = 0; i + 1 < man->n; i++) {
		if (strcmp(man->lines[i], ".SH DATABASE SECTION") == 0)
			break;
		if (strcmp(man->lines[i], ".TP") != 0 ||
		    strncmp(man->lines[i + 1], ".B ", 3) != 0 ||
		    strcmp(man->lines[i + 1] + 3, name) != 0)
			continue;
		int depth = 0; /* inside .RS/.RE a .TP belongs to a value list */

		for (size_t j = i + 2; j < man->n; j++) {
			const char *l = man->lines[j];

			if (strncmp(l, ".RS", 3) == 0)
				depth++;
			else if (strncmp(l, ".RE", 3) == 0 && depth > 0)
				depth--;
			else if ((strcmp(l, ".TP") == 0 && depth == 0) ||
			         strncmp(l, ".SH", 3) == 0 || strncmp(l, ".SS", 3) == 0)
				return 0;
			if (strstr(l, NOT_IMPLEMENTED_NOTE))
				return 1;
		}
		return 0;
	}
	return -1;
}

static void test_implemented_flags_match_man(void **state)
{
	lines_t man = read_lines(MAN_PAGE);
	size_t count;
	const pf_config_param_t *params = pf_config_params(&count);
	char wrong[8192] = "";

	(void)state;
	for (size_t i = 0; i < count; i++) {
		int note = man_says_not_implemented(&man, params[i].name);

		if (note >= 0 && note == (int)params[i].implemented)
			note_missing(wrong, sizeof(wrong), params[i].name);
	}
	free_lines(&man);
	if (wrong[0])
		fail_msg("man/pgfunnel.5 disagrees with the table on whether these are "
		         "implemented: %s",
		         wrong);
}

static void test_parameters_in_sample_ini(void **state)
{
	lines_t ini = read_lines(SAMPLE_INI);
	size_t count;
	const pf_config_param_t *params = pf_config_params(&count);
	char missing[8192] = "";

	(void)state;
	for (size_t i = 0; i < count; i++) {
		if (!ini_mentions(&ini, params[i].name))
			note_missing(missing, sizeof(missing), params[i].name);
	}
	free_lines(&ini);
	if (missing[0])
		fail_msg("parameters missing from etc/pgfunnel.ini (\"[; ]name =\"): %s", missing);
}

static void test_section_keys_documented(void **state)
{
	static const struct {
		pf_config_section_t section;
		const char *label;
	} sections[] = {
	        {PF_CONFIG_SECT_DATABASES, "databases"},
	        {PF_CONFIG_SECT_USERS, "users"},
	        {PF_CONFIG_SECT_PEERS, "peers"},
	};
	lines_t man = read_lines(MAN_PAGE);
	char missing[4096] = "";
	size_t checked = 0;

	(void)state;
	for (size_t s = 0; s < PF_ARRAY_SIZE(sections); s++) {
		const char *key;

		for (size_t i = 0; (key = pf_config_section_key(sections[s].section, i)); i++) {
			char item[128];

			checked++;
			if (man_documents(&man, key))
				continue;
			snprintf(item, sizeof(item), "[%s] %s", sections[s].label, key);
			note_missing(missing, sizeof(missing), item);
		}
	}
	free_lines(&man);
	/* 22 [databases] keys, 10 [users] keys, 3 [peers] keys. */
	assert_int_equal(checked, 35);
	if (missing[0])
		fail_msg("keys missing from man/pgfunnel.5 (.TP + .B key): %s", missing);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_parameters_documented),
	        cmocka_unit_test(test_parameters_in_sample_ini),
	        cmocka_unit_test(test_implemented_flags_match_man),
	        cmocka_unit_test(test_section_keys_documented),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
