/*
 * engine_int.h: the engine's private state, shared by engine.c (requests)
 * and engine_state.c (sessions, instances, sweeper).
 *
 * Locks (outer first; never take an outer one while holding an inner one):
 *   1. engine.mu        the session and instance tables, their refcounts,
 *                       counters of jobs and sessions
 *   2. session.mu /     one request's tokens, hashes, lookup job and locks;
 *      instance.mu      one worker's layout, reservations and transfer locks
 *                       (a session and an instance are never held together)
 *   3. hold_mu          the GPU copies' holds (engine_hold_*); nothing of
 *                       the engine's is taken under it, only l1.mu
 *   4. l1.mu            inside src/l1, taken by l1_* calls
 * Sessions and instances are refcounted under engine.mu: a handler pins one
 * (session_get/instance_get), drops engine.mu, works under the entry's own
 * mutex, and unpins; removal from the table (END_SESSION, TTL, UNREGISTER)
 * frees the entry when the last pin goes.
 */
#ifndef LMCD_ENGINE_ENGINE_INT_H
#define LMCD_ENGINE_ENGINE_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "engine/engine.h"
#include "engine/hasher.h"
#include "engine/keys.h"
#include "l1/l1.h"
#include "l2/l2_tier.h"
#include "metrics/metrics.h"
#include "util/htab.h"

/* A group of read holders one request took on one object. */
struct lockrec {
    struct l1_key key;
    uint64_t id;       /* L1 object id: unlock never hits a newer object */
    uint64_t epoch;    /* L1 lock epoch: nor a newer run of holders */
    uint32_t holders;  /* still held */
    uint32_t slot;     /* l1_ref.slot when known (0: L1 finds the object by key) */
    uint64_t tag;      /* pending reservations: the PREPARE_STORE key's identity */
    uint64_t t_ns;     /* pending and transfer records: when made (the sweeper prunes them past the L1 TTL) */
};

struct lockvec {
    struct lockrec *v;
    size_t n, cap;
};

struct session {
    struct htab_node node; /* key = rid */
    char *rid;
    size_t rid_len;
    pthread_mutex_t mu;
    int refs;      /* guarded by engine.mu */
    bool removed;  /* guarded by engine.mu: out of the table, free at refs 0 */
    /* guarded by mu: */
    uint32_t *tokens;
    size_t n_tokens, cap_tokens;
    struct hasher_chain chain;
    /* The lookup job. A job has two phases, as LMCache's: LOOKUP (which
     * objects exist: gives the hit count QUERY_PREFETCH_LOOKUP_HITS reads)
     * and LOAD (bringing missing ones into L1: gives the final count
     * QUERY_PREFETCH_STATUS reads once). With L1 only both end inside
     * LOOKUP; an L2 tier completes them later and calls on_job_done. */
    enum job_state { JOB_NONE, JOB_LOOKUP, JOB_LOAD, JOB_DONE } job;
    int64_t job_hits;   /* valid from JOB_LOAD on */
    uint64_t job_gen;   /* +1 per LOOKUP: a late L2 answer for an older job is ignored */
    int64_t job_chunks; /* valid at JOB_DONE */
    bool has_lookup; /* the lookup key, for END_SESSION's touch */
    uint64_t lookup_ns;
    uint32_t lookup_world;
    struct lockvec locks; /* what this request's LOOKUP locked */
    uint64_t last_used_ns; /* atomic (__atomic builtins): the sweeper reads it */
    uint32_t ttl_s;        /* guarded by engine.mu: idle time before the sweeper drops it */
    size_t acct;           /* guarded by mu: bytes counted in engine.session_bytes */
    bool worker_made;      /* atomic (__atomic): made by a worker request, no LOOKUP since */
};

struct instance {
    struct htab_node node; /* key = &id */
    int64_t id;
    pthread_mutex_t mu;
    int refs;     /* guarded by engine.mu */
    bool removed; /* guarded by engine.mu */
    /* set once at registration, then read-only: */
    char *model;
    int64_t world_size;
    int64_t block_size, num_layers, hidden;
    bool use_mla;
    const char *dtype; /* static */
    uint32_t itemsize;
    uint64_t object_bytes;
    uint32_t ndim;
    int64_t shape[ENGINE_SLOT_MAX_DIMS];
    /* guarded by mu: */
    struct lockvec pending;   /* reservations made by PREPARE_STORE: key + id */
    struct lockvec transfers; /* read locks held by PREPARE_RETRIEVE */
    uint64_t registered_ns;
    atomic_uint_fast64_t last_seen_ns; /* any request from it */
    bool active;  /* atomic (__atomic): has sent a request since registering */
    bool reaped;  /* atomic (__atomic): resources reaped; registration kept */
};

struct engine {
    struct engine_opts o;
    char *hash_name, *policy_name, *shm_name_opt, *shm_group_opt;
    struct hasher hasher;
    struct l1 *l1;
    const struct clock_src *clock;
    pthread_mutex_t mu;
    struct htab sessions;  /* guarded by mu */
    struct htab instances; /* guarded by mu */
    atomic_size_t active_jobs; /* sessions whose job is not JOB_NONE */
    atomic_uint_fast64_t inline_writer; /* next writer tag for inline stores */
    /* sweeper */
    pthread_t sweeper;
    bool sweeper_started;
    pthread_mutex_t sweep_mu;
    pthread_cond_t sweep_cv;
    bool stopping; /* guarded by sweep_mu */
    /* per-engine counters off the request path (sweeper); the request
     * path counts in src/metrics, per thread */
    atomic_uint_fast64_t reaped_workers, expired_sessions;
    /* L2 (engine_l2.c) */
    struct l2_tier *l2;
    pthread_mutex_t size_mu; /* leaf: the object sizes learnt from stores */
    struct { uint64_t ns, size; } sizes[64];
    size_t sizes_next;
    atomic_uint_fast64_t l2_hit_chunks;
    /* bounds (issue 11): resolved options and what they refused */
    size_t max_sessions;
    uint64_t max_session_bytes;
    atomic_uint_fast64_t session_bytes; /* sum of every session's acct */
    atomic_uint_fast64_t refused_sessions, refused_session_bytes;
    atomic_uint_fast64_t expired_workers, pruned_transfers, pruned_reservations;
    uint64_t read_ttl_ns, write_ttl_ns; /* L1's lock TTLs: transfer and pending records older are pruned */
    atomic_uint_fast64_t freed_since_trim; /* bytes sweeps freed since the last malloc_trim (tests sweep too) */
    uint64_t inline_pin_budget; /* bytes: inline_max_pinned_ratio x the L1 data area; set at create */
    atomic_uint_fast64_t inline_pin_refused; /* retrieve_inline replies cut short by the pin budget */
    /* GPU copies' holds (engine_hold_*): a leaf lock above l1.mu */
    pthread_mutex_t hold_mu;
    struct engine_hold *holds;
    size_t n_holds, n_held_objects;
};

/* engine.c: renews held reservations past half the write TTL (sweeper). */
void engine_holds_renew(struct engine *e, uint64_t now);

/* L1 writer ids at and above this (as int64: every negative id too) are
 * lmcd's own: inline stores (1 << 63 | n) and L2 prefetch reservations. */
#define ENGINE_RESERVED_WRITERS (INT64_MAX - 15)
#define ENGINE_L2_WRITER ((uint64_t)INT64_MAX - 1)

/* engine_l2.c: the engine's side of the L2 tier. */
int engine_l2_create(struct engine *e);
void engine_l2_destroy(struct engine *e);
/* After L1 published keys of this request's model/salt (write-behind). */
void engine_l2_stored(struct engine *e, const struct engine_key *k, const struct l1_key *keys, size_t n,
                      uint64_t obj_size);
/* The bytes of one object of k's model and world (registered workers, else
 * what stores taught), or 0. Takes engine.mu: never call with a session held. */
uint64_t engine_l2_object_size(struct engine *e, const struct engine_key *k);
/* LOOKUP, under s->mu: asks L2 for keys[0..n) (chunk-major, `world` shards
 * per chunk) that follow the `l1_chunks` L1 prefix. 0: the job is now
 * JOB_LOOKUP and completes later; < 0: no prefetch (the caller finishes). */
int engine_l2_prefetch(struct engine *e, struct session *s, const struct engine_key *k, const struct l1_key *keys,
                       size_t n, uint32_t world, int64_t l1_chunks, uint32_t readers, uint64_t obj_size);


/* engine_state.c */
int lockvec_push(struct lockvec *lv, const struct l1_key *k, uint64_t id, uint64_t epoch, uint32_t holders);
/* lockvec_push of a lock L1 just handed out: keeps its slot, so the release
 * needs no key lookup (nor a read of the segment). */
int lockvec_push_ref(struct lockvec *lv, const struct l1_key *k, const struct l1_ref *r, uint32_t holders);
/* Drops m of the record's holders in L1 (only if they are still the ones it took). */
void lockrec_unlock(struct engine *e, struct lockrec *r, uint32_t m);
void lockvec_free(struct lockvec *lv);
/* For each key, drops up to max holders of its first held record in lv,
 * then removes the records left with none. */
void lockvec_release_keys(struct engine *e, struct lockvec *lv, const struct l1_key *keys, size_t n, uint32_t max);
/* Releases every holder recorded in lv and empties it. */
void lockvec_release_all(struct engine *e, struct lockvec *lv);

/* How session_get treats an absent session. A LOOKUP makes a session that
 * lives session_ttl_s idle; a worker request (which may come after
 * END_SESSION) makes one that lives only WORKER_SESSION_TTL_S idle, so late
 * requests of finished requests do not hold token lists for ten minutes. */
enum session_mode { SESSION_FIND, SESSION_CREATE, SESSION_CREATE_WORKER };
#define WORKER_SESSION_TTL_S 60
/* Pins the session of rid; returns it with its mu held, or NULL (absent
 * with SESSION_FIND; errno ENOSPC when --max-sessions refused a new one,
 * ENOMEM when out of memory). Sessions made by worker requests may take
 * only half of each session limit, so a flood of them never leaves a
 * LOOKUP without room. */
struct session *session_get(struct engine *e, const char *rid, size_t len, enum session_mode mode);
/* Like session_get, but never waits for the session's mutex: *busy is set
 * (and NULL returned) when another thread holds it. For the loop thread. */
struct session *session_tryget(struct engine *e, const char *rid, size_t len, enum session_mode mode, bool *busy);
/* Unlocks and unpins. */
void session_put(struct engine *e, struct session *s);
/* Removes rid's session from the table; returns it pinned and locked (the
 * caller finishes with session_put, which frees it) or NULL. */
struct session *session_take(struct engine *e, const char *rid, size_t len);
/* Frees a session out of the table (releasing its locks). */
void session_free(struct engine *e, struct session *s);
void instance_free(struct instance *in);
/* Replaces the token list and extends the hashes (only new chunks hashed).
 * -ENOSPC (session unchanged) when it would pass --max-session-bytes. */
int session_set_tokens(struct engine *e, struct session *s, const uint32_t *tokens, size_t n);

struct instance *instance_get(struct engine *e, int64_t id);
/* Like instance_get, but never waits for the instance's mutex: NULL with
 * *busy set while another thread holds it. */
struct instance *instance_tryget(struct engine *e, int64_t id, bool *busy);
void instance_put(struct engine *e, struct instance *in);
/* Inserts a new registration; -EEXIST (and *out = the existing one, pinned
 * and locked) when the id is registered already. */
int instance_add(struct engine *e, struct instance *fresh, struct instance **out);
struct instance *instance_take(struct engine *e, int64_t id);
/* Drops the instance's reservations and transfer locks (UNREGISTER, reaping). */
void instance_release(struct engine *e, struct instance *in);

int engine_sweeper_start(struct engine *e);
void engine_sweeper_stop(struct engine *e);
/* One sweep at the clock's current time (sessions TTL, silent workers). */
void engine_sweep(struct engine *e);

static inline uint64_t engine_now(const struct engine *e) { return clock_now_ns(e->clock); }

#endif
