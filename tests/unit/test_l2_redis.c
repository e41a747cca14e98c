/*
 * The resp and valkey adapters against real redis-server processes started
 * here: config errors, store / lookup / load bit-exact, objects written by
 * "LMCache" (plain SET under a key string built here from the spec's rule)
 * read back, size mismatch is a miss, delete and list, a server killed and
 * restarted (fail fast, then recovery), a 3-master cluster with a key
 * prefix and a TTL (keys spread over every master).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "l2/l2.h"
#include "redis_helper.h"
#include "util/clock.h"
#include "util/log.h"

#define OBJ (64 * 1024)
#define MODEL "Qwen/Qwen3-8B"

static struct rh rh;

/* ---- completion helper ------------------------------------------------ */

struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    int rc;
    size_t n;
    uint8_t ok[256];
    uint64_t bytes;
};

static void on_done(void *arg, const struct l2_result *r)
{
    struct waiter *w = arg;
    pthread_mutex_lock(&w->mu);
    w->rc = r->rc;
    w->n = r->n;
    w->bytes = r->bytes;
    for (size_t i = 0; i < r->n && i < 256; i++)
        w->ok[i] = r->ok ? r->ok[i] : r->rc == 0;
    w->done = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static void w_init(struct waiter *w)
{
    memset(w, 0, sizeof(*w));
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
}

/* Bounded wait (30 s) for the callback. */
static void w_wait(struct waiter *w)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 30;
    pthread_mutex_lock(&w->mu);
    while (!w->done)
        cr_assert_neq(pthread_cond_timedwait(&w->cv, &w->mu, &ts), ETIMEDOUT, "no completion in 30 s");
    pthread_mutex_unlock(&w->mu);
}

static struct l2_adapter *make(const char *json)
{
    json_error_t je;
    json_t *cfg = json_loads(json, 0, &je);
    cr_assert_not_null(cfg, "%s", je.text);
    struct l2_adapter *a = NULL;
    char err[256] = "";
    int rc = l2_adapter_create(cfg, 0, &a, err, sizeof(err));
    json_decref(cfg);
    cr_assert_eq(rc, 0, "create: %s", err);
    return a;
}

static int make_err(const char *json, char *err, size_t errlen)
{
    json_t *cfg = json_loads(json, 0, NULL);
    cr_assert_not_null(cfg);
    struct l2_adapter *a = NULL;
    int rc = l2_adapter_create(cfg, 0, &a, err, errlen);
    json_decref(cfg);
    if (rc == 0)
        l2_adapter_destroy(a);
    return rc;
}

static void mk_key(struct l2_key *k, int i, const char *salt)
{
    memset(k, 0, sizeof(*k));
    k->model = MODEL;
    k->model_len = strlen(MODEL);
    k->salt = salt;
    k->salt_len = salt ? strlen(salt) : 0;
    k->kv_rank = 0x01000100;
    k->group = 0;
    for (int b = 0; b < 32; b++)
        k->hash[b] = (uint8_t)(i * 31 + b * 7);
}

static void fill(uint8_t *buf, int i)
{
    uint64_t x = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1);
    for (size_t j = 0; j < OBJ; j++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        buf[j] = (uint8_t)x;
    }
}

static int store(struct l2_adapter *a, struct l2_key *keys, uint8_t **objs, size_t n)
{
    struct iovec iov[256];
    for (size_t i = 0; i < n; i++)
        iov[i] = (struct iovec){ objs[i], OBJ };
    struct waiter w;
    w_init(&w);
    struct l2_cb cb = { on_done, &w };
    int rc = l2_submit_store(a, keys, iov, n, &cb, NULL);
    if (rc < 0)
        return rc;
    w_wait(&w);
    return w.rc;
}

static int lookup(struct l2_adapter *a, struct l2_key *keys, size_t n, uint8_t *found)
{
    struct waiter w;
    w_init(&w);
    struct l2_cb cb = { on_done, &w };
    int rc = l2_submit_lookup(a, keys, n, &cb, NULL);
    if (rc < 0)
        return rc;
    w_wait(&w);
    memcpy(found, w.ok, n);
    return w.rc;
}

static int load(struct l2_adapter *a, struct l2_key *keys, uint8_t **bufs, size_t len, size_t n, uint8_t *okv)
{
    struct iovec iov[256];
    for (size_t i = 0; i < n; i++)
        iov[i] = (struct iovec){ bufs[i], len };
    struct waiter w;
    w_init(&w);
    struct l2_cb cb = { on_done, &w };
    int rc = l2_submit_load(a, keys, iov, n, &cb, NULL);
    if (rc < 0)
        return rc;
    w_wait(&w);
    memcpy(okv, w.ok, n);
    return w.rc;
}

static void quiet(void) { log_set_level(LOG_CRITICAL); }

/* ---- config ------------------------------------------------------------ */

Test(l2_redis_config, resp_requires_host_and_port, .init = quiet)
{
    char err[256];
    unsetenv("LMCACHE_RESP_HOST");
    unsetenv("LMCACHE_RESP_PORT");
    cr_assert_eq(make_err("{\"type\":\"resp\",\"port\":6379}", err, sizeof(err)), -EINVAL);
    cr_assert(strstr(err, "host"), "%s", err);
    cr_assert_eq(make_err("{\"type\":\"resp\",\"host\":\"127.0.0.1\"}", err, sizeof(err)), -EINVAL);
    cr_assert(strstr(err, "port"), "%s", err);
    cr_assert_eq(make_err("{\"type\":\"resp\",\"host\":\"h\",\"port\":0}", err, sizeof(err)), -EINVAL);
    cr_assert_eq(make_err("{\"type\":\"resp\",\"host\":\"h\",\"port\":1,\"num_workers\":0}", err, sizeof(err)),
                 -EINVAL);
    /* Environment fallbacks fill what the JSON leaves out. */
    setenv("LMCACHE_RESP_HOST", "127.0.0.1", 1);
    setenv("LMCACHE_RESP_PORT", "6399", 1);
    cr_assert_eq(make_err("{\"type\":\"resp\"}", err, sizeof(err)), 0, "%s", err);
    setenv("LMCACHE_RESP_PORT", "nope", 1);
    cr_assert_eq(make_err("{\"type\":\"resp\"}", err, sizeof(err)), -EINVAL);
    unsetenv("LMCACHE_RESP_HOST");
    unsetenv("LMCACHE_RESP_PORT");
}

Test(l2_redis_config, valkey_refuses_tls_and_cluster_database, .init = quiet)
{
    char err[256];
    cr_assert_eq(make_err("{\"type\":\"valkey\"}", err, sizeof(err)), -EINVAL);
    cr_assert(strstr(err, "startup_nodes"), "%s", err);
    cr_assert_eq(make_err("{\"type\":\"valkey\",\"startup_nodes\":\"127.0.0.1:1\",\"tls_enable\":true}", err,
                          sizeof(err)),
                 -ENOTSUP);
    cr_assert(strstr(err, "TLS"), "%s", err);
    cr_assert_eq(make_err("{\"type\":\"valkey\",\"startup_nodes\":\"127.0.0.1:1\",\"cluster_mode\":true,"
                          "\"database_id\":2}",
                          err, sizeof(err)),
                 -EINVAL);
    cr_assert_eq(make_err("{\"type\":\"valkey\",\"startup_nodes\":\"127.0.0.1\"}", err, sizeof(err)), -EINVAL);
    cr_assert_eq(make_err("{\"type\":\"valkey\",\"startup_nodes\":\"127.0.0.1:1\",\"key_prefix\":\"a@b\"}", err,
                          sizeof(err)),
                 -EINVAL);
    cr_assert_eq(make_err("{\"type\":\"valkey\",\"startup_nodes\":\"127.0.0.1:1\",\"ttl_seconds\":0}", err,
                          sizeof(err)),
                 -EINVAL);
    cr_assert_eq(make_err("{\"type\":\"valkey\",\"startup_nodes\":\"127.0.0.1:1,127.0.0.1:2\",\"cluster_mode\":true,"
                          "\"ttl_seconds\":60,\"key_prefix\":\"lm\"}",
                          err, sizeof(err)),
                 0, "%s", err);
}

/* ---- live -------------------------------------------------------------- */

static void live_init(void)
{
    quiet();
    if (!rh_available())
        cr_skip_test("redis-server not installed (/usr/bin/redis-server)");
}
static void live_fini(void) { rh_stop(&rh); }
TestSuite(l2_redis_live, .init = live_init, .fini = live_fini, .timeout = 120);

static uint8_t **bufs_new(int n, bool filled)
{
    uint8_t **b = calloc((size_t)n, sizeof(*b));
    for (int i = 0; i < n; i++) {
        b[i] = malloc(OBJ);
        if (filled)
            fill(b[i], i);
        else
            memset(b[i], 0xAA, OBJ);
    }
    return b;
}

Test(l2_redis_live, resp_store_lookup_load_bit_exact_and_lmcache_written_objects)
{
    rh_start(&rh, 1, false);
    char json[256];
    snprintf(json, sizeof(json), "{\"type\":\"resp\",\"host\":\"127.0.0.1\",\"port\":%d,\"max_capacity_gb\":1}",
             rh.s[0].port);
    struct l2_adapter *a = make(json);
    enum { N = 40 };
    struct l2_key keys[N + 1];
    for (int i = 0; i <= N; i++)
        mk_key(&keys[i], i, i % 2 ? "tenant1" : NULL);
    uint8_t **src = bufs_new(N, true), **dst = bufs_new(N + 1, false);
    cr_assert_eq(store(a, keys, src, N), 0);
    struct l2_usage u;
    l2_get_usage(a, false, &u);
    cr_assert_eq(u.total_bytes_used, (uint64_t)N * OBJ);
    cr_assert_eq(u.total_capacity_bytes, 1ull << 30);

    uint8_t found[N + 1];
    cr_assert_eq(lookup(a, keys, N + 1, found), 0);
    for (int i = 0; i < N; i++)
        cr_assert_eq(found[i], 1, "key %d", i);
    cr_assert_eq(found[N], 0, "never stored");

    uint8_t okv[N + 1];
    cr_assert_eq(load(a, keys, dst, OBJ, N + 1, okv), 0);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(okv[i], 1);
        cr_assert_eq(memcmp(src[i], dst[i], OBJ), 0, "object %d differs", i);
    }
    cr_assert_eq(okv[N], 0);

    /* The raw value under LMCache's key string, built here from the rule
     * "<model>@<kv_rank %08x>@<object_group_id %x>@<chunk_hash hex>[@<salt>]". */
    char hex[65];
    for (int b = 0; b < 32; b++)
        snprintf(hex + 2 * b, 3, "%02x", keys[1].hash[b]);
    char lmkey[256];
    snprintf(lmkey, sizeof(lmkey), "%s@%08x@%x@%s@%s", MODEL, 0x01000100u, 0u, hex, "tenant1");
    redisReply *r = rh_cmd(rh.s[0].port, "GET %s", lmkey);
    cr_assert(r && r->type == REDIS_REPLY_STRING && r->len == OBJ, "lmcd wrote LMCache's key and raw bytes");
    cr_assert_eq(memcmp(r->str, src[1], OBJ), 0);
    freeReplyObject(r);
    /* And an object written by LMCache (plain SET) is read by lmcd. */
    struct l2_key lk;
    mk_key(&lk, 1000, NULL);
    lk.group = 0x1f;
    for (int b = 0; b < 32; b++)
        snprintf(hex + 2 * b, 3, "%02x", lk.hash[b]);
    snprintf(lmkey, sizeof(lmkey), "%s@%08x@%x@%s", MODEL, 0x01000100u, 0x1fu, hex);
    uint8_t *lmval = malloc(OBJ);
    fill(lmval, 1000);
    r = rh_cmd(rh.s[0].port, "SET %s %b", lmkey, lmval, (size_t)OBJ);
    cr_assert(r && r->type == REDIS_REPLY_STATUS);
    freeReplyObject(r);
    cr_assert_eq(load(a, &lk, dst, OBJ, 1, okv), 0);
    cr_assert_eq(okv[0], 1);
    cr_assert_eq(memcmp(dst[0], lmval, OBJ), 0);
    /* A buffer of another size: a miss, never a partial copy. */
    cr_assert_eq(load(a, &lk, dst, OBJ / 2, 1, okv), 0);
    cr_assert_eq(okv[0], 0);

    /* list_keys: every object of the model, over pages. */
    size_t listed = 0;
    char *cursor = NULL;
    for (int page = 0; page < 100; page++) {
        struct l2_key_page pg;
        cr_assert_eq(l2_list_keys(a, MODEL, 7, cursor, &pg), 0);
        listed += pg.n;
        free(cursor);
        cursor = pg.next_cursor ? strdup(pg.next_cursor) : NULL;
        l2_key_page_free(&pg);
        if (!cursor)
            break;
    }
    cr_assert_eq(listed, N + 1, "listed %zu", listed);
    struct l2_key_page pg;
    cr_assert_eq(l2_list_keys(a, "other/model", 100, NULL, &pg), 0);
    cr_assert_eq(pg.n, 0);
    l2_key_page_free(&pg);

    /* delete: gone from Redis and from the usage. */
    cr_assert_eq(l2_delete(a, keys, 10), 10);
    l2_get_usage(a, false, &u);
    cr_assert_eq(u.total_bytes_used, (uint64_t)(N - 10) * OBJ);
    cr_assert_eq(lookup(a, keys, N, found), 0);
    for (int i = 0; i < N; i++)
        cr_assert_eq(found[i], i >= 10);
    l2_adapter_destroy(a);
    free(lmval);
    for (int i = 0; i < N; i++)
        free(src[i]);
    for (int i = 0; i <= N; i++)
        free(dst[i]);
    free(src);
    free(dst);
}

Test(l2_redis_live, resp_dead_server_fails_fast_and_recovers)
{
    rh_start(&rh, 1, false);
    char json[256];
    snprintf(json, sizeof(json),
             "{\"type\":\"resp\",\"host\":\"127.0.0.1\",\"port\":%d,\"num_workers\":4,\"request_timeout\":1.0}",
             rh.s[0].port);
    struct l2_adapter *a = make(json);
    struct l2_key k[4];
    for (int i = 0; i < 4; i++)
        mk_key(&k[i], i, NULL);
    uint8_t **src = bufs_new(4, true);
    uint8_t found[4];
    cr_assert_eq(store(a, k, src, 4), 0);
    rh_kill(&rh, 0);
    /* The first operation notices (connection refused, no wait) ... */
    int rc = store(a, k, src, 4);
    cr_assert_lt(rc, 0);
    /* ... then everything fails at once until the server answers. */
    for (int t = 0; t < 100; t++) {
        uint64_t t0 = clock_mono_ms();
        rc = lookup(a, k, 4, found);
        cr_assert_lt(clock_mono_ms() - t0, 5000, "a lookup waited on a dead server");
        if (rc == -ENOTCONN)
            break;
    }
    cr_assert_eq(rc, -ENOTCONN);
    uint64_t t0 = clock_mono_ms();
    cr_assert_eq(store(a, k, src, 4), -ENOTCONN, "stores dropped while down, refused by submit itself");
    cr_assert_lt(clock_mono_ms() - t0, 1000); /* bound for a loaded box; the point is the rc */
    json_t *st = l2_status_json(a);
    cr_assert(json_is_false(json_object_get(st, "is_healthy")), "status says unhealthy");
    json_decref(st);
    /* Restart on the same port (empty: no persistence); the probe finds it. */
    rh_spawn(&rh, 0);
    rc = -1;
    for (int t = 0; t < 200 && rc; t++) {
        rc = store(a, k, src, 4);
        if (rc)
            rh_sleep_ms(50);
    }
    cr_assert_eq(rc, 0, "no recovery");
    cr_assert_eq(lookup(a, k, 4, found), 0);
    cr_assert_eq(found[3], 1);
    l2_adapter_destroy(a);
    for (int i = 0; i < 4; i++)
        free(src[i]);
    free(src);
}

Test(l2_redis_live, valkey_cluster_spreads_prefixed_keys_with_ttl)
{
    rh_start(&rh, 3, true);
    char json[512];
    snprintf(json, sizeof(json),
             "{\"type\":\"valkey\",\"startup_nodes\":\"127.0.0.1:%d,127.0.0.1:%d\",\"cluster_mode\":true,"
             "\"key_prefix\":\"lm\",\"ttl_seconds\":3600}",
             rh.s[0].port, rh.s[1].port);
    struct l2_adapter *a = make(json);
    enum { N = 60 };
    struct l2_key keys[N];
    for (int i = 0; i < N; i++)
        mk_key(&keys[i], i, NULL);
    uint8_t **src = bufs_new(N, true), **dst = bufs_new(N, false);
    cr_assert_eq(store(a, keys, src, N), 0);
    long long total = 0;
    for (int i = 0; i < 3; i++) {
        redisReply *r = rh_cmd(rh.s[i].port, "DBSIZE");
        cr_assert_gt(r->integer, 5, "master %d holds %lld keys", i, r->integer);
        total += r->integer;
        freeReplyObject(r);
    }
    cr_assert_eq(total, N);
    /* "<prefix>@<key>", with the TTL. */
    char hex[65], name[256];
    for (int b = 0; b < 32; b++)
        snprintf(hex + 2 * b, 3, "%02x", keys[0].hash[b]);
    snprintf(name, sizeof(name), "lm@%s@%08x@%x@%s", MODEL, 0x01000100u, 0u, hex);
    redisContext *any = NULL;
    long long ttl = -3;
    for (int i = 0; i < 3 && ttl < 0; i++) {
        any = rh_connect(rh.s[i].port);
        redisReply *r = redisCommand(any, "TTL %s", name);
        if (r && r->type == REDIS_REPLY_INTEGER && r->integer > 0)
            ttl = r->integer;
        freeReplyObject(r);
        redisFree(any);
    }
    cr_assert(ttl > 3000 && ttl <= 3600, "ttl %lld", ttl);
    uint8_t okv[N];
    cr_assert_eq(load(a, keys, dst, OBJ, N, okv), 0);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(okv[i], 1);
        cr_assert_eq(memcmp(src[i], dst[i], OBJ), 0, "object %d differs", i);
    }
    /* Listing walks every master. */
    size_t listed = 0;
    char *cursor = NULL;
    for (int page = 0; page < 200; page++) {
        struct l2_key_page pg;
        cr_assert_eq(l2_list_keys(a, MODEL, 50, cursor, &pg), 0);
        for (size_t i = 0; i < pg.n; i++)
            cr_assert(strncmp(pg.keys[i], MODEL "@", strlen(MODEL) + 1) == 0, "%s", pg.keys[i]);
        listed += pg.n;
        free(cursor);
        cursor = pg.next_cursor ? strdup(pg.next_cursor) : NULL;
        l2_key_page_free(&pg);
        if (!cursor)
            break;
    }
    cr_assert_eq(listed, N);
    l2_adapter_destroy(a);
    for (int i = 0; i < N; i++)
        free(src[i]), free(dst[i]);
    free(src);
    free(dst);
}

Test(l2_redis_live, valkey_auth_user_and_database)
{
    rh.extra[0] = "--requirepass";
    rh.extra[1] = "pw0";
    rh.extra[2] = NULL;
    rh_start(&rh, 1, false);
    redisContext *c = rh_connect(rh.s[0].port);
    redisReply *r = redisCommand(c, "AUTH pw0");
    freeReplyObject(r);
    r = redisCommand(c, "ACL SETUSER lm on >pw1 ~* +@all");
    cr_assert(r && r->type == REDIS_REPLY_STATUS);
    freeReplyObject(r);
    char json[256];
    snprintf(json, sizeof(json),
             "{\"type\":\"valkey\",\"startup_nodes\":\"127.0.0.1:%d\",\"username\":\"lm\",\"password\":\"pw1\","
             "\"database_id\":5}",
             rh.s[0].port);
    struct l2_adapter *a = make(json);
    struct l2_key k;
    mk_key(&k, 7, NULL);
    uint8_t **src = bufs_new(1, true);
    cr_assert_eq(store(a, &k, src, 1), 0);
    r = redisCommand(c, "SELECT 5");
    freeReplyObject(r);
    r = redisCommand(c, "DBSIZE");
    cr_assert_eq(r->integer, 1, "stored in database 5");
    freeReplyObject(r);
    redisFree(c);
    l2_adapter_destroy(a);
    free(src[0]);
    free(src);
}
