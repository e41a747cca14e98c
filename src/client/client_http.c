/* client_http: one bounded HTTP/1.0 exchange (see client_http.h). */
#include "client/client_http.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "util/clock.h"

/* Milliseconds left before deadline (0 when passed); -1 = no deadline. */
static int ms_left(uint64_t deadline)
{
    if (!deadline)
        return -1;
    uint64_t now = clock_mono_ms();
    return now >= deadline ? 0 : (int)(deadline - now);
}

/* Waits for `events` on fd; 0, or -ETIMEDOUT / -errno. */
static int wait_fd(int fd, short events, uint64_t deadline)
{
    for (;;) {
        struct pollfd p = { .fd = fd, .events = events };
        int left = ms_left(deadline);
        if (left == 0)
            return -ETIMEDOUT;
        int n = poll(&p, 1, left);
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return -errno;
    }
}

/* A non-blocking connect to the first address that answers in time. */
static int open_conn(const char *host, const char *port, uint64_t deadline, char *err,
                     size_t errlen)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *res;
    int g = getaddrinfo(host, port, &hints, &res);
    if (g != 0) {
        snprintf(err, errlen, "cannot resolve %s: %s", host, gai_strerror(g));
        return -EHOSTUNREACH;
    }
    int rc = -ECONNREFUSED;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
                        ai->ai_protocol);
        if (fd < 0) {
            rc = -errno;
            continue;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
            rc = 0;
        } else if (errno != EINPROGRESS) {
            rc = -errno;
        } else if ((rc = wait_fd(fd, POLLOUT, deadline)) == 0) {
            int soerr = 0;
            socklen_t len = sizeof(soerr);
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len);
            rc = -soerr;
        }
        if (rc == 0) {
            freeaddrinfo(res);
            return fd;
        }
        close(fd);
        if (rc == -ETIMEDOUT)
            break; /* the deadline is shared: no time left for the next address */
    }
    freeaddrinfo(res);
    snprintf(err, errlen, "cannot connect to %s:%s: %s", host, port, strerror(-rc));
    return rc;
}

static int send_req(int fd, const char *p, size_t n, uint64_t deadline)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
        } else if (errno == EAGAIN) {
            int rc = wait_fd(fd, POLLOUT, deadline);
            if (rc < 0)
                return rc;
        } else if (errno != EINTR) {
            return -errno;
        }
    }
    return 0;
}

/* Reads to EOF into a NUL-terminated buffer. */
static int recv_all(int fd, uint64_t deadline, char **out, size_t *out_len)
{
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    int rc = 0;
    if (!buf)
        return -ENOMEM;
    for (;;) {
        if (len + 1 == cap) {
            char *nb = cap >= CLIENT_HTTP_MAX_REPLY ? NULL : realloc(buf, cap * 2);
            if (!nb) {
                rc = cap >= CLIENT_HTTP_MAX_REPLY ? -EMSGSIZE : -ENOMEM;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t got = recv(fd, buf + len, cap - len - 1, 0);
        if (got > 0) {
            len += (size_t)got;
        } else if (got == 0) {
            buf[len] = '\0';
            *out = buf;
            *out_len = len;
            return 0;
        } else if (errno == EAGAIN) {
            if ((rc = wait_fd(fd, POLLIN, deadline)) < 0)
                break;
        } else if (errno != EINTR) {
            rc = -errno;
            break;
        }
    }
    free(buf);
    return rc;
}

int client_http_request(const char *host, const char *port, const char *method,
                        const char *target, int timeout_ms, struct client_http_reply *out,
                        char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    uint64_t deadline = timeout_ms < 0 ? 0 : clock_mono_ms() + (uint64_t)timeout_ms + 1;
    int fd = open_conn(host, port, deadline, err, errlen);
    if (fd < 0)
        return fd;
    char *req = NULL, *raw = NULL;
    size_t raw_len = 0;
    /* lmcd with --http-auth-token wants it on mutations (docs/security.md). */
    const char *tok = getenv("LMCD_HTTP_TOKEN");
    int n = asprintf(&req, "%s %s HTTP/1.0\r\nHost: %s:%s\r\n%s%s%sConnection: close\r\n\r\n", method, target,
                     host, port, tok && *tok ? "Authorization: Bearer " : "", tok && *tok ? tok : "",
                     tok && *tok ? "\r\n" : "");
    int rc = n < 0 ? -ENOMEM : send_req(fd, req, (size_t)n, deadline);
    if (rc == 0)
        rc = recv_all(fd, deadline, &raw, &raw_len);
    close(fd);
    if (n >= 0)
        free(req);
    if (rc < 0) {
        snprintf(err, errlen, "HTTP %s %s on %s:%s: %s", method, target, host, port,
                 rc == -ETIMEDOUT ? "timed out" : strerror(-rc));
        return rc;
    }
    char *sep = strstr(raw, "\r\n\r\n");
    if (strncmp(raw, "HTTP/1.", 7) != 0 || !sep || sscanf(raw + 8, " %d", &out->status) != 1) {
        snprintf(err, errlen, "%s:%s did not answer with HTTP", host, port);
        free(raw);
        return -EPROTO;
    }
    out->raw_ = raw;
    out->body = sep + 4;
    out->body_len = raw_len - (size_t)(out->body - raw);
    return 0;
}

void client_http_reply_free(struct client_http_reply *r)
{
    if (!r)
        return;
    free(r->raw_);
    memset(r, 0, sizeof(*r));
}

/* Percent-encodes everything but RFC 3986 unreserved characters and '/'. */
char *client_http_urlencode(const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    char *out = malloc(strlen(s) * 3 + 1), *o = out;
    if (!out)
        return NULL;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            strchr("-._~/", *p)) {
            *o++ = (char)*p;
        } else {
            *o++ = '%';
            *o++ = hex[*p >> 4];
            *o++ = hex[*p & 15];
        }
    }
    *o = '\0';
    return out;
}
