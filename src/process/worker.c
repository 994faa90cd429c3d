/*
 * worker: owns one event loop's listeners and the connections accepted on them.
 *
 * Listeners are opened with plain socket calls (so SO_REUSEPORT, TCP_DEFER_ACCEPT and
 * IPV6_V6ONLY can be set before bind) and then handed to libuv. A shutdown first closes the
 * listeners, then waits as the mode says, then reports completion once every handle it owns has
 * gone through its close callback.
 */
#include "pfbuild.h"

#include <assert.h>
#include <errno.h>
#include <grp.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "pgfunnel/admin.h"
#include "pgfunnel/authquery.h"
#include "pgfunnel/client.h"
#include "pgfunnel/hba.h"
#include "pgfunnel/dns.h"
#include "pgfunnel/log.h"
#include "pgfunnel/metrics.h"
#include "pgfunnel/peer.h"
#include "pgfunnel/pool.h"
#include "pgfunnel/scram.h"
#include "pgfunnel/server.h"
#include "pgfunnel/session.h"
#include "pgfunnel/stats.h"
#include "pgfunnel/tls.h"
#include "pgfunnel/worker.h"

#define MAX_LISTENERS PF_WORKER_MAX_LISTENERS

typedef pf_listener_t listener_t;

static void on_janitor(uv_timer_t *t);

/* After each poll: a new loop iteration. Throttled connections read again; deferred ones
 * process their input (pf_conn_defer_resume). */
static void on_iteration(uv_check_t *h)
{
	pf_worker_t *w = h->data;

	if (w->settle_due) {
		w->settle_due = false;
		if (w->shutdown != PF_SHUTDOWN_NONE)
			pf_worker_check_shutdown(w);
		pf_admin_poll(w);
	}
	pf_conn_next_iteration(&w->net);
	pf_net_clock_stale(&w->net);
}

/*
 * A client or server went away, or a server was released. What may follow (a shutdown that
 * closes every client, a console's queued KILL_CLIENT) happens after the I/O of this loop
 * iteration, never inside the call that released a server: its caller may still be using the
 * client it released for. The janitor checks too, so work that settles from a timer is not
 * left waiting for the next poll.
 */
static void on_settled(pf_worker_t *w)
{
	w->settle_due = true;
}

static const pf_worker_ops_t worker_ops = {
        .settled = on_settled,
        .kick_pools = pf_worker_kick_pools,
        .set_suspended = pf_worker_set_suspended,
        .console_login = pf_admin_login,
        .console_packet = pf_admin_packet,
        .auth_query = pf_authq_start,
};

/* Creation failed after handles were set up: free w once the last of them is closed. */
static void free_after_close(uv_handle_t *h)
{
	pf_worker_t *w = h->data;

	assert(w->open_handles > 0);
	if (--w->open_handles == 0)
		pf_worker_free(w);
}

/* Before the loop waits for I/O and after it ran what the wait brought: the clock is read
 * again at its next use (pf_net_now), so the callbacks of one wake-up share one reading. */
static void on_prepare(uv_prepare_t *h)
{
	pf_worker_t *w = h->data;

	pf_net_clock_stale(&w->net);
}

int pf_worker_create(uv_loop_t *loop, const pf_config_t *cfg, pf_worker_t **out)
{
	pf_worker_t *w = calloc(1, sizeof(*w));
	int rc;

	if (!w)
		return -ENOMEM;
	w->cfg = pf_config_ref(cfg); /* the worker's own reference, dropped in pf_worker_free() */
	pf_net_init(&w->net, loop, w->cfg);
	w->ops = &worker_ops;
	w->pool_ops = &pf_session_pool_ops;
	pf_list_init(&w->login_clients);
	pf_list_init(&w->cancel_clients);
	pf_list_init(&w->cancel_conns);
	pf_list_init(&w->databases);
	pf_list_init(&w->users);
	pf_list_init(&w->pools);
	pf_cancel_table_init(&w->cancel_keys);
	if (RAND_bytes(w->mock_key, sizeof(w->mock_key)) != 1) {
		pf_config_unref(w->cfg);
		free(w);
		return -EIO;
	}
	rc = pf_scram_cache_new(256, &w->scram_cache);
	if (rc < 0) {
		pf_config_unref(w->cfg);
		free(w);
		return rc;
	}
	{
		uint8_t key[16];

		if (RAND_bytes(key, sizeof(key)) != 1 ||
		    !(w->prepared = pf_prepared_registry_new(key))) {
			pf_scram_cache_free(w->scram_cache);
			pf_config_unref(w->cfg);
			free(w);
			return -ENOMEM;
		}
	}
	w->start_time = pf_worker_now(w);
	w->start_wall = pf_now_wall_usec();
	pf_worker_load_auth_file(w);
	rc = pf_database_sync_config(w);
	if (rc == 0)
		rc = uv_timer_init(loop, &w->janitor);
	if (rc < 0) {
		pf_worker_free(w);
		return rc;
	}
	w->janitor.data = w;
	w->open_handles++;
	w->iteration_check.data = w;
	w->iteration_prepare.data = w;
	rc = uv_check_init(loop, &w->iteration_check);
	if (rc == 0) {
		w->open_handles++;
		rc = uv_prepare_init(loop, &w->iteration_prepare);
	}
	if (rc < 0) {
		/* w holds the handles: it is freed only once the loop has closed them. */
		uv_close((uv_handle_t *)&w->janitor, free_after_close);
		if (w->open_handles > 1)
			uv_close((uv_handle_t *)&w->iteration_check, free_after_close);
		uv_run(loop, UV_RUN_NOWAIT);
		return rc;
	}
	w->open_handles++;
	uv_check_start(&w->iteration_check, on_iteration);
	uv_unref((uv_handle_t *)&w->iteration_check);
	uv_prepare_start(&w->iteration_prepare, on_prepare);
	uv_unref((uv_handle_t *)&w->iteration_prepare);
	w->net.per_iteration = true;
	uv_timer_start(&w->janitor, on_janitor, 1000, 1000);
	uv_unref((uv_handle_t *)&w->janitor);
	*out = w;
	return 0;
}

void pf_worker_load_auth_file(pf_worker_t *w)
{
	const pf_config_t *cfg = w->cfg;
	pf_auth_file_t *af = NULL;
	char err[512];

	if (!cfg->auth_file || !*cfg->auth_file) {
		pf_auth_file_free(w->auth_file);
		w->auth_file = NULL;
		pf_user_sync_auth_file(w);
		return;
	}
	if (pf_auth_file_load(cfg->auth_file, &af, err, sizeof(err)) < 0) {
		/* PgBouncer keeps running (and the old list) when auth_file cannot be read. */
		pf_log_warning(NULL, "could not load auth_file: %s", err);
		return;
	}
	pf_auth_file_free(w->auth_file);
	w->auth_file = af;
	pf_user_sync_auth_file(w);
}

static void maybe_done(pf_worker_t *w)
{
	if (w->shutdown == PF_SHUTDOWN_NONE || w->done_reported || w->open_handles > 0)
		return;
	w->done_reported = true;
	if (w->shutdown_done)
		w->shutdown_done(w->shutdown_arg);
}

static void on_handle_closed(uv_handle_t *h)
{
	pf_worker_t *w = h->data;

	w->open_handles--;
	maybe_done(w);
}

static void on_listener_closed(uv_handle_t *h)
{
	listener_t *l = h->data;

	l->open = false;
	l->worker->open_handles--;
	maybe_done(l->worker);
}

/*
 * A listener whose handle was initialised but could not be opened: closed through the loop like
 * the others (its slot is used up, so nothing reuses the memory before the close callback).
 */
static void discard_listener(pf_worker_t *w, listener_t *l)
{
	l->worker = w;
	l->open = false;
	l->h.handle.data = l;
	w->nlisteners++;
	w->open_handles++;
	uv_close(&l->h.handle, on_listener_closed);
}

static void on_accept(uv_stream_t *server, int status)
{
	listener_t *l = server->data;

	if (status < 0) {
		pf_log_warning(NULL, "accept() failed on %s: %s", l->desc, uv_strerror(status));
		return;
	}
	if (l->worker->suspended) {
		/* SUSPEND stops accepting, as PgBouncer does: libuv keeps this one connection
		 * and stops watching the listener until it is taken (RESUME); the rest wait in
		 * the kernel's queue. */
		l->held = true;
		return;
	}
	pf_client_accept(l->worker, server, l->is_unix);
}

/* RESUME: the connection each listener held during SUSPEND is taken, which makes libuv watch
 * the listener again. */
static void release_held_accepts(pf_worker_t *w)
{
	for (size_t i = 0; i < w->nlisteners; i++) {
		listener_t *l = &w->listeners[i];

		if (!l->held)
			continue;
		l->held = false;
		if (l->open && !uv_is_closing(&l->h.handle))
			pf_client_accept(w, &l->h.stream, l->is_unix);
	}
}

static void on_janitor(uv_timer_t *t)
{
	pf_worker_t *w = t->data;
	pf_usec_t now = pf_worker_now(w);
	pf_list_node_t *it, *tmp;

	pf_client_check_login_timeouts(w, now);
	pf_server_expire_cancels(w, now);
	pf_peer_expire(w, now);
	PF_LIST_FOREACH(&w->pools, it, tmp)
	{
		pf_pool_t *p = PF_CONTAINER_OF(it, pf_pool_t, node);

		pf_client_maintain(p, now);
		pf_pool_maintain(p, now);
	}
	pf_database_maintain(w, now);
	pf_stats_tick(w, now);
	pf_net_trim(&w->net);
	w->settle_due = false;
	pf_admin_poll(w);
	if (w->shutdown == PF_SHUTDOWN_WAIT_FOR_CLIENTS)
		pf_worker_close_idle_clients(w);
	pf_worker_check_shutdown(w);
	/* Work deferred from here would otherwise wait for the next poll to return. */
	pf_conn_next_iteration(&w->net);
}

/* tcp_defer_accept on a TCP listener (secs 0: off); where the option does not exist, nothing. */
static int set_defer_accept(int fd, int secs)
{
#ifdef TCP_DEFER_ACCEPT
	return setsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &secs, sizeof(secs));
#else
	(void)fd;
	(void)secs;
	return 0;
#endif
}

/* Opens a TCP listener on one resolved address. */
static int listen_tcp(pf_worker_t *w, const struct addrinfo *ai, char *err, size_t errlen)
{
	const pf_config_t *cfg = w->cfg;
	listener_t *l;
	char host[NI_MAXHOST], serv[NI_MAXSERV];
	int fd, on = 1, rc;

	if (w->nlisteners >= MAX_LISTENERS) {
		snprintf(err, errlen, "too many listen addresses (at most %d)", MAX_LISTENERS);
		return -E2BIG;
	}
	l = &w->listeners[w->nlisteners];
	getnameinfo(ai->ai_addr, ai->ai_addrlen, host, sizeof(host), serv, sizeof(serv),
	            NI_NUMERICHOST | NI_NUMERICSERV);
	snprintf(l->desc, sizeof(l->desc), ai->ai_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host,
	         serv);

	fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		goto fail;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) < 0)
		goto fail;
	if (cfg->so_reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on)) < 0)
		goto fail;
	if (ai->ai_family == AF_INET6 &&
	    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on)) < 0)
		goto fail;
	if (cfg->tcp_defer_accept > 0 && set_defer_accept(fd, cfg->tcp_defer_accept) < 0)
		goto fail;
	if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0)
		goto fail;
	pf_conn_size_socket(fd, cfg->tcp_socket_buffer); /* inherited by accepted sockets */
	if (listen(fd, cfg->listen_backlog > 0 ? cfg->listen_backlog : 128) < 0)
		goto fail;

	rc = uv_tcp_init(w->net.loop, &l->h.tcp);
	if (rc == 0) {
		rc = uv_tcp_open(&l->h.tcp, fd);
		if (rc < 0) {
			discard_listener(w, l);
			close(fd);
		}
	} else {
		close(fd);
	}
	if (rc < 0) {
		snprintf(err, errlen, "cannot listen on %s: %s", l->desc, uv_strerror(rc));
		return rc;
	}
	l->worker = w;
	l->open = true;
	l->h.handle.data = l;
	w->nlisteners++;
	w->open_handles++;
	return 0;
fail:
	rc = -errno;
	snprintf(err, errlen, "cannot listen on %s: %s", l->desc, strerror(errno));
	if (fd >= 0)
		close(fd);
	return rc;
}

static int listen_tcp_addrs(pf_worker_t *w, char *err, size_t errlen)
{
	const pf_config_t *cfg = w->cfg;
	char *list, *save = NULL, *tok;
	char port[16];
	int rc = 0;

	if (!cfg->listen_addr || !*cfg->listen_addr)
		return 0;
	list = strdup(cfg->listen_addr);
	if (!list)
		return -ENOMEM;
	snprintf(port, sizeof(port), "%d", cfg->listen_port);
	for (tok = strtok_r(list, ",", &save); tok && rc == 0; tok = strtok_r(NULL, ",", &save)) {
		struct addrinfo hints = {0}, *res = NULL, *ai;
		const char *host;

		while (*tok == ' ' || *tok == '\t')
			tok++;
		for (char *end = tok + strlen(tok);
		     end > tok && (end[-1] == ' ' || end[-1] == '\t');)
			*--end = '\0';
		if (!*tok)
			continue;
		/* "*" means every IPv4 and IPv6 address, as in PgBouncer. */
		host = strcmp(tok, "*") == 0 ? NULL : tok;
		hints.ai_family = AF_UNSPEC;
		hints.ai_socktype = SOCK_STREAM;
		hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
		int gai = getaddrinfo(host, port, &hints, &res);

		if (gai != 0) {
			snprintf(err, errlen, "cannot resolve listen_addr \"%s\": %s", tok,
			         gai_strerror(gai));
			rc = -EINVAL;
			break;
		}
		for (ai = res; ai && rc == 0; ai = ai->ai_next) {
			if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
				continue;
			rc = listen_tcp(w, ai, err, errlen);
			/* A host without IPv6 should not stop "*" from listening on IPv4. */
			if (rc == -EAFNOSUPPORT && host == NULL)
				rc = 0;
		}
		freeaddrinfo(res);
	}
	free(list);
	return rc;
}

/*
 * An existing socket file may belong to a running instance (refuse) or be left over from a crash
 * (remove it), as PgBouncer decides by trying to connect.
 */
static int check_stale_socket(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd, rc;

	if (access(path, F_OK) < 0)
		return 0;
	pf_strlcpy(sa.sun_path, path, sizeof(sa.sun_path));
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
	close(fd);
	if (rc == 0)
		return -EADDRINUSE;
	unlink(path);
	return 0;
}

static int listen_unix(pf_worker_t *w, uid_t owner_uid, gid_t owner_gid, char *err, size_t errlen)
{
	const pf_config_t *cfg = w->cfg;
	listener_t *l;
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	socklen_t salen;
	bool abstract;
	int fd, rc;

	if (!cfg->unix_socket_dir || !*cfg->unix_socket_dir)
		return 0;
	if (w->nlisteners >= MAX_LISTENERS) {
		snprintf(err, errlen, "too many listen addresses (at most %d)", MAX_LISTENERS);
		return -E2BIG;
	}
	l = &w->listeners[w->nlisteners];
	/* A leading '@' names the Linux abstract namespace, as in PgBouncer. */
	abstract = cfg->unix_socket_dir[0] == '@';
	rc = snprintf(l->path, sizeof(l->path), "%s/.s.PGSQL.%d",
	              cfg->unix_socket_dir + (abstract ? 1 : 0), cfg->listen_port);
	if (rc < 0 || (size_t)rc >= sizeof(l->path) - 1) {
		snprintf(err, errlen, "unix_socket_dir \"%s\" is too long", cfg->unix_socket_dir);
		return -ENAMETOOLONG;
	}
	{
		char desc[sizeof(l->desc)];

		snprintf(desc, sizeof(desc), "unix:%s%s", abstract ? "@" : "", l->path);
		memcpy(l->desc, desc, sizeof(desc));
	}
	if (abstract) {
		memcpy(sa.sun_path + 1, l->path, strlen(l->path));
		salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(l->path));
		l->path[0] = '\0'; /* nothing to remove at exit */
	} else {
		rc = check_stale_socket(l->path);
		if (rc < 0) {
			snprintf(err, errlen, "cannot listen on %s: %s", l->desc,
			         rc == -EADDRINUSE ? "another process is listening there"
			                           : strerror(-rc));
			return rc;
		}
		pf_strlcpy(sa.sun_path, l->path, sizeof(sa.sun_path));
		salen = sizeof(sa);
	}

	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, salen) < 0)
		goto fail;
	if (!abstract) {
		gid_t gid = owner_gid;

		if (cfg->unix_socket_group && *cfg->unix_socket_group) {
			struct group *gr = getgrnam(cfg->unix_socket_group);

			if (!gr) {
				snprintf(err, errlen, "unknown unix_socket_group \"%s\"",
				         cfg->unix_socket_group);
				close(fd);
				unlink(l->path);
				return -EINVAL;
			}
			gid = gr->gr_gid;
		}
		if ((owner_uid != (uid_t)-1 || gid != (gid_t)-1) &&
		    chown(l->path, owner_uid, gid) < 0)
			goto fail;
		if (chmod(l->path, (mode_t)cfg->unix_socket_mode) < 0)
			goto fail;
	}
	if (listen(fd, cfg->listen_backlog > 0 ? cfg->listen_backlog : 128) < 0)
		goto fail;
	rc = uv_pipe_init(w->net.loop, &l->h.pipe, 0);
	if (rc == 0) {
		rc = uv_pipe_open(&l->h.pipe, fd);
		if (rc < 0)
			discard_listener(w, l);
	}
	if (rc < 0) {
		close(fd);
		snprintf(err, errlen, "cannot listen on %s: %s", l->desc, uv_strerror(rc));
		if (l->path[0])
			unlink(l->path);
		return rc;
	}
	l->worker = w;
	l->is_unix = true;
	l->open = true;
	l->h.handle.data = l;
	w->nlisteners++;
	w->open_handles++;
	return 0;
fail:
	rc = -errno;
	snprintf(err, errlen, "cannot listen on %s: %s", l->desc, strerror(errno));
	if (fd >= 0) {
		close(fd);
		if (l->path[0])
			unlink(l->path);
	}
	return rc;
}

int pf_worker_listen(pf_worker_t *w, uid_t owner_uid, gid_t owner_gid, char *err, size_t errlen)
{
	int rc = listen_tcp_addrs(w, err, errlen);

	if (rc == 0)
		rc = listen_unix(w, owner_uid, owner_gid, err, errlen);
	if (rc == 0 && w->nlisteners == 0) {
		snprintf(err, errlen,
		         "nothing to listen on: listen_addr and unix_socket_dir are empty");
		rc = -EINVAL;
	}
	if (rc == 0)
		uv_ref((uv_handle_t *)&w->janitor);
	for (size_t i = 0; rc == 0 && i < w->nlisteners; i++) {
		listener_t *l = &w->listeners[i];

		rc = uv_listen(&l->h.stream,
		               w->cfg->listen_backlog > 0 ? w->cfg->listen_backlog : 128,
		               on_accept);
		if (rc < 0)
			snprintf(err, errlen, "cannot listen on %s: %s", l->desc, uv_strerror(rc));
	}
	if (rc == 0)
		rc = pf_metrics_start(w, err, errlen);
	return rc;
}

size_t pf_worker_describe_listeners(const pf_worker_t *w, char *buf, size_t n)
{
	size_t len = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < w->nlisteners && len < n; i++) {
		int r;

		if (!w->listeners[i].open)
			continue;
		r = snprintf(buf + len, n - len, "%s%s", len ? ", " : "", w->listeners[i].desc);

		if (r < 0)
			break;
		len += (size_t)r;
	}
	return len < n ? len : n - 1;
}

/* Applies a reload's listener options to the open TCP listeners, as PgBouncer does. */
static void retune_listeners(pf_worker_t *w, const pf_config_t *old, const pf_config_t *cfg)
{
	for (size_t i = 0; i < w->nlisteners; i++) {
		listener_t *l = &w->listeners[i];
		uv_os_fd_t fd;

		if (!l->open || l->is_unix || uv_fileno(&l->h.handle, &fd) < 0)
			continue;
		/* For the connections accepted from now on (resized after its handshake, a socket
		 * would take less than its peer was told it may send: pf_conn_size_socket). Back
		 * to 0, the listeners keep the last size until a restart. */
		if (cfg->tcp_socket_buffer != old->tcp_socket_buffer)
			pf_conn_size_socket(fd, cfg->tcp_socket_buffer);
		if (cfg->tcp_defer_accept != old->tcp_defer_accept &&
		    set_defer_accept(fd, cfg->tcp_defer_accept) < 0)
			pf_log_warning(NULL, "%s: cannot set TCP_DEFER_ACCEPT: %s", l->desc,
			               strerror(errno));
	}
}

/*
 * The worker holds one reference to its snapshot: it takes one on cfg and drops the old one last,
 * once the pools, users and auth_file have been brought up to date (they copy what they keep).
 * Callers may drop their own reference to either snapshot as soon as this returns.
 */
void pf_worker_set_config(pf_worker_t *w, const pf_config_t *cfg)
{
	const pf_config_t *old = w->cfg;

	w->cfg = pf_config_ref(cfg);
	w->net.cfg = w->cfg;
	if (cfg->pkt_buf > 0 && (size_t)cfg->pkt_buf != w->net.buffer_size) {
		/* Buffers of the old size are freed as they come back. */
		pf_net_free(&w->net);
		w->net.buffer_size = (size_t)cfg->pkt_buf;
	}
	if (old)
		retune_listeners(w, old, cfg);
	pf_worker_load_auth_file(w);
	if (pf_database_sync_config(w) < 0)
		pf_log_error(NULL, "out of memory applying the new [databases]");
	if (w->dns) {
		/* dns_max_ttl / dns_nxdomain_ttl apply to the next answers; the zone check's period
		 * at once. */
		pf_dns_set_ttl(w->dns, cfg->dns_max_ttl, cfg->dns_nxdomain_ttl);
		if (pf_dns_set_zone_check(w->dns, cfg->dns_zone_check_period) < 0)
			pf_log_warning(NULL, "dns_zone_check_period: cannot start its timer");
	}
	pf_config_unref(old);
}

/* At most this many connections are taken from one listener's queue before it closes (a
 * flood of new connections must not keep the shutdown from going on). */
#define DRAIN_MAX 65536

/*
 * Takes every connection already in l's accept queue (the one libuv holds first): closing the
 * listener would reset them. They are served like the others (a rolling restart).
 */
static void drain_listener(pf_worker_t *w, listener_t *l)
{
	uv_os_fd_t lfd;
	size_t n = 0;

	if (l->held) {
		l->held = false;
		pf_client_accept(w, &l->h.stream, l->is_unix);
		n++;
	}
	if (l->is_unix || uv_fileno(&l->h.handle, &lfd) < 0)
		return;
	while (n < DRAIN_MAX) {
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				pf_log_warning(NULL, "accept() failed on %s: %s", l->desc,
				               strerror(errno));
			break;
		}
		pf_client_accept_fd(w, fd);
		n++;
	}
	if (n > 0)
		pf_log_info(NULL, "took %zu queued connection%s from %s before closing it", n,
		            n == 1 ? "" : "s", l->desc);
}

/*
 * Closes the listeners; with tcp_only the unix socket stays open for the console. With drain,
 * the connections already queued on a TCP listener are accepted first.
 */
static void close_listeners(pf_worker_t *w, bool tcp_only, bool drain)
{
	for (size_t i = 0; i < w->nlisteners; i++) {
		listener_t *l = &w->listeners[i];

		if (!l->open || uv_is_closing(&l->h.handle) || (tcp_only && l->is_unix))
			continue;
		if (drain)
			drain_listener(w, l);
		if (l->is_unix && l->path[0])
			unlink(l->path);
		uv_close(&l->h.handle, on_listener_closed);
	}
	if (!tcp_only)
		pf_metrics_stop(w);
}

/* How long a client must have been quiet before a WAIT_FOR_CLIENTS shutdown closes it. */
#define SHUTDOWN_QUIET (PF_USEC_PER_SEC / 5)

/*
 * Whether client c is between transactions (and quiet for SHUTDOWN_QUIET): nothing of its own
 * unprocessed or half-sent, and no server, or (session mode) a server idle outside a transaction
 * that owes it nothing.
 */
static bool client_between_transactions(pf_client_t *c, pf_usec_t now)
{
	pf_server_t *s = pf_client_server(c);
	pf_usec_t last =
	        c->conn.request_time > c->pc.released ? c->conn.request_time : c->pc.released;

	if (pf_client_is_console(c) || c->conn.closing || c->pc.state != PF_CL_ACTIVE ||
	    pf_conn_has_input(&c->conn) || pf_conn_mid_message(&c->conn))
		return false;
	/* Quiet for a moment: an application that has just checked its connection (an empty
	 * query, as psycopg_pool does) sends its transaction right after the answer. */
	if (now - last < SHUTDOWN_QUIET)
		return false;
	if (!s)
		return true;
	return s->tx_status == PF_PROTO_TX_IDLE && s->task == PF_SV_TASK_NONE &&
	       pf_reqq_is_idle(&s->rq) && !pf_conn_mid_message(&s->conn) &&
	       !pf_conn_has_input(&s->conn) && !s->conn.fwd_pending;
}

void pf_worker_close_idle_clients(pf_worker_t *w)
{
	pf_list_node_t *it, *tmp;
	pf_usec_t now = pf_worker_now(w);

	PF_LIST_FOREACH(&w->pools, it, tmp)
	{
		pf_pool_t *p = PF_CONTAINER_OF(it, pf_pool_t, node);
		pf_list_node_t *ci, *ctmp;

		if (p->db->admin)
			continue;
		/* A close takes only c off the list (its server, if any, goes back to the pool and
		 * may be linked to a waiting client, which joins the end of the list). */
		PF_LIST_FOREACH(&p->active_clients, ci, ctmp)
		{
			pf_client_t *c = pf_client_from_node(ci);

			if (client_between_transactions(c, now))
				pf_client_close(c, PF_CLOSE_CLIENT_SHUTDOWN, NULL, NULL);
		}
	}
}

/* SHUTDOWN WAIT_FOR_SERVERS: clients waiting for a server will not get one (PgBouncer). */
static void close_waiting_clients(pf_worker_t *w)
{
	pf_list_node_t *it, *tmp, *n;

	PF_LIST_FOREACH(&w->pools, it, tmp)
	{
		pf_pool_t *p = PF_CONTAINER_OF(it, pf_pool_t, node);

		while ((n = pf_list_first(&p->waiting_clients)))
			w->pool_ops->close_client(PF_CONTAINER_OF(n, pf_pool_client_t, node),
			                          PF_CLOSE_CLIENT_SHUTDOWN, "08P01",
			                          "server shutting down");
	}
}

/*
 * Decides whether the shutdown can finish now: WAIT_FOR_CLIENTS once no client is left,
 * WAIT_FOR_SERVERS once no server is linked to a client, IMMEDIATE at once. Then every client and
 * server is closed and the timer with it; maybe_done() reports when the handles are gone.
 */
void pf_worker_check_shutdown(pf_worker_t *w)
{
	pf_list_node_t *it, *tmp;
	bool ready;

	/* Closing everything below calls back here for every connection: once is enough. */
	if (w->shutdown == PF_SHUTDOWN_NONE || w->done_reported || w->closing_all)
		return;
	switch (w->shutdown) {
	case PF_SHUTDOWN_WAIT_FOR_CLIENTS: {
		/* Console sessions do not hold the shutdown up (they may be watching it). */
		size_t console = 0;

		PF_LIST_FOREACH(&w->pools, it, tmp)
		{
			pf_pool_t *p = PF_CONTAINER_OF(it, pf_pool_t, node);

			if (p->db->admin)
				console += p->active_clients.len;
		}
		ready = w->client_count <= console;
		break;
	}
	case PF_SHUTDOWN_WAIT_FOR_SERVERS:
		ready = true;
		PF_LIST_FOREACH(&w->pools, it, tmp)
		{
			pf_pool_t *p = PF_CONTAINER_OF(it, pf_pool_t, node);

			if (p->active_servers.len > 0)
				ready = false;
		}
		break;
	default:
		ready = true;
		break;
	}
	if (!ready)
		return;
	close_listeners(w, false, false);
	w->closing_all = true;
	pf_worker_close_all(w);
	w->closing_all = false;
	pf_conn_park_shutdown(&w->net);
	if (!uv_is_closing((uv_handle_t *)&w->janitor))
		uv_close((uv_handle_t *)&w->janitor, on_handle_closed);
	if (!uv_is_closing((uv_handle_t *)&w->iteration_check))
		uv_close((uv_handle_t *)&w->iteration_check, on_handle_closed);
	if (!uv_is_closing((uv_handle_t *)&w->iteration_prepare))
		uv_close((uv_handle_t *)&w->iteration_prepare, on_handle_closed);
	maybe_done(w);
}

void pf_worker_shutdown(pf_worker_t *w, pf_shutdown_mode_t mode, void (*done)(void *), void *arg)
{
	if (mode <= w->shutdown)
		return;
	w->shutdown = mode;
	w->shutdown_done = done;
	w->shutdown_arg = arg;
	/* While waiting, the unix socket still admits the console (PgBouncer 1.23+). Waiting for
	 * clients, what the TCP listeners have queued is served too (a rolling restart). */
	close_listeners(w, mode != PF_SHUTDOWN_IMMEDIATE, mode == PF_SHUTDOWN_WAIT_FOR_CLIENTS);
	w->shutdown_last_id = w->net.next_id;
	if (mode == PF_SHUTDOWN_WAIT_FOR_CLIENTS)
		pf_worker_close_idle_clients(w);
	else if (mode == PF_SHUTDOWN_WAIT_FOR_SERVERS)
		close_waiting_clients(w);
	/* The rest (pf_worker_check_shutdown) happens in the janitor, at once but from the loop:
	 * the console that asked begins the shutdown before it answers (no connection may reach
	 * a listener after the answer), and the answer must still go out. */
	if (!uv_is_closing((uv_handle_t *)&w->janitor)) {
		uv_ref((uv_handle_t *)&w->janitor);
		uv_timer_start(&w->janitor, on_janitor, 0, 1000);
	} else {
		pf_worker_check_shutdown(w);
	}
}

pf_shutdown_mode_t pf_worker_shutdown_mode(const pf_worker_t *w)
{
	return w->shutdown;
}

void pf_worker_pause(pf_worker_t *w)
{
	/* SIGUSR1 = PAUSE: servers are disconnected as their clients release them. */
	w->paused = true;
	pf_pool_tag_reconnect(w, NULL);
}

static void suspend_clients(pf_list_t *l, bool on)
{
	pf_list_node_t *it, *tmp;

	PF_LIST_FOREACH(l, it, tmp)
	{
		pf_client_t *c = pf_client_from_node(it);

		/* The console stays usable: RESUME must be able to arrive. */
		if (!pf_client_is_console(c))
			pf_conn_suspend(&c->conn, on);
	}
}

static void suspend_servers(pf_list_t *l, bool on)
{
	pf_list_node_t *it, *tmp;

	PF_LIST_FOREACH(l, it, tmp)
	{
		pf_conn_suspend(&pf_server_from_node(it)->conn, on);
	}
}

void pf_worker_set_suspended(pf_worker_t *w, bool on)
{
	pf_list_node_t *it, *tmp;

	w->suspended = on;
	if (!on)
		release_held_accepts(w);
	suspend_clients(&w->login_clients, on);
	PF_LIST_FOREACH(&w->pools, it, tmp)
	{
		pf_pool_t *p = PF_CONTAINER_OF(it, pf_pool_t, node);

		suspend_clients(&p->active_clients, on);
		suspend_clients(&p->waiting_clients, on);
		suspend_servers(&p->active_servers, on);
		suspend_servers(&p->idle_servers, on);
		suspend_servers(&p->used_servers, on);
		suspend_servers(&p->tested_servers, on);
		suspend_servers(&p->new_servers, on);
	}
}

void pf_worker_resume(pf_worker_t *w)
{
	w->paused = false;
	pf_worker_kick_pools(w);
}

void pf_worker_set_tls(pf_worker_t *w, pf_tls_ctx_t *accept, pf_tls_ctx_t *connect,
                       bool server_changed)
{
	pf_tls_ctx_unref(w->tls_accept);
	pf_tls_ctx_unref(w->tls_connect);
	w->tls_accept = accept;
	w->tls_connect = connect;
	if (server_changed)
		pf_pool_tag_reconnect(w, NULL);
}

void pf_worker_set_auth_rules(pf_worker_t *w, pf_hba_t *hba, pf_ident_t *ident)
{
	pf_hba_free(w->hba);
	pf_ident_free(w->ident);
	w->hba = hba;
	w->ident = ident;
}

void pf_worker_free(pf_worker_t *w)
{
	pf_worker_set_auth_rules(w, NULL, NULL);
	pf_tls_ctx_unref(w->tls_accept);
	pf_tls_ctx_unref(w->tls_connect);
	pf_database_free_all(w);
	pf_user_free_all(w);
	pf_auth_file_free(w->auth_file);
	pf_scram_cache_free(w->scram_cache);
	pf_prepared_registry_free(w->prepared);
	pf_peer_free(w);
	pf_dns_free(w->dns);
	pf_config_unref(w->cfg);
	/* Every connection closed: its handle went back (a parked one closed its socket). */
	assert(w->net.handles_in_use == 0 && w->net.parked == 0);
	pf_net_free(&w->net);
	free(w);
}

void pf_worker_close_all(pf_worker_t *w)
{
	pf_list_node_t *it, *tmp;

	pf_pool_close_clients(w, &w->login_clients, PF_CLOSE_CLIENT_SHUTDOWN);
	pf_pool_close_clients(w, &w->cancel_clients, PF_CLOSE_CLIENT_SHUTDOWN);
	pf_server_close_cancels(w);
	pf_peer_close_all(w);
	PF_LIST_FOREACH(&w->pools, it, tmp)
	{
		pf_pool_close_all(PF_CONTAINER_OF(it, pf_pool_t, node), PF_CLOSE_CLIENT_SHUTDOWN,
		                  PF_SV_CLOSE_SHUTDOWN);
	}
}

void pf_worker_kick_pools(pf_worker_t *w)
{
	pf_list_node_t *it, *tmp;

	PF_LIST_FOREACH(&w->pools, it, tmp)
	{
		pf_pool_kick(PF_CONTAINER_OF(it, pf_pool_t, node));
	}
}

static size_t describe(const void *obj, char *buf, size_t n)
{
	const pf_conn_t *c = obj;

	if (c->is_client)
		return pf_client_describe((const pf_client_t *)c, buf, n);
	return pf_server_describe((const pf_server_t *)c, buf, n);
}

void pf_worker_setup_logging(void)
{
	pf_log_set_describer(describe);
}
