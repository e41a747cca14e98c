/*
 * Plugin discovery: locations -> an ordered, de-duplicated list of files.
 *
 * LMCache walks each directory twice (*.py, then *.sh) in raw readdir order,
 * follows dotfiles and matches directories named *.py. lmcd keeps the two
 * passes and the location order (the observable contract) but sorts each
 * pass by path (byte order), skips dot-entries and non-regular files, and
 * launches a file reached twice only once.
 */
#define LOG_MODULE "lmcd.plugin"
#include "util/log.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "plugin/plugin_int.h"

#define DISCOVER_MAX_DEPTH 32 /* a deeper tree is a mistake, not a plugin folder */

char *plugin_path_normalize(const char *loc)
{
    size_t n = strlen(loc);
    char *out = malloc(n + 2);
    if (!out)
        return NULL;
    size_t o = 0;
    const char *p = loc;
    if (p[0] == '/') {
        /* POSIX keeps exactly two leading slashes; one or three+ mean root */
        if (p[1] == '/' && p[2] != '/') {
            out[o++] = '/';
            out[o++] = '/';
        } else {
            out[o++] = '/';
        }
        while (*p == '/')
            p++;
    }
    size_t root = o;
    while (*p) {
        const char *e = strchr(p, '/');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len > 0 && !(len == 1 && p[0] == '.')) {
            if (o > root)
                out[o++] = '/';
            memcpy(out + o, p, len);
            o += len;
        }
        p += len;
        while (*p == '/')
            p++;
    }
    if (o == 0)
        out[o++] = '.';
    out[o] = '\0';
    return out;
}

bool plugin_has_ext(const char *path, const char *ext)
{
    size_t n = strlen(path), m = strlen(ext);
    return n > m && strcasecmp(path + n - m, ext) == 0;
}

static int list_push(struct plugin_found_list *l, char *path, char *real, bool explicit_file)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 8;
        struct plugin_found *v = realloc(l->v, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = (struct plugin_found){ path, real, explicit_file };
    return 0;
}

void plugin_found_list_free(struct plugin_found_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i].path);
        free(l->v[i].realpath);
    }
    free(l->v);
    *l = (struct plugin_found_list){ 0 };
}

/* Joins a directory (as the logs show it) and an entry name. Python's
 * Path(".") / "x" prints as "x", so "." contributes nothing. */
static char *path_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *s = malloc(a + b + 2);
    if (!s)
        return NULL;
    if (strcmp(dir, ".") == 0) {
        memcpy(s, name, b + 1);
    } else if (a > 0 && dir[a - 1] == '/') {
        memcpy(s, dir, a);
        memcpy(s + a, name, b + 1);
    } else {
        memcpy(s, dir, a);
        s[a] = '/';
        memcpy(s + a + 1, name, b + 1);
    }
    return s;
}

struct walk {
    char **v;
    size_t n, cap;
};

static int walk_push(struct walk *w, char *s)
{
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 16;
        char **v = realloc(w->v, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        w->v = v;
        w->cap = cap;
    }
    w->v[w->n++] = s;
    return 0;
}

static void walk_free(struct walk *w)
{
    for (size_t i = 0; i < w->n; i++)
        free(w->v[i]);
    free(w->v);
}

/* Collects every regular file below dir whose name ends in ext. Entries
 * starting with '.' are skipped; symlinks to files count, symlinked
 * directories are not entered (no loops). */
static int walk_dir(const char *dir, const char *ext, int depth, struct walk *w)
{
    if (depth > DISCOVER_MAX_DEPTH) {
        log_warn("Runtime plugin directory %s is nested deeper than %d levels; not searched further",
                 dir, DISCOVER_MAX_DEPTH);
        return 0;
    }
    DIR *d = opendir(dir);
    if (!d) {
        log_warn("Cannot list runtime plugin directory %s: %s", dir, strerror(errno));
        return 0;
    }
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char *p = path_join(dir, de->d_name);
        if (!p) {
            rc = -ENOMEM;
            break;
        }
        struct stat lst, st;
        if (lstat(p, &lst) < 0) {
            free(p);
            continue;
        }
        if (S_ISDIR(lst.st_mode)) {
            rc = walk_dir(p, ext, depth + 1, w);
            free(p);
            if (rc < 0)
                break;
            continue;
        }
        if (!plugin_has_ext(de->d_name, ext)) {
            free(p);
            continue;
        }
        if (stat(p, &st) < 0 || !S_ISREG(st.st_mode)) {
            log_warn("Skipping runtime plugin candidate %s: not a regular file (%s)", p,
                     S_ISLNK(lst.st_mode) ? "dangling or odd symlink" : "special file");
            free(p);
            continue;
        }
        if ((rc = walk_push(w, p)) < 0) {
            free(p);
            break;
        }
    }
    closedir(d);
    return rc;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Adds path unless its real file is already listed. Takes ownership. */
static int add_unique(struct plugin_found_list *out, char *path, bool explicit_file)
{
    char *real = realpath(path, NULL);
    if (!real) {
        log_warn("Skipping runtime plugin %s: cannot resolve its real path: %s", path,
                 strerror(errno));
        free(path);
        return 0;
    }
    for (size_t i = 0; i < out->n; i++) {
        if (strcmp(out->v[i].realpath, real) == 0) {
            log_info("Runtime plugin %s is the same file as %s; launching it once", path,
                     out->v[i].path);
            free(path);
            free(real);
            return 0;
        }
    }
    int rc = list_push(out, path, real, explicit_file);
    if (rc < 0) {
        free(path);
        free(real);
    }
    return rc;
}

static int discover_dir(const char *dir, struct plugin_found_list *out)
{
    static const char *const passes[] = { ".py", ".sh" };
    int rc = 0;
    for (size_t i = 0; i < 2 && rc == 0; i++) {
        struct walk w = { 0 };
        rc = walk_dir(dir, passes[i], 0, &w);
        if (rc == 0) {
            if (w.n)
                qsort(w.v, w.n, sizeof(*w.v), cmp_str);
            for (size_t j = 0; j < w.n && rc == 0; j++) {
                rc = add_unique(out, w.v[j], false);
                w.v[j] = NULL;
            }
        }
        walk_free(&w);
    }
    return rc;
}

int plugin_discover(const char *const *locations, size_t n, struct plugin_found_list *out)
{
    for (size_t i = 0; i < n; i++) {
        struct stat st;
        if (stat(locations[i], &st) < 0) {
            log_warn("Runtime plugin location %s does not exist", locations[i]);
            continue;
        }
        char *loc = plugin_path_normalize(locations[i]);
        if (!loc)
            return -ENOMEM;
        int rc = 0;
        if (S_ISREG(st.st_mode)) {
            rc = add_unique(out, loc, true);
            loc = NULL;
        } else if (S_ISDIR(st.st_mode)) {
            rc = discover_dir(loc, out);
        } else {
            log_warn("Runtime plugin location %s is neither a file nor a directory; skipped",
                     locations[i]);
        }
        free(loc);
        if (rc < 0)
            return rc;
    }
    return 0;
}
