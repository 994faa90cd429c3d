/*
 * pool: runtime databases and users built from the config snapshot and auth_file, the
 * (database, user) pools, and every move of a client or server between the pools' lists.
 *
 * Invariants:
 * - A client or server is on exactly the list its state names (pool.h); only
 *   pf_pool_set_client_state() and pf_pool_set_server_state() write ->state.
 * - A server is linked to at most one client and vice versa; both links change together.
 * - waiting_clients is in arrival order; a server that becomes free goes to its head.
 * - Every pool's user is alive: a user counts its pools (pool_refs) and is freed only when
 *   none is left; a forced user replaced by a reload is retired until its pools are gone.
 *
 * Called by client.c (acquire, login), server.c (ready, failed, release) and the worker's janitor;
 * it reaches clients and servers only through their embedded members and worker->pool_ops, so the
 * unit tests drive it without sockets (tests/unit/test_pool.c).
 */
#include "pfbuild.h"

#include <assert.h>
#include <limits.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/crypto.h>

#include "pgfunnel/log.h"
#include "pgfunnel/pool.h"
#include "pgfunnel/runtime.h"
#include "pgfunnel/scram.h"

static const pf_pool_ops_t *ops_of(const pf_pool_t *pool)
{
	return pool->worker->pool_ops;
}

/* ---- secrets and users ---- */

static void secret_clear(pf_secret_t *sec)
{
	if (sec->text) {
		OPENSSL_cleanse(sec->text, strlen(sec->text));
		free(sec->text);
	}
	OPENSSL_cleanse(sec, sizeof(*sec));
}

static int secret_from_entry(pf_secret_t *sec, const pf_auth_entry_t *e)
{
	memset(sec, 0, sizeof(*sec));
	sec->present = true;
	sec->kind = e->kind;
	if (e->kind == PF_AUTH_SECRET_SCRAM) {
		sec->scram = e->scram;
		return 0;
	}
	sec->text = strdup(e->secret);
	return sec->text ? 0 : -ENOMEM;
}

/* A password given in a [databases] entry: plain, or an md5/SCRAM secret. */
static int secret_from_text(pf_secret_t *sec, const char *text)
{
	memset(sec, 0, sizeof(*sec));
	sec->present = true;
	if (pf_scram_is_secret(text) && pf_scram_secret_parse(text, &sec->scram) == 0) {
		sec->kind = PF_AUTH_SECRET_SCRAM;
		return 0;
	}
	sec->kind = pf_md5_is_secret(text) ? PF_AUTH_SECRET_MD5 : PF_AUTH_SECRET_PLAIN;
	sec->text = strdup(text);
	return sec->text ? 0 : -ENOMEM;
}

/* Compares two secrets; the secret bytes in constant time (lengths are not secret). */
static bool secret_equal(const pf_secret_t *a, const pf_secret_t *b)
{
	size_t alen, blen;

	if (a->present != b->present || a->kind != b->kind)
		return false;
	if (a->kind == PF_AUTH_SECRET_SCRAM)
		return a->scram.iterations == b->scram.iterations &&
		       a->scram.salt_len == b->scram.salt_len &&
		       memcmp(a->scram.salt, b->scram.salt, a->scram.salt_len) == 0 &&
		       pf_memeq_ct(a->scram.stored_key, b->scram.stored_key, PF_SCRAM_KEY_LEN) &&
		       pf_memeq_ct(a->scram.server_key, b->scram.server_key, PF_SCRAM_KEY_LEN);
	if (!a->text || !b->text)
		return a->text == b->text;
	alen = strlen(a->text);
	blen = strlen(b->text);
	return alen == blen && pf_memeq_ct(a->text, b->text, alen);
}

static void user_apply_config(pf_user_t *u, const pf_config_t *cfg)
{
	const pf_config_user_t *cu = pf_config_find_user(cfg, u->name);

	u->pool_mode = cu ? cu->pool_mode : PF_POOL_INHERIT;
	u->pool_size = cu ? cu->pool_size : -1;
	u->reserve_pool_size = cu ? cu->reserve_pool_size : -1;
	u->max_user_connections = cu ? cu->max_user_connections : -1;
	u->query_timeout = cu ? cu->query_timeout : -1;
	u->query_wait_timeout = cu ? cu->query_wait_timeout : -1;
	u->idle_transaction_timeout = cu ? cu->idle_transaction_timeout : -1;
	u->transaction_timeout = cu ? cu->transaction_timeout : -1;
	u->client_idle_timeout = cu ? cu->client_idle_timeout : -1;
	u->max_user_client_connections = cu ? cu->max_user_client_connections : -1;
}

static pf_user_t *user_new(const char *name)
{
	pf_user_t *u = calloc(1, sizeof(*u));

	if (!u)
		return NULL;
	u->name = strdup(name);
	if (!u->name) {
		free(u);
		return NULL;
	}
	pf_list_node_init(&u->node);
	u->pool_mode = PF_POOL_INHERIT;
	u->pool_size = u->reserve_pool_size = u->max_user_connections = -1;
	u->query_timeout = u->query_wait_timeout = -1;
	u->idle_transaction_timeout = u->client_idle_timeout = u->transaction_timeout = -1;
	u->max_user_client_connections = -1;
	return u;
}

static void user_free(pf_user_t *u)
{
	if (!u)
		return;
	assert(u->pool_refs == 0);
	secret_clear(&u->secret);
	free(u->name);
	free(u);
}

/*
 * Frees a dynamic user (pf_user_t.dyn_db) once no client and no pool refers to it any more.
 * Returns true when it was freed.
 */
static bool dynamic_user_release(pf_user_t *u)
{
	if (!u->dyn_db || u->client_count > 0 || u->pool_refs > 0)
		return false;
	pf_list_remove(&u->dyn_db->dyn_users, &u->node);
	user_free(u);
	return true;
}

void pf_user_client_gone(pf_user_t *u)
{
	assert(u->client_count > 0);
	u->client_count--;
	dynamic_user_release(u);
}

static pf_user_t *user_lookup(pf_list_t *l, const char *name)
{
	pf_list_node_t *it, *tmp;

	PF_LIST_FOREACH(l, it, tmp)
	{
		pf_user_t *u = PF_CONTAINER_OF(it, pf_user_t, node);

		if (strcmp(u->name, name) == 0)
			return u;
	}
	return NULL;
}

pf_user_t *pf_worker_find_user(pf_worker_t *w, const char *name)
{
	const pf_auth_entry_t *e;
	pf_user_t *u = user_lookup(&w->users, name);

	if (u) {
		/* Made only to be an auth_user: not a login name until auth_file gives it a
		 * secret (auth_type=any never looks at secrets). */
		if (u->lookup_only && !u->secret.present && w->cfg->auth_type != PF_AUTH_ANY)
			return NULL;
		return u;
	}
	/*
	 * auth_type=any ignores the user name entirely (every database must force a user), so a
	 * name need not be in auth_file; everywhere else an unknown name is refused by the caller.
	 */
	e = w->auth_file ? pf_auth_file_find(w->auth_file, name) : NULL;
	if (!e && w->cfg->auth_type != PF_AUTH_ANY)
		return NULL;
	u = user_new(name);
	if (!u)
		return NULL;
	if (e && secret_from_entry(&u->secret, e) < 0) {
		user_free(u);
		return NULL;
	}
	user_apply_config(u, w->cfg);
	pf_list_append(&w->users, &u->node);
	return u;
}

pf_user_t *pf_worker_auth_user(pf_worker_t *w, const char *name)
{
	const pf_auth_entry_t *e;
	pf_user_t *u = user_lookup(&w->users, name);

	if (u)
		return u;
	u = user_new(name);
	if (!u)
		return NULL;
	/* PgBouncer: the auth_user's password comes from auth_file; without an entry it logs in
	 * with none (a server that trusts it). */
	e = w->auth_file ? pf_auth_file_find(w->auth_file, name) : NULL;
	if (e && secret_from_entry(&u->secret, e) < 0) {
		user_free(u);
		return NULL;
	}
	u->lookup_only = true;
	user_apply_config(u, w->cfg);
	pf_list_append(&w->users, &u->node);
	return u;
}

pf_user_t *pf_database_found_user(pf_database_t *db, const pf_config_t *cfg, const char *name,
                                  const char *secret)
{
	pf_user_t *u = user_lookup(&db->dyn_users, name);
	pf_secret_t fresh = {0};

	/* PgBouncer refuses an empty password whatever its source: it is no secret at all. */
	if (secret && *secret && secret_from_text(&fresh, secret) < 0)
		return NULL;
	if (!u) {
		u = user_new(name);
		if (!u) {
			secret_clear(&fresh);
			return NULL;
		}
		u->dyn_db = db;
		u->secret = fresh;
		user_apply_config(u, cfg);
		pf_list_append(&db->dyn_users, &u->node);
		return u;
	}
	if (secret_equal(&fresh, &u->secret)) {
		/* The same secret: a ClientKey learnt from it stays good. */
		secret_clear(&fresh);
		return u;
	}
	secret_clear(&u->secret);
	u->secret = fresh;
	u->secret_gen++;
	return u;
}

void pf_user_sync_auth_file(pf_worker_t *w)
{
	pf_list_node_t *it, *tmp;

	PF_LIST_FOREACH(&w->users, it, tmp)
	{
		pf_user_t *u = PF_CONTAINER_OF(it, pf_user_t, node);
		const pf_auth_entry_t *e =
		        w->auth_file ? pf_auth_file_find(w->auth_file, u->name) : NULL;
		pf_secret_t fresh = {0};

		user_apply_config(u, w->cfg);
		if (e && secret_from_entry(&fresh, e) < 0)
			continue;
		if (secret_equal(&fresh, &u->secret)) {
			secret_clear(&fresh);
			continue;
		}
		/* A changed secret also forgets the ClientKey learnt from the old one, and logins
		 * that began with the old one fail (pf_user_t.secret_gen). */
		secret_clear(&u->secret);
		u->secret = fresh;
		u->secret_gen++;
	}
}

void pf_user_free_all(pf_worker_t *w)
{
	pf_list_node_t *n;

	while ((n = pf_list_pop(&w->users)))
		user_free(PF_CONTAINER_OF(n, pf_user_t, node));
}

/* ---- databases ---- */

static char *dup_or_null(const char *s)
{
	return s ? strdup(s) : NULL;
}

static bool str_equal(const char *a, const char *b)
{
	if (!a || !b)
		return a == b;
	return strcmp(a, b) == 0;
}

/*
 * A forced user its database no longer uses: freed now if no pool points at it, else when its
 * last pool goes (pf_pool_free); until then its pools keep working and SHOW POOLS lists them.
 */
static void user_retire(pf_user_t *u)
{
	if (!u)
		return;
	if (u->pool_refs == 0) {
		user_free(u);
		return;
	}
	u->retired = true;
}

static void database_free(pf_database_t *db)
{
	pf_list_node_t *n;

	/* Its pools went first, and no client names it any more: nothing refers to these. */
	while ((n = pf_list_pop(&db->dyn_users))) {
		pf_user_t *u = PF_CONTAINER_OF(n, pf_user_t, node);

		assert(u->pool_refs == 0 && u->client_count == 0);
		user_free(u);
	}
	free(db->auth_user);
	free(db->auth_query);
	free(db->auth_dbname);
	free(db->name);
	free(db->host);
	free(db->dbname);
	free(db->connect_query);
	free(db->startup_client_encoding);
	free(db->startup_datestyle);
	free(db->startup_timezone);
	free(db->startup_application_name);
	user_retire(db->forced_user);
	free(db);
}

/*
 * The connection settings of db changed (reload): its servers are replaced as they are
 * released, and the next server's parameters become the pools' welcome.
 */
static void tag_servers_for_reconnect(pf_worker_t *w, pf_database_t *db)
{
	pf_list_node_t *it, *tmp;

	pf_pool_tag_reconnect(w, db);
	PF_LIST_FOREACH(&w->pools, it, tmp)
	{
		pf_pool_t *p = PF_CONTAINER_OF(it, pf_pool_t, node);

		if (p->db == db)
			p->welcome_ready = false;
	}
}

/*
 * Copies a [databases] entry into db. For an auto-created database the entry is the "*" one and
 * dbname defaults to the name the client asked for. Returns 0 or -ENOMEM.
 */
static int database_apply(pf_worker_t *w, pf_database_t *db, const pf_config_db_t *e)
{
	const char *dbname = e->dbname ? e->dbname : db->name;
	bool changed;
	pf_user_t *forced = NULL;

	if (e->user) {
		forced = user_new(e->user);
		if (!forced)
			return -ENOMEM;
		if (e->password) {
			if (secret_from_text(&forced->secret, e->password) < 0) {
				user_free(forced);
				return -ENOMEM;
			}
		} else if (w->auth_file) {
			const pf_auth_entry_t *ae = pf_auth_file_find(w->auth_file, e->user);

			if (ae && secret_from_entry(&forced->secret, ae) < 0) {
				user_free(forced);
				return -ENOMEM;
			}
		}
		user_apply_config(forced, w->cfg);
	}
	changed = !str_equal(db->host, e->host) || db->port != e->port ||
	          !str_equal(db->dbname, dbname) ||
	          !str_equal(db->forced_user ? db->forced_user->name : NULL, e->user) ||
	          (forced && db->forced_user &&
	           !secret_equal(&forced->secret, &db->forced_user->secret));

	if (changed && db->dbname)
		tag_servers_for_reconnect(w, db);
	if (db->forced_user && forced && strcmp(db->forced_user->name, forced->name) == 0) {
		/* Same user: keep the object pools point at, refresh its secret and settings. */
		if (!secret_equal(&forced->secret, &db->forced_user->secret)) {
			secret_clear(&db->forced_user->secret);
			db->forced_user->secret = forced->secret;
			memset(&forced->secret, 0, sizeof(forced->secret));
		}
		user_apply_config(db->forced_user, w->cfg);
		user_free(forced);
	} else if (forced || db->forced_user) {
		/* The old forced user lives on with its pools until they go. */
		user_retire(db->forced_user);
		db->forced_user = forced;
	}

	free(db->host);
	free(db->dbname);
	free(db->connect_query);
	free(db->startup_client_encoding);
	free(db->startup_datestyle);
	free(db->startup_timezone);
	free(db->startup_application_name);
	free(db->auth_user);
	free(db->auth_query);
	free(db->auth_dbname);
	db->auth_user = dup_or_null(e->auth_user);
	db->auth_query = dup_or_null(e->auth_query);
	db->auth_dbname = dup_or_null(e->auth_dbname);
	db->host = dup_or_null(e->host);
	db->port = e->port > 0 ? e->port : 5432;
	db->lb_disable = e->load_balance_hosts == PF_LB_DISABLE;
	db->dbname = strdup(dbname);
	db->connect_query = dup_or_null(e->connect_query);
	db->startup_client_encoding = dup_or_null(e->client_encoding);
	db->startup_datestyle = dup_or_null(e->datestyle);
	db->startup_timezone = dup_or_null(e->timezone);
	db->startup_application_name = dup_or_null(e->application_name);
	db->pool_size = e->pool_size;
	db->min_pool_size = e->min_pool_size;
	db->reserve_pool_size = e->reserve_pool_size;
	db->max_db_connections = e->max_db_connections;
	db->max_db_client_connections = e->max_db_client_connections;
	db->pool_mode = e->pool_mode;
	db->server_lifetime = e->server_lifetime;
	db->query_wait_timeout = e->query_wait_timeout;
	db->in_config = true;
	if (!db->dbname || (e->host && !db->host) || (e->auth_user && !db->auth_user) ||
	    (e->auth_query && !db->auth_query) || (e->auth_dbname && !db->auth_dbname))
		return -ENOMEM;
	return 0;
}

static pf_database_t *database_new(pf_worker_t *w, const char *name)
{
	pf_database_t *db = calloc(1, sizeof(*db));

	if (!db)
		return NULL;
	db->name = strdup(name);
	if (!db->name) {
		free(db);
		return NULL;
	}
	pf_list_init(&db->dyn_users);
	db->pool_mode = PF_POOL_INHERIT;
	db->pool_size = db->min_pool_size = db->reserve_pool_size = db->max_db_connections = -1;
	db->max_db_client_connections = -1;
	db->server_lifetime = -1;
	db->query_wait_timeout = -1;
	pf_list_append(&w->databases, &db->node);
	return db;
}

static pf_database_t *database_lookup(pf_worker_t *w, const char *name)
{
	pf_list_node_t *it, *tmp;

	PF_LIST_FOREACH(&w->databases, it, tmp)
	{
		pf_database_t *db = PF_CONTAINER_OF(it, pf_database_t, node);

		if (strcmp(db->name, name) == 0)
			return db;
	}
	return NULL;
}

int pf_database_sync_config(pf_worker_t *w)
{
	const pf_config_t *cfg = w->cfg;
	pf_list_node_t *it, *tmp;
	pf_database_t *db;

	PF_LIST_FOREACH(&w->databases, it, tmp)
	{
		db = PF_CONTAINER_OF(it, pf_database_t, node);
		if (!db->admin)
			db->in_config = false;
	}
	for (size_t i = 0; i < cfg->n_dbs; i++) {
		const pf_config_db_t *e = &cfg->dbs[i];

		db = database_lookup(w, e->name);
		if (!db) {
			db = database_new(w, e->name);
			if (!db)
				return -ENOMEM;
		}
		db->autodb = false;
		if (database_apply(w, db, e) < 0)
			return -ENOMEM;
	}
	/* Auto-created databases follow the "*" entry while it exists; users auth_query found
	 * follow [users]. */
	PF_LIST_FOREACH(&w->databases, it, tmp)
	{
		pf_list_node_t *uit, *utmp;

		db = PF_CONTAINER_OF(it, pf_database_t, node);
		if (db->autodb && cfg->fallback_db && database_apply(w, db, cfg->fallback_db) < 0)
			return -ENOMEM;
		PF_LIST_FOREACH(&db->dyn_users, uit, utmp)
		{
			user_apply_config(PF_CONTAINER_OF(uit, pf_user_t, node), cfg);
		}
	}
	db = database_lookup(w, PF_ADMIN_DBNAME);
	if (!db || !db->admin) {
		db = database_new(w, PF_ADMIN_DBNAME);
		if (!db)
			return -ENOMEM;
		db->admin = true;
		db->dbname = strdup(PF_ADMIN_DBNAME);
		db->pool_mode = PF_POOL_STATEMENT;
		/* Console clients are listed under this pseudo user, as PgBouncer's are. */
		db->forced_user = user_new(PF_ADMIN_DBNAME_ALIAS);
		if (!db->dbname || !db->forced_user)
			return -ENOMEM;
	}
	db->in_config = true;
	return 0;
}

const char *pf_database_auth_user(const pf_database_t *db, const pf_config_t *cfg)
{
	return db->auth_user ? db->auth_user : cfg->auth_user;
}

const char *pf_database_auth_query(const pf_database_t *db, const pf_config_t *cfg)
{
	return db->auth_query ? db->auth_query : cfg->auth_query;
}

const char *pf_database_auth_dbname(const pf_database_t *db, const pf_config_t *cfg)
{
	return db->auth_dbname ? db->auth_dbname : cfg->auth_dbname;
}

pf_database_t *pf_worker_find_database(pf_worker_t *w, const char *name)
{
	pf_database_t *db;

	if (strcmp(name, PF_ADMIN_DBNAME_ALIAS) == 0)
		name = PF_ADMIN_DBNAME;
	db = database_lookup(w, name);
	if (db && db->in_config)
		return db;
	if (!w->cfg->fallback_db)
		return NULL;
	if (!db) {
		db = database_new(w, name);
		if (!db)
			return NULL;
	}
	db->autodb = true;
	if (database_apply(w, db, w->cfg->fallback_db) < 0)
		return NULL;
	pf_log_info(NULL, "registered new auto-database: %s", name);
	return db;
}

static bool pool_is_empty(const pf_pool_t *p)
{
	return pf_pool_server_count(p) == 0 && pf_list_is_empty(&p->active_clients) &&
	       pf_list_is_empty(&p->waiting_clients);
}

void pf_database_maintain(pf_worker_t *w, pf_usec_t now)
{
	pf_list_node_t *it, *tmp;

	/* Pools of a retired forced user take no new clients, and those of a user auth_query
	 * found are made again by its next login: drop them once empty (which frees the user
	 * when no client refers to it either). */
	PF_LIST_FOREACH(&w->pools, it, tmp)
	{
		pf_pool_t *p = PF_CONTAINER_OF(it, pf_pool_t, node);

		if ((p->user->retired || p->user->dyn_db) && pool_is_empty(p))
			pf_pool_free(p);
	}

	PF_LIST_FOREACH(&w->databases, it, tmp)
	{
		pf_database_t *db = PF_CONTAINER_OF(it, pf_database_t, node);

		if (db->admin || db->server_count > 0 || db->client_count > 0 ||
		    db->client_refs > 0) {
			db->inactive_since = 0;
			continue;
		}
		if (!db->inactive_since) {
			db->inactive_since = now;
			continue;
		}
		if ((db->autodb && w->cfg->autodb_idle_timeout > 0 &&
		     now - db->inactive_since > w->cfg->autodb_idle_timeout) ||
		    !db->in_config) {
			pf_list_node_t *pit, *ptmp;

			PF_LIST_FOREACH(&w->pools, pit, ptmp)
			{
				pf_pool_t *p = PF_CONTAINER_OF(pit, pf_pool_t, node);

				if (p->db == db)
					pf_pool_free(p);
			}
			if (db->autodb)
				pf_log_info(NULL, "dropping idle auto-database: %s", db->name);
			else
				pf_log_info(NULL, "dropping database removed from the config: %s",
				            db->name);
			pf_list_remove(&w->databases, &db->node);
			database_free(db);
		}
	}
}

void pf_database_free_all(pf_worker_t *w)
{
	pf_list_node_t *n;

	while ((n = pf_list_pop(&w->pools)))
		pf_pool_free(PF_CONTAINER_OF(n, pf_pool_t, node));
	while ((n = pf_list_pop(&w->databases)))
		database_free(PF_CONTAINER_OF(n, pf_database_t, node));
}

pf_usec_t pf_database_server_lifetime(const pf_database_t *db, const pf_config_t *cfg)
{
	return db->server_lifetime >= 0 ? db->server_lifetime : cfg->server_lifetime;
}

void pf_pool_tag_reconnect(pf_worker_t *w, const pf_database_t *db)
{
	pf_list_node_t *it, *tmp, *sit, *stmp, *n;

	PF_LIST_FOREACH(&w->pools, it, tmp)
	{
		pf_pool_t *p = PF_CONTAINER_OF(it, pf_pool_t, node);
		pf_list_t *busy[] = {&p->active_servers, &p->used_servers, &p->tested_servers,
		                     &p->new_servers};

		if (p->db->admin || (db && p->db != db))
			continue;
		for (size_t i = 0; i < PF_ARRAY_SIZE(busy); i++) {
			PF_LIST_FOREACH(busy[i], sit, stmp)
			{
				PF_CONTAINER_OF(sit, pf_pool_server_t, node)->close_needed = true;
			}
		}
		while ((n = pf_list_first(&p->idle_servers)))
			ops_of(p)->close_server(PF_CONTAINER_OF(n, pf_pool_server_t, node),
			                        PF_SV_CLOSE_ADMIN);
	}
}

/* ---- pools ---- */

int pf_pool_mode(const pf_pool_t *pool)
{
	if (pool->user->pool_mode != PF_POOL_INHERIT)
		return pool->user->pool_mode;
	if (pool->db->pool_mode != PF_POOL_INHERIT)
		return pool->db->pool_mode;
	return pool->worker->cfg->pool_mode;
}

int pf_pool_size(const pf_pool_t *pool)
{
	if (pool->user->pool_size >= 0)
		return pool->user->pool_size;
	if (pool->db->pool_size >= 0)
		return pool->db->pool_size;
	return pool->worker->cfg->default_pool_size;
}

static int pool_reserve_size(const pf_pool_t *pool)
{
	if (pool->user->reserve_pool_size >= 0)
		return pool->user->reserve_pool_size;
	if (pool->db->reserve_pool_size >= 0)
		return pool->db->reserve_pool_size;
	return pool->worker->cfg->reserve_pool_size;
}

static int pool_min_size(const pf_pool_t *pool)
{
	if (pool->db->min_pool_size >= 0)
		return pool->db->min_pool_size;
	return pool->worker->cfg->min_pool_size;
}

size_t pf_pool_server_count(const pf_pool_t *pool)
{
	return pool->active_servers.len + pool->idle_servers.len + pool->used_servers.len +
	       pool->tested_servers.len + pool->new_servers.len;
}

pf_pool_t *pf_pool_get(pf_worker_t *w, pf_database_t *db, pf_user_t *user)
{
	pf_list_node_t *it, *tmp;
	pf_pool_t *p;

	PF_LIST_FOREACH(&w->pools, it, tmp)
	{
		p = PF_CONTAINER_OF(it, pf_pool_t, node);
		if (p->db == db && p->user == user)
			return p;
	}
	p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	assert(!user->retired);
	p->worker = w;
	p->db = db;
	p->user = user;
	user->pool_refs++;
	pf_list_init(&p->active_clients);
	pf_list_init(&p->waiting_clients);
	pf_list_init(&p->active_servers);
	pf_list_init(&p->idle_servers);
	pf_list_init(&p->used_servers);
	pf_list_init(&p->tested_servers);
	pf_list_init(&p->new_servers);
	pf_list_append(&w->pools, &p->node);
	return p;
}

static void welcome_clear(pf_pool_t *pool)
{
	for (size_t i = 0; i < pool->n_welcome; i++) {
		free(pool->welcome_names[i]);
		free(pool->welcome_values[i]);
	}
	free(pool->welcome_names);
	free(pool->welcome_values);
	pool->welcome_names = pool->welcome_values = NULL;
	pool->n_welcome = 0;
	pool->welcome_ready = false;
}

int pf_pool_set_welcome(pf_pool_t *pool, size_t n, char *const *names, char *const *values)
{
	welcome_clear(pool);
	pool->welcome_names = calloc(n ? n : 1, sizeof(char *));
	pool->welcome_values = calloc(n ? n : 1, sizeof(char *));
	if (!pool->welcome_names || !pool->welcome_values) {
		welcome_clear(pool);
		return -ENOMEM;
	}
	for (size_t i = 0; i < n; i++) {
		pool->welcome_names[i] = strdup(names[i]);
		pool->welcome_values[i] = strdup(values[i]);
		pool->n_welcome = i + 1;
		if (!pool->welcome_names[i] || !pool->welcome_values[i]) {
			welcome_clear(pool);
			return -ENOMEM;
		}
	}
	pool->welcome_ready = true;
	return 0;
}

void pf_pool_free(pf_pool_t *pool)
{
	/* The database's totals keep what this pool counted. */
	pf_pool_stats_add(&pool->db->stats_retired, &pool->stats);
	if (pool->node.next != &pool->node)
		pf_list_remove(&pool->worker->pools, &pool->node);
	welcome_clear(pool);
	assert(pool->user->pool_refs > 0);
	if (--pool->user->pool_refs == 0 && pool->user->retired)
		user_free(pool->user);
	else
		dynamic_user_release(pool->user);
	free(pool);
}

/* ---- statistics the pool keeps itself ---- */

const pf_usec_t pf_pool_wait_bounds[PF_POOL_WAIT_BUCKETS - 1] = {
        100, 500, 1000, 5000, 10000, 50000, 100000, 500000, 1000000, 5000000, 10000000,
};

void pf_pool_stats_add(pf_pool_stats_t *a, const pf_pool_stats_t *b)
{
	a->server_assignment_count += b->server_assignment_count;
	a->xact_count += b->xact_count;
	a->query_count += b->query_count;
	a->bytes_received += b->bytes_received;
	a->bytes_sent += b->bytes_sent;
	a->xact_time += b->xact_time;
	a->query_time += b->query_time;
	a->wait_time += b->wait_time;
	a->client_parse_count += b->client_parse_count;
	a->server_parse_count += b->server_parse_count;
	a->bind_count += b->bind_count;
}

void pf_pool_note_wait(pf_pool_t *pool, pf_usec_t usec)
{
	size_t b = 0;

	while (b < PF_POOL_WAIT_BUCKETS - 1 && usec > pf_pool_wait_bounds[b])
		b++;
	pool->wait_buckets[b]++;
	pool->wait_count++;
}

/* ---- the lists ---- */

static pf_list_t *client_list(pf_worker_t *w, pf_pool_client_t *c, pf_client_state_t st)
{
	switch (st) {
	case PF_CL_LOGIN:
		return &w->login_clients;
	case PF_CL_CANCEL:
		return &w->cancel_clients;
	case PF_CL_WAITING_LOGIN:
	case PF_CL_WAITING:
		return &c->pool->waiting_clients;
	case PF_CL_ACTIVE:
		return &c->pool->active_clients;
	default:
		return NULL;
	}
}

void pf_pool_client_init(pf_pool_client_t *c)
{
	memset(c, 0, sizeof(*c));
	pf_list_node_init(&c->node);
}

/*
 * Clients in PF_CL_LOGIN and PF_CL_CANCEL have no pool yet: their lists are the worker's, which
 * the caller names through the member of a pool-less client (worker of the conn). To keep the
 * pool free of the connection layer, those two states take the worker from w.
 */
static void set_client_state(pf_worker_t *w, pf_pool_client_t *c, pf_client_state_t st)
{
	pf_list_t *from = client_list(w, c, c->state);
	pf_list_t *to = client_list(w, c, st);

	assert((st != PF_CL_WAITING && st != PF_CL_WAITING_LOGIN && st != PF_CL_ACTIVE) || c->pool);
	if (from)
		pf_list_remove(from, &c->node);
	if (c->state == PF_CL_WAITING_LOGIN)
		c->pool->waiting_login_count--;
	c->state = st;
	if (st == PF_CL_WAITING_LOGIN)
		c->pool->waiting_login_count++;
	if (to)
		pf_list_append(to, &c->node);
}

void pf_pool_set_client_state(pf_pool_client_t *c, pf_client_state_t st)
{
	assert(c->pool);
	set_client_state(c->pool->worker, c, st);
}

void pf_pool_set_worker_client_state(pf_worker_t *w, pf_pool_client_t *c, pf_client_state_t st)
{
	set_client_state(w, c, st);
}

static pf_list_t *server_list(pf_pool_server_t *s, pf_server_state_t st)
{
	switch (st) {
	case PF_SV_LOGIN:
		return &s->pool->new_servers;
	case PF_SV_IDLE:
		return &s->pool->idle_servers;
	case PF_SV_ACTIVE:
		return &s->pool->active_servers;
	case PF_SV_USED:
		return &s->pool->used_servers;
	case PF_SV_TESTED:
		return &s->pool->tested_servers;
	default:
		return NULL;
	}
}

void pf_pool_set_server_state(pf_pool_server_t *s, pf_server_state_t st)
{
	pf_list_t *from = server_list(s, s->state);
	pf_list_t *to = server_list(s, st);

	/* Only an active server is linked. */
	assert(st == PF_SV_ACTIVE || st == PF_SV_FREE || !s->link);
	if (from)
		pf_list_remove(from, &s->node);
	s->state = st;
	if (!to)
		return;
	/*
	 * Idle servers are taken from the head: the most recently used first (warm caches), or
	 * the longest idle first when server_round_robin spreads the load.
	 */
	if (st == PF_SV_IDLE && !s->pool->worker->cfg->server_round_robin)
		pf_list_prepend(to, &s->node);
	else
		pf_list_append(to, &s->node);
}

void pf_pool_add_server(pf_pool_t *pool, pf_pool_server_t *s, pf_usec_t now)
{
	memset(s, 0, sizeof(*s));
	pf_list_node_init(&s->node);
	s->pool = pool;
	s->born = now;
	s->last_used = now;
	pool->db->server_count++;
	pool->user->server_count++;
	pf_pool_set_server_state(s, PF_SV_LOGIN);
}

void pf_pool_close_clients(pf_worker_t *w, pf_list_t *l, pf_close_reason_t reason)
{
	pf_list_node_t *n;

	/* Each close removes the client from l (and may close others): take the head each time. */
	while ((n = pf_list_first(l)))
		w->pool_ops->close_client(PF_CONTAINER_OF(n, pf_pool_client_t, node), reason, NULL,
		                          NULL);
}

void pf_pool_close_all(pf_pool_t *p, pf_close_reason_t client_reason,
                       pf_server_close_reason_t server_reason)
{
	pf_list_t *servers[] = {&p->active_servers, &p->idle_servers, &p->used_servers,
	                        &p->tested_servers, &p->new_servers};
	pf_list_node_t *n;

	/* Waiting clients first: a server released by an active client must not be handed to a
	 * client about to be closed (its queued query would reach Postgres). */
	pf_pool_close_clients(p->worker, &p->waiting_clients, client_reason);
	pf_pool_close_clients(p->worker, &p->active_clients, client_reason);
	for (size_t i = 0; i < PF_ARRAY_SIZE(servers); i++) {
		while ((n = pf_list_first(servers[i])))
			ops_of(p)->close_server(PF_CONTAINER_OF(n, pf_pool_server_t, node),
			                        server_reason);
	}
}

/* ---- linking ---- */

/* Links s to c: both move to their active lists, and the layer above lets c's messages flow. */
static void link_pair(pf_pool_server_t *s, pf_pool_client_t *c, pf_usec_t now)
{
	pf_pool_t *pool = s->pool;

	assert(!s->link && !c->link && c->pool == pool);
	pf_pool_set_server_state(s, PF_SV_ACTIVE);
	s->link = c;
	c->link = s;
	if (c->state != PF_CL_ACTIVE) {
		if (c->wait_start) {
			pool->stats.wait_time += (uint64_t)(now - c->wait_start);
			pf_pool_note_wait(pool, now - c->wait_start);
		}
		pf_pool_set_client_state(c, PF_CL_ACTIVE);
	}
	c->wait_start = 0;
	pool->stats.server_assignment_count++;
	ops_of(pool)->linked(s, c);
}

static void unlink_pair(pf_pool_server_t *s)
{
	if (s->link) {
		assert(s->link->link == s);
		s->link->link = NULL;
		s->link->released = pf_worker_now(s->pool->worker);
	}
	s->link = NULL;
}

/* ---- opening servers ---- */

/* PAUSE (of everything or of the pool's database) or SIGUSR1. */
static bool pool_is_paused(const pf_pool_t *pool)
{
	return pool->worker->paused || pool->db->paused;
}

/* max_db_connections and max_user_connections for pool: the entry's, else the global one. */
static int pool_max_db_connections(const pf_pool_t *pool)
{
	return pool->db->max_db_connections >= 0 ? pool->db->max_db_connections
	                                         : pool->worker->cfg->max_db_connections;
}

static int pool_max_user_connections(const pf_pool_t *pool)
{
	return pool->user->max_user_connections >= 0 ? pool->user->max_user_connections
	                                             : pool->worker->cfg->max_user_connections;
}

/* Why a pool may not open another server now. */
typedef enum launch_verdict {
	LAUNCH_OK,
	LAUNCH_NO,        /* pool full, backing off, shutting down */
	LAUNCH_DB_FULL,   /* max_db_connections reached by this database's pools */
	LAUNCH_USER_FULL, /* max_user_connections reached by this user's pools */
} launch_verdict_t;

static launch_verdict_t launch_verdict(pf_pool_t *pool, bool use_reserve)
{
	pf_worker_t *w = pool->worker;
	const pf_config_t *cfg = w->cfg;
	int size = pf_pool_size(pool) + (use_reserve ? pool_reserve_size(pool) : 0);
	int max_db = pool_max_db_connections(pool);
	int max_user = pool_max_user_connections(pool);

	/* A paused pool opens nothing (PAUSE waits for its servers to be gone). Waiting for
	 * clients, the ones still there are served as usual. */
	if ((w->shutdown != PF_SHUTDOWN_NONE && w->shutdown != PF_SHUTDOWN_WAIT_FOR_CLIENTS) ||
	    pool->db->admin || pool_is_paused(pool))
		return LAUNCH_NO;
	if ((int)pf_pool_server_count(pool) >= size)
		return LAUNCH_NO;
	if (pool->last_login_failure &&
	    pf_worker_now(w) - pool->last_login_failure < cfg->server_login_retry)
		return LAUNCH_NO;
	if (max_db > 0 && pool->db->server_count >= max_db)
		return LAUNCH_DB_FULL;
	if (max_user > 0 && pool->user->server_count >= max_user)
		return LAUNCH_USER_FULL;
	return LAUNCH_OK;
}

static bool can_launch(pf_pool_t *pool, bool use_reserve)
{
	return launch_verdict(pool, use_reserve) == LAUNCH_OK;
}

/*
 * When a database or user limit blocks a pool with waiting clients, an idle server of another
 * pool sharing that database or user is closed to make room (PgBouncer evicts the same way):
 * otherwise idle servers elsewhere could starve this pool until server_idle_timeout.
 */
static bool evict_idle_server(pf_pool_t *pool, launch_verdict_t why)
{
	pf_list_node_t *it, *tmp;

	PF_LIST_FOREACH(&pool->worker->pools, it, tmp)
	{
		pf_pool_t *other = PF_CONTAINER_OF(it, pf_pool_t, node);
		pf_list_node_t *n;

		if (other == pool)
			continue;
		if (why == LAUNCH_DB_FULL ? other->db != pool->db : other->user != pool->user)
			continue;
		/* The idle server used longest ago: at the tail, or at the head with
		 * server_round_robin (see pf_pool_set_server_state). */
		if (pf_list_is_empty(&other->idle_servers))
			n = NULL;
		else if (pool->worker->cfg->server_round_robin)
			n = pf_list_first(&other->idle_servers);
		else
			n = other->idle_servers.head.prev;
		if (n) {
			ops_of(pool)->close_server(PF_CONTAINER_OF(n, pf_pool_server_t, node),
			                           PF_SV_CLOSE_EVICTED);
			return true;
		}
	}
	return false;
}

/* Opens one server if the limits allow (evicting another pool's idle one if needed). */
static bool launch_one(pf_pool_t *pool, bool use_reserve)
{
	launch_verdict_t v = launch_verdict(pool, use_reserve);
	int rc;

	if ((v == LAUNCH_DB_FULL || v == LAUNCH_USER_FULL) && evict_idle_server(pool, v))
		v = launch_verdict(pool, use_reserve);
	if (v != LAUNCH_OK)
		return false;
	rc = ops_of(pool)->launch_server(pool);
	if (rc < 0) {
		pf_log_warning(NULL, "cannot open a server connection for %s/%s: %s",
		               pool->db->name, pool->user->name, strerror(-rc));
		return false;
	}
	return true;
}

/*
 * The most launches one call may make: a launch whose connection fails at once leaves the server
 * count as it was, so without a bound (and with server_login_retry = 0) the loops below would
 * never end.
 */
static int launch_budget(const pf_pool_t *pool, bool use_reserve)
{
	return pf_pool_size(pool) + (use_reserve ? pool_reserve_size(pool) : 0);
}

static void launch(pf_pool_t *pool, bool use_reserve)
{
	int budget = launch_budget(pool, use_reserve);

	/* One new connection per waiting client (less those a checked server will serve). */
	while (budget-- > 0 &&
	       pool->waiting_clients.len > pool->new_servers.len + pool->tested_servers.len &&
	       launch_one(pool, use_reserve))
		;
}

void pf_pool_launch(pf_pool_t *pool)
{
	launch(pool, false);
}

/* ---- giving servers to clients ---- */

/*
 * Whether an idle server must run server_check_query before it is used: it has been idle for
 * more than server_check_delay and a check query is configured.
 */
static const char *check_query_for(const pf_pool_server_t *s, pf_usec_t now)
{
	const pf_config_t *cfg = s->pool->worker->cfg;
	const char *q = cfg->server_check_query;

	if (!q || !*q)
		return NULL;
	if (now - s->last_used <= cfg->server_check_delay)
		return NULL;
	return strcmp(q, "<empty>") == 0 ? "" : q;
}

/* Sends a reset or check query on s, which waits in PF_SV_TESTED. 0 or -errno. */
static int test_server(pf_pool_server_t *s, bool reset, const char *sql, pf_usec_t now)
{
	int rc = ops_of(s->pool)->test_server(s, reset, sql);

	if (rc < 0)
		return rc;
	s->test_is_reset = reset;
	s->test_start = now;
	pf_pool_set_server_state(s, PF_SV_TESTED);
	return 0;
}

/*
 * An idle server that may be used now, or NULL. Servers idle longer than server_check_delay run
 * server_check_query first (the one that passes goes to the longest-waiting client): then this
 * returns NULL.
 */
static pf_pool_server_t *take_idle_server(pf_pool_t *pool, pf_usec_t now)
{
	pf_list_node_t *n;

	if (pool_is_paused(pool))
		return NULL;
	while ((n = pf_list_first(&pool->idle_servers))) {
		pf_pool_server_t *s = PF_CONTAINER_OF(n, pf_pool_server_t, node);
		const char *check = check_query_for(s, now);

		if (!check)
			return s;
		if (test_server(s, false, check, now) == 0)
			return NULL;
		/* A failed send closes the server (its close takes it off the list). */
		ops_of(pool)->close_server(s, PF_SV_CLOSE_RESET_FAILED);
	}
	return NULL;
}

bool pf_pool_acquire(pf_pool_client_t *c)
{
	pf_pool_t *pool = c->pool;
	pf_usec_t now = pf_worker_now(pool->worker);
	pf_pool_server_t *s;

	assert(!c->link && (c->state == PF_CL_ACTIVE || c->state == PF_CL_WAITING));
	s = take_idle_server(pool, now);
	if (s) {
		link_pair(s, c, now);
		return true;
	}
	if (c->state != PF_CL_WAITING) {
		pf_pool_set_client_state(c, PF_CL_WAITING);
		c->wait_start = now;
		c->wait_notified = false; /* query_wait_notify: once per wait */
	}
	launch(pool, false); /* refuses by itself while paused */
	return false;
}

bool pf_pool_borrow(pf_worker_t *w, pf_pool_t *pool, pf_pool_client_t *c)
{
	assert(c->state == PF_CL_LOGIN && !c->pool && !c->link);
	set_client_state(w, c, PF_CL_FREE);
	c->pool = pool;
	pf_pool_set_client_state(c, PF_CL_ACTIVE);
	return pf_pool_acquire(c);
}

void pf_pool_end_borrow(pf_worker_t *w, pf_pool_client_t *c)
{
	assert(c->pool && !c->link);
	c->wait_start = 0;
	set_client_state(w, c, PF_CL_LOGIN);
	c->pool = NULL;
}

bool pf_pool_login_client(pf_pool_client_t *c)
{
	pf_pool_t *pool = c->pool;

	if (pool->welcome_ready) {
		pf_pool_set_client_state(c, PF_CL_ACTIVE);
		ops_of(pool)->login_done(c);
		return true;
	}
	pf_pool_set_client_state(c, PF_CL_WAITING_LOGIN);
	c->wait_start = pf_worker_now(pool->worker);
	/* Its login needs a server's parameters: open one even if no query waits. */
	if (pool->new_servers.len == 0 && !launch_one(pool, false)) {
		/* Nothing can be opened now; the janitor retries while the client waits (up to
		 * query_wait_timeout), unless the last login failed: then say so at once. */
		if (pool->last_login_failure) {
			char text[320];

			pf_pool_login_failing_text(pool, text, sizeof(text));
			ops_of(pool)->close_client(c, PF_CLOSE_CLIENT_SERVER_LOGIN, "08006", text);
		}
	}
	return false;
}

/* The client that has waited longest for a server (not for its login), or NULL. */
static pf_pool_client_t *first_waiting(pf_pool_t *pool)
{
	pf_list_node_t *it, *tmp;

	PF_LIST_FOREACH(&pool->waiting_clients, it, tmp)
	{
		pf_pool_client_t *c = PF_CONTAINER_OF(it, pf_pool_client_t, node);

		if (c->state == PF_CL_WAITING)
			return c;
	}
	return NULL;
}

/* Hands a free server to the longest-waiting client, else parks it as idle. */
static void give_server(pf_pool_server_t *s)
{
	pf_pool_t *pool = s->pool;
	pf_pool_client_t *c = pool_is_paused(pool) ? NULL : first_waiting(pool);

	if (c) {
		link_pair(s, c, pf_worker_now(pool->worker));
		return;
	}
	pf_pool_set_server_state(s, PF_SV_IDLE);
}

void pf_pool_kick(pf_pool_t *pool)
{
	pf_usec_t now = pf_worker_now(pool->worker);
	pf_pool_client_t *c;

	/* Idle servers go to waiting clients (checked as any reuse is), then new ones open. */
	while ((c = first_waiting(pool))) {
		pf_pool_server_t *s = take_idle_server(pool, now);

		if (!s)
			break;
		link_pair(s, c, now);
	}
	pf_pool_launch(pool);
}

/* Whether pool has more servers than its (possibly just lowered) size and limits allow. */
static bool over_limits(const pf_pool_t *pool)
{
	int size = pf_pool_size(pool) + pool_reserve_size(pool);
	int max_db = pool_max_db_connections(pool);
	int max_user = pool_max_user_connections(pool);

	return (int)pf_pool_server_count(pool) > size ||
	       (max_db > 0 && pool->db->server_count > max_db) ||
	       (max_user > 0 && pool->user->server_count > max_user);
}

void pf_pool_server_ready(pf_pool_server_t *s)
{
	pf_pool_t *pool = s->pool;
	pf_worker_t *w = pool->worker;
	pf_list_node_t *it, *tmp;
	pf_usec_t lifetime = pf_database_server_lifetime(pool->db, w->cfg);

	assert(!s->link);
	/* Clients that waited for the parameters finish their login first (this runs at every
	 * release, so the walk happens only when such clients exist). */
	PF_LIST_FOREACH(&pool->waiting_clients, it, tmp)
	{
		if (!pool->welcome_ready || pool->waiting_login_count == 0)
			break;
		pf_pool_client_t *c = PF_CONTAINER_OF(it, pf_pool_client_t, node);

		if (c->state == PF_CL_WAITING_LOGIN) {
			c->wait_start = 0;
			pf_pool_set_client_state(c, PF_CL_ACTIVE);
			ops_of(pool)->login_done(c);
		}
	}
	if (s->close_needed || w->shutdown == PF_SHUTDOWN_IMMEDIATE ||
	    (lifetime > 0 && pf_worker_now(w) - s->born > lifetime)) {
		ops_of(pool)->close_server(s, s->close_needed ? PF_SV_CLOSE_ADMIN
		                              : w->shutdown == PF_SHUTDOWN_IMMEDIATE
		                                      ? PF_SV_CLOSE_SHUTDOWN
		                                      : PF_SV_CLOSE_LIFETIME);
		pf_pool_launch(pool);
		return;
	}
	if (over_limits(pool)) {
		/* A RELOAD lowered pool_size, max_db_connections or max_user_connections: the
		 * pool shrinks as its servers come back instead of handing them on. */
		ops_of(pool)->close_server(s, PF_SV_CLOSE_OVER_SIZE);
		return;
	}
	give_server(s);
	/* A server went back to the pool: a shutdown waiting for servers may finish. */
	if (w->shutdown == PF_SHUTDOWN_WAIT_FOR_SERVERS)
		pf_worker_settled(w);
}

void pf_pool_server_logged_in(pf_pool_server_t *s)
{
	s->pool->last_login_failure = 0; /* logins work again: no more back-off */
	s->pool->login_fail_streak = 0;
	pf_pool_server_ready(s);
}

void pf_pool_release_server(pf_pool_server_t *s)
{
	pf_pool_t *pool = s->pool;
	const pf_pool_ops_t *ops = ops_of(pool);
	pf_pool_client_t *c = s->link;
	/* A message of the client's only partly sent: the rest would never follow. */
	bool half_sent = c && ops->client_mid_message(c);

	unlink_pair(s);
	s->last_used = pf_worker_now(pool->worker);
	if (half_sent || !ops->server_is_clean(s)) {
		ops->close_server(s, !half_sent && ops->server_is_uncertain(s)
		                             ? PF_SV_CLOSE_UNCERTAIN
		                             : PF_SV_CLOSE_CLIENT_GONE);
		pf_pool_launch(pool);
		return;
	}
	if (ops->server_has_cancels(s)) {
		/* A cancel for its last query is in flight: park it until that is done
		 * (pf_pool_finish_release() follows). */
		pf_pool_set_server_state(s, PF_SV_USED);
		return;
	}
	pf_pool_finish_release(s);
}

void pf_pool_finish_release(pf_pool_server_t *s)
{
	pf_pool_t *pool = s->pool;
	pf_worker_t *w = pool->worker;
	const pf_config_t *cfg = w->cfg;
	int mode = pf_pool_mode(pool);

	if ((mode == PF_POOL_SESSION || cfg->server_reset_query_always) &&
	    cfg->server_reset_query && *cfg->server_reset_query && !s->close_needed) {
		if (test_server(s, true, cfg->server_reset_query, pf_worker_now(w)) < 0)
			ops_of(pool)->close_server(s, PF_SV_CLOSE_RESET_FAILED);
		return;
	}
	pf_pool_server_ready(s);
}

void pf_pool_server_gone(pf_pool_server_t *s)
{
	pf_pool_t *pool = s->pool;

	unlink_pair(s);
	if (s->state != PF_SV_FREE) {
		pf_pool_set_server_state(s, PF_SV_FREE);
		assert(pool->db->server_count > 0 && pool->user->server_count > 0);
		pool->db->server_count--;
		pool->user->server_count--;
	}
}

void pf_pool_client_gone(pf_worker_t *w, pf_pool_client_t *c)
{
	assert(!c->link);
	if (c->state != PF_CL_FREE)
		set_client_state(w, c, PF_CL_FREE);
}

void pf_pool_unlink(pf_pool_server_t *s)
{
	unlink_pair(s);
}

void pf_pool_login_failing_text(const pf_pool_t *pool, char *buf, size_t n)
{
	/* PgBouncer 1.25's words, with and without a remembered reason. */
	if (pool->last_login_error[0])
		snprintf(buf, n,
		         "server login has been failing, cached error: %s (server_login_retry)",
		         pool->last_login_error);
	else
		snprintf(buf, n,
		         "server login has been failing, try again later (server_login_retry)");
}

/* Servers of pool that may still be given to a client. */
static size_t usable_server_count(const pf_pool_t *pool)
{
	const pf_list_t *lists[] = {&pool->active_servers, &pool->used_servers,
	                            &pool->tested_servers, &pool->new_servers, &pool->idle_servers};
	pf_list_node_t *it, *tmp;
	size_t n = 0;

	for (size_t i = 0; i < PF_ARRAY_SIZE(lists); i++) {
		PF_LIST_FOREACH(lists[i], it, tmp)
		{
			n += !PF_CONTAINER_OF(it, pf_pool_server_t, node)->close_needed;
		}
	}
	return n;
}

void pf_pool_server_failed(pf_pool_t *pool, const char *sqlstate, const char *message,
                           unsigned host_count)
{
	pf_list_node_t *it, *tmp;
	char text[512];

	pf_strlcpy(pool->last_login_error, message ? message : "server connection failed",
	           sizeof(pool->last_login_error));
	/*
	 * A list of hosts with one not tried since the last login that worked: the next attempt
	 * goes there at once (server.c moves along the list), without server_login_retry's
	 * back-off, and the waiting clients wait for it, as PgBouncer keeps them waiting.
	 */
	if (pool->login_fail_streak < UINT_MAX)
		pool->login_fail_streak++;
	if (host_count > 1 && pool->login_fail_streak < host_count) {
		pf_pool_launch(pool);
		return;
	}
	pool->last_login_failure = pf_worker_now(pool->worker);
	/* While other servers live that can serve them, waiting clients will get one of them
	 * (not one doomed by RECONNECT or a RELOAD: it is closed when released). */
	if (usable_server_count(pool) > 0)
		return;
	snprintf(text, sizeof(text), "%s", message ? message : "server connection failed");
	PF_LIST_FOREACH(&pool->waiting_clients, it, tmp)
	{
		pf_pool_client_t *c = PF_CONTAINER_OF(it, pf_pool_client_t, node);

		ops_of(pool)->close_client(c, PF_CLOSE_CLIENT_SERVER_LOGIN,
		                           sqlstate ? sqlstate : "08006", text);
	}
}

/* ---- the janitor ---- */

/* Servers that are stuck connecting or logging in, idle too long or too old, stuck testing. */
static void expire_servers(pf_pool_t *pool, pf_usec_t now)
{
	const pf_config_t *cfg = pool->worker->cfg;
	const pf_pool_ops_t *ops = ops_of(pool);
	pf_usec_t lifetime = pf_database_server_lifetime(pool->db, cfg);
	int min_size = pool_min_size(pool);
	pf_list_node_t *it, *tmp;

	PF_LIST_FOREACH(&pool->new_servers, it, tmp)
	{
		pf_pool_server_t *s = PF_CONTAINER_OF(it, pf_pool_server_t, node);

		if (cfg->server_connect_timeout > 0 && now - s->born > cfg->server_connect_timeout)
			ops->close_server(s, PF_SV_CLOSE_CONNECT_TIMEOUT);
	}
	/* Idle servers past their lifetime or idle timeout (oldest last in the list). */
	PF_LIST_FOREACH(&pool->idle_servers, it, tmp)
	{
		pf_pool_server_t *s = PF_CONTAINER_OF(it, pf_pool_server_t, node);
		bool too_old = lifetime > 0 && now - s->born > lifetime;
		bool too_idle = cfg->server_idle_timeout > 0 &&
		                now - s->last_used > cfg->server_idle_timeout &&
		                (int)pf_pool_server_count(pool) > min_size;

		if (s->close_needed || too_old || too_idle)
			ops->close_server(s, s->close_needed ? PF_SV_CLOSE_ADMIN
			                     : too_old       ? PF_SV_CLOSE_LIFETIME
			                                     : PF_SV_CLOSE_IDLE_TIMEOUT);
	}
	/*
	 * Servers running server_reset_query or server_check_query (tested) that do not answer
	 * within server_idle_timeout, or are past their lifetime: PgBouncer's janitor closes
	 * tested servers on the same two limits. It measures the idle time from the server's
	 * last packet; we measure from when the query was sent, which a stuck server cannot
	 * postpone by trickling notices. Unlike an idle server, a stuck one is closed even when
	 * min_pool_size would keep it: it serves nobody (min_pool_size opens a fresh one).
	 */
	PF_LIST_FOREACH(&pool->tested_servers, it, tmp)
	{
		pf_pool_server_t *s = PF_CONTAINER_OF(it, pf_pool_server_t, node);
		bool too_old = lifetime > 0 && now - s->born > lifetime;
		bool stuck = cfg->server_idle_timeout > 0 &&
		             now - s->test_start > cfg->server_idle_timeout;

		if (!too_old && !stuck)
			continue;
		if (stuck)
			ops->warn_server(s, s->test_is_reset ? "server_reset_query did not finish "
			                                       "within server_idle_timeout"
			                                     : "server_check_query did not finish "
			                                       "within server_idle_timeout");
		ops->close_server(s, too_old ? PF_SV_CLOSE_LIFETIME : PF_SV_CLOSE_IDLE_TIMEOUT);
	}
}

/* A per-user or per-database setting (-1 = not set) over the next one. */
static pf_usec_t set_or(pf_usec_t v, pf_usec_t next)
{
	return v >= 0 ? v : next;
}

/* query_wait_timeout: per-user over per-database over global. */
static pf_usec_t query_wait_timeout(const pf_pool_t *pool)
{
	return set_or(pool->user->query_wait_timeout,
	              set_or(pool->db->query_wait_timeout, pool->worker->cfg->query_wait_timeout));
}

pf_usec_t pf_pool_query_timeout(const pf_pool_t *pool)
{
	return set_or(pool->user->query_timeout, pool->worker->cfg->query_timeout);
}

pf_usec_t pf_pool_idle_transaction_timeout(const pf_pool_t *pool)
{
	return set_or(pool->user->idle_transaction_timeout,
	              pool->worker->cfg->idle_transaction_timeout);
}

pf_usec_t pf_pool_transaction_timeout(const pf_pool_t *pool)
{
	return set_or(pool->user->transaction_timeout, pool->worker->cfg->transaction_timeout);
}

pf_usec_t pf_pool_client_idle_timeout(const pf_pool_t *pool)
{
	return set_or(pool->user->client_idle_timeout, pool->worker->cfg->client_idle_timeout);
}

#ifndef NDEBUG
/* Every member of list l is in state st, belongs to pool, and links are symmetric. */
static void check_clients(const pf_pool_t *pool, const pf_list_t *l, pf_client_state_t st1,
                          pf_client_state_t st2, size_t *login_waiters)
{
	const pf_list_node_t *it;

	for (it = l->head.next; it != &l->head; it = it->next) {
		const pf_pool_client_t *c = PF_CONTAINER_OF(it, pf_pool_client_t, node);

		assert(c->pool == pool && (c->state == st1 || c->state == st2));
		assert(!c->link || (c->state == PF_CL_ACTIVE && c->link->link == c &&
		                    c->link->state == PF_SV_ACTIVE && c->link->pool == pool));
		if (c->state == PF_CL_WAITING_LOGIN)
			(*login_waiters)++;
	}
}

static void check_servers(const pf_pool_t *pool, const pf_list_t *l, pf_server_state_t st)
{
	const pf_list_node_t *it;

	for (it = l->head.next; it != &l->head; it = it->next) {
		const pf_pool_server_t *s = PF_CONTAINER_OF(it, pf_pool_server_t, node);

		assert(s->pool == pool && s->state == st);
		/* Only an active server is linked (a client that left unlinks it at once). */
		assert(st == PF_SV_ACTIVE ? !s->link || s->link->link == s : !s->link);
	}
}

/* The invariants of pool.h, checked once a second by the janitor in debug builds. */
void pf_pool_check(const pf_pool_t *pool)
{
	size_t login_waiters = 0;

	check_clients(pool, &pool->active_clients, PF_CL_ACTIVE, PF_CL_ACTIVE, &login_waiters);
	check_clients(pool, &pool->waiting_clients, PF_CL_WAITING, PF_CL_WAITING_LOGIN,
	              &login_waiters);
	assert(login_waiters == pool->waiting_login_count);
	check_servers(pool, &pool->active_servers, PF_SV_ACTIVE);
	check_servers(pool, &pool->idle_servers, PF_SV_IDLE);
	check_servers(pool, &pool->used_servers, PF_SV_USED);
	check_servers(pool, &pool->tested_servers, PF_SV_TESTED);
	check_servers(pool, &pool->new_servers, PF_SV_LOGIN);
	assert(pool->db->server_count >= 0 && pool->user->server_count >= 0);
}
#else
void pf_pool_check(const pf_pool_t *pool)
{
	(void)pool;
}
#endif

void pf_pool_maintain(pf_pool_t *pool, pf_usec_t now)
{
	pf_worker_t *w = pool->worker;
	const pf_config_t *cfg = w->cfg;
	pf_list_node_t *it, *tmp, *n;
	int min_size = pool_min_size(pool);

	pf_pool_check(pool);
	if (pool->db->admin)
		return;
	expire_servers(pool, now);
	/* query_wait_timeout (0 = off). */
	PF_LIST_FOREACH(&pool->waiting_clients, it, tmp)
	{
		pf_pool_client_t *c = PF_CONTAINER_OF(it, pf_pool_client_t, node);
		pf_usec_t limit = query_wait_timeout(pool);

		if (limit > 0 && c->wait_start && now - c->wait_start > limit)
			ops_of(pool)->close_client(c, PF_CLOSE_CLIENT_WAIT_TIMEOUT, NULL, NULL);
	}
	if (pool_is_paused(pool) || w->shutdown != PF_SHUTDOWN_NONE)
		return;
	/* The reserve pool opens when the first client has waited reserve_pool_timeout. */
	n = pf_list_first(&pool->waiting_clients);
	if (n) {
		pf_pool_client_t *c = PF_CONTAINER_OF(n, pf_pool_client_t, node);

		launch(pool, pool_reserve_size(pool) > 0 && cfg->reserve_pool_timeout >= 0 &&
		                     now - c->wait_start >= cfg->reserve_pool_timeout);
	}
	/* min_pool_size keeps servers open for pools that have had clients. */
	for (int budget = launch_budget(pool, false);
	     budget > 0 && (int)pf_pool_server_count(pool) < min_size && pool->welcome_ready &&
	     can_launch(pool, false);
	     budget--) {
		if (ops_of(pool)->launch_server(pool) < 0)
			break;
	}
}
