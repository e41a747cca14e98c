/*
 * cli_top.c: see cli_top.h. Windowed numbers (rates, hit rate, p50/p99)
 * are differences between this screen's /status and the previous one's.
 */
#include "client/cli_top.h"

#include <errno.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "client/client_http.h"

#define MAX_OPS 64
#define MAX_BUCKETS 32

struct op_snap {
    char name[64];
    double count;
    double b[MAX_BUCKETS];
    size_t nb;
};

struct snap {
    double t;
    double requests, hit, look;
    struct op_snap ops[MAX_OPS];
    size_t n_ops;
};

static volatile sig_atomic_t stop_sig;
static void on_signal(int sig) { stop_sig = sig; }

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static json_t *get_json(const char *host, const char *port, const char *path, char *err, size_t errlen)
{
    struct client_http_reply r;
    if (client_http_request(host, port, "GET", path, 3000, &r, err, errlen))
        return NULL;
    json_t *j = NULL;
    if (r.status == 200)
        j = json_loadb(r.body, r.body_len, 0, NULL);
    if (!j)
        snprintf(err, errlen, "GET %s: HTTP %d%s", path, r.status, r.status == 200 ? " (not JSON)" : "");
    client_http_reply_free(&r);
    return j;
}

static double num(json_t *o, const char *key) { return json_number_value(json_object_get(o, key)); }

static const char *human(double n, char *buf, size_t cap)
{
    static const char *u[] = { "B", "KiB", "MiB", "GiB", "TiB" };
    int i = 0;
    while (n >= 1024 && i < 4)
        n /= 1024, i++;
    snprintf(buf, cap, i ? "%.1f %s" : "%.0f %s", n, u[i]);
    return buf;
}

static const char *dur(double s, char *buf, size_t cap)
{
    if (s <= 0)
        snprintf(buf, cap, "-");
    else if (s < 1e-3)
        snprintf(buf, cap, "%.0f us", s * 1e6);
    else if (s < 1)
        snprintf(buf, cap, "%.2f ms", s * 1e3);
    else
        snprintf(buf, cap, "%.2f s", s);
    return buf;
}

/* histogram_quantile over per-bucket counts; le has nb - 1 bounds. */
static double quantile(const double *b, size_t nb, json_t *le, double q)
{
    double n = 0, seen = 0;
    for (size_t i = 0; i < nb; i++)
        n += b[i];
    size_t nle = json_array_size(le);
    if (n <= 0 || !nle)
        return 0;
    double rank = q * n;
    for (size_t i = 0; i < nb; i++) {
        if (b[i] > 0 && seen + b[i] >= rank) {
            if (i >= nle)
                return json_number_value(json_array_get(le, nle - 1));
            double lo = i ? json_number_value(json_array_get(le, i - 1)) : 0;
            double hi = json_number_value(json_array_get(le, i));
            return lo + (hi - lo) * ((rank - seen) / b[i]);
        }
        seen += b[i];
    }
    return json_number_value(json_array_get(le, nle - 1));
}

static const struct op_snap *find_op(const struct snap *s, const char *name)
{
    for (size_t i = 0; s && i < s->n_ops; i++)
        if (!strcmp(s->ops[i].name, name))
            return &s->ops[i];
    return NULL;
}

static void take(json_t *st, struct snap *s)
{
    memset(s, 0, sizeof(*s));
    s->t = now_s();
    json_t *sv = json_object_get(st, "server"), *ct = json_object_get(st, "counters");
    const char *k;
    json_t *v;
    json_object_foreach(json_object_get(sv, "requests"), k, v) s->requests += json_number_value(v);
    s->hit = num(ct, "lookup_hit_chunks");
    s->look = num(ct, "lookup_chunks");
    json_object_foreach(json_object_get(json_object_get(sv, "latency"), "ops"), k, v)
    {
        if (s->n_ops == MAX_OPS)
            break;
        struct op_snap *o = &s->ops[s->n_ops++];
        snprintf(o->name, sizeof(o->name), "%s", k);
        o->count = num(v, "count");
        json_t *b = json_object_get(v, "buckets");
        o->nb = json_array_size(b) < MAX_BUCKETS ? json_array_size(b) : MAX_BUCKETS;
        for (size_t i = 0; i < o->nb; i++)
            o->b[i] = json_number_value(json_array_get(b, i));
    }
}

static void draw(json_t *st, json_t *plugins, const struct snap *cur, const struct snap *prev, const char *err)
{
    char a[32], b[32], c[32];
    fputs("\033[H\033[2J", stdout); /* home, clear */
    if (!st) {
        printf("lmcd-cli top: server unreachable: %s (retrying; q quits)\n", err);
        fflush(stdout);
        return;
    }
    json_t *sv = json_object_get(st, "server"), *sm = json_object_get(st, "storage_manager");
    json_t *l1 = json_object_get(sm, "l1_manager"), *ct = json_object_get(st, "counters");
    double dt = prev ? cur->t - prev->t : 0;
    printf("lmcd %s  protocol %s  uptime %.0f s  %s  (q quits)\n",
           json_string_value(json_object_get(sv, "version")) ?: "?",
           json_string_value(json_object_get(sv, "protocol")) ?: "?", num(sv, "uptime_seconds"),
           json_is_true(json_object_get(st, "is_healthy")) ? "healthy" : "UNHEALTHY");
    printf("L1        %s of %s (%.2f %%)  objects %.0f  read-locked %.0f  write-locked %.0f  evicted %.0f\n",
           human(num(l1, "memory_used_bytes"), a, sizeof(a)), human(num(l1, "memory_total_bytes"), b, sizeof(b)),
           100 * num(l1, "memory_usage_ratio"), num(l1, "total_object_count"), num(l1, "read_locked_count"),
           num(l1, "write_locked_count"), num(l1, "evicted_count"));
    double dl = prev ? cur->look - prev->look : 0;
    if (dl > 0)
        snprintf(c, sizeof(c), "%.1f %%", 100 * (cur->hit - prev->hit) / dl);
    else if (cur->look > 0)
        snprintf(c, sizeof(c), "%.1f %% (all time)", 100 * cur->hit / cur->look);
    else
        snprintf(c, sizeof(c), "-");
    printf("hit rate  %s  (hit %.0f of %.0f chunks looked up)\n", c, cur->hit, cur->look);
    printf("requests  %.1f/s  total %.0f  sessions %.0f  prefetch jobs %.0f  workers %zu  reaped %.0f  in flight %.0f\n",
           dt > 0 ? (cur->requests - prev->requests) / dt : 0.0, cur->requests, num(st, "active_sessions"),
           num(st, "active_prefetch_jobs"), json_array_size(json_object_get(st, "engine_driven_instances")),
           num(ct, "reaped_workers"), num(json_object_get(sv, "pools"), "in_flight"));
    json_t *l2 = json_object_get(sm, "l2_adapters");
    if (json_array_size(l2)) {
        size_t i;
        json_t *ad;
        json_array_foreach(l2, i, ad) {
            const char *t = json_string_value(json_object_get(ad, "type"));
            printf("L2 #%zu    %s  %s\n", i, t ? t : "?",
                   json_is_false(json_object_get(ad, "is_healthy")) ? "UNHEALTHY" : "healthy");
        }
    } else {
        printf("L2        no tier configured\n");
    }
    json_t *le = json_object_get(json_object_get(sv, "latency"), "buckets_le");
    printf("\n%-42s %12s %10s %10s %10s\n", "OPERATION", "TOTAL", "PER SEC", "P50", "P99");
    const char *k;
    json_t *v;
    json_object_foreach(json_object_get(sv, "requests"), k, v)
    {
        const struct op_snap *o = find_op(cur, k), *p = find_op(prev, k);
        double d[MAX_BUCKETS] = { 0 };
        size_t nb = o ? o->nb : 0;
        bool windowed = o && p && p->nb == o->nb && o->count > p->count;
        for (size_t i = 0; i < nb; i++)
            d[i] = windowed ? o->b[i] - p->b[i] : o->b[i];
        double rate = o && dt > 0 ? (o->count - (p ? p->count : 0)) / dt : 0;
        printf("%-42s %12.0f %10.1f %10s %10s\n", k, json_number_value(v), rate,
               dur(quantile(d, nb, le, 0.5), a, sizeof(a)), dur(quantile(d, nb, le, 0.99), b, sizeof(b)));
    }
    size_t i;
    json_t *pl;
    if (json_array_size(plugins))
        printf("\n%-40s %-9s %8s  %s\n", "PLUGIN", "STATE", "RESTARTS", "LAST OUTPUT");
    json_array_foreach(plugins, i, pl) {
        json_t *tail = json_object_get(pl, "output_tail");
        const char *last = json_string_value(json_array_get(tail, json_array_size(tail) - 1));
        const char *path = json_string_value(json_object_get(pl, "path")) ?: "?";
        const char *base = strrchr(path, '/');
        printf("%-40.40s %-9s %8lld  %.60s\n", base ? base + 1 : path,
               json_string_value(json_object_get(pl, "state")) ?: "?",
               (long long)json_integer_value(json_object_get(pl, "restarts")), last ? last : "");
    }
    fflush(stdout);
}

static int usage(const char *msg)
{
    fprintf(stderr, "lmcd-cli top: %s\nusage: lmcd-cli top [--http-host H] [--http-port P] [--interval S] "
                    "[--iterations N]\n", msg);
    return 2;
}

int cli_top_main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *port = "8080";
    double interval = 1.0;
    long iterations = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            printf("usage: lmcd-cli top [--http-host H] [--http-port P] [--interval S] [--iterations N]\n"
                   "  the dashboard in a terminal, refreshed every S seconds (1); q quits\n");
            return 0;
        }
        if (i + 1 >= argc)
            return usage("an option is missing its value");
        char *end = NULL;
        if (!strcmp(a, "--http-host")) {
            host = argv[++i];
        } else if (!strcmp(a, "--http-port")) {
            port = argv[++i];
        } else if (!strcmp(a, "--interval")) {
            interval = strtod(argv[++i], &end);
            if (!end || *end || !(interval >= 0.1 && interval <= 3600))
                return usage("--interval takes seconds from 0.1 to 3600");
        } else if (!strcmp(a, "--iterations")) {
            iterations = strtol(argv[++i], &end, 10);
            if (!end || *end || iterations < 0)
                return usage("--iterations takes a count (0 = until q)");
        } else {
            return usage("unknown option");
        }
    }
    struct termios saved;
    bool tty = isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &saved) == 0;
    if (tty) {
        struct termios raw = saved;
        raw.c_lflag &= (tcflag_t) ~(ICANON | ECHO);
        raw.c_cc[VMIN] = 0;
        raw.c_cc[VTIME] = 0;
        tcsetattr(STDIN_FILENO, TCSANOW, &raw);
    }
    struct sigaction sa = { 0 };
    sa.sa_handler = on_signal; /* no SA_RESTART: poll() returns EINTR */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    static struct snap snaps[2]; /* big: not on the stack */
    struct snap *cur = &snaps[0], *prev = NULL;
    bool read_stdin = true;
    for (long n = 0; !stop_sig && (!iterations || n < iterations); n++) {
        char err[256] = "";
        json_t *st = get_json(host, port, "/status", err, sizeof(err));
        json_t *plugins = st ? get_json(host, port, "/plugins", err, sizeof(err)) : NULL;
        if (st)
            take(st, cur);
        draw(st, plugins, cur, st ? prev : NULL, err);
        json_decref(st);
        json_decref(plugins);
        if (st) {
            prev = cur;
            cur = cur == &snaps[0] ? &snaps[1] : &snaps[0];
        }
        if (iterations && n + 1 >= iterations)
            break;
        /* wait for the next refresh, or q */
        double until = now_s() + interval;
        bool quit = false;
        while (!stop_sig && !quit) {
            double left = until - now_s();
            if (left <= 0)
                break;
            struct pollfd pfd = { STDIN_FILENO, POLLIN, 0 };
            int r = poll(&pfd, read_stdin ? 1 : 0, (int)(left * 1000) + 1);
            if (r > 0 && (pfd.revents & (POLLIN | POLLHUP))) {
                char ch[64];
                ssize_t got = read(STDIN_FILENO, ch, sizeof(ch));
                if (got <= 0)
                    read_stdin = false; /* EOF (stdin not a terminal): refresh until a signal */
                for (ssize_t k = 0; k < got; k++)
                    quit |= ch[k] == 'q' || ch[k] == 'Q';
            }
        }
        if (quit)
            break;
    }
    if (tty)
        tcsetattr(STDIN_FILENO, TCSANOW, &saved);
    fputs("\n", stdout);
    return 0;
}
