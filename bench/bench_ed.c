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
 * storing its own shard of the same chunks). Those are one request at a
 * time: each call waits for its answer. The "pipelined" figures (1 and
 * 32 MiB, one chunk per request) are what liblmcd's asynchronous API lets a
 * worker do: request i+1's PREPARE in flight while it copies request i,
 * COMMITs answered in the background, the scheduler's LOOKUPs and
 * WAIT_PREFETCH_STATUS calls from a thread and client of their own, several
 * requests in flight, ahead of the workers.
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
#include <dirent.h>
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
    int depth; /* pipelined: PREPAREs (and LOOKUPs) kept in flight; 0 = one request at a time */
};

struct shared {
    const struct config *cfg;
    const char *url;
    int round;
    int64_t base_id;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int looked_up; /* guarded by mu: requests of this round whose LOOKUP answered */
    struct lmcd_client *sched; /* piped: the scheduler's own client (its own thread) */
    int failed;    /* guarded by mu */
    pthread_barrier_t stored; /* every worker's stores are committed before any LOOKUP */
};

/* A worker's time per phase of a round (summed over its requests), and the
 * page faults of its copies into and out of the segment. */
enum { PH_S_PREP, PH_S_COPY, PH_S_COMMIT, PH_R_LOOKUP, PH_R_WAIT, PH_R_PREP, PH_R_COPY, PH_R_COMMIT, PH_N };
struct phases {
    uint64_t ns[PH_N];
    long store_faults, retrieve_faults;
};

struct worker {
    struct shared *sh;
    int w;
    struct lmcd_client *c;
    uint8_t *base; /* the mapped segment */
    uint64_t pool;
    uint8_t *src, *out;
    uint64_t store_ns, retrieve_ns; /* this round's timed parts */
    struct phases ph;               /* this round's, per phase */
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

/* ---- the pipelined worker ((cfg->depth > 0)) ----------------------------------
 * What liblmcd's asynchronous API lets a worker do: submit request i+1's
 * PREPARE before copying request i, and COMMIT without waiting for its
 * answer (collected later). The scheduler's LOOKUP + WAIT run on a thread
 * and client of their own, as vLLM's scheduler is a process of its own,
 * ahead of the workers. Same bytes, same checks; the byte checks' time is
 * taken out of the timed part as in the one-at-a-time worker. */

static int submit_op(struct worker *wk, enum lmcd_op op, int i, uint32_t *t, uint64_t *uid)
{
    const struct config *cfg = wk->sh->cfg;
    char rid[64];
    struct lmcd_request rq = { .op = op, .instance_id = wk->sh->base_id + wk->w };
    tokens_of(wk->sh->round, i, cfg->per, t);
    snprintf(rid, sizeof(rid), "ed-%lld-%d-%d", (long long)wk->sh->base_id, wk->sh->round, i);
    key_of(&rq.key, cfg, wk->w, t, rid); /* encoded by lmcd_submit: t and rid may change after */
    return lmcd_submit(wk->c, &rq, uid);
}

/* Waits for uid's reply, adding the time blocked to *ns. */
static int wait_timed(struct worker *wk, uint64_t uid, struct lmcd_reply *rep, uint64_t *ns)
{
    uint64_t t0 = clock_mono_ns();
    int rc = lmcd_wait(wk->c, uid, 20000, rep);
    *ns += clock_mono_ns() - t0;
    return rc;
}

/* Collects the COMMIT replies in cu[*done..upto): false on a failed one. */
static bool commits_collect(struct worker *wk, const uint64_t *cu, int *done, int upto, bool block, uint64_t *ns)
{
    for (; *done < upto; (*done)++) {
        struct lmcd_reply rep;
        int rc = block ? wait_timed(wk, cu[*done], &rep, ns) : lmcd_poll(wk->c, cu[*done], &rep);
        if (rc == -EAGAIN && !block)
            return true;
        bool ok = !rc && rep.ok;
        lmcd_reply_free(&rep);
        if (!ok) {
            fail(wk->sh, "commit (pipelined)", rc);
            return false;
        }
    }
    return true;
}

static bool store_piped(struct worker *wk, uint32_t *t, uint64_t *cu, uint64_t *pu)
{
    struct shared *sh = wk->sh;
    const struct config *cfg = sh->cfg;
    size_t per = (size_t)cfg->per;
    int n = cfg->requests, done = 0, sent = 0;
    uint64_t t0 = clock_mono_ns();
    for (int i = 0; i < n; i++) {
        if (sent == i && submit_op(wk, LMCD_OP_PREPARE_STORE, sent++, t, &pu[i]))
            return fail(sh, "submit prepare_store", 0), false;
        struct lmcd_reply rep;
        int rc = wait_timed(wk, pu[i], &rep, &wk->ph.ns[PH_S_PREP]);
        bool good = !rc && rep.n_slots == per;
        for (size_t j = 0; good && j < per; j++)
            good = rep.slots[j].length == cfg->obj && rep.slots[j].offset + cfg->obj <= wk->pool &&
                   rep.chunk_indices[j] >= 0 && (size_t)rep.chunk_indices[j] < per;
        /* the PREPAREs up to request i+depth go out before the copy of request i */
        for (; good && sent < n && sent <= i + cfg->depth; sent++)
            good = !submit_op(wk, LMCD_OP_PREPARE_STORE, sent, t, &pu[sent]);
        if (!good) {
            lmcd_reply_free(&rep);
            return fail(sh, "prepare_store (pipelined)", rc), false;
        }
        uint64_t t1 = clock_mono_ns();
        for (size_t j = 0; j < per; j++) {
            stamp(wk->src, cfg->obj, sh->round, i * cfg->per + (int)rep.chunk_indices[j], wk->w);
            memcpy(wk->base + rep.slots[j].offset, wk->src, cfg->obj);
        }
        wk->ph.ns[PH_S_COPY] += clock_mono_ns() - t1;
        lmcd_reply_free(&rep);
        if (submit_op(wk, LMCD_OP_COMMIT_STORE, i, t, &cu[i]) ||
            !commits_collect(wk, cu, &done, i, false, NULL))
            return fail(sh, "commit_store (pipelined)", 0), false;
    }
    if (!commits_collect(wk, cu, &done, n, true, &wk->ph.ns[PH_S_COMMIT]))
        return false;
    wk->store_ns = clock_mono_ns() - t0;
    return true;
}

/* The scheduler: LOOKUP + WAIT_PREFETCH_STATUS of every request of the
 * round, once every worker's stores are committed. Both stay in flight, as
 * vLLM's scheduler keeps a request's status call in flight across
 * scheduling steps (LMCache #5053) while it looks up the next requests: up
 * to depth+1 requests ahead of the oldest unanswered WAIT, each request's
 * WAIT sent once its LOOKUP has answered (a WAIT for a lookup the server has
 * not seen yet would find no such request). Workers are released in order. */
static int sched_submit(struct shared *sh, enum lmcd_op op, int i, uint32_t *t, uint64_t *uid)
{
    const struct config *cfg = sh->cfg;
    char rid[64];
    snprintf(rid, sizeof(rid), "ed-%lld-%d-%d", (long long)sh->base_id, sh->round, i);
    struct lmcd_request rq = { .op = op, .tp_size = cfg->workers, .request_id = rid, .timeout_s = 5.0 };
    if (op == LMCD_OP_LOOKUP) {
        tokens_of(sh->round, i, cfg->per, t);
        key_of(&rq.key, cfg, 0, t, rid);
        rq.key.has_worker_id = false;
    }
    return lmcd_submit(sh->sched, &rq, uid);
}

/* A LOOKUP's (want < 0) or a WAIT's answer: 0, -EAGAIN (not yet: only when
 * !block), or an error (a WAIT that did not find every chunk is -ENOENT). */
static int sched_collect(struct shared *sh, uint64_t uid, bool block, int64_t want)
{
    struct lmcd_reply rep;
    int rc = block ? lmcd_wait(sh->sched, uid, 20000, &rep) : lmcd_poll(sh->sched, uid, &rep);
    if (!rc && want >= 0 && (rep.is_nil || rep.value != want))
        rc = -ENOENT;
    lmcd_reply_free(&rep);
    return rc;
}

/* Request i's LOOKUP answered (waiting for it when block): its WAIT is sent. */
static int sched_lookup_done(struct shared *sh, int i, uint32_t *t, const uint64_t *lu, uint64_t *wu, bool block)
{
    int rc = sched_collect(sh, lu[i], block, -1);
    return rc ? rc : sched_submit(sh, LMCD_OP_WAIT_PREFETCH_STATUS, i, t, &wu[i]);
}

static void *sched_start(void *arg)
{
    struct shared *sh = arg;
    pthread_barrier_wait(&sh->stored);
    const struct config *cfg = sh->cfg;
    uint32_t *t = malloc(sizeof(uint32_t) * CHUNK * (size_t)cfg->per);
    uint64_t *lu = malloc(sizeof(uint64_t) * (size_t)cfg->requests);
    uint64_t *wu = malloc(sizeof(uint64_t) * (size_t)cfg->requests);
    int n = cfg->requests, looked = 0, waited = 0, done = 0, rc = 0;
    if (!t || !lu || !wu)
        rc = -ENOMEM;
    while (!rc && done < n && !sh->failed) {
        for (; !rc && looked < n && looked <= done + cfg->depth; looked++)
            rc = sched_submit(sh, LMCD_OP_LOOKUP, looked, t, &lu[looked]);
        bool moved = false;
        /* answered LOOKUPs get their WAIT; answered WAITs release the workers */
        while (!rc && waited < looked && !(rc = sched_lookup_done(sh, waited, t, lu, wu, false)))
            waited++, moved = true;
        if (rc == -EAGAIN)
            rc = 0;
        int before = done;
        while (!rc && done < waited && !(rc = sched_collect(sh, wu[done], false, cfg->per)))
            done++;
        if (rc == -EAGAIN)
            rc = 0;
        if (!rc && done == before && !moved) { /* nothing answered yet: block on the oldest */
            if (done < waited)
                rc = sched_collect(sh, wu[done], true, cfg->per), done += !rc;
            else if (!(rc = sched_lookup_done(sh, waited, t, lu, wu, true)))
                waited++;
        }
        if (done > before) {
            pthread_mutex_lock(&sh->mu);
            sh->looked_up = done;
            pthread_cond_broadcast(&sh->cv);
            pthread_mutex_unlock(&sh->mu);
        }
    }
    if (rc)
        fail(sh, "lookup did not find every chunk (pipelined)", rc);
    free(wu);
    free(lu);
    free(t);
    return NULL;
}

static bool looked_up_wait(struct shared *sh, int i, uint64_t *ns)
{
    uint64_t t0 = clock_mono_ns();
    pthread_mutex_lock(&sh->mu);
    while (sh->looked_up <= i && !sh->failed)
        pthread_cond_wait(&sh->cv, &sh->mu);
    bool ok = !sh->failed;
    pthread_mutex_unlock(&sh->mu);
    *ns += clock_mono_ns() - t0;
    return ok;
}

static bool retrieve_piped(struct worker *wk, uint32_t *t, uint64_t *cu, uint64_t *pu)
{
    struct shared *sh = wk->sh;
    const struct config *cfg = sh->cfg;
    size_t per = (size_t)cfg->per;
    int n = cfg->requests, done = 0, sent = 0;
    uint64_t check_ns = 0, t0 = clock_mono_ns();
    for (int i = 0; i < n; i++) {
        if (sent == i && (!looked_up_wait(sh, i, &wk->ph.ns[PH_R_WAIT]) ||
                          submit_op(wk, LMCD_OP_PREPARE_RETRIEVE, sent++, t, &pu[i])))
            return fail(sh, "submit prepare_retrieve", 0), false;
        struct lmcd_reply rep;
        int rc = wait_timed(wk, pu[i], &rep, &wk->ph.ns[PH_R_PREP]);
        bool good = !rc && rep.success && rep.n_slots == per;
        for (size_t j = 0; good && j < per; j++)
            good = rep.slots[j].length == cfg->obj && rep.slots[j].offset + cfg->obj <= wk->pool;
        /* the PREPAREs up to request i+depth go out before the copy of
         * request i, each once the scheduler's LOOKUP of it has answered */
        for (; good && sent < n && sent <= i + cfg->depth; sent++)
            good = looked_up_wait(sh, sent, &wk->ph.ns[PH_R_WAIT]) &&
                   !submit_op(wk, LMCD_OP_PREPARE_RETRIEVE, sent, t, &pu[sent]);
        if (!good) {
            lmcd_reply_free(&rep);
            return fail(sh, "prepare_retrieve (pipelined)", rc), false;
        }
        uint64_t t1 = clock_mono_ns();
        for (size_t j = 0; j < per; j++) /* slot j holds chunk j */
            memcpy(wk->out + j * cfg->obj, wk->base + rep.slots[j].offset, cfg->obj);
        uint64_t t2 = clock_mono_ns();
        wk->ph.ns[PH_R_COPY] += t2 - t1;
        lmcd_reply_free(&rep);
        if (submit_op(wk, LMCD_OP_COMMIT_RETRIEVE, i, t, &cu[i]) ||
            !commits_collect(wk, cu, &done, i, false, NULL))
            return fail(sh, "commit_retrieve (pipelined)", 0), false;
        uint64_t t3 = clock_mono_ns();
        for (size_t j = 0; j < per; j++) {
            stamp(wk->src, cfg->obj, sh->round, i * cfg->per + (int)j, wk->w);
            if (memcmp(wk->out + j * cfg->obj, wk->src, cfg->obj)) {
                fprintf(stderr, "bench_ed: chunk %zu of request %d of round %d (worker %d) read back wrong bytes\n",
                        j, i, sh->round, wk->w);
                return fail(sh, "byte check", 0), false;
            }
        }
        check_ns += clock_mono_ns() - t3;
    }
    if (!commits_collect(wk, cu, &done, n, true, &wk->ph.ns[PH_R_COMMIT]))
        return false;
    wk->retrieve_ns = clock_mono_ns() - t0 - check_ns;
    return true;
}

static void *worker_run_piped(struct worker *wk)
{
    struct shared *sh = wk->sh;
    const struct config *cfg = sh->cfg;
    uint32_t *t = malloc(sizeof(uint32_t) * CHUNK * (size_t)cfg->per);
    uint64_t *cu = malloc(sizeof(uint64_t) * (size_t)cfg->requests);
    uint64_t *pu = malloc(sizeof(uint64_t) * (size_t)cfg->requests);
    bool ok = t && cu && pu;
    if (!ok)
        fail(sh, "out of memory", 0);
    ok = ok && store_piped(wk, t, cu, pu);
    pthread_barrier_wait(&sh->stored);
    if (ok)
        retrieve_piped(wk, t, cu, pu);
    free(t);
    free(cu);
    free(pu);
    return NULL;
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
    memset(&wk->ph, 0, sizeof(wk->ph));
    if ((cfg->depth > 0)) {
        free(t);
        return worker_run_piped(wk);
    }
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
        wk->ph.store_faults += ru1.ru_minflt - ru0.ru_minflt + ru1.ru_majflt - ru0.ru_majflt;
        lmcd_reply_free(&rep);
        bool ok = false;
        rc = lmcd_commit_store(wk->c, &k, iid, &ok);
        uint64_t t3 = clock_mono_ns();
        wk->store_ns += t3 - t0;
        wk->ph.ns[PH_S_PREP] += t1 - t0;
        wk->ph.ns[PH_S_COPY] += t2 - t1;
        wk->ph.ns[PH_S_COMMIT] += t3 - t2;
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
            uint64_t tl = clock_mono_ns();
            if (!rc)
                rc = lmcd_wait_prefetch_status(wk->c, rid, 5.0, &hits);
            wk->ph.ns[PH_R_LOOKUP] += tl - t0;
            wk->ph.ns[PH_R_WAIT] += clock_mono_ns() - tl;
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
        uint64_t tp = clock_mono_ns();
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
        uint64_t tc = clock_mono_ns();
        struct rusage ru0, ru1;
        getrusage(RUSAGE_THREAD, &ru0);
        for (size_t j = 0; j < per; j++) /* slot j holds chunk j */
            memcpy(wk->out + j * cfg->obj, wk->base + rep.slots[j].offset, cfg->obj);
        uint64_t td = clock_mono_ns();
        getrusage(RUSAGE_THREAD, &ru1);
        lmcd_reply_free(&rep);
        bool ok = false;
        rc = lmcd_commit_retrieve(wk->c, &k, iid, &ok);
        uint64_t te = clock_mono_ns();
        wk->retrieve_ns += te - t0;
        wk->ph.ns[PH_R_PREP] += tc - tp;
        wk->ph.ns[PH_R_COPY] += td - tc;
        wk->ph.ns[PH_R_COMMIT] += te - td;
        wk->ph.retrieve_faults += ru1.ru_minflt - ru0.ru_minflt + ru1.ru_majflt - ru0.ru_majflt;
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

/* CPU time of every live thread of process pid, ns, and how many times
 * they were put on a CPU (*slices: wake-ups and preemptions; schedstat). */
static uint64_t proc_cpu_ns(pid_t pid, uint64_t *slices)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    uint64_t sum = 0;
    *slices = 0;
    struct dirent *de;
    while (d && (de = readdir(d))) {
        char f[384];
        unsigned long long ns = 0, wait_ns = 0, n = 0;
        snprintf(f, sizeof(f), "%s/%s/schedstat", path, de->d_name);
        FILE *fp = de->d_name[0] != '.' ? fopen(f, "r") : NULL;
        if (fp && fscanf(fp, "%llu %llu %llu", &ns, &wait_ns, &n) == 3) {
            sum += ns;
            *slices += n;
        }
        if (fp)
            fclose(fp);
    }
    if (d)
        closedir(d);
    return sum;
}

static uint64_t self_cpu_ns(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000ull +
           (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000ull;
}

/* Per request, in us, and the copies' GB/s: what each part of a round cost. */
static void phases_print(const struct config *cfg, const struct phases *p)
{
    double n = cfg->requests * 1e3, bytes = (double)cfg->obj * cfg->per * cfg->requests;
    printf("  store: prepare %.1f, copy %.1f (%.2f GB/s, %ld faults), commit %.1f us;"
           " retrieve: lookup %.1f, wait %.1f, prepare %.1f, copy %.1f (%.2f GB/s, %ld faults), commit %.1f us\n",
           p->ns[PH_S_PREP] / n, p->ns[PH_S_COPY] / n, bytes / (double)(p->ns[PH_S_COPY] + 1), p->store_faults,
           p->ns[PH_S_COMMIT] / n, p->ns[PH_R_LOOKUP] / n, p->ns[PH_R_WAIT] / n, p->ns[PH_R_PREP] / n,
           p->ns[PH_R_COPY] / n, bytes / (double)(p->ns[PH_R_COPY] + 1), p->retrieve_faults, p->ns[PH_R_COMMIT] / n);
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
    /* piped: the scheduler's thread starts its LOOKUPs when every store is committed */
    pthread_barrier_init(&sh.stored, NULL, (unsigned)cfg->workers + (cfg->depth > 0 ? 1u : 0u));
    if ((cfg->depth > 0)) {
        int rc = lmcd_client_open(url, LMCD_PROFILE_2609, LMCD_FORM_POSITIONAL, &sh.sched);
        if (rc) {
            fprintf(stderr, "bench_ed: client: %s\n", lmcd_strerror(rc));
            exit(1);
        }
        lmcd_client_set_timeout(sh.sched, 20000);
    }
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
    struct phases store_ph = { 0 }, retrieve_ph = { 0 }; /* worker 0's, in the best rounds */
    bool verbose = getenv("LMCD_BENCH_VERBOSE") != NULL;
    uint64_t cpu_lmcd = 0, cpu_self = 0, slices_lmcd = 0, wall0 = 0; /* at the start of round STEADY */
    struct base_worker bw[MAX_WORKERS];
    baseline_setup(cfg, bw);
    for (int r = 0; r < cfg->rounds; r++) {
        /* the baseline round by round with lmcd's, so load from elsewhere
         * falls on both sides alike */
        baseline_round(cfg, bw, &bs, &br);
        sh.round = r;
        sh.looked_up = 0;
        if (r == STEADY) {
            cpu_lmcd = proc_cpu_ns(lmcd.pid, &slices_lmcd);
            cpu_self = self_cpu_ns();
            wall0 = clock_mono_ns();
        }
        for (int w = 0; w < cfg->workers; w++)
            if (pthread_create(&wk[w].th, NULL, worker_run, &wk[w]))
                exit(1);
        pthread_t sched;
        if ((cfg->depth > 0) && pthread_create(&sched, NULL, sched_start, &sh))
            exit(1);
        if ((cfg->depth > 0))
            pthread_join(sched, NULL);
        uint64_t s = 0, g = 0;
        for (int w = 0; w < cfg->workers; w++) {
            pthread_join(wk[w].th, NULL);
            s = wk[w].store_ns > s ? wk[w].store_ns : s;
            g = wk[w].retrieve_ns > g ? wk[w].retrieve_ns : g;
        }
        if (sh.failed)
            exit(1);
        if (verbose) {
            printf("    round %d: store %.2f GB/s, retrieve %.2f GB/s\n", r, bytes / (double)s, bytes / (double)g);
            phases_print(cfg, &wk[0].ph);
        }
        if (r == 0) {
            fresh = bytes / (double)s;
        } else if (r >= STEADY && bytes / (double)s > store) {
            store = bytes / (double)s;
            store_ph = wk[0].ph;
        }
        if (r && bytes / (double)g > retrieve) {
            retrieve = bytes / (double)g;
            retrieve_ph = wk[0].ph;
        }
    }
    /* CPU per request (store + retrieve, all workers) over rounds STEADY..:
     * lmcd's threads, and this process's (workers with their copies and
     * checks, ZeroMQ I/O threads, the baseline rounds' copies) */
    double reqs = (double)(cfg->rounds - STEADY) * cfg->requests * cfg->workers;
    uint64_t slices_end;
    double cpu_l = (double)(proc_cpu_ns(lmcd.pid, &slices_end) - cpu_lmcd) / reqs / 1e3;
    double slices_l = (double)(slices_end - slices_lmcd) / reqs;
    double cpu_s = (double)(self_cpu_ns() - cpu_self) / reqs / 1e3;
    /* how busy the machine's CPUs were over those rounds (lmcd and this
     * process only): near 100% the figures are bound by CPU time, not by
     * waiting */
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    double busy = 100.0 * (cpu_l + cpu_s) * reqs * 1e3 / ((double)(clock_mono_ns() - wall0) * (double)(ncpu > 0 ? ncpu : 1));
    for (int w = 0; w < cfg->workers; w++) {
        lmcd_unregister_ed(wk[w].c, sh.base_id + w);
        lmcd_client_close(wk[w].c);
        if (w == 0 || map_each)
            munmap(wk[w].base, wk[w].pool);
        munmap(wk[w].src, cfg->obj);
        munmap(wk[w].out, cfg->obj * (size_t)cfg->per);
    }
    if (sh.sched)
        lmcd_client_close(sh.sched);
    int st = bench_proc_stop(&lmcd, 10000);
    if (st != 0)
        fprintf(stderr, "bench_ed: lmcd exited with status 0x%x on SIGTERM\n", st);

    baseline_free(cfg, bw);
    char name[128], size[48];
    snprintf(size, sizeof(size), "%s%s", cfg->obj >= (32u << 20) ? "32 MiB" : "1 MiB",
             cfg->per > 1 ? " x16 per request" : "");
    const char *ws = cfg->workers > 1 ? ((cfg->depth > 0) ? "s, pipelined" : "s") : ((cfg->depth > 0) ? ", pipelined" : "");
    printf("  %s objects, %d worker%s, %d requests x %d rounds (GB/s; memcpy in brackets)\n", size, cfg->workers, ws,
           cfg->requests, cfg->rounds);
    printf("    store, fresh L1 %7.2f (%6.2f) %5.2fx   store %7.2f (%6.2f) %5.2fx   retrieve %7.2f (%6.2f) %5.2fx\n",
           fresh, bs, fresh / bs, store, bs, store / bs, retrieve, br, retrieve / br);
    printf("    CPU per request (a store and a retrieve) from round %d on: lmcd %.1f us (its threads put on a CPU "
           "%.1f times), bench process %.1f us; the %ld CPUs %.0f%% busy with both\n",
           STEADY, cpu_l, slices_l, cpu_s, ncpu, busy);
    printf("    best store round, worker 0:");
    phases_print(cfg, &store_ph);
    printf("    best retrieve round, worker 0:");
    phases_print(cfg, &retrieve_ph);
    if (!(cfg->depth > 0)) { /* a fresh L1 is the first touch of every page either way */
        snprintf(name, sizeof(name), "ed store %s, %d worker%s, fresh L1", size, cfg->workers, ws);
        bench_report(name, "GB/s", fresh, "memcpy", bs, true);
    }
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
     * 2 = 1 MiB x16 per request, 3 = 1 MiB pipelined, 4 = 32 MiB pipelined;
     * W workers), for profiling */
    const char *only = getenv("LMCD_BENCH_ED_ONLY");
    int only_h = -1, only_w = -1;
    if (only && sscanf(only, "%d,%d", &only_h, &only_w) != 2)
        only_h = only_w = -1;
    static const int64_t hidden[] = { 32, 1024 }; /* 1 MiB, 32 MiB objects */
    for (int h = 0; h < 5; h++) {
        for (int workers = 1; workers <= MAX_WORKERS; workers++) {
            /* h == 2: 1 MiB objects, 16 chunks per request (a 4K-token range, as
             * vLLM stores a request's new chunks in one PREPARE_STORE) */
            if (only_h >= 0 && (h != only_h || workers != only_w))
                continue;
            /* pipelined: enough PREPAREs in flight to cover a round trip
             * (100-300 us here) with copies: 4 of 1 MiB, 1 of 32 MiB (L1
             * keeps 64 MiB of slack beyond two rounds) */
            struct config cfg = { .workers = workers, .hidden = hidden[h == 1 || h == 4], .per = h == 2 ? 16 : 1,
                                  .depth = h == 3 ? 4 : h == 4 ? 1 : 0 };
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
