/*
 * bench_ed: the engine-driven (shared-memory) data path end to end, as a
 * vLLM worker drives it, against memcpy of the same bytes in this process.
 *
 * Each worker is one thread with its own liblmcd client (one DEALER): it
 * registers an engine-driven context, maps lmcd's L1 segment, and for each
 * request (one new 256-token prompt = one chunk object)
 *   store     PREPARE_STORE -> memcpy into the slot -> COMMIT_STORE
 *   retrieve  LOOKUP + WAIT_PREFETCH_STATUS (worker 0, as the scheduler;
 *             the other workers wait for it) -> PREPARE_RETRIEVE -> memcpy
 *             out of the slot -> COMMIT_RETRIEVE
 * then checks every byte it read back (outside the timed parts). Objects
 * are 1 MiB (32 layers x hidden 32) and 32 MiB (32 layers x hidden 1024,
 * Llama-3-8B: 2 x 32 x 256 x 1024 x bf16) per worker, one chunk per request;
 * and 1 MiB objects 16 per request; 1 worker and 2 workers (TP 2, each
 * storing its own shard of the same chunks).
 *
 * The baseline does the same copies with plain memcpy in this process:
 * each thread copies its source into a pre-faulted destination area of the
 * same size, then back out into the same output buffer; one baseline round
 * before each lmcd round, best of all rounds.
 *
 * Rounds: L1 holds two rounds plus 64 MiB, so the first rounds write fresh
 * segment pages (tmpfs commits them on PREPARE_STORE, and the first touch of
 * each page faults in lmcd and in the worker) and later rounds evict and
 * reuse committed pages, as a running server does. "store, fresh L1" is
 * round 0, "store" the best round from STEADY on, "retrieve" the best from
 * round 1 on.
 *
 * The workers (threads here, processes under vLLM) share one mapping of the
 * segment. A worker process that has run for a while has every page of L1
 * in its own page tables; with a mapping per thread, the short runs here
 * would instead hand worker 0 the slots worker 1 wrote in the rounds
 * before, each page a first touch in worker 0's mapping (a page-table fault,
 * 6-12 us per 4 KiB page in this VM: 50-350 ms per 32 MiB object), which a
 * running worker pays once per page of L1, not per store.
 * LMCD_BENCH_ED_MAP_EACH=1 maps per worker to show that cost;
 * LMCD_BENCH_VERBOSE=1 prints each round with the page faults of worker 0's
 * store copies and the prepare / copy / commit split;
 * LMCD_BENCH_ED_ONLY=K,W runs one configuration (profiling).
 *
 * Throughput = bytes / wall time of the slowest worker's timed parts.
 * Never asserts on speed; exits 1 when anything fails or a byte differs.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include "common.h"
#include "lmcd/client.h"
#include "util/clock.h"

#define CHUNK 256
#define LAYERS 32
#define MAX_WORKERS 2
/* Rounds 0-1 fill the fresh segment, round 2 its 64 MiB of slack; from
 * round 3 on every store reuses pages committed and mapped before. */
#define STEADY 3

struct config {
    int workers;
    int64_t hidden;  /* object bytes = 2 x LAYERS x CHUNK x hidden x 2 */
    int requests;    /* per round */
    int per;         /* chunks per request */
    int rounds;
    size_t obj;
};

struct shared {
    const struct config *cfg;
    const char *url;
    int round;
    int64_t base_id;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int looked_up; /* guarded by mu: requests of this round whose LOOKUP answered */
    int failed;    /* guarded by mu */
    pthread_barrier_t stored; /* every worker's stores are committed before any LOOKUP */
};

struct worker {
    struct shared *sh;
    int w;
    struct lmcd_client *c;
    uint8_t *base; /* the mapped segment */
    uint64_t pool;
    uint8_t *src, *out;
    uint64_t store_ns, retrieve_ns; /* this round's timed parts */
    uint64_t prep_ns, copy_ns, commit_ns; /* store phases, summed over rounds STEADY.. */
    long copy_faults;                     /* page faults in this round's store copies */
    pthread_t th;
};

static void fail(struct shared *sh, const char *what, int rc)
{
    fprintf(stderr, "bench_ed: %s: %s\n", what, rc ? lmcd_strerror(rc) : "failed");
    pthread_mutex_lock(&sh->mu);
    sh->failed = 1;
    pthread_cond_broadcast(&sh->cv);
    pthread_mutex_unlock(&sh->mu);
}

/* The prompt of request i in round r: `per` chunks of tokens nobody else uses. */
static void tokens_of(int r, int i, int per, uint32_t *t)
{
    for (int k = 0; k < CHUNK * per; k++)
        t[k] = (uint32_t)(r * 100003 + i * 1009 + k * 7 + 1) % 152064u;
}

/* Marks the copy of request i (round r, worker w) at both ends, so a slot
 * holding another request's bytes is caught by the check. */
static void stamp(uint8_t *p, size_t len, int r, int i, int w)
{
    uint64_t tag = ((uint64_t)r << 40) | ((uint64_t)i << 8) | (uint64_t)w;
    memcpy(p, &tag, 8);
    memcpy(p + len - 8, &tag, 8);
}

static void key_of(struct lmcd_key *k, const struct config *cfg, int w, const uint32_t *t, char *rid)
{
    memset(k, 0, sizeof(*k));
    k->model_name = "bench-model";
    k->world_size = cfg->workers;
    k->has_worker_id = true;
    k->worker_id = w;
    k->token_ids = t;
    k->n_tokens = (size_t)CHUNK * (size_t)cfg->per;
    k->start = 0;
    k->end = CHUNK * cfg->per;
    k->request_id = rid;
}

static void *worker_run(void *arg)
{
    struct worker *wk = arg;
    struct shared *sh = wk->sh;
    const struct config *cfg = sh->cfg;
    int64_t iid = sh->base_id + wk->w;
    size_t per = (size_t)cfg->per;
    uint32_t *t = malloc(sizeof(uint32_t) * CHUNK * per);
    char rid[64];
    struct lmcd_key k;
    struct lmcd_reply rep;
    wk->store_ns = wk->retrieve_ns = 0;
    wk->copy_faults = 0;
    if (!t) {
        fail(sh, "out of memory", 0);
        pthread_barrier_wait(&sh->stored);
        return NULL;
    }

    for (int i = 0; i < cfg->requests && !sh->failed; i++) {
        tokens_of(sh->round, i, cfg->per, t);
        snprintf(rid, sizeof(rid), "ed-%lld-%d-%d", (long long)sh->base_id, sh->round, i);
        key_of(&k, cfg, wk->w, t, rid);
        uint64_t t0 = clock_mono_ns();
        int rc = lmcd_prepare_store(wk->c, &k, iid, &rep);
        bool good = !rc && rep.n_slots == per;
        for (size_t j = 0; good && j < per; j++)
            good = rep.slots[j].length == cfg->obj && rep.slots[j].offset + cfg->obj <= wk->pool &&
                   rep.chunk_indices[j] >= 0 && (size_t)rep.chunk_indices[j] < per;
        if (!good) {
            fail(sh, "prepare_store (no slot: L1 full?)", rc);
            lmcd_reply_free(&rep);
            pthread_barrier_wait(&sh->stored);
            free(t);
            return NULL;
        }
        uint64_t t1 = clock_mono_ns();
        struct rusage ru0, ru1;
        getrusage(RUSAGE_THREAD, &ru0);
        for (size_t j = 0; j < per; j++) {
            stamp(wk->src, cfg->obj, sh->round, i * cfg->per + (int)rep.chunk_indices[j], wk->w);
            memcpy(wk->base + rep.slots[j].offset, wk->src, cfg->obj);
        }
        uint64_t t2 = clock_mono_ns();
        getrusage(RUSAGE_THREAD, &ru1);
        wk->copy_faults += ru1.ru_minflt - ru0.ru_minflt + ru1.ru_majflt - ru0.ru_majflt;
        lmcd_reply_free(&rep);
        bool ok = false;
        rc = lmcd_commit_store(wk->c, &k, iid, &ok);
        uint64_t t3 = clock_mono_ns();
        wk->store_ns += t3 - t0;
        if (sh->round >= STEADY) { /* rounds that reuse committed, mapped pages */
            wk->prep_ns += t1 - t0;
            wk->copy_ns += t2 - t1;
            wk->commit_ns += t3 - t2;
        }
        if (rc || !ok) {
            fail(sh, "commit_store", rc);
            pthread_barrier_wait(&sh->stored);
            free(t);
            return NULL;
        }
    }

    pthread_barrier_wait(&sh->stored);
    for (int i = 0; i < cfg->requests && !sh->failed; i++) {
        tokens_of(sh->round, i, cfg->per, t);
        snprintf(rid, sizeof(rid), "ed-%lld-%d-%d", (long long)sh->base_id, sh->round, i);
        uint64_t t0 = clock_mono_ns();
        if (wk->w == 0) { /* the scheduler's LOOKUP, for all workers */
            key_of(&k, cfg, 0, t, rid);
            k.has_worker_id = false;
            int64_t hits = -1;
            int rc = lmcd_lookup(wk->c, &k, cfg->workers);
            if (!rc)
                rc = lmcd_wait_prefetch_status(wk->c, rid, 5.0, &hits);
            if (rc || hits != cfg->per) {
                fail(sh, "lookup did not find every chunk", rc);
                free(t);
                return NULL;
            }
            pthread_mutex_lock(&sh->mu);
            sh->looked_up = i + 1;
            pthread_cond_broadcast(&sh->cv);
            pthread_mutex_unlock(&sh->mu);
        } else {
            pthread_mutex_lock(&sh->mu);
            while (sh->looked_up <= i && !sh->failed)
                pthread_cond_wait(&sh->cv, &sh->mu);
            pthread_mutex_unlock(&sh->mu);
        }
        key_of(&k, cfg, wk->w, t, rid);
        int rc = lmcd_prepare_retrieve(wk->c, &k, iid, &rep);
        bool good = !rc && rep.success && rep.n_slots == per;
        for (size_t j = 0; good && j < per; j++)
            good = rep.slots[j].length == cfg->obj && rep.slots[j].offset + cfg->obj <= wk->pool;
        if (!good) {
            fail(sh, "prepare_retrieve", rc);
            lmcd_reply_free(&rep);
            free(t);
            return NULL;
        }
        for (size_t j = 0; j < per; j++) /* slot j holds chunk j */
            memcpy(wk->out + j * cfg->obj, wk->base + rep.slots[j].offset, cfg->obj);
        lmcd_reply_free(&rep);
        bool ok = false;
        rc = lmcd_commit_retrieve(wk->c, &k, iid, &ok);
        wk->retrieve_ns += clock_mono_ns() - t0;
        if (rc || !ok) {
            fail(sh, "commit_retrieve", rc);
            free(t);
            return NULL;
        }
        for (size_t j = 0; j < per; j++) {
            stamp(wk->src, cfg->obj, sh->round, i * cfg->per + (int)j, wk->w);
            if (memcmp(wk->out + j * cfg->obj, wk->src, cfg->obj)) {
                fprintf(stderr, "bench_ed: chunk %zu of request %d of round %d (worker %d) read back wrong bytes\n",
                        j, i, sh->round, wk->w);
                fail(sh, "byte check", 0);
                free(t);
                return NULL;
            }
        }
    }
    free(t);
    return NULL;
}

/* The baseline: the same copies into a pre-faulted area, then back out. */
struct base_worker {
    const struct config *cfg;
    int w;
    uint8_t *area, *src, *out;
    uint64_t store_ns, retrieve_ns;
    pthread_t th;
};

static void *base_run(void *arg)
{
    struct base_worker *b = arg;
    size_t obj = b->cfg->obj, n = (size_t)b->cfg->requests * (size_t)b->cfg->per, per = (size_t)b->cfg->per;
    uint64_t t0 = clock_mono_ns();
    for (size_t i = 0; i < n; i++) {
        stamp(b->src, obj, 0, (int)i, b->w);
        memcpy(b->area + i * obj, b->src, obj);
    }
    b->store_ns = clock_mono_ns() - t0;
    t0 = clock_mono_ns();
    for (size_t i = 0; i < n; i++) {
        memcpy(b->out + (i % per) * obj, b->area + i * obj, obj);
        __asm__ volatile("" ::"r"(b->out) : "memory"); /* the copy is used */
    }
    b->retrieve_ns = clock_mono_ns() - t0;
    return NULL;
}

/* One worker's bytes per round. */
static size_t area_bytes(const struct config *cfg) { return (size_t)cfg->requests * (size_t)cfg->per * cfg->obj; }

static uint8_t *alloc_filled(size_t len, uint32_t seed)
{
    uint8_t *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("bench_ed: mmap");
        exit(1);
    }
    uint32_t x = seed | 1;
    for (size_t i = 0; i < len; i += 4) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        memcpy(p + i, &x, 4);
    }
    return p;
}

/* Best store and retrieve throughput (GB/s) of the baseline over rounds. */
static void baseline_setup(const struct config *cfg, struct base_worker *b)
{
    for (int w = 0; w < cfg->workers; w++) {
        b[w] = (struct base_worker){ .cfg = cfg, .w = w };
        b[w].area = alloc_filled(area_bytes(cfg), 7); /* pre-faulted */
        b[w].src = alloc_filled(cfg->obj, 11 + (uint32_t)w);
        b[w].out = alloc_filled(cfg->obj * (size_t)cfg->per, 13);
    }
}

/* One baseline round; keeps the best store and retrieve throughput (GB/s). */
static void baseline_round(const struct config *cfg, struct base_worker *b, double *store, double *retrieve)
{
    double bytes = (double)area_bytes(cfg) * cfg->workers;
    for (int w = 0; w < cfg->workers; w++)
        if (pthread_create(&b[w].th, NULL, base_run, &b[w]))
            exit(1);
    uint64_t s = 0, g = 0;
    for (int w = 0; w < cfg->workers; w++) {
        pthread_join(b[w].th, NULL);
        s = b[w].store_ns > s ? b[w].store_ns : s;
        g = b[w].retrieve_ns > g ? b[w].retrieve_ns : g;
    }
    *store = bytes / (double)s > *store ? bytes / (double)s : *store;
    *retrieve = bytes / (double)g > *retrieve ? bytes / (double)g : *retrieve;
}

static void baseline_free(const struct config *cfg, struct base_worker *b)
{
    for (int w = 0; w < cfg->workers; w++) {
        munmap(b[w].area, area_bytes(cfg));
        munmap(b[w].src, cfg->obj);
        munmap(b[w].out, cfg->obj * (size_t)cfg->per);
    }
}

static void run_config(const struct config *cfg)
{
    /* two rounds: background eviction (above its watermark) takes the older
     * round, never the one being read back */
    double l1_bytes = 2.0 * (double)area_bytes(cfg) * cfg->workers + (64 << 20);
    char l1gb[32];
    snprintf(l1gb, sizeof(l1gb), "%.3f", l1_bytes / (1 << 30));
    const char *extra[] = { "--no-http", "--l1-size-gb", l1gb, "--max-gpu-workers", "2",
                            NULL };
    struct bench_proc lmcd;
    int port;
    bench_lmcd_start(&lmcd, &port, extra);
    char url[64];
    snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", port);

    static int64_t next_id = 1000;
    struct shared sh = { .cfg = cfg, .url = url, .base_id = next_id };
    next_id += 10;
    pthread_mutex_init(&sh.mu, NULL);
    pthread_cond_init(&sh.cv, NULL);
    pthread_barrier_init(&sh.stored, NULL, (unsigned)cfg->workers);
    struct worker wk[MAX_WORKERS];
    const char *me = getenv("LMCD_BENCH_ED_MAP_EACH");
    bool map_each = me && *me && strcmp(me, "0");
    for (int w = 0; w < cfg->workers; w++) {
        wk[w] = (struct worker){ .sh = &sh, .w = w };
        int rc = lmcd_client_open(url, LMCD_PROFILE_2609, LMCD_FORM_POSITIONAL, &wk[w].c);
        if (rc) {
            fprintf(stderr, "bench_ed: client: %s\n", lmcd_strerror(rc));
            exit(1);
        }
        lmcd_client_set_timeout(wk[w].c, 20000);
        struct lmcd_ed_payload ed = { .instance_id = sh.base_id + w, .model_name = "bench-model",
                                      .world_size = cfg->workers, .block_size = 16, .num_layers = LAYERS,
                                      .hidden_dim_size = cfg->hidden, .dtype = "bfloat16" };
        struct lmcd_reply r;
        rc = lmcd_register_ed(wk[w].c, &ed, &r);
        if (rc || r.error || !r.shm_name || !r.shm_name[0]) {
            fprintf(stderr, "bench_ed: register: %s %s\n", lmcd_strerror(rc), r.error ? r.error : "");
            exit(1);
        }
        char shm[300];
        snprintf(shm, sizeof(shm), "/%s", r.shm_name[0] == '/' ? r.shm_name + 1 : r.shm_name);
        wk[w].pool = r.pool_size;
        lmcd_reply_free(&r);
        if (w > 0 && !map_each) { /* one mapping for all workers (see the top comment) */
            wk[w].base = wk[0].base;
            wk[w].src = alloc_filled(cfg->obj, 11 + (uint32_t)w);
            wk[w].out = alloc_filled(cfg->obj * (size_t)cfg->per, 13);
            continue;
        }
        int fd = shm_open(shm, O_RDWR, 0);
        if (fd < 0) {
            fprintf(stderr, "bench_ed: shm_open %s: %s\n", shm, strerror(errno));
            exit(1);
        }
        wk[w].base = mmap(NULL, wk[w].pool, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
        if (wk[w].base == MAP_FAILED) {
            perror("bench_ed: mmap segment");
            exit(1);
        }
        wk[w].src = alloc_filled(cfg->obj, 11 + (uint32_t)w);
        wk[w].out = alloc_filled(cfg->obj * (size_t)cfg->per, 13);
    }

    double bytes = (double)area_bytes(cfg) * cfg->workers;
    double fresh = 0, store = 0, retrieve = 0, bs = 0, br = 0;
    struct base_worker bw[MAX_WORKERS];
    baseline_setup(cfg, bw);
    for (int r = 0; r < cfg->rounds; r++) {
        /* the baseline round by round with lmcd's, so load from elsewhere
         * falls on both sides alike */
        baseline_round(cfg, bw, &bs, &br);
        sh.round = r;
        sh.looked_up = 0;
        for (int w = 0; w < cfg->workers; w++)
            if (pthread_create(&wk[w].th, NULL, worker_run, &wk[w]))
                exit(1);
        uint64_t s = 0, g = 0;
        for (int w = 0; w < cfg->workers; w++) {
            pthread_join(wk[w].th, NULL);
            s = wk[w].store_ns > s ? wk[w].store_ns : s;
            g = wk[w].retrieve_ns > g ? wk[w].retrieve_ns : g;
        }
        if (sh.failed)
            exit(1);
        if (getenv("LMCD_BENCH_VERBOSE"))
            printf("    round %d: store %.2f GB/s (%ld page faults in worker 0's copies), retrieve %.2f GB/s; "
                   "worker 0 so far: prepare %.1f, copy %.1f, commit %.1f us per request\n",
                   r, bytes / (double)s, wk[0].copy_faults, bytes / (double)g, wk[0].prep_ns / 1e3 / cfg->requests / (r >= STEADY ? r - STEADY + 1 : 1),
                   wk[0].copy_ns / 1e3 / cfg->requests / (r >= STEADY ? r - STEADY + 1 : 1),
                   wk[0].commit_ns / 1e3 / cfg->requests / (r >= STEADY ? r - STEADY + 1 : 1));
        if (r == 0)
            fresh = bytes / (double)s;
        else if (r >= STEADY)
            store = bytes / (double)s > store ? bytes / (double)s : store;
        retrieve = r && bytes / (double)g > retrieve ? bytes / (double)g : retrieve;
    }
    for (int w = 0; w < cfg->workers; w++) {
        lmcd_unregister_ed(wk[w].c, sh.base_id + w);
        lmcd_client_close(wk[w].c);
        if (w == 0 || map_each)
            munmap(wk[w].base, wk[w].pool);
        munmap(wk[w].src, cfg->obj);
        munmap(wk[w].out, cfg->obj * (size_t)cfg->per);
    }
    int st = bench_proc_stop(&lmcd, 10000);
    if (st != 0)
        fprintf(stderr, "bench_ed: lmcd exited with status 0x%x on SIGTERM\n", st);

    baseline_free(cfg, bw);
    char name[128], size[48];
    snprintf(size, sizeof(size), "%s%s", cfg->obj >= (32u << 20) ? "32 MiB" : "1 MiB",
             cfg->per > 1 ? " x16 per request" : "");
    const char *ws = cfg->workers > 1 ? "s" : "";
    printf("  %s objects, %d worker%s, %d requests x %d rounds (GB/s; memcpy in brackets)\n", size, cfg->workers, ws,
           cfg->requests, cfg->rounds);
    printf("    store, fresh L1 %7.2f (%6.2f) %5.2fx   store %7.2f (%6.2f) %5.2fx   retrieve %7.2f (%6.2f) %5.2fx\n",
           fresh, bs, fresh / bs, store, bs, store / bs, retrieve, br, retrieve / br);
    double per = (double)(cfg->rounds - STEADY) * cfg->requests * 1e3;
    printf("    store per request, worker 0: prepare %.1f us, copy %.1f us, commit %.1f us\n", wk[0].prep_ns / per,
           wk[0].copy_ns / per, wk[0].commit_ns / per);
    snprintf(name, sizeof(name), "ed store %s, %d worker%s, fresh L1", size, cfg->workers, ws);
    bench_report(name, "GB/s", fresh, "memcpy", bs, true);
    snprintf(name, sizeof(name), "ed store %s, %d worker%s", size, cfg->workers, ws);
    bench_report(name, "GB/s", store, "memcpy", bs, true);
    snprintf(name, sizeof(name), "ed retrieve %s, %d worker%s", size, cfg->workers, ws);
    bench_report(name, "GB/s", retrieve, "memcpy", br, true);
    pthread_mutex_destroy(&sh.mu);
    pthread_cond_destroy(&sh.cv);
    pthread_barrier_destroy(&sh.stored);
}

int main(void)
{
    bool quick = bench_quick();
    /* LMCD_BENCH_ED_ONLY=K,W runs one configuration (K: 0 = 1 MiB, 1 = 32 MiB,
     * 2 = 1 MiB x16 per request; W workers), for profiling */
    const char *only = getenv("LMCD_BENCH_ED_ONLY");
    int only_h = -1, only_w = -1;
    if (only && sscanf(only, "%d,%d", &only_h, &only_w) != 2)
        only_h = only_w = -1;
    static const int64_t hidden[] = { 32, 1024 }; /* 1 MiB, 32 MiB objects */
    for (int h = 0; h < 3; h++) {
        for (int workers = 1; workers <= MAX_WORKERS; workers++) {
            /* h == 2: 1 MiB objects, 16 chunks per request (a 4K-token range, as
             * vLLM stores a request's new chunks in one PREPARE_STORE) */
            if (only_h >= 0 && (h != only_h || workers != only_w))
                continue;
            struct config cfg = { .workers = workers, .hidden = hidden[h == 1], .per = h == 2 ? 16 : 1 };
            cfg.obj = (size_t)2 * LAYERS * CHUNK * (size_t)cfg.hidden * 2;
            /* per worker and round: 256 MiB (64 MiB quick) */
            cfg.requests = (int)(((quick ? 64u : 256u) << 20) / cfg.obj / (size_t)cfg.per);
            if (cfg.requests < 2)
                cfg.requests = 2;
            cfg.rounds = quick ? STEADY + 2 : STEADY + 5;
            run_config(&cfg);
        }
    }
    return 0;
}
