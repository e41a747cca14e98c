/*
 * request: the envelope (uid, type, payload frames), form detection and the
 * row-driven request decoder and encoder.
 */
#include <errno.h>
#include <string.h>

#include "wire/proto.h"

void wire_req_init(struct wire_req *req) { memset(req, 0, sizeof(*req)); }

void wire_req_free(struct wire_req *req)
{
    if (!req)
        return;
    wire_own_free(&req->owned_);
    wire_req_init(req);
}

/* One msgpack int filling the whole frame. */
static int frame_int(const struct wire_frame *f, struct mp_obj *o)
{
    struct mp_rd r;
    mp_rd_init(&r, f->data, f->len);
    if (mp_next(&r, o) < 0 || o->type != MP_INT || mp_left(&r))
        return -1;
    return 0;
}

int wire_decode_uid(const struct wire_frame *frame, uint64_t *uid)
{
    struct mp_obj o;
    if (frame_int(frame, &o) < 0)
        return -WIRE_EUID;
    *uid = o.neg ? (uint64_t)o.i : o.u;
    return 0;
}

int wire_row_by_frame(const struct wire_profile_def *pd, const struct wire_frame *f,
                      const struct wire_row **row, int64_t *type_id)
{
    struct mp_rd r;
    struct mp_obj o;
    mp_rd_init(&r, f->data, f->len);
    if (mp_next(&r, &o) < 0 || mp_left(&r))
        return -WIRE_ETYPE;
    if (o.type == MP_INT) {
        *type_id = o.neg ? -1 : (int64_t)(o.u > INT32_MAX ? INT32_MAX : o.u);
        *row = o.neg ? NULL : wire_row_by_id(pd, *type_id);
    } else if (o.type == MP_STR) {
        *type_id = -1;
        *row = pd->names_on_wire ? wire_row_by_name(pd, (const char *)o.p, o.n) : NULL;
    } else {
        return -WIRE_ETYPE;
    }
    return *row ? 0 : -WIRE_EUNKNOWN;
}

/* Spec 4.4: exactly one payload frame, a map, and the positional form is not
 * itself one map (op 14). */
static bool is_message_form(const struct wire_profile_def *pd, const struct wire_row *row,
                            const struct wire_frame *payload, size_t n)
{
    if (!pd->message_form || (row->flags & ROW_NO_MESSAGE) || n != 1)
        return false;
    if (mp_peek_type(payload[0].data, payload[0].len) != MP_MAP)
        return false;
    return !(row->min <= 1 && row->p[0] != P_END && wire_param_info(row->p[0])->is_map);
}

static bool row_has_key(const struct wire_row *row)
{
    for (unsigned j = 0; row->p[j] != P_END; j++)
        if (row->p[j] == P_KEY || row->p[j] == P_KEY_WORKER)
            return true;
    return false;
}

static int decode_message(const struct wire_row *row, const struct wire_frame *f,
                          struct wire_req *req)
{
    struct mp_rd r;
    uint32_t n, seen = 0;
    mp_rd_init(&r, f->data, f->len);
    int rc = wire_rd_map(&r, &n);
    for (uint32_t k = 0; rc == 0 && k < n; k++) {
        struct wire_str key;
        if ((rc = wire_rd_key(&r, &key)) < 0)
            break;
        unsigned j = 0;
        for (; row->p[j] != P_END; j++) {
            const char *mname = wire_param_info(row->p[j])->mname;
            if (mname && wire_str_eq(key, mname))
                break;
        }
        if (row->p[j] == P_END) {
            rc = mp_skip(&r, 1);
            continue;
        }
        seen |= 1u << j;
        rc = wire_param_decode(row->p[j], &r, req, false);
    }
    if (rc < 0)
        return rc;
    for (unsigned j = 0; j < row->min; j++)
        if (wire_param_info(row->p[j])->mname && !(seen & (1u << j)))
            return -WIRE_EMISSING;
    return 0;
}

static int decode_positional(const struct wire_row *row, const struct wire_frame *payload,
                             size_t n, struct wire_req *req)
{
    const uint8_t *params = row->p;
    size_t n_params = n;
    if (row->alt_n && n == row->alt_n) {
        params = row->alt;
    } else if (n < row->min || (n > row->max && !(row->flags & ROW_RAW_TAIL))) {
        return -WIRE_EARITY;
    } else if (n > row->max) {
        n_params = row->max;
    }
    /* every frame is validated before any is decoded; a key's token list is
     * decoded by the same walk (struct mp_cap) and taken from it below */
    struct mp_cap cap = { .own = &req->owned_ };
    for (size_t k = 0; k < n_params; k++) {
        bool key = params[k] == P_KEY || params[k] == P_KEY_WORKER;
        int rc = mp_validate_cap(payload[k].data, payload[k].len, key ? &cap : NULL);
        if (rc < 0)
            return rc;
    }
    req->cap_ = &cap;
    for (size_t k = 0; k < n_params; k++) {
        struct mp_rd r;
        mp_rd_init(&r, payload[k].data, payload[k].len);
        int rc = wire_param_decode(params[k], &r, req, true);
        if (rc == 0 && mp_left(&r))
            rc = -WIRE_ETRAILING;
        if (rc < 0) {
            req->cap_ = NULL;
            return rc;
        }
    }
    req->cap_ = NULL;
    if (row->flags & ROW_RAW_TAIL) {
        req->n_raw = n - n_params;
        req->raw = wire_own(&req->owned_, req->n_raw ? req->n_raw : 1, sizeof(*req->raw));
        if (!req->raw)
            return -ENOMEM;
        memcpy(req->raw, payload + n_params, req->n_raw * sizeof(*req->raw));
    }
    return 0;
}

int wire_decode_request(enum wire_profile profile, const struct wire_frame *frames, size_t n,
                        struct wire_req *out)
{
    const struct wire_profile_def *pd = wire_profile_get(profile);
    const struct wire_row *row = NULL;
    wire_req_init(out);
    out->profile = profile;
    out->type_id = -1;
    if (!pd)
        return -EINVAL;
    if (n < 2)
        return -WIRE_EFRAMES;
    int rc = wire_decode_uid(&frames[0], &out->uid);
    if (rc < 0)
        return rc;
    if ((rc = wire_row_by_frame(pd, &frames[1], &row, &out->type_id)) < 0)
        return rc;
    out->op = row->op;
    out->op_name = row->name;
    out->cls = row->cls;
    if (wire_op_unserved(row->op))
        return -WIRE_EUNSERVED;
    const struct wire_frame *payload = frames + 2;
    size_t np = n - 2;
    if (is_message_form(pd, row, payload, np)) {
        out->form = WIRE_FORM_MESSAGE;
        struct mp_cap cap = { .own = &out->owned_ };
        rc = mp_validate_cap(payload[0].data, payload[0].len, row_has_key(row) ? &cap : NULL);
        out->cap_ = &cap;
        if (rc == 0)
            rc = decode_message(row, &payload[0], out);
        out->cap_ = NULL;
    } else {
        rc = decode_positional(row, payload, np, out);
    }
    if (rc < 0) {
        /* keep what identifies the request for the caller's log line */
        struct wire_req keep = *out;
        wire_req_free(out);
        out->op = keep.op;
        out->op_name = keep.op_name;
        out->cls = keep.cls;
        out->profile = keep.profile;
        out->form = keep.form;
        out->type_id = keep.type_id;
        out->uid = keep.uid;
    }
    return rc;
}

/* ---- client: encode a request ------------------------------------------ */

static void msg_frame_end(struct wire_msg *m)
{
    m->off[++m->n_frames] = m->buf.len;
}

int wire_encode_request(enum wire_profile profile, enum wire_form form,
                        const struct wire_req *req, uint64_t uid, struct wire_msg *out)
{
    const struct wire_profile_def *pd = wire_profile_get(profile);
    if (!pd)
        return -EINVAL;
    if (wire_op_unserved(req->op))
        return -WIRE_EUNSERVED;
    const struct wire_row *row = wire_row_by_op(pd, req->op);
    if (!row)
        return -WIRE_EUNKNOWN;
    if (form == WIRE_FORM_MESSAGE && (!pd->message_form || (row->flags & ROW_NO_MESSAGE)))
        return -EINVAL;
    wire_buf_reset(&out->buf);
    out->n_frames = 0;
    out->off[0] = 0;
    mp_w_uint(&out->buf, uid);
    msg_frame_end(out);
    if (row->id >= 0)
        mp_w_int(&out->buf, row->id);
    else
        mp_w_cstr(&out->buf, row->name);
    msg_frame_end(out);

    unsigned n = 0;
    while (n < WIRE_MAX_PARAMS && row->p[n] != P_END)
        n++;
    /* op 14's single map is the same in both forms */
    bool as_map = form == WIRE_FORM_MESSAGE && !(n == 1 && wire_param_info(row->p[0])->is_map &&
                                                 row->min <= 1);
    if (as_map) {
        uint32_t fields = 0;
        for (unsigned k = 0; k < n; k++)
            fields += wire_param_info(row->p[k])->mname != NULL;
        mp_w_map(&out->buf, fields);
        for (unsigned k = 0; k < n; k++) {
            const char *mname = wire_param_info(row->p[k])->mname;
            if (!mname)
                continue;
            mp_w_cstr(&out->buf, mname);
            wire_param_encode(row->p[k], &out->buf, req, profile);
        }
        msg_frame_end(out);
    } else {
        for (unsigned k = 0; k + row->enc_drop < n; k++) {
            wire_param_encode(row->p[k], &out->buf, req, profile);
            msg_frame_end(out);
        }
    }
    return out->buf.err;
}
