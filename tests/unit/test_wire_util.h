/* Helpers shared by the wire unit tests: bytes from the spec's notation. */
#ifndef LMCD_TESTS_TEST_WIRE_UTIL_H
#define LMCD_TESTS_TEST_WIRE_UTIL_H

#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "wire/wire.h"

/* Parses the spec's byte notation: hex bytes and "quoted" raw text,
 * e.g. `81 aa "chunk_size" cd 01 00`. Returns the length. */
static inline size_t spec_bytes(uint8_t *out, size_t cap, const char *s)
{
    size_t n = 0;
    while (*s) {
        if (*s == ' ' || *s == '\n') {
            s++;
        } else if (*s == '"') {
            for (s++; *s && *s != '"'; s++) {
                cr_assert(n < cap);
                out[n++] = (uint8_t)*s;
            }
            s += *s == '"';
        } else {
            unsigned v;
            cr_assert(sscanf(s, "%2x", &v) == 1, "bad spec byte at %s", s);
            cr_assert(n < cap);
            out[n++] = (uint8_t)v;
            s += 2;
        }
    }
    return n;
}

/* A request under construction: frames[i] points into its own storage. */
struct tmsg {
    uint8_t store[16][4096];
    struct wire_frame f[16];
    size_t n;
};

static inline void tmsg_add(struct tmsg *m, const char *spec)
{
    cr_assert(m->n < 16);
    size_t len = spec_bytes(m->store[m->n], sizeof(m->store[0]), spec);
    m->f[m->n].data = m->store[m->n];
    m->f[m->n].len = len;
    m->n++;
}

static inline void assert_bytes(const void *got, size_t got_len, const char *spec)
{
    uint8_t want[4096];
    size_t n = spec_bytes(want, sizeof(want), spec);
    cr_assert_eq(got_len, n, "length %zu, want %zu", got_len, n);
    cr_assert(memcmp(got, want, n) == 0, "bytes differ from %s", spec);
}

#endif
