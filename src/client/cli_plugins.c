/*
 * lmcd-cli plugins: list and restart runtime plugins over the HTTP API.
 *
 * Uses client_http (one HTTP/1.0 request per connection, one deadline), so
 * the CLI needs no HTTP library and works against any lmcd that serves
 * GET /plugins and POST /plugins/restart.
 */
#include "client/cli_plugins.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client/client_http.h"

#define HTTP_TIMEOUT_MS 10000

static void print_table(json_t *list)
{
    printf("%-9s %-8s %-8s %-5s %-9s %s\n", "STATE", "PID", "RESTARTS", "EXIT", "UPTIME", "PATH");
    size_t i;
    json_t *p;
    json_array_foreach(list, i, p) {
        json_t *pid = json_object_get(p, "pid"), *ex = json_object_get(p, "last_exit_code");
        json_t *up = json_object_get(p, "uptime_s");
        const char *reason = json_string_value(json_object_get(p, "reason"));
        char spid[24] = "-", sex[24] = "-", sup[32] = "-";
        if (json_is_integer(pid))
            snprintf(spid, sizeof(spid), "%lld", (long long)json_integer_value(pid));
        if (json_is_integer(ex))
            snprintf(sex, sizeof(sex), "%lld", (long long)json_integer_value(ex));
        if (json_is_number(up))
            snprintf(sup, sizeof(sup), "%.1fs", json_number_value(up));
        printf("%-9s %-8s %-8lld %-5s %-9s %s\n",
               json_string_value(json_object_get(p, "state")) ?: "?", spid,
               (long long)json_integer_value(json_object_get(p, "restarts")), sex, sup,
               json_string_value(json_object_get(p, "path")) ?: "?");
        if (reason)
            printf("          %s\n", reason);
    }
    if (json_array_size(list) == 0)
        printf("(no runtime plugins)\n");
}

static int cmd_list(const char *host, const char *port, int as_json)
{
    struct client_http_reply r;
    char err[256];
    if (client_http_request(host, port, "GET", "/plugins", HTTP_TIMEOUT_MS, &r, err, sizeof(err)) < 0) {
        fprintf(stderr, "lmcd-cli: cannot get http://%s:%s/plugins: %s\n", host, port, err);
        return 1;
    }
    int rc = 1;
    if (r.status != 200) {
        fprintf(stderr, "lmcd-cli: GET /plugins answered HTTP %d: %s\n", r.status, r.body);
    } else if (as_json) {
        fputs(r.body, stdout);
        if (!*r.body || r.body[strlen(r.body) - 1] != '\n')
            putchar('\n');
        rc = 0;
    } else {
        json_error_t je;
        json_t *j = json_loads(r.body, 0, &je);
        json_t *list = json_is_object(j) ? json_object_get(j, "plugins") : j;
        if (!json_is_array(list)) {
            fprintf(stderr, "lmcd-cli: GET /plugins did not return a JSON array: %s\n", je.text);
        } else {
            print_table(list);
            rc = 0;
        }
        json_decref(j);
    }
    client_http_reply_free(&r);
    return rc;
}

static int cmd_restart(const char *host, const char *port, int as_json, char **paths, int n)
{
    int rc = 0;
    for (int i = 0; i < n; i++) {
        char *enc = client_http_urlencode(paths[i]), *target = NULL, err[256];
        if (!enc || asprintf(&target, "/plugins/restart?path=%s", enc) < 0) {
            free(enc);
            fprintf(stderr, "lmcd-cli: out of memory\n");
            return 1;
        }
        free(enc);
        struct client_http_reply r;
        if (client_http_request(host, port, "POST", target, HTTP_TIMEOUT_MS, &r, err, sizeof(err)) < 0) {
            fprintf(stderr, "lmcd-cli: cannot reach http://%s:%s: %s\n", host, port, err);
            free(target);
            return 1;
        }
        free(target);
        if (as_json)
            printf("%s\n", r.body);
        if (r.status == 200) {
            if (!as_json)
                printf("restarting %s\n", paths[i]);
        } else if (r.status == 404) {
            fprintf(stderr, "lmcd-cli: no runtime plugin with path %s (see lmcd-cli plugins)\n",
                    paths[i]);
            rc = 1;
        } else {
            fprintf(stderr, "lmcd-cli: restart of %s answered HTTP %d: %s\n", paths[i], r.status,
                    r.body);
            rc = 1;
        }
        client_http_reply_free(&r);
    }
    return rc;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: lmcd-cli plugins [--http-host H] [--http-port P] [--json]\n"
               "       lmcd-cli plugins restart PATH... [--http-host H] [--http-port P] [--json]\n"
               "Lists the runtime plugins of a running lmcd (GET /plugins) or restarts some\n"
               "(POST /plugins/restart). Defaults: --http-host 127.0.0.1 --http-port 8080.\n");
}

int cli_plugins_main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *port = "8080";
    int as_json = 0, npos = 0, only_pos = 0;
    char **pos = calloc((size_t)argc + 1, sizeof(*pos));
    if (!pos)
        return 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (only_pos) {
            pos[npos++] = argv[i];
        } else if (!strcmp(a, "--")) {
            only_pos = 1; /* what follows are paths, even "--x" */
        } else if (!strcmp(a, "--http-host") || !strcmp(a, "--http-port")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "lmcd-cli: %s needs a value\n", a);
                free(pos);
                return 2;
            }
            *(a[7] == 'h' ? &host : &port) = argv[++i];
        } else if (!strncmp(a, "--http-host=", 12)) {
            host = a + 12;
        } else if (!strncmp(a, "--http-port=", 12)) {
            port = a + 12;
        } else if (!strcmp(a, "--json")) {
            as_json = 1;
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            free(pos);
            return 0;
        } else if (a[0] == '-' && a[1] == '-') {
            fprintf(stderr, "lmcd-cli: unknown option %s\n", a);
            usage(stderr);
            free(pos);
            return 2;
        } else {
            pos[npos++] = argv[i];
        }
    }
    int rc;
    if (npos == 0 || (npos == 1 && !strcmp(pos[0], "list"))) {
        rc = cmd_list(host, port, as_json);
    } else if (!strcmp(pos[0], "restart") && npos >= 2) {
        rc = cmd_restart(host, port, as_json, pos + 1, npos - 1);
    } else {
        usage(stderr);
        rc = 2;
    }
    free(pos);
    return rc;
}
