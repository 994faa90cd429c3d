/*
 * admin: the console database. Parses a command from a Query message, runs its handler from the
 * command table and answers with PgBouncer's column names and order
 * (../shared/pgbouncer-compat.md). This first version serves SHOW POOLS, CLIENTS, SERVERS,
 * VERSION and HELP; the admin-console issue completes the set.
 */
#include "config.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "pgfunnel/admin.h"
#include "pgfunnel/log.h"
#include "pgfunnel/server.h"
#include "pgfunnel/worker.h"

typedef void (*admin_handler_t)(pf_client_t *c, const char *arg, pf_buf_t *out);

static void show_help(pf_client_t *c, const char *arg, pf_buf_t *out);
static void show_pools(pf_client_t *c, const char *arg, pf_buf_t *out);
static void show_clients(pf_client_t *c, const char *arg, pf_buf_t *out);
static void show_servers(pf_client_t *c, const char *arg, pf_buf_t *out);
static void show_version(pf_client_t *c, const char *arg, pf_buf_t *out);

static const struct {
	const char *name;
	admin_handler_t handler;
} show_commands[] = {
	{"HELP", show_help},	       {"POOLS", show_pools},	  {"CLIENTS", show_clients},
	{"SERVERS", show_servers},     {"VERSION", show_version},
};

bool pf_admin_peer_is_owner(const pf_client_t *c)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);
	uv_os_fd_t fd;

	if (!c->conn.is_unix || uv_fileno(&c->conn.h.handle, &fd) < 0)
		return false;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
		return false;
	return cred.uid == geteuid();
}

void pf_admin_login(pf_client_t *c)
{
	pf_worker_t *w = c->conn.worker;
	pf_buf_t b;
	static const char *const params[][2] = {
		{"server_version", PF_VERSION "/pgfunnel"},
		{"server_encoding", "UTF8"},
		{"client_encoding", "UTF8"},
		{"DateStyle", "ISO"},
		{"TimeZone", "UTC"},
		{"standard_conforming_strings", "on"},
		{"integer_datetimes", "on"},
		{"application_name", ""},
	};

	c->admin = true;
	c->pool = pf_pool_get(w, c->db, c->db->forced_user);
	if (!c->pool) {
		pf_client_close(c, PF_CLOSE_CLIENT_OOM, NULL, NULL);
		return;
	}
	c->db->client_count++;
	pf_pool_set_client_state(c, PF_CL_ACTIVE);
	pf_buf_init(&b);
	pf_proto_be_auth_ok(&b);
	for (size_t i = 0; i < PF_ARRAY_SIZE(params); i++)
		pf_proto_be_parameter_status(&b, params[i][0], params[i][1]);
	pf_proto_be_backend_key_data(&b, 0, 0);
	pf_proto_be_ready_for_query(&b, PF_PROTO_TX_IDLE);
	pf_conn_send_buf(&c->conn, &b);
	pf_buf_free(&b);
	if (w->cfg->log_connections)
		pf_log_info(c, "login attempt: db=%s user=%s tls=no (admin console)", c->db_name,
			    c->user_name);
}

static void format_time(pf_worker_t *w, pf_usec_t t, char *buf, size_t n)
{
	time_t sec = (time_t)(pf_worker_wall_time(w, t) / PF_USEC_PER_SEC);
	struct tm tm;

	gmtime_r(&sec, &tm);
	strftime(buf, n, "%Y-%m-%d %H:%M:%S UTC", &tm);
}

static const char *pool_mode_name(int mode)
{
	switch (mode) {
	case PF_POOL_TRANSACTION:
		return "transaction";
	case PF_POOL_STATEMENT:
		return "statement";
	default:
		return "session";
	}
}

static void show_help(pf_client_t *c, const char *arg, pf_buf_t *out)
{
	(void)c;
	(void)arg;
	pf_proto_be_notice(out, "NOTICE", "00000", "Console usage",
			   "\n\tSHOW HELP|POOLS|CLIENTS|SERVERS|VERSION", NULL);
	pf_proto_be_command_complete(out, "SHOW");
}

static void show_version(pf_client_t *c, const char *arg, pf_buf_t *out)
{
	static const char *const names[] = {"version"};

	(void)c;
	(void)arg;
	pf_proto_be_row_description(out, "s", names);
	pf_proto_be_data_row(out, "s", PF_PACKAGE " " PF_VERSION);
	pf_proto_be_command_complete(out, "SHOW");
}

static void show_pools(pf_client_t *c, const char *arg, pf_buf_t *out)
{
	static const char *const names[] = {
		"database",	 "user",		  "cl_active",	       "cl_waiting",
		"cl_active_cancel_req", "cl_waiting_cancel_req", "sv_active", "sv_active_cancel",
		"sv_being_canceled", "sv_idle",		  "sv_used",	       "sv_tested",
		"sv_login",	 "maxwait",		  "maxwait_us",	       "pool_mode",
		"load_balance_hosts",
	};
	pf_worker_t *w = c->conn.worker;
	pf_usec_t now = pf_worker_now(w);
	pf_list_node_t *it, *tmp;

	(void)arg;
	pf_proto_be_row_description(out, "ssiiiiiiiiiiiiiss", names);
	PF_LIST_FOREACH(&w->pools, it, tmp)
	{
		pf_pool_t *p = PF_CONTAINER_OF(it, pf_pool_t, node);
		pf_list_node_t *first = pf_list_first(&p->waiting_clients);
		pf_usec_t maxwait = 0;

		if (first) {
			pf_client_t *wc = PF_CONTAINER_OF(first, pf_client_t, conn.node);

			if (wc->wait_start)
				maxwait = now - wc->wait_start;
		}
		pf_proto_be_data_row(
			out, "ssiiiiiiiiiiiiiss", p->db->name, p->user->name,
			(int32_t)p->active_clients.len, (int32_t)p->waiting_clients.len, 0, 0,
			(int32_t)p->active_servers.len, 0, 0, (int32_t)p->idle_servers.len,
			(int32_t)p->used_servers.len, (int32_t)p->tested_servers.len,
			(int32_t)p->new_servers.len, (int32_t)(maxwait / PF_USEC_PER_SEC),
			(int32_t)(maxwait % PF_USEC_PER_SEC), pool_mode_name(pf_pool_mode(p)),
			p->db->host && strchr(p->db->host, ',') ? "round-robin" : NULL);
	}
	pf_proto_be_command_complete(out, "SHOW");
}

static const char *const socket_columns[] = {
	"type",		"user",		"database",	"replication",	"state",
	"addr",		"port",		"local_addr",	"local_port",	"connect_time",
	"request_time", "wait",		"wait_us",	"close_needed", "ptr",
	"link",		"remote_pid",	"tls",		"application_name",
	"prepared_statements",		"id",
};
#define SOCKET_TYPES "ssssssisissiiississiq"

static void conn_row(pf_buf_t *out, pf_worker_t *w, const pf_conn_t *conn, const char *type,
		     const char *user, const char *db, const char *state, const void *link,
		     int remote_pid, const char *appname, pf_usec_t wait, bool close_needed)
{
	char addr[64], laddr[64], ctime[32], rtime[32], ptr[32], lptr[32];
	int port, lport;

	pf_conn_addr_text(&conn->addr, addr, sizeof(addr), &port);
	pf_conn_addr_text(&conn->local_addr, laddr, sizeof(laddr), &lport);
	format_time(w, conn->connect_time, ctime, sizeof(ctime));
	format_time(w, conn->request_time, rtime, sizeof(rtime));
	snprintf(ptr, sizeof(ptr), "%p", (const void *)conn);
	snprintf(lptr, sizeof(lptr), "%p", link);
	pf_proto_be_data_row(out, SOCKET_TYPES, type, user, db, "no", state, addr, (int32_t)port,
			     laddr, (int32_t)lport, ctime, rtime, (int32_t)(wait / PF_USEC_PER_SEC),
			     (int32_t)(wait % PF_USEC_PER_SEC), (int32_t)close_needed, ptr,
			     link ? lptr : NULL, (int32_t)remote_pid, NULL, appname ? appname : "",
			     (int32_t)0, (int64_t)conn->id);
}

static void client_rows(pf_buf_t *out, pf_worker_t *w, pf_list_t *list, pf_usec_t now)
{
	pf_list_node_t *it, *tmp;

	PF_LIST_FOREACH(list, it, tmp)
	{
		pf_client_t *cl = PF_CONTAINER_OF(it, pf_client_t, conn.node);
		const char *state = cl->state == PF_CL_ACTIVE ? (cl->link ? "active" : "idle")
							      : "waiting";

		conn_row(out, w, &cl->conn, "C", cl->user_name, cl->db_name, state, cl->link, 0,
			 cl->vars.v[PF_VAR_APPLICATION_NAME],
			 cl->wait_start ? now - cl->wait_start : 0, false);
	}
}

static void show_clients(pf_client_t *c, const char *arg, pf_buf_t *out)
{
	pf_worker_t *w = c->conn.worker;
	pf_usec_t now = pf_worker_now(w);
	pf_list_node_t *it, *tmp;

	(void)arg;
	pf_proto_be_row_description(out, SOCKET_TYPES, socket_columns);
	PF_LIST_FOREACH(&w->pools, it, tmp)
	{
		pf_pool_t *p = PF_CONTAINER_OF(it, pf_pool_t, node);

		client_rows(out, w, &p->active_clients, now);
		client_rows(out, w, &p->waiting_clients, now);
	}
	pf_proto_be_command_complete(out, "SHOW");
}

static void server_rows(pf_buf_t *out, pf_worker_t *w, pf_list_t *list, const char *state)
{
	pf_list_node_t *it, *tmp;

	PF_LIST_FOREACH(list, it, tmp)
	{
		pf_server_t *s = PF_CONTAINER_OF(it, pf_server_t, conn.node);

		conn_row(out, w, &s->conn, "S", s->pool->user->name, s->pool->db->name, state,
			 s->link, (int)s->be_pid, s->vars.v[PF_VAR_APPLICATION_NAME], 0,
			 s->close_needed);
	}
}

static void show_servers(pf_client_t *c, const char *arg, pf_buf_t *out)
{
	pf_worker_t *w = c->conn.worker;
	pf_list_node_t *it, *tmp;

	(void)arg;
	pf_proto_be_row_description(out, SOCKET_TYPES, socket_columns);
	PF_LIST_FOREACH(&w->pools, it, tmp)
	{
		pf_pool_t *p = PF_CONTAINER_OF(it, pf_pool_t, node);

		server_rows(out, w, &p->active_servers, "active");
		server_rows(out, w, &p->idle_servers, "idle");
		server_rows(out, w, &p->used_servers, "used");
		server_rows(out, w, &p->tested_servers, "tested");
		server_rows(out, w, &p->new_servers, "new");
	}
	pf_proto_be_command_complete(out, "SHOW");
}

/* Next word of s (letters, digits, '_'), uppercased into buf; returns the rest. */
static const char *next_word(const char *s, char *buf, size_t n)
{
	size_t len = 0;

	while (isspace((unsigned char)*s))
		s++;
	while (*s && (isalnum((unsigned char)*s) || *s == '_')) {
		if (len + 1 < n)
			buf[len++] = (char)toupper((unsigned char)*s);
		s++;
	}
	buf[len] = '\0';
	return s;
}

void pf_admin_run(pf_client_t *c, const char *sql, pf_buf_t *out)
{
	char verb[32], what[32], msg[200];
	const char *rest = next_word(sql, verb, sizeof(verb));

	if (strcmp(verb, "SHOW") == 0) {
		rest = next_word(rest, what, sizeof(what));
		for (size_t i = 0; i < PF_ARRAY_SIZE(show_commands); i++) {
			if (strcmp(what, show_commands[i].name) == 0) {
				show_commands[i].handler(c, rest, out);
				pf_proto_be_ready_for_query(out, PF_PROTO_TX_IDLE);
				return;
			}
		}
	}
	snprintf(msg, sizeof(msg), "invalid command \"%s\", use SHOW HELP;", sql);
	pf_proto_be_error(out, "ERROR", "42601", msg, NULL,
			  "Available: SHOW HELP|POOLS|CLIENTS|SERVERS|VERSION");
	pf_proto_be_ready_for_query(out, PF_PROTO_TX_IDLE);
}

pf_pkt_action_t pf_admin_packet(pf_client_t *c, const pf_proto_hdr_t *hdr, const uint8_t *pkt,
				size_t avail)
{
	pf_buf_t out;
	char *sql;
	size_t len;

	if (hdr->type != PF_PROTO_FE_QUERY) {
		pf_client_close(c, PF_CLOSE_CLIENT_PROTOCOL, "08P01",
				"extended query protocol not supported by admin console");
		return PF_PKT_STOP;
	}
	if (avail < hdr->len + 1u)
		return PF_PKT_NEED_WHOLE;
	len = hdr->payload_len;
	if (len == 0 || pkt[PF_PROTO_HDR_LEN + len - 1] != '\0') {
		pf_client_close(c, PF_CLOSE_CLIENT_PROTOCOL, "08P01", "invalid query message");
		return PF_PKT_STOP;
	}
	sql = strdup((const char *)pkt + PF_PROTO_HDR_LEN);
	if (!sql) {
		pf_client_close(c, PF_CLOSE_CLIENT_OOM, NULL, NULL);
		return PF_PKT_STOP;
	}
	/* Trailing blanks and semicolons are optional. */
	for (len = strlen(sql); len > 0 && (isspace((unsigned char)sql[len - 1]) || sql[len - 1] == ';');)
		sql[--len] = '\0';
	pf_buf_init(&out);
	pf_admin_run(c, sql, &out);
	pf_conn_send_buf(&c->conn, &out);
	pf_buf_free(&out);
	free(sql);
	return PF_PKT_CONSUMED;
}
