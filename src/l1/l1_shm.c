/*
 * l1_shm: create, map and remove the L1 segment. See l1_shm.h.
 *
 * Stale segments: a segment of our name that already exists is left over by
 * an lmcd that died without unlinking (or a crashed test). We own the name by
 * configuration, so we remove it and create a fresh one, with one exception:
 * when its header carries our magic and the pid of a live process other than
 * us, another lmcd is serving from it right now, and we refuse (-EBUSY)
 * rather than pull the segment from under its workers. Anything else (no
 * header, a foreign format, a dead or reused-by-us pid) is removed with a
 * WARNING saying why. Until warm restart lands nothing is adopted.
 */
#define LOG_MODULE "lmcd.l1"
#include "l1/l1_shm.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "l1/l1_commit.h"
#include "util/log.h"

static bool pid_alive(uint64_t pid)
{
    if (pid == 0 || pid > INT32_MAX)
        return false;
    return kill((pid_t)pid, 0) == 0 || errno == EPERM;
}

/* 0 when the name is free now, -EBUSY when a live lmcd holds it, -errno. */
static int remove_stale(const char *path)
{
    int fd = shm_open(path, O_RDONLY, 0);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0;
        int rc = -errno;
        log_error("L1 segment %s exists and cannot be opened to check it: %s", path,
                  strerror(errno));
        return rc;
    }
    struct l1_seg_header h;
    memset(&h, 0, sizeof(h));
    struct stat st;
    bool has_header = fstat(fd, &st) == 0 && (uint64_t)st.st_size >= sizeof(h) &&
                      pread(fd, &h, sizeof(h), 0) == (ssize_t)sizeof(h) &&
                      memcmp(h.magic, L1_SEG_MAGIC, sizeof(h.magic)) == 0;
    close(fd);
    char why[96];
    if (!has_header) {
        snprintf(why, sizeof(why), "no lmcd header");
    } else if (h.owner_pid == (uint64_t)getpid()) {
        snprintf(why, sizeof(why), "its owner pid %" PRIu64 " is us (a previous run)",
                 h.owner_pid);
    } else if (pid_alive(h.owner_pid)) {
        log_error("L1 segment %s belongs to live process %" PRIu64
                  "; another lmcd is serving from it. Pick another --shm-name.",
                  path, h.owner_pid);
        return -EBUSY;
    } else {
        snprintf(why, sizeof(why), "its owner pid %" PRIu64 " is gone", h.owner_pid);
    }
    log_warn("Removing stale L1 segment %s (%s)", path, why);
    if (shm_unlink(path) < 0 && errno != ENOENT) {
        int rc = -errno;
        log_error("Cannot remove stale L1 segment %s: %s", path, strerror(errno));
        return rc;
    }
    return 0;
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
    if (statvfs("/dev/shm", &vfs) != 0)
        return;
    uint64_t avail = (uint64_t)vfs.f_bavail * vfs.f_frsize;
    if (avail < size)
        log_warn("/dev/shm has %" PRIu64 " bytes free but L1 is %" PRIu64
                 " bytes (lazy mode); touching pages past the free space raises SIGBUS. "
                 "Enlarge /dev/shm or lower --l1-size-gb.",
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

int l1_shm_create(struct l1_shm *s, const char *name, const char *group, uint64_t size,
                  bool lazy)
{
    memset(s, 0, sizeof(*s));
    s->fd = -1;
    int fd = -1, rc;
    char path[sizeof(s->name) + 1];
    gid_t gid = 0;
    mode_t mode = group ? 0660 : 0600;

    if (!name || !*name || strchr(name, '/') || strlen(name) >= sizeof(s->name) - 1 ||
        size == 0 || size > (uint64_t)INT64_MAX) {
        log_error("Invalid L1 segment name or size ('%s', %" PRIu64 " bytes)",
                  name ? name : "", size);
        return -EINVAL;
    }
    if (group && (rc = group_gid(group, &gid)) < 0)
        return rc;
    snprintf(s->name, sizeof(s->name), "%s", name);
    snprintf(path, sizeof(path), "/%s", name);

    for (int attempt = 0; attempt < 2; attempt++) {
        fd = shm_open(path, O_RDWR | O_CREAT | O_EXCL, mode);
        if (fd >= 0 || errno != EEXIST || attempt == 1)
            break;
        if ((rc = remove_stale(path)) < 0)
            return rc;
    }
    if (fd < 0) {
        rc = -errno;
        log_error("Cannot create L1 segment %s: %s", path, strerror(errno));
        return rc;
    }
    s->unlink_at_destroy = true;
    /* The umask may have cut the mode; the trust model depends on it. */
    if (fchmod(fd, mode) < 0)
        goto fail_errno;
    if (group && fchown(fd, (uid_t)-1, gid) < 0) {
        rc = -errno;
        log_error("Cannot give L1 segment %s to group '%s': %s", path, group,
                  strerror(errno));
        goto fail;
    }
    if (ftruncate(fd, (off_t)size) < 0)
        goto fail_errno;
    if (!lazy) {
        rc = posix_fallocate(fd, 0, (off_t)size);
        if (rc != 0) {
            log_error("Cannot allocate %" PRIu64 " bytes for L1 segment %s: %s "
                      "(is /dev/shm large enough?)",
                      size, path, strerror(rc));
            rc = -rc;
            goto fail;
        }
    } else {
        warn_if_shm_small(size);
    }
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | (lazy ? 0 : MAP_POPULATE),
                   fd, 0);
    if (p == MAP_FAILED)
        goto fail_errno;
    if (lazy) {
        s->fd = fd; /* kept: l1_shm_back() commits pages on demand */
        if ((rc = l1_commit_start(fd, size, &s->commit)) < 0)
            log_warn("L1 segment %s: no commit-ahead thread (%s); pages are committed per reservation", path,
                     strerror(-rc));
    } else {
        close(fd);
        s->fd = -1;
    }
    fd = -1;
    s->base = p;
    s->size = size;
    /* Plugins are fork()ed from lmcd: keep the (possibly huge) segment out
     * of the child's address space, so a fork never copies its page tables. */
    if (madvise(p, size, MADV_DONTFORK))
        log_debug("madvise(MADV_DONTFORK) on the L1 segment: %s", strerror(errno));
    if (!lazy)
        lock_pages(s);
    log_info("L1 segment /%s: %" PRIu64 " bytes, mode %04o%s%s, %s%s", s->name, size,
             (unsigned)mode, group ? ", group " : "", group ? group : "",
             lazy ? "lazy" : "pre-faulted", s->mlocked ? ", locked" : "");
    return 0;

fail_errno:
    rc = -errno;
    log_error("Cannot set up L1 segment %s: %s", path, strerror(errno));
fail:
    if (fd >= 0)
        close(fd);
    shm_unlink(path);
    memset(s, 0, sizeof(*s));
    s->fd = -1;
    return rc;
}

int l1_shm_back(struct l1_shm *s, uint64_t off, uint64_t len)
{
    if (s->fd < 0 || len == 0)
        return 0;
    if (s->commit)
        return l1_commit_back(s->commit, off, len);
    int e = posix_fallocate(s->fd, (off_t)off, (off_t)len);
    return e ? -e : 0;
}

void l1_shm_destroy(struct l1_shm *s)
{
    l1_commit_stop(s->commit); /* before the fd it backs through closes */
    s->commit = NULL;
    if (s->fd > 0) /* 0 only in a never-created, zeroed struct */
        close(s->fd);
    if (s->base) {
        if (s->mlocked)
            munlock(s->base, s->size);
        munmap(s->base, s->size);
    }
    if (s->unlink_at_destroy) {
        char path[sizeof(s->name) + 1];
        snprintf(path, sizeof(path), "/%s", s->name);
        if (shm_unlink(path) < 0 && errno != ENOENT)
            log_warn("Cannot unlink L1 segment %s: %s", path, strerror(errno));
    }
    memset(s, 0, sizeof(*s));
}
