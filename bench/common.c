/* bench/common: see common.h. */
#include "common.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <math.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "util/clock.h"

extern char **environ;

#define MAX_PROCS 8

/* Every started process, so the atexit hook can stop what is left. Only the
 * bench's main thread touches this list. */
static struct bench_proc *procs[MAX_PROCS];

int bench_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof(a);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) < 0) {
        perror("bench: free port");
        exit(1);
    }
    close(fd);
    return ntohs(a.sin_port);
}

const char *bench_lmcd_path(void)
{
    static char path[512];
    const char *b = getenv("LMCD_BUILD");
    snprintf(path, sizeof(path), "%s/lmcd", b && *b ? b : "build");
    return path;
}

static void tail_append(struct bench_proc *p, const char *s, size_t n)
{
    if (n >= sizeof(p->tail)) {
        s += n - (sizeof(p->tail) - 1);
        n = sizeof(p->tail) - 1;
    }
    if (p->tail_len + n >= sizeof(p->tail)) {
        size_t drop = p->tail_len + n - (sizeof(p->tail) - 1);
        memmove(p->tail, p->tail + drop, p->tail_len - drop);
        p->tail_len -= drop;
    }
    memcpy(p->tail + p->tail_len, s, n);
    p->tail_len += n;
    p->tail[p->tail_len] = '\0';
}

/* Reads the child's output until EOF (the pipe must never fill, or the
 * child would block on its own log). Stamps the ready line when seen. */
static void *drain(void *arg)
{
    struct bench_proc *p = arg;
    char buf[8192], line[4096];
    size_t ll = 0;
    for (;;) {
        ssize_t n = read(p->fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        uint64_t now = clock_mono_ns();
        pthread_mutex_lock(&p->mu);
        if (n <= 0) {
            p->eof = true;
            pthread_cond_broadcast(&p->cv);
            pthread_mutex_unlock(&p->mu);
            return NULL;
        }
        tail_append(p, buf, (size_t)n);
        for (ssize_t i = 0; i < n; i++) {
            if (buf[i] != '\n') {
                if (ll + 1 < sizeof(line))
                    line[ll++] = buf[i];
                continue;
            }
            line[ll] = '\0';
            if (!p->ready_ns && strstr(line, p->ready_text)) {
                p->ready_ns = now;
                size_t keep = ll < sizeof(p->ready_line) - 1 ? ll : sizeof(p->ready_line) - 1;
                memcpy(p->ready_line, line, keep);
                p->ready_line[keep] = '\0';
                pthread_cond_broadcast(&p->cv);
            }
            ll = 0;
        }
        pthread_mutex_unlock(&p->mu);
    }
}

static void stop_all(void)
{
    for (int i = 0; i < MAX_PROCS; i++)
        if (procs[i])
            bench_proc_stop(procs[i], 5000);
}

int bench_proc_start(struct bench_proc *p, char *const argv[], const char *ready_text, int timeout_ms)
{
    static bool hooked;
    if (!hooked) {
        atexit(stop_all);
        hooked = true;
    }
    memset(p, 0, sizeof(*p));
    p->pid = -1;
    p->fd = -1;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->ready_text = ready_text;

    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) < 0)
        return -errno;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, pfd[1], 1);
    posix_spawn_file_actions_adddup2(&fa, pfd[1], 2);
    p->spawn_ns = clock_mono_ns();
    int rc = posix_spawnp(&p->pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(pfd[1]);
    if (rc) {
        close(pfd[0]);
        p->pid = -1;
        return -rc;
    }
    p->fd = pfd[0];
    for (int i = 0; i < MAX_PROCS; i++) {
        if (!procs[i]) {
            procs[i] = p;
            break;
        }
    }
    if ((rc = pthread_create(&p->drainer, NULL, drain, p))) {
        bench_proc_stop(p, timeout_ms);
        return -rc;
    }
    p->has_drainer = true;

    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += timeout_ms / 1000;
    dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    rc = 0;
    pthread_mutex_lock(&p->mu);
    while (!p->ready_ns && !p->eof && rc == 0)
        rc = pthread_cond_timedwait(&p->cv, &p->mu, &dl);
    bool ok = p->ready_ns != 0;
    pthread_mutex_unlock(&p->mu);
    if (ok)
        return 0;
    bench_proc_stop(p, 2000);
    fprintf(stderr, "bench: %s did not print \"%s\" within %d ms; its output:\n%s\n", argv[0], ready_text,
            timeout_ms, p->tail);
    return rc == ETIMEDOUT ? -ETIMEDOUT : -EIO;
}

double bench_proc_ready_ms(const struct bench_proc *p)
{
    return (double)(p->ready_ns - p->spawn_ns) / 1e6;
}

int bench_proc_stop(struct bench_proc *p, int timeout_ms)
{
    int status = -1;
    if (p->pid > 0) {
        kill(p->pid, SIGTERM);
        /* bounded: poll the child every millisecond up to timeout_ms */
        int waited = 0;
        pid_t r;
        while ((r = waitpid(p->pid, &status, WNOHANG)) == 0 && waited < timeout_ms) {
            nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
            waited++;
        }
        if (r == 0) {
            kill(p->pid, SIGKILL);
            waitpid(p->pid, &status, 0);
        }
        p->pid = -1;
    }
    if (p->has_drainer) {
        pthread_join(p->drainer, NULL); /* EOF arrives once the child is gone */
        p->has_drainer = false;
    }
    if (p->fd >= 0) {
        close(p->fd);
        p->fd = -1;
    }
    for (int i = 0; i < MAX_PROCS; i++)
        if (procs[i] == p)
            procs[i] = NULL;
    return status;
}

void bench_lmcd_start(struct bench_proc *p, int *port, const char *const *extra)
{
    char ps[16], hs[16];
    *port = bench_free_port();
    snprintf(ps, sizeof(ps), "%d", *port);
    snprintf(hs, sizeof(hs), "%d", bench_free_port());
    const char *argv[32] = { bench_lmcd_path(), "--host", "127.0.0.1", "--port", ps,
                             "--http-host", "127.0.0.1", "--http-port", hs };
    int n = 9;
    for (; extra && *extra && n < 31; extra++)
        argv[n++] = *extra;
    argv[n] = NULL;
    int rc = bench_proc_start(p, (char *const *)argv, BENCH_READY_LMCD, 30000);
    if (rc < 0) {
        fprintf(stderr, "bench: cannot start %s: %s (run `make` first)\n", argv[0], strerror(-rc));
        exit(1);
    }
}

void *bench_dealer(void *ctx, const char *endpoint)
{
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int zero = 0, tmo = 10000;
    if (!s || zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof(zero)) ||
        zmq_setsockopt(s, ZMQ_RCVTIMEO, &tmo, sizeof(tmo)) || zmq_connect(s, endpoint)) {
        fprintf(stderr, "bench: DEALER to %s: %s\n", endpoint, zmq_strerror(zmq_errno()));
        exit(1);
    }
    return s;
}

void bench_send_req(void *sock, enum wire_profile profile, const struct wire_req *req, uint64_t uid,
                    const void *const *raw, const size_t *raw_len, size_t n_raw)
{
    struct wire_msg m;
    wire_msg_init(&m);
    int rc = wire_encode_request(profile, WIRE_FORM_POSITIONAL, req, uid, &m);
    if (rc < 0) {
        fprintf(stderr, "bench: cannot encode %s: %s\n", wire_op_name(req->op), wire_strerror(rc));
        exit(1);
    }
    const void *data[WIRE_MAX_REQ_FRAMES];
    size_t len[WIRE_MAX_REQ_FRAMES];
    for (size_t i = 0; i < m.n_frames; i++) {
        struct wire_frame f = wire_msg_frame(&m, i);
        data[i] = f.data;
        len[i] = f.len;
    }
    if (bench_send_frames(sock, data, len, m.n_frames, n_raw > 0) < 0 ||
        (n_raw && bench_send_frames(sock, raw, raw_len, n_raw, false) < 0)) {
        fprintf(stderr, "bench: send %s: %s\n", wire_op_name(req->op), zmq_strerror(zmq_errno()));
        exit(1);
    }
    wire_msg_free(&m);
}

int bench_send_frames(void *sock, const void *const *data, const size_t *len, size_t n, bool more)
{
    for (size_t i = 0; i < n; i++) {
        int fl = (i + 1 < n || more) ? ZMQ_SNDMORE : 0;
        if (zmq_send(sock, data[i], len[i], fl) < 0)
            return -1;
    }
    return 0;
}

int bench_recv_msgs(void *sock, zmq_msg_t *msgs, int max)
{
    int n = 0;
    for (;;) {
        zmq_msg_t tmp, *m = n < max ? &msgs[n] : &tmp;
        zmq_msg_init(m);
        if (zmq_msg_recv(m, sock, 0) < 0) {
            zmq_msg_close(m);
            bench_msgs_close(msgs, n < max ? n : max);
            return -1;
        }
        bool more = zmq_msg_more(m);
        if (m == &tmp)
            zmq_msg_close(m);
        n++;
        if (!more)
            return n < max ? n : max;
    }
}

void bench_msgs_close(zmq_msg_t *msgs, int n)
{
    for (int i = 0; i < n; i++)
        zmq_msg_close(&msgs[i]);
}

void bench_lat_add(struct bench_lat *l, uint64_t ns)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 1024;
        uint64_t *v = realloc(l->v, cap * sizeof(*v));
        if (!v) {
            perror("bench: latency samples");
            exit(1);
        }
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = ns;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

double bench_lat_us(struct bench_lat *l, double q)
{
    if (!l->n)
        return 0;
    qsort(l->v, l->n, sizeof(*l->v), cmp_u64);
    size_t i = (size_t)(q * (double)(l->n - 1) + 0.5);
    return (double)l->v[i] / 1e3;
}

void bench_lat_free(struct bench_lat *l)
{
    free(l->v);
    memset(l, 0, sizeof(*l));
}

bool bench_quick(void)
{
    const char *q = getenv("LMCD_BENCH_QUICK");
    return q && *q && strcmp(q, "0") != 0;
}

void bench_report(const char *figure, const char *unit, double lmcd, const char *base_name, double baseline,
                  bool higher_is_better)
{
    const char *dir = getenv("LMCD_BENCH_OUT");
    char path[512];
    snprintf(path, sizeof(path), "%s/results.jsonl", dir && *dir ? dir : "bench/out");
    FILE *f = fopen(path, "a");
    if (!f) {
        fprintf(stderr, "bench: %s: %s\n", path, strerror(errno));
        exit(1);
    }
    /* Figures and units are literals of the benches: no JSON escaping needed
     * beyond refusing a quote. NaN/inf become null, which the checker flags. */
    if (strchr(figure, '"') || strchr(unit, '"') || (base_name && strchr(base_name, '"'))) {
        fprintf(stderr, "bench: figure name with a quote: %s\n", figure);
        exit(1);
    }
    double ratio = baseline > 0 ? lmcd / baseline : NAN;
    fprintf(f, "{\"figure\": \"%s\", \"unit\": \"%s\", \"higher_is_better\": %s, \"lmcd\": ", figure, unit,
            higher_is_better ? "true" : "false");
    if (isfinite(lmcd))
        fprintf(f, "%.6g", lmcd);
    else
        fputs("null", f);
    fprintf(f, ", \"baseline_name\": \"%s\", \"baseline\": ", base_name ? base_name : "");
    if (base_name && isfinite(baseline))
        fprintf(f, "%.6g", baseline);
    else
        fputs("null", f);
    fputs(", \"ratio\": ", f);
    if (base_name && isfinite(ratio))
        fprintf(f, "%.6g", ratio);
    else
        fputs("null", f);
    fputs("}\n", f);
    if (fclose(f)) {
        fprintf(stderr, "bench: %s: %s\n", path, strerror(errno));
        exit(1);
    }
}
