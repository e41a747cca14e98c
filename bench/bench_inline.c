/*
 * bench_inline: lmcd.store_inline / lmcd.retrieve_inline throughput for
 * chunk objects of realistic size, against two baselines measured in the
 * same run on the same bytes:
 *
 *   memcpy      the copy alone (each object to its own destination)
 *   redis       SET / GET through hiredis against a redis-server this bench
 *               starts on a free 127.0.0.1 port (--save "" --appendonly no)
 *
 * One request per object, one request in flight (both clients copy the
 * object into their send path once). Each round stores TOTAL_BYTES as
 * distinct objects, reads them all back, then clears lmcd (CLEAR force) and
 * Redis (FLUSHALL); the best of ROUNDS rounds is kept. A first pass checks
 * that what comes back is what went in. lmcd is $LMCD_BUILD/lmcd.
 * Usage: bench_inline [ROUNDS, default 3]. Never asserts on speed.
 */
#include <hiredis.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "common.h"
#include "util/clock.h"
#include "wire/wire.h"

#define CHUNK_TOKENS 256
#define TOTAL_BYTES (64u << 20)
#define MAX_ROUNDS 10
#define MAX_FRAMES 4

static const enum wire_profile PROFILE = WIRE_PROFILE_2609;

struct bench {
    void *sock; /* DEALER to lmcd */
    redisContext *redis;
    uint64_t uid;
    uint64_t seq;
    uint8_t *src; /* one object's bytes */
    uint8_t *dst; /* TOTAL_BYTES: memcpy destination */
    size_t size;  /* object size */
    size_t n;     /* objects per round */
};

static void fail(const char *what)
{
    fprintf(stderr, "bench_inline: %s\n", what);
    exit(1);
}

/* The key of object i of round r: one chunk of tokens only it has. */
static void key_of(struct wire_req *req, uint32_t *tokens, char *rid, size_t rid_size, int r, size_t i,
                   uint64_t seq)
{
    for (int t = 0; t < CHUNK_TOKENS; t++)
        tokens[t] = (uint32_t)(t * 7919u + i * 131u + (uint32_t)r * 100003u) % 152064u;
    snprintf(rid, rid_size, "bench-inline-%llu", (unsigned long long)seq);
    req->has_key = true;
    req->key.model_name = (struct wire_str){ "bench-model", 11 };
    req->key.world_size = 1;
    req->key.has_worker_id = true;
    req->key.worker_id = 0;
    req->key.token_ids = tokens;
    req->key.n_tokens = CHUNK_TOKENS;
    req->key.start = 0;
    req->key.end = CHUNK_TOKENS;
    req->key.request_id = (struct wire_str){ rid, (uint32_t)strlen(rid) };
    req->key.cache_salt = (struct wire_str){ "", 0 };
}

static void send_req(struct bench *b, const struct wire_req *req, const void *raw, size_t raw_len)
{
    bench_send_req(b->sock, PROFILE, req, ++b->uid, &raw, &raw_len, raw ? 1 : 0);
}

/* Receives a reply of op; msgs stay open for the caller (raw chunks). */
static int recv_reply(struct bench *b, enum wire_op op, zmq_msg_t *msgs, struct wire_resp *resp)
{
    int n = bench_recv_msgs(b->sock, msgs, MAX_FRAMES);
    if (n < 0)
        fail("no reply from lmcd");
    struct wire_frame f[MAX_FRAMES];
    for (int i = 0; i < n; i++)
        f[i] = (struct wire_frame){ zmq_msg_data(&msgs[i]), zmq_msg_size(&msgs[i]) };
    wire_resp_init(resp);
    if (wire_decode_reply(PROFILE, WIRE_FORM_POSITIONAL, op, f, (size_t)n, resp) < 0)
        fail("undecodable reply from lmcd");
    return n;
}

static void lmcd_store(struct bench *b, int r, size_t i)
{
    struct wire_req req;
    uint32_t tokens[CHUNK_TOKENS];
    char rid[64];
    wire_req_init(&req);
    req.op = WIRE_OP_STORE_INLINE;
    key_of(&req, tokens, rid, sizeof(rid), r, i, ++b->seq);
    send_req(b, &req, b->src, b->size);
    zmq_msg_t msgs[MAX_FRAMES];
    struct wire_resp resp;
    int n = recv_reply(b, WIRE_OP_STORE_INLINE, msgs, &resp);
    if (resp.i != 1)
        fail("lmcd.store_inline did not cache the object (L1 full?)");
    wire_resp_free(&resp);
    bench_msgs_close(msgs, n);
}

/* Retrieves object i of round r; when check, compares it with src. */
static void lmcd_retrieve(struct bench *b, int r, size_t i, bool check)
{
    struct wire_req req;
    uint32_t tokens[CHUNK_TOKENS];
    char rid[64];
    wire_req_init(&req);
    req.op = WIRE_OP_RETRIEVE_INLINE;
    key_of(&req, tokens, rid, sizeof(rid), r, i, ++b->seq);
    send_req(b, &req, NULL, 0);
    zmq_msg_t msgs[MAX_FRAMES];
    struct wire_resp resp;
    int n = recv_reply(b, WIRE_OP_RETRIEVE_INLINE, msgs, &resp);
    if (resp.i != 1 || resp.n_raw != 1 || resp.raw[0].len != b->size)
        fail("lmcd.retrieve_inline did not return the object");
    if (check && memcmp(resp.raw[0].data, b->src, b->size))
        fail("lmcd.retrieve_inline returned other bytes than were stored");
    wire_resp_free(&resp);
    bench_msgs_close(msgs, n);
}

static void lmcd_clear(struct bench *b)
{
    struct wire_req req;
    wire_req_init(&req);
    req.op = WIRE_OP_CLEAR;
    req.has_force = true;
    req.force = true;
    send_req(b, &req, NULL, 0);
    zmq_msg_t msgs[MAX_FRAMES];
    struct wire_resp resp;
    int n = recv_reply(b, WIRE_OP_CLEAR, msgs, &resp);
    wire_resp_free(&resp);
    bench_msgs_close(msgs, n);
}

static redisReply *redis_cmd(struct bench *b, const char *fmt, int r, size_t i, const void *val, size_t len)
{
    char key[64];
    int kl = snprintf(key, sizeof(key), "bench:%d:%zu", r, i);
    redisReply *rep = val ? redisCommand(b->redis, fmt, key, (size_t)kl, val, len)
                          : redisCommand(b->redis, fmt, key, (size_t)kl);
    if (!rep || rep->type == REDIS_REPLY_ERROR)
        fail(b->redis->err ? b->redis->errstr : "redis error reply");
    return rep;
}

static void redis_set(struct bench *b, int r, size_t i)
{
    freeReplyObject(redis_cmd(b, "SET %b %b", r, i, b->src, b->size));
}

static void redis_get(struct bench *b, int r, size_t i, bool check)
{
    redisReply *rep = redis_cmd(b, "GET %b", r, i, NULL, 0);
    if (rep->type != REDIS_REPLY_STRING || rep->len != b->size)
        fail("redis GET did not return the object");
    if (check && memcmp(rep->str, b->src, b->size))
        fail("redis GET returned other bytes than were set");
    freeReplyObject(rep);
}

static void redis_flush(struct bench *b)
{
    redisReply *rep = redisCommand(b->redis, "FLUSHALL");
    if (!rep)
        fail("redis FLUSHALL failed");
    freeReplyObject(rep);
}

enum path { P_MEMCPY, P_LMCD_STORE, P_LMCD_RETRIEVE, P_REDIS_SET, P_REDIS_GET, P_COUNT };
static const char *const path_name[P_COUNT] = {
    "memcpy", "lmcd.store_inline", "lmcd.retrieve_inline", "redis SET", "redis GET",
};

static uint64_t run_path(struct bench *b, enum path p, int r)
{
    uint64_t t0 = clock_mono_ns();
    for (size_t i = 0; i < b->n; i++) {
        switch (p) {
        case P_MEMCPY:
            memcpy(b->dst + i * b->size, b->src, b->size);
            break;
        case P_LMCD_STORE:
            lmcd_store(b, r, i);
            break;
        case P_LMCD_RETRIEVE:
            lmcd_retrieve(b, r, i, false);
            break;
        case P_REDIS_SET:
            redis_set(b, r, i);
            break;
        case P_REDIS_GET:
            redis_get(b, r, i, false);
            break;
        default:
            break;
        }
    }
    return clock_mono_ns() - t0;
}

static void bench_size(struct bench *b, size_t size, int rounds)
{
    b->size = size;
    b->n = TOTAL_BYTES / size;
    for (size_t i = 0; i < size; i++)
        b->src[i] = (uint8_t)(i * 2654435761u >> 13);

    /* correctness first, untimed: round -1 is never reused */
    lmcd_store(b, -1, 0);
    lmcd_retrieve(b, -1, 0, true);
    lmcd_clear(b);
    if (b->redis) {
        redis_set(b, -1, 0);
        redis_get(b, -1, 0, true);
        redis_flush(b);
    }

    uint64_t best[P_COUNT];
    for (int p = 0; p < P_COUNT; p++)
        best[p] = UINT64_MAX;
    for (int r = 0; r < rounds; r++) {
        for (int p = 0; p < P_COUNT; p++) {
            if (!b->redis && (p == P_REDIS_SET || p == P_REDIS_GET))
                continue;
            uint64_t dt = run_path(b, (enum path)p, r);
            if (dt < best[p])
                best[p] = dt ? dt : 1;
        }
        lmcd_clear(b);
        if (b->redis)
            redis_flush(b);
    }

    printf("  %zu KiB objects x %zu per round, best of %d rounds:\n", size >> 10, b->n, rounds);
    double bytes = (double)b->n * (double)size;
    double mbs[P_COUNT];
    for (int p = 0; p < P_COUNT; p++)
        mbs[p] = best[p] == UINT64_MAX ? 0 : bytes / ((double)best[p] / 1e9) / 1e6;
    for (int p = 0; p < P_COUNT; p++) {
        if (!mbs[p])
            continue;
        printf("    %-22s %9.0f MB/s  %6.3fx memcpy", path_name[p], mbs[p], mbs[p] / mbs[P_MEMCPY]);
        if (p == P_LMCD_STORE && mbs[P_REDIS_SET])
            printf("  %6.2fx redis SET", mbs[p] / mbs[P_REDIS_SET]);
        if (p == P_LMCD_RETRIEVE && mbs[P_REDIS_GET])
            printf("  %6.2fx redis GET", mbs[p] / mbs[P_REDIS_GET]);
        printf("\n");
    }
    char fig[96];
    snprintf(fig, sizeof(fig), "inline store %zu KiB vs redis SET", size >> 10);
    bench_report(fig, "MB/s", mbs[P_LMCD_STORE], "redis SET", mbs[P_REDIS_SET] ? mbs[P_REDIS_SET] : NAN, true);
    snprintf(fig, sizeof(fig), "inline retrieve %zu KiB vs redis GET", size >> 10);
    bench_report(fig, "MB/s", mbs[P_LMCD_RETRIEVE], "redis GET", mbs[P_REDIS_GET] ? mbs[P_REDIS_GET] : NAN,
                 true);
}

static redisContext *redis_start(struct bench_proc *proc)
{
    char port[16];
    int p = bench_free_port();
    snprintf(port, sizeof(port), "%d", p);
    char *argv[] = { "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", NULL };
    int rc = bench_proc_start(proc, argv, "Ready to accept connections", 10000);
    if (rc < 0) {
        printf("  redis-server could not start (%s): the Redis baseline is left out\n", strerror(-rc));
        return NULL;
    }
    struct timeval tv = { 10, 0 };
    redisContext *c = redisConnectWithTimeout("127.0.0.1", p, tv);
    if (!c || c->err || redisSetTimeout(c, tv) != REDIS_OK) {
        printf("  cannot connect to redis-server: the Redis baseline is left out\n");
        if (c)
            redisFree(c);
        bench_proc_stop(proc, 5000);
        return NULL;
    }
    return c;
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : bench_quick() ? 1 : 3;
    if (rounds < 1 || rounds > MAX_ROUNDS)
        rounds = 3;
    static struct bench b;
    b.src = malloc(4u << 20);
    b.dst = malloc(TOTAL_BYTES);
    if (!b.src || !b.dst)
        fail("out of memory");
    memset(b.dst, 1, TOTAL_BYTES); /* fault the pages in before timing */

    struct bench_proc lmcd, redis;
    int port;
    static const char *const lmcd_args[] = { "--l1-size-gb", "1", NULL };
    bench_lmcd_start(&lmcd, &port, lmcd_args);
    b.redis = redis_start(&redis);

    void *ctx = zmq_ctx_new();
    char ep[64];
    snprintf(ep, sizeof(ep), "tcp://127.0.0.1:%d", port);
    b.sock = bench_dealer(ctx, ep);

    printf("  lmcd %s (L1 1 GiB) vs memcpy and redis-server over loopback TCP, one request in flight\n",
           bench_lmcd_path());
    bench_size(&b, 1u << 20, rounds);
    bench_size(&b, 4u << 20, rounds);

    zmq_close(b.sock);
    zmq_ctx_term(ctx);
    if (b.redis) {
        redisFree(b.redis);
        bench_proc_stop(&redis, 10000);
    }
    bench_proc_stop(&lmcd, 10000);
    free(b.src);
    free(b.dst);
    return 0;
}
