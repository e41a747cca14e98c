/* transfer_pin: slice sizes and ranges of the background pinning of L1,
 * and the host -> device address translation of objects over slices
 * (src/transfer/transfer_pin.h; the CUDA backend's copy path uses it). */
#include <criterion/criterion.h>

#include "transfer/transfer_pin.h"

#define MIB (1ull << 20)
#define GIB (1ull << 30)

Test(transfer_pin, slice_size_is_aligned_and_bounded)
{
    cr_assert_eq(tp_slice_bytes(100 * MIB), 2 * MIB, "small segments: the 2 MiB minimum");
    cr_assert_eq(tp_slice_bytes(1 * GIB), 16 * MIB, "1/64 of the segment");
    cr_assert_eq(tp_slice_bytes(4 * GIB + 12345), 66 * MIB, "rounded up to the 2 MiB commit region");
    cr_assert_eq(tp_slice_bytes(80 * GIB), 256 * MIB, "large segments: the 256 MiB maximum");
    cr_assert_eq(tp_slice_bytes(1), 2 * MIB);
    for (uint64_t len = MIB; len < 2000 * GIB; len = len * 3 + 7) {
        uint64_t s = tp_slice_bytes(len);
        cr_assert_eq(s % TP_SLICE_ALIGN, 0);
        cr_assert(s >= TP_SLICE_MIN && s <= TP_SLICE_MAX);
        cr_assert_leq(tp_nslices(len, s), 64 + len / TP_SLICE_MAX + 1);
    }
}

Test(transfer_pin, slices_cover_the_segment_exactly)
{
    uint64_t len = 100 * MIB + 4096 + 17, s = tp_slice_bytes(len), n = tp_nslices(len, s), sum = 0;
    cr_assert_eq(n, 51);
    for (uint64_t i = 0; i < n; i++) {
        uint64_t off, k;
        tp_slice_range(len, s, i, &off, &k);
        cr_assert_eq(off, sum, "slices are contiguous");
        cr_assert(k > 0 && k <= s);
        sum += k;
    }
    cr_assert_eq(sum, len);
    uint64_t a, b;
    cr_assert(tp_slices_of(len, s, 2 * MIB - 1, 2, &a, &b));
    cr_assert(a == 0 && b == 1, "a range over a boundary touches both slices");
    cr_assert(tp_slices_of(len, s, len - 1, 1, &a, &b) && a == n - 1 && b == n - 1);
    cr_assert_not(tp_slices_of(len, s, len, 1, &a, &b), "past the end");
    cr_assert_not(tp_slices_of(len, s, 0, 0, &a, &b), "empty");
    cr_assert_not(tp_slices_of(len, s, 5, UINT64_MAX, &a, &b), "overflow");
}

/* Where a device sees each slice: UVA (the host address), or each slice
 * mapped on its own (no unified addressing), or not pinned (0). */
struct where {
    uint64_t host, slice;
    int mode; /* 0 UVA, 1 each slice elsewhere, 2 UVA but slice 3 unpinned, 3 slices 4-5 moved together */
};

static uint64_t dbase(void *arg, uint64_t i)
{
    struct where *w = arg;
    uint64_t h = w->host + i * w->slice;
    switch (w->mode) {
    case 0:
        return h;
    case 1:
        return 0x7000000000ull + i * 2 * w->slice; /* a gap after every slice */
    case 2:
        return i == 3 ? 0 : h;
    default:
        return i == 4 || i == 5 ? h + 0x100000000ull : h;
    }
}

Test(transfer_pin, translation_needs_every_slice_pinned_and_one_contiguous_mapping)
{
    uint64_t len = 100 * MIB, s = tp_slice_bytes(len), host = 0x7f0000000000ull, d;
    struct where w = {host, s, 0};
    cr_assert(tp_translate(host, len, s, dbase, &w, 5 * MIB + 8, MIB, &d));
    cr_assert_eq(d, host + 5 * MIB + 8, "unified addressing: the host address");
    cr_assert(tp_translate(host, len, s, dbase, &w, 2 * MIB - 64, 4 * MIB, &d), "spans 3 slices");
    w.mode = 1;
    cr_assert(tp_translate(host, len, s, dbase, &w, 2 * MIB + 100, 4096, &d), "inside one slice");
    cr_assert_eq(d, 0x7000000000ull + 2 * 2 * MIB + 100, "the slice's own device address plus the offset in it");
    cr_assert_not(tp_translate(host, len, s, dbase, &w, 2 * MIB - 64, 128, &d),
                  "over a boundary where the slices map apart: not contiguous on the device");
    w.mode = 2;
    cr_assert_not(tp_translate(host, len, s, dbase, &w, 6 * MIB + 1, 16, &d), "slice 3 is not pinned");
    cr_assert_not(tp_translate(host, len, s, dbase, &w, 5 * MIB, 2 * MIB, &d), "touches slice 3");
    cr_assert(tp_translate(host, len, s, dbase, &w, 8 * MIB, 2 * MIB, &d) && d == host + 8 * MIB);
    w.mode = 3;
    cr_assert(tp_translate(host, len, s, dbase, &w, 9 * MIB, 2 * MIB, &d), "slices 4 and 5 moved together");
    cr_assert_eq(d, host + 9 * MIB + 0x100000000ull);
    cr_assert_not(tp_translate(host, len, s, dbase, &w, 11 * MIB, 2 * MIB, &d), "5 and 6 apart");
    cr_assert_not(tp_translate(host, len, s, dbase, &w, len - 8, 16, &d), "past the segment");
}
