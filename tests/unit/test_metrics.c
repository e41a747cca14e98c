/* src/metrics: per-thread shards summed at scrape, shards kept across
 * thread exits, label rows and their cap, histograms and quantiles, the
 * text renderer. Each Criterion test runs in its own process, so the
 * process-wide registry starts empty in every test. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics/metrics.h"

#define THREADS 4
#define ADDS 100000

static void *adder(void *arg)
{
    (void)arg;
    for (int i = 0; i < ADDS; i++) {
        metrics_add(MET_REPLIES, 1);
        metrics_add(MET_REQUESTS + 3, 2);
    }
    struct met_row *r = metrics_row("m", 1, "salt", 4);
    metrics_row_add(r, MET_ROW_L1_READ, 5);
    metrics_observe_ns(MET_H_OP_LATENCY + 3, 30000); /* 30 us */
    return NULL;
}

Test(metrics, threads_sum_and_exited_shards_keep_counting)
{
    pthread_t t[THREADS];
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < THREADS; i++)
            cr_assert_eq(pthread_create(&t[i], NULL, adder, NULL), 0);
        for (int i = 0; i < THREADS; i++)
            pthread_join(t[i], NULL);
    }
    /* two rounds of threads: the second adopted the first's shards */
    cr_assert_eq(metrics_sum(MET_REPLIES), 2ull * THREADS * ADDS);
    cr_assert_eq(metrics_sum(MET_REQUESTS + 3), 4ull * THREADS * ADDS);
    cr_assert_eq(metrics_sum(MET_REQUESTS + 4), 0);
    cr_assert_eq(metrics_row_sum(MET_ROW_L1_READ), 2ull * THREADS * 5);
    struct met_hist_sum h;
    metrics_hist_sum(MET_H_OP_LATENCY + 3, &h);
    cr_assert_eq(h.count, 2 * THREADS);
    cr_assert_eq(h.bucket[2], 2 * THREADS, "30 us falls in (25 us, 50 us]");
    cr_assert_float_eq(h.sum, 2 * THREADS * 30e-6, 1e-12);
}

Test(metrics, concurrent_scrapes_never_tear)
{
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, adder, NULL);
    uint64_t last = 0;
    for (int i = 0; i < 200; i++) { /* monotonic while the adders run */
        uint64_t v = metrics_sum(MET_REPLIES);
        cr_assert_geq(v, last);
        last = v;
    }
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    cr_assert_eq(metrics_sum(MET_REPLIES), 2ull * ADDS);
}

Test(metrics, rows_are_per_label_pair_and_capped)
{
    struct met_row *a = metrics_row("model", 5, "", 0);
    cr_assert_eq(metrics_row("model", 5, "", 0), a, "same pair, same row");
    cr_assert_neq(metrics_row("model", 5, "s", 1), a);
    cr_assert_str_eq(metrics_row("a\nb\x80", 4, "", 0)->model, "a?b?");
    for (int i = 0; i < 3 * MET_MAX_ROWS; i++) {
        char salt[16];
        int n = snprintf(salt, sizeof(salt), "s%d", i);
        metrics_row_add(metrics_row("m", 1, salt, (size_t)n), MET_ROW_LOOKUPS, 1);
    }
    cr_assert_eq(metrics_row_sum(MET_ROW_LOOKUPS), 3 * MET_MAX_ROWS, "nothing lost past the cap");
    struct met_row *other = metrics_row("new", 3, "pair", 4);
    cr_assert_str_eq(other->model, "_other");
    cr_assert_str_eq(other->salt, "_other");
}

Test(metrics, quantiles_interpolate_like_prometheus)
{
    struct met_hist_sum h = { 0 };
    h.bucket[6] = 50; /* (500 us, 1 ms] */
    h.bucket[7] = 50; /* (1 ms, 2.5 ms] */
    h.count = 100;
    cr_assert_float_eq(metrics_quantile(&h, MET_B_SECONDS, 0.5), 1e-3, 1e-12);
    cr_assert_float_eq(metrics_quantile(&h, MET_B_SECONDS, 0.25), 0.75e-3, 1e-12);
    cr_assert_float_eq(metrics_quantile(&h, MET_B_SECONDS, 0.99), 1e-3 + 1.5e-3 * 0.98, 1e-12);
    struct met_hist_sum inf = { 0 };
    inf.bucket[MET_NBUCKETS] = 3;
    inf.count = 3;
    cr_assert_float_eq(metrics_quantile(&inf, MET_B_SECONDS, 0.5), 10.0, 1e-12, "+Inf: highest bound");
    struct met_hist_sum none = { 0 };
    cr_assert_float_eq(metrics_quantile(&none, MET_B_SECONDS, 0.5), 0.0, 1e-12);
    cr_assert_float_eq(metrics_bounds(MET_B_SECONDS)[0], 10e-6, 1e-15);
    cr_assert_float_eq(metrics_bounds(MET_B_SECONDS)[MET_NBUCKETS - 1], 10.0, 1e-12);
}

static bool labels(void *ctx, enum met_label kind, unsigned i, char *buf, size_t cap)
{
    (void)ctx;
    if (kind != MET_L_OP || i != 3)
        return false;
    snprintf(buf, cap, "op=\"three\"");
    return true;
}

static char *render(void)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    metrics_render(f, labels, NULL);
    fclose(f);
    return text;
}

Test(metrics, render_families_and_l2_gating)
{
    metrics_add(MET_REQUESTS + 3, 7);
    metrics_observe_ns(MET_H_OP_LATENCY + 3, 2000000000ull); /* 2 s */
    metrics_row_add(metrics_row("m\"x", 3, "t", 1), MET_ROW_L1_WRITE, 4);
    metrics_add(MET_L2_PREFETCH_HIT, 9);
    char *t = render();
    cr_assert(strstr(t, "# TYPE lmcd_requests_total counter\nlmcd_requests_total{op=\"three\"} 7\n"), "%s", t);
    cr_assert(strstr(t, "lmcache_mp_l1_write_chunks_total{cache_salt=\"t\"} 4\n"), "%s", t);
    cr_assert(strstr(t, "lmcd_request_duration_seconds_bucket{op=\"three\",le=\"2.5\"} 1\n"), "%s", t);
    cr_assert(strstr(t, "lmcd_request_duration_seconds_bucket{op=\"three\",le=\"1\"} 0\n"), "%s", t);
    cr_assert(strstr(t, "lmcd_request_duration_seconds_count{op=\"three\"} 1\n"), "%s", t);
    cr_assert_null(strstr(t, "lmcache_mp_l2_"), "no adapter registered: no L2 family");
    free(t);
    metrics_l2_register(1, "fs");
    metrics_add(MET_L2_STORE_COMPLETED + 1, 2);
    metrics_observe(MET_H_L2_STORE_THROUGHPUT + 1, 3.0);
    t = render();
    cr_assert(strstr(t, "lmcache_mp_l2_prefetch_hit_chunks_total 9\n"), "%s", t);
    cr_assert(strstr(t, "lmcache_mp_l2_store_completed_requests_total{l2_name=\"fs\"} 2\n"), "%s", t);
    cr_assert_null(strstr(t, "l2_name=\"\""), "unregistered adapters have no series");
    cr_assert(strstr(t, "lmcache_mp_l2_store_throughput_GB_per_second_bucket{l2_name=\"fs\",le=\"4\"} 1\n"), "%s", t);
    free(t);
}

Test(metrics, render_before_any_event)
{
    /* a fresh process: no shard, no row; lazy families are absent, the rest valid */
    char *t = render();
    cr_assert_null(strstr(t, "lmcache_mp_lookup"), "%s", t);
    cr_assert(strstr(t, "# TYPE lmcd_requests_total counter\n"), "%s", t);
    free(t);
}
