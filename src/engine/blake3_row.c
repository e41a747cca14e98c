/*
 * blake3_row: one BLAKE3 compression of one input with the state in four
 * SSE4.1 registers, one row of four words each (row r = state words
 * 4r..4r+3). A round runs G on the four columns at once, rotates three rows
 * so that the diagonals stand in columns, runs G again and rotates back.
 *
 * This is the one-block compression for single inputs (a session's token
 * chain, the chunk in progress, parents, root output), where the lanes of
 * blake3_lanes.h have nothing to fill. Whether it beats the portable C
 * compression depends on the CPU (a chain of dependent vector steps against
 * four scalar G's spread over the integer ALUs), so blake3.c times both at
 * start-up and keeps the faster (blake3.h). Both give the same bytes.
 *
 * Layout choices, each to keep shuffles off the dependency chain:
 * - Diagonalizing rotates rows a, c and d and leaves b, the row a G step
 *   finishes last, in place: the rotations of a, c and d overlap the
 *   computation of b.
 * - The message words live in four registers, already in the order the
 *   round reads them (x words of the columns, y words of the columns, x and
 *   y of the diagonals), and are permuted for the next round with pshufd and
 *   pblendw. They do not depend on the state, so the core runs those
 *   shuffles beside the state's chain.
 *
 * Carries __attribute__((target("sse4.1"))) like blake3_sse41.c; blake3.c
 * calls it only when the CPU reports SSE4.1.
 */
#include "engine/blake3_impl.h"

#if BLAKE3_HAVE_X86
#include "engine/blake3_sse41_ops.h"

#define ROW_TARGET SSE41_TARGET

/* pshufd / shufps lane selectors: lane 0 gets word w, lane 1 x, lane 2 y, lane 3 z. */
#define SEL(w, x, y, z) (((z) << 6) | ((y) << 4) | ((x) << 2) | (w))
/* pblendw masks: the 32-bit lanes taken from the second operand. */
#define LANES(l0, l1, l2, l3) ((l0) * 0x03 | (l1) * 0x0c | (l2) * 0x30 | (l3) * 0xc0)

/* a + m, computed before b is ready. The empty asm hides the sum from the
 * compiler, which would otherwise reassociate (a + m) + b into (m + b) + a
 * and put two adds after b on the dependency chain instead of one. */
ROW_TARGET static inline __m128i add_early(__m128i a, __m128i m)
{
    __m128i t = _mm_add_epi32(a, m);
    __asm__("" : "+x"(t));
    return t;
}

/* The first half of G on four columns at once (message word x). The
 * message is added to a before b: a and x are ready early, b last. */
ROW_TARGET static inline void g_half1(__m128i *a, __m128i *b, __m128i *c, __m128i *d, __m128i x)
{
    *a = _mm_add_epi32(add_early(*a, x), *b);
    *d = sse41_rot16(_mm_xor_si128(*d, *a));
    *c = _mm_add_epi32(*c, *d);
    *b = sse41_rot12(_mm_xor_si128(*b, *c));
}

/* The second half (message word y). */
ROW_TARGET static inline void g_half2(__m128i *a, __m128i *b, __m128i *c, __m128i *d, __m128i y)
{
    *a = _mm_add_epi32(add_early(*a, y), *b);
    *d = sse41_rot8(_mm_xor_si128(*d, *a));
    *c = _mm_add_epi32(*c, *d);
    *b = sse41_rot7(_mm_xor_si128(*b, *c));
}

/*
 * With m' the round's message (m permuted r times by BLAKE3's permutation P),
 * the registers hold
 *   mx = m'0  m'2  m'4  m'6     x words of the columns 0..3
 *   my = m'1  m'3  m'5  m'7     y words of the columns
 *   dx = m'14 m'8  m'10 m'12    x words of the diagonals, lane L holding
 *   dy = m'15 m'9  m'11 m'13    diagonal L-1 (b stays in place, see top)
 * The next round's m''[i] = m'[P[i]], P = 2 6 3 10 7 0 4 13 1 11 12 5 9 14 15 8:
 *   mx' = m'2  m'3  m'7  m'4    = mx1 my1 my3 mx2
 *   my' = m'6  m'10 m'0  m'13   = mx3 dx2 mx0 dy3
 *   dx' = m'15 m'1  m'12 m'9    = dy0 my0 dx3 dy1
 *   dy' = m'8  m'11 m'5  m'14   = dx1 dy2 my2 dx0
 */
ROW_TARGET static inline void permute_message(__m128i *mx, __m128i *my, __m128i *dx, __m128i *dy)
{
    __m128i x = *mx, y = *my, p = *dx, q = *dy;
    *mx = _mm_blend_epi16(_mm_shuffle_epi32(x, SEL(1, 0, 0, 2)), _mm_shuffle_epi32(y, SEL(0, 1, 3, 0)),
                          LANES(0, 1, 1, 0));
    /* p2 and q3 first share a register (p0 p1 p2 q3), then move to lanes 1 and 3. */
    __m128i pq = _mm_shuffle_epi32(_mm_blend_epi16(p, q, LANES(0, 0, 0, 1)), SEL(0, 2, 0, 3));
    *my = _mm_blend_epi16(_mm_shuffle_epi32(x, SEL(3, 0, 0, 0)), pq, LANES(0, 1, 0, 1));
    /* q0 q1 q2 p3 -> q0 _ p3 q1, then y0 into lane 1. */
    __m128i qp = _mm_shuffle_epi32(_mm_blend_epi16(q, p, LANES(0, 0, 0, 1)), SEL(0, 0, 3, 1));
    *dx = _mm_blend_epi16(qp, _mm_shuffle_epi32(y, SEL(0, 0, 0, 0)), LANES(0, 1, 0, 0));
    /* p0 p1 q2 p3 -> p1 q2 _ p0, then y2 into lane 2. */
    __m128i pq2 = _mm_shuffle_epi32(_mm_blend_epi16(p, q, LANES(0, 0, 1, 0)), SEL(1, 2, 0, 0));
    *dy = _mm_blend_epi16(pq2, _mm_shuffle_epi32(y, SEL(0, 0, 2, 0)), LANES(0, 0, 1, 0));
}

/* Loads the 16 message words into the round-0 layout of permute_message(). */
ROW_TARGET static inline void load_message(const uint8_t block[64], __m128i *mx, __m128i *my,
                                           __m128i *dx, __m128i *dy)
{
    __m128 w0 = _mm_castsi128_ps(_mm_loadu_si128((const __m128i *)(const void *)block));
    __m128 w1 = _mm_castsi128_ps(_mm_loadu_si128((const __m128i *)(const void *)(block + 16)));
    __m128 w2 = _mm_castsi128_ps(_mm_loadu_si128((const __m128i *)(const void *)(block + 32)));
    __m128 w3 = _mm_castsi128_ps(_mm_loadu_si128((const __m128i *)(const void *)(block + 48)));
    *mx = _mm_castps_si128(_mm_shuffle_ps(w0, w1, SEL(0, 2, 0, 2))); /* m0 m2 m4 m6 */
    *my = _mm_castps_si128(_mm_shuffle_ps(w0, w1, SEL(1, 3, 1, 3))); /* m1 m3 m5 m7 */
    __m128i ex = _mm_castps_si128(_mm_shuffle_ps(w2, w3, SEL(0, 2, 0, 2))); /* m8 m10 m12 m14 */
    __m128i ey = _mm_castps_si128(_mm_shuffle_ps(w2, w3, SEL(1, 3, 1, 3))); /* m9 m11 m13 m15 */
    *dx = _mm_shuffle_epi32(ex, SEL(3, 0, 1, 2));
    *dy = _mm_shuffle_epi32(ey, SEL(3, 0, 1, 2));
}

/* The 7 rounds over the state in rows a (words 0-3), b, c, d (12-15). */
ROW_TARGET __attribute__((always_inline)) static inline void rounds(__m128i *ra, __m128i *rb,
                                                                    __m128i *rc, __m128i *rd,
                                                                    const uint8_t block[64])
{
    __m128i mx, my, dx, dy;
    load_message(block, &mx, &my, &dx, &dy);
    __m128i a = *ra, b = *rb, c = *rc, d = *rd;
    _Pragma("GCC unroll 7") for (int r = 0; r < 7; r++) {
        g_half1(&a, &b, &c, &d, mx);
        g_half2(&a, &b, &c, &d, my);
        /* Diagonals to columns: lane L then holds a[L-1], b[L], c[L+1], d[L+2]. */
        a = _mm_shuffle_epi32(a, SEL(3, 0, 1, 2));
        c = _mm_shuffle_epi32(c, SEL(1, 2, 3, 0));
        d = _mm_shuffle_epi32(d, SEL(2, 3, 0, 1));
        g_half1(&a, &b, &c, &d, dx);
        g_half2(&a, &b, &c, &d, dy);
        a = _mm_shuffle_epi32(a, SEL(1, 2, 3, 0));
        c = _mm_shuffle_epi32(c, SEL(3, 0, 1, 2));
        d = _mm_shuffle_epi32(d, SEL(2, 3, 0, 1));
        if (r < 6)
            permute_message(&mx, &my, &dx, &dy);
    }
    *ra = a;
    *rb = b;
    *rc = c;
    *rd = d;
}

/* Rows c and d of the starting state: the IV, then counter, length, flags. */
ROW_TARGET static inline __m128i row_iv(void)
{
    return _mm_loadu_si128((const __m128i *)(const void *)blake3_iv);
}

ROW_TARGET static inline __m128i row_params(uint64_t counter, uint8_t block_len, uint8_t flags)
{
    return _mm_setr_epi32((int)(uint32_t)counter, (int)(uint32_t)(counter >> 32), (int)block_len,
                          (int)flags);
}

ROW_TARGET void blake3_one_compress_sse41(uint32_t cv[8], const uint8_t block[64], uint8_t block_len,
                                      uint64_t counter, uint8_t flags)
{
    __m128i a = _mm_loadu_si128((const __m128i *)(const void *)cv);
    __m128i b = _mm_loadu_si128((const __m128i *)(const void *)(cv + 4));
    __m128i c = row_iv(), d = row_params(counter, block_len, flags);
    rounds(&a, &b, &c, &d, block);
    _mm_storeu_si128((__m128i *)(void *)cv, _mm_xor_si128(a, c));
    _mm_storeu_si128((__m128i *)(void *)(cv + 4), _mm_xor_si128(b, d));
}

ROW_TARGET void blake3_one_compress_xof_sse41(const uint32_t cv[8], const uint8_t block[64],
                                          uint8_t block_len, uint64_t counter, uint8_t flags,
                                          uint8_t out[64])
{
    __m128i k0 = _mm_loadu_si128((const __m128i *)(const void *)cv);
    __m128i k1 = _mm_loadu_si128((const __m128i *)(const void *)(cv + 4));
    __m128i a = k0, b = k1, c = row_iv(), d = row_params(counter, block_len, flags);
    rounds(&a, &b, &c, &d, block);
    _mm_storeu_si128((__m128i *)(void *)out, _mm_xor_si128(a, c));
    _mm_storeu_si128((__m128i *)(void *)(out + 16), _mm_xor_si128(b, d));
    _mm_storeu_si128((__m128i *)(void *)(out + 32), _mm_xor_si128(c, k0));
    _mm_storeu_si128((__m128i *)(void *)(out + 48), _mm_xor_si128(d, k1));
}

/* blake3_hash_lanes_fn for one input (inputs[0]): its blocks one after
 * another with the chaining value kept in registers between them, which
 * spares the chain a store and a reload per block. */
ROW_TARGET void blake3_hash1_sse41(const uint8_t *const *inputs, size_t blocks, const uint32_t key[8],
                                   uint64_t counter, bool increment_counter, uint8_t flags,
                                   uint8_t flags_start, uint8_t flags_end, uint8_t *out)
{
    __m128i a = _mm_loadu_si128((const __m128i *)(const void *)key);
    __m128i b = _mm_loadu_si128((const __m128i *)(const void *)(key + 4));
    (void)increment_counter;
    for (size_t i = 0; i < blocks; i++) {
        __m128i c = row_iv();
        __m128i d = row_params(counter, 64, blake3_block_flags(i, blocks, flags, flags_start, flags_end));
        rounds(&a, &b, &c, &d, inputs[0] + 64 * i);
        a = _mm_xor_si128(a, c);
        b = _mm_xor_si128(b, d);
    }
    _mm_storeu_si128((__m128i *)(void *)out, a);
    _mm_storeu_si128((__m128i *)(void *)(out + 16), b);
}
#endif
