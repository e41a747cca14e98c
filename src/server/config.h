/*
 * config: LMCache's MP server flags and their JSON tree, one source of truth.
 *
 * Every flag lives in one table (config.c: name, type, default, JSON path,
 * validation, help). From it come the argv parser, the --config FILE reader,
 * --help, and the aggregated JSON that runtime plugins receive and that
 * `lmcd --print-config`, GET /config and GET /conf show.
 *
 * Precedence: built-in defaults < --config FILE < command-line flags.
 *
 * Ownership and threads: config_load() fills a struct lmcd_config that main()
 * owns; after start-up it is read-only and may be read from any thread
 * without a lock. config_free() releases it at exit.
 *
 * Differences from LMCache (each also said in --help and docs/configuration.md):
 *   --l1-size-gb and --eviction-policy are optional (1 GiB, LRU) so lmcd
 *   starts with no flags; --http-host defaults to 127.0.0.1; --no-http runs
 *   without HTTP; --config FILE exists (LMCache has flags only).
 */
#ifndef LMCD_SERVER_CONFIG_H
#define LMCD_SERVER_CONFIG_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct cfg_mp {
    char *host;
    int port;
    int chunk_size;
    int max_workers;
    int max_gpu_workers; /* resolved: the flag, else max_workers */
    int max_cpu_workers; /* resolved: the flag, else max_workers */
    char *hash_algorithm;
    char *engine_type;
    char **plugin_locations; /* NULL-terminated */
    size_t n_plugin_locations;
    json_t *plugin_extra_config; /* parsed --runtime-plugin-config; never NULL */
    /* lmcd's own (also in mp_config, after LMCache's keys) */
    char *protocol;
    int64_t max_message_bytes;
    bool send_error_frames;
    char *shm_name; /* "" = default lmcache_l1_pool_<pid>, resolved at start */
    char *shm_group;
    int worker_reap_timeout_seconds;
    char *plugin_restart;
    int plugin_max_restarts;
    double plugin_stop_timeout_seconds;
    /* bounded memory and fair service (issue 11; docs/configuration.md "Limits") */
    int64_t max_in_flight_bytes;      /* all peers: past it the loop stops reading */
    int64_t max_peer_in_flight_bytes; /* one peer: past it its requests get safe replies */
    int max_peer_in_flight;           /* one peer, requests */
    int max_sessions;
    int64_t max_session_bytes;        /* token lists and hashes of all sessions */
    int worker_expire_seconds;        /* forget a silent registration; 0 = never */
    double stop_timeout_seconds;      /* SIGTERM: queued requests run this long, then safe replies */
    double inline_max_pinned_ratio; /* share of L1 unsent retrieve_inline replies may pin */
    /* GPU path (issue 8, docs/gpu.md) */
    char *supported_transfer_mode; /* lmcache_driven | engine_driven | auto */
    int64_t null_block_id;         /* blocks with this id are neither read nor written */
    char *gpu_copy_path;           /* auto | direct | staging (lmcd only, docs/gpu.md) */
    bool isolated_ipc;             /* clients' lmcache.mp.isolated_ipc: refused (not served) */
    int gpu_event_timeout_seconds; /* a copy waiting longer on its worker's event is detached from waits */
};

struct cfg_storage {
    uint64_t l1_size_bytes;
    bool l1_use_lazy;
    uint64_t l1_init_size_bytes; /* min(init flag, size) */
    int64_t l1_init_size_gb;
    int64_t l1_align_bytes;
    int l1_write_ttl_seconds;
    int l1_read_ttl_seconds;
    char *eviction_policy;
    double eviction_trigger_watermark;
    double eviction_ratio;
    json_t *l2_adapters; /* array of validated objects; never NULL */
    char *l2_store_policy;
    char *l2_prefetch_policy;
    int l2_prefetch_max_in_flight;
    double l2_prefetch_load_timeout; /* seconds */
};

struct cfg_obs {
    bool enabled;
    bool metrics_enabled;
    bool logging_enabled;
    bool tracing_enabled;
    char *otlp_endpoint; /* NULL = unset */
    int max_queue_size;
    int prometheus_port;    /* 0 = no separate metrics listener */
    char *prometheus_host;  /* lmcd: bind address of that listener (127.0.0.1) */
};

struct cfg_http {
    bool enabled;
    char *http_host;
    int http_port;
};

/* Who may use the cache, and HTTP limits (docs/security.md). */
#define CFG_MAX_IDS 64
struct cfg_access {
    char *ipc_mode;       /* as given; "" = 0600, or 0660 with --shm-group */
    int ipc_mode_bits;    /* resolved */
    char *allowed_uids;   /* as given; "" = no peer-credential filter */
    char *allowed_gids;
    unsigned uids[CFG_MAX_IDS], gids[CFG_MAX_IDS]; /* resolved */
    size_t n_uids, n_gids;
    bool inline_ops;      /* lmcd.store_inline / lmcd.retrieve_inline served */
    char *http_auth_token; /* NULL = none (also from LMCD_HTTP_TOKEN); never printed */
    bool http_allow_insecure;
    char *http_allowed_hosts; /* extra Host names accepted on mutations, comma-separated */
    int http_max_connections;
    int http_timeout_seconds;
};

struct lmcd_config {
    struct cfg_mp mp;
    struct cfg_storage storage;
    struct cfg_obs obs;
    struct cfg_http http;
    struct cfg_access access;
    char *log_level; /* NULL = LMCACHE_LOG_LEVEL or INFO */
    char *log_file;
    char *config_file;
    bool print_config;
};

/* What config_load() asks the caller to do. */
enum config_action {
    CONFIG_RUN = 0,
    CONFIG_EXIT_OK,    /* --help / --version / --protocol help printed */
    CONFIG_EXIT_USAGE, /* bad input: one line on stderr already printed; exit 2 */
};

/*
 * Fills *c from defaults, --config FILE and argv (argv[0] is the program).
 * Prints --help/--version to out and errors to err (one line, argparse
 * style: "lmcd: error: argument --x: ..."). On CONFIG_RUN the caller owns *c
 * and frees it with config_free(); otherwise *c is already freed.
 */
enum config_action config_load(struct lmcd_config *c, int argc, char **argv, FILE *out, FILE *err);
void config_free(struct lmcd_config *c);

/*
 * The aggregated config tree (new reference), key order as LMCache's:
 * mp_config, storage_manager_config, obs_config, http_config (absent with
 * --no-http), then runtime_plugin_extra_config only when the extra config
 * is truthy.
 */
json_t *config_to_json(const struct lmcd_config *c);

/* The same tree as one line in Python json.dumps form; malloc'd. */
char *config_to_python_json(const struct lmcd_config *c);

/* Writes the usage text (every flag, grouped) to out. */
void config_print_help(FILE *out);

#endif
