/*
 * The GPU path's quarantine (engine_hold_*) and the sweeper's on_reap hook:
 * what a queued GPU copy uses survives UNREGISTER, reaping, the sweeper's
 * record pruning and L1's own TTLs until the hold ends. A fake clock drives
 * the sweeper; no GPU is involved (the engine knows nothing of CUDA).
 */
#include "test_engine_util.h"

#define MIB (1024ull * 1024)

static int64_t reaped_ids[8];
static int n_reaped;
static void on_reap(void *ctx, int64_t id)
{
    (void)ctx;
    if (n_reaped < 8)
        reaped_ids[n_reaped++] = id;
}

static struct engine *hold_engine(void)
{
    struct engine_opts o;
    te_opts(&o, 8 * MIB);
    o.worker_reap_timeout_s = 5;
    o.on_reap = on_reap;
    n_reaped = 0;
    return te_create_opts(&o);
}

Test(engine_hold, held_store_survives_reap_unregister_and_ttls_then_publishes)
{
    struct engine *e = hold_engine();
    te_register(e, 1, 1, false);
    uint32_t tok[2 * CHUNK];
    te_tokens(tok, 2 * CHUNK, 7);
    struct engine_key k = te_key(tok, 2 * CHUNK, "s", 1, 0, 0, 2);
    struct engine_slots s;
    cr_assert_eq(engine_prepare_store(e, &k, 1, &s), 0);
    cr_assert_eq(s.n, 2);
    struct engine_hold *h = NULL;
    cr_assert_eq(engine_hold_store(e, &k, 1, s.n, &h), 0);
    cr_assert_not_null(h);
    uint8_t *base = l1_base(e->l1);
    for (size_t i = 0; i < s.n; i++)
        memset(base + s.slots[i].offset, 0x5a, s.slots[i].length);
    cr_assert_eq(te_status_int(e, "counters.gpu_held_copies"), 1);
    cr_assert_eq(te_status_int(e, "counters.gpu_held_objects"), 2);
    /* the worker goes silent: reaped (the hook runs once), nothing held released */
    advance_s(6);
    engine_sweep(e);
    cr_assert_eq(n_reaped, 1);
    cr_assert_eq(reaped_ids[0], 1);
    cr_assert_eq(te_stats(e).write_locked_count, 2, "the reap released a held reservation");
    /* UNREGISTER, and far past the write TTL (600 s): still held (renewed) */
    cr_assert_eq(engine_unregister(e, 1), 0);
    for (int i = 0; i < 8; i++) {
        advance_s(200);
        engine_sweep(e);
        l1_evict_round(e->l1);
    }
    cr_assert_eq(te_stats(e).write_locked_count, 2, "a held reservation expired");
    cr_assert_not(te_present(e, 7, 0, 1, 0), "published before the copy completed");
    /* the copy completed: published, with its bytes */
    engine_hold_end(e, h, &k, true);
    cr_assert_eq(te_stats(e).write_locked_count, 0);
    cr_assert(te_present(e, 7, 0, 1, 0));
    cr_assert(te_present(e, 7, 1, 1, 0));
    cr_assert_eq(te_status_int(e, "counters.gpu_held_copies"), 0);
    cr_assert_eq(base[s.slots[1].offset + 5], 0x5a);
    engine_slots_free(&s);
    engine_destroy(e);
}

Test(engine_hold, failed_copy_is_dropped_and_unheld_reservations_still_go_with_unregister)
{
    struct engine *e = hold_engine();
    te_register(e, 1, 1, false);
    uint32_t tok[3 * CHUNK];
    te_tokens(tok, 3 * CHUNK, 8);
    struct engine_key k = te_key(tok, 3 * CHUNK, "s", 1, 0, 0, 1);
    struct engine_slots s;
    cr_assert_eq(engine_prepare_store(e, &k, 1, &s), 0);
    struct engine_hold *h = NULL;
    cr_assert_eq(engine_hold_store(e, &k, 1, s.n, &h), 0);
    engine_slots_free(&s);
    /* an engine-driven reservation of the same worker, not held */
    cr_assert_eq(te_reserve(e, 1, "t", 8, 3 * CHUNK, 1, 0, 1, 2), 1);
    cr_assert_eq(te_stats(e).write_locked_count, 2);
    cr_assert_eq(engine_unregister(e, 1), 0);
    cr_assert_eq(te_stats(e).write_locked_count, 1, "UNREGISTER drops what the instance owns, not the hold");
    engine_hold_end(e, h, &k, false);
    cr_assert_eq(te_stats(e).write_locked_count, 0);
    cr_assert_not(te_present(e, 8, 0, 1, 0), "a failed copy was published");
    /* a hold for a range whose reservations are gone is refused */
    te_register(e, 2, 1, false);
    struct engine_key k2 = te_key(tok, 3 * CHUNK, "u", 1, 0, 2, 3);
    cr_assert_eq(engine_prepare_store(e, &k2, 2, &s), 0);
    cr_assert_eq(s.n, 1);
    cr_assert_eq(engine_unregister(e, 2), 0);
    cr_assert_eq(engine_hold_store(e, &k2, 2, s.n, &h), -ENOENT);
    cr_assert_null(h);
    engine_slots_free(&s);
    engine_destroy(e);
}

Test(engine_hold, held_retrieve_is_pinned_past_reap_and_read_ttl)
{
    struct engine *e = hold_engine();
    te_register(e, 1, 1, false);
    te_register(e, 2, 1, false);
    cr_assert_eq(te_store(e, 1, "w", 9, 2 * CHUNK, 1, 0, 0, 2), 2);
    uint32_t tok[2 * CHUNK];
    te_tokens(tok, 2 * CHUNK, 9);
    struct engine_key k = te_key(tok, 2 * CHUNK, "r", 1, 0, 0, 2);
    struct engine_slots s;
    cr_assert_eq(engine_prepare_retrieve(e, &k, 2, &s), 0);
    struct engine_hold *h = NULL;
    cr_assert_eq(engine_hold_retrieve(e, &k, 2, &h), 0);
    engine_slots_free(&s);
    cr_assert_eq(te_stats(e).pinned_count, 2);
    advance_s(6);
    engine_sweep(e); /* both silent: reaped, the hold stays */
    cr_assert_eq(te_stats(e).read_locked_count, 2);
    advance_s(400); /* past the read TTL: the locks lapse, the pins do not */
    engine_sweep(e);
    l1_evict_round(e->l1);
    struct l1_stats st = te_stats(e);
    cr_assert_eq(st.pinned_count, 2);
    cr_assert_eq(engine_clear(e, false), 0);
    cr_assert(te_present(e, 9, 0, 1, 0), "a held object was cleared");
    engine_hold_end(e, h, &k, true);
    st = te_stats(e);
    cr_assert_eq(st.pinned_count, 0);
    cr_assert_eq(st.read_locked_count, 0);
    cr_assert_eq(te_status_int(e, "counters.gpu_held_objects"), 0);
    engine_destroy(e);
}
