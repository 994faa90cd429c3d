/*
 * admin: the console database. Parses a command from a Query message, runs its handler from the
 * command table and answers with PgBouncer's column names and order
 * (../shared/pgbouncer-compat.md). The SHOW handlers live in admin_show.c.
 */
#include "pfbuild.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "pgfunnel/admin.h"
#include "pgfunnel/log.h"
#include "pgfunnel/runtime.h"
#include "pgfunnel/server.h"
#include "pgfunnel/tls.h"

void pf_admin_login(pf_client_t *c)
{
	pf_worker_t *w = pf_conn_worker(&c->conn);
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

	c->cold->admin = true;
	c->pc.pool = pf_pool_get(w, c->db, c->db->forced_user);
	if (!c->pc.pool) {
		pf_client_close(c, PF_CLOSE_CLIENT_OOM, NULL, NULL);
		return;
	}
	c->db->client_count++;
	pf_pool_set_client_state(&c->pc, PF_CL_ACTIVE);
	pf_buf_init(&b);
	pf_proto_be_auth_ok(&b);
	for (size_t i = 0; i < PF_ARRAY_SIZE(params); i++)
		pf_proto_be_parameter_status(&b, params[i][0], params[i][1]);
	pf_proto_be_backend_key_data(&b, 0, 0);
	pf_proto_be_ready_for_query(&b, PF_PROTO_TX_IDLE);
	pf_conn_send_buf(&c->conn, &b);
	pf_buf_free(&b);
	if (w->cfg->log_connections) {
		char tls[160];

		pf_tls_describe(&c->conn, tls, sizeof(tls));
		pf_log_info(c, "login attempt: db=%s user=%s tls=%s (admin console)", c->db_name,
		            c->user_name, tls[0] ? tls : "no");
	}
}

int pf_admin_next_word(const char **s, char *buf, size_t n, bool upper)
{
	const char *p = *s;
	size_t len = 0;

	if (n == 0)
		return -ENAMETOOLONG;
	buf[0] = '\0';
	while (isspace((unsigned char)*p))
		p++;
	if (*p == '"') {
		/* A quoted identifier, as in SQL: "" stands for one quote; it must be closed and
		 * must not be empty (Postgres: "zero-length delimited identifier", 42601). */
		for (p++;; p++) {
			if (*p == '\0')
				return -EINVAL;
			if (*p == '"' && p[1] != '"')
				break;
			if (*p == '"')
				p++;
			if (len + 1 >= n)
				return -ENAMETOOLONG;
			buf[len++] = *p;
		}
		if (len == 0)
			return -EINVAL;
		p++;
	} else {
		while (*p && (isalnum((unsigned char)*p) || *p == '_' || *p == '-' || *p == '.')) {
			if (len + 1 >= n)
				return -ENAMETOOLONG;
			buf[len++] = upper ? (char)toupper((unsigned char)*p) : *p;
			p++;
		}
	}
	buf[len] = '\0';
	*s = p;
	return len > 0;
}

int pf_admin_parse_id(const char *s, uint64_t *out)
{
	uint64_t v = 0;

	if (!*s)
		return -EINVAL;
	for (; *s; s++) {
		unsigned d = (unsigned)(*s - '0');

		/* Digits only: strtoull would take "-1" as 2^64-1, and "+1", "0x1" or " 1". */
		if (d > 9)
			return -EINVAL;
		if (v > (UINT64_MAX - d) / 10)
			return -ERANGE;
		v = v * 10 + d;
	}
	*out = v;
	return 0;
}

static bool only_blanks(const char *s)
{
	while (isspace((unsigned char)*s))
		s++;
	return *s == '\0';
}

static void command_ok(pf_buf_t *out, const char *tag)
{
	pf_proto_be_command_complete(out, tag);
	pf_proto_be_ready_for_query(out, PF_PROTO_TX_IDLE);
}

static void command_error(pf_buf_t *out, const char *sqlstate, const char *msg, const char *hint)
{
	pf_proto_be_error(out, "ERROR", sqlstate, msg, NULL, hint);
	pf_proto_be_ready_for_query(out, PF_PROTO_TX_IDLE);
}

/*
 * The non-console database called name, or NULL after an error in out: 3D000 for a name that
 * is no database, and PgBouncer's words (refusal, e.g. "cannot pause admin db") with 42809
 * for the console's own (pgfunnel, or its alias pgbouncer), which no command controls.
 */
static pf_database_t *target_db(pf_worker_t *w, const char *name, const char *refusal,
                                pf_buf_t *out)
{
	const char *look = strcmp(name, PF_ADMIN_DBNAME_ALIAS) == 0 ? PF_ADMIN_DBNAME : name;
	pf_list_node_t *it, *tmp;
	char msg[320];

	PF_LIST_FOREACH(&w->databases, it, tmp)
	{
		pf_database_t *db = PF_CONTAINER_OF(it, pf_database_t, node);

		if (strcmp(db->name, look) != 0)
			continue;
		if (!db->admin)
			return db;
		snprintf(msg, sizeof(msg), "%s: %s", refusal, name);
		command_error(out, "42809", msg, NULL);
		return NULL;
	}
	snprintf(msg, sizeof(msg), "no such database: %s", name);
	command_error(out, "3D000", msg, NULL);
	return NULL;
}

/* Whether pool belongs to the command's target (db NULL = every database but the console). */
static bool pool_in_scope(const pf_pool_t *p, const pf_database_t *db)
{
	return !p->db->admin && (!db || p->db == db);
}

/*
 * SUSPEND: whether every non-console socket has flushed what it owes. Past suspend_timeout the
 * connections that still have not are dropped, as PgBouncer does, and the answer goes out.
 */
static bool suspend_flushed(pf_worker_t *w)
{
	bool expired = w->cfg->suspend_timeout > 0 &&
	               pf_worker_now(w) - w->suspend_start > w->cfg->suspend_timeout;
	pf_list_node_t *it, *tmp, *cit, *ctmp;
	bool flushed = true;

	PF_LIST_FOREACH(&w->pools, it, tmp)
	{
		pf_pool_t *p = PF_CONTAINER_OF(it, pf_pool_t, node);
		pf_list_t *clients[] = {&p->active_clients, &p->waiting_clients};
		pf_list_t *servers[] = {&p->active_servers, &p->idle_servers, &p->used_servers,
		                        &p->tested_servers, &p->new_servers};

		if (p->db->admin)
			continue;
		for (size_t i = 0; i < PF_ARRAY_SIZE(clients); i++) {
			PF_LIST_FOREACH(clients[i], cit, ctmp)
			{
				pf_client_t *cl = pf_client_from_node(cit);

				if (!pf_conn_has_pending_writes(&cl->conn))
					continue;
				flushed = false;
				if (expired)
					pf_client_close(cl, PF_CLOSE_CLIENT_ADMIN_KILL, "08006",
					                "could not flush the connection within "
					                "suspend_timeout");
			}
		}
		for (size_t i = 0; i < PF_ARRAY_SIZE(servers); i++) {
			PF_LIST_FOREACH(servers[i], cit, ctmp)
			{
				pf_server_t *sv = pf_server_from_node(cit);

				if (!pf_conn_has_pending_writes(&sv->conn))
					continue;
				flushed = false;
				if (expired)
					pf_server_close(sv, PF_SV_CLOSE_ADMIN);
			}
		}
	}
	return flushed || expired;
}

/* Whether a waiting command (PAUSE, WAIT_CLOSE, SUSPEND) may answer now. */
static bool wait_done(pf_client_t *c)
{
	pf_worker_t *w = pf_conn_worker(&c->conn);
	pf_list_node_t *it, *tmp, *sit, *stmp;

	if (c->cold->admin_wait == PF_ADMIN_WAIT_SUSPEND)
		return suspend_flushed(w);
	PF_LIST_FOREACH(&w->pools, it, tmp)
	{
		pf_pool_t *p = PF_CONTAINER_OF(it, pf_pool_t, node);
		pf_list_t *lists[] = {&p->active_servers, &p->idle_servers, &p->used_servers,
		                      &p->tested_servers, &p->new_servers};

		if (!pool_in_scope(p, c->cold->admin_wait_db))
			continue;
		if (c->cold->admin_wait == PF_ADMIN_WAIT_PAUSE && pf_pool_server_count(p) > 0)
			return false;
		if (c->cold->admin_wait != PF_ADMIN_WAIT_CLOSE)
			continue;
		for (size_t i = 0; i < PF_ARRAY_SIZE(lists); i++) {
			PF_LIST_FOREACH(lists[i], sit, stmp)
			{
				if (pf_server_from_node(sit)->ps.close_needed)
					return false;
			}
		}
	}
	return true;
}

static const char *const wait_tags[] = {
        [PF_ADMIN_WAIT_NONE] = "",
        [PF_ADMIN_WAIT_PAUSE] = "PAUSE",
        [PF_ADMIN_WAIT_CLOSE] = "WAIT_CLOSE",
        [PF_ADMIN_WAIT_SUSPEND] = "SUSPEND",
};

/* Whether any console session is logged in. */
static bool console_sessions_left(pf_worker_t *w)
{
	pf_list_node_t *it, *tmp;

	PF_LIST_FOREACH(&w->pools, it, tmp)
	{
		pf_pool_t *p = PF_CONTAINER_OF(it, pf_pool_t, node);

		if (p->db->admin && p->active_clients.len > 0)
			return true;
	}
	return false;
}

void pf_admin_poll(pf_worker_t *w)
{
	pf_list_node_t *it, *tmp, *cit, *ctmp;

	bool waiting;

	/* Called at every release of a server (each transaction): nothing to do unless a
	 * console command waits or a SUSPEND is on, so the pools are not walked then. */
	if (!w->admin_waiting && !w->suspended)
		return;
	/* Answering one waiter runs its next command, which may close servers and call here. */
	if (w->in_admin_poll)
		return;
	w->in_admin_poll = true;
again:
	waiting = false;
	PF_LIST_FOREACH(&w->pools, it, tmp)
	{
		pf_pool_t *p = PF_CONTAINER_OF(it, pf_pool_t, node);

		if (!p->db->admin)
			continue;
		PF_LIST_FOREACH(&p->active_clients, cit, ctmp)
		{
			pf_client_t *c = pf_client_from_node(cit);
			pf_buf_t out;

			if (c->cold->admin_wait == PF_ADMIN_WAIT_NONE)
				continue;
			if (!wait_done(c)) {
				waiting = true;
				continue;
			}
			pf_buf_init(&out);
			command_ok(&out, wait_tags[c->cold->admin_wait]);
			c->cold->admin_wait = PF_ADMIN_WAIT_NONE;
			c->cold->admin_wait_db = NULL;
			pf_conn_send_buf(&c->conn, &out);
			pf_buf_free(&out);
			/* Commands it sent meanwhile; they may close any client (KILL_CLIENT) or
			 * free pools (RELOAD), so both walks start over. Each pass answers one
			 * waiter. */
			pf_conn_resume(&c->conn);
			goto again;
		}
	}
	w->admin_waiting = waiting;
	/* A SUSPEND outlives no console: with every listener stopped none could come to
	 * RESUME, so when the last console session is gone the pooler resumes by itself (as
	 * PgBouncer does). */
	if (w->suspended && !console_sessions_left(w)) {
		pf_log_info(NULL, "admin disappeared when suspended, doing RESUME");
		w->ops->set_suspended(w, false);
		w->ops->kick_pools(w);
	}
	w->in_admin_poll = false;
}

/* Starts a command that answers later; pf_admin_poll() answers it. */
static void wait_for(pf_client_t *c, pf_admin_wait_t what, pf_database_t *db, pf_buf_t *out)
{
	c->cold->admin_wait = what;
	c->cold->admin_wait_db = db;
	pf_conn_worker(&c->conn)->admin_waiting = true;
	if (wait_done(c)) {
		c->cold->admin_wait = PF_ADMIN_WAIT_NONE;
		c->cold->admin_wait_db = NULL;
		command_ok(out, wait_tags[what]);
	}
}

static void cmd_pause(pf_client_t *c, pf_database_t *db, pf_buf_t *out)
{
	pf_worker_t *w = pf_conn_worker(&c->conn);

	if (db)
		db->paused = true;
	else
		w->paused = true;
	/* PAUSE disconnects every server of the scope once its client is done with it. */
	pf_pool_tag_reconnect(w, db);
	wait_for(c, PF_ADMIN_WAIT_PAUSE, db, out);
}

static void cmd_resume(pf_client_t *c, pf_database_t *db, pf_buf_t *out)
{
	pf_worker_t *w = pf_conn_worker(&c->conn);
	pf_list_node_t *it, *tmp;

	if (db) {
		db->paused = false;
	} else {
		w->paused = false;
		PF_LIST_FOREACH(&w->databases, it, tmp)
		{
			PF_CONTAINER_OF(it, pf_database_t, node)->paused = false;
		}
		if (w->suspended)
			w->ops->set_suspended(w, false);
	}
	w->ops->kick_pools(w);
	command_ok(out, "RESUME");
}

static void cmd_kill(pf_client_t *c, pf_database_t *db, pf_buf_t *out)
{
	pf_worker_t *w = pf_conn_worker(&c->conn);
	pf_list_node_t *it, *tmp;

	/* New clients of a killed database wait until RESUME, as in PgBouncer. */
	PF_LIST_FOREACH(&w->databases, it, tmp)
	{
		pf_database_t *d = PF_CONTAINER_OF(it, pf_database_t, node);

		if (!d->admin && (!db || d == db))
			d->paused = true;
	}
	PF_LIST_FOREACH(&w->pools, it, tmp)
	{
		pf_pool_t *p = PF_CONTAINER_OF(it, pf_pool_t, node);

		if (!pool_in_scope(p, db))
			continue;
		pf_pool_close_all(p, PF_CLOSE_CLIENT_ADMIN_KILL, PF_SV_CLOSE_ADMIN);
	}
	command_ok(out, "KILL");
}

/* Answers a command the console cannot parse, in PgBouncer's words. */
static void invalid_command(pf_buf_t *out, const char *sql);

/* KILL_CLIENT id: false when id is not a number (the caller answers "invalid command"). */
static bool cmd_kill_client(pf_client_t *c, const char *arg, pf_buf_t *out)
{
	pf_worker_t *w = pf_conn_worker(&c->conn);
	pf_list_node_t *it, *tmp, *cit, *ctmp;
	uint64_t id = 0;
	char msg[100];
	int rc;

	if (!*arg) {
		command_error(out, "42601",
		              "KILL_CLIENT needs a client id (SHOW CLIENTS, column id)", NULL);
		return true;
	}
	rc = pf_admin_parse_id(arg, &id);
	if (rc == -EINVAL) {
		/* "-1", "+1", "1x": PgBouncer's grammar has no such word either. */
		return false;
	}
	if (rc < 0) {
		/* Too large to be an id: no client has it (PgBouncer: "client not found"). */
		snprintf(msg, sizeof(msg), "no client with id %.40s", arg);
		command_error(out, "42704", msg, NULL);
		return true;
	}
	PF_LIST_FOREACH(&w->pools, it, tmp)
	{
		pf_pool_t *p = PF_CONTAINER_OF(it, pf_pool_t, node);
		pf_list_t *lists[] = {&p->active_clients, &p->waiting_clients};

		for (size_t i = 0; i < PF_ARRAY_SIZE(lists); i++) {
			PF_LIST_FOREACH(lists[i], cit, ctmp)
			{
				pf_client_t *victim = pf_client_from_node(cit);

				if (victim->conn.id != id)
					continue;
				command_ok(out, "KILL_CLIENT");
				if (victim != c)
					pf_client_close(victim, PF_CLOSE_CLIENT_ADMIN_KILL, NULL,
					                NULL);
				else
					c->cold->admin_kill_self = true;
				return true;
			}
		}
	}
	snprintf(msg, sizeof(msg), "no client with id %" PRIu64, id);
	command_error(out, "42704", msg, NULL);
	return true;
}

/* SET key = value: a changed copy of the config replaces the running one. */
static void cmd_set(pf_client_t *c, const char *rest, pf_buf_t *out)
{
	pf_worker_t *w = pf_conn_worker(&c->conn);
	char key[64], value[1024], err[300];
	const char *p = rest;
	const pf_config_param_t *param;
	pf_config_t *copy = NULL;
	const char *unsafe = NULL;
	size_t len = 0;

	if (pf_admin_next_word(&p, key, sizeof(key), false) <= 0) {
		command_error(out, "42601", "syntax: SET key = value", NULL);
		return;
	}
	while (isspace((unsigned char)*p))
		p++;
	if (*p == '=')
		p++;
	else if (strncasecmp(p, "to", 2) == 0 && isspace((unsigned char)p[2]))
		p += 2;
	else {
		command_error(out, "42601", "syntax: SET key = value", NULL);
		return;
	}
	while (isspace((unsigned char)*p))
		p++;
	/* A value may be 'quoted' ('' is a quote) or a bare word. */
	if (*p == '\'') {
		for (p++; *p; p++) {
			if (*p == '\'' && p[1] != '\'')
				break;
			if (*p == '\'')
				p++;
			if (len + 1 >= sizeof(value))
				break; /* refused below rather than cut short */
			value[len++] = *p;
		}
		if (*p != '\'' && len + 1 < sizeof(value)) {
			command_error(out, "42601", "unterminated quoted value", NULL);
			return;
		}
		if (*p)
			p++;
	} else {
		while (*p && !isspace((unsigned char)*p) && len + 1 < sizeof(value))
			value[len++] = *p++;
	}
	value[len] = '\0';
	if (len + 1 >= sizeof(value)) {
		command_error(out, "22023", "SET value too long", NULL);
		return;
	}
	if (!only_blanks(p)) {
		command_error(out, "42601", "syntax: SET key = value", NULL);
		return;
	}
	/* Drivers set these on connect; the console accepts them harmlessly. */
	if (pf_var_lookup(key) >= 0 || pf_strcaseeq(key, "extra_float_digits")) {
		command_ok(out, "SET");
		return;
	}
	param = pf_config_find_param(key);
	if (!param) {
		snprintf(err, sizeof(err), "unknown config parameter: %s", key);
		command_error(out, "42704", err, NULL);
		return;
	}
	if (!param->reloadable) {
		snprintf(err, sizeof(err), "parameter \"%s\" cannot be changed online",
		         param->name);
		command_error(out, "55P02", err, "change it in the config file and restart");
		return;
	}
	if (pf_config_copy(w->cfg, &copy) < 0) {
		command_error(out, "53200", "out of memory", NULL);
		return;
	}
	if (pf_config_set(copy, param->name, value, err, sizeof(err)) < 0 ||
	    !pf_config_is_reload_safe(w->cfg, copy, &unsafe)) {
		if (unsafe)
			snprintf(err, sizeof(err), "parameter \"%s\" cannot be changed online",
			         unsafe);
		pf_config_free(copy);
		command_error(out, "22023", err, NULL);
		return;
	}
	if (!w->hooks || !w->hooks->set_config || w->hooks->set_config(w->hooks_arg, copy) < 0) {
		pf_config_free(copy);
		command_error(out, "F0000", "SET failed, see logs for details", NULL);
		return;
	}
	pf_log_info(c, "SET %s = %s", param->name, value);
	command_ok(out, "SET");
}

/* SHOW of session settings that drivers ask for on connect (PgBouncer's "fake" SHOWs). */
static bool fake_show(const char *what, pf_buf_t *out)
{
	static const char *const settings[][2] = {
	        {"CLIENT_ENCODING", "UTF8"},
	        {"DEFAULT_TRANSACTION_ISOLATION", "read committed"},
	        {"STANDARD_CONFORMING_STRINGS", "on"},
	        {"DATESTYLE", "ISO"},
	        {"TIMEZONE", "GMT"},
	};

	for (size_t i = 0; i < PF_ARRAY_SIZE(settings); i++) {
		if (strcmp(what, settings[i][0]) == 0) {
			char name[64];
			const char *names[1] = {name};
			size_t j;

			for (j = 0; settings[i][0][j] && j + 1 < sizeof(name); j++)
				name[j] = (char)tolower((unsigned char)settings[i][0][j]);
			name[j] = '\0';
			pf_proto_be_row_description(out, "s", names);
			pf_proto_be_data_row(out, "s", settings[i][1]);
			command_ok(out, "SHOW");
			return true;
		}
	}
	return false;
}

static const char *const usage_hint =
        "SHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION|STATS|STATS_TOTALS|"
        "STATS_AVERAGES|TOTALS|LISTS|MEM|FDS|SOCKETS|ACTIVE_SOCKETS|STATE|DNS_HOSTS|DNS_ZONES|"
        "PEERS|PEER_POOLS; SET key = arg; RELOAD; PAUSE [db]; RESUME [db]; DISABLE db; ENABLE db; "
        "RECONNECT [db]; KILL [db]; KILL_CLIENT id; SUSPEND; SHUTDOWN [WAIT_FOR_SERVERS|"
        "WAIT_FOR_CLIENTS]; WAIT_CLOSE [db]";

static void cmd_reconnect(pf_client_t *c, pf_database_t *db, pf_buf_t *out)
{
	pf_pool_tag_reconnect(pf_conn_worker(&c->conn), db);
	command_ok(out, "RECONNECT");
}

static void cmd_wait_close(pf_client_t *c, pf_database_t *db, pf_buf_t *out)
{
	wait_for(c, PF_ADMIN_WAIT_CLOSE, db, out);
}

/* DISABLE db / ENABLE db: whether db refuses new clients. Both need a database. */
static void set_disabled(pf_database_t *db, bool disabled, pf_buf_t *out)
{
	if (!db) {
		command_error(out, "42601", "DISABLE and ENABLE need a database name", NULL);
		return;
	}
	db->disabled = disabled;
	command_ok(out, disabled ? "DISABLE" : "ENABLE");
}

static void cmd_disable(pf_client_t *c, pf_database_t *db, pf_buf_t *out)
{
	(void)c;
	set_disabled(db, true, out);
}

static void cmd_enable(pf_client_t *c, pf_database_t *db, pf_buf_t *out)
{
	(void)c;
	set_disabled(db, false, out);
}

/* SHUTDOWN [WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS]: pf_admin_packet starts it after the answer. */
static bool cmd_shutdown(pf_client_t *c, const char *arg, pf_buf_t *out)
{
	pf_worker_t *w = pf_conn_worker(&c->conn);
	pf_shutdown_mode_t mode = PF_SHUTDOWN_IMMEDIATE;

	if (pf_strcaseeq(arg, "WAIT_FOR_SERVERS"))
		mode = PF_SHUTDOWN_WAIT_FOR_SERVERS;
	else if (pf_strcaseeq(arg, "WAIT_FOR_CLIENTS"))
		mode = PF_SHUTDOWN_WAIT_FOR_CLIENTS;
	else if (arg[0])
		return false;
	pf_log_info(c, "SHUTDOWN%s%s requested", arg[0] ? " " : "", arg);
	command_ok(out, "SHUTDOWN");
	if (w->hooks && w->hooks->shutdown)
		c->cold->admin_shutdown = mode;
	return true;
}

/* RELOAD: the hook reloads the config (w->cfg may be another snapshot afterwards). */
static bool cmd_reload(pf_client_t *c, const char *arg, pf_buf_t *out)
{
	pf_worker_t *w = pf_conn_worker(&c->conn);

	if (arg[0])
		return false;
	if (!w->hooks || !w->hooks->reload || w->hooks->reload(w->hooks_arg) < 0)
		command_error(out, "F0000", "RELOAD failed, see logs for details", NULL);
	else
		command_ok(out, "RELOAD");
	return true;
}

static bool cmd_suspend(pf_client_t *c, const char *arg, pf_buf_t *out)
{
	pf_worker_t *w = pf_conn_worker(&c->conn);

	if (arg[0])
		return false;
	w->ops->set_suspended(w, true);
	w->suspend_start = pf_worker_now(w);
	/* Answers once every socket buffer is flushed (or suspend_timeout drops the rest). */
	wait_for(c, PF_ADMIN_WAIT_SUSPEND, NULL, out);
	return true;
}

/*
 * The control commands (everything but SHOW and SET): each takes at most one word. A command
 * has exactly one handler: `run` gets the word as typed and returns false when it is not in
 * the command's grammar; `run_scoped` gets the database the word names (NULL: no word, every
 * database but the console), after target_db answered for a name that is none.
 */
typedef struct control_cmd {
	const char *name;
	bool (*run)(pf_client_t *c, const char *arg, pf_buf_t *out);
	void (*run_scoped)(pf_client_t *c, pf_database_t *db, pf_buf_t *out);
	const char *console_refusal; /* run_scoped's answer when the word names the console */
} control_cmd_t;

static const control_cmd_t control_cmds[] = {
        {.name = "PAUSE", .run_scoped = cmd_pause, .console_refusal = "cannot pause admin db"},
        {.name = "RESUME", .run_scoped = cmd_resume, .console_refusal = "cannot resume admin db"},
        {.name = "SUSPEND", .run = cmd_suspend},
        {.name = "DISABLE",
         .run_scoped = cmd_disable,
         .console_refusal = "cannot disable admin db"},
        {.name = "ENABLE", .run_scoped = cmd_enable, .console_refusal = "cannot disable admin db"},
        {.name = "RECONNECT",
         .run_scoped = cmd_reconnect,
         .console_refusal = "cannot reconnect admin db"},
        {.name = "KILL", .run_scoped = cmd_kill, .console_refusal = "cannot kill admin db"},
        {.name = "RELOAD", .run = cmd_reload},
        {.name = "SHUTDOWN", .run = cmd_shutdown},
        {.name = "WAIT_CLOSE",
         .run_scoped = cmd_wait_close,
         .console_refusal = "cannot wait in admin db"},
        {.name = "KILL_CLIENT", .run = cmd_kill_client},
};

/* The control command called verb (upper case), or NULL. */
static const control_cmd_t *find_control(const char *verb)
{
	for (size_t i = 0; i < PF_ARRAY_SIZE(control_cmds); i++) {
		const control_cmd_t *cmd = &control_cmds[i];

		assert(!cmd->run != !cmd->run_scoped && !cmd->run_scoped == !cmd->console_refusal);
		if (strcmp(verb, cmd->name) == 0)
			return cmd;
	}
	return NULL;
}

/*
 * Reads a command's last word into buf (size n, upper-cased when `upper`). False when it is
 * broken (cut short, a bad quoted identifier: it would name something else) or anything but
 * blanks follows it.
 */
static bool read_last_word(const char **rest, char *buf, size_t n, bool upper)
{
	return pf_admin_next_word(rest, buf, n, upper) >= 0 && only_blanks(*rest);
}

/* Whether c may run a command that changes something; when not, says so in out. */
static bool may_write(const pf_client_t *c, pf_buf_t *out)
{
	if (!c->cold->admin_can_write)
		command_error(out, "42501", "admin access needed", NULL);
	return c->cold->admin_can_write;
}

/* SHOW what (or SELECT what). False when what is no SHOW the console knows. */
static bool run_show(pf_client_t *c, const char *rest, pf_buf_t *out)
{
	const pf_admin_show_t *cmd;
	char what[256];

	if (!read_last_word(&rest, what, sizeof(what), true))
		return false;
	if (fake_show(what, out))
		return true;
	cmd = pf_admin_find_show(what);
	if (!cmd)
		return false;
	if (cmd->admin_only && !may_write(c, out))
		return true;
	cmd->handler(c, rest, out);
	/* The handlers write the rows and CommandComplete; the ReadyForQuery is ours. */
	pf_proto_be_ready_for_query(out, PF_PROTO_TX_IDLE);
	return true;
}

/* SET key = value (cmd_set parses the rest). */
static bool run_set(pf_client_t *c, const char *rest, pf_buf_t *out)
{
	if (may_write(c, out))
		cmd_set(c, rest, out);
	return true;
}

/* A control command. False when verb is none, or its argument is not in its grammar. */
static bool run_control(pf_client_t *c, const char *verb, const char *rest, pf_buf_t *out)
{
	const control_cmd_t *cmd;
	pf_database_t *db = NULL;
	char arg[256];

	if (!read_last_word(&rest, arg, sizeof(arg), false))
		return false;
	cmd = find_control(verb);
	if (!cmd)
		return false;
	if (!may_write(c, out))
		return true;
	if (cmd->run)
		return cmd->run(c, arg, out);
	if (arg[0] && !(db = target_db(pf_conn_worker(&c->conn), arg, cmd->console_refusal, out)))
		return true;
	cmd->run_scoped(c, db, out);
	return true;
}

void pf_admin_run(pf_client_t *c, const char *sql, pf_buf_t *out)
{
	char verb[32];
	const char *rest = sql;
	size_t start = out->len;
	bool understood;

	/* pf_admin_packet runs one command at a time: none is waiting for its answer. */
	assert(pf_client_is_console(c) && c->cold->admin_wait == PF_ADMIN_WAIT_NONE);
	/* A word cut short or a broken quoted identifier would name something else: refuse. */
	if (pf_admin_next_word(&rest, verb, sizeof(verb), true) < 0)
		understood = false;
	else if (strcmp(verb, "SHOW") == 0 || strcmp(verb, "SELECT") == 0)
		understood = run_show(c, rest, out);
	else if (strcmp(verb, "SET") == 0)
		understood = run_set(c, rest, out);
	else
		understood = run_control(c, verb, rest, out);
	if (!understood)
		invalid_command(out, sql);
	/* The complete answer, ending with ReadyForQuery ('Z', length 5, status), or none yet for
	 * a command that waits (pf_admin_poll answers it). */
	assert(out->failed || (c->cold->admin_wait == PF_ADMIN_WAIT_NONE
	                               ? out->len >= start + 6 && out->data[out->len - 6] == 'Z'
	                               : out->len == start));
	(void)start;
}

static void invalid_command(pf_buf_t *out, const char *sql)
{
	char msg[300];

	snprintf(msg, sizeof(msg), "invalid command \"%.200s\", use SHOW HELP;", sql);
	command_error(out, "42601", msg, usage_hint);
}

pf_pkt_action_t pf_admin_packet(pf_client_t *c, const pf_proto_hdr_t *hdr, const uint8_t *pkt,
                                size_t avail)
{
	pf_buf_t out;
	char *sql;
	size_t len;
	pf_shutdown_mode_t shutdown;

	if (c->cold->admin_wait != PF_ADMIN_WAIT_NONE)
		return PF_PKT_STOP; /* one command at a time: PAUSE/WAIT_CLOSE answer later */
	if (hdr->type != PF_PROTO_FE_QUERY) {
		pf_client_close(c, PF_CLOSE_CLIENT_PROTOCOL, "08P01",
		                "extended query protocol not supported by admin console");
		return PF_PKT_STOP;
	}
	if (avail < hdr->total)
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
	for (len = strlen(sql);
	     len > 0 && (isspace((unsigned char)sql[len - 1]) || sql[len - 1] == ';');)
		sql[--len] = '\0';
	pf_buf_init(&out);
	pf_admin_run(c, sql, &out);
	free(sql);
	/* A shutdown begins before the answer goes out: once the client has it, no new
	 * connection reaches a listener. The shutdown closes connections (this one too) from the
	 * loop, after this answer. */
	shutdown = c->cold->admin_shutdown;
	if (shutdown != PF_SHUTDOWN_NONE) {
		pf_worker_t *w = pf_conn_worker(&c->conn);

		c->cold->admin_shutdown = PF_SHUTDOWN_NONE;
		w->hooks->shutdown(w->hooks_arg, shutdown);
	}
	if (!c->conn.closing)
		pf_conn_send_buf(&c->conn, &out);
	pf_buf_free(&out);
	if (c->cold->admin_kill_self) {
		pf_client_close(c, PF_CLOSE_CLIENT_ADMIN_KILL, NULL, NULL);
		return PF_PKT_STOP;
	}
	/* Consumed even after SHUTDOWN: left in the buffer, the next command would run it again
	 * (and a second SHUTDOWN means now). */
	return c->conn.closing ? PF_PKT_STOP : PF_PKT_CONSUMED;
}
