/*
 * engine_state.c: sessions, worker instances, and the sweeper thread that
 * expires sessions (600 s, as LMCache) and reaps silent workers.
 */
#define LOG_MODULE "lmcd.engine"
#include <errno.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine_int.h"
#include "util/log.h"

#define SEC 1000000000ull
/* A registered worker that never sent anything else is reaped only after
 * this long (LMCache's --worker-registration-grace-seconds default): vLLM
 * starts heartbeats lazily, so an idle new worker is silent, not dead. */
#define REGISTRATION_GRACE_S 3600

/* ------------------------------------------------------------ lock records */

int lockvec_push(struct lockvec *lv, const struct l1_key *k, uint64_t id, uint64_t epoch, uint32_t holders)
{
    if (lv->n == lv->cap) {
        size_t cap = lv->cap ? lv->cap * 2 : 16;
        struct lockrec *v = realloc(lv->v, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        lv->v = v;
        lv->cap = cap;
    }
    lv->v[lv->n++] = (struct lockrec){ .key = *k, .id = id, .epoch = epoch, .holders = holders };
    return 0;
}

int lockvec_push_ref(struct lockvec *lv, const struct l1_key *k, const struct l1_ref *r, uint32_t holders)
{
    int rc = lockvec_push(lv, k, r->id, r->lock_epoch, holders);
    if (rc == 0)
        lv->v[lv->n - 1].slot = r->slot;
    return rc;
}

void lockvec_free(struct lockvec *lv)
{
    free(lv->v);
    memset(lv, 0, sizeof(*lv));
}

void lockrec_unlock(struct engine *e, struct lockrec *r, uint32_t m)
{
    struct l1_ref ref = { .id = r->id, .lock_epoch = r->epoch, .slot = r->slot };
    if (m)
        l1_unlock_refs(e->l1, &r->key, &ref, 1, m);
    r->holders -= m < r->holders ? m : r->holders;
}

void lockvec_release_keys(struct engine *e, struct lockvec *lv, const struct l1_key *keys, size_t n, uint32_t max)
{
    /* LOOKUP recorded its locks in key order and callers release ranges in
     * the same order: each key's search starts just after the previous
     * match, so a release is linear in its keys, not keys x records. */
    size_t hint = 0;
    for (size_t i = 0; i < n && lv->n; i++) {
        for (size_t t = 0; t < lv->n; t++) {
            size_t j = hint + t < lv->n ? hint + t : hint + t - lv->n;
            struct lockrec *r = &lv->v[j];
            if (r->holders && !memcmp(&r->key, &keys[i], sizeof(r->key))) {
                lockrec_unlock(e, r, r->holders < max ? r->holders : max);
                hint = j + 1 < lv->n ? j + 1 : 0;
                break;
            }
        }
    }
    size_t w = 0; /* compact: drop fully released records */
    for (size_t j = 0; j < lv->n; j++)
        if (lv->v[j].holders)
            lv->v[w++] = lv->v[j];
    lv->n = w;
}

void lockvec_release_all(struct engine *e, struct lockvec *lv)
{
    for (size_t i = 0; i < lv->n; i++)
        lockrec_unlock(e, &lv->v[i], lv->v[i].holders);
    lv->n = 0;
}

/* ------------------------------------------------------------ sessions */

void session_free(struct engine *e, struct session *s)
{
    atomic_fetch_sub(&e->session_bytes, s->acct);
    /* a job set after the session left the table (a LOOKUP that pinned it
     * before END_SESSION) is still counted in the gauge */
    if (s->job != JOB_NONE)
        atomic_fetch_sub(&e->active_jobs, 1);
    lockvec_release_all(e, &s->locks);
    lockvec_free(&s->locks);
    hasher_chain_free(&s->chain);
    free(s->tokens);
    free(s->rid);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static struct session *session_new(const char *rid, size_t len)
{
    struct session *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->rid = malloc(len + 1);
    if (!s->rid) {
        free(s);
        return NULL;
    }
    memcpy(s->rid, rid, len);
    s->rid[len] = 0;
    s->rid_len = len;
    s->node.key = s->rid;
    s->node.key_len = len;
    pthread_mutex_init(&s->mu, NULL);
    hasher_chain_init(&s->chain);
    return s;
}

/* Finds or makes rid's session under engine.mu and pins it (mu not taken).
 * NULL with errno as session_get says. */
static struct session *session_pin(struct engine *e, const char *rid, size_t len, enum session_mode mode)
{
    uint32_t full_ttl = (uint32_t)(e->o.session_ttl_s > 0 ? e->o.session_ttl_s : 600);
    pthread_mutex_lock(&e->mu);
    struct htab_node *n = htab_find(&e->sessions, rid, len);
    struct session *s = n ? htab_entry(n, struct session, node) : NULL;
    if (!s && mode != SESSION_FIND &&
        e->sessions.count >= (mode == SESSION_CREATE_WORKER ? e->max_sessions / 2 : e->max_sessions)) {
        pthread_mutex_unlock(&e->mu);
        errno = ENOSPC;
        return NULL;
    }
    if (!s && mode != SESSION_FIND && (s = session_new(rid, len))) {
        s->ttl_s = mode == SESSION_CREATE_WORKER && WORKER_SESSION_TTL_S < full_ttl ? WORKER_SESSION_TTL_S
                                                                                     : full_ttl;
        s->worker_made = mode == SESSION_CREATE_WORKER;
        if (htab_insert(&e->sessions, &s->node)) {
            session_free(e, s);
            s = NULL;
        }
    }
    if (s) {
        if (mode == SESSION_CREATE) {
            s->ttl_s = full_ttl; /* a LOOKUP makes it a real session */
            __atomic_store_n(&s->worker_made, false, __ATOMIC_RELAXED);
        }
        s->refs++;
    } else if (mode != SESSION_FIND) {
        errno = ENOMEM;
    }
    pthread_mutex_unlock(&e->mu);
    return s;
}

struct session *session_get(struct engine *e, const char *rid, size_t len, enum session_mode mode)
{
    struct session *s = session_pin(e, rid, len, mode);
    if (s) {
        pthread_mutex_lock(&s->mu);
        __atomic_store_n(&s->last_used_ns, engine_now(e), __ATOMIC_RELAXED);
    }
    return s;
}

static void session_unpin(struct engine *e, struct session *s);

struct session *session_tryget(struct engine *e, const char *rid, size_t len, enum session_mode mode, bool *busy)
{
    *busy = false;
    struct session *s = session_pin(e, rid, len, mode);
    if (!s)
        return NULL;
    if (pthread_mutex_trylock(&s->mu) == 0) {
        if (mode != SESSION_FIND) /* a WAIT's polling does not keep a session alive */
            __atomic_store_n(&s->last_used_ns, engine_now(e), __ATOMIC_RELAXED);
        return s;
    }
    *busy = true; /* someone works on it (a LOOKUP hashing): unpin, say "not yet" */
    session_unpin(e, s);
    return NULL;
}

/* Drops a pin; frees a session already out of the table with the last one. */
static void session_unpin(struct engine *e, struct session *s)
{
    pthread_mutex_lock(&e->mu);
    bool last = --s->refs == 0 && s->removed;
    pthread_mutex_unlock(&e->mu);
    if (last)
        session_free(e, s);
}

void session_put(struct engine *e, struct session *s)
{
    pthread_mutex_unlock(&s->mu);
    session_unpin(e, s);
}

struct session *session_take(struct engine *e, const char *rid, size_t len)
{
    pthread_mutex_lock(&e->mu);
    struct htab_node *n = htab_find(&e->sessions, rid, len);
    struct session *s = n ? htab_entry(n, struct session, node) : NULL;
    if (s) {
        htab_remove(&e->sessions, &s->node);
        s->removed = true;
        s->refs++;
    }
    pthread_mutex_unlock(&e->mu);
    if (s) {
        pthread_mutex_lock(&s->mu);
        if (s->job != JOB_NONE)
            atomic_fetch_sub(&e->active_jobs, 1);
        s->job = JOB_NONE;
    }
    return s;
}

static int session_fill(struct engine *e, struct session *s, const uint32_t *tokens, size_t n, size_t keep);

/* What a session holds beyond its fixed part: token list and hashes. */
static size_t session_mem(const struct session *s)
{
    return s->cap_tokens * sizeof(*s->tokens) + s->chain.cap * HASHER_DIGEST_LEN;
}

int session_set_tokens(struct engine *e, struct session *s, const uint32_t *tokens, size_t n)
{
    size_t keep = hasher_common_chunks(&e->hasher, s->tokens, s->n_tokens, tokens, n);
    if (n > s->cap_tokens) {
        /* what it would hold: the grown token list, hashes up to twice their count */
        uint64_t want = (uint64_t)(n + n / 4 + 64) * sizeof(*tokens) +
                        2 * (uint64_t)(n / (size_t)e->o.chunk_size + 8) * HASHER_DIGEST_LEN;
        uint64_t held = atomic_load(&e->session_bytes);
        uint64_t cap = __atomic_load_n(&s->worker_made, __ATOMIC_RELAXED) ? e->max_session_bytes / 2
                                                                          : e->max_session_bytes;
        if (want > s->acct && held - s->acct + want > cap)
            return -ENOSPC;
    }
    int rc = session_fill(e, s, tokens, n, keep);
    size_t mem = session_mem(s);
    atomic_fetch_add(&e->session_bytes, mem - s->acct); /* modular: a shrink subtracts */
    s->acct = mem;
    return rc;
}

static int session_fill(struct engine *e, struct session *s, const uint32_t *tokens, size_t n, size_t keep)
{
    if (n > s->cap_tokens) {
        size_t cap = n + n / 4 + 64;
        uint32_t *t = realloc(s->tokens, cap * sizeof(*t));
        if (!t)
            return -ENOMEM;
        s->tokens = t;
        s->cap_tokens = cap;
    }
    memcpy(s->tokens, tokens, n * sizeof(*tokens));
    s->n_tokens = n;
    return hasher_chain_update(&e->hasher, &s->chain, s->tokens, n, keep);
}

/* ------------------------------------------------------------ instances */

void instance_free(struct instance *in)
{
    lockvec_free(&in->pending);
    lockvec_free(&in->transfers);
    free(in->model);
    pthread_mutex_destroy(&in->mu);
    free(in);
}

/* Pins the instance of id (engine.mu held only to find it), or NULL. */
static struct instance *instance_pin(struct engine *e, int64_t id)
{
    pthread_mutex_lock(&e->mu);
    struct htab_node *n = htab_find(&e->instances, &id, sizeof(id));
    struct instance *in = n ? htab_entry(n, struct instance, node) : NULL;
    if (in)
        in->refs++;
    pthread_mutex_unlock(&e->mu);
    return in;
}

/* Drops a pin taken by instance_pin (instance mutex not held). */
static void instance_unpin(struct engine *e, struct instance *in)
{
    pthread_mutex_lock(&e->mu);
    bool last = --in->refs == 0 && in->removed;
    pthread_mutex_unlock(&e->mu);
    if (last)
        instance_free(in);
}

struct instance *instance_get(struct engine *e, int64_t id)
{
    struct instance *in = instance_pin(e, id);
    if (in) {
        pthread_mutex_lock(&in->mu);
        atomic_store(&in->last_seen_ns, engine_now(e));
    }
    return in;
}

struct instance *instance_tryget(struct engine *e, int64_t id, bool *busy)
{
    *busy = false;
    struct instance *in = instance_pin(e, id);
    if (in && pthread_mutex_trylock(&in->mu) != 0) {
        *busy = true;
        instance_unpin(e, in);
        return NULL;
    }
    if (in)
        atomic_store(&in->last_seen_ns, engine_now(e));
    return in;
}

void instance_put(struct engine *e, struct instance *in)
{
    pthread_mutex_unlock(&in->mu);
    instance_unpin(e, in);
}

int instance_add(struct engine *e, struct instance *fresh, struct instance **out)
{
    pthread_mutex_lock(&e->mu);
    struct htab_node *n = htab_find(&e->instances, &fresh->id, sizeof(fresh->id));
    if (n) {
        struct instance *in = htab_entry(n, struct instance, node);
        in->refs++;
        pthread_mutex_unlock(&e->mu);
        pthread_mutex_lock(&in->mu);
        atomic_store(&in->last_seen_ns, engine_now(e));
        *out = in;
        instance_free(fresh);
        return -EEXIST;
    }
    fresh->node.key = &fresh->id;
    fresh->node.key_len = sizeof(fresh->id);
    pthread_mutex_init(&fresh->mu, NULL);
    int rc = htab_insert(&e->instances, &fresh->node);
    pthread_mutex_unlock(&e->mu);
    if (rc) {
        instance_free(fresh);
        return rc;
    }
    *out = NULL;
    return 0;
}

struct instance *instance_take(struct engine *e, int64_t id)
{
    pthread_mutex_lock(&e->mu);
    struct htab_node *n = htab_find(&e->instances, &id, sizeof(id));
    struct instance *in = n ? htab_entry(n, struct instance, node) : NULL;
    if (in) {
        htab_remove(&e->instances, &in->node);
        __atomic_store_n(&in->removed, true, __ATOMIC_RELAXED); /* read by worker ops under in->mu */
        in->refs++;
    }
    pthread_mutex_unlock(&e->mu);
    if (in)
        pthread_mutex_lock(&in->mu);
    return in;
}

void instance_release(struct engine *e, struct instance *in)
{
    /* Record by record, not l1_abort_all(writer): reservations a GPU copy
     * may still write into were moved out of `pending` into a hold
     * (engine_hold_*) and must outlive this. Every other live reservation
     * of this writer is recorded here (prepare_store aborts what it cannot
     * record). */
    for (size_t i = 0; i < in->pending.n; i++)
        l1_abort(e->l1, &in->pending.v[i].key, &in->pending.v[i].id, 1, (uint64_t)in->id);
    in->pending.n = 0;
    lockvec_release_all(e, &in->transfers);
}

/* ------------------------------------------------------------ sweeper */

/*
 * Drops the records of `lv` older than ttl (their L1 lock or reservation
 * has expired by now, or belongs to a worker that never came back for it),
 * releasing what L1 may still count for them. One pass, order kept.
 * Under in->mu. Returns how many went.
 */
static size_t prune_transfers(struct engine *e, struct lockvec *lv, uint64_t now, uint64_t ttl)
{
    size_t w = 0;
    for (size_t j = 0; j < lv->n; j++) {
        struct lockrec *r = &lv->v[j];
        if (now > r->t_ns && now - r->t_ns > ttl)
            lockrec_unlock(e, r, r->holders); /* a no-op once L1 expired that run of holders */
        else
            lv->v[w++] = *r;
    }
    size_t gone = lv->n - w;
    lv->n = w;
    return gone;
}

static size_t prune_pending(struct engine *e, struct instance *in, uint64_t now, uint64_t ttl)
{
    size_t w = 0, gone = 0;
    for (size_t j = 0; j < in->pending.n; j++) {
        struct lockrec *r = &in->pending.v[j];
        if (now > r->t_ns && now - r->t_ns > ttl) {
            l1_abort(e->l1, &r->key, &r->id, 1, (uint64_t)in->id); /* by id: never a newer object */
            gone++;
        } else {
            in->pending.v[w++] = *r;
        }
    }
    in->pending.n = w;
    return gone;
}

/* Gives a shrunk record array's memory back when it is mostly empty. */
static void lockvec_shrink(struct lockvec *lv)
{
    if (lv->cap > 1024 && lv->n < lv->cap / 4) {
        size_t cap = lv->n * 2 > 16 ? lv->n * 2 : 16;
        struct lockrec *v = realloc(lv->v, cap * sizeof(*v));
        if (v) {
            lv->v = v;
            lv->cap = cap;
        }
    }
}

/* Sessions past their TTL, in one pass over the table. Returns the bytes
 * their token lists and hashes held. */
static uint64_t sweep_sessions(struct engine *e, uint64_t now, size_t *count)
{
    struct session *dead = NULL;
    pthread_mutex_lock(&e->mu);
    struct htab_node *n, *tmp;
    HTAB_FOREACH_SAFE(&e->sessions, n, tmp) {
        struct session *s = htab_entry(n, struct session, node);
        /* last_used_ns is written under s->mu; a racy read only delays expiry by a sweep */
        uint64_t used = __atomic_load_n(&s->last_used_ns, __ATOMIC_RELAXED);
        if (s->refs == 0 && now > used && now - used > (uint64_t)s->ttl_s * SEC) {
            htab_remove(&e->sessions, n);
            /* refs == 0: nobody holds s->mu; session_free settles its job */
            s->node.next = (struct htab_node *)dead;
            dead = s;
        }
    }
    pthread_mutex_unlock(&e->mu);
    uint64_t bytes = 0;
    *count = 0;
    while (dead) {
        struct session *next = (struct session *)dead->node.next;
        atomic_fetch_add(&e->expired_sessions, 1);
        metrics_add(MET_SESSIONS_EXPIRED, 1);
        log_debug("session %s expired after %u s without requests", dead->rid, dead->ttl_s);
        bytes += dead->acct + sizeof(*dead) + dead->rid_len;
        (*count)++;
        session_free(e, dead);
        dead = next;
    }
    return bytes;
}

static bool silent_for(const struct instance *in, uint64_t now, uint64_t t)
{
    uint64_t seen = atomic_load(&in->last_seen_ns);
    return now > seen && now - seen > t;
}

/* Forgets a registration the sweeper found silent past --worker-expire-seconds
 * (pinned by the caller, not locked). */
static bool instance_expire(struct engine *e, struct instance *in, uint64_t now, uint64_t expire)
{
    pthread_mutex_lock(&e->mu);
    bool still = !in->removed && silent_for(in, now, expire);
    if (still) {
        htab_remove(&e->instances, &in->node);
        __atomic_store_n(&in->removed, true, __ATOMIC_RELAXED);
    }
    pthread_mutex_unlock(&e->mu);
    if (!still)
        return false;
    pthread_mutex_lock(&in->mu);
    instance_release(e, in);
    atomic_fetch_add(&e->expired_workers, 1);
    log_warn("worker instance %lld silent for over %llu s: registration forgotten (--worker-expire-seconds); "
             "it must register again", (long long)in->id, (unsigned long long)(expire / SEC));
    pthread_mutex_unlock(&in->mu);
    return true;
}

/*
 * Worker instances, in one pass: every instance is pinned once under
 * engine.mu, then visited under its own mutex: stale transfer and pending
 * records pruned, a silent worker reaped, a long-silent registration
 * forgotten. Linear in instances plus records.
 */
static uint64_t sweep_instances(struct engine *e, uint64_t now)
{
    uint64_t freed = 0;
    pthread_mutex_lock(&e->mu);
    size_t cnt = e->instances.count, k = 0;
    struct instance **all = cnt ? malloc(cnt * sizeof(*all)) : NULL;
    struct htab_node *n, *tmp;
    if (all)
        HTAB_FOREACH_SAFE(&e->instances, n, tmp) {
            struct instance *in = htab_entry(n, struct instance, node);
            in->refs++;
            all[k++] = in;
        }
    pthread_mutex_unlock(&e->mu);
    if (cnt && !all) {
        log_error("sweeper: out of memory listing %zu worker instances; retrying next sweep", cnt);
        return 0;
    }
    uint64_t timeout = (uint64_t)(e->o.worker_reap_timeout_s > 0 ? e->o.worker_reap_timeout_s : 0) * SEC;
    uint64_t grace = (uint64_t)REGISTRATION_GRACE_S * SEC;
    if (grace < timeout)
        grace = timeout;
    uint64_t expire = e->o.worker_expire_s > 0 ? (uint64_t)e->o.worker_expire_s * SEC : 0;
    for (size_t i = 0; i < k; i++) {
        struct instance *in = all[i];
        pthread_mutex_lock(&in->mu);
        size_t pt = prune_transfers(e, &in->transfers, now, e->read_ttl_ns);
        size_t pp = prune_pending(e, in, now, e->write_ttl_ns);
        lockvec_shrink(&in->transfers);
        lockvec_shrink(&in->pending);
        atomic_fetch_add(&e->pruned_transfers, pt);
        atomic_fetch_add(&e->pruned_reservations, pp);
        freed += (pt + pp) * sizeof(struct lockrec);
        if (pt || pp)
            log_debug("worker instance %lld: pruned %zu transfer and %zu reservation records past the L1 TTL",
                      (long long)in->id, pt, pp);
        bool active = __atomic_load_n(&in->active, __ATOMIC_RELAXED), reaped = false;
        if (timeout && !__atomic_load_n(&in->reaped, __ATOMIC_RELAXED) && !__atomic_load_n(&in->removed, __ATOMIC_RELAXED) &&
            silent_for(in, now, active ? timeout : grace)) {
            size_t np = in->pending.n, nt = in->transfers.n;
            instance_release(e, in);
            __atomic_store_n(&in->reaped, true, __ATOMIC_RELAXED);
            atomic_fetch_add(&e->reaped_workers, 1);
            metrics_add(MET_WORKERS_REAPED, 1);
            log_warn("worker instance %lld silent for over %d s: released its %zu reservations and %zu transfer "
                     "locks (its registration stays; it resumes if it comes back)",
                     (long long)in->id, e->o.worker_reap_timeout_s, np, nt);
            reaped = true;
        }
        pthread_mutex_unlock(&in->mu);
        if (expire && silent_for(in, now, expire) && instance_expire(e, in, now, expire))
            reaped = true;
        if (reaped && e->o.on_reap) /* outside every engine lock (the pin only keeps `in`) */
            e->o.on_reap(e->o.on_reap_ctx, in->id);
        pthread_mutex_lock(&in->mu); /* instance_put unlocks */
        instance_put(e, in);
    }
    free(all);
    return freed;
}

/* Once sweeps have freed this much since the last trim, glibc is asked to
 * hand free pages back to the kernel (freed chunks spread over the pool
 * threads' arenas are otherwise kept: 100k expired worker sessions stayed
 * 1.4 GB resident). */
#define TRIM_AFTER_BYTES (32u << 20)

void engine_sweep(struct engine *e)
{
    uint64_t now = engine_now(e);
    size_t expired;
    uint64_t freed = sweep_sessions(e, now, &expired);
    freed += sweep_instances(e, now);
    engine_holds_renew(e, now);
    freed += atomic_fetch_add(&e->freed_since_trim, freed);
    if (freed >= TRIM_AFTER_BYTES && atomic_exchange(&e->freed_since_trim, 0) >= TRIM_AFTER_BYTES) {
        log_debug("sweeper: %llu bytes of sessions and records freed since the last trim: memory returned to the "
                  "system", (unsigned long long)freed);
        malloc_trim(0);
    }
}

static void *sweeper_main(void *arg)
{
    struct engine *e = arg;
    pthread_setname_np(pthread_self(), "lmcd-sweeper");
    pthread_mutex_lock(&e->sweep_mu);
    while (!e->stopping) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&e->sweep_cv, &e->sweep_mu, &ts);
        if (e->stopping)
            break;
        pthread_mutex_unlock(&e->sweep_mu);
        engine_sweep(e);
        pthread_mutex_lock(&e->sweep_mu);
    }
    pthread_mutex_unlock(&e->sweep_mu);
    return NULL;
}

int engine_sweeper_start(struct engine *e)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&e->sweep_cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&e->sweep_mu, NULL);
    int rc = pthread_create(&e->sweeper, NULL, sweeper_main, e);
    if (rc)
        return -rc;
    e->sweeper_started = true;
    return 0;
}

void engine_sweeper_stop(struct engine *e)
{
    if (!e->sweeper_started)
        return;
    pthread_mutex_lock(&e->sweep_mu);
    e->stopping = true;
    pthread_cond_signal(&e->sweep_cv);
    pthread_mutex_unlock(&e->sweep_mu);
    pthread_join(e->sweeper, NULL);
    e->sweeper_started = false;
}
