/*
 * blake3_sse41_ops: the 32-bit rotations BLAKE3's G needs, on SSE4.1
 * registers, shared by the 4-lane code (blake3_sse41.c) and the one-input
 * row code (blake3_row.c). By 16 and 8 a byte shuffle does it in one
 * instruction; by 12 and 7 two shifts and an or (SSE has no rotate).
 * Include only from files whose callers check the CPU for SSE4.1.
 */
#ifndef LMCD_ENGINE_BLAKE3_SSE41_OPS_H
#define LMCD_ENGINE_BLAKE3_SSE41_OPS_H

#include <immintrin.h>

#define SSE41_TARGET __attribute__((target("sse4.1")))

SSE41_TARGET static inline __m128i sse41_rot16(__m128i x)
{
    return _mm_shuffle_epi8(x, _mm_setr_epi8(2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13));
}

SSE41_TARGET static inline __m128i sse41_rot12(__m128i x)
{
    return _mm_or_si128(_mm_srli_epi32(x, 12), _mm_slli_epi32(x, 20));
}

SSE41_TARGET static inline __m128i sse41_rot8(__m128i x)
{
    return _mm_shuffle_epi8(x, _mm_setr_epi8(1, 2, 3, 0, 5, 6, 7, 4, 9, 10, 11, 8, 13, 14, 15, 12));
}

SSE41_TARGET static inline __m128i sse41_rot7(__m128i x)
{
    return _mm_or_si128(_mm_srli_epi32(x, 7), _mm_slli_epi32(x, 25));
}

#endif
