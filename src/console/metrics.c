/*
 * metrics: the Prometheus endpoint (see include/pgfunnel/metrics.h).
 *
 * Owns one TCP listener on the worker's loop and the scrape connections accepted on it. A scrape
 * connection reads its request head into a fixed buffer, gets one answer (the exposition is
 * rendered synchronously into a pf_buf_t: a few hundred pools take well under a millisecond),
 * then its write side is shut down and it is closed when the scraper closes or after a short
 * linger. A timer bounds the whole life of a connection, so a slow or silent scraper cannot hold
 * one. pf_metrics_stop() (from the worker's close_listeners()) closes everything; the state is
 * freed by the last close callback, so it outlives nothing it refers to.
 *
 * Called by: worker.c (pf_metrics_start/stop), the unit tests (the pure formatting functions).
 */
#include "pfbuild.h"

#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <uv.h>

#include "pgfunnel/client.h"
#include "pgfunnel/list.h"
#include "pgfunnel/log.h"
#include "pgfunnel/metrics.h"
#include "pgfunnel/pool.h"
#include "pgfunnel/server.h"
#include "pgfunnel/stats.h"
#include "pgfunnel/runtime.h"

/*
 * Exposition formatting.
 */

static void put_str(pf_buf_t *b, const char *s)
{
	pf_buf_put_bytes(b, s, strlen(s));
}

void pf_metrics_put_label_value(pf_buf_t *b, const char *s)
{
	const char *run = s ? s : "";

	/* Copies runs of plain bytes in one call; only \, " and newline need escaping. */
	for (s = run; *s; s++) {
		const char *esc = NULL;

		if (*s == '\\')
			esc = "\\\\";
		else if (*s == '"')
			esc = "\\\"";
		else if (*s == '\n')
			esc = "\\n";
		if (!esc)
			continue;
		pf_buf_put_bytes(b, run, (size_t)(s - run));
		put_str(b, esc);
		run = s + 1;
	}
	pf_buf_put_bytes(b, run, (size_t)(s - run));
}

/* HELP text: backslash and newline escaped (a double quote stays as is there). */
static void put_help_text(pf_buf_t *b, const char *s)
{
	for (; *s; s++) {
		if (*s == '\\')
			put_str(b, "\\\\");
		else if (*s == '\n')
			put_str(b, "\\n");
		else
			pf_buf_put_u8(b, (uint8_t)*s);
	}
}

void pf_metrics_put_family(pf_buf_t *b, const char *name, const char *type, const char *help)
{
	put_str(b, "# HELP ");
	put_str(b, name);
	pf_buf_put_u8(b, ' ');
	put_help_text(b, help);
	put_str(b, "\n# TYPE ");
	put_str(b, name);
	pf_buf_put_u8(b, ' ');
	put_str(b, type);
	pf_buf_put_u8(b, '\n');
}

/* The sample line with an optional suffix on the name and an optional extra label. */
static void put_sample_ext(pf_buf_t *b, const char *name, const char *suffix,
                           const pf_metrics_label_t *labels, size_t nlabels,
                           const pf_metrics_label_t *extra, const char *value)
{
	size_t total = nlabels + (extra ? 1 : 0);

	if (total > PF_METRICS_MAX_LABELS) {
		/* A misuse: make the builder fail rather than emit a partial line. */
		b->failed = true;
		return;
	}
	put_str(b, name);
	if (suffix)
		put_str(b, suffix);
	for (size_t i = 0; i < total; i++) {
		const pf_metrics_label_t *l = i < nlabels ? &labels[i] : extra;

		pf_buf_put_u8(b, i == 0 ? '{' : ',');
		put_str(b, l->name);
		put_str(b, "=\"");
		pf_metrics_put_label_value(b, l->value);
		pf_buf_put_u8(b, '"');
	}
	if (total > 0)
		pf_buf_put_u8(b, '}');
	pf_buf_put_u8(b, ' ');
	put_str(b, value);
	pf_buf_put_u8(b, '\n');
}

void pf_metrics_put_sample(pf_buf_t *b, const char *name, const pf_metrics_label_t *labels,
                           size_t nlabels, const char *value)
{
	put_sample_ext(b, name, NULL, labels, nlabels, NULL, value);
}

const char *pf_metrics_fmt_u64(char *buf, size_t n, uint64_t v)
{
	snprintf(buf, n, "%" PRIu64, v);
	return buf;
}

const char *pf_metrics_fmt_seconds(char *buf, size_t n, pf_usec_t usec)
{
	uint64_t u = usec > 0 ? (uint64_t)usec : 0;
	uint64_t frac = u % (uint64_t)PF_USEC_PER_SEC;
	int len;

	if (frac == 0) {
		snprintf(buf, n, "%" PRIu64, u / (uint64_t)PF_USEC_PER_SEC);
		return buf;
	}
	len = snprintf(buf, n, "%" PRIu64 ".%06" PRIu64, u / (uint64_t)PF_USEC_PER_SEC, frac);
	/* Exact decimal, trailing zeros dropped: 100 usec is "0.0001", as Go's client prints. */
	if (len > 0 && (size_t)len < n) {
		while (len > 0 && buf[len - 1] == '0')
			buf[--len] = '\0';
	}
	return buf;
}

void pf_metrics_put_histogram(pf_buf_t *b, const char *name, const pf_metrics_label_t *labels,
                              size_t nlabels, const pf_usec_t *bounds, size_t nbounds,
                              const uint64_t *counts, pf_usec_t sum_usec)
{
	uint64_t cum = 0;
	char le[32], val[32];

	for (size_t i = 0; i <= nbounds; i++) {
		pf_metrics_label_t l = {"le", "+Inf"};

		cum += counts[i];
		if (i < nbounds)
			l.value = pf_metrics_fmt_seconds(le, sizeof(le), bounds[i]);
		put_sample_ext(b, name, "_bucket", labels, nlabels, &l,
		               pf_metrics_fmt_u64(val, sizeof(val), cum));
	}
	put_sample_ext(b, name, "_sum", labels, nlabels, NULL,
	               pf_metrics_fmt_seconds(val, sizeof(val), sum_usec));
	put_sample_ext(b, name, "_count", labels, nlabels, NULL,
	               pf_metrics_fmt_u64(val, sizeof(val), cum));
}

/*
 * The exposition of one worker.
 */

static void put_u64(pf_buf_t *b, const char *name, const pf_metrics_label_t *labels, size_t n,
                    uint64_t v)
{
	char val[32];

	pf_metrics_put_sample(b, name, labels, n, pf_metrics_fmt_u64(val, sizeof(val), v));
}

static void put_seconds(pf_buf_t *b, const char *name, const pf_metrics_label_t *labels, size_t n,
                        pf_usec_t usec)
{
	char val[32];

	pf_metrics_put_sample(b, name, labels, n, pf_metrics_fmt_seconds(val, sizeof(val), usec));
}

/* Labels database and user of pool p, and room for one more. */
static size_t pool_labels(const pf_pool_t *p, pf_metrics_label_t *l)
{
	l[0].name = "database";
	l[0].value = p->db->name;
	l[1].name = "user";
	l[1].value = p->user->name;
	return 2;
}

static void render_pool_clients(pf_worker_t *w, pf_buf_t *b)
{
	pf_list_node_t *it, *tmp, *cit, *ctmp;

	pf_metrics_put_family(
	        b, "pgfunnel_pool_clients", "gauge",
	        "Client connections of the pool by state: active (linked to a server), "
	        "idle (logged in, no server), waiting (for a server); active + idle is "
	        "SHOW POOLS cl_active, waiting is cl_waiting.");
	PF_LIST_FOREACH(&w->pools, it, tmp)
	{
		const pf_pool_t *p = PF_CONTAINER_OF(it, pf_pool_t, node);
		pf_metrics_label_t l[3];
		size_t n = pool_labels(p, l);
		uint64_t linked = 0;

		PF_LIST_FOREACH(&p->active_clients, cit, ctmp)
		{
			if (pf_client_from_node(cit)->pc.link)
				linked++;
		}
		l[n].name = "state";
		l[n].value = "active";
		put_u64(b, "pgfunnel_pool_clients", l, n + 1, linked);
		l[n].value = "idle";
		put_u64(b, "pgfunnel_pool_clients", l, n + 1, p->active_clients.len - linked);
		l[n].value = "waiting";
		put_u64(b, "pgfunnel_pool_clients", l, n + 1, p->waiting_clients.len);
	}
}

static void render_pool_servers(pf_worker_t *w, pf_buf_t *b)
{
	pf_list_node_t *it, *tmp;

	pf_metrics_put_family(b, "pgfunnel_pool_servers", "gauge",
	                      "Server connections of the pool by state, as SHOW POOLS sv_active, "
	                      "sv_idle, sv_used, sv_tested and sv_login.");
	PF_LIST_FOREACH(&w->pools, it, tmp)
	{
		const pf_pool_t *p = PF_CONTAINER_OF(it, pf_pool_t, node);
		const struct {
			const char *state;
			const pf_list_t *list;
		} states[] = {
		        {"active", &p->active_servers}, {"idle", &p->idle_servers},
		        {"used", &p->used_servers},     {"tested", &p->tested_servers},
		        {"login", &p->new_servers},
		};
		pf_metrics_label_t l[3];
		size_t n = pool_labels(p, l);

		l[n].name = "state";
		for (size_t i = 0; i < PF_ARRAY_SIZE(states); i++) {
			l[n].value = states[i].state;
			put_u64(b, "pgfunnel_pool_servers", l, n + 1, states[i].list->len);
		}
	}
}

/* The sums of SHOW CLIENTS / SHOW SERVERS prepared_statements per pool. */
static void render_pool_prepared(pf_worker_t *w, pf_buf_t *b)
{
	pf_list_node_t *it, *tmp, *cit, *ctmp;

	pf_metrics_put_family(
	        b, "pgfunnel_pool_prepared_statements", "gauge",
	        "Protocol-level prepared statements tracked in the pool (max_prepared_statements): "
	        "side=client sums SHOW CLIENTS prepared_statements (the statements clients have), "
	        "side=server sums SHOW SERVERS prepared_statements (those prepared on servers).");
	PF_LIST_FOREACH(&w->pools, it, tmp)
	{
		const pf_pool_t *p = PF_CONTAINER_OF(it, pf_pool_t, node);
		const pf_list_t *clients[] = {&p->active_clients, &p->waiting_clients};
		const pf_list_t *servers[] = {&p->active_servers, &p->idle_servers,
		                              &p->used_servers, &p->tested_servers,
		                              &p->new_servers};
		pf_metrics_label_t l[3];
		size_t n = pool_labels(p, l);
		uint64_t cl = 0, sv = 0;

		for (size_t i = 0; i < PF_ARRAY_SIZE(clients); i++)
			PF_LIST_FOREACH(clients[i], cit, ctmp)
		cl += pf_prepared_client_count(pf_client_from_node(cit)->peer.prep);
		for (size_t i = 0; i < PF_ARRAY_SIZE(servers); i++)
			PF_LIST_FOREACH(servers[i], cit, ctmp)
		sv += pf_prepared_server_count(pf_server_from_node(cit)->prep);
		l[n].name = "side";
		l[n].value = "client";
		put_u64(b, "pgfunnel_pool_prepared_statements", l, n + 1, cl);
		l[n].value = "server";
		put_u64(b, "pgfunnel_pool_prepared_statements", l, n + 1, sv);
	}
	pf_metrics_put_family(b, "pgfunnel_prepared_statements_distinct", "gauge",
	                      "Distinct statements (query text and parameter types) tracked, each "
	                      "with one server-side name.");
	put_u64(b, "pgfunnel_prepared_statements_distinct", NULL, 0,
	        pf_prepared_registry_count(w->prepared));
}

static void render_pool_maxwait(pf_worker_t *w, pf_buf_t *b)
{
	pf_usec_t now = pf_worker_now(w);
	pf_list_node_t *it, *tmp;

	pf_metrics_put_family(
	        b, "pgfunnel_pool_max_wait_seconds", "gauge",
	        "How long the oldest waiting client of the pool has waited for a server "
	        "(SHOW POOLS maxwait and maxwait_us).");
	PF_LIST_FOREACH(&w->pools, it, tmp)
	{
		const pf_pool_t *p = PF_CONTAINER_OF(it, pf_pool_t, node);
		pf_list_node_t *first = pf_list_first(&p->waiting_clients);
		pf_usec_t wait = 0;
		pf_metrics_label_t l[2];
		size_t n = pool_labels(p, l);

		if (first) {
			const pf_client_t *c = pf_client_from_node(first);

			if (c->pc.wait_start)
				wait = now - c->pc.wait_start;
		}
		put_seconds(b, "pgfunnel_pool_max_wait_seconds", l, n, wait);
	}
}

static void render_pool_errors(pf_worker_t *w, pf_buf_t *b)
{
	pf_list_node_t *it, *tmp;

	pf_metrics_put_family(
	        b, "pgfunnel_pool_errors_total", "counter",
	        "ErrorResponses servers sent to clients of the pool, by SQLSTATE class "
	        "(its first two characters; \"other\" once the table is full).");
	PF_LIST_FOREACH(&w->pools, it, tmp)
	{
		const pf_pool_t *p = PF_CONTAINER_OF(it, pf_pool_t, node);
		pf_metrics_label_t l[3];
		size_t n = pool_labels(p, l);
		char cls[3];

		l[n].name = "class";
		for (size_t i = 0; i < p->n_error_classes; i++) {
			memcpy(cls, p->errors[i].cls, 2);
			cls[2] = '\0';
			l[n].value = cls;
			put_u64(b, "pgfunnel_pool_errors_total", l, n + 1, p->errors[i].count);
		}
		if (p->errors_other) {
			l[n].value = "other";
			put_u64(b, "pgfunnel_pool_errors_total", l, n + 1, p->errors_other);
		}
	}
}

static void render_pool_waits(pf_worker_t *w, pf_buf_t *b)
{
	pf_list_node_t *it, *tmp;

	pf_metrics_put_family(b, "pgfunnel_pool_wait_seconds", "histogram",
	                      "How long clients of the pool waited for a server, per wait.");
	PF_LIST_FOREACH(&w->pools, it, tmp)
	{
		const pf_pool_t *p = PF_CONTAINER_OF(it, pf_pool_t, node);
		pf_metrics_label_t l[2];
		size_t n = pool_labels(p, l);

		pf_metrics_put_histogram(b, "pgfunnel_pool_wait_seconds", l, n, pf_pool_wait_bounds,
		                         PF_ARRAY_SIZE(pf_pool_wait_bounds), p->wait_buckets,
		                         (pf_usec_t)p->stats.wait_time);
	}
}

/* The SHOW STATS_TOTALS counters, one family each; times are exported in seconds. */
static const struct {
	const char *name;
	const char *help;
	size_t offset;
	bool usec;
} db_counters[] = {
        {"pgfunnel_database_server_assignments_total",
         "Times a server was assigned to a client (SHOW STATS_TOTALS server_assignment_count).",
         offsetof(pf_pool_stats_t, server_assignment_count), false},
        {"pgfunnel_database_transactions_total",
         "Transactions pooled (SHOW STATS_TOTALS xact_count).",
         offsetof(pf_pool_stats_t, xact_count), false},
        {"pgfunnel_database_queries_total", "Queries pooled (SHOW STATS_TOTALS query_count).",
         offsetof(pf_pool_stats_t, query_count), false},
        {"pgfunnel_database_received_bytes_total",
         "Bytes received from clients (SHOW STATS_TOTALS bytes_received).",
         offsetof(pf_pool_stats_t, bytes_received), false},
        {"pgfunnel_database_sent_bytes_total",
         "Bytes sent to clients from servers (SHOW STATS_TOTALS bytes_sent).",
         offsetof(pf_pool_stats_t, bytes_sent), false},
        {"pgfunnel_database_transaction_seconds_total",
         "Time spent in transactions (SHOW STATS_TOTALS xact_time, in seconds).",
         offsetof(pf_pool_stats_t, xact_time), true},
        {"pgfunnel_database_query_seconds_total",
         "Time spent in queries (SHOW STATS_TOTALS query_time, in seconds).",
         offsetof(pf_pool_stats_t, query_time), true},
        {"pgfunnel_database_wait_seconds_total",
         "Time clients waited for a server (SHOW STATS_TOTALS wait_time, in seconds).",
         offsetof(pf_pool_stats_t, wait_time), true},
        {"pgfunnel_database_client_parses_total",
         "Prepared statements clients created (SHOW STATS_TOTALS client_parse_count).",
         offsetof(pf_pool_stats_t, client_parse_count), false},
        {"pgfunnel_database_server_parses_total",
         "Prepared statements created on servers (SHOW STATS_TOTALS server_parse_count).",
         offsetof(pf_pool_stats_t, server_parse_count), false},
        {"pgfunnel_database_binds_total",
         "Prepared statements bound (SHOW STATS_TOTALS bind_count).",
         offsetof(pf_pool_stats_t, bind_count), false},
};

/* Connections ended, by reason: every timeout, limit and fault is counted here. */
static void render_closes(pf_worker_t *w, pf_buf_t *b)
{
	pf_metrics_put_family(b, "pgfunnel_client_disconnects_total", "counter",
	                      "Client connections ended, by reason (timeouts, limits, faults, "
	                      "normal exits).");
	for (int i = 0; i < PF_CLOSE_CLIENT_REASONS; i++) {
		pf_metrics_label_t l = {"reason",
		                        pf_client_close_reason_name((pf_close_reason_t)i)};

		put_u64(b, "pgfunnel_client_disconnects_total", &l, 1, w->client_closes[i]);
	}
	pf_metrics_put_family(b, "pgfunnel_server_disconnects_total", "counter",
	                      "Server connections ended, by reason.");
	for (int i = 0; i < PF_SV_CLOSE_REASONS; i++) {
		pf_metrics_label_t l = {"reason",
		                        pf_server_close_reason_name((pf_server_close_reason_t)i)};

		put_u64(b, "pgfunnel_server_disconnects_total", &l, 1, w->server_closes[i]);
	}
}

static void render_databases(pf_worker_t *w, pf_buf_t *b)
{
	for (size_t i = 0; i < PF_ARRAY_SIZE(db_counters); i++) {
		pf_list_node_t *it, *tmp;

		pf_metrics_put_family(b, db_counters[i].name, "counter", db_counters[i].help);
		PF_LIST_FOREACH(&w->databases, it, tmp)
		{
			const pf_database_t *db = PF_CONTAINER_OF(it, pf_database_t, node);
			pf_metrics_label_t l = {"database", db->name};
			pf_pool_stats_t st;
			uint64_t v;

			pf_stats_db_totals(w, db, &st);
			memcpy(&v, (const char *)&st + db_counters[i].offset, sizeof(v));
			if (db_counters[i].usec)
				put_seconds(b, db_counters[i].name, &l, 1, (pf_usec_t)v);
			else
				put_u64(b, db_counters[i].name, &l, 1, v);
		}
	}
}

void pf_metrics_render(pf_worker_t *w, pf_buf_t *out)
{
	pf_metrics_label_t version = {"version", PF_VERSION};

	pf_metrics_put_family(out, "pgfunnel_up", "gauge", "1 while pgfunnel is running.");
	pf_metrics_put_sample(out, "pgfunnel_up", NULL, 0, "1");
	pf_metrics_put_family(out, "pgfunnel_build_info", "gauge",
	                      "Always 1; the version label names the running pgfunnel.");
	pf_metrics_put_sample(out, "pgfunnel_build_info", &version, 1, "1");
	pf_metrics_put_family(out, "process_start_time_seconds", "gauge",
	                      "Start time of the process since the Unix epoch in seconds.");
	put_seconds(out, "process_start_time_seconds", NULL, 0, w->start_wall);
	pf_metrics_put_family(out, "pgfunnel_clients", "gauge",
	                      "Client connections open, in every state (max_client_conn counts "
	                      "these).");
	put_u64(out, "pgfunnel_clients", NULL, 0, w->client_count);
	render_pool_clients(w, out);
	render_pool_servers(w, out);
	render_pool_prepared(w, out);
	render_pool_maxwait(w, out);
	render_pool_errors(w, out);
	render_pool_waits(w, out);
	render_databases(w, out);
	render_closes(w, out);
}

/*
 * HTTP requests.
 */

static const char *find_head_end(const char *req, size_t len, size_t *line_end)
{
	const char *nl = memchr(req, '\n', len);

	*line_end = nl ? (size_t)(nl - req) : len;
	for (; nl; nl = memchr(nl + 1, '\n', len - (size_t)(nl + 1 - req))) {
		const char *next = nl + 1;
		size_t left = len - (size_t)(next - req);

		/* The head ends at an empty line: "\r\n\r\n" or a bare "\n\n". */
		if (left >= 1 && next[0] == '\n')
			return next + 1;
		if (left >= 2 && next[0] == '\r' && next[1] == '\n')
			return next + 2;
		if (left == 0)
			break;
	}
	return NULL;
}

static bool is_token_char(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       (c && strchr("!#$%&'*+-.^_`|~", c));
}

int pf_metrics_parse_request(const char *req, size_t len, bool *head)
{
	size_t line_len, i = 0, method_len, target_start, target_len, version_start;
	const char *target;

	*head = false;
	if (!find_head_end(req, len, &line_len))
		return len >= PF_METRICS_MAX_REQUEST ? 431 : 0;
	if (line_len > 0 && req[line_len - 1] == '\r')
		line_len--;
	while (i < line_len && is_token_char(req[i]))
		i++;
	method_len = i;
	if (method_len == 0 || i >= line_len || req[i] != ' ')
		return 400;
	target_start = ++i;
	while (i < line_len && req[i] != ' ' && req[i] > ' ')
		i++;
	target_len = i - target_start;
	if (target_len == 0 || i >= line_len || req[i] != ' ')
		return 400;
	version_start = i + 1;
	if (line_len - version_start < 5 || memcmp(req + version_start, "HTTP/", 5) != 0)
		return 400;
	if (line_len - version_start != 8 || memcmp(req + version_start, "HTTP/1.", 7) != 0 ||
	    req[version_start + 7] < '0' || req[version_start + 7] > '9')
		return 505;

	target = req + target_start;
	/* The absolute form (RFC 9112 3.2.2) names the same resource as its path. */
	if (target_len > 7 && strncasecmp(target, "http://", 7) == 0) {
		const char *slash = memchr(target + 7, '/', target_len - 7);

		if (!slash)
			return 404;
		target_len -= (size_t)(slash - target);
		target = slash;
	}
	{
		const char *q = memchr(target, '?', target_len);

		if (q)
			target_len = (size_t)(q - target);
	}
	if (target_len != 8 || memcmp(target, "/metrics", 8) != 0)
		return 404;
	if (method_len == 4 && memcmp(req, "HEAD", 4) == 0) {
		*head = true;
		return 200;
	}
	if (method_len == 3 && memcmp(req, "GET", 3) == 0)
		return 200;
	return 405;
}

/*
 * The listener and its connections.
 */

struct pf_metrics {
	pf_worker_t *worker;
	uv_tcp_t listener;
	bool listener_open; /* until its close callback */
	bool stopping;
	pf_list_t scrapes; /* scrape_t that are not closing */
	size_t nscrapes;   /* scrape_t allocated, closing ones included */
	char desc[96];
};

typedef struct scrape {
	uv_tcp_t tcp;
	uv_timer_t timer;
	uv_write_t write_req;
	uv_shutdown_t shutdown_req;
	pf_list_node_t node; /* m->scrapes until closing */
	struct pf_metrics *m;
	int open_handles; /* tcp and timer: freed when both are closed */
	bool closing;
	bool answered;
	pf_buf_t head, body; /* the answer, alive until the connection is freed */
	size_t len;
	char req[PF_METRICS_MAX_REQUEST];
} scrape_t;

static void maybe_free_metrics(struct pf_metrics *m)
{
	if (m->stopping && !m->listener_open && m->nscrapes == 0)
		free(m);
}

static void on_scrape_handle_closed(uv_handle_t *h)
{
	scrape_t *s = h->data;
	struct pf_metrics *m = s->m;

	if (--s->open_handles > 0)
		return;
	pf_buf_free(&s->head);
	pf_buf_free(&s->body);
	free(s);
	m->nscrapes--;
	maybe_free_metrics(m);
}

static void scrape_close(scrape_t *s)
{
	if (s->closing)
		return;
	s->closing = true;
	pf_list_remove(&s->m->scrapes, &s->node);
	uv_close((uv_handle_t *)&s->timer, on_scrape_handle_closed);
	uv_close((uv_handle_t *)&s->tcp, on_scrape_handle_closed);
}

static void on_scrape_timer(uv_timer_t *t)
{
	scrape_close(t->data);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
	(void)req;
	(void)status;
	/* The read side sees the scraper's EOF next; the linger timer covers one that never comes.
	 */
}

static void on_written(uv_write_t *req, int status)
{
	scrape_t *s = req->data;

	if (s->closing)
		return;
	if (status < 0 || uv_shutdown(&s->shutdown_req, (uv_stream_t *)&s->tcp, on_shutdown) < 0) {
		scrape_close(s);
		return;
	}
	uv_timer_start(&s->timer, on_scrape_timer, PF_METRICS_LINGER_TIMEOUT / 1000, 0);
}

static const char *status_text(int status)
{
	switch (status) {
	case 200:
		return "OK";
	case 400:
		return "Bad Request";
	case 404:
		return "Not Found";
	case 405:
		return "Method Not Allowed";
	case 431:
		return "Request Header Fields Too Large";
	case 505:
		return "HTTP Version Not Supported";
	default:
		return "Internal Server Error";
	}
}

static void scrape_answer(scrape_t *s, int status, bool head_only)
{
	char line[160];
	uv_buf_t bufs[2];
	int n;

	s->answered = true;
	if (status == 200) {
		pf_metrics_render(s->m->worker, &s->body);
		if (s->body.failed) {
			pf_buf_free(&s->body);
			status = 500;
		}
	}
	if (status != 200) {
		put_str(&s->body, status_text(status));
		pf_buf_put_u8(&s->body, '\n');
	}
	n = snprintf(line, sizeof(line), "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n", status,
	             status_text(status),
	             status == 200 ? PF_METRICS_CONTENT_TYPE : "text/plain; charset=utf-8");
	pf_buf_put_bytes(&s->head, line, (size_t)n);
	if (status == 405)
		put_str(&s->head, "Allow: GET, HEAD\r\n");
	n = snprintf(line, sizeof(line), "Content-Length: %zu\r\nConnection: close\r\n\r\n",
	             s->body.len);
	pf_buf_put_bytes(&s->head, line, (size_t)n);
	if (s->head.failed || s->body.failed) {
		scrape_close(s);
		return;
	}
	bufs[0] = uv_buf_init((char *)s->head.data, (unsigned)s->head.len);
	bufs[1] = uv_buf_init((char *)s->body.data, (unsigned)s->body.len);
	s->write_req.data = s;
	if (uv_write(&s->write_req, (uv_stream_t *)&s->tcp, bufs,
	             head_only || s->body.len == 0 ? 1 : 2, on_written) < 0)
		scrape_close(s);
}

static void on_scrape_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	scrape_t *s = h->data;

	(void)suggested;
	/* After the answer, whatever still comes is read into the same buffer and dropped. */
	if (s->answered)
		*buf = uv_buf_init(s->req, sizeof(s->req));
	else
		*buf = uv_buf_init(s->req + s->len, (unsigned)(sizeof(s->req) - s->len));
}

static void on_scrape_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
	scrape_t *s = stream->data;
	bool head;
	int status;

	(void)buf;
	if (s->closing)
		return;
	if (nread < 0) {
		scrape_close(s);
		return;
	}
	if (nread == 0 || s->answered)
		return;
	s->len += (size_t)nread;
	status = pf_metrics_parse_request(s->req, s->len, &head);
	if (status != 0)
		scrape_answer(s, status, head);
}

static void on_metrics_connection(uv_stream_t *server, int status)
{
	struct pf_metrics *m = server->data;
	scrape_t *s;

	if (status < 0) {
		pf_log_warning(NULL, "metrics: accept() failed on %s: %s", m->desc,
		               uv_strerror(status));
		return;
	}
	s = calloc(1, sizeof(*s));
	if (!s || uv_tcp_init(m->worker->net.loop, &s->tcp) < 0) {
		/* Out of memory: the connection stays in the backlog until one is freed. */
		free(s);
		return;
	}
	s->m = m;
	s->tcp.data = s;
	s->timer.data = s;
	pf_buf_init(&s->head);
	pf_buf_init(&s->body);
	pf_list_node_init(&s->node);
	pf_list_append(&m->scrapes, &s->node);
	m->nscrapes++;
	s->open_handles = 1;
	if (uv_timer_init(m->worker->net.loop, &s->timer) == 0)
		s->open_handles++;
	else
		s->closing = true; /* no timer to close; the tcp handle is closed below */
	if (s->closing || uv_accept(server, (uv_stream_t *)&s->tcp) < 0 ||
	    m->scrapes.len > PF_METRICS_MAX_CONNS) {
		if (s->open_handles == 1) {
			pf_list_remove(&m->scrapes, &s->node);
			uv_close((uv_handle_t *)&s->tcp, on_scrape_handle_closed);
		} else {
			scrape_close(s);
		}
		return;
	}
	uv_timer_start(&s->timer, on_scrape_timer, PF_METRICS_REQUEST_TIMEOUT / 1000, 0);
	if (uv_read_start((uv_stream_t *)&s->tcp, on_scrape_alloc, on_scrape_read) < 0)
		scrape_close(s);
}

/* metrics_addr (an address, "*" or a host name) and port into ss. */
static int resolve(const char *addr, int port, struct sockaddr_storage *ss, char *err,
                   size_t errlen)
{
	struct addrinfo hints, *res = NULL;
	char host[256];
	size_t len;
	int rc;

	if (!addr || !*addr || strcmp(addr, "*") == 0)
		addr = "0.0.0.0";
	/* "[::1]" as well as "::1". */
	len = strlen(addr);
	if (addr[0] == '[' && len >= 2 && addr[len - 1] == ']' && len - 2 < sizeof(host)) {
		memcpy(host, addr + 1, len - 2);
		host[len - 2] = '\0';
	} else {
		pf_strlcpy(host, addr, sizeof(host));
	}
	memset(ss, 0, sizeof(*ss));
	if (uv_ip4_addr(host, port, (struct sockaddr_in *)ss) == 0 ||
	    uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss) == 0)
		return 0;
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE;
	rc = getaddrinfo(host, NULL, &hints, &res);
	if (rc != 0 || !res) {
		snprintf(err, errlen, "metrics_addr \"%s\": %s", addr, gai_strerror(rc));
		return -EINVAL;
	}
	memcpy(ss, res->ai_addr, res->ai_addrlen);
	if (ss->ss_family == AF_INET6)
		((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
	else
		((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
	freeaddrinfo(res);
	return 0;
}

static void on_listener_closed(uv_handle_t *h)
{
	struct pf_metrics *m = h->data;

	m->listener_open = false;
	maybe_free_metrics(m);
}

int pf_metrics_start(pf_worker_t *w, char *err, size_t errlen)
{
	const pf_config_t *cfg = w->cfg;
	struct pf_metrics *m;
	struct sockaddr_storage ss;
	char host[INET6_ADDRSTRLEN];
	int rc;

	if (cfg->metrics_port <= 0 || w->metrics)
		return 0;
	rc = resolve(cfg->metrics_addr, cfg->metrics_port, &ss, err, errlen);
	if (rc < 0)
		return rc;
	m = calloc(1, sizeof(*m));
	if (!m) {
		snprintf(err, errlen, "metrics endpoint: out of memory");
		return -ENOMEM;
	}
	m->worker = w;
	pf_list_init(&m->scrapes);
	if (ss.ss_family == AF_INET6)
		uv_ip6_name((struct sockaddr_in6 *)&ss, host, sizeof(host));
	else
		uv_ip4_name((struct sockaddr_in *)&ss, host, sizeof(host));
	snprintf(m->desc, sizeof(m->desc), ss.ss_family == AF_INET6 ? "[%s]:%d" : "%s:%d", host,
	         cfg->metrics_port);
	rc = uv_tcp_init(w->net.loop, &m->listener);
	if (rc < 0) {
		free(m);
		snprintf(err, errlen, "metrics endpoint: %s", uv_strerror(rc));
		return rc;
	}
	m->listener.data = m;
	m->listener_open = true;
	rc = uv_tcp_bind(&m->listener, (const struct sockaddr *)&ss, 0);
	if (rc == 0)
		rc = uv_listen((uv_stream_t *)&m->listener, 16, on_metrics_connection);
	if (rc < 0) {
		snprintf(err, errlen, "cannot listen on %s (metrics_addr, metrics_port): %s",
		         m->desc, uv_strerror(rc));
		m->stopping = true;
		uv_close((uv_handle_t *)&m->listener, on_listener_closed);
		return rc;
	}
	w->metrics = m;
	pf_log_info(NULL, "metrics endpoint on http://%s/metrics", m->desc);
	return 0;
}

void pf_metrics_stop(pf_worker_t *w)
{
	struct pf_metrics *m = w->metrics;

	if (!m)
		return;
	w->metrics = NULL;
	m->stopping = true;
	while (!pf_list_is_empty(&m->scrapes))
		scrape_close(PF_CONTAINER_OF(pf_list_first(&m->scrapes), scrape_t, node));
	uv_close((uv_handle_t *)&m->listener, on_listener_closed);
}
