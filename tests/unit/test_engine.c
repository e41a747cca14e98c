/* engine: scheduler flow, engine-driven transfers, locks, LRU, CLEAR, inline.
 * Time comes from a fake clock; nothing sleeps. */
#include "test_engine_util.h"

#define MIB (1ull << 20)

/* ------------------------------------------------------------ scheduler flow */

Test(engine, lookup_result_is_delivered_exactly_once)
{
    struct engine *e = te_create(8 * MIB);
    te_register(e, 1, 1, false);
    cr_assert_eq(te_store(e, 1, "w", 7, 4 * CHUNK, 1, 0, 0, 3), 3);

    uint32_t tok[5 * CHUNK + 3];
    te_tokens(tok, 5 * CHUNK + 3, 7);
    /* 5 full chunks (3 cached) and a partial tail that is never hashed */
    struct engine_key k = te_key(tok, 5 * CHUNK + 3, "req", 1, -1, 0, 5);
    cr_assert_eq(engine_lookup(e, &k, 1), 0);
    cr_assert_eq(te_status_int(e, "active_prefetch_jobs"), 1);
    int64_t v = -1;
    cr_assert_eq(engine_query_prefetch_status(e, "req", 3, &v), 0);
    cr_assert_eq(v, 3);
    cr_assert_eq(te_status_int(e, "active_prefetch_jobs"), 0);
    v = -1;
    cr_assert_eq(engine_query_prefetch_status(e, "req", 3, &v), 0);
    cr_assert_eq(v, 0, "the result went to the first query");
    v = -1;
    cr_assert_eq(engine_query_prefetch_status(e, "nobody", 6, &v), 0);
    cr_assert_eq(v, 0, "unknown request id is a miss");
    v = -1;
    cr_assert_eq(engine_query_lookup_hits(e, "nobody", 6, &v), 0);
    cr_assert_eq(v, 0);
    engine_destroy(e);
}

Test(engine, lookup_hits_does_not_consume_the_job)
{
    struct engine *e = te_create(8 * MIB);
    te_register(e, 1, 1, false);
    te_store(e, 1, "w", 3, 2 * CHUNK, 1, 0, 0, 2);
    uint32_t tok[4 * CHUNK];
    te_tokens(tok, 4 * CHUNK, 3);
    struct engine_key k = te_key(tok, 4 * CHUNK, "r", 1, -1, 0, 4);
    cr_assert_eq(engine_lookup(e, &k, 1), 0);
    for (int i = 0; i < 3; i++) {
        int64_t v = -1;
        cr_assert_eq(engine_query_lookup_hits(e, "r", 1, &v), 0);
        cr_assert_eq(v, 2);
    }
    int64_t v = -1;
    cr_assert_eq(engine_query_prefetch_status(e, "r", 1, &v), 0);
    cr_assert_eq(v, 2);
    cr_assert_eq(engine_query_lookup_hits(e, "r", 1, &v), 0);
    cr_assert_eq(v, 0, "consumed by QUERY_PREFETCH_STATUS");
    engine_destroy(e);
}

Test(engine, lookup_without_registration_or_objects_is_zero_and_still_answers)
{
    struct engine *e = te_create(8 * MIB);
    cr_assert_eq(te_lookup(e, "r", 9, 3, 1, 1, 0), 0);
    /* an invalid key (model with '@') still leaves a 0 result to query */
    uint32_t tok[CHUNK];
    te_tokens(tok, CHUNK, 9);
    struct engine_key k = te_key(tok, CHUNK, "bad", 1, -1, 0, 1);
    k.model_name = "a@b";
    k.model_name_len = 3;
    cr_assert_lt(engine_lookup(e, &k, 1), 0);
    int64_t v = -1;
    cr_assert_eq(engine_query_prefetch_status(e, "bad", 3, &v), 0);
    cr_assert_eq(v, 0);
    engine_destroy(e);
}

Test(engine, second_lookup_replaces_the_first_and_its_locks)
{
    struct engine *e = te_create(8 * MIB);
    te_register(e, 1, 1, false);
    te_store(e, 1, "w", 5, 3 * CHUNK, 1, 0, 0, 3);
    cr_assert_eq(te_lookup(e, "r", 5, 3, 1, 1, 0), 3);
    cr_assert_eq(te_lookup(e, "r", 5, 3, 1, 1, 0), 3);
    cr_assert_eq(te_stats(e).read_locked_count, 3);
    uint32_t tok[3 * CHUNK];
    te_tokens(tok, 3 * CHUNK, 5);
    struct engine_key k = te_key(tok, 3 * CHUNK, "r", 1, -1, 0, 3);
    cr_assert_eq(engine_free_lookup_locks(e, &k, 1), 0);
    cr_assert_eq(te_stats(e).read_locked_count, 0, "the first lookup's locks went with it");
    engine_destroy(e);
}

/* ------------------------------------------------------------ registration */

Test(engine, register_ed_answers_the_segment)
{
    struct engine *e = te_create(8 * MIB);
    struct engine_ed_register r = te_reg(42, 1, false);
    struct engine_ed_reply rep;
    cr_assert_eq(engine_register_ed(e, &r, &rep), 0);
    cr_assert_null(rep.error);
    cr_assert_str_eq(rep.shm_name, engine_shm_name(e));
    cr_assert_str_eq(rep.shm_name, seg_name);
    cr_assert_eq(rep.pool_size, 8 * MIB);
    engine_ed_reply_free(&rep);
    /* again: the same answer, still registered once */
    cr_assert_eq(engine_register_ed(e, &r, &rep), 0);
    cr_assert_null(rep.error);
    cr_assert_str_eq(rep.shm_name, seg_name);
    engine_ed_reply_free(&rep);
    json_t *st = engine_status_json(e);
    cr_assert_eq(json_array_size(json_object_get(st, "engine_driven_instances")), 1);
    json_decref(st);
    engine_destroy(e);
}

static void expect_refused(struct engine *e, struct engine_ed_register *r, const char *word)
{
    struct engine_ed_reply rep;
    cr_assert_eq(engine_register_ed(e, r, &rep), 0);
    cr_assert_not_null(rep.error, "expected a refusal mentioning %s", word);
    cr_assert(strstr(rep.error, word), "error '%s' should mention %s", rep.error, word);
    /* never the empty answer that means pickle mode */
    cr_assert_not_null(rep.shm_name);
    cr_assert_str_eq(rep.shm_name, seg_name);
    cr_assert_gt(rep.pool_size, 0);
    engine_ed_reply_free(&rep);
}

Test(engine, register_ed_refuses_what_it_cannot_serve)
{
    struct engine *e = te_create(8 * MIB);
    struct engine_ed_register r = te_reg(1, 1, false);
    r.dtype = "torch.bfloat16";
    r.dtype_len = strlen(r.dtype);
    expect_refused(e, &r, "dtype");
    r = te_reg(1, 1, false);
    r.dtype = "complex64";
    r.dtype_len = strlen(r.dtype);
    expect_refused(e, &r, "dtype");
    r = te_reg(1, 1, false);
    r.multi_group = true;
    expect_refused(e, &r, "multi-group");
    r = te_reg(1, 1, false);
    r.block_size = 5; /* 16 % 5 != 0 */
    expect_refused(e, &r, "block_size");
    r = te_reg(1, 1, false);
    r.block_size = 0;
    expect_refused(e, &r, "block_size");
    r = te_reg(1, 1, false);
    r.num_physical_slots = 2 * CHUNK;
    expect_refused(e, &r, "num_physical_slots");
    r = te_reg(1, 1, false);
    r.world_size = 0;
    expect_refused(e, &r, "world_size");
    r = te_reg(1, 1, false);
    r.model_name = "m@x";
    r.model_name_len = 3;
    expect_refused(e, &r, "model_name");
    /* nothing refused was registered: a store from it is unknown */
    uint32_t tok[CHUNK];
    te_tokens(tok, CHUNK, 1);
    struct engine_key k = te_key(tok, CHUNK, "r", 1, 0, 0, 1);
    struct engine_slots s;
    cr_assert_eq(engine_prepare_store(e, &k, 1, &s), -ENOENT);
    cr_assert_eq(s.n, 0);
    /* a smaller block that divides the chunk, and no num_physical_slots, are fine */
    r = te_reg(2, 1, false);
    r.block_size = 4;
    r.has_num_physical_slots = false;
    struct engine_ed_reply rep;
    cr_assert_eq(engine_register_ed(e, &r, &rep), 0);
    cr_assert_null(rep.error);
    engine_ed_reply_free(&rep);
    engine_destroy(e);
}

/* ------------------------------------------------------------ engine-driven path */

Test(engine, ed_store_then_retrieve_same_bytes_in_chunk_order)
{
    struct engine *e = te_create(8 * MIB);
    te_register(e, 1, 1, false);
    uint32_t tok[4 * CHUNK];
    te_tokens(tok, 4 * CHUNK, 11);
    /* store [1, 4): chunk_indices count from start */
    struct engine_key k = te_key(tok, 4 * CHUNK, "r", 1, 0, 1, 4);
    struct engine_slots s;
    cr_assert_eq(engine_prepare_store(e, &k, 1, &s), 0);
    cr_assert_eq(s.n, 3);
    uint64_t pool = l1_pool_size(e->l1);
    for (size_t i = 0; i < s.n; i++) {
        cr_assert_eq(s.chunk_indices[i], (int64_t)i);
        cr_assert_eq(s.slots[i].length, OBJ_BYTES);
        cr_assert_leq(s.slots[i].offset + s.slots[i].length, pool);
        cr_assert_eq(s.slots[i].offset % 4096, 0);
        cr_assert_eq(s.slots[i].ndim, 4);
        cr_assert_eq(s.slots[i].shape[0], 2);
        cr_assert_eq(s.slots[i].shape[1], LAYERS);
        cr_assert_eq(s.slots[i].shape[2], CHUNK);
        cr_assert_eq(s.slots[i].shape[3], HIDDEN);
        cr_assert_str_eq(s.slots[i].dtype, "float16");
        for (size_t j = 0; j < i; j++)
            cr_assert(s.slots[j].offset + OBJ_BYTES <= s.slots[i].offset ||
                      s.slots[i].offset + OBJ_BYTES <= s.slots[j].offset, "slots overlap");
    }
    uint8_t *base = l1_base(e->l1);
    for (size_t i = 0; i < s.n; i++)
        for (size_t b = 0; b < OBJ_BYTES; b++)
            base[s.slots[i].offset + b] = te_pat(11, 1 + i, 0, b);

    /* reservations are invisible until COMMIT_STORE */
    cr_assert_eq(te_stats(e).write_locked_count, 3);
    cr_assert_not(te_present(e, 11, 1, 1, 0));
    struct engine_slots rs;
    cr_assert_eq(engine_prepare_retrieve(e, &k, 1, &rs), -ENOENT);
    cr_assert_eq(rs.n, 0);
    cr_assert_eq(engine_commit_retrieve(e, &k, 1), 0);

    cr_assert_eq(engine_commit_store(e, &k, 1, 0), 0);
    engine_slots_free(&s);
    cr_assert_eq(te_stats(e).write_locked_count, 0);
    cr_assert_eq(te_stats(e).total_object_count, 3);
    /* the scheduler needs chunk 0 too: prefix 0 */
    cr_assert_eq(te_lookup(e, "s0", 11, 4, 1, 1, 0), 0);
    te_store(e, 1, "w2", 11, 4 * CHUNK, 1, 0, 0, 1);
    cr_assert_eq(te_lookup(e, "s", 11, 4, 1, 1, 0), 4);

    cr_assert_eq(engine_prepare_retrieve(e, &k, 1, &rs), 0);
    cr_assert_eq(rs.n, 3);
    cr_assert_null(rs.chunk_indices);
    for (size_t i = 0; i < rs.n; i++) {
        cr_assert_eq(rs.slots[i].length, OBJ_BYTES);
        for (size_t b = 0; b < OBJ_BYTES; b++)
            cr_assert_eq(base[rs.slots[i].offset + b], te_pat(11, 1 + i, 0, b), "chunk %zu byte %zu", i, b);
    }
    engine_slots_free(&rs);
    cr_assert_eq(engine_commit_retrieve(e, &k, 1), 0);
    cr_assert_eq(engine_end_session(e, "s", 1), 0);
    cr_assert_eq(engine_end_session(e, "s0", 2), 0);
    cr_assert_eq(te_stats(e).read_locked_count, 0, "nothing stays locked");
    engine_destroy(e);
}

Test(engine, prepare_store_all_cached_and_partly_cached)
{
    struct engine *e = te_create(8 * MIB);
    te_register(e, 1, 1, false);
    cr_assert_eq(te_store(e, 1, "w", 4, 4 * CHUNK, 1, 0, 0, 3), 3);
    uint32_t tok[5 * CHUNK];
    te_tokens(tok, 5 * CHUNK, 4);
    struct engine_key k = te_key(tok, 5 * CHUNK, "w", 1, 0, 0, 3);
    struct engine_slots s;
    cr_assert_eq(engine_prepare_store(e, &k, 1, &s), 0);
    cr_assert_eq(s.n, 0, "all cached");
    cr_assert_null(s.slots);
    k = te_key(tok, 5 * CHUNK, "w", 1, 0, 0, 5);
    cr_assert_eq(engine_prepare_store(e, &k, 1, &s), 0);
    cr_assert_eq(s.n, 2);
    cr_assert_eq(s.chunk_indices[0], 3);
    cr_assert_eq(s.chunk_indices[1], 4);
    engine_slots_free(&s);
    cr_assert_eq(engine_commit_store(e, &k, 1, 0), 0);
    cr_assert_eq(te_stats(e).total_object_count, 5);
    engine_destroy(e);
}

Test(engine, commit_store_without_reservation_is_enoent)
{
    struct engine *e = te_create(8 * MIB);
    te_register(e, 1, 1, false);
    uint32_t tok[2 * CHUNK];
    te_tokens(tok, 2 * CHUNK, 8);
    struct engine_key k = te_key(tok, 2 * CHUNK, "r", 1, 0, 0, 2);
    cr_assert_eq(engine_commit_store(e, &k, 1, 0), -ENOENT);
    cr_assert_eq(engine_commit_store(e, &k, 99, 0), -ENOENT, "unregistered instance");
    /* a reservation of instance 1 cannot be committed by instance 2 */
    te_register(e, 2, 1, false);
    struct engine_slots s;
    cr_assert_eq(engine_prepare_store(e, &k, 1, &s), 0);
    cr_assert_eq(s.n, 2);
    engine_slots_free(&s);
    cr_assert_eq(engine_commit_store(e, &k, 2, 0), -ENOENT);
    cr_assert_eq(te_stats(e).total_object_count - te_stats(e).write_locked_count, 0, "nothing published");
    cr_assert_eq(engine_commit_store(e, &k, 1, 0), 0);
    cr_assert_eq(engine_commit_store(e, &k, 1, 0), -ENOENT, "committed once");
    engine_destroy(e);
}

Test(engine, pickle_commit_is_refused_and_publishes_nothing)
{
    struct engine *e = te_create(8 * MIB);
    te_register(e, 1, 1, false);
    uint32_t tok[2 * CHUNK];
    te_tokens(tok, 2 * CHUNK, 2);
    struct engine_key k = te_key(tok, 2 * CHUNK, "r", 1, 0, 0, 2);
    struct engine_slots s;
    cr_assert_eq(engine_prepare_store(e, &k, 1, &s), 0);
    cr_assert_eq(s.n, 2);
    engine_slots_free(&s);
    cr_assert_eq(engine_commit_store(e, &k, 1, 100), -ENOTSUP);
    struct l1_stats st = te_stats(e);
    cr_assert_eq(st.total_object_count, 0);
    cr_assert_eq(st.write_locked_count, 0);
    cr_assert_eq(te_lookup(e, "s", 2, 2, 1, 1, 0), 0);
    /* the keys are free again, not stuck behind a dead reservation */
    cr_assert_eq(engine_prepare_store(e, &k, 1, &s), 0);
    cr_assert_eq(s.n, 2);
    engine_slots_free(&s);
    engine_destroy(e);
}

Test(engine, prepare_retrieve_partial_miss_locks_nothing)
{
    struct engine *e = te_create(8 * MIB);
    te_register(e, 1, 1, false);
    te_store(e, 1, "w", 6, 3 * CHUNK, 1, 0, 0, 2);
    uint32_t tok[3 * CHUNK];
    te_tokens(tok, 3 * CHUNK, 6);
    struct engine_key k = te_key(tok, 3 * CHUNK, "r", 1, 0, 0, 3);
    struct engine_slots s;
    cr_assert_eq(engine_prepare_retrieve(e, &k, 1, &s), -ENOENT);
    cr_assert_eq(s.n, 0);
    cr_assert_eq(te_stats(e).read_locked_count, 0);
    /* tokens shorter than the range: a miss, not a shorter answer */
    struct engine_key k2 = te_key(tok, 2 * CHUNK, "r2", 1, 0, 0, 3);
    cr_assert_eq(engine_prepare_retrieve(e, &k2, 1, &s), -ENOENT);
    /* shard 1 of world 2 is another object */
    struct engine_key k3 = te_key(tok, 3 * CHUNK, "r3", 2, 1, 0, 2);
    cr_assert_eq(engine_prepare_retrieve(e, &k3, 1, &s), -ENOENT);
    cr_assert_eq(te_stats(e).read_locked_count, 0);
    engine_destroy(e);
}

Test(engine, world_size_2_lookup_needs_every_shard)
{
    struct engine *e = te_create(16 * MIB);
    te_register(e, 10, 2, false);
    te_register(e, 11, 2, false);
    cr_assert_eq(te_store(e, 10, "w", 21, 4 * CHUNK, 2, 0, 0, 4), 4);
    cr_assert_eq(te_store(e, 11, "w", 21, 4 * CHUNK, 2, 1, 0, 2), 2);
    cr_assert_eq(te_lookup(e, "a", 21, 4, 2, 2, 0), 2, "chunks 2-3 miss shard 1");
    cr_assert_eq(te_stats(e).read_locked_count, 4, "partial chunk 2 was unlocked again");
    cr_assert_eq(engine_end_session(e, "a", 1), 0);
    cr_assert_eq(te_store(e, 11, "w", 21, 4 * CHUNK, 2, 1, 2, 4), 2);
    cr_assert_eq(te_lookup(e, "b", 21, 4, 2, 2, 0), 4);
    cr_assert_eq(te_stats(e).read_locked_count, 8);
    /* the same tokens under world_size 1 are other objects */
    cr_assert_eq(te_lookup(e, "c", 21, 4, 1, 1, 0), 0);
    engine_end_session(e, "b", 1);
    engine_end_session(e, "c", 1);
    /* a chunk missing shard 0 is no hit either */
    cr_assert_eq(te_store(e, 11, "w", 22, 2 * CHUNK, 2, 1, 0, 2), 2);
    cr_assert_eq(te_lookup(e, "d", 22, 2, 2, 2, 0), 0);
    cr_assert_eq(te_stats(e).read_locked_count, 0);
    engine_destroy(e);
}

Test(engine, world_size_4_each_worker_retrieves_its_own_shard)
{
    struct engine *e = te_create(32 * MIB);
    for (int w = 0; w < 4; w++) {
        te_register(e, 100 + w, 4, false);
        cr_assert_eq(te_store(e, 100 + w, "w", 31, 3 * CHUNK, 4, w, 0, 3), 3);
    }
    cr_assert_eq(te_lookup(e, "r", 31, 3, 4, 4, 0), 3);
    uint32_t tok[3 * CHUNK];
    te_tokens(tok, 3 * CHUNK, 31);
    uint8_t *base = l1_base(e->l1);
    for (int w = 0; w < 4; w++) {
        struct engine_key k = te_key(tok, 3 * CHUNK, "r", 4, w, 0, 3);
        struct engine_slots s;
        cr_assert_eq(engine_prepare_retrieve(e, &k, 100 + w, &s), 0);
        cr_assert_eq(s.n, 3);
        for (size_t i = 0; i < 3; i++)
            for (size_t b = 0; b < OBJ_BYTES; b += 97)
                cr_assert_eq(base[s.slots[i].offset + b], te_pat(31, i, w, b));
        engine_slots_free(&s);
        cr_assert_eq(engine_commit_retrieve(e, &k, 100 + w), 0);
    }
    /* each worker's COMMIT_RETRIEVE gave back its shard's lookup lock */
    cr_assert_eq(te_stats(e).read_locked_count, 0);
    engine_destroy(e);
}

/* The scheduler ends the session (abort) while a worker is mid-retrieve:
 * the worker's COMMIT_RETRIEVE must still release its transfer locks. */
Test(engine, commit_retrieve_after_end_session_releases_transfer_locks)
{
    struct engine_opts o;
    te_opts(&o, 8 * MIB);
    o.l1_read_ttl_s = 100000;
    struct engine *e = te_create_opts(&o);
    te_register(e, 1, 1, false);
    te_store(e, 1, "w", 1, 2 * CHUNK, 1, 0, 0, 2);
    cr_assert_eq(te_lookup(e, "r", 1, 2, 1, 1, 0), 2);
    uint32_t tok[2 * CHUNK];
    te_tokens(tok, 2 * CHUNK, 1);
    struct engine_key k = te_key(tok, 2 * CHUNK, "r", 1, 0, 0, 2);
    struct engine_slots s;
    cr_assert_eq(engine_prepare_retrieve(e, &k, 1, &s), 0);
    engine_slots_free(&s);
    cr_assert_eq(engine_end_session(e, "r", 1), 0);
    cr_assert_eq(engine_commit_retrieve(e, &k, 1), 0);
    cr_assert_eq(te_stats(e).read_locked_count, 0, "transfer locks leaked until the read TTL");
    engine_destroy(e);
}

/* ------------------------------------------------------------ readers (MLA) */

/* n MLA readers (instances 200..) each retrieve [0, chunks) of seed. */
static void mla_read(struct engine *e, const char *rid, uint32_t seed, size_t chunks, int reader)
{
    uint32_t tok[8 * CHUNK];
    te_tokens(tok, chunks * CHUNK, seed);
    struct engine_key k = te_key(tok, chunks * CHUNK, rid, 1, 0, 0, chunks);
    struct engine_slots s;
    cr_assert_eq(engine_prepare_retrieve(e, &k, 200 + reader, &s), 0);
    cr_assert_eq(s.n, chunks);
    cr_assert_eq(s.slots[0].length, MLA_BYTES);
    cr_assert_eq(s.slots[0].ndim, 3);
    engine_slots_free(&s);
    cr_assert_eq(engine_commit_retrieve(e, &k, 200 + reader), 0);
}

Test(engine, mla_lookup_locks_one_holder_per_reader)
{
    struct engine *e = te_create(8 * MIB);
    for (int r = 0; r < 4; r++)
        te_register(e, 200 + r, 1, true);
    cr_assert_eq(te_store(e, 200, "w", 41, 2 * CHUNK, 1, 0, 0, 2), 2);
    /* world 1, tp 4: every TP rank reads the same objects -> 4 readers */
    cr_assert_eq(te_lookup(e, "r", 41, 2, 1, 4, 0), 2);
    for (int r = 0; r < 3; r++) {
        mla_read(e, "r", 41, 2, r);
        cr_assert_eq(te_stats(e).read_locked_count, 2, "after %d of 4 readers", r + 1);
        cr_assert_eq(engine_clear(e, false), 0);
        cr_assert(te_present(e, 41, 0, 1, 0), "locked objects survive CLEAR");
    }
    mla_read(e, "r", 41, 2, 3);
    cr_assert_eq(te_stats(e).read_locked_count, 0, "the 4th reader released the last holder");
    cr_assert_eq(engine_clear(e, false), 0);
    cr_assert_not(te_present(e, 41, 0, 1, 0), "evictable once every reader is done");
    engine_destroy(e);
}

Test(engine, num_kv_readers_wins_over_tp_size)
{
    struct engine *e = te_create(8 * MIB);
    for (int r = 0; r < 4; r++)
        te_register(e, 200 + r, 1, true);
    te_store(e, 200, "w", 42, 2 * CHUNK, 1, 0, 0, 2);
    cr_assert_eq(te_lookup(e, "r", 42, 2, 1, 4, 2), 2); /* tp 4 but 2 readers */
    mla_read(e, "r", 42, 2, 0);
    cr_assert_eq(te_stats(e).read_locked_count, 2);
    mla_read(e, "r", 42, 2, 1);
    cr_assert_eq(te_stats(e).read_locked_count, 0);
    /* head-sharded (tp == world): one reader per object */
    cr_assert_eq(te_lookup(e, "q", 42, 2, 1, 1, 0), 2);
    mla_read(e, "q", 42, 2, 0);
    cr_assert_eq(te_stats(e).read_locked_count, 0);
    engine_destroy(e);
}

Test(engine, tp_above_world_size_locks_tp_readers)
{
    struct engine *e = te_create(16 * MIB);
    te_register(e, 1, 2, false);
    te_register(e, 2, 2, false);
    te_store(e, 1, "w", 43, CHUNK, 2, 0, 0, 1);
    te_store(e, 2, "w", 43, CHUNK, 2, 1, 0, 1);
    cr_assert_eq(te_lookup(e, "r", 43, 1, 2, 4, 0), 1); /* tp 4 > world 2 -> 4 readers */
    uint32_t tok[CHUNK];
    te_tokens(tok, CHUNK, 43);
    for (int round = 0; round < 4; round++) {
        cr_assert_eq(te_stats(e).read_locked_count, 2, "round %d", round);
        for (int w = 0; w < 2; w++) {
            struct engine_key k = te_key(tok, CHUNK, "r", 2, w, 0, 1);
            cr_assert_eq(engine_commit_retrieve(e, &k, 1 + w), 0);
        }
    }
    cr_assert_eq(te_stats(e).read_locked_count, 0);
    engine_destroy(e);
}

/* ------------------------------------------------------------ FREE_LOOKUP_LOCKS / END_SESSION */

Test(engine, free_lookup_locks_releases_only_that_requests_locks)
{
    struct engine *e = te_create(8 * MIB);
    te_register(e, 1, 1, false);
    te_store(e, 1, "w", 51, 3 * CHUNK, 1, 0, 0, 3);
    cr_assert_eq(te_lookup(e, "r1", 51, 3, 1, 1, 0), 3);
    cr_assert_eq(te_lookup(e, "r2", 51, 3, 1, 1, 0), 3);
    uint32_t tok[3 * CHUNK];
    te_tokens(tok, 3 * CHUNK, 51);
    struct engine_key k1 = te_key(tok, 3 * CHUNK, "r1", 1, -1, 0, 1);
    cr_assert_eq(engine_free_lookup_locks(e, &k1, 1), 0);
    cr_assert_eq(te_stats(e).read_locked_count, 3, "r2 still holds chunk 0");
    k1 = te_key(tok, 3 * CHUNK, "r1", 1, -1, 0, 3);
    for (int i = 0; i < 3; i++) /* repeated frees never eat r2's holders */
        cr_assert_eq(engine_free_lookup_locks(e, &k1, 1), 0);
    cr_assert_eq(te_stats(e).read_locked_count, 3);
    cr_assert_eq(engine_clear(e, false), 0);
    cr_assert_eq(te_stats(e).total_object_count, 3, "r2's locks keep every object");
    /* unknown request: nothing happens */
    struct engine_key kx = te_key(tok, 3 * CHUNK, "rx", 1, -1, 0, 3);
    cr_assert_eq(engine_free_lookup_locks(e, &kx, 1), 0);
    cr_assert_eq(te_stats(e).read_locked_count, 3);
    struct engine_key k2 = te_key(tok, 3 * CHUNK, "r2", 1, -1, 1, 3);
    cr_assert_eq(engine_free_lookup_locks(e, &k2, 1), 0);
    cr_assert_eq(te_stats(e).read_locked_count, 1, "r2 keeps chunk 0 only");
    cr_assert_eq(engine_end_session(e, "r2", 2), 0);
    cr_assert_eq(te_stats(e).read_locked_count, 0);
    engine_destroy(e);
}

Test(engine, end_session_touches_lru_and_releases_locks)
{
    struct engine *e = te_create(8 * MIB);
    te_register(e, 1, 1, false);
    size_t cap = te_capacity(e);
    cr_assert_geq(cap, 8);
    /* oldest first: A (2 chunks), B (2 chunks), then filler up to capacity */
    cr_assert_eq(te_store(e, 1, "a", 61, 2 * CHUNK, 1, 0, 0, 2), 2);
    cr_assert_eq(te_store(e, 1, "b", 62, 2 * CHUNK, 1, 0, 0, 2), 2);
    cr_assert_eq(te_store(e, 1, "f", 63, (cap - 4) * CHUNK, 1, 0, 0, cap - 4), cap - 4);
    cr_assert_eq(te_stats(e).total_object_count, cap);
    cr_assert_eq(te_stats(e).evicted_count, 0);
    /* the scheduler looked A up; the request ends */
    cr_assert_eq(te_lookup(e, "ra", 61, 2, 1, 1, 0), 2);
    cr_assert_eq(te_stats(e).read_locked_count, 2);
    cr_assert_eq(engine_end_session(e, "ra", 2), 0);
    cr_assert_eq(te_stats(e).read_locked_count, 0);
    cr_assert_eq(engine_end_session(e, "ra", 2), -ENOENT, "gone");
    /* two new chunks need room: B, now least recent, goes first */
    cr_assert_eq(te_store(e, 1, "n", 64, 2 * CHUNK, 1, 0, 0, 2), 2);
    cr_assert_eq(te_stats(e).demand_evicted_count, 2);
    cr_assert(te_present(e, 61, 0, 1, 0) && te_present(e, 61, 1, 1, 0), "A was touched");
    cr_assert(!te_present(e, 62, 0, 1, 0) && !te_present(e, 62, 1, 1, 0), "B was evicted");
    cr_assert(te_present(e, 63, 0, 1, 0), "the filler is newer than B");
    engine_destroy(e);
}

Test(engine, end_session_drops_the_job)
{
    struct engine *e = te_create(8 * MIB);
    uint32_t tok[2 * CHUNK];
    te_tokens(tok, 2 * CHUNK, 1);
    struct engine_key k = te_key(tok, 2 * CHUNK, "r", 1, -1, 0, 2);
    cr_assert_eq(engine_lookup(e, &k, 1), 0);
    cr_assert_eq(te_status_int(e, "active_sessions"), 1);
    cr_assert_eq(engine_end_session(e, "r", 1), 0);
    cr_assert_eq(te_status_int(e, "active_sessions"), 0);
    cr_assert_eq(te_status_int(e, "active_prefetch_jobs"), 0);
    engine_destroy(e);
}

/* ------------------------------------------------------------ CLEAR */

Test(engine, clear_keeps_locked_objects_unless_forced)
{
    struct engine *e = te_create(8 * MIB);
    te_register(e, 1, 1, false);
    te_store(e, 1, "w", 71, 2 * CHUNK, 1, 0, 0, 2);
    te_store(e, 1, "w2", 72, 2 * CHUNK, 1, 0, 0, 2);
    cr_assert_eq(te_lookup(e, "p", 71, 2, 1, 1, 0), 2);
    cr_assert_eq(engine_clear(e, false), 0);
    cr_assert(te_present(e, 71, 0, 1, 0) && te_present(e, 71, 1, 1, 0));
    cr_assert(!te_present(e, 72, 0, 1, 0) && !te_present(e, 72, 1, 1, 0));
    /* an open reservation survives a non-forced CLEAR too */
    uint32_t tok[CHUNK];
    te_tokens(tok, CHUNK, 73);
    struct engine_key k = te_key(tok, CHUNK, "w3", 1, 0, 0, 1);
    struct engine_slots s;
    cr_assert_eq(engine_prepare_store(e, &k, 1, &s), 0);
    cr_assert_eq(s.n, 1);
    engine_slots_free(&s);
    cr_assert_eq(engine_clear(e, false), 0);
    cr_assert_eq(engine_commit_store(e, &k, 1, 0), 0);
    cr_assert(te_present(e, 73, 0, 1, 0));

    /* a lookup job waiting to be queried, then a forced CLEAR */
    uint32_t t2[2 * CHUNK];
    te_tokens(t2, 2 * CHUNK, 71);
    struct engine_key lk = te_key(t2, 2 * CHUNK, "j", 1, -1, 0, 2);
    cr_assert_eq(engine_lookup(e, &lk, 1), 0);
    cr_assert_eq(engine_clear(e, true), 0);
    cr_assert_not(te_present(e, 71, 0, 1, 0));
    cr_assert_not(te_present(e, 73, 0, 1, 0));
    int64_t v = -1;
    cr_assert_eq(engine_query_prefetch_status(e, "j", 1, &v), 0);
    cr_assert_eq(v, 0, "the job was dropped with the objects it counted");
    struct l1_stats st = te_stats(e);
    cr_assert_eq(st.total_object_count, 0);
    cr_assert_gt(st.pending_free_count, 0, "locked memory waits for its holders");
    engine_end_session(e, "p", 1);
    engine_end_session(e, "j", 1);
    st = te_stats(e);
    cr_assert_eq(st.pending_free_count, 0);
    cr_assert_eq(st.memory_used_bytes, 0);
    engine_destroy(e);
}

/* ------------------------------------------------------------ UNREGISTER */

Test(engine, unregister_drops_reservations_and_transfer_locks)
{
    struct engine *e = te_create(8 * MIB);
    te_register(e, 1, 1, false);
    te_register(e, 2, 1, false);
    te_store(e, 2, "w", 81, 2 * CHUNK, 1, 0, 0, 2);
    uint32_t tok[4 * CHUNK];
    te_tokens(tok, 4 * CHUNK, 81);
    /* instance 1: a transfer lock on chunks 0-1 and reservations for 2-3 */
    struct engine_key kr = te_key(tok, 4 * CHUNK, "r", 1, 0, 0, 2);
    struct engine_slots s;
    cr_assert_eq(engine_prepare_retrieve(e, &kr, 1, &s), 0);
    engine_slots_free(&s);
    struct engine_key ks = te_key(tok, 4 * CHUNK, "r", 1, 0, 2, 4);
    cr_assert_eq(engine_prepare_store(e, &ks, 1, &s), 0);
    cr_assert_eq(s.n, 2);
    engine_slots_free(&s);
    struct l1_stats st = te_stats(e);
    cr_assert_eq(st.read_locked_count, 2);
    cr_assert_eq(st.write_locked_count, 2);

    cr_assert_eq(engine_unregister(e, 1), 0);
    st = te_stats(e);
    cr_assert_eq(st.read_locked_count, 0);
    cr_assert_eq(st.write_locked_count, 0);
    cr_assert_eq(st.total_object_count, 2);
    cr_assert_eq(engine_commit_store(e, &ks, 1, 0), -ENOENT);
    cr_assert_not(te_present(e, 81, 2, 1, 0), "never published");
    cr_assert_eq(engine_unregister(e, 1), 0, "unknown id is fine");
    /* another worker may now store those chunks */
    cr_assert_eq(te_store(e, 2, "w2", 81, 4 * CHUNK, 1, 0, 2, 4), 2);
    engine_destroy(e);
}

/* ------------------------------------------------------------ reaping and TTLs */

static bool instance_reaped(struct engine *e, int64_t id)
{
    json_t *st = engine_status_json(e);
    json_t *arr = json_object_get(st, "engine_driven_instances");
    bool reaped = false, found = false;
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *o = json_array_get(arr, i);
        if (json_integer_value(json_object_get(o, "instance_id")) == id) {
            found = true;
            reaped = json_is_true(json_object_get(o, "reaped"));
        }
    }
    json_decref(st);
    cr_assert(found, "instance %lld registered", (long long)id);
    return reaped;
}

Test(engine, silent_worker_is_reaped_after_the_timeout)
{
    struct engine_opts o;
    te_opts(&o, 8 * MIB);
    o.worker_reap_timeout_s = 5;
    struct engine *e = te_create_opts(&o);
    te_register(e, 1, 1, false);
    te_register(e, 2, 1, false);
    te_store(e, 2, "w", 91, CHUNK, 1, 0, 0, 1);
    uint32_t tok[2 * CHUNK];
    te_tokens(tok, 2 * CHUNK, 91);
    struct engine_key kr = te_key(tok, 2 * CHUNK, "r", 1, 0, 0, 1);
    struct engine_slots s;
    cr_assert_eq(engine_prepare_retrieve(e, &kr, 1, &s), 0);
    engine_slots_free(&s);
    struct engine_key ks = te_key(tok, 2 * CHUNK, "r", 1, 0, 1, 2);
    cr_assert_eq(engine_prepare_store(e, &ks, 1, &s), 0);
    cr_assert_eq(s.n, 1);
    engine_slots_free(&s);

    advance_s(4);
    engine_ping(e, true, 2); /* instance 2 keeps talking */
    engine_sweep(e);
    cr_assert_eq(te_stats(e).write_locked_count, 1, "not silent long enough");
    cr_assert_not(instance_reaped(e, 1));
    advance_s(2);
    engine_sweep(e);
    struct l1_stats st = te_stats(e);
    cr_assert_eq(st.write_locked_count, 0);
    cr_assert_eq(st.read_locked_count, 0);
    cr_assert(instance_reaped(e, 1));
    cr_assert_not(instance_reaped(e, 2));
    cr_assert_eq(te_status_int(e, "counters.reaped_workers"), 1);
    cr_assert_eq(engine_commit_store(e, &ks, 1, 0), -ENOENT);
    cr_assert_not(te_present(e, 91, 1, 1, 0));
    /* it comes back: the registration is still there */
    engine_ping(e, true, 1);
    cr_assert_not(instance_reaped(e, 1));
    cr_assert_eq(te_store(e, 1, "w3", 91, 2 * CHUNK, 1, 0, 1, 2), 1);
    engine_destroy(e);
}

Test(engine, registered_but_idle_worker_gets_the_longer_grace)
{
    struct engine_opts o;
    te_opts(&o, 8 * MIB);
    o.worker_reap_timeout_s = 5;
    struct engine *e = te_create_opts(&o);
    te_register(e, 1, 1, false);
    advance_s(60);
    engine_sweep(e);
    cr_assert_not(instance_reaped(e, 1), "a new worker that never spoke is idle, not dead");
    cr_assert_eq(te_status_int(e, "counters.reaped_workers"), 0);
    advance_s(3600);
    engine_sweep(e);
    cr_assert(instance_reaped(e, 1));
    cr_assert_eq(te_status_int(e, "counters.reaped_workers"), 1);
    engine_destroy(e);
}

Test(engine, reap_timeout_zero_never_reaps)
{
    struct engine_opts o;
    te_opts(&o, 8 * MIB);
    o.worker_reap_timeout_s = 0;
    o.l1_write_ttl_s = 100000;
    struct engine *e = te_create_opts(&o);
    te_register(e, 1, 1, false);
    cr_assert_eq(te_reserve(e, 1, "r", 3, CHUNK, 1, 0, 0, 1), 1);
    advance_s(10000);
    engine_sweep(e);
    cr_assert_eq(te_stats(e).write_locked_count, 1);
    cr_assert_not(instance_reaped(e, 1));
    engine_destroy(e);
}

Test(engine, session_ttl_releases_lookup_locks)
{
    struct engine_opts o;
    te_opts(&o, 8 * MIB);
    o.session_ttl_s = 60;
    o.l1_read_ttl_s = 100000; /* the session TTL, not the lock TTL, must do it */
    struct engine *e = te_create_opts(&o);
    te_register(e, 1, 1, false);
    te_store(e, 1, "w", 101, 2 * CHUNK, 1, 0, 0, 2);
    engine_end_session(e, "w", 1);
    cr_assert_eq(te_lookup(e, "r", 101, 2, 1, 1, 0), 2);
    cr_assert_eq(te_status_int(e, "active_sessions"), 1);
    advance_s(30);
    engine_sweep(e);
    cr_assert_eq(te_stats(e).read_locked_count, 2);
    advance_s(31);
    engine_sweep(e);
    cr_assert_eq(te_stats(e).read_locked_count, 0);
    cr_assert_eq(te_status_int(e, "active_sessions"), 0);
    cr_assert_eq(te_status_int(e, "counters.expired_sessions"), 1);
    engine_destroy(e);
}

Test(engine, read_ttl_expires_a_forgotten_lookup_lock)
{
    struct engine_opts o;
    te_opts(&o, 8 * MIB);
    o.l1_read_ttl_s = 10;
    struct engine *e = te_create_opts(&o);
    te_register(e, 1, 1, false);
    te_store(e, 1, "w", 102, 2 * CHUNK, 1, 0, 0, 2);
    cr_assert_eq(te_lookup(e, "r", 102, 2, 1, 1, 0), 2);
    cr_assert_eq(te_stats(e).read_locked_count, 2);
    advance_s(11);
    cr_assert_eq(te_stats(e).read_locked_count, 0);
    cr_assert_eq(engine_clear(e, false), 0);
    cr_assert_eq(te_stats(e).total_object_count, 0, "expired locks do not pin memory");
    /* the late END_SESSION releases nothing it does not own */
    cr_assert_eq(engine_end_session(e, "r", 1), 0);
    engine_destroy(e);
}

Test(engine, write_ttl_expires_an_abandoned_reservation)
{
    struct engine_opts o;
    te_opts(&o, 8 * MIB);
    o.l1_write_ttl_s = 10;
    o.worker_reap_timeout_s = 0;
    struct engine *e = te_create_opts(&o);
    te_register(e, 1, 1, false);
    cr_assert_eq(te_reserve(e, 1, "r", 103, CHUNK, 1, 0, 0, 1), 1);
    uint32_t tok[CHUNK];
    te_tokens(tok, CHUNK, 103);
    struct engine_key k = te_key(tok, CHUNK, "r", 1, 0, 0, 1);
    advance_s(11);
    cr_assert_eq(te_stats(e).write_locked_count, 0);
    cr_assert_eq(engine_commit_store(e, &k, 1, 0), -ENOENT, "an expired reservation is never published");
    cr_assert_not(te_present(e, 103, 0, 1, 0));
    engine_destroy(e);
}

/* ------------------------------------------------------------ inline path */

static void fill_chunks(uint8_t (*buf)[1000], struct iovec *iov, size_t n, uint32_t seed, size_t c0)
{
    for (size_t i = 0; i < n; i++) {
        for (size_t b = 0; b < 1000; b++)
            buf[i][b] = te_pat(seed, c0 + i, 0, b);
        iov[i] = (struct iovec){ buf[i], 1000 };
    }
}

Test(engine, inline_round_trip_and_prefix)
{
    struct engine *e = te_create(8 * MIB);
    uint32_t tok[4 * CHUNK];
    te_tokens(tok, 4 * CHUNK, 111);
    static uint8_t buf[4][1000];
    struct iovec iov[4];
    fill_chunks(buf, iov, 2, 111, 0);
    struct engine_key k = te_key(tok, 4 * CHUNK, "r", 1, 0, 0, 2);
    int64_t present = -1;
    cr_assert_eq(engine_store_inline(e, &k, iov, 2, &present), 0);
    cr_assert_eq(present, 2);
    /* chunk 3 without chunk 2: not part of the prefix */
    fill_chunks(buf, iov, 1, 111, 3);
    k = te_key(tok, 4 * CHUNK, "r", 1, 0, 3, 4);
    cr_assert_eq(engine_store_inline(e, &k, iov, 1, &present), 0);
    cr_assert_eq(present, 1);

    k = te_key(tok, 4 * CHUNK, "r", 1, 0, 0, 4);
    struct engine_inline_read rd;
    cr_assert_eq(engine_retrieve_inline(e, &k, &rd), 0);
    cr_assert_eq(rd.n, 2);
    for (size_t i = 0; i < rd.n; i++) {
        cr_assert_eq(rd.chunks[i].iov_len, 1000);
        for (size_t b = 0; b < 1000; b++)
            cr_assert_eq(((uint8_t *)rd.chunks[i].iov_base)[b], te_pat(111, i, 0, b));
    }
    cr_assert_eq(te_stats(e).pinned_count, 2, "pinned (no TTL) while the frames are out");
    engine_inline_release(e, &rd);
    cr_assert_eq(te_stats(e).pinned_count, 0);

    /* storing again reports them present without a second copy */
    fill_chunks(buf, iov, 2, 111, 0);
    k = te_key(tok, 4 * CHUNK, "r", 1, 0, 0, 2);
    cr_assert_eq(engine_store_inline(e, &k, iov, 2, &present), 0);
    cr_assert_eq(present, 2);
    cr_assert_eq(te_stats(e).total_object_count, 3);

    /* the scheduler sees the 2-chunk prefix */
    cr_assert_eq(te_lookup(e, "s", 111, 4, 1, 1, 0), 2);
    /* a retrieve from the middle starts at start */
    k = te_key(tok, 4 * CHUNK, "r", 1, 0, 3, 4);
    cr_assert_eq(engine_retrieve_inline(e, &k, &rd), 0);
    cr_assert_eq(rd.n, 1);
    engine_inline_release(e, &rd);
    /* nothing cached for another seed */
    uint32_t t2[CHUNK];
    te_tokens(t2, CHUNK, 112);
    k = te_key(t2, CHUNK, "r2", 1, 0, 0, 1);
    cr_assert_eq(engine_retrieve_inline(e, &k, &rd), 0);
    cr_assert_eq(rd.n, 0);
    engine_inline_release(e, &rd);
    engine_destroy(e);
}

Test(engine, inline_fewer_frames_than_chunks_stores_what_came)
{
    struct engine *e = te_create(8 * MIB);
    uint32_t tok[3 * CHUNK];
    te_tokens(tok, 3 * CHUNK, 113);
    static uint8_t buf[3][1000];
    struct iovec iov[3];
    fill_chunks(buf, iov, 1, 113, 0);
    struct engine_key k = te_key(tok, 3 * CHUNK, "r", 1, 0, 0, 3);
    int64_t present = -1;
    cr_assert_eq(engine_store_inline(e, &k, iov, 1, &present), 0);
    cr_assert_eq(present, 1);
    cr_assert_eq(te_stats(e).total_object_count, 1);
    engine_destroy(e);
}

/* ------------------------------------------------------------ L1 full */

Test(engine, l1_full_and_all_locked_skips_what_does_not_fit)
{
    struct engine *e = te_create(8 * MIB);
    te_register(e, 1, 1, false);
    size_t cap = te_capacity(e);
    cr_assert_eq(te_store(e, 1, "f", 121, cap * CHUNK, 1, 0, 0, cap), cap);
    cr_assert_eq(te_lookup(e, "lock", 121, cap, 1, 1, 0), (int64_t)cap);
    uint32_t tok[3 * CHUNK];
    te_tokens(tok, 3 * CHUNK, 122);
    struct engine_key k = te_key(tok, 3 * CHUNK, "n", 1, 0, 0, 3);
    struct engine_slots s;
    cr_assert_eq(engine_prepare_store(e, &k, 1, &s), 0);
    cr_assert_eq(s.n, 0, "nothing fits, nothing evictable");
    struct l1_stats st = te_stats(e);
    cr_assert_eq(st.evicted_count, 0);
    cr_assert_eq(st.total_object_count, cap);
    cr_assert_geq(st.alloc_failures, 3);
    cr_assert_geq(te_status_int(e, "counters.store_skipped_chunks"), 3);
    cr_assert_leq(st.memory_used_bytes, st.memory_total_bytes);
    /* inline stores are skipped the same way */
    static uint8_t big[OBJ_BYTES];
    struct iovec iov[1] = { { big, sizeof(big) } };
    int64_t present = -1;
    cr_assert_eq(engine_store_inline(e, &k, iov, 1, &present), 0);
    cr_assert_eq(present, 0);

    /* the locks go: demand eviction makes room for all three */
    cr_assert_eq(engine_end_session(e, "lock", 4), 0);
    cr_assert_eq(engine_prepare_store(e, &k, 1, &s), 0);
    cr_assert_eq(s.n, 3);
    engine_slots_free(&s);
    cr_assert_eq(engine_commit_store(e, &k, 1, 0), 0);
    st = te_stats(e);
    cr_assert_eq(st.demand_evicted_count, 3);
    cr_assert_eq(st.total_object_count, cap);
    engine_destroy(e);
}

Test(engine, demand_eviction_takes_least_recent_unlocked_first)
{
    struct engine *e = te_create(8 * MIB);
    te_register(e, 1, 1, false);
    size_t cap = te_capacity(e);
    /* objects of seed 131 stored one request per chunk, oldest first */
    uint32_t tok[MAX_TOK];
    te_tokens(tok, cap * CHUNK, 131);
    for (size_t c = 0; c < cap; c++) {
        struct engine_key k = te_key(tok, cap * CHUNK, "f", 1, 0, c, c + 1);
        struct engine_slots s;
        cr_assert_eq(engine_prepare_store(e, &k, 1, &s), 0);
        cr_assert_eq(s.n, 1);
        engine_slots_free(&s);
        cr_assert_eq(engine_commit_store(e, &k, 1, 0), 0);
    }
    /* lock chunk 0 (the oldest): it must survive */
    cr_assert_eq(te_lookup(e, "l", 131, 1, 1, 1, 0), 1);
    cr_assert_eq(te_store(e, 1, "n", 132, 2 * CHUNK, 1, 0, 0, 2), 2);
    cr_assert(te_present(e, 131, 0, 1, 0), "locked");
    cr_assert_not(te_present(e, 131, 1, 1, 0));
    cr_assert_not(te_present(e, 131, 2, 1, 0));
    cr_assert(te_present(e, 131, 3, 1, 0));
    cr_assert_eq(te_stats(e).demand_evicted_count, 2);
    engine_destroy(e);
}

Test(engine, status_json_has_the_l1_block)
{
    struct engine *e = te_create(8 * MIB);
    te_register(e, 1, 1, false);
    te_store(e, 1, "w", 141, 2 * CHUNK, 1, 0, 0, 2);
    cr_assert_eq(te_status_int(e, "storage_manager.l1_manager.total_object_count"), 2);
    cr_assert_eq(te_status_int(e, "storage_manager.l1_manager.memory_used_bytes"), 2 * OBJ_BYTES);
    cr_assert_eq(te_status_int(e, "storage_manager.l1_manager.pool_size"), 8 * MIB);
    cr_assert_eq(te_status_int(e, "chunk_size"), CHUNK);
    cr_assert_eq(te_status_int(e, "counters.stored_chunks"), 2);
    engine_destroy(e);
}

/* ------------------------------------------------------------ threads */

struct stress_arg {
    struct engine *e;
    int id;
    int stored;
};

/* One worker's loop: store, look up, retrieve, free, end; every 16th round
 * a CLEAR. Bounded in rounds; checks every retrieved byte it wrote itself. */
static void *stress_main(void *p)
{
    struct stress_arg *a = p;
    struct engine *e = a->e;
    uint32_t tok[4 * CHUNK];
    char rid[32];
    uint8_t *base = l1_base(e->l1);
    for (int round = 0; round < 150; round++) {
        uint32_t seed = 1000u + (uint32_t)(round % 8) * 10u + (uint32_t)a->id;
        te_tokens(tok, 4 * CHUNK, seed);
        snprintf(rid, sizeof(rid), "t%d-%d", a->id, round);
        struct engine_key ks = te_key(tok, 4 * CHUNK, rid, 1, 0, 0, 4);
        struct engine_slots s;
        if (engine_prepare_store(e, &ks, 300 + a->id, &s) == 0 && s.n) {
            for (size_t i = 0; i < s.n; i++)
                memset(base + s.slots[i].offset, (int)(seed + (uint32_t)s.chunk_indices[i]) & 0xff, s.slots[i].length);
            if (engine_commit_store(e, &ks, 300 + a->id, 0) == 0)
                a->stored++;
        }
        engine_slots_free(&s);
        struct engine_key kl = te_key(tok, 4 * CHUNK, rid, 1, -1, 0, 4);
        engine_lookup(e, &kl, 1);
        int64_t hits = 0;
        engine_query_prefetch_status(e, rid, strlen(rid), &hits);
        if (hits > 0) {
            struct engine_key kr = te_key(tok, 4 * CHUNK, rid, 1, 0, 0, (size_t)hits);
            if (engine_prepare_retrieve(e, &kr, 300 + a->id, &s) == 0) {
                for (size_t i = 0; i < s.n; i++)
                    if (base[s.slots[i].offset + 7] != ((seed + i) & 0xff))
                        return (void *)1;
            }
            engine_slots_free(&s);
            engine_commit_retrieve(e, &kr, 300 + a->id);
        }
        engine_free_lookup_locks(e, &kl, 1);
        if (round % 16 == 15)
            engine_clear(e, round % 32 == 31);
        engine_end_session(e, rid, strlen(rid));
    }
    return NULL;
}

Test(engine, threads_store_lookup_retrieve_and_clear_at_once)
{
    struct engine *e = te_create(4 * MIB); /* small: eviction under load */
    enum { N = 4 };
    struct stress_arg a[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        te_register(e, 300 + i, 1, false);
        a[i] = (struct stress_arg){ e, i, 0 };
        cr_assert_eq(pthread_create(&th[i], NULL, stress_main, &a[i]), 0);
    }
    int stored = 0;
    for (int i = 0; i < N; i++) {
        void *rv;
        pthread_join(th[i], &rv);
        cr_assert_null(rv, "thread %d read bytes it did not write", i);
        stored += a[i].stored;
    }
    cr_assert_gt(stored, 0);
    struct l1_stats st = te_stats(e);
    cr_assert_eq(st.read_locked_count, 0, "every lock was given back");
    cr_assert_eq(st.write_locked_count, 0);
    cr_assert_eq(st.pending_free_count, 0);
    cr_assert_leq(st.memory_used_bytes, st.memory_total_bytes);
    cr_assert_eq(te_status_int(e, "active_sessions"), 0);
    engine_destroy(e);
}
