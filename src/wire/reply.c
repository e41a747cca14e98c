/*
 * reply: canonical response <-> the response frame, both forms, and the
 * optional 2609 error frame. One table (resp_fields) names the message-form
 * wrapper of each response kind for both directions.
 */
#include <errno.h>
#include <string.h>

#include "wire/proto.h"

void wire_resp_init(struct wire_resp *resp) { memset(resp, 0, sizeof(*resp)); }

void wire_resp_free(struct wire_resp *resp)
{
    if (!resp)
        return;
    wire_own_free(&resp->owned_);
    wire_resp_init(resp);
}

/* ---- encode --------------------------------------------------------------- */

static void wr_str(struct wire_buf *b, struct wire_str s) { mp_w_str(b, s.ptr, s.len); }

static void wr_slots(struct wire_buf *b, const struct wire_resp *resp)
{
    mp_w_cstr(b, "slots");
    mp_w_array(b, (uint32_t)resp->n_slots);
    for (size_t k = 0; k < resp->n_slots; k++) {
        const struct wire_slot *s = &resp->slots[k];
        mp_w_map(b, 4);
        mp_w_cstr(b, "offset");
        mp_w_uint(b, s->offset);
        mp_w_cstr(b, "length");
        mp_w_uint(b, s->length);
        mp_w_cstr(b, "shape");
        uint32_t nd = s->ndim <= WIRE_SLOT_MAX_DIMS ? s->ndim : WIRE_SLOT_MAX_DIMS;
        mp_w_array(b, nd);
        for (uint32_t d = 0; d < nd; d++)
            mp_w_int(b, s->shape[d]);
        mp_w_cstr(b, "dtype");
        wr_str(b, s->dtype);
    }
}

/* The value of a response as the positional form sends it. */
static void wr_value(struct wire_buf *b, const struct wire_resp *resp)
{
    switch (resp->kind) {
    case WIRE_RESP_NONE: mp_w_map(b, 0); break; /* message form only */
    case WIRE_RESP_INT:
    case WIRE_RESP_INLINE: mp_w_int(b, resp->i); break;
    case WIRE_RESP_INT_OR_NIL:
        if (resp->is_nil)
            mp_w_nil(b);
        else
            mp_w_int(b, resp->i);
        break;
    case WIRE_RESP_BOOL: mp_w_bool(b, resp->b); break;
    case WIRE_RESP_STR: wr_str(b, resp->s); break;
    case WIRE_RESP_STR_LIST:
        mp_w_array(b, (uint32_t)resp->n_strs);
        for (size_t k = 0; k < resp->n_strs; k++)
            wr_str(b, resp->strs[k]);
        break;
    case WIRE_RESP_EVENT_BOOL:
        mp_w_array(b, 2);
        mp_w_bin(b, resp->event.ptr, resp->event.len);
        mp_w_bool(b, resp->b);
        break;
    case WIRE_RESP_ED_POOL:
        mp_w_map(b, resp->has_error ? 3 : 2);
        mp_w_cstr(b, "shm_name");
        wr_str(b, resp->shm_name);
        mp_w_cstr(b, "pool_size");
        mp_w_uint(b, resp->pool_size);
        if (resp->has_error) {
            mp_w_cstr(b, "error");
            if (resp->error.ptr)
                wr_str(b, resp->error);
            else
                mp_w_nil(b);
        }
        break;
    case WIRE_RESP_ED_CONTEXT:
        mp_w_map(b, 1);
        mp_w_cstr(b, "context");
        mp_w_map(b, 2);
        wr_slots(b, resp);
        mp_w_cstr(b, "chunk_indices");
        mp_w_array(b, (uint32_t)resp->n_slots);
        for (size_t k = 0; k < resp->n_slots; k++)
            mp_w_int(b, resp->chunk_indices ? resp->chunk_indices[k] : (int64_t)k);
        break;
    case WIRE_RESP_ED_RETRIEVE:
        mp_w_map(b, 3);
        mp_w_cstr(b, "success");
        mp_w_bool(b, resp->success);
        mp_w_cstr(b, "data");
        mp_w_bin(b, resp->data.ptr, resp->success ? resp->data.len : 0);
        mp_w_cstr(b, "context");
        mp_w_map(b, resp->success ? 1 : 0);
        if (resp->success)
            wr_slots(b, resp);
        break;
    }
}

static const struct wire_row *req_row(const struct wire_req *req)
{
    const struct wire_profile_def *pd = wire_profile_get(req->profile);
    return pd ? wire_row_by_op(pd, req->op) : NULL;
}

int wire_encode_reply(const struct wire_req *req, const struct wire_resp *resp,
                      struct wire_buf *out, bool *has_frame)
{
    const struct wire_row *row = req_row(req);
    wire_buf_reset(out);
    *has_frame = false;
    if (!row || resp->kind != row->resp)
        return -WIRE_EREPLY;
    bool message = req->form == WIRE_FORM_MESSAGE;
    /* positional None (and a nil int|None) is no frame, as the reference sends */
    if (!message && (resp->kind == WIRE_RESP_NONE ||
                     (resp->kind == WIRE_RESP_INT_OR_NIL && resp->is_nil)))
        return 0;
    *has_frame = true;
    if (message && row->mresp) {
        mp_w_map(out, 1);
        mp_w_cstr(out, row->mresp);
        if (resp->kind == WIRE_RESP_EVENT_BOOL) {
            mp_w_map(out, 2);
            mp_w_cstr(out, "event_ipc_handle");
            mp_w_bin(out, resp->event.ptr, resp->event.len);
            mp_w_cstr(out, "success");
            mp_w_bool(out, resp->b);
            return out->err;
        }
    }
    wr_value(out, resp);
    return out->err;
}

int wire_resp_safe(enum wire_op op, struct wire_resp *out)
{
    wire_resp_init(out);
    if (op == WIRE_OP_NONE || (unsigned)op >= WIRE_OP_COUNT || wire_op_unserved(op))
        return -ENOTSUP; /* never answered */
    out->kind = wire_op_resp_kind(op);
    switch (out->kind) {
    case WIRE_RESP_NONE:
    case WIRE_RESP_INT_OR_NIL: /* i = 0: a miss */
    case WIRE_RESP_STR_LIST:   /* [] */
    case WIRE_RESP_ED_CONTEXT: /* no slots: store skipped */
    case WIRE_RESP_ED_RETRIEVE: /* success false */
    case WIRE_RESP_INLINE:     /* 0 chunks */
        return 0;
    case WIRE_RESP_BOOL:
        out->b = op != WIRE_OP_COMMIT_STORE;
        return 0;
    case WIRE_RESP_STR:
        out->s = (struct wire_str){ "OK", 2 };
        return 0;
    default:
        return -ENOTSUP;
    }
}

/* Cuts s to at most max bytes without splitting a UTF-8 sequence. */
static size_t utf8_cut(const char *s, size_t n, size_t max)
{
    if (n <= max)
        return n;
    while (max > 0 && ((unsigned char)s[max] & 0xc0) == 0x80)
        max--;
    return max;
}

int wire_encode_error(const char *error_type, const char *message, struct wire_buf *marker,
                      struct wire_buf *map)
{
    wire_buf_reset(marker);
    wire_buf_reset(map);
    mp_w_raw(marker, WIRE_ERROR_MARKER, strlen(WIRE_ERROR_MARKER));
    size_t n = strlen(message);
    mp_w_map(map, 2);
    mp_w_cstr(map, "error_type");
    mp_w_cstr(map, error_type);
    mp_w_cstr(map, "message");
    mp_w_str(map, message, utf8_cut(message, n, WIRE_ERROR_MESSAGE_MAX));
    return marker->err ? marker->err : map->err;
}

/* ---- decode (client) ------------------------------------------------------ */

/* Finds `name` in the map at r and leaves r on its value; -WIRE_EMISSING if
 * absent. The map must be the whole rest of a validated document. */
static int rd_field(struct mp_rd *r, const char *name)
{
    uint32_t n;
    int rc = wire_rd_map(r, &n);
    for (uint32_t k = 0; rc == 0 && k < n; k++) {
        struct wire_str key;
        if ((rc = wire_rd_key(r, &key)) < 0)
            return rc;
        if (wire_str_eq(key, name))
            return 0;
        rc = mp_skip(r, 1);
    }
    return rc < 0 ? rc : -WIRE_EMISSING;
}

static int rd_slot(struct mp_rd *r, struct wire_slot *s)
{
    uint32_t n;
    int rc = wire_rd_map(r, &n);
    for (uint32_t k = 0; rc == 0 && k < n; k++) {
        struct wire_str key;
        int64_t v = 0;
        if ((rc = wire_rd_key(r, &key)) < 0)
            break;
        if (wire_str_eq(key, "offset") || wire_str_eq(key, "length")) {
            rc = wire_rd_int(r, false, &v);
            if (rc == 0 && v < 0)
                rc = -WIRE_ERANGE;
            *(key.ptr[0] == 'o' ? &s->offset : &s->length) = (uint64_t)v;
        } else if (wire_str_eq(key, "shape")) {
            struct mp_obj o;
            if ((rc = mp_next(r, &o)) < 0)
                break;
            if (o.type != MP_ARRAY || o.n > WIRE_SLOT_MAX_DIMS) {
                rc = o.type != MP_ARRAY ? -WIRE_EWRONGTYPE : -WIRE_ERANGE;
                break;
            }
            s->ndim = o.n;
            for (uint32_t d = 0; rc == 0 && d < o.n; d++)
                rc = wire_rd_int(r, false, &s->shape[d]);
        } else if (wire_str_eq(key, "dtype")) {
            rc = wire_rd_str(r, &s->dtype);
        } else {
            rc = mp_skip(r, 1);
        }
    }
    return rc;
}

static int rd_int_list(struct mp_rd *r, struct wire_resp *resp, int64_t **out, size_t *count)
{
    uint32_t n;
    int rc = wire_rd_array_own(r, &resp->owned_, sizeof(**out), (void **)out, &n);
    *count = n;
    for (uint32_t k = 0; rc == 0 && k < n; k++)
        rc = wire_rd_int(r, false, &(*out)[k]);
    return rc;
}

/* context map: {"slots": [...], "chunk_indices": [...]} (either may be absent) */
static int rd_context(struct mp_rd *r, struct wire_resp *resp)
{
    uint32_t n;
    size_t n_idx = 0;
    int rc = wire_rd_map(r, &n);
    for (uint32_t k = 0; rc == 0 && k < n; k++) {
        struct wire_str key;
        if ((rc = wire_rd_key(r, &key)) < 0)
            break;
        if (wire_str_eq(key, "slots")) {
            uint32_t ns;
            rc = wire_rd_array_own(r, &resp->owned_, sizeof(*resp->slots), (void **)&resp->slots, &ns);
            resp->n_slots = rc == 0 ? ns : 0;
            for (uint32_t j = 0; rc == 0 && j < ns; j++)
                rc = rd_slot(r, &resp->slots[j]);
        } else if (wire_str_eq(key, "chunk_indices")) {
            rc = rd_int_list(r, resp, &resp->chunk_indices, &n_idx);
        } else {
            rc = mp_skip(r, 1);
        }
    }
    if (rc == 0 && resp->chunk_indices && n_idx != resp->n_slots)
        rc = -WIRE_EREPLY;
    return rc;
}

static int rd_pool(struct mp_rd *r, struct wire_resp *resp)
{
    uint32_t n;
    int rc = wire_rd_map(r, &n);
    for (uint32_t k = 0; rc == 0 && k < n; k++) {
        struct wire_str key;
        int64_t v;
        if ((rc = wire_rd_key(r, &key)) < 0)
            break;
        if (wire_str_eq(key, "shm_name")) {
            rc = wire_rd_str(r, &resp->shm_name);
        } else if (wire_str_eq(key, "pool_size")) {
            if ((rc = wire_rd_int(r, false, &v)) == 0)
                resp->pool_size = v < 0 ? 0 : (uint64_t)v;
        } else if (wire_str_eq(key, "error") && mp_left(r) && *r->p != 0xc0) {
            resp->has_error = true;
            rc = wire_rd_str(r, &resp->error);
        } else {
            rc = mp_skip(r, 1);
        }
    }
    return rc;
}

static int rd_ed_retrieve(struct mp_rd *r, struct wire_resp *resp)
{
    uint32_t n;
    bool got_success = false;
    int rc = wire_rd_map(r, &n);
    for (uint32_t k = 0; rc == 0 && k < n; k++) {
        struct wire_str key;
        if ((rc = wire_rd_key(r, &key)) < 0)
            break;
        if (wire_str_eq(key, "success")) {
            got_success = true;
            rc = wire_rd_bool(r, false, &resp->success);
        } else if (wire_str_eq(key, "data")) {
            rc = wire_rd_bin(r, &resp->data);
        } else if (wire_str_eq(key, "context")) {
            rc = rd_context(r, resp);
        } else {
            rc = mp_skip(r, 1);
        }
    }
    return rc == 0 && !got_success ? -WIRE_EMISSING : rc;
}

static int rd_str_list(struct mp_rd *r, struct wire_resp *resp)
{
    uint32_t n;
    int rc = wire_rd_array_own(r, &resp->owned_, sizeof(*resp->strs), (void **)&resp->strs, &n);
    resp->n_strs = rc == 0 ? n : 0;
    for (uint32_t k = 0; rc == 0 && k < n; k++)
        rc = wire_rd_str(r, &resp->strs[k]);
    return rc;
}

static int rd_value(struct mp_rd *r, struct wire_resp *resp)
{
    int rc;
    switch (resp->kind) {
    case WIRE_RESP_NONE: return mp_skip(r, 0);
    case WIRE_RESP_INT:
    case WIRE_RESP_INLINE: return wire_rd_int(r, false, &resp->i);
    case WIRE_RESP_INT_OR_NIL:
        if (mp_left(r) && *r->p == 0xc0) {
            resp->is_nil = true;
            return mp_skip(r, 0);
        }
        return wire_rd_int(r, false, &resp->i);
    case WIRE_RESP_BOOL: return wire_rd_bool(r, true, &resp->b);
    case WIRE_RESP_STR: return wire_rd_str(r, &resp->s);
    case WIRE_RESP_STR_LIST: return rd_str_list(r, resp);
    case WIRE_RESP_EVENT_BOOL: {
        struct mp_obj o;
        if ((rc = mp_next(r, &o)) < 0)
            return rc;
        if (o.type != MP_ARRAY || o.n != 2)
            return -WIRE_EWRONGTYPE;
        if ((rc = wire_rd_bin(r, &resp->event)) < 0)
            return rc;
        return wire_rd_bool(r, false, &resp->b);
    }
    case WIRE_RESP_ED_POOL: return rd_pool(r, resp);
    case WIRE_RESP_ED_CONTEXT:
        if ((rc = rd_field(r, "context")) < 0)
            return rc;
        return rd_context(r, resp);
    case WIRE_RESP_ED_RETRIEVE: return rd_ed_retrieve(r, resp);
    }
    return -WIRE_EREPLY;
}

/* Message form: {"result": {"event_ipc_handle": bin, "success": bool}} */
static int rd_result(struct mp_rd *r, struct wire_resp *resp)
{
    struct mp_rd probe = *r;
    int rc = rd_field(&probe, "event_ipc_handle");
    if (rc == 0)
        rc = wire_rd_bin(&probe, &resp->event);
    if (rc == 0)
        rc = rd_field(r, "success");
    return rc == 0 ? wire_rd_bool(r, false, &resp->b) : rc;
}

int wire_decode_reply(enum wire_profile profile, enum wire_form form, enum wire_op op,
                      const struct wire_frame *frames, size_t n, struct wire_resp *out)
{
    const struct wire_profile_def *pd = wire_profile_get(profile);
    wire_resp_init(out);
    if (!pd)
        return -EINVAL;
    const struct wire_row *row = wire_row_by_op(pd, op);
    const struct wire_row *echoed = NULL;
    int64_t type_id;
    uint64_t uid;
    if (!row)
        return -WIRE_EUNKNOWN;
    if (n < 2)
        return -WIRE_EFRAMES;
    int rc = wire_decode_uid(&frames[0], &uid);
    if (rc < 0)
        return rc;
    if ((rc = wire_row_by_frame(pd, &frames[1], &echoed, &type_id)) < 0)
        return rc;
    if (echoed != row)
        return -WIRE_EREPLY;
    out->kind = row->resp;
    bool message = form == WIRE_FORM_MESSAGE;
    bool inline_frames = row->op == WIRE_OP_RETRIEVE_INLINE;
    if (n == 2) {
        /* positional None: no response frame */
        if (message || (row->resp != WIRE_RESP_NONE && row->resp != WIRE_RESP_INT_OR_NIL))
            return -WIRE_EREPLY;
        out->is_nil = true;
        return 0;
    }
    if (!inline_frames && n > 3)
        return -WIRE_EREPLY;
    const struct wire_frame *f = &frames[2];
    if ((rc = mp_validate(f->data, f->len)) < 0)
        return rc;
    struct mp_rd r;
    mp_rd_init(&r, f->data, f->len);
    if (!message && row->resp != WIRE_RESP_NONE && *r.p == 0xc0) {
        if (row->resp != WIRE_RESP_INT_OR_NIL)
            return -WIRE_EREPLY;
        out->is_nil = true;
        return 0;
    }
    if (message && row->resp == WIRE_RESP_NONE) {
        rc = mp_peek_type(f->data, f->len) == MP_MAP ? 0 : -WIRE_EWRONGTYPE;
    } else if (message && row->mresp) {
        rc = rd_field(&r, row->mresp);
        if (rc == 0)
            rc = row->resp == WIRE_RESP_EVENT_BOOL ? rd_result(&r, out) : rd_value(&r, out);
    } else {
        rc = rd_value(&r, out);
    }
    if (rc == 0 && inline_frames) {
        out->n_raw = n - 3;
        if (out->i < 0 || (uint64_t)out->i != out->n_raw)
            rc = -WIRE_EREPLY;
        else if (!(out->raw = wire_own(&out->owned_, out->n_raw ? out->n_raw : 1,
                                        sizeof(*out->raw))))
            rc = -ENOMEM;
        else
            memcpy(out->raw, frames + 3, out->n_raw * sizeof(*out->raw));
    }
    if (rc < 0) {
        enum wire_resp_kind kind = out->kind;
        wire_resp_free(out);
        out->kind = kind;
    }
    return rc;
}
