#include "pfbuild.h"
/*
 * Unit tests for prepared: the plans for named Parse / Bind / Describe / Close over several
 * servers (rename, inject, synthesized answers, duplicates, unknown names), the LRU bound and
 * its evictions, and the change log — commits, failures undone newest first, the wait after a
 * Sync, DISCARD ALL with changes in flight, a link that ends with changes unresolved — and the
 * registry's reference counts going back to zero.
 */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "pgfunnel/prepared.h"

static const uint8_t key[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};

typedef struct fx {
	pf_prepared_registry_t *reg;
	pf_prepared_client_t *cl;
	pf_prepared_server_t *s1, *s2;
} fx_t;

static int setup(void **state)
{
	static fx_t f;

	f.reg = pf_prepared_registry_new(key);
	f.cl = pf_prepared_client_new(f.reg);
	f.s1 = pf_prepared_server_new(f.reg);
	f.s2 = pf_prepared_server_new(f.reg);
	assert_non_null(f.reg);
	assert_non_null(f.cl);
	*state = &f;
	return 0;
}

static int teardown(void **state)
{
	fx_t *f = *state;

	pf_prepared_client_free(f->cl);
	pf_prepared_server_free(f->s1);
	pf_prepared_server_free(f->s2);
	/* Every reference was given back: the registry is empty. */
	assert_int_equal(pf_prepared_registry_count(f->reg), 0);
	assert_int_equal(pf_prepared_registry_bytes(f->reg), 0);
	pf_prepared_registry_free(f->reg);
	return 0;
}

/* A Parse body: query text with its NUL, then zero parameter types. */
static size_t body(const char *sql, uint8_t *out)
{
	size_t n = strlen(sql) + 1;

	memcpy(out, sql, n);
	out[n] = 0;
	out[n + 1] = 0;
	return n + 2;
}

/* The server-side name of the registry's n-th statement. */
static const char *sname(fx_t *f, unsigned n)
{
	static char buf[PF_PREPARED_NAME_MAX];

	snprintf(buf, sizeof(buf), "%s%u", pf_prepared_registry_prefix(f->reg), n);
	return buf;
}

static pf_prepared_plan_t parse(fx_t *f, pf_prepared_server_t *s, uint32_t max, const char *name,
                                const char *sql)
{
	uint8_t b[256];
	size_t n = body(sql, b);
	pf_prepared_plan_t p;

	assert_int_equal(pf_prepared_parse(f->cl, s, max, false, name, b, n, &p), 0);
	return p;
}

static pf_prepared_plan_t use(fx_t *f, pf_prepared_server_t *s, uint32_t max, const char *name)
{
	pf_prepared_plan_t p;

	assert_int_equal(pf_prepared_use(f->cl, s, max, name, true, &p), 0);
	return p;
}

static void test_parse_forwarded_then_synthesized(void **state)
{
	fx_t *f = *state;
	pf_prepared_plan_t p = parse(f, f->s1, 10, "a", "SELECT 1");

	/* New everywhere: the client's own Parse prepares it, renamed. */
	assert_null(p.inject);
	assert_int_equal(p.n_evict, 0);
	assert_int_equal(p.synth, 0);
	assert_non_null(p.rename);
	assert_string_equal(p.rename, sname(f, 1));
	assert_int_not_equal(p.tag, 0);
	assert_int_equal(p.client_parses, 1);
	assert_int_equal(p.server_parses, 1);
	assert_true(pf_prepared_has_pending(f->cl));
	pf_prepared_resolve(f->cl, p.tag, true);
	assert_false(pf_prepared_has_pending(f->cl));
	assert_int_equal(pf_prepared_client_count(f->cl), 1);
	assert_int_equal(pf_prepared_server_count(f->s1), 1);

	/* The same text under another name on the same server: answered by the pooler. */
	p = parse(f, f->s1, 10, "b", "SELECT 1");
	assert_int_equal(p.synth, '1');
	assert_null(p.rename);
	assert_int_equal(p.server_parses, 0);
	pf_prepared_resolve(f->cl, p.tag, true);
	assert_int_equal(pf_prepared_client_count(f->cl), 2);
	assert_int_equal(pf_prepared_server_count(f->s1), 1);
	assert_int_equal(pf_prepared_registry_count(f->reg), 1);
}

static void test_use_injects_on_other_server(void **state)
{
	fx_t *f = *state;
	pf_prepared_plan_t p = parse(f, f->s1, 10, "a", "SELECT 1");

	pf_prepared_resolve(f->cl, p.tag, true);
	p = use(f, f->s1, 10, "a");
	assert_null(p.inject);
	assert_string_equal(p.rename, sname(f, 1));
	assert_int_equal(p.binds, 1);
	assert_int_equal(p.tag, 0);
	/* Server 2 lacks it: a Parse is injected first. */
	p = use(f, f->s2, 10, "a");
	assert_non_null(p.inject);
	assert_string_equal(p.inject->name, sname(f, 1));
	assert_string_equal((const char *)p.inject->body, "SELECT 1");
	assert_string_equal(p.rename, sname(f, 1));
	assert_int_equal(p.server_parses, 1);
	assert_true(pf_prepared_server_has(f->s2, p.inject));
	pf_prepared_resolve(f->cl, p.inject_tag, true);
	assert_int_equal(pf_prepared_server_count(f->s2), 1);
	/* Unknown names are left alone (the server answers 26000 itself). */
	p = use(f, f->s2, 10, "nope");
	assert_null(p.rename);
	assert_null(p.inject);
}

static void test_failed_inject_is_undone(void **state)
{
	fx_t *f = *state;
	pf_prepared_plan_t p = parse(f, f->s1, 10, "a", "SELECT 1");

	pf_prepared_resolve(f->cl, p.tag, true);
	p = use(f, f->s2, 10, "a");
	assert_non_null(p.inject);
	pf_prepared_resolve(f->cl, p.inject_tag, false);
	assert_int_equal(pf_prepared_server_count(f->s2), 0);
	/* Tried again next time. */
	p = use(f, f->s2, 10, "a");
	assert_non_null(p.inject);
	pf_prepared_resolve(f->cl, p.inject_tag, true);
	assert_int_equal(pf_prepared_server_count(f->s2), 1);
}

static void test_failed_parse_is_undone(void **state)
{
	fx_t *f = *state;
	pf_prepared_plan_t p = parse(f, f->s1, 10, "a", "SELEC 1");

	pf_prepared_resolve(f->cl, p.tag, false);
	assert_int_equal(pf_prepared_client_count(f->cl), 0);
	assert_int_equal(pf_prepared_server_count(f->s1), 0);
	assert_int_equal(pf_prepared_registry_count(f->reg), 0);
	/* The name is free again. */
	p = parse(f, f->s1, 10, "a", "SELECT 2");
	assert_null(p.inject);
	assert_int_equal(p.synth, 0);
	pf_prepared_resolve(f->cl, p.tag, true);
	assert_int_equal(pf_prepared_client_count(f->cl), 1);
}

static void test_duplicate_parse(void **state)
{
	fx_t *f = *state;
	pf_prepared_plan_t p = parse(f, f->s1, 10, "a", "SELECT 1");

	pf_prepared_resolve(f->cl, p.tag, true);
	/* Same name on another server: the existing statement is made present, and the
	 * client's Parse goes to it under its server-side name, so the server says 42P05. */
	p = parse(f, f->s2, 10, "a", "SELECT 2");
	assert_non_null(p.inject);
	assert_string_equal(p.inject->name, sname(f, 1));
	assert_string_equal(p.rename, sname(f, 1));
	assert_int_equal(p.client_parses, 0);
	assert_string_equal(pf_prepared_dup_name(f->cl, p.tag), "a");
	assert_null(pf_prepared_dup_name(f->cl, p.inject_tag));
	pf_prepared_resolve(f->cl, p.inject_tag, true);
	pf_prepared_resolve(f->cl, p.tag, false);
	assert_null(pf_prepared_dup_name(f->cl, p.tag));
	assert_int_equal(pf_prepared_client_count(f->cl), 1);
	assert_int_equal(pf_prepared_server_count(f->s2), 1);
	assert_false(pf_prepared_server_is_unsure(f->s2));
	/* A duplicate Parse the server accepted means it had lost the statement: unsure. */
	p = parse(f, f->s2, 10, "a", "SELECT 2");
	pf_prepared_resolve(f->cl, p.tag, true);
	assert_true(pf_prepared_server_is_unsure(f->s2));
}

static void test_close(void **state)
{
	fx_t *f = *state;
	pf_prepared_plan_t p = parse(f, f->s1, 10, "a", "SELECT 1");

	pf_prepared_resolve(f->cl, p.tag, true);
	assert_int_equal(pf_prepared_close(f->cl, "a", &p), 0);
	assert_int_equal(p.synth, '3');
	assert_int_not_equal(p.tag, 0);
	assert_int_equal(pf_prepared_client_count(f->cl), 0);
	pf_prepared_resolve(f->cl, p.tag, true);
	/* The server keeps it for others. */
	assert_int_equal(pf_prepared_server_count(f->s1), 1);
	/* Unknown names close fine, untagged. */
	assert_int_equal(pf_prepared_close(f->cl, "zz", &p), 0);
	assert_int_equal(p.synth, '3');
	assert_int_equal(p.tag, 0);
	/* The name can take other text now. */
	p = parse(f, f->s1, 10, "a", "SELECT 3");
	assert_int_equal(p.synth, 0);
	assert_string_equal(p.rename, sname(f, 2));
	pf_prepared_resolve(f->cl, p.tag, true);
}

/* Close a, then Parse a with other text, in one run; the Close is skipped after an error: a
 * means its first statement again (undone newest first). */
static void test_skipped_run_undone_in_order(void **state)
{
	fx_t *f = *state;
	pf_prepared_plan_t p = parse(f, f->s1, 10, "a", "SELECT 1"), pc, pp;

	pf_prepared_resolve(f->cl, p.tag, true);
	assert_int_equal(pf_prepared_close(f->cl, "a", &pc), 0);
	pp = parse(f, f->s1, 10, "a", "SELECT 2");
	assert_string_equal(pp.rename, sname(f, 2));
	/* The reqq reports drops oldest first, then nothing for the tags already undone. */
	pf_prepared_resolve(f->cl, pc.tag, false);
	pf_prepared_resolve(f->cl, pp.tag, false);
	assert_false(pf_prepared_has_pending(f->cl));
	assert_int_equal(pf_prepared_client_count(f->cl), 1);
	p = use(f, f->s1, 10, "a");
	assert_string_equal(p.rename, sname(f, 1));
	assert_int_equal(pf_prepared_server_count(f->s1), 1);
}

static void test_lru_eviction(void **state)
{
	fx_t *f = *state;
	const char *names[] = {"a", "b", "c"};
	const char *sql[] = {"SELECT 1", "SELECT 2", "SELECT 3"};
	pf_prepared_plan_t p;

	for (int i = 0; i < 3; i++) {
		p = parse(f, f->s1, 2, names[i], sql[i]);
		if (i < 2) {
			assert_int_equal(p.n_evict, 0);
		} else {
			/* Full: the least recently used (a) is closed first, under an earlier tag.
			 */
			assert_int_equal(p.n_evict, 1);
			assert_string_equal(p.evict[0]->name, sname(f, 1));
			assert_true(p.evict_tag[0] < p.tag);
		}
		pf_prepared_resolve(f->cl, p.tag, true);
	}
	assert_int_equal(pf_prepared_server_count(f->s1), 2);
	/* b is now the oldest; using it makes c the oldest. */
	p = use(f, f->s1, 2, "b");
	assert_null(p.inject);
	p = use(f, f->s1, 2, "a");
	assert_non_null(p.inject);
	assert_int_equal(p.n_evict, 1);
	assert_string_equal(p.evict[0]->name, sname(f, 3));
	/* The eviction and the Parse are skipped (an earlier error): c is back, a is not. */
	pf_prepared_resolve(f->cl, p.evict_tag[0], false);
	assert_int_equal(pf_prepared_server_count(f->s1), 2);
	p = use(f, f->s1, 2, "c");
	assert_null(p.inject);
}

static void test_wait_after_sync(void **state)
{
	fx_t *f = *state;
	pf_prepared_plan_t p = parse(f, f->s1, 10, "a", "SELECT 1");

	assert_false(pf_prepared_must_wait(f->cl));
	pf_prepared_sync(f->cl);
	/* The next decision depends on how the Parse before the Sync ended. */
	assert_true(pf_prepared_must_wait(f->cl));
	pf_prepared_resolve(f->cl, p.tag, true);
	assert_false(pf_prepared_must_wait(f->cl));
	pf_prepared_sync(f->cl); /* nothing pending: nothing to wait for */
	assert_false(pf_prepared_must_wait(f->cl));
}

static void test_discard_keeps_later_changes(void **state)
{
	fx_t *f = *state;
	pf_prepared_plan_t p = parse(f, f->s1, 10, "a", "SELECT 1"), pb;

	pf_prepared_resolve(f->cl, p.tag, true);
	p = parse(f, f->s1, 10, "x", "SELECT 9");
	pf_prepared_resolve(f->cl, p.tag, true);
	/* DISCARD ALL is answered while a later Parse of b (sent after it) is unresolved. */
	pb = parse(f, f->s1, 10, "b", "SELECT 2");
	pf_prepared_discard(f->cl, f->s1);
	assert_int_equal(pf_prepared_client_count(f->cl), 1);
	assert_int_equal(pf_prepared_server_count(f->s1), 1);
	pf_prepared_resolve(f->cl, pb.tag, true);
	p = use(f, f->s1, 10, "a");
	assert_null(p.rename); /* gone */
	p = use(f, f->s1, 10, "b");
	assert_non_null(p.rename);
	assert_null(p.inject);
	/* The same, but the Parse of b then fails: nothing is left. */
	pf_prepared_discard(f->cl, f->s1);
	assert_int_equal(pf_prepared_client_count(f->cl), 0);
	p = parse(f, f->s1, 10, "b", "SELECT 2");
	pf_prepared_discard(f->cl, f->s1);
	pf_prepared_resolve(f->cl, p.tag, false);
	assert_int_equal(pf_prepared_client_count(f->cl), 0);
	assert_int_equal(pf_prepared_server_count(f->s1), 0);
}

static void test_discard_undoes_no_eviction(void **state)
{
	fx_t *f = *state;
	pf_prepared_plan_t p = parse(f, f->s1, 1, "a", "SELECT 1");

	pf_prepared_resolve(f->cl, p.tag, true);
	p = parse(f, f->s1, 1, "b", "SELECT 2");
	assert_int_equal(p.n_evict, 1);
	/* DISCARD ALL came before the eviction; the eviction is then skipped: a stays gone. */
	pf_prepared_discard(f->cl, f->s1);
	pf_prepared_resolve(f->cl, p.evict_tag[0], false);
	assert_int_equal(pf_prepared_server_count(f->s1), 0);
}

static void test_detach_breaks(void **state)
{
	fx_t *f = *state;
	pf_prepared_plan_t p = parse(f, f->s1, 10, "a", "SELECT 1");

	assert_false(pf_prepared_is_broken(f->cl));
	pf_prepared_detach(f->cl);
	assert_true(pf_prepared_is_broken(f->cl));
	assert_false(pf_prepared_has_pending(f->cl));
	pf_prepared_resolve(f->cl, p.tag, false); /* too late: ignored */
}

static void test_detach_without_pending_is_fine(void **state)
{
	fx_t *f = *state;
	pf_prepared_plan_t p = parse(f, f->s1, 10, "a", "SELECT 1");

	pf_prepared_resolve(f->cl, p.tag, true);
	pf_prepared_detach(f->cl);
	assert_false(pf_prepared_is_broken(f->cl));
}

static void test_client_limit(void **state)
{
	fx_t *f = *state;
	char name[32], sql[64];
	pf_prepared_plan_t p;
	uint8_t b[128];

	for (uint32_t i = 0; i < PF_PREPARED_CLIENT_MAX; i++) {
		snprintf(name, sizeof(name), "s%u", i);
		snprintf(sql, sizeof(sql), "SELECT %u", i % 100);
		p = parse(f, f->s1, 100, name, sql);
		pf_prepared_resolve(f->cl, p.tag, true);
	}
	assert_int_equal(pf_prepared_client_count(f->cl), PF_PREPARED_CLIENT_MAX);
	assert_int_equal(pf_prepared_server_count(f->s1), 100);
	assert_int_equal(
	        pf_prepared_parse(f->cl, f->s1, 100, false, "one-more", b, body("SELECT 1", b), &p),
	        -EMFILE);
	assert_false(pf_prepared_has_pending(f->cl));
}

static void test_many_changes(void **state)
{
	fx_t *f = *state;
	pf_prepared_plan_t p;

	/* Many changes later the log and the maps hold nothing more than they should. */
	for (int i = 0; i < 70000; i++) {
		assert_int_equal(pf_prepared_close(f->cl, "none", &p), 0);
		p = parse(f, f->s1, 10, "w", "SELECT 1");
		pf_prepared_resolve(f->cl, p.tag, true);
		assert_int_equal(pf_prepared_close(f->cl, "w", &p), 0);
		pf_prepared_resolve(f->cl, p.tag, true);
	}
	assert_int_equal(pf_prepared_client_count(f->cl), 0);
}

/* A pipeline that pinned more statements than the limit sheds the excess over the next plans
 * (several evictions per plan), so the limit holds again. */
static void test_excess_shed(void **state)
{
	fx_t *f = *state;
	char name[8], sql[32];
	uint32_t tags[10];
	pf_prepared_plan_t p;

	for (int i = 0; i < 10; i++) {
		snprintf(name, sizeof(name), "n%d", i);
		snprintf(sql, sizeof(sql), "SELECT %d", i);
		p = parse(f, f->s1, 3, name, sql);
		assert_int_equal(p.n_evict, 0); /* all pinned by the run under way */
		tags[i] = p.tag;
	}
	assert_int_equal(pf_prepared_server_count(f->s1), 10);
	for (int i = 0; i < 10; i++)
		pf_prepared_resolve(f->cl, tags[i], true);
	p = use(f, f->s1, 3, "n9");
	assert_null(p.inject);
	assert_int_equal(p.n_evict, PF_PREPARED_EVICT_MAX < 7 ? PF_PREPARED_EVICT_MAX : 7);
	assert_string_equal(p.evict[0]->name, sname(f, 1)); /* least recently used first */
	for (unsigned i = 0; i < p.n_evict; i++)
		pf_prepared_resolve(f->cl, p.evict_tag[i], true);
	assert_true(pf_prepared_server_count(f->s1) <= 3);
	assert_int_equal(pf_prepared_check(f->cl, (const pf_prepared_server_t *const[]){f->s1}, 1),
	                 0);
}

/* In a failed transaction a Parse of a statement the server has is sent to be refused, and
 * the refusal takes the name back. */
static void test_parse_in_failed_transaction(void **state)
{
	fx_t *f = *state;
	uint8_t b[64];
	size_t n = body("SELECT 1", b);
	pf_prepared_plan_t p = parse(f, f->s1, 10, "a", "SELECT 1");

	pf_prepared_resolve(f->cl, p.tag, true);
	assert_int_equal(pf_prepared_parse(f->cl, f->s1, 10, true, "b", b, n, &p), 0);
	assert_int_equal(p.synth, 0);
	assert_string_equal(p.rename, sname(f, 1));
	assert_string_equal(pf_prepared_client_lookup(f->cl, "b"), sname(f, 1));
	pf_prepared_resolve(f->cl, p.tag, false); /* 25P02 */
	assert_null(pf_prepared_client_lookup(f->cl, "b"));
	assert_string_equal(pf_prepared_client_lookup(f->cl, "a"), sname(f, 1));
}

/* Only the first 63 bytes of a name count, as in Postgres; error texts get the client's name
 * back from the server-side one. */
static void test_names(void **state)
{
	fx_t *f = *state;
	char longer[80], other[80];
	const char *prefix = pf_prepared_registry_prefix(f->reg);
	pf_prepared_plan_t p;

	assert_int_equal(strncmp(prefix, "PGFUNNEL_", 9), 0);
	assert_int_equal(strlen(prefix), 9 + 8 + 1);
	memset(longer, 'x', 70);
	longer[70] = 0;
	memcpy(other, longer, sizeof(other));
	other[65] = 'y';
	p = parse(f, f->s1, 10, longer, "SELECT 1");
	pf_prepared_resolve(f->cl, p.tag, true);
	assert_string_equal(pf_prepared_client_lookup(f->cl, other), sname(f, 1));
	p = parse(f, f->s1, 10, "short", "SELECT 2");
	pf_prepared_resolve(f->cl, p.tag, true);
	assert_string_equal(pf_prepared_client_name_of(f->cl, sname(f, 2), strlen(sname(f, 2))),
	                    "short");
	assert_null(pf_prepared_client_name_of(f->cl, sname(f, 3), strlen(sname(f, 3))));
	/* A prefix of a server-side name is not that name. */
	assert_null(pf_prepared_client_name_of(f->cl, sname(f, 2), strlen(sname(f, 2)) - 1));
}

/* Shedding the excess never closes the statement the message at hand uses (its Close would go
 * first and the message would fail). */
static void test_excess_shed_keeps_the_one_used(void **state)
{
	fx_t *f = *state;
	pf_prepared_plan_t p, q;

	p = parse(f, f->s1, 10, "a", "SELECT 1");
	pf_prepared_resolve(f->cl, p.tag, true);
	q = parse(f, f->s1, 10, "b", "SELECT 2"); /* pinned: its Parse is under way */
	/* The limit drops to 1 (a reload): a is the only statement that could go, but it is
	 * the one this Bind uses. */
	p = use(f, f->s1, 1, "a");
	assert_null(p.inject);
	assert_int_equal(p.n_evict, 0);
	pf_prepared_resolve(f->cl, q.tag, true);
	assert_true(pf_prepared_server_has_name(f->s1, sname(f, 1)));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(test_parse_forwarded_then_synthesized, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_use_injects_on_other_server, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_failed_inject_is_undone, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_failed_parse_is_undone, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_duplicate_parse, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_close, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_skipped_run_undone_in_order, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_lru_eviction, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_wait_after_sync, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_discard_keeps_later_changes, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_discard_undoes_no_eviction, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_detach_breaks, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_detach_without_pending_is_fine, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_client_limit, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_many_changes, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_excess_shed, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_parse_in_failed_transaction, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_names, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_excess_shed_keeps_the_one_used, setup,
	                                        teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
