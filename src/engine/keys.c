/*
 * keys: kv_rank packing, shard expansion, namespaces and L2 names (keys.h).
 */
#include <errno.h>
#include <string.h>

#include "engine/blake3.h"
#include "engine/keys.h"

int keys_kv_rank(uint32_t world_size, uint32_t worker_id, uint32_t *out)
{
    if (world_size < 1 || world_size > KEYS_WORLD_MAX || worker_id >= world_size)
        return -EINVAL;
    *out = world_size << 24 | worker_id << 16 | world_size << 8 | worker_id;
    return 0;
}

int keys_check_model(const char *model, size_t len)
{
    if (len == 0 || memchr(model, '@', len) || memchr(model, '\0', len))
        return -EINVAL;
    return 0;
}

int keys_check_salt(const char *salt, size_t len)
{
    if (len > KEYS_SALT_MAX)
        return -EINVAL;
    for (size_t i = 0; i < len; i++)
        if (salt[i] == '@' || salt[i] == '/' || salt[i] == '\\' || salt[i] == '\0')
            return -EINVAL;
    return 0;
}

static void put_le64(uint8_t p[8], uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

uint64_t keys_ns(const char *model, size_t model_len, const char *salt, size_t salt_len)
{
    struct blake3_hasher h;
    uint8_t len[8], out[8];
    blake3_init_derive_key(&h, "lmcd 2026-09 object namespace v1");
    put_le64(len, model_len);
    blake3_update(&h, len, sizeof(len));
    blake3_update(&h, model, model_len);
    put_le64(len, salt_len);
    blake3_update(&h, len, sizeof(len));
    blake3_update(&h, salt, salt_len);
    blake3_finalize(&h, out, sizeof(out));
    uint64_t ns = 0;
    for (int i = 7; i >= 0; i--)
        ns = ns << 8 | out[i];
    return ns;
}

long keys_expand(const uint8_t (*hashes)[32], size_t nchunks, uint32_t world_size, int worker_id,
                 uint64_t ns, uint32_t group, struct obj_key *out, size_t cap)
{
    uint32_t first = 0, shards = world_size, rank;
    if (worker_id != KEYS_WORKER_ALL) {
        if (worker_id < 0)
            return -EINVAL;
        first = (uint32_t)worker_id;
        shards = 1;
    }
    if (keys_kv_rank(world_size, first, &rank) < 0)
        return -EINVAL;
    if (nchunks > cap / shards)
        return -ENOSPC;
    size_t o = 0;
    for (size_t c = 0; c < nchunks; c++) {
        for (uint32_t s = first; s < first + shards; s++) {
            struct obj_key *k = &out[o++];
            memcpy(k->chunk_hash, hashes[c], 32);
            k->ns = ns;
            keys_kv_rank(world_size, s, &k->kv_rank);
            k->group = group;
        }
    }
    return (long)o;
}
