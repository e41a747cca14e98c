/*
 * keys: object identity (mp_protocol.md 8.5, mp_server.md 5.5).
 *
 *   chunk hashes h0 h1 ..  x  shards  ->  struct obj_key, chunk-major
 *   kv_rank = world_size << 24 | worker_id << 16 | world_size << 8 | worker_id
 *   ns      = 64 bits naming (model_name, cache_salt)
 *
 * struct obj_key has the field order and size of L1's struct l1_key (the
 * engine fills these, L1 stores them; the engine does not include l1.h).
 * The L2 key string and fs file name of an object are in src/l2/l2_key.h.
 *
 * Strings are (pointer, length) because wire strings may hold NUL bytes.
 * Everything here is pure: any thread, no allocation.
 *
 * Left out: the L2 string forms (l2_key.h) and the nixl name form.
 */
#ifndef LMCD_ENGINE_KEYS_H
#define LMCD_ENGINE_KEYS_H

#include <assert.h>
#include <stddef.h>
#include <stdint.h>

struct obj_key {
    uint8_t chunk_hash[32];
    uint64_t ns;      /* keys_ns(model_name, cache_salt) */
    uint32_t kv_rank; /* keys_kv_rank(world_size, worker_id) */
    uint32_t group;   /* object group; 0 for single-group models */
};
static_assert(sizeof(struct obj_key) == 48, "obj_key must match struct l1_key (48 bytes)");

/* worker_id of scheduler requests (wire nil): every shard. */
#define KEYS_WORKER_ALL (-1)
#define KEYS_WORLD_MAX 255
#define KEYS_SALT_MAX 128

/* 0 and *out, or -EINVAL unless 1 <= world_size <= 255 and worker_id < world_size. */
int keys_kv_rank(uint32_t world_size, uint32_t worker_id, uint32_t *out);
/* 0, or -EINVAL: empty, or holds '@' or NUL. */
int keys_check_model(const char *model, size_t len);
/* 0, or -EINVAL: over 128 bytes, or holds '@', '/', '\' or NUL. Empty is fine. */
int keys_check_salt(const char *salt, size_t len);

/* The namespace of (model_name, cache_salt): the first 8 bytes (little-endian)
 * of BLAKE3 derive_key("lmcd 2026-09 object namespace v1") over
 * LE64(len model) || model || LE64(len salt) || salt, so no two pairs
 * concatenate to the same input. */
uint64_t keys_ns(const char *model, size_t model_len, const char *salt, size_t salt_len);

/* Objects for nchunks chunk hashes: with worker_id KEYS_WORKER_ALL, every
 * shard of each chunk (chunk-major, then shard), else that shard only.
 * Returns the count (0..nchunks*world_size), -EINVAL (bad world_size or
 * worker_id) or -ENOSPC (cap too small; nothing written). */
long keys_expand(const uint8_t (*hashes)[32], size_t nchunks, uint32_t world_size, int worker_id,
                 uint64_t ns, uint32_t group, struct obj_key *out, size_t cap);

#endif
