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
 * Extent descriptors live in process memory, never in the shared segment,
 * so a worker scribbling on the segment cannot corrupt the allocator.
 *
 * Threads: none of its own; not thread-safe. The caller (l1.c) holds l1.mu.
 */
#ifndef LMCD_L1_L1_ALLOC_H
#define LMCD_L1_L1_ALLOC_H

#include <stdbool.h>
#include <stdint.h>

#define L1_ALLOC_BINS 64

struct l1_extent {
    uint64_t off;   /* absolute offset (base + k * align) */
    uint64_t len;   /* bytes, a multiple of align */
    struct l1_extent *aprev, *anext; /* address order, all extents */
    struct l1_extent *fprev, *fnext; /* bin list, free extents only */
    bool free;
};

struct l1_alloc {
    uint64_t base, bytes, align;
    unsigned align_shift;
    uint64_t used;       /* bytes in used extents */
    uint64_t n_free;     /* free extents (fragmentation gauge) */
    uint64_t bitmap;     /* bit b set: bins[b] non-empty */
    struct l1_extent *bins[L1_ALLOC_BINS];
    struct l1_extent *first; /* lowest address */
};

/* base and bytes must be multiples of align (a power of two); bytes >= align.
 * 0, -EINVAL or -ENOMEM. */
int l1_alloc_init(struct l1_alloc *a, uint64_t base, uint64_t bytes, uint64_t align);
void l1_alloc_fini(struct l1_alloc *a);
/* Allocates `bytes` rounded up to align. 0 and *out, or -ENOMEM (no extent
 * fits, or descriptor malloc failed), -EINVAL (0 bytes). */
int l1_alloc_get(struct l1_alloc *a, uint64_t bytes, struct l1_extent **out);
/* Frees an extent from l1_alloc_get; the descriptor may be released. */
void l1_alloc_put(struct l1_alloc *a, struct l1_extent *e);
/* Largest free extent in bytes (O(extents in the top bin)). */
uint64_t l1_alloc_largest_free(const struct l1_alloc *a);
static inline uint64_t l1_alloc_round(const struct l1_alloc *a, uint64_t bytes)
{
    return (bytes + a->align - 1) & ~(a->align - 1);
}

#endif
