/*
 * l2_cluster: lmcd's own small Redis / Valkey client layer on hiredis 0.14,
 * for one server (standalone) or a Redis Cluster. Debian's hiredis has no
 * cluster client, so the routing lives here:
 *
 *   - key slots: CRC16 (XMODEM, as Redis) of the key, or of its hashtag
 *     ({...}: the bytes between the first '{' and the next '}', when that
 *     span is not empty), modulo 16384;
 *   - a slot map (slot -> master) read with CLUSTER SLOTS from any node,
 *     refreshed after a MOVED or a lost connection (at most every 200 ms);
 *   - MOVED updates the slot and re-sends to the named node; ASK sends
 *     ASKING then the command to the named node once, map untouched;
 *     at most L2_CLUSTER_MAX_REDIRECTS hops per command;
 *   - one connection per node, opened lazily, AUTH [user] pass and (standalone)
 *     SELECT db on each new connection, connect and request timeouts;
 *   - a node that fails (refused, reset, timed out, bad AUTH) is closed and
 *     left alone for a backoff (100 ms doubling to 5 s); commands for it fail
 *     at once with -EAGAIN meanwhile, so a dead server costs a caller one
 *     timeout at most, then nothing. The first break of a connection that
 *     had answered is not a node failure (a restarted server leaves idle
 *     connections dead): it may reconnect at once and is not logged.
 *
 * Commands are run in batches: per node they are pipelined (a window of
 * bytes and count), so a batch of N commands costs about one round trip
 * per node, not N.
 *
 * Ownership and threads: a struct l2_cluster is NOT thread-safe; each worker
 * thread owns one (so one connection per node per worker). Replies handed
 * back belong to the caller (freeReplyObject). The optional struct
 * l2_cluster_health is shared by every worker of one adapter and is
 * thread-safe: it logs each node's up/down change once, whichever worker
 * sees it first, and counts the nodes down.
 *
 * Left out: replicas (reads go to masters), TLS (hiredis 0.14 has none),
 * pub/sub, multi-key commands across slots, RESP3.
 */
#ifndef LMCD_L2_CLUSTER_H
#define LMCD_L2_CLUSTER_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#define L2_CLUSTER_SLOTS 16384
#define L2_CLUSTER_MAX_REDIRECTS 5
#define L2_CLUSTER_MAX_NODES 256

/* CRC16-XMODEM (poly 0x1021, init 0), the checksum Redis Cluster uses. */
uint16_t l2_cluster_crc16(const void *buf, size_t len);
/* The slot of a key, hashtag rules included. */
unsigned l2_cluster_key_slot(const void *key, size_t len);

/* Parses "host:port[,host:port...]" (spaces around entries ignored;
 * "[v6addr]:port" accepted). Fills at most max entries; hosts are copied into
 * hosts[i] (size 256). Returns the count, or -EINVAL on a malformed entry or
 * none at all. */
int l2_cluster_parse_nodes(const char *list, char (*hosts)[256], int *ports, int max);

/* Shared per adapter, thread-safe: node up/down bookkeeping for logs and
 * status. Zero-initialise, then l2_cluster_health_init(). */
struct l2_cluster_health {
    pthread_mutex_t lock;
    const char *name; /* adapter name for log lines, e.g. "resp" */
    int n;            /* guarded by lock */
    struct {
        char addr[272];
        bool down;
    } nodes[L2_CLUSTER_MAX_NODES]; /* guarded by lock */
    int n_down;                    /* guarded by lock */
};
void l2_cluster_health_init(struct l2_cluster_health *h, const char *name);
void l2_cluster_health_destroy(struct l2_cluster_health *h);
/* Number of nodes last seen down (any worker). */
int l2_cluster_health_down(struct l2_cluster_health *h);

struct l2_cluster_config {
    const char *nodes;    /* "host:port[,...]": the one server, or cluster seeds */
    bool cluster;         /* route by slot and follow MOVED/ASK */
    const char *username; /* NULL or "" = AUTH pass only */
    const char *password; /* NULL or "" = no AUTH */
    int database_id;      /* SELECT on connect when > 0 (standalone only) */
    uint32_t connect_timeout_ms;
    uint32_t request_timeout_ms;
    struct l2_cluster_health *health; /* optional, shared */
};

struct l2_cluster;

/* Checks the config and allocates; connects nothing (the first command
 * does), so a server that is down does not block start-up. 0 or -EINVAL
 * (bad node list, database_id with cluster) / -ENOMEM. */
int l2_cluster_new(const struct l2_cluster_config *cfg, struct l2_cluster **out);
void l2_cluster_free(struct l2_cluster *c);

/* One command of a batch. argv[0] is the command name; key/keylen is the
 * routing key (usually argv[1]). Output: reply (the server's reply, possibly
 * an error reply other than MOVED/ASK; caller frees) or err (-ECONNREFUSED
 * connecting failed now, -EAGAIN node in backoff after an earlier failure
 * (not tried), -EIO connection lost or timed out mid-command,
 * -ELOOP too many redirects, -ENOMEM). */
struct l2_cluster_cmd {
    const char *key;
    size_t keylen;
    int argc;
    const char **argv;
    const size_t *argvlen;
    redisReply *reply;
    int err;
};

/* Runs every command of the batch (pipelined per node, redirects followed).
 * Each command ends with reply != NULL or err < 0. Returns the number of
 * commands that got a reply. */
size_t l2_cluster_exec(struct l2_cluster *c, struct l2_cluster_cmd *cmds, size_t n);

/* Re-reads the slot map now (cluster mode). 0 or -errno. */
int l2_cluster_refresh(struct l2_cluster *c);
/* The master currently mapped for slot, as "host:port", or NULL. */
const char *l2_cluster_slot_owner(struct l2_cluster *c, unsigned slot);
/* Redirects followed since creation (MOVED, ASK), for tests and status. */
void l2_cluster_redirects(const struct l2_cluster *c, uint64_t *moved, uint64_t *ask);

#endif
