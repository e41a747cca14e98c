/* l1_commit: ranges are backed once, the space after them ahead of use, and
 * bad ranges refused. A memfd is a tmpfs file like the L1 segment; its
 * st_blocks says which pages exist. (A full /dev/shm: tests/e2e/test_l1_shm_full.py.) */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "l1/l1_commit.h"

#define MIB (1ull << 20)

static uint64_t backed_bytes(int fd)
{
    struct stat st;
    cr_assert_eq(fstat(fd, &st), 0);
    return (uint64_t)st.st_blocks * 512;
}

Test(l1_commit, backs_whole_regions_then_ahead_forgets_on_reset_and_refuses_bad_ranges, .timeout = 30)
{
    int fd = memfd_create("l1_commit_test", MFD_CLOEXEC);
    cr_assert(fd >= 0);
    uint64_t size = 64 * MIB + 12345; /* a partial last region */
    cr_assert_eq(ftruncate(fd, (off_t)size), 0);
    struct l1_commit *c;
    cr_assert_eq(l1_commit_start(fd, size, &c), 0);
    cr_assert_eq(backed_bytes(fd), 0);

    cr_assert_eq(l1_commit_back(c, 4096, MIB), 0);
    cr_assert_geq(backed_bytes(fd), MIB, "the reservation is backed at once");
    /* commit-ahead: at least 16 MiB after the region, soon (bounded wait) */
    for (int i = 0; i < 500 && backed_bytes(fd) < 18 * MIB; i++)
        usleep(10000);
    cr_assert_geq(backed_bytes(fd), 17 * MIB, "the space after it is committed ahead");
    cr_assert_leq(backed_bytes(fd), 2 * MIB + 256 * MIB);
    /* the reservation's own partial region (4 KiB .. 1 MiB + 4 KiB of
     * region 0) is completed in the background and marked: no permanent
     * hole in the bitmap where objects live */
    for (int i = 0; i < 500 && !l1_commit_backed(c, 0, 2 * MIB); i++)
        usleep(10000);
    cr_assert(l1_commit_backed(c, 0, 2 * MIB), "the partial first region is marked backed by commit-ahead");

    /* A whole region is remembered. A truncation (here: a hole punched by
     * "someone else") takes the pages; the bitmap still says backed until a
     * reset, then the region is backed again. */
    cr_assert_eq(l1_commit_back(c, 2 * MIB, 2 * MIB), 0);
    /* commit-ahead settles: regions 0 (completed above) to 9 (16 MiB past region 1) */
    for (int i = 0; i < 500 && backed_bytes(fd) < 20 * MIB; i++)
        usleep(10000);
    cr_assert_eq(backed_bytes(fd), 20 * MIB);
    cr_assert_eq(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, (off_t)(64 * MIB)), 0);
    uint64_t gone = backed_bytes(fd);
    cr_assert_lt(gone, MIB);
    cr_assert_eq(l1_commit_back(c, 2 * MIB, 2 * MIB), 0);
    cr_assert_eq(backed_bytes(fd), gone, "a backed region costs no fallocate");
    l1_commit_reset(c);
    cr_assert_eq(l1_commit_back(c, 2 * MIB, 2 * MIB), 0);
    cr_assert_geq(backed_bytes(fd), 2 * MIB, "after a reset the region is backed again");

    /* the tail region, partial */
    cr_assert_eq(l1_commit_back(c, size - 100, 100), 0);
    cr_assert_eq(l1_commit_back(c, 0, 0), 0);
    cr_assert_eq(l1_commit_back(c, size, 1), -EINVAL);
    cr_assert_eq(l1_commit_back(c, size - 10, 11), -EINVAL);
    cr_assert_eq(l1_commit_back(c, 1, UINT64_MAX), -EINVAL);
    l1_commit_stop(c);
    l1_commit_stop(NULL);
    close(fd);
}

Test(l1_commit, backed_says_whether_a_range_would_need_a_fallocate, .timeout = 30)
{
    int fd = memfd_create("l1_commit_backed", MFD_CLOEXEC);
    cr_assert(fd >= 0);
    uint64_t size = 512 * MIB; /* more than commit-ahead reaches from the start */
    cr_assert_eq(ftruncate(fd, (off_t)size), 0);
    struct l1_commit *c;
    cr_assert_eq(l1_commit_start(fd, size, &c), 0);
    cr_assert(l1_commit_backed(c, 0, 0), "an empty range needs nothing");
    cr_assert_not(l1_commit_backed(c, 0, 4096), "nothing is backed at start");
    cr_assert_eq(l1_commit_back(c, 2 * MIB, 2 * MIB), 0); /* exactly region 1 */
    cr_assert(l1_commit_backed(c, 2 * MIB, 2 * MIB));
    cr_assert(l1_commit_backed(c, 3 * MIB, 4096), "inside a backed region");
    cr_assert_not(l1_commit_backed(c, 2 * MIB - 4096, 8192), "region 0 is not backed");
    cr_assert_not(l1_commit_backed(c, 500 * MIB, 4096), "far past commit-ahead's reach");
    cr_assert_not(l1_commit_backed(c, size, 1), "outside the segment");
    cr_assert_not(l1_commit_backed(c, 1, UINT64_MAX));
    l1_commit_reset(c);
    cr_assert_not(l1_commit_backed(c, 2 * MIB, 2 * MIB), "a reset forgets it");
    /* what the caller backed itself (the header and table): whole regions
     * only, nothing ahead */
    l1_commit_mark(c, 100 * MIB, 5 * MIB); /* far from what commit-ahead reached above */
    cr_assert(l1_commit_backed(c, 100 * MIB, 4 * MIB), "regions 50 and 51 are marked");
    cr_assert_not(l1_commit_backed(c, 104 * MIB, 4096), "region 52 is only partly inside");
    usleep(100000);
    cr_assert_not(l1_commit_backed(c, 104 * MIB, 4096), "marking asks for nothing ahead");
    l1_commit_mark(c, size - 3 * MIB, 3 * MIB);
    cr_assert(l1_commit_backed(c, size - 2 * MIB, 2 * MIB), "the last region, inside up to the end");
    l1_commit_stop(c);
    close(fd);
}

/* A reservation in space whose regions and the space ahead are all backed
 * (a running server reusing its segment) hands the committer nothing, so it
 * wakes nobody; one with unbacked space ahead does, and that space gets
 * backed. */
Test(l1_commit, reservations_in_backed_space_wake_nobody, .timeout = 30)
{
    int fd = memfd_create("l1_commit_wakes", MFD_CLOEXEC);
    cr_assert(fd >= 0);
    uint64_t size = 64 * MIB;
    cr_assert_eq(ftruncate(fd, (off_t)size), 0);
    struct l1_commit *c;
    cr_assert_eq(l1_commit_start(fd, size, &c), 0);
    cr_assert_eq(l1_commit_wakes(c), 0);
    cr_assert_eq(l1_commit_back(c, 0, 2 * MIB), 0);
    cr_assert_eq(l1_commit_wakes(c), 1, "space ahead not backed: the committer is asked");
    /* each asks for the 16 MiB after it (a later reservation replaces a
     * range not yet taken, so each is awaited): together all of the segment */
    for (uint64_t off = 18 * MIB; off < size; off += 18 * MIB) {
        for (int i = 0; i < 500 && !l1_commit_backed(c, 0, off); i++)
            usleep(10000);
        cr_assert_eq(l1_commit_back(c, off, 2 * MIB), 0);
    }
    for (int i = 0; i < 500 && !l1_commit_backed(c, 0, size); i++)
        usleep(10000);
    cr_assert(l1_commit_backed(c, 0, size), "commit-ahead backed the whole segment");
    cr_assert_eq(backed_bytes(fd), size);
    uint64_t w = l1_commit_wakes(c);
    cr_assert_leq(w, 4);
    for (uint64_t off = 0; off + MIB <= size; off += MIB)
        cr_assert_eq(l1_commit_back(c, off, MIB), 0);
    cr_assert_eq(l1_commit_back(c, 4096, 3 * MIB), 0, "partial regions, already backed");
    cr_assert_eq(l1_commit_wakes(c), w, "nothing to do ahead: nobody was woken");

    /* after a reset every region is unbacked again: the next reservation wakes it */
    l1_commit_reset(c);
    cr_assert_eq(l1_commit_back(c, 0, MIB), 0);
    cr_assert_eq(l1_commit_wakes(c), w + 1);
    for (int i = 0; i < 500 && !l1_commit_backed(c, 2 * MIB, 16 * MIB); i++)
        usleep(10000);
    cr_assert(l1_commit_backed(c, 2 * MIB, 16 * MIB), "the space ahead is backed again");
    l1_commit_stop(c);
    close(fd);
}
