#include <criterion/criterion.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "engine/keys.h"

Test(keys, kv_rank_appendix_a_table)
{
    static const struct { uint32_t ws, wid, hex, dec; } t[] = {
        { 1, 0, 0x01000100, 16777472 },
        { 2, 1, 0x02010201, 33620481 },
        { 4, 3, 0x04030403, 67306499 },
        { 8, 5, 0x08050805, 134547461 },
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        uint32_t r = 0;
        cr_assert_eq(keys_kv_rank(t[i].ws, t[i].wid, &r), 0);
        cr_assert_eq(r, t[i].hex, "row %zu: %08x", i, r);
        cr_assert_eq(r, t[i].dec);
    }
}

Test(keys, kv_rank_validation)
{
    uint32_t r = 7;
    cr_assert_eq(keys_kv_rank(0, 0, &r), -EINVAL);
    cr_assert_eq(keys_kv_rank(256, 0, &r), -EINVAL);
    cr_assert_eq(keys_kv_rank(2, 2, &r), -EINVAL);
    cr_assert_eq(r, 7, "untouched on error");
    cr_assert_eq(keys_kv_rank(255, 254, &r), 0);
    cr_assert_eq(r, 0xfffefffeu);
}

Test(keys, obj_key_layout_matches_l1_key)
{
    cr_assert_eq(sizeof(struct obj_key), 48);
    cr_assert_eq(offsetof(struct obj_key, chunk_hash), 0);
    cr_assert_eq(offsetof(struct obj_key, ns), 32);
    cr_assert_eq(offsetof(struct obj_key, kv_rank), 40);
    cr_assert_eq(offsetof(struct obj_key, group), 44);
}

Test(keys, expand_scheduler_key_chunk_major_then_shard)
{
    uint8_t h[2][32];
    memset(h[0], 0xa0, 32);
    memset(h[1], 0xb1, 32);
    struct obj_key out[4];
    cr_assert_eq(keys_expand(h, 1, 2, KEYS_WORKER_ALL, 9, 0, out, 4), 2);
    cr_assert_eq(out[0].kv_rank, 0x02000200);
    cr_assert_eq(out[1].kv_rank, 0x02010201);
    cr_assert_eq(keys_expand(h, 2, 2, KEYS_WORKER_ALL, 9, 3, out, 4), 4);
    static const int chunk[4] = { 0, 0, 1, 1 };
    static const uint32_t rank[4] = { 0x02000200, 0x02010201, 0x02000200, 0x02010201 };
    for (int i = 0; i < 4; i++) {
        cr_assert_arr_eq(out[i].chunk_hash, h[chunk[i]], 32, "object %d", i);
        cr_assert_eq(out[i].kv_rank, rank[i], "object %d", i);
        cr_assert_eq(out[i].ns, 9);
        cr_assert_eq(out[i].group, 3);
    }
}

Test(keys, expand_worker_key_one_shard)
{
    uint8_t h[2][32];
    memset(h[0], 1, 32);
    memset(h[1], 2, 32);
    struct obj_key out[2];
    cr_assert_eq(keys_expand(h, 2, 2, 1, 0, 0, out, 2), 2);
    cr_assert_arr_eq(out[0].chunk_hash, h[0], 32);
    cr_assert_arr_eq(out[1].chunk_hash, h[1], 32);
    cr_assert_eq(out[0].kv_rank, 0x02010201);
    cr_assert_eq(out[1].kv_rank, 0x02010201);
    cr_assert_eq(keys_expand(h, 2, 2, KEYS_WORKER_ALL, 0, 0, out, 3), -ENOSPC);
    cr_assert_eq(keys_expand(h, 2, 2, 2, 0, 0, out, 2), -EINVAL);
    cr_assert_eq(keys_expand(h, 2, 0, KEYS_WORKER_ALL, 0, 0, out, 2), -EINVAL);
    cr_assert_eq(keys_expand(h, 0, 2, KEYS_WORKER_ALL, 0, 0, out, 0), 0);
}

Test(keys, ns_separates_model_and_salt)
{
    uint64_t a = keys_ns("m", 1, "", 0);
    cr_assert_eq(a, keys_ns("m", 1, "", 0), "deterministic");
    cr_assert_neq(a, keys_ns("m", 1, "s", 1));
    /* Same concatenation "ab", different split. */
    cr_assert_neq(keys_ns("ab", 2, "", 0), keys_ns("a", 1, "b", 1));
    cr_assert_neq(keys_ns("a/b", 3, "", 0), keys_ns("a-SEP-b", 7, "", 0));
}

Test(keys, model_and_salt_validation)
{
    cr_assert_eq(keys_check_model("meta-llama/Llama-3", 18), 0);
    cr_assert_eq(keys_check_model("a@b", 3), -EINVAL);
    cr_assert_eq(keys_check_model("", 0), -EINVAL);
    cr_assert_eq(keys_check_model("a\0b", 3), -EINVAL);
    char salt[130];
    memset(salt, 'x', sizeof(salt));
    cr_assert_eq(keys_check_salt(salt, 128), 0);
    cr_assert_eq(keys_check_salt(salt, 129), -EINVAL);
    cr_assert_eq(keys_check_salt("", 0), 0);
    cr_assert_eq(keys_check_salt("a@", 2), -EINVAL);
    cr_assert_eq(keys_check_salt("a/", 2), -EINVAL);
    cr_assert_eq(keys_check_salt("a\\", 2), -EINVAL);
    cr_assert_eq(keys_check_salt("a\0", 2), -EINVAL);
}

