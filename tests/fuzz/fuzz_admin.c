#include "pfbuild.h"
/*
 * libFuzzer target for the admin console's command parser, through its public entry
 * pf_admin_run() (the text of a Query message, which any admin_users or stats_users login
 * sends). No socket: one worker is created on a libuv loop that never runs, from a config with
 * two databases, and the console client is a zeroed pf_client_t attached to it. Byte 0 picks
 * admin_users (bit 0 set) or stats_users rights; the rest, up to its first NUL, is the command.
 *
 * Checks: the answer is a sequence of whole backend messages that fills the buffer exactly;
 * it ends with the one ReadyForQuery ('Z', idle) it has; an ErrorResponse parses and carries a
 * five-character SQLSTATE; every DataRow has as many columns as the RowDescription before it;
 * a stats_users client never gets past "admin access needed" into a control command (nothing
 * in the worker changes). State the commands change (PAUSE, SUSPEND, DISABLE) is reset after
 * each input, so every input runs against the same worker.
 */

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "pgfunnel/admin.h"
#include "pgfunnel/buf.h"
#include "pgfunnel/client.h"
#include "pgfunnel/config.h"
#include "pgfunnel/log.h"
#include "pgfunnel/pool.h"
#include "pgfunnel/proto.h"
#include "pgfunnel/worker.h"

#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char config_text[] = "[databases]\n"
                                  "appdb = host=127.0.0.1 port=5432 dbname=appdb\n"
                                  "\"odd db\" = host=127.0.0.1 port=5432\n"
                                  "[pgbouncer]\n"
                                  "listen_addr = 127.0.0.1\n"
                                  "listen_port = 6432\n"
                                  "auth_type = trust\n"
                                  "admin_users = admin\n"
                                  "stats_users = stats\n";

static uv_loop_t loop;
static pf_config_t *cfg;
static pf_worker_t *worker;

static void setup(void)
{
	char err[256];

	pf_log_set_stderr(false);
	pf_log_set_verbosity(0);
	CHECK(uv_loop_init(&loop) == 0);
	CHECK(pf_config_load_string(config_text, "fuzz.ini", &cfg, NULL, NULL, err, sizeof(err)) ==
	      0);
	CHECK(pf_worker_create(&loop, cfg, &worker) == 0);
}

static uint32_t be32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) |
	       (uint32_t)p[3];
}

static uint16_t be16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

/* Checks the answer's framing and the invariants in the header comment. */
static void check_answer(const pf_buf_t *out)
{
	size_t pos = 0, nz = 0;
	int columns = -1;
	uint8_t last = 0;

	CHECK(!out->failed);
	while (pos < out->len) {
		const uint8_t *m = out->data + pos, *payload;
		uint32_t len;

		CHECK(out->len - pos >= PF_PROTO_HDR_LEN);
		len = be32(m + 1);
		CHECK(len >= 4 && len - 4 <= out->len - pos - PF_PROTO_HDR_LEN);
		CHECK(pf_proto_is_be_type(m[0]));
		payload = m + PF_PROTO_HDR_LEN;
		switch (m[0]) {
		case PF_PROTO_BE_ERROR_RESPONSE: {
			pf_proto_error_t e;

			CHECK(pf_proto_parse_error_fields(payload, len - 4, &e) == 0);
			CHECK(e.sqlstate && strlen(e.sqlstate) == 5 && e.message && e.severity);
			break;
		}
		case PF_PROTO_BE_ROW_DESCRIPTION:
			CHECK(len - 4 >= 2);
			columns = be16(payload);
			break;
		case PF_PROTO_BE_DATA_ROW:
			CHECK(len - 4 >= 2);
			CHECK(columns >= 0 && be16(payload) == columns);
			break;
		case PF_PROTO_BE_READY_FOR_QUERY: {
			uint8_t st;

			CHECK(pf_proto_parse_ready_for_query(payload, len - 4, &st) == 0);
			CHECK(st == PF_PROTO_TX_IDLE);
			nz++;
			break;
		}
		default:
			break;
		}
		last = m[0];
		pos += 1 + (size_t)len;
	}
	CHECK(pos == out->len);
	CHECK(nz == 1 && last == PF_PROTO_BE_READY_FOR_QUERY);
}

/* Whether the worker's control state is as setup() left it. */
static bool worker_untouched(void)
{
	pf_list_node_t *it, *tmp;

	if (worker->paused || worker->suspended)
		return false;
	PF_LIST_FOREACH(&worker->databases, it, tmp)
	{
		pf_database_t *d = PF_CONTAINER_OF(it, pf_database_t, node);

		if (d->paused || d->disabled)
			return false;
	}
	return true;
}

static void reset_worker(void)
{
	pf_list_node_t *it, *tmp;

	worker->paused = false;
	if (worker->suspended)
		pf_worker_set_suspended(worker, false);
	PF_LIST_FOREACH(&worker->databases, it, tmp)
	{
		pf_database_t *d = PF_CONTAINER_OF(it, pf_database_t, node);

		d->paused = false;
		d->disabled = false;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	pf_client_t *c;
	pf_buf_t out;
	char *sql;

	if (!worker)
		setup();
	if (size < 1)
		return 0;
	sql = malloc(size);
	c = calloc(1, sizeof(*c));
	CHECK(sql && c);
	c->cold = calloc(1, sizeof(*c->cold)); /* a console session keeps its cold part */
	CHECK(c->cold);
	memcpy(sql, data + 1, size - 1);
	sql[size - 1] = '\0';
	c->conn.net = &worker->net;
	c->cold->admin = true;
	c->cold->admin_can_write = data[0] & 1;
	c->user_name = (char *)(c->cold->admin_can_write ? "admin" : "stats");

	pf_buf_init(&out);
	pf_admin_run(c, sql, &out);
	check_answer(&out);
	CHECK(c->cold->admin_wait == PF_ADMIN_WAIT_NONE); /* nothing to wait for: no servers */
	if (!c->cold->admin_can_write)
		CHECK(worker_untouched() && c->cold->admin_shutdown == 0 && !c->cold->admin_kill_self);
	pf_buf_free(&out);
	reset_worker();
	free(c->cold);
	free(c);
	free(sql);
	return 0;
}
