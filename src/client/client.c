/*
 * client: one application connection — startup packet, authentication against auth_file, the
 * welcome, then forwarding its messages to whatever server the pool links it to.
 *
 * Login: raw mode reads the startup packet (answering SSLRequest and GSSENCRequest with 'N'
 * until TLS lands, forwarding CancelRequests). The database and user are resolved, the
 * client authenticates (trust, any, plain, md5, scram-sha-256; unknown users get a fake
 * exchange that fails like a wrong password, so names cannot be probed), then the pool gives it
 * the server parameters it knows (or opens a server to learn them) and the welcome goes out.
 *
 * pf_client_close() is the only way a client ends. Called from the worker (accept, janitor) and
 * from session.c, which carries out the pool's decisions (linking, closing) and the server
 * side's news (its server is gone, it may send again). client.c calls down into server.c
 * (pf_server_attach/pf_server_release) and pool.c, never the other way.
 */
#include "pfbuild.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <openssl/crypto.h>

#include "pgfunnel/client.h"
#include "pgfunnel/hba.h"
#include "pgfunnel/log.h"
#include "pgfunnel/peer.h"
#include "pgfunnel/pool.h"
#include "pgfunnel/runtime.h"
#include "pgfunnel/scram.h"
#include "pgfunnel/server.h"
#include "pgfunnel/tls.h"

enum auth_step {
	AUTH_NONE = 0,
	AUTH_PLAIN,       /* waiting for a PasswordMessage with a cleartext password */
	AUTH_MD5,         /* waiting for a PasswordMessage with an md5 response */
	AUTH_SCRAM_FIRST, /* waiting for SASLInitialResponse */
	AUTH_SCRAM_LATE,  /* waiting for a SASLResponse with client-first (no initial response) */
	AUTH_SCRAM_FINAL, /* waiting for SASLResponse */
};

/* How a client authenticates: auth_type, or the method of its auth_hba_file rule. */
enum method {
	METHOD_ANY = 0,
	METHOD_TRUST,
	METHOD_PLAIN,
	METHOD_MD5,
	METHOD_SCRAM,
	METHOD_PEER,
	METHOD_CERT,
	METHOD_UNSUPPORTED, /* ldap, pam: refused */
};

static pf_pkt_action_t client_on_packet(pf_conn_t *conn, const pf_proto_hdr_t *hdr,
                                        const uint8_t *pkt, size_t avail);
static int client_on_raw(pf_conn_t *conn, const uint8_t *data, size_t len);
static void client_on_event(pf_conn_t *conn, pf_conn_event_t ev, int status);
static void client_on_free(pf_conn_t *conn);

static const pf_conn_ops_t client_ops = {
        .on_packet = client_on_packet,
        .on_raw = client_on_raw,
        .on_event = client_on_event,
        .on_free = client_on_free,
};

/*
 * Connections beyond max_client_conn that are still let reach their startup packet, so that a
 * console session can get into a full pooler; past that, refused at once (bounded fd use).
 */
#define PF_CLIENT_CONSOLE_ROOM 32

/* What each close reason logs and, where the client is told, its SQLSTATE and message. */
static const struct {
	const char *log;
	const char *sqlstate; /* NULL: nothing is sent */
	const char *message;
} close_table[] = {
        [PF_CLOSE_CLIENT_EXIT] = {"client close request", NULL, NULL},
        [PF_CLOSE_CLIENT_EOF] = {"client unexpected eof", NULL, NULL},
        [PF_CLOSE_CLIENT_ERROR] = {"client socket error", NULL, NULL},
        [PF_CLOSE_CLIENT_PROTOCOL] = {"protocol violation", "08P01", "protocol violation"},
        [PF_CLOSE_CLIENT_STARTUP] = {"bad startup packet", "08P01", "bad startup packet"},
        [PF_CLOSE_CLIENT_AUTH] = {"authentication failed", "28P01", "authentication failed"},
        [PF_CLOSE_CLIENT_NO_DB] = {"no such database", "3D000", "no such database"},
        [PF_CLOSE_CLIENT_LIMIT] = {"connection limit reached", "53300",
                                   "no more connections allowed (max_client_conn)"},
        [PF_CLOSE_CLIENT_LOGIN_TIMEOUT] = {"client_login_timeout", "08006", "client_login_timeout"},
        [PF_CLOSE_CLIENT_IDLE_TIMEOUT] = {"client_idle_timeout", "57P05", "client_idle_timeout"},
        [PF_CLOSE_CLIENT_WAIT_TIMEOUT] = {"query_wait_timeout", "57014", "query_wait_timeout"},
        [PF_CLOSE_CLIENT_QUERY_TIMEOUT] = {"query_timeout", "57014", "query timeout"},
        [PF_CLOSE_CLIENT_IDLE_TX_TIMEOUT] = {"idle_transaction_timeout", "25P03",
                                             "idle transaction timeout"},
        [PF_CLOSE_CLIENT_SERVER_GONE] = {"server connection lost", "08006", "server conn crashed?"},
        [PF_CLOSE_CLIENT_SERVER_LOGIN] = {"server login failed", "08006", "server login failed"},
        /* Nothing is sent: it would land inside the server's half-sent message. */
        [PF_CLOSE_CLIENT_SERVER_GONE_MID] = {"server connection lost mid-message", NULL, NULL},
        /* 08P01 as PgBouncer: applications match this pair (PostgREST does). */
        [PF_CLOSE_CLIENT_STATEMENT_MODE] = {"statement mode violation", "08P01",
                                            "transaction blocks not allowed in statement "
                                            "pooling mode"},
        [PF_CLOSE_CLIENT_SHUTDOWN] = {"pooler is shutting down", "57P01",
                                      "pooler is shutting down"},
        [PF_CLOSE_CLIENT_ADMIN_KILL] = {"killed by admin", "57P01", "admin forced disconnect"},
        [PF_CLOSE_CLIENT_CANCEL_DONE] = {"cancel request handled", NULL, NULL},
        [PF_CLOSE_CLIENT_DB_DISABLED] = {"database disabled", "57P03",
                                         "database does not allow connections"},
        [PF_CLOSE_CLIENT_OOM] = {"out of memory", "53200", "out of memory"},
        /* PgBouncer's words; the SQLSTATE of max_client_conn (too_many_connections). */
        [PF_CLOSE_CLIENT_DB_CLIENT_LIMIT] = {"client connections exceeded "
                                             "(max_db_client_connections)",
                                             "53300",
                                             "client connections exceeded "
                                             "(max_db_client_connections)"},
        [PF_CLOSE_CLIENT_USER_CLIENT_LIMIT] = {"client connections exceeded "
                                               "(max_user_client_connections)",
                                               "53300",
                                               "client connections exceeded "
                                               "(max_user_client_connections)"},
        /* PgBouncer's text; Postgres 17's SQLSTATE for its own transaction_timeout. */
        [PF_CLOSE_CLIENT_TX_TIMEOUT] = {"transaction timeout", "25P04", "transaction timeout"},
        [PF_CLOSE_CLIENT_PQEXEC] = {"PQexec disallowed", "08P01", "PQexec disallowed"},
        [PF_CLOSE_CLIENT_CONFIG_CHANGED] = {"database configuration changed", "57P01",
                                            "database configuration changed"},
};

_Static_assert(PF_CLOSE_CLIENT_REASONS <= 32, "worker.h's client_closes[] is too small");

const char *pf_client_close_reason_name(pf_close_reason_t reason)
{
	return close_table[reason].log;
}

size_t pf_client_describe(const pf_client_t *c, char *buf, size_t n)
{
	char host[64];
	int port, len;

	pf_conn_addr_text(&c->conn.addr, host, sizeof(host), &port);
	/* The id, not the heap address: the same value SHOW CLIENTS prints as ptr. */
	len = snprintf(buf, n, "C-0x%" PRIx64 ": %s/%s@%s:%d", c->conn.id,
	               c->db_name ? c->db_name : "(nodb)", c->user_name ? c->user_name : "(nouser)",
	               host, port);
	return len < 0 ? 0 : ((size_t)len < n ? (size_t)len : n - 1);
}

static void send_error(pf_client_t *c, const char *severity, const char *sqlstate,
                       const char *message, const char *detail)
{
	pf_buf_t b;

	pf_buf_init(&b);
	pf_proto_be_error(&b, severity, sqlstate, message, detail, NULL);
	pf_conn_send_buf(&c->conn, &b);
	pf_buf_free(&b);
}

void pf_client_send_error(pf_client_t *c, const char *severity, const char *sqlstate,
                          const char *message, const char *detail)
{
	send_error(c, severity, sqlstate, message, detail);
}

/* Drops what only the login needed (the SCRAM exchange, wiped; the HBA map; a lookup's hold on
 * its database); the cold part itself stays. Idempotent; nothing to do once it is gone. */
static void cold_end_login(pf_client_t *c)
{
	pf_client_cold_t *x = c->cold;

	if (!x)
		return;
	if (x->lookup_db)
		x->lookup_db->client_refs--;
	x->lookup_db = NULL;
	if (x->scram) {
		pf_scram_server_clear(x->scram);
		free(x->scram);
		x->scram = NULL;
	}
	free(x->method_map);
	x->method_map = NULL;
}

static void accept_client(pf_worker_t *w, uv_stream_t *listener, int fd, bool is_unix)
{
	pf_client_t *c = calloc(1, sizeof(*c));
	int rc;

	if (c && !(c->cold = calloc(1, sizeof(*c->cold)))) {
		free(c);
		c = NULL;
	}
	if (!c) {
		pf_log_error(NULL, "out of memory accepting a client");
		if (!listener)
			close(fd);
		return;
	}
	pf_conn_init(&c->conn, &w->net, &client_ops, true);
	pf_pool_client_init(&c->pc);
	pf_cancel_key_init(&c->ck);
	c->conn.raw_mode = true;
	/* Before login a client may make us hold no more than a startup packet, and then no
	 * more than pkt_buf for an authentication message (PgBouncer's bound). */
	c->conn.hold_max = w->cfg->pkt_buf > PF_PROTO_STARTUP_MAX ? (uint32_t)w->cfg->pkt_buf
	                                                          : PF_PROTO_STARTUP_MAX;
	w->client_count++;
	pf_pool_set_worker_client_state(w, &c->pc, PF_CL_LOGIN);
	rc = listener ? pf_conn_accept(&c->conn, listener, is_unix)
	              : pf_conn_adopt_tcp(&c->conn, w->net.loop, fd);
	if (rc < 0) {
		pf_client_close(c, PF_CLOSE_CLIENT_ERROR, NULL, NULL);
		return;
	}
	/* max_client_conn is checked at the startup packet (PgBouncer's place, which lets the
	 * console in); here only connections far beyond it are refused at once, so that a flood
	 * that never sends a startup packet cannot take every file descriptor. */
	if (w->client_count > (size_t)w->cfg->max_client_conn + PF_CLIENT_CONSOLE_ROOM) {
		pf_client_close(c, PF_CLOSE_CLIENT_LIMIT, NULL, NULL);
		return;
	}
}

void pf_client_accept(pf_worker_t *w, uv_stream_t *listener, bool is_unix)
{
	accept_client(w, listener, -1, is_unix);
}

void pf_client_accept_fd(pf_worker_t *w, int fd)
{
	accept_client(w, NULL, fd, false);
}

void pf_client_close(pf_client_t *c, pf_close_reason_t reason, const char *sqlstate,
                     const char *message)
{
	pf_client_close_detail(c, reason, sqlstate, message, NULL);
}

void pf_client_close_detail(pf_client_t *c, pf_close_reason_t reason, const char *sqlstate,
                            const char *message, const char *detail)
{
	pf_worker_t *w = pf_conn_worker(&c->conn);
	pf_server_t *s = pf_client_server(c);
	const char *state = sqlstate ? sqlstate : close_table[reason].sqlstate;
	const char *text = message ? message : close_table[reason].message;

	if (c->conn.closing)
		return;
	w->client_closes[reason]++;
	/* A timeout can strike while its server is half-way through forwarding a message to it:
	 * our error would be read as the rest of that message, so it is closed without a word. */
	if (s && pf_conn_mid_message(&s->conn) && s->conn.pkt_forward)
		state = text = NULL;
	if (state && text)
		send_error(c, "FATAL", state, text, detail);
	if (reason == PF_CLOSE_CLIENT_EXIT || reason == PF_CLOSE_CLIENT_EOF ||
	    reason == PF_CLOSE_CLIENT_CANCEL_DONE) {
		if (w->cfg->log_disconnections && c->pc.state != PF_CL_LOGIN)
			pf_log_info(c, "closing because: %s (age=%llds)", close_table[reason].log,
			            (long long)((pf_worker_now(w) - c->conn.connect_time) /
			                        PF_USEC_PER_SEC));
	} else if (w->cfg->log_pooler_errors || !state) {
		pf_log_info(c, "closing because: %s%s%s",
		            message ? message : close_table[reason].log, detail ? ": " : "",
		            detail ? detail : "");
	}
	if (s) {
		/* What it sent before leaving still goes out; then the server stays useful only if
		 * the client left it idle (pf_pool_release_server checks), so its open transaction
		 * or unanswered requests never reach another client. */
		pf_conn_flush(&c->conn);
		pf_server_release(s);
	}
	pf_cancel_table_remove(&w->cancel_keys, &c->ck);
	/* A client borrowing a server for its auth_query lookup is in that pool, not counted. */
	if (c->pc.pool && !pf_client_in_lookup(c))
		c->db->client_count--;
	if (c->db) {
		assert(c->db->client_conns > 0 && c->db->client_refs > 0);
		c->db->client_conns--;
		c->db->client_refs--;
	}
	cold_end_login(c);
	pf_pool_client_gone(w, &c->pc);
	if (c->user)
		pf_user_client_gone(c->user);
	c->user = NULL;
	w->client_count--;
	pf_conn_close(&c->conn);
	pf_worker_settled(w);
}

static void client_on_free(pf_conn_t *conn)
{
	pf_client_t *c = (pf_client_t *)conn;

	pf_vars_clear(&c->peer.vars);
	pf_prepared_client_free(c->peer.prep);
	pf_vars_release(c->user_name);
	pf_vars_release(c->db_name);
	cold_end_login(c);
	free(c->cold);
	free(c);
}

void pf_client_resume(pf_client_t *c)
{
	pf_conn_resume(&c->conn);
}

/* ---- login ---- */

static void send_auth_request(pf_client_t *c, void (*build)(pf_buf_t *))
{
	pf_buf_t b;

	pf_buf_init(&b);
	build(&b);
	pf_conn_send_buf(&c->conn, &b);
	pf_buf_free(&b);
}

static void auth_failed(pf_client_t *c)
{
	char msg[200];

	/* Postgres' wording and SQLSTATE; the same for an unknown user and a wrong password. */
	snprintf(msg, sizeof(msg), "password authentication failed for user \"%s\"", c->user_name);
	pf_client_close(c, PF_CLOSE_CLIENT_AUTH, "28P01", msg);
}

bool pf_client_is_owner_name(const char *user)
{
	return user && (strcmp(user, "pgbouncer") == 0 || strcmp(user, "pgfunnel") == 0);
}

bool pf_client_peer_is_owner(const pf_client_t *c)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);
	int fd;

	/* PgBouncer's admin_pre_login: the user name must be the special one, and the peer's uid
	 * the process's (real) uid, which after -u is the uid it runs as. */
	if (!pf_client_is_owner_name(c->user_name))
		return false;
	if (!c->conn.is_unix || (fd = pf_conn_fd(&c->conn)) < 0)
		return false;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
		return false;
	return cred.uid == getuid();
}

void pf_client_finish_login(pf_client_t *c)
{
	pf_worker_t *w = pf_conn_worker(&c->conn);
	pf_pool_t *pool = c->pc.pool;
	pf_buf_t b;
	uint32_t keys[2];
	int tries = 0;

	/* Random from the CSPRNG; with peer_id, PgBouncer's layout (cancelkey.h). A key already
	 * in use (with peering 45 random bits) is drawn again. */
	do {
		if (pf_random_bytes(keys, sizeof(keys)) != 0) {
			pf_client_close(c, PF_CLOSE_CLIENT_OOM, "58000",
			                "could not generate a cancel key");
			return;
		}
		pf_cancel_key_stamp(&keys[0], &keys[1], w->cfg->peer_id);
	} while (pf_cancel_table_find(&w->cancel_keys, keys[0], keys[1]) && ++tries < 8);
	c->ck.pid = keys[0];
	c->ck.key = keys[1];
	pf_cancel_table_add(&w->cancel_keys, &c->ck);

	pf_buf_init(&b);
	pf_proto_be_auth_ok(&b);
	for (size_t i = 0; i < pool->n_welcome; i++) {
		const char *name = pool->welcome_names[i];
		const char *value = pool->welcome_values[i];
		int var = pf_var_lookup(name);

		if (var >= 0) {
			/* Its own startup value wins; otherwise it adopts the server's. */
			if (pf_vars_get(&c->peer.vars, (pf_var_id_t)var))
				value = pf_vars_get(&c->peer.vars, (pf_var_id_t)var);
			else if (pf_vars_set(&c->peer.vars, (pf_var_id_t)var, value) < 0)
				b.failed = true;
		}
		pf_proto_be_parameter_status(&b, name, value);
	}
	pf_proto_be_backend_key_data(&b, c->ck.pid, c->ck.key);
	pf_proto_be_ready_for_query(&b, PF_PROTO_TX_IDLE);
	if (b.failed) {
		pf_buf_free(&b);
		pf_client_close(c, PF_CLOSE_CLIENT_OOM, NULL, NULL);
		return;
	}
	pf_conn_send_buf(&c->conn, &b);
	pf_buf_free(&b);
	if (w->cfg->log_connections) {
		char tls[160];

		pf_tls_describe(&c->conn, tls, sizeof(tls));
		pf_log_info(c, "login attempt: db=%s user=%s tls=%s", c->db_name, c->user_name,
		            tls[0] ? tls : "no");
	}
	/* Messages it may have pipelined after its password. */
	pf_conn_resume(&c->conn);
}

/* Authenticated: join the pool (or the console). */
static void login_ok(pf_client_t *c)
{
	pf_worker_t *w = pf_conn_worker(&c->conn);
	pf_user_t *pool_user;

	c->conn.hold_max = PF_CONN_HOLD_MAX;
	assert(!c->cold->lookup_db);
	cold_end_login(c);
	if (c->db->admin) {
		/* A console session keeps its cold part for its commands' state. */
		w->ops->console_login(c);
		return;
	}
	pool_user = c->db->forced_user ? c->db->forced_user : c->user;
	if (!pool_user) {
		pf_client_close(c, PF_CLOSE_CLIENT_AUTH, "28000",
		                "no user to log in to the server as (auth_type=any needs a forced "
		                "user in the database entry)");
		return;
	}
	c->pc.pool = pf_pool_get(w, c->db, pool_user);
	if (!c->pc.pool) {
		pf_client_close(c, PF_CLOSE_CLIENT_OOM, NULL, NULL);
		return;
	}
	/* Only now: every client still in PF_CL_LOGIN (as one closed above) has its cold part. */
	free(c->cold);
	c->cold = NULL;
	c->db->client_count++;
	/* Named prepared statements are tracked where servers change hands between
	 * transactions (PgBouncer: transaction and statement mode). */
	c->peer.prep_on =
	        pf_pool_mode(c->pc.pool) != PF_POOL_SESSION && w->cfg->max_prepared_statements > 0;
	pf_pool_login_client(&c->pc);
}

static bool user_may_use_console(const pf_config_t *cfg, const char *user, bool *can_write)
{
	*can_write = pf_config_list_has(cfg->admin_users, user);
	return *can_write || pf_config_list_has(cfg->stats_users, user);
}

/* The secret a client must prove, as an md5 secret (computed from a plain password). */
static bool md5_secret_for(const pf_client_t *c, char out[36])
{
	const pf_secret_t *sec = c->user ? &c->user->secret : NULL;

	if (!sec || !sec->present)
		return false;
	if (sec->kind == PF_AUTH_SECRET_MD5)
		return pf_strlcpy(out, sec->text, 36) < 36;
	if (sec->kind == PF_AUTH_SECRET_PLAIN)
		return pf_md5_secret(c->user_name, sec->text, out) == 0;
	return false;
}

static void start_scram(pf_client_t *c)
{
	pf_worker_t *w = pf_conn_worker(&c->conn);
	const pf_secret_t *sec = c->user ? &c->user->secret : NULL;
	/* Over TLS also SCRAM-SHA-256-PLUS (channel binding), first, as Postgres lists it. */
	static const char *const mechs[] = {PF_SCRAM_MECHANISM_PLUS, PF_SCRAM_MECHANISM};
	bool tls = pf_tls_is_on(&c->conn);
	pf_scram_secret_t secret;
	int rc;
	pf_buf_t b;

	c->cold->scram = calloc(1, sizeof(*c->cold->scram));
	if (!c->cold->scram) {
		pf_client_close(c, PF_CLOSE_CLIENT_OOM, NULL, NULL);
		return;
	}
	memset(&secret, 0, sizeof(secret));
	if (c->user)
		c->cold->secret_gen = c->user->secret_gen;
	if (sec && sec->present && sec->kind == PF_AUTH_SECRET_SCRAM) {
		rc = pf_scram_server_start(c->cold->scram, &sec->scram);
	} else if (sec && sec->present && sec->kind == PF_AUTH_SECRET_PLAIN) {
		/* Derived once per user and cached: later logins cost no PBKDF2. */
		rc = pf_scram_cache_secret_for_password(w->scram_cache, c->user_name, sec->text,
		                                        w->cfg->scram_iterations > 0
		                                                ? w->cfg->scram_iterations
		                                                : PF_SCRAM_DEFAULT_ITERATIONS,
		                                        &secret);
		if (rc == 0)
			rc = pf_scram_server_start(c->cold->scram, &secret);
	} else {
		/* Unknown user, or only an md5 secret (SCRAM cannot use it): an exchange that
		 * looks normal and fails like a wrong password. */
		rc = pf_scram_server_start_mock(c->cold->scram, c->user_name, w->mock_key);
	}
	OPENSSL_cleanse(&secret, sizeof(secret));
	if (rc < 0) {
		pf_client_close(c, PF_CLOSE_CLIENT_OOM, "58000", "SCRAM setup failed");
		return;
	}
	if (tls) {
		/* PLUS only with binding data: a certificate whose signature names no hash
		 * (Ed25519, RSA-PSS) has no tls-server-end-point, and plain SCRAM still works. */
		uint8_t cb[64];
		int n = pf_tls_server_end_point(&c->conn, cb, sizeof(cb));

		tls = n > 0 && pf_scram_server_set_channel_binding(c->cold->scram, false, cb,
		                                                   (size_t)n) == 0;
	}
	pf_buf_init(&b);
	pf_proto_be_auth_sasl(&b, tls ? mechs : mechs + 1, tls ? 2 : 1);
	pf_conn_send_buf(&c->conn, &b);
	pf_buf_free(&b);
	c->cold->auth_step = AUTH_SCRAM_FIRST;
}

/*
 * Whether c's user must be looked up with auth_query first. PgBouncer's rule (client.c
 * set_pool): a user auth_file does not know — here, none with a secret from it — when the
 * database has an auth_user (its own or the global one). The console never looks users up, and
 * neither do auth types that ignore the user (any) or that pgfunnel does not run.
 */
static bool wants_auth_query(const pf_client_t *c, const pf_config_t *cfg)
{
	if (c->db->admin || (c->user && c->user->secret.present) ||
	    !pf_database_auth_user(c->db, cfg))
		return false;
	switch (c->cold->method) {
	case METHOD_TRUST:
	case METHOD_PLAIN:
	case METHOD_MD5:
	case METHOD_SCRAM:
	case METHOD_PEER:
	case METHOD_CERT:
		return true;
	default:
		return false;
	}
}

/* Postgres' words for the connection in HBA refusals: host "…", and the encryption. */
static void hba_refuse(pf_client_t *c, bool rejected)
{
	char host[64], msg[400];
	int port;

	if (c->conn.is_unix)
		pf_strlcpy(host, "[local]", sizeof(host));
	else
		pf_conn_addr_text(&c->conn.addr, host, sizeof(host), &port);
	snprintf(msg, sizeof(msg), "%s for host \"%s\", user \"%s\", database \"%s\", %s",
	         rejected ? "pg_hba.conf rejects connection" : "no pg_hba.conf entry", host,
	         c->user_name, c->db_name,
	         pf_tls_is_on(&c->conn) ? "SSL encryption" : "no encryption");
	pf_client_close(c, PF_CLOSE_CLIENT_AUTH, "28000", msg);
}

/*
 * The name a client certificate gives (its CN, or its whole subject with clientname=DN), or
 * NULL when c has no verified certificate.
 */
static const char *cert_name(pf_client_t *c, bool dn, char *buf, size_t n)
{
	int rc = dn ? pf_tls_peer_subject(&c->conn, buf, n)
	            : pf_tls_peer_common_name(&c->conn, buf, n);

	return rc == 0 ? buf : NULL;
}

/* A certificate name (or OS user) maps to the requested user: equal, or through map. */
static bool name_maps(pf_client_t *c, const char *map, const char *system_user)
{
	pf_worker_t *w = pf_conn_worker(&c->conn);

	if (!system_user)
		return false;
	if (map)
		return pf_ident_has_mapping(w->ident, map, system_user, c->user_name);
	return strcmp(system_user, c->user_name) == 0;
}

/*
 * Decides how c authenticates: auth_type, or with auth_type=hba the first auth_hba_file rule
 * that matches its connection (no rule and reject refuse it, with Postgres' words). The
 * rule's map and clientcert are checked here for cert and for clientcert=; peer and cert are
 * checked in begin_exchange, once the user is known. Returns false when c was closed.
 */
static bool choose_method(pf_client_t *c, const pf_config_t *cfg)
{
	pf_worker_t *w = pf_conn_worker(&c->conn);
	const pf_hba_rule_t *rule;
	pf_hba_conn_t hc;
	char name[256];

	free(c->cold->method_map);
	c->cold->method_map = NULL;
	c->cold->method_dn = false;
	switch (cfg->auth_type) {
	case PF_AUTH_ANY:
		c->cold->method = METHOD_ANY;
		return true;
	case PF_AUTH_TRUST:
		c->cold->method = METHOD_TRUST;
		return true;
	case PF_AUTH_PLAIN:
		c->cold->method = METHOD_PLAIN;
		return true;
	case PF_AUTH_MD5:
		c->cold->method = METHOD_MD5;
		return true;
	case PF_AUTH_SCRAM_SHA_256:
		c->cold->method = METHOD_SCRAM;
		return true;
	case PF_AUTH_CERT:
		c->cold->method = METHOD_CERT;
		return true;
	case PF_AUTH_HBA:
		break;
	default:
		c->cold->method = METHOD_UNSUPPORTED;
		return true;
	}
	memset(&hc, 0, sizeof(hc));
	hc.is_unix = c->conn.is_unix;
	hc.is_tls = pf_tls_is_on(&c->conn);
	hc.replication = PF_HBA_REPLICATION_NONE;
	hc.addr = &c->conn.addr.sa;
	hc.database = c->db_name;
	hc.user = c->user_name;
	rule = pf_hba_match(w->hba, &hc);
	if (!rule || rule->method == PF_HBA_REJECT) {
		hba_refuse(c, rule != NULL);
		return false;
	}
	if (rule->map && strlen(rule->map) >= PF_CLIENT_MAP_MAX) {
		pf_client_close(c, PF_CLOSE_CLIENT_AUTH, "28000", "ident map name too long");
		return false;
	}
	if (rule->map && !(c->cold->method_map = strdup(rule->map))) {
		pf_client_close(c, PF_CLOSE_CLIENT_OOM, NULL, NULL);
		return false;
	}
	c->cold->method_dn = rule->clientname == PF_HBA_CLIENTNAME_DN;
	/* clientcert= on any rule: a verified certificate (verify-ca), naming the user
	 * (verify-full). cert rules always mean verify-full. */
	if (rule->clientcert != PF_HBA_CLIENTCERT_NONE && rule->method != PF_HBA_CERT) {
		const char *cn = cert_name(c, c->cold->method_dn, name, sizeof(name));

		if (!cn || (rule->clientcert == PF_HBA_CLIENTCERT_VERIFY_FULL &&
		            !name_maps(c, rule->map, cn))) {
			snprintf(name, sizeof(name),
			         "certificate validation (clientcert=%s) failed for user \"%s\"",
			         rule->clientcert == PF_HBA_CLIENTCERT_VERIFY_FULL ? "verify-full"
			                                                           : "verify-ca",
			         c->user_name);
			pf_client_close(c, PF_CLOSE_CLIENT_AUTH, "28000", name);
			return false;
		}
	}
	switch (rule->method) {
	case PF_HBA_TRUST:
		c->cold->method = METHOD_TRUST;
		break;
	case PF_HBA_PASSWORD:
		c->cold->method = METHOD_PLAIN;
		break;
	case PF_HBA_MD5:
		c->cold->method = METHOD_MD5;
		break;
	case PF_HBA_SCRAM_SHA_256:
		c->cold->method = METHOD_SCRAM;
		break;
	case PF_HBA_PEER:
		c->cold->method = METHOD_PEER;
		break;
	case PF_HBA_CERT:
		c->cold->method = METHOD_CERT;
		break;
	default:
		/* ldap and anything else pgfunnel cannot run: refused, never a fall-through. */
		snprintf(name, sizeof(name),
		         "authentication method \"%s\" (%s line %d) is not supported by pgfunnel",
		         pf_hba_method_name(rule->method), rule->file, rule->line);
		pf_client_close(c, PF_CLOSE_CLIENT_AUTH, "28000", name);
		return false;
	}
	return true;
}

/* peer: the OS user of the process at the other end of the unix socket. */
static bool peer_user(pf_client_t *c, char *buf, size_t n)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);
	struct passwd pw, *res = NULL;
	char pwbuf[4096];
	int fd;

	if (!c->conn.is_unix || (fd = pf_conn_fd(&c->conn)) < 0 ||
	    getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
		return false;
	if (getpwuid_r(cred.uid, &pw, pwbuf, sizeof(pwbuf), &res) != 0 || !res)
		return false;
	return pf_strlcpy(buf, pw.pw_name, n) < n;
}

static void begin_exchange(pf_client_t *c);

static void start_auth(pf_client_t *c)
{
	pf_worker_t *w = pf_conn_worker(&c->conn);
	const pf_config_t *cfg = w->cfg;
	char msg[200];

	c->conn.raw_mode = false;
	c->conn.hold_max = (uint32_t)cfg->pkt_buf;
	if (c->db->admin) {
		bool can_write;

		/* As PgBouncer: the OS user that runs it, over the unix socket and as the user
		 * "pgbouncer" (or "pgfunnel"), is admin without a password; under any other name
		 * it is an ordinary console user. */
		if (pf_client_peer_is_owner(c)) {
			c->cold->admin_can_write = true;
			if (cfg->log_connections)
				pf_log_info(c, "%s access from unix socket", c->user_name);
			login_ok(c);
			return;
		}
		if (!user_may_use_console(cfg, c->user_name, &can_write) &&
		    cfg->auth_type != PF_AUTH_ANY) {
			snprintf(msg, sizeof(msg),
			         "not allowed to connect to the admin console as user \"%s\"",
			         c->user_name);
			pf_client_close(c, PF_CLOSE_CLIENT_AUTH, "42501", msg);
			return;
		}
		c->cold->admin_can_write = can_write;
	}
	if (!choose_method(c, cfg))
		return;
	if (wants_auth_query(c, cfg)) {
		w->ops->auth_query(c);
		return;
	}
	begin_exchange(c);
}

void pf_client_auth_continue(pf_client_t *c)
{
	/* Its input was held back during the lookup; it is read again from now on (what is
	 * already buffered is processed on the next loop iteration, outside the server's
	 * callback this runs in). */
	pf_conn_pause_reading(&c->conn, false);
	begin_exchange(c);
	if (!c->conn.closing)
		pf_conn_defer_resume(&c->conn);
}

/*
 * Under md5, which exchange a user without a secret gets, so that it looks like the users that
 * exist (Postgres gives it password_encryption's type): SCRAM where users are looked up with
 * auth_query (pg_authid's secrets are SCRAM by default since PostgreSQL 14) or where most of
 * auth_file's secrets are SCRAM, else md5.
 */
static bool unknown_users_get_scram(const pf_client_t *c, const pf_config_t *cfg)
{
	const pf_auth_file_t *af = pf_conn_worker(&c->conn)->auth_file;

	if (pf_database_auth_user(c->db, cfg))
		return true;
	return af && 2 * pf_auth_file_count_scram(af) > pf_auth_file_count(af);
}

/* The password exchange (or trust, any) for c's user, c->user (NULL: unknown). */
static void begin_exchange(pf_client_t *c)
{
	const pf_config_t *cfg = pf_conn_worker(&c->conn)->cfg;
	char msg[300], name[256];

	switch (c->cold->method) {
	case METHOD_ANY:
		login_ok(c);
		return;
	case METHOD_TRUST:
		if (!c->user) {
			snprintf(msg, sizeof(msg), "no such user: %s", c->user_name);
			pf_client_close(c, PF_CLOSE_CLIENT_AUTH, "28000", msg);
			return;
		}
		login_ok(c);
		return;
	case METHOD_PEER:
		/* Postgres' words; an unknown user fails the same way. */
		if (!c->user || !name_maps(c, c->cold->method_map,
		                           peer_user(c, name, sizeof(name)) ? name : NULL)) {
			snprintf(msg, sizeof(msg), "Peer authentication failed for user \"%s\"",
			         c->user_name);
			pf_client_close(c, PF_CLOSE_CLIENT_AUTH, "28000", msg);
			return;
		}
		login_ok(c);
		return;
	case METHOD_CERT:
		if (!c->user || !name_maps(c, c->cold->method_map,
		                           cert_name(c, c->cold->method_dn, name, sizeof(name)))) {
			snprintf(msg, sizeof(msg),
			         "certificate authentication failed for user \"%s\"", c->user_name);
			pf_client_close(c, PF_CLOSE_CLIENT_AUTH, "28000", msg);
			return;
		}
		login_ok(c);
		return;
	case METHOD_PLAIN:
		c->cold->auth_step = AUTH_PLAIN;
		send_auth_request(c, pf_proto_be_auth_cleartext);
		return;
	case METHOD_MD5:
		/* A SCRAM secret cannot answer md5: PgBouncer switches to SCRAM then. */
		if ((c->user && c->user->secret.present &&
		     c->user->secret.kind == PF_AUTH_SECRET_SCRAM) ||
		    ((!c->user || !c->user->secret.present) && unknown_users_get_scram(c, cfg))) {
			start_scram(c);
			return;
		}
		if (pf_random_bytes(c->cold->md5_salt, sizeof(c->cold->md5_salt)) != 0) {
			pf_client_close(c, PF_CLOSE_CLIENT_OOM, "58000", "random generator failed");
			return;
		}
		c->cold->auth_step = AUTH_MD5;
		{
			pf_buf_t b;

			pf_buf_init(&b);
			pf_proto_be_auth_md5(&b, c->cold->md5_salt);
			pf_conn_send_buf(&c->conn, &b);
			pf_buf_free(&b);
		}
		return;
	case METHOD_SCRAM:
		start_scram(c);
		return;
	default: {
		char tname[32];

		pf_config_format(cfg, pf_config_find_param("auth_type"), tname, sizeof(tname));
		snprintf(msg, sizeof(msg), "auth_type \"%s\" is not supported by pgfunnel yet",
		         tname);
		pf_client_close(c, PF_CLOSE_CLIENT_AUTH, "28000", msg);
		return;
	}
	}
}

/* Checks a cleartext password against whatever secret auth_file holds. */
static bool plain_password_ok(pf_client_t *c, const char *password)
{
	pf_worker_t *w = pf_conn_worker(&c->conn);
	const pf_secret_t *sec = c->user ? &c->user->secret : NULL;
	char md5[36];
	bool ok = false;

	if (!sec || !sec->present)
		return false;
	switch (sec->kind) {
	case PF_AUTH_SECRET_PLAIN: {
		size_t a = strlen(password), b = strlen(sec->text);

		ok = a == b && pf_memeq_ct(password, sec->text, a);
		break;
	}
	case PF_AUTH_SECRET_MD5:
		ok = pf_md5_secret(c->user_name, password, md5) == 0 &&
		     pf_memeq_ct(md5, sec->text, PF_MD5_SECRET_LEN);
		OPENSSL_cleanse(md5, sizeof(md5));
		break;
	case PF_AUTH_SECRET_SCRAM: {
		pf_scram_secret_t derived;

		/* PBKDF2 runs on the event loop: a verifier (auth_file, or one a role set for
		 * itself and auth_query returned) may not make it take seconds. */
		if (sec->scram.iterations > PF_SCRAM_MAX_ITERATIONS) {
			pf_log_warning(
			        c,
			        "SCRAM secret of user \"%s\" has %d iterations, more than the "
			        "%d pgfunnel computes for a cleartext password: login refused",
			        c->user_name, sec->scram.iterations, PF_SCRAM_MAX_ITERATIONS);
			return false;
		}
		ok = pf_scram_cache_derive(w->scram_cache, password, sec->scram.salt,
		                           sec->scram.salt_len, sec->scram.iterations, &derived,
		                           NULL) == 0 &&
		     pf_memeq_ct(derived.stored_key, sec->scram.stored_key, PF_SCRAM_KEY_LEN) &&
		     pf_memeq_ct(derived.server_key, sec->scram.server_key, PF_SCRAM_KEY_LEN);
		OPENSSL_cleanse(&derived, sizeof(derived));
		break;
	}
	}
	return ok;
}

/*
 * Whether the message in hand is a whole PasswordMessage, the one type that carries every
 * method's answer ('p' stands for PasswordMessage, SASLInitialResponse and SASLResponse alike:
 * the step says which). When it is not, *action says what now: the client was closed
 * (Terminate, or any other type) or the rest of the message must arrive first.
 */
static bool auth_message_is_whole(pf_client_t *c, const pf_proto_hdr_t *hdr, size_t avail,
                                  pf_pkt_action_t *action)
{
	bool sasl = c->cold->auth_step == AUTH_SCRAM_FIRST || c->cold->auth_step == AUTH_SCRAM_LATE ||
	            c->cold->auth_step == AUTH_SCRAM_FINAL;
	char msg[64];

	if (hdr->type != PF_PROTO_FE_PASSWORD_MESSAGE) {
		if (hdr->type == PF_PROTO_FE_TERMINATE) {
			pf_client_close(c, PF_CLOSE_CLIENT_EXIT, NULL, NULL);
			*action = PF_PKT_STOP;
			return false;
		}
		/* Postgres' words in a SASL exchange (auth-sasl.c, CheckSASLAuth). */
		if (sasl)
			snprintf(msg, sizeof(msg), "expected SASL response, got message type %d",
			         hdr->type);
		pf_client_close(c, PF_CLOSE_CLIENT_PROTOCOL, "08P01",
		                sasl ? msg : "expected a password message during authentication");
		*action = PF_PKT_STOP;
		return false;
	}
	/*
	 * Postgres reads a SASL message with a limit of PF_SCRAM_MAX_MSG_LEN bytes, its length word
	 * included (PG_MAX_SASL_MESSAGE_LENGTH), and a longer one ends the exchange as a failed
	 * one: "password authentication failed" (28P01), before any byte of it is read.
	 */
	if (sasl && hdr->len > PF_SCRAM_MAX_MSG_LEN) {
		auth_failed(c);
		*action = PF_PKT_STOP;
		return false;
	}
	if (avail < hdr->total) {
		*action = PF_PKT_NEED_WHOLE;
		return false;
	}
	return true;
}

/* Checks an md5 response against the user's md5 secret (or one made from its password). */
static bool md5_response_ok(const pf_client_t *c, const char *response)
{
	char secret[36];
	bool ok;

	ok = md5_secret_for(c, secret) && pf_md5_verify(secret, c->cold->md5_salt, response);
	OPENSSL_cleanse(secret, sizeof(secret));
	return ok;
}

/*
 * AUTH_PLAIN / AUTH_MD5: the PasswordMessage holds a cleartext password or an md5 response.
 * payload is the message's payload in the receive buffer (borrowed); the password in it is
 * wiped there, so nothing is left for a later message to expose.
 */
static pf_pkt_action_t auth_password(pf_client_t *c, const uint8_t *payload, size_t plen)
{
	char *pw = (char *)payload; /* not const: wiped after use */
	const char *checked;
	bool ok;

	assert(c->cold->auth_step == AUTH_PLAIN || c->cold->auth_step == AUTH_MD5);
	if (pf_proto_parse_password(payload, plen, &checked) < 0) {
		pf_client_close(c, PF_CLOSE_CLIENT_PROTOCOL, "08P01", "invalid password message");
		return PF_PKT_STOP;
	}
	/* The parser accepted one NUL-terminated string filling the payload: pw is that. */
	assert(checked == pw && plen > 0 && pw[plen - 1] == '\0');
	if (c->cold->auth_step == AUTH_PLAIN)
		ok = plain_password_ok(c, pw);
	else
		ok = md5_response_ok(c, pw);
	/* The password bytes stay in our receive buffer only until it is reused. */
	OPENSSL_cleanse(pw, plen);
	if (!ok) {
		auth_failed(c);
		return PF_PKT_STOP;
	}
	login_ok(c);
	return PF_PKT_CONSUMED;
}

/* Closes c with the error the SCRAM module recorded for the message it refused. */
static void scram_refused(pf_client_t *c)
{
	const pf_scram_error_t *e = pf_scram_server_error(c->cold->scram);

	pf_client_close_detail(c, PF_CLOSE_CLIENT_PROTOCOL, e->sqlstate ? e->sqlstate : "08P01",
	                       e->message ? e->message : "malformed SCRAM message",
	                       e->detail[0] ? e->detail : NULL);
}

/* Feeds client-first to the SCRAM state and sends AuthenticationSASLContinue. */
static pf_pkt_action_t scram_client_first(pf_client_t *c, const uint8_t *data, size_t dlen)
{
	char out[PF_SCRAM_SERVER_FIRST_MAX];
	size_t outlen;
	pf_buf_t b;
	int rc;

	rc = pf_scram_server_first(c->cold->scram, data, dlen, out, sizeof(out), &outlen);
	if (rc < 0) {
		if (rc == -EPROTO || rc == -ENOTSUP)
			scram_refused(c);
		else
			pf_client_close(c, PF_CLOSE_CLIENT_OOM, "58000", "SCRAM exchange failed");
		return PF_PKT_STOP;
	}
	assert(outlen <= sizeof(out));
	pf_buf_init(&b);
	pf_proto_be_auth_sasl_continue(&b, out, outlen);
	pf_conn_send_buf(&c->conn, &b);
	pf_buf_free(&b);
	c->cold->auth_step = AUTH_SCRAM_FINAL;
	return PF_PKT_CONSUMED;
}

/*
 * AUTH_SCRAM_FIRST: the SASLInitialResponse (mechanism and client-first-message). Read in the
 * order Postgres reads it (CheckSASLAuth with pqformat.c's readers), so each framing fault gets
 * Postgres' error: the mechanism name, which must be SCRAM-SHA-256 (we never offer -PLUS
 * without TLS), before the length; a length of -1 means no initial response, answered with an
 * empty AuthenticationSASLContinue, after which a SASLResponse carries client-first.
 */
static pf_pkt_action_t auth_sasl_initial_response(pf_client_t *c, const uint8_t *payload,
                                                  size_t plen)
{
	const char *mech;
	const uint8_t *data;
	size_t dlen;
	pf_buf_t b;
	bool plus;
	int rc;

	assert(c->cold->auth_step == AUTH_SCRAM_FIRST && c->cold->scram);
	if (!memchr(payload, '\0', plen)) {
		pf_client_close(c, PF_CLOSE_CLIENT_PROTOCOL, "08P01", "invalid string in message");
		return PF_PKT_STOP;
	}
	/* PLUS only where it was offered (start_scram kept the binding data then). */
	plus = pf_scram_server_plus_offered(c->cold->scram) &&
	       strcmp((const char *)payload, PF_SCRAM_MECHANISM_PLUS) == 0;
	if (!plus && strcmp((const char *)payload, PF_SCRAM_MECHANISM) != 0) {
		pf_client_close(c, PF_CLOSE_CLIENT_PROTOCOL, "08P01",
		                "client selected an invalid SASL authentication mechanism");
		return PF_PKT_STOP;
	}
	if (plus)
		pf_scram_server_select_plus(c->cold->scram);
	rc = pf_proto_parse_sasl_initial_response(payload, plen, &mech, &data, &dlen);
	if (rc < 0) {
		pf_client_close(c, PF_CLOSE_CLIENT_PROTOCOL, "08P01",
		                rc == -ENODATA ? "insufficient data left in message"
		                               : "invalid message format");
		return PF_PKT_STOP;
	}
	if (data)
		return scram_client_first(c, data, dlen);
	pf_buf_init(&b);
	pf_proto_be_auth_sasl_continue(&b, "", 0);
	pf_conn_send_buf(&c->conn, &b);
	pf_buf_free(&b);
	c->cold->auth_step = AUTH_SCRAM_LATE;
	return PF_PKT_CONSUMED;
}

/*
 * After a good SCRAM proof: keeps the ClientKey it revealed, so that pgfunnel can log in to
 * Postgres as this user with SCRAM although auth_file holds only the verifier.
 */
static void learn_client_key(pf_client_t *c)
{
	if (c->user && c->user->secret.kind == PF_AUTH_SECRET_SCRAM &&
	    pf_scram_server_client_key(c->cold->scram, c->user->secret.scram_client_key) == 0)
		c->user->secret.has_client_key = true; /* for logging in to Postgres */
}

/* AUTH_SCRAM_FINAL: the SASLResponse (client-final-message with the proof). */
static pf_pkt_action_t auth_sasl_response(pf_client_t *c, const uint8_t *payload, size_t plen)
{
	char out[PF_SCRAM_MAX_MSG_LEN];
	size_t outlen;
	pf_buf_t b;
	int rc;

	assert(c->cold->auth_step == AUTH_SCRAM_FINAL && c->cold->scram);
	rc = pf_scram_server_final(c->cold->scram, payload, plen, out, sizeof(out), &outlen);
	/* The proof, with the stored key, gives the ClientKey: not left in a receive buffer that
	 * goes back to the shared free list (payload is in c's buffer, not const). */
	OPENSSL_cleanse((uint8_t *)payload, plen);
	if (rc == -EACCES) {
		auth_failed(c);
		return PF_PKT_STOP;
	}
	if (rc == -EPROTO || rc == -ENOTSUP) {
		scram_refused(c);
		return PF_PKT_STOP;
	}
	if (rc < 0) {
		pf_client_close(c, PF_CLOSE_CLIENT_OOM, "58000", "SCRAM exchange failed");
		return PF_PKT_STOP;
	}
	assert(outlen <= sizeof(out));
	if (c->user && c->user->secret_gen != c->cold->secret_gen) {
		/* A RELOAD changed the password during the exchange: the proof is for the old one,
		 * which no longer admits anyone (nor may its key be kept for the new secret). */
		OPENSSL_cleanse(out, sizeof(out));
		auth_failed(c);
		return PF_PKT_STOP;
	}
	learn_client_key(c);
	pf_buf_init(&b);
	pf_proto_be_auth_sasl_final(&b, out, outlen);
	/* When the welcome is ready now, it leaves with the SASL final in one write. */
	pf_conn_cork(&c->conn);
	pf_conn_send_buf(&c->conn, &b);
	pf_buf_free(&b);
	login_ok(c);
	pf_conn_uncork(&c->conn);
	return PF_PKT_CONSUMED;
}

/* A PasswordMessage / SASL message during authentication: handed to the step that awaits it. */
static pf_pkt_action_t auth_packet(pf_client_t *c, const pf_proto_hdr_t *hdr, const uint8_t *pkt,
                                   size_t avail)
{
	const uint8_t *payload = pkt + PF_PROTO_HDR_LEN;
	size_t plen = hdr->payload_len;
	pf_pkt_action_t action;

	assert(c->pc.state == PF_CL_LOGIN && c->cold);
	if (!auth_message_is_whole(c, hdr, avail, &action))
		return action;
	assert(plen + PF_PROTO_HDR_LEN == hdr->total && hdr->total <= avail);
	switch (c->cold->auth_step) {
	case AUTH_PLAIN:
	case AUTH_MD5:
		return auth_password(c, payload, plen);
	case AUTH_SCRAM_FIRST:
		return auth_sasl_initial_response(c, payload, plen);
	case AUTH_SCRAM_LATE:
		return scram_client_first(c, payload, plen);
	case AUTH_SCRAM_FINAL:
		return auth_sasl_response(c, payload, plen);
	default:
		pf_client_close(c, PF_CLOSE_CLIENT_PROTOCOL, "08P01",
		                "unexpected password message");
		return PF_PKT_STOP;
	}
}

/* Walking the startup packet's options: the client, and the reply when one is refused. */
typedef struct startup_opts {
	pf_client_t *c;
	const char *refused; /* the parameter name */
	bool oom;
} startup_opts_t;

/* One "-c name=value" of options: a tracked parameter is kept, an ignored one dropped. */
static bool startup_option(void *arg, const char *name, const char *value)
{
	startup_opts_t *o = arg;
	const pf_config_t *cfg = pf_conn_worker(&o->c->conn)->cfg;
	int var = pf_var_lookup(name);

	if (var >= 0) {
		if (pf_vars_set(&o->c->peer.vars, (pf_var_id_t)var, value) < 0) {
			o->oom = true;
			return false;
		}
		return true;
	}
	/* As PgBouncer: listing "options" itself ignores every untracked one. */
	if (pf_config_list_has(cfg->ignore_startup_parameters, name) ||
	    pf_config_list_has(cfg->ignore_startup_parameters, "options"))
		return true;
	o->refused = name;
	return false;
}

/* The startup packet's options (PgBouncer's rules and words); false after closing c. */
static bool startup_options(pf_client_t *c, const char *value)
{
	startup_opts_t o = {.c = c};
	char msg[PF_VAR_OPTION_MAX + 64];
	int rc = pf_vars_parse_options(value, startup_option, &o);

	if (rc == 0)
		return true;
	if (o.oom) {
		pf_client_close(c, PF_CLOSE_CLIENT_OOM, NULL, NULL);
		return false;
	}
	if (rc == -E2BIG)
		snprintf(msg, sizeof(msg),
		         "unsupported options startup parameter: parameter too long");
	else if (rc < 0)
		snprintf(msg, sizeof(msg),
		         "unsupported options startup parameter: only '-c config=val' and "
		         "'--config=val' are allowed");
	else
		snprintf(msg, sizeof(msg), "unsupported startup parameter in options: %s",
		         o.refused);
	pf_client_close(c, PF_CLOSE_CLIENT_STARTUP, "0A000", msg);
	return false;
}

/* Applies one startup parameter; returns false (after closing c) when it is refused. */
static bool startup_param(pf_client_t *c, const char *name, const char *value,
                          const char **unsupported)
{
	const pf_config_t *cfg = pf_conn_worker(&c->conn)->cfg;
	int var;

	if (strcmp(name, "user") == 0 || strcmp(name, "database") == 0)
		return true;
	if (strcmp(name, "options") == 0)
		return startup_options(c, value);
	var = pf_var_lookup(name);
	if (var >= 0) {
		if (pf_vars_set(&c->peer.vars, (pf_var_id_t)var, value) < 0) {
			pf_client_close(c, PF_CLOSE_CLIENT_OOM, NULL, NULL);
			return false;
		}
		return true;
	}
	if (pf_proto_is_protocol_option(name)) {
		*unsupported = name;
		return true;
	}
	if (pf_config_list_has(cfg->ignore_startup_parameters, name))
		return true;
	{
		char msg[300];

		/* PgBouncer's text; Postgres has no such error, so feature_not_supported. */
		snprintf(msg, sizeof(msg), "unsupported startup parameter: %s", name);
		pf_client_close(c, PF_CLOSE_CLIENT_STARTUP, "0A000", msg);
	}
	return false;
}

static void handle_cancel(pf_client_t *c, uint32_t pid, uint32_t key)
{
	pf_worker_t *w = pf_conn_worker(&c->conn);
	int peer_id = w->cfg->peer_id;
	pf_cancel_key_t *k;
	pf_server_t *target;

	pf_pool_set_worker_client_state(w, &c->pc, PF_CL_CANCEL);
	if (peer_id > 0) {
		/* Peering (PgBouncer's): another peer's key goes to that peer (peer.c). */
		if (pf_cancel_key_peer(pid) != peer_id) {
			pf_peer_forward_cancel(w, c, pid, key);
			pf_client_close(c, PF_CLOSE_CLIENT_CANCEL_DONE, NULL, NULL);
			return;
		}
		/* Ours, perhaps forwarded (its TTL lower): we issued it with every TTL bit set. */
		key |= PF_CANCEL_TTL_MASK;
	}
	k = pf_cancel_table_find(&w->cancel_keys, pid, key);
	target = k ? pf_client_server(PF_CONTAINER_OF(k, pf_client_t, ck)) : NULL;
	/* A wrong key does nothing, and the requester is told nothing, as with Postgres. */
	if (target && target->ready)
		pf_server_send_cancel(target);
	pf_client_close(c, PF_CLOSE_CLIENT_CANCEL_DONE, NULL, NULL);
}

/*
 * SSLRequest: 'S' and the TLS handshake when client TLS is on (TCP only, as Postgres: never on
 * the unix socket), else 'N' and the client goes on in clear. Bytes after the request are an
 * error: they were sent before encryption began and could have been injected (CVE-2021-23214).
 */
static int handle_ssl_request(pf_client_t *c, int consumed, size_t avail)
{
	pf_worker_t *w = pf_conn_worker(&c->conn);
	int rc;

	if (c->cold->tls_negotiated) {
		/* A second request, or one inside TLS: Postgres refuses it as an unknown code. */
		pf_client_close(
		        c, PF_CLOSE_CLIENT_STARTUP, "08P01",
		        "unsupported frontend protocol 1234.5679: server supports 3.0 to 3.0");
		return -1;
	}
	c->cold->tls_negotiated = true;
	if (!w->tls_accept || c->conn.is_unix) {
		pf_conn_send(&c->conn, "N", 1);
		return consumed;
	}
	if ((size_t)consumed < avail) {
		pf_client_close(c, PF_CLOSE_CLIENT_STARTUP, "08P01",
		                "received unencrypted data after SSL request");
		return -1;
	}
	pf_conn_send(&c->conn, "S", 1);
	rc = pf_tls_accept(&c->conn, w->tls_accept, NULL, 0, false);
	if (rc < 0) {
		pf_client_close(c, PF_CLOSE_CLIENT_OOM, NULL, NULL);
		return -1;
	}
	return consumed;
}

/* client_tls_sslmode require, verify-ca, verify-full: a TCP client must have come through TLS
 * (the verify modes' certificate check is part of the handshake). */
static bool tls_required_but_missing(pf_client_t *c)
{
	pf_worker_t *w = pf_conn_worker(&c->conn);

	return w->cfg->client_tls_sslmode >= PF_SSLMODE_REQUIRE && !c->conn.is_unix &&
	       !pf_tls_is_on(&c->conn);
}

/* A console client PgBouncer lets past the client-count limits: one of admin_users. */
static bool limit_exempt(const pf_client_t *c, const pf_config_t *cfg)
{
	return c->db->admin && pf_config_list_has(cfg->admin_users, c->user_name);
}

/*
 * max_db_client_connections, checked like PgBouncer's set_pool() does: at the startup packet,
 * counting every client of the database from then on (logged in or not), so the N+1th is
 * refused before its password exchange. The [databases] value (> 0) beats the global one.
 */
static bool check_db_limit(pf_client_t *c)
{
	const pf_config_t *cfg = pf_conn_worker(&c->conn)->cfg;
	int limit = c->db->max_db_client_connections > 0 ? c->db->max_db_client_connections
	                                                 : cfg->max_db_client_connections;

	if (limit <= 0 || c->db->client_conns <= limit || limit_exempt(c, cfg))
		return true;
	pf_log_debug(c, "db '%s' full (%d > %d)", c->db->name, c->db->client_conns, limit);
	pf_client_close(c, PF_CLOSE_CLIENT_DB_CLIENT_LIMIT, NULL, NULL);
	return false;
}

bool pf_client_check_user_limit(pf_client_t *c)
{
	const pf_config_t *cfg = pf_conn_worker(&c->conn)->cfg;
	int limit;

	if (!c->user)
		return true; /* unknown names are not limited (PgBouncer: no global user) */
	limit = c->user->max_user_client_connections > 0 ? c->user->max_user_client_connections
	                                                 : cfg->max_user_client_connections;
	if (limit <= 0 || c->user->client_count <= limit || limit_exempt(c, cfg))
		return true;
	pf_log_debug(c, "user '%s' full (%d > %d)", c->user->name, c->user->client_count, limit);
	pf_client_close(c, PF_CLOSE_CLIENT_USER_CLIENT_LIMIT, NULL, NULL);
	return false;
}

static int handle_startup(pf_client_t *c, const pf_proto_startup_t *st, int consumed, size_t avail)
{
	pf_worker_t *w = pf_conn_worker(&c->conn);
	const char *unsupported[PF_PROTO_STARTUP_MAX_PARAMS];
	size_t n_unsupported = 0;
	char msg[300];

	switch (st->kind) {
	case PF_PROTO_STARTUP_SSL:
		return handle_ssl_request(c, consumed, avail);
	case PF_PROTO_STARTUP_GSSENC:
		/* No GSSAPI encryption: 'N', and the client goes on (it may ask for TLS next). */
		pf_conn_send(&c->conn, "N", 1);
		return consumed;
	case PF_PROTO_STARTUP_CANCEL:
		handle_cancel(c, st->cancel_pid, st->cancel_key);
		return -1;
	case PF_PROTO_STARTUP_NORMAL:
		break;
	}
	if (tls_required_but_missing(c)) {
		pf_client_close(c, PF_CLOSE_CLIENT_STARTUP, "08P01", "SSL required");
		return -1;
	}
	/* Shared copies: thousands of clients log in with the same two names. */
	c->user_name = pf_vars_intern(st->user);
	c->db_name = pf_vars_intern(st->database);
	if (!c->user_name || !c->db_name) {
		pf_client_close(c, PF_CLOSE_CLIENT_OOM, NULL, NULL);
		return -1;
	}
	for (size_t i = 0; i < st->nparams; i++) {
		const char *u = NULL;

		if (!startup_param(c, st->params[i].name, st->params[i].value, &u))
			return -1;
		if (u)
			unsupported[n_unsupported++] = u;
	}
	if (w->cfg->application_name_add_host) {
		/* PgBouncer's format: "<application_name> - <host>:<port>". */
		char host[64], app[512];
		int port;

		pf_conn_addr_text(&c->conn.addr, host, sizeof(host), &port);
		snprintf(app, sizeof(app), "%s - %s:%d",
		         c->peer.vars.v[PF_VAR_APPLICATION_NAME]
		                 ? c->peer.vars.v[PF_VAR_APPLICATION_NAME]
		                 : "",
		         host, port);
		if (pf_vars_set(&c->peer.vars, PF_VAR_APPLICATION_NAME, app) < 0) {
			pf_client_close(c, PF_CLOSE_CLIENT_OOM, NULL, NULL);
			return -1;
		}
	}
	if (st->minor > 0 || n_unsupported > 0) {
		pf_buf_t b;

		pf_buf_init(&b);
		pf_proto_be_negotiate_protocol_version(&b, PF_PROTO_VERSION_3_0, unsupported,
		                                       n_unsupported);
		pf_conn_send_buf(&c->conn, &b);
		pf_buf_free(&b);
	}
	/* max_client_conn, where PgBouncer checks it: at the startup packet, never for the
	 * console, so that a DBA can still look at a full pooler (see pf_client_accept()). */
	if (w->client_count > (size_t)w->cfg->max_client_conn &&
	    strcmp(c->db_name, "pgbouncer") != 0 && strcmp(c->db_name, "pgfunnel") != 0) {
		pf_client_close(c, PF_CLOSE_CLIENT_LIMIT, NULL, NULL);
		return -1;
	}
	c->db = pf_worker_find_database(w, c->db_name);
	if (!c->db) {
		snprintf(msg, sizeof(msg), "no such database: %s", c->db_name);
		pf_client_close(c, PF_CLOSE_CLIENT_NO_DB, "3D000", msg);
		return -1;
	}
	/* Both dropped by pf_client_close(). client_conns counts the client from here on,
	 * logged in or not, for check_db_limit() (refused now or later, it is uncounted there). */
	c->db->client_refs++;
	c->db->client_conns++;
	if (c->db->disabled) {
		snprintf(msg, sizeof(msg), "database \"%s\" is disabled", c->db_name);
		pf_client_close(c, PF_CLOSE_CLIENT_DB_DISABLED, NULL, msg);
		return -1;
	}
	/* A rolling restart (WAIT_FOR_CLIENTS) still serves what was accepted before the
	 * listeners closed; new logins (through the console's unix socket) are refused. */
	if (w->shutdown != PF_SHUTDOWN_NONE && !c->db->admin &&
	    (w->shutdown != PF_SHUTDOWN_WAIT_FOR_CLIENTS || c->conn.id > w->shutdown_last_id)) {
		pf_client_close(c, PF_CLOSE_CLIENT_SHUTDOWN, NULL, NULL);
		return -1;
	}
	c->user = pf_worker_find_user(w, c->user_name);
	if (c->user)
		c->user->client_count++;
	if (!check_db_limit(c) || !pf_client_check_user_limit(c))
		return -1;
	c->conn.raw_mode = false;
	start_auth(c);
	return c->conn.closing ? -1 : consumed;
}

static int client_on_raw(pf_conn_t *conn, const uint8_t *data, size_t len)
{
	pf_client_t *c = (pf_client_t *)conn;
	pf_worker_t *w = pf_conn_worker(conn);
	pf_proto_startup_t st;
	int n;
	char msg[200];

	/* PostgreSQL 17's direct TLS: a TLS handshake record instead of a startup packet. */
	if (len > 0 && data[0] == 0x16 && !c->cold->tls_negotiated && w->tls_accept && !conn->is_unix) {
		c->cold->tls_negotiated = true;
		if (len > INT_MAX || pf_tls_accept(conn, w->tls_accept, data, len, true) < 0) {
			pf_client_close(c, PF_CLOSE_CLIENT_OOM, NULL, NULL);
			return -1;
		}
		return (int)len;
	}
	n = pf_proto_parse_startup(data, len, &st);
	if (n == 0)
		return 0;
	if (n < 0) {
		switch (n) {
		case -EPROTONOSUPPORT:
			snprintf(msg, sizeof(msg), "unsupported frontend protocol or request code");
			pf_client_close(c, PF_CLOSE_CLIENT_STARTUP, "0A000", msg);
			break;
		case -EINVAL:
			pf_client_close(c, PF_CLOSE_CLIENT_STARTUP, "28000",
			                "no PostgreSQL user name specified in startup packet");
			break;
		default:
			pf_client_close(c, PF_CLOSE_CLIENT_STARTUP, "08P01",
			                n == -EMSGSIZE ? "invalid length of startup packet"
			                               : "invalid startup packet layout");
			break;
		}
		return -1;
	}
	return handle_startup(c, &st, n, len);
}

/* ---- prepared statements (transaction and statement mode) ---- */

/* The statements a server keeps when max_prepared_statements was reloaded to 0 under
 * clients that track theirs. */
#define PREPARED_FALLBACK_MAX 200

/* Bookkeeping of a message that goes to the server (or is answered on its behalf). */
static void note_request(pf_client_t *c, const pf_proto_hdr_t *hdr)
{
	c->conn.request_time = pf_net_now(c->conn.net);
	/* An empty query is how pools check a connection before a transaction (psycopg_pool
	 * 3.2): a WAIT_FOR_CLIENTS shutdown does not close the client right after one. */
	c->pc.ping = hdr->type == PF_PROTO_FE_QUERY && hdr->payload_len == 1;
	switch (hdr->type) {
	case PF_PROTO_FE_SYNC:
		/* Statement changes before it now belong to a finished run. */
		if (PF_UNLIKELY(c->peer.prep != NULL))
			pf_prepared_sync(c->peer.prep);
		/* fall through */
	case PF_PROTO_FE_QUERY:
	case PF_PROTO_FE_FUNCTION_CALL: {
		pf_usec_t now = c->conn.request_time;

		if (!c->peer.query_start)
			c->peer.query_start = now;
		if (!c->peer.xact_start)
			c->peer.xact_start = now;
		break;
	}
	case PF_PROTO_FE_PARSE:
	case PF_PROTO_FE_BIND:
	case PF_PROTO_FE_DESCRIBE:
	case PF_PROTO_FE_EXECUTE:
	case PF_PROTO_FE_CLOSE:
	case PF_PROTO_FE_FLUSH:
		/* The server (linked: forwarded messages only come here) leaves idle with the first
		 * message, Sync or not: transaction_timeout counts from it, as PgBouncer's
		 * xact_start does, so Execute + Flush without a Sync cannot hold a server in an
		 * implicit transaction for ever. ReadyForQuery 'I' clears it (server.c). */
		if (!c->peer.xact_start)
			c->peer.xact_start = c->conn.request_time;
		break;
	default:
		break;
	}
	c->pc.pool->stats.bytes_received += hdr->total;
}

/*
 * s owes PF_REQQ_MAX answers: the client waits until half are in (the server side resumes it).
 * Answers pgfunnel gives itself wait behind the server's, which the server may keep in its
 * buffer until a Flush or Sync — stuck behind this very wait — so it is asked for them.
 */
static void send_flush(pf_client_t *c, pf_server_t *s)
{
	static const uint8_t flush[5] = {PF_PROTO_FE_FLUSH, 0, 0, 0, 4};

	pf_conn_flush(&c->conn); /* after what was forwarded */
	pf_conn_send(&s->conn, flush, sizeof(flush));
}

static pf_pkt_action_t queue_full(pf_client_t *c, pf_server_t *s)
{
	c->peer.rq_full = true;
	if (s->rq.n_synth > 0 && !s->rq.copy_in && !s->rq.skip_to_sync)
		send_flush(c, s);
	return PF_PKT_STOP;
}

/*
 * pgfunnel's own messages of a plan for s — the Closes evicting statements, the Parse preparing
 * one — built into b and recorded in s's queue as injected, to be written right before the
 * client's message (after everything forwarded before it). Room in the queue was reserved and
 * the server is neither skipping to a Sync nor in a COPY, so recording cannot fail. Returns 0
 * or -ENOMEM.
 */
static int build_injected(pf_server_t *s, const pf_prepared_plan_t *p, pf_buf_t *b)
{
	size_t m;
	int rc = 0;

	for (unsigned i = 0; i < p->n_evict; i++) {
		m = pf_buf_msg_begin(b, PF_PROTO_FE_CLOSE);
		pf_buf_put_u8(b, 'S');
		pf_buf_put_str(b, p->evict[i]->name);
		pf_buf_msg_end(b, m);
	}
	if (p->inject) {
		m = pf_buf_msg_begin(b, PF_PROTO_FE_PARSE);
		pf_buf_put_str(b, p->inject->name);
		pf_buf_put_bytes(b, p->inject->body, p->inject->body_len);
		pf_buf_msg_end(b, m);
	}
	if (b->failed)
		return -ENOMEM;
	for (unsigned i = 0; rc == 0 && i < p->n_evict; i++)
		rc = pf_reqq_inject(&s->rq, PF_PROTO_FE_CLOSE, p->evict_tag[i]);
	if (rc == 0 && p->inject)
		rc = pf_reqq_inject(&s->rq, PF_PROTO_FE_PARSE, p->inject_tag);
	assert(rc == 0);
	return rc < 0 ? -ENOMEM : 0;
}

/* Carries out a plan for the client's message at hand (names: where its names are). */
static pf_pkt_action_t apply_plan(pf_client_t *c, pf_server_t *s, const pf_proto_hdr_t *hdr,
                                  const pf_proto_names_t *names, const pf_prepared_plan_t *p)
{
	pf_pool_stats_t *st = &c->pc.pool->stats;
	uint8_t prefix[512];
	pf_proto_renamed_t out;
	pf_buf_t b;
	int rc;

	pf_log_debug(c, "prepared %c %s: evict=%s(+%u) inject=%s rename=%s synth=%c tag=%u",
	             hdr->type, names->stmt, p->n_evict ? p->evict[0]->name : "-",
	             p->n_evict ? p->n_evict - 1u : 0u, p->inject ? p->inject->name : "-",
	             p->rename ? p->rename : "-", p->synth ? p->synth : '-', p->tag);
	st->client_parse_count += p->client_parses;
	st->server_parse_count += p->server_parses;
	st->bind_count += p->binds;
	pf_buf_init(&b);
	if ((p->n_evict || p->inject) && build_injected(s, p, &b) < 0) {
		pf_buf_free(&b);
		pf_client_close(c, PF_CLOSE_CLIENT_OOM, NULL, NULL);
		return PF_PKT_STOP;
	}
	note_request(c, hdr);
	if (!p->rename) {
		/* Our own messages (if any) go out on their own, after what was forwarded. */
		if (b.len > 0) {
			pf_conn_flush(&c->conn);
			pf_conn_send_buf(&s->conn, &b);
		}
		pf_buf_free(&b);
	}
	if (p->synth) {
		/* Answered by pgfunnel, in its place among the server's answers. */
		rc = pf_reqq_push_synth(&s->rq, p->synth, p->tag);
		assert(rc == 0);
		if (rc < 0) {
			pf_client_close(c, PF_CLOSE_CLIENT_OOM, NULL, NULL);
			return PF_PKT_STOP;
		}
		pf_server_give_synth(s);
		return PF_PKT_SKIP;
	}
	rc = pf_reqq_push_tagged(&s->rq, hdr->type, 0, p->tag);
	assert(rc == 0);
	if (rc < 0) {
		pf_buf_free(&b);
		pf_client_close(c, PF_CLOSE_CLIENT_OOM, NULL, NULL);
		return PF_PKT_STOP;
	}
	if (!p->rename)
		return PF_PKT_FORWARD;
	/* The portal name is kept; a long one gets a prefix of its own. Our own messages and the
	 * renamed head go out as one replacement (one write with the bytes around it). */
	if (names->portal_len + 64 > sizeof(prefix)) {
		size_t cap = (size_t)names->portal_len + 64;
		uint8_t *big = malloc(cap);

		rc = big ? pf_proto_rename(names, NULL, p->rename, big, cap, &out) : -ENOMEM;
		if (rc == 0)
			pf_buf_put_bytes(&b, big, out.prefix_len);
		free(big);
	} else {
		rc = pf_proto_rename(names, NULL, p->rename, prefix, sizeof(prefix), &out);
		if (rc == 0)
			pf_buf_put_bytes(&b, prefix, out.prefix_len);
	}
	if (rc == 0 && b.failed)
		rc = -ENOMEM;
	if (rc == 0)
		pf_conn_replace_head(&c->conn, b.data, b.len, out.tail_off);
	pf_buf_free(&b);
	if (rc < 0) {
		/* The queue expects the message: the server cannot be told it without it. */
		pf_client_close(c, rc == -EMSGSIZE ? PF_CLOSE_CLIENT_PROTOCOL : PF_CLOSE_CLIENT_OOM,
		                rc == -EMSGSIZE ? "54000" : NULL,
		                rc == -EMSGSIZE ? "message too long after renaming its statement"
		                                : NULL);
		return PF_PKT_STOP;
	}
	return PF_PKT_REPLACED;
}

/*
 * True when query text q (n bytes, maybe cut short) may be a DISCARD or DEALLOCATE: they
 * change the client's statements once answered, so named messages after it wait for that.
 */
static bool may_forget_statements(const uint8_t *q, size_t n)
{
	static const char *const words[] = {"DISCARD", "DEALLOCATE"};

	/* Whitespace and comments (as the SQL scanner skips them) before the first word. */
	for (;;) {
		if (n > 0 && (*q == ' ' || (*q >= '\t' && *q <= '\r'))) {
			q++;
			n--;
		} else if (n >= 2 && q[0] == '-' && q[1] == '-') {
			while (n > 0 && *q != '\n' && *q != '\r') {
				q++;
				n--;
			}
		} else if (n >= 2 && q[0] == '/' && q[1] == '*') {
			/* Nested like Postgres's; unterminated in what is here: maybe. */
			unsigned depth = 1;

			q += 2;
			n -= 2;
			while (depth > 0) {
				if (n < 2)
					return true;
				if (q[0] == '*' && q[1] == '/')
					depth--;
				else if (q[0] == '/' && q[1] == '*')
					depth++;
				else {
					q++;
					n--;
					continue;
				}
				q += 2;
				n -= 2;
			}
		} else {
			break;
		}
	}
	if (n == 1 && (*q == '-' || *q == '/'))
		return true; /* a comment may begin */
	for (size_t w = 0; w < 2; w++) {
		size_t i = 0;

		while (words[w][i] && i < n && (q[i] & ~0x20) == words[w][i])
			i++;
		if (!words[w][i] || i == n)
			return true; /* the word, or all there is of it so far */
	}
	return false;
}

/*
 * A Parse, Bind, Describe or Close from a client whose named statements are tracked, going to
 * s. Sets *plain (and returns nothing useful) when the message passes as any other: unnamed
 * statements, portals, and every message the server will not act on anyway (it is skipping
 * to a Sync, or reading COPY data).
 */
static pf_pkt_action_t prepared_packet(pf_client_t *c, pf_server_t *s, const pf_proto_hdr_t *hdr,
                                       const uint8_t *pkt, size_t avail, bool *plain)
{
	pf_worker_t *w = pf_conn_worker(&c->conn);
	uint32_t max = w->cfg->max_prepared_statements > 0
	                       ? (uint32_t)w->cfg->max_prepared_statements
	                       : PREPARED_FALLBACK_MAX;
	pf_prepared_plan_t plan;
	pf_proto_names_t n;
	int rc;

	*plain = true;
	if (s->rq.skip_to_sync || s->rq.copy_in_open)
		return PF_PKT_FORWARD;
	rc = pf_proto_read_names(pkt, avail, &n);
	if (rc == 0) {
		/* The names are not all here yet: hold a little more of the message. */
		uint32_t want = (uint32_t)avail < 32 ? 64 : (uint32_t)avail * 2;

		*plain = false;
		if (avail >= c->conn.hold_max) {
			pf_client_close(c, PF_CLOSE_CLIENT_PROTOCOL, "54000",
			                "prepared statement or portal name too long");
			return PF_PKT_STOP;
		}
		want = want < hdr->total ? want : hdr->total;
		want = want < c->conn.hold_max ? want : c->conn.hold_max;
		pf_conn_need_head(&c->conn, want);
		return PF_PKT_NEED_HEAD;
	}
	if (rc < 0) {
		*plain = false;
		pf_client_close(c, PF_CLOSE_CLIENT_PROTOCOL, "08P01", "invalid message format");
		return PF_PKT_STOP;
	}
	if (n.stmt_len == 0 ||
	    ((hdr->type == PF_PROTO_FE_DESCRIBE || hdr->type == PF_PROTO_FE_CLOSE) &&
	     n.kind != 'S'))
		return PF_PKT_FORWARD;
	if (PF_UNLIKELY(!pf_utf8_valid(n.stmt, n.stmt_len))) {
		/* Postgres refuses such a name (22021, with a UTF8 database): sent as it is, for
		 * it to say so. Should it accept it (SQL_ASCII), it holds a statement pgfunnel
		 * does not know of, and serves nobody else. */
		s->prep_unsure = true;
		return PF_PKT_FORWARD;
	}
	*plain = false;
	if (pf_prepared_is_broken(c->peer.prep) || s->rq.broken) {
		/* What the server did with the client's statements can no longer be known. */
		pf_client_close(c, PF_CLOSE_CLIENT_SERVER_GONE, "08006",
		                "server connection lost track of prepared statements");
		return PF_PKT_STOP;
	}
	if (pf_server_prep_must_wait(s, hdr->type == PF_PROTO_FE_PARSE)) {
		/* Its earlier statement changes are answered after the Sync it sent, or a query
		 * it sent (a DISCARD ALL?) may change what it has: resumed by the server side once
		 * the answers are in (asked for with a Flush when nothing else makes the server
		 * send them). */
		c->peer.prep_wait = true;
		c->peer.prep_wait_parse = hdr->type == PF_PROTO_FE_PARSE;
		if (c->peer.prep_barrier && !s->rq.skip_to_sync && !s->rq.copy_in)
			send_flush(c, s);
		pf_log_debug(c, "prepared: waiting for earlier statement changes");
		return PF_PKT_STOP;
	}
	if (hdr->type == PF_PROTO_FE_PARSE && avail < hdr->total) {
		if (hdr->total > c->conn.hold_max) {
			pf_client_close(c, PF_CLOSE_CLIENT_PROTOCOL, "54000",
			                "prepared statement too large to track (max 1 MB)");
			return PF_PKT_STOP;
		}
		return PF_PKT_NEED_WHOLE;
	}
	if (!c->peer.prep && !(c->peer.prep = pf_prepared_client_new(w->prepared))) {
		pf_client_close(c, PF_CLOSE_CLIENT_OOM, NULL, NULL);
		return PF_PKT_STOP;
	}
	if (!s->prep && !(s->prep = pf_prepared_server_new(w->prepared))) {
		pf_client_close(c, PF_CLOSE_CLIENT_OOM, NULL, NULL);
		return PF_PKT_STOP;
	}
	/* Room for the evicting Closes, the injected Parse and the message itself. */
	rc = pf_reqq_reserve(&s->rq, PF_PREPARED_EVICT_MAX + 2);
	if (rc == -ENOBUFS)
		return queue_full(c, s);
	if (rc < 0) {
		pf_client_close(c, PF_CLOSE_CLIENT_OOM, NULL, NULL);
		return PF_PKT_STOP;
	}
	switch (hdr->type) {
	case PF_PROTO_FE_PARSE:
		rc = pf_prepared_parse(c->peer.prep, s->prep, max,
		                       s->tx_status == PF_PROTO_TX_FAILED, n.stmt, pkt + n.end,
		                       hdr->total - n.end, &plan);
		break;
	case PF_PROTO_FE_CLOSE:
		rc = pf_prepared_close(c->peer.prep, n.stmt, &plan);
		break;
	default:
		rc = pf_prepared_use(c->peer.prep, s->prep, max, n.stmt,
		                     hdr->type == PF_PROTO_FE_BIND, &plan);
		break;
	}
	if (rc == 0 && hdr->type == PF_PROTO_FE_BIND && plan.stmt &&
	    may_forget_statements(plan.stmt->body, plan.stmt->body_len))
		c->peer.prep_barrier = true; /* a named DISCARD / DEALLOCATE about to run */
	if (rc == -EMFILE) {
		pf_client_close(c, PF_CLOSE_CLIENT_PROTOCOL, "54000",
		                "too many prepared statements for one client");
		return PF_PKT_STOP;
	}
	if (rc < 0) {
		pf_client_close(c, PF_CLOSE_CLIENT_OOM, NULL, NULL);
		return PF_PKT_STOP;
	}
	return apply_plan(c, s, hdr, &n, &plan);
}

/* The messages that may name a prepared statement: Parse, Bind, Describe, Close. */
static const bool names_statement[256] = {
        [PF_PROTO_FE_PARSE] = true,
        [PF_PROTO_FE_BIND] = true,
        [PF_PROTO_FE_DESCRIBE] = true,
        [PF_PROTO_FE_CLOSE] = true,
};

/*
 * True when a Parse, Bind, Describe or Close certainly names no statement (the unnamed one, or
 * a portal), from its first bytes: such messages pass as any other, at no extra cost.
 */
static inline bool names_no_statement(const pf_proto_hdr_t *hdr, const uint8_t *pkt, size_t avail)
{
	const uint8_t *p = pkt + PF_PROTO_HDR_LEN;

	if (avail < PF_PROTO_HDR_LEN + 2)
		return false;
	switch (hdr->type) {
	case PF_PROTO_FE_PARSE:
		return p[0] == 0;
	case PF_PROTO_FE_BIND:
		return p[0] == 0 && p[1] == 0; /* unnamed portal, unnamed statement */
	default:                               /* Describe, Close */
		return p[0] == 'P' || (p[0] == 'S' && p[1] == 0);
	}
}

static pf_pkt_action_t client_on_packet(pf_conn_t *conn, const pf_proto_hdr_t *hdr,
                                        const uint8_t *pkt, size_t avail)
{
	pf_client_t *c = (pf_client_t *)conn;
	pf_server_t *s;
	int rc;
	if (c->pc.state == PF_CL_LOGIN)
		return auth_packet(c, hdr, pkt, avail);
	if (PF_UNLIKELY(pf_client_in_lookup(c)))
		return PF_PKT_STOP; /* held until its password exchange begins */
	if (hdr->type == PF_PROTO_FE_TERMINATE) {
		pf_client_close(c, PF_CLOSE_CLIENT_EXIT, NULL, NULL);
		return PF_PKT_STOP;
	}
	if (!pf_proto_is_fe_type(hdr->type)) {
		char msg[100];

		snprintf(msg, sizeof(msg), "invalid frontend message type %d", hdr->type);
		pf_client_close(c, PF_CLOSE_CLIENT_PROTOCOL, "08P01", msg);
		return PF_PKT_STOP;
	}
	/* disable_pqexec: PgBouncer refuses the simple Query message from every logged-in
	 * client, the console's included. */
	if (PF_UNLIKELY(hdr->type == PF_PROTO_FE_QUERY) &&
	    pf_conn_worker(conn)->cfg->disable_pqexec) {
		pf_log_error(c, "client used \"Query\" packet type");
		pf_client_close(c, PF_CLOSE_CLIENT_PQEXEC, NULL, NULL);
		return PF_PKT_STOP;
	}
	if (pf_client_is_console(c))
		return pf_conn_worker(conn)->ops->console_packet(c, hdr, pkt, avail);
	if (c->pc.state != PF_CL_ACTIVE && c->pc.state != PF_CL_WAITING)
		return PF_PKT_STOP; /* still waiting for its login to finish */
	s = pf_client_server(c);
	if (!s && PF_UNLIKELY(pf_conn_worker(conn)->shutdown == PF_SHUTDOWN_WAIT_FOR_SERVERS)) {
		/* PgBouncer 1.23+: no server is handed out any more; the process exits once the
		 * linked ones are back. */
		pf_client_close(c, PF_CLOSE_CLIENT_SHUTDOWN, "08P01", "server shutting down");
		return PF_PKT_STOP;
	}
	if (!s) {
		if (!pf_pool_acquire(&c->pc)) {
			/* Queued: no reading until a server is linked (session.c resumes it). */
			if (!c->conn.closing)
				pf_conn_pause_reading(&c->conn, true);
			return PF_PKT_STOP;
		}
		if (c->conn.closing)
			return PF_PKT_STOP;
		s = pf_client_server(c);
	}
	if (s->task != PF_SV_TASK_NONE)
		return PF_PKT_STOP; /* parameters being synced; resumed when done */
	if (PF_UNLIKELY(c->peer.prep_on) && hdr->type == PF_PROTO_FE_PARSE &&
	    avail > PF_PROTO_HDR_LEN && pkt[PF_PROTO_HDR_LEN] == 0 &&
	    may_forget_statements(pkt + PF_PROTO_HDR_LEN + 1, avail - PF_PROTO_HDR_LEN - 1))
		c->peer.prep_barrier = true;
	if (names_statement[hdr->type] && c->peer.prep_on && !names_no_statement(hdr, pkt, avail)) {
		bool plain;
		pf_pkt_action_t act = prepared_packet(c, s, hdr, pkt, avail, &plain);

		if (!plain)
			return act;
	}
	/* Every forwarded message is recorded with what it will make the server answer. */
	rc = pf_reqq_push(&s->rq, hdr->type, 0);
	if (rc == -ENOBUFS)
		return queue_full(c, s);
	if (rc < 0) {
		pf_client_close(c, PF_CLOSE_CLIENT_OOM, NULL, NULL);
		return PF_PKT_STOP;
	}
	note_request(c, hdr);
	return PF_PKT_FORWARD;
}

static void client_on_event(pf_conn_t *conn, pf_conn_event_t ev, int status)
{
	pf_client_t *c = (pf_client_t *)conn;

	switch (ev) {
	case PF_CONN_EV_EOF:
		pf_client_close(c, PF_CLOSE_CLIENT_EOF, NULL, NULL);
		break;
	case PF_CONN_EV_ERROR:
		if (status == -EMSGSIZE)
			pf_client_close(c, PF_CLOSE_CLIENT_PROTOCOL, "08P01",
			                "message too long (max_packet_size)");
		else if (status == -ENOBUFS)
			/* A message pgfunnel must read whole is longer than it may hold. */
			pf_client_close(c, PF_CLOSE_CLIENT_PROTOCOL, "08P01",
			                c->pc.state == PF_CL_LOGIN
			                        ? "authentication message too long (pkt_buf)"
			                        : "message too long to be held whole");
		else if (status == -EBADMSG)
			/* The header at rpos is what was refused: type byte 0 or a length < 4. */
			pf_client_close(c, PF_CLOSE_CLIENT_PROTOCOL, "08P01",
			                c->conn.rbuf && c->conn.rbuf[c->conn.rpos] == 0
			                        ? "invalid frontend message type 0"
			                        : "invalid message length");
		else
			pf_client_close(c, PF_CLOSE_CLIENT_ERROR, NULL, NULL);
		break;
	case PF_CONN_EV_DRAINED:
		/* Everything it sent is through. A message that owes no answer (a lone Flush, a
		 * CopyDone outside a COPY), or the end of one that was half-way through when its
		 * server's ReadyForQuery came, leaves a server that nobody releases otherwise. */
		if (c->pc.link && pf_server_may_release(pf_client_server(c)))
			pf_server_release(pf_client_server(c));
		break;
	default:
		break;
	}
}

void pf_client_check_login_timeouts(pf_worker_t *w, pf_usec_t now)
{
	const pf_config_t *cfg = w->cfg;
	pf_list_node_t *it, *tmp;

	if (cfg->client_login_timeout <= 0)
		return;
	PF_LIST_FOREACH(&w->login_clients, it, tmp)
	{
		pf_client_t *c = pf_client_from_node(it);

		if (now - c->conn.connect_time > cfg->client_login_timeout)
			pf_client_close(c, PF_CLOSE_CLIENT_LOGIN_TIMEOUT, NULL, NULL);
	}
}

/*
 * Clients that cannot read (a full buffer behind a server that does not read, or queued for a
 * server) would not see their peer leave: ask the kernel. A client gone that neither read nor
 * forwarded anything for a janitor period goes with its unprocessed input. (A server's EOF is told
 * only after its last bytes reached the client: those are the client's to read.)
 */
static void close_abandoned(pf_pool_t *pool)
{
	pf_list_t *lists[] = {&pool->waiting_clients, &pool->active_clients};
	pf_list_node_t *it, *tmp;

	for (size_t i = 0; i < PF_ARRAY_SIZE(lists); i++) {
		PF_LIST_FOREACH(lists[i], it, tmp)
		{
			pf_client_t *c = pf_client_from_node(it);

			if (pf_conn_is_abandoned(&c->conn))
				pf_client_close(c, PF_CLOSE_CLIENT_EOF, NULL, NULL);
		}
	}
}

/*
 * Clients of pool that borrow its servers for their auth_query lookup are still logging in:
 * client_login_timeout bounds the wait for a server and the query alike (a query stuck on a
 * lock would otherwise hold the login for ever).
 */
static void expire_lookups(pf_pool_t *pool, pf_usec_t now)
{
	pf_usec_t limit = pool->worker->cfg->client_login_timeout;
	pf_list_t *lists[] = {&pool->waiting_clients, &pool->active_clients};
	pf_list_node_t *it, *tmp;

	if (limit <= 0)
		return;
	for (size_t i = 0; i < PF_ARRAY_SIZE(lists); i++) {
		PF_LIST_FOREACH(lists[i], it, tmp)
		{
			pf_client_t *c = pf_client_from_node(it);

			if (PF_UNLIKELY(pf_client_in_lookup(c)) && now - c->conn.connect_time > limit)
				pf_client_close(c, PF_CLOSE_CLIENT_LOGIN_TIMEOUT, NULL, NULL);
		}
	}
}

/*
 * query_wait_notify: a logged-in client that has waited more than that many whole seconds for
 * a server is told so once per wait, with PgBouncer's NOTICE (PgBouncer compares whole
 * seconds too: notify=1 speaks after two). Nothing of a server's is on its way to a waiting
 * client, so the notice cannot land inside another message.
 */
static void notify_waiters(pf_pool_t *pool, pf_usec_t now)
{
	int64_t notify = pool->worker->cfg->query_wait_notify / PF_USEC_PER_SEC;
	pf_list_node_t *it, *tmp;

	if (pool->worker->cfg->query_wait_notify <= 0)
		return;
	PF_LIST_FOREACH(&pool->waiting_clients, it, tmp)
	{
		pf_client_t *c = pf_client_from_node(it);
		pf_buf_t b;

		if (c->pc.state != PF_CL_WAITING || c->pc.wait_notified || pf_client_in_lookup(c) ||
		    !c->pc.wait_start || (now - c->pc.wait_start) / PF_USEC_PER_SEC <= notify)
			continue;
		assert(!c->pc.link);
		c->pc.wait_notified = true;
		pf_buf_init(&b);
		pf_proto_be_notice(
		        &b, "NOTICE", "00000",
		        "No server connection available in postgres backend, client being "
		        "queued",
		        NULL, NULL);
		if (b.failed)
			pf_log_warning(c, "Sending queue warning failed");
		else
			pf_conn_send_buf(&c->conn, &b);
		pf_buf_free(&b);
	}
}

/*
 * Nothing c sent can still produce a byte on s, and neither side is half-way through a
 * message: what PgBouncer calls a "ready" server.
 */
static bool server_is_ready(const pf_client_t *c, const pf_server_t *s)
{
	return s->tx_status == PF_PROTO_TX_IDLE && pf_reqq_len(&s->rq) == 0 &&
	       pf_reqq_is_idle(&s->rq) && s->task == PF_SV_TASK_NONE &&
	       !pf_conn_mid_message(&c->conn) && !pf_conn_mid_message(&s->conn) &&
	       !c->peer.query_start && !c->peer.xact_start;
}

/*
 * A logged-in client without a server that sent nothing for this long is parked (pf_conn_park):
 * its socket handle goes back to the loop's slab until it speaks again. Thousands of idle
 * clients (gevent workers holding their connections) then cost much less memory each, and a
 * busy client never pays for the park and the unpark.
 */
#define PF_CLIENT_PARK_IDLE PF_USEC_PER_SEC

void pf_client_maintain(pf_pool_t *pool, pf_usec_t now)
{
	pf_list_node_t *it, *tmp;
	pf_usec_t idle_limit = pf_pool_client_idle_timeout(pool);
	pf_usec_t query_limit = pf_pool_query_timeout(pool);
	pf_usec_t idle_tx_limit = pf_pool_idle_transaction_timeout(pool);
	pf_usec_t tx_limit = pf_pool_transaction_timeout(pool);
	bool fast_close = pool->worker->cfg->server_fast_close;

	if (pool->db->admin)
		return;
	close_abandoned(pool);
	expire_lookups(pool, now);
	notify_waiters(pool, now);
	/* Timeouts of logged-in clients (0 = off for each). */
	PF_LIST_FOREACH(&pool->active_clients, it, tmp)
	{
		pf_client_t *c = pf_client_from_node(it);
		pf_server_t *s = pf_client_server(c);

		if (!s) {
			if (idle_limit > 0 && now - c->conn.request_time > idle_limit)
				pf_client_close(c, PF_CLOSE_CLIENT_IDLE_TIMEOUT, NULL, NULL);
			else if (!c->conn.parked && !pf_client_in_lookup(c) &&
			         now - c->conn.request_time >= PF_CLIENT_PARK_IDLE &&
			         now - c->pc.released >= PF_CLIENT_PARK_IDLE)
				pf_conn_park(&c->conn);
			continue;
		}
		if (query_limit > 0 && c->peer.query_start &&
		    now - c->peer.query_start > query_limit) {
			pf_client_close(c, PF_CLOSE_CLIENT_QUERY_TIMEOUT, NULL, NULL);
			continue;
		}
		/* Idle in a transaction, or holding its server with extended-protocol messages
		 * whose Sync it does not send. */
		if (idle_tx_limit > 0 && !c->peer.query_start &&
		    (s->tx_status != PF_PROTO_TX_IDLE ||
		     (pf_reqq_len(&s->rq) == 0 && !pf_reqq_is_idle(&s->rq))) &&
		    now - c->conn.request_time > idle_tx_limit) {
			pf_client_close(c, PF_CLOSE_CLIENT_IDLE_TX_TIMEOUT, NULL, NULL);
			continue;
		}
		/* transaction_timeout: from the first query after the server was last idle (the
		 * xact_start ReadyForQuery 'I' clears), running or idle in it alike, as PgBouncer.
		 */
		if (tx_limit > 0 && c->peer.xact_start && now - c->peer.xact_start > tx_limit) {
			pf_client_close(c, PF_CLOSE_CLIENT_TX_TIMEOUT, NULL, NULL);
			continue;
		}
		/* server_fast_close: a server marked for closing (RECONNECT, changed settings) is
		 * not left to its session-mode client until it leaves: as soon as it is ready the
		 * client is disconnected and the server closed with it (PgBouncer's janitor). */
		if (fast_close && s->ps.close_needed && server_is_ready(c, s))
			pf_client_close(c, PF_CLOSE_CLIENT_CONFIG_CHANGED, NULL, NULL);
	}
}
