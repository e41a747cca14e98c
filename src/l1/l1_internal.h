/*
 * l1_internal: struct l1 and its objects, shared by l1.c (index, states,
 * API) and l1_evict.c (eviction round and thread). Not for other modules.
 *
 * Lock order and field ownership (outer first):
 *
 *   lock         guards
 *   ----------   -------------------------------------------------------
 *   evict_mu     evict_stop, evict_started; never held while taking mu
 *   mu           buckets/nb/count, alloc, lru, resv, locked, pending,
 *                free_slots/n_free_slots, next_id, every l1_obj field,
 *                the object table in the segment, all counters in st
 *   (none)       opts copy, shm, hdr, table pointer: written in
 *                l1_create before any other thread sees the l1, then
 *                read-only
 */
#ifndef LMCD_L1_L1_INTERNAL_H
#define LMCD_L1_L1_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "l1/l1.h"
#include "l1/l1_alloc.h"
#include "l1/l1_shm.h"

/* Intrusive circular list with a sentinel; next == NULL: not on a list. */
struct l1_node {
    struct l1_node *prev, *next;
};

enum l1_obj_state {
    L1_OBJ_RESERVED = 1, /* on resv, in the index, invisible to readers */
    L1_OBJ_READY = 2,    /* on lru (and on locked while it has holders) */
    L1_OBJ_PENDING = 3,  /* removed by clear(true), on pending, not indexed */
};

struct l1_obj {
    struct l1_key key;
    uint64_t hash;
    uint64_t id;
    uint64_t writer;
    uint64_t length;      /* payload bytes */
    uint64_t expiry_ns;   /* RESERVED: write deadline; READY/PENDING with holders: lock expiry */
    struct l1_extent *ext;
    struct l1_obj *hnext; /* hash chain */
    struct l1_node lru;   /* READY: recency order, least recent first */
    struct l1_node q;     /* RESERVED: resv; READY with holders: locked; PENDING: pending */
    uint32_t holders;
    uint32_t pins;        /* lmcd's own zero-copy readers (l1_pin_prefix): no TTL, never evicted or freed */
    uint64_t lock_epoch;  /* +1 each time holders restart from zero */
    uint32_t slot;        /* object table index */
    uint8_t state;
    bool was_reserved;    /* PENDING: it was a reservation (its writer may publish/abort) */
};

struct l1 {
    struct l1_opts opts;  /* strings below point into names[] */
    char shm_name_buf[256];
    char shm_group_buf[256];
    char hash_name_buf[32];
    const struct clock_src *clock;
    uint64_t read_ttl_ns, write_ttl_ns;

    struct l1_shm shm;
    struct l1_seg_header hdr_init; /* written again when the segment is restored */
    struct l1_seg_header *hdr;
    struct l1_seg_entry *table;
    uint64_t table_entries;

    pthread_mutex_t mu;
    struct l1_obj **buckets;   /* guarded by mu */
    uint64_t nb;               /* guarded by mu; power of two */
    uint64_t count;            /* guarded by mu; indexed objects */
    struct l1_alloc alloc;     /* guarded by mu */
    struct l1_node lru;        /* guarded by mu; READY objects */
    struct l1_node resv;       /* guarded by mu; RESERVED, expiry order */
    struct l1_node locked;     /* guarded by mu; READY with holders, expiry order */
    struct l1_node pending;    /* guarded by mu; PENDING objects */
    uint64_t n_resv, n_locked, n_pending; /* guarded by mu */
    uint64_t n_pinned, pinned_bytes;      /* guarded by mu: objects with pins, their allocation bytes */
    uint32_t *free_slots;      /* guarded by mu; stack of free table indices */
    uint64_t n_free_slots;     /* guarded by mu */
    uint64_t next_id;          /* guarded by mu */
    struct l1_stats st;        /* guarded by mu; counters only */
    /* Segment health (l1_check): seg_gen counts restorations of a truncated
     * segment; seg_broken is set while a restoration failed. Written under
     * mu, read without it (atomics). */
    uint64_t seg_gen;
    bool seg_broken;

    pthread_mutex_t evict_mu;
    pthread_cond_t evict_cv;   /* CLOCK_MONOTONIC */
    bool evict_stop;           /* guarded by evict_mu */
    bool evict_started;        /* guarded by evict_mu */
    pthread_t evict_thread;
};

#define L1_OBJ_OF(node, field) \
    ((struct l1_obj *)((char *)(node) - __builtin_offsetof(struct l1_obj, field)))

/* Called with mu held. */
void l1_settle_locked(struct l1 *l1, uint64_t now);
bool l1_evictable_locked(const struct l1_obj *o, uint64_t now);
/* Evicts o (READY, evictable) and counts it. */
void l1_evict_obj_locked(struct l1 *l1, struct l1_obj *o);

/* Restores a truncated segment (drops every object first); mu held. */
void l1_recover_locked(struct l1 *l1, uint64_t now);

/* l1_evict.c: stops and joins the thread if it runs. */
void l1_evict_stop(struct l1 *l1);

#endif
