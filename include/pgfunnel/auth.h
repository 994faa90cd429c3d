/*
 * auth: client and server authentication material. For now: the auth_file (PgBouncer's
 * userlist.txt format) parsed into an immutable, searchable table of secrets.
 *
 * No I/O except reading the auth_file in pf_auth_file_load(). Secrets never appear in error
 * messages and are zeroed before their memory is freed.
 */
#ifndef PGFUNNEL_AUTH_H
#define PGFUNNEL_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "pgfunnel/scram.h"
#include "pgfunnel/util.h"

/* What the second field of an auth_file line holds. */
typedef enum {
	PF_AUTH_SECRET_PLAIN, /* a clear-text password */
	PF_AUTH_SECRET_MD5,   /* "md5" + 32 lowercase hex digits of md5(password || user) */
	PF_AUTH_SECRET_SCRAM, /* SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey> */
} pf_auth_secret_kind_t;

/* One user of the auth_file. Every pointer is owned by the pf_auth_file_t. */
typedef struct {
	char *name;
	pf_auth_secret_kind_t kind;
	/*
	 * The secret as written in the file (NUL-terminated): the password for PLAIN, "md5" + hex
	 * (hex lowercased) for MD5, the whole SCRAM-SHA-256$... text for SCRAM.
	 */
	char *secret;
	/* SCRAM only: the decoded secret (pf_scram_secret_parse). */
	pf_scram_secret_t scram;
} pf_auth_entry_t;

/* A parsed auth_file: entries sorted by name, at most one per name. Opaque. */
typedef struct pf_auth_file pf_auth_file_t;

/*
 * Parses len bytes of auth_file text (need not be NUL-terminated); name is used in messages.
 * Format (PgBouncer's "auth_file format"): one user per line, '"user" "secret"', both fields in
 * double quotes with "" standing for one quote, anything after the second field ignored; blank
 * lines and lines starting with ';' or '#' are skipped. When a user appears twice, the last line
 * wins (as PgBouncer's reload does). Returns 0 and a new table in *out (free with
 * pf_auth_file_free), or -EINVAL with a one-line message "NAME:LINE: ..." in err (never
 * containing a secret), or -ENOMEM.
 */
PF_MUSTCHECK int pf_auth_file_parse(const char *text, size_t len, const char *name,
                                    pf_auth_file_t **out, char *err, size_t errlen);

/*
 * Reads and parses the file at path. Returns as pf_auth_file_parse, or the negative errno of
 * open/read with "PATH: cannot open: <strerror>" in err.
 */
PF_MUSTCHECK int pf_auth_file_load(const char *path, pf_auth_file_t **out, char *err,
                                   size_t errlen);

/* The entry for user (exact, case-sensitive), or NULL. Points into af; O(log n). */
const pf_auth_entry_t *pf_auth_file_find(const pf_auth_file_t *af, const char *user);

/* Number of users in af. */
size_t pf_auth_file_count(const pf_auth_file_t *af);

/* How many of them have a SCRAM secret. */
size_t pf_auth_file_count_scram(const pf_auth_file_t *af);

/* The i-th entry (0 <= i < pf_auth_file_count(af)), in name order. Points into af. */
const pf_auth_entry_t *pf_auth_file_entry(const pf_auth_file_t *af, size_t i);

/* Zeroes every secret and frees af. NULL is allowed. */
void pf_auth_file_free(pf_auth_file_t *af);

#endif
