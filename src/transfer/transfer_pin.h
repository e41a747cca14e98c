/*
 * transfer_pin: the arithmetic of pinning L1 in slices (transfer_cuda.c),
 * kept apart so it is unit-tested without a driver (tests/unit/test_transfer_pin.c).
 *
 * L1 is registered for DMA slice by slice, in the background: a slice is
 * TP_SLICE_ALIGN-aligned (L1's commit regions are 2 MiB, l1_commit.h, so a
 * slice is wholly committed or not), about 1/64 of the segment, between
 * TP_SLICE_MIN and TP_SLICE_MAX. A copy goes straight to/from pinned L1
 * only when every slice its object touches is pinned and the device sees
 * those slices at one contiguous range (tp_translate); otherwise it goes
 * through a bounce buffer.
 *
 * Pure functions, no state, any thread.
 */
#ifndef LMCD_TRANSFER_TRANSFER_PIN_H
#define LMCD_TRANSFER_TRANSFER_PIN_H

#include <stdbool.h>
#include <stdint.h>

#define TP_SLICE_ALIGN (2ull << 20)
#define TP_SLICE_MIN (2ull << 20)
#define TP_SLICE_MAX (256ull << 20)

/* Slice size for a segment of `len` bytes. */
static inline uint64_t tp_slice_bytes(uint64_t len)
{
    uint64_t s = (len / 64 + TP_SLICE_ALIGN - 1) / TP_SLICE_ALIGN * TP_SLICE_ALIGN;
    return s < TP_SLICE_MIN ? TP_SLICE_MIN : s > TP_SLICE_MAX ? TP_SLICE_MAX : s;
}

/* Number of slices of a `len`-byte segment (the last may be short). */
static inline uint64_t tp_nslices(uint64_t len, uint64_t slice)
{
    return (len + slice - 1) / slice;
}

/* Slice `i`: its offset and length (the last one is clamped). */
static inline void tp_slice_range(uint64_t len, uint64_t slice, uint64_t i, uint64_t *off, uint64_t *n)
{
    *off = i * slice;
    *n = *off + slice > len ? len - *off : slice;
}

/* The slices [*first, *last] that [off, off+n) touches; false when the
 * range is empty or leaves the segment. */
static inline bool tp_slices_of(uint64_t len, uint64_t slice, uint64_t off, uint64_t n, uint64_t *first,
                                uint64_t *last)
{
    if (n == 0 || off >= len || n > len - off)
        return false;
    *first = off / slice;
    *last = (off + n - 1) / slice;
    return true;
}

/* The device address of host offset `off` given where the device sees
 * each slice: dbase(ctx, i) is the device address of slice i's first byte
 * (0: unknown, not pinned). The range [off, off+n) must map contiguously:
 * every slice it touches known, and at the same distance from its host
 * bytes (true with unified addressing, where the device address is the
 * host address; not guaranteed without it, where each registration may
 * land elsewhere). `host` is the segment's host address. */
static inline bool tp_translate(uint64_t host, uint64_t len, uint64_t slice, uint64_t (*dbase)(void *ctx, uint64_t i),
                                void *ctx, uint64_t off, uint64_t n, uint64_t *dev)
{
    uint64_t a, b;
    if (!tp_slices_of(len, slice, off, n, &a, &b))
        return false;
    uint64_t d = dbase(ctx, a);
    if (!d)
        return false;
    uint64_t delta = d - (host + a * slice);
    for (uint64_t i = a + 1; i <= b; i++) {
        uint64_t di = dbase(ctx, i);
        if (!di || di - (host + i * slice) != delta)
            return false;
    }
    *dev = host + off + delta;
    return true;
}

#endif
