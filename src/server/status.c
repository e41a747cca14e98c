/*
 * status.c: what HTTP shows of the server: /status, /metrics, /config,
 * /conf, /version. Every function here reads atomics, the read-only config
 * or engine snapshots, so libmicrohttpd's threads may call them any time.
 */
#define LOG_MODULE "lmcd.server"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "metrics/metrics.h"
#include "server/server.h"
#include "util/clock.h"
#include "version.h"

static const char *const bad_names[] = {
#define SRV_BAD_NAME_(sym, name, text) name,
    SRV_BAD_KINDS(SRV_BAD_NAME_)
#undef SRV_BAD_NAME_
};

/* Requests, replies and latency by operation, for /status (the dashboard
 * and `lmcd-cli top` compute rates and windowed quantiles from these). */
static json_t *ops_json(void)
{
    json_t *req = json_object(), *lat = json_object();
    for (int op = 1; op < WIRE_OP_COUNT; op++) {
        const char *name = wire_op_name((enum wire_op)op);
        uint64_t n = metrics_sum(MET_REQUESTS + (unsigned)op);
        if (n)
            json_object_set_new(req, name, json_integer((json_int_t)n));
        struct met_hist_sum h;
        metrics_hist_sum(MET_H_OP_LATENCY + (unsigned)op, &h);
        if (!h.count)
            continue;
        json_t *b = json_array();
        for (unsigned k = 0; k <= MET_NBUCKETS; k++)
            json_array_append_new(b, json_integer((json_int_t)h.bucket[k]));
        json_object_set_new(lat, name,
                            json_pack("{s:I, s:f, s:f, s:f, s:o}", "count", (json_int_t)h.count, "sum_seconds", h.sum,
                                      "p50_seconds", metrics_quantile(&h, MET_B_SECONDS, 0.5), "p99_seconds",
                                      metrics_quantile(&h, MET_B_SECONDS, 0.99), "buckets", b));
    }
    json_t *le = json_array();
    const double *bounds = metrics_bounds(MET_B_SECONDS);
    for (unsigned k = 0; k < MET_NBUCKETS; k++)
        json_array_append_new(le, json_real(bounds[k]));
    return json_pack("{s:o, s:{s:o, s:o}}", "requests", req, "latency", "buckets_le", le, "ops", lat);
}

static const char *const shed_names[] = {
#define SRV_SHED_NAME_(sym, name, text) name,
    SRV_SHED_KINDS(SRV_SHED_NAME_)
#undef SRV_SHED_NAME_
};

/* The engine's own refusals, under the same metric (counters in its status). */
static const struct { const char *counter, *reason; } engine_refusals[] = {
    { "refused_sessions", "sessions" },
    { "refused_session_bytes", "session_bytes" },
};

json_t *server_status_json(struct server *s)
{
    json_t *st = engine_status_json(s->engine);
    if (!st)
        st = json_object();
    json_t *ops = ops_json();
    json_t *bad = json_object();
    for (int k = 0; k < SRV_BAD_COUNT; k++)
        json_object_set_new(bad, bad_names[k], json_integer((json_int_t)metrics_sum(MET_BAD_INPUT + (unsigned)k)));
    json_object_set_new(
        st, "server",
        json_pack("{s:s, s:s, s:s, s:f, s:O, s:I, s:o, s:O, s:{s:i, s:i, s:I}}", "name", "lmcd", "version",
                  LMCD_VERSION, "protocol", wire_profile_name(s->profile), "uptime_seconds",
                  (double)(clock_mono_ns() - s->started_ns) / 1e9, "requests", json_object_get(ops, "requests"),
                  "replies", (json_int_t)metrics_sum(MET_REPLIES), "bad_requests", bad, "latency",
                  json_object_get(ops, "latency"), "pools", "max_gpu_workers", s->cfg->mp.max_gpu_workers,
                  "max_cpu_workers", s->cfg->mp.max_cpu_workers, "in_flight",
                  (json_int_t)atomic_load(&s->in_flight)));
    json_decref(ops);
    json_t *shed = json_object();
    for (int k = 0; k < SRV_SHED_COUNT; k++)
        json_object_set_new(shed, shed_names[k], json_integer((json_int_t)atomic_load(&s->stats.shed[k])));
    json_t *srv = json_object_get(st, "server");
    json_object_set_new(srv, "shed_requests", shed);
    json_object_set_new(json_object_get(srv, "pools"), "in_flight_bytes",
                        json_integer((json_int_t)atomic_load(&s->in_flight_bytes)));
    json_t *healthy = json_object_get(st, "is_healthy");
    bool ok = atomic_load(&s->healthy) && (!healthy || json_is_true(healthy));
    json_object_set_new(st, "is_healthy", json_boolean(ok));
    json_object_set_new(st, "gpu", srv_gpu_status_json(s));
    return st;
}

/* Label text of the server's slotted families (src/metrics renders). */
static bool label_of(void *ctx, enum met_label kind, unsigned i, char *buf, size_t cap)
{
    (void)ctx;
    switch (kind) {
    case MET_L_OP:
        if (i == 0 || i >= WIRE_OP_COUNT)
            return false;
        snprintf(buf, cap, "op=\"%s\"", wire_op_name((enum wire_op)i));
        return true;
    case MET_L_KIND:
        if (i >= SRV_BAD_COUNT)
            return false;
        snprintf(buf, cap, "kind=\"%s\"", bad_names[i]);
        return true;
    case MET_L_REFUSED: {
        static const char *const refused_names[] = {
#define SRV_REFUSED_NAME_(sym, name, text) name,
            SRV_REFUSED_KINDS(SRV_REFUSED_NAME_)
#undef SRV_REFUSED_NAME_
        };
        if (i >= SRV_REFUSED_COUNT)
            return false;
        snprintf(buf, cap, "kind=\"%s\"", refused_names[i]);
        return true;
    }
    case MET_L_ERROR: {
        /* decode errors are counted by -rc - WIRE_EFRAMES (src/metrics shows
         * only the codes seen; it calls us under its lock: no metrics_* here) */
        const char *e = wire_strerror(-(int)(i + WIRE_EFRAMES));
        size_t n = 0;
        n += (size_t)snprintf(buf, cap, "error=\"");
        for (; *e && n + 3 < cap; e++) /* messages are plain ASCII; keep them label-safe */
            buf[n++] = (*e == '"' || *e == '\\') ? '\'' : *e;
        snprintf(buf + n, cap - n, "\"");
        return true;
    }
    case MET_L_REASON:
        snprintf(buf, cap, "reason=\"%s\"", i == 0 ? "l1_oom" : "not_found");
        return true;
    default:
        return false;
    }
}

static void gauge(FILE *b, const char *name, const char *type, const char *help, double v)
{
    metrics_family(b, name, type, help);
    fprintf(b, "%s %.17g\n", name, v);
}

/* Gauges read at scrape from the engine's status, under LMCache's names
 * where it has the series. */
static void engine_gauges(FILE *b, json_t *st)
{
    json_t *sm = json_object_get(st, "storage_manager");
    json_t *l1 = json_object_get(sm, "l1_manager");
    json_t *ev = json_object_get(sm, "l1_eviction_controller");
    static const struct { int from_ev; const char *key, *name, *type, *help; } g[] = {
        { 0, "memory_used_bytes", "lmcache_mp_l1_memory_usage_bytes", "gauge", "Bytes held in L1." },
        { 0, "memory_usage_ratio", "lmcache_mp_l1_usage_ratio", "gauge", "L1 used / total (0..1)." },
        { 0, "evicted_count", "lmcache_mp_l1_evicted_chunks_total", "counter",
          "Chunks evicted from L1 (background and on demand)." },
        { 1, "rounds", "lmcache_mp_l1_eviction_loop_ticks_total", "counter", "L1 eviction-loop iterations." },
        { 1, "rounds_triggered", "lmcache_mp_l1_eviction_loop_triggered_total", "counter",
          "L1 eviction-loop iterations at or above the watermark." },
        { 0, "memory_total_bytes", "lmcd_l1_memory_total_bytes", "gauge", "L1 capacity in bytes." },
        { 0, "total_object_count", "lmcd_l1_objects", "gauge", "Objects in L1 (published and reserved)." },
        { 0, "write_locked_count", "lmcd_l1_write_locked_objects", "gauge",
          "Reserved objects not yet published (write locks)." },
        { 0, "read_locked_count", "lmcd_l1_read_locked_objects", "gauge", "Objects with read-lock holders." },
        { 0, "pending_free_count", "lmcd_l1_pending_free_objects", "gauge",
          "Objects force-cleared while still held, freed at their last release." },
        { 0, "demand_evicted_count", "lmcd_l1_demand_evicted_total", "counter",
          "Objects evicted on demand to make room for a store." },
        { 0, "expired_reservations", "lmcd_l1_expired_reservations_total", "counter",
          "Write reservations dropped by their TTL (never committed)." },
        { 0, "expired_read_locks", "lmcd_l1_expired_read_locks_total", "counter",
          "Read locks that outlived --l1-read-ttl-seconds without being released." },
    };
    for (size_t i = 0; i < sizeof(g) / sizeof(g[0]); i++) {
        json_t *v = json_object_get(g[i].from_ev ? ev : l1, g[i].key);
        if (json_is_number(v))
            gauge(b, g[i].name, g[i].type, g[i].help, json_number_value(v));
    }
    gauge(b, "lmcache_mp_active_prefetch_jobs", "gauge", "Lookup jobs in flight.",
          (double)json_integer_value(json_object_get(st, "active_prefetch_jobs")));
    gauge(b, "lmcd_sessions", "gauge", "Request sessions held.",
          (double)json_integer_value(json_object_get(st, "active_sessions")));
    json_t *inst = json_object_get(st, "engine_driven_instances");
    size_t reaped = 0, i;
    json_t *w;
    json_array_foreach(inst, i, w) reaped += json_is_true(json_object_get(w, "reaped"));
    gauge(b, "lmcd_workers_registered", "gauge", "Engine-driven workers registered.", (double)json_array_size(inst));
    gauge(b, "lmcd_workers_reaped", "gauge", "Registered workers currently reaped (silent).", (double)reaped);
}

/* One series per plugin: its state as a label (value 1), its restarts. */
static void plugin_metrics(FILE *b, json_t *plugins)
{
    if (!json_array_size(plugins))
        return;
    size_t i;
    json_t *p;
    metrics_family(b, "lmcd_plugin_state", "gauge", "Runtime plugin state (1 for the current state).");
    json_array_foreach(plugins, i, p) {
        fputs("lmcd_plugin_state{plugin=", b);
        metrics_label_value(b, json_string_value(json_object_get(p, "path")) ?: "");
        fputs(",state=", b);
        metrics_label_value(b, json_string_value(json_object_get(p, "state")) ?: "");
        fputs("} 1\n", b);
    }
    static const struct { const char *key, *name, *help; } c[] = {
        { "restarts", "lmcd_plugin_restarts_total", "Runtime plugin restarts." },
        { "lines_dropped", "lmcd_plugin_output_lines_dropped_total", "Plugin output lines dropped (rate limit)." },
    };
    for (size_t k = 0; k < sizeof(c) / sizeof(c[0]); k++) {
        metrics_family(b, c[k].name, "counter", c[k].help);
        json_array_foreach(plugins, i, p) {
            fprintf(b, "%s{plugin=", c[k].name);
            metrics_label_value(b, json_string_value(json_object_get(p, "path")) ?: "");
            fprintf(b, "} %lld\n", (long long)json_integer_value(json_object_get(p, c[k].key)));
        }
    }
}

/* One family per L2 measure, one line per adapter (from l2_status_json). */
static void l2_metrics(FILE *b, json_t *st)
{
    json_t *ads = json_object_get(json_object_get(st, "storage_manager"), "l2_adapters");
    static const struct { const char *obj, *key, *name, *type, *help; } g[] = {
        { NULL, "total_bytes_used", "lmcd_l2_bytes", "gauge", "Bytes an L2 adapter holds (lmcd's accounting)." },
        { NULL, "total_capacity_bytes", "lmcd_l2_capacity_bytes", "gauge", "L2 adapter capacity (0 = unbounded)." },
        { NULL, "objects", "lmcd_l2_objects", "gauge", "Objects an L2 adapter holds." },
        { "lookup", "hits", "lmcd_l2_lookup_hits_total", "counter", "Keys found by L2 lookups." },
        { "lookup", "misses", "lmcd_l2_lookup_misses_total", "counter", "Keys L2 lookups did not find." },
        { "store", "keys", "lmcd_l2_stored_keys_total", "counter", "Keys written to L2." },
        { "store", "bytes", "lmcd_l2_stored_bytes_total", "counter", "Bytes written to L2." },
        { "load", "ok", "lmcd_l2_loaded_keys_total", "counter", "Keys loaded from L2." },
        { "load", "failed", "lmcd_l2_load_failures_total", "counter", "Keys whose L2 load failed." },
        { "load", "bytes", "lmcd_l2_loaded_bytes_total", "counter", "Bytes loaded from L2." },
        { NULL, "errors", "lmcd_l2_errors_total", "counter", "L2 tasks that failed as a whole." },
        { "store", "avg_latency_ms", "lmcd_l2_store_latency_avg_seconds", "gauge", "Mean L2 store task latency." },
        { "lookup", "avg_latency_ms", "lmcd_l2_lookup_latency_avg_seconds", "gauge", "Mean L2 lookup task latency." },
        { "load", "avg_latency_ms", "lmcd_l2_load_latency_avg_seconds", "gauge", "Mean L2 load task latency." },
    };
    if (!json_array_size(ads))
        return;
    for (size_t i = 0; i < sizeof(g) / sizeof(g[0]); i++) {
        metrics_family(b, g[i].name, g[i].type, g[i].help);
        size_t k;
        json_t *a;
        json_array_foreach(ads, k, a)
        {
            json_t *v = json_object_get(g[i].obj ? json_object_get(a, g[i].obj) : a, g[i].key);
            fprintf(b, "%s{adapter=\"%s\",type=\"%s\"} %.17g\n", g[i].name,
                    json_string_value(json_object_get(a, "name")), json_string_value(json_object_get(a, "type")),
                    /* /status keeps milliseconds; Prometheus wants base units */
                    json_number_value(v) / (strcmp(g[i].key, "avg_latency_ms") ? 1.0 : 1000.0));
        }
    }
}

char *server_metrics_text(struct server *s, json_t *plugins)
{
    char *text = NULL;
    size_t len = 0;
    FILE *b = open_memstream(&text, &len);
    if (!b)
        return NULL;
    metrics_render(b, label_of, s);
    json_t *st = engine_status_json(s->engine);
    metrics_family(b, "lmcd_shed_requests_total", "counter",
           "Well-formed requests answered with their safe reply instead of run, by limit reached.");
    for (int k = 0; k < SRV_SHED_COUNT; k++)
        fprintf(b, "lmcd_shed_requests_total{reason=\"%s\"} %llu\n", shed_names[k],
                (unsigned long long)atomic_load(&s->stats.shed[k]));
    for (size_t k = 0; st && k < sizeof(engine_refusals) / sizeof(engine_refusals[0]); k++)
        fprintf(b, "lmcd_shed_requests_total{reason=\"%s\"} %lld\n", engine_refusals[k].reason,
                (long long)json_integer_value(
                    json_object_get(json_object_get(st, "counters"), engine_refusals[k].counter)));
    if (st) {
        engine_gauges(b, st);
        l2_metrics(b, st);
        json_decref(st);
    }
    plugin_metrics(b, plugins);
    srv_gpu_metrics(b, s);
    gauge(b, "lmcd_requests_in_flight", "gauge", "Requests in the pools.", (double)atomic_load(&s->in_flight));
    gauge(b, "lmcd_uptime_seconds", "gauge", "Seconds since start.", (double)(clock_mono_ns() - s->started_ns) / 1e9);
    metrics_family(b, "lmcd_build_info", "gauge", "lmcd version and wire profile (always 1).");
    fprintf(b, "lmcd_build_info{version=\"%s\",protocol=\"%s\"} 1\n", LMCD_VERSION, wire_profile_name(s->profile));
    fclose(b); /* sets text and len */
    return text ? text : strdup("");
}
