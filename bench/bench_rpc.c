/*
 * bench_rpc: request round trips against a real lmcd, as ratios against a
 * raw ZeroMQ ROUTER echo server (what ZeroMQ alone costs for the same
 * frames over the same loopback TCP). The baseline of every ratio is an
 * echo in a process of its own, with its own ZeroMQ context and I/O
 * thread, as lmcd has; the latency figures are also given against an echo
 * thread in this process, which shares the bench's context and I/O thread
 * (the baseline of earlier runs: its wake-ups differ, see
 * docs/performance.md).
 *
 *   latency     one DEALER, one request in flight: p50 and p99
 *               ping (a pool request in LMCache; lmcd's loop answers it when no
 *               worker lock is held), get_chunk_size (answered on
 *               the loop thread), lookup+query of a 32768-token prompt
 *               (LOOKUP, then QUERY_PREFETCH_STATUS until it is not nil;
 *               the echo baseline does the same two round trips), both
 *               missing and hitting 128 chunks stored beforehand; each
 *               lookup's session is then ended with END_SESSION, as vLLM's
 *               scheduler does when a request finishes, outside the timed
 *               part (on both targets)
 *   throughput  WINDOW requests kept in flight on one DEALER (best round)
 *
 * Latency alternates the targets one operation at a time; throughput
 * alternates them in ROUNDS rounds.
 *
 * lmcd is $LMCD_BUILD/lmcd (default build/lmcd), started on free 127.0.0.1
 * ports and stopped at the end. Every loop is bounded by a count and by
 * seconds. Usage: bench_rpc [SECONDS per measurement, default 1].
 * Never asserts on speed; exits 1 only when something broke.
 */
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include "common.h"
#include "util/clock.h"
#include "wire/wire.h"

#define PROMPT_TOKENS 32768 /* a 32K-token prompt: 128 chunks */
#define CHUNK_TOKENS 256
#define WINDOW 32
#define WARMUP 100
#define MAX_OPS 200000
#define MAX_QUERIES 10000 /* QUERY polls per lookup before giving up */
#define MAX_FRAMES 8
#define ROUNDS 3

static const enum wire_profile PROFILE = WIRE_PROFILE_2609;

struct target {
    const char *name;
    void *sock;   /* DEALER */
    bool is_echo; /* replies are the request frames: nothing to decode */
};

struct bench {
    uint64_t uid;
    uint64_t seq; /* request ids */
    uint32_t hit_tokens[PROMPT_TOKENS];
    uint32_t miss_tokens[PROMPT_TOKENS];
    double seconds;
    char end_rid[64]; /* a session the last op opened: ended untimed after it */
};

static void die(const char *what)
{
    fprintf(stderr, "bench_rpc: %s: %s\n", what, zmq_strerror(zmq_errno()));
    exit(1);
}

/* ---- the echo baseline ---------------------------------------------------- */

struct echo {
    void *sock; /* ROUTER, owned by the echo thread once started */
    pthread_t thread;
    atomic_bool stop;
    char endpoint[256];
};

/* Forwards one message back, each frame as it came, identity first. False
 * when no frame could be received (recv_flags ZMQ_DONTWAIT: none there). */
static bool echo_one(void *sock, int recv_flags)
{
    for (;;) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sock, recv_flags) < 0) {
            zmq_msg_close(&m);
            return false;
        }
        bool more = zmq_msg_more(&m);
        zmq_msg_send(&m, sock, more ? ZMQ_SNDMORE : 0);
        if (!more)
            return true;
    }
}

static void *echo_run(void *arg)
{
    struct echo *e = arg;
    zmq_pollitem_t it = { .socket = e->sock, .events = ZMQ_POLLIN };
    while (!atomic_load(&e->stop)) {
        if (zmq_poll(&it, 1, 100) > 0)
            echo_one(e->sock, ZMQ_DONTWAIT);
    }
    return NULL;
}

static void echo_start(void *ctx, struct echo *e)
{
    memset(e, 0, sizeof(*e));
    e->sock = zmq_socket(ctx, ZMQ_ROUTER);
    int zero = 0;
    size_t len = sizeof(e->endpoint);
    if (!e->sock || zmq_setsockopt(e->sock, ZMQ_LINGER, &zero, sizeof(zero)) ||
        zmq_bind(e->sock, "tcp://127.0.0.1:0") || zmq_getsockopt(e->sock, ZMQ_LAST_ENDPOINT, e->endpoint, &len))
        die("echo ROUTER");
    if (pthread_create(&e->thread, NULL, echo_run, e))
        die("echo thread");
}

static void echo_stop(struct echo *e)
{
    atomic_store(&e->stop, true);
    pthread_join(e->thread, NULL);
    zmq_close(e->sock);
}

/* The same echo in a child process of its own (forked before this process
 * creates its ZeroMQ context): its endpoint comes back through a pipe; it
 * dies with this process (PR_SET_PDEATHSIG) or at echo_proc_stop. */
struct echo_proc {
    pid_t pid;
    char endpoint[256];
};

static void echo_proc_child(int wfd)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    void *ctx = zmq_ctx_new();
    void *sock = ctx ? zmq_socket(ctx, ZMQ_ROUTER) : NULL;
    char ep[256] = "";
    size_t len = sizeof(ep);
    if (!sock || zmq_bind(sock, "tcp://127.0.0.1:0") || zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, ep, &len))
        _exit(1);
    if (write(wfd, ep, sizeof(ep)) != (ssize_t)sizeof(ep))
        _exit(1);
    close(wfd);
    while (echo_one(sock, 0)) /* blocking receive */
        ;
    _exit(1);
}

static void echo_proc_start(struct echo_proc *e)
{
    int fds[2];
    if (pipe(fds))
        die("echo process pipe");
    fflush(NULL);
    e->pid = fork();
    if (e->pid < 0)
        die("echo process fork");
    if (e->pid == 0) {
        close(fds[0]);
        echo_proc_child(fds[1]);
    }
    close(fds[1]);
    ssize_t n = read(fds[0], e->endpoint, sizeof(e->endpoint));
    close(fds[0]);
    if (n != (ssize_t)sizeof(e->endpoint) || !e->endpoint[0]) {
        fprintf(stderr, "bench_rpc: the echo process did not start\n");
        exit(1);
    }
    e->endpoint[sizeof(e->endpoint) - 1] = 0;
}

static void echo_proc_stop(struct echo_proc *e)
{
    kill(e->pid, SIGKILL);
    waitpid(e->pid, NULL, 0);
}

/* ---- requests ------------------------------------------------------------- */

static void send_req(struct bench *b, void *sock, const struct wire_req *req, const void *const *raw,
                     const size_t *raw_len, size_t n_raw)
{
    bench_send_req(sock, PROFILE, req, ++b->uid, raw, raw_len, n_raw);
}

/* Receives one reply; decodes it when the target is lmcd. */
static void recv_reply(const struct target *t, enum wire_op op, struct wire_resp *resp)
{
    zmq_msg_t msgs[MAX_FRAMES];
    int n = bench_recv_msgs(t->sock, msgs, MAX_FRAMES);
    if (n < 0)
        die(t->name);
    wire_resp_init(resp);
    if (!t->is_echo) {
        struct wire_frame f[MAX_FRAMES];
        for (int i = 0; i < n; i++)
            f[i] = (struct wire_frame){ zmq_msg_data(&msgs[i]), zmq_msg_size(&msgs[i]) };
        int rc = wire_decode_reply(PROFILE, WIRE_FORM_POSITIONAL, op, f, (size_t)n, resp);
        if (rc < 0) {
            fprintf(stderr, "bench_rpc: bad %s reply: %s\n", wire_op_name(op), wire_strerror(rc));
            exit(1);
        }
    }
    bench_msgs_close(msgs, n);
}

static void key_init(struct wire_req *r, const uint32_t *tokens, const char *rid, bool worker)
{
    r->has_key = true;
    r->key.model_name = (struct wire_str){ "bench-model", 11 };
    r->key.world_size = 1;
    r->key.has_worker_id = worker;
    r->key.worker_id = 0;
    r->key.token_ids = (uint32_t *)tokens;
    r->key.n_tokens = PROMPT_TOKENS;
    r->key.start = 0;
    r->key.end = PROMPT_TOKENS;
    r->key.request_id = (struct wire_str){ rid, (uint32_t)strlen(rid) };
    r->key.cache_salt = (struct wire_str){ "", 0 };
}

/* One logical operation: returns its round trips; *result = what it said. */
typedef int (*op_fn)(struct bench *b, const struct target *t, int64_t *result);

static int op_simple(struct bench *b, const struct target *t, enum wire_op op, int64_t *result)
{
    struct wire_req req;
    wire_req_init(&req);
    req.op = op;
    send_req(b, t->sock, &req, NULL, NULL, 0);
    struct wire_resp resp;
    recv_reply(t, op, &resp);
    *result = resp.kind == WIRE_RESP_BOOL ? resp.b : resp.i;
    wire_resp_free(&resp);
    return 1;
}

static int op_ping(struct bench *b, const struct target *t, int64_t *result)
{
    return op_simple(b, t, WIRE_OP_PING, result);
}

static int op_chunk_size(struct bench *b, const struct target *t, int64_t *result)
{
    return op_simple(b, t, WIRE_OP_GET_CHUNK_SIZE, result);
}

static int lookup_query(struct bench *b, const struct target *t, const uint32_t *tokens, int64_t *result)
{
    char rid[64];
    snprintf(rid, sizeof(rid), "bench-lookup-%llu", (unsigned long long)++b->seq);
    struct wire_req req;
    wire_req_init(&req);
    req.op = WIRE_OP_LOOKUP;
    key_init(&req, tokens, rid, false);
    req.tp_size = 1;
    send_req(b, t->sock, &req, NULL, NULL, 0);
    struct wire_resp resp;
    recv_reply(t, WIRE_OP_LOOKUP, &resp);
    wire_resp_free(&resp);

    wire_req_init(&req);
    req.op = WIRE_OP_QUERY_PREFETCH_STATUS;
    req.request_id = (struct wire_str){ rid, (uint32_t)strlen(rid) };
    for (int q = 1; q <= MAX_QUERIES; q++) {
        send_req(b, t->sock, &req, NULL, NULL, 0);
        recv_reply(t, WIRE_OP_QUERY_PREFETCH_STATUS, &resp);
        bool pending = !t->is_echo && resp.is_nil;
        *result = resp.i;
        wire_resp_free(&resp);
        if (!pending) {
            snprintf(b->end_rid, sizeof(b->end_rid), "%s", rid);
            return 1 + q;
        }
    }
    fprintf(stderr, "bench_rpc: lookup %s still pending after %d queries\n", rid, MAX_QUERIES);
    exit(1);
}

static int op_lookup_miss(struct bench *b, const struct target *t, int64_t *result)
{
    return lookup_query(b, t, b->miss_tokens, result);
}

static int op_lookup_hit(struct bench *b, const struct target *t, int64_t *result)
{
    return lookup_query(b, t, b->hit_tokens, result);
}

/* Stores the hit prompt's 128 chunks (4 KiB each) so lookups find them. */
static void store_hit_prompt(struct bench *b, const struct target *t)
{
    enum { N = PROMPT_TOKENS / CHUNK_TOKENS, BYTES = 4096 };
    static uint8_t chunk[BYTES];
    const void *raw[N];
    size_t len[N];
    for (int i = 0; i < N; i++) {
        raw[i] = chunk;
        len[i] = BYTES;
    }
    struct wire_req req;
    wire_req_init(&req);
    req.op = WIRE_OP_STORE_INLINE;
    key_init(&req, b->hit_tokens, "bench-store", true);
    send_req(b, t->sock, &req, raw, len, N);
    struct wire_resp resp;
    recv_reply(t, WIRE_OP_STORE_INLINE, &resp);
    if (resp.i != N) {
        fprintf(stderr, "bench_rpc: store_inline cached %lld of %d chunks\n", (long long)resp.i, N);
        exit(1);
    }
    wire_resp_free(&resp);
}

/* END_SESSION of the session the last op opened, if any (untimed). */
static void end_session(struct bench *b, const struct target *t)
{
    if (!b->end_rid[0])
        return;
    struct wire_req req;
    wire_req_init(&req);
    req.op = WIRE_OP_END_SESSION;
    req.request_id = (struct wire_str){ b->end_rid, (uint32_t)strlen(b->end_rid) };
    send_req(b, t->sock, &req, NULL, NULL, 0);
    struct wire_resp resp;
    recv_reply(t, WIRE_OP_END_SESSION, &resp);
    wire_resp_free(&resp);
    b->end_rid[0] = 0;
}

/* ---- measurements --------------------------------------------------------- */

struct lat_result {
    double p50, p99;
    double rtts; /* round trips per operation */
    int64_t result;
    struct bench_lat lat;
    long ops, rtt_sum;
};

/* One timed operation of fn against t, its session then ended (untimed). */
static void sample_one(struct bench *b, const struct target *t, op_fn fn, struct lat_result *r)
{
    uint64_t t0 = clock_mono_ns();
    r->rtt_sum += fn(b, t, &r->result);
    bench_lat_add(&r->lat, clock_mono_ns() - t0);
    r->ops++;
    end_session(b, t);
}

static void lat_finish(struct lat_result *r)
{
    r->rtts = (double)r->rtt_sum / (double)r->ops;
    r->p50 = bench_lat_us(&r->lat, 0.5);
    r->p99 = bench_lat_us(&r->lat, 0.99);
    bench_lat_free(&r->lat);
}

/* Latency of fn on n targets, one operation on each in turn for
 * b->seconds (at least 10 each), so that a burst of load from elsewhere
 * lands on all of them, and every target has been idle for about the same
 * time (the other targets' round trips) when its request comes: an idle
 * vCPU's wake-up differs from that of one still spinning down (a bimodal
 * echo, docs/performance.md), and alternating whole rounds handed the
 * fast mode to whichever target ran first. */
static void measure_latency(struct bench *b, const struct target *const *t, size_t n, op_fn fn,
                            struct lat_result *r)
{
    int64_t sink;
    memset(r, 0, n * sizeof(*r));
    for (int i = 0; i < WARMUP; i++)
        for (size_t k = 0; k < n; k++) {
            fn(b, t[k], &sink);
            end_session(b, t[k]);
        }
    uint64_t end = clock_mono_ns() + (uint64_t)(b->seconds * 1e9);
    for (int i = 0; i < MAX_OPS && (i < 10 || clock_mono_ns() < end); i++)
        for (size_t k = 0; k < n; k++)
            sample_one(b, t[k], fn, &r[k]);
    for (size_t k = 0; k < n; k++)
        lat_finish(&r[k]);
}

/* Requests per second with WINDOW in flight (op answers exactly once). */
static double throughput_once(struct bench *b, const struct target *t, enum wire_op op, double seconds)
{
    struct wire_req req;
    wire_req_init(&req);
    req.op = op;
    struct wire_resp resp;
    for (int i = 0; i < WINDOW; i++)
        send_req(b, t->sock, &req, NULL, NULL, 0);
    uint64_t t0 = clock_mono_ns(), end = t0 + (uint64_t)(seconds * 1e9);
    long done = 0;
    while (done < MAX_OPS && (done < 1000 || clock_mono_ns() < end)) {
        recv_reply(t, op, &resp);
        wire_resp_free(&resp);
        done++;
        send_req(b, t->sock, &req, NULL, NULL, 0);
    }
    uint64_t dt = clock_mono_ns() - t0;
    for (int i = 0; i < WINDOW; i++) { /* drain what is still in flight */
        recv_reply(t, op, &resp);
        wire_resp_free(&resp);
    }
    return (double)done / ((double)dt / 1e9);
}

/* Best of ROUNDS alternating rounds on each target. */
static void measure_throughput(struct bench *b, const struct target *te, const struct target *tl, enum wire_op op,
                               double *e, double *l)
{
    *e = *l = 0;
    for (int r = 0; r < ROUNDS; r++) {
        double x = throughput_once(b, te, op, b->seconds / ROUNDS);
        double y = throughput_once(b, tl, op, b->seconds / ROUNDS);
        *e = x > *e ? x : *e;
        *l = y > *l ? y : *l;
    }
}

int main(int argc, char **argv)
{
    static struct bench b;
    b.seconds = argc > 1 ? atof(argv[1]) : bench_quick() ? 0.3 : 1.0;
    if (!(b.seconds > 0) || b.seconds > 60)
        b.seconds = 1.0;
    uint32_t x = 2463534242u;
    for (int i = 0; i < PROMPT_TOKENS; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        b.hit_tokens[i] = x % 152064;
        b.miss_tokens[i] = (x >> 3) % 152064;
    }

    struct echo_proc echop;
    echo_proc_start(&echop); /* before this process has a ZeroMQ context */
    struct bench_proc lmcd;
    int port;
    bench_lmcd_start(&lmcd, &port, NULL);
    void *ctx = zmq_ctx_new();
    struct echo echo;
    echo_start(ctx, &echo);
    char lmcd_ep[64];
    snprintf(lmcd_ep, sizeof(lmcd_ep), "tcp://127.0.0.1:%d", port);
    struct target tl = { "lmcd", bench_dealer(ctx, lmcd_ep), false };
    struct target te = { "echo", bench_dealer(ctx, echop.endpoint), true };
    struct target tt = { "echo thread", bench_dealer(ctx, echo.endpoint), true };

    int64_t v;
    op_chunk_size(&b, &tl, &v);
    if (v != CHUNK_TOKENS) {
        fprintf(stderr, "bench_rpc: lmcd's chunk size is %lld, the bench assumes %d\n", (long long)v,
                CHUNK_TOKENS);
        exit(1);
    }
    store_hit_prompt(&b, &tl);

    printf("  lmcd %s (pid %d) vs a ZeroMQ ROUTER echo in a process of its own (pid %d), and an echo thread "
           "in this process; profile %s, loopback TCP\n",
           bench_lmcd_path(), (int)lmcd.pid, (int)echop.pid, wire_profile_name(PROFILE));
    printf("  latency, 1 in flight           lmcd p50     p99 |   echo p50     p99 | p50 ratio  rtt/op | "
           "echo thread p50  ratio\n");
    static const struct {
        const char *name;
        op_fn fn;
    } lat_ops[] = {
        { "ping", op_ping },
        { "get_chunk_size (loop)", op_chunk_size },
        { "lookup+query 32K tok, miss", op_lookup_miss },
        { "lookup+query 32K tok, 128 hit", op_lookup_hit },
    };
    for (size_t i = 0; i < sizeof(lat_ops) / sizeof(lat_ops[0]); i++) {
        const struct target *ts[] = { &te, &tl, &tt };
        struct lat_result r[3];
        measure_latency(&b, ts, 3, lat_ops[i].fn, r);
        const struct lat_result e = r[0], l = r[1], et = r[2];
        printf("  %-30s %7.1f us %6.1f | %7.1f us %6.1f | %7.2fx  %6.2f | %10.1f us %5.2fx", lat_ops[i].name, l.p50,
               l.p99, e.p50, e.p99, l.p50 / e.p50, l.rtts, et.p50, l.p50 / et.p50);
        if (lat_ops[i].fn == op_lookup_miss || lat_ops[i].fn == op_lookup_hit)
            printf("  (%lld chunks found)", (long long)l.result);
        printf("\n");
        if (lat_ops[i].fn == op_lookup_hit && l.result != PROMPT_TOKENS / CHUNK_TOKENS) {
            fprintf(stderr, "bench_rpc: the lookup found %lld chunks, not %d\n", (long long)l.result,
                    PROMPT_TOKENS / CHUNK_TOKENS);
            exit(1);
        }
        char fig[96];
        snprintf(fig, sizeof(fig), "rpc %s p50", lat_ops[i].name);
        bench_report(fig, "us", l.p50, "zmq echo", e.p50, false);
        snprintf(fig, sizeof(fig), "rpc %s p99", lat_ops[i].name);
        bench_report(fig, "us", l.p99, "zmq echo", e.p99, false);
        snprintf(fig, sizeof(fig), "rpc %s p50 vs echo thread", lat_ops[i].name);
        bench_report(fig, "us", l.p50, "zmq echo thread", et.p50, false);
    }
    printf("  throughput, %d in flight      lmcd req/s |  echo req/s | ratio\n", WINDOW);
    static const struct {
        const char *name;
        enum wire_op op;
    } tp_ops[] = { { "ping", WIRE_OP_PING }, { "get_chunk_size (loop)", WIRE_OP_GET_CHUNK_SIZE } };
    for (size_t i = 0; i < sizeof(tp_ops) / sizeof(tp_ops[0]); i++) {
        double e, l;
        measure_throughput(&b, &te, &tl, tp_ops[i].op, &e, &l);
        printf("  %-30s %10.0f | %11.0f | %5.2fx\n", tp_ops[i].name, l, e, l / e);
        char fig[96];
        snprintf(fig, sizeof(fig), "throughput %s, %d in flight", tp_ops[i].name, WINDOW);
        bench_report(fig, "req/s", l, "zmq echo", e, true);
    }

    zmq_close(tl.sock);
    zmq_close(te.sock);
    zmq_close(tt.sock);
    echo_stop(&echo);
    zmq_ctx_term(ctx);
    echo_proc_stop(&echop);
    int st = bench_proc_stop(&lmcd, 10000);
    if (st != 0)
        fprintf(stderr, "bench_rpc: lmcd exited with status 0x%x on SIGTERM\n", st);
    return 0;
}
