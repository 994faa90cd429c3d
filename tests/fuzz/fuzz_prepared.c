#include "pfbuild.h"
/*
 * libFuzzer target for the prepared-statement bookkeeping (prepared.h), driven as client.c and
 * server.c drive it: each input byte is one step — a client's named Parse / Bind / Describe /
 * Close (name, text and server chosen by the byte) unless it must wait, a Sync, the oldest
 * outstanding tag answered, an error at some outstanding tag (the later ones skipped, reported
 * before or after the failed one, as the request queue may report them), DISCARD ALL, or the
 * link ending (the server changes; with changes unresolved the client is replaced). After every
 * step pf_prepared_check() must hold, plans must be well-formed (eviction before injection
 * before the message, tags increasing), and at the end everything freed leaves the registry
 * empty (ASan finds leaks and use-after-free of statements, names and server entries).
 *
 * A model of the truth runs beside it: what each server really has prepared and what each
 * client name really means, changed only by messages answered without error. A Parse the
 * server would refuse (a statement it has) or a Close of one it lacks is a bug; a duplicate
 * Parse always fails, as Postgres refuses it; and whenever nothing is outstanding, the
 * bookkeeping must equal the truth.
 */

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgfunnel/prepared.h"

#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_TAGS  4096
#define MAX_TRUTH 64

enum { EF_NONE, EF_SV_ADD, EF_SV_DEL, EF_CL_SET, EF_DUP };

/* What a message does if the server answers it without error. */
typedef struct effect {
	uint8_t kind;
	int srv;
	char sname[PF_PREPARED_NAME_MAX]; /* server-side name ("" with EF_CL_SET: none) */
	int cname;                        /* client name index */
} effect_t;

typedef struct truth_server {
	char names[MAX_TRUTH][PF_PREPARED_NAME_MAX];
	int n;
} truth_server_t;

typedef struct harness {
	pf_prepared_registry_t *reg;
	pf_prepared_client_t *cl;
	pf_prepared_server_t *sv[3];
	int cur;                 /* the server the client is linked to */
	uint32_t tags[MAX_TAGS]; /* outstanding tags, oldest first */
	effect_t eff[MAX_TAGS][2];
	size_t ntags;
	truth_server_t truth[3];
	char client_truth[5][PF_PREPARED_NAME_MAX];
} harness_t;

static const char *const names[] = {"a", "b", "c", "dd", "e"};

static int truth_find(const truth_server_t *t, const char *name)
{
	for (int i = 0; i < t->n; i++)
		if (strcmp(t->names[i], name) == 0)
			return i;
	return -1;
}

/* The message of outstanding tag i was answered without error. */
static void apply(harness_t *h, size_t i)
{
	for (int k = 0; k < 2; k++) {
		const effect_t *e = &h->eff[i][k];
		truth_server_t *t = &h->truth[e->srv];
		int at = truth_find(t, e->sname);

		switch (e->kind) {
		case EF_SV_ADD:
			CHECK(at < 0); /* Postgres would say 42P05: the bookkeeping lost track */
			CHECK(t->n < MAX_TRUTH);
			strcpy(t->names[t->n++], e->sname);
			break;
		case EF_SV_DEL:
			CHECK(at >= 0); /* closing what the server does not have: lost track */
			t->names[at][0] = 0;
			memmove(t->names[at], t->names[t->n - 1], PF_PREPARED_NAME_MAX);
			t->n--;
			break;
		case EF_CL_SET:
			strcpy(h->client_truth[e->cname], e->sname);
			break;
		case EF_DUP:
			CHECK(!"a duplicate Parse cannot succeed");
			break;
		default:
			break;
		}
	}
}

/* Nothing outstanding: the bookkeeping says what is true. */
static void compare_truth(harness_t *h)
{
	for (int k = 0; k < 3; k++) {
		CHECK(pf_prepared_server_count(h->sv[k]) == (uint32_t)h->truth[k].n);
		for (int i = 0; i < h->truth[k].n; i++)
			CHECK(pf_prepared_server_has_name(h->sv[k], h->truth[k].names[i]));
	}
	for (int i = 0; i < 5; i++) {
		const char *got = pf_prepared_client_lookup(h->cl, names[i]);

		CHECK(strcmp(got ? got : "", h->client_truth[i]) == 0);
	}
}

static void check(harness_t *h)
{
	const pf_prepared_server_t *const sv[3] = {h->sv[0], h->sv[1], h->sv[2]};

	CHECK(pf_prepared_check(h->cl, sv, 3) == 0);
	/* Every outstanding tag carries at least one unresolved change, and nothing else does. */
	CHECK(pf_prepared_has_pending(h->cl) == (h->ntags > 0));
	if (h->ntags == 0)
		compare_truth(h);
}

static effect_t *add_tag(harness_t *h, uint32_t tag)
{
	if (tag == 0)
		return NULL;
	CHECK(h->ntags == 0 || (int32_t)(tag - h->tags[h->ntags - 1]) > 0);
	CHECK(h->ntags < MAX_TAGS);
	memset(h->eff[h->ntags], 0, sizeof(h->eff[h->ntags]));
	h->tags[h->ntags] = tag;
	return h->eff[h->ntags++];
}

/* kind: 'P' Parse, 'U' Bind/Describe, 'C' Close; cname: the client name's index. */
static void note_plan(harness_t *h, const pf_prepared_plan_t *p, char kind, int cname)
{
	effect_t *e;
	const char *now = pf_prepared_client_lookup(h->cl, names[cname]);

	CHECK(p->n_evict <= PF_PREPARED_EVICT_MAX);
	for (unsigned i = 0; i < p->n_evict; i++)
		CHECK(p->evict_tag[i] != 0 && (i == 0 || p->evict_tag[i - 1] < p->evict_tag[i]));
	if (p->inject) {
		CHECK(p->inject_tag != 0);
		CHECK(pf_prepared_server_has(h->sv[h->cur], p->inject));
		CHECK(strncmp(p->inject->name, PF_PREPARED_PREFIX, 9) == 0);
	}
	if (p->synth)
		CHECK(p->synth == '1' || p->synth == '3');
	if (p->synth)
		CHECK(!p->rename);
	for (unsigned i = 0; i < p->n_evict; i++) {
		if ((e = add_tag(h, p->evict_tag[i])) != NULL) {
			e->kind = EF_SV_DEL;
			e->srv = h->cur;
			strcpy(e->sname, p->evict[i]->name);
		}
	}
	if ((e = add_tag(h, p->inject_tag)) != NULL) {
		e->kind = EF_SV_ADD;
		e->srv = h->cur;
		strcpy(e->sname, p->inject->name);
	}
	e = add_tag(h, p->tag);
	if (kind == 'U') {
		CHECK(!e);
		CHECK((p->rename != NULL) == (now != NULL));
		return;
	}
	if (!e)
		return; /* a Close of a name it does not have */
	if (kind == 'C') {
		e[0].kind = EF_CL_SET;
		e[0].cname = cname;
		return;
	}
	if (pf_prepared_dup_name(h->cl, p->tag)) {
		e[0].kind = EF_DUP;
		return;
	}
	CHECK(now != NULL);
	e[0].kind = EF_CL_SET;
	e[0].cname = cname;
	strcpy(e[0].sname, now);
	if (!p->synth) {
		CHECK(p->rename && strcmp(p->rename, now) == 0);
		e[1].kind = EF_SV_ADD;
		e[1].srv = h->cur;
		strcpy(e[1].sname, now);
	}
}

static void new_client(harness_t *h)
{
	memset(h->client_truth, 0, sizeof(h->client_truth));
	pf_prepared_client_free(h->cl);
	h->cl = pf_prepared_client_new(h->reg);
	CHECK(h->cl != NULL);
	h->ntags = 0;
}

static void step(harness_t *h, uint8_t b, uint8_t arg)
{
	static const char *const sqls[] = {"SELECT 1", "SELECT 2", "SELECT $1", "BEGIN", "x"};
	const char *name = names[arg % 5];
	uint32_t max = 1 + (b >> 5); /* 1..8 statements per server */
	pf_prepared_plan_t p;
	uint8_t body[32];
	size_t blen;
	int rc;

	switch (b & 15) {
	case 0:
	case 1:
	case 2: /* a client's message */
		if (pf_prepared_must_wait(h->cl))
			break; /* client.c holds it back */
		if ((b & 15) == 0) {
			blen = strlen(sqls[(arg >> 3) % 5]) + 1;
			memcpy(body, sqls[(arg >> 3) % 5], blen);
			body[blen++] = 0;
			body[blen++] = 0;
			/* aborted (a failed transaction) is left to the unit tests: the truth
			 * model has no failed transactions. */
			rc = pf_prepared_parse(h->cl, h->sv[h->cur], max, false, name, body, blen,
			                       &p);
		} else if ((b & 15) == 1) {
			rc = pf_prepared_use(h->cl, h->sv[h->cur], max, name, arg & 1, &p);
		} else {
			rc = pf_prepared_close(h->cl, name, &p);
		}
		CHECK(rc == 0);
		note_plan(h, &p, "PUC"[b & 15], arg % 5);
		break;
	case 3: /* Sync */
		pf_prepared_sync(h->cl);
		break;
	case 4:
	case 5:
	case 6: /* the oldest outstanding tag is answered */
		if (h->ntags == 0)
			break;
		if (h->eff[0][0].kind != EF_DUP) {
			apply(h, 0);
			pf_prepared_resolve(h->cl, h->tags[0], true);
			memmove(h->tags, h->tags + 1, (h->ntags - 1) * sizeof(h->tags[0]));
			memmove(h->eff, h->eff + 1, (h->ntags - 1) * sizeof(h->eff[0]));
			h->ntags--;
			break;
		}
		arg = 0; /* the server refuses a duplicate: an error at it */
		b |= 16;
		/* fall through */
	case 7: { /* an error: tag k fails, every later one is skipped */
		size_t k = h->ntags ? arg % h->ntags : 0;

		if (h->ntags == 0)
			break;
		/* Everything before k was answered first (a duplicate among them fails instead). */
		for (size_t i = 0; i < k; i++) {
			if (h->eff[i][0].kind == EF_DUP) {
				k = i;
				break;
			}
		}
		for (size_t i = 0; i < k; i++) {
			apply(h, i);
			pf_prepared_resolve(h->cl, h->tags[i], true);
		}
		if (b & 16) {
			/* Drops of the later ones reported first (reqq), then k's own error. */
			for (size_t i = k + 1; i < h->ntags; i++)
				pf_prepared_resolve(h->cl, h->tags[i], false);
			pf_prepared_resolve(h->cl, h->tags[k], false);
		} else {
			/* k itself skipped after an untagged message failed: all dropped in order.
			 */
			for (size_t i = k; i < h->ntags; i++)
				pf_prepared_resolve(h->cl, h->tags[i], false);
		}
		h->ntags = 0;
		CHECK(!pf_prepared_has_pending(h->cl));
		CHECK(!pf_prepared_must_wait(h->cl));
		break;
	}
	case 8: /* DISCARD ALL answered (before everything outstanding) */
		pf_prepared_discard(h->cl, h->sv[h->cur]);
		memset(h->client_truth, 0, sizeof(h->client_truth));
		h->truth[h->cur].n = 0;
		/* An outstanding eviction now closes a statement the server no longer has: fine
		 * for Postgres, and nothing to the truth. */
		for (size_t i = 0; i < h->ntags; i++)
			for (int k = 0; k < 2; k++)
				if (h->eff[i][k].kind == EF_SV_DEL && h->eff[i][k].srv == h->cur)
					h->eff[i][k].kind = EF_NONE;
		break;
	case 9: /* the link ends */
		if (h->ntags == 0) {
			pf_prepared_detach(h->cl);
			CHECK(!pf_prepared_is_broken(h->cl));
		} else {
			pf_prepared_detach(h->cl);
			CHECK(pf_prepared_is_broken(h->cl));
			new_client(h); /* client.c closes a broken one */
			/* ... and the server, owing answers, is closed rather than reused. */
			pf_prepared_server_free(h->sv[h->cur]);
			h->sv[h->cur] = pf_prepared_server_new(h->reg);
			CHECK(h->sv[h->cur] != NULL);
			h->truth[h->cur].n = 0;
		}
		h->cur = arg % 3;
		break;
	case 10: /* a server is closed (only between links) */
		if (h->ntags == 0) {
			int k = arg % 3;

			pf_prepared_detach(h->cl);
			pf_prepared_server_free(h->sv[k]);
			h->sv[k] = pf_prepared_server_new(h->reg);
			h->truth[k].n = 0;
			CHECK(h->sv[k] != NULL);
		}
		break;
	default:
		break;
	}
	check(h);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint8_t key[16] = {7};
	harness_t h;

	memset(&h, 0, sizeof(h));
	h.reg = pf_prepared_registry_new(key);
	CHECK(h.reg != NULL);
	new_client(&h);
	for (int i = 0; i < 3; i++) {
		h.sv[i] = pf_prepared_server_new(h.reg);
		CHECK(h.sv[i] != NULL);
	}
	for (size_t i = 0; i + 1 < size; i += 2)
		step(&h, data[i], data[i + 1]);
	pf_prepared_client_free(h.cl);
	for (int i = 0; i < 3; i++)
		pf_prepared_server_free(h.sv[i]);
	CHECK(pf_prepared_registry_count(h.reg) == 0);
	CHECK(pf_prepared_registry_bytes(h.reg) == 0);
	pf_prepared_registry_free(h.reg);
	return 0;
}
