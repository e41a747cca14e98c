/*
 * sdnotify.c: see sdnotify.h. One socket per message keeps it stateless
 * (a few messages a minute at most; WATCHDOG pings every WatchdogSec/2).
 */
#include "util/sdnotify.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* Written by sdnotify_init() before threads exist; read-only afterwards. */
static struct sockaddr_un addr;
static socklen_t addr_len;
static uint64_t watchdog_ns;

void sdnotify_init(void)
{
    const char *p = getenv("NOTIFY_SOCKET");
    size_t n = p ? strlen(p) : 0;
    addr_len = 0;
    /* a path, or "@name" (abstract: leading NUL); nothing else is valid */
    if (n >= 2 && n < sizeof(addr.sun_path) && (p[0] == '/' || p[0] == '@')) {
        memset(&addr, 0, sizeof(addr));
        addr.sun_family = AF_UNIX;
        memcpy(addr.sun_path, p, n);
        if (p[0] == '@')
            addr.sun_path[0] = 0;
        addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (p[0] == '/'));
    }
    const char *us = getenv("WATCHDOG_USEC"), *pid = getenv("WATCHDOG_PID");
    char *end = NULL;
    unsigned long long v = us ? strtoull(us, &end, 10) : 0;
    watchdog_ns = 0;
    if (us && end && !*end && v > 0 && v < 3600ULL * 1000000 * 24 &&
        (!pid || strtol(pid, NULL, 10) == (long)getpid()))
        watchdog_ns = (uint64_t)v * 1000;
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
}

int sdnotify_send(const char *state)
{
    if (!addr_len)
        return 0;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int rc = 0;
    if (sendto(fd, state, strlen(state), MSG_NOSIGNAL, (const struct sockaddr *)&addr, addr_len) < 0)
        rc = -errno;
    close(fd);
    return rc;
}

uint64_t sdnotify_watchdog_ns(void) { return watchdog_ns; }
