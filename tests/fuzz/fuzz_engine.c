/*
 * libFuzzer driver for the engine and L1, driven by sequences of decoded
 * requests: each input is a short session of a server's life. Requests go
 * through the real decoder (wire_decode_request), the real handlers
 * (dispatch.c) and the real engine and L1 in a small shared-memory segment;
 * replies through the real encoder, then the client's decoder. Time is a fake
 * clock the input advances, so read/write TTLs, session TTLs and the worker
 * reaper all fire under the fuzzer's control.
 *
 * Besides ASan/UBSan findings, it checks what the server promises:
 *   - every request that decodes gets a reply that encodes and that a client
 *     decodes (unless the handler leaves it unanswered on purpose, 9.3);
 *   - every slot handed to a worker lies inside the segment's data area, and
 *     the fuzzer writes (PREPARE_STORE) and reads (PREPARE_RETRIEVE) it as a
 *     worker would;
 *   - lmcd.retrieve_inline chunks are held as ZeroMQ would hold unsent frames
 *     (up to HELD of them, released in input order); their bytes must not
 *     change while held, whatever the input does meanwhile (TTL expiry,
 *     clears, eviction pressure, new stores): issue 11 item 2.
 *
 * Input: byte 0 = flags (bit 0: profile 2609 else 2604); then commands:
 *   0b......00  a request: next byte = frame count (1..16), then frames as
 *               fuzz_frames.h reads them (length byte L, or 255 + 2-byte
 *               big-endian length, then L bytes)
 *   0b......01  advance the fake clock by (next byte) seconds
 *   0b......10  release the oldest held inline reply (ZeroMQ sent it)
 *   0b......11  run one eviction round and a status snapshot
 * The segment is a fresh 256 KiB one per input (chunk size 16 tokens), small
 * enough that an input fills it and freed memory goes to new objects.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "engine/engine.h"
#include "fuzz_frames.h"
#include "engine/engine_int.h"
#include "l1/l1.h"
#include "server/config.h"
#include "server/dispatch.h"
#include "server/server.h"
#include "util/log.h"
#include "wire/wire.h"

#define MAX_FRAMES 16
#define HELD 8
#define CHUNK 16

static uint64_t fake_ns = 1000000000000ull;
static uint64_t fake_now(void *ctx)
{
    (void)ctx;
    return __atomic_load_n(&fake_ns, __ATOMIC_RELAXED);
}
static const struct clock_src fake_clock = { fake_now, NULL };

static char shm_name[64];
static struct lmcd_config cfg;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_set_level(LOG_CRITICAL); /* the handlers log what a client does wrong: expected here */
    snprintf(shm_name, sizeof(shm_name), "lmcd_fuzz_engine_%ld", (long)getpid());
    cfg.mp.chunk_size = CHUNK;
    return 0;
}

struct held {
    struct engine_inline_read rd;
    uint64_t digest;
};

static uint64_t digest_of(const struct engine_inline_read *rd)
{
    XXH3_state_t *st = XXH3_createState();
    XXH3_64bits_reset(st);
    for (size_t i = 0; i < rd->n; i++) {
        XXH3_64bits_update(st, &rd->chunks[i].iov_len, sizeof(rd->chunks[i].iov_len));
        XXH3_64bits_update(st, rd->chunks[i].iov_base, rd->chunks[i].iov_len);
    }
    uint64_t h = XXH3_64bits_digest(st);
    XXH3_freeState(st);
    return h;
}

static void release_oldest(struct engine *e, struct held *h, size_t *n)
{
    if (!*n)
        return;
    if (digest_of(&h[0].rd) != h[0].digest) {
        fprintf(stderr, "fuzz_engine: an inline reply's bytes changed before ZeroMQ sent them\n");
        abort();
    }
    engine_inline_release(e, &h[0].rd);
    memmove(h, h + 1, (*n - 1) * sizeof(*h));
    (*n)--;
}

/* Every slot must lie in the data area; the worker side touches it. */
static void worker_touch(struct engine *e, const struct engine_slots *sl, bool write, uint8_t fill)
{
    uint8_t *base = l1_base(e->l1);
    uint64_t pool = l1_pool_size(e->l1);
    for (size_t i = 0; i < sl->n; i++) {
        const struct engine_slot *s = &sl->slots[i];
        if (s->offset > pool || s->length > pool - s->offset) {
            fprintf(stderr, "fuzz_engine: slot %zu [%llu, +%llu) outside the %llu-byte segment\n", i,
                    (unsigned long long)s->offset, (unsigned long long)s->length, (unsigned long long)pool);
            abort();
        }
        if (write) {
            memset(base + s->offset, fill, s->length);
        } else {
            volatile uint8_t sink = 0;
            for (uint64_t b = 0; b < s->length; b += 4096)
                sink ^= base[s->offset + b];
            (void)sink;
        }
    }
}

static void one_request(struct server *s, enum wire_profile prof, const struct wire_frame *f, size_t nf,
                        struct held *held, size_t *n_held, uint8_t fill)
{
    struct srv_req *r = calloc(1, sizeof(*r));
    if (!r)
        return;
    r->s = s;
    wire_req_init(&r->req);
    wire_resp_init(&r->resp);
    if (wire_decode_request(prof, f, nf, &r->req) != 0)
        goto done;
    if (r->req.op == WIRE_OP_WAIT_PREFETCH_STATUS) {
        if (!dispatch_wait_ready(s, r))
            dispatch_wait_timeout(r); /* the loop would park it; its timeout reply */
    } else {
        srv_handler_fn fn = dispatch_handler(r->req.op);
        if (!fn)
            goto done;
        fn(s, r);
    }
    if (r->req.op == WIRE_OP_PREPARE_STORE)
        worker_touch(s->engine, &r->slots, true, fill);
    else if (r->req.op == WIRE_OP_PREPARE_RETRIEVE)
        worker_touch(s->engine, &r->slots, false, 0);
    if (!r->no_reply) {
        struct wire_buf out;
        bool has = false;
        wire_buf_init(&out);
        int rc = wire_encode_reply(&r->req, &r->resp, &out, &has);
        if (rc != 0 && rc != -ENOMEM) {
            fprintf(stderr, "fuzz_engine: the %s reply does not encode: %s\n", r->req.op_name, wire_strerror(rc));
            abort();
        }
        if (rc == 0) {
            size_t nraw = r->has_inline ? r->inline_read.n : 0;
            struct wire_frame *rf = calloc(3 + nraw, sizeof(*rf));
            if (rf) {
                rf[0] = f[0];
                rf[1] = f[1];
                rf[2] = (struct wire_frame){ out.data, out.len };
                for (size_t i = 0; i < nraw; i++)
                    rf[3 + i] = (struct wire_frame){ r->inline_read.chunks[i].iov_base, r->inline_read.chunks[i].iov_len };
                struct wire_resp back;
                wire_resp_init(&back);
                int drc = wire_decode_reply(prof, r->req.form, r->req.op, rf, has ? 3 + nraw : 2, &back);
                if (drc != 0 && drc != -ENOMEM) {
                    fprintf(stderr, "fuzz_engine: a client cannot decode the %s reply: %s\n", r->req.op_name,
                            wire_strerror(drc));
                    abort();
                }
                wire_resp_free(&back);
                free(rf);
            }
        }
        wire_buf_free(&out);
    }
    if (r->has_inline && r->inline_read.n) {
        if (*n_held == HELD)
            release_oldest(s->engine, held, n_held);
        held[*n_held].rd = r->inline_read;
        held[*n_held].digest = digest_of(&r->inline_read);
        (*n_held)++;
        memset(&r->inline_read, 0, sizeof(r->inline_read));
        r->has_inline = false; /* the "frames" own the pins now */
    }
done:
    dispatch_req_cleanup(s, r);
    wire_req_free(&r->req);
    wire_resp_free(&r->resp);
    free(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    enum wire_profile prof = (data[0] & 1) ? WIRE_PROFILE_2609 : WIRE_PROFILE_2604;
    data++;
    size--;

    struct engine_opts o = {
        .chunk_size = CHUNK,
        .hash_algorithm = "xxh3_128", /* the fuzzer explores states, not hashes */
        .l1_size_bytes = 256u << 10, /* about 58 objects of 4 KiB: inputs fill it, so memory is reused */
        .l1_align_bytes = 4096,
        .l1_max_objects = 256,
        .l1_use_lazy = true,
        .shm_name = shm_name,
        .shm_group = "",
        .l1_read_ttl_s = 5,
        .l1_write_ttl_s = 10,
        .eviction_policy = "LRU",
        .eviction_trigger_watermark = 0.8,
        .eviction_ratio = 0.2,
        .session_ttl_s = 30,
        .inline_max_pinned_ratio = 0.5,
        .worker_reap_timeout_s = 60,
        .clock = &fake_clock,
    };
    struct engine *e = NULL;
    if (engine_create(&o, &e) != 0)
        abort(); /* a fresh small segment must always be possible */
    struct server s;
    memset(&s, 0, sizeof(s));
    s.cfg = &cfg;
    s.engine = e;

    struct held held[HELD];
    size_t n_held = 0;
    uint8_t fill = 1;
    while (size) {
        uint8_t cmd = data[0];
        data++;
        size--;
        switch (cmd & 3) {
        case 0: {
            if (!size)
                break;
            size_t want = (size_t)(data[0] % MAX_FRAMES) + 1;
            data++;
            size--;
            struct wire_frame f[MAX_FRAMES];
            size_t nf = fuzz_read_frames(&data, &size, want, f);
            one_request(&s, prof, f, nf, held, &n_held, fill++);
            break;
        }
        case 1:
            if (size) {
                __atomic_add_fetch(&fake_ns, (uint64_t)data[0] * 1000000000ull, __ATOMIC_RELAXED);
                data++;
                size--;
            }
            break;
        case 2:
            release_oldest(e, held, &n_held);
            break;
        case 3: {
            l1_evict_round(e->l1);
            json_t *j = engine_status_json(e);
            json_decref(j);
            break;
        }
        }
    }
    while (n_held)
        release_oldest(e, held, &n_held);
    engine_destroy(e);
    return 0;
}
