/*
 * loop.c: the ROUTER loop. See server.h for the thread picture.
 *
 * Robustness rules (spec mp_protocol.md 9): nothing a peer sends can stop
 * the loop. Every malformed message is counted, logged at most once a
 * minute per (peer, kind), and dropped (or answered with an error frame in
 * 2609 behind --send-error-frames); the next good request of the same peer
 * is served as usual.
 */
#define LOG_MODULE "lmcd.server"
#include "server/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <malloc.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>
#include <xxhash.h>

#include "engine/engine.h"
#include "server/access.h"
#include "server/dispatch.h"
#include "server/profile_hint.h"
#include "util/clock.h"
#include "util/log.h"

#define RECV_BATCH 256        /* messages per wakeup before polling again */
#define REPLY_EVERY 4         /* while reading a batch, send finished replies every this many */
/*
 * Requests handed to the pools and not yet answered. Past this the loop stops
 * reading the socket, so a client that sends faster than lmcd serves fills
 * ZeroMQ's queues (its high-water mark pushes back on the sender) instead of
 * lmcd's memory. Loop thread only.
 */
#define MAX_IN_FLIGHT 8192
#define REPLY_HWM 65536 /* replies queued per peer before ZeroMQ drops one */
#define MAX_FRAMES (1u << 16) /* frames per message; more is oversize */
#define PEER_LOG_SLOTS 512

/* ------------------------------------------------------------ peer log */

struct peer_log_entry {
    uint64_t peer; /* XXH64 of the identity; 0 = free slot */
    uint8_t kind;
    uint64_t last_ms;
    uint32_t suppressed;
};

struct srv_peer_log {
    struct peer_log_entry e[PEER_LOG_SLOTS];
};

static void hex_id(const zmq_msg_t *id, char *buf, size_t cap)
{
    const uint8_t *p = zmq_msg_data((zmq_msg_t *)id);
    size_t n = zmq_msg_size((zmq_msg_t *)id), o = 0;
    for (size_t i = 0; i < n && o + 3 < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%02x", p[i]);
    if (!n)
        snprintf(buf, cap, "-");
}

/*
 * Returns 1 when a line about (peer, kind) may be logged now; *supp gets the
 * lines held back since. Loop thread only. A full table forgets the entry
 * logged longest ago, so a flood of new peers still cannot flood the log by
 * more than one line per new peer.
 */
static int peer_log_ok(struct server *s, const zmq_msg_t *id, unsigned kind, uint32_t *supp)
{
    uint64_t peer = XXH3_64bits(zmq_msg_data((zmq_msg_t *)id), zmq_msg_size((zmq_msg_t *)id)) | 1;
    uint64_t now = clock_mono_ms();
    struct peer_log_entry *oldest = &s->peer_log->e[0];
    *supp = 0;
    for (size_t i = 0; i < PEER_LOG_SLOTS; i++) {
        struct peer_log_entry *e = &s->peer_log->e[i];
        if (e->peer == peer && e->kind == kind) {
            if (now - e->last_ms < 60000) {
                e->suppressed++;
                return 0;
            }
            *supp = e->suppressed;
            e->suppressed = 0;
            e->last_ms = now;
            return 1;
        }
        if (e->last_ms < oldest->last_ms)
            oldest = e;
    }
    *oldest = (struct peer_log_entry){ peer, (uint8_t)kind, now, 0 };
    return 1;
}

static void bad_input(struct server *s, const zmq_msg_t *id, enum srv_bad kind, const char *what)
{
    static const char *const names[] = {
#define SRV_BAD_TEXT_(sym, name, text) text,
        SRV_BAD_KINDS(SRV_BAD_TEXT_)
#undef SRV_BAD_TEXT_
    };
    metrics_add(MET_BAD_INPUT + (unsigned)kind, 1);
    uint32_t supp;
    if (!peer_log_ok(s, id, kind, &supp))
        return;
    char peer[80];
    hex_id(id, peer, sizeof(peer));
    log_warn("dropped a request from peer %s: %s: %s (logged once a minute per peer; %u similar dropped since)",
             peer, names[kind], what, supp);
}

/* ------------------------------------------------------------ in flight */

/* What one peer has in the pools (loop only). */
struct peer_flight {
    struct htab_node node; /* key = &key */
    uint64_t key;
    size_t count, bytes;
};

static struct peer_flight *flight_find(struct server *s, uint64_t key)
{
    struct htab_node *n = htab_find(&s->peer_flight, &key, sizeof(key));
    return n ? htab_entry(n, struct peer_flight, node) : NULL;
}

/* Counts r as in the pools. 0 or -ENOMEM. */
static int flight_add(struct server *s, struct srv_req *r)
{
    struct peer_flight *f = flight_find(s, r->peer);
    if (!f) {
        if (!(f = calloc(1, sizeof(*f))))
            return -ENOMEM;
        f->key = r->peer;
        f->node.key = &f->key;
        f->node.key_len = sizeof(f->key);
        if (htab_insert(&s->peer_flight, &f->node)) {
            free(f);
            return -ENOMEM;
        }
    }
    f->count++;
    f->bytes += r->bytes;
    s->in_flight++;
    s->in_flight_bytes += r->bytes;
    if (s->in_flight_bytes > s->peak_bytes)
        s->peak_bytes = s->in_flight_bytes;
    return 0;
}

/* r left the pools (its reply is back on the loop). */
static void flight_sub(struct server *s, struct srv_req *r)
{
    s->in_flight--;
    s->in_flight_bytes -= r->bytes;
    struct peer_flight *f = flight_find(s, r->peer);
    if (f && --f->count == 0) {
        htab_remove(&s->peer_flight, &f->node);
        free(f);
    } else if (f) {
        f->bytes -= r->bytes;
    }
}

/*
 * Whether r may join its peer's queued requests: the refusal reason, or
 * SRV_SHED_COUNT when it may. A peer with nothing queued is always
 * admitted (so a single request larger than the byte cap is still served);
 * the global caps are back-pressure instead (server_run stops reading).
 */
static enum srv_shed flight_admit(struct server *s, const struct srv_req *r)
{
    const struct peer_flight *f = flight_find(s, r->peer);
    if (!f)
        return SRV_SHED_COUNT;
    if (f->count >= (size_t)s->cfg->mp.max_peer_in_flight)
        return SRV_SHED_PEER_COUNT;
    if (f->bytes + r->bytes > (size_t)s->cfg->mp.max_peer_in_flight_bytes)
        return SRV_SHED_PEER_BYTES;
    return SRV_SHED_COUNT;
}

/*
 * Fills r's safe reply (spec 9.3) in place of running it and counts the
 * refusal. false when the op has none (a registration): the caller decides.
 * Any thread that owns r.
 */
static bool shed_safe(struct server *s, struct srv_req *r, enum srv_shed kind)
{
    if (wire_resp_safe(r->req.op, &r->resp))
        return false;
    atomic_fetch_add(&s->stats.shed[kind], 1);
    return true;
}

/* One line per (peer, reason) a minute at most. Loop only. */
static void shed_log(struct server *s, const struct srv_req *r, enum srv_shed kind)
{
    static const char *const texts[] = {
#define SRV_SHED_TEXT_(sym, name, text) text,
        SRV_SHED_KINDS(SRV_SHED_TEXT_)
#undef SRV_SHED_TEXT_
    };
    uint32_t supp;
    if (!peer_log_ok(s, &r->frames[0], SRV_BAD_COUNT + kind, &supp))
        return;
    char peer[80];
    hex_id(&r->frames[0], peer, sizeof(peer));
    log_warn("answered a %s from peer %s with its safe reply without running it: %s (logged once a minute per "
             "peer; %u similar since)", r->req.op_name, peer, texts[kind], supp);
}

/* ------------------------------------------------------------ requests */

static void req_free(struct server *s, struct srv_req *r)
{
    if (!r)
        return;
    dispatch_req_cleanup(s, r);
    wire_req_free(&r->req);
    wire_resp_free(&r->resp);
    wire_buf_free(&r->out);
    for (size_t i = 0; i < r->n_frames; i++)
        zmq_msg_close(&r->frames[i]);
    free(r->frames);
    free(r);
}

static struct srv_req *req_new(struct server *s)
{
    struct srv_req *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->s = s;
    wire_req_init(&r->req);
    wire_resp_init(&r->resp);
    wire_buf_init(&r->out);
    return r;
}

/* Encodes r's reply into r->out (any thread). */
static void encode_reply(struct srv_req *r)
{
    if (r->no_reply)
        return;
    int rc = wire_encode_reply(&r->req, &r->resp, &r->out, &r->has_frame);
    if (rc) {
        log_error("cannot encode the %s reply (%s): request left unanswered", r->req.op_name, wire_strerror(rc));
        r->no_reply = true;
    }
}

/* Pool threads hand finished requests back to the loop. */
static void replyq_push(struct server *s, struct srv_req *r)
{
    r->qnext = NULL;
    pthread_mutex_lock(&s->replyq.lock);
    if (s->replyq.tail)
        s->replyq.tail->qnext = r;
    else
        s->replyq.head = r;
    s->replyq.tail = r;
    pthread_mutex_unlock(&s->replyq.lock);
    uint64_t one = 1;
    /* The counter saturating (EAGAIN) still leaves the fd readable: fine. */
    if (write(s->replyq.efd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        log_error("cannot wake the loop (eventfd write): %s", strerror(errno));
}

static void run_job(struct pool_job *job)
{
    struct srv_req *r = (struct srv_req *)job;
    srv_handler_fn fn = dispatch_handler(r->req.op);
    fn(r->s, r);
    encode_reply(r);
    replyq_push(r->s, r);
}

/* ------------------------------------------------------------ sending */

/*
 * The chunk frames reach ZeroMQ's I/O thread through libzmq's own queues,
 * which ThreadSanitizer cannot see (Debian's libzmq is not instrumented);
 * these annotations state that hand-off so TSan checks the rest. No-ops in
 * other builds.
 */
#if defined(__SANITIZE_THREAD__)
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define TSAN_ACQUIRE(p) __tsan_acquire(p)
#define TSAN_RELEASE(p) __tsan_release(p)
#else
#define TSAN_ACQUIRE(p) ((void)(p))
#define TSAN_RELEASE(p) ((void)(p))
#endif

struct inline_hold {
    struct engine *engine;
    struct engine_inline_read rd;
    atomic_int refs;
};

/* ZeroMQ's free callback for zero-copy chunk frames (its I/O thread). */
static void inline_frame_free(void *data, void *hint)
{
    (void)data;
    struct inline_hold *h = hint;
    TSAN_ACQUIRE(h);
    if (atomic_fetch_sub(&h->refs, 1) == 1) {
        engine_inline_release(h->engine, &h->rd);
        free(h);
    }
}

static int send_msg(struct server *s, zmq_msg_t *m, int more)
{
    if (zmq_msg_send(m, s->router, more ? ZMQ_SNDMORE : 0) < 0) {
        log_warn("cannot send a reply frame: %s", zmq_strerror(zmq_errno()));
        return -1;
    }
    return 0;
}

static void send_inline_frames(struct server *s, struct srv_req *r)
{
    size_t n = r->inline_read.n;
    struct inline_hold *h = malloc(sizeof(*h));
    if (!h) {
        zmq_send(s->router, "", 0, 0); /* end the message; chunks are lost, locks released below */
        return;
    }
    h->engine = s->engine;
    h->rd = r->inline_read;
    atomic_init(&h->refs, (int)n);
    r->has_inline = false; /* the frames own the locks now */
    for (size_t i = 0; i < n; i++) {
        zmq_msg_t m;
        zmq_msg_init_data(&m, h->rd.chunks[i].iov_base, h->rd.chunks[i].iov_len, inline_frame_free, h);
        TSAN_RELEASE(h);
        if (zmq_msg_send(&m, s->router, i + 1 < n ? ZMQ_SNDMORE : 0) < 0)
            zmq_msg_close(&m); /* runs the free callback */
    }
}

/* Sends [identity, uid, type, response?, chunks...] and frees r. Loop only. */
static void send_reply(struct server *s, struct srv_req *r)
{
    if (r->no_reply || atomic_load(&s->stopping) == 2)
        goto done;
    bool raw = r->has_inline && r->inline_read.n > 0 && r->has_frame;
    if (send_msg(s, &r->frames[0], 1) || send_msg(s, &r->frames[1], 1) ||
        send_msg(s, &r->frames[2], r->has_frame || r->error_frame))
        goto done;
    if (r->error_frame) {
        struct wire_buf marker, map;
        wire_buf_init(&marker);
        wire_buf_init(&map);
        if (wire_encode_error(r->error_type, r->error_msg, &marker, &map) == 0) {
            zmq_send(s->router, marker.data, marker.len, ZMQ_SNDMORE);
            zmq_send(s->router, map.data, map.len, 0);
        } else {
            zmq_send(s->router, WIRE_ERROR_MARKER, strlen(WIRE_ERROR_MARKER), 0);
        }
        wire_buf_free(&marker);
        wire_buf_free(&map);
    } else if (r->has_frame) {
        zmq_send(s->router, r->out.data, r->out.len, raw ? ZMQ_SNDMORE : 0);
        if (raw)
            send_inline_frames(s, r);
    }
    metrics_add(MET_REPLIES, 1);
done:
    if (r->t0_ns) /* one writer (this thread) per histogram shard: no shared line */
        metrics_observe_ns(MET_H_OP_LATENCY + (unsigned)r->req.op, clock_mono_ns() - r->t0_ns);
    req_free(s, r);
}

/* Takes the whole reply queue (oldest first). */
static struct srv_req *replyq_take(struct server *s)
{
    pthread_mutex_lock(&s->replyq.lock);
    struct srv_req *r = s->replyq.head;
    s->replyq.head = s->replyq.tail = NULL;
    pthread_mutex_unlock(&s->replyq.lock);
    return r;
}

/*
 * After a burst of large requests, freed message buffers stay spread over
 * the allocator's arenas (ZeroMQ's I/O thread allocates them, the pools and
 * the loop free them); once the burst is over, give those pages back.
 */
#define TRIM_AFTER_PEAK (64u << 20)
static void trim_after_burst(struct server *s)
{
    static uint64_t last_ms; /* loop only */
    if (s->in_flight == 0 && s->peak_bytes >= TRIM_AFTER_PEAK && clock_mono_ms() - last_ms >= 1000) {
        malloc_trim(0);
        s->peak_bytes = 0;
        last_ms = clock_mono_ms();
    }
}

/* Sends the finished replies; true when there were any. */
static bool drain_replies(struct server *s)
{
    uint64_t v;
    if (read(s->replyq.efd, &v, sizeof(v)) < 0 && errno != EAGAIN)
        log_error("reply eventfd read: %s", strerror(errno));
    struct srv_req *r = replyq_take(s);
    bool sent = r != NULL;
    while (r) {
        struct srv_req *next = r->qnext;
        flight_sub(s, r);
        send_reply(s, r);
        r = next;
    }
    trim_after_burst(s);
    return sent;
}

/* ------------------------------------------------------------ WAIT parking */

static void park(struct server *s, struct srv_req *r)
{
    double t = r->req.timeout;
    if (!(t > 0))
        t = 0;
    if (t > 86400)
        t = 86400;
    r->deadline_ns = clock_mono_ns() + (uint64_t)(t * 1e9);
    r->next = s->parked;
    s->parked = r;
}

/* Answers parked WAITs whose job finished or whose deadline passed; true
 * when it answered any. */
static bool check_parked(struct server *s, bool recheck_jobs)
{
    bool sent = false;
    uint64_t now = clock_mono_ns();
    struct srv_req **pp = &s->parked;
    while (*pp) {
        struct srv_req *r = *pp;
        bool ready = recheck_jobs && dispatch_wait_ready(s, r);
        if (!ready && now >= r->deadline_ns) {
            dispatch_wait_timeout(r);
            ready = true;
        }
        if (ready) {
            *pp = r->next;
            encode_reply(r);
            send_reply(s, r);
            sent = true;
        } else {
            pp = &r->next;
        }
    }
    return sent;
}

/*
 * How long the loop may sleep with WAITs parked: until the nearest deadline,
 * but at most PARKED_RECHECK_MS, because a WAIT is also parked when its
 * session was merely busy (another request of the same id held it), which
 * no job-done event announces.
 */
#define PARKED_RECHECK_MS 5
static int parked_timeout_ms(struct server *s)
{
    if (!s->parked)
        return -1;
    uint64_t now = clock_mono_ns(), min = UINT64_MAX;
    for (struct srv_req *r = s->parked; r; r = r->next)
        if (r->deadline_ns < min)
            min = r->deadline_ns;
    int ms = min <= now ? 0 : (int)((min - now) / 1000000 + 1);
    return ms < PARKED_RECHECK_MS ? ms : PARKED_RECHECK_MS;
}

void server_on_job_done(void *ctx, const char *request_id, size_t len)
{
    (void)request_id;
    (void)len;
    struct server *s = ctx;
    atomic_store(&s->job_done_pending, true);
    uint64_t one = 1;
    if (write(s->replyq.efd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        log_error("cannot wake the loop for a finished job: %s", strerror(errno));
}

/* ------------------------------------------------------------ receiving */

static void handle_decode_error(struct server *s, struct srv_req *r, int rc)
{
    char what[256];
    if (rc == -WIRE_EUNSERVED) {
        snprintf(what, sizeof(what), "%s (%s)", r->req.op_name ? r->req.op_name : "?", wire_strerror(rc));
        bad_input(s, &r->frames[0], SRV_BAD_UNSERVED, what);
        req_free(s, r);
        return;
    }
    unsigned code = (unsigned)(-rc - WIRE_EFRAMES);
    if (code < 32)
        metrics_add(MET_DECODE_ERRORS + code, 1);
    snprintf(what, sizeof(what), "%s%s%s", wire_strerror(rc), r->req.op_name ? " in " : "",
             r->req.op_name ? r->req.op_name : "");
    bad_input(s, &r->frames[0], SRV_BAD_DECODE, what);
    /* The uid can be echoed only when it decoded; 2604 clients must never
     * see an error frame (their decoder thread would die, spec 9.2). */
    if (s->cfg->mp.send_error_frames && s->profile == WIRE_PROFILE_2609 && rc != -WIRE_EUID &&
        rc != -WIRE_EFRAMES) {
        r->error_frame = true;
        snprintf(r->error_type, sizeof(r->error_type), "bad_request");
        snprintf(r->error_msg, sizeof(r->error_msg), "%s", what);
        send_reply(s, r);
        return;
    }
    req_free(s, r);
}

static void dispatch(struct server *s, struct srv_req *r)
{
    size_t n = r->n_frames - 1;
    struct wire_frame stackf[16], *wf = n <= 16 ? stackf : calloc(n, sizeof(*wf));
    if (!wf) {
        bad_input(s, &r->frames[0], SRV_BAD_OVERSIZE, "out of memory for the frame table");
        req_free(s, r);
        return;
    }
    for (size_t i = 0; i < n; i++)
        wf[i] = (struct wire_frame){ zmq_msg_data(&r->frames[i + 1]), zmq_msg_size(&r->frames[i + 1]) };
    int rc = wire_decode_request(s->profile, wf, n, &r->req);
    if (rc) /* a client of the other --protocol? (logged once per peer) */
        profile_hint_note(s->profile_hint, s->profile, &r->frames[0], wf, n, &r->req, rc);
    if (wf != stackf)
        free(wf);
    if (rc) {
        handle_decode_error(s, r, rc);
        return;
    }
    metrics_add(MET_REQUESTS + (unsigned)r->req.op, 1);
    r->t0_ns = clock_mono_ns();
    if (r->req.op == WIRE_OP_WAIT_PREFETCH_STATUS) {
        /* Never holds a pool thread: answered now, or parked on the loop. */
        if (dispatch_wait_ready(s, r)) {
            encode_reply(r);
            send_reply(s, r);
        } else {
            park(s, r);
        }
        return;
    }
    srv_handler_fn fn = dispatch_handler(r->req.op);
    if (!fn) {
        bad_input(s, &r->frames[0], SRV_BAD_UNSERVED, r->req.op_name);
        req_free(s, r);
        return;
    }
    if (srv_access_refuse_op(s, r)) {
        encode_reply(r);
        send_reply(s, r);
        return;
    }
    enum wire_class cls = dispatch_run_class(r);
    r->peer = XXH3_64bits(zmq_msg_data(&r->frames[0]), zmq_msg_size(&r->frames[0]));
    /* a data op (a worker's PREPARE/COMMIT) only with nothing of its peer's
     * queued ahead of it, so the peer's order holds */
    if (cls == WIRE_CLASS_SYNC ||
        ((cls != WIRE_CLASS_AFFINITY || !flight_find(s, r->peer)) && dispatch_try_on_loop(s, r))) {
        if (cls == WIRE_CLASS_SYNC)
            fn(s, r);
        encode_reply(r);
        send_reply(s, r);
        return;
    }
    r->job.fn = run_job;
    struct pool *p = cls == WIRE_CLASS_AFFINITY ? s->aff_pool : s->norm_pool;
    r->bytes += (size_t)r->req.key.n_tokens * sizeof(uint32_t); /* the decoded token list */
    enum srv_shed why = flight_admit(s, r);
    rc = -ENOMEM;
    if (why == SRV_SHED_COUNT && (rc = flight_add(s, r)) == 0) {
        if ((rc = pool_submit(p, r->peer, &r->job)) == 0)
            return;
        flight_sub(s, r);
    }
    if (rc == -ESHUTDOWN) {
        log_warn("%s arrived while stopping: dropped", r->req.op_name);
        req_free(s, r);
        return;
    }
    if (why == SRV_SHED_COUNT)
        why = SRV_SHED_NOMEM;
    if (!shed_safe(s, r, why)) { /* no safe reply (a registration): run it here, as the sync ops */
        fn(s, r);
        encode_reply(r);
        send_reply(s, r);
        return;
    }
    shed_log(s, r, why);
    encode_reply(r);
    send_reply(s, r);
}

/* Receives one whole multipart message. 1 = got one, 0 = none waiting
 * (EAGAIN), -1 = none read for another reason (try again later). */
static int recv_one(struct server *s)
{
    struct srv_req *r = req_new(s);
    if (!r)
        return -1;
    size_t cap = 0, total = 0;
    bool oversize = false, more = true;
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, s->router, r->n_frames ? 0 : ZMQ_DONTWAIT) < 0) {
            int e = zmq_errno();
            zmq_msg_close(&m);
            if (e != EAGAIN && e != EINTR)
                log_error("ZeroMQ receive failed: %s", zmq_strerror(e));
            int none = e == EAGAIN && r->n_frames == 0;
            req_free(s, r);
            return none ? 0 : -1;
        }
        more = zmq_msg_more(&m);
        total += zmq_msg_size(&m);
        if (r->n_frames >= MAX_FRAMES || total > (size_t)s->cfg->mp.max_message_bytes)
            oversize = true;
        if (oversize && r->n_frames >= 1) { /* keep the identity for the log, drop the rest */
            zmq_msg_close(&m);
            continue;
        }
        if (r->n_frames == cap) {
            size_t ncap = cap ? cap * 2 : 8;
            zmq_msg_t *nf = realloc(r->frames, ncap * sizeof(*nf));
            if (!nf) {
                zmq_msg_close(&m);
                oversize = true;
                continue;
            }
            r->frames = nf;
            cap = ncap;
        }
        zmq_msg_init(&r->frames[r->n_frames]);
        zmq_msg_move(&r->frames[r->n_frames++], &m);
        zmq_msg_close(&m);
    }
    if (oversize) {
        char what[96];
        snprintf(what, sizeof(what), "%zu bytes (limit %lld)", total, (long long)s->cfg->mp.max_message_bytes);
        bad_input(s, &r->frames[0], SRV_BAD_OVERSIZE, what);
        req_free(s, r);
        return 1;
    }
    if (r->n_frames < 3) {
        bad_input(s, &r->frames[0], SRV_BAD_FEW_FRAMES, "need identity, uid and type");
        req_free(s, r);
        return 1;
    }
    r->bytes = total;
    dispatch(s, r);
    return 1;
}

/* ------------------------------------------------------------ lifecycle */

/*
 * LMCache binds "tcp://<host>:<port>". libzmq binds only IP literals, "*"
 * or interface names, so a host name (the default "localhost") is resolved
 * here and every address it has is bound; the log keeps the given form.
 */
static void build_endpoint(struct server *s)
{
    const char *h = s->cfg->mp.host;
    if (!strncmp(h, "ipc://", 6) || !strncmp(h, "tcp://", 6) || !strncmp(h, "inproc://", 9))
        snprintf(s->endpoint, sizeof(s->endpoint), "%s", h);
    else if (strchr(h, ':'))
        snprintf(s->endpoint, sizeof(s->endpoint), "tcp://[%s]:%d", h, s->cfg->mp.port);
    else
        snprintf(s->endpoint, sizeof(s->endpoint), "tcp://%s:%d", h, s->cfg->mp.port);
}

static int bind_one(struct server *s, const char *ep, bool ipv6)
{
    if (!strncmp(ep, "ipc://", 6))
        return srv_access_bind_ipc(s, ep);
    int v6 = ipv6;
    zmq_setsockopt(s->router, ZMQ_IPV6, &v6, sizeof(v6));
    if (zmq_bind(s->router, ep) < 0) {
        int e = zmq_errno();
        log_error("cannot bind the ZeroMQ ROUTER to %s: %s", ep, zmq_strerror(e));
        return -e;
    }
    return 0;
}

static int bind_router(struct server *s)
{
    const char *h = s->cfg->mp.host;
    char ep[320];
    if (strncmp(s->endpoint, "tcp://", 6) || strchr(h, ':') || strncmp(h, "tcp://", 6) == 0 || !strcmp(h, "*"))
        return bind_one(s, s->endpoint, strchr(s->endpoint, '[') != NULL);
    struct in6_addr a6;
    struct in_addr a4;
    if (inet_pton(AF_INET, h, &a4) == 1 || inet_pton(AF_INET6, h, &a6) == 1)
        return bind_one(s, s->endpoint, false);
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *ai = NULL;
    int e = getaddrinfo(h, NULL, &hints, &ai);
    if (e) {
        log_error("cannot resolve --host %s: %s", h, gai_strerror(e));
        return -EINVAL;
    }
    int bound = 0, rc = -EADDRNOTAVAIL;
    for (struct addrinfo *p = ai; p; p = p->ai_next) {
        char ip[INET6_ADDRSTRLEN];
        const void *src = p->ai_family == AF_INET ? (const void *)&((struct sockaddr_in *)p->ai_addr)->sin_addr
                                                   : (const void *)&((struct sockaddr_in6 *)p->ai_addr)->sin6_addr;
        inet_ntop(p->ai_family, src, ip, sizeof(ip));
        snprintf(ep, sizeof(ep), p->ai_family == AF_INET6 ? "tcp://[%s]:%d" : "tcp://%s:%d", ip, s->cfg->mp.port);
        bool dup = false; /* getaddrinfo lists an address once per socket type */
        for (struct addrinfo *q = ai; q != p && !dup; q = q->ai_next)
            dup = q->ai_family == p->ai_family && q->ai_addrlen == p->ai_addrlen &&
                  !memcmp(q->ai_addr, p->ai_addr, p->ai_addrlen);
        if (dup)
            continue;
        if ((rc = bind_one(s, ep, p->ai_family == AF_INET6)) == 0)
            bound++;
        else if (p->ai_family == AF_INET6 && bound)
            rc = 0; /* a host without IPv6 loopback still serves IPv4 */
    }
    freeaddrinfo(ai);
    return bound ? 0 : rc;
}

int server_init(struct server *s, const struct lmcd_config *cfg, enum wire_profile profile, struct engine *engine,
                int sigfd)
{
    int rc = -EIO;
    memset(s, 0, sizeof(*s));
    s->cfg = cfg;
    s->profile = profile;
    s->engine = engine;
    s->sigfd = sigfd;
    s->replyq.efd = -1;
    s->started_ns = clock_mono_ns();
    srv_gpu_open(s); /* before the pools: their threads read s->gpu */
    atomic_init(&s->healthy, true);
    htab_init(&s->peer_flight);
    pthread_mutex_init(&s->replyq.lock, NULL);
    s->peer_log = calloc(1, sizeof(*s->peer_log));
    if (!s->peer_log || profile_hint_new(&s->profile_hint))
        return -ENOMEM;
    s->replyq.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (s->replyq.efd < 0) {
        rc = -errno;
        log_error("cannot create the reply eventfd: %s", strerror(errno));
        return rc;
    }
    s->zctx = zmq_ctx_new();
    if (!s->zctx) {
        log_error("cannot create a ZeroMQ context: %s", zmq_strerror(zmq_errno()));
        return -EIO;
    }
    s->router = zmq_socket(s->zctx, ZMQ_ROUTER);
    if (!s->router) {
        log_error("cannot create the ROUTER socket: %s", zmq_strerror(zmq_errno()));
        return -EIO;
    }
    int64_t maxmsg = cfg->mp.max_message_bytes;
    int linger = 500;
    /* ZeroMQ drops a ROUTER's reply when the peer's outgoing queue holds
     * SNDHWM messages (1000 by default). lmcd answers small requests far
     * faster than its I/O thread flushes them in a burst, so the default
     * would drop replies to a client that reads them as fast as it can;
     * the in-flight cap (MAX_IN_FLIGHT) bounds what queues up here. */
    int sndhwm = REPLY_HWM;
    zmq_setsockopt(s->router, ZMQ_SNDHWM, &sndhwm, sizeof(sndhwm));
    zmq_setsockopt(s->router, ZMQ_MAXMSGSIZE, &maxmsg, sizeof(maxmsg));
    zmq_setsockopt(s->router, ZMQ_LINGER, &linger, sizeof(linger));
    build_endpoint(s);
    if ((rc = srv_access_prepare(s)) || (rc = bind_router(s)))
        return rc;
    srv_access_check_bound(s);
    if ((rc = pool_create("gpu", (unsigned)cfg->mp.max_gpu_workers, true, &s->aff_pool)) ||
        (rc = pool_create("cpu", (unsigned)cfg->mp.max_cpu_workers, false, &s->norm_pool))) {
        log_error("cannot start the worker pools: %s", strerror(-rc));
        return rc;
    }
    return 0;
}

/* Back-pressure: below both global caps the loop reads the socket. */
static bool can_read(const struct server *s)
{
    return s->in_flight < MAX_IN_FLIGHT && s->in_flight_bytes < (size_t)s->cfg->mp.max_in_flight_bytes;
}

int server_run(struct server *s)
{
    /*
     * One poll(2) over plain fds: the ROUTER by its ZMQ_FD, the reply
     * eventfd, the signalfd and the access monitor's ZMQ_FD. zmq_poll on
     * the socket itself asks it for ZMQ_EVENTS before and after every sleep
     * (each a mailbox check: a poll and a getpid), where this loop reads
     * until EAGAIN instead. A ZMQ_FD signals only that commands arrived,
     * not that messages wait (edge, not level): so `zin` stays set until a
     * receive says EAGAIN, and is set again after anything that may have
     * processed the socket's commands without reading (a send: a reply
     * sent outside the receive loop can take the command that announced a
     * message); while it is set the loop does not sleep. The monitor's fd is read
     * the same way by srv_access_on_monitor() (until nothing is left; one
     * drain first, for anything queued before).
     */
    int zfd = -1, mon_fd = -1;
    size_t fd_len = sizeof(zfd);
    if (zmq_getsockopt(s->router, ZMQ_FD, &zfd, &fd_len) < 0) {
        log_error("cannot get the ROUTER's file descriptor: %s", zmq_strerror(zmq_errno()));
        return 0;
    }
    fd_len = sizeof(mon_fd);
    if (srv_access_monitor(s) && zmq_getsockopt(srv_access_monitor(s), ZMQ_FD, &mon_fd, &fd_len) < 0) {
        log_error("cannot get the access monitor's file descriptor: %s", zmq_strerror(zmq_errno()));
        return 0;
    }
    struct pollfd fds[4] = {
        { zfd, POLLIN, 0 },
        { s->replyq.efd, POLLIN, 0 },
        { s->sigfd, POLLIN, 0 },
        { mon_fd, POLLIN, 0 },
    };
    nfds_t n_fds = mon_fd >= 0 ? 4 : 3;
    if (mon_fd >= 0)
        srv_access_on_monitor(s);
    bool zin = true; /* the ROUTER may hold messages not yet read */
    for (;;) {
        bool readable = can_read(s);
        fds[0].fd = readable ? zfd : -1; /* back-pressure: not read, not polled */
        int rc = poll(fds, n_fds, readable && zin ? 0 : server_watchdog(s, parked_timeout_ms(s)));
        if (rc < 0) {
            if (errno == EINTR)
                continue;
            log_error("poll failed: %s", strerror(errno));
            return 0; /* no signal: main() says the loop failed */
        }
        if (fds[2].revents & POLLIN) {
            struct signalfd_siginfo si;
            if (read(s->sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
                if (si.ssi_signo == SIGINT || si.ssi_signo == SIGTERM || si.ssi_signo == SIGQUIT)
                    return (int)si.ssi_signo;
                log_info("ignoring signal %u (%s)", si.ssi_signo, strsignal((int)si.ssi_signo));
            }
        }
        if (n_fds > 3 && (fds[3].revents & POLLIN))
            srv_access_on_monitor(s);
        if (fds[1].revents & POLLIN) {
            if (drain_replies(s))
                zin = true;
            if (atomic_exchange(&s->job_done_pending, false) && check_parked(s, true))
                zin = true;
        }
        if (fds[0].revents & POLLIN)
            zin = true;
        for (int i = 0; zin && i < RECV_BATCH && can_read(s); i++) {
            int got = recv_one(s);
            if (got <= 0) {
                zin = got < 0; /* EAGAIN: drained; otherwise read again */
                break;
            }
            if (i % REPLY_EVERY == REPLY_EVERY - 1)
                drain_replies(s); /* a burst being read must not hold back finished replies */
        }
        if (s->parked && check_parked(s, true))
            zin = true;
    }
}

/* A queued request the stop timeout overtook: its safe reply, not run
 * (none for a registration, which is left unanswered, as a stopping server
 * would leave it). Loop thread, through pool_cancel. */
static struct server *cancel_srv; /* the server being stopped; loop only */
static void cancel_job(struct pool_job *job)
{
    struct srv_req *r = (struct srv_req *)job;
    if (!shed_safe(cancel_srv, r, SRV_SHED_STOPPING))
        r->no_reply = true;
    encode_reply(r);
    replyq_push(cancel_srv, r);
}

void server_stop(struct server *s, int timeout_ms)
{
    atomic_store(&s->stopping, 1);
    /* No more requests in; what the pools hold keeps running and its
     * replies keep going out, up to the stop timeout. */
    pool_close(s->aff_pool);
    pool_close(s->norm_pool);
    uint64_t deadline = clock_mono_ns() + (uint64_t)(s->cfg->mp.stop_timeout_seconds * 1e9);
    if (s->router) {
        while (s->in_flight > 0) {
            uint64_t now = clock_mono_ns();
            if (now >= deadline)
                break;
            uint64_t left_ms = (deadline - now) / 1000000 + 1;
            zmq_pollitem_t it = { NULL, s->replyq.efd, ZMQ_POLLIN, 0 };
            zmq_poll(&it, 1, left_ms < 100 ? (long)left_ms : 100);
            drain_replies(s);
            if (s->parked)
                check_parked(s, true);
        }
    }
    cancel_srv = s;
    size_t cancelled = pool_cancel(s->aff_pool, cancel_job) + pool_cancel(s->norm_pool, cancel_job);
    if (cancelled)
        log_warn("stop timeout (%g s) reached: %zu queued requests answered with their safe replies without "
                 "running", s->cfg->mp.stop_timeout_seconds, cancelled);
    /* Jobs already running finish (one per pool thread at most). */
    pool_destroy(s->aff_pool);
    pool_destroy(s->norm_pool);
    s->aff_pool = s->norm_pool = NULL;
    srv_gpu_close(s); /* after the pools: no handler uses it any more */
    if (s->router) {
        drain_replies(s);
        while (s->parked) { /* a stopping server answers WAITs now: nil */
            struct srv_req *r = s->parked;
            s->parked = r->next;
            dispatch_wait_timeout(r);
            encode_reply(r);
            send_reply(s, r);
        }
        zmq_setsockopt(s->router, ZMQ_LINGER, &timeout_ms, sizeof(timeout_ms));
    }
    atomic_store(&s->stopping, 2);
}

void server_destroy(struct server *s)
{
    if (!s->cfg)
        return; /* server_init never ran */
    pool_destroy(s->aff_pool);
    pool_destroy(s->norm_pool);
    s->aff_pool = s->norm_pool = NULL;
    while (s->parked) {
        struct srv_req *r = s->parked;
        s->parked = r->next;
        req_free(s, r);
    }
    struct srv_req *r = replyq_take(s);
    while (r) {
        struct srv_req *next = r->qnext;
        req_free(s, r);
        r = next;
    }
    struct htab_node *n, *tmp;
    HTAB_FOREACH_SAFE(&s->peer_flight, n, tmp) {
        htab_remove(&s->peer_flight, n);
        free(htab_entry(n, struct peer_flight, node));
    }
    htab_free(&s->peer_flight);
    if (s->router) {
        srv_access_close(s);
        zmq_close(s->router);
    }
    if (s->zctx)
        zmq_ctx_term(s->zctx);
    s->router = s->zctx = NULL;
    if (s->replyq.efd >= 0)
        close(s->replyq.efd);
    s->replyq.efd = -1;
    pthread_mutex_destroy(&s->replyq.lock);
    free(s->peer_log);
    s->peer_log = NULL;
    profile_hint_free(s->profile_hint);
    s->profile_hint = NULL;
}
