/*
 * liblmcd against an in-test ZeroMQ ROUTER on 127.0.0.1.
 *
 * The fake server is a thread that decodes every request with the server's
 * own decoder (wire_decode_request), records what it saw, and answers a
 * canned response with wire_encode_reply, so each test checks both what the
 * client put on the wire and how it reads the reply. Modes make it answer
 * in reverse order, stay silent, or send one undecodable reply.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "lmcd/client.h"
#include "util/clock.h"
#include "wire/wire.h"

/* libzmq is not built with ThreadSanitizer, so the lock-free pipes between
 * the caller and ZeroMQ's I/O thread look like races to it (SAN=thread).
 * Suppress the reports that have a libzmq frame; this test has no other
 * threads sharing client state. */
const char *__tsan_default_suppressions(void);
const char *__tsan_default_suppressions(void) { return "race:libzmq.so\n"; }

#define MAX_FRAMES 32
#define MAX_HELD 16

enum fake_mode { ECHO, REVERSE, SILENT, GARBAGE_ONCE };

struct fmsg {
    zmq_msg_t f[MAX_FRAMES];
    size_t n;
};

/* What the fake server decoded last (guarded by fake.mu). */
struct seen {
    int decode_rc;
    enum wire_op op;
    enum wire_form form;
    size_t n_payload;
    bool has_force, force;
    bool has_instance_id;
    int64_t instance_id;
    int64_t tp_size;
    size_t n_tokens;
    int64_t world_size;
    bool has_worker_id;
    char model[64], request_id[64], dtype[32];
    size_t n_records;
    size_t n_raw, raw_bytes;
    double timeout;
    int64_t num_physical_slots;
};

static struct fake {
    void *ctx, *router;
    char endpoint[128];
    enum wire_profile profile;
    pthread_t th;
    atomic_int stop;
    atomic_int mode;
    int batch; /* REVERSE: answer after this many requests */
    struct fmsg held[MAX_HELD];
    size_t n_held;
    pthread_mutex_t mu;
    struct seen last;
    int answered; /* guarded by mu */
} fk;

static void copy_str(char *dst, size_t cap, struct wire_str s)
{
    size_t n = s.len < cap - 1 ? s.len : cap - 1;
    memcpy(dst, s.ptr ? s.ptr : "", n);
    dst[n] = '\0';
}

static void record(const struct wire_req *r, int rc, size_t n_payload)
{
    struct seen s = { .decode_rc = rc, .op = r->op, .form = r->form, .n_payload = n_payload,
                      .has_force = r->has_force, .force = r->force,
                      .has_instance_id = r->has_instance_id, .instance_id = r->instance_id,
                      .tp_size = r->tp_size, .n_tokens = r->key.n_tokens,
                      .world_size = r->has_key ? r->key.world_size : r->world_size,
                      .has_worker_id = r->key.has_worker_id, .n_records = r->report.n_records,
                      .n_raw = r->n_raw, .timeout = r->timeout,
                      .num_physical_slots = r->ed.num_physical_slots };
    copy_str(s.model, sizeof(s.model), r->has_key ? r->key.model_name : r->model_name);
    copy_str(s.request_id, sizeof(s.request_id), r->has_key ? r->key.request_id : r->request_id);
    copy_str(s.dtype, sizeof(s.dtype), r->ed.dtype_str);
    for (size_t k = 0; k < r->n_raw; k++)
        s.raw_bytes += r->raw[k].len;
    pthread_mutex_lock(&fk.mu);
    fk.last = s;
    pthread_mutex_unlock(&fk.mu);
}

static struct wire_str S(const char *s) { return (struct wire_str){ s, (uint32_t)strlen(s) }; }

static struct wire_slot test_slots[2] = {
    { .offset = 4096, .length = 32768, .ndim = 4, .shape = { 2, 4, 256, 8 }, .dtype = { "bfloat16", 8 } },
    { .offset = 40960, .length = 32768, .ndim = 4, .shape = { 2, 4, 256, 8 }, .dtype = { "bfloat16", 8 } },
};
static int64_t test_indices[2] = { 0, 2 };
static struct wire_str test_names[2] = { { "alpha", 5 }, { "beta", 4 } };

/* The canned answer for a decoded request. */
static void canned(const struct wire_req *r, struct wire_resp *w)
{
    wire_resp_init(w);
    w->kind = wire_op_resp_kind(r->op);
    switch (r->op) {
    case WIRE_OP_GET_CHUNK_SIZE: w->i = 256; break;
    case WIRE_OP_NOOP: w->s = S("OK"); break;
    case WIRE_OP_PING:
    case WIRE_OP_COMMIT_STORE:
    case WIRE_OP_COMMIT_RETRIEVE: w->b = true; break;
    case WIRE_OP_GET_EXPERIMENTAL:
        w->strs = test_names;
        w->n_strs = 2;
        break;
    case WIRE_OP_QUERY_PREFETCH_STATUS:
    case WIRE_OP_WAIT_PREFETCH_STATUS:
    case WIRE_OP_QUERY_PREFETCH_LOOKUP_HITS:
        /* "nil" -> nil; otherwise the id's length, so tests can tell replies apart */
        w->is_nil = r->request_id.len == 3 && !memcmp(r->request_id.ptr, "nil", 3);
        w->i = r->request_id.len;
        break;
    case WIRE_OP_REGISTER_ED_CONTEXT:
        w->shm_name = S("lmcd_test_pool");
        w->pool_size = 1 << 20;
        if (r->ed.dtype_str.len == 4 && !memcmp(r->ed.dtype_str.ptr, "int3", 4)) {
            w->has_error = true;
            w->error = S("unsupported dtype int3");
        }
        break;
    case WIRE_OP_PREPARE_STORE:
        w->slots = test_slots;
        w->chunk_indices = test_indices;
        w->n_slots = 2;
        break;
    case WIRE_OP_PREPARE_RETRIEVE:
        w->success = true;
        w->slots = test_slots;
        w->n_slots = 1;
        break;
    case WIRE_OP_STORE_INLINE: w->i = (int64_t)r->n_raw; break;
    case WIRE_OP_RETRIEVE_INLINE: w->i = 2; break;
    default: break;
    }
}

static void send_part(const void *p, size_t n, bool more)
{
    zmq_send(fk.router, p, n, more ? ZMQ_SNDMORE : 0);
}

static void answer(struct fmsg *m, bool garbage)
{
    struct wire_frame fr[MAX_FRAMES];
    for (size_t k = 1; k < m->n; k++)
        fr[k - 1] = (struct wire_frame){ zmq_msg_data(&m->f[k]), zmq_msg_size(&m->f[k]) };
    struct wire_req req;
    int rc = wire_decode_request(fk.profile, fr, m->n - 1, &req);
    record(&req, rc, m->n >= 3 ? m->n - 3 : 0);
    if (rc == 0) {
        struct wire_resp w;
        struct wire_buf out;
        bool has_frame = false;
        static const uint8_t bad[] = { 0xc1 }; /* the reserved msgpack byte */
        canned(&req, &w);
        wire_buf_init(&out);
        cr_assert_eq(wire_encode_reply(&req, &w, &out, &has_frame), 0);
        bool inline_chunks = req.op == WIRE_OP_RETRIEVE_INLINE && !garbage;
        send_part(zmq_msg_data(&m->f[0]), zmq_msg_size(&m->f[0]), true);
        send_part(fr[0].data, fr[0].len, true);
        send_part(fr[1].data, fr[1].len, has_frame || garbage);
        if (garbage)
            send_part(bad, sizeof(bad), false);
        else if (has_frame)
            send_part(out.data, out.len, inline_chunks);
        if (inline_chunks) {
            send_part("chunk0", 6, true);
            send_part("chunk-one", 9, false);
        }
        wire_buf_free(&out);
        pthread_mutex_lock(&fk.mu);
        fk.answered++;
        pthread_mutex_unlock(&fk.mu);
    }
    wire_req_free(&req);
    for (size_t k = 0; k < m->n; k++)
        zmq_msg_close(&m->f[k]);
    m->n = 0;
}

static bool recv_msg(struct fmsg *m)
{
    m->n = 0;
    for (;;) {
        zmq_msg_t *f = &m->f[m->n < MAX_FRAMES ? m->n : MAX_FRAMES - 1];
        if (m->n == MAX_FRAMES)
            zmq_msg_close(f); /* keep the last slot for overflow; tests stay below */
        zmq_msg_init(f);
        if (zmq_msg_recv(f, fk.router, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(f);
            return m->n > 0;
        }
        if (m->n < MAX_FRAMES)
            m->n++;
        if (!zmq_msg_more(f))
            return true;
    }
}

static void *fake_main(void *arg)
{
    (void)arg;
    while (!atomic_load(&fk.stop)) {
        zmq_pollitem_t it = { .socket = fk.router, .events = ZMQ_POLLIN };
        if (zmq_poll(&it, 1, 20) <= 0)
            continue;
        struct fmsg m;
        while (recv_msg(&m)) {
            int mode = atomic_load(&fk.mode);
            if (mode == SILENT) {
                for (size_t k = 0; k < m.n; k++)
                    zmq_msg_close(&m.f[k]);
            } else if (mode == REVERSE) {
                fk.held[fk.n_held++] = m;
                if ((int)fk.n_held == fk.batch) {
                    while (fk.n_held)
                        answer(&fk.held[--fk.n_held], false);
                }
            } else {
                answer(&m, mode == GARBAGE_ONCE);
                if (mode == GARBAGE_ONCE)
                    atomic_store(&fk.mode, ECHO);
            }
        }
    }
    return NULL;
}

/* batch is set before the fake server's thread starts: it reads it unlocked. */
static void fake_start_batch(enum wire_profile profile, enum fake_mode mode, int batch)
{
    memset(&fk, 0, sizeof(fk));
    pthread_mutex_init(&fk.mu, NULL);
    fk.profile = profile;
    fk.batch = batch;
    atomic_store(&fk.mode, mode);
    fk.ctx = zmq_ctx_new();
    fk.router = zmq_socket(fk.ctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(fk.router, ZMQ_LINGER, &linger, sizeof(linger));
    cr_assert_eq(zmq_bind(fk.router, "tcp://127.0.0.1:*"), 0);
    size_t len = sizeof(fk.endpoint);
    zmq_getsockopt(fk.router, ZMQ_LAST_ENDPOINT, fk.endpoint, &len);
    cr_assert_eq(pthread_create(&fk.th, NULL, fake_main, NULL), 0);
}

static void fake_start(enum wire_profile profile, enum fake_mode mode) { fake_start_batch(profile, mode, 0); }

static void fake_stop(void)
{
    atomic_store(&fk.stop, 1);
    pthread_join(fk.th, NULL);
    for (size_t h = 0; h < fk.n_held; h++)
        for (size_t k = 0; k < fk.held[h].n; k++)
            zmq_msg_close(&fk.held[h].f[k]);
    zmq_close(fk.router);
    zmq_ctx_term(fk.ctx);
    pthread_mutex_destroy(&fk.mu);
}

static struct seen last_seen(void)
{
    pthread_mutex_lock(&fk.mu);
    struct seen s = fk.last;
    pthread_mutex_unlock(&fk.mu);
    return s;
}

static struct lmcd_client *open_client(enum lmcd_profile p, enum lmcd_form f)
{
    struct lmcd_client *c = NULL;
    cr_assert_eq(lmcd_client_open(fk.endpoint, p, f, &c), 0);
    lmcd_client_set_timeout(c, 5000);
    return c;
}

static const uint32_t tokens[512] = { 1, 2, 3 };

static struct lmcd_key worker_key(void)
{
    return (struct lmcd_key){ .model_name = "m", .world_size = 2, .has_worker_id = true,
                              .worker_id = 1, .token_ids = tokens, .n_tokens = 512,
                              .start = 0, .end = 512, .request_id = "req-1" };
}

/* ---- every operation, both 2609 forms ----------------------------------- */

static void check_common_ops(struct lmcd_client *c, enum wire_form want_form)
{
    int64_t v = 0;
    char msg[16];
    bool ok = false;
    cr_assert_eq(lmcd_get_chunk_size(c, &v), 0);
    cr_assert_eq(v, 256);
    cr_assert_eq(last_seen().form, want_form, "message form sends {} for no-payload ops");
    cr_assert_eq(lmcd_noop(c, msg, sizeof(msg)), 0);
    cr_assert_str_eq(msg, "OK");
    cr_assert_eq(lmcd_query_prefetch_status(c, "abcd", &v), 0);
    cr_assert_eq(v, 4);
    cr_assert_eq(last_seen().op, WIRE_OP_QUERY_PREFETCH_STATUS);
    cr_assert_eq(last_seen().form, want_form);
    cr_assert_str_eq(last_seen().request_id, "abcd");
    cr_assert_eq(lmcd_query_prefetch_status(c, "nil", &v), -EAGAIN, "nil is 'not yet'");
    cr_assert_eq(lmcd_query_prefetch_lookup_hits(c, "abcdef", &v), 0);
    cr_assert_eq(v, 6);

    struct lmcd_key sk = { .model_name = "m", .world_size = 1, .token_ids = tokens,
                           .n_tokens = 300, .end = 256, .request_id = "sched" };
    cr_assert_eq(lmcd_lookup(c, &sk, 2), 0);
    struct seen s = last_seen();
    cr_assert_eq(s.op, WIRE_OP_LOOKUP);
    cr_assert_eq(s.n_tokens, 300);
    cr_assert_eq(s.tp_size, 2);
    cr_assert(!s.has_worker_id);
    cr_assert_str_eq(s.request_id, "sched");
    cr_assert_eq(lmcd_free_lookup_locks(c, &sk, 1), 0);
    cr_assert_eq(last_seen().op, WIRE_OP_FREE_LOOKUP_LOCKS);
    cr_assert_eq(lmcd_end_session(c, "sched"), 0);
    cr_assert_eq(last_seen().op, WIRE_OP_END_SESSION);

    int64_t blocks[] = { 7, 8 };
    uint32_t toks[] = { 1, 2, 300 };
    struct lmcd_block_record recs[2] = {
        { .req_id = "a", .new_block_ids = blocks, .n_block_ids = 2, .new_token_ids = toks,
          .n_token_ids = 3 },
        { .req_id = "b" },
    };
    cr_assert_eq(lmcd_report_block_allocation(c, 42, "model-x", recs, 2), 0);
    s = last_seen();
    cr_assert_eq(s.op, WIRE_OP_REPORT_BLOCK_ALLOCATION);
    cr_assert_eq(s.n_records, 2);
    cr_assert_eq(s.instance_id, 42);
    cr_assert_str_eq(s.model, "model-x");
    cr_assert_eq(lmcd_ping(c, LMCD_NO_INSTANCE, &ok), 0);
    cr_assert(ok);
}

static void check_2609_only_ops(struct lmcd_client *c, enum wire_form want_form)
{
    struct lmcd_reply r;
    bool ok = false;
    int64_t v;
    cr_assert_eq(lmcd_ping(c, 77, &ok), 0);
    cr_assert(last_seen().has_instance_id);
    cr_assert_eq(last_seen().instance_id, 77);
    cr_assert_eq(lmcd_ping(c, LMCD_NO_INSTANCE, &ok), 0);
    cr_assert(!last_seen().has_instance_id, "LMCD_NO_INSTANCE is sent as nil");

    cr_assert_eq(lmcd_get_experimental(c, &r), 0);
    cr_assert_eq(r.n_names, 2);
    cr_assert_str_eq(r.names[0], "alpha");
    cr_assert_str_eq(r.names[1], "beta");
    lmcd_reply_free(&r);
    cr_assert_null(r.names, "lmcd_reply_free zeroes the reply");

    cr_assert_eq(lmcd_wait_prefetch_status(c, "abc", 0.5, &v), 0);
    cr_assert_eq(v, 3);
    cr_assert_eq(last_seen().timeout, 0.5);

    bool positional = want_form == WIRE_FORM_POSITIONAL;
    cr_assert_eq(lmcd_clear(c, true), 0);
    cr_assert_eq(last_seen().has_force, positional, "the message form's CLEAR map is {}");
    cr_assert(!positional || last_seen().force);
    cr_assert_eq(lmcd_clear(c, false), 0);
    cr_assert_eq(last_seen().has_force, positional, "positional 2609 always sends force");
    cr_assert(!last_seen().force);

    struct lmcd_ed_payload ed = { .instance_id = 9, .model_name = "m", .world_size = 2,
                                  .block_size = 16, .num_layers = 4, .hidden_dim_size = 8,
                                  .dtype = "bfloat16", .has_num_physical_slots = true,
                                  .num_physical_slots = 256 };
    cr_assert_eq(lmcd_register_ed(c, &ed, &r), 0);
    struct seen s = last_seen();
    cr_assert_eq(s.op, WIRE_OP_REGISTER_ED_CONTEXT);
    cr_assert_str_eq(s.dtype, "bfloat16");
    cr_assert_eq(s.instance_id, 9);
    cr_assert_eq(s.num_physical_slots, 256);
    cr_assert_str_eq(r.shm_name, "lmcd_test_pool");
    cr_assert_eq(r.pool_size, 1u << 20);
    cr_assert_null(r.error);
    lmcd_reply_free(&r);
    ed.dtype = "int3";
    cr_assert_eq(lmcd_register_ed(c, &ed, &r), 0);
    cr_assert_str_eq(r.error, "unsupported dtype int3");
    lmcd_reply_free(&r);
    cr_assert_eq(lmcd_unregister_ed(c, 9), 0);
    cr_assert_eq(last_seen().op, WIRE_OP_UNREGISTER_ED_CONTEXT);

    struct lmcd_key k = worker_key();
    cr_assert_eq(lmcd_prepare_store(c, &k, 9, &r), 0);
    s = last_seen();
    cr_assert_eq(s.form, want_form);
    cr_assert(s.has_worker_id);
    cr_assert_eq(s.world_size, 2);
    cr_assert_eq(r.n_slots, 2);
    cr_assert_eq(r.chunk_indices[1], 2);
    cr_assert_eq(r.slots[1].offset, 40960);
    cr_assert_eq(r.slots[0].length, 32768);
    cr_assert_eq(r.slots[0].ndim, 4);
    cr_assert_eq(r.slots[0].shape[2], 256);
    cr_assert_str_eq(r.slots[0].dtype, "bfloat16");
    lmcd_reply_free(&r);
    cr_assert_eq(lmcd_commit_store(c, &k, 9, &ok), 0);
    cr_assert(ok);
    cr_assert_eq(lmcd_prepare_retrieve(c, &k, 9, &r), 0);
    cr_assert(r.success);
    cr_assert_eq(r.n_slots, 1);
    cr_assert_null(r.chunk_indices);
    lmcd_reply_free(&r);
    ok = false;
    cr_assert_eq(lmcd_commit_retrieve(c, &k, 9, &ok), 0);
    cr_assert(ok);

    /* inline ops: always positional, chunks as raw frames */
    struct iovec chunks[3] = { { "aaaa", 4 }, { "bbbbbb", 6 }, { "c", 1 } };
    cr_assert_eq(lmcd_store_inline(c, &k, chunks, 3, &v), 0);
    cr_assert_eq(v, 3);
    s = last_seen();
    cr_assert_eq(s.op, WIRE_OP_STORE_INLINE);
    cr_assert_eq(s.form, WIRE_FORM_POSITIONAL);
    cr_assert_eq(s.n_raw, 3);
    cr_assert_eq(s.raw_bytes, 11);
    cr_assert_eq(lmcd_retrieve_inline(c, &k, &r), 0);
    cr_assert_eq(r.value, 2);
    cr_assert_eq(r.n_chunks, 2);
    cr_assert_eq(r.chunks[0].iov_len, 6);
    cr_assert(!memcmp(r.chunks[0].iov_base, "chunk0", 6));
    cr_assert_eq(r.chunks[1].iov_len, 9);
    cr_assert(!memcmp(r.chunks[1].iov_base, "chunk-one", 9));
    lmcd_reply_free(&r);
}

Test(client, every_op_2609_positional)
{
    fake_start(WIRE_PROFILE_2609, ECHO);
    struct lmcd_client *c = open_client(LMCD_PROFILE_2609, LMCD_FORM_POSITIONAL);
    check_common_ops(c, WIRE_FORM_POSITIONAL);
    check_2609_only_ops(c, WIRE_FORM_POSITIONAL);
    cr_assert_eq(lmcd_client_pending(c), 0);
    lmcd_client_close(c);
    fake_stop();
}

Test(client, every_op_2609_message_form)
{
    fake_start(WIRE_PROFILE_2609, ECHO);
    struct lmcd_client *c = open_client(LMCD_PROFILE_2609, LMCD_FORM_MESSAGE);
    check_common_ops(c, WIRE_FORM_MESSAGE);
    check_2609_only_ops(c, WIRE_FORM_MESSAGE);
    lmcd_client_close(c);
    fake_stop();
}

Test(client, profile_2604_ops_and_2609_only_ops_refused)
{
    fake_start(WIRE_PROFILE_2604, ECHO);
    struct lmcd_client *c = open_client(LMCD_PROFILE_2604, LMCD_FORM_POSITIONAL);
    check_common_ops(c, WIRE_FORM_POSITIONAL);
    bool ok;
    cr_assert_eq(lmcd_ping(c, 5, &ok), 0);
    cr_assert_eq(last_seen().n_payload, 0, "2604 PING has no frame");
    cr_assert_eq(lmcd_clear(c, true), 0);
    cr_assert_eq(last_seen().op, WIRE_OP_CLEAR);
    cr_assert(!last_seen().has_force, "2604 CLEAR has no frame");

    struct lmcd_reply r;
    struct lmcd_key k = worker_key();
    int64_t v;
    cr_assert_eq(lmcd_get_experimental(c, &r), -ENOTSUP);
    cr_assert_eq(lmcd_prepare_store(c, &k, 1, &r), -ENOTSUP);
    cr_assert_eq(lmcd_wait_prefetch_status(c, "x", 1.0, &v), -ENOTSUP);
    cr_assert_eq(lmcd_store_inline(c, &k, NULL, 0, &v), -ENOTSUP);
    cr_assert_eq(lmcd_client_pending(c), 0, "refused requests leave nothing pending");
    lmcd_client_close(c);
    fake_stop();
}

/* ---- matching, timeouts, errors -------------------------------------------- */

Test(client, out_of_order_replies_are_matched_by_uid)
{
    fake_start_batch(WIRE_PROFILE_2609, REVERSE, 5);
    struct lmcd_client *c = open_client(LMCD_PROFILE_2609, LMCD_FORM_POSITIONAL);
    static const char *ids[5] = { "a", "bb", "ccc", "dddd", "eeeee" };
    uint64_t uid[5];
    for (int k = 0; k < 5; k++) {
        struct lmcd_request req = { .op = LMCD_OP_QUERY_PREFETCH_STATUS, .request_id = ids[k] };
        cr_assert_eq(lmcd_submit(c, &req, &uid[k]), 0);
        cr_assert_eq(uid[k], (uint64_t)k, "uids count from 0 per client");
    }
    cr_assert_eq(lmcd_client_pending(c), 5);
    /* the server answers uid 4 first; waiting for 0 keeps 1..4 for later */
    for (int k = 0; k < 5; k++) {
        struct lmcd_reply r;
        cr_assert_eq(lmcd_wait(c, uid[k], 5000, &r), 0);
        cr_assert_eq(r.op, LMCD_OP_QUERY_PREFETCH_STATUS);
        cr_assert_eq(r.value, k + 1, "uid %d got the reply of another request", k);
        lmcd_reply_free(&r);
    }
    cr_assert_eq(lmcd_client_pending(c), 0);
    lmcd_client_close(c);
    fake_stop();
}

Test(client, poll_is_eagain_until_the_reply_arrives)
{
    fake_start_batch(WIRE_PROFILE_2609, REVERSE, 2);
    struct lmcd_client *c = open_client(LMCD_PROFILE_2609, LMCD_FORM_POSITIONAL);
    struct lmcd_request noop = { .op = LMCD_OP_NOOP }, cs = { .op = LMCD_OP_GET_CHUNK_SIZE };
    uint64_t a, b;
    struct lmcd_reply r;
    cr_assert_eq(lmcd_submit(c, &noop, &a), 0);
    cr_assert_eq(lmcd_poll(c, a, &r), -EAGAIN, "the server holds the first request");
    cr_assert_eq(lmcd_submit(c, &cs, &b), 0);
    cr_assert_eq(lmcd_wait(c, b, 5000, &r), 0);
    cr_assert_eq(r.value, 256);
    lmcd_reply_free(&r);
    /* a's reply follows b's in the same burst (reverse order): it may still
     * be on its way when b's wait returns, so wait for it too */
    cr_assert_eq(lmcd_wait(c, a, 5000, &r), 0);
    cr_assert_str_eq(r.message, "OK");
    lmcd_reply_free(&r);
    cr_assert_eq(lmcd_poll(c, a, &r), -ENOENT, "a collected uid is gone");
    cr_assert_eq(lmcd_wait(c, 12345, 10, &r), -ENOENT);
    cr_assert_eq(lmcd_cancel(c, 12345), -ENOENT);
    lmcd_client_close(c);
    fake_stop();
}

Test(client, timeout_is_etimedout_and_the_client_stays_usable)
{
    fake_start(WIRE_PROFILE_2609, SILENT);
    struct lmcd_client *c = open_client(LMCD_PROFILE_2609, LMCD_FORM_POSITIONAL);
    lmcd_client_set_timeout(c, 100);
    int64_t v;
    uint64_t t0 = clock_mono_ms();
    cr_assert_eq(lmcd_get_chunk_size(c, &v), -ETIMEDOUT);
    uint64_t took = clock_mono_ms() - t0;
    cr_assert(took >= 100 && took < 3000, "took %llu ms", (unsigned long long)took);
    cr_assert_eq(lmcd_client_pending(c), 0, "a timed-out call forgets its uid");

    /* async: a timed-out wait leaves the request pending until cancelled */
    struct lmcd_request req = { .op = LMCD_OP_NOOP };
    uint64_t uid;
    struct lmcd_reply r;
    cr_assert_eq(lmcd_submit(c, &req, &uid), 0);
    cr_assert_eq(lmcd_wait(c, uid, 50, &r), -ETIMEDOUT);
    cr_assert_eq(lmcd_client_pending(c), 1);
    cr_assert_eq(lmcd_cancel(c, uid), 0);
    cr_assert_eq(lmcd_client_pending(c), 0);

    atomic_store(&fk.mode, ECHO);
    lmcd_client_set_timeout(c, 5000);
    cr_assert_eq(lmcd_get_chunk_size(c, &v), 0);
    cr_assert_eq(v, 256);
    lmcd_client_close(c);
    fake_stop();
}

Test(client, nobody_listening_times_out)
{
    struct lmcd_client *c = NULL;
    /* a port from the fake's range that nobody binds: bind, note, close */
    fake_start(WIRE_PROFILE_2609, SILENT);
    char ep[128];
    strcpy(ep, fk.endpoint);
    fake_stop();
    cr_assert_eq(lmcd_client_open(ep, LMCD_PROFILE_2609, LMCD_FORM_POSITIONAL, &c), 0);
    lmcd_client_set_timeout(c, 100);
    bool ok;
    cr_assert_eq(lmcd_ping(c, LMCD_NO_INSTANCE, &ok), -ETIMEDOUT);
    lmcd_client_close(c);
}

Test(client, undecodable_reply_is_eproto_without_breaking_the_next_call)
{
    fake_start(WIRE_PROFILE_2609, GARBAGE_ONCE);
    struct lmcd_client *c = open_client(LMCD_PROFILE_2609, LMCD_FORM_POSITIONAL);
    int64_t v = -1;
    cr_assert_eq(lmcd_get_chunk_size(c, &v), -EPROTO);
    cr_assert_eq(v, -1, "no value on error");
    cr_assert_eq(lmcd_client_pending(c), 0);
    cr_assert_eq(lmcd_get_chunk_size(c, &v), 0);
    cr_assert_eq(v, 256);
    lmcd_client_close(c);
    fake_stop();
}

Test(client, open_and_submit_reject_bad_arguments)
{
    struct lmcd_client *c = (struct lmcd_client *)1;
    cr_assert_eq(lmcd_client_open("tcp://127.0.0.1:1", LMCD_PROFILE_2604, LMCD_FORM_MESSAGE, &c),
                 -EINVAL, "the message form is 2609 only");
    cr_assert_null(c);
    cr_assert_lt(lmcd_client_open("bogus://x", LMCD_PROFILE_2609, LMCD_FORM_POSITIONAL, &c), 0);
    cr_assert_null(c);
    cr_assert_eq(lmcd_client_open("tcp://127.0.0.1:1", LMCD_PROFILE_2609, LMCD_FORM_POSITIONAL, &c),
                 0);
    uint64_t uid;
    struct lmcd_request req = { .op = LMCD_OP_END_SESSION };
    cr_assert_eq(lmcd_submit(c, &req, &uid), -EINVAL, "END_SESSION needs a request id");
    req = (struct lmcd_request){ .op = LMCD_OP_LOOKUP, .key = { .model_name = "m" } };
    cr_assert_eq(lmcd_submit(c, &req, &uid), -EINVAL, "a key needs its request id");
    req.op = LMCD_OP_COUNT_;
    cr_assert_eq(lmcd_submit(c, &req, &uid), -EINVAL);
    cr_assert_eq(lmcd_client_pending(c), 0);
    lmcd_client_close(c);
    lmcd_client_close(NULL);
}

Test(client, profile_names_and_error_strings)
{
    enum lmcd_profile p;
    cr_assert_eq(lmcd_profile_parse("lmcache-2604", &p), 0);
    cr_assert_eq(p, LMCD_PROFILE_2604);
    cr_assert_eq(lmcd_profile_parse("lmcache-2609", &p), 0);
    cr_assert_eq(p, LMCD_PROFILE_2609);
    cr_assert_eq(lmcd_profile_parse("lmcache-2000", &p), -EINVAL);
    cr_assert_str_eq(lmcd_op_name(LMCD_OP_GET_CHUNK_SIZE), "get_chunk_size");
    cr_assert_str_eq(lmcd_op_name(LMCD_OP_STORE_INLINE), "lmcd.store_inline");
    cr_assert_str_eq(lmcd_op_name(LMCD_OP_COUNT_), "?");
    cr_assert(strstr(lmcd_strerror(-ETIMEDOUT), "timed out"));
    cr_assert(strstr(lmcd_strerror(-EPROTO), "decoded"));
    cr_assert_str_eq(lmcd_strerror(0), "success");
    cr_assert_not_null(lmcd_strerror(-ENOMEM));
    cr_assert_not_null(lmcd_strerror(-99999));
}
