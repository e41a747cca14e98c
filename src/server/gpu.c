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
 * the reply goes before that.
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
    };
    uint64_t len = 0;
    void *base = engine_l1_base(s->engine, &len);
    char why[200] = "";
    int rc = ops->open(&o, base, (size_t)len, &s->gpu, why, sizeof(why));
    if (rc) {
        s->gpu = NULL;
        snprintf(s->gpu_why, sizeof(s->gpu_why), "%s", why[0] ? why : strerror(-rc));
        log_warn("GPU path unavailable (%s): GPU workers' requests get the no-CUDA answer, engine-driven workers "
                 "are served", s->gpu_why);
        return;
    }
    s->gpu_ops = ops;
    log_info("GPU path: CUDA driver loaded (mode %s, copy path %s); L1 is pinned in the background from the first "
             "GPU registration on, as far as it is committed", mode, o.copy_path == TRANSFER_PATH_STAGING ? "staging"
                                                                                                          : "direct");
}

/* /status and /metrics read the backend's counters from HTTP threads,
 * which may still run while the server stops: the backend goes away under
 * this lock. Handlers need none (they stopped before srv_gpu_close). */
static pthread_mutex_t gpu_stat_mu = PTHREAD_MUTEX_INITIALIZER;

void srv_gpu_close(struct server *s)
{
    pthread_mutex_lock(&gpu_stat_mu);
    struct transfer_backend *b = s->gpu;
    const struct transfer_ops *ops = s->gpu_ops;
    s->gpu = NULL;
    s->gpu_ops = NULL;
    pthread_mutex_unlock(&gpu_stat_mu);
    if (b && ops)
        ops->close(b);
}

static bool gpu_stats(struct server *s, struct transfer_stats *st)
{
    pthread_mutex_lock(&gpu_stat_mu);
    bool ok = s->gpu && s->gpu_ops && s->gpu_ops->stats;
    if (ok)
        s->gpu_ops->stats(s->gpu, st);
    pthread_mutex_unlock(&gpu_stat_mu);
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
    /* Re-registering replaces, on both sides: the GPU side first, which
     * waits out the copies in flight (their completions commit to the
     * engine), so no kernel writes into reservations the engine dropped. */
    s->gpu_ops->unregister(s->gpu, iid);
    engine_unregister(s->engine, iid);
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
        s->gpu_ops->unregister(s->gpu, iid);
    return rc;
}

/* What a queued copy's completion does to the engine: publish (or drop)
 * a STORE's reservations, release a RETRIEVE's read locks. Owns a deep copy
 * of the key: the request is long gone by then. */
struct gpu_done {
    struct engine *e;
    int64_t iid;
    bool store;
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
    if (d->store)
        engine_commit_store(d->e, &d->k, d->iid, ok ? 0 : 1); /* 1: drop, never publish */
    else
        engine_commit_retrieve(d->e, &d->k, d->iid);
    if (!ok)
        log_warn("%s from instance %lld: the copy failed; %s", d->store ? "STORE" : "RETRIEVE", (long long)d->iid,
                 d->store ? "nothing of it was published" : "the worker's blocks hold undefined bytes");
    free(d);
}

/* Queues one copy of the chunks `sl` names (for a STORE, chunk_indices
 * relative to `sub`), whose completion commits `sub`. Records the reply
 * event into r->gpu_event. 0 with *queued: the completion owns the
 * engine side; otherwise the caller releases it. */
static int gpu_copy(struct server *s, struct srv_req *r, bool store, const struct engine_key *sub,
                    const struct engine_slots *sl, const int64_t *ids, size_t nb, int64_t skip_blocks,
                    bool *queued, char *why, size_t why_len)
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
    if (rc == 0 && *queued)
        d = NULL; /* the completion frees it */
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
        snprintf(why, why_len, "instance not registered");
        return -ENOENT;
    }
    const struct wire_block_ids *b = &r->req.blocks;
    size_t nb = b->n_groups ? b->group_off[1] - b->group_off[0] : b->n_ids; /* one KV group is served */
    const int64_t *ids = b->n_groups ? b->ids + b->group_off[0] : b->ids;
    int64_t C = s->cfg->mp.chunk_size, bs = geo.block_size, bpc = C / bs;
    struct engine_slots sl;
    bool queued = false, ok = true, evented = false;
    int rc = 0;
    if (store) {
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
            rc = gpu_copy(s, r, true, &sub, &sl, ids + a * bpc, (size_t)((e - a) * bpc), 0, &queued, why, why_len);
            if (!queued) { /* not queued: drop the reservations now */
                engine_commit_store(s->engine, &sub, iid, 1);
                ok = false;
            }
            engine_slots_free(&sl);
            if (rc)
                return rc; /* no valid event */
            evented = true;
        }
    } else {
        memset(&sl, 0, sizeof(sl));
        int prc = engine_prepare_retrieve(s->engine, k, iid, &sl);
        if (prc)
            memset(&sl, 0, sizeof(sl));
        int64_t skip = r->req.skip_first_n_tokens > 0 ? r->req.skip_first_n_tokens / bs : 0;
        rc = gpu_copy(s, r, false, k, &sl, ids, nb, skip, &queued, why, why_len);
        if (prc == 0 && !queued) /* nothing will complete: release the locks now */
            engine_commit_retrieve(s->engine, k, iid);
        engine_slots_free(&sl);
        if (rc)
            return rc;
        ok = prc == 0 && queued;
        evented = true;
    }
    if (!evented) { /* nothing to copy: the reply still carries an event, after the client's */
        memset(&sl, 0, sizeof(sl));
        if ((rc = gpu_copy(s, r, store, k, &sl, ids, nb, 0, &queued, why, why_len)))
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
