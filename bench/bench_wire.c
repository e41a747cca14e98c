/*
 * bench_wire: decoding a LOOKUP of a 32K-token prompt, the largest request
 * on the control path, in ns per token.
 *
 *   lmcd        wire_decode_request() of the frames a client sends (uid,
 *               type, the key's msgpack document with 32768 token ids;
 *               tokens < 152064 as a tokenizer gives them, so most are
 *               uint32 or uint16 msgpack ints): validation plus decode
 *   msgpack-c   msgpack_unpack_next() of the same key frame into a
 *               msgpack_object tree, then reading the token array into
 *               uint32_t (what a server built on msgpack-c would do)
 *   plain read  a loop that reads the token ints with their 1-byte type
 *               tags and no checks: the floor
 *
 * Best of ROUNDS rounds of ITERS decodes each, interleaved.
 */
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "util/clock.h"
#include "wire/wire.h"

#define TOKENS 32768
#define ROUNDS 5

static uint32_t tokens[TOKENS], out[TOKENS];

static double best_ns(double cur, uint64_t ns, int iters)
{
    double v = (double)ns / iters / TOKENS;
    return cur == 0 || v < cur ? v : cur;
}

/* The key frame: the one payload frame holding token_ids. */
static struct wire_frame key_frame(const struct wire_msg *m)
{
    struct wire_frame best = { 0 };
    for (size_t i = 2; i < m->n_frames; i++) {
        struct wire_frame f = wire_msg_frame(m, i);
        if (f.len > best.len)
            best = f;
    }
    return best;
}

/* Finds the token array in a msgpack-c tree (the key is a list or a map). */
static const msgpack_object_array *find_tokens(const msgpack_object *o)
{
    if (o->type == MSGPACK_OBJECT_ARRAY) {
        if (o->via.array.size >= TOKENS)
            return &o->via.array;
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            const msgpack_object_array *a = find_tokens(&o->via.array.ptr[i]);
            if (a)
                return a;
        }
    } else if (o->type == MSGPACK_OBJECT_MAP) {
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            const msgpack_object_array *a = find_tokens(&o->via.map.ptr[i].val);
            if (a)
                return a;
        }
    }
    return NULL;
}

/* The floor: walks the ints of the token array with no checks. */
static size_t plain_read(const uint8_t *p, const uint8_t *end, uint32_t *v)
{
    while (p < end && *p != 0xdd && *p != 0xdc) /* to the array header */
        p++;
    if (p >= end)
        return 0;
    uint32_t n = *p == 0xdc ? (uint32_t)(p[1] << 8 | p[2]) : (uint32_t)p[1] << 24 | p[2] << 16 | p[3] << 8 | p[4];
    p += *p == 0xdc ? 3 : 5;
    for (uint32_t k = 0; k < n; k++) {
        uint8_t c = *p++;
        if (c <= 0x7f) {
            v[k] = c;
        } else if (c == 0xcc) {
            v[k] = *p++;
        } else if (c == 0xcd) {
            v[k] = (uint32_t)p[0] << 8 | p[1];
            p += 2;
        } else {
            v[k] = (uint32_t)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3];
            p += 4;
        }
    }
    return n;
}

int main(void)
{
    int iters = bench_quick() ? 20 : 200;
    uint32_t x = 2463534242u;
    for (int i = 0; i < TOKENS; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        tokens[i] = x % 152064;
    }
    struct wire_req req;
    wire_req_init(&req);
    req.op = WIRE_OP_LOOKUP;
    req.has_key = true;
    req.key.model_name = (struct wire_str){ "bench-model", 11 };
    req.key.world_size = 1;
    req.key.token_ids = tokens;
    req.key.n_tokens = TOKENS;
    req.key.end = TOKENS;
    req.key.request_id = (struct wire_str){ "bench", 5 };
    req.key.cache_salt = (struct wire_str){ "", 0 };
    req.tp_size = 1;
    struct wire_msg m;
    wire_msg_init(&m);
    if (wire_encode_request(WIRE_PROFILE_2609, WIRE_FORM_POSITIONAL, &req, 1, &m) < 0) {
        fprintf(stderr, "bench_wire: encode failed\n");
        return 1;
    }
    struct wire_frame frames[WIRE_MAX_REQ_FRAMES];
    for (size_t i = 0; i < m.n_frames; i++)
        frames[i] = wire_msg_frame(&m, i);
    struct wire_frame kf = key_frame(&m);

    double lmcd = 0, mpc = 0, plain = 0;
    msgpack_zone zone;
    msgpack_zone_init(&zone, 1 << 20);
    for (int r = 0; r < ROUNDS; r++) {
        uint64_t t0 = clock_mono_ns();
        for (int i = 0; i < iters; i++) {
            struct wire_req d;
            if (wire_decode_request(WIRE_PROFILE_2609, frames, m.n_frames, &d) < 0 || d.key.n_tokens != TOKENS ||
                d.key.token_ids[TOKENS - 1] != tokens[TOKENS - 1]) {
                fprintf(stderr, "bench_wire: lmcd decode failed\n");
                return 1;
            }
            wire_req_free(&d);
        }
        lmcd = best_ns(lmcd, clock_mono_ns() - t0, iters);

        t0 = clock_mono_ns();
        for (int i = 0; i < iters; i++) {
            msgpack_object obj;
            size_t off = 0;
            if (msgpack_unpack(kf.data, kf.len, &off, &zone, &obj) != MSGPACK_UNPACK_SUCCESS) {
                fprintf(stderr, "bench_wire: msgpack-c decode failed\n");
                return 1;
            }
            const msgpack_object_array *a = find_tokens(&obj);
            if (!a || a->size != TOKENS)
                return 1;
            for (uint32_t k = 0; k < a->size; k++) {
                if (a->ptr[k].type != MSGPACK_OBJECT_POSITIVE_INTEGER || a->ptr[k].via.u64 > UINT32_MAX)
                    return 1;
                out[k] = (uint32_t)a->ptr[k].via.u64;
            }
            msgpack_zone_clear(&zone);
        }
        mpc = best_ns(mpc, clock_mono_ns() - t0, iters);

        t0 = clock_mono_ns();
        for (int i = 0; i < iters; i++) {
            if (plain_read(kf.data, (const uint8_t *)kf.data + kf.len, out) != TOKENS)
                return 1;
            __asm__ volatile("" ::"r"(out) : "memory");
        }
        plain = best_ns(plain, clock_mono_ns() - t0, iters);
    }
    if (out[TOKENS - 1] != tokens[TOKENS - 1]) {
        fprintf(stderr, "bench_wire: the plain read is wrong\n");
        return 1;
    }
    msgpack_zone_destroy(&zone);
    wire_msg_free(&m);
    printf("  decode a 32K-token LOOKUP: lmcd %.2f ns/token, msgpack-c %.2f (%.2fx), plain read %.2f (%.2fx)\n",
           lmcd, mpc, lmcd / mpc, plain, lmcd / plain);
    bench_report("wire decode 32K-token LOOKUP", "ns/token", lmcd, "msgpack-c", mpc, false);
    bench_report("wire decode 32K-token LOOKUP vs plain read", "ns/token", lmcd, "plain read", plain, false);
    return 0;
}
