/*
 * main.c: lmcd's start-up and shutdown, in a fixed order.
 *
 * Start (each step logged; ready within milliseconds of exec):
 *   1. block SIGINT/SIGTERM/SIGQUIT/SIGHUP in every thread (they arrive on a
 *      signalfd the loop polls), ignore SIGPIPE
 *   2. flags + --config -> one read-only struct lmcd_config
 *   3. engine: L1 segment, eviction controller, token hasher
 *   4. ZeroMQ ROUTER bound, pools started
 *   5. HTTP listens (and the --prometheus-port metrics listener) ->
 *      "LMCache cache server is running..." -> systemd READY=1 (sd_notify
 *      protocol, when $NOTIFY_SOCKET is set; the loop sends WATCHDOG=1)
 *   6. runtime plugins launched (after HTTP listens, unlike LMCache, so a
 *      plugin can call the API at once)
 * Stop (SIGINT or SIGTERM; bounded):
 *   1. stop accepting requests: pools finish what they hold, replies go out
 *   2. stop plugins (TERM to each group, KILL after the grace period)
 *   3. close HTTP, then ZeroMQ (pending replies get 500 ms to leave)
 *   4. free memory: engine (locks, reservations), unmap and unlink L1
 * A second SIGINT/SIGTERM during the stop, or SIGQUIT at any time, exits at
 * once (the L1 segment and the plugins' config file are still removed;
 * plugins die with us through PR_SET_PDEATHSIG).
 */
#define LOG_MODULE "lmcd.main"
#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "engine/engine.h"
#include "http/http.h"
#include "plugin/plugin.h"
#include "server/config.h"
#include "server/server.h"
#include "util/log.h"
#include "util/pyjson.h"
#include "util/sdnotify.h"
#include "version.h"

/* What a fast exit must not leave behind: the L1 segment and the plugins'
 * config file. Written by main() before the fast-exit handler is installed
 * (or SIGQUIT handled), read only by fast_exit(). */
static char fast_exit_shm[300];
static char fast_exit_cfg[PATH_MAX];

/* Async-signal-safe: unlink and _exit. Plugins die with us (PDEATHSIG). */
static void fast_exit(int sig)
{
    static const char msg[] = "lmcd: exiting at once (second signal during shutdown, or SIGQUIT)\n";
    ssize_t w = write(STDERR_FILENO, msg, sizeof(msg) - 1);
    (void)w;
    if (fast_exit_shm[0])
        shm_unlink(fast_exit_shm);
    if (fast_exit_cfg[0])
        unlink(fast_exit_cfg);
    _exit(128 + sig);
}

static void arm_fast_exit(const sigset_t *set)
{
    struct sigaction sa = { 0 };
    sa.sa_handler = fast_exit;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGQUIT, &sa, NULL);
    pthread_sigmask(SIG_UNBLOCK, set, NULL);
}

static void setup_logging(const struct lmcd_config *cfg)
{
    enum log_level lvl = LOG_INFO;
    const char *env = getenv("LMCACHE_LOG_LEVEL");
    int bad_env = 0;
    if (cfg->log_level)
        log_level_parse(cfg->log_level, &lvl);
    else if (env && *env && log_level_parse(env, &lvl))
        bad_env = 1;
    log_set_level(lvl);
    if (cfg->log_file) {
        int rc = log_set_file(cfg->log_file);
        if (rc)
            log_error("cannot open --log-file %s: %s; logging to stderr only", cfg->log_file, strerror(-rc));
    }
    if (bad_env)
        log_warn("LMCACHE_LOG_LEVEL=%s is not a level (DEBUG, INFO, WARNING, ERROR, CRITICAL); using INFO", env);
}

/* ------------------------------------------------------------ HTTP glue */

struct app {
    struct lmcd_config cfg;
    struct server srv;
    struct engine *engine;
    struct plugin_sup *plugins;
    struct http_server *http;
    struct http_server *prom; /* --prometheus-port listener, or NULL */
};

static bool app_healthy(void *ctx)
{
    struct app *a = ctx;
    return atomic_load(&a->srv.healthy) && a->engine != NULL;
}

static json_t *app_status(void *ctx) { return server_status_json(&((struct app *)ctx)->srv); }
static json_t *app_config(void *ctx) { return config_to_json(&((struct app *)ctx)->cfg); }

static json_t *app_conf(void *ctx)
{
    json_t *t = config_to_json(&((struct app *)ctx)->cfg);
    json_t *c = json_pack("{s:O, s:O, s:O, s:O}", "mp", json_object_get(t, "mp_config"), "storage_manager",
                          json_object_get(t, "storage_manager_config"), "observability",
                          json_object_get(t, "obs_config"), "http", json_object_get(t, "http_config"));
    json_decref(t);
    return c;
}

static json_t *app_version(void *ctx)
{
    struct app *a = ctx;
    return json_pack("{s:s, s:s, s:s, s:[s,s]}", "version", LMCD_VERSION, "server", "lmcd", "protocol",
                     wire_profile_name(a->srv.profile), "protocols", "lmcache-2604", "lmcache-2609");
}

static int app_clear(void *ctx)
{
    struct app *a = ctx;
    if (!a->engine)
        return -EAGAIN;
    return engine_clear(a->engine, true);
}

/* GET /l2/keys (docs/l2.md). */
static json_t *app_l2_keys(void *ctx, const char *model, size_t page_size, const char *cursor, size_t adapter,
                           unsigned *status)
{
    struct app *a = ctx;
    json_t *out = NULL;
    int rc = a->engine ? engine_l2_keys(a->engine, adapter, model, page_size, cursor, &out) : -EAGAIN;
    if (rc == 0)
        return out;
    *status = rc == -ENOTSUP ? 501 : rc == -ENOENT ? 404 : 503;
    return json_pack("{s:s}", "error", rc == -ENOTSUP ? "this L2 adapter cannot list its keys"
                                       : rc == -ENOENT ? "no such L2 adapter"
                                                       : strerror(-rc));
}

/* DELETE /cache/objects {"keys":[...], "tier":"l1"|"l2"|"all", "force":bool}. */
static json_t *app_delete_objects(void *ctx, const json_t *body, unsigned *status)
{
    struct app *a = ctx;
    const json_t *keys = json_object_get(body, "keys");
    const json_t *tier = json_object_get(body, "tier");
    const json_t *force = json_object_get(body, "force");
    size_t n = json_array_size(keys);
    if (!json_is_array(keys) || n > 10000 || (tier && !json_is_string(tier)) || (force && !json_is_boolean(force))) {
        *status = 400;
        return json_pack("{s:s}", "error", "body: {\"keys\": [key strings, at most 10000], \"tier\": "
                                           "\"l1\"|\"l2\"|\"all\", \"force\": bool}");
    }
    const char **v = calloc(n ? n : 1, sizeof(*v));
    size_t m = 0;
    for (size_t i = 0; v && i < n; i++)
        if (json_is_string(json_array_get(keys, i)))
            v[m++] = json_string_value(json_array_get(keys, i));
    size_t l1 = 0, l2 = 0, invalid = n - m;
    const char *t = tier ? json_string_value(tier) : "all";
    int rc = !v ? -ENOMEM
             : a->engine ? engine_delete_objects(a->engine, v, m, t, json_is_true(force), &l1, &l2, &invalid)
                         : -EAGAIN;
    invalid += n - m;
    free(v);
    if (rc < 0) {
        *status = rc == -EINVAL ? 400 : 503;
        return json_pack("{s:s}", "error", rc == -EINVAL ? "tier must be l1, l2 or all" : strerror(-rc));
    }
    return json_pack("{s:s, s:s, s:I, s:I, s:I, s:I}", "status", "ok", "tier", t, "requested", (json_int_t)n,
                     "l1_deleted", (json_int_t)l1, "l2_deleted", (json_int_t)l2, "invalid_keys", (json_int_t)invalid);
}

/*
 * a->plugins is read by HTTP threads (GET /plugins, POST /plugins/restart)
 * while main() publishes it after start-up and takes it away at shutdown.
 * A reader holds the lock for its whole call, so plugin_sup_stop() never
 * frees the supervisor under a snapshot in progress. Process-wide because
 * struct app is; taken on those two routes, by /metrics and twice by main().
 */
static pthread_rwlock_t plugins_lock = PTHREAD_RWLOCK_INITIALIZER;

/* NULL (the route answers 404) when metrics are off, as LMCache. */
static char *app_metrics(void *ctx)
{
    struct app *a = ctx;
    if (!a->cfg.obs.enabled || !a->cfg.obs.metrics_enabled)
        return NULL;
    pthread_rwlock_rdlock(&plugins_lock);
    json_t *plugins = plugin_sup_snapshot(a->plugins);
    pthread_rwlock_unlock(&plugins_lock);
    char *text = server_metrics_text(&a->srv, plugins);
    json_decref(plugins);
    return text;
}

static json_t *app_plugins(void *ctx)
{
    struct app *a = ctx;
    pthread_rwlock_rdlock(&plugins_lock);
    json_t *j = plugin_sup_snapshot(a->plugins);
    pthread_rwlock_unlock(&plugins_lock);
    return j;
}

static int app_plugin_restart(void *ctx, const char *path)
{
    struct app *a = ctx;
    pthread_rwlock_rdlock(&plugins_lock);
    int rc = a->plugins ? plugin_sup_restart(a->plugins, path) : -ENOENT;
    pthread_rwlock_unlock(&plugins_lock);
    return rc;
}

/* Unpublishes the supervisor, then stops it (outside the lock: the stop
 * waits for plugins, and HTTP keeps answering meanwhile, with []). */
static void stop_plugins(struct app *a)
{
    pthread_rwlock_wrlock(&plugins_lock);
    struct plugin_sup *sup = a->plugins;
    a->plugins = NULL;
    pthread_rwlock_unlock(&plugins_lock);
    plugin_sup_stop(sup);
}

/* ------------------------------------------------------------ steps */

/*
 * Descriptors: the soft RLIMIT_NOFILE is raised to the hard limit at start
 * (systemd and shells often leave 1024 of a much larger hard limit), and
 * HTTP may keep at most a quarter of it open (plus a fifth more while the
 * governor's evictions close, http_start), so an HTTP flood can never take
 * the descriptors ZeroMQ clients, plugins and L1 need (issue 11 item 8).
 */
static rlim_t nofile_soft = 1024;

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl))
        return;
    /* An unlimited hard limit is still bounded by fs.nr_open (1M by default). */
    rlim_t target = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > (1u << 20) ? (1u << 20) : rl.rlim_max;
    if (rl.rlim_cur < target) {
        rlim_t was = rl.rlim_cur;
        rl.rlim_cur = target;
        if (setrlimit(RLIMIT_NOFILE, &rl) == 0)
            log_info("raised the open-file limit from %llu to %llu", (unsigned long long)was,
                     (unsigned long long)target);
        else
            getrlimit(RLIMIT_NOFILE, &rl);
    }
    nofile_soft = rl.rlim_cur;
}

static unsigned fd_budget_http(int wanted)
{
    rlim_t quarter = nofile_soft / 4;
    unsigned cap = (unsigned)wanted;
    if (quarter < cap) {
        cap = quarter < 4 ? 4 : (unsigned)quarter;
        log_warn("--http-max-connections %d lowered to %u: a quarter of the open-file limit (%llu), the rest kept "
                 "for ZeroMQ clients",
                 wanted, cap, (unsigned long long)nofile_soft);
    }
    return cap;
}

static int start_http(struct app *a)
{
    if (!a->cfg.http.enabled) {
        log_info("HTTP disabled (--no-http)");
        return 0;
    }
    log_info("Starting LMCache HTTP server on http://%s:%d", a->cfg.http.http_host, a->cfg.http.http_port);
    const struct cfg_access *ac = &a->cfg.access;
    struct http_opts o = {
        .host = a->cfg.http.http_host, .port = a->cfg.http.http_port, .token = ac->http_auth_token,
        .allowed_hosts = ac->http_allowed_hosts, .max_connections = fd_budget_http(ac->http_max_connections),
        .timeout_s = (unsigned)ac->http_timeout_seconds,
    };
    static const struct http_handlers h0 = {
        .healthy = app_healthy, .status = app_status, .config = app_config, .conf = app_conf,
        .version = app_version, .metrics = app_metrics, .clear = app_clear, .plugins = app_plugins,
        .plugin_restart = app_plugin_restart, .l2_keys = app_l2_keys, .delete_objects = app_delete_objects,
    };
    struct http_handlers h = h0;
    h.ctx = a;
    return http_start(&o, &h, &a->http);
}

/* /metrics on --prometheus-port too (LMCache's ZeroMQ-only entry point
 * serves it there; `lmcache server` on the HTTP port: lmcd does both).
 * Not fatal: a Prometheus or another lmcd may hold 9090 on this host. */
static void start_prometheus(struct app *a)
{
    const struct cfg_obs *o = &a->cfg.obs;
    if (!o->enabled || !o->metrics_enabled || o->prometheus_port == 0)
        return;
    struct http_handlers h = { .ctx = a, .metrics = app_metrics, .metrics_only = true };
    /* read-only and scraped by one or two Prometheus servers: a few connections */
    struct http_opts ho = { .host = o->prometheus_host, .port = o->prometheus_port, .max_connections = 16,
                            .timeout_s = (unsigned)a->cfg.access.http_timeout_seconds };
    if (http_start(&ho, &h, &a->prom))
        log_warn("metrics stay on the HTTP port only: cannot listen on --prometheus-port %d (--prometheus-host %s)",
                 o->prometheus_port, o->prometheus_host);
    else
        log_info("Prometheus metrics on http://%s:%d/metrics", o->prometheus_host, o->prometheus_port);
}

static int start_engine(struct app *a)
{
    const struct lmcd_config *c = &a->cfg;
    struct engine_opts o = {
        .chunk_size = c->mp.chunk_size,
        .hash_algorithm = c->mp.hash_algorithm,
        .l1_size_bytes = c->storage.l1_size_bytes,
        .l1_align_bytes = (uint64_t)c->storage.l1_align_bytes,
        .l1_use_lazy = c->storage.l1_use_lazy,
        .l1_init_bytes = c->storage.l1_init_size_bytes,
        .shm_name = c->mp.shm_name,
        .shm_group = c->mp.shm_group,
        .l1_read_ttl_s = c->storage.l1_read_ttl_seconds,
        .l1_write_ttl_s = c->storage.l1_write_ttl_seconds,
        .eviction_policy = c->storage.eviction_policy,
        .eviction_trigger_watermark = c->storage.eviction_trigger_watermark,
        .eviction_ratio = c->storage.eviction_ratio,
        .session_ttl_s = 600,
        .inline_max_pinned_ratio = c->mp.inline_max_pinned_ratio,
        .worker_reap_timeout_s = c->mp.worker_reap_timeout_seconds,
        .max_sessions = (size_t)c->mp.max_sessions,
        .max_session_bytes = (uint64_t)c->mp.max_session_bytes,
        .worker_expire_s = c->mp.worker_expire_seconds ? c->mp.worker_expire_seconds : -1, /* 0 = never */
        .on_job_done = server_on_job_done,
        .on_job_done_ctx = &a->srv,
        .on_reap = srv_gpu_on_reap, /* the GPU path closes a reaped worker's registration */
        .on_reap_ctx = &a->srv,
        .clock = NULL,
        .l2_adapters = c->storage.l2_adapters,
        .l2_store_policy = c->storage.l2_store_policy,
        .l2_prefetch_max_in_flight = c->storage.l2_prefetch_max_in_flight,
        .l2_load_timeout_ms = (uint32_t)(c->storage.l2_prefetch_load_timeout * 1000.0),
    };
    int rc = engine_create(&o, &a->engine);
    if (rc)
        log_error("cannot start the cache engine: %s", strerror(-rc));
    return rc;
}

static void start_plugins(struct app *a)
{
    const struct lmcd_config *c = &a->cfg;
    plugin_reclaim_stale_files(); /* a crashed run's config file (secrets) */
    if (!c->mp.n_plugin_locations)
        return;
    struct plugin_opts o;
    plugin_opts_init(&o);
    o.locations = (const char *const *)c->mp.plugin_locations;
    o.n_locations = c->mp.n_plugin_locations;
    char *json = config_to_python_json(c);
    o.config_json = json;
    plugin_restart_parse(c->mp.plugin_restart, &o.restart);
    o.max_restarts = (unsigned)c->mp.plugin_max_restarts;
    o.stop_timeout_ms = (unsigned)(c->mp.plugin_stop_timeout_seconds * 1000.0);
    struct plugin_sup *sup = NULL;
    int rc = plugin_sup_start(&o, &sup);
    pthread_rwlock_wrlock(&plugins_lock); /* HTTP threads read it */
    a->plugins = sup;
    pthread_rwlock_unlock(&plugins_lock);
    if (rc)
        log_error("cannot start the runtime plugin supervisor: %s; continuing without plugins", strerror(-rc));
    free(json);
}

static void warn_unserved_config(const struct lmcd_config *c)
{
    if (c->obs.tracing_enabled)
        log_warn("--enable-tracing: validated, but this lmcd sends no OTLP spans yet");
}

/*
 * glibc serves blocks from 128 KiB up with mmap and hands an arena's free
 * top back to the kernel once it passes 128 KiB (both thresholds then drift
 * upward at run time). A 32K-token LOOKUP's session (160 KB of tokens) was
 * therefore mapped, unmapped or trimmed at END_SESSION, and faulted in again
 * by the next LOOKUP: on the development VM, where each first touch of a page
 * costs several microseconds, that was about 100 µs of every such LOOKUP and
 * 90 µs of every END_SESSION (docs/performance.md). Fixed thresholds keep
 * such blocks in the arenas for reuse; after a burst or a sweep lmcd still
 * calls malloc_trim() itself (loop.c, engine_state.c), so a peak does not
 * stay resident. An operator's own glibc settings win.
 */
#define MALLOC_MMAP_BYTES (4 << 20)
#define MALLOC_TRIM_BYTES (64 << 20)
static void malloc_setup(void)
{
    if (getenv("GLIBC_TUNABLES") || getenv("MALLOC_MMAP_THRESHOLD_") || getenv("MALLOC_TRIM_THRESHOLD_"))
        return;
    mallopt(M_MMAP_THRESHOLD, MALLOC_MMAP_BYTES);
    mallopt(M_TRIM_THRESHOLD, MALLOC_TRIM_BYTES);
}

int main(int argc, char **argv)
{
    static struct app a; /* static: too big for comfort on the stack, one per process */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGQUIT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    malloc_setup(); /* before any thread or allocation of note */
    sdnotify_init(); /* before any thread: it unsets NOTIFY_SOCKET for children */

    switch (config_load(&a.cfg, argc, argv, stdout, stderr)) {
    case CONFIG_EXIT_OK: return 0;
    case CONFIG_EXIT_USAGE: return 2;
    case CONFIG_RUN: break;
    }
    if (!strcmp(a.cfg.mp.protocol, "help")) {
        wire_protocol_help(stdout);
        config_free(&a.cfg);
        return 0;
    }
    if (a.cfg.print_config) {
        json_t *j = config_to_json(&a.cfg);
        char *s = pyjson_dumps(j, 2);
        printf("%s\n", s);
        free(s);
        json_decref(j);
        config_free(&a.cfg);
        return 0;
    }
    setup_logging(&a.cfg);
    enum wire_profile profile;
    wire_profile_parse(a.cfg.mp.protocol, &profile);
    int sigfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    int rc = 1;
    if (sigfd < 0) {
        log_error("cannot create a signalfd: %s", strerror(errno));
        return 1;
    }
    log_info("lmcd %s starting (pid %d, protocol %s)", LMCD_VERSION, (int)getpid(), a.cfg.mp.protocol);
    warn_unserved_config(&a.cfg);
    raise_nofile();
    /* Plugins calling the API need the token; they inherit it from our
     * environment (set before any thread starts: setenv is not thread-safe). */
    if (a.cfg.access.http_auth_token)
        setenv("LMCD_HTTP_TOKEN", a.cfg.access.http_auth_token, 1);

    /* HTTP threads start last, once everything they read is in place (no
     * field of `a` they read changes afterwards, but a.plugins, which
     * plugins_lock guards); plugins start after HTTP listens. */
    if (start_engine(&a))
        goto out;
    if (server_init(&a.srv, &a.cfg, profile, a.engine, sigfd))
        goto out;
    log_info("LMCache ZMQ cache server is running on %s", a.srv.endpoint);
    if (start_http(&a))
        goto out;
    start_prometheus(&a);
    log_info("LMCache cache server is running...");
    int nrc = sdnotify_send("READY=1\nSTATUS=serving");
    if (nrc)
        log_warn("cannot tell systemd we are ready ($NOTIFY_SOCKET): %s", strerror(-nrc));
    a.srv.watchdog_ns = sdnotify_watchdog_ns();
    start_plugins(&a);

    int sig = server_run(&a.srv);
    atomic_store(&a.srv.healthy, false); /* probes see 503 while we stop */
    sdnotify_send("STOPPING=1");
    const char *seg = a.engine ? engine_shm_name(a.engine) : NULL;
    if (seg && *seg)
        snprintf(fast_exit_shm, sizeof(fast_exit_shm), "/%s", seg);
    pthread_rwlock_rdlock(&plugins_lock);
    const char *cfgf = plugin_sup_config_file(a.plugins);
    if (cfgf)
        snprintf(fast_exit_cfg, sizeof(fast_exit_cfg), "%s", cfgf);
    pthread_rwlock_unlock(&plugins_lock);
    if (sig == SIGQUIT) { /* mp_server.md 1.4: SIGQUIT is the fast stop */
        log_info("Received SIGQUIT: exiting at once");
        fast_exit(sig);
    }
    if (sig)
        log_info("Received SIG%s: shutting down (send it again to exit at once)", sigabbrev_np(sig));
    else
        log_error("the ZeroMQ loop failed (see above): shutting down");
    arm_fast_exit(&set);
    server_stop(&a.srv, 500);
    log_info("Stopping runtime plugins...");
    stop_plugins(&a);
    rc = 0;
out:
    http_stop(a.http); /* before what its handlers read goes away */
    a.http = NULL;
    http_stop(a.prom);
    a.prom = NULL;
    stop_plugins(&a);
    server_destroy(&a.srv);
    engine_destroy(a.engine);
    close(sigfd);
    log_info("LMCache server stopped");
    config_free(&a.cfg);
    log_set_file(NULL);
    return rc;
}
