/*
 * wire codec: a key's token list, which the validator decodes in the same
 * walk (struct mp_cap in src/wire/mp.h) and the decoder then takes. Every
 * malformed element at every position of a list long enough to be captured
 * must be refused with the same error as when validation and decoding were
 * two passes: a document the validator refuses fails with the validator's
 * error, whatever the decoder would have said about an earlier field; a valid
 * document with a bad token fails with the decoder's error; every id in a form
 * the capture does not read (int8..64, uint64) still decodes through the
 * general reader. Both the positional form (2604) and the message form (2609).
 */
#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>

#include "wire/mp.h"
#include "wire/wire.h"

#define N_TOK 100 /* > MP_CAP_MIN: captured */

struct doc {
    uint8_t b[16384];
    size_t n;
};

static void put(struct doc *d, const void *p, size_t n)
{
    cr_assert(d->n + n <= sizeof(d->b));
    memcpy(d->b + d->n, p, n);
    d->n += n;
}

static void put_byte(struct doc *d, uint8_t c) { put(d, &c, 1); }

static void put_str(struct doc *d, const char *s)
{
    size_t n = strlen(s);
    cr_assert(n < 32);
    put_byte(d, (uint8_t)(0xa0 | n));
    put(d, s, n);
}

/* Element k of the good list, in one of the four forms the capture reads. */
static uint32_t good_tok(struct doc *d, uint32_t k)
{
    uint32_t v;
    switch (k % 4) {
    case 0: v = k % 128; put_byte(d, (uint8_t)v); break;
    case 1: v = 128 + k % 128; put_byte(d, 0xcc); put_byte(d, (uint8_t)v); break;
    case 2: v = 300 + k; put_byte(d, 0xcd); put_byte(d, (uint8_t)(v >> 8)); put_byte(d, (uint8_t)v); break;
    default:
        v = 70000u + k * 40000u;
        put_byte(d, 0xce);
        for (int s = 24; s >= 0; s -= 8)
            put_byte(d, (uint8_t)(v >> s));
        break;
    }
    return v;
}

static void put_array_hdr(struct doc *d, uint32_t n)
{
    if (n < 16) {
        put_byte(d, (uint8_t)(0x90 | n));
    } else {
        put_byte(d, 0xdc);
        put_byte(d, (uint8_t)(n >> 8));
        put_byte(d, (uint8_t)n);
    }
}

/* What a test changes in the key map. */
struct variant {
    uint32_t n_tok;          /* list length */
    int bad_at;              /* index whose element is `bad` (-1: none) */
    const char *bad;         /* its bytes (hex) */
    const char *world_size;  /* world_size's bytes (hex); NULL: 01 */
    const char *junk_before; /* an unknown key's value before token_ids (hex); NULL: none */
    const char *junk_after;  /* one after the rest of the key (hex); NULL: none */
    int cut_at;              /* -1, or the frame ends inside element cut_at */
};

static size_t hex(uint8_t *out, const char *s)
{
    size_t n = 0;
    while (*s) {
        if (*s == ' ') {
            s++;
            continue;
        }
        unsigned v;
        cr_assert(sscanf(s, "%2x", &v) == 1);
        out[n++] = (uint8_t)v;
        s += 2;
    }
    return n;
}

static void put_hex(struct doc *d, const char *s)
{
    uint8_t tmp[4096];
    size_t n = hex(tmp, s);
    put(d, tmp, n);
}

/* The key map; want[] gets the ids a good decode yields. */
static void key_doc(struct doc *d, const struct variant *v, uint32_t *want)
{
    put_byte(d, (uint8_t)(0x88 + (v->junk_before != NULL) + (v->junk_after != NULL)));
    put_str(d, "model_name");
    put_str(d, "m");
    put_str(d, "world_size");
    put_hex(d, v->world_size ? v->world_size : "01");
    put_str(d, "worker_id");
    put_byte(d, 0xc0);
    if (v->junk_before) {
        put_str(d, "junk");
        put_hex(d, v->junk_before);
    }
    put_str(d, "token_ids");
    put_array_hdr(d, v->n_tok);
    for (uint32_t k = 0; k < v->n_tok; k++) {
        if ((int)k == v->bad_at) {
            put_hex(d, v->bad);
            want[k] = 0;
        } else {
            size_t at = d->n;
            want[k] = good_tok(d, k);
            if ((int)k == v->cut_at) {
                d->n = at + 1; /* the type byte only */
                return;
            }
        }
    }
    put_str(d, "start");
    put_byte(d, 0x00);
    put_str(d, "end");
    put_byte(d, 0x00);
    put_str(d, "request_id");
    put_str(d, "r");
    put_str(d, "cache_salt");
    put_str(d, "");
    if (v->junk_after) {
        put_str(d, "junk");
        put_hex(d, v->junk_after);
    }
}

/* Decodes a LOOKUP carrying the variant's key: positional (2604) or message
 * form (2609). The frames stay alive in *payload until the caller is done. */
static int decode_lookup(bool message, const struct variant *v, uint32_t *want, struct doc *payload,
                         struct wire_req *req)
{
    static const uint8_t uid = 0x00, type2604 = 0x05, type2609 = 0x08, tp = 0x01;
    payload->n = 0;
    struct wire_frame f[4] = { { &uid, 1 }, { message ? &type2609 : &type2604, 1 } };
    size_t n;
    if (message) {
        put_byte(payload, 0x82);
        put_str(payload, "key");
        key_doc(payload, v, want);
        put_str(payload, "tp_size");
        put_byte(payload, 0x01);
        f[2] = (struct wire_frame){ payload->b, payload->n };
        n = 3;
    } else {
        key_doc(payload, v, want);
        f[2] = (struct wire_frame){ payload->b, payload->n };
        f[3] = (struct wire_frame){ &tp, 1 };
        n = 4;
    }
    return wire_decode_request(message ? WIRE_PROFILE_2609 : WIRE_PROFILE_2604, f, n, req);
}

static void expect_tokens(const struct wire_req *req, const uint32_t *want, uint32_t n, const char *what)
{
    cr_assert_eq(req->key.n_tokens, n, "%s: %zu tokens, want %u", what, req->key.n_tokens, n);
    for (uint32_t k = 0; k < n; k++)
        cr_assert_eq(req->key.token_ids[k], want[k], "%s: token %u is %u, want %u", what, k,
                     req->key.token_ids[k], want[k]);
}

static const struct {
    const char *bytes;
    int err;         /* expected error (positive); 0: decodes */
    uint32_t value;  /* the id when it decodes */
} bad_kinds[] = {
    { "c1", WIRE_EMSGPACK, 0 },                          /* reserved byte: the validator */
    { "d4 02 00", WIRE_EEXT, 0 },                        /* ext of another type: the validator */
    { "c3", WIRE_EWRONGTYPE, 0 },                        /* bool */
    { "c0", WIRE_EWRONGTYPE, 0 },                        /* nil */
    { "ff", WIRE_ERANGE, 0 },                            /* -1 */
    { "d4 01 00", WIRE_EWRONGTYPE, 0 },                  /* ext 1: valid msgpack, not an int */
    { "91 01", WIRE_EWRONGTYPE, 0 },                     /* nested array */
    { "a1 61", WIRE_EWRONGTYPE, 0 },                     /* str */
    { "cb 00 00 00 00 00 00 00 00", WIRE_EWRONGTYPE, 0 }, /* float */
    { "cf 00 00 00 01 00 00 00 00", WIRE_ERANGE, 0 },    /* 2^32 */
    { "d0 fb", WIRE_ERANGE, 0 },                         /* int8 -5 */
    { "d0 05", 0, 5 },                                   /* int8 5: the general reader */
    { "d1 01 00", 0, 256 },                              /* int16 */
    { "d2 00 01 00 01", 0, 65537 },                      /* int32 */
    { "d3 00 00 00 00 ff ff ff ff", 0, 4294967295u },    /* int64 */
    { "cf 00 00 00 00 00 00 00 07", 0, 7 },              /* uint64 */
};
#define N_KINDS (sizeof(bad_kinds) / sizeof(bad_kinds[0]))

Test(wire_tokens, good_list_both_forms)
{
    for (int message = 0; message < 2; message++) {
        for (uint32_t n = 0; n <= 130; n += (n < 70 ? 1 : 30)) { /* below, at and above MP_CAP_MIN */
            struct variant v = { .n_tok = n, .bad_at = -1, .cut_at = -1 };
            static struct doc d;
            uint32_t want[256];
            struct wire_req req;
            int rc = decode_lookup(message, &v, want, &d, &req);
            cr_assert_eq(rc, 0, "n %u message %d: %s", n, message, wire_strerror(rc));
            expect_tokens(&req, want, n, "good");
            wire_req_free(&req);
        }
    }
}

/* Every kind of element at every position: the error (or value) it had when
 * validation and decoding were two passes. */
Test(wire_tokens, bad_element_at_every_position)
{
    for (int message = 0; message < 2; message++) {
        for (size_t kind = 0; kind < N_KINDS; kind++) {
            for (int at = 0; at < N_TOK; at++) {
                struct variant v = { .n_tok = N_TOK, .bad_at = at, .bad = bad_kinds[kind].bytes, .cut_at = -1 };
                static struct doc d;
                uint32_t want[N_TOK];
                struct wire_req req;
                int rc = decode_lookup(message, &v, want, &d, &req);
                cr_assert_eq(rc, -bad_kinds[kind].err, "%s at %d (message %d): got %s, want %s",
                             bad_kinds[kind].bytes, at, message, wire_strerror(rc),
                             wire_strerror(-bad_kinds[kind].err));
                if (rc == 0) {
                    want[at] = bad_kinds[kind].value;
                    expect_tokens(&req, want, N_TOK, bad_kinds[kind].bytes);
                } else {
                    cr_assert_eq(req.key.token_ids, NULL, "a refused request keeps no token list");
                    cr_assert_eq(req.op, WIRE_OP_LOOKUP);
                }
                wire_req_free(&req);
            }
        }
    }
}

/* A document the validator refuses fails with the validator's error, even
 * when the decoder would have refused a field before it: the order of the
 * two passes is kept. */
Test(wire_tokens, validator_error_wins_over_an_earlier_bad_token)
{
    for (int message = 0; message < 2; message++) {
        for (int at = 0; at < N_TOK; at++) {
            uint32_t want[N_TOK];
            static struct doc d;
            struct wire_req req;
            /* a bool token (decoder's error), then a reserved byte after the list */
            struct variant v = { .n_tok = N_TOK, .bad_at = at, .bad = "c3", .junk_after = "c1", .cut_at = -1 };
            cr_assert_eq(decode_lookup(message, &v, want, &d, &req), -WIRE_EMSGPACK, "at %d", at);
            wire_req_free(&req);
            /* ... an ext of another type after it */
            v.junk_after = "d4 07 00";
            cr_assert_eq(decode_lookup(message, &v, want, &d, &req), -WIRE_EEXT, "at %d", at);
            wire_req_free(&req);
            /* a valid value after it: the decoder's error */
            v.junk_after = "93 01 02 03";
            cr_assert_eq(decode_lookup(message, &v, want, &d, &req), -WIRE_EWRONGTYPE, "at %d", at);
            wire_req_free(&req);
            /* a wrongly typed field before the list, a reserved byte in it */
            struct variant w = { .n_tok = N_TOK, .bad_at = at, .bad = "c1", .world_size = "c3", .cut_at = -1 };
            cr_assert_eq(decode_lookup(message, &w, want, &d, &req), -WIRE_EMSGPACK, "at %d", at);
            wire_req_free(&req);
            /* the same without the reserved byte: the decoder's first error */
            w.bad = "ff";
            cr_assert_eq(decode_lookup(message, &w, want, &d, &req), -WIRE_EWRONGTYPE, "at %d", at);
            wire_req_free(&req);
        }
    }
}

/* A frame that ends inside any element: the validator's error, exactly. */
Test(wire_tokens, truncated_at_every_position)
{
    for (int message = 0; message < 2; message++) {
        for (int at = 0; at < N_TOK; at++) {
            struct variant v = { .n_tok = N_TOK, .bad_at = -1, .cut_at = at };
            uint32_t want[N_TOK];
            static struct doc d;
            struct wire_req req;
            int rc = decode_lookup(message, &v, want, &d, &req);
            int vrc = mp_validate(d.b, d.n);
            cr_assert_lt(vrc, 0);
            cr_assert_eq(rc, vrc, "at %d (message %d): got %s, want %s", at, message, wire_strerror(rc),
                         wire_strerror(vrc));
            wire_req_free(&req);
        }
    }
}

/* Another long int list in the key (an unknown field) before token_ids: the
 * capture takes the first list it can, the decoder reads the other one
 * itself; a first list that fails the capture leaves it to the next. */
Test(wire_tokens, other_long_lists_in_the_key)
{
    char all_ints[1024] = "dc 00 50", with_bool[1024] = "dc 00 50";
    for (int k = 0; k < 80; k++) {
        strcat(all_ints, " 05");
        strcat(with_bool, k == 79 ? " c3" : " 05");
    }
    const char *befores[] = { all_ints, with_bool };
    for (int message = 0; message < 2; message++) {
        for (int b = 0; b < 2; b++) {
            struct variant v = { .n_tok = N_TOK, .bad_at = -1, .junk_before = befores[b], .cut_at = -1 };
            uint32_t want[N_TOK];
            static struct doc d;
            struct wire_req req;
            cr_assert_eq(decode_lookup(message, &v, want, &d, &req), 0);
            expect_tokens(&req, want, N_TOK, b ? "after a list with a bool" : "after an int list");
            wire_req_free(&req);
            /* and the same with a bad token: still refused */
            v.bad_at = N_TOK - 1;
            v.bad = "c3";
            cr_assert_eq(decode_lookup(message, &v, want, &d, &req), -WIRE_EWRONGTYPE);
            wire_req_free(&req);
        }
    }
}

/* A repeated token_ids key: the later list wins, as before. */
Test(wire_tokens, repeated_token_ids_key)
{
    struct variant v = { .n_tok = N_TOK, .bad_at = -1, .cut_at = -1 };
    char later[1024] = "dc 00 46"; /* 70 ids, 9 each */
    for (int k = 0; k < 70; k++)
        strcat(later, " 09");
    v.junk_after = later;
    uint32_t want[N_TOK];
    static struct doc d;
    struct wire_req req;
    cr_assert_eq(decode_lookup(false, &v, want, &d, &req), 0);
    /* "junk" is unknown: the list stays the first one */
    expect_tokens(&req, want, N_TOK, "junk");
    wire_req_free(&req);
    /* rename the later key to token_ids ("junk" -> a second "token_ids" is not
     * the same length, so build it by hand: the key map with two lists) */
    struct doc k2 = { .n = 0 };
    put_byte(&k2, 0x89);
    put_str(&k2, "token_ids");
    put_array_hdr(&k2, N_TOK);
    for (uint32_t i = 0; i < N_TOK; i++)
        good_tok(&k2, i);
    put_str(&k2, "model_name");
    put_str(&k2, "m");
    put_str(&k2, "world_size");
    put_byte(&k2, 0x01);
    put_str(&k2, "worker_id");
    put_byte(&k2, 0xc0);
    put_str(&k2, "start");
    put_byte(&k2, 0x00);
    put_str(&k2, "end");
    put_byte(&k2, 0x00);
    put_str(&k2, "request_id");
    put_str(&k2, "r");
    put_str(&k2, "cache_salt");
    put_str(&k2, "");
    put_str(&k2, "token_ids");
    put_hex(&k2, later);
    static const uint8_t uid = 0x00, type = 0x05, tp = 0x01;
    struct wire_frame f[4] = { { &uid, 1 }, { &type, 1 }, { k2.b, k2.n }, { &tp, 1 } };
    cr_assert_eq(wire_decode_request(WIRE_PROFILE_2604, f, 4, &req), 0);
    cr_assert_eq(req.key.n_tokens, 70);
    for (int i = 0; i < 70; i++)
        cr_assert_eq(req.key.token_ids[i], 9);
    wire_req_free(&req);
}
