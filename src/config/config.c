/*
 * config: reads PgBouncer's ini format into an immutable pf_config_t snapshot.
 *
 * Owns the one parameter table (name, type, field offset, reloadable, implemented, default);
 * defaults go through the same parser as the file. The file grammar is PgBouncer's (libusual
 * cfparser), not generic ini: comments are ';' or '#' only at the start of a line, a value is
 * the rest of the line (';' later in the line is data), keys are [A-Za-z0-9_.*-] or quoted,
 * '%include FILE' is expanded in place (depth limit 10, cycles refused). We do not hand the text
 * to libinih because Debian 12's build (r55) has no line numbers in the handler, a 200-byte line
 * limit, inline ';' comments, continuation lines and ':' as a separator, each of which changes
 * what a PgBouncer file means.
 *
 * Snapshots are reference-counted: every allocation (pf_config_new_defaults, pf_config_copy, so
 * every load) starts with one reference; pf_config_unref() frees at zero. live_snapshots counts
 * allocations not yet freed, so tests can prove that each snapshot is freed exactly once.
 *
 * Callers: main (start-up, SIGHUP, RELOAD), admin (SHOW CONFIG, SET on a copy). No logging here:
 * warnings go to the caller's callback, errors into the caller's buffer as "FILE:LINE: ...".
 */
#include "pfbuild.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "pgfunnel/config.h"

#define MAX_INCLUDE_DEPTH 10
#define SHOW_VALUE_MAX    80 /* bytes of a bad value echoed in an error message */

/*
 * Enum value lists; the index is the C enum value.
 */
static const char *const pool_mode_values[] = {"session", "transaction", "statement", NULL};
static const char *const auth_type_values[] = {
        "any", "trust", "plain", "md5", "cert", "hba", "ldap", "pam", "scram-sha-256", NULL,
};
static const char *const sslmode_values[] = {
        "disable", "allow", "prefer", "require", "verify-ca", "verify-full", NULL,
};
static const char *const facility_values[] = {
        "auth",   "authpriv", "daemon", "user",   "local0", "local1", "local2",
        "local3", "local4",   "local5", "local6", "local7", NULL,
};
static const char *const load_balance_values[] = {"disable", "round-robin", NULL};

#define OFS(field) offsetof(pf_config_t, field)

/* clang-format off */
/* Table rows: name, reloadable, implemented, default text (and range or values). */
#define P_INT(n, r, i, d, lo, hi)  { #n, PF_CFG_INT, OFS(n), r, i, d, NULL, lo, hi }
#define P_UINT(n, r, i, d, lo, hi) { #n, PF_CFG_UINT, OFS(n), r, i, d, NULL, lo, hi }
#define P_BOOL(n, r, i, d)         { #n, PF_CFG_BOOL, OFS(n), r, i, d, NULL, 0, 0 }
#define P_STR(n, r, i, d)          { #n, PF_CFG_STRING, OFS(n), r, i, d, NULL, 0, 0 }
#define P_LIST(n, r, i, d)         { #n, PF_CFG_LIST, OFS(n), r, i, d, NULL, 0, 0 }
#define P_TIME(n, r, i, d)         { #n, PF_CFG_TIME, OFS(n), r, i, d, NULL, 0, 0 }
#define P_ENUM(n, r, i, d, v)      { #n, PF_CFG_ENUM, OFS(n), r, i, d, v, 0, 0 }
#define P_MODE(n, r, i, d)         { #n, PF_CFG_MODE, OFS(n), r, i, d, NULL, 0, 07777 }
/* clang-format on */

#define RELOAD   true
#define RESTART  false
#define IMPL     true
#define NOT_IMPL false

/*
 * Every [pgbouncer] parameter of PgBouncer 1.25 (src/main.c bouncer_params, doc/config.md),
 * sorted by name: SHOW CONFIG prints this order and pf_config_find_param() bsearches it.
 * "Restart" parameters are PgBouncer's CF_NO_RELOAD ones.
 */
static const pf_config_param_t params[] = {
        P_LIST(admin_users, RELOAD, IMPL, ""),
        P_BOOL(application_name_add_host, RELOAD, IMPL, "0"),
        P_STR(auth_dbname, RELOAD, IMPL, NULL),
        P_STR(auth_file, RELOAD, IMPL, NULL),
        P_STR(auth_hba_file, RELOAD, IMPL, ""),
        P_STR(auth_ident_file, RELOAD, IMPL, NULL),
        P_STR(auth_ldap_options, RELOAD, NOT_IMPL, NULL),
        P_STR(auth_query, RELOAD, IMPL,
              "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END "
              "FROM pg_authid WHERE rolname=$1 AND rolcanlogin"),
        P_ENUM(auth_type, RELOAD, IMPL, "md5", auth_type_values),
        P_STR(auth_user, RELOAD, IMPL, NULL),
        P_TIME(autodb_idle_timeout, RELOAD, IMPL, "3600"),
        P_TIME(cancel_wait_timeout, RELOAD, IMPL, "10"),
        P_TIME(client_idle_timeout, RELOAD, IMPL, "0"),
        P_TIME(client_login_timeout, RELOAD, IMPL, "60"),
        P_STR(client_tls13_ciphers, RELOAD, IMPL, NULL),
        P_STR(client_tls_ca_file, RELOAD, IMPL, ""),
        P_STR(client_tls_cert_file, RELOAD, IMPL, ""),
        P_STR(client_tls_ciphers, RELOAD, IMPL, "default"),
        P_STR(client_tls_dheparams, RELOAD, IMPL, "auto"),
        P_STR(client_tls_ecdhcurve, RELOAD, IMPL, "auto"),
        P_STR(client_tls_key_file, RELOAD, IMPL, ""),
        P_STR(client_tls_protocols, RELOAD, IMPL, "secure"),
        P_ENUM(client_tls_sslmode, RELOAD, IMPL, "disable", sslmode_values),
        P_STR(conffile, RELOAD, IMPL, NULL),
        P_INT(default_pool_size, RELOAD, IMPL, "20", 0, INT_MAX),
        P_BOOL(disable_pqexec, RESTART, IMPL, "0"),
        P_TIME(dns_max_ttl, RELOAD, IMPL, "15"),
        P_TIME(dns_nxdomain_ttl, RELOAD, IMPL, "15"),
        P_TIME(dns_zone_check_period, RELOAD, IMPL, "0"),
        P_TIME(idle_transaction_timeout, RELOAD, IMPL, "0"),
        P_LIST(ignore_startup_parameters, RELOAD, IMPL, ""),
        P_STR(job_name, RESTART, NOT_IMPL, "pgfunnel"),
        P_LIST(listen_addr, RESTART, IMPL, ""),
        P_INT(listen_backlog, RESTART, IMPL, "128", 0, INT_MAX),
        P_INT(listen_port, RESTART, IMPL, "6432", 1, 65535),
        P_BOOL(log_connections, RELOAD, IMPL, "1"),
        P_BOOL(log_disconnections, RELOAD, IMPL, "1"),
        P_BOOL(log_pooler_errors, RELOAD, IMPL, "1"),
        P_BOOL(log_stats, RELOAD, IMPL, "1"),
        P_STR(logfile, RELOAD, IMPL, ""),
        P_INT(max_client_conn, RELOAD, IMPL, "100", 0, INT_MAX),
        P_INT(max_db_client_connections, RELOAD, IMPL, "0", 0, INT_MAX),
        P_INT(max_db_connections, RELOAD, IMPL, "0", 0, INT_MAX),
        /* PgBouncer takes any unsigned int, but a message length is a signed Int32: above
         * INT32_MAX (proto.h's PF_PROTO_MAX_MSG_LEN) no message could ever be refused, and
         * the length of a whole message (len + 1) would no longer fit in 32 bits. */
        P_UINT(max_packet_size, RELOAD, IMPL, "2147483647", 0, INT32_MAX),
        P_INT(max_prepared_statements, RELOAD, IMPL, "200", 0, INT_MAX),
        P_INT(max_user_client_connections, RELOAD, IMPL, "0", 0, INT_MAX),
        P_INT(max_user_connections, RELOAD, IMPL, "0", 0, INT_MAX),
        P_STR(metrics_addr, RESTART, IMPL, "127.0.0.1"),
        P_INT(metrics_port, RESTART, IMPL, "0", 0, 65535),
        P_INT(min_pool_size, RELOAD, IMPL, "0", 0, INT_MAX),
        P_INT(peer_id, RELOAD, IMPL, "0", 0, 16383),
        P_STR(pidfile, RESTART, IMPL, ""),
        P_INT(pkt_buf, RESTART, IMPL, "4096", 512, INT_MAX),
        P_ENUM(pool_mode, RELOAD, IMPL, "session", pool_mode_values),
        P_TIME(query_timeout, RELOAD, IMPL, "0"),
        P_TIME(query_wait_notify, RELOAD, IMPL, "5"),
        P_TIME(query_wait_timeout, RELOAD, IMPL, "120"),
        P_INT(reserve_pool_size, RELOAD, IMPL, "0", 0, INT_MAX),
        P_TIME(reserve_pool_timeout, RELOAD, IMPL, "5"),
        P_STR(resolv_conf, RESTART, IMPL, ""),
        P_INT(sbuf_loopcnt, RELOAD, IMPL, "5", 0, INT_MAX),
        P_INT(scram_iterations, RELOAD, IMPL, "4096", 1, INT_MAX),
        P_TIME(server_check_delay, RELOAD, IMPL, "30"),
        P_STR(server_check_query, RELOAD, IMPL, "<empty>"),
        P_TIME(server_connect_timeout, RELOAD, IMPL, "15"),
        P_BOOL(server_fast_close, RELOAD, IMPL, "0"),
        P_TIME(server_idle_timeout, RELOAD, IMPL, "600"),
        P_TIME(server_lifetime, RELOAD, IMPL, "3600"),
        P_TIME(server_login_retry, RELOAD, IMPL, "15"),
        P_STR(server_reset_query, RELOAD, IMPL, "DISCARD ALL"),
        P_BOOL(server_reset_query_always, RELOAD, IMPL, "0"),
        P_BOOL(server_round_robin, RELOAD, IMPL, "0"),
        P_STR(server_tls13_ciphers, RELOAD, IMPL, NULL),
        P_STR(server_tls_ca_file, RELOAD, IMPL, ""),
        P_STR(server_tls_cert_file, RELOAD, IMPL, ""),
        P_STR(server_tls_ciphers, RELOAD, IMPL, "default"),
        P_STR(server_tls_key_file, RELOAD, IMPL, ""),
        P_STR(server_tls_protocols, RELOAD, IMPL, "secure"),
        P_ENUM(server_tls_sslmode, RELOAD, IMPL, "prefer", sslmode_values),
        P_BOOL(so_reuseport, RESTART, IMPL, "0"),
        P_INT(stats_period, RELOAD, IMPL, "60", 1, INT_MAX),
        P_LIST(stats_users, RELOAD, IMPL, ""),
        P_TIME(suspend_timeout, RELOAD, IMPL, "10"),
        P_BOOL(syslog, RELOAD, IMPL, "0"),
        P_ENUM(syslog_facility, RELOAD, IMPL, "daemon", facility_values),
        P_STR(syslog_ident, RELOAD, IMPL, "pgfunnel"),
        P_INT(tcp_defer_accept, RELOAD, IMPL, "1", 0, INT_MAX),
        P_BOOL(tcp_keepalive, RELOAD, IMPL, "1"),
        P_INT(tcp_keepcnt, RELOAD, IMPL, "0", 0, INT_MAX),
        P_INT(tcp_keepidle, RELOAD, IMPL, "0", 0, INT_MAX),
        P_INT(tcp_keepintvl, RELOAD, IMPL, "0", 0, INT_MAX),
        P_INT(tcp_socket_buffer, RELOAD, IMPL, "0", 0, INT_MAX),
        P_INT(tcp_user_timeout, RELOAD, IMPL, "0", 0, INT_MAX),
        P_LIST(track_extra_parameters, RESTART, IMPL, "IntervalStyle"),
        P_TIME(transaction_timeout, RELOAD, IMPL, "0"),
        P_STR(unix_socket_dir, RESTART, IMPL, "/tmp"),
        P_STR(unix_socket_group, RESTART, IMPL, ""),
        P_MODE(unix_socket_mode, RESTART, IMPL, "0777"),
        P_STR(user, RESTART, IMPL, NULL),
        P_INT(verbose, RELOAD, IMPL, "0", 0, INT_MAX),
};

/* Other names PgBouncer accepts for a parameter. */
static const struct {
	const char *alias;
	const char *name;
} param_aliases[] = {
        {"service_name", "job_name"},
};

/*
 * Small helpers.
 */

PF_PRINTF(3, 4) static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (!err || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

static char *xstrndup(const char *s, size_t n)
{
	char *r = malloc(n + 1);

	if (r) {
		memcpy(r, s, n);
		r[n] = '\0';
	}
	return r;
}

/* Frees a string after zeroing it: snapshots may hold passwords. */
static void free_str(char *s)
{
	if (s) {
		OPENSSL_cleanse(s, strlen(s));
		free(s);
	}
}

static int dup_opt(char **dst, const char *src)
{
	*dst = NULL;
	if (src && !(*dst = strdup(src)))
		return -ENOMEM;
	return 0;
}

static bool is_blank(int c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

static void *field(pf_config_t *cfg, const pf_config_param_t *p)
{
	return (char *)cfg + p->offset;
}

static const void *cfield(const pf_config_t *cfg, const pf_config_param_t *p)
{
	return (const char *)cfg + p->offset;
}

static bool is_string_type(pf_config_type_t t)
{
	return t == PF_CFG_STRING || t == PF_CFG_LIST;
}

/* "a, b, c" into out, for "(accepted: ...)" messages. */
static void join_values(const char *const *values, char *out, size_t n)
{
	size_t len = 0;

	out[0] = '\0';
	for (size_t i = 0; values[i]; i++) {
		int w = snprintf(out + len, n - len, "%s%s", i ? ", " : "", values[i]);
		if (w < 0 || (size_t)w >= n - len)
			break;
		len += (size_t)w;
	}
}

/*
 * Value parsers. Each returns true and stores the value, or false.
 */

static bool parse_int64(const char *s, int64_t lo, int64_t hi, int64_t *out)
{
	char *end;
	long long v;

	if (!*s || isspace((unsigned char)*s))
		return false;
	errno = 0;
	v = strtoll(s, &end, 0); /* base 0 like PgBouncer's cf_set_int: 0x10, 010 */
	if (errno || end == s || *end)
		return false;
	if (v < lo || v > hi)
		return false;
	*out = v;
	return true;
}

static bool parse_bool(const char *s, bool *out)
{
	static const char *const yes[] = {"yes", "on", "true"};
	static const char *const no[] = {"no", "off", "false"};
	int64_t v;

	for (size_t i = 0; i < PF_ARRAY_SIZE(yes); i++) {
		if (strcasecmp(s, yes[i]) == 0) {
			*out = true;
			return true;
		}
		if (strcasecmp(s, no[i]) == 0) {
			*out = false;
			return true;
		}
	}
	/* PgBouncer stores these as ints: any integer, non-zero is on. */
	if (!parse_int64(s, INT_MIN, INT_MAX, &v))
		return false;
	*out = v != 0;
	return true;
}

/*
 * Seconds with an optional fraction ("1.5"), as PgBouncer's cf_set_time_usec reads them; digits
 * past microseconds are dropped, as its (usec_t)(USEC * v) does. As an extension a unit suffix
 * may follow: us, ms, s, min, h, d.
 */
static bool parse_time(const char *s, pf_usec_t *out)
{
	static const struct {
		const char *unit;
		int64_t mul_num; /* result = micro * mul_num / mul_den */
		int64_t mul_den;
	} units[] = {
	        {"", 1, 1},     {"s", 1, 1},    {"ms", 1, 1000}, {"us", 1, 1000000},
	        {"min", 60, 1}, {"h", 3600, 1}, {"d", 86400, 1},
	};
	const char *p = s;
	int64_t whole = 0, frac = 0, scale = 100000;
	bool digits = false;

	while (isdigit((unsigned char)*p)) {
		if (whole > (INT64_MAX / 1000000 - 9) / 10)
			return false;
		whole = whole * 10 + (*p++ - '0');
		digits = true;
	}
	if (*p == '.') {
		p++;
		while (isdigit((unsigned char)*p)) {
			frac += (*p++ - '0') * scale;
			scale /= 10;
			digits = true;
		}
	}
	if (!digits)
		return false;
	while (is_blank(*p))
		p++;
	for (size_t i = 0; i < PF_ARRAY_SIZE(units); i++) {
		int64_t micro, r;

		if (strcasecmp(p, units[i].unit) != 0)
			continue;
		micro = whole * 1000000 + frac; /* the number in millionths */
		if (__builtin_mul_overflow(micro, units[i].mul_num, &r))
			return false;
		*out = r / units[i].mul_den;
		return true;
	}
	return false;
}

static bool parse_enum(const char *s, const char *const *values, int *out)
{
	for (int i = 0; values[i]; i++) {
		if (strcasecmp(s, values[i]) == 0) {
			*out = i;
			return true;
		}
	}
	return false;
}

static bool parse_mode(const char *s, int *out)
{
	long v = 0;

	if (!*s)
		return false;
	for (const char *p = s; *p; p++) {
		if (*p < '0' || *p > '7')
			return false;
		v = v * 8 + (*p - '0');
		if (v > 07777)
			return false;
	}
	*out = (int)v;
	return true;
}

/* The "(expected ...)" part of an invalid-value message. */
static void describe_expected(const pf_config_param_t *p, char *out, size_t n)
{
	char list[256];

	switch (p->type) {
	case PF_CFG_INT:
	case PF_CFG_UINT:
		snprintf(out, n, "expected an integer from %" PRId64 " to %" PRId64, p->min,
		         p->max);
		break;
	case PF_CFG_BOOL:
		snprintf(out, n, "accepted: 0, 1, yes, no, on, off, true, false");
		break;
	case PF_CFG_TIME:
		snprintf(out, n,
		         "expected seconds, e.g. 1.5, optionally with a unit: us, ms, s, "
		         "min, h, d");
		break;
	case PF_CFG_ENUM:
		join_values(p->values, list, sizeof(list));
		snprintf(out, n, "accepted: %s", list);
		break;
	case PF_CFG_MODE:
		snprintf(out, n, "expected an octal file mode such as 0777");
		break;
	case PF_CFG_STRING:
	case PF_CFG_LIST:
		out[0] = '\0';
		break;
	}
}

/*
 * Parses value for p into cfg. On failure cfg is unchanged and err gets the message.
 */
static int set_value(pf_config_t *cfg, const pf_config_param_t *p, const char *value, char *err,
                     size_t errlen)
{
	void *dst = field(cfg, p);
	int64_t i64;
	bool ok = false;

	switch (p->type) {
	case PF_CFG_INT:
		if ((ok = parse_int64(value, p->min, p->max, &i64)))
			*(int *)dst = (int)i64;
		break;
	case PF_CFG_UINT:
		if ((ok = parse_int64(value, p->min, p->max, &i64)))
			*(uint32_t *)dst = (uint32_t)i64;
		break;
	case PF_CFG_BOOL:
		ok = parse_bool(value, (bool *)dst);
		break;
	case PF_CFG_TIME:
		ok = parse_time(value, (pf_usec_t *)dst);
		break;
	case PF_CFG_ENUM: {
		int mode;

		ok = parse_enum(value, p->values, &mode);
		if (ok)
			*(int *)dst = mode;
		break;
	}
	case PF_CFG_MODE:
		ok = parse_mode(value, (int *)dst);
		break;
	case PF_CFG_STRING:
	case PF_CFG_LIST: {
		char *copy;

		/* PgBouncer refuses its console as the database auth_query runs in (the console's
		 * names are pool.h's PF_ADMIN_DBNAME and its alias). */
		if (p->offset == OFS(auth_dbname) &&
		    (strcmp(value, "pgbouncer") == 0 || strcmp(value, "pgfunnel") == 0)) {
			set_err(err, errlen,
			        "parameter \"auth_dbname\": cannot use the reserved \"%s\" "
			        "database as "
			        "an auth_dbname",
			        value);
			return -EINVAL;
		}
		copy = strdup(value);
		if (!copy) {
			set_err(err, errlen, "parameter \"%s\": out of memory", p->name);
			return -ENOMEM;
		}
		free_str(*(char **)dst);
		*(char **)dst = copy;
		return 0;
	}
	}
	if (!ok) {
		char expected[300];

		describe_expected(p, expected, sizeof(expected));
		set_err(err, errlen, "parameter \"%s\": invalid value \"%.*s%s\" (%s)", p->name,
		        SHOW_VALUE_MAX, value, strlen(value) > SHOW_VALUE_MAX ? "..." : "",
		        expected);
		return -EINVAL;
	}
	return 0;
}

/*
 * Table access.
 */

const pf_config_param_t *pf_config_params(size_t *count)
{
	if (count)
		*count = PF_ARRAY_SIZE(params);
	return params;
}

static int param_cmp(const void *key, const void *elem)
{
	return strcasecmp(key, ((const pf_config_param_t *)elem)->name);
}

const pf_config_param_t *pf_config_find_param(const char *name)
{
	for (size_t i = 0; i < PF_ARRAY_SIZE(param_aliases); i++) {
		if (strcasecmp(name, param_aliases[i].alias) == 0) {
			name = param_aliases[i].name;
			break;
		}
	}
	return bsearch(name, params, PF_ARRAY_SIZE(params), sizeof(params[0]), param_cmp);
}

int pf_config_set(pf_config_t *cfg, const char *name, const char *value, char *err, size_t errlen)
{
	const pf_config_param_t *p = pf_config_find_param(name);

	if (!p) {
		set_err(err, errlen, "unknown parameter \"%.*s\"", SHOW_VALUE_MAX, name);
		return -ENOENT;
	}
	return set_value(cfg, p, value, err, errlen);
}

int pf_config_format(const pf_config_t *cfg, const pf_config_param_t *p, char *out, size_t n)
{
	const void *src = cfield(cfg, p);
	int w = 0;

	if (n == 0)
		return -ENOSPC;
	switch (p->type) {
	case PF_CFG_INT:
		w = snprintf(out, n, "%d", *(const int *)src);
		break;
	case PF_CFG_UINT:
		w = snprintf(out, n, "%" PRIu32, *(const uint32_t *)src);
		break;
	case PF_CFG_BOOL:
		w = snprintf(out, n, "%d", *(const bool *)src ? 1 : 0);
		break;
	case PF_CFG_TIME:
		/* PgBouncer's cf_get_time_usec: seconds printed with %g. */
		w = snprintf(out, n, "%g", (double)*(const pf_usec_t *)src / PF_USEC_PER_SEC);
		break;
	case PF_CFG_ENUM: {
		int v = *(const int *)src;
		w = snprintf(out, n, "%s", v >= 0 ? p->values[v] : "");
		break;
	}
	case PF_CFG_MODE:
		w = snprintf(out, n, "0%o", (unsigned)*(const int *)src);
		break;
	case PF_CFG_STRING:
	case PF_CFG_LIST: {
		const char *s = *(char *const *)src;
		if (!s) {
			out[0] = '\0';
			return -ENOENT;
		}
		w = snprintf(out, n, "%s", s);
		break;
	}
	}
	if (w < 0 || (size_t)w >= n)
		return -ENOSPC;
	return 0;
}

/* True when p has the same value in a and b. */
static bool same_value(const pf_config_t *a, const pf_config_t *b, const pf_config_param_t *p)
{
	const void *x = cfield(a, p), *y = cfield(b, p);

	switch (p->type) {
	case PF_CFG_STRING:
	case PF_CFG_LIST: {
		const char *s = *(char *const *)x, *t = *(char *const *)y;
		if (!s || !t)
			return s == t;
		return strcmp(s, t) == 0;
	}
	case PF_CFG_BOOL:
		return *(const bool *)x == *(const bool *)y;
	case PF_CFG_TIME:
		return *(const pf_usec_t *)x == *(const pf_usec_t *)y;
	case PF_CFG_UINT:
		return *(const uint32_t *)x == *(const uint32_t *)y;
	case PF_CFG_INT:
	case PF_CFG_ENUM:
	case PF_CFG_MODE:
		return *(const int *)x == *(const int *)y;
	}
	return false;
}

bool pf_config_is_reload_safe(const pf_config_t *old, const pf_config_t *new_cfg,
                              const char **param)
{
	for (size_t i = 0; i < PF_ARRAY_SIZE(params); i++) {
		if (params[i].reloadable)
			continue;
		if (!same_value(old, new_cfg, &params[i])) {
			if (param)
				*param = params[i].name;
			return false;
		}
	}
	return true;
}

/* True when p's value in cfg differs from its default. */
static bool is_non_default(const pf_config_t *cfg, const pf_config_param_t *p)
{
	pf_config_t def;
	bool differs;

	memset(&def, 0, sizeof(def));
	if (p->def && set_value(&def, p, p->def, NULL, 0) < 0)
		return true;
	differs = !same_value(cfg, &def, p);
	if (is_string_type(p->type))
		free_str(*(char **)field(&def, p));
	return differs;
}

/*
 * Lists.
 */

int pf_config_list_next(const char **cursor, char *buf, size_t n)
{
	const char *p = *cursor;

	if (!p)
		return 0;
	for (;;) {
		const char *start, *end;
		size_t len;

		while (*p == ',' || is_blank(*p) || *p == '\n')
			p++;
		if (!*p) {
			*cursor = p;
			return 0;
		}
		start = p;
		while (*p && *p != ',')
			p++;
		end = p;
		while (end > start && (is_blank(end[-1]) || end[-1] == '\n'))
			end--;
		*cursor = p;
		len = (size_t)(end - start);
		if (len >= n)
			return -ENOSPC;
		memcpy(buf, start, len);
		buf[len] = '\0';
		return (int)len;
	}
}

bool pf_config_list_has(const char *list, const char *item)
{
	const char *cur = list;
	char buf[256];
	int r;

	while ((r = pf_config_list_next(&cur, buf, sizeof(buf))) != 0) {
		if (r > 0 && strcmp(buf, item) == 0)
			return true;
	}
	return false;
}

/*
 * Snapshot lifetime.
 */

static void free_db(pf_config_db_t *db)
{
	free_str(db->name);
	free_str(db->host);
	free_str(db->dbname);
	free_str(db->user);
	free_str(db->password);
	free_str(db->auth_user);
	free_str(db->auth_query);
	free_str(db->auth_dbname);
	free_str(db->connect_query);
	free_str(db->client_encoding);
	free_str(db->datestyle);
	free_str(db->timezone);
	free_str(db->application_name);
	memset(db, 0, sizeof(*db));
}

static void free_user(pf_config_user_t *u)
{
	free_str(u->name);
	memset(u, 0, sizeof(*u));
}

static void free_peer(pf_config_peer_t *p)
{
	free_str(p->host);
	memset(p, 0, sizeof(*p));
}

/* Snapshots allocated and not yet freed (pf_config_live_count). */
static atomic_size_t live_snapshots;

/* A zeroed snapshot with one reference, or NULL. */
static pf_config_t *snapshot_alloc(void)
{
	pf_config_t *cfg = calloc(1, sizeof(*cfg));

	if (!cfg)
		return NULL;
	atomic_init(&cfg->refs, 1);
	atomic_fetch_add_explicit(&live_snapshots, 1, memory_order_relaxed);
	return cfg;
}

/* Frees a snapshot and everything it owns, whatever its count (the count reached 0). */
static void snapshot_destroy(pf_config_t *cfg)
{
	for (size_t i = 0; i < PF_ARRAY_SIZE(params); i++) {
		if (is_string_type(params[i].type))
			free_str(*(char **)field(cfg, &params[i]));
	}
	for (size_t i = 0; i < cfg->n_dbs; i++)
		free_db(&cfg->dbs[i]);
	free(cfg->dbs);
	if (cfg->fallback_db) {
		free_db(cfg->fallback_db);
		free(cfg->fallback_db);
	}
	for (size_t i = 0; i < cfg->n_users; i++)
		free_user(&cfg->users[i]);
	free(cfg->users);
	for (size_t i = 0; i < cfg->n_peers; i++)
		free_peer(&cfg->peers[i]);
	free(cfg->peers);
	free(cfg);
	atomic_fetch_sub_explicit(&live_snapshots, 1, memory_order_relaxed);
}

const pf_config_t *pf_config_ref(const pf_config_t *cfg)
{
	/* The count is not part of the snapshot's value: changing it through const is intended. */
	pf_config_t *mut = (pf_config_t *)cfg;

	if (mut) {
		unsigned prev = atomic_fetch_add_explicit(&mut->refs, 1, memory_order_relaxed);

		assert(prev > 0); /* a reference on a freed snapshot */
		(void)prev;
	}
	return cfg;
}

void pf_config_unref(const pf_config_t *cfg)
{
	pf_config_t *mut = (pf_config_t *)cfg;
	unsigned prev;

	if (!mut)
		return;
	/*
	 * Release: this holder's reads of the snapshot happen before the free; the acquire fence
	 * makes every other holder's reads happen before it too (the usual refcount pairing).
	 */
	prev = atomic_fetch_sub_explicit(&mut->refs, 1, memory_order_release);
	assert(prev > 0); /* more unrefs than refs */
	if (prev != 1)
		return;
	atomic_thread_fence(memory_order_acquire);
	snapshot_destroy(mut);
}

void pf_config_free(pf_config_t *cfg)
{
	assert(!cfg || atomic_load_explicit(&cfg->refs, memory_order_relaxed) == 1);
	pf_config_unref(cfg);
}

size_t pf_config_live_count(void)
{
	return atomic_load_explicit(&live_snapshots, memory_order_relaxed);
}

pf_config_t *pf_config_new_defaults(void)
{
	pf_config_t *cfg = snapshot_alloc();

	if (!cfg)
		return NULL;
	for (size_t i = 0; i < PF_ARRAY_SIZE(params); i++) {
		if (!params[i].def)
			continue;
		if (set_value(cfg, &params[i], params[i].def, NULL, 0) < 0) {
			/* Only ENOMEM can get here: every default parses (a unit test checks). */
			pf_config_free(cfg);
			return NULL;
		}
	}
	return cfg;
}

/*
 * Every field of src into dst except the reference count (a struct assignment would copy it,
 * non-atomically): the owned pointers are detached by the caller.
 */
static void copy_plain_fields(pf_config_t *dst, const pf_config_t *src)
{
	memcpy(dst, src, offsetof(pf_config_t, refs));
}

static int copy_db(pf_config_db_t *dst, const pf_config_db_t *src)
{
	*dst = *src;
	if (dup_opt(&dst->name, src->name) || dup_opt(&dst->host, src->host) ||
	    dup_opt(&dst->dbname, src->dbname) || dup_opt(&dst->user, src->user) ||
	    dup_opt(&dst->password, src->password) || dup_opt(&dst->auth_user, src->auth_user) ||
	    dup_opt(&dst->auth_query, src->auth_query) ||
	    dup_opt(&dst->auth_dbname, src->auth_dbname) ||
	    dup_opt(&dst->connect_query, src->connect_query) ||
	    dup_opt(&dst->client_encoding, src->client_encoding) ||
	    dup_opt(&dst->datestyle, src->datestyle) || dup_opt(&dst->timezone, src->timezone) ||
	    dup_opt(&dst->application_name, src->application_name))
		return -ENOMEM;
	return 0;
}

int pf_config_copy(const pf_config_t *src, pf_config_t **out)
{
	pf_config_t *cfg = snapshot_alloc();

	if (!cfg)
		return -ENOMEM;
	copy_plain_fields(cfg, src);
	/* Detach everything owned, so a failure half-way frees only what was copied. */
	for (size_t i = 0; i < PF_ARRAY_SIZE(params); i++) {
		if (is_string_type(params[i].type))
			*(char **)field(cfg, &params[i]) = NULL;
	}
	cfg->dbs = NULL;
	cfg->n_dbs = 0;
	cfg->fallback_db = NULL;
	cfg->users = NULL;
	cfg->n_users = 0;
	cfg->peers = NULL;
	cfg->n_peers = 0;

	for (size_t i = 0; i < PF_ARRAY_SIZE(params); i++) {
		if (!is_string_type(params[i].type))
			continue;
		if (dup_opt((char **)field(cfg, &params[i]),
		            *(char *const *)cfield(src, &params[i])))
			goto nomem;
	}
	if (src->n_dbs) {
		if (!(cfg->dbs = calloc(src->n_dbs, sizeof(*cfg->dbs))))
			goto nomem;
		for (; cfg->n_dbs < src->n_dbs; cfg->n_dbs++) {
			if (copy_db(&cfg->dbs[cfg->n_dbs], &src->dbs[cfg->n_dbs])) {
				cfg->n_dbs++;
				goto nomem;
			}
		}
	}
	if (src->fallback_db) {
		if (!(cfg->fallback_db = calloc(1, sizeof(*cfg->fallback_db))))
			goto nomem;
		if (copy_db(cfg->fallback_db, src->fallback_db))
			goto nomem;
	}
	if (src->n_users) {
		if (!(cfg->users = calloc(src->n_users, sizeof(*cfg->users))))
			goto nomem;
		for (; cfg->n_users < src->n_users; cfg->n_users++) {
			cfg->users[cfg->n_users] = src->users[cfg->n_users];
			if (dup_opt(&cfg->users[cfg->n_users].name,
			            src->users[cfg->n_users].name)) {
				cfg->n_users++;
				goto nomem;
			}
		}
	}
	if (src->n_peers) {
		if (!(cfg->peers = calloc(src->n_peers, sizeof(*cfg->peers))))
			goto nomem;
		for (; cfg->n_peers < src->n_peers; cfg->n_peers++) {
			cfg->peers[cfg->n_peers] = src->peers[cfg->n_peers];
			if (dup_opt(&cfg->peers[cfg->n_peers].host,
			            src->peers[cfg->n_peers].host)) {
				cfg->n_peers++;
				goto nomem;
			}
		}
	}
	*out = cfg;
	return 0;
nomem:
	pf_config_free(cfg);
	return -ENOMEM;
}

/*
 * Lookups.
 */

static int db_name_cmp(const void *key, const void *elem)
{
	return strcmp(key, ((const pf_config_db_t *)elem)->name);
}

static int user_name_cmp(const void *key, const void *elem)
{
	return strcmp(key, ((const pf_config_user_t *)elem)->name);
}

const pf_config_db_t *pf_config_find_db(const pf_config_t *cfg, const char *name)
{
	const pf_config_db_t *db = NULL;

	if (cfg->n_dbs)
		db = bsearch(name, cfg->dbs, cfg->n_dbs, sizeof(*cfg->dbs), db_name_cmp);
	return db ? db : cfg->fallback_db;
}

const pf_config_user_t *pf_config_find_user(const pf_config_t *cfg, const char *name)
{
	if (!cfg->n_users)
		return NULL;
	return bsearch(name, cfg->users, cfg->n_users, sizeof(*cfg->users), user_name_cmp);
}

/*
 * The loader.
 */

typedef enum {
	SECT_NONE,
	SECT_MAIN,
	SECT_DATABASES,
	SECT_USERS,
	SECT_PEERS,
} section_t;

typedef struct {
	pf_config_t *cfg;
	pf_config_diag_fn warn;
	void *warn_arg;
	char *err;
	size_t errlen;
	section_t section;
	bool got_main;
	/* Files being read, outermost first, for cycle detection. */
	struct {
		dev_t dev;
		ino_t ino;
	} open_files[MAX_INCLUDE_DEPTH + 1];
	int n_open;
	int level; /* %include nesting of the text being parsed; 0 = top level */
	size_t cap_dbs, cap_users, cap_peers;
} loader_t;

/* Where in which file, for messages. */
typedef struct {
	const char *file;
	int line;
} pos_t;

PF_PRINTF(3, 4) static void load_err(loader_t *ld, pos_t pos, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (pos.line > 0)
		set_err(ld->err, ld->errlen, "%s:%d: %s", pos.file, pos.line, msg);
	else
		set_err(ld->err, ld->errlen, "%s: %s", pos.file, msg);
}

PF_PRINTF(3, 4) static void load_warn(loader_t *ld, pos_t pos, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	if (!ld->warn)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	ld->warn(ld->warn_arg, pos.file, pos.line, msg);
}

static int grow(void **arr, size_t *cap, size_t n, size_t elsize)
{
	void *p;
	size_t ncap;

	if (n < *cap)
		return 0;
	ncap = *cap ? *cap * 2 : 16;
	p = realloc(*arr, ncap * elsize);
	if (!p)
		return -ENOMEM;
	*arr = p;
	*cap = ncap;
	return 0;
}

/*
 * Connection strings: PgBouncer's cstr_get_pair grammar. "key=value" pairs separated by
 * blanks; a value is either a run of non-blank characters or single-quoted with '' standing
 * for one quote. Empty values are refused.
 */
typedef struct {
	const char *p;
	char *key;
	char *val;
} cstr_t;

/* Returns 1 with key/val set (caller frees), 0 at the end, -EINVAL or -ENOMEM. */
static int cstr_next(cstr_t *cs)
{
	const char *p = cs->p, *k, *v;
	size_t klen;

	cs->key = cs->val = NULL;
	while (isspace((unsigned char)*p))
		p++;
	if (!*p)
		return 0;
	k = p;
	while (*p && *p != '=' && !isspace((unsigned char)*p))
		p++;
	klen = (size_t)(p - k);
	while (isspace((unsigned char)*p))
		p++;
	if (*p != '=' || klen == 0)
		return -EINVAL;
	p++;
	while (isspace((unsigned char)*p))
		p++;
	if (*p == '\'') {
		char *d;

		v = ++p;
		if (!(cs->val = malloc(strlen(v) + 1)))
			return -ENOMEM;
		d = cs->val;
		for (;;) {
			if (!*p) {
				*d = '\0';
				free_str(cs->val); /* may be a password */
				cs->val = NULL;
				return -EINVAL;
			}
			if (*p == '\'') {
				if (p[1] != '\'')
					break;
				p++;
			}
			*d++ = *p++;
		}
		*d = '\0';
		p++; /* closing quote */
		if (*p && !isspace((unsigned char)*p)) {
			free_str(cs->val);
			cs->val = NULL;
			return -EINVAL;
		}
	} else {
		v = p;
		while (*p && !isspace((unsigned char)*p))
			p++;
		if (!(cs->val = xstrndup(v, (size_t)(p - v))))
			return -ENOMEM;
	}
	if (!cs->val[0] || !(cs->key = xstrndup(k, klen))) {
		int rc = cs->val[0] ? -ENOMEM : -EINVAL;
		free_str(cs->val);
		cs->val = NULL;
		return rc;
	}
	cs->p = p;
	return 1;
}

/* Kinds of [databases]/[users]/[peers] keys. */
typedef enum {
	K_STR,
	K_INT,  /* >= 0 */
	K_PORT, /* 1..65535 */
	K_TIME, /* seconds; "-1" = not set */
	K_POOL_MODE,
	K_LOAD_BALANCE,
} key_kind_t;

typedef struct {
	const char *name;
	key_kind_t kind;
	size_t offset;
	bool alias; /* an old name, not listed by pf_config_section_key() */
	/* Parsed for compatibility but not acted on yet: setting it logs a warning (a drop-in
	 * must never accept a setting and silently do nothing). */
	bool ignored;
} entry_key_t;

#define DBK(n, k)                                                                                  \
	{                                                                                          \
#n, k, offsetof(pf_config_db_t, n), false, false                                   \
	}
/* A key that is accepted but not implemented yet (warned about when set). */
#define DBK_IGNORED(n, k)                                                                          \
	{                                                                                          \
#n, k, offsetof(pf_config_db_t, n), false, true                                    \
	}
#define USK(n, k)                                                                                  \
	{                                                                                          \
#n, k, offsetof(pf_config_user_t, n), false, false                                 \
	}
#define USK_IGNORED(n, k)                                                                          \
	{                                                                                          \
#n, k, offsetof(pf_config_user_t, n), false, true                                  \
	}
/* [peers]: where cancel requests for another peer_id go (client/peer.c). */
#define PRK(n, k)                                                                                  \
	{                                                                                          \
#n, k, offsetof(pf_config_peer_t, n), false, false                                 \
	}

/* [databases] keys (PgBouncer's parse_database). */
static const entry_key_t db_keys[] = {
        DBK(dbname, K_STR),
        DBK(host, K_STR),
        DBK(port, K_PORT),
        DBK(user, K_STR),
        DBK(password, K_STR),
        DBK(auth_user, K_STR),
        DBK(auth_query, K_STR),
        DBK(auth_dbname, K_STR),
        DBK(pool_size, K_INT),
        DBK(min_pool_size, K_INT),
        DBK(reserve_pool_size, K_INT),
        {"reserve_pool", K_INT, offsetof(pf_config_db_t, reserve_pool_size), true, false},
        DBK(connect_query, K_STR),
        DBK(pool_mode, K_POOL_MODE),
        DBK(query_wait_timeout, K_TIME),
        DBK(load_balance_hosts, K_LOAD_BALANCE),
        DBK(max_db_connections, K_INT),
        DBK(max_db_client_connections, K_INT),
        DBK(server_lifetime, K_TIME),
        DBK(client_encoding, K_STR),
        DBK(datestyle, K_STR),
        DBK(timezone, K_STR),
        DBK(application_name, K_STR),
};

/* [users] keys (PgBouncer's parse_user). */
static const entry_key_t user_keys[] = {
        USK(pool_size, K_INT),
        USK(reserve_pool_size, K_INT),
        USK(pool_mode, K_POOL_MODE),
        USK(max_user_connections, K_INT),
        USK(query_timeout, K_TIME),
        USK(query_wait_timeout, K_TIME),
        USK(idle_transaction_timeout, K_TIME),
        USK(transaction_timeout, K_TIME),
        USK(client_idle_timeout, K_TIME),
        USK(max_user_client_connections, K_INT),
};

/* [peers] keys (PgBouncer's parse_peer). */
static const entry_key_t peer_keys[] = {
        PRK(host, K_STR),
        PRK(port, K_PORT),
        PRK(pool_size, K_INT),
};

const char *pf_config_section_key(pf_config_section_t section, size_t i)
{
	const entry_key_t *keys;
	size_t n;

	switch (section) {
	case PF_CONFIG_SECT_DATABASES:
		keys = db_keys;
		n = PF_ARRAY_SIZE(db_keys);
		break;
	case PF_CONFIG_SECT_USERS:
		keys = user_keys;
		n = PF_ARRAY_SIZE(user_keys);
		break;
	case PF_CONFIG_SECT_PEERS:
		keys = peer_keys;
		n = PF_ARRAY_SIZE(peer_keys);
		break;
	default:
		return NULL;
	}
	for (size_t j = 0; j < n; j++) {
		if (keys[j].alias)
			continue;
		if (i-- == 0)
			return keys[j].name;
	}
	return NULL;
}

/*
 * Applies one key=value of an entry. what/name describe the entry in messages
 * ('database "foo"'). Secrets: the password value is never echoed.
 */
static int apply_key(loader_t *ld, pos_t pos, const char *what, const char *name, void *entry,
                     const entry_key_t *keys, size_t nkeys, const char *key, char *val)
{
	const entry_key_t *k = NULL;
	char accepted[128];
	void *dst;
	int64_t i64;
	pf_usec_t t;
	int e;

	for (size_t i = 0; i < nkeys; i++) {
		if (strcmp(keys[i].name, key) == 0) {
			k = &keys[i];
			break;
		}
	}
	if (!k) {
		load_err(ld, pos, "%s \"%s\": unknown key \"%.*s\"", what, name, SHOW_VALUE_MAX,
		         key);
		return -EINVAL;
	}
	if (k->ignored)
		load_warn(ld, pos,
		          "%s \"%s\": key \"%s\" is not implemented by pgfunnel yet; its value is "
		          "ignored",
		          what, name, k->name);
	dst = (char *)entry + k->offset;
	switch (k->kind) {
	case K_STR:
		free_str(*(char **)dst);
		*(char **)dst = val;
		return 1; /* val taken */
	case K_INT:
		if (!parse_int64(val, 0, INT_MAX, &i64))
			goto bad_int;
		*(int *)dst = (int)i64;
		return 0;
	case K_PORT:
		if (!parse_int64(val, 1, 65535, &i64))
			goto bad_port;
		*(int *)dst = (int)i64;
		return 0;
	case K_TIME:
		if (strcmp(val, "-1") == 0) {
			*(pf_usec_t *)dst = -1;
			return 0;
		}
		if (!parse_time(val, &t)) {
			load_err(ld, pos,
			         "%s \"%s\": key \"%s\": invalid value \"%.*s\" (expected seconds, "
			         "e.g. 1.5)",
			         what, name, key, SHOW_VALUE_MAX, val);
			return -EINVAL;
		}
		*(pf_usec_t *)dst = t;
		return 0;
	case K_POOL_MODE:
		if (!parse_enum(val, pool_mode_values, &e)) {
			join_values(pool_mode_values, accepted, sizeof(accepted));
			goto bad_enum;
		}
		*(int *)dst = e;
		return 0;
	case K_LOAD_BALANCE:
		if (!parse_enum(val, load_balance_values, &e)) {
			join_values(load_balance_values, accepted, sizeof(accepted));
			goto bad_enum;
		}
		*(int *)dst = e;
		return 0;
	}
	return -EINVAL;
bad_int:
	load_err(ld, pos,
	         "%s \"%s\": key \"%s\": invalid value \"%.*s\" (expected an integer from 0 to %d)",
	         what, name, key, SHOW_VALUE_MAX, val, INT_MAX);
	return -EINVAL;
bad_port:
	load_err(ld, pos,
	         "%s \"%s\": key \"%s\": invalid value \"%.*s\" (expected a port from 1 to 65535)",
	         what, name, key, SHOW_VALUE_MAX, val);
	return -EINVAL;
bad_enum:
	load_err(ld, pos, "%s \"%s\": key \"%s\": invalid value \"%.*s\" (accepted: %s)", what,
	         name, key, SHOW_VALUE_MAX, val, accepted);
	return -EINVAL;
}

/* Parses a whole connection string into entry. */
static int parse_entry(loader_t *ld, pos_t pos, const char *what, const char *name, void *entry,
                       const entry_key_t *keys, size_t nkeys, const char *connstr)
{
	cstr_t cs = {.p = connstr};
	int rc;

	while ((rc = cstr_next(&cs)) > 0) {
		rc = apply_key(ld, pos, what, name, entry, keys, nkeys, cs.key, cs.val);
		if (rc != 1)
			free_str(cs.val);
		free(cs.key);
		if (rc < 0)
			return rc;
	}
	if (rc == -EINVAL)
		load_err(ld, pos, "%s \"%s\": syntax error in connection string", what, name);
	else if (rc == -ENOMEM)
		load_err(ld, pos, "out of memory");
	return rc;
}

static void init_db(pf_config_db_t *db)
{
	memset(db, 0, sizeof(*db));
	db->port = 5432;
	db->pool_size = db->min_pool_size = db->reserve_pool_size = -1;
	db->max_db_connections = db->max_db_client_connections = -1;
	db->pool_mode = PF_POOL_INHERIT;
	db->load_balance_hosts = -1;
	db->server_lifetime = db->query_wait_timeout = -1;
}

static int add_database(loader_t *ld, pos_t pos, const char *name, const char *connstr)
{
	pf_config_t *cfg = ld->cfg;
	pf_config_db_t db;
	int rc;

	/* PgBouncer reserves its console's name; we reserve ours too. */
	if (strcmp(name, "pgbouncer") == 0 || strcmp(name, "pgfunnel") == 0) {
		load_err(ld, pos, "database name \"%s\" is reserved for the admin console", name);
		return -EINVAL;
	}
	init_db(&db);
	if (!(db.name = strdup(name))) {
		load_err(ld, pos, "out of memory");
		return -ENOMEM;
	}
	rc = parse_entry(ld, pos, "database", name, &db, db_keys, PF_ARRAY_SIZE(db_keys), connstr);
	if (rc < 0) {
		free_db(&db);
		return rc;
	}
	if (strcmp(name, "*") == 0) {
		if (!cfg->fallback_db && !(cfg->fallback_db = calloc(1, sizeof(db)))) {
			free_db(&db);
			load_err(ld, pos, "out of memory");
			return -ENOMEM;
		}
		free_db(cfg->fallback_db); /* a later "*" replaces an earlier one */
		*cfg->fallback_db = db;
		return 0;
	}
	if (grow((void **)&cfg->dbs, &ld->cap_dbs, cfg->n_dbs, sizeof(db)) < 0) {
		free_db(&db);
		load_err(ld, pos, "out of memory");
		return -ENOMEM;
	}
	cfg->dbs[cfg->n_dbs++] = db;
	return 0;
}

static int add_user(loader_t *ld, pos_t pos, const char *name, const char *connstr)
{
	pf_config_t *cfg = ld->cfg;
	pf_config_user_t u;
	int rc;

	memset(&u, 0, sizeof(u));
	u.pool_size = u.reserve_pool_size = u.max_user_connections = -1;
	u.max_user_client_connections = -1;
	u.pool_mode = PF_POOL_INHERIT;
	u.query_timeout = u.query_wait_timeout = u.idle_transaction_timeout = -1;
	u.transaction_timeout = u.client_idle_timeout = -1;
	if (!(u.name = strdup(name))) {
		load_err(ld, pos, "out of memory");
		return -ENOMEM;
	}
	rc = parse_entry(ld, pos, "user", name, &u, user_keys, PF_ARRAY_SIZE(user_keys), connstr);
	if (rc < 0) {
		free_user(&u);
		return rc;
	}
	if (grow((void **)&cfg->users, &ld->cap_users, cfg->n_users, sizeof(u)) < 0) {
		free_user(&u);
		load_err(ld, pos, "out of memory");
		return -ENOMEM;
	}
	cfg->users[cfg->n_users++] = u;
	return 0;
}

static int add_peer(loader_t *ld, pos_t pos, const char *name, const char *connstr)
{
	pf_config_t *cfg = ld->cfg;
	pf_config_peer_t peer;
	int64_t id;
	int rc;

	/* PgBouncer's parse_peer: the key is the peer id, 1..65535. */
	if (!parse_int64(name, 1, 65535, &id)) {
		load_err(ld, pos, "peer \"%.*s\": the key must be a peer id from 1 to 65535",
		         SHOW_VALUE_MAX, name);
		return -EINVAL;
	}
	memset(&peer, 0, sizeof(peer));
	peer.peer_id = (int)id;
	peer.port = 6432;
	peer.pool_size = -1;
	rc = parse_entry(ld, pos, "peer", name, &peer, peer_keys, PF_ARRAY_SIZE(peer_keys),
	                 connstr);
	if (rc < 0) {
		free_peer(&peer);
		return rc;
	}
	if (!peer.host) {
		free_peer(&peer);
		load_err(ld, pos, "peer \"%s\": host is required", name);
		return -EINVAL;
	}
	if (grow((void **)&cfg->peers, &ld->cap_peers, cfg->n_peers, sizeof(peer)) < 0) {
		free_peer(&peer);
		load_err(ld, pos, "out of memory");
		return -ENOMEM;
	}
	cfg->peers[cfg->n_peers++] = peer;
	return 0;
}

static int set_main_param(loader_t *ld, pos_t pos, const char *key, const char *val)
{
	const pf_config_param_t *p = pf_config_find_param(key);
	char msg[400];
	int rc;

	/* PgBouncer refuses an unknown parameter ("unknown parameter: pgbouncer/x"). */
	if (!p) {
		load_err(ld, pos, "unknown parameter \"%.*s\"", SHOW_VALUE_MAX, key);
		return -EINVAL;
	}
	rc = set_value(ld->cfg, p, val, msg, sizeof(msg));
	if (rc < 0) {
		load_err(ld, pos, "%s", msg);
		return rc;
	}
	if (!p->implemented && is_non_default(ld->cfg, p))
		load_warn(
		        ld, pos,
		        "parameter \"%s\" is not implemented by pgfunnel yet; its value is ignored",
		        p->name);
	return 0;
}

static int parse_text(loader_t *ld, const char *file, const char *text);

/* Reads a whole file into a NUL-terminated buffer the caller frees. */
#define CONFIG_FILE_MAX (64u * 1024 * 1024)

static int read_file(const char *path, char **out, struct stat *st)
{
	char *buf = NULL;
	size_t len = 0, cap = 0;
	int fd, rc = 0;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, st) < 0) {
		rc = -errno;
		goto out;
	}
	if (S_ISDIR(st->st_mode)) {
		rc = -EISDIR;
		goto out;
	}
	for (;;) {
		ssize_t n;

		if (cap - len < 4096) {
			/* Not realloc: the old block may hold passwords and must be wiped. */
			char *nb = malloc(cap + 65536);
			if (!nb) {
				rc = -ENOMEM;
				goto out;
			}
			if (buf) {
				memcpy(nb, buf, len);
				OPENSSL_cleanse(buf, cap);
				free(buf);
			}
			buf = nb;
			cap += 65536;
		}
		n = read(fd, buf + len, cap - len - 1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			rc = -errno;
			goto out;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		/* A config file is small; this stops "%include /dev/zero" from eating memory. */
		if (len > CONFIG_FILE_MAX) {
			rc = -EFBIG;
			goto out;
		}
	}
	buf[len] = '\0';
	*out = buf;
	buf = NULL;
out:
	if (buf) {
		OPENSSL_cleanse(buf, cap);
		free(buf);
	}
	close(fd);
	return rc;
}

static int include_file(loader_t *ld, pos_t pos, const char *path)
{
	struct stat st;
	char *text = NULL;
	int rc;

	/* PgBouncer's MAX_INCLUDE: ten nested levels below the top file. */
	if (ld->level >= MAX_INCLUDE_DEPTH) {
		load_err(ld, pos, "%%include \"%s\": nested too deep (limit %d)", path,
		         MAX_INCLUDE_DEPTH);
		return -ELOOP;
	}
	rc = read_file(path, &text, &st);
	if (rc < 0) {
		load_err(ld, pos, "%%include \"%s\": cannot open: %s", path, strerror(-rc));
		return rc;
	}
	for (int i = 0; i < ld->n_open; i++) {
		if (ld->open_files[i].dev == st.st_dev && ld->open_files[i].ino == st.st_ino) {
			free_str(text);
			load_err(ld, pos, "%%include \"%s\": include cycle", path);
			return -ELOOP;
		}
	}
	ld->open_files[ld->n_open].dev = st.st_dev;
	ld->open_files[ld->n_open].ino = st.st_ino;
	ld->n_open++;
	ld->level++;
	rc = parse_text(ld, path, text);
	ld->level--;
	ld->n_open--;
	free_str(text);
	return rc;
}

static bool is_key_char(unsigned char c)
{
	/* PgBouncer: isalnum or "_.-*"; bytes >= 0x80 let UTF-8 names through. */
	return isalnum(c) || c == '_' || c == '.' || c == '-' || c == '*' || c >= 0x80;
}

/* The first byte at or after p that is not a blank (end if none). */
static const char *skip_blanks(const char *p, const char *end)
{
	while (p < end && is_blank(*p))
		p++;
	return p;
}

/* end moved back over trailing blanks, not before start. */
static const char *trim_blanks(const char *start, const char *end)
{
	while (end > start && is_blank(end[-1]))
		end--;
	return end;
}

/* "%include" followed by a blank starts an include line (PgBouncer's cfparser). */
static bool is_include_line(const char *p, const char *end)
{
	return (size_t)(end - p) > 8 && memcmp(p, "%include", 8) == 0 && is_blank(p[8]);
}

/* "%include FILE" (p at the '%'): the file name is the rest of the line, trimmed. */
static int parse_include(loader_t *ld, pos_t pos, const char *p, const char *end)
{
	const char *name = skip_blanks(p + 8, end);
	const char *name_end = trim_blanks(name, end);
	char *path;
	int rc;

	if (name_end == name) {
		load_err(ld, pos, "%%include without a file name");
		return -EINVAL;
	}
	if (!(path = xstrndup(name, (size_t)(name_end - name)))) {
		load_err(ld, pos, "out of memory");
		return -ENOMEM;
	}
	rc = include_file(ld, pos, path);
	free(path);
	return rc;
}

/*
 * The section called name (n bytes), case-insensitive: [pgbouncer] or our own [pgfunnel] for
 * the main one. Returns false for any other name.
 */
static bool find_section(const char *name, size_t n, section_t *out)
{
	static const struct {
		const char *name;
		section_t section;
	} sections[] = {
	        {"pgbouncer", SECT_MAIN}, {"pgfunnel", SECT_MAIN}, {"databases", SECT_DATABASES},
	        {"users", SECT_USERS},    {"peers", SECT_PEERS},
	};

	for (size_t i = 0; i < PF_ARRAY_SIZE(sections); i++) {
		if (strlen(sections[i].name) == n && strncasecmp(name, sections[i].name, n) == 0) {
			*out = sections[i].section;
			return true;
		}
	}
	return false;
}

/* "[name]" (p at the '['), optionally followed by blanks and a comment. */
static int parse_section_header(loader_t *ld, pos_t pos, const char *p, const char *end)
{
	const char *name = p + 1;
	const char *close = memchr(name, ']', (size_t)(end - name));
	size_t n;
	section_t section;

	if (!close) {
		load_err(ld, pos, "syntax error: missing ']'");
		return -EINVAL;
	}
	n = (size_t)(close - name);
	p = skip_blanks(close + 1, end);
	if (p < end && *p != ';' && *p != '#') {
		load_err(ld, pos, "syntax error: text after section name");
		return -EINVAL;
	}
	if (!find_section(name, n, &section)) {
		/* PgBouncer: 'invalid section "x" in configuration'. */
		load_err(ld, pos, "unknown section [%.*s]", (int)(n > 64 ? 64 : n), name);
		return -EINVAL;
	}
	ld->section = section;
	if (section == SECT_MAIN)
		ld->got_main = true;
	return 0;
}

/*
 * A quoted name at *pp (at the opening quote): 'name' as in PgBouncer's parser, or "name" with
 * "" standing for one quote. On success *key is malloc'd and *pp is past the closing quote.
 */
static int parse_quoted_key(loader_t *ld, pos_t pos, const char **pp, const char *end, char **key)
{
	const char *p = *pp;
	char q = *p++;
	char *d;

	if (!(*key = malloc((size_t)(end - p) + 1)))
		return -ENOMEM;
	d = *key;
	for (;;) {
		if (p == end) {
			load_err(ld, pos, "syntax error: unterminated quoted name");
			return -EINVAL;
		}
		if (*p == q) {
			if (q == '"' && p + 1 < end && p[1] == '"') {
				*d++ = '"';
				p += 2;
				continue;
			}
			p++;
			break;
		}
		*d++ = *p++;
	}
	*d = '\0';
	*pp = p;
	return 0;
}

/*
 * The name of a "name = value" line at *pp: quoted, or a run of key characters (possibly
 * empty). On success *key is malloc'd and *pp is past the name; on failure *key may still need
 * freeing (the caller frees it either way).
 */
static int parse_key(loader_t *ld, pos_t pos, const char **pp, const char *end, char **key)
{
	const char *start = *pp, *p = *pp;

	if (*p == '\'' || *p == '"')
		return parse_quoted_key(ld, pos, pp, end, key);
	while (p < end && is_key_char((unsigned char)*p))
		p++;
	if (!(*key = xstrndup(start, (size_t)(p - start))))
		return -ENOMEM;
	*pp = p;
	return 0;
}

/*
 * What follows the name: blanks, '=', then the value, which is the rest of the line trimmed of
 * blanks (a ';' inside it is data, as in PgBouncer). key is only checked for being empty.
 */
static int parse_value(loader_t *ld, pos_t pos, const char *p, const char *end, const char *key,
                       char **val)
{
	const char *v;

	p = skip_blanks(p, end);
	if (p == end || *p != '=' || !key[0]) {
		load_err(ld, pos, "syntax error: expected \"name = value\"");
		return -EINVAL;
	}
	v = skip_blanks(p + 1, end);
	if (!(*val = xstrndup(v, (size_t)(trim_blanks(v, end) - v))))
		return -ENOMEM;
	return 0;
}

/* Hands key = value to the current section. */
static int apply_assignment(loader_t *ld, pos_t pos, const char *key, const char *val)
{
	switch (ld->section) {
	case SECT_NONE:
		load_err(ld, pos, "\"%.*s\" is outside of any section", SHOW_VALUE_MAX, key);
		return -EINVAL;
	case SECT_MAIN:
		return set_main_param(ld, pos, key, val);
	case SECT_DATABASES:
		return add_database(ld, pos, key, val);
	case SECT_USERS:
		return add_user(ld, pos, key, val);
	case SECT_PEERS:
		return add_peer(ld, pos, key, val);
	}
	return -EINVAL;
}

/* A "name = value" line (p at the name). The value may be a secret: it is wiped after use. */
static int parse_assignment(loader_t *ld, pos_t pos, const char *p, const char *end)
{
	char *key = NULL, *val = NULL;
	int rc;

	rc = parse_key(ld, pos, &p, end, &key);
	if (rc == 0)
		rc = parse_value(ld, pos, p, end, key, &val);
	if (rc == 0)
		rc = apply_assignment(ld, pos, key, val);
	free(key);
	free_str(val);
	if (rc == -ENOMEM)
		load_err(ld, pos, "out of memory");
	return rc;
}

/*
 * Handles one line (without its newline): blank or a comment (';' or '#' first), an include,
 * a section header, or an assignment.
 */
static int parse_line(loader_t *ld, pos_t pos, const char *p, const char *end)
{
	p = skip_blanks(p, end);
	if (p == end || *p == ';' || *p == '#')
		return 0;
	if (is_include_line(p, end))
		return parse_include(ld, pos, p, end);
	if (*p == '[')
		return parse_section_header(ld, pos, p, end);
	return parse_assignment(ld, pos, p, end);
}

static int parse_text(loader_t *ld, const char *file, const char *text)
{
	const char *p = text;
	pos_t pos = {file, 1};
	int rc;

	/* A UTF-8 byte order mark at the start is not part of the first line. */
	if (strncmp(p, "\xEF\xBB\xBF", 3) == 0)
		p += 3;
	while (*p) {
		const char *eol = strchr(p, '\n');
		const char *end = eol ? eol : p + strlen(p);

		rc = parse_line(ld, pos, p, end);
		if (rc < 0)
			return rc;
		if (!eol)
			break;
		p = eol + 1;
		pos.line++;
	}
	return 0;
}

/*
 * Sorting with "last definition wins", as PgBouncer's reload overwrites an earlier entry of
 * the same name.
 */
typedef struct {
	const void *base;
	size_t elsize;
	int (*cmp)(const void *, const void *);
} sort_ctx_t;

static int idx_cmp(const void *a, const void *b, void *arg)
{
	const sort_ctx_t *c = arg;
	size_t ia = *(const size_t *)a, ib = *(const size_t *)b;
	int r = c->cmp((const char *)c->base + ia * c->elsize,
	               (const char *)c->base + ib * c->elsize);

	if (r)
		return r;
	return ia < ib ? -1 : ia > ib;
}

static int sort_unique(void *arr, size_t *n, size_t elsize, int (*cmp)(const void *, const void *),
                       void (*free_el)(void *))
{
	sort_ctx_t ctx = {arr, elsize, cmp};
	size_t *idx, out = 0;
	char *tmp;

	if (*n < 2)
		return 0;
	idx = malloc(*n * sizeof(*idx));
	tmp = malloc(*n * elsize);
	if (!idx || !tmp) {
		free(idx);
		free(tmp);
		return -ENOMEM;
	}
	for (size_t i = 0; i < *n; i++)
		idx[i] = i;
	qsort_r(idx, *n, sizeof(*idx), idx_cmp, &ctx);
	for (size_t i = 0; i < *n; i++) {
		char *el = (char *)arr + idx[i] * elsize;

		if (i + 1 < *n && cmp(el, (char *)arr + idx[i + 1] * elsize) == 0) {
			free_el(el); /* a later entry of the same name replaces it */
			continue;
		}
		memcpy(tmp + out * elsize, el, elsize);
		out++;
	}
	memcpy(arr, tmp, out * elsize);
	*n = out;
	free(idx);
	free(tmp);
	return 0;
}

static int db_cmp(const void *a, const void *b)
{
	return strcmp(((const pf_config_db_t *)a)->name, ((const pf_config_db_t *)b)->name);
}

static int user_cmp(const void *a, const void *b)
{
	return strcmp(((const pf_config_user_t *)a)->name, ((const pf_config_user_t *)b)->name);
}

static int peer_cmp(const void *a, const void *b)
{
	int x = ((const pf_config_peer_t *)a)->peer_id, y = ((const pf_config_peer_t *)b)->peer_id;

	return x < y ? -1 : x > y;
}

static void free_db_v(void *p)
{
	free_db(p);
}

static void free_user_v(void *p)
{
	free_user(p);
}

static void free_peer_v(void *p)
{
	free_peer(p);
}

/* Shared tail of both loaders: text is the top-level file's content. */
static int load_common(const char *text, const char *name, const struct stat *st, pf_config_t **out,
                       pf_config_diag_fn warn, void *arg, char *err, size_t errlen)
{
	loader_t ld;
	pos_t pos = {name, 0};
	int rc;

	memset(&ld, 0, sizeof(ld));
	ld.warn = warn;
	ld.warn_arg = arg;
	ld.err = err;
	ld.errlen = errlen;
	if (st) {
		ld.open_files[0].dev = st->st_dev;
		ld.open_files[0].ino = st->st_ino;
		ld.n_open = 1;
	}
	if (!(ld.cfg = pf_config_new_defaults())) {
		load_err(&ld, pos, "out of memory");
		return -ENOMEM;
	}
	rc = parse_text(&ld, name, text);
	if (rc == 0 && !ld.got_main) {
		/* PgBouncer: "main section missing from config file". */
		load_err(&ld, pos, "no [pgbouncer] section");
		rc = -EINVAL;
	}
	if (rc == 0 &&
	    (sort_unique(ld.cfg->dbs, &ld.cfg->n_dbs, sizeof(pf_config_db_t), db_cmp, free_db_v) ||
	     sort_unique(ld.cfg->users, &ld.cfg->n_users, sizeof(pf_config_user_t), user_cmp,
	                 free_user_v) ||
	     sort_unique(ld.cfg->peers, &ld.cfg->n_peers, sizeof(pf_config_peer_t), peer_cmp,
	                 free_peer_v))) {
		load_err(&ld, pos, "out of memory");
		rc = -ENOMEM;
	}
	if (rc < 0) {
		pf_config_free(ld.cfg);
		return rc;
	}
	*out = ld.cfg;
	return 0;
}

int pf_config_load(const char *path, pf_config_t **out, pf_config_diag_fn warn, void *arg,
                   char *err, size_t errlen)
{
	struct stat st;
	char *text = NULL;
	pf_config_t *cfg = NULL;
	int rc;

	rc = read_file(path, &text, &st);
	if (rc < 0) {
		set_err(err, errlen, "%s: cannot open: %s", path, strerror(-rc));
		return rc;
	}
	rc = load_common(text, path, &st, &cfg, warn, arg, err, errlen);
	free_str(text); /* the file may hold passwords */
	if (rc < 0)
		return rc;
	/* PgBouncer's conffile shows the file given on the command line. */
	if (!cfg->conffile && !(cfg->conffile = strdup(path))) {
		pf_config_free(cfg);
		set_err(err, errlen, "%s: out of memory", path);
		return -ENOMEM;
	}
	*out = cfg;
	return 0;
}

int pf_config_load_string(const char *text, const char *name, pf_config_t **out,
                          pf_config_diag_fn warn, void *arg, char *err, size_t errlen)
{
	return load_common(text, name, NULL, out, warn, arg, err, errlen);
}
