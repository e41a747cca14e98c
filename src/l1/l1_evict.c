/*
 * l1_evict: the background eviction round and the thread that runs it.
 *
 * DESIGN
 *   One thread per l1, started by l1_evict_start(). It sleeps one second on
 *   evict_cv (CLOCK_MONOTONIC) and runs l1_evict_round(); l1_destroy() sets
 *   evict_stop and signals the condvar, so shutdown never waits out a tick.
 *   A round cannot fail (it only frees), so the thread has no error exit: it
 *   runs until it is stopped (unlike LMCache #4817, where one exception ended
 *   eviction for the process lifetime).
 *
 *   A round settles expired locks and reservations, reads usage = used/total
 *   and, at or above the watermark, frees unlocked READY objects from least
 *   recent until eviction_ratio x used bytes are gone (bytes, not object
 *   counts: sizes differ between models). Locked objects and reservations are
 *   skipped. Policy noop settles expiries and never evicts.
 *
 *   Lock order: evict_mu is released before mu is taken (l1_internal.h).
 */
#define LOG_MODULE "lmcd.l1"
#include "l1/l1_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <time.h>

#include "util/log.h"

/* Frees unlocked READY objects from the LRU head until `target` bytes are
 * freed. Returns the number evicted. */
static int evict_bytes_locked(struct l1 *l1, uint64_t target, uint64_t now)
{
    int n = 0;
    uint64_t freed = 0;
    for (uint32_t h = l1->head_lru, i = l1->lru[h].next, next; i != h && freed < target;
         i = next) {
        struct l1_obj *o = &l1->objs[i];
        next = l1->lru[i].next;
        if (!l1_evictable_locked(l1, o, now))
            continue;
        freed += l1_alloc_round(&l1->alloc, l1_obj_length(o));
        l1_evict_obj_locked(l1, o);
        n++;
    }
    return n;
}

int l1_evict_round(struct l1 *l1)
{
    l1_check(l1); /* a truncated segment is noticed within a second even when idle */
    pthread_mutex_lock(&l1->mu);
    uint64_t now = clock_now_ns(l1->clock);
    l1_settle_locked(l1, now);
    l1->st.eviction_rounds++;
    uint64_t used = l1->alloc.used, total = l1->alloc.bytes;
    pthread_mutex_unlock(&l1->mu);

    if (l1->opts.policy == L1_POLICY_NOOP)
        return 0;
    double usage = total ? (double)used / (double)total : 0.0;
    double wm = l1->opts.trigger_watermark;
    if (usage < wm) {
        log_debug("L1 memory usage %.2f below watermark %.2f; skipping eviction.", usage, wm);
        return 0;
    }
    log_info("L1 memory usage %.2f above watermark %.2f; triggering eviction.", usage, wm);
    uint64_t target = (uint64_t)((double)used * l1->opts.eviction_ratio);
    if (target == 0 && l1->opts.eviction_ratio > 0)
        target = 1; /* at least one object, as LMCache's LRU does */

    pthread_mutex_lock(&l1->mu);
    now = clock_now_ns(l1->clock);
    int n = evict_bytes_locked(l1, target, now);
    l1->st.eviction_rounds_triggered++;
    uint64_t after = l1->alloc.used;
    pthread_mutex_unlock(&l1->mu);
    log_debug("L1 eviction freed %d objects, usage now %" PRIu64 " of %" PRIu64 " bytes", n,
              after, total);
    return n;
}

#define INIT_STEP (64ull << 20) /* LMCache pins in 64 MiB chunks and rounds init up to one */

static bool stopping(struct l1 *l1)
{
    pthread_mutex_lock(&l1->evict_mu);
    bool stop = l1->evict_stop;
    pthread_mutex_unlock(&l1->evict_mu);
    return stop;
}

/*
 * --l1-init-size-gb: LMCache pins the first init_size bytes of a lazy pool
 * (newest trees defer it past start-up) and the rest in the background. lmcd
 * has nothing to pin, but committing the tmpfs pages is the same promise
 * (those bytes are really there); done here, in 64 MiB steps, so the start
 * stays fast and a stop never waits for more than one step. A failure only
 * warns, as a failed pin does in LMCache: pages are then committed object by
 * object (l1_back).
 */
static void commit_init(struct l1 *l1)
{
    uint64_t init = (l1->opts.init_bytes + INIT_STEP - 1) / INIT_STEP * INIT_STEP;
    if (init > l1->shm.size)
        init = l1->shm.size;
    if (!l1->opts.use_lazy || init <= l1->shm.meta_bytes)
        return;
    for (uint64_t off = l1->shm.meta_bytes; off < init; off += INIT_STEP) {
        if (stopping(l1))
            return;
        int rc = l1_shm_back(&l1->shm, off, init - off < INIT_STEP ? init - off : INIT_STEP);
        if (rc < 0) {
            log_warn("Cannot commit the first %" PRIu64 " bytes of L1 (--l1-init-size-gb) in /dev/shm: %s; "
                     "pages are committed object by object instead",
                     init, strerror(-rc));
            return;
        }
    }
    log_info("L1: the first %" PRIu64 " bytes are committed (--l1-init-size-gb)", init);
}

static void *evict_main(void *arg)
{
    struct l1 *l1 = arg;
    commit_init(l1);
    pthread_mutex_lock(&l1->evict_mu);
    while (!l1->evict_stop) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += 1;
        while (!l1->evict_stop &&
               pthread_cond_timedwait(&l1->evict_cv, &l1->evict_mu, &ts) != ETIMEDOUT)
            ;
        if (l1->evict_stop)
            break;
        pthread_mutex_unlock(&l1->evict_mu);
        l1_evict_round(l1);
        pthread_mutex_lock(&l1->evict_mu);
    }
    pthread_mutex_unlock(&l1->evict_mu);
    return NULL;
}

int l1_evict_start(struct l1 *l1)
{
    int rc = 0;
    bool started_now = false;
    pthread_mutex_lock(&l1->evict_mu);
    if (!l1->evict_started) {
        l1->evict_stop = false;
        rc = -pthread_create(&l1->evict_thread, NULL, evict_main, l1);
        started_now = l1->evict_started = rc == 0;
    }
    pthread_mutex_unlock(&l1->evict_mu);
    if (rc < 0)
        log_error("Cannot start the L1 eviction thread: %s", strerror(-rc));
    if (started_now)
        log_info("L1 eviction controller started (policy %s, every 1 s)",
                 l1->opts.policy == L1_POLICY_LRU ? "LRU" : "noop");
    return rc;
}

void l1_evict_stop(struct l1 *l1)
{
    pthread_mutex_lock(&l1->evict_mu);
    bool started = l1->evict_started;
    l1->evict_stop = true;
    l1->evict_started = false;
    pthread_cond_broadcast(&l1->evict_cv);
    pthread_mutex_unlock(&l1->evict_mu);
    if (started)
        pthread_join(l1->evict_thread, NULL);
}
