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
	for (size_t i = 0; i < PF_CANCEL_BUCKETS; i++)
		pf_list_init(&t->buckets[i]);
	t->count = 0;
}

void pf_cancel_key_init(pf_cancel_key_t *k)
{
	pf_list_node_init(&k->node);
}

void pf_cancel_table_add(pf_cancel_table_t *t, pf_cancel_key_t *k)
{
	assert(k->node.next == &k->node);
	pf_list_append(&t->buckets[bucket_of(k->pid)], &k->node);
	t->count++;
}

void pf_cancel_table_remove(pf_cancel_table_t *t, pf_cancel_key_t *k)
{
	if (k->node.next == &k->node)
		return;
	assert(t->count > 0);
	pf_list_remove(&t->buckets[bucket_of(k->pid)], &k->node);
	pf_list_node_init(&k->node);
	t->count--;
}

pf_cancel_key_t *pf_cancel_table_find(pf_cancel_table_t *t, uint32_t pid, uint32_t key)
{
	pf_list_t *l = &t->buckets[bucket_of(pid)];
	pf_list_node_t *it, *tmp;
	uint8_t want[8];

	memcpy(want, &pid, 4);
	memcpy(want + 4, &key, 4);
	PF_LIST_FOREACH(l, it, tmp)
	{
		pf_cancel_key_t *k = PF_CONTAINER_OF(it, pf_cancel_key_t, node);
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
