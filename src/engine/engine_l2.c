/*
 * engine_l2: the engine's side of the L2 tier (src/l2/l2_tier.h). The
 * engine stays ignorant of which adapters run: it hands published keys to
 * the StoreController and, on LOOKUP, the keys after the L1 prefix to the
 * PrefetchController, whose answers come back here on the tier's thread:
 *
 *   LOOKUP -> L1 prefix (engine.c) -> engine_l2_prefetch: job = JOB_LOOKUP
 *   tier: on_lookup(chunks)  -> job = JOB_LOAD, job_hits = L1 + L2 found
 *   tier: on_done(keys,refs) -> loaded objects' read locks join the
 *         session's lookup locks, job = JOB_DONE, job_chunks = L1 + loaded,
 *         on_job_done wakes parked WAIT_PREFETCH_STATUS requests.
 *
 * A newer LOOKUP, END_SESSION or a forced CLEAR in between makes the
 * answer stale (job_gen / job state): its locks are released here.
 */
#define LOG_MODULE "lmcd.engine"
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine_int.h"
#include "util/log.h"


int engine_l2_create(struct engine *e)
{
    struct l2_tier_opts o = {
        .l1 = e->l1,
        .adapters = e->o.l2_adapters,
        .store_policy = e->o.l2_store_policy,
        .prefetch_max_in_flight = e->o.l2_prefetch_max_in_flight,
        .load_timeout_ms = e->o.l2_load_timeout_ms,
        .writer = ENGINE_L2_WRITER, /* never a worker id (engine_register_ed) */
    };
    if (!e->o.l2_adapters || !json_array_size(e->o.l2_adapters))
        return 0;
    return l2_tier_create(&o, &e->l2);
}

void engine_l2_destroy(struct engine *e)
{
    l2_tier_destroy(e->l2);
    e->l2 = NULL;
}

static void learn_size(struct engine *e, uint64_t ns, uint64_t size)
{
    if (!size)
        return;
    pthread_mutex_lock(&e->size_mu);
    size_t n = sizeof(e->sizes) / sizeof(e->sizes[0]), i;
    for (i = 0; i < n && (e->sizes[i].ns != ns || !e->sizes[i].size); i++)
        ;
    if (i == n)
        i = e->sizes_next++ % n;
    e->sizes[i].ns = ns;
    e->sizes[i].size = size;
    pthread_mutex_unlock(&e->size_mu);
}

void engine_l2_stored(struct engine *e, const struct engine_key *k, const struct l1_key *keys, size_t n,
                      uint64_t obj_size)
{
    if (!n)
        return;
    learn_size(e, keys[0].ns, obj_size);
    if (e->l2)
        l2_tier_stored(e->l2, k->model_name, k->model_name_len, k->cache_salt, k->cache_salt_len, keys, n);
}

uint64_t engine_l2_object_size(struct engine *e, const struct engine_key *k)
{
    if (!e->l2)
        return 0;
    uint64_t size = 0;
    pthread_mutex_lock(&e->mu);
    struct htab_node *node, *tmp;
    HTAB_FOREACH_SAFE(&e->instances, node, tmp)
    {
        struct instance *in = htab_entry(node, struct instance, node);
        if (!size && in->world_size == k->world_size && strlen(in->model) == k->model_name_len &&
            !memcmp(in->model, k->model_name, k->model_name_len))
            size = in->object_bytes;
    }
    pthread_mutex_unlock(&e->mu);
    if (size)
        return size;
    uint64_t ns = keys_ns(k->model_name, k->model_name_len, k->cache_salt, k->cache_salt_len);
    pthread_mutex_lock(&e->size_mu);
    for (size_t i = 0; i < sizeof(e->sizes) / sizeof(e->sizes[0]); i++)
        if (e->sizes[i].ns == ns && e->sizes[i].size)
            size = e->sizes[i].size;
    pthread_mutex_unlock(&e->size_mu);
    return size;
}

struct pf_ctx {
    struct engine *e;
    uint64_t gen;
    int64_t l1_chunks;
    uint32_t readers, world;
    size_t rid_len, model_len, salt_len; /* model and salt follow rid in rid[] (metrics labels) */
    char rid[];
};

static void pf_on_lookup(void *arg, size_t chunks)
{
    struct pf_ctx *c = arg;
    struct session *s = session_get(c->e, c->rid, c->rid_len, SESSION_FIND);
    if (!s)
        return;
    if (s->job_gen == c->gen && s->job == JOB_LOOKUP) {
        s->job = JOB_LOAD;
        s->job_hits = c->l1_chunks + (int64_t)chunks;
    }
    session_put(c->e, s);
}

static void pf_on_done(void *arg, const struct l1_key *keys, const struct l1_ref *refs, size_t n)
{
    struct pf_ctx *c = arg;
    struct engine *e = c->e;
    size_t kept = 0;
    struct session *s = session_get(e, c->rid, c->rid_len, SESSION_FIND);
    if (s && s->job_gen == c->gen && (s->job == JOB_LOOKUP || s->job == JOB_LOAD)) {
        for (; kept < n; kept++)
            if (lockvec_push(&s->locks, &keys[kept], refs[kept].id, refs[kept].lock_epoch, c->readers))
                break;
        kept = kept / c->world * c->world; /* whole chunks only */
        /* a chunk cut short by ENOMEM: give back what was pushed of it */
        if (kept < n)
            lockvec_release_keys(e, &s->locks, &keys[kept], n - kept, c->readers);
        if (s->job == JOB_LOOKUP)
            s->job_hits = c->l1_chunks + (int64_t)(kept / c->world);
        s->job = JOB_DONE;
        s->job_chunks = c->l1_chunks + (int64_t)(kept / c->world);
        atomic_fetch_add(&e->l2_hit_chunks, kept / c->world);
        /* the L1 part was counted at LOOKUP; this thread's own metrics row */
        const char *model = c->rid + c->rid_len + 1, *salt = model + c->model_len + 1;
        struct met_row *mr = metrics_row(model, c->model_len, salt, c->salt_len);
        uint64_t toks = (uint64_t)(kept / c->world) * (uint64_t)e->o.chunk_size;
        metrics_row_add(mr, MET_ROW_LOOKUP_HIT, toks);
        metrics_row_add(mr, MET_ROW_LOOKUP_HIT_L2, toks);
        metrics_row_add(mr, MET_ROW_LOOKUP_HIT_L2_KEYS, kept);
    }
    if (s)
        session_put(e, s);
    /* stale answer or what could not be recorded: its locks go now */
    for (size_t i = kept; i < n; i++)
        l1_unlock_refs(e->l1, &keys[i], &refs[i], 1, c->readers);
    if (e->o.on_job_done)
        e->o.on_job_done(e->o.on_job_done_ctx, c->rid, c->rid_len);
    free(c);
}

int engine_l2_prefetch(struct engine *e, struct session *s, const struct engine_key *k, const struct l1_key *keys,
                       size_t n, uint32_t world, int64_t l1_chunks, uint32_t readers, uint64_t obj_size)
{
    if (!e->l2 || !n || !obj_size)
        return -ENOENT;
    struct pf_ctx *c = malloc(sizeof(*c) + k->request_id_len + 1 + k->model_name_len + 1 + k->cache_salt_len + 1);
    if (!c)
        return -ENOMEM;
    c->e = e;
    c->gen = s->job_gen;
    c->l1_chunks = l1_chunks;
    c->readers = readers;
    c->world = world;
    c->rid_len = k->request_id_len;
    memcpy(c->rid, k->request_id, k->request_id_len);
    c->rid[k->request_id_len] = 0;
    c->model_len = k->model_name_len;
    c->salt_len = k->cache_salt_len;
    char *model = c->rid + c->rid_len + 1, *salt = model + c->model_len + 1;
    if (c->model_len)
        memcpy(model, k->model_name, c->model_len);
    model[c->model_len] = 0;
    if (c->salt_len)
        memcpy(salt, k->cache_salt, c->salt_len);
    salt[c->salt_len] = 0;
    struct l2_prefetch_req r = {
        .model = k->model_name,
        .model_len = k->model_name_len,
        .salt = k->cache_salt,
        .salt_len = k->cache_salt_len,
        .keys = keys,
        .n = n,
        .world = world,
        .obj_size = obj_size,
        .readers = readers,
        .on_lookup = pf_on_lookup,
        .on_done = pf_on_done,
        .arg = c,
    };
    int rc = l2_tier_prefetch(e->l2, &r);
    if (rc < 0) {
        free(c);
        return rc;
    }
    s->job = JOB_LOOKUP;
    return 0;
}

int engine_l2_keys(struct engine *e, size_t adapter, const char *model, size_t page_size, const char *cursor,
                   json_t **out)
{
    *out = NULL;
    struct l2_adapter *a = l2_tier_adapter(e->l2, adapter);
    if (!a)
        return -ENOENT;
    struct l2_key_page pg;
    int rc = l2_list_keys(a, model, page_size, cursor, &pg);
    if (rc < 0)
        return rc;
    json_t *keys = json_array();
    for (size_t i = 0; i < pg.n; i++)
        json_array_append_new(keys, json_string(pg.keys[i]));
    *out = json_pack("{s:s, s:s, s:o, s:s?}", "adapter", a->name, "model_name", model, "keys", keys,
                     "next_page_token", pg.next_cursor);
    l2_key_page_free(&pg);
    return *out ? 0 : -ENOMEM;
}

int engine_delete_objects(struct engine *e, const char *const *keys, size_t n, const char *tier, bool force,
                          size_t *l1_removed, size_t *l2_removed, size_t *invalid)
{
    *l1_removed = *l2_removed = *invalid = 0;
    bool l1 = !strcmp(tier, "l1") || !strcmp(tier, "all");
    bool l2 = !strcmp(tier, "l2") || !strcmp(tier, "all");
    if (!l1 && !l2)
        return -EINVAL;
    for (size_t i = 0; i < n; i++) {
        struct l2_key k;
        if (l2_key_parse(keys[i], strlen(keys[i]), &k) < 0) {
            (*invalid)++;
            continue;
        }
        if (l1) {
            struct l1_key lk;
            memset(&lk, 0, sizeof(lk));
            memcpy(lk.chunk_hash, k.hash, 32);
            lk.ns = keys_ns(k.model, k.model_len, k.salt, k.salt_len);
            lk.kv_rank = k.kv_rank;
            lk.group = k.group;
            int rc = l1_remove(e->l1, &lk, NULL, 1, force);
            *l1_removed += rc > 0 ? (size_t)rc : 0;
        }
        if (l2 && e->l2) {
            int rc = l2_tier_delete(e->l2, &k, 1);
            *l2_removed += rc > 0 ? (size_t)rc : 0;
        }
    }
    return 0;
}
