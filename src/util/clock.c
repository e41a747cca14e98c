#include "util/clock.h"

#include <time.h>

static uint64_t ts_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t clock_mono_ns(void) { return ts_ns(CLOCK_MONOTONIC); }
uint64_t clock_mono_ms(void) { return ts_ns(CLOCK_MONOTONIC) / 1000000ull; }
uint64_t clock_wall_ns(void) { return ts_ns(CLOCK_REALTIME); }

static uint64_t mono_now(void *ctx)
{
    (void)ctx;
    return clock_mono_ns();
}

const struct clock_src clock_monotonic = { mono_now, 0 };
