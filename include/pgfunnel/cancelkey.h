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

/* One key, embedded in the client it belongs to. */
typedef struct pf_cancel_key {
	pf_list_node_t node;
	uint32_t pid, key;
} pf_cancel_key_t;

typedef struct pf_cancel_table {
	pf_list_t buckets[PF_CANCEL_BUCKETS];
	size_t count;
} pf_cancel_table_t;

void pf_cancel_table_init(pf_cancel_table_t *t);

/* Prepares k (not in any table) so that pf_cancel_table_remove() on it is harmless. */
void pf_cancel_key_init(pf_cancel_key_t *k);

/* Adds k (k->pid and k->key set; not in a table yet). */
void pf_cancel_table_add(pf_cancel_table_t *t, pf_cancel_key_t *k);

/* Removes k if it is in t; idempotent. */
void pf_cancel_table_remove(pf_cancel_table_t *t, pf_cancel_key_t *k);

/* The entry with exactly this pid and key, or NULL. */
pf_cancel_key_t *pf_cancel_table_find(pf_cancel_table_t *t, uint32_t pid, uint32_t key);

#endif
