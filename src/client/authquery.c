/*
 * authquery: auth_query lookups for clients whose user auth_file does not know (see
 * include/pgfunnel/authquery.h).
 *
 * The flow, as PgBouncer's (src/client.c start_auth_query / handle_auth_query_response):
 * - client.c's start_auth() decides that c needs a lookup and calls pf_authq_start() through
 *   worker->ops. c leaves the login list for the auth_user's pool in the auth database
 *   (pf_pool_borrow): it waits there like any client — query_wait_timeout applies, a failed
 *   server login ends it with the server's words, SHOW POOLS and SHOW CLIENTS list it there —
 *   and holds its own input back meanwhile.
 * - Linked to a server (session.c → pf_authq_linked()), the server runs auth_query with the
 *   user name bound as a parameter of the extended query protocol (pf_server_run_lookup):
 *   "x' OR '1'='1" is a name like any other, never SQL. The server is linked to c, not
 *   attached: none of its answers reach c, and every one is accounted for in its request
 *   queue.
 * - Once the ReadyForQuery of the lookup's Sync is consumed (session.c → pf_authq_done()), the
 *   server goes back to its pool if it is clean (else it is closed), c back to the login list,
 *   and the answer decides c->user: the per-database user of that name with the returned
 *   secret (pf_database_found_user: re-read at every login, as PgBouncer does), or NULL for an
 *   unknown name. client.c then runs the password exchange with it
 *   (pf_client_auth_continue()).
 *
 * Where pgfunnel differs from PgBouncer 1.25 (man 5 pgfunnel says so too): an unknown user
 * gets the same exchange as a wrong password (PgBouncer answers "no such user"); a NULL or
 * empty password admits nobody (PgBouncer stores "md5", which a client can match); more than
 * one row is refused (PgBouncer takes the last); client_login_timeout bounds the whole lookup.
 *
 * Each lookup belongs to one client and its own server: concurrent logins never see another
 * client's answer. The auth database is held (client_refs) while c borrows its server.
 */
#include "pfbuild.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/crypto.h>

#include "pgfunnel/authquery.h"
#include "pgfunnel/client.h"
#include "pgfunnel/log.h"
#include "pgfunnel/pool.h"
#include "pgfunnel/runtime.h"
#include "pgfunnel/server.h"

/* PgBouncer's words to a client whose lookup cannot run or answered nonsense. */
#define CONFIG_ERROR "bouncer config error"

static void config_error(pf_client_t *c)
{
	pf_client_close(c, PF_CLOSE_CLIENT_AUTH, "08P01", CONFIG_ERROR);
}

/*
 * The database auth_query runs in: auth_dbname (per database over global), a configured one or
 * one made from "*" as for a client, else the client's own. NULL after closing c.
 */
static pf_database_t *auth_database(pf_client_t *c)
{
	pf_worker_t *w = pf_conn_worker(&c->conn);
	const char *name = pf_database_auth_dbname(c->db, w->cfg);
	pf_database_t *db;
	char msg[300];

	if (!name)
		return c->db;
	db = pf_worker_find_database(w, name);
	if (!db) {
		pf_log_error(c, "authentication database \"%s\" is not configured", name);
		config_error(c);
		return NULL;
	}
	if (db->admin) {
		/* The global parameter cannot name it (config.c refuses); an entry's can. */
		pf_log_error(c, "cannot use the reserved \"%s\" database as an auth_dbname", name);
		config_error(c);
		return NULL;
	}
	if (db->disabled) {
		snprintf(msg, sizeof(msg), "authentication database \"%s\" is disabled", name);
		pf_client_close(c, PF_CLOSE_CLIENT_DB_DISABLED, "57P03", msg);
		return NULL;
	}
	return db;
}

void pf_authq_start(pf_client_t *c)
{
	pf_worker_t *w = pf_conn_worker(&c->conn);
	const pf_config_t *cfg = w->cfg;
	const char *auth_user = pf_database_auth_user(c->db, cfg);
	pf_database_t *adb;
	pf_user_t *au;
	pf_pool_t *pool;

	assert(auth_user && !pf_client_in_lookup(c) && c->pc.state == PF_CL_LOGIN);
	adb = auth_database(c);
	if (!adb)
		return;
	au = pf_worker_auth_user(w, auth_user);
	pool = au ? pf_pool_get(w, adb, au) : NULL;
	if (!pool) {
		pf_client_close(c, PF_CLOSE_CLIENT_OOM, NULL, NULL);
		return;
	}
	/* Its servers cannot log in and none is left: say so now (as pf_pool_login_client), not
	 * after server_login_retry. */
	if (pool->last_login_failure && pf_pool_server_count(pool) == 0 &&
	    pf_worker_now(w) - pool->last_login_failure < cfg->server_login_retry) {
		char text[320];

		pf_pool_login_failing_text(pool, text, sizeof(text));
		pf_client_close(c, PF_CLOSE_CLIENT_SERVER_LOGIN, "08006", text);
		return;
	}
	pf_log_debug(c, "auth_query: looking up the user in %s as %s", adb->name, au->name);
	/* Nothing it sends is read until the password exchange begins (pf_client_auth_continue),
	 * and it keeps the auth database alive while it borrows a server there. */
	pf_conn_pause_reading(&c->conn, true);
	c->cold->auth_lookup = true;
	c->cold->lookup_db = adb;
	adb->client_refs++;
	/* Linked at once (pf_authq_linked ran) or waiting; either way it may be closed now. */
	(void)pf_pool_borrow(w, pool, &c->pc);
}

void pf_authq_linked(pf_client_t *c, pf_server_t *s)
{
	const pf_config_t *cfg = pf_conn_worker(&c->conn)->cfg;
	const char *sql = pf_database_auth_query(c->db, cfg);
	const char *params[] = {c->user_name};
	int rc;

	assert(pf_client_in_lookup(c) && pf_client_server(c) == s);
	if (!sql || !*sql) {
		pf_log_error(c, "auth_query is empty");
		config_error(c); /* the server goes back: nothing was sent */
		return;
	}
	/* auth_query of the client's database, as PgBouncer, wherever it runs. */
	rc = pf_server_run_lookup(s, sql, params, PF_ARRAY_SIZE(params));
	if (rc < 0) {
		pf_log_warning(c, "cannot send auth_query: %s", strerror(-rc));
		pf_client_close(c, PF_CLOSE_CLIENT_OOM, NULL, NULL);
	}
}

/* A copy of a column's text, NUL-terminated; refuses values with a NUL byte. */
static int column_text(const pf_proto_col_t *col, char **out)
{
	if (memchr(col->data, 0, col->len))
		return -EINVAL;
	*out = malloc((size_t)col->len + 1);
	if (!*out)
		return -ENOMEM;
	memcpy(*out, col->data, col->len);
	(*out)[col->len] = '\0';
	return 0;
}

int pf_authq_read_answer(const pf_server_lookup_t *r, char **name, char **secret, char *why,
                         size_t whylen)
{
	pf_proto_col_t cols[2];
	uint16_t ncols;
	int rc;

	*name = *secret = NULL;
	/* The name is not text in the server's encoding (a client's bytes, never a role's name
	 * there): no such user, like any other name that matches nothing. */
	if (r->failed && strcmp(r->sqlstate, "22021") == 0)
		return PF_AUTHQ_UNKNOWN;
	if (r->failed) {
		snprintf(why, whylen, "error response from auth_query: %s %s", r->sqlstate,
		         r->message ? r->message : "");
		return PF_AUTHQ_BAD;
	}
	if (r->tx_status != PF_PROTO_TX_IDLE) {
		snprintf(why, whylen, "auth_query left a transaction open");
		return PF_AUTHQ_BAD;
	}
	if (r->columns >= 0 && r->columns != 2) {
		snprintf(why, whylen, "expected 2 columns from auth_query, not %d", r->columns);
		return PF_AUTHQ_BAD;
	}
	if (r->rows == 0)
		return PF_AUTHQ_UNKNOWN;
	if (r->rows > 1) {
		/* PgBouncer keeps the last row; which user that is depends on the query's order. */
		snprintf(why, whylen, "auth_query returned %u rows, expected at most one", r->rows);
		return PF_AUTHQ_BAD;
	}
	if (pf_proto_parse_data_row(r->row, r->row_len, cols, 2, &ncols) < 0 || ncols != 2) {
		snprintf(why, whylen, "expected 2 columns from auth_query, not %d",
		         r->row && r->row_len >= 2 ? (r->row[0] << 8) | r->row[1] : 0);
		return PF_AUTHQ_BAD;
	}
	if (!cols[0].data) {
		snprintf(why, whylen, "auth_query response contained null user name");
		return PF_AUTHQ_BAD;
	}
	rc = column_text(&cols[0], name);
	if (rc == 0 && cols[1].data && cols[1].len > 0)
		rc = column_text(&cols[1], secret);
	if (rc < 0) {
		free(*name);
		*name = NULL;
		if (rc == -ENOMEM)
			return -ENOMEM;
		snprintf(why, whylen, "auth_query response contained a NUL byte");
		return PF_AUTHQ_BAD;
	}
	return PF_AUTHQ_FOUND;
}

/* Reads r and points c->user at what it says. Returns false after closing c. */
static bool apply_answer(pf_client_t *c, const pf_server_lookup_t *r)
{
	const pf_config_t *cfg = pf_conn_worker(&c->conn)->cfg;
	pf_user_t *found = NULL;
	char *name = NULL, *secret = NULL;
	char why[300];
	int rc = pf_authq_read_answer(r, &name, &secret, why, sizeof(why));

	switch (rc) {
	case PF_AUTHQ_BAD:
		pf_log_error(c, "%s", why);
		config_error(c);
		return false;
	case PF_AUTHQ_UNKNOWN:
		pf_log_debug(c, "auth_query: no such user: %s", c->user_name);
		break;
	case PF_AUTHQ_FOUND:
		pf_log_debug(c, "auth_query: found user %s%s", name,
		             secret ? "" : " (no password)");
		found = pf_database_found_user(c->db, cfg, name, secret);
		break;
	default:
		break;
	}
	if (secret) {
		OPENSSL_cleanse(secret, strlen(secret));
		free(secret);
	}
	free(name);
	if (rc == -ENOMEM || (rc == PF_AUTHQ_FOUND && !found)) {
		pf_client_close(c, PF_CLOSE_CLIENT_OOM, NULL, NULL);
		return false;
	}
	/* An unknown name has no user: its exchange fails like a wrong password. */
	if (found)
		found->client_count++;
	if (c->user)
		pf_user_client_gone(c->user);
	c->user = found;
	/* max_user_client_connections for the user it found (PgBouncer checks it here too). */
	return pf_client_check_user_limit(c);
}

void pf_authq_done(pf_client_t *c)
{
	pf_worker_t *w = pf_conn_worker(&c->conn);
	pf_server_t *s = pf_client_server(c);
	pf_server_lookup_t *r = pf_server_take_lookup(s);
	bool ok;

	assert(pf_client_in_lookup(c) && s && r);
	/* The server goes back to its pool (a waiting client's lookup may start on it now), the
	 * client back to logging in. */
	pf_server_release(s);
	pf_pool_end_borrow(w, &c->pc);
	if (c->conn.closing) {
		/* Defence only: a release no longer finishes a shutdown inside it (the worker
		 * settles after the loop's I/O), which is how this client was once closed here;
		 * pf_client_close() dropped its lookup_db then. */
		pf_server_lookup_free(r);
		return;
	}
	c->cold->auth_lookup = false;
	c->cold->lookup_db->client_refs--;
	c->cold->lookup_db = NULL;
	ok = apply_answer(c, r);
	pf_server_lookup_free(r);
	if (ok)
		pf_client_auth_continue(c);
}
