/*
 * log: LMCache's log line format, safe from any thread.
 *
 *   [2026-04-07 16:25:48,567] LMCache INFO: <message> (<file>:<line>:<module>)
 *
 * Every line is formatted into one buffer and written with one write(2) per
 * sink (stderr, and the --log-file if set), so lines from many threads never
 * interleave. The level prefix is coloured only when stderr is a terminal.
 * Messages longer than LOG_LINE_MAX are cut and end in "...".
 *
 * Each .c file that logs defines LOG_MODULE (e.g. "lmcd.plugin") before
 * including this header; the default is "lmcd".
 *
 * Threads: log_init() and log_set_file() run in main() before any thread
 * starts; everything else may be called from any thread.
 */
#ifndef LMCD_UTIL_LOG_H
#define LMCD_UTIL_LOG_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

enum log_level { LOG_DEBUG = 10, LOG_INFO = 20, LOG_WARNING = 30, LOG_ERROR = 40, LOG_CRITICAL = 50 };

#define LOG_LINE_MAX 8192

/* Parses "DEBUG", "info", "WARNING", "WARN", "ERROR", "CRITICAL" (any case).
 * Returns 0 and sets *out, or -EINVAL. */
int log_level_parse(const char *s, enum log_level *out);
const char *log_level_name(enum log_level lvl);

/* Sets the threshold (from LMCACHE_LOG_LEVEL or --log-level). */
void log_set_level(enum log_level lvl);
enum log_level log_get_level(void);
/* Opens (append) an extra sink; NULL closes it. 0 or -errno. */
int log_set_file(const char *path);
/* Forces colour on or off (tests); by default: isatty(stderr). */
void log_set_color(int on);

void log_emit(enum log_level lvl, const char *file, int line, const char *module,
              const char *fmt, ...) __attribute__((format(printf, 5, 6)));
void log_vemit(enum log_level lvl, const char *file, int line, const char *module,
               const char *fmt, va_list ap);
/* Logs msg verbatim (no format), e.g. a relayed plugin line. */
void log_emit_raw(enum log_level lvl, const char *file, int line, const char *module,
                  const char *msg, size_t len);

#ifndef LOG_MODULE
#define LOG_MODULE "lmcd"
#endif

#define LOG__FILE (__builtin_strrchr(__FILE__, '/') ? __builtin_strrchr(__FILE__, '/') + 1 : __FILE__)
#define log_at(lvl, ...)                                                        \
    do {                                                                       \
        if ((lvl) >= log_get_level())                                          \
            log_emit((lvl), LOG__FILE, __LINE__, LOG_MODULE, __VA_ARGS__);     \
    } while (0)
#define log_debug(...) log_at(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_at(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_at(LOG_WARNING, __VA_ARGS__)
#define log_error(...) log_at(LOG_ERROR, __VA_ARGS__)

/*
 * Rate limiting for messages that bad input can trigger: at most `burst`
 * lines per `interval_ms` for one limiter; the rest are counted and the
 * next line that passes says how many were suppressed. A limiter is a
 * small struct the caller owns (static, or one per peer); thread-safe.
 */
struct log_ratelimit {
    uint64_t window_start_ms; /* guarded by lock */
    uint32_t interval_ms;
    uint32_t burst;
    uint32_t count;      /* guarded by lock: lines in this window */
    uint32_t suppressed; /* guarded by lock */
    int lock;            /* spinlock word, see log.c */
};
#define LOG_RATELIMIT_INIT(ms, n) { 0, (ms), (n), 0, 0, 0 }

/* Returns 1 when a line may be written now; *suppressed gets the number of
 * lines dropped since the last one that passed. */
int log_ratelimit_ok(struct log_ratelimit *rl, uint64_t now_ms, uint32_t *suppressed);

#define log_rl(rl, lvl, fmt, ...)                                                  \
    do {                                                                          \
        uint32_t log__supp;                                                       \
        if ((lvl) >= log_get_level() &&                                           \
            log_ratelimit_ok((rl), clock_mono_ms(), &log__supp)) {                \
            if (log__supp)                                                        \
                log_emit((lvl), LOG__FILE, __LINE__, LOG_MODULE,                  \
                         fmt " (%u similar messages suppressed)", ##__VA_ARGS__,  \
                         log__supp);                                              \
            else                                                                  \
                log_emit((lvl), LOG__FILE, __LINE__, LOG_MODULE, fmt, ##__VA_ARGS__); \
        }                                                                         \
    } while (0)

#include "util/clock.h"

#endif
