/*
 * l2_cluster: CRC16 and slots against values read from a real Redis 7
 * (CLUSTER KEYSLOT), node lists, and routing against real redis-server
 * processes: a standalone one (AUTH, SELECT, a silent peer), and a cluster
 * of 3 masters formed by the test, with a slot migrated (ASK) and then
 * reassigned (MOVED), and a master killed and restarted.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "l2/l2_cluster.h"
#include "redis_helper.h"
#include "util/clock.h"
#include "util/log.h"

Test(l2_cluster, crc16_matches_redis)
{
    /* The XMODEM check value, and Redis's own test vector. */
    cr_assert_eq(l2_cluster_crc16("123456789", 9), 0x31C3);
    cr_assert_eq(l2_cluster_crc16("", 0), 0);
}

Test(l2_cluster, key_slots_match_cluster_keyslot)
{
    /* Each value read from redis-server 7.0.15 CLUSTER KEYSLOT. */
    static const struct {
        const char *k;
        unsigned slot;
    } v[] = {
        { "123456789", 12739 },
        { "foo", 12182 },
        { "bar", 5061 },
        { "hello", 866 },
        { "{user1000}.following", 3443 },
        { "foo{}{bar}", 8363 },    /* empty tag: whole key */
        { "foo{{bar}}zap", 4015 }, /* tag "{bar" */
        { "foo{bar}{zap}", 5061 }, /* first tag only: "bar" */
        { "{a", 10276 },           /* no closing brace: whole key */
        { "Qwen/Qwen3-8B@00000000@0@abcdef", 10496 },
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
        cr_assert_eq(l2_cluster_key_slot(v[i].k, strlen(v[i].k)), v[i].slot, "%s", v[i].k);
}

Test(l2_cluster, parses_node_lists)
{
    char hosts[4][256];
    int ports[4];
    cr_assert_eq(l2_cluster_parse_nodes("a:1, 127.0.0.1:6379 ,[::1]:7000", hosts, ports, 4), 3);
    cr_assert_str_eq(hosts[0], "a");
    cr_assert_eq(ports[0], 1);
    cr_assert_str_eq(hosts[1], "127.0.0.1");
    cr_assert_eq(ports[1], 6379);
    cr_assert_str_eq(hosts[2], "::1");
    cr_assert_eq(ports[2], 7000);
    cr_assert_eq(l2_cluster_parse_nodes("", hosts, ports, 4), -EINVAL);
    cr_assert_eq(l2_cluster_parse_nodes("host", hosts, ports, 4), -EINVAL);
    cr_assert_eq(l2_cluster_parse_nodes("h:0", hosts, ports, 4), -EINVAL);
    cr_assert_eq(l2_cluster_parse_nodes("h:70000", hosts, ports, 4), -EINVAL);
    cr_assert_eq(l2_cluster_parse_nodes("h:1,", hosts, ports, 4), -EINVAL);
    cr_assert_eq(l2_cluster_parse_nodes("a:1,b:2,c:3", hosts, ports, 2), -EINVAL);
}

Test(l2_cluster, refuses_database_with_cluster)
{
    struct l2_cluster *c = NULL;
    struct l2_cluster_config cfg = { .nodes = "127.0.0.1:1", .cluster = true, .database_id = 2 };
    cr_assert_eq(l2_cluster_new(&cfg, &c), -EINVAL);
    cfg.cluster = false;
    cfg.nodes = "127.0.0.1:1,127.0.0.1:2"; /* standalone takes one server */
    cfg.database_id = 0;
    cr_assert_eq(l2_cluster_new(&cfg, &c), -EINVAL);
}

/* ---- against real servers ------------------------------------------- */

static struct rh rh;

static void live_init(void)
{
    log_set_level(LOG_CRITICAL);
    if (!rh_available())
        cr_skip_test("redis-server not installed (/usr/bin/redis-server)");
}
static void live_fini(void) { rh_stop(&rh); }

/* SET and GET one key through c; returns the GET reply's err or 0 on a
 * matching value. */
static int set_get(struct l2_cluster *c, const char *key, const char *val)
{
    const char *sargv[] = { "SET", key, val };
    size_t slen[] = { 3, strlen(key), strlen(val) };
    const char *gargv[] = { "GET", key };
    size_t glen[] = { 3, strlen(key) };
    struct l2_cluster_cmd cmd[2] = {
        { .key = key, .keylen = strlen(key), .argc = 3, .argv = sargv, .argvlen = slen },
        { .key = key, .keylen = strlen(key), .argc = 2, .argv = gargv, .argvlen = glen },
    };
    l2_cluster_exec(c, cmd, 2);
    int rc = 0;
    if (cmd[0].err || cmd[1].err)
        rc = cmd[0].err ? cmd[0].err : cmd[1].err;
    else if (cmd[0].reply->type != REDIS_REPLY_STATUS || cmd[1].reply->type != REDIS_REPLY_STRING ||
             cmd[1].reply->len != strlen(val) || memcmp(cmd[1].reply->str, val, strlen(val)))
        rc = -EBADMSG;
    for (int i = 0; i < 2; i++)
        if (cmd[i].reply)
            freeReplyObject(cmd[i].reply);
    return rc;
}

static struct l2_cluster *cluster_client(const char *seeds, bool cluster)
{
    struct l2_cluster *c = NULL;
    struct l2_cluster_config cfg = { .nodes = seeds, .cluster = cluster, .connect_timeout_ms = 2000,
                                     .request_timeout_ms = 2000 };
    cr_assert_eq(l2_cluster_new(&cfg, &c), 0);
    return c;
}

static long long dbsize(int port)
{
    redisReply *r = rh_cmd(port, "DBSIZE");
    cr_assert(r && r->type == REDIS_REPLY_INTEGER);
    long long n = r->integer;
    freeReplyObject(r);
    return n;
}

TestSuite(l2_cluster_live, .init = live_init, .fini = live_fini, .timeout = 120);

Test(l2_cluster_live, pipelined_batch_spreads_over_three_masters)
{
    rh_start(&rh, 3, true);
    char seeds[64];
    snprintf(seeds, sizeof(seeds), "127.0.0.1:%d", rh.s[1].port); /* one seed is enough */
    struct l2_cluster *c = cluster_client(seeds, true);
    enum { N = 300 };
    static char keys[N][96], vals[N][48];
    static const char *argv[N][3];
    static size_t lens[N][3];
    struct l2_cluster_cmd cmd[N];
    memset(cmd, 0, sizeof(cmd));
    for (int i = 0; i < N; i++) {
        snprintf(keys[i], 96, "m@00000000@0@%064x", i);
        snprintf(vals[i], 48, "value-%d", i * 7);
        argv[i][0] = "SET", argv[i][1] = keys[i], argv[i][2] = vals[i];
        lens[i][0] = 3, lens[i][1] = strlen(keys[i]), lens[i][2] = strlen(vals[i]);
        cmd[i] = (struct l2_cluster_cmd){ .key = keys[i], .keylen = lens[i][1], .argc = 3,
                                          .argv = argv[i], .argvlen = lens[i] };
    }
    cr_assert_eq(l2_cluster_exec(c, cmd, N), N);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(cmd[i].reply->type, REDIS_REPLY_STATUS, "SET %d: %s", i,
                     cmd[i].reply->type == REDIS_REPLY_ERROR ? cmd[i].reply->str : "not a status");
        freeReplyObject(cmd[i].reply);
        argv[i][0] = "GET";
        lens[i][0] = 3;
        cmd[i].argc = 2;
    }
    cr_assert_eq(l2_cluster_exec(c, cmd, N), N);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(cmd[i].reply->type, REDIS_REPLY_STRING);
        cr_assert_str_eq(cmd[i].reply->str, vals[i]);
        freeReplyObject(cmd[i].reply);
    }
    long long total = 0;
    for (int i = 0; i < 3; i++) {
        long long n = dbsize(rh.s[i].port);
        cr_assert_gt(n, 50, "server %d holds %lld keys: slots not spread", i, n);
        total += n;
    }
    cr_assert_eq(total, N);
    /* The map came from CLUSTER SLOTS, not from redirects alone. */
    unsigned slot = l2_cluster_key_slot("foo", 3);
    char want[32];
    snprintf(want, sizeof(want), "127.0.0.1:%d", rh.s[rh_slot_server(&rh, slot)].port);
    cr_assert_str_eq(l2_cluster_slot_owner(c, slot), want);
    l2_cluster_free(c);
}

Test(l2_cluster_live, follows_ask_during_migration_and_moved_after)
{
    rh_start(&rh, 3, true);
    char seeds[96];
    snprintf(seeds, sizeof(seeds), "127.0.0.1:%d,127.0.0.1:%d", rh.s[0].port, rh.s[2].port);
    struct l2_cluster *c = cluster_client(seeds, true);
    unsigned slot = l2_cluster_key_slot("foo", 3);
    int from = rh_slot_server(&rh, slot), to = (from + 1) % 3;
    cr_assert_eq(set_get(c, "foo", "v1"), 0);
    uint64_t moved, ask;
    l2_cluster_redirects(c, &moved, &ask);
    cr_assert_eq(moved + ask, 0, "the map routed foo directly");

    /* Migrate the slot: foo moves to `to` while the slot is MIGRATING. */
    redisReply *r;
    r = rh_cmd(rh.s[to].port, "CLUSTER SETSLOT %u IMPORTING %s", slot, rh.s[from].id);
    cr_assert(r && r->type == REDIS_REPLY_STATUS);
    freeReplyObject(r);
    r = rh_cmd(rh.s[from].port, "CLUSTER SETSLOT %u MIGRATING %s", slot, rh.s[to].id);
    cr_assert(r && r->type == REDIS_REPLY_STATUS);
    freeReplyObject(r);
    r = rh_cmd(rh.s[from].port, "MIGRATE 127.0.0.1 %d foo 0 5000", rh.s[to].port);
    cr_assert(r && r->type == REDIS_REPLY_STATUS, "MIGRATE: %s", r ? r->str : "no reply");
    freeReplyObject(r);

    const char *gargv[] = { "GET", "foo" };
    size_t glen[] = { 3, 3 };
    struct l2_cluster_cmd g = { .key = "foo", .keylen = 3, .argc = 2, .argv = gargv, .argvlen = glen };
    cr_assert_eq(l2_cluster_exec(c, &g, 1), 1);
    cr_assert_eq(g.reply->type, REDIS_REPLY_STRING, "GET during migration: %s", g.reply->str);
    cr_assert_str_eq(g.reply->str, "v1");
    freeReplyObject(g.reply);
    l2_cluster_redirects(c, &moved, &ask);
    cr_assert_geq(ask, 1, "the source answered ASK");
    cr_assert_eq(moved, 0);
    char want_from[32], want_to[32];
    snprintf(want_from, sizeof(want_from), "127.0.0.1:%d", rh.s[from].port);
    snprintf(want_to, sizeof(want_to), "127.0.0.1:%d", rh.s[to].port);
    cr_assert_str_eq(l2_cluster_slot_owner(c, slot), want_from, "ASK leaves the map alone");

    /* Finish: the slot belongs to `to` everywhere; the client still maps it
     * to `from` and must follow MOVED. */
    for (int i = 0; i < 3; i++) {
        r = rh_cmd(rh.s[i].port, "CLUSTER SETSLOT %u NODE %s", slot, rh.s[to].id);
        cr_assert(r && r->type == REDIS_REPLY_STATUS, "SETSLOT NODE on %d: %s", i, r ? r->str : "");
        freeReplyObject(r);
    }
    /* SETSLOT NODE reaches each node at once, but a node may still take an
     * older owner from gossip for a moment on a loaded machine: wait (bounded)
     * until every node routes foo to `to`, so the client meets one MOVED. */
    char moved_to[64];
    snprintf(moved_to, sizeof(moved_to), " 127.0.0.1:%d", rh.s[to].port);
    for (int tries = 0, agreed = 0; !agreed; tries++) {
        cr_assert_lt(tries, 500, "the cluster never agreed that slot %u belongs to node %d", slot, to);
        agreed = 1;
        for (int i = 0; i < 3 && agreed; i++) {
            r = rh_cmd(rh.s[i].port, "GET foo");
            agreed = r && (i == to ? r->type == REDIS_REPLY_STRING
                                   : r->type == REDIS_REPLY_ERROR && strstr(r->str, "MOVED") &&
                                         strstr(r->str, moved_to));
            if (r)
                freeReplyObject(r);
        }
        if (!agreed)
            usleep(20 * 1000);
    }
    cr_assert_eq(set_get(c, "foo", "v2"), 0);
    l2_cluster_redirects(c, &moved, &ask);
    cr_assert_geq(moved, 1, "the old owner answered MOVED");
    cr_assert_str_eq(l2_cluster_slot_owner(c, slot), want_to, "MOVED updated the slot");
    r = rh_cmd(rh.s[to].port, "DBSIZE");
    cr_assert_eq(r->integer, dbsize(rh.s[to].port));
    freeReplyObject(r);
    l2_cluster_free(c);
}

Test(l2_cluster_live, dead_master_fails_fast_and_recovers)
{
    rh_start(&rh, 3, true);
    char seeds[64];
    snprintf(seeds, sizeof(seeds), "127.0.0.1:%d", rh.s[0].port);
    struct l2_cluster_health health;
    l2_cluster_health_init(&health, "test");
    struct l2_cluster *c = NULL;
    struct l2_cluster_config cfg = { .nodes = seeds, .cluster = true, .connect_timeout_ms = 1000,
                                     .request_timeout_ms = 1000, .health = &health };
    cr_assert_eq(l2_cluster_new(&cfg, &c), 0);
    /* One key per master. */
    const char *k[3] = { NULL, NULL, NULL };
    static char names[3][32];
    for (int i = 0, found = 0; found < 3; i++) {
        char name[32];
        snprintf(name, sizeof(name), "key%d", i);
        int s = rh_slot_server(&rh, l2_cluster_key_slot(name, strlen(name)));
        if (!k[s]) {
            memcpy(names[s], name, sizeof(name));
            k[s] = names[s];
            found++;
        }
    }
    for (int i = 0; i < 3; i++)
        cr_assert_eq(set_get(c, k[i], "x"), 0);
    rh_kill(&rh, 1);
    /* Master 1's key fails, the others still work. The first failure is a
     * broken connection that had worked (may reconnect at once, no news);
     * the reconnect is refused: now the node is down and backs off. */
    cr_assert_lt(set_get(c, k[1], "y"), 0);
    cr_assert_eq(l2_cluster_health_down(&health), 0);
    cr_assert_eq(set_get(c, k[1], "y"), -ECONNREFUSED);
    cr_assert_eq(l2_cluster_health_down(&health), 1);
    uint64_t t0 = clock_mono_ms();
    cr_assert_eq(set_get(c, k[1], "y"), -EAGAIN, "in backoff: fails at once, nothing tried");
    cr_assert_lt(clock_mono_ms() - t0, 1000); /* bound for a loaded box; the point is the rc */
    cr_assert_eq(set_get(c, k[0], "y"), 0);
    cr_assert_eq(set_get(c, k[2], "y"), 0);
    /* Restart it on its port with its nodes file: the client reconnects
     * after the backoff (bounded poll). */
    rh_spawn(&rh, 1);
    int rc = -1;
    for (int t = 0; t < 300 && rc; t++) {
        rc = set_get(c, k[1], "z");
        if (rc)
            rh_sleep_ms(50);
    }
    cr_assert_eq(rc, 0, "no recovery after restart");
    cr_assert_eq(l2_cluster_health_down(&health), 0);
    l2_cluster_free(c);
    l2_cluster_health_destroy(&health);
}

Test(l2_cluster_live, standalone_auth_select_and_bad_password)
{
    rh.extra[0] = "--requirepass";
    rh.extra[1] = "s3cret";
    rh.extra[2] = NULL;
    rh_start(&rh, 1, false);
    char node[32];
    snprintf(node, sizeof(node), "127.0.0.1:%d", rh.s[0].port);
    struct l2_cluster *c = NULL;
    struct l2_cluster_config cfg = { .nodes = node, .password = "s3cret", .database_id = 3,
                                     .connect_timeout_ms = 1000, .request_timeout_ms = 1000 };
    cr_assert_eq(l2_cluster_new(&cfg, &c), 0);
    cr_assert_eq(set_get(c, "k", "v"), 0);
    l2_cluster_free(c);
    redisContext *rc = rh_connect(rh.s[0].port);
    redisReply *r = redisCommand(rc, "AUTH s3cret");
    freeReplyObject(r);
    r = redisCommand(rc, "SELECT 3");
    freeReplyObject(r);
    r = redisCommand(rc, "GET k");
    cr_assert(r && r->type == REDIS_REPLY_STRING && !strcmp(r->str, "v"), "value sits in db 3");
    freeReplyObject(r);
    /* ACL user with a password. */
    r = redisCommand(rc, "ACL SETUSER lm on >pw ~* +@all");
    cr_assert(r && r->type == REDIS_REPLY_STATUS);
    freeReplyObject(r);
    redisFree(rc);
    cfg.username = "lm";
    cfg.password = "pw";
    cr_assert_eq(l2_cluster_new(&cfg, &c), 0);
    cr_assert_eq(set_get(c, "k2", "v2"), 0);
    l2_cluster_free(c);
    cfg.password = "wrong";
    cr_assert_eq(l2_cluster_new(&cfg, &c), 0);
    cr_assert_eq(set_get(c, "k3", "v3"), -ECONNREFUSED);
    l2_cluster_free(c);
}

Test(l2_cluster_live, silent_server_times_out_then_backs_off)
{
    /* A listener that never answers: connect succeeds (backlog), every
     * request times out. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t l = sizeof(a);
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    cr_assert_eq(listen(fd, 16), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &l), 0);
    char node[32];
    snprintf(node, sizeof(node), "127.0.0.1:%d", ntohs(a.sin_port));
    struct l2_cluster *c = NULL;
    struct l2_cluster_config cfg = { .nodes = node, .connect_timeout_ms = 2000, .request_timeout_ms = 2000 };
    cr_assert_eq(l2_cluster_new(&cfg, &c), 0);
    uint64_t t0 = clock_mono_ms();
    cr_assert_eq(set_get(c, "k", "v"), -EIO);
    uint64_t took = clock_mono_ms() - t0;
    cr_assert_geq(took, 1900);
    cr_assert_lt(took, 20000);
    t0 = clock_mono_ms();
    cr_assert_eq(set_get(c, "k", "v"), -EAGAIN);
    cr_assert_lt(clock_mono_ms() - t0, 1000, "backoff answers without waiting out the 2 s timeout");
    l2_cluster_free(c);
    close(fd);
}
