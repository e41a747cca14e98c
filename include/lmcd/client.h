/*
 * liblmcd: a C client for lmcd and LMCache multiprocess (MP) cache servers.
 *
 * Contract. A `struct lmcd_client` is one ZeroMQ DEALER connected to one
 * server URL (`tcp://host:port` or `ipc://path`), speaking one protocol
 * profile (LMCD_PROFILE_2604 or LMCD_PROFILE_2609) in one 2609 form
 * (positional frames, or the single-map message form). Requests are
 * numbered by a per-client uid starting at 0; replies are matched by uid, in
 * any order. Every operation exists twice:
 *   - synchronous, e.g. lmcd_get_chunk_size(): send, wait up to the client's
 *     timeout (lmcd_client_set_timeout(), default LMCD_DEFAULT_TIMEOUT_MS),
 *     decode; a reply arriving after the call gave up is dropped;
 *   - asynchronous: lmcd_submit() a `struct lmcd_request` and get its uid,
 *     then lmcd_poll() / lmcd_wait() for that uid, or lmcd_cancel() it. Any
 *     number of requests may be in flight; replies to other uids that arrive
 *     while waiting for one are decoded and kept for their own poll/wait.
 *
 * Errors. 0 or a negative errno; lmcd_strerror() names each:
 *   -ETIMEDOUT  no reply within the timeout (the server may be down, or it
 *               ignored the request: LMCache servers answer nothing to a
 *               request they cannot decode)
 *   -EPROTO     the reply could not be decoded as this operation's response
 *               (the uid's request is finished; the client stays usable)
 *   -EAGAIN     "not yet": lmcd_poll() before the reply arrived, and the
 *               prefetch queries when the server answered nil (ask again)
 *   -ENOTSUP    the operation does not exist in the client's profile
 *               (e.g. the engine-driven ops in lmcache-2604)
 *   -ENOENT     lmcd_poll()/lmcd_wait() on a uid that is not pending
 *   -ENOBUFS    the socket's send queue is full (too many unsent requests)
 *   -EINVAL, -ENOMEM, and connect errors from ZeroMQ (e.g. -EPROTONOSUPPORT
 *   for an unknown URL scheme) as usual.
 *
 * Ownership. Request structs and every pointer in them are borrowed for the
 * duration of the call only: the request is encoded and handed to ZeroMQ
 * (which copies it) before lmcd_submit() returns. Everything a reply points
 * to (strings, slots, chunk buffers) belongs to the `struct lmcd_reply` and
 * is released by lmcd_reply_free(); strings are NUL-terminated copies, the
 * chunk buffers of lmcd_retrieve_inline() point into the received ZeroMQ
 * frames (no copy). A reply must be freed even when its call failed (that
 * is a no-op then). lmcd_client_close() frees pending requests and replies
 * nobody collected.
 *
 * Threads. Like a ZeroMQ socket, a client object is NOT thread-safe: use
 * each one from one thread at a time (a hand-over between threads needs a
 * full memory barrier, e.g. a mutex). Different client objects are
 * independent and may be used from different threads at once. Each client
 * owns its own ZeroMQ context (and thus one ZeroMQ I/O thread). Replies
 * are owned data and may be handed to any thread.
 *
 * Left out. The CUDA (LMCache-driven) path: REGISTER_KV_CACHE, STORE and
 * RETRIEVE need CUDA IPC handles that a C client without CUDA cannot make;
 * pickle-mode engine-driven transfers; the unmerged CacheBlend/P2P ops.
 * docs/client.md has examples.
 */
#ifndef LMCD_CLIENT_H
#define LMCD_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LMCD_DEFAULT_TIMEOUT_MS 5000
/* "No instance id": PING sends nil (schedulers, probes). */
#define LMCD_NO_INSTANCE INT64_MIN
/* Longest dtype name a slot descriptor carries ("float8_e4m3fnuz" fits). */
#define LMCD_DTYPE_MAX 32
#define LMCD_SLOT_MAX_DIMS 8

enum lmcd_profile {
    LMCD_PROFILE_2604, /* LMCache dev 2026-04-22: integer types 1-14 */
    LMCD_PROFILE_2609, /* LMCache Sept 2026: frozen ids 1-34, operation names */
};

enum lmcd_form {
    LMCD_FORM_POSITIONAL, /* one msgpack document per parameter (both profiles) */
    LMCD_FORM_MESSAGE,    /* 2609 only: one map per request and per reply */
};

/* "lmcache-2604" / "lmcache-2609" -> 0; else -EINVAL. */
int lmcd_profile_parse(const char *name, enum lmcd_profile *out);
/* The message for a return code of this library (0, -errno). Never NULL. */
const char *lmcd_strerror(int rc);

/* ---- the client object --------------------------------------------------- */

struct lmcd_client;

/* Creates a client and connects it (ZeroMQ connects lazily: an unreachable
 * server shows up as -ETIMEDOUT on the first call, not here). url is a
 * ZeroMQ endpoint: "tcp://HOST:PORT" or "ipc://PATH". The message form
 * needs LMCD_PROFILE_2609 (else -EINVAL). *out is NULL on failure. */
int lmcd_client_open(const char *url, enum lmcd_profile profile, enum lmcd_form form,
                     struct lmcd_client **out);
/* Closes the socket at once (pending requests are dropped, unsent ones
 * discarded) and frees everything the client still holds. NULL-safe. */
void lmcd_client_close(struct lmcd_client *c);
/* Timeout of the synchronous calls from now on, milliseconds; < 0 waits
 * forever. Default LMCD_DEFAULT_TIMEOUT_MS. */
void lmcd_client_set_timeout(struct lmcd_client *c, int timeout_ms);
/* Requests submitted and not yet collected (polled, waited or cancelled). */
size_t lmcd_client_pending(const struct lmcd_client *c);

/* ---- request and reply ----------------------------------------------------- */

enum lmcd_op {
    LMCD_OP_GET_CHUNK_SIZE,
    LMCD_OP_NOOP,
    LMCD_OP_PING,
    LMCD_OP_GET_EXPERIMENTAL, /* 2609 */
    LMCD_OP_LOOKUP,
    LMCD_OP_QUERY_PREFETCH_STATUS,
    LMCD_OP_WAIT_PREFETCH_STATUS, /* 2609 */
    LMCD_OP_QUERY_PREFETCH_LOOKUP_HITS,
    LMCD_OP_FREE_LOOKUP_LOCKS,
    LMCD_OP_END_SESSION,
    LMCD_OP_CLEAR,
    LMCD_OP_REPORT_BLOCK_ALLOCATION,
    LMCD_OP_REGISTER_ED,   /* 2609: register_kv_cache_engine_driven_context */
    LMCD_OP_UNREGISTER_ED, /* 2609 */
    LMCD_OP_PREPARE_STORE, /* 2609 */
    LMCD_OP_COMMIT_STORE,  /* 2609 */
    LMCD_OP_PREPARE_RETRIEVE, /* 2609 */
    LMCD_OP_COMMIT_RETRIEVE,  /* 2609 */
    LMCD_OP_STORE_INLINE,     /* lmcd only, 2609 */
    LMCD_OP_RETRIEVE_INLINE,  /* lmcd only, 2609 */
    LMCD_OP_COUNT_
};
/* The operation's 2609 name ("get_chunk_size", "lmcd.store_inline"...). */
const char *lmcd_op_name(enum lmcd_op op);

/* The cache key (spec 5.1). Zero-initialised = scheduler key (worker_id nil),
 * salt "", num_kv_readers 0 (the server derives it). */
struct lmcd_key {
    const char *model_name;
    int64_t world_size;
    bool has_worker_id; /* false: nil (LOOKUP, FREE_LOOKUP_LOCKS) */
    int64_t worker_id;  /* this worker's shard (transfers) */
    const uint32_t *token_ids; /* the request's whole token list so far */
    size_t n_tokens;
    int64_t start; /* chunk aligned */
    int64_t end;   /* chunk aligned, exclusive */
    const char *request_id;
    const char *cache_salt;  /* NULL = "" */
    int64_t num_kv_readers;  /* sent by 2609 only; 0 = let the server derive it */
};

/* REGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT payload (spec 7.1). */
struct lmcd_ed_payload {
    int64_t instance_id;
    const char *model_name;
    int64_t world_size;
    int64_t block_size;      /* tokens per paged block */
    int64_t num_layers;
    int64_t hidden_dim_size; /* heads x head_size, or the MLA latent width */
    const char *dtype;       /* bare torch name: "bfloat16", "float16", ... */
    bool use_mla;
    bool has_num_physical_slots;
    int64_t num_physical_slots;
};

/* One REPORT_BLOCK_ALLOCATION record (BlockAllocationRecord). */
struct lmcd_block_record {
    const char *req_id;
    const int64_t *new_block_ids;
    size_t n_block_ids;
    const uint32_t *new_token_ids;
    size_t n_token_ids;
};

/* A request for lmcd_submit(). Set op and the fields it uses (listed per
 * field); the rest is ignored. Zero-initialise it first. */
struct lmcd_request {
    enum lmcd_op op;
    struct lmcd_key key;   /* LOOKUP, FREE_LOOKUP_LOCKS, PREPARE_*, COMMIT_*, *_INLINE */
    int64_t instance_id;   /* PING (LMCD_NO_INSTANCE = nil), REPORT, UNREGISTER_ED,
                              PREPARE_*, COMMIT_* */
    int64_t tp_size;       /* LOOKUP, FREE_LOOKUP_LOCKS */
    const char *request_id; /* QUERY/WAIT_PREFETCH_STATUS, LOOKUP_HITS, END_SESSION */
    double timeout_s;      /* WAIT_PREFETCH_STATUS: how long the server waits */
    bool force;            /* CLEAR: sent by 2609 positional only; 2604 and the
                              message form send none = clear everything */
    const void *data;      /* COMMIT_STORE: b"" for shared-memory workers */
    size_t data_len;
    struct lmcd_ed_payload ed; /* REGISTER_ED */
    const char *model_name;    /* REPORT_BLOCK_ALLOCATION */
    const struct lmcd_block_record *records; /* REPORT_BLOCK_ALLOCATION */
    size_t n_records;
    const struct iovec *chunks; /* STORE_INLINE: chunk i of [start, end) */
    size_t n_chunks;
};

/* Slot descriptor (spec 7.3): where a chunk lives in the server's L1
 * shared-memory segment (see lmcd_reply.shm_name). */
struct lmcd_slot {
    uint64_t offset; /* bytes from the start of the segment */
    uint64_t length; /* = prod(shape) x itemsize(dtype) */
    uint32_t ndim;
    int64_t shape[LMCD_SLOT_MAX_DIMS];
    char dtype[LMCD_DTYPE_MAX]; /* NUL-terminated; cut if the server sent longer */
};

/* A decoded reply. Which fields hold data depends on op (listed per field);
 * the rest are zero. Owned by the caller: lmcd_reply_free(). */
struct lmcd_reply {
    enum lmcd_op op;
    bool is_nil;     /* QUERY/WAIT_PREFETCH_STATUS, LOOKUP_HITS: nil ("not yet") */
    int64_t value;   /* GET_CHUNK_SIZE; the prefetch counts; *_INLINE: chunk count */
    bool ok;         /* PING, COMMIT_STORE, COMMIT_RETRIEVE */
    char *message;   /* NOOP */
    char **names;    /* GET_EXPERIMENTAL */
    size_t n_names;
    char *shm_name;  /* REGISTER_ED: the segment to map ("" = pickle mode) */
    uint64_t pool_size; /* REGISTER_ED: segment size, bytes */
    char *error;     /* REGISTER_ED: why the server refused (NULL = accepted) */
    bool success;    /* PREPARE_RETRIEVE */
    struct lmcd_slot *slots; /* PREPARE_STORE, PREPARE_RETRIEVE */
    size_t n_slots;
    int64_t *chunk_indices;  /* PREPARE_STORE: chunk of slots[i], from start */
    struct iovec *chunks;    /* RETRIEVE_INLINE: n_chunks chunk buffers, in order */
    size_t n_chunks;
    void *priv_;             /* private: what lmcd_reply_free() releases */
};
/* Releases what the reply owns and zeroes it. NULL-safe, idempotent. */
void lmcd_reply_free(struct lmcd_reply *r);

/* ---- asynchronous API ------------------------------------------------------ */

/* Encodes and sends a request; *uid identifies its reply. Never blocks.
 * 0, -ENOTSUP, -EINVAL (a field the op needs is missing), -ENOBUFS, -ENOMEM. */
int lmcd_submit(struct lmcd_client *c, const struct lmcd_request *req, uint64_t *uid);
/* Reads whatever replies have arrived, without blocking. If uid's reply is
 * among them: 0 with *out filled, or its decode error (-EPROTO); either way
 * uid is no longer pending. -EAGAIN when it has not arrived yet, -ENOENT for
 * a uid that is not pending. */
int lmcd_poll(struct lmcd_client *c, uint64_t uid, struct lmcd_reply *out);
/* As lmcd_poll(), but blocks up to timeout_ms (< 0: forever) for the reply.
 * -ETIMEDOUT leaves uid pending: wait again or lmcd_cancel() it. */
int lmcd_wait(struct lmcd_client *c, uint64_t uid, int timeout_ms, struct lmcd_reply *out);
/* Forgets a pending request; its reply is dropped when it arrives.
 * 0 or -ENOENT. */
int lmcd_cancel(struct lmcd_client *c, uint64_t uid);

/* ---- synchronous API --------------------------------------------------------
 * Each call submits one request and waits up to the client's timeout.
 * Output pointers may be NULL when the value is not wanted. */

int lmcd_get_chunk_size(struct lmcd_client *c, int64_t *chunk_size);
/* Copies the reply ("OK") into msg, NUL-terminated, cut to cap bytes. */
int lmcd_noop(struct lmcd_client *c, char *msg, size_t cap);
/* instance_id: the worker's id, or LMCD_NO_INSTANCE (nil; 2604 sends no frame). */
int lmcd_ping(struct lmcd_client *c, int64_t instance_id, bool *ok);
/* 2609. reply->names / n_names. */
int lmcd_get_experimental(struct lmcd_client *c, struct lmcd_reply *reply);
/* Starts the server's prefix lookup job for key->request_id (key with
 * has_worker_id false); the result is fetched with the prefetch queries. */
int lmcd_lookup(struct lmcd_client *c, const struct lmcd_key *key, int64_t tp_size);
/* The lookup job's result in chunks: 0 with *chunks, or -EAGAIN while the
 * job runs (nil). The server delivers a finished result once. */
int lmcd_query_prefetch_status(struct lmcd_client *c, const char *request_id, int64_t *chunks);
/* 2609: the server waits up to server_timeout_s for the job; this call's
 * own deadline is the client timeout plus server_timeout_s. -EAGAIN = nil. */
int lmcd_wait_prefetch_status(struct lmcd_client *c, const char *request_id,
                              double server_timeout_s, int64_t *chunks);
/* Hits found by the lookup phase, without consuming the job. -EAGAIN = nil. */
int lmcd_query_prefetch_lookup_hits(struct lmcd_client *c, const char *request_id,
                                    int64_t *chunks);
int lmcd_free_lookup_locks(struct lmcd_client *c, const struct lmcd_key *key, int64_t tp_size);
int lmcd_end_session(struct lmcd_client *c, const char *request_id);
/* force: also drop locked and in-flight objects. Only the 2609 positional
 * form carries the flag; 2604 and the message form send no flag, which
 * servers treat as a full (forced) clear. */
int lmcd_clear(struct lmcd_client *c, bool force);
/* The 3-frame form (instance_id, model_name, records). */
int lmcd_report_block_allocation(struct lmcd_client *c, int64_t instance_id, const char *model_name,
                                 const struct lmcd_block_record *records, size_t n_records);
/* 2609. reply->shm_name, pool_size, error (non-NULL: refused). */
int lmcd_register_ed(struct lmcd_client *c, const struct lmcd_ed_payload *payload,
                     struct lmcd_reply *reply);
int lmcd_unregister_ed(struct lmcd_client *c, int64_t instance_id);
/* 2609. reply->slots[i] is reserved for chunk reply->chunk_indices[i];
 * n_slots == 0 means nothing to write (all cached or no room). */
int lmcd_prepare_store(struct lmcd_client *c, const struct lmcd_key *key, int64_t instance_id,
                       struct lmcd_reply *reply);
/* 2609. Publishes what prepare_store reserved; *ok = false if nothing was. */
int lmcd_commit_store(struct lmcd_client *c, const struct lmcd_key *key, int64_t instance_id,
                      bool *ok);
/* 2609. reply->success and, on success, one slot per chunk in order. */
int lmcd_prepare_retrieve(struct lmcd_client *c, const struct lmcd_key *key, int64_t instance_id,
                          struct lmcd_reply *reply);
/* 2609. Releases the read locks of the retrieve (call it after every
 * prepare_retrieve, successful or not). */
int lmcd_commit_retrieve(struct lmcd_client *c, const struct lmcd_key *key, int64_t instance_id,
                         bool *ok);
/* lmcd only (2609 profile): sends chunk i of [key->start, key->end) as
 * chunks[i] (copied); *present = chunks cached afterwards, from start. */
int lmcd_store_inline(struct lmcd_client *c, const struct lmcd_key *key, const struct iovec *chunks,
                      size_t n_chunks, int64_t *present);
/* lmcd only (2609 profile): the cached prefix of [start, end) for the key's
 * shard: reply->chunks[0 .. n_chunks). */
int lmcd_retrieve_inline(struct lmcd_client *c, const struct lmcd_key *key,
                         struct lmcd_reply *reply);

#ifdef __cplusplus
}
#endif

#endif
