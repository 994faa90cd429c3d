/*
 * admin: the console — the virtual database "pgfunnel" (alias "pgbouncer") where admin_users
 * and stats_users run SHOW and control commands with psql, answered with PgBouncer's columns.
 *
 * Commands are a {name, handler} table; each answer is RowDescription, DataRows,
 * CommandComplete, ReadyForQuery. Only the simple query protocol is served.
 */
#ifndef PGFUNNEL_ADMIN_H
#define PGFUNNEL_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pgfunnel/client.h"

/* A SHOW command: name (upper case, after SHOW) and its handler. */
typedef struct pf_admin_show {
	const char *name;
	/* Appends the answer without ReadyForQuery; arg is the rest of the command line. */
	void (*handler)(pf_client_t *c, const char *arg, pf_buf_t *out);
	bool admin_only; /* refused to stats_users (SHOW FDS) */
} pf_admin_show_t;

/* Runs console commands that answer later (PAUSE, WAIT_CLOSE) once they may: called by the
 * janitor and when servers are released or closed. */
void pf_admin_poll(pf_worker_t *w);

/* The SHOW command called name (upper case), or NULL. */
const pf_admin_show_t *pf_admin_find_show(const char *name);

/* The client authenticated to the console: sends the welcome, marks it admin. */
void pf_admin_login(pf_client_t *c);

/* A message from a console client. */
pf_pkt_action_t pf_admin_packet(pf_client_t *c, const pf_proto_hdr_t *hdr, const uint8_t *pkt,
                                size_t avail);

/*
 * The console's word reader (pure; exposed for tests). Skips blanks at *s, then reads one
 * word into buf (size n): letters, digits, '_', '-' and '.', upper-cased when `upper`; or a
 * "double-quoted" identifier kept as written, where "" stands for one quote. Returns 1 with
 * *s moved past the word; 0 when no word starts after the blanks (end of text or another
 * character: *s moved past the blanks, buf empty); -EINVAL for an unterminated or empty
 * quoted identifier; -ENAMETOOLONG when the word does not fit in buf (never cut short: a
 * truncated name could name something else). *s is left unchanged on errors.
 */
PF_MUSTCHECK int pf_admin_next_word(const char **s, char *buf, size_t n, bool upper);

/*
 * Parses a client id (SHOW CLIENTS, column id) for KILL_CLIENT: decimal digits only. Returns
 * 0 with *out set, -EINVAL for anything else (empty, a sign, blanks, junk), -ERANGE when it
 * does not fit in 64 bits.
 */
PF_MUSTCHECK int pf_admin_parse_id(const char *s, uint64_t *out);

/*
 * Runs one console command (the text of a Query message) and appends the complete answer,
 * ending with ReadyForQuery, to out. Exposed for tests.
 */
void pf_admin_run(pf_client_t *c, const char *sql, pf_buf_t *out);

#endif
