/*
 * bench_plugins: launching 100 runtime plugins, against posix_spawn of the
 * same 100 scripts from this process.
 *
 * Each script is `#!/bin/sh`, writes a marker file named after itself into
 * $LMCD_BENCH_MARKS, then sleeps. lmcd launches them after its ready line
 * (--runtime-plugin-locations DIR): the time runs from the ready line's own
 * timestamp (wall clock, ms) to the newest marker's mtime. The baseline
 * posix_spawns /bin/sh SCRIPT for each (own session, as lmcd's plugins),
 * stdin and stdout on /dev/null, and
 * times from the wall clock before the first spawn to the newest marker's
 * mtime; then kills them. File times, not the moment this process notices,
 * so the bench's own scheduling on a loaded machine does not count. Best
 * of ROUNDS rounds, interleaved.
 * Everything is created under a fresh /tmp directory and removed.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "util/clock.h"

#define N 100
#define ROUNDS 3

extern char **environ;

static char root[128], scripts[192], marks[192];

static void die(const char *what)
{
    fprintf(stderr, "bench_plugins: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int count_marks(void)
{
    DIR *d = opendir(marks);
    if (!d)
        die(marks);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        n += de->d_name[0] == 'p';
    closedir(d);
    return n;
}

static void clear_marks(void)
{
    char path[320];
    for (int i = 0; i < N; i++) {
        snprintf(path, sizeof(path), "%s/p%03d", marks, i);
        unlink(path);
    }
}

static uint64_t wall_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* Waits (bounded: 60 s) until all N markers exist; returns the newest
 * marker's mtime (wall clock ns). */
static uint64_t wait_marks(void)
{
    uint64_t end = clock_mono_ns() + 60ull * 1000000000;
    while (count_marks() < N) {
        if (clock_mono_ns() > end) {
            fprintf(stderr, "bench_plugins: only %d of %d plugins started within 60 s\n", count_marks(), N);
            exit(1);
        }
        usleep(1000);
    }
    uint64_t newest = 0;
    for (int i = 0; i < N; i++) {
        char path[320];
        struct stat st;
        snprintf(path, sizeof(path), "%s/p%03d", marks, i);
        if (stat(path, &st))
            die(path);
        uint64_t t = (uint64_t)st.st_mtim.tv_sec * 1000000000u + (uint64_t)st.st_mtim.tv_nsec;
        newest = t > newest ? t : newest;
    }
    return newest;
}

/* The wall time (ns) of lmcd's log line "[YYYY-MM-DD HH:MM:SS,mmm] ...",
 * written in local time. */
static uint64_t line_time(const char *line)
{
    struct tm tm = { 0 };
    int ms = 0;
    if (sscanf(line, "[%d-%d-%d %d:%d:%d,%d]", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour, &tm.tm_min,
               &tm.tm_sec, &ms) != 7) {
        fprintf(stderr, "bench_plugins: no timestamp in the ready line: %s\n", line);
        exit(1);
    }
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    tm.tm_isdst = -1;
    return (uint64_t)mktime(&tm) * 1000000000u + (uint64_t)ms * 1000000u;
}

static double run_lmcd(void)
{
    clear_marks();
    /* --l1-init-size-gb 0: L1 otherwise commits its first GiB of tmpfs from a
     * thread of its own right after the ready line (hundreds of ms of page
     * zeroing here), on the same cores the plugins start on: not a cost of
     * launching plugins. */
    const char *extra[] = { "--runtime-plugin-locations", scripts, "--runtime-plugin-stop-timeout", "2",
                            "--l1-init-size-gb", "0", NULL };
    struct bench_proc p;
    int port;
    bench_lmcd_start(&p, &port, extra);
    uint64_t t0 = line_time(p.ready_line); /* the plugins launch after this line is written */
    uint64_t t1 = wait_marks();
    bench_proc_stop(&p, 20000);
    return (double)(t1 - t0) / 1e6;
}

static double run_spawn(void)
{
    clear_marks();
    pid_t pids[N];
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    /* Each in its own session, as lmcd starts plugins: with autogroup
     * scheduling a session is what gets a fair share of the CPU. */
    posix_spawnattr_t at;
    posix_spawnattr_init(&at);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSID);
    uint64_t t0 = wall_ns();
    for (int i = 0; i < N; i++) {
        char path[320];
        snprintf(path, sizeof(path), "%s/p%03d.sh", scripts, i);
        char *argv[] = { "/bin/sh", path, NULL };
        int rc = posix_spawn(&pids[i], "/bin/sh", &fa, &at, argv, environ);
        if (rc) {
            errno = rc;
            die("posix_spawn");
        }
    }
    uint64_t t1 = wait_marks();
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    for (int i = 0; i < N; i++)
        kill(pids[i], SIGKILL);
    for (int i = 0; i < N; i++)
        waitpid(pids[i], NULL, 0);
    return (double)(t1 - t0) / 1e6;
}

/* Removes what main() made, also on an early exit(1) (atexit). */
static void cleanup(void)
{
    char path[320];
    if (!root[0])
        return;
    clear_marks();
    for (int i = 0; i < N; i++) {
        snprintf(path, sizeof(path), "%s/p%03d.sh", scripts, i);
        unlink(path);
    }
    rmdir(scripts);
    rmdir(marks);
    rmdir(root);
    root[0] = '\0';
}

int main(void)
{
    snprintf(root, sizeof(root), "/tmp/lmcd_bench_plugins_%d", (int)getpid());
    snprintf(scripts, sizeof(scripts), "%s/scripts", root);
    snprintf(marks, sizeof(marks), "%s/marks", root);
    if (mkdir(root, 0700))
        die(root);
    atexit(cleanup);
    if (mkdir(scripts, 0700) || mkdir(marks, 0700))
        die(root);
    setenv("LMCD_BENCH_MARKS", marks, 1);
    for (int i = 0; i < N; i++) {
        char path[320];
        snprintf(path, sizeof(path), "%s/p%03d.sh", scripts, i);
        FILE *f = fopen(path, "w");
        if (!f)
            die(path);
        /* exec sleep: the plugin stays up (so no restart), one process per plugin */
        fprintf(f, "#!/bin/sh\n: > \"$LMCD_BENCH_MARKS/p%03d\"\nexec sleep 60\n", i);
        if (fclose(f) || chmod(path, 0700))
            die(path);
    }
    int rounds = bench_quick() ? 1 : ROUNDS;
    double lm = 0, sp = 0;
    for (int r = 0; r < rounds; r++) {
        double a = run_spawn(), b = run_lmcd();
        sp = r == 0 || a < sp ? a : sp;
        lm = r == 0 || b < lm ? b : lm;
    }
    printf("  launch %d plugins: lmcd %.1f ms, posix_spawn %.1f ms: %.2fx\n", N, lm, sp, lm / sp);
    bench_report("plugins launch of 100 (ready line to all running)", "ms", lm, "posix_spawn", sp, false);

    return 0; /* cleanup() runs at exit */
}
