/*
 * bench/common: what the benchmarks that talk to real processes share:
 * free loopback ports, spawning a server and timing its ready line,
 * stopping it, ZeroMQ multipart helpers and latency statistics.
 *
 * Ownership: a bench_proc owns its child and the pipe drainer thread until
 * bench_proc_stop(); bench_stop_all() (atexit) stops whatever is still
 * running, so an early exit(1) leaves no server behind.
 * Threads: one bench thread calls these; the drainer is internal.
 */
#ifndef LMCD_BENCH_COMMON_H
#define LMCD_BENCH_COMMON_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <zmq.h>

#include "wire/wire.h"

#define BENCH_READY_LMCD "LMCache cache server is running..."

/* A TCP port on 127.0.0.1 that was free a moment ago; exits on failure. */
int bench_free_port(void);

/* Path of the lmcd binary: $LMCD_BUILD/lmcd (LMCD_BUILD defaults to build). */
const char *bench_lmcd_path(void);

struct bench_proc {
    pid_t pid;
    int fd;              /* read end of the child's stdout+stderr */
    pthread_t drainer;
    bool has_drainer;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    const char *ready_text; /* guarded by mu */
    uint64_t spawn_ns;      /* clock_mono_ns() just before posix_spawn */
    uint64_t ready_ns;      /* guarded by mu: when the ready line was read; 0 = not yet */
    char ready_line[512];   /* guarded by mu: the ready line itself (with the server's timestamp) */
    bool eof;               /* guarded by mu: the child closed its output */
    char tail[4096];        /* guarded by mu: last output, for error messages */
    size_t tail_len;        /* guarded by mu */
};

/* Spawns argv (argv[0] a path, or a name looked up in PATH) with stdout
 * and stderr on a pipe that a thread drains, and waits up to timeout_ms
 * for a line containing ready_text. 0, or -errno / -ETIMEDOUT (the child
 * is stopped then and its last output printed). */
int bench_proc_start(struct bench_proc *p, char *const argv[], const char *ready_text, int timeout_ms);
/* Milliseconds from spawn to the ready line. */
double bench_proc_ready_ms(const struct bench_proc *p);
/* SIGTERM, waits up to timeout_ms, then SIGKILL; reaps; joins the drainer.
 * Returns the exit status as waitpid() gave it (or -1). Idempotent. */
int bench_proc_stop(struct bench_proc *p, int timeout_ms);

/* Starts lmcd on free ports with extra flags (NULL-terminated); *port gets
 * its ZeroMQ port. Exits the program when it does not come up. */
void bench_lmcd_start(struct bench_proc *p, int *port, const char *const *extra);

/* A DEALER connected to endpoint (linger 0, 10 s receive timeout); exits
 * on failure. */
void *bench_dealer(void *ctx, const char *endpoint);

/* Encodes req in its positional form with uid and sends it, followed by
 * n_raw raw frames (the inline ops' chunk bytes). Exits on failure. */
void bench_send_req(void *sock, enum wire_profile profile, const struct wire_req *req, uint64_t uid,
                    const void *const *raw, const size_t *raw_len, size_t n_raw);

/* Sends n frames as one message; the last frame without SNDMORE unless
 * more is true. -1 on error (errno set by ZeroMQ). */
int bench_send_frames(void *sock, const void *const *data, const size_t *len, size_t n, bool more);

/* Receives one multipart message into msgs (at most max frames; extra
 * frames are received and dropped); returns the frame count, -1 on error.
 * The caller closes the msgs with bench_msgs_close(). */
int bench_recv_msgs(void *sock, zmq_msg_t *msgs, int max);
void bench_msgs_close(zmq_msg_t *msgs, int n);

/* Latency samples in ns. */
struct bench_lat {
    uint64_t *v;
    size_t n, cap;
};
void bench_lat_add(struct bench_lat *l, uint64_t ns);
/* Sorts and returns the q-quantile (0..1) in microseconds. */
double bench_lat_us(struct bench_lat *l, double q);
void bench_lat_free(struct bench_lat *l);

/* True when LMCD_BENCH_QUICK is set and not "0" (`make bench QUICK=1`):
 * every bench shrinks its sizes and times so the whole run takes seconds. */
bool bench_quick(void);

/* Records one figure of the run's table: appends a JSON line {figure, unit,
 * higher_is_better, lmcd, baseline_name, baseline, ratio} to
 * $LMCD_BENCH_OUT/results.jsonl (default bench/out). ratio = lmcd/baseline,
 * so for a throughput (higher_is_better) 1.0 means as fast as the baseline
 * and more is better, for a time or a size less is better. base_name NULL:
 * a figure without a baseline (ratio null). bench/report.py prints the
 * table, writes results.json and the plots. Exits on I/O errors. */
void bench_report(const char *figure, const char *unit, double lmcd, const char *base_name, double baseline,
                  bool higher_is_better);

#endif
