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
#include "server/server.h"
#include "util/clock.h"
#include "version.h"

static const char *const bad_names[] = {
#define SRV_BAD_NAME_(sym, name, text) name,
    SRV_BAD_KINDS(SRV_BAD_NAME_)
#undef SRV_BAD_NAME_
};

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
    json_t *req = json_object();
    for (int op = 1; op < WIRE_OP_COUNT; op++) {
        uint64_t n = atomic_load(&s->stats.requests[op]);
        if (n)
            json_object_set_new(req, wire_op_name((enum wire_op)op), json_integer((json_int_t)n));
    }
    json_t *bad = json_object();
    for (int k = 0; k < SRV_BAD_COUNT; k++)
        json_object_set_new(bad, bad_names[k], json_integer((json_int_t)atomic_load(&s->stats.bad[k])));
    json_object_set_new(
        st, "server",
        json_pack("{s:s, s:s, s:s, s:f, s:o, s:I, s:o, s:{s:i, s:i, s:I}}", "name", "lmcd", "version", LMCD_VERSION,
                  "protocol", wire_profile_name(s->profile), "uptime_seconds",
                  (double)(clock_mono_ns() - s->started_ns) / 1e9, "requests", req, "replies",
                  (json_int_t)atomic_load(&s->stats.replies), "bad_requests", bad, "pools", "max_gpu_workers",
                  s->cfg->mp.max_gpu_workers, "max_cpu_workers", s->cfg->mp.max_cpu_workers, "in_flight", (json_int_t)atomic_load(&s->in_flight)));
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
    return st;
}

static void family(FILE *b, const char *name, const char *type, const char *help)
{
    fprintf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Gauges from the L1 block of the engine status, under LMCache's names. */
static void l1_gauges(FILE *b, json_t *st)
{
    json_t *l1 = json_object_get(json_object_get(st, "storage_manager"), "l1_manager");
    static const struct { const char *key, *name, *type, *help; } g[] = {
        { "memory_used_bytes", "lmcache_mp_l1_memory_usage_bytes", "gauge", "L1 bytes in use" },
        { "memory_total_bytes", "lmcd_l1_memory_total_bytes", "gauge", "L1 capacity in bytes" },
        { "memory_usage_ratio", "lmcache_mp_l1_usage_ratio", "gauge", "L1 used / total" },
        { "total_object_count", "lmcd_l1_objects", "gauge", "objects in L1" },
        { "write_locked_count", "lmcache_mp_l1_staging_objects", "gauge", "reserved, unpublished objects" },
        { "read_locked_count", "lmcd_l1_read_locked_objects", "gauge", "read-locked objects" },
        { "evicted_count", "lmcache_mp_l1_evicted_total", "counter", "objects evicted from L1" },
        { "demand_evicted_count", "lmcd_l1_demand_evicted_total", "counter", "objects evicted to make room on demand" },
        { "allocation_failures", "lmcache_mp_l1_allocation_failure_total", "counter", "reservations that found no room" },
    };
    if (!l1)
        return;
    for (size_t i = 0; i < sizeof(g) / sizeof(g[0]); i++) {
        json_t *v = json_object_get(l1, g[i].key);
        if (!json_is_number(v))
            continue;
        family(b, g[i].name, g[i].type, g[i].help);
        fprintf(b, "%s %.17g\n", g[i].name, json_number_value(v));
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
        { "store", "avg_latency_ms", "lmcd_l2_store_latency_avg_ms", "gauge", "Mean L2 store task latency." },
        { "lookup", "avg_latency_ms", "lmcd_l2_lookup_latency_avg_ms", "gauge", "Mean L2 lookup task latency." },
        { "load", "avg_latency_ms", "lmcd_l2_load_latency_avg_ms", "gauge", "Mean L2 load task latency." },
    };
    if (!json_array_size(ads))
        return;
    for (size_t i = 0; i < sizeof(g) / sizeof(g[0]); i++) {
        family(b, g[i].name, g[i].type, g[i].help);
        size_t k;
        json_t *a;
        json_array_foreach(ads, k, a)
        {
            json_t *v = json_object_get(g[i].obj ? json_object_get(a, g[i].obj) : a, g[i].key);
            fprintf(b, "%s{adapter=\"%s\",type=\"%s\"} %.17g\n", g[i].name,
                    json_string_value(json_object_get(a, "name")), json_string_value(json_object_get(a, "type")),
                    json_number_value(v));
        }
    }
}

char *server_metrics_text(struct server *s)
{
    char *text = NULL;
    size_t len = 0;
    FILE *b = open_memstream(&text, &len);
    if (!b)
        return NULL;
    family(b, "lmcd_requests_total", "counter", "Requests decoded, by operation.");
    for (int op = 1; op < WIRE_OP_COUNT; op++)
        fprintf(b, "lmcd_requests_total{op=\"%s\"} %llu\n", wire_op_name((enum wire_op)op),
             (unsigned long long)atomic_load(&s->stats.requests[op]));
    family(b, "lmcd_replies_total", "counter", "Reply messages sent.");
    fprintf(b, "lmcd_replies_total %llu\n", (unsigned long long)atomic_load(&s->stats.replies));
    family(b, "lmcd_bad_requests_total", "counter", "Requests dropped as malformed or unserved, by kind.");
    for (int k = 0; k < SRV_BAD_COUNT; k++)
        fprintf(b, "lmcd_bad_requests_total{kind=\"%s\"} %llu\n", bad_names[k],
             (unsigned long long)atomic_load(&s->stats.bad[k]));
    family(b, "lmcd_refused_total", "counter", "Connections and ops refused by access control, by kind.");
    static const char *const refused_names[] = {
#define SRV_REFUSED_NAME_(sym, name, text) name,
        SRV_REFUSED_KINDS(SRV_REFUSED_NAME_)
#undef SRV_REFUSED_NAME_
    };
    for (int k = 0; k < SRV_REFUSED_COUNT; k++)
        fprintf(b, "lmcd_refused_total{kind=\"%s\"} %llu\n", refused_names[k],
                (unsigned long long)atomic_load(&s->stats.refused[k]));
    family(b, "lmcd_block_allocation_records_total", "counter", "REPORT_BLOCK_ALLOCATION records received.");
    fprintf(b, "lmcd_block_allocation_records_total %llu\n",
         (unsigned long long)atomic_load(&s->stats.block_allocation_records));
    json_t *st = engine_status_json(s->engine);
    family(b, "lmcd_shed_requests_total", "counter",
           "Well-formed requests answered with their safe reply instead of run, by limit reached.");
    for (int k = 0; k < SRV_SHED_COUNT; k++)
        fprintf(b, "lmcd_shed_requests_total{reason=\"%s\"} %llu\n", shed_names[k],
                (unsigned long long)atomic_load(&s->stats.shed[k]));
    for (size_t k = 0; st && k < sizeof(engine_refusals) / sizeof(engine_refusals[0]); k++)
        fprintf(b, "lmcd_shed_requests_total{reason=\"%s\"} %lld\n", engine_refusals[k].reason,
                (long long)json_integer_value(
                    json_object_get(json_object_get(st, "counters"), engine_refusals[k].counter)));
    if (st) {
        family(b, "lmcache_mp_active_prefetch_jobs", "gauge", "Lookup jobs in flight.");
        fprintf(b, "lmcache_mp_active_prefetch_jobs %lld\n",
             (long long)json_integer_value(json_object_get(st, "active_prefetch_jobs")));
        family(b, "lmcd_active_sessions", "gauge", "Request sessions held.");
        fprintf(b, "lmcd_active_sessions %lld\n", (long long)json_integer_value(json_object_get(st, "active_sessions")));
        l1_gauges(b, st);
        l2_metrics(b, st);
        json_decref(st);
    }
    family(b, "lmcd_uptime_seconds", "gauge", "Seconds since start.");
    fprintf(b, "lmcd_uptime_seconds %.3f\n", (double)(clock_mono_ns() - s->started_ns) / 1e9);
    fclose(b); /* sets text and len */
    return text ? text : strdup("");
}
