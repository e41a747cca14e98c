/*
 * bench_scale: what lmcd costs as it fills, and what it weighs idle.
 *
 *   cost per op    an engine in this process (the server's engine and L1,
 *                  without ZeroMQ, so the data structures are what is
 *                  measured) filled to 1e3, 1e4, 1e5 and 1e6 cached objects
 *                  of 64 bytes (align 64, so payload pages stay small);
 *                  at each size: the median time of a store of one new chunk
 *                  (new 256-token prompt, new session: hash, reserve,
 *                  copy, publish) and of a LOOKUP of a stored 32-chunk
 *                  prompt (all hits; the session already holds the prompt's
 *                  hashes, so this is the index, locks and job). The
 *                  baseline of each is the same op at 1e3 objects: flat
 *                  cost is a ratio of 1.
 *   metadata       (RssAnon + RssShmem growth - payload pages) / objects
 *                  between the empty and the full engine: everything an
 *                  object costs besides its bytes (heap records, the object
 *                  table in the segment, index buckets).
 *   idle RSS       a real lmcd started with a lazy 10 GB L1 and HTTP, after
 *                  its ready line (VmRSS from /proc).
 *   sessions       the same lmcd after 1e5 LOOKUPs of 256-token prompts,
 *                  each with its own request id (sessions live for their
 *                  TTL): VmRSS growth per session.
 *
 * Never asserts on speed; exits 1 when something fails.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "common.h"
#include "engine/engine.h"
#include "lmcd/client.h"
#include "util/clock.h"
#include "util/log.h"

#define CHUNK 256
#define OBJ 64
#define BATCH 1000            /* chunks per filling store */
#define LOOKUP_CHUNKS 32
#define MAX_OBJECTS 1000000

static void die(const char *what, int rc)
{
    fprintf(stderr, "bench_scale: %s: %s\n", what, strerror(rc < 0 ? -rc : rc));
    exit(1);
}

/* kB of one field of /proc/PID/status ("self" for this process). */
static long status_kb(const char *pid, const char *field)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%s/status", pid);
    FILE *f = fopen(path, "r");
    long v = -1;
    size_t fl = strlen(field);
    while (f && fgets(line, sizeof(line), f))
        if (!strncmp(line, field, fl) && line[fl] == ':')
            v = atol(line + fl + 1);
    if (f)
        fclose(f);
    if (v < 0)
        die(path, ENOENT);
    return v;
}

static uint64_t self_bytes(void)
{
    return (uint64_t)(status_kb("self", "RssAnon") + status_kb("self", "RssShmem")) * 1024;
}

static uint32_t *tokens_buf;

/* Prompt p: BATCH chunks of tokens nobody else uses. */
static void prompt(uint64_t p, uint32_t *t, size_t n)
{
    for (size_t k = 0; k < n; k++)
        t[k] = (uint32_t)((p * 2654435761u + k * 40503u) % 152064u);
}

static void key_of(struct engine_key *k, const uint32_t *t, size_t n, const char *rid, bool worker)
{
    memset(k, 0, sizeof(*k));
    k->model_name = "bench";
    k->model_name_len = 5;
    k->world_size = 1;
    k->has_worker_id = worker;
    k->token_ids = t;
    k->n_tokens = n;
    k->end = (int64_t)n;
    k->request_id = rid;
    k->request_id_len = strlen(rid);
    k->cache_salt = "";
}

static uint64_t next_prompt = 1;

/* Stores `count` more objects, BATCH chunks per request. */
static void fill(struct engine *e, size_t count)
{
    static uint8_t payload[OBJ];
    static struct iovec iov[BATCH];
    for (size_t i = 0; i < BATCH; i++)
        iov[i] = (struct iovec){ payload, OBJ };
    while (count > 0) {
        size_t n = count < BATCH ? count : BATCH;
        prompt(next_prompt++, tokens_buf, n * CHUNK);
        struct engine_key k;
        key_of(&k, tokens_buf, n * CHUNK, "fill", true);
        int64_t present = 0;
        int rc = engine_store_inline(e, &k, iov, n, &present);
        if (rc || present != (int64_t)n)
            die("fill store", rc ? rc : -ENOSPC);
        engine_end_session(e, "fill", 4);
        count -= n;
    }
}

/* Median ns of storing one new chunk (new prompt, new session); medians,
 * so that a preemption on the shared machine does not count. */
static double store_cost(struct engine *e, int ops)
{
    static uint8_t payload[OBJ];
    struct iovec iov = { payload, OBJ };
    uint32_t t[CHUNK];
    struct bench_lat lat = { 0 };
    for (int i = 0; i < ops; i++) {
        prompt(next_prompt++, t, CHUNK);
        struct engine_key k;
        key_of(&k, t, CHUNK, "one", true);
        int64_t present = 0;
        uint64_t t0 = clock_mono_ns();
        int rc = engine_store_inline(e, &k, &iov, 1, &present);
        bench_lat_add(&lat, clock_mono_ns() - t0);
        if (rc || present != 1)
            die("store", rc ? rc : -ENOSPC);
        engine_end_session(e, "one", 3);
    }
    double ns = bench_lat_us(&lat, 0.5) * 1e3;
    bench_lat_free(&lat);
    return ns;
}

/* Median ns of a LOOKUP (and its QUERY) of the 32-chunk prefix of prompt p. */
static double lookup_cost(struct engine *e, uint64_t p, int ops)
{
    uint32_t t[LOOKUP_CHUNKS * CHUNK];
    prompt(p, t, LOOKUP_CHUNKS * CHUNK);
    struct engine_key k;
    key_of(&k, t, LOOKUP_CHUNKS * CHUNK, "look", false);
    int64_t chunks = 0;
    if (engine_lookup(e, &k, 1) || engine_query_prefetch_status(e, "look", 4, &chunks) ||
        chunks != LOOKUP_CHUNKS) /* warm: the session hashes the prompt once */
        die("lookup found no hits", -ENOENT);
    struct bench_lat lat = { 0 };
    for (int i = 0; i < ops; i++) {
        uint64_t t0 = clock_mono_ns();
        int rc = engine_lookup(e, &k, 1);
        if (!rc)
            rc = engine_query_prefetch_status(e, "look", 4, &chunks);
        bench_lat_add(&lat, clock_mono_ns() - t0);
        if (rc || chunks != LOOKUP_CHUNKS)
            die("lookup", rc ? rc : -ENOENT);
    }
    double ns = bench_lat_us(&lat, 0.5) * 1e3;
    bench_lat_free(&lat);
    engine_end_session(e, "look", 4);
    return ns;
}

static void scale(bool quick)
{
    tokens_buf = malloc(sizeof(uint32_t) * BATCH * CHUNK);
    if (!tokens_buf)
        die("malloc", -ENOMEM);
    int ops = quick ? 300 : 3000;
    uint64_t table = MAX_OBJECTS + 2 * (uint64_t)ops * 4 + 4096;
    char shm[64];
    snprintf(shm, sizeof(shm), "lmcd_bench_scale_%d", (int)getpid());
    struct engine_opts o = {
        .chunk_size = CHUNK,
        .hash_algorithm = "blake3",
        .l1_size_bytes = table * (OBJ + 80) + (16 << 20),
        .l1_align_bytes = OBJ,
        .l1_max_objects = table,
        .l1_use_lazy = true,
        .shm_name = shm,
        .eviction_policy = "noop",
        .eviction_trigger_watermark = 1.0,
        .eviction_ratio = 0.1,
        .session_ttl_s = 600,
        .worker_reap_timeout_s = 0,
    };
    struct engine *e;
    int rc = engine_create(&o, &e);
    if (rc)
        die("engine_create", rc);
    uint64_t empty = self_bytes();
    size_t have = 0;
    double base_store = 0, base_lookup = 0;
    printf("  %9s %12s %12s %14s\n", "objects", "store ns/op", "lookup ns/op", "bytes/object");
    for (size_t n = 1000; n <= MAX_OBJECTS; n *= 10) {
        fill(e, n - have);
        have = n;
        uint64_t full = self_bytes();
        /* payload pages: OBJ bytes per object, packed */
        double meta = ((double)full - (double)empty - (double)have * OBJ) / (double)have;
        double st = store_cost(e, ops);
        have += (size_t)ops;
        double lk = lookup_cost(e, 1, ops);
        if (n == 1000) {
            base_store = st;
            base_lookup = lk;
        }
        printf("  %9zu %12.0f %12.0f %14.0f\n", n, st, lk, meta);
        char name[96];
        snprintf(name, sizeof(name), "scale store at %zu objects", n);
        bench_report(name, "ns/op", st, "same at 1000", base_store, false);
        snprintf(name, sizeof(name), "scale lookup 32 chunks at %zu objects", n);
        bench_report(name, "ns/op", lk, "same at 1000", base_lookup, false);
        if (n == MAX_OBJECTS)
            bench_report("metadata per object at 1e6 objects", "bytes", meta, NULL, 0, false);
    }
    engine_destroy(e);
    free(tokens_buf);
}

/* A real lmcd: idle RSS with a lazy 10 GB L1, then RSS growth per session. */
static void server(bool quick)
{
    const char *extra[] = { "--l1-size-gb", "10", NULL };
    struct bench_proc lmcd;
    int port;
    bench_lmcd_start(&lmcd, &port, extra);
    char pid[16], url[64];
    snprintf(pid, sizeof(pid), "%d", (int)lmcd.pid);
    snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", port);
    usleep(200 * 1000); /* plugins none; let the threads settle */
    long idle_kb = status_kb(pid, "VmRSS");
    printf("  idle lmcd, lazy 10 GB L1: VmRSS %.1f MiB\n", idle_kb / 1024.0);
    bench_report("idle RSS, lazy 10 GB L1", "MiB", idle_kb / 1024.0, NULL, 0, false);

    struct lmcd_client *c;
    int rc = lmcd_client_open(url, LMCD_PROFILE_2609, LMCD_FORM_POSITIONAL, &c);
    if (rc)
        die("client", rc);
    lmcd_client_set_timeout(c, 20000);
    const int sessions = 100000, window = 64;
    (void)quick; /* 1e5 LOOKUPs pipelined take a few seconds even in QUICK mode */
    uint32_t t[CHUNK];
    char rid[32];
    uint64_t uids[64];
    int head = 0, inflight = 0;
    long before_kb = status_kb(pid, "VmRSS");
    uint64_t t0 = clock_mono_ns();
    for (int i = 0; i < sessions || inflight; i++) {
        if (i < sessions) {
            prompt((uint64_t)i + 7777777, t, CHUNK);
            snprintf(rid, sizeof(rid), "sess-%d", i);
            struct lmcd_request req = { .op = LMCD_OP_LOOKUP, .tp_size = 1 };
            req.key = (struct lmcd_key){ .model_name = "bench", .world_size = 1, .token_ids = t,
                                         .n_tokens = CHUNK, .end = CHUNK, .request_id = rid };
            if ((rc = lmcd_submit(c, &req, &uids[(head + inflight) % window])))
                die("submit", rc);
            inflight++;
        }
        if (inflight == window || (i >= sessions && inflight)) {
            struct lmcd_reply r;
            if ((rc = lmcd_wait(c, uids[head], 20000, &r)))
                die("lookup reply", rc);
            lmcd_reply_free(&r);
            head = (head + 1) % window;
            inflight--;
        }
    }
    double secs = (double)(clock_mono_ns() - t0) / 1e9;
    long after_kb = status_kb(pid, "VmRSS");
    double per = (double)(after_kb - before_kb) * 1024 / sessions;
    printf("  after %d sessions (%.1f s): VmRSS %.1f MiB, %.0f bytes per session\n", sessions, secs,
           after_kb / 1024.0, per);
    bench_report("RSS after 1e5 sessions", "MiB", after_kb / 1024.0, "idle", before_kb / 1024.0, false);
    lmcd_client_close(c);
    int st = bench_proc_stop(&lmcd, 10000);
    if (st != 0)
        fprintf(stderr, "bench_scale: lmcd exited with status 0x%x on SIGTERM\n", st);
}

int main(void)
{
    bool quick = bench_quick();
    log_set_level(LOG_WARNING);
    scale(quick);
    server(quick);
    return 0;
}
