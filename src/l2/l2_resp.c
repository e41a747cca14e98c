/*
 * l2_resp: the `resp` adapter (LMCache's native Redis/Valkey connector):
 * one server, raw chunk bytes under LMCache's key strings, SET / GET /
 * EXISTS, AUTH [user] pass per connection, one connection per worker.
 *
 * JSON (LMCache's names and defaults): host, port (both required unless
 * LMCACHE_RESP_HOST / LMCACHE_RESP_PORT are set), num_workers 8, username "",
 * password "" (env fallbacks LMCACHE_RESP_USERNAME / _PASSWORD),
 * max_capacity_gb 0. lmcd adds connection_timeout (10.0 s) and
 * request_timeout (5.0 s), which the C++ connector hard-codes.
 */
#define LOG_MODULE "lmcd.l2"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "l2/l2_redis.h"

static int resp_create(const json_t *cfg, const struct l2_create_ctx *ctx, struct l2_adapter **out, char *err,
                       size_t errlen);

const struct l2_ops l2_resp_ops = L2_REDIS_OPS("resp", resp_create);

/* The JSON value, else the environment's, else def. */
static const char *str_or_env(const json_t *cfg, const char *field, const char *env, const char *def, int *rc,
                              char *err, size_t errlen)
{
    const char *v = NULL;
    if ((*rc = l2_redis_json_str(cfg, field, &v, err, errlen)) < 0)
        return NULL;
    if (!v)
        v = getenv(env);
    return v ? v : def;
}

static int resp_create(const json_t *cfg, const struct l2_create_ctx *ctx, struct l2_adapter **out, char *err,
                       size_t errlen)
{
    int rc = 0;
    const char *host = str_or_env(cfg, "host", "LMCACHE_RESP_HOST", NULL, &rc, err, errlen);
    if (rc < 0)
        return rc;
    const char *user = str_or_env(cfg, "username", "LMCACHE_RESP_USERNAME", "", &rc, err, errlen);
    if (rc < 0)
        return rc;
    const char *pass = str_or_env(cfg, "password", "LMCACHE_RESP_PASSWORD", "", &rc, err, errlen);
    if (rc < 0)
        return rc;
    long long port = -1, workers = 8;
    double cap_gb = 0, cto = 10.0, rto = 5.0;
    if (json_object_get(cfg, "port")) {
        if ((rc = l2_redis_json_int(cfg, "port", 1, 65535, &port, err, errlen)) < 0)
            return rc;
    } else if (getenv("LMCACHE_RESP_PORT")) {
        char *end;
        port = strtoll(getenv("LMCACHE_RESP_PORT"), &end, 10);
        if (*end || port < 1 || port > 65535) {
            snprintf(err, errlen, "LMCACHE_RESP_PORT must be a port number in [1, 65535]");
            return -EINVAL;
        }
    }
    if (!host || !*host) {
        snprintf(err, errlen, "resp adapter requires 'host' (or LMCACHE_RESP_HOST)");
        return -EINVAL;
    }
    if (port < 0) {
        snprintf(err, errlen, "resp adapter requires 'port' (or LMCACHE_RESP_PORT)");
        return -EINVAL;
    }
    if ((rc = l2_redis_json_int(cfg, "num_workers", 1, L2_REDIS_MAX_WORKERS, &workers, err, errlen)) < 0 ||
        (rc = l2_redis_json_num(cfg, "max_capacity_gb", 0, 1e6, &cap_gb, err, errlen)) < 0 ||
        (rc = l2_redis_json_num(cfg, "connection_timeout", 0.001, 3600, &cto, err, errlen)) < 0 ||
        (rc = l2_redis_json_num(cfg, "request_timeout", 0.001, 3600, &rto, err, errlen)) < 0)
        return rc;
    if (strlen(host) > 250) {
        snprintf(err, errlen, "'host' is too long");
        return -EINVAL;
    }
    char node[280];
    snprintf(node, sizeof(node), strchr(host, ':') ? "[%s]:%lld" : "%s:%lld", host, port);
    struct l2_redis_config rc_cfg = {
        .nodes = node,
        .cluster = false,
        .username = user,
        .password = pass,
        .key_prefix = "",
        .num_workers = (int)workers,
        .connect_timeout_ms = (uint32_t)(cto * 1000),
        .request_timeout_ms = (uint32_t)(rto * 1000),
        .capacity_bytes = (uint64_t)(cap_gb * (double)(1ull << 30)),
    };
    return l2_redis_create(&rc_cfg, &l2_resp_ops, ctx, out, err, errlen);
}
