/*
 * l2_cluster: slot routing, redirects and per-node connections over hiredis
 * 0.14 blocking contexts. See l2_cluster.h for the contract.
 */
#define LOG_MODULE "lmcd.l2"
#include "l2/l2_cluster.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>

#include "util/clock.h"
#include "util/log.h"

#define NODE_NONE 0xffff
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define REFRESH_MIN_MS 200
/* A pipeline window per node: enough to hide the round trip, small enough
 * that hiredis's output buffer stays bounded for multi-MiB values. */
#define WINDOW_BYTES (16u << 20)
#define WINDOW_CMDS 64

/* ---- CRC16 / slots ---------------------------------------------------- */

static uint16_t crc16_table[256];
static pthread_once_t crc16_once = PTHREAD_ONCE_INIT;

static void crc16_init(void)
{
    for (unsigned i = 0; i < 256; i++) {
        uint16_t c = (uint16_t)(i << 8);
        for (int b = 0; b < 8; b++)
            c = (c & 0x8000) ? (uint16_t)((c << 1) ^ 0x1021) : (uint16_t)(c << 1);
        crc16_table[i] = c;
    }
}

uint16_t l2_cluster_crc16(const void *buf, size_t len)
{
    pthread_once(&crc16_once, crc16_init);
    const unsigned char *p = buf;
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++)
        crc = (uint16_t)((crc << 8) ^ crc16_table[((crc >> 8) ^ p[i]) & 0xff]);
    return crc;
}

unsigned l2_cluster_key_slot(const void *key, size_t len)
{
    const char *k = key;
    const char *open = memchr(k, '{', len);
    if (open) {
        size_t s = (size_t)(open - k);
        const char *close = memchr(open + 1, '}', len - s - 1);
        /* "{}" (empty tag) hashes the whole key, as Redis does. */
        if (close && close > open + 1)
            return l2_cluster_crc16(open + 1, (size_t)(close - open - 1)) & (L2_CLUSTER_SLOTS - 1);
    }
    return l2_cluster_crc16(k, len) & (L2_CLUSTER_SLOTS - 1);
}

/* ---- node lists ------------------------------------------------------- */

static int parse_one(const char *s, size_t len, char *host, int *port)
{
    while (len && (*s == ' ' || *s == '\t')) s++, len--;
    while (len && (s[len - 1] == ' ' || s[len - 1] == '\t')) len--;
    if (!len)
        return -EINVAL;
    const char *colon;
    size_t hlen;
    const char *h = s;
    if (s[0] == '[') {
        const char *rb = memchr(s, ']', len);
        if (!rb || (size_t)(rb - s) + 1 >= len || rb[1] != ':')
            return -EINVAL;
        h = s + 1;
        hlen = (size_t)(rb - s - 1);
        colon = rb + 1;
    } else {
        colon = memrchr(s, ':', len);
        if (!colon)
            return -EINVAL;
        hlen = (size_t)(colon - s);
    }
    if (!hlen || hlen >= 256)
        return -EINVAL;
    size_t plen = len - (size_t)(colon + 1 - s);
    if (!plen || plen > 5)
        return -EINVAL;
    int p = 0;
    for (size_t i = 0; i < plen; i++) {
        char ch = colon[1 + i];
        if (ch < '0' || ch > '9')
            return -EINVAL;
        p = p * 10 + (ch - '0');
    }
    if (p <= 0 || p > 65535)
        return -EINVAL;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    *port = p;
    return 0;
}

int l2_cluster_parse_nodes(const char *list, char (*hosts)[256], int *ports, int max)
{
    if (!list)
        return -EINVAL;
    int n = 0;
    const char *p = list;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (n >= max)
            return -EINVAL;
        if (parse_one(p, len, hosts[n], &ports[n]) < 0)
            return -EINVAL;
        n++;
        if (!comma)
            break;
        p = comma + 1;
    }
    return n ? n : -EINVAL;
}

/* ---- shared health ---------------------------------------------------- */

void l2_cluster_health_init(struct l2_cluster_health *h, const char *name)
{
    memset(h, 0, sizeof(*h));
    pthread_mutex_init(&h->lock, NULL);
    h->name = name;
}

void l2_cluster_health_destroy(struct l2_cluster_health *h)
{
    pthread_mutex_destroy(&h->lock);
}

int l2_cluster_health_down(struct l2_cluster_health *h)
{
    pthread_mutex_lock(&h->lock);
    int n = h->n_down;
    pthread_mutex_unlock(&h->lock);
    return n;
}

/* Records a node's state; logs only when it differs from what the adapter
 * last knew, so eight workers seeing the same dead server log one line. */
static void health_mark(struct l2_cluster_health *h, const char *addr, bool down, const char *why)
{
    if (!h)
        return;
    pthread_mutex_lock(&h->lock);
    int i;
    for (i = 0; i < h->n; i++)
        if (!strcmp(h->nodes[i].addr, addr))
            break;
    if (i == h->n) {
        if (h->n == L2_CLUSTER_MAX_NODES || !down) {
            pthread_mutex_unlock(&h->lock);
            return; /* unknown and up: nothing to report */
        }
        snprintf(h->nodes[i].addr, sizeof(h->nodes[i].addr), "%s", addr);
        h->nodes[i].down = false;
        h->n++;
    }
    bool changed = h->nodes[i].down != down;
    h->nodes[i].down = down;
    if (changed)
        h->n_down += down ? 1 : -1;
    pthread_mutex_unlock(&h->lock);
    if (!changed)
        return;
    if (down)
        log_warn("L2 %s: %s unreachable (%s); its operations fail fast, retrying with backoff",
                 h->name ? h->name : "redis", addr, why ? why : "error");
    else
        log_info("L2 %s: %s reachable again", h->name ? h->name : "redis", addr);
}

/* ---- client ----------------------------------------------------------- */

struct node {
    char host[256];
    int port;
    char addr[272]; /* "host:port" for logs */
    redisContext *ctx;
    bool answered;        /* ctx has delivered a reply since it connected */
    uint64_t retry_at_ms; /* while ctx == NULL after a failure */
    uint32_t backoff_ms;
};

/* nd->addr from nd->host and nd->port (through a local buffer: the compiler
 * cannot tell the two fields apart as snprintf arguments). */
static void node_set_addr(struct node *nd)
{
    char a[sizeof(nd->addr)];
    snprintf(a, sizeof(a), "%s:%d", nd->host, nd->port);
    memcpy(nd->addr, a, sizeof(a));
}

struct l2_cluster {
    struct l2_cluster_config cfg;
    char *username, *password; /* copies */
    int n_seeds;                /* nodes[0..n_seeds) are the configured ones */
    int n_nodes;
    struct node nodes[L2_CLUSTER_MAX_NODES];
    uint16_t slots[L2_CLUSTER_SLOTS]; /* node index or NODE_NONE */
    bool map_stale;
    uint64_t last_refresh_ms;
    uint64_t moved, ask;
};

int l2_cluster_new(const struct l2_cluster_config *cfg, struct l2_cluster **out)
{
    int rc = -EINVAL;
    struct l2_cluster *c = NULL;
    int ports[L2_CLUSTER_MAX_NODES];
    if (cfg->cluster && cfg->database_id > 0)
        return -EINVAL; /* Redis Cluster serves database 0 only */
    if (!(c = calloc(1, sizeof(*c)))) {
        rc = -ENOMEM;
        goto fail;
    }
    char (*h)[256] = calloc(L2_CLUSTER_MAX_NODES, 256);
    if (!h) {
        rc = -ENOMEM;
        goto fail;
    }
    int n = l2_cluster_parse_nodes(cfg->nodes, h, ports, L2_CLUSTER_MAX_NODES);
    if (n < 0 || (!cfg->cluster && n != 1)) {
        free(h);
        rc = -EINVAL;
        goto fail;
    }
    for (int i = 0; i < n; i++) {
        struct node *nd = &c->nodes[i];
        memcpy(nd->host, h[i], sizeof(nd->host));
        nd->port = ports[i];
        node_set_addr(nd);
    }
    free(h);
    c->n_seeds = c->n_nodes = n;
    c->cfg = *cfg;
    c->cfg.nodes = NULL;
    if (cfg->username && *cfg->username && !(c->username = strdup(cfg->username)))
        goto nomem;
    if (cfg->password && *cfg->password && !(c->password = strdup(cfg->password)))
        goto nomem;
    for (int i = 0; i < L2_CLUSTER_SLOTS; i++)
        c->slots[i] = NODE_NONE;
    c->map_stale = cfg->cluster;
    *out = c;
    return 0;
nomem:
    rc = -ENOMEM;
fail:
    l2_cluster_free(c);
    return rc;
}

void l2_cluster_free(struct l2_cluster *c)
{
    if (!c)
        return;
    for (int i = 0; i < c->n_nodes; i++)
        if (c->nodes[i].ctx)
            redisFree(c->nodes[i].ctx);
    free(c->username);
    free(c->password);
    free(c);
}

void l2_cluster_redirects(const struct l2_cluster *c, uint64_t *moved, uint64_t *ask)
{
    *moved = c->moved;
    *ask = c->ask;
}

static int node_find_or_add(struct l2_cluster *c, const char *host, size_t hlen, int port)
{
    if (!hlen || hlen >= 256 || port <= 0 || port > 65535)
        return -EINVAL;
    for (int i = 0; i < c->n_nodes; i++)
        if (c->nodes[i].port == port && strlen(c->nodes[i].host) == hlen &&
            !memcmp(c->nodes[i].host, host, hlen))
            return i;
    if (c->n_nodes == L2_CLUSTER_MAX_NODES)
        return -ENOSPC;
    struct node *nd = &c->nodes[c->n_nodes];
    memset(nd, 0, sizeof(*nd));
    memcpy(nd->host, host, hlen);
    nd->host[hlen] = '\0';
    nd->port = port;
    node_set_addr(nd);
    return c->n_nodes++;
}

static struct timeval ms_tv(uint32_t ms)
{
    struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };
    return tv;
}

static void node_fail(struct l2_cluster *c, struct node *nd, const char *why)
{
    /* The first break of a connection that worked (a server restart leaves
     * every idle connection dead) may reconnect at once and is not news;
     * a failed connect, or a second failure in a row, backs off and is. */
    bool was_healthy = nd->ctx && nd->answered;
    if (nd->ctx) {
        redisFree(nd->ctx);
        nd->ctx = NULL;
    }
    nd->backoff_ms = nd->backoff_ms ? nd->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (nd->backoff_ms > BACKOFF_MAX_MS)
        nd->backoff_ms = BACKOFF_MAX_MS;
    nd->retry_at_ms = was_healthy ? 0 : clock_mono_ms() + nd->backoff_ms;
    if (c->cfg.cluster)
        c->map_stale = true;
    if (!was_healthy)
        health_mark(c->cfg.health, nd->addr, true, why);
}

/* A status or error reply that should read "OK". */
static bool reply_ok(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_STATUS && !strcasecmp(r->str, "OK");
}

/* Connects nd if needed. 0, -ECONNREFUSED when this attempt failed, or
 * -EAGAIN when an earlier failure's backoff has not run out (nothing was
 * tried: callers must not read it as fresh news that the node is down). */
static int node_connect(struct l2_cluster *c, struct node *nd)
{
    if (nd->ctx)
        return 0;
    if (nd->retry_at_ms && clock_mono_ms() < nd->retry_at_ms)
        return -EAGAIN;
    char why[160];
    redisReply *r = NULL;
    struct timeval ct = ms_tv(c->cfg.connect_timeout_ms ? c->cfg.connect_timeout_ms : 10000);
    redisContext *ctx = redisConnectWithTimeout(nd->host, nd->port, ct);
    if (!ctx || ctx->err) {
        snprintf(why, sizeof(why), "connect: %s", ctx ? ctx->errstr : "out of memory");
        goto fail;
    }
    struct timeval rt = ms_tv(c->cfg.request_timeout_ms ? c->cfg.request_timeout_ms : 5000);
    if (redisSetTimeout(ctx, rt) != REDIS_OK) {
        snprintf(why, sizeof(why), "timeout: %s", ctx->errstr);
        goto fail;
    }
    /* Keep the reader's buffer between replies: chunk values are MiBs and
     * re-growing it for every GET costs more than the memory it holds. */
    ctx->reader->maxbuf = 0;
    if (c->password) {
        if (c->username)
            r = redisCommand(ctx, "AUTH %s %s", c->username, c->password);
        else
            r = redisCommand(ctx, "AUTH %s", c->password);
        if (!reply_ok(r)) {
            snprintf(why, sizeof(why), "AUTH refused: %s",
                     r && r->type == REDIS_REPLY_ERROR ? r->str : ctx->errstr);
            goto fail;
        }
        freeReplyObject(r);
        r = NULL;
    }
    if (!c->cfg.cluster && c->cfg.database_id > 0) {
        r = redisCommand(ctx, "SELECT %d", c->cfg.database_id);
        if (!reply_ok(r)) {
            snprintf(why, sizeof(why), "SELECT %d refused: %s", c->cfg.database_id,
                     r && r->type == REDIS_REPLY_ERROR ? r->str : ctx->errstr);
            goto fail;
        }
        freeReplyObject(r);
        r = NULL;
    }
    nd->ctx = ctx;
    nd->answered = false;
    nd->backoff_ms = 0;
    nd->retry_at_ms = 0;
    health_mark(c->cfg.health, nd->addr, false, NULL);
    return 0;
fail:
    if (r)
        freeReplyObject(r);
    if (ctx)
        redisFree(ctx);
    node_fail(c, nd, why);
    return -ECONNREFUSED;
}

/* Parses one CLUSTER SLOTS reply into a fresh table. 0 or -EPROTO. */
static int parse_slots(struct l2_cluster *c, const struct node *asked, const redisReply *r,
                       uint16_t *slots)
{
    if (!r || r->type != REDIS_REPLY_ARRAY)
        return -EPROTO;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 3)
            return -EPROTO;
        const redisReply *lo = e->element[0], *hi = e->element[1], *m = e->element[2];
        if (lo->type != REDIS_REPLY_INTEGER || hi->type != REDIS_REPLY_INTEGER ||
            m->type != REDIS_REPLY_ARRAY || m->elements < 2 ||
            m->element[0]->type != REDIS_REPLY_STRING || m->element[1]->type != REDIS_REPLY_INTEGER)
            return -EPROTO;
        if (lo->integer < 0 || hi->integer >= L2_CLUSTER_SLOTS || lo->integer > hi->integer)
            return -EPROTO;
        /* An empty or "?" endpoint means "the node you asked" (Redis 7). */
        const char *host = m->element[0]->str;
        size_t hlen = m->element[0]->len;
        if (!hlen || (hlen == 1 && host[0] == '?')) {
            host = asked->host;
            hlen = strlen(asked->host);
        }
        int idx = node_find_or_add(c, host, hlen, (int)m->element[1]->integer);
        if (idx < 0)
            return idx == -ENOSPC ? -ENOSPC : -EPROTO;
        for (long long s = lo->integer; s <= hi->integer; s++)
            slots[s] = (uint16_t)idx;
    }
    return 0;
}

int l2_cluster_refresh(struct l2_cluster *c)
{
    if (!c->cfg.cluster)
        return 0;
    c->last_refresh_ms = clock_mono_ms();
    uint16_t *fresh = malloc(sizeof(c->slots));
    if (!fresh)
        return -ENOMEM;
    int rc = -ECONNREFUSED;
    /* Known nodes first (the map's masters), seeds among them. */
    for (int i = 0; i < c->n_nodes; i++) {
        struct node *nd = &c->nodes[i];
        if (node_connect(c, nd) < 0)
            continue;
        redisReply *r = redisCommand(nd->ctx, "CLUSTER SLOTS");
        if (!r) {
            node_fail(c, nd, nd->ctx->errstr);
            continue;
        }
        nd->answered = true;
        for (int s = 0; s < L2_CLUSTER_SLOTS; s++)
            fresh[s] = NODE_NONE;
        rc = parse_slots(c, nd, r, fresh);
        freeReplyObject(r);
        if (rc == 0) {
            memcpy(c->slots, fresh, sizeof(c->slots));
            c->map_stale = false;
            break;
        }
        if (rc == -EPROTO)
            log_debug("CLUSTER SLOTS from %s unreadable", nd->addr);
    }
    free(fresh);
    return rc;
}

const char *l2_cluster_slot_owner(struct l2_cluster *c, unsigned slot)
{
    if (slot >= L2_CLUSTER_SLOTS)
        return NULL;
    if (!c->cfg.cluster)
        return c->nodes[0].addr;
    return c->slots[slot] == NODE_NONE ? NULL : c->nodes[c->slots[slot]].addr;
}

/* "MOVED 3999 127.0.0.1:6381" / "ASK 3999 127.0.0.1:6381": the node index
 * (added when new) and the slot; -1 when it is neither. */
static int parse_redirect(struct l2_cluster *c, const redisReply *r, bool *ask, unsigned *slot)
{
    if (r->type != REDIS_REPLY_ERROR)
        return -1;
    const char *s = r->str;
    if (!strncmp(s, "MOVED ", 6)) {
        *ask = false;
        s += 6;
    } else if (!strncmp(s, "ASK ", 4)) {
        *ask = true;
        s += 4;
    } else {
        return -1;
    }
    char *end;
    unsigned long sl = strtoul(s, &end, 10);
    if (end == s || *end != ' ' || sl >= L2_CLUSTER_SLOTS)
        return -1;
    const char *addr = end + 1;
    char host[256];
    int port;
    if (parse_one(addr, strlen(addr), host, &port) < 0)
        return -1;
    *slot = (unsigned)sl;
    return node_find_or_add(c, host, strlen(host), port);
}

/* Per-command routing state while a batch runs. */
struct route {
    int node;   /* where it goes this round */
    bool asking;
    bool done;
};

/* A node to try when the slot map has no owner yet: a reachable seed, or
 * any known node. */
static int any_node(struct l2_cluster *c)
{
    uint64_t now = clock_mono_ms();
    for (int i = 0; i < c->n_nodes; i++)
        if (c->nodes[i].ctx || !c->nodes[i].retry_at_ms || now >= c->nodes[i].retry_at_ms)
            return i;
    return 0;
}

/* Sends the commands in idx[0..n) (all for node ni) pipelined, in windows,
 * and sorts each reply: final, or a redirect re-routed for the next round. */
static void run_node(struct l2_cluster *c, int ni, struct l2_cluster_cmd *cmds, struct route *rt,
                     const size_t *idx, size_t n, bool *again)
{
    struct node *nd = &c->nodes[ni];
    int crc = node_connect(c, nd);
    if (crc < 0) {
        for (size_t k = 0; k < n; k++) {
            cmds[idx[k]].err = crc;
            rt[idx[k]].done = true;
        }
        return;
    }
    size_t k = 0;
    while (k < n) {
        size_t start = k, bytes = 0;
        for (; k < n && k - start < WINDOW_CMDS && bytes < WINDOW_BYTES; k++) {
            struct l2_cluster_cmd *cmd = &cmds[idx[k]];
            if (rt[idx[k]].asking)
                redisAppendCommand(nd->ctx, "ASKING");
            if (redisAppendCommandArgv(nd->ctx, cmd->argc, cmd->argv, cmd->argvlen) != REDIS_OK) {
                /* Only out of memory fails here, and it leaves the
                 * context unusable: start over on a new connection. */
                node_fail(c, nd, "out of memory");
                for (size_t j = start; j < n; j++) {
                    cmds[idx[j]].err = -ENOMEM;
                    rt[idx[j]].done = true;
                }
                return;
            }
            for (int a = 0; a < cmd->argc; a++)
                bytes += cmd->argvlen[a];
        }
        for (size_t j = start; j < k; j++) {
            struct l2_cluster_cmd *cmd = &cmds[idx[j]];
            struct route *r = &rt[idx[j]];
            void *raw = NULL;
            if (r->asking) {
                if (redisGetReply(nd->ctx, &raw) != REDIS_OK)
                    goto io_fail;
                freeReplyObject(raw);
                raw = NULL;
            }
            if (redisGetReply(nd->ctx, &raw) != REDIS_OK)
                goto io_fail;
            redisReply *rep = raw;
            nd->answered = true;
            bool ask = false;
            unsigned slot = 0;
            int to = c->cfg.cluster ? parse_redirect(c, rep, &ask, &slot) : -1;
            if (to < 0 && c->cfg.cluster && rep->type == REDIS_REPLY_ERROR &&
                (!strncmp(rep->str, "MOVED ", 6) || !strncmp(rep->str, "ASK ", 4))) {
                /* A redirect we could not follow (node table full). */
                freeReplyObject(rep);
                cmd->err = -ENOSPC;
                r->done = true;
                continue;
            }
            if (to >= 0) {
                freeReplyObject(rep);
                if (ask) {
                    c->ask++;
                } else {
                    c->moved++;
                    c->slots[slot] = (uint16_t)to;
                    c->map_stale = true;
                }
                r->node = to;
                r->asking = ask;
                *again = true;
                continue;
            }
            cmd->reply = rep;
            r->done = true;
            continue;
        io_fail:;
            char why[160];
            snprintf(why, sizeof(why), "%s", nd->ctx->errstr[0] ? nd->ctx->errstr : "I/O error");
            node_fail(c, nd, why);
            for (size_t m = j; m < n; m++) {
                cmds[idx[m]].err = m < k ? -EIO : -ECONNREFUSED;
                rt[idx[m]].done = true;
            }
            return;
        }
    }
}

size_t l2_cluster_exec(struct l2_cluster *c, struct l2_cluster_cmd *cmds, size_t n)
{
    if (!n)
        return 0;
    struct route *rt = calloc(n, sizeof(*rt));
    size_t *idx = calloc(n, sizeof(*idx));
    if (!rt || !idx) {
        for (size_t i = 0; i < n; i++)
            cmds[i].err = -ENOMEM;
        free(rt);
        free(idx);
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        cmds[i].reply = NULL;
        cmds[i].err = 0;
    }
    if (c->cfg.cluster && c->map_stale && clock_mono_ms() - c->last_refresh_ms >= REFRESH_MIN_MS)
        l2_cluster_refresh(c);
    for (size_t i = 0; i < n; i++) {
        if (!c->cfg.cluster) {
            rt[i].node = 0;
        } else {
            uint16_t o = c->slots[l2_cluster_key_slot(cmds[i].key, cmds[i].keylen)];
            rt[i].node = o == NODE_NONE ? any_node(c) : o;
        }
    }
    for (int round = 0; round <= L2_CLUSTER_MAX_REDIRECTS; round++) {
        bool again = false;
        /* One pass per node holding pending commands, in command order. */
        for (int ni = 0; ni < c->n_nodes; ni++) {
            size_t m = 0;
            for (size_t i = 0; i < n; i++)
                if (!rt[i].done && rt[i].node == ni)
                    idx[m++] = i;
            if (m)
                run_node(c, ni, cmds, rt, idx, m, &again);
        }
        if (!again)
            break;
    }
    size_t ok = 0;
    for (size_t i = 0; i < n; i++) {
        if (!rt[i].done)
            cmds[i].err = -ELOOP;
        else if (cmds[i].reply)
            ok++;
    }
    free(rt);
    free(idx);
    return ok;
}
