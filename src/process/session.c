/*
 * session: the pool's operations on real clients and servers (see include/pgfunnel/session.h).
 */
#include "pfbuild.h"

#include "pgfunnel/authquery.h"
#include "pgfunnel/client.h"
#include "pgfunnel/log.h"
#include "pgfunnel/server.h"
#include "pgfunnel/session.h"

static int launch_server(pf_pool_t *pool)
{
	return pf_server_launch(pool);
}

static void close_server(pf_pool_server_t *s, pf_server_close_reason_t reason)
{
	pf_server_close(pf_server_of(s), reason);
}

static void close_client(pf_pool_client_t *c, pf_close_reason_t reason, const char *sqlstate,
                         const char *message)
{
	pf_client_close(pf_client_of(c), reason, sqlstate, message);
}

static void linked(pf_pool_server_t *ps, pf_pool_client_t *pc)
{
	pf_server_t *s = pf_server_of(ps);
	pf_client_t *c = pf_client_of(pc);
	pf_worker_t *w = ps->pool->worker;

	if (pf_client_in_lookup(c)) {
		/* A logging-in client's lookup: the server answers it, not the client. */
		pf_authq_linked(c, s);
		return;
	}
	pf_server_attach(s, &c->peer, &c->conn);
	pf_conn_pause_reading(&c->conn, false);
	/* Its queued messages run now, unless links nest too deep: a client that leaves at once
	 * releases the server to the next one, and so on, one stack frame each. */
	if (w->link_depth < PF_SESSION_LINK_DEPTH_MAX) {
		w->link_depth++;
		pf_client_resume(c);
		w->link_depth--;
	} else {
		pf_conn_defer_resume(&c->conn);
	}
}

static void resume_client(pf_pool_client_t *c)
{
	pf_client_resume(pf_client_of(c));
}

static void login_done(pf_pool_client_t *c)
{
	pf_client_finish_login(pf_client_of(c));
}

static void lookup_done(pf_pool_client_t *c)
{
	pf_authq_done(pf_client_of(c));
}

static int test_server(pf_pool_server_t *s, bool reset, const char *sql)
{
	return pf_server_run_task(pf_server_of(s), reset ? PF_SV_TASK_RESET : PF_SV_TASK_CHECK,
	                          sql);
}

static bool server_is_clean(const pf_pool_server_t *s)
{
	return pf_server_is_clean(pf_server_of(s));
}

static bool server_is_uncertain(const pf_pool_server_t *s)
{
	return pf_server_is_uncertain(pf_server_of(s));
}

static bool server_has_cancels(const pf_pool_server_t *s)
{
	return !pf_list_is_empty(&pf_server_of(s)->cancels);
}

static bool client_mid_message(const pf_pool_client_t *c)
{
	return pf_conn_mid_message(&pf_client_of(c)->conn);
}

static void warn_server(const pf_pool_server_t *s, const char *text)
{
	pf_log_warning(pf_server_of(s), "%s", text);
}

const pf_pool_ops_t pf_session_pool_ops = {
        .launch_server = launch_server,
        .close_server = close_server,
        .close_client = close_client,
        .linked = linked,
        .resume_client = resume_client,
        .login_done = login_done,
        .lookup_done = lookup_done,
        .test_server = test_server,
        .server_is_clean = server_is_clean,
        .server_is_uncertain = server_is_uncertain,
        .server_has_cancels = server_has_cancels,
        .client_mid_message = client_mid_message,
        .warn_server = warn_server,
};
