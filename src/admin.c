/*
 * admin: the console database. Parses a command from a Query message, runs its handler from the
 * command table and answers with PgBouncer's column names and order
 * (../shared/pgbouncer-compat.md). The SHOW handlers live in admin_show.c.
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
		const pf_admin_show_t *cmd = pf_admin_find_show(what);

		if (cmd) {
			cmd->handler(c, rest, out);
			pf_proto_be_ready_for_query(out, PF_PROTO_TX_IDLE);
			return;
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
