/*
 * cli_l2: the "lmcd-cli l2" command.
 *
 *   lmcd-cli l2 keys MODEL [--adapter I] [--page-size N] [--http-host H] [--http-port P] [--json]
 *       every key adapter I (0: the first --l2-adapter) holds for MODEL, one
 *       LMCache key string per line, following GET /l2/keys page tokens.
 *
 * Talks HTTP/1.0 to the server's HTTP port (default 127.0.0.1:8080).
 * Single-threaded; no state.
 */
#ifndef LMCD_CLIENT_CLI_L2_H
#define LMCD_CLIENT_CLI_L2_H

/* argv[0] is "l2". Exit code: 0 ok, 1 failure, 2 usage. */
int cli_l2_main(int argc, char **argv);

#endif
