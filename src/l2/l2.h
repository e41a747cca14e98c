/*
 * l2: the second cache tier behind L1. One contract (struct l2_ops), one
 * backend per file filling it (l2_mock.c, l2_fs.c, l2_resp.c, l2_valkey.c),
 * registered by name, and a base object (struct l2_adapter) that every
 * backend embeds, which keeps the bookkeeping common to all of them: usage
 * per cache_salt, key listeners (the L2 eviction policy), and the counters
 * behind /status and /metrics. LMCache's base.py@000e8777 is the model.
 *
 *   controllers (l2_ctl.c)                     backends (one thread pool each)
 *   store / prefetch / eviction                 fs: pread/pwrite, rename
 *        |   l2_submit_store(a, keys, bufs, cb) mock: memory, paced
 *        |   l2_submit_lookup(a, keys, cb)      resp/valkey: hiredis
 *        |   l2_submit_load(a, keys, bufs, cb)
 *        v                                       |
 *   l2.c: counts, latency, then a->ops->...  ---+   completion: cb->fn(cb->arg, result)
 *                                                   on the backend's thread
 *
 * Keys. An object is named by struct l2_key: model name, cache_salt
 * ("" = none), kv_rank, object group, 32-byte chunk hash. Its string forms
 * (LMCache's key string, used by resp/valkey, and the fs file name) are in
 * l2_key.h. Backends turn keys into their own names at submit time; a key's
 * strings are borrowed for the submit call only.
 *
 * Completion: callbacks. Every submit_* (n >= 1 keys; n == 0 is -EINVAL) that returns 0 calls cb->fn exactly
 * once, later, from one of the backend's own threads (never from inside the
 * submit call, never with a caller's lock held), with a struct l2_result
 * that lives for the call only. A submit that returns -errno never calls it.
 * The callback must not block for long (it runs on an I/O thread) and must
 * not call l2_adapter_destroy(); it may call submit/unlock on any adapter.
 * (LMCache uses three eventfds per adapter polled by its controllers; a
 * callback lets a C controller queue the result and wake its own eventfd,
 * with no per-adapter fd to dispatch on.)
 *
 * Buffers. submit_store reads objs[i] and submit_load writes bufs[i] until
 * the callback for that task has started; the caller keeps them valid and
 * unmoved until then (for L1 memory: a read lock, or an unpublished
 * reservation the controller aborts only after the callback). A backend
 * never touches a buffer after it calls the callback. Backends never keep
 * pointers into the caller's memory past the callback.
 *
 * Ops (what each backend provides; all but create/destroy may be called
 * from any thread at once, so backends are thread-safe):
 *   create   parses its JSON object (borrowed) and starts its threads.
 *   destroy  stops its threads; tasks still queued complete first with
 *            rc -ECANCELED (so callers learn their buffers are free), then
 *            everything is freed. Called once, after the controllers stop.
 *   submit_store   writes n objects. Per-task outcome (LMCache: failure is
 *            per task, not per key): rc 0 = every key stored (or already
 *            present), else -errno; ok[] may say which keys made it.
 *   submit_lookup  "lookup and lock": which keys exist now; found keys are
 *            locked against this adapter's own eviction until unlock (a
 *            backend that cannot lock, e.g. Redis, just answers existence).
 *            rc 0 with ok[i] = 1 for found keys; -errno = nothing found.
 *   unlock   drops one lock per key taken by submit_lookup; fire and
 *            forget, never fails, unknown keys ignored.
 *   submit_load    reads n objects into bufs[i] (exactly bufs[i].iov_len
 *            bytes each: an object of another size is a miss, never a
 *            partial copy). ok[i] = 1 where the buffer now holds exactly the
 *            bytes that were stored; a key with ok[i] = 0 may have had its
 *            buffer partly written.
 *   delete_keys    removes keys now (synchronous, may block on I/O: call it
 *            from a controller thread, never the ZeroMQ loop). Locked keys
 *            may be skipped. Returns the number removed or -errno.
 *   list_keys      one page of this adapter's keys of `model` (LMCache's
 *            list_l2_keys(model_name, page_size, cursor)); cursor NULL or ""
 *            = first page; page->next_cursor NULL = last page. -ENOTSUP if
 *            the backend cannot enumerate.
 *   replay   (optional) tells a new listener what the adapter already holds.
 *   status   backend-specific fields for /status (new reference; may be
 *            NULL). The base adds the common ones.
 * Submits do not block on I/O: they queue and return. A backend whose queue
 * is full answers -ENOBUFS (the caller drops a store or treats a lookup as a
 * miss); one that is disconnected may answer -ENOTCONN at once.
 *
 * Accounting. A backend reports what it holds through l2_note_stored /
 * l2_note_accessed / l2_note_deleted (from any thread); the base keeps bytes
 * and objects, total and per cache_salt, and forwards each event to the
 * registered listeners (the L2 eviction policy). Backends with a capacity
 * set a->capacity_bytes at create (0 = unbounded: never evicted by lmcd).
 *
 * Errors: 0 / -errno everywhere. What the ops leave out: serde wrappers,
 * per-L1 affinity, the `plugin` type, coordinator events.
 */
#ifndef LMCD_L2_L2_H
#define LMCD_L2_L2_H

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "l2/l2_key.h"

struct l2_adapter;

/* What a task's callback receives. Valid during the callback only. */
struct l2_result {
    uint64_t task;        /* the id submit returned */
    int rc;               /* 0, or -errno for the whole task (-ECANCELED at destroy) */
    size_t n;             /* keys in the task */
    const uint8_t *ok;    /* n flags (found / loaded / stored), or NULL = all as rc says */
    uint64_t bytes;       /* payload bytes moved (store, load) */
};

struct l2_cb {
    void (*fn)(void *arg, const struct l2_result *r);
    void *arg;
};

/* One page of list_keys. Filled by the backend, released with
 * l2_key_page_free(). keys[i] are LMCache key strings (l2_key_format). */
struct l2_key_page {
    char **keys;
    size_t n;
    char *next_cursor; /* NULL: no more pages */
};
void l2_key_page_free(struct l2_key_page *p);
/* For backends' list_keys: builds a page from n key strings (borrowed, any
 * order): those of `model`, in byte order, after `cursor`, at most
 * page_size; next_cursor is the last key returned when more follow. */
int l2_key_page_build(char *const *names, size_t n, const char *model, size_t page_size, const char *cursor,
                      struct l2_key_page *out);

struct l2_listener;

/* Given to create: where the adapter sits and how to name its threads. */
struct l2_create_ctx {
    size_t index;        /* position in --l2-adapter order (0 = first asked) */
    const char *name;    /* "<type><index>", e.g. "fs0": prefix for thread names (<= 15 chars total) */
};

struct l2_ops {
    const char *type; /* the JSON "type" it serves: "fs", "mock", ... */
    /* cfg is the adapter's whole JSON object (borrowed). On failure writes a
     * one-line reason into err (LMCache's wording where it has one). The
     * backend allocates its struct with struct l2_adapter as first member
     * and calls l2_adapter_base_init() on it. */
    int (*create)(const json_t *cfg, const struct l2_create_ctx *ctx, struct l2_adapter **out, char *err,
                  size_t errlen);
    void (*destroy)(struct l2_adapter *a);
    int (*submit_store)(struct l2_adapter *a, uint64_t task, const struct l2_key *keys, const struct iovec *objs,
                        size_t n, const struct l2_cb *cb);
    int (*submit_lookup)(struct l2_adapter *a, uint64_t task, const struct l2_key *keys, size_t n,
                         const struct l2_cb *cb);
    void (*unlock)(struct l2_adapter *a, const struct l2_key *keys, size_t n);
    int (*submit_load)(struct l2_adapter *a, uint64_t task, const struct l2_key *keys, const struct iovec *bufs,
                       size_t n, const struct l2_cb *cb);
    int (*delete_keys)(struct l2_adapter *a, const struct l2_key *keys, size_t n);
    int (*list_keys)(struct l2_adapter *a, const char *model, size_t page_size, const char *cursor,
                     struct l2_key_page *out);
    json_t *(*status)(struct l2_adapter *a);
    /* Optional: calls l->stored for every object the adapter holds now
     * (e.g. files recovered at start), so a listener attached after create
     * (the eviction policy) learns about them. Called by l2_add_listener. */
    void (*replay)(struct l2_adapter *a, const struct l2_listener *l);
};

/* Key events, from backends to listeners (the eviction policy). Sizes are
 * payload bytes. Called on backend threads with no backend lock held. */
struct l2_listener {
    void (*stored)(void *arg, struct l2_adapter *a, const struct l2_key *k, uint64_t size);
    void (*accessed)(void *arg, struct l2_adapter *a, const struct l2_key *k);
    void (*deleted)(void *arg, struct l2_adapter *a, const struct l2_key *k, uint64_t size);
    void *arg;
};

/* Counters the base keeps per adapter (relaxed atomics). */
struct l2_counters {
    atomic_uint_fast64_t store_tasks, store_failed, store_keys, store_bytes;
    atomic_uint_fast64_t lookup_keys, lookup_hits, lookup_misses, lookup_failed;
    atomic_uint_fast64_t load_keys, load_ok, load_failed, load_bytes;
    atomic_uint_fast64_t errors;          /* tasks that ended rc < 0 (any op) */
    atomic_uint_fast64_t deleted_keys;
    atomic_uint_fast64_t store_ns, lookup_ns, load_ns; /* summed task latency */
    atomic_uint_fast64_t store_done, lookup_done, load_done; /* tasks completed */
};

struct l2_salt_usage; /* private to l2.c */

/* The base every backend embeds first. Fields are set by
 * l2_adapter_base_init / l2_adapter_create and read-only afterwards, except
 * those marked. */
struct l2_adapter {
    const struct l2_ops *ops;
    char name[16];             /* "fs0" */
    size_t index;
    uint64_t capacity_bytes;   /* 0 = unbounded (set by the backend at create) */
    json_t *eviction;          /* the "eviction" object (new ref) or NULL */
    struct l2_counters c;
    /* guarded by mu: */
    pthread_mutex_t mu;
    uint64_t used_bytes, objects;
    struct l2_salt_usage *salts;
    struct l2_listener *listeners;
    size_t n_listeners;
    atomic_uint_fast64_t next_task; /* task ids (atomic) */
};

struct l2_usage {
    uint64_t total_bytes_used;
    uint64_t total_capacity_bytes; /* 0 = unknown */
    uint64_t objects;
    json_t *bytes_by_cache_salt;   /* {"salt": bytes}, "" for unsalted; new ref, or NULL if not asked */
};

/* ---- registry and life cycle ---- */

/* The built-in backends, by type name. The Redis adapters add theirs here
 * (one X line each); each X(name) declares `extern const struct l2_ops
 * l2_<name>_ops`. */
#define L2_BACKENDS(X) X(mock) X(fs) X(resp) X(valkey)
#define L2_DECLARE_OPS(n) extern const struct l2_ops l2_##n##_ops;
L2_BACKENDS(L2_DECLARE_OPS)
#undef L2_DECLARE_OPS

/* The ops serving `type`, or NULL. */
const struct l2_ops *l2_ops_find(const char *type);
/* The registered type names, comma-separated, into buf ("mock, fs"). */
void l2_ops_names(char *buf, size_t cap);
/* Adds ops for a type at run time (tests); -EEXIST if the type is taken,
 * -ENOSPC past 16. Not thread-safe: call before any adapter is created. */
int l2_ops_register(const struct l2_ops *ops);

/* Creates an adapter from one --l2-adapter JSON object: finds its type,
 * validates the common "eviction" object ({"eviction_policy": "LRU"|"noop",
 * "trigger_watermark": 0.8, "eviction_ratio": 0.2}), calls ops->create.
 * err gets a one-line reason on failure (-EINVAL bad config, -errno else). */
int l2_adapter_create(const json_t *cfg, size_t index, struct l2_adapter **out, char *err, size_t errlen);
/* ops->destroy after releasing the base. NULL-safe. */
void l2_adapter_destroy(struct l2_adapter *a);
/* For backends' create: fills the base (ops, name, index, locks). */
void l2_adapter_base_init(struct l2_adapter *a, const struct l2_ops *ops, const struct l2_create_ctx *ctx);
/* For backends' destroy (or a failed create): frees what the base holds. */
void l2_adapter_base_fini(struct l2_adapter *a);

/* ---- what controllers call (any thread) ----
 * These wrap the ops: they give the task an id (*task, may be NULL), time
 * it and count it, then call the caller's cb. Same returns as the ops. */
int l2_submit_store(struct l2_adapter *a, const struct l2_key *keys, const struct iovec *objs, size_t n,
                    const struct l2_cb *cb, uint64_t *task);
int l2_submit_lookup(struct l2_adapter *a, const struct l2_key *keys, size_t n, const struct l2_cb *cb,
                     uint64_t *task);
int l2_submit_load(struct l2_adapter *a, const struct l2_key *keys, const struct iovec *bufs, size_t n,
                   const struct l2_cb *cb, uint64_t *task);
void l2_unlock(struct l2_adapter *a, const struct l2_key *keys, size_t n);
int l2_delete(struct l2_adapter *a, const struct l2_key *keys, size_t n);
int l2_list_keys(struct l2_adapter *a, const char *model, size_t page_size, const char *cursor,
                 struct l2_key_page *out);
/* Usage now; with_salts also fills bytes_by_cache_salt. */
void l2_get_usage(struct l2_adapter *a, bool with_salts, struct l2_usage *out);
/* used / capacity, or -1.0 when the capacity is 0 (LMCache's usage_fraction). */
double l2_usage_fraction(struct l2_adapter *a);
/* {"type","name","is_healthy",..., counters, usage, backend fields}; new ref. */
json_t *l2_status_json(struct l2_adapter *a);

/* Listener registration (before traffic starts; not thread-safe with notes). */
int l2_add_listener(struct l2_adapter *a, const struct l2_listener *l);

/* ---- what backends call ---- */
void l2_note_stored(struct l2_adapter *a, const struct l2_key *k, uint64_t size);
void l2_note_accessed(struct l2_adapter *a, const struct l2_key *k);
void l2_note_deleted(struct l2_adapter *a, const struct l2_key *k, uint64_t size);

#endif
