/*
 * bench_metrics: what counting costs on the request path, and that it
 * costs the same with two threads counting at once (no lock, no cache line
 * written by two threads: src/metrics/metrics.h).
 *
 *   lmcd        metrics_add() of the request counter the loop bumps per
 *               request (lmcache_mp_requests_total{op=...}), and
 *               metrics_observe_ns() of the latency histogram it observes
 *               per reply, called from THREADS threads at once
 *   baseline    the same counts kept the usual simple ways, by the same
 *               threads at once: one shared counter with an atomic add
 *               (relaxed fetch_add: one cache line every thread writes),
 *               and a histogram (same buckets, same bucket search) under
 *               one mutex
 *
 * Each thread does ITERS operations; best of ROUNDS rounds, the two sides
 * interleaved; ns per operation of one thread. After every lmcd round the
 * registry's sum must have grown by exactly THREADS x ITERS (and the
 * histogram's count likewise), or the bench exits 1: a lost count is a
 * broken counter, not a slow one.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "metrics/metrics.h"
#include "util/clock.h"
#include "wire/wire.h"

#define THREADS 2
#define ROUNDS 5

enum kind { K_ADD, K_ATOMIC, K_OBSERVE, K_LOCKED_HIST };

static long iters;
static pthread_barrier_t start;
static _Atomic uint64_t shared_counter;
static pthread_mutex_t hist_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t hist_buckets[MET_NBUCKETS + 1], hist_count; /* hist_mu */
static double hist_total;                                   /* hist_mu */
static const double *bounds;

struct arg {
    enum kind kind;
    uint64_t ns;
};

/* The bucket search metrics.c does: the first bound >= v, else +Inf. */
static unsigned bucket_of(double v)
{
    unsigned i = 0;
    while (i < MET_NBUCKETS && v > bounds[i])
        i++;
    return i;
}

static void *run(void *p)
{
    struct arg *a = p;
    const unsigned counter = MET_REQUESTS + (unsigned)WIRE_OP_LOOKUP;
    const unsigned hist = MET_H_OP_LATENCY + (unsigned)WIRE_OP_LOOKUP;
    metrics_add(counter, 0); /* attach this thread's shard outside the timing */
    pthread_barrier_wait(&start);
    uint64_t t0 = clock_mono_ns();
    switch (a->kind) {
    case K_ADD:
        for (long i = 0; i < iters; i++)
            metrics_add(counter, 1);
        break;
    case K_ATOMIC:
        for (long i = 0; i < iters; i++)
            atomic_fetch_add_explicit(&shared_counter, 1, memory_order_relaxed);
        break;
    case K_OBSERVE: /* latencies of 1..64 us, spread over a few buckets */
        for (long i = 0; i < iters; i++)
            metrics_observe_ns(hist, 1000u + ((uint64_t)i & 63u) * 1000u);
        break;
    case K_LOCKED_HIST:
        for (long i = 0; i < iters; i++) {
            double v = (double)(1000u + ((uint64_t)i & 63u) * 1000u) / 1e9;
            pthread_mutex_lock(&hist_mu);
            hist_buckets[bucket_of(v)]++;
            hist_count++;
            hist_total += v;
            pthread_mutex_unlock(&hist_mu);
        }
        break;
    }
    a->ns = clock_mono_ns() - t0;
    return NULL;
}

/* ns per operation of one thread, THREADS threads at once. */
static double round_ns(enum kind kind)
{
    pthread_t t[THREADS];
    struct arg a[THREADS];
    pthread_barrier_init(&start, NULL, THREADS);
    for (int i = 0; i < THREADS; i++) {
        a[i] = (struct arg){ .kind = kind };
        if (pthread_create(&t[i], NULL, run, &a[i])) {
            fprintf(stderr, "bench_metrics: pthread_create failed\n");
            exit(1);
        }
    }
    uint64_t worst = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        if (a[i].ns > worst)
            worst = a[i].ns;
    }
    pthread_barrier_destroy(&start);
    return (double)worst / (double)iters;
}

static double best(double cur, double v) { return cur == 0 || v < cur ? v : cur; }

static void check(const char *what, uint64_t before, uint64_t after)
{
    uint64_t want = (uint64_t)THREADS * (uint64_t)iters;
    if (after - before != want) {
        fprintf(stderr, "bench_metrics: %s grew by %llu, not %llu\n", what, (unsigned long long)(after - before),
                (unsigned long long)want);
        exit(1);
    }
}

int main(void)
{
    iters = bench_quick() ? 1000000 : 10000000;
    bounds = metrics_bounds(MET_B_SECONDS);
    const unsigned counter = MET_REQUESTS + (unsigned)WIRE_OP_LOOKUP;
    const unsigned hist = MET_H_OP_LATENCY + (unsigned)WIRE_OP_LOOKUP;
    double add = 0, atom = 0, obs = 0, locked = 0;
    for (int r = 0; r < ROUNDS; r++) {
        uint64_t c0 = metrics_sum(counter);
        add = best(add, round_ns(K_ADD));
        check("the request counter", c0, metrics_sum(counter));
        atom = best(atom, round_ns(K_ATOMIC));
        struct met_hist_sum h0, h1;
        metrics_hist_sum(hist, &h0);
        obs = best(obs, round_ns(K_OBSERVE));
        metrics_hist_sum(hist, &h1);
        check("the latency histogram's count", h0.count, h1.count);
        locked = best(locked, round_ns(K_LOCKED_HIST));
    }
    if (atomic_load(&shared_counter) != (uint64_t)ROUNDS * THREADS * (uint64_t)iters) {
        fprintf(stderr, "bench_metrics: the shared counter lost counts\n");
        exit(1);
    }
    printf("  %d threads counting at once, %ld operations each, best of %d rounds (ns per operation)\n", THREADS,
           iters, ROUNDS);
    printf("    counter add     lmcd %6.2f   shared atomic add %6.2f   %.2fx\n", add, atom, add / atom);
    printf("    latency observe lmcd %6.2f   histogram under a mutex %6.2f   %.2fx\n", obs, locked, obs / locked);
    bench_report("metrics counter add, 2 threads", "ns/op", add, "shared atomic add", atom, false);
    bench_report("metrics latency observe, 2 threads", "ns/op", obs, "histogram under a mutex", locked, false);
    return 0;
}
