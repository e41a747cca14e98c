/*
 * plugin_int: the pieces of the plugin module, shared between its files and
 * its unit tests. Nothing here is for other modules: use plugin.h.
 *
 * Every function here is pure or touches only the file system (discovery,
 * interpreter lookup), so each can be tested without spawning anything.
 * None keeps global state; all are thread-safe.
 */
#ifndef LMCD_PLUGIN_PLUGIN_INT_H
#define LMCD_PLUGIN_PLUGIN_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "plugin/plugin.h"

/* ---- discovery (plugin_discover.c) ---- */

/* Python pathlib normalisation of a location: "//" collapsed, "." parts and
 * a trailing "/" dropped, "" -> ".", a leading "//" kept (POSIX). Returns a
 * malloc'd string or NULL. */
char *plugin_path_normalize(const char *loc);

struct plugin_found {
    char *path;     /* as the logs show it: normalised location [+ "/" + relative part] */
    char *realpath; /* canonical, for de-duplication */
    bool explicit_file; /* named directly: any extension, runs by its shebang */
};

struct plugin_found_list {
    struct plugin_found *v;
    size_t n, cap;
};

/* Appends the plugins found at each location, in order: an existing file as
 * is; a directory recursively, every *.py (sorted by path), then every *.sh
 * (sorted). Dotfiles and dot-directories are skipped, symlinked directories
 * are not followed, only regular files match (so a directory "x.py" does
 * not). A missing location logs the LMCache WARNING and is skipped. The same
 * real file reached twice is kept once (logged). 0 or -ENOMEM. */
int plugin_discover(const char *const *locations, size_t n, struct plugin_found_list *out);
void plugin_found_list_free(struct plugin_found_list *l);

/* Case-insensitive suffix test: plugin_has_ext("a.PY", ".py") is true. */
bool plugin_has_ext(const char *path, const char *ext);

/* ---- interpreter (plugin_interp.c) ---- */

#define PLUGIN_SHEBANG_MAX 256 /* the kernel's BINPRM_BUF_SIZE */

/* Parses a shebang the way the kernel does: "#!", optional blanks, the
 * interpreter up to the next blank, then the rest of the line (blanks
 * trimmed) as ONE optional argument. A trailing "\r" is dropped (CRLF
 * scripts). buf holds the file's first bytes (len of them).
 * Returns 1 with *interp (and *arg, NULL when absent) malloc'd; 0 when buf
 * has no shebang; -ENAMETOOLONG when the line does not end within
 * PLUGIN_SHEBANG_MAX bytes; -ENOEXEC when "#!" names nothing; -ENOMEM. */
int plugin_shebang_parse(const char *buf, size_t len, char **interp, char **arg);

/* `which`: a name with a '/' is checked as is, a bare name is searched in
 * search_path (a PATH value; NULL = "/usr/local/bin:/usr/bin:/bin"). Only an
 * executable regular file matches. Returns a malloc'd path or NULL. */
char *plugin_which(const char *name, const char *search_path);

/* How a plugin is run: argv = [interp, args..., path]. */
struct plugin_cmd {
    char *interp;    /* resolved interpreter (absolute or as found on PATH) */
    char **args;     /* NULL-terminated extra arguments before the path */
    size_t n_args;
};
void plugin_cmd_free(struct plugin_cmd *c);

/* Picks the interpreter for path:
 *   1. its shebang, parsed as above; "#!/usr/bin/env NAME [ARGS]" (and
 *      "env -S ...") resolves NAME on the PATH, like env would, and runs it
 *      directly; a bare interpreter name is searched on the PATH too;
 *   2. when there is no shebang, or it names nothing runnable: .py tries
 *      python3 then python, .sh tries bash (case-insensitive suffixes).
 * Returns 0 with *out filled; or -ENOENT / -ENOEXEC with *why (malloc'd)
 * saying why nothing can run it; -ENOMEM. Non-fatal surprises (unreadable
 * file, a shebang naming a missing interpreter) are logged here. */
int plugin_resolve(const char *path, const char *search_path, struct plugin_cmd *out, char **why);

/* ---- output lines (plugin_lines.c) ---- */

#define PLUGIN_LINE_MAX 4096 /* bytes of one relayed piece, after sanitising */

enum plugin_line_flags {
    PLUGIN_LINE_CUT = 1,  /* the line went on: more pieces follow */
    PLUGIN_LINE_CONT = 2, /* this piece continues a cut line */
};

typedef void (*plugin_line_fn)(void *ctx, const char *line, size_t len, unsigned flags);

/* Splits a byte stream into sanitised lines. "\n", "\r\n" and a lone "\r"
 * end a line (Python's universal newlines). Each line is stripped of
 * leading and trailing blanks (as LMCache does). Valid UTF-8 passes through;
 * an invalid byte becomes "\xNN", a control character "\xNN" (C0, DEL) or
 * "\u00NN" (C1); TAB stays, VT and FF count as blanks. A line longer than
 * PLUGIN_LINE_MAX is delivered in pieces cut on character boundaries. */
struct plugin_lines {
    char out[PLUGIN_LINE_MAX + 8];
    size_t len;
    size_t seen;             /* input bytes of the current line (blanks included) */
    unsigned char pend[4];   /* an incomplete UTF-8 sequence */
    unsigned npend, need;
    bool after_cr;           /* last byte was '\r': a following '\n' is part of it */
    bool cont;               /* the current piece continues a cut line */
};

void plugin_lines_init(struct plugin_lines *lb);
void plugin_lines_feed(struct plugin_lines *lb, const char *p, size_t n, plugin_line_fn fn,
                       void *ctx);
/* At EOF: delivers a last unterminated line (if any bytes are pending). */
void plugin_lines_flush(struct plugin_lines *lb, plugin_line_fn fn, void *ctx);

/* ---- restart policy (plugin_policy.c) ---- */

#define PLUGIN_BACKOFF_MIN_MS 1000
#define PLUGIN_BACKOFF_MAX_MS 60000
#define PLUGIN_STABLE_MS 10000 /* up this long: the next failure starts again at 1 s */

/* Exit code as LMCache reports it: status, or -signal for a signal death. */
bool plugin_exit_is_failure(int code);
/* Whether a plugin that ended with code (spawn_failed: never started) is
 * restarted under policy r. */
bool plugin_wants_restart(enum plugin_restart r, int code, bool spawn_failed);
/* Delay before restart number `attempt` (0-based) of a streak: 1 s doubling,
 * capped at 60 s. */
uint64_t plugin_backoff_ms(unsigned attempt);

/* Start-limit accounting: the times (ms) of the restarts inside the window. */
struct plugin_throttle {
    uint64_t *t;       /* ring of max timestamps */
    unsigned max;      /* max restarts per window */
    unsigned n, head;  /* entries held, next slot */
    uint64_t window_ms;
    unsigned streak;   /* restarts since the plugin last stayed up PLUGIN_STABLE_MS */
};
int plugin_throttle_init(struct plugin_throttle *t, unsigned max, uint64_t window_ms);
void plugin_throttle_free(struct plugin_throttle *t);
void plugin_throttle_reset(struct plugin_throttle *t);
/* Restarts recorded within (now - window, now]. */
unsigned plugin_throttle_count(const struct plugin_throttle *t, uint64_t now_ms);
/* Decides after an exit: returns the delay in ms before the next start, or
 * -1 when the start limit is reached (the plugin is then "failed").
 * ran_ms: how long the instance ran (resets the streak when stable). */
int64_t plugin_throttle_next(struct plugin_throttle *t, uint64_t now_ms, uint64_t ran_ms);
/* Records a restart at now. */
void plugin_throttle_record(struct plugin_throttle *t, uint64_t now_ms);

/* ---- spawning (plugin_spawn.c) ---- */

#define PLUGIN_ENV_CONFIG_MAX (100 * 1024) /* above it the JSON travels only as a file */

/* The environment every plugin gets: the server's (names we set removed)
 * plus the LMCache variables, PYTHONUNBUFFERED=1, and
 * LMCACHE_RUNTIME_PLUGIN_CONFIG_FILE when config_file is set. The config
 * JSON is left out when longer than PLUGIN_ENV_CONFIG_MAX (*json_omitted).
 * Returns a malloc'd NULL-terminated vector (free with plugin_envp_free). */
char **plugin_envp_build(char *const *base, const char *config_json, const char *config_file,
                         bool *json_omitted);
void plugin_envp_free(char **envp);

#define PLUGIN_CONFIG_FILE_PREFIX "lmcd-plugin-config."
/* Writes json to a fresh 0600 file in $TMPDIR (or /tmp). *fd_out gets the open fd
 * that holds the file's owner lock: keep it open until the file is
 * unlinked. Returns the malloc'd path, or NULL with errno set. */
char *plugin_config_file_write(const char *json, int *fd_out);

struct plugin_proc {
    int pid;       /* the plugin: leader of its own session and process group; 0 until reported */
    int guard_pid; /* its guard, our child */
    int helper_pid; /* the zygote's helper that cloned the guard (our child, exits at once) */
    int pidfd;     /* of the guard: readable when the guard exits; O_CLOEXEC */
    int out_fd;    /* read end of the merged stdout+stderr pipe; O_NONBLOCK|O_CLOEXEC */
    int rep_fd;    /* read end of the guard's report pipe while the launch is pending, else -1 */
    int rep_errno; /* first errno reported (a failed guard step or the plugin's failed exec) */
    bool via_zygote;  /* the guard is cloned by the zygote: its pid comes as a report (tag 3) */
    bool zygote_lost; /* the launch failed because the zygote died before it cloned a guard */
};
#define PLUGIN_PROC_NONE \
    ((struct plugin_proc){ .pid = 0, .guard_pid = 0, .helper_pid = 0, .pidfd = -1, .out_fd = -1, .rep_fd = -1 })

/* The zygote: one guard process exec'd once (lazily, at the first launch),
 * which clones every further guard instead of lmcd exec'ing one per plugin
 * (an exec costs milliseconds of CPU here; a clone of the small zygote a
 * fraction of one). It clones with CLONE_PARENT, so each guard is lmcd's
 * child as an exec'd one is. Supervisor thread only. */
struct plugin_zygote {
    int pid;   /* 0: not running */
    int pidfd;
    int sock;  /* our end of the SOCK_SEQPACKET pair; O_NONBLOCK */
    bool off;  /* never started, or lost: every guard is exec'd */
};
#define PLUGIN_ZYGOTE_INIT ((struct plugin_zygote){ .pid = 0, .pidfd = -1, .sock = -1, .off = false })
/* Stops it (EOF, SIGKILL) and reaps it. Safe on a stopped one. */
void plugin_zygote_stop(struct plugin_zygote *z);
/* A launch said the zygote is gone (zygote_lost): logs, stops, turns it off. */
void plugin_zygote_lost(struct plugin_zygote *z);

/* Starts the plugin argv[0] with envp under a guard (plugin_guard.c):
 * lmcd -> guard -> plugin. The plugin: new session (setsid), stdin
 * /dev/null, stdout and stderr one pipe, every other fd closed, signals
 * unblocked and at their defaults, PR_SET_PDEATHSIG SIGKILL (on the guard).
 * The guard outlives lmcd just long enough to kill every descendant, and
 * exits with the plugin's status once its whole tree is gone (grace_ms after
 * SIGTERM to leftovers).
 * The guard is cloned by the zygote z (started here at the first call), or
 * exec'd when z is NULL or off, or in sanitizer builds.
 * Returns as posix_spawn does, once the guard's exec is under way (or the
 * zygote has the request), without waiting for the plugin's own exec: the launch is then pending, and
 * out->rep_fd (O_NONBLOCK) becomes readable as the guard reports; call
 * plugin_proc_launch_poll() then. 0 with *out filled (pid 0), or -errno
 * with nothing left open or running. */
int plugin_proc_start(struct plugin_zygote *z, char *const argv[], char *const envp[], unsigned grace_ms,
                      struct plugin_proc *out);

/* Reads what the guard reported so far; never blocks.
 *   1: still pending (read again when rep_fd is readable);
 *   0: the plugin has exec'd: p->pid is set;
 *   -errno: the launch failed (the exec's own errno, e.g. -E2BIG, -ENOEXEC;
 *      -ECHILD when the guard died without a word): the guard is killed and
 *      reaped, pidfd and out_fd closed.
 * In both final cases rep_fd is still open, so the caller can take it out
 * of its epoll first: then plugin_proc_rep_close(). */
int plugin_proc_launch_poll(struct plugin_proc *p);
/* Gives up on a pending launch: SIGKILL to the guard (its plugin follows
 * through PR_SET_PDEATHSIG), reaped; pidfd and out_fd closed, rep_fd left
 * to the caller as above. */
void plugin_proc_launch_abort(struct plugin_proc *p);
void plugin_proc_rep_close(struct plugin_proc *p);

/* ---- guard (plugin_guard.c) ---- */

/* argv[1] of a guard: /proc/self/exe run with it becomes the guard (a
 * constructor runs it before main). */
#define PLUGIN_GUARD_ARG "--lmcd-plugin-guard"
/* argv[1] of the zygote (see plugin_zygote_start). */
#define PLUGIN_ZYGOTE_ARG "--lmcd-plugin-zygote"
/* Bytes of one launch's argv the zygote takes; a longer one execs a guard. */
#define PLUGIN_ZYGOTE_MSG_MAX 16384
/* The guard's argv: its name, PLUGIN_GUARD_ARG, lmcd's pid, grace_ms, then
 * plugin_argv (borrowed). Free with plugin_guard_argv_free. NULL: no memory. */
char **plugin_guard_argv(int lmcd_pid, unsigned grace_ms, char *const plugin_argv[]);
/* What to exec as the guard: lmcd-plugin-guard beside this binary, else
 * /proc/self/exe. Resolved once; any thread. */
const char *plugin_guard_exe(void);
void plugin_guard_argv_free(char **v);

#endif
