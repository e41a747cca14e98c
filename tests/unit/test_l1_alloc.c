/* The L1 free-extent allocator on its own: no segment, offsets only. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "l1/l1_alloc.h"

#define BASE 65536ull
#define ALIGN 4096ull

static int cmp_off(const void *a, const void *b)
{
    const struct l1_extent *x = *(struct l1_extent *const *)a;
    const struct l1_extent *y = *(struct l1_extent *const *)b;
    return x->off < y->off ? -1 : x->off > y->off;
}

/* Checks that live extents are aligned, inside the range and disjoint, and
 * that the allocator's used count equals their sum. */
static void check_live(struct l1_alloc *a, struct l1_extent **live, size_t n)
{
    struct l1_extent **s = malloc((n ? n : 1) * sizeof(*s));
    memcpy(s, live, n * sizeof(*s));
    qsort(s, n, sizeof(*s), cmp_off);
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        cr_assert_eq(s[i]->off % ALIGN, 0);
        cr_assert_eq(s[i]->len % ALIGN, 0);
        cr_assert(s[i]->off >= a->base && s[i]->off + s[i]->len <= a->base + a->bytes);
        if (i)
            cr_assert(s[i - 1]->off + s[i - 1]->len <= s[i]->off, "extents overlap at %zu", i);
        sum += s[i]->len;
    }
    cr_assert_eq(a->used, sum);
    free(s);
}

Test(l1_alloc, rejects_bad_alignment)
{
    struct l1_alloc a;
    cr_assert_eq(l1_alloc_init(&a, 0, 3 * 4096, 3000), -EINVAL);
    cr_assert_eq(l1_alloc_init(&a, 0, 3 * 4096, 0), -EINVAL);
    cr_assert_eq(l1_alloc_init(&a, 100, 3 * 4096, 4096), -EINVAL);
    cr_assert_eq(l1_alloc_init(&a, 0, 4096, 4096), 0);
    l1_alloc_fini(&a);
}

Test(l1_alloc, rounds_sizes_and_aligns_offsets)
{
    struct l1_alloc a;
    struct l1_extent *e1, *e2;
    cr_assert_eq(l1_alloc_init(&a, BASE, 64 * ALIGN, ALIGN), 0);
    cr_assert_eq(l1_alloc_get(&a, 1, &e1), 0);
    cr_assert_eq(e1->len, ALIGN);
    cr_assert_eq(l1_alloc_get(&a, ALIGN + 1, &e2), 0);
    cr_assert_eq(e2->len, 2 * ALIGN);
    cr_assert_eq(e1->off % ALIGN, 0);
    cr_assert_eq(e2->off % ALIGN, 0);
    cr_assert_eq(a.used, 3 * ALIGN);
    cr_assert_eq(l1_alloc_get(&a, 0, &e1), -EINVAL);
    l1_alloc_fini(&a);
}

Test(l1_alloc, fails_cleanly_when_full_and_recovers)
{
    struct l1_alloc a;
    struct l1_extent *e[8], *x;
    cr_assert_eq(l1_alloc_init(&a, BASE, 8 * ALIGN, ALIGN), 0);
    for (int i = 0; i < 8; i++)
        cr_assert_eq(l1_alloc_get(&a, ALIGN, &e[i]), 0);
    cr_assert_eq(l1_alloc_get(&a, 1, &x), -ENOMEM);
    cr_assert_eq(a.used, 8 * ALIGN);
    /* Free two non-adjacent units: 2 units free but no 2-unit extent. */
    l1_alloc_put(&a, e[2]);
    l1_alloc_put(&a, e[5]);
    cr_assert_eq(l1_alloc_get(&a, 2 * ALIGN, &x), -ENOMEM);
    /* Freeing the neighbour coalesces 2..3 into a 2-unit extent. */
    l1_alloc_put(&a, e[3]);
    cr_assert_eq(l1_alloc_get(&a, 2 * ALIGN, &x), 0);
    cr_assert_eq(x->off, BASE + 2 * ALIGN);
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
    struct l1_extent *live[SLOTS] = { 0 };
    size_t n_live = 0, fails = 0;
    cr_assert_eq(l1_alloc_init(&a, BASE, bytes, ALIGN), 0);
    srand(12345);
    for (int r = 0; r < ROUNDS; r++) {
        int slot = rand() % SLOTS;
        if (live[slot]) {
            l1_alloc_put(&a, live[slot]);
            live[slot] = NULL;
            n_live--;
        } else {
            uint64_t sz = classes[rand() % 6] + (uint64_t)(rand() % 3) * ALIGN;
            if (l1_alloc_get(&a, sz, &live[slot]) == 0) {
                cr_assert(live[slot]->len >= sz);
                n_live++;
            } else {
                live[slot] = NULL;
                fails++;
            }
        }
        if (r % 997 == 0) {
            struct l1_extent *l[SLOTS];
            size_t k = 0;
            for (int i = 0; i < SLOTS; i++)
                if (live[i])
                    l[k++] = live[i];
            cr_assert_eq(k, n_live);
            check_live(&a, l, k);
        }
    }
    cr_assert(fails > 0, "the pool should have been under pressure at times");
    for (int i = 0; i < SLOTS; i++)
        if (live[i])
            l1_alloc_put(&a, live[i]);
    cr_assert_eq(a.used, 0, "leak: %llu bytes still used", (unsigned long long)a.used);
    cr_assert_eq(a.n_free, 1, "free extents did not coalesce: %llu left",
                 (unsigned long long)a.n_free);
    struct l1_extent *all;
    cr_assert_eq(l1_alloc_get(&a, bytes, &all), 0);
    cr_assert_eq(all->off, BASE);
    cr_assert_eq(l1_alloc_largest_free(&a), 0);
    l1_alloc_fini(&a);
}

Test(l1_alloc, best_fit_within_bin_prefers_exact_hole)
{
    struct l1_alloc a;
    struct l1_extent *e[6], *x;
    cr_assert_eq(l1_alloc_init(&a, 0, 64 * ALIGN, ALIGN), 0);
    /* Layout: [5u][gap][7u][gap][6u]... holes of 5 and 6 units in bin 2. */
    cr_assert_eq(l1_alloc_get(&a, 5 * ALIGN, &e[0]), 0);
    cr_assert_eq(l1_alloc_get(&a, ALIGN, &e[1]), 0);
    cr_assert_eq(l1_alloc_get(&a, 6 * ALIGN, &e[2]), 0);
    cr_assert_eq(l1_alloc_get(&a, ALIGN, &e[3]), 0);
    l1_alloc_put(&a, e[0]);
    l1_alloc_put(&a, e[2]);
    cr_assert_eq(l1_alloc_get(&a, 6 * ALIGN, &x), 0);
    cr_assert_eq(x->off, 6 * ALIGN, "took the 6-unit hole, not the tail or a split");
    cr_assert_eq(l1_alloc_largest_free(&a), 51 * ALIGN);
    l1_alloc_fini(&a);
}
