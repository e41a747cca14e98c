/*
 * runfile: run files owned by an flock. See runfile.h.
 */
#define LOG_MODULE "lmcd"
#include "util/runfile.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/log.h"

int runfile_create(char *path_template)
{
    int fd = mkostemp(path_template, O_CLOEXEC); /* mode 0600 */
    if (fd < 0)
        return -errno;
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        int rc = -errno;
        unlink(path_template);
        close(fd);
        return rc;
    }
    return fd;
}

int runfile_reclaim(const char *dir, const char *prefix, const char *what)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int dfd = dirfd(d), n = 0;
    size_t plen = strlen(prefix);
    struct dirent *de;
    while ((de = readdir(d))) {
        if (strncmp(de->d_name, prefix, plen) != 0)
            continue;
        int fd = openat(dfd, de->d_name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
        if (fd < 0)
            continue;
        struct stat st, now;
        /* Unlink only what we could lock and what the name still points at
         * while we hold the lock: the owner is gone and nobody replaced it. */
        if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid() &&
            flock(fd, LOCK_EX | LOCK_NB) == 0 &&
            fstatat(dfd, de->d_name, &now, AT_SYMLINK_NOFOLLOW) == 0 && now.st_ino == st.st_ino &&
            now.st_dev == st.st_dev && unlinkat(dfd, de->d_name, 0) == 0) {
            log_warn("Reclaimed stale %s %s/%s (%lld bytes): its lmcd is gone", what, dir, de->d_name,
                     (long long)st.st_size);
            n++;
        }
        close(fd);
    }
    closedir(d);
    return n;
}
