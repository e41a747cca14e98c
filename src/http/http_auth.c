/*
 * http_auth.c: who may change lmcd over HTTP, and what /config shows.
 *
 * Mutations (POST /clear-cache, POST /plugins/restart):
 *   - with --http-auth-token: "Authorization: Bearer <token>" is required
 *     (401 otherwise). A browser cannot attach that header cross-site
 *     without a CORS preflight, which lmcd never grants, so a request that
 *     carries it is no forgery.
 *   - without a token (loopback only, or --http-allow-insecure): the request
 *     must look like it came from a program, not from a web page:
 *       Host      a loopback name, an IP literal, or a --http-allowed-hosts
 *                 name: a DNS-rebinding page sends its own name here;
 *       Origin    absent, or the same host:port as Host ("null" is refused):
 *                 a cross-site form POST carries the attacker's origin;
 *       Referer   checked the same way when Origin is absent (old browsers);
 *       Sec-Fetch-Site  "cross-site"/"same-site" are refused.
 *     Anything else is 403.
 * Reads never change state, so they are not checked; GET /config and /conf
 * are redacted for callers without the token (with no token configured,
 * for everyone): values of keys named like password/secret/token/key/
 * credential/auth anywhere, and every value of the plugins' free-form
 * extra config, become "<redacted>".
 */
#define LOG_MODULE "lmcd.http"
#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http/http_int.h"
#include "util/log.h"

static struct log_ratelimit refuse_rl = LOG_RATELIMIT_INIT(60000, 5);

void http_count(struct http_server *srv, enum http_refused kind) { atomic_fetch_add(&srv->refused[kind], 1); }

/* Constant time in the length of the presented value. */
static bool token_eq(const char *want, const char *got)
{
    size_t wl = strlen(want), gl = strlen(got);
    unsigned char diff = wl != gl;
    for (size_t i = 0; i < gl; i++)
        diff |= (unsigned char)(got[i] ^ want[i % (wl ? wl : 1)]);
    return diff == 0;
}

bool http_auth_token_ok(const struct http_server *srv, struct MHD_Connection *c)
{
    if (!srv->token)
        return false;
    const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!v || strncasecmp(v, "Bearer ", 7))
        return false;
    v += 7;
    while (*v == ' ')
        v++;
    return token_eq(srv->token, v);
}

/* host[:port] of a Host header or an origin's authority -> host (lowercase,
 * IPv6 brackets kept) into out. */
static void host_part(const char *authority, char *out, size_t cap)
{
    size_t n = 0;
    if (authority[0] == '[') {
        const char *end = strchr(authority, ']');
        n = end ? (size_t)(end - authority) + 1 : strlen(authority);
    } else {
        const char *colon = strchr(authority, ':');
        n = colon ? (size_t)(colon - authority) : strlen(authority);
    }
    if (n >= cap)
        n = cap - 1;
    for (size_t i = 0; i < n; i++)
        out[i] = (char)tolower((unsigned char)authority[i]);
    out[n] = 0;
}

static bool host_allowed(const struct http_server *srv, const char *hosthdr)
{
    char h[256];
    host_part(hosthdr, h, sizeof(h));
    size_t n = strlen(h);
    if (!n)
        return false;
    struct in_addr a4;
    if (h[0] == '[' || inet_pton(AF_INET, h, &a4) == 1)
        return true; /* an IP literal cannot be a rebinding name */
    if (!strcmp(h, "localhost") || (n > 10 && !strcmp(h + n - 10, ".localhost")))
        return true;
    for (char **p = srv->allowed_hosts; p && *p; p++)
        if (!strcmp(*p, "*") || !strcasecmp(*p, h))
            return true;
    return false;
}

/* "http://host:port/..." -> "host:port" into out; false when not http(s). */
static bool origin_authority(const char *origin, char *out, size_t cap)
{
    const char *p = NULL;
    if (!strncasecmp(origin, "http://", 7))
        p = origin + 7;
    else if (!strncasecmp(origin, "https://", 8))
        p = origin + 8;
    if (!p)
        return false;
    size_t n = strcspn(p, "/?#");
    if (n >= cap)
        return false;
    memcpy(out, p, n);
    out[n] = 0;
    return true;
}

static bool same_origin(const char *origin, const char *hosthdr)
{
    char auth[300];
    return hosthdr && origin_authority(origin, auth, sizeof(auth)) && !strcasecmp(auth, hosthdr);
}

static void peer_text(struct MHD_Connection *c, char *buf, size_t cap)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    snprintf(buf, cap, "?");
    if (!ci || !ci->client_addr)
        return;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, buf, (socklen_t)cap);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, buf, (socklen_t)cap);
}

static unsigned refuse(struct http_server *srv, struct MHD_Connection *c, enum http_refused kind, unsigned status,
                       const char *why, const char **out)
{
    char peer[64];
    http_count(srv, kind);
    peer_text(c, peer, sizeof(peer));
    log_rl(&refuse_rl, LOG_WARNING, "HTTP mutation from %s refused (%u): %s", peer, status, why);
    *out = why;
    return status;
}

unsigned http_auth_mutation(struct http_server *srv, struct MHD_Connection *c, const char **why)
{
    if (srv->token)
        return http_auth_token_ok(srv, c)
                   ? 0
                   : refuse(srv, c, HTTP_REFUSED_TOKEN, 401, "this lmcd requires 'Authorization: Bearer <token>'", why);
    const char *host = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Host");
    const char *origin = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Origin");
    const char *referer = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Referer");
    const char *site = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Sec-Fetch-Site");
    if (host && !host_allowed(srv, host))
        return refuse(srv, c, HTTP_REFUSED_HOST, 403,
                      "Host is not a loopback name, an IP literal or a --http-allowed-hosts name", why);
    if (origin && !same_origin(origin, host))
        return refuse(srv, c, HTTP_REFUSED_ORIGIN, 403, "cross-origin request (Origin)", why);
    if (!origin && referer && !same_origin(referer, host))
        return refuse(srv, c, HTTP_REFUSED_ORIGIN, 403, "cross-origin request (Referer)", why);
    if (site && (!strcasecmp(site, "cross-site") || !strcasecmp(site, "same-site")))
        return refuse(srv, c, HTTP_REFUSED_ORIGIN, 403, "cross-site request (Sec-Fetch-Site)", why);
    return 0;
}

/* ------------------------------------------------------------ redaction */

static bool secret_name(const char *k)
{
    static const char *const words[] = { "password", "passwd", "secret", "token", "key", "credential", "auth", NULL };
    char low[128];
    size_t n = strlen(k);
    if (n >= sizeof(low))
        n = sizeof(low) - 1;
    for (size_t i = 0; i < n; i++)
        low[i] = (char)tolower((unsigned char)k[i]);
    low[n] = 0;
    for (const char *const *w = words; *w; w++)
        if (strstr(low, *w))
            return true;
    return false;
}

static json_t *redacted(void) { return json_string("<redacted>"); }

/* all: every scalar below is redacted (free-form plugin config). */
static void redact_walk(json_t *v, bool all)
{
    if (json_is_object(v)) {
        const char *k;
        json_t *x;
        void *tmp;
        json_object_foreach_safe(v, tmp, k, x) {
            bool sub = all || !strcmp(k, "extra_config") || !strcmp(k, "runtime_plugin_extra_config");
            bool scalar = !json_is_object(x) && !json_is_array(x);
            if (json_is_null(x))
                continue;
            if ((sub && scalar) || (!sub && secret_name(k)))
                json_object_set_new(v, k, redacted());
            else
                redact_walk(x, sub);
        }
    } else if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++) {
            json_t *x = json_array_get(v, i);
            if (all && !json_is_object(x) && !json_is_array(x) && !json_is_null(x))
                json_array_set_new(v, i, redacted());
            else
                redact_walk(x, all);
        }
    }
}

json_t *http_auth_redact(json_t *tree)
{
    if (!tree)
        return NULL;
    json_t *copy = json_deep_copy(tree);
    json_decref(tree);
    if (copy)
        redact_walk(copy, false);
    return copy;
}
