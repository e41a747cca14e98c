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
 * (spec 7.4): either kind of worker reads what the other wrote.
 *
 * NOT RUN ON A GPU YET (docs/gpu.md).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/dispatch.h"
#include "server/server.h"
#include "transfer/transfer.h"
#include "util/log.h"

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
    struct transfer_opts o = {
        .null_block_id = s->cfg->mp.null_block_id,
        .isolated_ipc = s->cfg->mp.isolated_ipc,
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
    log_info("GPU path: CUDA driver loaded (mode %s); L1 is pinned at the first GPU registration", mode);
}

void srv_gpu_close(struct server *s)
{
    if (s->gpu && s->gpu_ops)
        s->gpu_ops->close(s->gpu);
    s->gpu = NULL;
    s->gpu_ops = NULL;
}

int srv_gpu_register(struct server *s, struct srv_req *r, char *why, size_t why_len)
{
    int64_t iid = r->req.instance_id;
    struct transfer_geom g;
    memset(&g, 0, sizeof(g));
    engine_unregister(s->engine, iid); /* re-registering replaces, on both sides */
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

int srv_gpu_transfer(struct server *s, struct srv_req *r, const struct engine_key *k, char *why, size_t why_len)
{
    bool store = r->req.op == WIRE_OP_STORE;
    int64_t iid = r->req.instance_id;
    struct engine_slots sl;
    memset(&sl, 0, sizeof(sl));
    /* STORE: reservations for the chunks not present (none: nothing to do).
     * RETRIEVE: every chunk present and read-locked, else a miss. */
    int prc = store ? engine_prepare_store(s->engine, k, iid, &sl) : engine_prepare_retrieve(s->engine, k, iid, &sl);
    if (prc)
        memset(&sl, 0, sizeof(sl));
    uint64_t len = 0;
    uint8_t *base = engine_l1_base(s->engine, &len);
    void **ptrs = sl.n ? calloc(sl.n, sizeof(*ptrs)) : NULL;
    int64_t *idx = sl.n && !store ? calloc(sl.n, sizeof(*idx)) : NULL;
    int rc = -ENOMEM;
    if (sl.n && (!ptrs || (!store && !idx)))
        goto out;
    for (size_t i = 0; i < sl.n; i++) {
        ptrs[i] = base + sl.slots[i].offset;
        if (!store)
            idx[i] = (int64_t)i;
    }
    const struct wire_block_ids *b = &r->req.blocks;
    size_t nb = b->n_groups ? b->group_off[1] - b->group_off[0] : b->n_ids; /* one KV group is served */
    const int64_t *ids = b->n_groups ? b->ids + b->group_off[0] : b->ids;
    int64_t bs = 0;
    if (nb)
        bs = (k->end - k->start) / (int64_t)nb;
    struct transfer_copy c = {
        .instance = iid,
        .store = store,
        .block_ids = ids,
        .n_blocks = nb,
        .chunk_tokens = (uint32_t)s->cfg->mp.chunk_size,
        .chunk_index = store ? sl.chunk_indices : idx,
        .chunk_ptr = ptrs,
        .n_chunks = sl.n,
        .skip_blocks = bs > 0 ? r->req.skip_first_n_tokens / bs : 0,
        .client_event = r->req.event_ipc_handle.ptr,
        .client_event_len = r->req.event_ipc_handle.len,
    };
    bool copied = false;
    rc = s->gpu_ops->copy(s->gpu, &c, r->gpu_event, &copied, why, why_len);
    if (store && sl.n) /* publish what was copied; a failed copy drops its reservations */
        engine_commit_store(s->engine, k, iid, copied ? 0 : 1);
    if (!store && prc == 0) /* the copy is complete (or failed): release the locks */
        engine_commit_retrieve(s->engine, k, iid);
    if (rc == 0) {
        r->resp.kind = WIRE_RESP_EVENT_BOOL;
        r->resp.event.ptr = r->gpu_event;
        r->resp.event.len = TRANSFER_EVENT_BYTES;
        r->resp.b = store ? (sl.n == 0 || copied) : (prc == 0 && copied);
        if (store && !copied && sl.n && why[0])
            log_warn("STORE from instance %lld skipped: %s", (long long)iid, why);
    }
out:
    free(ptrs);
    free(idx);
    engine_slots_free(&sl);
    return rc;
}
