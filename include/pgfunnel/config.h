/*
 * config: PgBouncer-compatible ini file parsing into an immutable snapshot.
 *
 * A snapshot (pf_config_t) is plain data: one named field per [pgbouncer] parameter, plus the
 * [databases], [users] and [peers] entries. Reload builds a new snapshot and swaps it in; nobody
 * mutates a snapshot that others can see (pf_config_set is for the loader and for a private copy
 * the admin SET command edits before publishing it).
 *
 * Snapshots are reference-counted (pf_config_ref()/pf_config_unref(), an atomic counter): each
 * holder (main's "current" pointer, every worker) keeps one reference, and a snapshot replaced by
 * a reload is freed when its last holder lets go. Nothing else may keep a pointer into a snapshot
 * beyond the call that received it: modules that need a value later copy it.
 *
 * The module does no logging: warnings go to a caller-supplied callback, errors come back as a
 * one-line message "FILE:LINE: ..." in a caller buffer. Secrets (passwords) never appear in
 * messages.
 */
#ifndef PGFUNNEL_CONFIG_H
#define PGFUNNEL_CONFIG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pgfunnel/util.h"

/* Pool modes, in the order PgBouncer's pool_mode_map lists them. */
typedef enum {
	PF_POOL_SESSION = 0,
	PF_POOL_TRANSACTION = 1,
	PF_POOL_STATEMENT = 2,
} pf_pool_mode_t;

/* "Not set here, inherit" for per-database and per-user pool_mode. */
#define PF_POOL_INHERIT (-1)

/* auth_type values. */
typedef enum {
	PF_AUTH_ANY = 0,
	PF_AUTH_TRUST,
	PF_AUTH_PLAIN,
	PF_AUTH_MD5,
	PF_AUTH_CERT,
	PF_AUTH_HBA,
	PF_AUTH_LDAP,
	PF_AUTH_PAM,
	PF_AUTH_SCRAM_SHA_256,
} pf_auth_type_t;

/* client_tls_sslmode / server_tls_sslmode values. */
typedef enum {
	PF_SSLMODE_DISABLE = 0,
	PF_SSLMODE_ALLOW,
	PF_SSLMODE_PREFER,
	PF_SSLMODE_REQUIRE,
	PF_SSLMODE_VERIFY_CA,
	PF_SSLMODE_VERIFY_FULL,
} pf_sslmode_t;

/* syslog_facility values. */
typedef enum {
	PF_SYSLOG_AUTH = 0,
	PF_SYSLOG_AUTHPRIV,
	PF_SYSLOG_DAEMON,
	PF_SYSLOG_USER,
	PF_SYSLOG_LOCAL0,
	PF_SYSLOG_LOCAL1,
	PF_SYSLOG_LOCAL2,
	PF_SYSLOG_LOCAL3,
	PF_SYSLOG_LOCAL4,
	PF_SYSLOG_LOCAL5,
	PF_SYSLOG_LOCAL6,
	PF_SYSLOG_LOCAL7,
} pf_syslog_facility_t;

/* [databases] load_balance_hosts values; -1 means not set (PgBouncer's default: round-robin). */
typedef enum {
	PF_LB_DISABLE = 0,
	PF_LB_ROUND_ROBIN = 1,
} pf_load_balance_t;

/*
 * One [databases] entry. Strings are NULL when the key was not given. Integers are -1 and times
 * are -1 when not given (the global parameter applies). dbname NULL means "same as name" (for
 * the "*" fallback: the name the client asked for). host NULL means the default unix socket
 * directory; a host may be a comma list, a path starting with '/' or an abstract socket '@name',
 * all kept as given.
 */
typedef struct {
	char *name;
	char *host;
	int port; /* 5432 unless given */
	char *dbname;
	char *user;     /* forced user */
	char *password; /* secret: never log */
	char *auth_user;
	char *auth_query;
	char *auth_dbname;
	int pool_size;
	int min_pool_size;
	int reserve_pool_size;
	int max_db_connections;
	int max_db_client_connections;
	int pool_mode;          /* pf_pool_mode_t or PF_POOL_INHERIT */
	int load_balance_hosts; /* pf_load_balance_t or -1 */
	char *connect_query;
	char *client_encoding;
	char *datestyle;
	char *timezone;
	char *application_name;
	pf_usec_t server_lifetime;    /* -1 = not set */
	pf_usec_t query_wait_timeout; /* -1 = not set */
} pf_config_db_t;

/* One [users] entry; -1 means "not set" for every number, PF_POOL_INHERIT for pool_mode. */
typedef struct {
	char *name;
	int pool_size;
	int reserve_pool_size;
	int pool_mode;
	int max_user_connections;
	int max_user_client_connections;
	pf_usec_t query_timeout;
	pf_usec_t query_wait_timeout;
	pf_usec_t idle_transaction_timeout;
	pf_usec_t transaction_timeout;
	pf_usec_t client_idle_timeout;
} pf_config_user_t;

/* One [peers] entry: "peer_id = host=... port=... pool_size=...". */
typedef struct {
	int peer_id;
	char *host;
	int port;      /* 6432 unless given */
	int pool_size; /* -1 = default_pool_size */
} pf_config_peer_t;

/*
 * The snapshot. Every [pgbouncer] parameter is a field named exactly like the parameter.
 * Strings are NULL when the parameter has no value (PgBouncer's "not set"), otherwise owned
 * by the snapshot. Times are microseconds. Lists (admin_users, listen_addr, ...) are kept as
 * the text given; walk them with pf_config_list_next().
 */
typedef struct pf_config {
	char *admin_users;
	bool application_name_add_host;
	char *auth_dbname;
	char *auth_file;
	char *auth_hba_file;
	char *auth_ident_file;
	char *auth_ldap_options;
	char *auth_query;
	int auth_type; /* pf_auth_type_t */
	char *auth_user;
	pf_usec_t autodb_idle_timeout;
	pf_usec_t cancel_wait_timeout;
	pf_usec_t client_idle_timeout;
	pf_usec_t client_login_timeout;
	char *client_tls13_ciphers;
	char *client_tls_ca_file;
	char *client_tls_cert_file;
	char *client_tls_ciphers;
	char *client_tls_dheparams;
	char *client_tls_ecdhcurve;
	char *client_tls_key_file;
	char *client_tls_protocols;
	int client_tls_sslmode; /* pf_sslmode_t */
	char *conffile;
	int default_pool_size;
	bool disable_pqexec;
	pf_usec_t dns_max_ttl;
	pf_usec_t dns_nxdomain_ttl;
	pf_usec_t dns_zone_check_period;
	pf_usec_t idle_transaction_timeout;
	char *ignore_startup_parameters;
	char *job_name;
	char *listen_addr;
	int listen_backlog;
	int listen_port;
	bool log_connections;
	bool log_disconnections;
	bool log_pooler_errors;
	bool log_stats;
	char *logfile;
	int max_client_conn;
	int max_db_client_connections;
	int max_db_connections;
	uint32_t max_packet_size;
	int max_prepared_statements;
	int max_user_client_connections;
	int max_user_connections;
	char *metrics_addr; /* pgfunnel's own: the Prometheus endpoint's address */
	int metrics_port;   /* 0 = no metrics endpoint */
	int min_pool_size;
	int peer_id;
	char *pidfile;
	int pkt_buf;
	int pool_mode; /* pf_pool_mode_t */
	pf_usec_t query_timeout;
	pf_usec_t query_wait_notify;
	pf_usec_t query_wait_timeout;
	int reserve_pool_size;
	pf_usec_t reserve_pool_timeout;
	char *resolv_conf;
	int sbuf_loopcnt;
	int scram_iterations;
	pf_usec_t server_check_delay;
	char *server_check_query; /* "<empty>" = send an empty query; "" = no check */
	pf_usec_t server_connect_timeout;
	bool server_fast_close;
	pf_usec_t server_idle_timeout;
	pf_usec_t server_lifetime;
	pf_usec_t server_login_retry;
	char *server_reset_query;
	bool server_reset_query_always;
	bool server_round_robin;
	char *server_tls13_ciphers;
	char *server_tls_ca_file;
	char *server_tls_cert_file;
	char *server_tls_ciphers;
	char *server_tls_key_file;
	char *server_tls_protocols;
	int server_tls_sslmode; /* pf_sslmode_t */
	bool so_reuseport;
	int stats_period;
	char *stats_users;
	pf_usec_t suspend_timeout;
	bool syslog;
	int syslog_facility; /* pf_syslog_facility_t */
	char *syslog_ident;
	int tcp_defer_accept;
	bool tcp_keepalive;
	int tcp_keepcnt;
	int tcp_keepidle;
	int tcp_keepintvl;
	int tcp_socket_buffer;
	int tcp_user_timeout;
	char *track_extra_parameters;
	pf_usec_t transaction_timeout;
	char *unix_socket_dir;
	char *unix_socket_group;
	int unix_socket_mode;
	char *user;
	int verbose;

	/* [databases], sorted by name (byte order); the "*" entry is kept apart. */
	pf_config_db_t *dbs;
	size_t n_dbs;
	pf_config_db_t *fallback_db;
	/* [users], sorted by name. */
	pf_config_user_t *users;
	size_t n_users;
	/* [peers], sorted by peer_id. */
	pf_config_peer_t *peers;
	size_t n_peers;

	/*
	 * Not a parameter: the references held on this snapshot. Changed only by pf_config_ref()
	 * and pf_config_unref() (also through a const pointer: the count is not part of the
	 * snapshot's value), never copied by pf_config_copy(). Must stay the last member.
	 */
	atomic_uint refs;
} pf_config_t;

/* Parameter value kinds of the table. */
typedef enum {
	PF_CFG_INT,  /* int, strtol base 0 (so 0x10 and 010 work as in PgBouncer), range-checked */
	PF_CFG_UINT, /* uint32_t */
	PF_CFG_BOOL, /* bool: an integer (0 = off) or yes/no, on/off, true/false */
	PF_CFG_STRING, /* char *, NULL = not set */
	PF_CFG_LIST,   /* char *, comma-separated list kept as text */
	PF_CFG_TIME,   /* pf_usec_t, seconds with fractions (suffixes us, ms, s, min, h, d too) */
	PF_CFG_ENUM,   /* int index into values[], case-insensitive */
	PF_CFG_MODE,   /* int, octal file mode */
} pf_config_type_t;

/* One [pgbouncer] parameter: the single table SHOW CONFIG, the loader and the docs test share. */
typedef struct {
	const char *name;
	pf_config_type_t type;
	size_t offset;    /* of the field in pf_config_t */
	bool reloadable;  /* false: a change needs a restart (SHOW CONFIG changeable=no) */
	bool implemented; /* false: accepted and stored, but pgfunnel ignores it (warned) */
	const char *def;  /* default as text, parsed like the file; NULL = not set */
	const char *const *values; /* PF_CFG_ENUM: NULL-terminated accepted values */
	int64_t min, max;          /* PF_CFG_INT / PF_CFG_UINT range */
} pf_config_param_t;

/*
 * Warning callback: file and line locate the cause (line 0 when there is no line), msg is one
 * line without a trailing newline. Called synchronously during pf_config_load*(); the strings
 * are only valid during the call.
 */
typedef void (*pf_config_diag_fn)(void *arg, const char *file, int line, const char *msg);

/*
 * Loads the ini file at path (following %include directives; relative include paths are taken
 * from the current working directory, as PgBouncer does). On success returns 0 and stores a new
 * snapshot in *out holding one reference, owned by the caller (drop it with pf_config_unref()).
 * On failure returns a negative errno (-ENOENT/-EACCES/... when a file cannot be read, -EINVAL
 * for content errors, -ENOMEM), leaves *out untouched and writes a one-line message to err (if
 * errlen > 0), e.g. 'pgfunnel.ini:12: parameter "pool_mode": invalid value "x" (accepted:
 * session, transaction, statement)'. warn (may be NULL) receives warnings, e.g. for
 * unimplemented parameters set to a non-default value.
 */
PF_MUSTCHECK int pf_config_load(const char *path, pf_config_t **out, pf_config_diag_fn warn,
                                void *arg, char *err, size_t errlen);

/*
 * Same as pf_config_load, but parses text (NUL-terminated) as if it were the file called name
 * (used in messages). %include directives in text still read files.
 */
PF_MUSTCHECK int pf_config_load_string(const char *text, const char *name, pf_config_t **out,
                                       pf_config_diag_fn warn, void *arg, char *err, size_t errlen);

/*
 * Returns a new snapshot holding every default and no databases/users/peers, with one reference
 * owned by the caller, or NULL (ENOMEM).
 */
pf_config_t *pf_config_new_defaults(void);

/*
 * Deep copy (for the admin SET command, which edits a copy before publishing it). The copy has
 * one reference, owned by the caller, whatever src's count. Returns 0 or -ENOMEM.
 */
PF_MUSTCHECK int pf_config_copy(const pf_config_t *src, pf_config_t **out);

/*
 * Takes one more reference on cfg and returns it (NULL gives NULL). Safe from any thread, as
 * long as the caller already holds a reference (or knows one is held for the whole call).
 */
const pf_config_t *pf_config_ref(const pf_config_t *cfg);

/*
 * Drops one reference; the last one frees the snapshot and everything it owns, zeroing
 * passwords first. NULL is allowed. Safe from any thread; the caller must not use cfg after.
 */
void pf_config_unref(const pf_config_t *cfg);

/*
 * For a snapshot that was never shared (a loader's result the caller discards, the admin SET's
 * copy it did not publish): drops the only reference, which frees it. Same as
 * pf_config_unref(); debug builds assert that no other reference exists. NULL is allowed.
 */
void pf_config_free(pf_config_t *cfg);

/* Snapshots allocated and not yet freed, process-wide (tests and leak checks). */
size_t pf_config_live_count(void);

/*
 * The database entry for name: the exact entry, else the "*" fallback, else NULL. The result
 * points into cfg. For the fallback, dbname NULL means "use name".
 */
const pf_config_db_t *pf_config_find_db(const pf_config_t *cfg, const char *name);

/* The [users] entry for name, or NULL. Points into cfg. */
const pf_config_user_t *pf_config_find_user(const pf_config_t *cfg, const char *name);

/* The parameter table, sorted by name; *count receives its length. Static storage. */
const pf_config_param_t *pf_config_params(size_t *count);

/* The table entry for a parameter name (case-insensitive; aliases such as service_name resolve
 * to their target), or NULL. */
const pf_config_param_t *pf_config_find_param(const char *name);

/*
 * Formats the current value of parameter p in cfg the way SHOW CONFIG prints it (times as
 * seconds with %g, bools as 0/1, enums by name, modes in octal like 0777). Returns 0, -ENOENT
 * when the parameter has no value (SHOW CONFIG shows NULL; out receives ""), or -ENOSPC when out
 * (size n) is too small (out is then truncated, still NUL-terminated).
 */
int pf_config_format(const pf_config_t *cfg, const pf_config_param_t *p, char *out, size_t n);

/*
 * Parses value for the parameter called name and stores it in cfg (the previous string, if any,
 * is freed). Returns 0, or -ENOENT for an unknown parameter, -EINVAL for an invalid value,
 * -ENOMEM; on error cfg is unchanged and err receives e.g. 'parameter "listen_port": invalid
 * value "x" (expected an integer)'.
 */
PF_MUSTCHECK int pf_config_set(pf_config_t *cfg, const char *name, const char *value, char *err,
                               size_t errlen);

/*
 * True when every parameter that needs a restart (reloadable == false) has the same value in
 * old and new_cfg. Otherwise false, and *param (if not NULL) names the first such parameter in
 * table order.
 */
bool pf_config_is_reload_safe(const pf_config_t *old, const pf_config_t *new_cfg,
                              const char **param);

/*
 * Walks a comma-separated list such as admin_users or listen_addr: copies the next item,
 * trimmed of surrounding blanks, into buf (size n) and advances *cursor. Empty items are
 * skipped. Returns the item length, 0 at the end of the list, or -ENOSPC if the item does not
 * fit (it is skipped). Start with *cursor = the list (NULL is an empty list).
 */
int pf_config_list_next(const char **cursor, char *buf, size_t n);

/* Sections whose entries are connection strings of keys. */
typedef enum {
	PF_CONFIG_SECT_DATABASES,
	PF_CONFIG_SECT_USERS,
	PF_CONFIG_SECT_PEERS,
} pf_config_section_t;

/*
 * The i-th key accepted in a [databases]/[users]/[peers] connection string (aliases such as
 * reserve_pool omitted), or NULL past the end. Static storage.
 */
const char *pf_config_section_key(pf_config_section_t section, size_t i);

/* True when the comma-separated list contains item exactly (after trimming blanks). */
bool pf_config_list_has(const char *list, const char *item);

#endif
