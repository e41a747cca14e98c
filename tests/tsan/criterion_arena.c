/*
 * criterion_arena: lets Criterion (BoxFort) start under ThreadSanitizer.
 * Linked into the unit test binaries of `make test SAN=thread` only.
 *
 * Why. Criterion's sandbox (BoxFort, bundled in Debian's libcriterion 2.4.1)
 * puts every shared arena (one for the runner, one per test) at an address
 * it draws at random: 0x2000'0000'0000 + (rand_r() & 0x3fffff) * 16 MiB,
 * skips a draw whose pages mincore() reports mapped, and gives up after 10
 * draws ("Could not initialize inheritable arena: Resource temporarily
 * unavailable", or a NULL arena and a SEGV inside libcriterion when the
 * runner's draw succeeded and a test's did not). On x86-64 TSan reserves
 * that whole window for its shadow and meta memory and maps every gap
 * PROT_NONE, except the "mid app" range where PIE binaries load
 * (0x5500'0000'0000 - 0x5680'0000'0000): about 2% of the window, so 10 draws
 * find room about one time in five, and a binary with N tests needs N + 1
 * successes. ASLR, vm.mmap_rnd_bits and TSAN_OPTIONS do not change it;
 * clang's TSan has the same layout.
 *
 * What. This rand_r() serves BoxFort's draw only (the caller's return
 * address lies in libcriterion): it keeps drawing from glibc's rand_r()
 * until the address BoxFort will compute has an unmapped first page, so
 * BoxFort's own check and MAP_FIXED mmap see a free page in TSan's
 * application memory. Every other caller (tests use rand_r too) gets glibc's
 * rand_r() untouched. Nothing is instrumented differently: the tests, lmcd's
 * libraries and Criterion run exactly as under `make test`.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* dladdr, RTLD_NEXT */
#endif
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* BoxFort's 64-bit draw (src/arena.c): base + (r & mask) * step. */
#define BXF_BASE 0x200000000000ull
#define BXF_MASK 0x3fffffu
#define BXF_STEP (1ull << 24)
#define DRAWS_MAX 100000

int rand_r(unsigned int *seedp);

static int called_from_criterion(const void *ret)
{
    Dl_info info;
    return dladdr(ret, &info) && info.dli_fname && strstr(info.dli_fname, "libcriterion");
}

static int page_free(uintptr_t addr)
{
    unsigned char vec;
    return mincore((void *)addr, (size_t)sysconf(_SC_PAGESIZE), &vec) < 0 && errno == ENOMEM;
}

static int (*real_rand_r)(unsigned int *); /* set once by resolve() */
static pthread_once_t resolved = PTHREAD_ONCE_INIT;

static void resolve(void)
{
    real_rand_r = (int (*)(unsigned int *))dlsym(RTLD_NEXT, "rand_r");
}

int rand_r(unsigned int *seedp)
{
    pthread_once(&resolved, resolve);
    if (!real_rand_r)
        abort(); /* glibc without rand_r: nothing sensible to return */
    int r = real_rand_r(seedp);
    if (!called_from_criterion(__builtin_return_address(0)))
        return r;
    int saved = errno;
    for (int i = 0; i < DRAWS_MAX && !page_free(BXF_BASE + ((unsigned)r & BXF_MASK) * BXF_STEP); i++)
        r = real_rand_r(seedp);
    errno = saved;
    return r;
}
