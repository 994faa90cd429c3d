/*
 * list: an intrusive circular doubly-linked list with a length counter.
 *
 * Every state of a client or server is membership in one list (STYLE.md), so SHOW POOLS counts
 * are list lengths. All operations are O(1) and never allocate.
 */
#ifndef PGFUNNEL_LIST_H
#define PGFUNNEL_LIST_H

#include <stdbool.h>
#include <stddef.h>

typedef struct pf_list_node {
	struct pf_list_node *next, *prev;
} pf_list_node_t;

typedef struct pf_list {
	pf_list_node_t head;
	size_t len;
} pf_list_t;

#define PF_CONTAINER_OF(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

static inline void pf_list_init(pf_list_t *l)
{
	l->head.next = l->head.prev = &l->head;
	l->len = 0;
}

/* A node that is in no list points to itself. */
static inline void pf_list_node_init(pf_list_node_t *n)
{
	n->next = n->prev = n;
}

static inline bool pf_list_is_empty(const pf_list_t *l)
{
	return l->head.next == &l->head;
}

static inline void pf_list_append(pf_list_t *l, pf_list_node_t *n)
{
	n->prev = l->head.prev;
	n->next = &l->head;
	l->head.prev->next = n;
	l->head.prev = n;
	l->len++;
}

static inline void pf_list_prepend(pf_list_t *l, pf_list_node_t *n)
{
	n->next = l->head.next;
	n->prev = &l->head;
	l->head.next->prev = n;
	l->head.next = n;
	l->len++;
}

/* Removes n from l, which must be the list n is in. */
static inline void pf_list_remove(pf_list_t *l, pf_list_node_t *n)
{
	n->prev->next = n->next;
	n->next->prev = n->prev;
	pf_list_node_init(n);
	l->len--;
}

/* The first node, or NULL when empty. */
static inline pf_list_node_t *pf_list_first(const pf_list_t *l)
{
	return pf_list_is_empty(l) ? NULL : l->head.next;
}

static inline pf_list_node_t *pf_list_pop(pf_list_t *l)
{
	pf_list_node_t *n = pf_list_first(l);

	if (n)
		pf_list_remove(l, n);
	return n;
}

/* Iterates safely against removal of the current node. */
#define PF_LIST_FOREACH(l, it, tmp)                                                                \
	for ((it) = (l)->head.next, (tmp) = (it)->next; (it) != &(l)->head;                        \
	     (it) = (tmp), (tmp) = (it)->next)

#endif
