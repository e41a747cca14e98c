/*
 * fields: how each payload parameter and each map-encoded struct (Key, the
 * engine-driven registration payload) is decoded into struct wire_req and
 * encoded back. Both directions read the same descriptors, so the request
 * decoder and the client encoder cannot drift apart.
 *
 * msgspec strictness (spec 2): a top-level positional frame declared exactly
 * int/bool accepts int or bool (`lenient`); inside maps, and for int|None,
 * a bool is not an int and an int is not a bool; str is never bin; a float
 * field accepts an int.
 */
#include <errno.h>
#include <stddef.h>
#include <string.h>

#include "wire/proto.h"

static const struct wire_param_info params[P_COUNT_] = {
    [P_KEY] = { "key", "key:Key", true },
    [P_KEY_WORKER] = { "key", "key:Key(worker_id:int)", true },
    [P_INSTANCE_ID] = { "instance_id", "instance_id:int", false },
    [P_INSTANCE_ID_OR_NIL] = { "instance_id", "instance_id:int|None", false },
    [P_TP_SIZE] = { "tp_size", "tp_size:int", false },
    [P_BLOCK_IDS] = { "gpu_block_ids", "block_ids:[[int]]|[int]", false },
    [P_EVENT] = { "event_ipc_handle", "event_ipc_handle:bytes", false },
    [P_SKIP] = { "skip_first_n_tokens", "skip_first_n_tokens:int", false },
    [P_REQUEST_ID] = { "request_id", "request_id:str", false },
    [P_TIMEOUT] = { "timeout", "timeout:float", false },
    [P_END_INFO] = { NULL, "end_info:map", true },
    [P_FORCE] = { NULL, "force:bool", false },
    [P_DATA] = { "data", "data:bytes", false },
    [P_ED_PAYLOAD] = { NULL, "payload:RegisterEngineDrivenContextPayload", true },
    [P_KV_CACHES] = { "kv_cache", "kv_cache:[ext1]", false },
    [P_MODEL_NAME] = { "model_name", "model_name:str", false },
    [P_WORLD_SIZE] = { "world_size", "world_size:int", false },
    [P_ENGINE_TYPE] = { "engine_type", "engine_type:str", false },
    [P_TYPE_OR_HINTS] = { "engine_type", "engine_type:str|layout_hints:map", false },
    [P_LAYOUT_HINTS] = { "layout_hints", "layout_hints:map", true },
    [P_ENGINE_GROUPS] = { "engine_group_infos", "engine_group_infos:[EngineGroupInfo]", false },
    [P_RECORDS] = { "records", "records:[BlockAllocationRecord]", false },
};

const struct wire_param_info *wire_param_info(enum wire_param p)
{
    static const struct wire_param_info none = { NULL, "?", false };
    return (unsigned)p < P_COUNT_ && params[p].help ? &params[p] : &none;
}

/* ---- scalar readers ---------------------------------------------------- */

int wire_rd_int(struct mp_rd *r, bool lenient, int64_t *v)
{
    struct mp_obj o;
    int rc = mp_next(r, &o);
    if (rc < 0)
        return rc;
    if (o.type == MP_BOOL && lenient) {
        *v = o.b;
        return 0;
    }
    return mp_obj_i64(&o, v);
}

int wire_rd_bool(struct mp_rd *r, bool lenient, bool *v)
{
    struct mp_obj o;
    int rc = mp_next(r, &o);
    if (rc < 0)
        return rc;
    if (o.type == MP_BOOL) {
        *v = o.b;
        return 0;
    }
    if (lenient && o.type == MP_INT && !o.neg && o.u <= 1) {
        *v = o.u == 1;
        return 0;
    }
    return -WIRE_EWRONGTYPE;
}

int wire_rd_typed(struct mp_rd *r, enum mp_type t, struct mp_obj *o)
{
    int rc = mp_next(r, o);
    if (rc < 0)
        return rc;
    return o->type == t ? 0 : -WIRE_EWRONGTYPE;
}

int wire_rd_array_own(struct mp_rd *r, struct wire_alloc **own, size_t size, void **out,
                      uint32_t *n)
{
    struct mp_obj o;
    int rc = wire_rd_typed(r, MP_ARRAY, &o);
    if (rc < 0)
        return rc;
    /* n <= bytes left (checked by mp_next), so the allocation is bounded */
    if (!(*out = wire_own(own, o.n ? o.n : 1, size)))
        return -ENOMEM;
    *n = o.n;
    return 0;
}

static int rd_view(struct mp_rd *r, enum mp_type t, const uint8_t **p, uint32_t *n)
{
    struct mp_obj o;
    int rc = wire_rd_typed(r, t, &o);
    if (rc < 0)
        return rc;
    *p = o.p;
    *n = o.n;
    return 0;
}

int wire_rd_str(struct mp_rd *r, struct wire_str *s)
{
    const uint8_t *p = NULL;
    int rc = rd_view(r, MP_STR, &p, &s->len);
    s->ptr = (const char *)p;
    return rc;
}

int wire_rd_bin(struct mp_rd *r, struct wire_bin *s) { return rd_view(r, MP_BIN, &s->ptr, &s->len); }

static int rd_float(struct mp_rd *r, double *v)
{
    struct mp_obj o;
    int rc = mp_next(r, &o);
    if (rc < 0)
        return rc;
    if (o.type == MP_FLOAT)
        *v = o.f;
    else if (o.type == MP_INT)
        *v = o.neg ? (double)o.i : (double)o.u;
    else
        return -WIRE_EWRONGTYPE;
    return 0;
}

static int rd_container(struct mp_rd *r, enum mp_type t, uint32_t *n)
{
    struct mp_obj o;
    int rc = wire_rd_typed(r, t, &o);
    *n = o.n;
    return rc;
}

int wire_rd_map(struct mp_rd *r, uint32_t *n) { return rd_container(r, MP_MAP, n); }

int wire_rd_key(struct mp_rd *r, struct wire_str *key) { return wire_rd_str(r, key); }

bool wire_str_eq(struct wire_str s, const char *lit)
{
    size_t n = strlen(lit);
    return s.len == n && (n == 0 || memcmp(s.ptr, lit, n) == 0);
}

static bool peek_nil(const struct mp_rd *r) { return mp_left(r) && *r->p == 0xc0; }

/* Skips a value and returns its bytes as a view. */
static int rd_raw(struct mp_rd *r, struct wire_bin *raw)
{
    const uint8_t *start = r->p;
    int rc = mp_skip(r, 0);
    if (rc < 0)
        return rc;
    raw->ptr = start;
    raw->len = (uint32_t)(r->p - start);
    return 0;
}

/* An array whose elements are all maps: counted, kept as a raw view. */
static int rd_map_list(struct mp_rd *r, size_t *count, struct wire_bin *raw)
{
    struct mp_rd probe = *r;
    uint32_t n;
    int rc = rd_container(&probe, MP_ARRAY, &n);
    if (rc < 0)
        return rc;
    for (uint32_t k = 0; k < n; k++) {
        if (mp_peek_type(probe.p, mp_left(&probe)) != MP_MAP)
            return -WIRE_EWRONGTYPE;
        if ((rc = mp_skip(&probe, 1)) < 0)
            return rc;
    }
    *count = n;
    return rd_raw(r, raw);
}

/* ---- map-encoded structs ------------------------------------------------ */

enum mf_kind {
    MF_STR,           /* struct wire_str at off */
    MF_INT,           /* int64_t at off */
    MF_INT_OR_NIL,    /* int64_t at off, bool has at off2 */
    MF_BOOL,          /* bool at off */
    MF_U32_LIST,      /* uint32_t * at off, size_t count at off2 */
    MF_ANY,           /* validated and ignored */
    MF_FLAG_NONNIL,   /* bool at off set when the value is not nil */
    MF_FLAG_NONEMPTY, /* array; bool at off set when it has elements */
};

enum mf_enc {
    E_VALUE,       /* encode the field from the struct */
    E_NIL,         /* encode nil */
    E_EMPTY_LIST,  /* encode [] */
    E_FALSE,       /* encode false */
    E_NEWEST_NIL,  /* 2609 only: nil */
    E_NEWEST,      /* 2609 only: the value */
};

struct mfield {
    const char *name;
    uint8_t kind;
    uint8_t enc;
    bool required;
    size_t off, off2;
};

#define KF(f) offsetof(struct wire_key, f)
static const struct mfield key_fields[] = {
    { "model_name", MF_STR, E_VALUE, true, KF(model_name), 0 },
    { "world_size", MF_INT, E_VALUE, true, KF(world_size), 0 },
    { "worker_id", MF_INT_OR_NIL, E_VALUE, true, KF(worker_id), KF(has_worker_id) },
    { "token_ids", MF_U32_LIST, E_VALUE, true, KF(token_ids), KF(n_tokens) },
    { "start", MF_INT, E_VALUE, true, KF(start), 0 },
    { "end", MF_INT, E_VALUE, true, KF(end), 0 },
    { "request_id", MF_STR, E_VALUE, true, KF(request_id), 0 },
    { "cache_salt", MF_STR, E_VALUE, false, KF(cache_salt), 0 },
    { "request_configs", MF_ANY, E_NEWEST_NIL, false, 0, 0 },
    { "num_kv_readers", MF_INT, E_NEWEST, false, KF(num_kv_readers), 0 },
    { "null_chunk_mask", MF_ANY, E_NEWEST_NIL, false, 0, 0 },
};
#undef KF

#define RF(f) offsetof(struct wire_req, f)
static const struct mfield ed_fields[] = {
    { "instance_id", MF_INT, E_VALUE, true, RF(instance_id), 0 },
    { "model_name", MF_STR, E_VALUE, true, RF(model_name), 0 },
    { "world_size", MF_INT, E_VALUE, true, RF(world_size), 0 },
    { "block_size", MF_INT, E_VALUE, true, RF(ed.block_size), 0 },
    { "num_layers", MF_INT, E_VALUE, true, RF(ed.num_layers), 0 },
    { "hidden_dim_size", MF_INT, E_VALUE, true, RF(ed.hidden_dim_size), 0 },
    { "dtype_str", MF_STR, E_VALUE, true, RF(ed.dtype_str), 0 },
    { "use_mla", MF_BOOL, E_VALUE, true, RF(ed.use_mla), 0 },
    { "num_physical_slots", MF_INT_OR_NIL, E_VALUE, false, RF(ed.num_physical_slots),
      RF(ed.has_num_physical_slots) },
    { "engine_group_infos", MF_FLAG_NONEMPTY, E_EMPTY_LIST, false, RF(ed.multi_group), 0 },
    { "group_hidden_dim_sizes", MF_FLAG_NONNIL, E_NIL, false, RF(ed.multi_group), 0 },
    { "group_layout_descs", MF_FLAG_NONNIL, E_NIL, false, RF(ed.multi_group), 0 },
    { "enable_l1_kvweave_quant", MF_ANY, E_FALSE, false, 0, 0 },
};
#undef RF

#define NFIELDS(a) (sizeof(a) / sizeof((a)[0]))

/* A u32 list; the one the validator captured (struct mp_cap) is taken as
 * it decoded it, without reading it again. */
static int rd_u32_list(struct mp_rd *r, struct wire_alloc **own, const struct mp_cap *cap, uint32_t **out,
                       size_t *count)
{
    if (cap && cap->at && r->p == cap->at) {
        *out = cap->buf;
        *count = cap->n;
        r->p = cap->end;
        return 0;
    }
    uint32_t n;
    uint32_t *v;
    int rc = wire_rd_array_own(r, own, sizeof(*v), (void **)&v, &n);
    if (rc < 0)
        return rc;
    for (uint32_t k = 0; k < n; k++) {
        /* The forms encoders give token ids (positive fixint, uint8/16/32),
         * read in place; anything else, and truncation, through mp_next. */
        k += mp_rd_u32s(r, v + k, n - k);
        if (k == n)
            break;
        struct mp_obj o;
        if ((rc = wire_rd_typed(r, MP_INT, &o)) < 0)
            return rc;
        if (o.neg || o.u > UINT32_MAX)
            return -WIRE_ERANGE;
        v[k] = (uint32_t)o.u;
    }
    *out = v;
    *count = n;
    return 0;
}

static int mf_decode(const struct mfield *f, struct mp_rd *r, char *base, struct wire_alloc **own,
                     const struct mp_cap *cap)
{
    switch (f->kind) {
    case MF_STR: return wire_rd_str(r, (struct wire_str *)(base + f->off));
    case MF_INT: return wire_rd_int(r, false, (int64_t *)(base + f->off));
    case MF_BOOL: return wire_rd_bool(r, false, (bool *)(base + f->off));
    case MF_INT_OR_NIL:
        *(bool *)(base + f->off2) = !peek_nil(r);
        if (peek_nil(r))
            return mp_skip(r, 0);
        return wire_rd_int(r, false, (int64_t *)(base + f->off));
    case MF_U32_LIST:
        return rd_u32_list(r, own, cap, (uint32_t **)(base + f->off), (size_t *)(base + f->off2));
    case MF_FLAG_NONNIL:
        if (!peek_nil(r))
            *(bool *)(base + f->off) = true;
        return mp_skip(r, 0);
    case MF_FLAG_NONEMPTY: {
        struct mp_rd probe = *r;
        uint32_t n;
        int rc = rd_container(&probe, MP_ARRAY, &n);
        if (rc < 0)
            return rc;
        if (n)
            *(bool *)(base + f->off) = true;
        return mp_skip(r, 0);
    }
    default: return mp_skip(r, 0);
    }
}

/* Decodes a msgspec Struct/dataclass map: fields by name, unknown keys
 * ignored, missing required field = -WIRE_EMISSING. */
static int map_decode(const struct mfield *fields, size_t nf, struct mp_rd *r, void *base,
                      struct wire_alloc **own, const struct mp_cap *cap)
{
    uint32_t n, seen = 0;
    int rc = wire_rd_map(r, &n);
    if (rc < 0)
        return rc;
    for (uint32_t k = 0; k < n; k++) {
        struct wire_str key;
        if ((rc = wire_rd_key(r, &key)) < 0)
            return rc;
        size_t j = 0;
        while (j < nf && !wire_str_eq(key, fields[j].name))
            j++;
        rc = j < nf ? mf_decode(&fields[j], r, base, own, cap) : mp_skip(r, 0);
        if (rc < 0)
            return rc;
        if (j < nf)
            seen |= 1u << j;
    }
    for (size_t j = 0; j < nf; j++)
        if (fields[j].required && !(seen & (1u << j)))
            return -WIRE_EMISSING;
    return 0;
}

static void mf_encode(const struct mfield *f, struct wire_buf *b, const char *base)
{
    switch (f->kind) {
    case MF_STR: {
        const struct wire_str *s = (const struct wire_str *)(base + f->off);
        mp_w_str(b, s->ptr, s->len);
        break;
    }
    case MF_INT: mp_w_int(b, *(const int64_t *)(base + f->off)); break;
    case MF_BOOL: mp_w_bool(b, *(const bool *)(base + f->off)); break;
    case MF_INT_OR_NIL:
        if (*(const bool *)(base + f->off2))
            mp_w_int(b, *(const int64_t *)(base + f->off));
        else
            mp_w_nil(b);
        break;
    case MF_U32_LIST: {
        const uint32_t *v = *(uint32_t *const *)(base + f->off);
        size_t n = *(const size_t *)(base + f->off2);
        mp_w_array(b, (uint32_t)n);
        for (size_t k = 0; k < n; k++)
            mp_w_uint(b, v[k]);
        break;
    }
    default: mp_w_nil(b); break;
    }
}

static void map_encode(const struct mfield *fields, size_t nf, struct wire_buf *b,
                       const void *base, enum wire_profile profile)
{
    bool newest = profile == WIRE_PROFILE_2609;
    uint32_t n = 0;
    for (size_t j = 0; j < nf; j++)
        n += newest || (fields[j].enc != E_NEWEST && fields[j].enc != E_NEWEST_NIL);
    mp_w_map(b, n);
    for (size_t j = 0; j < nf; j++) {
        const struct mfield *f = &fields[j];
        if (!newest && (f->enc == E_NEWEST || f->enc == E_NEWEST_NIL))
            continue;
        mp_w_cstr(b, f->name);
        switch (f->enc) {
        case E_NIL: case E_NEWEST_NIL: mp_w_nil(b); break;
        case E_EMPTY_LIST: mp_w_array(b, 0); break;
        case E_FALSE: mp_w_bool(b, false); break;
        default: mf_encode(f, b, base); break;
        }
    }
}

/* ---- block ids ---------------------------------------------------------- */

/* [int] (one group) or [[int], ...] (one list per KV group). */
static int rd_block_ids(struct mp_rd *r, struct wire_req *req)
{
    struct wire_block_ids *bi = &req->blocks;
    struct mp_rd probe = *r;
    uint32_t n;
    int rc = rd_container(&probe, MP_ARRAY, &n);
    if (rc < 0)
        return rc;
    bool nested = n && mp_peek_type(probe.p, mp_left(&probe)) == MP_ARRAY;
    size_t total = nested ? 0 : n;
    for (uint32_t g = 0; nested && g < n; g++) {
        uint32_t m;
        if ((rc = rd_container(&probe, MP_ARRAY, &m)) < 0)
            return rc;
        total += m;
        for (uint32_t k = 0; k < m; k++)
            if ((rc = mp_skip(&probe, 2)) < 0)
                return rc;
    }
    size_t groups = nested ? n : (n ? 1 : 0);
    bi->ids = wire_own(&req->owned_, total ? total : 1, sizeof(*bi->ids));
    bi->group_off = wire_own(&req->owned_, groups + 1, sizeof(*bi->group_off));
    if (!bi->ids || !bi->group_off)
        return -ENOMEM;
    bi->n_ids = total;
    bi->n_groups = groups;
    (void)rd_container(r, MP_ARRAY, &n);
    size_t at = 0;
    for (uint32_t g = 0; g < (nested ? n : 1u) && groups; g++) {
        uint32_t m = n;
        if (nested && (rc = rd_container(r, MP_ARRAY, &m)) < 0)
            return rc;
        bi->group_off[g] = at;
        for (uint32_t k = 0; k < m; k++)
            if ((rc = wire_rd_int(r, false, &bi->ids[at++])) < 0)
                return rc;
    }
    bi->group_off[groups] = at;
    return 0;
}

static void wr_block_ids(struct wire_buf *b, const struct wire_block_ids *bi,
                         enum wire_profile profile)
{
    bool flat = profile == WIRE_PROFILE_2604 && bi->n_groups <= 1;
    if (flat) {
        mp_w_array(b, (uint32_t)bi->n_ids);
        for (size_t k = 0; k < bi->n_ids; k++)
            mp_w_int(b, bi->ids[k]);
        return;
    }
    mp_w_array(b, (uint32_t)bi->n_groups);
    for (size_t g = 0; g < bi->n_groups; g++) {
        size_t lo = bi->group_off[g], hi = bi->group_off[g + 1];
        mp_w_array(b, (uint32_t)(hi - lo));
        for (size_t k = lo; k < hi; k++)
            mp_w_int(b, bi->ids[k]);
    }
}

/* ---- registration pieces ---------------------------------------------- */

static int rd_kv_caches(struct mp_rd *r, struct wire_req *req)
{
    uint32_t n;
    int rc = wire_rd_array_own(r, &req->owned_, sizeof(*req->reg.descs),
                               (void **)&req->reg.descs, &n);
    if (rc < 0)
        return rc;
    for (uint32_t k = 0; k < n; k++) {
        struct mp_obj o;
        if ((rc = wire_rd_typed(r, MP_EXT, &o)) < 0)
            return rc;
        if (o.ext != 1)
            return -WIRE_EEXT;
        req->reg.descs[k].ptr = o.p;
        req->reg.descs[k].len = o.n;
    }
    req->reg.n_descs = n;
    return 0;
}

static int rd_layout_hints(struct mp_rd *r, struct wire_req *req)
{
    struct mp_rd probe = *r;
    uint32_t n;
    int rc = wire_rd_map(&probe, &n);
    if (rc < 0)
        return rc;
    for (uint32_t k = 0; k < n; k++) {
        struct wire_str key;
        if ((rc = wire_rd_key(&probe, &key)) < 0)
            return rc;
        if (wire_str_eq(key, "kv_layout") && mp_peek_type(probe.p, mp_left(&probe)) == MP_STR)
            rc = wire_rd_str(&probe, &req->reg.kv_layout);
        else
            rc = mp_skip(&probe, 1);
        if (rc < 0)
            return rc;
    }
    req->reg.has_layout_hints = true;
    return rd_raw(r, &req->reg.layout_hints);
}

/* ---- parameters ---------------------------------------------------------- */

int wire_param_decode(enum wire_param p, struct mp_rd *r, struct wire_req *req, bool lenient)
{
    int rc;
    switch (p) {
    case P_KEY:
    case P_KEY_WORKER:
        req->key.cache_salt.ptr = "";
        if ((rc = map_decode(key_fields, NFIELDS(key_fields), r, &req->key, &req->owned_, req->cap_)) < 0)
            return rc;
        req->has_key = true;
        return p == P_KEY_WORKER && !req->key.has_worker_id ? -WIRE_EWRONGTYPE : 0;
    case P_INSTANCE_ID:
        req->has_instance_id = true;
        return wire_rd_int(r, lenient, &req->instance_id);
    case P_INSTANCE_ID_OR_NIL:
        if (peek_nil(r))
            return mp_skip(r, 0);
        req->has_instance_id = true;
        return wire_rd_int(r, false, &req->instance_id);
    case P_TP_SIZE: return wire_rd_int(r, lenient, &req->tp_size);
    case P_BLOCK_IDS: return rd_block_ids(r, req);
    case P_EVENT: return wire_rd_bin(r, &req->event_ipc_handle);
    case P_SKIP: return wire_rd_int(r, lenient, &req->skip_first_n_tokens);
    case P_REQUEST_ID: return wire_rd_str(r, &req->request_id);
    case P_TIMEOUT: return rd_float(r, &req->timeout);
    case P_END_INFO:
        if (!peek_nil(r) && mp_peek_type(r->p, mp_left(r)) != MP_MAP)
            return -WIRE_EWRONGTYPE;
        return mp_skip(r, 0);
    case P_FORCE:
        req->has_force = true;
        return wire_rd_bool(r, lenient, &req->force);
    case P_DATA: return wire_rd_bin(r, &req->data);
    case P_ED_PAYLOAD:
        if ((rc = map_decode(ed_fields, NFIELDS(ed_fields), r, req, &req->owned_, NULL)) < 0)
            return rc;
        req->has_instance_id = true;
        return 0;
    case P_KV_CACHES: return rd_kv_caches(r, req);
    case P_MODEL_NAME: return wire_rd_str(r, &req->model_name);
    case P_WORLD_SIZE: return wire_rd_int(r, lenient, &req->world_size);
    case P_ENGINE_TYPE:
        req->reg.has_engine_type = true;
        return wire_rd_str(r, &req->reg.engine_type);
    case P_TYPE_OR_HINTS:
        if (mp_peek_type(r->p, mp_left(r)) == MP_MAP)
            return rd_layout_hints(r, req);
        req->reg.has_engine_type = true;
        return wire_rd_str(r, &req->reg.engine_type);
    case P_LAYOUT_HINTS: return rd_layout_hints(r, req);
    case P_ENGINE_GROUPS:
        return rd_map_list(r, &req->reg.n_engine_groups, &req->reg.engine_groups);
    case P_RECORDS: return rd_map_list(r, &req->report.n_records, &req->report.records);
    default: return -WIRE_EUNKNOWN;
    }
}

static void wr_hints(struct wire_buf *b, const struct wire_register *reg)
{
    if (reg->layout_hints.len) {
        mp_w_raw(b, reg->layout_hints.ptr, reg->layout_hints.len);
    } else if (reg->kv_layout.len) {
        mp_w_map(b, 1);
        mp_w_cstr(b, "kv_layout");
        mp_w_str(b, reg->kv_layout.ptr, reg->kv_layout.len);
    } else {
        mp_w_map(b, 0);
    }
}

static void wr_raw_or_empty_list(struct wire_buf *b, struct wire_bin raw)
{
    if (raw.len)
        mp_w_raw(b, raw.ptr, raw.len);
    else
        mp_w_array(b, 0);
}

static void wr_engine_type(struct wire_buf *b, const struct wire_register *reg)
{
    if (reg->has_engine_type)
        mp_w_str(b, reg->engine_type.ptr, reg->engine_type.len);
    else
        mp_w_cstr(b, "vllm");
}

int wire_param_encode(enum wire_param p, struct wire_buf *b, const struct wire_req *req,
                      enum wire_profile profile)
{
    switch (p) {
    case P_KEY:
    case P_KEY_WORKER:
        map_encode(key_fields, NFIELDS(key_fields), b, &req->key, profile);
        break;
    case P_INSTANCE_ID: mp_w_int(b, req->instance_id); break;
    case P_INSTANCE_ID_OR_NIL:
        if (req->has_instance_id)
            mp_w_int(b, req->instance_id);
        else
            mp_w_nil(b);
        break;
    case P_TP_SIZE: mp_w_int(b, req->tp_size); break;
    case P_BLOCK_IDS: wr_block_ids(b, &req->blocks, profile); break;
    case P_EVENT: mp_w_bin(b, req->event_ipc_handle.ptr, req->event_ipc_handle.len); break;
    case P_SKIP: mp_w_int(b, req->skip_first_n_tokens); break;
    case P_REQUEST_ID: mp_w_str(b, req->request_id.ptr, req->request_id.len); break;
    case P_TIMEOUT: mp_w_float(b, req->timeout); break;
    case P_END_INFO: mp_w_map(b, 0); break;
    case P_FORCE: mp_w_bool(b, req->force); break;
    case P_DATA: mp_w_bin(b, req->data.ptr, req->data.len); break;
    case P_ED_PAYLOAD: map_encode(ed_fields, NFIELDS(ed_fields), b, req, profile); break;
    case P_KV_CACHES:
        mp_w_array(b, (uint32_t)req->reg.n_descs);
        for (size_t k = 0; k < req->reg.n_descs; k++)
            mp_w_ext(b, 1, req->reg.descs[k].ptr, req->reg.descs[k].len);
        break;
    case P_MODEL_NAME: mp_w_str(b, req->model_name.ptr, req->model_name.len); break;
    case P_WORLD_SIZE: mp_w_int(b, req->world_size); break;
    case P_ENGINE_TYPE: wr_engine_type(b, &req->reg); break;
    case P_TYPE_OR_HINTS:
        if (req->reg.has_engine_type)
            wr_engine_type(b, &req->reg);
        else
            wr_hints(b, &req->reg);
        break;
    case P_LAYOUT_HINTS: wr_hints(b, &req->reg); break;
    case P_ENGINE_GROUPS: wr_raw_or_empty_list(b, req->reg.engine_groups); break;
    case P_RECORDS: wr_raw_or_empty_list(b, req->report.records); break;
    default: return -EINVAL;
    }
    return b->err;
}
