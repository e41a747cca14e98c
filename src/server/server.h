/*
 * server: the ZeroMQ ROUTER loop, request dispatch, pools and replies.
 *
 * DESIGN (threads and who owns what)
 *
 *   loop thread (main)      owns the ROUTER socket and everything marked
 *                           "loop only" below. poll()s the socket's ZMQ_FD
 *                           (read until EAGAIN: the fd is edge-triggered),
 *                           the reply eventfd and the signalfd. Receives a
 *                           request, decodes it (src/wire), answers SYNC ops
 *                           inline, hands the rest to a pool as a srv_req.
 *   affinity pool           data requests; FIFO per client identity.
 *   normal pool             lookups, queries, sessions, clear, ping...
 *   pool threads            run the handler, encode the reply, push it on
 *                           the reply queue and write the eventfd; they
 *                           never touch the socket (zmq sockets are not
 *                           thread-safe, zmq_socket(3)).
 *   libmicrohttpd threads   HTTP; they read snapshots through callbacks.
 *   plugin supervisor       src/plugin, its own thread.
 *
 *   frames in --> loop: recv, size check, wire_decode_request
 *                   |-- bad input: count, log (per peer+kind, once a minute), drop
 *                   |-- SYNC: handler + encode + send, inline
 *                   '-- pool_submit(srv_req) --> worker: handler, encode
 *                                                   --> replyq + eventfd
 *   loop <-- eventfd: pop replies, send [identity, uid, type, resp?, raw...]
 *
 * The request's frames (zmq_msg_t) live in its srv_req until the reply is
 * sent, because the decoded wire_req borrows them; identity, uid and type
 * frames are then sent back as they came (echoed verbatim).
 */
#ifndef LMCD_SERVER_SERVER_H
#define LMCD_SERVER_SERVER_H

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <zmq.h>

#include "metrics/metrics.h"
#include "server/config.h"
#include "server/pool.h"
#include "util/htab.h"
#include "wire/wire.h"

struct engine;
struct plugin_sup;
struct transfer_ops;
struct transfer_backend;
struct http_server;

/* Bad-input kinds the loop counts (metrics and logs). */
#define SRV_BAD_KINDS(X)                                                   \
    X(FEW_FRAMES, "few_frames", "fewer than 3 frames")                     \
    X(OVERSIZE, "oversize", "message larger than --max-message-bytes")     \
    X(DECODE, "decode", "undecodable request")                             \
    X(UNSERVED, "unserved", "operation not served by lmcd")                \
    X(NO_CUDA, "no_cuda", "CUDA request on a CPU-only lmcd")

#define SRV_BAD_ENUM_(sym, name, text) SRV_BAD_##sym,
enum srv_bad { SRV_BAD_KINDS(SRV_BAD_ENUM_) SRV_BAD_COUNT };
#undef SRV_BAD_ENUM_

/* Well-formed requests shed: answered with their safe reply (spec 9.3)
 * instead of being run, by reason (metrics and logs; the engine counts its
 * own session refusals). */
#define SRV_SHED_KINDS(X)                                                            \
    X(PEER_BYTES, "peer_in_flight_bytes", "the peer's queued requests reached --max-peer-in-flight-bytes") \
    X(PEER_COUNT, "peer_in_flight", "the peer's queued requests reached --max-peer-in-flight")            \
    X(NOMEM, "out_of_memory", "no memory to queue the request")                                         \
    X(STOPPING, "stop_timeout", "still queued when --stop-timeout-seconds ran out")

#define SRV_SHED_ENUM_(sym, name, text) SRV_SHED_##sym,
enum srv_shed { SRV_SHED_KINDS(SRV_SHED_ENUM_) SRV_SHED_COUNT };
#undef SRV_SHED_ENUM_

/* Connections and ops refused by access control (server/access.h). */
#define SRV_REFUSED_KINDS(X)                                                            \
    X(IPC_PEER, "ipc_peer", "ipc peer whose credentials are not allowed")               \
    X(ACCEPT, "accept_failed", "connection the ROUTER could not accept (e.g. EMFILE)")  \
    X(INLINE_OP, "inline_op", "inline op under --no-inline-ops")

#define SRV_REFUSED_ENUM_(sym, name, text) SRV_REFUSED_##sym,
enum srv_refused { SRV_REFUSED_KINDS(SRV_REFUSED_ENUM_) SRV_REFUSED_COUNT };
#undef SRV_REFUSED_ENUM_

/* Counters live in src/metrics (per thread, summed at scrape): requests by
 * op, replies, bad input by kind, decode errors, refusals, latency by op. */
_Static_assert(WIRE_OP_COUNT <= MET_MAX_OPS, "metrics: raise MET_MAX_OPS");
_Static_assert(SRV_BAD_COUNT <= MET_MAX_KINDS, "metrics: raise MET_MAX_KINDS");
_Static_assert(SRV_REFUSED_COUNT <= MET_MAX_KINDS, "metrics: raise MET_MAX_KINDS");

/* Sheds happen only under overload, off the normal request path: plain
 * atomics, rendered beside the engine's own refusals (status.c). */
struct srv_stats {
    atomic_uint_fast64_t shed[SRV_SHED_COUNT];
};


/* Reply queue: pool threads push, the loop pops. Guarded by lock. */
struct srv_replyq {
    pthread_mutex_t lock;
    struct srv_req *head, *tail; /* guarded by lock */
    int efd;                        /* eventfd the loop polls */
};

struct srv_req;      /* dispatch.h: one request in flight */
struct srv_peer_log; /* loop only: per (peer, kind) log limiter */
struct profile_hint; /* profile_hint.h */


struct srv_req;

struct server {
    const struct lmcd_config *cfg;
    enum wire_profile profile;
    void *zctx;
    void *router;       /* loop only */
    void *monitor;      /* loop only: ROUTER accept events (server/access.h) */
    char endpoint[300];
    int sigfd;          /* loop only */
    struct srv_replyq replyq;
    struct pool *aff_pool;
    struct pool *norm_pool;
    struct engine *engine;
    /* GPU path (src/server/gpu.c): set by server_init, NULL without one */
    const struct transfer_ops *gpu_ops;
    struct transfer_backend *gpu;
    char gpu_why[256]; /* why GPU requests are not served, for their log line */
    struct plugin_sup *plugins;
    struct http_server *http;
    struct srv_stats stats;
    struct srv_peer_log *peer_log; /* loop only */
    struct profile_hint *profile_hint; /* loop only: clients of the other --protocol */
    struct srv_req *parked;        /* loop only: WAIT requests waiting for a job */
    atomic_size_t in_flight;       /* written by the loop only; read by /status: requests in the pools */
    atomic_size_t in_flight_bytes; /* written by the loop only: their bytes (frames + decoded tokens) */
    struct htab peer_flight;       /* loop only: struct peer_flight by peer key, peers with requests in the pools */
    size_t peak_bytes;             /* loop only: in_flight_bytes high-water mark since the last trim */
    atomic_bool job_done_pending;  /* set by engine threads, cleared by the loop */
    atomic_bool healthy;
    atomic_int stopping; /* 0 running, 1 draining, 2 stopped (no more sends) */
    uint64_t started_ns;
    uint64_t watchdog_ns;      /* loop only: systemd WATCHDOG=1 every this/2; 0 = off */
    uint64_t watchdog_next_ns; /* loop only */
};

/* Creates the context, binds the ROUTER, starts the pools. 0 or -errno
 * (the caller logs and exits 1). */
int server_init(struct server *s, const struct lmcd_config *cfg, enum wire_profile profile,
                struct engine *engine, int sigfd);
/* Runs the loop until SIGINT/SIGTERM/SIGQUIT arrives on sigfd; returns the
 * signal, or 0 when the loop itself failed (logged). */
int server_run(struct server *s);

/* GPU path (src/server/gpu.c): opens the transfer backend the config and
 * host allow, logging one line either way; never fails the start. */
void srv_gpu_open(struct server *s);
void srv_gpu_close(struct server *s);
/* The GPU path for /status (pinning progress, objects by copy path) and
 * /metrics (lmcd_gpu_*); any thread. */
json_t *srv_gpu_status_json(struct server *s);
void srv_gpu_metrics(FILE *b, struct server *s);
/* The engine's on_reap hook (ctx: the server): closes a reaped worker's GPU
 * registration without waiting on the GPU. Any thread; safe before
 * srv_gpu_open and after srv_gpu_close (then a no-op). */
void srv_gpu_on_reap(void *ctx, int64_t instance_id);
/* A PING from a worker: one line when it is a reaped GPU worker that has
 * not registered again. Never waits (the loop thread calls it). */
void srv_gpu_on_ping(int64_t instance_id);
/* Stops intake: the pools run what they hold for up to
 * --stop-timeout-seconds while their replies go out; what is still queued
 * then gets its safe reply (spec 9.3) without running. Replies get
 * timeout_ms to leave, then the socket is closed. */
void server_stop(struct server *s, int timeout_ms);
/* Frees what server_init made. */
void server_destroy(struct server *s);

/* Snapshots for HTTP (any thread). */
json_t *server_status_json(struct server *s);
/* Prometheus text, malloc'd; plugins: GET /plugins' array, or NULL. */
char *server_metrics_text(struct server *s, json_t *plugins);

/* Loop only (notify.c): sends systemd's WATCHDOG=1 when due and returns
 * the poll timeout (ms, -1 = none) shortened to the next ping. */
int server_watchdog(struct server *s, int timeout_ms);

/* Called by the engine (any thread) when a lookup job finished. */
void server_on_job_done(void *ctx, const char *request_id, size_t len);

#endif
