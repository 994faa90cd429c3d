/*
 * cancelkey: the cancel-key table (see include/pgfunnel/cancelkey.h).
 */
#include "pfbuild.h"

#include <assert.h>
#include <string.h>

#include "pgfunnel/cancelkey.h"
#include "pgfunnel/util.h"

static uint32_t bucket_of(uint32_t pid)
{
	return (pid * 2654435761u) >> 20 & (PF_CANCEL_BUCKETS - 1);
}

void pf_cancel_table_init(pf_cancel_table_t *t)
{
	memset(t->buckets, 0, sizeof(t->buckets));
	t->count = 0;
}

void pf_cancel_key_init(pf_cancel_key_t *k)
{
	k->next = NULL;
}

/* Where k is linked in its bucket's chain (the pointer that points at it), or NULL. */
static pf_cancel_key_t **link_of(pf_cancel_table_t *t, const pf_cancel_key_t *k)
{
	pf_cancel_key_t **at = &t->buckets[bucket_of(k->pid)];

	while (*at && *at != k)
		at = &(*at)->next;
	return *at ? at : NULL;
}

void pf_cancel_table_add(pf_cancel_table_t *t, pf_cancel_key_t *k)
{
	pf_cancel_key_t **head = &t->buckets[bucket_of(k->pid)];

	assert(!link_of(t, k));
	k->next = *head;
	*head = k;
	t->count++;
}

void pf_cancel_table_remove(pf_cancel_table_t *t, pf_cancel_key_t *k)
{
	pf_cancel_key_t **at = link_of(t, k);

	if (!at)
		return;
	assert(t->count > 0);
	*at = k->next;
	k->next = NULL;
	t->count--;
}

pf_cancel_key_t *pf_cancel_table_find(pf_cancel_table_t *t, uint32_t pid, uint32_t key)
{
	uint8_t want[8];

	memcpy(want, &pid, 4);
	memcpy(want + 4, &key, 4);
	for (pf_cancel_key_t *k = t->buckets[bucket_of(pid)]; k; k = k->next) {
		uint8_t have[8];

		memcpy(have, &k->pid, 4);
		memcpy(have + 4, &k->key, 4);
		if (pf_memeq_ct(have, want, sizeof(have)))
			return k;
	}
	return NULL;
}

void pf_cancel_key_stamp(uint32_t *pid, uint32_t *key, int peer_id)
{
	assert(peer_id >= 0 && peer_id <= 0xffff);
	*pid &= 0x7fffffffu;
	if (peer_id > 0) {
		*pid = (*pid & 0xff0000ffu) | (uint32_t)(peer_id & 0xff) << 16 |
		       (uint32_t)(peer_id >> 8 & 0xff) << 8;
		*key |= PF_CANCEL_TTL_MASK;
	}
}
