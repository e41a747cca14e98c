/*
 * Profile lmcache-2609: the newest stored envelope, September 2026 (spec
 * section 4). Frozen integer ids 1..34, operation-name strings for
 * operations without an id (lmcd's inline ops among them), positional
 * frames, and the single-map message form detected per request (spec 4.4).
 */
#include "wire/proto.h"

#define SYNC WIRE_CLASS_SYNC
#define AFF WIRE_CLASS_AFFINITY
#define NORM WIRE_CLASS_NORMAL
#define UNSERVED(i, n, o) { .id = i, .name = n, .op = WIRE_OP_UNSERVED_##o, .cls = NORM }

static const struct wire_row rows[] = {
    { .id = 1, .name = "register_kv_cache", .op = WIRE_OP_REGISTER_KV_CACHE, .cls = SYNC,
      .resp = WIRE_RESP_NONE, .min = 5, .max = 7,
      .p = { P_INSTANCE_ID, P_KV_CACHES, P_MODEL_NAME, P_WORLD_SIZE, P_ENGINE_TYPE,
             P_LAYOUT_HINTS, P_ENGINE_GROUPS } },
    { .id = 2, .name = "unregister_kv_cache", .op = WIRE_OP_UNREGISTER_KV_CACHE, .cls = SYNC,
      .resp = WIRE_RESP_NONE, .min = 1, .max = 1, .p = { P_INSTANCE_ID } },
    UNSERVED(3, "register_q_cache", Q_CACHE),
    UNSERVED(4, "unregister_q_cache", Q_CACHE),
    UNSERVED(5, "store_q", Q_CACHE),
    { .id = 6, .name = "store", .op = WIRE_OP_STORE, .cls = AFF, .resp = WIRE_RESP_EVENT_BOOL,
      .mresp = "result", .min = 4, .max = 4,
      .p = { P_KEY, P_INSTANCE_ID, P_BLOCK_IDS, P_EVENT } },
    { .id = 7, .name = "retrieve", .op = WIRE_OP_RETRIEVE, .cls = AFF,
      .resp = WIRE_RESP_EVENT_BOOL, .mresp = "result", .min = 5, .max = 5,
      .p = { P_KEY, P_INSTANCE_ID, P_BLOCK_IDS, P_EVENT, P_SKIP } },
    { .id = 8, .name = "lookup", .op = WIRE_OP_LOOKUP, .cls = NORM, .resp = WIRE_RESP_NONE,
      .min = 2, .max = 2, .p = { P_KEY, P_TP_SIZE } },
    { .id = 9, .name = "query_prefetch_status", .op = WIRE_OP_QUERY_PREFETCH_STATUS, .cls = NORM,
      .resp = WIRE_RESP_INT_OR_NIL, .mresp = "chunk_count", .min = 1, .max = 1,
      .p = { P_REQUEST_ID } },
    { .id = 10, .name = "wait_prefetch_status", .op = WIRE_OP_WAIT_PREFETCH_STATUS, .cls = NORM,
      .resp = WIRE_RESP_INT_OR_NIL, .mresp = "chunk_count", .min = 2, .max = 2,
      .p = { P_REQUEST_ID, P_TIMEOUT } },
    { .id = 11, .name = "query_prefetch_lookup_hits", .op = WIRE_OP_QUERY_PREFETCH_LOOKUP_HITS,
      .cls = NORM, .resp = WIRE_RESP_INT_OR_NIL, .mresp = "chunk_count", .min = 1, .max = 1,
      .p = { P_REQUEST_ID } },
    { .id = 12, .name = "free_lookup_locks", .op = WIRE_OP_FREE_LOOKUP_LOCKS, .cls = NORM,
      .resp = WIRE_RESP_NONE, .min = 2, .max = 2, .p = { P_KEY, P_TP_SIZE } },
    /* end_info is sent by one stored contract only (spec 4.2). */
    { .id = 13, .name = "end_session", .op = WIRE_OP_END_SESSION, .cls = NORM,
      .resp = WIRE_RESP_NONE, .min = 1, .max = 2, .enc_drop = 1,
      .p = { P_REQUEST_ID, P_END_INFO } },
    { .id = 14, .name = "register_kv_cache_engine_driven_context",
      .op = WIRE_OP_REGISTER_ED_CONTEXT, .cls = SYNC, .resp = WIRE_RESP_ED_POOL, .min = 1,
      .max = 1, .p = { P_ED_PAYLOAD } },
    { .id = 15, .name = "unregister_kv_cache_engine_driven_context",
      .op = WIRE_OP_UNREGISTER_ED_CONTEXT, .cls = SYNC, .resp = WIRE_RESP_NONE, .min = 1,
      .max = 1, .p = { P_INSTANCE_ID } },
    { .id = 16, .name = "prepare_store", .op = WIRE_OP_PREPARE_STORE, .cls = AFF,
      .resp = WIRE_RESP_ED_CONTEXT, .min = 2, .max = 2, .p = { P_KEY, P_INSTANCE_ID } },
    { .id = 17, .name = "commit_store", .op = WIRE_OP_COMMIT_STORE, .cls = AFF,
      .resp = WIRE_RESP_BOOL, .mresp = "success", .min = 3, .max = 3,
      .p = { P_KEY, P_INSTANCE_ID, P_DATA } },
    { .id = 18, .name = "prepare_retrieve", .op = WIRE_OP_PREPARE_RETRIEVE, .cls = AFF,
      .resp = WIRE_RESP_ED_RETRIEVE, .min = 2, .max = 2, .p = { P_KEY, P_INSTANCE_ID } },
    { .id = 19, .name = "commit_retrieve", .op = WIRE_OP_COMMIT_RETRIEVE, .cls = AFF,
      .resp = WIRE_RESP_BOOL, .mresp = "success", .min = 2, .max = 2,
      .p = { P_KEY, P_INSTANCE_ID } },
    /* clear(force=False): newest clients always send the frame, older none. */
    { .id = 20, .name = "clear", .op = WIRE_OP_CLEAR, .cls = NORM, .resp = WIRE_RESP_NONE,
      .min = 0, .max = 1, .p = { P_FORCE } },
    { .id = 21, .name = "get_chunk_size", .op = WIRE_OP_GET_CHUNK_SIZE, .cls = SYNC,
      .resp = WIRE_RESP_INT, .mresp = "chunk_size", .min = 0, .max = 0 },
    { .id = 22, .name = "ping", .op = WIRE_OP_PING, .cls = NORM, .resp = WIRE_RESP_BOOL,
      .mresp = "ok", .min = 0, .max = 1, .p = { P_INSTANCE_ID_OR_NIL } },
    { .id = 23, .name = "report_block_allocation", .op = WIRE_OP_REPORT_BLOCK_ALLOCATION,
      .cls = NORM, .resp = WIRE_RESP_NONE, .min = 3, .max = 3,
      .p = { P_INSTANCE_ID, P_MODEL_NAME, P_RECORDS } },
    { .id = 24, .name = "noop", .op = WIRE_OP_NOOP, .cls = SYNC, .resp = WIRE_RESP_STR,
      .mresp = "message", .min = 0, .max = 0 },
    UNSERVED(25, "cb_register_rope", CACHEBLEND),
    UNSERVED(26, "cb_unregister_rope", CACHEBLEND),
    UNSERVED(27, "cb_retrieve_pre_computed", CACHEBLEND),
    UNSERVED(28, "cb_unified_lookup", CACHEBLEND),
    UNSERVED(29, "p2p_lookup_and_lock", P2P),
    UNSERVED(30, "p2p_query_lookup_results", P2P),
    UNSERVED(31, "p2p_unlock_objects", P2P),
    { .id = 32, .name = "get_experimental", .op = WIRE_OP_GET_EXPERIMENTAL, .cls = SYNC,
      .resp = WIRE_RESP_STR_LIST, .mresp = "names", .min = 0, .max = 0 },
    UNSERVED(33, "cb_protocol_handshake", HANDSHAKE),
    UNSERVED(34, "poll_kv_events", KV_EVENTS),
    UNSERVED(-1, "subscribe_kv_events", KV_EVENTS),
    /* lmcd-only inline data path (docs/protocol.md): Key, then one raw frame
     * per chunk (store); the reply is a chunk count (retrieve: + raw frames). */
    { .id = -1, .name = "lmcd.store_inline", .op = WIRE_OP_STORE_INLINE, .cls = AFF,
      .resp = WIRE_RESP_INLINE, .min = 1, .max = 1, .flags = ROW_RAW_TAIL | ROW_NO_MESSAGE,
      .p = { P_KEY_WORKER } },
    { .id = -1, .name = "lmcd.retrieve_inline", .op = WIRE_OP_RETRIEVE_INLINE, .cls = AFF,
      .resp = WIRE_RESP_INLINE, .min = 1, .max = 1, .flags = ROW_NO_MESSAGE,
      .p = { P_KEY_WORKER } },
};

const struct wire_profile_def wire_profile_2609 = {
    .id = WIRE_PROFILE_2609,
    .name = "lmcache-2609",
    .summary = "LMCache Sept 2026: frozen ids 1-34 or operation names, positional "
               "frames or one map per request (detected per request)",
    .names_on_wire = true,
    .message_form = true,
    .rows = rows,
    .n_rows = sizeof(rows) / sizeof(rows[0]),
};
