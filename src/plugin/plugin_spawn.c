/*
 * Plugin spawning: environment, config file, the guard's start, and the
 * reading of what the guard reports.
 *
 * A launch does not wait for the plugin's exec: plugin_proc_start() returns
 * once the guard is on its way, and the supervisor reads the guard's report
 * pipe from its epoll loop (plugin_proc_launch_poll), so 100 launches
 * overlap instead of queueing behind each other's exec.
 *
 * The guard comes from one of two places:
 *   - the zygote (plugin_guard.c, zygote_main), exec'd once at the first
 *     launch: it gets each launch as one packet on a socketpair (argv, and
 *     the write ends of the output and report pipes) and clones a guard with
 *     CLONE_PARENT, so the guard is our child all the same. A clone of that
 *     small static process costs a fraction of the exec it replaces (here,
 *     where every new address space is expensive, ~0.7 ms against ~3 ms);
 *   - an exec of the guard per plugin: when the zygote is lost or cannot
 *     start, and in sanitizer builds (their runtimes keep state a clone
 *     without exec would carry over).
 * For the exec, everything the child needs (argv, envp, fds) is prepared
 * before the clone, so the child runs only async-signal-safe calls: it may
 * be forked from a multi-threaded server, where any lock could be held by a
 * thread that no longer exists in the child. The child shares our memory
 * until its exec (CLONE_VM | CLONE_VFORK, as posix_spawn; fork() in
 * sanitizer builds), see start_child().
 *
 * The guard forks the plugin: the plugin becomes a session and
 * process-group leader (setsid) so a stop can signal its whole group, asks
 * for SIGKILL when the guard dies, gets /dev/null as stdin and one pipe as
 * stdout+stderr, closes every other fd, and has default signal dispositions
 * and an empty mask (the server blocks signals in all its threads). An exec
 * failure is reported through the close-on-exec report pipe, so the
 * supervisor learns the exact errno (E2BIG, EACCES, ENOEXEC) instead of a
 * bare exit code.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mman.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define LOG_MODULE "lmcd.plugin"
#include "util/log.h"

#include "plugin/plugin_int.h"
#include "util/runfile.h"

/* The variables lmcd sets; inherited values of the same names are dropped. */
static const char *const managed[] = {
    "LMCACHE_RUNTIME_PLUGIN_ROLE", "LMCACHE_RUNTIME_PLUGIN_CONFIG",
    "LMCACHE_RUNTIME_PLUGIN_WORKER_COUNT", "LMCACHE_RUNTIME_PLUGIN_WORKER_ID",
    "LMCACHE_PLUGIN_ROLE", "LMCACHE_PLUGIN_CONFIG", "LMCACHE_PLUGIN_WORKER_COUNT",
    "LMCACHE_PLUGIN_WORKER_ID", "PYTHONUNBUFFERED", "LMCACHE_RUNTIME_PLUGIN_CONFIG_FILE",
};
#define N_MANAGED (sizeof(managed) / sizeof(managed[0]))

static bool is_managed(const char *kv)
{
    for (size_t i = 0; i < N_MANAGED; i++) {
        size_t n = strlen(managed[i]);
        if (strncmp(kv, managed[i], n) == 0 && kv[n] == '=')
            return true;
    }
    return false;
}

void plugin_envp_free(char **envp)
{
    for (size_t i = 0; envp && envp[i]; i++)
        free(envp[i]);
    free(envp);
}

char **plugin_envp_build(char *const *base, const char *config_json, const char *config_file,
                         bool *json_omitted)
{
    size_t nb = 0;
    while (base && base[nb])
        nb++;
    char **env = calloc(nb + N_MANAGED + 1, sizeof(*env));
    if (!env)
        return NULL;
    size_t n = 0;
    for (size_t i = 0; i < nb; i++) {
        if (is_managed(base[i]))
            continue;
        if (!(env[n++] = strdup(base[i])))
            goto fail;
    }
    const char *json = config_json ? config_json : "{}";
    *json_omitted = strlen(json) > PLUGIN_ENV_CONFIG_MAX && config_file;
    /* MP mode: no role, one "worker" (LMCache passes role=None, 1, 0) */
    const char *kv[][2] = {
        { "LMCACHE_RUNTIME_PLUGIN_ROLE", "" },
        { "LMCACHE_RUNTIME_PLUGIN_CONFIG", *json_omitted ? NULL : json },
        { "LMCACHE_RUNTIME_PLUGIN_WORKER_COUNT", "1" },
        { "LMCACHE_RUNTIME_PLUGIN_WORKER_ID", "0" },
        { "LMCACHE_PLUGIN_ROLE", "" },
        { "LMCACHE_PLUGIN_CONFIG", *json_omitted ? NULL : json },
        { "LMCACHE_PLUGIN_WORKER_COUNT", "1" },
        { "LMCACHE_PLUGIN_WORKER_ID", "0" },
        { "PYTHONUNBUFFERED", "1" },
        { "LMCACHE_RUNTIME_PLUGIN_CONFIG_FILE", config_file },
    };
    for (size_t i = 0; i < sizeof(kv) / sizeof(kv[0]); i++) {
        if (!kv[i][1])
            continue;
        if (asprintf(&env[n], "%s=%s", kv[i][0], kv[i][1]) < 0) {
            env[n] = NULL;
            goto fail;
        }
        n++;
    }
    env[n] = NULL;
    return env;
fail:
    plugin_envp_free(env);
    return NULL;
}

static const char *config_dir(void)
{
    const char *dir = getenv("TMPDIR");
    return dir && *dir ? dir : "/tmp";
}

int plugin_reclaim_stale_files(void)
{
    /* Files of lmcd runs that died without removing theirs (kill -9, OOM):
     * their lock is free. The '.' in the prefix tells them from files of
     * lmcd versions that held no lock, which are left alone. */
    return runfile_reclaim(config_dir(), PLUGIN_CONFIG_FILE_PREFIX, "runtime plugin config file");
}

char *plugin_config_file_write(const char *json, int *fd_out)
{
    const char *dir = config_dir();
    *fd_out = -1;
    char *path;
    if (asprintf(&path, "%s/" PLUGIN_CONFIG_FILE_PREFIX "XXXXXX", dir) < 0)
        return NULL;
    int fd = runfile_create(path); /* mode 0600, locked while lmcd lives */
    if (fd < 0) {
        errno = -fd;
        goto fail;
    }
    size_t len = strlen(json), off = 0;
    while (off < len) {
        ssize_t w = write(fd, json + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            int e = errno;
            unlink(path);
            close(fd);
            errno = e;
            goto fail;
        }
        off += (size_t)w;
    }
    *fd_out = fd;
    return path;
fail:
    free(path);
    return NULL;
}

/* Moves fd above 2 so the child's dup2() onto 0..2 cannot clobber it (a
 * server started with a closed stdin hands out fd 0 to the next open). */
static int fd_above_stdio(int fd)
{
    if (fd > 2)
        return fd;
    int n = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    int e = errno;
    close(fd);
    errno = e;
    return n;
}

/* Runs in the forked child: async-signal-safe calls only. Sets up the fds
 * the guard expects (0 /dev/null, 1 and 2 the output pipe, 3 the report
 * pipe, nothing else) and execs the guard (this same binary). */
static void child_exec_guard(int out_w, int rep_w, int devnull, const char *gexe, char *const gargv[],
                             char *const envp[]) __attribute__((noreturn));
static void child_exec_guard(int out_w, int rep_w, int devnull, const char *gexe, char *const gargv[],
                             char *const envp[])
{
    if (dup2(devnull, 0) < 0 || dup2(out_w, 1) < 0 || dup2(out_w, 2) < 0)
        goto fail;
    if (rep_w != 3) {
        if (dup2(rep_w, 3) < 0) /* dup2 clears close-on-exec: the guard keeps it */
            goto fail;
        rep_w = 3;
    } else if (fcntl(3, F_SETFD, 0) < 0) {
        goto fail;
    }
    if (syscall(SYS_close_range, 4U, ~0U, 0U) < 0)
        for (int fd = 4; fd < 65536; fd++)
            (void)close(fd);
    execve(gexe, gargv, envp);
fail:;
    int32_t m[2] = { 2, errno };
    ssize_t w = write(rep_w, m, sizeof(m));
    (void)w;
    _exit(127);
}

struct child_args {
    int out_w, rep_w, devnull;
    const char *gexe;   /* the guard's binary */
    char *const *gargv; /* and argv */
    char *const *envp;
};

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SPAWN_SHARES_MEMORY 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SPAWN_SHARES_MEMORY 0
#endif
#endif
#ifndef SPAWN_SHARES_MEMORY
#define SPAWN_SHARES_MEMORY 1
#endif

#if SPAWN_SHARES_MEMORY
#define CHILD_STACK (64 * 1024)
static int child_entry(void *arg)
{
    const struct child_args *a = arg;
    child_exec_guard(a->out_w, a->rep_w, a->devnull, a->gexe, a->gargv, a->envp);
}
#endif

/* Starts the child as posix_spawn does: CLONE_VM | CLONE_VFORK, so the
 * server's address space is neither copied (fork's page-table copy) nor torn
 * down again at exec, and this thread waits only until the exec (100 plugins
 * start about twice as fast on a loaded machine). The child runs on its own
 * stack, touches no memory of ours but errno, and has its own signal
 * handlers (no CLONE_SIGHAND). Sanitizer builds fork instead: their
 * runtimes keep per-thread state the child would change under us. */
static pid_t start_child(const struct child_args *a)
{
#if SPAWN_SHARES_MEMORY
    void *stack = mmap(NULL, CHILD_STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED)
        return -1;
    pid_t pid = clone(child_entry, (char *)stack + CHILD_STACK, CLONE_VM | CLONE_VFORK | SIGCHLD, (void *)a);
    int e = errno;
    munmap(stack, CHILD_STACK);
    errno = e;
    return pid;
#else
    pid_t pid = fork();
    if (pid == 0)
        child_exec_guard(a->out_w, a->rep_w, a->devnull, a->gexe, a->gargv, a->envp);
    return pid;
#endif
}

/* The guard exec'd for this one plugin. */
static int exec_start(char *const argv[], char *const envp[], unsigned grace_ms, struct plugin_proc *out)
{
    int outp[2] = { -1, -1 }, repp[2] = { -1, -1 }, devnull = -1, pidfd = -1;
    int rc;
    pid_t pid = -1;
    *out = PLUGIN_PROC_NONE;
    char **gargv = plugin_guard_argv((int)getpid(), grace_ms, argv);
    if (!gargv)
        return -ENOMEM;
    if ((devnull = open("/dev/null", O_RDWR | O_CLOEXEC)) < 0 || (devnull = fd_above_stdio(devnull)) < 0)
        goto fail_errno;
    if (pipe2(outp, O_CLOEXEC) < 0)
        goto fail_errno;
    if ((outp[0] = fd_above_stdio(outp[0])) < 0 || (outp[1] = fd_above_stdio(outp[1])) < 0)
        goto fail_errno;
    if (pipe2(repp, O_CLOEXEC) < 0)
        goto fail_errno;
    /* above 3 too: the child's dup2() onto 0..3 must not clobber them */
    for (int i = 0; i < 2; i++)
        if (repp[i] <= 3) {
            int n = fcntl(repp[i], F_DUPFD_CLOEXEC, 4);
            close(repp[i]);
            if ((repp[i] = n) < 0)
                goto fail_errno;
        }
    if (outp[1] == 3) {
        int n = fcntl(outp[1], F_DUPFD_CLOEXEC, 4);
        close(outp[1]);
        if ((outp[1] = n) < 0)
            goto fail_errno;
    }
    if (devnull == 3) {
        int n = fcntl(devnull, F_DUPFD_CLOEXEC, 4);
        close(devnull);
        if ((devnull = n) < 0)
            goto fail_errno;
    }
    /* Ours only: the output pipe's read end and the report pipe's read end
     * never block the supervisor's loop. */
    if (fcntl(outp[0], F_SETFL, O_NONBLOCK) < 0 || fcntl(repp[0], F_SETFL, O_NONBLOCK) < 0)
        goto fail_errno;

    /* No handler of ours may run in the child between fork and exec. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    struct child_args ca = { outp[1], repp[1], devnull, plugin_guard_exe(), gargv, envp };
    pid = start_child(&ca);
    int fork_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (pid < 0) {
        errno = fork_errno;
        goto fail_errno;
    }
    close(outp[1]);
    close(repp[1]);
    close(devnull);
    outp[1] = repp[1] = devnull = -1;
    plugin_guard_argv_free(gargv); /* the guard has exec'd (or failed to): its copy is its own */
    gargv = NULL;

    /* The guard is ours and unreaped, so its pid cannot be reused yet. */
    if ((pidfd = (int)syscall(SYS_pidfd_open, pid, 0)) < 0) {
        rc = -errno;
        kill(pid, SIGKILL); /* its plugin, if already forked, dies with it (PR_SET_PDEATHSIG) */
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
        goto fail;
    }
    *out = (struct plugin_proc){ .pid = 0, .guard_pid = pid, .pidfd = pidfd, .out_fd = outp[0],
                                 .rep_fd = repp[0] };
    return 0;

fail_errno:
    rc = -errno;
fail:
    plugin_guard_argv_free(gargv);
    for (int i = 0; i < 2; i++) {
        if (outp[i] >= 0)
            close(outp[i]);
        if (repp[i] >= 0)
            close(repp[i]);
    }
    if (devnull >= 0)
        close(devnull);
    return rc;
}

/* The zygote's helper that cloned the guard is our child (CLONE_PARENT)
 * and exits at once: its pid stays its own until this wait. */
static void reap_helper(struct plugin_proc *p)
{
    if (p->helper_pid > 0)
        while (waitpid(p->helper_pid, NULL, 0) < 0 && errno == EINTR)
            ;
    p->helper_pid = 0;
}

/* SIGKILL bounds the wait: after a failed launch the guard is exiting on
 * its own already (its plugin never ran), and a plugin it forked dies with
 * it (PR_SET_PDEATHSIG). */
void plugin_proc_launch_abort(struct plugin_proc *p)
{
    reap_helper(p);
    if (p->pidfd >= 0) {
        if (syscall(SYS_pidfd_send_signal, p->pidfd, SIGKILL, NULL, 0) < 0 && errno != ESRCH)
            kill(p->guard_pid, SIGKILL);
        siginfo_t si;
        while (waitid(P_PIDFD, (id_t)p->pidfd, &si, WEXITED) < 0 && errno == EINTR)
            ;
        close(p->pidfd);
    } else if (p->guard_pid > 0) { /* our unreaped child: its pid is still its own */
        kill(p->guard_pid, SIGKILL);
        while (waitpid(p->guard_pid, NULL, 0) < 0 && errno == EINTR)
            ;
    }
    if (p->out_fd >= 0)
        close(p->out_fd);
    p->pidfd = p->out_fd = -1;
    p->guard_pid = p->pid = 0; /* done: a second call does nothing */
}

int plugin_proc_launch_poll(struct plugin_proc *p)
{
    /* The guard reports the plugin's pid, or an errno (its own failed step
     * or the plugin's failed exec); EOF once the plugin has exec'd (the
     * report pipe is close-on-exec there) or everyone holding it died.
     * Each message is 8 bytes, written in one write below PIPE_BUF, so a
     * read of whole messages never splits one. */
    for (;;) {
        int32_t m[8][2];
        ssize_t r = read(p->rep_fd, m, sizeof(m));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN)
            return 1;
        if (r < 0) {
            p->rep_errno = errno;
            break;
        }
        if (r == 0)
            break;
        if (r % (ssize_t)sizeof(m[0])) {
            p->rep_errno = EPROTO;
            break;
        }
        for (ssize_t i = 0; i < r / (ssize_t)sizeof(m[0]); i++) {
            if (m[i][0] == 1) {
                p->pid = m[i][1];
            } else if (m[i][0] == 2 && !p->rep_errno) {
                p->rep_errno = m[i][1] > 0 ? m[i][1] : EIO;
            } else if (m[i][0] == 4 && p->via_zygote && !p->helper_pid && m[i][1] > 0) {
                p->helper_pid = m[i][1]; /* our child too: reaped when the launch ends */
            } else if (m[i][0] == 3 && p->via_zygote && !p->guard_pid && m[i][1] > 0) {
                /* the zygote cloned the guard as our child, unreaped: its
                 * pid cannot be reused before we wait for it */
                p->guard_pid = m[i][1];
                if ((p->pidfd = (int)syscall(SYS_pidfd_open, p->guard_pid, 0)) < 0 && !p->rep_errno)
                    p->rep_errno = errno;
            }
        }
    }
    reap_helper(p); /* EOF: its end of the pipe is closed, so it has exited */
    /* EOF with no word from anyone: the guard died, or (zygote) the zygote
     * died before it cloned one */
    p->zygote_lost = p->via_zygote && !p->guard_pid && !p->rep_errno;
    if (p->rep_errno || p->pid <= 0 || p->pidfd < 0) {
        int rc = -(p->rep_errno ? p->rep_errno : ECHILD);
        plugin_proc_launch_abort(p);
        return rc;
    }
    return 0;
}

void plugin_proc_rep_close(struct plugin_proc *p)
{
    if (p->rep_fd >= 0)
        close(p->rep_fd);
    p->rep_fd = -1;
}

/* ---- the zygote ---- */

void plugin_zygote_stop(struct plugin_zygote *z)
{
    if (z->sock >= 0)
        close(z->sock); /* EOF: the zygote exits by itself; SIGKILL makes sure */
    z->sock = -1;
    if (z->pidfd >= 0) {
        syscall(SYS_pidfd_send_signal, z->pidfd, SIGKILL, NULL, 0);
        siginfo_t si;
        while (waitid(P_PIDFD, (id_t)z->pidfd, &si, WEXITED) < 0 && errno == EINTR)
            ;
        close(z->pidfd);
    }
    z->pidfd = -1;
    z->pid = 0;
}

#if SPAWN_SHARES_MEMORY /* sanitizer builds exec every guard (see plugin_proc_start) */
/* Execs the zygote (plugin_guard.c, zygote_main): fd 3 one end of a
 * SOCK_SEQPACKET pair, 0..2 /dev/null, envp its (and so every plugin's)
 * environment. 0 or -errno (its exec's errno included). */
static int zygote_start(struct plugin_zygote *z, char *const envp[], unsigned grace_ms)
{
    int sv[2] = { -1, -1 }, devnull = -1, rc;
    char *const none[] = { NULL };
    char **zargv = plugin_guard_argv((int)getpid(), grace_ms, none);
    if (!zargv)
        return -ENOMEM;
    free(zargv[1]);
    if (!(zargv[1] = strdup(PLUGIN_ZYGOTE_ARG))) {
        rc = -ENOMEM;
        goto fail;
    }
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
        goto fail_errno;
    if ((devnull = open("/dev/null", O_RDWR | O_CLOEXEC)) < 0)
        goto fail_errno;
    /* both above 3: the child's dup2() onto 0..3 must not clobber them */
    int *fds[] = { &sv[0], &sv[1], &devnull };
    for (size_t i = 0; i < 3; i++)
        if (*fds[i] <= 3) {
            int n = fcntl(*fds[i], F_DUPFD_CLOEXEC, 4);
            close(*fds[i]);
            if ((*fds[i] = n) < 0)
                goto fail_errno;
        }
    if (fcntl(sv[0], F_SETFL, O_NONBLOCK) < 0)
        goto fail_errno;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    struct child_args ca = { devnull, sv[1], devnull, plugin_guard_exe(), zargv, envp };
    pid_t pid = start_child(&ca);
    int fork_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (pid < 0) {
        errno = fork_errno;
        goto fail_errno;
    }
    close(sv[1]);
    close(devnull);
    sv[1] = devnull = -1;
    z->pid = pid;
    z->sock = sv[0];
    if ((z->pidfd = (int)syscall(SYS_pidfd_open, pid, 0)) < 0) {
        rc = -errno;
        kill(pid, SIGKILL);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
        z->pid = 0;
        close(z->sock);
        z->sock = -1;
        goto fail;
    }
    /* The child has exec'd or failed (it shared our memory until then): a
     * failure left its errno on the socket. */
    int32_t m[2];
    ssize_t r = recv(z->sock, m, sizeof(m), MSG_DONTWAIT);
    if (r == (ssize_t)sizeof(m) && m[0] == 2) {
        rc = -(m[1] > 0 ? m[1] : EIO);
        plugin_zygote_stop(z);
        goto fail;
    }
    plugin_guard_argv_free(zargv);
    return 0;

fail_errno:
    rc = -errno;
fail:
    plugin_guard_argv_free(zargv);
    for (int i = 0; i < 2; i++)
        if (sv[i] >= 0)
            close(sv[i]);
    if (devnull >= 0)
        close(devnull);
    return rc;
}

/* Hands one launch to the zygote: the pipes' write ends travel with argv. */
static int zygote_launch(struct plugin_zygote *z, char *const argv[], struct plugin_proc *out)
{
    static char msg[PLUGIN_ZYGOTE_MSG_MAX]; /* supervisor thread only */
    size_t len = 0;
    for (size_t i = 0; argv[i]; i++) {
        size_t n = strlen(argv[i]) + 1;
        if (n > sizeof(msg) - len)
            return -EMSGSIZE;
        memcpy(msg + len, argv[i], n);
        len += n;
    }
    int outp[2] = { -1, -1 }, repp[2] = { -1, -1 }, rc;
    if (pipe2(outp, O_CLOEXEC) < 0 || pipe2(repp, O_CLOEXEC) < 0)
        goto fail_errno;
    if (fcntl(outp[0], F_SETFL, O_NONBLOCK) < 0 || fcntl(repp[0], F_SETFL, O_NONBLOCK) < 0)
        goto fail_errno;
    union {
        struct cmsghdr h;
        char space[CMSG_SPACE(2 * sizeof(int))];
    } cm;
    memset(&cm, 0, sizeof(cm));
    struct iovec iov = { msg, len };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.space,
                         .msg_controllen = sizeof(cm.space) };
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(2 * sizeof(int));
    int pass[2] = { outp[1], repp[1] };
    memcpy(CMSG_DATA(c), pass, sizeof(pass));
    for (int tries = 0;; tries++) {
        if (sendmsg(z->sock, &mh, MSG_NOSIGNAL | MSG_DONTWAIT) >= 0)
            break;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN || tries == 1)
            goto fail_errno;
        /* a burst of launches filled the socket: the zygote drains it in
         * well under a second, unless it is stuck (then exec instead) */
        struct pollfd pf = { .fd = z->sock, .events = POLLOUT };
        (void)poll(&pf, 1, 1000);
    }
    close(outp[1]);
    close(repp[1]);
    *out = PLUGIN_PROC_NONE;
    out->out_fd = outp[0];
    out->rep_fd = repp[0];
    out->via_zygote = true;
    return 0;

fail_errno:
    rc = -errno;
    for (int i = 0; i < 2; i++) {
        if (outp[i] >= 0)
            close(outp[i]);
        if (repp[i] >= 0)
            close(repp[i]);
    }
    return rc;
}

#endif

int plugin_proc_start(struct plugin_zygote *z, char *const argv[], char *const envp[], unsigned grace_ms,
                      struct plugin_proc *out)
{
#if SPAWN_SHARES_MEMORY
    if (z && !z->off && !z->pid) {
        int rc = zygote_start(z, envp, grace_ms);
        if (rc < 0) {
            z->off = true;
            log_warn("Runtime plugin zygote did not start (%s); each plugin's guard is exec'd instead "
                     "(slower launches)", strerror(-rc));
        }
    }
    if (z && !z->off) {
        int rc = zygote_launch(z, argv, out);
        if (rc == 0)
            return 0;
        if (rc == -EPIPE || rc == -ECONNRESET || rc == -ECONNREFUSED || rc == -ENOTCONN) {
            plugin_zygote_lost(z);
        } else if (rc != -EMSGSIZE && rc != -EAGAIN) {
            return rc; /* out of fds or memory: the exec path would fail the same way */
        }
    }
#else
    (void)z; /* sanitizer runtimes keep state a clone without exec would share: exec each guard */
#endif
    return exec_start(argv, envp, grace_ms, out);
}

void plugin_zygote_lost(struct plugin_zygote *z)
{
    if (z->off)
        return;
    log_warn("Runtime plugin zygote (pid %d) is gone; each plugin's guard is exec'd from now on "
             "(slower launches)", z->pid);
    plugin_zygote_stop(z);
    z->off = true;
}
