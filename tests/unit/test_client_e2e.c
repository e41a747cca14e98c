/*
 * liblmcd end to end: the client against the real lmcd binary
 * ($LMCD_BUILD/lmcd, default build/lmcd), started here with posix_spawn on
 * a free 127.0.0.1 port and stopped with SIGTERM. Covers the engine-driven
 * shared-memory path (register, prepare/commit store through the mapped
 * segment, lookup, prefetch status, prepare/commit retrieve), the inline
 * path, many requests in flight, and the 2604 profile.
 *
 * Waiting is bounded: readiness is polled with short PINGs, the prefetch
 * status with a bounded number of queries.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lmcd/client.h"

/* libzmq is not built with ThreadSanitizer, so the lock-free pipes between
 * the caller and ZeroMQ's I/O thread look like races to it (SAN=thread).
 * Suppress the reports that have a libzmq frame; this test has no other
 * threads sharing client state. */
const char *__tsan_default_suppressions(void);
const char *__tsan_default_suppressions(void) { return "race:libzmq.so\n"; }

extern char **environ;

struct server {
    pid_t pid;
    char url[64];
};

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof(a);
    cr_assert(fd >= 0);
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* Under SAN=thread the spawned lmcd gets the same libzmq suppression as
 * this binary (a file, since it cannot share the hook above); its other
 * reports still fail the test through its exit status. */
#ifdef __SANITIZE_THREAD__
static char tsan_supp[] = "/tmp/lmcd-client-e2e-tsan-XXXXXX";
#endif

static void tsan_child_suppressions(void)
{
#ifdef __SANITIZE_THREAD__
    char *path = tsan_supp;
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, "race:libzmq.so\n", 15), 15);
    close(fd);
    const char *old = getenv("TSAN_OPTIONS");
    char opts[1024];
    snprintf(opts, sizeof(opts), "%s suppressions=%s", old ? old : "", path);
    setenv("TSAN_OPTIONS", opts, 1);
#endif
}

/* The server a test started: a failed assertion ends the test before
 * server_stop(), so the suite's fini kills what is left (no orphaned lmcd). */
static pid_t live_pid = -1;

static void kill_leftover(void)
{
    if (live_pid > 0) {
        kill(live_pid, SIGKILL);
        waitpid(live_pid, NULL, 0);
        live_pid = -1;
    }
}

TestSuite(client_e2e, .fini = kill_leftover);

/* Starts lmcd and waits (bounded) until it answers PING. */
static struct server server_start(const char *protocol)
{
    struct server s;
    tsan_child_suppressions();
    const char *build = getenv("LMCD_BUILD");
    char bin[256], port[16];
    snprintf(bin, sizeof(bin), "%s/lmcd", build && *build ? build : "build");
    snprintf(port, sizeof(port), "%d", free_port());
    snprintf(s.url, sizeof(s.url), "tcp://127.0.0.1:%s", port);
    /* A segment name of this test run (tests/run.sh checks that none is left). */
    char shm[200];
    const char *prefix = getenv("LMCD_TEST_SHM_PREFIX");
    snprintf(shm, sizeof(shm), "%scli%s", prefix && *prefix ? prefix : "lmcd_test_cli_", port);
    char *argv[] = { bin, "--host", "127.0.0.1", "--port", port, "--no-http", "--l1-size-gb",
                     "0.1", "--protocol", (char *)protocol, "--log-level", "WARNING",
                     "--shm-name", shm, NULL };
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    cr_assert_eq(posix_spawn(&s.pid, bin, &fa, NULL, argv, environ), 0, "cannot start %s", bin);
    posix_spawn_file_actions_destroy(&fa);
    live_pid = s.pid;

    enum lmcd_profile p;
    cr_assert_eq(lmcd_profile_parse(protocol, &p), 0);
    struct lmcd_client *c;
    cr_assert_eq(lmcd_client_open(s.url, p, LMCD_FORM_POSITIONAL, &c), 0);
    lmcd_client_set_timeout(c, 100);
    bool ok = false;
    for (int i = 0; i < 100 && !ok; i++) {
        int st;
        cr_assert_eq(waitpid(s.pid, &st, WNOHANG), 0, "lmcd exited during start-up");
        lmcd_ping(c, LMCD_NO_INSTANCE, &ok);
    }
    lmcd_client_close(c);
#ifdef __SANITIZE_THREAD__
    unlink(tsan_supp); /* read at the child's start-up */
#endif
    cr_assert(ok, "lmcd did not answer PING within ~10 s");
    return s;
}

static void server_stop(struct server *s)
{
    int st = 0;
    kill(s->pid, SIGTERM);
    cr_assert_eq(waitpid(s->pid, &st, 0), s->pid);
    live_pid = -1;
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "lmcd stopped with status %d", st);
}

static struct lmcd_client *client(const struct server *s, enum lmcd_profile p, enum lmcd_form f)
{
    struct lmcd_client *c;
    cr_assert_eq(lmcd_client_open(s->url, p, f, &c), 0);
    return c;
}

static uint32_t tokens[512];

static void fill_tokens(uint32_t seed)
{
    for (uint32_t k = 0; k < 512; k++)
        tokens[k] = seed * 100000u + k;
}

/* The engine-driven round trip through the shared segment, in one form. */
static void shm_round_trip(const struct server *s, enum lmcd_form form, uint32_t seed)
{
    struct lmcd_client *c = client(s, LMCD_PROFILE_2609, form);
    struct lmcd_reply r;
    fill_tokens(seed);
    struct lmcd_ed_payload ed = { .instance_id = 1000 + seed, .model_name = "m", .world_size = 1,
                                  .block_size = 16, .num_layers = 2, .hidden_dim_size = 8,
                                  .dtype = "float16", .has_num_physical_slots = true,
                                  .num_physical_slots = 256 };
    cr_assert_eq(lmcd_register_ed(c, &ed, &r), 0);
    cr_assert_null(r.error, "refused: %s", r.error);
    cr_assert(r.shm_name[0] && r.pool_size > 0);
    char shm[300];
    snprintf(shm, sizeof(shm), "/%s", r.shm_name[0] == '/' ? r.shm_name + 1 : r.shm_name);
    uint64_t pool = r.pool_size;
    lmcd_reply_free(&r);
    int fd = shm_open(shm, O_RDWR, 0);
    cr_assert(fd >= 0, "shm_open %s: %s", shm, strerror(errno));
    uint8_t *base = mmap(NULL, pool, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    cr_assert_neq(base, MAP_FAILED);

    struct lmcd_key wk = { .model_name = "m", .world_size = 1, .has_worker_id = true,
                           .worker_id = 0, .token_ids = tokens, .n_tokens = 512, .end = 512,
                           .request_id = "e2e" };
    cr_assert_eq(lmcd_prepare_store(c, &wk, ed.instance_id, &r), 0);
    cr_assert_eq(r.n_slots, 2);
    for (size_t k = 0; k < r.n_slots; k++) {
        cr_assert_eq(r.slots[k].length, 2u * 2 * 256 * 8 * 2, "[2, layers, 256, hidden] x fp16");
        cr_assert_str_eq(r.slots[k].dtype, "float16");
        cr_assert_leq(r.slots[k].offset + r.slots[k].length, pool);
        memset(base + r.slots[k].offset, (int)(0x40 + r.chunk_indices[k] + seed), r.slots[k].length);
    }
    lmcd_reply_free(&r);
    bool ok = false;
    cr_assert_eq(lmcd_commit_store(c, &wk, ed.instance_id, &ok), 0);
    cr_assert(ok);

    struct lmcd_key sk = wk;
    sk.has_worker_id = false;
    cr_assert_eq(lmcd_lookup(c, &sk, 1), 0);
    int64_t hits = -1;
    int rc = -EAGAIN;
    for (int i = 0; i < 200 && rc == -EAGAIN; i++)
        rc = lmcd_query_prefetch_status(c, "e2e", &hits);
    cr_assert_eq(rc, 0);
    cr_assert_eq(hits, 2, "both chunks are cached");

    cr_assert_eq(lmcd_prepare_retrieve(c, &wk, ed.instance_id, &r), 0);
    cr_assert(r.success);
    cr_assert_eq(r.n_slots, 2);
    for (size_t k = 0; k < r.n_slots; k++) {
        const uint8_t *p = base + r.slots[k].offset;
        cr_assert_eq(p[0], 0x40 + k + seed);
        cr_assert_eq(p[r.slots[k].length - 1], 0x40 + k + seed);
    }
    lmcd_reply_free(&r);
    cr_assert_eq(lmcd_commit_retrieve(c, &wk, ed.instance_id, &ok), 0);
    cr_assert(ok);
    cr_assert_eq(lmcd_end_session(c, "e2e"), 0);
    cr_assert_eq(lmcd_unregister_ed(c, ed.instance_id), 0);
    munmap(base, pool);
    lmcd_client_close(c);
}

Test(client_e2e, engine_driven_round_trip_both_forms, .timeout = 60)
{
    struct server s = server_start("lmcache-2609");
    shm_round_trip(&s, LMCD_FORM_POSITIONAL, 1);
    shm_round_trip(&s, LMCD_FORM_MESSAGE, 2);
    server_stop(&s);
}

Test(client_e2e, inline_store_and_retrieve_and_many_in_flight, .timeout = 60)
{
    struct server s = server_start("lmcache-2609");
    struct lmcd_client *c = client(&s, LMCD_PROFILE_2609, LMCD_FORM_POSITIONAL);
    fill_tokens(7);
    static uint8_t a[1000], b[3000];
    memset(a, 'a', sizeof(a));
    memset(b, 'b', sizeof(b));
    struct iovec chunks[2] = { { a, sizeof(a) }, { b, sizeof(b) } };
    struct lmcd_key k = { .model_name = "inline", .world_size = 1, .has_worker_id = true,
                          .token_ids = tokens, .n_tokens = 512, .end = 512, .request_id = "i" };
    int64_t present = 0;
    cr_assert_eq(lmcd_store_inline(c, &k, chunks, 2, &present), 0);
    cr_assert_eq(present, 2);
    struct lmcd_reply r;
    cr_assert_eq(lmcd_retrieve_inline(c, &k, &r), 0);
    cr_assert_eq(r.n_chunks, 2);
    cr_assert_eq(r.chunks[0].iov_len, sizeof(a));
    cr_assert_eq(r.chunks[1].iov_len, sizeof(b));
    cr_assert(!memcmp(r.chunks[0].iov_base, a, sizeof(a)));
    cr_assert(!memcmp(r.chunks[1].iov_base, b, sizeof(b)));
    lmcd_reply_free(&r);

    /* 64 requests in flight, collected in reverse order */
    uint64_t uid[64];
    for (int i = 0; i < 64; i++) {
        struct lmcd_request req = { .op = i % 2 ? LMCD_OP_NOOP : LMCD_OP_GET_CHUNK_SIZE };
        cr_assert_eq(lmcd_submit(c, &req, &uid[i]), 0);
    }
    for (int i = 63; i >= 0; i--) {
        cr_assert_eq(lmcd_wait(c, uid[i], 10000, &r), 0);
        if (i % 2)
            cr_assert_str_eq(r.message, "OK");
        else
            cr_assert_eq(r.value, 256);
        lmcd_reply_free(&r);
    }
    cr_assert_eq(lmcd_client_pending(c), 0);
    cr_assert_eq(lmcd_get_experimental(c, &r), 0);
    lmcd_reply_free(&r);
    cr_assert_eq(lmcd_clear(c, true), 0);
    cr_assert_eq(lmcd_retrieve_inline(c, &k, &r), 0);
    cr_assert_eq(r.n_chunks, 0, "cleared");
    lmcd_reply_free(&r);
    lmcd_client_close(c);
    server_stop(&s);
}

Test(client_e2e, profile_2604_server, .timeout = 60)
{
    struct server s = server_start("lmcache-2604");
    struct lmcd_client *c = client(&s, LMCD_PROFILE_2604, LMCD_FORM_POSITIONAL);
    int64_t v = 0;
    char msg[8];
    bool ok = false;
    cr_assert_eq(lmcd_get_chunk_size(c, &v), 0);
    cr_assert_eq(v, 256);
    cr_assert_eq(lmcd_noop(c, msg, sizeof(msg)), 0);
    cr_assert_str_eq(msg, "OK");
    cr_assert_eq(lmcd_ping(c, LMCD_NO_INSTANCE, &ok), 0);
    cr_assert(ok);
    cr_assert_eq(lmcd_clear(c, false), 0);
    cr_assert_eq(lmcd_end_session(c, "nobody"), 0);
    cr_assert_eq(lmcd_query_prefetch_status(c, "nobody", &v), 0);
    cr_assert_eq(v, 0, "unknown request id is a miss");
    fill_tokens(3);
    struct lmcd_key sk = { .model_name = "m", .world_size = 1, .token_ids = tokens,
                           .n_tokens = 512, .end = 512, .request_id = "q" };
    cr_assert_eq(lmcd_lookup(c, &sk, 1), 0);
    cr_assert_eq(lmcd_free_lookup_locks(c, &sk, 1), 0);
    struct lmcd_block_record rec = { .req_id = "q" };
    cr_assert_eq(lmcd_report_block_allocation(c, 1, "m", &rec, 1), 0);
    lmcd_client_close(c);
    server_stop(&s);
}
