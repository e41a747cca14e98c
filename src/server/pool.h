/*
 * pool: the two worker pools of the request path (spec mp_protocol.md 1.4).
 *
 *   affinity pool (--max-gpu-workers): one queue per thread; a job goes to
 *     queue key % n, so all jobs of one client identity run on one thread in
 *     the order they were submitted (STORE, RETRIEVE, PREPARE_*, COMMIT_*).
 *   normal pool (--max-cpu-workers): one shared queue; any idle thread takes
 *     the next job (LOOKUP, QUERY_*, END_SESSION, CLEAR, PING, REPORT...).
 *
 * Fairness: a queue holds one FIFO per peer (the key) and serves the peers
 * round robin, one job each in turn. A peer with a deep backlog of heavy
 * requests therefore delays another peer's request by at most one job per
 * peer with work queued, never by its whole backlog; each peer's own jobs
 * still leave the queue in the order they came.
 *
 * Jobs are intrusive (struct pool_job embedded in the caller's request
 * struct); the pool never frees a job: the job's fn owns it from the moment
 * it runs. It allocates one small record per peer with jobs queued (a few
 * are kept for reuse), never per job.
 *
 * Threads: pool_submit() may be called from any thread (in lmcd: the loop).
 * pool_close() stops intake; pool_cancel() hands back what is still queued
 * (a bounded stop); pool_destroy() stops intake, runs every job still queued,
 * and joins.
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
/* Queues a job behind the earlier jobs of peer_key (which also picks the
 * queue in an affinity pool). -ESHUTDOWN once pool_close()/pool_destroy()
 * has started, -ENOMEM when no peer record could be made (the job was not
 * queued either way). */
int pool_submit(struct pool *p, uint64_t peer_key, struct pool_job *job);
/* Jobs queued and not yet started, summed over queues (for /status). */
size_t pool_pending(struct pool *p);
unsigned pool_threads(const struct pool *p);
/* Refuses further submits; queued jobs still run. NULL-safe. */
void pool_close(struct pool *p);
/* Closes the pool and takes every job not yet started out of it, calling
 * cancel(job) for each (in the caller's thread, no pool lock held); jobs
 * already running finish. Returns how many were cancelled. NULL-safe. */
size_t pool_cancel(struct pool *p, void (*cancel)(struct pool_job *job));
/* Runs what is queued, joins the threads, frees. NULL-safe. */
void pool_destroy(struct pool *p);

#endif
