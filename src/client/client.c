/*
 * liblmcd: the client object, request submission, reply matching by uid and
 * the synchronous calls (contract in include/lmcd/client.h).
 *
 * Design. Every operation goes through one path: a public struct
 * lmcd_request becomes a canonical struct wire_req, which
 * wire_encode_request() turns into frames for the client's profile and
 * form (the profile tables in src/wire/ know each operation's id, arity and
 * field order, so nothing here encodes a message by hand). Replies are
 * decoded by wire_decode_reply() against the op recorded for their uid and
 * converted into owned public structs at once, so a reply that arrives
 * while the caller waits for another uid is simply kept in its pending
 * entry until collected.
 *
 * Pending requests live in a hash table keyed by uid (util/htab.h). A
 * cancelled or timed-out synchronous request is removed, so its late reply
 * finds no entry and is dropped; uids are never reused (64-bit counter).
 *
 * Not thread-safe by design (one ZeroMQ socket, used by the calling thread).
 */
#include "lmcd/client.h"

#include <errno.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "util/clock.h"
#include "util/htab.h"
#include "wire/wire.h"

/* ZeroMQ options the newest LMCache clients set (spec 1.1). */
#define CONNECT_TIMEOUT_MS 5000
#define RECONNECT_IVL_MAX_MS 1000

struct pending {
    struct htab_node node; /* key: &uid */
    uint64_t uid;
    enum lmcd_op op;
    enum wire_form form;
    bool done;
    int rc;                  /* when done: 0 or the decode error */
    struct lmcd_reply reply; /* when done and rc == 0 */
};

struct lmcd_client {
    void *ctx;
    void *sock;
    enum wire_profile profile;
    enum wire_form form;
    int timeout_ms;
    uint64_t next_uid;
    struct htab pending;
    struct wire_msg msg; /* encode buffer, reused */
    zmq_msg_t *rx;       /* frames of the message being received */
    size_t n_rx, cap_rx;
};

/* Frames a RETRIEVE_INLINE reply keeps alive for its chunk views. */
struct reply_priv {
    zmq_msg_t *frames;
    size_t n;
};

static const enum wire_op op_map[LMCD_OP_COUNT_] = {
    [LMCD_OP_GET_CHUNK_SIZE] = WIRE_OP_GET_CHUNK_SIZE,
    [LMCD_OP_NOOP] = WIRE_OP_NOOP,
    [LMCD_OP_PING] = WIRE_OP_PING,
    [LMCD_OP_GET_EXPERIMENTAL] = WIRE_OP_GET_EXPERIMENTAL,
    [LMCD_OP_LOOKUP] = WIRE_OP_LOOKUP,
    [LMCD_OP_QUERY_PREFETCH_STATUS] = WIRE_OP_QUERY_PREFETCH_STATUS,
    [LMCD_OP_WAIT_PREFETCH_STATUS] = WIRE_OP_WAIT_PREFETCH_STATUS,
    [LMCD_OP_QUERY_PREFETCH_LOOKUP_HITS] = WIRE_OP_QUERY_PREFETCH_LOOKUP_HITS,
    [LMCD_OP_FREE_LOOKUP_LOCKS] = WIRE_OP_FREE_LOOKUP_LOCKS,
    [LMCD_OP_END_SESSION] = WIRE_OP_END_SESSION,
    [LMCD_OP_CLEAR] = WIRE_OP_CLEAR,
    [LMCD_OP_REPORT_BLOCK_ALLOCATION] = WIRE_OP_REPORT_BLOCK_ALLOCATION,
    [LMCD_OP_REGISTER_ED] = WIRE_OP_REGISTER_ED_CONTEXT,
    [LMCD_OP_UNREGISTER_ED] = WIRE_OP_UNREGISTER_ED_CONTEXT,
    [LMCD_OP_PREPARE_STORE] = WIRE_OP_PREPARE_STORE,
    [LMCD_OP_COMMIT_STORE] = WIRE_OP_COMMIT_STORE,
    [LMCD_OP_PREPARE_RETRIEVE] = WIRE_OP_PREPARE_RETRIEVE,
    [LMCD_OP_COMMIT_RETRIEVE] = WIRE_OP_COMMIT_RETRIEVE,
    [LMCD_OP_STORE_INLINE] = WIRE_OP_STORE_INLINE,
    [LMCD_OP_RETRIEVE_INLINE] = WIRE_OP_RETRIEVE_INLINE,
};

const char *lmcd_op_name(enum lmcd_op op)
{
    return (unsigned)op < LMCD_OP_COUNT_ ? wire_op_name(op_map[op]) : "?";
}

int lmcd_profile_parse(const char *name, enum lmcd_profile *out)
{
    enum wire_profile p;
    if (wire_profile_parse(name, &p) < 0)
        return -EINVAL;
    *out = p == WIRE_PROFILE_2604 ? LMCD_PROFILE_2604 : LMCD_PROFILE_2609;
    return 0;
}

const char *lmcd_strerror(int rc)
{
    switch (rc) {
    case 0: return "success";
    case -ETIMEDOUT: return "timed out waiting for the server's reply";
    case -EPROTO: return "the server's reply could not be decoded";
    case -EAGAIN: return "not yet (no reply yet, or the server answered nil)";
    case -ENOTSUP: return "operation not in this protocol profile";
    case -ENOENT: return "no such pending request";
    case -ENOBUFS: return "send queue full";
    }
    const char *s = rc < 0 ? strerrordesc_np(-rc) : NULL;
    return s ? s : "unknown error";
}

/* ---- replies ---------------------------------------------------------------- */

static void frames_close(zmq_msg_t *f, size_t n)
{
    for (size_t k = 0; k < n; k++)
        zmq_msg_close(&f[k]);
}

void lmcd_reply_free(struct lmcd_reply *r)
{
    if (!r)
        return;
    free(r->message);
    for (size_t k = 0; r->names && k < r->n_names; k++)
        free(r->names[k]);
    free(r->names);
    free(r->shm_name);
    free(r->error);
    free(r->slots);
    free(r->chunk_indices);
    free(r->chunks);
    struct reply_priv *priv = r->priv_;
    if (priv) {
        frames_close(priv->frames, priv->n);
        free(priv->frames);
        free(priv);
    }
    memset(r, 0, sizeof(*r));
}

static char *dup_str(struct wire_str s)
{
    char *p = malloc((size_t)s.len + 1);
    if (p) {
        if (s.len)
            memcpy(p, s.ptr, s.len);
        p[s.len] = '\0';
    }
    return p;
}

static int copy_slots(const struct wire_resp *w, struct lmcd_reply *r)
{
    r->n_slots = w->n_slots;
    if (!w->n_slots)
        return 0;
    if (!(r->slots = calloc(w->n_slots, sizeof(*r->slots))))
        return -ENOMEM;
    for (size_t k = 0; k < w->n_slots; k++) {
        const struct wire_slot *ws = &w->slots[k];
        struct lmcd_slot *s = &r->slots[k];
        s->offset = ws->offset;
        s->length = ws->length;
        s->ndim = ws->ndim;
        memcpy(s->shape, ws->shape, sizeof(s->shape));
        size_t n = ws->dtype.len < LMCD_DTYPE_MAX - 1 ? ws->dtype.len : LMCD_DTYPE_MAX - 1;
        if (n)
            memcpy(s->dtype, ws->dtype.ptr, n);
    }
    return 0;
}

/* Turns a decoded wire response into owned public fields. */
static int convert_reply(const struct wire_resp *w, struct lmcd_reply *r)
{
    switch (w->kind) {
    case WIRE_RESP_NONE:
    case WIRE_RESP_EVENT_BOOL: return 0;
    case WIRE_RESP_INT:
    case WIRE_RESP_INLINE: r->value = w->i; return 0;
    case WIRE_RESP_INT_OR_NIL:
        r->is_nil = w->is_nil;
        r->value = w->is_nil ? 0 : w->i;
        return 0;
    case WIRE_RESP_BOOL: r->ok = w->b; return 0;
    case WIRE_RESP_STR: return (r->message = dup_str(w->s)) ? 0 : -ENOMEM;
    case WIRE_RESP_STR_LIST:
        if (w->n_strs && !(r->names = calloc(w->n_strs, sizeof(*r->names))))
            return -ENOMEM;
        for (; r->n_names < w->n_strs; r->n_names++)
            if (!(r->names[r->n_names] = dup_str(w->strs[r->n_names])))
                return -ENOMEM;
        return 0;
    case WIRE_RESP_ED_POOL:
        r->pool_size = w->pool_size;
        if (!(r->shm_name = dup_str(w->shm_name)))
            return -ENOMEM;
        if (w->has_error && !(r->error = dup_str(w->error)))
            return -ENOMEM;
        return 0;
    case WIRE_RESP_ED_CONTEXT:
        /* a non-empty slot list must come with its chunk indices (spec 7.2) */
        if (w->n_slots && !w->chunk_indices)
            return -EPROTO;
        if (w->n_slots && !(r->chunk_indices = malloc(w->n_slots * sizeof(*r->chunk_indices))))
            return -ENOMEM;
        if (w->n_slots)
            memcpy(r->chunk_indices, w->chunk_indices, w->n_slots * sizeof(*r->chunk_indices));
        return copy_slots(w, r);
    case WIRE_RESP_ED_RETRIEVE:
        r->success = w->success;
        return copy_slots(w, r);
    }
    return -EPROTO;
}

/* ---- the client object ------------------------------------------------------ */

int lmcd_client_open(const char *url, enum lmcd_profile profile, enum lmcd_form form,
                     struct lmcd_client **out)
{
    *out = NULL;
    if (!url || (profile != LMCD_PROFILE_2604 && profile != LMCD_PROFILE_2609) ||
        (form != LMCD_FORM_POSITIONAL && form != LMCD_FORM_MESSAGE) ||
        (form == LMCD_FORM_MESSAGE && profile != LMCD_PROFILE_2609))
        return -EINVAL;
    struct lmcd_client *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    int rc = -ENOMEM;
    c->profile = profile == LMCD_PROFILE_2604 ? WIRE_PROFILE_2604 : WIRE_PROFILE_2609;
    c->form = form == LMCD_FORM_MESSAGE ? WIRE_FORM_MESSAGE : WIRE_FORM_POSITIONAL;
    c->timeout_ms = LMCD_DEFAULT_TIMEOUT_MS;
    htab_init(&c->pending);
    wire_msg_init(&c->msg);
    if (!(c->ctx = zmq_ctx_new()))
        goto fail;
    if (!(c->sock = zmq_socket(c->ctx, ZMQ_DEALER))) {
        rc = -zmq_errno();
        goto fail;
    }
    int linger = 0, cto = CONNECT_TIMEOUT_MS, rivl = RECONNECT_IVL_MAX_MS;
    zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof(linger));
    zmq_setsockopt(c->sock, ZMQ_CONNECT_TIMEOUT, &cto, sizeof(cto));
    zmq_setsockopt(c->sock, ZMQ_RECONNECT_IVL_MAX, &rivl, sizeof(rivl));
    if (zmq_connect(c->sock, url) != 0) {
        rc = -zmq_errno();
        goto fail;
    }
    *out = c;
    return 0;
fail:
    lmcd_client_close(c);
    return rc;
}

static void pending_destroy(struct pending *p)
{
    lmcd_reply_free(&p->reply);
    free(p);
}

void lmcd_client_close(struct lmcd_client *c)
{
    if (!c)
        return;
    struct htab_node *n, *tmp;
    HTAB_FOREACH_SAFE(&c->pending, n, tmp)
        pending_destroy(htab_entry(n, struct pending, node));
    htab_free(&c->pending);
    frames_close(c->rx, c->n_rx);
    free(c->rx);
    wire_msg_free(&c->msg);
    if (c->sock)
        zmq_close(c->sock);
    if (c->ctx)
        zmq_ctx_term(c->ctx);
    free(c);
}

void lmcd_client_set_timeout(struct lmcd_client *c, int timeout_ms)
{
    c->timeout_ms = timeout_ms < 0 ? -1 : timeout_ms;
}

size_t lmcd_client_pending(const struct lmcd_client *c) { return c->pending.count; }

static struct pending *pending_find(const struct lmcd_client *c, uint64_t uid)
{
    struct htab_node *n = htab_find(&c->pending, &uid, sizeof(uid));
    return n ? htab_entry(n, struct pending, node) : NULL;
}

static void pending_remove(struct lmcd_client *c, struct pending *p)
{
    htab_remove(&c->pending, &p->node);
    pending_destroy(p);
}

/* ---- submit ------------------------------------------------------------------ */

static struct wire_str wstr(const char *s)
{
    return (struct wire_str){ s ? s : "", s ? (uint32_t)strlen(s) : 0 };
}

static int key_to_wire(const struct lmcd_key *k, struct wire_key *w)
{
    if (!k->model_name || !k->request_id || (k->n_tokens && !k->token_ids))
        return -EINVAL;
    w->model_name = wstr(k->model_name);
    w->world_size = k->world_size;
    w->has_worker_id = k->has_worker_id;
    w->worker_id = k->worker_id;
    /* the encoder only reads the tokens; wire_key is shared with the decoder */
    w->token_ids = (uint32_t *)k->token_ids;
    w->n_tokens = k->n_tokens;
    w->start = k->start;
    w->end = k->end;
    w->request_id = wstr(k->request_id);
    w->cache_salt = wstr(k->cache_salt);
    w->num_kv_readers = k->num_kv_readers;
    return 0;
}

/* msgpack-c packer target: appends to a wire_buf (whose err is sticky). */
static int buf_write(void *data, const char *p, size_t n)
{
    struct wire_buf *b = data;
    if (b->err)
        return -1;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        uint8_t *d = realloc(b->data, cap);
        if (!d) {
            b->err = -ENOMEM;
            return -1;
        }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

static void pack_cstr(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

/* records -> [{req_id, new_block_ids, new_token_ids}, ...] (spec 5.2). The
 * wire codec takes them as one pre-encoded array, as the server keeps them. */
static int encode_records(const struct lmcd_block_record *rec, size_t n, struct wire_buf *b)
{
    if (n > UINT32_MAX || (n && !rec))
        return -EINVAL;
    msgpack_packer pk;
    msgpack_packer_init(&pk, b, buf_write);
    msgpack_pack_array(&pk, n);
    for (size_t k = 0; k < n; k++) {
        const struct lmcd_block_record *r = &rec[k];
        if (!r->req_id || (r->n_block_ids && !r->new_block_ids) ||
            (r->n_token_ids && !r->new_token_ids))
            return -EINVAL;
        msgpack_pack_map(&pk, 3);
        pack_cstr(&pk, "req_id");
        pack_cstr(&pk, r->req_id);
        pack_cstr(&pk, "new_block_ids");
        msgpack_pack_array(&pk, r->n_block_ids);
        for (size_t j = 0; j < r->n_block_ids; j++)
            msgpack_pack_int64(&pk, r->new_block_ids[j]);
        pack_cstr(&pk, "new_token_ids");
        msgpack_pack_array(&pk, r->n_token_ids);
        for (size_t j = 0; j < r->n_token_ids; j++)
            msgpack_pack_uint32(&pk, r->new_token_ids[j]);
    }
    return b->err;
}

/* Fills the canonical request; records (if any) are encoded into *scratch. */
static int request_to_wire(const struct lmcd_request *r, struct wire_req *w, struct wire_buf *scratch)
{
    w->op = op_map[r->op];
    switch (r->op) {
    case LMCD_OP_LOOKUP:
    case LMCD_OP_FREE_LOOKUP_LOCKS:
    case LMCD_OP_PREPARE_STORE:
    case LMCD_OP_COMMIT_STORE:
    case LMCD_OP_PREPARE_RETRIEVE:
    case LMCD_OP_COMMIT_RETRIEVE:
    case LMCD_OP_STORE_INLINE:
    case LMCD_OP_RETRIEVE_INLINE:
        w->has_key = true;
        if (key_to_wire(&r->key, &w->key) < 0)
            return -EINVAL;
        break;
    case LMCD_OP_QUERY_PREFETCH_STATUS:
    case LMCD_OP_WAIT_PREFETCH_STATUS:
    case LMCD_OP_QUERY_PREFETCH_LOOKUP_HITS:
    case LMCD_OP_END_SESSION:
        if (!r->request_id)
            return -EINVAL;
        break;
    case LMCD_OP_REGISTER_ED:
        if (!r->ed.model_name || !r->ed.dtype)
            return -EINVAL;
        break;
    case LMCD_OP_REPORT_BLOCK_ALLOCATION:
        if (!r->model_name)
            return -EINVAL;
        break;
    default: break;
    }
    if (r->op == LMCD_OP_STORE_INLINE && r->n_chunks && !r->chunks)
        return -EINVAL;
    if (r->op == LMCD_OP_COMMIT_STORE && r->data_len && !r->data)
        return -EINVAL;
    w->has_instance_id = r->op != LMCD_OP_PING || r->instance_id != LMCD_NO_INSTANCE;
    w->instance_id = r->instance_id;
    w->tp_size = r->tp_size;
    w->request_id = wstr(r->request_id);
    w->timeout = r->timeout_s;
    w->has_force = true;
    w->force = r->force;
    w->data = (struct wire_bin){ r->data, (uint32_t)r->data_len };
    w->model_name = wstr(r->model_name);
    if (r->op == LMCD_OP_REGISTER_ED) {
        w->instance_id = r->ed.instance_id;
        w->model_name = wstr(r->ed.model_name);
        w->world_size = r->ed.world_size;
        w->ed.block_size = r->ed.block_size;
        w->ed.num_layers = r->ed.num_layers;
        w->ed.hidden_dim_size = r->ed.hidden_dim_size;
        w->ed.dtype_str = wstr(r->ed.dtype);
        w->ed.use_mla = r->ed.use_mla;
        w->ed.has_num_physical_slots = r->ed.has_num_physical_slots;
        w->ed.num_physical_slots = r->ed.num_physical_slots;
    }
    if (r->op == LMCD_OP_REPORT_BLOCK_ALLOCATION) {
        int rc = encode_records(r->records, r->n_records, scratch);
        if (rc < 0)
            return rc;
        w->report.n_records = r->n_records;
        w->report.records = (struct wire_bin){ scratch->data, (uint32_t)scratch->len };
    }
    return 0;
}

static int map_encode_error(int rc)
{
    if (rc == -WIRE_EUNKNOWN || rc == -WIRE_EUNSERVED)
        return -ENOTSUP;
    return rc <= -2000 ? -EINVAL : rc;
}

/* Sends the encoded frames, then (STORE_INLINE) one raw frame per chunk. */
static int send_frames(struct lmcd_client *c, const struct iovec *tail, size_t n_tail)
{
    for (size_t k = 0; k < c->msg.n_frames; k++) {
        struct wire_frame f = wire_msg_frame(&c->msg, k);
        int more = k + 1 < c->msg.n_frames || n_tail ? ZMQ_SNDMORE : 0;
        /* only the first part can fail for a full queue: ZeroMQ then takes
         * the whole multipart message atomically */
        while (zmq_send(c->sock, f.data, f.len, ZMQ_DONTWAIT | more) < 0) {
            int e = zmq_errno();
            if (e == EINTR)
                continue;
            return e == EAGAIN ? -ENOBUFS : -e;
        }
    }
    for (size_t k = 0; k < n_tail; k++)
        while (zmq_send(c->sock, tail[k].iov_base, tail[k].iov_len,
                        ZMQ_DONTWAIT | (k + 1 < n_tail ? ZMQ_SNDMORE : 0)) < 0)
            if (zmq_errno() != EINTR)
                return -zmq_errno();
    return 0;
}

int lmcd_submit(struct lmcd_client *c, const struct lmcd_request *req, uint64_t *uid)
{
    if ((unsigned)req->op >= LMCD_OP_COUNT_)
        return -EINVAL;
    struct wire_req w;
    struct wire_buf scratch;
    wire_req_init(&w);
    wire_buf_init(&scratch);
    struct pending *p = NULL;
    int rc = request_to_wire(req, &w, &scratch);
    if (rc < 0)
        goto fail;
    /* the inline ops exist in positional form only (docs/protocol.md) */
    enum wire_form form = req->op == LMCD_OP_STORE_INLINE || req->op == LMCD_OP_RETRIEVE_INLINE
                              ? WIRE_FORM_POSITIONAL
                              : c->form;
    uint64_t id = c->next_uid;
    if ((rc = wire_encode_request(c->profile, form, &w, id, &c->msg)) < 0) {
        rc = map_encode_error(rc);
        goto fail;
    }
    rc = -ENOMEM;
    if (!(p = calloc(1, sizeof(*p))))
        goto fail;
    p->uid = id;
    p->op = req->op;
    p->form = form;
    p->node.key = &p->uid;
    p->node.key_len = sizeof(p->uid);
    if ((rc = htab_insert(&c->pending, &p->node)) < 0)
        goto fail;
    bool inline_store = req->op == LMCD_OP_STORE_INLINE;
    if ((rc = send_frames(c, inline_store ? req->chunks : NULL, inline_store ? req->n_chunks : 0)) < 0) {
        htab_remove(&c->pending, &p->node);
        goto fail;
    }
    c->next_uid++;
    *uid = id;
    wire_buf_free(&scratch);
    return 0;
fail:
    free(p);
    wire_buf_free(&scratch);
    return rc;
}

/* ---- receive ---------------------------------------------------------------- */

/* Decodes the complete message in c->rx for its pending entry, if any. The
 * frames are closed, or moved into the reply (RETRIEVE_INLINE). */
static void deliver(struct lmcd_client *c)
{
    size_t n = c->n_rx;
    struct wire_frame fr_small[8], *fr = n <= 8 ? fr_small : malloc(n * sizeof(*fr));
    struct pending *p = NULL;
    uint64_t uid;
    if (!fr)
        goto drop; /* out of memory: the caller's wait times out */
    for (size_t k = 0; k < n; k++)
        fr[k] = (struct wire_frame){ zmq_msg_data(&c->rx[k]), zmq_msg_size(&c->rx[k]) };
    /* a reply without a readable uid (or for a cancelled uid) matches nothing */
    if (n < 2 || wire_decode_uid(&fr[0], &uid) < 0 || !(p = pending_find(c, uid)) || p->done)
        goto drop;
    struct wire_resp w;
    int rc = wire_decode_reply(c->profile, p->form, op_map[p->op], fr, n, &w);
    p->reply.op = p->op;
    if (rc == 0)
        rc = convert_reply(&w, &p->reply);
    if (rc == 0 && p->op == LMCD_OP_RETRIEVE_INLINE) {
        struct reply_priv *priv = calloc(1, sizeof(*priv));
        struct iovec *iov = calloc(w.n_raw ? w.n_raw : 1, sizeof(*iov));
        if (priv && iov) {
            for (size_t k = 0; k < w.n_raw; k++)
                iov[k] = (struct iovec){ (void *)w.raw[k].data, w.raw[k].len };
            priv->frames = c->rx; /* the views point into these frames */
            priv->n = n;
            p->reply.priv_ = priv;
            p->reply.chunks = iov;
            p->reply.n_chunks = w.n_raw;
            c->rx = NULL;
            c->cap_rx = 0;
        } else {
            free(priv);
            free(iov);
            rc = -ENOMEM;
        }
    }
    wire_resp_free(&w);
    if (rc < 0) {
        lmcd_reply_free(&p->reply);
        rc = rc <= -2000 ? -EPROTO : rc;
    }
    p->done = true;
    p->rc = rc;
drop:
    if (fr != fr_small)
        free(fr);
    frames_close(c->rx, c->rx ? n : 0);
    c->n_rx = 0;
}

/* Receives every message already queued on the socket, without blocking.
 * 0, or a fatal socket error (e.g. -ETERM). */
static int drain(struct lmcd_client *c)
{
    for (;;) {
        if (c->n_rx == c->cap_rx) {
            size_t cap = c->cap_rx ? c->cap_rx * 2 : 8;
            zmq_msg_t *rx = realloc(c->rx, cap * sizeof(*rx));
            if (!rx)
                return -ENOMEM;
            c->rx = rx;
            c->cap_rx = cap;
        }
        zmq_msg_t *m = &c->rx[c->n_rx];
        zmq_msg_init(m);
        if (zmq_msg_recv(m, c->sock, ZMQ_DONTWAIT) < 0) {
            int e = zmq_errno();
            zmq_msg_close(m);
            if (e == EINTR)
                continue;
            /* EAGAIN mid-message cannot happen: ZeroMQ delivers whole messages */
            return e == EAGAIN ? 0 : -e;
        }
        c->n_rx++;
        if (!zmq_msg_more(m))
            deliver(c);
    }
}

/* Hands a finished entry's result to the caller and forgets the uid. */
static int collect(struct lmcd_client *c, struct pending *p, struct lmcd_reply *out)
{
    int rc = p->rc;
    if (rc == 0) {
        *out = p->reply;
        memset(&p->reply, 0, sizeof(p->reply));
    }
    pending_remove(c, p);
    return rc;
}

int lmcd_poll(struct lmcd_client *c, uint64_t uid, struct lmcd_reply *out)
{
    memset(out, 0, sizeof(*out));
    struct pending *p = pending_find(c, uid);
    if (!p)
        return -ENOENT;
    int rc = drain(c);
    if (rc < 0)
        return rc;
    return p->done ? collect(c, p, out) : -EAGAIN;
}

int lmcd_wait(struct lmcd_client *c, uint64_t uid, int timeout_ms, struct lmcd_reply *out)
{
    memset(out, 0, sizeof(*out));
    struct pending *p = pending_find(c, uid);
    if (!p)
        return -ENOENT;
    uint64_t deadline = timeout_ms < 0 ? 0 : clock_mono_ms() + (uint64_t)timeout_ms;
    for (;;) {
        int rc = drain(c);
        if (rc < 0)
            return rc;
        if (p->done)
            return collect(c, p, out);
        long left = -1;
        if (timeout_ms >= 0) {
            uint64_t now = clock_mono_ms();
            if (now >= deadline)
                return -ETIMEDOUT;
            left = (long)(deadline - now);
        }
        zmq_pollitem_t it = { .socket = c->sock, .events = ZMQ_POLLIN };
        if (zmq_poll(&it, 1, left) < 0 && zmq_errno() != EINTR)
            return -zmq_errno();
    }
}

int lmcd_cancel(struct lmcd_client *c, uint64_t uid)
{
    struct pending *p = pending_find(c, uid);
    if (!p)
        return -ENOENT;
    pending_remove(c, p);
    return 0;
}

/* ---- synchronous calls ------------------------------------------------------ */

/* Submits and waits up to the client timeout plus extra_ms; a request that
 * timed out is forgotten so that its late reply is dropped. */
static int call(struct lmcd_client *c, const struct lmcd_request *req, int extra_ms,
                struct lmcd_reply *out)
{
    uint64_t uid;
    memset(out, 0, sizeof(*out));
    int rc = lmcd_submit(c, req, &uid);
    if (rc < 0)
        return rc;
    int t = c->timeout_ms < 0 ? -1 : c->timeout_ms + extra_ms;
    rc = lmcd_wait(c, uid, t, out);
    if (rc < 0 && rc != -ENOENT)
        lmcd_cancel(c, uid);
    return rc;
}

int lmcd_get_chunk_size(struct lmcd_client *c, int64_t *chunk_size)
{
    struct lmcd_request req = { .op = LMCD_OP_GET_CHUNK_SIZE };
    struct lmcd_reply r;
    int rc = call(c, &req, 0, &r);
    if (rc == 0 && chunk_size)
        *chunk_size = r.value;
    lmcd_reply_free(&r);
    return rc;
}

int lmcd_noop(struct lmcd_client *c, char *msg, size_t cap)
{
    struct lmcd_request req = { .op = LMCD_OP_NOOP };
    struct lmcd_reply r;
    int rc = call(c, &req, 0, &r);
    if (rc == 0 && msg && cap)
        snprintf(msg, cap, "%s", r.message ? r.message : "");
    lmcd_reply_free(&r);
    return rc;
}

static int call_bool(struct lmcd_client *c, const struct lmcd_request *req, bool *ok)
{
    struct lmcd_reply r;
    int rc = call(c, req, 0, &r);
    if (rc == 0 && ok)
        *ok = r.ok;
    lmcd_reply_free(&r);
    return rc;
}

int lmcd_ping(struct lmcd_client *c, int64_t instance_id, bool *ok)
{
    struct lmcd_request req = { .op = LMCD_OP_PING, .instance_id = instance_id };
    return call_bool(c, &req, ok);
}

int lmcd_get_experimental(struct lmcd_client *c, struct lmcd_reply *reply)
{
    struct lmcd_request req = { .op = LMCD_OP_GET_EXPERIMENTAL };
    return call(c, &req, 0, reply);
}

static int call_none(struct lmcd_client *c, const struct lmcd_request *req)
{
    struct lmcd_reply r;
    int rc = call(c, req, 0, &r);
    lmcd_reply_free(&r);
    return rc;
}

int lmcd_lookup(struct lmcd_client *c, const struct lmcd_key *key, int64_t tp_size)
{
    struct lmcd_request req = { .op = LMCD_OP_LOOKUP, .key = *key, .tp_size = tp_size };
    return call_none(c, &req);
}

/* The prefetch queries: nil is "not yet" (-EAGAIN). */
static int call_count(struct lmcd_client *c, const struct lmcd_request *req, int extra_ms,
                      int64_t *chunks)
{
    struct lmcd_reply r;
    int rc = call(c, req, extra_ms, &r);
    if (rc == 0 && r.is_nil)
        rc = -EAGAIN;
    if (rc == 0 && chunks)
        *chunks = r.value;
    lmcd_reply_free(&r);
    return rc;
}

int lmcd_query_prefetch_status(struct lmcd_client *c, const char *request_id, int64_t *chunks)
{
    struct lmcd_request req = { .op = LMCD_OP_QUERY_PREFETCH_STATUS, .request_id = request_id };
    return call_count(c, &req, 0, chunks);
}

int lmcd_wait_prefetch_status(struct lmcd_client *c, const char *request_id,
                              double server_timeout_s, int64_t *chunks)
{
    struct lmcd_request req = { .op = LMCD_OP_WAIT_PREFETCH_STATUS, .request_id = request_id,
                                .timeout_s = server_timeout_s };
    double extra = server_timeout_s > 0 ? server_timeout_s * 1000.0 : 0;
    return call_count(c, &req, extra < 3.6e6 ? (int)extra : 3600000, chunks);
}

int lmcd_query_prefetch_lookup_hits(struct lmcd_client *c, const char *request_id, int64_t *chunks)
{
    struct lmcd_request req = { .op = LMCD_OP_QUERY_PREFETCH_LOOKUP_HITS,
                                .request_id = request_id };
    return call_count(c, &req, 0, chunks);
}

int lmcd_free_lookup_locks(struct lmcd_client *c, const struct lmcd_key *key, int64_t tp_size)
{
    struct lmcd_request req = { .op = LMCD_OP_FREE_LOOKUP_LOCKS, .key = *key, .tp_size = tp_size };
    return call_none(c, &req);
}

int lmcd_end_session(struct lmcd_client *c, const char *request_id)
{
    struct lmcd_request req = { .op = LMCD_OP_END_SESSION, .request_id = request_id };
    return call_none(c, &req);
}

int lmcd_clear(struct lmcd_client *c, bool force)
{
    struct lmcd_request req = { .op = LMCD_OP_CLEAR, .force = force };
    return call_none(c, &req);
}

int lmcd_report_block_allocation(struct lmcd_client *c, int64_t instance_id, const char *model_name,
                                 const struct lmcd_block_record *records, size_t n_records)
{
    struct lmcd_request req = { .op = LMCD_OP_REPORT_BLOCK_ALLOCATION, .instance_id = instance_id,
                                .model_name = model_name, .records = records,
                                .n_records = n_records };
    return call_none(c, &req);
}

int lmcd_register_ed(struct lmcd_client *c, const struct lmcd_ed_payload *payload,
                     struct lmcd_reply *reply)
{
    struct lmcd_request req = { .op = LMCD_OP_REGISTER_ED, .ed = *payload };
    return call(c, &req, 0, reply);
}

int lmcd_unregister_ed(struct lmcd_client *c, int64_t instance_id)
{
    struct lmcd_request req = { .op = LMCD_OP_UNREGISTER_ED, .instance_id = instance_id };
    return call_none(c, &req);
}

int lmcd_prepare_store(struct lmcd_client *c, const struct lmcd_key *key, int64_t instance_id,
                       struct lmcd_reply *reply)
{
    struct lmcd_request req = { .op = LMCD_OP_PREPARE_STORE, .key = *key,
                                .instance_id = instance_id };
    return call(c, &req, 0, reply);
}

int lmcd_commit_store(struct lmcd_client *c, const struct lmcd_key *key, int64_t instance_id,
                      bool *ok)
{
    struct lmcd_request req = { .op = LMCD_OP_COMMIT_STORE, .key = *key,
                                .instance_id = instance_id };
    return call_bool(c, &req, ok);
}

int lmcd_prepare_retrieve(struct lmcd_client *c, const struct lmcd_key *key, int64_t instance_id,
                          struct lmcd_reply *reply)
{
    struct lmcd_request req = { .op = LMCD_OP_PREPARE_RETRIEVE, .key = *key,
                                .instance_id = instance_id };
    return call(c, &req, 0, reply);
}

int lmcd_commit_retrieve(struct lmcd_client *c, const struct lmcd_key *key, int64_t instance_id,
                         bool *ok)
{
    struct lmcd_request req = { .op = LMCD_OP_COMMIT_RETRIEVE, .key = *key,
                                .instance_id = instance_id };
    return call_bool(c, &req, ok);
}

int lmcd_store_inline(struct lmcd_client *c, const struct lmcd_key *key, const struct iovec *chunks,
                      size_t n_chunks, int64_t *present)
{
    struct lmcd_request req = { .op = LMCD_OP_STORE_INLINE, .key = *key, .chunks = chunks,
                                .n_chunks = n_chunks };
    struct lmcd_reply r;
    int rc = call(c, &req, 0, &r);
    if (rc == 0 && present)
        *present = r.value;
    lmcd_reply_free(&r);
    return rc;
}

int lmcd_retrieve_inline(struct lmcd_client *c, const struct lmcd_key *key,
                         struct lmcd_reply *reply)
{
    struct lmcd_request req = { .op = LMCD_OP_RETRIEVE_INLINE, .key = *key };
    return call(c, &req, 0, reply);
}
