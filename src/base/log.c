/*
 * log: formats PgBouncer-style log lines and writes them to the configured sinks.
 *
 * Sinks: stderr (foreground and not -q), an append-mode logfile (reopened on SIGHUP), syslog.
 * Each line is assembled in a stack buffer and written with one write(2) per sink, so lines
 * from different threads do not interleave.
 *
 * Process-wide state, all of it here: the sinks (one log_sinks_t), the threshold and the
 * describer. Any thread may log. The sinks are configured by the main thread (start-up, SIGHUP,
 * RELOAD, daemonizing) under the sinks' write lock; every line is written under the read lock,
 * so a reconfiguration never closes a logfile (whose descriptor number a socket could then
 * reuse) while a line is being written to it, and a writer never sees half a configuration.
 * Formatting happens before the lock is taken. The threshold and the describer are atomics:
 * read on every call, written at start-up and on reload.
 */
#include "pfbuild.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "pgfunnel/log.h"

#define LINE_MAX_LEN 4096

atomic_int pf_log_threshold = PF_LOG_INFO;

static _Atomic(pf_log_describe_fn) describer;

/* Where lines go. Written under lock's write side, read under its read side. */
typedef struct log_sinks {
	pthread_rwlock_t lock;
	bool to_stderr;
	int fd;       /* the logfile, -1 = none */
	char *path;   /* the logfile's path, for pf_log_reopen() */
	bool created; /* pf_log_open created the file (it did not exist) */
	bool to_syslog;
	char *syslog_ident; /* openlog() keeps this pointer */
} log_sinks_t;

/* A reconfiguration should not wait behind an endless stream of overlapping writers. */
#ifdef PTHREAD_RWLOCK_WRITER_NONRECURSIVE_INITIALIZER_NP
#define SINKS_LOCK_INITIALIZER PTHREAD_RWLOCK_WRITER_NONRECURSIVE_INITIALIZER_NP
#else
#define SINKS_LOCK_INITIALIZER PTHREAD_RWLOCK_INITIALIZER
#endif

static log_sinks_t sinks = {
        .lock = SINKS_LOCK_INITIALIZER,
        .to_stderr = true,
        .fd = -1,
};

static const char *const level_names[] = {
        [PF_LOG_FATAL] = "FATAL", [PF_LOG_ERROR] = "ERROR", [PF_LOG_WARNING] = "WARNING",
        [PF_LOG_INFO] = "LOG",    [PF_LOG_DEBUG] = "DEBUG", [PF_LOG_NOISE] = "NOISE",
};

static const int syslog_prio[] = {
        [PF_LOG_FATAL] = LOG_CRIT, [PF_LOG_ERROR] = LOG_ERR,   [PF_LOG_WARNING] = LOG_WARNING,
        [PF_LOG_INFO] = LOG_INFO,  [PF_LOG_DEBUG] = LOG_DEBUG, [PF_LOG_NOISE] = LOG_DEBUG,
};

static const struct {
	const char *name;
	int value;
} facilities[] = {
        {"auth", LOG_AUTH},     {"authpriv", LOG_AUTHPRIV}, {"daemon", LOG_DAEMON},
        {"user", LOG_USER},     {"local0", LOG_LOCAL0},     {"local1", LOG_LOCAL1},
        {"local2", LOG_LOCAL2}, {"local3", LOG_LOCAL3},     {"local4", LOG_LOCAL4},
        {"local5", LOG_LOCAL5}, {"local6", LOG_LOCAL6},     {"local7", LOG_LOCAL7},
};

void pf_log_set_describer(pf_log_describe_fn fn)
{
	atomic_store_explicit(&describer, fn, memory_order_release);
}

void pf_log_set_verbosity(int verbose)
{
	int t = PF_LOG_INFO + (verbose < 0 ? 0 : verbose);

	atomic_store_explicit(&pf_log_threshold, t > PF_LOG_NOISE ? PF_LOG_NOISE : t,
	                      memory_order_relaxed);
}

void pf_log_set_stderr(bool on)
{
	pthread_rwlock_wrlock(&sinks.lock);
	sinks.to_stderr = on;
	pthread_rwlock_unlock(&sinks.lock);
}

/* Opens path for appending, creating it (0640) if needed; *created tells which happened. */
static int open_logfile(const char *path, bool *created)
{
	/* O_EXCL first, so that "created" is certain (and never true through a symlink). */
	int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_EXCL | O_CLOEXEC, 0640);

	*created = fd >= 0;
	if (fd < 0 && errno == EEXIST)
		fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	return fd < 0 ? -errno : fd;
}

/* Closes the file and syslog sinks; the caller holds the write lock. */
static void close_sinks_locked(void)
{
	if (sinks.fd >= 0)
		close(sinks.fd);
	sinks.fd = -1;
	free(sinks.path);
	sinks.path = NULL;
	sinks.created = false;
	if (sinks.to_syslog)
		closelog();
	sinks.to_syslog = false;
	free(sinks.syslog_ident);
	sinks.syslog_ident = NULL;
}

int pf_log_open(const char *logfile, bool use_syslog, const char *ident, const char *facility,
                char *err, size_t errlen)
{
	int fd = -1;
	int fac = LOG_DAEMON;
	bool created = false;
	char *path = NULL, *ident_copy = NULL;

	if (logfile && *logfile) {
		fd = open_logfile(logfile, &created);
		if (fd < 0) {
			snprintf(err, errlen, "cannot open logfile \"%s\": %s", logfile,
			         strerror(-fd));
			return fd;
		}
	}
	if (use_syslog) {
		size_t i;

		for (i = 0; i < PF_ARRAY_SIZE(facilities); i++) {
			if (facility && strcmp(facility, facilities[i].name) == 0)
				break;
		}
		if (i == PF_ARRAY_SIZE(facilities)) {
			snprintf(err, errlen, "unknown syslog_facility \"%s\"",
			         facility ? facility : "");
			if (fd >= 0)
				close(fd);
			return -EINVAL;
		}
		fac = facilities[i].value;
	}
	/* The copies are made before the lock, so that writers wait only for the swap. */
	if (fd >= 0)
		path = strdup(logfile);
	if (use_syslog)
		ident_copy = strdup(ident && *ident ? ident : PF_PACKAGE);

	pthread_rwlock_wrlock(&sinks.lock);
	close_sinks_locked();
	sinks.fd = fd;
	sinks.path = path;
	sinks.created = created;
	if (use_syslog) {
		/* openlog keeps the pointer: the copy lives until the sinks are closed. */
		sinks.syslog_ident = ident_copy;
		openlog(ident_copy, LOG_PID | LOG_NDELAY, fac);
		sinks.to_syslog = true;
	}
	pthread_rwlock_unlock(&sinks.lock);
	return 0;
}

int pf_log_reopen(void)
{
	int fd, rc = 0;
	bool created;

	pthread_rwlock_wrlock(&sinks.lock);
	if (sinks.path) {
		fd = open_logfile(sinks.path, &created);
		if (fd < 0) {
			rc = fd;
		} else {
			/* The descriptor number stays: dup2 replaces the file under it. */
			dup2(fd, sinks.fd);
			close(fd);
		}
	}
	pthread_rwlock_unlock(&sinks.lock);
	return rc;
}

int pf_log_give_to(uid_t uid, gid_t gid)
{
	int rc = 0;

	pthread_rwlock_rdlock(&sinks.lock);
	if (sinks.fd >= 0 && sinks.created && fchown(sinks.fd, uid, gid) < 0)
		rc = -errno;
	pthread_rwlock_unlock(&sinks.lock);
	return rc;
}

void pf_log_close(void)
{
	pthread_rwlock_wrlock(&sinks.lock);
	close_sinks_locked();
	pthread_rwlock_unlock(&sinks.lock);
}

size_t pf_log_format_time(char *buf, size_t n, long long usec)
{
	/* The date, time and zone of the last second formatted by this thread: localtime_r and
	 * strftime cost more than the rest of a log line's head, and lines come in bursts. */
	static _Thread_local struct {
		bool valid;
		time_t sec;
		size_t date_len, zone_len;
		char date[32];
		char zone[64];
	} last;
	time_t sec = (time_t)(usec / 1000000);
	int ms = (int)(usec % 1000000 / 1000);
	char out[sizeof(last.date) + 5 + sizeof(last.zone)];
	size_t len;

	assert(usec >= 0); /* the wall clock's, never before 1970 */
	if (n == 0)
		return 0;
	if (!last.valid || last.sec != sec) {
		struct tm tm;

		localtime_r(&sec, &tm);
		last.date_len = strftime(last.date, sizeof(last.date), "%Y-%m-%d %H:%M:%S", &tm);
		last.zone_len = strftime(last.zone, sizeof(last.zone), "%Z", &tm);
		/* A zone name too long for zone[] (TZ="<name>offset" takes any length): the UTC
		 * offset instead, so the line still has its zone field. */
		if (last.zone_len == 0)
			last.zone_len = strftime(last.zone, sizeof(last.zone), "%z", &tm);
		last.sec = sec;
		last.valid = true;
	}
	/* date ".mmm " zone, without printf's format parsing */
	memcpy(out, last.date, last.date_len);
	len = last.date_len;
	out[len++] = '.';
	out[len++] = (char)('0' + ms / 100);
	out[len++] = (char)('0' + ms / 10 % 10);
	out[len++] = (char)('0' + ms % 10);
	out[len++] = ' ';
	memcpy(out + len, last.zone, last.zone_len);
	len += last.zone_len;
	if (len > n - 1)
		len = n - 1;
	memcpy(buf, out, len);
	buf[len] = '\0';
	return len;
}

static void write_all(int fd, const char *p, size_t len)
{
	while (len > 0) {
		ssize_t w = write(fd, p, len);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return;
		}
		p += w;
		len -= (size_t)w;
	}
}

/* Length of the well-formed UTF-8 sequence at s (avail bytes), or 0 when it is not one. */
static size_t utf8_len(const unsigned char *s, size_t avail)
{
	unsigned char c = s[0];
	size_t need;
	unsigned char lo = 0x80, hi = 0xbf; /* allowed range of the second byte */

	if (c >= 0xc2 && c <= 0xdf)
		need = 2;
	else if (c >= 0xe0 && c <= 0xef) {
		need = 3;
		if (c == 0xe0)
			lo = 0xa0; /* overlong */
		else if (c == 0xed)
			hi = 0x9f; /* surrogates */
	} else if (c >= 0xf0 && c <= 0xf4) {
		need = 4;
		if (c == 0xf0)
			lo = 0x90; /* overlong */
		else if (c == 0xf4)
			hi = 0x8f; /* above U+10FFFF */
	} else
		return 0;
	if (avail < need || s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < need; i++) {
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	}
	/* C1 controls (U+0080..U+009F): some terminals act on them (0x9b is CSI). */
	if (c == 0xc2 && s[1] <= 0x9f)
		return 0;
	return need;
}

bool pf_utf8_valid(const char *s, size_t n)
{
	const unsigned char *u = (const unsigned char *)s;

	for (size_t i = 0, k; i < n; i += k) {
		k = u[i] < 0x80 ? 1 : utf8_len(u + i, n - i);
		if (k == 0)
			return false;
	}
	return true;
}

size_t pf_log_escape(char *dst, size_t n, const char *src, size_t srclen)
{
	const unsigned char *s = (const unsigned char *)src;
	size_t out = 0, i = 0;

	if (n == 0)
		return 0;
	while (i < srclen) {
		unsigned char c = s[i];
		char esc[5];
		size_t k, elen;

		if (c >= 0x20 && c < 0x7f && c != '\\') {
			if (out + 1 >= n)
				break;
			dst[out++] = (char)c;
			i++;
			continue;
		}
		if (c >= 0x80 && (k = utf8_len(s + i, srclen - i)) > 0) {
			if (out + k >= n)
				break;
			memcpy(dst + out, s + i, k);
			out += k;
			i += k;
			continue;
		}
		switch (c) {
		case '\\':
			memcpy(esc, "\\\\", 3);
			break;
		case '\n':
			memcpy(esc, "\\n", 3);
			break;
		case '\r':
			memcpy(esc, "\\r", 3);
			break;
		case '\t':
			memcpy(esc, "\\t", 3);
			break;
		default:
			snprintf(esc, sizeof(esc), "\\x%02x", c);
			break;
		}
		elen = strlen(esc);
		if (out + elen >= n)
			break;
		memcpy(dst + out, esc, elen);
		out += elen;
		i++;
	}
	dst[out] = '\0';
	return out;
}

/* The process id in every line, asked of the kernel once per process (a forked child asks
 * again): getpid() is a system call per line otherwise. */
static atomic_int cached_pid;
static pthread_once_t pid_once = PTHREAD_ONCE_INIT;

static void pid_forget(void)
{
	atomic_store_explicit(&cached_pid, 0, memory_order_relaxed);
}

static void pid_register(void)
{
	pthread_atfork(NULL, NULL, pid_forget);
}

static int log_pid(void)
{
	int pid = atomic_load_explicit(&cached_pid, memory_order_relaxed);

	if (pid == 0) {
		pthread_once(&pid_once, pid_register);
		pid = (int)getpid();
		atomic_store_explicit(&cached_pid, pid, memory_order_relaxed);
	}
	return pid;
}

static void vlog(pf_log_level_t level, const void *obj, const char *fmt, va_list ap)
        PF_PRINTF(3, 0);
static void vlog(pf_log_level_t level, const void *obj, const char *fmt, va_list ap)
{
	char line[LINE_MAX_LEN], raw[LINE_MAX_LEN];
	size_t head, rlen = 0, len;
	pf_log_describe_fn describe = atomic_load_explicit(&describer, memory_order_acquire);
	int n;

	head = pf_log_format_time(line, sizeof(line), pf_now_wall_usec());
	n = snprintf(line + head, sizeof(line) - head, " [%d] %s ", log_pid(), level_names[level]);
	head += (size_t)n;
	/* The prefix and the message may carry what a client chose: assembled raw, then escaped. */
	if (obj) {
		if (describe)
			rlen = describe(obj, raw, sizeof(raw) - 1);
		else
			rlen = (size_t)snprintf(raw, sizeof(raw) - 1, "%p", obj);
		if (rlen > sizeof(raw) - 2)
			rlen = sizeof(raw) - 2;
		raw[rlen++] = ' ';
	}
	n = vsnprintf(raw + rlen, sizeof(raw) - rlen, fmt, ap);
	rlen += n < 0 ? 0 : (size_t)n;
	if (rlen > sizeof(raw) - 1)
		rlen = sizeof(raw) - 1;
	len = head + pf_log_escape(line + head, sizeof(line) - head - 1, raw, rlen);
	line[len++] = '\n';
	line[len] = '\0';

	pthread_rwlock_rdlock(&sinks.lock);
	if (sinks.to_stderr)
		write_all(STDERR_FILENO, line, len);
	if (sinks.fd >= 0)
		write_all(sinks.fd, line, len);
	if (sinks.to_syslog) {
		/* syslog adds its own time and pid: send the level and message only. */
		syslog(syslog_prio[level], "%s", line + head - strlen(level_names[level]) - 1);
	}
	pthread_rwlock_unlock(&sinks.lock);
}

void pf_log_write(pf_log_level_t level, const void *obj, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog(level, obj, fmt, ap);
	va_end(ap);
}

void pf_fatal(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog(PF_LOG_FATAL, NULL, fmt, ap);
	va_end(ap);
	exit(1);
}
