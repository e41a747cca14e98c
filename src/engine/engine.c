/*
 * engine.c: the requests. Each function works in at most two short steps,
 * never holding a session and an instance together (engine_int.h):
 *   1. under the session: replace the token list, extend the hashes, derive
 *      the object keys of the range (and touch the session's lookup locks);
 *   2. under the instance (engine-driven ops): reserve, publish, lock.
 * L1 calls happen under those locks; L1 never calls back.
 */
#define LOG_MODULE "lmcd.engine"
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "engine/engine_int.h"
#include "util/log.h"

static_assert(sizeof(struct obj_key) == sizeof(struct l1_key), "keys.h and l1.h keys must match");
static_assert(offsetof(struct obj_key, ns) == offsetof(struct l1_key, ns), "key layout");
static_assert(offsetof(struct obj_key, kv_rank) == offsetof(struct l1_key, kv_rank), "key layout");

#define INLINE_WRITER_BASE (1ull << 63)
#define MAX_READERS 128

/* Failures a client can repeat at will are logged at most 5 times a minute. */
static struct log_ratelimit key_rl = LOG_RATELIMIT_INIT(60000, 5);
static struct log_ratelimit back_rl = LOG_RATELIMIT_INIT(60000, 5);

/*
 * Backs each fresh reservation with real pages (l1_back); one that cannot
 * be backed is aborted and marked L1_NOMEM, so nobody writes into a page
 * /dev/shm has no room for (that would be SIGBUS, in lmcd or a worker).
 */
static void back_reservations(struct engine *e, const struct l1_key *keys, size_t n, uint64_t writer,
                              enum l1_status *st, const struct l1_ref *refs)
{
    for (size_t i = 0; i < n; i++) {
        if (st[i] != L1_OK)
            continue;
        int rc = l1_back(e->l1, &refs[i]);
        if (rc == 0)
            continue;
        l1_abort(e->l1, &keys[i], &refs[i].id, 1, writer);
        st[i] = L1_NOMEM;
        log_rl(&back_rl, LOG_ERROR,
               "cannot commit %llu bytes of L1 shared memory: %s (/dev/shm is full?); the chunk is skipped",
               (unsigned long long)refs[i].length, strerror(-rc));
    }
}

/* ------------------------------------------------------------ dtypes */

static const struct dtype {
    const char *name;
    uint32_t size;
} dtypes[] = {
    { "bfloat16", 2 }, { "float16", 2 }, { "float32", 4 }, { "float64", 8 }, { "float8_e4m3fn", 1 },
    { "float8_e5m2", 1 }, { "float8_e4m3fnuz", 1 }, { "float8_e5m2fnuz", 1 }, { "uint8", 1 }, { "int8", 1 },
    { "int16", 2 }, { "int32", 4 }, { "int64", 8 },
};

static const struct dtype *dtype_find(const char *s, size_t len)
{
    for (size_t i = 0; i < sizeof(dtypes) / sizeof(dtypes[0]); i++)
        if (strlen(dtypes[i].name) == len && !memcmp(dtypes[i].name, s, len))
            return &dtypes[i];
    return NULL;
}

/* ------------------------------------------------------------ keys */

/* Checks the parts of a key that give objects their identity. */
/* The metrics row of a request's model and salt (this thread's). */
static struct met_row *key_row(const struct engine_key *k)
{
    return metrics_row(k->model_name, k->model_name_len, k->cache_salt, k->cache_salt_len);
}

static int check_key(const struct engine_key *k, bool need_worker)
{
    if (keys_check_model(k->model_name, k->model_name_len) || keys_check_salt(k->cache_salt, k->cache_salt_len))
        return -EINVAL;
    if (k->world_size < 1 || k->world_size > KEYS_WORLD_MAX)
        return -EINVAL;
    if (k->has_worker_id && (k->worker_id < 0 || k->worker_id >= k->world_size))
        return -EINVAL;
    if (need_worker && !k->has_worker_id)
        return -EINVAL;
    if (k->start < 0 || k->end < k->start)
        return -EINVAL;
    return 0;
}

static void log_bad_key(const char *op, const struct engine_key *k)
{
    log_rl(&key_rl, LOG_WARNING,
           "%s for request %.*s: invalid key (model '%.*s', world_size %lld, worker_id %lld, salt %zu bytes, "
           "range %lld..%lld): treated as a miss",
           op, (int)k->request_id_len, k->request_id, (int)k->model_name_len, k->model_name,
           (long long)k->world_size, k->has_worker_id ? (long long)k->worker_id : -1LL, k->cache_salt_len,
           (long long)k->start, (long long)k->end);
}

/*
 * Object keys of chunks [c0, c1) of a hash chain (c1 clamped to the hashes
 * there are). worker = KEYS_WORKER_ALL expands every shard, chunk-major.
 * Writes at most cap keys into lk (ok is scratch of the same size); returns
 * the count, or -errno.
 */
static long chain_keys_into(const struct hasher_chain *ch, const struct engine_key *k, size_t c0, size_t c1,
                            int worker, struct obj_key *ok, struct l1_key *lk, size_t cap)
{
    if (c1 > ch->len)
        c1 = ch->len;
    if (c0 >= c1)
        return 0;
    uint64_t ns = keys_ns(k->model_name, k->model_name_len, k->cache_salt, k->cache_salt_len);
    long got = keys_expand((const uint8_t(*)[32])ch->hashes[c0], c1 - c0, (uint32_t)k->world_size, worker, ns, 0,
                           ok, cap);
    /* Same layout (asserted above); copy rather than alias two struct types. */
    if (got > 0)
        memcpy(lk, ok, (size_t)got * sizeof(*lk));
    return got;
}

/* chain_keys_into() for the whole range, into a malloc'd *out (NULL when
 * *n == 0). */
static int chain_keys(const struct hasher_chain *ch, const struct engine_key *k, size_t c0, size_t c1, int worker,
                      struct l1_key **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    if (c1 > ch->len)
        c1 = ch->len;
    if (c0 >= c1)
        return 0;
    size_t shards = worker == KEYS_WORKER_ALL ? (size_t)k->world_size : 1;
    size_t cap = (c1 - c0) * shards;
    struct obj_key *ok = malloc(cap * sizeof(*ok));
    struct l1_key *lk = malloc(cap * sizeof(*lk));
    long got = ok && lk ? chain_keys_into(ch, k, c0, c1, worker, ok, lk, cap) : -ENOMEM;
    free(ok);
    if (got < 0) {
        free(lk);
        return (int)got;
    }
    *out = lk;
    *n = (size_t)got;
    return 0;
}

/*
 * Keys for a request whose session the caps refused (or that has none):
 * its tokens hashed into a chain of its own, dropped afterwards. Costs a
 * full hash each time, and nothing after the request.
 */
static int unkept_keys(struct engine *e, const struct engine_key *k, size_t c0, size_t c1, int worker,
                       struct l1_key **out, size_t *n)
{
    struct hasher_chain ch;
    hasher_chain_init(&ch);
    int rc = hasher_chain_update(&e->hasher, &ch, k->token_ids, k->n_tokens, 0);
    if (rc == 0)
        rc = chain_keys(&ch, k, c0, c1, worker, out, n);
    hasher_chain_free(&ch);
    return rc;
}

/* Keys of a request under its session s (tokens updated first); past the
 * session byte cap, or without a session, from an unkept chain. Under s->mu. */
static int session_keys(struct engine *e, struct session *s, const struct engine_key *k, size_t c0, size_t c1,
                        int worker, struct l1_key **out, size_t *n)
{
    int rc = s ? session_set_tokens(e, s, k->token_ids, k->n_tokens) : -ENOSPC;
    if (rc == 0)
        return chain_keys(&s->chain, k, c0, c1, worker, out, n);
    if (rc == -ENOSPC)
        return unkept_keys(e, k, c0, c1, worker, out, n);
    *out = NULL;
    *n = 0;
    return rc;
}

/* Limiter for the session-cap refusals (a client can repeat them at will). */
static struct log_ratelimit cap_rl = LOG_RATELIMIT_INIT(60000, 5);

static size_t chunk_of(const struct engine *e, int64_t tok) { return (size_t)tok / (size_t)e->o.chunk_size; }

/*
 * Step 1 for the worker ops: pins the session, updates its tokens and
 * returns this shard's keys of [start, end) with the index of the first.
 * If lookup_release > 0, also drops that many holders of the session's
 * lookup locks on those keys (COMMIT_RETRIEVE).
 */
static int range_keys(struct engine *e, const struct engine_key *k, bool create, uint32_t lookup_release,
                      bool nowait, struct l1_key **keys, size_t *n)
{
    *keys = NULL;
    *n = 0;
    enum session_mode mode = create ? SESSION_CREATE_WORKER : SESSION_FIND;
    bool busy = false;
    struct session *s = nowait ? session_tryget(e, k->request_id, k->request_id_len, mode, &busy)
                               : session_get(e, k->request_id, k->request_id_len, mode);
    if (busy) /* a LOOKUP hashes this request: the caller runs the op where it may wait */
        return -EWOULDBLOCK;
    if (!s && !(create && errno == ENOSPC))
        return create ? -ENOMEM : -ENOENT;
    /* past --max-sessions a worker request is still served, from an unkept chain */
    int rc = session_keys(e, s, k, chunk_of(e, k->start), chunk_of(e, k->end), (int)k->worker_id, keys, n);
    if (s && rc == 0 && lookup_release)
        lockvec_release_keys(e, &s->locks, *keys, *n, lookup_release);
    if (s)
        session_put(e, s);
    return rc;
}

/* check_key + range_keys for the worker ops; an invalid key is logged. */
static int worker_keys(struct engine *e, const struct engine_key *k, const char *op, bool nowait,
                       struct l1_key **keys, size_t *n)
{
    *keys = NULL;
    *n = 0;
    /* a start inside a chunk would put the worker's tokens under the key of
     * the chunk that holds it (spec 8.1: worker ranges are chunk aligned) */
    if (check_key(k, true) || k->start % e->o.chunk_size) {
        log_bad_key(op, k);
        return -EINVAL;
    }
    return range_keys(e, k, true, 0, nowait, keys, n);
}

/* Readers per object a LOOKUP locks for (spec mp_protocol.md 6.2). */
static uint32_t readers_of(const struct engine_key *k, int64_t tp_size)
{
    int64_t r;
    if (k->num_kv_readers >= 1) {
        r = k->num_kv_readers;
    } else {
        int64_t tp = tp_size > 1 ? tp_size : k->world_size;
        r = 1 + (tp > k->world_size ? tp - 1 : 0);
    }
    return (uint32_t)(r < 1 ? 1 : r > MAX_READERS ? MAX_READERS : r);
}

/* ------------------------------------------------------------ lifecycle */

static char *dup_or(const char *s, const char *dflt)
{
    return strdup(s && *s ? s : dflt);
}

int engine_create(const struct engine_opts *o, struct engine **out)
{
    int rc = -ENOMEM;
    struct engine *e = calloc(1, sizeof(*e));
    if (!e)
        return -ENOMEM;
    e->o = *o;
    e->clock = o->clock ? o->clock : &clock_monotonic;
    e->hash_name = dup_or(o->hash_algorithm, "blake3");
    e->policy_name = dup_or(o->eviction_policy, "LRU");
    e->shm_name_opt = strdup(o->shm_name ? o->shm_name : "");
    e->shm_group_opt = strdup(o->shm_group ? o->shm_group : "");
    pthread_mutex_init(&e->mu, NULL);
    pthread_mutex_init(&e->size_mu, NULL);
    pthread_mutex_init(&e->hold_mu, NULL);
    htab_init(&e->sessions);
    htab_init(&e->instances);
    atomic_init(&e->inline_writer, 0);
    if (!e->hash_name || !e->policy_name || !e->shm_name_opt || !e->shm_group_opt)
        goto fail;
    e->o.hash_algorithm = e->hash_name;
    e->o.eviction_policy = e->policy_name;
    e->o.shm_name = e->shm_name_opt;
    e->o.shm_group = e->shm_group_opt;

    enum hasher_algo algo;
    const char *why = NULL;
    if ((rc = hasher_algo_parse(e->hash_name, &algo, &why))) {
        log_error("hash algorithm %s: %s", e->hash_name, why ? why : "unknown");
        goto fail;
    }
    if ((rc = hasher_init(&e->hasher, algo, (uint32_t)o->chunk_size))) {
        log_error("chunk size %d is not usable (1..%d)", o->chunk_size, HASHER_MAX_CHUNK);
        goto fail;
    }

    struct l1_opts lo;
    l1_opts_init(&lo);
    lo.size_bytes = o->l1_size_bytes;
    lo.align_bytes = o->l1_align_bytes ? o->l1_align_bytes : 4096;
    lo.max_objects = o->l1_max_objects;
    lo.shm_name = e->shm_name_opt;
    lo.shm_group = *e->shm_group_opt ? e->shm_group_opt : NULL;
    lo.use_lazy = o->l1_use_lazy;
    lo.init_bytes = o->l1_init_bytes;
    lo.read_ttl_s = (uint32_t)(o->l1_read_ttl_s > 0 ? o->l1_read_ttl_s : 300);
    lo.write_ttl_s = (uint32_t)(o->l1_write_ttl_s > 0 ? o->l1_write_ttl_s : 600);
    lo.policy = strcmp(e->policy_name, "noop") ? L1_POLICY_LRU : L1_POLICY_NOOP;
    lo.trigger_watermark = o->eviction_trigger_watermark;
    lo.eviction_ratio = o->eviction_ratio;
    lo.chunk_size = (uint32_t)o->chunk_size;
    lo.hash_name = e->hash_name;
    lo.clock = e->clock;
    e->read_ttl_ns = (uint64_t)lo.read_ttl_s * 1000000000ull;
    e->write_ttl_ns = (uint64_t)lo.write_ttl_s * 1000000000ull;
    e->max_sessions = o->max_sessions ? o->max_sessions : 131072;
    e->max_session_bytes = o->max_session_bytes ? o->max_session_bytes : 1ull << 30;
    if (!o->worker_expire_s)
        e->o.worker_expire_s = 86400;
    if ((rc = l1_create(&lo, &e->l1))) {
        if (rc == -ENOMEM) /* every other failure has its own line from L1 already */
            log_error("cannot create L1 (%.2f GiB shared-memory segment): %s", (double)o->l1_size_bytes / (1 << 30),
                      strerror(-rc));
        goto fail;
    }
    log_info("L1: %.2f GiB in shared-memory segment /%s (%s, align %llu, read TTL %u s, write TTL %u s)",
             (double)l1_pool_size(e->l1) / (1 << 30), l1_shm_name(e->l1), o->l1_use_lazy ? "lazy" : "pre-faulted",
             (unsigned long long)lo.align_bytes, lo.read_ttl_s, lo.write_ttl_s);
    {
        struct l1_stats st;
        l1_stats_get(e->l1, &st);
        double ratio = o->inline_max_pinned_ratio > 0 ? o->inline_max_pinned_ratio : 0.5;
        e->inline_pin_budget = (uint64_t)((double)st.memory_total_bytes * (ratio < 1.0 ? ratio : 1.0));
    }
    log_info("Starting L1EvictionController...");
    if ((rc = l1_evict_start(e->l1))) {
        log_error("cannot start the L1 eviction thread: %s", strerror(-rc));
        goto fail;
    }
    hasher_log_init(&e->hasher);
    if ((rc = engine_l2_create(e))) {
        log_error("cannot start the L2 tier: %s", strerror(-rc));
        goto fail;
    }
    if ((rc = engine_sweeper_start(e))) {
        log_error("cannot start the session sweeper: %s", strerror(-rc));
        goto fail;
    }
    *out = e;
    return 0;
fail:
    engine_destroy(e);
    return rc;
}

void engine_destroy(struct engine *e)
{
    if (!e)
        return;
    engine_l2_destroy(e); /* first: its answers still find their sessions */
    engine_sweeper_stop(e);
    struct htab_node *n, *tmp;
    HTAB_FOREACH_SAFE(&e->sessions, n, tmp) {
        htab_remove(&e->sessions, n);
        session_free(e, htab_entry(n, struct session, node));
    }
    HTAB_FOREACH_SAFE(&e->instances, n, tmp) {
        struct instance *in = htab_entry(n, struct instance, node);
        htab_remove(&e->instances, n);
        if (e->l1)
            instance_release(e, in);
        instance_free(in);
    }
    htab_free(&e->sessions);
    htab_free(&e->instances);
    while (e->holds) { /* copies the GPU path abandoned at shutdown: L1 goes with the process */
        struct engine_hold *h = e->holds;
        e->holds = *(struct engine_hold **)h;
        free(h);
    }
    pthread_mutex_destroy(&e->hold_mu);
    l1_destroy(e->l1);
    pthread_mutex_destroy(&e->mu);
    pthread_mutex_destroy(&e->size_mu);
    free(e->hash_name);
    free(e->policy_name);
    free(e->shm_name_opt);
    free(e->shm_group_opt);
    free(e);
}

int engine_chunk_size(const struct engine *e) { return e->o.chunk_size; }
const char *engine_shm_name(const struct engine *e) { return l1_shm_name(e->l1); }

void *engine_l1_base(const struct engine *e, uint64_t *size)
{
    *size = l1_pool_size(e->l1);
    return l1_base(e->l1);
}

bool engine_l1_backed(const struct engine *e, uint64_t off, uint64_t len)
{
    struct l1_ref r = {.offset = off, .length = len};
    return l1_backed(e->l1, &r);
}

uint64_t engine_l1_generation(const struct engine *e) { return l1_generation(e->l1); }

/* ------------------------------------------------------------ lookups */

/* Keys a LOOKUP expands at once: memory stays this bound whatever the
 * world size and prompt length. */
#define LOOKUP_BATCH_KEYS 4096

/*
 * Locks the prefix of the chain present for every shard, a batch of chunks
 * at a time, recording each lock in s->locks. Returns the chunks locked.
 * Under s->mu.
 */
static int64_t lookup_lock_prefix(struct engine *e, struct session *s, const struct engine_key *k,
                                  uint32_t readers, int *err)
{
    size_t world = (size_t)k->world_size;
    size_t per = LOOKUP_BATCH_KEYS / world ? LOOKUP_BATCH_KEYS / world : 1; /* chunks per batch */
    size_t cap = per * world;
    struct obj_key *ok = malloc(cap * sizeof(*ok));
    struct l1_key *keys = malloc(cap * sizeof(*keys));
    struct l1_ref *refs = malloc(cap * sizeof(*refs));
    int64_t chunks = 0;
    *err = 0;
    if (!ok || !keys || !refs) {
        *err = -ENOMEM;
        goto out;
    }
    for (size_t c0 = 0; c0 < s->chain.len; c0 += per) {
        long n = chain_keys_into(&s->chain, k, c0, c0 + per, KEYS_WORKER_ALL, ok, keys, cap);
        if (n <= 0) {
            *err = n < 0 ? (int)n : 0;
            break;
        }
        int locked = l1_lock_prefix(e->l1, keys, (size_t)n, readers, refs);
        size_t full = locked > 0 ? (size_t)locked / world : 0;
        /* shards of a chunk not present for every shard are no hit */
        for (size_t i = full * world; locked > 0 && i < (size_t)locked; i++)
            l1_unlock_refs(e->l1, &keys[i], &refs[i], 1, readers);
        for (size_t i = 0; i < full * world; i++) {
            if (lockvec_push_ref(&s->locks, &keys[i], &refs[i], readers)) {
                /* cannot track the rest: do not keep their locks */
                for (size_t j = i; j < full * world; j++)
                    l1_unlock_refs(e->l1, &keys[j], &refs[j], 1, readers);
                full = i / world; /* a chunk cut short keeps its records: released with the session's */
                chunks += (int64_t)full;
                goto out;
            }
        }
        chunks += (int64_t)full;
        if (full * world < (size_t)n)
            break; /* a miss ends the prefix */
    }
out:
    free(ok);
    free(keys);
    free(refs);
    return chunks;
}

/* LOOKUP's L2 part: the chunks after the L1 prefix (at most
 * L2_PREFETCH_MAX_KEYS objects) go to the tier. Under s->mu. True when the
 * job now waits for the tier's answer. */
#define L2_PREFETCH_MAX_KEYS 65536
static bool lookup_l2(struct engine *e, struct session *s, const struct engine_key *k, int64_t l1_chunks,
                      uint32_t readers, uint64_t obj_size)
{
    size_t world = (size_t)k->world_size, c0 = (size_t)l1_chunks, c1 = s->chain.len;
    if (!e->l2 || !obj_size || c0 >= c1)
        return false;
    if ((c1 - c0) * world > L2_PREFETCH_MAX_KEYS)
        c1 = c0 + (L2_PREFETCH_MAX_KEYS / world ? L2_PREFETCH_MAX_KEYS / world : 1);
    size_t cap = (c1 - c0) * world;
    struct obj_key *ok = malloc(cap * sizeof(*ok));
    struct l1_key *keys = malloc(cap * sizeof(*keys));
    long n = ok && keys ? chain_keys_into(&s->chain, k, c0, c1, KEYS_WORKER_ALL, ok, keys, cap) : -ENOMEM;
    bool pending = n > 0 && engine_l2_prefetch(e, s, k, keys, (size_t)n, (uint32_t)world, l1_chunks, readers,
                                               obj_size) == 0;
    free(ok);
    free(keys);
    return pending;
}

int engine_lookup(struct engine *e, const struct engine_key *k, int64_t tp_size)
{
    int rc = check_key(k, false);
    /* before the session: it takes engine.mu */
    uint64_t obj_size = rc ? 0 : engine_l2_object_size(e, k);
    struct session *s = session_get(e, k->request_id, k->request_id_len, SESSION_CREATE);
    if (!s && errno == ENOSPC) {
        atomic_fetch_add(&e->refused_sessions, 1);
        log_rl(&cap_rl, LOG_WARNING,
               "LOOKUP for request %.*s refused: %zu sessions held (--max-sessions); answered as a miss",
               (int)k->request_id_len, k->request_id, e->max_sessions);
        return -ENOSPC;
    }
    if (!s)
        return -ENOMEM;
    lockvec_release_all(e, &s->locks); /* a new LOOKUP replaces the old job and its locks */
    s->job_gen++;
    if (s->job == JOB_NONE)
        atomic_fetch_add(&e->active_jobs, 1);
    s->job = JOB_DONE; /* a failed lookup still answers: 0 hits */
    int64_t chunks = 0;
    bool l2_pending = false;
    if (rc) {
        log_bad_key("LOOKUP", k);
    } else if ((rc = session_set_tokens(e, s, k->token_ids, k->n_tokens)) == -ENOSPC) {
        atomic_fetch_add(&e->refused_session_bytes, 1);
        log_rl(&cap_rl, LOG_WARNING,
               "LOOKUP for request %.*s refused: its %zu tokens would pass --max-session-bytes (%llu bytes held); "
               "answered as a miss",
               (int)k->request_id_len, k->request_id, k->n_tokens,
               (unsigned long long)atomic_load(&e->session_bytes));
    } else if (rc == 0 && s->chain.len) {
        uint32_t readers = readers_of(k, tp_size);
        chunks = lookup_lock_prefix(e, s, k, readers, &rc);
        s->has_lookup = true;
        s->lookup_world = (uint32_t)k->world_size;
        s->lookup_ns = keys_ns(k->model_name, k->model_name_len, k->cache_salt, k->cache_salt_len);
        /* L1's part of the hit now; L2's comes with its answer (engine_l2.c) */
        struct met_row *mr = key_row(k);
        uint64_t cs = (uint64_t)e->o.chunk_size, hit = (uint64_t)(chunks > 0 ? chunks : 0);
        metrics_row_add(mr, MET_ROW_LOOKUP_REQUESTED, (uint64_t)s->chain.len * cs);
        metrics_row_add(mr, MET_ROW_LOOKUP_HIT, hit * cs);
        metrics_row_add(mr, MET_ROW_LOOKUP_HIT_L1, hit * cs);
        metrics_row_add(mr, MET_ROW_LOOKUP_HIT_L1_KEYS, hit * (uint64_t)k->world_size);
        /* the rest may sit in L2: the job completes when the tier answers */
        if (rc == 0)
            l2_pending = lookup_l2(e, s, k, chunks, readers, obj_size);
    }
    if (!l2_pending) {
        s->job_hits = chunks;
        s->job_chunks = chunks;
    }
    session_put(e, s);
    if (!rc)
        metrics_row_add(key_row(k), MET_ROW_LOOKUPS, 1);
    if (!l2_pending && e->o.on_job_done)
        e->o.on_job_done(e->o.on_job_done_ctx, k->request_id, k->request_id_len);
    return rc;
}

/* QUERY_PREFETCH_STATUS's answer from a pinned, locked session: the final
 * count, exactly once (the job is gone afterwards); -EAGAIN while it runs. */
static int job_take_result(struct engine *e, struct session *s, int64_t *chunks)
{
    if (s->job == JOB_DONE) {
        *chunks = s->job_chunks;
        s->job = JOB_NONE;
        atomic_fetch_sub(&e->active_jobs, 1);
        return 0;
    }
    return s->job != JOB_NONE ? -EAGAIN : 0;
}

static int query_job(struct engine *e, const char *rid, size_t len, int64_t *chunks, bool consume)
{
    *chunks = 0;
    struct session *s = session_get(e, rid, len, SESSION_FIND);
    if (!s)
        return 0; /* unknown id: 0, a miss */
    int rc = 0;
    if (consume) {
        rc = job_take_result(e, s, chunks);
    } else { /* LOOKUP_HITS: known once the lookup phase is over; kept */
        if (s->job == JOB_LOAD || s->job == JOB_DONE)
            *chunks = s->job_hits;
        else if (s->job == JOB_LOOKUP)
            rc = -EAGAIN;
    }
    session_put(e, s);
    return rc;
}

/* QUERY's result for the loop thread, never waiting for the session's mutex:
 * -EAGAIN while a LOOKUP holds it; an unknown id answers unknown_rc. */
static int try_take_result(struct engine *e, const char *rid, size_t len, int64_t *chunks, int unknown_rc)
{
    *chunks = 0;
    bool busy;
    struct session *s = session_tryget(e, rid, len, SESSION_FIND, &busy);
    if (!s)
        return busy ? -EAGAIN : unknown_rc;
    int rc = job_take_result(e, s, chunks);
    session_put(e, s);
    return rc;
}

int engine_poll_prefetch_status(struct engine *e, const char *rid, size_t len, int64_t *chunks)
{
    return try_take_result(e, rid, len, chunks, 0); /* unknown id: 0, a miss */
}

int engine_try_prefetch_status(struct engine *e, const char *rid, size_t len, int64_t *chunks)
{
    return try_take_result(e, rid, len, chunks, -EAGAIN); /* unknown id: the pool answers, in order */
}

int engine_query_prefetch_status(struct engine *e, const char *rid, size_t len, int64_t *chunks)
{
    return query_job(e, rid, len, chunks, true);
}

int engine_query_lookup_hits(struct engine *e, const char *rid, size_t len, int64_t *chunks)
{
    return query_job(e, rid, len, chunks, false);
}

int engine_free_lookup_locks(struct engine *e, const struct engine_key *k, int64_t tp_size)
{
    (void)tp_size; /* releases exactly what LOOKUP recorded, whatever it was */
    if (check_key(k, false)) {
        log_bad_key("FREE_LOOKUP_LOCKS", k);
        return -EINVAL;
    }
    struct session *s = session_get(e, k->request_id, k->request_id_len, SESSION_FIND);
    if (!s)
        return 0;
    int rc = session_set_tokens(e, s, k->token_ids, k->n_tokens);
    struct hasher_chain own;
    hasher_chain_init(&own);
    const struct hasher_chain *ch = &s->chain;
    if (rc == -ENOSPC) { /* past the byte cap: this request's keys from an unkept chain */
        rc = hasher_chain_update(&e->hasher, &own, k->token_ids, k->n_tokens, 0);
        ch = &own;
    }
    size_t world = (size_t)k->world_size;
    size_t per = LOOKUP_BATCH_KEYS / world ? LOOKUP_BATCH_KEYS / world : 1;
    struct obj_key *ok = rc == 0 ? malloc(per * world * sizeof(*ok)) : NULL;
    struct l1_key *keys = rc == 0 ? malloc(per * world * sizeof(*keys)) : NULL;
    if (rc == 0 && (!ok || !keys))
        rc = -ENOMEM;
    size_t c1 = chunk_of(e, k->end);
    for (size_t c0 = chunk_of(e, k->start); rc == 0 && c0 < c1 && s->locks.n; c0 += per) {
        long n = chain_keys_into(ch, k, c0, c1 - c0 < per ? c1 : c0 + per, KEYS_WORKER_ALL, ok, keys, per * world);
        if (n <= 0) {
            rc = n < 0 ? (int)n : 0;
            break;
        }
        lockvec_release_keys(e, &s->locks, keys, (size_t)n, UINT32_MAX); /* all this request's holders */
    }
    free(ok);
    free(keys);
    hasher_chain_free(&own);
    session_put(e, s);
    return rc;
}

int engine_end_session(struct engine *e, const char *rid, size_t len)
{
    struct session *s = session_take(e, rid, len);
    if (!s) {
        log_debug("END_SESSION for unknown request %.*s", (int)len, rid);
        return -ENOENT;
    }
    if (s->has_lookup && s->chain.len) {
        /* Touch every full-chunk object once (#3020), a batch at a time from
         * the last chunk back: the prefix head ends most recent, since
         * evicting it would make every later chunk useless. */
        size_t world = s->lookup_world, per = LOOKUP_BATCH_KEYS / world ? LOOKUP_BATCH_KEYS / world : 1;
        struct obj_key *ok = malloc(per * world * sizeof(*ok));
        struct l1_key *lk = malloc(per * world * sizeof(*lk));
        for (size_t c1 = s->chain.len; ok && lk && c1 > 0;) {
            size_t c0 = c1 > per ? c1 - per : 0;
            long got = keys_expand((const uint8_t(*)[32])s->chain.hashes[c0], c1 - c0, s->lookup_world,
                                   KEYS_WORKER_ALL, s->lookup_ns, 0, ok, per * world);
            for (long i = 0; i < got; i++)
                memcpy(&lk[got - 1 - i], &ok[i], sizeof(*lk));
            if (got > 0)
                l1_touch(e->l1, lk, (size_t)got);
            c1 = c0;
        }
        free(ok);
        free(lk);
    }
    /* Its lookup locks go now: a retrieve that still comes locks for itself. */
    lockvec_release_all(e, &s->locks);
    session_put(e, s);
    return 0;
}

int engine_clear(struct engine *e, bool force)
{
    int removed = l1_clear(e->l1, force);
    log_info("CLEAR%s: %d objects removed from L1", force ? " (force)" : "", removed);
    if (!force)
        return 0;
    /* The jobs' counts describe objects that are gone: drop them. */
    pthread_mutex_lock(&e->mu);
    size_t n = e->sessions.count, k = 0;
    struct session **pinned = n ? malloc(n * sizeof(*pinned)) : NULL;
    struct htab_node *node, *tmp;
    if (pinned)
        HTAB_FOREACH_SAFE(&e->sessions, node, tmp) {
            struct session *s = htab_entry(node, struct session, node);
            s->refs++;
            pinned[k++] = s;
        }
    pthread_mutex_unlock(&e->mu);
    for (size_t i = 0; i < k; i++) {
        pthread_mutex_lock(&pinned[i]->mu);
        if (pinned[i]->job != JOB_NONE)
            atomic_fetch_sub(&e->active_jobs, 1);
        pinned[i]->job = JOB_NONE;
        session_put(e, pinned[i]);
    }
    free(pinned);
    return 0;
}

/* A worker's PING, its instance held: it is alive (and back, if reaped). */
static void ping_locked(struct instance *in, int64_t instance_id)
{
    __atomic_store_n(&in->active, true, __ATOMIC_RELAXED);
    if (__atomic_load_n(&in->reaped, __ATOMIC_RELAXED)) {
        __atomic_store_n(&in->reaped, false, __ATOMIC_RELAXED);
        log_info("worker instance %lld is back after being reaped", (long long)instance_id);
    }
}

void engine_ping(struct engine *e, bool has_instance, int64_t instance_id)
{
    if (!has_instance)
        return;
    struct instance *in = instance_get(e, instance_id);
    if (!in)
        return;
    ping_locked(in, instance_id);
    instance_put(e, in);
}

int engine_ping_try(struct engine *e, bool has_instance, int64_t instance_id)
{
    if (!has_instance)
        return 0;
    bool busy;
    struct instance *in = instance_tryget(e, instance_id, &busy);
    if (!in)
        return busy ? -EAGAIN : 0;
    ping_locked(in, instance_id);
    instance_put(e, in);
    return 0;
}

void engine_report_block_allocation(struct engine *e, size_t n_records)
{
    (void)e;
    metrics_add(MET_BLOCK_ALLOC_RECORDS, n_records);
}

/* ------------------------------------------------------------ registration */

static int refuse(struct engine *e, struct engine_ed_reply *out, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int refuse(struct engine *e, struct engine_ed_reply *out, const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    out->error = strdup(buf);
    out->shm_name = strdup(l1_shm_name(e->l1));
    out->pool_size = l1_pool_size(e->l1);
    return out->error && out->shm_name ? 0 : -ENOMEM;
}

int engine_register_ed(struct engine *e, const struct engine_ed_register *r, struct engine_ed_reply *out)
{
    memset(out, 0, sizeof(*out));
    const struct dtype *dt = dtype_find(r->dtype, r->dtype_len);
    int64_t C = e->o.chunk_size;
    if (!dt)
        return refuse(e, out, "unsupported dtype_str '%.*s'", (int)(r->dtype_len > 32 ? 32 : r->dtype_len), r->dtype);
    if (r->multi_group)
        return refuse(e, out, "multi-group (hybrid attention) layouts are not supported by lmcd");
    if (keys_check_model(r->model_name, r->model_name_len))
        return refuse(e, out, "invalid model_name (empty, or contains '@')");
    if (r->world_size < 1 || r->world_size > KEYS_WORLD_MAX)
        return refuse(e, out, "world_size %lld outside 1..%d", (long long)r->world_size, KEYS_WORLD_MAX);
    if (r->block_size < 1 || C % r->block_size)
        return refuse(e, out, "block_size %lld does not divide the server chunk size %lld", (long long)r->block_size,
                      (long long)C);
    if (r->num_layers < 1 || r->hidden_dim_size < 1 || r->num_layers > (1 << 16) || r->hidden_dim_size > (1 << 24))
        return refuse(e, out, "num_layers %lld / hidden_dim_size %lld out of range", (long long)r->num_layers,
                      (long long)r->hidden_dim_size);
    if (r->has_num_physical_slots && r->num_physical_slots != C)
        return refuse(e, out, "num_physical_slots %lld differs from the server chunk size %lld",
                      (long long)r->num_physical_slots, (long long)C);
    /* An instance id is also its L1 writer id: the top of the range belongs
     * to lmcd's own writers (inline stores, L2 prefetch), whose reservations
     * an UNREGISTER or a reap of a same-numbered worker would otherwise drop
     * while bytes are still being written into them. */
    if (r->instance_id < 0 || r->instance_id >= ENGINE_RESERVED_WRITERS)
        return refuse(e, out, "instance_id %lld outside 0..%lld", (long long)r->instance_id,
                      (long long)ENGINE_RESERVED_WRITERS - 1);
    struct instance *in = calloc(1, sizeof(*in));
    if (!in || !(in->model = strndup(r->model_name, r->model_name_len))) {
        free(in);
        return -ENOMEM;
    }
    in->id = r->instance_id;
    in->world_size = r->world_size;
    in->block_size = r->block_size;
    in->num_layers = r->num_layers;
    in->hidden = r->hidden_dim_size;
    in->use_mla = r->use_mla;
    in->dtype = dt->name;
    in->itemsize = dt->size;
    in->ndim = 0;
    if (!r->use_mla)
        in->shape[in->ndim++] = 2;
    in->shape[in->ndim++] = r->num_layers;
    in->shape[in->ndim++] = C;
    in->shape[in->ndim++] = r->hidden_dim_size;
    in->object_bytes = (r->use_mla ? 1u : 2u) * (uint64_t)r->num_layers * (uint64_t)C *
                       (uint64_t)r->hidden_dim_size * dt->size;
    in->registered_ns = engine_now(e);
    atomic_init(&in->last_seen_ns, in->registered_ns);
    uint64_t bytes = in->object_bytes;
    struct instance *old = NULL;
    int rc = instance_add(e, in, &old);
    if (rc == -EEXIST) { /* re-registration refreshes liveness, same answer */
        bool same = old->world_size == r->world_size && old->block_size == r->block_size &&
                    old->num_layers == r->num_layers && old->hidden == r->hidden_dim_size &&
                    old->use_mla == r->use_mla && old->dtype == dt->name &&
                    strlen(old->model) == r->model_name_len && !memcmp(old->model, r->model_name, r->model_name_len);
        __atomic_store_n(&old->reaped, false, __ATOMIC_RELAXED);
        instance_put(e, old);
        if (!same) /* its slots would not fit the new layout: refuse rather than corrupt */
            return refuse(e, out, "instance_id %lld is registered with another layout; unregister it first",
                          (long long)r->instance_id);
    } else if (rc) {
        return rc;
    } else {
        log_info("registered engine-driven worker instance %lld: model %.*s, world_size %lld, %s%s, %lld layers, "
                 "hidden %lld, %llu bytes per chunk object",
                 (long long)r->instance_id, (int)r->model_name_len, r->model_name, (long long)r->world_size,
                 dt->name, r->use_mla ? " MLA" : "", (long long)r->num_layers, (long long)r->hidden_dim_size,
                 (unsigned long long)bytes);
    }
    out->shm_name = strdup(l1_shm_name(e->l1));
    out->pool_size = l1_pool_size(e->l1);
    return out->shm_name ? 0 : -ENOMEM;
}

void engine_ed_reply_free(struct engine_ed_reply *r)
{
    free(r->shm_name);
    free(r->error);
    r->shm_name = r->error = NULL;
}

int engine_unregister(struct engine *e, int64_t instance_id)
{
    struct instance *in = instance_take(e, instance_id);
    if (!in)
        return 0;
    size_t np = in->pending.n, nt = in->transfers.n;
    instance_release(e, in);
    log_info("unregistered worker instance %lld (dropped %zu unpublished reservations, %zu transfer locks)",
             (long long)instance_id, np, nt);
    instance_put(e, in);
    return 0;
}

/* ------------------------------------------------------------ engine-driven transfers */

void engine_slots_free(struct engine_slots *s)
{
    free(s->slots);
    free(s->chunk_indices);
    memset(s, 0, sizeof(*s));
}

static void fill_slot(const struct instance *in, const struct l1_ref *ref, struct engine_slot *slot)
{
    slot->offset = ref->offset;
    slot->length = ref->length;
    slot->ndim = in->ndim;
    memcpy(slot->shape, in->shape, sizeof(slot->shape));
    slot->dtype = in->dtype;
}

/* The registered instance `id`, locked; NULL if there is none. With nowait
 * (the loop thread's forms) it never waits for the instance's mutex: NULL
 * with *busy set when another thread holds it. */
static struct instance *worker_instance(struct engine *e, int64_t id, bool nowait, bool *busy)
{
    *busy = false;
    struct instance *in = nowait ? instance_tryget(e, id, busy) : instance_get(e, id);
    if (in && __atomic_load_n(&in->removed, __ATOMIC_RELAXED)) {
        /* UNREGISTER took it while we waited for its lock: it has released
         * everything; adding reservations now would leak them */
        instance_put(e, in);
        return NULL;
    }
    if (in) {
        __atomic_store_n(&in->active, true, __ATOMIC_RELAXED);
        if (__atomic_exchange_n(&in->reaped, false, __ATOMIC_RELAXED))
            log_info("worker instance %lld is back after being reaped", (long long)id);
    }
    return in;
}

/* The identity of a store key apart from request_id (LMCache keys pending
 * reservations by the whole IPC key): the range and the hash chain up to
 * its last chunk, which stands for the model, salt, shard and tokens. */
static uint64_t store_tag(const struct engine_key *k, const struct l1_key *keys, size_t n)
{
    struct {
        struct l1_key last;
        int64_t start, end;
        uint64_t rid;
    } id = { keys[n - 1], k->start, k->end, XXH3_64bits(k->request_id, k->request_id_len) };
    return XXH3_64bits(&id, sizeof(id));
}

/* Whether every reservation of refs that st marks L1_OK has its pages
 * backed already (so l1_back will not fallocate). */
static bool reservations_backed(struct engine *e, size_t n, const enum l1_status *st, const struct l1_ref *refs)
{
    for (size_t i = 0; i < n; i++)
        if (st[i] == L1_OK && !l1_backed(e->l1, &refs[i]))
            return false;
    return true;
}

static int prepare_store(struct engine *e, const struct engine_key *k, int64_t instance_id, bool nowait,
                         struct engine_slots *out)
{
    memset(out, 0, sizeof(*out));
    struct l1_key *keys;
    size_t n;
    int rc = worker_keys(e, k, "PREPARE_STORE", nowait, &keys, &n);
    if (rc || !n) {
        free(keys);
        return rc;
    }
    bool busy;
    struct instance *in = worker_instance(e, instance_id, nowait, &busy);
    if (!in) {
        free(keys);
        return busy ? -EWOULDBLOCK : -ENOENT;
    }
    uint64_t *sizes = malloc(n * sizeof(*sizes));
    enum l1_status *st = malloc(n * sizeof(*st));
    struct l1_ref *refs = malloc(n * sizeof(*refs));
    out->slots = malloc(n * sizeof(*out->slots));
    out->chunk_indices = malloc(n * sizeof(*out->chunk_indices));
    rc = -ENOMEM;
    if (!sizes || !st || !refs || !out->slots || !out->chunk_indices)
        goto done;
    for (size_t i = 0; i < n; i++)
        sizes[i] = in->object_bytes;
    l1_reserve_write(e->l1, keys, sizes, n, (uint64_t)instance_id, st, refs);
    if (nowait && !reservations_backed(e, n, st, refs)) {
        /* fallocate of fresh pages takes milliseconds: give them back and
         * let the caller run the op where it may wait */
        for (size_t i = 0; i < n; i++)
            if (st[i] == L1_OK)
                l1_abort(e->l1, &keys[i], &refs[i].id, 1, (uint64_t)instance_id);
        rc = -EWOULDBLOCK;
        goto done;
    }
    back_reservations(e, keys, n, (uint64_t)instance_id, st, refs);
    uint64_t tag = store_tag(k, keys, n), now = engine_now(e);
    rc = 0;
    size_t skipped = 0, nomem = 0;
    for (size_t i = 0; i < n; i++) {
        if (st[i] != L1_OK) {
            skipped += st[i] != L1_EXISTS;
            nomem += st[i] == L1_NOMEM;
            continue;
        }
        if (lockvec_push(&in->pending, &keys[i], refs[i].id, 0, 0)) {
            l1_abort(e->l1, &keys[i], &refs[i].id, 1, (uint64_t)instance_id);
            skipped++;
            continue;
        }
        in->pending.v[in->pending.n - 1].tag = tag;
        in->pending.v[in->pending.n - 1].t_ns = now;
        fill_slot(in, &refs[i], &out->slots[out->n]);
        out->chunk_indices[out->n++] = (int64_t)i;
    }
    metrics_add(MET_STORE_SKIPPED, skipped);
    if (nomem)
        metrics_row_add(key_row(k), MET_ROW_L1_ALLOC_FAILURE, nomem);
done:
    instance_put(e, in);
    free(sizes);
    free(st);
    free(refs);
    free(keys);
    if (rc || !out->n)
        engine_slots_free(out);
    return rc;
}

/* Removes and returns the pending records of `keys` that this store's
 * PREPARE_STORE made (same tag), every one of them: an abandoned, expired
 * record of the same key must not hide the live one. ok/ids need room for
 * in->pending.n entries. Returned last chunk first, so that publishing them
 * leaves the prefix head most recent in LRU. */
static size_t take_pending(struct instance *in, const struct l1_key *keys, size_t n, uint64_t tag,
                           struct l1_key *ok, uint64_t *ids)
{
    size_t got = 0;
    for (size_t i = n; i-- > 0;) {
        for (size_t j = 0; j < in->pending.n;) {
            struct lockrec *r = &in->pending.v[j];
            if (r->tag == tag && !memcmp(&r->key, &keys[i], sizeof(keys[i]))) {
                ok[got] = keys[i];
                ids[got++] = r->id;
                in->pending.v[j] = in->pending.v[--in->pending.n];
            } else {
                j++;
            }
        }
    }
    return got;
}

int engine_prepare_store(struct engine *e, const struct engine_key *k, int64_t instance_id, struct engine_slots *out)
{
    return prepare_store(e, k, instance_id, false, out);
}

int engine_prepare_store_nowait(struct engine *e, const struct engine_key *k, int64_t instance_id,
                                struct engine_slots *out)
{
    return prepare_store(e, k, instance_id, true, out);
}

static int commit_store(struct engine *e, const struct engine_key *k, int64_t instance_id, size_t data_len,
                        bool nowait)
{
    if (check_key(k, true))
        return -EINVAL;
    struct l1_key *keys;
    size_t n;
    int rc = range_keys(e, k, true, 0, nowait, &keys, &n);
    if (rc)
        return rc;
    bool busy;
    struct instance *in = worker_instance(e, instance_id, nowait, &busy);
    if (!in) {
        free(keys);
        return busy ? -EWOULDBLOCK : -ENOENT;
    }
    size_t room = in->pending.n ? in->pending.n : 1;
    struct l1_key *pk = malloc(room * sizeof(*pk));
    uint64_t *ids = malloc(room * sizeof(*ids));
    rc = -ENOMEM;
    if (pk && ids) {
        size_t got = n ? take_pending(in, keys, n, store_tag(k, keys, n), pk, ids) : 0;
        if (data_len > 0) { /* pickle mode: never publish what was not written in place */
            l1_abort(e->l1, pk, ids, got, (uint64_t)instance_id);
            rc = -ENOTSUP;
        } else {
            enum l1_status *st = got ? malloc(got * sizeof(*st)) : NULL;
            int pub = got ? l1_publish(e->l1, pk, ids, got, (uint64_t)instance_id, st) : 0;
            if (pub > 0) {
                struct met_row *mr = key_row(k);
                metrics_row_add(mr, MET_ROW_L1_WRITE, (uint64_t)pub);
                metrics_row_add(mr, MET_ROW_L1_WRITE_BYTES, (uint64_t)pub * in->object_bytes);
            }
            rc = pub > 0 ? 0 : -ENOENT;
            if (pub > 0 && st) { /* write-behind to L2: the published ones */
                size_t m = 0;
                for (size_t i = 0; i < got; i++)
                    if (st[i] == L1_OK)
                        pk[m++] = pk[i];
                engine_l2_stored(e, k, pk, m, in->object_bytes);
            }
            free(st);
        }
    }
    instance_put(e, in);
    free(pk);
    free(ids);
    free(keys);
    return rc;
}

int engine_commit_store(struct engine *e, const struct engine_key *k, int64_t instance_id, size_t data_len)
{
    return commit_store(e, k, instance_id, data_len, false);
}

int engine_commit_store_nowait(struct engine *e, const struct engine_key *k, int64_t instance_id, size_t data_len)
{
    return commit_store(e, k, instance_id, data_len, true);
}

static int prepare_retrieve(struct engine *e, const struct engine_key *k, int64_t instance_id, bool nowait,
                            struct engine_slots *out)
{
    memset(out, 0, sizeof(*out));
    struct l1_key *keys;
    size_t n;
    int rc = worker_keys(e, k, "PREPARE_RETRIEVE", nowait, &keys, &n);
    if (rc)
        return rc;
    if ((size_t)(chunk_of(e, k->end) - chunk_of(e, k->start)) != n) { /* tokens do not cover the range */
        free(keys);
        return -ENOENT;
    }
    bool busy;
    struct instance *in = worker_instance(e, instance_id, nowait, &busy);
    if (!in) {
        free(keys);
        return busy ? -EWOULDBLOCK : -ENOENT;
    }
    struct l1_ref *refs = malloc((n ? n : 1) * sizeof(*refs));
    out->slots = malloc((n ? n : 1) * sizeof(*out->slots));
    rc = -ENOMEM;
    if (!refs || !out->slots)
        goto done;
    if ((rc = n ? l1_lock(e->l1, keys, n, 1, refs) : 0)) {
        if (rc == -ENOENT)
            metrics_row_add(key_row(k), MET_ROW_L1_READ_FAILURE, 1);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        if (refs[i].length != in->object_bytes) { /* stored under another layout: not ours to read */
            l1_unlock_refs(e->l1, keys, refs, n, 1);
            rc = -ENOENT;
            goto done;
        }
    }
    uint64_t tag = n ? store_tag(k, keys, n) : 0, now = engine_now(e);
    for (size_t i = 0; i < n; i++) {
        if (lockvec_push(&in->transfers, &keys[i], refs[i].id, refs[i].lock_epoch, 1)) {
            l1_unlock_refs(e->l1, &keys[i], &refs[i], n - i, 1);
            rc = -ENOMEM;
            goto done;
        }
        in->transfers.v[in->transfers.n - 1].tag = tag;
        in->transfers.v[in->transfers.n - 1].t_ns = now;
        fill_slot(in, &refs[i], &out->slots[i]);
    }
    out->n = n;
    struct met_row *mr = key_row(k);
    metrics_row_add(mr, MET_ROW_L1_READ, n);
    metrics_row_add(mr, MET_ROW_L1_READ_BYTES, n * in->object_bytes);
done:
    instance_put(e, in);
    free(refs);
    free(keys);
    if (rc)
        engine_slots_free(out);
    return rc;
}

int engine_prepare_retrieve(struct engine *e, const struct engine_key *k, int64_t instance_id,
                            struct engine_slots *out)
{
    return prepare_retrieve(e, k, instance_id, false, out);
}

int engine_prepare_retrieve_nowait(struct engine *e, const struct engine_key *k, int64_t instance_id,
                                   struct engine_slots *out)
{
    return prepare_retrieve(e, k, instance_id, true, out);
}

static int commit_retrieve(struct engine *e, const struct engine_key *k, int64_t instance_id, bool nowait)
{
    if (check_key(k, true))
        return 0;
    /* The loop's form takes the instance first: step 1 below changes the
     * session's locks, so nothing may give way after it. Holding the
     * instance while trying the session cannot deadlock (neither waits). */
    bool busy = false;
    struct instance *in = nowait ? worker_instance(e, instance_id, true, &busy) : NULL;
    if (busy)
        return -EWOULDBLOCK;
    struct l1_key *keys;
    size_t n;
    /* Step 1 also gives back one holder of this request's LOOKUP lock per
     * object: this reader is done with it. The session is (re)made if
     * END_SESSION came first: the transfer locks must go regardless. */
    int rc = range_keys(e, k, true, 1, nowait, &keys, &n);
    if (rc || !n) {
        if (in)
            instance_put(e, in);
        free(keys);
        return rc == -EWOULDBLOCK ? rc : 0;
    }
    if (!nowait)
        in = worker_instance(e, instance_id, false, &busy);
    if (in) {
        uint64_t tag = store_tag(k, keys, n);
        /* The transfer's records sit together, in key order, unless other
         * commits moved some (removal swaps in the last record): search each
         * key from just after the previous match, so a usual commit is
         * linear in its chunks rather than in every transfer held. */
        size_t hint = 0;
        for (size_t i = 0; i < n; i++) {
            size_t m = in->transfers.n;
            for (size_t t = 0; t < m; t++) {
                size_t j = hint + t < m ? hint + t : hint + t - m;
                struct lockrec *r = &in->transfers.v[j];
                if (r->tag == tag && !memcmp(&r->key, &keys[i], sizeof(r->key))) {
                    lockrec_unlock(e, r, r->holders);
                    in->transfers.v[j] = in->transfers.v[--in->transfers.n];
                    hint = j;
                    break;
                }
            }
        }
        instance_put(e, in);
    }
    free(keys);
    return 0;
}

int engine_commit_retrieve(struct engine *e, const struct engine_key *k, int64_t instance_id)
{
    return commit_retrieve(e, k, instance_id, false);
}

int engine_commit_retrieve_nowait(struct engine *e, const struct engine_key *k, int64_t instance_id)
{
    return commit_retrieve(e, k, instance_id, true);
}

/* ------------------------------------------------------------ GPU copies' holds */

struct engine_hold {
    struct engine_hold *next, *prev; /* e->holds, under hold_mu (next first: engine_destroy) */
    bool store;
    uint64_t writer;
    uint64_t obj_bytes;
    uint64_t renewed_ns;
    size_t n;
    struct l1_key *keys;
    uint64_t *ids;          /* STORE: the reservations */
    struct lockrec *locks;  /* RETRIEVE: the transfer locks */
    struct l1_ref *pins;    /* RETRIEVE: the pins */
};

static struct engine_hold *hold_new(size_t n, bool store)
{
    struct engine_hold *h = calloc(1, sizeof(*h) + n * (sizeof(struct l1_key) + sizeof(uint64_t) +
                                                          (store ? 0 : sizeof(struct lockrec) + sizeof(struct l1_ref))));
    if (!h)
        return NULL;
    h->store = store;
    h->keys = (struct l1_key *)(h + 1);
    h->ids = (uint64_t *)(h->keys + n);
    if (!store) {
        h->locks = (struct lockrec *)(h->ids + n);
        h->pins = (struct l1_ref *)(h->locks + n);
    }
    return h;
}

static void hold_link(struct engine *e, struct engine_hold *h)
{
    pthread_mutex_lock(&e->hold_mu);
    h->next = e->holds;
    if (e->holds)
        e->holds->prev = h;
    e->holds = h;
    e->n_holds++;
    e->n_held_objects += h->n;
    pthread_mutex_unlock(&e->hold_mu);
}

/* The instance of a hold: pinned and locked, without the worker_instance()
 * side effects (a completion is not the worker coming back). */
static struct instance *hold_instance(struct engine *e, int64_t id)
{
    struct instance *in = instance_get(e, id);
    if (in && __atomic_load_n(&in->removed, __ATOMIC_RELAXED)) {
        instance_put(e, in);
        return NULL;
    }
    return in;
}

int engine_hold_store(struct engine *e, const struct engine_key *k, int64_t instance_id, size_t n_reserved,
                      struct engine_hold **out)
{
    *out = NULL;
    if (check_key(k, true))
        return -EINVAL;
    struct l1_key *keys;
    size_t n;
    int rc = range_keys(e, k, true, 0, false, &keys, &n);
    if (rc)
        return rc;
    struct instance *in = n ? hold_instance(e, instance_id) : NULL;
    struct engine_hold *h = in ? hold_new(in->pending.n, true) : NULL;
    size_t got = 0;
    if (h) {
        got = take_pending(in, keys, n, store_tag(k, keys, n), h->keys, h->ids);
        h->obj_bytes = in->object_bytes;
    }
    if (in)
        instance_put(e, in);
    free(keys);
    if (in && !h)
        return -ENOMEM;
    if (h && got != n_reserved) { /* released meanwhile (or a stale record): copy nothing */
        l1_abort(e->l1, h->keys, h->ids, got, (uint64_t)instance_id);
        got = 0;
    }
    if (!got) {
        free(h);
        return -ENOENT;
    }
    h->n = got;
    h->writer = (uint64_t)instance_id;
    h->renewed_ns = engine_now(e);
    hold_link(e, h);
    *out = h;
    return 0;
}

int engine_hold_retrieve(struct engine *e, const struct engine_key *k, int64_t instance_id,
                         struct engine_hold **out)
{
    *out = NULL;
    if (check_key(k, true))
        return -EINVAL;
    struct l1_key *keys;
    size_t n;
    int rc = range_keys(e, k, true, 0, false, &keys, &n);
    if (rc || !n) {
        free(keys);
        return rc ? rc : -ENOENT;
    }
    struct engine_hold *h = hold_new(n, false);
    if (!h) {
        free(keys);
        return -ENOMEM;
    }
    struct instance *in = hold_instance(e, instance_id);
    size_t got = 0;
    if (in) {
        uint64_t tag = store_tag(k, keys, n);
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < in->transfers.n; j++) {
                struct lockrec *r = &in->transfers.v[j];
                if (r->tag == tag && !memcmp(&r->key, &keys[i], sizeof(r->key))) {
                    h->keys[got] = keys[i];
                    h->locks[got++] = *r;
                    in->transfers.v[j] = in->transfers.v[--in->transfers.n];
                    break;
                }
            }
        instance_put(e, in);
    }
    free(keys);
    /* Pinned too: a read lock lapses after read_ttl, a pin never does, and
     * a pinned object removed by a forced clear is freed only at unpin. */
    int pinned = got == n ? l1_pin_prefix(e->l1, h->keys, got, UINT64_MAX, h->pins, NULL) : 0;
    bool same = pinned == (int)got && got == n;
    for (size_t i = 0; same && i < got; i++)
        same = h->pins[i].id == h->locks[i].id;
    if (!in || !same) {
        if (pinned > 0)
            l1_unpin(e->l1, h->keys, h->pins, (size_t)pinned);
        for (size_t i = 0; i < got; i++)
            lockrec_unlock(e, &h->locks[i], h->locks[i].holders);
        free(h);
        return -ENOENT;
    }
    h->n = got;
    h->writer = (uint64_t)instance_id;
    hold_link(e, h);
    *out = h;
    return 0;
}

void engine_hold_end(struct engine *e, struct engine_hold *h, const struct engine_key *k, bool ok)
{
    if (!h)
        return;
    pthread_mutex_lock(&e->hold_mu);
    if (h->prev)
        h->prev->next = h->next;
    else
        e->holds = h->next;
    if (h->next)
        h->next->prev = h->prev;
    e->n_holds--;
    e->n_held_objects -= h->n;
    pthread_mutex_unlock(&e->hold_mu);
    if (h->store && !ok) {
        l1_abort(e->l1, h->keys, h->ids, h->n, h->writer);
    } else if (h->store) {
        enum l1_status *st = malloc(h->n * sizeof(*st));
        int pub = l1_publish(e->l1, h->keys, h->ids, h->n, h->writer, st);
        if (pub > 0) {
            struct met_row *mr = key_row(k);
            metrics_row_add(mr, MET_ROW_L1_WRITE, (uint64_t)pub);
            metrics_row_add(mr, MET_ROW_L1_WRITE_BYTES, (uint64_t)pub * h->obj_bytes);
        }
        if (pub > 0 && st) { /* write-behind to L2: the published ones */
            size_t m = 0;
            for (size_t i = 0; i < h->n; i++)
                if (st[i] == L1_OK)
                    h->keys[m++] = h->keys[i];
            engine_l2_stored(e, k, h->keys, m, h->obj_bytes);
        }
        free(st);
    } else {
        l1_unpin(e->l1, h->keys, h->pins, h->n);
        for (size_t i = 0; i < h->n; i++)
            lockrec_unlock(e, &h->locks[i], h->locks[i].holders);
        struct l1_key *keys;
        size_t n;
        if (range_keys(e, k, true, 1, false, &keys, &n) == 0) /* this reader is done with its LOOKUP locks */
            free(keys);
    }
    free(h);
}

void engine_holds_renew(struct engine *e, uint64_t now)
{
    pthread_mutex_lock(&e->hold_mu);
    for (struct engine_hold *h = e->holds; h; h = h->next)
        if (h->store && now > h->renewed_ns && now - h->renewed_ns > e->write_ttl_ns / 2) {
            l1_renew(e->l1, h->keys, h->ids, h->n, h->writer);
            h->renewed_ns = now;
        }
    pthread_mutex_unlock(&e->hold_mu);
}

/* ------------------------------------------------------------ inline */

int engine_store_inline(struct engine *e, const struct engine_key *k, const struct iovec *chunks, size_t n,
                        int64_t *present)
{
    *present = 0;
    struct l1_key *keys;
    size_t nk;
    int rc = worker_keys(e, k, "lmcd.store_inline", false, &keys, &nk);
    if (rc)
        return rc;
    if (nk > n)
        nk = n; /* fewer chunk frames than chunks: store what came */
    uint64_t writer = INLINE_WRITER_BASE | atomic_fetch_add(&e->inline_writer, 1);
    uint64_t *sizes = malloc((nk ? nk : 1) * sizeof(*sizes));
    enum l1_status *st = malloc((nk ? nk : 1) * sizeof(*st));
    struct l1_ref *refs = malloc((nk ? nk : 1) * sizeof(*refs));
    rc = -ENOMEM;
    if (sizes && st && refs) {
        for (size_t i = 0; i < nk; i++)
            sizes[i] = chunks[i].iov_len;
        l1_reserve_write(e->l1, keys, sizes, nk, writer, st, refs);
        back_reservations(e, keys, nk, writer, st, refs);
        uint8_t *base = l1_base(e->l1);
        int64_t stored = 0;
        uint64_t bytes = 0, nomem = 0;
        for (size_t i = 0; i < nk; i++) {
            nomem += st[i] == L1_NOMEM;
            if (st[i] == L1_EXISTS) {
                (*present)++;
            } else if (st[i] == L1_OK) {
                memcpy(base + refs[i].offset, chunks[i].iov_base, chunks[i].iov_len);
                enum l1_status ps;
                if (l1_publish(e->l1, &keys[i], &refs[i].id, 1, writer, &ps) == 1) {
                    (*present)++;
                    keys[stored++] = keys[i]; /* i >= stored: compacts the published ones */
                    bytes += chunks[i].iov_len;
                }
            }
        }
        struct met_row *mr = key_row(k);
        metrics_row_add(mr, MET_ROW_L1_WRITE, (uint64_t)stored);
        metrics_row_add(mr, MET_ROW_L1_WRITE_BYTES, bytes);
        metrics_row_add(mr, MET_ROW_L1_ALLOC_FAILURE, nomem);
        engine_l2_stored(e, k, keys, (size_t)stored, nk ? chunks[0].iov_len : 0);
        rc = 0;
    }
    free(sizes);
    free(st);
    free(refs);
    free(keys);
    return rc;
}

static struct log_ratelimit inline_pin_rl = LOG_RATELIMIT_INIT(60000, 5);

struct inline_handle {
    struct l1_key *keys;
    struct l1_ref *refs;
    size_t n;      /* pinned objects, unpinned at release */
    uint8_t *copy; /* their bytes, back to back: what the frames send */
};

/*
 * The chunks are pinned (their place in L1 is not reused while the reply is
 * out, and the pin budget bounds the bytes of replies not yet read), then
 * copied: a worker may truncate the segment at any moment (l1_check), and a
 * frame ZeroMQ sent later from the lost pages would carry zeros, a wrong
 * answer nobody could take back. The copy is checked after it is made:
 * when the segment was lost before or during it, the generation moved and
 * the reply is a miss.
 */
int engine_retrieve_inline(struct engine *e, const struct engine_key *k, struct engine_inline_read *out)
{
    memset(out, 0, sizeof(*out));
    struct l1_key *keys;
    size_t n;
    int rc = worker_keys(e, k, "lmcd.retrieve_inline", false, &keys, &n);
    if (rc || !n) {
        free(keys);
        return rc;
    }
    struct l1_ref *refs = malloc(n * sizeof(*refs));
    struct inline_handle *h = calloc(1, sizeof(*h));
    out->chunks = malloc(n * sizeof(*out->chunks));
    if (!refs || !h || !out->chunks) {
        free(refs);
        free(h);
        free(out->chunks);
        free(keys);
        out->chunks = NULL;
        return -ENOMEM;
    }
    uint64_t gen = l1_check(e->l1);
    bool over = false;
    int m = l1_pin_prefix(e->l1, keys, n, e->inline_pin_budget, refs, &over);
    if (over) {
        atomic_fetch_add(&e->inline_pin_refused, 1);
        log_rl(&inline_pin_rl, LOG_WARNING,
               "lmcd.retrieve_inline for request %.*s: %d of %zu chunks sent; the rest would pin more than %llu "
               "bytes of L1 in replies not yet read by their clients (--inline-max-pinned-ratio)",
               (int)k->request_id_len, k->request_id, m, n, (unsigned long long)e->inline_pin_budget);
    }
    h->keys = keys;
    h->refs = refs;
    h->n = m > 0 ? (size_t)m : 0;
    size_t total = 0;
    for (size_t i = 0; i < h->n; i++)
        total += refs[i].length;
    if (h->n && !(h->copy = malloc(total))) {
        out->handle_ = h;
        engine_inline_release(e, out);
        return -ENOMEM;
    }
    uint8_t *base = l1_base(e->l1), *dst = h->copy;
    for (size_t i = 0; i < h->n; i++) {
        memcpy(dst, base + refs[i].offset, refs[i].length);
        out->chunks[i] = (struct iovec){ dst, refs[i].length };
        dst += refs[i].length;
    }
    if (h->n && l1_check(e->l1) != gen) {
        log_rl(&inline_pin_rl, LOG_WARNING,
               "lmcd.retrieve_inline for request %.*s: the L1 segment was lost during the copy; answered as a miss",
               (int)k->request_id_len, k->request_id);
        out->n = 0; /* the pins go at release, with the handle */
    } else {
        out->n = h->n;
    }
    out->handle_ = h;
    struct met_row *mr = key_row(k);
    metrics_row_add(mr, MET_ROW_L1_READ, out->n);
    uint64_t bytes = 0;
    for (size_t i = 0; i < out->n; i++)
        bytes += out->chunks[i].iov_len;
    metrics_row_add(mr, MET_ROW_L1_READ_BYTES, bytes);
    return 0;
}

void engine_inline_release(struct engine *e, struct engine_inline_read *r)
{
    struct inline_handle *h = r->handle_;
    if (h) {
        if (h->n)
            l1_unpin(e->l1, h->keys, h->refs, h->n);
        free(h->keys);
        free(h->refs);
        free(h->copy);
        free(h);
    }
    free(r->chunks);
    memset(r, 0, sizeof(*r));
}

/* ------------------------------------------------------------ status */

static json_t *instances_json(struct engine *e)
{
    json_t *arr = json_array();
    uint64_t now = engine_now(e);
    pthread_mutex_lock(&e->mu);
    struct htab_node *n, *tmp;
    HTAB_FOREACH_SAFE(&e->instances, n, tmp) {
        struct instance *in = htab_entry(n, struct instance, node);
        json_t *shape = json_array();
        for (uint32_t d = 0; d < in->ndim; d++)
            json_array_append_new(shape, json_integer(in->shape[d]));
        json_array_append_new(
            arr, json_pack("{s:I, s:s, s:I, s:s, s:b, s:o, s:I, s:f, s:b}", "instance_id", (json_int_t)in->id,
                           "model_name", in->model, "world_size", (json_int_t)in->world_size, "dtype", in->dtype,
                           "use_mla", in->use_mla, "chunk_shape", shape, "object_bytes",
                           (json_int_t)in->object_bytes, "seconds_since_seen",
                           (double)(now - atomic_load(&in->last_seen_ns)) / 1e9, "reaped",
                           __atomic_load_n(&in->reaped, __ATOMIC_RELAXED)));
    }
    pthread_mutex_unlock(&e->mu);
    return arr;
}

json_t *engine_status_json(struct engine *e)
{
    if (!e)
        return NULL;
    struct l1_stats st;
    l1_stats_get(e->l1, &st);
    pthread_mutex_lock(&e->mu);
    size_t sessions = e->sessions.count, instances = e->instances.count;
    pthread_mutex_unlock(&e->mu);
    json_t *l1 = json_pack(
        "{s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:i, s:i, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "is_healthy", 1,
        "total_object_count", (json_int_t)st.total_object_count, "write_locked_count",
        (json_int_t)st.write_locked_count, "read_locked_count", (json_int_t)st.read_locked_count, "temporary_count",
        (json_int_t)st.temporary_count, "memory_used_bytes", (json_int_t)st.memory_used_bytes, "memory_total_bytes",
        (json_int_t)st.memory_total_bytes, "memory_usage_ratio", st.memory_usage_ratio, "write_ttl_seconds",
        (int)st.write_ttl_s, "read_ttl_seconds", (int)st.read_ttl_s, "shm_name", l1_shm_name(e->l1), "pool_size",
        (json_int_t)l1_pool_size(e->l1), "evicted_count", (json_int_t)st.evicted_count, "demand_evicted_count",
        (json_int_t)st.demand_evicted_count, "allocation_failures", (json_int_t)st.alloc_failures,
        "expired_reservations", (json_int_t)st.expired_reservations, "expired_read_locks",
        (json_int_t)st.expired_read_locks, "pending_free_count",
        (json_int_t)st.pending_free_count);
    /* lmcd.retrieve_inline frames not yet released by ZeroMQ */
    json_object_set_new(l1, "pinned_count", json_integer((json_int_t)st.pinned_count));
    json_object_set_new(l1, "pinned_bytes", json_integer((json_int_t)st.pinned_bytes));
    json_t *evict = json_pack("{s:b, s:b, s:s, s:f, s:f, s:I, s:I}", "is_healthy", 1, "thread_alive", 1,
                              "eviction_policy", e->policy_name, "trigger_watermark", e->o.eviction_trigger_watermark,
                              "eviction_ratio", e->o.eviction_ratio, "rounds", (json_int_t)st.eviction_rounds,
                              "rounds_triggered", (json_int_t)st.eviction_rounds_triggered);
    json_t *sm = json_pack("{s:b, s:o, s:o}", "is_healthy", 1, "l1_manager", l1, "l1_eviction_controller", evict);
    l2_tier_status(e->l2, sm);
    /* process-wide sums (src/metrics): one engine per lmcd */
    uint64_t cs = e->o.chunk_size > 0 ? (uint64_t)e->o.chunk_size : 1;
    json_t *counters = json_pack(
        "{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "lookups", (json_int_t)metrics_row_sum(MET_ROW_LOOKUPS),
        "lookup_chunks", (json_int_t)(metrics_row_sum(MET_ROW_LOOKUP_REQUESTED) / cs), "lookup_hit_chunks",
        (json_int_t)(metrics_row_sum(MET_ROW_LOOKUP_HIT) / cs), "stored_chunks",
        (json_int_t)metrics_row_sum(MET_ROW_L1_WRITE), "store_skipped_chunks",
        (json_int_t)metrics_sum(MET_STORE_SKIPPED), "retrieved_chunks", (json_int_t)metrics_row_sum(MET_ROW_L1_READ),
        "reaped_workers", (json_int_t)atomic_load(&e->reaped_workers), "expired_sessions",
        (json_int_t)atomic_load(&e->expired_sessions), "block_allocation_records",
        (json_int_t)metrics_sum(MET_BLOCK_ALLOC_RECORDS));
    json_object_update_new(
        counters, json_pack("{s:I, s:I, s:I, s:I, s:I}", "refused_sessions",
                            (json_int_t)atomic_load(&e->refused_sessions), "refused_session_bytes",
                            (json_int_t)atomic_load(&e->refused_session_bytes), "expired_workers",
                            (json_int_t)atomic_load(&e->expired_workers), "pruned_transfer_records",
                            (json_int_t)atomic_load(&e->pruned_transfers), "pruned_reservation_records",
                            (json_int_t)atomic_load(&e->pruned_reservations)));
    json_t *limits = json_pack("{s:I, s:I, s:I, s:I}", "max_sessions", (json_int_t)e->max_sessions,
                               "max_session_bytes", (json_int_t)e->max_session_bytes, "session_bytes",
                               (json_int_t)atomic_load(&e->session_bytes), "registered_instances",
                               (json_int_t)instances);
    json_object_set_new(counters, "inline_pin_refused", json_integer((json_int_t)atomic_load(&e->inline_pin_refused)));
    pthread_mutex_lock(&e->hold_mu); /* GPU copies' quarantine (engine_hold_*) */
    json_object_set_new(counters, "gpu_held_copies", json_integer((json_int_t)e->n_holds));
    json_object_set_new(counters, "gpu_held_objects", json_integer((json_int_t)e->n_held_objects));
    pthread_mutex_unlock(&e->hold_mu);
    json_t *out = json_pack("{s:b, s:s, s:i, s:s, s:[], s:{}, s:I, s:I, s:o, s:o, s:o}", "is_healthy", 1, "engine_type",
                     "lmcd", "chunk_size", e->o.chunk_size, "hash_algorithm", e->hash_name, "registered_gpu_ids",
                     "gpu_context_meta", "active_sessions", (json_int_t)sessions, "active_prefetch_jobs",
                     (json_int_t)atomic_load(&e->active_jobs), "engine_driven_instances", instances_json(e),
                     "storage_manager", sm, "counters", counters);
    json_object_set_new(out, "session_bytes", json_integer((json_int_t)atomic_load(&e->session_bytes)));
    json_object_set_new(out, "limits", limits);
    return out;
}
