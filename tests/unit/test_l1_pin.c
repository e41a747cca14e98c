/* L1 pins (issue 11, item 2): a zero-copy reader's object outlives read TTLs,
 * eviction and forced clears until it is unpinned, and pins are bounded in
 * bytes. Time comes from a fake clock. */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "l1/l1.h"

#define SEC 1000000000ull
#define UNIT 4096ull

static uint64_t fake_ns = 1000 * SEC;
static uint64_t fake_now(void *ctx)
{
    (void)ctx;
    return __atomic_load_n(&fake_ns, __ATOMIC_RELAXED);
}
static const struct clock_src pin_clock = { fake_now, NULL };

/* An L1 whose data area holds `units` 4 KiB units, read TTL 1 s. */
static struct l1 *pin_l1(uint64_t units)
{
    static char name[64];
    snprintf(name, sizeof(name), "lmcd_test_l1pin_%ld", (long)getpid());
    struct l1_opts o;
    l1_opts_init(&o);
    o.shm_name = name;
    o.size_bytes = 4096 + 4 * UNIT + units * UNIT; /* header + 256-entry table (64 B each) + data */
    o.max_objects = 256;
    o.read_ttl_s = 1;
    o.clock = &pin_clock;
    struct l1 *l1;
    cr_assert_eq(l1_create(&o, &l1), 0);
    return l1;
}

static struct l1_key pkey(int i)
{
    struct l1_key k;
    memset(&k, 0, sizeof(k));
    memcpy(k.chunk_hash, &i, sizeof(i));
    k.ns = 9;
    return k;
}

/* Reserves, fills with byte `fill`, publishes key i of one unit. */
static struct l1_ref pput(struct l1 *l1, int i, uint8_t fill)
{
    struct l1_key k = pkey(i);
    uint64_t size = UNIT;
    enum l1_status st;
    struct l1_ref r;
    cr_assert_eq(l1_reserve_write(l1, &k, &size, 1, 1, &st, &r), 1, "key %d: %s", i, l1_status_name(st));
    memset((uint8_t *)l1_base(l1) + r.offset, fill, UNIT);
    cr_assert_eq(l1_publish(l1, &k, &r.id, 1, 1, NULL), 1);
    return r;
}

static bool all_bytes(struct l1 *l1, const struct l1_ref *r, uint8_t fill)
{
    const uint8_t *p = (const uint8_t *)l1_base(l1) + r->offset;
    for (uint64_t i = 0; i < r->length; i++)
        if (p[i] != fill)
            return false;
    return true;
}

static struct l1_stats pstats(struct l1 *l1)
{
    struct l1_stats st;
    l1_stats_get(l1, &st);
    return st;
}

Test(l1_pin, pinned_object_survives_ttl_eviction_and_forced_clear)
{
    struct l1 *l1 = pin_l1(4);
    pput(l1, 0, 0xA0);
    pput(l1, 1, 0xA1);
    struct l1_key k[2] = { pkey(0), pkey(1) };
    struct l1_ref refs[2];
    bool over = true;
    cr_assert_eq(l1_pin_prefix(l1, k, 2, UINT64_MAX, refs, &over), 2);
    cr_assert_not(over);
    cr_assert_eq(pstats(l1).pinned_count, 2);
    /* Past any read TTL, under a forced clear and a flood of new objects
     * that needs every unit: the pinned bytes stay the objects' own. */
    __atomic_add_fetch(&fake_ns, 10 * SEC, __ATOMIC_RELAXED);
    cr_assert_eq(l1_evict_round(l1), 0);
    cr_assert_eq(l1_clear(l1, true), 2);
    for (int i = 10; i < 20; i++) {
        struct l1_key nk = pkey(i);
        uint64_t size = UNIT;
        enum l1_status st;
        struct l1_ref r;
        if (l1_reserve_write(l1, &nk, &size, 1, 1, &st, &r) == 1) {
            cr_assert(r.offset != refs[0].offset && r.offset != refs[1].offset, "pinned memory handed out");
            memset((uint8_t *)l1_base(l1) + r.offset, 0xEE, UNIT);
            l1_publish(l1, &nk, &r.id, 1, 1, NULL);
        }
    }
    cr_assert(all_bytes(l1, &refs[0], 0xA0) && all_bytes(l1, &refs[1], 0xA1));
    struct l1_stats s = pstats(l1);
    cr_assert_eq(s.pending_free_count, 2);
    cr_assert_eq(s.pinned_bytes, 2 * UNIT);
    /* The last unpin frees them. */
    cr_assert_eq(l1_unpin(l1, k, refs, 2), 2);
    s = pstats(l1);
    cr_assert_eq(s.pending_free_count, 0);
    cr_assert_eq(s.pinned_count, 0);
    cr_assert_eq(s.pinned_bytes, 0);
    l1_destroy(l1);
}

Test(l1_pin, pinned_object_is_never_evicted_and_unpinned_one_is)
{
    struct l1 *l1 = pin_l1(2);
    struct l1_ref r0 = pput(l1, 0, 0xB0);
    pput(l1, 1, 0xB1);
    struct l1_key k0 = pkey(0), k2 = pkey(2);
    struct l1_ref pr;
    cr_assert_eq(l1_pin_prefix(l1, &k0, 1, UINT64_MAX, &pr, NULL), 1);
    cr_assert_eq(pr.id, r0.id);
    /* Key 2 needs a unit: only unpinned key 1 may go, though key 0 is older. */
    uint64_t size = UNIT;
    enum l1_status st;
    struct l1_ref r2;
    cr_assert_eq(l1_reserve_write(l1, &k2, &size, 1, 1, &st, &r2), 1);
    struct l1_ref tmp;
    cr_assert_eq(l1_get(l1, &k0, &tmp), 0, "the pinned object stayed");
    struct l1_key k1 = pkey(1);
    cr_assert_eq(l1_get(l1, &k1, &tmp), -ENOENT, "the unpinned one was evicted");
    l1_abort(l1, &k2, &r2.id, 1, 1);
    cr_assert_eq(l1_unpin(l1, &k0, &pr, 1), 1);
    cr_assert_eq(l1_evict_round(l1), 0, "below the watermark");
    struct l1_key k3 = pkey(3), k4 = pkey(4);
    struct l1_key both[2] = { k3, k4 };
    uint64_t sizes[2] = { UNIT, UNIT };
    enum l1_status sts[2];
    struct l1_ref rs[2];
    cr_assert_eq(l1_reserve_write(l1, both, sizes, 2, 1, sts, rs), 2, "unpinned, key 0 can be evicted now");
    l1_destroy(l1);
}

Test(l1_pin, pins_are_bounded_in_bytes_and_counted_once_per_object)
{
    struct l1 *l1 = pin_l1(8);
    for (int i = 0; i < 4; i++)
        pput(l1, i, (uint8_t)i);
    struct l1_key k[4] = { pkey(0), pkey(1), pkey(2), pkey(3) };
    struct l1_ref a[4], b[4];
    bool over = false;
    cr_assert_eq(l1_pin_prefix(l1, k, 4, 2 * UNIT, a, &over), 2, "budget: two units");
    cr_assert(over);
    /* pinning the same objects again costs nothing more */
    cr_assert_eq(l1_pin_prefix(l1, k, 2, 2 * UNIT, b, &over), 2);
    cr_assert_not(over);
    cr_assert_eq(pstats(l1).pinned_bytes, 2 * UNIT);
    /* a missing key stops the prefix without being "over budget" */
    struct l1_key gap[2] = { pkey(0), pkey(42) };
    struct l1_ref g[2];
    cr_assert_eq(l1_pin_prefix(l1, gap, 2, UINT64_MAX, g, &over), 1);
    cr_assert_not(over);
    cr_assert_eq(l1_unpin(l1, gap, g, 1), 1);
    cr_assert_eq(l1_unpin(l1, k, a, 2), 2);
    cr_assert_eq(pstats(l1).pinned_count, 2, "b still pins them");
    cr_assert_eq(l1_unpin(l1, k, b, 2), 2);
    cr_assert_eq(pstats(l1).pinned_bytes, 0);
    cr_assert_eq(l1_pin_prefix(l1, k, 1, 0, a, &over), 0);
    cr_assert(over, "a zero budget pins nothing");
    l1_destroy(l1);
}

/* ZeroMQ's I/O thread blocks every signal and unpins inline replies from its
 * free callback. With the key kept only in the segment (layout 3), a release
 * that read it there would die of SIGBUS on a truncated segment (a blocked
 * synchronous SIGBUS kills the process; the guard never sees it). Releases
 * by an L1 ref go by the ref's slot and never touch the segment. */
struct release_job {
    struct l1 *l1;
    struct l1_key keys[2];
    struct l1_ref refs[2];
    int unpinned, unlocked;
};

static void *release_with_signals_blocked(void *arg)
{
    struct release_job *j = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    j->unpinned = l1_unpin(j->l1, j->keys, j->refs, 2);
    j->unlocked = l1_unlock_refs(j->l1, j->keys, j->refs, 2, 1);
    return NULL;
}

Test(l1_pin, release_by_ref_never_touches_a_truncated_segment)
{
    struct l1 *l1 = pin_l1(4);
    pput(l1, 0, 0xC0);
    pput(l1, 1, 0xC1);
    struct release_job j = { .l1 = l1, .keys = { pkey(0), pkey(1) } };
    bool over = true;
    cr_assert_eq(l1_pin_prefix(l1, j.keys, 2, UINT64_MAX, j.refs, &over), 2);
    struct l1_ref locked[2];
    cr_assert_eq(l1_lock(l1, j.keys, 2, 1, locked), 0);
    for (int i = 0; i < 2; i++)
        j.refs[i].lock_epoch = locked[i].lock_epoch; /* same objects: pin and lock refs agree */
    char path[128];
    snprintf(path, sizeof(path), "/dev/shm/%s", l1_shm_name(l1));
    cr_assert_eq(truncate(path, 0), 0);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, release_with_signals_blocked, &j), 0);
    cr_assert_eq(pthread_join(t, NULL), 0);
    cr_assert_eq(j.unpinned, 2);
    cr_assert_eq(j.unlocked, 2);
    struct l1_stats st = pstats(l1); /* notices the truncation, restores */
    cr_assert_eq(st.segment_losses, 1);
    cr_assert_eq(st.pinned_count, 0);
    cr_assert_eq(st.pending_free_count, 0, "released objects were freed, not left pending");
    l1_destroy(l1);
}
