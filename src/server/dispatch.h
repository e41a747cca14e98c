/*
 * dispatch: one handler per canonical operation, in a table indexed by
 * enum wire_op (dispatch.c). A handler turns a decoded request into engine
 * calls and a canonical response; it never sees a profile or a socket.
 *
 * A srv_req carries one request from the loop to a pool thread and back:
 * its frames (which the decoded wire_req borrows), the response, and what
 * the reply needs beyond the response frame (zero-copy inline chunks).
 * Ownership moves with it: loop -> pool (handler) -> reply queue -> loop,
 * which sends and frees it. Exactly one thread touches it at a time.
 */
#ifndef LMCD_SERVER_DISPATCH_H
#define LMCD_SERVER_DISPATCH_H

#include <stdbool.h>
#include <stdint.h>
#include <zmq.h>

#include "engine/engine.h"
#include "server/pool.h"
#include "server/server.h"
#include "wire/wire.h"

struct srv_req {
    struct pool_job job; /* first: the pool hands back &job */
    struct server *s;
    zmq_msg_t *frames; /* [0] identity, [1] uid, [2] type, [3..] payload */
    size_t n_frames;
    struct wire_req req;
    struct wire_resp resp;
    bool no_reply; /* the handler leaves the request unanswered (spec 9.3) */
    uint8_t gpu_event[64]; /* STORE/RETRIEVE reply's event handle (resp.event views it) */
    bool error_frame; /* reply is an LMCACHE_RPC_ERROR_V1 frame (2609 opt-in) */
    char error_type[32];
    char error_msg[256];
    /* storage behind resp views the handler made */
    struct engine_slots slots;
    struct wire_slot *wslots;
    struct engine_ed_reply ed;
    struct engine_inline_read inline_read;
    bool has_inline;
    /* the encoded reply (filled by whoever ran the handler) */
    struct wire_buf out;
    bool has_frame;
    /* in-flight accounting (loop only) */
    uint64_t peer;  /* XXH3 of the identity */
    size_t bytes;   /* frames + decoded tokens, counted while in a pool */
    /* WAIT_PREFETCH_STATUS parking (loop only) */
    uint64_t deadline_ns;
    uint64_t t0_ns; /* decoded at (latency histogram); 0 = not counted */
    struct srv_req *next;
    /* reply queue link */
    struct srv_req *qnext;
};

typedef void (*srv_handler_fn)(struct server *s, struct srv_req *r);

/* The handler of an op, or NULL for ops lmcd leaves unanswered. */
srv_handler_fn dispatch_handler(enum wire_op op);

/* PING and QUERY_PREFETCH_STATUS are pool requests that usually need no
 * wait: the loop answers them itself when it can without waiting on any
 * lock a pool thread may hold (a worker's instance, a session a LOOKUP is
 * hashing), saving two thread hand-offs. So are a worker's PREPARE/COMMIT
 * STORE/RETRIEVE (engine.h, the _nowait forms; at most LOOP_MAX_TOKENS
 * tokens), which the loop offers only while nothing of that peer's is in
 * the pools (its order holds). true = r->resp is the answer; false =
 * nothing done, send it to the pool as usual. Loop thread only. */
bool dispatch_try_on_loop(struct server *s, struct srv_req *r);
/* For WAIT_PREFETCH_STATUS: answers r if its job is done (returns true),
 * else leaves it for the loop to park (false). Loop thread only. */
bool dispatch_wait_ready(struct server *s, struct srv_req *r);
/* Fills the nil reply of a WAIT whose deadline passed. */
void dispatch_wait_timeout(struct srv_req *r);

/* Where r runs: its class in the profile table (LMCache's), except
 * REGISTER_KV_CACHE and UNREGISTER_KV_CACHE, which LMCache answers inline
 * but which here may pin all of L1 for DMA (seconds for a large segment) or
 * wait out the worker's queued GPU copies: they run on the affinity pool,
 * in order with the same worker's STORE/RETRIEVE, never on the loop. */
enum wire_class dispatch_run_class(const struct srv_req *r);

/* Releases what a handler attached to r (slots, inline locks...). */
void dispatch_req_cleanup(struct server *s, struct srv_req *r);

/* GPU path (src/server/gpu.c), called when s->gpu is set. 0 = answered
 * (None / (event, ok)); else no reply and *why says what went wrong
 * (-ESTALE: a worker reaped for silence, already logged). */
int srv_gpu_register(struct server *s, struct srv_req *r, char *why, size_t why_len);
int srv_gpu_transfer(struct server *s, struct srv_req *r, const struct engine_key *k, char *why, size_t why_len);

#endif
