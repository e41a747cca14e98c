/*
 * bench_hash: the token hasher's throughput, as a ratio against memcpy of
 * the same bytes (32 + 4 * 256 per chunk) measured in the same run.
 *
 *   chain   one session's rolling hash over N chunks (each step waits for
 *           the previous digest, so SIMD lanes cannot help it)
 *   batch   S sessions hashed side by side (hasher_chain_update_many)
 *   1 MB    plain BLAKE3 of one long input (blake3_update's lanes)
 *
 * for each BLAKE3 path the CPU has, and xxh3_128; the chain also on each
 * one-block compression (portable, SSE4.1 rows; the other rows use the one
 * picked at start-up, printed first). Against the official
 * BLAKE3: the official C library (built by bench.mk from the sources Debian
 * ships in librust-blake3-dev; bookworm has no libblake3-dev) computing the
 * same chain (the same BE32 token bytes, one hasher per chunk) and hashing
 * the same 1 MB inputs; and Debian's b3sum (the official Rust
 * implementation) hashing the same bytes as one long input on one thread,
 * its process start-up (b3sum of an empty file) subtracted. Usage:
 * bench_hash [N] (default 16384 chunks = 4M tokens; 2048 with
 * LMCD_BENCH_QUICK). Never asserts on speed.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

#include "engine/blake3.h"
#include "engine/hasher.h"
#include "util/clock.h"

#ifdef LMCD_BENCH_B3_OFFICIAL
#include <blake3.h> /* the official C library's header (bench.mk's -I) */
#endif

#define CHUNK 256
#define SESSIONS 64
#define REPS 9

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

#ifdef LMCD_BENCH_B3_OFFICIAL
/* The chain with the official C library: what lmcd's hasher computes
 * (h[i] = H(h[i-1] || BE32 tokens)), message built the same way. */
static void run_official_chain(void *arg)
{
    struct job *j = arg;
    uint8_t msg[32 + 4 * CHUNK], prev[32];
    blake3_hasher h;
    blake3_hasher_init(&h);
    blake3_hasher_update(&h, (const uint8_t[12]){ 0 }, 12);
    blake3_hasher_finalize(&h, prev, 32); /* NONE_HASH, as hasher.h */
    for (size_t c = 0; c < j->nchunks; c++) {
        memcpy(msg, prev, 32);
        const uint32_t *t = j->tokens + c * CHUNK;
        for (int i = 0; i < CHUNK; i++) {
            uint32_t v = t[i];
            msg[32 + 4 * i] = (uint8_t)(v >> 24);
            msg[33 + 4 * i] = (uint8_t)(v >> 16);
            msg[34 + 4 * i] = (uint8_t)(v >> 8);
            msg[35 + 4 * i] = (uint8_t)v;
        }
        blake3_hasher_init(&h);
        blake3_hasher_update(&h, msg, sizeof(msg));
        blake3_hasher_finalize(&h, prev, 32);
    }
    j->sink ^= prev[0];
}

static void run_official_long(void *arg)
{
    struct job *j = arg;
    uint8_t out[32];
    blake3_hasher h;
    for (size_t off = 0; off + (1 << 20) <= j->bytes; off += 1 << 20) {
        blake3_hasher_init(&h);
        blake3_hasher_update(&h, j->src + off, 1 << 20);
        blake3_hasher_finalize(&h, out, 32);
    }
    j->sink ^= out[0];
}
#endif

static void report(const char *what, double ns, double base_ns, size_t bytes)
{
    printf("  %-28s %8.3f GB/s  %6.3fx memcpy\n", what, (double)bytes / ns, base_ns / ns);
    char fig[96];
    snprintf(fig, sizeof(fig), "hash %s", what);
    bench_report(fig, "GB/s", (double)bytes / ns, "memcpy", (double)bytes / base_ns, true);
}

/* Best wall ns of `b3sum --num-threads 1` on path, over 3 runs. */
static double b3sum_ns(const char *path)
{
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "b3sum --num-threads 1 --no-names '%s' >/dev/null", path);
    double best = 0;
    for (int r = 0; r < 3; r++) {
        uint64_t t0 = clock_mono_ns();
        if (system(cmd) != 0)
            return -1;
        double dt = (double)(clock_mono_ns() - t0);
        best = r == 0 || dt < best ? dt : best;
    }
    return best;
}

/* Throughput (bytes/ns) of b3sum on the same bytes, or -1 without b3sum. */
static double b3sum_rate(const uint8_t *data, size_t len)
{
    char full[64], empty[64];
    snprintf(full, sizeof(full), "/tmp/lmcd_bench_b3_%d", (int)getpid());
    snprintf(empty, sizeof(empty), "/tmp/lmcd_bench_b3e_%d", (int)getpid());
    FILE *f = fopen(full, "w"), *g = fopen(empty, "w");
    bool ok = f && g && fwrite(data, 1, len, f) == len;
    if (f)
        ok = !fclose(f) && ok;
    if (g)
        ok = !fclose(g) && ok;
    double rate = -1;
    if (ok) {
        double t_full = b3sum_ns(full), t_empty = b3sum_ns(empty);
        if (t_full > 0 && t_empty > 0 && t_full > t_empty)
            rate = (double)len / (t_full - t_empty);
    }
    unlink(full);
    unlink(empty);
    return rate;
}

int main(int argc, char **argv)
{
    static struct job j;
    j.nchunks = argc > 1 ? strtoul(argv[1], NULL, 10) : bench_quick() ? 2048 : 16384;
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

    /* Every configuration once per round, rounds repeated, best kept: a
     * burst of load from elsewhere then hurts one sample, not one row. */
    struct cfg {
        char name[48];
        int path; /* -1: memcpy baseline */
        enum hasher_algo algo;
        void (*fn)(void *);
        size_t bytes;
        uint64_t best;
        int one; /* one-block compression (blake3_set_one) */
    } cfgs[24];
    int nc = 0;
    double cal[2];
    enum blake3_one chosen = blake3_get_one();
    blake3_one_measured(cal);
    printf("one-input compression picked at start: %s (portable %.1f ns, sse41 %.1f ns per block)\n",
           blake3_one_name(chosen), cal[0], cal[1]);
    cfgs[nc++] = (struct cfg){ "memcpy", -1, HASHER_BLAKE3, run_memcpy, j.bytes, UINT64_MAX, -1 };
    for (int p = BLAKE3_PATH_PORTABLE; p <= BLAKE3_PATH_AVX2; p++) {
        if (!blake3_path_supported(p))
            continue;
        static const char *const kind[] = { "chain", "batch x64", "1 MB inputs" };
        void (*const fns[])(void *) = { run_chain, run_batch, run_long };
        for (int k = 0; k < 3; k++) {
            struct cfg *c = &cfgs[nc++];
            snprintf(c->name, sizeof(c->name), "blake3 %s %s", blake3_path_name(p), kind[k]);
            c->path = p;
            c->algo = HASHER_BLAKE3;
            c->fn = fns[k];
            c->bytes = k == 2 ? j.bytes - j.bytes % (1 << 20) : j.bytes;
            c->best = UINT64_MAX;
            c->one = (int)chosen;
        }
    }
    for (int o = BLAKE3_ONE_PORTABLE; o <= BLAKE3_ONE_SSE41; o++) {
        if (!blake3_one_supported(o))
            continue;
        struct cfg *c = &cfgs[nc++];
        *c = (struct cfg){ "", BLAKE3_PATH_PORTABLE, HASHER_BLAKE3, run_chain, j.bytes, UINT64_MAX, o };
        snprintf(c->name, sizeof(c->name), "blake3 chain one-block %s", blake3_one_name(o));
    }
    cfgs[nc++] = (struct cfg){ "xxh3_128 chain", 0, HASHER_XXH3_128, run_chain, j.bytes, UINT64_MAX, (int)chosen };
    cfgs[nc++] = (struct cfg){ "xxh3_128 batch x64", 0, HASHER_XXH3_128, run_batch, j.bytes, UINT64_MAX, (int)chosen };
#ifdef LMCD_BENCH_B3_OFFICIAL
    int official_chain = nc;
    cfgs[nc++] = (struct cfg){ "official C chain", -2, HASHER_BLAKE3, run_official_chain, j.bytes, UINT64_MAX, -1 };
    cfgs[nc++] = (struct cfg){ "official C 1 MB inputs", -2, HASHER_BLAKE3, run_official_long,
                               j.bytes - j.bytes % (1 << 20), UINT64_MAX, -1 };
#endif

    for (int r = 0; r < REPS; r++) {
        for (int i = 0; i < nc; i++) {
            struct cfg *c = &cfgs[i];
            if (c->path >= 0) {
                blake3_set_path(c->path);
                blake3_set_one(c->one);
                hasher_init(&j.h, c->algo, CHUNK);
            }
            uint64_t t0 = clock_mono_ns();
            c->fn(&j);
            uint64_t dt = clock_mono_ns() - t0;
            if (dt < c->best)
                c->best = dt ? dt : 1;
        }
    }
    double base = (double)cfgs[0].best;
    printf("%zu chunks of %d tokens, %zu bytes hashed; memcpy %.3f GB/s\n", j.nchunks, CHUNK,
           j.bytes, (double)j.bytes / base);
    for (int i = 1; i < nc; i++)
        report(cfgs[i].name, (double)cfgs[i].best, base * (double)cfgs[i].bytes / (double)j.bytes,
               cfgs[i].bytes);

    /* BLAKE3 on the path lmcd picks, against the official implementation */
    int best_path = BLAKE3_PATH_PORTABLE;
    for (int p = BLAKE3_PATH_PORTABLE; p <= BLAKE3_PATH_AVX2; p++)
        if (blake3_path_supported(p))
            best_path = p;
    static const char *const vs_c[] = { "hash blake3 chain vs official C", "hash blake3 1 MB inputs vs official C" };
    for (int k = 0; k < 2; k++) {
        void (*fn)(void *) = k == 0 ? run_chain : run_long;
        for (int i = 1; i < nc; i++) {
            if (cfgs[i].path != best_path || cfgs[i].algo != HASHER_BLAKE3 || cfgs[i].fn != fn ||
                cfgs[i].one != (int)chosen)
                continue;
            double ours = (double)cfgs[i].bytes / (double)cfgs[i].best;
#ifdef LMCD_BENCH_B3_OFFICIAL
            const struct cfg *o = &cfgs[official_chain + k];
            double off = (double)o->bytes / (double)o->best;
            printf("  %-28s %8.3f GB/s; lmcd's %s %.3fx the official C library\n", o->name, off, cfgs[i].name,
                   ours / off);
            bench_report(vs_c[k], "GB/s", ours, "official BLAKE3 C", off, true);
#else
            printf("  the official BLAKE3 C library was not built (no librust-blake3-dev): %s not measured\n",
                   vs_c[k]);
            bench_report(vs_c[k], "GB/s", ours, "official BLAKE3 C", NAN, true);
#endif
            break; /* one line per kind */
        }
    }
    for (int i = 1; i < nc; i++) {
        if (cfgs[i].path != best_path || cfgs[i].algo != HASHER_BLAKE3 || cfgs[i].fn != run_long)
            continue;
        /* long enough that b3sum's start-up (10-70 ms on a loaded machine) is small beside it */
        size_t len = (size_t)(bench_quick() ? 128 : 512) << 20;
        uint8_t *big = malloc(len);
        if (!big)
            return 1;
        for (size_t k = 0; k < len; k++)
            big[k] = (uint8_t)(k * 131);
        double b3 = b3sum_rate(big, len);
        free(big);
        double ours = (double)cfgs[i].bytes / (double)cfgs[i].best;
        if (b3 > 0) {
            printf("  b3sum 1.x, one thread         %8.3f GB/s; lmcd's %s %.3fx b3sum\n", b3, cfgs[i].name,
                   ours / b3);
            bench_report("hash blake3 long input vs b3sum", "GB/s", ours, "b3sum (official)", b3, true);
        } else {
            printf("  b3sum not found or failed: no comparison with the official BLAKE3\n");
            bench_report("hash blake3 long input vs b3sum", "GB/s", ours, "b3sum (official)", NAN, true);
        }
    }

    for (int i = 0; i < SESSIONS; i++)
        hasher_chain_free(&j.chains[i]);
    free(j.tokens);
    free(j.src);
    free(j.dst);
    return j.sink == 0x5a ? 0 : 0;
}
