/* The L1 free-extent allocator on its own: no segment, offsets only.
 * Extents belong to slots (the caller's object table indices). */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "l1/l1_alloc.h"

#define BASE 65536ull
#define ALIGN 4096ull

struct live {
    uint64_t off, len; /* len: rounded bytes */
};

static int cmp_off(const void *a, const void *b)
{
    const struct live *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

/* Checks that live extents are aligned, inside the range and disjoint, and
 * that the allocator's used count equals their sum. */
static void check_live(struct l1_alloc *a, struct live *l, size_t n)
{
    qsort(l, n, sizeof(*l), cmp_off);
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        cr_assert_eq(l[i].off % ALIGN, 0);
        cr_assert_eq(l[i].len % ALIGN, 0);
        cr_assert(l[i].off >= a->base && l[i].off + l[i].len <= a->base + a->bytes);
        if (i)
            cr_assert(l[i - 1].off + l[i - 1].len <= l[i].off, "extents overlap at %zu", i);
        sum += l[i].len;
    }
    cr_assert_eq(a->used, sum);
    cr_assert_eq(a->n_used, n);
    cr_assert(a->n_free <= n + 1, "free extents never outnumber used ones + 1");
}

Test(l1_alloc, rejects_bad_alignment)
{
    struct l1_alloc a;
    cr_assert_eq(l1_alloc_init(&a, 0, 3 * 4096, 3000, 8), -EINVAL);
    cr_assert_eq(l1_alloc_init(&a, 0, 3 * 4096, 0, 8), -EINVAL);
    cr_assert_eq(l1_alloc_init(&a, 100, 3 * 4096, 4096, 8), -EINVAL);
    cr_assert_eq(l1_alloc_init(&a, 0, 4096, 4096, 0), -EINVAL);
    cr_assert_eq(l1_alloc_init(&a, 0, 4096, 4096, 8), 0);
    l1_alloc_fini(&a);
}

/* 32-bit links and unit offsets: a range of more than UINT32_MAX units, or
 * more slots than the links address, is refused (never truncated). */
Test(l1_alloc, refuses_what_32_bit_links_cannot_address)
{
    struct l1_alloc a;
    cr_assert_eq(l1_alloc_init(&a, 0, (UINT32_MAX + 1ull) * 8, 8, 8), -E2BIG);
    cr_assert_eq(l1_alloc_init(&a, 0, 4096, 4096, L1_ALLOC_MAX_SLOTS + 1ull), -E2BIG);
    cr_assert_eq(l1_alloc_init(&a, 0, (uint64_t)UINT32_MAX * 8, 8, 8), 0, "UINT32_MAX units fit");
    cr_assert_eq(l1_alloc_get(&a, (uint64_t)UINT32_MAX * 8, 3), 0);
    cr_assert_eq(l1_alloc_off(&a, 3), 0);
    l1_alloc_put(&a, 3, (uint64_t)UINT32_MAX * 8);
    cr_assert_eq(a.used, 0);
    cr_assert_eq(l1_alloc_get(&a, 8, 8), -EINVAL, "slot out of range");
    l1_alloc_fini(&a);
}

Test(l1_alloc, rounds_sizes_and_aligns_offsets)
{
    struct l1_alloc a;
    cr_assert_eq(l1_alloc_init(&a, BASE, 64 * ALIGN, ALIGN, 4), 0);
    cr_assert_eq(l1_alloc_get(&a, 1, 0), 0);
    cr_assert_eq(a.used, ALIGN);
    cr_assert_eq(l1_alloc_get(&a, ALIGN + 1, 1), 0);
    cr_assert_eq(a.used, 3 * ALIGN);
    cr_assert_eq(l1_alloc_off(&a, 0), BASE);
    cr_assert_eq(l1_alloc_off(&a, 1), BASE + ALIGN);
    cr_assert_eq(l1_alloc_get(&a, 0, 2), -EINVAL);
    l1_alloc_put(&a, 0, 1);
    l1_alloc_put(&a, 1, ALIGN + 1);
    cr_assert_eq(a.used, 0);
    cr_assert_eq(a.n_free, 1);
    l1_alloc_fini(&a);
}

Test(l1_alloc, fails_cleanly_when_full_and_recovers)
{
    struct l1_alloc a;
    cr_assert_eq(l1_alloc_init(&a, BASE, 8 * ALIGN, ALIGN, 9), 0);
    for (uint32_t i = 0; i < 8; i++)
        cr_assert_eq(l1_alloc_get(&a, ALIGN, i), 0);
    cr_assert_eq(l1_alloc_get(&a, 1, 8), -ENOMEM);
    cr_assert_eq(a.used, 8 * ALIGN);
    /* Free two non-adjacent units: 2 units free but no 2-unit extent. */
    l1_alloc_put(&a, 2, ALIGN);
    l1_alloc_put(&a, 5, ALIGN);
    cr_assert_eq(l1_alloc_get(&a, 2 * ALIGN, 8), -ENOMEM);
    /* Freeing the neighbour coalesces 2..3 into a 2-unit extent. */
    l1_alloc_put(&a, 3, ALIGN);
    cr_assert_eq(l1_alloc_get(&a, 2 * ALIGN, 8), 0);
    cr_assert_eq(l1_alloc_off(&a, 8), BASE + 2 * ALIGN);
    l1_alloc_fini(&a);
}

Test(l1_alloc, random_mixed_sizes_no_overlap_no_leak_and_full_reclaim)
{
    enum { SLOTS = 512, ROUNDS = 20000 };
    const uint64_t bytes = 4096 * ALIGN; /* 16 MiB of offsets */
    /* Size classes like several models at once: small, medium, large, odd. */
    const uint64_t classes[] = { 1, ALIGN, 3 * ALIGN + 17, 16 * ALIGN, 40 * ALIGN - 5,
                                 100 * ALIGN };
    struct l1_alloc a;
    uint64_t size[SLOTS] = { 0 }; /* 0: slot holds nothing */
    size_t n_live = 0, fails = 0;
    cr_assert_eq(l1_alloc_init(&a, BASE, bytes, ALIGN, SLOTS), 0);
    srand(12345);
    for (int r = 0; r < ROUNDS; r++) {
        uint32_t slot = (uint32_t)(rand() % SLOTS);
        if (size[slot]) {
            l1_alloc_put(&a, slot, size[slot]);
            size[slot] = 0;
            n_live--;
        } else {
            uint64_t sz = classes[rand() % 6] + (uint64_t)(rand() % 3) * ALIGN;
            if (l1_alloc_get(&a, sz, slot) == 0) {
                size[slot] = sz;
                n_live++;
            } else {
                fails++;
            }
        }
        if (r % 997 == 0) {
            struct live l[SLOTS];
            size_t k = 0;
            for (uint32_t i = 0; i < SLOTS; i++)
                if (size[i])
                    l[k++] = (struct live){ l1_alloc_off(&a, i), l1_alloc_round(&a, size[i]) };
            cr_assert_eq(k, n_live);
            check_live(&a, l, k);
        }
    }
    cr_assert(fails > 0, "the pool should have been under pressure at times");
    for (uint32_t i = 0; i < SLOTS; i++)
        if (size[i])
            l1_alloc_put(&a, i, size[i]);
    cr_assert_eq(a.used, 0, "leak: %llu bytes still used", (unsigned long long)a.used);
    cr_assert_eq(a.n_free, 1, "free extents did not coalesce: %llu left",
                 (unsigned long long)a.n_free);
    cr_assert_eq(l1_alloc_get(&a, bytes, 0), 0);
    cr_assert_eq(l1_alloc_off(&a, 0), BASE);
    cr_assert_eq(l1_alloc_largest_free(&a), 0);
    l1_alloc_fini(&a);
}

/* Many used extents with a free hole between each pair: the most free
 * extents there can be (one per slot + 1), all from the pool sized at init. */
Test(l1_alloc, worst_fragmentation_fits_the_descriptor_pool)
{
    enum { N = 2000 };
    struct l1_alloc a;
    cr_assert_eq(l1_alloc_init(&a, 0, 2 * N * ALIGN, ALIGN, N), 0);
    for (uint32_t i = 0; i < N; i++)
        cr_assert_eq(l1_alloc_get(&a, ALIGN, i), 0);
    for (uint32_t i = 0; i < N; i += 2)
        l1_alloc_put(&a, i, ALIGN);
    cr_assert_eq(a.n_free, N / 2 + 1, "every other unit and the tail");
    for (uint32_t i = 1; i < N; i += 2)
        l1_alloc_put(&a, i, ALIGN);
    cr_assert_eq(a.n_free, 1);
    cr_assert_eq(a.used, 0);
    cr_assert_eq(l1_alloc_largest_free(&a), 2 * N * ALIGN);
    l1_alloc_fini(&a);
}

Test(l1_alloc, best_fit_within_bin_prefers_exact_hole)
{
    struct l1_alloc a;
    cr_assert_eq(l1_alloc_init(&a, 0, 64 * ALIGN, ALIGN, 8), 0);
    /* Layout: [5u][1u][6u][1u]... holes of 5 and 6 units in bin 2. */
    cr_assert_eq(l1_alloc_get(&a, 5 * ALIGN, 0), 0);
    cr_assert_eq(l1_alloc_get(&a, ALIGN, 1), 0);
    cr_assert_eq(l1_alloc_get(&a, 6 * ALIGN, 2), 0);
    cr_assert_eq(l1_alloc_get(&a, ALIGN, 3), 0);
    l1_alloc_put(&a, 0, 5 * ALIGN);
    l1_alloc_put(&a, 2, 6 * ALIGN);
    cr_assert_eq(l1_alloc_get(&a, 6 * ALIGN, 4), 0);
    cr_assert_eq(l1_alloc_off(&a, 4), 6 * ALIGN, "took the 6-unit hole, not the tail or a split");
    cr_assert_eq(l1_alloc_largest_free(&a), 51 * ALIGN);
    l1_alloc_fini(&a);
}
