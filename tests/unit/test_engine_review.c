/* engine and L1 regression tests from a code review: each failed before its
 * fix (sweeper clock race, transfer and pending records matched by request,
 * allocator fit deep in a bin). */
#include "test_engine_util.h"
#include "l1/l1_alloc.h"

#define MIB (1ull << 20)

/* ---- 1. sweeper: now - last_used_ns underflows for a session used after
 * engine_sweep read the clock but before it took engine.mu. */
struct hook_clock {
    uint64_t now;
    int armed;            /* 1: the next read (the sweep's) triggers the hook */
    struct engine *e;
    pthread_t tid;
};
static struct hook_clock hclk = { 1000 * SEC, 0, NULL, 0 };
static uint32_t htok[4 * CHUNK];
static uint64_t hook_now(void *ctx)
{
    struct hook_clock *c = ctx;
    uint64_t t = __atomic_load_n(&c->now, __ATOMIC_RELAXED);
    if (c->armed && pthread_equal(pthread_self(), c->tid)) {
        c->armed = 0;
        /* between the sweep's clock read and its engine.mu: a LOOKUP runs 1 ns later */
        __atomic_store_n(&c->now, t + 1, __ATOMIC_RELAXED);
        struct engine_key k = te_key(htok, 2 * CHUNK, "live", 1, -1, 0, 2);
        cr_assert_eq(engine_lookup(c->e, &k, 1), 0);
    }
    return t;
}
static const struct clock_src hook_src = { hook_now, &hclk };

Test(review, sweep_does_not_expire_a_session_used_during_the_sweep)
{
    struct engine_opts o;
    te_opts(&o, 8 * MIB);
    o.clock = &hook_src;
    struct engine *e = te_create_opts(&o);
    te_register(e, 1, 1, false);
    /* store 2 chunks of seed 5 */
    te_tokens(htok, 2 * CHUNK, 5);
    struct engine_key ks = te_key(htok, 2 * CHUNK, "w", 1, 0, 0, 2);
    struct engine_slots s;
    cr_assert_eq(engine_prepare_store(e, &ks, 1, &s), 0);
    cr_assert_eq(s.n, 2);
    engine_slots_free(&s);
    cr_assert_eq(engine_commit_store(e, &ks, 1, 0), 0);
    hclk.e = e;
    hclk.tid = pthread_self();
    hclk.armed = 1;
    engine_sweep(e);
    int64_t v = -1;
    cr_assert_eq(engine_query_prefetch_status(e, "live", 4, &v), 0);
    cr_assert_eq(v, 2, "a session used 1 ns after the sweep's clock read was expired: job lost (got %lld)",
                 (long long)v);
    engine_destroy(e);
}

/* ---- 2. COMMIT_RETRIEVE after a failed PREPARE_RETRIEVE releases another
 * in-flight request's transfer locks on the same instance. */
Test(review, failed_retrieve_commit_keeps_other_requests_transfer_locks)
{
    struct engine *e = te_create(8 * MIB);
    te_register(e, 1, 1, false);
    cr_assert_eq(te_store(e, 1, "w", 3, 2 * CHUNK, 1, 0, 0, 2), 2);
    uint32_t tok[3 * CHUNK];
    te_tokens(tok, 3 * CHUNK, 3);
    /* A retrieves chunks 0-1 and is still copying */
    struct engine_key ka = te_key(tok, 2 * CHUNK, "a", 1, 0, 0, 2);
    struct engine_slots s;
    cr_assert_eq(engine_prepare_retrieve(e, &ka, 1, &s), 0);
    cr_assert_eq(s.n, 2);
    engine_slots_free(&s);
    cr_assert_eq(te_stats(e).read_locked_count, 2);
    /* B (same prefix, one chunk longer) misses chunk 2; the worker commits anyway (spec 7.8) */
    struct engine_key kb = te_key(tok, 3 * CHUNK, "b", 1, 0, 0, 3);
    cr_assert_eq(engine_prepare_retrieve(e, &kb, 1, &s), -ENOENT);
    cr_assert_eq(engine_commit_retrieve(e, &kb, 1), 0);
    cr_assert_eq(te_stats(e).read_locked_count, 2, "B's commit released A's transfer locks while A reads");
    engine_destroy(e);
}

/* ---- 3. COMMIT_STORE of A publishes B's fresh, unwritten reservation of the
 * same (instance, tokens, range) once A's own was dropped by CLEAR(force). */
Test(review, commit_store_never_publishes_a_reservation_it_did_not_prepare)
{
    struct engine *e = te_create(8 * MIB);
    te_register(e, 1, 1, false);
    uint32_t tok[2 * CHUNK];
    te_tokens(tok, 2 * CHUNK, 4);
    struct engine_key ka = te_key(tok, 2 * CHUNK, "a", 1, 0, 0, 2);
    struct engine_key kb = te_key(tok, 2 * CHUNK, "b", 1, 0, 0, 2);
    struct engine_slots s;
    cr_assert_eq(engine_prepare_store(e, &ka, 1, &s), 0);
    cr_assert_eq(s.n, 2);
    engine_slots_free(&s);
    cr_assert_eq(engine_clear(e, true), 0); /* A's reservations become PENDING */
    cr_assert_eq(engine_prepare_store(e, &kb, 1, &s), 0);
    cr_assert_eq(s.n, 2, "B reserves afresh");
    engine_slots_free(&s);
    engine_commit_store(e, &ka, 1, 0); /* A finished writing its (cleared) slots */
    cr_assert_not(te_present(e, 4, 0, 1, 0), "A's commit published B's slot before B wrote it");
    engine_destroy(e);
}

/* ---- 4. allocator: a fitting free extent past the first 32 of its bin is
 * not found when no higher bin has space. */
Test(review, alloc_finds_a_fitting_extent_deep_in_its_bin)
{
    const uint64_t A = 4096;
    struct l1_alloc a;
    /* 1 x (7 + 1) + 40 x (5 + 1) units */
    uint64_t units = 8 + 40 * 6;
    /* slots: fit 0, sep 1, small 2..41, seps 42..81, got 82 */
    cr_assert_eq(l1_alloc_init(&a, 0, units * A, A, 83), 0);
    cr_assert_eq(l1_alloc_get(&a, 7 * A, 0), 0);
    cr_assert_eq(l1_alloc_get(&a, 1 * A, 1), 0);
    for (uint32_t i = 0; i < 40; i++) {
        cr_assert_eq(l1_alloc_get(&a, 5 * A, 2 + i), 0);
        cr_assert_eq(l1_alloc_get(&a, 1 * A, 42 + i), 0);
    }
    cr_assert_eq(a.used, a.bytes);
    l1_alloc_put(&a, 0, 7 * A); /* oldest in bin 2 (4..7 units) */
    for (uint32_t i = 0; i < 40; i++)
        l1_alloc_put(&a, 2 + i, 5 * A);
    cr_assert_eq(l1_alloc_get(&a, 7 * A, 82), 0, "a free 7-unit extent exists but the request failed");
    l1_alloc_fini(&a);
}
