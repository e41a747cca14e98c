#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "util/log.h"

Test(log, level_parse_accepts_python_names_any_case)
{
    enum log_level l;
    cr_assert_eq(log_level_parse("debug", &l), 0);
    cr_assert_eq(l, LOG_DEBUG);
    cr_assert_eq(log_level_parse("WARNING", &l), 0);
    cr_assert_eq(l, LOG_WARNING);
    cr_assert_eq(log_level_parse("Warn", &l), 0);
    cr_assert_eq(l, LOG_WARNING);
    cr_assert_eq(log_level_parse("loud", &l), -EINVAL);
}

Test(log, line_has_lmcache_format_in_one_write)
{
    char path[] = "/tmp/lmcd-logtest-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    close(fd);
    log_set_color(0);
    cr_assert_eq(log_set_file(path), 0);
    log_set_level(LOG_INFO);
    log_info("hello %d", 42);
    log_debug("hidden");
    log_set_file(NULL);
    FILE *f = fopen(path, "r");
    char line[512] = { 0 };
    cr_assert(fgets(line, sizeof(line), f));
    cr_assert(!fgets(line + 256, 256, f), "debug line must be filtered");
    fclose(f);
    unlink(path);
    /* [YYYY-MM-DD HH:MM:SS,mmm] LMCache INFO: hello 42 (test_log.c:N:lmcd) */
    cr_assert_eq(line[0], '[');
    cr_assert_eq(line[20], ',');
    cr_assert(strstr(line, "] LMCache INFO: hello 42 (test_log.c:"), "got: %s", line);
    cr_assert(strstr(line, ":lmcd)\n"), "got: %s", line);
}

Test(log, ratelimit_counts_suppressed_lines)
{
    struct log_ratelimit rl = LOG_RATELIMIT_INIT(1000, 2);
    uint32_t s;
    cr_assert(log_ratelimit_ok(&rl, 5000, &s));
    cr_assert(log_ratelimit_ok(&rl, 5001, &s));
    cr_assert(!log_ratelimit_ok(&rl, 5002, &s));
    cr_assert(!log_ratelimit_ok(&rl, 5003, &s));
    cr_assert(log_ratelimit_ok(&rl, 6001, &s));
    cr_assert_eq(s, 2);
}
