/*
 * The engine's bounds (issue 11, items 9 and 11), on the injected clock: no
 * test sleeps. Session caps (count, token bytes) refuse a LOOKUP but never a
 * worker request; a LOOKUP's memory does not grow with the world size (keys
 * expanded in batches: hits across batch boundaries still count right);
 * transfer and reservation records a worker never closed are pruned with the
 * L1 TTLs; silent registrations are forgotten; the sweeper is linear in the
 * instances it visits.
 */
#include "test_engine_util.h"

static struct engine *bounded(size_t max_sessions, uint64_t max_bytes, int expire_s)
{
    struct engine_opts o;
    te_opts(&o, 64ull << 20);
    o.max_sessions = max_sessions;
    o.max_session_bytes = max_bytes;
    o.worker_expire_s = expire_s;
    return te_create_opts(&o);
}

static void do_lookup(struct engine *e, const uint32_t *tok, size_t n_tok, const char *rid, int64_t world, int rc)
{
    struct engine_key k = te_key(tok, n_tok, rid, world, -1, 0, n_tok / CHUNK);
    cr_assert_eq(engine_lookup(e, &k, 1), rc, "LOOKUP %s", rid);
}

Test(engine_bounds, session_count_cap_refuses_lookups_not_workers)
{
    struct engine *e = bounded(4, 0, 0);
    static uint32_t tok[8 * CHUNK];
    te_tokens(tok, 8 * CHUNK, 1);
    char rid[32];
    for (int i = 0; i < 4; i++) {
        snprintf(rid, sizeof(rid), "r%d", i);
        do_lookup(e, tok, 8 * CHUNK, rid, 1, 0);
    }
    do_lookup(e, tok, 8 * CHUNK, "r4", 1, -ENOSPC);
    do_lookup(e, tok, 8 * CHUNK, "r0", 1, 0); /* an existing session still works */
    cr_assert_eq(te_status_int(e, "active_sessions"), 4);
    cr_assert_eq(te_status_int(e, "counters.refused_sessions"), 1);
    int64_t v = -1;
    cr_assert_eq(engine_query_prefetch_status(e, "r4", 2, &v), 0);
    cr_assert_eq(v, 0, "a refused LOOKUP reads as a miss");

    /* a worker past the cap: stores and retrieves with an unkept chain */
    te_register(e, 9, 1, false);
    cr_assert_eq(te_store(e, 9, "worker-new", 2, 4 * CHUNK, 1, 0, 0, 4), 4);
    cr_assert(te_present(e, 2, 3, 1, 0));
    static uint32_t t2[4 * CHUNK];
    te_tokens(t2, 4 * CHUNK, 2);
    struct engine_key k = te_key(t2, 4 * CHUNK, "worker-other", 1, 0, 0, 4);
    struct engine_slots s;
    cr_assert_eq(engine_prepare_retrieve(e, &k, 9, &s), 0);
    cr_assert_eq(s.n, 4);
    engine_slots_free(&s);
    cr_assert_eq(engine_commit_retrieve(e, &k, 9), 0);
    cr_assert_eq(te_status_int(e, "active_sessions"), 4, "no session was kept for them");
    cr_assert_eq(te_stats(e).read_locked_count, 0);
    engine_destroy(e);
}

Test(engine_bounds, session_byte_cap_refuses_and_accounts)
{
    struct engine *e = bounded(0, 1 << 20, 0);
    size_t n = 300000; /* 1.2 MB of tokens */
    uint32_t *tok = malloc(n * sizeof(*tok));
    te_tokens(tok, n, 3);
    do_lookup(e, tok, 1024, "small", 1, 0);
    long long held = te_status_int(e, "session_bytes");
    cr_assert_gt(held, 1024 * 4);
    do_lookup(e, tok, n / CHUNK * CHUNK, "big", 1, -ENOSPC);
    cr_assert_eq(te_status_int(e, "counters.refused_session_bytes"), 1);
    cr_assert_leq(te_status_int(e, "session_bytes"), 1 << 20);
    /* FREE_LOOKUP_LOCKS and worker requests with a token list past the cap still work */
    te_register(e, 4, 1, false);
    struct engine_key k = te_key(tok, 2048, "big", 1, 0, 0, 128);
    struct engine_slots s;
    cr_assert_eq(engine_prepare_store(e, &k, 4, &s), 0);
    cr_assert_gt(s.n, 0);
    engine_slots_free(&s);
    k = te_key(tok, n / CHUNK * CHUNK, "big", 1, -1, 0, 4);
    cr_assert_eq(engine_free_lookup_locks(e, &k, 1), 0);
    cr_assert_eq(engine_end_session(e, "small", 5), 0);
    cr_assert_eq(engine_end_session(e, "big", 3), 0);
    cr_assert_eq(te_status_int(e, "session_bytes"), 0, "every session's bytes given back");
    free(tok);
    engine_destroy(e);
}

/* Stores every shard of chunks [0, n) of seed inline (tiny objects), but
 * chunk `hole` of shard `hole_shard` (none when hole >= n). */
static void store_shards(struct engine *e, uint32_t seed, size_t n, int64_t world, size_t hole, int64_t hole_shard)
{
    uint32_t *tok = malloc(n * CHUNK * sizeof(*tok));
    te_tokens(tok, n * CHUNK, seed);
    struct iovec *iov = calloc(n, sizeof(*iov));
    static char blob[16] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++)
        iov[i] = (struct iovec){ blob, sizeof(blob) };
    for (int64_t w = 0; w < world; w++) {
        size_t ranges[2][2] = { { 0, n }, { n, n } };
        if (w == hole_shard && hole < n) {
            ranges[0][1] = hole;
            ranges[1][0] = hole + 1;
        }
        for (int r = 0; r < 2; r++) {
            if (ranges[r][0] >= ranges[r][1])
                continue;
            struct engine_key k = te_key(tok, n * CHUNK, "fill", world, w, ranges[r][0], ranges[r][1]);
            int64_t present = 0;
            cr_assert_eq(engine_store_inline(e, &k, iov, ranges[r][1] - ranges[r][0], &present), 0);
            cr_assert_eq(present, (int64_t)(ranges[r][1] - ranges[r][0]));
        }
    }
    free(iov);
    free(tok);
}

Test(engine_bounds, lookup_hits_across_key_batches)
{
    /* 9600 objects (L1 gives each at least 64 KiB of address space; lazy
     * mode commits only the pages written) */
    struct engine *e = te_create(1ull << 30);
    size_t world = 8, n = 600; /* 4800 keys: more than one batch of 4096 */
    store_shards(e, 5, n, (int64_t)world, n, 0);
    uint32_t *tok = malloc(n * CHUNK * sizeof(*tok));
    te_tokens(tok, n * CHUNK, 5);
    do_lookup(e, tok, n * CHUNK, "all", (int64_t)world, 0);
    int64_t v = -1;
    cr_assert_eq(engine_query_prefetch_status(e, "all", 3, &v), 0);
    cr_assert_eq(v, (int64_t)n, "hits %lld", (long long)v);
    cr_assert_eq(te_stats(e).read_locked_count, n * world);
    /* FREE_LOOKUP_LOCKS over the whole range, in batches too */
    struct engine_key k = te_key(tok, n * CHUNK, "all", (int64_t)world, -1, 0, n);
    cr_assert_eq(engine_free_lookup_locks(e, &k, 1), 0);
    cr_assert_eq(te_stats(e).read_locked_count, 0);
    /* one shard of chunk 550 missing: the prefix ends there, nothing else stays locked */
    store_shards(e, 6, n, (int64_t)world, 550, 3);
    te_tokens(tok, n * CHUNK, 6);
    do_lookup(e, tok, n * CHUNK, "cut", (int64_t)world, 0);
    cr_assert_eq(engine_query_prefetch_status(e, "cut", 3, &v), 0);
    cr_assert_eq(v, 550);
    cr_assert_eq(te_stats(e).read_locked_count, 550 * world);
    cr_assert_eq(engine_end_session(e, "cut", 3), 0);
    cr_assert_eq(te_stats(e).read_locked_count, 0);
    cr_assert_eq(engine_end_session(e, "all", 3), 0);
    free(tok);
    engine_destroy(e);
}

static size_t transfers_of(struct engine *e, int64_t id, size_t *pending)
{
    struct instance *in = instance_get(e, id);
    cr_assert_not_null(in);
    size_t n = in->transfers.n;
    if (pending)
        *pending = in->pending.n;
    instance_put(e, in);
    return n;
}

Test(engine_bounds, abandoned_transfers_and_reservations_are_pruned_with_the_ttl)
{
    struct engine *e = te_create(64ull << 20);
    te_register(e, 1, 1, false);
    cr_assert_eq(te_store(e, 1, "s", 6, 4 * CHUNK, 1, 0, 0, 4), 4);
    static uint32_t tok[4 * CHUNK];
    te_tokens(tok, 4 * CHUNK, 6);
    char rid[32];
    for (int i = 0; i < 200; i++) { /* PREPARE_RETRIEVE, never committed */
        snprintf(rid, sizeof(rid), "abandon-%d", i);
        struct engine_key k = te_key(tok, 4 * CHUNK, rid, 1, 0, 0, 4);
        struct engine_slots s;
        cr_assert_eq(engine_prepare_retrieve(e, &k, 1, &s), 0);
        engine_slots_free(&s);
    }
    cr_assert_eq(te_reserve(e, 1, "open-store", 7, 4 * CHUNK, 1, 0, 0, 4), 4);
    size_t pending;
    cr_assert_eq(transfers_of(e, 1, &pending), 800);
    cr_assert_eq(pending, 4);
    for (int i = 0; i < 4; i++) { /* the worker keeps speaking: never reaped */
        advance_s(100);
        engine_ping(e, true, 1);
        engine_sweep(e);
    }
    cr_assert_eq(transfers_of(e, 1, &pending), 0, "records past the read TTL (300 s) pruned");
    cr_assert_eq(pending, 4, "reservations live until the write TTL (600 s)");
    cr_assert_eq(te_status_int(e, "counters.pruned_transfer_records"), 800);
    cr_assert_eq(te_stats(e).read_locked_count, 0);
    for (int i = 0; i < 3; i++) {
        advance_s(100);
        engine_ping(e, true, 1);
        engine_sweep(e);
    }
    cr_assert_eq(transfers_of(e, 1, &pending), 0);
    cr_assert_eq(pending, 0, "reservations past the write TTL pruned");
    cr_assert_eq(te_status_int(e, "counters.pruned_reservation_records"), 4);
    cr_assert_eq(te_status_int(e, "counters.reaped_workers"), 0);
    engine_destroy(e);
}

Test(engine_bounds, silent_registrations_are_forgotten)
{
    struct engine *e = bounded(0, 0, 1000);
    te_register(e, 1, 1, false);
    te_register(e, 2, 1, false);
    cr_assert_eq(te_store(e, 1, "s", 8, 2 * CHUNK, 1, 0, 0, 2), 2); /* 1 is active */
    cr_assert_eq(te_reserve(e, 1, "open", 9, 2 * CHUNK, 1, 0, 0, 2), 2);
    advance_s(500);
    engine_ping(e, true, 2);
    engine_sweep(e);
    cr_assert_eq(te_status_int(e, "limits.registered_instances"), 2);
    cr_assert_eq(te_status_int(e, "counters.reaped_workers"), 1, "1 silent past the reap timeout");
    advance_s(600);
    engine_sweep(e);
    cr_assert_eq(te_status_int(e, "limits.registered_instances"), 1, "1 silent past --worker-expire-seconds");
    cr_assert_eq(te_status_int(e, "counters.expired_workers"), 1);
    struct engine_slots s;
    static uint32_t tok[2 * CHUNK];
    te_tokens(tok, 2 * CHUNK, 10);
    struct engine_key k = te_key(tok, 2 * CHUNK, "late", 1, 0, 0, 2);
    cr_assert_eq(engine_prepare_store(e, &k, 1, &s), -ENOENT, "a forgotten worker must register again");
    advance_s(1001);
    engine_sweep(e);
    cr_assert_eq(te_status_int(e, "limits.registered_instances"), 0);
    cr_assert_eq(te_stats(e).write_locked_count, 0);
    engine_destroy(e);
}

/* 60k silent workers reaped in one sweep. The quadratic reaper needed
 * about 105 s of CPU for this; a linear one well under a second (the
 * timeout only catches the quadratic walk, with a wide margin). */
Test(engine_bounds, reaping_many_workers_is_linear, .timeout = 60)
{
    struct engine *e = bounded(0, 0, 0);
    size_t n = 60000;
    for (size_t i = 0; i < n; i++)
        te_register(e, (int64_t)i + 1, 1, false);
    advance_s(3601);
    engine_sweep(e);
    cr_assert_eq(te_status_int(e, "counters.reaped_workers"), (long long)n);
    engine_destroy(e);
}

static long rss_kib(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, res = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &res) != 2)
            res = 0;
        fclose(f);
    }
    return res * (sysconf(_SC_PAGESIZE) / 1024);
}

/* 100k PREPARE_RETRIEVE misses made worker sessions that expired after 60 s
 * but kept 1.17 GB resident: glibc keeps freed chunks spread over the pool
 * threads' arenas. The sweeper now gives the pages back after a big sweep.
 * (Sanitizers bring their own allocator: only the expiry is checked there.) */
Test(engine_bounds, expired_worker_sessions_give_their_memory_back)
{
    struct engine *e = te_create(64ull << 20);
    te_register(e, 1, 1, false);
    size_t n_tok = 3000, n = 8000; /* ~12 KB of tokens each: ~100 MB */
    uint32_t *tok = malloc(n_tok * sizeof(*tok));
    te_tokens(tok, n_tok, 11);
    long before = rss_kib();
    char rid[32];
    for (size_t i = 0; i < n; i++) {
        snprintf(rid, sizeof(rid), "miss-%zu", i);
        tok[0] = (uint32_t)i; /* every one a miss, hashed afresh */
        struct engine_key k = te_key(tok, n_tok / CHUNK * CHUNK, rid, 1, 0, 0, n_tok / CHUNK);
        struct engine_slots s;
        cr_assert_eq(engine_prepare_retrieve(e, &k, 1, &s), -ENOENT);
    }
    free(tok);
    long grown = rss_kib();
    cr_assert_eq(te_status_int(e, "active_sessions"), (long long)n);
    advance_s(59);
    engine_ping(e, true, 1);
    engine_sweep(e);
    cr_assert_eq(te_status_int(e, "active_sessions"), (long long)n, "worker sessions live 60 s");
    advance_s(2);
    engine_ping(e, true, 1);
    engine_sweep(e);
    cr_assert_eq(te_status_int(e, "active_sessions"), 0);
    cr_assert_eq(te_status_int(e, "session_bytes"), 0);
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
    long after = rss_kib();
    cr_assert_gt(grown - before, 60 * 1024, "the sessions took memory (%ld KiB)", grown - before);
    cr_assert_lt(after - before, (grown - before) / 4, "RSS back near its start: %ld -> %ld -> %ld KiB", before,
                 grown, after);
#else
    (void)before;
    (void)grown;
#endif
    engine_destroy(e);
}

/* A flood of worker requests for unknown request ids (each would make a
 * session) takes at most half the session cap: LOOKUPs still find room. */
Test(engine_bounds, worker_sessions_leave_room_for_lookups)
{
    struct engine *e = bounded(8, 0, 0);
    te_register(e, 3, 1, false);
    static uint32_t tok[4 * CHUNK];
    te_tokens(tok, 4 * CHUNK, 12);
    char rid[32];
    for (int i = 0; i < 20; i++) {
        snprintf(rid, sizeof(rid), "flood-%d", i);
        struct engine_key k = te_key(tok, 4 * CHUNK, rid, 1, 0, 0, 4);
        struct engine_slots s;
        cr_assert_eq(engine_prepare_retrieve(e, &k, 3, &s), -ENOENT, "a miss, served");
    }
    cr_assert_eq(te_status_int(e, "active_sessions"), 4);
    for (int i = 0; i < 4; i++) {
        snprintf(rid, sizeof(rid), "lookup-%d", i);
        do_lookup(e, tok, 4 * CHUNK, rid, 1, 0);
    }
    do_lookup(e, tok, 4 * CHUNK, "lookup-4", 1, -ENOSPC);
    cr_assert_eq(te_status_int(e, "active_sessions"), 8);
    engine_destroy(e);
}
