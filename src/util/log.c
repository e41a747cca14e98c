#include "util/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

/*
 * Global logger state. It is process-wide by nature (one stderr); each field
 * is an atomic so any thread may log without a lock. The file descriptor is
 * swapped only by log_set_file(), which runs before threads start or at exit.
 */
static int g_level = LOG_INFO;   /* atomic */
static int g_color = -1;         /* atomic; -1 = decide from isatty(2) */
static int g_file_fd = -1;       /* atomic */

static const struct { const char *name; enum log_level lvl; const char *color; } levels[] = {
    { "DEBUG", LOG_DEBUG, "\033[34;20m" },
    { "INFO", LOG_INFO, "\033[32;20m" },
    { "WARNING", LOG_WARNING, "\033[33;20m" },
    { "ERROR", LOG_ERROR, "\033[31;20m" },
    { "CRITICAL", LOG_CRITICAL, "\033[31;1m" },
};

int log_level_parse(const char *s, enum log_level *out)
{
    if (!s)
        return -EINVAL;
    for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++) {
        if (!strcasecmp(s, levels[i].name)) {
            *out = levels[i].lvl;
            return 0;
        }
    }
    if (!strcasecmp(s, "WARN")) {
        *out = LOG_WARNING;
        return 0;
    }
    return -EINVAL;
}

static int level_index(enum log_level lvl)
{
    for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++)
        if (levels[i].lvl == lvl)
            return (int)i;
    return 1;
}

const char *log_level_name(enum log_level lvl) { return levels[level_index(lvl)].name; }

void log_set_level(enum log_level lvl) { __atomic_store_n(&g_level, (int)lvl, __ATOMIC_RELAXED); }
enum log_level log_get_level(void) { return (enum log_level)__atomic_load_n(&g_level, __ATOMIC_RELAXED); }
void log_set_color(int on) { __atomic_store_n(&g_color, on ? 1 : 0, __ATOMIC_RELAXED); }

int log_set_file(const char *path)
{
    int fd = -1;
    if (path) {
        fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd < 0)
            return -errno;
    }
    int old = __atomic_exchange_n(&g_file_fd, fd, __ATOMIC_ACQ_REL);
    if (old >= 0)
        close(old);
    return 0;
}

static int use_color(void)
{
    int c = __atomic_load_n(&g_color, __ATOMIC_RELAXED);
    if (c < 0) {
        c = isatty(STDERR_FILENO) ? 1 : 0;
        __atomic_store_n(&g_color, c, __ATOMIC_RELAXED);
    }
    return c;
}

/* Writes all of buf; a short write to a pipe or file is retried, EINTR too. */
static void write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return; /* nowhere left to report a logging failure */
        }
        buf += n;
        len -= (size_t)n;
    }
}

static size_t fmt_prefix(char *buf, size_t cap, enum log_level lvl, int color)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    localtime_r(&ts.tv_sec, &tm);
    char date[32];
    strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm);
    int i = level_index(lvl);
    int n;
    if (color)
        n = snprintf(buf, cap, "[%s,%03ld] LMCache %s%s\033[0m: ", date, ts.tv_nsec / 1000000,
                     levels[i].color, levels[i].name);
    else
        n = snprintf(buf, cap, "[%s,%03ld] LMCache %s: ", date, ts.tv_nsec / 1000000, levels[i].name);
    return n < 0 ? 0 : (size_t)n;
}

static void emit(enum log_level lvl, const char *file, int line, const char *module,
                 const char *msg, size_t msglen)
{
    char buf[LOG_LINE_MAX + 512];
    const size_t cap = sizeof(buf);
    int color = use_color();
    size_t off = fmt_prefix(buf, cap, lvl, color);
    if (msglen > LOG_LINE_MAX) {
        memcpy(buf + off, msg, LOG_LINE_MAX - 3);
        memcpy(buf + off + LOG_LINE_MAX - 3, "...", 3);
        off += LOG_LINE_MAX;
    } else {
        memcpy(buf + off, msg, msglen);
        off += msglen;
    }
    int n = snprintf(buf + off, cap - off, color ? " \033[3m(%s:%d:%s)\033[0m\n" : " (%s:%d:%s)\n",
                     file, line, module);
    off += (n < 0 || (size_t)n >= cap - off) ? 0 : (size_t)n;
    if (off == 0 || buf[off - 1] != '\n') { /* trailer did not fit: end the line anyway */
        if (off >= cap)
            off = cap - 1;
        buf[off++] = '\n';
    }
    write_all(STDERR_FILENO, buf, off);
    int fd = __atomic_load_n(&g_file_fd, __ATOMIC_ACQUIRE);
    if (fd >= 0) {
        if (color) { /* the file never gets colour codes: re-format plainly */
            off = fmt_prefix(buf, cap, lvl, 0);
            size_t m = msglen > LOG_LINE_MAX ? LOG_LINE_MAX : msglen;
            memcpy(buf + off, msg, m);
            off += m;
            n = snprintf(buf + off, cap - off, " (%s:%d:%s)\n", file, line, module);
            off += (n < 0 || (size_t)n >= cap - off) ? 0 : (size_t)n;
        }
        write_all(fd, buf, off);
    }
}

void log_vemit(enum log_level lvl, const char *file, int line, const char *module,
               const char *fmt, va_list ap)
{
    char msg[LOG_LINE_MAX + 1];
    int n = vsnprintf(msg, sizeof(msg), fmt, ap);
    if (n < 0)
        return;
    size_t len = (size_t)n;
    if (len > LOG_LINE_MAX) { /* mark the cut: emit() only cuts what exceeds the limit */
        memcpy(msg + LOG_LINE_MAX - 3, "...", 3);
        len = LOG_LINE_MAX;
    }
    emit(lvl, file, line, module, msg, len);
}

void log_emit(enum log_level lvl, const char *file, int line, const char *module,
              const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vemit(lvl, file, line, module, fmt, ap);
    va_end(ap);
}

void log_emit_raw(enum log_level lvl, const char *file, int line, const char *module,
                  const char *msg, size_t len)
{
    if (lvl < log_get_level())
        return;
    emit(lvl, file, line, module, msg, len);
}

static void spin_lock(int *l)
{
    while (__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE))
        while (__atomic_load_n(l, __ATOMIC_RELAXED))
            ;
}

static void spin_unlock(int *l) { __atomic_store_n(l, 0, __ATOMIC_RELEASE); }

int log_ratelimit_ok(struct log_ratelimit *rl, uint64_t now_ms, uint32_t *suppressed)
{
    int ok;
    *suppressed = 0;
    spin_lock(&rl->lock);
    if (rl->window_start_ms == 0 || now_ms - rl->window_start_ms >= rl->interval_ms) {
        rl->window_start_ms = now_ms ? now_ms : 1;
        rl->count = 0;
    }
    if (rl->count < rl->burst) {
        rl->count++;
        *suppressed = rl->suppressed;
        rl->suppressed = 0;
        ok = 1;
    } else {
        rl->suppressed++;
        ok = 0;
    }
    spin_unlock(&rl->lock);
    return ok;
}
