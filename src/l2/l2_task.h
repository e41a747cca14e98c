/*
 * l2_task: one submitted batch, split into one pool item per key, for
 * backends that serve keys independently on a l2_pool (fs, mock). The task
 * deep-copies the keys (the submit's are borrowed), copies the iovecs (the
 * buffers they point to stay the caller's), and calls the callback once
 * when its last key is done (or cancelled), then frees itself.
 *
 * Outcome: ok[i] per key; rc = 0 for lookups and loads (per-key flags say
 * it all); for stores rc = 0 only when every key was stored, else the first
 * key's -errno (LMCache reports store failure per task).
 */
#ifndef LMCD_L2_L2_TASK_H
#define LMCD_L2_L2_TASK_H

#include <stdatomic.h>
#include <stdint.h>

#include "l2/l2.h"
#include "l2/l2_pool.h"

enum l2_task_op { L2_TASK_STORE, L2_TASK_LOOKUP, L2_TASK_LOAD };

struct l2_task;
struct l2_task_item {
    struct l2_pool_item link; /* first */
    struct l2_task *task;
    size_t i;
};

struct l2_task {
    struct l2_adapter *a;
    enum l2_task_op op;
    uint64_t id;
    size_t n;
    struct l2_cb cb;
    struct l2_key *keys;  /* deep copies */
    struct iovec *bufs;   /* NULL for lookups */
    uint8_t *ok;
    atomic_size_t left;
    atomic_uint_fast64_t bytes;
    atomic_int rc;
    struct l2_task_item items[];
};

/* Deep copy of n keys in one allocation (free() it). NULL on ENOMEM. */
struct l2_key *l2_keys_dup(const struct l2_key *keys, size_t n);

/* A task for n keys (n >= 1), or NULL (ENOMEM). bufs may be NULL. */
struct l2_task *l2_task_new(struct l2_adapter *a, enum l2_task_op op, uint64_t id, const struct l2_key *keys,
                            const struct iovec *bufs, size_t n, const struct l2_cb *cb);
/* Queues every item of t on p; on failure frees t (the callback is not
 * called) and returns the pool's -errno. */
int l2_task_submit(struct l2_pool *p, struct l2_task *t);
/* Marks key it->i done: ok, bytes moved, err (0 or -errno for this key).
 * The last one completes the task (callback, free). */
void l2_task_done(struct l2_task_item *it, bool ok, uint64_t bytes, int err);
/* For l2_pool_stop's cancel: done with -ECANCELED. */
void l2_task_cancel(void *ctx, struct l2_pool_item *it);

#endif
