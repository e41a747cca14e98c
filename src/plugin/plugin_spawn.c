/*
 * Plugin spawning: environment, config file, and the fork/exec child path.
 *
 * Everything the child needs (argv, envp, fds) is prepared before fork(),
 * so the child runs only async-signal-safe calls: it may be forked from a
 * multi-threaded server, where any lock could be held by a thread that no
 * longer exists in the child.
 *
 * The child shares our memory until its exec (CLONE_VM | CLONE_VFORK, as
 * posix_spawn; fork() in sanitizer builds), see start_child().
 * The child becomes a session and process-group leader (setsid) so a stop
 * can signal its whole group, asks for SIGKILL when the forking thread (the
 * supervisor) dies, gets /dev/null as stdin and one pipe as stdout+stderr,
 * closes every other fd, and restores default signal dispositions and an
 * empty mask (the server blocks signals in all its threads). An exec failure
 * is reported through a close-on-exec pipe, so the parent learns the exact
 * errno (E2BIG, EACCES, ENOEXEC) instead of a bare exit code.
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
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "plugin/plugin_int.h"

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

char *plugin_config_file_write(const char *json)
{
    const char *dir = getenv("TMPDIR");
    if (!dir || !*dir)
        dir = "/tmp";
    char *path;
    if (asprintf(&path, "%s/lmcd-plugin-config-XXXXXX", dir) < 0)
        return NULL;
    int fd = mkostemp(path, O_CLOEXEC); /* mode 0600 */
    if (fd < 0)
        goto fail;
    size_t len = strlen(json), off = 0;
    while (off < len) {
        ssize_t w = write(fd, json + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            int e = errno;
            close(fd);
            unlink(path);
            errno = e;
            goto fail;
        }
        off += (size_t)w;
    }
    if (close(fd) < 0) {
        int e = errno;
        unlink(path);
        errno = e;
        goto fail;
    }
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

static void child_fail(int errfd) __attribute__((noreturn));
static void child_fail(int errfd)
{
    int e = errno;
    ssize_t w = write(errfd, &e, sizeof(e));
    (void)w;
    _exit(127);
}

/* Runs in the forked child: async-signal-safe calls only. */
static void child_exec(int out_w, int err_w, int devnull, pid_t parent, char *const argv[],
                       char *const envp[]) __attribute__((noreturn));
static void child_exec(int out_w, int err_w, int devnull, pid_t parent, char *const argv[],
                       char *const envp[])
{
    if (setsid() < 0)
        child_fail(err_w);
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
        child_fail(err_w);
    if (getppid() != parent) /* the server died before prctl: do not outlive it */
        _exit(127);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            (void)sigaction(sig, &sa, NULL); /* glibc-internal signals say EINVAL: fine */
    if (dup2(devnull, 0) < 0 || dup2(out_w, 1) < 0 || dup2(out_w, 2) < 0)
        child_fail(err_w);
    if (err_w != 3) {
        if (dup2(err_w, 3) < 0)
            child_fail(err_w);
        err_w = 3;
    }
    if (fcntl(3, F_SETFD, FD_CLOEXEC) < 0)
        child_fail(3);
    if (syscall(SYS_close_range, 4U, ~0U, 0U) < 0)
        for (int fd = 4; fd < 65536; fd++)
            (void)close(fd);
    sigset_t none;
    sigemptyset(&none);
    if (sigprocmask(SIG_SETMASK, &none, NULL) < 0)
        child_fail(3);
    execve(argv[0], argv, envp);
    child_fail(3);
}

struct child_args {
    int out_w, err_w, devnull;
    pid_t parent;
    char *const *argv;
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
    child_exec(a->out_w, a->err_w, a->devnull, a->parent, a->argv, a->envp);
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
        child_exec(a->out_w, a->err_w, a->devnull, a->parent, a->argv, a->envp);
    return pid;
#endif
}

int plugin_proc_spawn(char *const argv[], char *const envp[], struct plugin_proc *out)
{
    int outp[2] = { -1, -1 }, errp[2] = { -1, -1 }, devnull = -1, pidfd = -1;
    int rc;
    pid_t pid = -1;
    if ((devnull = open("/dev/null", O_RDWR | O_CLOEXEC)) < 0 || (devnull = fd_above_stdio(devnull)) < 0)
        goto fail_errno;
    if (pipe2(outp, O_CLOEXEC) < 0)
        goto fail_errno;
    if ((outp[0] = fd_above_stdio(outp[0])) < 0 || (outp[1] = fd_above_stdio(outp[1])) < 0)
        goto fail_errno;
    if (pipe2(errp, O_CLOEXEC) < 0)
        goto fail_errno;
    if ((errp[0] = fd_above_stdio(errp[0])) < 0 || (errp[1] = fd_above_stdio(errp[1])) < 0)
        goto fail_errno;

    /* No handler of ours may run in the child between fork and exec. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    struct child_args ca = { outp[1], errp[1], devnull, getpid(), argv, envp };
    pid = start_child(&ca);
    int fork_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (pid < 0) {
        errno = fork_errno;
        goto fail_errno;
    }
    close(outp[1]);
    close(errp[1]);
    close(devnull);
    outp[1] = errp[1] = devnull = -1;

    int child_errno = 0;
    ssize_t r;
    do
        r = read(errp[0], &child_errno, sizeof(child_errno));
    while (r < 0 && errno == EINTR);
    close(errp[0]);
    errp[0] = -1;
    if (r == (ssize_t)sizeof(child_errno)) { /* exec failed; the child already _exit()ed */
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
        rc = -child_errno;
        goto fail;
    }
    /* The child is ours and unreaped, so its pid cannot be reused yet. */
    if ((pidfd = (int)syscall(SYS_pidfd_open, pid, 0)) < 0) {
        rc = -errno;
        kill(pid, SIGKILL);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
        goto fail;
    }
    if (fcntl(outp[0], F_SETFL, O_NONBLOCK) < 0) {
        rc = -errno;
        kill(-pid, SIGKILL);
        siginfo_t si;
        while (waitid(P_PIDFD, (id_t)pidfd, &si, WEXITED) < 0 && errno == EINTR)
            ;
        goto fail;
    }
    *out = (struct plugin_proc){ .pid = pid, .pidfd = pidfd, .out_fd = outp[0] };
    return 0;

fail_errno:
    rc = -errno;
fail:
    if (pidfd >= 0)
        close(pidfd);
    for (int i = 0; i < 2; i++) {
        if (outp[i] >= 0)
            close(outp[i]);
        if (errp[i] >= 0)
            close(errp[i]);
    }
    if (devnull >= 0)
        close(devnull);
    return rc;
}
