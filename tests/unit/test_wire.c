/*
 * wire codec: envelope, msgspec strictness, bad input classes, the spec's
 * byte examples, message-form detection, inline ops, client round trips.
 */
#include <errno.h>
#include <stdlib.h>

#include "wire/mp.h"
#include "wire/wire.h"
#include "test_wire_util.h"

#define KEY_SPEC                                                                       \
    "88 aa \"model_name\" a1 6d aa \"world_size\" 01 a9 \"worker_id\" c0 a9 \"token_ids\" " \
    "93 01 02 03 a5 \"start\" 00 a3 \"end\" 00 aa \"request_id\" a1 72 aa \"cache_salt\" a0"
#define KEY_W0_SPEC                                                                    \
    "88 aa \"model_name\" a1 6d aa \"world_size\" 01 a9 \"worker_id\" 00 a9 \"token_ids\" " \
    "92 cd 01 2c ce 00 01 11 70 a5 \"start\" 00 a3 \"end\" 02 aa \"request_id\" a1 72 "     \
    "aa \"cache_salt\" a1 73"

static int decode(enum wire_profile p, struct tmsg *m, struct wire_req *req)
{
    return wire_decode_request(p, m->f, m->n, req);
}

static void expect_err(enum wire_profile p, struct tmsg *m, int err)
{
    struct wire_req req;
    int rc = decode(p, m, &req);
    cr_assert_eq(rc, -err, "got %d (%s), want -%d (%s)", rc, wire_strerror(rc), err,
                 wire_strerror(-err));
    wire_req_free(&req);
}

Test(wire, uid_accepts_every_int_width)
{
    static const char *uids[] = { "00", "7f", "cc c8", "cd ff ff", "ce 00 01 11 70",
                                  "cf 00 00 01 00 00 00 00 00", "ff", "d0 80", "d1 80 00",
                                  "d2 80 00 00 00", "d3 80 00 00 00 00 00 00 00" };
    for (size_t k = 0; k < sizeof(uids) / sizeof(uids[0]); k++) {
        struct tmsg m = { .n = 0 };
        tmsg_add(&m, uids[k]);
        tmsg_add(&m, "0b");
        struct wire_req req;
        cr_assert_eq(decode(WIRE_PROFILE_2604, &m, &req), 0, "uid %s", uids[k]);
        cr_assert_eq(req.op, WIRE_OP_GET_CHUNK_SIZE);
        if (k == 4)
            cr_assert_eq(req.uid, 70000);
        if (k == 5)
            cr_assert_eq(req.uid, 1ull << 40);
        wire_req_free(&req);
    }
}

Test(wire, bad_envelope_is_distinct_errors)
{
    struct tmsg m = { .n = 0 };
    tmsg_add(&m, "00");
    expect_err(WIRE_PROFILE_2609, &m, WIRE_EFRAMES);
    tmsg_add(&m, "15");
    m.store[0][0] = 0xa1; /* uid frame "\x15"... is a str now */
    expect_err(WIRE_PROFILE_2609, &m, WIRE_EUID);
    m.store[0][0] = 0x00;
    m.f[0].len = 2; /* int followed by a stray byte */
    expect_err(WIRE_PROFILE_2609, &m, WIRE_EUID);
    m.f[0].len = 1;
    m.store[1][0] = 0xc0; /* nil type */
    expect_err(WIRE_PROFILE_2609, &m, WIRE_ETYPE);
    m.store[1][0] = 0x63; /* 99 */
    expect_err(WIRE_PROFILE_2609, &m, WIRE_EUNKNOWN);
    m.store[1][0] = 0x0f; /* 15: CacheBlend in 2604 */
    expect_err(WIRE_PROFILE_2604, &m, WIRE_EUNSERVED);
}

Test(wire, unserved_op_is_named_for_the_log)
{
    struct tmsg m = { .n = 0 };
    tmsg_add(&m, "00");
    tmsg_add(&m, "1d"); /* 29 p2p_lookup_and_lock */
    tmsg_add(&m, "01");
    struct wire_req req;
    cr_assert_eq(decode(WIRE_PROFILE_2609, &m, &req), -WIRE_EUNSERVED);
    cr_assert_eq(req.op, WIRE_OP_UNSERVED_P2P);
    cr_assert_str_eq(req.op_name, "p2p_lookup_and_lock");
    cr_assert_eq(req.type_id, 29);
    wire_req_free(&req);
    struct tmsg n = { .n = 0 };
    tmsg_add(&n, "00");
    tmsg_add(&n, "b3 \"subscribe_kv_events\"");
    cr_assert_eq(decode(WIRE_PROFILE_2609, &n, &req), -WIRE_EUNSERVED);
    cr_assert_eq(req.op, WIRE_OP_UNSERVED_KV_EVENTS);
    cr_assert_eq(req.type_id, -1);
    /* names are not on the 2604 wire */
    cr_assert_eq(decode(WIRE_PROFILE_2604, &n, &req), -WIRE_EUNKNOWN);
}

Test(wire, spec_key_example_decodes_for_lookup)
{
    struct tmsg m = { .n = 0 };
    tmsg_add(&m, "00");
    tmsg_add(&m, "05");
    tmsg_add(&m, KEY_SPEC);
    tmsg_add(&m, "02");
    struct wire_req req;
    cr_assert_eq(decode(WIRE_PROFILE_2604, &m, &req), 0);
    cr_assert_eq(req.op, WIRE_OP_LOOKUP);
    cr_assert_eq(req.cls, WIRE_CLASS_NORMAL);
    cr_assert_eq(req.form, WIRE_FORM_POSITIONAL);
    cr_assert(req.has_key);
    cr_assert_eq(req.key.model_name.len, 1);
    cr_assert_eq(req.key.model_name.ptr[0], 'm');
    cr_assert_eq(req.key.world_size, 1);
    cr_assert(!req.key.has_worker_id);
    cr_assert_eq(req.key.n_tokens, 3);
    cr_assert_eq(req.key.token_ids[2], 3);
    cr_assert_eq(req.key.request_id.ptr[0], 'r');
    cr_assert_eq(req.key.cache_salt.len, 0);
    cr_assert_eq(req.tp_size, 2);
    /* the string views point into the frames */
    cr_assert((const uint8_t *)req.key.model_name.ptr > m.store[2] &&
              (const uint8_t *)req.key.model_name.ptr < m.store[2] + m.f[2].len);
    wire_req_free(&req);
}

Test(wire, key_without_salt_and_newest_key_fields)
{
    struct tmsg m = { .n = 0 };
    tmsg_add(&m, "00");
    tmsg_add(&m, "08");
    tmsg_add(&m, "87 aa \"model_name\" a1 6d aa \"world_size\" 01 a9 \"worker_id\" c0 a9 "
                 "\"token_ids\" 90 a5 \"start\" 00 a3 \"end\" 00 aa \"request_id\" a1 72");
    tmsg_add(&m, "01");
    struct wire_req req;
    cr_assert_eq(decode(WIRE_PROFILE_2609, &m, &req), 0);
    cr_assert_eq(req.key.cache_salt.len, 0);
    cr_assert_eq(req.key.num_kv_readers, 0);
    cr_assert_eq(req.key.n_tokens, 0);
    wire_req_free(&req);

    struct tmsg n = { .n = 0 };
    tmsg_add(&n, "00");
    tmsg_add(&n, "08");
    tmsg_add(&n, "8c aa \"model_name\" a1 6d aa \"world_size\" 01 a9 \"worker_id\" c0 a9 "
                 "\"token_ids\" 91 01 a5 \"start\" 00 a3 \"end\" 00 aa \"request_id\" a1 72 "
                 "aa \"cache_salt\" a0 af \"request_configs\" 81 a1 78 01 ae \"num_kv_readers\" 04 "
                 "af \"null_chunk_mask\" 91 91 c3 a7 \"unknown\" 92 c0 c0");
    tmsg_add(&n, "01");
    cr_assert_eq(decode(WIRE_PROFILE_2609, &n, &req), 0);
    cr_assert_eq(req.key.num_kv_readers, 4);
    wire_req_free(&req);
}

Test(wire, key_missing_required_field_is_emissing)
{
    struct tmsg m = { .n = 0 };
    tmsg_add(&m, "00");
    tmsg_add(&m, "05");
    tmsg_add(&m, "86 aa \"model_name\" a1 6d aa \"world_size\" 01 a9 \"worker_id\" c0 a9 "
                 "\"token_ids\" 90 a5 \"start\" 00 a3 \"end\" 00");
    tmsg_add(&m, "01");
    expect_err(WIRE_PROFILE_2604, &m, WIRE_EMISSING);
}

/* A LOOKUP whose key's field `field` carries `value` (spec notation). */
static int lookup_with(const char *field_spec, const char *value)
{
    char key[1024];
    snprintf(key, sizeof(key),
             "88 aa \"model_name\" a1 6d aa \"world_size\" 01 a9 \"worker_id\" c0 a9 "
             "\"token_ids\" 90 a5 \"start\" 00 a3 \"end\" 00 aa \"request_id\" a1 72 %s %s",
             field_spec, value);
    struct tmsg m = { .n = 0 };
    tmsg_add(&m, "00");
    tmsg_add(&m, "05");
    tmsg_add(&m, key);
    tmsg_add(&m, "01");
    struct wire_req req;
    int rc = decode(WIRE_PROFILE_2604, &m, &req);
    wire_req_free(&req);
    return rc;
}

Test(wire, strictness_inside_maps)
{
    /* later duplicate keys override; each case re-sends one field */
    cr_assert_eq(lookup_with("aa \"world_size\"", "c3"), -WIRE_EWRONGTYPE);
    cr_assert_eq(lookup_with("a9 \"worker_id\"", "c2"), -WIRE_EWRONGTYPE);
    cr_assert_eq(lookup_with("aa \"request_id\"", "c4 01 72"), -WIRE_EWRONGTYPE);
    cr_assert_eq(lookup_with("aa \"model_name\"", "c4 01 6d"), -WIRE_EWRONGTYPE);
    cr_assert_eq(lookup_with("a9 \"token_ids\"", "91 cf 00 00 00 01 00 00 00 00"), -WIRE_ERANGE);
    cr_assert_eq(lookup_with("a9 \"token_ids\"", "91 ff"), -WIRE_ERANGE);
    cr_assert_eq(lookup_with("a9 \"token_ids\"", "91 c3"), -WIRE_EWRONGTYPE);
    cr_assert_eq(lookup_with("a9 \"token_ids\"", "91 ce ff ff ff ff"), 0);
    cr_assert_eq(lookup_with("a5 \"start\"", "cb 00 00 00 00 00 00 00 00"), -WIRE_EWRONGTYPE);
    cr_assert_eq(lookup_with("a5 \"start\"", "d3 80 00 00 00 00 00 00 00"), 0);
    cr_assert_eq(lookup_with("a5 \"start\"", "cf 80 00 00 00 00 00 00 00"), -WIRE_ERANGE);
    cr_assert_eq(lookup_with("01", "02"), -WIRE_EWRONGTYPE); /* non-str map key */
}

/* Token ids in every msgpack int form decode to the same values (the
 * fast path for fixint/uint8/16/32 and the general reader for the rest),
 * and a truncated or wrongly typed id anywhere in a long list still fails. */
Test(wire, token_ids_every_int_form)
{
    struct tmsg m = { .n = 0 };
    tmsg_add(&m, "00");
    tmsg_add(&m, "05");
    tmsg_add(&m, "87 aa \"model_name\" a1 6d aa \"world_size\" 01 a9 \"worker_id\" c0 a9 \"token_ids\" "
                 "9a 05 7f cc 80 cd 01 00 ce 00 01 00 00 cf 00 00 00 00 00 00 00 09 d0 05 d1 01 00 "
                 "d2 00 01 00 01 d3 00 00 00 00 ff ff ff ff "
                 "a5 \"start\" 00 a3 \"end\" 00 aa \"request_id\" a1 72");
    tmsg_add(&m, "01");
    struct wire_req req;
    cr_assert_eq(decode(WIRE_PROFILE_2604, &m, &req), 0);
    static const uint32_t want[] = { 5, 127, 128, 256, 65536, 9, 5, 256, 65537, 4294967295u };
    cr_assert_eq(req.key.n_tokens, 10);
    for (int i = 0; i < 10; i++)
        cr_assert_eq(req.key.token_ids[i], want[i], "token %d", i);
    wire_req_free(&req);
    cr_assert_eq(lookup_with("a9 \"token_ids\"", "93 01 cd 01 00 d0 ff"), -WIRE_ERANGE);
    cr_assert_eq(lookup_with("a9 \"token_ids\"", "93 01 cd 01 00 c0"), -WIRE_EWRONGTYPE);
    cr_assert_eq(lookup_with("a9 \"token_ids\"", "93 01 02 a1 61"), -WIRE_EWRONGTYPE);
    cr_assert_lt(lookup_with("a9 \"token_ids\"", "93 01 02 ce 00 01"), 0); /* truncated */
}

Test(wire, strictness_top_level_int_and_bool_interchange)
{
    struct tmsg m = { .n = 0 };
    tmsg_add(&m, "00");
    tmsg_add(&m, "02");
    tmsg_add(&m, "c3"); /* instance_id: int given true */
    struct wire_req req;
    cr_assert_eq(decode(WIRE_PROFILE_2604, &m, &req), 0);
    cr_assert_eq(req.instance_id, 1);
    wire_req_free(&req);

    struct tmsg c = { .n = 0 };
    tmsg_add(&c, "00");
    tmsg_add(&c, "14");
    tmsg_add(&c, "01"); /* force: bool given 1 */
    cr_assert_eq(decode(WIRE_PROFILE_2609, &c, &req), 0);
    cr_assert(req.has_force && req.force);
    wire_req_free(&req);
    c.store[2][0] = 0x02;
    expect_err(WIRE_PROFILE_2609, &c, WIRE_EWRONGTYPE);
    c.store[2][0] = 0xa1; /* a str where a bool belongs */
    c.store[2][1] = 'x';
    c.f[2].len = 2;
    expect_err(WIRE_PROFILE_2609, &c, WIRE_EWRONGTYPE);

    /* int | None is strict: PING true is not an instance id */
    struct tmsg p = { .n = 0 };
    tmsg_add(&p, "00");
    tmsg_add(&p, "16");
    tmsg_add(&p, "c3");
    expect_err(WIRE_PROFILE_2609, &p, WIRE_EWRONGTYPE);
    p.store[2][0] = 0xc0;
    cr_assert_eq(decode(WIRE_PROFILE_2609, &p, &req), 0);
    cr_assert(!req.has_instance_id);
    wire_req_free(&req);
    memcpy(p.store[2], "\xcf\x7f\xff\xff\xff\xff\xff\xff\xff", 9);
    p.f[2].len = 9;
    cr_assert_eq(decode(WIRE_PROFILE_2609, &p, &req), 0);
    cr_assert(req.has_instance_id);
    cr_assert_eq(req.instance_id, INT64_MAX);
    wire_req_free(&req);
}

Test(wire, float_field_accepts_int_not_bool)
{
    struct tmsg m = { .n = 0 };
    tmsg_add(&m, "00");
    tmsg_add(&m, "0a");
    tmsg_add(&m, "a1 72");
    tmsg_add(&m, "05");
    struct wire_req req;
    cr_assert_eq(decode(WIRE_PROFILE_2609, &m, &req), 0);
    cr_assert_float_eq(req.timeout, 5.0, 1e-12);
    wire_req_free(&req);
    m.f[3].len = spec_bytes(m.store[3], 4096, "cb 40 14 00 00 00 00 00 00");
    cr_assert_eq(decode(WIRE_PROFILE_2609, &m, &req), 0);
    cr_assert_float_eq(req.timeout, 5.0, 1e-12);
    wire_req_free(&req);
    m.f[3].len = spec_bytes(m.store[3], 4096, "c3");
    expect_err(WIRE_PROFILE_2609, &m, WIRE_EWRONGTYPE);
}

Test(wire, every_bad_input_class_has_its_error)
{
    struct { const char *frame; int err; } cases[] = {
        { "c1", WIRE_EMSGPACK },
        { "cd 01", WIRE_ETRUNC },
        { "a5 72", WIRE_ETRUNC },
        { "dd ff ff ff ff", WIRE_EOVERSIZE },
        { "df ff ff ff ff 00", WIRE_EOVERSIZE },
        { "c6 ff ff ff ff 00", WIRE_EOVERSIZE },
        { "01 02", WIRE_ETRAILING },
        { "a1 72", WIRE_EWRONGTYPE },
    };
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        struct tmsg m = { .n = 0 };
        tmsg_add(&m, "00");
        tmsg_add(&m, "02"); /* UNREGISTER_KV_CACHE [instance_id] */
        tmsg_add(&m, cases[k].frame);
        expect_err(WIRE_PROFILE_2604, &m, cases[k].err);
    }
    /* arity */
    struct tmsg a = { .n = 0 };
    tmsg_add(&a, "00");
    tmsg_add(&a, "02");
    expect_err(WIRE_PROFILE_2604, &a, WIRE_EARITY);
    tmsg_add(&a, "01");
    tmsg_add(&a, "01");
    expect_err(WIRE_PROFILE_2604, &a, WIRE_EARITY);
    /* depth: 33 nested arrays */
    struct tmsg d = { .n = 0 };
    tmsg_add(&d, "00");
    tmsg_add(&d, "0d");
    tmsg_add(&d, "a1 72");
    for (int k = 0; k < 33; k++)
        d.store[3][k] = 0x91;
    d.store[3][33] = 0xc0;
    d.f[3].data = d.store[3];
    d.f[3].len = 34;
    d.n = 4;
    expect_err(WIRE_PROFILE_2609, &d, WIRE_EDEPTH);
    d.f[3].data = d.store[3] + 2; /* 31 levels is fine for end_info's skip */
    d.f[3].len = 32;
    expect_err(WIRE_PROFILE_2609, &d, WIRE_EWRONGTYPE); /* end_info must be a map */
    /* unknown ext code inside kv_caches */
    struct tmsg e = { .n = 0 };
    tmsg_add(&e, "00");
    tmsg_add(&e, "01");
    tmsg_add(&e, "07");
    tmsg_add(&e, "91 d4 02 00");
    tmsg_add(&e, "a1 6d");
    tmsg_add(&e, "01");
    expect_err(WIRE_PROFILE_2604, &e, WIRE_EEXT);
    /* every code has its own message */
    for (int x = WIRE_EFRAMES; x <= WIRE_EREPLY; x++)
        for (int y = x + 1; y <= WIRE_EREPLY; y++)
            cr_assert_str_neq(wire_strerror(-x), wire_strerror(-y));
    cr_assert_str_eq(wire_strerror(-ENOMEM), strerror(ENOMEM));
}

Test(wire, huge_counts_are_rejected_before_allocation)
{
    /* 5-byte frame claiming 2^32-1 token ids inside a key */
    struct tmsg m = { .n = 0 };
    tmsg_add(&m, "00");
    tmsg_add(&m, "05");
    tmsg_add(&m, "81 a9 \"token_ids\" dd ff ff ff ff");
    tmsg_add(&m, "01");
    expect_err(WIRE_PROFILE_2604, &m, WIRE_EOVERSIZE);
}

Test(wire, block_ids_flat_and_grouped)
{
    struct tmsg m = { .n = 0 };
    tmsg_add(&m, "00");
    tmsg_add(&m, "03");
    tmsg_add(&m, KEY_W0_SPEC);
    tmsg_add(&m, "07");
    tmsg_add(&m, "93 01 02 cd 01 00");
    tmsg_add(&m, "c4 02 aa bb");
    struct wire_req req;
    cr_assert_eq(decode(WIRE_PROFILE_2604, &m, &req), 0);
    cr_assert_eq(req.op, WIRE_OP_STORE);
    cr_assert_eq(req.cls, WIRE_CLASS_AFFINITY);
    cr_assert_eq(req.blocks.n_groups, 1);
    cr_assert_eq(req.blocks.n_ids, 3);
    cr_assert_eq(req.blocks.ids[2], 256);
    cr_assert_eq(req.event_ipc_handle.len, 2);
    cr_assert(req.key.has_worker_id && req.key.worker_id == 0);
    cr_assert_eq(req.key.token_ids[1], 70000);
    cr_assert_eq(req.key.cache_salt.ptr[0], 's');
    wire_req_free(&req);
    m.f[4].len = spec_bytes(m.store[4], 4096, "92 92 01 02 91 05");
    cr_assert_eq(decode(WIRE_PROFILE_2604, &m, &req), 0);
    cr_assert_eq(req.blocks.n_groups, 2);
    cr_assert_eq(req.blocks.group_off[1], 2);
    cr_assert_eq(req.blocks.group_off[2], 3);
    cr_assert_eq(req.blocks.ids[2], 5);
    wire_req_free(&req);
    m.f[4].len = spec_bytes(m.store[4], 4096, "92 91 01 02");
    expect_err(WIRE_PROFILE_2604, &m, WIRE_EWRONGTYPE);
    m.f[4].len = spec_bytes(m.store[4], 4096, "92 01 91 02");
    expect_err(WIRE_PROFILE_2604, &m, WIRE_EWRONGTYPE);
}

Test(wire, register_kv_cache_arities_2604)
{
    const char *hints = "81 a9 \"kv_layout\" a3 \"NHD\"";
    struct wire_req req;
    for (int frames = 4; frames <= 7; frames++) {
        struct tmsg m = { .n = 0 };
        tmsg_add(&m, "00");
        tmsg_add(&m, "01");
        tmsg_add(&m, "cd 30 39");
        tmsg_add(&m, "92 c7 03 01 80 04 2e d4 01 00");
        tmsg_add(&m, "a1 6d");
        tmsg_add(&m, "02");
        if (frames == 5)
            tmsg_add(&m, hints);
        if (frames >= 6) {
            tmsg_add(&m, "a4 \"vllm\"");
            tmsg_add(&m, hints);
        }
        if (frames == 7)
            tmsg_add(&m, "91 81 af \"engine_group_id\" 00");
        cr_assert_eq(decode(WIRE_PROFILE_2604, &m, &req), 0, "%d frames", frames);
        cr_assert_eq(req.op, WIRE_OP_REGISTER_KV_CACHE);
        cr_assert_eq(req.instance_id, 12345);
        cr_assert_eq(req.world_size, 2);
        cr_assert_eq(req.reg.n_descs, 2);
        cr_assert_eq(req.reg.descs[0].len, 3);
        cr_assert_eq(req.reg.descs[0].ptr[0], 0x80);
        cr_assert_eq(req.reg.descs[1].len, 1);
        cr_assert_eq(req.reg.has_layout_hints, frames >= 5);
        cr_assert_eq(req.reg.has_engine_type, frames >= 6);
        cr_assert_eq(req.reg.n_engine_groups, frames == 7 ? 1u : 0u);
        if (frames >= 5)
            cr_assert_eq(req.reg.kv_layout.len, 3);
        wire_req_free(&req);
    }
    /* frame 5 as engine_type alone */
    struct tmsg e = { .n = 0 };
    tmsg_add(&e, "00");
    tmsg_add(&e, "01");
    tmsg_add(&e, "01");
    tmsg_add(&e, "90");
    tmsg_add(&e, "a1 6d");
    tmsg_add(&e, "01");
    tmsg_add(&e, "a6 \"sglang\"");
    cr_assert_eq(decode(WIRE_PROFILE_2604, &e, &req), 0);
    cr_assert(req.reg.has_engine_type && !req.reg.has_layout_hints);
    wire_req_free(&req);
    /* a non-ext element of kv_caches */
    e.f[3].len = spec_bytes(e.store[3], 4096, "91 c4 01 00");
    expect_err(WIRE_PROFILE_2604, &e, WIRE_EWRONGTYPE);
}

Test(wire, report_block_allocation_one_or_three_frames)
{
    const char *rec = "91 83 a6 \"req_id\" a1 72 ad \"new_block_ids\" 91 07 ad \"new_token_ids\" 92 01 02";
    struct tmsg m = { .n = 0 };
    tmsg_add(&m, "00");
    tmsg_add(&m, "0d");
    tmsg_add(&m, rec);
    struct wire_req req;
    cr_assert_eq(decode(WIRE_PROFILE_2604, &m, &req), 0);
    cr_assert_eq(req.report.n_records, 1);
    cr_assert(!req.has_instance_id);
    wire_req_free(&req);
    struct tmsg t = { .n = 0 };
    tmsg_add(&t, "00");
    tmsg_add(&t, "0d");
    tmsg_add(&t, "cd 04 d2");
    tmsg_add(&t, "a1 6d");
    tmsg_add(&t, rec);
    cr_assert_eq(decode(WIRE_PROFILE_2604, &t, &req), 0);
    cr_assert(req.has_instance_id);
    cr_assert_eq(req.instance_id, 1234);
    cr_assert_eq(req.model_name.len, 1);
    wire_req_free(&req);
    t.f[1].len = spec_bytes(t.store[1], 4096, "17"); /* 2609 id 23 */
    cr_assert_eq(decode(WIRE_PROFILE_2609, &t, &req), 0);
    cr_assert_eq(req.op, WIRE_OP_REPORT_BLOCK_ALLOCATION);
    wire_req_free(&req);
    t.f[4].len = spec_bytes(t.store[4], 4096, "91 01");
    expect_err(WIRE_PROFILE_2609, &t, WIRE_EWRONGTYPE);
}

Test(wire, engine_driven_registration_payload)
{
    struct tmsg m = { .n = 0 };
    tmsg_add(&m, "00");
    tmsg_add(&m, "0e");
    tmsg_add(&m, "8e ab \"instance_id\" cf 12 34 56 78 9a bc de f0 aa \"model_name\" a1 6d "
                 "aa \"world_size\" 02 aa \"block_size\" 10 aa \"num_layers\" 04 "
                 "af \"hidden_dim_size\" cd 04 00 a9 \"dtype_str\" a8 \"bfloat16\" "
                 "a7 \"use_mla\" c2 b2 \"num_physical_slots\" cd 01 00 "
                 "b2 \"engine_group_infos\" 90 b6 \"group_hidden_dim_sizes\" c0 "
                 "b2 \"group_layout_descs\" c0 b7 \"enable_l1_kvweave_quant\" c2 "
                 "a5 \"extra\" 01");
    struct wire_req req;
    cr_assert_eq(decode(WIRE_PROFILE_2609, &m, &req), 0);
    cr_assert_eq(req.op, WIRE_OP_REGISTER_ED_CONTEXT);
    cr_assert_eq(req.form, WIRE_FORM_POSITIONAL);
    cr_assert_eq(req.cls, WIRE_CLASS_SYNC);
    cr_assert_eq(req.instance_id, 0x123456789abcdef0);
    cr_assert_eq(req.world_size, 2);
    cr_assert_eq(req.ed.block_size, 16);
    cr_assert_eq(req.ed.hidden_dim_size, 1024);
    cr_assert_eq(req.ed.dtype_str.len, 8);
    cr_assert(!req.ed.use_mla);
    cr_assert(req.ed.has_num_physical_slots && req.ed.num_physical_slots == 256);
    cr_assert(!req.ed.multi_group);
    wire_req_free(&req);
    /* a multi-group layout is flagged, not refused, by the codec */
    tmsg_add(&m, "");
    m.n = 3;
    m.f[2].len = spec_bytes(m.store[2], 4096,
                            "89 ab \"instance_id\" 01 aa \"model_name\" a1 6d aa \"world_size\" 01 "
                            "aa \"block_size\" 10 aa \"num_layers\" 04 af \"hidden_dim_size\" 10 "
                            "a9 \"dtype_str\" a4 \"int8\" a7 \"use_mla\" c3 b2 \"group_layout_descs\" 90");
    cr_assert_eq(decode(WIRE_PROFILE_2609, &m, &req), 0);
    cr_assert(req.ed.multi_group && req.ed.use_mla && !req.ed.has_num_physical_slots);
    wire_req_free(&req);
    /* use_mla is a Struct field: an int is not a bool there */
    m.f[2].len = spec_bytes(m.store[2], 4096,
                            "88 ab \"instance_id\" 01 aa \"model_name\" a1 6d aa \"world_size\" 01 "
                            "aa \"block_size\" 10 aa \"num_layers\" 04 af \"hidden_dim_size\" 10 "
                            "a9 \"dtype_str\" a4 \"int8\" a7 \"use_mla\" 01");
    expect_err(WIRE_PROFILE_2609, &m, WIRE_EWRONGTYPE);
}

Test(wire, message_form_detection)
{
    struct wire_req req;
    /* GET_CHUNK_SIZE as {} */
    struct tmsg m = { .n = 0 };
    tmsg_add(&m, "00");
    tmsg_add(&m, "15");
    tmsg_add(&m, "80");
    cr_assert_eq(decode(WIRE_PROFILE_2609, &m, &req), 0);
    cr_assert_eq(req.form, WIRE_FORM_MESSAGE);
    wire_req_free(&req);
    /* the same frames in 2604 (NOOP id 14 = 0x0e): no message form there */
    m.f[1].len = spec_bytes(m.store[1], 4096, "0e");
    expect_err(WIRE_PROFILE_2604, &m, WIRE_EARITY);
    /* STORE as one map */
    struct tmsg s = { .n = 0 };
    tmsg_add(&s, "00");
    tmsg_add(&s, "06");
    tmsg_add(&s, "84 a3 \"key\" " KEY_W0_SPEC " ab \"instance_id\" 07 ad \"gpu_block_ids\" 91 92 01 02 "
                 "b0 \"event_ipc_handle\" c4 01 00");
    cr_assert_eq(decode(WIRE_PROFILE_2609, &s, &req), 0);
    cr_assert_eq(req.form, WIRE_FORM_MESSAGE);
    cr_assert_eq(req.op, WIRE_OP_STORE);
    cr_assert_eq(req.instance_id, 7);
    cr_assert_eq(req.blocks.n_ids, 2);
    cr_assert_eq(req.key.n_tokens, 2);
    wire_req_free(&req);
    /* a missing required field in message form */
    s.f[2].len = spec_bytes(s.store[2], 4096, "81 ab \"instance_id\" 07");
    expect_err(WIRE_PROFILE_2609, &s, WIRE_EMISSING);
    /* message-form fields are Struct fields: strict */
    struct tmsg u = { .n = 0 };
    tmsg_add(&u, "00");
    tmsg_add(&u, "02");
    tmsg_add(&u, "81 ab \"instance_id\" c3");
    expect_err(WIRE_PROFILE_2609, &u, WIRE_EWRONGTYPE);
    /* end_session with one str frame stays positional; with a map it is a message */
    struct tmsg e = { .n = 0 };
    tmsg_add(&e, "00");
    tmsg_add(&e, "0d");
    tmsg_add(&e, "a1 72");
    cr_assert_eq(decode(WIRE_PROFILE_2609, &e, &req), 0);
    cr_assert_eq(req.form, WIRE_FORM_POSITIONAL);
    wire_req_free(&req);
    e.f[2].len = spec_bytes(e.store[2], 4096, "81 aa \"request_id\" a1 72");
    cr_assert_eq(decode(WIRE_PROFILE_2609, &e, &req), 0);
    cr_assert_eq(req.form, WIRE_FORM_MESSAGE);
    cr_assert_eq(req.request_id.len, 1);
    wire_req_free(&req);
    /* clear as {} is a message; clear with force=false is positional */
    e.f[1].len = spec_bytes(e.store[1], 4096, "14");
    e.f[2].len = spec_bytes(e.store[2], 4096, "80");
    cr_assert_eq(decode(WIRE_PROFILE_2609, &e, &req), 0);
    cr_assert_eq(req.form, WIRE_FORM_MESSAGE);
    cr_assert(!req.has_force);
    wire_req_free(&req);
    e.f[2].len = spec_bytes(e.store[2], 4096, "c2");
    cr_assert_eq(decode(WIRE_PROFILE_2609, &e, &req), 0);
    cr_assert_eq(req.form, WIRE_FORM_POSITIONAL);
    cr_assert(req.has_force && !req.force);
    wire_req_free(&req);
}

Test(wire, inline_ops_by_name)
{
    struct tmsg m = { .n = 0 };
    tmsg_add(&m, "00");
    tmsg_add(&m, "b1 \"lmcd.store_inline\"");
    tmsg_add(&m, KEY_W0_SPEC);
    tmsg_add(&m, "\"chunk-0\"");
    tmsg_add(&m, "c1 c1 c1"); /* raw bytes are never parsed */
    struct wire_req req;
    cr_assert_eq(decode(WIRE_PROFILE_2609, &m, &req), 0);
    cr_assert_eq(req.op, WIRE_OP_STORE_INLINE);
    cr_assert_eq(req.cls, WIRE_CLASS_AFFINITY);
    cr_assert_eq(req.form, WIRE_FORM_POSITIONAL);
    cr_assert_eq(req.type_id, -1);
    cr_assert_eq(req.n_raw, 2);
    cr_assert_eq(req.raw[0].len, 7);
    cr_assert_eq(req.raw[1].data, m.store[4]);
    wire_req_free(&req);
    /* key alone: still positional (no message form for inline ops) */
    m.n = 3;
    cr_assert_eq(decode(WIRE_PROFILE_2609, &m, &req), 0);
    cr_assert_eq(req.n_raw, 0);
    wire_req_free(&req);
    /* worker_id is required */
    m.f[2].len = spec_bytes(m.store[2], 4096, KEY_SPEC);
    expect_err(WIRE_PROFILE_2609, &m, WIRE_EWRONGTYPE);
    /* retrieve_inline takes exactly the key */
    struct tmsg r = { .n = 0 };
    tmsg_add(&r, "00");
    tmsg_add(&r, "b4 \"lmcd.retrieve_inline\"");
    tmsg_add(&r, KEY_W0_SPEC);
    cr_assert_eq(decode(WIRE_PROFILE_2609, &r, &req), 0);
    cr_assert_eq(req.op, WIRE_OP_RETRIEVE_INLINE);
    wire_req_free(&req);
    tmsg_add(&r, "00");
    expect_err(WIRE_PROFILE_2609, &r, WIRE_EARITY);
    /* not in 2604 */
    expect_err(WIRE_PROFILE_2604, &r, WIRE_EUNKNOWN);
}

/* ---- replies: the spec's byte examples ---------------------------------- */

static struct wire_req req_for(enum wire_profile p, enum wire_op op, enum wire_form form)
{
    struct wire_req req;
    wire_req_init(&req);
    req.profile = p;
    req.op = op;
    req.form = form;
    return req;
}

static void expect_reply(enum wire_profile p, enum wire_op op, enum wire_form form,
                         const struct wire_resp *resp, const char *spec)
{
    struct wire_req req = req_for(p, op, form);
    struct wire_buf b;
    bool has = true;
    wire_buf_init(&b);
    cr_assert_eq(wire_encode_reply(&req, resp, &b, &has), 0);
    if (!spec) {
        cr_assert(!has, "None must send no frame");
    } else {
        cr_assert(has);
        assert_bytes(b.data, b.len, spec);
    }
    wire_buf_free(&b);
}

Test(wire, reply_bytes_simple_kinds_both_forms)
{
    struct wire_resp r;
    wire_resp_init(&r);
    r.kind = WIRE_RESP_INT;
    r.i = 256;
    expect_reply(WIRE_PROFILE_2604, WIRE_OP_GET_CHUNK_SIZE, WIRE_FORM_POSITIONAL, &r, "cd 01 00");
    expect_reply(WIRE_PROFILE_2609, WIRE_OP_GET_CHUNK_SIZE, WIRE_FORM_MESSAGE, &r,
                 "81 aa \"chunk_size\" cd 01 00");
    wire_resp_init(&r);
    r.kind = WIRE_RESP_STR;
    r.s = (struct wire_str){ "OK", 2 };
    expect_reply(WIRE_PROFILE_2609, WIRE_OP_NOOP, WIRE_FORM_POSITIONAL, &r, "a2 4f 4b");
    expect_reply(WIRE_PROFILE_2609, WIRE_OP_NOOP, WIRE_FORM_MESSAGE, &r, "81 a7 \"message\" a2 4f 4b");
    wire_resp_init(&r);
    r.kind = WIRE_RESP_BOOL;
    r.b = true;
    expect_reply(WIRE_PROFILE_2604, WIRE_OP_PING, WIRE_FORM_POSITIONAL, &r, "c3");
    expect_reply(WIRE_PROFILE_2609, WIRE_OP_PING, WIRE_FORM_MESSAGE, &r, "81 a2 \"ok\" c3");
    expect_reply(WIRE_PROFILE_2609, WIRE_OP_COMMIT_STORE, WIRE_FORM_MESSAGE, &r,
                 "81 a7 \"success\" c3");
    wire_resp_init(&r);
    r.kind = WIRE_RESP_INT_OR_NIL;
    r.is_nil = true;
    /* nil is "no response frame" positionally, like the reference's None */
    expect_reply(WIRE_PROFILE_2604, WIRE_OP_QUERY_PREFETCH_STATUS, WIRE_FORM_POSITIONAL, &r, NULL);
    expect_reply(WIRE_PROFILE_2609, WIRE_OP_QUERY_PREFETCH_STATUS, WIRE_FORM_MESSAGE, &r,
                 "81 ab \"chunk_count\" c0");
    r.is_nil = false;
    r.i = 0;
    expect_reply(WIRE_PROFILE_2609, WIRE_OP_WAIT_PREFETCH_STATUS, WIRE_FORM_POSITIONAL, &r, "00");
    wire_resp_init(&r);
    expect_reply(WIRE_PROFILE_2604, WIRE_OP_LOOKUP, WIRE_FORM_POSITIONAL, &r, NULL);
    expect_reply(WIRE_PROFILE_2609, WIRE_OP_CLEAR, WIRE_FORM_MESSAGE, &r, "80");
    struct wire_str names[2] = { { "a", 1 }, { "bc", 2 } };
    r.kind = WIRE_RESP_STR_LIST;
    r.strs = names;
    r.n_strs = 2;
    expect_reply(WIRE_PROFILE_2609, WIRE_OP_GET_EXPERIMENTAL, WIRE_FORM_POSITIONAL, &r,
                 "92 a1 61 a2 62 63");
    r.n_strs = 0;
    expect_reply(WIRE_PROFILE_2609, WIRE_OP_GET_EXPERIMENTAL, WIRE_FORM_MESSAGE, &r,
                 "81 a5 \"names\" 90");
    wire_resp_init(&r);
    r.kind = WIRE_RESP_INLINE;
    r.i = 3;
    expect_reply(WIRE_PROFILE_2609, WIRE_OP_STORE_INLINE, WIRE_FORM_POSITIONAL, &r, "03");
}

Test(wire, reply_kind_mismatch_is_rejected)
{
    struct wire_req req = req_for(WIRE_PROFILE_2604, WIRE_OP_PING, WIRE_FORM_POSITIONAL);
    struct wire_resp r;
    struct wire_buf b;
    bool has;
    wire_resp_init(&r);
    wire_buf_init(&b);
    r.kind = WIRE_RESP_INT;
    cr_assert_eq(wire_encode_reply(&req, &r, &b, &has), -WIRE_EREPLY);
    req.op = WIRE_OP_PREPARE_STORE; /* not in 2604 */
    r.kind = WIRE_RESP_ED_CONTEXT;
    cr_assert_eq(wire_encode_reply(&req, &r, &b, &has), -WIRE_EREPLY);
    wire_buf_free(&b);
}

Test(wire, reply_bytes_event_bool)
{
    uint8_t ev[64];
    char spec[1024];
    int n = snprintf(spec, sizeof(spec), "92 c4 40");
    for (int k = 0; k < 64; k++) {
        ev[k] = (uint8_t)k;
        n += snprintf(spec + n, sizeof(spec) - (size_t)n, " %02x", k);
    }
    snprintf(spec + n, sizeof(spec) - (size_t)n, " c3");
    struct wire_resp r;
    wire_resp_init(&r);
    r.kind = WIRE_RESP_EVENT_BOOL;
    r.event = (struct wire_bin){ ev, 64 };
    r.b = true;
    expect_reply(WIRE_PROFILE_2604, WIRE_OP_STORE, WIRE_FORM_POSITIONAL, &r, spec);
    r.event.len = 1;
    r.b = false;
    expect_reply(WIRE_PROFILE_2609, WIRE_OP_RETRIEVE, WIRE_FORM_MESSAGE, &r,
                 "81 a6 \"result\" 82 b0 \"event_ipc_handle\" c4 01 00 a7 \"success\" c2");
}

Test(wire, reply_bytes_engine_driven)
{
    struct wire_resp r;
    wire_resp_init(&r);
    r.kind = WIRE_RESP_ED_CONTEXT;
    const char *all_cached = "81 a7 \"context\" 82 a5 \"slots\" 90 ad \"chunk_indices\" 90";
    expect_reply(WIRE_PROFILE_2609, WIRE_OP_PREPARE_STORE, WIRE_FORM_POSITIONAL, &r, all_cached);
    expect_reply(WIRE_PROFILE_2609, WIRE_OP_PREPARE_STORE, WIRE_FORM_MESSAGE, &r, all_cached);

    const char *slot = "84 a6 \"offset\" 00 a6 \"length\" ce 00 40 00 00 a5 \"shape\" 94 02 04 cd 01 00 "
                       "cd 04 00 a5 \"dtype\" a8 \"bfloat16\"";
    struct wire_slot s = { .offset = 0, .length = 0x400000, .ndim = 4,
                           .shape = { 2, 4, 256, 1024 }, .dtype = { "bfloat16", 8 } };
    int64_t idx = 3;
    r.slots = &s;
    r.n_slots = 1;
    r.chunk_indices = &idx;
    char want[1024];
    snprintf(want, sizeof(want), "81 a7 \"context\" 82 a5 \"slots\" 91 %s ad \"chunk_indices\" 91 03", slot);
    expect_reply(WIRE_PROFILE_2609, WIRE_OP_PREPARE_STORE, WIRE_FORM_POSITIONAL, &r, want);

    r.kind = WIRE_RESP_ED_RETRIEVE;
    r.success = true;
    snprintf(want, sizeof(want), "83 a7 \"success\" c3 a4 \"data\" c4 00 a7 \"context\" 81 a5 \"slots\" 91 %s", slot);
    expect_reply(WIRE_PROFILE_2609, WIRE_OP_PREPARE_RETRIEVE, WIRE_FORM_POSITIONAL, &r, want);
    r.success = false;
    expect_reply(WIRE_PROFILE_2609, WIRE_OP_PREPARE_RETRIEVE, WIRE_FORM_MESSAGE, &r,
                 "83 a7 \"success\" c2 a4 \"data\" c4 00 a7 \"context\" 80");

    wire_resp_init(&r);
    r.kind = WIRE_RESP_ED_POOL;
    r.shm_name = (struct wire_str){ "p", 1 };
    r.pool_size = 1u << 20;
    expect_reply(WIRE_PROFILE_2609, WIRE_OP_REGISTER_ED_CONTEXT, WIRE_FORM_POSITIONAL, &r,
                 "82 a8 \"shm_name\" a1 70 a9 \"pool_size\" ce 00 10 00 00");
    r.has_error = true;
    r.error = (struct wire_str){ "dtype", 5 };
    expect_reply(WIRE_PROFILE_2609, WIRE_OP_REGISTER_ED_CONTEXT, WIRE_FORM_POSITIONAL, &r,
                 "83 a8 \"shm_name\" a1 70 a9 \"pool_size\" ce 00 10 00 00 a5 \"error\" a5 \"dtype\"");
}

Test(wire, error_frame_is_bounded)
{
    struct wire_buf marker, map;
    wire_buf_init(&marker);
    wire_buf_init(&map);
    cr_assert_eq(wire_encode_error("ValueError", "bad", &marker, &map), 0);
    assert_bytes(marker.data, marker.len, "\"LMCACHE_RPC_ERROR_V1\"");
    assert_bytes(map.data, map.len, "82 aa \"error_type\" aa \"ValueError\" a7 \"message\" a3 \"bad\"");
    char *big = malloc(6000);
    memset(big, 'x', 5999);
    big[5999] = 0;
    memcpy(big + 4094, "\xc3\xa9\xc3\xa9", 4); /* a 2-byte char straddles the cut */
    cr_assert_eq(wire_encode_error("E", big, &marker, &map), 0);
    struct mp_rd r;
    struct mp_obj o;
    mp_rd_init(&r, map.data, map.len);
    cr_assert_eq(mp_next(&r, &o), 0);
    for (int k = 0; k < 3; k++)
        cr_assert_eq(mp_skip(&r, 0), 0);
    cr_assert_eq(mp_next(&r, &o), 0);
    cr_assert_eq(o.type, MP_STR);
    cr_assert_eq(o.n, 4094 + 2);
    free(big);
    wire_buf_free(&marker);
    wire_buf_free(&map);
}

Test(wire, writer_uses_smallest_int_forms)
{
    struct { int64_t v; const char *spec; } cases[] = {
        { 0, "00" }, { 127, "7f" }, { 200, "cc c8" }, { 256, "cd 01 00" },
        { 70000, "ce 00 01 11 70" }, { 1ll << 40, "cf 00 00 01 00 00 00 00 00" },
        { -1, "ff" }, { -32, "e0" }, { -33, "d0 df" }, { -200, "d1 ff 38" },
        { -70000, "d2 ff fe ee 90" }, { INT64_MIN, "d3 80 00 00 00 00 00 00 00" },
    };
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        struct wire_buf b;
        wire_buf_init(&b);
        mp_w_int(&b, cases[k].v);
        assert_bytes(b.data, b.len, cases[k].spec);
        struct mp_rd r;
        struct mp_obj o;
        int64_t back;
        mp_rd_init(&r, b.data, b.len);
        cr_assert_eq(mp_next(&r, &o), 0);
        cr_assert_eq(mp_obj_i64(&o, &back), 0);
        cr_assert_eq(back, cases[k].v);
        wire_buf_free(&b);
    }
    struct wire_buf b;
    wire_buf_init(&b);
    mp_w_float(&b, 5.0);
    mp_w_cstr(&b, "vllm");
    mp_w_bin(&b, "", 0);
    assert_bytes(b.data, b.len, "cb 40 14 00 00 00 00 00 00 a4 76 6c 6c 6d c4 00");
    wire_buf_free(&b);
}

Test(wire, help_lists_profiles_and_operations)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    wire_protocol_help(f);
    fclose(f);
    cr_assert(strstr(text, "lmcache-2604"));
    cr_assert(strstr(text, "lmcache-2609"));
    cr_assert(strstr(text, "REPORT_BLOCK_ALLOCATION"));
    cr_assert(strstr(text, "register_kv_cache_engine_driven_context"));
    cr_assert(strstr(text, "lmcd.store_inline"));
    cr_assert(strstr(text, "not served"));
    free(text);
    enum wire_profile p;
    cr_assert_eq(wire_profile_parse("lmcache-2604", &p), 0);
    cr_assert_eq(p, WIRE_PROFILE_2604);
    cr_assert_eq(wire_profile_parse("lmcache-2609", &p), 0);
    cr_assert_eq(p, WIRE_PROFILE_2609);
    cr_assert_eq(wire_profile_parse("lmcache", &p), -EINVAL);
    cr_assert_str_eq(wire_profile_name(WIRE_PROFILE_2609), "lmcache-2609");
}

Test(wire, safe_replies_follow_spec_9_3)
{
    struct wire_resp r;
    cr_assert_eq(wire_resp_safe(WIRE_OP_QUERY_PREFETCH_STATUS, &r), 0);
    expect_reply(WIRE_PROFILE_2604, WIRE_OP_QUERY_PREFETCH_STATUS, WIRE_FORM_POSITIONAL, &r, "00");
    cr_assert_eq(wire_resp_safe(WIRE_OP_PING, &r), 0);
    expect_reply(WIRE_PROFILE_2609, WIRE_OP_PING, WIRE_FORM_POSITIONAL, &r, "c3");
    cr_assert_eq(wire_resp_safe(WIRE_OP_COMMIT_STORE, &r), 0);
    expect_reply(WIRE_PROFILE_2609, WIRE_OP_COMMIT_STORE, WIRE_FORM_POSITIONAL, &r, "c2");
    cr_assert_eq(wire_resp_safe(WIRE_OP_COMMIT_RETRIEVE, &r), 0);
    expect_reply(WIRE_PROFILE_2609, WIRE_OP_COMMIT_RETRIEVE, WIRE_FORM_POSITIONAL, &r, "c3");
    cr_assert_eq(wire_resp_safe(WIRE_OP_PREPARE_STORE, &r), 0);
    expect_reply(WIRE_PROFILE_2609, WIRE_OP_PREPARE_STORE, WIRE_FORM_POSITIONAL, &r,
                 "81 a7 \"context\" 82 a5 \"slots\" 90 ad \"chunk_indices\" 90");
    cr_assert_eq(wire_resp_safe(WIRE_OP_PREPARE_RETRIEVE, &r), 0);
    expect_reply(WIRE_PROFILE_2609, WIRE_OP_PREPARE_RETRIEVE, WIRE_FORM_POSITIONAL, &r,
                 "83 a7 \"success\" c2 a4 \"data\" c4 00 a7 \"context\" 80");
    cr_assert_eq(wire_resp_safe(WIRE_OP_LOOKUP, &r), 0);
    expect_reply(WIRE_PROFILE_2609, WIRE_OP_LOOKUP, WIRE_FORM_MESSAGE, &r, "80");
    cr_assert_eq(wire_resp_safe(WIRE_OP_NOOP, &r), 0);
    expect_reply(WIRE_PROFILE_2609, WIRE_OP_NOOP, WIRE_FORM_POSITIONAL, &r, "a2 4f 4b");
    cr_assert_eq(wire_resp_safe(WIRE_OP_GET_CHUNK_SIZE, &r), -ENOTSUP);
    cr_assert_eq(wire_resp_safe(WIRE_OP_STORE, &r), -ENOTSUP);
    cr_assert_eq(wire_resp_safe(WIRE_OP_REGISTER_ED_CONTEXT, &r), -ENOTSUP);
    cr_assert_eq(wire_resp_safe(WIRE_OP_UNSERVED_P2P, &r), -ENOTSUP);
}

/* Long token lists in a random mix of every int form, ending at the very end
 * of the frame (the word-at-a-time reader stops 8 bytes before it) and
 * followed by more fields, decode to exactly the ids encoded. */
static size_t put_token(uint8_t *b, uint32_t v, unsigned form)
{
    size_t n = 0;
    switch (form % 7) {
    case 0: /* smallest unsigned form, as encoders give */
        if (v <= 0x7f) {
            b[n++] = (uint8_t)v;
        } else if (v <= 0xff) {
            b[n++] = 0xcc, b[n++] = (uint8_t)v;
        } else if (v <= 0xffff) {
            b[n++] = 0xcd, b[n++] = (uint8_t)(v >> 8), b[n++] = (uint8_t)v;
        } else {
            b[n++] = 0xce;
            for (int s = 24; s >= 0; s -= 8)
                b[n++] = (uint8_t)(v >> s);
        }
        return n;
    case 1: /* uint32 even when smaller */
        b[n++] = 0xce;
        for (int s = 24; s >= 0; s -= 8)
            b[n++] = (uint8_t)(v >> s);
        return n;
    case 2: /* uint64 */
        b[n++] = 0xcf;
        for (int s = 56; s >= 0; s -= 8)
            b[n++] = (uint8_t)((uint64_t)v >> s);
        return n;
    case 3: /* int64, positive */
        b[n++] = 0xd3;
        for (int s = 56; s >= 0; s -= 8)
            b[n++] = (uint8_t)((uint64_t)v >> s);
        return n;
    default: /* mostly the smallest form: long runs for the fast path */
        return put_token(b, v, 0);
    }
}

static void check_long_list(bool tokens_last, unsigned seed)
{
    enum { N = 5000 };
    static uint32_t want[N];
    static uint8_t key[N * 9 + 256];
    size_t k = 0;
    const char *head = tokens_last ? "\x87\xaa" "model_name\xa1m\xaa" "world_size\x01\xa9" "worker_id\xc0"
                                     "\xa5" "start\x00\xa3" "end\x00\xaa" "request_id\xa1r\xa9" "token_ids"
                                   : "\x87\xaa" "model_name\xa1m\xaa" "world_size\x01\xa9" "worker_id\xc0"
                                     "\xa9" "token_ids";
    size_t hl = tokens_last ? 1 + 11 + 2 + 11 + 1 + 10 + 1 + 6 + 1 + 4 + 1 + 11 + 2 + 10
                            : 1 + 11 + 2 + 11 + 1 + 10 + 1 + 10;
    memcpy(key, head, hl);
    k = hl;
    key[k++] = 0xdd; /* array 32 */
    key[k++] = 0, key[k++] = 0, key[k++] = (uint8_t)(N >> 8), key[k++] = (uint8_t)N;
    unsigned x = seed;
    for (int i = 0; i < N; i++) {
        x = x * 1103515245u + 12345u;
        uint32_t v = (x >> 3) % 152064;
        if (i % 97 == 0)
            v = (x >> 7) & 0x7f;
        want[i] = v;
        k += put_token(key + k, v, x >> 28);
    }
    if (!tokens_last) {
        static const char tail[] = "\xa5" "start\x00\xa3" "end\x00\xaa" "request_id\xa1r";
        memcpy(key + k, tail, sizeof(tail) - 1);
        k += sizeof(tail) - 1;
    }
    struct wire_frame f[3] = { { (const uint8_t *)"\x00", 1 }, { (const uint8_t *)"\x05", 1 }, { key, k } };
    static const uint8_t tp = 0x01;
    struct wire_frame all[4] = { f[0], f[1], f[2], { &tp, 1 } };
    struct wire_req req;
    int rc = wire_decode_request(WIRE_PROFILE_2604, all, 4, &req);
    cr_assert_eq(rc, 0, "decode: %s", wire_strerror(rc));
    cr_assert_eq(req.key.n_tokens, N);
    for (int i = 0; i < N; i++)
        cr_assert_eq(req.key.token_ids[i], want[i], "token %d (tokens_last %d)", i, tokens_last);
    wire_req_free(&req);
    /* the same frame cut anywhere inside the list is refused, never misread */
    for (size_t cut = hl + 5; cut < k; cut += 977) {
        all[2].len = cut;
        cr_assert_lt(wire_decode_request(WIRE_PROFILE_2604, all, 4, &req), 0, "cut at %zu", cut);
        wire_req_free(&req);
    }
}

Test(wire, token_ids_long_lists_every_form_and_position)
{
    for (unsigned seed = 1; seed <= 3; seed++) {
        check_long_list(true, seed);
        check_long_list(false, seed);
    }
}
