/*
 * server: a connection from pgfunnel to Postgres — connect, log in, run the pooler's own
 * queries, forward results to the linked client and notice when it is free again.
 *
 * Answer bookkeeping: every message forwarded to the server is recorded in its request queue
 * (reqq.h), and every message it sends is matched against that queue. A server is clean — may
 * go back to the pool — only when the queue says nothing is owed or awaited, the last
 * ReadyForQuery said 'I', no task of the pooler's own is running and no message is half-way
 * through in either direction. In transaction mode the server is released at such a
 * ReadyForQuery; in statement mode a ReadyForQuery that is not 'I' ends the client ("transaction
 * blocks not allowed in statement pooling mode", as PgBouncer); in session mode it is released when
 * the client leaves. A server whose answers cannot be accounted for is never reused.
 *
 * The server knows its client only as a pf_server_peer_t (session parameters, timings) and a
 * pool member; news for the client goes up through the pool's ops (resume, close). Called by
 * session.c (launch, attach, tasks, close) and client.c (forwarding, release, cancel);
 * pf_server_close() is the only way a server ends.
 */
#include "pfbuild.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/crypto.h>

#include "pgfunnel/log.h"
#include "pgfunnel/pool.h"
#include "pgfunnel/runtime.h"
#include "pgfunnel/server.h"
#include "pgfunnel/stats.h"
#include "pgfunnel/tls.h"

#ifndef PF_DEFAULT_UNIX_SOCKET_DIR
#define PF_DEFAULT_UNIX_SOCKET_DIR "/var/run/postgresql"
#endif

static pf_pkt_action_t server_on_packet(pf_conn_t *conn, const pf_proto_hdr_t *hdr,
                                        const uint8_t *pkt, size_t avail);
static void server_on_event(pf_conn_t *conn, pf_conn_event_t ev, int status);
static void server_on_forwarded(pf_conn_t *conn);
static void server_on_free(pf_conn_t *conn);
static int server_on_raw(pf_conn_t *conn, const uint8_t *data, size_t len);
static void detach_cancels(pf_server_t *s);

static const pf_conn_ops_t server_ops = {
        .on_packet = server_on_packet,
        .on_raw = server_on_raw,
        .on_event = server_on_event,
        .on_forwarded = server_on_forwarded,
        .on_free = server_on_free,
};

static const char *const close_texts[] = {
        [PF_SV_CLOSE_CONNECT_FAILED] = "connect failed",
        [PF_SV_CLOSE_LOGIN_FAILED] = "login failed",
        [PF_SV_CLOSE_EOF] = "server closed the connection",
        [PF_SV_CLOSE_ERROR] = "socket error",
        [PF_SV_CLOSE_PROTOCOL] = "protocol violation",
        [PF_SV_CLOSE_CLIENT_GONE] = "client disconnected while the server was not idle",
        [PF_SV_CLOSE_LIFETIME] = "server lifetime over",
        [PF_SV_CLOSE_IDLE_TIMEOUT] = "server idle timeout",
        [PF_SV_CLOSE_CONNECT_TIMEOUT] = "connect timeout",
        [PF_SV_CLOSE_RESET_FAILED] = "reset or check query failed",
        [PF_SV_CLOSE_SHUTDOWN] = "shutting down",
        [PF_SV_CLOSE_ADMIN] = "reconnect requested",
        [PF_SV_CLOSE_POOL_GONE] = "database removed",
        [PF_SV_CLOSE_STATEMENT_MODE] = "transaction blocks not allowed in statement pooling mode",
        [PF_SV_CLOSE_EVICTED] = "evicted to make room for another pool",
        [PF_SV_CLOSE_UNCERTAIN] = "cannot tell what the server still owes or holds",
        [PF_SV_CLOSE_OVER_SIZE] = "pool over its size or connection limit",
};

_Static_assert(PF_SV_CLOSE_REASONS <= 32, "worker.h's server_closes[] is too small");

const char *pf_server_close_reason_name(pf_server_close_reason_t reason)
{
	return close_texts[reason];
}

size_t pf_server_describe(const pf_server_t *s, char *buf, size_t n)
{
	char host[64];
	int port, len;

	pf_conn_addr_text(&s->conn.addr, host, sizeof(host), &port);
	if (s->conn.addr.sa.sa_family == AF_UNSPEC) {
		/* Still resolving the host name: name it as configured. */
		pf_strlcpy(host, s->ps.pool->db->host ? s->ps.pool->db->host : "?", sizeof(host));
		port = s->ps.pool->db->port;
	}
	/* The id, not the heap address: the same value SHOW SERVERS prints as ptr. */
	len = snprintf(buf, n, "S-0x%" PRIx64 ": %s/%s@%s:%d", s->conn.id, s->ps.pool->db->name,
	               s->ps.pool->user->name, host, port);
	return len < 0 ? 0 : ((size_t)len < n ? (size_t)len : n - 1);
}

bool pf_server_is_clean(const pf_server_t *s)
{
	/* Unprocessed input after the answer that freed it answers nothing the client sent. */
	return s->ready && s->tx_status == PF_PROTO_TX_IDLE && pf_reqq_is_reusable(&s->rq) &&
	       s->task == PF_SV_TASK_NONE && !s->conn.closing && !pf_conn_mid_message(&s->conn) &&
	       !pf_conn_has_input(&s->conn) && !s->prep_unsure &&
	       !pf_prepared_server_is_unsure(s->prep);
}

bool pf_server_may_release(const pf_server_t *s)
{
	const pf_conn_t *cc = s->conn.peer;

	/* Cheapest first: usually the client has just sent a request that is owed. */
	return pf_reqq_is_idle(&s->rq) && s->ps.link && cc && s->tx_status == PF_PROTO_TX_IDLE &&
	       s->task == PF_SV_TASK_NONE && !pf_conn_mid_message(cc) &&
	       !pf_conn_mid_message(&s->conn) && !s->conn.fwd_pending &&
	       !pf_conn_has_input(&s->conn) && pf_pool_mode(s->ps.pool) != PF_POOL_SESSION;
}

bool pf_server_is_uncertain(const pf_server_t *s)
{
	return s->rq.broken || s->rq.doubtful || s->prep_unsure ||
	       pf_prepared_server_is_unsure(s->prep);
}

/* A tagged request the server skipped (after an error, or as COPY data): its change failed. */
static void on_request_dropped(void *arg, const pf_reqq_entry_t *e)
{
	pf_server_t *s = arg;

	if (s->peer && s->peer->prep)
		pf_prepared_resolve(s->peer->prep, e->tag, false);
}

/* Where a database's servers live: a unix socket path, or a host name and port. */
typedef struct target {
	char path[108];
	const char *host;
	char host_buf[256];
	int port;
	unsigned index, count; /* the host's place in a list of count (0: a single host) */
} target_t;

static int pick_target(pf_pool_t *pool, target_t *t)
{
	pf_database_t *db = pool->db;
	const char *hosts = db->host;
	char item[256];
	int count = 0, want, len;

	t->port = db->port;
	t->host = NULL;
	t->path[0] = '\0';
	if (!hosts || !*hosts) {
		snprintf(t->path, sizeof(t->path), "%s/.s.PGSQL.%d", PF_DEFAULT_UNIX_SOCKET_DIR,
		         t->port);
		return 0;
	}
	/*
	 * A comma list of hosts, as PgBouncer's dns_connect() walks it with a counter per pool:
	 * round-robin takes the next host for each new connection; disable stays on the current
	 * host and moves to the next one only when a connection attempt to it failed
	 * (pf_server_close; it never moves back by itself: only a failure of that host moves it
	 * on again).
	 */
	for (const char *cur = hosts; pf_config_list_next(&cur, item, sizeof(item)) > 0;)
		count++;
	if (count == 0)
		return -EINVAL;
	want = (int)(pool->host_rr % (unsigned)count);
	if (count > 1 && !db->lb_disable)
		pool->host_rr++;
	t->index = (unsigned)want;
	t->count = count > 1 ? (unsigned)count : 0;
	const char *cur = hosts;

	for (int i = 0; i <= want; i++) {
		len = pf_config_list_next(&cur, item, sizeof(item));
		if (len <= 0)
			return -EINVAL;
	}
	if (item[0] == '/') {
		len = snprintf(t->path, sizeof(t->path), "%s/.s.PGSQL.%d", item, t->port);
		return len < (int)sizeof(t->path) ? 0 : -ENAMETOOLONG;
	}
	if (item[0] == '@')
		return -EAFNOSUPPORT; /* abstract sockets need libuv >= 1.46 */
	pf_strlcpy(t->host_buf, item, sizeof(t->host_buf));
	t->host = t->host_buf;
	return 0;
}

/* Is name one of the hosts of db's host list? */
static bool db_has_host(const pf_database_t *db, const char *name)
{
	char item[256];

	if (!db->host)
		return false;
	for (const char *cur = db->host; pf_config_list_next(&cur, item, sizeof(item)) > 0;)
		if (strcmp(item, name) == 0)
			return true;
	return false;
}

/*
 * The DNS cache's news: a new answer for name lacks addr. As PgBouncer's tag_host_addr_dirty()
 * does, every server of the pools using that name and connected to that address is marked to
 * be closed (an idle one by the janitor, a busy one when released).
 */
static void on_dns_addr_gone(void *arg, const char *name, const pf_sockaddr_t *addr)
{
	pf_worker_t *w = arg;
	pf_list_node_t *it, *tmp, *sit, *stmp;
	char text[64];
	int port;

	pf_conn_addr_text(addr, text, sizeof(text), &port);
	pf_log_info(NULL, "DNS: %s no longer resolves to %s: closing its servers", name, text);
	PF_LIST_FOREACH(&w->pools, it, tmp)
	{
		pf_pool_t *p = PF_CONTAINER_OF(it, pf_pool_t, node);
		pf_list_t *lists[] = {&p->active_servers, &p->idle_servers, &p->used_servers,
		                      &p->tested_servers, &p->new_servers};

		if (p->db->admin || !db_has_host(p->db, name))
			continue;
		for (size_t i = 0; i < PF_ARRAY_SIZE(lists); i++) {
			PF_LIST_FOREACH(lists[i], sit, stmp)
			{
				pf_pool_server_t *ps = PF_CONTAINER_OF(sit, pf_pool_server_t, node);
				pf_server_t *s = PF_CONTAINER_OF(ps, pf_server_t, ps);

				if (s->host && strcmp(s->host, name) == 0 &&
				    pf_dns_addr_equal(&s->conn.addr, addr))
					ps->close_needed = true;
			}
		}
	}
}

pf_dns_t *pf_server_dns(pf_worker_t *w)
{
	const pf_config_t *cfg = w->cfg;
	int rc;

	if (!w->dns) {
		if (!(w->dns = pf_dns_new_uv(&w->net, on_dns_addr_gone, w)))
			return NULL;
		if (cfg->resolv_conf && *cfg->resolv_conf &&
		    (rc = pf_dns_set_resolv_conf(w->dns, cfg->resolv_conf)) < 0)
			pf_log_error(NULL, "resolv_conf %s: %s (using the system resolver)",
			             cfg->resolv_conf,
			             rc == -ENOENT ? "no usable nameserver line" : uv_strerror(rc));
	}
	pf_dns_set_ttl(w->dns, cfg->dns_max_ttl, cfg->dns_nxdomain_ttl);
	rc = pf_dns_set_zone_check(w->dns, cfg->dns_zone_check_period);
	if (rc < 0)
		pf_log_warning(NULL, "dns_zone_check_period: %s", uv_strerror(rc));
	return w->dns;
}

static int connect_addr(pf_server_t *s, const pf_sockaddr_t *addr)
{
	pf_sockaddr_t a = *addr;

	if (a.sa.sa_family == AF_INET6)
		a.in6.sin6_port = htons((uint16_t)s->port);
	else
		a.in.sin_port = htons((uint16_t)s->port);
	return pf_conn_connect(&s->conn, &a.sa, NULL);
}

/* What a client is told when s's host name did not resolve (PgBouncer's words). */
static void dns_failed(pf_server_t *s, int rc)
{
	pf_strlcpy(s->login_sqlstate, "08006", sizeof(s->login_sqlstate));
	free(s->login_error);
	s->login_error = malloc(256);
	if (s->login_error)
		snprintf(s->login_error, 256, "server DNS lookup failed: %s", uv_strerror(rc));
}

/* The DNS cache answered s's name (s is not closing: closing cancels the wait). */
static void on_dns_answer(pf_dns_waiter_t *wt, int status, const pf_sockaddr_t *addr)
{
	pf_server_t *s = PF_CONTAINER_OF(wt, pf_server_t, dns_wait);
	int rc = status;

	if (s->conn.closing)
		return; /* (closing cancels the wait; nothing to do if it got here anyway) */
	if (status < 0) {
		dns_failed(s, status);
		pf_log_warning(s, "closing because: server DNS lookup failed: %s (%s)",
		               uv_strerror(status), s->host);
		pf_server_close(s, PF_SV_CLOSE_CONNECT_FAILED);
		return;
	}
	rc = connect_addr(s, addr);
	if (rc < 0)
		s->conn.ops->on_event(&s->conn, PF_CONN_EV_CONNECTED, rc);
}

/* Connects s to one of its pool's hosts (a name through the worker's DNS cache). */
static int connect_to(pf_server_t *s, pf_pool_t *pool)
{
	pf_worker_t *w = pool->worker;
	pf_sockaddr_t addr;
	pf_dns_t *dns;
	target_t t;
	int rc = pick_target(pool, &t);

	if (rc < 0)
		return rc;
	s->host_index = t.index;
	s->host_count = t.count;
	if (t.path[0]) {
		if (!(s->path = strdup(t.path)))
			return -ENOMEM;
		return pf_conn_connect(&s->conn, NULL, t.path);
	}
	if (!(s->host = strdup(t.host)))
		return -ENOMEM;
	s->port = t.port;
	memset(&addr, 0, sizeof(addr));
	if (uv_inet_pton(AF_INET, t.host, &addr.in.sin_addr) == 0) {
		addr.in.sin_family = AF_INET;
		return connect_addr(s, &addr);
	}
	if (uv_inet_pton(AF_INET6, t.host, &addr.in6.sin6_addr) == 0) {
		addr.in6.sin6_family = AF_INET6;
		return connect_addr(s, &addr);
	}
	if (!(dns = pf_server_dns(w)))
		return -ENOMEM;
	rc = pf_dns_resolve(dns, t.host, &s->dns_wait, on_dns_answer, &addr);
	if (rc == 1)
		return connect_addr(s, &addr);
	if (rc < 0)
		dns_failed(s, rc); /* a failure the cache still holds, or no room to wait */
	return rc;                 /* 0: waiting (on_dns_answer) */
}

int pf_server_launch(pf_pool_t *pool)
{
	pf_worker_t *w = pool->worker;
	pf_server_t *s = calloc(1, sizeof(*s));
	int rc;

	if (!s)
		return -ENOMEM;
	pf_conn_init(&s->conn, &w->net, &server_ops, false);
	pf_list_init(&s->cancels);
	pf_reqq_set_drop_cb(&s->rq, on_request_dropped, s);
	s->task = PF_SV_TASK_LOGIN;
	s->tx_status = PF_PROTO_TX_IDLE;
	pf_pool_add_server(pool, &s->ps, s->conn.connect_time);
	rc = connect_to(s, pool);
	if (rc < 0) {
		pf_log_warning(NULL, "%s/%s: cannot connect to the server%s%s: %s", pool->db->name,
		               pool->user->name, s->host ? " " : "", s->host ? s->host : "",
		               uv_strerror(rc));
		pf_server_close(s, PF_SV_CLOSE_CONNECT_FAILED);
		return 0;
	}
	pf_log_debug(s, "new server connection");
	return 0;
}

static void send_startup(pf_server_t *s);
static void login_failed(pf_server_t *s, const char *sqlstate, const char *fmt, ...)
        PF_PRINTF(3, 4);

/*
 * Connected over TCP with server_tls_sslmode allow or stricter: SSLRequest first (allow asks
 * as prefer does, as PgBouncer 1.25 does). The answer, one byte, comes to server_on_raw().
 */
static void request_tls_or_start(pf_server_t *s)
{
	pf_worker_t *w = s->ps.pool->worker;
	static const uint8_t ssl_request[8] = {0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f};

	if (!s->host || !w->tls_connect) {
		send_startup(s);
		return;
	}
	s->tls = pf_tls_ctx_ref(w->tls_connect);
	s->conn.raw_mode = true;
	pf_conn_send(&s->conn, ssl_request, sizeof(ssl_request));
}

static int server_on_raw(pf_conn_t *conn, const uint8_t *data, size_t len)
{
	pf_server_t *s = (pf_server_t *)conn;
	int mode = pf_tls_ctx_sslmode(s->tls);

	assert(len > 0 && s->tls);
	switch (data[0]) {
	case 'S':
		/* Anything after the 'S' came before encryption: refuse it (CVE-2021-23222). */
		if (len > 1) {
			login_failed(s, "08P01",
			             "server sent unencrypted data after its SSL response");
			return -1;
		}
		if (pf_tls_connect(conn, s->tls, s->host) < 0) {
			login_failed(s, "58000", "could not start TLS");
			return -1;
		}
		break;
	case 'N':
		if (mode >= PF_SSLMODE_REQUIRE) {
			login_failed(s, "08006",
			             "server does not support SSL, but SSL was required "
			             "(server_tls_sslmode=%s)",
			             mode == PF_SSLMODE_REQUIRE     ? "require"
			             : mode == PF_SSLMODE_VERIFY_CA ? "verify-ca"
			                                            : "verify-full");
			return -1;
		}
		break;
	case 'E':
		login_failed(s, "08P01", "server sent an error response during SSL exchange");
		return -1;
	default:
		login_failed(s, "08P01", "received invalid response to SSL negotiation: 0x%02x",
		             data[0]);
		return -1;
	}
	conn->raw_mode = false;
	send_startup(s);
	return 1;
}

static void send_startup(pf_server_t *s)
{
	pf_database_t *db = s->ps.pool->db;
	pf_proto_param_t params[8];
	size_t n = 0;
	pf_buf_t b;

	params[n++] = (pf_proto_param_t){"user", s->ps.pool->user->name};
	params[n++] = (pf_proto_param_t){"database", db->dbname};
	if (db->startup_application_name)
		params[n++] = (pf_proto_param_t){"application_name", db->startup_application_name};
	if (db->startup_client_encoding)
		params[n++] = (pf_proto_param_t){"client_encoding", db->startup_client_encoding};
	if (db->startup_datestyle)
		params[n++] = (pf_proto_param_t){"datestyle", db->startup_datestyle};
	if (db->startup_timezone)
		params[n++] = (pf_proto_param_t){"timezone", db->startup_timezone};
	pf_buf_init(&b);
	pf_proto_fe_startup(&b, params, n);
	pf_conn_send_buf(&s->conn, &b);
	pf_buf_free(&b);
}

static void login_failed(pf_server_t *s, const char *sqlstate, const char *fmt, ...)
        PF_PRINTF(3, 4);
static void login_failed(pf_server_t *s, const char *sqlstate, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	free(s->login_error);
	s->login_error = strdup(msg);
	pf_strlcpy(s->login_sqlstate, sqlstate, sizeof(s->login_sqlstate));
	pf_log_warning(s, "server login failed: %s", msg);
	pf_server_close(s, PF_SV_CLOSE_LOGIN_FAILED);
}

static void send_password(pf_server_t *s, const char *text)
{
	pf_buf_t b;

	pf_buf_init(&b);
	pf_proto_fe_password(&b, text);
	pf_conn_send_buf(&s->conn, &b);
	OPENSSL_cleanse(b.data, b.cap);
	pf_buf_free(&b);
}

static const char *auth_request_name(uint32_t subtype)
{
	switch (subtype) {
	case PF_PROTO_AUTH_OK:
		return "AuthenticationOk";
	case PF_PROTO_AUTH_CLEARTEXT:
		return "AuthenticationCleartextPassword";
	case PF_PROTO_AUTH_MD5:
		return "AuthenticationMD5Password";
	case PF_PROTO_AUTH_SASL:
		return "AuthenticationSASL";
	case PF_PROTO_AUTH_SASL_CONTINUE:
		return "AuthenticationSASLContinue";
	case PF_PROTO_AUTH_SASL_FINAL:
		return "AuthenticationSASLFinal";
	default:
		return "an unsupported authentication request";
	}
}

/*
 * Whether the Authentication request subtype may come at this point of the SCRAM exchange
 * (pf_server_sasl_step_t). Fails the login (false: s was closed) when it may not.
 */
static bool sasl_step_allows(pf_server_t *s, uint32_t subtype)
{
	static const uint32_t expected[] = {
	        [PF_SV_SASL_FIRST_SENT] = PF_PROTO_AUTH_SASL_CONTINUE,
	        [PF_SV_SASL_FINAL_SENT] = PF_PROTO_AUTH_SASL_FINAL,
	        [PF_SV_SASL_VERIFIED] = PF_PROTO_AUTH_OK,
	};

	if (s->sasl_step == PF_SV_SASL_NONE) {
		if (subtype != PF_PROTO_AUTH_SASL_CONTINUE && subtype != PF_PROTO_AUTH_SASL_FINAL)
			return true;
		login_failed(s, "08P01", "server sent %s without a SCRAM exchange",
		             auth_request_name(subtype));
		return false;
	}
	if (subtype == expected[s->sasl_step])
		return true;
	if (subtype == PF_PROTO_AUTH_OK)
		login_failed(s, "08P01", "%s",
		             "server sent AuthenticationOk before proving it knows the password "
		             "(SCRAM exchange not finished)");
	else
		login_failed(s, "08P01", "server sent %s during the SCRAM exchange, expected %s",
		             auth_request_name(subtype), auth_request_name(expected[s->sasl_step]));
	return false;
}

static void scram_free(pf_server_t *s)
{
	if (!s->scram)
		return;
	pf_scram_client_clear(s->scram); /* wipes the password copy and the keys */
	OPENSSL_cleanse(s->scram, sizeof(*s->scram));
	free(s->scram);
	s->scram = NULL;
}

/*
 * Moves the SCRAM exchange one step on. The steps only go forward, one at a time
 * (pf_server_sasl_step_t), each after sasl_step_allows admitted the request that leads there.
 */
static void sasl_advance(pf_server_t *s, pf_server_sasl_step_t next)
{
	assert(next == s->sasl_step + 1 && next <= PF_SV_SASL_VERIFIED);
	s->sasl_step = next;
}

/* AuthenticationOk: trust, or the end of an exchange whose proof was checked. */
static bool auth_ok(pf_server_t *s)
{
	/* sasl_step_allows admits it only before any exchange or after the server's proof. */
	assert(s->sasl_step == PF_SV_SASL_NONE || s->sasl_step == PF_SV_SASL_VERIFIED);
	assert(!s->scram);
	(void)s;
	return true;
}

/* AuthenticationCleartextPassword: only a plain password can answer it. */
static bool auth_cleartext(pf_server_t *s)
{
	const pf_user_t *u = s->ps.pool->user;
	const pf_secret_t *sec = &u->secret;

	if (!sec->present || sec->kind != PF_AUTH_SECRET_PLAIN) {
		login_failed(s, "28P01",
		             "server asks for a cleartext password and no plain password is "
		             "known for user \"%s\"",
		             u->name);
		return false;
	}
	send_password(s, sec->text);
	return true;
}

/*
 * The md5 response for u to salt, into resp: from its md5 secret, or one made from its plain
 * password. Returns 0 or -errno. The secret's copy is wiped; resp is the caller's to wipe.
 */
static int md5_response_for(const pf_user_t *u, const uint8_t salt[4], char resp[36])
{
	const pf_secret_t *sec = &u->secret;
	char secret[36];
	int rc;

	assert(sec->present && sec->kind != PF_AUTH_SECRET_SCRAM);
	if (sec->kind == PF_AUTH_SECRET_PLAIN)
		rc = pf_md5_secret(u->name, sec->text, secret);
	else
		rc = (int)pf_strlcpy(secret, sec->text, sizeof(secret)) >= 36 ? -EINVAL : 0;
	if (rc == 0)
		rc = pf_md5_response(secret, salt, resp);
	OPENSSL_cleanse(secret, sizeof(secret));
	return rc;
}

/* AuthenticationMD5Password: answered from a plain password or an md5 secret. */
static bool auth_md5(pf_server_t *s, const pf_proto_auth_t *a)
{
	const pf_user_t *u = s->ps.pool->user;
	const pf_secret_t *sec = &u->secret;
	char resp[36];

	assert(a->rest_len == 4); /* the salt: pf_proto_parse_auth checked its size */
	if (!sec->present || sec->kind == PF_AUTH_SECRET_SCRAM) {
		login_failed(s, "28P01",
		             "server asks for md5 and no plain password or md5 secret is "
		             "known for user \"%s\"",
		             u->name);
		return false;
	}
	if (md5_response_for(u, a->rest, resp) < 0) {
		OPENSSL_cleanse(resp, sizeof(resp));
		login_failed(s, "28P01", "cannot compute the md5 response for user \"%s\"",
		             u->name);
		return false;
	}
	send_password(s, resp);
	OPENSSL_cleanse(resp, sizeof(resp));
	return true;
}

/*
 * Whether the secret can answer SCRAM: a plain password, or the ClientKey a client revealed
 * when it logged in with SCRAM (PgBouncer's passthrough; a verifier alone cannot).
 */
static bool scram_keys_known(const pf_secret_t *sec)
{
	return sec->present && (sec->kind == PF_AUTH_SECRET_PLAIN ||
	                        (sec->kind == PF_AUTH_SECRET_SCRAM && sec->has_client_key));
}

/*
 * Starts the exchange in s->scram with what sec holds (scram_keys_known) and writes the
 * client-first-message into out. Returns 0 or -errno. The password or keys are copied into
 * s->scram, which scram_free() wipes.
 */
static int scram_client_begin(pf_server_t *s, const pf_secret_t *sec, char *out, size_t outcap,
                              size_t *outlen)
{
	int rc;

	assert(s->scram && scram_keys_known(sec));
	if (sec->kind == PF_AUTH_SECRET_PLAIN)
		rc = pf_scram_client_start(s->scram, sec->text, NULL, NULL,
		                           pf_conn_worker(&s->conn)->scram_cache);
	else
		rc = pf_scram_client_start(s->scram, NULL, sec->scram_client_key,
		                           sec->scram.server_key, NULL);
	if (rc == 0)
		rc = pf_scram_client_first(s->scram, out, outcap, outlen);
	return rc;
}

/* AuthenticationSASL: picks SCRAM-SHA-256 and sends the SASLInitialResponse. */
static bool auth_sasl_start(pf_server_t *s, const pf_proto_auth_t *a)
{
	const pf_user_t *u = s->ps.pool->user;
	const pf_secret_t *sec = &u->secret;
	char out[PF_SCRAM_MAX_MSG_LEN];
	size_t outlen;
	pf_buf_t b;

	assert(s->sasl_step == PF_SV_SASL_NONE && !s->scram);
	if (!pf_proto_auth_has_sasl_mech(a, PF_SCRAM_MECHANISM)) {
		login_failed(s, "28000", "%s", "server offers no SASL mechanism we support");
		return false;
	}
	s->scram = calloc(1, sizeof(*s->scram));
	if (!s->scram) {
		login_failed(s, "53200", "%s", "out of memory");
		return false;
	}
	if (!scram_keys_known(sec)) {
		login_failed(s, "28P01",
		             "server asks for SCRAM and neither a plain password nor the "
		             "client's SCRAM keys are known for user \"%s\"",
		             u->name);
		return false;
	}
	if (scram_client_begin(s, sec, out, sizeof(out), &outlen) < 0) {
		login_failed(s, "28P01", "SCRAM start failed for user \"%s\"", u->name);
		return false;
	}
	sasl_advance(s, PF_SV_SASL_FIRST_SENT);
	pf_buf_init(&b);
	pf_proto_fe_sasl_initial_response(&b, PF_SCRAM_MECHANISM, out, outlen);
	pf_conn_send_buf(&s->conn, &b);
	pf_buf_free(&b);
	return true;
}

/*
 * AuthenticationSASLContinue (server-first-message): sends the client-final-message with our
 * proof, which is wiped from every buffer that held it.
 */
static bool auth_sasl_continue(pf_server_t *s, const pf_proto_auth_t *a)
{
	const pf_user_t *u = s->ps.pool->user;
	char out[PF_SCRAM_MAX_MSG_LEN];
	size_t outlen;
	pf_buf_t b;
	int rc;

	assert(s->sasl_step == PF_SV_SASL_FIRST_SENT && s->scram);
	rc = pf_scram_client_final(s->scram, a->rest, a->rest_len, out, sizeof(out), &outlen);
	if (rc == -E2BIG) {
		/* A PBKDF2 this long would stall every connection of the worker. */
		login_failed(s, "28000",
		             "server asks for %d SCRAM iterations, more than the %d pgfunnel "
		             "allows (PBKDF2 runs on the event loop)",
		             s->scram->refused_iterations, PF_SCRAM_MAX_ITERATIONS);
		return false;
	}
	if (rc < 0) {
		OPENSSL_cleanse(out, sizeof(out));
		login_failed(s, "28P01", "SCRAM exchange with the server failed for user \"%s\"",
		             u->name);
		return false;
	}
	sasl_advance(s, PF_SV_SASL_FINAL_SENT);
	pf_buf_init(&b);
	pf_proto_fe_sasl_response(&b, out, outlen);
	OPENSSL_cleanse(out, sizeof(out));
	pf_conn_send_buf(&s->conn, &b);
	OPENSSL_cleanse(b.data, b.cap);
	pf_buf_free(&b);
	return true;
}

/*
 * AuthenticationSASLFinal (server-final-message): the server proves it knows the password;
 * the exchange's keys are wiped once checked.
 */
static bool auth_sasl_final(pf_server_t *s, const pf_proto_auth_t *a)
{
	assert(s->sasl_step == PF_SV_SASL_FINAL_SENT && s->scram);
	if (pf_scram_client_verify(s->scram, a->rest, a->rest_len) < 0) {
		login_failed(s, "28P01", "%s",
		             "the server's SCRAM signature is wrong: not the server we expect");
		return false;
	}
	sasl_advance(s, PF_SV_SASL_VERIFIED);
	scram_free(s);
	return true;
}

/*
 * Handles an Authentication* request during login: checks it against the SCRAM exchange's
 * step, then answers it. Returns false when s was closed.
 */
static bool handle_auth(pf_server_t *s, const uint8_t *payload, size_t len)
{
	pf_proto_auth_t a;

	assert(s->task == PF_SV_TASK_LOGIN && !s->conn.closing);
	if (pf_proto_parse_auth(payload, len, &a) < 0) {
		login_failed(s, "08P01", "%s", "malformed authentication request from server");
		return false;
	}
	if (!sasl_step_allows(s, a.subtype))
		return false;
	switch (a.subtype) {
	case PF_PROTO_AUTH_OK:
		return auth_ok(s);
	case PF_PROTO_AUTH_CLEARTEXT:
		return auth_cleartext(s);
	case PF_PROTO_AUTH_MD5:
		return auth_md5(s, &a);
	case PF_PROTO_AUTH_SASL:
		return auth_sasl_start(s, &a);
	case PF_PROTO_AUTH_SASL_CONTINUE:
		return auth_sasl_continue(s, &a);
	case PF_PROTO_AUTH_SASL_FINAL:
		return auth_sasl_final(s, &a);
	default:
		login_failed(s, "28000", "unsupported authentication method %u requested by server",
		             a.subtype);
		return false;
	}
}

/* Slots of the login ParameterStatus index: a power of two, over twice the most it holds. */
#define PARAM_INDEX_SLOTS 2048u
_Static_assert((PARAM_INDEX_SLOTS & (PARAM_INDEX_SLOTS - 1)) == 0 &&
                       PARAM_INDEX_SLOTS >= 2 * PF_SERVER_MAX_LOGIN_PARAMS &&
                       PF_SERVER_MAX_LOGIN_PARAMS < UINT16_MAX,
               "the login parameter index must stay sparse and fit uint16_t");

/*
 * The slot of name in s->param_index: the one holding it, or the empty slot where it goes.
 * Linear probing ends because at most PF_SERVER_MAX_LOGIN_PARAMS of the slots are used.
 */
static size_t param_slot(const pf_server_t *s, const char *name)
{
	size_t i = pf_hash_str(name) & (PARAM_INDEX_SLOTS - 1);

	while (s->param_index[i] && strcmp(s->param_names[s->param_index[i] - 1], name) != 0)
		i = (i + 1) & (PARAM_INDEX_SLOTS - 1);
	return i;
}

/*
 * Records a ParameterStatus. Returns 0, -ENOMEM, or -E2BIG when the server sent more than
 * PF_SERVER_MAX_LOGIN_PARAMS of them before its first ReadyForQuery.
 */
static int remember_param(pf_server_t *s, const char *name, const char *value)
{
	int var = pf_var_lookup(name);
	char **names, **values;
	size_t slot;

	if (var >= 0 && pf_vars_set(&s->vars, (pf_var_id_t)var, value) < 0)
		return -ENOMEM;
	if (s->ready)
		return 0;
	/* Before the first ReadyForQuery: part of the welcome a pool gives its clients. */
	if (++s->login_param_msgs > PF_SERVER_MAX_LOGIN_PARAMS)
		return -E2BIG;
	if (!s->param_index) {
		s->param_index = calloc(PARAM_INDEX_SLOTS, sizeof(*s->param_index));
		if (!s->param_index)
			return -ENOMEM;
	}
	slot = param_slot(s, name);
	if (s->param_index[slot]) {
		size_t i = s->param_index[slot] - 1u;
		char *v = strdup(value);

		if (!v)
			return -ENOMEM;
		free(s->param_values[i]);
		s->param_values[i] = v;
		return 0;
	}
	names = realloc(s->param_names, (s->n_params + 1) * sizeof(char *));
	if (!names)
		return -ENOMEM;
	s->param_names = names;
	values = realloc(s->param_values, (s->n_params + 1) * sizeof(char *));
	if (!values)
		return -ENOMEM;
	s->param_values = values;
	names[s->n_params] = strdup(name);
	values[s->n_params] = strdup(value);
	if (!names[s->n_params] || !values[s->n_params]) {
		free(names[s->n_params]);
		free(values[s->n_params]);
		return -ENOMEM;
	}
	s->n_params++;
	s->param_index[slot] = (uint16_t)s->n_params;
	return 0;
}

int pf_server_run_task(pf_server_t *s, pf_server_task_t task, const char *sql)
{
	pf_buf_t b;
	int rc;

	rc = pf_reqq_push(&s->rq, PF_PROTO_FE_QUERY, PF_REQQ_POOLER);
	if (rc < 0)
		return rc;
	pf_buf_init(&b);
	pf_proto_fe_query(&b, sql);
	s->task = task;
	s->task_failed = false;
	pf_conn_send_buf(&s->conn, &b);
	pf_buf_free(&b);
	return 0;
}

void pf_server_lookup_free(pf_server_lookup_t *r)
{
	if (!r)
		return;
	/* The row may hold a password or a secret. */
	if (r->row) {
		OPENSSL_cleanse(r->row, r->row_len);
		free(r->row);
	}
	free(r->message);
	free(r);
}

pf_server_lookup_t *pf_server_take_lookup(pf_server_t *s)
{
	pf_server_lookup_t *r = s->task == PF_SV_TASK_LOOKUP ? NULL : s->lookup;

	if (r)
		s->lookup = NULL;
	return r;
}

int pf_server_run_lookup(pf_server_t *s, const char *sql, const char *const *params, size_t n)
{
	const char *types = PF_PROTO_EXT_QUERY_TYPES;
	pf_buf_t b;
	int rc;

	assert(s->ready && s->task == PF_SV_TASK_NONE && s->ps.link && !s->peer);
	pf_server_lookup_free(s->lookup); /* an answer nobody took */
	s->lookup = calloc(1, sizeof(*s->lookup));
	if (!s->lookup)
		return -ENOMEM;
	s->lookup->columns = -1;
	pf_buf_init(&b);
	pf_proto_fe_ext_query(&b, sql, params, n);
	rc = b.failed ? -ENOMEM : pf_reqq_reserve(&s->rq, (uint32_t)strlen(types));
	/* Room was reserved and the server is idle: each message is recorded. */
	for (size_t i = 0; rc == 0 && types[i]; i++)
		rc = pf_reqq_push(&s->rq, (uint8_t)types[i], PF_REQQ_POOLER);
	if (rc < 0) {
		/* Nothing was sent; entries recorded (none, unless the queue broke) make the
		 * server unclean, so it is not reused. */
		pf_buf_free(&b);
		pf_server_lookup_free(s->lookup);
		s->lookup = NULL;
		return rc;
	}
	s->task = PF_SV_TASK_LOOKUP;
	s->task_failed = false;
	pf_conn_send_buf(&s->conn, &b);
	OPENSSL_cleanse(b.data, b.cap); /* the parameter was a user name, but keep to the rule */
	pf_buf_free(&b);
	return 0;
}

/*
 * The answers to a lookup (PF_SV_TASK_LOOKUP) that it keeps: the result's column count, the
 * first DataRow (whole), the rows' number, an error's SQLSTATE and message. Returns
 * PF_PKT_CONSUMED when the message was noted (the caller goes on accounting for it),
 * PF_PKT_NEED_WHOLE, or PF_PKT_STOP after closing a server that sent a malformed message.
 */
static pf_pkt_action_t lookup_note(pf_server_t *s, const pf_proto_hdr_t *hdr, const uint8_t *pkt,
                                   size_t avail)
{
	pf_server_lookup_t *r = s->lookup;
	const uint8_t *payload = pkt + PF_PROTO_HDR_LEN;
	size_t plen = hdr->payload_len;

	switch (hdr->type) {
	case PF_PROTO_BE_ROW_DESCRIPTION: {
		uint16_t n;

		if (avail < hdr->total)
			return PF_PKT_NEED_WHOLE;
		if (pf_proto_parse_row_description(payload, plen, &n) < 0) {
			pf_server_close(s, PF_SV_CLOSE_PROTOCOL);
			return PF_PKT_STOP;
		}
		r->columns = n;
		break;
	}
	case PF_PROTO_BE_NO_DATA:
		r->columns = 0;
		break;
	case PF_PROTO_BE_DATA_ROW:
		/* Only the first row is read (the others are counted: more than one is an error
		 * for the caller to report). */
		if (r->rows == 0) {
			if (avail < hdr->total)
				return PF_PKT_NEED_WHOLE;
			r->row = malloc(plen ? plen : 1);
			if (!r->row) {
				pf_server_close(s, PF_SV_CLOSE_ERROR);
				return PF_PKT_STOP;
			}
			memcpy(r->row, payload, plen);
			r->row_len = plen;
		}
		if (r->rows < UINT32_MAX)
			r->rows++;
		break;
	case PF_PROTO_BE_ERROR_RESPONSE: {
		pf_proto_error_t e;

		if (avail < hdr->total)
			return PF_PKT_NEED_WHOLE;
		r->failed = true;
		if (pf_proto_parse_error_fields(payload, plen, &e) == 0 && !r->message) {
			pf_strlcpy(r->sqlstate, e.sqlstate ? e.sqlstate : "", sizeof(r->sqlstate));
			r->message = e.message ? strdup(e.message) : NULL;
		}
		break;
	}
	default:
		break;
	}
	return PF_PKT_CONSUMED;
}

bool pf_server_attach(pf_server_t *s, pf_server_peer_t *peer, pf_conn_t *client_conn)
{
	pf_buf_t sql;
	bool syncing = false;

	assert(s->ps.link && !s->peer && !s->conn.peer && !client_conn->peer);
	s->peer = peer;
	s->conn.peer = client_conn;
	client_conn->peer = &s->conn;
	/* The client's session parameters follow it to whatever server it gets. */
	pf_buf_init(&sql);
	if (pf_vars_build_set(&peer->vars, &s->vars, &sql) > 0) {
		pf_buf_put_u8(&sql, 0);
		if (sql.failed)
			pf_log_warning(s, "cannot build the parameter sync query");
		else if (pf_server_run_task(s, PF_SV_TASK_SYNC_VARS, (char *)sql.data) < 0)
			pf_log_warning(s, "cannot send parameter sync query");
		else
			syncing = true;
	}
	pf_buf_free(&sql);
	return syncing;
}

/* Takes the link away on the server's side (its conn and the client's stop pointing at
 * each other). */
static void detach(pf_server_t *s)
{
	/* Changes to the client's statements still waiting for their outcome refer to this
	 * server: they are dropped (and the client's map marked broken if there were any). */
	if (s->peer && s->peer->prep)
		pf_prepared_detach(s->peer->prep);
	if (s->conn.peer) {
		assert(s->conn.peer->peer == &s->conn);
		s->conn.peer->peer = NULL;
	}
	s->conn.peer = NULL;
	s->peer = NULL;
}

void pf_server_release(pf_server_t *s)
{
	assert(s->ps.link);
	detach(s);
	pf_pool_release_server(&s->ps);
}

/*
 * Logged in (and connect_query done): the first server of a pool gives the pool its welcome
 * parameters, unless it is tagged for replacement (changed settings).
 */
static void server_ready(pf_server_t *s)
{
	pf_pool_t *pool = s->ps.pool;

	if (!pool->welcome_ready && !s->ps.close_needed &&
	    pf_pool_set_welcome(pool, s->n_params, s->param_names, s->param_values) < 0) {
		pf_server_close(s, PF_SV_CLOSE_LOGIN_FAILED);
		return;
	}
	pf_pool_server_logged_in(&s->ps);
}

static bool command_tag_is(const uint8_t *payload, size_t len, const char *tag)
{
	size_t n = strlen(tag) + 1;

	return len == n && memcmp(payload, tag, n) == 0;
}

/*
 * A CommandComplete on a server whose prepared statements are tracked: DISCARD ALL and
 * DEALLOCATE ALL remove every statement of the server's (and, for a client's command, the
 * client's); an SQL-level PREPARE or DEALLOCATE leaves statements pgfunnel does not know of,
 * so the server is not given to anyone else.
 */
static void note_command(pf_server_t *s, const uint8_t *payload, size_t len)
{
	if (len == 0 || (payload[0] != 'D' && payload[0] != 'P'))
		return;
	if (command_tag_is(payload, len, "DISCARD ALL") ||
	    command_tag_is(payload, len, "DEALLOCATE ALL"))
		pf_prepared_discard(s->peer ? s->peer->prep : NULL, s->prep);
	else if (command_tag_is(payload, len, "DEALLOCATE") ||
	         command_tag_is(payload, len, "PREPARE"))
		s->prep_unsure = true;
}

/* A task query finished (its ReadyForQuery arrived). */
static void task_done(pf_server_t *s, uint8_t status)
{
	pf_server_task_t task = s->task;
	pf_pool_client_t *c = s->ps.link;

	s->task = PF_SV_TASK_NONE;
	if (task == PF_SV_TASK_LOOKUP) {
		/* Whatever it says (an error of the query's own included) is for the client that
		 * borrowed the server to judge, once this ReadyForQuery is consumed
		 * (server_on_forwarded): it then releases the server, which goes back to the pool
		 * only if it is clean. */
		assert(s->lookup);
		s->lookup->tx_status = status;
		s->lookup_answered = true;
		return;
	}
	if (s->task_failed || status != PF_PROTO_TX_IDLE) {
		pf_log_warning(s, "%s query failed, closing the server connection",
		               task == PF_SV_TASK_SYNC_VARS       ? "parameter sync"
		               : task == PF_SV_TASK_CONNECT_QUERY ? "connect_query"
		               : task == PF_SV_TASK_RESET         ? "server_reset_query"
		                                                  : "server_check_query");
		if (task == PF_SV_TASK_CONNECT_QUERY) {
			pf_strlcpy(s->login_sqlstate, "08006", sizeof(s->login_sqlstate));
			free(s->login_error);
			s->login_error = strdup("connect_query failed");
		}
		pf_server_close(s, task == PF_SV_TASK_CONNECT_QUERY ? PF_SV_CLOSE_LOGIN_FAILED
		                                                    : PF_SV_CLOSE_RESET_FAILED);
		return;
	}
	switch (task) {
	case PF_SV_TASK_SYNC_VARS:
		if (c)
			s->ps.pool->worker->pool_ops->resume_client(c);
		break;
	case PF_SV_TASK_CONNECT_QUERY:
		server_ready(s);
		break;
	case PF_SV_TASK_RESET:
	case PF_SV_TASK_CHECK:
		pf_pool_server_ready(&s->ps);
		break;
	default:
		break;
	}
}

/*
 * During a parameter sync the server reports the value our SET gave it: where that is not what
 * the client asked for (application_name cut at 63 bytes, a TimeZone spelled another way), it
 * is the client's effective value from now on, as on a direct connection. Otherwise the next
 * attach would compare the asked-for value with the reported one and SET it again, every
 * transaction. Out of memory only costs that extra SET.
 */
static void adopt_effective_value(pf_server_t *s, const char *name, const char *value)
{
	int var = pf_var_lookup(name);
	const char *wanted;

	if (var < 0)
		return;
	wanted = pf_vars_get(&s->peer->vars, (pf_var_id_t)var);
	if (wanted && strcmp(wanted, value) != 0 &&
	    pf_vars_set(&s->peer->vars, (pf_var_id_t)var, value) < 0)
		pf_log_debug(s, "could not keep the effective %s", name);
}

/* Messages while the pooler's own query runs: nothing goes to the client. */
static pf_pkt_action_t task_packet(pf_server_t *s, const pf_proto_hdr_t *hdr, const uint8_t *pkt,
                                   size_t avail)
{
	const uint8_t *payload = pkt + PF_PROTO_HDR_LEN;
	size_t plen = hdr->payload_len;
	uint8_t st = PF_PROTO_TX_IDLE;

	if (s->task == PF_SV_TASK_LOOKUP) {
		pf_pkt_action_t act = lookup_note(s, hdr, pkt, avail);

		if (act != PF_PKT_CONSUMED)
			return act;
	}
	switch (hdr->type) {
	case PF_PROTO_BE_READY_FOR_QUERY:
		if (avail < hdr->total)
			return PF_PKT_NEED_WHOLE;
		if (pf_proto_parse_ready_for_query(payload, plen, &st) < 0) {
			pf_server_close(s, PF_SV_CLOSE_PROTOCOL);
			return PF_PKT_STOP;
		}
		s->tx_status = st;
		break;
	case PF_PROTO_BE_ERROR_RESPONSE: {
		pf_proto_error_t e;

		if (avail < hdr->total)
			return PF_PKT_NEED_WHOLE;
		s->task_failed = true;
		if (pf_proto_parse_error_fields(payload, plen, &e) == 0) {
			pf_log_warning(s, "pooler query error: %s %s", e.sqlstate ? e.sqlstate : "",
			               e.message ? e.message : "");
			if (s->task == PF_SV_TASK_SYNC_VARS && e.message && !s->sync_error) {
				pf_strlcpy(s->sync_sqlstate, e.sqlstate ? e.sqlstate : "08P01",
				           sizeof(s->sync_sqlstate));
				s->sync_error = strndup(e.message, 512);
			}
		}
		break;
	}
	case PF_PROTO_BE_PARAMETER_STATUS: {
		const char *name, *value;

		if (avail < hdr->total)
			return PF_PKT_NEED_WHOLE;
		if (pf_proto_parse_parameter_status(payload, plen, &name, &value) == 0) {
			remember_param(s, name, value);
			if (s->task == PF_SV_TASK_SYNC_VARS && s->peer)
				adopt_effective_value(s, name, value);
		}
		return PF_PKT_CONSUMED;
	}
	case PF_PROTO_BE_COMMAND_COMPLETE:
		/* server_reset_query may be DISCARD ALL: the statements are gone. */
		if (s->prep) {
			if (avail < hdr->total)
				return PF_PKT_NEED_WHOLE;
			note_command(s, payload, plen);
		}
		break;
	default:
		break;
	}
	if (pf_reqq_answer(&s->rq, hdr->type, NULL) == PF_REQQ_MISMATCH) {
		pf_log_warning(s, "unexpected message '%c' from server during a pooler query",
		               hdr->type);
		pf_server_close(s, PF_SV_CLOSE_PROTOCOL);
		return PF_PKT_STOP;
	}
	if (hdr->type != PF_PROTO_BE_READY_FOR_QUERY)
		return hdr->type == PF_PROTO_BE_ERROR_RESPONSE ? PF_PKT_CONSUMED : PF_PKT_SKIP;
	if (pf_reqq_len(&s->rq) == 0) {
		/* Bytes behind the ReadyForQuery that ends our own query answer nothing: handed out
		 * now (a check or reset) or resumed (a parameter sync), the server would pass them
		 * off as the answer to the next client's request, and that answer to the one
		 * after. */
		if (s->conn.rend - s->conn.rpos > hdr->total) {
			pf_log_warning(
			        s, "server sent more after the ReadyForQuery of a pooler query, "
			           "closing it");
			pf_server_close(s, PF_SV_CLOSE_PROTOCOL);
			return PF_PKT_STOP;
		}
		task_done(s, st);
		/* A lookup's answer is told once its last message is behind the read position,
		 * so that its server can be released as clean: "forwarded" to nobody (the server
		 * is not attached), server_on_forwarded() follows. */
		if (s->lookup_answered)
			return PF_PKT_FORWARD_LAST;
	}
	return PF_PKT_CONSUMED;
}

static pf_pkt_action_t login_packet(pf_server_t *s, const pf_proto_hdr_t *hdr, const uint8_t *pkt,
                                    size_t avail)
{
	const uint8_t *payload = pkt + PF_PROTO_HDR_LEN;
	size_t plen = hdr->payload_len;

	if (hdr->type == PF_PROTO_BE_NOTICE_RESPONSE || hdr->type == 'v')
		return PF_PKT_SKIP;
	if (avail < hdr->total)
		return PF_PKT_NEED_WHOLE;
	switch (hdr->type) {
	case PF_PROTO_BE_AUTHENTICATION:
		return handle_auth(s, payload, plen) ? PF_PKT_CONSUMED : PF_PKT_STOP;
	case PF_PROTO_BE_ERROR_RESPONSE: {
		pf_proto_error_t e;

		if (pf_proto_parse_error_fields(payload, plen, &e) < 0 || !e.sqlstate)
			login_failed(s, "08P01", "%s", "malformed error from server");
		else {
			pf_strlcpy(s->login_sqlstate, e.sqlstate, sizeof(s->login_sqlstate));
			free(s->login_error);
			s->login_error = strdup(e.message ? e.message : "server login failed");
			pf_log_warning(s, "server login failed: %s %s", e.sqlstate,
			               e.message ? e.message : "");
			pf_server_close(s, PF_SV_CLOSE_LOGIN_FAILED);
		}
		return PF_PKT_STOP;
	}
	case PF_PROTO_BE_PARAMETER_STATUS: {
		const char *name, *value;
		int rc;

		if (pf_proto_parse_parameter_status(payload, plen, &name, &value) < 0) {
			pf_server_close(s, PF_SV_CLOSE_PROTOCOL);
			return PF_PKT_STOP;
		}
		rc = remember_param(s, name, value);
		if (rc == -E2BIG) {
			login_failed(
			        s, "08P01",
			        "server sent more than %d ParameterStatus messages during login",
			        PF_SERVER_MAX_LOGIN_PARAMS);
			return PF_PKT_STOP;
		}
		if (rc < 0) {
			login_failed(s, "53200", "%s", "out of memory");
			return PF_PKT_STOP;
		}
		return PF_PKT_CONSUMED;
	}
	case PF_PROTO_BE_BACKEND_KEY_DATA:
		if (pf_proto_parse_backend_key_data(payload, plen, &s->be_pid, &s->be_key) < 0) {
			pf_server_close(s, PF_SV_CLOSE_PROTOCOL);
			return PF_PKT_STOP;
		}
		return PF_PKT_CONSUMED;
	case PF_PROTO_BE_READY_FOR_QUERY: {
		uint8_t st;

		if (pf_proto_parse_ready_for_query(payload, plen, &st) < 0) {
			pf_server_close(s, PF_SV_CLOSE_PROTOCOL);
			return PF_PKT_STOP;
		}
		s->tx_status = st;
		s->ready = true;
		free(s->param_index); /* remember_param needs it only during login */
		s->param_index = NULL;
		/* Just logged in: fresh enough that server_check_query need not run before use. */
		s->ps.last_used = pf_worker_now(s->ps.pool->worker);
		pf_log_debug(s, "server login ok, backend pid %u", s->be_pid);
		if (s->ps.pool->db->connect_query && *s->ps.pool->db->connect_query)
			pf_server_run_task(s, PF_SV_TASK_CONNECT_QUERY,
			                   s->ps.pool->db->connect_query);
		else {
			s->task = PF_SV_TASK_NONE;
			server_ready(s);
		}
		return PF_PKT_CONSUMED;
	}
	default:
		pf_log_warning(s, "unexpected message '%c' from server during login", hdr->type);
		pf_server_close(s, PF_SV_CLOSE_PROTOCOL);
		return PF_PKT_STOP;
	}
}

/*
 * Accounts for a message from a linked server in its request queue: whether it goes to the
 * client (true) or answers a message of pgfunnel's own and is swallowed (false). A message that
 * answers nothing sent still goes to the client (it can only be the client's), and the server
 * is never reused.
 */
static bool route_answer_slow(pf_server_t *s, uint8_t type)
{
	bool was_broken = s->rq.broken;
	pf_reqq_ans_t ans;
	pf_reqq_route_t route = pf_reqq_route(&s->rq, type, &ans);

	/* A tagged request answered: the change to the client's statements it carried is final,
	 * or (an ErrorResponse) undone with every later one. */
	if (ans.tag && ans.verdict == PF_REQQ_DONE && s->peer && s->peer->prep)
		pf_prepared_resolve(s->peer->prep, ans.tag, type != PF_PROTO_BE_ERROR_RESPONSE);
	switch (route) {
	case PF_REQQ_FORWARD:
	case PF_REQQ_FAILED_FORWARD:
		return true;
	case PF_REQQ_SWALLOW:
		return false;
	case PF_REQQ_FAILED_SWALLOW:
		/* Nothing injects on a linked server yet (issue 11 will): an error to our own
		 * message that the client cannot be told about leaves the server unusable. */
		pf_log_warning(s,
		               "a message of pgfunnel's own failed: the server will not be reused");
		s->rq.broken = true;
		return false;
	case PF_REQQ_CLOSE:
		if (!was_broken)
			pf_log_warning(
			        s,
			        "server sent '%c', which answers nothing we sent: it will not be "
			        "reused",
			        type);
		return true;
	}
	return true;
}

static inline bool route_answer(pf_server_t *s, uint8_t type)
{
	return PF_LIKELY(pf_reqq_route_client(&s->rq, type)) || route_answer_slow(s, type);
}

bool pf_server_prep_must_wait(pf_server_t *s, bool parse)
{
	pf_server_peer_t *c = s->peer;

	assert(c);
	if (c->prep_barrier && pf_reqq_len(&s->rq) == 0)
		c->prep_barrier = false; /* its DISCARD ALL / DEALLOCATE ALL is answered */
	return pf_prepared_must_wait(c->prep) || s->rq.n_query > 0 || c->prep_barrier ||
	       (parse && s->rq.n_sync > 0);
}

bool pf_server_give_synth(pf_server_t *s)
{
	pf_reqq_entry_t e;

	if (!pf_reqq_synth_due(&s->rq))
		return true;
	/* Only between the server's messages: the end of the one under way (answering the
	 * request before) has yet to arrive; the answers follow it. */
	if (pf_conn_mid_message(&s->conn))
		return false;
	/* What the server answered before goes first. */
	pf_conn_flush(&s->conn);
	if (s->conn.fwd_pending)
		return false;
	/* ParseComplete, CloseComplete: five bytes each, written in batches. */
	while (pf_reqq_synth_due(&s->rq)) {
		uint8_t msgs[64 * 5];
		size_t n = 0;

		while (n < sizeof(msgs) && pf_reqq_take_synth(&s->rq, &e)) {
			const uint8_t msg[5] = {e.synth, 0, 0, 0, 4};

			memcpy(msgs + n, msg, sizeof(msg));
			n += sizeof(msg);
			if (s->peer && s->peer->prep)
				pf_prepared_resolve(s->peer->prep, e.tag, true);
		}
		if (n == 0)
			break; /* a broken queue gives nothing */
		if (s->conn.peer)
			pf_conn_send(s->conn.peer, msgs, n);
	}
	return true;
}

/*
 * Appends field text t (n bytes) to b with every server-side statement name in it replaced by
 * the client's name for it (dup for all of them when set). Returns how many were replaced.
 */
static unsigned put_client_names(pf_buf_t *b, const pf_prepared_client_t *c, const char *prefix,
                                 const char *dup, const char *t, size_t n)
{
	size_t plen = strlen(prefix), i = 0, from = 0;
	unsigned done = 0, lookups = 0;
	const char *last_s = NULL, *last_name = NULL; /* the last lookup, usually the only one */
	size_t last_len = 0;

	while (i + plen <= n) {
		const char *name;
		size_t j = i + plen;

		if (memcmp(t + i, prefix, plen) != 0) {
			i++;
			continue;
		}
		while (j < n && t[j] >= '0' && t[j] <= '9')
			j++;
		if (j == i + plen) {
			name = NULL;
		} else if (dup) {
			name = dup;
		} else if (last_s && j - i == last_len && memcmp(last_s, t + i, last_len) == 0) {
			name = last_name;
		} else if (lookups < 4) {
			/* Each lookup walks the client's names: a few per error (a server's
			 * error names one statement; more are someone's quoting games). */
			lookups++;
			name = pf_prepared_client_name_of(c, t + i, j - i);
			last_s = t + i;
			last_len = j - i;
			last_name = name;
		} else {
			name = NULL;
		}
		if (name) {
			pf_buf_put_bytes(b, t + from, i - from);
			pf_buf_put_bytes(b, name, strlen(name));
			from = j;
			done++;
		}
		i = j;
	}
	pf_buf_put_bytes(b, t + from, n - from);
	return done;
}

/*
 * An ErrorResponse (whole at pkt) to a client whose statements are tracked: Postgres names the
 * statement it refers to by pgfunnel's server-side name ("bind message supplies 1 parameters,
 * but prepared statement ... requires 2", a duplicate Parse's "already exists", sent under the
 * existing statement's name so that the server itself refuses it): the client is told its own
 * name instead, as Postgres would say it. Anything else passes as it is.
 */
static pf_pkt_action_t prepared_error(pf_server_t *s, const pf_proto_hdr_t *hdr, const uint8_t *pkt,
                                      const pf_proto_error_t *e)
{
	const pf_prepared_client_t *c = s->peer->prep;
	const char *prefix = pf_prepared_registry_prefix(s->ps.pool->worker->prepared);
	const char *t = (const char *)pkt + PF_PROTO_HDR_LEN, *end = t + hdr->payload_len;
	const char *dup = NULL;
	unsigned replaced = 0;
	size_t m;
	pf_buf_t b;

	if (!memmem(t, hdr->payload_len, prefix, strlen(prefix)))
		return route_answer(s, hdr->type) ? PF_PKT_FORWARD : PF_PKT_SKIP;
	if (pf_reqq_len(&s->rq) > 0 && e->sqlstate && strcmp(e->sqlstate, "42P05") == 0)
		dup = pf_prepared_dup_name(c, s->rq.ring[s->rq.head].tag);
	pf_buf_init(&b);
	m = pf_buf_msg_begin(&b, PF_PROTO_BE_ERROR_RESPONSE);
	while (t < end && *t) {
		size_t n = strnlen(t + 1, (size_t)(end - t - 1));

		if (t + 1 + n >= end)
			break; /* unterminated: parse_error_fields accepted it, so it cannot be */
		pf_buf_put_u8(&b, (uint8_t)*t);
		replaced += put_client_names(&b, c, prefix, dup, t + 1, n);
		pf_buf_put_u8(&b, 0);
		t += n + 2;
	}
	pf_buf_put_u8(&b, 0);
	pf_buf_msg_end(&b, m);
	if (replaced > 0 && e->sqlstate && strcmp(e->sqlstate, "26000") == 0 && !s->prep_unsure) {
		/* A statement pgfunnel prepared is gone: someone deallocated it behind its back
		 * (SQL inside a function or DO block). What else is gone is unknown. */
		pf_log_warning(s, "a statement pgfunnel prepared vanished from the server (SQL "
		                  "DEALLOCATE?): the server will not be reused");
		s->prep_unsure = true;
	}
	if (b.failed || replaced == 0) {
		/* No memory for our words, or nothing to change: the server's will do. */
		pf_buf_free(&b);
		return route_answer(s, hdr->type) ? PF_PKT_FORWARD : PF_PKT_SKIP;
	}
	if (!route_answer(s, hdr->type)) {
		pf_buf_free(&b);
		return PF_PKT_SKIP;
	}
	pf_conn_flush(&s->conn);
	if (s->conn.peer)
		pf_conn_send_buf(s->conn.peer, &b);
	pf_buf_free(&b);
	return PF_PKT_CONSUMED;
}

/* ReadyForQuery for the linked client: decides whether the server is released. */
static pf_pkt_action_t ready_for_query(pf_server_t *s, const pf_proto_hdr_t *hdr,
                                       const uint8_t *pkt, size_t avail)
{
	pf_server_peer_t *c = s->peer;
	pf_pool_t *pool = s->ps.pool;
	int mode = pf_pool_mode(pool);
	pf_usec_t now;
	uint8_t st;

	if (avail < hdr->total)
		return PF_PKT_NEED_WHOLE;
	if (pf_proto_parse_ready_for_query(pkt + PF_PROTO_HDR_LEN, hdr->payload_len, &st) < 0) {
		pf_server_close(s, PF_SV_CLOSE_PROTOCOL);
		return PF_PKT_STOP;
	}
	if (!route_answer(s, hdr->type)) {
		/* The answer to a Sync of our own: its status still counts. */
		s->tx_status = st;
		return PF_PKT_SKIP;
	}
	now = pf_worker_now(pool->worker);
	if (c->query_start) {
		pool->stats.query_count++;
		pool->stats.query_time += (uint64_t)(now - c->query_start);
		c->query_start = 0;
	}
	if (st == PF_PROTO_TX_IDLE && c->xact_start) {
		pool->stats.xact_count++;
		pool->stats.xact_time += (uint64_t)(now - c->xact_start);
		c->xact_start = 0;
	}
	s->tx_status = st;
	/* Statement mode: a statement that leaves a transaction open ends the client, whatever
	 * it has sent or half-sent after it (as PgBouncer refuses BEGIN there). */
	if (mode == PF_POOL_STATEMENT && st != PF_PROTO_TX_IDLE) {
		pf_server_close(s, PF_SV_CLOSE_STATEMENT_MODE);
		return PF_PKT_STOP;
	}
	/* Released only when nothing the client sent can still produce a byte and no message of
	 * the client's is half-way through to the server — nor held back for these answers (it
	 * goes on here once they are out). */
	if (mode == PF_POOL_SESSION || st != PF_PROTO_TX_IDLE || !pf_reqq_is_idle(&s->rq) ||
	    pf_conn_mid_message(s->conn.peer) || c->prep_wait)
		return PF_PKT_FORWARD;
	/* The server is free: the reply up to and including this ReadyForQuery goes out in one
	 * write, then server_on_forwarded() gives the server back to the pool. */
	return PF_PKT_FORWARD_LAST;
}

static pf_pkt_action_t linked_packet(pf_server_t *s, const pf_proto_hdr_t *hdr, const uint8_t *pkt,
                                     size_t avail);

static pf_pkt_action_t server_on_packet(pf_conn_t *conn, const pf_proto_hdr_t *hdr,
                                        const uint8_t *pkt, size_t avail)
{
	pf_server_t *s = (pf_server_t *)conn;
	pf_pool_stats_t *pool_stats = &s->ps.pool->stats;
	pf_pkt_action_t act;
	if (s->task == PF_SV_TASK_LOGIN)
		return login_packet(s, hdr, pkt, avail);
	if (s->task != PF_SV_TASK_NONE)
		return task_packet(s, hdr, pkt, avail);
	if (!s->peer) {
		/* Idle in the pool: only asynchronous messages may come. */
		switch (hdr->type) {
		case PF_PROTO_BE_NOTICE_RESPONSE:
		case PF_PROTO_BE_NOTIFICATION_RESPONSE:
			return PF_PKT_SKIP;
		case PF_PROTO_BE_PARAMETER_STATUS: {
			const char *name, *value;

			if (avail < hdr->total)
				return PF_PKT_NEED_WHOLE;
			if (pf_proto_parse_parameter_status(pkt + PF_PROTO_HDR_LEN,
			                                    hdr->payload_len, &name, &value) == 0)
				remember_param(s, name, value);
			return PF_PKT_CONSUMED;
		}
		default:
			/* e.g. FATAL "terminating connection due to administrator command" */
			pf_log_info(s, "idle server sent '%c', closing it", hdr->type);
			pf_server_close(s, hdr->type == PF_PROTO_BE_ERROR_RESPONSE
			                           ? PF_SV_CLOSE_EOF
			                           : PF_SV_CLOSE_PROTOCOL);
			return PF_PKT_STOP;
		}
	}
	/* Answers of pgfunnel's own that are due go to the client before this message. */
	if (PF_UNLIKELY(pf_reqq_synth_due(&s->rq)) && !pf_server_give_synth(s))
		return PF_PKT_STOP;
	act = linked_packet(s, hdr, pkt, avail);
	if (act == PF_PKT_FORWARD || act == PF_PKT_FORWARD_LAST)
		pool_stats->bytes_sent += hdr->total;
	return act;
}

/* A message from a server linked to a client. */
static pf_pkt_action_t linked_packet(pf_server_t *s, const pf_proto_hdr_t *hdr, const uint8_t *pkt,
                                     size_t avail)
{
	switch (hdr->type) {
	case PF_PROTO_BE_READY_FOR_QUERY:
		return ready_for_query(s, hdr, pkt, avail);
	case PF_PROTO_BE_PARAMETER_STATUS: {
		const char *name, *value;
		int var;

		if (avail < hdr->total)
			return PF_PKT_NEED_WHOLE;
		if (pf_proto_parse_parameter_status(pkt + PF_PROTO_HDR_LEN, hdr->payload_len, &name,
		                                    &value) == 0) {
			/* A SET by the client: it now wants this value on every server. */
			remember_param(s, name, value);
			var = pf_var_lookup(name);
			if (var >= 0 && pf_vars_set(&s->peer->vars, (pf_var_id_t)var, value) < 0) {
				s->ps.pool->worker->pool_ops->close_client(
				        s->ps.link, PF_CLOSE_CLIENT_OOM, NULL, NULL);
				return PF_PKT_STOP;
			}
		}
		return PF_PKT_FORWARD;
	}
	case PF_PROTO_BE_ERROR_RESPONSE: {
		pf_proto_error_t e;

		/* Errors are counted by SQLSTATE class; they are rare, so reading them is cheap. */
		if (avail < hdr->total && hdr->len < 8192)
			return PF_PKT_NEED_WHOLE;
		if (avail >= hdr->total && pf_proto_parse_error_fields(pkt + PF_PROTO_HDR_LEN,
		                                                       hdr->payload_len, &e) == 0) {
			pf_stats_note_error(s->ps.pool, e.sqlstate);
			if (PF_UNLIKELY(s->peer->prep != NULL))
				return prepared_error(s, hdr, pkt, &e);
		}
		break;
	}
	case PF_PROTO_BE_COMMAND_COMPLETE:
		if (PF_UNLIKELY(s->peer->prep_on || s->prep)) {
			if (avail < hdr->total)
				return PF_PKT_NEED_WHOLE;
			note_command(s, pkt + PF_PROTO_HDR_LEN, hdr->payload_len);
		}
		break;
	default:
		break;
	}
	return route_answer(s, hdr->type) ? PF_PKT_FORWARD : PF_PKT_SKIP;
}

static void server_on_forwarded(pf_conn_t *conn)
{
	pf_server_t *s = (pf_server_t *)conn;

	if (PF_UNLIKELY(s->lookup_answered)) {
		/* The ReadyForQuery that ends a lookup (task_packet): its client takes the answer
		 * and releases the server. */
		s->lookup_answered = false;
		if (s->ps.link)
			s->ps.pool->worker->pool_ops->lookup_done(s->ps.link);
		else
			pf_server_close(s, PF_SV_CLOSE_CLIENT_GONE);
		return;
	}
	if (s->ps.link) {
		pf_pool_client_t *pc = s->ps.link;
		pf_conn_t *cc = s->conn.peer;
		pf_worker_t *w = s->ps.pool->worker;

		pf_server_release(s);
		/* SHUTDOWN WAIT_FOR_CLIENTS (SIGTERM): a client goes as soon as its transaction
		 * is over, unless it has already sent more (served, and closed at the next end) or
		 * this was the check before a transaction (an empty query). */
		if (PF_UNLIKELY(w->shutdown == PF_SHUTDOWN_WAIT_FOR_CLIENTS) && cc &&
		    !cc->closing && !pc->link && !pc->ping && pc->state == PF_CL_ACTIVE &&
		    !pf_conn_has_input(cc) && !pf_conn_mid_message(cc))
			w->pool_ops->close_client(pc, PF_CLOSE_CLIENT_SHUTDOWN, NULL, NULL);
	}
}

static void server_on_event(pf_conn_t *conn, pf_conn_event_t ev, int status)
{
	pf_server_t *s = (pf_server_t *)conn;

	switch (ev) {
	case PF_CONN_EV_CONNECTED:
		if (status < 0) {
			pf_strlcpy(s->login_sqlstate, "08006", sizeof(s->login_sqlstate));
			free(s->login_error);
			s->login_error = malloc(256);
			if (s->login_error)
				snprintf(s->login_error, 256, "server connection failed: %s",
				         uv_strerror(status));
			pf_log_warning(s, "server connection failed: %s", uv_strerror(status));
			pf_server_close(s, PF_SV_CLOSE_CONNECT_FAILED);
			return;
		}
		request_tls_or_start(s);
		break;
	case PF_CONN_EV_EOF:
		if (!s->ready && pf_tls_error(conn)) {
			login_failed(s, "08006", "server TLS handshake failed: %s",
			             pf_tls_error(conn));
			break;
		}
		pf_server_close(s, PF_SV_CLOSE_EOF);
		break;
	case PF_CONN_EV_ERROR:
		if (pf_tls_error(conn)) {
			if (!s->ready) {
				login_failed(s, "08006", "server TLS handshake failed: %s",
				             pf_tls_error(conn));
				break;
			}
			pf_log_warning(s, "TLS error: %s", pf_tls_error(conn));
		}
		if (status == -EBADMSG || status == -EMSGSIZE || status == -ENOBUFS)
			pf_server_close(s, PF_SV_CLOSE_PROTOCOL);
		else
			pf_server_close(s, PF_SV_CLOSE_ERROR);
		break;
	case PF_CONN_EV_DRAINED:
		/* Answers of pgfunnel's own due after the last message forwarded. */
		if (s->peer && pf_reqq_synth_due(&s->rq))
			pf_server_give_synth(s);
		/* A client waiting for the outcome of its statement changes goes on once known (or
		 * once its COPY, where names mean nothing, needs its data). */
		if (s->peer && s->peer->prep_wait &&
		    (!pf_server_prep_must_wait(s, s->peer->prep_wait_parse) || s->rq.copy_in_open ||
		     s->rq.broken)) {
			s->peer->prep_wait = false;
			s->ps.pool->worker->pool_ops->resume_client(s->ps.link);
		}
		/* A client held back by a full request queue goes on once half of it is answered
		 * (here, outside message handling, so its messages cannot interleave with ours). */
		if (s->peer && s->peer->rq_full && pf_reqq_len(&s->rq) <= PF_REQQ_MAX / 2) {
			s->peer->rq_full = false;
			s->ps.pool->worker->pool_ops->resume_client(s->ps.link);
		}
		/* Linked while its own input was being read (after login, a task, or a write to
		 * the previous client), to a client whose input owes nothing: the client's drain
		 * could not release it then, so release it now. */
		if (s->ps.link && pf_server_may_release(s))
			pf_server_release(s);
		break;
	}
}

void pf_server_close(pf_server_t *s, pf_server_close_reason_t reason)
{
	pf_pool_t *pool = s->ps.pool;
	pf_worker_t *w = pool->worker;
	pf_pool_client_t *c = s->ps.link;
	bool was_login = s->ps.state == PF_SV_LOGIN;
	bool graceful, login_failed;
	char msg[600], sqlstate[6];
	unsigned host_count;

	if (s->conn.closing)
		return;
	w->server_closes[reason]++;
	if (w->cfg->log_disconnections || reason != PF_SV_CLOSE_CLIENT_GONE)
		pf_log_info(
		        s, "closing because: %s (age=%llds)", close_texts[reason],
		        (long long)((pf_worker_now(w) - s->conn.connect_time) / PF_USEC_PER_SEC));
	if (c) {
		/* Half of a message of the server's already went to the client: anything we add
		 * would be read as the rest of it, so the client is closed without a word. */
		bool mid = pf_conn_mid_message(&s->conn) && s->conn.pkt_forward;

		pf_close_reason_t cr;

		detach(s);
		pf_pool_unlink(&s->ps);
		switch (mid ? PF_SV_CLOSE_REASONS : reason) {
		case PF_SV_CLOSE_REASONS:
			cr = PF_CLOSE_CLIENT_SERVER_GONE_MID;
			break;
		case PF_SV_CLOSE_STATEMENT_MODE:
			cr = PF_CLOSE_CLIENT_STATEMENT_MODE;
			break;
		case PF_SV_CLOSE_SHUTDOWN:
			cr = PF_CLOSE_CLIENT_SHUTDOWN;
			break;
		case PF_SV_CLOSE_ADMIN:
			cr = PF_CLOSE_CLIENT_ADMIN_KILL;
			break;
		default:
			cr = PF_CLOSE_CLIENT_SERVER_GONE;
			break;
		}
		/* A parameter of the client's that the server refused: the client learns why,
		 * as PostgreSQL would tell it at login. */
		if (cr == PF_CLOSE_CLIENT_SERVER_GONE && s->sync_error)
			w->pool_ops->close_client(c, cr, s->sync_sqlstate, s->sync_error);
		else
			w->pool_ops->close_client(c, cr, NULL, NULL);
	}
	graceful = s->ready && reason != PF_SV_CLOSE_EOF && reason != PF_SV_CLOSE_ERROR &&
	           reason != PF_SV_CLOSE_PROTOCOL;
	if (graceful) {
		pf_buf_t b;

		pf_buf_init(&b);
		pf_proto_fe_terminate(&b);
		pf_conn_send_buf(&s->conn, &b);
		pf_buf_free(&b);
	}
	login_failed =
	        was_login &&
	        (reason == PF_SV_CLOSE_CONNECT_FAILED || reason == PF_SV_CLOSE_LOGIN_FAILED ||
	         reason == PF_SV_CLOSE_EOF || reason == PF_SV_CLOSE_ERROR ||
	         reason == PF_SV_CLOSE_CONNECT_TIMEOUT || reason == PF_SV_CLOSE_PROTOCOL);
	if (login_failed) {
		snprintf(msg, sizeof(msg), "%s",
		         s->login_error
		                 ? s->login_error
		                 : (reason == PF_SV_CLOSE_CONNECT_TIMEOUT
		                            ? "server connection timed out (server_connect_timeout)"
		                            : "server closed the connection during login"));
		pf_strlcpy(sqlstate, s->login_sqlstate[0] ? s->login_sqlstate : "08006",
		           sizeof(sqlstate));
	}
	/*
	 * load_balance_hosts=disable: a login that failed on the current host (connect refused
	 * or timed out, name not found, login refused, connection lost during login) moves the
	 * pool to the next host, as PgBouncer's last_connect_failed does for its next attempt.
	 * (A failure of a connection launched before an earlier move does not move it again.)
	 */
	host_count = s->host_count;
	if (login_failed && pool->db->lb_disable && s->host_count > 1 &&
	    s->host_index == pool->host_rr % s->host_count)
		pool->host_rr++;
	detach_cancels(s);
	pf_pool_server_gone(&s->ps);
	/* s may be freed from here on (a connection that never got a socket goes at once). */
	pf_conn_close(&s->conn);
	if (login_failed) {
		pf_pool_server_failed(pool, sqlstate, msg, host_count);
	} else if (pool->waiting_clients.len > 0) {
		pf_pool_launch(pool);
	}
	pf_worker_settled(w);
}

static void server_on_free(pf_conn_t *conn)
{
	pf_server_t *s = (pf_server_t *)conn;

	pf_vars_clear(&s->vars);
	for (size_t i = 0; i < s->n_params; i++) {
		free(s->param_names[i]);
		free(s->param_values[i]);
	}
	free(s->param_names);
	free(s->param_values);
	free(s->param_index);
	scram_free(s);
	free(s->login_error);
	free(s->sync_error);
	pf_dns_cancel(&s->dns_wait);
	free(s->host);
	free(s->path);
	pf_tls_ctx_unref(s->tls);
	pf_server_lookup_free(s->lookup);
	pf_reqq_free(&s->rq);
	pf_prepared_server_free(s->prep);
	free(s);
}

/* ---- cancel requests: a short-lived connection that sends 16 bytes ---- */

/*
 * A CancelRequest on its way to Postgres. While it is in flight its server is not given to
 * another client: Postgres signals a canceled backend more than once (the process and its
 * group), and a late signal must not cancel the next client's query. The server keeps a list
 * of its cancels; whichever goes first detaches from the other.
 */
typedef struct cancel_conn {
	pf_conn_t conn;
	pf_server_t *target; /* NULL once the server is gone */
	pf_list_node_t target_node;
	uint32_t pid, key;
} cancel_conn_t;

static void cancel_detach(cancel_conn_t *cc)
{
	pf_server_t *s = cc->target;

	if (!s)
		return;
	pf_list_remove(&s->cancels, &cc->target_node);
	cc->target = NULL;
	/* The last cancel finished: a server held back at its release may go on now. */
	if (pf_list_is_empty(&s->cancels) && s->ps.state == PF_SV_USED && !s->conn.closing)
		pf_pool_finish_release(&s->ps);
}

static void cancel_finish(cancel_conn_t *cc)
{
	pf_worker_t *w = pf_conn_worker(&cc->conn);

	if (cc->conn.closing)
		return;
	pf_list_remove(&w->cancel_conns, &cc->conn.node);
	cancel_detach(cc);
	pf_conn_close(&cc->conn); /* may free cc */
}

static pf_pkt_action_t cancel_on_packet(pf_conn_t *conn, const pf_proto_hdr_t *hdr,
                                        const uint8_t *pkt, size_t avail)
{
	(void)hdr;
	(void)pkt;
	(void)avail;
	cancel_finish((cancel_conn_t *)conn);
	return PF_PKT_STOP;
}

static void cancel_on_event(pf_conn_t *conn, pf_conn_event_t ev, int status)
{
	cancel_conn_t *cc = (cancel_conn_t *)conn;

	if (ev == PF_CONN_EV_CONNECTED && status == 0) {
		pf_buf_t b;

		pf_buf_init(&b);
		pf_proto_fe_cancel_request(&b, cc->pid, cc->key);
		pf_conn_send_buf(conn, &b);
		pf_buf_free(&b);
		/* Postgres closes the connection once it has signalled the backend. */
		return;
	}
	if (ev != PF_CONN_EV_DRAINED)
		cancel_finish(cc);
}

static void cancel_on_free(pf_conn_t *conn)
{
	free(conn);
}

static const pf_conn_ops_t cancel_ops = {
        .on_packet = cancel_on_packet,
        .on_event = cancel_on_event,
        .on_free = cancel_on_free,
};

void pf_server_send_cancel(pf_server_t *s)
{
	pf_worker_t *w = s->ps.pool->worker;
	cancel_conn_t *cc = calloc(1, sizeof(*cc));

	if (!cc)
		return;
	pf_conn_init(&cc->conn, &w->net, &cancel_ops, false);
	cc->pid = s->be_pid;
	cc->key = s->be_key;
	cc->target = s;
	pf_list_append(&s->cancels, &cc->target_node);
	pf_list_append(&w->cancel_conns, &cc->conn.node);
	/* To the backend's own address (with several hosts, the next pick could be another). */
	if ((s->host   ? pf_conn_connect(&cc->conn, &s->conn.addr.sa, NULL)
	     : s->path ? pf_conn_connect(&cc->conn, NULL, s->path)
	               : -ENOTCONN) < 0)
		cancel_finish(cc);
}

void pf_server_close_cancels(pf_worker_t *w)
{
	pf_list_node_t *n;

	while ((n = pf_list_first(&w->cancel_conns)))
		cancel_finish(PF_CONTAINER_OF(n, cancel_conn_t, conn.node));
}

void pf_server_expire_cancels(pf_worker_t *w, pf_usec_t now)
{
	pf_list_node_t *n;

	/* Oldest first; cancel_wait_timeout bounds how long a server is held back. */
	while ((n = pf_list_first(&w->cancel_conns))) {
		cancel_conn_t *cc = PF_CONTAINER_OF(n, cancel_conn_t, conn.node);

		if (w->cfg->cancel_wait_timeout <= 0 ||
		    now - cc->conn.connect_time <= w->cfg->cancel_wait_timeout)
			break;
		pf_log_warning(NULL, "cancel request to backend %u timed out (cancel_wait_timeout)",
		               cc->pid);
		cancel_finish(cc);
	}
}

/* Forgets the cancels still in flight for s (s is closing). */
static void detach_cancels(pf_server_t *s)
{
	pf_list_node_t *n;

	while ((n = pf_list_pop(&s->cancels)))
		PF_CONTAINER_OF(n, cancel_conn_t, target_node)->target = NULL;
}
