/*
 * bench_l2: the fs L2 tier through lmcd's engine, against direct file I/O
 * of the same bytes measured in the same run:
 *
 *   store    engine_store_inline of a 32K-token prompt (128 chunks of
 *            OBJ_BYTES) until the StoreController has written every object
 *            to the fs tier   vs   dd-style: 128 files written sequentially
 *            (open, write, close) with the same sizes
 *   load     CLEAR (L1 empty), then LOOKUP of the same prompt until
 *            QUERY_PREFETCH_STATUS answers 128 (lookup in the tier, L1
 *            reservations, 128 file loads, publish, lock)   vs   dd-style:
 *            the 128 files read sequentially into one buffer
 *   lookup   the same LOOKUP with every chunk already in L1 (reference)
 *
 * The engine runs in this process (no ZeroMQ in the timed path; the wire's
 * cost is bench_rpc's and bench_inline's). Files live under $TMPDIR (or
 * /tmp): both sides see the same filesystem and the same page cache; the
 * bench does not drop caches (a shared machine), so loads mostly measure
 * the page cache, as a warm disk tier serves. Best of ROUNDS rounds.
 * Usage: bench_l2 [ROUNDS, default 3]. Never asserts on speed.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statfs.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "engine/engine.h"
#include "util/clock.h"
#include "util/log.h"

#define CHUNK 256
#define N_CHUNKS 128 /* 32K tokens */
#define OBJ_BYTES (1u << 20)
#define MAX_ROUNDS 10

static char dir[512];

static void fail(const char *what)
{
    fprintf(stderr, "bench_l2: %s\n", what);
    exit(1);
}

static void rm_dir(void)
{
    char cmd[600];
    if (dir[0]) {
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        if (system(cmd) != 0)
            fprintf(stderr, "bench_l2: could not remove %s\n", dir);
    }
}

static int64_t adapter_stored(struct engine *e)
{
    json_t *st = engine_status_json(e);
    json_t *a = json_array_get(json_object_get(json_object_get(st, "storage_manager"), "l2_adapters"), 0);
    int64_t v = json_integer_value(json_object_get(json_object_get(a, "store"), "keys"));
    json_decref(st);
    return v;
}

static void key_of(struct engine_key *k, uint32_t *tokens, const char *rid, int round)
{
    for (size_t t = 0; t < (size_t)N_CHUNKS * CHUNK; t++)
        tokens[t] = (uint32_t)(t * 7919u + (uint32_t)round * 100003u) % 152064u;
    memset(k, 0, sizeof(*k));
    k->model_name = "bench/model";
    k->model_name_len = strlen(k->model_name);
    k->world_size = 1;
    k->token_ids = tokens;
    k->n_tokens = (size_t)N_CHUNKS * CHUNK;
    k->start = 0;
    k->end = (int64_t)k->n_tokens;
    k->request_id = rid;
    k->request_id_len = strlen(rid);
    k->cache_salt = "";
}

/* LOOKUP and wait for the final count; returns ns. */
static uint64_t lookup_ns(struct engine *e, struct engine_key *k, int64_t *chunks)
{
    uint64_t t0 = clock_mono_ns();
    if (engine_lookup(e, k, 1) < 0)
        fail("LOOKUP failed");
    int rc;
    uint64_t deadline = t0 + 60ull * 1000000000ull;
    while ((rc = engine_query_prefetch_status(e, k->request_id, k->request_id_len, chunks)) == -EAGAIN) {
        if (clock_mono_ns() > deadline)
            fail("prefetch did not finish within 60 s");
        struct timespec ts = { 0, 20000 };
        nanosleep(&ts, NULL);
    }
    uint64_t dt = clock_mono_ns() - t0;
    engine_free_lookup_locks(e, k, 1);
    engine_end_session(e, k->request_id, k->request_id_len);
    return dt;
}

static uint64_t direct_write(const uint8_t *src, int round)
{
    char path[700];
    uint64_t t0 = clock_mono_ns();
    for (int i = 0; i < N_CHUNKS; i++) {
        snprintf(path, sizeof(path), "%s/direct-%d-%d.bin", dir, round, i);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0 || write(fd, src + (size_t)i * OBJ_BYTES, OBJ_BYTES) != (ssize_t)OBJ_BYTES)
            fail("direct write failed");
        close(fd);
    }
    return clock_mono_ns() - t0;
}

static uint64_t direct_read(uint8_t *dst, int round)
{
    char path[700];
    uint64_t t0 = clock_mono_ns();
    for (int i = 0; i < N_CHUNKS; i++) {
        snprintf(path, sizeof(path), "%s/direct-%d-%d.bin", dir, round, i);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || read(fd, dst + (size_t)i * OBJ_BYTES, OBJ_BYTES) != (ssize_t)OBJ_BYTES)
            fail("direct read failed");
        close(fd);
    }
    return clock_mono_ns() - t0;
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 3;
    if (rounds < 1 || rounds > MAX_ROUNDS)
        rounds = 3;
    log_set_level(LOG_WARNING);
    const char *tmp = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(dir, sizeof(dir), "%s/lmcd-bench-l2-XXXXXX", tmp);
    if (!mkdtemp(dir))
        fail("mkdtemp failed");
    atexit(rm_dir);
    char l2dir[600], shm[64], adapter[800];
    snprintf(l2dir, sizeof(l2dir), "%s/tier", dir);
    snprintf(shm, sizeof(shm), "lmcd_bench_l2_%d", (int)getpid());
    snprintf(adapter, sizeof(adapter), "{\"type\":\"fs\",\"base_path\":\"%s\"}", l2dir);
    json_t *ads = json_pack("[o]", json_loads(adapter, 0, NULL));
    struct engine_opts o = {
        .chunk_size = CHUNK,
        .hash_algorithm = "blake3",
        .l1_size_bytes = (uint64_t)N_CHUNKS * OBJ_BYTES * 2 + (64u << 20),
        .l1_use_lazy = true,
        .shm_name = shm,
        .eviction_policy = "LRU",
        .eviction_trigger_watermark = 0.95,
        .eviction_ratio = 0.2,
        .session_ttl_s = 600,
        .l2_adapters = ads,
        .l2_store_policy = "default",
        .l2_prefetch_max_in_flight = 8,
        .l2_load_timeout_ms = 60000,
    };
    struct engine *e = NULL;
    if (engine_create(&o, &e) < 0)
        fail("engine_create failed");
    uint8_t *src = malloc((size_t)N_CHUNKS * OBJ_BYTES), *dst = malloc((size_t)N_CHUNKS * OBJ_BYTES);
    uint32_t *tokens = malloc((size_t)N_CHUNKS * CHUNK * sizeof(uint32_t));
    struct iovec *iov = malloc(N_CHUNKS * sizeof(*iov));
    if (!src || !dst || !tokens || !iov)
        fail("out of memory");
    for (size_t i = 0; i < (size_t)N_CHUNKS * OBJ_BYTES; i++)
        src[i] = (uint8_t)(i * 131 + (i >> 12));
    for (int i = 0; i < N_CHUNKS; i++)
        iov[i] = (struct iovec){ src + (size_t)i * OBJ_BYTES, OBJ_BYTES };

    uint64_t best_store = UINT64_MAX, best_load = UINT64_MAX, best_l1 = UINT64_MAX;
    uint64_t best_dw = UINT64_MAX, best_dr = UINT64_MAX;
    int64_t stored_before = 0;
    for (int r = 0; r < rounds; r++) {
        struct engine_key k;
        char rid[64];
        snprintf(rid, sizeof(rid), "bench-l2-store-%d", r);
        key_of(&k, tokens, rid, r);
        k.has_worker_id = true;
        uint64_t t0 = clock_mono_ns();
        int64_t present = 0;
        if (engine_store_inline(e, &k, iov, N_CHUNKS, &present) < 0 || present != N_CHUNKS)
            fail("store_inline failed");
        uint64_t deadline = t0 + 120ull * 1000000000ull;
        while (adapter_stored(e) < stored_before + N_CHUNKS) {
            if (clock_mono_ns() > deadline)
                fail("the StoreController did not write 128 objects within 120 s");
            struct timespec ts = { 0, 100000 };
            nanosleep(&ts, NULL);
        }
        uint64_t st = clock_mono_ns() - t0;
        stored_before += N_CHUNKS;
        k.has_worker_id = false;
        int64_t chunks = 0;
        snprintf(rid, sizeof(rid), "bench-l2-l1-%d", r);
        k.request_id = rid;
        k.request_id_len = strlen(rid);
        uint64_t l1 = lookup_ns(e, &k, &chunks);
        if (chunks != N_CHUNKS)
            fail("L1 lookup missed");
        engine_clear(e, true);
        snprintf(rid, sizeof(rid), "bench-l2-load-%d", r);
        k.request_id = rid;
        k.request_id_len = strlen(rid);
        uint64_t ld = lookup_ns(e, &k, &chunks);
        if (chunks != N_CHUNKS) {
            fprintf(stderr, "bench_l2: prefetch brought %lld of %d chunks\n", (long long)chunks, N_CHUNKS);
            fail("L2 prefetch incomplete");
        }
        uint64_t dw = direct_write(src, r), dr = direct_read(dst, r);
        if (memcmp(src, dst, (size_t)N_CHUNKS * OBJ_BYTES))
            fail("direct read differs");
        for (int i = 0; i < N_CHUNKS; i++) { /* keep the disk footprint to one round's worth */
            char path[700];
            snprintf(path, sizeof(path), "%s/direct-%d-%d.bin", dir, r, i);
            unlink(path);
        }
        best_store = st < best_store ? st : best_store;
        best_load = ld < best_load ? ld : best_load;
        best_l1 = l1 < best_l1 ? l1 : best_l1;
        best_dw = dw < best_dw ? dw : best_dw;
        best_dr = dr < best_dr ? dr : best_dr;
        engine_clear(e, true);
    }
    struct statfs sf;
    const char *fs = statfs(dir, &sf) == 0 ? (sf.f_type == 0x01021994 ? "tmpfs" : sf.f_type == 0x794c7630 ? "overlayfs"
                                                                       : sf.f_type == 0xEF53 ? "ext4"
                                                                       : sf.f_type == 0x58465342 ? "xfs"
                                                                                                  : "other")
                                           : "?";
    double mib = (double)N_CHUNKS * OBJ_BYTES / (1 << 20);
#define MBS(ns) (mib / ((double)(ns) / 1e9))
    printf("bench_l2: fs tier in %s (%s), %d objects of %u KiB (a 32K-token prompt), best of %d\n", dir, fs,
           N_CHUNKS, OBJ_BYTES >> 10, rounds);
    printf("  store  lmcd write-behind %8.1f MiB/s   direct write %8.1f MiB/s   ratio %.2fx\n", MBS(best_store),
           MBS(best_dw), (double)best_dw / (double)best_store);
    printf("  load   lmcd prefetch     %8.1f MiB/s   direct read  %8.1f MiB/s   ratio %.2fx\n", MBS(best_load),
           MBS(best_dr), (double)best_dr / (double)best_load);
    printf("  lookup+prefetch of 32K tokens from the fs tier: %.2f ms (all in L1: %.3f ms; direct read %.2f ms)\n",
           (double)best_load / 1e6, (double)best_l1 / 1e6, (double)best_dr / 1e6);
    engine_destroy(e);
    json_decref(ads);
    free(src);
    free(dst);
    free(tokens);
    free(iov);
    return 0;
}
