/*
 * auth: authentication material. This part parses the auth_file into a sorted, immutable table
 * of users and their secrets (plain, md5, SCRAM-SHA-256 decoded into its parts).
 *
 * Invariants: entries are sorted by name with no duplicates (the last line of a name wins);
 * every secret byte is zeroed with OPENSSL_cleanse before its memory is freed, including the
 * copies made while parsing; error messages name the file and line, never a secret.
 *
 * Callers: main/config reload (pf_auth_file_load), client login (pf_auth_file_find).
 */
#include "pfbuild.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "pgfunnel/auth.h"

#define SCRAM_PREFIX     "SCRAM-SHA-256$"
#define MAX_AUTH_FILE_SZ (256u * 1024 * 1024)

struct pf_auth_file {
	pf_auth_entry_t *entries;
	size_t n;
	size_t n_scram; /* entries with a SCRAM secret */
};

PF_PRINTF(3, 4) static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (!err || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

static void free_secret_str(char *s)
{
	if (s) {
		OPENSSL_cleanse(s, strlen(s));
		free(s);
	}
}

static void free_entry(pf_auth_entry_t *e)
{
	free(e->name);
	free_secret_str(e->secret);
	OPENSSL_cleanse(e, sizeof(*e));
}

void pf_auth_file_free(pf_auth_file_t *af)
{
	if (!af)
		return;
	for (size_t i = 0; i < af->n; i++)
		free_entry(&af->entries[i]);
	free(af->entries);
	free(af);
}

size_t pf_auth_file_count(const pf_auth_file_t *af)
{
	return af->n;
}

size_t pf_auth_file_count_scram(const pf_auth_file_t *af)
{
	return af->n_scram;
}

const pf_auth_entry_t *pf_auth_file_entry(const pf_auth_file_t *af, size_t i)
{
	return i < af->n ? &af->entries[i] : NULL;
}

/* Postgres' rule for an md5 secret: "md5" followed by exactly 32 hex digits. */
static bool is_md5_secret(char *s)
{
	if (strncmp(s, "md5", 3) != 0 || strlen(s) != 35)
		return false;
	for (int i = 3; i < 35; i++) {
		if (!isxdigit((unsigned char)s[i]))
			return false;
	}
	for (int i = 3; i < 35; i++)
		s[i] = (char)tolower((unsigned char)s[i]);
	return true;
}

/*
 * Reads one double-quoted field starting at *pp (which points at the opening quote) into a new
 * string, "" standing for one quote. The field must end before eol. Returns NULL on error.
 */
static char *read_quoted(const char **pp, const char *eol)
{
	const char *p = *pp + 1;
	char *out = malloc((size_t)(eol - p) + 1), *d = out;

	if (!out)
		return NULL;
	for (;;) {
		if (p >= eol) {
			OPENSSL_cleanse(out, (size_t)(d - out));
			free(out);
			return NULL;
		}
		if (*p == '"') {
			if (p + 1 < eol && p[1] == '"') {
				*d++ = '"';
				p += 2;
				continue;
			}
			p++;
			break;
		}
		if (*p == '\0') { /* NUL inside a field: refuse rather than truncate */
			OPENSSL_cleanse(out, (size_t)(d - out));
			free(out);
			return NULL;
		}
		*d++ = *p++;
	}
	*d = '\0';
	*pp = p;
	return out;
}

static int entry_cmp_idx(const void *a, const void *b, void *arg)
{
	const pf_auth_entry_t *ents = arg;
	size_t ia = *(const size_t *)a, ib = *(const size_t *)b;
	int r = strcmp(ents[ia].name, ents[ib].name);

	if (r)
		return r;
	return ia < ib ? -1 : ia > ib;
}

/* Sorts af->entries by name; of equal names only the last one (in file order) is kept. */
static int sort_entries(pf_auth_file_t *af)
{
	size_t *idx, out = 0;
	pf_auth_entry_t *sorted;

	if (af->n < 2)
		return 0;
	idx = malloc(af->n * sizeof(*idx));
	sorted = malloc(af->n * sizeof(*sorted));
	if (!idx || !sorted) {
		free(idx);
		free(sorted);
		return -ENOMEM;
	}
	for (size_t i = 0; i < af->n; i++)
		idx[i] = i;
	qsort_r(idx, af->n, sizeof(*idx), entry_cmp_idx, af->entries);
	for (size_t i = 0; i < af->n; i++) {
		pf_auth_entry_t *e = &af->entries[idx[i]];

		if (i + 1 < af->n && strcmp(e->name, af->entries[idx[i + 1]].name) == 0) {
			free_entry(e);
			continue;
		}
		sorted[out++] = *e;
	}
	/* The moved entries' bytes (secrets, keys) stay in the old array: wipe it. */
	OPENSSL_cleanse(af->entries, af->n * sizeof(*af->entries));
	free(af->entries);
	free(idx);
	af->entries = sorted;
	af->n = out;
	return 0;
}

int pf_auth_file_parse(const char *text, size_t len, const char *name, pf_auth_file_t **out,
                       char *err, size_t errlen)
{
	pf_auth_file_t *af = calloc(1, sizeof(*af));
	const char *p = text, *end = text + len;
	size_t cap = 0;
	int line = 0, rc = 0;

	if (!af) {
		set_err(err, errlen, "%s: out of memory", name);
		return -ENOMEM;
	}
	while (p < end) {
		const char *eol = memchr(p, '\n', (size_t)(end - p));
		pf_auth_entry_t e;

		if (!eol)
			eol = end;
		line++;
		memset(&e, 0, sizeof(e));
		while (p < eol && isspace((unsigned char)*p))
			p++;
		if (p == eol || *p == ';' || *p == '#')
			goto next;
		if (*p != '"') {
			set_err(err, errlen, "%s:%d: expected a double-quoted user name", name,
			        line);
			rc = -EINVAL;
			goto fail;
		}
		if (!(e.name = read_quoted(&p, eol))) {
			set_err(err, errlen, "%s:%d: unterminated user name", name, line);
			rc = -EINVAL;
			goto fail;
		}
		if (!e.name[0]) {
			set_err(err, errlen, "%s:%d: empty user name", name, line);
			rc = -EINVAL;
			goto fail_entry;
		}
		while (p < eol && (*p == ' ' || *p == '\t'))
			p++;
		if (p == eol || *p != '"') {
			set_err(err, errlen, "%s:%d: user \"%s\": expected a double-quoted secret",
			        name, line, e.name);
			rc = -EINVAL;
			goto fail_entry;
		}
		if (!(e.secret = read_quoted(&p, eol))) {
			set_err(err, errlen, "%s:%d: user \"%s\": unterminated secret", name, line,
			        e.name);
			rc = -EINVAL;
			goto fail_entry;
		}
		/* The rest of the line is ignored, as in PgBouncer. */
		if (strncmp(e.secret, SCRAM_PREFIX, strlen(SCRAM_PREFIX)) == 0) {
			e.kind = PF_AUTH_SECRET_SCRAM;
			if (pf_scram_secret_parse(e.secret, &e.scram) < 0) {
				set_err(err, errlen,
				        "%s:%d: user \"%s\": malformed SCRAM-SHA-256 secret "
				        "(expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:"
				        "<ServerKey> in base64)",
				        name, line, e.name);
				rc = -EINVAL;
				goto fail_entry;
			}
		} else if (is_md5_secret(e.secret)) {
			e.kind = PF_AUTH_SECRET_MD5;
		} else {
			e.kind = PF_AUTH_SECRET_PLAIN;
		}
		if (af->n == cap) {
			size_t ncap = cap ? cap * 2 : 64;
			pf_auth_entry_t *ne = calloc(ncap, sizeof(*ne));

			if (!ne) {
				set_err(err, errlen, "%s: out of memory", name);
				rc = -ENOMEM;
				goto fail_entry;
			}
			if (af->n) {
				memcpy(ne, af->entries, af->n * sizeof(*ne));
				OPENSSL_cleanse(af->entries, af->n * sizeof(*ne));
			}
			free(af->entries);
			af->entries = ne;
			cap = ncap;
		}
		af->entries[af->n++] = e;
	next:
		p = eol < end ? eol + 1 : end;
		continue;
	fail_entry:
		free_entry(&e);
		goto fail;
	}
	if (sort_entries(af) < 0) {
		set_err(err, errlen, "%s: out of memory", name);
		rc = -ENOMEM;
		goto fail;
	}
	for (size_t i = 0; i < af->n; i++)
		af->n_scram += af->entries[i].kind == PF_AUTH_SECRET_SCRAM;
	*out = af;
	return 0;
fail:
	pf_auth_file_free(af);
	return rc;
}

int pf_auth_file_load(const char *path, pf_auth_file_t **out, char *err, size_t errlen)
{
	struct stat st;
	char *buf = NULL;
	size_t len = 0;
	int fd, rc;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		rc = -errno;
		set_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
		return rc;
	}
	if (fstat(fd, &st) < 0)
		rc = -errno;
	else if (S_ISDIR(st.st_mode))
		rc = -EISDIR;
	else if (st.st_size > MAX_AUTH_FILE_SZ)
		rc = -EFBIG;
	else
		rc = 0;
	if (rc < 0) {
		set_err(err, errlen, "%s: cannot open: %s", path, strerror(-rc));
		close(fd);
		return rc;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		close(fd);
		set_err(err, errlen, "%s: out of memory", path);
		return -ENOMEM;
	}
	while (len < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + len, (size_t)st.st_size - len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			rc = -errno;
			set_err(err, errlen, "%s: cannot read: %s", path, strerror(errno));
			OPENSSL_cleanse(buf, len);
			free(buf);
			close(fd);
			return rc;
		}
		if (n == 0)
			break; /* file shrank while reading */
		len += (size_t)n;
	}
	close(fd);
	rc = pf_auth_file_parse(buf, len, path, out, err, errlen);
	OPENSSL_cleanse(buf, len);
	free(buf);
	return rc;
}

static int find_cmp(const void *key, const void *elem)
{
	return strcmp(key, ((const pf_auth_entry_t *)elem)->name);
}

const pf_auth_entry_t *pf_auth_file_find(const pf_auth_file_t *af, const char *user)
{
	if (!af || af->n == 0)
		return NULL;
	return bsearch(user, af->entries, af->n, sizeof(*af->entries), find_cmp);
}
