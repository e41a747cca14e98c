#include "util/htab.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

uint64_t htab_hash(const void *key, size_t len) { return XXH3_64bits(key, len); }

void htab_init(struct htab *t) { memset(t, 0, sizeof(*t)); }

void htab_free(struct htab *t)
{
    free(t->buckets);
    memset(t, 0, sizeof(*t));
}

static int grow(struct htab *t)
{
    size_t nb = t->nbuckets ? t->nbuckets * 2 : 64;
    struct htab_node **b = calloc(nb, sizeof(*b));
    if (!b)
        return -ENOMEM;
    for (size_t i = 0; i < t->nbuckets; i++) {
        struct htab_node *n = t->buckets[i], *next;
        for (; n; n = next) {
            next = n->next;
            size_t j = n->hash & (nb - 1);
            n->next = b[j];
            b[j] = n;
        }
    }
    free(t->buckets);
    t->buckets = b;
    t->nbuckets = nb;
    return 0;
}

int htab_insert(struct htab *t, struct htab_node *n)
{
    if (t->count + 1 > t->nbuckets && grow(t) && !t->nbuckets)
        return -ENOMEM; /* a failed grow of a non-empty table only costs speed */
    n->hash = htab_hash(n->key, n->key_len);
    size_t i = n->hash & (t->nbuckets - 1);
    n->next = t->buckets[i];
    t->buckets[i] = n;
    t->count++;
    return 0;
}

struct htab_node *htab_find(const struct htab *t, const void *key, size_t len)
{
    if (!t->nbuckets)
        return NULL;
    uint64_t h = htab_hash(key, len);
    for (struct htab_node *n = t->buckets[h & (t->nbuckets - 1)]; n; n = n->next)
        if (n->hash == h && n->key_len == len && !memcmp(n->key, key, len))
            return n;
    return NULL;
}

void htab_remove(struct htab *t, struct htab_node *n)
{
    struct htab_node **pp = &t->buckets[n->hash & (t->nbuckets - 1)];
    for (; *pp; pp = &(*pp)->next) {
        if (*pp == n) {
            *pp = n->next;
            n->next = NULL;
            t->count--;
            return;
        }
    }
}
