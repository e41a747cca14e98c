/*
 * dispatch.c: the handler table. Each handler is small: convert, call the
 * engine, fill the canonical response. What a failure becomes on the wire
 * follows mp_protocol.md 9.3 (a miss, an empty slot list, false, or no
 * reply), so a client's decoder never sees a reply it cannot decode.
 */
#define LOG_MODULE "lmcd.dispatch"
#include "server/dispatch.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "transfer/transfer.h"
#include "util/log.h"
#include "wire/pickle.h"

/* ------------------------------------------------------------ helpers */

/* Limiters for failures a client can provoke over and over; each guards
 * itself (log_ratelimit has its own lock word). */
static struct log_ratelimit lookup_rl = LOG_RATELIMIT_INIT(60000, 5);
static struct log_ratelimit inline_rl = LOG_RATELIMIT_INIT(60000, 5);

static void to_engine_key(const struct wire_key *w, struct engine_key *k)
{
    k->model_name = w->model_name.ptr;
    k->model_name_len = w->model_name.len;
    k->world_size = w->world_size;
    k->has_worker_id = w->has_worker_id;
    k->worker_id = w->worker_id;
    k->token_ids = w->token_ids;
    k->n_tokens = w->n_tokens;
    k->start = w->start;
    k->end = w->end;
    k->request_id = w->request_id.ptr;
    k->request_id_len = w->request_id.len;
    k->cache_salt = w->cache_salt.ptr;
    k->cache_salt_len = w->cache_salt.len;
    k->num_kv_readers = w->num_kv_readers;
}

#define KEY_OF(r, k)                                                                                  \
    struct engine_key k;                                                                              \
    to_engine_key(&(r)->req.key, &k)

static void resp_none(struct srv_req *r) { r->resp.kind = WIRE_RESP_NONE; }

static void resp_bool(struct srv_req *r, bool b)
{
    r->resp.kind = WIRE_RESP_BOOL;
    r->resp.b = b;
}

static void resp_int_or_nil(struct srv_req *r, int rc, int64_t v)
{
    r->resp.kind = WIRE_RESP_INT_OR_NIL;
    r->resp.is_nil = rc == -EAGAIN;
    /* a failure is a miss (0), never nil: nil means "ask again" (9.3) */
    r->resp.i = rc == 0 ? v : 0;
}

/*
 * Instances whose CUDA requests were already logged: one line per instance,
 * not one per request. Guarded by its own mutex (pool threads and the loop
 * both call in); bounded, oldest forgotten first.
 */
#define NOCUDA_SEEN_MAX 256
static struct {
    pthread_mutex_t lock;
    int64_t ids[NOCUDA_SEEN_MAX]; /* guarded by lock */
    unsigned n, next;             /* guarded by lock */
} nocuda = { PTHREAD_MUTEX_INITIALIZER, { 0 }, 0, 0 };

static bool nocuda_first(int64_t instance)
{
    bool first = true;
    pthread_mutex_lock(&nocuda.lock);
    for (unsigned i = 0; i < nocuda.n && first; i++)
        first = nocuda.ids[i] != instance;
    if (first) {
        nocuda.ids[nocuda.next] = instance;
        nocuda.next = (nocuda.next + 1) % NOCUDA_SEEN_MAX;
        if (nocuda.n < NOCUDA_SEEN_MAX)
            nocuda.n++;
    }
    pthread_mutex_unlock(&nocuda.lock);
    return first;
}

/* ------------------------------------------------------------ sync ops */

static void h_get_chunk_size(struct server *s, struct srv_req *r)
{
    r->resp.kind = WIRE_RESP_INT;
    r->resp.i = s->cfg->mp.chunk_size;
}

static void h_noop(struct server *s, struct srv_req *r)
{
    (void)s;
    r->resp.kind = WIRE_RESP_STR;
    r->resp.s = (struct wire_str){ "OK", 2 };
}

static void h_get_experimental(struct server *s, struct srv_req *r)
{
    (void)s;
    /* lmcd enables none of LMCache's experimental capabilities. */
    r->resp.kind = WIRE_RESP_STR_LIST;
    r->resp.n_strs = 0;
}

static void h_ping(struct server *s, struct srv_req *r)
{
    engine_ping(s->engine, r->req.has_instance_id, r->req.instance_id);
    if (r->req.has_instance_id)
        srv_gpu_on_ping(r->req.instance_id); /* a reaped GPU worker must register again */
    resp_bool(r, true);
}

/*
 * Reads the CUDA IPC descriptors (pickles, spec 10) so the log says what the
 * worker offered and a CUDA build needs only the CUDA calls: "n layers,
 * dtype, shape of layer 0", or which layer failed to parse and why.
 */
static void describe_descriptors(const struct wire_register *reg, char *buf, size_t cap)
{
    struct pickle_ipc ipc;
    size_t ok = 0;
    int first_err = 0;
    size_t bad_layer = 0;
    for (size_t i = 0; i < reg->n_descs; i++) {
        int rc = pickle_parse_ipc(reg->descs[i].ptr, reg->descs[i].len, &ipc);
        if (rc == 0) {
            ok++;
        } else if (!first_err) {
            first_err = rc;
            bad_layer = i;
        }
    }
    size_t o = (size_t)snprintf(buf, cap, "%zu of %zu layer descriptors readable", ok, reg->n_descs);
    if (reg->n_descs && pickle_parse_ipc(reg->descs[0].ptr, reg->descs[0].len, &ipc) == 0 && o < cap) {
        o += (size_t)snprintf(buf + o, cap - o, "; layer 0: %.*s.%.*s dtype %.*s, shape [", (int)ipc.module.len,
                              ipc.module.ptr, (int)ipc.cls.len, ipc.cls.ptr, (int)ipc.dtype.len, ipc.dtype.ptr);
        for (uint32_t d = 0; d < ipc.ndim && o < cap; d++)
            o += (size_t)snprintf(buf + o, cap - o, "%s%lld", d ? ", " : "", (long long)ipc.shape[d]);
        if (o < cap)
            o += (size_t)snprintf(buf + o, cap - o, "], device %lld", (long long)ipc.device_index);
    }
    if (first_err && o < cap)
        snprintf(buf + o, cap - o, "; layer %zu: %s", bad_layer, pickle_strerror(first_err));
}

static void h_register_kv_cache(struct server *s, struct srv_req *r)
{
    if (s->gpu) { /* GPU path (src/server/gpu.c): None on success, no reply on failure (spec 9.3) */
        char why[400] = "";
        int rc = srv_gpu_register(s, r, why, sizeof(why));
        if (rc == 0) {
            resp_none(r);
            return;
        }
        if (nocuda_first(r->req.instance_id))
            log_error("REGISTER_KV_CACHE from instance %lld refused, left unanswered (the worker times out): %s",
                      (long long)r->req.instance_id, why[0] ? why : strerror(-rc));
        r->no_reply = true;
        return;
    }
    metrics_add(MET_BAD_INPUT + SRV_BAD_NO_CUDA, 1);
    if (nocuda_first(r->req.instance_id)) {
        char what[512];
        describe_descriptors(&r->req.reg, what, sizeof(what));
        log_error("REGISTER_KV_CACHE from instance %lld (model %.*s, %s): this lmcd has no CUDA (%s), so GPU "
                  "registrations are not answered and the worker will time out; configure the vLLM connector "
                  "with lmcache.mp.mp_transfer_mode=engine_driven",
                  (long long)r->req.instance_id, (int)r->req.model_name.len, r->req.model_name.ptr, what,
                  s->gpu_why);
    }
    r->no_reply = true;
}

static void h_gpu_transfer(struct server *s, struct srv_req *r)
{
    if (s->gpu) {
        char why[300] = "";
        KEY_OF(r, k);
        int rc = srv_gpu_transfer(s, r, &k, why, sizeof(why));
        if (rc == 0)
            return;
        if (rc != -ESTALE && nocuda_first(r->req.instance_id)) /* -ESTALE: a reaped worker, logged by gpu.c */
            log_error("%s from instance %lld left unanswered: %s", r->req.op_name, (long long)r->req.instance_id,
                      why[0] ? why : strerror(-rc));
        r->no_reply = true;
        return;
    }
    metrics_add(MET_BAD_INPUT + SRV_BAD_NO_CUDA, 1);
    if (nocuda_first(r->req.instance_id))
        log_error("%s from instance %lld needs CUDA, which this lmcd lacks (%s): left unanswered (a reply without a "
                  "valid CUDA event would be taken for success); use mp_transfer_mode=engine_driven",
                  r->req.op_name, (long long)r->req.instance_id, s->gpu_why);
    r->no_reply = true;
}

static void h_unregister(struct server *s, struct srv_req *r)
{
    if (s->gpu)
        s->gpu_ops->unregister(s->gpu, r->req.instance_id, true);
    engine_unregister(s->engine, r->req.instance_id);
    resp_none(r);
}

static void h_report(struct server *s, struct srv_req *r)
{
    engine_report_block_allocation(s->engine, r->req.report.n_records);
    resp_none(r);
}

/* ------------------------------------------------------------ lookups */

static void h_lookup(struct server *s, struct srv_req *r)
{
    KEY_OF(r, k);
    int rc = engine_lookup(s->engine, &k, r->req.tp_size);
    if (rc && rc != -ENOSPC) /* a session cap's refusal is logged and counted by the engine */
        log_rl(&lookup_rl, LOG_WARNING,
               "LOOKUP for request %.*s failed: %s (the scheduler will see 0 hits)", (int)k.request_id_len,
               k.request_id, strerror(-rc));
    resp_none(r);
}

static void h_query_status(struct server *s, struct srv_req *r)
{
    int64_t v = 0;
    int rc = engine_query_prefetch_status(s->engine, r->req.request_id.ptr, r->req.request_id.len, &v);
    resp_int_or_nil(r, rc, v);
}

static void h_lookup_hits(struct server *s, struct srv_req *r)
{
    int64_t v = 0;
    int rc = engine_query_lookup_hits(s->engine, r->req.request_id.ptr, r->req.request_id.len, &v);
    resp_int_or_nil(r, rc, v);
}

static void h_free_lookup_locks(struct server *s, struct srv_req *r)
{
    KEY_OF(r, k);
    engine_free_lookup_locks(s->engine, &k, r->req.tp_size);
    resp_none(r);
}

static void h_end_session(struct server *s, struct srv_req *r)
{
    engine_end_session(s->engine, r->req.request_id.ptr, r->req.request_id.len);
    resp_none(r);
}

static void h_clear(struct server *s, struct srv_req *r)
{
    /* No frame = the 2604 / early-2609 CLEAR, which cleared everything. */
    bool force = r->req.has_force ? r->req.force : true;
    engine_clear(s->engine, force);
    resp_none(r);
}

/* ------------------------------------------------------------ engine-driven */

static void h_register_ed(struct server *s, struct srv_req *r)
{
    const struct wire_ed_register *w = &r->req.ed;
    struct engine_ed_register er = {
        .instance_id = r->req.instance_id,
        .model_name = r->req.model_name.ptr,
        .model_name_len = r->req.model_name.len,
        .world_size = r->req.world_size,
        .block_size = w->block_size,
        .num_layers = w->num_layers,
        .hidden_dim_size = w->hidden_dim_size,
        .dtype = w->dtype_str.ptr,
        .dtype_len = w->dtype_str.len,
        .use_mla = w->use_mla,
        .has_num_physical_slots = w->has_num_physical_slots,
        .num_physical_slots = w->num_physical_slots,
        .multi_group = w->multi_group,
    };
    int rc = engine_register_ed(s->engine, &er, &r->ed);
    r->resp.kind = WIRE_RESP_ED_POOL;
    if (rc == 0 && !r->ed.error) {
        r->resp.shm_name = (struct wire_str){ r->ed.shm_name, (uint32_t)strlen(r->ed.shm_name) };
        r->resp.pool_size = r->ed.pool_size;
        return;
    }
    /* Refused: the newest client reads `error`; an older one sees the real
     * segment anyway (never the empty map that means pickle mode, 7.1). */
    log_warn("engine-driven registration of instance %lld refused: %s", (long long)r->req.instance_id,
             r->ed.error ? r->ed.error : strerror(-rc));
    r->resp.shm_name = (struct wire_str){ r->ed.shm_name ? r->ed.shm_name : "", r->ed.shm_name ? (uint32_t)strlen(r->ed.shm_name) : 0 };
    r->resp.pool_size = r->ed.pool_size;
    r->resp.has_error = true;
    const char *why = r->ed.error ? r->ed.error : strerror(-rc);
    r->resp.error = (struct wire_str){ why, (uint32_t)strlen(why) };
}

/* Points the response's slot array at the engine's slots. */
static int fill_slots(struct srv_req *r)
{
    size_t n = r->slots.n;
    if (!n)
        return 0;
    r->wslots = calloc(n, sizeof(*r->wslots));
    if (!r->wslots)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        const struct engine_slot *es = &r->slots.slots[i];
        struct wire_slot *ws = &r->wslots[i];
        ws->offset = es->offset;
        ws->length = es->length;
        ws->ndim = es->ndim;
        for (uint32_t d = 0; d < es->ndim && d < WIRE_SLOT_MAX_DIMS; d++)
            ws->shape[d] = es->shape[d];
        ws->dtype = (struct wire_str){ es->dtype, (uint32_t)strlen(es->dtype) };
    }
    r->resp.slots = r->wslots;
    r->resp.n_slots = n;
    return 0;
}

static void prepare_store_reply(struct srv_req *r, int rc)
{
    r->resp.kind = WIRE_RESP_ED_CONTEXT;
    if (rc || fill_slots(r)) {
        /* "cannot reserve" = store skipped, not an error (9.3): empty lists */
        engine_slots_free(&r->slots);
        wire_resp_safe(r->req.op, &r->resp);
        return;
    }
    r->resp.chunk_indices = r->slots.chunk_indices;
}

static void h_prepare_store(struct server *s, struct srv_req *r)
{
    KEY_OF(r, k);
    prepare_store_reply(r, engine_prepare_store(s->engine, &k, r->req.instance_id, &r->slots));
}

static void h_commit_store(struct server *s, struct srv_req *r)
{
    KEY_OF(r, k);
    resp_bool(r, engine_commit_store(s->engine, &k, r->req.instance_id, r->req.data.len) == 0);
}

static void prepare_retrieve_reply(struct server *s, struct srv_req *r, const struct engine_key *k, int rc)
{
    r->resp.kind = WIRE_RESP_ED_RETRIEVE;
    r->resp.data = (struct wire_bin){ (const uint8_t *)"", 0 };
    if (rc == 0 && fill_slots(r) == 0) {
        r->resp.success = true;
        return;
    }
    if (rc == 0) /* out of memory building the reply: give the locks back */
        engine_commit_retrieve(s->engine, k, r->req.instance_id);
    engine_slots_free(&r->slots);
    wire_resp_safe(r->req.op, &r->resp); /* the miss reply (9.3) */
}

static void h_prepare_retrieve(struct server *s, struct srv_req *r)
{
    KEY_OF(r, k);
    prepare_retrieve_reply(s, r, &k, engine_prepare_retrieve(s->engine, &k, r->req.instance_id, &r->slots));
}

static void h_commit_retrieve(struct server *s, struct srv_req *r)
{
    KEY_OF(r, k);
    engine_commit_retrieve(s->engine, &k, r->req.instance_id);
    resp_bool(r, true);
}

/* ------------------------------------------------------------ inline */

static void h_store_inline(struct server *s, struct srv_req *r)
{
    KEY_OF(r, k);
    int64_t present = 0;
    struct iovec *iov = calloc(r->req.n_raw ? r->req.n_raw : 1, sizeof(*iov));
    int rc = -ENOMEM;
    if (iov) {
        for (size_t i = 0; i < r->req.n_raw; i++)
            iov[i] = (struct iovec){ (void *)r->req.raw[i].data, r->req.raw[i].len };
        rc = engine_store_inline(s->engine, &k, iov, r->req.n_raw, &present);
        free(iov);
    }
    if (rc)
        log_rl(&inline_rl, LOG_WARNING,
               "lmcd.store_inline for request %.*s: %s", (int)k.request_id_len, k.request_id, strerror(-rc));
    r->resp.kind = WIRE_RESP_INLINE;
    r->resp.i = present;
}

static void h_retrieve_inline(struct server *s, struct srv_req *r)
{
    KEY_OF(r, k);
    wire_resp_safe(r->req.op, &r->resp); /* 0 chunks unless the engine finds some */
    if (engine_retrieve_inline(s->engine, &k, &r->inline_read) == 0) {
        r->has_inline = true;
        r->resp.i = (int64_t)r->inline_read.n;
    }
}

/* ------------------------------------------------------------ table */

static const srv_handler_fn handlers[WIRE_OP_COUNT] = {
    [WIRE_OP_REGISTER_KV_CACHE] = h_register_kv_cache,
    [WIRE_OP_UNREGISTER_KV_CACHE] = h_unregister,
    [WIRE_OP_STORE] = h_gpu_transfer,
    [WIRE_OP_RETRIEVE] = h_gpu_transfer,
    [WIRE_OP_LOOKUP] = h_lookup,
    [WIRE_OP_QUERY_PREFETCH_STATUS] = h_query_status,
    [WIRE_OP_WAIT_PREFETCH_STATUS] = NULL, /* parked by the loop, see dispatch_wait_ready */
    [WIRE_OP_QUERY_PREFETCH_LOOKUP_HITS] = h_lookup_hits,
    [WIRE_OP_FREE_LOOKUP_LOCKS] = h_free_lookup_locks,
    [WIRE_OP_END_SESSION] = h_end_session,
    [WIRE_OP_CLEAR] = h_clear,
    [WIRE_OP_GET_CHUNK_SIZE] = h_get_chunk_size,
    [WIRE_OP_PING] = h_ping,
    [WIRE_OP_REPORT_BLOCK_ALLOCATION] = h_report,
    [WIRE_OP_NOOP] = h_noop,
    [WIRE_OP_REGISTER_ED_CONTEXT] = h_register_ed,
    [WIRE_OP_UNREGISTER_ED_CONTEXT] = h_unregister,
    [WIRE_OP_PREPARE_STORE] = h_prepare_store,
    [WIRE_OP_COMMIT_STORE] = h_commit_store,
    [WIRE_OP_PREPARE_RETRIEVE] = h_prepare_retrieve,
    [WIRE_OP_COMMIT_RETRIEVE] = h_commit_retrieve,
    [WIRE_OP_GET_EXPERIMENTAL] = h_get_experimental,
    [WIRE_OP_STORE_INLINE] = h_store_inline,
    [WIRE_OP_RETRIEVE_INLINE] = h_retrieve_inline,
};

srv_handler_fn dispatch_handler(enum wire_op op)
{
    return (unsigned)op < WIRE_OP_COUNT ? handlers[op] : NULL;
}

/* The most tokens a worker op may carry to run on the loop: hashing them
 * (when the session has not yet) stays within some tens of microseconds. */
#define LOOP_MAX_TOKENS 8192

/* A worker's PREPARE/COMMIT on the loop (dispatch_try_on_loop). */
static bool worker_op_on_loop(struct server *s, struct srv_req *r)
{
    if (r->req.key.n_tokens > LOOP_MAX_TOKENS)
        return false;
    KEY_OF(r, k);
    int rc;
    switch (r->req.op) {
    case WIRE_OP_PREPARE_STORE:
        if ((rc = engine_prepare_store_nowait(s->engine, &k, r->req.instance_id, &r->slots)) == -EWOULDBLOCK)
            return false;
        prepare_store_reply(r, rc);
        return true;
    case WIRE_OP_COMMIT_STORE:
        if ((rc = engine_commit_store_nowait(s->engine, &k, r->req.instance_id, r->req.data.len)) == -EWOULDBLOCK)
            return false;
        resp_bool(r, rc == 0);
        return true;
    case WIRE_OP_PREPARE_RETRIEVE:
        if ((rc = engine_prepare_retrieve_nowait(s->engine, &k, r->req.instance_id, &r->slots)) == -EWOULDBLOCK)
            return false;
        prepare_retrieve_reply(s, r, &k, rc);
        return true;
    case WIRE_OP_COMMIT_RETRIEVE:
        if (engine_commit_retrieve_nowait(s->engine, &k, r->req.instance_id) == -EWOULDBLOCK)
            return false;
        resp_bool(r, true);
        return true;
    default:
        return false;
    }
}

bool dispatch_try_on_loop(struct server *s, struct srv_req *r)
{
    int64_t v = 0;
    int rc;
    switch (r->req.op) {
    case WIRE_OP_PING:
        if (engine_ping_try(s->engine, r->req.has_instance_id, r->req.instance_id) != 0)
            return false;
        if (r->req.has_instance_id)
            srv_gpu_on_ping(r->req.instance_id); /* a reaped GPU worker must register again */
        resp_bool(r, true);
        return true;
    case WIRE_OP_QUERY_PREFETCH_STATUS:
        /* -EAGAIN: a LOOKUP holds the session, the job runs on, or no such
         * session yet: the pool answers, in order after this client's
         * earlier requests, as before */
        rc = engine_try_prefetch_status(s->engine, r->req.request_id.ptr, r->req.request_id.len, &v);
        if (rc == -EAGAIN)
            return false;
        resp_int_or_nil(r, rc, v);
        return true;
    case WIRE_OP_PREPARE_STORE:
    case WIRE_OP_COMMIT_STORE:
    case WIRE_OP_PREPARE_RETRIEVE:
    case WIRE_OP_COMMIT_RETRIEVE:
        return worker_op_on_loop(s, r);
    default:
        return false;
    }
}

bool dispatch_wait_ready(struct server *s, struct srv_req *r)
{
    int64_t v = 0;
    /* the loop thread must never wait on a session a LOOKUP holds */
    int rc = engine_poll_prefetch_status(s->engine, r->req.request_id.ptr, r->req.request_id.len, &v);
    if (rc == -EAGAIN)
        return false;
    resp_int_or_nil(r, rc, v);
    return true;
}

enum wire_class dispatch_run_class(const struct srv_req *r)
{
    if (r->req.op == WIRE_OP_REGISTER_KV_CACHE || r->req.op == WIRE_OP_UNREGISTER_KV_CACHE)
        return WIRE_CLASS_AFFINITY;
    return r->req.cls;
}

void dispatch_wait_timeout(struct srv_req *r)
{
    r->resp.kind = WIRE_RESP_INT_OR_NIL;
    r->resp.is_nil = true; /* spec 6.3: nil on timeout, the job stays */
}

void dispatch_req_cleanup(struct server *s, struct srv_req *r)
{
    engine_slots_free(&r->slots);
    free(r->wslots);
    r->wslots = NULL;
    engine_ed_reply_free(&r->ed);
    if (r->has_inline) {
        engine_inline_release(s->engine, &r->inline_read);
        r->has_inline = false;
    }
}
