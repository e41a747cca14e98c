/* access.c: the ZeroMQ endpoint's boundaries (see access.h). */
#define LOG_MODULE "lmcd.server"
#include "server/access.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server/dispatch.h"
#include "util/log.h"
#include "util/netaddr.h"

#define MONITOR_EP "inproc://lmcd-access-monitor"

static struct log_ratelimit refused_rl = LOG_RATELIMIT_INIT(60000, 3);
static struct log_ratelimit accept_rl = LOG_RATELIMIT_INIT(60000, 3);
static struct log_ratelimit inline_rl = LOG_RATELIMIT_INIT(60000, 1);

static bool filtered(const struct server *s) { return s->cfg->access.n_uids || s->cfg->access.n_gids; }

int srv_access_prepare(struct server *s)
{
    const struct cfg_access *a = &s->cfg->access;
    if (filtered(s)) {
        /* Any allowed uid or gid admits a peer; lmcd's own user always may. */
        int self = (int)geteuid();
        if (zmq_setsockopt(s->router, ZMQ_IPC_FILTER_UID, &self, sizeof(self)) < 0) {
            log_error("this libzmq cannot filter ipc peers by credentials (ZMQ_IPC_FILTER_UID: %s): refusing to "
                      "start with --allowed-uids/--allowed-gids",
                      zmq_strerror(zmq_errno()));
            return -ENOTSUP;
        }
        for (size_t i = 0; i < a->n_uids; i++) {
            int v = (int)a->uids[i];
            if (zmq_setsockopt(s->router, ZMQ_IPC_FILTER_UID, &v, sizeof(v)) < 0)
                return -EINVAL;
        }
        for (size_t i = 0; i < a->n_gids; i++) {
            int v = (int)a->gids[i];
            if (zmq_setsockopt(s->router, ZMQ_IPC_FILTER_GID, &v, sizeof(v)) < 0)
                return -EINVAL;
        }
    }
    if (zmq_socket_monitor(s->router, MONITOR_EP, ZMQ_EVENT_ACCEPT_FAILED) < 0) {
        log_warn("cannot monitor the ROUTER (%s): refused peers will not be counted", zmq_strerror(zmq_errno()));
        return 0;
    }
    s->monitor = zmq_socket(s->zctx, ZMQ_PAIR);
    if (!s->monitor || zmq_connect(s->monitor, MONITOR_EP) < 0) {
        log_warn("cannot connect the ROUTER monitor: refused peers will not be counted");
        if (s->monitor)
            zmq_close(s->monitor);
        s->monitor = NULL;
    }
    return 0;
}

int srv_access_bind_ipc(struct server *s, const char *ep)
{
    const struct cfg_access *a = &s->cfg->access;
    const char *group = s->cfg->mp.shm_group;
    unsigned gid = 0;
    size_t n = 0;
    const char *bad;
    if (*group && netaddr_parse_ids(group, true, &gid, 1, &n, &bad)) {
        log_error("cannot resolve --shm-group '%s' for the ipc socket", group);
        return -EINVAL;
    }
    /* The file is created 0600 whatever the umask (no window in which
     * another user could connect); it is widened only afterwards. Nothing
     * else creates files while the loop binds: plugins and HTTP start later. */
    mode_t old = umask(0177);
    int rc = zmq_bind(s->router, ep);
    int e = zmq_errno();
    umask(old);
    if (rc < 0) {
        log_error("cannot bind the ZeroMQ ROUTER to %s: %s", ep, zmq_strerror(e));
        return -e;
    }
    char last[320];
    size_t len = sizeof(last);
    if (zmq_getsockopt(s->router, ZMQ_LAST_ENDPOINT, last, &len) < 0 || strncmp(last, "ipc://", 6)) {
        log_error("cannot find the ipc socket path bound for %s", ep);
        return -EIO;
    }
    const char *path = last + 6;
    if (path[0] == '@') { /* Linux abstract namespace: no file, no mode */
        if (!filtered(s))
            log_warn("WARNING: %s is an abstract socket: it has no file mode, so every local user can connect; "
                     "add --allowed-uids/--allowed-gids or use a path",
                     last);
        return 0;
    }
    if (*group && chown(path, (uid_t)-1, (gid_t)gid) < 0) {
        log_error("cannot give %s to group %s: %s", path, group, strerror(errno));
        return -errno;
    }
    if (chmod(path, (mode_t)a->ipc_mode_bits) < 0) {
        log_error("cannot set mode %04o on %s: %s", a->ipc_mode_bits, path, strerror(errno));
        return -errno;
    }
    log_info("ipc socket %s: mode %04o%s%s%s", path, a->ipc_mode_bits, *group ? ", group " : "", group,
             filtered(s) ? ", peers checked against --allowed-uids/--allowed-gids" : "");
    return 0;
}

void srv_access_check_bound(struct server *s)
{
    const char *ep = s->endpoint;
    if (strncmp(ep, "tcp://", 6))
        return;
    /* tcp://HOST:PORT or tcp://[V6]:PORT */
    char host[300];
    snprintf(host, sizeof(host), "%s", ep + 6);
    char *colon = strrchr(host, ':');
    if (colon)
        *colon = 0;
    if (netaddr_host_is_loopback(host) == 1) {
        log_info("ZeroMQ on loopback: every local user can connect and read or write the cache; use --host "
                 "ipc://PATH with --ipc-mode/--allowed-uids to restrict (docs/security.md)");
        return;
    }
    log_warn("WARNING: the ZeroMQ port %s is reachable from other hosts. LMCache clients cannot authenticate: "
             "anyone who can connect can read every tenant's cached KV and plant chunks. Bind loopback or ipc:// "
             "and firewall it (docs/security.md)",
             ep);
}

void *srv_access_monitor(struct server *s) { return s->monitor; }

void srv_access_on_monitor(struct server *s)
{
    for (;;) {
        zmq_msg_t ev, addr;
        zmq_msg_init(&ev);
        if (zmq_msg_recv(&ev, s->monitor, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&ev);
            return;
        }
        zmq_msg_init(&addr);
        if (zmq_msg_more(&ev))
            zmq_msg_recv(&addr, s->monitor, 0);
        uint16_t event = 0;
        uint32_t value = 0;
        if (zmq_msg_size(&ev) >= 6) {
            memcpy(&event, zmq_msg_data(&ev), 2);
            memcpy(&value, (char *)zmq_msg_data(&ev) + 2, 4);
        }
        int alen = (int)zmq_msg_size(&addr);
        const char *ad = zmq_msg_data(&addr);
        if (event == ZMQ_EVENT_ACCEPT_FAILED && value == 0 && filtered(s)) {
            /* libzmq's credential filter closed it (it reports no errno) */
            metrics_add(MET_REFUSED + SRV_REFUSED_IPC_PEER, 1);
            log_rl(&refused_rl, LOG_WARNING,
                   "refused a connection on %.*s: the peer's uid/gid is not in --allowed-uids/--allowed-gids",
                   alen, ad);
        } else if (event == ZMQ_EVENT_ACCEPT_FAILED) {
            metrics_add(MET_REFUSED + SRV_REFUSED_ACCEPT, 1);
            log_rl(&accept_rl, LOG_WARNING, "cannot accept a connection on %.*s: %s", alen, ad,
                   value ? strerror((int)value) : "closed by the peer");
        }
        zmq_msg_close(&ev);
        zmq_msg_close(&addr);
    }
}

bool srv_access_refuse_op(struct server *s, struct srv_req *r)
{
    if (s->cfg->access.inline_ops ||
        (r->req.op != WIRE_OP_STORE_INLINE && r->req.op != WIRE_OP_RETRIEVE_INLINE))
        return false;
    metrics_add(MET_REFUSED + SRV_REFUSED_INLINE_OP, 1);
    log_rl(&inline_rl, LOG_WARNING, "%s refused: lmcd runs with --no-inline-ops (answered with 0 chunks)",
           r->req.op_name);
    wire_resp_safe(r->req.op, &r->resp);
    return true;
}

void srv_access_close(struct server *s)
{
    if (s->monitor) {
        zmq_socket_monitor(s->router, NULL, 0);
        zmq_close(s->monitor);
        s->monitor = NULL;
    }
}
