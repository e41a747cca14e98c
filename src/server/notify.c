/*
 * notify.c: systemd's watchdog, fed from the ZeroMQ loop itself, so a loop
 * that hangs stops the pings and systemd restarts lmcd (WatchdogSec=).
 * READY=1 and STOPPING=1 are sent by main() (src/util/sdnotify).
 */
#define LOG_MODULE "lmcd.server"
#include <string.h>

#include "server/server.h"
#include "util/clock.h"
#include "util/log.h"
#include "util/sdnotify.h"

int server_watchdog(struct server *s, int timeout_ms)
{
    if (!s->watchdog_ns)
        return timeout_ms;
    uint64_t now = clock_mono_ns();
    if (now >= s->watchdog_next_ns) {
        int rc = sdnotify_send("WATCHDOG=1");
        if (rc)
            log_warn("cannot send WATCHDOG=1 to systemd: %s", strerror(-rc));
        /* half the interval, as sd_watchdog_enabled(3) advises */
        s->watchdog_next_ns = now + s->watchdog_ns / 2;
    }
    uint64_t left_ms = (s->watchdog_next_ns - now) / 1000000 + 1;
    if (timeout_ms < 0 || (uint64_t)timeout_ms > left_ms)
        return (int)left_ms;
    return timeout_ms;
}
