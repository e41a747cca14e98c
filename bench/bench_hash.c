/*
 * bench_hash: the token hasher's throughput, as a ratio against memcpy of
 * the same bytes (32 + 4 * 256 per chunk) measured in the same run.
 *
 *   chain   one session's rolling hash over N chunks (each step waits for
 *           the previous digest, so SIMD lanes cannot help it)
 *   batch   S sessions hashed side by side (hasher_chain_update_many)
 *   1 MB    plain BLAKE3 of one long input (blake3_update's lanes)
 *
 * for each BLAKE3 path the CPU has, and xxh3_128. Usage: bench_hash [N]
 * (default 16384 chunks = 4M tokens). Never asserts on speed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/blake3.h"
#include "engine/hasher.h"
#include "util/clock.h"

#define CHUNK 256
#define SESSIONS 64
#define REPS 5

static double best_of(void (*fn)(void *), void *arg)
{
    uint64_t best = UINT64_MAX;
    for (int r = 0; r < REPS; r++) {
        uint64_t t0 = clock_mono_ns();
        fn(arg);
        uint64_t dt = clock_mono_ns() - t0;
        if (dt < best)
            best = dt;
    }
    return best ? (double)best : 1.0;
}

struct job {
    struct hasher h;
    uint32_t *tokens;
    size_t nchunks;
    uint8_t *src, *dst; /* memcpy baseline */
    size_t bytes;
    struct hasher_chain chains[SESSIONS];
    volatile uint8_t sink;
};

static void run_memcpy(void *arg)
{
    struct job *j = arg;
    memcpy(j->dst, j->src, j->bytes);
    j->sink ^= j->dst[j->bytes / 2];
}

static void run_chain(void *arg)
{
    struct job *j = arg;
    if (hasher_chain_update(&j->h, &j->chains[0], j->tokens, j->nchunks * CHUNK, 0) < 0)
        exit(1);
    j->sink ^= j->chains[0].hashes[j->nchunks - 1][0];
}

static void run_batch(void *arg)
{
    struct job *j = arg;
    struct hasher_chain *cp[SESSIONS];
    const uint32_t *tk[SESSIONS];
    size_t n[SESSIONS], keep[SESSIONS];
    size_t per = j->nchunks / SESSIONS;
    for (int i = 0; i < SESSIONS; i++) {
        cp[i] = &j->chains[i];
        tk[i] = j->tokens + (size_t)i * per * CHUNK;
        n[i] = per * CHUNK;
        keep[i] = 0;
    }
    if (hasher_chain_update_many(&j->h, cp, tk, n, keep, SESSIONS) < 0)
        exit(1);
    j->sink ^= j->chains[SESSIONS - 1].hashes[per - 1][0];
}

static void run_long(void *arg)
{
    struct job *j = arg;
    uint8_t out[32];
    for (size_t off = 0; off + (1 << 20) <= j->bytes; off += 1 << 20)
        blake3_hash(j->src + off, 1 << 20, out);
    j->sink ^= out[0];
}

static void report(const char *what, double ns, double base_ns, size_t bytes)
{
    printf("  %-28s %8.3f GB/s  %6.3fx memcpy\n", what, (double)bytes / ns, base_ns / ns);
}

int main(int argc, char **argv)
{
    static struct job j;
    j.nchunks = argc > 1 ? strtoul(argv[1], NULL, 10) : 16384;
    if (j.nchunks < SESSIONS)
        j.nchunks = SESSIONS;
    j.nchunks -= j.nchunks % SESSIONS;
    size_t ntok = j.nchunks * CHUNK;
    j.bytes = j.nchunks * (32 + 4 * CHUNK);
    j.tokens = malloc(ntok * sizeof(uint32_t));
    j.src = malloc(j.bytes);
    j.dst = malloc(j.bytes);
    if (!j.tokens || !j.src || !j.dst)
        return 1;
    uint32_t x = 2463534242u;
    for (size_t i = 0; i < ntok; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        j.tokens[i] = x % 152064; /* a real vocabulary's range */
    }
    for (size_t i = 0; i < j.bytes; i++)
        j.src[i] = (uint8_t)(i * 131);
    for (int i = 0; i < SESSIONS; i++)
        hasher_chain_init(&j.chains[i]);

    double base = best_of(run_memcpy, &j);
    printf("%zu chunks of %d tokens, %zu bytes hashed; memcpy %.3f GB/s\n", j.nchunks, CHUNK,
           j.bytes, (double)j.bytes / base);

    char what[64];
    for (int p = BLAKE3_PATH_PORTABLE; p <= BLAKE3_PATH_AVX2; p++) {
        if (blake3_set_path(p) != 0)
            continue;
        hasher_init(&j.h, HASHER_BLAKE3, CHUNK);
        snprintf(what, sizeof(what), "blake3 %s chain", blake3_path_name(p));
        report(what, best_of(run_chain, &j), base, j.bytes);
        snprintf(what, sizeof(what), "blake3 %s batch x%d", blake3_path_name(p), SESSIONS);
        report(what, best_of(run_batch, &j), base, j.bytes);
        snprintf(what, sizeof(what), "blake3 %s 1 MB inputs", blake3_path_name(p));
        report(what, best_of(run_long, &j), base, j.bytes - j.bytes % (1 << 20));
    }
    hasher_init(&j.h, HASHER_XXH3_128, CHUNK);
    report("xxh3_128 chain", best_of(run_chain, &j), base, j.bytes);
    report("xxh3_128 batch", best_of(run_batch, &j), base, j.bytes);

    for (int i = 0; i < SESSIONS; i++)
        hasher_chain_free(&j.chains[i]);
    free(j.tokens);
    free(j.src);
    free(j.dst);
    return j.sink == 0x5a ? 0 : 0;
}
