/*
 * Unit tests of the plugin module's pure parts: path normalisation,
 * discovery order and de-duplication, shebang parsing, interpreter lookup,
 * restart policy and backoff with an injected clock, output line splitting,
 * and the plugin environment; and overlapping launches (zygote and exec'd
 * guards) down to the guard's exit status. The supervisor with real
 * plugins is exercised end to end in tests/e2e/test_plugin*.py.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "plugin/plugin_int.h"

/* ---------- helpers ---------- */

static char tmpdir[256];

static void mk_tmpdir(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/lmcd-plugin-test-XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir));
}

static void rm_tree(void)
{
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    cr_assert_eq(system(cmd), 0);
}

static void write_file(const char *rel, const char *text, mode_t mode)
{
    char p[PATH_MAX];
    snprintf(p, sizeof(p), "%s/%s", tmpdir, rel);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, mode);
    cr_assert(fd >= 0, "open %s: %s", p, strerror(errno));
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
}

static void mk_dir(const char *rel)
{
    char p[PATH_MAX];
    snprintf(p, sizeof(p), "%s/%s", tmpdir, rel);
    cr_assert_eq(mkdir(p, 0755), 0);
}

static char *at(const char *rel)
{
    static char p[4][PATH_MAX];
    static int k;
    k = (k + 1) % 4;
    snprintf(p[k], sizeof(p[k]), "%s/%s", tmpdir, rel);
    return p[k];
}

/* ---------- path normalisation ---------- */

Test(plugin, path_normalize_matches_python_pathlib)
{
    static const char *cases[][2] = {
        { "examples/mp_runtime_plugins/", "examples/mp_runtime_plugins" },
        { "./a//b/./c", "a/b/c" },
        { "a/../b", "a/../b" },
        { "", "." },
        { "./", "." },
        { "/", "/" },
        { "///x//", "/x" },
        { "//x", "//x" },
        { "/tmp/p.py", "/tmp/p.py" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *n = plugin_path_normalize(cases[i][0]);
        cr_assert_str_eq(n, cases[i][1], "normalize(%s)", cases[i][0]);
        free(n);
    }
}

/* ---------- discovery ---------- */

Test(plugin, discover_sorts_each_pass_py_before_sh, .init = mk_tmpdir, .fini = rm_tree)
{
    mk_dir("d");
    mk_dir("d/sub");
    write_file("d/zeta.sh", "", 0644);
    write_file("d/b.py", "", 0644);
    write_file("d/a.sh", "", 0644);
    write_file("d/sub/c.py", "", 0644);
    write_file("d/a.py", "", 0644);
    write_file("d/notes.txt", "", 0644);
    const char *locs[] = { at("d/") };
    struct plugin_found_list l = { 0 };
    cr_assert_eq(plugin_discover(locs, 1, &l), 0);
    cr_assert_eq(l.n, 5);
    cr_assert_str_eq(l.v[0].path, at("d/a.py"));
    cr_assert_str_eq(l.v[1].path, at("d/b.py"));
    cr_assert_str_eq(l.v[2].path, at("d/sub/c.py"));
    cr_assert_str_eq(l.v[3].path, at("d/a.sh"));
    cr_assert_str_eq(l.v[4].path, at("d/zeta.sh"));
    cr_assert(!l.v[0].explicit_file);
    plugin_found_list_free(&l);
}

Test(plugin, discover_skips_dotfiles_dot_dirs_and_directories_named_py, .init = mk_tmpdir,
     .fini = rm_tree)
{
    mk_dir("d");
    mk_dir("d/.hidden");
    mk_dir("d/pkg.py");
    write_file("d/.secret.py", "", 0644);
    write_file("d/.hidden/x.py", "", 0644);
    write_file("d/pkg.py/inner.sh", "", 0644);
    write_file("d/UPPER.PY", "", 0644);
    const char *locs[] = { at("d") };
    struct plugin_found_list l = { 0 };
    cr_assert_eq(plugin_discover(locs, 1, &l), 0);
    cr_assert_eq(l.n, 2, "got %zu", l.n);
    cr_assert_str_eq(l.v[0].path, at("d/UPPER.PY"));
    cr_assert_str_eq(l.v[1].path, at("d/pkg.py/inner.sh"));
    plugin_found_list_free(&l);
}

Test(plugin, discover_keeps_location_order_and_dedups_same_real_file, .init = mk_tmpdir,
     .fini = rm_tree)
{
    mk_dir("d");
    write_file("d/one.py", "", 0644);
    write_file("solo.txt", "#!/bin/sh\n", 0644);
    char link[PATH_MAX];
    snprintf(link, sizeof(link), "%s/d/alias.py", tmpdir);
    cr_assert_eq(symlink(at("d/one.py"), link), 0);
    /* the explicit file first, then the folder, then the folder again */
    const char *locs[] = { at("solo.txt"), at("d"), at("missing"), at("d/one.py") };
    struct plugin_found_list l = { 0 };
    cr_assert_eq(plugin_discover(locs, 4, &l), 0);
    cr_assert_eq(l.n, 2, "got %zu", l.n);
    cr_assert_str_eq(l.v[0].path, at("solo.txt"));
    cr_assert(l.v[0].explicit_file);
    /* alias.py sorts first and wins; one.py is the same file */
    cr_assert_str_eq(l.v[1].path, at("d/alias.py"));
    plugin_found_list_free(&l);
}

Test(plugin, discover_missing_location_is_skipped_not_fatal)
{
    const char *locs[] = { "/nonexistent/lmcd/plugins" };
    struct plugin_found_list l = { 0 };
    cr_assert_eq(plugin_discover(locs, 1, &l), 0);
    cr_assert_eq(l.n, 0);
    plugin_found_list_free(&l);
}

Test(plugin, discover_relative_dot_location_gives_bare_names, .init = mk_tmpdir, .fini = rm_tree)
{
    write_file("p.sh", "", 0644);
    char cwd[PATH_MAX];
    cr_assert_not_null(getcwd(cwd, sizeof(cwd)));
    cr_assert_eq(chdir(tmpdir), 0);
    const char *locs[] = { "./" };
    struct plugin_found_list l = { 0 };
    int rc = plugin_discover(locs, 1, &l);
    cr_assert_eq(chdir(cwd), 0);
    cr_assert_eq(rc, 0);
    cr_assert_eq(l.n, 1);
    cr_assert_str_eq(l.v[0].path, "p.sh");
    plugin_found_list_free(&l);
}

/* ---------- shebang ---------- */

static int parse(const char *s, char **i, char **a) { return plugin_shebang_parse(s, strlen(s), i, a); }

Test(plugin, shebang_plain_env_and_argument)
{
    char *i, *a;
    cr_assert_eq(parse("#!/bin/bash\necho\n", &i, &a), 1);
    cr_assert_str_eq(i, "/bin/bash");
    cr_assert_null(a);
    free(i);
    cr_assert_eq(parse("#! /usr/bin/env python3\n", &i, &a), 1);
    cr_assert_str_eq(i, "/usr/bin/env");
    cr_assert_str_eq(a, "python3");
    free(i);
    free(a);
    /* like the kernel: everything after the interpreter is ONE argument */
    cr_assert_eq(parse("#!/bin/bash -eu  -x \t\n", &i, &a), 1);
    cr_assert_str_eq(i, "/bin/bash");
    cr_assert_str_eq(a, "-eu  -x");
    free(i);
    free(a);
}

Test(plugin, shebang_crlf_none_empty_and_too_long)
{
    char *i, *a;
    cr_assert_eq(parse("#!/bin/sh\r\nx\r\n", &i, &a), 1);
    cr_assert_str_eq(i, "/bin/sh");
    cr_assert_null(a);
    free(i);
    cr_assert_eq(parse("#!/bin/sh", &i, &a), 1, "EOF ends the line");
    free(i);
    cr_assert_eq(parse("print('hi')\n", &i, &a), 0);
    cr_assert_eq(parse("", &i, &a), 0);
    cr_assert_eq(parse("#!  \n", &i, &a), -ENOEXEC);
    char longline[PLUGIN_SHEBANG_MAX + 10];
    memset(longline, 'x', sizeof(longline));
    memcpy(longline, "#!/", 3);
    cr_assert_eq(plugin_shebang_parse(longline, PLUGIN_SHEBANG_MAX, &i, &a), -ENAMETOOLONG);
}

/* ---------- interpreter lookup ---------- */

Test(plugin, which_searches_path_and_checks_exec_bit, .init = mk_tmpdir, .fini = rm_tree)
{
    mk_dir("bin1");
    mk_dir("bin2");
    write_file("bin1/tool", "", 0644); /* not executable: skipped */
    write_file("bin2/tool", "", 0755);
    char path[PATH_MAX * 2];
    snprintf(path, sizeof(path), "%s:%s", at("bin1"), at("bin2"));
    char *w = plugin_which("tool", path);
    cr_assert_str_eq(w, at("bin2/tool"));
    free(w);
    cr_assert_null(plugin_which("nosuch", path));
    cr_assert_null(plugin_which(at("bin1/tool"), path));
    w = plugin_which(at("bin2/tool"), "");
    cr_assert_str_eq(w, at("bin2/tool"));
    free(w);
    cr_assert_null(plugin_which(at("bin2"), path), "a directory is not an interpreter");
}

static char *fake_path(void)
{
    /* bin/ holds python3, python and bash stand-ins */
    mk_dir("bin");
    write_file("bin/python3", "", 0755);
    write_file("bin/python", "", 0755);
    write_file("bin/bash", "", 0755);
    return at("bin");
}

Test(plugin, resolve_prefers_python3_without_shebang, .init = mk_tmpdir, .fini = rm_tree)
{
    char *path = strdup(fake_path());
    write_file("p.py", "print(1)\n", 0644);
    struct plugin_cmd c;
    char *why;
    cr_assert_eq(plugin_resolve(at("p.py"), path, &c, &why), 0);
    cr_assert_str_eq(c.interp, at("bin/python3"));
    cr_assert_eq(c.n_args, 0);
    plugin_cmd_free(&c);
    write_file("s.SH", "echo\n", 0644);
    cr_assert_eq(plugin_resolve(at("s.SH"), path, &c, &why), 0);
    cr_assert_str_eq(c.interp, at("bin/bash"));
    plugin_cmd_free(&c);
    free(path);
}

Test(plugin, resolve_env_shebang_runs_the_named_interpreter, .init = mk_tmpdir, .fini = rm_tree)
{
    char *path = strdup(fake_path());
    write_file("e.py", "#!/usr/bin/env python3\n", 0644);
    write_file("s.py", "#!/usr/bin/env -S python -u -B\n", 0644);
    struct plugin_cmd c;
    char *why;
    cr_assert_eq(plugin_resolve(at("e.py"), path, &c, &why), 0);
    cr_assert_str_eq(c.interp, at("bin/python3"));
    cr_assert_eq(c.n_args, 0);
    plugin_cmd_free(&c);
    cr_assert_eq(plugin_resolve(at("s.py"), path, &c, &why), 0);
    cr_assert_str_eq(c.interp, at("bin/python"));
    cr_assert_eq(c.n_args, 2);
    cr_assert_str_eq(c.args[0], "-u");
    cr_assert_str_eq(c.args[1], "-B");
    cr_assert_null(c.args[2]);
    plugin_cmd_free(&c);
    free(path);
}

Test(plugin, resolve_shebang_with_argument_and_any_extension, .init = mk_tmpdir, .fini = rm_tree)
{
    char *path = strdup(fake_path());
    char text[PATH_MAX + 32];
    snprintf(text, sizeof(text), "#!%s -eu\r\n", at("bin/bash"));
    write_file("tool.run", text, 0644);
    struct plugin_cmd c;
    char *why;
    cr_assert_eq(plugin_resolve(at("tool.run"), path, &c, &why), 0);
    cr_assert_str_eq(c.interp, at("bin/bash"));
    cr_assert_eq(c.n_args, 1);
    cr_assert_str_eq(c.args[0], "-eu");
    plugin_cmd_free(&c);
    free(path);
}

Test(plugin, resolve_reports_why_nothing_can_run, .init = mk_tmpdir, .fini = rm_tree)
{
    mk_dir("empty");
    write_file("notes.txt", "hello\n", 0644);
    write_file("p.py", "#!/no/such/python\n", 0644);
    struct plugin_cmd c;
    char *why;
    cr_assert_eq(plugin_resolve(at("notes.txt"), at("empty"), &c, &why), -ENOEXEC);
    cr_assert_not_null(strstr(why, "'.txt'"), "%s", why);
    free(why);
    cr_assert_eq(plugin_resolve(at("p.py"), at("empty"), &c, &why), -ENOENT);
    cr_assert_not_null(strstr(why, "/no/such/python not found"), "%s", why);
    cr_assert_not_null(strstr(why, "No valid interpreter found"), "%s", why);
    free(why);
}

Test(plugin, resolve_missing_shebang_interpreter_falls_back, .init = mk_tmpdir, .fini = rm_tree)
{
    char *path = strdup(fake_path());
    write_file("p.py", "#!/no/such/python2\n", 0644);
    struct plugin_cmd c;
    char *why;
    cr_assert_eq(plugin_resolve(at("p.py"), path, &c, &why), 0);
    cr_assert_str_eq(c.interp, at("bin/python3"));
    plugin_cmd_free(&c);
    free(path);
}

/* ---------- restart policy ---------- */

Test(plugin, restart_parse_and_names_round_trip)
{
    enum plugin_restart r;
    cr_assert_eq(plugin_restart_parse("on-failure", &r), 0);
    cr_assert_eq(r, PLUGIN_RESTART_ON_FAILURE);
    cr_assert_str_eq(plugin_restart_name(r), "on-failure");
    cr_assert_eq(plugin_restart_parse("always", &r), 0);
    cr_assert_str_eq(plugin_restart_name(r), "always");
    cr_assert_eq(plugin_restart_parse("never", &r), 0);
    cr_assert_eq(r, PLUGIN_RESTART_NEVER);
    cr_assert_eq(plugin_restart_parse("sometimes", &r), -EINVAL);
    cr_assert_eq(plugin_restart_parse(NULL, &r), -EINVAL);
}

Test(plugin, restart_policy_follows_systemd_clean_signals)
{
    cr_assert(!plugin_wants_restart(PLUGIN_RESTART_NEVER, 1, false));
    cr_assert(!plugin_wants_restart(PLUGIN_RESTART_NEVER, 0, true));
    cr_assert(plugin_wants_restart(PLUGIN_RESTART_ALWAYS, 0, false));
    cr_assert(!plugin_wants_restart(PLUGIN_RESTART_ON_FAILURE, 0, false));
    cr_assert(plugin_wants_restart(PLUGIN_RESTART_ON_FAILURE, 3, false));
    cr_assert(plugin_wants_restart(PLUGIN_RESTART_ON_FAILURE, 0, true));
    cr_assert(plugin_wants_restart(PLUGIN_RESTART_ON_FAILURE, -SIGSEGV, false));
    cr_assert(plugin_wants_restart(PLUGIN_RESTART_ON_FAILURE, -SIGKILL, false));
    cr_assert(!plugin_wants_restart(PLUGIN_RESTART_ON_FAILURE, -SIGTERM, false));
    cr_assert(!plugin_wants_restart(PLUGIN_RESTART_ON_FAILURE, -SIGINT, false));
    cr_assert(!plugin_wants_restart(PLUGIN_RESTART_ON_FAILURE, -SIGHUP, false));
    cr_assert(!plugin_wants_restart(PLUGIN_RESTART_ON_FAILURE, -SIGPIPE, false));
}

Test(plugin, backoff_doubles_from_one_second_to_sixty)
{
    cr_assert_eq(plugin_backoff_ms(0), 1000);
    cr_assert_eq(plugin_backoff_ms(1), 2000);
    cr_assert_eq(plugin_backoff_ms(5), 32000);
    cr_assert_eq(plugin_backoff_ms(6), 60000);
    cr_assert_eq(plugin_backoff_ms(1000), 60000);
}

/* A fake clock: the throttle is fed times, never reads one. */
Test(plugin, throttle_fails_after_max_restarts_in_window)
{
    struct plugin_throttle t;
    cr_assert_eq(plugin_throttle_init(&t, 3, 600000), 0);
    uint64_t now = 1000000;
    int64_t expect[] = { 1000, 2000, 4000 };
    for (int i = 0; i < 3; i++) {
        int64_t d = plugin_throttle_next(&t, now, 100); /* crashed after 100 ms */
        cr_assert_eq(d, expect[i], "restart %d: %lld", i, (long long)d);
        now += (uint64_t)d;
        plugin_throttle_record(&t, now);
    }
    cr_assert_eq(plugin_throttle_count(&t, now), 3);
    cr_assert_eq(plugin_throttle_next(&t, now + 100, 100), -1, "4th restart in 600 s refused");
    /* once the window has slid past the first restarts, starts are allowed again */
    now += 600000;
    cr_assert_eq(plugin_throttle_count(&t, now), 0);
    cr_assert_eq(plugin_throttle_next(&t, now, 100), 8000, "the streak still grows");
    plugin_throttle_free(&t);
}

Test(plugin, throttle_stable_run_resets_backoff)
{
    struct plugin_throttle t;
    cr_assert_eq(plugin_throttle_init(&t, 100, 600000), 0);
    uint64_t now = 5000;
    for (int i = 0; i < 4; i++) {
        now += (uint64_t)plugin_throttle_next(&t, now, 10);
        plugin_throttle_record(&t, now);
    }
    cr_assert_eq(plugin_throttle_next(&t, now, 10), 16000);
    cr_assert_eq(plugin_throttle_next(&t, now, PLUGIN_STABLE_MS), 1000, "stayed up 10 s");
    plugin_throttle_reset(&t);
    cr_assert_eq(plugin_throttle_count(&t, now), 0);
    plugin_throttle_free(&t);
}

Test(plugin, throttle_zero_max_never_restarts)
{
    struct plugin_throttle t;
    cr_assert_eq(plugin_throttle_init(&t, 0, 600000), 0);
    cr_assert_eq(plugin_throttle_next(&t, 1, 0), -1);
    plugin_throttle_free(&t);
}

/* ---------- output lines ---------- */

struct got {
    char lines[16][PLUGIN_LINE_MAX + 8];
    unsigned flags[16];
    size_t len[16];
    int n;
};

static void collect(void *ctx, const char *line, size_t len, unsigned flags)
{
    struct got *g = ctx;
    cr_assert_lt(g->n, 16);
    cr_assert_leq(len, PLUGIN_LINE_MAX);
    memcpy(g->lines[g->n], line, len);
    g->lines[g->n][len] = '\0';
    g->len[g->n] = len;
    g->flags[g->n++] = flags;
}

static struct got *feed_all(const char *s, size_t n, size_t step)
{
    static struct got g;
    memset(&g, 0, sizeof(g));
    struct plugin_lines lb;
    plugin_lines_init(&lb);
    for (size_t i = 0; i < n; i += step)
        plugin_lines_feed(&lb, s + i, n - i < step ? n - i : step, collect, &g);
    plugin_lines_flush(&lb, collect, &g);
    return &g;
}

Test(plugin, lines_universal_newlines_strip_and_last_partial)
{
    const char in[] = "  one  \r\ntwo\rthree\n\n\tfour";
    for (size_t step = 1; step <= sizeof(in); step++) { /* any read boundary */
        struct got *g = feed_all(in, sizeof(in) - 1, step);
        cr_assert_eq(g->n, 5, "step %zu: %d lines", step, g->n);
        cr_assert_str_eq(g->lines[0], "one");
        cr_assert_str_eq(g->lines[1], "two");
        cr_assert_str_eq(g->lines[2], "three");
        cr_assert_str_eq(g->lines[3], "");
        cr_assert_str_eq(g->lines[4], "four");
    }
}

Test(plugin, lines_escape_invalid_utf8_and_controls)
{
    const char in[] = "ok \xc3\xa9 \xe2\x82\xac \xff\xc3 \x1b[31mred\x7f \xc2\x85 \xed\xa0\x80|\xf0\x9f\x98\x80\n";
    for (size_t step = 1; step <= 4; step++) {
        struct got *g = feed_all(in, sizeof(in) - 1, step);
        cr_assert_eq(g->n, 1);
        cr_assert_str_eq(g->lines[0],
                         "ok \xc3\xa9 \xe2\x82\xac \\xff\\xc3 \\x1b[31mred\\x7f \\u0085 "
                         "\\xed\\xa0\\x80|\xf0\x9f\x98\x80",
                         "step %zu: %s", step, g->lines[0]);
    }
}

Test(plugin, lines_long_line_is_cut_on_char_boundaries)
{
    size_t n = PLUGIN_LINE_MAX * 2 + 100;
    char *in = malloc(n + 1);
    memset(in, 'a', n);
    /* a 2-byte character straddling the first cut point */
    in[PLUGIN_LINE_MAX - 1] = (char)0xc3;
    in[PLUGIN_LINE_MAX] = (char)0xa9;
    in[n] = '\n';
    struct got *g = feed_all(in, n + 1, 1000);
    cr_assert_eq(g->n, 3);
    cr_assert_eq(g->flags[0], PLUGIN_LINE_CUT);
    cr_assert_eq(g->flags[1], PLUGIN_LINE_CUT | PLUGIN_LINE_CONT);
    cr_assert_eq(g->flags[2], PLUGIN_LINE_CONT);
    cr_assert_eq(g->len[0], PLUGIN_LINE_MAX - 1, "the character moved to the next piece");
    cr_assert_eq((unsigned char)g->lines[1][0], 0xc3);
    cr_assert_eq(g->len[0] + g->len[1] + g->len[2], n);
    free(in);
}

Test(plugin, lines_exactly_max_is_one_piece)
{
    char in[PLUGIN_LINE_MAX + 1];
    memset(in, 'b', PLUGIN_LINE_MAX);
    in[PLUGIN_LINE_MAX] = '\n';
    struct got *g = feed_all(in, sizeof(in), sizeof(in));
    cr_assert_eq(g->n, 1);
    cr_assert_eq(g->flags[0], 0);
    cr_assert_eq(g->len[0], PLUGIN_LINE_MAX);
}

/* ---------- environment and config file ---------- */

static const char *env_get(char **env, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; env[i]; i++)
        if (strncmp(env[i], name, n) == 0 && env[i][n] == '=')
            return env[i] + n + 1;
    return NULL;
}

Test(plugin, envp_sets_lmcache_variables_and_overrides_inherited)
{
    char *base[] = { "PATH=/bin", "LMCACHE_RUNTIME_PLUGIN_ROLE=SERVER", "PYTHONUNBUFFERED=0",
                     "HOME=/root", NULL };
    bool omitted = true;
    char **env = plugin_envp_build(base, "{\"a\": 1}", "/tmp/cfg", &omitted);
    cr_assert_not_null(env);
    cr_assert(!omitted);
    cr_assert_str_eq(env_get(env, "PATH"), "/bin");
    cr_assert_str_eq(env_get(env, "HOME"), "/root");
    cr_assert_str_eq(env_get(env, "LMCACHE_RUNTIME_PLUGIN_ROLE"), "");
    cr_assert_str_eq(env_get(env, "LMCACHE_PLUGIN_ROLE"), "");
    cr_assert_str_eq(env_get(env, "LMCACHE_RUNTIME_PLUGIN_CONFIG"), "{\"a\": 1}");
    cr_assert_str_eq(env_get(env, "LMCACHE_PLUGIN_CONFIG"), "{\"a\": 1}");
    cr_assert_str_eq(env_get(env, "LMCACHE_RUNTIME_PLUGIN_WORKER_COUNT"), "1");
    cr_assert_str_eq(env_get(env, "LMCACHE_PLUGIN_WORKER_ID"), "0");
    cr_assert_str_eq(env_get(env, "PYTHONUNBUFFERED"), "1");
    cr_assert_str_eq(env_get(env, "LMCACHE_RUNTIME_PLUGIN_CONFIG_FILE"), "/tmp/cfg");
    size_t roles = 0;
    for (size_t i = 0; env[i]; i++)
        roles += strncmp(env[i], "LMCACHE_RUNTIME_PLUGIN_ROLE=", 28) == 0;
    cr_assert_eq(roles, 1, "the inherited value is replaced, not duplicated");
    plugin_envp_free(env);
}

Test(plugin, envp_leaves_out_oversized_config_when_a_file_carries_it)
{
    size_t n = PLUGIN_ENV_CONFIG_MAX + 10;
    char *big = malloc(n + 1);
    memset(big, 'x', n);
    big[n] = '\0';
    char *base[] = { "LMCACHE_PLUGIN_CONFIG=stale", NULL };
    bool omitted = false;
    char **env = plugin_envp_build(base, big, "/tmp/cfg", &omitted);
    cr_assert(omitted);
    cr_assert_null(env_get(env, "LMCACHE_RUNTIME_PLUGIN_CONFIG"));
    cr_assert_null(env_get(env, "LMCACHE_PLUGIN_CONFIG"), "no stale inherited copy either");
    cr_assert_str_eq(env_get(env, "LMCACHE_RUNTIME_PLUGIN_CONFIG_FILE"), "/tmp/cfg");
    plugin_envp_free(env);
    env = plugin_envp_build(base, big, NULL, &omitted);
    cr_assert(!omitted, "without a file the variable is the only way");
    cr_assert_not_null(env_get(env, "LMCACHE_RUNTIME_PLUGIN_CONFIG"));
    plugin_envp_free(env);
    free(big);
}

Test(plugin, config_file_is_private_and_holds_the_json)
{
    int lfd;
    char *p = plugin_config_file_write("{\"k\": \"v\"}", &lfd);
    cr_assert_not_null(p);
    cr_assert_geq(lfd, 0);
    struct stat st;
    cr_assert_eq(stat(p, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0600);
    char buf[64] = { 0 };
    int fd = open(p, O_RDONLY);
    cr_assert_eq(read(fd, buf, sizeof(buf) - 1), 10);
    close(fd);
    cr_assert_str_eq(buf, "{\"k\": \"v\"}");
    unlink(p);
    close(lfd);
    free(p);
}

/* issue 11 item 4: the file of an lmcd that died (its lock is free) is
 * reclaimed by the next one; a file whose owner still holds it is not. */
Test(plugin, stale_config_file_of_a_dead_run_is_reclaimed_live_one_kept)
{
    char dir[] = "/tmp/lmcd-test-runfile-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char *old_tmpdir = getenv("TMPDIR") ? strdup(getenv("TMPDIR")) : NULL;
    setenv("TMPDIR", dir, 1);
    int live_fd, dead_fd, fd3;
    char *live = plugin_config_file_write("{}", &live_fd);
    char *dead = plugin_config_file_write("{}", &dead_fd);
    cr_assert(live && dead);
    close(dead_fd); /* its owner is gone: the lock is free */
    cr_assert_eq(plugin_reclaim_stale_files(), 1);
    char *fresh = plugin_config_file_write("{}", &fd3);
    cr_assert_not_null(fresh);
    cr_assert_eq(access(dead, F_OK), -1, "the dead run's file is gone");
    cr_assert_eq(access(live, F_OK), 0, "a live owner's file stays");
    unlink(live);
    unlink(fresh);
    close(live_fd);
    close(fd3);
    rmdir(dir);
    if (old_tmpdir)
        setenv("TMPDIR", old_tmpdir, 1);
    else
        unsetenv("TMPDIR");
    free(old_tmpdir);
    free(live);
    free(dead);
    free(fresh);
}

/* ---------- launches (plugin_spawn.c, plugin_guard.c) ---------- */

/* Polls one pending launch until it settles (bounded: 20 s of waits on its
 * report pipe). Returns plugin_proc_launch_poll's final result. */
static int launch_wait(struct plugin_proc *p)
{
    for (int i = 0; i < 20; i++) {
        int rc = plugin_proc_launch_poll(p);
        if (rc != 1)
            return rc;
        struct pollfd pf = { .fd = p->rep_fd, .events = POLLIN };
        (void)poll(&pf, 1, 1000);
    }
    return 1;
}

/* Many launches started before any is waited for (as the supervisor does):
 * each settles with its own result, through the zygote and through an
 * exec'd guard alike, and a launched plugin's status comes back through its
 * guard's pidfd. */
Test(plugin, overlapping_launches_each_report_their_own_result, .init = mk_tmpdir, .fini = rm_tree)
{
    write_file("bad", "neither ELF nor a script\n", 0755);
    char *bad = strdup(at("bad"));
    char *envp[] = { "PATH=/usr/bin:/bin", NULL };
    char *ok_argv[] = { "/bin/sh", "-c", "exit 3", NULL };
    char *noexec_argv[] = { bad, NULL };
    char *missing_argv[] = { "/no/such/interpreter", NULL };
    char **argvs[] = { ok_argv, noexec_argv, ok_argv, missing_argv };
    const int want[] = { 0, -ENOEXEC, 0, -ENOENT };
    enum { N = 12 };
    for (int mode = 0; mode < 2; mode++) {
        struct plugin_zygote z = PLUGIN_ZYGOTE_INIT;
        struct plugin_zygote *zp = mode == 0 ? &z : NULL; /* NULL: exec each guard */
        struct plugin_proc p[N];
        for (int i = 0; i < N; i++)
            cr_assert_eq(plugin_proc_start(zp, argvs[i % 4], envp, 1000, &p[i]), 0, "mode %d launch %d", mode, i);
        for (int i = 0; i < N; i++) {
            int rc = launch_wait(&p[i]);
            cr_assert_eq(rc, want[i % 4], "mode %d launch %d: %d (%s)", mode, i, rc, strerror(-rc));
            plugin_proc_rep_close(&p[i]);
            if (rc < 0) {
                cr_assert(p[i].pidfd < 0 && p[i].out_fd < 0 && p[i].pid == 0, "a failed launch leaves nothing");
                continue;
            }
            cr_assert(p[i].pid > 0 && p[i].pidfd >= 0 && p[i].out_fd >= 0);
            siginfo_t si;
            memset(&si, 0, sizeof(si));
            cr_assert_eq(waitid(P_PIDFD, (id_t)p[i].pidfd, &si, WEXITED), 0, "%s", strerror(errno));
            cr_assert(si.si_code == CLD_EXITED && si.si_status == 3, "the guard exits as its plugin did");
            close(p[i].pidfd);
            close(p[i].out_fd);
        }
        if (zp) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
            cr_assert_eq(z.pid, 0, "sanitizer builds exec every guard");
#else
            cr_assert(!z.off && z.pid > 0, "the zygote cloned the guards");
#endif
            plugin_zygote_stop(&z);
            cr_assert(z.pid == 0 && z.sock < 0 && z.pidfd < 0);
        }
    }
    free(bad);
}
