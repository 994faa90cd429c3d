/*
 * log: PgBouncer-style log lines to stderr, a logfile and/or syslog.
 *
 * A line looks like PgBouncer's so that DBAs' grep patterns carry over:
 *   2026-11-26 07:00:00.123 UTC [4242] LOG C-0x55d0c2a0: appdb/alice@127.0.0.1:51234 login attempt
 * The level is tested before the arguments are evaluated. Each line is written with a single
 * write(2), so lines from several threads never interleave. The text after the level is escaped
 * (pf_log_escape()), so no logged string can start a line of its own. Never log a password or
 * secret.
 *
 * Threads: any thread may log. The sinks, the threshold and the describer are process-wide;
 * the functions that configure them (pf_log_set_*, pf_log_open, pf_log_reopen, pf_log_close)
 * are meant for the main thread (start-up, SIGHUP, RELOAD) but are safe against threads logging
 * at the same time: a line goes wholly to the old sinks or wholly to the new ones.
 */
#ifndef PGFUNNEL_LOG_H
#define PGFUNNEL_LOG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "pgfunnel/util.h"

/* Levels in increasing verbosity; names as PgBouncer prints them. */
typedef enum pf_log_level {
	PF_LOG_FATAL = 0,
	PF_LOG_ERROR,
	PF_LOG_WARNING,
	PF_LOG_INFO, /* printed as "LOG", PgBouncer's default level */
	PF_LOG_DEBUG,
	PF_LOG_NOISE,
} pf_log_level_t;

/*
 * The current threshold: lines above it are skipped. Written only by pf_log_set_verbosity()
 * (start-up and reload, main thread); read on every log call from any thread, hence a global
 * atomic read with a relaxed load (a plain load on common CPUs).
 */
extern atomic_int pf_log_threshold;

/*
 * Writes a description of a logged object ("C-0x…: db/user@addr:port") into buf (size n) and
 * returns its length. The connection module registers one; until then objects print as pointers.
 */
typedef size_t (*pf_log_describe_fn)(const void *obj, char *buf, size_t n);
void pf_log_set_describer(pf_log_describe_fn fn);

/* verbose 0 = LOG and above (PgBouncer's default), 1 = DEBUG, 2 or more = NOISE. */
void pf_log_set_verbosity(int verbose);

/* Whether lines also go to stderr (foreground, not -q). */
void pf_log_set_stderr(bool on);

/*
 * Configures the file and syslog sinks. logfile NULL or "" = none. facility is a syslog facility
 * name as PgBouncer accepts it (daemon, user, local0…local7). Opens the logfile for appending.
 * Returns 0, or a negative errno with a one-line reason in err (size errlen).
 */
PF_MUSTCHECK int pf_log_open(const char *logfile, bool use_syslog, const char *ident,
                             const char *facility, char *err, size_t errlen);

/* Reopens the logfile (SIGHUP; logrotate). Keeps the old descriptor if the open fails. */
PF_MUSTCHECK int pf_log_reopen(void);

/*
 * Start-up as root with -u: gives the logfile to uid/gid when this process created it (it did
 * not exist before pf_log_open), so that the unprivileged process can reopen it on SIGHUP and
 * RELOAD. An existing file (or a symlink) is left alone. Returns 0 (also when there is nothing
 * to do) or a negative errno from fchown.
 */
PF_MUSTCHECK int pf_log_give_to(uid_t uid, gid_t gid);

/* Closes the file and syslog sinks. */
void pf_log_close(void);

/* Writes one line; use the macros below, which test the level first. obj may be NULL. */
void pf_log_write(pf_log_level_t level, const void *obj, const char *fmt, ...) PF_PRINTF(3, 4);

#define PF_LOG_AT(level, obj, ...)                                                                 \
	do {                                                                                       \
		if ((int)(level) <= atomic_load_explicit(&pf_log_threshold, memory_order_relaxed)) \
			pf_log_write((level), (obj), __VA_ARGS__);                                 \
	} while (0)

#define pf_log_error(obj, ...)   PF_LOG_AT(PF_LOG_ERROR, obj, __VA_ARGS__)
#define pf_log_warning(obj, ...) PF_LOG_AT(PF_LOG_WARNING, obj, __VA_ARGS__)
#define pf_log_info(obj, ...)    PF_LOG_AT(PF_LOG_INFO, obj, __VA_ARGS__)
#define pf_log_debug(obj, ...)   PF_LOG_AT(PF_LOG_DEBUG, obj, __VA_ARGS__)
#define pf_log_noise(obj, ...)   PF_LOG_AT(PF_LOG_NOISE, obj, __VA_ARGS__)

/*
 * Copies srclen bytes of src into dst (size n > 0; always NUL-terminated) so that they cannot
 * forge or garble a log line: control bytes (< 0x20, 0x7f) become \n, \r, \t or \xNN, a
 * backslash becomes \\ (so the escaping is unambiguous), and bytes that are not well-formed
 * UTF-8 (RFC 3629: no overlong forms, surrogates or code points above U+10FFFF), as well as the
 * C1 controls U+0080..U+009F, become \xNN per byte. An escape is never cut in half when dst is
 * short. Returns the length written (excluding the NUL). Every log line's text after the
 * "[pid] LEVEL " head goes through it, so names a client chose (user, database,
 * application_name, console commands) are safe wherever they are logged.
 */
size_t pf_log_escape(char *dst, size_t n, const char *src, size_t srclen);

/* True when s (n bytes) is well-formed UTF-8 (the same rules). */
bool pf_utf8_valid(const char *s, size_t n);

/* Logs at FATAL and exits with status 1. For start-up, config and broken invariants only. */
PF_NORETURN void pf_fatal(const char *fmt, ...) PF_PRINTF(1, 2);

/*
 * Formats "YYYY-MM-DD HH:MM:SS.mmm TZ" (local time, as PgBouncer prints it) for usec since the
 * epoch into buf (size n); returns the length.
 */
size_t pf_log_format_time(char *buf, size_t n, long long usec);

#endif
