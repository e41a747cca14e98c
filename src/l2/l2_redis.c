/*
 * l2_redis: workers, queue, commands and failure handling shared by the
 * `resp` and `valkey` adapters. See l2_redis.h for the contract.
 *
 * Lock order: qmu, then nothing (callbacks and network I/O run without it);
 * admin_mu, then nothing. The health struct has its own leaf lock.
 */
#define LOG_MODULE "lmcd.l2"
#include "l2/l2_redis.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "l2/l2_cluster.h"
#include "util/clock.h"
#include "util/log.h"

enum rop { OP_STORE, OP_LOOKUP, OP_LOAD };

struct rtask;

/* A slice [lo, hi) of a task's keys: the unit a worker runs. */
struct rpart {
    struct rpart *next; /* guarded by qmu while queued */
    struct rtask *t;
    size_t lo, hi;
};

struct rtask {
    enum rop op;
    uint64_t id;
    size_t n;
    char *names;         /* n NUL-terminated Redis keys, back to back */
    size_t *off, *len;   /* each name's offset and length */
    size_t skip;         /* prefix bytes before the LMCache key string */
    struct iovec *iov;   /* store/load: the caller's buffers (copied array) */
    uint8_t *ok;         /* written by the worker running the key's part */
    struct l2_cb cb;
    size_t nparts;
    struct rpart *parts;
    atomic_size_t parts_left;
    atomic_uint_fast64_t bytes;
    atomic_size_t conn_failed_parts;
    atomic_bool failed_key;
    atomic_bool cancelled;
};

struct worker {
    struct l2_redis *r;
    int idx;
    struct l2_cluster *cl; /* this thread's connections */
    pthread_t th;
    bool started;
};

struct l2_redis {
    struct l2_adapter base;
    struct l2_redis_config cfg; /* strings below are owned copies */
    char *nodes, *username, *password, *prefix;
    size_t prefix_len;
    char ttl_str[24];
    struct l2_cluster_health health;

    pthread_mutex_t qmu;
    pthread_cond_t qcv;
    struct rpart *rhead, *rtail; /* lookups and loads; guarded by qmu */
    struct rpart *whead, *wtail; /* stores; guarded by qmu */
    size_t queued;               /* guarded by qmu */
    bool stopping;               /* guarded by qmu */

    int nworkers;
    struct worker workers[L2_REDIS_MAX_WORKERS];

    atomic_bool down;
    uint64_t probe_at_ms, probe_backoff_ms; /* worker 0 only */
    atomic_uint_fast64_t stores_dropped, stores_dropped_at_down, lookups_refused, conn_errors, size_mismatches;

    pthread_mutex_t admin_mu;
    struct l2_cluster *admin; /* guarded by admin_mu */
};

#define AS(a) ((struct l2_redis *)(a))
#define RELAXED memory_order_relaxed

/* ---- JSON helpers ------------------------------------------------------ */

int l2_redis_json_str(const json_t *cfg, const char *field, const char **out, char *err, size_t errlen)
{
    json_t *v = json_object_get(cfg, field);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v)) {
        snprintf(err, errlen, "'%s' must be a string", field);
        return -EINVAL;
    }
    *out = json_string_value(v);
    return 0;
}

int l2_redis_json_int(const json_t *cfg, const char *field, long long lo, long long hi, long long *out, char *err,
                      size_t errlen)
{
    json_t *v = json_object_get(cfg, field);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
        snprintf(err, errlen, "'%s' must be an integer in [%lld, %lld]", field, lo, hi);
        return -EINVAL;
    }
    *out = json_integer_value(v);
    return 0;
}

int l2_redis_json_num(const json_t *cfg, const char *field, double lo, double hi, double *out, char *err,
                      size_t errlen)
{
    json_t *v = json_object_get(cfg, field);
    if (!v || json_is_null(v))
        return 0;
    double d = json_number_value(v);
    if (!json_is_number(v) || !isfinite(d) || d < lo || d > hi) {
        snprintf(err, errlen, "'%s' must be a number in [%g, %g]", field, lo, hi);
        return -EINVAL;
    }
    *out = d;
    return 0;
}

int l2_redis_json_bool(const json_t *cfg, const char *field, bool *out, char *err, size_t errlen)
{
    json_t *v = json_object_get(cfg, field);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_boolean(v)) {
        snprintf(err, errlen, "'%s' must be true or false", field);
        return -EINVAL;
    }
    *out = json_is_true(v);
    return 0;
}

/* ---- up / down ---------------------------------------------------------- */

static void mark_down(struct l2_redis *r)
{
    if (atomic_exchange(&r->down, true))
        return;
    atomic_store_explicit(&r->stores_dropped_at_down, atomic_load_explicit(&r->stores_dropped, RELAXED), RELAXED);
    log_warn("L2 %s: no Redis server answers (%s); stores are dropped and lookups miss until one does, "
             "probing with backoff",
             r->base.name, r->nodes);
    pthread_mutex_lock(&r->qmu);
    r->probe_backoff_ms = 100;
    r->probe_at_ms = clock_mono_ms() + r->probe_backoff_ms;
    pthread_cond_broadcast(&r->qcv); /* worker 0 starts probing */
    pthread_mutex_unlock(&r->qmu);
}

static void mark_up(struct l2_redis *r)
{
    if (!atomic_exchange(&r->down, false))
        return;
    uint64_t dropped = atomic_load_explicit(&r->stores_dropped, RELAXED) -
                       atomic_load_explicit(&r->stores_dropped_at_down, RELAXED);
    log_info("L2 %s: Redis answers again (%s); %llu store task(s) dropped meanwhile", r->base.name, r->nodes,
             (unsigned long long)dropped);
}

/* Worker 0, while down: one cheap round trip decides. */
static void probe(struct worker *w)
{
    struct l2_redis *r = w->r;
    int rc;
    if (r->cfg.cluster) {
        rc = l2_cluster_refresh(w->cl);
    } else {
        const char *argv[] = { "PING" };
        size_t len[] = { 4 };
        struct l2_cluster_cmd c = { .key = "", .keylen = 0, .argc = 1, .argv = argv, .argvlen = len };
        l2_cluster_exec(w->cl, &c, 1);
        rc = c.reply ? 0 : c.err;
        if (c.reply)
            freeReplyObject(c.reply);
    }
    if (rc == 0)
        mark_up(r);
}

/* ---- tasks ------------------------------------------------------------ */

static void task_free(struct rtask *t)
{
    free(t->names);
    free(t->off);
    free(t->iov);
    free(t->ok);
    free(t->parts);
    free(t);
}

static bool conn_err(int err) { return err == -ECONNREFUSED || err == -EIO || err == -EAGAIN; }

static void task_finish(struct l2_redis *r, struct rtask *t)
{
    int rc = 0;
    size_t cf = atomic_load(&t->conn_failed_parts);
    if (atomic_load(&t->cancelled))
        rc = -ECANCELED;
    else if (t->op == OP_STORE)
        rc = atomic_load(&t->failed_key) ? (cf ? -ENOTCONN : -EIO) : 0;
    else if (t->n && cf == t->nparts)
        rc = -ENOTCONN;
    if (t->op == OP_STORE && rc < 0)
        atomic_fetch_add_explicit(&r->stores_dropped, 1, RELAXED);
    struct l2_result res = { .task = t->id, .rc = rc, .n = t->n, .ok = t->ok,
                             .bytes = atomic_load_explicit(&t->bytes, RELAXED) };
    t->cb.fn(t->cb.arg, &res);
    task_free(t);
}

static void part_done(struct l2_redis *r, struct rpart *p)
{
    if (atomic_fetch_sub(&p->t->parts_left, 1) == 1)
        task_finish(r, p->t);
}

/* The LMCache key inside a Redis key, parsed back (for the listeners). */
static bool task_key(const struct rtask *t, size_t i, struct l2_key *k)
{
    return l2_key_parse(t->names + t->off[i] + t->skip, t->len[i] - t->skip, k) == 0;
}

static void run_part(struct worker *w, struct rpart *p)
{
    struct l2_redis *r = w->r;
    struct rtask *t = p->t;
    size_t m = p->hi - p->lo;
    struct l2_cluster_cmd cmds[L2_REDIS_PART];
    const char *argv[L2_REDIS_PART][5];
    size_t lens[L2_REDIS_PART][5];
    for (size_t j = 0; j < m; j++) {
        size_t i = p->lo + j;
        const char *name = t->names + t->off[i];
        int argc = 2;
        argv[j][1] = name;
        lens[j][1] = t->len[i];
        switch (t->op) {
        case OP_STORE:
            argv[j][0] = "SET", lens[j][0] = 3;
            argv[j][2] = t->iov[i].iov_base, lens[j][2] = t->iov[i].iov_len;
            argc = 3;
            if (r->cfg.ttl_seconds) {
                argv[j][3] = "EX", lens[j][3] = 2;
                argv[j][4] = r->ttl_str, lens[j][4] = strlen(r->ttl_str);
                argc = 5;
            }
            break;
        case OP_LOOKUP:
            argv[j][0] = "EXISTS", lens[j][0] = 6;
            break;
        case OP_LOAD:
            argv[j][0] = "GET", lens[j][0] = 3;
            break;
        }
        cmds[j] = (struct l2_cluster_cmd){ .key = name, .keylen = t->len[i], .argc = argc, .argv = argv[j],
                                           .argvlen = lens[j] };
    }
    if (m)
        l2_cluster_exec(w->cl, cmds, m);
    /* Every command lost to a connection that broke (e.g. the server
     * restarted since this worker last used it): one more try on a fresh
     * connection. SET, GET and EXISTS are idempotent. */
    bool all_io = m > 0;
    for (size_t j = 0; j < m; j++)
        all_io = all_io && !cmds[j].reply && cmds[j].err == -EIO;
    if (all_io)
        l2_cluster_exec(w->cl, cmds, m);
    size_t cfail = 0, tried = 0; /* tried: failures of a real attempt, not a backoff */
    uint64_t bytes = 0;
    for (size_t j = 0; j < m; j++) {
        size_t i = p->lo + j;
        redisReply *rep = cmds[j].reply;
        bool ok = false;
        struct l2_key k;
        if (!rep) {
            cfail += conn_err(cmds[j].err);
            tried += cmds[j].err == -ECONNREFUSED || cmds[j].err == -EIO;
        } else if (t->op == OP_STORE) {
            ok = rep->type == REDIS_REPLY_STATUS && !strcasecmp(rep->str, "OK");
            if (ok) {
                bytes += t->iov[i].iov_len;
                if (task_key(t, i, &k))
                    l2_note_stored(&r->base, &k, t->iov[i].iov_len);
            }
        } else if (t->op == OP_LOOKUP) {
            ok = rep->type == REDIS_REPLY_INTEGER && rep->integer == 1;
        } else if (rep->type == REDIS_REPLY_STRING) {
            /* Only an object of exactly the expected size is ours. */
            ok = (size_t)rep->len == t->iov[i].iov_len;
            if (ok) {
                memcpy(t->iov[i].iov_base, rep->str, (size_t)rep->len);
                bytes += (uint64_t)rep->len;
                if (task_key(t, i, &k))
                    l2_note_accessed(&r->base, &k);
            } else {
                atomic_fetch_add_explicit(&r->size_mismatches, 1, RELAXED);
            }
        }
        if (rep)
            freeReplyObject(rep);
        t->ok[i] = ok;
        if (!ok)
            atomic_store_explicit(&t->failed_key, true, RELAXED);
    }
    if (cfail)
        atomic_fetch_add_explicit(&r->conn_errors, cfail, RELAXED);
    atomic_fetch_add_explicit(&t->bytes, bytes, RELAXED);
    if (m && cfail == m) {
        atomic_fetch_add(&t->conn_failed_parts, 1);
        /* Every command failed for a connection reason. Standalone: the
         * server is gone. Cluster: gone only if no node serves the map.
         * Failures that were only this worker's backoff (-EAGAIN) are old
         * news: after the probe found the server again they must not mark
         * it down a second time. */
        if (tried && (!r->cfg.cluster || l2_cluster_refresh(w->cl) < 0))
            mark_down(r);
    }
    part_done(r, p);
}

/* ---- workers ---------------------------------------------------------- */

static struct rpart *pop_locked(struct l2_redis *r)
{
    struct rpart *p = r->rhead;
    if (p) {
        if (!(r->rhead = p->next))
            r->rtail = NULL;
    } else if ((p = r->whead)) {
        if (!(r->whead = p->next))
            r->wtail = NULL;
    }
    if (p)
        r->queued--;
    return p;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct l2_redis *r = w->r;
    char tname[16];
    snprintf(tname, sizeof(tname), "%.10s-w%d", r->base.name, w->idx);
    pthread_setname_np(pthread_self(), tname);
    pthread_mutex_lock(&r->qmu);
    for (;;) {
        if (r->stopping)
            break;
        struct rpart *p = pop_locked(r);
        if (p) {
            pthread_mutex_unlock(&r->qmu);
            run_part(w, p);
            pthread_mutex_lock(&r->qmu);
            continue;
        }
        if (w->idx == 0 && atomic_load(&r->down)) {
            uint64_t now = clock_mono_ms();
            if (now >= r->probe_at_ms) {
                r->probe_backoff_ms = r->probe_backoff_ms >= 2500 ? 5000 : r->probe_backoff_ms * 2;
                r->probe_at_ms = now + r->probe_backoff_ms;
                pthread_mutex_unlock(&r->qmu);
                probe(w);
                pthread_mutex_lock(&r->qmu);
                continue;
            }
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            uint64_t wait = r->probe_at_ms - now;
            ts.tv_sec += (time_t)(wait / 1000);
            ts.tv_nsec += (long)(wait % 1000) * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&r->qcv, &r->qmu, &ts);
            continue;
        }
        pthread_cond_wait(&r->qcv, &r->qmu);
    }
    pthread_mutex_unlock(&r->qmu);
    return NULL;
}

/* ---- submit ----------------------------------------------------------- */

static int submit(struct l2_redis *r, enum rop op, uint64_t id, const struct l2_key *keys, const struct iovec *iov,
                  size_t n, const struct l2_cb *cb)
{
    if (!n)
        return -EINVAL;
    if (atomic_load(&r->down)) {
        if (op == OP_STORE)
            atomic_fetch_add_explicit(&r->stores_dropped, 1, RELAXED);
        else
            atomic_fetch_add_explicit(&r->lookups_refused, 1, RELAXED);
        return -ENOTCONN;
    }
    int rc = -ENOMEM;
    struct rtask *t = calloc(1, sizeof(*t));
    char *name = malloc(L2_KEY_NAME_MAX + r->prefix_len + 2);
    if (!t || !name)
        goto fail;
    t->op = op;
    t->id = id;
    t->n = n;
    t->cb = *cb;
    t->skip = r->prefix_len ? r->prefix_len + 1 : 0;
    t->nparts = n ? (n + L2_REDIS_PART - 1) / L2_REDIS_PART : 1;
    if (!(t->off = calloc(2 * (n ? n : 1), sizeof(size_t))) || !(t->ok = calloc(n ? n : 1, 1)) ||
        !(t->parts = calloc(t->nparts, sizeof(*t->parts))))
        goto fail;
    t->len = t->off + n;
    if (iov && n) {
        if (!(t->iov = malloc(n * sizeof(*iov))))
            goto fail;
        memcpy(t->iov, iov, n * sizeof(*iov));
    }
    size_t cap = 0, used = 0;
    for (size_t i = 0; i < n; i++) {
        if (t->skip) {
            memcpy(name, r->prefix, r->prefix_len);
            name[r->prefix_len] = '@';
        }
        int l = l2_key_format(name + t->skip, L2_KEY_NAME_MAX, &keys[i]);
        if (l < 0) {
            rc = l;
            goto fail;
        }
        size_t len = t->skip + (size_t)l;
        if (used + len + 1 > cap) {
            size_t ncap = cap ? cap * 2 : (len + 1) * (n < 64 ? n : 64);
            while (ncap < used + len + 1)
                ncap *= 2;
            char *nb = realloc(t->names, ncap);
            if (!nb)
                goto fail;
            t->names = nb;
            cap = ncap;
        }
        memcpy(t->names + used, name, len + 1);
        t->off[i] = used;
        t->len[i] = len;
        used += len + 1;
    }
    free(name);
    name = NULL;
    atomic_init(&t->parts_left, t->nparts);
    for (size_t p = 0; p < t->nparts; p++) {
        t->parts[p].t = t;
        t->parts[p].lo = p * L2_REDIS_PART;
        t->parts[p].hi = (p + 1) * L2_REDIS_PART < n ? (p + 1) * L2_REDIS_PART : n;
        t->parts[p].next = p + 1 < t->nparts ? &t->parts[p + 1] : NULL;
    }
    pthread_mutex_lock(&r->qmu);
    if (r->stopping) {
        rc = -ESHUTDOWN;
    } else if (r->queued + t->nparts > L2_REDIS_MAX_QUEUED) {
        rc = -ENOBUFS;
    } else {
        struct rpart **head = op == OP_STORE ? &r->whead : &r->rhead;
        struct rpart **tail = op == OP_STORE ? &r->wtail : &r->rtail;
        if (*tail)
            (*tail)->next = &t->parts[0];
        else
            *head = &t->parts[0];
        *tail = &t->parts[t->nparts - 1];
        r->queued += t->nparts;
        rc = 0;
        if (t->nparts > 1)
            pthread_cond_broadcast(&r->qcv);
        else
            pthread_cond_signal(&r->qcv);
    }
    pthread_mutex_unlock(&r->qmu);
    if (rc == 0)
        return 0;
fail:
    if (op == OP_STORE && rc == -ENOBUFS)
        atomic_fetch_add_explicit(&r->stores_dropped, 1, RELAXED);
    free(name);
    if (t)
        task_free(t);
    return rc;
}

int l2_redis_submit_store(struct l2_adapter *a, uint64_t task, const struct l2_key *keys, const struct iovec *objs,
                          size_t n, const struct l2_cb *cb)
{
    return submit(AS(a), OP_STORE, task, keys, objs, n, cb);
}

int l2_redis_submit_lookup(struct l2_adapter *a, uint64_t task, const struct l2_key *keys, size_t n,
                           const struct l2_cb *cb)
{
    return submit(AS(a), OP_LOOKUP, task, keys, NULL, n, cb);
}

int l2_redis_submit_load(struct l2_adapter *a, uint64_t task, const struct l2_key *keys, const struct iovec *bufs,
                         size_t n, const struct l2_cb *cb)
{
    return submit(AS(a), OP_LOAD, task, keys, bufs, n, cb);
}

/* Redis has no per-key pin: lookups only answer existence (LMCache's resp
 * connector does the same). */
void l2_redis_unlock(struct l2_adapter *a, const struct l2_key *keys, size_t n)
{
    (void)a;
    (void)keys;
    (void)n;
}

/* ---- admin: delete, list ---------------------------------------------- */

int l2_redis_delete_keys(struct l2_adapter *a, const struct l2_key *keys, size_t n)
{
    struct l2_redis *r = AS(a);
    if (atomic_load(&r->down))
        return -ENOTCONN;
    size_t skip = r->prefix_len ? r->prefix_len + 1 : 0;
    int removed = 0, rc = 0;
    char *name = malloc(L2_KEY_NAME_MAX + skip + 1);
    if (!name)
        return -ENOMEM;
    pthread_mutex_lock(&r->admin_mu);
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (skip) {
            memcpy(name, r->prefix, r->prefix_len);
            name[r->prefix_len] = '@';
        }
        int l = l2_key_format(name + skip, L2_KEY_NAME_MAX, &keys[i]);
        if (l < 0)
            continue;
        size_t len = skip + (size_t)l;
        const char *sargv[] = { "STRLEN", name }, *dargv[] = { "DEL", name };
        size_t slen[] = { 6, len }, dlen[] = { 3, len };
        struct l2_cluster_cmd c[2] = {
            { .key = name, .keylen = len, .argc = 2, .argv = sargv, .argvlen = slen },
            { .key = name, .keylen = len, .argc = 2, .argv = dargv, .argvlen = dlen },
        };
        l2_cluster_exec(r->admin, c, 2);
        if (c[1].reply && c[1].reply->type == REDIS_REPLY_INTEGER && c[1].reply->integer == 1) {
            removed++;
            uint64_t size = c[0].reply && c[0].reply->type == REDIS_REPLY_INTEGER ? (uint64_t)c[0].reply->integer : 0;
            l2_note_deleted(a, &keys[i], size);
        } else if (!c[1].reply && conn_err(c[1].err)) {
            rc = -ENOTCONN;
        }
        for (int j = 0; j < 2; j++)
            if (c[j].reply)
                freeReplyObject(c[j].reply);
    }
    pthread_mutex_unlock(&r->admin_mu);
    free(name);
    return rc < 0 && !removed ? rc : removed;
}

/* Glob-escapes s into out ('*', '?', '[', ']', '\' get a backslash). */
static size_t glob_escape(char *out, const char *s, size_t len)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (strchr("*?[]\\", s[i]))
            out[o++] = '\\';
        out[o++] = s[i];
    }
    return o;
}

/* The masters serving the slot map, as "host:port" (unique, map order). */
static int masters_locked(struct l2_redis *r, char (*addrs)[272], int max)
{
    if (!r->cfg.cluster) {
        snprintf(addrs[0], 272, "%s", l2_cluster_slot_owner(r->admin, 0));
        return 1;
    }
    int rc = l2_cluster_refresh(r->admin);
    if (rc < 0)
        return rc;
    int n = 0;
    const char *last = NULL;
    for (unsigned s = 0; s < L2_CLUSTER_SLOTS; s++) {
        const char *o = l2_cluster_slot_owner(r->admin, s);
        if (!o || o == last)
            continue;
        last = o;
        int k;
        for (k = 0; k < n; k++)
            if (!strcmp(addrs[k], o))
                break;
        if (k == n && n < max)
            snprintf(addrs[n++], 272, "%s", o);
    }
    return n;
}

int l2_redis_list_keys(struct l2_adapter *a, const char *model, size_t page_size, const char *cursor,
                       struct l2_key_page *out)
{
    struct l2_redis *r = AS(a);
    memset(out, 0, sizeof(*out));
    if (!model || !*model || strlen(model) > L2_KEY_MODEL_MAX)
        return -EINVAL;
    if (!page_size)
        page_size = 500;
    /* Cursor: "<master index>:<SCAN cursor>". */
    unsigned long node = 0;
    unsigned long long scur = 0;
    if (cursor && *cursor && sscanf(cursor, "%lu:%llu", &node, &scur) != 2)
        return -EINVAL;
    size_t mlen = strlen(model);
    char *pat = malloc(2 * (r->prefix_len + mlen) + 8);
    char (*addrs)[272] = calloc(L2_CLUSTER_MAX_NODES, 272);
    struct l2_cluster *nc = NULL;
    int rc = -ENOMEM;
    if (!pat || !addrs)
        goto out;
    size_t pl = 0;
    if (r->prefix_len) {
        pl = glob_escape(pat, r->prefix, r->prefix_len);
        pat[pl++] = '@';
    }
    pl += glob_escape(pat + pl, model, mlen);
    memcpy(pat + pl, "@*", 3);
    pl += 2;

    pthread_mutex_lock(&r->admin_mu);
    int nm = masters_locked(r, addrs, L2_CLUSTER_MAX_NODES);
    pthread_mutex_unlock(&r->admin_mu);
    if (nm < 0) {
        rc = -ENOTCONN;
        goto out;
    }
    if (node >= (unsigned long)nm) {
        rc = -EINVAL;
        goto out;
    }
    struct l2_cluster_config cc = { .nodes = addrs[node], .username = r->username, .password = r->password,
                                    .database_id = r->cfg.cluster ? 0 : r->cfg.database_id,
                                    .connect_timeout_ms = r->cfg.connect_timeout_ms,
                                    .request_timeout_ms = r->cfg.request_timeout_ms };
    if ((rc = l2_cluster_new(&cc, &nc)) < 0)
        goto out;
    char cbuf[24], cnt[24];
    snprintf(cbuf, sizeof(cbuf), "%llu", scur);
    snprintf(cnt, sizeof(cnt), "%zu", page_size);
    const char *argv[] = { "SCAN", cbuf, "MATCH", pat, "COUNT", cnt };
    size_t lens[] = { 4, strlen(cbuf), 5, pl, 5, strlen(cnt) };
    struct l2_cluster_cmd c = { .key = "", .keylen = 0, .argc = 6, .argv = argv, .argvlen = lens };
    l2_cluster_exec(nc, &c, 1);
    redisReply *rep = c.reply;
    if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
        rep->element[0]->type != REDIS_REPLY_STRING || rep->element[1]->type != REDIS_REPLY_ARRAY) {
        rc = rep ? -EPROTO : -ENOTCONN;
        if (rep)
            freeReplyObject(rep);
        goto out;
    }
    redisReply *ks = rep->element[1];
    out->keys = calloc(ks->elements ? ks->elements : 1, sizeof(char *));
    if (!out->keys) {
        freeReplyObject(rep);
        rc = -ENOMEM;
        goto out;
    }
    size_t skip = r->prefix_len ? r->prefix_len + 1 : 0;
    for (size_t i = 0; i < ks->elements; i++) {
        redisReply *k = ks->element[i];
        struct l2_key pk;
        if (k->type != REDIS_REPLY_STRING || (size_t)k->len <= skip ||
            l2_key_parse(k->str + skip, (size_t)k->len - skip, &pk) < 0)
            continue; /* not an object key (the glob is wider than the format) */
        if (!(out->keys[out->n] = strndup(k->str + skip, (size_t)k->len - skip))) {
            freeReplyObject(rep);
            rc = -ENOMEM;
            goto out;
        }
        out->n++;
    }
    unsigned long long next = strtoull(rep->element[0]->str, NULL, 10);
    freeReplyObject(rep);
    char nb[48];
    if (next)
        snprintf(nb, sizeof(nb), "%lu:%llu", node, next);
    else if (node + 1 < (unsigned long)nm)
        snprintf(nb, sizeof(nb), "%lu:0", node + 1);
    else
        nb[0] = '\0';
    if (nb[0] && !(out->next_cursor = strdup(nb))) {
        rc = -ENOMEM;
        goto out;
    }
    rc = 0;
out:
    if (rc < 0)
        l2_key_page_free(out);
    l2_cluster_free(nc);
    free(pat);
    free(addrs);
    return rc;
}

json_t *l2_redis_status(struct l2_adapter *a)
{
    struct l2_redis *r = AS(a);
    pthread_mutex_lock(&r->qmu);
    size_t q = r->queued;
    pthread_mutex_unlock(&r->qmu);
    return json_pack("{s:b, s:s, s:s, s:i, s:i, s:I, s:I, s:I, s:I, s:I}", "is_healthy", !atomic_load(&r->down),
                     "mode", r->cfg.cluster ? "cluster" : "standalone", "nodes", r->nodes, "num_workers",
                     r->nworkers, "nodes_down", l2_cluster_health_down(&r->health), "queued_parts", (json_int_t)q,
                     "stores_dropped", (json_int_t)atomic_load(&r->stores_dropped), "lookups_refused_while_down",
                     (json_int_t)atomic_load(&r->lookups_refused), "connection_errors",
                     (json_int_t)atomic_load(&r->conn_errors), "size_mismatches",
                     (json_int_t)atomic_load(&r->size_mismatches));
}

/* ---- life cycle ------------------------------------------------------- */

static void redis_free(struct l2_redis *r)
{
    for (int i = 0; i < r->nworkers; i++)
        l2_cluster_free(r->workers[i].cl);
    l2_cluster_free(r->admin);
    pthread_mutex_destroy(&r->admin_mu);
    pthread_mutex_destroy(&r->qmu);
    pthread_cond_destroy(&r->qcv);
    l2_cluster_health_destroy(&r->health);
    free(r->nodes);
    free(r->username);
    free(r->password);
    free(r->prefix);
    l2_adapter_base_fini(&r->base);
    free(r);
}

void l2_redis_destroy(struct l2_adapter *a)
{
    struct l2_redis *r = AS(a);
    if (!r)
        return;
    pthread_mutex_lock(&r->qmu);
    r->stopping = true;
    pthread_cond_broadcast(&r->qcv);
    pthread_mutex_unlock(&r->qmu);
    for (int i = 0; i < r->nworkers; i++)
        if (r->workers[i].started)
            pthread_join(r->workers[i].th, NULL);
    /* What is still queued completes with -ECANCELED, so callers learn
     * their buffers are free. */
    struct rpart *p;
    while ((p = pop_locked(r))) {
        atomic_store(&p->t->cancelled, true);
        part_done(r, p);
    }
    redis_free(r);
}

int l2_redis_create(const struct l2_redis_config *cfg, const struct l2_ops *ops, const struct l2_create_ctx *ctx,
                    struct l2_adapter **out, char *err, size_t errlen)
{
    int rc = -ENOMEM;
    struct l2_redis *r = calloc(1, sizeof(*r));
    if (!r) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    l2_adapter_base_init(&r->base, ops, ctx);
    r->base.capacity_bytes = cfg->capacity_bytes;
    r->cfg = *cfg;
    pthread_mutex_init(&r->qmu, NULL);
    pthread_cond_init(&r->qcv, NULL);
    pthread_mutex_init(&r->admin_mu, NULL);
    l2_cluster_health_init(&r->health, r->base.name);
    atomic_init(&r->down, false);
    if (!(r->nodes = strdup(cfg->nodes ? cfg->nodes : "")) || !(r->username = strdup(cfg->username ? cfg->username : "")) ||
        !(r->password = strdup(cfg->password ? cfg->password : "")) ||
        !(r->prefix = strdup(cfg->key_prefix ? cfg->key_prefix : ""))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    r->prefix_len = strlen(r->prefix);
    snprintf(r->ttl_str, sizeof(r->ttl_str), "%llu", (unsigned long long)cfg->ttl_seconds);
    r->cfg.nodes = r->nodes;
    r->cfg.username = r->username;
    r->cfg.password = r->password;
    r->cfg.key_prefix = r->prefix;
    r->nworkers = cfg->num_workers;
    if (r->nworkers < 1 || r->nworkers > L2_REDIS_MAX_WORKERS) {
        snprintf(err, errlen, "num_workers must be in [1, %d]", L2_REDIS_MAX_WORKERS);
        rc = -EINVAL;
        r->nworkers = 0;
        goto fail;
    }
    struct l2_cluster_config cc = { .nodes = r->nodes, .cluster = cfg->cluster, .username = r->username,
                                    .password = r->password, .database_id = cfg->database_id,
                                    .connect_timeout_ms = cfg->connect_timeout_ms,
                                    .request_timeout_ms = cfg->request_timeout_ms, .health = &r->health };
    if ((rc = l2_cluster_new(&cc, &r->admin)) < 0) {
        if (rc == -EINVAL)
            snprintf(err, errlen, "bad server list '%s'%s", r->nodes,
                     cfg->cluster && cfg->database_id > 0 ? " (a cluster serves database 0 only)" : "");
        else
            snprintf(err, errlen, "out of memory");
        r->nworkers = 0;
        goto fail;
    }
    for (int i = 0; i < r->nworkers; i++) {
        r->workers[i].r = r;
        r->workers[i].idx = i;
        if ((rc = l2_cluster_new(&cc, &r->workers[i].cl)) < 0) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
    }
    for (int i = 0; i < r->nworkers; i++) {
        if ((rc = -pthread_create(&r->workers[i].th, NULL, worker_main, &r->workers[i])) < 0) {
            snprintf(err, errlen, "cannot start worker threads: %s", strerror(-rc));
            goto fail;
        }
        r->workers[i].started = true;
    }
    *out = &r->base;
    return 0;
fail:
    l2_redis_destroy(&r->base);
    return rc;
}
