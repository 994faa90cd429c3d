/*
 * hba: the auth_hba_file (pg_hba.conf syntax) and the auth_ident_file (pg_ident.conf syntax),
 * parsed into immutable tables, and the two questions the login path asks of them: which rule
 * decides this connection (pf_hba_match) and may this system user log in as that database user
 * (pf_ident_has_mapping).
 *
 * Pure: no sockets, no logging, no globals. Parsing reads the file and the @ files it names;
 * problems in single lines go to a diag callback and the line is skipped, as PgBouncer does
 * (since 1.8 it keeps parsing after a bad line instead of rejecting the whole file). Only what
 * makes the whole file unusable (cannot read it, over the size limits, out of memory) fails the
 * load. Matching allocates nothing and is safe from any thread on a shared table.
 *
 * What is accepted follows PgBouncer 1.25 (its doc/config.md, "HBA file format" and "Ident map
 * file format", and src/hba.c), because pgfunnel is a drop-in replacement: a file PgBouncer
 * reads must decide every connection the same way here. The Postgres documentation fills in
 * what PgBouncer leaves to it (tokens, quoting, masks). In detail:
 *
 *  - Records: local, host, hostssl, hostnossl. hostgssenc and hostnogssenc are not accepted by
 *    PgBouncer: the line is skipped with a warning, so it matches nothing (note that for
 *    Postgres hostnogssenc would match every connection pgfunnel gets, having no GSSAPI).
 *  - Tokens: fields are separated by blanks; '#' starts a comment outside quotes; "..." quotes
 *    a token (blanks, commas and '#' lose their meaning, "" inside quotes is one '"'); a quoted
 *    keyword is a plain name ("all" is the database called all). Lists are comma-separated, and
 *    blanks around the commas are allowed (PgBouncer's own test file relies on "a,b , c"; to
 *    Postgres that would be three fields). Unterminated quotes, empty list elements and a
 *    trailing comma make the line bad.
 *  - Database field: all, sameuser, replication (physical replication connections only, and
 *    those match no other keyword or name; logical replication connections match like normal
 *    ones), names, @file. samerole and samegroup: line skipped (PgBouncer does not support
 *    them). A name starting with '+' is a bad line (PgBouncer rejects it in both fields).
 *  - User field: all, names, @file. +group: line skipped (PgBouncer does not know group
 *    membership). sameuser, samerole, samegroup and replication are plain names here, as in
 *    Postgres (PgBouncer 1.25 parses the user field with the database keywords by mistake).
 *  - Regular expressions in the database and user fields (Postgres 16, "/regex"): PgBouncer
 *    does not support them and compares the text as a plain name; so do we, with a warning.
 *  - @file: the file's names are read as if they stood in the list, separated by blanks,
 *    commas or newlines, '#' comments, quoted names and keywords allowed, nested @ allowed. A
 *    relative name is taken from the directory of the file that names it. A missing or bad
 *    @file, nesting deeper than PF_HBA_MAX_DEPTH or an @file that includes itself (directly or
 *    not) make the line bad. (PgBouncer reads only the first name of each line of an @file and
 *    recurses without limit on a loop; both are its bugs, not copied.)
 *  - Address: all, IPv4 or IPv6 in numeric form with /prefix (decimal, at most 32 or 128) or
 *    with the mask in the next column. samehost, samenet, host names and .domain suffixes: line
 *    skipped (PgBouncer does not resolve). An address with bits set outside its mask: line
 *    skipped with a warning (PgBouncer keeps such a rule, but compares the client's masked
 *    address with the unmasked one, so it can never match: skipping decides the same). An IPv4
 *    rule matches only IPv4 clients and an IPv6 rule only IPv6 clients, even for an
 *    IPv4-mapped IPv6 address (::ffff:a.b.c.d), as both Postgres and PgBouncer do.
 *  - Methods: trust, reject, md5, password, scram-sha-256, peer, cert, and ldap (PgBouncer 1.25
 *    built with LDAP; pgfunnel has no LDAP yet, see pf_hba_method_t). ident, gss, sspi, pam,
 *    bsd, radius, oauth and anything else: line skipped (PgBouncer 1.25 rejects them; pam in the
 *    HBA file came in 1.24.0 and was taken out again in 1.24.1).
 *  - Options after the method, name=value each: map= (a name in the ident file; when no ident
 *    file is given or the map is not in it the line is skipped, as in PgBouncer), clientcert=
 *    verify-ca|verify-full (hostssl lines only; cert allows only verify-full), clientname=CN|DN
 *    (cert method or clientcert only). An ldap line keeps all its options as written. Any
 *    other option name makes the line bad (PgBouncer rejects every option but map=). Every
 *    option is also kept as text in the rule.
 *  - include, include_if_exists, include_dir (Postgres 16): not supported by PgBouncer; the line
 *    is skipped with a warning.
 *  - A line ending with a backslash: Postgres 16 joins it with the next line, PgBouncer does not
 *    (the backslash makes the line bad). We skip it with a warning saying so; the next line is
 *    read on its own. A comment ending with a backslash is just a comment.
 *  - Lines of any length (the limits below are on whole files). Keywords are case-sensitive.
 *    CR before LF is a blank. A NUL byte makes the line bad.
 */
#ifndef PGFUNNEL_HBA_H
#define PGFUNNEL_HBA_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "pgfunnel/util.h"

/* The largest HBA or ident file, and the most bytes one load reads over all its @ files. */
#define PF_HBA_MAX_FILE_BYTES (16u * 1024 * 1024)
/* How deep @ files may nest (an @ in the HBA file is depth 1). */
#define PF_HBA_MAX_DEPTH 10
/* The most database and user names one load keeps, over all rules. */
#define PF_HBA_MAX_NAMES 1000000u

/*
 * Warning callback: file and line locate the rule (the HBA or ident file, never an @ file,
 * which the message names), msg is one line without a newline. Same signature as
 * pf_config_diag_fn, so the config loader's callback can be passed. Strings are valid only
 * during the call.
 */
typedef void (*pf_hba_diag_fn)(void *arg, const char *file, int line, const char *msg);

/* The authentication method of a rule. */
typedef enum {
	PF_HBA_TRUST,
	PF_HBA_REJECT,
	PF_HBA_MD5, /* SCRAM when the user's secret is a SCRAM secret, as in Postgres */
	PF_HBA_PASSWORD,
	PF_HBA_SCRAM_SHA_256,
	PF_HBA_PEER, /* unix sockets; the system user must equal the user or pass the rule's map */
	PF_HBA_CERT, /* TLS client certificate; its CN (or DN) plays the system user */
	/*
	 * Parsed so that a file written for PgBouncer with LDAP keeps its meaning, but pgfunnel
	 * cannot check LDAP passwords: the login path must refuse a client that matches such a rule
	 * (fail closed) rather than go on to later rules.
	 */
	PF_HBA_LDAP,
} pf_hba_method_t;

typedef enum {
	PF_HBA_CLIENTCERT_NONE,
	PF_HBA_CLIENTCERT_VERIFY_CA,   /* a certificate the CA file verifies */
	PF_HBA_CLIENTCERT_VERIFY_FULL, /* and its CN (or DN) is the user, or passes the map */
} pf_hba_clientcert_t;

typedef enum {
	PF_HBA_CLIENTNAME_CN, /* the default */
	PF_HBA_CLIENTNAME_DN, /* the whole subject, RFC 2253 form */
} pf_hba_clientname_t;

typedef enum {
	PF_HBA_REPLICATION_NONE,
	PF_HBA_REPLICATION_LOGICAL,  /* startup parameter replication=database */
	PF_HBA_REPLICATION_PHYSICAL, /* replication=true/on/yes/1 */
} pf_hba_replication_t;

/* One option after the method, as written (quotes removed). */
typedef struct {
	const char *name;
	const char *value;
} pf_hba_option_t;

/*
 * A rule, as pf_hba_match() returns it. Every pointer is owned by the pf_hba_t and lives as long
 * as it does.
 */
typedef struct {
	pf_hba_method_t method;
	const char *map;                /* map=NAME, or NULL */
	pf_hba_clientcert_t clientcert; /* PF_HBA_CLIENTCERT_VERIFY_FULL for cert rules */
	pf_hba_clientname_t clientname;
	const char *file; /* the HBA file's name as given to the load, for logs */
	int line;         /* its line number */
	size_t n_options;
	const pf_hba_option_t *options; /* every option in order, map/clientcert/... included */
} pf_hba_rule_t;

/*
 * The connection to decide. addr is read only for TCP (is_unix false) and must then be an
 * AF_INET or AF_INET6 address (anything else matches no address rule, not even "all"). For a
 * physical replication connection, database is not looked at.
 */
typedef struct {
	bool is_unix;
	bool is_tls;
	pf_hba_replication_t replication;
	const struct sockaddr *addr;
	const char *database;
	const char *user;
} pf_hba_conn_t;

typedef struct pf_hba pf_hba_t;
typedef struct pf_ident pf_ident_t;

/*
 * Loads the ident map file at path: lines "MAPNAME SYSTEM-USER DATABASE-USER", each a single
 * token (quotes allowed). DATABASE-USER "all" (unquoted) allows every database user. A
 * SYSTEM-USER starting with '/' is a regular expression matched anywhere in the system user
 * name (anchor it with ^ and $); its first parenthesized group replaces the first "\1" in
 * DATABASE-USER, even a quoted one, and the result is compared literally, as in Postgres.
 * Regular expressions are an extension over PgBouncer 1.25, which compares "/..." as a plain
 * name (no system user starts with '/', so such lines matched nothing there).
 *
 * The expressions are POSIX extended ones (regcomp REG_EXTENDED, the process's locale), not
 * Postgres's "advanced" flavour. Lines using what the two read differently are skipped with a
 * warning: \d \D \m \M \y \Y \A \Z and other letter escapes except the GNU \w \W \s \S \b \B,
 * a backslash inside [...] (literal in POSIX, an escape in Postgres), lazy quantifiers (*? +?
 * ?? }?, greedy in POSIX), and the ***= / ***: prefixes; (?...) groups do not compile. Matching
 * is on bytes in the C locale, not on characters.
 *
 * Not supported, line skipped with a warning: include directives (PgBouncer has none),
 * +group and /regex in DATABASE-USER, a list (a,b) in any field, a wrong number of fields. A
 * "\1" with a regular expression that has no group is kept: as in Postgres, when such a line's
 * expression matches, the check stops and refuses.
 *
 * Returns 0 and the table in *out (free with pf_ident_free), or a negative errno with a
 * one-line "PATH: ..." message in err: -ENOENT/-EACCES/-EISDIR/... (cannot read; -ENODEV: not
 * a regular file), -EFBIG (over PF_HBA_MAX_FILE_BYTES), -ENOMEM. warn may be NULL.
 */
PF_MUSTCHECK int pf_ident_load(const char *path, pf_hba_diag_fn warn, void *arg, pf_ident_t **out,
                               char *err, size_t errlen);

/* Same as pf_ident_load for len bytes of text named name (used in messages). */
PF_MUSTCHECK int pf_ident_parse(const char *text, size_t len, const char *name, pf_hba_diag_fn warn,
                                void *arg, pf_ident_t **out, char *err, size_t errlen);

/* Whether map_name has at least one line in ident (false for a NULL ident). */
bool pf_ident_has_map(const pf_ident_t *ident, const char *map_name);

/*
 * Whether the map map_name lets system_user log in as db_user (false for a NULL ident or an
 * unknown map). Lines are tried in file order; the first that allows wins. Case-sensitive.
 */
bool pf_ident_has_mapping(const pf_ident_t *ident, const char *map_name, const char *system_user,
                          const char *db_user);

/* Number of lines kept. */
size_t pf_ident_count(const pf_ident_t *ident);

void pf_ident_free(pf_ident_t *ident);

/*
 * Loads the HBA file at path (the rules above). ident (may be NULL) is the ident map file that
 * map= options must name, loaded first; the two tables should then be swapped in together.
 * Returns 0 and the table in *out (free with pf_hba_free), or a negative errno with a one-line
 * message in err ("PATH: ..." or "PATH:LINE: ..."): -ENOENT/-EACCES/-EISDIR/... (cannot read
 * the file; -ENODEV: not a regular file, which an @ file must not be either: FIFOs and devices
 * could block or feed the load without end),
 * -EFBIG (the file, or all it reads with its @ files, over PF_HBA_MAX_FILE_BYTES; too many
 * names), -ENOMEM. warn (may be NULL) gets one message per skipped line and a few warnings
 * about lines that are kept (e.g. peer on a host line, which can only fail).
 *
 * When PgBouncer cannot open the file it installs an empty rule set, which refuses everyone;
 * here the caller chooses (refusing to start, or keeping the previous table on reload).
 */
PF_MUSTCHECK int pf_hba_load(const char *path, const pf_ident_t *ident, pf_hba_diag_fn warn,
                             void *arg, pf_hba_t **out, char *err, size_t errlen);

/*
 * Same as pf_hba_load for len bytes of text (need not be NUL-terminated) as if read from the
 * file called name: messages use name, and relative @ files are taken from its directory.
 */
PF_MUSTCHECK int pf_hba_parse(const char *text, size_t len, const char *name,
                              const pf_ident_t *ident, pf_hba_diag_fn warn, void *arg,
                              pf_hba_t **out, char *err, size_t errlen);

/*
 * The first rule that matches conn, or NULL when none does. NULL must refuse the connection,
 * as Postgres and PgBouncer do (Postgres: SQLSTATE 28000, "no pg_hba.conf entry for host ...";
 * PgBouncer: 08P01 "no authentication method is found"). A PF_HBA_REJECT rule refuses too.
 * Points into hba. hba NULL gives NULL.
 */
const pf_hba_rule_t *pf_hba_match(const pf_hba_t *hba, const pf_hba_conn_t *conn);

/* The method's name as written in the file ("scram-sha-256"). */
const char *pf_hba_method_name(pf_hba_method_t method);

/* Number of rules kept, and of lines skipped because of an error. */
size_t pf_hba_count_rules(const pf_hba_t *hba);
size_t pf_hba_count_skipped(const pf_hba_t *hba);

void pf_hba_free(pf_hba_t *hba);

#endif
