/*
 * engine: the cache behind the protocol, one function per canonical request.
 *
 * The server decodes a request (src/wire), converts it to the plain structs
 * below and calls one engine_* function; the engine never sees a profile or
 * a msgpack byte, and wire never sees the engine (style.md section 2).
 *
 * What it does: hashes token ids into chunk keys (BLAKE3 rolling hash, or
 * xxh3_128), keeps per-request sessions (token list, cached hashes, lookup
 * key, lookup job, the locks that request took), runs lookup jobs keyed by
 * request id, and moves chunk objects in and out of L1 (src/l1) for the
 * engine-driven shared-memory path and the inline path.
 *
 * Ownership:
 *   - Every pointer in an input struct is borrowed for the call only; the
 *     engine copies what it keeps (token ids into the session, ids, names).
 *   - Output structs (engine_slots, engine_inline_read, engine_ed_reply) are
 *     filled by the engine and released by the caller with their *_free().
 *   - Slot offsets are offsets into the L1 shared-memory segment the
 *     engine-driven workers map; the bytes behind a slot belong to the
 *     worker between PREPARE_* and COMMIT_*.
 *
 * Threads: every function may be called from any thread concurrently (the
 * server calls from its pools; engine-internal state is locked inside).
 * The engine owns two threads of its own: L1's eviction controller and a
 * sweeper for session TTLs, lock expiry and silent-worker reaping: once a
 * second, one linear pass over the sessions and one over the instances
 * (transfer and reservation records older than the L1 TTLs pruned, silent
 * workers reaped, registrations silent past worker_expire_s forgotten, the
 * GPU copies' held reservations renewed); after a reap it calls the
 * server's on_reap hook outside every engine lock.
 *
 * Bounds: sessions are capped in count and in token bytes (max_sessions,
 * max_session_bytes); what they refuse is counted in the status counters.
 * Lookups, END_SESSION and FREE_LOOKUP_LOCKS expand object keys a batch at
 * a time, so no request's memory scales with world_size.
 *
 * Errors: 0 or -errno. What the protocol turns a failure into (a miss, an
 * empty slot list, false) is the server's business (spec 9.3); the engine
 * says precisely what happened.
 */
#ifndef LMCD_ENGINE_ENGINE_H
#define LMCD_ENGINE_ENGINE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "util/clock.h"

struct engine;

struct engine_opts {
    /* keying */
    int chunk_size;             /* tokens per chunk (256) */
    const char *hash_algorithm; /* "blake3" | "xxh3_128" */
    /* L1 */
    uint64_t l1_size_bytes;
    uint64_t l1_align_bytes;
    uint64_t l1_max_objects; /* object table entries; 0 = L1's default (size / 64 KiB) */
    bool l1_use_lazy;
    uint64_t l1_init_bytes; /* lazy: committed at start (--l1-init-size-gb); 0 = none */
    const char *shm_name;  /* "" = lmcache_l1_pool_<pid> */
    const char *shm_group; /* "" = none (segment mode 0600) */
    int l1_read_ttl_s;
    int l1_write_ttl_s;
    const char *eviction_policy; /* "LRU" | "noop" */
    double eviction_trigger_watermark;
    double eviction_ratio;
    /* sessions and workers */
    int session_ttl_s;           /* 600, as LMCache */
    /* lmcd.retrieve_inline pins the chunks it hands to ZeroMQ (no TTL: a
     * slow reader never gets recycled memory); at most this fraction of the
     * L1 data area is pinned at once, the rest of a reply is cut off (0 = 0.5). */
    double inline_max_pinned_ratio;
    int worker_reap_timeout_s;   /* 120; 0 disables */
    /* Bounds (0 = the default). A LOOKUP that would pass a session cap is
     * refused (-ENOSPC, a miss on the wire); worker requests past them hash
     * their tokens without keeping a session. */
    size_t max_sessions;         /* 131072 */
    uint64_t max_session_bytes;  /* token lists + hashes of all sessions: 1 GiB */
    int worker_expire_s;         /* forget a registration silent this long; 0 = the default (86400), <0 never */
    /* Called (from any engine thread) when a lookup job completes, so the
     * server can answer parked WAIT_PREFETCH_STATUS requests. May be NULL. */
    void (*on_job_done)(void *ctx, const char *request_id, size_t len);
    void *on_job_done_ctx;
    const struct clock_src *clock; /* NULL = monotonic */
    /* Called by the sweeper thread, outside every engine lock, after it
     * reaped a silent worker (reservations and locks released, registration
     * kept) or forgot a silent registration: the GPU path closes that
     * worker's GPU registration (src/server/gpu.c). May be NULL; may take
     * the caller's own locks, but must not wait on the GPU. */
    void (*on_reap)(void *ctx, int64_t instance_id);
    void *on_reap_ctx;
    /* L2 tier (src/l2): --l2-adapter objects (borrowed for create; NULL or
     * empty = none), --l2-store-policy, --l2-prefetch-max-in-flight, and the
     * prefetch load deadline (ms; 0 = l2_tier's default). */
    const json_t *l2_adapters;
    const char *l2_store_policy;
    int l2_prefetch_max_in_flight;
    uint32_t l2_load_timeout_ms;
};

/* Creates L1 (the shared segment), the hasher and the engine threads, and
 * logs the LMCache start-up lines that belong to them. */
int engine_create(const struct engine_opts *o, struct engine **out);
/* Stops the threads, releases every lock and reservation, unmaps and
 * unlinks the segment. NULL-safe. */
void engine_destroy(struct engine *e);

/* A request's cache key (spec mp_protocol.md 5.1), borrowed. */
struct engine_key {
    const char *model_name;
    size_t model_name_len;
    int64_t world_size;
    bool has_worker_id; /* false = scheduler (all shards) */
    int64_t worker_id;
    const uint32_t *token_ids;
    size_t n_tokens;
    int64_t start;
    int64_t end;
    const char *request_id;
    size_t request_id_len;
    const char *cache_salt;
    size_t cache_salt_len;
    int64_t num_kv_readers; /* 0 = derive from tp_size (spec 6.2) */
};

int engine_chunk_size(const struct engine *e);
/* The L1 segment's name, without a leading slash (valid until destroy). */
const char *engine_shm_name(const struct engine *e);
/* The L1 segment in this process: base address and size (the GPU path
 * pins it and copies chunk objects at slot offsets from it). */
void *engine_l1_base(const struct engine *e, uint64_t *size);
/* Whether the segment's pages in [off, off+len) are known committed (a lazy
 * L1 commits them per object and ahead; pre-faulted: always). Lock-free. */
bool engine_l1_backed(const struct engine *e, uint64_t off, uint64_t len);
/* L1's segment generation: bumped when another process truncated the
 * segment and it was restored in place (new pages). Lock-free. */
uint64_t engine_l1_generation(const struct engine *e);

/* LOOKUP: starts (or replaces) the lookup job of key->request_id. -ENOSPC
 * when the session caps refuse it (its job then reads as 0 hits or unknown).
 * Memory does not grow with world_size: keys are expanded a batch of chunks
 * at a time and the walk stops at the first chunk missing a shard. */
int engine_lookup(struct engine *e, const struct engine_key *key, int64_t tp_size);
/* QUERY_PREFETCH_STATUS: the job's prefix chunk count and removes the job
 * (exactly once). -EAGAIN while it runs; an unknown id gives 0. */
int engine_query_prefetch_status(struct engine *e, const char *request_id, size_t len, int64_t *chunks);
/* WAIT_PREFETCH_STATUS's probe, for the loop thread: as QUERY, but never
 * waits: -EAGAIN also while another thread works on the session (a LOOKUP
 * still hashing); the loop parks the WAIT and retries on on_job_done. */
int engine_poll_prefetch_status(struct engine *e, const char *request_id, size_t len, int64_t *chunks);
/* QUERY_PREFETCH_STATUS answered by the loop thread when that needs no wait:
 * as QUERY, but -EAGAIN (nothing consumed) while a LOOKUP holds the session,
 * while its job runs on, and for an id with no session (perhaps its LOOKUP
 * is still queued behind the same client's requests: the pool keeps their
 * order). */
int engine_try_prefetch_status(struct engine *e, const char *request_id, size_t len, int64_t *chunks);
/* QUERY_PREFETCH_LOOKUP_HITS: hits known after the lookup phase; keeps the
 * job. -EAGAIN while that phase runs; unknown id gives 0. */
int engine_query_lookup_hits(struct engine *e, const char *request_id, size_t len, int64_t *chunks);
/* FREE_LOOKUP_LOCKS: releases, for the chunks of [start,end), only the
 * locks this request's LOOKUP took. */
int engine_free_lookup_locks(struct engine *e, const struct engine_key *key, int64_t tp_size);
/* END_SESSION: touches the session's objects once (LRU) and drops it. */
int engine_end_session(struct engine *e, const char *request_id, size_t len);
/* CLEAR: force drops everything, locked or mid-write; otherwise only
 * objects that are neither locked nor being written. Jobs are dropped. */
int engine_clear(struct engine *e, bool force);
/* PING from a worker (has_instance) refreshes its liveness. */
void engine_ping(struct engine *e, bool has_instance, int64_t instance_id);
/* The same for the loop thread: never waits for a worker's lock; -EAGAIN
 * (nothing done) while another thread holds it, so the caller hands the
 * PING to a pool thread instead. 0 when done. */
int engine_ping_try(struct engine *e, bool has_instance, int64_t instance_id);

/* REGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT (spec 7.1). */
struct engine_ed_register {
    int64_t instance_id;
    const char *model_name;
    size_t model_name_len;
    int64_t world_size;
    int64_t block_size;
    int64_t num_layers;
    int64_t hidden_dim_size;
    const char *dtype;
    size_t dtype_len;
    bool use_mla;
    bool has_num_physical_slots;
    int64_t num_physical_slots;
    bool multi_group;
};
struct engine_ed_reply {
    char *shm_name;  /* malloc'd; never empty on success */
    uint64_t pool_size;
    char *error;     /* malloc'd reason the registration was refused, or NULL */
};
int engine_register_ed(struct engine *e, const struct engine_ed_register *r, struct engine_ed_reply *out);
void engine_ed_reply_free(struct engine_ed_reply *r);
/* UNREGISTER_* (both paths): forgets the instance, drops its unpublished
 * reservations and releases its read locks. Unknown ids are fine. */
int engine_unregister(struct engine *e, int64_t instance_id);

/* Slot descriptors (spec 7.3): offset/length into the segment, shape, dtype. */
#define ENGINE_SLOT_MAX_DIMS 4
struct engine_slot {
    uint64_t offset;
    uint64_t length;
    uint32_t ndim;
    int64_t shape[ENGINE_SLOT_MAX_DIMS];
    const char *dtype; /* static string owned by the engine */
};
struct engine_slots {
    struct engine_slot *slots;
    int64_t *chunk_indices; /* PREPARE_STORE only */
    size_t n;
};
void engine_slots_free(struct engine_slots *s);

/* PREPARE_STORE: reserves L1 objects for this worker's not-yet-cached
 * chunks of [start,end). n == 0 means "all cached / nothing to write".
 * -ENOENT for an unregistered instance (the server answers n == 0 too). */
int engine_prepare_store(struct engine *e, const struct engine_key *key, int64_t instance_id,
                         struct engine_slots *out);
/* COMMIT_STORE: publishes the reservations PREPARE_STORE made for this
 * (instance, key). data_len > 0 (pickle mode) drops them instead.
 * 0 = published; -ENOENT = nothing pending; -ENOTSUP = pickle data. */
int engine_commit_store(struct engine *e, const struct engine_key *key, int64_t instance_id, size_t data_len);
/* PREPARE_RETRIEVE: every chunk of [start,end) for this shard present ->
 * read-locked for the transfer, slots in chunk order; else -ENOENT and
 * nothing stays locked. */
int engine_prepare_retrieve(struct engine *e, const struct engine_key *key, int64_t instance_id,
                            struct engine_slots *out);
/* COMMIT_RETRIEVE: releases the transfer's locks and the LOOKUP locks they
 * stand for. Always 0 (true on the wire), even when nothing was pending. */
int engine_commit_retrieve(struct engine *e, const struct engine_key *key, int64_t instance_id);
/* The same four for a thread that must not wait (the server's loop, which
 * runs a worker's op itself when nothing of that worker's is queued, to save
 * two thread hand-offs per round trip): each returns -EWOULDBLOCK, having
 * changed nothing, where the op would wait for a session a LOOKUP is
 * hashing, for the worker's instance another thread holds (a PREPARE_STORE
 * of the same instance id backing fresh pages in the pool holds it for
 * milliseconds), or (PREPARE_STORE) commit tmpfs pages not backed yet; the
 * caller then runs the plain form where waiting is fine. The locks they
 * still take (engine.mu, l1.mu) are held only briefly by anyone. */
int engine_prepare_store_nowait(struct engine *e, const struct engine_key *key, int64_t instance_id,
                                struct engine_slots *out);
int engine_commit_store_nowait(struct engine *e, const struct engine_key *key, int64_t instance_id, size_t data_len);
int engine_prepare_retrieve_nowait(struct engine *e, const struct engine_key *key, int64_t instance_id,
                                   struct engine_slots *out);
int engine_commit_retrieve_nowait(struct engine *e, const struct engine_key *key, int64_t instance_id);

/*
 * The GPU path's quarantine (src/server/gpu.c). A GPU copy may still write
 * into a STORE's reservations, or read a RETRIEVE's locked objects, after
 * its worker was unregistered or reaped: a stream wait on the worker's
 * event cannot be cancelled. A hold takes those out of the instance right
 * after engine_prepare_store / engine_prepare_retrieve for the same key:
 * from then on UNREGISTER, reaping and the sweeper's pruning leave them
 * alone, and L1's TTLs are held off (the sweeper renews held reservations;
 * held objects are pinned), so that memory is neither published nor given
 * to anyone else until engine_hold_end, called once the copy completed or
 * failed. -ENOENT: k's reservations or locks are not all there any more
 * (nothing is held; the caller must not copy). GET /status counts holds.
 */
struct engine_hold;
int engine_hold_store(struct engine *e, const struct engine_key *k, int64_t instance_id, size_t n_reserved,
                      struct engine_hold **out);
int engine_hold_retrieve(struct engine *e, const struct engine_key *k, int64_t instance_id,
                         struct engine_hold **out);
/* STORE: ok publishes (as COMMIT_STORE), else drops. RETRIEVE: releases the
 * locks and pins, and one LOOKUP lock per object of k's request (as
 * COMMIT_RETRIEVE). k: the key given to the take. Frees h. Any thread. */
void engine_hold_end(struct engine *e, struct engine_hold *h, const struct engine_key *k, bool ok);

/* lmcd.store_inline: chunk i of [start,end) is chunks[i]; each is copied
 * once into a new L1 object and published. *present = chunks now cached
 * (written or already there), counted from start. */
int engine_store_inline(struct engine *e, const struct engine_key *key, const struct iovec *chunks, size_t n,
                        int64_t *present);

/* lmcd.retrieve_inline: the contiguous present prefix of [start,end) for
 * this shard, pinned in L1 (l1_pin_prefix: no TTL, so their place is not
 * reused however long ZeroMQ holds the frames), then copied out and checked
 * against a segment loss after the copy (a loss makes it a miss). The prefix
 * also stops where the pin budget (inline_max_pinned_ratio) runs out. The
 * iovecs point into that private copy and stay valid until
 * engine_inline_release(); the server hands them to ZeroMQ zero-copy and
 * releases (unpins, frees) from the frames' free callback (any thread). */
struct engine_inline_read {
    struct iovec *chunks;
    size_t n;
    void *handle_; /* private: what release frees */
};
int engine_retrieve_inline(struct engine *e, const struct engine_key *key, struct engine_inline_read *out);
void engine_inline_release(struct engine *e, struct engine_inline_read *r);

/* GET /l2/keys and `lmcd-cli l2 keys`: one page of the keys adapter
 * `adapter` holds for `model` ({"keys":[...], "next_page_token": str|null,
 * "adapter": name}). -ENOENT (no such adapter), -ENOTSUP (cannot list). */
int engine_l2_keys(struct engine *e, size_t adapter, const char *model, size_t page_size, const char *cursor,
                   json_t **out);
/* DELETE /cache/objects: removes objects named by LMCache key strings
 * ("<model>@<rank %08x>@<group %x>@<hash>[@salt]") from tier "l1", "l2" or
 * "all". force: L1 objects are removed even when locked (freed when their
 * holders finish). *l1_removed / *l2_removed count what went. -EINVAL for
 * a bad tier; unparsable keys are counted in *invalid. */
int engine_delete_objects(struct engine *e, const char *const *keys, size_t n, const char *tier, bool force,
                          size_t *l1_removed, size_t *l2_removed, size_t *invalid);

/* Counts REPORT_BLOCK_ALLOCATION records (observability only). */
void engine_report_block_allocation(struct engine *e, size_t n_records);

/* GET /status "engine" part: chunk_size, hash_algorithm, active_sessions,
 * active_prefetch_jobs, registered instances, storage_manager.l1_manager
 * (mp_server.md 3.2 fields) and the eviction controller. New reference. */
json_t *engine_status_json(struct engine *e);

#endif
