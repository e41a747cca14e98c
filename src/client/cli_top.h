/*
 * cli_top: the "lmcd-cli top" command, the dashboard in a terminal.
 *
 *   lmcd-cli top [--http-host H] [--http-port P] [--interval S] [--iterations N]
 *
 * Every --interval seconds (default 1) it reads GET /status and GET
 * /plugins from the server's HTTP port and redraws the screen: L1 use and
 * objects, hit rate, request rates and p50/p99 latency per operation over
 * the last refresh, L2 tiers, sessions, workers, plugins with their state
 * and last output line. `q` quits (the terminal is put in non-canonical
 * mode while it runs and restored on exit, SIGINT and SIGTERM included).
 * --iterations N stops after N screens (0 = until q).
 *
 * Single-threaded; exit 0 on q or after N screens, 2 on a usage error. An
 * unreachable server is shown on screen and retried, not fatal.
 */
#ifndef LMCD_CLIENT_CLI_TOP_H
#define LMCD_CLIENT_CLI_TOP_H

/* argv[0] is "top". Returns the process exit code. */
int cli_top_main(int argc, char **argv);

#endif
