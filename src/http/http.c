/*
 * http.c: a route table over libmicrohttpd. One handler per route; each
 * builds a JSON body from a snapshot callback and answers.
 */
#define LOG_MODULE "lmcd.http"
#include "http/http.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "http/http_int.h"
#include "util/log.h"
#include "util/pyjson.h"

struct body;
struct http_reply {
    unsigned status;
    char *body; /* malloc'd */
    const char *ctype;
    struct body *req_body; /* in: the request body (routes that take one) */
};

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

/* The dashboard page (src/http/dashboard.html, embedded at build time). */
extern const char lmcd_dashboard_html[];

static void r_dashboard(struct http_server *srv, struct MHD_Connection *c, struct http_reply *out)
{
    (void)srv;
    (void)c;
    out->status = 200;
    out->ctype = "text/html; charset=utf-8";
    out->body = strdup(lmcd_dashboard_html);
    if (!out->body)
        reply_json(out, 500, json_pack("{s:s}", "error", "out of memory"));
}

/* True when the client's Accept lists text/html before any JSON type (a
 * browser), so GET / shows the dashboard; probes and scripts keep JSON. */
static bool wants_html(struct MHD_Connection *c)
{
    const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Accept");
    if (!a)
        return false;
    const char *h = strstr(a, "text/html"), *j = strstr(a, "json");
    return h && (!j || h < j);
}

static void r_root(struct http_server *srv, struct MHD_Connection *c, struct http_reply *out)
{
    if (wants_html(c)) {
        r_dashboard(srv, c, out);
        return;
    }
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

/* Secret-bearing values only for callers with the token (http_auth.c). */
static json_t *maybe_redact(struct http_server *srv, struct MHD_Connection *c, json_t *tree)
{
    return http_auth_token_ok(srv, c) ? tree : http_auth_redact(tree);
}

static void r_config(struct http_server *srv, struct MHD_Connection *c, struct http_reply *out)
{
    reply_json_indented(out, maybe_redact(srv, c, srv->h.config(srv->h.ctx)));
}

static void r_conf(struct http_server *srv, struct MHD_Connection *c, struct http_reply *out)
{
    reply_json_indented(out, maybe_redact(srv, c, srv->h.conf(srv->h.ctx)));
}

static void r_version(struct http_server *srv, struct MHD_Connection *c, struct http_reply *out)
{
    (void)c;
    reply_json(out, 200, srv->h.version(srv->h.ctx));
}

/* HTTP's own counters, after the server's. */
static char *http_metrics(struct http_server *srv, char *server_text)
{
    static const char *const names[] = {
#define HTTP_REFUSED_NAME_(sym, name, text) name,
        HTTP_REFUSED_KINDS(HTTP_REFUSED_NAME_)
#undef HTTP_REFUSED_NAME_
    };
    char *text = NULL;
    size_t len = 0;
    FILE *b = open_memstream(&text, &len);
    if (!b)
        return server_text;
    fputs(server_text ? server_text : "", b);
    free(server_text);
    fprintf(b, "# HELP lmcd_http_refused_total HTTP requests refused and connections closed, by reason.\n"
               "# TYPE lmcd_http_refused_total counter\n");
    for (int k = 0; k < HTTP_REFUSED_COUNT; k++)
        fprintf(b, "lmcd_http_refused_total{reason=\"%s\"} %llu\n", names[k],
                (unsigned long long)atomic_load(&srv->refused[k]));
    fprintf(b, "# HELP lmcd_http_connections HTTP connections open (cap %u).\n# TYPE lmcd_http_connections gauge\n"
               "lmcd_http_connections %u\n",
            srv->gov.cap, http_gov_open(&srv->gov));
    fclose(b);
    return text;
}

static void r_metrics(struct http_server *srv, struct MHD_Connection *c, struct http_reply *out)
{
    (void)c;
    char *text = srv->h.metrics ? srv->h.metrics(srv->h.ctx) : NULL;
    if (!text) { /* --disable-metrics / --disable-observability */
        reply_json(out, 404, json_pack("{s:s}", "error", "metrics are disabled"));
        return;
    }
    out->status = 200;
    out->ctype = "text/plain; version=0.0.4; charset=utf-8";
    out->body = http_metrics(srv, text);
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

#define R_MUTATES 1 /* changes state: token, Host and Origin checks (http_auth.c) */

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
    unsigned flags;
} routes[] = {
    { "GET", "/", r_root, 0 },
    { "GET", "/healthcheck", r_health, 0 },
    { "GET", "/status", r_status, 0 },
    { "GET", "/config", r_config, 0 },
    { "GET", "/conf", r_conf, 0 },
    { "GET", "/version", r_version, 0 },
    { "GET", "/metrics", r_metrics, 0 },
    { "GET", "/dashboard", r_dashboard, 0 },
    { "POST", "/clear-cache", r_clear, R_MUTATES },
    { "GET", "/l2/keys", r_l2_keys, 0 },
    { "DELETE", "/cache/objects", r_delete_objects, R_MUTATES },
    { "GET", "/plugins", r_plugins, 0 },
    { "POST", "/plugins/restart", r_plugin_restart, R_MUTATES },
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

static enum MHD_Result send_reply(struct MHD_Connection *c, struct http_reply *r, bool challenge)
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
    if (r->ctype && !strncmp(r->ctype, "text/html", 9)) {
        /* the dashboard: its own inline script and style, fetches to this origin, nothing else */
        MHD_add_response_header(resp, "Content-Security-Policy",
                                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                                "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'");
        MHD_add_response_header(resp, "Cache-Control", "no-store");
        MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    }
    if (challenge)
        MHD_add_response_header(resp, "WWW-Authenticate", "Bearer realm=\"lmcd\"");
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
    if (*upload_data_size) { /* kept for the routes that read a body, else drained */
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
    /* Whole request in (a body too): the governor stops timing it only now,
     * so a body trickled in slowly is as evictable as slow headers. */
    http_gov_request_started(srv, c);
    struct http_reply r = { 0 };
    r.req_body = takes_body ? *con_cls : NULL;
    int known;
    static const struct route metrics_route = { "GET", "/metrics", r_metrics, 0 };
    const struct route *rt = find_route(url, method, &known);
    const char *why = NULL;
    unsigned deny = rt && (rt->flags & R_MUTATES) ? http_auth_mutation(srv, c, &why) : 0;
    if (srv->h.metrics_only) {
        known = 1;
        deny = 0;
        rt = (!strcmp(method, "GET") || !strcmp(method, "HEAD")) ? &metrics_route : NULL;
    }
    if (deny)
        reply_json(&r, deny, json_pack("{s:s, s:s}", "error", deny == 401 ? "unauthorized" : "forbidden", "reason", why));
    else if (rt)
        rt->fn(srv, c, &r);
    else if (known)
        reply_json(&r, 405, json_pack("{s:s, s:o, s:o}", "error", "method not allowed", "method", req_text(method),
                                      "path", req_text(url)));
    else
        reply_json(&r, 404, json_pack("{s:s, s:o}", "error", "not found", "path", req_text(url)));
    log_debug("HTTP %s %s -> %u", method, url, r.status);
    return send_reply(c, &r, deny == 401);
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

/* Frees a request's body, then the governor's bookkeeping. */
static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    if (*con_cls && *con_cls != &marker) {
        struct body *b = *con_cls;
        free(b->buf);
        free(b);
        *con_cls = &marker;
    }
    http_gov_request_done(cls, c, con_cls, toe);
}

static void free_hosts(char **l)
{
    for (char **p = l; p && *p; p++)
        free(*p);
    free(l);
}

/* "a, b,c" -> {"a","b","c",NULL}, lowercase. */
static char **split_hosts(const char *list)
{
    size_t n = 1;
    for (const char *p = list; p && *p; p++)
        n += *p == ',';
    char **out = calloc(n + 1, sizeof(*out));
    if (!out || !list)
        return out;
    size_t k = 0;
    for (const char *p = list; *p;) {
        size_t len = strcspn(p, ",");
        const char *b = p, *e = p + len;
        while (b < e && (*b == ' ' || *b == '\t'))
            b++;
        while (e > b && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if (e > b && (out[k] = strndup(b, (size_t)(e - b))))
            for (char *q = out[k++]; *q; q++)
                *q = (char)tolower((unsigned char)*q);
        p += len + (p[len] == ',');
    }
    return out;
}

static void http_free(struct http_server *srv)
{
    http_gov_destroy(&srv->gov);
    free(srv->token);
    free_hosts(srv->allowed_hosts);
    free(srv);
}

int http_start(const struct http_opts *o, const struct http_handlers *h, struct http_server **out)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE };
    struct addrinfo *ai = NULL;
    char portstr[16];
    snprintf(portstr, sizeof(portstr), "%d", o->port);
    int e = getaddrinfo(o->host, portstr, &hints, &ai);
    if (e) {
        log_error("cannot resolve --http-host %s: %s", o->host, gai_strerror(e));
        return -EINVAL;
    }
    struct http_server *srv = calloc(1, sizeof(*srv));
    if (!srv) {
        freeaddrinfo(ai);
        return -ENOMEM;
    }
    srv->h = *h;
    srv->token = o->token && *o->token ? strdup(o->token) : NULL;
    srv->allowed_hosts = split_hosts(o->allowed_hosts);
    unsigned cap = o->max_connections > 4 ? o->max_connections : 4;
    http_gov_init(&srv->gov, cap, o->timeout_s ? o->timeout_s : 10);
    /* MHD_USE_ITC: a stop wakes the polling threads at once instead of
     * after their poll timeout (issue 11: SIGTERM waited ~30 s). */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG | MHD_USE_AUTO | MHD_USE_ITC;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    srv->d = MHD_start_daemon(flags, (uint16_t)o->port, NULL, NULL, on_request, srv, MHD_OPTION_EXTERNAL_LOGGER,
                              on_mhd_error, NULL, MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_THREAD_POOL_SIZE, 2u,
                              MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)(o->timeout_s ? o->timeout_s : 10),
                              MHD_OPTION_CONNECTION_LIMIT, cap + cap / 4 + 8, MHD_OPTION_NOTIFY_CONNECTION,
                              http_gov_notify, srv,
                              MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!srv->d) {
        http_free(srv);
        log_error("cannot listen for HTTP on %s:%d (port in use or address not local?)", o->host, o->port);
        return -EADDRINUSE;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(srv->d, MHD_DAEMON_INFO_BIND_PORT);
    srv->port = di ? di->port : o->port;
    log_info("HTTP: at most %u connections, %u s for a whole request and per idle connection; mutations %s", cap,
             o->timeout_s, srv->token ? "need the bearer token" : "checked for Host and Origin (no token set)");
    *out = srv;
    return 0;
}

int http_port(const struct http_server *srv) { return srv->port; }

void http_stop(struct http_server *srv)
{
    if (!srv)
        return;
    MHD_stop_daemon(srv->d);
    http_free(srv);
}
