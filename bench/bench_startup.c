/*
 * bench_startup: time from exec of lmcd to its ready log line ("LMCache
 * cache server is running..."), over RUNS starts each, for an L1 of 1 GiB
 * committed lazily (the default) and pre-faulted (--no-l1-use-lazy); also
 * the time from SIGTERM to exit. Baseline measured in the same run:
 * `lmcd --version` from exec to exit (loading the binary and its libraries).
 * lmcd is $LMCD_BUILD/lmcd on free 127.0.0.1 ports; every start is bounded
 * (30 s) and stopped. Usage: bench_startup [RUNS, default 5, at most 20].
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include "common.h"
#include "util/clock.h"

#define MAX_RUNS 20

extern char **environ;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void report(const char *what, double *ms, int n, double base)
{
    qsort(ms, (size_t)n, sizeof(*ms), cmp_double);
    printf("  %-38s min %8.2f  median %8.2f  max %8.2f ms", what, ms[0], ms[n / 2], ms[n - 1]);
    if (base > 0)
        printf("  %7.1fx --version", ms[n / 2] / base);
    printf("\n");
    char fig[96];
    snprintf(fig, sizeof(fig), "startup %s", what[0] == ' ' ? what + 2 : what);
    if (base > 0)
        bench_report(fig, "ms", ms[n / 2], "lmcd --version", base, false);
    else
        bench_report(fig, "ms", ms[n / 2], NULL, 0, false);
}

/* exec to exit of `lmcd --version`, output discarded; -1 on failure. */
static double version_ms(void)
{
    char *argv[] = { (char *)bench_lmcd_path(), "--version", NULL };
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    pid_t pid;
    uint64_t t0 = clock_mono_ns();
    int rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc)
        return -1;
    int st;
    /* bounded: --version exits at once; polled every 0.1 ms, given up after 10 s */
    for (int waited = 0; waitpid(pid, &st, WNOHANG) == 0; waited++) {
        if (waited >= 100000) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        nanosleep(&(struct timespec){ 0, 1000000 / 10 }, NULL);
    }
    double ms = (double)(clock_mono_ns() - t0) / 1e6;
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? ms : -1;
}

int main(int argc, char **argv)
{
    int runs = argc > 1 ? atoi(argv[1]) : bench_quick() ? 3 : 5;
    if (runs < 1 || runs > MAX_RUNS)
        runs = 5;
    double ms[MAX_RUNS], stop_ms[MAX_RUNS];

    printf("  %s, %d runs each\n", bench_lmcd_path(), runs);
    for (int i = 0; i < runs; i++) {
        if ((ms[i] = version_ms()) < 0) {
            fprintf(stderr, "bench_startup: %s --version failed (run `make` first)\n", bench_lmcd_path());
            return 1;
        }
    }
    report("exec to exit, --version", ms, runs, 0);
    double base = ms[runs / 2];

    static const struct {
        const char *name;
        const char *args[4];
    } cfgs[] = {
        { "exec to ready, --l1-size-gb 1", { "--l1-size-gb", "1", NULL } },
        { "exec to ready, 1 GiB --no-l1-use-lazy", { "--l1-size-gb", "1", "--no-l1-use-lazy", NULL } },
    };
    for (size_t c = 0; c < sizeof(cfgs) / sizeof(cfgs[0]); c++) {
        for (int i = 0; i < runs; i++) {
            struct bench_proc p;
            int port;
            bench_lmcd_start(&p, &port, cfgs[c].args);
            ms[i] = bench_proc_ready_ms(&p);
            uint64_t t0 = clock_mono_ns();
            int st = bench_proc_stop(&p, 15000);
            stop_ms[i] = (double)(clock_mono_ns() - t0) / 1e6;
            if (st != 0)
                fprintf(stderr, "bench_startup: lmcd exited with status 0x%x on SIGTERM\n", st);
        }
        report(cfgs[c].name, ms, runs, base);
        char what[96];
        snprintf(what, sizeof(what), "  SIGTERM to exit, %s", cfgs[c].name + strlen("exec to ready, "));
        report(what, stop_ms, runs, 0);
    }
    return 0;
}
