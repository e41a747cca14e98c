/* l2_key: LMCache's key strings and fs file names (contract in l2_key.h). */
#include "l2/l2_key.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define SEP_TOKEN "-SEP-"
#define FS_EXT ".data"

int l2_key_check(const struct l2_key *k)
{
    if (!k->model || !k->model_len || k->model_len > L2_KEY_MODEL_MAX)
        return -EINVAL;
    if (memchr(k->model, '@', k->model_len) || memchr(k->model, 0, k->model_len))
        return -EINVAL;
    if (k->salt_len > L2_KEY_SALT_MAX || (k->salt_len && !k->salt))
        return -EINVAL;
    for (size_t i = 0; i < k->salt_len; i++) {
        char c = k->salt[i];
        if (c == '@' || c == '/' || c == '\\' || c == 0)
            return -EINVAL;
    }
    return 0;
}

bool l2_key_equal(const struct l2_key *a, const struct l2_key *b)
{
    return a->kv_rank == b->kv_rank && a->group == b->group && !memcmp(a->hash, b->hash, 32) &&
           a->model_len == b->model_len && !memcmp(a->model, b->model, a->model_len) &&
           a->salt_len == b->salt_len && (!a->salt_len || !memcmp(a->salt, b->salt, a->salt_len));
}

struct out {
    char *buf;
    size_t cap, len;
    bool full;
};

static void put(struct out *o, const char *s, size_t n)
{
    if (o->full || o->len + n + 1 > o->cap) {
        o->full = true;
        return;
    }
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    o->buf[o->len] = 0;
}

static void put_model(struct out *o, const struct l2_key *k, bool fs)
{
    if (!fs) {
        put(o, k->model, k->model_len);
        return;
    }
    for (size_t i = 0; i < k->model_len; i++) {
        if (k->model[i] == '/')
            put(o, SEP_TOKEN, 5);
        else
            put(o, k->model + i, 1);
    }
}

/* Everything after the model: "@[0x]rank[@group]@hash[@salt][.data]". */
static int format(char *buf, size_t cap, const struct l2_key *k, bool fs, bool old)
{
    static const char hex[] = "0123456789abcdef";
    struct out o = { buf, cap, 0, cap == 0 };
    char num[32], hh[65];
    if (l2_key_check(k) < 0)
        return -EINVAL;
    if (cap)
        buf[0] = 0;
    put_model(&o, k, fs);
    snprintf(num, sizeof(num), fs ? "@0x%08x" : "@%08x", k->kv_rank);
    put(&o, num, strlen(num));
    if (!old) {
        snprintf(num, sizeof(num), "@%x", k->group);
        put(&o, num, strlen(num));
    }
    for (int i = 0; i < 32; i++) {
        hh[2 * i] = hex[k->hash[i] >> 4];
        hh[2 * i + 1] = hex[k->hash[i] & 15];
    }
    put(&o, "@", 1);
    put(&o, hh, 64);
    if (k->salt_len) {
        put(&o, "@", 1);
        put(&o, k->salt, k->salt_len);
    }
    if (fs)
        put(&o, FS_EXT, strlen(FS_EXT));
    return o.full ? -ENOSPC : (int)o.len;
}

int l2_key_format(char *buf, size_t cap, const struct l2_key *k) { return format(buf, cap, k, false, false); }
int l2_key_format_old(char *buf, size_t cap, const struct l2_key *k) { return format(buf, cap, k, false, true); }
int l2_key_fs_name(char *buf, size_t cap, const struct l2_key *k) { return format(buf, cap, k, true, false); }
int l2_key_fs_name_old(char *buf, size_t cap, const struct l2_key *k) { return format(buf, cap, k, true, true); }

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* A hex number of 1..8 digits (optionally "0x"-prefixed when allow_0x). */
static int parse_u32(const char *s, size_t n, bool want_0x, uint32_t *out)
{
    if (want_0x) {
        if (n < 2 || s[0] != '0' || (s[1] != 'x' && s[1] != 'X'))
            return -EINVAL;
        s += 2;
        n -= 2;
    }
    if (n == 0 || n > 8)
        return -EINVAL;
    uint32_t v = 0;
    for (size_t i = 0; i < n; i++) {
        int d = hexval(s[i]);
        if (d < 0)
            return -EINVAL;
        v = v << 4 | (uint32_t)d;
    }
    *out = v;
    return 0;
}

static bool is_hash(const char *s, size_t n)
{
    if (n != 64)
        return false;
    for (size_t i = 0; i < n; i++)
        if (hexval(s[i]) < 0)
            return false;
    return true;
}

static void parse_hash(const char *s, uint8_t out[32])
{
    for (int i = 0; i < 32; i++)
        out[i] = (uint8_t)(hexval(s[2 * i]) << 4 | hexval(s[2 * i + 1]));
}

struct field {
    const char *p;
    size_t n;
};

/* Splits on '@' into at most 6 fields; returns the count (6 = too many). */
static int split(const char *s, size_t len, struct field f[6])
{
    int nf = 0;
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || s[i] == '@') {
            if (nf == 6)
                return 6;
            f[nf].p = s + start;
            f[nf].n = i - start;
            nf++;
            start = i + 1;
        }
    }
    return nf;
}

/* Fields after the model: [rank, (group,) hash, (salt)]. */
static int parse_fields(struct field *f, int nf, bool fs, struct l2_key *out, bool *old)
{
    int hash_at;
    if (nf == 3)
        hash_at = 2; /* old, unsalted */
    else if (nf == 4 && is_hash(f[3].p, f[3].n))
        hash_at = 3; /* new, unsalted */
    else if (nf == 4)
        hash_at = 2; /* old, salted */
    else if (nf == 5)
        hash_at = 3; /* new, salted */
    else
        return -EINVAL;
    if (parse_u32(f[1].p, f[1].n, fs, &out->kv_rank) < 0 || !is_hash(f[hash_at].p, f[hash_at].n))
        return -EINVAL;
    out->group = 0;
    if (hash_at == 3 && parse_u32(f[2].p, f[2].n, false, &out->group) < 0)
        return -EINVAL;
    parse_hash(f[hash_at].p, out->hash);
    if (hash_at + 1 < nf) {
        out->salt = f[hash_at + 1].p;
        out->salt_len = f[hash_at + 1].n;
        if (!out->salt_len) /* "...@hash@" is no form we write */
            return -EINVAL;
    } else {
        out->salt = NULL;
        out->salt_len = 0;
    }
    if (old)
        *old = hash_at == 2;
    return 0;
}

int l2_key_parse(const char *s, size_t len, struct l2_key *out)
{
    struct field f[6];
    int nf = split(s, len, f);
    if (parse_fields(f, nf, false, out, NULL) < 0)
        return -EINVAL;
    out->model = f[0].p;
    out->model_len = f[0].n;
    return l2_key_check(out);
}

int l2_key_parse_fs(const char *name, size_t len, struct l2_key *out, char *mbuf, size_t cap, bool *old)
{
    size_t ext = strlen(FS_EXT);
    struct field f[6];
    if (len <= ext || memcmp(name + len - ext, FS_EXT, ext))
        return -EINVAL;
    int nf = split(name, len - ext, f);
    if (parse_fields(f, nf, true, out, old) < 0)
        return -EINVAL;
    /* model: "-SEP-" back to '/' */
    size_t o = 0;
    for (size_t i = 0; i < f[0].n;) {
        char c = f[0].p[i];
        size_t step = 1;
        if (f[0].n - i >= 5 && !memcmp(f[0].p + i, SEP_TOKEN, 5)) {
            c = '/';
            step = 5;
        }
        if (o + 1 >= cap)
            return -EINVAL;
        mbuf[o++] = c;
        i += step;
    }
    if (cap)
        mbuf[o] = 0;
    out->model = mbuf;
    out->model_len = o;
    return l2_key_check(out);
}
