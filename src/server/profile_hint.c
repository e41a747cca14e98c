/* profile_hint: see profile_hint.h. */
#define LOG_MODULE "lmcd.server"
#include "server/profile_hint.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <xxhash.h>

#include "util/clock.h"
#include "util/log.h"

#define PROFILE_HINT_PEERS 1024
#define PROFILE_HINT_BURST 16 /* lines a minute, all peers together */

struct profile_hint {
    uint64_t peer[PROFILE_HINT_PEERS]; /* XXH3 of the identity | 1; 0 = free */
    size_t next;                       /* ring position: the oldest entry */
    size_t flagged;
    struct log_ratelimit rl;
};

int profile_hint_new(struct profile_hint **out)
{
    struct profile_hint *h = calloc(1, sizeof(*h));
    if (!h)
        return -ENOMEM;
    h->rl = (struct log_ratelimit)LOG_RATELIMIT_INIT(60000, PROFILE_HINT_BURST);
    *out = h;
    return 0;
}

void profile_hint_free(struct profile_hint *h) { free(h); }

size_t profile_hint_flagged(const struct profile_hint *h) { return h ? h->flagged : 0; }

static int seen(const struct profile_hint *h, uint64_t peer)
{
    for (size_t i = 0; i < PROFILE_HINT_PEERS; i++)
        if (h->peer[i] == peer)
            return 1;
    return 0;
}

int profile_hint_note(struct profile_hint *h, enum wire_profile active, const zmq_msg_t *id,
                      const struct wire_frame *frames, size_t n, const struct wire_req *failed, int rc)
{
    /* Frames that are not a request in any profile say nothing about one. */
    if (!h || rc >= 0 || rc == -WIRE_EFRAMES || rc == -WIRE_EUID || rc == -ENOMEM)
        return 0;
    uint64_t peer = XXH3_64bits(zmq_msg_data((zmq_msg_t *)id), zmq_msg_size((zmq_msg_t *)id)) | 1;
    if (seen(h, peer))
        return 0;
    enum wire_profile other = active == WIRE_PROFILE_2609 ? WIRE_PROFILE_2604 : WIRE_PROFILE_2609;
    struct wire_req there;
    wire_req_init(&there);
    int orc = wire_decode_request(other, frames, n, &there);
    int fits = orc == 0 && !wire_op_unserved(there.op);
    char what[160];
    if (failed->op_name)
        snprintf(what, sizeof(what), "%s here: %s", failed->op_name, wire_strerror(rc));
    else
        snprintf(what, sizeof(what), "%s", wire_strerror(rc));
    const char *there_name = there.op_name ? there.op_name : "?";
    wire_req_free(&there);
    if (!fits)
        return 0;
    h->peer[h->next] = peer;
    h->next = (h->next + 1) % PROFILE_HINT_PEERS;
    h->flagged++;
    char hex[80];
    const uint8_t *p = zmq_msg_data((zmq_msg_t *)id);
    size_t len = zmq_msg_size((zmq_msg_t *)id), o = 0;
    hex[0] = '-', hex[1] = 0;
    for (size_t i = 0; i < len && o + 3 < sizeof(hex); i++)
        o += (size_t)snprintf(hex + o, sizeof(hex) - o, "%02x", p[i]);
    log_rl(&h->rl, LOG_WARNING,
           "peer %s seems to speak %s, not %s: a request rejected here (%s) decodes as %s there. The same "
           "type id names different operations in the two profiles (2604's FREE_LOOKUP_LOCKS is 2609's "
           "lookup), so this client may also be served the wrong operation without any error: start lmcd "
           "with --protocol %s for it (logged once per peer)",
           hex, wire_profile_name(other), wire_profile_name(active), what, there_name, wire_profile_name(other));
    return 1;
}
