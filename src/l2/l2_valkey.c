/*
 * l2_valkey: the `valkey` adapter (LMCache's valkey_l2_adapter, which uses
 * valkey-glide): standalone or Redis/Valkey Cluster, routed by lmcd's own
 * l2_cluster module since Debian's hiredis 0.14 has no cluster client.
 *
 * JSON (LMCache's names and defaults): startup_nodes "host:port[,...]"
 * (required), cluster_mode false, username "", password "", key_prefix ""
 * (keys become "<prefix>@<key>"), num_workers 8, tls_enable false,
 * database_id 0 (standalone only), request_timeout 5.0 s,
 * connection_timeout 10.0 s, max_capacity_gb 0, ttl_seconds (none).
 * Keys carry no hashtag, so they spread over all 16384 slots.
 *
 * tls_enable=true is refused: Debian's libhiredis 0.14 has no TLS support
 * (hiredis_ssl arrived in 1.0), and lmcd will not send a password or
 * cache contents in clear while claiming TLS. Standalone with several
 * startup_nodes uses the first (glide treats the others as replicas; lmcd
 * reads and writes the primary only) and says so at start.
 */
#define LOG_MODULE "lmcd.l2"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "l2/l2_redis.h"
#include "util/log.h"

static int valkey_create(const json_t *cfg, const struct l2_create_ctx *ctx, struct l2_adapter **out, char *err,
                         size_t errlen);

const struct l2_ops l2_valkey_ops = L2_REDIS_OPS("valkey", valkey_create);

static int valkey_create(const json_t *cfg, const struct l2_create_ctx *ctx, struct l2_adapter **out, char *err,
                         size_t errlen)
{
    int rc;
    const char *nodes = NULL, *user = "", *pass = "", *prefix = "";
    bool cluster = false, tls = false;
    long long workers = 8, db = 0, ttl = 0;
    double rto = 5.0, cto = 10.0, cap_gb = 0;
    if ((rc = l2_redis_json_str(cfg, "startup_nodes", &nodes, err, errlen)) < 0 ||
        (rc = l2_redis_json_bool(cfg, "cluster_mode", &cluster, err, errlen)) < 0 ||
        (rc = l2_redis_json_str(cfg, "username", &user, err, errlen)) < 0 ||
        (rc = l2_redis_json_str(cfg, "password", &pass, err, errlen)) < 0 ||
        (rc = l2_redis_json_str(cfg, "key_prefix", &prefix, err, errlen)) < 0 ||
        (rc = l2_redis_json_int(cfg, "num_workers", 1, L2_REDIS_MAX_WORKERS, &workers, err, errlen)) < 0 ||
        (rc = l2_redis_json_bool(cfg, "tls_enable", &tls, err, errlen)) < 0 ||
        (rc = l2_redis_json_int(cfg, "database_id", 0, 1 << 20, &db, err, errlen)) < 0 ||
        (rc = l2_redis_json_num(cfg, "request_timeout", 0.001, 3600, &rto, err, errlen)) < 0 ||
        (rc = l2_redis_json_num(cfg, "connection_timeout", 0.001, 3600, &cto, err, errlen)) < 0 ||
        (rc = l2_redis_json_num(cfg, "max_capacity_gb", 0, 1e6, &cap_gb, err, errlen)) < 0 ||
        (rc = l2_redis_json_int(cfg, "ttl_seconds", 1, (long long)1 << 40, &ttl, err, errlen)) < 0)
        return rc;
    if (!nodes || !*nodes) {
        snprintf(err, errlen, "valkey adapter requires 'startup_nodes' (\"host:port[,host:port...]\")");
        return -EINVAL;
    }
    if (tls) {
        snprintf(err, errlen, "valkey adapter: tls_enable=true is not supported: this lmcd uses Debian's hiredis "
                              "0.14, which has no TLS (put a TLS proxy such as stunnel in front, or set "
                              "tls_enable=false on a trusted network)");
        return -ENOTSUP;
    }
    if (cluster && db > 0) {
        snprintf(err, errlen, "valkey adapter: database_id must be 0 with cluster_mode (a cluster serves database 0 only)");
        return -EINVAL;
    }
    if (strchr(prefix, '@')) {
        snprintf(err, errlen, "valkey adapter: key_prefix must not contain '@'");
        return -EINVAL;
    }
    char first[300];
    const char *use = nodes;
    if (!cluster && strchr(nodes, ',')) {
        size_t l = (size_t)(strchr(nodes, ',') - nodes);
        if (l >= sizeof(first)) {
            snprintf(err, errlen, "valkey adapter: bad startup_nodes '%s'", nodes);
            return -EINVAL;
        }
        memcpy(first, nodes, l);
        first[l] = '\0';
        use = first;
        log_warn("L2 %s: standalone mode uses the first of startup_nodes (%s); the others are not used", ctx->name,
                 first);
    }
    struct l2_redis_config rcfg = {
        .nodes = use,
        .cluster = cluster,
        .username = user,
        .password = pass,
        .key_prefix = prefix,
        .database_id = (int)db,
        .num_workers = (int)workers,
        .connect_timeout_ms = (uint32_t)(cto * 1000),
        .request_timeout_ms = (uint32_t)(rto * 1000),
        .capacity_bytes = (uint64_t)(cap_gb * (double)(1ull << 30)),
        .ttl_seconds = (uint64_t)ttl,
    };
    return l2_redis_create(&rcfg, &l2_valkey_ops, ctx, out, err, errlen);
}
