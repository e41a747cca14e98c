/*
 * The frame encoding the fuzz drivers share: a length byte L, or 255 and a
 * two-byte big-endian length, then L bytes; a frame whose length runs past
 * the input takes what is left.
 */
#ifndef LMCD_FUZZ_FRAMES_H
#define LMCD_FUZZ_FRAMES_H

#include <stddef.h>
#include <stdint.h>

#include "wire/wire.h"

/* Reads up to `want` frames from *pd and *pn into f, advancing past them. */
static inline size_t fuzz_read_frames(const uint8_t **pd, size_t *pn, size_t want, struct wire_frame *f)
{
    const uint8_t *d = *pd;
    size_t n = *pn, k = 0;
    while (n && k < want) {
        size_t len = d[0], hdr = 1;
        if (len == 255 && n >= 3) {
            len = ((size_t)d[1] << 8) | d[2];
            hdr = 3;
        }
        hdr = hdr < n ? hdr : n;
        d += hdr;
        n -= hdr;
        if (len > n)
            len = n;
        f[k].data = d;
        f[k].len = len;
        k++;
        d += len;
        n -= len;
    }
    *pd = d;
    *pn = n;
    return k;
}

#endif
