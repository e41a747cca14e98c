/*
 * netaddr: small questions about host names and ids that access control
 * asks (docs/security.md): is a bind host loopback only, and which numeric
 * uids/gids does a "0,alice,1000" list name.
 *
 * No lmcd types; no state. Thread-safe (getaddrinfo, getpwnam_r,
 * getgrnam_r). Name resolution may block: call these at start-up only.
 */
#ifndef LMCD_UTIL_NETADDR_H
#define LMCD_UTIL_NETADDR_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

/* True when sa is 127.0.0.0/8, ::1 or ::ffff:127.0.0.0/104. */
bool netaddr_sa_is_loopback(const struct sockaddr *sa);

/*
 * 1 when every address host resolves to is loopback ("localhost",
 * "127.0.0.1", "::1", "[::1]"), 0 when one is not ("0.0.0.0", "*", "::",
 * a LAN address or name), -EINVAL when it does not resolve.
 */
int netaddr_host_is_loopback(const char *host);

/*
 * Parses a comma-separated list of user (group=false) or group names or
 * decimal ids into out[0..*n). Names are resolved with the system's
 * databases. 0, -EINVAL (empty item, unknown name; *bad points at it),
 * -E2BIG (more than cap items).
 */
int netaddr_parse_ids(const char *list, bool group, unsigned *out, size_t cap, size_t *n, const char **bad);

#endif
