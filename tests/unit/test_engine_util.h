/*
 * Helpers shared by the engine unit tests: an engine on a small L1 with a
 * fake clock, keys, registrations and a whole engine-driven store.
 *
 * Layout used throughout: chunk 16 tokens, float16, 2 layers, hidden 512,
 * non-MLA -> [2, 2, 16, 512] = 64 KiB per object (MLA: 32 KiB).
 */
#ifndef TEST_ENGINE_UTIL_H
#define TEST_ENGINE_UTIL_H

#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/engine.h"
#include "engine/engine_int.h"
#include "engine/hasher.h"
#include "engine/keys.h"
#include "l1/l1.h"
#include "util/log.h"

#define SEC 1000000000ull
#define CHUNK 16
#define LAYERS 2
#define HIDDEN 512
#define OBJ_BYTES (2ull * LAYERS * CHUNK * HIDDEN * 2)
#define MLA_BYTES (1ull * LAYERS * CHUNK * HIDDEN * 2)
#define MODEL "test/model"
#define MAX_TOK 4096

struct fake_clock {
    uint64_t now; /* atomic: engine threads read it */
};
static struct fake_clock fclk = { 1000 * SEC };
static uint64_t fake_now(void *ctx) { return __atomic_load_n(&((struct fake_clock *)ctx)->now, __ATOMIC_RELAXED); }
static const struct clock_src test_clock = { fake_now, &fclk };
static inline void advance_s(uint64_t s) { __atomic_add_fetch(&fclk.now, s * SEC, __ATOMIC_RELAXED); }

static char seg_name[64];
static int seg_counter;

/* Options for a test engine; callers may adjust before te_create(). */
static inline void te_opts(struct engine_opts *o, uint64_t l1_bytes)
{
    memset(o, 0, sizeof(*o));
    snprintf(seg_name, sizeof(seg_name), "lmcd_test_eng_%ld_%d", (long)getpid(), seg_counter++);
    o->chunk_size = CHUNK;
    o->hash_algorithm = "blake3";
    o->l1_size_bytes = l1_bytes;
    o->l1_align_bytes = 4096;
    o->l1_use_lazy = true;
    o->shm_name = seg_name;
    o->shm_group = "";
    o->l1_read_ttl_s = 300;
    o->l1_write_ttl_s = 600;
    o->eviction_policy = "LRU";
    /* background eviction only at 100 % (never reached: the data area is no
     * multiple of an object), so the tests see demand eviction alone */
    o->eviction_trigger_watermark = 1.0;
    o->eviction_ratio = 0.2;
    o->session_ttl_s = 600;
    o->worker_reap_timeout_s = 120;
    o->clock = &test_clock;
}

static inline struct engine *te_create_opts(const struct engine_opts *o)
{
    struct engine *e = NULL;
    log_set_level(LOG_ERROR); /* the start-up lines are tested elsewhere */
    cr_assert_eq(engine_create(o, &e), 0, "engine_create");
    cr_assert_not_null(e);
    return e;
}

static inline struct engine *te_create(uint64_t l1_bytes)
{
    struct engine_opts o;
    te_opts(&o, l1_bytes);
    return te_create_opts(&o);
}

static inline struct l1_stats te_stats(struct engine *e)
{
    struct l1_stats st;
    l1_stats_get(e->l1, &st);
    return st;
}

/* Objects of OBJ_BYTES that fit in the data area at once. */
static inline size_t te_capacity(struct engine *e) { return (size_t)(te_stats(e).memory_total_bytes / OBJ_BYTES); }

/* Token list "seed": distinct seeds share no chunk. */
static inline void te_tokens(uint32_t *t, size_t n, uint32_t seed)
{
    for (size_t i = 0; i < n; i++)
        t[i] = seed * 100003u + (uint32_t)i;
}

/* A key over tokens[0..n_tokens) for [c0, c1) chunks; worker < 0 = scheduler. */
static inline struct engine_key te_key(const uint32_t *tokens, size_t n_tokens, const char *rid, int64_t world,
                                       int64_t worker, size_t c0, size_t c1)
{
    struct engine_key k;
    memset(&k, 0, sizeof(k));
    k.model_name = MODEL;
    k.model_name_len = strlen(MODEL);
    k.world_size = world;
    k.has_worker_id = worker >= 0;
    k.worker_id = worker >= 0 ? worker : 0;
    k.token_ids = tokens;
    k.n_tokens = n_tokens;
    k.start = (int64_t)(c0 * CHUNK);
    k.end = (int64_t)(c1 * CHUNK);
    k.request_id = rid;
    k.request_id_len = strlen(rid);
    k.cache_salt = "";
    k.cache_salt_len = 0;
    return k;
}

static inline struct engine_ed_register te_reg(int64_t id, int64_t world, bool mla)
{
    struct engine_ed_register r;
    memset(&r, 0, sizeof(r));
    r.instance_id = id;
    r.model_name = MODEL;
    r.model_name_len = strlen(MODEL);
    r.world_size = world;
    r.block_size = CHUNK;
    r.num_layers = LAYERS;
    r.hidden_dim_size = HIDDEN;
    r.dtype = "float16";
    r.dtype_len = strlen("float16");
    r.use_mla = mla;
    r.has_num_physical_slots = true;
    r.num_physical_slots = CHUNK;
    return r;
}

static inline void te_register(struct engine *e, int64_t id, int64_t world, bool mla)
{
    struct engine_ed_register r = te_reg(id, world, mla);
    struct engine_ed_reply rep;
    cr_assert_eq(engine_register_ed(e, &r, &rep), 0);
    cr_assert_null(rep.error, "registration refused: %s", rep.error ? rep.error : "");
    engine_ed_reply_free(&rep);
}

/* Byte pattern of (seed, chunk, shard) at byte i. */
static inline uint8_t te_pat(uint32_t seed, size_t chunk, int64_t shard, size_t i)
{
    uint64_t x = (uint64_t)seed * 0x9E3779B97F4A7C15ull ^ (chunk * 0xBF58476D1CE4E5B9ull) ^
                 ((uint64_t)shard << 40) ^ (i / 8) * 0x94D049BB133111EBull;
    return (uint8_t)(x >> (8 * (i % 8)));
}

/* Engine-driven store of chunks [c0, c1) of seed's tokens (n_tok tokens) for
 * one shard: prepare, write the pattern in place, commit. Returns the slots
 * written. */
static inline size_t te_store(struct engine *e, int64_t inst, const char *rid, uint32_t seed, size_t n_tok,
                              int64_t world, int64_t worker, size_t c0, size_t c1)
{
    static uint32_t tok[MAX_TOK];
    cr_assert_leq(n_tok, MAX_TOK);
    te_tokens(tok, n_tok, seed);
    struct engine_key k = te_key(tok, n_tok, rid, world, worker, c0, c1);
    struct engine_slots s;
    cr_assert_eq(engine_prepare_store(e, &k, inst, &s), 0);
    uint8_t *base = l1_base(e->l1);
    for (size_t i = 0; i < s.n; i++) {
        size_t chunk = c0 + (size_t)s.chunk_indices[i];
        for (size_t b = 0; b < s.slots[i].length; b++)
            base[s.slots[i].offset + b] = te_pat(seed, chunk, worker, b);
    }
    size_t n = s.n;
    if (n)
        cr_assert_eq(engine_commit_store(e, &k, inst, 0), 0);
    engine_slots_free(&s);
    return n;
}

/* PREPARE_STORE only (reservations left open) of chunks [c0, c1) of seed's
 * tokens; returns the slot count. */
static inline size_t te_reserve(struct engine *e, int64_t inst, const char *rid, uint32_t seed, size_t n_tok,
                                int64_t world, int64_t worker, size_t c0, size_t c1)
{
    static uint32_t tok[MAX_TOK];
    te_tokens(tok, n_tok, seed);
    struct engine_key k = te_key(tok, n_tok, rid, world, worker, c0, c1);
    struct engine_slots s;
    cr_assert_eq(engine_prepare_store(e, &k, inst, &s), 0);
    size_t n = s.n;
    engine_slots_free(&s);
    return n;
}

/* The object key of chunk c of seed's tokens for one shard. */
static inline struct l1_key te_objkey(struct engine *e, uint32_t seed, size_t c, int64_t world, int64_t worker,
                                      const char *salt)
{
    static uint32_t tok[MAX_TOK];
    size_t n = (c + 1) * CHUNK;
    te_tokens(tok, n, seed);
    uint8_t (*h)[HASHER_DIGEST_LEN] = malloc((c + 1) * sizeof(*h));
    cr_assert_not_null(h);
    hasher_extend(&e->hasher, tok, 0, c + 1, h);
    struct obj_key ok;
    uint64_t ns = keys_ns(MODEL, strlen(MODEL), salt, strlen(salt));
    cr_assert_eq(keys_expand((const uint8_t(*)[32])h[c], 1, (uint32_t)world, (int)worker, ns, 0, &ok, 1), 1);
    free(h);
    struct l1_key lk;
    memcpy(&lk, &ok, sizeof(lk));
    return lk;
}

static inline bool te_present(struct engine *e, uint32_t seed, size_t c, int64_t world, int64_t worker)
{
    struct l1_key k = te_objkey(e, seed, c, world, worker, "");
    struct l1_ref r;
    return l1_get(e->l1, &k, &r) == 0;
}

/* LOOKUP (scheduler) of the first n_chunks of seed, then the job's result. */
static inline int64_t te_lookup(struct engine *e, const char *rid, uint32_t seed, size_t n_chunks, int64_t world,
                                int64_t tp, int64_t readers)
{
    static uint32_t tok[MAX_TOK];
    size_t n = n_chunks * CHUNK;
    te_tokens(tok, n, seed);
    struct engine_key k = te_key(tok, n, rid, world, -1, 0, n_chunks);
    k.num_kv_readers = readers;
    cr_assert_eq(engine_lookup(e, &k, tp), 0);
    int64_t v = -1;
    cr_assert_eq(engine_query_prefetch_status(e, rid, strlen(rid), &v), 0);
    return v;
}

/* Whole JSON integer at a dotted path of engine_status_json(). */
static inline long long te_status_int(struct engine *e, const char *path)
{
    json_t *root = engine_status_json(e);
    cr_assert_not_null(root);
    json_t *v = root;
    char buf[128];
    snprintf(buf, sizeof(buf), "%s", path);
    for (char *save = NULL, *p = strtok_r(buf, ".", &save); p; p = strtok_r(NULL, ".", &save)) {
        v = json_object_get(v, p);
        cr_assert_not_null(v, "status has no %s", path);
    }
    cr_assert(json_is_integer(v), "%s is not an integer", path);
    long long r = json_integer_value(v);
    json_decref(root);
    return r;
}

#endif
