/*
 * config.c: the flag table and everything derived from it.
 *
 * DESIGN: one row per flag (struct flag). A row knows where its value lives
 * in struct lmcd_config (offset), how to parse it from argv and from the
 * --config JSON tree (path), how to validate it, and its help text. The
 * parser, --help and the config-file reader all walk the same table, so a
 * new flag is one row. The aggregated JSON (config_to_json) is written out
 * by hand below because its key order is LMCache's, not the table's.
 */
#define LOG_MODULE "lmcd.config"
#include "server/config.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "l2/l2.h"
#include "transfer/transfer.h"
#include "util/log.h"
#include "util/netaddr.h"
#include "util/pyjson.h"
#include "version.h"

#define GIB (1024.0 * 1024.0 * 1024.0)

enum flag_type {
    F_STR,        /* char *, copied */
    F_STR_NULL,   /* char *, NULL by default ("unset") */
    F_CHOICE,     /* char *, one of choices */
    F_INT,        /* int, with [min,max] */
    F_INT64,      /* int64_t, with [min,max] */
    F_FLOAT,      /* double, with [min,max] */
    F_GB_BYTES,   /* float GiB on argv -> uint64_t bytes; bytes in JSON */
    F_BOOL_PAIR,  /* --x / --no-x */
    F_SET_TRUE,   /* flag without value: bool = true */
    F_SET_FALSE,  /* flag without value: bool = false */
    F_STR_LIST,   /* nargs '*': values up to the next --flag; last occurrence wins */
    F_JSON,       /* JSON text -> json_t * */
    F_JSON_APPEND,/* repeatable JSON object -> appended to a json array */
};

enum flag_group { G_MP, G_STORAGE, G_OBS, G_HTTP, G_LMCD };

struct flag {
    const char *name;      /* without leading "--" */
    enum flag_type type;
    size_t off;            /* offsetof(struct lmcd_config, ...) */
    enum flag_group group;
    const char *json_path; /* dotted path in the --config tree, or NULL */
    double min, max;       /* numeric bounds (inclusive) */
    const char *const *choices; /* F_CHOICE: NULL-terminated */
    const char *metavar;
    const char *help;
};

#define OFF(f) offsetof(struct lmcd_config, f)

static const char *const eviction_choices[] = { "LRU", "noop", NULL };
static const char *const hash_choices[] = { "blake3", "xxh3_128", NULL };
static const char *const engine_choices[] = { "default", NULL };
static const char *const transfer_mode_choices[] = { "auto", "lmcache_driven", "engine_driven", NULL };
static const char *const gpu_copy_path_choices[] = { "auto", "direct", "staging", NULL };
static const char *const store_policy_choices[] = { "default", "skip_l1", NULL };
static const char *const prefetch_policy_choices[] = { "default", "retain", NULL };
/* "help": main() prints the profile list and exits (it owns the wire tables) */
static const char *const protocol_choices[] = { "lmcache-2609", "lmcache-2604", "help", NULL };
static const char *const restart_choices[] = { "never", "on-failure", "always", NULL };
static const char *const level_choices[] = { "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", NULL };

static const struct flag flags[] = {
    /* MP server group (LMCache) */
    { "host", F_STR, OFF(mp.host), G_MP, "mp_config.host", 0, 0, NULL, "HOST",
      "ZeroMQ bind host (default localhost); an ipc:// URL binds a Unix socket" },
    { "port", F_INT, OFF(mp.port), G_MP, "mp_config.port", 1, 65535, NULL, "PORT", "ZeroMQ port (default 5555)" },
    { "chunk-size", F_INT, OFF(mp.chunk_size), G_MP, "mp_config.chunk_size", 1, 1 << 20, NULL, "N",
      "tokens per KV chunk (default 256)" },
    { "max-workers", F_INT, OFF(mp.max_workers), G_MP, "mp_config.max_workers", 1, 1024, NULL, "N",
      "base size of both worker pools (default 1)" },
    { "max-gpu-workers", F_INT, OFF(mp.max_gpu_workers), G_MP, "mp_config.max_gpu_workers", 1, 1024, NULL, "N",
      "affinity pool for data requests, FIFO per client (default: --max-workers)" },
    { "max-cpu-workers", F_INT, OFF(mp.max_cpu_workers), G_MP, "mp_config.max_cpu_workers", 1, 1024, NULL, "N",
      "normal pool for lookups and queries (default: --max-workers)" },
    { "hash-algorithm", F_CHOICE, OFF(mp.hash_algorithm), G_MP, "mp_config.hash_algorithm", 0, 0, hash_choices,
      "NAME", "token hash: blake3 (LMCache's, default) or xxh3_128 (lmcd only, faster; not shared with Python servers)" },
    { "engine-type", F_CHOICE, OFF(mp.engine_type), G_MP, "mp_config.engine_type", 0, 0, engine_choices, "TYPE",
      "cache engine: default (LMCache's 'blend' CacheBlend engine is not offered by lmcd)" },
    { "runtime-plugin-locations", F_STR_LIST, OFF(mp.plugin_locations), G_MP,
      "mp_config.runtime_plugin_config.locations", 0, 0, NULL, "PATH",
      "plugin files or directories, zero or more (last occurrence wins)" },
    { "runtime-plugin-config", F_JSON, OFF(mp.plugin_extra_config), G_MP,
      "mp_config.runtime_plugin_config.extra_config", 0, 0, NULL, "JSON",
      "extra config for plugins, JSON (default {}); delivered inside LMCACHE_RUNTIME_PLUGIN_CONFIG" },
    /* Storage group (LMCache) */
    { "l1-size-gb", F_GB_BYTES, OFF(storage.l1_size_bytes), G_STORAGE,
      "storage_manager_config.l1_manager_config.memory_config.size_in_bytes", 0, 1 << 20, NULL, "GB",
      "L1 capacity in GiB (default 1; LMCache requires it)" },
    { "l1-use-lazy", F_BOOL_PAIR, OFF(storage.l1_use_lazy), G_STORAGE,
      "storage_manager_config.l1_manager_config.memory_config.use_lazy", 0, 0, NULL, NULL,
      "commit L1 pages on first use (default); --no-l1-use-lazy pre-faults and locks them" },
    { "l1-init-size-gb", F_INT64, OFF(storage.l1_init_size_gb), G_STORAGE, NULL, 0, 1 << 20, NULL, "GB",
      "initial committed slice in lazy mode, whole GiB, clamped to the size (default 20)" },
    { "l1-align-bytes", F_INT64, OFF(storage.l1_align_bytes), G_STORAGE,
      "storage_manager_config.l1_manager_config.memory_config.align_bytes", 8, 1 << 30, NULL, "N",
      "object alignment, a power of two (default 4096)" },
    { "l1-write-ttl-seconds", F_INT, OFF(storage.l1_write_ttl_seconds), G_STORAGE,
      "storage_manager_config.l1_manager_config.write_ttl_seconds", 1, INT_MAX, NULL, "S",
      "an unfinished write is dropped after this (default 600)" },
    { "l1-read-ttl-seconds", F_INT, OFF(storage.l1_read_ttl_seconds), G_STORAGE,
      "storage_manager_config.l1_manager_config.read_ttl_seconds", 1, INT_MAX, NULL, "S",
      "read locks expire this long after the latest lock (default 300)" },
    { "eviction-policy", F_CHOICE, OFF(storage.eviction_policy), G_STORAGE,
      "storage_manager_config.eviction_config.eviction_policy", 0, 0, eviction_choices, "POLICY",
      "L1 eviction: LRU (default; LMCache requires the flag) or noop" },
    { "eviction-trigger-watermark", F_FLOAT, OFF(storage.eviction_trigger_watermark), G_STORAGE,
      "storage_manager_config.eviction_config.trigger_watermark", 0, 1, NULL, "F",
      "L1 usage that starts an eviction round, 0..1 (default 0.8)" },
    { "eviction-ratio", F_FLOAT, OFF(storage.eviction_ratio), G_STORAGE,
      "storage_manager_config.eviction_config.eviction_ratio", 0, 1, NULL, "F",
      "share of used bytes freed per round, 0..1 (default 0.2)" },
    { "l2-store-policy", F_CHOICE, OFF(storage.l2_store_policy), G_STORAGE, "storage_manager_config.store_policy",
      0, 0, store_policy_choices, "NAME", "L2 store policy: default (write behind, keep L1) or skip_l1 (drop from L1 once stored)" },
    { "l2-prefetch-policy", F_CHOICE, OFF(storage.l2_prefetch_policy), G_STORAGE,
      "storage_manager_config.prefetch_policy", 0, 0, prefetch_policy_choices, "NAME",
      "L2 prefetch policy: default or retain (both keep loaded objects in L1 as ordinary objects)" },
    { "l2-prefetch-max-in-flight", F_INT, OFF(storage.l2_prefetch_max_in_flight), G_STORAGE,
      "storage_manager_config.prefetch_max_in_flight", 1, 1 << 20, NULL, "N",
      "concurrent L2 prefetch requests (default 8)" },
    { "l2-adapter", F_JSON_APPEND, OFF(storage.l2_adapters), G_STORAGE,
      "storage_manager_config.l2_adapter_config.adapters", 0, 0, NULL, "JSON",
      "one L2 adapter per occurrence, a JSON object with \"type\" (docs/l2.md), in lookup order" },
    /* L2 tier (lmcd, docs/l2.md) */
    { "l2-prefetch-load-timeout", F_FLOAT, OFF(storage.l2_prefetch_load_timeout), G_STORAGE,
      "storage_manager_config.prefetch_load_timeout", 0.001, 3600, NULL, "S",
      "L2 prefetch deadline in seconds: a request is answered with what loaded by then (default 10)" },
    /* Observability group (LMCache) */
    { "disable-observability", F_SET_FALSE, OFF(obs.enabled), G_OBS, "obs_config.enabled", 0, 0, NULL, NULL,
      "master switch for metrics and event logging" },
    { "disable-metrics", F_SET_FALSE, OFF(obs.metrics_enabled), G_OBS, "obs_config.metrics_enabled", 0, 0, NULL,
      NULL, "no metrics" },
    { "disable-logging", F_SET_FALSE, OFF(obs.logging_enabled), G_OBS, "obs_config.logging_enabled", 0, 0, NULL,
      NULL, "no per-request debug logging" },
    { "enable-tracing", F_SET_TRUE, OFF(obs.tracing_enabled), G_OBS, "obs_config.tracing_enabled", 0, 0, NULL, NULL,
      "OTLP tracing; needs --otlp-endpoint (validated; spans are sent by a later lmcd)" },
    { "otlp-endpoint", F_STR_NULL, OFF(obs.otlp_endpoint), G_OBS, "obs_config.otlp_endpoint", 0, 0, NULL, "URL",
      "OTLP gRPC endpoint (default: $OTEL_EXPORTER_OTLP_ENDPOINT)" },
    { "event-bus-queue-size", F_INT, OFF(obs.max_queue_size), G_OBS, "obs_config.max_queue_size", 1, INT_MAX, NULL,
      "N", "event queue bound (default 10000)" },
    { "prometheus-port", F_INT, OFF(obs.prometheus_port), G_OBS, "obs_config.prometheus_port", 0, 65535, NULL,
      "PORT", "also serve /metrics on this port (default 9090; 0 = only on the HTTP port)" },
    /* Observability, lmcd only (obs engineer) */
    { "prometheus-host", F_STR, OFF(obs.prometheus_host), G_OBS, NULL, 0, 0, NULL, "HOST",
      "bind address of the --prometheus-port listener (default 127.0.0.1)" },
    /* HTTP group */
    { "http-host", F_STR, OFF(http.http_host), G_HTTP, "http_config.http_host", 0, 0, NULL, "HOST",
      "HTTP bind host (default 127.0.0.1; LMCache's is 0.0.0.0)" },
    { "http-port", F_INT, OFF(http.http_port), G_HTTP, "http_config.http_port", 1, 65535, NULL, "PORT",
      "HTTP port (default 8080)" },
    { "no-http", F_SET_FALSE, OFF(http.enabled), G_HTTP, NULL, 0, 0, NULL, NULL, "run without the HTTP server" },
    /* lmcd's own */
    { "protocol", F_CHOICE, OFF(mp.protocol), G_LMCD, "mp_config.protocol", 0, 0, protocol_choices, "PROFILE",
      "wire profile: lmcache-2609 (default) or lmcache-2604; 'help' lists them" },
    { "max-message-bytes", F_INT64, OFF(mp.max_message_bytes), G_LMCD, "mp_config.max_message_bytes", 1024,
      (double)(1ll << 40), NULL, "N", "largest request accepted, bytes (default 1 GiB)" },
    { "send-error-frames", F_SET_TRUE, OFF(mp.send_error_frames), G_LMCD, "mp_config.send_error_frames", 0, 0, NULL,
      NULL, "answer bad 2609 requests with LMCACHE_RPC_ERROR_V1 frames (never in 2604)" },
    { "shm-name", F_STR, OFF(mp.shm_name), G_LMCD, "mp_config.shm_name", 0, 0, NULL, "NAME",
      "L1 shared-memory segment name (default lmcache_l1_pool_<pid>)" },
    { "shm-group", F_STR, OFF(mp.shm_group), G_LMCD, "mp_config.shm_group", 0, 0, NULL, "GROUP",
      "let this group map the L1 segment too (mode 0660 instead of 0600)" },
    { "worker-reap-timeout-seconds", F_INT, OFF(mp.worker_reap_timeout_seconds), G_LMCD,
      "mp_config.worker_reap_timeout_seconds", 0, INT_MAX, NULL, "S",
      "drop a silent worker's reservations and locks after this (default 120; 0 disables)" },
    /* bounded memory and fair service (issue 11) */
    { "max-in-flight-bytes", F_INT64, OFF(mp.max_in_flight_bytes), G_LMCD, "mp_config.max_in_flight_bytes", 1 << 20,
      (double)(1ll << 50), NULL, "N",
      "request bytes queued in lmcd, all peers; past it lmcd stops reading the socket (default 1 GiB)" },
    { "max-peer-in-flight-bytes", F_INT64, OFF(mp.max_peer_in_flight_bytes), G_LMCD,
      "mp_config.max_peer_in_flight_bytes", 1 << 16, (double)(1ll << 50), NULL, "N",
      "request bytes queued for one peer; more get safe replies at once (default 256 MiB)" },
    { "max-peer-in-flight", F_INT, OFF(mp.max_peer_in_flight), G_LMCD, "mp_config.max_peer_in_flight", 1, 1 << 30,
      NULL, "N", "requests queued for one peer; more get safe replies at once (default 4096)" },
    { "max-sessions", F_INT, OFF(mp.max_sessions), G_LMCD, "mp_config.max_sessions", 1, 1 << 30, NULL, "N",
      "request sessions held at once; a LOOKUP past it is answered as a miss (default 131072)" },
    { "max-session-bytes", F_INT64, OFF(mp.max_session_bytes), G_LMCD, "mp_config.max_session_bytes", 1 << 20,
      (double)(1ll << 50), NULL, "N",
      "token lists and hashes held by all sessions; a LOOKUP past it is answered as a miss (default 1 GiB)" },
    { "worker-expire-seconds", F_INT, OFF(mp.worker_expire_seconds), G_LMCD, "mp_config.worker_expire_seconds", 0,
      INT_MAX, NULL, "S", "forget a worker registration silent this long (default 86400; 0 never)" },
    { "stop-timeout-seconds", F_FLOAT, OFF(mp.stop_timeout_seconds), G_LMCD, "mp_config.stop_timeout_seconds", 0,
      3600, NULL, "S", "on SIGINT/SIGTERM, queued requests run this long; the rest get safe replies (default 5)" },
    { "runtime-plugin-restart", F_CHOICE, OFF(mp.plugin_restart), G_LMCD, "mp_config.runtime_plugin_restart", 0, 0,
      restart_choices, "WHEN", "restart plugins: never (default, as LMCache), on-failure, always" },
    { "runtime-plugin-max-restarts", F_INT, OFF(mp.plugin_max_restarts), G_LMCD,
      "mp_config.runtime_plugin_max_restarts", 0, INT_MAX, NULL, "N",
      "restarts allowed per 10 minutes before a plugin is marked failed (default 5)" },
    { "runtime-plugin-stop-timeout", F_FLOAT, OFF(mp.plugin_stop_timeout_seconds), G_LMCD,
      "mp_config.runtime_plugin_stop_timeout", 0, 3600, NULL, "S",
      "grace between SIGTERM and SIGKILL for plugins (default 5)" },
    /* issue 11 (misc): zero-copy inline replies pin L1 memory until ZeroMQ sends them */
    { "inline-max-pinned-ratio", F_FLOAT, OFF(mp.inline_max_pinned_ratio), G_LMCD,
      "mp_config.inline_max_pinned_ratio", 0.01, 1, NULL, "R",
      "most of L1 that unsent lmcd.retrieve_inline replies may pin; past it replies are cut short (default 0.5)" },
    /* GPU path (issue 8, docs/gpu.md): one block */
    { "supported-transfer-mode", F_CHOICE, OFF(mp.supported_transfer_mode), G_MP,
      "mp_config.supported_transfer_mode", 0, 0, transfer_mode_choices, "MODE",
      "auto (default: GPU requests use the CUDA backend when a driver and GPU exist), lmcache_driven, or "
      "engine_driven (no GPU backend); engine-driven requests are served in every mode" },
    { "null-block-id", F_INT64, OFF(mp.null_block_id), G_MP, "mp_config.null_block_id", -(double)(1ll << 62),
      (double)(1ll << 62), NULL, "N", "paged-KV block id meaning \"no data\" (default 0; ATOM uses -1)" },
    { "isolated-ipc", F_BOOL_PAIR, OFF(mp.isolated_ipc), G_MP, "mp_config.isolated_ipc", 0, 0, NULL, NULL,
      "clients use isolated IPC (81-byte events): not served, refused at start with one log line" },
    { "gpu-copy-path", F_CHOICE, OFF(mp.gpu_copy_path), G_LMCD, "mp_config.gpu_copy_path", 0, 0,
      gpu_copy_path_choices, "PATH",
      "GPU STORE/RETRIEVE: direct (the kernel reads/writes pinned L1), staging (device staging + one DMA per "
      "object), auto (default: direct until a GPU run settles it; docs/gpu.md)" },
    { "gpu-event-timeout-seconds", F_INT, OFF(mp.gpu_event_timeout_seconds), G_LMCD,
      "mp_config.gpu_event_timeout_seconds", 1, INT_MAX, NULL, "S",
      "a GPU copy still waiting on its worker's event after this is reported once, and UNREGISTER, re-registering, "
      "reaping and shutdown stop waiting for it (default 60)" },
    /* Who may use the cache, and HTTP limits (issue 11 items 6-8; docs/security.md). One block. */
    { "ipc-mode", F_STR, OFF(access.ipc_mode), G_LMCD, "mp_config.ipc_mode", 0, 0, NULL, "MODE",
      "octal mode of an ipc:// socket file (default 0600; 0660 with --shm-group, which also becomes its group)" },
    { "allowed-uids", F_STR, OFF(access.allowed_uids), G_LMCD, "mp_config.allowed_uids", 0, 0, NULL, "LIST",
      "ipc:// only: accept peers whose uid (kernel SO_PEERCRED) is in this comma list of users/uids" },
    { "allowed-gids", F_STR, OFF(access.allowed_gids), G_LMCD, "mp_config.allowed_gids", 0, 0, NULL, "LIST",
      "ipc:// only: accept peers whose gid is in, or who are members of, these groups/gids" },
    { "no-inline-ops", F_SET_FALSE, OFF(access.inline_ops), G_LMCD, "mp_config.inline_ops", 0, 0, NULL, NULL,
      "answer lmcd.store_inline/lmcd.retrieve_inline with 0 chunks (counted) instead of serving them" },
    { "http-auth-token", F_STR_NULL, OFF(access.http_auth_token), G_HTTP, "http_config.http_auth_token", 0, 0, NULL,
      "TOKEN", "require 'Authorization: Bearer TOKEN' for mutations and unredacted /config (or $LMCD_HTTP_TOKEN)" },
    { "http-allow-insecure", F_SET_TRUE, OFF(access.http_allow_insecure), G_HTTP, "http_config.http_allow_insecure",
      0, 0, NULL, NULL, "allow a non-loopback --http-host without --http-auth-token" },
    { "http-allowed-hosts", F_STR, OFF(access.http_allowed_hosts), G_HTTP, "http_config.http_allowed_hosts", 0, 0,
      NULL, "LIST", "Host names accepted on tokenless mutations besides loopback names and IP literals ('*': any)" },
    { "http-max-connections", F_INT, OFF(access.http_max_connections), G_HTTP, "http_config.http_max_connections",
      4, 65536, NULL, "N", "concurrent HTTP connections, also capped at a quarter of RLIMIT_NOFILE (default 256)" },
    { "http-timeout-seconds", F_INT, OFF(access.http_timeout_seconds), G_HTTP, "http_config.http_timeout_seconds",
      1, 3600, NULL, "S", "a whole request must arrive, and an idle connection closes, within this (default 10)" },
    { "log-level", F_CHOICE, OFF(log_level), G_LMCD, NULL, 0, 0, level_choices, "LEVEL",
      "log threshold (default: $LMCACHE_LOG_LEVEL, else INFO)" },
    { "log-file", F_STR_NULL, OFF(log_file), G_LMCD, NULL, 0, 0, NULL, "PATH", "also append the log to this file" },
    { "config", F_STR_NULL, OFF(config_file), G_LMCD, NULL, 0, 0, NULL, "FILE",
      "JSON file with the tree of --print-config; flags on the command line win" },
    { "print-config", F_SET_TRUE, OFF(print_config), G_LMCD, NULL, 0, 0, NULL, NULL,
      "print the aggregated config as JSON and exit" },
};

#define N_FLAGS (sizeof(flags) / sizeof(flags[0]))


/* ---------------------------------------------------------------- errors */

struct perr {
    FILE *err;
    int failed;
};

static void fail(struct perr *pe, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(struct perr *pe, const char *fmt, ...)
{
    if (pe->failed++)
        return; /* one line: the first error is the one that matters */
    va_list ap;
    va_start(ap, fmt);
    fputs("lmcd: error: ", pe->err);
    vfprintf(pe->err, fmt, ap);
    fputc('\n', pe->err);
    va_end(ap);
}

/* ---------------------------------------------------------------- defaults */

static char *xstrdup(const char *s)
{
    char *d = strdup(s ? s : "");
    if (!d) {
        fputs("lmcd: out of memory\n", stderr);
        exit(111);
    }
    return d;
}

static void set_defaults(struct lmcd_config *c)
{
    memset(c, 0, sizeof(*c));
    c->mp.host = xstrdup("localhost");
    c->mp.port = 5555;
    c->mp.chunk_size = 256;
    c->mp.max_workers = 1;
    c->mp.max_gpu_workers = 0; /* 0 = unset, resolved after parsing */
    c->mp.max_cpu_workers = 0;
    c->mp.hash_algorithm = xstrdup("blake3");
    c->mp.engine_type = xstrdup("default");
    c->mp.plugin_locations = calloc(1, sizeof(char *));
    c->mp.plugin_extra_config = json_object();
    c->mp.protocol = xstrdup("lmcache-2609");
    c->mp.max_message_bytes = 1ll << 30;
    c->mp.shm_name = xstrdup("");
    c->mp.shm_group = xstrdup("");
    c->mp.worker_reap_timeout_seconds = 120;
    c->mp.gpu_event_timeout_seconds = 60;
    c->mp.plugin_restart = xstrdup("never");
    c->mp.plugin_max_restarts = 5;
    c->mp.plugin_stop_timeout_seconds = 5.0;
    c->mp.max_in_flight_bytes = 1ll << 30;
    c->mp.max_peer_in_flight_bytes = 256ll << 20;
    c->mp.max_peer_in_flight = 4096;
    c->mp.max_sessions = 131072;
    c->mp.max_session_bytes = 1ll << 30;
    c->mp.worker_expire_seconds = 86400;
    c->mp.stop_timeout_seconds = 5.0;
    c->mp.inline_max_pinned_ratio = 0.5;
    c->mp.supported_transfer_mode = xstrdup("auto");
    c->mp.gpu_copy_path = xstrdup("auto");
    c->storage.l1_size_bytes = 1ull << 30;
    c->storage.l1_use_lazy = true;
    c->storage.l1_init_size_gb = 20;
    c->storage.l1_align_bytes = 4096;
    c->storage.l1_write_ttl_seconds = 600;
    c->storage.l1_read_ttl_seconds = 300;
    c->storage.eviction_policy = xstrdup("LRU");
    c->storage.eviction_trigger_watermark = 0.8;
    c->storage.eviction_ratio = 0.2;
    c->storage.l2_adapters = json_array();
    c->storage.l2_store_policy = xstrdup("default");
    c->storage.l2_prefetch_policy = xstrdup("default");
    c->storage.l2_prefetch_max_in_flight = 8;
    c->storage.l2_prefetch_load_timeout = 10.0;
    c->obs.enabled = true;
    c->obs.metrics_enabled = true;
    c->obs.logging_enabled = true;
    c->obs.tracing_enabled = false;
    c->obs.otlp_endpoint = NULL;
    c->obs.max_queue_size = 10000;
    c->obs.prometheus_port = 9090;
    c->obs.prometheus_host = xstrdup("127.0.0.1");
    c->http.enabled = true;
    c->http.http_host = xstrdup("127.0.0.1");
    c->http.http_port = 8080;
    c->access.ipc_mode = xstrdup("");
    c->access.allowed_uids = xstrdup("");
    c->access.allowed_gids = xstrdup("");
    c->access.inline_ops = true;
    c->access.http_allowed_hosts = xstrdup("");
    c->access.http_max_connections = 256;
    c->access.http_timeout_seconds = 10;
}

static void free_list(char **l)
{
    if (!l)
        return;
    for (char **p = l; *p; p++)
        free(*p);
    free(l);
}

void config_free(struct lmcd_config *c)
{
    free(c->mp.host);
    free(c->mp.hash_algorithm);
    free(c->mp.engine_type);
    free(c->mp.supported_transfer_mode);
    free(c->mp.gpu_copy_path);
    free_list(c->mp.plugin_locations);
    json_decref(c->mp.plugin_extra_config);
    free(c->mp.protocol);
    free(c->mp.shm_name);
    free(c->mp.shm_group);
    free(c->mp.plugin_restart);
    free(c->storage.eviction_policy);
    json_decref(c->storage.l2_adapters);
    free(c->storage.l2_store_policy);
    free(c->storage.l2_prefetch_policy);
    free(c->obs.otlp_endpoint);
    free(c->http.http_host);
    free(c->obs.prometheus_host);
    free(c->access.ipc_mode);
    free(c->access.allowed_uids);
    free(c->access.allowed_gids);
    free(c->access.http_auth_token);
    free(c->access.http_allowed_hosts);
    free(c->log_level);
    free(c->log_file);
    free(c->config_file);
    memset(c, 0, sizeof(*c));
}

/* ---------------------------------------------------------------- values */

static void *field(struct lmcd_config *c, const struct flag *f) { return (char *)c + f->off; }

/* Python int(): optional sign, digits, surrounding whitespace. */
static int parse_int(const char *s, long long *out)
{
    char *end;
    while (*s == ' ' || *s == '\t')
        s++;
    if (!*s)
        return -EINVAL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    while (*end == ' ' || *end == '\t')
        end++;
    if (errno || *end || end == s)
        return -EINVAL;
    *out = v;
    return 0;
}

static int parse_float(const char *s, double *out)
{
    char *end;
    while (*s == ' ' || *s == '\t')
        s++;
    if (!*s)
        return -EINVAL;
    errno = 0;
    double v = strtod(s, &end);
    while (*end == ' ' || *end == '\t')
        end++;
    if (errno || *end || end == s || isnan(v))
        return -EINVAL;
    *out = v;
    return 0;
}

static int in_choices(const char *const *choices, const char *v)
{
    for (const char *const *p = choices; *p; p++)
        if (!strcmp(*p, v))
            return 1;
    return 0;
}

static void choices_text(const char *const *choices, char *buf, size_t cap)
{
    size_t o = 0;
    buf[0] = 0;
    for (const char *const *p = choices; *p && o < cap; p++)
        o += (size_t)snprintf(buf + o, cap - o, "%s'%s'", p == choices ? "" : ", ", *p);
}

/* The configuration tree is JSON (plugins, /config): every string in it
 * must be UTF-8, or jansson would refuse it and the value would vanish. */
static int check_utf8(struct perr *pe, const char *src, const char *v)
{
    json_t *probe = json_string(v);
    if (probe) {
        json_decref(probe);
        return 0;
    }
    fail(pe, "%s: value is not valid UTF-8", src);
    return -EINVAL;
}

static void set_str(char **dst, const char *v)
{
    free(*dst);
    *dst = xstrdup(v);
}

/* Python's name of a JSON value's type, as LMCache's messages print it. */
static const char *py_type_name(const json_t *v)
{
    static const char *const names[] = { "dict", "list", "str", "int", "float", "bool", "bool", "NoneType" };
    return names[json_typeof(v)];
}

/* The extra plugin config is LMCache's RuntimePluginConfig.extra_config, a
 * dict that plugins read with .get(): anything else would reach them as a
 * value they cannot use. Worded as LMCache words --l2-adapter's object check. */
static int check_extra_config(struct perr *pe, const json_t *v, const char *src)
{
    if (json_is_object(v))
        return 0;
    fail(pe, "%s: expected a JSON object, got %s", src, py_type_name(v));
    return -EINVAL;
}

/* Validates one --l2-adapter object the way LMCache's parser words it. */
static int check_adapter(struct perr *pe, json_t *v, size_t index)
{
    if (!json_is_object(v)) {
        fail(pe, "--l2-adapter #%zu: expected a JSON object, got %s", index, py_type_name(v));
        return -EINVAL;
    }
    json_t *t = json_object_get(v, "type");
    if (!t) {
        fail(pe, "--l2-adapter #%zu: missing 'type'", index);
        return -EINVAL;
    }
    if (!json_is_string(t) || !l2_ops_find(json_string_value(t))) {
        char buf[128];
        l2_ops_names(buf, sizeof(buf));
        fail(pe, "--l2-adapter #%zu: unknown L2 adapter type %s%s%s (known types: %s)", index,
             json_is_string(t) ? "'" : "", json_is_string(t) ? json_string_value(t) : "(not a string)",
             json_is_string(t) ? "'" : "", buf);
        return -EINVAL;
    }
    return 0;
}

/*
 * Applies one value to one flag. `src` names where it came from for errors:
 * "argument --x" on argv, "--config FILE: key a.b.c" from the file.
 */
static int apply_str(struct perr *pe, struct lmcd_config *c, const struct flag *f, const char *src, const char *v)
{
    void *p = field(c, f);
    long long iv;
    double dv;
    char buf[256];
    json_error_t jerr;
    switch (f->type) {
    case F_STR:
    case F_STR_NULL:
        if (f->json_path && check_utf8(pe, src, v)) /* --config/--log-file paths are not in the tree */
            return -EINVAL;
        set_str((char **)p, v);
        return 0;
    case F_CHOICE:
        if (!in_choices(f->choices, v)) {
            choices_text(f->choices, buf, sizeof(buf));
            if (!strcmp(f->name, "hash-algorithm") && (!strcmp(v, "builtin") || !strcmp(v, "sha256_cbor")))
                fail(pe, "%s: '%s' needs vLLM's hash helpers, which lmcd does not embed (choose from %s)", src, v,
                     buf);
            else if (!strcmp(f->name, "engine-type") && (!strcmp(v, "blend") || !strcmp(v, "blend_legacy")))
                fail(pe, "%s: '%s' (CacheBlend) is not supported by lmcd (choose from %s)", src, v, buf);
            else
                fail(pe, "%s: invalid choice: '%s' (choose from %s)", src, v, buf);
            return -EINVAL;
        }
        set_str((char **)p, v);
        return 0;
    case F_INT:
    case F_INT64:
        if (parse_int(v, &iv)) {
            fail(pe, "%s: invalid int value: '%s'", src, v);
            return -EINVAL;
        }
        if (iv < f->min || iv > f->max) {
            fail(pe, "%s: %lld is out of range [%.0f, %.0f]", src, iv, f->min, f->max);
            return -ERANGE;
        }
        if (f->type == F_INT)
            *(int *)p = (int)iv;
        else
            *(int64_t *)p = iv;
        return 0;
    case F_FLOAT:
    case F_GB_BYTES:
        if (parse_float(v, &dv)) {
            fail(pe, "%s: invalid float value: '%s'", src, v);
            return -EINVAL;
        }
        if (f->type == F_GB_BYTES) {
            if (!(dv > 0) || dv > f->max) {
                fail(pe, "%s: must be a positive size in GiB, got '%s'", src, v);
                return -ERANGE;
            }
            *(uint64_t *)p = (uint64_t)(dv * GIB);
            return 0;
        }
        if (dv < f->min || dv > f->max) {
            fail(pe, "%s: %s is out of range [%g, %g]", src, v, f->min, f->max);
            return -ERANGE;
        }
        *(double *)p = dv;
        return 0;
    case F_JSON: {
        json_t *j = *v ? json_loads(v, JSON_DECODE_ANY, &jerr) : json_object();
        if (!j) {
            fail(pe, "--%s is not valid JSON: %s (line %d column %d)", f->name, jerr.text, jerr.line, jerr.column);
            return -EINVAL;
        }
        if (check_extra_config(pe, j, src)) {
            json_decref(j);
            return -EINVAL;
        }
        json_decref(*(json_t **)p);
        *(json_t **)p = j;
        return 0;
    }
    case F_JSON_APPEND: {
        json_t *arr = *(json_t **)p;
        size_t index = json_array_size(arr);
        json_t *j = json_loads(v, JSON_DECODE_ANY, &jerr);
        if (!j) {
            fail(pe, "Invalid JSON for --%s #%zu: %s", f->name, index, jerr.text);
            return -EINVAL;
        }
        if (check_adapter(pe, j, index)) {
            json_decref(j);
            return -EINVAL;
        }
        json_array_append_new(arr, j);
        return 0;
    }
    default:
        fail(pe, "%s: takes no value", src);
        return -EINVAL;
    }
}

/* ---------------------------------------------------------------- argv */

static const struct flag *find_flag(struct perr *pe, const char *name, size_t len, int *negated)
{
    const struct flag *hit = NULL;
    int nhits = 0;
    *negated = 0;
    for (size_t i = 0; i < N_FLAGS; i++) {
        const struct flag *f = &flags[i];
        size_t fl = strlen(f->name);
        if (fl == len && !strncmp(f->name, name, len))
            return f;
        if (f->type == F_BOOL_PAIR && len == fl + 3 && !strncmp(name, "no-", 3) && !strncmp(name + 3, f->name, fl)) {
            *negated = 1;
            return f;
        }
    }
    /* argparse accepts unique prefixes of long options; so does lmcd. */
    for (size_t i = 0; i < N_FLAGS; i++) {
        if (!strncmp(flags[i].name, name, len)) {
            hit = &flags[i];
            nhits++;
        }
    }
    if (nhits == 1)
        return hit;
    if (nhits > 1)
        fail(pe, "ambiguous option: --%.*s could match several flags", (int)len, name);
    return NULL;
}

static int takes_value(const struct flag *f)
{
    return f->type != F_BOOL_PAIR && f->type != F_SET_TRUE && f->type != F_SET_FALSE && f->type != F_STR_LIST;
}

static int parse_argv(struct perr *pe, struct lmcd_config *c, int argc, char **argv, int only_config)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) || !a[2]) {
            if (!only_config)
                fail(pe, "unrecognized arguments: %s", a);
            return -EINVAL;
        }
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        int negated;
        const struct flag *f = find_flag(pe, name, len, &negated);
        if (!f) {
            if (!only_config)
                fail(pe, "unrecognized arguments: %s", a);
            return -EINVAL;
        }
        char src[128];
        snprintf(src, sizeof(src), "argument --%s", f->name);
        if (f->type == F_STR_LIST) {
            char **list = calloc((size_t)argc + 1, sizeof(char *));
            size_t n = 0;
            if (eq)
                list[n++] = xstrdup(eq + 1);
            while (!eq && i + 1 < argc && strncmp(argv[i + 1], "--", 2))
                list[n++] = xstrdup(argv[++i]);
            for (size_t k = 0; k < n; k++) {
                if (!only_config && check_utf8(pe, src, list[k])) {
                    free_list(list);
                    return -EINVAL;
                }
            }
            if (only_config) {
                free_list(list);
                continue;
            }
            free_list(*(char ***)field(c, f));
            *(char ***)field(c, f) = list;
            c->mp.n_plugin_locations = n;
            continue;
        }
        if (!takes_value(f)) {
            if (eq) {
                fail(pe, "%s: ignored explicit argument '%s'", src, eq + 1);
                return -EINVAL;
            }
            if (!only_config) {
                bool v = f->type == F_SET_TRUE || (f->type == F_BOOL_PAIR && !negated);
                *(bool *)field(c, f) = v;
            }
            continue;
        }
        const char *v;
        if (eq) {
            v = eq + 1;
        } else if (i + 1 < argc && (strncmp(argv[i + 1], "--", 2) || f->type == F_JSON)) {
            v = argv[++i];
        } else {
            fail(pe, "%s: expected one argument", src);
            return -EINVAL;
        }
        if (only_config != (!strcmp(f->name, "config")))
            continue;
        if (apply_str(pe, c, f, src, v))
            return -EINVAL;
    }
    return 0;
}

/* ---------------------------------------------------------------- --config */

static json_t *get_path(json_t *root, const char *path)
{
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", path);
    json_t *cur = root;
    for (char *save = NULL, *tok = strtok_r(buf, ".", &save); tok && cur; tok = strtok_r(NULL, ".", &save))
        cur = json_is_object(cur) ? json_object_get(cur, tok) : NULL;
    return cur;
}

static int apply_json_value(struct perr *pe, struct lmcd_config *c, const struct flag *f, json_t *v,
                            const char *file)
{
    char src[384];
    snprintf(src, sizeof(src), "--config %s: key %s", file, f->json_path);
    void *p = field(c, f);
    char num[64];
    switch (f->type) {
    case F_BOOL_PAIR:
    case F_SET_TRUE:
    case F_SET_FALSE:
        if (!json_is_boolean(v))
            goto type_error;
        *(bool *)p = json_is_true(v);
        return 0;
    case F_GB_BYTES:
        if (!json_is_integer(v) || json_integer_value(v) <= 0)
            goto type_error;
        *(uint64_t *)p = (uint64_t)json_integer_value(v);
        return 0;
    case F_STR_LIST: {
        if (!json_is_array(v))
            goto type_error;
        size_t n = json_array_size(v);
        char **list = calloc(n + 1, sizeof(char *));
        for (size_t i = 0; i < n; i++) {
            if (!json_is_string(json_array_get(v, i))) {
                free_list(list);
                goto type_error;
            }
            list[i] = xstrdup(json_string_value(json_array_get(v, i)));
        }
        free_list(*(char ***)p);
        *(char ***)p = list;
        c->mp.n_plugin_locations = n;
        return 0;
    }
    case F_JSON:
        if (check_extra_config(pe, v, src))
            return -EINVAL;
        json_decref(*(json_t **)p);
        *(json_t **)p = json_deep_copy(v);
        return 0;
    case F_JSON_APPEND:
        if (!json_is_array(v))
            goto type_error;
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (check_adapter(pe, json_array_get(v, i), i))
                return -EINVAL;
            json_array_append(*(json_t **)p, json_array_get(v, i));
        }
        return 0;
    case F_STR_NULL:
        if (json_is_null(v)) {
            free(*(char **)p);
            *(char **)p = NULL;
            return 0;
        }
        /* fall through */
    case F_STR:
    case F_CHOICE:
        if (!json_is_string(v))
            goto type_error;
        return apply_str(pe, c, f, src, json_string_value(v));
    case F_INT:
    case F_INT64:
        if (!json_is_integer(v))
            goto type_error;
        snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return apply_str(pe, c, f, src, num);
    case F_FLOAT:
        if (!json_is_number(v))
            goto type_error;
        snprintf(num, sizeof(num), "%.17g", json_number_value(v));
        return apply_str(pe, c, f, src, num);
    }
type_error:
    fail(pe, "%s: wrong type of value", src);
    return -EINVAL;
}

/* Keys of the --print-config tree that are derived, not set: accepted and ignored. */
static const char *const derived_keys[] = {
    "mp_config.transfer_mode",
    "mp_config.runtime_plugin_locations",
    "mp_config.runtime_plugin_config",
    "storage_manager_config.l1_manager_config.memory_config.init_size_in_bytes",
    "storage_manager_config.l1_manager_config.memory_config",
    "storage_manager_config.l1_manager_config",
    "storage_manager_config.eviction_config",
    "storage_manager_config.l2_adapter_config",
    "runtime_plugin_extra_config",
    NULL,
};

/* Every leaf of the file must be a known key: a typo is an error, not a silent default. */
static int check_unknown(struct perr *pe, json_t *obj, const char *prefix, const char *file)
{
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v) {
        char path[256];
        snprintf(path, sizeof(path), "%s%s%s", prefix, *prefix ? "." : "", k);
        int known = 0;
        for (size_t i = 0; i < N_FLAGS && !known; i++)
            known = flags[i].json_path && !strcmp(flags[i].json_path, path);
        for (size_t i = 0; derived_keys[i] && !known; i++)
            known = !strcmp(derived_keys[i], path) && !json_is_object(v);
        if (known)
            continue;
        if (json_is_object(v) && (!*prefix || strchr(path, '.') || !strcmp(path, "mp_config") ||
                                  !strcmp(path, "storage_manager_config") || !strcmp(path, "obs_config") ||
                                  !strcmp(path, "http_config"))) {
            if (!strcmp(path, "runtime_plugin_extra_config"))
                continue;
            if (check_unknown(pe, v, path, file))
                return -EINVAL;
            continue;
        }
        fail(pe, "--config %s: unknown key %s", file, path);
        return -EINVAL;
    }
    return 0;
}

static int load_file(struct perr *pe, struct lmcd_config *c, const char *file)
{
    json_error_t jerr;
    json_t *root = json_load_file(file, 0, &jerr);
    if (!root) {
        fail(pe, "argument --config: cannot read '%s': %s", file, jerr.text);
        return -EINVAL;
    }
    int rc = check_unknown(pe, root, "", file);
    for (size_t i = 0; i < N_FLAGS && !rc; i++) {
        const struct flag *f = &flags[i];
        json_t *v = f->json_path ? get_path(root, f->json_path) : NULL;
        if (!v && f->json_path && !strcmp(f->json_path, "mp_config.runtime_plugin_config.locations"))
            v = get_path(root, "mp_config.runtime_plugin_locations");
        if (v)
            rc = apply_json_value(pe, c, f, v, file);
    }
    json_decref(root);
    return rc;
}

/* ---------------------------------------------------------------- checks */

static int is_pow2(int64_t v) { return v > 0 && (v & (v - 1)) == 0; }

/* The access block (docs/security.md): resolves modes and ids, refuses
 * combinations that would look protected but are not. */
static int check_access(struct perr *pe, struct lmcd_config *c)
{
    struct cfg_access *a = &c->access;
    bool ipc = !strncmp(c->mp.host, "ipc://", 6);
    const char *bad;
    if (*a->ipc_mode) {
        char *end;
        long m = strtol(a->ipc_mode, &end, 8);
        if (*end || m < 0 || m > 0777 || (m & 0600) != 0600) {
            fail(pe, "argument --ipc-mode: '%s' is not an octal mode within 0600..0777 (the owner needs rw)",
                 a->ipc_mode);
            return -EINVAL;
        }
        a->ipc_mode_bits = (int)m;
    } else {
        a->ipc_mode_bits = *c->mp.shm_group ? 0660 : 0600;
    }
    static const char *const names[2] = { "allowed-uids", "allowed-gids" };
    for (int g = 0; g < 2; g++) {
        const char *list = g ? a->allowed_gids : a->allowed_uids;
        if (!*list)
            continue;
        if (!ipc) {
            fail(pe, "argument --%s: needs an ipc:// --host (TCP peers carry no credentials)", names[g]);
            return -EINVAL;
        }
        int rc = netaddr_parse_ids(list, g, g ? a->gids : a->uids, CFG_MAX_IDS, g ? &a->n_gids : &a->n_uids, &bad);
        if (rc) {
            fail(pe, "argument --%s: %s '%s'", names[g], rc == -E2BIG ? "more than 64 ids at" : "unknown or bad id",
                 bad);
            return -EINVAL;
        }
    }
    if (!a->http_auth_token && getenv("LMCD_HTTP_TOKEN") && *getenv("LMCD_HTTP_TOKEN"))
        a->http_auth_token = xstrdup(getenv("LMCD_HTTP_TOKEN"));
    if (a->http_auth_token && !*a->http_auth_token) {
        free(a->http_auth_token);
        a->http_auth_token = NULL;
    }
    if (a->http_auth_token) {
        size_t n = strlen(a->http_auth_token);
        for (size_t i = 0; i < n; i++) {
            if (a->http_auth_token[i] <= ' ' || a->http_auth_token[i] > '~') {
                fail(pe, "argument --http-auth-token: only visible ASCII characters (it travels in a header)");
                return -EINVAL;
            }
        }
        if (n < 16) {
            fail(pe, "argument --http-auth-token: at least 16 characters (e.g. openssl rand -hex 16)");
            return -EINVAL;
        }
    }
    if (c->http.enabled && !a->http_auth_token && !a->http_allow_insecure &&
        netaddr_host_is_loopback(c->http.http_host) != 1) {
        fail(pe, "argument --http-host: '%s' is not loopback; anyone who reaches it could clear the cache: set "
                 "--http-auth-token (or LMCD_HTTP_TOKEN), or --http-allow-insecure",
             c->http.http_host);
        return -EINVAL;
    }
    return 0;
}

static int check_config(struct perr *pe, struct lmcd_config *c)
{
    if (!is_pow2(c->storage.l1_align_bytes)) {
        fail(pe, "argument --l1-align-bytes: %lld is not a power of two", (long long)c->storage.l1_align_bytes);
        return -EINVAL;
    }
    if (c->obs.tracing_enabled && !c->obs.otlp_endpoint && !getenv("OTEL_EXPORTER_OTLP_ENDPOINT")) {
        fail(pe, "argument --enable-tracing: requires --otlp-endpoint (or OTEL_EXPORTER_OTLP_ENDPOINT)");
        return -EINVAL;
    }
    if (!*c->mp.host) {
        fail(pe, "argument --host: must not be empty");
        return -EINVAL;
    }
    if (strchr(c->mp.shm_name, '/') && c->mp.shm_name[0] != '/') {
        fail(pe, "argument --shm-name: '%s' must not contain '/'", c->mp.shm_name);
        return -EINVAL;
    }
    if (check_access(pe, c))
        return -EINVAL;
    if (!c->mp.max_gpu_workers)
        c->mp.max_gpu_workers = c->mp.max_workers;
    if (!c->mp.max_cpu_workers)
        c->mp.max_cpu_workers = c->mp.max_workers;
    uint64_t init = (uint64_t)c->storage.l1_init_size_gb << 30;
    c->storage.l1_init_size_bytes = init < c->storage.l1_size_bytes ? init : c->storage.l1_size_bytes;
    if (!c->obs.otlp_endpoint && getenv("OTEL_EXPORTER_OTLP_ENDPOINT") && *getenv("OTEL_EXPORTER_OTLP_ENDPOINT"))
        c->obs.otlp_endpoint = xstrdup(getenv("OTEL_EXPORTER_OTLP_ENDPOINT"));
    return 0;
}

/* ---------------------------------------------------------------- help */

void config_print_help(FILE *out)
{
    static const char *const group_names[] = { "MP server", "Storage (L1, eviction, L2)", "Observability", "HTTP",
                                                "lmcd" };
    fprintf(out,
            "usage: lmcd [options]\n\n"
            "lmcd %s: LMCache's multiprocess KV-cache server, in C. Flag- and wire-compatible with\n"
            "`python -m lmcache.v1.multiprocess.server` and `lmcache server`; every flag is optional.\n"
            "Flags may be abbreviated to a unique prefix, as argparse allows.\n",
            LMCD_VERSION);
    for (int g = G_MP; g <= G_LMCD; g++) {
        fprintf(out, "\n%s:\n", group_names[g]);
        for (size_t i = 0; i < N_FLAGS; i++) {
            const struct flag *f = &flags[i];
            if ((int)f->group != g)
                continue;
            char lhs[96];
            if (f->type == F_BOOL_PAIR)
                snprintf(lhs, sizeof(lhs), "--%s, --no-%s", f->name, f->name);
            else if (f->type == F_STR_LIST)
                snprintf(lhs, sizeof(lhs), "--%s [%s ...]", f->name, f->metavar);
            else if (f->metavar)
                snprintf(lhs, sizeof(lhs), "--%s %s", f->name, f->metavar);
            else
                snprintf(lhs, sizeof(lhs), "--%s", f->name);
            if (strlen(lhs) > 34)
                fprintf(out, "  %s\n  %-34s %s\n", lhs, "", f->help);
            else
                fprintf(out, "  %-34s %s\n", lhs, f->help);
        }
    }
    fprintf(out, "\nOther:\n  %-34s %s\n  %-34s %s\n  %-34s %s\n", "--help", "show this help and exit",
            "--version", "print the version and exit", "--protocol help", "list the wire profiles and their operations");
    fprintf(out, "\nEnvironment: LMCACHE_LOG_LEVEL (DEBUG..CRITICAL), OTEL_EXPORTER_OTLP_ENDPOINT.\n"
                 "Docs: docs/configuration.md, docs/runtime_plugins.md, docs/protocol.md.\n");
}

/* ---------------------------------------------------------------- load */

enum config_action config_load(struct lmcd_config *c, int argc, char **argv, FILE *out, FILE *err)
{
    struct perr pe = { err, 0 };
    set_defaults(c);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            config_print_help(out);
            config_free(c);
            return CONFIG_EXIT_OK;
        }
        if (!strcmp(argv[i], "--version")) {
            fprintf(out, "lmcd %s\n%s\n", LMCD_VERSION, transfer_build_desc());
            config_free(c);
            return CONFIG_EXIT_OK;
        }
    }
    /* Pass 1: --config only, so that the file sits under the command line. */
    if (parse_argv(&pe, c, argc, argv, 1) && pe.failed)
        goto usage;
    if (c->config_file && load_file(&pe, c, c->config_file))
        goto usage;
    if (parse_argv(&pe, c, argc, argv, 0))
        goto usage;
    if (check_config(&pe, c))
        goto usage;
    return CONFIG_RUN;
usage:
    config_free(c);
    return CONFIG_EXIT_USAGE;
}

/* ---------------------------------------------------------------- JSON */

static json_t *str_or_null(const char *s) { return s ? json_string(s) : json_null(); }

static json_t *locations_json(const struct lmcd_config *c)
{
    json_t *a = json_array();
    for (char **p = c->mp.plugin_locations; p && *p; p++)
        json_array_append_new(a, json_string(*p));
    return a;
}

/* Python truthiness of the extra config: 0, [], "", false, null and {} are "none". */
static int json_truthy(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return json_object_size(v) > 0;
    case JSON_ARRAY: return json_array_size(v) > 0;
    case JSON_STRING: return json_string_length(v) > 0;
    case JSON_INTEGER: return json_integer_value(v) != 0;
    case JSON_REAL: return json_real_value(v) != 0.0;
    case JSON_TRUE: return 1;
    default: return 0;
    }
}

json_t *config_to_json(const struct lmcd_config *c)
{
    const struct cfg_mp *m = &c->mp;
    const struct cfg_storage *s = &c->storage;
    json_t *mp = json_pack("{s:s, s:i, s:i, s:i, s:i, s:i, s:s, s:s, s:s}", "host", m->host, "port", m->port,
                           "chunk_size", m->chunk_size, "max_workers", m->max_workers, "max_gpu_workers",
                           m->max_gpu_workers, "max_cpu_workers", m->max_cpu_workers, "hash_algorithm",
                           m->hash_algorithm, "engine_type", m->engine_type, "transfer_mode", "engine_driven");
    json_object_set_new(mp, "runtime_plugin_locations", locations_json(c));
    json_object_set_new(mp, "runtime_plugin_config",
                        json_pack("{s:o, s:O}", "locations", locations_json(c), "extra_config",
                                  m->plugin_extra_config));
    json_object_set_new(mp, "protocol", json_string(m->protocol));
    json_object_set_new(mp, "max_message_bytes", json_integer(m->max_message_bytes));
    json_object_set_new(mp, "send_error_frames", json_boolean(m->send_error_frames));
    json_object_set_new(mp, "shm_name", json_string(m->shm_name));
    json_object_set_new(mp, "shm_group", json_string(m->shm_group));
    json_object_set_new(mp, "worker_reap_timeout_seconds", json_integer(m->worker_reap_timeout_seconds));
    json_object_set_new(mp, "max_in_flight_bytes", json_integer(m->max_in_flight_bytes));
    json_object_set_new(mp, "max_peer_in_flight_bytes", json_integer(m->max_peer_in_flight_bytes));
    json_object_set_new(mp, "max_peer_in_flight", json_integer(m->max_peer_in_flight));
    json_object_set_new(mp, "max_sessions", json_integer(m->max_sessions));
    json_object_set_new(mp, "max_session_bytes", json_integer(m->max_session_bytes));
    json_object_set_new(mp, "worker_expire_seconds", json_integer(m->worker_expire_seconds));
    json_object_set_new(mp, "stop_timeout_seconds", json_real(m->stop_timeout_seconds));
    json_object_set_new(mp, "runtime_plugin_restart", json_string(m->plugin_restart));
    json_object_set_new(mp, "runtime_plugin_max_restarts", json_integer(m->plugin_max_restarts));
    json_object_set_new(mp, "runtime_plugin_stop_timeout", json_real(m->plugin_stop_timeout_seconds));
    json_object_set_new(mp, "inline_max_pinned_ratio", json_real(m->inline_max_pinned_ratio));
    json_object_set_new(mp, "supported_transfer_mode", json_string(m->supported_transfer_mode));
    json_object_set_new(mp, "null_block_id", json_integer(m->null_block_id));
    json_object_set_new(mp, "isolated_ipc", json_boolean(m->isolated_ipc));
    json_object_set_new(mp, "gpu_copy_path", json_string(m->gpu_copy_path));
    json_object_set_new(mp, "gpu_event_timeout_seconds", json_integer(m->gpu_event_timeout_seconds));
    json_object_set_new(mp, "ipc_mode", json_string(c->access.ipc_mode));
    json_object_set_new(mp, "allowed_uids", json_string(c->access.allowed_uids));
    json_object_set_new(mp, "allowed_gids", json_string(c->access.allowed_gids));
    json_object_set_new(mp, "inline_ops", json_boolean(c->access.inline_ops));

    json_t *mem = json_pack("{s:I, s:b, s:I, s:I}", "size_in_bytes", (json_int_t)s->l1_size_bytes, "use_lazy",
                            s->l1_use_lazy, "init_size_in_bytes", (json_int_t)s->l1_init_size_bytes, "align_bytes",
                            (json_int_t)s->l1_align_bytes);
    json_t *sm = json_pack("{s:{s:o, s:i, s:i}, s:{s:s, s:f, s:f}, s:{s:O}, s:s, s:s, s:i}", "l1_manager_config",
                           "memory_config", mem, "write_ttl_seconds", s->l1_write_ttl_seconds, "read_ttl_seconds",
                           s->l1_read_ttl_seconds, "eviction_config", "eviction_policy", s->eviction_policy,
                           "trigger_watermark", s->eviction_trigger_watermark, "eviction_ratio", s->eviction_ratio,
                           "l2_adapter_config", "adapters", s->l2_adapters, "store_policy", s->l2_store_policy,
                           "prefetch_policy", s->l2_prefetch_policy, "prefetch_max_in_flight",
                           s->l2_prefetch_max_in_flight);
    json_t *obs = json_pack("{s:b, s:i, s:b, s:b, s:b, s:o, s:i}", "enabled", c->obs.enabled, "max_queue_size",
                            c->obs.max_queue_size, "metrics_enabled", c->obs.metrics_enabled, "logging_enabled",
                            c->obs.logging_enabled, "tracing_enabled", c->obs.tracing_enabled, "otlp_endpoint",
                            str_or_null(c->obs.otlp_endpoint), "prometheus_port", c->obs.prometheus_port);
    json_t *root = json_pack("{s:o, s:o, s:o}", "mp_config", mp, "storage_manager_config", sm, "obs_config", obs);
    /* Without HTTP there is no http_config, as LMCache's ZMQ-only server
     * (`python -m lmcache.v1.multiprocess.server`) hands plugins none: a
     * plugin must not be told of an address nobody listens on.
     * The token is never printed: this tree reaches plugins' environment and GET /config. */
    if (c->http.enabled)
        json_object_set_new(root, "http_config",
                            json_pack("{s:s, s:i, s:b, s:s, s:i, s:i}", "http_host", c->http.http_host, "http_port",
                                      c->http.http_port, "http_allow_insecure", c->access.http_allow_insecure,
                                      "http_allowed_hosts", c->access.http_allowed_hosts, "http_max_connections",
                                      c->access.http_max_connections, "http_timeout_seconds",
                                      c->access.http_timeout_seconds));
    if (json_truthy(m->plugin_extra_config))
        json_object_set(root, "runtime_plugin_extra_config", m->plugin_extra_config);
    return root;
}

char *config_to_python_json(const struct lmcd_config *c)
{
    json_t *j = config_to_json(c);
    char *s = pyjson_dumps(j, -1);
    json_decref(j);
    return s;
}
