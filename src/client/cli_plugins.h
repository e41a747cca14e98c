/*
 * cli_plugins: the "lmcd-cli plugins" command.
 *
 *   lmcd-cli plugins [--http-host H] [--http-port P] [--json]
 *       GET /plugins and print one row per plugin (or the raw JSON).
 *   lmcd-cli plugins restart PATH... [--http-host H] [--http-port P] [--json]
 *       POST /plugins/restart?path=PATH for each PATH.
 *
 * Talks HTTP/1.0 over a plain socket to the server's HTTP port (default
 * 127.0.0.1:8080). Prints errors to stderr. Single-threaded; no state.
 */
#ifndef LMCD_CLIENT_CLI_PLUGINS_H
#define LMCD_CLIENT_CLI_PLUGINS_H

/* argv[0] is "plugins". Returns the process exit code: 0 ok, 1 failure
 * (server unreachable, an error reply, no such plugin), 2 usage. */
int cli_plugins_main(int argc, char **argv);

#endif
