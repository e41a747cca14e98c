/*
 * blake3_avx2: eight BLAKE3 inputs at once in AVX2 registers (body in
 * blake3_lanes.h). Each function carries target("avx2"); blake3.c calls it
 * only when the CPU reports AVX2.
 */
#include "engine/blake3_impl.h"

#if BLAKE3_HAVE_X86
#include <immintrin.h>

#define LANES_N 8
#define LANES_VEC __m256i
#define LANES_TARGET __attribute__((target("avx2")))
#define LANES_FN blake3_hash8_avx2

LANES_TARGET static inline __m256i lanes_add(__m256i a, __m256i b) { return _mm256_add_epi32(a, b); }
LANES_TARGET static inline __m256i lanes_xor(__m256i a, __m256i b) { return _mm256_xor_si256(a, b); }
LANES_TARGET static inline __m256i lanes_set1(uint32_t w) { return _mm256_set1_epi32((int)w); }

LANES_TARGET static inline __m256i lanes_rot16(__m256i x)
{
    return _mm256_shuffle_epi8(x, _mm256_setr_epi8(2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13,
                                                   2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13));
}

LANES_TARGET static inline __m256i lanes_rot12(__m256i x)
{
    return _mm256_or_si256(_mm256_srli_epi32(x, 12), _mm256_slli_epi32(x, 20));
}

LANES_TARGET static inline __m256i lanes_rot8(__m256i x)
{
    return _mm256_shuffle_epi8(x, _mm256_setr_epi8(1, 2, 3, 0, 5, 6, 7, 4, 9, 10, 11, 8, 13, 14, 15, 12,
                                                   1, 2, 3, 0, 5, 6, 7, 4, 9, 10, 11, 8, 13, 14, 15, 12));
}

LANES_TARGET static inline __m256i lanes_rot7(__m256i x)
{
    return _mm256_or_si256(_mm256_srli_epi32(x, 7), _mm256_slli_epi32(x, 25));
}

LANES_TARGET static inline __m256i lanes_loadu_words(const uint32_t *w)
{
    return _mm256_loadu_si256((const __m256i *)(const void *)w);
}

/* In place: r[k] holds 8 words of input k; afterwards r[j] holds word j of all 8. */
LANES_TARGET static inline void transpose8(__m256i r[8])
{
    __m256i t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) {
        u[4 * i + 0] = _mm256_unpacklo_epi64(t[4 * i + 0], t[4 * i + 2]);
        u[4 * i + 1] = _mm256_unpackhi_epi64(t[4 * i + 0], t[4 * i + 2]);
        u[4 * i + 2] = _mm256_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm256_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    /* Each 128-bit half now holds 4 words of 4 inputs; join the halves. */
    for (int j = 0; j < 4; j++) {
        r[j] = _mm256_permute2x128_si256(u[j], u[4 + j], 0x20);
        r[4 + j] = _mm256_permute2x128_si256(u[j], u[4 + j], 0x31);
    }
}

LANES_TARGET static inline void lanes_load_msg(const uint8_t *const *in, size_t off, __m256i m[16])
{
    for (int half = 0; half < 2; half++) {
        for (int k = 0; k < 8; k++)
            m[8 * half + k] = _mm256_loadu_si256((const __m256i *)(const void *)(in[k] + off + 32 * half));
        transpose8(&m[8 * half]);
    }
}

LANES_TARGET static inline void lanes_store_cvs(__m256i h[8], uint8_t *out)
{
    transpose8(h);
    for (int k = 0; k < 8; k++)
        _mm256_storeu_si256((__m256i *)(void *)(out + 32 * k), h[k]);
}

#include "engine/blake3_lanes.h"
#endif
