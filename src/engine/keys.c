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

/* Appends into buf[*o..cap), keeping room for the NUL; -ENOSPC when full. */
static int put(char *buf, size_t cap, size_t *o, const char *s, size_t len)
{
    if (*o + len >= cap)
        return -ENOSPC;
    memcpy(buf + *o, s, len);
    *o += len;
    buf[*o] = '\0';
    return 0;
}

/* "<rank_prefix><kv_rank %08x>@<hash hex>[@<salt>]<suffix>" after the model. */
static int put_tail(char *buf, size_t cap, size_t *o, const char *rank_prefix, uint32_t kv_rank,
                    const uint8_t hash[32], const char *salt, size_t salt_len, const char *suffix)
{
    static const char hex[] = "0123456789abcdef";
    char mid[8 + 1 + 64];
    for (int i = 0; i < 8; i++)
        mid[i] = hex[(kv_rank >> (28 - 4 * i)) & 15];
    mid[8] = '@';
    for (int i = 0; i < 32; i++) {
        mid[9 + 2 * i] = hex[hash[i] >> 4];
        mid[10 + 2 * i] = hex[hash[i] & 15];
    }
    if (put(buf, cap, o, rank_prefix, strlen(rank_prefix)) < 0 ||
        put(buf, cap, o, mid, sizeof(mid)) < 0 ||
        (salt_len && (put(buf, cap, o, "@", 1) < 0 || put(buf, cap, o, salt, salt_len) < 0)) ||
        put(buf, cap, o, suffix, strlen(suffix)) < 0)
        return -ENOSPC;
    return 0;
}

int keys_l2_name(char *buf, size_t cap, const char *model, size_t model_len, uint32_t kv_rank,
                 const uint8_t hash[32], const char *salt, size_t salt_len)
{
    size_t o = 0;
    if (keys_check_model(model, model_len) < 0 || keys_check_salt(salt, salt_len) < 0)
        return -EINVAL;
    if (put(buf, cap, &o, model, model_len) < 0 ||
        put_tail(buf, cap, &o, "@", kv_rank, hash, salt, salt_len, "") < 0)
        return -ENOSPC;
    return (int)o;
}

int keys_fs_name(char *buf, size_t cap, const char *model, size_t model_len, uint32_t kv_rank,
                 const uint8_t hash[32], const char *salt, size_t salt_len)
{
    size_t o = 0;
    if (keys_check_model(model, model_len) < 0 || keys_check_salt(salt, salt_len) < 0)
        return -EINVAL;
    for (size_t i = 0; i < model_len; i++) {
        int rc = model[i] == '/' ? put(buf, cap, &o, "-SEP-", 5) : put(buf, cap, &o, model + i, 1);
        if (rc < 0)
            return -ENOSPC;
    }
    if (put_tail(buf, cap, &o, "@0x", kv_rank, hash, salt, salt_len, ".data") < 0)
        return -ENOSPC;
    return (int)o;
}
