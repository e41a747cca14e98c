/*
 * client_http: one HTTP/1.0 request over a plain TCP socket, with one
 * deadline for connect, send and receive. lmcd-cli uses it for GET /status;
 * it needs no HTTP library and reads the whole reply (to EOF, bounded by
 * CLIENT_HTTP_MAX_REPLY) into memory.
 *
 * Ownership: the reply's buffer belongs to the caller until
 * client_http_reply_free(). Threads: no state; any thread.
 * Left out: TLS, keep-alive, chunked transfer decoding (lmcd answers
 * HTTP/1.0 requests with a plain body), request bodies.
 */
#ifndef LMCD_CLIENT_CLIENT_HTTP_H
#define LMCD_CLIENT_CLIENT_HTTP_H

#include <stddef.h>

#define CLIENT_HTTP_MAX_REPLY (16u << 20)

struct client_http_reply {
    int status;       /* e.g. 200 */
    const char *body; /* NUL-terminated, into raw_ */
    size_t body_len;
    char *raw_;       /* private: the whole reply */
};

/* Sends `METHOD target` to host:port and reads the reply. 0 with *out
 * filled (any status), or -errno (-ETIMEDOUT when the deadline passed,
 * -EPROTO for a reply that is not HTTP) with a one-line reason in err. */
int client_http_request(const char *host, const char *port, const char *method,
                        const char *target, int timeout_ms, struct client_http_reply *out,
                        char *err, size_t errlen);
void client_http_reply_free(struct client_http_reply *r);
/* Percent-encodes all but RFC 3986 unreserved characters and '/'; malloc'd
 * (NULL on ENOMEM). For query values. */
char *client_http_urlencode(const char *s);

#endif
