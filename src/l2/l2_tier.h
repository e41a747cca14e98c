/*
 * l2_tier: the L2 tier as the engine sees it: the adapters in
 * --l2-adapter order and LMCache's three controllers over them.
 *
 *   engine: COMMIT_STORE / store_inline published keys ---> l2_tier_stored()
 *             StoreController thread "l2-store": read-lock in L1, one store
 *             task per adapter, unlock on completion (skip_l1: then drop
 *             from L1). Bounded: pending keys and tasks in flight.
 *   engine: LOOKUP, keys after the L1 prefix ---> l2_tier_prefetch()
 *             PrefetchController thread "l2-prefetch": lookup-and-lock in
 *             every adapter, plan each object from the lowest-index adapter
 *             that has it, trim to the contiguous chunk prefix, reserve L1,
 *             load, publish, read-lock for the request's readers, unlock the
 *             adapters. At most prefetch_max_in_flight requests at once; a
 *             load deadline ends a request with the prefix loaded by then.
 *   L2EvictionController thread "l2-evict": once a second, per adapter with
 *             an "eviction" object and a capacity, LRU victims past the
 *             watermark are deleted (ratio of tracked keys).
 *
 * Threads: every function may be called from any thread. Callbacks into
 * the caller (on_lookup, on_done) run on the prefetch thread with no tier
 * lock held; they may take the caller's locks. Lock order: the caller's
 * locks, then tier.mu (submit paths take it briefly), then adapter locks.
 *
 * Buffers: L1 memory handed to an adapter stays read-locked (stores) or an
 * unpublished reservation renewed until the adapter's callback (loads), so
 * no buffer is ever freed while an adapter reads or writes it, deadline or
 * shutdown included (destroy waits for every callback).
 *
 * Left out: serde, per-L1 store policies, speculative prefetch, temporary
 * objects (loaded objects stay in L1 as ordinary READY objects, LMCache's
 * `retain` policy), coordinator events.
 */
#ifndef LMCD_L2_L2_TIER_H
#define LMCD_L2_L2_TIER_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "l1/l1.h"
#include "l2/l2.h"

struct l2_tier;

struct l2_tier_opts {
    struct l1 *l1;
    const json_t *adapters;      /* array of adapter objects (borrowed for create) */
    const char *store_policy;    /* "default" | "skip_l1" */
    int prefetch_max_in_flight;  /* 8 */
    uint32_t load_timeout_ms;    /* load deadline per request; 0 = 10000 */
    uint64_t writer;             /* L1 writer id for prefetch reservations */
    size_t store_max_pending;    /* keys waiting to be stored; 0 = 65536 (past it: dropped, counted) */
    int store_max_in_flight;     /* store tasks per adapter in flight; 0 = 64 */
};

/* Creates the adapters (in order) and starts the controllers. With an
 * empty adapter list *out = NULL and 0: no tier. -EINVAL with a logged
 * reason when an adapter's JSON is refused. */
int l2_tier_create(const struct l2_tier_opts *o, struct l2_tier **out);
/* Stops the controllers, waits for every adapter callback, releases what
 * they held in L1, destroys the adapters. NULL-safe. */
void l2_tier_destroy(struct l2_tier *t);

size_t l2_tier_count(const struct l2_tier *t);
struct l2_adapter *l2_tier_adapter(struct l2_tier *t, size_t i);

/* Write-behind: keys were just published in L1 (not loaded from L2).
 * Strings are copied. Never blocks on I/O; drops (and counts) past the
 * pending bound. */
void l2_tier_stored(struct l2_tier *t, const char *model, size_t model_len, const char *salt, size_t salt_len,
                    const struct l1_key *keys, size_t n);

struct l2_prefetch_req {
    const char *model;
    size_t model_len;
    const char *salt;
    size_t salt_len;
    const struct l1_key *keys; /* chunk-major, `world` shards per chunk (copied) */
    size_t n;
    uint32_t world;
    uint64_t obj_size;         /* bytes of each object */
    uint32_t readers;          /* read holders to give each loaded object */
    /* The lookup phase's answer: chunks of keys found in L2 as a prefix. */
    void (*on_lookup)(void *arg, size_t chunks);
    /* Exactly once: `n` objects (whole chunks, in order) now READY and
     * read-locked with `readers` holders each; the callee owns the locks
     * (refs are l1_lock's). n == 0 when nothing came. */
    void (*on_done)(void *arg, const struct l1_key *keys, const struct l1_ref *refs, size_t n);
    void *arg;
};
/* Queues a prefetch. 0 (on_lookup then on_done will be called), or -errno
 * (-ESHUTDOWN, -ENOMEM, -EINVAL) and no callback. */
int l2_tier_prefetch(struct l2_tier *t, const struct l2_prefetch_req *r);

/* Deletes keys from every adapter (DELETE /cache/objects tier l2). Returns
 * the number of (adapter, key) deletions. */
int l2_tier_delete(struct l2_tier *t, const struct l2_key *keys, size_t n);

/* storage_manager parts for /status: store_controller, prefetch_controller,
 * l2_eviction_controller, l2_adapters (array), num_l2_adapters; set into
 * `sm` (an object). Works with t == NULL (no adapters). */
void l2_tier_status(struct l2_tier *t, json_t *sm);

/* ---- l2_evict.c: the L2EvictionController (used by l2_tier) ---- */
struct l2_evict;
/* Starts the thread over the adapters (borrowed; they outlive it). Always
 * starts (LMCache logs it even with zero adapters). */
int l2_evict_start(struct l2_adapter **ads, size_t n, struct l2_evict **out);
void l2_evict_stop(struct l2_evict *ev);
/* One round now (tests, and the thread): returns keys deleted. */
int l2_evict_round(struct l2_evict *ev);
json_t *l2_evict_status(struct l2_evict *ev);

#endif
