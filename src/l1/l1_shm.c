/*
 * l1_shm: create, own, map, commit, restore and remove the L1 segment.
 * See l1_shm.h for the contract and docs/l1.md ("Segment") for the design.
 *
 * Everything is done through a descriptor of /dev/shm (where glibc's
 * shm_open puts segments on Linux), so that the name can be checked against
 * the inode we hold before anything is unlinked.
 *
 * Ownership protocol (each lmcd follows it; none relies on pids):
 *   create   O_CREAT|O_EXCL, then flock(LOCK_EX) (retried briefly: a prober
 *            may hold it for a moment), then the header with our magic and
 *            instance id; the lock is held until the fd closes at exit.
 *   probe    open an existing name, try flock(LOCK_EX|LOCK_NB):
 *              taken by someone  -> a live owner: never touched;
 *              ours now, no lmcd magic -> not ours (or being created):
 *                                   never unlinked;
 *              ours now, magic   -> its lmcd is gone: unlinked while we
 *                                   hold the lock and the name still
 *                                   points at that inode.
 *   stop     unlink only while the name still points at our inode.
 * A segment of layout 1 (older lmcd, no lock) found by the start-up scan of
 * other names is never reclaimed: nothing proves its owner gone (a pid in
 * another PID namespace looks dead from here).
 */
#define LOG_MODULE "lmcd.l1"
#include "l1/l1_shm.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "l1/l1_commit.h"
#include "l1/l1_guard.h"
#include "util/log.h"

#define SHM_DIR "/dev/shm"

static int fallocate_keep(int fd, uint64_t off, uint64_t len)
{
    /* KEEP_SIZE: lmcd never grows the file, so a short file always means
     * someone else truncated it (l1_shm_intact). */
    while (fallocate(fd, FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) < 0) {
        if (errno != EINTR)
            return -errno;
    }
    return 0;
}

enum probe {
    PROBE_ABSENT,    /* no such name (any more) */
    PROBE_RECLAIMED, /* a dead lmcd's segment, now unlinked */
    PROBE_HELD,      /* a live owner holds it */
    PROBE_FOREIGN,   /* not an lmcd segment (or one being created) */
    PROBE_ERROR,
};

/* Checks the existing segment `name` and unlinks it when its lmcd is gone.
 * scan: found by the start-up scan (not our configured name), where a
 * lock-less layout-1 segment of a live pid is left alone. */
static enum probe probe(int dfd, const char *name, bool scan)
{
    int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return errno == ENOENT ? PROBE_ABSENT : PROBE_ERROR;
    enum probe r = PROBE_FOREIGN;
    struct stat st, now;
    struct l1_seg_header h;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
        goto out;
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        r = errno == EWOULDBLOCK ? PROBE_HELD : PROBE_ERROR;
        goto out;
    }
    memset(&h, 0, sizeof(h));
    /* Fields past a layout-1 header stay zero; only the magic, version and
     * owner pid are looked at. */
    if (st.st_size < (off_t)offsetof(struct l1_seg_header, instance_id) ||
        pread(fd, &h, sizeof(h), 0) < (ssize_t)offsetof(struct l1_seg_header, instance_id) ||
        memcmp(h.magic, L1_SEG_MAGIC, sizeof(h.magic)) != 0)
        goto out;
    if (scan && h.layout_version < 2) {
        /* An older lmcd held no lock, and its pid proves nothing (another PID
         * namespace, reuse): only its own name, reused by configuration, is
         * taken back. */
        r = PROBE_HELD;
        goto out;
    }
    r = PROBE_ABSENT;
    if (fstatat(dfd, name, &now, AT_SYMLINK_NOFOLLOW) < 0 || now.st_ino != st.st_ino || now.st_dev != st.st_dev)
        goto out; /* replaced meanwhile: look again */
    if (unlinkat(dfd, name, 0) < 0) {
        r = errno == ENOENT ? PROBE_ABSENT : PROBE_ERROR;
        goto out;
    }
    uint64_t age_s = 0, wall = (uint64_t)time(NULL) * 1000000000ull;
    if (h.created_wall_ns && h.created_wall_ns < wall)
        age_s = (wall - h.created_wall_ns) / 1000000000ull;
    log_warn("Reclaimed stale L1 segment /%s: %lld bytes, layout %u, owner pid %" PRIu64
             " (its lock is free: that lmcd is gone), created %" PRIu64 " s ago",
             name, (long long)st.st_size, h.layout_version, h.owner_pid, age_s);
    r = PROBE_RECLAIMED;
out:
    close(fd);
    return r;
}

/* Start-up: reclaims every stale segment of the default name pattern. */
static void scan_stale(int dfd)
{
    int sfd = dup(dfd);
    DIR *d = sfd >= 0 ? fdopendir(sfd) : NULL;
    if (!d) {
        if (sfd >= 0)
            close(sfd);
        return;
    }
    /* Collect first: unlinking while readdir walks the directory may skip entries. */
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (strncmp(de->d_name, L1_SHM_DEFAULT_PREFIX, strlen(L1_SHM_DEFAULT_PREFIX)) != 0)
            continue;
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 16;
            char **nn = realloc(names, nc * sizeof(*nn));
            if (!nn)
                break;
            names = nn;
            cap = nc;
        }
        if (!(names[n] = strdup(de->d_name)))
            break;
        n++;
    }
    closedir(d);
    for (size_t i = 0; i < n; i++) {
        probe(dfd, names[i], true);
        free(names[i]);
    }
    free(names);
}

static int group_gid(const char *group, gid_t *gid)
{
    long sz = sysconf(_SC_GETGR_R_SIZE_MAX);
    size_t len = sz > 0 ? (size_t)sz : 16384;
    for (int tries = 0; tries < 6; tries++, len *= 2) {
        char *buf = malloc(len);
        if (!buf)
            return -ENOMEM;
        struct group gr, *res = NULL;
        int rc = getgrnam_r(group, &gr, buf, len, &res);
        if (rc == 0 && res)
            *gid = res->gr_gid;
        free(buf);
        if (rc == ERANGE)
            continue;
        if (rc != 0) {
            log_error("Cannot resolve --shm-group '%s': %s", group, strerror(rc));
            return -rc;
        }
        if (!res) {
            log_error("--shm-group '%s': no such group", group);
            return -ENOENT;
        }
        return 0;
    }
    return -ERANGE;
}

static void warn_if_shm_small(uint64_t size)
{
    struct statvfs vfs;
    if (statvfs(SHM_DIR, &vfs) != 0)
        return;
    uint64_t avail = (uint64_t)vfs.f_bavail * vfs.f_frsize;
    if (avail < size)
        log_warn("/dev/shm has %" PRIu64 " bytes free but L1 is %" PRIu64
                 " bytes (lazy mode): once /dev/shm is full, chunks that find no room are "
                 "skipped (each object's pages are committed before anyone writes them: no "
                 "SIGBUS). Enlarge /dev/shm or lower --l1-size-gb to cache them.",
                 avail, size);
}

static void lock_pages(struct l1_shm *s)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_MEMLOCK, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        rl.rlim_cur < s->size) {
        log_warn("RLIMIT_MEMLOCK is %" PRIu64 " bytes, below the L1 size %" PRIu64
                 "; L1 pages are not locked and may be swapped. Raise RLIMIT_MEMLOCK "
                 "(ulimit -l) to lock them.",
                 (uint64_t)rl.rlim_cur, s->size);
        return;
    }
    if (mlock(s->base, s->size) == 0) {
        s->mlocked = true;
        return;
    }
    log_warn("mlock of the L1 segment failed (%s); pages may be swapped. Check "
             "RLIMIT_MEMLOCK.",
             strerror(errno));
}

/* Our lock on a segment we just created; a prober may hold it for the
 * moment it takes to read an (empty) header. */
static int take_lock(int fd)
{
    for (int i = 0; i < 200; i++) {
        if (flock(fd, LOCK_EX | LOCK_NB) == 0)
            return 0;
        if (errno != EWOULDBLOCK && errno != EINTR)
            return -errno;
        struct timespec ts = { 0, 5 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
    return -EWOULDBLOCK;
}

/* Creates "name" in dfd, falling back to a unique name when the default
 * one is taken. 0 with s->fd and s->name set, or -errno (logged). */
static int create_owned(struct l1_shm *s, int dfd, bool dflt, mode_t mode)
{
    int fd = -1, rc;
    for (int attempt = 0; attempt < 8 && fd < 0; attempt++) {
        fd = openat(dfd, s->name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
        if (fd >= 0)
            break;
        if (errno != EEXIST) {
            rc = -errno;
            log_error("Cannot create L1 segment /%s: %s", s->name, strerror(errno));
            return rc;
        }
        enum probe p = probe(dfd, s->name, false);
        if (p == PROBE_ABSENT || p == PROBE_RECLAIMED)
            continue;
        const char *why = p == PROBE_HELD ? "held by a running lmcd (its owner lock is taken)"
                        : p == PROBE_FOREIGN ? "not an lmcd segment, or one being created"
                                             : "not readable";
        if (!dflt) {
            log_error("L1 segment /%s is %s; lmcd does not take it. Stop that lmcd, or pick "
                      "another --shm-name.",
                      s->name, why);
            return -EBUSY;
        }
        /* The default name is only a convention (workers learn the name
         * from the registration reply): two lmcd that are both pid 1 in
         * their own PID namespaces get a unique name instead. */
        uint32_t r = 0;
        if (getrandom(&r, sizeof(r), 0) != (ssize_t)sizeof(r))
            r = (uint32_t)clock() ^ (uint32_t)attempt;
        char taken[sizeof(s->name)];
        snprintf(taken, sizeof(taken), "%s", s->name);
        snprintf(s->name, sizeof(s->name), L1_SHM_DEFAULT_PREFIX "%ld_%08x", (long)getpid(), r);
        log_warn("L1 segment /%s is %s; using /%s instead", taken, why, s->name);
    }
    if (fd < 0) {
        log_error("Cannot create L1 segment /%s: the name stays taken", s->name);
        return -EEXIST;
    }
    if ((rc = take_lock(fd)) < 0) {
        log_error("Cannot lock the new L1 segment /%s: %s", s->name, strerror(-rc));
        unlinkat(dfd, s->name, 0); /* created by us a moment ago */
        close(fd);
        return rc;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        rc = -errno;
        unlinkat(dfd, s->name, 0);
        close(fd);
        return rc;
    }
    s->fd = fd;
    s->dev = (uint64_t)st.st_dev;
    s->ino = (uint64_t)st.st_ino;
    return 0;
}

/* Unlinks our name only while it still points at our inode. */
static void unlink_ours(struct l1_shm *s)
{
    int dfd = open(SHM_DIR, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    struct stat now;
    if (dfd < 0)
        return;
    if (fstatat(dfd, s->name, &now, AT_SYMLINK_NOFOLLOW) == 0) {
        if ((uint64_t)now.st_ino == s->ino && (uint64_t)now.st_dev == s->dev) {
            if (unlinkat(dfd, s->name, 0) < 0 && errno != ENOENT)
                log_warn("Cannot unlink L1 segment /%s: %s", s->name, strerror(errno));
        } else {
            log_warn("L1 segment name /%s now belongs to another file; leaving it", s->name);
        }
    }
    close(dfd);
}

int l1_shm_create(struct l1_shm *s, const char *name, const char *group, uint64_t size,
                  uint64_t meta_bytes, bool lazy)
{
    memset(s, 0, sizeof(*s));
    s->fd = -1;
    int rc, dfd = -1;
    gid_t gid = 0;
    mode_t mode = group ? 0660 : 0600;
    bool dflt = !name || !*name;

    if ((!dflt && (strchr(name, '/') || strlen(name) >= sizeof(s->name) - 1 || !strcmp(name, ".") ||
                   !strcmp(name, ".."))) ||
        size == 0 || size > (uint64_t)INT64_MAX || meta_bytes > size) {
        log_error("Invalid L1 segment name or size ('%s', %" PRIu64 " bytes)", dflt ? "" : name, size);
        return -EINVAL;
    }
    if (group && (rc = group_gid(group, &gid)) < 0)
        return rc;
    if (dflt)
        snprintf(s->name, sizeof(s->name), L1_SHM_DEFAULT_PREFIX "%ld", (long)getpid());
    else
        snprintf(s->name, sizeof(s->name), "%s", name);
    if ((dfd = open(SHM_DIR, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
        rc = -errno;
        log_error("Cannot open %s for the L1 segment: %s", SHM_DIR, strerror(errno));
        return rc;
    }
    scan_stale(dfd);
    rc = create_owned(s, dfd, dflt, mode);
    close(dfd);
    if (rc < 0) {
        memset(s, 0, sizeof(*s));
        s->fd = -1;
        return rc;
    }
    int fd = s->fd;
    if (getrandom(s->instance_id, sizeof(s->instance_id), 0) != (ssize_t)sizeof(s->instance_id)) {
        uint64_t t = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
        memcpy(s->instance_id, &t, sizeof(t));
    }
    /* The umask may have cut the mode; the trust model depends on it. */
    if (fchmod(fd, mode) < 0)
        goto fail_errno;
    if (group && fchown(fd, (uid_t)-1, gid) < 0) {
        rc = -errno;
        log_error("Cannot give L1 segment /%s to group '%s': %s", s->name, group, strerror(errno));
        goto fail;
    }
    if (ftruncate(fd, (off_t)size) < 0)
        goto fail_errno;
    /* What lmcd itself writes (header, object table) is committed before
     * it is written, in every mode: a full /dev/shm is a clean failure here
     * rather than SIGBUS at the first table write. */
    if ((rc = fallocate_keep(fd, 0, lazy ? meta_bytes : size)) < 0) {
        log_error("Cannot start: /dev/shm has no room for %s of L1 segment /%s (%" PRIu64
                  " bytes): %s. Free space in /dev/shm or lower --l1-size-gb.",
                  lazy ? "the header and object table" : "all pages", s->name,
                  lazy ? meta_bytes : size, strerror(-rc));
        goto fail;
    }
    if (lazy)
        warn_if_shm_small(size);
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | (lazy ? 0 : MAP_POPULATE),
                   fd, 0);
    if (p == MAP_FAILED)
        goto fail_errno;
    s->base = p;
    s->size = size;
    s->meta_bytes = meta_bytes;
    s->lazy = lazy;
    if ((rc = l1_guard_register(p, size, &s->guard)) < 0) {
        log_error("Cannot guard L1 segment /%s against truncation: %s", s->name, strerror(-rc));
        goto fail;
    }
    /* Plugins are fork()ed from lmcd: keep the (possibly huge) segment out
     * of the child's address space, so a fork never copies its page tables. */
    if (madvise(p, size, MADV_DONTFORK))
        log_debug("madvise(MADV_DONTFORK) on the L1 segment: %s", strerror(errno));
    if (!lazy)
        lock_pages(s);
    if (lazy && (rc = l1_commit_start(fd, size, &s->commit)) < 0)
        log_warn("L1 segment /%s: no commit-ahead thread (%s); pages are committed per reservation", s->name,
                 strerror(-rc));
    /* The header and table are backed: say so, so the bitmap has no hole
     * there (their pages exist already; this only marks them, and backs
     * nothing ahead: a lazy segment commits nothing more at start). */
    if (s->commit)
        l1_commit_mark(s->commit, 0, meta_bytes);
    log_info("L1 segment /%s: %" PRIu64 " bytes, mode %04o%s%s, %s%s, owner lock held", s->name,
             size, (unsigned)mode, group ? ", group " : "", group ? group : "",
             lazy ? "lazy" : "pre-faulted", s->mlocked ? ", locked" : "");
    return 0;

fail_errno:
    rc = -errno;
    log_error("Cannot set up L1 segment /%s: %s", s->name, strerror(errno));
fail:
    l1_guard_unregister(s->guard);
    if (s->base)
        munmap(s->base, s->size);
    unlink_ours(s);
    close(fd);
    memset(s, 0, sizeof(*s));
    s->fd = -1;
    return rc;
}

bool l1_shm_intact(struct l1_shm *s)
{
    if (l1_guard_lost(s->guard))
        return false;
    struct stat st;
    return fstat(s->fd, &st) != 0 || (uint64_t)st.st_size >= s->size;
}

int l1_shm_back(struct l1_shm *s, uint64_t off, uint64_t len)
{
    if (len == 0)
        return 0;
    int rc = !s->lazy ? 0 : s->commit ? l1_commit_back(s->commit, off, len) : fallocate_keep(s->fd, off, len);
    if (rc == 0 && !l1_shm_intact(s))
        rc = -EIO; /* pages past a truncation would fault: never hand them out */
    return rc;
}

bool l1_shm_backed(const struct l1_shm *s, uint64_t off, uint64_t len)
{
    return !s->lazy || (s->commit && l1_commit_backed(s->commit, off, len));
}

int l1_shm_restore(struct l1_shm *s)
{
    l1_guard_rearm(s->guard);
    if (ftruncate(s->fd, (off_t)s->size) < 0)
        return -errno;
    int rc = fallocate_keep(s->fd, 0, s->lazy ? s->meta_bytes : s->size);
    if (rc < 0)
        return rc;
    void *p = mmap(s->base, s->size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, s->fd, 0);
    if (p == MAP_FAILED)
        return -errno;
    madvise(p, s->size, MADV_DONTFORK);
    s->mlocked = false;
    if (!s->lazy)
        lock_pages(s);
    l1_commit_reset(s->commit); /* the truncation took every page: nothing is backed now */
    if (s->commit)
        l1_commit_mark(s->commit, 0, s->meta_bytes); /* but the header and table, again */
    return 0;
}

void l1_shm_destroy(struct l1_shm *s)
{
    l1_commit_stop(s->commit); /* before the fd it backs through closes */
    s->commit = NULL;
    l1_guard_unregister(s->guard);
    if (s->base) {
        if (s->mlocked)
            munlock(s->base, s->size);
        munmap(s->base, s->size);
    }
    if (s->fd >= 0) {
        if (s->name[0])
            unlink_ours(s); /* still holding the owner lock */
        close(s->fd);
    }
    memset(s, 0, sizeof(*s));
    s->fd = -1;
}
