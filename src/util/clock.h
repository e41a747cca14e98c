/*
 * clock: monotonic and wall time in the units lmcd uses, plus an injectable
 * clock for code whose behaviour depends on time (TTL locks, backoff), so
 * unit tests never sleep.
 */
#ifndef LMCD_UTIL_CLOCK_H
#define LMCD_UTIL_CLOCK_H

#include <stdint.h>

uint64_t clock_mono_ns(void);
uint64_t clock_mono_ms(void);
/* Wall clock, nanoseconds since the epoch. */
uint64_t clock_wall_ns(void);

/* A clock a module reads through; tests pass one with their own now(). */
struct clock_src {
    uint64_t (*now_ns)(void *ctx);
    void *ctx;
};
/* The real monotonic clock. */
extern const struct clock_src clock_monotonic;
static inline uint64_t clock_now_ns(const struct clock_src *c) { return c->now_ns(c->ctx); }

#endif
