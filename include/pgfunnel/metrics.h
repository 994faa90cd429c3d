/*
 * metrics: a Prometheus endpoint on the worker's loop (beyond PgBouncer; off unless metrics_port
 * is set). A minimal HTTP/1.1 server answers GET (or HEAD) /metrics with the text exposition
 * format 0.0.4 and closes the connection after each answer. Requests are bounded
 * (PF_METRICS_MAX_REQUEST bytes, PF_METRICS_MAX_CONNS at once, PF_METRICS_REQUEST_TIMEOUT to
 * send one), so a slow or idle scraper holds nothing for long.
 *
 * The text is made by pure functions over a pf_buf_t (the formatting helpers and
 * pf_metrics_render()), which the unit tests call without a loop or a socket.
 */
#ifndef PGFUNNEL_METRICS_H
#define PGFUNNEL_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pgfunnel/buf.h"
#include "pgfunnel/util.h"

typedef struct pf_worker pf_worker_t;

/* Largest request head accepted (request line and headers); a longer one gets 431. */
#define PF_METRICS_MAX_REQUEST 8192
/* Scrape connections open at once; more are closed as soon as they are accepted. */
#define PF_METRICS_MAX_CONNS 16
/* Time a connection has to send its request, and to go away after the answer. */
#define PF_METRICS_REQUEST_TIMEOUT (5 * PF_USEC_PER_SEC)
#define PF_METRICS_LINGER_TIMEOUT  (2 * PF_USEC_PER_SEC)

/* The Content-Type of the answer to a scrape. */
#define PF_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* One label of a sample: name (a valid Prometheus label name) and value (any text). */
typedef struct pf_metrics_label {
	const char *name;
	const char *value;
} pf_metrics_label_t;

/* Most labels a sample may have, the histogram's "le" included. */
#define PF_METRICS_MAX_LABELS 8

/*
 * Appends s (NULL = "") as the inside of a quoted label value: backslash, double quote and
 * newline become \\, \" and \n; every other byte is copied.
 */
void pf_metrics_put_label_value(pf_buf_t *b, const char *s);

/*
 * Appends a metric family's "# HELP name help" and "# TYPE name type" lines. type is one of
 * counter, gauge, histogram, untyped. In help, backslash and newline are escaped.
 */
void pf_metrics_put_family(pf_buf_t *b, const char *name, const char *type, const char *help);

/*
 * Appends one sample line "name{l1="v1",l2="v2"} value\n" (no braces when nlabels is 0).
 * value is the text of the value, written as given (use the formatters below). At most
 * PF_METRICS_MAX_LABELS labels; more set the builder's failed flag.
 */
void pf_metrics_put_sample(pf_buf_t *b, const char *name, const pf_metrics_label_t *labels,
                           size_t nlabels, const char *value);

/* Formats v as a decimal integer into buf (size >= 24); returns buf. */
const char *pf_metrics_fmt_u64(char *buf, size_t n, uint64_t v);

/*
 * Formats usec microseconds as seconds, exactly and without trailing zeros ("0.0001", "1.5",
 * "3"), into buf (size >= 32); negative values format as "0". Returns buf.
 */
const char *pf_metrics_fmt_seconds(char *buf, size_t n, pf_usec_t usec);

/*
 * Appends the samples of one histogram series in seconds: name_bucket{labels,le="..."} for each
 * of the nbounds upper bounds (usec, ascending) and le="+Inf", cumulative; then name_sum
 * (sum_usec as seconds) and name_count. counts has nbounds + 1 entries: the observations of each
 * bucket alone (not cumulative), the last one above every bound; name_count is their total.
 */
void pf_metrics_put_histogram(pf_buf_t *b, const char *name, const pf_metrics_label_t *labels,
                              size_t nlabels, const pf_usec_t *bounds, size_t nbounds,
                              const uint64_t *counts, pf_usec_t sum_usec);

/*
 * Appends the whole exposition for worker w (its pools, databases and process figures) to out.
 * Reads w only; safe to call at any time on w's loop thread. The caller checks out->failed.
 */
void pf_metrics_render(pf_worker_t *w, pf_buf_t *out);

/*
 * Looks at the len bytes of an HTTP request received so far (req need not be NUL-terminated).
 * Returns 0 while the request head (up to the empty line) is incomplete and shorter than
 * PF_METRICS_MAX_REQUEST, else the status to answer: 200 for GET or HEAD of /metrics (a query
 * string is ignored; *head tells HEAD), 404 for another path, 405 for another method, 400 for a
 * malformed request line, 505 for a version other than HTTP/1.x, 431 for a head too long.
 */
int pf_metrics_parse_request(const char *req, size_t len, bool *head);

/*
 * Opens the metrics listener on metrics_addr:metrics_port of w's config, if metrics_port is not
 * 0, and serves scrapes on w's loop until pf_metrics_stop(). Returns 0 (also when off), or
 * -errno with a one-line reason in err (size errlen).
 */
PF_MUSTCHECK int pf_metrics_start(pf_worker_t *w, char *err, size_t errlen);

/*
 * Closes the listener and every scrape connection (shutdown). The memory goes once the close
 * callbacks have run on the loop. Safe to call when the endpoint is off or already stopped.
 */
void pf_metrics_stop(pf_worker_t *w);

#endif
