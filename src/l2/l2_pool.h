/*
 * l2_pool: a bounded work queue served by a fixed set of named threads, for
 * backends that do blocking I/O (fs, mock). Items are the caller's structs
 * with struct l2_pool_item first; the pool only links them.
 *
 * Threads: push from any thread; run() is called on a pool thread, one
 * item at a time per thread. stop() runs cancel() on every item still
 * queued (on the caller's thread), waits for items being run, joins.
 */
#ifndef LMCD_L2_L2_POOL_H
#define LMCD_L2_L2_POOL_H

#include <stddef.h>

struct l2_pool_item {
    struct l2_pool_item *next;
};

struct l2_pool;

/* name: thread name prefix (threads are "<name>-<i>", cut at 15 chars).
 * 0, -EINVAL (nthreads < 1), -ENOMEM, -errno from pthread_create. */
int l2_pool_start(struct l2_pool **out, const char *name, int nthreads, size_t max_queued,
                  void (*run)(void *ctx, struct l2_pool_item *it), void *ctx);
/* Queues n items linked through ->next (first..last). 0, or -ENOBUFS when
 * queuing them would pass max_queued, -ESHUTDOWN after stop began. */
int l2_pool_push(struct l2_pool *p, struct l2_pool_item *first, struct l2_pool_item *last, size_t n);
size_t l2_pool_queued(struct l2_pool *p);
void l2_pool_stop(struct l2_pool *p, void (*cancel)(void *ctx, struct l2_pool_item *it));

#endif
