/*
 * sdnotify: systemd's service notification protocol, spoken directly.
 *
 * The protocol is one datagram on the AF_UNIX socket named by
 * $NOTIFY_SOCKET (a path, or "@name" for the abstract namespace) holding
 * newline-separated KEY=VALUE lines: READY=1, STOPPING=1, STATUS=...,
 * WATCHDOG=1 (sd_notify(3)). It is small and stable, so lmcd speaks it
 * itself instead of linking libsystemd (no optional build dependency).
 *
 * sdnotify_init() reads $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID
 * once and unsets them, so runtime plugins (children) do not inherit them
 * and cannot speak for lmcd. Call it before any thread starts (it changes
 * the environment). Afterwards sdnotify_send() may be called from any
 * thread; without $NOTIFY_SOCKET it does nothing and returns 0.
 */
#ifndef LMCD_UTIL_SDNOTIFY_H
#define LMCD_UTIL_SDNOTIFY_H

#include <stdint.h>

void sdnotify_init(void);
/* Sends `state` (e.g. "READY=1\nSTATUS=serving"). 0, or -errno. */
int sdnotify_send(const char *state);
/* The watchdog interval systemd asked for (WatchdogSec=), in ns; 0 = none
 * (unset, or $WATCHDOG_PID names another process). */
uint64_t sdnotify_watchdog_ns(void);

#endif
