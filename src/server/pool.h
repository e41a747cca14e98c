/*
 * pool: the two worker pools of the request path (spec mp_protocol.md 1.4).
 *
 *   affinity pool (--max-gpu-workers): one FIFO queue per thread; a job goes
 *     to queue hash(key) % n, so all jobs of one client identity run in the
 *     order they were submitted (STORE, RETRIEVE, PREPARE_*, COMMIT_*).
 *   normal pool (--max-cpu-workers): one shared queue; any idle thread takes
 *     the oldest job (LOOKUP, QUERY_*, END_SESSION, CLEAR, PING, REPORT...).
 *
 * Jobs are intrusive (struct pool_job embedded in the caller's request
 * struct); the pool never allocates per job and never frees a job: the job's
 * fn owns it from the moment it runs.
 *
 * Threads: pool_submit() may be called from any thread (in lmcd: the loop).
 * pool_destroy() stops intake, runs every job already queued, and joins.
 * Locks: one mutex + condvar per queue, held only to link/unlink a job.
 */
#ifndef LMCD_SERVER_POOL_H
#define LMCD_SERVER_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct pool_job {
    void (*fn)(struct pool_job *job);
    struct pool_job *next_; /* private: queue link */
};

struct pool;

/* 0 or -errno. name shows in thread names ("lmcd-<name>-<i>"). */
int pool_create(const char *name, unsigned nthreads, bool affinity, struct pool **out);
/* Queues a job; affinity_key picks the queue in an affinity pool. -ESHUTDOWN
 * once pool_destroy() has started (the job was not queued). */
int pool_submit(struct pool *p, uint64_t affinity_key, struct pool_job *job);
/* Jobs queued and not yet started, summed over queues (for /status). */
size_t pool_pending(struct pool *p);
unsigned pool_threads(const struct pool *p);
/* Runs what is queued, joins the threads, frees. NULL-safe. */
void pool_destroy(struct pool *p);

#endif
