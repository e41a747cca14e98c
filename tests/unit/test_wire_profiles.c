/*
 * wire profiles: each table against the spec's tables (ids, names, classes,
 * arities, responses), and client-encode -> server-decode -> server-encode
 * reply -> client-decode round trips for every served op, profile and form.
 */
#include <errno.h>
#include <stdlib.h>

#include "wire/proto.h"
#include "test_wire_util.h"

struct expect_row {
    int id;
    const char *name;
    enum wire_op op;
    enum wire_class cls;
    int min, max;
    enum wire_resp_kind resp;
};

#define S WIRE_CLASS_SYNC
#define A WIRE_CLASS_AFFINITY
#define N WIRE_CLASS_NORMAL

/* spec 3.1 (+ 3.2 arity variants) */
static const struct expect_row spec_2604[] = {
    { 1, "REGISTER_KV_CACHE", WIRE_OP_REGISTER_KV_CACHE, S, 4, 7, WIRE_RESP_NONE },
    { 2, "UNREGISTER_KV_CACHE", WIRE_OP_UNREGISTER_KV_CACHE, S, 1, 1, WIRE_RESP_NONE },
    { 3, "STORE", WIRE_OP_STORE, A, 4, 4, WIRE_RESP_EVENT_BOOL },
    { 4, "RETRIEVE", WIRE_OP_RETRIEVE, A, 5, 5, WIRE_RESP_EVENT_BOOL },
    { 5, "LOOKUP", WIRE_OP_LOOKUP, N, 2, 2, WIRE_RESP_NONE },
    { 6, "QUERY_PREFETCH_STATUS", WIRE_OP_QUERY_PREFETCH_STATUS, N, 1, 1, WIRE_RESP_INT_OR_NIL },
    { 7, "QUERY_PREFETCH_LOOKUP_HITS", WIRE_OP_QUERY_PREFETCH_LOOKUP_HITS, N, 1, 1, WIRE_RESP_INT_OR_NIL },
    { 8, "FREE_LOOKUP_LOCKS", WIRE_OP_FREE_LOOKUP_LOCKS, N, 2, 2, WIRE_RESP_NONE },
    { 9, "END_SESSION", WIRE_OP_END_SESSION, N, 1, 1, WIRE_RESP_NONE },
    { 10, "CLEAR", WIRE_OP_CLEAR, N, 0, 1, WIRE_RESP_NONE },
    { 11, "GET_CHUNK_SIZE", WIRE_OP_GET_CHUNK_SIZE, S, 0, 0, WIRE_RESP_INT },
    { 12, "PING", WIRE_OP_PING, N, 0, 1, WIRE_RESP_BOOL },
    { 13, "REPORT_BLOCK_ALLOCATION", WIRE_OP_REPORT_BLOCK_ALLOCATION, N, 3, 3, WIRE_RESP_NONE },
    { 14, "NOOP", WIRE_OP_NOOP, S, 0, 0, WIRE_RESP_STR },
};

/* spec 4.1 (+ 4.2 drift) */
static const struct expect_row spec_2609[] = {
    { 1, "register_kv_cache", WIRE_OP_REGISTER_KV_CACHE, S, 5, 7, WIRE_RESP_NONE },
    { 2, "unregister_kv_cache", WIRE_OP_UNREGISTER_KV_CACHE, S, 1, 1, WIRE_RESP_NONE },
    { 6, "store", WIRE_OP_STORE, A, 4, 4, WIRE_RESP_EVENT_BOOL },
    { 7, "retrieve", WIRE_OP_RETRIEVE, A, 5, 5, WIRE_RESP_EVENT_BOOL },
    { 8, "lookup", WIRE_OP_LOOKUP, N, 2, 2, WIRE_RESP_NONE },
    { 9, "query_prefetch_status", WIRE_OP_QUERY_PREFETCH_STATUS, N, 1, 1, WIRE_RESP_INT_OR_NIL },
    { 10, "wait_prefetch_status", WIRE_OP_WAIT_PREFETCH_STATUS, N, 2, 2, WIRE_RESP_INT_OR_NIL },
    { 11, "query_prefetch_lookup_hits", WIRE_OP_QUERY_PREFETCH_LOOKUP_HITS, N, 1, 1, WIRE_RESP_INT_OR_NIL },
    { 12, "free_lookup_locks", WIRE_OP_FREE_LOOKUP_LOCKS, N, 2, 2, WIRE_RESP_NONE },
    { 13, "end_session", WIRE_OP_END_SESSION, N, 1, 2, WIRE_RESP_NONE },
    { 14, "register_kv_cache_engine_driven_context", WIRE_OP_REGISTER_ED_CONTEXT, S, 1, 1, WIRE_RESP_ED_POOL },
    { 15, "unregister_kv_cache_engine_driven_context", WIRE_OP_UNREGISTER_ED_CONTEXT, S, 1, 1, WIRE_RESP_NONE },
    { 16, "prepare_store", WIRE_OP_PREPARE_STORE, A, 2, 2, WIRE_RESP_ED_CONTEXT },
    { 17, "commit_store", WIRE_OP_COMMIT_STORE, A, 3, 3, WIRE_RESP_BOOL },
    { 18, "prepare_retrieve", WIRE_OP_PREPARE_RETRIEVE, A, 2, 2, WIRE_RESP_ED_RETRIEVE },
    { 19, "commit_retrieve", WIRE_OP_COMMIT_RETRIEVE, A, 2, 2, WIRE_RESP_BOOL },
    { 20, "clear", WIRE_OP_CLEAR, N, 0, 1, WIRE_RESP_NONE },
    { 21, "get_chunk_size", WIRE_OP_GET_CHUNK_SIZE, S, 0, 0, WIRE_RESP_INT },
    { 22, "ping", WIRE_OP_PING, N, 0, 1, WIRE_RESP_BOOL },
    { 23, "report_block_allocation", WIRE_OP_REPORT_BLOCK_ALLOCATION, N, 3, 3, WIRE_RESP_NONE },
    { 24, "noop", WIRE_OP_NOOP, S, 0, 0, WIRE_RESP_STR },
    { 32, "get_experimental", WIRE_OP_GET_EXPERIMENTAL, S, 0, 0, WIRE_RESP_STR_LIST },
    { -1, "lmcd.store_inline", WIRE_OP_STORE_INLINE, A, 1, 1, WIRE_RESP_INLINE },
    { -1, "lmcd.retrieve_inline", WIRE_OP_RETRIEVE_INLINE, A, 1, 1, WIRE_RESP_INLINE },
};

static void check_table(enum wire_profile p, const struct expect_row *rows, size_t n)
{
    const struct wire_profile_def *pd = wire_profile_get(p);
    cr_assert(pd);
    for (size_t k = 0; k < n; k++) {
        const struct wire_row *r = rows[k].id >= 0
                                       ? wire_row_by_id(pd, rows[k].id)
                                       : wire_row_by_name(pd, rows[k].name, strlen(rows[k].name));
        cr_assert(r, "%s: no row %d", pd->name, rows[k].id);
        cr_assert_str_eq(r->name, rows[k].name);
        cr_assert_eq(r->op, rows[k].op, "%s", rows[k].name);
        cr_assert_eq(r->cls, rows[k].cls, "%s", rows[k].name);
        cr_assert_eq(r->min, rows[k].min, "%s", rows[k].name);
        cr_assert_eq(r->max, rows[k].max, "%s", rows[k].name);
        cr_assert_eq(r->resp, rows[k].resp, "%s", rows[k].name);
        cr_assert_eq(wire_row_by_op(pd, r->op), r, "%s: one row per served op", rows[k].name);
    }
}

Test(wire_profiles, table_2604_matches_spec)
{
    check_table(WIRE_PROFILE_2604, spec_2604, sizeof(spec_2604) / sizeof(spec_2604[0]));
    const struct wire_profile_def *pd = wire_profile_get(WIRE_PROFILE_2604);
    for (int id = 15; id <= 26; id++)
        cr_assert_eq(wire_row_by_id(pd, id)->op, WIRE_OP_UNSERVED_CACHEBLEND, "id %d", id);
    cr_assert_null(wire_row_by_id(pd, 27));
    cr_assert_null(wire_row_by_id(pd, 0));
    cr_assert(!pd->names_on_wire && !pd->message_form);
    /* REPORT_BLOCK_ALLOCATION also as [records] */
    cr_assert_eq(wire_row_by_id(pd, 13)->alt_n, 1);
}

Test(wire_profiles, table_2609_matches_spec)
{
    check_table(WIRE_PROFILE_2609, spec_2609, sizeof(spec_2609) / sizeof(spec_2609[0]));
    const struct wire_profile_def *pd = wire_profile_get(WIRE_PROFILE_2609);
    static const struct { int id; enum wire_op op; } unserved[] = {
        { 3, WIRE_OP_UNSERVED_Q_CACHE }, { 4, WIRE_OP_UNSERVED_Q_CACHE },
        { 5, WIRE_OP_UNSERVED_Q_CACHE }, { 25, WIRE_OP_UNSERVED_CACHEBLEND },
        { 26, WIRE_OP_UNSERVED_CACHEBLEND }, { 27, WIRE_OP_UNSERVED_CACHEBLEND },
        { 28, WIRE_OP_UNSERVED_CACHEBLEND }, { 29, WIRE_OP_UNSERVED_P2P },
        { 30, WIRE_OP_UNSERVED_P2P }, { 31, WIRE_OP_UNSERVED_P2P },
        { 33, WIRE_OP_UNSERVED_HANDSHAKE }, { 34, WIRE_OP_UNSERVED_KV_EVENTS },
    };
    for (size_t k = 0; k < sizeof(unserved) / sizeof(unserved[0]); k++)
        cr_assert_eq(wire_row_by_id(pd, unserved[k].id)->op, unserved[k].op, "id %d", unserved[k].id);
    cr_assert_null(wire_row_by_id(pd, 35));
    cr_assert(pd->names_on_wire && pd->message_form);
    /* every id-carrying row is also reachable by its name */
    for (size_t k = 0; k < pd->n_rows; k++)
        cr_assert_eq(wire_row_by_name(pd, pd->rows[k].name, strlen(pd->rows[k].name)), &pd->rows[k]);
}

Test(wire_profiles, class_and_response_are_profile_independent)
{
    const struct wire_profile_def *a = wire_profile_get(WIRE_PROFILE_2604);
    const struct wire_profile_def *b = wire_profile_get(WIRE_PROFILE_2609);
    for (int op = 1; op < WIRE_OP_COUNT; op++) {
        const struct wire_row *ra = wire_row_by_op(a, op), *rb = wire_row_by_op(b, op);
        if (!ra || !rb)
            continue;
        cr_assert_eq(ra->cls, rb->cls, "%s", wire_op_name(op));
        cr_assert_eq(ra->resp, rb->resp, "%s", wire_op_name(op));
        cr_assert_eq(wire_op_resp_kind(op), ra->resp);
    }
}

/* ---- round trips -------------------------------------------------------- */

static uint32_t tokens[600];
static int64_t block_ids[4] = { 5, 6, 7, 8 };
static size_t group_off[3] = { 0, 3, 4 };
static const uint8_t event[64] = { 1, 2, 3 };
static const uint8_t pickle_bytes[5] = { 0x80, 0x04, 0x95, 0x00, 0x2e };
static struct wire_bin descs[2] = { { pickle_bytes, 5 }, { pickle_bytes, 3 } };

static struct wire_req full_req(enum wire_op op)
{
    struct wire_req q;
    wire_req_init(&q);
    q.op = op;
    for (int k = 0; k < 600; k++)
        tokens[k] = (uint32_t)k * 70001u;
    q.key.model_name = (struct wire_str){ "meta/llama", 10 };
    q.key.world_size = 4;
    q.key.has_worker_id = op != WIRE_OP_LOOKUP && op != WIRE_OP_FREE_LOOKUP_LOCKS;
    q.key.worker_id = 3;
    q.key.token_ids = tokens;
    q.key.n_tokens = 600;
    q.key.start = 256;
    q.key.end = 512;
    q.key.request_id = (struct wire_str){ "req-1", 5 };
    q.key.cache_salt = (struct wire_str){ "salt", 4 };
    q.has_instance_id = true;
    q.instance_id = 0x7123456789abcdefll;
    q.model_name = (struct wire_str){ "m", 1 };
    q.world_size = 4;
    q.tp_size = 2;
    q.request_id = (struct wire_str){ "req-2", 5 };
    q.timeout = 2.5;
    q.has_force = true;
    q.force = true;
    q.skip_first_n_tokens = 48;
    q.blocks = (struct wire_block_ids){ block_ids, 4, group_off, 2 };
    q.event_ipc_handle = (struct wire_bin){ event, 64 };
    q.data = (struct wire_bin){ (const uint8_t *)"", 0 };
    q.reg.descs = descs;
    q.reg.n_descs = 2;
    q.reg.kv_layout = (struct wire_str){ "NHD", 3 };
    q.ed.block_size = 16;
    q.ed.num_layers = 32;
    q.ed.hidden_dim_size = 1024;
    q.ed.dtype_str = (struct wire_str){ "bfloat16", 8 };
    q.ed.has_num_physical_slots = true;
    q.ed.num_physical_slots = 256;
    return q;
}

static bool str_eq(struct wire_str a, struct wire_str b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

static void check_decoded(const struct wire_req *q, const struct wire_req *d,
                          const struct wire_row *row)
{
    size_t n = 0;
    while (row->p[n] != P_END)
        n++;
    /* positional clients leave out the row's trailing optional parameters */
    const uint8_t *end = row->p + (d->form == WIRE_FORM_MESSAGE ? n : n - row->enc_drop);
    for (const uint8_t *p = row->p; p < end; p++) {
        switch (*p) {
        case P_KEY:
        case P_KEY_WORKER:
            cr_assert(d->has_key);
            cr_assert(str_eq(d->key.model_name, q->key.model_name));
            cr_assert_eq(d->key.world_size, q->key.world_size);
            cr_assert_eq(d->key.has_worker_id, q->key.has_worker_id);
            cr_assert_eq(d->key.n_tokens, q->key.n_tokens);
            cr_assert(memcmp(d->key.token_ids, q->key.token_ids, 600 * 4) == 0);
            cr_assert_eq(d->key.start, q->key.start);
            cr_assert_eq(d->key.end, q->key.end);
            cr_assert(str_eq(d->key.request_id, q->key.request_id));
            cr_assert(str_eq(d->key.cache_salt, q->key.cache_salt));
            break;
        case P_INSTANCE_ID:
        case P_INSTANCE_ID_OR_NIL:
        case P_ED_PAYLOAD:
            cr_assert(d->has_instance_id);
            cr_assert_eq(d->instance_id, q->instance_id);
            break;
        case P_TP_SIZE: cr_assert_eq(d->tp_size, 2); break;
        case P_BLOCK_IDS:
            cr_assert_eq(d->blocks.n_ids, 4);
            cr_assert_eq(d->blocks.n_groups, 2);
            cr_assert_eq(d->blocks.group_off[1], 3);
            cr_assert_eq(d->blocks.ids[3], 8);
            break;
        case P_EVENT: cr_assert(d->event_ipc_handle.len == 64 && d->event_ipc_handle.ptr[2] == 3); break;
        case P_SKIP: cr_assert_eq(d->skip_first_n_tokens, 48); break;
        case P_REQUEST_ID: cr_assert(str_eq(d->request_id, q->request_id)); break;
        case P_TIMEOUT: cr_assert_float_eq(d->timeout, 2.5, 1e-12); break;
        case P_FORCE:
            if (d->form == WIRE_FORM_POSITIONAL && d->has_force)
                cr_assert(d->force);
            break;
        case P_DATA: cr_assert_eq(d->data.len, 0); break;
        case P_KV_CACHES:
            cr_assert_eq(d->reg.n_descs, 2);
            cr_assert_eq(d->reg.descs[1].len, 3);
            cr_assert(memcmp(d->reg.descs[0].ptr, pickle_bytes, 5) == 0);
            break;
        case P_MODEL_NAME: cr_assert(str_eq(d->model_name, q->model_name)); break;
        case P_WORLD_SIZE: cr_assert_eq(d->world_size, 4); break;
        case P_LAYOUT_HINTS: cr_assert(str_eq(d->reg.kv_layout, q->reg.kv_layout)); break;
        default: break;
        }
    }
    if (d->op == WIRE_OP_REGISTER_ED_CONTEXT) {
        cr_assert_eq(d->ed.num_layers, 32);
        cr_assert(str_eq(d->ed.dtype_str, q->ed.dtype_str));
        cr_assert(d->ed.has_num_physical_slots && d->ed.num_physical_slots == 256);
        cr_assert(str_eq(d->model_name, q->model_name));
        cr_assert(!d->ed.multi_group);
    }
}

static struct wire_resp sample_resp(enum wire_resp_kind kind)
{
    static struct wire_str names[2] = { { "x", 1 }, { "yz", 2 } };
    static struct wire_slot slots[2] = {
        { .offset = 4096, .length = 8192, .ndim = 3, .shape = { 2, 4, 8 }, .dtype = { "uint8", 5 } },
        { .offset = 1ull << 33, .length = 8192, .ndim = 3, .shape = { 2, 4, 8 }, .dtype = { "uint8", 5 } },
    };
    static int64_t idx[2] = { 0, 2 };
    struct wire_resp r;
    wire_resp_init(&r);
    r.kind = kind;
    r.i = kind == WIRE_RESP_INLINE ? 2 : 1234567;
    r.b = true;
    r.s = names[0];
    r.strs = names;
    r.n_strs = 2;
    r.event = (struct wire_bin){ event, 64 };
    r.shm_name = (struct wire_str){ "lmcache_l1_pool_1", 17 };
    r.pool_size = 1ull << 34;
    r.success = true;
    r.slots = slots;
    r.n_slots = 2;
    r.chunk_indices = idx;
    return r;
}

static void check_resp(const struct wire_resp *w, const struct wire_resp *g)
{
    cr_assert_eq(g->kind, w->kind);
    switch (w->kind) {
    case WIRE_RESP_INT:
    case WIRE_RESP_INT_OR_NIL:
    case WIRE_RESP_INLINE: cr_assert_eq(g->i, w->i); break;
    case WIRE_RESP_BOOL: cr_assert(g->b); break;
    case WIRE_RESP_STR: cr_assert(str_eq(g->s, w->s)); break;
    case WIRE_RESP_STR_LIST:
        cr_assert_eq(g->n_strs, 2);
        cr_assert(str_eq(g->strs[1], w->strs[1]));
        break;
    case WIRE_RESP_EVENT_BOOL: cr_assert(g->b && g->event.len == 64); break;
    case WIRE_RESP_ED_POOL:
        cr_assert(str_eq(g->shm_name, w->shm_name));
        cr_assert_eq(g->pool_size, w->pool_size);
        cr_assert(!g->has_error);
        break;
    case WIRE_RESP_ED_CONTEXT:
    case WIRE_RESP_ED_RETRIEVE:
        cr_assert_eq(g->n_slots, 2);
        cr_assert_eq(g->slots[1].offset, 1ull << 33);
        cr_assert_eq(g->slots[0].ndim, 3);
        cr_assert_eq(g->slots[0].shape[2], 8);
        cr_assert(str_eq(g->slots[0].dtype, w->slots[0].dtype));
        if (w->kind == WIRE_RESP_ED_CONTEXT)
            cr_assert_eq(g->chunk_indices[1], 2);
        else
            cr_assert(g->success && !g->chunk_indices);
        break;
    case WIRE_RESP_NONE: break;
    }
}

static void roundtrip(enum wire_profile p, enum wire_form form, const struct wire_row *row)
{
    struct wire_req q = full_req(row->op);
    struct wire_msg m;
    wire_msg_init(&m);
    cr_assert_eq(wire_encode_request(p, form, &q, 77, &m), 0, "%s", row->name);
    struct wire_frame f[WIRE_MAX_REQ_FRAMES + 2];
    for (size_t k = 0; k < m.n_frames; k++)
        f[k] = wire_msg_frame(&m, k);
    size_t n = m.n_frames;
    uint8_t chunk[3] = { 9, 9, 9 };
    if (row->flags & ROW_RAW_TAIL) {
        f[n++] = (struct wire_frame){ chunk, 3 };
        f[n++] = (struct wire_frame){ chunk, 2 };
    }
    struct wire_req d;
    int rc = wire_decode_request(p, f, n, &d);
    cr_assert_eq(rc, 0, "%s/%s: %s", wire_profile_name(p), row->name, wire_strerror(rc));
    cr_assert_eq(d.op, row->op);
    cr_assert_eq(d.uid, 77);
    bool one_map = row->min <= 1 && row->p[0] != P_END && wire_param_info(row->p[0])->is_map;
    cr_assert_eq(d.form, one_map ? WIRE_FORM_POSITIONAL : form, "%s", row->name);
    check_decoded(&q, &d, row);
    if (row->flags & ROW_RAW_TAIL)
        cr_assert(d.n_raw == 2 && d.raw[1].len == 2);

    struct wire_resp w = sample_resp(row->resp);
    struct wire_buf out;
    bool has;
    wire_buf_init(&out);
    cr_assert_eq(wire_encode_reply(&d, &w, &out, &has), 0, "%s", row->name);
    struct wire_frame rf[5] = { f[0], f[1], { out.data, out.len }, { chunk, 3 }, { chunk, 1 } };
    size_t rn = has ? 3 : 2;
    if (row->op == WIRE_OP_RETRIEVE_INLINE)
        rn = 5;
    struct wire_resp g;
    rc = wire_decode_reply(p, d.form, row->op, rf, rn, &g);
    cr_assert_eq(rc, 0, "%s/%s reply: %s", wire_profile_name(p), row->name, wire_strerror(rc));
    check_resp(&w, &g);
    if (row->op == WIRE_OP_RETRIEVE_INLINE)
        cr_assert(g.n_raw == 2 && g.raw[0].len == 3);
    wire_resp_free(&g);
    wire_buf_free(&out);
    wire_req_free(&d);
    wire_msg_free(&m);
}

Test(wire_profiles, every_served_op_round_trips_in_every_form)
{
    for (unsigned p = 0; p < WIRE_PROFILE_COUNT; p++) {
        const struct wire_profile_def *pd = wire_profile_get(p);
        for (size_t k = 0; k < pd->n_rows; k++) {
            const struct wire_row *row = &pd->rows[k];
            if (wire_op_unserved(row->op))
                continue;
            roundtrip(p, WIRE_FORM_POSITIONAL, row);
            if (pd->message_form && !(row->flags & ROW_NO_MESSAGE))
                roundtrip(p, WIRE_FORM_MESSAGE, row);
        }
    }
}

Test(wire_profiles, client_frames_match_what_reference_clients_send)
{
    struct wire_req q = full_req(WIRE_OP_REGISTER_KV_CACHE);
    struct wire_msg m;
    wire_msg_init(&m);
    cr_assert_eq(wire_encode_request(WIRE_PROFILE_2604, WIRE_FORM_POSITIONAL, &q, 0, &m), 0);
    cr_assert_eq(m.n_frames, 2 + 5); /* the April worker sends 5 payload frames */
    struct wire_frame hints = wire_msg_frame(&m, 6);
    assert_bytes(hints.data, hints.len, "81 a9 \"kv_layout\" a3 \"NHD\"");
    cr_assert_eq(wire_encode_request(WIRE_PROFILE_2609, WIRE_FORM_POSITIONAL, &q, 0, &m), 0);
    cr_assert_eq(m.n_frames, 2 + 7);
    struct wire_frame et = wire_msg_frame(&m, 6);
    assert_bytes(et.data, et.len, "a4 \"vllm\"");

    /* 2604 key: 8 entries; 2609: 11 entries; 2604 block ids flat when one group */
    q = full_req(WIRE_OP_STORE);
    q.blocks.n_groups = 1;
    q.blocks.group_off[1] = 4;
    cr_assert_eq(wire_encode_request(WIRE_PROFILE_2604, WIRE_FORM_POSITIONAL, &q, 200, &m), 0);
    struct wire_frame uid = wire_msg_frame(&m, 0), type = wire_msg_frame(&m, 1);
    assert_bytes(uid.data, uid.len, "cc c8");
    assert_bytes(type.data, type.len, "03");
    cr_assert_eq(((const uint8_t *)wire_msg_frame(&m, 2).data)[0], 0x88);
    assert_bytes(wire_msg_frame(&m, 4).data, wire_msg_frame(&m, 4).len, "94 05 06 07 08");
    cr_assert_eq(wire_encode_request(WIRE_PROFILE_2609, WIRE_FORM_POSITIONAL, &q, 0, &m), 0);
    cr_assert_eq(((const uint8_t *)wire_msg_frame(&m, 2).data)[0], 0x8b);
    assert_bytes(wire_msg_frame(&m, 4).data, wire_msg_frame(&m, 4).len, "91 94 05 06 07 08");

    /* the spec's scheduler key, byte for byte */
    uint32_t t[3] = { 1, 2, 3 };
    q = full_req(WIRE_OP_LOOKUP);
    q.key = (struct wire_key){ .model_name = { "m", 1 }, .world_size = 1, .token_ids = t,
                               .n_tokens = 3, .request_id = { "r", 1 }, .cache_salt = { "", 0 } };
    q.tp_size = 1;
    cr_assert_eq(wire_encode_request(WIRE_PROFILE_2604, WIRE_FORM_POSITIONAL, &q, 0, &m), 0);
    struct wire_frame k = wire_msg_frame(&m, 2);
    assert_bytes(k.data, k.len,
                 "88 aa \"model_name\" a1 6d aa \"world_size\" 01 a9 \"worker_id\" c0 a9 \"token_ids\" "
                 "93 01 02 03 a5 \"start\" 00 a3 \"end\" 00 aa \"request_id\" a1 72 aa \"cache_salt\" a0");

    /* inline ops go by name, never in message form; 2604 has neither */
    q = full_req(WIRE_OP_STORE_INLINE);
    cr_assert_eq(wire_encode_request(WIRE_PROFILE_2609, WIRE_FORM_POSITIONAL, &q, 0, &m), 0);
    assert_bytes(wire_msg_frame(&m, 1).data, wire_msg_frame(&m, 1).len, "b1 \"lmcd.store_inline\"");
    cr_assert_eq(wire_encode_request(WIRE_PROFILE_2609, WIRE_FORM_MESSAGE, &q, 0, &m), -EINVAL);
    cr_assert_eq(wire_encode_request(WIRE_PROFILE_2604, WIRE_FORM_POSITIONAL, &q, 0, &m), -WIRE_EUNKNOWN);
    q.op = WIRE_OP_UNSERVED_P2P;
    cr_assert_eq(wire_encode_request(WIRE_PROFILE_2609, WIRE_FORM_POSITIONAL, &q, 0, &m), -WIRE_EUNSERVED);
    wire_msg_free(&m);
}

Test(wire_profiles, client_reply_decoding_edge_cases)
{
    uint8_t uid = 0x05, type = 0x0c, nil = 0xc0, t = 0xc3;
    struct wire_frame f[3] = { { &uid, 1 }, { &type, 1 }, { &nil, 1 } };
    struct wire_resp r;
    /* 2604 PING answered with the wrong op echoed */
    type = 0x0b;
    f[2].data = &t;
    cr_assert_eq(wire_decode_reply(WIRE_PROFILE_2604, WIRE_FORM_POSITIONAL, WIRE_OP_PING, f, 3, &r),
                 -WIRE_EREPLY);
    type = 0x0c;
    cr_assert_eq(wire_decode_reply(WIRE_PROFILE_2604, WIRE_FORM_POSITIONAL, WIRE_OP_PING, f, 3, &r), 0);
    cr_assert(r.b);
    wire_resp_free(&r);
    /* a missing frame is None: fine for LOOKUP and QUERY (nil), not for PING */
    cr_assert_eq(wire_decode_reply(WIRE_PROFILE_2604, WIRE_FORM_POSITIONAL, WIRE_OP_PING, f, 2, &r),
                 -WIRE_EREPLY);
    type = 0x06;
    cr_assert_eq(wire_decode_reply(WIRE_PROFILE_2604, WIRE_FORM_POSITIONAL,
                                   WIRE_OP_QUERY_PREFETCH_STATUS, f, 2, &r), 0);
    cr_assert(r.is_nil);
    f[2].data = &nil;
    cr_assert_eq(wire_decode_reply(WIRE_PROFILE_2604, WIRE_FORM_POSITIONAL,
                                   WIRE_OP_QUERY_PREFETCH_STATUS, f, 3, &r), 0);
    cr_assert(r.is_nil);
    /* message form: a missing frame is an error */
    type = 0x15;
    cr_assert_eq(wire_decode_reply(WIRE_PROFILE_2609, WIRE_FORM_MESSAGE, WIRE_OP_GET_CHUNK_SIZE, f, 2, &r),
                 -WIRE_EREPLY);
    /* ED pool reply with the newest client's extra fields and error */
    uint8_t pool[256];
    size_t n = spec_bytes(pool, sizeof(pool),
                          "85 a8 \"shm_name\" a0 a9 \"pool_size\" 00 ae \"scratch_offset\" 00 "
                          "ac \"scratch_size\" 00 a5 \"error\" a3 \"bad\"");
    type = 0x0e;
    f[2] = (struct wire_frame){ pool, n };
    cr_assert_eq(wire_decode_reply(WIRE_PROFILE_2609, WIRE_FORM_POSITIONAL, WIRE_OP_REGISTER_ED_CONTEXT,
                                   f, 3, &r), 0);
    cr_assert(r.has_error && r.error.len == 3 && r.pool_size == 0);
    wire_resp_free(&r);
    /* PREPARE_RETRIEVE miss */
    n = spec_bytes(pool, sizeof(pool), "83 a7 \"success\" c2 a4 \"data\" c4 00 a7 \"context\" 80");
    type = 0x12;
    f[2].len = n;
    cr_assert_eq(wire_decode_reply(WIRE_PROFILE_2609, WIRE_FORM_MESSAGE, WIRE_OP_PREPARE_RETRIEVE,
                                   f, 3, &r), 0);
    cr_assert(!r.success && r.n_slots == 0);
    wire_resp_free(&r);
    /* slots without matching chunk_indices */
    n = spec_bytes(pool, sizeof(pool), "81 a7 \"context\" 82 a5 \"slots\" 90 ad \"chunk_indices\" 91 00");
    type = 0x10;
    f[2].len = n;
    cr_assert_eq(wire_decode_reply(WIRE_PROFILE_2609, WIRE_FORM_POSITIONAL, WIRE_OP_PREPARE_STORE,
                                   f, 3, &r), -WIRE_EREPLY);
}
