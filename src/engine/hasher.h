/*
 * hasher: token ids -> rolling chunk hashes (mp_protocol.md 8.1-8.3).
 *
 *   h[0] = H(NONE_HASH || BE32(t[0]) .. BE32(t[C-1]))
 *   h[i] = H(h[i-1]    || BE32(t[iC]) .. BE32(t[iC+C-1]))
 *
 * with C the chunk size, 32-byte digests, only full chunks hashed, and
 * NONE_HASH = H(12 zero bytes), the value LMCache falls back to when vLLM is
 * not importable (lmcd always uses it). H is BLAKE3 (default, bit-exact with
 * LMCache) or xxh3_128 (lmcd only; its 16-byte digest, big-endian canonical
 * form, followed by 16 zero bytes).
 *
 * Ownership: struct hasher is a read-only value after hasher_init(); any
 * number of threads may use one at once. A struct hasher_chain (the hashes of
 * one session) belongs to its caller and to one thread at a time; its array
 * is heap memory released by hasher_chain_free().
 *
 * Left out: LMCache's `builtin` and `sha256_cbor` algorithms (they call
 * vLLM's Python helpers), and the random per-process NONE_HASH that vLLM
 * supplies when importable.
 */
#ifndef LMCD_ENGINE_HASHER_H
#define LMCD_ENGINE_HASHER_H

#include <stddef.h>
#include <stdint.h>

#define HASHER_DIGEST_LEN 32
/* Largest chunk size accepted (tokens). */
#define HASHER_MAX_CHUNK 65536
/* Enough for hasher_bytes_repr() of a digest: 4 chars per byte, b'', NUL. */
#define HASHER_REPR_MAX (4 * HASHER_DIGEST_LEN + 4)

enum hasher_algo { HASHER_BLAKE3 = 0, HASHER_XXH3_128 = 1 };

struct hasher {
    enum hasher_algo algo;
    uint32_t chunk_size;
    uint8_t none_hash[HASHER_DIGEST_LEN];
};

struct hasher_chain {
    uint8_t (*hashes)[HASHER_DIGEST_LEN]; /* hashes[i] = h[i] */
    size_t len;                           /* valid entries */
    size_t cap;                           /* allocated entries */
};

/* "blake3" or "xxh3_128" -> *out, 0. Anything else: -EINVAL and *why (if not
 * NULL) gets a static sentence saying why, e.g. that `sha256_cbor` needs vLLM. */
int hasher_algo_parse(const char *name, enum hasher_algo *out, const char **why);
const char *hasher_algo_name(enum hasher_algo algo);

/* 0, or -EINVAL when chunk_size is 0 or above HASHER_MAX_CHUNK or algo is unknown. */
int hasher_init(struct hasher *h, enum hasher_algo algo, uint32_t chunk_size);
/* Logs LMCache's start-up lines: "Using blake3 hash function", "Computed
 * NONE_HASH=b'...' using hash function", "TokenHasher initialized: ...". */
void hasher_log_init(const struct hasher *h);

/* One step: out = H(prev || BE32 of chunk_size tokens). prev NULL = NONE_HASH. */
void hasher_chunk(const struct hasher *h, const uint8_t *prev, const uint32_t *tokens,
                  uint8_t out[HASHER_DIGEST_LEN]);
/* n independent steps (one per stream), side by side in SIMD lanes where that
 * pays. prevs[i] NULL = NONE_HASH. 0 or -ENOMEM (scratch for n messages). */
int hasher_chunk_many(const struct hasher *h, const uint8_t *const *prevs,
                      const uint32_t *const *tokens, size_t n, uint8_t (*out)[HASHER_DIGEST_LEN]);

/* hashes[from..to) of tokens, given hashes[from-1] (ignored when from is 0).
 * tokens must hold at least to * chunk_size ids. */
void hasher_extend(const struct hasher *h, const uint32_t *tokens, size_t from, size_t to,
                   uint8_t (*hashes)[HASHER_DIGEST_LEN]);

/* Number of leading full chunks in which token lists a and b agree: the
 * hashes a session may keep when its token list is replaced by b. */
size_t hasher_common_chunks(const struct hasher *h, const uint32_t *a, size_t na,
                            const uint32_t *b, size_t nb);

void hasher_chain_init(struct hasher_chain *c);
void hasher_chain_free(struct hasher_chain *c);
/* Makes c the hashes of every full chunk of tokens[0..n), keeping the first
 * min(keep, c->len) entries as they are (the caller vouches that those chunks
 * are unchanged, see hasher_common_chunks()) and hashing only the rest.
 * 0, or -ENOMEM with c->len cut to the hashes still valid for tokens. */
int hasher_chain_update(const struct hasher *h, struct hasher_chain *c, const uint32_t *tokens,
                        size_t n, size_t keep);
/* hasher_chain_update() for count independent sessions, hashing their new
 * chunks side by side (round i hashes the i-th new chunk of every session
 * that has one). 0, or -ENOMEM with each chain's len cut to the hashes
 * valid for its new tokens. */
int hasher_chain_update_many(const struct hasher *h, struct hasher_chain *const *chains,
                             const uint32_t *const *tokens, const size_t *n, const size_t *keep,
                             size_t count);

/* Writes Python's repr() of a bytes object (b'..', or b".." when the bytes
 * hold ' and no "). Returns the length, or -ENOSPC when cap < 4 * n + 4. */
int hasher_bytes_repr(const uint8_t *b, size_t n, char *out, size_t cap);

#endif
