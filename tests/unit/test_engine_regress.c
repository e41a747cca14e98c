/* engine regression tests: each reproduces a bug found by the engine tests
 * and failed before its fix. */
#include "test_engine_util.h"

#define MIB (1ull << 20)

/* A reaped worker that resumes with ordinary requests (no PING) and goes
 * silent again must be reaped again. */
Test(engine_bugs, resumed_worker_is_reaped_again)
{
    struct engine_opts o;
    te_opts(&o, 8 * MIB);
    o.worker_reap_timeout_s = 5;
    struct engine *e = te_create_opts(&o);
    te_register(e, 1, 1, false);
    uint32_t tok[2 * CHUNK];
    te_tokens(tok, 2 * CHUNK, 2);
    struct engine_key k0 = te_key(tok, 2 * CHUNK, "r", 1, 0, 0, 1);
    struct engine_slots s;
    cr_assert_eq(engine_prepare_store(e, &k0, 1, &s), 0);
    engine_slots_free(&s);
    advance_s(6);
    engine_sweep(e);
    cr_assert_eq(te_stats(e).write_locked_count, 0, "first reap");
    /* back, without a PING */
    struct engine_key k1 = te_key(tok, 2 * CHUNK, "r", 1, 0, 1, 2);
    cr_assert_eq(engine_prepare_store(e, &k1, 1, &s), 0);
    cr_assert_eq(s.n, 1);
    engine_slots_free(&s);
    advance_s(6);
    engine_sweep(e);
    cr_assert_eq(te_stats(e).write_locked_count, 0, "silent again: its reservation must go");
    engine_destroy(e);
}

/* Two stores of one worker overlap (shared prefix): B's COMMIT_STORE must
 * not publish A's reservations, which A may still be writing. */
Test(engine_bugs, commit_store_publishes_only_its_own_prepare)
{
    struct engine *e = te_create(8 * MIB);
    te_register(e, 1, 1, false);
    uint32_t tok[4 * CHUNK];
    te_tokens(tok, 4 * CHUNK, 3);
    struct engine_key ka = te_key(tok, 2 * CHUNK, "a", 1, 0, 0, 2);
    struct engine_key kb = te_key(tok, 4 * CHUNK, "b", 1, 0, 0, 4);
    struct engine_slots s;
    cr_assert_eq(engine_prepare_store(e, &ka, 1, &s), 0);
    cr_assert_eq(s.n, 2);
    engine_slots_free(&s);
    cr_assert_eq(engine_prepare_store(e, &kb, 1, &s), 0);
    cr_assert_eq(s.n, 2, "chunks 0-1 are A's reservations");
    cr_assert_eq(s.chunk_indices[0], 2);
    engine_slots_free(&s);
    cr_assert_eq(engine_commit_store(e, &kb, 1, 0), 0);
    cr_assert_not(te_present(e, 3, 0, 1, 0), "A's chunk 0 is not written yet, yet B's commit published it");
    cr_assert_eq(engine_commit_store(e, &ka, 1, 0), 0, "A's own commit then finds nothing pending");
    engine_destroy(e);
}

/* A long request's lookup lock expired (read TTL) and another request then
 * locked the same object: the first request's END_SESSION must not take the
 * second request's holder away. */
Test(engine_bugs, end_session_after_read_ttl_does_not_release_another_requests_lock)
{
    struct engine *e = te_create(8 * MIB);
    te_register(e, 1, 1, false);
    te_store(e, 1, "w", 4, CHUNK, 1, 0, 0, 1);
    cr_assert_eq(te_lookup(e, "long", 4, 1, 1, 1, 0), 1);
    advance_s(301); /* read TTL 300 s */
    cr_assert_eq(te_lookup(e, "new", 4, 1, 1, 1, 0), 1);
    cr_assert_eq(te_stats(e).read_locked_count, 1);
    cr_assert_eq(engine_end_session(e, "long", 4), 0);
    cr_assert_eq(te_stats(e).read_locked_count, 1, "END_SESSION of 'long' released 'new''s lock");
    engine_destroy(e);
}

/* A reservation the worker abandoned (write TTL) leaves a pending record;
 * the next PREPARE_STORE/COMMIT_STORE of the same chunk must still publish. */
Test(engine_bugs, stale_pending_record_does_not_block_a_later_commit)
{
    struct engine_opts o;
    te_opts(&o, 8 * MIB);
    o.l1_write_ttl_s = 10;
    o.worker_reap_timeout_s = 0;
    struct engine *e = te_create_opts(&o);
    te_register(e, 1, 1, false);
    cr_assert_eq(te_reserve(e, 1, "a", 5, CHUNK, 1, 0, 0, 1), 1);
    advance_s(11); /* abandoned: expired */
    cr_assert_eq(te_store(e, 1, "b", 5, CHUNK, 1, 0, 0, 1), 1);
    cr_assert(te_present(e, 5, 0, 1, 0), "the second, live reservation was not published");
    engine_destroy(e);
}

/* Under memory pressure, evicting a prefix's first chunk makes the rest
 * useless (lookups are prefix matches): the tail should go first. */
Test(engine_bugs, eviction_keeps_the_prefix_head)
{
    struct engine *e = te_create(8 * MIB);
    te_register(e, 1, 1, false);
    size_t cap = te_capacity(e);
    cr_assert_eq(te_store(e, 1, "p", 6, 4 * CHUNK, 1, 0, 0, 4), 4);
    cr_assert_eq(te_store(e, 1, "f", 7, (cap - 4) * CHUNK, 1, 0, 0, cap - 4), cap - 4);
    cr_assert_eq(te_store(e, 1, "n", 8, CHUNK, 1, 0, 0, 1), 1); /* evicts one object */
    cr_assert_eq(te_lookup(e, "s", 6, 4, 1, 1, 0), 3, "chunk 0 was evicted: 3 objects of dead weight");
    engine_destroy(e);
}

/* A worker range whose start is not chunk aligned is rounded down: chunk 0
 * is reserved for tokens [8, 24), so the worker's bytes land under the wrong
 * key and every later reader gets KV of other positions. */
Test(engine_bugs, unaligned_worker_range_is_refused)
{
    struct engine *e = te_create(8 * MIB);
    te_register(e, 1, 1, false);
    uint32_t tok[3 * CHUNK];
    te_tokens(tok, 3 * CHUNK, 9);
    struct engine_key k = te_key(tok, 3 * CHUNK, "r", 1, 0, 0, 2);
    k.start = CHUNK / 2;
    k.end = 2 * CHUNK + CHUNK / 2;
    struct engine_slots s;
    cr_assert_eq(engine_prepare_store(e, &k, 1, &s), -EINVAL, "reserved %zu slots for a misaligned range", s.n);
    engine_slots_free(&s);
    engine_destroy(e);
}
