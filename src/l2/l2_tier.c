/*
 * l2_tier: StoreController and PrefetchController over the adapters
 * (contract in l2_tier.h; the eviction controller is l2_evict.c).
 *
 * Locks: t->mu guards the queues, request phases and counters below it;
 * adapter callbacks take it briefly; nothing calls into L1, an adapter or
 * the engine with it held, except l2_submit_* (which never call back
 * inside the call).
 */
#define LOG_MODULE "lmcd.l2"
#include "l2/l2_tier.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "metrics/metrics.h"
#include "util/clock.h"
#include "util/log.h"

#define MAX_ADAPTERS 16

/* LMCache's L2 families (src/metrics), counted on whichever thread runs the
 * step (controller thread or adapter callback): per-thread shards, no lock.
 * Adapters past MET_MAX_L2 count only in the unlabelled families. */
static void met_l2_add(unsigned base, size_t a)
{
    if (a < MET_MAX_L2)
        metrics_add(base + (unsigned)a, 1);
}
static void met_l2_gbps(unsigned base, size_t a, uint64_t bytes, uint64_t t0)
{
    uint64_t ns = clock_mono_ns() - t0;
    if (a < MET_MAX_L2 && bytes)
        metrics_observe(base + (unsigned)a, (double)bytes / (double)(ns ? ns : 1)); /* bytes/ns = GB/s */
}

enum kstate { K_NONE, K_LOADING, K_LOADED, K_FAILED, K_EXISTS };
enum phase { P_QUEUED, P_LOOKUP, P_LOAD, P_DONE };

struct sjob;
struct sctx { /* one adapter's store task of a job */
    struct sjob *j;
    size_t a;
};

struct sjob {
    struct sctx cbs[MAX_ADAPTERS];
    uint64_t t0;         /* submit time (throughput) */
    uint64_t bytes;      /* payload of the read-locked keys */
    struct sjob *next;   /* queue link, then in-flight list link (guarded by t->mu) */
    struct l2_tier *t;
    size_t n, nl;
    struct l1_key *keys;
    struct l1_ref *refs;
    uint32_t *holders;   /* read holders taken per key, renewals included (guarded by t->mu) */
    struct l2_key *lk;
    struct iovec *iov;
    atomic_int pending;
    atomic_bool all_ok;
    uint64_t gen;        /* l1_check() before the adapters were handed L1 addresses */
    char *model, *salt;
    size_t ml, sl;
};

struct preq {
    struct preq *next;   /* queue / ready / active list link (guarded by t->mu) */
    struct l2_tier *t;
    struct l2_prefetch_req r; /* keys and strings owned */
    enum phase phase;    /* guarded by t->mu */
    bool queued_ready;   /* on t->ready (guarded by t->mu) */
    int lookups_left;    /* guarded by t->mu */
    int loads_left;      /* load tasks not called back (guarded by t->mu) */
    bool answered[MAX_ADAPTERS];
    uint8_t *found;      /* [nads][n] */
    int8_t *src;
    enum kstate *st;     /* guarded by t->mu once loads are out */
    struct l1_ref *res;
    struct l2_key *lk;
    uint64_t deadline_ns;
};

struct lctx { /* one lookup task */
    struct preq *p;
    int a;
};

struct dctx { /* one load task */
    struct preq *p;
    int a;
    uint64_t t0;
    size_t n;
    size_t idx[];
};

struct l2_tier {
    struct l1 *l1;
    struct l2_adapter *ads[MAX_ADAPTERS];
    size_t nads;
    bool skip_l1;
    int max_in_flight;
    uint64_t timeout_ns, renew_ns;
    uint64_t writer;
    size_t store_max_pending;
    int store_max_tasks;
    struct l2_evict *ev;

    pthread_mutex_t mu;
    pthread_cond_t store_cv, pf_cv;
    bool stopping;
    /* store controller (guarded by mu) */
    struct sjob *sq_head, *sq_tail;
    struct sjob *st_inflight; /* read-locked jobs whose adapters are still reading */
    struct sjob *st_purge;    /* finished jobs whose L1 was truncated while read: delete from L2 */
    uint64_t store_renew_ns;
    size_t pending_keys;
    int store_tasks;
    pthread_t store_th, pf_th;
    bool store_started, pf_started;
    /* prefetch controller (guarded by mu) */
    struct preq *pq_head, *pq_tail; /* submitted, not started */
    struct preq *ready;             /* lookup or loads answered: the thread acts */
    struct preq *active;            /* in LOOKUP / LOAD, or DONE with loads out (zombies) */
    size_t n_queued, n_active, n_lookup, n_load, n_zombie;
    /* counters (guarded by mu) */
    uint64_t st_submitted_keys, st_dropped_keys, st_stored_keys, st_failed_tasks, st_skipped_keys, st_purged_keys;
    uint64_t pf_requests, pf_lookup_hits, pf_loaded, pf_timeouts, pf_completed;
};

static void wake_store(struct l2_tier *t) { pthread_cond_signal(&t->store_cv); }

/* Waits on cv (a CLOCK_MONOTONIC condvar) until signalled or clock_mono_ns() reaches deadline. */
static void wait_until(pthread_cond_t *cv, pthread_mutex_t *mu, uint64_t deadline_ns)
{
    struct timespec ts = { (time_t)(deadline_ns / 1000000000ull), (long)(deadline_ns % 1000000000ull) };
    pthread_cond_timedwait(cv, mu, &ts);
}

/* ================================================================ store */

static void sjob_free(struct sjob *j)
{
    if (!j)
        return;
    free(j->keys);
    free(j->refs);
    free(j->holders);
    free(j->lk);
    free(j->iov);
    free(j->model);
    free(j);
}

/* Every adapter has finished reading j's L1 bytes. If the segment was
 * truncated meanwhile (another process; docs/l1.md), what they stored may
 * be zeros: the job goes to the store thread, which deletes its keys from
 * every adapter (delete is synchronous and may block: never from an
 * adapter's callback). */
static void sjob_finish(struct sjob *j)
{
    struct l2_tier *t = j->t;
    bool torn = l1_check(t->l1) != j->gen;
    pthread_mutex_lock(&t->mu);
    for (struct sjob **pp = &t->st_inflight; *pp; pp = &(*pp)->next)
        if (*pp == j) {
            *pp = j->next;
            break;
        }
    pthread_mutex_unlock(&t->mu);
    for (size_t i = 0; i < j->nl; i++) /* no renewal can run now: it is off the list */
        l1_unlock_refs(t->l1, &j->keys[i], &j->refs[i], 1, j->holders[i]);
    if (torn) {
        pthread_mutex_lock(&t->mu);
        bool queued = !t->stopping;
        if (queued) {
            j->next = t->st_purge;
            t->st_purge = j;
            wake_store(t);
        }
        pthread_mutex_unlock(&t->mu);
        if (queued)
            return;
        log_warn("L2 StoreController: L1 truncated while %zu keys were being stored during shutdown; "
                    "they may hold zeros in L2",
                    j->nl);
        sjob_free(j);
        return;
    }
    if (t->skip_l1 && atomic_load(&j->all_ok)) {
        uint64_t *ids = malloc(j->nl * sizeof(*ids));
        if (ids) {
            for (size_t i = 0; i < j->nl; i++)
                ids[i] = j->refs[i].id;
            l1_remove(t->l1, j->keys, ids, j->nl, false);
            free(ids);
        }
    }
    sjob_free(j);
}

static void store_done(void *arg, const struct l2_result *r)
{
    struct sctx *sc = arg;
    struct sjob *j = sc->j;
    struct l2_tier *t = j->t;
    met_l2_add(MET_L2_STORE_COMPLETED, sc->a);
    if (r->rc >= 0) {
        size_t stored = 0;
        for (size_t i = 0; i < r->n; i++)
            stored += !r->ok || r->ok[i];
        metrics_row_add(metrics_row(j->model, j->ml, j->salt, j->sl), MET_ROW_L2_STORE_COMPLETED_OBJECTS, stored);
        met_l2_gbps(MET_H_L2_STORE_THROUGHPUT, sc->a, r->bytes ? r->bytes : j->bytes, j->t0);
    }
    if (r->rc < 0)
        atomic_store(&j->all_ok, false);
    pthread_mutex_lock(&t->mu);
    t->store_tasks--;
    if (r->rc < 0)
        t->st_failed_tasks++;
    else
        t->st_stored_keys += r->n;
    wake_store(t);
    pthread_mutex_unlock(&t->mu);
    if (atomic_fetch_sub(&j->pending, 1) == 1)
        sjob_finish(j);
}

void l2_tier_stored(struct l2_tier *t, const char *model, size_t model_len, const char *salt, size_t salt_len,
                    const struct l1_key *keys, size_t n)
{
    if (!t || !n)
        return;
    struct sjob *j = calloc(1, sizeof(*j));
    if (j) {
        j->t = t;
        j->n = n;
        j->ml = model_len;
        j->sl = salt_len;
        j->keys = malloc(n * sizeof(*keys));
        j->model = malloc(model_len + salt_len + 2);
    }
    if (!j || !j->keys || !j->model) {
        sjob_free(j);
        pthread_mutex_lock(&t->mu);
        t->st_dropped_keys += n;
        pthread_mutex_unlock(&t->mu);
        return;
    }
    memcpy(j->keys, keys, n * sizeof(*keys));
    memcpy(j->model, model, model_len);
    j->model[model_len] = 0;
    j->salt = j->model + model_len + 1;
    if (salt_len)
        memcpy(j->salt, salt, salt_len);
    j->salt[salt_len] = 0;
    static struct log_ratelimit rl = LOG_RATELIMIT_INIT(60000, 3);
    pthread_mutex_lock(&t->mu);
    bool drop = t->stopping || t->pending_keys + n > t->store_max_pending;
    if (drop) {
        t->st_dropped_keys += n;
    } else {
        t->pending_keys += n;
        t->st_submitted_keys += n;
        if (t->sq_tail)
            t->sq_tail->next = j;
        else
            t->sq_head = j;
        t->sq_tail = j;
        wake_store(t);
    }
    pthread_mutex_unlock(&t->mu);
    if (drop) {
        log_rl(&rl, LOG_WARNING, "L2 StoreController: %zu keys dropped (%zu pending, bound %zu)", n, t->pending_keys,
               t->store_max_pending);
        sjob_free(j);
    }
}

/* Read-locks what is still in L1 and submits one task per adapter. */
static void store_submit(struct l2_tier *t, struct sjob *j)
{
    j->refs = malloc(j->n * sizeof(*j->refs));
    j->holders = malloc(j->n * sizeof(*j->holders));
    j->lk = malloc(j->n * sizeof(*j->lk));
    j->iov = malloc(j->n * sizeof(*j->iov));
    if (!j->refs || !j->holders || !j->lk || !j->iov) {
        pthread_mutex_lock(&t->mu);
        t->st_dropped_keys += j->n;
        pthread_mutex_unlock(&t->mu);
        sjob_free(j);
        return;
    }
    /* Before any address is handed out: a truncation already done is
     * noticed here (its objects are dropped, so not locked below). */
    j->gen = l1_check(t->l1);
    uint8_t *base = l1_base(t->l1);
    size_t nl = 0;
    for (size_t i = 0; i < j->n; i++) {
        if (l1_lock(t->l1, &j->keys[i], 1, 1, &j->refs[nl]) < 0)
            continue; /* evicted or cleared meanwhile */
        j->keys[nl] = j->keys[i];
        j->holders[nl] = 1;
        struct l2_key *k = &j->lk[nl];
        k->model = j->model;
        k->model_len = j->ml;
        k->salt = j->salt;
        k->salt_len = j->sl;
        k->kv_rank = j->keys[i].kv_rank;
        k->group = j->keys[i].group;
        memcpy(k->hash, j->keys[i].chunk_hash, 32);
        j->iov[nl].iov_base = base + j->refs[nl].offset;
        j->iov[nl].iov_len = j->refs[nl].length;
        j->bytes += j->refs[nl].length;
        nl++;
    }
    j->nl = nl;
    if (!nl) {
        pthread_mutex_lock(&t->mu);
        t->st_skipped_keys += j->n;
        pthread_mutex_unlock(&t->mu);
        sjob_free(j);
        return;
    }
    atomic_init(&j->all_ok, true);
    atomic_init(&j->pending, (int)t->nads + 1); /* +1: ours until every submit is made */
    pthread_mutex_lock(&t->mu);
    t->store_tasks += (int)t->nads;
    j->next = t->st_inflight;
    t->st_inflight = j;
    pthread_mutex_unlock(&t->mu);
    struct met_row *mr = metrics_row(j->model, j->ml, j->salt, j->sl);
    j->t0 = clock_mono_ns();
    for (size_t a = 0; a < t->nads; a++) {
        /* one store request per adapter: submitted = sum of completed{l2_name} once they land */
        metrics_add(MET_L2_STORE_SUBMITTED, 1);
        metrics_row_add(mr, MET_ROW_L2_STORE_SUBMITTED_OBJECTS, nl);
        j->cbs[a] = (struct sctx){ j, a };
        struct l2_cb cb = { store_done, &j->cbs[a] };
        int rc = l2_submit_store(t->ads[a], j->lk, j->iov, nl, &cb, NULL);
        if (rc < 0) {
            struct l2_result r = { 0, rc, nl, NULL, 0 };
            store_done(&j->cbs[a], &r);
        }
    }
    if (atomic_fetch_sub(&j->pending, 1) == 1)
        sjob_finish(j);
}

/* Under mu: a read lock lasts read_ttl; an adapter still reading a buffer
 * near then (a stalled disk or Redis) gets it extended, so L1 never evicts
 * what is being stored. One more holder per renewal, all released at the end. */
static void store_renew_locked(struct l2_tier *t)
{
    for (struct sjob *j = t->st_inflight; j; j = j->next)
        for (size_t i = 0; i < j->nl; i++) {
            struct l1_ref r;
            if (l1_lock(t->l1, &j->keys[i], 1, 1, &r) == 0) {
                if (r.id == j->refs[i].id && r.lock_epoch == j->refs[i].lock_epoch)
                    j->holders[i]++;
                else /* another object, or our holders lapsed: not ours to keep */
                    l1_unlock_refs(t->l1, &j->keys[i], &r, 1, 1);
            }
        }
}

static void *store_main(void *arg)
{
    struct l2_tier *t = arg;
    uint64_t next_renew = clock_mono_ns() + t->store_renew_ns;
    pthread_mutex_lock(&t->mu);
    for (;;) {
        for (;;) {
            uint64_t now = clock_mono_ns();
            if (now >= next_renew) {
                store_renew_locked(t);
                next_renew = now + t->store_renew_ns;
            }
            if (t->stopping || t->st_purge || (t->sq_head && t->store_tasks < t->store_max_tasks))
                break;
            wait_until(&t->store_cv, &t->mu, next_renew);
        }
        if (t->stopping)
            break;
        if (t->st_purge) {
            struct sjob *pj = t->st_purge;
            t->st_purge = pj->next;
            pthread_mutex_unlock(&t->mu);
            for (size_t a = 0; a < t->nads; a++)
                l2_delete(t->ads[a], pj->lk, pj->nl);
            log_warn("L2 StoreController: L1 truncated while %zu keys were being stored; deleted them from L2",
                        pj->nl);
            pthread_mutex_lock(&t->mu);
            t->st_purged_keys += pj->nl;
            pthread_mutex_unlock(&t->mu);
            sjob_free(pj);
            pthread_mutex_lock(&t->mu);
            continue;
        }
        struct sjob *j = t->sq_head;
        t->sq_head = j->next;
        if (!t->sq_head)
            t->sq_tail = NULL;
        j->next = NULL;
        t->pending_keys -= j->n;
        pthread_mutex_unlock(&t->mu);
        store_submit(t, j);
        pthread_mutex_lock(&t->mu);
    }
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

/* ============================================================= prefetch */

static void preq_free(struct preq *p)
{
    free((void *)p->r.keys);
    free((void *)p->r.model);
    free(p->found);
    free(p->src);
    free(p->st);
    free(p->res);
    free(p->lk);
    free(p);
}

static void list_remove(struct preq **head, struct preq *p)
{
    for (struct preq **pp = head; *pp; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            p->next = NULL;
            return;
        }
}

/* Under mu: hands p to the thread. */
static void make_ready_locked(struct l2_tier *t, struct preq *p)
{
    if (p->queued_ready)
        return;
    list_remove(&t->active, p);
    p->queued_ready = true;
    p->next = t->ready;
    t->ready = p;
    pthread_cond_signal(&t->pf_cv);
}

static void lookup_done(void *arg, const struct l2_result *r)
{
    struct lctx *c = arg;
    struct preq *p = c->p;
    struct l2_tier *t = p->t;
    size_t n = p->r.n;
    pthread_mutex_lock(&t->mu);
    bool late = p->phase != P_LOOKUP;
    if (!late) {
        for (size_t i = 0; i < n; i++)
            p->found[(size_t)c->a * n + i] = r->rc == 0 && (r->ok ? r->ok[i] : 1);
        p->answered[c->a] = true;
        if (--p->lookups_left == 0)
            make_ready_locked(t, p);
    }
    pthread_mutex_unlock(&t->mu);
    if (late && r->rc == 0) {
        /* the request moved on without this adapter (deadline): let go of what it locked */
        struct l2_key *ks = malloc(n * sizeof(*ks));
        size_t m = 0;
        for (size_t i = 0; ks && i < n; i++)
            if (!r->ok || r->ok[i])
                ks[m++] = p->lk[i];
        if (m)
            l2_unlock(t->ads[c->a], ks, m);
        free(ks);
    }
    pthread_mutex_lock(&t->mu);
    if (late && --p->lookups_left == 0 && p->phase == P_DONE && p->loads_left == 0) {
        list_remove(&t->active, p);
        t->n_zombie--;
        pthread_mutex_unlock(&t->mu);
        preq_free(p);
    } else {
        pthread_mutex_unlock(&t->mu);
    }
    free(c);
}

static void load_done(void *arg, const struct l2_result *r)
{
    struct dctx *c = arg;
    struct preq *p = c->p;
    struct l2_tier *t = p->t;
    size_t loaded = 0;
    for (size_t i = 0; i < c->n; i++)
        loaded += r->rc == 0 && (r->ok ? r->ok[i] : 1);
    met_l2_add(MET_L2_LOAD_COMPLETED, (size_t)c->a);
    if (loaded)
        met_l2_gbps(MET_H_L2_LOAD_THROUGHPUT, (size_t)c->a, r->bytes ? r->bytes : loaded * p->r.obj_size, c->t0);
    if (loaded < c->n) /* L2 said present at lookup, then could not give it */
        metrics_add(MET_L2_PREFETCH_FAILURE + 1, c->n - loaded);
    pthread_mutex_lock(&t->mu);
    for (size_t i = 0; i < c->n; i++)
        p->st[c->idx[i]] = r->rc == 0 && (r->ok ? r->ok[i] : 1) ? K_LOADED : K_FAILED;
    bool done_already = p->phase == P_DONE;
    p->loads_left--;
    if (!done_already && p->loads_left == 0)
        make_ready_locked(t, p);
    pthread_mutex_unlock(&t->mu);
    if (done_already) {
        /* finished at its deadline: these buffers were kept for us; free them now */
        size_t n = p->r.n;
        for (size_t i = 0; i < c->n; i++) {
            size_t j = c->idx[i];
            l1_abort(t->l1, &p->r.keys[j], &p->res[j].id, 1, t->writer);
            if (p->found[(size_t)c->a * n + j]) {
                p->found[(size_t)c->a * n + j] = 0;
                l2_unlock(t->ads[c->a], &p->lk[j], 1);
            }
        }
        pthread_mutex_lock(&t->mu);
        bool last = p->loads_left == 0 && p->lookups_left == 0;
        if (last) {
            list_remove(&t->active, p);
            t->n_zombie--;
        }
        pthread_mutex_unlock(&t->mu);
        if (last)
            preq_free(p);
    }
    free(c);
}

int l2_tier_prefetch(struct l2_tier *t, const struct l2_prefetch_req *r)
{
    if (!t)
        return -ENOENT;
    if (!r->n || !r->world || r->n % r->world || !r->obj_size || !r->on_done)
        return -EINVAL;
    size_t n = r->n;
    struct preq *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->t = t;
    p->r = *r;
    char *strs = malloc(r->model_len + r->salt_len + 2);
    struct l1_key *keys = malloc(n * sizeof(*keys));
    p->found = calloc(t->nads * n, 1);
    p->src = malloc(n);
    p->st = calloc(n, sizeof(*p->st));
    p->res = calloc(n, sizeof(*p->res));
    p->lk = malloc(n * sizeof(*p->lk));
    p->r.keys = keys;
    p->r.model = strs;
    if (!strs || !keys || !p->found || !p->src || !p->st || !p->res || !p->lk) {
        preq_free(p);
        return -ENOMEM;
    }
    memcpy(strs, r->model, r->model_len);
    strs[r->model_len] = 0;
    memcpy(strs + r->model_len + 1, r->salt ? r->salt : "", r->salt_len);
    strs[r->model_len + 1 + r->salt_len] = 0;
    p->r.salt = strs + r->model_len + 1;
    memcpy(keys, r->keys, n * sizeof(*keys));
    for (size_t i = 0; i < n; i++) {
        struct l2_key *k = &p->lk[i];
        k->model = p->r.model;
        k->model_len = r->model_len;
        k->salt = p->r.salt;
        k->salt_len = r->salt_len;
        k->kv_rank = keys[i].kv_rank;
        k->group = keys[i].group;
        memcpy(k->hash, keys[i].chunk_hash, 32);
    }
    pthread_mutex_lock(&t->mu);
    if (t->stopping) {
        pthread_mutex_unlock(&t->mu);
        preq_free(p);
        return -ESHUTDOWN;
    }
    p->phase = P_QUEUED;
    if (t->pq_tail)
        t->pq_tail->next = p;
    else
        t->pq_head = p;
    t->pq_tail = p;
    t->n_queued++;
    t->pf_requests++;
    pthread_cond_signal(&t->pf_cv);
    pthread_mutex_unlock(&t->mu);
    log_debug("Prefetch request submitted: %zu keys remaining for L2", n);
    return 0;
}

/* Thread: sends a queued request's lookups (mu not held). */
static void pf_start(struct l2_tier *t, struct preq *p)
{
    p->deadline_ns = clock_mono_ns() + t->timeout_ns;
    metrics_add(MET_L2_PREFETCH_LOOKUP, 1);
    metrics_row_add(metrics_row(p->r.model, p->r.model_len, p->r.salt, p->r.salt_len),
                    MET_ROW_L2_PREFETCH_LOOKUP_OBJECTS, p->r.n);
    pthread_mutex_lock(&t->mu);
    p->phase = P_LOOKUP;
    p->lookups_left = (int)t->nads;
    p->next = t->active;
    t->active = p;
    t->n_lookup++;
    pthread_mutex_unlock(&t->mu);
    for (size_t a = 0; a < t->nads; a++) {
        struct lctx *c = malloc(sizeof(*c));
        int rc = -ENOMEM;
        if (c) {
            c->p = p;
            c->a = (int)a;
            struct l2_cb cb = { lookup_done, c };
            rc = l2_submit_lookup(t->ads[a], p->lk, p->r.n, &cb, NULL);
        }
        if (rc < 0) {
            free(c);
            pthread_mutex_lock(&t->mu);
            p->answered[a] = true; /* all miss */
            if (--p->lookups_left == 0)
                make_ready_locked(t, p);
            pthread_mutex_unlock(&t->mu);
        }
    }
}

/* Unlocks, per adapter, the planned keys [from, n) it holds for p; with st,
 * only those not still loading in that snapshot (their callback unlocks them). */
static void unlock_adapters(struct l2_tier *t, struct preq *p, size_t from, const enum kstate *st)
{
    size_t n = p->r.n;
    struct l2_key *ks = malloc((n ? n : 1) * sizeof(*ks));
    if (!ks)
        return; /* an adapter lock only delays that adapter's own eviction */
    for (size_t a = 0; a < t->nads; a++) {
        size_t m = 0;
        for (size_t i = from; i < n; i++)
            if (p->found[a * n + i] && (!st || st[i] != K_LOADING)) {
                ks[m++] = p->lk[i];
                p->found[a * n + i] = 0;
            }
        if (m)
            l2_unlock(t->ads[a], ks, m);
    }
    free(ks);
}

/* Chunks of p whose every shard satisfies `ok`. */
static size_t prefix_chunks(const struct preq *p, size_t limit, bool (*ok)(const struct preq *, size_t))
{
    size_t w = p->r.world, c = 0;
    for (; (c + 1) * w <= limit; c++)
        for (size_t s = 0; s < w; s++)
            if (!ok(p, c * w + s))
                return c;
    return c;
}

static bool has_src(const struct preq *p, size_t i) { return p->src[i] >= 0; }
static bool reserved_or_exists(const struct preq *p, size_t i)
{
    return p->st[i] == K_LOADING || p->st[i] == K_EXISTS;
}
static bool loaded_or_exists(const struct preq *p, size_t i)
{
    return p->st[i] == K_LOADED || p->st[i] == K_EXISTS;
}

static void pf_finish(struct l2_tier *t, struct preq *p, bool timed_out);

/* Thread: all adapters answered the lookup (or the deadline passed). */
static void pf_plan_and_load(struct l2_tier *t, struct preq *p)
{
    size_t n = p->r.n, w = p->r.world;
    for (size_t i = 0; i < n; i++) {
        p->src[i] = -1;
        for (size_t a = 0; a < t->nads; a++)
            if (p->found[a * n + i]) {
                p->src[i] = (int8_t)a;
                break;
            }
    }
    size_t chunks = prefix_chunks(p, n, has_src);
    /* adapters keep only the keys they will serve */
    for (size_t a = 0; a < t->nads; a++)
        for (size_t i = 0; i < n; i++)
            if (p->found[a * n + i] && (i >= chunks * w || p->src[i] != (int8_t)a)) {
                l2_unlock(t->ads[a], &p->lk[i], 1);
                p->found[a * n + i] = 0;
            }
    pthread_mutex_lock(&t->mu);
    t->pf_lookup_hits += chunks;
    pthread_mutex_unlock(&t->mu);
    metrics_add(MET_L2_PREFETCH_HIT, chunks);
    if (p->r.on_lookup)
        p->r.on_lookup(p->r.arg, chunks);
    size_t plan = chunks * w;
    if (plan) {
        uint64_t *sizes = malloc(plan * sizeof(*sizes));
        enum l1_status *rst = malloc(plan * sizeof(*rst));
        if (sizes && rst) {
            for (size_t i = 0; i < plan; i++)
                sizes[i] = p->r.obj_size;
            l1_reserve_write(t->l1, p->r.keys, sizes, plan, t->writer, rst, p->res);
            for (size_t i = 0; i < plan; i++) {
                if (rst[i] == L1_OK && l1_back(t->l1, &p->res[i]) == 0) {
                    p->st[i] = K_LOADING;
                } else if (rst[i] == L1_OK) {
                    l1_abort(t->l1, &p->r.keys[i], &p->res[i].id, 1, t->writer);
                    p->st[i] = K_FAILED;
                } else {
                    memset(&p->res[i], 0, sizeof(p->res[i])); /* only L1_OK refs are meaningful */
                    p->st[i] = rst[i] == L1_EXISTS ? K_EXISTS : K_FAILED;
                }
                if (p->st[i] == K_FAILED) /* found in L2, no L1 buffer for it */
                    metrics_add(MET_L2_PREFETCH_FAILURE + 0, 1);
            }
        } else if (plan) {
            metrics_add(MET_L2_PREFETCH_FAILURE + 0, plan);
        }
        free(sizes);
        free(rst);
    }
    /* re-trim to what got buffers; drop reservations past it */
    size_t got = prefix_chunks(p, plan, reserved_or_exists);
    for (size_t i = got * w; i < plan; i++)
        if (p->st[i] == K_LOADING) {
            l1_abort(t->l1, &p->r.keys[i], &p->res[i].id, 1, t->writer);
            p->st[i] = K_FAILED;
        }
    unlock_adapters(t, p, got * w, NULL);
    for (size_t i = 0; i < got * w; i++) /* already in L1: the adapter's copy is not needed */
        if (p->st[i] == K_EXISTS && p->src[i] >= 0 && p->found[(size_t)p->src[i] * n + i]) {
            l2_unlock(t->ads[(size_t)p->src[i]], &p->lk[i], 1);
            p->found[(size_t)p->src[i] * n + i] = 0;
        }
    /* one load task per adapter, built before any is submitted: once one is
     * out, its callback may change p->st (under mu) */
    uint8_t *base = l1_base(t->l1);
    struct dctx *ctxs[MAX_ADAPTERS] = { 0 };
    int tasks = 0;
    for (size_t a = 0; a < t->nads; a++) {
        size_t m = 0;
        for (size_t i = 0; i < got * w; i++)
            m += p->st[i] == K_LOADING && p->src[i] == (int8_t)a;
        if (!m)
            continue;
        struct dctx *c = malloc(sizeof(*c) + m * sizeof(size_t));
        if (c)
            c->n = 0;
        for (size_t i = 0; i < got * w; i++) {
            if (p->st[i] != K_LOADING || p->src[i] != (int8_t)a)
                continue;
            if (!c) { /* no memory for the task: these keys fail */
                l1_abort(t->l1, &p->r.keys[i], &p->res[i].id, 1, t->writer);
                p->st[i] = K_FAILED;
                continue;
            }
            c->idx[c->n++] = i;
        }
        if (c) {
            c->p = p;
            c->a = (int)a;
            c->t0 = 0;
            ctxs[a] = c;
            tasks++;
        }
    }
    pthread_mutex_lock(&t->mu);
    p->loads_left = tasks + 1; /* +1: ours until every submit is made */
    pthread_mutex_unlock(&t->mu);
    for (size_t a = 0; a < t->nads; a++) {
        struct dctx *c = ctxs[a];
        if (!c)
            continue;
        struct iovec *iov = malloc(c->n * sizeof(*iov));
        struct l2_key *ks = malloc(c->n * sizeof(*ks));
        int rc = -ENOMEM;
        if (iov && ks) {
            for (size_t j = 0; j < c->n; j++) {
                size_t i = c->idx[j];
                ks[j] = p->lk[i];
                iov[j].iov_base = base + p->res[i].offset;
                iov[j].iov_len = p->r.obj_size;
            }
            metrics_add(MET_L2_PREFETCH_LOAD_SUBMITTED, 1);
            metrics_row_add(metrics_row(p->r.model, p->r.model_len, p->r.salt, p->r.salt_len),
                            MET_ROW_L2_PREFETCH_LOAD_SUBMITTED_OBJECTS, c->n);
            c->t0 = clock_mono_ns();
            struct l2_cb cb = { load_done, c };
            rc = l2_submit_load(t->ads[a], ks, iov, c->n, &cb, NULL);
        }
        free(iov);
        free(ks);
        if (rc < 0) {
            struct l2_result r = { 0, rc, c->n, NULL, 0 };
            load_done(c, &r);
        }
    }
    pthread_mutex_lock(&t->mu);
    bool now = --p->loads_left == 0;
    if (!now) {
        p->next = t->active;
        t->active = p;
    }
    pthread_mutex_unlock(&t->mu);
    if (now)
        pf_finish(t, p, false);
}

/* Thread: publishes and read-locks the loaded prefix, answers the engine.
 * Loads still out (deadline) keep their reservations until their callback. */
static void pf_finish(struct l2_tier *t, struct preq *p, bool timed_out)
{
    size_t n = p->r.n, w = p->r.world;
    pthread_mutex_lock(&t->mu);
    enum kstate *st = malloc((n ? n : 1) * sizeof(*st));
    if (st)
        memcpy(st, p->st, n * sizeof(*st));
    p->phase = P_DONE;
    t->n_load--;
    t->n_active--;
    if (timed_out)
        t->pf_timeouts++;
    pthread_mutex_unlock(&t->mu);
    size_t chunks = 0;
    if (st) {
        struct preq view = *p;
        view.st = st;
        chunks = prefix_chunks(&view, n, loaded_or_exists);
    }
    size_t keep = chunks * w, published = 0;
    /* publish the loaded prefix, drop loaded objects past it */
    for (size_t i = 0; st && i < n; i++) {
        if (st[i] == K_LOADED && i < keep) {
            enum l1_status ps = L1_NOTFOUND;
            l1_publish(t->l1, &p->r.keys[i], &p->res[i].id, 1, t->writer, &ps);
            published += ps == L1_OK;
            if (ps != L1_OK && (i / w) * w < keep)
                keep = (i / w) * w; /* expired or cleared: the prefix ends before this chunk */
        } else if (st[i] == K_LOADED || st[i] == K_FAILED) {
            if (p->res[i].id)
                l1_abort(t->l1, &p->r.keys[i], &p->res[i].id, 1, t->writer);
        }
    }
    if (st)
        unlock_adapters(t, p, 0, st);
    struct l1_ref *refs = malloc((keep ? keep : 1) * sizeof(*refs));
    size_t locked = 0;
    if (refs && keep) {
        int l = l1_lock_prefix(t->l1, p->r.keys, keep, p->r.readers, refs);
        locked = l > 0 ? (size_t)l : 0;
        size_t whole = locked / w * w;
        if (whole < locked)
            l1_unlock_refs(t->l1, &p->r.keys[whole], &refs[whole], locked - whole, p->r.readers);
        locked = whole;
    }
    free(st);
    if (published) /* objects (keys) that came from L2 into L1 */
        metrics_row_add(metrics_row(p->r.model, p->r.model_len, p->r.salt, p->r.salt_len),
                        MET_ROW_L2_PREFETCH_LOAD_COMPLETED, published);
    pthread_mutex_lock(&t->mu);
    t->pf_loaded += locked / w;
    t->pf_completed++;
    bool zombie = p->loads_left > 0 || p->lookups_left > 0;
    if (zombie) {
        p->next = t->active;
        t->active = p;
        t->n_zombie++;
    }
    pthread_mutex_unlock(&t->mu);
    log_debug("Prefetch request completed (L1+L2): %zu/%zu L2 chunks loaded%s", locked / w, n / w,
              timed_out ? " (load deadline passed)" : "");
    p->r.on_done(p->r.arg, p->r.keys, refs, locked);
    free(refs);
    if (!zombie)
        preq_free(p);
}

/* Under mu: renews reservations adapters are still loading into. */
static void renew_locked(struct l2_tier *t, struct preq *p)
{
    for (size_t i = 0; i < p->r.n; i++)
        if (p->st[i] == K_LOADING)
            l1_renew(t->l1, &p->r.keys[i], &p->res[i].id, 1, t->writer);
}

static void *pf_main(void *arg)
{
    struct l2_tier *t = arg;
    uint64_t next_renew = clock_mono_ns() + t->renew_ns;
    pthread_mutex_lock(&t->mu);
    while (!t->stopping) {
        /* admit */
        if (t->pq_head && t->n_active < (size_t)t->max_in_flight) {
            struct preq *p = t->pq_head;
            t->pq_head = p->next;
            if (!t->pq_head)
                t->pq_tail = NULL;
            p->next = NULL;
            t->n_queued--;
            t->n_active++;
            pthread_mutex_unlock(&t->mu);
            pf_start(t, p);
            pthread_mutex_lock(&t->mu);
            continue;
        }
        if (t->ready) {
            struct preq *p = t->ready;
            t->ready = p->next;
            p->next = NULL;
            p->queued_ready = false;
            enum phase ph = p->phase;
            if (ph == P_LOOKUP) {
                p->phase = P_LOAD;
                t->n_lookup--;
                t->n_load++;
            }
            pthread_mutex_unlock(&t->mu);
            if (ph == P_LOOKUP)
                pf_plan_and_load(t, p);
            else if (ph == P_LOAD)
                pf_finish(t, p, false);
            pthread_mutex_lock(&t->mu);
            continue;
        }
        /* deadlines */
        uint64_t now = clock_mono_ns(), wake = now + 1000000000ull;
        struct preq *late = NULL;
        for (struct preq *p = t->active; p; p = p->next) {
            if (p->phase == P_DONE)
                continue;
            if (p->deadline_ns <= now) {
                late = p;
                break;
            }
            if (p->deadline_ns < wake)
                wake = p->deadline_ns;
        }
        if (late) {
            list_remove(&t->active, late);
            enum phase ph = late->phase;
            if (ph == P_LOOKUP) {
                /* adapters that did not answer count as all-miss; a late answer only unlocks */
                late->phase = P_LOAD;
                t->n_lookup--;
                t->n_load++;
                t->pf_timeouts++;
            }
            pthread_mutex_unlock(&t->mu);
            if (ph == P_LOOKUP)
                pf_plan_and_load(t, late);
            else
                pf_finish(t, late, true);
            pthread_mutex_lock(&t->mu);
            continue;
        }
        if (now >= next_renew) {
            for (struct preq *p = t->active; p; p = p->next)
                renew_locked(t, p);
            next_renew = now + t->renew_ns;
        }
        if (next_renew < wake)
            wake = next_renew;
        wait_until(&t->pf_cv, &t->mu, wake);
    }
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

/* ============================================================ life cycle */

size_t l2_tier_count(const struct l2_tier *t) { return t ? t->nads : 0; }
struct l2_adapter *l2_tier_adapter(struct l2_tier *t, size_t i) { return t && i < t->nads ? t->ads[i] : NULL; }

int l2_tier_create(const struct l2_tier_opts *o, struct l2_tier **out)
{
    *out = NULL;
    size_t n = json_array_size(o->adapters);
    if (!n)
        return 0;
    if (n > MAX_ADAPTERS) {
        log_error("at most %d --l2-adapter are served (%zu given)", MAX_ADAPTERS, n);
        return -EINVAL;
    }
    struct l2_tier *t = calloc(1, sizeof(*t));
    if (!t)
        return -ENOMEM;
    t->l1 = o->l1;
    t->skip_l1 = o->store_policy && !strcmp(o->store_policy, "skip_l1");
    t->max_in_flight = o->prefetch_max_in_flight > 0 ? o->prefetch_max_in_flight : 8;
    t->timeout_ns = (uint64_t)(o->load_timeout_ms ? o->load_timeout_ms : 10000) * 1000000ull;
    t->writer = o->writer;
    t->store_max_pending = o->store_max_pending ? o->store_max_pending : 65536;
    struct l1_stats ls;
    l1_stats_get(t->l1, &ls);
    t->renew_ns = (uint64_t)(ls.write_ttl_s ? ls.write_ttl_s : 600) * 1000000000ull / 4;
    t->store_renew_ns = (uint64_t)(ls.read_ttl_s ? ls.read_ttl_s : 300) * 1000000000ull / 3;
    pthread_mutex_init(&t->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&t->store_cv, &ca);
    pthread_cond_init(&t->pf_cv, &ca);
    pthread_condattr_destroy(&ca);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        char err[512] = "";
        if ((rc = l2_adapter_create(json_array_get(o->adapters, i), i, &t->ads[i], err, sizeof(err))) < 0) {
            log_error("--l2-adapter #%zu: %s", i, err[0] ? err : strerror(-rc));
            goto fail;
        }
        t->nads++;
        if (i < MET_MAX_L2) /* l2_name of the per-adapter families: "fs0", as /status names it */
            metrics_l2_register((unsigned)i, t->ads[i]->name);
    }
    t->store_max_tasks = (o->store_max_in_flight > 0 ? o->store_max_in_flight : 64) * (int)t->nads;
    log_info("Starting L2EvictionController...");
    if ((rc = l2_evict_start(t->ads, t->nads, &t->ev)) < 0)
        goto fail;
    log_info("Starting StoreController (policy %s) over %zu L2 adapter(s)...", t->skip_l1 ? "skip_l1" : "default",
             t->nads);
    if ((rc = -pthread_create(&t->store_th, NULL, store_main, t)) < 0)
        goto fail;
    pthread_setname_np(t->store_th, "l2-store");
    t->store_started = true;
    log_info("Starting PrefetchController (max in flight %d, load deadline %llu ms)...", t->max_in_flight,
             (unsigned long long)(t->timeout_ns / 1000000));
    if ((rc = -pthread_create(&t->pf_th, NULL, pf_main, t)) < 0)
        goto fail;
    pthread_setname_np(t->pf_th, "l2-prefetch");
    t->pf_started = true;
    *out = t;
    return 0;
fail:
    l2_tier_destroy(t);
    return rc;
}

/* After the threads and adapters are gone: answers what is left. */
static void pf_abandon(struct l2_tier *t, struct preq *p)
{
    bool answered = p->phase == P_DONE;
    for (size_t i = 0; i < p->r.n; i++)
        if (p->st[i] == K_LOADING || p->st[i] == K_LOADED || (p->st[i] == K_FAILED && p->res[i].id))
            l1_abort(t->l1, &p->r.keys[i], &p->res[i].id, 1, t->writer);
    if (!answered)
        p->r.on_done(p->r.arg, p->r.keys, NULL, 0);
    preq_free(p);
}

void l2_tier_destroy(struct l2_tier *t)
{
    if (!t)
        return;
    pthread_mutex_lock(&t->mu);
    t->stopping = true;
    pthread_cond_broadcast(&t->store_cv);
    pthread_cond_broadcast(&t->pf_cv);
    pthread_mutex_unlock(&t->mu);
    if (t->store_started)
        pthread_join(t->store_th, NULL);
    if (t->pf_started)
        pthread_join(t->pf_th, NULL);
    l2_evict_stop(t->ev);
    while (t->sq_head) {
        struct sjob *j = t->sq_head;
        t->sq_head = j->next;
        sjob_free(j);
    }
    /* every adapter callback runs before its destroy returns: stores unlock
     * their L1 objects, loads mark their keys */
    for (size_t i = 0; i < t->nads; i++)
        l2_adapter_destroy(t->ads[i]);
    while (t->st_purge) { /* queued before the stop: the adapters are gone now */
        struct sjob *j = t->st_purge;
        t->st_purge = j->next;
        log_warn("L2 StoreController: %zu keys stored from a truncated L1 were not deleted (shutdown)", j->nl);
        sjob_free(j);
    }
    struct preq *lists[3] = { t->pq_head, t->ready, t->active };
    t->pq_head = t->ready = t->active = NULL;
    for (int l = 0; l < 3; l++)
        for (struct preq *p = lists[l], *next; p; p = next) {
            next = p->next;
            pf_abandon(t, p);
        }
    pthread_cond_destroy(&t->store_cv);
    pthread_cond_destroy(&t->pf_cv);
    pthread_mutex_destroy(&t->mu);
    free(t);
}

int l2_tier_delete(struct l2_tier *t, const struct l2_key *keys, size_t n)
{
    int total = 0;
    for (size_t a = 0; t && a < t->nads; a++) {
        int rc = l2_delete(t->ads[a], keys, n);
        if (rc > 0)
            total += rc;
    }
    return total;
}

void l2_tier_status(struct l2_tier *t, json_t *sm)
{
    json_t *ads = json_array();
    for (size_t a = 0; t && a < t->nads; a++)
        json_array_append_new(ads, l2_status_json(t->ads[a]));
    if (!t) {
        json_object_set_new(sm, "l2_adapters", ads);
        json_object_set_new(sm, "num_l2_adapters", json_integer(0));
        return;
    }
    pthread_mutex_lock(&t->mu);
    json_t *store = json_pack("{s:b, s:b, s:s, s:I, s:i, s:i, s:I, s:I, s:I, s:I, s:I, s:I}", "is_healthy", 1,
                              "thread_alive", t->store_started, "store_policy", t->skip_l1 ? "skip_l1" : "default",
                              "pending_keys_count", (json_int_t)t->pending_keys, "in_flight_task_count",
                              t->store_tasks, "num_l2_adapters", (int)t->nads, "submitted_keys",
                              (json_int_t)t->st_submitted_keys, "stored_keys", (json_int_t)t->st_stored_keys,
                              "dropped_keys", (json_int_t)t->st_dropped_keys, "failed_tasks",
                              (json_int_t)t->st_failed_tasks, "skipped_keys", (json_int_t)t->st_skipped_keys,
                              "purged_keys", (json_int_t)t->st_purged_keys);
    json_t *pf = json_pack("{s:b, s:b, s:i, s:I, s:I, s:I, s:I, s:I, s:I, s:i, s:I, s:I, s:I, s:I, s:I}",
                           "is_healthy", 1, "thread_alive", t->pf_started, "max_in_flight", t->max_in_flight,
                           "submission_queue_size", (json_int_t)t->n_queued, "pending_queue_size",
                           (json_int_t)t->n_queued, "in_flight_request_count", (json_int_t)t->n_active,
                           "lookup_phase_count", (json_int_t)t->n_lookup, "load_phase_count", (json_int_t)t->n_load,
                           "completed_results_count", (json_int_t)t->pf_completed, "num_l2_adapters", (int)t->nads,
                           "load_timeout_ms", (json_int_t)(t->timeout_ns / 1000000), "requests",
                           (json_int_t)t->pf_requests, "lookup_hit_chunks", (json_int_t)t->pf_lookup_hits,
                           "loaded_chunks", (json_int_t)t->pf_loaded, "deadline_expired", (json_int_t)t->pf_timeouts);
    pthread_mutex_unlock(&t->mu);
    json_object_set_new(sm, "store_controller", store);
    json_object_set_new(sm, "prefetch_controller", pf);
    json_object_set_new(sm, "l2_eviction_controller", l2_evict_status(t->ev));
    json_object_set_new(sm, "l2_adapters", ads);
    json_object_set_new(sm, "num_l2_adapters", json_integer((json_int_t)t->nads));
}
