/*
 * proto: the profile tables' shape and the per-parameter codec (internal to
 * src/wire/).
 *
 * A profile is an array of rows, one per operation the profile knows (served
 * or not). A row says how the operation appears on the wire (integer id
 * and/or name), which canonical op it is, its class, and its payload as a
 * list of parameter kinds. A parameter kind (enum wire_param) knows how to
 * decode itself into struct wire_req, how to encode itself from it, its
 * message-form field name and its help text; so decoding, encoding and
 * `--protocol help` are all driven by the same row.
 *
 * Adding a profile: write profile_<name>.c with a `const struct
 * wire_profile_def` and add it to the registry in profile.c.
 */
#ifndef LMCD_WIRE_PROTO_H
#define LMCD_WIRE_PROTO_H

#include "wire/mp.h"
#include "wire/wire.h"

enum wire_param {
    P_END = 0,           /* list terminator */
    P_KEY,               /* key: Key */
    P_KEY_WORKER,        /* key: Key with worker_id required (inline ops) */
    P_INSTANCE_ID,       /* instance_id: int */
    P_INSTANCE_ID_OR_NIL,/* instance_id: int | None */
    P_TP_SIZE,           /* tp_size: int */
    P_BLOCK_IDS,         /* gpu_block_ids: [int] | [[int]] */
    P_EVENT,             /* event_ipc_handle: bytes */
    P_SKIP,              /* skip_first_n_tokens: int */
    P_REQUEST_ID,        /* request_id: str */
    P_TIMEOUT,           /* timeout: float */
    P_END_INFO,          /* end_info: map (ignored) */
    P_FORCE,             /* force: bool */
    P_DATA,              /* data: bytes */
    P_ED_PAYLOAD,        /* payload: RegisterEngineDrivenContextPayload */
    P_KV_CACHES,         /* kv_cache(s): [ext 1] */
    P_MODEL_NAME,        /* model_name: str */
    P_WORLD_SIZE,        /* world_size: int */
    P_ENGINE_TYPE,       /* engine_type: str */
    P_TYPE_OR_HINTS,     /* 2604 frame 5: engine_type (str) or layout_hints (map) */
    P_LAYOUT_HINTS,      /* layout_hints: map */
    P_ENGINE_GROUPS,     /* engine_group_infos: [EngineGroupInfo] */
    P_RECORDS,           /* records: [BlockAllocationRecord] */
    P_COUNT_
};

#define WIRE_MAX_PARAMS 7

/* Row flags. */
#define ROW_RAW_TAIL 0x01   /* payload frames past `max` are raw bytes (STORE_INLINE) */
#define ROW_NO_MESSAGE 0x02 /* never in message form (inline ops) */

struct wire_row {
    int32_t id;         /* integer id on the wire; -1 = sent by name only */
    const char *name;   /* operation name (2609: the method name) */
    enum wire_op op;
    enum wire_class cls;
    enum wire_resp_kind resp;
    const char *mresp;  /* message form: the reply map's field (NULL: reply is a map already/None) */
    uint8_t min, max;   /* accepted positional payload frame counts */
    uint8_t enc_drop;   /* trailing optional params a client of this profile omits */
    uint8_t flags;
    uint8_t p[WIRE_MAX_PARAMS + 1]; /* P_END-terminated */
    uint8_t alt_n;      /* also accepted: exactly alt_n frames with params alt[] */
    uint8_t alt[WIRE_MAX_PARAMS + 1];
};

struct wire_profile_def {
    enum wire_profile id;
    const char *name;        /* "lmcache-2604" */
    const char *summary;     /* one line for help */
    bool names_on_wire;      /* the type frame may be an operation-name str */
    bool message_form;       /* single-map requests detected per request (spec 4.4) */
    const struct wire_row *rows;
    size_t n_rows;
};

extern const struct wire_profile_def wire_profile_2604;
extern const struct wire_profile_def wire_profile_2609;

const struct wire_profile_def *wire_profile_get(enum wire_profile p);
const struct wire_row *wire_row_by_id(const struct wire_profile_def *pd, int64_t id);
const struct wire_row *wire_row_by_name(const struct wire_profile_def *pd, const char *s, size_t n);
/* The row named by a type frame (int id, or a str where names are on the
 * wire); 0, -WIRE_ETYPE or -WIRE_EUNKNOWN. type_id = -1 for names. */
int wire_row_by_frame(const struct wire_profile_def *pd, const struct wire_frame *f,
                      const struct wire_row **row, int64_t *type_id);
/* The row a client uses to send `op` (served rows only). */
const struct wire_row *wire_row_by_op(const struct wire_profile_def *pd, enum wire_op op);

/* ---- parameter kinds ---- */
struct wire_param_info {
    const char *mname; /* message-form field name; NULL: not part of the message form */
    const char *help;  /* "name:type" for --protocol help */
    bool is_map;       /* its positional frame is a msgpack map */
};
const struct wire_param_info *wire_param_info(enum wire_param p);

/* Decodes one parameter at r into req. `lenient`: top-level positional
 * frame, where a declared exact int/bool accepts bool/int (spec 2). */
int wire_param_decode(enum wire_param p, struct mp_rd *r, struct wire_req *req, bool lenient);
/* Encodes one parameter from req. `profile` picks the key layout. */
int wire_param_encode(enum wire_param p, struct wire_buf *b, const struct wire_req *req,
                      enum wire_profile profile);

/* ---- allocations owned by a request/response ---- */
void *wire_own(struct wire_alloc **list, size_t n, size_t size); /* zeroed */
void *wire_own_uninit(struct wire_alloc **list, size_t n, size_t size); /* for what is written whole */
void wire_own_free(struct wire_alloc **list);

/* Typed readers shared by the request and reply codecs. */
int wire_rd_typed(struct mp_rd *r, enum mp_type t, struct mp_obj *o);
/* An array header, and storage for its n elements of `size` bytes owned by *own. */
int wire_rd_array_own(struct mp_rd *r, struct wire_alloc **own, size_t size, void **out,
                      uint32_t *n);
int wire_rd_int(struct mp_rd *r, bool lenient, int64_t *v);
int wire_rd_bool(struct mp_rd *r, bool lenient, bool *v);
int wire_rd_str(struct mp_rd *r, struct wire_str *s);
int wire_rd_bin(struct mp_rd *r, struct wire_bin *s);
/* Reads a map header and iterates: *key gets each key (str required). */
int wire_rd_map(struct mp_rd *r, uint32_t *n);
int wire_rd_key(struct mp_rd *r, struct wire_str *key);
bool wire_str_eq(struct wire_str s, const char *lit);

#endif
