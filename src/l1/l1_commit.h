/*
 * l1_commit: backing a lazy L1 segment's tmpfs pages, once, and ahead of use.
 *
 * A lazy segment's pages are allocated by posix_fallocate() before anyone
 * writes them (so a full /dev/shm skips a chunk instead of SIGBUS). That
 * call costs time even for pages that already exist (about 0.1 ms per MiB
 * here: tmpfs walks every page), and for new pages it zeroes them (a few ms
 * per 32 MiB object), on the request path. This module
 *   - remembers which 2 MiB regions of the segment are wholly backed (a
 *     bitmap of atomic words), so a reservation in space used before costs
 *     nothing,
 *   - backs the regions just past each reservation (and the partial
 *     regions at its two ends) from a thread of its own
 *     ("commit ahead": a fresh segment fills in address order), so the next
 *     reservation usually finds its pages ready, but only while /dev/shm
 *     has plenty of room (twice the range plus 64 MiB free): it never takes
 *     the last free pages from anyone.
 * The request path backs exactly its own range, as before.
 * Failures stay clean: a reservation is only handed out when its own range
 * was backed here or before; commit-ahead errors (a full /dev/shm) are
 * remembered and retried only after later successes or a second.
 *
 * What it assumes: pages once backed stay backed (L1 never punches holes in
 * the segment). A truncation by another process takes them all:
 * l1_shm_restore() calls l1_commit_reset(), and a region whose fallocate
 * began before a reset is not marked. Until the restore, l1_shm_back()'s
 * intact check refuses every range anyway.
 *
 * Bounds: commit-ahead backs at most 4x the last reservation, 16..256 MiB,
 * past it, never beyond the segment, plus the partial end regions of
 * recent reservations (at most 64 queued). Memory: one bit per 2 MiB.
 *
 * Threads: l1_commit_back() and l1_commit_reset() from any thread;
 * start/stop once each.
 */
#ifndef LMCD_L1_L1_COMMIT_H
#define LMCD_L1_L1_COMMIT_H

#include <stdbool.h>
#include <stdint.h>

struct l1_commit;

/* Starts the committer for fd (a tmpfs file of `size` bytes, not owned).
 * 0 or -errno (*out NULL then). */
int l1_commit_start(int fd, uint64_t size, struct l1_commit **out);
/* Backs [off, off+len): 0, or -ENOSPC / -errno (nothing was marked, the
 * caller must not hand the range out). Then asks for the space after it. */
int l1_commit_back(struct l1_commit *c, uint64_t off, uint64_t len);
/* Marks the regions wholly inside [off, off+len) backed, which the caller
 * backed itself (the header and table); asks for nothing ahead. */
void l1_commit_mark(struct l1_commit *c, uint64_t off, uint64_t len);
/* Whether every region [off, off+len) touches is marked backed. Any thread. */
bool l1_commit_backed(const struct l1_commit *c, uint64_t off, uint64_t len);
/* How many reservations handed the committer work (space ahead not yet
 * backed, or a partial end region): one with nothing to do wakes nobody. */
uint64_t l1_commit_wakes(struct l1_commit *c);
/* Forgets every backed region (after the segment was truncated and
 * restored). NULL-safe. */
void l1_commit_reset(struct l1_commit *c);
/* Stops and joins the thread, frees. NULL-safe. */
void l1_commit_stop(struct l1_commit *c);

#endif
