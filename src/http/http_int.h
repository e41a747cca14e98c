/*
 * http_int.h: what http.c shares with its two helpers (not installed, not
 * for other modules).
 *
 *   http_gov.c   the connection governor: counts HTTP connections, closes
 *                the oldest one that is not in a request when the cap is
 *                reached or when it has waited past the timeout (slowloris).
 *   http_auth.c  the bearer token, the Host/Origin checks for mutations
 *                (CSRF, DNS rebinding) and /config redaction.
 *
 * Threads: everything runs on libmicrohttpd's threads (two workers); the
 * governor's list is guarded by its mutex, counters are relaxed atomics.
 */
#ifndef LMCD_HTTP_HTTP_INT_H
#define LMCD_HTTP_HTTP_INT_H

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "http/http.h"

struct http_conn; /* one tracked connection (http_gov.c) */

#define HTTP_REFUSED_KINDS(X)                                              \
    X(TOKEN, "token", "missing or wrong bearer token")                     \
    X(HOST, "host", "Host header not a loopback/configured name")          \
    X(ORIGIN, "origin", "cross-site Origin/Referer/Sec-Fetch-Site")        \
    X(EVICTED_CAP, "evicted_cap", "idle connection closed at the cap")     \
    X(EVICTED_SLOW, "evicted_slow", "request headers slower than timeout")

#define HTTP_REFUSED_ENUM_(sym, name, text) HTTP_REFUSED_##sym,
enum http_refused { HTTP_REFUSED_KINDS(HTTP_REFUSED_ENUM_) HTTP_REFUSED_COUNT };
#undef HTTP_REFUSED_ENUM_

struct http_gov {
    pthread_mutex_t mu;
    struct http_conn *head, *tail; /* guarded by mu: connections between requests, oldest first */
    unsigned n_open;               /* guarded by mu: accepted, not yet closed */
    unsigned n_shut;               /* guarded by mu: of those, evicted and closing */
    unsigned cap;
    uint64_t timeout_ms;
};

struct http_server {
    struct MHD_Daemon *d;
    struct http_handlers h;
    int port;
    char *token;         /* NULL = none */
    char **allowed_hosts; /* NULL-terminated */
    struct http_gov gov;
    atomic_uint_fast64_t refused[HTTP_REFUSED_COUNT];
};

/* Governor (http_gov.c). */
void http_gov_init(struct http_gov *g, unsigned cap, unsigned timeout_s);
void http_gov_destroy(struct http_gov *g);
void http_gov_notify(void *cls, struct MHD_Connection *c, void **socket_context, enum MHD_ConnectionNotificationCode code);
void http_gov_request_started(struct http_server *srv, struct MHD_Connection *c);
void http_gov_request_done(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe);
/* Connections open and not being closed by the governor. */
unsigned http_gov_open(struct http_gov *g);

/* Auth (http_auth.c). */
bool http_auth_token_ok(const struct http_server *srv, struct MHD_Connection *c);
/* 0 when a mutation may run, else the HTTP status to answer (401, 403),
 * with *why set; counts and logs the refusal. */
unsigned http_auth_mutation(struct http_server *srv, struct MHD_Connection *c, const char **why);
/* A copy of tree with secret-bearing values replaced (new reference; steals tree). */
json_t *http_auth_redact(json_t *tree);
void http_count(struct http_server *srv, enum http_refused kind);

#endif
