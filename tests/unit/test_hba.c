/*
 * Unit tests for hba: the auth_hba_file and auth_ident_file parsers and their matching.
 *
 * Most cases are a table of (rules text, connection) -> (method, line) or no match; each table
 * row parses its own rules, so a row checks one decision. Lines the parser must skip are
 * tested by what happens next: the connection falls through to a later rule (or to no match),
 * and the skip count and warning name the line. @ files and the limits use files written into
 * a mkdtemp directory.
 */
#include "pfbuild.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <setjmp.h>
#include <cmocka.h>

#include "pgfunnel/hba.h"

#define NOMATCH (-1)

static char tmpdir[64];

/* ---- helpers ---------------------------------------------------------------------------- */

typedef struct {
	int count;
	char all[16384]; /* "LINE: MSG\n" per warning */
} warns_t;

static void collect(void *arg, const char *file, int line, const char *msg)
{
	warns_t *w = arg;
	size_t used = strlen(w->all);

	(void)file;
	w->count++;
	snprintf(w->all + used, sizeof(w->all) - used, "%d: %s\n", line, msg);
}

/* Whether a warning for line contains text. */
static bool warned(const warns_t *w, int line, const char *text)
{
	char head[16];
	const char *p = w->all;

	snprintf(head, sizeof(head), "%d: ", line);
	while (p && *p) {
		const char *eol = strchr(p, '\n');

		if (strncmp(p, head, strlen(head)) == 0) {
			const char *hit = strstr(p, text);

			if (hit && hit < eol)
				return true;
		}
		p = eol ? eol + 1 : NULL;
	}
	return false;
}

static char *path_in(const char *rel)
{
	static char buf[4][512];
	static int i;

	i = (i + 1) % 4;
	snprintf(buf[i], sizeof(buf[i]), "%s/%s", tmpdir, rel);
	return buf[i];
}

static void write_bytes(const char *rel, const char *data, size_t len)
{
	FILE *f = fopen(path_in(rel), "w");

	assert_non_null(f);
	assert_int_equal(fwrite(data, 1, len, f), len);
	assert_int_equal(fclose(f), 0);
}

static void write_file(const char *rel, const char *text)
{
	write_bytes(rel, text, strlen(text));
}

static pf_hba_t *parse_hba(const char *text, const pf_ident_t *ident, warns_t *w)
{
	pf_hba_t *hba = NULL;
	char err[512] = "";
	int rc = pf_hba_parse(text, strlen(text), path_in("pg_hba.conf"), ident, collect, w, &hba,
	                      err, sizeof(err));

	if (rc != 0)
		fail_msg("unexpected error %d: %s", rc, err);
	assert_non_null(hba);
	return hba;
}

static pf_ident_t *parse_ident(const char *text, warns_t *w)
{
	pf_ident_t *id = NULL;
	char err[512] = "";
	int rc = pf_ident_parse(text, strlen(text), "pg_ident.conf", collect, w, &id, err,
	                        sizeof(err));

	if (rc != 0)
		fail_msg("unexpected error %d: %s", rc, err);
	assert_non_null(id);
	return id;
}

/*
 * Decides a connection described as "unix", "tcp ADDR" or "tls ADDR", optionally followed by
 * "physical" or "logical" (replication).
 */
static const pf_hba_rule_t *decide(const pf_hba_t *hba, const char *conn, const char *db,
                                   const char *user)
{
	struct sockaddr_storage ss;
	pf_hba_conn_t c;
	char buf[128], *save = NULL, *tok;

	memset(&c, 0, sizeof(c));
	memset(&ss, 0, sizeof(ss));
	snprintf(buf, sizeof(buf), "%s", conn);
	tok = strtok_r(buf, " ", &save);
	assert_non_null(tok);
	if (strcmp(tok, "unix") == 0) {
		c.is_unix = true;
	} else {
		const char *a = strtok_r(NULL, " ", &save);

		c.is_tls = strcmp(tok, "tls") == 0;
		assert_non_null(a);
		if (strchr(a, ':')) {
			struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;

			s6->sin6_family = AF_INET6;
			assert_int_equal(inet_pton(AF_INET6, a, &s6->sin6_addr), 1);
		} else {
			struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;

			s4->sin_family = AF_INET;
			assert_int_equal(inet_pton(AF_INET, a, &s4->sin_addr), 1);
		}
		c.addr = (struct sockaddr *)&ss;
	}
	while ((tok = strtok_r(NULL, " ", &save))) {
		if (strcmp(tok, "physical") == 0)
			c.replication = PF_HBA_REPLICATION_PHYSICAL;
		else if (strcmp(tok, "logical") == 0)
			c.replication = PF_HBA_REPLICATION_LOGICAL;
		else
			fail_msg("bad connection spec \"%s\"", conn);
	}
	c.database = db;
	c.user = user;
	return pf_hba_match(hba, &c);
}

typedef struct {
	const char *rules;
	const char *conn;
	const char *db, *user;
	int want; /* a pf_hba_method_t or NOMATCH */
	int line; /* the matching rule's line */
} hcase_t;

static void run_cases(const char *what, const hcase_t *cases, size_t n, const pf_ident_t *ident)
{
	int failures = 0;

	for (size_t i = 0; i < n; i++) {
		const hcase_t *k = &cases[i];
		warns_t w = {0};
		pf_hba_t *hba = parse_hba(k->rules, ident, &w);
		const pf_hba_rule_t *r = decide(hba, k->conn, k->db, k->user);
		int got = r ? (int)r->method : NOMATCH, line = r ? r->line : 0;

		if (got != k->want || (r && line != k->line)) {
			print_message(
			        "%s case %zu: rules \"%s\" conn \"%s\" db \"%s\" user \"%s\": "
			        "want %s line %d, got %s line %d\n",
			        what, i, k->rules, k->conn, k->db ? k->db : "(null)", k->user,
			        k->want == NOMATCH ? "no match" : pf_hba_method_name(k->want),
			        k->line, got == NOMATCH ? "no match" : pf_hba_method_name(got),
			        line);
			failures++;
		}
		pf_hba_free(hba);
	}
	if (failures)
		fail_msg("%s: %d of %zu cases failed", what, failures, n);
}

/* ---- table-driven HBA decisions --------------------------------------------------------- */

static void test_record_types(void **state)
{
	static const hcase_t cases[] = {
	        {"local all all trust", "unix", "db", "u", PF_HBA_TRUST, 1},
	        {"local all all trust", "tcp 127.0.0.1", "db", "u", NOMATCH, 0},
	        {"local all all trust", "tls 127.0.0.1", "db", "u", NOMATCH, 0},
	        {"host all all 0.0.0.0/0 md5", "unix", "db", "u", NOMATCH, 0},
	        {"host all all 0.0.0.0/0 md5", "tcp 1.2.3.4", "db", "u", PF_HBA_MD5, 1},
	        {"host all all 0.0.0.0/0 md5", "tls 1.2.3.4", "db", "u", PF_HBA_MD5, 1},
	        {"hostssl all all 0.0.0.0/0 cert", "tcp 1.2.3.4", "db", "u", NOMATCH, 0},
	        {"hostssl all all 0.0.0.0/0 cert", "tls 1.2.3.4", "db", "u", PF_HBA_CERT, 1},
	        {"hostssl all all all cert", "unix", "db", "u", NOMATCH, 0},
	        {"hostnossl all all 0.0.0.0/0 password", "tls 1.2.3.4", "db", "u", NOMATCH, 0},
	        {"hostnossl all all 0.0.0.0/0 password", "tcp 1.2.3.4", "db", "u", PF_HBA_PASSWORD,
	         1},
	        {"local all all peer", "unix", "db", "u", PF_HBA_PEER, 1},
	        /* hostgssenc/hostnogssenc are skipped: neither matches, the next line does. */
	        {"hostgssenc all all all trust\nhostnogssenc all all all trust\n"
	         "host all all all reject",
	         "tcp 1.2.3.4", "db", "u", PF_HBA_REJECT, 3},
	        {"hostnogssenc all all all trust", "tcp 1.2.3.4", "db", "u", NOMATCH, 0},
	        /* Keywords are case-sensitive; a quoted type is no type. */
	        {"LOCAL all all trust", "unix", "db", "u", NOMATCH, 0},
	        {"\"local\" all all trust", "unix", "db", "u", NOMATCH, 0},
	        {"", "unix", "db", "u", NOMATCH, 0},
	        {"# only a comment\n", "tcp 1.2.3.4", "db", "u", NOMATCH, 0},
	};

	(void)state;
	run_cases("record types", cases, PF_ARRAY_SIZE(cases), NULL);
}

static void test_database_field(void **state)
{
	static const hcase_t cases[] = {
	        {"local db1,db2 all trust", "unix", "db2", "u", PF_HBA_TRUST, 1},
	        {"local db1,db2 all trust", "unix", "db3", "u", NOMATCH, 0},
	        {"local sameuser all trust", "unix", "alice", "alice", PF_HBA_TRUST, 1},
	        {"local sameuser all trust", "unix", "bob", "alice", NOMATCH, 0},
	        {"local sameuser,other all trust", "unix", "other", "alice", PF_HBA_TRUST, 1},
	        /* A quoted keyword is a plain name. */
	        {"local \"all\" all trust", "unix", "x", "u", NOMATCH, 0},
	        {"local \"all\" all trust", "unix", "all", "u", PF_HBA_TRUST, 1},
	        {"local \"sameuser\" all trust", "unix", "alice", "alice", NOMATCH, 0},
	        {"local \"sameuser\" all trust", "unix", "sameuser", "u", PF_HBA_TRUST, 1},
	        /* Case-sensitive keywords and names. */
	        {"local ALL all trust", "unix", "x", "u", NOMATCH, 0},
	        {"local ALL all trust", "unix", "ALL", "u", PF_HBA_TRUST, 1},
	        {"local Db all trust", "unix", "db", "u", NOMATCH, 0},
	        /* replication: physical replication connections only, and nothing else. */
	        {"host replication all all trust", "tcp 1.2.3.4 physical", NULL, "u", PF_HBA_TRUST,
	         1},
	        {"host replication all all trust", "tcp 1.2.3.4", "replication", "u", NOMATCH, 0},
	        {"host replication all all trust", "tcp 1.2.3.4 logical", "replication", "u",
	         NOMATCH, 0},
	        {"host all all all trust", "tcp 1.2.3.4 physical", NULL, "u", NOMATCH, 0},
	        {"host sameuser all all trust", "tcp 1.2.3.4 physical", "u", "u", NOMATCH, 0},
	        {"host db1,replication all all trust", "tcp 1.2.3.4 physical", NULL, "u",
	         PF_HBA_TRUST, 1},
	        {"host db1,replication all all trust", "tcp 1.2.3.4", "db1", "u", PF_HBA_TRUST, 1},
	        {"host db1,replication all all trust", "tcp 1.2.3.4 logical", "db1", "u",
	         PF_HBA_TRUST, 1},
	        {"host all all all md5", "tcp 1.2.3.4 logical", "db1", "u", PF_HBA_MD5, 1},
	        {"host \"replication\" all all trust", "tcp 1.2.3.4", "replication", "u",
	         PF_HBA_TRUST, 1},
	        {"host \"replication\" all all trust", "tcp 1.2.3.4 physical", NULL, "u", NOMATCH,
	         0},
	        {"local replication all peer\nlocal all all reject", "unix physical", NULL, "u",
	         PF_HBA_PEER, 1},
	        /* samerole / samegroup / +name: the line is skipped. */
	        {"local samerole all trust\nlocal all all reject", "unix", "db", "u", PF_HBA_REJECT,
	         2},
	        {"local samegroup all trust\nlocal all all reject", "unix", "db", "u",
	         PF_HBA_REJECT, 2},
	        {"local +db all trust\nlocal all all md5", "unix", "+db", "u", PF_HBA_MD5, 2},
	        {"local \"+db\" all trust", "unix", "+db", "u", PF_HBA_TRUST, 1},
	        /* Regular expressions are plain names, as in PgBouncer. */
	        {"local /^db\\d+$ all trust", "unix", "db12", "u", NOMATCH, 0},
	        {"local /^db\\d+$ all trust", "unix", "/^db\\d+$", "u", PF_HBA_TRUST, 1},
	};

	(void)state;
	run_cases("database field", cases, PF_ARRAY_SIZE(cases), NULL);
}

static void test_user_field(void **state)
{
	static const hcase_t cases[] = {
	        {"local all u1,u2 md5", "unix", "db", "u2", PF_HBA_MD5, 1},
	        {"local all u1,u2 md5", "unix", "db", "u3", NOMATCH, 0},
	        {"local all \"all\" md5", "unix", "db", "u", NOMATCH, 0},
	        {"local all \"all\" md5", "unix", "db", "all", PF_HBA_MD5, 1},
	        /* +group is not supported: skipped. Quoted, it is a plain name. */
	        {"local all +admins trust\nlocal all all reject", "unix", "db", "u", PF_HBA_REJECT,
	         2},
	        {"local all \"+admins\" trust", "unix", "db", "+admins", PF_HBA_TRUST, 1},
	        /* Database keywords are plain names in the user field (as in Postgres). */
	        {"local all sameuser trust", "unix", "bob", "bob", NOMATCH, 0},
	        {"local all sameuser trust", "unix", "db", "sameuser", PF_HBA_TRUST, 1},
	        {"local all replication trust", "unix", "db", "replication", PF_HBA_TRUST, 1},
	        {"local all samerole trust", "unix", "db", "samerole", PF_HBA_TRUST, 1},
	        /* PgBouncer allows blanks around the commas of a list. */
	        {"host tmp1,all user1,user2 , user3 16.0.0.0/8 md5", "tcp 16.0.0.1", "d", "user3",
	         PF_HBA_MD5, 1},
	        {"host tmp1,all user1,user2 , user3 16.0.0.0/8 md5", "tcp 16.0.0.1", "d", "user4",
	         NOMATCH, 0},
	        {"host all u1 ,\tu2 all md5", "tcp 16.0.0.1", "d", "u2", PF_HBA_MD5, 1},
	        /* Duplicates are harmless. */
	        {"local all u1,u2,u1,u2 md5", "unix", "db", "u1", PF_HBA_MD5, 1},
	        /* Quoting: commas, blanks and '#' inside quotes, "" for a quote. */
	        {"host \"q1\"\"q2\" \"a , b\" 19.0.0.0/8 cert", "tcp 19.0.0.2", "q1\"q2", "a , b",
	         PF_HBA_CERT, 1},
	        {"local all \"a#b\" trust", "unix", "db", "a#b", PF_HBA_TRUST, 1},
	        {"local all \"\" trust", "unix", "db", "", PF_HBA_TRUST, 1},
	        {"local all \"a\"b trust", "unix", "db", "ab", PF_HBA_TRUST, 1},
	        {"local all \"\"\"\" trust", "unix", "db", "\"", PF_HBA_TRUST, 1},
	};

	(void)state;
	run_cases("user field", cases, PF_ARRAY_SIZE(cases), NULL);
}

static void test_addresses(void **state)
{
	static const hcase_t cases[] = {
	        {"host all all 10.1.2.3/32 trust", "tcp 10.1.2.3", "d", "u", PF_HBA_TRUST, 1},
	        {"host all all 10.1.2.3/32 trust", "tcp 10.1.2.4", "d", "u", NOMATCH, 0},
	        {"host all all 0.0.0.0/0 trust", "tcp 255.255.255.255", "d", "u", PF_HBA_TRUST, 1},
	        {"host all all 0.0.0.0/0 trust", "tcp ::1", "d", "u", NOMATCH, 0},
	        {"host all all ::/0 trust", "tcp ::1", "d", "u", PF_HBA_TRUST, 1},
	        {"host all all ::0/0 trust", "tcp 1.2.3.4", "d", "u", NOMATCH, 0},
	        {"host all all 192.168.1.0/24 trust", "tcp 192.168.1.255", "d", "u", PF_HBA_TRUST,
	         1},
	        {"host all all 192.168.1.0/24 trust", "tcp 192.168.2.0", "d", "u", NOMATCH, 0},
	        {"host all all 192.168.1.0/24 trust", "tcp 192.168.0.255", "d", "u", NOMATCH, 0},
	        {"host all all 128.0.0.0/9 trust", "tcp 128.127.255.255", "d", "u", PF_HBA_TRUST,
	         1},
	        {"host all all 128.0.0.0/9 trust", "tcp 128.128.0.0", "d", "u", NOMATCH, 0},
	        {"host all all 128.0.0.0/1 trust", "tcp 254.1.1.1", "d", "u", PF_HBA_TRUST, 1},
	        {"host all all 128.0.0.0/1 trust", "tcp 127.255.255.255", "d", "u", NOMATCH, 0},
	        {"host all all 10.0.0.0/08 trust", "tcp 10.9.9.9", "d", "u", PF_HBA_TRUST, 1},
	        /* A mask in its own column. */
	        {"host all all 127.0.0.0  255.255.255.0 password", "tcp 127.0.0.3", "d", "u",
	         PF_HBA_PASSWORD, 1},
	        {"host all all 127.0.0.0  255.255.255.0 password", "tcp 127.0.1.4", "d", "u",
	         NOMATCH, 0},
	        {"host all all 10.0.0.0 255.0.255.0 trust", "tcp 10.7.0.9", "d", "u", PF_HBA_TRUST,
	         1},
	        {"host all all 10.0.0.0 255.0.255.0 trust", "tcp 10.7.1.9", "d", "u", NOMATCH, 0},
	        {"host all all fe80:: ffff:ffff:ffff:ffff:: trust", "tcp fe80::1", "d", "u",
	         PF_HBA_TRUST, 1},
	        {"host all all fe80:: ffff:ffff:ffff:ffff:: trust", "tcp fe81::1", "d", "u",
	         NOMATCH, 0},
	        /* IPv6 prefixes. */
	        {"host all all ::1/128 trust", "tcp ::1", "d", "u", PF_HBA_TRUST, 1},
	        {"host all all ::1/128 trust", "tcp ::2", "d", "u", NOMATCH, 0},
	        {"host all all ff20::/12 md5", "tcp ff22:3::1", "d", "u", PF_HBA_MD5, 1},
	        {"host all all ff20::/12 md5", "tcp ff30::1", "d", "u", NOMATCH, 0},
	        {"host all all 2001:db8::/127 md5", "tcp 2001:db8::1", "d", "u", PF_HBA_MD5, 1},
	        {"host all all 2001:db8::/127 md5", "tcp 2001:db8::2", "d", "u", NOMATCH, 0},
	        /* IPv4 rules never match IPv6 clients, IPv4-mapped ones included, and back. */
	        {"host all all 10.0.0.0/8 trust", "tcp ::ffff:10.1.2.3", "d", "u", NOMATCH, 0},
	        {"host all all ::ffff:10.0.0.0/104 trust", "tcp ::ffff:10.1.2.3", "d", "u",
	         PF_HBA_TRUST, 1},
	        {"host all all ::ffff:10.0.0.0/104 trust", "tcp 10.1.2.3", "d", "u", NOMATCH, 0},
	        {"host all all ::ffff:0:0/96 trust", "tcp 10.1.2.3", "d", "u", NOMATCH, 0},
	        /* all: any IP address of either family. */
	        {"host all all all scram-sha-256", "tcp 1.2.3.4", "d", "u", PF_HBA_SCRAM_SHA_256,
	         1},
	        {"host all all all scram-sha-256", "tcp face::1", "d", "u", PF_HBA_SCRAM_SHA_256,
	         1},
	        /* Skipped lines: the next rule decides. */
	        {"host all all 10.1.2.3/8 trust\nhost all all all reject", "tcp 10.1.2.3", "d", "u",
	         PF_HBA_REJECT, 2},
	        {"host all all 10.0.0.0 255.255.0.0 trust\nhost all all all reject", "tcp 10.0.0.1",
	         "d", "u", PF_HBA_TRUST, 1},
	        {"host all all 10.0.0.1 255.255.0.0 trust\nhost all all all reject", "tcp 10.0.0.1",
	         "d", "u", PF_HBA_REJECT, 2},
	        {"host all all 10.0.0.0/33 trust\nhost all all all reject", "tcp 10.0.0.1", "d",
	         "u", PF_HBA_REJECT, 2},
	        {"host all all ::/129 trust\nhost all all all reject", "tcp ::1", "d", "u",
	         PF_HBA_REJECT, 2},
	        {"host all all 0.0.0.0/ trust\nhost all all all reject", "tcp 10.0.0.1", "d", "u",
	         PF_HBA_REJECT, 2},
	        {"host all all 0.0.0.0/+0 trust\nhost all all all reject", "tcp 10.0.0.1", "d", "u",
	         PF_HBA_REJECT, 2},
	        {"host all all 0.0.0.0/0000 trust\nhost all all all reject", "tcp 10.0.0.1", "d",
	         "u", PF_HBA_REJECT, 2},
	        {"host all all 10.0.0.0/8/8 trust\nhost all all all reject", "tcp 10.0.0.1", "d",
	         "u", PF_HBA_REJECT, 2},
	        {"host all all 10.1/16 trust\nhost all all all reject", "tcp 10.1.0.1", "d", "u",
	         PF_HBA_REJECT, 2},
	        {"host all all localhost trust\nhost all all all reject", "tcp 127.0.0.1", "d", "u",
	         PF_HBA_REJECT, 2},
	        {"host all all .example.com trust\nhost all all all reject", "tcp 127.0.0.1", "d",
	         "u", PF_HBA_REJECT, 2},
	        {"host all all samehost trust\nhost all all all reject", "tcp 127.0.0.1", "d", "u",
	         PF_HBA_REJECT, 2},
	        {"host all all samenet trust\nhost all all all reject", "tcp 127.0.0.1", "d", "u",
	         PF_HBA_REJECT, 2},
	        {"host all all \"all\" trust\nhost all all all reject", "tcp 127.0.0.1", "d", "u",
	         PF_HBA_REJECT, 2},
	        {"host all all \"10.0.0.0/8\" trust\nhost all all all reject", "tcp 10.0.0.1", "d",
	         "u", PF_HBA_REJECT, 2},
	        {"host all all 10.0.0.0 ffff:: trust\nhost all all all reject", "tcp 10.0.0.1", "d",
	         "u", PF_HBA_REJECT, 2},
	        {"host all all 10.0.0.0 trust\nhost all all all reject", "tcp 10.0.0.1", "d", "u",
	         PF_HBA_REJECT, 2},
	        {"host all all 10.0.0.0/8,11.0.0.0/8 trust\nhost all all all reject",
	         "tcp 10.0.0.1", "d", "u", PF_HBA_REJECT, 2},
	        {"host all all fe80::1%eth0/128 trust\nhost all all all reject", "tcp fe80::1", "d",
	         "u", PF_HBA_REJECT, 2},
	        {"host all all\nhost all all all reject", "tcp 1.2.3.4", "d", "u", PF_HBA_REJECT,
	         2},
	};

	(void)state;
	run_cases("addresses", cases, PF_ARRAY_SIZE(cases), NULL);
}

static void test_methods(void **state)
{
	static const hcase_t cases[] = {
	        {"local all all trust", "unix", "d", "u", PF_HBA_TRUST, 1},
	        {"local all all reject", "unix", "d", "u", PF_HBA_REJECT, 1},
	        {"local all all md5", "unix", "d", "u", PF_HBA_MD5, 1},
	        {"local all all password", "unix", "d", "u", PF_HBA_PASSWORD, 1},
	        {"local all all scram-sha-256", "unix", "d", "u", PF_HBA_SCRAM_SHA_256, 1},
	        {"local all all peer", "unix", "d", "u", PF_HBA_PEER, 1},
	        {"hostssl all all all cert", "tls 1.1.1.1", "d", "u", PF_HBA_CERT, 1},
	        {"host all all all ldap ldapserver=x", "tcp 1.1.1.1", "d", "u", PF_HBA_LDAP, 1},
	        /* Kept with a warning: peer on TCP, cert without hostssl. */
	        {"host all all all peer", "tcp 1.1.1.1", "d", "u", PF_HBA_PEER, 1},
	        {"host all all all cert", "tcp 1.1.1.1", "d", "u", PF_HBA_CERT, 1},
	        /* Methods PgBouncer does not take: skipped, the next line decides. */
	        {"host all all all ident\nhost all all all reject", "tcp 1.1.1.1", "d", "u",
	         PF_HBA_REJECT, 2},
	        {"host all all all gss include_realm=0\nhost all all all reject", "tcp 1.1.1.1",
	         "d", "u", PF_HBA_REJECT, 2},
	        {"host all all all sspi\nhost all all all reject", "tcp 1.1.1.1", "d", "u",
	         PF_HBA_REJECT, 2},
	        {"host all all all pam\nhost all all all reject", "tcp 1.1.1.1", "d", "u",
	         PF_HBA_REJECT, 2},
	        {"host all all all radius radiusservers=x\nhost all all all reject", "tcp 1.1.1.1",
	         "d", "u", PF_HBA_REJECT, 2},
	        {"host all all all bsd\nhost all all all reject", "tcp 1.1.1.1", "d", "u",
	         PF_HBA_REJECT, 2},
	        {"host all all all oauth\nhost all all all reject", "tcp 1.1.1.1", "d", "u",
	         PF_HBA_REJECT, 2},
	        {"host all all all plain\nhost all all all reject", "tcp 1.1.1.1", "d", "u",
	         PF_HBA_REJECT, 2},
	        {"host all all all any\nhost all all all reject", "tcp 1.1.1.1", "d", "u",
	         PF_HBA_REJECT, 2},
	        {"host all all all MD5\nhost all all all reject", "tcp 1.1.1.1", "d", "u",
	         PF_HBA_REJECT, 2},
	        {"host all all all \"trust\"\nhost all all all reject", "tcp 1.1.1.1", "d", "u",
	         PF_HBA_REJECT, 2},
	        {"host all all all trust,md5\nhost all all all reject", "tcp 1.1.1.1", "d", "u",
	         PF_HBA_REJECT, 2},
	        {"local all all\nlocal all all reject", "unix", "d", "u", PF_HBA_REJECT, 2},
	        {"local all all 127.0.0.1/32 trust\nlocal all all reject", "unix", "d", "u",
	         PF_HBA_REJECT, 2},
	};

	(void)state;
	run_cases("methods", cases, PF_ARRAY_SIZE(cases), NULL);
}

static void test_first_match_wins(void **state)
{
	static const hcase_t cases[] = {
	        {"host all all 10.0.0.0/8 reject\nhost all all 10.1.0.0/16 trust", "tcp 10.1.1.1",
	         "d", "u", PF_HBA_REJECT, 1},
	        {"host all all 10.1.0.0/16 trust\nhost all all 10.0.0.0/8 reject", "tcp 10.1.1.1",
	         "d", "u", PF_HBA_TRUST, 1},
	        {"host all all 10.1.0.0/16 trust\nhost all all 10.0.0.0/8 reject", "tcp 10.2.1.1",
	         "d", "u", PF_HBA_REJECT, 2},
	        {"host all all 10.1.0.0/16 trust\nhost all all 10.0.0.0/8 reject", "tcp 11.2.1.1",
	         "d", "u", NOMATCH, 0},
	        {"local db1 all trust\nlocal all bob md5\nlocal all all reject", "unix", "db2",
	         "bob", PF_HBA_MD5, 2},
	        {"local db1 all trust\nlocal all bob md5\nlocal all all reject", "unix", "db1",
	         "bob", PF_HBA_TRUST, 1},
	        {"local db1 all trust\nlocal all bob md5\nlocal all all reject", "unix", "db2",
	         "eve", PF_HBA_REJECT, 3},
	        {"hostssl all all all cert\nhost all all all scram-sha-256", "tcp 1.1.1.1", "d",
	         "u", PF_HBA_SCRAM_SHA_256, 2},
	        {"hostssl all all all cert\nhost all all all scram-sha-256", "tls 1.1.1.1", "d",
	         "u", PF_HBA_CERT, 1},
	};

	(void)state;
	run_cases("first match", cases, PF_ARRAY_SIZE(cases), NULL);
}

static void test_lexical(void **state)
{
	static const hcase_t cases[] = {
	        {"# c\n\n   \t\nlocal all all trust # trailing", "unix", "d", "u", PF_HBA_TRUST, 4},
	        {"local all all trust\r\n", "unix", "d", "u", PF_HBA_TRUST, 1},
	        {"\r\n\tlocal\tall\t\tall\t\t\t\ttrust\t\r\n", "unix", "d", "u", PF_HBA_TRUST, 2},
	        {"local\vall\fall trust", "unix", "d", "u", PF_HBA_TRUST, 1},
	        {"local all all trust#comment", "unix", "d", "u", PF_HBA_TRUST, 1},
	        /* '#' ends an unquoted token: the user field is "abc", the method is missing. */
	        {"local all abc#def trust\nlocal all all md5", "unix", "d", "abc", PF_HBA_MD5, 2},
	        /* A trailing backslash is not a continuation (as in PgBouncer): both parts fail. */
	        {"local all all \\\ntrust\nlocal all all reject", "unix", "d", "u", PF_HBA_REJECT,
	         3},
	        {"local all all trust\\\nlocal all all reject", "unix", "d", "u", PF_HBA_REJECT, 2},
	        {"local all all trust \\\r\nlocal all all reject", "unix", "d", "u", PF_HBA_REJECT,
	         2},
	        {"local all \"a\\\nb\" trust\nlocal all all reject", "unix", "d", "a\\",
	         PF_HBA_REJECT, 3},
	        /* ... but a comment may end with one. */
	        {"# comment \\\nlocal all all trust", "unix", "d", "u", PF_HBA_TRUST, 2},
	        {"local all all trust # comment \\\nlocal all all reject", "unix", "d", "u",
	         PF_HBA_TRUST, 1},
	        /* A backslash elsewhere is an ordinary character. */
	        {"local all a\\b trust", "unix", "d", "a\\b", PF_HBA_TRUST, 1},
	        /* include directives are skipped. */
	        {"include other.conf\nlocal all all md5", "unix", "d", "u", PF_HBA_MD5, 2},
	        {"include_if_exists x\ninclude_dir y\nlocal all all md5", "unix", "d", "u",
	         PF_HBA_MD5, 3},
	        /* Bad lists and quotes. */
	        {"local \"abc all trust\nlocal all all reject", "unix", "abc all trust", "u",
	         PF_HBA_REJECT, 2},
	        {"local a,,b all trust\nlocal all all reject", "unix", "a", "u", PF_HBA_REJECT, 2},
	        {"local ,a all trust\nlocal all all reject", "unix", "a", "u", PF_HBA_REJECT, 2},
	        {"local a, all trust\nlocal all all reject", "unix", "a", "u", PF_HBA_REJECT, 2},
	        {"local all a,\nlocal all all reject", "unix", "d", "a", PF_HBA_REJECT, 2},
	        /* Extra fields after the method must be options. */
	        {"local all all trust extra\nlocal all all reject", "unix", "d", "u", PF_HBA_REJECT,
	         2},
	};

	(void)state;
	run_cases("lexical", cases, PF_ARRAY_SIZE(cases), NULL);
}

/* ---- options and the ident map ---------------------------------------------------------- */

static void test_options(void **state)
{
	warns_t iw = {0};
	pf_ident_t *id = parse_ident("m1 alice alice\nm2 bob bob\n", &iw);
	static const hcase_t with_ident[] = {
	        {"local all all peer map=m1", "unix", "d", "u", PF_HBA_PEER, 1},
	        {"local all all peer map=nomap\nlocal all all reject", "unix", "d", "u",
	         PF_HBA_REJECT, 2},
	        {"hostssl all all all cert map=m2", "tls 1.1.1.1", "d", "u", PF_HBA_CERT, 1},
	        {"local all all peer map=m1 map=m2\nlocal all all reject", "unix", "d", "u",
	         PF_HBA_REJECT, 2},
	        {"local all all peer map\nlocal all all reject", "unix", "d", "u", PF_HBA_REJECT,
	         2},
	        {"local all all peer map=\nlocal all all reject", "unix", "d", "u", PF_HBA_REJECT,
	         2},
	        {"local all all peer =m1\nlocal all all reject", "unix", "d", "u", PF_HBA_REJECT,
	         2},
	        /* map= with a password method is kept (PgBouncer accepts it) but does nothing. */
	        {"local all all md5 map=m1", "unix", "d", "u", PF_HBA_MD5, 1},
	        {"hostssl all all all md5 clientcert=verify-ca", "tls 1.1.1.1", "d", "u",
	         PF_HBA_MD5, 1},
	        {"host all all all md5 clientcert=verify-full\nhost all all all reject",
	         "tls 1.1.1.1", "d", "u", PF_HBA_REJECT, 2},
	        {"hostssl all all all md5 clientcert=1\nhost all all all reject", "tls 1.1.1.1",
	         "d", "u", PF_HBA_REJECT, 2},
	        {"hostssl all all all cert clientcert=verify-ca\nhost all all all reject",
	         "tls 1.1.1.1", "d", "u", PF_HBA_REJECT, 2},
	        {"hostssl all all all cert clientcert=verify-full", "tls 1.1.1.1", "d", "u",
	         PF_HBA_CERT, 1},
	        {"hostssl all all all cert clientname=DN", "tls 1.1.1.1", "d", "u", PF_HBA_CERT, 1},
	        {"hostssl all all all md5 clientname=CN\nhost all all all reject", "tls 1.1.1.1",
	         "d", "u", PF_HBA_REJECT, 2},
	        {"hostssl all all all cert clientname=cn\nhost all all all reject", "tls 1.1.1.1",
	         "d", "u", PF_HBA_REJECT, 2},
	        {"host all all all md5 foo=bar\nhost all all all reject", "tcp 1.1.1.1", "d", "u",
	         PF_HBA_REJECT, 2},
	        {"host all all all ldap foo=bar\nhost all all all reject", "tcp 1.1.1.1", "d", "u",
	         PF_HBA_REJECT, 2},
	        {"host all all all md5 ldapserver=x\nhost all all all reject", "tcp 1.1.1.1", "d",
	         "u", PF_HBA_REJECT, 2},
	};
	static const hcase_t without_ident[] = {
	        {"local all all peer map=m1\nlocal all all reject", "unix", "d", "u", PF_HBA_REJECT,
	         2},
	        {"local all all peer", "unix", "d", "u", PF_HBA_PEER, 1},
	};
	const pf_hba_rule_t *r;
	warns_t w = {0};
	pf_hba_t *hba;

	(void)state;
	run_cases("options (ident)", with_ident, PF_ARRAY_SIZE(with_ident), id);
	run_cases("options (no ident)", without_ident, PF_ARRAY_SIZE(without_ident), NULL);

	/* What the matched rule carries. */
	hba = parse_hba("local all all peer map=m1\n"
	                "hostssl all all all cert clientname=DN map=m2\n"
	                "hostssl all all all scram-sha-256 clientcert=verify-ca\n"
	                "host all all all ldap ldapserver=ldap.example.com "
	                "ldapbasedn=\"dc=example,dc=com\" ldapport=389\n",
	                id, &w);
	assert_int_equal(pf_hba_count_rules(hba), 4);
	assert_int_equal(pf_hba_count_skipped(hba), 0);
	r = decide(hba, "unix", "d", "u");
	assert_non_null(r);
	assert_string_equal(r->map, "m1");
	assert_int_equal(r->clientcert, PF_HBA_CLIENTCERT_NONE);
	assert_int_equal(r->n_options, 1);
	assert_string_equal(r->options[0].name, "map");
	assert_string_equal(r->options[0].value, "m1");
	assert_string_equal(r->file, path_in("pg_hba.conf"));
	r = decide(hba, "tls 1.2.3.4", "d", "u");
	assert_int_equal(r->method, PF_HBA_CERT);
	assert_int_equal(r->line, 2);
	assert_string_equal(r->map, "m2");
	assert_int_equal(r->clientcert, PF_HBA_CLIENTCERT_VERIFY_FULL);
	assert_int_equal(r->clientname, PF_HBA_CLIENTNAME_DN);
	r = decide(hba, "tcp 1.2.3.4", "d", "u");
	assert_int_equal(r->method, PF_HBA_LDAP);
	assert_null(r->map);
	assert_int_equal(r->n_options, 3);
	assert_string_equal(r->options[0].name, "ldapserver");
	assert_string_equal(r->options[0].value, "ldap.example.com");
	assert_string_equal(r->options[1].name, "ldapbasedn");
	assert_string_equal(r->options[1].value, "dc=example,dc=com");
	assert_string_equal(r->options[2].value, "389");
	pf_hba_free(hba);

	hba = parse_hba("hostssl all all all scram-sha-256 clientcert=verify-ca\n", id, &w);
	r = decide(hba, "tls 1.2.3.4", "d", "u");
	assert_int_equal(r->clientcert, PF_HBA_CLIENTCERT_VERIFY_CA);
	assert_int_equal(r->clientname, PF_HBA_CLIENTNAME_CN);
	pf_hba_free(hba);
	pf_ident_free(id);
}

static void test_warnings_and_counts(void **state)
{
	warns_t w = {0};
	pf_hba_t *hba;

	(void)state;
	hba = parse_hba("local all all trust\n"                        /* 1 */
	                "host all all all gss\n"                       /* 2 skipped */
	                "local samerole all md5\n"                     /* 3 skipped */
	                "host all all localhost md5\n"                 /* 4 skipped */
	                "host all all 10.1.2.3/8 md5\n"                /* 5 skipped */
	                "hostgssenc all all all md5\n"                 /* 6 skipped */
	                "include x.conf\n"                             /* 7 skipped */
	                "local all all md5 \\\n"                       /* 8 skipped */
	                "host all all all peer\n"                      /* 9 kept, warned */
	                "local /^x$ all md5\n"                         /* 10 kept, warned */
	                "local all +g md5\n"                           /* 11 skipped */
	                "local all all peer map=m\n"                   /* 12 skipped */
	                "\n# comment\n"                                /* 13, 14 */
	                "host all all all md5 clientcert=verify-ca\n", /* 15 skipped */
	                NULL, &w);
	assert_int_equal(pf_hba_count_rules(hba), 3);
	assert_int_equal(pf_hba_count_skipped(hba), 10);
	assert_true(warned(&w, 2, "authentication method \"gss\" is not supported"));
	assert_true(warned(&w, 3, "\"samerole\" is not supported"));
	assert_true(warned(&w, 4, "host names are not supported"));
	assert_true(warned(&w, 5, "bits set outside its mask"));
	assert_true(warned(&w, 6, "\"hostgssenc\" (GSSAPI encryption) is not supported"));
	assert_true(warned(&w, 7, "\"include\" directives"));
	assert_true(warned(&w, 8, "line continuation"));
	assert_true(warned(&w, 9, "peer works only on local"));
	assert_true(warned(&w, 10, "compared as a plain name"));
	assert_true(warned(&w, 11, "group membership"));
	assert_true(warned(&w, 12, "no ident map file"));
	assert_true(warned(&w, 15, "clientcert can only be set on hostssl lines"));
	assert_false(warned(&w, 1, ""));
	assert_int_equal(w.count, 12);
	pf_hba_free(hba);

	assert_string_equal(pf_hba_method_name(PF_HBA_TRUST), "trust");
	assert_string_equal(pf_hba_method_name(PF_HBA_SCRAM_SHA_256), "scram-sha-256");
	assert_string_equal(pf_hba_method_name(PF_HBA_LDAP), "ldap");
	assert_string_equal(pf_hba_method_name((pf_hba_method_t)99), "?");
	assert_null(pf_hba_match(NULL, NULL));
}

static void test_nul_and_odd_connections(void **state)
{
	static const char text[] = "local all all trust\0junk\nlocal all all md5 # \0\n"
	                           "local all all password\n";
	pf_hba_conn_t c = {0};
	warns_t w = {0};
	pf_hba_t *hba = NULL;
	const pf_hba_rule_t *r;
	char err[256];

	(void)state;
	assert_int_equal(pf_hba_parse(text, sizeof(text) - 1, path_in("pg_hba.conf"), NULL, collect,
	                              &w, &hba, err, sizeof(err)),
	                 0);
	/* A NUL byte anywhere, even in a comment, makes the line bad. */
	r = decide(hba, "unix", "d", "u");
	assert_int_equal(r->method, PF_HBA_PASSWORD);
	assert_int_equal(r->line, 3);
	assert_true(warned(&w, 1, "NUL byte"));
	assert_true(warned(&w, 2, "NUL byte"));
	pf_hba_free(hba);

	/* A TCP connection without a usable address matches no host rule, not even all. */
	hba = parse_hba("host all all all trust\nlocal all all md5\n", NULL, &w);
	c.database = "d";
	c.user = "u";
	assert_null(pf_hba_match(hba, &c));
	{
		struct sockaddr sa = {.sa_family = AF_UNIX};

		c.addr = &sa;
		assert_null(pf_hba_match(hba, &c));
	}
	/* A missing user or database decides nothing. */
	c.is_unix = true;
	c.addr = NULL;
	assert_non_null(pf_hba_match(hba, &c));
	c.user = NULL;
	assert_null(pf_hba_match(hba, &c));
	c.user = "u";
	c.database = NULL;
	assert_null(pf_hba_match(hba, &c));
	pf_hba_free(hba);
}

static void test_long_lines(void **state)
{
	size_t n = 5000, cap = n * 16 + 20000;
	char *text = malloc(cap), *p = text;
	warns_t w = {0};
	pf_hba_t *hba;
	const pf_hba_rule_t *r;

	(void)state;
	assert_non_null(text);
	/* A 10 KB comment, then a line naming 5000 users (~40 KB), then one 10 KB quoted name. */
	*p++ = '#';
	memset(p, 'c', 10000);
	p += 10000;
	*p++ = '\n';
	p += sprintf(p, "local all ");
	for (size_t i = 0; i < n; i++)
		p += sprintf(p, "%suser%zu", i ? "," : "", i);
	p += sprintf(p, " md5\nlocal \"");
	memset(p, 'd', 10000);
	p += 10000;
	p += sprintf(p, "\" all trust\n");
	assert_true((size_t)(p - text) < cap);
	*p = '\0';
	hba = parse_hba(text, NULL, &w);
	assert_int_equal(w.count, 0);
	r = decide(hba, "unix", "d", "user4999");
	assert_int_equal(r->method, PF_HBA_MD5);
	assert_int_equal(r->line, 2);
	r = decide(hba, "unix", "d", "user0");
	assert_int_equal(r->line, 2);
	assert_null(decide(hba, "unix", "d", "user5000"));
	memset(text, 'd', 10000);
	text[10000] = '\0';
	r = decide(hba, "unix", text, "x");
	assert_int_equal(r->method, PF_HBA_TRUST);
	assert_int_equal(r->line, 3);
	text[9999] = '\0';
	assert_null(decide(hba, "unix", text, "x"));
	pf_hba_free(hba);
	free(text);
}

/* ---- @ files ---------------------------------------------------------------------------- */

static void test_at_files(void **state)
{
	warns_t w = {0};
	pf_hba_t *hba;
	const pf_hba_rule_t *r;
	char rules[1024];

	(void)state;
	write_file("names.txt", "alice, bob\n# carol is a comment\ncarol2 dave\t\"eve smith\"\n"
	                        "frank,\n,grace # trailing\n");
	write_file("dbs.txt", "db1 replication\n");
	assert_int_equal(mkdir(path_in("sub"), 0700), 0);
	write_file("a.txt", "@sub/b.txt x1\n");
	write_file("sub/b.txt", "@c.txt\n"); /* relative to sub/ */
	write_file("sub/c.txt", "deep\n");
	write_file("loop1.txt", "@loop2.txt\n");
	write_file("loop2.txt", "u9 @loop1.txt\n");
	write_file("self.txt", "@self.txt\n");
	write_file("group.txt", "ok +grp\n");
	write_file("badquote.txt", "\"abc\ndef\"\n");
	write_file("allkw.txt", "all\n");

	hba = parse_hba("local all @names.txt md5\n"
	                "local @dbs.txt all trust\n"
	                "host @dbs.txt all all password\n",
	                NULL, &w);
	assert_int_equal(w.count, 0);
	for (const char *const *u = (const char *const[]){"alice", "bob", "carol2", "dave",
	                                                  "eve smith", "frank", "grace", NULL};
	     *u; u++) {
		r = decide(hba, "unix", "x", *u);
		if (!r || r->line != 1)
			fail_msg("user \"%s\" from names.txt did not match line 1", *u);
	}
	r = decide(hba, "unix", "db1", "carol");
	assert_int_equal(r->line, 2);
	assert_null(decide(hba, "unix", "x", "carol"));
	assert_null(decide(hba, "unix", "x", "eve"));
	/* A keyword inside an @ file keeps its meaning. */
	r = decide(hba, "tcp 1.2.3.4 physical", NULL, "z");
	assert_int_equal(r->method, PF_HBA_PASSWORD);
	assert_null(decide(hba, "tcp 1.2.3.4", "replication", "z"));
	pf_hba_free(hba);

	/* Nested @ files, each relative to the file that names it; an absolute @ path. */
	snprintf(rules, sizeof(rules), "local all @a.txt trust\nlocal all @%s scram-sha-256\n",
	         path_in("sub/c.txt"));
	hba = parse_hba(rules, NULL, &w);
	assert_int_equal(w.count, 0);
	assert_int_equal(decide(hba, "unix", "x", "deep")->line, 1);
	assert_int_equal(decide(hba, "unix", "x", "x1")->line, 1);
	pf_hba_free(hba);

	/* Keywords from an @ file in the database field. */
	hba = parse_hba("local @allkw.txt u trust\n", NULL, &w);
	assert_non_null(decide(hba, "unix", "anything", "u"));
	pf_hba_free(hba);

	/* Bad @ files: the line is skipped and the next one decides. */
	w.count = 0;
	w.all[0] = '\0';
	hba = parse_hba("local all @missing.txt trust\n"
	                "local all @loop1.txt trust\n"
	                "local all @self.txt trust\n"
	                "local all @group.txt trust\n"
	                "local all @badquote.txt trust\n"
	                "local all @ trust\n"
	                "local all \"@names.txt\" trust\n"
	                "local all all reject\n",
	                NULL, &w);
	assert_int_equal(pf_hba_count_skipped(hba), 6);
	assert_true(warned(&w, 1, "cannot open: No such file or directory"));
	assert_true(warned(&w, 2, "loop1.txt\" includes itself"));
	assert_true(warned(&w, 3, "self.txt\" includes itself"));
	assert_true(warned(&w, 4, "group membership"));
	assert_true(warned(&w, 5, "unterminated quoted string"));
	assert_true(warned(&w, 6, "without a file name"));
	/* A quoted @name is a plain name. */
	assert_int_equal(decide(hba, "unix", "x", "@names.txt")->line, 7);
	r = decide(hba, "unix", "x", "alice");
	assert_int_equal(r->method, PF_HBA_REJECT);
	assert_int_equal(r->line, 8);
	pf_hba_free(hba);
}

static void test_at_file_depth(void **state)
{
	char name[32], body[64];
	warns_t w = {0};
	pf_hba_t *hba;

	(void)state;
	/* d1 names d2 ... d10 names d11, which holds the name: 11 levels, one too many. */
	for (int i = 1; i <= 11; i++) {
		snprintf(name, sizeof(name), "d%d.txt", i);
		if (i < 11)
			snprintf(body, sizeof(body), "@d%d.txt\n", i + 1);
		else
			snprintf(body, sizeof(body), "bottom\n");
		write_file(name, body);
	}
	hba = parse_hba("local all @d1.txt trust\nlocal all @d2.txt md5\n", NULL, &w);
	assert_true(warned(&w, 1, "nested too deep (limit 10)"));
	assert_int_equal(pf_hba_count_skipped(hba), 1);
	/* Ten levels (d2 ... d11) are fine. */
	assert_int_equal(decide(hba, "unix", "x", "bottom")->method, PF_HBA_MD5);
	pf_hba_free(hba);
}

static void test_load_from_file(void **state)
{
	warns_t w = {0};
	pf_hba_t *hba = NULL;
	char err[512];
	int rc;

	(void)state;
	/* Relative @ files come from the HBA file's directory, not the current one. */
	assert_int_equal(mkdir(path_in("conf"), 0700), 0);
	write_file("conf/users.txt", "inconf\n");
	write_file("users.txt", "intop\n");
	write_file("conf/hba.conf", "local all @users.txt trust\nlocal all @hba.conf md5\n");
	rc = pf_hba_load(path_in("conf/hba.conf"), NULL, collect, &w, &hba, err, sizeof(err));
	if (rc)
		fail_msg("%s", err);
	assert_non_null(decide(hba, "unix", "d", "inconf"));
	assert_null(decide(hba, "unix", "d", "intop"));
	/* The HBA file naming itself is a loop. */
	assert_true(warned(&w, 2, "hba.conf\" includes itself"));
	assert_string_equal(decide(hba, "unix", "d", "inconf")->file, path_in("conf/hba.conf"));
	pf_hba_free(hba);

	hba = NULL;
	rc = pf_hba_load(path_in("nope.conf"), NULL, NULL, NULL, &hba, err, sizeof(err));
	assert_int_equal(rc, -ENOENT);
	assert_null(hba);
	assert_non_null(strstr(err, "nope.conf: cannot open: No such file or directory"));
	rc = pf_hba_load(path_in("conf"), NULL, NULL, NULL, &hba, err, sizeof(err));
	assert_int_equal(rc, -EISDIR);
	assert_null(hba);

	/*
	 * A FIFO nobody writes to would block a plain open(); a device could feed the load without
	 * end. Neither is read, as the HBA file or as an @ file.
	 */
	assert_int_equal(mkfifo(path_in("fifo"), 0600), 0);
	rc = pf_hba_load(path_in("fifo"), NULL, NULL, NULL, &hba, err, sizeof(err));
	assert_int_equal(rc, -ENODEV);
	assert_null(hba);
	assert_non_null(strstr(err, "fifo: cannot open: not a regular file"));
	w.count = 0;
	w.all[0] = '\0';
	hba = parse_hba("local all @fifo trust\nlocal all @/dev/zero trust\nlocal all all md5\n",
	                NULL, &w);
	assert_true(warned(&w, 1, "fifo\": cannot open: not a regular file; line skipped"));
	assert_true(warned(&w, 2, "/dev/zero\": cannot open: not a regular file"));
	assert_int_equal(decide(hba, "unix", "d", "u")->method, PF_HBA_MD5);
	pf_hba_free(hba);
}

static void test_size_limits(void **state)
{
	size_t big = 1024 * 1024;
	char *text, *p;
	pf_hba_t *hba = NULL;
	pf_ident_t *id = NULL;
	char err[512];
	int fd, rc;

	(void)state;
	/* A file over 16 MB (sparse). */
	fd = open(path_in("huge.conf"), O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)PF_HBA_MAX_FILE_BYTES + 1), 0);
	close(fd);
	rc = pf_hba_load(path_in("huge.conf"), NULL, NULL, NULL, &hba, err, sizeof(err));
	assert_int_equal(rc, -EFBIG);
	assert_null(hba);
	assert_non_null(strstr(err, "huge.conf: file is larger than 16777216 bytes"));
	rc = pf_ident_load(path_in("huge.conf"), NULL, NULL, &id, err, sizeof(err));
	assert_int_equal(rc, -EFBIG);
	assert_null(id);

	/* A 1 MB @ file named 17 times reads more than 16 MB: the whole load fails. */
	text = malloc(big + 1);
	assert_non_null(text);
	memset(text, 'x', big);
	text[0] = '#';
	text[big - 2] = '\n';
	text[big - 1] = 'n';
	write_bytes("big.txt", text, big);
	p = text;
	p += sprintf(p, "local all all trust\nlocal all ");
	for (int i = 0; i < 17; i++)
		p += sprintf(p, "%s@big.txt", i ? "," : "");
	p += sprintf(p, " trust\n");
	rc = pf_hba_parse(text, strlen(text), path_in("pg_hba.conf"), NULL, NULL, NULL, &hba, err,
	                  sizeof(err));
	assert_int_equal(rc, -EFBIG);
	assert_null(hba);
	assert_non_null(strstr(err, "pg_hba.conf:2: @ file \""));
	assert_non_null(strstr(err, "exceed 16777216 bytes"));
	/* Named 15 times it is fine. */
	p = text;
	p += sprintf(p, "local all ");
	for (int i = 0; i < 15; i++)
		p += sprintf(p, "%s@big.txt", i ? "," : "");
	p += sprintf(p, " trust\n");
	rc = pf_hba_parse(text, strlen(text), path_in("pg_hba.conf"), NULL, NULL, NULL, &hba, err,
	                  sizeof(err));
	if (rc)
		fail_msg("%s", err);
	assert_non_null(decide(hba, "unix", "d", "n"));
	pf_hba_free(hba);
	hba = NULL;
	free(text);

	/* More than PF_HBA_MAX_NAMES names. */
	text = malloc(2 * (PF_HBA_MAX_NAMES + 1) + 64);
	assert_non_null(text);
	p = text + sprintf(text, "local all ");
	for (size_t i = 0; i <= PF_HBA_MAX_NAMES; i++) {
		*p++ = 'x';
		*p++ = ',';
	}
	p[-1] = ' ';
	p += sprintf(p, "trust\n");
	rc = pf_hba_parse(text, (size_t)(p - text), "t.conf", NULL, NULL, NULL, &hba, err,
	                  sizeof(err));
	assert_int_equal(rc, -EFBIG);
	assert_null(hba);
	assert_string_equal(err, "t.conf:1: more than 1000000 database and user names");
	free(text);
}

/* ---- ident map -------------------------------------------------------------------------- */

typedef struct {
	const char *map, *sys, *db;
	bool want;
} icase_t;

static void run_icases(const char *what, const char *text, const icase_t *cases, size_t n)
{
	warns_t w = {0};
	pf_ident_t *id = parse_ident(text, &w);
	int failures = 0;

	for (size_t i = 0; i < n; i++) {
		bool got = pf_ident_has_mapping(id, cases[i].map, cases[i].sys, cases[i].db);

		if (got != cases[i].want) {
			print_message("%s case %zu: map %s: \"%s\" as \"%s\": want %d got %d\n",
			              what, i, cases[i].map, cases[i].sys, cases[i].db,
			              cases[i].want, got);
			failures++;
		}
	}
	pf_ident_free(id);
	if (failures)
		fail_msg("%s: %d of %zu cases failed", what, failures, n);
}

static void test_ident_literal(void **state)
{
	static const char text[] = "# MAPNAME SYSTEM DB\n"
	                           "omicron bryanh bryanh\n"
	                           "omicron ann ann\n"
	                           "omicron robert bob\n"
	                           "omicron bryanh guest1   # comment\n"
	                           "root root all\n"
	                           "quoted root2 \"all\"\n"
	                           "\"spaced map\" \"sys user\" \"db user\"\n";
	static const icase_t cases[] = {
	        {"omicron", "bryanh", "bryanh", true},
	        {"omicron", "bryanh", "guest1", true},
	        {"omicron", "robert", "bob", true},
	        {"omicron", "robert", "robert", false},
	        {"omicron", "ann", "bob", false},
	        {"omicron", "Ann", "ann", false},
	        {"other", "ann", "ann", false},
	        {"root", "root", "anyone", true},
	        {"root", "toor", "anyone", false},
	        {"quoted", "root2", "all", true},
	        {"quoted", "root2", "anyone", false},
	        {"spaced map", "sys user", "db user", true},
	        {"spaced", "sys user", "db user", false},
	};
	warns_t w = {0};
	pf_ident_t *id;

	(void)state;
	run_icases("literal", text, cases, PF_ARRAY_SIZE(cases));
	id = parse_ident(text, &w);
	assert_int_equal(w.count, 0);
	assert_int_equal(pf_ident_count(id), 7);
	assert_true(pf_ident_has_map(id, "omicron"));
	assert_true(pf_ident_has_map(id, "spaced map"));
	assert_false(pf_ident_has_map(id, "omicro"));
	assert_false(pf_ident_has_map(NULL, "omicron"));
	assert_false(pf_ident_has_mapping(NULL, "omicron", "ann", "ann"));
	assert_false(pf_ident_has_mapping(id, "omicron", NULL, "ann"));
	pf_ident_free(id);
}

static void test_ident_regex(void **state)
{
	static const char text[] = "mymap /^(.*)@mydomain\\.com$ \\1\n"
	                           "mymap /^(.*)@otherdomain\\.com$ guest\n"
	                           "mid /^([a-z]+)$ pre_\\1_post\n"
	                           "twice /^(a)$ \\1\\1\n"
	                           "quoted /^(.*)$ \"\\1\"\n"
	                           "unanchored /adm ops\n"
	                           "opt /^(x)?y$ \\1\n"
	                           "gnu /^\\w+\\.x$ dotx\n"
	                           "any /^svc-[0-9]+$ all\n"
	                           "alt /^(ann|bob)$ \\1\n";
	static const icase_t cases[] = {
	        {"mymap", "joe@mydomain.com", "joe", true},
	        {"mymap", "joe@mydomain.com", "jo", false},
	        {"mymap", "joe@mydomain.com", "joe@mydomain.com", false},
	        {"mymap", "joe@mydomainXcom", "joe", false},
	        {"mymap", "joe@otherdomain.com", "guest", true},
	        {"mymap", "joe@otherdomain.com", "joe", false},
	        {"mid", "abc", "pre_abc_post", true},
	        {"mid", "abc", "pre_abc_pos", false},
	        {"mid", "abc", "pre_abc_pest", false}, /* same length, other suffix */
	        {"mid", "abc", "pra_abc_post", false}, /* same length, other prefix */
	        {"mid", "abc", "pre_abd_post", false}, /* same length, other capture */
	        {"mid", "ab1", "pre_ab1_post", false},
	        {"twice", "a", "a\\1", true},
	        {"twice", "a", "aa", false},
	        {"quoted", "zed", "zed", true},
	        {"unanchored", "sysadmin", "ops", true},
	        {"unanchored", "sysadm", "ops", true},
	        {"unanchored", "ad", "ops", false},
	        {"opt", "xy", "x", true},
	        /* The group took no part in the match: refused, as in Postgres. */
	        {"opt", "y", "", false},
	        {"gnu", "ab_1.x", "dotx", true},
	        {"gnu", "ab-1.x", "dotx", false},
	        {"any", "svc-42", "whoever", true},
	        {"any", "svc-x", "whoever", false},
	        {"alt", "bob", "bob", true},
	        {"alt", "bob", "ann", false},
	};

	(void)state;
	run_icases("regex", text, cases, PF_ARRAY_SIZE(cases));
}

static void test_ident_bad_lines(void **state)
{
	static const char text[] = "m /^(\\d+)$ digits\n"  /* 1 \d: skipped */
	                           "m /[\\w]x$ w\n"        /* 2 backslash in []: skipped */
	                           "m /a*?b lazy\n"        /* 3 lazy: skipped */
	                           "m /***=a.b lit\n"      /* 4 director: skipped */
	                           "m /(?:a)b nc\n"        /* 5 does not compile */
	                           "m /( open\n"           /* 6 does not compile */
	                           "m sys +grp\n"          /* 7 +group: skipped */
	                           "m sys /regex\n"        /* 8 regex db user: skipped */
	                           "m two\n"               /* 9 two fields */
	                           "m a b c\n"             /* 10 four fields */
	                           "m a,b c\n"             /* 11 a list */
	                           "include other.conf\n"  /* 12 include */
	                           "m sys \"+grp\"\n"      /* 13 quoted: plain name, kept */
	                           "m /[[:digit:]]+z ok\n" /* 14 kept */
	                           "m \\\n"                /* 15 continuation */
	                           "m sys \"\"\n";         /* 16 empty field */
	static const icase_t cases[] = {
	        {"m", "123", "digits", false}, {"m", "\\x", "w", false}, {"m", "ab", "lazy", false},
	        {"m", "a.b", "lit", false},    {"m", "ab", "nc", false}, {"m", "sys", "+grp", true},
	        {"m", "sys", "grp", false},    {"m", "12z", "ok", true}, {"m", "12", "ok", false},
	};
	warns_t w = {0};
	pf_ident_t *id;

	(void)state;
	run_icases("bad lines", text, cases, PF_ARRAY_SIZE(cases));
	id = parse_ident(text, &w);
	assert_int_equal(pf_ident_count(id), 2);
	assert_true(warned(&w, 1, "uses the escape \\d"));
	assert_true(warned(&w, 2, "a backslash inside [...]"));
	assert_true(warned(&w, 3, "lazy quantifiers"));
	assert_true(warned(&w, 4, "***="));
	assert_true(warned(&w, 5, "invalid regular expression"));
	assert_true(warned(&w, 6, "invalid regular expression"));
	assert_true(warned(&w, 7, "group membership"));
	assert_true(warned(&w, 8, "regular expression as DATABASE-USER"));
	assert_true(warned(&w, 9, "found 2 fields"));
	assert_true(warned(&w, 10, "found 4 fields"));
	assert_true(warned(&w, 11, "a list of names"));
	assert_true(warned(&w, 12, "directives"));
	assert_true(warned(&w, 15, "line continuation"));
	assert_true(warned(&w, 16, "empty field"));
	assert_int_equal(w.count, 14);
	pf_ident_free(id);
}

static void test_ident_backref_without_group(void **state)
{
	/*
	 * Line 1 has \1 but its expression no group. As in Postgres, when it matches, the check
	 * stops and refuses, even though line 2 would allow; when it does not, line 3 may allow.
	 */
	static const char text[] = "m /^a \\1\n"
	                           "m ab ab\n"
	                           "m zz zz\n";
	static const icase_t cases[] = {
	        {"m", "ab", "ab", false},
	        {"m", "zz", "zz", true},
	};
	warns_t w = {0};
	pf_ident_t *id;

	(void)state;
	run_icases("backref", text, cases, PF_ARRAY_SIZE(cases));
	id = parse_ident(text, &w);
	assert_int_equal(pf_ident_count(id), 3);
	assert_true(warned(&w, 1, "has no group for the \\1"));
	pf_ident_free(id);
}

static void test_ident_file(void **state)
{
	pf_ident_t *id = NULL;
	char err[512];
	int rc;

	(void)state;
	write_file("pg_ident.conf", "m1 alice alice\n");
	rc = pf_ident_load(path_in("pg_ident.conf"), NULL, NULL, &id, err, sizeof(err));
	if (rc)
		fail_msg("%s", err);
	assert_true(pf_ident_has_mapping(id, "m1", "alice", "alice"));
	pf_ident_free(id);
	id = NULL;
	rc = pf_ident_load(path_in("none.conf"), NULL, NULL, &id, err, sizeof(err));
	assert_int_equal(rc, -ENOENT);
	assert_null(id);
	assert_non_null(strstr(err, "none.conf: cannot open: No such file or directory"));
}

/* ---- setup ------------------------------------------------------------------------------ */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static int setup(void **state)
{
	(void)state;
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/pf-hba-test-XXXXXX");
	return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	return nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_record_types),
	        cmocka_unit_test(test_database_field),
	        cmocka_unit_test(test_user_field),
	        cmocka_unit_test(test_addresses),
	        cmocka_unit_test(test_methods),
	        cmocka_unit_test(test_first_match_wins),
	        cmocka_unit_test(test_lexical),
	        cmocka_unit_test(test_options),
	        cmocka_unit_test(test_warnings_and_counts),
	        cmocka_unit_test(test_nul_and_odd_connections),
	        cmocka_unit_test(test_long_lines),
	        cmocka_unit_test(test_at_files),
	        cmocka_unit_test(test_at_file_depth),
	        cmocka_unit_test(test_load_from_file),
	        cmocka_unit_test(test_size_limits),
	        cmocka_unit_test(test_ident_literal),
	        cmocka_unit_test(test_ident_regex),
	        cmocka_unit_test(test_ident_bad_lines),
	        cmocka_unit_test(test_ident_backref_without_group),
	        cmocka_unit_test(test_ident_file),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
