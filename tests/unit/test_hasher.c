#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "engine/blake3.h"
#include "engine/hasher.h"
#include "util/log.h"

static void unhex32(const char *hex, uint8_t out[32])
{
    for (int i = 0; i < 32; i++) {
        unsigned b;
        cr_assert_eq(sscanf(hex + 2 * i, "%2x", &b), 1);
        out[i] = (uint8_t)b;
    }
}

static void assert_digest(const uint8_t *got, const char *hex, const char *what)
{
    uint8_t want[32];
    unhex32(hex, want);
    cr_assert_arr_eq(got, want, 32, "%s", what);
}

#define V_NONE "7e3eff9ef7613a50340eb12677ee03b83ac759fcba9bb32705f07248d56d473b"
#define V_CHUNK0 "084547b6c40ed5b05ba8cd0305db5bf74d5617673948d9ed193ab7d6cbc484d4"
#define V_CHUNK1 "e5ffee45c2b9db326814c9692dc594369887ba3b0df5761817820b60f864c8e0"
#define V_SMALL "6309ed506b8721905753f5c73c070bb21c3aafbd9b474b1e231f41368b71123c"

static uint32_t *iota_tokens(size_t n)
{
    uint32_t *t = malloc(n * sizeof(*t) + 1);
    for (size_t i = 0; i < n; i++)
        t[i] = (uint32_t)i;
    return t;
}

Test(hasher, appendix_a_none_hash)
{
    struct hasher h;
    cr_assert_eq(hasher_init(&h, HASHER_BLAKE3, 256), 0);
    assert_digest(h.none_hash, V_NONE, "vector 1: NONE_HASH");
}

Test(hasher, appendix_a_first_and_second_chunk)
{
    struct hasher h;
    uint8_t d0[32], d1[32];
    uint32_t *t = iota_tokens(512);
    cr_assert_eq(hasher_init(&h, HASHER_BLAKE3, 256), 0);
    hasher_chunk(&h, NULL, t, d0);
    assert_digest(d0, V_CHUNK0, "vector 2: tokens 0..255");
    hasher_chunk(&h, d0, t + 256, d1);
    assert_digest(d1, V_CHUNK1, "vector 3: tokens 256..511");
    free(t);
}

Test(hasher, appendix_a_chunk_size_4)
{
    struct hasher h;
    uint8_t d[32];
    const uint32_t t[4] = { 1, 2, 3, 4 };
    cr_assert_eq(hasher_init(&h, HASHER_BLAKE3, 4), 0);
    hasher_chunk(&h, NULL, t, d);
    assert_digest(d, V_SMALL, "vector 4: chunk size 4, [1,2,3,4]");
}

Test(hasher, appendix_a_only_full_chunks)
{
    struct hasher h;
    struct hasher_chain c;
    uint32_t *t = iota_tokens(512);
    cr_assert_eq(hasher_init(&h, HASHER_BLAKE3, 256), 0);
    hasher_chain_init(&c);
    cr_assert_eq(hasher_chain_update(&h, &c, t, 511, 0), 0);
    cr_assert_eq(c.len, 1);
    assert_digest(c.hashes[0], V_CHUNK0, "511 tokens, chunk 0");
    cr_assert_eq(hasher_chain_update(&h, &c, t, 512, 1), 0);
    cr_assert_eq(c.len, 2);
    assert_digest(c.hashes[0], V_CHUNK0, "512 tokens, chunk 0");
    assert_digest(c.hashes[1], V_CHUNK1, "512 tokens, chunk 1");
    cr_assert_eq(hasher_chain_update(&h, &c, t, 255, 2), 0);
    cr_assert_eq(c.len, 0);
    hasher_chain_free(&c);
    cr_assert_null(c.hashes);
    free(t);
}

static uint64_t rng_state = 88172645463325252ull;
static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void random_tokens(uint32_t *t, size_t n)
{
    for (size_t i = 0; i < n; i++)
        t[i] = (uint32_t)rng();
}

/* From scratch with hasher_chunk only: the reference for the other paths. */
static void scratch_hashes(const struct hasher *h, const uint32_t *t, size_t n, uint8_t (*out)[32])
{
    for (size_t i = 0; i < n / h->chunk_size; i++)
        hasher_chunk(h, i ? out[i - 1] : NULL, t + i * h->chunk_size, out[i]);
}

static void incremental_matches_scratch(enum hasher_algo algo, uint32_t chunk)
{
    struct hasher h;
    cr_assert_eq(hasher_init(&h, algo, chunk), 0);
    size_t max = 12 * (size_t)chunk + 17;
    uint32_t *t = malloc(max * sizeof(*t));
    uint8_t (*want)[32] = malloc((max / chunk + 1) * 32);
    for (int round = 0; round < 40; round++) {
        size_t n = (size_t)(rng() % (max + 1));
        random_tokens(t, n);
        scratch_hashes(&h, t, n, want);
        struct hasher_chain c;
        hasher_chain_init(&c);
        /* Grow through random split points, keeping what is already there. */
        size_t at = 0;
        while (at < n) {
            at += (size_t)(rng() % (3 * chunk));
            if (at > n)
                at = n;
            size_t keep = hasher_common_chunks(&h, t, at, t, n);
            cr_assert_eq(hasher_chain_update(&h, &c, t, at, keep), 0);
            cr_assert_eq(c.len, at / chunk);
        }
        cr_assert_eq(c.len, n / chunk);
        for (size_t i = 0; i < c.len; i++)
            cr_assert_arr_eq(c.hashes[i], want[i], 32, "algo %d chunk %zu of %zu", algo, i, c.len);
        hasher_chain_free(&c);
    }
    free(want);
    free(t);
}

Test(hasher, incremental_equals_scratch_blake3)
{
    incremental_matches_scratch(HASHER_BLAKE3, 256);
    incremental_matches_scratch(HASHER_BLAKE3, 16);
    incremental_matches_scratch(HASHER_BLAKE3, 300); /* streamed messages */
}

Test(hasher, incremental_equals_scratch_xxh3)
{
    incremental_matches_scratch(HASHER_XXH3_128, 256);
    incremental_matches_scratch(HASHER_XXH3_128, 300);
}

Test(hasher, replaced_token_list_rehashes_from_first_difference)
{
    struct hasher h;
    struct hasher_chain c;
    uint32_t *a = iota_tokens(1024), *b = iota_tokens(1024);
    uint8_t want[4][32];
    cr_assert_eq(hasher_init(&h, HASHER_BLAKE3, 256), 0);
    b[600] = 7; /* chunk 2 differs */
    hasher_chain_init(&c);
    cr_assert_eq(hasher_chain_update(&h, &c, a, 1024, 0), 0);
    size_t keep = hasher_common_chunks(&h, a, 1024, b, 1024);
    cr_assert_eq(keep, 2);
    cr_assert_eq(hasher_chain_update(&h, &c, b, 1024, keep), 0);
    scratch_hashes(&h, b, 1024, want);
    for (int i = 0; i < 4; i++)
        cr_assert_arr_eq(c.hashes[i], want[i], 32, "chunk %d", i);
    hasher_chain_free(&c);
    free(a);
    free(b);
}

/* The batch path (SIMD lanes) against single steps, every BLAKE3 path. */
Test(hasher, update_many_matches_single_sessions)
{
    enum { S = 11 };
    struct hasher h;
    struct hasher_chain chains[S], *cp[S];
    uint32_t *toks[S];
    const uint32_t *ctoks[S];
    size_t n[S], keep[S];
    cr_assert_eq(hasher_init(&h, HASHER_BLAKE3, 256), 0);
    for (int p = BLAKE3_PATH_PORTABLE; p <= BLAKE3_PATH_AVX2; p++) {
        if (blake3_set_path(p) != 0)
            continue;
        for (int i = 0; i < S; i++) {
            n[i] = (size_t)(rng() % (9 * 256));
            toks[i] = malloc((n[i] + 1) * sizeof(uint32_t));
            ctoks[i] = toks[i];
            random_tokens(toks[i], n[i]);
            hasher_chain_init(&chains[i]);
            cp[i] = &chains[i];
            /* Half the sessions already hold a valid prefix. */
            size_t pre = i % 2 ? n[i] / 2 : 0;
            cr_assert_eq(hasher_chain_update(&h, &chains[i], toks[i], pre, 0), 0);
            keep[i] = pre / 256;
        }
        cr_assert_eq(hasher_chain_update_many(&h, cp, ctoks, n, keep, S), 0);
        for (int i = 0; i < S; i++) {
            uint8_t (*want)[32] = malloc((n[i] / 256 + 1) * 32);
            scratch_hashes(&h, toks[i], n[i], want);
            cr_assert_eq(chains[i].len, n[i] / 256);
            for (size_t k = 0; k < chains[i].len; k++)
                cr_assert_arr_eq(chains[i].hashes[k], want[k], 32, "path %d session %d chunk %zu", p,
                                 i, k);
            free(want);
            hasher_chain_free(&chains[i]);
            free(toks[i]);
        }
    }
}

/* Chains (packed and streamed messages) and LMCache's vectors on each
 * one-block compression. */
Test(hasher, chains_agree_on_both_one_block_paths)
{
    struct hasher h;
    uint32_t *t = iota_tokens(512);
    uint32_t *r = malloc(40 * 300 * sizeof(uint32_t));
    random_tokens(r, 40 * 300);
    uint8_t (*want)[40][32] = malloc(2 * 40 * 32); /* [chunk size 256, 300] */
    for (int o = BLAKE3_ONE_PORTABLE; o <= BLAKE3_ONE_SSE41; o++) {
        if (blake3_set_one(o) != 0)
            continue;
        uint8_t d0[32], d1[32];
        cr_assert_eq(hasher_init(&h, HASHER_BLAKE3, 256), 0);
        assert_digest(h.none_hash, V_NONE, "NONE_HASH");
        hasher_chunk(&h, NULL, t, d0);
        assert_digest(d0, V_CHUNK0, blake3_one_name(o));
        hasher_chunk(&h, d0, t + 256, d1);
        assert_digest(d1, V_CHUNK1, blake3_one_name(o));
        for (uint32_t cs = 256; cs <= 300; cs += 44) {
            struct hasher_chain c;
            cr_assert_eq(hasher_init(&h, HASHER_BLAKE3, cs), 0);
            hasher_chain_init(&c);
            cr_assert_eq(hasher_chain_update(&h, &c, r, 40 * (size_t)cs, 0), 0);
            cr_assert_eq(c.len, 40);
            if (o == BLAKE3_ONE_PORTABLE)
                memcpy(want[cs == 300], c.hashes, 40 * 32);
            else
                cr_assert_arr_eq(c.hashes, want[cs == 300], 40 * 32, "chunk size %u on %s", cs,
                                 blake3_one_name(o));
            hasher_chain_free(&c);
        }
    }
    free(want);
    free(r);
    free(t);
}

/* The BE32 packing (four tokens per shuffle, then one by one) against bytes
 * laid out here, for chunk sizes that leave every remainder, packed and
 * streamed (above 256 tokens). */
Test(hasher, packs_any_chunk_size)
{
    static const uint32_t sizes[] = { 1, 2, 3, 5, 7, 255, 257, 259, 518 };
    uint32_t *t = malloc(518 * sizeof(uint32_t));
    uint8_t *msg = malloc(32 + 4 * 518);
    random_tokens(t, 518);
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        struct hasher h;
        uint8_t got[32], want[32];
        cr_assert_eq(hasher_init(&h, HASHER_BLAKE3, sizes[k]), 0);
        hasher_chunk(&h, NULL, t, got);
        memcpy(msg, h.none_hash, 32);
        for (uint32_t i = 0; i < sizes[k]; i++) {
            msg[32 + 4 * i] = (uint8_t)(t[i] >> 24);
            msg[33 + 4 * i] = (uint8_t)(t[i] >> 16);
            msg[34 + 4 * i] = (uint8_t)(t[i] >> 8);
            msg[35 + 4 * i] = (uint8_t)t[i];
        }
        blake3_hash(msg, 32 + 4 * (size_t)sizes[k], want);
        cr_assert_arr_eq(got, want, 32, "chunk size %u", sizes[k]);
    }
    free(msg);
    free(t);
}

Test(hasher, chunk_many_xxh3_and_none_prev)
{
    struct hasher h;
    uint32_t *t = iota_tokens(512);
    const uint8_t *prevs[2] = { NULL, NULL };
    const uint32_t *tk[2] = { t, t + 256 };
    uint8_t out[2][32], one[32];
    cr_assert_eq(hasher_init(&h, HASHER_XXH3_128, 256), 0);
    cr_assert_eq(hasher_chunk_many(&h, prevs, tk, 2, out), 0);
    hasher_chunk(&h, NULL, t + 256, one);
    cr_assert_arr_eq(out[1], one, 32);
    cr_assert_eq(hasher_init(&h, HASHER_BLAKE3, 256), 0);
    cr_assert_eq(hasher_chunk_many(&h, prevs, tk, 2, out), 0);
    assert_digest(out[0], V_CHUNK0, "batch from NONE_HASH");
    free(t);
}

Test(hasher, xxh3_is_deterministic_and_documented)
{
    struct hasher h, h2;
    cr_assert_eq(hasher_init(&h, HASHER_XXH3_128, 256), 0);
    cr_assert_eq(hasher_init(&h2, HASHER_XXH3_128, 256), 0);
    cr_assert_arr_eq(h.none_hash, h2.none_hash, 32);
    /* NONE_HASH = canonical XXH3_128(12 zero bytes) || 16 zero bytes. */
    static const uint8_t zeros[16];
    XXH128_canonical_t can;
    XXH128_canonicalFromHash(&can, XXH3_128bits(zeros, 12));
    cr_assert_arr_eq(h.none_hash, can.digest, 16);
    cr_assert_arr_eq(h.none_hash + 16, zeros, 16);

    uint32_t *t = iota_tokens(256);
    uint8_t a[32], b[32], msg[32 + 1024];
    hasher_chunk(&h, NULL, t, a);
    hasher_chunk(&h2, NULL, t, b);
    cr_assert_arr_eq(a, b, 32);
    memcpy(msg, h.none_hash, 32);
    for (int i = 0; i < 256; i++) {
        msg[32 + 4 * i] = 0;
        msg[33 + 4 * i] = 0;
        msg[34 + 4 * i] = (uint8_t)(i >> 8);
        msg[35 + 4 * i] = (uint8_t)i;
    }
    XXH128_canonicalFromHash(&can, XXH3_128bits(msg, sizeof(msg)));
    cr_assert_arr_eq(a, can.digest, 16, "same byte stream as blake3, hashed by XXH3_128");
    uint8_t none_b3[32];
    unhex32(V_NONE, none_b3);
    cr_assert(memcmp(h.none_hash, none_b3, 32) != 0);
    free(t);
}

Test(hasher, algo_names)
{
    enum hasher_algo a = HASHER_XXH3_128;
    const char *why = NULL;
    cr_assert_eq(hasher_algo_parse("blake3", &a, &why), 0);
    cr_assert_eq(a, HASHER_BLAKE3);
    cr_assert_eq(hasher_algo_parse("xxh3_128", &a, NULL), 0);
    cr_assert_eq(a, HASHER_XXH3_128);
    cr_assert_eq(hasher_algo_parse("sha256_cbor", &a, &why), -EINVAL);
    cr_assert(strstr(why, "vLLM"), "%s", why);
    cr_assert_eq(hasher_algo_parse("builtin", &a, &why), -EINVAL);
    cr_assert(strstr(why, "vLLM"), "%s", why);
    cr_assert_eq(hasher_algo_parse("md5", &a, &why), -EINVAL);
    cr_assert(strstr(why, "unknown"), "%s", why);
    cr_assert_str_eq(hasher_algo_name(HASHER_XXH3_128), "xxh3_128");
    struct hasher h;
    cr_assert_eq(hasher_init(&h, HASHER_BLAKE3, 0), -EINVAL);
    cr_assert_eq(hasher_init(&h, HASHER_BLAKE3, HASHER_MAX_CHUNK + 1), -EINVAL);
}

/* Python's own repr of the same bytes, from Debian's python3. */
static void python_repr(const uint8_t *b, size_t n, char *out, size_t cap)
{
    char cmd[1024];
    size_t o = (size_t)snprintf(cmd, sizeof(cmd), "/usr/bin/python3 -c \"print(repr(bytes.fromhex('");
    for (size_t i = 0; i < n; i++)
        o += (size_t)snprintf(cmd + o, sizeof(cmd) - o, "%02x", b[i]);
    snprintf(cmd + o, sizeof(cmd) - o, "')))\"");
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    cr_assert_not_null(fgets(out, (int)cap, p), "no output from %s", cmd);
    out[strcspn(out, "\n")] = 0;
    cr_assert_eq(pclose(p), 0);
}

Test(hasher, none_hash_repr_matches_python)
{
    struct hasher h;
    cr_assert_eq(hasher_init(&h, HASHER_BLAKE3, 256), 0);
    const uint8_t quote_single[] = { 'a', '\'', 'b', 0x7f, 0x80, '\\', 0 };
    const uint8_t quote_both[] = { '\'', '"', '\t', '\n', '\r', 0x1f, ' ', '~', 0xff };
    const uint8_t quote_double[] = { '"', 'x' };
    struct { const uint8_t *b; size_t n; } cases[] = {
        { h.none_hash, 32 },
        { quote_single, sizeof(quote_single) },
        { quote_both, sizeof(quote_both) },
        { quote_double, sizeof(quote_double) },
        { quote_double, 0 },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char mine[HASHER_REPR_MAX], py[HASHER_REPR_MAX];
        int len = hasher_bytes_repr(cases[i].b, cases[i].n, mine, sizeof(mine));
        cr_assert_gt(len, 0);
        cr_assert_eq((size_t)len, strlen(mine));
        python_repr(cases[i].b, cases[i].n, py, sizeof(py));
        cr_assert_str_eq(mine, py, "case %zu", i);
    }
    char small[8];
    cr_assert_eq(hasher_bytes_repr(h.none_hash, 32, small, sizeof(small)), -ENOSPC);
    char mine[HASHER_REPR_MAX];
    hasher_bytes_repr(h.none_hash, 32, mine, sizeof(mine));
    cr_assert(!strncmp(mine, "b\"~>\\xff\\x9e", 12), "seed log prefix: %s", mine);
}

Test(hasher, logs_lmcache_startup_lines)
{
    char path[] = "/tmp/lmcd-hasherlog-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    close(fd);
    struct hasher h;
    cr_assert_eq(hasher_init(&h, HASHER_BLAKE3, 256), 0);
    log_set_color(0);
    cr_assert_eq(log_set_file(path), 0);
    log_set_level(LOG_INFO);
    hasher_log_init(&h);
    log_set_file(NULL);
    FILE *f = fopen(path, "r");
    char text[4096] = { 0 };
    cr_assert_gt(fread(text, 1, sizeof(text) - 1, f), 0);
    fclose(f);
    unlink(path);
    cr_assert(strstr(text, "Using blake3 hash function"), "%s", text);
    char want[128];
    snprintf(want, sizeof(want), "BLAKE3 one-input compression: %s (", blake3_one_name(blake3_get_one()));
    cr_assert(strstr(text, want), "%s", text);
    cr_assert(strstr(text, "Computed NONE_HASH=b\"~>\\xff\\x9e"), "%s", text);
    cr_assert(strstr(text, "\\xd5mG;\" using hash function"), "%s", text);
    cr_assert(strstr(text, "TokenHasher initialized: chunk_size=256, hash_algorithm=blake3"), "%s", text);
}
