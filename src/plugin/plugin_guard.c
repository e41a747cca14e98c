/*
 * The plugin guard: one small process between lmcd and each plugin, so that
 * no descendant of a plugin outlives lmcd, however lmcd dies.
 *
 * Why a process. A plugin's children can leave its process group (setsid,
 * setpgid) and its parentage (double fork), and a SIGKILLed lmcd runs no
 * code. Only a process that outlives lmcd and is an ancestor of everything
 * the plugin starts can find all of it afterwards: the guard is a child
 * subreaper (PR_SET_CHILD_SUBREAPER), so every orphan below it is re-parented
 * to it instead of init, and it watches lmcd through a pidfd.
 *
 *   lmcd --vfork+exec--> zygote (once; own session)
 *   zygote --clone(CLONE_VM | CLONE_PARENT)--> helper (own session)
 *   helper --clone(CLONE_PARENT)--> guard (lmcd's child; own session,
 *                                          subreaper)
 *       (no zygote: lmcd --vfork+exec--> guard)
 *   guard --vfork+exec--> plugin (own session, group)
 *
 * What it does
 *   - lmcd dies (any way): SIGKILL to every descendant, reap, exit.
 *   - SIGTERM (lmcd's supervisor stopping or restarting the plugin, or
 *     systemd stopping the unit): SIGTERM + SIGCONT to every descendant, in
 *     any session or group (the supervisor signals the plugin's group itself).
 *   - the plugin exits: what is left of its tree gets SIGTERM + SIGCONT, then
 *     SIGKILL once the grace (lmcd's --runtime-plugin-stop-timeout) has passed
 *     since the first SIGTERM; then the guard exits with the plugin's status
 *     (dying of the same signal), which is what the supervisor reports.
 *
 * How it runs. This file is build/lmcd-plugin-guard beside lmcd (built
 * alone with PLUGIN_GUARD_MAIN, libc only, static), else /proc/self/exe,
 * where the constructor below recognises argv[1] before main() (of lmcd, or
 * of a unit-test binary spawning plugins) and runs the guard or the zygote
 * instead; that path loads all of lmcd's libraries first. lmcd's supervisor
 * execs it once as the zygote (argv[1] == PLUGIN_ZYGOTE_ARG, zygote_main),
 * which clones one guard per launch; when there is no zygote (lost, or a
 * sanitizer build) it execs it as the guard (PLUGIN_GUARD_ARG) for each
 * plugin. Either way the guard is a single-threaded process that shares no
 * memory with lmcd (a fork of lmcd without exec would keep a copy-on-write
 * image of the server alive for as long as the plugin runs).
 *
 * A guard's file descriptors: 0 /dev/null, 1 and 2 the plugin's output
 * pipe, 3 the report pipe to lmcd: 8-byte messages {tag, value}, tag 1 =
 * the plugin's pid (from the guard), tag 2 = an errno (a failed guard step,
 * the plugin's failed exec, or the zygote's failed clone), tag 3 = the
 * guard's own pid, tag 4 = the pid of the helper that cloned it (cloned
 * guards only). lmcd reads until EOF, which comes
 * once the plugin has exec'd (fd 3 is close-on-exec there).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <linux/futex.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "plugin/plugin_int.h"

#define REPORT_FD 3
#define KILL_ROUNDS 500 /* x 10 ms: how long the guard keeps killing a tree that keeps forking */

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void report(int tag, int value)
{
    int32_t m[2] = { tag, value };
    ssize_t w = write(REPORT_FD, m, sizeof(m));
    (void)w;
}

/* ---- the tree below the guard ---- */

struct pidvec {
    pid_t *v;
    size_t n, cap;
};

static void pv_push(struct pidvec *pv, pid_t p)
{
    if (pv->n == pv->cap) {
        size_t cap = pv->cap ? pv->cap * 2 : 256;
        pid_t *v = realloc(pv->v, cap * sizeof(*v));
        if (!v)
            return; /* out of memory: this round misses some; the next one retries */
        pv->v = v;
        pv->cap = cap;
    }
    pv->v[pv->n++] = p;
}

/* Every process whose parent chain reaches `root` (not root itself), except
 * members of process group skip_pgid (0: none). */
static void tree_of(pid_t root, pid_t skip_pgid, struct pidvec *out)
{
    struct pidvec pid = { 0 }, ppid = { 0 }, pgid = { 0 };
    out->n = 0;
    DIR *d = opendir("/proc");
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9')
            continue;
        char path[300], buf[512];
        snprintf(path, sizeof(path), "/proc/%s/stat", e->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (n <= 0)
            continue;
        buf[n] = 0;
        char *rp = strrchr(buf, ')'); /* comm may hold spaces and parentheses */
        int pp, pg;
        char state;
        if (!rp || sscanf(rp + 1, " %c %d %d", &state, &pp, &pg) != 3)
            continue;
        pv_push(&pid, atoi(e->d_name));
        pv_push(&ppid, pp);
        pv_push(&pgid, pg);
    }
    closedir(d);
    struct pidvec walk = { 0 };
    if (pid.n == ppid.n && pid.n == pgid.n) {
        pv_push(&walk, root);
        for (size_t i = 0; i < walk.n; i++) /* breadth first: walk grows as it is walked */
            for (size_t j = 0; j < pid.n; j++)
                if (ppid.v[j] == walk.v[i] && pid.v[j] != root) {
                    pv_push(&walk, pid.v[j]);
                    if (!skip_pgid || pgid.v[j] != skip_pgid)
                        pv_push(out, pid.v[j]);
                }
    }
    free(walk.v);
    free(pid.v);
    free(ppid.v);
    free(pgid.v);
}

static void signal_tree(pid_t me, pid_t skip_pgid, int sig)
{
    struct pidvec t = { 0 };
    tree_of(me, skip_pgid, &t);
    for (size_t i = 0; i < t.n; i++)
        kill(t.v[i], sig);
    free(t.v);
}

/* Reaps what has exited; records the plugin's status. 1 while children remain. */
static int reap_some(pid_t plugin, int *status, int *plugin_done)
{
    for (;;) {
        int st;
        pid_t w = waitpid(-1, &st, WNOHANG);
        if (w > 0) {
            if (w == plugin) {
                *status = st;
                *plugin_done = 1;
            }
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        return w == 0; /* 0: children left, none exited; -1 ECHILD: none left */
    }
}

/* SIGKILL to the whole tree until nothing is left (bounded). */
static void kill_tree(pid_t me, pid_t plugin, int *status, int *plugin_done)
{
    for (int round = 0; round < KILL_ROUNDS; round++) {
        signal_tree(me, 0, SIGKILL);
        if (!reap_some(plugin, status, plugin_done))
            return;
        struct timespec ts = { 0, 10 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
}

/* Exits the way the plugin did, so lmcd's supervisor reports its status. */
static void exit_like(int st) __attribute__((noreturn));
static void exit_like(int st)
{
    if (WIFSIGNALED(st)) {
        int sig = WTERMSIG(st);
        struct rlimit none = { 0, 0 };
        setrlimit(RLIMIT_CORE, &none); /* the plugin's core, if any, is already written */
        signal(sig, SIG_DFL);
        sigset_t s;
        sigemptyset(&s);
        sigaddset(&s, sig);
        sigprocmask(SIG_UNBLOCK, &s, NULL);
        kill(getpid(), sig);
        _exit(128 + sig);
    }
    _exit(WIFEXITED(st) ? WEXITSTATUS(st) : 127);
}

/* Set in the zygote once it reset every disposition: its guards inherit
 * them at their defaults (no guard sets a handler), so their plugins need
 * not reset them again (62 system calls each). */
static bool signals_default;

/* Every signal at its default action; an exec keeps SIG_IGN (lmcd's
 * SIGPIPE) and the plugin must not inherit it. */
static void reset_dispositions(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            (void)sigaction(sig, &sa, NULL); /* glibc-internal signals say EINVAL: fine */
}

/* The plugin's side of the fork: its own session, SIGKILL when the guard
 * dies, default signals, then exec. A failed exec reports its errno. */
static void plugin_exec(pid_t guard, char **argv, char **envp) __attribute__((noreturn));
static void plugin_exec(pid_t guard, char **argv, char **envp)
{
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || setsid() < 0)
        goto fail;
    if (getppid() != guard) /* the guard died before prctl: do not outlive it */
        _exit(127);
    if (!signals_default)
        reset_dispositions();
    sigset_t none;
    sigemptyset(&none);
    if (sigprocmask(SIG_SETMASK, &none, NULL) < 0)
        goto fail;
    execve(argv[0], argv, envp);
fail:
    report(2, errno);
    _exit(127);
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define GUARD_SPAWN_SHARES_MEMORY 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define GUARD_SPAWN_SHARES_MEMORY 0
#endif
#endif
#ifndef GUARD_SPAWN_SHARES_MEMORY
#define GUARD_SPAWN_SHARES_MEMORY 1
#endif

#if GUARD_SPAWN_SHARES_MEMORY
struct plugin_exec_args {
    pid_t guard;
    char **argv, **envp;
};

static int plugin_entry(void *arg)
{
    const struct plugin_exec_args *a = arg;
    plugin_exec(a->guard, a->argv, a->envp);
}
#endif

/* Forks the plugin as posix_spawn does: CLONE_VM | CLONE_VFORK, so neither
 * the guard's page tables are copied nor its pages faulted in again (copy
 * on write) in either process; the guard waits only until the plugin's
 * exec, and has nothing else to do meanwhile. Sanitizer builds fork. */
static pid_t start_plugin(pid_t me, char **argv, char **envp)
{
#if GUARD_SPAWN_SHARES_MEMORY
    enum { STACK = 64 * 1024 };
    static char stack[STACK] __attribute__((aligned(64))); /* one plugin per guard, single-threaded */
    struct plugin_exec_args a = { me, argv, envp };
    return clone(plugin_entry, stack + STACK, CLONE_VM | CLONE_VFORK | SIGCHLD, &a);
#else
    pid_t pid = fork();
    if (pid == 0)
        plugin_exec(me, argv, envp);
    return pid;
#endif
}

static int guard_main(int argc, char **argv, char **envp)
{
    if (argc < 5)
        return 127;
    pid_t lmcd = (pid_t)atoi(argv[2]);
    uint64_t grace_ms = strtoull(argv[3], NULL, 10);
    char **plugin_argv = &argv[4];
    pid_t me = getpid();
    prctl(PR_SET_NAME, "lmcd-guard"); /* comm would be "exe", from /proc/self/exe */
    if (fcntl(REPORT_FD, F_SETFD, FD_CLOEXEC) < 0)
        return 127;
    if (getppid() != lmcd)
        return 127; /* lmcd is gone already */
    if (setsid() < 0 || prctl(PR_SET_CHILD_SUBREAPER, 1) < 0) {
        report(2, errno);
        return 127;
    }
    int lfd = (int)syscall(SYS_pidfd_open, lmcd, 0);
    if (lfd < 0 || getppid() != lmcd) { /* re-checked: the pid could have been reused */
        report(2, lfd < 0 ? errno : ESRCH);
        return 127;
    }
    fcntl(lfd, F_SETFD, FD_CLOEXEC);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigprocmask(SIG_BLOCK, &set, NULL);
    int sfd = signalfd(-1, &set, SFD_CLOEXEC);
    if (sfd < 0) {
        report(2, errno);
        return 127;
    }
    pid_t plugin = start_plugin(me, plugin_argv, envp);
    if (plugin < 0) {
        report(2, errno);
        return 127;
    }
    report(1, (int)plugin);
    close(REPORT_FD);
    /* hold no end of the plugin's output pipe: its EOF is the plugin's own */
    dup2(0, 1);
    dup2(0, 2);

    int status = 0, plugin_done = 0;
    uint64_t term_ms = 0;
    for (;;) {
        int timeout = -1;
        if (plugin_done) {
            if (!reap_some(plugin, &status, &plugin_done))
                exit_like(status); /* the whole tree is gone */
            uint64_t now = mono_ms();
            if (!term_ms) {
                signal_tree(me, 0, SIGTERM);
                signal_tree(me, 0, SIGCONT);
                term_ms = now;
            }
            if (now >= term_ms + grace_ms) {
                kill_tree(me, plugin, &status, &plugin_done);
                exit_like(status);
            }
            uint64_t left = term_ms + grace_ms - now;
            timeout = left > 100 ? 100 : (int)left; /* re-check for exits: SIGCHLD may have merged */
        }
        struct pollfd pf[2] = { { lfd, POLLIN, 0 }, { sfd, POLLIN, 0 } };
        int n = poll(pf, 2, timeout);
        if (n < 0 && errno != EINTR)
            break;
        if (n > 0 && pf[0].revents) /* lmcd died, however */
            break;
        if (n > 0 && pf[1].revents) {
            struct signalfd_siginfo si[16];
            ssize_t r = read(sfd, si, sizeof(si));
            for (ssize_t i = 0; r > 0 && i < r / (ssize_t)sizeof(si[0]); i++) {
                if (si[i].ssi_signo == SIGCHLD)
                    continue; /* reaped below */
                if (!term_ms) {
                    /* the supervisor signals the plugin's own group itself */
                    signal_tree(me, plugin, SIGTERM);
                    signal_tree(me, plugin, SIGCONT);
                    term_ms = mono_ms();
                }
            }
            reap_some(plugin, &status, &plugin_done);
        }
    }
    kill_tree(me, plugin, &status, &plugin_done);
    return 137;
}

/* ---- the zygote: one process that clones a guard per plugin ---- */

#define ZYGOTE_SOCK_FD 3
#define ZYGOTE_MAX_ARGS 256

struct guard_child_args {
    int out_w, rep_w;
    int argc;
    char **argv, **envp;
};

/* The new guard, in its own copy of the zygote's memory: the fds a guard
 * exec'd by lmcd starts with (0 /dev/null, 1 and 2 the output pipe, 3 the
 * report pipe, nothing else), then the guard itself. */
static int guard_child(void *arg)
{
    const struct guard_child_args *a = arg;
    /* lmcd learns its guard's pid from here too, in case the zygote dies
     * before it says it: a guard lmcd does not know of would run unwatched */
    int32_t me[2] = { 3, (int32_t)getpid() };
    ssize_t w0 = write(a->rep_w, me, sizeof(me));
    (void)w0;
    if (dup2(a->out_w, 1) < 0 || dup2(a->out_w, 2) < 0 || dup2(a->rep_w, REPORT_FD) < 0) {
        int32_t m[2] = { 2, errno };
        ssize_t w = write(a->rep_w, m, sizeof(m));
        (void)w;
        _exit(127);
    }
    if (syscall(SYS_close_range, 4U, ~0U, 0U) < 0)
        for (int fd = 4; fd < 65536; fd++)
            (void)close(fd);
    _exit(guard_main(a->argc, a->argv, a->envp));
}

struct helper_args {
    struct guard_child_args g;
    char *gstack; /* top of the stack the guard starts on, in its copy of our memory */
};

/* Clones the guard (CLONE_PARENT: lmcd's child) and reports its pid, or
 * the errno of the failed clone. */
static void helper_clone_guard(struct helper_args *h)
{
    pid_t g = clone(guard_child, h->gstack, CLONE_PARENT | SIGCHLD, &h->g);
    int32_t m[2] = { g < 0 ? 2 : 3, g < 0 ? errno : (int32_t)g };
    ssize_t w = write(h->g.rep_w, m, sizeof(m));
    (void)w;
}

/* The helper: a process in the zygote's memory (CLONE_VM) that pays for
 * the guard's clone from a session of its own. Copying an address space is
 * the costly part of a launch on a VM (a millisecond of CPU), and with
 * autogroup scheduling every session gets an equal share: done by the
 * zygote, one session, a hundred launches queued behind the plugins
 * already starting (each its own session) and ran 1.4-1.5x slower than
 * posix_spawn; done by a fresh session each, they take their turn as a
 * posix_spawn'd child's exec does, and several run at once. It touches
 * only its slot, its stack and the system calls' errno (shared with the
 * zygote and the other helpers: it reads none but a failed clone's), takes
 * no lock and allocates nothing. It reports its own pid (tag 4: lmcd reaps
 * it, being its parent) and exits. */
static int helper(void *arg)
{
    struct helper_args *h = arg;
    int32_t m[2] = { 4, (int32_t)getpid() };
    ssize_t w = write(h->g.rep_w, m, sizeof(m));
    (void)w;
    (void)setsid(); /* if it fails, the clone is only slower */
    helper_clone_guard(h);
    _exit(0);
}

/* argv: its name, PLUGIN_ZYGOTE_ARG, lmcd's pid, grace_ms; fd 3 one end of
 * a SOCK_SEQPACKET pair whose other end only lmcd's supervisor holds; 0..2
 * /dev/null; the environment is the plugins'. Each packet is one launch:
 * the plugin's argv as NUL-terminated strings, with the output pipe's and
 * the report pipe's write ends (SCM_RIGHTS). The zygote clones a guard with
 * CLONE_PARENT, so the guard is lmcd's child exactly as an exec'd one (lmcd
 * reaps it through a pidfd, it checks getppid() against lmcd); the guard's
 * pid (tag 3) goes on the report pipe from both sides of the clone, then
 * the zygote closes its copies. EOF on
 * the socket (lmcd stopping, or dead however) ends it. */
/* A helper's own memory, in the zygote's: it may still run (cloning) while
 * the zygote takes the next launch, so nothing of it lives on the zygote's
 * stack or in a buffer the zygote reuses. */
struct helper_slot {
    pid_t busy; /* -1 from before the clone until the helper exits: the kernel
                 * zeroes it then (CLONE_CHILD_CLEARTID) and wakes a futex waiter */
    struct helper_args h;
    char *gargv[ZYGOTE_MAX_ARGS + 5];
    char buf[PLUGIN_ZYGOTE_MSG_MAX];
    char stack[16 * 1024] __attribute__((aligned(64)));
    /* where the guard starts, in its copy of this memory: per slot too,
     * since clone() writes the guard's entry and argument at its top here */
    char gstack[32 * 1024] __attribute__((aligned(64)));
};
#define HELPER_SLOTS 8

/* Slots are taken in turn, so the next one is the oldest helper's. */
static struct helper_slot *free_slot(struct helper_slot *slots)
{
    static unsigned next;
    for (;;) {
        for (unsigned k = 0; k < HELPER_SLOTS; k++) {
            unsigned i = (next + k) % HELPER_SLOTS;
            if (__atomic_load_n(&slots[i].busy, __ATOMIC_ACQUIRE) == 0) {
                next = (i + 1) % HELPER_SLOTS;
                return &slots[i];
            }
        }
        /* all cloning, each done within one fork: wait for the oldest (its
         * exit wakes us; 10 ms bounds a wake-up missed for another slot) */
        struct timespec ts = { 0, 10 * 1000 * 1000 };
        syscall(SYS_futex, &slots[next].busy, FUTEX_WAIT, -1, &ts, NULL, 0);
    }
}

static int zygote_main(int argc, char **argv, char **envp)
{
    if (argc < 4)
        return 127;
    prctl(PR_SET_NAME, "lmcd-zygote");
    if (getppid() != (pid_t)atoi(argv[2]))
        return 127; /* lmcd is gone already */
    if (setsid() < 0) /* out of lmcd's process group: a terminal's ^C is not for it */
        return 127;
    reset_dispositions();
    signals_default = true;
    static struct helper_slot slots[HELPER_SLOTS];
    for (;;) {
        struct helper_slot *sl = free_slot(slots);
        union {
            struct cmsghdr h;
            char space[CMSG_SPACE(2 * sizeof(int))];
        } cm;
        struct iovec iov = { sl->buf, sizeof(sl->buf) };
        struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.space,
                              .msg_controllen = sizeof(cm.space) };
        ssize_t n = recvmsg(ZYGOTE_SOCK_FD, &msg, MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return 0;
        int fds[2] = { -1, -1 }, nfds = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
                int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
                for (int i = 0; i < k; i++) {
                    int fd;
                    memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(fd));
                    if (nfds < 2)
                        fds[nfds++] = fd;
                    else
                        close(fd);
                }
            }
        if (nfds != 2 || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
            for (int i = 0; i < nfds; i++)
                close(fds[i]);
            continue; /* not from lmcd's supervisor: it sends both, and fits */
        }
        int rep_w = fds[1];
        /* argv: the guard's four, then the plugin's strings */
        char **gargv = sl->gargv, *buf = sl->buf;
        int argc2 = 0;
        gargv[argc2++] = argv[0];
        gargv[argc2++] = (char *)PLUGIN_GUARD_ARG;
        gargv[argc2++] = argv[2];
        gargv[argc2++] = argv[3];
        int err = n > 0 && buf[n - 1] == '\0' ? 0 : EINVAL;
        for (ssize_t off = 0; !err && off < n; off += (ssize_t)strlen(buf + off) + 1) {
            if (argc2 == ZYGOTE_MAX_ARGS + 4)
                err = E2BIG;
            else
                gargv[argc2++] = buf + off;
        }
        gargv[argc2] = NULL;
        if (!err) {
            sl->h = (struct helper_args){ { fds[0], rep_w, argc2, gargv, envp }, sl->gstack + sizeof(sl->gstack) };
            /* The helper shares our memory, so it costs us next to nothing,
             * and we do not wait for it; it has its own copy of our fds.
             * CLONE_PARENT makes it, and the guard it clones, lmcd's
             * children. */
            __atomic_store_n(&sl->busy, -1, __ATOMIC_RELEASE);
            pid_t hp = clone(helper, sl->stack + sizeof(sl->stack),
                             CLONE_VM | CLONE_PARENT | CLONE_CHILD_CLEARTID | SIGCHLD, &sl->h, NULL, NULL,
                             &sl->busy);
            if (hp < 0) { /* no helper: clone the guard here, at our own share of the CPU */
                __atomic_store_n(&sl->busy, 0, __ATOMIC_RELEASE);
                helper_clone_guard(&sl->h);
            }
        }
        if (err) {
            int32_t m[2] = { 2, err };
            ssize_t w = write(rep_w, m, sizeof(m));
            (void)w;
        }
        close(fds[0]);
        close(rep_w);
    }
}

#ifdef PLUGIN_GUARD_MAIN
/* build/lmcd-plugin-guard: this file alone, linked with libc only, so the
 * guard starts in a millisecond instead of loading lmcd's libraries. */
int main(int argc, char **argv, char **envp)
{
    if (argc >= 2 && !strcmp(argv[1], PLUGIN_GUARD_ARG))
        return guard_main(argc, argv, envp);
    if (argc >= 2 && !strcmp(argv[1], PLUGIN_ZYGOTE_ARG))
        return zygote_main(argc, argv, envp);
    fprintf(stderr, "lmcd-plugin-guard: started by lmcd only (see docs/runtime_plugins.md)\n");
    return 2;
}
#else
/* glibc passes (argc, argv, envp) to constructors. Runs before main(). */
__attribute__((constructor)) static void plugin_guard_ctor(int argc, char **argv, char **envp)
{
    if (argc >= 2 && argv && argv[1] && !strcmp(argv[1], PLUGIN_GUARD_ARG))
        _exit(guard_main(argc, argv, envp));
    if (argc >= 2 && argv && argv[1] && !strcmp(argv[1], PLUGIN_ZYGOTE_ARG))
        _exit(zygote_main(argc, argv, envp));
}

/* The standalone guard beside this binary when there is one (lmcd's build
 * and install), else this binary itself (unit tests, a lone lmcd). */
static char guard_exe[4096] = "/proc/self/exe";
static pthread_once_t guard_exe_once = PTHREAD_ONCE_INIT;

static void guard_exe_find(void)
{
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0)
        return;
    self[n] = 0;
    char *slash = strrchr(self, '/');
    if (!slash)
        return;
    *slash = 0;
    char cand[4096 + 32];
    snprintf(cand, sizeof(cand), "%s/lmcd-plugin-guard", self);
    if (strlen(cand) < sizeof(guard_exe) && access(cand, X_OK) == 0)
        snprintf(guard_exe, sizeof(guard_exe), "%s", cand);
}

const char *plugin_guard_exe(void)
{
    pthread_once(&guard_exe_once, guard_exe_find);
    return guard_exe;
}
#endif

char **plugin_guard_argv(int lmcd_pid, unsigned grace_ms, char *const plugin_argv[])
{
    size_t n = 0;
    while (plugin_argv[n])
        n++;
    char **v = calloc(n + 5, sizeof(*v));
    if (!v)
        return NULL;
    v[0] = strdup("lmcd-plugin-guard");
    v[1] = strdup(PLUGIN_GUARD_ARG);
    if (asprintf(&v[2], "%d", lmcd_pid) < 0)
        v[2] = NULL;
    if (asprintf(&v[3], "%u", grace_ms) < 0)
        v[3] = NULL;
    for (size_t i = 0; i < n; i++)
        v[4 + i] = plugin_argv[i]; /* borrowed */
    if (!v[0] || !v[1] || !v[2] || !v[3]) {
        plugin_guard_argv_free(v);
        return NULL;
    }
    return v;
}

void plugin_guard_argv_free(char **v)
{
    if (!v)
        return;
    for (int i = 0; i < 4; i++)
        free(v[i]);
    free(v);
}
