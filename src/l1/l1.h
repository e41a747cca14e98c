/*
 * l1: the host-memory tier. One POSIX shared-memory segment holds every
 * cached chunk object; the engine reserves, publishes, read-locks and reads
 * objects through this API, and workers of the engine-driven path read and
 * write the same bytes in place at `offset` inside the segment.
 *
 * What it does
 *   - owns the segment (create, stale-segment removal, unlink at destroy),
 *   - allocates objects of mixed sizes from the segment's data area with a
 *     coalescing free-extent allocator (l1_alloc.h),
 *   - indexes objects by struct l1_key and keeps their state:
 *       absent -> RESERVED (owned by a writer, invisible) -> READY (visible)
 *     with counted TTL read locks on READY objects,
 *   - evicts unlocked READY objects in LRU order: on demand when a
 *     reservation does not fit, and from a background thread above the
 *     watermark (l1_evict.c).
 *
 * What it leaves out: hashing, sessions, ZeroMQ, L2, payload copies (the
 * caller copies; L1 never memcpy's payloads), warm restart (the segment
 * layout allows it; see docs/l1.md), temporary objects (always 0).
 *
 * Ownership
 *   - struct l1 is created by l1_create() and owned by the caller until
 *     l1_destroy(); destroy must not race any other call on it.
 *   - The segment bytes belong to L1. The caller may read an object's bytes
 *     while it holds a read lock on it, and write a reservation's bytes until
 *     it publishes or aborts it. Offsets are relative to l1_base().
 *   - All arrays passed in are borrowed for the call only; output arrays are
 *     caller-allocated with room for n entries.
 *
 * Threads: every function except l1_create()/l1_destroy() may be called from
 * any thread at once. Lock order (outer first):
 *     1. l1.evict_mu   (eviction thread stop flag; never held with 2)
 *     2. l1.mu         (index, allocator, LRU/lock/reservation lists, object
 *                       table in the segment, counters)
 *     3. log internals (log lines may be written with l1.mu held only on
 *                       rare paths: a full object table, a failed alloc)
 * No callback runs with l1.mu held; no payload byte is touched under it.
 *
 * Identity: every object gets a 64-bit id, unique for the life of the L1.
 * publish/abort take the id returned by reserve_write, and unlock may take
 * the ids returned by lock/lock_prefix, so a late call can never act on a
 * newer object that reuses the key (after expiry, eviction or clear).
 *
 * Errors are 0 / -errno; per-key outcomes are enum l1_status values.
 */
#ifndef LMCD_L1_L1_H
#define LMCD_L1_L1_H

#include <assert.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/clock.h"

/* An object key. `ns` is an opaque namespace id the engine derives from
 * (model_name, cache_salt); kv_rank is LMCache's packed rank; group is the
 * object group id (0 for single-group models). Compared bytewise. */
struct l1_key {
    uint8_t chunk_hash[32];
    uint64_t ns;
    uint32_t kv_rank;
    uint32_t group;
};
static_assert(sizeof(struct l1_key) == 48, "l1_key must have no padding");

enum l1_policy {
    L1_POLICY_LRU = 0,
    L1_POLICY_NOOP = 1, /* no background and no demand eviction */
};

struct l1_opts {
    uint64_t size_bytes;     /* segment size (header + table + data) */
    uint64_t align_bytes;    /* power of two; default 4096 */
    const char *shm_name;    /* without leading '/'; NULL or "" = lmcache_l1_pool_<pid> */
    const char *shm_group;   /* NULL = mode 0600; else 0660 and this group */
    bool use_lazy;           /* true: pages committed on first touch */
    uint32_t read_ttl_s;     /* default 300 */
    uint32_t write_ttl_s;    /* default 600 */
    enum l1_policy policy;   /* default LRU */
    double trigger_watermark;/* default 0.8 */
    double eviction_ratio;   /* default 0.2 */
    uint32_t chunk_size;     /* recorded in the segment header (default 256) */
    const char *hash_name;   /* recorded in the segment header (default "blake3") */
    uint64_t max_objects;    /* object table entries; 0 = size_bytes / 64 KiB, at least 256 */
    uint64_t init_bytes;     /* lazy: the eviction thread commits the first init_bytes
                                (LMCache's init size, rounded up to 64 MiB) in the
                                background once started; 0 = none */
    const struct clock_src *clock; /* NULL = clock_monotonic; must outlive the l1 */
};

/* Fills the defaults above (size_bytes 0: the caller must set it). */
void l1_opts_init(struct l1_opts *o);

struct l1;

/* Creates the segment and the index. The eviction thread is not started
 * (see l1_evict_start). 0, or -EINVAL (bad option), -ENOENT (unknown
 * shm_group), -EBUSY (shm_name held by a live lmcd, or not an lmcd
 * segment), -ENOSPC (/dev/shm has no room for the header and object
 * table), -errno from the system. */
int l1_create(const struct l1_opts *o, struct l1 **out);
/* Stops the eviction thread, unmaps and unlinks the segment. NULL is a no-op. */
void l1_destroy(struct l1 *l1);

/* The segment: base address, size in bytes (pool_size for workers) and name
 * (without leading '/'). Constant for the life of the l1 (a truncated
 * segment is restored at the same address, under the same name). */
void *l1_base(const struct l1 *l1);
uint64_t l1_pool_size(const struct l1 *l1);
const char *l1_shm_name(const struct l1 *l1);

/* Per-key outcome of a batch call. */
enum l1_status {
    L1_OK = 0,       /* reserved / published / found */
    L1_EXISTS = 1,   /* reserve: key already READY, skip it */
    L1_BUSY = 2,     /* reserve: a live reservation holds the key, skip it */
    L1_NOMEM = 3,    /* reserve: no room even after demand eviction, or table full */
    L1_INVALID = 4,  /* reserve: size 0 or larger than the data area */
    L1_NOTFOUND = 5, /* publish/abort: no such live reservation for this writer and id */
    L1_EXPIRED = 6,  /* publish: the reservation outlived write_ttl and was freed */
};
const char *l1_status_name(enum l1_status s);

/* Where an object lives. `length` is the exact payload length; the
 * allocation behind it is `length` rounded up to align_bytes. */
struct l1_ref {
    uint64_t id;
    uint64_t offset; /* from l1_base() */
    uint64_t length;
    uint64_t lock_epoch; /* lock calls: which run of holders this lock joined
                            (unique for the life of the L1); 0 when the object
                            has no holders */
    uint32_t slot;       /* L1's own (its table slot + 1): lets l1_unpin and
                            l1_unlock_refs find the object without reading its
                            key from the segment; 0 in a ref the caller built */
    uint32_t reserved_;
};

/* Reserves n objects of sizes[i] bytes for `writer` (the worker instance id).
 * A reservation is invisible to lookups and readers until published and
 * expires write_ttl_s after it was made. When space is short, unlocked READY
 * objects are evicted in LRU order (policy LRU) and the allocation retried.
 * Keys are independent: a failed key never undoes another.
 * st[i] gets the outcome; refs[i] is valid when st[i] == L1_OK.
 * Returns the number reserved, or -EINVAL (n > 0 with NULL arrays). */
int l1_reserve_write(struct l1 *l1, const struct l1_key *keys, const uint64_t *sizes,
                     size_t n, uint64_t writer, enum l1_status *st, struct l1_ref *refs);

/* Lazy mode: commits the shared-memory pages behind a reservation before
 * anyone writes it, so a full /dev/shm is a clean failure (-ENOSPC: abort
 * the reservation and skip the key) instead of SIGBUS in lmcd or in a
 * worker writing its slot. A no-op for a pre-faulted segment. Takes no
 * lock; call it outside any hot lock (it may allocate many pages). */
int l1_back(struct l1 *l1, const struct l1_ref *ref);
/* Whether l1_back(ref) would find every page backed already (no fallocate:
 * a pre-faulted segment, or regions backed before or ahead). Takes no lock. */
bool l1_backed(struct l1 *l1, const struct l1_ref *ref);

/* Makes reservations READY (most recent in LRU). ids[i] is refs[i].id from
 * reserve_write. Only a live reservation of `writer` with that id is published.
 * st may be NULL. Returns the number published. */
int l1_publish(struct l1 *l1, const struct l1_key *keys, const uint64_t *ids, size_t n,
               uint64_t writer, enum l1_status *st);
/* Frees reservations (never publishes them). Returns the number dropped. */
int l1_abort(struct l1 *l1, const struct l1_key *keys, const uint64_t *ids, size_t n,
             uint64_t writer);
/* Frees every unpublished reservation of `writer` (UNREGISTER, dead worker).
 * Returns the number dropped. */
int l1_abort_all(struct l1 *l1, uint64_t writer);

/* Read locks. A lock adds `readers` holders (1..65535) and sets the expiry to
 * now + read_ttl_s; unlock drops holders (never below 0); an expired lock
 * counts as 0 holders. Locked objects are never evicted.
 *
 * lock_prefix locks the longest prefix of READY keys and returns its length
 * (0..n). lock locks all n or nothing: 0, or -ENOENT when a key is not READY.
 * refs may be NULL; else refs[i] is filled for each locked key.
 * Both return -EINVAL for readers outside 1..65535. */
int l1_lock_prefix(struct l1 *l1, const struct l1_key *keys, size_t n, uint32_t readers,
                   struct l1_ref *refs);
int l1_lock(struct l1 *l1, const struct l1_key *keys, size_t n, uint32_t readers,
            struct l1_ref *refs);
/* Drops `readers` holders per key. ids may be NULL (any object under the key);
 * with ids, a key whose object was replaced is skipped. An object removed by
 * a forced clear while locked is found by id (or key) and freed when its last
 * holder leaves. Returns the number of keys whose count was decremented. */
int l1_unlock(struct l1 *l1, const struct l1_key *keys, const uint64_t *ids, size_t n,
              uint32_t readers);

/* Like l1_unlock with ids, but also skips an object whose holders restarted
 * from zero since refs[i] was locked (its lock expired and someone else
 * locked it anew): a late release never drops another reader's holders.
 * refs[i] is what l1_lock/l1_lock_prefix returned. */
int l1_unlock_refs(struct l1 *l1, const struct l1_key *keys, const struct l1_ref *refs, size_t n,
                   uint32_t readers);

/*
 * Pins: lmcd's own readers that hand an object's bytes to ZeroMQ without a
 * copy (lmcd.retrieve_inline) and cannot know when the frame leaves. A pin
 * has no TTL: a pinned object is never evicted, and one removed by a forced
 * clear is freed only after its last unpin, so the bytes stay the object's
 * however slowly the client reads. Unlike read locks, pins are bounded by
 * bytes: l1_pin_prefix pins the longest READY prefix that keeps the
 * allocation bytes of all pinned objects (each counted once, however many
 * pins it has) at or under max_pinned_bytes, and sets *over_budget (may be
 * NULL) when it stopped for the budget rather than a missing key. refs gets
 * each pinned object; l1_unpin takes the same keys and refs (any thread).
 * Returns the count pinned / unpinned, or -EINVAL.
 */
int l1_pin_prefix(struct l1 *l1, const struct l1_key *keys, size_t n, uint64_t max_pinned_bytes,
                  struct l1_ref *refs, bool *over_budget);
int l1_unpin(struct l1 *l1, const struct l1_key *keys, const struct l1_ref *refs, size_t n);
/* l1_unpin, and l1_unlock_refs with refs from L1, never touch the segment:
 * they may run on a thread that blocks SIGBUS (ZeroMQ's I/O thread frees
 * zero-copy frames), where an access to a truncated segment would kill the
 * process instead of reaching the guard (l1_guard.h). */

/* A READY object's place. 0 or -ENOENT. The bytes stay valid only while the
 * caller holds a read lock on it. */
int l1_get(struct l1 *l1, const struct l1_key *key, struct l1_ref *ref);

/* Moves READY keys to most-recent in LRU (END_SESSION). Returns the number touched. */
int l1_touch(struct l1 *l1, const struct l1_key *keys, size_t n);

/* clear(false) frees every unlocked READY object. clear(true) also removes
 * locked objects and live reservations from the index at once (lookups and
 * publish fail from then on), but their memory is freed only when their last
 * holder unlocks, their writer publishes/aborts, or their TTL expires, so a
 * late reader or writer never touches memory given to a new object.
 * Returns the number of objects removed from the index. */
int l1_clear(struct l1 *l1, bool force);

/* Pushes the write deadline of live reservations of `writer` (ids from
 * reserve_write) to now + write_ttl_s, so memory an L2 adapter is still
 * loading into is never freed by expiry. Expired or unknown ones are
 * skipped. Returns the number renewed. */
int l1_renew(struct l1 *l1, const struct l1_key *keys, const uint64_t *ids, size_t n, uint64_t writer);
/* Frees READY objects that nobody holds (skip_l1 after an L2 store, DELETE
 * /cache/objects). ids may be NULL (any object under the key); with ids a
 * newer object under the key is left alone. force: a held object leaves the
 * index now and is freed when its last holder unlocks (as clear(true)).
 * Returns the number removed. */
int l1_remove(struct l1 *l1, const struct l1_key *keys, const uint64_t *ids, size_t n, bool force);

struct l1_stats {
    uint64_t total_object_count;  /* READY + live reservations */
    uint64_t write_locked_count;  /* live reservations */
    uint64_t read_locked_count;   /* READY objects with holders */
    uint64_t temporary_count;     /* always 0 */
    uint64_t pending_free_count;  /* removed by clear(true), still held */
    uint64_t pinned_count;        /* objects with pins (l1_pin_prefix) */
    uint64_t pinned_bytes;        /* their allocation bytes */
    uint64_t memory_used_bytes;   /* allocation sizes, pending frees included */
    uint64_t memory_total_bytes;  /* data area */
    double memory_usage_ratio;
    uint32_t write_ttl_s, read_ttl_s;
    uint64_t evicted_count;       /* background + demand */
    uint64_t evicted_bytes;
    uint64_t demand_evicted_count;
    uint64_t alloc_failures;      /* keys answered L1_NOMEM */
    uint64_t expired_reservations;
    uint64_t expired_read_locks;  /* objects whose read holders outlived read_ttl */
    uint64_t eviction_rounds;     /* background ticks */
    uint64_t eviction_rounds_triggered;
    uint64_t segment_losses;      /* truncations of the segment detected */
};
/* A consistent snapshot (expired locks and reservations are settled first). */
void l1_stats_get(struct l1 *l1, struct l1_stats *out);

/* Segment health. Another process may truncate the segment (a worker's
 * open(path, "w+b")). Every call that hands out or publishes memory checks
 * first (an fstat, and the SIGBUS guard of l1_guard.h); on a loss it logs
 * once, drops every object (held ones become pending, as in clear(true),
 * so no offset a holder still has is reused), and restores the segment in
 * place: same name, same size, zeroed, so workers keep their mapping and
 * need not register again. While a restoration fails (/dev/shm full) no
 * reservation is handed out; the next check retries.
 * l1_check runs that check and returns the segment generation, which each
 * loss bumps: a caller that copies bytes out of L1 compares the generation
 * before and after the copy and drops the copy when it changed. */
uint64_t l1_check(struct l1 *l1);
/* The segment generation as it stands, without checking (lock-free). */
uint64_t l1_generation(const struct l1 *l1);

/* One background eviction round at the clock's current time: settles expired
 * locks/reservations; below the watermark does nothing; else evicts unlocked
 * READY objects from least recent until eviction_ratio x used bytes are freed.
 * Returns the number of objects evicted. Exposed so tests drive it directly. */
int l1_evict_round(struct l1 *l1);
/* Starts the thread that runs l1_evict_round() every second (policy noop:
 * still settles expiries, never evicts). 0 or -errno; a second call is a no-op.
 * l1_destroy() stops it (wakes it at once). */
int l1_evict_start(struct l1 *l1);

#endif
