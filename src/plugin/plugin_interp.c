/*
 * Plugin interpreter selection: the shebang as the kernel reads it, then
 * LMCache's per-extension fallbacks.
 *
 * LMCache treats everything after "#!" as one path, so "#!/usr/bin/env
 * python3" and "#!/bin/bash -eu" never resolve and silently fall back to
 * "python" from PATH. lmcd parses interpreter + one argument like
 * binfmt_script, resolves env's command itself (so the log names the real
 * interpreter), and prefers python3 over python when there is no shebang.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#define LOG_MODULE "lmcd.plugin"
#include "util/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "plugin/plugin_int.h"

#define DEFAULT_PATH "/usr/local/bin:/usr/bin:/bin"

static bool is_blank(char c) { return c == ' ' || c == '\t'; }

int plugin_shebang_parse(const char *buf, size_t len, char **interp, char **arg)
{
    *interp = NULL;
    *arg = NULL;
    if (len < 2 || buf[0] != '#' || buf[1] != '!')
        return 0;
    size_t lim = len < PLUGIN_SHEBANG_MAX ? len : PLUGIN_SHEBANG_MAX;
    size_t end = 2;
    while (end < lim && buf[end] != '\n' && buf[end] != '\0')
        end++;
    if (end == lim && len >= PLUGIN_SHEBANG_MAX)
        return -ENAMETOOLONG; /* the kernel would cut the line; we refuse to guess */
    size_t b = 2;
    while (end > b && (is_blank(buf[end - 1]) || buf[end - 1] == '\r'))
        end--;
    while (b < end && is_blank(buf[b]))
        b++;
    if (b == end)
        return -ENOEXEC;
    size_t ie = b;
    while (ie < end && !is_blank(buf[ie]))
        ie++;
    size_t ab = ie;
    while (ab < end && is_blank(buf[ab]))
        ab++;
    *interp = strndup(buf + b, ie - b);
    if (ab < end)
        *arg = strndup(buf + ab, end - ab);
    if (!*interp || (ab < end && !*arg)) {
        free(*interp);
        free(*arg);
        *interp = *arg = NULL;
        return -ENOMEM;
    }
    return 1;
}

static bool is_exec_file(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode) && access(p, X_OK) == 0;
}

char *plugin_which(const char *name, const char *search_path)
{
    if (!name || !*name)
        return NULL;
    if (strchr(name, '/'))
        return is_exec_file(name) ? strdup(name) : NULL;
    const char *p = search_path ? search_path : DEFAULT_PATH;
    for (;;) {
        const char *e = strchr(p, ':');
        size_t dl = e ? (size_t)(e - p) : strlen(p);
        char *cand;
        /* an empty PATH entry means the current directory */
        if (asprintf(&cand, "%.*s%s%s", (int)dl, p, dl ? "/" : "", name) < 0)
            return NULL;
        if (is_exec_file(cand))
            return cand;
        free(cand);
        if (!e)
            return NULL;
        p = e + 1;
    }
}

void plugin_cmd_free(struct plugin_cmd *c)
{
    free(c->interp);
    for (size_t i = 0; i < c->n_args; i++)
        free(c->args[i]);
    free(c->args);
    *c = (struct plugin_cmd){ 0 };
}

static int cmd_add_arg(struct plugin_cmd *c, const char *a, size_t n)
{
    char **v = realloc(c->args, (c->n_args + 2) * sizeof(*v));
    if (!v)
        return -ENOMEM;
    c->args = v;
    if (!(v[c->n_args] = strndup(a, n)))
        return -ENOMEM;
    v[++c->n_args] = NULL;
    return 0;
}

/* Splits "[-S] NAME [ARGS]" (env's operand) into words. Returns the number
 * of words stored in w (at most max), each a pointer/length into s. */
static size_t split_words(const char *s, const char **w, size_t *wl, size_t max)
{
    size_t n = 0;
    while (*s && n < max) {
        while (is_blank(*s))
            s++;
        if (!*s)
            break;
        const char *b = s;
        while (*s && !is_blank(*s))
            s++;
        w[n] = b;
        wl[n++] = (size_t)(s - b);
    }
    return n;
}

/* "#!/usr/bin/env [-S] NAME [ARGS...]": NAME is looked up on the PATH and
 * run directly. Returns 0 (found), -ENOENT (not found, *missing set) or
 * -ENOTSUP (env options or NAME=VALUE: let env itself run it). */
static int resolve_env(const char *arg, const char *search_path, struct plugin_cmd *c,
                       char **missing)
{
    const char *w[32];
    size_t wl[32];
    size_t n = split_words(arg ? arg : "", w, wl, 32);
    size_t i = 0;
    if (i < n && wl[i] >= 2 && strncmp(w[i], "-S", 2) == 0) {
        if (wl[i] > 2) { /* "-Spython3": the name is glued to the option */
            w[i] += 2;
            wl[i] -= 2;
        } else {
            i++;
        }
    }
    if (i >= n || w[i][0] == '-' || memchr(w[i], '=', wl[i]))
        return -ENOTSUP;
    char *name = strndup(w[i], wl[i]);
    if (!name)
        return -ENOMEM;
    char *found = plugin_which(name, search_path);
    if (!found) {
        *missing = name;
        return -ENOENT;
    }
    free(name);
    c->interp = found;
    for (i++; i < n; i++)
        if (cmd_add_arg(c, w[i], wl[i]) < 0)
            return -ENOMEM;
    return 0;
}

/* Reads the first bytes of path. Returns the count, or -errno. */
static ssize_t read_head(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return -errno;
    size_t got = 0;
    while (got < cap) {
        ssize_t r = read(fd, buf + got, cap - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            close(fd);
            return -e;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    return (ssize_t)got;
}

/* Tries the shebang. 0 = resolved into c; 1 = fall back (with *note set
 * when the shebang named something that cannot run); <0 = -ENOMEM. */
static int try_shebang(const char *path, const char *search_path, struct plugin_cmd *c,
                       char **note)
{
    char head[PLUGIN_SHEBANG_MAX];
    ssize_t n = read_head(path, head, sizeof(head));
    if (n < 0) {
        log_error("Error reading interpreter from runtime plugin file %s - using default "
                  "interpreters: %s", path, strerror((int)-n));
        return 1;
    }
    char *interp = NULL, *arg = NULL;
    int rc = plugin_shebang_parse(head, (size_t)n, &interp, &arg);
    if (rc == -ENOMEM)
        return rc;
    if (rc == -ENAMETOOLONG) {
        if (asprintf(note, "shebang line longer than %d bytes", PLUGIN_SHEBANG_MAX) < 0)
            return -ENOMEM;
        return 1;
    }
    if (rc == -ENOEXEC) {
        *note = strdup("empty shebang");
        return *note ? 1 : -ENOMEM;
    }
    if (rc == 0)
        return 1;
    const char *base = strrchr(interp, '/');
    base = base ? base + 1 : interp;
    int out = 1;
    if (strcmp(base, "env") == 0) {
        char *missing = NULL;
        int e = resolve_env(arg, search_path, c, &missing);
        if (e == 0) {
            out = 0;
        } else if (e == -ENOENT) {
            if (asprintf(note, "shebang interpreter %s (via %s) not found on PATH", missing,
                         interp) < 0)
                out = -ENOMEM;
            free(missing);
        } else if (e == -ENOMEM) {
            out = -ENOMEM;
        }
        if (e == -ENOTSUP)
            goto direct; /* env with options: run env itself with the one argument */
        goto done;
    }
direct:
    c->interp = plugin_which(interp, search_path);
    if (c->interp) {
        out = (arg && cmd_add_arg(c, arg, strlen(arg)) < 0) ? -ENOMEM : 0;
    } else if (asprintf(note, "shebang interpreter %s not found", interp) < 0) {
        out = -ENOMEM;
    }
done:
    if (out != 0)
        plugin_cmd_free(c);
    free(interp);
    free(arg);
    return out;
}

int plugin_resolve(const char *path, const char *search_path, struct plugin_cmd *out, char **why)
{
    *out = (struct plugin_cmd){ 0 };
    *why = NULL;
    char *note = NULL;
    int rc = try_shebang(path, search_path, out, &note);
    if (rc <= 0)
        return rc;

    static const char *const py[] = { "python3", "python", NULL };
    static const char *const sh[] = { "bash", NULL };
    const char *const *fb = plugin_has_ext(path, ".py") ? py : plugin_has_ext(path, ".sh") ? sh : NULL;
    if (!fb) {
        const char *dot = strrchr(path, '.');
        const char *slash = strrchr(path, '/');
        if (dot && slash && dot < slash)
            dot = NULL;
        rc = asprintf(why, "%s%sno shebang fallback for extension '%s' (only .py and .sh have one)",
                      note ? note : "", note ? "; " : "", dot ? dot : "");
        free(note);
        return rc < 0 ? -ENOMEM : -ENOEXEC;
    }
    for (size_t i = 0; fb[i]; i++) {
        if ((out->interp = plugin_which(fb[i], search_path))) {
            if (note)
                log_warn("Runtime plugin %s: %s; using %s instead", path, note, out->interp);
            free(note);
            return 0;
        }
    }
    /* the candidate list as Python's list repr, as LMCache words it */
    rc = asprintf(why, "%s%sNo valid interpreter found for %s from ['%s'%s%s%s]", note ? note : "",
                  note ? "; " : "", path, fb[0], fb[1] ? ", '" : "", fb[1] ? fb[1] : "", fb[1] ? "'" : "");
    free(note);
    return rc < 0 ? -ENOMEM : -ENOENT;
}
