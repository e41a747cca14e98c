/*
 * l2_evict: the L2EvictionController (contract in l2_tier.h). One LRU per
 * adapter that has an "eviction" object and a capacity, fed by the
 * adapter's key events (stored = most recent, accessed = touched,
 * deleted = gone); once a second, an adapter at or above its watermark
 * loses eviction_ratio of its tracked keys, least recent first.
 * Locks: lru.mu (leaf; listener callbacks take it on adapter threads).
 */
#define LOG_MODULE "lmcd.l2.evict"
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "l2/l2_tier.h"
#include "metrics/metrics.h"
#include "util/htab.h"
#include "util/log.h"

struct lnode {
    struct htab_node node;
    struct lnode *prev, *next; /* least recent at head */
    char key[];
};

struct lru {
    struct l2_adapter *a;
    const char *policy; /* "LRU" | "noop" */
    double watermark, ratio;
    bool enabled;       /* has a capacity */
    pthread_mutex_t mu;
    struct htab idx;    /* guarded by mu */
    uint64_t evicted, rounds_triggered; /* guarded by mu */
    struct lnode head;  /* sentinel, guarded by mu; last: its key[] is never used */
};

struct l2_evict {
    struct lru *v;
    size_t n;
    pthread_t th;
    bool started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stopping; /* guarded by mu */
};

static void unlink_node(struct lnode *x)
{
    x->prev->next = x->next;
    x->next->prev = x->prev;
}

static void append(struct lru *l, struct lnode *x)
{
    x->prev = l->head.prev;
    x->next = &l->head;
    l->head.prev->next = x;
    l->head.prev = x;
}

static void on_stored(void *arg, struct l2_adapter *a, const struct l2_key *k, uint64_t size)
{
    (void)a;
    (void)size;
    struct lru *l = arg;
    char key[L2_KEY_NAME_MAX];
    int kl = l2_key_format(key, sizeof(key), k);
    if (kl < 0)
        return;
    pthread_mutex_lock(&l->mu);
    struct htab_node *n = htab_find(&l->idx, key, (size_t)kl);
    struct lnode *x = n ? htab_entry(n, struct lnode, node) : NULL;
    if (x) {
        unlink_node(x);
    } else if ((x = malloc(sizeof(*x) + (size_t)kl + 1))) {
        memcpy(x->key, key, (size_t)kl + 1);
        x->node.key = x->key;
        x->node.key_len = (size_t)kl;
        if (htab_insert(&l->idx, &x->node) < 0) {
            free(x);
            x = NULL;
        }
    }
    if (x)
        append(l, x);
    pthread_mutex_unlock(&l->mu);
}

static void on_accessed(void *arg, struct l2_adapter *a, const struct l2_key *k)
{
    (void)a;
    struct lru *l = arg;
    char key[L2_KEY_NAME_MAX];
    int kl = l2_key_format(key, sizeof(key), k);
    if (kl < 0)
        return;
    pthread_mutex_lock(&l->mu);
    struct htab_node *n = htab_find(&l->idx, key, (size_t)kl);
    if (n) {
        struct lnode *x = htab_entry(n, struct lnode, node);
        unlink_node(x);
        append(l, x);
    }
    pthread_mutex_unlock(&l->mu);
}

static void on_deleted(void *arg, struct l2_adapter *a, const struct l2_key *k, uint64_t size)
{
    (void)a;
    (void)size;
    struct lru *l = arg;
    char key[L2_KEY_NAME_MAX];
    int kl = l2_key_format(key, sizeof(key), k);
    if (kl < 0)
        return;
    pthread_mutex_lock(&l->mu);
    struct htab_node *n = htab_find(&l->idx, key, (size_t)kl);
    if (n) {
        struct lnode *x = htab_entry(n, struct lnode, node);
        htab_remove(&l->idx, n);
        unlink_node(x);
        free(x);
    }
    pthread_mutex_unlock(&l->mu);
}

/* One adapter's round: returns keys deleted. */
static int lru_round(struct lru *l)
{
    if (!l->enabled || strcmp(l->policy, "LRU"))
        return 0;
    double usage = l2_usage_fraction(l->a);
    if (usage < 0 || usage < l->watermark)
        return 0;
    log_info("L2 usage %.2f above watermark %.2f; triggering eviction.", usage, l->watermark);
    pthread_mutex_lock(&l->mu);
    l->rounds_triggered++;
    size_t tracked = l->idx.count;
    size_t want = (size_t)((double)tracked * l->ratio);
    if (want < 1)
        want = 1;
    char **victims = calloc(want, sizeof(char *));
    size_t m = 0;
    for (struct lnode *x = l->head.next; victims && x != &l->head && m < want; x = x->next)
        victims[m++] = strdup(x->key);
    pthread_mutex_unlock(&l->mu);
    /* delete outside the lock: the adapter's delete notifies us back */
    struct l2_key *ks = malloc((m ? m : 1) * sizeof(*ks));
    size_t nk = 0;
    for (size_t i = 0; ks && i < m; i++)
        if (victims[i] && l2_key_parse(victims[i], strlen(victims[i]), &ks[nk]) == 0)
            nk++;
    int del = ks && nk ? l2_delete(l->a, ks, nk) : 0;
    /* lmcache_mp_l2_evicted_objects_chunks_total{cache_salt}: the total is
     * exact; l2_delete does not say which keys went, so a partial delete is
     * attributed to the leading victims' salts */
    for (size_t i = 0; del > 0 && i < nk && i < (size_t)del; i++)
        metrics_row_add(metrics_row("", 0, ks[i].salt, ks[i].salt_len), MET_ROW_L2_EVICTED_OBJECTS, 1);
    free(ks);
    for (size_t i = 0; i < m; i++)
        free(victims[i]);
    free(victims);
    pthread_mutex_lock(&l->mu);
    l->evicted += del > 0 ? (uint64_t)del : 0;
    pthread_mutex_unlock(&l->mu);
    return del > 0 ? del : 0;
}

int l2_evict_round(struct l2_evict *ev)
{
    int total = 0;
    for (size_t i = 0; ev && i < ev->n; i++)
        total += lru_round(&ev->v[i]);
    return total;
}

static void *evict_main(void *arg)
{
    struct l2_evict *ev = arg;
    pthread_mutex_lock(&ev->mu);
    while (!ev->stopping) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&ev->cv, &ev->mu, &ts);
        if (ev->stopping)
            break;
        pthread_mutex_unlock(&ev->mu);
        l2_evict_round(ev);
        pthread_mutex_lock(&ev->mu);
    }
    pthread_mutex_unlock(&ev->mu);
    return NULL;
}

int l2_evict_start(struct l2_adapter **ads, size_t n, struct l2_evict **out)
{
    struct l2_evict *ev = calloc(1, sizeof(*ev));
    if (!ev || !(ev->v = calloc(n ? n : 1, sizeof(*ev->v)))) {
        free(ev);
        return -ENOMEM;
    }
    pthread_mutex_init(&ev->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&ev->cv, &ca);
    pthread_condattr_destroy(&ca);
    for (size_t i = 0; i < n; i++) {
        struct lru *l = &ev->v[i];
        const json_t *e = ads[i]->eviction;
        l->a = ads[i];
        pthread_mutex_init(&l->mu, NULL);
        htab_init(&l->idx);
        l->head.prev = l->head.next = &l->head;
        ev->n++;
        if (!e) {
            l->policy = "none";
            continue;
        }
        l->policy = json_string_value(json_object_get(e, "eviction_policy"));
        const json_t *v = json_object_get(e, "trigger_watermark");
        l->watermark = v ? json_number_value(v) : 0.8;
        v = json_object_get(e, "eviction_ratio");
        l->ratio = v ? json_number_value(v) : 0.2;
        if (!ads[i]->capacity_bytes) {
            log_warn("L2 adapter %s is configured with '%s' eviction but does not support global eviction "
                     "(no capacity set); it is not evicted by lmcd",
                     ads[i]->name, l->policy);
            continue;
        }
        l->enabled = true;
        struct l2_listener li = { on_stored, on_accessed, on_deleted, l };
        l2_add_listener(ads[i], &li);
    }
    int rc = pthread_create(&ev->th, NULL, evict_main, ev);
    if (rc) {
        l2_evict_stop(ev);
        return -rc;
    }
    pthread_setname_np(ev->th, "l2-evict");
    ev->started = true;
    *out = ev;
    return 0;
}

void l2_evict_stop(struct l2_evict *ev)
{
    if (!ev)
        return;
    pthread_mutex_lock(&ev->mu);
    ev->stopping = true;
    pthread_cond_signal(&ev->cv);
    pthread_mutex_unlock(&ev->mu);
    if (ev->started)
        pthread_join(ev->th, NULL);
    for (size_t i = 0; i < ev->n; i++) {
        struct lru *l = &ev->v[i];
        for (struct lnode *x = l->head.next, *nx; x != &l->head; x = nx) {
            nx = x->next;
            free(x);
        }
        htab_free(&l->idx);
        pthread_mutex_destroy(&l->mu);
    }
    pthread_cond_destroy(&ev->cv);
    pthread_mutex_destroy(&ev->mu);
    free(ev->v);
    free(ev);
}

json_t *l2_evict_status(struct l2_evict *ev)
{
    json_t *arr = json_array();
    for (size_t i = 0; ev && i < ev->n; i++) {
        struct lru *l = &ev->v[i];
        struct l2_usage u;
        l2_get_usage(l->a, true, &u);
        size_t buckets = json_object_size(u.bytes_by_cache_salt);
        json_decref(u.bytes_by_cache_salt);
        pthread_mutex_lock(&l->mu);
        json_array_append_new(
            arr, json_pack("{s:s, s:s, s:b, s:f, s:f, s:f, s:I, s:I, s:I, s:I, s:I, s:I}", "adapter", l->a->name,
                           "eviction_policy", l->policy, "enabled", l->enabled, "trigger_watermark", l->watermark,
                           "eviction_ratio", l->ratio, "current_usage", l2_usage_fraction(l->a),
                           "total_bytes_used", (json_int_t)u.total_bytes_used, "total_capacity_bytes",
                           (json_int_t)u.total_capacity_bytes, "num_cache_salt_buckets", (json_int_t)buckets,
                           "tracked_keys", (json_int_t)l->idx.count, "evicted_keys", (json_int_t)l->evicted,
                           "rounds_triggered", (json_int_t)l->rounds_triggered));
        pthread_mutex_unlock(&l->mu);
    }
    return json_pack("{s:b, s:b, s:o}", "is_healthy", 1, "thread_alive", ev && ev->started, "adapters", arr);
}
