/*
 * profile_hint: notices a client that speaks the other protocol profile.
 *
 * Why. lmcache-2604 and lmcache-2609 number their operations differently
 * from id 3 on, and some ids mean another operation of the same arity in the
 * other profile (2604's FREE_LOOKUP_LOCKS is type 8, 2609's lookup is type 8),
 * so a client started against the wrong --protocol is served the wrong
 * operation without any error. Such a client also sends requests that do NOT
 * decode under lmcd's profile (2604's LOOKUP is type 5: store_q, unserved, in
 * 2609; a 2609 message-form map or operation name means nothing to 2604).
 * When a request fails to decode here but decodes as a served operation of
 * the other profile, lmcd logs one WARNING for that peer naming the profile
 * the client seems to speak. The wire is unchanged: nothing is answered
 * differently.
 *
 * Bounds. Once per peer (a table of PROFILE_HINT_PEERS identities; a full
 * table forgets the oldest, so a flood of new identities gets at most one line
 * each, and at most PROFILE_HINT_BURST lines a minute in all). The decode
 * under the other profile runs only for a request that already failed, from
 * a peer not yet flagged.
 *
 * Threads. Loop thread only (like the peer log).
 */
#ifndef LMCD_SERVER_PROFILE_HINT_H
#define LMCD_SERVER_PROFILE_HINT_H

#include <stddef.h>
#include <zmq.h>

#include "wire/wire.h"

struct profile_hint;

/* 0 or -ENOMEM. */
int profile_hint_new(struct profile_hint **out);
void profile_hint_free(struct profile_hint *h);

/*
 * Called with a request that failed to decode (rc < 0) under `active`:
 * frames as given to wire_decode_request, `failed` what that decode left
 * (op name and type id when the type was understood), `id` the ROUTER
 * identity. Logs a
 * WARNING the first time a peer's request decodes cleanly under the other
 * profile (rate limit permitting). Returns 1 when it flagged the peer, else
 * 0. Never changes the request.
 */
int profile_hint_note(struct profile_hint *h, enum wire_profile active, const zmq_msg_t *id,
                      const struct wire_frame *frames, size_t n, const struct wire_req *failed, int rc);

/* Peers flagged so far (for tests and /status). */
size_t profile_hint_flagged(const struct profile_hint *h);

#endif
