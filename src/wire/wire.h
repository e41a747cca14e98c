/*
 * wire: LMCache MP wire protocol <-> one canonical request/response.
 *
 * Purpose. Turns the ZeroMQ frames of one request (uid, type, payload...) into
 * a `struct wire_req` that handlers consume without knowing which protocol
 * profile or which 2609 form the client spoke, and turns a canonical
 * `struct wire_resp` back into the reply frame. The client direction
 * (wire_encode_request / wire_decode_reply) is driven by the same profile
 * tables, so a C client speaks every profile and form the server accepts.
 *
 * Profiles. Each profile is one table file (profile_2604.c, profile_2609.c):
 * per operation its integer id and/or name, canonical op, payload parameters
 * (which fixes the accepted arities and field types), response shape and
 * scheduling class. A third profile is one more table file plus one line in
 * the registry of profile.c. docs/protocol.md describes the wire in full.
 *
 * Ownership. Decoding borrows: every `struct wire_str` / `struct wire_bin`
 * in a decoded request or reply points INTO the caller's frames, which must
 * stay alive and unchanged until wire_req_free()/wire_resp_free(). Arrays the
 * decoder builds (token ids, block ids, descriptor lists, slots...) are owned
 * by the request/response and released by wire_req_free()/wire_resp_free().
 * A request or response filled in by hand (client side, server replies) owns
 * nothing; wire_*_free() on it is a harmless no-op as long as it was zeroed
 * with wire_req_init()/wire_resp_init() first.
 *
 * Limits. A msgpack document may nest at most WIRE_MAX_DEPTH containers.
 * Every array/map/str/bin length is checked against the bytes left in its
 * frame before anything is read or allocated (an element needs >= 1 byte),
 * so a 5-byte frame claiming 2^32 elements is rejected without allocating.
 * The overall message size limit (--max-message-bytes) is the caller's: the
 * server checks the summed frame sizes before calling wire_decode_request().
 * Any input is safe: the decoder never reads outside the frames, never
 * crashes, never leaks; it is fuzzed (tests/fuzz/).
 *
 * Threads. No global mutable state: every function may be called from any
 * thread; a request/response/buffer belongs to one thread at a time.
 *
 * Left out. No sockets, no locks, no engine calls, no logging policy (the
 * server logs with the error codes and op names given here), no pickle
 * (pickle.h parses the ext-1 payloads whose views wire_req exposes).
 */
#ifndef LMCD_WIRE_WIRE_H
#define LMCD_WIRE_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Containers nested deeper than this are rejected (WIRE_EDEPTH). The deepest
 * legitimate document is a Key inside a message-form map: depth 3. */
#define WIRE_MAX_DEPTH 32
/* Most frames wire_encode_request() produces: uid, type, 7 payload frames. */
#define WIRE_MAX_REQ_FRAMES 9
/* Longest error message in the 2609 error frame (spec 9.1). */
#define WIRE_ERROR_MESSAGE_MAX 4096

/* ---- profiles, operations, classes ------------------------------------- */

enum wire_profile { WIRE_PROFILE_2604, WIRE_PROFILE_2609 };
#define WIRE_PROFILE_COUNT 2

/* "lmcache-2604" / "lmcache-2609" -> 0, else -EINVAL. */
int wire_profile_parse(const char *name, enum wire_profile *out);
/* "lmcache-2604" / "lmcache-2609"; "?" for an out-of-range value. */
const char *wire_profile_name(enum wire_profile p);
/* Writes the `lmcd --protocol help` text: each profile and its operations
 * (id/name, payload, response, class) from the tables. */
void wire_protocol_help(FILE *out);

/* Canonical operations. X(enum suffix, canonical lower-case name). The
 * UNSERVED_* ops are recognised by id/name so the server can log them
 * (rate-limited) and leave them unanswered (spec 9.3); decoding them returns
 * -WIRE_EUNSERVED with op and op_name set. */
#define WIRE_OPS(X)                                                                    \
    X(NONE, "none")                                                                    \
    X(REGISTER_KV_CACHE, "register_kv_cache")                                          \
    X(UNREGISTER_KV_CACHE, "unregister_kv_cache")                                      \
    X(STORE, "store")                                                                  \
    X(RETRIEVE, "retrieve")                                                            \
    X(LOOKUP, "lookup")                                                                \
    X(QUERY_PREFETCH_STATUS, "query_prefetch_status")                                  \
    X(WAIT_PREFETCH_STATUS, "wait_prefetch_status")                                    \
    X(QUERY_PREFETCH_LOOKUP_HITS, "query_prefetch_lookup_hits")                        \
    X(FREE_LOOKUP_LOCKS, "free_lookup_locks")                                          \
    X(END_SESSION, "end_session")                                                      \
    X(CLEAR, "clear")                                                                  \
    X(GET_CHUNK_SIZE, "get_chunk_size")                                                \
    X(PING, "ping")                                                                    \
    X(REPORT_BLOCK_ALLOCATION, "report_block_allocation")                              \
    X(NOOP, "noop")                                                                    \
    X(REGISTER_ED_CONTEXT, "register_kv_cache_engine_driven_context")                  \
    X(UNREGISTER_ED_CONTEXT, "unregister_kv_cache_engine_driven_context")              \
    X(PREPARE_STORE, "prepare_store")                                                  \
    X(COMMIT_STORE, "commit_store")                                                    \
    X(PREPARE_RETRIEVE, "prepare_retrieve")                                            \
    X(COMMIT_RETRIEVE, "commit_retrieve")                                              \
    X(GET_EXPERIMENTAL, "get_experimental")                                            \
    X(STORE_INLINE, "lmcd.store_inline")                                               \
    X(RETRIEVE_INLINE, "lmcd.retrieve_inline")                                         \
    X(UNSERVED_CACHEBLEND, "cacheblend")                                               \
    X(UNSERVED_P2P, "p2p")                                                             \
    X(UNSERVED_Q_CACHE, "q_cache")                                                     \
    X(UNSERVED_HANDSHAKE, "cb_protocol_handshake")                                     \
    X(UNSERVED_KV_EVENTS, "poll_kv_events")

#define WIRE_OP_ENUM_(sym, name) WIRE_OP_##sym,
enum wire_op { WIRE_OPS(WIRE_OP_ENUM_) WIRE_OP_COUNT };
#undef WIRE_OP_ENUM_

/* Canonical name of an op (the X-macro string); "?" when out of range. */
const char *wire_op_name(enum wire_op op);
/* True for the UNSERVED_* ops. */
bool wire_op_unserved(enum wire_op op);

enum wire_class {
    WIRE_CLASS_SYNC,     /* answered inline on the loop thread */
    WIRE_CLASS_AFFINITY, /* data movement: FIFO per client identity */
    WIRE_CLASS_NORMAL,   /* may block: normal pool */
};
const char *wire_class_name(enum wire_class c);

enum wire_form {
    WIRE_FORM_POSITIONAL, /* one msgpack document per parameter */
    WIRE_FORM_MESSAGE,    /* 2609 single-map request/reply (spec 4.4) */
};

/* ---- errors --------------------------------------------------------------
 * Decoders return 0 or the negative of one of these (or -ENOMEM). Values
 * start at 2000 so they never collide with errno values. */
#define WIRE_ERRORS(X)                                                                 \
    X(EFRAMES, 2000, "fewer than 2 frames after the identity (uid, type)")             \
    X(EUID, 2001, "uid frame is not a msgpack int")                                    \
    X(ETYPE, 2002, "type frame is neither a msgpack int nor a str")                    \
    X(EUNKNOWN, 2003, "unknown request type id or operation name")                     \
    X(EUNSERVED, 2004, "operation recognised but not served by lmcd")                  \
    X(EARITY, 2005, "wrong number of payload frames for the operation")                \
    X(EMSGPACK, 2006, "invalid msgpack (reserved byte 0xc1)")                          \
    X(ETRUNC, 2007, "msgpack document truncated")                                      \
    X(EOVERSIZE, 2008, "length or element count larger than the bytes left")          \
    X(EDEPTH, 2009, "msgpack nesting deeper than WIRE_MAX_DEPTH")                      \
    X(EWRONGTYPE, 2010, "field has the wrong msgpack type")                            \
    X(EEXT, 2011, "msgpack ext type other than 1 (device IPC wrapper)")                \
    X(EMISSING, 2012, "required map field missing")                                    \
    X(ERANGE, 2013, "integer out of range for its field")                              \
    X(ETRAILING, 2014, "bytes left after the msgpack document in a frame")             \
    X(EREPLY, 2015, "reply does not match the request (op, form or shape)")

#define WIRE_ERR_ENUM_(sym, val, msg) WIRE_##sym = val,
enum wire_err { WIRE_ERRORS(WIRE_ERR_ENUM_) };
#undef WIRE_ERR_ENUM_

/* Message for a return code: 0, -WIRE_E*, or -errno. Never NULL. */
const char *wire_strerror(int rc);

/* ---- decoded values ----------------------------------------------------- */

struct wire_frame {
    const void *data;
    size_t len;
};

/* Borrowed views (see Ownership). str is UTF-8 as sent, NOT NUL-terminated. */
struct wire_str {
    const char *ptr;
    uint32_t len;
};
struct wire_bin {
    const uint8_t *ptr;
    uint32_t len;
};

/* The cache key (spec 5.1). */
struct wire_key {
    struct wire_str model_name;
    int64_t world_size;
    bool has_worker_id; /* false: nil = scheduler, all shards */
    int64_t worker_id;
    uint32_t *token_ids; /* owned by the request when decoded */
    size_t n_tokens;
    int64_t start;
    int64_t end;
    struct wire_str request_id;
    struct wire_str cache_salt; /* "" when absent */
    int64_t num_kv_readers;     /* 0 when absent */
    /* request_configs and null_chunk_mask are validated and ignored. */
};

/* Block ids in groups (one per KV group). A flat [int] is one group.
 * Group g is ids[group_off[g] .. group_off[g+1]). */
struct wire_block_ids {
    int64_t *ids;
    size_t n_ids;
    size_t *group_off; /* n_groups + 1 entries; NULL when n_groups == 0 */
    size_t n_groups;
};

/* REGISTER_KV_CACHE (spec 3.1 #1, 4.1 #1). instance_id, model_name and
 * world_size are in struct wire_req. */
struct wire_register {
    struct wire_bin *descs; /* ext-1 payloads (pickles, spec 10), one per layer */
    size_t n_descs;
    bool has_engine_type;
    struct wire_str engine_type;
    bool has_layout_hints;
    struct wire_bin layout_hints; /* the whole msgpack map, as sent */
    struct wire_str kv_layout;    /* layout_hints["kv_layout"] when a str */
    size_t n_engine_groups;       /* engine_group_infos entries (0 when absent) */
    struct wire_bin engine_groups; /* the whole msgpack array, as sent (may be empty) */
};

/* REGISTER_ED_CONTEXT payload (spec 7.1). instance_id, model_name and
 * world_size are copied into struct wire_req as well. */
struct wire_ed_register {
    int64_t block_size;
    int64_t num_layers;
    int64_t hidden_dim_size;
    struct wire_str dtype_str;
    bool use_mla;
    bool has_num_physical_slots;
    int64_t num_physical_slots;
    /* group_layout_descs / group_hidden_dim_sizes non-nil, or
     * engine_group_infos non-empty: a multi-group layout lmcd refuses. */
    bool multi_group;
};

/* REPORT_BLOCK_ALLOCATION: the records are only counted (spec 6.6). With the
 * 3-frame form, instance_id and model_name are in struct wire_req
 * (has_instance_id says which form arrived). */
struct wire_report {
    size_t n_records;
    struct wire_bin records; /* the whole msgpack array, as sent */
};

struct wire_alloc; /* private: allocations owned by a request/response */

/* The canonical request. Fields an op does not use stay zero. */
struct wire_req {
    enum wire_op op;
    enum wire_class cls;
    enum wire_profile profile;
    enum wire_form form;
    const char *op_name; /* static: the profile's name for the operation */
    int64_t type_id;     /* the integer id, or -1 when the type was a name */
    uint64_t uid;        /* as decoded (bits of the msgpack int); echo the frame instead */

    bool has_key;
    struct wire_key key;

    bool has_instance_id; /* PING with nil, REPORT's 1-frame form: false */
    int64_t instance_id;
    struct wire_str model_name; /* REGISTER_*, REPORT (3-frame) */
    int64_t world_size;         /* REGISTER_* */
    int64_t tp_size;            /* LOOKUP, FREE_LOOKUP_LOCKS */
    struct wire_str request_id; /* QUERY/WAIT/LOOKUP_HITS/END_SESSION */
    double timeout;             /* WAIT_PREFETCH_STATUS, seconds */
    bool has_force;             /* CLEAR: false when no frame was sent */
    bool force;
    int64_t skip_first_n_tokens;      /* RETRIEVE */
    struct wire_block_ids blocks;     /* STORE, RETRIEVE */
    struct wire_bin event_ipc_handle; /* STORE, RETRIEVE */
    struct wire_bin data;             /* COMMIT_STORE */
    struct wire_register reg;         /* REGISTER_KV_CACHE */
    struct wire_ed_register ed;       /* REGISTER_ED_CONTEXT */
    struct wire_report report;        /* REPORT_BLOCK_ALLOCATION */

    /* STORE_INLINE: chunk bytes for chunks start..end, in order, views of the
     * caller's frames (the array itself is owned by the request). */
    struct wire_frame *raw;
    size_t n_raw;

    struct wire_alloc *owned_; /* private */
    const void *cap_;          /* private: the decoder's token-list capture, while decoding */
};

/* Zeroes a request (op NONE, owns nothing). */
void wire_req_init(struct wire_req *req);
/* Frees what the request owns and re-initialises it. NULL-safe. */
void wire_req_free(struct wire_req *req);

/*
 * Decodes one request. frames[0] = uid, frames[1] = type, frames[2..n) =
 * payload (the ROUTER identity is not passed). On 0, *out holds the request
 * (release with wire_req_free). On error, *out owns nothing; op, op_name,
 * type_id, cls, profile are set whenever the type frame was understood (so
 * -WIRE_EUNSERVED and -WIRE_EARITY can be logged with the operation name).
 */
int wire_decode_request(enum wire_profile profile, const struct wire_frame *frames, size_t n,
                        struct wire_req *out);

/* Decodes a uid frame (any msgpack int width). 0 or -WIRE_EUID. */
int wire_decode_uid(const struct wire_frame *frame, uint64_t *uid);

/* ---- output buffers ----------------------------------------------------- */

/* A growable byte buffer. Zero-initialise (or wire_buf_init) before use. */
struct wire_buf {
    uint8_t *data;
    size_t len;
    size_t cap;
    int err; /* sticky: -ENOMEM once an append failed */
};
void wire_buf_init(struct wire_buf *b);
void wire_buf_reset(struct wire_buf *b); /* len = 0, err = 0, keeps memory */
void wire_buf_free(struct wire_buf *b);

/* A multi-frame message in one buffer: frame i is
 * buf.data[off[i] .. off[i+1]). */
struct wire_msg {
    struct wire_buf buf;
    size_t n_frames;
    size_t off[WIRE_MAX_REQ_FRAMES + 1];
};
void wire_msg_init(struct wire_msg *m);
void wire_msg_free(struct wire_msg *m);
/* View of frame i (valid until the message is modified or freed). */
struct wire_frame wire_msg_frame(const struct wire_msg *m, size_t i);

/* ---- responses ---------------------------------------------------------- */

enum wire_resp_kind {
    WIRE_RESP_NONE,        /* None */
    WIRE_RESP_INT,         /* GET_CHUNK_SIZE */
    WIRE_RESP_INT_OR_NIL,  /* QUERY/WAIT_PREFETCH_STATUS, LOOKUP_HITS */
    WIRE_RESP_BOOL,        /* PING, COMMIT_STORE, COMMIT_RETRIEVE */
    WIRE_RESP_STR,         /* NOOP */
    WIRE_RESP_STR_LIST,    /* GET_EXPERIMENTAL */
    WIRE_RESP_EVENT_BOOL,  /* STORE, RETRIEVE: [bin, bool] */
    WIRE_RESP_ED_POOL,     /* REGISTER_ED_CONTEXT */
    WIRE_RESP_ED_CONTEXT,  /* PREPARE_STORE */
    WIRE_RESP_ED_RETRIEVE, /* PREPARE_RETRIEVE */
    WIRE_RESP_INLINE,      /* STORE_INLINE / RETRIEVE_INLINE: a chunk count */
};
const char *wire_resp_kind_name(enum wire_resp_kind k);

/* Slot descriptor (spec 7.3): encoded {offset, length, shape, dtype}. */
#define WIRE_SLOT_MAX_DIMS 8
struct wire_slot {
    uint64_t offset;
    uint64_t length;
    uint32_t ndim;
    int64_t shape[WIRE_SLOT_MAX_DIMS];
    struct wire_str dtype; /* bare torch name, e.g. "bfloat16" */
};

/* The canonical response. The fields the kind uses are read; pointers are
 * the caller's (encode) or owned/borrowed as described above (decode). */
struct wire_resp {
    enum wire_resp_kind kind;
    bool is_nil;   /* INT_OR_NIL: nil ("ask again") */
    int64_t i;     /* INT, INT_OR_NIL, INLINE */
    bool b;        /* BOOL, EVENT_BOOL's bool */
    struct wire_str s; /* STR */
    struct wire_str *strs; /* STR_LIST */
    size_t n_strs;
    struct wire_bin event; /* EVENT_BOOL: 64-byte event handle */
    /* ED_POOL */
    struct wire_str shm_name;
    uint64_t pool_size;
    bool has_error; /* encode the optional `error` field (spec 7.1) */
    struct wire_str error;
    /* ED_CONTEXT (slots + chunk_indices) / ED_RETRIEVE (success, data, slots) */
    bool success;
    struct wire_bin data;
    struct wire_slot *slots;
    size_t n_slots;
    int64_t *chunk_indices; /* ED_CONTEXT: n_slots entries */
    /* RETRIEVE_INLINE reply: the raw chunk frames after the count (decode). */
    struct wire_frame *raw;
    size_t n_raw;

    struct wire_alloc *owned_; /* private */
};
void wire_resp_init(struct wire_resp *resp);
void wire_resp_free(struct wire_resp *resp);

/* The response kind an operation answers with (NONE for unserved ops). */
enum wire_resp_kind wire_op_resp_kind(enum wire_op op);

/*
 * Fills the spec 9.3 "safe reply" for an op whose handler failed: None for
 * None ops, 0 (a miss, never nil) for the prefetch queries, true for PING
 * and COMMIT_RETRIEVE, false for COMMIT_STORE, the empty PREPARE_STORE
 * context, the PREPARE_RETRIEVE miss, [] for GET_EXPERIMENTAL, "OK" for NOOP,
 * 0 chunks for the inline ops. -ENOTSUP where no reply is safe without
 * server data (GET_CHUNK_SIZE, the pool of op 14, STORE/RETRIEVE events):
 * the server then leaves the request unanswered and logs it.
 */
int wire_resp_safe(enum wire_op op, struct wire_resp *out);

/*
 * Server: encodes the reply for a decoded request into *out (reset first).
 * *has_frame = false means "send no response frame" (positional None, and
 * a nil int|None, which the reference also sends as a missing frame);
 * otherwise out holds the one response frame. resp->kind must equal
 * wire_op_resp_kind(req->op), except that NONE ops accept only NONE.
 * For RETRIEVE_INLINE this encodes the count; the server appends the raw
 * chunk frames itself. 0, -WIRE_EREPLY (shape mismatch) or -ENOMEM.
 */
int wire_encode_reply(const struct wire_req *req, const struct wire_resp *resp,
                      struct wire_buf *out, bool *has_frame);

/*
 * The optional 2609 error reply (spec 9.1), sent only behind
 * --send-error-frames and never in 2604: marker frame
 * b"LMCACHE_RPC_ERROR_V1" followed by a msgpack map {error_type, message};
 * message is cut to WIRE_ERROR_MESSAGE_MAX bytes (at a UTF-8 boundary).
 * Writes the marker into *marker and the map into *map.
 */
#define WIRE_ERROR_MARKER "LMCACHE_RPC_ERROR_V1"
int wire_encode_error(const char *error_type, const char *message, struct wire_buf *marker,
                      struct wire_buf *map);

/* ---- client direction --------------------------------------------------- */

/*
 * Client: encodes a request (req->op and the fields that op uses) as the
 * frames uid, type, payload... into *out (reset first). Ops with an integer
 * id are sent by id, others (2609) by name. The form must be POSITIONAL for
 * 2604 and for the inline ops. STORE_INLINE's raw frames are not included:
 * the client sends req->raw after these frames itself.
 * 0, -WIRE_EUNKNOWN (op not in the profile), -WIRE_EUNSERVED, -EINVAL, -ENOMEM.
 */
int wire_encode_request(enum wire_profile profile, enum wire_form form,
                        const struct wire_req *req, uint64_t uid, struct wire_msg *out);

/*
 * Client: decodes a reply to a request of `op` sent in `form`. frames[0] =
 * uid, frames[1] = type, then the response frame if any (positional None may
 * have none; RETRIEVE_INLINE is followed by its raw chunk frames, exposed as
 * resp->raw). The type frame must name `op` in `profile`.
 * 0 or -WIRE_E* / -ENOMEM; release with wire_resp_free().
 */
int wire_decode_reply(enum wire_profile profile, enum wire_form form, enum wire_op op,
                      const struct wire_frame *frames, size_t n, struct wire_resp *out);

#endif
