/*
 * l1_guard: survives a segment that another process shrank under lmcd.
 *
 * Any process that can open the L1 segment can ftruncate() it (a worker's
 * ordinary open(path, "w+b") does). Every later access by lmcd to a page
 * past the new end raises SIGBUS, in whichever thread touches it: lmcd's
 * own table writes and inline copies, or ZeroMQ's I/O thread. A check
 * before each access cannot close that race, so the guard handles the
 * signal itself: a SIGBUS whose address lies in a registered mapping
 * replaces that whole mapping with private zero pages (mmap MAP_FIXED), so
 * the faulting access and every later one completes on memory that no
 * worker sees, and marks the mapping lost. l1 then notices the loss (or a
 * short fstat) at its next call, drops every object and restores the
 * segment (l1.c). Bytes read after the fault are zeros, so a copy that
 * must be right checks l1_guard_lost() (through l1_check) after copying.
 *
 * A SIGBUS outside every registered mapping goes to the handler that was
 * installed before ours (the sanitizers') or, without one, kills the
 * process as SIGBUS always did.
 *
 * Threads: register/unregister from any thread (l1_create/l1_destroy);
 * the handler runs in the faulting thread and uses only atomics and mmap.
 */
#ifndef LMCD_L1_L1_GUARD_H
#define LMCD_L1_L1_GUARD_H

#include <stdbool.h>
#include <stddef.h>

struct l1_guard;

/* Installs the handler (once per process) and registers [base, base+len).
 * 0, -ENOSPC (all slots in use), or -errno from sigaction. */
int l1_guard_register(void *base, size_t len, struct l1_guard **out);
/* True once a SIGBUS hit the mapping since the last l1_guard_rearm(). */
bool l1_guard_lost(const struct l1_guard *g);
/* Clears the lost flag; call just before mapping the segment again. */
void l1_guard_rearm(struct l1_guard *g);
/* Forgets the mapping (before it is unmapped). NULL is a no-op. */
void l1_guard_unregister(struct l1_guard *g);

#endif
