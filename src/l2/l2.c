/* l2: registry, adapter creation, the counting wrappers and the base's
 * accounting (contract in l2.h). */
#define LOG_MODULE "lmcd.l2"
#include "l2/l2.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/clock.h"
#include "util/htab.h"
#include "util/log.h"

#define REG_MAX 16
#define L2_OPS_PTR(n) &l2_##n##_ops,
static const struct l2_ops *registry[REG_MAX] = { L2_BACKENDS(L2_OPS_PTR) };
#undef L2_OPS_PTR

const struct l2_ops *l2_ops_find(const char *type)
{
    for (size_t i = 0; i < REG_MAX && registry[i]; i++)
        if (!strcmp(registry[i]->type, type))
            return registry[i];
    return NULL;
}

void l2_ops_names(char *buf, size_t cap)
{
    size_t o = 0;
    if (cap)
        buf[0] = 0;
    for (size_t i = 0; i < REG_MAX && registry[i] && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%s", i ? ", " : "", registry[i]->type);
}

int l2_ops_register(const struct l2_ops *ops)
{
    if (l2_ops_find(ops->type))
        return -EEXIST;
    for (size_t i = 0; i < REG_MAX; i++)
        if (!registry[i]) {
            registry[i] = ops;
            return 0;
        }
    return -ENOSPC;
}

void l2_key_page_free(struct l2_key_page *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n; i++)
        free(p->keys[i]);
    free(p->keys);
    free(p->next_cursor);
    memset(p, 0, sizeof(*p));
}

/* ---- per-salt usage ---- */

struct l2_salt_usage {
    struct htab t;
};

struct salt_ent {
    struct htab_node node;
    uint64_t bytes;
    size_t len;
    char salt[];
};

static void salt_add_locked(struct l2_adapter *a, const struct l2_key *k, int64_t delta)
{
    if (!a->salts && !(a->salts = calloc(1, sizeof(*a->salts))))
        return;
    struct htab_node *n = htab_find(&a->salts->t, k->salt_len ? k->salt : "", k->salt_len);
    struct salt_ent *e = n ? htab_entry(n, struct salt_ent, node) : NULL;
    if (!e) {
        if (delta <= 0 || !(e = calloc(1, sizeof(*e) + k->salt_len + 1)))
            return;
        memcpy(e->salt, k->salt_len ? k->salt : "", k->salt_len);
        e->len = k->salt_len;
        e->node.key = e->salt;
        e->node.key_len = e->len;
        if (htab_insert(&a->salts->t, &e->node) < 0) {
            free(e);
            return;
        }
    }
    if (delta < 0 && (uint64_t)-delta > e->bytes)
        e->bytes = 0; /* LMCache clamps at 0 too */
    else
        e->bytes = (uint64_t)((int64_t)e->bytes + delta);
}

static void salts_free(struct l2_adapter *a)
{
    if (!a->salts)
        return;
    struct htab_node *n, *tmp;
    HTAB_FOREACH_SAFE(&a->salts->t, n, tmp)
    free(htab_entry(n, struct salt_ent, node));
    htab_free(&a->salts->t);
    free(a->salts);
    a->salts = NULL;
}

/* ---- life cycle ---- */

void l2_adapter_base_init(struct l2_adapter *a, const struct l2_ops *ops, const struct l2_create_ctx *ctx)
{
    a->ops = ops;
    snprintf(a->name, sizeof(a->name), "%s", ctx->name);
    a->index = ctx->index;
    pthread_mutex_init(&a->mu, NULL);
    atomic_init(&a->next_task, 1);
}

void l2_adapter_base_fini(struct l2_adapter *a)
{
    salts_free(a);
    free(a->listeners);
    a->listeners = NULL;
    json_decref(a->eviction);
    a->eviction = NULL;
    pthread_mutex_destroy(&a->mu);
}

static int check_eviction(const json_t *ev, char *err, size_t errlen)
{
    if (!json_is_object(ev)) {
        snprintf(err, errlen, "'eviction' must be an object");
        return -EINVAL;
    }
    const json_t *p = json_object_get(ev, "eviction_policy");
    if (!json_is_string(p)) {
        snprintf(err, errlen, "'eviction' needs 'eviction_policy' (LRU or noop)");
        return -EINVAL;
    }
    if (strcmp(json_string_value(p), "LRU") && strcmp(json_string_value(p), "noop")) {
        snprintf(err, errlen, "unknown eviction_policy '%s' (lmcd serves LRU and noop)", json_string_value(p));
        return -EINVAL;
    }
    static const char *const fr[] = { "trigger_watermark", "eviction_ratio" };
    for (int i = 0; i < 2; i++) {
        const json_t *v = json_object_get(ev, fr[i]);
        if (v && (!json_is_number(v) || json_number_value(v) <= 0 || json_number_value(v) > 1)) {
            snprintf(err, errlen, "'eviction.%s' must be a number in (0, 1]", fr[i]);
            return -EINVAL;
        }
    }
    return 0;
}

int l2_adapter_create(const json_t *cfg, size_t index, struct l2_adapter **out, char *err, size_t errlen)
{
    *out = NULL;
    const json_t *t = json_object_get(cfg, "type");
    if (!json_is_string(t)) {
        snprintf(err, errlen, "missing 'type'");
        return -EINVAL;
    }
    const struct l2_ops *ops = l2_ops_find(json_string_value(t));
    if (!ops) {
        snprintf(err, errlen, "unknown L2 adapter type '%s'", json_string_value(t));
        return -EINVAL;
    }
    const json_t *ev = json_object_get(cfg, "eviction");
    int rc;
    if (ev && !json_is_null(ev) && (rc = check_eviction(ev, err, errlen)) < 0)
        return rc;
    char name[16];
    snprintf(name, sizeof(name), "%.6s%zu", ops->type, index % 100);
    struct l2_create_ctx ctx = { index, name };
    struct l2_adapter *a = NULL;
    if ((rc = ops->create(cfg, &ctx, &a, err, errlen)) < 0)
        return rc;
    if (ev && !json_is_null(ev))
        a->eviction = json_deep_copy(ev);
    *out = a;
    return 0;
}

void l2_adapter_destroy(struct l2_adapter *a)
{
    if (a)
        a->ops->destroy(a);
}

/* ---- counting wrappers ---- */

enum op { OP_STORE, OP_LOOKUP, OP_LOAD };

struct call {
    struct l2_adapter *a;
    struct l2_cb user;
    uint64_t t0;
    enum op op;
};

static void call_done(void *arg, const struct l2_result *r)
{
    struct call *c = arg;
    struct l2_counters *k = &c->a->c;
    uint64_t dt = clock_mono_ns() - c->t0;
    size_t ok = 0;
    for (size_t i = 0; r->ok && i < r->n; i++)
        ok += r->ok[i] != 0;
    if (!r->ok && r->rc == 0)
        ok = r->n;
    if (r->rc < 0)
        atomic_fetch_add_explicit(&k->errors, 1, memory_order_relaxed);
    switch (c->op) {
    case OP_STORE:
        atomic_fetch_add_explicit(&k->store_ns, dt, memory_order_relaxed);
        atomic_fetch_add_explicit(&k->store_done, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&k->store_keys, r->rc < 0 ? 0 : ok, memory_order_relaxed);
        atomic_fetch_add_explicit(&k->store_bytes, r->bytes, memory_order_relaxed);
        if (r->rc < 0)
            atomic_fetch_add_explicit(&k->store_failed, 1, memory_order_relaxed);
        break;
    case OP_LOOKUP:
        atomic_fetch_add_explicit(&k->lookup_ns, dt, memory_order_relaxed);
        atomic_fetch_add_explicit(&k->lookup_done, 1, memory_order_relaxed);
        if (r->rc < 0) {
            atomic_fetch_add_explicit(&k->lookup_failed, 1, memory_order_relaxed);
            ok = 0;
        }
        atomic_fetch_add_explicit(&k->lookup_hits, ok, memory_order_relaxed);
        atomic_fetch_add_explicit(&k->lookup_misses, r->n - ok, memory_order_relaxed);
        break;
    case OP_LOAD:
        atomic_fetch_add_explicit(&k->load_ns, dt, memory_order_relaxed);
        atomic_fetch_add_explicit(&k->load_done, 1, memory_order_relaxed);
        if (r->rc < 0)
            ok = 0;
        atomic_fetch_add_explicit(&k->load_ok, ok, memory_order_relaxed);
        atomic_fetch_add_explicit(&k->load_failed, r->n - ok, memory_order_relaxed);
        atomic_fetch_add_explicit(&k->load_bytes, r->bytes, memory_order_relaxed);
        break;
    }
    struct l2_cb user = c->user;
    free(c);
    user.fn(user.arg, r);
}

static struct call *call_new(struct l2_adapter *a, const struct l2_cb *cb, enum op op, uint64_t *task,
                             uint64_t *id)
{
    struct call *c = malloc(sizeof(*c));
    if (!c)
        return NULL;
    c->a = a;
    c->user = *cb;
    c->t0 = clock_mono_ns();
    c->op = op;
    *id = atomic_fetch_add_explicit(&a->next_task, 1, memory_order_relaxed);
    if (task)
        *task = *id;
    return c;
}

static int call_failed(struct l2_adapter *a, struct call *c, int rc)
{
    (void)a;
    free(c);
    return rc;
}

int l2_submit_store(struct l2_adapter *a, const struct l2_key *keys, const struct iovec *objs, size_t n,
                    const struct l2_cb *cb, uint64_t *task)
{
    uint64_t id;
    struct call *c = call_new(a, cb, OP_STORE, task, &id);
    if (!c)
        return -ENOMEM;
    atomic_fetch_add_explicit(&a->c.store_tasks, 1, memory_order_relaxed);
    struct l2_cb mine = { call_done, c };
    int rc = a->ops->submit_store(a, id, keys, objs, n, &mine);
    if (rc < 0) {
        atomic_fetch_add_explicit(&a->c.store_failed, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&a->c.errors, 1, memory_order_relaxed);
        return call_failed(a, c, rc);
    }
    return 0;
}

int l2_submit_lookup(struct l2_adapter *a, const struct l2_key *keys, size_t n, const struct l2_cb *cb,
                     uint64_t *task)
{
    uint64_t id;
    struct call *c = call_new(a, cb, OP_LOOKUP, task, &id);
    if (!c)
        return -ENOMEM;
    atomic_fetch_add_explicit(&a->c.lookup_keys, n, memory_order_relaxed);
    struct l2_cb mine = { call_done, c };
    int rc = a->ops->submit_lookup(a, id, keys, n, &mine);
    if (rc < 0) {
        atomic_fetch_add_explicit(&a->c.lookup_failed, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&a->c.lookup_misses, n, memory_order_relaxed);
        atomic_fetch_add_explicit(&a->c.errors, 1, memory_order_relaxed);
        return call_failed(a, c, rc);
    }
    return 0;
}

int l2_submit_load(struct l2_adapter *a, const struct l2_key *keys, const struct iovec *bufs, size_t n,
                   const struct l2_cb *cb, uint64_t *task)
{
    uint64_t id;
    struct call *c = call_new(a, cb, OP_LOAD, task, &id);
    if (!c)
        return -ENOMEM;
    atomic_fetch_add_explicit(&a->c.load_keys, n, memory_order_relaxed);
    struct l2_cb mine = { call_done, c };
    int rc = a->ops->submit_load(a, id, keys, bufs, n, &mine);
    if (rc < 0) {
        atomic_fetch_add_explicit(&a->c.load_failed, n, memory_order_relaxed);
        atomic_fetch_add_explicit(&a->c.errors, 1, memory_order_relaxed);
        return call_failed(a, c, rc);
    }
    return 0;
}

void l2_unlock(struct l2_adapter *a, const struct l2_key *keys, size_t n)
{
    if (n && a->ops->unlock)
        a->ops->unlock(a, keys, n);
}

int l2_delete(struct l2_adapter *a, const struct l2_key *keys, size_t n)
{
    if (!a->ops->delete_keys)
        return 0; /* LMCache's default delete is a no-op */
    int rc = a->ops->delete_keys(a, keys, n);
    if (rc > 0)
        atomic_fetch_add_explicit(&a->c.deleted_keys, (uint64_t)rc, memory_order_relaxed);
    return rc;
}

int l2_list_keys(struct l2_adapter *a, const char *model, size_t page_size, const char *cursor,
                 struct l2_key_page *out)
{
    memset(out, 0, sizeof(*out));
    if (!a->ops->list_keys)
        return -ENOTSUP;
    return a->ops->list_keys(a, model, page_size ? page_size : 500, cursor, out);
}

/* ---- accounting ---- */

void l2_get_usage(struct l2_adapter *a, bool with_salts, struct l2_usage *out)
{
    memset(out, 0, sizeof(*out));
    if (with_salts)
        out->bytes_by_cache_salt = json_object();
    pthread_mutex_lock(&a->mu);
    out->total_bytes_used = a->used_bytes;
    out->objects = a->objects;
    out->total_capacity_bytes = a->capacity_bytes;
    if (with_salts && a->salts) {
        struct htab_node *n, *tmp;
        HTAB_FOREACH_SAFE(&a->salts->t, n, tmp)
        {
            struct salt_ent *e = htab_entry(n, struct salt_ent, node);
            if (e->bytes)
                json_object_set_new(out->bytes_by_cache_salt, e->salt, json_integer((json_int_t)e->bytes));
        }
    }
    pthread_mutex_unlock(&a->mu);
}

double l2_usage_fraction(struct l2_adapter *a)
{
    if (!a->capacity_bytes)
        return -1.0;
    pthread_mutex_lock(&a->mu);
    double f = (double)a->used_bytes / (double)a->capacity_bytes;
    pthread_mutex_unlock(&a->mu);
    return f;
}

int l2_add_listener(struct l2_adapter *a, const struct l2_listener *l)
{
    pthread_mutex_lock(&a->mu);
    struct l2_listener *v = realloc(a->listeners, (a->n_listeners + 1) * sizeof(*v));
    if (!v) {
        pthread_mutex_unlock(&a->mu);
        return -ENOMEM;
    }
    a->listeners = v;
    pthread_mutex_unlock(&a->mu);
    /* seed it before it sees live events, as LMCache's register_listener */
    if (a->ops->replay)
        a->ops->replay(a, l);
    pthread_mutex_lock(&a->mu);
    a->listeners[a->n_listeners++] = *l;
    pthread_mutex_unlock(&a->mu);
    return 0;
}

void l2_note_stored(struct l2_adapter *a, const struct l2_key *k, uint64_t size)
{
    pthread_mutex_lock(&a->mu);
    a->used_bytes += size;
    a->objects++;
    salt_add_locked(a, k, (int64_t)size);
    size_t nl = a->n_listeners;
    struct l2_listener *ls = a->listeners;
    pthread_mutex_unlock(&a->mu);
    for (size_t i = 0; i < nl; i++)
        if (ls[i].stored)
            ls[i].stored(ls[i].arg, a, k, size);
}

void l2_note_accessed(struct l2_adapter *a, const struct l2_key *k)
{
    for (size_t i = 0; i < a->n_listeners; i++)
        if (a->listeners[i].accessed)
            a->listeners[i].accessed(a->listeners[i].arg, a, k);
}

void l2_note_deleted(struct l2_adapter *a, const struct l2_key *k, uint64_t size)
{
    pthread_mutex_lock(&a->mu);
    if (a->used_bytes < size)
        log_warn("L2 adapter %s: usage underflow (%llu < %llu), clamped at 0", a->name,
                 (unsigned long long)a->used_bytes, (unsigned long long)size);
    a->used_bytes = a->used_bytes >= size ? a->used_bytes - size : 0;
    if (a->objects)
        a->objects--;
    salt_add_locked(a, k, -(int64_t)size);
    size_t nl = a->n_listeners;
    struct l2_listener *ls = a->listeners;
    pthread_mutex_unlock(&a->mu);
    for (size_t i = 0; i < nl; i++)
        if (ls[i].deleted)
            ls[i].deleted(ls[i].arg, a, k, size);
}

/* ---- status ---- */

#define LD(x) ((json_int_t)atomic_load_explicit(&(x), memory_order_relaxed))

static double avg_ms(atomic_uint_fast64_t *ns, atomic_uint_fast64_t *n)
{
    uint64_t c = atomic_load_explicit(n, memory_order_relaxed);
    return c ? (double)atomic_load_explicit(ns, memory_order_relaxed) / (double)c / 1e6 : 0.0;
}

json_t *l2_status_json(struct l2_adapter *a)
{
    struct l2_usage u;
    l2_get_usage(a, true, &u);
    struct l2_counters *k = &a->c;
    json_t *backend = a->ops->status ? a->ops->status(a) : NULL;
    json_t *healthy = backend ? json_object_get(backend, "is_healthy") : NULL;
    json_t *o = json_pack(
        "{s:s, s:s, s:I, s:b, s:I, s:I, s:I, s:f, s:o,"
        " s:{s:I, s:I, s:I, s:I, s:f}, s:{s:I, s:I, s:I, s:I, s:f},"
        " s:{s:I, s:I, s:I, s:I, s:f}, s:I, s:I}",
        "type", a->ops->type, "name", a->name, "index", (json_int_t)a->index, "is_healthy",
        healthy ? json_is_true(healthy) : 1, "total_bytes_used", (json_int_t)u.total_bytes_used,
        "total_capacity_bytes", (json_int_t)u.total_capacity_bytes, "objects", (json_int_t)u.objects,
        "usage_fraction", l2_usage_fraction(a), "bytes_by_cache_salt", u.bytes_by_cache_salt,
        "store", "tasks", LD(k->store_tasks), "failed_tasks", LD(k->store_failed), "keys", LD(k->store_keys),
        "bytes", LD(k->store_bytes), "avg_latency_ms", avg_ms(&k->store_ns, &k->store_done),
        "lookup", "keys", LD(k->lookup_keys), "hits", LD(k->lookup_hits), "misses", LD(k->lookup_misses),
        "failed_tasks", LD(k->lookup_failed), "avg_latency_ms", avg_ms(&k->lookup_ns, &k->lookup_done),
        "load", "keys", LD(k->load_keys), "ok", LD(k->load_ok), "failed", LD(k->load_failed), "bytes",
        LD(k->load_bytes), "avg_latency_ms", avg_ms(&k->load_ns, &k->load_done),
        "errors", LD(k->errors), "deleted_keys", LD(k->deleted_keys));
    if (o && backend)
        json_object_set(o, "backend", backend);
    json_decref(backend);
    return o;
}

static int cmp_str(const void *x, const void *y) { return strcmp(*(char *const *)x, *(char *const *)y); }

int l2_key_page_build(char *const *names, size_t n, const char *model, size_t page_size, const char *cursor,
                      struct l2_key_page *out)
{
    memset(out, 0, sizeof(*out));
    size_t ml = strlen(model), m = 0;
    char **sel = malloc((n ? n : 1) * sizeof(*sel));
    if (!sel)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        struct l2_key k;
        if (l2_key_parse(names[i], strlen(names[i]), &k) < 0 || k.model_len != ml || memcmp(k.model, model, ml))
            continue;
        if (cursor && *cursor && strcmp(names[i], cursor) <= 0)
            continue;
        sel[m++] = names[i];
    }
    qsort(sel, m, sizeof(*sel), cmp_str);
    size_t take = m < page_size ? m : page_size;
    int rc = -ENOMEM;
    if (!(out->keys = calloc(take ? take : 1, sizeof(char *))))
        goto fail;
    for (size_t i = 0; i < take; i++, out->n++)
        if (!(out->keys[i] = strdup(sel[i])))
            goto fail;
    if (take < m && take && !(out->next_cursor = strdup(sel[take - 1])))
        goto fail;
    free(sel);
    return 0;
fail:
    free(sel);
    l2_key_page_free(out);
    return rc;
}
