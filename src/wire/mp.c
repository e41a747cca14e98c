/* mp: bounded msgpack reader and smallest-form writer (see mp.h). */
#include "wire/mp.h"

#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "wire/proto.h"

static uint64_t be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int k = 0; k < n; k++)
        v = (v << 8) | p[k];
    return v;
}

static int take(struct mp_rd *r, size_t n, const uint8_t **out)
{
    if (mp_left(r) < n)
        return -WIRE_ETRUNC;
    *out = r->p;
    r->p += n;
    return 0;
}

static int read_len(struct mp_rd *r, int width, uint64_t *n)
{
    const uint8_t *q;
    int rc = take(r, (size_t)width, &q);
    if (rc < 0)
        return rc;
    *n = be(q, width);
    return 0;
}

/* Payload of str/bin/ext: the length must fit what is left. */
static int payload(struct mp_rd *r, struct mp_obj *o, uint64_t n)
{
    if (n > mp_left(r))
        return -WIRE_EOVERSIZE;
    o->p = r->p;
    o->n = (uint32_t)n;
    r->p += n;
    return 0;
}

/* A container count: each element needs at least one byte (two per map entry). */
static int count(struct mp_rd *r, struct mp_obj *o, uint64_t n, int per)
{
    if (n > mp_left(r) / (uint64_t)per)
        return -WIRE_EOVERSIZE;
    o->n = (uint32_t)n;
    return 0;
}

static void set_uint(struct mp_obj *o, uint64_t v)
{
    o->type = MP_INT;
    o->neg = false;
    o->u = v;
    o->i = (int64_t)v; /* meaningful only when v <= INT64_MAX */
}

static void set_int(struct mp_obj *o, int64_t v)
{
    if (v >= 0) {
        set_uint(o, (uint64_t)v);
        return;
    }
    o->type = MP_INT;
    o->neg = true;
    o->i = v;
    o->u = 0;
}

static int ext_fixed(struct mp_rd *r, struct mp_obj *o, uint64_t n)
{
    const uint8_t *q;
    int rc = take(r, 1, &q);
    if (rc < 0)
        return rc;
    o->type = MP_EXT;
    o->ext = (int8_t)q[0];
    /* fixext sizes are implied by the tag: a short payload is a truncation */
    return payload(r, o, n) < 0 ? -WIRE_ETRUNC : 0;
}

static int ext_var(struct mp_rd *r, struct mp_obj *o, int width)
{
    uint64_t n;
    int rc = read_len(r, width, &n);
    if (rc < 0)
        return rc;
    const uint8_t *q;
    if ((rc = take(r, 1, &q)) < 0)
        return rc;
    o->type = MP_EXT;
    o->ext = (int8_t)q[0];
    return payload(r, o, n);
}

static int sized(struct mp_rd *r, struct mp_obj *o, enum mp_type t, int width)
{
    uint64_t n;
    int rc = read_len(r, width, &n);
    if (rc < 0)
        return rc;
    o->type = t;
    if (t == MP_ARRAY)
        return count(r, o, n, 1);
    if (t == MP_MAP)
        return count(r, o, n, 2);
    return payload(r, o, n);
}

static int fixed_int(struct mp_rd *r, struct mp_obj *o, int width, bool is_signed)
{
    uint64_t v;
    int rc = read_len(r, width, &v);
    if (rc < 0)
        return rc;
    if (!is_signed) {
        set_uint(o, v);
        return 0;
    }
    int shift = 64 - 8 * width;
    /* sign-extend through the unsigned domain (no UB on the shift) */
    int64_t s = (int64_t)(v << shift);
    set_int(o, shift ? s / ((int64_t)1 << shift) : s);
    return 0;
}

int mp_next(struct mp_rd *r, struct mp_obj *o)
{
    const uint8_t *q;
    memset(o, 0, sizeof(*o));
    o->start = r->p;
    int rc = take(r, 1, &q);
    if (rc < 0)
        return rc;
    uint8_t c = q[0];
    if (c <= 0x7f) {
        set_uint(o, c);
        return 0;
    }
    if (c >= 0xe0) {
        set_int(o, (int8_t)c);
        return 0;
    }
    if (c <= 0x8f) {
        o->type = MP_MAP;
        return count(r, o, c & 0x0f, 2);
    }
    if (c <= 0x9f) {
        o->type = MP_ARRAY;
        return count(r, o, c & 0x0f, 1);
    }
    if (c <= 0xbf) {
        o->type = MP_STR;
        return payload(r, o, c & 0x1f) < 0 ? -WIRE_ETRUNC : 0;
    }
    switch (c) {
    case 0xc0: o->type = MP_NIL; return 0;
    case 0xc1: return -WIRE_EMSGPACK;
    case 0xc2: o->type = MP_BOOL; o->b = false; return 0;
    case 0xc3: o->type = MP_BOOL; o->b = true; return 0;
    case 0xc4: return sized(r, o, MP_BIN, 1);
    case 0xc5: return sized(r, o, MP_BIN, 2);
    case 0xc6: return sized(r, o, MP_BIN, 4);
    case 0xc7: return ext_var(r, o, 1);
    case 0xc8: return ext_var(r, o, 2);
    case 0xc9: return ext_var(r, o, 4);
    case 0xca: {
        uint64_t v;
        if ((rc = read_len(r, 4, &v)) < 0)
            return rc;
        uint32_t w = (uint32_t)v;
        float f;
        memcpy(&f, &w, 4);
        o->type = MP_FLOAT;
        o->f = f;
        return 0;
    }
    case 0xcb: {
        uint64_t v;
        if ((rc = read_len(r, 8, &v)) < 0)
            return rc;
        o->type = MP_FLOAT;
        memcpy(&o->f, &v, 8);
        return 0;
    }
    case 0xcc: return fixed_int(r, o, 1, false);
    case 0xcd: return fixed_int(r, o, 2, false);
    case 0xce: return fixed_int(r, o, 4, false);
    case 0xcf: return fixed_int(r, o, 8, false);
    case 0xd0: return fixed_int(r, o, 1, true);
    case 0xd1: return fixed_int(r, o, 2, true);
    case 0xd2: return fixed_int(r, o, 4, true);
    case 0xd3: return fixed_int(r, o, 8, true);
    case 0xd4: return ext_fixed(r, o, 1);
    case 0xd5: return ext_fixed(r, o, 2);
    case 0xd6: return ext_fixed(r, o, 4);
    case 0xd7: return ext_fixed(r, o, 8);
    case 0xd8: return ext_fixed(r, o, 16);
    case 0xd9: return sized(r, o, MP_STR, 1);
    case 0xda: return sized(r, o, MP_STR, 2);
    case 0xdb: return sized(r, o, MP_STR, 4);
    case 0xdc: return sized(r, o, MP_ARRAY, 2);
    case 0xdd: return sized(r, o, MP_ARRAY, 4);
    case 0xde: return sized(r, o, MP_MAP, 2);
    default:   return sized(r, o, MP_MAP, 4); /* 0xdf */
    }
}

/* Bytes after the type byte of a fixed-size scalar (nil, bool, int, float),
 * or -1 for anything else. Lets skip() step over the long int arrays of
 * token ids without decoding each element (a 32K-token LOOKUP). */
#define W1(c) [c] = 1 + 1
#define W2(c) [c] = 2 + 1
#define W4(c) [c] = 4 + 1
#define W8(c) [c] = 8 + 1
/* width + 1 per type byte; 0 = not a fixed-size scalar */
static const uint8_t scalar_w1[256] = {
    [0x00 ... 0x7f] = 1, [0xe0 ... 0xff] = 1, [0xc0] = 1, [0xc2] = 1, [0xc3] = 1,
    W1(0xcc), W1(0xd0), W2(0xcd), W2(0xd1), W4(0xca), W4(0xce), W4(0xd2), W8(0xcb), W8(0xcf), W8(0xd3),
};
#undef W1
#undef W2
#undef W4
#undef W8

uint32_t mp_rd_u32s(struct mp_rd *r, uint32_t *v, uint32_t n)
{
    const uint8_t *p = r->p, *end = r->end;
    uint32_t k = 0;
    for (; k < n; k++) {
        if (p < end && p[0] <= 0x7f) {
            v[k] = p[0];
            p += 1;
        } else if (end - p >= 5 && p[0] == 0xce) {
            uint32_t be32;
            memcpy(&be32, p + 1, 4);
            v[k] = be32toh(be32);
            p += 5;
        } else if (end - p >= 3 && p[0] == 0xcd) {
            uint16_t be16;
            memcpy(&be16, p + 1, 2);
            v[k] = be16toh(be16);
            p += 3;
        } else if (end - p >= 2 && p[0] == 0xcc) {
            v[k] = p[1];
            p += 2;
        } else {
            break;
        }
    }
    r->p = p;
    return k;
}

/* Tries to capture the array whose header o was just read (struct mp_cap);
 * returns how many of its elements were read past (all of them when it was
 * captured). */
static uint32_t cap_try(struct mp_rd *r, const struct mp_obj *o, struct mp_cap *cap)
{
    if (o->n > cap->buf_n) {
        /* o->n <= bytes left (mp_next), so the buffer is bounded by the frame */
        uint32_t *b = wire_own_uninit(cap->own, o->n, sizeof(*b));
        if (!b)
            return 0;
        cap->buf = b;
        cap->buf_n = o->n;
    }
    uint32_t k = mp_rd_u32s(r, cap->buf, o->n);
    if (k == o->n) {
        cap->at = o->start;
        cap->end = r->p;
        cap->n = o->n;
    }
    return k;
}

/* Skips one value. Recursion depth is bounded by WIRE_MAX_DEPTH, so the C
 * stack use is bounded too. `check_ext` rejects ext codes other than 1;
 * `cap`, when not NULL, captures a token list (struct mp_cap). */
static int skip(struct mp_rd *r, int depth, bool check_ext, struct mp_cap *cap)
{
    struct mp_obj o;
    int rc = mp_next(r, &o);
    if (rc < 0)
        return rc;
    if (o.type == MP_EXT && check_ext && o.ext != 1)
        return -WIRE_EEXT;
    if (o.type != MP_ARRAY && o.type != MP_MAP)
        return 0;
    if (depth >= WIRE_MAX_DEPTH)
        return -WIRE_EDEPTH;
    uint64_t items = o.type == MP_MAP ? 2ull * o.n : o.n, k0 = 0;
    if (cap && !cap->at && o.type == MP_ARRAY && o.n >= MP_CAP_MIN) {
        k0 = cap_try(r, &o, cap);
        if (cap->at)
            return 0;
    }
    for (uint64_t k = k0; k < items; k++) {
        const uint8_t *p = r->p, *end = r->end;
        while (k < items && p < end) { /* whole fixed-size scalars: step over them */
            unsigned w1 = scalar_w1[*p];
            if (!w1 || (size_t)(end - p) < w1)
                break;
            p += w1;
            k++;
        }
        r->p = p;
        if (k == items)
            break;
        if ((rc = skip(r, depth + 1, check_ext, cap)) < 0) /* truncation and the rest: the full reader */
            return rc;
    }
    return 0;
}

int mp_skip(struct mp_rd *r, int depth) { return skip(r, depth, false, NULL); }

int mp_validate_cap(const void *data, size_t len, struct mp_cap *cap)
{
    struct mp_rd r;
    mp_rd_init(&r, data, len);
    int rc = skip(&r, 0, true, cap);
    if (rc < 0)
        return rc;
    return mp_left(&r) ? -WIRE_ETRAILING : 0;
}

int mp_validate(const void *data, size_t len) { return mp_validate_cap(data, len, NULL); }

int mp_peek_type(const void *data, size_t len)
{
    if (len == 0)
        return -1;
    uint8_t c = *(const uint8_t *)data;
    if (c <= 0x7f || c >= 0xe0 || (c >= 0xcc && c <= 0xd3))
        return MP_INT;
    if (c <= 0x8f || c == 0xde || c == 0xdf)
        return MP_MAP;
    if (c <= 0x9f || c == 0xdc || c == 0xdd)
        return MP_ARRAY;
    if (c <= 0xbf || (c >= 0xd9 && c <= 0xdb))
        return MP_STR;
    switch (c) {
    case 0xc0: return MP_NIL;
    case 0xc2: case 0xc3: return MP_BOOL;
    case 0xc4: case 0xc5: case 0xc6: return MP_BIN;
    case 0xca: case 0xcb: return MP_FLOAT;
    case 0xc1: return -1;
    default: return MP_EXT;
    }
}

int mp_obj_i64(const struct mp_obj *o, int64_t *v)
{
    if (o->type != MP_INT)
        return -WIRE_EWRONGTYPE;
    if (!o->neg && o->u > (uint64_t)INT64_MAX)
        return -WIRE_ERANGE;
    *v = o->i;
    return 0;
}

/* ---- writer ------------------------------------------------------------ */

static int grow(struct wire_buf *b, size_t need)
{
    if (b->err)
        return b->err;
    if (need <= b->cap - b->len)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < need) {
        if (cap > SIZE_MAX / 2) {
            b->err = -ENOMEM;
            return b->err;
        }
        cap *= 2;
    }
    uint8_t *d = realloc(b->data, cap);
    if (!d) {
        b->err = -ENOMEM;
        return b->err;
    }
    b->data = d;
    b->cap = cap;
    return 0;
}

void mp_w_raw(struct wire_buf *b, const void *p, size_t n)
{
    if (n == 0 || grow(b, n) < 0)
        return;
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void w_byte(struct wire_buf *b, uint8_t c) { mp_w_raw(b, &c, 1); }

static void w_be(struct wire_buf *b, uint8_t tag, uint64_t v, int width)
{
    uint8_t t[9];
    t[0] = tag;
    for (int k = 0; k < width; k++)
        t[1 + k] = (uint8_t)(v >> (8 * (width - 1 - k)));
    mp_w_raw(b, t, (size_t)width + 1);
}

void mp_w_nil(struct wire_buf *b) { w_byte(b, 0xc0); }
void mp_w_bool(struct wire_buf *b, bool v) { w_byte(b, v ? 0xc3 : 0xc2); }

void mp_w_uint(struct wire_buf *b, uint64_t v)
{
    if (v <= 0x7f)
        w_byte(b, (uint8_t)v);
    else if (v <= UINT8_MAX)
        w_be(b, 0xcc, v, 1);
    else if (v <= UINT16_MAX)
        w_be(b, 0xcd, v, 2);
    else if (v <= UINT32_MAX)
        w_be(b, 0xce, v, 4);
    else
        w_be(b, 0xcf, v, 8);
}

void mp_w_int(struct wire_buf *b, int64_t v)
{
    if (v >= 0)
        mp_w_uint(b, (uint64_t)v);
    else if (v >= -32)
        w_byte(b, (uint8_t)(int8_t)v);
    else if (v >= INT8_MIN)
        w_be(b, 0xd0, (uint64_t)v, 1);
    else if (v >= INT16_MIN)
        w_be(b, 0xd1, (uint64_t)v, 2);
    else if (v >= INT32_MIN)
        w_be(b, 0xd2, (uint64_t)v, 4);
    else
        w_be(b, 0xd3, (uint64_t)v, 8);
}

void mp_w_float(struct wire_buf *b, double v)
{
    uint64_t u;
    memcpy(&u, &v, 8);
    w_be(b, 0xcb, u, 8);
}

static void w_len(struct wire_buf *b, size_t n, uint8_t fix, size_t fixmax, uint8_t t8,
                  uint8_t t16, uint8_t t32)
{
    if (n <= fixmax && fix)
        w_byte(b, (uint8_t)(fix | n));
    else if (n <= UINT8_MAX && t8)
        w_be(b, t8, n, 1);
    else if (n <= UINT16_MAX)
        w_be(b, t16, n, 2);
    else
        w_be(b, t32, n, 4);
}

void mp_w_str(struct wire_buf *b, const char *p, size_t n)
{
    w_len(b, n, 0xa0, 31, 0xd9, 0xda, 0xdb);
    mp_w_raw(b, p, n);
}

void mp_w_cstr(struct wire_buf *b, const char *s) { mp_w_str(b, s, strlen(s)); }

void mp_w_bin(struct wire_buf *b, const void *p, size_t n)
{
    w_len(b, n, 0, 0, 0xc4, 0xc5, 0xc6);
    mp_w_raw(b, p, n);
}

void mp_w_array(struct wire_buf *b, uint32_t n) { w_len(b, n, 0x90, 15, 0, 0xdc, 0xdd); }
void mp_w_map(struct wire_buf *b, uint32_t n) { w_len(b, n, 0x80, 15, 0, 0xde, 0xdf); }

void mp_w_ext(struct wire_buf *b, int8_t type, const void *p, size_t n)
{
    static const uint8_t fixtag[17] = { [1] = 0xd4, [2] = 0xd5, [4] = 0xd6, [8] = 0xd7, [16] = 0xd8 };
    if (n <= 16 && fixtag[n])
        w_byte(b, fixtag[n]);
    else
        w_len(b, n, 0, 0, 0xc7, 0xc8, 0xc9);
    w_byte(b, (uint8_t)type);
    mp_w_raw(b, p, n);
}

/* ---- wire_buf / wire_msg ----------------------------------------------- */

void wire_buf_init(struct wire_buf *b) { memset(b, 0, sizeof(*b)); }
void wire_buf_reset(struct wire_buf *b)
{
    b->len = 0;
    b->err = 0;
}
void wire_buf_free(struct wire_buf *b)
{
    free(b->data);
    wire_buf_init(b);
}

void wire_msg_init(struct wire_msg *m) { memset(m, 0, sizeof(*m)); }
void wire_msg_free(struct wire_msg *m)
{
    wire_buf_free(&m->buf);
    wire_msg_init(m);
}

struct wire_frame wire_msg_frame(const struct wire_msg *m, size_t i)
{
    struct wire_frame f = { NULL, 0 };
    if (i < m->n_frames) {
        f.data = m->buf.data + m->off[i];
        f.len = m->off[i + 1] - m->off[i];
    }
    return f;
}
