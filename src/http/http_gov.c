/*
 * http_gov.c: the HTTP connection governor (see http_int.h).
 *
 * DESIGN: libmicrohttpd stops accepting once it holds its connection limit,
 * so half-open connections (slowloris) that never finish their headers
 * would hold every slot until their idle timeout and a probe would wait
 * behind them. The governor tracks each connection from accept to close;
 * those between requests (their request not complete yet, or idle in
 * keep-alive) sit in a list, oldest first. On every new connection
 * it closes those that waited past the timeout and, at the cap, the oldest
 * ones, so a new client always gets a slot and a request that arrives whole
 * is answered at once. A connection is "in a request" from the moment its
 * whole request (headers and body) has arrived until its reply is sent;
 * only then is it never closed here.
 *
 * Closing is shutdown(2), not close(2): libmicrohttpd owns the descriptor,
 * sees EOF and closes it itself. The descriptor stays valid while the
 * connection is in our list because libmicrohttpd reports CLOSED (which
 * takes it out, under the same mutex) before it closes the socket.
 */
#define LOG_MODULE "lmcd.http"
#include <arpa/inet.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "http/http_int.h"
#include "util/clock.h"
#include "util/log.h"

struct http_conn {
    struct http_conn *prev, *next;
    int fd;
    bool waiting;   /* in the list */
    bool shut;      /* shutdown already sent */
    uint64_t since_ms;
};

static struct log_ratelimit evict_rl = LOG_RATELIMIT_INIT(60000, 3);

void http_gov_init(struct http_gov *g, unsigned cap, unsigned timeout_s)
{
    pthread_mutex_init(&g->mu, NULL);
    g->head = g->tail = NULL;
    g->n_open = 0;
    g->n_shut = 0;
    g->cap = cap;
    g->timeout_ms = (uint64_t)timeout_s * 1000;
}

void http_gov_destroy(struct http_gov *g) { pthread_mutex_destroy(&g->mu); }

static void unlink_locked(struct http_gov *g, struct http_conn *hc)
{
    if (!hc->waiting)
        return;
    if (hc->prev)
        hc->prev->next = hc->next;
    else
        g->head = hc->next;
    if (hc->next)
        hc->next->prev = hc->prev;
    else
        g->tail = hc->prev;
    hc->prev = hc->next = NULL;
    hc->waiting = false;
}

static void append_locked(struct http_gov *g, struct http_conn *hc)
{
    hc->since_ms = clock_mono_ms();
    hc->prev = g->tail;
    hc->next = NULL;
    if (g->tail)
        g->tail->next = hc;
    else
        g->head = hc;
    g->tail = hc;
    hc->waiting = true;
}

static void evict_locked(struct http_server *srv, struct http_conn *hc, enum http_refused why)
{
    unlink_locked(&srv->gov, hc);
    if (hc->shut)
        return;
    hc->shut = true;
    srv->gov.n_shut++;
    shutdown(hc->fd, SHUT_RDWR);
    http_count(srv, why);
}

void http_gov_notify(void *cls, struct MHD_Connection *c, void **socket_context,
                     enum MHD_ConnectionNotificationCode code)
{
    struct http_server *srv = cls;
    struct http_gov *g = &srv->gov;
    if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        struct http_conn *hc = *socket_context;
        if (!hc)
            return;
        pthread_mutex_lock(&g->mu);
        unlink_locked(g, hc);
        g->n_open--;
        g->n_shut -= hc->shut;
        pthread_mutex_unlock(&g->mu);
        free(hc);
        *socket_context = NULL;
        return;
    }
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    struct http_conn *hc = ci ? calloc(1, sizeof(*hc)) : NULL;
    if (!hc)
        return; /* untracked: never evicted, still closed by the idle timeout */
    hc->fd = ci->connect_fd;
    unsigned slow = 0, capped = 0;
    pthread_mutex_lock(&g->mu);
    uint64_t now = clock_mono_ms();
    while (g->head && now - g->head->since_ms >= g->timeout_ms) {
        evict_locked(srv, g->head, HTTP_REFUSED_EVICTED_SLOW);
        slow++;
    }
    g->n_open++;
    append_locked(g, hc);
    /* Keep one live slot free: the connection after this one must find
     * room. Closing takes a turn of the owning thread's loop, so
     * libmicrohttpd's own limit sits above the cap (http_start): accepting
     * goes on while the evicted ones close. */
    while (g->n_open - g->n_shut >= g->cap && g->head && g->head != hc) {
        evict_locked(srv, g->head, HTTP_REFUSED_EVICTED_CAP);
        capped++;
    }
    unsigned open = g->n_open;
    pthread_mutex_unlock(&g->mu);
    *socket_context = hc;
    if (slow || capped)
        log_rl(&evict_rl, LOG_WARNING,
               "HTTP: closed %u connection(s) idle or without a full request for %llu s and %u at the cap of %u "
               "(%u open; see lmcd_http_refused_total)",
               slow, (unsigned long long)(g->timeout_ms / 1000), capped, g->cap, open);
}

static struct http_conn *conn_of(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

void http_gov_request_started(struct http_server *srv, struct MHD_Connection *c)
{
    struct http_conn *hc = conn_of(c);
    if (!hc)
        return;
    pthread_mutex_lock(&srv->gov.mu);
    unlink_locked(&srv->gov, hc);
    pthread_mutex_unlock(&srv->gov.mu);
}

void http_gov_request_done(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    (void)con_cls;
    (void)toe;
    struct http_server *srv = cls;
    struct http_conn *hc = conn_of(c);
    if (!hc)
        return;
    pthread_mutex_lock(&srv->gov.mu);
    if (!hc->waiting && !hc->shut)
        append_locked(&srv->gov, hc); /* keep-alive: waits for its next request */
    pthread_mutex_unlock(&srv->gov.mu);
}

unsigned http_gov_open(struct http_gov *g)
{
    pthread_mutex_lock(&g->mu);
    unsigned n = g->n_open - g->n_shut;
    pthread_mutex_unlock(&g->mu);
    return n;
}
