/*
 * libFuzzer driver for the request decoder (both profiles, any frame count),
 * plus what the server and the client do next with a decoded request:
 * encode a reply of the op's kind and decode it as a client would, and
 * re-encode the request as a client would and decode it again.
 *
 * With bit 1 of byte 0 set, the frames are instead a reply that a client
 * decodes (wire_decode_reply) for the op (byte 0 >> 3) in the form of bit 2:
 * replies come from a server the client does not control.
 *
 * Input format: byte 0 picks the profile (bit 0) and the mode; the rest is a
 * sequence of frames, each a length byte L followed by L bytes (L = 255: the
 * next two bytes are a big-endian length); the last frame takes what is left.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_frames.h"
#include "wire/wire.h"

#define MAX_FRAMES 64

static size_t split(const uint8_t *d, size_t n, struct wire_frame *f)
{
    return fuzz_read_frames(&d, &n, MAX_FRAMES, f);
}

static void reply_roundtrip(const struct wire_req *req)
{
    static const uint8_t ev[64];
    static struct wire_str names[1] = { { "x", 1 } };
    struct wire_slot slot = { .offset = 1, .length = 2, .ndim = 1, .shape = { 2 }, .dtype = { "uint8", 5 } };
    int64_t idx = 0;
    struct wire_resp resp, back;
    wire_resp_init(&resp);
    resp.kind = wire_op_resp_kind(req->op);
    resp.i = 3;
    resp.b = true;
    resp.s = names[0];
    resp.strs = names;
    resp.n_strs = 1;
    resp.event.ptr = ev;
    resp.event.len = sizeof(ev);
    resp.shm_name = names[0];
    resp.pool_size = 4096;
    resp.success = true;
    resp.slots = &slot;
    resp.n_slots = 1;
    resp.chunk_indices = &idx;
    if (req->op == WIRE_OP_RETRIEVE_INLINE)
        resp.i = 0;
    struct wire_buf out;
    bool has;
    wire_buf_init(&out);
    if (wire_encode_reply(req, &resp, &out, &has) != 0)
        abort();
    struct wire_msg m;
    wire_msg_init(&m);
    if (wire_encode_request(req->profile, req->form, req, req->uid, &m) != 0)
        abort();
    struct wire_frame f[3] = { wire_msg_frame(&m, 0), wire_msg_frame(&m, 1), { out.data, out.len } };
    if (wire_decode_reply(req->profile, req->form, req->op, f, has ? 3 : 2, &back) != 0)
        abort();
    wire_resp_free(&back);

    /* the client's encoding of the same request must decode again */
    struct wire_frame rf[WIRE_MAX_REQ_FRAMES];
    for (size_t k = 0; k < m.n_frames; k++)
        rf[k] = wire_msg_frame(&m, k);
    struct wire_req again;
    if (wire_decode_request(req->profile, rf, m.n_frames, &again) != 0)
        abort();
    if (again.op != req->op || again.form != req->form)
        abort();
    /* the same token ids, whichever reader took them (the validator's
     * capture of the client's smallest forms, or the general reader) */
    if (req->has_key && (again.key.n_tokens != req->key.n_tokens ||
                         (req->key.n_tokens && memcmp(again.key.token_ids, req->key.token_ids,
                                                      req->key.n_tokens * sizeof(uint32_t)))))
        abort();
    wire_req_free(&again);
    wire_msg_free(&m);
    wire_buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    struct wire_frame frames[MAX_FRAMES];
    enum wire_profile profile = (data[0] & 1) ? WIRE_PROFILE_2609 : WIRE_PROFILE_2604;
    size_t n = split(data + 1, size - 1, frames);
    if (data[0] & 2) {
        enum wire_op op = (enum wire_op)((data[0] >> 3) % WIRE_OP_COUNT);
        enum wire_form form = (data[0] & 4) ? WIRE_FORM_MESSAGE : WIRE_FORM_POSITIONAL;
        struct wire_resp resp;
        int rc = wire_decode_reply(profile, form, op, frames, n, &resp);
        if (rc == 0 && resp.n_slots && !resp.slots)
            abort();
        wire_resp_free(&resp);
        return 0;
    }
    struct wire_req req;
    int rc = wire_decode_request(profile, frames, n, &req);
    if (rc == 0)
        reply_roundtrip(&req);
    else if (!wire_strerror(rc))
        abort();
    wire_req_free(&req);
    return 0;
}
