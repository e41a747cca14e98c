#include <criterion/criterion.h>
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/blake3.h"
#include "engine/blake3_impl.h"
#include "util/clock.h"

/* The official BLAKE3 vectors, kept in the repository (tests/data/README.md
 * says where they come from); tests run from the repository root. */
static json_t *load_vectors(void)
{
    const char *path = "tests/data/blake3_test_vectors.json";
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    cr_assert_not_null(root, "cannot read BLAKE3 vectors %s: %s", path, err.text);
    return root;
}

static void unhex(const char *hex, uint8_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned b;
        cr_assert_eq(sscanf(hex + 2 * i, "%2x", &b), 1);
        out[i] = (uint8_t)b;
    }
}

static void tohex(const uint8_t *in, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", in[i]);
}

static uint8_t *vector_input(size_t len)
{
    uint8_t *in = malloc(len + 1);
    for (size_t i = 0; i < len; i++)
        in[i] = (uint8_t)(i % 251);
    return in;
}

/* Feeds the input in uneven pieces so every boundary lands mid-update somewhere. */
static void update_in_pieces(struct blake3_hasher *h, const uint8_t *in, size_t len, size_t seed)
{
    size_t off = 0, step = 1 + seed % 7;
    while (off < len) {
        size_t take = step < len - off ? step : len - off;
        blake3_update(h, in + off, take);
        off += take;
        step = step * 3 + 1;
        if (step > 5000)
            step = 1 + step % 13;
    }
}

enum mode { MODE_HASH, MODE_KEYED, MODE_DERIVE };

static void init_mode(struct blake3_hasher *h, enum mode m, json_t *root)
{
    if (m == MODE_HASH)
        blake3_init(h);
    else if (m == MODE_KEYED)
        blake3_init_keyed(h, (const uint8_t *)json_string_value(json_object_get(root, "key")));
    else
        blake3_init_derive_key(h, json_string_value(json_object_get(root, "context_string")));
}

/* Every vector (all lengths; hash, keyed_hash and derive_key; the full
 * extended output) on lanes path `path` with one-block compression `one`. */
static void check_vectors_on(enum blake3_path path, enum blake3_one one)
{
    static const char *const names[] = { "hash", "keyed_hash", "derive_key" };
    if (!blake3_path_supported(path))
        cr_skip_test("CPU lacks %s", blake3_path_name(path));
    if (!blake3_one_supported(one))
        cr_skip_test("CPU lacks %s", blake3_one_name(one));
    cr_assert_eq(blake3_set_path(path), 0);
    cr_assert_eq(blake3_get_path(), path);
    cr_assert_eq(blake3_set_one(one), 0);
    cr_assert_eq(blake3_get_one(), one);
    json_t *root = load_vectors();
    cr_assert_eq(strlen(json_string_value(json_object_get(root, "key"))), BLAKE3_KEY_LEN);
    json_t *cases = json_object_get(root, "cases");
    cr_assert(json_array_size(cases) >= 30, "too few vector cases");
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        size_t len = (size_t)json_integer_value(json_object_get(c, "input_len"));
        uint8_t *in = vector_input(len);
        for (enum mode m = MODE_HASH; m <= MODE_DERIVE; m++) {
            const char *hex = json_string_value(json_object_get(c, names[m]));
            size_t olen = strlen(hex) / 2;
            uint8_t want[256], got[256];
            cr_assert(olen <= sizeof(want) && olen >= 32);
            unhex(hex, want, olen);

            struct blake3_hasher h;
            init_mode(&h, m, root);
            blake3_update(&h, in, len);
            blake3_finalize(&h, got, olen);
            cr_assert_arr_eq(got, want, olen, "%s len %zu path %s one %s", names[m], len,
                             blake3_path_name(path), blake3_one_name(one));
            blake3_finalize(&h, got, 32); /* finalize leaves the hasher reusable */
            cr_assert_arr_eq(got, want, 32, "%s len %zu short output", names[m], len);

            init_mode(&h, m, root);
            update_in_pieces(&h, in, len, i + m);
            blake3_finalize(&h, got, olen);
            cr_assert_arr_eq(got, want, olen, "%s len %zu in pieces", names[m], len);
            if (m == MODE_HASH) {
                blake3_hash(in, len, got);
                cr_assert_arr_eq(got, want, 32, "one-shot len %zu", len);
                const uint8_t *msgs[11];
                uint8_t outs[11][32];
                for (int k = 0; k < 11; k++)
                    msgs[k] = in;
                blake3_hash_batch(msgs, 11, len, outs);
                for (int k = 0; k < 11; k++)
                    cr_assert_arr_eq(outs[k], want, 32, "batch lane %d len %zu", k, len);
            }
        }
        free(in);
    }
    json_decref(root);
}

/* Lanes portable: every compression runs on the one-block path named. */
Test(blake3, vectors_portable) { check_vectors_on(BLAKE3_PATH_PORTABLE, BLAKE3_ONE_PORTABLE); }
Test(blake3, vectors_one_sse41) { check_vectors_on(BLAKE3_PATH_PORTABLE, BLAKE3_ONE_SSE41); }
/* The lanes, with either one-block path for what they leave over. */
Test(blake3, vectors_sse41) { check_vectors_on(BLAKE3_PATH_SSE41, BLAKE3_ONE_PORTABLE); }
Test(blake3, vectors_sse41_one_sse41) { check_vectors_on(BLAKE3_PATH_SSE41, BLAKE3_ONE_SSE41); }
Test(blake3, vectors_avx2) { check_vectors_on(BLAKE3_PATH_AVX2, BLAKE3_ONE_PORTABLE); }
Test(blake3, vectors_avx2_one_sse41) { check_vectors_on(BLAKE3_PATH_AVX2, BLAKE3_ONE_SSE41); }

Test(blake3, set_path_rejects_unknown)
{
    cr_assert_eq(blake3_set_path((enum blake3_path)7), -EINVAL);
    cr_assert_eq(blake3_path_supported(BLAKE3_PATH_PORTABLE), 1);
    cr_assert_str_eq(blake3_path_name(BLAKE3_PATH_AVX2), "avx2");
    cr_assert_eq(blake3_set_one((enum blake3_one)5), -EINVAL);
    cr_assert_eq(blake3_one_supported(BLAKE3_ONE_PORTABLE), 1);
    cr_assert_str_eq(blake3_one_name(BLAKE3_ONE_SSE41), "sse41");
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* Batches of distinct messages, every path, against the incremental hasher. */
Test(blake3, batch_matches_one_shot_on_every_path)
{
    static const size_t lens[] = { 0, 1, 63, 64, 65, 1023, 1024, 1025, 1056, 2048, 2080, 5000, 9216 };
    uint8_t *buf = malloc(13 * 9216);
    for (size_t i = 0; i < 13 * 9216; i++)
        buf[i] = (uint8_t)rng();
    for (int p = BLAKE3_PATH_PORTABLE; p <= BLAKE3_PATH_AVX2; p++) {
        if (blake3_set_path(p) != 0)
            continue;
        for (size_t li = 0; li < sizeof(lens) / sizeof(lens[0]); li++) {
            const uint8_t *msgs[13];
            uint8_t outs[13][32], want[32];
            for (int k = 0; k < 13; k++)
                msgs[k] = buf + (size_t)k * 9216;
            blake3_hash_batch(msgs, 13, lens[li], outs);
            for (int k = 0; k < 13; k++) {
                blake3_hash(msgs[k], lens[li], want);
                cr_assert_arr_eq(outs[k], want, 32, "path %d len %zu lane %d", p, lens[li], k);
            }
        }
    }
    free(buf);
}

/* An independent implementation (Debian's b3sum, Rust) on 200 seeded random inputs. */
Test(blake3, agrees_with_b3sum_on_random_inputs)
{
    enum { N = 200, MAXLEN = 100 * 1024 };
    char dir[] = "/tmp/lmcd-b3-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char (*want)[65] = calloc(N, 65);
    uint8_t *buf = malloc(MAXLEN);
    size_t cmdcap = 64 + (size_t)N * (sizeof(dir) + 8);
    char *cmd = malloc(cmdcap);
    size_t used = (size_t)snprintf(cmd, cmdcap, "b3sum --no-names");
    rng_state = 12345;
    for (int i = 0; i < N; i++) {
        size_t len = (size_t)(rng() % (MAXLEN + 1));
        if (i < 3)
            len = (size_t)i * 1024; /* 0 and exact chunk multiples */
        for (size_t j = 0; j < len; j++)
            buf[j] = (uint8_t)rng();
        char path[64];
        snprintf(path, sizeof(path), "%s/%03d", dir, i);
        FILE *f = fopen(path, "wb");
        cr_assert_not_null(f);
        cr_assert_eq(fwrite(buf, 1, len, f), len);
        fclose(f);
        uint8_t d[32];
        blake3_hash(buf, len, d);
        tohex(d, 32, want[i]);
        used += (size_t)snprintf(cmd + used, cmdcap - used, " %s", path);
    }
    snprintf(cmd + used, cmdcap - used, " 2>&1");
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    char line[256];
    int got = 0;
    while (fgets(line, sizeof(line), p) && got < N) {
        line[strcspn(line, "\n")] = 0;
        cr_assert_str_eq(line, want[got], "input %d: b3sum says %s", got, line);
        got++;
    }
    int st = pclose(p);
    cr_assert_eq(got, N, "b3sum gave %d digests (is b3sum installed? mk/deps.sh installs it)", got);
    cr_assert_eq(st, 0);
    for (int i = 0; i < N; i++) {
        char path[64];
        snprintf(path, sizeof(path), "%s/%03d", dir, i);
        unlink(path);
    }
    rmdir(dir);
    free(cmd);
    free(buf);
    free(want);
}

static void random_bytes(uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)rng();
}

/* The SSE4.1 row compression against the portable one, word for word, on
 * random chaining values, blocks, lengths, 64-bit counters and flags. */
Test(blake3, one_block_sse41_matches_portable)
{
#if BLAKE3_HAVE_X86
    if (!blake3_one_supported(BLAKE3_ONE_SSE41))
        cr_skip_test("CPU lacks SSE4.1");
    rng_state = 777;
    for (int it = 0; it < 20000; it++) {
        uint32_t cv[8], a[8], b[8];
        uint8_t block[64], xa[64], xb[64];
        random_bytes((uint8_t *)cv, sizeof(cv));
        random_bytes(block, sizeof(block));
        uint64_t counter = rng();
        if (it % 3 == 0)
            counter &= 0xffffffff; /* the common case: high word 0 */
        uint8_t len = (uint8_t)(rng() % 65), flags = (uint8_t)rng();
        memcpy(a, cv, sizeof(cv));
        memcpy(b, cv, sizeof(cv));
        blake3_one_compress_portable(a, block, len, counter, flags);
        blake3_one_compress_sse41(b, block, len, counter, flags);
        cr_assert_arr_eq(a, b, sizeof(a), "in place, iteration %d", it);
        blake3_one_compress_xof_portable(cv, block, len, counter, flags, xa);
        blake3_one_compress_xof_sse41(cv, block, len, counter, flags, xb);
        cr_assert_arr_eq(xa, xb, sizeof(xa), "xof, iteration %d", it);
    }
    /* One input of several blocks with the chaining value kept in registers. */
    for (int it = 0; it < 200; it++) {
        uint8_t in[16 * 64], got[32], want[32];
        uint32_t key[8], cv[8];
        size_t blocks = 1 + rng() % 16;
        random_bytes(in, sizeof(in));
        random_bytes((uint8_t *)key, sizeof(key));
        uint64_t counter = rng();
        uint8_t flags = (uint8_t)rng(), fs = (uint8_t)rng(), fe = (uint8_t)rng();
        const uint8_t *inputs[1] = { in };
        blake3_hash1_sse41(inputs, blocks, key, counter, true, flags, fs, fe, got);
        memcpy(cv, key, sizeof(cv));
        for (size_t k = 0; k < blocks; k++)
            blake3_one_compress_portable(cv, in + 64 * k, 64, counter,
                                     (uint8_t)(flags | (k == 0 ? fs : 0) | (k + 1 == blocks ? fe : 0)));
        for (int w = 0; w < 8; w++) {
            for (int k = 0; k < 4; k++)
                want[4 * w + k] = (uint8_t)(cv[w] >> (8 * k));
        }
        cr_assert_arr_eq(got, want, 32, "hash1, %zu blocks", blocks);
    }
#else
    cr_skip_test("no x86");
#endif
}

/* Whole hashes of random inputs, every mode and a long extended output, on
 * both one-block paths. */
Test(blake3, one_block_paths_agree_on_random_inputs)
{
    if (!blake3_one_supported(BLAKE3_ONE_SSE41))
        cr_skip_test("CPU lacks SSE4.1");
    enum { MAXLEN = 9000, OUT = 300 };
    uint8_t *in = malloc(MAXLEN), key[32];
    rng_state = 4242;
    for (int it = 0; it < 300; it++) {
        size_t len = (size_t)(rng() % MAXLEN);
        size_t olen = 1 + (size_t)(rng() % OUT);
        random_bytes(in, len);
        random_bytes(key, sizeof(key));
        uint8_t out[2][3][OUT];
        for (int o = BLAKE3_ONE_PORTABLE; o <= BLAKE3_ONE_SSE41; o++) {
            cr_assert_eq(blake3_set_one(o), 0);
            struct blake3_hasher h;
            blake3_init(&h);
            blake3_update(&h, in, len);
            blake3_finalize(&h, out[o][0], olen);
            blake3_init_keyed(&h, key);
            blake3_update(&h, in, len);
            blake3_finalize(&h, out[o][1], olen);
            blake3_init_derive_key(&h, "lmcd test 2026 one-block paths");
            update_in_pieces(&h, in, len, (size_t)it);
            blake3_finalize(&h, out[o][2], olen);
        }
        for (int m = 0; m < 3; m++)
            cr_assert_arr_eq(out[0][m], out[1][m], olen, "mode %d len %zu out %zu", m, len, olen);
    }
    free(in);
}

/* The start-up choice: a short timing of both, or the environment. */
Test(blake3, one_block_choice)
{
    double ns[2];
    uint64_t t0 = clock_mono_ns();
    enum blake3_one o = blake3_one_calibrate(ns);
    uint64_t dt = clock_mono_ns() - t0;
    cr_assert(blake3_one_supported(o));
    cr_assert_gt(ns[0], 0);
    cr_assert_eq(ns[1] > 0, blake3_one_supported(BLAKE3_ONE_SSE41) == 1);
    if (ns[1] > 0)
        cr_assert_eq(o, ns[1] < ns[0] ? BLAKE3_ONE_SSE41 : BLAKE3_ONE_PORTABLE, "%f %f", ns[0], ns[1]);
    /* Well under a millisecond natively; the bound leaves room for sanitizers and valgrind. */
    cr_assert_lt(dt, 200 * 1000 * 1000ull, "calibration took %llu ns", (unsigned long long)dt);

    cr_assert_eq(setenv("LMCD_BLAKE3_ONE", "portable", 1), 0);
    cr_assert_eq(blake3_one_detect(ns), BLAKE3_ONE_PORTABLE);
    cr_assert(ns[0] == 0 && ns[1] == 0, "not timed when set");
    if (blake3_one_supported(BLAKE3_ONE_SSE41)) {
        cr_assert_eq(setenv("LMCD_BLAKE3_ONE", "sse41", 1), 0);
        cr_assert_eq(blake3_one_detect(ns), BLAKE3_ONE_SSE41);
    }
    cr_assert_eq(setenv("LMCD_BLAKE3_ONE", "bogus", 1), 0);
    blake3_one_detect(ns);
    cr_assert_gt(ns[0], 0, "an unknown name falls back to timing");
    unsetenv("LMCD_BLAKE3_ONE");
}

static void *hash_empty(void *arg)
{
    uint8_t *out = arg;
    blake3_hash("", 0, out);
    return NULL;
}

/* Several threads reaching the first use (the timing) at once all get the
 * right digest; under TSan, no race on the choice. */
Test(blake3, first_use_from_several_threads)
{
    enum { T = 4 };
    pthread_t th[T];
    uint8_t out[T][32], want[32];
    unhex("af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262", want, 32);
    for (int i = 0; i < T; i++)
        cr_assert_eq(pthread_create(&th[i], NULL, hash_empty, out[i]), 0);
    for (int i = 0; i < T; i++) {
        pthread_join(th[i], NULL);
        cr_assert_arr_eq(out[i], want, 32, "thread %d", i);
    }
    cr_assert(blake3_one_supported(blake3_get_one()));
}
