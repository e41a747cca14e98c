/*
 * l2_key: an L2 object's identity and LMCache's two string forms of it.
 *
 *   key string (resp, valkey, s3 object names; csrc/storage_backends/keys.h):
 *     <model>@<kv_rank %08x>@<object_group_id %x>@<chunk_hash hex>[@<cache_salt>]
 *     older builds: <model>@<kv_rank %08x>@<chunk_hash hex>[@<cache_salt>]
 *   fs file name (fs_l2_adapter.py / fs_key_codec.py):
 *     <model, '/' -> "-SEP-">@0x<kv_rank %08x>@<object_group_id %x>@<hash hex>[@<salt>].data
 *     older builds: <model, -SEP->@0x<kv_rank %08x>@<hash hex>[@<salt>].data
 *
 * The salt is present only when non-empty. The hash is 32 bytes, written as
 * 64 lowercase hex digits. Neither model nor salt may hold '@' (LMCache's
 * ObjectKey rejects it), so splitting on '@' is unambiguous; a 4-field name
 * is the new unsalted form when its 4th field is the 64-digit hash and the
 * old salted form when its 3rd is (a group id has at most 8 digits).
 *
 * Everything here is pure (no allocation, any thread). Strings in struct
 * l2_key are (pointer, length), borrowed: parse results point into the
 * parsed string (key strings) or into the caller's buffer (file names,
 * whose model is rewritten).
 */
#ifndef LMCD_L2_L2_KEY_H
#define LMCD_L2_L2_KEY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct l2_key {
    const char *model;
    size_t model_len;
    const char *salt; /* may be NULL when salt_len is 0 */
    size_t salt_len;
    uint32_t kv_rank;
    uint32_t group;
    uint8_t hash[32];
};

#define L2_KEY_SALT_MAX 128
#define L2_KEY_MODEL_MAX 1024
/* Room for any key string or file name of a valid key, with NUL
 * ('/' -> "-SEP-" grows the model fivefold). */
#define L2_KEY_NAME_MAX (5 * L2_KEY_MODEL_MAX + L2_KEY_SALT_MAX + 128)

/* 0, or -EINVAL: model empty, over L2_KEY_MODEL_MAX, or holding '@' or NUL;
 * salt over L2_KEY_SALT_MAX or holding '@', '/', '\' or NUL. */
int l2_key_check(const struct l2_key *k);
bool l2_key_equal(const struct l2_key *a, const struct l2_key *b);

/* The key string. Returns its length (NUL-terminated in buf), -EINVAL (bad
 * key), -ENOSPC (cap too small). old = the older form without the group. */
int l2_key_format(char *buf, size_t cap, const struct l2_key *k);
int l2_key_format_old(char *buf, size_t cap, const struct l2_key *k);
/* The fs file name (".data"), and the older 3-field one. Same returns. */
int l2_key_fs_name(char *buf, size_t cap, const struct l2_key *k);
int l2_key_fs_name_old(char *buf, size_t cap, const struct l2_key *k);

/* Parses a key string of len bytes (new or old form; old gives group 0).
 * out's strings point into s. 0 or -EINVAL. */
int l2_key_parse(const char *s, size_t len, struct l2_key *out);
/* Parses a file name (must end ".data"), new or old form; the model with
 * "-SEP-" turned back into '/' is written to mbuf (cap bytes) and out->model
 * points there; out->salt points into name. *old says which form it was
 * (may be NULL). 0 or -EINVAL (not one of ours: ignore the file). */
int l2_key_parse_fs(const char *name, size_t len, struct l2_key *out, char *mbuf, size_t cap, bool *old);

#endif
