/*
 * l1_alloc: a free-extent allocator over one range of byte offsets (the L1
 * data area). Good-fit with immediate coalescing:
 *   - every extent (free or used) sits in an address-ordered list, so a freed
 *     extent merges with free neighbours in O(1);
 *   - free extents also sit in one of 64 size bins (bin = floor(log2(units))),
 *     with a bitmap of non-empty bins; a request of u units scans its own bin
 *     for the smallest extent that fits (bounded scan), else takes any extent
 *     of the next non-empty bin (which is certainly large enough).
 * Sizes are rounded up to `align` (a power of two); every offset is a
 * multiple of `align` relative to `base`'s alignment.
 *
 * Compact layout (docs/l1.md, "Metadata per object"): a used extent belongs
 * to an object slot (0..n_slots-1, the caller's object table index) and costs
 * 12 bytes in an array indexed by the slot: its offset in align units and its
 * two address-list links. Its length is the caller's (it passes the byte size
 * again to l1_alloc_put). Free extents have descriptors of their own (24
 * bytes) in a pool of n_slots + 1, allocated at init but touched only as
 * used (there are never more free extents than used ones + 1, and usually
 * far fewer), so l1_alloc_put never allocates and cannot fail. Links are 32 bits: a slot index, or L1_ALLOC_FREE_BIT | a free
 * descriptor index; L1_ALLOC_NIL ends a list. Hence the limits l1_alloc_init
 * checks: at most L1_ALLOC_MAX_SLOTS slots and UINT32_MAX units.
 * Everything lives in process memory, never in the shared segment, so a
 * worker scribbling on the segment cannot corrupt the allocator.
 *
 * Threads: none of its own; not thread-safe. The caller (l1.c) holds l1.mu.
 */
#ifndef LMCD_L1_L1_ALLOC_H
#define LMCD_L1_L1_ALLOC_H

#include <stdbool.h>
#include <stdint.h>

#define L1_ALLOC_BINS 64
#define L1_ALLOC_NIL UINT32_MAX
#define L1_ALLOC_FREE_BIT 0x80000000u
/* Slot indices and free descriptor indices both stay below the tag bit. */
#define L1_ALLOC_MAX_SLOTS (L1_ALLOC_FREE_BIT - 1u)

/* A used extent, indexed by the owning object's slot. */
struct l1_alloc_used {
    uint32_t off;          /* units from base */
    uint32_t aprev, anext; /* address order */
};

/* A free extent. */
struct l1_alloc_free {
    uint32_t off, len;     /* units */
    uint32_t aprev, anext; /* address order */
    uint32_t fprev, fnext; /* bin list; unused descriptors: fnext chains them */
};

struct l1_alloc {
    uint64_t base, bytes, align;
    unsigned align_shift;
    uint64_t used;       /* bytes in used extents */
    uint64_t n_used;     /* used extents */
    uint64_t n_free;     /* free extents (fragmentation gauge) */
    uint64_t bitmap;     /* bit b set: bins[b] non-empty */
    uint32_t bins[L1_ALLOC_BINS];
    uint32_t n_slots;
    struct l1_alloc_used *u;  /* n_slots entries */
    struct l1_alloc_free *f;  /* n_slots + 1 descriptors */
    uint32_t f_fresh;         /* descriptors below it have been used */
    uint32_t f_spare;         /* released descriptors, chained by fnext */
};

/* base and bytes must be multiples of align (a power of two); bytes >= align;
 * bytes / align <= UINT32_MAX; 1 <= n_slots <= L1_ALLOC_MAX_SLOTS.
 * 0, -EINVAL, -E2BIG (beyond the 32-bit limits) or -ENOMEM. */
int l1_alloc_init(struct l1_alloc *a, uint64_t base, uint64_t bytes, uint64_t align, uint64_t n_slots);
void l1_alloc_fini(struct l1_alloc *a);
/* Allocates `bytes` rounded up to align for `slot` (which must not hold an
 * extent). 0, -ENOMEM (no extent fits), -EINVAL (0 bytes, bad slot). */
int l1_alloc_get(struct l1_alloc *a, uint64_t bytes, uint32_t slot);
/* Frees the extent of `slot`; `bytes` is what l1_alloc_get was given. */
void l1_alloc_put(struct l1_alloc *a, uint32_t slot, uint64_t bytes);
/* Largest free extent in bytes (O(extents in the top bin)). */
uint64_t l1_alloc_largest_free(const struct l1_alloc *a);
static inline uint64_t l1_alloc_round(const struct l1_alloc *a, uint64_t bytes)
{
    return (bytes + a->align - 1) & ~(a->align - 1);
}
/* The byte offset of slot's extent. */
static inline uint64_t l1_alloc_off(const struct l1_alloc *a, uint32_t slot)
{
    return a->base + ((uint64_t)a->u[slot].off << a->align_shift);
}

#endif
