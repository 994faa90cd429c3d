/*
 * cancelkey: the table of cancel keys (the BackendKeyData pgfunnel gave its clients), so that a
 * CancelRequest on a fresh connection finds the client it names. Entries are embedded in their
 * owners; keys are compared in constant time. Pure: no allocation, no I/O.
 */
#ifndef PGFUNNEL_CANCELKEY_H
#define PGFUNNEL_CANCELKEY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pgfunnel/list.h"

#define PF_CANCEL_BUCKETS 4096

/* One key, embedded in the client it belongs to (pid and key must not change while it is in a
 * table). */
typedef struct pf_cancel_key {
	struct pf_cancel_key *next; /* in its bucket's chain (singly linked: 8 bytes per client) */
	uint32_t pid, key;
} pf_cancel_key_t;

typedef struct pf_cancel_table {
	pf_cancel_key_t *buckets[PF_CANCEL_BUCKETS];
	size_t count;
} pf_cancel_table_t;

void pf_cancel_table_init(pf_cancel_table_t *t);

/* Prepares k (not in any table) so that pf_cancel_table_remove() on it is harmless. */
void pf_cancel_key_init(pf_cancel_key_t *k);

/* Adds k (k->pid and k->key set; not in a table yet). */
void pf_cancel_table_add(pf_cancel_table_t *t, pf_cancel_key_t *k);

/* Removes k if it is in t (found by identity, walking its bucket); idempotent. */
void pf_cancel_table_remove(pf_cancel_table_t *t, pf_cancel_key_t *k);

/* The entry with exactly this pid and key, or NULL. */
pf_cancel_key_t *pf_cancel_table_find(pf_cancel_table_t *t, uint32_t pid, uint32_t key);

/*
 * Peering (peer_id, [peers]): PgBouncer's layout of a BackendKeyData key, so that pgfunnel and
 * PgBouncer peers understand each other's keys. pid and key are the two 32-bit halves as
 * integers (sent big-endian); on the wire the 8 bytes are b0..b7:
 *   b0     its top bit is always clear (a "pid" must be positive for some clients);
 *   b1, b2 the peer id, low byte first (when peer_id > 0);
 *   b7     its two low bits are the TTL: 3 when issued, one less at each forwarding.
 * The rest stays random.
 */
#define PF_CANCEL_TTL_MASK    3u
#define PF_CANCEL_MAX_PEER_ID 16383

/* Turns two random words into a key issued by peer peer_id (0: peering off). */
void pf_cancel_key_stamp(uint32_t *pid, uint32_t *key, int peer_id);

/* The peer id a key carries (meaningful only when peering is on). */
static inline int pf_cancel_key_peer(uint32_t pid)
{
	return (int)((pid >> 16 & 0xffu) | (pid >> 8 & 0xffu) << 8);
}

/* The TTL a key carries: how many more times it may be forwarded to a peer. */
static inline unsigned pf_cancel_key_ttl(uint32_t key)
{
	return key & PF_CANCEL_TTL_MASK;
}

#endif
