/*
 * stats: per-pool and per-database counters, averages over stats_period, the "stats:" log line,
 * errors by SQLSTATE class and the wait-time histogram (see include/pgfunnel/stats.h).
 *
 * Invariant: counters only grow; a database's totals include the pools it already freed
 * (db->stats_retired), so rates computed from two readings are never negative.
 */
#include "pfbuild.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "pgfunnel/log.h"
#include "pgfunnel/stats.h"
#include "pgfunnel/runtime.h"

void pf_stats_db_totals(pf_worker_t *w, const pf_database_t *db, pf_pool_stats_t *out)
{
	pf_list_node_t *it, *tmp;

	*out = db->stats_retired;
	PF_LIST_FOREACH(&w->pools, it, tmp)
	{
		const pf_pool_t *p = PF_CONTAINER_OF(it, pf_pool_t, node);

		if (p->db == db)
			pf_pool_stats_add(out, &p->stats);
	}
}

void pf_stats_note_error(pf_pool_t *pool, const char *sqlstate)
{
	size_t i;

	if (!sqlstate || strlen(sqlstate) < 2)
		return;
	for (i = 0; i < pool->n_error_classes; i++) {
		if (memcmp(pool->errors[i].cls, sqlstate, 2) == 0) {
			pool->errors[i].count++;
			return;
		}
	}
	if (i == PF_ARRAY_SIZE(pool->errors)) {
		pool->errors_other++;
		return;
	}
	memcpy(pool->errors[i].cls, sqlstate, 2);
	pool->errors[i].count = 1;
	pool->n_error_classes++;
}

/* usec * delta / dur without overflowing for large byte counts: a per-second rate. */
static uint64_t per_second(uint64_t delta, pf_usec_t dur)
{
	if (delta <= UINT64_MAX / (uint64_t)PF_USEC_PER_SEC)
		return delta * (uint64_t)PF_USEC_PER_SEC / (uint64_t)dur;
	return (uint64_t)((long double)delta * (long double)PF_USEC_PER_SEC / (long double)dur);
}

/*
 * DELTA(f) is cur->f - old->f. Counters never go back; should that invariant ever break, the
 * guard takes the current value rather than a huge wrapped-around difference.
 */
void pf_stats_average(const pf_pool_stats_t *cur, const pf_pool_stats_t *old, pf_usec_t dur,
                      pf_pool_stats_t *avg)
{
	uint64_t xacts, queries, assignments;

	memset(avg, 0, sizeof(*avg));
	if (dur <= 0)
		return;
#define DELTA(f) (cur->f >= old->f ? cur->f - old->f : cur->f)
	xacts = DELTA(xact_count);
	queries = DELTA(query_count);
	assignments = DELTA(server_assignment_count);
	avg->server_assignment_count = per_second(assignments, dur);
	avg->xact_count = per_second(xacts, dur);
	avg->query_count = per_second(queries, dur);
	avg->bytes_received = per_second(DELTA(bytes_received), dur);
	avg->bytes_sent = per_second(DELTA(bytes_sent), dur);
	avg->client_parse_count = per_second(DELTA(client_parse_count), dur);
	avg->server_parse_count = per_second(DELTA(server_parse_count), dur);
	avg->bind_count = per_second(DELTA(bind_count), dur);
	/* Times are per event, as PgBouncer's calc_average(): wait per server assignment. */
	if (xacts > 0)
		avg->xact_time = DELTA(xact_time) / xacts;
	if (queries > 0)
		avg->query_time = DELTA(query_time) / queries;
	if (assignments > 0)
		avg->wait_time = DELTA(wait_time) / assignments;
#undef DELTA
}

size_t pf_stats_format_line(const pf_pool_stats_t *avg, char *buf, size_t n)
{
	int r = snprintf(buf, n,
	                 "stats: %" PRIu64 " xacts/s, %" PRIu64 " queries/s, %" PRIu64
	                 " client parses/s, %" PRIu64 " server parses/s, %" PRIu64
	                 " binds/s, in %" PRIu64 " B/s, out %" PRIu64 " B/s, xact %" PRIu64
	                 " us, query %" PRIu64 " us, wait %" PRIu64 " us",
	                 avg->xact_count, avg->query_count, avg->client_parse_count,
	                 avg->server_parse_count, avg->bind_count, avg->bytes_received,
	                 avg->bytes_sent, avg->xact_time, avg->query_time, avg->wait_time);

	if (r < 0 || n == 0)
		return 0;
	return (size_t)r < n ? (size_t)r : n - 1;
}

/*
 * The janitor ticks every second on a millisecond timer, so a tick may come a little before a
 * whole period has passed by the microsecond clock; this much early counts as on time.
 */
#define TICK_SLACK (PF_USEC_PER_SEC / 5)

void pf_stats_tick(pf_worker_t *w, pf_usec_t now)
{
	pf_usec_t period = (pf_usec_t)w->cfg->stats_period * PF_USEC_PER_SEC;
	pf_usec_t dur;
	pf_pool_stats_t cur_all, old_all, avg_all;
	pf_list_node_t *it, *tmp;

	if (!w->stats_stamp)
		w->stats_stamp = w->start_time;
	if (period <= 0)
		period = PF_USEC_PER_SEC;
	dur = now - w->stats_stamp;
	if (dur + TICK_SLACK < period)
		return;
	memset(&cur_all, 0, sizeof(cur_all));
	memset(&old_all, 0, sizeof(old_all));
	PF_LIST_FOREACH(&w->databases, it, tmp)
	{
		pf_database_t *db = PF_CONTAINER_OF(it, pf_database_t, node);
		pf_pool_stats_t cur;

		pf_stats_db_totals(w, db, &cur);
		pf_stats_average(&cur, &db->stats_period_start, dur, &db->stats_avg);
		pf_pool_stats_add(&cur_all, &cur);
		pf_pool_stats_add(&old_all, &db->stats_period_start);
		db->stats_period_start = cur;
	}
	w->stats_stamp = now;
	/* PgBouncer's refresh_stats() logs one line for the whole process, not one per database. */
	if (w->cfg->log_stats) {
		char line[512];

		pf_stats_average(&cur_all, &old_all, dur, &avg_all);
		pf_stats_format_line(&avg_all, line, sizeof(line));
		pf_log_info(NULL, "%s", line);
	}
}
