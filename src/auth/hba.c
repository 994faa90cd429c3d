/*
 * hba: the auth_hba_file and the auth_ident_file (see hba.h for the accepted syntax and how it
 * compares with PgBouncer and Postgres).
 *
 * Both files go through one tokenizer: a line is split into fields (blank-separated), a field
 * into tokens (comma-separated), quotes removed. The HBA parser turns each line into a rule:
 * connection type, two name sets (sorted, for bsearch), an address and mask, a method and its
 * options. The ident parser turns each line into a mapping, with a compiled regex_t when the
 * system user starts with '/'.
 *
 * Invariants: a pf_hba_t / pf_ident_t never changes after the parse returns, so matching needs
 * no lock; a rule's address has no bit set outside its mask (lines that would are skipped);
 * everything a load reads (the file and each @ file each time it is named) counts against
 * PF_HBA_MAX_FILE_BYTES, and the names it keeps against PF_HBA_MAX_NAMES, so a file cannot make
 * a load use unbounded time or memory; @ files nest at most PF_HBA_MAX_DEPTH deep and never
 * include themselves.
 *
 * Callers: the login path (pf_hba_match, pf_ident_has_mapping) and whoever loads the
 * configuration (pf_ident_load, then pf_hba_load with that ident table).
 */
#include "pfbuild.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <regex.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pgfunnel/hba.h"

/* How much of a name or token a message quotes. */
#define SHOW 100

/* ---------------------------------------------------------------------------------------- */
/* Load state shared by both parsers                                                          */
/* ---------------------------------------------------------------------------------------- */

typedef struct {
	dev_t dev;
	ino_t ino;
} file_id_t;

typedef struct {
	const char *name; /* the HBA or ident file, for messages */
	pf_hba_diag_fn warn;
	void *arg;
	int line;      /* current line of the main file */
	size_t budget; /* bytes the load may still read */
	size_t names;  /* names kept so far */
	int fatal;     /* 0, or the negative errno that ends the load */
	char *err;
	size_t errlen;
	/* The files being read, outermost first: the main file (when it is one) and open @ files.
	 */
	file_id_t open[PF_HBA_MAX_DEPTH + 1];
	int nopen;
} load_t;

PF_PRINTF(2, 3) static void line_warn(load_t *ld, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	if (!ld->warn)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	ld->warn(ld->arg, ld->name, ld->line, msg);
}

/* Ends the load with rc; the first fatal error wins. msg is prefixed with "NAME:LINE: ". */
PF_PRINTF(3, 4) static void load_fail(load_t *ld, int rc, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	if (ld->fatal)
		return;
	ld->fatal = rc;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (ld->err && ld->errlen) {
		if (ld->line > 0)
			snprintf(ld->err, ld->errlen, "%s:%d: %s", ld->name, ld->line, msg);
		else
			snprintf(ld->err, ld->errlen, "%s: %s", ld->name, msg);
	}
}

static void *load_alloc(load_t *ld, size_t n)
{
	void *p = malloc(n ? n : 1);

	if (!p)
		load_fail(ld, -ENOMEM, "out of memory");
	return p;
}

static char *load_strndup(load_t *ld, const char *s, size_t n)
{
	char *p = load_alloc(ld, n + 1);

	if (p) {
		memcpy(p, s, n);
		p[n] = '\0';
	}
	return p;
}

/* Grows *arr (elements of size sz) so that it holds at least n + 1; returns false on ENOMEM. */
static bool load_grow(load_t *ld, void **arr, size_t *cap, size_t n, size_t sz)
{
	size_t ncap;
	void *p;

	if (n < *cap)
		return true;
	ncap = *cap ? *cap * 2 : 8;
	if (ncap > SIZE_MAX / sz) {
		load_fail(ld, -ENOMEM, "out of memory");
		return false;
	}
	p = realloc(*arr, ncap * sz);
	if (!p) {
		load_fail(ld, -ENOMEM, "out of memory");
		return false;
	}
	*arr = p;
	*cap = ncap;
	return true;
}

/*
 * Reads all of fd, at most cap bytes (-EFBIG when there is more); the file's size as stat sees
 * it is not trusted (it may grow, or be a pipe). Returns 0 and a malloc'ed buffer, or -errno.
 */
static int read_all(int fd, size_t cap, char **out, size_t *outlen)
{
	size_t len = 0, size = 0;
	char *buf = NULL;

	for (;;) {
		ssize_t n;

		if (len == size) {
			size_t nsize = size ? size * 2 : 8192;
			char *nbuf;

			if (size > cap) { /* already holds cap + 1 bytes */
				free(buf);
				return -EFBIG;
			}
			if (nsize > cap + 1)
				nsize = cap + 1;
			nbuf = realloc(buf, nsize);
			if (!nbuf) {
				free(buf);
				return -ENOMEM;
			}
			buf = nbuf;
			size = nsize;
		}
		n = read(fd, buf + len, size - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int rc = -errno;

			free(buf);
			return rc;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		if (len > cap) {
			free(buf);
			return -EFBIG;
		}
	}
	*out = buf;
	*outlen = len;
	return 0;
}

/* What load_read returns for a path that is not a regular file (nor a directory). */
#define NOT_REGULAR (-ENODEV)

static const char *read_error(int rc)
{
	return rc == NOT_REGULAR ? "not a regular file" : strerror(-rc);
}

/*
 * Opens and reads path within the load's byte budget. Returns 0 with the buffer, its length
 * and the file's identity, or -errno (-EFBIG: over the size limit or the budget; NOT_REGULAR).
 * Only regular files are read: a FIFO would block the load (the open is non-blocking so that
 * it cannot) and a device could feed it without end.
 */
static int load_read(load_t *ld, const char *path, char **buf, size_t *len, file_id_t *id)
{
	size_t cap = ld->budget < PF_HBA_MAX_FILE_BYTES ? ld->budget : PF_HBA_MAX_FILE_BYTES;
	struct stat st;
	int fd, rc;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0) {
		rc = -errno;
		close(fd);
		return rc;
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		return S_ISDIR(st.st_mode) ? -EISDIR : NOT_REGULAR;
	}
	if ((uintmax_t)st.st_size > cap) {
		close(fd);
		return -EFBIG;
	}
	rc = read_all(fd, cap, buf, len);
	close(fd);
	if (rc == 0) {
		ld->budget -= *len;
		id->dev = st.st_dev;
		id->ino = st.st_ino;
	}
	return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* Tokenizer                                                                                  */
/* ---------------------------------------------------------------------------------------- */

typedef struct {
	const char *s; /* unquoted text, NUL-terminated */
	size_t len;
	bool quoted; /* began with a double quote: keywords lose their meaning */
	int field;
} tok_t;

typedef struct {
	char *text; /* token texts, each NUL-terminated */
	size_t text_cap;
	tok_t *toks;
	size_t ntoks, toks_cap;
	int nfields;
} line_toks_t;

static bool is_blank(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v';
}

/*
 * Reads one token at *pp (not at a blank, comma, '#' or newline) into *dst, advancing both.
 * Returns NULL or the reason the token is bad.
 */
static const char *read_token(const char **pp, const char *end, char **dst, bool *quoted)
{
	const char *p = *pp;
	char *d = *dst;
	bool in_quote = false;

	*quoted = *p == '"';
	while (p < end) {
		char c = *p;

		if (c == '\n')
			break;
		if (!in_quote && (is_blank(c) || c == ',' || c == '#'))
			break;
		if (c == '\0')
			return "NUL byte";
		if (c == '"') {
			/* Inside quotes, "" stands for one quote (Postgres's tokenizer). */
			if (in_quote && p + 1 < end && p[1] == '"') {
				*d++ = '"';
				p += 2;
				continue;
			}
			in_quote = !in_quote;
			p++;
			continue;
		}
		*d++ = c;
		p++;
	}
	if (in_quote)
		return "unterminated quoted string";
	*d++ = '\0';
	*pp = p;
	*dst = d;
	return NULL;
}

/* The first '#' of the line outside quotes, or NULL. */
static const char *find_comment(const char *p, const char *end)
{
	bool in_quote = false;

	for (; p < end; p++) {
		if (*p == '"')
			in_quote = !in_quote;
		else if (*p == '#' && !in_quote)
			return p;
	}
	return NULL;
}

/*
 * Splits the line [p, end) into fields and tokens. Returns NULL or the reason the line is bad;
 * *cont is set when the line ends with a backslash outside a comment (Postgres 16 line
 * continuation), which the caller reports first.
 */
static const char *tokenize_line(load_t *ld, line_toks_t *lt, const char *p, const char *end,
                                 bool *cont)
{
	const char *line = p, *last = end, *comment = NULL, *bad = NULL;
	bool after_comma = false;
	size_t need;
	char *d;

	lt->ntoks = 0;
	lt->nfields = 0;
	while (last > line && last[-1] == '\r')
		last--;
	*cont = false;
	if (memchr(line, '\0', (size_t)(end - line)))
		bad = "NUL byte";
	/* Each token's text is no longer than its source, plus its NUL: twice the line is enough.
	 */
	need = 2 * (size_t)(end - line) + 1;
	if (!bad && need > lt->text_cap) {
		char *t = realloc(lt->text, need);

		if (!t) {
			load_fail(ld, -ENOMEM, "out of memory");
			return "out of memory";
		}
		lt->text = t;
		lt->text_cap = need;
	}
	d = lt->text;
	while (!bad) {
		tok_t *t;

		while (p < end && is_blank(*p))
			p++;
		if (p == end || *p == '#') {
			if (after_comma)
				bad = "list ends with a comma";
			break;
		}
		if (*p == ',') {
			bad = "empty element in a comma-separated list";
			break;
		}
		if (!load_grow(ld, (void **)&lt->toks, &lt->toks_cap, lt->ntoks, sizeof(tok_t)))
			return "out of memory";
		t = &lt->toks[lt->ntoks];
		t->s = d;
		bad = read_token(&p, end, &d, &t->quoted);
		if (bad)
			break;
		t->len = strlen(t->s);
		t->field = lt->nfields;
		lt->ntoks++;
		/* PgBouncer allows blanks around the commas of a list ("a , b"). */
		while (p < end && is_blank(*p))
			p++;
		if (p < end && *p == ',') {
			p++;
			after_comma = true;
		} else {
			after_comma = false;
			lt->nfields++;
		}
	}
	/* A backslash at the very end, unless it is inside a comment, is a continuation. */
	comment = find_comment(line, last);
	if (last > line && last[-1] == '\\' && (!comment || last - 1 < comment))
		*cont = true;
	return bad;
}

/* Token i of field f, or NULL; *n gets the field's token count. */
static const tok_t *field_toks(const line_toks_t *lt, int f, size_t *n)
{
	size_t i = 0, j;

	while (i < lt->ntoks && lt->toks[i].field < f)
		i++;
	for (j = i; j < lt->ntoks && lt->toks[j].field == f; j++)
		;
	*n = j - i;
	return j > i ? &lt->toks[i] : NULL;
}

static void free_line_toks(line_toks_t *lt)
{
	free(lt->text);
	free(lt->toks);
}

static bool is_kw(const tok_t *t, const char *kw)
{
	return !t->quoted && strcmp(t->s, kw) == 0;
}

/* Calls fn for each line of buf; stops early when the load fails. */
typedef void (*line_fn)(load_t *ld, void *ctx, const char *p, const char *end);

static void for_each_line(load_t *ld, const char *buf, size_t len, line_fn fn, void *ctx)
{
	const char *p = buf, *end = buf + len;

	while (p < end && !ld->fatal) {
		const char *eol = memchr(p, '\n', (size_t)(end - p));

		if (!eol)
			eol = end;
		if (ld->line == INT_MAX) {
			load_fail(ld, -EFBIG, "too many lines");
			return;
		}
		ld->line++;
		fn(ld, ctx, p, eol);
		p = eol < end ? eol + 1 : end;
	}
}

/*
 * Shared first step of both line parsers: tokenizes and reports lines that are bad before any
 * field is looked at. Returns true when the line has tokens to parse.
 */
static bool prepare_line(load_t *ld, line_toks_t *lt, const char *p, const char *end,
                         size_t *skipped)
{
	const char *bad;
	bool cont;

	bad = tokenize_line(ld, lt, p, end, &cont);
	if (ld->fatal)
		return false;
	if (cont) {
		line_warn(ld, "line ends with a backslash: line continuation (Postgres 16) is not "
		              "supported, as in PgBouncer; line skipped");
		(*skipped)++;
		return false;
	}
	if (bad) {
		line_warn(ld, "%s; line skipped", bad);
		(*skipped)++;
		return false;
	}
	if (lt->ntoks == 0)
		return false;
	{
		size_t n;
		const tok_t *t = field_toks(lt, 0, &n);

		if (n == 1 && (is_kw(t, "include") || is_kw(t, "include_if_exists") ||
		               is_kw(t, "include_dir"))) {
			line_warn(ld,
			          "\"%s\" directives (Postgres 16) are not supported, as in "
			          "PgBouncer; line skipped",
			          t->s);
			(*skipped)++;
			return false;
		}
	}
	return true;
}

/* ---------------------------------------------------------------------------------------- */
/* Ident map file                                                                             */
/* ---------------------------------------------------------------------------------------- */

typedef struct {
	char *map;
	char *sys; /* literal system user, or the regex text without its '/' */
	char *db;  /* database user (template when it has \1) */
	bool sys_regex;
	bool db_all;      /* unquoted all */
	bool backref;     /* db contains \1 and sys is a regex */
	bool bad_backref; /* ... but the regex has no group: refuse when it matches */
	regex_t re;
} ident_line_t;

struct pf_ident {
	ident_line_t *lines;
	size_t n, cap;
	char **maps; /* sorted, unique */
	size_t nmaps;
};

typedef struct {
	pf_ident_t *id;
	line_toks_t lt;
	size_t skipped;
} ident_ctx_t;

static bool ascii_alpha(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/*
 * Returns NULL when POSIX extended syntax reads re as Postgres's advanced syntax would (as far
 * as this check sees), or what differs, written into why.
 */
static const char *ere_difference(const char *re, char *why, size_t whylen)
{
	bool in_br = false;

	if (strncmp(re, "***", 3) == 0)
		return "the ***= and ***: prefixes";
	for (size_t i = 0; re[i]; i++) {
		char c = re[i];

		if (in_br) {
			if (c == '[' &&
			    (re[i + 1] == ':' || re[i + 1] == '.' || re[i + 1] == '=')) {
				char close = re[i + 1];
				const char *e = re + i + 2;

				while (*e && !(e[0] == close && e[1] == ']'))
					e++;
				if (!*e)
					return NULL; /* regcomp reports it */
				i = (size_t)(e + 1 - re);
				continue;
			}
			if (c == '\\')
				return "a backslash inside [...] (a literal in POSIX, an escape in "
				       "Postgres)";
			if (c == ']')
				in_br = false;
			continue;
		}
		if (c == '\\') {
			char n = re[i + 1];

			if (!n)
				return NULL;
			if (ascii_alpha(n) && !strchr("wWsSbB", n)) {
				snprintf(why, whylen, "the escape \\%c", n);
				return why;
			}
			i++;
			continue;
		}
		if (c == '[') {
			in_br = true;
			if (re[i + 1] == '^')
				i++;
			if (re[i + 1] == ']')
				i++;
			continue;
		}
		if ((c == '*' || c == '+' || c == '?' || c == '}') && re[i + 1] == '?')
			return "lazy quantifiers (*? +? ?? {m,n}?), which POSIX reads as greedy";
	}
	return NULL;
}

static void ident_line_free(ident_line_t *l)
{
	if (l->sys_regex)
		regfree(&l->re);
	free(l->map);
	free(l->sys);
	free(l->db);
}

static void ident_parse_line(load_t *ld, void *vctx, const char *p, const char *end)
{
	ident_ctx_t *ctx = vctx;
	const tok_t *f[3];
	ident_line_t l;
	size_t n;
	int rc;

	if (!prepare_line(ld, &ctx->lt, p, end, &ctx->skipped))
		return;
	if (ctx->lt.nfields != 3) {
		line_warn(ld,
		          "expected MAPNAME SYSTEM-USER DATABASE-USER, found %d field%s; line "
		          "skipped",
		          ctx->lt.nfields, ctx->lt.nfields == 1 ? "" : "s");
		ctx->skipped++;
		return;
	}
	for (int i = 0; i < 3; i++) {
		f[i] = field_toks(&ctx->lt, i, &n);
		if (n != 1) {
			line_warn(ld, "a list of names is not allowed in an ident map line; line "
			              "skipped");
			ctx->skipped++;
			return;
		}
	}
	if (f[0]->len == 0 || f[1]->len == 0 || f[2]->len == 0) {
		line_warn(ld, "empty field; line skipped");
		ctx->skipped++;
		return;
	}
	if (!f[2]->quoted && f[2]->s[0] == '+') {
		line_warn(ld,
		          "group membership (\"%.*s\") is not supported, as in PgBouncer; line "
		          "skipped",
		          SHOW, f[2]->s);
		ctx->skipped++;
		return;
	}
	if (f[2]->s[0] == '/') {
		line_warn(ld,
		          "a regular expression as DATABASE-USER (\"%.*s\") is not supported; line "
		          "skipped",
		          SHOW, f[2]->s);
		ctx->skipped++;
		return;
	}
	memset(&l, 0, sizeof(l));
	/* As in Postgres, a leading '/' makes a regular expression, quoted or not. */
	l.sys_regex = f[1]->s[0] == '/';
	l.db_all = is_kw(f[2], "all");
	if (l.sys_regex) {
		char why[64];
		const char *diff = ere_difference(f[1]->s + 1, why, sizeof(why));

		if (diff) {
			line_warn(ld,
			          "regular expression \"%.*s\" uses %s, which POSIX regular "
			          "expressions read differently from Postgres; line skipped",
			          SHOW, f[1]->s + 1, diff);
			ctx->skipped++;
			return;
		}
		rc = regcomp(&l.re, f[1]->s + 1, REG_EXTENDED);
		if (rc != 0) {
			char msg[128];

			regerror(rc, &l.re, msg, sizeof(msg));
			line_warn(ld, "invalid regular expression \"%.*s\": %s; line skipped", SHOW,
			          f[1]->s + 1, msg);
			ctx->skipped++;
			return;
		}
		l.backref = strstr(f[2]->s, "\\1") != NULL;
		if (l.backref && l.re.re_nsub == 0) {
			l.bad_backref = true;
			line_warn(
			        ld,
			        "regular expression \"%.*s\" has no group for the \\1 in \"%.*s\": "
			        "as in Postgres, a system user it matches is refused",
			        SHOW, f[1]->s + 1, SHOW, f[2]->s);
		}
	}
	l.map = load_strndup(ld, f[0]->s, f[0]->len);
	l.sys = load_strndup(ld, f[1]->s + l.sys_regex, f[1]->len - l.sys_regex);
	l.db = load_strndup(ld, f[2]->s, f[2]->len);
	if (ld->fatal || !load_grow(ld, (void **)&ctx->id->lines, &ctx->id->cap, ctx->id->n,
	                            sizeof(ident_line_t))) {
		ident_line_free(&l);
		return;
	}
	ctx->id->lines[ctx->id->n++] = l;
}

static int cmp_strp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

void pf_ident_free(pf_ident_t *id)
{
	if (!id)
		return;
	for (size_t i = 0; i < id->n; i++)
		ident_line_free(&id->lines[i]);
	free(id->lines);
	free(id->maps);
	free(id);
}

static int ident_finish(load_t *ld, pf_ident_t *id)
{
	size_t k = 0;

	if (id->n == 0)
		return 0;
	id->maps = load_alloc(ld, id->n * sizeof(*id->maps));
	if (!id->maps)
		return ld->fatal;
	for (size_t i = 0; i < id->n; i++)
		id->maps[i] = id->lines[i].map;
	qsort(id->maps, id->n, sizeof(*id->maps), cmp_strp);
	for (size_t i = 0; i < id->n; i++) {
		if (k == 0 || strcmp(id->maps[k - 1], id->maps[i]) != 0)
			id->maps[k++] = id->maps[i];
	}
	id->nmaps = k;
	return 0;
}

static int ident_parse_buf(load_t *ld, const char *text, size_t len, pf_ident_t **out)
{
	ident_ctx_t ctx;

	memset(&ctx, 0, sizeof(ctx));
	ctx.id = calloc(1, sizeof(*ctx.id));
	if (!ctx.id) {
		load_fail(ld, -ENOMEM, "out of memory");
		return ld->fatal;
	}
	for_each_line(ld, text, len, ident_parse_line, &ctx);
	free_line_toks(&ctx.lt);
	ld->line = 0;
	if (!ld->fatal)
		ident_finish(ld, ctx.id);
	if (ld->fatal) {
		pf_ident_free(ctx.id);
		return ld->fatal;
	}
	*out = ctx.id;
	return 0;
}

static void load_init(load_t *ld, const char *name, pf_hba_diag_fn warn, void *arg, char *err,
                      size_t errlen)
{
	memset(ld, 0, sizeof(*ld));
	ld->name = name;
	ld->warn = warn;
	ld->arg = arg;
	ld->budget = PF_HBA_MAX_FILE_BYTES;
	ld->err = err;
	ld->errlen = errlen;
	if (err && errlen)
		err[0] = '\0';
}

/* Reads the main file of a load; on failure sets the load's error. */
static int load_main(load_t *ld, char **buf, size_t *len)
{
	file_id_t id;
	int rc = load_read(ld, ld->name, buf, len, &id);

	if (rc == -EFBIG)
		load_fail(ld, rc, "file is larger than %u bytes", PF_HBA_MAX_FILE_BYTES);
	else if (rc == -ENOMEM)
		load_fail(ld, rc, "out of memory");
	else if (rc < 0)
		load_fail(ld, rc, "cannot open: %s", read_error(rc));
	else
		ld->open[ld->nopen++] = id;
	return rc;
}

int pf_ident_parse(const char *text, size_t len, const char *name, pf_hba_diag_fn warn, void *arg,
                   pf_ident_t **out, char *err, size_t errlen)
{
	load_t ld;

	load_init(&ld, name, warn, arg, err, errlen);
	if (len > PF_HBA_MAX_FILE_BYTES) {
		load_fail(&ld, -EFBIG, "file is larger than %u bytes", PF_HBA_MAX_FILE_BYTES);
		return ld.fatal;
	}
	return ident_parse_buf(&ld, text, len, out);
}

int pf_ident_load(const char *path, pf_hba_diag_fn warn, void *arg, pf_ident_t **out, char *err,
                  size_t errlen)
{
	load_t ld;
	char *buf;
	size_t len;
	int rc;

	load_init(&ld, path, warn, arg, err, errlen);
	rc = load_main(&ld, &buf, &len);
	if (rc < 0)
		return rc;
	rc = ident_parse_buf(&ld, buf, len, out);
	free(buf);
	return rc;
}

bool pf_ident_has_map(const pf_ident_t *id, const char *map)
{
	if (!id || !map || id->nmaps == 0)
		return false;
	return bsearch(&map, id->maps, id->nmaps, sizeof(*id->maps), cmp_strp) != NULL;
}

size_t pf_ident_count(const pf_ident_t *id)
{
	return id ? id->n : 0;
}

/*
 * Whether db_user equals tmpl with its first "\1" replaced by cap (caplen bytes), compared in
 * pieces so that matching allocates nothing.
 */
static bool equals_substituted(const char *tmpl, const char *cap, size_t caplen,
                               const char *db_user)
{
	const char *at = strstr(tmpl, "\\1");
	size_t pre = (size_t)(at - tmpl), post = strlen(at + 2), dlen = strlen(db_user);

	if (dlen != pre + caplen + post)
		return false;
	return memcmp(db_user, tmpl, pre) == 0 && memcmp(db_user + pre, cap, caplen) == 0 &&
	       memcmp(db_user + pre + caplen, at + 2, post) == 0;
}

bool pf_ident_has_mapping(const pf_ident_t *id, const char *map, const char *system_user,
                          const char *db_user)
{
	if (!id || !map || !system_user || !db_user)
		return false;
	for (size_t i = 0; i < id->n; i++) {
		const ident_line_t *l = &id->lines[i];
		regmatch_t m[2];
		int rc;

		if (strcmp(l->map, map) != 0)
			continue;
		if (!l->sys_regex) {
			if (strcmp(l->sys, system_user) != 0)
				continue;
			if (l->db_all || strcmp(l->db, db_user) == 0)
				return true;
			continue;
		}
		rc = regexec(&l->re, system_user, 2, m, 0);
		if (rc == REG_NOMATCH)
			continue;
		if (rc != 0)
			return false; /* Postgres: a failed match ends the search, refused */
		if (l->backref) {
			/* Postgres: \1 without a (participating) group is an error that refuses. */
			if (l->bad_backref || m[1].rm_so < 0)
				return false;
			if (equals_substituted(l->db, system_user + m[1].rm_so,
			                       (size_t)(m[1].rm_eo - m[1].rm_so), db_user))
				return true;
			continue;
		}
		if (l->db_all || strcmp(l->db, db_user) == 0)
			return true;
	}
	return false;
}

/* ---------------------------------------------------------------------------------------- */
/* HBA file                                                                                   */
/* ---------------------------------------------------------------------------------------- */

typedef enum {
	CT_LOCAL,
	CT_HOST,
	CT_HOSTSSL,
	CT_HOSTNOSSL,
} conn_type_t;

#define NAME_ALL         1u
#define NAME_SAMEUSER    2u
#define NAME_REPLICATION 4u

typedef struct {
	unsigned flags;
	char **names; /* sorted and unique once the rule is complete */
	size_t n, cap;
} nameset_t;

typedef struct {
	pf_hba_rule_t pub;
	conn_type_t type;
	bool addr_all;
	int family; /* AF_INET or AF_INET6 when !addr_all and type != CT_LOCAL */
	uint8_t addr[16], mask[16];
	nameset_t db, user;
	pf_hba_option_t *opts;
} rule_t;

struct pf_hba {
	char *file;
	rule_t *rules;
	size_t n, cap;
	size_t skipped;
};

typedef struct {
	pf_hba_t *hba;
	const pf_ident_t *ident;
	const char *dir; /* directory of the HBA file, for relative @ files; "" = current */
	line_toks_t lt;
} hba_ctx_t;

static const char *const method_names[] = {
        [PF_HBA_TRUST] = "trust",
        [PF_HBA_REJECT] = "reject",
        [PF_HBA_MD5] = "md5",
        [PF_HBA_PASSWORD] = "password",
        [PF_HBA_SCRAM_SHA_256] = "scram-sha-256",
        [PF_HBA_PEER] = "peer",
        [PF_HBA_CERT] = "cert",
        [PF_HBA_LDAP] = "ldap",
};

/* Methods Postgres knows and PgBouncer 1.25 does not take in its HBA file. */
static const char *const unsupported_methods[] = {
        "ident", "gss", "sspi", "pam", "bsd", "radius", "oauth", "crypt", "krb5",
};

const char *pf_hba_method_name(pf_hba_method_t m)
{
	if ((size_t)m < PF_ARRAY_SIZE(method_names) && method_names[m])
		return method_names[m];
	return "?";
}

static void nameset_free(nameset_t *s)
{
	for (size_t i = 0; i < s->n; i++)
		free(s->names[i]);
	free(s->names);
}

static void rule_free(rule_t *r)
{
	nameset_free(&r->db);
	nameset_free(&r->user);
	for (size_t i = 0; i < r->pub.n_options; i++) {
		free((char *)r->opts[i].name);
		free((char *)r->opts[i].value);
	}
	free(r->opts);
}

void pf_hba_free(pf_hba_t *hba)
{
	if (!hba)
		return;
	for (size_t i = 0; i < hba->n; i++)
		rule_free(&hba->rules[i]);
	free(hba->rules);
	free(hba->file);
	free(hba);
}

size_t pf_hba_count_rules(const pf_hba_t *hba)
{
	return hba ? hba->n : 0;
}

size_t pf_hba_count_skipped(const pf_hba_t *hba)
{
	return hba ? hba->skipped : 0;
}

static bool nameset_add(load_t *ld, nameset_t *s, const char *name, size_t len)
{
	char *copy;

	if (ld->names >= PF_HBA_MAX_NAMES) {
		load_fail(ld, -EFBIG, "more than %u database and user names", PF_HBA_MAX_NAMES);
		return false;
	}
	if (!load_grow(ld, (void **)&s->names, &s->cap, s->n, sizeof(char *)))
		return false;
	copy = load_strndup(ld, name, len);
	if (!copy)
		return false;
	s->names[s->n++] = copy;
	ld->names++;
	return true;
}

static void nameset_finish(nameset_t *s)
{
	size_t k = 0;

	if (s->n < 2)
		return;
	qsort(s->names, s->n, sizeof(char *), cmp_strp);
	for (size_t i = 0; i < s->n; i++) {
		if (k > 0 && strcmp(s->names[k - 1], s->names[i]) == 0)
			free(s->names[i]);
		else
			s->names[k++] = s->names[i];
	}
	s->n = k;
}

static bool nameset_has(const nameset_t *s, const char *name)
{
	return s->n && bsearch(&name, s->names, s->n, sizeof(char *), cmp_strp) != NULL;
}

/* Returns the malloc'ed directory part of path ("" when it has none). */
static char *dir_of(const char *path)
{
	const char *slash = strrchr(path, '/');
	size_t n = slash ? (size_t)(slash - path) : 0;
	char *d;

	if (slash && n == 0)
		n = 1; /* "/file" */
	d = malloc(n + 1);
	if (d) {
		memcpy(d, path, n);
		d[n] = '\0';
	}
	return d;
}

static char *join_path(const char *dir, const char *name)
{
	size_t dl = strlen(dir), nl = strlen(name);
	char *p;

	if (name[0] == '/' || dl == 0)
		return strdup(name);
	p = malloc(dl + nl + 2);
	if (p) {
		memcpy(p, dir, dl);
		if (dir[dl - 1] != '/')
			p[dl++] = '/';
		memcpy(p + dl, name, nl + 1);
	}
	return p;
}

static int add_name_token(load_t *ld, nameset_t *s, const char *name, size_t len, bool quoted,
                          bool is_db, const char *dir, int depth);

/*
 * Reads the names of the @ file fname (relative to dir) into s. Returns 0, or -1 when the line
 * is bad (warned) or the load failed.
 */
static int add_names_from_file(load_t *ld, nameset_t *s, const char *fname, bool is_db,
                               const char *dir, int depth)
{
	char *path = NULL, *buf = NULL, *text = NULL, *subdir = NULL;
	const char *p, *end;
	file_id_t id;
	size_t len;
	int rc;

	if (!fname[0]) {
		line_warn(ld, "\"@\" without a file name; line skipped");
		return -1;
	}
	if (depth > PF_HBA_MAX_DEPTH) {
		line_warn(ld, "@%.*s: @ files nested too deep (limit %d); line skipped", SHOW,
		          fname, PF_HBA_MAX_DEPTH);
		return -1;
	}
	path = join_path(dir, fname);
	if (!path) {
		load_fail(ld, -ENOMEM, "out of memory");
		return -1;
	}
	rc = load_read(ld, path, &buf, &len, &id);
	if (rc == -EFBIG) {
		load_fail(ld, rc,
		          "@ file \"%.*s\": the file and the @ files it reads exceed %u bytes",
		          SHOW, path, PF_HBA_MAX_FILE_BYTES);
		goto out;
	}
	if (rc == -ENOMEM) {
		load_fail(ld, rc, "out of memory");
		goto out;
	}
	if (rc < 0) {
		line_warn(ld, "@ file \"%.*s\": cannot open: %s; line skipped", SHOW, path,
		          read_error(rc));
		goto out;
	}
	for (int i = 0; i < ld->nopen; i++) {
		if (ld->open[i].dev == id.dev && ld->open[i].ino == id.ino) {
			line_warn(ld, "@ file \"%.*s\" includes itself; line skipped", SHOW, path);
			rc = -1;
			goto out;
		}
	}
	subdir = dir_of(path);
	text = malloc(len + 1);
	if (!subdir || !text) {
		load_fail(ld, -ENOMEM, "out of memory");
		rc = -1;
		goto out;
	}
	ld->open[ld->nopen++] = id;
	p = buf;
	end = buf + len;
	/* Names separated by blanks, commas or newlines; '#' to the end of the line. */
	while (p < end && rc == 0) {
		const char *why;
		char *d = text;
		bool quoted;

		if (is_blank(*p) || *p == ',' || *p == '\n') {
			p++;
			continue;
		}
		if (*p == '#') {
			while (p < end && *p != '\n')
				p++;
			continue;
		}
		why = read_token(&p, end, &d, &quoted);
		if (why) {
			line_warn(ld, "@ file \"%.*s\": %s; line skipped", SHOW, path, why);
			rc = -1;
			break;
		}
		rc = add_name_token(ld, s, text, (size_t)(d - text - 1), quoted, is_db, subdir,
		                    depth);
	}
	ld->nopen--;
out:
	free(path);
	free(buf);
	free(text);
	free(subdir);
	return rc < 0 ? -1 : 0;
}

/* One element of a database or user list. Returns 0, or -1 when the line is bad. */
static int add_name_token(load_t *ld, nameset_t *s, const char *name, size_t len, bool quoted,
                          bool is_db, const char *dir, int depth)
{
	if (!quoted) {
		if (strcmp(name, "all") == 0) {
			s->flags |= NAME_ALL;
			return 0;
		}
		if (is_db && strcmp(name, "sameuser") == 0) {
			s->flags |= NAME_SAMEUSER;
			return 0;
		}
		if (is_db && strcmp(name, "replication") == 0) {
			s->flags |= NAME_REPLICATION;
			return 0;
		}
		if (is_db && (strcmp(name, "samerole") == 0 || strcmp(name, "samegroup") == 0)) {
			line_warn(ld, "\"%s\" is not supported, as in PgBouncer; line skipped",
			          name);
			return -1;
		}
		if (name[0] == '+') {
			if (is_db)
				line_warn(ld,
				          "database name \"%.*s\" starts with '+', which PgBouncer "
				          "rejects (quote it); line skipped",
				          SHOW, name);
			else
				line_warn(ld,
				          "group membership (\"%.*s\") is not supported, as in "
				          "PgBouncer; line skipped",
				          SHOW, name);
			return -1;
		}
		if (name[0] == '@')
			return add_names_from_file(ld, s, name + 1, is_db, dir, depth + 1);
	}
	if (name[0] == '/')
		line_warn(
		        ld,
		        "\"%.*s\" is compared as a plain name: regular expressions in the %s field "
		        "(Postgres 16) are not supported, as in PgBouncer",
		        SHOW, name, is_db ? "database" : "user");
	return nameset_add(ld, s, name, len) ? 0 : -1;
}

static int add_name_field(load_t *ld, hba_ctx_t *ctx, nameset_t *s, int f, bool is_db)
{
	size_t n;
	const tok_t *t = field_toks(&ctx->lt, f, &n);

	for (size_t i = 0; i < n; i++) {
		if (add_name_token(ld, s, t[i].s, t[i].len, t[i].quoted, is_db, ctx->dir, 0) < 0)
			return -1;
	}
	return 0;
}

/* Parses an IPv6 or IPv4 address (inet_pton: numeric only) into r; false when it is neither. */
static bool parse_ip(const char *s, rule_t *r)
{
	memset(r->addr, 0, sizeof(r->addr));
	if (inet_pton(AF_INET6, s, r->addr) == 1) {
		r->family = AF_INET6;
		return true;
	}
	if (inet_pton(AF_INET, s, r->addr) == 1) {
		r->family = AF_INET;
		return true;
	}
	return false;
}

/* A CIDR prefix length: 1 to 3 decimal digits, at most 32 or 128. */
static bool parse_prefix(const char *s, rule_t *r)
{
	unsigned bits = 0, max = r->family == AF_INET ? 32 : 128;
	size_t n = strlen(s);

	if (n == 0 || n > 3)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		bits = bits * 10 + (unsigned)(s[i] - '0');
	}
	if (bits > max)
		return false;
	memset(r->mask, 0, sizeof(r->mask));
	for (unsigned i = 0; i < bits / 8; i++)
		r->mask[i] = 0xff;
	if (bits % 8)
		r->mask[bits / 8] = (uint8_t)(0xff << (8 - bits % 8));
	return true;
}

/* Parses the address field(s) starting at field f; returns the next field, or -1 (warned). */
static int parse_address(load_t *ld, hba_ctx_t *ctx, rule_t *r, int f)
{
	size_t n, alen;
	const tok_t *t = field_toks(&ctx->lt, f, &n);
	char text[INET6_ADDRSTRLEN + 8];
	const char *slash;

	if (!t) {
		line_warn(ld, "missing address; line skipped");
		return -1;
	}
	if (n != 1) {
		line_warn(ld, "the address cannot be a list; line skipped");
		return -1;
	}
	if (t->quoted) {
		line_warn(ld,
		          "quoted address \"%.*s\": PgBouncer reads only unquoted IP addresses "
		          "and all; line skipped",
		          SHOW, t->s);
		return -1;
	}
	if (strcmp(t->s, "all") == 0) {
		r->addr_all = true;
		return f + 1;
	}
	if (strcmp(t->s, "samehost") == 0 || strcmp(t->s, "samenet") == 0) {
		line_warn(ld, "\"%s\" is not supported, as in PgBouncer; line skipped", t->s);
		return -1;
	}
	slash = strchr(t->s, '/');
	if ((slash ? (size_t)(slash - t->s) : t->len) >= sizeof(text)) {
		line_warn(ld,
		          "\"%.*s\" is not an IP address (host names are not supported, as in "
		          "PgBouncer); line skipped",
		          SHOW, t->s);
		return -1;
	}
	memcpy(text, t->s, slash ? (size_t)(slash - t->s) : t->len);
	text[slash ? (size_t)(slash - t->s) : t->len] = '\0';
	if (!parse_ip(text, r)) {
		line_warn(ld,
		          "\"%.*s\" is not an IP address (host names are not supported, as in "
		          "PgBouncer); line skipped",
		          SHOW, t->s);
		return -1;
	}
	alen = r->family == AF_INET ? 4 : 16;
	if (slash) {
		if (!parse_prefix(slash + 1, r)) {
			line_warn(ld, "invalid CIDR mask in \"%.*s\"; line skipped", SHOW, t->s);
			return -1;
		}
		f++;
	} else {
		const tok_t *m = field_toks(&ctx->lt, f + 1, &n);

		if (!m || n != 1 || m->quoted || strlen(m->s) >= sizeof(text) ||
		    inet_pton(r->family, m->s, r->mask) != 1) {
			line_warn(ld,
			          "address \"%.*s\" needs a /prefix or an %s mask in the next "
			          "field; line skipped",
			          SHOW, t->s, r->family == AF_INET ? "IPv4" : "IPv6");
			return -1;
		}
		f += 2;
	}
	for (size_t i = 0; i < alen; i++) {
		if (r->addr[i] & (uint8_t)~r->mask[i]) {
			line_warn(ld,
			          "address \"%.*s\" has bits set outside its mask; PgBouncer never "
			          "matches such a rule; line skipped",
			          SHOW, t->s);
			return -1;
		}
	}
	return f;
}

static const pf_hba_option_t *find_option(const rule_t *r, const char *name)
{
	for (size_t i = 0; i < r->pub.n_options; i++) {
		if (strcmp(r->opts[i].name, name) == 0)
			return &r->opts[i];
	}
	return NULL;
}

/* Parses the options from field f on, and checks them against the method and type. */
static int parse_options(load_t *ld, hba_ctx_t *ctx, rule_t *r, int f)
{
	size_t count = 0, cap = 0;

	for (size_t i = 0; i < ctx->lt.ntoks; i++) {
		const tok_t *t = &ctx->lt.toks[i];
		const char *eq;

		if (t->field < f)
			continue;
		eq = strchr(t->s, '=');
		if (!eq || eq == t->s || !eq[1]) {
			line_warn(ld, "option \"%.*s\" is not name=value; line skipped", SHOW,
			          t->s);
			return -1;
		}
		if (!load_grow(ld, (void **)&r->opts, &cap, count, sizeof(*r->opts)))
			return -1;
		r->opts[count].name = load_strndup(ld, t->s, (size_t)(eq - t->s));
		r->opts[count].value = load_strndup(ld, eq + 1, strlen(eq + 1));
		if (!r->opts[count].name || !r->opts[count].value) {
			free((char *)r->opts[count].name);
			free((char *)r->opts[count].value);
			return -1;
		}
		count++;
		r->pub.n_options = count;
		r->pub.options = r->opts;
		for (size_t j = 0; j + 1 < count; j++) {
			if (strcmp(r->opts[j].name, r->opts[count - 1].name) == 0) {
				line_warn(ld, "option \"%.*s\" given twice; line skipped", SHOW,
				          r->opts[j].name);
				return -1;
			}
		}
	}
	for (size_t i = 0; i < count; i++) {
		const char *name = r->opts[i].name, *val = r->opts[i].value;

		if (strcmp(name, "map") == 0) {
			r->pub.map = val;
		} else if (strcmp(name, "clientcert") == 0) {
			if (r->type != CT_HOSTSSL) {
				line_warn(ld, "clientcert can only be set on hostssl lines; line "
				              "skipped");
				return -1;
			}
			if (strcmp(val, "verify-full") == 0) {
				r->pub.clientcert = PF_HBA_CLIENTCERT_VERIFY_FULL;
			} else if (strcmp(val, "verify-ca") == 0 && r->pub.method != PF_HBA_CERT) {
				r->pub.clientcert = PF_HBA_CLIENTCERT_VERIFY_CA;
			} else {
				line_warn(ld,
				          "invalid clientcert value \"%.*s\" (%s); line skipped",
				          SHOW, val,
				          r->pub.method == PF_HBA_CERT
				                  ? "cert rules accept only verify-full"
				                  : "verify-ca or verify-full");
				return -1;
			}
		} else if (strcmp(name, "clientname") == 0) {
			if (strcmp(val, "CN") == 0) {
				r->pub.clientname = PF_HBA_CLIENTNAME_CN;
			} else if (strcmp(val, "DN") == 0) {
				r->pub.clientname = PF_HBA_CLIENTNAME_DN;
			} else {
				line_warn(ld,
				          "invalid clientname value \"%.*s\" (CN or DN); line "
				          "skipped",
				          SHOW, val);
				return -1;
			}
		} else if (r->pub.method == PF_HBA_LDAP && strncmp(name, "ldap", 4) == 0) {
			/* Kept as written for an LDAP implementation. */
		} else {
			line_warn(
			        ld,
			        "option \"%.*s\" is not supported with method %s (PgBouncer takes "
			        "only map=); line skipped",
			        SHOW, name, pf_hba_method_name(r->pub.method));
			return -1;
		}
	}
	if (r->pub.method == PF_HBA_CERT)
		r->pub.clientcert = PF_HBA_CLIENTCERT_VERIFY_FULL;
	if (find_option(r, "clientname") && r->pub.clientcert == PF_HBA_CLIENTCERT_NONE) {
		line_warn(ld, "clientname needs the cert method or clientcert; line skipped");
		return -1;
	}
	if (r->pub.map) {
		if (!pf_ident_has_map(ctx->ident, r->pub.map)) {
			line_warn(ld,
			          "user name map \"%.*s\" is not %s, as PgBouncer requires; line "
			          "skipped",
			          SHOW, r->pub.map,
			          ctx->ident ? "in the ident map file"
			                     : "defined (no ident map file)");
			return -1;
		}
		if (r->pub.method != PF_HBA_PEER && r->pub.method != PF_HBA_CERT &&
		    r->pub.clientcert != PF_HBA_CLIENTCERT_VERIFY_FULL)
			line_warn(ld, "map= has no effect with method %s",
			          pf_hba_method_name(r->pub.method));
	}
	return 0;
}

static bool parse_method(load_t *ld, hba_ctx_t *ctx, rule_t *r, int f)
{
	size_t n;
	const tok_t *t = field_toks(&ctx->lt, f, &n);

	if (!t) {
		line_warn(ld, "missing authentication method; line skipped");
		return false;
	}
	if (n != 1 || t->quoted) {
		line_warn(ld, "the authentication method must be one unquoted word; line skipped");
		return false;
	}
	for (size_t i = 0; i < PF_ARRAY_SIZE(method_names); i++) {
		if (strcmp(t->s, method_names[i]) == 0) {
			r->pub.method = (pf_hba_method_t)i;
			return true;
		}
	}
	for (size_t i = 0; i < PF_ARRAY_SIZE(unsupported_methods); i++) {
		if (strcmp(t->s, unsupported_methods[i]) == 0) {
			line_warn(ld,
			          "authentication method \"%s\" is not supported, as in PgBouncer; "
			          "line skipped",
			          t->s);
			return false;
		}
	}
	line_warn(ld, "unknown authentication method \"%.*s\"; line skipped", SHOW, t->s);
	return false;
}

/* Parses one tokenized line into r. Returns 0, or -1 when the line is bad (warned). */
static int parse_rule(load_t *ld, hba_ctx_t *ctx, rule_t *r)
{
	size_t n;
	const tok_t *t = field_toks(&ctx->lt, 0, &n);
	int f;

	if (n != 1 || t->quoted) {
		line_warn(ld, "unknown connection type; line skipped");
		return -1;
	}
	if (strcmp(t->s, "local") == 0) {
		r->type = CT_LOCAL;
	} else if (strcmp(t->s, "host") == 0) {
		r->type = CT_HOST;
	} else if (strcmp(t->s, "hostssl") == 0) {
		r->type = CT_HOSTSSL;
	} else if (strcmp(t->s, "hostnossl") == 0) {
		r->type = CT_HOSTNOSSL;
	} else if (strcmp(t->s, "hostgssenc") == 0 || strcmp(t->s, "hostnogssenc") == 0) {
		line_warn(ld,
		          "connection type \"%s\" (GSSAPI encryption) is not supported, as in "
		          "PgBouncer; line skipped",
		          t->s);
		return -1;
	} else {
		line_warn(ld, "unknown connection type \"%.*s\"; line skipped", SHOW, t->s);
		return -1;
	}
	if (ctx->lt.nfields < 2) {
		line_warn(ld, "missing database and user; line skipped");
		return -1;
	}
	if (ctx->lt.nfields < 3) {
		line_warn(ld, "missing user; line skipped");
		return -1;
	}
	if (add_name_field(ld, ctx, &r->db, 1, true) < 0 ||
	    add_name_field(ld, ctx, &r->user, 2, false) < 0)
		return -1;
	f = 3;
	if (r->type != CT_LOCAL) {
		f = parse_address(ld, ctx, r, f);
		if (f < 0)
			return -1;
	}
	if (!parse_method(ld, ctx, r, f))
		return -1;
	if (parse_options(ld, ctx, r, f + 1) < 0)
		return -1;
	if (r->pub.method == PF_HBA_PEER && r->type != CT_LOCAL)
		line_warn(ld, "peer works only on local (unix socket) connections: a TCP client "
		              "this line matches will be refused");
	if (r->pub.method == PF_HBA_CERT && r->type != CT_HOSTSSL)
		line_warn(ld, "cert needs TLS: a client without TLS this line matches will be "
		              "refused");
	nameset_finish(&r->db);
	nameset_finish(&r->user);
	return 0;
}

static void hba_parse_line(load_t *ld, void *vctx, const char *p, const char *end)
{
	hba_ctx_t *ctx = vctx;
	rule_t r;

	if (!prepare_line(ld, &ctx->lt, p, end, &ctx->hba->skipped))
		return;
	memset(&r, 0, sizeof(r));
	r.pub.file = ctx->hba->file;
	r.pub.line = ld->line;
	if (parse_rule(ld, ctx, &r) < 0) {
		rule_free(&r);
		if (!ld->fatal)
			ctx->hba->skipped++;
		return;
	}
	if (!load_grow(ld, (void **)&ctx->hba->rules, &ctx->hba->cap, ctx->hba->n,
	               sizeof(rule_t))) {
		rule_free(&r);
		return;
	}
	ctx->hba->rules[ctx->hba->n++] = r;
}

static int hba_parse_buf(load_t *ld, const char *text, size_t len, const pf_ident_t *ident,
                         pf_hba_t **out)
{
	hba_ctx_t ctx;
	char *dir;

	memset(&ctx, 0, sizeof(ctx));
	ctx.ident = ident;
	ctx.hba = calloc(1, sizeof(*ctx.hba));
	dir = dir_of(ld->name);
	if (ctx.hba)
		ctx.hba->file = strdup(ld->name);
	if (!ctx.hba || !ctx.hba->file || !dir) {
		free(dir);
		pf_hba_free(ctx.hba);
		load_fail(ld, -ENOMEM, "out of memory");
		return ld->fatal;
	}
	ctx.dir = dir;
	for_each_line(ld, text, len, hba_parse_line, &ctx);
	free_line_toks(&ctx.lt);
	free(dir);
	if (ld->fatal) {
		pf_hba_free(ctx.hba);
		return ld->fatal;
	}
	*out = ctx.hba;
	return 0;
}

int pf_hba_parse(const char *text, size_t len, const char *name, const pf_ident_t *ident,
                 pf_hba_diag_fn warn, void *arg, pf_hba_t **out, char *err, size_t errlen)
{
	struct stat st;
	load_t ld;

	load_init(&ld, name, warn, arg, err, errlen);
	if (len > PF_HBA_MAX_FILE_BYTES) {
		load_fail(&ld, -EFBIG, "file is larger than %u bytes", PF_HBA_MAX_FILE_BYTES);
		return ld.fatal;
	}
	ld.budget -= len;
	/* When name is a real file, an @ file naming it is a loop too. */
	if (stat(name, &st) == 0) {
		ld.open[0].dev = st.st_dev;
		ld.open[0].ino = st.st_ino;
		ld.nopen = 1;
	}
	return hba_parse_buf(&ld, text, len, ident, out);
}

int pf_hba_load(const char *path, const pf_ident_t *ident, pf_hba_diag_fn warn, void *arg,
                pf_hba_t **out, char *err, size_t errlen)
{
	load_t ld;
	char *buf;
	size_t len;
	int rc;

	load_init(&ld, path, warn, arg, err, errlen);
	rc = load_main(&ld, &buf, &len);
	if (rc < 0)
		return rc;
	rc = hba_parse_buf(&ld, buf, len, ident, out);
	free(buf);
	return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* Matching                                                                                   */
/* ---------------------------------------------------------------------------------------- */

static bool names_match(const nameset_t *s, const char *name, const char *other)
{
	if (s->flags & NAME_ALL)
		return true;
	if ((s->flags & NAME_SAMEUSER) && other && strcmp(name, other) == 0)
		return true;
	return nameset_has(s, name);
}

static bool addr_match(const rule_t *r, const struct sockaddr *sa)
{
	const uint8_t *a;
	size_t n;

	if (r->addr_all)
		return true;
	if (sa->sa_family != r->family)
		return false; /* IPv4 rules never match IPv6 clients, mapped or not */
	if (sa->sa_family == AF_INET) {
		a = (const uint8_t *)&((const struct sockaddr_in *)(const void *)sa)->sin_addr;
		n = 4;
	} else {
		a = ((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr.s6_addr;
		n = 16;
	}
	for (size_t i = 0; i < n; i++) {
		if ((a[i] & r->mask[i]) != r->addr[i])
			return false;
	}
	return true;
}

const pf_hba_rule_t *pf_hba_match(const pf_hba_t *hba, const pf_hba_conn_t *c)
{
	bool physical;
	bool ip_ok;

	if (!hba || !c || !c->user)
		return NULL;
	physical = c->replication == PF_HBA_REPLICATION_PHYSICAL;
	if (!physical && !c->database)
		return NULL;
	ip_ok = !c->is_unix && c->addr &&
	        (c->addr->sa_family == AF_INET || c->addr->sa_family == AF_INET6);
	for (size_t i = 0; i < hba->n; i++) {
		const rule_t *r = &hba->rules[i];

		if (c->is_unix) {
			if (r->type != CT_LOCAL)
				continue;
		} else {
			if (r->type == CT_LOCAL || !ip_ok)
				continue;
			if (r->type == CT_HOSTSSL && !c->is_tls)
				continue;
			if (r->type == CT_HOSTNOSSL && c->is_tls)
				continue;
			if (!addr_match(r, c->addr))
				continue;
		}
		/*
		 * A physical replication connection matches only the replication keyword (which
		 * matches nothing else), as in Postgres and PgBouncer 1.23+.
		 */
		if (physical) {
			if (!(r->db.flags & NAME_REPLICATION))
				continue;
		} else if (!names_match(&r->db, c->database, c->user)) {
			continue;
		}
		if (!names_match(&r->user, c->user, NULL))
			continue;
		return &r->pub;
	}
	return NULL;
}
