/*
 * plugin: runtime plugins, LMCache's contract supervised the s6 way.
 *
 * A runtime plugin is a script (.py, .sh, or any file with a shebang) that
 * lmcd starts beside itself once the server is ready and HTTP listens. Each
 * plugin gets the server configuration as JSON in its environment (and in a
 * 0600 file), and every line it prints lands in the server log as
 * "[<path>] <line>". See docs/runtime_plugins.md.
 *
 * Ownership: plugin_sup_start() copies everything in plugin_opts; the caller
 * may free its strings afterwards. The supervisor owns every child process,
 * pipe, pidfd and the config file until plugin_sup_stop().
 *
 * Threads: one supervisor thread runs everything (spawn, output, reaping,
 * restart timers, stop) from a single epoll loop. plugin_sup_start() and
 * plugin_sup_stop() are called once each, from main(). plugin_sup_snapshot()
 * and plugin_sup_restart() may be called from any thread (HTTP handlers).
 *
 * Each plugin runs below a guard process (lmcd -> guard -> plugin) that kills
 * every descendant of the plugin once lmcd is gone, however it died. The
 * guards are cloned by one zygote process (also lmcd's child, exec'd at the
 * first launch, gone at plugin_sup_stop), and launches overlap: none waits
 * for another plugin's exec.
 *
 * Process rules the rest of lmcd must keep: nobody else reaps children
 * (no waitpid(-1), SIGCHLD not SIG_IGN), because plugins are reaped through
 * their pidfds by the supervisor.
 *
 * Left out: per-plugin log files and rotation, readiness notification,
 * cgroups (process groups and a guard process per plugin are used, see
 * plugin_guard.c), uid switching.
 */
#ifndef LMCD_PLUGIN_PLUGIN_H
#define LMCD_PLUGIN_PLUGIN_H

#include <jansson.h>
#include <stddef.h>

enum plugin_restart { PLUGIN_RESTART_NEVER, PLUGIN_RESTART_ON_FAILURE, PLUGIN_RESTART_ALWAYS };

/* "never" | "on-failure" | "always" -> 0, else -EINVAL. */
int plugin_restart_parse(const char *s, enum plugin_restart *out);
const char *plugin_restart_name(enum plugin_restart r);

#define PLUGIN_DEFAULT_MAX_RESTARTS 5
#define PLUGIN_DEFAULT_RESTART_WINDOW_S 600
#define PLUGIN_DEFAULT_STOP_TIMEOUT_MS 5000

struct plugin_opts {
    const char *const *locations; /* in order, as given by --runtime-plugin-locations */
    size_t n_locations;
    const char *config_json;   /* LMCACHE_RUNTIME_PLUGIN_CONFIG value, copied; NULL = "{}" */
    enum plugin_restart restart; /* default NEVER (as LMCache) */
    unsigned max_restarts;     /* default 5 ... */
    unsigned restart_window_s; /* ... per 600 s, then state "failed"; 0 = default */
    unsigned stop_timeout_ms;  /* SIGTERM -> SIGKILL grace, default 5000; 0 = no grace */
};

/* Fills o with the defaults above (no locations, NEVER). */
void plugin_opts_init(struct plugin_opts *o);

struct plugin_sup;

/* Discovers and spawns every plugin, then returns with the supervisor thread
 * running; every "Launched runtime plugin" line is logged before it returns.
 * Returns 0 even when some plugins fail to start (they are logged and
 * recorded as skipped/failed); -errno only for a failure of the supervisor
 * itself (thread, epoll, eventfd). With no locations it still succeeds and
 * supervises nothing. Call it after the server is ready and HTTP listens. */
int plugin_sup_start(const struct plugin_opts *o, struct plugin_sup **out);

/* SIGTERM (+SIGCONT) to every plugin's process group, waits up to
 * stop_timeout_ms, SIGKILLs the rest, reaps all, joins the thread, removes
 * the config file and frees. NULL-safe. Called from main()'s shutdown. */
void plugin_sup_stop(struct plugin_sup *s);

/* The 0600 file holding the config JSON (LMCACHE_RUNTIME_PLUGIN_CONFIG_FILE),
 * or NULL; valid until plugin_sup_stop(), which removes it. main() keeps a
 * copy so that a fast exit (no plugin_sup_stop) can still remove it. */
const char *plugin_sup_config_file(const struct plugin_sup *s);

/* Thread-safe snapshot for GET /plugins: a JSON array with one object per
 * plugin (path, interpreter, argv, pid, state, reason, started_at, uptime_s,
 * restarts, last_exit_code, lines_dropped, output_tail, ...). New reference;
 * NULL only on allocation failure. NULL s gives an empty array. */
json_t *plugin_sup_snapshot(struct plugin_sup *s);

/* Thread-safe: restarts the plugin with this path now (a running one is
 * stopped first, TERM then KILL), clearing its failed/backoff state and its
 * restart tally. 0, -ENOENT (no such path), -ESHUTDOWN (stopping). */
int plugin_sup_restart(struct plugin_sup *s, const char *path);

/* Removes the plugin config files of lmcd runs that are gone (in $TMPDIR or
 * /tmp: their owner lock is free), logging each. Called once at start,
 * with or without plugins. Returns the number removed. */
int plugin_reclaim_stale_files(void);

#endif
