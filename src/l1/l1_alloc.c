/*
 * l1_alloc: see l1_alloc.h. Offsets and lengths below are in units of
 * align (shifted by align_shift) unless a name says bytes.
 */
#include "l1/l1_alloc.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* How many extents of the exact bin to look at for the best fit before
 * settling: bounds the time under l1.mu when a bin holds many extents. */
#define BIN_SCAN_MAX 32
#define FB L1_ALLOC_FREE_BIT
#define NIL L1_ALLOC_NIL

static unsigned bin_of(uint32_t units) { return 31u - (unsigned)__builtin_clz(units); }

/* Address-list links of x: a slot, or FB | a free descriptor. */
static uint32_t *aprev_of(struct l1_alloc *a, uint32_t x)
{
    return x & FB ? &a->f[x & ~FB].aprev : &a->u[x].aprev;
}

static uint32_t *anext_of(struct l1_alloc *a, uint32_t x)
{
    return x & FB ? &a->f[x & ~FB].anext : &a->u[x].anext;
}

static void bin_insert(struct l1_alloc *a, uint32_t d)
{
    struct l1_alloc_free *e = &a->f[d];
    unsigned b = bin_of(e->len);
    e->fprev = NIL;
    e->fnext = a->bins[b];
    if (e->fnext != NIL)
        a->f[e->fnext].fprev = d;
    a->bins[b] = d;
    a->bitmap |= 1ull << b;
    a->n_free++;
}

static void bin_remove(struct l1_alloc *a, uint32_t d)
{
    struct l1_alloc_free *e = &a->f[d];
    unsigned b = bin_of(e->len);
    if (e->fprev != NIL)
        a->f[e->fprev].fnext = e->fnext;
    else
        a->bins[b] = e->fnext;
    if (e->fnext != NIL)
        a->f[e->fnext].fprev = e->fprev;
    if (a->bins[b] == NIL)
        a->bitmap &= ~(1ull << b);
    e->fprev = e->fnext = NIL;
    a->n_free--;
}

/* A descriptor: a released one, else a never used one. The pool was sized
 * at init for the most free extents there can be (n_slots + 1: free
 * extents never touch, so used ones separate them), so there always is one. */
static uint32_t desc_take(struct l1_alloc *a)
{
    uint32_t d = a->f_spare;
    if (d != NIL)
        a->f_spare = a->f[d].fnext;
    else
        d = a->f_fresh++;
    a->f[d] = (struct l1_alloc_free){ 0, 0, NIL, NIL, NIL, NIL };
    return d;
}

static void desc_release(struct l1_alloc *a, uint32_t d)
{
    a->f[d].fnext = a->f_spare;
    a->f_spare = d;
}

int l1_alloc_init(struct l1_alloc *a, uint64_t base, uint64_t bytes, uint64_t align, uint64_t n_slots)
{
    memset(a, 0, sizeof(*a));
    a->f_spare = NIL;
    for (unsigned b = 0; b < L1_ALLOC_BINS; b++)
        a->bins[b] = NIL;
    if (align == 0 || (align & (align - 1)) || bytes < align || (base & (align - 1)) ||
        (bytes & (align - 1)) || n_slots == 0)
        return -EINVAL;
    unsigned shift = (unsigned)__builtin_ctzll(align);
    if ((bytes >> shift) > UINT32_MAX || n_slots > L1_ALLOC_MAX_SLOTS)
        return -E2BIG;
    /* calloc of a large array maps zero pages: an entry costs memory only
     * once its slot (or descriptor) is first used. */
    if (!(a->u = calloc(n_slots, sizeof(*a->u))) || !(a->f = calloc(n_slots + 1, sizeof(*a->f)))) {
        l1_alloc_fini(a);
        return -ENOMEM;
    }
    a->base = base;
    a->bytes = bytes;
    a->align = align;
    a->align_shift = shift;
    a->n_slots = (uint32_t)n_slots;
    uint32_t d = desc_take(a);
    a->f[d].off = 0;
    a->f[d].len = (uint32_t)(bytes >> shift);
    bin_insert(a, d);
    return 0;
}

void l1_alloc_fini(struct l1_alloc *a)
{
    free(a->u);
    free(a->f);
    memset(a, 0, sizeof(*a));
}

/* Smallest extent >= len among the first `max` of bin b, or NIL. */
static uint32_t scan_bin(struct l1_alloc *a, unsigned b, uint32_t len, uint64_t max)
{
    uint32_t best = NIL;
    uint64_t seen = 0;
    for (uint32_t d = a->bins[b]; d != NIL && seen < max; d = a->f[d].fnext, seen++) {
        uint32_t l = a->f[d].len;
        if (l >= len && (best == NIL || l < a->f[best].len)) {
            best = d;
            if (l == len)
                break;
        }
    }
    return best;
}

static uint32_t find_fit(struct l1_alloc *a, uint32_t len)
{
    unsigned b = bin_of(len);
    uint32_t d = scan_bin(a, b, len, BIN_SCAN_MAX);
    if (d != NIL)
        return d;
    /* Every extent of a higher bin is >= 2^(b+1) units > len. Take the
     * smallest bin above; within it, the best of the first few. */
    uint64_t higher = b + 1 < L1_ALLOC_BINS ? a->bitmap & ~((2ull << b) - 1) : 0;
    if (!higher) /* last resort: a fit may sit past the bounded scan */
        return scan_bin(a, b, len, UINT64_MAX);
    return scan_bin(a, (unsigned)__builtin_ctzll(higher), len, BIN_SCAN_MAX);
}

int l1_alloc_get(struct l1_alloc *a, uint64_t bytes, uint32_t slot)
{
    if (bytes == 0 || slot >= a->n_slots)
        return -EINVAL;
    if (bytes > a->bytes)
        return -ENOMEM;
    uint32_t len = (uint32_t)(l1_alloc_round(a, bytes) >> a->align_shift);
    uint32_t d = find_fit(a, len);
    if (d == NIL)
        return -ENOMEM;
    struct l1_alloc_free *e = &a->f[d];
    struct l1_alloc_used *s = &a->u[slot];
    bin_remove(a, d);
    s->off = e->off;
    s->aprev = e->aprev;
    if (e->aprev != NIL)
        *anext_of(a, e->aprev) = slot;
    if (e->len > len) {
        /* Split: the front is handed out, the tail stays free. Front
         * allocation keeps used space packed toward low addresses. */
        s->anext = d | FB;
        e->aprev = slot;
        e->off += len;
        e->len -= len;
        bin_insert(a, d);
    } else {
        s->anext = e->anext;
        if (e->anext != NIL)
            *aprev_of(a, e->anext) = slot;
        desc_release(a, d);
    }
    a->used += (uint64_t)len << a->align_shift;
    a->n_used++;
    return 0;
}

void l1_alloc_put(struct l1_alloc *a, uint32_t slot, uint64_t bytes)
{
    uint32_t len = (uint32_t)(l1_alloc_round(a, bytes) >> a->align_shift);
    struct l1_alloc_used *s = &a->u[slot];
    uint32_t p = s->aprev, n = s->anext;
    bool pf = p != NIL && (p & FB), nf = n != NIL && (n & FB);
    a->used -= (uint64_t)len << a->align_shift;
    a->n_used--;
    if (pf) {
        /* grows the free extent before it, absorbing the one after */
        struct l1_alloc_free *pe = &a->f[p & ~FB];
        bin_remove(a, p & ~FB);
        pe->len += len;
        pe->anext = n;
        if (nf) {
            struct l1_alloc_free *ne = &a->f[n & ~FB];
            bin_remove(a, n & ~FB);
            pe->len += ne->len;
            pe->anext = ne->anext;
            desc_release(a, n & ~FB);
        }
        if (pe->anext != NIL)
            *aprev_of(a, pe->anext) = p;
        bin_insert(a, p & ~FB);
    } else if (nf) {
        struct l1_alloc_free *ne = &a->f[n & ~FB];
        bin_remove(a, n & ~FB);
        ne->off = s->off;
        ne->len += len;
        ne->aprev = p;
        if (p != NIL)
            *anext_of(a, p) = n;
        bin_insert(a, n & ~FB);
    } else {
        uint32_t d = desc_take(a);
        struct l1_alloc_free *e = &a->f[d];
        e->off = s->off;
        e->len = len;
        e->aprev = p;
        e->anext = n;
        if (p != NIL)
            *anext_of(a, p) = d | FB;
        if (n != NIL)
            *aprev_of(a, n) = d | FB;
        bin_insert(a, d);
    }
    *s = (struct l1_alloc_used){ 0, NIL, NIL };
}

uint64_t l1_alloc_largest_free(const struct l1_alloc *a)
{
    if (!a->bitmap)
        return 0;
    unsigned b = 63u - (unsigned)__builtin_clzll(a->bitmap);
    uint64_t best = 0;
    for (uint32_t d = a->bins[b]; d != NIL; d = a->f[d].fnext)
        if (a->f[d].len > best)
            best = a->f[d].len;
    return best << a->align_shift;
}
