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
