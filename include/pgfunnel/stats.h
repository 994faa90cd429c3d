/*
 * stats: the counters SHOW STATS / STATS_TOTALS / STATS_AVERAGES / TOTALS report and the
 * metrics endpoint exports — totals per pool (pool->stats), per database (sum of its pools plus
 * the pools already freed), averages over stats_period, the periodic "stats:" log line, errors
 * by SQLSTATE class and a histogram of how long clients waited for a server.
 *
 * Everything runs on the worker's loop; nothing here does socket I/O.
 */
#ifndef PGFUNNEL_STATS_H
#define PGFUNNEL_STATS_H

#include <stddef.h>
#include <stdint.h>

#include "pgfunnel/pool.h"
#include "pgfunnel/runtime.h"
#include "pgfunnel/util.h"

typedef struct pf_worker pf_worker_t;

/* Totals of db: the sum of its live pools' counters and of those already freed. */
void pf_stats_db_totals(pf_worker_t *w, const pf_database_t *db, pf_pool_stats_t *out);

/*
 * Counts an ErrorResponse a server sent to a client of pool, by the first two characters of
 * its SQLSTATE (the class, e.g. "23" integrity constraint violation).
 */
void pf_stats_note_error(pf_pool_t *pool, const char *sqlstate);

/*
 * The averages PgBouncer reports for the interval of dur usec in which the counters went from
 * old to cur, into avg: counts and bytes per second; xact_time per transaction, query_time per
 * query and wait_time per server assignment (PgBouncer's calc_average()), in usec. Integer
 * arithmetic, truncated as PgBouncer's. dur <= 0 gives all zeros.
 */
void pf_stats_average(const pf_pool_stats_t *cur, const pf_pool_stats_t *old, pf_usec_t dur,
                      pf_pool_stats_t *avg);

/*
 * Formats PgBouncer's periodic log text for the averages avg into buf (size n):
 * "stats: 12 xacts/s, 15 queries/s, 0 client parses/s, 0 server parses/s, 0 binds/s,
 * in 1234 B/s, out 5678 B/s, xact 150 us, query 120 us, wait 3 us". Returns its length
 * (truncated to n - 1).
 */
size_t pf_stats_format_line(const pf_pool_stats_t *avg, char *buf, size_t n);

/*
 * Called by the janitor every second with the loop time: once stats_period seconds have passed
 * since the last time (w->stats_stamp), stores every database's averages over that interval in
 * db->stats_avg, moves db->stats_period_start to the current totals and, with log_stats, logs
 * the "stats:" line once for the whole process (as PgBouncer does, not one per database).
 */
void pf_stats_tick(pf_worker_t *w, pf_usec_t now);

#endif
