/*
 * http: LMCache's HTTP API on libmicrohttpd (spec mp_server.md 6), plus
 * lmcd's /plugins routes.
 *
 * Routes (a table in http.c; each path also answers under /api/ because
 * LMCache moved between the two styles, issue #3185):
 *   GET  /                   {"status":"ok","service":"LMCache HTTP API"}
 *   GET  /healthcheck        200 {"status":"healthy"} | 503 {"status":"unhealthy",...}
 *   GET  /status             engine + server status
 *   GET  /config             the aggregated config tree (as plugins get it)
 *   GET  /conf               the same under LMCache's /conf names
 *   GET  /version            {"version", "server", "protocol"}
 *   GET  /metrics            Prometheus text (404 when metrics are disabled)
 *   GET  /dashboard          the live dashboard (one HTML page built into
 *                            the binary); also GET / when Accept asks for
 *                            text/html before JSON
 *   POST /clear-cache        force-clears L1 -> {"status":"ok"}
 *   GET  /l2/keys?model_name=M&page_size=500&page_token=T&adapter=0
 *                            one page of an L2 adapter's keys (501 if it cannot list)
 *   DELETE /cache/objects    body {"keys":[LMCache key strings], "tier":"l1"|"l2"|"all",
 *                            "force":false} -> counts removed per tier
 *   GET  /plugins            plugin states (JSON array)
 *   POST /plugins/restart?path=P
 * Unknown paths: 404 {"error":"not found","path":...}; a known path with
 * the wrong method: 405.
 *
 * Access (http_auth.c, docs/security.md): POST routes need the bearer
 * token when one is set (401), else pass Host/Origin checks (403); GET
 * /config and /conf are redacted for callers without the token. Slow or
 * idle connections are closed at the cap and after the timeout
 * (http_gov.c); a stop wakes libmicrohttpd's threads at once (ITC).
 *
 * Threads: handlers run on libmicrohttpd's threads. They never touch state
 * the ZeroMQ loop owns; they call the snapshot callbacks below, which must
 * be thread-safe. http_start() returns once the socket listens, so a
 * plugin started afterwards can call the API at once.
 */
#ifndef LMCD_HTTP_HTTP_H
#define LMCD_HTTP_HTTP_H

#include <jansson.h>
#include <stdbool.h>

struct http_handlers {
    void *ctx;
    bool (*healthy)(void *ctx);
    json_t *(*status)(void *ctx);                   /* new reference */
    json_t *(*config)(void *ctx);                   /* new reference */
    json_t *(*conf)(void *ctx);                     /* new reference */
    json_t *(*version)(void *ctx);                  /* new reference */
    char *(*metrics)(void *ctx);                    /* malloc'd text */
    int (*clear)(void *ctx);                        /* 0 or -errno */
    json_t *(*plugins)(void *ctx);                  /* new reference; NULL = [] */
    int (*plugin_restart)(void *ctx, const char *path); /* 0, -ENOENT */
    /* L2 (docs/l2.md): new references; *status gets the HTTP status. NULL = 404. */
    json_t *(*l2_keys)(void *ctx, const char *model, size_t page_size, const char *cursor, size_t adapter,
                       unsigned *status);
    json_t *(*delete_objects)(void *ctx, const json_t *body, unsigned *status);
    /* A metrics-only listener (--prometheus-port): every path answers the
     * Prometheus text, as prometheus_client's server does; only
     * `metrics` is called. */
    bool metrics_only;
};

struct http_server;

struct http_opts {
    const char *host;          /* an IPv4/IPv6 literal or a name */
    int port;
    const char *token;         /* NULL/"" = none: mutations then checked for Host and Origin only */
    const char *allowed_hosts; /* comma list of extra Host names for tokenless mutations; "*" = any */
    unsigned max_connections;  /* cap; the oldest connection without a request is closed at it */
    unsigned timeout_s;        /* request headers and idle keep-alive */
};

/* Listens on o->host:o->port. 0 or -errno. */
int http_start(const struct http_opts *o, const struct http_handlers *h, struct http_server **out);
/* The port actually bound (useful with port 0). */
int http_port(const struct http_server *srv);
/* Stops listening, waits for handlers in flight, frees. NULL-safe. */
void http_stop(struct http_server *srv);

#endif
