/*
 * lmcd-cli: LMCache's MP CLI commands (clear, end-session, get-chunk-size,
 * noop, ping) over liblmcd, plus `status` (GET /status), `plugins`
 * (src/client/cli_plugins.c), `l2 keys` (src/client/cli_l2.c) and `top`
 * (src/client/cli_top.c).
 *
 *   lmcd-cli COMMAND [options]      exit 0 ok, 1 failure (timeout, no
 *                                   server, refused), 2 usage error
 *
 * Each ZeroMQ command uses a throw-away client with one timeout, as
 * LMCache's CLI does, so a dead server is a clear exit 1 within --timeout
 * seconds rather than a hang. Single-threaded.
 */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/cli_l2.h"
#include "client/cli_plugins.h"
#include "client/cli_top.h"
#include "client/client_http.h"
#include "lmcd/client.h"
#include "version.h"

#define EXIT_FAIL 1
#define EXIT_USAGE 2

struct opts {
    const char *host;      /* --host: name, tcp://name[:port] or ipc://path */
    const char *port;      /* --port */
    const char *protocol;  /* --protocol */
    const char *timeout;   /* --timeout, as given */
    double timeout_s;
    const char *http_host; /* --http-host (status) */
    const char *http_port; /* --http-port (status) */
    bool force;            /* clear --force */
    const char *arg;       /* end-session ID */
    char url[512];
    enum lmcd_profile profile;
};

/* What a command accepts: its name, its one-line purpose, its options. */
enum {
    O_ZMQ = 1,     /* --host --port --protocol --timeout */
    O_HTTP = 2,    /* --http-host --http-port --timeout */
    O_FORCE = 4,   /* --force */
    O_ARG = 8,     /* one positional argument */
};

struct command {
    const char *name;
    const char *arg_name;
    unsigned flags;
    const char *help;
    int (*run)(struct opts *o, struct lmcd_client *c);
};

/* A ZeroMQ command gets a connected client and returns the call's result
 * (0 or -errno), printing its output on success; `status` does its own I/O
 * and returns an exit code. */
static int run_clear(struct opts *o, struct lmcd_client *c);
static int run_end_session(struct opts *o, struct lmcd_client *c);
static int run_chunk_size(struct opts *o, struct lmcd_client *c);
static int run_noop(struct opts *o, struct lmcd_client *c);
static int run_ping(struct opts *o, struct lmcd_client *c);
static int run_status(struct opts *o, struct lmcd_client *c);

static const struct command commands[] = {
    { "clear", NULL, O_ZMQ | O_FORCE, "clear the cache (CLEAR); --force also drops locked objects",
      run_clear },
    { "end-session", "REQUEST_ID", O_ZMQ | O_ARG, "end a request's session (END_SESSION)",
      run_end_session },
    { "get-chunk-size", NULL, O_ZMQ, "print the server's chunk size in tokens", run_chunk_size },
    { "noop", NULL, O_ZMQ, "round-trip a NOOP; prints the reply (OK)", run_noop },
    { "ping", NULL, O_ZMQ, "PING the server; prints true", run_ping },
    { "status", NULL, O_HTTP, "print GET /status from the HTTP port, pretty-printed", run_status },
};
#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

static void usage_main(FILE *f)
{
    fprintf(f, "usage: lmcd-cli COMMAND [options]\n\n"
               "Talks to a running lmcd (or LMCache MP server).\n\nCommands:\n");
    for (size_t k = 0; k < N_COMMANDS; k++) {
        char head[64];
        snprintf(head, sizeof(head), "%s%s%s", commands[k].name, commands[k].arg_name ? " " : "",
                 commands[k].arg_name ? commands[k].arg_name : "");
        fprintf(f, "  %-26s %s\n", head, commands[k].help);
    }
    fprintf(f, "  %-26s %s\n", "plugins [restart PATH...]",
            "list or restart runtime plugins (lmcd-cli plugins --help)");
    fprintf(f, "  %-26s %s\n", "l2 keys MODEL", "list an L2 adapter's keys of MODEL (lmcd-cli l2 --help)");
    fprintf(f, "  %-26s %s\n", "top", "live view of the server in the terminal; q quits (lmcd-cli top --help)");
    fprintf(f, "\nRun `lmcd-cli COMMAND --help` for a command's options.\n"
               "Exit status: 0 ok, 1 failure (timeout, no server), 2 usage error.\n");
}

static void usage_command(FILE *f, const struct command *cmd)
{
    fprintf(f, "usage: lmcd-cli %s%s%s%s [options]\n\n%s.\n\nOptions:\n", cmd->name,
            cmd->arg_name ? " " : "", cmd->arg_name ? cmd->arg_name : "",
            cmd->flags & O_FORCE ? " [--force]" : "", cmd->help);
    if (cmd->flags & O_ZMQ)
        fprintf(f, "  --host HOST        server host (default localhost); also tcp://HOST[:PORT] "
                   "or ipc://PATH\n"
                   "  --port PORT        server port (default 5555)\n"
                   "  --protocol NAME    lmcache-2609 (default) or lmcache-2604\n");
    if (cmd->flags & O_HTTP)
        fprintf(f, "  --http-host HOST   HTTP host (default 127.0.0.1)\n"
                   "  --http-port PORT   HTTP port (default 8080)\n");
    if (cmd->flags & O_FORCE)
        fprintf(f, "  --force            also drop objects that are locked or being written\n"
                   "                     (lmcache-2604 servers always clear everything)\n");
    fprintf(f, "  --timeout SECONDS  give up after this long (default 5); exit 1\n"
               "  --help             show this help\n");
}

/* One line on stderr, exit 2. */
static int usage_error(const struct command *cmd, const char *fmt, const char *what)
{
    fputs("lmcd-cli: ", stderr);
    fprintf(stderr, fmt, what);
    if (cmd)
        fprintf(stderr, " (see lmcd-cli %s --help)\n", cmd->name);
    else
        fputs(" (see lmcd-cli --help)\n", stderr);
    return EXIT_USAGE;
}

static bool valid_port(const char *s)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    return *s && !*end && !errno && v > 0 && v <= 65535;
}

/* --host/--port -> a ZeroMQ endpoint. 0 or -EINVAL. */
static int build_url(struct opts *o)
{
    const char *h = o->host;
    int n;
    if (!strncmp(h, "ipc://", 6)) {
        n = snprintf(o->url, sizeof(o->url), "%s", h);
    } else {
        if (!strncmp(h, "tcp://", 6))
            h += 6;
        else if (strstr(h, "://"))
            return -EINVAL;
        if (!*h)
            return -EINVAL;
        const char *colon = strrchr(h, ':');
        bool bracketed = h[0] == '[';
        bool has_port = colon && (bracketed ? colon > strchr(h, ']') : strchr(h, ':') == colon);
        if (has_port)
            n = snprintf(o->url, sizeof(o->url), "tcp://%s", h);
        else if (colon && !bracketed) /* a bare IPv6 literal */
            n = snprintf(o->url, sizeof(o->url), "tcp://[%s]:%s", h, o->port);
        else
            n = snprintf(o->url, sizeof(o->url), "tcp://%s:%s", h, o->port);
    }
    return n > 0 && (size_t)n < sizeof(o->url) ? 0 : -EINVAL;
}

static int timeout_ms(const struct opts *o) { return (int)lround(o->timeout_s * 1000.0); }

/* Parses argv[1..] of a command. 0 to run, 1 = help printed, or exit 2. */
static int parse(const struct command *cmd, int argc, char **argv, struct opts *o)
{
    static const struct {
        const char *name;
        unsigned need;
        size_t off;
    } valued[] = {
        { "--host", O_ZMQ, offsetof(struct opts, host) },
        { "--port", O_ZMQ, offsetof(struct opts, port) },
        { "--protocol", O_ZMQ, offsetof(struct opts, protocol) },
        { "--http-host", O_HTTP, offsetof(struct opts, http_host) },
        { "--http-port", O_HTTP, offsetof(struct opts, http_port) },
        { "--timeout", O_ZMQ | O_HTTP, offsetof(struct opts, timeout) },
    };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage_command(stdout, cmd);
            return 1;
        }
        if (!strcmp(a, "--force") && (cmd->flags & O_FORCE)) {
            o->force = true;
            continue;
        }
        size_t k = 0, len = 0;
        for (; k < sizeof(valued) / sizeof(valued[0]); k++) {
            len = strlen(valued[k].name);
            if (!strncmp(a, valued[k].name, len) && (a[len] == '\0' || a[len] == '='))
                break;
        }
        if (k < sizeof(valued) / sizeof(valued[0]) && (cmd->flags & valued[k].need)) {
            const char *v = a[len] == '=' ? a + len + 1 : (i + 1 < argc ? argv[++i] : NULL);
            if (!v)
                return usage_error(cmd, "%s needs a value", valued[k].name);
            *(const char **)((char *)o + valued[k].off) = v;
            continue;
        }
        if (a[0] == '-' && a[1] != '\0')
            return usage_error(cmd, "unknown option %s", a);
        if (!(cmd->flags & O_ARG) || o->arg)
            return usage_error(cmd, "unexpected argument %s", a);
        o->arg = a;
    }
    if ((cmd->flags & O_ARG) && !o->arg)
        return usage_error(cmd, "missing %s", cmd->arg_name);
    char *end;
    const char *timeout = o->timeout;
    o->timeout_s = strtod(timeout, &end);
    if (!*timeout || *end || !(o->timeout_s > 0) || o->timeout_s > 86400)
        return usage_error(cmd, "--timeout needs a number of seconds in (0, 86400], not %s",
                           timeout);
    if ((cmd->flags & O_ZMQ) && !valid_port(o->port))
        return usage_error(cmd, "--port needs a port number 1-65535, not %s", o->port);
    if ((cmd->flags & O_HTTP) && !valid_port(o->http_port))
        return usage_error(cmd, "--http-port needs a port number 1-65535, not %s", o->http_port);
    if ((cmd->flags & O_ZMQ) && lmcd_profile_parse(o->protocol, &o->profile) < 0)
        return usage_error(cmd, "--protocol must be lmcache-2609 or lmcache-2604, not %s",
                           o->protocol);
    if ((cmd->flags & O_ZMQ) && build_url(o) < 0)
        return usage_error(cmd, "--host must be a host name, tcp://HOST[:PORT] or ipc://PATH, "
                                "not %s", o->host);
    return 0;
}

/* ---- the ZeroMQ commands ------------------------------------------------- */

/* Exit code for a call's result, with the message LMCache's CLI gives on a
 * timeout: which server did not answer, and within how long. */
static int report(const struct opts *o, const char *what, int rc)
{
    if (rc == 0)
        return 0;
    if (rc == -ETIMEDOUT)
        fprintf(stderr, "lmcd-cli: %s: no reply from the server at %s within %g s "
                        "(is lmcd running there, with --protocol %s?)\n",
                what, o->url, o->timeout_s, o->protocol);
    else
        fprintf(stderr, "lmcd-cli: %s on %s failed: %s\n", what, o->url, lmcd_strerror(rc));
    return EXIT_FAIL;
}

/* One throw-away client per command, as LMCache's CLI does. */
static int run_zmq(const struct command *cmd, struct opts *o)
{
    struct lmcd_client *c;
    int rc = lmcd_client_open(o->url, o->profile, LMCD_FORM_POSITIONAL, &c);
    if (rc < 0) {
        fprintf(stderr, "lmcd-cli: cannot connect to %s: %s\n", o->url, lmcd_strerror(rc));
        return EXIT_FAIL;
    }
    lmcd_client_set_timeout(c, timeout_ms(o));
    rc = report(o, cmd->name, cmd->run(o, c));
    lmcd_client_close(c);
    return rc;
}

static int run_clear(struct opts *o, struct lmcd_client *c)
{
    int rc = lmcd_clear(c, o->force);
    if (rc == 0)
        puts("Cache cleared successfully.");
    return rc;
}

static int run_end_session(struct opts *o, struct lmcd_client *c)
{
    int rc = lmcd_end_session(c, o->arg);
    if (rc == 0)
        printf("Session %s ended.\n", o->arg);
    return rc;
}

static int run_chunk_size(struct opts *o, struct lmcd_client *c)
{
    (void)o;
    int64_t n = 0;
    int rc = lmcd_get_chunk_size(c, &n);
    if (rc == 0)
        printf("%lld\n", (long long)n);
    return rc;
}

static int run_noop(struct opts *o, struct lmcd_client *c)
{
    (void)o;
    char msg[256] = "";
    int rc = lmcd_noop(c, msg, sizeof(msg));
    if (rc == 0)
        puts(msg);
    return rc;
}

/* LMCache servers answer true; anything else is reported as a failure. */
static int run_ping(struct opts *o, struct lmcd_client *c)
{
    (void)o;
    bool ok = false;
    int rc = lmcd_ping(c, LMCD_NO_INSTANCE, &ok);
    if (rc == 0)
        puts(ok ? "true" : "false");
    return rc == 0 && !ok ? -ECONNREFUSED : rc;
}

/* ---- status --------------------------------------------------------------- */

static int run_status(struct opts *o, struct lmcd_client *unused)
{
    (void)unused;
    struct client_http_reply r;
    char err[512];
    int rc = client_http_request(o->http_host, o->http_port, "GET", "/status", timeout_ms(o), &r,
                                 err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "lmcd-cli: status: %s\n", err);
        return EXIT_FAIL;
    }
    if (r.status != 200) {
        fprintf(stderr, "lmcd-cli: status: GET /status on %s:%s answered %d: %.200s\n",
                o->http_host, o->http_port, r.status, r.body);
        client_http_reply_free(&r);
        return EXIT_FAIL;
    }
    json_error_t jerr;
    json_t *j = json_loadb(r.body, r.body_len, 0, &jerr);
    char *pretty = j ? json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    if (pretty)
        puts(pretty);
    else
        fprintf(stderr, "lmcd-cli: status: the reply is not JSON (%s)\n", jerr.text);
    free(pretty);
    json_decref(j);
    client_http_reply_free(&r);
    return pretty ? 0 : EXIT_FAIL;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage_error(NULL, "%s", "missing COMMAND");
    const char *name = argv[1];
    if (!strcmp(name, "--help") || !strcmp(name, "-h") || !strcmp(name, "help")) {
        usage_main(stdout);
        return 0;
    }
    if (!strcmp(name, "--version")) {
        printf("lmcd-cli %s\n", LMCD_VERSION);
        return 0;
    }
    if (!strcmp(name, "plugins"))
        return cli_plugins_main(argc - 1, argv + 1);
    if (!strcmp(name, "l2"))
        return cli_l2_main(argc - 1, argv + 1);
    if (!strcmp(name, "top"))
        return cli_top_main(argc - 1, argv + 1);
    for (size_t k = 0; k < N_COMMANDS; k++) {
        if (strcmp(name, commands[k].name))
            continue;
        struct opts o = { .host = "localhost", .port = "5555", .protocol = "lmcache-2609",
                          .http_host = "127.0.0.1", .http_port = "8080", .timeout = "5" };
        int rc = parse(&commands[k], argc - 1, argv + 1, &o);
        if (rc)
            return rc == 1 ? 0 : rc;
        return commands[k].flags & O_ZMQ ? run_zmq(&commands[k], &o) : commands[k].run(&o, NULL);
    }
    return usage_error(NULL, name[0] == '-' ? "unknown option %s before the COMMAND"
                                            : "unknown command %s", name);
}
