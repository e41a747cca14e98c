/*
 * l1_guard: the SIGBUS handler for truncated L1 segments. See l1_guard.h.
 *
 * mmap is not on POSIX's async-signal-safe list, but on Linux it is a plain
 * system call with no user-space state, and it is the only way to let a
 * faulting access complete: the alternative (siglongjmp out of memcpy)
 * cannot cover ZeroMQ's I/O thread reading a zero-copy frame.
 */
#include "l1/l1_guard.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#define L1_GUARD_SLOTS 16

struct l1_guard {
    _Atomic uintptr_t base; /* 0: slot free */
    _Atomic size_t len;
    atomic_bool lost;
};

static struct l1_guard slots[L1_GUARD_SLOTS];
static struct sigaction prev_bus;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static int install_err;

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
    uintptr_t a = (uintptr_t)si->si_addr;
    for (int i = 0; i < L1_GUARD_SLOTS; i++) {
        uintptr_t b = atomic_load(&slots[i].base);
        size_t n = atomic_load(&slots[i].len);
        if (b && a >= b && a - b < n) {
            int e = errno;
            /* Private zero pages in place of the whole segment: no further
             * access to it can fault, and nothing written lands in it. */
            void *p = mmap((void *)b, n, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
            errno = e;
            atomic_store(&slots[i].lost, true);
            if (p != MAP_FAILED)
                return; /* the faulting access is retried on the new pages */
            break;
        }
    }
    if (prev_bus.sa_flags & SA_SIGINFO) {
        if (prev_bus.sa_sigaction) {
            prev_bus.sa_sigaction(sig, si, uc);
            return;
        }
    } else if (prev_bus.sa_handler != SIG_DFL && prev_bus.sa_handler != SIG_IGN) {
        prev_bus.sa_handler(sig);
        return;
    }
    /* Not ours: the default action, as if no handler were installed. */
    signal(SIGBUS, SIG_DFL);
    raise(SIGBUS);
}

static void install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGBUS, &sa, &prev_bus) < 0)
        install_err = -errno;
}

int l1_guard_register(void *base, size_t len, struct l1_guard **out)
{
    *out = NULL;
    pthread_once(&once, install);
    if (install_err)
        return install_err;
    for (int i = 0; i < L1_GUARD_SLOTS; i++) {
        uintptr_t zero = 0;
        if (atomic_compare_exchange_strong(&slots[i].base, &zero, (uintptr_t)1)) {
            atomic_store(&slots[i].len, len);
            atomic_store(&slots[i].lost, false);
            atomic_store(&slots[i].base, (uintptr_t)base);
            *out = &slots[i];
            return 0;
        }
    }
    return -ENOSPC;
}

bool l1_guard_lost(const struct l1_guard *g) { return g && atomic_load(&g->lost); }

void l1_guard_rearm(struct l1_guard *g)
{
    if (g)
        atomic_store(&g->lost, false);
}

void l1_guard_unregister(struct l1_guard *g)
{
    if (!g)
        return;
    atomic_store(&g->len, 0);
    atomic_store(&g->base, 0);
}
