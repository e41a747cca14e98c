/*
 * gpu: the server side of the GPU (LMCache-driven) path, over the transfer
 * backend (transfer.h) and the engine. server_init calls srv_gpu_open before
 * any pool thread starts and server_destroy calls srv_gpu_close after they
 * stopped, so handlers read s->gpu / s->gpu_ops without a lock. Without a
 * backend, s->gpu_why says why, for the one log line per worker that
 * dispatch.c writes.
 *
 * A GPU registration also registers the instance on the engine as its
 * engine-driven twin (same block size, layers, hidden size, dtype, MLA), so
 * STORE/RETRIEVE reuse the engine's reservations, publication and read
 * locks, and the chunk objects are the bytes an engine-driven worker stores
 * (spec 7.4): either kind of worker reads what the other wrote. A copy's
 * engine side (publishing a STORE, releasing a RETRIEVE's read locks) runs
 * in the backend's completion thread once the copy completed (gpu_done_cb);
 * the reply goes before that. The copy's reservations or read locks are
 * held apart from the instance meanwhile (engine_hold_*), so that neither
 * UNREGISTER nor reaping releases memory a DMA may still touch.
 *
 * Lifecycle: the engine's sweeper calls srv_gpu_on_reap (outside engine
 * locks) when it reaps a silent worker: its GPU registration is closed as
 * an UNREGISTER closes it, without waiting (a copy still queued keeps its
 * mappings until it completes; the backend's reaper thread frees the
 * driver resources, so the hook never waits for the GPU, not even for
 * another worker's copy stuck on its event, while it holds the lock that
 * /status, /metrics and srv_gpu_close take). Its engine registration
 * stays, as for any reaped worker; its STOREs/RETRIEVEs are left
 * unanswered (there is no registration to record a valid event on, spec
 * 9.3) with one ERROR line per reap, until it sends REGISTER_KV_CACHE
 * again.
 *
 * Run end to end against an emulated driver (tests/e2e/test_gpu_emulated.py);
 * NOT RUN ON A GPU YET (docs/gpu.md).
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/dispatch.h"
#include "server/server.h"
#include "transfer/transfer.h"
#include "util/log.h"

/* The pinning thread asks which slices of a lazy L1 exist (transfer_opts). */
static bool gpu_l1_backed(void *arg, uint64_t off, uint64_t len)
{
    return engine_l1_backed(arg, off, len);
}

static uint64_t gpu_l1_gen(void *arg)
{
    return engine_l1_generation(arg);
}

/* Reaped GPU workers (closed by srv_gpu_on_reap, not re-registered yet):
 * their requests get one ERROR line per reap, their first PING one line.
 * `lock` is a leaf held briefly (the loop thread takes it on PING);
 * `gpu_mu` orders the sweeper's hook against srv_gpu_open/close and is held
 * while the hook closes a registration, which only takes it out of the
 * backend's table and queues it for freeing (never a wait on the GPU), so
 * /status and /metrics, which take gpu_mu too, answer at once. */
#define GPU_REAPED_MAX 256
static struct {
    pthread_mutex_t lock;
    pthread_mutex_t gpu_mu;
    int64_t ids[GPU_REAPED_MAX];
    bool logged[GPU_REAPED_MAX], pinged[GPU_REAPED_MAX];
    unsigned n, next;
} reaped = { .lock = PTHREAD_MUTEX_INITIALIZER, .gpu_mu = PTHREAD_MUTEX_INITIALIZER };

static int reaped_find(int64_t iid)
{
    for (unsigned i = 0; i < reaped.n; i++)
        if (reaped.ids[i] == iid)
            return (int)i;
    return -1;
}

static void reaped_forget(int64_t iid)
{
    pthread_mutex_lock(&reaped.lock);
    int i = reaped_find(iid);
    if (i >= 0)
        reaped.ids[i] = -1; /* instance ids are >= 0 (engine_register_ed) */
    pthread_mutex_unlock(&reaped.lock);
}

void srv_gpu_on_reap(void *ctx, int64_t iid)
{
    struct server *s = ctx;
    pthread_mutex_lock(&reaped.gpu_mu);
    struct transfer_geom g;
    bool closed = s->gpu && s->gpu_ops->geometry(s->gpu, iid, &g) == 0;
    if (closed)
        s->gpu_ops->unregister(s->gpu, iid, false);
    pthread_mutex_unlock(&reaped.gpu_mu);
    if (!closed)
        return;
    pthread_mutex_lock(&reaped.lock);
    int i = reaped_find(iid);
    if (i < 0) {
        i = (int)reaped.next;
        reaped.next = (reaped.next + 1) % GPU_REAPED_MAX;
        if (reaped.n < GPU_REAPED_MAX)
            reaped.n++;
    }
    reaped.ids[i] = iid;
    reaped.logged[i] = reaped.pinged[i] = false;
    pthread_mutex_unlock(&reaped.lock);
    log_warn("GPU worker instance %lld reaped for silence: its GPU registration is closed (IPC mappings, stream, "
             "events; copies still queued complete first); it must send REGISTER_KV_CACHE again, and until then "
             "its STORE/RETRIEVE are left unanswered", (long long)iid);
}

void srv_gpu_on_ping(int64_t iid)
{
    pthread_mutex_lock(&reaped.lock);
    int i = reaped_find(iid);
    bool first = i >= 0 && !reaped.pinged[i];
    if (first)
        reaped.pinged[i] = true;
    pthread_mutex_unlock(&reaped.lock);
    if (first)
        log_warn("GPU worker instance %lld is back (PING) after being reaped, but its GPU registration was closed: "
                 "it must send REGISTER_KV_CACHE again (restart the worker); until then its STORE/RETRIEVE are left "
                 "unanswered", (long long)iid);
}

/* One ERROR line per reap for a reaped worker's request; true when `iid`
 * is a reaped GPU worker (its why says so). */
static bool reaped_request(const char *op, int64_t iid, char *why, size_t why_len)
{
    pthread_mutex_lock(&reaped.lock);
    int i = reaped_find(iid);
    bool first = i >= 0 && !reaped.logged[i];
    if (first)
        reaped.logged[i] = true;
    pthread_mutex_unlock(&reaped.lock);
    if (i < 0)
        return false;
    snprintf(why, why_len, "its GPU registration was closed when lmcd reaped it for silence "
                           "(--worker-reap-timeout-seconds); it must send REGISTER_KV_CACHE again");
    if (first)
        log_error("%s from instance %lld left unanswered: %s (restart the worker, or raise "
                  "--worker-reap-timeout-seconds)", op, (long long)iid, why);
    return true;
}

static struct log_ratelimit groups_rl = LOG_RATELIMIT_INIT(60000, 5);

void srv_gpu_open(struct server *s)
{
    const char *mode = s->cfg->mp.supported_transfer_mode ? s->cfg->mp.supported_transfer_mode : "auto";
    const struct transfer_ops *ops = transfer_cuda();
    if (!strcmp(mode, "engine_driven")) {
        snprintf(s->gpu_why, sizeof(s->gpu_why), "--supported-transfer-mode engine_driven");
        return;
    }
    if (!ops) {
        snprintf(s->gpu_why, sizeof(s->gpu_why), "this lmcd was built without nvcc (no CUDA backend)");
        log_info("GPU path: none in this build; serving the engine-driven path only");
        return;
    }
    if (!s->engine) {
        snprintf(s->gpu_why, sizeof(s->gpu_why), "no cache engine");
        return;
    }
    const char *path = s->cfg->mp.gpu_copy_path ? s->cfg->mp.gpu_copy_path : "auto";
    struct transfer_opts o = {
        .null_block_id = s->cfg->mp.null_block_id,
        .isolated_ipc = s->cfg->mp.isolated_ipc,
        .copy_path = !strcmp(path, "staging") ? TRANSFER_PATH_STAGING
                     : !strcmp(path, "direct") ? TRANSFER_PATH_DIRECT
                                               : TRANSFER_PATH_AUTO,
        .host_backed = gpu_l1_backed,
        .host_gen = gpu_l1_gen,
        .host_arg = s->engine,
        .event_timeout_s = s->cfg->mp.gpu_event_timeout_seconds,
    };
    uint64_t len = 0;
    void *base = engine_l1_base(s->engine, &len);
    char why[200] = "";
    struct transfer_backend *b = NULL;
    int rc = ops->open(&o, base, (size_t)len, &b, why, sizeof(why));
    if (rc) {
        snprintf(s->gpu_why, sizeof(s->gpu_why), "%s", why[0] ? why : strerror(-rc));
        log_warn("GPU path unavailable (%s): GPU workers' requests get the no-CUDA answer, engine-driven workers "
                 "are served", s->gpu_why);
        return;
    }
    pthread_mutex_lock(&reaped.gpu_mu); /* the engine's sweeper already runs: its hook reads these */
    s->gpu_ops = ops;
    s->gpu = b;
    pthread_mutex_unlock(&reaped.gpu_mu);
    log_info("GPU path: CUDA driver loaded (mode %s, copy path %s); L1 is pinned in the background from the first "
             "GPU registration on, as far as it is committed", mode, o.copy_path == TRANSFER_PATH_STAGING ? "staging"
                                                                                                          : "direct");
}

void srv_gpu_close(struct server *s)
{
    pthread_mutex_lock(&reaped.gpu_mu); /* the sweeper's hook sees one or the other */
    struct transfer_backend *b = s->gpu;
    const struct transfer_ops *ops = s->gpu_ops;
    s->gpu = NULL;
    s->gpu_ops = NULL;
    pthread_mutex_unlock(&reaped.gpu_mu);
    if (b && ops)
        ops->close(b);
}

/* /status and /metrics read the backend's counters from HTTP threads,
 * which may still run while the server stops: the backend goes away under
 * reaped.gpu_mu (srv_gpu_close). */
static bool gpu_stats(struct server *s, struct transfer_stats *st)
{
    pthread_mutex_lock(&reaped.gpu_mu);
    bool ok = s->gpu && s->gpu_ops && s->gpu_ops->stats;
    if (ok)
        s->gpu_ops->stats(s->gpu, st);
    pthread_mutex_unlock(&reaped.gpu_mu);
    return ok;
}

json_t *srv_gpu_status_json(struct server *s)
{
    struct transfer_stats st;
    if (!gpu_stats(s, &st))
        return json_pack("{s:b, s:s}", "enabled", 0, "why", s->gpu_why);
    const char *state = st.pin_stopped ? "stopped"
                        : st.pinning   ? (st.slices_pinned ? "pinning" : "waiting")
                        : st.slices_pinned + st.slices_failed == st.slices ? "done"
                                                                           : "not_started";
    return json_pack("{s:b, s:s, s:{s:s, s:I, s:I, s:I, s:I, s:I, s:I}, s:{s:I, s:I, s:I}}", "enabled", 1,
                     "copy_path", st.copy_path, "l1_pinning", "state", state, "segment_bytes",
                     (json_int_t)st.host_bytes, "pinned_bytes", (json_int_t)st.pinned_bytes, "slice_bytes",
                     (json_int_t)st.slice_bytes, "slices", (json_int_t)st.slices, "pinned_slices",
                     (json_int_t)st.slices_pinned, "failed_slices", (json_int_t)st.slices_failed, "objects", "direct",
                     (json_int_t)st.obj_direct, "staged", (json_int_t)st.obj_staged, "bounced",
                     (json_int_t)st.obj_bounced);
}

void srv_gpu_metrics(FILE *b, struct server *s)
{
    struct transfer_stats st;
    if (!gpu_stats(s, &st))
        return; /* no GPU path: no samples, which is the truth */
    fprintf(b, "# HELP lmcd_gpu_l1_pinned_bytes L1 bytes registered for DMA (pinned in the background).\n"
               "# TYPE lmcd_gpu_l1_pinned_bytes gauge\nlmcd_gpu_l1_pinned_bytes %llu\n",
            (unsigned long long)st.pinned_bytes);
    fprintf(b, "# HELP lmcd_gpu_l1_pin_failed_slices L1 slices whose pinning failed (served by bounce buffers).\n"
               "# TYPE lmcd_gpu_l1_pin_failed_slices gauge\nlmcd_gpu_l1_pin_failed_slices %llu\n",
            (unsigned long long)st.slices_failed);
    fprintf(b, "# HELP lmcd_gpu_objects_total Chunk objects moved by GPU STORE/RETRIEVE, by path.\n"
               "# TYPE lmcd_gpu_objects_total counter\n"
               "lmcd_gpu_objects_total{path=\"direct\"} %llu\nlmcd_gpu_objects_total{path=\"staging\"} %llu\n"
               "lmcd_gpu_objects_total{path=\"bounce\"} %llu\n",
            (unsigned long long)st.obj_direct, (unsigned long long)st.obj_staged, (unsigned long long)st.obj_bounced);
}

int srv_gpu_register(struct server *s, struct srv_req *r, char *why, size_t why_len)
{
    int64_t iid = r->req.instance_id;
    struct transfer_geom g;
    memset(&g, 0, sizeof(g));
    /* Hybrid models (several KV groups: sliding-window and full attention,
     * Mamba state) need one object group per KV group; serving one group
     * and dropping the others would hand the model wrong KV. The
     * engine-driven path refuses them too. */
    if (r->req.reg.n_engine_groups > 1) {
        snprintf(why, why_len, "%zu KV groups (engine_group_infos: a hybrid model) are not served by lmcd; run "
                 "vLLM with --disable-hybrid-kv-cache-manager (one KV group) or without lmcd's cache",
                 r->req.reg.n_engine_groups);
        return -ENOTSUP;
    }
    /* Re-registering replaces, on both sides: the GPU side first, which
     * waits out this worker's copies in flight unless they are stuck on
     * its event (never another worker's, nor the freeing of the old
     * registration: the backend's reaper does that); their reservations
     * and locks are held apart (engine_hold_*), so dropping the engine side
     * never frees memory a copy may touch. */
    s->gpu_ops->unregister(s->gpu, iid, true);
    engine_unregister(s->engine, iid);
    reaped_forget(iid);
    int rc = s->gpu_ops->register_kv(s->gpu, iid, &r->req.reg, &g, why, why_len);
    if (rc)
        return rc;
    struct engine_ed_register er = {
        .instance_id = iid,
        .model_name = r->req.model_name.ptr,
        .model_name_len = r->req.model_name.len,
        .world_size = r->req.world_size,
        .block_size = g.block_size,
        .num_layers = g.num_layers,
        .hidden_dim_size = g.hidden,
        .dtype = g.dtype,
        .dtype_len = strlen(g.dtype),
        .use_mla = g.mla,
    };
    struct engine_ed_reply rep;
    memset(&rep, 0, sizeof(rep));
    rc = engine_register_ed(s->engine, &er, &rep);
    if (rc == 0 && rep.error) {
        snprintf(why, why_len, "the engine refused the layout: %s", rep.error);
        rc = -EINVAL;
    } else if (rc) {
        snprintf(why, why_len, "engine registration: %s", strerror(-rc));
    }
    engine_ed_reply_free(&rep);
    if (rc)
        s->gpu_ops->unregister(s->gpu, iid, true);
    return rc;
}

/* What a queued copy's completion does to the engine: publish (or drop)
 * a STORE's reservations, release a RETRIEVE's read locks, both held apart
 * from the instance (engine_hold_*). Owns a deep copy of the key: the
 * request is long gone by then. */
struct gpu_done {
    struct engine *e;
    int64_t iid;
    bool store;
    struct engine_hold *hold;
    struct engine_key k;
};

static char *dup_into(char **p, const char *src, size_t n)
{
    char *d = *p;
    if (n)
        memcpy(d, src, n);
    d[n] = '\0';
    *p += n + 1;
    return d;
}

static struct gpu_done *gpu_done_new(struct server *s, int64_t iid, bool store, const struct engine_key *k,
                                     int64_t start, int64_t end)
{
    size_t tb = k->n_tokens * sizeof(uint32_t);
    struct gpu_done *d =
        malloc(sizeof(*d) + tb + k->model_name_len + k->request_id_len + k->cache_salt_len + 3);
    if (!d)
        return NULL;
    d->e = s->engine;
    d->iid = iid;
    d->store = store;
    d->hold = NULL;
    d->k = *k;
    d->k.start = start;
    d->k.end = end;
    char *p = (char *)(d + 1); /* sizeof(*d) keeps the tokens aligned */
    if (tb)
        memcpy(p, k->token_ids, tb);
    d->k.token_ids = (const uint32_t *)p;
    p += tb;
    d->k.model_name = dup_into(&p, k->model_name, k->model_name_len);
    d->k.request_id = dup_into(&p, k->request_id, k->request_id_len);
    d->k.cache_salt = dup_into(&p, k->cache_salt, k->cache_salt_len);
    return d;
}

/* On the backend's completion thread. */
static void gpu_done_cb(void *arg, bool ok)
{
    struct gpu_done *d = arg;
    engine_hold_end(d->e, d->hold, &d->k, ok); /* a failed STORE is dropped, never published */
    if (!ok)
        log_warn("%s from instance %lld: the copy failed; %s", d->store ? "STORE" : "RETRIEVE", (long long)d->iid,
                 d->store ? "nothing of it was published" : "the worker's blocks hold undefined bytes");
    free(d);
}

/* Queues one copy of the chunks `sl` names (for a STORE, chunk_indices
 * relative to `sub`), whose completion ends `hold` (taken for `sub`; NULL
 * with no chunks). Records the reply event into r->gpu_event. 0 with
 * *queued: the completion owns the hold; otherwise the caller ends it. */
static int gpu_copy(struct server *s, struct srv_req *r, bool store, const struct engine_key *sub,
                    const struct engine_slots *sl, struct engine_hold *hold, const int64_t *ids, size_t nb,
                    int64_t skip_blocks, bool *queued, char *why, size_t why_len)
{
    *queued = false;
    uint64_t len = 0;
    uint8_t *base = engine_l1_base(s->engine, &len);
    void **ptrs = sl->n ? calloc(sl->n, sizeof(*ptrs)) : NULL;
    int64_t *idx = sl->n && !store ? calloc(sl->n, sizeof(*idx)) : NULL;
    struct gpu_done *d = sl->n ? gpu_done_new(s, r->req.instance_id, store, sub, sub->start, sub->end) : NULL;
    int rc = -ENOMEM;
    if (sl->n && (!ptrs || (!store && !idx) || !d))
        goto out;
    if (d)
        d->hold = hold;
    for (size_t i = 0; i < sl->n; i++) {
        ptrs[i] = base + sl->slots[i].offset;
        if (!store)
            idx[i] = (int64_t)i;
    }
    struct transfer_copy c = {
        .instance = r->req.instance_id,
        .store = store,
        .block_ids = ids,
        .n_blocks = nb,
        .chunk_tokens = (uint32_t)s->cfg->mp.chunk_size,
        .chunk_index = store ? sl->chunk_indices : idx,
        .chunk_ptr = ptrs,
        .n_chunks = sl->n,
        .skip_blocks = skip_blocks,
        .client_event = r->req.event_ipc_handle.ptr,
        .client_event_len = r->req.event_ipc_handle.len,
        .done = gpu_done_cb,
        .done_arg = d,
    };
    rc = s->gpu_ops->copy(s->gpu, &c, r->gpu_event, queued, why, why_len);
    if (*queued)
        d = NULL; /* the completion frees it (even with rc: no valid event, the copy still runs) */
out:
    free(d);
    free(ptrs);
    free(idx);
    return rc;
}

/* Whether chunk `c` of the range has a block whose bytes do not exist (the
 * null block id, or none sent). */
static bool chunk_has_null(const int64_t *ids, size_t nb, int64_t bpc, int64_t c, int64_t null_id)
{
    for (int64_t j = c * bpc; j < (c + 1) * bpc; j++)
        if ((size_t)j >= nb || ids[j] == null_id)
            return true;
    return false;
}

int srv_gpu_transfer(struct server *s, struct srv_req *r, const struct engine_key *k, char *why, size_t why_len)
{
    bool store = r->req.op == WIRE_OP_STORE;
    int64_t iid = r->req.instance_id;
    struct transfer_geom geo;
    if (s->gpu_ops->geometry(s->gpu, iid, &geo)) {
        if (reaped_request(r->req.op_name, iid, why, why_len))
            return -ESTALE; /* logged once per reap here */
        snprintf(why, why_len, "instance not registered");
        return -ENOENT;
    }
    /* One KV group is what a registration serves (multi-group ones are
     * refused). Block ids for more than one group would mean a hybrid
     * model's request: never a partial answer. The safest one the protocol
     * has is (valid event, false): nothing stored, a RETRIEVE miss (the
     * worker recomputes). */
    const struct wire_block_ids *b = &r->req.blocks;
    size_t groups = 0, g0 = 0;
    for (size_t g = 0; g < b->n_groups; g++)
        if (b->group_off[g + 1] > b->group_off[g] && groups++ == 0)
            g0 = g;
    size_t nb = b->n_groups ? b->group_off[g0 + 1] - b->group_off[g0] : b->n_ids;
    const int64_t *ids = b->n_groups ? b->ids + b->group_off[g0] : b->ids;
    int64_t C = s->cfg->mp.chunk_size, bs = geo.block_size, bpc = C / bs;
    struct engine_slots sl;
    bool queued = false, ok = true, evented = false;
    int rc = 0;
    if (groups > 1) {
        log_rl(&groups_rl, LOG_WARNING, "%s from instance %lld carries block ids for %zu KV groups (a hybrid model): "
               "not served (answered false: nothing stored / a miss); lmcd serves single-group models only",
               r->req.op_name, (long long)iid, groups);
        ok = false; /* the event-only reply below */
    } else if (store) {
        /* Chunks with a null block are skipped (their bytes do not exist),
         * the others stored: one reservation and copy per run of chunks
         * without one, each committed by its completion. The reply event is
         * the last one recorded, so it covers every copy of the request. */
        int64_t n_full = k->end > k->start ? (k->end - k->start) / C : 0;
        for (int64_t a = 0, e; a < n_full; a = e) {
            while (a < n_full && chunk_has_null(ids, nb, bpc, a, s->cfg->mp.null_block_id))
                a++;
            for (e = a; e < n_full && !chunk_has_null(ids, nb, bpc, e, s->cfg->mp.null_block_id); e++)
                ;
            if (a == e)
                break;
            struct engine_key sub = *k;
            sub.start = k->start + a * C;
            sub.end = k->start + e * C;
            memset(&sl, 0, sizeof(sl));
            if (engine_prepare_store(s->engine, &sub, iid, &sl) || !sl.n) {
                engine_slots_free(&sl);
                continue; /* all present (or nothing to reserve) */
            }
            struct engine_hold *h = NULL;
            if (engine_hold_store(s->engine, &sub, iid, sl.n, &h)) {
                engine_slots_free(&sl); /* released meanwhile (unregistered): nothing to copy into */
                ok = false;
                continue;
            }
            rc = gpu_copy(s, r, true, &sub, &sl, h, ids + a * bpc, (size_t)((e - a) * bpc), 0, &queued, why,
                          why_len);
            if (!queued) { /* not queued: drop the reservations now */
                engine_hold_end(s->engine, h, &sub, false);
                ok = false;
            }
            engine_slots_free(&sl);
            if (rc)
                return rc; /* no valid event */
            evented = true;
        }
    } else {
        memset(&sl, 0, sizeof(sl));
        struct engine_hold *h = NULL;
        int prc = engine_prepare_retrieve(s->engine, k, iid, &sl);
        if (prc == 0 && sl.n && engine_hold_retrieve(s->engine, k, iid, &h)) {
            engine_commit_retrieve(s->engine, k, iid); /* not all held: a miss */
            prc = -ENOENT;
        }
        if (prc || !h)
            engine_slots_free(&sl);
        int64_t skip = r->req.skip_first_n_tokens > 0 ? r->req.skip_first_n_tokens / bs : 0;
        why[0] = '\0';
        rc = gpu_copy(s, r, false, k, &sl, h, ids, nb, skip, &queued, why, why_len);
        if (h && !queued) /* nothing will complete: release the locks now */
            engine_hold_end(s->engine, h, k, true);
        else if (prc == 0 && !h)
            engine_commit_retrieve(s->engine, k, iid);
        engine_slots_free(&sl);
        if (rc)
            return rc;
        ok = prc == 0 && queued && !why[0]; /* queued in part (why says so): blocks left unwritten */
        evented = true;
    }
    if (!evented) { /* nothing to copy: the reply still carries an event, after the client's */
        memset(&sl, 0, sizeof(sl));
        if ((rc = gpu_copy(s, r, store, k, &sl, NULL, ids, nb, 0, &queued, why, why_len)))
            return rc;
    }
    r->resp.kind = WIRE_RESP_EVENT_BOOL;
    r->resp.event.ptr = r->gpu_event;
    r->resp.event.len = TRANSFER_EVENT_BYTES;
    r->resp.b = ok;
    if (store && !ok && why[0])
        log_warn("STORE from instance %lld: some chunks not stored: %s", (long long)iid, why);
    return 0;
}
