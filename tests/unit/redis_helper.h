/*
 * Test helper: real redis-server processes on free 127.0.0.1 ports, a
 * standalone one or a cluster of masters formed by hand (ADDSLOTSRANGE +
 * MEET), killed with the test. Each port the helper picks stays reserved
 * by a bound, non-listening SO_REUSEADDR socket of the test's own until
 * rh_stop: redis-server (which sets SO_REUSEADDR too) can bind beside it,
 * but nobody else can take the port -- not while the server starts, and not
 * while a test has killed it to restart it on the same port (tests run
 * concurrently with other suites on one host). Each server is started with
 * PR_SET_PDEATHSIG so a crashed test leaves none behind; its files live in
 * a mkdtemp directory removed at stop.
 *
 * Include from one Criterion test file; every helper is static.
 */
#ifndef TEST_REDIS_HELPER_H
#define TEST_REDIS_HELPER_H

#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#define RH_MAX 6

struct rh_server {
    pid_t pid;
    int port;
    int bus_port;
    int hold, bus_hold; /* the reservations of port and bus_port (0: none) */
    char id[48];        /* cluster node id */
};

struct rh {
    char dir[64];
    int n;
    bool cluster;
    struct rh_server s[RH_MAX];
    const char *extra[8]; /* extra redis-server arguments, NULL-terminated */
};

static inline bool rh_available(void)
{
    return access("/usr/bin/redis-server", X_OK) == 0;
}

/* Picks a free loopback port and keeps it bound (see the top); *hold
 * receives the reserving socket, closed by rh_stop. */
static inline int rh_reserve_port(int *hold)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t l = sizeof(a);
    cr_assert_geq(fd, 0);
    cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)), 0);
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &l), 0);
    *hold = fd + 1; /* 0 stays "none" in a zeroed struct */
    return ntohs(a.sin_port);
}

static inline void rh_sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

static inline redisContext *rh_connect(int port)
{
    struct timeval tv = { 2, 0 };
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (c && c->err) {
        redisFree(c);
        return NULL;
    }
    if (c)
        redisSetTimeout(c, tv);
    return c;
}

/* Runs a command on a server and returns its reply (caller frees). */
static inline redisReply *rh_cmd(int port, const char *fmt, ...)
{
    redisContext *c = rh_connect(port);
    if (!c)
        return NULL;
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    redisFree(c);
    return r;
}

static inline void rh_spawn(struct rh *h, int i)
{
    struct rh_server *sv = &h->s[i];
    char port[16], bus[16], conf[128];
    snprintf(port, sizeof(port), "%d", sv->port);
    snprintf(bus, sizeof(bus), "%d", sv->bus_port);
    snprintf(conf, sizeof(conf), "nodes-%d.conf", sv->port);
    const char *argv[40] = { "/usr/bin/redis-server", "--port", port, "--bind", "127.0.0.1",
                             "--dir", h->dir, "--save", "", "--appendonly", "no",
                             "--logfile", "", "--loglevel", "warning" };
    int a = 15;
    /* A generous node timeout: on a loaded 2-core CI box a 2 s one lets a
     * master think it lost the majority and answer CLUSTERDOWN. */
    if (h->cluster) {
        const char *more[] = { "--cluster-enabled", "yes", "--cluster-port", bus, "--cluster-config-file",
                               conf, "--cluster-require-full-coverage", "no", "--cluster-node-timeout",
                               "10000" };
        for (size_t k = 0; k < sizeof(more) / sizeof(more[0]); k++)
            argv[a++] = more[k];
    }
    for (int k = 0; h->extra[k] && a < 38; k++)
        argv[a++] = h->extra[k];
    argv[a] = NULL;
    pid_t parent = getpid();
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(1);
        int devnull = open("/dev/null", 1);
        if (devnull >= 0) {
            dup2(devnull, 1);
            dup2(devnull, 2);
        }
        execv(argv[0], (char **)argv);
        _exit(127);
    }
    sv->pid = pid;
    /* Bounded wait for an answer (any: a password-protected server says
     * NOAUTH); the port is reserved, so it can only be this server. */
    for (int t = 0; t < 1000; t++) {
        redisReply *r = rh_cmd(sv->port, "PING");
        if (r) {
            freeReplyObject(r);
            return;
        }
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            sv->pid = 0;
            cr_assert_fail("redis-server on port %d exited (status %#x)", sv->port, st);
        }
        rh_sleep_ms(10);
    }
    cr_assert_fail("redis-server on port %d did not start", sv->port);
}

static inline void rh_kill(struct rh *h, int i)
{
    if (h->s[i].pid > 0) {
        kill(h->s[i].pid, SIGKILL);
        waitpid(h->s[i].pid, NULL, 0);
        h->s[i].pid = 0;
    }
}

static inline void rh_stop(struct rh *h)
{
    for (int i = 0; i < h->n; i++) {
        rh_kill(h, i);
        if (h->s[i].hold)
            close(h->s[i].hold - 1);
        if (h->s[i].bus_hold)
            close(h->s[i].bus_hold - 1);
        h->s[i].hold = h->s[i].bus_hold = 0;
    }
    if (!h->dir[0])
        return;
    DIR *d = opendir(h->dir);
    if (d) {
        struct dirent *e;
        char p[512];
        while ((e = readdir(d)))
            if (e->d_name[0] != '.') {
                snprintf(p, sizeof(p), "%s/%s", h->dir, e->d_name);
                unlink(p);
            }
        closedir(d);
    }
    rmdir(h->dir);
    h->dir[0] = '\0';
}

static inline bool rh_cluster_ok(int port)
{
    redisReply *r = rh_cmd(port, "CLUSTER INFO");
    /* with require-full-coverage off, state ok does not mean every slot is
     * known yet: wait for all 16384 */
    bool ok = r && r->type == REDIS_REPLY_STRING && strstr(r->str, "cluster_state:ok") &&
              strstr(r->str, "cluster_slots_ok:16384");
    if (r)
        freeReplyObject(r);
    return ok;
}

/* Every node knows every other (CLUSTER NODES has n lines, all connected). */
static inline bool rh_cluster_converged(struct rh *h)
{
    for (int i = 0; i < h->n; i++) {
        if (!rh_cluster_ok(h->s[i].port))
            return false;
        redisReply *r = rh_cmd(h->s[i].port, "CLUSTER NODES");
        int lines = 0;
        for (const char *p = r && r->type == REDIS_REPLY_STRING ? r->str : ""; *p; p++)
            lines += *p == '\n';
        bool ok = r && lines == h->n && !strstr(r->str, "handshake") && !strstr(r->str, "fail");
        if (r)
            freeReplyObject(r);
        if (!ok)
            return false;
    }
    return true;
}

/* Starts n servers; for a cluster, splits the 16384 slots evenly over them
 * as masters and waits (bounded) until every node reports state ok. */
static inline void rh_start(struct rh *h, int n, bool cluster)
{
    h->n = n;
    h->cluster = cluster;
    snprintf(h->dir, sizeof(h->dir), "/tmp/lmcd_test_redis_XXXXXX");
    cr_assert_not_null(mkdtemp(h->dir));
    for (int i = 0; i < n; i++) {
        /* Both stay reserved, so the two always differ. */
        h->s[i].port = rh_reserve_port(&h->s[i].hold);
        if (cluster)
            h->s[i].bus_port = rh_reserve_port(&h->s[i].bus_hold);
        rh_spawn(h, i);
    }
    if (!cluster)
        return;
    for (int i = 0; i < n; i++) {
        redisReply *r = rh_cmd(h->s[i].port, "CLUSTER MYID");
        cr_assert(r && r->type == REDIS_REPLY_STRING);
        snprintf(h->s[i].id, sizeof(h->s[i].id), "%s", r->str);
        freeReplyObject(r);
        int lo = 16384 * i / n, hi = 16384 * (i + 1) / n - 1;
        r = rh_cmd(h->s[i].port, "CLUSTER ADDSLOTSRANGE %d %d", lo, hi);
        cr_assert(r && r->type == REDIS_REPLY_STATUS, "ADDSLOTSRANGE");
        freeReplyObject(r);
    }
    for (int i = 1; i < n; i++) {
        redisReply *r = rh_cmd(h->s[0].port, "CLUSTER MEET 127.0.0.1 %d %d", h->s[i].port, h->s[i].bus_port);
        cr_assert(r && r->type == REDIS_REPLY_STATUS, "MEET");
        freeReplyObject(r);
    }
    for (int t = 0; t < 1500 && !rh_cluster_converged(h); t++)
        rh_sleep_ms(20);
    cr_assert(rh_cluster_converged(h), "cluster did not converge");
}

/* Index of the server owning slot (by the even split above). */
static inline int rh_slot_server(const struct rh *h, unsigned slot)
{
    for (int i = 0; i < h->n; i++)
        if (slot <= (unsigned)(16384 * (i + 1) / h->n - 1))
            return i;
    return h->n - 1;
}

#endif
