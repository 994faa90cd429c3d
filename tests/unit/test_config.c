/*
 * Unit tests for config: the parameter table, every value type, PgBouncer's defaults, the ini
 * grammar (comments, sections, quoting, %include), [databases]/[users]/[peers] and messages.
 */
#include "pfbuild.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <setjmp.h>
#include <cmocka.h>

#include "pgfunnel/config.h"
#include "pgfunnel/proto.h"

#define DATA_DIR PF_SOURCE_ROOT "/tests/unit/data"
#define SEC      PF_USEC_PER_SEC

typedef struct {
	int count;
	char file[256];
	int line;
	char msg[512];
} warnings_t;

static void collect_warning(void *arg, const char *file, int line, const char *msg)
{
	warnings_t *w = arg;

	w->count++;
	snprintf(w->file, sizeof(w->file), "%s", file);
	w->line = line;
	snprintf(w->msg, sizeof(w->msg), "%s", msg);
}

/* Loads text that must be valid. */
static pf_config_t *load_ok(const char *text)
{
	pf_config_t *cfg = NULL;
	char err[512] = "";
	int rc = pf_config_load_string(text, "t.ini", &cfg, NULL, NULL, err, sizeof(err));

	if (rc != 0)
		fail_msg("unexpected error %d: %s", rc, err);
	assert_non_null(cfg);
	return cfg;
}

/* Loads text that must fail with exactly message want and return code want_rc. */
static void load_fails(const char *text, int want_rc, const char *want)
{
	pf_config_t *cfg = NULL;
	char err[512] = "";
	int rc = pf_config_load_string(text, "t.ini", &cfg, NULL, NULL, err, sizeof(err));

	assert_int_equal(rc, want_rc);
	assert_null(cfg);
	assert_string_equal(err, want);
}

/* Loads "[pgbouncer]\n<line>" and returns the snapshot. */
static pf_config_t *load_param(const char *line)
{
	char text[1024];

	snprintf(text, sizeof(text), "[pgbouncer]\n%s\n", line);
	return load_ok(text);
}

/* Asserts that "[pgbouncer]\n<line>" fails with message want (line 2 of t.ini). */
static void param_fails(const char *line, const char *want)
{
	char text[1024];

	snprintf(text, sizeof(text), "[pgbouncer]\n%s\n", line);
	load_fails(text, -EINVAL, want);
}

static void assert_format(const pf_config_t *cfg, const char *name, const char *want)
{
	const pf_config_param_t *p = pf_config_find_param(name);
	char buf[512];

	assert_non_null(p);
	assert_int_equal(pf_config_format(cfg, p, buf, sizeof(buf)), 0);
	assert_string_equal(buf, want);
}

/* The parameters the lead marked as implemented; every other one must be flagged false. */
static const char *const implemented[] = {
        "dns_max_ttl",
        "dns_nxdomain_ttl",
        "dns_zone_check_period",
        "resolv_conf",
        "auth_hba_file",
        "auth_ident_file",
        "client_tls_sslmode",
        "client_tls_key_file",
        "client_tls_cert_file",
        "client_tls_ca_file",
        "client_tls_protocols",
        "client_tls_ciphers",
        "client_tls13_ciphers",
        "client_tls_ecdhcurve",
        "client_tls_dheparams",
        "server_tls_sslmode",
        "server_tls_ca_file",
        "server_tls_key_file",
        "server_tls_cert_file",
        "server_tls_protocols",
        "server_tls_ciphers",
        "server_tls13_ciphers",
        "sbuf_loopcnt",
        "suspend_timeout",
        "metrics_addr",
        "metrics_port",
        "cancel_wait_timeout",
        "tcp_socket_buffer",
        "tcp_user_timeout",
        "track_extra_parameters",
        "autodb_idle_timeout",
        "server_round_robin",
        "scram_iterations",
        "so_reuseport",
        "query_wait_timeout",
        "client_idle_timeout",
        "query_timeout",
        "idle_transaction_timeout",
        "max_db_client_connections",
        "max_user_client_connections",
        "transaction_timeout",
        "query_wait_notify",
        "server_fast_close",
        "disable_pqexec",
        "conffile",
        "listen_addr",
        "listen_port",
        "listen_backlog",
        "unix_socket_dir",
        "unix_socket_mode",
        "unix_socket_group",
        "logfile",
        "pidfile",
        "syslog",
        "syslog_ident",
        "syslog_facility",
        "verbose",
        "user",
        "auth_type",
        "auth_file",
        "auth_user",
        "auth_query",
        "auth_dbname",
        "admin_users",
        "stats_users",
        "pool_mode",
        "max_client_conn",
        "default_pool_size",
        "min_pool_size",
        "reserve_pool_size",
        "reserve_pool_timeout",
        "max_db_connections",
        "max_user_connections",
        "server_reset_query",
        "server_reset_query_always",
        "server_check_query",
        "server_check_delay",
        "server_lifetime",
        "server_idle_timeout",
        "server_connect_timeout",
        "server_login_retry",
        "client_login_timeout",
        "ignore_startup_parameters",
        "pkt_buf",
        "max_packet_size",
        "max_prepared_statements",
        "tcp_keepalive",
        "tcp_keepcnt",
        "tcp_keepidle",
        "tcp_keepintvl",
        "tcp_defer_accept",
        "application_name_add_host",
        "log_connections",
        "log_disconnections",
        "log_pooler_errors",
        "stats_period",
        "log_stats",
        "peer_id",
};

static void test_table(void **state)
{
	size_t n;
	const pf_config_param_t *t = pf_config_params(&n);
	size_t n_impl = 0;

	(void)state;
	/* PgBouncer 1.25 has 98 [pgbouncer] parameters on Unix (service_name is an alias). */
	assert_int_equal(n, 98 + 2); /* + metrics_addr, metrics_port (pgfunnel's own) */
	for (size_t i = 0; i < n; i++) {
		if (i > 0 && strcmp(t[i - 1].name, t[i].name) >= 0)
			fail_msg("table not sorted at %s", t[i].name);
		if (t[i].type == PF_CFG_ENUM && !t[i].values)
			fail_msg("enum %s has no values", t[i].name);
		assert_ptr_equal(pf_config_find_param(t[i].name), &t[i]);
		if (t[i].implemented)
			n_impl++;
	}
	assert_int_equal(n_impl, PF_ARRAY_SIZE(implemented));
	for (size_t i = 0; i < PF_ARRAY_SIZE(implemented); i++) {
		const pf_config_param_t *p = pf_config_find_param(implemented[i]);
		if (!p || !p->implemented)
			fail_msg("%s should be implemented", implemented[i]);
	}
	assert_null(pf_config_find_param("no_such_param"));
	assert_string_equal(pf_config_find_param("service_name")->name, "job_name");
	assert_string_equal(pf_config_find_param("LISTEN_PORT")->name, "listen_port");
}

static void test_defaults_are_pgbouncers(void **state)
{
	pf_config_t *cfg = pf_config_new_defaults();
	size_t n;
	const pf_config_param_t *t = pf_config_params(&n);

	(void)state;
	assert_non_null(cfg);
	assert_int_equal(cfg->listen_port, 6432);
	assert_int_equal(cfg->listen_backlog, 128);
	assert_string_equal(cfg->listen_addr, "");
	assert_string_equal(cfg->unix_socket_dir, "/tmp");
	assert_int_equal(cfg->unix_socket_mode, 0777);
	assert_int_equal(cfg->pool_mode, PF_POOL_SESSION);
	assert_int_equal(cfg->max_client_conn, 100);
	assert_int_equal(cfg->default_pool_size, 20);
	assert_int_equal(cfg->min_pool_size, 0);
	assert_int_equal(cfg->reserve_pool_size, 0);
	assert_int_equal(cfg->reserve_pool_timeout, 5 * SEC);
	assert_int_equal(cfg->max_db_connections, 0);
	assert_int_equal(cfg->max_user_connections, 0);
	assert_string_equal(cfg->server_reset_query, "DISCARD ALL");
	assert_false(cfg->server_reset_query_always);
	assert_string_equal(cfg->server_check_query, "<empty>");
	assert_int_equal(cfg->server_check_delay, 30 * SEC);
	assert_int_equal(cfg->server_lifetime, 3600 * SEC);
	assert_int_equal(cfg->server_idle_timeout, 600 * SEC);
	assert_int_equal(cfg->server_connect_timeout, 15 * SEC);
	assert_int_equal(cfg->server_login_retry, 15 * SEC);
	assert_int_equal(cfg->client_login_timeout, 60 * SEC);
	assert_int_equal(cfg->query_wait_timeout, 120 * SEC);
	assert_int_equal(cfg->query_timeout, 0);
	assert_int_equal(cfg->cancel_wait_timeout, 10 * SEC);
	assert_int_equal(cfg->suspend_timeout, 10 * SEC);
	assert_int_equal(cfg->autodb_idle_timeout, 3600 * SEC);
	assert_int_equal(cfg->dns_max_ttl, 15 * SEC);
	assert_int_equal(cfg->dns_nxdomain_ttl, 15 * SEC);
	assert_int_equal(cfg->query_wait_notify, 5 * SEC);
	assert_int_equal(cfg->auth_type, PF_AUTH_MD5);
	assert_null(cfg->auth_file);
	assert_null(cfg->auth_user);
	assert_string_equal(cfg->auth_query,
	                    "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE "
	                    "rolpassword END FROM pg_authid WHERE rolname=$1 AND rolcanlogin");
	assert_int_equal(cfg->max_prepared_statements, 200);
	assert_string_equal(cfg->track_extra_parameters, "IntervalStyle");
	assert_int_equal(cfg->pkt_buf, 4096);
	assert_int_equal(cfg->max_packet_size, 2147483647u);
	assert_int_equal(cfg->sbuf_loopcnt, 5);
	assert_true(cfg->tcp_keepalive);
	assert_int_equal(cfg->tcp_defer_accept, 1);
	assert_int_equal(cfg->stats_period, 60);
	assert_true(cfg->log_connections);
	assert_true(cfg->log_disconnections);
	assert_true(cfg->log_pooler_errors);
	assert_true(cfg->log_stats);
	assert_false(cfg->syslog);
	assert_int_equal(cfg->syslog_facility, PF_SYSLOG_DAEMON);
	assert_int_equal(cfg->server_tls_sslmode, PF_SSLMODE_PREFER);
	assert_int_equal(cfg->client_tls_sslmode, PF_SSLMODE_DISABLE);
	assert_string_equal(cfg->client_tls_protocols, "secure");
	assert_string_equal(cfg->server_tls_ciphers, "default");
	assert_string_equal(cfg->client_tls_dheparams, "auto");
	assert_int_equal(cfg->scram_iterations, 4096);
	assert_int_equal(cfg->peer_id, 0);
	assert_int_equal(cfg->verbose, 0);
	assert_null(cfg->user);
	assert_int_equal(cfg->n_dbs, 0);
	assert_null(cfg->fallback_db);

	/* Formatting every default gives back the table's default text (or "not set"). */
	for (size_t i = 0; i < n; i++) {
		char buf[512];
		int rc = pf_config_format(cfg, &t[i], buf, sizeof(buf));

		if (!t[i].def) {
			if (rc != -ENOENT && !(rc == 0 && strcmp(buf, "0") == 0))
				fail_msg("%s: expected no value, got %d \"%s\"", t[i].name, rc,
				         buf);
			continue;
		}
		assert_int_equal(rc, 0);
		if (strcmp(buf, t[i].def) != 0)
			fail_msg("%s: default \"%s\" formats as \"%s\"", t[i].name, t[i].def, buf);
	}
	assert_format(cfg, "server_lifetime", "3600");
	assert_format(cfg, "unix_socket_mode", "0777");
	assert_format(cfg, "tcp_keepalive", "1");
	assert_format(cfg, "pool_mode", "session");
	pf_config_free(cfg);
}

static void test_int_values(void **state)
{
	pf_config_t *cfg;

	(void)state;
	cfg = load_param("max_client_conn = 0x10");
	assert_int_equal(cfg->max_client_conn, 16);
	pf_config_free(cfg);
	cfg = load_param("max_client_conn=010");
	assert_int_equal(cfg->max_client_conn, 8);
	pf_config_free(cfg);
	cfg = load_param("  listen_port   =   65535   ");
	assert_int_equal(cfg->listen_port, 65535);
	assert_format(cfg, "listen_port", "65535");
	pf_config_free(cfg);
	/* max_packet_size stops at INT32_MAX: above it len + 1 would wrap (security issue). */
	cfg = load_param("max_packet_size = 0");
	assert_int_equal(cfg->max_packet_size, 0);
	pf_config_free(cfg);
	cfg = load_param("max_packet_size = 1");
	assert_int_equal(cfg->max_packet_size, 1);
	pf_config_free(cfg);
	cfg = load_param("max_packet_size = 2147483646");
	assert_int_equal(cfg->max_packet_size, 2147483646u);
	pf_config_free(cfg);
	cfg = load_param("max_packet_size = 2147483647");
	assert_int_equal(cfg->max_packet_size, 2147483647u);
	assert_int_equal(cfg->max_packet_size, PF_PROTO_MAX_MSG_LEN);
	assert_format(cfg, "max_packet_size", "2147483647");
	pf_config_free(cfg);

	param_fails("listen_port = 0", "t.ini:2: parameter \"listen_port\": invalid value \"0\" "
	                               "(expected an integer from 1 to 65535)");
	param_fails("listen_port = 65536", "t.ini:2: parameter \"listen_port\": invalid value "
	                                   "\"65536\" (expected an integer from 1 to 65535)");
	param_fails("max_client_conn = 12x",
	            "t.ini:2: parameter \"max_client_conn\": invalid value \"12x\" (expected an "
	            "integer from 0 to 2147483647)");
	param_fails("max_client_conn = 99999999999",
	            "t.ini:2: parameter \"max_client_conn\": invalid value \"99999999999\" "
	            "(expected an integer from 0 to 2147483647)");
	param_fails("max_client_conn = -5",
	            "t.ini:2: parameter \"max_client_conn\": invalid value \"-5\" (expected an "
	            "integer from 0 to 2147483647)");
	param_fails("default_pool_size =", "t.ini:2: parameter \"default_pool_size\": invalid "
	                                   "value \"\" (expected an integer from 0 to 2147483647)");
	param_fails("max_packet_size = 2147483648",
	            "t.ini:2: parameter \"max_packet_size\": invalid value \"2147483648\" "
	            "(expected an integer from 0 to 2147483647)");
	param_fails("max_packet_size = 4294967295",
	            "t.ini:2: parameter \"max_packet_size\": invalid value \"4294967295\" "
	            "(expected an integer from 0 to 2147483647)");
	param_fails("max_packet_size = 4294967296",
	            "t.ini:2: parameter \"max_packet_size\": invalid value \"4294967296\" "
	            "(expected an integer from 0 to 2147483647)");
	param_fails("max_packet_size = -1",
	            "t.ini:2: parameter \"max_packet_size\": invalid value \"-1\" "
	            "(expected an integer from 0 to 2147483647)");
}

static void test_bool_values(void **state)
{
	static const struct {
		const char *text;
		bool want;
	} cases[] = {
	        {"0", false},     {"1", true},    {"2", true},    {"yes", true},
	        {"no", false},    {"on", true},   {"off", false}, {"true", true},
	        {"false", false}, {"TRUE", true}, {"Off", false}, {"0x0", false},
	};

	(void)state;
	for (size_t i = 0; i < PF_ARRAY_SIZE(cases); i++) {
		char line[64];
		pf_config_t *cfg;

		snprintf(line, sizeof(line), "log_connections = %s", cases[i].text);
		cfg = load_param(line);
		if (cfg->log_connections != cases[i].want)
			fail_msg("\"%s\" read as %d", cases[i].text, cfg->log_connections);
		assert_format(cfg, "log_connections", cases[i].want ? "1" : "0");
		pf_config_free(cfg);
	}
	param_fails("log_connections = maybe",
	            "t.ini:2: parameter \"log_connections\": invalid value \"maybe\" (accepted: 0, "
	            "1, yes, no, on, off, true, false)");
	param_fails("tcp_keepalive = 1.0", "t.ini:2: parameter \"tcp_keepalive\": invalid value "
	                                   "\"1.0\" (accepted: 0, 1, yes, no, on, off, true, "
	                                   "false)");
}

static void test_time_values(void **state)
{
	static const struct {
		const char *text;
		pf_usec_t want;
		const char *shown;
	} cases[] = {
	        {"0", 0, "0"},
	        {"1.5", 1500000, "1.5"},
	        {"3600", 3600 * SEC, "3600"},
	        {"0.25", 250000, "0.25"},
	        {".5", 500000, "0.5"},
	        {"7.", 7 * SEC, "7"},
	        {"0.000001", 1, "1e-06"},
	        {"0.0000019", 1, "1e-06"}, /* truncated like PgBouncer's (usec_t)(USEC * v) */
	        {"5s", 5 * SEC, "5"},
	        {"100ms", 100000, "0.1"},
	        {"1.5ms", 1500, "0.0015"},
	        {"250us", 250, "0.00025"},
	        {"2min", 120 * SEC, "120"},
	        {"1h", 3600 * SEC, "3600"},
	        {"1 d", 86400 * SEC, "86400"},
	        {"10 MS", 10000, "0.01"},
	};

	(void)state;
	for (size_t i = 0; i < PF_ARRAY_SIZE(cases); i++) {
		char line[64];
		pf_config_t *cfg;

		snprintf(line, sizeof(line), "server_lifetime = %s", cases[i].text);
		cfg = load_param(line);
		if (cfg->server_lifetime != cases[i].want)
			fail_msg("\"%s\" read as %lld", cases[i].text,
			         (long long)cfg->server_lifetime);
		assert_format(cfg, "server_lifetime", cases[i].shown);
		pf_config_free(cfg);
	}
	static const char *const bad[] = {"-1", "abc", "5 sec", "", ".", "1e3", "1,5", "5s5"};
	for (size_t i = 0; i < PF_ARRAY_SIZE(bad); i++) {
		char line[64], want[256];

		snprintf(line, sizeof(line), "query_timeout = %s", bad[i]);
		snprintf(want, sizeof(want),
		         "t.ini:2: parameter \"query_timeout\": invalid value \"%s\" (expected "
		         "seconds, e.g. 1.5, optionally with a unit: us, ms, s, min, h, d)",
		         bad[i]);
		param_fails(line, want);
	}
}

static void test_enum_values(void **state)
{
	pf_config_t *cfg;

	(void)state;
	cfg = load_ok("[pgbouncer]\npool_mode = Transaction\nauth_type = scram-sha-256\n"
	              "server_tls_sslmode = allow\nclient_tls_sslmode = prefer\n"
	              "syslog_facility = local3\n");
	assert_int_equal(cfg->pool_mode, PF_POOL_TRANSACTION);
	assert_int_equal(cfg->auth_type, PF_AUTH_SCRAM_SHA_256);
	assert_int_equal(cfg->server_tls_sslmode, PF_SSLMODE_ALLOW);
	assert_int_equal(cfg->client_tls_sslmode, PF_SSLMODE_PREFER);
	assert_int_equal(cfg->syslog_facility, PF_SYSLOG_LOCAL3);
	assert_format(cfg, "pool_mode", "transaction");
	assert_format(cfg, "auth_type", "scram-sha-256");
	pf_config_free(cfg);

	param_fails("pool_mode = sometimes",
	            "t.ini:2: parameter \"pool_mode\": invalid value \"sometimes\" (accepted: "
	            "session, transaction, statement)");
	param_fails("auth_type = password",
	            "t.ini:2: parameter \"auth_type\": invalid value \"password\" (accepted: any, "
	            "trust, plain, md5, cert, hba, ldap, pam, scram-sha-256)");
	/* Every sslmode is a config value; whether the files it needs are there is checked
	 * where the TLS contexts are built (tls.c), at start-up, RELOAD and SET. */
	{
		static const char *const names[] = {"client_tls_sslmode", "server_tls_sslmode"};
		static const char *const modes[] = {"disable", "allow",     "prefer",
		                                    "require", "verify-ca", "verify-full"};

		for (size_t i = 0; i < PF_ARRAY_SIZE(names); i++) {
			for (size_t j = 0; j < PF_ARRAY_SIZE(modes); j++) {
				char line[100];

				snprintf(line, sizeof(line), "%s = %s", names[i], modes[j]);
				cfg = load_param(line);
				assert_format(cfg, names[i], modes[j]);
				pf_config_free(cfg);
			}
		}
	}
	param_fails("server_tls_sslmode = on",
	            "t.ini:2: parameter \"server_tls_sslmode\": invalid value \"on\" (accepted: "
	            "disable, allow, prefer, require, verify-ca, verify-full)");
}

static void test_mode_values(void **state)
{
	pf_config_t *cfg;

	(void)state;
	cfg = load_param("unix_socket_mode = 0700");
	assert_int_equal(cfg->unix_socket_mode, 0700);
	assert_format(cfg, "unix_socket_mode", "0700");
	pf_config_free(cfg);
	cfg = load_param("unix_socket_mode = 755");
	assert_int_equal(cfg->unix_socket_mode, 0755);
	pf_config_free(cfg);
	param_fails("unix_socket_mode = 0800",
	            "t.ini:2: parameter \"unix_socket_mode\": invalid value \"0800\" (expected an "
	            "octal file mode such as 0777)");
	param_fails("unix_socket_mode = 0777x",
	            "t.ini:2: parameter \"unix_socket_mode\": invalid value \"0777x\" (expected an "
	            "octal file mode such as 0777)");
}

static void test_strings_and_lists(void **state)
{
	pf_config_t *cfg;
	const char *cur;
	char item[64];

	(void)state;
	/* ';' and '#' later in a line are data, as in PgBouncer. */
	cfg = load_ok("[pgbouncer]\nserver_reset_query = DEALLOCATE ALL; # not a comment\n"
	              "admin_users = alice, bob ,carol,,\nlogfile =\nauth_file = /etc/x y.txt\t\n"
	              "listen_addr = *\n");
	assert_string_equal(cfg->server_reset_query, "DEALLOCATE ALL; # not a comment");
	assert_string_equal(cfg->logfile, "");
	assert_string_equal(cfg->auth_file, "/etc/x y.txt");
	assert_string_equal(cfg->listen_addr, "*");
	cur = cfg->admin_users;
	assert_int_equal(pf_config_list_next(&cur, item, sizeof(item)), 5);
	assert_string_equal(item, "alice");
	assert_int_equal(pf_config_list_next(&cur, item, sizeof(item)), 3);
	assert_string_equal(item, "bob");
	assert_int_equal(pf_config_list_next(&cur, item, sizeof(item)), 5);
	assert_string_equal(item, "carol");
	assert_int_equal(pf_config_list_next(&cur, item, sizeof(item)), 0);
	assert_true(pf_config_list_has(cfg->admin_users, "bob"));
	assert_false(pf_config_list_has(cfg->admin_users, "bo"));
	assert_false(pf_config_list_has(NULL, "bob"));
	cur = "averyveryverylongname,x";
	assert_int_equal(pf_config_list_next(&cur, item, 5), -ENOSPC);
	assert_int_equal(pf_config_list_next(&cur, item, 5), 1);
	assert_string_equal(item, "x");
	pf_config_free(cfg);
}

static void test_set_format_copy(void **state)
{
	pf_config_t *cfg = pf_config_new_defaults(), *copy = NULL;
	const pf_config_param_t *p;
	char err[256], buf[8];

	(void)state;
	assert_int_equal(pf_config_set(cfg, "pool_mode", "statement", err, sizeof(err)), 0);
	assert_int_equal(cfg->pool_mode, PF_POOL_STATEMENT);
	assert_int_equal(pf_config_set(cfg, "nope", "1", err, sizeof(err)), -ENOENT);
	assert_string_equal(err, "unknown parameter \"nope\"");
	assert_int_equal(pf_config_set(cfg, "listen_port", "x", err, sizeof(err)), -EINVAL);
	assert_string_equal(err, "parameter \"listen_port\": invalid value \"x\" (expected an "
	                         "integer from 1 to 65535)");
	assert_int_equal(cfg->listen_port, 6432); /* unchanged on error */
	assert_int_equal(pf_config_set(cfg, "service_name", "svc", err, sizeof(err)), 0);
	assert_string_equal(cfg->job_name, "svc");

	p = pf_config_find_param("auth_file");
	assert_int_equal(pf_config_format(cfg, p, buf, sizeof(buf)), -ENOENT);
	assert_string_equal(buf, "");
	p = pf_config_find_param("server_reset_query");
	assert_int_equal(pf_config_format(cfg, p, buf, sizeof(buf)), -ENOSPC);
	assert_string_equal(buf, "DISCARD");

	assert_int_equal(pf_config_set(cfg, "auth_file", "/a", err, sizeof(err)), 0);
	assert_int_equal(pf_config_copy(cfg, &copy), 0);
	assert_ptr_not_equal(copy->auth_file, cfg->auth_file);
	assert_string_equal(copy->auth_file, "/a");
	assert_int_equal(pf_config_set(copy, "auth_file", "/b", err, sizeof(err)), 0);
	assert_string_equal(cfg->auth_file, "/a");
	assert_int_equal(copy->pool_mode, PF_POOL_STATEMENT);
	pf_config_free(copy);
	pf_config_free(cfg);
	pf_config_free(NULL);
}

static void test_grammar_errors(void **state)
{
	(void)state;
	/* PgBouncer 1.18/1.25 refuse these (verified with Debian's pgbouncer). */
	load_fails("[pgbouncer]\nlisten_port = 1\nfoo_bar = 1\n", -EINVAL,
	           "t.ini:3: unknown parameter \"foo_bar\"");
	load_fails("[pgbouncer]\n[weird]\nx = 1\n", -EINVAL, "t.ini:2: unknown section [weird]");
	load_fails("listen_port = 1\n[pgbouncer]\n", -EINVAL,
	           "t.ini:1: \"listen_port\" is outside of any section");
	load_fails("[pgbouncer]\nlisten_port 6000\n", -EINVAL,
	           "t.ini:2: syntax error: expected \"name = value\"");
	load_fails("[pgbouncer]\n= 5\n", -EINVAL,
	           "t.ini:2: syntax error: expected \"name = value\"");
	load_fails("[pgbouncer\n", -EINVAL, "t.ini:1: syntax error: missing ']'");
	load_fails("[pgbouncer] x\n", -EINVAL, "t.ini:1: syntax error: text after section name");
	load_fails("[databases]\n", -EINVAL, "t.ini: no [pgbouncer] section");
	load_fails("", -EINVAL, "t.ini: no [pgbouncer] section");
	load_fails("[pgbouncer]\n%include\n", -EINVAL,
	           "t.ini:2: syntax error: expected \"name = value\"");
	load_fails("[pgbouncer]\n'unterminated = 1\n", -EINVAL,
	           "t.ini:2: syntax error: unterminated quoted name");
}

/* The pieces of a line: include, section header, quoted and bare names, the value. */
static void test_line_pieces(void **state)
{
	pf_config_t *cfg;

	(void)state;
	/* %include needs a blank and a name; without a blank it is not an include at all. */
	load_fails("[pgbouncer]\n%include \t \n", -EINVAL, "t.ini:2: %include without a file name");
	load_fails("[pgbouncer]\n  %include /nonexistent/pf-x.ini\n", -ENOENT,
	           "t.ini:2: %include \"/nonexistent/pf-x.ini\": cannot open: No such file or "
	           "directory");
	load_fails("[pgbouncer]\n%includex = 1\n", -EINVAL,
	           "t.ini:2: syntax error: expected \"name = value\"");

	/* Section names in any case; a comment may follow the header; nothing else may. */
	cfg = load_ok("[PgFunnel] # main\nlisten_port = 7001\n[DataBases]\t;dbs\n"
	              "a = dbname=b\n[USERS]\nu = pool_size=3\n[Peers]\n1 = host=h\n");
	assert_int_equal(cfg->listen_port, 7001);
	assert_int_equal(cfg->n_dbs, 1);
	assert_int_equal(cfg->n_users, 1);
	assert_int_equal(cfg->n_peers, 1);
	pf_config_free(cfg);
	load_fails("[pgbouncer]\n[]\n", -EINVAL, "t.ini:2: unknown section []");
	load_fails("[pgbouncer]\n[users]]\n", -EINVAL,
	           "t.ini:2: syntax error: text after section name");
	load_fails("[pgbouncer]\n[pgbouncer2]\n", -EINVAL, "t.ini:2: unknown section [pgbouncer2]");

	/* Names: an empty quoted name, a name cut short by a character keys cannot hold. */
	load_fails("[pgbouncer]\n'' = 1\n", -EINVAL,
	           "t.ini:2: syntax error: expected \"name = value\"");
	load_fails("[pgbouncer]\nlisten_port: 1\n", -EINVAL,
	           "t.ini:2: syntax error: expected \"name = value\"");
	load_fails("[pgbouncer]\n\"listen_port = 1\n", -EINVAL,
	           "t.ini:2: syntax error: unterminated quoted name");
	cfg = load_ok("[pgbouncer]\n'listen_port'=7002\n\"auth_file\"\t=\t/x\n[databases]\n"
	              "\xc3\xa9t\xc3\xa9 = dbname=x\n");
	assert_int_equal(cfg->listen_port, 7002);
	assert_string_equal(cfg->auth_file, "/x");
	assert_string_equal(cfg->dbs[0].name, "\xc3\xa9t\xc3\xa9");
	pf_config_free(cfg);

	/* The value: the rest of the line, trimmed; ';' and '#' inside it are data. */
	cfg = load_ok("[pgbouncer]\nserver_reset_query =  \tSELECT 1; # not a comment \t\r\n"
	              "server_check_query=\n");
	assert_string_equal(cfg->server_reset_query, "SELECT 1; # not a comment");
	assert_string_equal(cfg->server_check_query, "");
	pf_config_free(cfg);
}

static void test_comments_and_aliases(void **state)
{
	pf_config_t *cfg;

	(void)state;
	cfg = load_ok("\xEF\xBB\xBF; comment\r\n   # indented comment\r\n\r\n[pgfunnel] ; main\r\n"
	              "listen_port = 7432\r\n;listen_port = 1\r\n[PgBouncer]\r\n"
	              "service_name = x\r\n");
	assert_int_equal(cfg->listen_port, 7432);
	assert_string_equal(cfg->job_name, "x");
	pf_config_free(cfg);
}

static void test_long_lines(void **state)
{
	char text[4096];
	char query[2000];
	pf_config_t *cfg;

	(void)state;
	memset(query, 'x', sizeof(query) - 1);
	query[sizeof(query) - 1] = '\0';
	memcpy(query, "SELECT '", 8);
	snprintf(text, sizeof(text), "[pgbouncer]\nserver_reset_query = %s\n", query);
	cfg = load_ok(text);
	assert_int_equal(strlen(cfg->server_reset_query), sizeof(query) - 1);
	pf_config_free(cfg);
}

static void test_databases(void **state)
{
	pf_config_t *cfg;
	const pf_config_db_t *db;

	(void)state;
	cfg = load_ok(
	        "[databases]\n"
	        "foo = host=10.0.0.1,10.0.0.2 port=6000 dbname=bar user=u password='it''s s3cret' "
	        "connect_query='SELECT 1' pool_mode=transaction pool_size=5 reserve_pool=3 "
	        "min_pool_size=1 max_db_connections=9 max_db_client_connections=99 "
	        "server_lifetime=1.5 query_wait_timeout=-1 load_balance_hosts=disable "
	        "client_encoding=UTF8 datestyle=ISO timezone=UTC application_name=app "
	        "auth_user=au auth_dbname=adb auth_query='SELECT p FROM t WHERE u=$1'\n"
	        "sock = host=/var/run/postgresql\n"
	        "abstract = host=@pgsock reserve_pool_size=2\n"
	        "\"weird \"\"name\"\"\" = dbname=x\n"
	        "'quoted name' = dbname=y\n"
	        "plain =\n"
	        "dup = port=1\n"
	        "* = host=fallback\n"
	        "dup = port=2\n"
	        "[pgbouncer]\n");
	assert_int_equal(cfg->n_dbs, 7);
	db = pf_config_find_db(cfg, "foo");
	assert_non_null(db);
	assert_string_equal(db->name, "foo");
	assert_string_equal(db->host, "10.0.0.1,10.0.0.2");
	assert_int_equal(db->port, 6000);
	assert_string_equal(db->dbname, "bar");
	assert_string_equal(db->user, "u");
	assert_string_equal(db->password, "it's s3cret");
	assert_string_equal(db->connect_query, "SELECT 1");
	assert_int_equal(db->pool_mode, PF_POOL_TRANSACTION);
	assert_int_equal(db->pool_size, 5);
	assert_int_equal(db->reserve_pool_size, 3);
	assert_int_equal(db->min_pool_size, 1);
	assert_int_equal(db->max_db_connections, 9);
	assert_int_equal(db->max_db_client_connections, 99);
	assert_int_equal(db->server_lifetime, 1500000);
	assert_int_equal(db->query_wait_timeout, -1);
	assert_int_equal(db->load_balance_hosts, PF_LB_DISABLE);
	assert_string_equal(db->client_encoding, "UTF8");
	assert_string_equal(db->datestyle, "ISO");
	assert_string_equal(db->timezone, "UTC");
	assert_string_equal(db->application_name, "app");
	assert_string_equal(db->auth_user, "au");
	assert_string_equal(db->auth_dbname, "adb");
	assert_string_equal(db->auth_query, "SELECT p FROM t WHERE u=$1");

	assert_string_equal(pf_config_find_db(cfg, "sock")->host, "/var/run/postgresql");
	db = pf_config_find_db(cfg, "abstract");
	assert_string_equal(db->host, "@pgsock");
	assert_int_equal(db->reserve_pool_size, 2);
	assert_string_equal(pf_config_find_db(cfg, "weird \"name\"")->dbname, "x");
	assert_string_equal(pf_config_find_db(cfg, "quoted name")->dbname, "y");
	db = pf_config_find_db(cfg, "plain");
	assert_null(db->host);
	assert_null(db->dbname);
	assert_int_equal(db->port, 5432);
	assert_int_equal(db->pool_size, -1);
	assert_int_equal(db->pool_mode, PF_POOL_INHERIT);
	assert_int_equal(db->load_balance_hosts, -1);
	assert_int_equal(db->server_lifetime, -1);
	/* A later definition of the same name replaces the earlier one. */
	assert_int_equal(pf_config_find_db(cfg, "dup")->port, 2);
	/* Unknown names fall back to "*". */
	db = pf_config_find_db(cfg, "other");
	assert_ptr_equal(db, cfg->fallback_db);
	assert_string_equal(db->host, "fallback");
	assert_null(db->dbname);
	pf_config_free(cfg);

	cfg = load_ok("[pgbouncer]\n[databases]\na = host=x\n");
	assert_non_null(pf_config_find_db(cfg, "a"));
	assert_null(pf_config_find_db(cfg, "b"));
	pf_config_free(cfg);
}

static void test_database_errors(void **state)
{
	pf_config_t *cfg = NULL;
	char err[512];

	(void)state;
	load_fails("[pgbouncer]\n[databases]\nfoo = host=a bogus=1\n", -EINVAL,
	           "t.ini:3: database \"foo\": unknown key \"bogus\"");
	load_fails("[databases]\nfoo = pool_mode=sometimes\n[pgbouncer]\n", -EINVAL,
	           "t.ini:2: database \"foo\": key \"pool_mode\": invalid value \"sometimes\" "
	           "(accepted: session, transaction, statement)");
	load_fails("[databases]\nfoo = load_balance_hosts=random\n[pgbouncer]\n", -EINVAL,
	           "t.ini:2: database \"foo\": key \"load_balance_hosts\": invalid value "
	           "\"random\" (accepted: disable, round-robin)");
	load_fails("[databases]\nfoo = port=0\n[pgbouncer]\n", -EINVAL,
	           "t.ini:2: database \"foo\": key \"port\": invalid value \"0\" (expected a port "
	           "from 1 to 65535)");
	load_fails("[databases]\nfoo = pool_size=-3\n[pgbouncer]\n", -EINVAL,
	           "t.ini:2: database \"foo\": key \"pool_size\": invalid value \"-3\" (expected "
	           "an integer from 0 to 2147483647)");
	load_fails("[databases]\nfoo = server_lifetime=soon\n[pgbouncer]\n", -EINVAL,
	           "t.ini:2: database \"foo\": key \"server_lifetime\": invalid value \"soon\" "
	           "(expected seconds, e.g. 1.5)");
	load_fails("[databases]\nfoo = host=\n[pgbouncer]\n", -EINVAL,
	           "t.ini:2: database \"foo\": syntax error in connection string");
	load_fails("[databases]\nfoo = host\n[pgbouncer]\n", -EINVAL,
	           "t.ini:2: database \"foo\": syntax error in connection string");
	load_fails("[databases]\npgbouncer = host=a\n[pgbouncer]\n", -EINVAL,
	           "t.ini:2: database name \"pgbouncer\" is reserved for the admin console");
	load_fails("[databases]\npgfunnel = host=a\n[pgbouncer]\n", -EINVAL,
	           "t.ini:2: database name \"pgfunnel\" is reserved for the admin console");

	/* A broken quoted password is never echoed. */
	assert_int_equal(
	        pf_config_load_string("[databases]\nfoo = password='hunter2\n[pgbouncer]\n",
	                              "t.ini", &cfg, NULL, NULL, err, sizeof(err)),
	        -EINVAL);
	assert_string_equal(err, "t.ini:2: database \"foo\": syntax error in connection string");
	assert_null(strstr(err, "hunter2"));
	assert_int_equal(pf_config_load_string("[databases]\nfoo = password='x'y\n[pgbouncer]\n",
	                                       "t.ini", &cfg, NULL, NULL, err, sizeof(err)),
	                 -EINVAL);
	assert_null(cfg);
}

static void test_users_and_peers(void **state)
{
	pf_config_t *cfg;
	const pf_config_user_t *u;

	(void)state;
	cfg = load_ok("[users]\n"
	              "u1 = pool_mode=transaction max_user_connections=10 query_timeout=30 "
	              "pool_size=4 reserve_pool_size=1 query_wait_timeout=2.5 "
	              "idle_transaction_timeout=7 transaction_timeout=8 client_idle_timeout=9 "
	              "max_user_client_connections=11\n"
	              "u0 =\n"
	              "[peers]\n"
	              "2 = host=/tmp/pgb2\n"
	              "1 = host=10.0.0.1 port=7000 pool_size=3\n"
	              "[pgbouncer]\npeer_id = 1\n");
	assert_int_equal(cfg->n_users, 2);
	u = pf_config_find_user(cfg, "u1");
	assert_non_null(u);
	assert_int_equal(u->pool_mode, PF_POOL_TRANSACTION);
	assert_int_equal(u->max_user_connections, 10);
	assert_int_equal(u->query_timeout, 30 * SEC);
	assert_int_equal(u->pool_size, 4);
	assert_int_equal(u->reserve_pool_size, 1);
	assert_int_equal(u->query_wait_timeout, 2500000);
	assert_int_equal(u->idle_transaction_timeout, 7 * SEC);
	assert_int_equal(u->transaction_timeout, 8 * SEC);
	assert_int_equal(u->client_idle_timeout, 9 * SEC);
	assert_int_equal(u->max_user_client_connections, 11);
	u = pf_config_find_user(cfg, "u0");
	assert_int_equal(u->pool_mode, PF_POOL_INHERIT);
	assert_int_equal(u->pool_size, -1);
	assert_int_equal(u->query_timeout, -1);
	assert_null(pf_config_find_user(cfg, "u2"));

	assert_int_equal(cfg->n_peers, 2);
	assert_int_equal(cfg->peers[0].peer_id, 1);
	assert_string_equal(cfg->peers[0].host, "10.0.0.1");
	assert_int_equal(cfg->peers[0].port, 7000);
	assert_int_equal(cfg->peers[0].pool_size, 3);
	assert_int_equal(cfg->peers[1].peer_id, 2);
	assert_int_equal(cfg->peers[1].port, 6432);
	assert_int_equal(cfg->peers[1].pool_size, -1);
	pf_config_free(cfg);

	load_fails("[users]\nu = dbname=x\n[pgbouncer]\n", -EINVAL,
	           "t.ini:2: user \"u\": unknown key \"dbname\"");
	load_fails("[peers]\nx = host=a\n[pgbouncer]\n", -EINVAL,
	           "t.ini:2: peer \"x\": the key must be a peer id from 1 to 65535");
	load_fails("[peers]\n3 = port=1\n[pgbouncer]\n", -EINVAL,
	           "t.ini:2: peer \"3\": host is required");
}

static void test_include(void **state)
{
	char cwd[4096], err[512];
	pf_config_t *cfg = NULL;
	int rc;

	(void)state;
	assert_non_null(getcwd(cwd, sizeof(cwd)));
	/* PgBouncer resolves relative %include paths from the current directory. */
	assert_int_equal(chdir(DATA_DIR), 0);

	rc = pf_config_load("inc-main.ini", &cfg, NULL, NULL, err, sizeof(err));
	if (rc)
		fail_msg("%s", err);
	assert_int_equal(cfg->listen_port, 7000);
	assert_int_equal(cfg->default_pool_size, 7);
	assert_int_equal(cfg->max_client_conn, 300);
	assert_int_equal(pf_config_find_db(cfg, "included_db")->port, 6000);
	assert_string_equal(cfg->conffile, "inc-main.ini");
	pf_config_free(cfg);
	cfg = NULL;

	rc = pf_config_load("inc-missing.ini", &cfg, NULL, NULL, err, sizeof(err));
	assert_int_equal(rc, -ENOENT);
	assert_string_equal(err, "inc-missing.ini:3: %include \"does-not-exist.ini\": cannot open: "
	                         "No such file or directory");
	rc = pf_config_load("inc-cycle-a.ini", &cfg, NULL, NULL, err, sizeof(err));
	assert_int_equal(rc, -ELOOP);
	assert_string_equal(err, "inc-cycle-b.ini:2: %include \"inc-cycle-a.ini\": include cycle");
	rc = pf_config_load("inc-bad-child.ini", &cfg, NULL, NULL, err, sizeof(err));
	assert_int_equal(rc, -EINVAL);
	assert_string_equal(err, "inc-bad-grandchild.ini:2: parameter \"pool_mode\": invalid value "
	                         "\"sometimes\" (accepted: session, transaction, statement)");
	assert_null(cfg);
	assert_int_equal(chdir(cwd), 0);

	rc = pf_config_load(DATA_DIR "/no-such.ini", &cfg, NULL, NULL, err, sizeof(err));
	assert_int_equal(rc, -ENOENT);
	assert_string_equal(err, DATA_DIR "/no-such.ini: cannot open: No such file or directory");
}

static void test_include_depth(void **state)
{
	char dir[] = "/tmp/pf-config-test-XXXXXX", path[128], err[512];
	pf_config_t *cfg = NULL;
	FILE *f;
	int rc;

	(void)state;
	assert_non_null(mkdtemp(dir));
	/* f0 includes f1 ... f10 includes f11: 11 levels of nesting, one too many. */
	for (int i = 0; i <= 11; i++) {
		snprintf(path, sizeof(path), "%s/f%d.ini", dir, i);
		f = fopen(path, "w");
		assert_non_null(f);
		if (i == 0)
			fprintf(f, "[pgbouncer]\n");
		if (i < 11)
			fprintf(f, "%%include %s/f%d.ini\n", dir, i + 1);
		fclose(f);
	}
	snprintf(path, sizeof(path), "%s/f0.ini", dir);
	rc = pf_config_load(path, &cfg, NULL, NULL, err, sizeof(err));
	assert_int_equal(rc, -ELOOP);
	assert_non_null(strstr(err, "/f10.ini:1: %include \""));
	assert_non_null(strstr(err, "/f11.ini\": nested too deep (limit 10)"));
	/* Ten levels (f1 ... f11) are fine. */
	snprintf(path, sizeof(path), "%s/f1.ini", dir);
	f = fopen(path, "w");
	assert_non_null(f);
	fprintf(f, "[pgbouncer]\n%%include %s/f2.ini\n", dir);
	fclose(f);
	rc = pf_config_load(path, &cfg, NULL, NULL, err, sizeof(err));
	if (rc)
		fail_msg("%s", err);
	pf_config_free(cfg);
	for (int i = 0; i <= 11; i++) {
		snprintf(path, sizeof(path), "%s/f%d.ini", dir, i);
		unlink(path);
	}
	rmdir(dir);
}

static void test_unimplemented_warning(void **state)
{
	warnings_t w = {0};
	pf_config_t *cfg = NULL;
	char err[256];

	(void)state;
	assert_int_equal(pf_config_load_string("[pgbouncer]\nlisten_port = 7000\n"
	                                       "auth_ldap_options = x\nquery_timeout = 0\n",
	                                       "t.ini", &cfg, collect_warning, &w, err,
	                                       sizeof(err)),
	                 0);
	/* Only auth_ldap_options: listen_port is implemented, query_timeout is left at default. */
	assert_int_equal(w.count, 1);
	assert_string_equal(w.file, "t.ini");
	assert_int_equal(w.line, 3);
	assert_string_equal(w.msg,
	                    "parameter \"auth_ldap_options\" is not implemented by pgfunnel yet; "
	                    "its value is ignored");
	assert_string_equal(cfg->auth_ldap_options, "x"); /* still stored */
	pf_config_free(cfg);

	/* auth_user, auth_query and auth_dbname are implemented, globally and per database. */
	memset(&w, 0, sizeof(w));
	assert_int_equal(pf_config_load_string("[databases]\n"
	                                       "db = auth_user=au auth_query='SELECT 1' "
	                                       "auth_dbname=other\n"
	                                       "[pgbouncer]\nauth_user = au\nauth_dbname = db\n"
	                                       "auth_query = SELECT a, b FROM t WHERE u = $1\n",
	                                       "t.ini", &cfg, collect_warning, &w, err,
	                                       sizeof(err)),
	                 0);
	assert_int_equal(w.count, 0);
	pf_config_free(cfg);
}

/* PgBouncer refuses its console as the database auth_query runs in (as a parameter). */
static void test_auth_dbname_reserved(void **state)
{
	pf_config_t *cfg;
	char err[256];

	(void)state;
	param_fails("auth_dbname = pgbouncer",
	            "t.ini:2: parameter \"auth_dbname\": cannot use the reserved \"pgbouncer\" "
	            "database as an auth_dbname");
	param_fails("auth_dbname = pgfunnel",
	            "t.ini:2: parameter \"auth_dbname\": cannot use the reserved \"pgfunnel\" "
	            "database as an auth_dbname");
	cfg = load_param("auth_dbname = authdb");
	assert_string_equal(cfg->auth_dbname, "authdb");
	/* The console's SET goes through the same check. */
	assert_int_equal(pf_config_set(cfg, "auth_dbname", "pgbouncer", err, sizeof(err)), -EINVAL);
	assert_string_equal(cfg->auth_dbname, "authdb");
	assert_int_equal(pf_config_set(cfg, "auth_dbname", "PgBouncer", err, sizeof(err)), 0);
	pf_config_free(cfg);
}

static void test_reload_safety(void **state)
{
	pf_config_t *a = load_ok("[pgbouncer]\nlisten_port = 7000\nmax_client_conn = 10\n");
	pf_config_t *b = load_ok("[pgbouncer]\nlisten_port = 7000\nmax_client_conn = 20\n");
	pf_config_t *c = load_ok("[pgbouncer]\nlisten_port = 7001\nunix_socket_dir = /run\n");
	const char *param = NULL;

	(void)state;
	assert_true(pf_config_is_reload_safe(a, b, &param));
	assert_false(pf_config_is_reload_safe(a, c, &param));
	assert_string_equal(param, "listen_port");
	assert_false(pf_config_is_reload_safe(b, c, NULL));
	assert_false(pf_config_find_param("listen_port")->reloadable);
	assert_false(pf_config_find_param("unix_socket_dir")->reloadable);
	assert_false(pf_config_find_param("pidfile")->reloadable);
	assert_false(pf_config_find_param("user")->reloadable);
	assert_false(pf_config_find_param("pkt_buf")->reloadable);
	assert_true(pf_config_find_param("pool_mode")->reloadable);
	assert_true(pf_config_find_param("auth_file")->reloadable);
	pf_config_free(a);
	pf_config_free(b);
	pf_config_free(c);
}

static void test_debian_ini(void **state)
{
	warnings_t w = {0};
	pf_config_t *cfg = NULL;
	char err[512];
	int rc;

	(void)state;
	rc = pf_config_load(DATA_DIR "/debian-pgbouncer.ini", &cfg, collect_warning, &w, err,
	                    sizeof(err));
	if (rc)
		fail_msg("%s", err);
	assert_int_equal(w.count, 0);
	assert_string_equal(cfg->logfile, "/var/log/postgresql/pgbouncer.log");
	assert_string_equal(cfg->pidfile, "/var/run/postgresql/pgbouncer.pid");
	assert_string_equal(cfg->listen_addr, "localhost");
	assert_int_equal(cfg->listen_port, 6432);
	assert_string_equal(cfg->unix_socket_dir, "/var/run/postgresql");
	assert_int_equal(cfg->auth_type, PF_AUTH_MD5);
	assert_string_equal(cfg->auth_file, "/etc/pgbouncer/userlist.txt");
	assert_int_equal(cfg->n_dbs, 0);
	assert_int_equal(cfg->n_users, 0);
	pf_config_free(cfg);
}

static void test_section_keys(void **state)
{
	(void)state;
	assert_string_equal(pf_config_section_key(PF_CONFIG_SECT_DATABASES, 0), "dbname");
	assert_string_equal(pf_config_section_key(PF_CONFIG_SECT_DATABASES, 11), "connect_query");
	assert_null(pf_config_section_key(PF_CONFIG_SECT_DATABASES, 22));
	assert_string_equal(pf_config_section_key(PF_CONFIG_SECT_USERS, 9),
	                    "max_user_client_connections");
	assert_null(pf_config_section_key(PF_CONFIG_SECT_USERS, 10));
	assert_string_equal(pf_config_section_key(PF_CONFIG_SECT_PEERS, 2), "pool_size");
	assert_null(pf_config_section_key(PF_CONFIG_SECT_PEERS, 3));
}

/*
 * Reference counting: a snapshot is freed exactly once, by whichever holder lets go last.
 * pf_config_live_count() proves "freed" (and "not twice": it would underflow); under ASan a
 * use after the free or a double free aborts, and LeakSanitizer reports a missed free.
 */
static void test_refcount_sequences(void **state)
{
	size_t base = pf_config_live_count();
	pf_config_t *cfg, *copy;
	const pf_config_t *r;

	(void)state;
	assert_null(pf_config_ref(NULL));
	pf_config_unref(NULL);

	cfg = pf_config_new_defaults();
	assert_non_null(cfg);
	assert_int_equal(pf_config_live_count(), base + 1);
	r = pf_config_ref(cfg);
	assert_ptr_equal(r, cfg);
	pf_config_ref(cfg);
	pf_config_unref(cfg);
	pf_config_unref(cfg);
	assert_int_equal(pf_config_live_count(), base + 1);
	assert_int_equal(cfg->default_pool_size, 20); /* still readable: one reference left */

	/* A copy starts with one reference of its own, whatever the source's count. */
	pf_config_ref(cfg);
	assert_int_equal(pf_config_copy(cfg, &copy), 0);
	assert_int_equal(pf_config_live_count(), base + 2);
	pf_config_free(copy); /* never shared: the only reference */
	assert_int_equal(pf_config_live_count(), base + 1);
	pf_config_unref(cfg);
	assert_int_equal(pf_config_live_count(), base + 1);
	pf_config_unref(cfg);
	assert_int_equal(pf_config_live_count(), base);

	/* A loaded snapshot, and one a failed load never returned. */
	cfg = load_ok("[pgbouncer]\n[databases]\nx = host=h password=secret\n");
	assert_int_equal(pf_config_live_count(), base + 1);
	pf_config_unref(cfg);
	load_fails("[pgbouncer]\nnope = 1\n", -EINVAL, "t.ini:2: unknown parameter \"nope\"");
	assert_int_equal(pf_config_live_count(), base);
}

/*
 * What main and the worker do on reload, in both orders of letting go: main holds the current
 * snapshot, the worker its own reference; the replaced snapshot is freed by the last of them.
 */
static void test_refcount_reload_pattern(void **state)
{
	size_t base = pf_config_live_count();
	pf_config_t *main_ref = load_ok("[pgbouncer]\ndefault_pool_size = 1\n");
	const pf_config_t *worker_ref = pf_config_ref(main_ref);
	pf_config_t *fresh = load_ok("[pgbouncer]\ndefault_pool_size = 2\n");
	pf_config_t *old;
	const pf_config_t *worker_old;

	(void)state;
	assert_int_equal(pf_config_live_count(), base + 2);

	/* install_config: main takes over the loader's reference; the worker swaps first. */
	old = main_ref;
	main_ref = fresh;
	worker_old = worker_ref;
	worker_ref = pf_config_ref(fresh);
	pf_config_unref(worker_old);
	assert_int_equal(pf_config_live_count(), base + 2); /* main still holds the old one */
	pf_config_unref(old);
	assert_int_equal(pf_config_live_count(), base + 1);
	assert_int_equal(worker_ref->default_pool_size, 2);

	/* Next reload: main lets go first, a worker that has not swapped yet keeps it alive. */
	fresh = load_ok("[pgbouncer]\ndefault_pool_size = 3\n");
	old = main_ref;
	main_ref = fresh;
	pf_config_unref(old);
	assert_int_equal(pf_config_live_count(), base + 2);
	assert_int_equal(worker_ref->default_pool_size, 2); /* still valid for the worker */
	worker_old = worker_ref;
	worker_ref = pf_config_ref(fresh);
	pf_config_unref(worker_old);
	assert_int_equal(pf_config_live_count(), base + 1);

	/* Shutdown: the worker lets go, then main. */
	pf_config_unref(worker_ref);
	assert_int_equal(pf_config_live_count(), base + 1);
	pf_config_unref(main_ref);
	assert_int_equal(pf_config_live_count(), base);
}

#define REF_THREADS 8
#define REF_ROUNDS  100000

static void *ref_hammer(void *arg)
{
	const pf_config_t *cfg = arg;

	for (int i = 0; i < REF_ROUNDS; i++) {
		const pf_config_t *mine = pf_config_ref(cfg);

		if (mine->listen_port != 6432)
			abort();
		pf_config_unref(mine);
	}
	/* Each thread was handed a reference of its own: the last thread out frees. */
	pf_config_unref(cfg);
	return NULL;
}

/* Threads taking and dropping references at once: the count never loses an update. */
static void test_refcount_threads(void **state)
{
	size_t base = pf_config_live_count();
	pf_config_t *cfg = pf_config_new_defaults();
	pthread_t th[REF_THREADS];

	(void)state;
	assert_non_null(cfg);
	for (int i = 0; i < REF_THREADS; i++)
		assert_int_equal(
		        pthread_create(&th[i], NULL, ref_hammer, (void *)pf_config_ref(cfg)), 0);
	/* The creator lets go while the threads still run. */
	pf_config_unref(cfg);
	for (int i = 0; i < REF_THREADS; i++)
		assert_int_equal(pthread_join(th[i], NULL), 0);
	assert_int_equal(pf_config_live_count(), base);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_table),
	        cmocka_unit_test(test_defaults_are_pgbouncers),
	        cmocka_unit_test(test_int_values),
	        cmocka_unit_test(test_bool_values),
	        cmocka_unit_test(test_time_values),
	        cmocka_unit_test(test_enum_values),
	        cmocka_unit_test(test_mode_values),
	        cmocka_unit_test(test_strings_and_lists),
	        cmocka_unit_test(test_set_format_copy),
	        cmocka_unit_test(test_grammar_errors),
	        cmocka_unit_test(test_line_pieces),
	        cmocka_unit_test(test_comments_and_aliases),
	        cmocka_unit_test(test_long_lines),
	        cmocka_unit_test(test_databases),
	        cmocka_unit_test(test_database_errors),
	        cmocka_unit_test(test_users_and_peers),
	        cmocka_unit_test(test_include),
	        cmocka_unit_test(test_include_depth),
	        cmocka_unit_test(test_unimplemented_warning),
	        cmocka_unit_test(test_auth_dbname_reserved),
	        cmocka_unit_test(test_reload_safety),
	        cmocka_unit_test(test_debian_ini),
	        cmocka_unit_test(test_section_keys),
	        cmocka_unit_test(test_refcount_sequences),
	        cmocka_unit_test(test_refcount_reload_pattern),
	        cmocka_unit_test(test_refcount_threads),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
