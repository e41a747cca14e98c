/* lmcd-cli l2: the L2 tier over the HTTP API (contract in cli_l2.h). */
#include "client/cli_l2.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/client_http.h"

#define HTTP_TIMEOUT_MS 10000
#define MAX_PAGES 100000

static int usage(const char *why)
{
    if (why)
        fprintf(stderr, "lmcd-cli l2: %s\n", why);
    fprintf(why ? stderr : stdout,
            "usage: lmcd-cli l2 keys MODEL [--adapter I] [--page-size N] [--http-host H] [--http-port P] [--json]\n"
            "  every key L2 adapter I (default 0) holds for MODEL, one per line\n");
    return why ? 2 : 0;
}

/* One page: GET /l2/keys; prints keys (or collects them into all). */
static int page(const char *host, const char *port, const char *q, json_t *all, char **next)
{
    struct client_http_reply r;
    char err[256], target[4200];
    *next = NULL;
    snprintf(target, sizeof(target), "/l2/keys?%s", q);
    if (client_http_request(host, port, "GET", target, HTTP_TIMEOUT_MS, &r, err, sizeof(err)) < 0) {
        fprintf(stderr, "lmcd-cli: cannot get http://%s:%s/l2/keys: %s\n", host, port, err);
        return 1;
    }
    int rc = 1;
    json_t *j = json_loadb(r.body, r.body_len, 0, NULL);
    if (r.status != 200) {
        const char *e = json_string_value(json_object_get(j, "error"));
        fprintf(stderr, "lmcd-cli: GET /l2/keys answered HTTP %d: %s\n", r.status, e ? e : r.body);
    } else if (!json_is_array(json_object_get(j, "keys"))) {
        fprintf(stderr, "lmcd-cli: GET /l2/keys: the reply is not a key page\n");
    } else {
        size_t i;
        json_t *k;
        json_array_foreach(json_object_get(j, "keys"), i, k)
        {
            if (all)
                json_array_append(all, k);
            else
                puts(json_string_value(k) ? json_string_value(k) : "");
        }
        const char *nt = json_string_value(json_object_get(j, "next_page_token"));
        if (nt && !(*next = strdup(nt)))
            goto out;
        rc = 0;
    }
out:
    json_decref(j);
    client_http_reply_free(&r);
    return rc;
}

int cli_l2_main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *port = "8080", *model = NULL, *adapter = "0", *psize = "500";
    int as_json = 0;
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))
        return usage(argc < 2 ? "missing SUBCOMMAND (keys)" : NULL);
    if (strcmp(argv[1], "keys"))
        return usage("unknown subcommand (keys)");
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char **dst = !strcmp(a, "--http-host") ? &host
                           : !strcmp(a, "--http-port") ? &port
                           : !strcmp(a, "--adapter")   ? &adapter
                           : !strcmp(a, "--page-size") ? &psize
                                                       : NULL;
        if (dst) {
            if (i + 1 >= argc)
                return usage("an option needs a value");
            *dst = argv[++i];
        } else if (!strcmp(a, "--json")) {
            as_json = 1;
        } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            return usage(NULL);
        } else if (a[0] == '-' || model) {
            return usage("unexpected argument");
        } else {
            model = a;
        }
    }
    if (!model)
        return usage("missing MODEL");
    char *em = client_http_urlencode(model), *cursor = NULL;
    json_t *all = as_json ? json_array() : NULL;
    int rc = em ? 0 : 1;
    for (int p = 0; !rc && p < MAX_PAGES; p++) {
        char *ec = cursor ? client_http_urlencode(cursor) : NULL, q[4096];
        snprintf(q, sizeof(q), "model_name=%s&page_size=%s&adapter=%s%s%s", em, psize, adapter, ec ? "&page_token=" : "",
                 ec ? ec : "");
        free(ec);
        free(cursor);
        cursor = NULL;
        rc = page(host, port, q, all, &cursor);
        if (!cursor)
            break;
    }
    free(cursor);
    free(em);
    if (!rc && all) {
        char *t = json_dumps(all, JSON_INDENT(2));
        if (t)
            puts(t);
        free(t);
    }
    json_decref(all);
    return rc;
}
