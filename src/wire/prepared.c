/*
 * prepared: the bookkeeping of protocol-level named prepared statements (see prepared.h).
 *
 * Changes are recorded in the client's change log, a ring in the order the messages were
 * sent; each record holds what is needed to undo it (the previous value of a name, a server
 * entry it added, a statement it closed). Success of tag T commits every record up to T (the
 * answers come in order, so nothing before T can still fail); failure of T undoes every record
 * from T on, newest first (the server skips everything after a failure up to the Sync, and the
 * wait rule guarantees no record of a later run exists).
 */
#include "pfbuild.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgfunnel/list.h"
#include "pgfunnel/prepared.h"

/* Names and statements are chosen by clients: hashed with a keyed hash (pf_siphash24). */

/* ---- types ---- */

struct pf_prepared_registry {
	pf_prepared_stmt_t **buckets;
	uint32_t nbuckets; /* a power of two, or 0 */
	uint32_t count;
	size_t bytes;
	uint64_t next_id;
	uint64_t k0, k1;
	char prefix[PF_PREPARED_PREFIX_MAX]; /* PGFUNNEL_<8 random hex digits>_ */
};

/* A client's name. stmt NULL: the name is free (the node stays while a change refers to it). */
typedef struct cnode {
	struct cnode *hnext;
	pf_prepared_stmt_t *stmt;
	uint64_t hash;
	uint32_t pins; /* unresolved changes referring to it */
	uint32_t len;
	uint32_t last_use; /* the client's use clock when it last named it */
	bool seen;         /* pf_prepared_discard's walk */
	char name[];
} cnode_t;

/* A statement prepared on a server. */
typedef struct sentry {
	struct sentry *hnext;
	pf_list_node_t lru;
	pf_prepared_stmt_t *stmt;
	uint32_t pins; /* unresolved changes that added it (it is not evicted meanwhile) */
} sentry_t;

struct pf_prepared_server {
	pf_prepared_registry_t *reg;
	sentry_t **buckets;
	uint32_t nbuckets, count;
	pf_list_t lru; /* most recently used first */
	bool unsure;   /* it may have statements pgfunnel does not know of: do not reuse it */
};

enum op_kind {
	OP_NONE = 0,   /* nothing left to do (a discarded eviction) */
	OP_CLIENT_SET, /* node->stmt was set; prev is its value before (a reference) */
	OP_SERVER_ADD, /* entry was added to srv */
	OP_SERVER_DEL, /* prev was removed from srv (a reference) */
	OP_DUPLICATE,  /* a duplicate Parse of node's name (for the error text) */
};

typedef struct op {
	uint32_t tag;
	uint8_t kind;
	cnode_t *node;
	sentry_t *entry;
	pf_prepared_server_t *srv;
	pf_prepared_stmt_t *prev;
} op_t;

struct pf_prepared_client {
	pf_prepared_registry_t *reg;
	cnode_t **buckets;
	uint32_t nbuckets, nodes;
	uint32_t count; /* names with a statement */
	size_t bytes;   /* their statements' bodies */
	op_t *ops;      /* the change log: a ring of ops_cap (a power of two) */
	uint32_t ops_cap, ops_head, ops_len;
	uint32_t next_tag;
	bool sync_after_pending; /* a Sync was sent while changes were unresolved */
	bool broken;
	/* The latest duplicate Parse of a name longer than the bytes that count: the name as
	 * sent, for the error text (Postgres quotes it whole). */
	char *dup_full;
	uint32_t dup_tag;
	uint32_t use_clock; /* counts the names used (cnode last_use) */
};

/* Tags compare in sequence space (they wrap). */
static inline bool tag_before(uint32_t a, uint32_t b)
{
	return (int32_t)(a - b) < 0;
}

/* ---- registry ---- */

pf_prepared_registry_t *pf_prepared_registry_new(const uint8_t key[16])
{
	pf_prepared_registry_t *r = calloc(1, sizeof(*r));

	if (!r)
		return NULL;
	memcpy(&r->k0, key, 8); /* the key's two halves, as pf_siphash24 takes it */
	memcpy(&r->k1, key + 8, 8);
	r->next_id = 1;
	/* Server-side names nobody can guess (nor an application's own collide with): a part
	 * drawn from the key, which itself stays secret. */
	snprintf(r->prefix, sizeof(r->prefix), PF_PREPARED_PREFIX "%08" PRIx32 "_",
	         (uint32_t)pf_siphash24(r->k0, r->k1, (const uint8_t *)"names", 5));
	return r;
}

const char *pf_prepared_registry_prefix(const pf_prepared_registry_t *r)
{
	return r->prefix;
}

void pf_prepared_registry_free(pf_prepared_registry_t *r)
{
	if (!r)
		return;
	assert(r->count == 0);
	free(r->buckets);
	free(r);
}

uint32_t pf_prepared_registry_count(const pf_prepared_registry_t *r)
{
	return r ? r->count : 0;
}

size_t pf_prepared_registry_bytes(const pf_prepared_registry_t *r)
{
	return r ? r->bytes : 0;
}

/* Doubles a chained table (cap: a power of two) once it holds as many items as buckets. */
static int grow_table(void ***buckets, uint32_t *nbuckets, uint32_t count, size_t next_off,
                      size_t hash_off)
{
	uint32_t n = *nbuckets ? *nbuckets * 2 : 16;
	void **nb;

	if (count < *nbuckets)
		return 0;
	if (n == 0 || n > (1u << 30))
		return 0; /* chains just get longer */
	nb = calloc(n, sizeof(*nb));
	if (!nb)
		return *nbuckets ? 0 : -ENOMEM;
	for (uint32_t i = 0; i < *nbuckets; i++) {
		void *it = (*buckets)[i];

		while (it) {
			void *next = *(void **)((char *)it + next_off);
			uint64_t h = *(uint64_t *)((char *)it + hash_off);
			uint32_t b = (uint32_t)h & (n - 1);

			*(void **)((char *)it + next_off) = nb[b];
			nb[b] = it;
			it = next;
		}
	}
	free(*buckets);
	*buckets = nb;
	*nbuckets = n;
	return 0;
}

/* The statement with this body, made if new; returns it with a reference taken, or NULL. */
static pf_prepared_stmt_t *stmt_get(pf_prepared_registry_t *r, const uint8_t *body, size_t len)
{
	uint64_t h = pf_siphash24(r->k0, r->k1, body, len);
	pf_prepared_stmt_t *st;

	if (r->nbuckets) {
		for (st = r->buckets[h & (r->nbuckets - 1)]; st; st = st->hnext) {
			if (st->hash == h && st->body_len == len &&
			    memcmp(st->body, body, len) == 0) {
				st->refs++;
				return st;
			}
		}
	}
	if (len > UINT32_MAX - sizeof(*st) ||
	    grow_table((void ***)&r->buckets, &r->nbuckets, r->count,
	               offsetof(pf_prepared_stmt_t, hnext), offsetof(pf_prepared_stmt_t, hash)) < 0)
		return NULL;
	st = malloc(sizeof(*st) + len);
	if (!st)
		return NULL;
	st->hash = h;
	st->refs = 1;
	st->body_len = (uint32_t)len;
	snprintf(st->name, sizeof(st->name), "%s%" PRIu64, r->prefix, r->next_id++);
	memcpy(st->body, body, len);
	st->hnext = r->buckets[h & (r->nbuckets - 1)];
	r->buckets[h & (r->nbuckets - 1)] = st;
	r->count++;
	r->bytes += len;
	return st;
}

static void stmt_ref(pf_prepared_stmt_t *st)
{
	assert(st->refs > 0);
	st->refs++;
}

static void stmt_unref(pf_prepared_registry_t *r, pf_prepared_stmt_t *st)
{
	pf_prepared_stmt_t **pp;

	if (!st)
		return;
	assert(st->refs > 0);
	if (--st->refs > 0)
		return;
	for (pp = &r->buckets[st->hash & (r->nbuckets - 1)]; *pp != st; pp = &(*pp)->hnext)
		assert(*pp);
	*pp = st->hnext;
	r->count--;
	r->bytes -= st->body_len;
	free(st);
}

/* ---- servers ---- */

pf_prepared_server_t *pf_prepared_server_new(pf_prepared_registry_t *r)
{
	pf_prepared_server_t *s = calloc(1, sizeof(*s));

	if (!s)
		return NULL;
	s->reg = r;
	pf_list_init(&s->lru);
	return s;
}

static inline uint64_t stmt_key(const pf_prepared_stmt_t *st)
{
	return st->hash;
}

static sentry_t *server_find(const pf_prepared_server_t *s, const pf_prepared_stmt_t *st)
{
	if (!s->nbuckets)
		return NULL;
	for (sentry_t *e = s->buckets[stmt_key(st) & (s->nbuckets - 1)]; e; e = e->hnext)
		if (e->stmt == st)
			return e;
	return NULL;
}

/* Adds st (a reference is taken) as the most recently used; NULL: no memory. */
static sentry_t *server_add(pf_prepared_server_t *s, pf_prepared_stmt_t *st)
{
	sentry_t *e;
	uint32_t b;

	/* The chain hash is the statement's; sentry has no hash field, so rehash by hand. */
	if (s->count >= s->nbuckets) {
		uint32_t n = s->nbuckets ? s->nbuckets * 2 : 16;
		sentry_t **nb = n <= (1u << 30) ? calloc(n, sizeof(*nb)) : NULL;

		if (nb) {
			for (uint32_t i = 0; i < s->nbuckets; i++) {
				for (sentry_t *it = s->buckets[i], *next; it; it = next) {
					next = it->hnext;
					it->hnext = nb[stmt_key(it->stmt) & (n - 1)];
					nb[stmt_key(it->stmt) & (n - 1)] = it;
				}
			}
			free(s->buckets);
			s->buckets = nb;
			s->nbuckets = n;
		} else if (!s->nbuckets) {
			return NULL;
		}
	}
	e = calloc(1, sizeof(*e));
	if (!e)
		return NULL;
	e->stmt = st;
	stmt_ref(st);
	b = (uint32_t)stmt_key(st) & (s->nbuckets - 1);
	e->hnext = s->buckets[b];
	s->buckets[b] = e;
	pf_list_prepend(&s->lru, &e->lru);
	s->count++;
	return e;
}

/* Removes e; its statement reference is handed to the caller (returned). */
static pf_prepared_stmt_t *server_remove(pf_prepared_server_t *s, sentry_t *e)
{
	sentry_t **pp = &s->buckets[stmt_key(e->stmt) & (s->nbuckets - 1)];
	pf_prepared_stmt_t *st = e->stmt;

	while (*pp != e) {
		assert(*pp);
		pp = &(*pp)->hnext;
	}
	*pp = e->hnext;
	pf_list_remove(&s->lru, &e->lru);
	s->count--;
	free(e);
	return st;
}

static void server_touch(pf_prepared_server_t *s, sentry_t *e)
{
	pf_list_remove(&s->lru, &e->lru);
	pf_list_prepend(&s->lru, &e->lru);
}

void pf_prepared_server_free(pf_prepared_server_t *s)
{
	pf_list_node_t *n;

	if (!s)
		return;
	while ((n = pf_list_first(&s->lru)) != NULL) {
		sentry_t *e = PF_CONTAINER_OF(n, sentry_t, lru);

		assert(e->pins == 0);
		stmt_unref(s->reg, server_remove(s, e));
	}
	free(s->buckets);
	free(s);
}

uint32_t pf_prepared_server_count(const pf_prepared_server_t *s)
{
	return s ? s->count : 0;
}

bool pf_prepared_server_has_name(const pf_prepared_server_t *s, const char *name)
{
	const pf_list_node_t *n;

	for (n = s ? s->lru.head.next : NULL; s && n != &s->lru.head; n = n->next)
		if (strcmp(PF_CONTAINER_OF(n, sentry_t, lru)->stmt->name, name) == 0)
			return true;
	return false;
}

bool pf_prepared_server_is_unsure(const pf_prepared_server_t *s)
{
	return s && s->unsure;
}

void pf_prepared_server_set_unsure(pf_prepared_server_t *s)
{
	s->unsure = true;
}

bool pf_prepared_server_has(const pf_prepared_server_t *s, const pf_prepared_stmt_t *st)
{
	return s && server_find(s, st) != NULL;
}

/* ---- clients ---- */

pf_prepared_client_t *pf_prepared_client_new(pf_prepared_registry_t *r)
{
	pf_prepared_client_t *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->reg = r;
	c->next_tag = 1;
	return c;
}

uint32_t pf_prepared_client_count(const pf_prepared_client_t *c)
{
	return c ? c->count : 0;
}

/* Postgres keeps the first NAMEDATALEN - 1 bytes of a statement name: longer names that share
 * them are the same statement. */
static size_t name_len(const char *name)
{
	return strnlen(name, PF_PREPARED_NAME_SIG);
}

static cnode_t *node_find(const pf_prepared_client_t *c, const char *name, size_t len, uint64_t h);
static uint64_t name_hash(const pf_prepared_client_t *c, const char *name, size_t len);

const char *pf_prepared_client_lookup(const pf_prepared_client_t *c, const char *name)
{
	size_t len = name_len(name);
	const cnode_t *n = c ? node_find(c, name, len, name_hash(c, name, len)) : NULL;

	return n && n->stmt ? n->stmt->name : NULL;
}

const char *pf_prepared_client_name_of(const pf_prepared_client_t *c, const char *sname, size_t len)
{
	const cnode_t *best = NULL;

	if (!c || len >= PF_PREPARED_NAME_MAX)
		return NULL;
	/* Of several names for one statement, the one used last (likely the one erring). */
	for (uint32_t i = 0; i < c->nbuckets; i++)
		for (const cnode_t *n = c->buckets[i]; n; n = n->hnext)
			if (n->stmt && strncmp(n->stmt->name, sname, len) == 0 &&
			    n->stmt->name[len] == '\0' &&
			    (!best || (int32_t)(n->last_use - best->last_use) > 0))
				best = n;
	return best ? best->name : NULL;
}

static uint64_t name_hash(const pf_prepared_client_t *c, const char *name, size_t len)
{
	return pf_siphash24(c->reg->k0, c->reg->k1, (const uint8_t *)name, len);
}

static cnode_t *node_find(const pf_prepared_client_t *c, const char *name, size_t len, uint64_t h)
{
	if (!c->nbuckets)
		return NULL;
	for (cnode_t *n = c->buckets[h & (c->nbuckets - 1)]; n; n = n->hnext)
		if (n->hash == h && n->len == len && memcmp(n->name, name, len) == 0)
			return n;
	return NULL;
}

static cnode_t *node_get(pf_prepared_client_t *c, const char *name, size_t len, uint64_t h)
{
	cnode_t *n = node_find(c, name, len, h);

	if (n)
		return n;
	if (grow_table((void ***)&c->buckets, &c->nbuckets, c->nodes, offsetof(cnode_t, hnext),
	               offsetof(cnode_t, hash)) < 0)
		return NULL;
	n = calloc(1, sizeof(*n) + len + 1);
	if (!n)
		return NULL;
	n->hash = h;
	n->len = (uint32_t)len;
	memcpy(n->name, name, len);
	n->hnext = c->buckets[h & (c->nbuckets - 1)];
	c->buckets[h & (c->nbuckets - 1)] = n;
	c->nodes++;
	return n;
}

/* Frees n when nothing refers to it any more. */
static void node_maybe_free(pf_prepared_client_t *c, cnode_t *n)
{
	cnode_t **pp;

	if (n->stmt || n->pins)
		return;
	for (pp = &c->buckets[n->hash & (c->nbuckets - 1)]; *pp != n; pp = &(*pp)->hnext)
		assert(*pp);
	*pp = n->hnext;
	c->nodes--;
	free(n);
}

/* Sets a name's statement (st's reference is taken over); returns the old one's reference. */
static pf_prepared_stmt_t *node_set(pf_prepared_client_t *c, cnode_t *n, pf_prepared_stmt_t *st)
{
	pf_prepared_stmt_t *old = n->stmt;

	if (old) {
		c->count--;
		c->bytes -= old->body_len;
	}
	if (st) {
		c->count++;
		c->bytes += st->body_len;
	}
	n->stmt = st;
	return old;
}

/* ---- the change log ---- */

static op_t *op_at(const pf_prepared_client_t *c, uint32_t i)
{
	return &c->ops[(c->ops_head + i) & (c->ops_cap - 1)];
}

/* Makes room for n more records. */
static int ops_reserve(pf_prepared_client_t *c, uint32_t n)
{
	uint32_t cap = c->ops_cap ? c->ops_cap : 8;
	op_t *nr;

	while (cap < c->ops_len + n) {
		if (cap > (1u << 24))
			return -ENOMEM;
		cap *= 2;
	}
	if (cap == c->ops_cap)
		return 0;
	nr = malloc((size_t)cap * sizeof(*nr));
	if (!nr)
		return -ENOMEM;
	for (uint32_t i = 0; i < c->ops_len; i++)
		nr[i] = *op_at(c, i);
	free(c->ops);
	c->ops = nr;
	c->ops_cap = cap;
	c->ops_head = 0;
	return 0;
}

static op_t *op_push(pf_prepared_client_t *c, uint32_t tag, uint8_t kind)
{
	op_t *o;

	assert(c->ops_len < c->ops_cap);
	o = op_at(c, c->ops_len++);
	memset(o, 0, sizeof(*o));
	o->tag = tag;
	o->kind = kind;
	return o;
}

/* The change is final: let go of what was kept to undo it. */
static void op_commit(pf_prepared_client_t *c, op_t *o)
{
	switch (o->kind) {
	case OP_DUPLICATE:
		/* Its Parse succeeded (the server had lost the statement, e.g. to an SQL
		 * DEALLOCATE): that server-side name now means the client's new text there. */
		o->srv->unsure = true;
		/* fall through */
	case OP_CLIENT_SET:
		stmt_unref(c->reg, o->prev);
		o->node->pins--;
		node_maybe_free(c, o->node);
		break;
	case OP_SERVER_ADD:
		o->entry->pins--;
		break;
	case OP_SERVER_DEL:
		stmt_unref(c->reg, o->prev);
		break;
	default:
		break;
	}
}

/* The change did not happen: put things back. */
static void op_undo(pf_prepared_client_t *c, op_t *o)
{
	switch (o->kind) {
	case OP_CLIENT_SET:
		stmt_unref(c->reg, node_set(c, o->node, o->prev));
		o->prev = NULL;
		o->node->pins--;
		node_maybe_free(c, o->node);
		break;
	case OP_DUPLICATE:
		o->node->pins--;
		node_maybe_free(c, o->node);
		break;
	case OP_SERVER_ADD:
		o->entry->pins--;
		stmt_unref(c->reg, server_remove(o->srv, o->entry));
		break;
	case OP_SERVER_DEL: {
		sentry_t *e = server_find(o->srv, o->prev);

		/* The Close was skipped: the server still has it (as the oldest). */
		if (!e && (e = server_add(o->srv, o->prev)) != NULL) {
			pf_list_remove(&o->srv->lru, &e->lru);
			pf_list_append(&o->srv->lru, &e->lru);
		} else if (!e) {
			o->srv->unsure = true; /* no memory to remember it */
		}
		stmt_unref(c->reg, o->prev);
		break;
	}
	default:
		break;
	}
}

static uint32_t new_tag(pf_prepared_client_t *c)
{
	uint32_t t = c->next_tag++;

	if (c->next_tag == 0)
		c->next_tag = 1;
	return t;
}

void pf_prepared_resolve(pf_prepared_client_t *c, uint32_t tag, bool ok)
{
	if (!c || tag == 0)
		return;
	if (ok) {
		while (c->ops_len > 0 && !tag_before(tag, op_at(c, 0)->tag)) {
			op_commit(c, op_at(c, 0));
			c->ops_head = (c->ops_head + 1) & (c->ops_cap - 1);
			c->ops_len--;
		}
	} else {
		while (c->ops_len > 0 && !tag_before(op_at(c, c->ops_len - 1)->tag, tag)) {
			op_undo(c, op_at(c, c->ops_len - 1));
			c->ops_len--;
		}
	}
	if (c->ops_len == 0)
		c->sync_after_pending = false;
}

const char *pf_prepared_dup_name(const pf_prepared_client_t *c, uint32_t tag)
{
	if (!c || tag == 0)
		return NULL;
	for (uint32_t i = 0; i < c->ops_len; i++) {
		const op_t *o = op_at(c, i);

		if (o->tag == tag && o->kind == OP_DUPLICATE)
			return c->dup_full && c->dup_tag == tag ? c->dup_full : o->node->name;
	}
	return NULL;
}

void pf_prepared_sync(pf_prepared_client_t *c)
{
	if (c && c->ops_len > 0)
		c->sync_after_pending = true;
}

bool pf_prepared_must_wait(const pf_prepared_client_t *c)
{
	return c && c->sync_after_pending && c->ops_len > 0;
}

bool pf_prepared_has_pending(const pf_prepared_client_t *c)
{
	return c && c->ops_len > 0;
}

bool pf_prepared_is_broken(const pf_prepared_client_t *c)
{
	return c && c->broken;
}

void pf_prepared_detach(pf_prepared_client_t *c)
{
	if (!c || c->ops_len == 0)
		return;
	/* Outcomes that will never be known: keep nothing that claims to know them. */
	while (c->ops_len > 0) {
		op_commit(c, op_at(c, 0));
		c->ops_head = (c->ops_head + 1) & (c->ops_cap - 1);
		c->ops_len--;
	}
	c->sync_after_pending = false;
	c->broken = true;
}

void pf_prepared_client_free(pf_prepared_client_t *c)
{
	if (!c)
		return;
	pf_prepared_detach(c);
	for (uint32_t i = 0; i < c->nbuckets; i++) {
		for (cnode_t *n = c->buckets[i], *next; n; n = next) {
			next = n->hnext;
			stmt_unref(c->reg, n->stmt);
			free(n);
		}
	}
	free(c->buckets);
	free(c->ops);
	free(c->dup_full);
	free(c);
}

/* ---- invariants ---- */

int pf_prepared_check(const pf_prepared_client_t *c, const pf_prepared_server_t *const *servers,
                      size_t nservers)
{
	uint32_t count = 0, nodes = 0, pins = 0, op_pins = 0;
	size_t bytes = 0;

	if (c) {
		for (uint32_t i = 0; i < c->nbuckets; i++) {
			for (const cnode_t *n = c->buckets[i]; n; n = n->hnext) {
				if ((n->hash & (c->nbuckets - 1)) != i || n->seen)
					return -1;
				if (!n->stmt && !n->pins)
					return -2; /* should have been freed */
				nodes++;
				pins += n->pins;
				if (n->stmt) {
					count++;
					bytes += n->stmt->body_len;
				}
			}
		}
		if (count != c->count || bytes != c->bytes || nodes != c->nodes)
			return -3;
		for (uint32_t i = 0; i < c->ops_len; i++) {
			const op_t *o = op_at(c, i);

			if (i > 0 && tag_before(o->tag, op_at(c, i - 1)->tag))
				return -4; /* records follow the order of their tags */
			if (o->kind == OP_CLIENT_SET || o->kind == OP_DUPLICATE)
				op_pins++;
		}
		if (op_pins != pins)
			return -5;
		if (c->sync_after_pending && c->ops_len == 0)
			return -6;
	}
	for (size_t k = 0; k < nservers; k++) {
		const pf_prepared_server_t *s = servers[k];
		uint32_t entries = 0, spins = 0, adds = 0;

		if (!s)
			continue;
		for (uint32_t i = 0; i < s->nbuckets; i++) {
			for (const sentry_t *e = s->buckets[i]; e; e = e->hnext) {
				if ((stmt_key(e->stmt) & (s->nbuckets - 1)) != i ||
				    e->stmt->refs == 0)
					return -7;
				entries++;
				spins += e->pins;
			}
		}
		if (entries != s->count || s->lru.len != s->count)
			return -8;
		for (uint32_t i = 0; c && i < c->ops_len; i++)
			if (op_at(c, i)->kind == OP_SERVER_ADD && op_at(c, i)->srv == s)
				adds++;
		if (adds != spins)
			return -9;
	}
	return 0;
}

/* ---- plans ---- */

/*
 * While s holds more than max statements, closes the least recently used ones no unresolved
 * change pins, up to PF_PREPARED_EVICT_MAX per plan (a pipeline that pinned many sheds the
 * excess over the next plans). Room for that many records must be reserved.
 */
static void evict_over(pf_prepared_client_t *c, pf_prepared_server_t *s, uint32_t max,
                       pf_prepared_plan_t *plan)
{
	pf_list_node_t *n = s->lru.head.prev, *prev;

	for (; s->count > max && plan->n_evict < PF_PREPARED_EVICT_MAX && n != &s->lru.head;
	     n = prev) {
		sentry_t *old = PF_CONTAINER_OF(n, sentry_t, lru);
		op_t *o;

		prev = n->prev;
		if (old->pins > 0)
			continue;
		plan->evict[plan->n_evict] = old->stmt;
		plan->evict_tag[plan->n_evict] = new_tag(c);
		o = op_push(c, plan->evict_tag[plan->n_evict], OP_SERVER_DEL);
		o->srv = s;
		o->prev = server_remove(s, old); /* the reference goes to the record */
		plan->n_evict++;
	}
}

/*
 * Adds st to s under tag (pinned until resolved), evicting the least recently used statement
 * no unresolved change added when s then holds more than max. The eviction (a Close to inject
 * first) gets a tag before `tag`'s: pass tag 0 to have one made after it (an injected Parse).
 * Room for two records must be reserved. Returns the tag used, or 0 for no memory (nothing
 * changed).
 */
static uint32_t add_present(pf_prepared_client_t *c, pf_prepared_server_t *s, uint32_t max,
                            pf_prepared_stmt_t *st, uint32_t tag, pf_prepared_plan_t *plan)
{
	sentry_t *e = server_add(s, st);
	op_t *o;

	if (!e)
		return 0;
	e->pins++;
	evict_over(c, s, max, plan);
	if (!tag)
		tag = new_tag(c);
	o = op_push(c, tag, OP_SERVER_ADD);
	o->srv = s;
	o->entry = e;
	plan->server_parses++;
	return tag;
}

/* st present on s: touched; absent: made present with an injected Parse. */
static int ensure_present(pf_prepared_client_t *c, pf_prepared_server_t *s, uint32_t max,
                          pf_prepared_stmt_t *st, pf_prepared_plan_t *plan)
{
	sentry_t *e = server_find(s, st);

	if (e) {
		server_touch(s, e);
		e->pins++; /* never the one about to be used */
		evict_over(c, s, max, plan);
		e->pins--;
		return 0;
	}
	plan->inject_tag = add_present(c, s, max, st, 0, plan);
	if (!plan->inject_tag)
		return -ENOMEM;
	plan->inject = st;
	return 0;
}

int pf_prepared_parse(pf_prepared_client_t *c, pf_prepared_server_t *s, uint32_t max, bool aborted,
                      const char *name, const uint8_t *body, size_t len, pf_prepared_plan_t *plan)
{
	size_t nlen = name_len(name);
	uint64_t h = name_hash(c, name, nlen);
	cnode_t *n;
	pf_prepared_stmt_t *st;
	sentry_t *e;
	op_t *o;
	int rc;

	assert(nlen > 0 && max > 0);
	memset(plan, 0, sizeof(*plan));
	if (ops_reserve(c, 2 + PF_PREPARED_EVICT_MAX) < 0)
		return -ENOMEM;
	n = node_get(c, name, nlen, h);
	if (!n)
		return -ENOMEM;
	if (n->stmt) {
		/* Already has it: the server answers 42P05 to a Parse under the existing
		 * statement's server-side name, which is made present first. */
		rc = ensure_present(c, s, max, n->stmt, plan);
		if (rc < 0)
			return rc;
		plan->rename = n->stmt->name;
		plan->tag = new_tag(c);
		o = op_push(c, plan->tag, OP_DUPLICATE);
		o->node = n;
		o->srv = s;
		n->pins++;
		if (name[nlen] != '\0') {
			free(c->dup_full);
			c->dup_full = strdup(name); /* NULL: the text names the first 63 bytes */
			c->dup_tag = plan->tag;
		}
		return 0;
	}
	if (c->count >= PF_PREPARED_CLIENT_MAX || len > PF_PREPARED_CLIENT_MAX_BYTES - c->bytes) {
		node_maybe_free(c, n);
		return -EMFILE;
	}
	st = stmt_get(c->reg, body, len);
	if (!st) {
		node_maybe_free(c, n);
		return -ENOMEM;
	}
	e = server_find(s, st);
	if (e && aborted) {
		/* In a failed transaction the server refuses any Parse (25P02), as the client
		 * must be told: sent under the existing name, which the refusal leaves alone. */
		server_touch(s, e);
		e->pins++;
		evict_over(c, s, max, plan);
		e->pins--;
		plan->rename = st->name;
		plan->tag = new_tag(c);
	} else if (e) {
		server_touch(s, e);
		e->pins++;
		evict_over(c, s, max, plan);
		e->pins--;
		plan->synth = '1'; /* ParseComplete */
		plan->tag = new_tag(c);
	} else {
		/* The client's own Parse, renamed, prepares it (after an eviction if full). */
		plan->tag = add_present(c, s, max, st, 0, plan);
		if (!plan->tag) {
			stmt_unref(c->reg, st);
			node_maybe_free(c, n);
			return -ENOMEM;
		}
		plan->rename = st->name;
	}
	plan->client_parses = 1;
	o = op_push(c, plan->tag, OP_CLIENT_SET);
	o->node = n;
	n->pins++;
	o->prev = node_set(c, n, st); /* NULL: the name was free */
	n->last_use = ++c->use_clock;
	return 0;
}

int pf_prepared_use(pf_prepared_client_t *c, pf_prepared_server_t *s, uint32_t max,
                    const char *name, bool is_bind, pf_prepared_plan_t *plan)
{
	size_t nlen = name_len(name);
	cnode_t *n = node_find(c, name, nlen, name_hash(c, name, nlen));
	int rc;

	memset(plan, 0, sizeof(*plan));
	if (!n || !n->stmt)
		return 0; /* unknown: the server says so, in Postgres' words */
	n->last_use = ++c->use_clock;
	if (ops_reserve(c, 1 + PF_PREPARED_EVICT_MAX) < 0)
		return -ENOMEM;
	rc = ensure_present(c, s, max, n->stmt, plan);
	if (rc < 0)
		return rc;
	plan->rename = n->stmt->name;
	plan->stmt = n->stmt;
	plan->binds = is_bind ? 1 : 0;
	return 0;
}

int pf_prepared_close(pf_prepared_client_t *c, const char *name, pf_prepared_plan_t *plan)
{
	size_t nlen = name_len(name);
	cnode_t *n = node_find(c, name, nlen, name_hash(c, name, nlen));
	op_t *o;

	memset(plan, 0, sizeof(*plan));
	plan->synth = '3'; /* CloseComplete, whether or not the name exists */
	if (!n || !n->stmt)
		return 0;
	if (ops_reserve(c, 1) < 0)
		return -ENOMEM;
	plan->tag = new_tag(c);
	o = op_push(c, plan->tag, OP_CLIENT_SET);
	o->node = n;
	n->pins++;
	o->prev = node_set(c, n, NULL);
	return 0;
}

void pf_prepared_discard(pf_prepared_client_t *c, pf_prepared_server_t *s)
{
	if (c) {
		/* The value a name had before its first unresolved change is what is settled:
		 * that becomes "free"; names no change refers to go. */
		for (uint32_t i = 0; i < c->ops_len; i++) {
			op_t *o = op_at(c, i);

			/* The first change of a name holds its settled value. */
			if (o->kind == OP_CLIENT_SET && !o->node->seen) {
				o->node->seen = true;
				stmt_unref(c->reg, o->prev);
				o->prev = NULL;
			}
		}
		for (uint32_t i = 0; i < c->nbuckets; i++) {
			for (cnode_t *n = c->buckets[i], *next; n; n = next) {
				next = n->hnext;
				if (n->seen) {
					n->seen = false;
					continue;
				}
				stmt_unref(c->reg, node_set(c, n, NULL));
				node_maybe_free(c, n);
			}
		}
	}
	if (s) {
		pf_list_node_t *it, *prev;

		for (it = s->lru.head.prev; it != &s->lru.head; it = prev) {
			sentry_t *e = PF_CONTAINER_OF(it, sentry_t, lru);

			prev = it->prev;
			if (e->pins == 0)
				stmt_unref(s->reg, server_remove(s, e));
		}
		/* An unresolved eviction from s: undoing it must not bring back what is gone. */
		for (uint32_t i = 0; c && i < c->ops_len; i++) {
			op_t *o = op_at(c, i);

			if (o->kind == OP_SERVER_DEL && o->srv == s) {
				stmt_unref(c->reg, o->prev);
				o->prev = NULL;
				o->kind = OP_NONE;
			}
		}
	}
}
