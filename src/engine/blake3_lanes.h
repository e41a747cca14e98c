/*
 * blake3_lanes: the body of the SIMD "hash N inputs at once" functions,
 * one input per 32-bit lane (state word i of every input in one register).
 * Included once by blake3_sse41.c (4 lanes) and once by blake3_avx2.c
 * (8 lanes) after they define:
 *   LANES_N                 lanes per register
 *   LANES_VEC               the register type
 *   LANES_TARGET            the function attribute enabling the instructions
 *   LANES_FN                the name of the exported function
 *   lanes_add/xor/set1      32-bit lane add, xor, broadcast
 *   lanes_rot16/12/8/7      rotate each lane right
 *   lanes_load_msg(in, off, m)  m[j] = word j of block at in[k] + off, lane k
 *   lanes_loadu_words(p)    load LANES_N uint32_t
 *   lanes_store_cvs(h, out) write lane k's words h[0..7] to out + 32 k
 */

LANES_TARGET static inline void lanes_g(LANES_VEC *v, int a, int b, int c, int d, LANES_VEC x,
                                        LANES_VEC y)
{
    v[a] = lanes_add(lanes_add(v[a], v[b]), x);
    v[d] = lanes_rot16(lanes_xor(v[d], v[a]));
    v[c] = lanes_add(v[c], v[d]);
    v[b] = lanes_rot12(lanes_xor(v[b], v[c]));
    v[a] = lanes_add(lanes_add(v[a], v[b]), y);
    v[d] = lanes_rot8(lanes_xor(v[d], v[a]));
    v[c] = lanes_add(v[c], v[d]);
    v[b] = lanes_rot7(lanes_xor(v[b], v[c]));
}

LANES_TARGET void LANES_FN(const uint8_t *const *inputs, size_t blocks, const uint32_t key[8],
                           uint64_t counter, bool increment_counter, uint8_t flags,
                           uint8_t flags_start, uint8_t flags_end, uint8_t *out)
{
    LANES_VEC h[8], v[16], m[16];
    uint32_t lo[LANES_N], hi[LANES_N];
    for (int i = 0; i < 8; i++)
        h[i] = lanes_set1(key[i]);
    for (int i = 0; i < LANES_N; i++) {
        uint64_t c = counter + (increment_counter ? (uint64_t)i : 0);
        lo[i] = (uint32_t)c;
        hi[i] = (uint32_t)(c >> 32);
    }
    LANES_VEC ctr_lo = lanes_loadu_words(lo);
    LANES_VEC ctr_hi = lanes_loadu_words(hi);

    for (size_t b = 0; b < blocks; b++) {
        uint8_t f = blake3_block_flags(b, blocks, flags, flags_start, flags_end);
        lanes_load_msg(inputs, b * 64, m);
        for (int i = 0; i < 8; i++)
            v[i] = h[i];
        for (int i = 0; i < 4; i++)
            v[8 + i] = lanes_set1(blake3_iv[i]);
        v[12] = ctr_lo;
        v[13] = ctr_hi;
        v[14] = lanes_set1(64);
        v[15] = lanes_set1(f);
        BLAKE3_ROUNDS(lanes_g, v, m);
        for (int i = 0; i < 8; i++)
            h[i] = lanes_xor(v[i], v[i + 8]);
    }
    lanes_store_cvs(h, out);
}
