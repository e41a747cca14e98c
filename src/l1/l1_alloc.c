/*
 * l1_alloc: see l1_alloc.h. Units below are bytes; every length is a
 * multiple of align, so bins are computed on len >> align_shift.
 */
#include "l1/l1_alloc.h"

#include <errno.h>
#include <stdlib.h>

/* How many extents of the exact bin to look at for the best fit before
 * settling: bounds the time under l1.mu when a bin holds many extents. */
#define BIN_SCAN_MAX 32

static unsigned bin_of(const struct l1_alloc *a, uint64_t len)
{
    return 63u - (unsigned)__builtin_clzll(len >> a->align_shift);
}

static void bin_insert(struct l1_alloc *a, struct l1_extent *e)
{
    unsigned b = bin_of(a, e->len);
    e->fprev = NULL;
    e->fnext = a->bins[b];
    if (e->fnext)
        e->fnext->fprev = e;
    a->bins[b] = e;
    a->bitmap |= 1ull << b;
    e->free = true;
    a->n_free++;
}

static void bin_remove(struct l1_alloc *a, struct l1_extent *e)
{
    unsigned b = bin_of(a, e->len);
    if (e->fprev)
        e->fprev->fnext = e->fnext;
    else
        a->bins[b] = e->fnext;
    if (e->fnext)
        e->fnext->fprev = e->fprev;
    if (!a->bins[b])
        a->bitmap &= ~(1ull << b);
    e->fprev = e->fnext = NULL;
    e->free = false;
    a->n_free--;
}

int l1_alloc_init(struct l1_alloc *a, uint64_t base, uint64_t bytes, uint64_t align)
{
    *a = (struct l1_alloc){ 0 };
    if (align == 0 || (align & (align - 1)) || bytes < align || (base & (align - 1)) ||
        (bytes & (align - 1)))
        return -EINVAL;
    struct l1_extent *e = calloc(1, sizeof(*e));
    if (!e)
        return -ENOMEM;
    a->base = base;
    a->bytes = bytes;
    a->align = align;
    a->align_shift = (unsigned)__builtin_ctzll(align);
    e->off = base;
    e->len = bytes;
    a->first = e;
    bin_insert(a, e);
    return 0;
}

void l1_alloc_fini(struct l1_alloc *a)
{
    struct l1_extent *e = a->first;
    while (e) {
        struct l1_extent *next = e->anext;
        free(e);
        e = next;
    }
    *a = (struct l1_alloc){ 0 };
}

/* Smallest extent >= len among the first BIN_SCAN_MAX of bin b, or NULL. */
static struct l1_extent *scan_bin(struct l1_alloc *a, unsigned b, uint64_t len, uint64_t max)
{
    struct l1_extent *best = NULL;
    uint64_t seen = 0;
    for (struct l1_extent *e = a->bins[b]; e && seen < max; e = e->fnext, seen++) {
        if (e->len >= len && (!best || e->len < best->len)) {
            best = e;
            if (e->len == len)
                break;
        }
    }
    return best;
}

static struct l1_extent *find_fit(struct l1_alloc *a, uint64_t len)
{
    unsigned b = bin_of(a, len);
    struct l1_extent *e = scan_bin(a, b, len, BIN_SCAN_MAX);
    if (e)
        return e;
    /* Every extent of a higher bin is >= 2^(b+1) units > len. Take the
     * smallest bin above; within it, the best of the first few. */
    uint64_t higher = b + 1 < L1_ALLOC_BINS ? a->bitmap & ~((2ull << b) - 1) : 0;
    if (!higher) /* last resort: a fit may sit past the bounded scan */
        return scan_bin(a, b, len, UINT64_MAX);
    return scan_bin(a, (unsigned)__builtin_ctzll(higher), len, BIN_SCAN_MAX);
}

int l1_alloc_get(struct l1_alloc *a, uint64_t bytes, struct l1_extent **out)
{
    if (bytes == 0)
        return -EINVAL;
    if (bytes > a->bytes)
        return -ENOMEM;
    uint64_t len = l1_alloc_round(a, bytes);
    struct l1_extent *e = find_fit(a, len);
    if (!e)
        return -ENOMEM;
    if (e->len > len) {
        /* Split: the front is handed out, the tail stays free. Front
         * allocation keeps used space packed toward low addresses. */
        struct l1_extent *tail = calloc(1, sizeof(*tail));
        if (!tail)
            return -ENOMEM;
        bin_remove(a, e);
        tail->off = e->off + len;
        tail->len = e->len - len;
        tail->aprev = e;
        tail->anext = e->anext;
        if (e->anext)
            e->anext->aprev = tail;
        e->anext = tail;
        e->len = len;
        bin_insert(a, tail);
    } else {
        bin_remove(a, e);
    }
    a->used += e->len;
    *out = e;
    return 0;
}

/* Absorbs `next` (free, right after `e`) into `e`. */
static void absorb_next(struct l1_extent *e, struct l1_extent *next)
{
    e->len += next->len;
    e->anext = next->anext;
    if (next->anext)
        next->anext->aprev = e;
    free(next);
}

void l1_alloc_put(struct l1_alloc *a, struct l1_extent *e)
{
    a->used -= e->len;
    struct l1_extent *prev = e->aprev, *next = e->anext;
    if (next && next->free) {
        bin_remove(a, next);
        absorb_next(e, next);
    }
    if (prev && prev->free) {
        bin_remove(a, prev);
        absorb_next(prev, e);
        e = prev;
    }
    bin_insert(a, e);
}

uint64_t l1_alloc_largest_free(const struct l1_alloc *a)
{
    if (!a->bitmap)
        return 0;
    unsigned b = 63u - (unsigned)__builtin_clzll(a->bitmap);
    uint64_t best = 0;
    for (const struct l1_extent *e = a->bins[b]; e; e = e->fnext)
        if (e->len > best)
            best = e->len;
    return best;
}
