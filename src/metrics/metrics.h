/*
 * metrics: lmcd's counters and histograms, declared once, counted per
 * thread, summed at scrape (memcached's THREAD_STATS_FIELDS, applied to
 * Prometheus families).
 *
 * DESIGN
 *   Every thread that counts owns a shard: a plain array of uint64_t per
 *   counter slot, histogram buckets, and a few label rows. Only the owner
 *   writes its shard (a relaxed atomic load + store, no read-modify-write,
 *   no lock, no cache line shared with another writer); a scrape takes the
 *   registry lock and sums every shard with relaxed loads. A thread gets its
 *   shard on first use (registry lock, once per thread); when it exits the
 *   shard is marked free and the next new thread adopts it with its counts,
 *   so totals never go backwards and memory stays bounded by the number of
 *   threads alive at once.
 *
 *   Three kinds of series, each declared in one X-macro list below:
 *     MET_COUNTERS   counter slots; a family may span N slots told apart
 *                    by one label (op, kind, l2_name...), rendered by a
 *                    label callback the caller of metrics_render() gives.
 *     MET_ROWS       counters labelled by the request's model_name and
 *                    cache_salt (LMCache's attributes). A shard keeps at
 *                    most MET_MAX_ROWS label pairs; further pairs count
 *                    under model_name="_other",cache_salt="_other" so a
 *                    client inventing salts cannot grow memory.
 *     MET_HISTS      Prometheus histograms, per slot, with fixed buckets:
 *                    latency (10 us .. 10 s) or throughput (GB/s).
 *   Gauges are not stored here: the renderer's caller reads them at scrape.
 *
 * The exported names are LMCache's (docs/source/mp/observability/
 * metrics.rst: dots to '_', unit suffix, _total on counters) where LMCache
 * has the series, lmcd_* otherwise. L2 families render only once an L2
 * adapter registered its name (metrics_l2_register): with no adapter they
 * export no sample, which is the truth.
 *
 * Threads: every function may be called from any thread. metrics_render()
 * and metrics_sum*() take the registry lock (never held on a request path).
 * Label strings given to metrics_row() are copied (bytes outside printable
 * ASCII become '?', at most 128 bytes kept).
 */
#ifndef LMCD_METRICS_METRICS_H
#define LMCD_METRICS_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define MET_MAX_OPS 48   /* >= WIRE_OP_COUNT (checked in src/server) */
#define MET_MAX_KINDS 8  /* >= SRV_BAD_COUNT */
#define MET_MAX_L2 8     /* L2 adapters with their own series */
#define MET_MAX_ROWS 64  /* label pairs per thread before "_other" */

/* Label kinds of slotted counters and histograms. MET_L_NONE has one
 * slot; MET_L_L2 and MET_L_L2_INDEX are rendered here from the registered
 * adapter names; the others by the caller's label callback. */
enum met_label { MET_L_NONE, MET_L_OP, MET_L_KIND, MET_L_REFUSED, MET_L_ERROR, MET_L_L2, MET_L_L2_INDEX, MET_L_REASON };

/* Counters: X(sym, slots, label kind, exported name, help). A family is
 * gated on L2 when its name starts with lmcache_mp_l2_. */
#define MET_COUNTERS(X)                                                                                              \
    X(REQUESTS, MET_MAX_OPS, MET_L_OP, "lmcd_requests_total", "Requests decoded, by operation.")                    \
    X(REPLIES, 1, MET_L_NONE, "lmcd_replies_total", "Reply messages sent.")                                          \
    X(BAD_INPUT, MET_MAX_KINDS, MET_L_KIND, "lmcd_bad_requests_total",                                               \
      "Requests dropped as malformed or unserved, by kind.")                                                        \
    X(REFUSED, MET_MAX_KINDS, MET_L_REFUSED, "lmcd_refused_total",                                                   \
      "Connections and ops refused by access control, by kind.")                                                    \
    X(DECODE_ERRORS, 32, MET_L_ERROR, "lmcd_decode_errors_total", "Undecodable requests, by decoder error.")       \
    X(BLOCK_ALLOC_RECORDS, 1, MET_L_NONE, "lmcd_block_allocation_records_total",                                     \
      "REPORT_BLOCK_ALLOCATION records received.")                                                                  \
    X(STORE_SKIPPED, 1, MET_L_NONE, "lmcd_store_skipped_chunks_total",                                               \
      "Chunks a store could not reserve (no room, busy, invalid).")                                                 \
    X(SESSIONS_EXPIRED, 1, MET_L_NONE, "lmcd_sessions_expired_total", "Request sessions dropped by their TTL.")    \
    X(WORKERS_REAPED, 1, MET_L_NONE, "lmcd_workers_reaped_total",                                                    \
      "Silent engine-driven workers whose locks and reservations were reaped.")                                     \
    X(GPU_EVENT_TIMEOUTS, 1, MET_L_NONE, "lmcd_gpu_event_timeouts_total",                                            \
      "GPU copies still waiting on their worker's event past --gpu-event-timeout-seconds.")                         \
    X(L2_STORE_SUBMITTED, 1, MET_L_NONE, "lmcache_mp_l2_store_submitted_requests_total",                             \
      "L2 store requests submitted.")                                                                               \
    X(L2_STORE_COMPLETED, MET_MAX_L2, MET_L_L2, "lmcache_mp_l2_store_completed_requests_total",                      \
      "L2 store requests completed, by adapter.")                                                                   \
    X(L2_PREFETCH_LOOKUP, 1, MET_L_NONE, "lmcache_mp_l2_prefetch_lookup_requests_total",                             \
      "L2 prefetch lookup requests.")                                                                               \
    X(L2_PREFETCH_HIT, 1, MET_L_NONE, "lmcache_mp_l2_prefetch_hit_chunks_total", "Prefix chunks found in L2.")     \
    X(L2_PREFETCH_LOAD_SUBMITTED, 1, MET_L_NONE, "lmcache_mp_l2_prefetch_load_submitted_requests_total",             \
      "L2 prefetch load requests submitted (per adapter).")                                                         \
    X(L2_LOAD_COMPLETED, MET_MAX_L2, MET_L_L2, "lmcache_mp_l2_load_completed_requests_total",                        \
      "Per-adapter L2 load requests completed.")                                                                    \
    X(L2_PREFETCH_FAILURE, 2, MET_L_REASON, "lmcache_mp_l2_prefetch_failure_total",                                  \
      "Chunks L2 reported present that did not land in L1, by reason (l1_oom, not_found).")

/* Rows: X(sym, labels, exported name, fixed extra labels, help), labels
 * a mask of MET_MODEL / MET_SALT. One family per entry. */
#define MET_MODEL 1
#define MET_SALT 2
#define MET_ROWS(X)                                                                                                  \
    X(LOOKUPS, MET_MODEL | MET_SALT, "lmcache_mp_lookups_requests_total", "", "Completed lookups.")                  \
    X(LOOKUP_REQUESTED, MET_MODEL | MET_SALT, "lmcache_mp_lookup_requested_tokens_total", "",                        \
      "Chunk-aligned tokens submitted for lookup.")                                                                 \
    X(LOOKUP_HIT, MET_MODEL | MET_SALT, "lmcache_mp_lookup_hit_tokens_total", "",                                    \
      "Tokens of the contiguous prefix found in L1 or L2.")                                                         \
    X(LOOKUP_HIT_L1, MET_MODEL | MET_SALT, "lmcache_mp_lookup_hit_l1_tokens_total", "",                              \
      "Of lookup_hit, tokens L1 served on its own.")                                                                \
    X(LOOKUP_HIT_L2, MET_MODEL | MET_SALT, "lmcache_mp_lookup_hit_l2_tokens_total", "",                              \
      "Of lookup_hit, tokens L2 added beyond the L1 prefix.")                                                       \
    X(LOOKUP_HIT_L1_KEYS, MET_MODEL | MET_SALT, "lmcache_mp_lookup_hit_l1_keys_total", "",                           \
      "Hit keys L1 already held (one per chunk and shard).")                                                        \
    X(LOOKUP_HIT_L2_KEYS, MET_MODEL | MET_SALT, "lmcache_mp_lookup_hit_l2_keys_total", "",                           \
      "Hit keys loaded from L2 into L1.")                                                                           \
    X(L1_READ, MET_SALT, "lmcache_mp_l1_read_chunks_total", "", "Chunks read from L1.")                              \
    X(L1_WRITE, MET_SALT, "lmcache_mp_l1_write_chunks_total", "", "Chunks written to L1.")                           \
    X(L1_READ_BYTES, MET_SALT, "lmcd_l1_read_bytes_total", "", "Bytes handed out of L1 to readers.")               \
    X(L1_WRITE_BYTES, MET_SALT, "lmcd_l1_write_bytes_total", "", "Bytes published into L1.")                       \
    X(L1_ALLOC_FAILURE, MET_MODEL, "lmcache_mp_l1_allocation_failure_total", "during=\"l1_store\"",                  \
      "L1 allocation failures (no room) while reserving for a store.")                                              \
    X(L1_READ_FAILURE, MET_MODEL, "lmcache_mp_l1_read_failure_total", "during=\"l1_retrieve\",reason=\"not_found\"", \
      "Retrieves of chunks no longer in L1 (lookup/retrieve race or eviction).")                                    \
    X(L2_STORE_SUBMITTED_OBJECTS, MET_SALT, "lmcache_mp_l2_store_submitted_objects_chunks_total", "",                \
      "Chunks submitted for L2 store.")                                                                             \
    X(L2_STORE_COMPLETED_OBJECTS, MET_SALT, "lmcache_mp_l2_store_completed_objects_chunks_total", "",                \
      "Chunks stored to L2.")                                                                                       \
    X(L2_PREFETCH_LOOKUP_OBJECTS, MET_SALT, "lmcache_mp_l2_prefetch_lookup_objects_chunks_total", "",                \
      "Chunks submitted for L2 prefetch lookup.")                                                                   \
    X(L2_PREFETCH_LOAD_SUBMITTED_OBJECTS, MET_SALT, "lmcache_mp_l2_prefetch_load_submitted_objects_chunks_total", \
      "", "Chunks submitted for L2 load.")                                                                          \
    X(L2_PREFETCH_LOAD_COMPLETED, MET_SALT, "lmcache_mp_l2_prefetch_load_completed_chunks_total", "",                \
      "Chunks loaded from L2.")                                                                                     \
    X(L2_EVICTED_OBJECTS, MET_SALT, "lmcache_mp_l2_evicted_objects_chunks_total", "", "Chunks evicted from L2.")

/* Histograms: X(sym, slots, label kind, bucket set, exported name, help). */
enum met_buckets { MET_B_SECONDS, MET_B_GBPS };
#define MET_HISTS(X)                                                                                                 \
    X(OP_LATENCY, MET_MAX_OPS, MET_L_OP, MET_B_SECONDS, "lmcd_request_duration_seconds",                              \
      "Time from a request's decoding to its reply being sent, by operation.")                                      \
    X(L2_STORE_THROUGHPUT, MET_MAX_L2, MET_L_L2, MET_B_GBPS, "lmcache_mp_l2_store_throughput_GB_per_second",          \
      "L1 to L2 store throughput per request (GB/s).")                                                              \
    X(L2_LOAD_THROUGHPUT, MET_MAX_L2, MET_L_L2, MET_B_GBPS, "lmcache_mp_l2_load_throughput_GB_per_second",            \
      "L2 to L1 load throughput per (request, adapter) (GB/s).")

#define MET_NBUCKETS 19 /* finite upper bounds; one more slot for +Inf */

#define MET_X_COUNTER_ENUM_(sym, n, lab, name, help) MET_##sym, MET_##sym##_END_ = MET_##sym + (n) - 1,
enum met_counter { MET_COUNTERS(MET_X_COUNTER_ENUM_) MET_COUNTER_SLOTS };
#undef MET_X_COUNTER_ENUM_
#define MET_X_ROW_ENUM_(sym, labels, name, extra, help) MET_ROW_##sym,
enum met_row_counter { MET_ROWS(MET_X_ROW_ENUM_) MET_ROW_COUNT };
#undef MET_X_ROW_ENUM_
#define MET_X_HIST_ENUM_(sym, n, lab, b, name, help) MET_H_##sym, MET_H_##sym##_END_ = MET_H_##sym + (n) - 1,
enum met_hist { MET_HISTS(MET_X_HIST_ENUM_) MET_HIST_SLOTS };
#undef MET_X_HIST_ENUM_

/* One label pair's counters, owned by one thread's shard. */
struct met_row {
    uint64_t hash;
    char *model, *salt;
    uint64_t v[MET_ROW_COUNT];
};

/* A thread's shard. Private to metrics.c but for the inline adds below:
 * every field is written by the owning thread only. */
struct met_shard {
    uint64_t c[MET_COUNTER_SLOTS];
    uint64_t h[MET_HIST_SLOTS][MET_NBUCKETS + 1];
    uint64_t hsum[MET_HIST_SLOTS]; /* double bits (ns for latency, as a double too) */
    struct met_row *rows[MET_MAX_ROWS]; /* rows[0..n_rows) readable by a scrape */
    size_t n_rows;                      /* atomic: published after rows[n] is set */
    bool owned;                         /* registry lock: a live thread owns it */
    struct met_shard *next;             /* registry lock */
};
extern __thread struct met_shard *metrics_tls_;
struct met_shard *metrics_attach_(void);
/* The calling thread's shard (made on first use; NULL only when out of
 * memory, and then nothing is counted). */
static inline struct met_shard *metrics_shard(void)
{
    return metrics_tls_ ? metrics_tls_ : metrics_attach_();
}

/* Owner-only add: a relaxed load and store, so a scrape never tears a value
 * and TSan sees no race, without a locked instruction. */
static inline void metrics_bump_(uint64_t *p, uint64_t n)
{
    __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + n, __ATOMIC_RELAXED);
}

/* counter slot `idx` (enum met_counter + label slot) += n */
static inline void metrics_add(unsigned idx, uint64_t n)
{
    struct met_shard *sh = metrics_shard();
    if (sh && idx < MET_COUNTER_SLOTS)
        metrics_bump_(&sh->c[idx], n);
}

/* The calling thread's row of (model_name, cache_salt); never NULL when the
 * thread has a shard (falls back to the "_other" row). Valid for the life of
 * the process; use it from this thread only. */
struct met_row *metrics_row(const char *model, size_t model_len, const char *salt, size_t salt_len);
static inline void metrics_row_add(struct met_row *r, enum met_row_counter c, uint64_t n)
{
    if (r)
        metrics_bump_(&r->v[c], n);
}

/* Histogram slot `idx` (enum met_hist + label slot): one observation. */
void metrics_observe_ns(unsigned idx, uint64_t ns); /* MET_B_SECONDS families */
void metrics_observe(unsigned idx, double v);       /* MET_B_GBPS families */

/* L2 adapters: index i (< MET_MAX_L2) gets its l2_name label. L2 families
 * export samples once any adapter is registered. */
void metrics_l2_register(unsigned i, const char *l2_name);

/* Sums (any thread; registry lock). */
uint64_t metrics_sum(unsigned idx);
uint64_t metrics_row_sum(enum met_row_counter c); /* over every label pair */

/* A histogram slot summed over threads. */
struct met_hist_sum {
    uint64_t bucket[MET_NBUCKETS + 1]; /* per bucket, not cumulative; last = +Inf */
    uint64_t count;
    double sum;
};
void metrics_hist_sum(unsigned idx, struct met_hist_sum *out);
/* Upper bounds of a bucket set, MET_NBUCKETS of them. */
const double *metrics_bounds(enum met_buckets b);
/* The q-quantile (0..1) of a histogram by linear interpolation in its
 * bucket, as Prometheus' histogram_quantile(); 0 when empty. */
double metrics_quantile(const struct met_hist_sum *h, enum met_buckets b, double q);

/* Writes every family in the Prometheus text format 0.0.4. `label` renders
 * the label text (`op="LOOKUP"`) of slot i of a MET_L_OP/KIND/ERROR/REASON
 * family into buf and returns true, or false to skip the slot. It is called
 * under the registry lock: it must not call metrics_* itself. */
typedef bool (*met_label_fn)(void *ctx, enum met_label kind, unsigned i, char *buf, size_t cap);
void metrics_render(FILE *out, met_label_fn label, void *ctx);

/* Prometheus text helpers for gauges rendered by callers. */
void metrics_family(FILE *out, const char *name, const char *type, const char *help);
/* Writes s as a label value (escapes \ " and newlines). */
void metrics_label_value(FILE *out, const char *s);

#endif
