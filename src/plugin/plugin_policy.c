/*
 * Plugin restart policy: when to restart, how long to wait, when to give up.
 *
 * Modelled on systemd (Restart=on-failure: a non-zero exit or an unclean
 * signal; StartLimitBurst/IntervalSec) and supervisord (BACKOFF with a
 * growing delay, FATAL after too many). Time is passed in, never read, so
 * the unit tests drive it with a fake clock.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "plugin/plugin_int.h"

int plugin_restart_parse(const char *s, enum plugin_restart *out)
{
    static const struct { const char *name; enum plugin_restart r; } names[] = {
        { "never", PLUGIN_RESTART_NEVER },
        { "on-failure", PLUGIN_RESTART_ON_FAILURE },
        { "always", PLUGIN_RESTART_ALWAYS },
    };
    for (size_t i = 0; s && i < sizeof(names) / sizeof(names[0]); i++) {
        if (strcmp(s, names[i].name) == 0) {
            *out = names[i].r;
            return 0;
        }
    }
    return -EINVAL;
}

const char *plugin_restart_name(enum plugin_restart r)
{
    switch (r) {
    case PLUGIN_RESTART_ON_FAILURE: return "on-failure";
    case PLUGIN_RESTART_ALWAYS: return "always";
    default: return "never";
    }
}

void plugin_opts_init(struct plugin_opts *o)
{
    *o = (struct plugin_opts){
        .restart = PLUGIN_RESTART_NEVER,
        .max_restarts = PLUGIN_DEFAULT_MAX_RESTARTS,
        .restart_window_s = PLUGIN_DEFAULT_RESTART_WINDOW_S,
        .stop_timeout_ms = PLUGIN_DEFAULT_STOP_TIMEOUT_MS,
    };
}

bool plugin_exit_is_failure(int code)
{
    if (code >= 0)
        return code != 0;
    int sig = -code;
    /* systemd's "clean" signals: a deliberate stop, not a crash */
    return !(sig == SIGTERM || sig == SIGINT || sig == SIGHUP || sig == SIGPIPE);
}

bool plugin_wants_restart(enum plugin_restart r, int code, bool spawn_failed)
{
    switch (r) {
    case PLUGIN_RESTART_ALWAYS: return true;
    case PLUGIN_RESTART_ON_FAILURE: return spawn_failed || plugin_exit_is_failure(code);
    default: return false;
    }
}

uint64_t plugin_backoff_ms(unsigned attempt)
{
    uint64_t d = PLUGIN_BACKOFF_MIN_MS;
    for (unsigned i = 0; i < attempt && d < PLUGIN_BACKOFF_MAX_MS; i++)
        d *= 2;
    return d < PLUGIN_BACKOFF_MAX_MS ? d : PLUGIN_BACKOFF_MAX_MS;
}

int plugin_throttle_init(struct plugin_throttle *t, unsigned max, uint64_t window_ms)
{
    memset(t, 0, sizeof(*t));
    t->max = max;
    t->window_ms = window_ms;
    if (max && !(t->t = calloc(max, sizeof(*t->t))))
        return -ENOMEM;
    return 0;
}

void plugin_throttle_free(struct plugin_throttle *t)
{
    free(t->t);
    t->t = NULL;
}

void plugin_throttle_reset(struct plugin_throttle *t)
{
    t->n = t->head = 0;
    t->streak = 0;
}

unsigned plugin_throttle_count(const struct plugin_throttle *t, uint64_t now_ms)
{
    unsigned c = 0;
    for (unsigned i = 0; i < t->n; i++) {
        uint64_t ts = t->t[(t->head + t->max - 1 - i) % t->max];
        if (now_ms - ts < t->window_ms)
            c++;
    }
    return c;
}

int64_t plugin_throttle_next(struct plugin_throttle *t, uint64_t now_ms, uint64_t ran_ms)
{
    if (ran_ms >= PLUGIN_STABLE_MS)
        t->streak = 0;
    if (plugin_throttle_count(t, now_ms) >= t->max)
        return -1;
    return (int64_t)plugin_backoff_ms(t->streak);
}

void plugin_throttle_record(struct plugin_throttle *t, uint64_t now_ms)
{
    t->streak++;
    if (!t->max)
        return;
    t->t[t->head] = now_ms;
    t->head = (t->head + 1) % t->max;
    if (t->n < t->max)
        t->n++;
}
