/*
 * Plugin supervisor: one thread, one epoll, every plugin.
 *
 * DESIGN
 *   epoll watches, with level triggering:
 *     - an eventfd: commands from other threads (restart a path, stop all);
 *     - per plugin being launched, the guard's report pipe (the plugin's
 *       pid, or its exec's errno; EOF at the exec): no launch waits for
 *       another's exec (plugin_spawn.c);
 *     - per plugin, the read end of its merged stdout+stderr pipe;
 *     - per plugin, its pidfd, readable once the process has exited.
 *   The epoll timeout is the nearest per-plugin deadline (a backoff restart
 *   or a SIGKILL after the stop grace), so a timeout is one more event, as
 *   in s6-supervise. Output is read in bounded slices per wakeup, so a
 *   flooding plugin cannot starve the others or the commands.
 *
 *   Each plugin moves through a state table, actions[state][event]: every
 *   pair is decided explicitly, "nothing to do" included.
 *
 *          start      report: exec'd        exit, policy says restart
 *   (new) -------> starting -------> running -------------------> backoff
 *     |                               |  \  restart/stop cmd         |  timer
 *     | no interpreter                |   `------------> stopping    |
 *     v                               | exit, no restart    | exit   v
 *   skipped                           v                     v      starting
 *                                   exited <----------------'
 *     start limit reached or launch failed (never): failed
 *   starting: a stop or restart asked meanwhile waits for the report.
 *
 *   A plugin's process leads its own process group. When it exits, what
 *   is left of the group gets SIGTERM+SIGCONT and, after the stop timeout,
 *   SIGKILL (systemd's behaviour when a main process ends).
 *
 * LOCKING
 *   sup->lock guards the published view of each plugin (the fields marked
 *   "guarded by lock") and the command flags. The supervisor thread is the
 *   only writer of everything; it reads its own fields without the lock.
 *   The lock is never held across a system call other than a short log.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#define LOG_MODULE "lmcd.plugin"
#include "util/log.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "plugin/plugin_int.h"

extern char **environ;

#define TAIL_LINES 20
#define READ_SLICE 16384
#define READ_SLICES_PER_WAKEUP 4     /* 64 KiB per plugin per wakeup */
#define DRAIN_AT_EXIT_MAX (1 << 20)  /* output read after the exit before the pipe is closed */
#define KILL_WAIT_MS 5000            /* after SIGKILL, how long stop waits for the reap */
#define RL_WINDOW_MS 30000           /* journald's default rate limit: 10000 lines per 30 s */
#define RL_BURST 10000

enum pstate { PS_SKIPPED, PS_STARTING, PS_RUNNING, PS_STOPPING, PS_BACKOFF, PS_EXITED, PS_FAILED, PS__N };
enum pevent { EV_EXIT, EV_TIMER, EV_RESTART, EV_STOP, EV__N };

static const char *const state_names[PS__N] = {
    [PS_SKIPPED] = "skipped", [PS_STARTING] = "starting", [PS_RUNNING] = "running", [PS_STOPPING] = "stopping",
    [PS_BACKOFF] = "backoff", [PS_EXITED] = "exited",   [PS_FAILED] = "failed",
};

struct plugin {
    char *path;                 /* immutable */
    struct plugin_sup *sup;

    /* supervisor thread only */
    struct plugin_cmd cmd;
    struct plugin_proc proc;    /* fds -1 and pid 0 when no process */
    struct plugin_lines lines;
    struct plugin_throttle thr;
    uint64_t start_ms;          /* monotonic */
    uint64_t deadline_ms;       /* 0 = none */
    bool want_restart;          /* start again once the current process is gone */
    bool launch_counts;         /* the pending launch is automatic (spawn's counts) */
    bool rep_watched;           /* proc.rep_fd is in the epoll */
    bool launch_done;           /* settled, launch_end() not run yet (first round) */
    bool launch_zlost;          /* ... because the zygote was lost */
    int launch_rc;              /* ... with this result */
    bool killed;                /* SIGKILL sent to this instance */
    int exit_code;              /* of the instance just reaped */
    int spawn_errno;            /* of the last failed launch */
    int linger_pgid;            /* a group left behind by an exited leader, 0 = none */
    uint64_t linger_deadline_ms;
    uint64_t rl_start_ms;
    unsigned rl_lines;
    uint64_t rl_dropped;        /* in the current window, not yet reported */

    /* guarded by sup->lock */
    enum pstate state;
    char *reason;
    json_t *argv_json;
    int pid;
    uint64_t started_wall_ms;
    uint64_t next_start_ms;     /* monotonic, in backoff */
    unsigned restarts;
    bool has_exit;
    int last_exit;
    uint64_t lines_dropped;
    char *tail[TAIL_LINES];
    unsigned tail_head, tail_n;
    bool restart_req;           /* posted by plugin_sup_restart() */
};

struct plugin_sup {
    /* immutable after start */
    char **locations;
    size_t n_locations;
    enum plugin_restart restart;
    unsigned max_restarts;
    uint64_t window_ms;
    uint64_t stop_timeout_ms;
    char *config_file;
    int config_fd;            /* holds config_file's owner lock (util/runfile.h) */
    char **envp;
    const char *search_path;    /* PATH of envp, for interpreter lookup */
    int epfd, evfd;
    pthread_t thread;
    bool thread_started;

    /* supervisor thread only */
    struct plugin_zygote zyg;   /* clones the guards (plugin_int.h) */
    bool first_round;           /* launch_all's launches are not all ended yet */
    size_t next_end;            /* first round: plugins before it are ended, in order */
    bool stopping;
    uint64_t stop_hard_deadline_ms;

    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct plugin *plugins;     /* guarded by lock until ready, then immutable array */
    size_t n;
    bool ready;                 /* guarded by lock: the first launch round is done */
    bool stop_req;              /* guarded by lock */
    int start_rc;               /* guarded by lock */
};

typedef void (*action_fn)(struct plugin *p);

static uint64_t now_ms(void) { return clock_mono_ms(); }

/* ---------- published view ---------- */

static void set_state(struct plugin *p, enum pstate st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_state(struct plugin *p, enum pstate st, const char *fmt, ...)
{
    char *r = NULL;
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        if (vasprintf(&r, fmt, ap) < 0)
            r = NULL;
        va_end(ap);
    }
    pthread_mutex_lock(&p->sup->lock);
    p->state = st;
    free(p->reason);
    p->reason = r;
    p->pid = (st == PS_RUNNING || st == PS_STOPPING) ? p->proc.pid : 0;
    pthread_mutex_unlock(&p->sup->lock);
}

static void tail_push(struct plugin *p, const char *line, size_t len)
{
    char *s = strndup(line, len);
    pthread_mutex_lock(&p->sup->lock);
    unsigned slot = (p->tail_head + p->tail_n) % TAIL_LINES;
    if (p->tail_n == TAIL_LINES) {
        free(p->tail[p->tail_head]);
        p->tail_head = (p->tail_head + 1) % TAIL_LINES;
    } else {
        p->tail_n++;
    }
    p->tail[slot] = s; /* NULL on allocation failure: shown as "" */
    pthread_mutex_unlock(&p->sup->lock);
}

/* ---------- output ---------- */

static void report_dropped(struct plugin *p)
{
    if (!p->rl_dropped)
        return;
    log_warn("Runtime plugin %s printed more than %d lines in %d s; %llu lines were not logged "
             "(the last %d stay visible in GET /plugins)", p->path, RL_BURST, RL_WINDOW_MS / 1000,
             (unsigned long long)p->rl_dropped, TAIL_LINES);
    p->rl_dropped = 0;
}

/* Per-plugin log rate limit: 1 = log this line. */
static int rate_ok(struct plugin *p)
{
    uint64_t t = now_ms();
    if (t - p->rl_start_ms >= RL_WINDOW_MS) {
        report_dropped(p);
        p->rl_start_ms = t;
        p->rl_lines = 0;
    }
    if (p->rl_lines < RL_BURST) {
        p->rl_lines++;
        return 1;
    }
    p->rl_dropped++;
    pthread_mutex_lock(&p->sup->lock);
    p->lines_dropped++;
    pthread_mutex_unlock(&p->sup->lock);
    return 0;
}

static void on_line(void *ctx, const char *line, size_t len, unsigned flags)
{
    struct plugin *p = ctx;
    tail_push(p, line, len);
    if (LOG_INFO < log_get_level() || !rate_ok(p))
        return;
    char buf[LOG_LINE_MAX];
    int n = snprintf(buf, sizeof(buf), "[%s] %s%.*s", p->path,
                     (flags & PLUGIN_LINE_CONT) ? "(continued) " : "", (int)len, line);
    if (n < 0)
        return;
    log_emit_raw(LOG_INFO, LOG__FILE, __LINE__, LOG_MODULE, buf,
                 (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
}

static void close_output(struct plugin *p)
{
    if (p->proc.out_fd < 0)
        return;
    epoll_ctl(p->sup->epfd, EPOLL_CTL_DEL, p->proc.out_fd, NULL);
    close(p->proc.out_fd);
    p->proc.out_fd = -1;
    plugin_lines_flush(&p->lines, on_line, p);
}

/* Reads at most max bytes of output. Returns 1 at EOF or error (the pipe
 * is then closed), 0 otherwise. */
static int read_output(struct plugin *p, size_t max)
{
    char buf[READ_SLICE];
    size_t got = 0;
    while (p->proc.out_fd >= 0 && got < max) {
        ssize_t r = read(p->proc.out_fd, buf, sizeof(buf));
        if (r > 0) {
            plugin_lines_feed(&p->lines, buf, (size_t)r, on_line, p);
            got += (size_t)r;
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN)
            return 0;
        if (r < 0)
            log_error("Error capturing output for %s: %s", p->path, strerror(errno));
        close_output(p);
        return 1;
    }
    return 0;
}

/* ---------- processes ---------- */

static void killpg_quiet(int pgid, int sig)
{
    if (pgid > 0 && kill(-pgid, sig) < 0 && errno != ESRCH)
        log_warn("Cannot send signal %d to runtime plugin process group %d: %s", sig, pgid,
                 strerror(errno));
}

static void linger_kill(struct plugin *p)
{
    if (p->linger_pgid) {
        killpg_quiet(p->linger_pgid, SIGKILL);
        p->linger_pgid = 0;
        p->linger_deadline_ms = 0;
    }
}

static void decide_after_exit(struct plugin *p, bool spawn_failed);
static int launch_settle(struct plugin *p, int rc);
static int launch_end(struct plugin *p);
static void launch_failed(struct plugin *p, int err);
static void act_term(struct plugin *p);
static void act_term_restart(struct plugin *p);
static void act_start_now(struct plugin *p);

/* Resolves the interpreter and starts the launch: the guard is exec'd, the
 * plugin's own exec is reported later through the report pipe, which the
 * loop watches (state "starting"), so launches overlap. 0, or -1 when
 * nothing runs (the state says why). counts: a launch failure goes through
 * the restart policy (automatic starts) rather than straight to "failed". */
static int spawn(struct plugin *p, bool counts)
{
    struct plugin_sup *s = p->sup;
    char *why = NULL;
    plugin_cmd_free(&p->cmd);
    linger_kill(p); /* a new instance never shares the stage with the old group */
    int rc = plugin_resolve(p->path, s->search_path, &p->cmd, &why);
    if (rc < 0) {
        log_error("Failed to launch plugin %s: %s", p->path, why ? why : strerror(-rc));
        set_state(p, PS_SKIPPED, "%s", why ? why : strerror(-rc));
        free(why);
        return -1;
    }
    size_t na = p->cmd.n_args;
    char **argv = calloc(na + 3, sizeof(*argv));
    json_t *aj = json_array();
    if (!argv || !aj) {
        free(argv);
        json_decref(aj);
        log_error("Failed to launch plugin %s: out of memory", p->path);
        set_state(p, PS_FAILED, "out of memory");
        return -1;
    }
    argv[0] = p->cmd.interp;
    for (size_t i = 0; i < na; i++)
        argv[1 + i] = p->cmd.args[i];
    argv[1 + na] = p->path;
    for (size_t i = 0; i < na + 2; i++)
        json_array_append_new(aj, json_string_nocheck(argv[i])); /* paths may not be UTF-8; see snapshot */

    pthread_mutex_lock(&s->lock);
    json_decref(p->argv_json);
    p->argv_json = aj;
    pthread_mutex_unlock(&s->lock);

    rc = plugin_proc_start(&s->zyg, argv, s->envp, (unsigned)s->stop_timeout_ms, &p->proc);
    free(argv);
    p->want_restart = false;
    p->launch_counts = counts;
    set_state(p, PS_STARTING, NULL);
    if (rc < 0)
        return launch_settle(p, rc);
    /* The launch is pending until the guard reports (launch_progress). */
    uint64_t idx = (uint64_t)(p - s->plugins);
    struct epoll_event evr = { .events = EPOLLIN, .data.u64 = (idx << 2) | 3 };
    if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, p->proc.rep_fd, &evr) < 0) {
        /* cannot wait for it in the loop: wait here, as before launches overlapped */
        log_warn("Runtime plugin %s: cannot watch its launch (%s); waiting for it", p->path,
                 strerror(errno));
        struct pollfd pf = { .fd = p->proc.rep_fd, .events = POLLIN };
        while ((rc = plugin_proc_launch_poll(&p->proc)) == 1)
            (void)poll(&pf, 1, -1);
        p->rep_watched = false;
        return launch_settle(p, rc);
    }
    p->rep_watched = true;
    return 0;
}

/* Reads the guard's report of a pending launch (its pipe is readable). */
static void launch_progress(struct plugin *p)
{
    int rc = plugin_proc_launch_poll(&p->proc);
    if (rc != 1)
        launch_settle(p, rc);
}

/* The launch is over (rc: 0 or -errno, from plugin_proc_start or
 * plugin_proc_launch_poll). Its report pipe goes at once; what follows
 * (launch_end) waits, in the first round, until every plugin before it in
 * discovery order is settled, so the log shows the launches in that order,
 * as when each launch waited for the one before. */
static int launch_settle(struct plugin *p, int rc)
{
    struct plugin_sup *s = p->sup;
    if (p->rep_watched)
        epoll_ctl(s->epfd, EPOLL_CTL_DEL, p->proc.rep_fd, NULL);
    p->rep_watched = false;
    p->launch_zlost = p->proc.zygote_lost;
    plugin_proc_rep_close(&p->proc);
    p->launch_rc = rc;
    p->launch_done = true;
    if (s->first_round)
        return rc < 0 ? -1 : 0; /* finish_in_order() ends it */
    return launch_end(p);
}

/* The settled launch goes on: the plugin runs, watched and logged
 * "Launched", or its failure is handled. 0 when it runs, -1 when not. */
static int launch_end(struct plugin *p)
{
    struct plugin_sup *s = p->sup;
    int rc = p->launch_rc;
    p->launch_done = false;
    if (rc < 0 && p->launch_zlost && !s->stopping) {
        /* not the plugin's failure: launch it again, its guard exec'd */
        plugin_zygote_lost(&s->zyg);
        return spawn(p, p->launch_counts);
    }
    if (rc < 0) {
        launch_failed(p, -rc);
        return -1;
    }
    uint64_t idx = (uint64_t)(p - s->plugins);
    struct epoll_event ev = { .events = EPOLLIN, .data.u64 = (idx << 2) | 1 };
    struct epoll_event evp = { .events = EPOLLIN, .data.u64 = (idx << 2) | 2 };
    if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, p->proc.out_fd, &ev) < 0 ||
        epoll_ctl(s->epfd, EPOLL_CTL_ADD, p->proc.pidfd, &evp) < 0) {
        /* cannot watch it, so it must not run unwatched */
        rc = -errno;
        log_error("Failed to launch plugin %s: cannot watch it: %s", p->path, strerror(-rc));
        killpg_quiet(p->proc.pid, SIGKILL);
        siginfo_t si;
        while (waitid(P_PIDFD, (id_t)p->proc.pidfd, &si, WEXITED) < 0 && errno == EINTR)
            ;
        epoll_ctl(s->epfd, EPOLL_CTL_DEL, p->proc.out_fd, NULL);
        close(p->proc.out_fd);
        close(p->proc.pidfd);
        p->proc = PLUGIN_PROC_NONE;
        set_state(p, PS_FAILED, "cannot watch the process: %s", strerror(-rc));
        return -1;
    }
    plugin_lines_init(&p->lines);
    p->start_ms = now_ms();
    p->killed = false;
    p->deadline_ms = 0;
    pthread_mutex_lock(&s->lock);
    p->started_wall_ms = clock_wall_ns() / 1000000;
    p->next_start_ms = 0;
    pthread_mutex_unlock(&s->lock);
    set_state(p, PS_RUNNING, NULL);
    log_info("Launched runtime plugin: %s with %s", p->path, p->cmd.interp);
    /* what was asked while it started */
    if (s->stopping)
        act_term(p);
    else if (p->want_restart)
        act_term_restart(p);
    return 0;
}

/* A launch that failed (its exec, the guard, or before the guard ran). */
static void launch_failed(struct plugin *p, int err)
{
    p->proc = PLUGIN_PROC_NONE;
    log_error("Failed to launch plugin %s: %s", p->path, strerror(err));
    p->exit_code = 127;
    p->spawn_errno = err;
    if (p->sup->stopping) {
        set_state(p, PS_FAILED, "launch failed: %s", strerror(err));
    } else if (p->want_restart) { /* asked while it started: one more try, as act_start_now */
        p->want_restart = false;
        act_start_now(p);
    } else if (p->launch_counts) {
        decide_after_exit(p, true);
    } else {
        set_state(p, PS_FAILED, "launch failed: %s", strerror(err));
    }
}

/* Collects the exit status; drains what the plugin wrote before dying. */
static void reap(struct plugin *p)
{
    siginfo_t si;
    memset(&si, 0, sizeof(si));
    int r;
    do
        r = waitid(P_PIDFD, (id_t)p->proc.pidfd, &si, WEXITED | WNOHANG);
    while (r < 0 && errno == EINTR);
    if (r < 0 || si.si_pid == 0)
        return; /* not exited yet (spurious wakeup) */
    int code = si.si_code == CLD_EXITED ? si.si_status : -si.si_status;
    read_output(p, DRAIN_AT_EXIT_MAX);
    close_output(p);
    epoll_ctl(p->sup->epfd, EPOLL_CTL_DEL, p->proc.pidfd, NULL);
    close(p->proc.pidfd);
    /* what is left of its group (grandchildren) is stopped like the plugin */
    if (kill(-p->proc.pid, 0) == 0) {
        killpg_quiet(p->proc.pid, SIGTERM);
        killpg_quiet(p->proc.pid, SIGCONT);
        p->linger_pgid = p->proc.pid;
        p->linger_deadline_ms = now_ms() + p->sup->stop_timeout_ms;
    }
    p->proc = PLUGIN_PROC_NONE;
    p->exit_code = code;
    pthread_mutex_lock(&p->sup->lock);
    p->has_exit = true;
    p->last_exit = code;
    pthread_mutex_unlock(&p->sup->lock);
    log_info("Runtime plugin %s exited with code %d", p->path, code);
}

static void term_instance(struct plugin *p)
{
    /* the guard passes SIGTERM on to whatever left the plugin's group */
    if (syscall(SYS_pidfd_send_signal, p->proc.pidfd, SIGTERM, NULL, 0) < 0 && errno != ESRCH)
        log_warn("Cannot signal the guard of runtime plugin %s: %s", p->path, strerror(errno));
    killpg_quiet(p->proc.pid, SIGTERM);
    killpg_quiet(p->proc.pid, SIGCONT); /* a stopped process must be able to act on it */
    p->deadline_ms = now_ms() + p->sup->stop_timeout_ms;
}

/* ---------- actions[state][event] ---------- */

static void act_nop(struct plugin *p) { (void)p; }

static void decide_after_exit(struct plugin *p, bool spawn_failed)
{
    struct plugin_sup *s = p->sup;
    int code = p->exit_code;
    if (!plugin_wants_restart(s->restart, code, spawn_failed)) {
        if (spawn_failed)
            set_state(p, PS_FAILED, "launch failed: %s", strerror(p->spawn_errno));
        else
            set_state(p, PS_EXITED, "exited with code %d", code);
        return;
    }
    uint64_t t = now_ms();
    int64_t delay = plugin_throttle_next(&p->thr, t, spawn_failed ? 0 : t - p->start_ms);
    if (delay < 0) {
        log_error("Runtime plugin %s restarted %u times within %llu s; not restarting it again "
                  "(state failed; POST /plugins/restart starts it by hand)", p->path,
                  s->max_restarts, (unsigned long long)(s->window_ms / 1000));
        set_state(p, PS_FAILED, "%s %d; restart limit reached (%u per %llu s)",
                  spawn_failed ? "launch failed, errno" : "exited with code",
                  spawn_failed ? p->spawn_errno : code, s->max_restarts,
                  (unsigned long long)(s->window_ms / 1000));
        return;
    }
    p->deadline_ms = t + (uint64_t)delay;
    pthread_mutex_lock(&s->lock);
    p->next_start_ms = p->deadline_ms;
    pthread_mutex_unlock(&s->lock);
    log_info("Restarting runtime plugin %s in %.1f s (restart policy %s)", p->path,
             (double)delay / 1000.0, plugin_restart_name(s->restart));
    set_state(p, PS_BACKOFF, "%s %d; restarting in %.1f s",
              spawn_failed ? "launch failed, errno" : "exited with code",
              spawn_failed ? p->spawn_errno : code, (double)delay / 1000.0);
}

/* A process was reaped while running or stopping. */
static void act_exited(struct plugin *p)
{
    p->deadline_ms = 0;
    if (p->sup->stopping) {
        set_state(p, PS_EXITED, "stopped; exited with code %d", p->exit_code);
    } else if (p->want_restart) {
        plugin_throttle_reset(&p->thr);
        pthread_mutex_lock(&p->sup->lock);
        p->restarts++;
        pthread_mutex_unlock(&p->sup->lock);
        spawn(p, false);
    } else {
        decide_after_exit(p, false);
    }
}

/* Backoff timer: the automatic restart. */
static void act_restart_timer(struct plugin *p)
{
    p->deadline_ms = 0;
    plugin_throttle_record(&p->thr, now_ms());
    pthread_mutex_lock(&p->sup->lock);
    p->restarts++;
    pthread_mutex_unlock(&p->sup->lock);
    spawn(p, true);
}

/* Manual restart of a plugin with no process: start it now, tally reset. */
static void act_start_now(struct plugin *p)
{
    p->deadline_ms = 0;
    plugin_throttle_reset(&p->thr);
    pthread_mutex_lock(&p->sup->lock);
    p->restarts++;
    pthread_mutex_unlock(&p->sup->lock);
    log_info("Restarting runtime plugin %s on request", p->path);
    spawn(p, false);
}

static void act_term_restart(struct plugin *p)
{
    log_info("Restarting runtime plugin %s on request: stopping pid %d first", p->path, p->proc.pid);
    p->want_restart = true;
    term_instance(p);
    set_state(p, PS_STOPPING, "restart requested");
}

static void act_want_restart(struct plugin *p) { p->want_restart = true; }

static void act_term(struct plugin *p)
{
    p->want_restart = false;
    term_instance(p);
    set_state(p, PS_STOPPING, "server stopping");
}

static void act_stop_pending(struct plugin *p) { p->want_restart = false; }

/* The stop grace is over: SIGKILL the group. */
static void act_kill(struct plugin *p)
{
    if (!p->killed) {
        log_warn("Runtime plugin %s (pid %d) did not stop within %llu ms of SIGTERM; sending SIGKILL",
                 p->path, p->proc.pid, (unsigned long long)p->sup->stop_timeout_ms);
        killpg_quiet(p->proc.pid, SIGKILL);
        p->killed = true;
    }
    p->deadline_ms = now_ms() + KILL_WAIT_MS;
}

static void act_cancel_backoff(struct plugin *p)
{
    p->deadline_ms = 0;
    set_state(p, PS_EXITED, "stopped while waiting to restart");
}

static const action_fn actions[PS__N][EV__N] = {
    /*                EV_EXIT     EV_TIMER           EV_RESTART        EV_STOP */
    [PS_SKIPPED]  = { act_nop,    act_nop,           act_start_now,    act_nop },
    [PS_STARTING] = { act_nop,    act_nop,           act_want_restart, act_stop_pending },
    [PS_RUNNING]  = { act_exited, act_nop,           act_term_restart, act_term },
    [PS_STOPPING] = { act_exited, act_kill,          act_want_restart, act_stop_pending },
    [PS_BACKOFF]  = { act_nop,    act_restart_timer, act_start_now,    act_cancel_backoff },
    [PS_EXITED]   = { act_nop,    act_nop,           act_start_now,    act_nop },
    [PS_FAILED]   = { act_nop,    act_nop,           act_start_now,    act_nop },
};

static void dispatch(struct plugin *p, enum pevent ev)
{
    actions[p->state][ev](p);
}

/* ---------- the loop ---------- */

static void handle_commands(struct plugin_sup *s)
{
    uint64_t v;
    while (read(s->evfd, &v, sizeof(v)) < 0 && errno == EINTR)
        ;
    pthread_mutex_lock(&s->lock);
    bool stop = s->stop_req && !s->stopping;
    bool *req = calloc(s->n ? s->n : 1, sizeof(*req));
    for (size_t i = 0; i < s->n; i++) {
        if (req)
            req[i] = s->plugins[i].restart_req;
        s->plugins[i].restart_req = false;
    }
    pthread_mutex_unlock(&s->lock);
    if (stop) {
        s->stopping = true;
        s->stop_hard_deadline_ms = now_ms() + s->stop_timeout_ms + KILL_WAIT_MS;
        log_info("Stopping %zu runtime plugin(s)", s->n);
        for (size_t i = 0; i < s->n; i++)
            dispatch(&s->plugins[i], EV_STOP);
    } else if (req) {
        for (size_t i = 0; i < s->n; i++)
            if (req[i])
                dispatch(&s->plugins[i], EV_RESTART);
    }
    free(req);
}

static void handle_timers(struct plugin_sup *s)
{
    uint64_t t = now_ms();
    for (size_t i = 0; i < s->n; i++) {
        struct plugin *p = &s->plugins[i];
        if (p->linger_pgid && t >= p->linger_deadline_ms)
            linger_kill(p);
        if (p->deadline_ms && t >= p->deadline_ms) {
            p->deadline_ms = 0;
            dispatch(p, EV_TIMER);
        }
    }
}

static int next_timeout(struct plugin_sup *s)
{
    uint64_t t = now_ms(), best = UINT64_MAX;
    for (size_t i = 0; i < s->n; i++) {
        if (s->plugins[i].deadline_ms && s->plugins[i].deadline_ms < best)
            best = s->plugins[i].deadline_ms;
        if (s->plugins[i].linger_pgid && s->plugins[i].linger_deadline_ms < best)
            best = s->plugins[i].linger_deadline_ms;
    }
    if (s->stopping && s->stop_hard_deadline_ms < best)
        best = s->stop_hard_deadline_ms;
    if (best == UINT64_MAX)
        return -1;
    return best <= t ? 0 : (best - t > 60000 ? 60000 : (int)(best - t));
}

static bool any_process(struct plugin_sup *s)
{
    for (size_t i = 0; i < s->n; i++)
        if (s->plugins[i].proc.pidfd >= 0 || s->plugins[i].proc.rep_fd >= 0)
            return true;
    return false;
}

/* Ends the first round's settled launches in discovery order. Once all are
 * ended, plugin_sup_start() returns: every "Launched" line is logged. */
static bool finish_in_order(struct plugin_sup *s)
{
    while (s->next_end < s->n) {
        struct plugin *p = &s->plugins[s->next_end];
        if (p->state == PS_STARTING && !p->launch_done)
            return false; /* still pending */
        if (p->launch_done) {
            launch_end(p);
            if (p->state == PS_STARTING)
                return false; /* launched again (the zygote was lost): wait for that one */
        }
        s->next_end++;
    }
    s->first_round = false;
    pthread_mutex_lock(&s->lock);
    s->ready = true;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    return true;
}

static void loop(struct plugin_sup *s)
{
    struct epoll_event evs[64];
    bool ready = finish_in_order(s);
    for (;;) {
        if (s->stopping && !any_process(s))
            break;
        if (s->stopping && now_ms() >= s->stop_hard_deadline_ms) {
            for (size_t i = 0; i < s->n; i++)
                if (s->plugins[i].proc.pidfd >= 0)
                    log_error("Runtime plugin %s (pid %d) survived SIGKILL for %d ms; leaving it "
                              "to PR_SET_PDEATHSIG", s->plugins[i].path, s->plugins[i].proc.pid,
                              KILL_WAIT_MS);
            break;
        }
        int n = epoll_wait(s->epfd, evs, 64, next_timeout(s));
        if (n < 0 && errno != EINTR) {
            log_error("Runtime plugin supervisor: epoll_wait failed: %s; stopping plugins",
                      strerror(errno));
            break;
        }
        for (int i = 0; i < n; i++) {
            uint64_t tag = evs[i].data.u64;
            if (tag == 0) {
                handle_commands(s);
                continue;
            }
            struct plugin *p = &s->plugins[tag >> 2];
            /* An event of an earlier instance may still be in this batch
             * while a new launch is pending: its fds are not watched yet. */
            if ((tag & 3) == 3) {
                if (p->proc.rep_fd >= 0)
                    launch_progress(p);
            } else if (p->proc.rep_fd >= 0) {
                continue;
            } else if ((tag & 3) == 1) {
                if (p->proc.out_fd >= 0)
                    read_output(p, (size_t)READ_SLICE * READ_SLICES_PER_WAKEUP);
            } else if (p->proc.pidfd >= 0) {
                reap(p);
                if (p->proc.pidfd < 0)
                    dispatch(p, EV_EXIT);
            }
        }
        handle_timers(s);
        if (!ready)
            ready = finish_in_order(s);
    }
    /* whatever is still around goes now: SIGKILL to every group we know */
    for (size_t i = 0; i < s->n; i++) {
        struct plugin *p = &s->plugins[i];
        linger_kill(p);
        report_dropped(p);
        if (p->proc.rep_fd >= 0) { /* still starting: its guard goes, the plugin with it */
            (void)plugin_proc_launch_poll(&p->proc); /* a guard pid reported late */
            plugin_proc_launch_abort(&p->proc);
            plugin_proc_rep_close(&p->proc);
            p->proc = PLUGIN_PROC_NONE;
        } else if (p->proc.pidfd >= 0) {
            killpg_quiet(p->proc.pid, SIGKILL);
            close_output(p);
            close(p->proc.pidfd);
            p->proc.pidfd = -1;
        }
    }
    plugin_zygote_stop(&s->zyg);
}

static void launch_all(struct plugin_sup *s)
{
    struct plugin_found_list found = { 0 };
    int rc = plugin_discover((const char *const *)s->locations, s->n_locations, &found);
    if (rc < 0)
        log_error("Runtime plugin discovery failed: %s; launching what was found so far",
                  strerror(-rc));
    struct plugin *v = calloc(found.n ? found.n : 1, sizeof(*v));
    size_t n = 0;
    for (size_t i = 0; v && i < found.n; i++) {
        struct plugin *p = &v[n];
        p->sup = s;
        p->proc = PLUGIN_PROC_NONE;
        p->state = PS_EXITED;
        if (plugin_throttle_init(&p->thr, s->max_restarts, s->window_ms) < 0)
            break;
        p->path = found.v[i].path;
        found.v[i].path = NULL;
        n++;
    }
    if (!v || n < found.n)
        log_error("Runtime plugin supervisor: out of memory; %zu of %zu plugins kept", n, found.n);
    plugin_found_list_free(&found);
    pthread_mutex_lock(&s->lock);
    s->plugins = v;
    s->n = n;
    pthread_mutex_unlock(&s->lock);
    s->first_round = true;
    for (size_t i = 0; i < n; i++)
        spawn(&v[i], true);
}

static void *sup_main(void *arg)
{
    struct plugin_sup *s = arg;
    /* Signals belong to main()'s signalfd; this thread never takes one. */
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    launch_all(s);
    loop(s);
    pthread_mutex_lock(&s->lock); /* the loop may have failed before the first round was over */
    s->ready = true;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

/* ---------- public API ---------- */

static void sup_free(struct plugin_sup *s)
{
    for (size_t i = 0; i < s->n; i++) {
        struct plugin *p = &s->plugins[i];
        free(p->path);
        free(p->reason);
        json_decref(p->argv_json);
        plugin_cmd_free(&p->cmd);
        plugin_throttle_free(&p->thr);
        for (unsigned k = 0; k < p->tail_n; k++)
            free(p->tail[(p->tail_head + k) % TAIL_LINES]);
    }
    free(s->plugins);
    for (size_t i = 0; i < s->n_locations; i++)
        free(s->locations[i]);
    free(s->locations);
    if (s->config_file) {
        unlink(s->config_file);
        free(s->config_file);
    }
    if (s->config_fd >= 0)
        close(s->config_fd); /* after the unlink: the lock guards the name */
    plugin_envp_free(s->envp);
    if (s->epfd >= 0)
        close(s->epfd);
    if (s->evfd >= 0)
        close(s->evfd);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    free(s);
}

static int sup_prepare_env(struct plugin_sup *s, const char *json)
{
    s->config_file = plugin_config_file_write(json, &s->config_fd);
    if (!s->config_file)
        log_warn("Cannot write the runtime plugin config file in %s: %s; plugins get the config "
                 "only through LMCACHE_RUNTIME_PLUGIN_CONFIG",
                 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", strerror(errno));
    bool omitted = false;
    s->envp = plugin_envp_build(environ, json, s->config_file, &omitted);
    if (!s->envp)
        return -ENOMEM;
    if (omitted)
        log_warn("Runtime plugin config is %zu bytes, more than the %d bytes lmcd puts in one "
                 "environment variable (Linux refuses 128 KiB); LMCACHE_RUNTIME_PLUGIN_CONFIG and "
                 "LMCACHE_PLUGIN_CONFIG are left out, plugins must read "
                 "LMCACHE_RUNTIME_PLUGIN_CONFIG_FILE=%s", strlen(json), PLUGIN_ENV_CONFIG_MAX,
                 s->config_file);
    for (size_t i = 0; s->envp[i]; i++)
        if (strncmp(s->envp[i], "PATH=", 5) == 0)
            s->search_path = s->envp[i] + 5;
    return 0;
}

int plugin_sup_start(const struct plugin_opts *o, struct plugin_sup **out)
{
    *out = NULL;
    struct plugin_sup *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->epfd = s->evfd = s->config_fd = -1;
    s->zyg = PLUGIN_ZYGOTE_INIT;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    int rc = -ENOMEM;
    s->restart = o->restart;
    s->max_restarts = o->max_restarts;
    s->window_ms = (uint64_t)(o->restart_window_s ? o->restart_window_s
                                                   : PLUGIN_DEFAULT_RESTART_WINDOW_S) * 1000;
    s->stop_timeout_ms = o->stop_timeout_ms; /* 0: SIGKILL right after SIGTERM */
    if (o->n_locations && !(s->locations = calloc(o->n_locations, sizeof(char *))))
        goto fail;
    for (size_t i = 0; i < o->n_locations; i++, s->n_locations++)
        if (!(s->locations[i] = strdup(o->locations[i])))
            goto fail;
    const char *json = o->config_json ? o->config_json : "{}";
    if ((rc = sup_prepare_env(s, json)) < 0)
        goto fail;
    if ((s->epfd = epoll_create1(EPOLL_CLOEXEC)) < 0 ||
        (s->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
        rc = -errno;
        goto fail;
    }
    struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 0 };
    if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->evfd, &ev) < 0) {
        rc = -errno;
        goto fail;
    }
    log_info("Runtime plugin supervisor: %zu location(s), restart=%s (at most %u per %llu s), "
             "stop timeout %llu ms, config %zu bytes (file %s)", s->n_locations,
             plugin_restart_name(s->restart), s->max_restarts,
             (unsigned long long)(s->window_ms / 1000), (unsigned long long)s->stop_timeout_ms,
             strlen(json), s->config_file ? s->config_file : "none");
    if ((rc = -pthread_create(&s->thread, NULL, sup_main, s)) < 0)
        goto fail;
    s->thread_started = true;
    pthread_mutex_lock(&s->lock);
    while (!s->ready)
        pthread_cond_wait(&s->cond, &s->lock);
    pthread_mutex_unlock(&s->lock);
    *out = s;
    return 0;
fail:
    log_error("Runtime plugin supervisor could not start: %s", strerror(-rc));
    sup_free(s);
    return rc;
}

static void wake(struct plugin_sup *s)
{
    uint64_t one = 1;
    while (write(s->evfd, &one, sizeof(one)) < 0 && errno == EINTR)
        ;
    /* EAGAIN means the counter is already non-zero: the loop will wake */
}

void plugin_sup_stop(struct plugin_sup *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->lock);
    s->stop_req = true;
    pthread_mutex_unlock(&s->lock);
    wake(s);
    if (s->thread_started)
        pthread_join(s->thread, NULL);
    sup_free(s);
}

int plugin_sup_restart(struct plugin_sup *s, const char *path)
{
    if (!s || !path)
        return -ENOENT;
    int rc = -ENOENT;
    pthread_mutex_lock(&s->lock);
    if (s->stop_req) {
        rc = -ESHUTDOWN;
    } else {
        for (size_t i = 0; i < s->n; i++) {
            if (strcmp(s->plugins[i].path, path) == 0) {
                s->plugins[i].restart_req = true;
                rc = 0;
            }
        }
    }
    pthread_mutex_unlock(&s->lock);
    if (rc == 0)
        wake(s);
    return rc;
}

static json_t *plugin_json_locked(const struct plugin *p, uint64_t mono, uint64_t wall)
{
    json_t *o = json_object();
    json_t *tail = json_array();
    if (!o || !tail) {
        json_decref(o);
        json_decref(tail);
        return NULL;
    }
    bool live = p->state == PS_RUNNING || p->state == PS_STOPPING;
    json_t *argv = p->argv_json ? json_deep_copy(p->argv_json) : json_array();
    /* A file name need not be UTF-8; json_string() would drop it. The HTTP
     * serialiser (pyjson) writes invalid bytes as U+FFFD. */
    json_object_set_new(o, "path", json_string_nocheck(p->path));
    json_object_set_new(o, "interpreter",
                        argv && json_array_size(argv) ? json_deep_copy(json_array_get(argv, 0))
                                                      : json_null());
    json_object_set_new(o, "argv", argv ? argv : json_array());
    json_object_set_new(o, "state", json_string(state_names[p->state]));
    json_object_set_new(o, "reason", p->reason ? json_string(p->reason) : json_null());
    json_object_set_new(o, "pid", live && p->pid > 0 ? json_integer(p->pid) : json_null());
    json_object_set_new(o, "started_at",
                        p->started_wall_ms ? json_real((double)p->started_wall_ms / 1000.0)
                                           : json_null());
    json_object_set_new(o, "uptime_s",
                        live && p->started_wall_ms && wall >= p->started_wall_ms
                            ? json_real((double)(wall - p->started_wall_ms) / 1000.0)
                            : json_null());
    json_object_set_new(o, "restarts", json_integer(p->restarts));
    json_object_set_new(o, "last_exit_code", p->has_exit ? json_integer(p->last_exit) : json_null());
    json_object_set_new(o, "next_restart_in_s",
                        p->state == PS_BACKOFF && p->next_start_ms
                            ? json_real(p->next_start_ms > mono
                                            ? (double)(p->next_start_ms - mono) / 1000.0
                                            : 0.0)
                            : json_null());
    json_object_set_new(o, "lines_dropped", json_integer((json_int_t)p->lines_dropped));
    for (unsigned k = 0; k < p->tail_n; k++) {
        const char *l = p->tail[(p->tail_head + k) % TAIL_LINES];
        json_array_append_new(tail, json_string(l ? l : ""));
    }
    json_object_set_new(o, "output_tail", tail);
    return o;
}

json_t *plugin_sup_snapshot(struct plugin_sup *s)
{
    json_t *a = json_array();
    if (!a || !s)
        return a;
    uint64_t mono = now_ms(), wall = clock_wall_ns() / 1000000;
    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < s->n; i++) {
        json_t *o = plugin_json_locked(&s->plugins[i], mono, wall);
        if (!o || json_array_append_new(a, o) < 0) {
            pthread_mutex_unlock(&s->lock);
            json_decref(a);
            return NULL;
        }
    }
    pthread_mutex_unlock(&s->lock);
    return a;
}

const char *plugin_sup_config_file(const struct plugin_sup *s) { return s ? s->config_file : NULL; }
