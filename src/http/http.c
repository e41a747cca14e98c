/*
 * http.c: a route table over libmicrohttpd. One handler per route; each
 * builds a JSON body from a snapshot callback and answers.
 */
#define LOG_MODULE "lmcd.http"
#include "http/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "util/log.h"
#include "util/pyjson.h"

struct http_server {
    struct MHD_Daemon *d;
    struct http_handlers h;
    int port;
};

struct http_reply {
    unsigned status;
    char *body; /* malloc'd */
    const char *ctype;
    struct body *req_body; /* in: the request body (routes that take one) */
};

struct body;
typedef void (*route_fn)(struct http_server *srv, struct MHD_Connection *c, struct http_reply *out);

static void reply_json(struct http_reply *out, unsigned status, json_t *j)
{
    out->ctype = "application/json";
    out->body = j ? pyjson_dumps(j, -1) : NULL;
    out->status = out->body ? status : 500;
    if (!out->body)
        out->body = strdup("{\"error\": \"internal error building the reply\"}");
    json_decref(j);
}

/* Text from the request (URL, query) as a JSON string. libmicrohttpd has
 * percent-decoded it, so it may be any bytes; jansson's json_string() would
 * refuse non-UTF-8, and pyjson writes invalid bytes as U+FFFD. */
static json_t *req_text(const char *s) { return json_string_nocheck(s ? s : ""); }

static void r_root(struct http_server *srv, struct MHD_Connection *c, struct http_reply *out)
{
    (void)srv;
    (void)c;
    reply_json(out, 200, json_pack("{s:s, s:s}", "status", "ok", "service", "LMCache HTTP API"));
}

static void r_health(struct http_server *srv, struct MHD_Connection *c, struct http_reply *out)
{
    (void)c;
    if (srv->h.healthy(srv->h.ctx))
        reply_json(out, 200, json_pack("{s:s}", "status", "healthy"));
    else
        reply_json(out, 503, json_pack("{s:s, s:s}", "status", "unhealthy", "reason", "stopping, or the engine is down"));
}

static void r_status(struct http_server *srv, struct MHD_Connection *c, struct http_reply *out)
{
    (void)c;
    reply_json(out, 200, srv->h.status(srv->h.ctx));
}

/* LMCache serves the config indented. */
static void reply_json_indented(struct http_reply *out, json_t *j)
{
    out->ctype = "application/json";
    out->body = j ? pyjson_dumps(j, 2) : NULL;
    out->status = out->body ? 200 : 500;
    json_decref(j);
}

static void r_config(struct http_server *srv, struct MHD_Connection *c, struct http_reply *out)
{
    (void)c;
    reply_json_indented(out, srv->h.config(srv->h.ctx));
}

static void r_conf(struct http_server *srv, struct MHD_Connection *c, struct http_reply *out)
{
    (void)c;
    reply_json_indented(out, srv->h.conf(srv->h.ctx));
}

static void r_version(struct http_server *srv, struct MHD_Connection *c, struct http_reply *out)
{
    (void)c;
    reply_json(out, 200, srv->h.version(srv->h.ctx));
}

static void r_metrics(struct http_server *srv, struct MHD_Connection *c, struct http_reply *out)
{
    (void)c;
    out->status = 200;
    out->ctype = "text/plain; version=0.0.4; charset=utf-8";
    out->body = srv->h.metrics(srv->h.ctx);
}

static void r_clear(struct http_server *srv, struct MHD_Connection *c, struct http_reply *out)
{
    (void)c;
    int rc = srv->h.clear(srv->h.ctx);
    if (rc == 0)
        reply_json(out, 200, json_pack("{s:s}", "status", "ok"));
    else
        reply_json(out, 503, json_pack("{s:s, s:s}", "status", "error", "reason", strerror(-rc)));
}

static void r_plugins(struct http_server *srv, struct MHD_Connection *c, struct http_reply *out)
{
    (void)c;
    json_t *j = srv->h.plugins ? srv->h.plugins(srv->h.ctx) : NULL;
    reply_json(out, 200, j ? j : json_array());
}

static void r_plugin_restart(struct http_server *srv, struct MHD_Connection *c, struct http_reply *out)
{
    const char *path = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "path");
    if (!path || !*path) {
        reply_json(out, 400, json_pack("{s:s}", "error", "missing query parameter 'path'"));
        return;
    }
    int rc = srv->h.plugin_restart ? srv->h.plugin_restart(srv->h.ctx, path) : -ENOENT;
    if (rc == 0)
        reply_json(out, 200, json_pack("{s:s, s:o}", "status", "ok", "path", req_text(path)));
    else if (rc == -ENOENT)
        reply_json(out, 404, json_pack("{s:s, s:o}", "error", "no such plugin", "path", req_text(path)));
    else
        reply_json(out, 500, json_pack("{s:s, s:o}", "error", strerror(-rc), "path", req_text(path)));
}

/* Request bodies (DELETE /cache/objects): accumulated up to BODY_MAX. */
#define BODY_MAX (4u << 20)
struct body {
    char *buf;
    size_t len;
    bool too_big;
};

static void r_l2_keys(struct http_server *srv, struct MHD_Connection *c, struct http_reply *out)
{
    const char *model = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "model_name");
    const char *ps = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "page_size");
    const char *tok = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "page_token");
    const char *ad = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "adapter");
    long page = ps ? strtol(ps, NULL, 10) : 500, idx = ad ? strtol(ad, NULL, 10) : 0;
    if (!model || !*model || page < 1 || page > 10000 || idx < 0 || !srv->h.l2_keys) {
        reply_json(out, 400, json_pack("{s:s}", "error", "model_name (and page_size 1..10000) required"));
        return;
    }
    unsigned st = 200;
    json_t *j = srv->h.l2_keys(srv->h.ctx, model, (size_t)page, tok, (size_t)idx, &st);
    reply_json(out, st, j);
}

static void r_delete_objects(struct http_server *srv, struct MHD_Connection *c, struct http_reply *out)
{
    (void)c;
    struct body *b = out->req_body;
    if (!b || b->too_big || !srv->h.delete_objects) {
        reply_json(out, b && b->too_big ? 413 : 400, json_pack("{s:s}", "error", "a JSON body is required"));
        return;
    }
    json_error_t je;
    json_t *j = json_loadb(b->buf ? b->buf : "", b->len, 0, &je);
    if (!json_is_object(j)) {
        json_decref(j);
        reply_json(out, 400, json_pack("{s:s, s:s}", "error", "invalid JSON body", "detail", je.text));
        return;
    }
    unsigned st = 200;
    json_t *r = srv->h.delete_objects(srv->h.ctx, j, &st);
    json_decref(j);
    reply_json(out, st, r);
}

static const struct route {
    const char *method;
    const char *path; /* also served under /api */
    route_fn fn;
} routes[] = {
    { "GET", "/", r_root },
    { "GET", "/healthcheck", r_health },
    { "GET", "/status", r_status },
    { "GET", "/config", r_config },
    { "GET", "/conf", r_conf },
    { "GET", "/version", r_version },
    { "GET", "/metrics", r_metrics },
    { "POST", "/clear-cache", r_clear },
    { "GET", "/l2/keys", r_l2_keys },
    { "DELETE", "/cache/objects", r_delete_objects },
    { "GET", "/plugins", r_plugins },
    { "POST", "/plugins/restart", r_plugin_restart },
};

static const struct route *find_route(const char *url, const char *method, int *path_known)
{
    if (!strncmp(url, "/api/", 5))
        url += 4;
    else if (!strcmp(url, "/api"))
        url = "/";
    *path_known = 0;
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        if (strcmp(routes[i].path, url))
            continue;
        *path_known = 1;
        if (!strcmp(routes[i].method, method) || (!strcmp(method, "HEAD") && !strcmp(routes[i].method, "GET")))
            return &routes[i];
    }
    return NULL;
}

static enum MHD_Result send_reply(struct MHD_Connection *c, struct http_reply *r)
{
    struct MHD_Response *resp =
        r->body ? MHD_create_response_from_buffer(strlen(r->body), r->body, MHD_RESPMEM_MUST_FREE)
                : MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (!resp) {
        free(r->body);
        return MHD_NO;
    }
    r->body = NULL; /* owned by the response now */
    MHD_add_response_header(resp, "Content-Type", r->ctype ? r->ctype : "application/json");
    enum MHD_Result rc = MHD_queue_response(c, r->status, resp);
    MHD_destroy_response(resp);
    return rc;
}

static int marker; /* address used as "request seen" for POST bodies */

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    (void)version;
    struct http_server *srv = cls;
    bool takes_body = !strcmp(method, "DELETE");
    if (!*con_cls) { /* first call: headers only; bodies come next */
        *con_cls = takes_body ? calloc(1, sizeof(struct body)) : (void *)&marker;
        if (!*con_cls)
            return MHD_NO;
        if (strcmp(method, "GET") && strcmp(method, "HEAD"))
            return MHD_YES;
    }
    if (*upload_data_size) { /* kept for routes that read a body, else drained */
        struct body *b = takes_body ? *con_cls : NULL;
        if (b && !b->too_big) {
            char *nb = b->len + *upload_data_size <= BODY_MAX ? realloc(b->buf, b->len + *upload_data_size) : NULL;
            if (nb) {
                memcpy(nb + b->len, upload_data, *upload_data_size);
                b->buf = nb;
                b->len += *upload_data_size;
            } else {
                b->too_big = true;
            }
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    struct http_reply r = { 0 };
    r.req_body = takes_body ? *con_cls : NULL;
    int known;
    const struct route *rt = find_route(url, method, &known);
    if (rt)
        rt->fn(srv, c, &r);
    else if (known)
        reply_json(&r, 405, json_pack("{s:s, s:o, s:o}", "error", "method not allowed", "method", req_text(method),
                                      "path", req_text(url)));
    else
        reply_json(&r, 404, json_pack("{s:s, s:o}", "error", "not found", "path", req_text(url)));
    log_debug("HTTP %s %s -> %u", method, url, r.status);
    return send_reply(c, &r);
}

static void on_mhd_error(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = 0;
    log_warn("libmicrohttpd: %s", msg);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)c;
    (void)toe;
    if (*con_cls && *con_cls != &marker) {
        struct body *b = *con_cls;
        free(b->buf);
        free(b);
    }
    *con_cls = NULL;
}

int http_start(const char *host, int port, const struct http_handlers *h, struct http_server **out)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE };
    struct addrinfo *ai = NULL;
    char portstr[16];
    snprintf(portstr, sizeof(portstr), "%d", port);
    int e = getaddrinfo(host, portstr, &hints, &ai);
    if (e) {
        log_error("cannot resolve --http-host %s: %s", host, gai_strerror(e));
        return -EINVAL;
    }
    struct http_server *srv = calloc(1, sizeof(*srv));
    if (!srv) {
        freeaddrinfo(ai);
        return -ENOMEM;
    }
    srv->h = *h;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG | MHD_USE_AUTO;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    srv->d = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, on_request, srv, MHD_OPTION_EXTERNAL_LOGGER,
                              on_mhd_error, NULL, MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_THREAD_POOL_SIZE, 2u,
                              MHD_OPTION_CONNECTION_TIMEOUT, 30u, MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
                              MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!srv->d) {
        free(srv);
        log_error("cannot listen for HTTP on %s:%d (port in use or address not local?)", host, port);
        return -EADDRINUSE;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(srv->d, MHD_DAEMON_INFO_BIND_PORT);
    srv->port = di ? di->port : port;
    *out = srv;
    return 0;
}

int http_port(const struct http_server *srv) { return srv->port; }

void http_stop(struct http_server *srv)
{
    if (!srv)
        return;
    MHD_stop_daemon(srv->d);
    free(srv);
}
