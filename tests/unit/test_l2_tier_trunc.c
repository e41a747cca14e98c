/*
 * The L2 store path hands L1 addresses to adapters that read them later. A
 * truncation of the L1 segment by another process in that window (the L1
 * restores it zeroed; docs/l1.md) must not leave those zeros in L2: the
 * tier compares l1_check()'s generation before and after, and deletes what
 * was stored from every adapter. The mock adapter sleeps before it copies,
 * which opens the window on purpose.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "l1/l1.h"
#include "l2/l2.h"
#include "l2/l2_tier.h"

#define OBJ 65536

static char seg[64];

static void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* A field of the store controller's /status object (-1: none). */
static json_int_t store_stat(struct l2_tier *t, const char *field)
{
    json_t *sm = json_object(), *val;
    l2_tier_status(t, sm);
    json_int_t v = -1;
    const char *key;
    json_object_foreach(sm, key, val)
    {
        if (json_is_object(val) && json_object_get(val, "store_policy") && json_object_get(val, field))
            v = json_integer_value(json_object_get(val, field));
    }
    json_decref(sm);
    return v;
}

static bool wait_stat(struct l2_tier *t, const char *field, json_int_t want)
{
    for (int i = 0; i < 3000; i++) { /* 60 s: a loaded CI box */
        if (store_stat(t, field) == want)
            return true;
        sleep_ms(20);
    }
    return false;
}

static void put(struct l1 *l1, const struct l1_key *k)
{
    uint64_t sz = OBJ;
    enum l1_status st;
    struct l1_ref r;
    cr_assert_eq(l1_reserve_write(l1, k, &sz, 1, 7, &st, &r), 1);
    cr_assert_eq(l1_back(l1, &r), 0);
    memset(l1_base(l1) + r.offset, 0xAB, OBJ);
    cr_assert_eq(l1_publish(l1, k, &r.id, 1, 7, NULL), 1);
}

static uint64_t l2_objects(struct l2_tier *t)
{
    struct l2_usage u;
    l2_get_usage(l2_tier_adapter(t, 0), false, &u);
    return u.objects;
}

Test(l2_tier_trunc, truncation_while_stored_deletes_from_l2, .timeout = 120)
{
    struct l1_opts o;
    l1_opts_init(&o);
    snprintf(seg, sizeof(seg), "lmcd_test_l2trunc_%ld", (long)getpid());
    o.shm_name = seg;
    o.size_bytes = 1 << 20;
    o.use_lazy = false;
    struct l1 *l1 = NULL;
    cr_assert_eq(l1_create(&o, &l1), 0);
    /* ~3 s per 64 KiB object before the mock copies it */
    json_t *ads = json_pack("[{s:s, s:f, s:f}]", "type", "mock", "max_size_gb", 1.0, "mock_bandwidth_gb",
                            0.00002);
    struct l2_tier_opts to = { .l1 = l1, .adapters = ads, .store_policy = "default", .writer = 99 };
    struct l2_tier *t = NULL;
    cr_assert_eq(l2_tier_create(&to, &t), 0);
    json_decref(ads);

    struct l1_key a = { .ns = 1 }, b = { .ns = 1 };
    memset(a.chunk_hash, 0x11, 32);
    memset(b.chunk_hash, 0x22, 32);
    /* Control: no truncation, the object reaches L2. */
    put(l1, &a);
    l2_tier_stored(t, "m", 1, "", 0, &a, 1);
    cr_assert(wait_stat(t, "stored_keys", 1), "the control store never completed");
    cr_assert_eq(l2_objects(t), 1);
    cr_assert_eq(store_stat(t, "purged_keys"), 0);

    /* Truncated (and restored zeroed) while the mock sleeps before copying. */
    put(l1, &b);
    uint64_t gen = l1_check(l1);
    l2_tier_stored(t, "m", 1, "", 0, &b, 1);
    cr_assert(wait_stat(t, "in_flight_task_count", 1), "the store never started");
    char path[80];
    snprintf(path, sizeof(path), "/%s", seg);
    int fd = shm_open(path, O_RDWR, 0);
    cr_assert_geq(fd, 0);
    cr_assert_eq(ftruncate(fd, 0), 0);
    close(fd);
    cr_assert_neq(l1_check(l1), gen, "the truncation was noticed and the segment restored");
    cr_assert(wait_stat(t, "purged_keys", 1), "the zeroed store was not deleted from L2");
    cr_assert(wait_stat(t, "in_flight_task_count", 0));
    cr_assert_eq(l2_objects(t), 1, "only the control object is left in L2");
    l2_tier_destroy(t);
    l1_destroy(l1);
}
