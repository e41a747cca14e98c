/*
 * blake3_sse41: four BLAKE3 inputs at once in SSE registers (body in
 * blake3_lanes.h). Each function carries target("sse4.1"), so the rest of the
 * build needs no flags; blake3.c calls it only when the CPU reports SSE4.1.
 */
#include "engine/blake3_impl.h"

#if BLAKE3_HAVE_X86
#include "engine/blake3_sse41_ops.h"

#define LANES_N 4
#define LANES_VEC __m128i
#define LANES_TARGET SSE41_TARGET
#define LANES_FN blake3_hash4_sse41

LANES_TARGET static inline __m128i lanes_add(__m128i a, __m128i b) { return _mm_add_epi32(a, b); }
LANES_TARGET static inline __m128i lanes_xor(__m128i a, __m128i b) { return _mm_xor_si128(a, b); }
LANES_TARGET static inline __m128i lanes_set1(uint32_t w) { return _mm_set1_epi32((int)w); }

#define lanes_rot16 sse41_rot16
#define lanes_rot12 sse41_rot12
#define lanes_rot8 sse41_rot8
#define lanes_rot7 sse41_rot7

LANES_TARGET static inline __m128i lanes_loadu_words(const uint32_t *w)
{
    return _mm_loadu_si128((const __m128i *)(const void *)w);
}

/* In place: r[k] holds 4 words of input k; afterwards r[j] holds word j of all 4. */
LANES_TARGET static inline void transpose4(__m128i r[4])
{
    __m128i ab_lo = _mm_unpacklo_epi32(r[0], r[1]), ab_hi = _mm_unpackhi_epi32(r[0], r[1]);
    __m128i cd_lo = _mm_unpacklo_epi32(r[2], r[3]), cd_hi = _mm_unpackhi_epi32(r[2], r[3]);
    r[0] = _mm_unpacklo_epi64(ab_lo, cd_lo);
    r[1] = _mm_unpackhi_epi64(ab_lo, cd_lo);
    r[2] = _mm_unpacklo_epi64(ab_hi, cd_hi);
    r[3] = _mm_unpackhi_epi64(ab_hi, cd_hi);
}

LANES_TARGET static inline void lanes_load_msg(const uint8_t *const *in, size_t off, __m128i m[16])
{
    for (int q = 0; q < 4; q++) {
        for (int k = 0; k < 4; k++)
            m[4 * q + k] = _mm_loadu_si128((const __m128i *)(const void *)(in[k] + off + 16 * q));
        transpose4(&m[4 * q]);
    }
}

LANES_TARGET static inline void lanes_store_cvs(__m128i h[8], uint8_t *out)
{
    transpose4(&h[0]);
    transpose4(&h[4]);
    for (int k = 0; k < 4; k++) {
        _mm_storeu_si128((__m128i *)(void *)(out + 32 * k), h[k]);
        _mm_storeu_si128((__m128i *)(void *)(out + 32 * k + 16), h[4 + k]);
    }
}

#include "engine/blake3_lanes.h"
#endif
