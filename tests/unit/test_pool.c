#include <criterion/criterion.h>
#include <pthread.h>
#include <errno.h>
#include <stdatomic.h>

#include "server/pool.h"

struct tjob {
    struct pool_job job;
    unsigned client;
    unsigned seq;
};

static pthread_mutex_t order_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned last_seq[4];
static int out_of_order;
static atomic_int ran;

static void run_ordered(struct pool_job *j)
{
    struct tjob *t = (struct tjob *)j;
    pthread_mutex_lock(&order_lock);
    if (t->seq != last_seq[t->client] + 1)
        out_of_order++;
    last_seq[t->client] = t->seq;
    pthread_mutex_unlock(&order_lock);
    atomic_fetch_add(&ran, 1);
}

Test(pool, affinity_pool_keeps_fifo_per_key_and_drains_on_destroy)
{
    struct pool *p;
    cr_assert_eq(pool_create("aff", 3, true, &p), 0);
    static struct tjob jobs[4][500];
    for (unsigned s = 0; s < 500; s++)
        for (unsigned c = 0; c < 4; c++) {
            jobs[c][s] = (struct tjob){ { run_ordered, NULL }, c, s + 1 };
            cr_assert_eq(pool_submit(p, c * 7919u, &jobs[c][s].job), 0);
        }
    pool_destroy(p);
    cr_assert_eq(atomic_load(&ran), 2000, "every queued job runs before destroy returns");
    cr_assert_eq(out_of_order, 0);
}

static void count(struct pool_job *j)
{
    (void)j;
    atomic_fetch_add(&ran, 1);
}

Test(pool, shared_pool_runs_everything_and_refuses_after_stop)
{
    atomic_store(&ran, 0);
    struct pool *p;
    cr_assert_eq(pool_create("norm", 2, false, &p), 0);
    static struct pool_job jobs[100];
    for (int i = 0; i < 100; i++) {
        jobs[i].fn = count;
        cr_assert_eq(pool_submit(p, 0, &jobs[i]), 0);
    }
    pool_destroy(p);
    cr_assert_eq(atomic_load(&ran), 100);
    cr_assert_eq(pool_create("x", 0, false, &p), -EINVAL);
}

/* Round robin between peers: peer A queues 100 jobs, then peer B one; B's
 * runs second (after the job that was running), not after A's backlog; and
 * each peer's jobs still run in submission order. */
static pthread_mutex_t gate_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cond = PTHREAD_COND_INITIALIZER;
static bool gate_open;
static unsigned rr_order[128], rr_n;

static void gated(struct pool_job *j)
{
    struct tjob *t = (struct tjob *)j;
    pthread_mutex_lock(&gate_lock);
    while (!gate_open)
        pthread_cond_wait(&gate_cond, &gate_lock);
    rr_order[rr_n++] = t->client * 1000 + t->seq;
    pthread_mutex_unlock(&gate_lock);
}

Test(pool, peers_are_served_round_robin_each_in_order)
{
    for (int affinity = 0; affinity < 2; affinity++) {
        struct pool *p;
        cr_assert_eq(pool_create("rr", 1, affinity, &p), 0);
        static struct tjob a[100], b[3];
        gate_open = false;
        rr_n = 0;
        for (unsigned i = 0; i < 100; i++) {
            a[i] = (struct tjob){ { gated, NULL }, 0, i };
            cr_assert_eq(pool_submit(p, 11, &a[i].job), 0);
        }
        for (unsigned i = 0; i < 3; i++) {
            b[i] = (struct tjob){ { gated, NULL }, 1, i };
            cr_assert_eq(pool_submit(p, 22, &b[i].job), 0);
        }
        pthread_mutex_lock(&gate_lock);
        gate_open = true;
        pthread_cond_broadcast(&gate_cond);
        pthread_mutex_unlock(&gate_lock);
        pool_destroy(p);
        cr_assert_eq(rr_n, 103);
        /* A0 (already taken, or first in turn), then B and A alternate */
        size_t pos_b0 = 0, pos_b2 = 0;
        unsigned next_a = 0, next_b = 0;
        for (size_t i = 0; i < rr_n; i++) {
            unsigned c = rr_order[i] / 1000, seq = rr_order[i] % 1000;
            if (c == 0)
                cr_assert_eq(seq, next_a++, "peer A in order");
            else
                cr_assert_eq(seq, next_b++, "peer B in order");
            if (c == 1 && seq == 0)
                pos_b0 = i;
            if (c == 1 && seq == 2)
                pos_b2 = i;
        }
        cr_assert_leq(pos_b0, 2, "B's first job waited for %zu of A's", pos_b0);
        cr_assert_leq(pos_b2, 6, "B's last job waited for A's backlog (position %zu)", pos_b2);
    }
}

static atomic_int cancelled;
static void cancel_count(struct pool_job *j)
{
    (void)j;
    atomic_fetch_add(&cancelled, 1);
}

Test(pool, cancel_hands_back_what_is_queued)
{
    struct pool *p;
    cr_assert_eq(pool_create("cx", 1, false, &p), 0);
    static struct tjob a[50];
    gate_open = false;
    rr_n = 0;
    for (unsigned i = 0; i < 50; i++) {
        a[i] = (struct tjob){ { gated, NULL }, 0, i };
        cr_assert_eq(pool_submit(p, (uint64_t)(i % 5), &a[i].job), 0);
    }
    pool_close(p);
    static struct tjob late = { { gated, NULL }, 0, 99 };
    cr_assert_eq(pool_submit(p, 1, &late.job), -ESHUTDOWN);
    size_t n = pool_cancel(p, cancel_count);
    pthread_mutex_lock(&gate_lock);
    gate_open = true;
    pthread_cond_broadcast(&gate_cond);
    pthread_mutex_unlock(&gate_lock);
    pool_destroy(p);
    cr_assert_eq(n, (size_t)atomic_load(&cancelled));
    cr_assert_eq(n + rr_n, 50, "each job either ran or was cancelled (%zu + %u)", n, rr_n);
    cr_assert_leq(rr_n, 1, "at most the job already running ran");
}
