/*
 * bench_l2_redis: L2 throughput to Redis, lmcd's resp adapter against
 * hiredis directly, same values, same redis-server, same run.
 *
 *   direct:  one hiredis connection, SET (then GET) of every value
 *            pipelined: the best a single client does;
 *   adapter: one store task (then one load task) of the same keys through
 *            lmcd's `resp` adapter (8 workers, parts of 16 keys pipelined),
 *            completion callbacks included; loads are checked for size.
 *
 *   lmcd:    the whole server: STORE_INLINE of a 32K-token prompt (128
 *            chunks) to lmcd with --l2-adapter resp; store time = from the
 *            request until Redis holds every object (write-behind); then
 *            CLEAR (L1 only), LOOKUP + QUERY_PREFETCH_STATUS until all 128
 *            chunks are back in L1: lookup+prefetch latency, against the
 *            direct pipelined GET of the same 128 values (its lower bound).
 *
 * The values: 128 objects (a 32K-token prompt at 256 tokens per chunk) of
 * OBJ_MIB MiB each (argv[1], default 1; LMCache's chunks for an 8B model
 * are ~32 MiB, scaled down to fit a shared 2-core CI box). redis-server is
 * started on a free 127.0.0.1 port and stopped at the end; ROUNDS rounds,
 * the median reported. Ratios > 1 mean lmcd is faster than the baseline.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include <hiredis/hiredis.h>

#include "common.h"
#include "l2/l2.h"
#include "util/clock.h"
#include "util/log.h"
#include "wire/wire.h"

#define NOBJ 128
#define ROUNDS 5

static size_t obj_bytes;
static uint8_t *vals[NOBJ];
static uint8_t *outb[NOBJ];
static char names[NOBJ][256];
static struct l2_key keys[NOBJ];

static void die(const char *what)
{
    fprintf(stderr, "bench_l2_redis: %s\n", what);
    exit(1);
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_d);
    return v[n / 2];
}

/* ---- direct hiredis ---- */

static double direct(redisContext *c, bool set)
{
    uint64_t t0 = clock_mono_ns();
    for (int i = 0; i < NOBJ; i++) {
        if (set)
            redisAppendCommand(c, "SET %s %b", names[i], vals[i], obj_bytes);
        else
            redisAppendCommand(c, "GET %s", names[i]);
    }
    for (int i = 0; i < NOBJ; i++) {
        redisReply *r = NULL;
        if (redisGetReply(c, (void **)&r) != REDIS_OK || !r)
            die("direct: no reply");
        if (!set && (r->type != REDIS_REPLY_STRING || (size_t)r->len != obj_bytes))
            die("direct: wrong GET reply");
        if (!set)
            memcpy(outb[i], r->str, obj_bytes); /* what a cache must do with it */
        freeReplyObject(r);
    }
    return (double)(clock_mono_ns() - t0) / 1e9;
}

/* ---- through the adapter ---- */

struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    int rc;
    size_t ok;
};

static void on_done(void *arg, const struct l2_result *r)
{
    struct waiter *w = arg;
    pthread_mutex_lock(&w->mu);
    w->rc = r->rc;
    w->ok = 0;
    for (size_t i = 0; i < r->n; i++)
        w->ok += r->ok ? r->ok[i] : r->rc == 0;
    w->done = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static double via_adapter(struct l2_adapter *a, bool store)
{
    struct waiter w = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, 0, 0 };
    struct iovec iov[NOBJ];
    for (int i = 0; i < NOBJ; i++)
        iov[i] = (struct iovec){ store ? vals[i] : outb[i], obj_bytes };
    struct l2_cb cb = { on_done, &w };
    uint64_t t0 = clock_mono_ns();
    int rc = store ? l2_submit_store(a, keys, iov, NOBJ, &cb, NULL) : l2_submit_load(a, keys, iov, NOBJ, &cb, NULL);
    if (rc < 0)
        die("adapter submit failed");
    pthread_mutex_lock(&w.mu);
    while (!w.done)
        pthread_cond_wait(&w.cv, &w.mu);
    pthread_mutex_unlock(&w.mu);
    double s = (double)(clock_mono_ns() - t0) / 1e9;
    if (w.rc < 0 || w.ok != NOBJ)
        die("adapter task failed");
    return s;
}

/* ---- through the lmcd server ---- */

#define CHUNK_TOKENS 256
#define PROMPT_TOKENS (NOBJ * CHUNK_TOKENS)
static uint32_t prompt[PROMPT_TOKENS];
static uint64_t uid;

static void key_init(struct wire_req *r, const char *rid, bool worker)
{
    r->has_key = true;
    r->key.model_name = (struct wire_str){ "bench/model", 11 };
    r->key.world_size = 1;
    r->key.has_worker_id = worker;
    r->key.worker_id = 0;
    r->key.token_ids = prompt;
    r->key.n_tokens = PROMPT_TOKENS;
    r->key.start = 0;
    r->key.end = PROMPT_TOKENS;
    r->key.request_id = (struct wire_str){ rid, (uint32_t)strlen(rid) };
    r->key.cache_salt = (struct wire_str){ "", 0 };
}

static void rpc(void *sock, struct wire_req *req, const void *const *raw, const size_t *len, size_t n,
                struct wire_resp *resp)
{
    bench_send_req(sock, WIRE_PROFILE_2609, req, ++uid, raw, len, n);
    zmq_msg_t msgs[8];
    int nf = bench_recv_msgs(sock, msgs, 8);
    if (nf < 0)
        die("no reply from lmcd");
    struct wire_frame f[8];
    for (int i = 0; i < nf; i++)
        f[i] = (struct wire_frame){ zmq_msg_data(&msgs[i]), zmq_msg_size(&msgs[i]) };
    wire_resp_init(resp);
    if (wire_decode_reply(WIRE_PROFILE_2609, WIRE_FORM_POSITIONAL, req->op, f, (size_t)nf, resp) < 0)
        die("bad reply from lmcd");
    bench_msgs_close(msgs, nf);
}

static long long dbsize(redisContext *c)
{
    redisReply *r = redisCommand(c, "DBSIZE");
    if (!r || r->type != REDIS_REPLY_INTEGER)
        die("DBSIZE");
    long long n = r->integer;
    freeReplyObject(r);
    return n;
}

/* Seconds from STORE_INLINE until Redis holds all NOBJ objects. */
static double lmcd_store(void *sock, redisContext *c)
{
    const void *raw[NOBJ];
    size_t len[NOBJ];
    for (int i = 0; i < NOBJ; i++)
        raw[i] = vals[i], len[i] = obj_bytes;
    struct wire_req req;
    wire_req_init(&req);
    req.op = WIRE_OP_STORE_INLINE;
    key_init(&req, "bench-store", true);
    struct wire_resp resp;
    uint64_t t0 = clock_mono_ns();
    rpc(sock, &req, raw, len, NOBJ, &resp);
    if (resp.i != NOBJ)
        die("STORE_INLINE did not cache every chunk");
    wire_resp_free(&resp);
    /* bounded: 60 s */
    while (dbsize(c) < NOBJ) {
        if (clock_mono_ns() - t0 > 60000000000ull)
            die("write-behind did not reach Redis in 60 s");
        struct timespec ts = { 0, 200000 };
        nanosleep(&ts, NULL);
    }
    return (double)(clock_mono_ns() - t0) / 1e9;
}

/* Redis's keyspace_hits (INFO stats): proves the prefetch read Redis. */
static long long keyspace_hits(redisContext *c)
{
    redisReply *r = redisCommand(c, "INFO stats");
    const char *p = r && r->type == REDIS_REPLY_STRING ? strstr(r->str, "keyspace_hits:") : NULL;
    long long n = p ? atoll(p + 14) : -1;
    if (r)
        freeReplyObject(r);
    if (n < 0)
        die("INFO stats");
    return n;
}

/* Forced CLEAR: empties lmcd's L1 even of objects the StoreController may
 * still hold for a moment (L2 keeps its objects). */
static void lmcd_clear(void *sock)
{
    struct wire_req req;
    struct wire_resp resp;
    wire_req_init(&req);
    req.op = WIRE_OP_CLEAR;
    req.has_force = true;
    req.force = true;
    rpc(sock, &req, NULL, NULL, 0, &resp);
    wire_resp_free(&resp);
}

/* Seconds for LOOKUP + QUERY_PREFETCH_STATUS until all chunks are loaded,
 * after an L1-only CLEAR. */
static double lmcd_prefetch(void *sock, redisContext *c, int round)
{
    struct wire_req req;
    struct wire_resp resp;
    lmcd_clear(sock);
    long long hits0 = keyspace_hits(c);
    char rid[32];
    snprintf(rid, sizeof(rid), "bench-lookup-%d", round);
    wire_req_init(&req);
    req.op = WIRE_OP_LOOKUP;
    key_init(&req, rid, false);
    req.tp_size = 1;
    uint64_t t0 = clock_mono_ns();
    rpc(sock, &req, NULL, NULL, 0, &resp);
    wire_resp_free(&resp);
    wire_req_init(&req);
    req.op = WIRE_OP_QUERY_PREFETCH_STATUS;
    req.request_id = (struct wire_str){ rid, (uint32_t)strlen(rid) };
    for (int q = 0; q < 10000000; q++) {
        rpc(sock, &req, NULL, NULL, 0, &resp);
        bool pending = resp.is_nil;
        int64_t got = resp.i;
        wire_resp_free(&resp);
        if (!pending) {
            double s = (double)(clock_mono_ns() - t0) / 1e9;
            if (got != NOBJ) {
                fprintf(stderr, "bench_l2_redis: prefetch found %lld of %d chunks\n", (long long)got, NOBJ);
                exit(1);
            }
            if (keyspace_hits(c) - hits0 < NOBJ)
                die("the prefetch did not read Redis (L1 still held the prompt)");
            wire_req_init(&req);
            req.op = WIRE_OP_END_SESSION;
            req.request_id = (struct wire_str){ rid, (uint32_t)strlen(rid) };
            rpc(sock, &req, NULL, NULL, 0, &resp);
            wire_resp_free(&resp);
            return s;
        }
    }
    die("prefetch never finished");
    return 0;
}

int main(int argc, char **argv)
{
    int mib = argc > 1 ? atoi(argv[1]) : 1;
    if (mib < 1 || mib > 64)
        die("object size must be 1..64 MiB");
    obj_bytes = (size_t)mib << 20;
    log_set_level(LOG_WARNING);
    if (access("/usr/bin/redis-server", X_OK) != 0) {
        printf("bench_l2_redis: skipped: /usr/bin/redis-server not installed\n");
        return 0;
    }
    int port = bench_free_port();
    char ports[16];
    snprintf(ports, sizeof(ports), "%d", port);
    char *rargv[] = { "/usr/bin/redis-server", "--port", ports, "--bind", "127.0.0.1", "--save", "",
                      "--appendonly", "no", "--protected-mode", "yes", NULL };
    struct bench_proc redis;
    if (bench_proc_start(&redis, rargv, "Ready to accept connections", 10000) < 0)
        die("redis-server did not start");

    for (int i = 0; i < NOBJ; i++) {
        vals[i] = malloc(obj_bytes);
        outb[i] = malloc(obj_bytes);
        if (!vals[i] || !outb[i])
            die("out of memory");
        for (size_t j = 0; j < obj_bytes; j += 8)
            *(uint64_t *)(vals[i] + j) = 0x9e3779b97f4a7c15ull * (j + 1) ^ (uint64_t)i;
        memset(&keys[i], 0, sizeof(keys[i]));
        keys[i].model = "bench/model";
        keys[i].model_len = strlen(keys[i].model);
        keys[i].kv_rank = 0x01000100;
        for (int b = 0; b < 32; b++)
            keys[i].hash[b] = (uint8_t)(i * 131 + b);
        if (l2_key_format(names[i], sizeof(names[i]), &keys[i]) < 0)
            die("key");
    }
    struct timeval tv = { 30, 0 };
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (!c || c->err)
        die("connect");
    redisSetTimeout(c, tv);

    char json[256];
    snprintf(json, sizeof(json), "{\"type\":\"resp\",\"host\":\"127.0.0.1\",\"port\":%d}", port);
    json_t *cfg = json_loads(json, 0, NULL);
    struct l2_adapter *a = NULL;
    char err[256];
    if (l2_adapter_create(cfg, 0, &a, err, sizeof(err)) < 0)
        die(err);
    json_decref(cfg);

    double dset[ROUNDS], dget[ROUNDS], aset[ROUNDS], aget[ROUNDS];
    int rounds = bench_quick() ? 1 : ROUNDS;
    for (int r = 0; r < rounds; r++) {
        redisReply *fr = redisCommand(c, "FLUSHALL");
        freeReplyObject(fr);
        dset[r] = direct(c, true);
        dget[r] = direct(c, false);
        fr = redisCommand(c, "FLUSHALL");
        freeReplyObject(fr);
        aset[r] = via_adapter(a, true);
        aget[r] = via_adapter(a, false);
        for (int i = 0; i < NOBJ; i++)
            if (memcmp(outb[i], vals[i], obj_bytes))
                die("adapter load not bit-exact");
    }
    double mb = (double)NOBJ * (double)obj_bytes / 1e6;
    double ds = median(dset, rounds), dg = median(dget, rounds);
    double as = median(aset, rounds), ag = median(aget, rounds);
    printf("L2 resp throughput, %d objects x %d MiB (%.0f MB), redis-server on 127.0.0.1, median of %d\n", NOBJ,
           mib, mb, rounds);
    printf("  store  hiredis SET pipelined %8.1f MB/s   lmcd resp adapter %8.1f MB/s   ratio %.2fx\n", mb / ds,
           mb / as, ds / as);
    printf("  load   hiredis GET pipelined %8.1f MB/s   lmcd resp adapter %8.1f MB/s   ratio %.2fx\n", mb / dg,
           mb / ag, dg / ag);
    bench_report("l2 resp store 128 objects", "MB/s", mb / as, "hiredis SET pipelined", mb / ds, true);
    bench_report("l2 resp load 128 objects", "MB/s", mb / ag, "hiredis GET pipelined", mb / dg, true);
    l2_adapter_destroy(a);

    /* Through the lmcd server. */
    for (int i = 0; i < PROMPT_TOKENS; i++)
        prompt[i] = (uint32_t)(i * 2654435761u % 150000u);
    const char *extra[] = { "--chunk-size", "256", "--l1-size-gb", "1", "--l2-adapter", json, NULL };
    struct bench_proc lmcd;
    int lport;
    bench_lmcd_start(&lmcd, &lport, extra);
    char ep[64];
    snprintf(ep, sizeof(ep), "tcp://127.0.0.1:%d", lport);
    void *zctx = zmq_ctx_new();
    void *sock = bench_dealer(zctx, ep);
    int tmo = 120000;
    zmq_setsockopt(sock, ZMQ_RCVTIMEO, &tmo, sizeof(tmo));
    double lset[ROUNDS], lpre[ROUNDS];
    for (int r = 0; r < ROUNDS; r++) {
        redisReply *fr = redisCommand(c, "FLUSHALL");
        freeReplyObject(fr);
        lmcd_clear(sock);
        lset[r] = lmcd_store(sock, c);
        lpre[r] = lmcd_prefetch(sock, c, r);
    }
    double ls = median(lset, ROUNDS), lp = median(lpre, ROUNDS);
    printf("L2 through the lmcd server (STORE_INLINE -> StoreController -> Redis; LOOKUP -> PrefetchController)\n");
    printf("  store  hiredis SET pipelined %8.1f MB/s   lmcd write-behind   %8.1f MB/s   ratio %.2fx\n", mb / ds,
           mb / ls, ds / ls);
    printf("  32K-token lookup+prefetch from Redis: %.1f ms   hiredis GET of the same %d values %.1f ms   "
           "ratio %.2fx\n",
           lp * 1e3, NOBJ, dg * 1e3, dg / lp);
    zmq_close(sock);
    zmq_ctx_term(zctx);
    bench_proc_stop(&lmcd, 10000);
    redisFree(c);
    bench_proc_stop(&redis, 5000);
    for (int i = 0; i < NOBJ; i++)
        free(vals[i]), free(outb[i]);
    return 0;
}
