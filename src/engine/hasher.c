/*
 * hasher: rolling chunk hashes over big-endian token ids (see hasher.h).
 *
 * A chunk step hashes 32 + 4 C bytes (1056 for C = 256: one full BLAKE3
 * chunk plus 32 bytes). Steps of one session depend on each other, so SIMD
 * lanes can only run steps of different sessions side by side: that is
 * hasher_chunk_many(), built on blake3_hash_batch().
 */
#define LOG_MODULE "lmcd.engine"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "engine/blake3.h"
#include "engine/hasher.h"
#include "util/log.h"

/* Tokens packed per piece when a message is streamed. */
#define PACK_TOKENS 256

static const struct {
    const char *name;
    enum hasher_algo algo;
    const char *why; /* NULL: accepted */
} algo_names[] = {
    { "blake3", HASHER_BLAKE3, NULL },
    { "xxh3_128", HASHER_XXH3_128, NULL },
    { "builtin", HASHER_BLAKE3, "`builtin` hashes through vLLM's Python helpers, which lmcd cannot call; use blake3" },
    { "sha256_cbor", HASHER_BLAKE3, "`sha256_cbor` hashes through vLLM's Python helpers (CBOR of Python objects), which lmcd cannot call; use blake3" },
    { "sha256", HASHER_BLAKE3, "`sha256` hashes through vLLM's Python helpers (pickled Python objects), which lmcd cannot call; use blake3" },
};

int hasher_algo_parse(const char *name, enum hasher_algo *out, const char **why)
{
    for (size_t i = 0; i < sizeof(algo_names) / sizeof(algo_names[0]); i++) {
        if (strcmp(name, algo_names[i].name) != 0)
            continue;
        if (algo_names[i].why) {
            if (why)
                *why = algo_names[i].why;
            return -EINVAL;
        }
        *out = algo_names[i].algo;
        return 0;
    }
    if (why)
        *why = "unknown hash algorithm; lmcd knows blake3 (default) and xxh3_128";
    return -EINVAL;
}

const char *hasher_algo_name(enum hasher_algo algo)
{
    return algo == HASHER_BLAKE3 ? "blake3" : algo == HASHER_XXH3_128 ? "xxh3_128" : "unknown";
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

#if defined(__x86_64__) || defined(__i386__)
/* The whole groups of four of n tokens; returns how many tokens it packed. */
__attribute__((target("ssse3"))) static size_t put_be32s_ssse3(uint8_t *out, const uint32_t *t,
                                                               size_t n)
{
    const __m128i swap = _mm_setr_epi8(3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        __m128i w = _mm_loadu_si128((const __m128i *)(const void *)(t + i));
        _mm_storeu_si128((__m128i *)(void *)(out + 4 * i), _mm_shuffle_epi8(w, swap));
    }
    return i;
}
#endif

/* BE32 of n tokens. A chunk's packing runs before its first compression
 * can start, so it adds to every step of the chain: four tokens per byte
 * shuffle where the CPU has SSSE3 (about 80 ns less per 256-token chunk on
 * Zen 3 than one bswap and store per token). */
static void put_be32s(uint8_t *out, const uint32_t *t, size_t n)
{
    size_t i = 0;
#if defined(__x86_64__) || defined(__i386__)
    if (__builtin_cpu_supports("ssse3"))
        i = put_be32s_ssse3(out, t, n);
#endif
    for (; i < n; i++)
        put_be32(out + 4 * i, t[i]);
}

/* xxh3_128's digest widened to 32 bytes: canonical (big-endian) form, then zeros. */
static void xxh3_widen(XXH128_hash_t d, uint8_t out[HASHER_DIGEST_LEN])
{
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, d);
    memcpy(out, c.digest, 16);
    memset(out + 16, 0, 16);
}

/* Lays out prev || BE32(tokens[0..count)) contiguously in msg. */
static void pack_message(const uint8_t *prev, const uint32_t *tokens, size_t count, uint8_t *msg)
{
    memcpy(msg, prev, HASHER_DIGEST_LEN);
    put_be32s(msg + HASHER_DIGEST_LEN, tokens, count);
}

/* Streams a message too long to lay out on the stack. */
static void hash_streamed(const struct hasher *h, const uint8_t *prev, const uint32_t *tokens,
                          uint8_t out[HASHER_DIGEST_LEN])
{
    uint8_t piece[4 * PACK_TOKENS];
    struct blake3_hasher b3;
    XXH3_state_t xstate, *xs = NULL;
    if (h->algo == HASHER_BLAKE3) {
        blake3_init(&b3);
        blake3_update(&b3, prev, HASHER_DIGEST_LEN);
    } else {
        xs = &xstate;
        XXH3_INITSTATE(xs);
        XXH3_128bits_reset(xs);
        XXH3_128bits_update(xs, prev, HASHER_DIGEST_LEN);
    }
    for (size_t off = 0; off < h->chunk_size; off += PACK_TOKENS) {
        size_t k = h->chunk_size - off < PACK_TOKENS ? h->chunk_size - off : PACK_TOKENS;
        put_be32s(piece, tokens + off, k);
        if (xs)
            XXH3_128bits_update(xs, piece, 4 * k);
        else
            blake3_update(&b3, piece, 4 * k);
    }
    if (xs) {
        xxh3_widen(XXH3_128bits_digest(xs), out);
    } else {
        blake3_finalize(&b3, out, HASHER_DIGEST_LEN);
    }
}

static void hash_bytes(enum hasher_algo algo, const uint8_t *msg, size_t len,
                       uint8_t out[HASHER_DIGEST_LEN])
{
    if (algo == HASHER_BLAKE3)
        blake3_hash(msg, len, out);
    else
        xxh3_widen(XXH3_128bits(msg, len), out);
}

void hasher_chunk(const struct hasher *h, const uint8_t *prev, const uint32_t *tokens,
                  uint8_t out[HASHER_DIGEST_LEN])
{
    if (!prev)
        prev = h->none_hash;
    if (h->chunk_size > PACK_TOKENS) {
        hash_streamed(h, prev, tokens, out);
        return;
    }
    uint8_t msg[HASHER_DIGEST_LEN + 4 * PACK_TOKENS];
    pack_message(prev, tokens, h->chunk_size, msg);
    hash_bytes(h->algo, msg, HASHER_DIGEST_LEN + 4 * (size_t)h->chunk_size, out);
}

int hasher_init(struct hasher *h, enum hasher_algo algo, uint32_t chunk_size)
{
    static const uint8_t zeros[12];
    if (chunk_size == 0 || chunk_size > HASHER_MAX_CHUNK)
        return -EINVAL;
    if (algo != HASHER_BLAKE3 && algo != HASHER_XXH3_128)
        return -EINVAL;
    h->algo = algo;
    h->chunk_size = chunk_size;
    /* Picks BLAKE3's one-block compression now, at start-up, rather than in
     * the first request (it times both, well under a millisecond). */
    if (algo == HASHER_BLAKE3)
        (void)blake3_get_one();
    /* LMCache's fallback: H(integer 0 as 8 bytes BE signed || token 0 as BE32). */
    hash_bytes(algo, zeros, sizeof(zeros), h->none_hash);
    return 0;
}

int hasher_bytes_repr(const uint8_t *b, size_t n, char *out, size_t cap)
{
    if (cap < 4 * n + 4)
        return -ENOSPC;
    int has_single = memchr(b, '\'', n) != NULL, has_double = memchr(b, '"', n) != NULL;
    char quote = has_single && !has_double ? '"' : '\'';
    size_t o = 0;
    out[o++] = 'b';
    out[o++] = quote;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = b[i];
        if (c == (uint8_t)quote || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c == '\t' || c == '\n' || c == '\r') {
            out[o++] = '\\';
            out[o++] = c == '\t' ? 't' : c == '\n' ? 'n' : 'r';
        } else if (c < 0x20 || c >= 0x7f) {
            static const char hex[] = "0123456789abcdef";
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        } else {
            out[o++] = (char)c;
        }
    }
    out[o++] = quote;
    out[o] = '\0';
    return (int)o;
}

void hasher_log_init(const struct hasher *h)
{
    char repr[HASHER_REPR_MAX];
    hasher_bytes_repr(h->none_hash, HASHER_DIGEST_LEN, repr, sizeof(repr));
    log_info("Using %s hash function", hasher_algo_name(h->algo));
    if (h->algo == HASHER_BLAKE3) {
        /* Which compression single inputs (the chains) run on, and why. */
        double ns[2];
        char why[96];
        enum blake3_one one = blake3_get_one();
        blake3_one_measured(ns);
        if (ns[0] > 0 && ns[1] > 0)
            snprintf(why, sizeof(why), "timed at start: portable %.1f ns, sse41 %.1f ns per block",
                     ns[0], ns[1]);
        else
            snprintf(why, sizeof(why), "%s", ns[0] > 0 ? "no SSE4.1" : "set, not timed");
        log_info("BLAKE3 one-input compression: %s (%s); many inputs: %s lanes", blake3_one_name(one),
                 why, blake3_path_name(blake3_get_path()));
    }
    log_info("Computed NONE_HASH=%s using hash function", repr);
    log_info("TokenHasher initialized: chunk_size=%u, hash_algorithm=%s", h->chunk_size,
             hasher_algo_name(h->algo));
}

int hasher_chunk_many(const struct hasher *h, const uint8_t *const *prevs,
                      const uint32_t *const *tokens, size_t n, uint8_t (*out)[HASHER_DIGEST_LEN])
{
    if (h->algo != HASHER_BLAKE3) {
        /* xxh3 has no lanes to fill: one step after another. */
        for (size_t i = 0; i < n; i++)
            hasher_chunk(h, prevs[i], tokens[i], out[i]);
        return 0;
    }
    size_t len = HASHER_DIGEST_LEN + 4 * (size_t)h->chunk_size;
    uint8_t *scratch = malloc(n * len);
    const uint8_t **msgs = malloc(n * sizeof(*msgs));
    if (!scratch || !msgs) {
        free(scratch);
        free(msgs);
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        uint8_t *m = scratch + i * len;
        pack_message(prevs[i] ? prevs[i] : h->none_hash, tokens[i], h->chunk_size, m);
        msgs[i] = m;
    }
    blake3_hash_batch(msgs, n, len, out);
    free(msgs);
    free(scratch);
    return 0;
}

void hasher_extend(const struct hasher *h, const uint32_t *tokens, size_t from, size_t to,
                   uint8_t (*hashes)[HASHER_DIGEST_LEN])
{
    for (size_t i = from; i < to; i++)
        hasher_chunk(h, i ? hashes[i - 1] : NULL, tokens + i * h->chunk_size, hashes[i]);
}

size_t hasher_common_chunks(const struct hasher *h, const uint32_t *a, size_t na,
                            const uint32_t *b, size_t nb)
{
    size_t full = (na < nb ? na : nb) / h->chunk_size;
    size_t chunk_bytes = (size_t)h->chunk_size * sizeof(uint32_t);
    size_t i = 0;
    while (i < full && memcmp(a + i * h->chunk_size, b + i * h->chunk_size, chunk_bytes) == 0)
        i++;
    return i;
}

void hasher_chain_init(struct hasher_chain *c)
{
    c->hashes = NULL;
    c->len = 0;
    c->cap = 0;
}

void hasher_chain_free(struct hasher_chain *c)
{
    free(c->hashes);
    hasher_chain_init(c);
}

static int chain_reserve(struct hasher_chain *c, size_t want)
{
    if (want <= c->cap)
        return 0;
    size_t cap = c->cap ? c->cap : 8;
    while (cap < want)
        cap *= 2;
    void *p = realloc(c->hashes, cap * HASHER_DIGEST_LEN);
    if (!p)
        return -ENOMEM;
    c->hashes = p;
    c->cap = cap;
    return 0;
}

/* First entry to (re)compute: the kept prefix, clamped. */
static size_t chain_keep(const struct hasher_chain *c, size_t keep, size_t full)
{
    if (keep > c->len)
        keep = c->len;
    return keep < full ? keep : full;
}

int hasher_chain_update(const struct hasher *h, struct hasher_chain *c, const uint32_t *tokens,
                        size_t n, size_t keep)
{
    size_t full = n / h->chunk_size;
    if (chain_reserve(c, full) < 0) {
        c->len = chain_keep(c, keep, full);
        return -ENOMEM;
    }
    hasher_extend(h, tokens, chain_keep(c, keep, full), full, c->hashes);
    c->len = full;
    return 0;
}

int hasher_chain_update_many(const struct hasher *h, struct hasher_chain *const *chains,
                             const uint32_t *const *tokens, const size_t *n, const size_t *keep,
                             size_t count)
{
    int rc = -ENOMEM;
    size_t *next = calloc(count, sizeof(*next));
    if (!next)
        return -ENOMEM;
    for (size_t i = 0; i < count; i++)
        next[i] = chain_keep(chains[i], keep[i], n[i] / h->chunk_size);
    const uint8_t **prevs = calloc(count, sizeof(*prevs));
    const uint32_t **toks = calloc(count, sizeof(*toks));
    uint8_t (*out)[HASHER_DIGEST_LEN] = calloc(count, HASHER_DIGEST_LEN);
    size_t *who = calloc(count, sizeof(*who));
    if (!prevs || !toks || !out || !who)
        goto fail;
    for (size_t i = 0; i < count; i++)
        if (chain_reserve(chains[i], n[i] / h->chunk_size) < 0)
            goto fail;
    for (;;) {
        size_t m = 0;
        for (size_t i = 0; i < count; i++) {
            if (next[i] >= n[i] / h->chunk_size)
                continue;
            size_t k = next[i];
            prevs[m] = k ? chains[i]->hashes[k - 1] : NULL;
            toks[m] = tokens[i] + k * h->chunk_size;
            who[m++] = i;
        }
        if (m == 0)
            break;
        if ((rc = hasher_chunk_many(h, prevs, toks, m, out)) < 0)
            goto fail;
        for (size_t j = 0; j < m; j++)
            memcpy(chains[who[j]]->hashes[next[who[j]]++], out[j], HASHER_DIGEST_LEN);
    }
    rc = 0;
fail:
    /* On failure too: hashes[0..next) are exactly those of the new tokens. */
    for (size_t i = 0; i < count; i++)
        chains[i]->len = next[i];
    free(who);
    free(out);
    free(toks);
    free(prevs);
    free(next);
    return rc;
}
