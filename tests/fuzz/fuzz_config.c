#include "pfbuild.h"
/*
 * libFuzzer target for the config parser (pf_config_load_string) with %include. The input is
 * split at NUL bytes: the first part is the main text ("fuzz.ini"), the next up to three are
 * written as inc1.ini, inc2.ini, inc3.ini into a private temporary directory, which is the
 * working directory while the text loads (relative %include paths are taken from it, as
 * PgBouncer does; libFuzzer's own relative paths still work outside that window).
 *
 * So that %include never reads files of the machine (or blocks on /dev/stdin), an input is
 * skipped unless every "%include" anywhere in it names one of inc1.ini..inc3.ini,
 * missing.ini (absent) or "." (a directory); at most MAX_INCLUDES of them, which bounds the
 * expansion (the depth limit and cycle check bound the rest).
 *
 * Checks: the text either loads into a snapshot whose every parameter formats and whose every
 * database is found again by name, or fails with a one-line message naming the file it was in;
 * and a text that loads gives the same values for every parameter as the same text with each
 * %include line replaced by the file it names (%include expands in place).
 */

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pgfunnel/buf.h"
#include "pgfunnel/config.h"

#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NFILES       3
#define MAX_INCLUDES 6
#define MAX_DEPTH    12

static const char *const file_names[NFILES] = {"inc1.ini", "inc2.ini", "inc3.ini"};
static const char *const allowed[] = {"inc1.ini", "inc2.ini", "inc3.ini", "missing.ini", "."};

/* Texts of this run's include files (NULL: absent). */
static char *files[NFILES];

/* The private directory the include files are written to (mkdtemp). */
static char dir[] = "/tmp/pgfunnel-fuzz-config.XXXXXX";

/* At exit: removes the directory and what is in it. */
static void remove_dir(void)
{
	char path[sizeof(dir) + 16];

	for (int i = 0; i < NFILES; i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, file_names[i]);
		(void)unlink(path);
	}
	(void)rmdir(dir);
}

static void ignore_warning(void *arg, const char *file, int line, const char *msg)
{
	(void)arg;
	(void)line;
	CHECK(file != NULL && msg != NULL && strchr(msg, '\n') == NULL);
}

/* The parser's blanks (config.c is_blank). */
static bool blank(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

/*
 * True when every "%include" in s (wherever it is, a superset of where the parser looks)
 * is followed, up to the end of its line, by an allowed name; counts them into *n.
 */
static bool includes_are_safe(const char *s, size_t *n)
{
	for (const char *p = strstr(s, "%include"); p; p = strstr(p + 1, "%include")) {
		const char *a = p + 8, *e;
		size_t len, i;
		bool ok = false;

		if (++*n > MAX_INCLUDES)
			return false;
		while (blank(*a))
			a++;
		e = a;
		while (*e && *e != '\n' && *e != '\r')
			e++;
		while (e > a && blank(e[-1]))
			e--;
		len = (size_t)(e - a);
		for (i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++)
			ok |= len == strlen(allowed[i]) && memcmp(a, allowed[i], len) == 0;
		if (!ok && len != 0)
			return false;
	}
	return true;
}

static void write_files(void)
{
	for (int i = 0; i < NFILES; i++) {
		if (!files[i]) {
			CHECK(unlink(file_names[i]) == 0 || errno == ENOENT);
			continue;
		}
		FILE *f = fopen(file_names[i], "w");

		CHECK(f != NULL);
		CHECK(fwrite(files[i], 1, strlen(files[i]), f) == strlen(files[i]));
		CHECK(fclose(f) == 0);
	}
}

/*
 * Appends text to out with every %include line (as config.c parse_line sees one) replaced by
 * the text of the file it names. Returns false when a name is not one of our files (the load
 * would have failed) or the nesting is deeper than any successful load can have.
 */
static bool expand(pf_buf_t *out, const char *text, int depth)
{
	const char *p = text;

	if (depth > MAX_DEPTH)
		return false;
	if (strncmp(p, "\xEF\xBB\xBF", 3) == 0)
		p += 3;
	while (*p) {
		const char *eol = strchr(p, '\n');
		const char *end = eol ? eol : p + strlen(p), *s = p;

		while (s < end && blank(*s))
			s++;
		if ((size_t)(end - s) > 8 && memcmp(s, "%include", 8) == 0 && blank(s[8])) {
			const char *a = s + 8, *e = end;
			int i;

			while (a < end && blank(*a))
				a++;
			while (e > a && blank(e[-1]))
				e--;
			for (i = 0; i < NFILES; i++)
				if ((size_t)(e - a) == strlen(file_names[i]) &&
				    memcmp(a, file_names[i], (size_t)(e - a)) == 0)
					break;
			if (i == NFILES || !files[i] || !expand(out, files[i], depth + 1))
				return false;
			pf_buf_put_u8(out, '\n');
		} else {
			pf_buf_put_bytes(out, p, (size_t)(end - p));
			if (eol)
				pf_buf_put_u8(out, '\n');
		}
		if (!eol)
			break;
		p = eol + 1;
	}
	return true;
}

static bool err_names_a_file(const char *err)
{
	if (strncmp(err, "fuzz.ini", 8) == 0)
		return true;
	for (int i = 0; i < NFILES; i++)
		if (strncmp(err, file_names[i], strlen(file_names[i])) == 0)
			return true;
	return false;
}

static void check_same_as_expanded(const char *text, const pf_config_t *cfg)
{
	static char a[4096], b[4096];
	size_t count;
	const pf_config_param_t *params = pf_config_params(&count);
	pf_config_t *flat = NULL;
	char err[512];
	pf_buf_t buf;

	pf_buf_init(&buf);
	CHECK(expand(&buf, text, 0));
	pf_buf_put_u8(&buf, 0);
	CHECK(!buf.failed);
	if (pf_config_load_string((const char *)buf.data, "fuzz.ini", &flat, ignore_warning, NULL,
	                          err, sizeof(err)) != 0) {
		fprintf(stderr, "the expanded text fails: %s\n", err);
		CHECK(!"a config that loads must load with its %include lines expanded");
	}
	for (size_t i = 0; i < count; i++) {
		(void)pf_config_format(cfg, &params[i], a, sizeof(a));
		(void)pf_config_format(flat, &params[i], b, sizeof(b));
		if (strcmp(a, b) != 0)
			fprintf(stderr, "%s: \"%s\" vs expanded \"%s\"\n", params[i].name, a, b);
		CHECK(strcmp(a, b) == 0);
	}
	CHECK(flat->n_dbs == cfg->n_dbs);
	for (size_t i = 0; i < cfg->n_dbs; i++)
		CHECK(strcmp(flat->dbs[i].name, cfg->dbs[i].name) == 0);
	pf_config_free(flat);
	pf_buf_free(&buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int home = -1;
	char *text, err[512], value[4096];
	const char *parts[1 + NFILES] = {NULL};
	pf_config_t *cfg = NULL;
	size_t count, nparts = 0, nincludes = 0;
	const pf_config_param_t *params = pf_config_params(&count);
	int rc;

	if (home < 0) {
		CHECK(mkdtemp(dir) != NULL);
		atexit(remove_dir);
		home = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		CHECK(home >= 0);
	}
	text = malloc(size + 1);
	if (!text)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	/* Split at NULs: main text, then the include files. */
	for (char *p = text; nparts < 1 + NFILES; p += strlen(p) + 1) {
		parts[nparts++] = p;
		if (p + strlen(p) == text + size)
			break;
	}
	for (size_t i = 0; i < nparts; i++) {
		if (!includes_are_safe(parts[i], &nincludes)) {
			free(text);
			return 0;
		}
	}
	for (int i = 0; i < NFILES; i++)
		files[i] = (char *)(1 + i < (int)nparts ? parts[1 + i] : NULL);
	CHECK(chdir(dir) == 0);
	write_files();

	err[0] = '\0';
	rc = pf_config_load_string(parts[0], "fuzz.ini", &cfg, ignore_warning, NULL, err,
	                           sizeof(err));
	if (rc == 0) {
		CHECK(cfg != NULL);
		for (size_t i = 0; i < count; i++)
			(void)pf_config_format(cfg, &params[i], value, sizeof(value));
		for (size_t i = 0; i < cfg->n_dbs; i++)
			CHECK(pf_config_find_db(cfg, cfg->dbs[i].name) == &cfg->dbs[i]);
		check_same_as_expanded(parts[0], cfg);
		pf_config_free(cfg);
	} else {
		CHECK(rc < 0);
		CHECK(cfg == NULL);
		CHECK(err_names_a_file(err));
		CHECK(strchr(err, '\n') == NULL);
	}
	CHECK(fchdir(home) == 0);
	free(text);
	return 0;
}
