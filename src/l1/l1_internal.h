/*
 * l1_internal: struct l1 and its objects, shared by l1.c (index, states,
 * API) and l1_evict.c (eviction round and thread). Not for other modules.
 *
 * Lock order and field ownership (outer first):
 *
 *   lock         guards
 *   ----------   -------------------------------------------------------
 *   evict_mu     evict_stop, evict_started; never held while taking mu
 *   mu           objs, lru, acts (every field), buckets/nb/count, alloc,
 *                the four lists, free slots and records, next_id, next_epoch,
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

/*
 * Objects live in one array indexed by their object table slot (the entry
 * in the segment's table holds the key, so it is kept once). Links are
 * 32-bit indices; L1_NIL ends a list or marks "not on a list". A free slot
 * is chained through hnext. What an object needs only while something is
 * in flight on it (a writer, a run of read holders, a forced clear waiting
 * for them) is a 32-byte activity record (struct l1_act) from a second
 * pool: a RESERVED or PENDING object always has one, a READY object only
 * while it has read holders. So the per-object cost at rest is the 32-byte
 * record, its 8-byte LRU links (l1->lru) and its 12-byte extent (l1_alloc),
 * besides the table entry (docs/l1.md, "Metadata per object"). What the
 * 32-bit links cost in limits: at most L1_MAX_SLOTS objects (l1_create
 * refuses more with one line).
 */
#define L1_NIL UINT32_MAX
#define L1_MAX_SLOTS (L1_ALLOC_MAX_SLOTS - 4u)

struct l1_link {
    uint32_t prev, next;
};

enum l1_obj_state {
    L1_OBJ_FREE = 0,     /* slot unused */
    L1_OBJ_RESERVED = 1, /* on resv, in the index, invisible to readers */
    L1_OBJ_READY = 2,    /* on lru (and on locked while it has holders) */
    L1_OBJ_PENDING = 3,  /* removed by clear(true), on pending, not indexed */
};

#define L1_OBJ_WAS_RESERVED 1u /* PENDING: it was a reservation (its writer may publish/abort) */

/* Two records a cache line; what LOOKUP reads besides the key. */
struct l1_obj {
    uint64_t id;          /* unique for the life of the L1 (a 64-bit counter) */
    uint32_t len_lo;      /* payload bytes: len_lo | len_hi << 32 (L1_MAX_LENGTH) */
    uint16_t len_hi;
    uint8_t state;
    uint8_t flags;
    uint32_t hash;        /* low 32 bits of the key hash: bucket and a cheap compare */
    uint32_t hnext;       /* hash chain; a free slot: the next free slot */
    uint32_t act;         /* its activity record (l1->acts), or L1_NIL */
    uint32_t pins;        /* lmcd's own zero-copy readers (l1_pin_prefix): no TTL, never evicted or freed */
};
static_assert(sizeof(struct l1_obj) == 32, "two records per cache line");

/*
 * An object's activity record: RESERVED (its writer and write deadline, on
 * resv), READY with read holders (their count, lock expiry and lock epoch,
 * on locked), PENDING (on pending). Indexed by its own pool; the lists
 * below link these records, and `slot` leads back to the object. Free
 * records are chained through q.next. The pool holds one per slot (an
 * object has at most one) plus the three list sentinels, and is touched
 * only as records are used, lowest first, so it costs memory for the most
 * objects ever in flight at once, not for the objects cached.
 */
struct l1_act {
    uint64_t expiry_ns;   /* RESERVED: write deadline; READY/PENDING with holders: lock expiry */
    union {
        uint64_t writer;     /* RESERVED, and PENDING that was reserved */
        uint64_t lock_epoch; /* READY, and PENDING that was READY: this run of holders, from a
                                64-bit counter of the L1 (unique for its life) */
    };
    struct l1_link q;     /* RESERVED: resv; READY: locked; PENDING: pending */
    uint32_t slot;        /* the object */
    uint32_t holders;
};
static_assert(sizeof(struct l1_act) == 32, "two activity records per cache line");

#define L1_MAX_LENGTH ((1ull << 48) - 1)

static inline uint64_t l1_obj_length(const struct l1_obj *o)
{
    return (uint64_t)o->len_lo | (uint64_t)o->len_hi << 32;
}

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
    struct l1_obj *objs;       /* guarded by mu; table_entries */
    struct l1_link *lru;       /* guarded by mu; READY objects' LRU links by slot; + 1 sentinel */
    struct l1_act *acts;       /* guarded by mu; table_entries + 3 sentinels */
    uint32_t *buckets;         /* guarded by mu; slot or L1_NIL */
    uint64_t nb;               /* guarded by mu; power of two */
    uint64_t count;            /* guarded by mu; indexed objects */
    struct l1_alloc alloc;     /* guarded by mu; extents indexed by slot */
    uint32_t head_lru;         /* sentinel in lru[] (constant) */
    uint32_t head_resv, head_locked, head_pending; /* sentinels in acts[] (constant) */
    uint32_t act_free;         /* guarded by mu; released activity records, chained by q.next */
    uint64_t acts_used;        /* guarded by mu; activity records ever used (the rest are fresh) */
    uint64_t n_resv, n_locked, n_pending; /* guarded by mu */
    uint64_t n_pinned, pinned_bytes;      /* guarded by mu: objects with pins, their allocation bytes */
    uint32_t free_head;        /* guarded by mu; free slots chained by hnext */
    uint64_t n_free_slots;     /* guarded by mu */
    uint64_t slots_used;       /* guarded by mu; slots ever used (the rest are fresh) */
    uint64_t next_id;          /* guarded by mu */
    uint64_t next_epoch;       /* guarded by mu; lock epochs */
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

static inline uint32_t l1_slot_of(const struct l1 *l1, const struct l1_obj *o)
{
    return (uint32_t)(o - l1->objs);
}

/* Called with mu held. */
void l1_settle_locked(struct l1 *l1, uint64_t now);
bool l1_evictable_locked(const struct l1 *l1, const struct l1_obj *o, uint64_t now);
/* Evicts o (READY, evictable) and counts it. */
void l1_evict_obj_locked(struct l1 *l1, struct l1_obj *o);

/* Restores a truncated segment (drops every object first); mu held. */
void l1_recover_locked(struct l1 *l1, uint64_t now);

/* l1_evict.c: stops and joins the thread if it runs. */
void l1_evict_stop(struct l1 *l1);

#endif
