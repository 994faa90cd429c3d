/*
 * admin_show: the console's SHOW commands, one handler each, answering with PgBouncer's column
 * names, types and order (../shared/pgbouncer-compat.md). Each handler appends RowDescription,
 * DataRows and CommandComplete to out; the dispatcher (admin.c) adds ReadyForQuery.
 *
 * Everything is read from the worker's lists at the moment of the command: counts are list
 * lengths, so SHOW POOLS, SHOW CLIENTS/SERVERS and SHOW LISTS/MEM agree with each other. Types
 * follow PgBouncer's code (stats columns numeric, timestamps text, flags int 0/1). Secrets never
 * appear: SHOW FDS sends NULL in its password and SCRAM key columns.
 */
#include "pfbuild.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "pgfunnel/admin.h"
#include "pgfunnel/dns.h"
#include "pgfunnel/peer.h"
#include "pgfunnel/server.h"
#include "pgfunnel/stats.h"
#include "pgfunnel/runtime.h"
#include "pgfunnel/tls.h"

typedef void (*show_fn)(pf_client_t *c, const char *arg, pf_buf_t *out);

static void show_help(pf_client_t *c, const char *arg, pf_buf_t *out);
static void show_config(pf_client_t *c, const char *arg, pf_buf_t *out);
static void show_databases(pf_client_t *c, const char *arg, pf_buf_t *out);
static void show_pools(pf_client_t *c, const char *arg, pf_buf_t *out);
static void show_clients(pf_client_t *c, const char *arg, pf_buf_t *out);
static void show_servers(pf_client_t *c, const char *arg, pf_buf_t *out);
static void show_users(pf_client_t *c, const char *arg, pf_buf_t *out);
static void show_version(pf_client_t *c, const char *arg, pf_buf_t *out);
static void show_peers(pf_client_t *c, const char *arg, pf_buf_t *out);
static void show_peer_pools(pf_client_t *c, const char *arg, pf_buf_t *out);
static void show_fds(pf_client_t *c, const char *arg, pf_buf_t *out);
static void show_sockets(pf_client_t *c, const char *arg, pf_buf_t *out);
static void show_active_sockets(pf_client_t *c, const char *arg, pf_buf_t *out);
static void show_lists(pf_client_t *c, const char *arg, pf_buf_t *out);
static void show_mem(pf_client_t *c, const char *arg, pf_buf_t *out);
static void show_state(pf_client_t *c, const char *arg, pf_buf_t *out);
static void show_dns_hosts(pf_client_t *c, const char *arg, pf_buf_t *out);
static void show_dns_zones(pf_client_t *c, const char *arg, pf_buf_t *out);
static void show_stats(pf_client_t *c, const char *arg, pf_buf_t *out);
static void show_stats_totals(pf_client_t *c, const char *arg, pf_buf_t *out);
static void show_stats_averages(pf_client_t *c, const char *arg, pf_buf_t *out);
static void show_totals(pf_client_t *c, const char *arg, pf_buf_t *out);

static const pf_admin_show_t show_commands[] = {
        {"HELP", show_help, false},
        {"CONFIG", show_config, false},
        {"DATABASES", show_databases, false},
        {"POOLS", show_pools, false},
        {"CLIENTS", show_clients, false},
        {"SERVERS", show_servers, false},
        {"USERS", show_users, false},
        {"VERSION", show_version, false},
        {"PEERS", show_peers, false},
        {"PEER_POOLS", show_peer_pools, false},
        {"FDS", show_fds, true},
        {"SOCKETS", show_sockets, false},
        {"ACTIVE_SOCKETS", show_active_sockets, false},
        {"LISTS", show_lists, false},
        {"MEM", show_mem, false},
        {"STATE", show_state, false},
        {"DNS_HOSTS", show_dns_hosts, false},
        {"DNS_ZONES", show_dns_zones, false},
        {"STATS", show_stats, false},
        {"STATS_TOTALS", show_stats_totals, false},
        {"STATS_AVERAGES", show_stats_averages, false},
        {"TOTALS", show_totals, false},
};

const pf_admin_show_t *pf_admin_find_show(const char *name)
{
	for (size_t i = 0; i < PF_ARRAY_SIZE(show_commands); i++) {
		if (strcmp(name, show_commands[i].name) == 0)
			return &show_commands[i];
	}
	return NULL;
}

/* ---- helpers ---- */

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

/* PgBouncer's load_balance_hosts column: the mode name when host is a list, else NULL. */
static const char *load_balance_name(const pf_config_t *cfg, const pf_database_t *db)
{
	const pf_config_db_t *e;

	if (!db->host || !strchr(db->host, ','))
		return NULL;
	e = pf_config_find_db(cfg, db->name);
	return e && e->load_balance_hosts == PF_LB_DISABLE ? "disable" : "round-robin";
}

static int32_t usec_to_int_sec(pf_usec_t t)
{
	return (int32_t)(t / PF_USEC_PER_SEC);
}

/* The pid of a unix-socket peer (SO_PEERCRED), or 0. */
static int32_t unix_peer_pid(const pf_conn_t *conn)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);
	int fd;

	if (!conn->is_unix || (fd = pf_conn_fd(conn)) < 0)
		return 0;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
		return 0;
	return (int32_t)cred.pid;
}

/* Clients of a pool in every state, servers of a pool in every state. */
static size_t pool_client_count(const pf_pool_t *p)
{
	return p->active_clients.len + p->waiting_clients.len;
}

static bool db_is_listed(const pf_database_t *db)
{
	return db->in_config || db->admin;
}

/* ---- SHOW HELP / VERSION / STATE ---- */

static void show_help(pf_client_t *c, const char *arg, pf_buf_t *out)
{
	(void)c;
	(void)arg;
	pf_proto_be_notice(out, "NOTICE", "00000", "Console usage",
	                   "\n\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION\n"
	                   "\tSHOW PEERS|PEER_POOLS\n"
	                   "\tSHOW FDS|SOCKETS|ACTIVE_SOCKETS|LISTS|MEM|STATE\n"
	                   "\tSHOW DNS_HOSTS|DNS_ZONES\n"
	                   "\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS\n"
	                   "\tSET key = arg\n"
	                   "\tRELOAD\n"
	                   "\tPAUSE [<db>]\n"
	                   "\tRESUME [<db>]\n"
	                   "\tDISABLE <db>\n"
	                   "\tENABLE <db>\n"
	                   "\tRECONNECT [<db>]\n"
	                   "\tKILL [<db>]\n"
	                   "\tKILL_CLIENT <client_id>\n"
	                   "\tSUSPEND\n"
	                   "\tSHUTDOWN\n"
	                   "\tSHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS\n"
	                   "\tWAIT_CLOSE [<db>]",
	                   NULL);
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

static void show_state(pf_client_t *c, const char *arg, pf_buf_t *out)
{
	static const char *const names[] = {"key", "value"};
	pf_worker_t *w = pf_conn_worker(&c->conn);
	bool suspended = w->suspended;
	bool paused = w->paused && !suspended;

	(void)arg;
	pf_proto_be_row_description(out, "ss", names);
	pf_proto_be_data_row(out, "ss", "active", !paused && !suspended ? "yes" : "no");
	pf_proto_be_data_row(out, "ss", "paused", paused ? "yes" : "no");
	pf_proto_be_data_row(out, "ss", "suspended", suspended ? "yes" : "no");
	pf_proto_be_command_complete(out, "SHOW");
}

/* ---- SHOW CONFIG ---- */

static void show_config(pf_client_t *c, const char *arg, pf_buf_t *out)
{
	static const char *const names[] = {"key", "value", "default", "changeable"};
	const pf_config_t *cfg = pf_conn_worker(&c->conn)->cfg;
	pf_config_t *defaults = pf_config_new_defaults();
	const pf_config_param_t *params;
	size_t n;
	char value[1024], def[1024];

	(void)arg;
	params = pf_config_params(&n);
	pf_proto_be_row_description(out, "ssss", names);
	for (size_t i = 0; i < n; i++) {
		const pf_config_param_t *p = &params[i];
		bool has_value = pf_config_format(cfg, p, value, sizeof(value)) != -ENOENT;
		bool has_def;

		if (defaults)
			has_def = pf_config_format(defaults, p, def, sizeof(def)) != -ENOENT;
		else
			has_def = p->def && pf_strlcpy(def, p->def, sizeof(def)) < sizeof(def);
		pf_proto_be_data_row(out, "ssss", p->name, has_value ? value : NULL,
		                     has_def ? def : NULL, p->reloadable ? "yes" : "no");
	}
	pf_config_free(defaults);
	pf_proto_be_command_complete(out, "SHOW");
}

/* ---- SHOW DATABASES / USERS / PEERS / PEER_POOLS ---- */

static void show_databases(pf_client_t *c, const char *arg, pf_buf_t *out)
{
	static const char *const names[] = {
	        "name",
	        "host",
	        "port",
	        "database",
	        "force_user",
	        "pool_size",
	        "min_pool_size",
	        "reserve_pool_size",
	        "server_lifetime",
	        "pool_mode",
	        "load_balance_hosts",
	        "max_connections",
	        "current_connections",
	        "max_client_connections",
	        "current_client_connections",
	        "paused",
	        "disabled",
	};
	static const char types[] = "ssissiiiissiiiiii";
	pf_worker_t *w = pf_conn_worker(&c->conn);
	const pf_config_t *cfg = w->cfg;
	pf_list_node_t *it, *tmp;

	(void)arg;
	pf_proto_be_row_description(out, types, names);
	PF_LIST_FOREACH(&w->databases, it, tmp)
	{
		pf_database_t *db = PF_CONTAINER_OF(it, pf_database_t, node);
		int max_conn = db->max_db_connections > 0 ? db->max_db_connections
		                                          : cfg->max_db_connections;
		int max_client = db->max_db_client_connections > 0 ? db->max_db_client_connections
		                                                   : cfg->max_db_client_connections;

		if (!db_is_listed(db))
			continue;
		pf_proto_be_data_row(
		        out, types, db->name, db->host,
		        (int32_t)(db->admin ? cfg->listen_port : db->port),
		        db->dbname ? db->dbname : db->name,
		        db->forced_user ? db->forced_user->name : NULL,
		        (int32_t)(db->pool_size >= 0 ? db->pool_size : cfg->default_pool_size),
		        (int32_t)(db->min_pool_size >= 0 ? db->min_pool_size : cfg->min_pool_size),
		        (int32_t)(db->reserve_pool_size >= 0 ? db->reserve_pool_size
		                                             : cfg->reserve_pool_size),
		        usec_to_int_sec(pf_database_server_lifetime(db, cfg)),
		        db->pool_mode != PF_POOL_INHERIT ? pool_mode_name(db->pool_mode) : NULL,
		        load_balance_name(cfg, db), (int32_t)max_conn, (int32_t)db->server_count,
		        (int32_t)max_client, (int32_t)db->client_conns, (int32_t)db->paused,
		        (int32_t)db->disabled);
	}
	pf_proto_be_command_complete(out, "SHOW");
}

static void user_row(pf_buf_t *out, const pf_config_t *cfg, const char *name, int pool_size,
                     int reserve, int pool_mode, int max_conn, int server_count, int client_count)
{
	const pf_config_user_t *e = pf_config_find_user(cfg, name);
	char ps[16] = "", rs[16] = "";
	int max_client = e && e->max_user_client_connections > 0 ? e->max_user_client_connections
	                                                         : cfg->max_user_client_connections;

	/* PgBouncer sends the sizes as text, blank when the user does not set them. */
	if (pool_size >= 0)
		snprintf(ps, sizeof(ps), "%9d", pool_size);
	if (reserve >= 0)
		snprintf(rs, sizeof(rs), "%9d", reserve);
	pf_proto_be_data_row(out, "ssssiiii", name, ps, rs,
	                     pool_mode != PF_POOL_INHERIT ? pool_mode_name(pool_mode) : NULL,
	                     (int32_t)(max_conn > 0 ? max_conn : cfg->max_user_connections),
	                     (int32_t)server_count, (int32_t)max_client, (int32_t)client_count);
}

static bool user_is_known(pf_worker_t *w, const char *name)
{
	pf_list_node_t *it, *tmp;

	PF_LIST_FOREACH(&w->users, it, tmp)
	{
		if (strcmp(PF_CONTAINER_OF(it, pf_user_t, node)->name, name) == 0)
			return true;
	}
	return false;
}

static void show_users(pf_client_t *c, const char *arg, pf_buf_t *out)
{
	static const char *const names[] = {
	        "name",
	        "pool_size",
	        "reserve_pool_size",
	        "pool_mode",
	        "max_user_connections",
	        "current_connections",
	        "max_user_client_connections",
	        "current_client_connections",
	};
	pf_worker_t *w = pf_conn_worker(&c->conn);
	const pf_config_t *cfg = w->cfg;
	pf_list_node_t *it, *tmp;

	(void)arg;
	pf_proto_be_row_description(out, "ssssiiii", names);
	PF_LIST_FOREACH(&w->users, it, tmp)
	{
		pf_user_t *u = PF_CONTAINER_OF(it, pf_user_t, node);

		user_row(out, cfg, u->name, u->pool_size, u->reserve_pool_size, u->pool_mode,
		         u->max_user_connections, u->server_count, u->client_count);
	}
	/* [users] entries nobody has logged in as yet. */
	for (size_t i = 0; i < cfg->n_users; i++) {
		const pf_config_user_t *e = &cfg->users[i];

		if (!user_is_known(w, e->name))
			user_row(out, cfg, e->name, e->pool_size, e->reserve_pool_size,
			         e->pool_mode, e->max_user_connections, 0, 0);
	}
	/* And, as in PgBouncer, every other auth_file user. */
	for (size_t i = 0; w->auth_file && i < pf_auth_file_count(w->auth_file); i++) {
		const char *name = pf_auth_file_entry(w->auth_file, i)->name;

		if (!user_is_known(w, name) && !pf_config_find_user(cfg, name))
			user_row(out, cfg, name, -1, -1, PF_POOL_INHERIT, -1, 0, 0);
	}
	pf_proto_be_command_complete(out, "SHOW");
}

static void show_peers(pf_client_t *c, const char *arg, pf_buf_t *out)
{
	static const char *const names[] = {"peer_id", "host", "port", "pool_size"};
	const pf_config_t *cfg = pf_conn_worker(&c->conn)->cfg;

	(void)arg;
	pf_proto_be_row_description(out, "isii", names);
	for (size_t i = 0; i < cfg->n_peers; i++) {
		const pf_config_peer_t *p = &cfg->peers[i];

		pf_proto_be_data_row(
		        out, "isii", (int32_t)p->peer_id, p->host, (int32_t)p->port,
		        (int32_t)(p->pool_size >= 0 ? p->pool_size : cfg->default_pool_size));
	}
	pf_proto_be_command_complete(out, "SHOW");
}

static void show_peer_pools(pf_client_t *c, const char *arg, pf_buf_t *out)
{
	static const char *const names[] = {"peer_id", "cl_active_cancel_req",
	                                    "cl_waiting_cancel_req", "sv_active_cancel",
	                                    "sv_login"};

	pf_worker_t *w = pf_conn_worker(&c->conn);
	pf_peer_pool_stats_t st;

	(void)arg;
	/* One row per peer forwarded to (peer.c). PgBouncer's requesters wait for their forward;
	 * ours are answered at once, so cl_* count the forwards themselves. */
	pf_proto_be_row_description(out, "iiiii", names);
	for (size_t i = 0; pf_peer_pool_stats(w, i, &st); i++)
		pf_proto_be_data_row(out, "iiiii", (int32_t)st.peer_id, (int32_t)st.active,
		                     (int32_t)(st.waiting + st.connecting), (int32_t)st.active,
		                     (int32_t)st.connecting);
	pf_proto_be_command_complete(out, "SHOW");
}

/* ---- SHOW POOLS ---- */

static void show_pools(pf_client_t *c, const char *arg, pf_buf_t *out)
{
	static const char *const names[] = {
	        "database",
	        "user",
	        "cl_active",
	        "cl_waiting",
	        "cl_active_cancel_req",
	        "cl_waiting_cancel_req",
	        "sv_active",
	        "sv_active_cancel",
	        "sv_being_canceled",
	        "sv_idle",
	        "sv_used",
	        "sv_tested",
	        "sv_login",
	        "maxwait",
	        "maxwait_us",
	        "pool_mode",
	        "load_balance_hosts",
	};
	static const char types[] = "ssiiiiiiiiiiiiiss";
	pf_worker_t *w = pf_conn_worker(&c->conn);
	pf_usec_t now = pf_worker_now(w);
	pf_list_node_t *it, *tmp;

	(void)arg;
	pf_proto_be_row_description(out, types, names);
	PF_LIST_FOREACH(&w->pools, it, tmp)
	{
		pf_pool_t *p = PF_CONTAINER_OF(it, pf_pool_t, node);
		pf_list_node_t *wit, *wtmp;
		pf_usec_t maxwait = 0;

		/* The longest current wait (the queue is in arrival order, but be exact). */
		PF_LIST_FOREACH(&p->waiting_clients, wit, wtmp)
		{
			pf_client_t *wc = pf_client_from_node(wit);

			if (wc->pc.wait_start && now - wc->pc.wait_start > maxwait)
				maxwait = now - wc->pc.wait_start;
		}
		pf_proto_be_data_row(
		        out, types, p->db->name, p->user->name, (int32_t)p->active_clients.len,
		        (int32_t)p->waiting_clients.len, 0, 0, (int32_t)p->active_servers.len, 0, 0,
		        (int32_t)p->idle_servers.len, (int32_t)p->used_servers.len,
		        (int32_t)p->tested_servers.len, (int32_t)p->new_servers.len,
		        (int32_t)(maxwait / PF_USEC_PER_SEC), (int32_t)(maxwait % PF_USEC_PER_SEC),
		        pool_mode_name(pf_pool_mode(p)), load_balance_name(w->cfg, p->db));
	}
	pf_proto_be_command_complete(out, "SHOW");
}

/* ---- SHOW CLIENTS / SERVERS / SOCKETS / ACTIVE_SOCKETS ---- */

static const char *const socket_columns[] = {
        "type",
        "user",
        "database",
        "replication",
        "state",
        "addr",
        "port",
        "local_addr",
        "local_port",
        "connect_time",
        "request_time",
        "wait",
        "wait_us",
        "close_needed",
        "ptr",
        "link",
        "remote_pid",
        "tls",
        "application_name",
        "prepared_statements",
        "id",
        /* SOCKETS / ACTIVE_SOCKETS only */
        "recv_pos",
        "pkt_pos",
        "pkt_remain",
        "send_pos",
        "send_remain",
        "pkt_avail",
        "send_avail",
};
#define SOCKET_TYPES       "ssssssisissiiississiq"
#define SOCKET_DEBUG_TYPES SOCKET_TYPES "iiiiiii"

/* What differs between a client row and a server row. */
typedef struct socket_info {
	const char *type; /* "C" or "S" */
	const char *user;
	const char *db;
	const char *state;
	const pf_conn_t *link; /* the linked server or client, or NULL */
	int32_t remote_pid;
	const char *appname;
	pf_usec_t wait;
	bool close_needed;
	uint32_t prepared; /* prepared_statements */
} socket_info_t;

/* True when conn holds bytes not yet processed or not yet written out. */
static bool conn_has_buffered(const pf_conn_t *conn)
{
	return conn->rbuf && (conn->rend > conn->rpos || conn->fwd_pending ||
	                      (conn->fwd_open && conn->fwd_start < conn->rpos));
}

static void socket_row(pf_buf_t *out, pf_worker_t *w, const pf_conn_t *conn,
                       const socket_info_t *si, bool debug)
{
	char addr[64], laddr[64], ctime[32], rtime[32], ptr[32], lptr[32] = "", tls[160];
	int port, lport;
	int32_t wait_s = (int32_t)(si->wait / PF_USEC_PER_SEC);
	int32_t wait_us = (int32_t)(si->wait % PF_USEC_PER_SEC);
	uint32_t send_pos = conn->fwd_open ? conn->fwd_start : conn->rpos;

	pf_conn_addr_text(&conn->addr, addr, sizeof(addr), &port);
	pf_sockaddr_t local;

	pf_conn_local_addr(conn, &local);
	pf_conn_addr_text(&local, laddr, sizeof(laddr), &lport);
	format_time(w, conn->connect_time, ctime, sizeof(ctime));
	format_time(w, conn->request_time, rtime, sizeof(rtime));
	/* Not heap addresses, which a stats user has no business seeing: the connection's id in
	 * hex, as in the C-0x…/S-0x… log prefixes, so link still names the other side's ptr. */
	snprintf(ptr, sizeof(ptr), "0x%" PRIx64, conn->id);
	if (si->link)
		snprintf(lptr, sizeof(lptr), "0x%" PRIx64, si->link->id);
	pf_tls_describe(conn, tls, sizeof(tls));
	if (!debug) {
		pf_proto_be_data_row(out, SOCKET_TYPES, si->type, si->user, si->db, "none",
		                     si->state, addr, (int32_t)port, laddr, (int32_t)lport, ctime,
		                     rtime, wait_s, wait_us, (int32_t)si->close_needed, ptr, lptr,
		                     si->remote_pid, tls, si->appname ? si->appname : "",
		                     (int32_t)si->prepared, (int64_t)conn->id);
		return;
	}
	pf_proto_be_data_row(
	        out, SOCKET_DEBUG_TYPES, si->type, si->user, si->db, "none", si->state, addr,
	        (int32_t)port, laddr, (int32_t)lport, ctime, rtime, wait_s, wait_us,
	        (int32_t)si->close_needed, ptr, lptr, si->remote_pid, tls,
	        si->appname ? si->appname : "", (int32_t)si->prepared, (int64_t)conn->id,
	        (int32_t)(conn->rbuf ? conn->rend : 0), (int32_t)(conn->rbuf ? conn->rpos : 0),
	        (int32_t)conn->pkt_remain, (int32_t)(conn->rbuf ? send_pos : 0), (int32_t)0,
	        (int32_t)(conn->rbuf ? conn->rend - conn->rpos : 0),
	        (int32_t)(conn->rbuf && conn->rpos > send_pos ? conn->rpos - send_pos : 0));
}

/* Which rows a socket listing writes and how it names states. */
typedef struct socket_listing {
	bool debug;       /* the 28-column SOCKETS format */
	bool only_active; /* ACTIVE_SOCKETS: only connections with buffered bytes */
	pf_usec_t now;
} socket_listing_t;

static void client_rows(pf_buf_t *out, pf_worker_t *w, const pf_list_t *list, const char *state,
                        const socket_listing_t *sl)
{
	pf_list_node_t *it, *tmp;

	PF_LIST_FOREACH(list, it, tmp)
	{
		pf_client_t *cl = pf_client_from_node(it);
		socket_info_t si = {
		        .type = "C",
		        .user = cl->user_name ? cl->user_name : "(nouser)",
		        .db = cl->db        ? cl->db->name
		              : cl->db_name ? cl->db_name
		                            : "(nodb)",
		        .state = state,
		        .link = pf_client_server(cl) ? &pf_client_server(cl)->conn : NULL,
		        .remote_pid = unix_peer_pid(&cl->conn),
		        .appname = cl->peer.vars.v[PF_VAR_APPLICATION_NAME],
		        .wait = cl->pc.wait_start && cl->pc.state == PF_CL_WAITING
		                        ? sl->now - cl->pc.wait_start
		                        : 0,
		        .prepared = pf_prepared_client_count(cl->peer.prep),
		};

		if (sl->only_active && !conn_has_buffered(&cl->conn))
			continue;
		/* A logged-in client without a server is idle (PgBouncer 1.2x). */
		if (!pf_client_server(cl) && strcmp(state, "active") == 0)
			si.state = "idle";
		socket_row(out, w, &cl->conn, &si, sl->debug);
	}
}

static void server_rows(pf_buf_t *out, pf_worker_t *w, const pf_list_t *list, const char *state,
                        const socket_listing_t *sl)
{
	pf_list_node_t *it, *tmp;

	PF_LIST_FOREACH(list, it, tmp)
	{
		pf_server_t *s = pf_server_from_node(it);
		socket_info_t si = {
		        .type = "S",
		        .user = s->ps.pool->user->name,
		        .db = s->ps.pool->db->name,
		        .state = state,
		        .link = pf_server_client(s) ? &pf_server_client(s)->conn : NULL,
		        .remote_pid = (int32_t)s->be_pid,
		        .appname = s->vars.v[PF_VAR_APPLICATION_NAME],
		        .wait = 0,
		        .close_needed = s->ps.close_needed,
		        .prepared = pf_prepared_server_count(s->prep),
		};

		if (sl->only_active && !conn_has_buffered(&s->conn))
			continue;
		socket_row(out, w, &s->conn, &si, sl->debug);
	}
}

static void show_clients(pf_client_t *c, const char *arg, pf_buf_t *out)
{
	pf_worker_t *w = pf_conn_worker(&c->conn);
	socket_listing_t sl = {.now = pf_worker_now(w)};
	pf_list_node_t *it, *tmp;

	(void)arg;
	pf_proto_be_row_description(out, SOCKET_TYPES, socket_columns);
	PF_LIST_FOREACH(&w->pools, it, tmp)
	{
		pf_pool_t *p = PF_CONTAINER_OF(it, pf_pool_t, node);

		client_rows(out, w, &p->active_clients, "active", &sl);
		client_rows(out, w, &p->waiting_clients, "waiting", &sl);
	}
	/* Cancel requests are forwarded at once, so they are all active ones. */
	client_rows(out, w, &w->cancel_clients, "active_cancel_req", &sl);
	pf_proto_be_command_complete(out, "SHOW");
}

static void show_servers(pf_client_t *c, const char *arg, pf_buf_t *out)
{
	pf_worker_t *w = pf_conn_worker(&c->conn);
	socket_listing_t sl = {.now = pf_worker_now(w)};
	pf_list_node_t *it, *tmp;

	(void)arg;
	pf_proto_be_row_description(out, SOCKET_TYPES, socket_columns);
	PF_LIST_FOREACH(&w->pools, it, tmp)
	{
		pf_pool_t *p = PF_CONTAINER_OF(it, pf_pool_t, node);

		server_rows(out, w, &p->active_servers, "active", &sl);
		server_rows(out, w, &p->idle_servers, "idle", &sl);
		server_rows(out, w, &p->used_servers, "used", &sl);
		server_rows(out, w, &p->tested_servers, "tested", &sl);
		server_rows(out, w, &p->new_servers, "new", &sl);
	}
	pf_proto_be_command_complete(out, "SHOW");
}

static void socket_listing(pf_client_t *c, pf_buf_t *out, bool only_active)
{
	pf_worker_t *w = pf_conn_worker(&c->conn);
	socket_listing_t sl = {.debug = true, .only_active = only_active, .now = pf_worker_now(w)};
	pf_list_node_t *it, *tmp;

	pf_proto_be_row_description(out, SOCKET_DEBUG_TYPES, socket_columns);
	PF_LIST_FOREACH(&w->pools, it, tmp)
	{
		pf_pool_t *p = PF_CONTAINER_OF(it, pf_pool_t, node);

		client_rows(out, w, &p->active_clients, "cl_active", &sl);
		client_rows(out, w, &p->waiting_clients, "cl_waiting", &sl);
		server_rows(out, w, &p->active_servers, "sv_active", &sl);
		server_rows(out, w, &p->idle_servers, "sv_idle", &sl);
		server_rows(out, w, &p->used_servers, "sv_used", &sl);
		server_rows(out, w, &p->tested_servers, "sv_tested", &sl);
		server_rows(out, w, &p->new_servers, "sv_login", &sl);
	}
	client_rows(out, w, &w->login_clients, "cl_login", &sl);
	pf_proto_be_command_complete(out, "SHOW");
}

static void show_sockets(pf_client_t *c, const char *arg, pf_buf_t *out)
{
	(void)arg;
	socket_listing(c, out, false);
}

static void show_active_sockets(pf_client_t *c, const char *arg, pf_buf_t *out)
{
	(void)arg;
	socket_listing(c, out, true);
}

/* ---- SHOW FDS ---- */

#define FDS_TYPES "issssiqisssssss"

static void fd_row(pf_buf_t *out, const pf_conn_t *conn, const char *task, const char *user,
                   const char *db, uint64_t cancel, const pf_conn_t *link, const pf_vars_t *vars)
{
	char addr[64];
	int port, fd = pf_conn_fd(conn), link_fd = link ? pf_conn_fd(link) : 0;

	if (fd < 0)
		return;
	pf_conn_addr_text(&conn->addr, addr, sizeof(addr), &port);
	/* password, scram_client_key and scram_server_key: never shown. */
	pf_proto_be_data_row(out, FDS_TYPES, (int32_t)fd, task, user, db, addr, (int32_t)port,
	                     (int64_t)cancel, (int32_t)(link_fd > 0 ? link_fd : 0),
	                     vars->v[PF_VAR_CLIENT_ENCODING],
	                     vars->v[PF_VAR_STANDARD_CONFORMING_STRINGS], vars->v[PF_VAR_DATESTYLE],
	                     vars->v[PF_VAR_TIMEZONE], NULL, NULL, NULL);
}

static void fd_client_rows(pf_buf_t *out, const pf_list_t *list)
{
	pf_list_node_t *it, *tmp;

	PF_LIST_FOREACH(list, it, tmp)
	{
		pf_client_t *cl = pf_client_from_node(it);

		fd_row(out, &cl->conn, "client", cl->user_name, cl->db ? cl->db->name : NULL,
		       ((uint64_t)cl->ck.pid << 32) | cl->ck.key,
		       pf_client_server(cl) ? &pf_client_server(cl)->conn : NULL, &cl->peer.vars);
	}
}

static void fd_server_rows(pf_buf_t *out, const pf_list_t *list)
{
	pf_list_node_t *it, *tmp;

	PF_LIST_FOREACH(list, it, tmp)
	{
		pf_server_t *s = pf_server_from_node(it);

		fd_row(out, &s->conn, "server", s->ps.pool->user->name, s->ps.pool->db->name,
		       ((uint64_t)s->be_pid << 32) | s->be_key,
		       pf_server_client(s) ? &pf_server_client(s)->conn : NULL, &s->vars);
	}
}

static void show_fds(pf_client_t *c, const char *arg, pf_buf_t *out)
{
	static const char *const names[] = {
	        "fd",        "task",     "user",     "database",         "addr",
	        "port",      "cancel",   "link",     "client_encoding",  "std_strings",
	        "datestyle", "timezone", "password", "scram_client_key", "scram_server_key",
	};
	pf_worker_t *w = pf_conn_worker(&c->conn);
	pf_list_node_t *it, *tmp;

	(void)arg;
	/* Cancel keys of every client: admin_users only (the table says so too). */
	if (!c->cold->admin_can_write) {
		pf_proto_be_error(out, "ERROR", "08P01", "admin access needed", NULL, NULL);
		return;
	}
	pf_proto_be_row_description(out, FDS_TYPES, names);
	for (size_t i = 0; i < w->nlisteners; i++) {
		const pf_listener_t *l = &w->listeners[i];
		struct sockaddr_storage ss;
		int len = sizeof(ss);
		char addr[64];
		int port = w->cfg->listen_port;
		uv_os_fd_t fd;

		if (!l->open || uv_fileno(&l->h.handle, &fd) < 0)
			continue;
		if (l->is_unix) {
			pf_strlcpy(addr, "unix", sizeof(addr));
		} else {
			memset(&ss, 0, sizeof(ss));
			if (uv_tcp_getsockname(&l->h.tcp, (struct sockaddr *)&ss, &len) < 0)
				continue;
			pf_conn_addr_text(&ss, addr, sizeof(addr), &port);
		}
		pf_proto_be_data_row(out, FDS_TYPES, (int32_t)fd, "pooler", NULL, NULL, addr,
		                     (int32_t)port, (int64_t)0, (int32_t)0, NULL, NULL, NULL, NULL,
		                     NULL, NULL, NULL);
	}
	fd_client_rows(out, &w->login_clients);
	PF_LIST_FOREACH(&w->pools, it, tmp)
	{
		pf_pool_t *p = PF_CONTAINER_OF(it, pf_pool_t, node);

		if (p->db->admin)
			continue;
		fd_client_rows(out, &p->active_clients);
		fd_client_rows(out, &p->waiting_clients);
		fd_server_rows(out, &p->active_servers);
		fd_server_rows(out, &p->idle_servers);
		fd_server_rows(out, &p->used_servers);
		fd_server_rows(out, &p->tested_servers);
		fd_server_rows(out, &p->new_servers);
	}
	pf_proto_be_command_complete(out, "SHOW");
}

/* ---- SHOW LISTS / MEM / DNS_* ---- */

/* Live object counts, for SHOW LISTS and SHOW MEM. */
typedef struct object_counts {
	size_t databases, users, pools, clients, servers;
} object_counts_t;

static void count_objects(pf_worker_t *w, object_counts_t *n)
{
	pf_list_node_t *it, *tmp;

	memset(n, 0, sizeof(*n));
	n->users = w->users.len;
	n->clients = w->login_clients.len + w->cancel_clients.len;
	PF_LIST_FOREACH(&w->databases, it, tmp)
	{
		pf_database_t *db = PF_CONTAINER_OF(it, pf_database_t, node);

		n->databases++;
		if (db->forced_user)
			n->users++;
	}
	PF_LIST_FOREACH(&w->pools, it, tmp)
	{
		pf_pool_t *p = PF_CONTAINER_OF(it, pf_pool_t, node);

		n->pools++;
		n->clients += pool_client_count(p);
		n->servers += pf_pool_server_count(p);
	}
}

static void show_lists(pf_client_t *c, const char *arg, pf_buf_t *out)
{
	static const char *const names[] = {"list", "items"};
	pf_worker_t *w = pf_conn_worker(&c->conn);
	object_counts_t n;
	size_t listed_dbs = 0;
	pf_list_node_t *it, *tmp;

	(void)arg;
	count_objects(w, &n);
	PF_LIST_FOREACH(&w->databases, it, tmp)
	{
		if (db_is_listed(PF_CONTAINER_OF(it, pf_database_t, node)))
			listed_dbs++;
	}
	const struct {
		const char *name;
		size_t items;
	} rows[] = {
	        {"databases", listed_dbs},
	        {"users", w->users.len},
	        {"peers", w->cfg->n_peers},
	        {"pools", n.pools},
	        {"peer_pools", 0},
	        {"free_clients", 0}, /* clients are malloc'ed, there is no free cache */
	        {"used_clients", n.clients},
	        {"login_clients", w->login_clients.len},
	        {"free_servers", 0},
	        {"used_servers", n.servers},
	        {"dns_names", pf_dns_name_count(w->dns)},
	        {"dns_zones", pf_dns_zone_count(w->dns)},
	        {"dns_queries", pf_dns_pending_count(w->dns)},
	        {"dns_pending", 0},
	};

	pf_proto_be_row_description(out, "si", names);
	for (size_t i = 0; i < PF_ARRAY_SIZE(rows); i++)
		pf_proto_be_data_row(out, "si", rows[i].name, (int32_t)rows[i].items);
	pf_proto_be_command_complete(out, "SHOW");
}

static void show_mem(pf_client_t *c, const char *arg, pf_buf_t *out)
{
	static const char *const names[] = {"name", "size", "used", "free", "memtotal"};
	pf_worker_t *w = pf_conn_worker(&c->conn);
	object_counts_t n;

	(void)arg;
	count_objects(w, &n);
	const struct {
		const char *name;
		size_t size, used, free;
	} rows[] = {
	        {"user_cache", sizeof(pf_user_t), n.users, 0},
	        {"db_cache", sizeof(pf_database_t), n.databases, 0},
	        {"pool_cache", sizeof(pf_pool_t), n.pools, 0},
	        {"server_cache", sizeof(pf_server_t), n.servers, 0},
	        {"client_cache", sizeof(pf_client_t), n.clients, 0},
	        {"iobuf_cache", w->net.buffer_size, w->net.buffers_in_use,
	         w->net.free_buffer_count},
	        /* pgfunnel's own: socket handles (connections not parked), slab slots */
	        {"handle_cache", sizeof(pf_net_handle_t), w->net.handles_in_use,
	         w->net.handles_free},
	};

	pf_proto_be_row_description(out, "siiii", names);
	for (size_t i = 0; i < PF_ARRAY_SIZE(rows); i++)
		pf_proto_be_data_row(out, "siiii", rows[i].name, (int32_t)rows[i].size,
		                     (int32_t)rows[i].used, (int32_t)rows[i].free,
		                     (int32_t)(rows[i].size * (rows[i].used + rows[i].free)));
	pf_proto_be_command_complete(out, "SHOW");
}

typedef struct dns_rows {
	pf_buf_t *out;
	pf_usec_t now;
} dns_rows_t;

/* One SHOW DNS_HOSTS row: seconds left, addresses as PgBouncer prints them ("ip:0,..."). */
static void dns_host_row(void *arg, const char *name, pf_usec_t expires, const pf_sockaddr_t *addrs,
                         size_t n)
{
	dns_rows_t *r = arg;
	char list[PF_DNS_MAX_ADDRS * 56 + 1];
	size_t len = 0;

	list[0] = '\0';
	for (size_t i = 0; i < n; i++) {
		char text[64];
		int port;

		pf_conn_addr_text(&addrs[i], text, sizeof(text), &port);
		len += (size_t)snprintf(list + len, sizeof(list) - len,
		                        addrs[i].sa.sa_family == AF_INET6 ? "%s[%s]:0" : "%s%s:0",
		                        i ? "," : "", text);
		if (len >= sizeof(list))
			break;
	}
	pf_proto_be_data_row(r->out, "sqs", name,
	                     (int64_t)(expires > r->now ? (expires - r->now) / PF_USEC_PER_SEC : 0),
	                     list);
}

static void show_dns_hosts(pf_client_t *c, const char *arg, pf_buf_t *out)
{
	static const char *const names[] = {"hostname", "ttl", "addrs"};
	pf_worker_t *w = pf_conn_worker(&c->conn);
	dns_rows_t r = {out, pf_worker_now(w)};

	(void)arg;
	pf_proto_be_row_description(out, "sqs", names);
	if (w->dns)
		pf_dns_walk(w->dns, dns_host_row, &r);
	pf_proto_be_command_complete(out, "SHOW");
}

static void dns_zone_row(void *arg, const char *zone, uint32_t serial, size_t names)
{
	pf_proto_be_data_row(arg, "sqi", zone, (int64_t)serial, (int32_t)names);
}

static void show_dns_zones(pf_client_t *c, const char *arg, pf_buf_t *out)
{
	static const char *const names[] = {"zonename", "serial", "count"};
	pf_worker_t *w = pf_conn_worker(&c->conn);

	(void)arg;
	pf_proto_be_row_description(out, "sqi", names);
	if (w->dns)
		pf_dns_walk_zones(w->dns, dns_zone_row, out);
	pf_proto_be_command_complete(out, "SHOW");
}

/* ---- SHOW STATS / STATS_TOTALS / STATS_AVERAGES / TOTALS ---- */

/* Databases SHOW STATS lists: those with a pool, or with counts from pools already freed. */
static bool db_has_stats(pf_worker_t *w, const pf_database_t *db)
{
	const pf_pool_stats_t *r = &db->stats_retired;
	pf_list_node_t *it, *tmp;

	PF_LIST_FOREACH(&w->pools, it, tmp)
	{
		if (PF_CONTAINER_OF(it, pf_pool_t, node)->db == db)
			return true;
	}
	return r->server_assignment_count || r->xact_count || r->query_count || r->bytes_received ||
	       r->bytes_sent;
}

#define STATS_FIELDS(s)                                                                            \
	(s)->server_assignment_count, (s)->xact_count, (s)->query_count, (s)->bytes_received,      \
	        (s)->bytes_sent, (s)->xact_time, (s)->query_time, (s)->wait_time,                  \
	        (s)->client_parse_count, (s)->server_parse_count, (s)->bind_count

static void show_stats(pf_client_t *c, const char *arg, pf_buf_t *out)
{
	static const char *const names[] = {
	        "database",
	        "total_server_assignment_count",
	        "total_xact_count",
	        "total_query_count",
	        "total_received",
	        "total_sent",
	        "total_xact_time",
	        "total_query_time",
	        "total_wait_time",
	        "total_client_parse_count",
	        "total_server_parse_count",
	        "total_bind_count",
	        "avg_server_assignment_count",
	        "avg_xact_count",
	        "avg_query_count",
	        "avg_recv",
	        "avg_sent",
	        "avg_xact_time",
	        "avg_query_time",
	        "avg_wait_time",
	        "avg_client_parse_count",
	        "avg_server_parse_count",
	        "avg_bind_count",
	};
	static const char types[] = "sNNNNNNNNNNNNNNNNNNNNNN";
	pf_worker_t *w = pf_conn_worker(&c->conn);
	pf_list_node_t *it, *tmp;

	(void)arg;
	pf_proto_be_row_description(out, types, names);
	PF_LIST_FOREACH(&w->databases, it, tmp)
	{
		pf_database_t *db = PF_CONTAINER_OF(it, pf_database_t, node);
		pf_pool_stats_t t;

		if (!db_has_stats(w, db))
			continue;
		pf_stats_db_totals(w, db, &t);
		pf_proto_be_data_row(out, types, db->name, STATS_FIELDS(&t),
		                     STATS_FIELDS(&db->stats_avg));
	}
	pf_proto_be_command_complete(out, "SHOW");
}

static void stats_one_set(pf_client_t *c, pf_buf_t *out, bool averages)
{
	static const char *const total_names[] = {
	        "database",           "server_assignment_count",
	        "xact_count",         "query_count",
	        "bytes_received",     "bytes_sent",
	        "xact_time",          "query_time",
	        "wait_time",          "client_parse_count",
	        "server_parse_count", "bind_count",
	};
	static const char *const avg_names[] = {
	        "database",
	        "server_assignment_count",
	        "xact_count",
	        "query_count",
	        "bytes_received",
	        "bytes_sent",
	        "xact_time",
	        "query_time",
	        "wait_time",
	        "avg_client_parse_count",
	        "avg_server_parse_count",
	        "avg_bind_count",
	};
	static const char types[] = "sNNNNNNNNNNN";
	pf_worker_t *w = pf_conn_worker(&c->conn);
	pf_list_node_t *it, *tmp;

	pf_proto_be_row_description(out, types, averages ? avg_names : total_names);
	PF_LIST_FOREACH(&w->databases, it, tmp)
	{
		pf_database_t *db = PF_CONTAINER_OF(it, pf_database_t, node);
		pf_pool_stats_t t;

		if (!db_has_stats(w, db))
			continue;
		if (averages)
			t = db->stats_avg;
		else
			pf_stats_db_totals(w, db, &t);
		pf_proto_be_data_row(out, types, db->name, STATS_FIELDS(&t));
	}
	pf_proto_be_command_complete(out, "SHOW");
}

static void show_stats_totals(pf_client_t *c, const char *arg, pf_buf_t *out)
{
	(void)arg;
	stats_one_set(c, out, false);
}

static void show_stats_averages(pf_client_t *c, const char *arg, pf_buf_t *out)
{
	(void)arg;
	stats_one_set(c, out, true);
}

static void show_totals(pf_client_t *c, const char *arg, pf_buf_t *out)
{
	static const char *const names[] = {"name", "value"};
	static const char *const counters[] = {
	        "server_assignment_count",
	        "xact_count",
	        "query_count",
	        "client_bytes",
	        "server_bytes",
	        "xact_time",
	        "query_time",
	        "wait_time",
	        "ps_client_parse_count",
	        "ps_server_parse_count",
	        "ps_bind_count",
	};
	pf_worker_t *w = pf_conn_worker(&c->conn);
	pf_pool_stats_t total = {0}, avg = {0};
	/* Weighted sums of the per-database average times (weights: their rates). */
	uint64_t xact_w = 0, query_w = 0, wait_w = 0;
	pf_list_node_t *it, *tmp;
	char name[64];

	(void)arg;
	PF_LIST_FOREACH(&w->databases, it, tmp)
	{
		pf_database_t *db = PF_CONTAINER_OF(it, pf_database_t, node);
		const pf_pool_stats_t *a = &db->stats_avg;
		pf_pool_stats_t t;

		pf_stats_db_totals(w, db, &t);
		pf_pool_stats_add(&total, &t);
		/* Rates add up; times per transaction/query/assignment are averaged by weight. */
		avg.server_assignment_count += a->server_assignment_count;
		avg.xact_count += a->xact_count;
		avg.query_count += a->query_count;
		avg.bytes_received += a->bytes_received;
		avg.bytes_sent += a->bytes_sent;
		avg.client_parse_count += a->client_parse_count;
		avg.server_parse_count += a->server_parse_count;
		avg.bind_count += a->bind_count;
		xact_w += a->xact_time * a->xact_count;
		query_w += a->query_time * a->query_count;
		wait_w += a->wait_time * a->server_assignment_count;
	}
	avg.xact_time = avg.xact_count ? xact_w / avg.xact_count : 0;
	avg.query_time = avg.query_count ? query_w / avg.query_count : 0;
	avg.wait_time = avg.server_assignment_count ? wait_w / avg.server_assignment_count : 0;

	const uint64_t tv[] = {STATS_FIELDS(&total)};
	const uint64_t av[] = {STATS_FIELDS(&avg)};

	_Static_assert(PF_ARRAY_SIZE(tv) == PF_ARRAY_SIZE(counters), "one name per counter");
	pf_proto_be_row_description(out, "sN", names);
	for (size_t i = 0; i < PF_ARRAY_SIZE(counters); i++) {
		snprintf(name, sizeof(name), "total_%s", counters[i]);
		pf_proto_be_data_row(out, "sN", name, tv[i]);
	}
	for (size_t i = 0; i < PF_ARRAY_SIZE(counters); i++) {
		snprintf(name, sizeof(name), "avg_%s", counters[i]);
		pf_proto_be_data_row(out, "sN", name, av[i]);
	}
	pf_proto_be_command_complete(out, "SHOW");
}
