/* netaddr: loopback checks and uid/gid lists (see netaddr.h). */
#include "util/netaddr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <grp.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

bool netaddr_sa_is_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_LOOPBACK(a))
            return true;
        return IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127;
    }
    return false;
}

int netaddr_host_is_loopback(const char *host)
{
    char buf[256];
    size_t len = strlen(host);
    if (!len || !strcmp(host, "*") || len >= sizeof(buf))
        return len && len < sizeof(buf) ? 0 : -EINVAL;
    if (host[0] == '[' && host[len - 1] == ']') { /* "[::1]" */
        memcpy(buf, host + 1, len - 2);
        buf[len - 2] = 0;
    } else {
        memcpy(buf, host, len + 1);
    }
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *ai = NULL;
    if (getaddrinfo(buf, NULL, &hints, &ai) || !ai)
        return -EINVAL;
    int all = 1;
    for (struct addrinfo *p = ai; p; p = p->ai_next)
        if (!netaddr_sa_is_loopback(p->ai_addr))
            all = 0;
    freeaddrinfo(ai);
    return all;
}

/* One name or id -> numeric id. 0 or -EINVAL. */
static int resolve_id(const char *item, bool group, unsigned *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(item, &end, 10);
    if (*item >= '0' && *item <= '9' && !*end && !errno && v < 0xffffffffUL) {
        *out = (unsigned)v;
        return 0;
    }
    long sz = sysconf(group ? _SC_GETGR_R_SIZE_MAX : _SC_GETPW_R_SIZE_MAX);
    size_t cap = sz > 0 ? (size_t)sz : 16384;
    for (int tries = 0; tries < 6; tries++, cap *= 2) {
        char *buf = malloc(cap);
        if (!buf)
            return -ENOMEM;
        int rc;
        bool found = false;
        if (group) {
            struct group gr, *res = NULL;
            rc = getgrnam_r(item, &gr, buf, cap, &res);
            if (!rc && res) {
                *out = res->gr_gid;
                found = true;
            }
        } else {
            struct passwd pw, *res = NULL;
            rc = getpwnam_r(item, &pw, buf, cap, &res);
            if (!rc && res) {
                *out = res->pw_uid;
                found = true;
            }
        }
        free(buf);
        if (rc == ERANGE)
            continue;
        return found ? 0 : -EINVAL;
    }
    return -EINVAL;
}

int netaddr_parse_ids(const char *list, bool group, unsigned *out, size_t cap, size_t *n, const char **bad)
{
    static __thread char item[256];
    *n = 0;
    *bad = NULL;
    const char *p = list;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        while (len && (*p == ' ' || *p == '\t')) {
            p++;
            len--;
        }
        while (len && (p[len - 1] == ' ' || p[len - 1] == '\t'))
            len--;
        snprintf(item, sizeof(item), "%.*s", (int)len, p);
        if (*n == cap) {
            *bad = item;
            return -E2BIG;
        }
        if (!len || len >= sizeof(item) || resolve_id(item, group, &out[*n])) {
            *bad = item;
            return -EINVAL;
        }
        ++*n;
        if (!comma)
            break;
        p = comma + 1;
        if (!*p) { /* "a," */
            item[0] = 0;
            *bad = item;
            return -EINVAL;
        }
    }
    return 0;
}
