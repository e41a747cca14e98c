/*
 * The _nowait forms of the engine-driven ops (engine.h), which the server's
 * loop thread runs itself: same results as the plain forms when nothing has
 * to wait, and -EWOULDBLOCK with nothing changed when something would (a
 * session another thread holds, tmpfs pages not backed yet).
 */
#include "test_engine_util.h"

#define MIB (1024ull * 1024)

static struct engine *te_create_backed(uint64_t l1_bytes)
{
    struct engine_opts o;
    te_opts(&o, l1_bytes);
    o.l1_use_lazy = false; /* every page committed at start: nothing to back */
    return te_create_opts(&o);
}

Test(engine_nowait, same_results_as_the_plain_forms)
{
    struct engine *e = te_create_backed(8 * MIB);
    te_register(e, 1, 1, false);
    uint32_t tok[4 * CHUNK];
    te_tokens(tok, 4 * CHUNK, 21);
    struct engine_key k = te_key(tok, 4 * CHUNK, "r", 1, 0, 0, 4);
    struct engine_slots s;
    cr_assert_eq(engine_prepare_store_nowait(e, &k, 1, &s), 0);
    cr_assert_eq(s.n, 4);
    uint8_t *base = l1_base(e->l1);
    for (size_t i = 0; i < s.n; i++) {
        cr_assert_eq(s.chunk_indices[i], (int64_t)i);
        for (size_t b = 0; b < OBJ_BYTES; b++)
            base[s.slots[i].offset + b] = te_pat(21, i, 0, b);
    }
    engine_slots_free(&s);
    cr_assert_eq(te_stats(e).write_locked_count, 4);
    cr_assert_eq(engine_commit_store_nowait(e, &k, 1, 0), 0);
    cr_assert_eq(te_stats(e).write_locked_count, 0);
    cr_assert_eq(te_stats(e).total_object_count, 4);
    cr_assert_eq(engine_commit_store_nowait(e, &k, 1, 0), -ENOENT, "nothing pending any more");

    cr_assert_eq(engine_prepare_retrieve_nowait(e, &k, 1, &s), 0);
    cr_assert_eq(s.n, 4);
    for (size_t i = 0; i < s.n; i++)
        for (size_t b = 0; b < OBJ_BYTES; b++)
            cr_assert_eq(base[s.slots[i].offset + b], te_pat(21, i, 0, b), "chunk %zu byte %zu", i, b);
    engine_slots_free(&s);
    cr_assert_eq(te_stats(e).read_locked_count, 4);
    cr_assert_eq(engine_commit_retrieve_nowait(e, &k, 1), 0);
    cr_assert_eq(te_stats(e).read_locked_count, 0, "the transfer's locks are released");

    /* an unregistered instance: as the plain forms */
    cr_assert_eq(engine_prepare_store_nowait(e, &k, 9, &s), -ENOENT);
    cr_assert_eq(s.n, 0);
    cr_assert_eq(engine_prepare_retrieve_nowait(e, &k, 9, &s), -ENOENT);
    engine_destroy(e);
}

Test(engine_nowait, gives_way_to_a_session_another_thread_holds)
{
    struct engine *e = te_create_backed(8 * MIB);
    te_register(e, 1, 1, false);
    te_store(e, 1, "held", 22, 2 * CHUNK, 1, 0, 0, 2);
    uint32_t tok[4 * CHUNK];
    te_tokens(tok, 4 * CHUNK, 22);
    struct engine_key k = te_key(tok, 4 * CHUNK, "held", 1, 0, 0, 4);
    /* a LOOKUP hashing this request holds its session's mutex */
    struct session *held = session_get(e, "held", 4, SESSION_FIND);
    cr_assert_not_null(held);
    struct engine_slots s;
    cr_assert_eq(engine_prepare_store_nowait(e, &k, 1, &s), -EWOULDBLOCK);
    cr_assert_eq(s.n, 0);
    cr_assert_eq(engine_commit_store_nowait(e, &k, 1, 0), -EWOULDBLOCK);
    cr_assert_eq(engine_prepare_retrieve_nowait(e, &k, 1, &s), -EWOULDBLOCK);
    cr_assert_eq(engine_commit_retrieve_nowait(e, &k, 1), -EWOULDBLOCK);
    cr_assert_eq(te_stats(e).write_locked_count, 0, "nothing was reserved");
    cr_assert_eq(te_stats(e).read_locked_count, 0, "nothing was locked");
    cr_assert_eq(te_stats(e).total_object_count, 2);
    session_put(e, held);
    /* free again: the same call goes through */
    cr_assert_eq(engine_prepare_store_nowait(e, &k, 1, &s), 0);
    cr_assert_eq(s.n, 2, "chunks 2 and 3; 0 and 1 are cached");
    engine_slots_free(&s);
    cr_assert_eq(engine_commit_store_nowait(e, &k, 1, 0), 0);
    cr_assert_eq(te_stats(e).total_object_count, 4);
    engine_destroy(e);
}

Test(engine_nowait, prepare_store_gives_way_to_pages_not_backed)
{
    struct engine_opts o;
    te_opts(&o, 64 * MIB); /* lazy, nothing committed at start */
    struct engine *e = te_create_opts(&o);
    te_register(e, 1, 1, false);
    uint32_t tok[2 * CHUNK];
    te_tokens(tok, 2 * CHUNK, 23);
    struct engine_key k = te_key(tok, 2 * CHUNK, "fresh", 1, 0, 0, 2);
    struct engine_slots s;
    cr_assert_eq(engine_prepare_store_nowait(e, &k, 1, &s), -EWOULDBLOCK, "fresh pages need a fallocate");
    cr_assert_eq(s.n, 0);
    cr_assert_null(s.slots);
    cr_assert_eq(te_stats(e).write_locked_count, 0, "the reservations were given back");
    cr_assert_eq(te_stats(e).total_object_count, 0);
    cr_assert_eq(engine_commit_store(e, &k, 1, 0), -ENOENT, "nothing pending");
    /* the plain form backs them and hands them out */
    cr_assert_eq(te_store(e, 1, "fresh", 23, 2 * CHUNK, 1, 0, 0, 2), 2);
    cr_assert_eq(te_stats(e).total_object_count, 2);
    engine_destroy(e);
}

Test(engine_nowait, gives_way_to_an_instance_another_thread_holds)
{
    struct engine *e = te_create_backed(8 * MIB);
    te_register(e, 1, 1, false);
    te_store(e, 1, "st", 24, 2 * CHUNK, 1, 0, 0, 2);
    cr_assert_eq(te_lookup(e, "rd", 24, 2, 1, 1, 1), 2);
    cr_assert_eq(te_stats(e).read_locked_count, 2, "the LOOKUP's locks");
    uint32_t tok[2 * CHUNK];
    te_tokens(tok, 2 * CHUNK, 24);
    struct engine_key k = te_key(tok, 2 * CHUNK, "rd", 1, 0, 0, 2);
    struct engine_slots s;
    cr_assert_eq(engine_prepare_retrieve_nowait(e, &k, 1, &s), 0);
    cr_assert_eq(s.n, 2);
    engine_slots_free(&s);
    /* another thread (a PREPARE_STORE of the same instance id backing fresh
     * pages in the pool) holds the instance */
    struct instance *held = instance_get(e, 1);
    cr_assert_not_null(held);
    long long locked = (long long)te_stats(e).read_locked_count;
    cr_assert_eq(engine_commit_retrieve_nowait(e, &k, 1), -EWOULDBLOCK);
    cr_assert_eq((long long)te_stats(e).read_locked_count, locked,
                 "neither the LOOKUP's locks nor the transfer's were given back");
    cr_assert_eq(engine_prepare_retrieve_nowait(e, &k, 1, &s), -EWOULDBLOCK);
    cr_assert_eq(s.n, 0);
    uint32_t tok2[CHUNK];
    te_tokens(tok2, CHUNK, 25);
    struct engine_key k2 = te_key(tok2, CHUNK, "st2", 1, 0, 0, 1);
    cr_assert_eq(engine_prepare_store_nowait(e, &k2, 1, &s), -EWOULDBLOCK);
    cr_assert_eq(engine_commit_store_nowait(e, &k2, 1, 0), -EWOULDBLOCK);
    cr_assert_eq(te_stats(e).write_locked_count, 0, "nothing was reserved");
    cr_assert_eq((long long)te_stats(e).read_locked_count, locked);
    instance_put(e, held);
    /* free again: the plain result, every lock given back once */
    cr_assert_eq(engine_commit_retrieve_nowait(e, &k, 1), 0);
    cr_assert_eq(te_stats(e).read_locked_count, 0, "the LOOKUP's and the transfer's locks are released");
    cr_assert_eq(engine_prepare_store_nowait(e, &k2, 1, &s), 0);
    cr_assert_eq(s.n, 1);
    engine_slots_free(&s);
    cr_assert_eq(engine_commit_store_nowait(e, &k2, 1, 0), 0);
    cr_assert_eq(te_stats(e).total_object_count, 3);
    engine_destroy(e);
}
