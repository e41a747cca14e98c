/*
 * htab: an intrusive chained hash table keyed by byte strings.
 *
 * The caller embeds struct htab_node in its own struct and owns the key
 * bytes (they must stay valid and unchanged while the node is in a table).
 * The table only links nodes; it never allocates or frees them.
 *
 * Not thread-safe: the owner guards each table with its own lock.
 */
#ifndef LMCD_UTIL_HTAB_H
#define LMCD_UTIL_HTAB_H

#include <stddef.h>
#include <stdint.h>

struct htab_node {
    struct htab_node *next;
    uint64_t hash;
    const void *key;
    size_t key_len;
};

struct htab {
    struct htab_node **buckets;
    size_t nbuckets; /* power of two, or 0 before the first insert */
    size_t count;
};

uint64_t htab_hash(const void *key, size_t len);
void htab_init(struct htab *t);
/* Frees the bucket array only (nodes are the caller's). */
void htab_free(struct htab *t);
/* Inserts n (n->key/key_len set by the caller). 0 or -ENOMEM. Duplicates
 * are the caller's concern: look up first. */
int htab_insert(struct htab *t, struct htab_node *n);
struct htab_node *htab_find(const struct htab *t, const void *key, size_t len);
void htab_remove(struct htab *t, struct htab_node *n);

/* Iteration that tolerates removing the current node. */
#define HTAB_FOREACH_SAFE(t, node, tmp)                                                    \
    for (size_t htab__i = 0; htab__i < (t)->nbuckets; htab__i++)                           \
        for ((node) = (t)->buckets[htab__i]; (node) && (((tmp) = (node)->next), 1); (node) = (tmp))

#define htab_entry(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

#endif
