/*
 * main: the command line, the process (daemon, pidfile, privileges, systemd) and signals.
 *
 * Start-up order: parse the command line, load the config (exit 1 with one line on error), refuse
 * root without -u, open the log sinks, open the listeners (as root if needed), daemonize, write the
 * pidfile, drop privileges, tell systemd READY=1, run the loop. The config snapshot is replaced
 * whole on SIGHUP; a bad file keeps the old snapshot. Signals have PgBouncer 1.23+ meanings.
 *
 * Snapshots are reference-counted: process_t.cfg is main's reference to the current one, each
 * worker holds its own; a replaced snapshot is freed when the last of them lets go. Everything
 * here runs on the main thread (the main loop); the process state lives in process_t, not in
 * statics.
 */
#include "pfbuild.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/opensslv.h>
#include <openssl/crypto.h>
#include <uv.h>
#if PF_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "pgfunnel/config.h"
#include "pgfunnel/hba.h"
#include "pgfunnel/log.h"
#include "pgfunnel/tls.h"
#include "pgfunnel/vars.h"
#include "pgfunnel/worker.h"

typedef struct options {
	bool daemon;
	bool reboot;
	bool quiet;
	int verbose;
	const char *user;
	const char *config_path;
} options_t;

/*
 * Config warnings. At start-up the log sinks are not open yet (the config says where they
 * are), so warnings are kept and replayed once they are; on reload they are logged at once.
 */
#define EARLY_WARNINGS_MAX 64

typedef struct process {
	options_t opt;
	uv_loop_t *loop;
	pf_worker_t *worker;
	pf_config_t *cfg; /* the current snapshot: main's reference */
	char *pidfile;    /* written by us; removed at exit */
	uv_signal_t signals[6];
	size_t nsignals;
	char *early_warnings[EARLY_WARNINGS_MAX];
	size_t n_early_warnings;
	bool log_ready;     /* the log sinks are open: warnings are logged at once */
	int daemon_pipe_fd; /* -d: tells the waiting parent we are up; -1 otherwise */
} process_t;

static void usage(FILE *out)
{
	fprintf(out,
	        "%s is a PostgreSQL connection pooler, a drop-in replacement for PgBouncer.\n"
	        "\n"
	        "Usage:\n"
	        "  %s [OPTION]... CONFIG_FILE\n"
	        "\n"
	        "Options:\n"
	        "  -d, --daemon         run in the background (needs logfile or syslog)\n"
	        "  -R, --reboot         PgBouncer's online restart: not supported, ignored\n"
	        "  -q, --quiet          do not log to standard error\n"
	        "  -v, --verbose        increase verbosity (repeat for more)\n"
	        "  -u, --user=USERNAME  switch to USERNAME after start-up (needs root)\n"
	        "  -V, --version        print version information and exit\n"
	        "  -h, --help           print this help and exit\n"
	        "\n"
	        "Signals: SIGHUP reload, SIGTERM shut down after clients finish, SIGINT shut down\n"
	        "after servers are released, SIGQUIT shut down now, SIGUSR1 pause, SIGUSR2 "
	        "resume.\n"
	        "See pgfunnel(1) and pgfunnel(5).\n",
	        PF_PACKAGE, PF_PACKAGE);
}

static void print_version(void)
{
	printf("%s %s\n", PF_PACKAGE, PF_VERSION);
	printf("libuv %s\n", uv_version_string());
	printf("tls: %s\n", OpenSSL_version(OPENSSL_VERSION));
	printf("systemd: %s\n", PF_HAVE_SYSTEMD ? "yes" : "no");
}

/* One line on stderr, then exit 1: the contract for every start-up failure. */
PF_NORETURN static void die(const char *fmt, ...) PF_PRINTF(1, 2);
static void die(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s: ", PF_PACKAGE);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static void parse_args(int argc, char **argv, options_t *opt)
{
	static const struct option longopts[] = {
	        {"daemon", no_argument, NULL, 'd'},     {"reboot", no_argument, NULL, 'R'},
	        {"quiet", no_argument, NULL, 'q'},      {"verbose", no_argument, NULL, 'v'},
	        {"user", required_argument, NULL, 'u'}, {"version", no_argument, NULL, 'V'},
	        {"help", no_argument, NULL, 'h'},       {NULL, 0, NULL, 0},
	};
	int c;

	opterr = 0;
	while ((c = getopt_long(argc, argv, ":dRqvu:Vh", longopts, NULL)) != -1) {
		switch (c) {
		case 'd':
			opt->daemon = true;
			break;
		case 'R':
			opt->reboot = true;
			break;
		case 'q':
			opt->quiet = true;
			break;
		case 'v':
			opt->verbose++;
			break;
		case 'u':
			opt->user = optarg;
			break;
		case 'V':
			print_version();
			exit(0);
		case 'h':
			usage(stdout);
			exit(0);
		case ':':
			die("option \"%s\" needs an argument (try --help)", argv[optind - 1]);
		default:
			die("unknown option \"%s\" (try --help)", argv[optind - 1]);
		}
	}
	if (optind >= argc)
		die("no configuration file given (try --help)");
	if (optind + 1 < argc)
		die("unexpected argument \"%s\" (try --help)", argv[optind + 1]);
	opt->config_path = argv[optind];
}

/* The loader's warning callback; arg is the process_t. */
static void config_warning(void *arg, const char *file, int line, const char *msg)
{
	process_t *p = arg;
	char text[1024];

	if (line > 0)
		snprintf(text, sizeof(text), "%s:%d: %s", file, line, msg);
	else
		snprintf(text, sizeof(text), "%s: %s", file, msg);
	if (p->log_ready) {
		pf_log_warning(NULL, "%s", text);
		return;
	}
	if (p->n_early_warnings < EARLY_WARNINGS_MAX)
		p->early_warnings[p->n_early_warnings++] = strdup(text);
}

static void replay_early_warnings(process_t *p)
{
	p->log_ready = true;
	for (size_t i = 0; i < p->n_early_warnings; i++) {
		if (p->early_warnings[i])
			pf_log_warning(NULL, "%s", p->early_warnings[i]);
		free(p->early_warnings[i]);
		p->early_warnings[i] = NULL;
	}
	p->n_early_warnings = 0;
}

/* Opens the log sinks the snapshot asks for. */
static int open_log(const pf_config_t *cfg, char *err, size_t errlen)
{
	char facility[32];

	pf_config_format(cfg, pf_config_find_param("syslog_facility"), facility, sizeof(facility));
	return pf_log_open(cfg->logfile, cfg->syslog, cfg->syslog_ident, facility, err, errlen);
}

/*
 * The first load reads the file named on the command line; a reload reads the running
 * snapshot's conffile (PgBouncer: setting conffile makes the next RELOAD / SIGHUP read that
 * file; it defaults to the command-line file).
 */
static int load_config(process_t *p, pf_config_t **out, char *err, size_t errlen)
{
	const char *path = p->cfg && p->cfg->conffile && *p->cfg->conffile ? p->cfg->conffile
	                                                                   : p->opt.config_path;

	return pf_config_load(path, out, config_warning, p, err, errlen);
}

/* Returns the pid in an existing pidfile whose process is alive, else 0. */
static pid_t pidfile_owner(const char *path)
{
	char buf[32] = "";
	ssize_t n;
	long pid;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	pid = strtol(buf, NULL, 10);
	if (pid <= 0 || pid > INT_MAX)
		return 0;
	if (kill((pid_t)pid, 0) == 0 || errno == EPERM)
		return (pid_t)pid;
	return 0;
}

static void pidfile_check(const char *path)
{
	pid_t owner = pidfile_owner(path);

	if (owner > 0)
		die("pidfile \"%s\" names running process %d: is another instance running?", path,
		    (int)owner);
}

static int pidfile_write(const char *path)
{
	char buf[32];
	int len = snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	if (fd < 0)
		return -errno;
	if (write(fd, buf, (size_t)len) != len) {
		int e = -errno;

		close(fd);
		unlink(path);
		return e ? e : -EIO;
	}
	close(fd);
	return 0;
}

/*
 * Forks into the background. The parent waits on a pipe until the child has written its pidfile,
 * so that `pgfunnel -d` returns only once the daemon is up (or exits 1 if it failed).
 */
static void go_daemon(process_t *p)
{
	int fds[2];
	pid_t pid;

	if (pipe(fds) < 0)
		die("pipe: %s", strerror(errno));
	fflush(NULL);
	pid = fork();
	if (pid < 0)
		die("fork: %s", strerror(errno));
	if (pid > 0) {
		char status = 1;

		close(fds[1]);
		if (read(fds[0], &status, 1) != 1)
			status = 1;
		_exit(status == 0 ? 0 : 1);
	}
	close(fds[0]);
	p->daemon_pipe_fd = fds[1];
	if (setsid() < 0)
		pf_fatal("setsid: %s", strerror(errno));
	/* A second fork so the daemon can never reacquire a controlling terminal. */
	pid = fork();
	if (pid < 0)
		pf_fatal("fork: %s", strerror(errno));
	if (pid > 0)
		_exit(0);
	int nullfd = open("/dev/null", O_RDWR | O_CLOEXEC);

	if (nullfd >= 0) {
		dup2(nullfd, STDIN_FILENO);
		dup2(nullfd, STDOUT_FILENO);
		dup2(nullfd, STDERR_FILENO);
		if (nullfd > STDERR_FILENO)
			close(nullfd);
	}
	pf_log_set_stderr(false);
	int rc = uv_loop_fork(p->loop);

	if (rc < 0)
		pf_fatal("uv_loop_fork: %s", uv_strerror(rc));
}

static void daemon_ready(process_t *p)
{
	if (p->daemon_pipe_fd >= 0) {
		char ok = 0;

		if (write(p->daemon_pipe_fd, &ok, 1) != 1)
			pf_log_warning(NULL, "could not tell the parent process we are up");
		close(p->daemon_pipe_fd);
		p->daemon_pipe_fd = -1;
	}
}

static void drop_privileges(const char *user)
{
	struct passwd *pw = getpwnam(user);

	if (!pw)
		pf_fatal("unknown user \"%s\"", user);
	if (getuid() == pw->pw_uid)
		return;
	if (geteuid() != 0)
		pf_fatal("cannot switch to user \"%s\": not started as root", user);
	if (setgid(pw->pw_gid) < 0 || initgroups(pw->pw_name, pw->pw_gid) < 0 ||
	    setuid(pw->pw_uid) < 0)
		pf_fatal("cannot switch to user \"%s\": %s", user, strerror(errno));
	if (setuid(0) == 0)
		pf_fatal("cannot switch to user \"%s\": root privileges could be regained", user);
}

/*
 * Raises the soft RLIMIT_NOFILE to the hard limit (as root, first the hard limit itself towards
 * what max_client_conn needs) and logs the connection capacity that results, as PgBouncer
 * warns when its file limit is too small for max_client_conn.
 */
static void raise_fd_limit(const pf_config_t *cfg)
{
	struct rlimit rl;
	/* Every client may bring a server; a few descriptors go to listeners, logs, stdio. */
	rlim_t want = (rlim_t)cfg->max_client_conn * 2 + 64;
	rlim_t room;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return;
	if (geteuid() == 0 && rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want) {
		struct rlimit more = {.rlim_cur = want, .rlim_max = want};

		if (setrlimit(RLIMIT_NOFILE, &more) == 0)
			rl = more;
	}
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			getrlimit(RLIMIT_NOFILE, &rl);
	}
	room = rl.rlim_cur > 64 ? rl.rlim_cur - 64 : 0;
	if (rl.rlim_cur == RLIM_INFINITY)
		pf_log_info(NULL, "file descriptor limit: unlimited");
	else if (room / 2 < (rlim_t)cfg->max_client_conn)
		pf_log_warning(NULL,
		               "file descriptor limit %llu leaves room for about %llu clients with "
		               "their servers, less than max_client_conn=%d",
		               (unsigned long long)rl.rlim_cur, (unsigned long long)(room / 2),
		               cfg->max_client_conn);
	else
		pf_log_info(NULL,
		            "file descriptor limit %llu: room for about %llu clients with their "
		            "servers (max_client_conn=%d)",
		            (unsigned long long)rl.rlim_cur, (unsigned long long)(room / 2),
		            cfg->max_client_conn);
}

static void notify_systemd(const char *state)
{
#if PF_HAVE_SYSTEMD
	sd_notify(0, state);
#else
	(void)state;
#endif
}

static void on_shutdown_done(void *arg)
{
	process_t *p = arg;

	for (size_t i = 0; i < p->nsignals; i++)
		uv_close((uv_handle_t *)&p->signals[i], NULL);
	uv_stop(p->loop);
}

/*
 * A reload cannot change what only a restart applies (listen_addr, listen_port, user, ...): each
 * such parameter that differs keeps its running value in the new snapshot, with a warning
 * naming it, so SHOW CONFIG keeps telling the truth.
 */
static void keep_restart_only_values(const pf_config_t *old, pf_config_t *fresh)
{
	size_t count;
	const pf_config_param_t *params = pf_config_params(&count);
	char was[1024], now[1024], err[256];

	for (size_t i = 0; i < count; i++) {
		const pf_config_param_t *prm = &params[i];
		int rc_was, rc_now;

		if (prm->reloadable)
			continue;
		rc_was = pf_config_format(old, prm, was, sizeof(was));
		rc_now = pf_config_format(fresh, prm, now, sizeof(now));
		if (rc_was == rc_now && strcmp(was, now) == 0)
			continue;
		pf_log_warning(
		        NULL,
		        "parameter \"%s\" cannot be changed without a restart; keeping \"%s\"",
		        prm->name, rc_was == 0 ? was : "");
		if (pf_config_set(fresh, prm->name, rc_was == 0 ? was : "", err, sizeof(err)) < 0)
			pf_log_warning(NULL, "could not keep %s: %s", prm->name, err);
	}
}

/* True when a parameter whose name starts with prefix differs between a and b. */
static bool params_differ(const pf_config_t *a, const pf_config_t *b, const char *prefix)
{
	size_t count;
	const pf_config_param_t *params = pf_config_params(&count);
	char va[1024], vb[1024];

	for (size_t i = 0; i < count; i++) {
		if (strncmp(params[i].name, prefix, strlen(prefix)) != 0)
			continue;
		if (pf_config_format(a, &params[i], va, sizeof(va)) !=
		            pf_config_format(b, &params[i], vb, sizeof(vb)) ||
		    strcmp(va, vb) != 0)
			return true;
	}
	return false;
}

/*
 * Builds the TLS contexts cfg asks for (key and certificate files are read now, so a RELOAD
 * picks up renewed files). Returns 0, or -EINVAL with the reason in err.
 */
static int build_tls(const pf_config_t *cfg, pf_tls_ctx_t **accept, pf_tls_ctx_t **connect,
                     char *err, size_t errlen)
{
	if (pf_tls_ctx_accept_new(cfg, accept, err, errlen) < 0)
		return -EINVAL;
	if (pf_tls_ctx_connect_new(cfg, connect, err, errlen) < 0) {
		pf_tls_ctx_unref(*accept);
		*accept = NULL;
		return -EINVAL;
	}
	return 0;
}

static void hba_warning(void *arg, const char *file, int line, const char *msg)
{
	(void)arg;
	if (line > 0)
		pf_log_warning(NULL, "%s:%d: %s", file, line, msg);
	else
		pf_log_warning(NULL, "%s: %s", file, msg);
}

/*
 * Loads auth_ident_file (when set) and, with auth_type=hba, auth_hba_file (which must then be
 * set). Returns 0, or -EINVAL with the reason in err (nothing loaded then).
 */
static int build_auth_rules(const pf_config_t *cfg, pf_hba_t **hba, pf_ident_t **ident, char *err,
                            size_t errlen)
{
	*hba = NULL;
	*ident = NULL;
	if (cfg->auth_ident_file && *cfg->auth_ident_file &&
	    pf_ident_load(cfg->auth_ident_file, hba_warning, NULL, ident, err, errlen) < 0)
		return -EINVAL;
	if (cfg->auth_type != PF_AUTH_HBA)
		return 0;
	if (!cfg->auth_hba_file || !*cfg->auth_hba_file) {
		snprintf(err, errlen, "auth_type = hba needs auth_hba_file");
		goto fail;
	}
	if (pf_hba_load(cfg->auth_hba_file, *ident, hba_warning, NULL, hba, err, errlen) < 0)
		goto fail;
	if (pf_hba_count_skipped(*hba) > 0)
		pf_log_warning(NULL,
		               "%s: %zu line(s) skipped (see the warnings above): the rules after "
		               "them may now apply to connections they were meant to refuse",
		               cfg->auth_hba_file, pf_hba_count_skipped(*hba));
	return 0;
fail:
	pf_ident_free(*ident);
	*ident = NULL;
	return -EINVAL;
}

/*
 * Makes cfg the running snapshot; main keeps the caller's reference to it (taken over). The
 * worker takes its own; the old snapshot loses main's reference and is freed once no worker
 * holds it either. The log sinks copy what they keep (pf_log_open), so nothing else points into
 * the old snapshot. First the TLS contexts are built from cfg's files: when that fails, nothing
 * changes, cfg stays the caller's and -EINVAL comes back with the reason in err.
 */
static int install_config(process_t *p, pf_config_t *cfg, char *err, size_t errlen)
{
	pf_config_t *old = p->cfg;
	pf_tls_ctx_t *accept = NULL, *connect = NULL;
	char logerr[512];

	pf_hba_t *hba;
	pf_ident_t *ident;

	if (build_tls(cfg, &accept, &connect, err, errlen) < 0)
		return -EINVAL; /* cfg stays the caller's */
	if (build_auth_rules(cfg, &hba, &ident, err, errlen) < 0) {
		pf_tls_ctx_unref(accept);
		pf_tls_ctx_unref(connect);
		return -EINVAL;
	}
	pf_log_set_verbosity(cfg->verbose + p->opt.verbose);
	if (open_log(cfg, logerr, sizeof(logerr)) < 0)
		pf_log_warning(NULL, "keeping the old log settings: %s", logerr);
	p->cfg = cfg;
	pf_worker_set_config(p->worker, cfg);
	pf_worker_set_tls(p->worker, accept, connect, params_differ(old, cfg, "server_tls"));
	pf_worker_set_auth_rules(p->worker, hba, ident);
	pf_config_unref(old);
	return 0;
}

static int reload(process_t *p)
{
	char err[512];
	pf_config_t *fresh = NULL;
	const char *param = NULL;

	notify_systemd("RELOADING=1");
	if (pf_log_reopen() < 0)
		pf_log_warning(NULL, "could not reopen logfile: %s", strerror(errno));
	if (load_config(p, &fresh, err, sizeof(err)) < 0) {
		pf_log_error(NULL, "config reload failed, keeping the old config: %s", err);
		notify_systemd("READY=1");
		return -EINVAL;
	}
	if (!pf_config_is_reload_safe(p->cfg, fresh, &param))
		keep_restart_only_values(p->cfg, fresh);
	if (install_config(p, fresh, err, sizeof(err)) < 0) {
		pf_config_unref(fresh);
		pf_log_error(NULL, "config reload failed, keeping the old config: %s", err);
		notify_systemd("READY=1");
		return -EINVAL;
	}
	pf_log_info(NULL, "config reloaded");
	notify_systemd("READY=1");
	return 0;
}

/* Begins (or escalates) a shutdown; why names the signal or command in the log line. */
/*
 * A rolling restart with so_reuseport loses the connections still in the old listener's SYN
 * queue (and, with tcp_defer_accept, those that have sent nothing yet) when it closes, unless
 * the kernel migrates them to the new process (net.ipv4.tcp_migrate_req, Linux 5.14+).
 */
static void check_migrate_req(void)
{
	FILE *f = fopen("/proc/sys/net/ipv4/tcp_migrate_req", "r");
	int v = -1;

	if (f) {
		if (fscanf(f, "%d", &v) != 1)
			v = -1;
		fclose(f);
	}
	if (v == 0)
		pf_log_warning(NULL, "so_reuseport is on but net.ipv4.tcp_migrate_req = 0: "
		                     "connections not yet accepted when the listeners close are "
		                     "reset instead of moving to the new process");
	else if (v < 0)
		pf_log_warning(NULL, "so_reuseport is on but net.ipv4.tcp_migrate_req cannot be "
		                     "read (Linux < 5.14?): connections not yet accepted when the "
		                     "listeners close are reset");
}

static void begin_shutdown(process_t *p, pf_shutdown_mode_t mode, const char *why)
{
	pf_shutdown_mode_t cur = pf_worker_shutdown_mode(p->worker);

	/* A second SIGTERM/SIGINT during a shutdown means: now. */
	if (cur != PF_SHUTDOWN_NONE && mode != PF_SHUTDOWN_IMMEDIATE)
		mode = PF_SHUTDOWN_IMMEDIATE;
	pf_log_info(NULL, "%s, shutting down%s", why,
	            mode == PF_SHUTDOWN_WAIT_FOR_CLIENTS   ? ", waiting for clients"
	            : mode == PF_SHUTDOWN_WAIT_FOR_SERVERS ? ", waiting for servers"
	                                                   : " immediately");
	notify_systemd("STOPPING=1");
	if (cur == PF_SHUTDOWN_NONE && mode == PF_SHUTDOWN_WAIT_FOR_CLIENTS &&
	    p->worker->cfg->so_reuseport)
		check_migrate_req();
	pf_worker_shutdown(p->worker, mode, on_shutdown_done, p);
}

static void on_signal(uv_signal_t *h, int signum)
{
	process_t *p = h->data;

	switch (signum) {
	case SIGHUP:
		pf_log_info(NULL, "got SIGHUP, re-reading config");
		(void)reload(p);
		break;
	case SIGTERM:
		begin_shutdown(p, PF_SHUTDOWN_WAIT_FOR_CLIENTS, "got SIGTERM");
		break;
	case SIGINT:
		begin_shutdown(p, PF_SHUTDOWN_WAIT_FOR_SERVERS, "got SIGINT");
		break;
	case SIGQUIT:
		begin_shutdown(p, PF_SHUTDOWN_IMMEDIATE, "got SIGQUIT");
		break;
	case SIGUSR1:
		pf_log_info(NULL, "got SIGUSR1, pausing all activity");
		pf_worker_pause(p->worker);
		break;
	case SIGUSR2:
		pf_log_info(NULL, "got SIGUSR2, continuing");
		pf_worker_resume(p->worker);
		break;
	default:
		break;
	}
}

/* The console's RELOAD, SHUTDOWN and SET reach the process through these. */
static int hook_reload(void *arg)
{
	pf_log_info(NULL, "RELOAD command issued");
	return reload(arg);
}

static void hook_shutdown(void *arg, pf_shutdown_mode_t mode)
{
	begin_shutdown(arg, mode, "SHUTDOWN command");
}

static int hook_set_config(void *arg, pf_config_t *cfg)
{
	char err[512];

	if (install_config(arg, cfg, err, sizeof(err)) < 0) {
		pf_log_error(NULL, "SET failed, keeping the old config: %s", err);
		return -EINVAL;
	}
	return 0;
}

static const pf_worker_hooks_t worker_hooks = {
        .reload = hook_reload,
        .shutdown = hook_shutdown,
        .set_config = hook_set_config,
};

static void setup_signals(process_t *p)
{
	static const int sigs[] = {SIGHUP, SIGTERM, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2};

	signal(SIGPIPE, SIG_IGN);
	for (size_t i = 0; i < PF_ARRAY_SIZE(sigs); i++) {
		uv_signal_t *h = &p->signals[p->nsignals];
		int rc = uv_signal_init(p->loop, h);

		if (rc == 0)
			rc = uv_signal_start(h, on_signal, sigs[i]);
		if (rc < 0)
			pf_fatal("cannot install handler for signal %d: %s", sigs[i],
			         uv_strerror(rc));
		h->data = p;
		p->nsignals++;
	}
}

int main(int argc, char **argv)
{
	process_t p = {.daemon_pipe_fd = -1};
	char err[512];
	const char *run_as;
	uid_t owner_uid = (uid_t)-1;
	gid_t owner_gid = (gid_t)-1;
	int rc;

	parse_args(argc, argv, &p.opt);
	if (load_config(&p, &p.cfg, err, sizeof(err)) < 0)
		die("%s", err);
	/* track_extra_parameters needs a restart: the tracked set is fixed from here on. */
	if (pf_vars_configure(p.cfg->track_extra_parameters, err, sizeof(err)) < 0)
		die("%s", err);

	/* -u wins over the config's `user`, as in PgBouncer. */
	run_as = p.opt.user ? p.opt.user : (p.cfg->user && *p.cfg->user ? p.cfg->user : NULL);
	if (geteuid() == 0 && !run_as)
		die("refusing to run as root: use -u USER or the \"user\" parameter");
	if (run_as) {
		struct passwd *pw = getpwnam(run_as);

		if (!pw)
			die("unknown user \"%s\"", run_as);
		owner_uid = pw->pw_uid;
		owner_gid = pw->pw_gid;
	}
	if (p.opt.daemon && !(p.cfg->logfile && *p.cfg->logfile) && !p.cfg->syslog)
		die("daemon mode (-d) needs a logfile or syslog in the config");
	if (p.cfg->pidfile && *p.cfg->pidfile)
		pidfile_check(p.cfg->pidfile);

	pf_worker_setup_logging();
	pf_log_set_stderr(!p.opt.quiet);
	pf_log_set_verbosity(p.cfg->verbose + p.opt.verbose);
	if (open_log(p.cfg, err, sizeof(err)) < 0)
		die("%s", err);
	replay_early_warnings(&p);
	if (p.opt.reboot)
		pf_log_warning(NULL, "Online restart is deprecated, use so_reuseport instead "
		                     "(pgfunnel does not take sockets over; starting normally)");
	raise_fd_limit(p.cfg);

	p.loop = uv_default_loop();
	rc = pf_worker_create(p.loop, p.cfg, &p.worker);
	if (rc < 0)
		die("cannot create worker: %s", uv_strerror(rc));
	if (pf_worker_listen(p.worker, owner_uid, owner_gid, err, sizeof(err)) < 0)
		die("%s", err);

	if (p.opt.daemon)
		go_daemon(&p);
	if (p.cfg->pidfile && *p.cfg->pidfile) {
		rc = pidfile_write(p.cfg->pidfile);
		if (rc < 0)
			pf_fatal("cannot write pidfile \"%s\": %s", p.cfg->pidfile, strerror(-rc));
		p.pidfile = strdup(p.cfg->pidfile);
		if (owner_uid != (uid_t)-1 && chown(p.pidfile, owner_uid, owner_gid) < 0)
			pf_log_warning(NULL, "cannot chown pidfile: %s", strerror(errno));
	}
	if (run_as) {
		/*
		 * PgBouncer switches user before it opens its logfile; we open it as root (to log
		 * start-up problems) and give a file we created to the user, so that SIGHUP and
		 * RELOAD can reopen it. An existing file that user cannot write is reported now
		 * rather than at every reload.
		 */
		if (geteuid() == 0 && (rc = pf_log_give_to(owner_uid, owner_gid)) < 0)
			pf_log_warning(NULL, "cannot chown logfile: %s", strerror(-rc));
		drop_privileges(run_as);
		if ((rc = pf_log_reopen()) < 0)
			pf_log_warning(NULL,
			               "logfile \"%s\" cannot be reopened as user \"%s\": %s; log "
			               "rotation and RELOAD will keep writing to the old file",
			               p.cfg->logfile, run_as, strerror(-rc));
	}
	if (geteuid() == 0)
		pf_fatal("refusing to run as root");

	{
		/* After dropping privileges, as every RELOAD reads the files. */
		pf_tls_ctx_t *accept, *connect;

		pf_hba_t *hba;
		pf_ident_t *ident;

		if (build_tls(p.cfg, &accept, &connect, err, sizeof(err)) < 0 ||
		    build_auth_rules(p.cfg, &hba, &ident, err, sizeof(err)) < 0)
			die("%s", err);
		pf_worker_set_tls(p.worker, accept, connect, false);
		pf_worker_set_auth_rules(p.worker, hba, ident);
	}
	setup_signals(&p);
	p.worker->hooks = &worker_hooks;
	p.worker->hooks_arg = &p;
	{
		char where[512];

		pf_worker_describe_listeners(p.worker, where, sizeof(where));
		pf_log_info(NULL, "listening on %s", where);
	}
	pf_log_info(NULL, "process up: %s %s, libuv %s, %s", PF_PACKAGE, PF_VERSION,
	            uv_version_string(), OpenSSL_version(OPENSSL_VERSION));
	daemon_ready(&p);
	notify_systemd("READY=1");

	uv_run(p.loop, UV_RUN_DEFAULT);

	/* The worker has closed its handles; let the close callbacks run, then free. */
	uv_run(p.loop, UV_RUN_DEFAULT);
	pf_worker_free(p.worker);
	rc = uv_loop_close(p.loop);
	if (rc < 0)
		pf_log_warning(NULL, "event loop still had open handles at exit");
	if (p.pidfile) {
		unlink(p.pidfile);
		free(p.pidfile);
	}
	/* The worker dropped its reference in pf_worker_free(): this is the last one. */
	pf_config_unref(p.cfg);
	pf_log_info(NULL, "shutdown complete");
	pf_log_close();
	return 0;
}
