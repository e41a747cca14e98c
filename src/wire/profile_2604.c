/*
 * Profile lmcache-2604: LMCache dev as of 2026-04-22 (spec section 3).
 * Integer request types 1..14 (enum.auto() positions), positional payload,
 * no operation names and no message form on the wire. The arity variants of
 * spec 3.2 are expressed as min/max (trailing optional frames) and alt.
 */
#include "wire/proto.h"

#define SYNC WIRE_CLASS_SYNC
#define AFF WIRE_CLASS_AFFINITY
#define NORM WIRE_CLASS_NORMAL
#define CB(i, n) { .id = i, .name = n, .op = WIRE_OP_UNSERVED_CACHEBLEND, .cls = NORM }

static const struct wire_row rows[] = {
    /* 4 frames (pre layout hints), 5 (hints, or engine_type), 6 (engine_type,
     * hints), 7 (+ engine_group_infos); the 2604 worker sends 5. */
    { .id = 1, .name = "REGISTER_KV_CACHE", .op = WIRE_OP_REGISTER_KV_CACHE, .cls = SYNC,
      .resp = WIRE_RESP_NONE, .min = 4, .max = 7, .enc_drop = 2,
      .p = { P_INSTANCE_ID, P_KV_CACHES, P_MODEL_NAME, P_WORLD_SIZE, P_TYPE_OR_HINTS,
             P_LAYOUT_HINTS, P_ENGINE_GROUPS } },
    { .id = 2, .name = "UNREGISTER_KV_CACHE", .op = WIRE_OP_UNREGISTER_KV_CACHE, .cls = SYNC,
      .resp = WIRE_RESP_NONE, .min = 1, .max = 1, .p = { P_INSTANCE_ID } },
    { .id = 3, .name = "STORE", .op = WIRE_OP_STORE, .cls = AFF, .resp = WIRE_RESP_EVENT_BOOL,
      .mresp = "result", .min = 4, .max = 4,
      .p = { P_KEY, P_INSTANCE_ID, P_BLOCK_IDS, P_EVENT } },
    { .id = 4, .name = "RETRIEVE", .op = WIRE_OP_RETRIEVE, .cls = AFF, .resp = WIRE_RESP_EVENT_BOOL,
      .mresp = "result", .min = 5, .max = 5,
      .p = { P_KEY, P_INSTANCE_ID, P_BLOCK_IDS, P_EVENT, P_SKIP } },
    { .id = 5, .name = "LOOKUP", .op = WIRE_OP_LOOKUP, .cls = NORM, .resp = WIRE_RESP_NONE,
      .min = 2, .max = 2, .p = { P_KEY, P_TP_SIZE } },
    { .id = 6, .name = "QUERY_PREFETCH_STATUS", .op = WIRE_OP_QUERY_PREFETCH_STATUS, .cls = NORM,
      .resp = WIRE_RESP_INT_OR_NIL, .mresp = "chunk_count", .min = 1, .max = 1,
      .p = { P_REQUEST_ID } },
    { .id = 7, .name = "QUERY_PREFETCH_LOOKUP_HITS", .op = WIRE_OP_QUERY_PREFETCH_LOOKUP_HITS,
      .cls = NORM, .resp = WIRE_RESP_INT_OR_NIL, .mresp = "chunk_count", .min = 1, .max = 1,
      .p = { P_REQUEST_ID } },
    { .id = 8, .name = "FREE_LOOKUP_LOCKS", .op = WIRE_OP_FREE_LOOKUP_LOCKS, .cls = NORM,
      .resp = WIRE_RESP_NONE, .min = 2, .max = 2, .p = { P_KEY, P_TP_SIZE } },
    { .id = 9, .name = "END_SESSION", .op = WIRE_OP_END_SESSION, .cls = NORM,
      .resp = WIRE_RESP_NONE, .min = 1, .max = 1, .p = { P_REQUEST_ID } },
    /* CLEAR: [] in 2604; an optional trailing force bool is accepted. */
    { .id = 10, .name = "CLEAR", .op = WIRE_OP_CLEAR, .cls = NORM, .resp = WIRE_RESP_NONE,
      .min = 0, .max = 1, .enc_drop = 1, .p = { P_FORCE } },
    { .id = 11, .name = "GET_CHUNK_SIZE", .op = WIRE_OP_GET_CHUNK_SIZE, .cls = SYNC,
      .resp = WIRE_RESP_INT, .mresp = "chunk_size", .min = 0, .max = 0 },
    /* PING: [] in 2604; [int | None] arrived in June, accepted too. */
    { .id = 12, .name = "PING", .op = WIRE_OP_PING, .cls = NORM, .resp = WIRE_RESP_BOOL,
      .mresp = "ok", .min = 0, .max = 1, .enc_drop = 1, .p = { P_INSTANCE_ID_OR_NIL } },
    /* REPORT_BLOCK_ALLOCATION: [records] (PR #2930) or
     * [instance_id, model_name, records] (PR #3043). */
    { .id = 13, .name = "REPORT_BLOCK_ALLOCATION", .op = WIRE_OP_REPORT_BLOCK_ALLOCATION,
      .cls = NORM, .resp = WIRE_RESP_NONE, .min = 3, .max = 3,
      .p = { P_INSTANCE_ID, P_MODEL_NAME, P_RECORDS }, .alt_n = 1, .alt = { P_RECORDS } },
    { .id = 14, .name = "NOOP", .op = WIRE_OP_NOOP, .cls = SYNC, .resp = WIRE_RESP_STR,
      .mresp = "message", .min = 0, .max = 0 },
    CB(15, "CB_REGISTER_KV_CACHE"),
    CB(16, "CB_UNREGISTER_KV_CACHE"),
    CB(17, "CB_STORE_PRE_COMPUTED"),
    CB(18, "CB_LOOKUP_PRE_COMPUTED"),
    CB(19, "CB_RETRIEVE_PRE_COMPUTED"),
    CB(20, "CB_STORE_FINAL"),
    CB(21, "CB_LOOKUP_PRE_COMPUTED_V2"),
    CB(22, "CB_RETRIEVE_PRE_COMPUTED_V2"),
    CB(23, "CB_REGISTER_ROPE_V3"),
    CB(24, "CB_UNREGISTER_ROPE_V3"),
    CB(25, "CB_RETRIEVE_PRE_COMPUTED_V3"),
    CB(26, "CB_UNIFIED_LOOKUP"),
};

const struct wire_profile_def wire_profile_2604 = {
    .id = WIRE_PROFILE_2604,
    .name = "lmcache-2604",
    .summary = "LMCache dev 2026-04-22: integer types 1-14, positional frames",
    .names_on_wire = false,
    .message_form = false,
    .rows = rows,
    .n_rows = sizeof(rows) / sizeof(rows[0]),
};
