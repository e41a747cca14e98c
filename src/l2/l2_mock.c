/*
 * l2_mock: LMCache's `mock` adapter: objects kept in lmcd's memory, with
 * simulated bandwidth, for tests and capacity experiments.
 *
 * JSON: {"type":"mock", "max_size_gb": >0, "mock_bandwidth_gb": >0 (GB/s)}.
 * A store that would pass max_size_gb fails for that key (the L2 eviction
 * controller keeps usage under its watermark); every store and load sleeps
 * size / bandwidth on a pool thread, as the transfer would take.
 * Lookup locks are counted per object; delete skips locked objects.
 */
#define LOG_MODULE "lmcd.l2.mock"
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "l2/l2.h"
#include "l2/l2_pool.h"
#include "l2/l2_task.h"
#include "util/htab.h"
#include "util/log.h"

#define MOCK_THREADS 4
#define MOCK_QUEUE 65536

struct obj {
    struct htab_node node;
    uint8_t *data;
    uint64_t size;
    uint32_t locks;
    char name[]; /* key string */
};

struct mock {
    struct l2_adapter base; /* first */
    double bandwidth;       /* bytes per second */
    struct l2_pool *pool;
    pthread_mutex_t mu;
    struct htab objs; /* guarded by mu */
};

static void pace(struct mock *m, uint64_t bytes)
{
    double s = (double)bytes / m->bandwidth;
    if (s <= 0)
        return;
    struct timespec ts = { (time_t)s, (long)((s - floor(s)) * 1e9) };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

static struct obj *find_locked(struct mock *m, const char *name)
{
    struct htab_node *n = htab_find(&m->objs, name, strlen(name));
    return n ? htab_entry(n, struct obj, node) : NULL;
}

static void run(void *ctx, struct l2_pool_item *pi)
{
    struct mock *m = ctx;
    struct l2_task_item *it = (struct l2_task_item *)pi;
    struct l2_task *t = it->task;
    const struct l2_key *k = &t->keys[it->i];
    char name[L2_KEY_NAME_MAX];
    if (l2_key_format(name, sizeof(name), k) < 0) {
        l2_task_done(it, false, 0, -EINVAL);
        return;
    }
    if (t->op == L2_TASK_LOOKUP) {
        pthread_mutex_lock(&m->mu);
        struct obj *o = find_locked(m, name);
        if (o)
            o->locks++;
        pthread_mutex_unlock(&m->mu);
        l2_task_done(it, o != NULL, 0, 0);
        return;
    }
    const struct iovec *b = &t->bufs[it->i];
    if (t->op == L2_TASK_STORE) {
        pace(m, b->iov_len);
        size_t nl = strlen(name);
        struct obj *o = malloc(sizeof(*o) + nl + 1);
        uint8_t *data = malloc(b->iov_len ? b->iov_len : 1);
        if (!o || !data) {
            free(o);
            free(data);
            l2_task_done(it, false, 0, -ENOMEM);
            return;
        }
        memcpy(data, b->iov_base, b->iov_len);
        memcpy(o->name, name, nl + 1);
        o->data = data;
        o->size = b->iov_len;
        o->locks = 0;
        o->node.key = o->name;
        o->node.key_len = nl;
        int err = 0;
        bool fresh = false;
        pthread_mutex_lock(&m->mu);
        pthread_mutex_lock(&m->base.mu);
        uint64_t used = m->base.used_bytes;
        pthread_mutex_unlock(&m->base.mu);
        if (find_locked(m, name))
            err = 0; /* already there: a store of the same bytes */
        else if (used + o->size > m->base.capacity_bytes)
            err = -ENOSPC;
        else if (htab_insert(&m->objs, &o->node) < 0)
            err = -ENOMEM;
        else
            fresh = true;
        pthread_mutex_unlock(&m->mu);
        if (fresh)
            l2_note_stored(&m->base, k, o->size);
        else {
            free(o->data);
            free(o);
        }
        l2_task_done(it, err == 0, err == 0 ? b->iov_len : 0, err);
        return;
    }
    /* load: copy under the lock, so a delete never frees what is being read */
    bool ok = false;
    pthread_mutex_lock(&m->mu);
    struct obj *o = find_locked(m, name);
    if (o && o->size == b->iov_len) {
        memcpy(b->iov_base, o->data, o->size);
        ok = true;
    }
    pthread_mutex_unlock(&m->mu);
    if (ok) {
        pace(m, b->iov_len);
        l2_note_accessed(&m->base, k);
    }
    l2_task_done(it, ok, ok ? b->iov_len : 0, 0);
}

static int submit(struct l2_adapter *a, enum l2_task_op op, uint64_t task, const struct l2_key *keys,
                  const struct iovec *bufs, size_t n, const struct l2_cb *cb)
{
    struct mock *m = (struct mock *)a;
    if (!n)
        return -EINVAL;
    struct l2_task *t = l2_task_new(a, op, task, keys, bufs, n, cb);
    if (!t)
        return -ENOMEM;
    return l2_task_submit(m->pool, t);
}

static int mock_store(struct l2_adapter *a, uint64_t task, const struct l2_key *keys, const struct iovec *objs,
                      size_t n, const struct l2_cb *cb)
{
    return submit(a, L2_TASK_STORE, task, keys, objs, n, cb);
}

static int mock_lookup(struct l2_adapter *a, uint64_t task, const struct l2_key *keys, size_t n,
                       const struct l2_cb *cb)
{
    return submit(a, L2_TASK_LOOKUP, task, keys, NULL, n, cb);
}

static int mock_load(struct l2_adapter *a, uint64_t task, const struct l2_key *keys, const struct iovec *bufs,
                     size_t n, const struct l2_cb *cb)
{
    return submit(a, L2_TASK_LOAD, task, keys, bufs, n, cb);
}

static void mock_unlock(struct l2_adapter *a, const struct l2_key *keys, size_t n)
{
    struct mock *m = (struct mock *)a;
    char name[L2_KEY_NAME_MAX];
    for (size_t i = 0; i < n; i++) {
        if (l2_key_format(name, sizeof(name), &keys[i]) < 0)
            continue;
        pthread_mutex_lock(&m->mu);
        struct obj *o = find_locked(m, name);
        if (o && o->locks)
            o->locks--;
        pthread_mutex_unlock(&m->mu);
    }
}

static int mock_delete(struct l2_adapter *a, const struct l2_key *keys, size_t n)
{
    struct mock *m = (struct mock *)a;
    char name[L2_KEY_NAME_MAX];
    int removed = 0;
    for (size_t i = 0; i < n; i++) {
        if (l2_key_format(name, sizeof(name), &keys[i]) < 0)
            continue;
        pthread_mutex_lock(&m->mu);
        struct obj *o = find_locked(m, name);
        if (o && !o->locks)
            htab_remove(&m->objs, &o->node);
        else
            o = NULL;
        pthread_mutex_unlock(&m->mu);
        if (o) {
            l2_note_deleted(a, &keys[i], o->size);
            free(o->data);
            free(o);
            removed++;
        }
    }
    return removed;
}

static int mock_list(struct l2_adapter *a, const char *model, size_t page_size, const char *cursor,
                     struct l2_key_page *out)
{
    struct mock *m = (struct mock *)a;
    pthread_mutex_lock(&m->mu);
    size_t n = 0;
    char **names = malloc((m->objs.count ? m->objs.count : 1) * sizeof(char *));
    if (names) {
        struct htab_node *node, *tmp;
        HTAB_FOREACH_SAFE(&m->objs, node, tmp)
        names[n++] = htab_entry(node, struct obj, node)->name;
    }
    int rc = names ? l2_key_page_build(names, n, model, page_size, cursor, out) : -ENOMEM;
    pthread_mutex_unlock(&m->mu);
    free(names);
    return rc;
}

static json_t *mock_status(struct l2_adapter *a)
{
    struct mock *m = (struct mock *)a;
    return json_pack("{s:b, s:f, s:I}", "is_healthy", 1, "mock_bandwidth_gb", m->bandwidth / (1024.0 * 1024 * 1024),
                     "queued", (json_int_t)l2_pool_queued(m->pool));
}

static void mock_destroy(struct l2_adapter *a)
{
    struct mock *m = (struct mock *)a;
    l2_pool_stop(m->pool, l2_task_cancel);
    struct htab_node *node, *tmp;
    HTAB_FOREACH_SAFE(&m->objs, node, tmp)
    {
        struct obj *o = htab_entry(node, struct obj, node);
        free(o->data);
        free(o);
    }
    htab_free(&m->objs);
    pthread_mutex_destroy(&m->mu);
    l2_adapter_base_fini(a);
    free(m);
}

static int positive(const json_t *cfg, const char *key, double *out, char *err, size_t errlen)
{
    const json_t *v = json_object_get(cfg, key);
    if (!json_is_number(v) || !(json_number_value(v) > 0)) {
        snprintf(err, errlen, "mock adapter: '%s' must be a number > 0", key);
        return -EINVAL;
    }
    *out = json_number_value(v);
    return 0;
}

static int mock_create(const json_t *cfg, const struct l2_create_ctx *ctx, struct l2_adapter **out, char *err,
                       size_t errlen)
{
    double size_gb, bw_gb;
    int rc;
    if ((rc = positive(cfg, "max_size_gb", &size_gb, err, errlen)) < 0 ||
        (rc = positive(cfg, "mock_bandwidth_gb", &bw_gb, err, errlen)) < 0)
        return rc;
    struct mock *m = calloc(1, sizeof(*m));
    if (!m)
        return -ENOMEM;
    l2_adapter_base_init(&m->base, &l2_mock_ops, ctx);
    m->base.capacity_bytes = (uint64_t)(size_gb * 1024.0 * 1024 * 1024);
    m->bandwidth = bw_gb * 1024.0 * 1024 * 1024;
    pthread_mutex_init(&m->mu, NULL);
    htab_init(&m->objs);
    if ((rc = l2_pool_start(&m->pool, ctx->name, MOCK_THREADS, MOCK_QUEUE, run, m)) < 0) {
        snprintf(err, errlen, "mock adapter: cannot start its threads: %s", strerror(-rc));
        htab_free(&m->objs);
        pthread_mutex_destroy(&m->mu);
        l2_adapter_base_fini(&m->base);
        free(m);
        return rc;
    }
    log_info("Initialized mock L2 adapter %s: max_size_gb=%g, mock_bandwidth_gb=%g", ctx->name, size_gb, bw_gb);
    *out = &m->base;
    return 0;
}

const struct l2_ops l2_mock_ops = {
    .type = "mock",
    .create = mock_create,
    .destroy = mock_destroy,
    .submit_store = mock_store,
    .submit_lookup = mock_lookup,
    .unlock = mock_unlock,
    .submit_load = mock_load,
    .delete_keys = mock_delete,
    .list_keys = mock_list,
    .status = mock_status,
};
