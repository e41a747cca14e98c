/*
 * l2_redis: the engine behind the `resp` and `valkey` L2 adapters (l2_resp.c,
 * l2_valkey.c parse their JSON into struct l2_redis_config and call
 * l2_redis_create). Internal to src/l2/.
 *
 * Objects are plain Redis strings: key = [<key_prefix>@]<LMCache key string>
 * (l2_key_format), value = the raw chunk bytes. Commands: SET (expects +OK;
 * SET .. EX ttl when ttl_seconds > 0), EXISTS (lookup), GET (a load is good
 * only when the bulk length equals the buffer size), STRLEN + DEL (delete),
 * SCAN MATCH (list keys; every master in cluster mode).
 *
 * Threads: num_workers named threads ("<name>-w<i>"), each owning its own
 * l2_cluster client (one connection per node per worker). A task of n keys
 * is cut into parts of at most L2_REDIS_PART keys, queued, and spread over
 * the workers; each part's commands are pipelined; the task's callback runs
 * on the worker that finishes its last part. Lookups and loads queue ahead
 * of stores, so a backlog of writes never delays a read. The queue is
 * bounded (stores beyond it are refused with -ENOBUFS, i.e. dropped and
 * counted). delete_keys and list_keys run on the caller's thread over an
 * admin client guarded by a mutex.
 *
 * Failure: when every command of a part fails for a connection reason the
 * adapter is marked down (logged once); while down, submits answer
 * -ENOTCONN at once (stores dropped and counted, lookups see L2 empty), and
 * worker 0 probes the server(s) with backoff (100 ms doubling to 5 s); the
 * first answer marks it up again (logged once, with the number of stores
 * dropped meanwhile). Timeouts bound every network wait.
 *
 * Left out: TLS (Debian's hiredis 0.14 has no TLS: tls_enable=true is
 * refused at create), replicas, RESP3, server-side capacity (Redis's own
 * maxmemory policy can evict behind lmcd's back; lmcd's usage is what it
 * stored, less what it deleted).
 */
#ifndef LMCD_L2_REDIS_H
#define LMCD_L2_REDIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "l2/l2.h"

#define L2_REDIS_PART 16        /* keys per queued part */
#define L2_REDIS_MAX_WORKERS 64
#define L2_REDIS_MAX_QUEUED 4096 /* parts queued at once */

struct l2_redis_config {
    const char *nodes;      /* "host:port[,...]" (copied) */
    bool cluster;
    const char *username;   /* "" = none (copied) */
    const char *password;   /* "" = none (copied) */
    const char *key_prefix; /* "" = none; else keys are "<prefix>@<key>" (copied) */
    int database_id;
    int num_workers;
    uint32_t connect_timeout_ms;
    uint32_t request_timeout_ms;
    uint64_t capacity_bytes; /* 0 = unbounded */
    uint64_t ttl_seconds;    /* 0 = no expiry */
};

/* Creates the adapter (struct l2_adapter first) and starts its workers;
 * connects nothing yet. 0 or -errno with a reason in err. */
int l2_redis_create(const struct l2_redis_config *cfg, const struct l2_ops *ops, const struct l2_create_ctx *ctx,
                    struct l2_adapter **out, char *err, size_t errlen);

/* The ops every Redis-family backend shares (their own struct fills type
 * and create, the rest point here). */
void l2_redis_destroy(struct l2_adapter *a);
int l2_redis_submit_store(struct l2_adapter *a, uint64_t task, const struct l2_key *keys, const struct iovec *objs,
                          size_t n, const struct l2_cb *cb);
int l2_redis_submit_lookup(struct l2_adapter *a, uint64_t task, const struct l2_key *keys, size_t n,
                           const struct l2_cb *cb);
void l2_redis_unlock(struct l2_adapter *a, const struct l2_key *keys, size_t n);
int l2_redis_submit_load(struct l2_adapter *a, uint64_t task, const struct l2_key *keys, const struct iovec *bufs,
                         size_t n, const struct l2_cb *cb);
int l2_redis_delete_keys(struct l2_adapter *a, const struct l2_key *keys, size_t n);
int l2_redis_list_keys(struct l2_adapter *a, const char *model, size_t page_size, const char *cursor,
                       struct l2_key_page *out);
json_t *l2_redis_status(struct l2_adapter *a);

#define L2_REDIS_OPS(name, create_fn)                                                                            \
    {                                                                                                            \
        .type = name, .create = create_fn, .destroy = l2_redis_destroy, .submit_store = l2_redis_submit_store, \
        .submit_lookup = l2_redis_submit_lookup, .unlock = l2_redis_unlock,                                     \
        .submit_load = l2_redis_submit_load, .delete_keys = l2_redis_delete_keys,                               \
        .list_keys = l2_redis_list_keys, .status = l2_redis_status,                                             \
    }

/* JSON helpers shared by l2_resp.c and l2_valkey.c: each returns 0 (value
 * absent: *out untouched) or -EINVAL with a reason in err. */
int l2_redis_json_str(const json_t *cfg, const char *field, const char **out, char *err, size_t errlen);
int l2_redis_json_int(const json_t *cfg, const char *field, long long lo, long long hi, long long *out, char *err,
                      size_t errlen);
int l2_redis_json_num(const json_t *cfg, const char *field, double lo, double hi, double *out, char *err,
                      size_t errlen);
int l2_redis_json_bool(const json_t *cfg, const char *field, bool *out, char *err, size_t errlen);

#endif
