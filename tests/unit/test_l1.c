/* L1: segment, states, read locks, eviction. Time comes from a fake clock. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "l1/l1.h"
#include "l1/l1_internal.h"
#include "l1/l1_shm.h"
#include "util/log.h"

#define SEC 1000000000ull
#define UNIT 4096ull

struct fake_clock {
    uint64_t now; /* atomic: stress threads read it */
};
static uint64_t fake_now(void *ctx)
{
    return __atomic_load_n(&((struct fake_clock *)ctx)->now, __ATOMIC_RELAXED);
}
static struct fake_clock fclk = { 1000 * SEC };
static const struct clock_src test_clock = { fake_now, &fclk };
static void advance(uint64_t ns) { __atomic_add_fetch(&fclk.now, ns, __ATOMIC_RELAXED); }

static char seg_name[64];

/* Default options on this test's segment name and the fake clock. */
static void test_opts(struct l1_opts *o, uint64_t size_bytes)
{
    l1_opts_init(o);
    snprintf(seg_name, sizeof(seg_name), "lmcd_test_l1_%ld", (long)getpid());
    o->shm_name = seg_name;
    o->size_bytes = size_bytes;
    o->clock = &test_clock;
}

/* An L1 whose data area holds exactly `units` 4 KiB units. */
static struct l1 *make_l1_policy(uint64_t units, enum l1_policy policy)
{
    struct l1_opts o;
    /* header 4096 + table 256*64 = 16384 (4 units; layout 3) */
    test_opts(&o, 4096 + 4 * UNIT + units * UNIT);
    o.max_objects = 256;
    o.policy = policy;
    struct l1 *l1;
    cr_assert_eq(l1_create(&o, &l1), 0);
    struct l1_stats st;
    l1_stats_get(l1, &st);
    cr_assert_eq(st.memory_total_bytes, units * UNIT);
    return l1;
}
static struct l1 *make_l1(uint64_t units) { return make_l1_policy(units, L1_POLICY_LRU); }

static struct l1_key key(int i)
{
    struct l1_key k;
    memset(&k, 0, sizeof(k));
    memcpy(k.chunk_hash, &i, sizeof(i));
    k.ns = 7;
    return k;
}

/* Reserves `bytes` for key i; returns the outcome and fills *r. */
static enum l1_status reserve1(struct l1 *l1, int i, uint64_t bytes, uint64_t writer,
                               struct l1_ref *r)
{
    struct l1_key k = key(i);
    enum l1_status st;
    l1_reserve_write(l1, &k, &bytes, 1, writer, &st, r);
    return st;
}

/* Reserves and publishes key i with `units` units; returns its ref. */
static struct l1_ref put(struct l1 *l1, int i, uint64_t units)
{
    struct l1_key k = key(i);
    struct l1_ref r;
    enum l1_status st = reserve1(l1, i, units * UNIT, 1, &r);
    cr_assert_eq(st, L1_OK, "key %d: %s", i, l1_status_name(st));
    cr_assert_eq(l1_publish(l1, &k, &r.id, 1, 1, NULL), 1);
    return r;
}

/* An L1 of `units` units holding keys 0..n-1 of `each` units, oldest first. */
static struct l1 *make_filled(uint64_t units, enum l1_policy policy, int n, uint64_t each)
{
    struct l1 *l1 = make_l1_policy(units, policy);
    for (int i = 0; i < n; i++)
        put(l1, i, each);
    return l1;
}

static bool present(struct l1 *l1, int i)
{
    struct l1_key k = key(i);
    struct l1_ref r;
    return l1_get(l1, &k, &r) == 0;
}

static struct l1_stats stats(struct l1 *l1)
{
    struct l1_stats st;
    l1_stats_get(l1, &st);
    return st;
}

/* ---- segment -------------------------------------------------------------- */

Test(l1, segment_is_0600_and_unlinked_at_destroy)
{
    struct l1 *l1 = make_l1(16);
    char path[80];
    snprintf(path, sizeof(path), "/dev/shm/%s", l1_shm_name(l1));
    cr_assert_str_eq(l1_shm_name(l1), seg_name, "the name has no leading slash");
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0600);
    cr_assert_eq((uint64_t)st.st_size, l1_pool_size(l1));
    l1_destroy(l1);
    cr_assert_eq(stat(path, &st), -1);
    cr_assert_eq(errno, ENOENT);
}

Test(l1, segment_header_describes_layout_and_offsets_fall_in_data_area)
{
    struct l1 *l1 = make_l1(16);
    const struct l1_seg_header *h = l1_base(l1);
    cr_assert_eq(memcmp(h->magic, L1_SEG_MAGIC, 8), 0);
    cr_assert_eq(h->layout_version, L1_SEG_LAYOUT_VERSION);
    cr_assert_eq(h->owner_pid, (uint64_t)getpid());
    cr_assert_eq(h->chunk_size, 256);
    cr_assert_str_eq(h->hash_name, "blake3");
    cr_assert_eq(h->align_bytes, UNIT);
    cr_assert_eq(h->table_entries, 256);
    struct l1_ref r = put(l1, 1, 2);
    cr_assert(r.offset >= h->data_offset && r.offset + r.length <= l1_pool_size(l1));
    cr_assert_eq(r.offset % UNIT, 0);
    /* The object table in the segment lists it as READY. */
    const struct l1_seg_entry *t = (const void *)((const char *)l1_base(l1) + h->table_offset);
    int ready = 0;
    for (uint64_t i = 0; i < h->table_entries; i++)
        if (t[i].state == L1_SEG_READY && h->data_offset + (uint64_t)t[i].offset_units * UNIT == r.offset &&
            t[i].length == 2 * UNIT && t[i].key.chunk_hash[0] == 1)
            ready++;
    cr_assert_eq(ready, 1);
    l1_destroy(l1);
}

/* The table entry of the object at ref r (layout 3), or NULL. */
static const struct l1_seg_entry *entry_of(struct l1 *l1, const struct l1_ref *r)
{
    const struct l1_seg_header *h = l1_base(l1);
    const struct l1_seg_entry *t = (const void *)((const char *)l1_base(l1) + h->table_offset);
    for (uint64_t i = 0; i < h->table_entries; i++)
        if (t[i].state != L1_SEG_FREE && h->data_offset + (uint64_t)t[i].offset_units * h->align_bytes == r->offset)
            return &t[i];
    return NULL;
}

/* Thousands of objects: the index doubles several times, freed slots are
 * reused, and every key still finds its own object, whose table entry
 * names its key, place and length. */
Test(l1, many_objects_grow_the_index_and_every_key_finds_its_own_object)
{
    enum { N = 3000 };
    struct l1_opts o;
    test_opts(&o, 4096 + 256 * 1024 + N * 64);
    o.align_bytes = 64;
    o.max_objects = N;
    struct l1 *l1;
    cr_assert_eq(l1_create(&o, &l1), 0);
    static struct l1_ref refs[2 * N];
    /* keys 0..N-1 fill the table; the first half goes; N..N+N/2-1 take
     * their slots */
    for (int i = 0; i < N + N / 2; i++) {
        if (i == N)
            for (int j = 0; j < N / 2; j++) {
                struct l1_key kj = key(j);
                cr_assert_eq(l1_remove(l1, &kj, &refs[j].id, 1, false), 1);
            }
        struct l1_key k = key(i);
        enum l1_status st;
        uint64_t size = 1 + (uint64_t)(i % 64);
        cr_assert_eq(l1_reserve_write(l1, &k, &size, 1, 1, &st, &refs[i]), 1, "key %d", i);
        memset((char *)l1_base(l1) + refs[i].offset, i & 0xff, size);
        cr_assert_eq(l1_publish(l1, &k, &refs[i].id, 1, 1, NULL), 1);
    }
    struct l1_stats st = stats(l1);
    cr_assert_eq(st.total_object_count, N);
    for (int i = N / 2; i < N + N / 2; i++) {
        struct l1_key k = key(i);
        struct l1_ref r;
        cr_assert_eq(l1_get(l1, &k, &r), 0, "key %d", i);
        cr_assert_eq(r.id, refs[i].id);
        cr_assert_eq(r.offset, refs[i].offset);
        cr_assert_eq(r.length, 1 + (uint64_t)(i % 64));
        cr_assert_eq(((unsigned char *)l1_base(l1))[r.offset], (unsigned char)(i & 0xff));
        const struct l1_seg_entry *e = entry_of(l1, &r);
        cr_assert_not_null(e);
        cr_assert_eq(e->state, L1_SEG_READY);
        cr_assert_eq(e->length, r.length);
        cr_assert_eq(memcmp(&e->key, &k, sizeof(k)), 0);
    }
    for (int i = 0; i < N / 2; i++)
        cr_assert_not(present(l1, i), "removed key %d", i);
    l1_destroy(l1);
}

/* The key is kept only in the segment, where any worker can write. A key
 * overwritten there makes its object a miss; it never makes a lookup of
 * another key land on it (the index's hash lives in lmcd's memory). */
Test(l1, a_key_overwritten_in_the_table_is_a_miss_never_another_object)
{
    struct l1 *l1 = make_l1(8);
    struct l1_ref r1 = put(l1, 1, 1), r2 = put(l1, 2, 1);
    struct l1_seg_entry *e1 = (struct l1_seg_entry *)entry_of(l1, &r1);
    cr_assert_not_null(e1);
    e1->key = key(2); /* a worker scribbles key 2 over object 1's entry */
    struct l1_key k2 = key(2);
    struct l1_ref r;
    cr_assert_eq(l1_get(l1, &k2, &r), 0);
    cr_assert_eq(r.offset, r2.offset, "key 2 still finds its own object");
    cr_assert_not(present(l1, 1), "object 1 is a miss now");
    /* eviction and clear still free it: the index never trusted the entry */
    cr_assert_eq(l1_clear(l1, false), 2);
    cr_assert_eq(stats(l1).total_object_count, 0);
    cr_assert_eq(stats(l1).memory_used_bytes, 0);
    l1_destroy(l1);
}

/* A segment under seg_name as another process would leave it: with our
 * magic and `owner_pid` (0: no header), layout `version`. Returns its fd
 * (for the caller to lock or close). */
static int make_foreign_segment_fd(const char *name, uint64_t owner_pid, uint32_t version)
{
    char path[80];
    snprintf(path, sizeof(path), "/%s", name);
    int fd = shm_open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
    cr_assert(fd >= 0);
    cr_assert_eq(ftruncate(fd, 8192), 0);
    if (owner_pid) {
        struct l1_seg_header h = { .owner_pid = owner_pid, .layout_version = version };
        memcpy(h.magic, L1_SEG_MAGIC, 8);
        cr_assert_eq(pwrite(fd, &h, sizeof(h), 0), (ssize_t)sizeof(h));
    }
    return fd;
}

static void make_foreign_segment(const char *name, uint64_t owner_pid)
{
    close(make_foreign_segment_fd(name, owner_pid, L1_SEG_LAYOUT_VERSION));
}

Test(l1, stale_segment_is_removed_at_start)
{
    snprintf(seg_name, sizeof(seg_name), "lmcd_test_l1_%ld", (long)getpid());
    /* A dead owner: a child that exited and was reaped. */
    pid_t child = fork();
    if (child == 0)
        _exit(0);
    cr_assert(child > 0);
    waitpid(child, NULL, 0);
    make_foreign_segment(seg_name, (uint64_t)child);
    struct l1 *l1 = make_l1(16);
    const struct l1_seg_header *h = l1_base(l1);
    cr_assert_eq(h->owner_pid, (uint64_t)getpid(), "a fresh segment replaced the stale one");
    l1_destroy(l1);
}

/* issue 11 item 3: a forged owner pid (a live process, here our parent)
 * without the owner lock never blocks a start: the lock is the proof. */
Test(l1, forged_live_owner_pid_without_the_lock_does_not_block)
{
    snprintf(seg_name, sizeof(seg_name), "lmcd_test_l1_%ld", (long)getpid());
    make_foreign_segment(seg_name, (uint64_t)getppid());
    struct l1 *l1 = make_l1(16);
    cr_assert_eq(((const struct l1_seg_header *)l1_base(l1))->owner_pid, (uint64_t)getpid());
    l1_destroy(l1);
}

Test(l1, segment_whose_owner_holds_the_lock_is_refused)
{
    struct l1_opts o;
    struct l1 *l1 = NULL;
    test_opts(&o, 1 << 20);
    int fd = make_foreign_segment_fd(seg_name, 12345, L1_SEG_LAYOUT_VERSION);
    cr_assert_eq(flock(fd, LOCK_EX | LOCK_NB), 0);
    cr_assert_eq(l1_create(&o, &l1), -EBUSY);
    cr_assert_null(l1);
    char path[80];
    snprintf(path, sizeof(path), "/%s", seg_name);
    cr_assert_eq(shm_unlink(path), 0, "the live segment was left alone");
    close(fd);
}

Test(l1, foreign_file_under_an_explicit_name_is_refused_and_kept)
{
    struct l1_opts o;
    struct l1 *l1 = NULL;
    test_opts(&o, 1 << 20);
    make_foreign_segment(seg_name, 0); /* no lmcd header: not ours to remove */
    cr_assert_eq(l1_create(&o, &l1), -EBUSY);
    char path[80];
    snprintf(path, sizeof(path), "/%s", seg_name);
    cr_assert_eq(shm_unlink(path), 0, "the foreign file was left alone");
}

/* The default name (lmcache_l1_pool_<pid>) held by a live owner, as for two
 * lmcd that are both pid 1 in their own PID namespaces: a unique name.
 * Runs in a child whose own default name is free (a stranger's leftover
 * may hold this pid's); returns 0 or the number of the failed check. */
static int default_name_fallback_in_child(void)
{
    char dflt[64], path[80];
    snprintf(dflt, sizeof(dflt), "lmcache_l1_pool_%ld", (long)getpid());
    snprintf(path, sizeof(path), "/%s", dflt);
    int fd = shm_open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0)
        return 77; /* taken: the parent tries another pid */
    struct l1_seg_header h = { .owner_pid = 12345, .layout_version = L1_SEG_LAYOUT_VERSION };
    memcpy(h.magic, L1_SEG_MAGIC, 8);
    int rc = 0;
    if (ftruncate(fd, 8192) || pwrite(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h) ||
        flock(fd, LOCK_EX | LOCK_NB))
        rc = 1;
    struct l1_opts o;
    struct l1 *l1 = NULL;
    test_opts(&o, 1 << 20);
    o.shm_name = NULL;
    /* Eager: a lazy L1 starts its committer thread, and ThreadSanitizer
     * refuses new threads in the child of a multi-threaded process. */
    o.use_lazy = false;
    if (!rc && l1_create(&o, &l1) != 0)
        rc = 2;
    if (!rc && (!strcmp(l1_shm_name(l1), dflt) || strncmp(l1_shm_name(l1), dflt, strlen(dflt))))
        rc = 3; /* not lmcache_l1_pool_<pid>_<hex> */
    l1_destroy(l1);
    if (!rc && shm_unlink(path) != 0)
        rc = 4; /* the held default segment must stay */
    if (rc)
        shm_unlink(path);
    close(fd);
    return rc;
}

Test(l1, default_name_held_by_a_live_owner_falls_back_to_a_unique_name)
{
    for (int tries = 0; tries < 20; tries++) {
        pid_t c = fork();
        cr_assert(c >= 0);
        if (c == 0)
            _exit(default_name_fallback_in_child());
        int st = 0;
        cr_assert_eq(waitpid(c, &st, 0), c);
        cr_assert(WIFEXITED(st), "child status %d", st);
        if (WEXITSTATUS(st) == 77)
            continue;
        cr_assert_eq(WEXITSTATUS(st), 0, "check %d failed", WEXITSTATUS(st));
        return;
    }
    cr_assert(false, "20 pids in a row had their default segment name taken by strangers");
}

/* The start-up scan of the default pattern reclaims a dead lmcd's segment
 * (lock free) and never one whose owner holds its lock, nor a layout-1
 * segment (an older lmcd, no lock: a pid proves nothing across PID
 * namespaces). */
Test(l1, scan_reclaims_dead_default_segments_only)
{
    char dead[64], live[64], old[64], path[80];
    snprintf(dead, sizeof(dead), "lmcache_l1_pool_%ld_test_dead", (long)getpid());
    snprintf(live, sizeof(live), "lmcache_l1_pool_%ld_test_live", (long)getpid());
    snprintf(old, sizeof(old), "lmcache_l1_pool_%ld_test_v1", (long)getpid());
    close(make_foreign_segment_fd(dead, 999999, L1_SEG_LAYOUT_VERSION));
    int lfd = make_foreign_segment_fd(live, 999999, L1_SEG_LAYOUT_VERSION);
    cr_assert_eq(flock(lfd, LOCK_EX | LOCK_NB), 0);
    close(make_foreign_segment_fd(old, 999999, 1));
    struct l1 *l1 = make_l1(16);
    snprintf(path, sizeof(path), "/dev/shm/%s", dead);
    cr_assert_eq(access(path, F_OK), -1, "the dead owner's segment was reclaimed");
    snprintf(path, sizeof(path), "/dev/shm/%s", live);
    cr_assert_eq(access(path, F_OK), 0, "a live owner keeps its segment");
    snprintf(path, sizeof(path), "/dev/shm/%s", old);
    cr_assert_eq(access(path, F_OK), 0, "a layout-1 segment is not the scan's to judge");
    l1_destroy(l1);
    snprintf(path, sizeof(path), "/%s", live);
    shm_unlink(path);
    close(lfd);
    snprintf(path, sizeof(path), "/%s", old);
    shm_unlink(path);
}

/* issue 11 item 5: another process truncates the segment. lmcd's own
 * accesses never die of SIGBUS (the guard), every object is dropped (none
 * is readable again), a held one stays pending, and the segment is
 * restored in place, usable at the same address. */
Test(l1, truncated_segment_is_detected_dropped_and_restored)
{
    struct l1 *l1 = make_l1(16);
    struct l1_ref a = put(l1, 1, 2);
    struct l1_ref b = put(l1, 2, 2);
    uint8_t *base = l1_base(l1);
    memset(base + a.offset, 0xAB, a.length);
    struct l1_key kb = key(2);
    struct l1_ref held;
    cr_assert_eq(l1_lock(l1, &kb, 1, 1, &held), 0);
    uint64_t gen = l1_check(l1);
    char path[80];
    snprintf(path, sizeof(path), "/dev/shm/%s", l1_shm_name(l1));
    int fd = open(path, O_RDWR | O_TRUNC); /* what open(path, "w+b") does */
    cr_assert(fd >= 0);
    close(fd);
    /* lmcd touching the page now would be SIGBUS without the guard */
    volatile uint8_t v = base[a.offset];
    (void)v;
    base[b.offset] = 1;
    cr_assert_neq(l1_check(l1), gen, "the loss is noticed");
    cr_assert(!present(l1, 1) && !present(l1, 2), "nothing truncated is readable again");
    struct l1_stats st = stats(l1);
    cr_assert_eq(st.segment_losses, 1);
    cr_assert_eq(st.pending_free_count, 1, "the held object keeps its bytes until released");
    struct stat sb;
    cr_assert_eq(stat(path, &sb), 0);
    cr_assert_eq((uint64_t)sb.st_size, l1_pool_size(l1), "restored to its size");
    cr_assert_eq(memcmp(((const struct l1_seg_header *)base)->magic, L1_SEG_MAGIC, 8), 0,
                 "header written again");
    /* usable again, at the same address, and nothing reuses the held bytes */
    struct l1_ref c = put(l1, 3, 2);
    cr_assert(c.offset + c.length <= b.offset || c.offset >= b.offset + b.length);
    memset(base + c.offset, 0xCD, c.length);
    cr_assert_eq(l1_check(l1), gen + 1, "one loss, one generation");
    cr_assert_eq(l1_unlock_refs(l1, &kb, &held, 1, 1), 1);
    cr_assert_eq(stats(l1).pending_free_count, 0);
    l1_destroy(l1);
    cr_assert_eq(access(path, F_OK), -1);
}

/* A truncation noticed only by fstat (nobody touched a page yet) is handled
 * the same way at the next call that hands out memory. */
Test(l1, truncation_is_noticed_before_handing_out_memory)
{
    struct l1 *l1 = make_l1(16);
    put(l1, 1, 2);
    char path[80];
    snprintf(path, sizeof(path), "/dev/shm/%s", l1_shm_name(l1));
    cr_assert_eq(truncate(path, 4096), 0);
    struct l1_key k = key(1);
    cr_assert_eq(l1_lock(l1, &k, 1, 1, NULL), -ENOENT);
    struct l1_ref r = put(l1, 4, 2);
    memset((uint8_t *)l1_base(l1) + r.offset, 1, r.length);
    cr_assert_eq(stats(l1).segment_losses, 1);
    l1_destroy(l1);
}

Test(l1, shm_group_gives_0660_and_unknown_group_is_an_error)
{
    struct l1_opts o;
    struct l1 *l1 = NULL;
    test_opts(&o, 1 << 20);
    o.shm_group = "lmcd-no-such-group-xyz";
    cr_assert_eq(l1_create(&o, &l1), -ENOENT);
    struct group *g = getgrgid(getegid());
    cr_assert_not_null(g);
    o.shm_group = g->gr_name;
    cr_assert_eq(l1_create(&o, &l1), 0);
    char path[80];
    struct stat st;
    snprintf(path, sizeof(path), "/dev/shm/%s", seg_name);
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0660);
    cr_assert_eq(st.st_gid, getegid());
    l1_destroy(l1);
}

Test(l1, create_rejects_bad_options)
{
    struct l1_opts o;
    struct l1 *l1 = NULL;
    test_opts(&o, 1 << 20);
    o.align_bytes = 3000;
    cr_assert_eq(l1_create(&o, &l1), -EINVAL);
    o.align_bytes = 4096;
    o.trigger_watermark = 1.5;
    cr_assert_eq(l1_create(&o, &l1), -EINVAL);
    o.trigger_watermark = 0.8;
    o.size_bytes = 8192; /* header + table leave nothing */
    cr_assert_eq(l1_create(&o, &l1), -EINVAL);
    cr_assert_null(l1);
}

/* l1_create with the log captured; returns its result, *text the log. */
static int create_logged(const struct l1_opts *o, char *text, size_t cap)
{
    char path[] = "/tmp/lmcd-l1log-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    close(fd);
    log_set_color(0);
    cr_assert_eq(log_set_file(path), 0);
    struct l1 *l1 = NULL;
    int rc = l1_create(o, &l1);
    log_set_file(NULL);
    l1_destroy(l1);
    FILE *f = fopen(path, "r");
    memset(text, 0, cap);
    cr_assert(f);
    size_t n = fread(text, 1, cap - 1, f);
    (void)n;
    fclose(f);
    unlink(path);
    return rc;
}

static int count_lines(const char *text, const char *needle)
{
    int n = 0;
    for (const char *p = text; (p = strstr(p, needle)); p++)
        n++;
    return n;
}

/* Object links are 32-bit slot indices and extents 32-bit offsets in align
 * units (layout 3): a configuration beyond either is refused at create with
 * one line naming the limit, before anything is allocated or created. */
Test(l1, configuration_beyond_32_bit_links_is_refused_with_one_line)
{
    struct l1_opts o;
    char text[8192];
    test_opts(&o, 1ull << 40);
    o.max_objects = (uint64_t)L1_MAX_SLOTS + 1;
    cr_assert_eq(create_logged(&o, text, sizeof(text)), -EINVAL);
    cr_assert_eq(count_lines(text, "32-bit object links"), 1, "%s", text);
    cr_assert_eq(count_lines(text, "ERROR"), 1, "%s", text);

    /* 64 GiB at align 8 is 2^33 units of data */
    test_opts(&o, 64ull << 30);
    o.align_bytes = 8;
    o.max_objects = 256;
    cr_assert_eq(create_logged(&o, text, sizeof(text)), -EINVAL);
    cr_assert_eq(count_lines(text, "32-bit extent offsets"), 1, "%s", text);
    cr_assert_eq(count_lines(text, "raise --l1-align-bytes to at least 16"), 1, "%s", text);
    cr_assert_eq(count_lines(text, "ERROR"), 1, "%s", text);
    char path[128];
    snprintf(path, sizeof(path), "/dev/shm/%s", seg_name);
    cr_assert_eq(access(path, F_OK), -1, "nothing created");

    /* the largest slot count is accepted by the check (it fails later only
     * for want of room, never by truncating a link) */
    test_opts(&o, 1 << 20);
    o.max_objects = L1_MAX_SLOTS;
    cr_assert_eq(create_logged(&o, text, sizeof(text)), -EINVAL);
    cr_assert_eq(count_lines(text, "32-bit object links"), 0, "%s", text);
}

Test(l1, non_lazy_segment_is_prefaulted_and_usable)
{
    struct l1_opts o;
    struct l1 *l1 = NULL;
    test_opts(&o, 1 << 20);
    o.use_lazy = false;
    cr_assert_eq(l1_create(&o, &l1), 0);
    struct l1_ref r = put(l1, 1, 1);
    memset((char *)l1_base(l1) + r.offset, 0xab, r.length);
    l1_destroy(l1);
}

/* ---- reservations -------------------------------------------------------- */

Test(l1, reservation_is_invisible_until_published)
{
    struct l1 *l1 = make_l1(16);
    struct l1_key k = key(1);
    uint64_t sz = 5000;
    enum l1_status st;
    struct l1_ref r, g;
    cr_assert_eq(l1_reserve_write(l1, &k, &sz, 1, 42, &st, &r), 1);
    cr_assert_eq(st, L1_OK);
    cr_assert_eq(r.length, 5000);
    cr_assert_eq(l1_get(l1, &k, &g), -ENOENT);
    cr_assert_eq(l1_lock_prefix(l1, &k, 1, 1, NULL), 0);
    cr_assert_eq(l1_lock(l1, &k, 1, 1, NULL), -ENOENT);
    cr_assert_eq(stats(l1).write_locked_count, 1);
    cr_assert_eq(stats(l1).memory_used_bytes, 2 * UNIT, "accounted by allocation size");
    /* Another writer, or the same one again, is told to skip. */
    cr_assert_eq(l1_reserve_write(l1, &k, &sz, 1, 43, &st, &g), 0);
    cr_assert_eq(st, L1_BUSY);
    /* Publishing needs the right writer and id. */
    enum l1_status ps;
    cr_assert_eq(l1_publish(l1, &k, &r.id, 1, 43, &ps), 0);
    cr_assert_eq(ps, L1_NOTFOUND);
    uint64_t wrong = r.id + 100;
    cr_assert_eq(l1_publish(l1, &k, &wrong, 1, 42, &ps), 0);
    cr_assert_eq(l1_publish(l1, &k, &r.id, 1, 42, &ps), 1);
    cr_assert_eq(ps, L1_OK);
    cr_assert_eq(l1_get(l1, &k, &g), 0);
    cr_assert_eq(g.offset, r.offset);
    cr_assert_eq(g.length, 5000);
    /* Now it exists: a new writer skips it. */
    cr_assert_eq(l1_reserve_write(l1, &k, &sz, 1, 44, &st, &g), 0);
    cr_assert_eq(st, L1_EXISTS);
    cr_assert_eq(l1_publish(l1, &k, &r.id, 1, 42, &ps), 0, "a second publish is refused");
    l1_destroy(l1);
}

Test(l1, reserve_rejects_zero_and_oversized)
{
    struct l1 *l1 = make_l1(4);
    struct l1_key k[2] = { key(1), key(2) };
    uint64_t sz[2] = { 0, 5 * UNIT };
    enum l1_status st[2];
    struct l1_ref r[2];
    cr_assert_eq(l1_reserve_write(l1, k, sz, 2, 1, st, r), 0);
    cr_assert_eq(st[0], L1_INVALID);
    cr_assert_eq(st[1], L1_INVALID);
    l1_destroy(l1);
}

Test(l1, expired_reservation_is_never_readable_and_is_freed)
{
    struct l1 *l1 = make_l1(16);
    struct l1_key k = key(1);
    uint64_t sz = UNIT;
    enum l1_status st;
    struct l1_ref r, r2;
    cr_assert_eq(l1_reserve_write(l1, &k, &sz, 1, 1, &st, &r), 1);
    advance(600 * SEC);
    cr_assert_eq(l1_get(l1, &k, &r2), -ENOENT);
    cr_assert_eq(l1_lock_prefix(l1, &k, 1, 1, NULL), 0);
    enum l1_status ps;
    cr_assert_eq(l1_publish(l1, &k, &r.id, 1, 1, &ps), 0);
    cr_assert_eq(ps, L1_EXPIRED);
    cr_assert_eq(l1_get(l1, &k, &r2), -ENOENT);
    struct l1_stats s = stats(l1);
    cr_assert_eq(s.memory_used_bytes, 0);
    cr_assert_eq(s.total_object_count, 0);
    cr_assert_eq(s.expired_reservations, 1);
    /* The key can be reserved afresh; an expired reservation found by a
     * new writer is replaced too. */
    cr_assert_eq(l1_reserve_write(l1, &k, &sz, 1, 2, &st, &r2), 1);
    advance(601 * SEC);
    cr_assert_eq(l1_reserve_write(l1, &k, &sz, 1, 3, &st, &r), 1);
    cr_assert_neq(r.id, r2.id);
    cr_assert_eq(l1_publish(l1, &k, &r2.id, 1, 2, NULL), 0, "the old reservation is gone");
    cr_assert_eq(stats(l1).memory_used_bytes, UNIT);
    l1_destroy(l1);
}

Test(l1, abort_and_abort_all_drop_only_that_writers_reservations)
{
    struct l1 *l1 = make_l1(16);
    struct l1_key k[4] = { key(1), key(2), key(3), key(4) };
    uint64_t sz[4] = { UNIT, UNIT, UNIT, UNIT };
    enum l1_status st[4];
    struct l1_ref r[4];
    cr_assert_eq(l1_reserve_write(l1, k, sz, 3, 7, st, r), 3);
    cr_assert_eq(l1_reserve_write(l1, &k[3], &sz[3], 1, 8, &st[3], &r[3]), 1);
    cr_assert_eq(l1_abort(l1, &k[0], &r[0].id, 1, 8), 0, "not writer 8's");
    cr_assert_eq(l1_abort(l1, &k[0], &r[0].id, 1, 7), 1);
    cr_assert_eq(l1_abort_all(l1, 7), 2);
    struct l1_stats s = stats(l1);
    cr_assert_eq(s.write_locked_count, 1);
    cr_assert_eq(s.memory_used_bytes, UNIT);
    cr_assert_eq(l1_publish(l1, &k[1], &r[1].id, 1, 7, NULL), 0);
    cr_assert_eq(l1_publish(l1, &k[3], &r[3].id, 1, 8, NULL), 1);
    cr_assert(present(l1, 4));
    l1_destroy(l1);
}

/* ---- read locks ------------------------------------------------------------ */

Test(l1, lock_counts_and_ttl_from_latest_lock)
{
    struct l1 *l1 = make_l1(16);
    put(l1, 1, 1);
    struct l1_key k = key(1);
    cr_assert_eq(l1_lock(l1, &k, 1, 2, NULL), 0);
    cr_assert_eq(stats(l1).read_locked_count, 1);
    cr_assert_eq(l1_unlock(l1, &k, NULL, 1, 1), 1);
    cr_assert_eq(stats(l1).read_locked_count, 1, "one holder left");
    cr_assert_eq(l1_unlock(l1, &k, NULL, 1, 5), 1, "drops to 0, never below");
    cr_assert_eq(stats(l1).read_locked_count, 0);
    cr_assert_eq(l1_unlock(l1, &k, NULL, 1, 1), 0, "nothing left to drop");
    /* TTL counts from the latest lock. */
    cr_assert_eq(l1_lock(l1, &k, 1, 1, NULL), 0);
    advance(200 * SEC);
    cr_assert_eq(l1_lock(l1, &k, 1, 1, NULL), 0);
    advance(200 * SEC);
    cr_assert_eq(stats(l1).read_locked_count, 1, "400 s after the first, 200 after the latest");
    advance(100 * SEC);
    cr_assert_eq(stats(l1).read_locked_count, 0, "expired 300 s after the latest lock");
    cr_assert_eq(l1_unlock(l1, &k, NULL, 1, 1), 0, "unlock after expiry is a no-op");
    /* An expired lock restarts from zero. */
    cr_assert_eq(l1_lock(l1, &k, 1, 1, NULL), 0);
    cr_assert_eq(l1_unlock(l1, &k, NULL, 1, 1), 1);
    cr_assert_eq(stats(l1).read_locked_count, 0);
    cr_assert_eq(l1_lock(l1, &k, 1, 0, NULL), -EINVAL);
    l1_destroy(l1);
}

Test(l1, lock_prefix_locks_longest_ready_prefix)
{
    struct l1 *l1 = make_l1(16);
    put(l1, 0, 1);
    put(l1, 1, 1);
    put(l1, 3, 1);
    struct l1_key k[4] = { key(0), key(1), key(2), key(3) };
    struct l1_ref r[4];
    cr_assert_eq(l1_lock_prefix(l1, k, 4, 2, r), 2);
    cr_assert_eq(stats(l1).read_locked_count, 2, "key 3 after the gap is not locked");
    cr_assert_neq(r[0].offset, r[1].offset);
    cr_assert_eq(l1_unlock(l1, k, NULL, 4, 2), 2);
    cr_assert_eq(stats(l1).read_locked_count, 0);
    cr_assert_eq(l1_lock_prefix(l1, &k[2], 2, 1, NULL), 0);
    cr_assert_eq(l1_lock_prefix(l1, k, 0, 1, NULL), 0);
    l1_destroy(l1);
}

Test(l1, lock_is_all_or_nothing)
{
    struct l1 *l1 = make_l1(16);
    put(l1, 0, 1);
    put(l1, 1, 1);
    struct l1_key k[3] = { key(0), key(1), key(2) };
    cr_assert_eq(l1_lock(l1, k, 3, 1, NULL), -ENOENT);
    cr_assert_eq(stats(l1).read_locked_count, 0);
    cr_assert_eq(l1_lock(l1, k, 2, 1, NULL), 0);
    cr_assert_eq(stats(l1).read_locked_count, 2);
    l1_destroy(l1);
}

Test(l1, unlock_with_ids_ignores_a_replaced_object)
{
    struct l1 *l1 = make_l1(16);
    put(l1, 1, 1);
    struct l1_key k = key(1);
    struct l1_ref old;
    cr_assert_eq(l1_lock(l1, &k, 1, 1, &old), 0);
    advance(301 * SEC); /* the lock expires; eviction may now take it */
    cr_assert_eq(l1_clear(l1, false), 1);
    put(l1, 1, 1);
    cr_assert_eq(l1_lock(l1, &k, 1, 1, NULL), 0);
    cr_assert_eq(l1_unlock(l1, &k, &old.id, 1, 1), 0, "stale id: new holder kept");
    cr_assert_eq(stats(l1).read_locked_count, 1);
    l1_destroy(l1);
}

/* ---- eviction ------------------------------------------------------------- */

Test(l1, evict_round_below_watermark_does_nothing)
{
    struct l1 *l1 = make_filled(10, L1_POLICY_LRU, 7, 1);
    cr_assert_eq(l1_evict_round(l1), 0);
    cr_assert_eq(stats(l1).total_object_count, 7);
    cr_assert_eq(stats(l1).eviction_rounds_triggered, 0);
    l1_destroy(l1);
}

Test(l1, evict_round_frees_ratio_of_used_bytes_in_lru_order)
{
    struct l1 *l1 = make_l1(20);
    /* 4 objects of 4 units = 16 of 20 units: usage 0.8 >= watermark. */
    for (int i = 0; i < 4; i++)
        put(l1, i, 4);
    struct l1_key k0 = key(0), k1 = key(1);
    cr_assert_eq(l1_touch(l1, &k0, 1), 1); /* order now 1,2,3,0 */
    cr_assert_eq(l1_lock(l1, &k1, 1, 1, NULL), 0); /* 1 is skipped */
    /* target = 0.2 x 16 units = 3.2 units: one 4-unit object suffices. */
    cr_assert_eq(l1_evict_round(l1), 1);
    cr_assert(present(l1, 0));
    cr_assert(present(l1, 1), "locked objects survive");
    cr_assert_not(present(l1, 2), "least recent unlocked goes first");
    cr_assert(present(l1, 3));
    struct l1_stats s = stats(l1);
    cr_assert_eq(s.evicted_count, 1);
    cr_assert_eq(s.evicted_bytes, 4 * UNIT);
    cr_assert_eq(s.eviction_rounds_triggered, 1);
    cr_assert_eq(s.memory_used_bytes, 12 * UNIT);
    /* 12/20 = 0.6: the next round skips. */
    cr_assert_eq(l1_evict_round(l1), 0);
    l1_destroy(l1);
}

Test(l1, evict_round_counts_bytes_not_objects)
{
    struct l1 *l1 = make_l1(20);
    /* Oldest first: four 1-unit objects, then a 12-unit one: 16 units used. */
    for (int i = 0; i < 4; i++)
        put(l1, i, 1);
    put(l1, 4, 12);
    /* target 3.2 units: four 1-unit objects (4 units), not one object. */
    cr_assert_eq(l1_evict_round(l1), 4);
    cr_assert(present(l1, 4));
    l1_destroy(l1);
}

Test(l1, demand_eviction_makes_room_in_lru_order)
{
    struct l1 *l1 = make_filled(8, L1_POLICY_LRU, 8, 1);
    struct l1_key t = key(0);
    cr_assert_eq(l1_touch(l1, &t, 1), 1); /* LRU: 1..7, 0 */
    /* Usage 1.0 but no round has run: a 2-unit reservation evicts on demand. */
    struct l1_ref r;
    cr_assert_eq(reserve1(l1, 100, 2 * UNIT, 1, &r), L1_OK);
    cr_assert_not(present(l1, 1));
    cr_assert_not(present(l1, 2));
    cr_assert(present(l1, 0));
    cr_assert(present(l1, 3));
    cr_assert_eq(stats(l1).demand_evicted_count, 2);
    l1_destroy(l1);
}

Test(l1, demand_eviction_coalesces_non_adjacent_victims)
{
    struct l1 *l1 = make_filled(8, L1_POLICY_LRU, 8, 1);
    /* LRU order 0,2,4,6 then 1,3,5,7: the first victims are not neighbours,
     * so room for 2 units appears only once an odd neighbour goes too. */
    struct l1_key odd[4] = { key(1), key(3), key(5), key(7) };
    cr_assert_eq(l1_touch(l1, odd, 4), 4);
    struct l1_key k = key(100);
    uint64_t sz = 2 * UNIT;
    enum l1_status st;
    struct l1_ref r;
    cr_assert_eq(l1_reserve_write(l1, &k, &sz, 1, 1, &st, &r), 1);
    /* 0,2,4,6 leave four 1-unit holes; evicting 1 joins 0..2. */
    cr_assert_eq(stats(l1).demand_evicted_count, 5);
    cr_assert(present(l1, 3) && present(l1, 5) && present(l1, 7));
    cr_assert_eq(stats(l1).memory_used_bytes, 5 * UNIT);
    l1_destroy(l1);
}

Test(l1, everything_locked_fails_only_that_key)
{
    struct l1 *l1 = make_filled(4, L1_POLICY_LRU, 3, 1);
    struct l1_key lk[3] = { key(0), key(1), key(2) };
    cr_assert_eq(l1_lock(l1, lk, 3, 1, NULL), 0);
    /* One unit is free: a 2-unit key fails, a 1-unit key in the same batch fits. */
    struct l1_key k[2] = { key(10), key(11) };
    uint64_t sz[2] = { 2 * UNIT, UNIT };
    enum l1_status st[2];
    struct l1_ref r[2];
    cr_assert_eq(l1_reserve_write(l1, k, sz, 2, 1, st, r), 1);
    cr_assert_eq(st[0], L1_NOMEM);
    cr_assert_eq(st[1], L1_OK);
    for (int i = 0; i < 3; i++)
        cr_assert(present(l1, i), "locked object %d survived", i);
    struct l1_stats s = stats(l1);
    cr_assert_eq(s.alloc_failures, 1);
    cr_assert_eq(s.evicted_count, 0);
    /* Reservations are never evicted either. */
    struct l1_key k3 = key(12);
    cr_assert_eq(l1_reserve_write(l1, &k3, &sz[1], 1, 1, &st[0], &r[0]), 0);
    cr_assert_eq(st[0], L1_NOMEM);
    cr_assert_eq(l1_publish(l1, &k[1], &r[1].id, 1, 1, NULL), 1);
    l1_destroy(l1);
}

Test(l1, noop_policy_never_evicts)
{
    struct l1 *l1 = make_filled(4, L1_POLICY_NOOP, 4, 1);
    cr_assert_eq(l1_evict_round(l1), 0);
    struct l1_ref r;
    cr_assert_eq(reserve1(l1, 9, UNIT, 1, &r), L1_NOMEM);
    cr_assert_eq(stats(l1).total_object_count, 4);
    l1_destroy(l1);
}

Test(l1, full_object_table_evicts_or_fails_cleanly)
{
    struct l1_opts o;
    struct l1 *l1;
    test_opts(&o, 64 * UNIT);
    o.max_objects = 2;
    cr_assert_eq(l1_create(&o, &l1), 0);
    put(l1, 0, 1);
    put(l1, 1, 1);
    put(l1, 2, 1); /* evicts 0 for its table slot */
    cr_assert_not(present(l1, 0));
    struct l1_key lk[2] = { key(1), key(2) };
    cr_assert_eq(l1_lock(l1, lk, 2, 1, NULL), 0);
    struct l1_ref r;
    cr_assert_eq(reserve1(l1, 3, UNIT, 1, &r), L1_NOMEM);
    l1_destroy(l1);
}

/* ---- clear ---------------------------------------------------------------- */

Test(l1, clear_without_force_keeps_locked_and_reserved)
{
    struct l1 *l1 = make_l1(16);
    put(l1, 0, 1);
    put(l1, 1, 1);
    struct l1_key k1 = key(1), k2 = key(2);
    cr_assert_eq(l1_lock(l1, &k1, 1, 1, NULL), 0);
    struct l1_ref r;
    cr_assert_eq(reserve1(l1, 2, UNIT, 1, &r), L1_OK);
    cr_assert_eq(l1_clear(l1, false), 1);
    cr_assert_not(present(l1, 0));
    cr_assert(present(l1, 1));
    cr_assert_eq(l1_publish(l1, &k2, &r.id, 1, 1, NULL), 1);
    l1_destroy(l1);
}

Test(l1, clear_with_force_hides_all_and_frees_when_holders_leave)
{
    struct l1 *l1 = make_l1(16);
    put(l1, 0, 1);
    struct l1_ref lr = put(l1, 1, 1);
    struct l1_key k1 = key(1), k2 = key(2);
    cr_assert_eq(l1_lock(l1, &k1, 1, 2, NULL), 0);
    struct l1_ref r;
    cr_assert_eq(reserve1(l1, 2, UNIT, 1, &r), L1_OK);
    cr_assert_eq(l1_clear(l1, true), 3);
    struct l1_stats s = stats(l1);
    cr_assert_eq(s.total_object_count, 0);
    cr_assert_eq(s.pending_free_count, 2);
    cr_assert_eq(s.memory_used_bytes, 2 * UNIT, "in-use memory is not handed out yet");
    cr_assert_not(present(l1, 1));
    /* A new object under key 1 cannot land on the held bytes. */
    struct l1_ref nr = put(l1, 1, 1);
    cr_assert_neq(nr.offset, lr.offset);
    cr_assert_neq(nr.offset, r.offset);
    /* The late publish fails and releases the reservation; the late unlock
     * (by id) releases the old holder without touching the new object. */
    enum l1_status ps;
    cr_assert_eq(l1_publish(l1, &k2, &r.id, 1, 1, &ps), 0);
    cr_assert_eq(ps, L1_NOTFOUND);
    cr_assert_not(present(l1, 2));
    cr_assert_eq(l1_unlock(l1, &k1, &lr.id, 1, 2), 1);
    s = stats(l1);
    cr_assert_eq(s.pending_free_count, 0);
    cr_assert_eq(s.memory_used_bytes, UNIT, "only the new object remains");
    cr_assert(present(l1, 1));
    l1_destroy(l1);
}

Test(l1, forced_clear_memory_returns_after_ttl)
{
    struct l1 *l1 = make_l1(16);
    put(l1, 1, 1);
    struct l1_key k1 = key(1);
    cr_assert_eq(l1_lock(l1, &k1, 1, 1, NULL), 0);
    struct l1_ref r;
    cr_assert_eq(reserve1(l1, 2, UNIT, 1, &r), L1_OK);
    cr_assert_eq(l1_clear(l1, true), 2);
    advance(301 * SEC);
    cr_assert_eq(stats(l1).pending_free_count, 1, "the reservation has 600 s");
    advance(300 * SEC);
    struct l1_stats s = stats(l1);
    cr_assert_eq(s.pending_free_count, 0);
    cr_assert_eq(s.memory_used_bytes, 0);
    l1_destroy(l1);
}

/* ---- thread --------------------------------------------------------------- */

Test(l1, eviction_thread_starts_and_destroy_stops_it_at_once)
{
    struct l1 *l1 = make_l1(16);
    cr_assert_eq(l1_evict_start(l1), 0);
    cr_assert_eq(l1_evict_start(l1), 0, "second start is a no-op");
    uint64_t t0 = clock_mono_ns();
    l1_destroy(l1);
    cr_assert(clock_mono_ns() - t0 < 900000000ull, "destroy waited for the tick");
}

/* ---- activity records (docs/l1.md, "Metadata per object") ---------------- */

/* Every record in use belongs to exactly one object that points back at it;
 * RESERVED and PENDING objects have one, READY ones only with holders; the
 * rest are on the free chain. Reads l1's internals under its mutex. */
static void check_acts(struct l1 *l1)
{
    pthread_mutex_lock(&l1->mu);
    uint64_t with = 0, free_n = 0, ready_locked = 0;
    for (uint64_t s = 0; s < l1->slots_used; s++) {
        const struct l1_obj *o = &l1->objs[s];
        if (o->state == L1_OBJ_FREE)
            continue;
        if (o->state != L1_OBJ_READY)
            cr_assert_neq(o->act, L1_NIL, "slot %lu state %d has no record", (unsigned long)s, o->state);
        if (o->act == L1_NIL)
            continue;
        with++;
        cr_assert_lt(o->act, l1->acts_used);
        cr_assert_eq(l1->acts[o->act].slot, s, "record %u points elsewhere", o->act);
        if (o->state == L1_OBJ_READY) {
            cr_assert_gt(l1->acts[o->act].holders, 0, "a READY record without holders is kept");
            ready_locked++;
        }
    }
    for (uint32_t i = l1->act_free; i != L1_NIL; i = l1->acts[i].q.next)
        cr_assert_lt(free_n++, l1->acts_used, "free chain loops");
    cr_assert_eq(with + free_n, l1->acts_used, "a record leaked or is shared");
    cr_assert_eq(with, l1->n_resv + l1->n_locked + l1->n_pending);
    cr_assert_eq(ready_locked, l1->n_locked);
    pthread_mutex_unlock(&l1->mu);
}

Test(l1, cached_objects_hold_no_activity_record_and_records_are_reused)
{
    cr_assert_eq(sizeof(struct l1_obj), 32);
    cr_assert_eq(sizeof(struct l1_act), 32);
    struct l1 *l1 = make_l1(64);
    for (int i = 0; i < 40; i++)
        put(l1, i, 1);
    check_acts(l1);
    cr_assert_eq(l1->act_free != L1_NIL || l1->acts_used <= 1, true,
                 "40 published objects: the one record of each reservation went back");
    uint64_t used_after_fill = l1->acts_used;
    cr_assert_leq(used_after_fill, 1, "reservations made one at a time reuse one record");
    struct l1_key k[40];
    for (int i = 0; i < 40; i++)
        k[i] = key(i);
    for (int round = 0; round < 100; round++) {
        cr_assert_eq(l1_lock_prefix(l1, k, 40, 1, NULL), 40);
        cr_assert_eq(stats(l1).read_locked_count, 40);
        if (round % 2)
            cr_assert_eq(l1_unlock(l1, k, NULL, 40, 1), 40);
        else
            advance(301 * SEC); /* settled by the next call instead */
        check_acts(l1);
    }
    cr_assert_eq(stats(l1).read_locked_count, 0);
    cr_assert_leq(l1->acts_used, 40, "records in use never exceed the objects in flight");
    check_acts(l1);
    l1_destroy(l1);
}

Test(l1, lock_epochs_never_repeat_so_a_late_release_drops_nobody_elses_holders)
{
    struct l1 *l1 = make_l1(16);
    put(l1, 1, 1);
    put(l1, 2, 1);
    struct l1_key k1 = key(1), k2 = key(2);
    struct l1_ref a, b, c, d;
    cr_assert_eq(l1_lock(l1, &k1, 1, 1, &a), 0);
    cr_assert_eq(l1_lock(l1, &k2, 1, 1, &d), 0);
    cr_assert_neq(a.lock_epoch, 0);
    cr_assert_neq(a.lock_epoch, d.lock_epoch, "epochs are unique across objects too");
    cr_assert_eq(l1_unlock_refs(l1, &k1, &a, 1, 1), 1);
    cr_assert_eq(l1_lock(l1, &k1, 1, 1, &b), 0);
    cr_assert_neq(b.lock_epoch, a.lock_epoch, "a new run of holders after release");
    cr_assert_eq(l1_unlock_refs(l1, &k1, &a, 1, 1), 0, "late release of the old run");
    cr_assert_eq(stats(l1).read_locked_count, 2);
    advance(301 * SEC); /* b's run expires; the next lock starts another */
    cr_assert_eq(l1_lock(l1, &k1, 1, 1, &c), 0);
    cr_assert_neq(c.lock_epoch, b.lock_epoch);
    cr_assert_neq(c.lock_epoch, a.lock_epoch);
    cr_assert_eq(l1_unlock_refs(l1, &k1, &b, 1, 1), 0, "expired run: ignored");
    /* a ref of an unlocked object carries no epoch */
    struct l1_ref g;
    cr_assert_eq(stats(l1).read_locked_count, 1, "k2's expired lock is settled");
    cr_assert_eq(l1_get(l1, &k2, &g), 0);
    cr_assert_eq(g.lock_epoch, 0, "k2's lock expired: no holders");
    cr_assert_eq(l1_get(l1, &k1, &g), 0);
    cr_assert_eq(g.lock_epoch, c.lock_epoch);
    cr_assert_eq(l1_unlock_refs(l1, &k1, &c, 1, 1), 1);
    cr_assert_eq(stats(l1).read_locked_count, 0);
    check_acts(l1);
    l1_destroy(l1);
}

Test(l1, pinned_object_without_holders_cleared_by_force_is_freed_at_unpin)
{
    struct l1 *l1 = make_l1(16);
    put(l1, 1, 1);
    struct l1_key k1 = key(1);
    struct l1_ref p;
    cr_assert_eq(l1_pin_prefix(l1, &k1, 1, UINT64_MAX, &p, NULL), 1);
    check_acts(l1);
    cr_assert_eq(l1->objs[p.slot - 1].act, L1_NIL, "a pin alone takes no record");
    cr_assert_eq(l1_clear(l1, true), 1);
    cr_assert_eq(stats(l1).pending_free_count, 1);
    check_acts(l1);
    advance(3600 * SEC);
    cr_assert_eq(stats(l1).pending_free_count, 1, "a pin has no TTL");
    cr_assert_eq(l1_unpin(l1, &k1, &p, 1), 1);
    struct l1_stats s = stats(l1);
    cr_assert_eq(s.pending_free_count, 0);
    cr_assert_eq(s.memory_used_bytes, 0);
    check_acts(l1);
    l1_destroy(l1);
}

/* Random operations on a few keys, with the record invariants and the
 * byte accounting checked after each: no record and no byte leaks. */
Test(l1, random_operations_keep_records_and_bytes_consistent)
{
    struct l1 *l1 = make_l1(64);
    enum { KEYS = 24 };
    struct l1_ref res[KEYS], lk[KEYS], pin[KEYS];
    bool have_res[KEYS] = { 0 }, have_lk[KEYS] = { 0 }, have_pin[KEYS] = { 0 };
    unsigned seed = 12345;
    for (int step = 0; step < 20000; step++) {
        seed = seed * 1103515245u + 12345u;
        int i = (int)((seed >> 8) % KEYS), op = (int)((seed >> 20) % 11);
        struct l1_key k = key(i);
        uint64_t writer = 1 + (uint64_t)(i % 3);
        switch (op) {
        case 0:
        case 1:
            if (!have_res[i])
                have_res[i] = reserve1(l1, i, (1 + (seed >> 28) % 3) * UNIT, writer, &res[i]) == L1_OK;
            break;
        case 2:
            if (have_res[i]) {
                l1_publish(l1, &k, &res[i].id, 1, writer, NULL);
                have_res[i] = false;
            }
            break;
        case 3:
            if (have_res[i]) {
                l1_abort(l1, &k, &res[i].id, 1, writer);
                have_res[i] = false;
            }
            break;
        case 4:
            if (!have_lk[i])
                have_lk[i] = l1_lock(l1, &k, 1, 1, &lk[i]) == 0;
            break;
        case 5:
            if (have_lk[i]) {
                l1_unlock_refs(l1, &k, &lk[i], 1, 1);
                have_lk[i] = false;
            }
            break;
        case 6:
            if (!have_pin[i])
                have_pin[i] = l1_pin_prefix(l1, &k, 1, 32 * UNIT, &pin[i], NULL) == 1;
            break;
        case 7:
            if (have_pin[i]) {
                cr_assert_eq(l1_unpin(l1, &k, &pin[i], 1), 1);
                have_pin[i] = false;
            }
            break;
        case 8:
            if (seed % 16 == 0)
                l1_clear(l1, (seed >> 4) % 2);
            break;
        case 9:
            advance((seed >> 12) % 200 * SEC);
            break;
        default:
            l1_abort_all(l1, writer);
            break;
        }
        if (step % 64 == 0)
            check_acts(l1);
    }
    for (int i = 0; i < KEYS; i++) {
        struct l1_key k = key(i);
        if (have_pin[i])
            cr_assert_eq(l1_unpin(l1, &k, &pin[i], 1), 1);
        if (have_lk[i])
            l1_unlock_refs(l1, &k, &lk[i], 1, 1);
    }
    advance(601 * SEC); /* every reservation and lock lapses */
    l1_clear(l1, true);
    check_acts(l1);
    struct l1_stats s = stats(l1);
    cr_assert_eq(s.total_object_count, 0);
    cr_assert_eq(s.pending_free_count, 0);
    cr_assert_eq(s.memory_used_bytes, 0, "every byte came back");
    cr_assert_eq(l1->n_free_slots, l1->table_entries);
    cr_assert_eq(s.read_locked_count + s.write_locked_count, 0, "every record is free (check_acts)");
    l1_destroy(l1);
}
