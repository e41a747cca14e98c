/*
 * access: who may use the ZeroMQ endpoint (docs/security.md).
 *
 * LMCache's clients cannot authenticate, so the boundary is the transport:
 *   ipc://   the socket file is created mode 0600 whatever the umask
 *            (--ipc-mode; 0660 and --shm-group's group with --shm-group),
 *            and --allowed-uids/--allowed-gids make libzmq check the
 *            peer's kernel credentials (SO_PEERCRED) at accept, through
 *            ZMQ_IPC_FILTER_UID/GID (Debian's libzmq 4.3.4 has them; lmcd
 *            refuses to start if they are missing rather than run open).
 *            lmcd's own uid is always allowed.
 *   tcp://   no credentials exist: loopback only by default, and a loud
 *            warning when bound wider.
 * A monitor socket reports refused accepts (and accept failures such as
 * EMFILE); the loop counts and logs them. --no-inline-ops answers lmcd's
 * own inline ops with their safe reply (0 chunks, spec 9.3), counted.
 *
 * Threads: everything here runs on the loop thread (server_init and
 * server_run), which owns the ROUTER and the monitor socket.
 */
#ifndef LMCD_SERVER_ACCESS_H
#define LMCD_SERVER_ACCESS_H

#include <stdbool.h>

#include "server/server.h"

struct srv_req;

/* Before binding: peer-credential filters, the monitor. 0 or -errno (logged). */
int srv_access_prepare(struct server *s);
/* Binds an ipc:// endpoint with the configured mode and group. 0 or -errno (logged). */
int srv_access_bind_ipc(struct server *s, const char *ep);
/* After binding: warns when a TCP endpoint is reachable from other hosts. */
void srv_access_check_bound(struct server *s);
/* The monitor socket the loop polls (NULL when none). */
void *srv_access_monitor(struct server *s);
/* Reads monitor events: counts and logs refused peers. */
void srv_access_on_monitor(struct server *s);
/* True when r is an op turned off here: r->resp holds its safe reply. */
bool srv_access_refuse_op(struct server *s, struct srv_req *r);
/* Closes the monitor (before the context terminates). */
void srv_access_close(struct server *s);

#endif
