/*
 * l2_fs: LMCache's `fs` adapter: one file per object in base_path, named by
 * l2_key_fs_name() (new form; the older 3-field names are read too), raw
 * payload bytes, optionally followed by a checksum trailer.
 *
 * JSON: base_path (required), relative_tmp_dir, read_ahead_size (> 0),
 * use_odirect (false), max_capacity_gb (0 = unbounded), recover_on_start
 * (true), checksum ("none" | "crc32"), load_concurrency (16).
 *
 * Writes: to <tmp dir>/<name> or <name with .data replaced by .tmp>,
 * created O_EXCL (a second writer of the same key, in this process or
 * another lmcd sharing the directory, skips instead of interleaving), then
 * renamed over the final name, so a reader never sees a partial file.
 *
 * Checksum trailer (checksum "crc32"): 8 bytes after the payload, the magic
 * "LCRC" then the CRC-32 (zlib's; util/crc32.h) of the payload, little-
 * endian. With O_DIRECT the trailer starts a whole block (zero padded), so
 * the file is payload + one block. The stored LMCache sources we could read
 * (fs_l2_adapter.py@02ebd8bb, fs/connector.cpp) write no checksum; the
 * trailer layout is lmcd's (docs/l2.md). A load whose length, magic or CRC
 * does not match is a miss and the file is deleted.
 *
 * Index: key string -> file (size, lock count), rebuilt from the directory
 * at start (recover_on_start), so hits and usage survive a restart. A key
 * not in the index is still looked for on disk (stat), so files another
 * host writes into a shared directory are found, as LMCache's lookup does.
 *
 * Threads: `load_concurrency` threads for lookups and loads, 4 for stores,
 * named <name>r-N / <name>w-N. Locks: fs.mu (index) then base.mu (inside
 * l2_note_*, never called with fs.mu held).
 */
#define LOG_MODULE "lmcd.l2.fs"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "l2/l2.h"
#include "l2/l2_pool.h"
#include "l2/l2_task.h"
#include "util/clock.h"
#include "util/crc32.h"
#include "util/htab.h"
#include "util/log.h"

#define FS_STORE_THREADS 4
#define FS_QUEUE 65536
#define FS_TRAILER 8
#define FS_STALE_TMP_S 600
static const char trailer_magic[4] = { 'L', 'C', 'R', 'C' };

struct fent {
    struct htab_node node;
    uint64_t file_size;
    uint64_t payload; /* for accounting: file_size less the trailer */
    uint32_t locks;   /* lookups not yet unlocked, loads running */
    bool old_name;    /* file uses the older 3-field name */
    char key[];       /* key string (new form) */
};

struct fs {
    struct l2_adapter base; /* first */
    char *base_path;
    char *tmp_rel; /* NULL: .tmp beside the file */
    int dirfd, tmpfd;
    uint64_t read_ahead;
    bool odirect, crc, recover;
    size_t bsize;
    int load_conc;
    struct l2_pool *rd, *wr;
    pthread_mutex_t mu;
    struct htab idx; /* guarded by mu */
    atomic_uint_fast64_t crc_failures, size_mismatches, deleted_corrupt, odirect_fallbacks, store_skipped_busy;
    atomic_bool warned_odirect;
};

static struct log_ratelimit corrupt_rl = LOG_RATELIMIT_INIT(60000, 5);
static struct log_ratelimit io_rl = LOG_RATELIMIT_INIT(60000, 5);

/* ---- index ---- */

static struct fent *idx_find_locked(struct fs *f, const char *key)
{
    struct htab_node *n = htab_find(&f->idx, key, strlen(key));
    return n ? htab_entry(n, struct fent, node) : NULL;
}

static uint64_t payload_of(struct fs *f, uint64_t file_size)
{
    if (!f->crc)
        return file_size;
    if (f->odirect && file_size >= f->bsize && file_size % f->bsize == 0)
        return file_size - f->bsize;
    return file_size >= FS_TRAILER ? file_size - FS_TRAILER : 0;
}

/* Adds (or finds) the entry of key; *added says whether it is new, which
 * the caller then reports with l2_note_stored (outside fs.mu). */
static struct fent *idx_add_locked(struct fs *f, const char *key, uint64_t file_size, bool old, bool *added)
{
    struct fent *e = idx_find_locked(f, key);
    *added = false;
    if (e)
        return e;
    size_t kl = strlen(key);
    if (!(e = calloc(1, sizeof(*e) + kl + 1)))
        return NULL;
    memcpy(e->key, key, kl + 1);
    e->node.key = e->key;
    e->node.key_len = kl;
    e->file_size = file_size;
    e->payload = payload_of(f, file_size);
    e->old_name = old;
    if (htab_insert(&f->idx, &e->node) < 0) {
        free(e);
        return NULL;
    }
    *added = true;
    return e;
}

static int name_of(const struct l2_key *k, bool old, char *buf, size_t cap)
{
    return old ? l2_key_fs_name_old(buf, cap, k) : l2_key_fs_name(buf, cap, k);
}

/* Finds key on disk (new name, then the older one). 0 and st/old, or -ENOENT. */
static int disk_find(struct fs *f, const struct l2_key *k, struct stat *st, bool *old)
{
    char name[L2_KEY_NAME_MAX];
    for (int o = 0; o < 2; o++) {
        if (name_of(k, o, name, sizeof(name)) < 0)
            return -EINVAL;
        if (!fstatat(f->dirfd, name, st, 0) && S_ISREG(st->st_mode)) {
            *old = o;
            return 0;
        }
    }
    return -ENOENT;
}

/* ---- deletion ---- */

/* Removes key's file and entry (if unlocked, or force). Returns payload
 * bytes freed via *freed; 1 if removed. */
static int remove_key(struct fs *f, const struct l2_key *k, bool force, uint64_t *freed)
{
    char key[L2_KEY_NAME_MAX], name[L2_KEY_NAME_MAX];
    if (l2_key_format(key, sizeof(key), k) < 0)
        return 0;
    pthread_mutex_lock(&f->mu);
    struct fent *e = idx_find_locked(f, key);
    if (e && e->locks && !force) {
        pthread_mutex_unlock(&f->mu);
        return 0;
    }
    bool old = e ? e->old_name : false;
    uint64_t payload = e ? e->payload : 0;
    if (e)
        htab_remove(&f->idx, &e->node);
    pthread_mutex_unlock(&f->mu);
    int removed = 0;
    for (int o = 0; o < 2; o++) {
        if (e && o != old)
            continue;
        if (name_of(k, o, name, sizeof(name)) >= 0 && !unlinkat(f->dirfd, name, 0))
            removed = 1;
    }
    if (e) {
        *freed = payload;
        free(e);
        return 1;
    }
    *freed = 0;
    return removed;
}

/* A corrupt or truncated file: never served, deleted. */
static void drop_corrupt(struct fs *f, const struct l2_key *k, const char *why)
{
    char key[L2_KEY_NAME_MAX];
    uint64_t freed = 0;
    l2_key_format(key, sizeof(key), k);
    log_rl(&corrupt_rl, LOG_WARNING, "fs L2 adapter %s: %s for %s; treated as a miss, file deleted", f->base.name,
           why, key);
    /* force: our own load holds a lock on it */
    if (remove_key(f, k, true, &freed) > 0) {
        atomic_fetch_add_explicit(&f->deleted_corrupt, 1, memory_order_relaxed);
        if (freed)
            l2_note_deleted(&f->base, k, freed);
    }
}

/* ---- I/O helpers ---- */

static int full_pread(int fd, void *buf, size_t len, off_t off, size_t *got)
{
    size_t t = 0;
    while (t < len) {
        ssize_t n = pread(fd, (char *)buf + t, len - t, off + (off_t)t);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            *got = t;
            return -errno;
        }
        if (n == 0)
            break;
        t += (size_t)n;
    }
    *got = t;
    return 0;
}

static int full_pwrite(int fd, const void *buf, size_t len, off_t off)
{
    size_t t = 0;
    while (t < len) {
        ssize_t n = pwrite(fd, (const char *)buf + t, len - t, off + (off_t)t);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -EIO;
        t += (size_t)n;
    }
    return 0;
}

static bool aligned(struct fs *f, const void *p, size_t len)
{
    return f->bsize && len % f->bsize == 0 && (uintptr_t)p % f->bsize == 0;
}

static void warn_odirect(struct fs *f, const char *why)
{
    atomic_fetch_add_explicit(&f->odirect_fallbacks, 1, memory_order_relaxed);
    if (!atomic_exchange(&f->warned_odirect, true))
        log_warn("fs L2 adapter %s: use_odirect: %s; falling back to buffered I/O for such objects (logged once)",
                 f->base.name, why);
}

static void trailer_make(uint8_t t[FS_TRAILER], const void *buf, size_t len)
{
    uint32_t c = crc32_update(0, buf, len);
    memcpy(t, trailer_magic, 4);
    t[4] = (uint8_t)c;
    t[5] = (uint8_t)(c >> 8);
    t[6] = (uint8_t)(c >> 16);
    t[7] = (uint8_t)(c >> 24);
}

/* ---- store ---- */

static int tmp_open(struct fs *f, const char *name, char *tmp, size_t cap, int flags, int *dfd)
{
    if (f->tmp_rel) {
        snprintf(tmp, cap, "%s", name);
        *dfd = f->tmpfd;
    } else {
        size_t n = strlen(name) - 5; /* ".data" replaced by ".tmp" (with_suffix) */
        snprintf(tmp, cap, "%.*s.tmp", (int)n, name);
        *dfd = f->dirfd;
    }
    for (int attempt = 0; attempt < 2; attempt++) {
        int fd = openat(*dfd, tmp, flags | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd >= 0 || errno != EEXIST || attempt)
            return fd >= 0 ? fd : -errno;
        /* Another writer, or one killed mid-write: take it over once stale. */
        struct stat st;
        if (fstatat(*dfd, tmp, &st, 0) || time(NULL) - st.st_mtime < FS_STALE_TMP_S)
            return -EEXIST;
        unlinkat(*dfd, tmp, 0);
    }
    return -EEXIST;
}

static int write_file(struct fs *f, const char *name, const void *buf, size_t len, uint64_t *file_size)
{
    char tmp[L2_KEY_NAME_MAX];
    int dfd, rc;
    bool direct = false;
    if (f->odirect) {
        if (aligned(f, buf, len))
            direct = true;
        else
            warn_odirect(f, "object size or buffer not aligned to the filesystem block");
    }
    int fd = tmp_open(f, name, tmp, sizeof(tmp), O_WRONLY | (direct ? O_DIRECT : 0), &dfd);
    if (fd == -EINVAL && direct) { /* tmpfs and others refuse O_DIRECT */
        warn_odirect(f, "the filesystem refuses O_DIRECT");
        direct = false;
        fd = tmp_open(f, name, tmp, sizeof(tmp), O_WRONLY, &dfd);
    }
    if (fd < 0)
        return fd;
    uint64_t size = len;
    if ((rc = full_pwrite(fd, buf, len, 0)) < 0)
        goto fail;
    if (f->crc) {
        uint8_t t[FS_TRAILER];
        trailer_make(t, buf, len);
        if (direct) {
            void *blk = NULL;
            if (posix_memalign(&blk, f->bsize, f->bsize)) {
                rc = -ENOMEM;
                goto fail;
            }
            memset(blk, 0, f->bsize);
            memcpy(blk, t, FS_TRAILER);
            rc = full_pwrite(fd, blk, f->bsize, (off_t)len);
            free(blk);
            size += f->bsize;
        } else {
            rc = full_pwrite(fd, t, FS_TRAILER, (off_t)len);
            size += FS_TRAILER;
        }
        if (rc < 0)
            goto fail;
    }
    if (close(fd) < 0) {
        fd = -1;
        rc = -errno;
        goto fail;
    }
    fd = -1;
    if (renameat(dfd, tmp, f->dirfd, name) < 0) {
        rc = -errno;
        goto fail;
    }
    *file_size = size;
    return 0;
fail:
    if (fd >= 0)
        close(fd);
    unlinkat(dfd, tmp, 0);
    return rc;
}

static void do_store(struct fs *f, struct l2_task_item *it)
{
    struct l2_task *t = it->task;
    const struct l2_key *k = &t->keys[it->i];
    const struct iovec *b = &t->bufs[it->i];
    char key[L2_KEY_NAME_MAX], name[L2_KEY_NAME_MAX];
    if (l2_key_format(key, sizeof(key), k) < 0 || l2_key_fs_name(name, sizeof(name), k) < 0) {
        l2_task_done(it, false, 0, -EINVAL);
        return;
    }
    pthread_mutex_lock(&f->mu);
    bool have = idx_find_locked(f, key) != NULL;
    pthread_mutex_unlock(&f->mu);
    struct stat st;
    bool old = false;
    if (!have && !disk_find(f, k, &st, &old)) {
        /* on disk already (another lmcd, or written before a restart without recovery) */
        bool added = false;
        pthread_mutex_lock(&f->mu);
        struct fent *e = idx_add_locked(f, key, (uint64_t)st.st_size, old, &added);
        uint64_t payload = e ? e->payload : 0;
        pthread_mutex_unlock(&f->mu);
        if (added)
            l2_note_stored(&f->base, k, payload);
        have = true;
    }
    if (have) {
        l2_task_done(it, true, 0, 0);
        return;
    }
    if (f->base.capacity_bytes) {
        pthread_mutex_lock(&f->base.mu);
        bool full = f->base.used_bytes + b->iov_len > f->base.capacity_bytes;
        pthread_mutex_unlock(&f->base.mu);
        if (full) {
            l2_task_done(it, false, 0, -ENOSPC);
            return;
        }
    }
    uint64_t fsize = 0;
    int rc = write_file(f, name, b->iov_base, b->iov_len, &fsize);
    if (rc == -EEXIST) {
        /* someone else is writing this very object: theirs will do */
        atomic_fetch_add_explicit(&f->store_skipped_busy, 1, memory_order_relaxed);
        l2_task_done(it, false, 0, -EBUSY);
        return;
    }
    if (rc < 0) {
        log_rl(&io_rl, LOG_WARNING, "fs L2 adapter %s: cannot store %s: %s", f->base.name, name, strerror(-rc));
        l2_task_done(it, false, 0, rc);
        return;
    }
    bool added = false;
    pthread_mutex_lock(&f->mu);
    struct fent *e = idx_add_locked(f, key, fsize, false, &added);
    if (e && !added) { /* found meanwhile (a lookup's stat): same object */
        e->file_size = fsize;
        e->old_name = false;
    }
    pthread_mutex_unlock(&f->mu);
    if (added)
        l2_note_stored(&f->base, k, b->iov_len);
    l2_task_done(it, true, b->iov_len, 0);
}

/* ---- lookup and load ---- */

/* Finds key (index, else disk) and takes one lock on it. 0 and *e's
 * fields copied out, or -ENOENT. */
static int lock_key(struct fs *f, const struct l2_key *k, const char *key, uint64_t *file_size, bool *old)
{
    pthread_mutex_lock(&f->mu);
    struct fent *e = idx_find_locked(f, key);
    if (e) {
        e->locks++;
        *file_size = e->file_size;
        *old = e->old_name;
        pthread_mutex_unlock(&f->mu);
        return 0;
    }
    pthread_mutex_unlock(&f->mu);
    struct stat st;
    if (disk_find(f, k, &st, old) < 0)
        return -ENOENT;
    bool added = false;
    pthread_mutex_lock(&f->mu);
    e = idx_add_locked(f, key, (uint64_t)st.st_size, *old, &added);
    if (e) {
        e->locks++;
        *file_size = e->file_size;
        *old = e->old_name;
    }
    uint64_t payload = e ? e->payload : 0;
    pthread_mutex_unlock(&f->mu);
    if (added)
        l2_note_stored(&f->base, k, payload);
    return e ? 0 : -ENOMEM;
}

static void unlock_key(struct fs *f, const char *key)
{
    pthread_mutex_lock(&f->mu);
    struct fent *e = idx_find_locked(f, key);
    if (e && e->locks)
        e->locks--;
    pthread_mutex_unlock(&f->mu);
}

/* Reads the object into b. 0, or -EBADMSG (corrupt: caller deletes),
 * -ENOENT, -errno. */
static int read_object(struct fs *f, const struct l2_key *k, bool old, const struct iovec *b)
{
    char name[L2_KEY_NAME_MAX];
    int rc;
    if (name_of(k, old, name, sizeof(name)) < 0)
        return -EINVAL;
    bool direct = f->odirect && aligned(f, b->iov_base, b->iov_len);
    if (f->odirect && !direct)
        warn_odirect(f, "object size or buffer not aligned to the filesystem block");
    int fd = openat(f->dirfd, name, O_RDONLY | O_CLOEXEC | (direct ? O_DIRECT : 0));
    if (fd < 0 && direct && errno == EINVAL) {
        warn_odirect(f, "the filesystem refuses O_DIRECT");
        direct = false;
        fd = openat(f->dirfd, name, O_RDONLY | O_CLOEXEC);
    }
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        rc = -errno;
        goto out;
    }
    uint64_t len = b->iov_len, size = (uint64_t)st.st_size;
    bool ok_size = f->crc ? (size == len + FS_TRAILER || (f->bsize && size == len + f->bsize)) : size == len;
    if (!ok_size) {
        atomic_fetch_add_explicit(&f->size_mismatches, 1, memory_order_relaxed);
        rc = f->crc ? -EBADMSG : -ENOENT; /* without a checksum, another layout's object may be legitimate */
        goto out;
    }
    if (!direct)
        posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    size_t got = 0, got2 = 0;
    if (!direct && f->read_ahead && len > f->read_ahead) {
        /* LMCache's read_ahead_size: a small first read starts the kernel's readahead */
        if ((rc = full_pread(fd, b->iov_base, f->read_ahead, 0, &got)) < 0)
            goto out;
        if (got == f->read_ahead && (rc = full_pread(fd, (char *)b->iov_base + got, len - got, (off_t)got, &got2)) < 0)
            goto out;
        got += got2;
    } else if ((rc = full_pread(fd, b->iov_base, len, 0, &got)) < 0) {
        if (direct && rc == -EINVAL) { /* some filesystems accept the open, refuse the read */
            warn_odirect(f, "the filesystem refuses O_DIRECT reads");
            close(fd);
            fd = openat(f->dirfd, name, O_RDONLY | O_CLOEXEC);
            if (fd < 0)
                return -errno;
            direct = false;
            rc = full_pread(fd, b->iov_base, len, 0, &got);
        }
        if (rc < 0)
            goto out;
    }
    if (got != len) { /* shrank under us */
        rc = -EBADMSG;
        goto out;
    }
    if (f->crc) {
        uint8_t tr[FS_TRAILER], want[FS_TRAILER];
        size_t tl = (size_t)(size - len);
        void *blk = NULL;
        if (posix_memalign(&blk, f->bsize ? f->bsize : 64, tl < FS_TRAILER ? FS_TRAILER : tl)) {
            rc = -ENOMEM;
            goto out;
        }
        /* the trailer block through a buffered fd when the data came direct */
        int tfd = direct ? openat(f->dirfd, name, O_RDONLY | O_CLOEXEC) : fd;
        rc = tfd < 0 ? -errno : full_pread(tfd, blk, tl, (off_t)len, &got);
        if (direct && tfd >= 0)
            close(tfd);
        if (!rc && got == tl)
            memcpy(tr, blk, FS_TRAILER);
        free(blk);
        if (rc < 0)
            goto out;
        trailer_make(want, b->iov_base, len);
        if (got != tl || memcmp(tr, want, FS_TRAILER)) {
            atomic_fetch_add_explicit(&f->crc_failures, 1, memory_order_relaxed);
            rc = -EBADMSG;
            goto out;
        }
    }
    rc = 0;
out:
    close(fd);
    return rc;
}

static void do_lookup(struct fs *f, struct l2_task_item *it)
{
    const struct l2_key *k = &it->task->keys[it->i];
    char key[L2_KEY_NAME_MAX];
    uint64_t fsize;
    bool old;
    bool found = l2_key_format(key, sizeof(key), k) >= 0 && lock_key(f, k, key, &fsize, &old) == 0;
    l2_task_done(it, found, 0, 0);
}

static void do_load(struct fs *f, struct l2_task_item *it)
{
    struct l2_task *t = it->task;
    const struct l2_key *k = &t->keys[it->i];
    const struct iovec *b = &t->bufs[it->i];
    char key[L2_KEY_NAME_MAX];
    uint64_t fsize;
    bool old;
    if (l2_key_format(key, sizeof(key), k) < 0 || lock_key(f, k, key, &fsize, &old) < 0) {
        l2_task_done(it, false, 0, 0);
        return;
    }
    int rc = read_object(f, k, old, b);
    if (rc == -EBADMSG) {
        drop_corrupt(f, k, "checksum, length or trailer mismatch");
    } else {
        unlock_key(f, key);
        if (rc == -ENOENT || rc == -ESTALE) {
            /* gone from disk meanwhile (another host, an operator): forget it */
            struct stat st;
            bool o2;
            uint64_t freed = 0;
            if (disk_find(f, k, &st, &o2) < 0 && remove_key(f, k, true, &freed) > 0 && freed)
                l2_note_deleted(&f->base, k, freed);
        } else if (rc < 0) {
            log_rl(&io_rl, LOG_WARNING, "fs L2 adapter %s: cannot load %s: %s", f->base.name, key, strerror(-rc));
        }
    }
    if (rc == 0)
        l2_note_accessed(&f->base, k);
    l2_task_done(it, rc == 0, rc == 0 ? b->iov_len : 0, 0);
}

static void run_rd(void *ctx, struct l2_pool_item *pi)
{
    struct l2_task_item *it = (struct l2_task_item *)pi;
    if (it->task->op == L2_TASK_LOOKUP)
        do_lookup(ctx, it);
    else
        do_load(ctx, it);
}

static void run_wr(void *ctx, struct l2_pool_item *pi) { do_store(ctx, (struct l2_task_item *)pi); }

/* ---- ops ---- */

static int submit(struct l2_adapter *a, struct l2_pool *p, enum l2_task_op op, uint64_t task,
                  const struct l2_key *keys, const struct iovec *bufs, size_t n, const struct l2_cb *cb)
{
    if (!n)
        return -EINVAL;
    struct l2_task *t = l2_task_new(a, op, task, keys, bufs, n, cb);
    if (!t)
        return -ENOMEM;
    return l2_task_submit(p, t);
}

static int fs_store(struct l2_adapter *a, uint64_t task, const struct l2_key *keys, const struct iovec *objs,
                    size_t n, const struct l2_cb *cb)
{
    return submit(a, ((struct fs *)a)->wr, L2_TASK_STORE, task, keys, objs, n, cb);
}

static int fs_lookup(struct l2_adapter *a, uint64_t task, const struct l2_key *keys, size_t n,
                     const struct l2_cb *cb)
{
    return submit(a, ((struct fs *)a)->rd, L2_TASK_LOOKUP, task, keys, NULL, n, cb);
}

static int fs_load(struct l2_adapter *a, uint64_t task, const struct l2_key *keys, const struct iovec *bufs,
                   size_t n, const struct l2_cb *cb)
{
    return submit(a, ((struct fs *)a)->rd, L2_TASK_LOAD, task, keys, bufs, n, cb);
}

static void fs_unlock(struct l2_adapter *a, const struct l2_key *keys, size_t n)
{
    char key[L2_KEY_NAME_MAX];
    for (size_t i = 0; i < n; i++)
        if (l2_key_format(key, sizeof(key), &keys[i]) >= 0)
            unlock_key((struct fs *)a, key);
}

static int fs_delete(struct l2_adapter *a, const struct l2_key *keys, size_t n)
{
    struct fs *f = (struct fs *)a;
    int removed = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t freed = 0;
        if (remove_key(f, &keys[i], false, &freed) > 0) {
            removed++;
            if (freed)
                l2_note_deleted(a, &keys[i], freed);
        }
    }
    return removed;
}

static int fs_list(struct l2_adapter *a, const char *model, size_t page_size, const char *cursor,
                   struct l2_key_page *out)
{
    struct fs *f = (struct fs *)a;
    pthread_mutex_lock(&f->mu);
    size_t n = 0;
    char **names = malloc((f->idx.count ? f->idx.count : 1) * sizeof(char *));
    if (names) {
        struct htab_node *node, *tmp;
        HTAB_FOREACH_SAFE(&f->idx, node, tmp)
        names[n++] = htab_entry(node, struct fent, node)->key;
    }
    int rc = names ? l2_key_page_build(names, n, model, page_size, cursor, out) : -ENOMEM;
    pthread_mutex_unlock(&f->mu);
    free(names);
    return rc;
}

static void fs_replay(struct l2_adapter *a, const struct l2_listener *l)
{
    struct fs *f = (struct fs *)a;
    if (!l->stored)
        return;
    /* copy out under the lock, call outside it */
    pthread_mutex_lock(&f->mu);
    size_t n = 0, cap = f->idx.count;
    char **keys = calloc(cap ? cap : 1, sizeof(char *));
    uint64_t *sizes = calloc(cap ? cap : 1, sizeof(uint64_t));
    if (keys && sizes) {
        struct htab_node *node, *tmp;
        HTAB_FOREACH_SAFE(&f->idx, node, tmp)
        {
            struct fent *e = htab_entry(node, struct fent, node);
            if ((keys[n] = strdup(e->key)))
                sizes[n++] = e->payload;
        }
    }
    pthread_mutex_unlock(&f->mu);
    for (size_t i = 0; i < n; i++) {
        struct l2_key k;
        if (l2_key_parse(keys[i], strlen(keys[i]), &k) == 0)
            l->stored(l->arg, a, &k, sizes[i]);
        free(keys[i]);
    }
    free(keys);
    free(sizes);
}

static json_t *fs_status(struct l2_adapter *a)
{
    struct fs *f = (struct fs *)a;
    pthread_mutex_lock(&f->mu);
    size_t files = f->idx.count;
    pthread_mutex_unlock(&f->mu);
    struct statvfs sv;
    bool healthy = fstatvfs(f->dirfd, &sv) == 0;
#define A(x) ((json_int_t)atomic_load_explicit(&f->x, memory_order_relaxed))
    return json_pack("{s:b, s:s, s:s?, s:b, s:s, s:i, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "is_healthy",
                     healthy, "base_path", f->base_path, "relative_tmp_dir", f->tmp_rel, "use_odirect", f->odirect,
                     "checksum", f->crc ? "crc32" : "none", "load_concurrency", f->load_conc, "indexed_files",
                     (json_int_t)files, "read_queue", (json_int_t)l2_pool_queued(f->rd), "write_queue",
                     (json_int_t)l2_pool_queued(f->wr), "checksum_failures", A(crc_failures), "size_mismatches",
                     A(size_mismatches), "deleted_corrupt_files", A(deleted_corrupt), "odirect_fallbacks",
                     A(odirect_fallbacks), "stores_skipped_busy", A(store_skipped_busy), "disk_free_bytes",
                     healthy ? (json_int_t)((uint64_t)sv.f_bavail * sv.f_frsize) : (json_int_t)0);
#undef A
}

/* ---- start: recovery scan ---- */

static bool is_stale_tmp(int dfd, const char *n)
{
    struct stat st;
    size_t l = strlen(n);
    return l > 4 && !strcmp(n + l - 4, ".tmp") && !fstatat(dfd, n, &st, 0) && S_ISREG(st.st_mode) &&
           time(NULL) - st.st_mtime >= FS_STALE_TMP_S;
}

static void sweep_tmp(int dfd)
{
    int d = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *dir = d >= 0 ? fdopendir(d) : NULL;
    if (!dir) {
        if (d >= 0)
            close(d);
        return;
    }
    struct dirent *de;
    while ((de = readdir(dir)))
        if (is_stale_tmp(dfd, de->d_name))
            unlinkat(dfd, de->d_name, 0);
    closedir(dir);
}

static int recover(struct fs *f)
{
    int d = openat(f->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *dir = d >= 0 ? fdopendir(d) : NULL;
    if (!dir) {
        if (d >= 0)
            close(d);
        return -errno;
    }
    size_t files = 0, old = 0, ignored = 0;
    uint64_t bytes = 0;
    uint64_t t0 = clock_mono_ms();
    struct dirent *de;
    char mbuf[L2_KEY_MODEL_MAX + 1], key[L2_KEY_NAME_MAX];
    while ((de = readdir(dir))) {
        struct l2_key k;
        bool is_old = false;
        struct stat st;
        size_t nl = strlen(de->d_name);
        if (l2_key_parse_fs(de->d_name, nl, &k, mbuf, sizeof(mbuf), &is_old) < 0) {
            ignored += de->d_name[0] != '.';
            continue;
        }
        if (fstatat(f->dirfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) || !S_ISREG(st.st_mode) ||
            l2_key_format(key, sizeof(key), &k) < 0)
            continue;
        bool added = false;
        pthread_mutex_lock(&f->mu);
        struct fent *e = idx_find_locked(f, key);
        if (e && e->old_name && !is_old) { /* both names on disk: prefer the new one */
            e->old_name = false;
            e->file_size = (uint64_t)st.st_size;
        }
        if (!e)
            e = idx_add_locked(f, key, (uint64_t)st.st_size, is_old, &added);
        uint64_t payload = e ? e->payload : 0;
        pthread_mutex_unlock(&f->mu);
        if (added) {
            l2_note_stored(&f->base, &k, payload);
            files++;
            old += is_old;
            bytes += payload;
        }
    }
    closedir(dir);
    log_info("fs L2 adapter %s: recovered %zu objects (%zu with older 3-field names, %llu bytes) from %s in %llu ms"
             "%s",
             f->base.name, files, old, (unsigned long long)bytes, f->base_path,
             (unsigned long long)(clock_mono_ms() - t0), ignored ? "; other files ignored" : "");
    return 0;
}

/* ---- create / destroy ---- */

static void fs_destroy(struct l2_adapter *a)
{
    struct fs *f = (struct fs *)a;
    l2_pool_stop(f->wr, l2_task_cancel);
    l2_pool_stop(f->rd, l2_task_cancel);
    struct htab_node *node, *tmp;
    HTAB_FOREACH_SAFE(&f->idx, node, tmp)
    free(htab_entry(node, struct fent, node));
    htab_free(&f->idx);
    if (f->tmpfd >= 0 && f->tmpfd != f->dirfd)
        close(f->tmpfd);
    if (f->dirfd >= 0)
        close(f->dirfd);
    pthread_mutex_destroy(&f->mu);
    free(f->base_path);
    free(f->tmp_rel);
    l2_adapter_base_fini(a);
    free(f);
}

#define BAD(...)                                                                                                       \
    do {                                                                                                               \
        snprintf(err, errlen, "fs adapter: " __VA_ARGS__);                                                             \
        return -EINVAL;                                                                                                \
    } while (0)

struct fs_cfg {
    const char *base, *tmp;
    json_int_t read_ahead, load_conc;
    bool odirect, recover, crc;
    double cap_gb;
};

static int parse_cfg(const json_t *cfg, struct fs_cfg *c, char *err, size_t errlen)
{
    const json_t *v;
    memset(c, 0, sizeof(*c));
    c->recover = true;
    c->load_conc = 16;
    v = json_object_get(cfg, "base_path");
    if (!json_is_string(v) || !*json_string_value(v))
        BAD("base_path must be a non-empty string");
    c->base = json_string_value(v);
    if ((v = json_object_get(cfg, "relative_tmp_dir")) && !json_is_null(v)) {
        if (!json_is_string(v))
            BAD("relative_tmp_dir must be a string");
        c->tmp = json_string_value(v);
        if (c->tmp[0] == '/' || strstr(c->tmp, ".."))
            BAD("Invalid relative_tmp_dir: %s", c->tmp);
        if (!*c->tmp)
            c->tmp = NULL;
    }
    if ((v = json_object_get(cfg, "read_ahead_size")) && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) <= 0)
            BAD("read_ahead_size must be a positive integer");
        c->read_ahead = json_integer_value(v);
    }
    if ((v = json_object_get(cfg, "use_odirect"))) {
        if (!json_is_boolean(v))
            BAD("use_odirect must be a boolean");
        c->odirect = json_is_true(v);
    }
    if ((v = json_object_get(cfg, "max_capacity_gb"))) {
        if (!json_is_number(v) || json_number_value(v) < 0)
            BAD("max_capacity_gb must be a non-negative number");
        c->cap_gb = json_number_value(v);
    }
    if ((v = json_object_get(cfg, "recover_on_start"))) {
        if (!json_is_boolean(v))
            BAD("recover_on_start must be a boolean");
        c->recover = json_is_true(v);
    }
    if ((v = json_object_get(cfg, "checksum")) && !json_is_null(v)) {
        if (!json_is_string(v) || (strcmp(json_string_value(v), "none") && strcmp(json_string_value(v), "crc32")))
            BAD("checksum must be \"none\" or \"crc32\"");
        c->crc = !strcmp(json_string_value(v), "crc32");
    }
    if ((v = json_object_get(cfg, "load_concurrency"))) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 256)
            BAD("load_concurrency must be an integer in 1..256");
        c->load_conc = json_integer_value(v);
    }
    return 0;
}

static int mkdir_p(const char *path)
{
    char buf[4096];
    if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf))
        return -ENAMETOOLONG;
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = 0;
        if (mkdir(buf, 0755) < 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(buf, 0755) < 0 && errno != EEXIST)
        return -errno;
    return 0;
}

static int fs_create(const json_t *cfg, const struct l2_create_ctx *ctx, struct l2_adapter **out, char *err,
                     size_t errlen)
{
    struct fs_cfg c;
    int rc = parse_cfg(cfg, &c, err, errlen);
    if (rc < 0)
        return rc;
    struct fs *f = calloc(1, sizeof(*f));
    if (!f)
        return -ENOMEM;
    l2_adapter_base_init(&f->base, &l2_fs_ops, ctx);
    f->dirfd = f->tmpfd = -1;
    pthread_mutex_init(&f->mu, NULL);
    htab_init(&f->idx);
    f->base.capacity_bytes = (uint64_t)(c.cap_gb * 1024.0 * 1024 * 1024);
    f->read_ahead = (uint64_t)c.read_ahead;
    f->odirect = c.odirect;
    f->crc = c.crc;
    f->recover = c.recover;
    f->load_conc = (int)c.load_conc;
    rc = -ENOMEM;
    if (!(f->base_path = strdup(c.base)) || (c.tmp && !(f->tmp_rel = strdup(c.tmp))))
        goto fail;
    if ((rc = mkdir_p(c.base)) < 0) {
        snprintf(err, errlen, "fs adapter: cannot create base_path %s: %s", c.base, strerror(-rc));
        goto fail;
    }
    if ((f->dirfd = open(c.base, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
        rc = -errno;
        snprintf(err, errlen, "fs adapter: cannot open base_path %s: %s", c.base, strerror(-rc));
        goto fail;
    }
    f->tmpfd = f->dirfd;
    if (c.tmp) {
        if (mkdirat(f->dirfd, c.tmp, 0755) < 0 && errno != EEXIST) {
            rc = -errno;
            snprintf(err, errlen, "fs adapter: cannot create relative_tmp_dir %s: %s", c.tmp, strerror(-rc));
            goto fail;
        }
        if ((f->tmpfd = openat(f->dirfd, c.tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
            rc = -errno;
            snprintf(err, errlen, "fs adapter: cannot open relative_tmp_dir %s: %s", c.tmp, strerror(-rc));
            goto fail;
        }
    }
    if (f->odirect) {
        struct statvfs sv;
        f->bsize = fstatvfs(f->dirfd, &sv) == 0 && sv.f_bsize ? sv.f_bsize : 4096;
    }
    sweep_tmp(f->dirfd);
    if (f->tmpfd != f->dirfd)
        sweep_tmp(f->tmpfd);
    if (f->recover && (rc = recover(f)) < 0) {
        snprintf(err, errlen, "fs adapter: cannot scan base_path %s: %s", c.base, strerror(-rc));
        goto fail;
    }
    char pn[16];
    snprintf(pn, sizeof(pn), "%sr", ctx->name);
    if ((rc = l2_pool_start(&f->rd, pn, f->load_conc, FS_QUEUE, run_rd, f)) < 0)
        goto fail_threads;
    snprintf(pn, sizeof(pn), "%sw", ctx->name);
    if ((rc = l2_pool_start(&f->wr, pn, FS_STORE_THREADS, FS_QUEUE, run_wr, f)) < 0)
        goto fail_threads;
    log_info("Initialized FSL2Adapter %s with base_path=%s, relative_tmp_dir=%s, read_ahead_size=%lld, "
             "use_odirect=%s, max_capacity_gb=%g, checksum=%s, load_concurrency=%d",
             ctx->name, c.base, c.tmp ? c.tmp : "None", (long long)c.read_ahead, c.odirect ? "True" : "False",
             c.cap_gb, c.crc ? "crc32" : "none", f->load_conc);
    *out = &f->base;
    return 0;
fail_threads:
    snprintf(err, errlen, "fs adapter: cannot start its threads: %s", strerror(-rc));
fail:
    fs_destroy(&f->base);
    return rc;
}

const struct l2_ops l2_fs_ops = {
    .type = "fs",
    .create = fs_create,
    .destroy = fs_destroy,
    .submit_store = fs_store,
    .submit_lookup = fs_lookup,
    .unlock = fs_unlock,
    .submit_load = fs_load,
    .delete_keys = fs_delete,
    .list_keys = fs_list,
    .status = fs_status,
    .replay = fs_replay,
};
