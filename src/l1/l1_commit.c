/* l1_commit: see l1_commit.h. */
#define LOG_MODULE "lmcd.l1"
#include "l1/l1_commit.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>

#include "util/clock.h"
#include "util/log.h"

#define REGION_SHIFT 21 /* 2 MiB */
#define REGION (1ull << REGION_SHIFT)
#define AHEAD_MIN (16ull << 20)
#define AHEAD_MAX (256ull << 20)
#define RETRY_NS 1000000000ull /* after a failed commit-ahead */
#define PLENTY_SLACK (64ull << 20)
#define HOLES 64 /* partial end regions of reservations waiting to be completed */

struct l1_commit {
    int fd;
    uint64_t size;
    uint64_t n_regions;
    _Atomic uint64_t *backed; /* bit r: region r is backed */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t want_from, want_to; /* guarded by mu: the range to commit ahead */
    uint64_t holes[HOLES];       /* guarded by mu: partial regions to complete */
    unsigned n_holes;            /* guarded by mu */
    bool stop;                   /* guarded by mu */
    uint64_t epoch;              /* guarded by mu: +1 at each reset (the pages went away) */
    uint64_t failed_ns;          /* committer thread only: last failure, 0 = none */
    uint64_t wakes;              /* guarded by mu: times the committer was given work */
};

static bool is_backed(const struct l1_commit *c, uint64_t r)
{
    return atomic_load_explicit(&c->backed[r >> 6], memory_order_acquire) & (1ull << (r & 63));
}

/* Marks region r backed, unless a reset came after the fallocate began
 * (epoch0): then its pages may be gone with the truncation. */
static void mark(struct l1_commit *c, uint64_t r, uint64_t epoch0)
{
    pthread_mutex_lock(&c->mu);
    if (c->epoch == epoch0)
        atomic_fetch_or_explicit(&c->backed[r >> 6], 1ull << (r & 63), memory_order_release);
    pthread_mutex_unlock(&c->mu);
}

static uint64_t epoch_now(struct l1_commit *c)
{
    pthread_mutex_lock(&c->mu);
    uint64_t e = c->epoch;
    pthread_mutex_unlock(&c->mu);
    return e;
}

/* KEEP_SIZE: lmcd never grows the segment (a short file means someone else
 * truncated it, l1_shm_intact). */
static int falloc(int fd, uint64_t off, uint64_t len)
{
    while (fallocate(fd, FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) < 0)
        if (errno != EINTR)
            return -errno;
    return 0;
}

/* Backs region r whole (clamped to the segment) and marks it. */
static int back_region(struct l1_commit *c, uint64_t r)
{
    uint64_t off = r << REGION_SHIFT;
    uint64_t len = off + REGION > c->size ? c->size - off : REGION;
    uint64_t e0 = epoch_now(c);
    int rc = falloc(c->fd, off, len);
    if (rc == 0)
        mark(c, r, e0);
    return rc;
}

int l1_commit_back(struct l1_commit *c, uint64_t off, uint64_t len)
{
    if (len == 0)
        return 0;
    if (off >= c->size || len > c->size - off)
        return -EINVAL;
    uint64_t r0 = off >> REGION_SHIFT, r1 = (off + len - 1) >> REGION_SHIFT;
    uint64_t e0 = epoch_now(c);
    for (uint64_t r = r0; r <= r1; r++) {
        if (is_backed(c, r))
            continue;
        /* Exactly this reservation's share of the region: a region is
         * marked only when that is all of it (else another object's pages
         * in it may not exist), so nothing more than before is taken from
         * a nearly full /dev/shm. */
        uint64_t ra = r << REGION_SHIFT, rb = ra + REGION > c->size ? c->size : ra + REGION;
        uint64_t a = off > ra ? off : ra, b = off + len < rb ? off + len : rb;
        int rc = falloc(c->fd, a, b - a);
        if (rc < 0)
            return rc;
        if (a == ra && b == rb)
            mark(c, r, e0);
    }
    uint64_t ahead = len * 4;
    ahead = ahead < AHEAD_MIN ? AHEAD_MIN : ahead > AHEAD_MAX ? AHEAD_MAX : ahead;
    uint64_t from = (r1 + 1) << REGION_SHIFT;
    uint64_t to = from + ahead > c->size ? c->size : from + ahead;
    /* In space used before (a running server's steady state) everything
     * ahead is backed already: waking the committer then would only cost
     * this thread a futex wake and the machine a context switch per
     * reservation, for a scan that finds nothing to do. */
    bool ahead_work = false;
    for (uint64_t r = r1 + 1; from < to && r <= (to - 1) >> REGION_SHIFT && !ahead_work; r++)
        ahead_work = !is_backed(c, r);
    bool added = false;
    pthread_mutex_lock(&c->mu);
    /* The reservation's partial end regions (shared with the header, or
     * with the next object, which usually lands right after) are backed
     * whole in the background and marked, so the bitmap has no permanent
     * holes in used space (the GPU path pins only wholly backed slices,
     * transfer_pin.h). Queued apart from the range ahead, which the next
     * reservation replaces. */
    uint64_t ends[2] = {r0, r1};
    for (int i = 0; i < 2; i++) {
        if (is_backed(c, ends[i]) || (i == 1 && r1 == r0))
            continue;
        unsigned h = 0;
        while (h < c->n_holes && c->holes[h] != ends[i])
            h++;
        if (h == c->n_holes && c->n_holes < HOLES) {
            c->holes[c->n_holes++] = ends[i];
            added = true;
        }
    }
    if (ahead_work) {
        c->want_from = from;
        c->want_to = to;
    }
    if (ahead_work || added) {
        c->wakes++;
        pthread_cond_signal(&c->cv);
    }
    pthread_mutex_unlock(&c->mu);
    return 0;
}

void l1_commit_mark(struct l1_commit *c, uint64_t off, uint64_t len)
{
    if (len == 0 || off >= c->size || len > c->size - off)
        return;
    uint64_t e0 = epoch_now(c);
    uint64_t r0 = (off + REGION - 1) >> REGION_SHIFT, end = off + len;
    for (uint64_t r = r0; (r << REGION_SHIFT) < end; r++) {
        uint64_t rb = (r << REGION_SHIFT) + REGION;
        if (rb <= end || end == c->size) /* wholly inside (the last region may be short) */
            mark(c, r, e0);
    }
}

bool l1_commit_backed(const struct l1_commit *c, uint64_t off, uint64_t len)
{
    if (len == 0)
        return true;
    if (off >= c->size || len > c->size - off)
        return false;
    for (uint64_t r = off >> REGION_SHIFT; r <= (off + len - 1) >> REGION_SHIFT; r++)
        if (!is_backed(c, r))
            return false;
    return true;
}

/* Commit-ahead takes only from plenty: /dev/shm keeps at least as much
 * again plus PLENTY_SLACK free, so it never takes the last free pages from
 * another process (or from a reservation of lmcd's own elsewhere). */
static bool plenty(const struct l1_commit *c, uint64_t want)
{
    struct statvfs sv;
    if (fstatvfs(c->fd, &sv) != 0)
        return false;
    if (sv.f_blocks == 0) /* a tmpfs without a size limit (memfd, size=0): memory is the limit */
        return true;
    uint64_t free_bytes = (uint64_t)sv.f_bavail * (uint64_t)sv.f_frsize;
    return free_bytes >= 2 * want + PLENTY_SLACK;
}

static void *committer(void *arg)
{
    struct l1_commit *c = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (!c->stop && c->want_from >= c->want_to && !c->n_holes)
            pthread_cond_wait(&c->cv, &c->mu);
        if (c->stop)
            break;
        uint64_t holes[HOLES];
        unsigned n_holes = c->n_holes;
        memcpy(holes, c->holes, n_holes * sizeof(holes[0]));
        c->n_holes = 0;
        uint64_t r = c->want_from >> REGION_SHIFT;
        uint64_t end = c->want_from < c->want_to ? (c->want_to + REGION - 1) >> REGION_SHIFT : r;
        c->want_from = c->want_to; /* taken */
        pthread_mutex_unlock(&c->mu);
        bool retry_ok = (!c->failed_ns || clock_mono_ns() - c->failed_ns > RETRY_NS) &&
                        plenty(c, (end - r + n_holes) << REGION_SHIFT);
        for (unsigned h = 0; retry_ok && h < n_holes; h++)
            if (!is_backed(c, holes[h]) && back_region(c, holes[h]) < 0) {
                retry_ok = false; /* /dev/shm is (nearly) full: as below */
                c->failed_ns = clock_mono_ns();
            }
        for (; retry_ok && r < end; r++) {
            if (is_backed(c, r))
                continue;
            int rc = back_region(c, r);
            if (rc < 0) {
                /* /dev/shm is full (or nearly): the request path backs what
                 * it needs itself and skips a chunk that does not fit. */
                if (!c->failed_ns)
                    log_debug("L1 commit-ahead stopped: %s", strerror(-rc));
                c->failed_ns = clock_mono_ns();
                break;
            }
            c->failed_ns = 0;
            pthread_mutex_lock(&c->mu);
            bool stop = c->stop;
            pthread_mutex_unlock(&c->mu);
            if (stop)
                break;
        }
        pthread_mutex_lock(&c->mu);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

uint64_t l1_commit_wakes(struct l1_commit *c)
{
    pthread_mutex_lock(&c->mu);
    uint64_t n = c->wakes;
    pthread_mutex_unlock(&c->mu);
    return n;
}

int l1_commit_start(int fd, uint64_t size, struct l1_commit **out)
{
    *out = NULL;
    struct l1_commit *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->fd = fd;
    c->size = size;
    c->n_regions = (size + REGION - 1) >> REGION_SHIFT;
    c->backed = calloc((c->n_regions + 63) / 64, sizeof(*c->backed));
    if (!c->backed) {
        free(c);
        return -ENOMEM;
    }
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    int e = pthread_create(&c->thread, NULL, committer, c);
    if (e) {
        pthread_mutex_destroy(&c->mu);
        pthread_cond_destroy(&c->cv);
        free((void *)c->backed);
        free(c);
        return -e;
    }
    *out = c;
    return 0;
}

void l1_commit_reset(struct l1_commit *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->mu);
    c->epoch++;
    for (uint64_t i = 0; i < (c->n_regions + 63) / 64; i++)
        atomic_store_explicit(&c->backed[i], 0, memory_order_release);
    c->want_from = c->want_to = 0;
    c->n_holes = 0;
    pthread_mutex_unlock(&c->mu);
}

void l1_commit_stop(struct l1_commit *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->mu);
    c->stop = true;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->thread, NULL);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free((void *)c->backed);
    free(c);
}
