#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "l2/l2_key.h"

static const char *H = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

static struct l2_key mk(const char *model, const char *salt, uint32_t rank, uint32_t group)
{
    struct l2_key k = { model, strlen(model), salt, salt ? strlen(salt) : 0, rank, group, { 0 } };
    for (int i = 0; i < 32; i++)
        k.hash[i] = (uint8_t)((i % 16) * 0x11);
    return k;
}

Test(l2_key, key_string_new_form)
{
    char b[L2_KEY_NAME_MAX], want[256];
    struct l2_key k = mk("Qwen/Qwen3-8B", NULL, 0x01000100, 0);
    int n = l2_key_format(b, sizeof(b), &k);
    snprintf(want, sizeof(want), "Qwen/Qwen3-8B@01000100@0@%s", H);
    cr_assert_str_eq(b, want);
    cr_assert_eq(n, (int)strlen(want));
    k = mk("m", "tenant-a", 0x02010201, 0x1f);
    l2_key_format(b, sizeof(b), &k);
    snprintf(want, sizeof(want), "m@02010201@1f@%s@tenant-a", H);
    cr_assert_str_eq(b, want);
    l2_key_format_old(b, sizeof(b), &k);
    snprintf(want, sizeof(want), "m@02010201@%s@tenant-a", H);
    cr_assert_str_eq(b, want);
}

Test(l2_key, fs_name_matches_lmcache_example)
{
    char b[L2_KEY_NAME_MAX], want[256];
    struct l2_key k = mk("Qwen/Qwen3-8B", NULL, 0x01000100, 0);
    l2_key_fs_name(b, sizeof(b), &k);
    snprintf(want, sizeof(want), "Qwen-SEP-Qwen3-8B@0x01000100@0@%s.data", H);
    cr_assert_str_eq(b, want);
    l2_key_fs_name_old(b, sizeof(b), &k);
    snprintf(want, sizeof(want), "Qwen-SEP-Qwen3-8B@0x01000100@%s.data", H);
    cr_assert_str_eq(b, want);
    k = mk("a/b/c", "s1", 1, 0xabc);
    l2_key_fs_name(b, sizeof(b), &k);
    snprintf(want, sizeof(want), "a-SEP-b-SEP-c@0x00000001@abc@%s@s1.data", H);
    cr_assert_str_eq(b, want);
}

Test(l2_key, round_trips_all_four_forms)
{
    const char *salts[] = { NULL, "x" };
    for (int si = 0; si < 2; si++) {
        struct l2_key k = mk("org/model", salts[si], 0x04030403, 7), p;
        char b[L2_KEY_NAME_MAX], mb[256];
        bool old = true;
        l2_key_format(b, sizeof(b), &k);
        cr_assert_eq(l2_key_parse(b, strlen(b), &p), 0, "%s", b);
        cr_assert(l2_key_equal(&k, &p), "%s", b);
        l2_key_fs_name(b, sizeof(b), &k);
        cr_assert_eq(l2_key_parse_fs(b, strlen(b), &p, mb, sizeof(mb), &old), 0, "%s", b);
        cr_assert(l2_key_equal(&k, &p), "%s", b);
        cr_assert(!old);
        /* older names carry no group: parsed as group 0 */
        struct l2_key k0 = k;
        k0.group = 0;
        l2_key_fs_name_old(b, sizeof(b), &k);
        cr_assert_eq(l2_key_parse_fs(b, strlen(b), &p, mb, sizeof(mb), &old), 0, "%s", b);
        cr_assert(old);
        cr_assert(l2_key_equal(&k0, &p), "%s", b);
        l2_key_format_old(b, sizeof(b), &k);
        cr_assert_eq(l2_key_parse(b, strlen(b), &p), 0, "%s", b);
        cr_assert(l2_key_equal(&k0, &p), "%s", b);
    }
}

Test(l2_key, rejects_what_is_not_ours)
{
    struct l2_key p;
    char mb[64];
    char b[256];
    const char *bad[] = {
        "x.data", "m@0x01@zz.data", "m@01000100@0@abc.data", /* short hash */
        "m@0x1000000001@0@" /* 9-digit rank */,
        "m@0x01@0@1@2@3@4.data", "@0x01@0@h.data",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_assert_eq(l2_key_parse_fs(bad[i], strlen(bad[i]), &p, mb, sizeof(mb), NULL), -EINVAL, "%s", bad[i]);
    snprintf(b, sizeof(b), "m@0x01@0@%s.tmp", H);
    cr_assert_eq(l2_key_parse_fs(b, strlen(b), &p, mb, sizeof(mb), NULL), -EINVAL, "temp files are not objects");
    snprintf(b, sizeof(b), "m@01@0@%s.data", H);
    cr_assert_eq(l2_key_parse_fs(b, strlen(b), &p, mb, sizeof(mb), NULL), -EINVAL, "fs ranks carry 0x");
    snprintf(b, sizeof(b), "m@0x01@0@%s@.data", H);
    cr_assert_eq(l2_key_parse_fs(b, strlen(b), &p, mb, sizeof(mb), NULL), -EINVAL, "empty salt");
    snprintf(b, sizeof(b), "m@0x01@0@%s@a/b.data", H);
    cr_assert_eq(l2_key_parse_fs(b, strlen(b), &p, mb, sizeof(mb), NULL), -EINVAL, "salt with '/'");
    /* model too long for the caller's buffer */
    snprintf(b, sizeof(b), "%080d@0x01@0@%s.data", 0, H);
    cr_assert_eq(l2_key_parse_fs(b, strlen(b), &p, mb, sizeof(mb), NULL), -EINVAL);
}

Test(l2_key, format_refuses_bad_keys_and_short_buffers)
{
    char b[L2_KEY_NAME_MAX];
    struct l2_key k = mk("a@b", NULL, 1, 0);
    cr_assert_eq(l2_key_format(b, sizeof(b), &k), -EINVAL);
    k = mk("m", "s@", 1, 0);
    cr_assert_eq(l2_key_fs_name(b, sizeof(b), &k), -EINVAL);
    k = mk("m", NULL, 1, 0);
    cr_assert_eq(l2_key_format(b, 10, &k), -ENOSPC);
    cr_assert_eq(l2_key_format(b, 0, &k), -ENOSPC);
    int n = l2_key_format(b, sizeof(b), &k);
    cr_assert_eq(l2_key_format(b, (size_t)n + 1, &k), n, "exact fit");
}

Test(l2_key, worst_case_fits_the_name_bound)
{
    /* every model byte a '/' (5 bytes each as -SEP-), the longest salt */
    static char model[L2_KEY_MODEL_MAX], salt[L2_KEY_SALT_MAX], b[L2_KEY_NAME_MAX], mb[L2_KEY_MODEL_MAX + 1];
    memset(model, '/', sizeof(model));
    memset(salt, 's', sizeof(salt));
    struct l2_key k = { model, sizeof(model), salt, sizeof(salt), 0xffffffffu, 0xffffffffu, { 0 } }, p;
    int n = l2_key_fs_name(b, sizeof(b), &k);
    cr_assert_gt(n, 0);
    cr_assert_eq(l2_key_parse_fs(b, (size_t)n, &p, mb, sizeof(mb), NULL), 0);
    cr_assert(l2_key_equal(&k, &p));
    cr_assert_gt(l2_key_format(b, sizeof(b), &k), 0);
    k.model_len = L2_KEY_MODEL_MAX + 1;
    cr_assert_eq(l2_key_format(b, sizeof(b), &k), -EINVAL);
}
