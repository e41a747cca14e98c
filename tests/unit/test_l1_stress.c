/* L1 under several threads at once (run it under SAN=thread too). Writers
 * stamp each object with its key; readers check the stamp while they hold a
 * read lock, so memory handed out twice or freed under a reader shows up as
 * a wrong stamp (and as a race under TSan). */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "l1/l1.h"

#define THREADS 4
#define OPS 3000
#define KEYS 64

struct worker {
    struct l1 *l1;
    unsigned seed;
    uint64_t writer;
    int bad_stamps;
    int lock_ok;
};

static struct l1_key key(int i)
{
    struct l1_key k;
    memset(&k, 0, sizeof(k));
    memcpy(k.chunk_hash, &i, sizeof(i));
    k.kv_rank = 3;
    return k;
}

static void stamp(uint8_t *p, uint64_t len, int i)
{
    memcpy(p, &i, sizeof(i));
    memcpy(p + len - sizeof(i), &i, sizeof(i));
}

static bool stamp_ok(const uint8_t *p, uint64_t len, int i)
{
    int a, b;
    memcpy(&a, p, sizeof(a));
    memcpy(&b, p + len - sizeof(b), sizeof(b));
    return a == i && b == i;
}

static void *run(void *arg)
{
    struct worker *w = arg;
    uint8_t *base = l1_base(w->l1);
    for (int op = 0; op < OPS; op++) {
        int i = (int)(rand_r(&w->seed) % KEYS);
        struct l1_key k = key(i);
        struct l1_ref r;
        switch (rand_r(&w->seed) % 6) {
        case 0:
        case 1: { /* write: sizes differ per key, like mixed models */
            uint64_t sz = 4096 * (1 + (uint64_t)(i % 5)) - (uint64_t)(i % 7);
            enum l1_status st;
            if (l1_reserve_write(w->l1, &k, &sz, 1, w->writer, &st, &r) == 1) {
                stamp(base + r.offset, r.length, i);
                if (rand_r(&w->seed) % 8)
                    l1_publish(w->l1, &k, &r.id, 1, w->writer, NULL);
                else
                    l1_abort(w->l1, &k, &r.id, 1, w->writer);
            }
            break;
        }
        case 2:
        case 3: { /* read: a prefix of two keys, verify, release */
            struct l1_key ks[2] = { k, key((i + 1) % KEYS) };
            struct l1_ref rs[2];
            int n = l1_lock_prefix(w->l1, ks, 2, 2, rs);
            for (int j = 0; j < n; j++) {
                int want = j ? (i + 1) % KEYS : i;
                if (!stamp_ok(base + rs[j].offset, rs[j].length, want))
                    w->bad_stamps++;
            }
            uint64_t ids[2] = { rs[0].id, rs[1].id };
            if (n > 0)
                cr_assert_eq(l1_unlock(w->l1, ks, ids, (size_t)n, 2), n);
            w->lock_ok += n;
            break;
        }
        case 4:
            l1_touch(w->l1, &k, 1);
            break;
        default:
            if (op % 500 == 0)
                l1_evict_round(w->l1);
            else if (op % 997 == 0)
                l1_clear(w->l1, op % 2);
            else
                l1_get(w->l1, &k, &r);
        }
    }
    return NULL;
}

Test(l1_stress, threads_keep_invariants)
{
    struct l1_opts o;
    struct l1 *l1;
    char name[64];
    l1_opts_init(&o);
    snprintf(name, sizeof(name), "lmcd_test_l1s_%ld", (long)getpid());
    o.shm_name = name;
    o.size_bytes = 512 * 1024; /* far below KEYS x 5 units: constant demand eviction */
    o.max_objects = 256;
    o.trigger_watermark = 0.5;
    cr_assert_eq(l1_create(&o, &l1), 0);
    cr_assert_eq(l1_evict_start(l1), 0);

    pthread_t th[THREADS];
    struct worker w[THREADS];
    for (int t = 0; t < THREADS; t++) {
        w[t] = (struct worker){ .l1 = l1, .seed = 1000u + (unsigned)t, .writer = 100u + (unsigned)t };
        cr_assert_eq(pthread_create(&th[t], NULL, run, &w[t]), 0);
    }
    int locked = 0;
    for (int t = 0; t < THREADS; t++) {
        pthread_join(th[t], NULL);
        cr_assert_eq(w[t].bad_stamps, 0, "thread %d read a reused object", t);
        locked += w[t].lock_ok;
    }
    cr_assert(locked > 0, "readers found objects");

    struct l1_stats s;
    l1_stats_get(l1, &s);
    cr_assert_eq(s.write_locked_count, 0, "every reservation was published or aborted");
    cr_assert_eq(s.read_locked_count, 0, "every lock was released");
    cr_assert_eq(s.pending_free_count, 0);
    cr_assert(s.memory_used_bytes <= s.memory_total_bytes);
    cr_assert(s.demand_evicted_count > 0, "the pool was under pressure");
    cr_assert_eq(l1_clear(l1, false), (int)s.total_object_count);
    l1_stats_get(l1, &s);
    cr_assert_eq(s.memory_used_bytes, 0, "no leak");
    cr_assert_eq(s.total_object_count, 0);
    /* Capacity is whole again: one object of the full data area fits. */
    struct l1_key k = key(999);
    uint64_t sz = s.memory_total_bytes;
    enum l1_status st;
    struct l1_ref r;
    cr_assert_eq(l1_reserve_write(l1, &k, &sz, 1, 1, &st, &r), 1);
    l1_destroy(l1);
}
