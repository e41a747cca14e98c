/*
 * blake3: portable BLAKE3 and the choice of SIMD path (see blake3.h).
 *
 * Tree hashing with a chaining-value stack: each completed 1 KB chunk's
 * chaining value is pushed, and after chunk number k (1-based) is pushed, the
 * top two entries are merged into a parent once per trailing zero bit of k.
 * A chunk is completed only when more input follows it, so the last chunk
 * and the parents above it are left for blake3_finalize(), which marks the
 * topmost node ROOT. Long inputs hand whole chunks that are known not to be
 * last to the SIMD lanes in groups.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "engine/blake3.h"
#include "engine/blake3_impl.h"
#include "util/clock.h"

const uint32_t blake3_iv[8] = {
    0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
    0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19,
};

/* Message word order per round: round r applies the spec's permutation r times. */
const uint8_t blake3_schedule[7][16] = {
    { 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15 },
    { 2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8 },
    { 3, 4, 10, 12, 13, 2, 7, 14, 6, 5, 9, 0, 11, 15, 8, 1 },
    { 10, 7, 12, 9, 14, 3, 13, 15, 4, 0, 11, 2, 5, 8, 1, 6 },
    { 12, 13, 9, 11, 15, 10, 14, 8, 7, 2, 5, 3, 0, 1, 6, 4 },
    { 9, 14, 11, 5, 8, 12, 15, 1, 13, 3, 0, 10, 2, 6, 4, 7 },
    { 11, 15, 5, 0, 1, 9, 8, 6, 14, 10, 2, 12, 3, 4, 7, 13 },
};

/* Inputs handed to the lanes per call in blake3_update(). */
#define B3_UPDATE_GROUP 16

static inline uint32_t load32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline void store32(uint8_t *p, uint32_t w)
{
    p[0] = (uint8_t)w;
    p[1] = (uint8_t)(w >> 8);
    p[2] = (uint8_t)(w >> 16);
    p[3] = (uint8_t)(w >> 24);
}

static inline uint32_t rotr32(uint32_t w, int c)
{
    return (w >> c) | (w << (32 - c));
}

static inline void g(uint32_t *v, int a, int b, int c, int d, uint32_t x, uint32_t y)
{
    v[a] = v[a] + v[b] + x;
    v[d] = rotr32(v[d] ^ v[a], 16);
    v[c] = v[c] + v[d];
    v[b] = rotr32(v[b] ^ v[c], 12);
    v[a] = v[a] + v[b] + y;
    v[d] = rotr32(v[d] ^ v[a], 8);
    v[c] = v[c] + v[d];
    v[b] = rotr32(v[b] ^ v[c], 7);
}

/* The compression function's 7 rounds; leaves the 16-word state in v. */
static void compress_rounds(uint32_t v[16], const uint32_t cv[8], const uint8_t block[64],
                            uint8_t block_len, uint64_t counter, uint8_t flags)
{
    uint32_t m[16];
    for (int i = 0; i < 16; i++)
        m[i] = load32(block + 4 * i);
    memcpy(v, cv, 8 * sizeof(uint32_t));
    memcpy(v + 8, blake3_iv, 4 * sizeof(uint32_t));
    v[12] = (uint32_t)counter;
    v[13] = (uint32_t)(counter >> 32);
    v[14] = block_len;
    v[15] = flags;
    BLAKE3_ROUNDS(g, v, m);
}

void blake3_one_compress_portable(uint32_t cv[8], const uint8_t block[64], uint8_t block_len,
                              uint64_t counter, uint8_t flags)
{
    uint32_t v[16];
    compress_rounds(v, cv, block, block_len, counter, flags);
    for (int i = 0; i < 8; i++)
        cv[i] = v[i] ^ v[i + 8];
}

void blake3_one_compress_xof_portable(const uint32_t cv[8], const uint8_t block[64],
                                  uint8_t block_len, uint64_t counter, uint8_t flags,
                                  uint8_t out[64])
{
    uint32_t v[16];
    compress_rounds(v, cv, block, block_len, counter, flags);
    for (int i = 0; i < 8; i++) {
        store32(out + 4 * i, v[i] ^ v[i + 8]);
        store32(out + 4 * (i + 8), v[i + 8] ^ cv[i]);
    }
}

/* ---- one-block compression choice -------------------------------------- */

/* The process-wide one-block compression: -1 until first use. Atomic for
 * the same reason as b3_path below: a stale read picks the other one, which
 * gives the same bytes. */
static _Atomic int b3_one = -1;
/* What the start-up calibration measured, picoseconds per compression
 * (portable, sse41); 0 when it did not run. Written before b3_one is set. */
static _Atomic uint64_t b3_one_ps[2];
/* Keeps the timed compressions from being optimized away. */
static volatile uint32_t b3_cal_sink;

/* A timed run is a chain of this many compressions, each waiting for the
 * previous chaining value as the hasher's chain does; each path runs
 * B3_CAL_TRIES times, interleaved, best kept (the first run warms caches and
 * predictors and is usually the one discarded). About 1300 compressions in
 * all: 0.11-0.16 ms on Zen 3, once per process. */
#define B3_CAL_BLOCKS 128
#define B3_CAL_TRIES 5

int blake3_one_supported(enum blake3_one o)
{
    switch (o) {
    case BLAKE3_ONE_PORTABLE:
        return 1;
    case BLAKE3_ONE_SSE41: /* the row compression needs what the SSE4.1 lanes need */
        return blake3_path_supported(BLAKE3_PATH_SSE41);
    }
    return 0;
}

const char *blake3_one_name(enum blake3_one o)
{
    switch (o) {
    case BLAKE3_ONE_PORTABLE: return "portable";
    case BLAKE3_ONE_SSE41: return "sse41";
    }
    return "unknown";
}

static blake3_hash_lanes_fn hash_lanes_portable; /* below */

/* Each one-block compression: the compression, its 64-byte-output form, and
 * a whole single input (its blocks in sequence) on it. */
struct one_impl {
    blake3_compress_fn *compress;
    blake3_compress_xof_fn *xof;
    blake3_hash_lanes_fn *hash1;
};
static const struct one_impl one_impls[] = {
    [BLAKE3_ONE_PORTABLE] = { blake3_one_compress_portable, blake3_one_compress_xof_portable, hash_lanes_portable },
#if BLAKE3_HAVE_X86
    [BLAKE3_ONE_SSE41] = { blake3_one_compress_sse41, blake3_one_compress_xof_sse41, blake3_hash1_sse41 },
#endif
};

/* o's implementation; the portable one where this build has none. */
static const struct one_impl *one_impl(enum blake3_one o)
{
    size_t i = (size_t)o;
    return i < sizeof(one_impls) / sizeof(one_impls[0]) && one_impls[i].compress ? &one_impls[i] : &one_impls[0];
}

static uint64_t time_chain(blake3_compress_fn *fn)
{
    uint32_t cv[8];
    uint8_t block[BLAKE3_BLOCK_LEN];
    memcpy(cv, blake3_iv, sizeof(cv));
    for (int i = 0; i < BLAKE3_BLOCK_LEN; i++)
        block[i] = (uint8_t)(i * 37 + 11);
    uint64_t t0 = clock_mono_ns();
    for (int i = 0; i < B3_CAL_BLOCKS; i++)
        fn(cv, block, BLAKE3_BLOCK_LEN, (uint64_t)i, B3_CHUNK_START);
    uint64_t dt = clock_mono_ns() - t0;
    b3_cal_sink ^= cv[0];
    return dt ? dt : 1;
}

enum blake3_one blake3_one_calibrate(double ns[2])
{
    uint64_t best[2] = { UINT64_MAX, UINT64_MAX };
    int n = blake3_one_supported(BLAKE3_ONE_SSE41) ? 2 : 1;
    for (int t = 0; t < B3_CAL_TRIES; t++) {
        for (int o = 0; o < n; o++) {
            uint64_t dt = time_chain(one_impl((enum blake3_one)o)->compress);
            if (dt < best[o])
                best[o] = dt;
        }
    }
    for (int o = 0; o < 2; o++)
        ns[o] = o < n ? (double)best[o] / B3_CAL_BLOCKS : 0;
    return n == 2 && best[1] < best[0] ? BLAKE3_ONE_SSE41 : BLAKE3_ONE_PORTABLE;
}

int blake3_set_one(enum blake3_one o)
{
    if (o != BLAKE3_ONE_PORTABLE && o != BLAKE3_ONE_SSE41)
        return -EINVAL;
    if (!blake3_one_supported(o))
        return -ENOTSUP;
    atomic_store_explicit(&b3_one, (int)o, memory_order_relaxed);
    return 0;
}

enum blake3_one blake3_one_detect(double ns[2])
{
    ns[0] = ns[1] = 0;
    const char *env = getenv("LMCD_BLAKE3_ONE");
    if (env) {
        for (int o = BLAKE3_ONE_SSE41; o >= BLAKE3_ONE_PORTABLE; o--)
            if (!strcmp(env, blake3_one_name(o)) && blake3_one_supported(o))
                return o;
    }
    return blake3_one_calibrate(ns);
}

enum blake3_one blake3_get_one(void)
{
    int o = atomic_load_explicit(&b3_one, memory_order_relaxed);
    if (o < 0) {
        double ns[2];
        o = (int)blake3_one_detect(ns);
        for (int i = 0; i < 2; i++)
            atomic_store_explicit(&b3_one_ps[i], (uint64_t)(ns[i] * 1000), memory_order_relaxed);
        int expected = -1;
        /* Lose quietly to a concurrent blake3_set_one() or first use. */
        if (!atomic_compare_exchange_strong(&b3_one, &expected, o))
            o = expected;
    }
    return (enum blake3_one)o;
}

void blake3_one_measured(double ns[2])
{
    for (int i = 0; i < 2; i++)
        ns[i] = (double)atomic_load_explicit(&b3_one_ps[i], memory_order_relaxed) / 1000;
}

static void compress_in_place(uint32_t cv[8], const uint8_t block[64], uint8_t block_len,
                              uint64_t counter, uint8_t flags)
{
    one_impl(blake3_get_one())->compress(cv, block, block_len, counter, flags);
}

/* The full 64-byte output of one compression (extended output blocks). */
static void compress_xof(const uint32_t cv[8], const uint8_t block[64], uint8_t block_len,
                         uint64_t counter, uint8_t flags, uint8_t out[64])
{
    one_impl(blake3_get_one())->xof(cv, block, block_len, counter, flags, out);
}

static void words_to_bytes(const uint32_t w[8], uint8_t out[32])
{
    for (int i = 0; i < 8; i++)
        store32(out + 4 * i, w[i]);
}

static void bytes_to_words(const uint8_t in[32], uint32_t w[8])
{
    for (int i = 0; i < 8; i++)
        w[i] = load32(in + 4 * i);
}

static void hash_lanes_portable(const uint8_t *const *inputs, size_t blocks, const uint32_t key[8],
                                uint64_t counter, bool increment_counter, uint8_t flags,
                                uint8_t flags_start, uint8_t flags_end, uint8_t *out)
{
    uint32_t cv[8];
    memcpy(cv, key, sizeof(cv));
    for (size_t b = 0; b < blocks; b++)
        blake3_one_compress_portable(cv, inputs[0] + b * BLAKE3_BLOCK_LEN, BLAKE3_BLOCK_LEN, counter,
                                 blake3_block_flags(b, blocks, flags, flags_start, flags_end));
    (void)increment_counter;
    words_to_bytes(cv, out);
}

/* ---- path selection ---------------------------------------------------- */

/* The process-wide path: -1 until first use. Atomic because any thread may
 * hash (and tests may switch paths); a stale read only picks another path
 * that gives the same bytes. */
static _Atomic int b3_path = -1;

int blake3_path_supported(enum blake3_path p)
{
    switch (p) {
    case BLAKE3_PATH_PORTABLE:
        return 1;
#if BLAKE3_HAVE_X86
    case BLAKE3_PATH_SSE41:
        return __builtin_cpu_supports("sse4.1") ? 1 : 0;
    case BLAKE3_PATH_AVX2:
        return __builtin_cpu_supports("avx2") ? 1 : 0;
#endif
    default:
        return 0;
    }
}

const char *blake3_path_name(enum blake3_path p)
{
    switch (p) {
    case BLAKE3_PATH_PORTABLE: return "portable";
    case BLAKE3_PATH_SSE41: return "sse41";
    case BLAKE3_PATH_AVX2: return "avx2";
    }
    return "unknown";
}

int blake3_set_path(enum blake3_path p)
{
    if (p != BLAKE3_PATH_PORTABLE && p != BLAKE3_PATH_SSE41 && p != BLAKE3_PATH_AVX2)
        return -EINVAL;
    if (!blake3_path_supported(p))
        return -ENOTSUP;
    atomic_store_explicit(&b3_path, (int)p, memory_order_relaxed);
    return 0;
}

static enum blake3_path path_detect(void)
{
    const char *env = getenv("LMCD_BLAKE3_PATH");
    if (env) {
        for (int p = BLAKE3_PATH_AVX2; p >= BLAKE3_PATH_PORTABLE; p--)
            if (!strcmp(env, blake3_path_name(p)) && blake3_path_supported(p))
                return p;
    }
    for (int p = BLAKE3_PATH_AVX2; p > BLAKE3_PATH_PORTABLE; p--)
        if (blake3_path_supported(p))
            return p;
    return BLAKE3_PATH_PORTABLE;
}

enum blake3_path blake3_get_path(void)
{
    int p = atomic_load_explicit(&b3_path, memory_order_relaxed);
    if (p < 0) {
        p = (int)path_detect();
        int expected = -1;
        /* Lose quietly to a concurrent blake3_set_path(). */
        if (!atomic_compare_exchange_strong(&b3_path, &expected, p))
            p = expected;
    }
    return (enum blake3_path)p;
}

/* Runs the lanes over n inputs: 8 at a time on AVX2, 4 on SSE4.1, then one by
 * one on the one-block compression in use (blake3_get_one()). */
static void hash_many(const uint8_t *const *inputs, size_t n, size_t blocks, const uint32_t key[8],
                      uint64_t counter, bool inc, uint8_t flags, uint8_t flags_start,
                      uint8_t flags_end, uint8_t *out)
{
    enum blake3_path p = blake3_get_path();
#if BLAKE3_HAVE_X86
    if (p >= BLAKE3_PATH_AVX2) {
        for (; n >= 8; n -= 8, inputs += 8, out += 8 * 32, counter += inc ? 8 : 0)
            blake3_hash8_avx2(inputs, blocks, key, counter, inc, flags, flags_start, flags_end, out);
    }
    if (p >= BLAKE3_PATH_SSE41) {
        for (; n >= 4; n -= 4, inputs += 4, out += 4 * 32, counter += inc ? 4 : 0)
            blake3_hash4_sse41(inputs, blocks, key, counter, inc, flags, flags_start, flags_end, out);
    }
#else
    (void)p;
#endif
    blake3_hash_lanes_fn *one = n > 0 ? one_impl(blake3_get_one())->hash1 : hash_lanes_portable;
    for (; n > 0; n--, inputs++, out += 32, counter += inc ? 1 : 0)
        one(inputs, blocks, key, counter, inc, flags, flags_start, flags_end, out);
}

/* ---- the incremental hasher -------------------------------------------- */

struct b3_output {
    uint32_t cv[8];
    uint8_t block[64];
    uint8_t block_len;
    uint64_t counter;
    uint8_t flags;
};

static void hasher_setup(struct blake3_hasher *h, const uint32_t key[8], uint8_t flags)
{
    memcpy(h->key, key, sizeof(h->key));
    memcpy(h->cv, key, sizeof(h->cv));
    h->chunk_counter = 0;
    memset(h->buf, 0, sizeof(h->buf));
    h->buf_len = 0;
    h->blocks_compressed = 0;
    h->flags = flags;
    h->cv_stack_len = 0;
}

void blake3_init(struct blake3_hasher *h)
{
    hasher_setup(h, blake3_iv, 0);
}

void blake3_init_keyed(struct blake3_hasher *h, const uint8_t key[BLAKE3_KEY_LEN])
{
    uint32_t k[8];
    bytes_to_words(key, k);
    hasher_setup(h, k, B3_KEYED_HASH);
}

void blake3_init_derive_key(struct blake3_hasher *h, const char *context)
{
    struct blake3_hasher ctx;
    uint8_t ctx_key[BLAKE3_KEY_LEN];
    uint32_t k[8];
    hasher_setup(&ctx, blake3_iv, B3_DERIVE_KEY_CONTEXT);
    blake3_update(&ctx, context, strlen(context));
    blake3_finalize(&ctx, ctx_key, sizeof(ctx_key));
    bytes_to_words(ctx_key, k);
    hasher_setup(h, k, B3_DERIVE_KEY_MATERIAL);
}

static size_t chunk_len(const struct blake3_hasher *h)
{
    return (size_t)h->blocks_compressed * BLAKE3_BLOCK_LEN + h->buf_len;
}

static uint8_t chunk_start_flag(const struct blake3_hasher *h)
{
    return h->blocks_compressed == 0 ? B3_CHUNK_START : 0;
}

/* Absorbs bytes into the chunk in progress; the caller keeps it within 1 KB.
 * The last block stays buffered: it needs CHUNK_END, and maybe ROOT. */
static void chunk_update(struct blake3_hasher *h, const uint8_t *in, size_t len)
{
    while (len > 0) {
        if (h->buf_len == BLAKE3_BLOCK_LEN) {
            compress_in_place(h->cv, h->buf, BLAKE3_BLOCK_LEN, h->chunk_counter,
                              h->flags | chunk_start_flag(h));
            h->blocks_compressed++;
            h->buf_len = 0;
            memset(h->buf, 0, sizeof(h->buf));
        }
        size_t take = BLAKE3_BLOCK_LEN - h->buf_len;
        if (take > len)
            take = len;
        memcpy(h->buf + h->buf_len, in, take);
        h->buf_len += (uint8_t)take;
        in += take;
        len -= take;
    }
}

static void chunk_output(const struct blake3_hasher *h, struct b3_output *o)
{
    memcpy(o->cv, h->cv, sizeof(o->cv));
    memcpy(o->block, h->buf, sizeof(o->block));
    o->block_len = h->buf_len;
    o->counter = h->chunk_counter;
    o->flags = h->flags | chunk_start_flag(h) | B3_CHUNK_END;
}

static void parent_output(const uint8_t left[32], const uint8_t right[32], const uint32_t key[8],
                          uint8_t flags, struct b3_output *o)
{
    memcpy(o->cv, key, sizeof(o->cv));
    memcpy(o->block, left, 32);
    memcpy(o->block + 32, right, 32);
    o->block_len = BLAKE3_BLOCK_LEN;
    o->counter = 0;
    o->flags = flags | B3_PARENT;
}

static void output_cv(const struct b3_output *o, uint8_t out[32])
{
    uint32_t cv[8];
    memcpy(cv, o->cv, sizeof(cv));
    compress_in_place(cv, o->block, o->block_len, o->counter, o->flags);
    words_to_bytes(cv, out);
}

static void output_root_bytes(const struct b3_output *o, uint8_t *out, size_t out_len)
{
    uint8_t block[64];
    for (uint64_t counter = 0; out_len > 0; counter++) {
        compress_xof(o->cv, o->block, o->block_len, counter, o->flags | B3_ROOT, block);
        size_t take = out_len < sizeof(block) ? out_len : sizeof(block);
        memcpy(out, block, take);
        out += take;
        out_len -= take;
    }
}

/* Pushes the chaining value of a completed chunk; total_chunks counts it. */
static void push_chunk_cv(struct blake3_hasher *h, const uint8_t cv[32], uint64_t total_chunks)
{
    uint8_t merged[32];
    memcpy(merged, cv, 32);
    while ((total_chunks & 1) == 0) {
        struct b3_output o;
        h->cv_stack_len--;
        parent_output(h->cv_stack + (size_t)h->cv_stack_len * 32, merged, h->key, h->flags, &o);
        output_cv(&o, merged);
        total_chunks >>= 1;
    }
    memcpy(h->cv_stack + (size_t)h->cv_stack_len * 32, merged, 32);
    h->cv_stack_len++;
}

static void chunk_reset(struct blake3_hasher *h, uint64_t counter)
{
    memcpy(h->cv, h->key, sizeof(h->cv));
    h->chunk_counter = counter;
    memset(h->buf, 0, sizeof(h->buf));
    h->buf_len = 0;
    h->blocks_compressed = 0;
}

void blake3_update(struct blake3_hasher *h, const void *data, size_t len)
{
    const uint8_t *in = data;
    while (len > 0) {
        if (chunk_len(h) == BLAKE3_CHUNK_LEN) {
            /* More input follows, so this chunk is not the root. */
            struct b3_output o;
            uint8_t cv[32];
            chunk_output(h, &o);
            output_cv(&o, cv);
            push_chunk_cv(h, cv, h->chunk_counter + 1);
            chunk_reset(h, h->chunk_counter + 1);
        }
        if (chunk_len(h) == 0 && len > BLAKE3_CHUNK_LEN) {
            /* Whole chunks with input after them: hash them side by side. */
            size_t n = (len - 1) / BLAKE3_CHUNK_LEN;
            if (n > B3_UPDATE_GROUP)
                n = B3_UPDATE_GROUP;
            const uint8_t *inputs[B3_UPDATE_GROUP];
            uint8_t cvs[B3_UPDATE_GROUP * 32];
            for (size_t i = 0; i < n; i++)
                inputs[i] = in + i * BLAKE3_CHUNK_LEN;
            hash_many(inputs, n, BLAKE3_CHUNK_LEN / BLAKE3_BLOCK_LEN, h->key, h->chunk_counter,
                      true, h->flags, B3_CHUNK_START, B3_CHUNK_END, cvs);
            for (size_t i = 0; i < n; i++)
                push_chunk_cv(h, cvs + i * 32, h->chunk_counter + i + 1);
            chunk_reset(h, h->chunk_counter + n);
            in += n * BLAKE3_CHUNK_LEN;
            len -= n * BLAKE3_CHUNK_LEN;
            continue;
        }
        size_t take = BLAKE3_CHUNK_LEN - chunk_len(h);
        if (take > len)
            take = len;
        chunk_update(h, in, take);
        in += take;
        len -= take;
    }
}

void blake3_finalize(const struct blake3_hasher *h, uint8_t *out, size_t out_len)
{
    struct b3_output o;
    chunk_output(h, &o);
    for (size_t i = h->cv_stack_len; i > 0; i--) {
        uint8_t right[32];
        output_cv(&o, right);
        parent_output(h->cv_stack + (i - 1) * 32, right, h->key, h->flags, &o);
    }
    output_root_bytes(&o, out, out_len);
}

void blake3_hash(const void *data, size_t len, uint8_t out[BLAKE3_OUT_LEN])
{
    struct blake3_hasher h;
    blake3_init(&h);
    blake3_update(&h, data, len);
    blake3_finalize(&h, out, BLAKE3_OUT_LEN);
}

/* ---- many equal-length messages ---------------------------------------- */

/* Messages per group: one hasher each on the stack (~1.8 KB). */
#define B3_BATCH_GROUP 8

static void batch_group(const uint8_t *const *msgs, size_t n, size_t len,
                        uint8_t (*out)[BLAKE3_OUT_LEN])
{
    struct blake3_hasher hs[B3_BATCH_GROUP];
    const uint8_t *inputs[B3_BATCH_GROUP];
    uint8_t cvs[B3_BATCH_GROUP * 32];
    /* The last chunk holds 1..1024 bytes (or 0 for an empty message). */
    size_t nchunks = len == 0 ? 1 : (len + BLAKE3_CHUNK_LEN - 1) / BLAKE3_CHUNK_LEN;
    size_t tail = len - (nchunks - 1) * BLAKE3_CHUNK_LEN;
    /* Full blocks of the last chunk that are not its last block. */
    size_t tail_blocks = tail == 0 ? 0 : (tail - 1) / BLAKE3_BLOCK_LEN;

    for (size_t i = 0; i < n; i++)
        blake3_init(&hs[i]);
    for (size_t c = 0; c + 1 < nchunks; c++) {
        for (size_t i = 0; i < n; i++)
            inputs[i] = msgs[i] + c * BLAKE3_CHUNK_LEN;
        hash_many(inputs, n, BLAKE3_CHUNK_LEN / BLAKE3_BLOCK_LEN, blake3_iv, c, false, 0,
                  B3_CHUNK_START, B3_CHUNK_END, cvs);
        for (size_t i = 0; i < n; i++)
            push_chunk_cv(&hs[i], cvs + i * 32, c + 1);
    }
    size_t off = (nchunks - 1) * BLAKE3_CHUNK_LEN;
    if (tail_blocks > 0) {
        /* The last chunk's leading blocks, leaving its final block to finalize. */
        for (size_t i = 0; i < n; i++)
            inputs[i] = msgs[i] + off;
        hash_many(inputs, n, tail_blocks, blake3_iv, nchunks - 1, false, 0, B3_CHUNK_START, 0, cvs);
    }
    for (size_t i = 0; i < n; i++) {
        struct blake3_hasher *h = &hs[i];
        h->chunk_counter = nchunks - 1;
        if (tail_blocks > 0)
            bytes_to_words(cvs + i * 32, h->cv);
        h->blocks_compressed = (uint8_t)tail_blocks;
        h->buf_len = (uint8_t)(tail - tail_blocks * BLAKE3_BLOCK_LEN);
        memcpy(h->buf, msgs[i] + off + tail_blocks * BLAKE3_BLOCK_LEN, h->buf_len);
        blake3_finalize(h, out[i], BLAKE3_OUT_LEN);
    }
}

void blake3_hash_batch(const uint8_t *const *msgs, size_t n, size_t len,
                       uint8_t (*out)[BLAKE3_OUT_LEN])
{
    for (size_t i = 0; i < n; i += B3_BATCH_GROUP) {
        size_t k = n - i < B3_BATCH_GROUP ? n - i : B3_BATCH_GROUP;
        batch_group(msgs + i, k, len, out + i);
    }
}
