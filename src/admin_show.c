/*
 * admin_show: the console's SHOW commands, one handler each, answering with PgBouncer's column
 * names, types and order (../shared/pgbouncer-compat.md). Each handler appends RowDescription,
 * DataRows and CommandComplete to out; the dispatcher (admin.c) adds ReadyForQuery.
 */
#include "config.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pgfunnel/admin.h"
#include "pgfunnel/server.h"
#include "pgfunnel/worker.h"

static void show_help(pf_client_t *c, const char *arg, pf_buf_t *out);
static void show_pools(pf_client_t *c, const char *arg, pf_buf_t *out);
static void show_clients(pf_client_t *c, const char *arg, pf_buf_t *out);
static void show_servers(pf_client_t *c, const char *arg, pf_buf_t *out);
static void show_version(pf_client_t *c, const char *arg, pf_buf_t *out);

static const pf_admin_show_t show_commands[] = {
	{"HELP", show_help, false},
	{"POOLS", show_pools, false},
	{"CLIENTS", show_clients, false},
	{"SERVERS", show_servers, false},
	{"VERSION", show_version, false},
};

const pf_admin_show_t *pf_admin_find_show(const char *name)
{
	for (size_t i = 0; i < PF_ARRAY_SIZE(show_commands); i++) {
		if (strcmp(name, show_commands[i].name) == 0)
			return &show_commands[i];
	}
	return NULL;
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

