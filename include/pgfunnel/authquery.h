/*
 * authquery: auth_query lookups (PgBouncer's auth_user, auth_query and auth_dbname, global and
 * per database). A client whose user auth_file does not know is looked up in Postgres before
 * its password exchange: it borrows a server of the auth_user's pool for the auth database,
 * which runs auth_query with the user name as a bound parameter, and the password exchange then
 * uses what the query returned.
 *
 * Sits above client (it works on pf_client_t); client.c enters it through worker->ops
 * (auth_query), session.c hands it the pool's news (the borrowed server is linked, its answer
 * is in).
 */
#ifndef PGFUNNEL_AUTHQUERY_H
#define PGFUNNEL_AUTHQUERY_H

#include <stddef.h>

#include "pgfunnel/client.h"
#include "pgfunnel/server.h"

/*
 * Starts the lookup for c, which is logging in (its startup done, c->db set, c->user the
 * auth_file user if any, without a secret). Finds the auth database (auth_dbname, per database
 * over global, else c->db) and the auth_user's pool there, holds c's input back and borrows a
 * server (pf_pool_borrow): c waits in that pool like any client until one is free. Ends with
 * pf_client_auth_continue() once the answer is in, or with c closed (a configuration error, no
 * server, query_wait_timeout, client_login_timeout, c leaving). c may be closed on return.
 */
void pf_authq_start(pf_client_t *c);

/* The pool linked s to c, which borrows it for its lookup: auth_query runs on s. */
void pf_authq_linked(pf_client_t *c, pf_server_t *s);

/*
 * c's lookup has its whole answer (the ReadyForQuery of its Sync is consumed): s goes back to
 * its pool, c back to logging in, with c->user what the answer says; then
 * pf_client_auth_continue(), or c is closed when the answer is not one auth_query may give.
 */
void pf_authq_done(pf_client_t *c);

/* What an auth_query answer says (pf_authq_read_answer). */
typedef enum pf_authq_outcome {
	PF_AUTHQ_FOUND,   /* one row: a user name and its secret (none when NULL or empty) */
	PF_AUTHQ_UNKNOWN, /* no row: no such user */
	PF_AUTHQ_BAD,     /* an answer auth_query may not give (why says what) */
} pf_authq_outcome_t;

/*
 * Reads a lookup's answer (pure: no I/O). FOUND: *name gets the returned user name and *secret
 * its secret text, or NULL for an SQL NULL or an empty one (both malloc'd; the caller wipes and
 * frees the secret). BAD: why gets a one-line reason for the log, in PgBouncer's words where it
 * has them ("expected 2 columns from auth_query, not 3"): an error response, not two columns,
 * more than one row, a NULL user name, a value with a NUL byte, a transaction left open. An error
 * 22021 (the name is not valid in the server's encoding) means no such user.
 * Returns the outcome, or -ENOMEM.
 */
int pf_authq_read_answer(const pf_server_lookup_t *r, char **name, char **secret, char *why,
                         size_t whylen);

#endif
