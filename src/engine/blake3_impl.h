/*
 * blake3_impl: what blake3.c shares with its SIMD files (blake3_sse41.c,
 * blake3_avx2.c, blake3_row.c). Not for use outside the blake3 files and their tests.
 */
#ifndef LMCD_ENGINE_BLAKE3_IMPL_H
#define LMCD_ENGINE_BLAKE3_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum {
    B3_CHUNK_START = 1 << 0,
    B3_CHUNK_END = 1 << 1,
    B3_PARENT = 1 << 2,
    B3_ROOT = 1 << 3,
    B3_KEYED_HASH = 1 << 4,
    B3_DERIVE_KEY_CONTEXT = 1 << 5,
    B3_DERIVE_KEY_MATERIAL = 1 << 6,
};

extern const uint32_t blake3_iv[8];
extern const uint8_t blake3_schedule[7][16];

/* The 7 rounds over state v[16] and message words m[16], for any G (scalar
 * words or SIMD vectors): a column step then a diagonal step per round. */
#define BLAKE3_ROUNDS(G, v, m)                                                 \
    do {                                                                       \
        _Pragma("GCC unroll 7") for (int r_ = 0; r_ < 7; r_++) {               \
            const uint8_t *s_ = blake3_schedule[r_];                           \
            G(v, 0, 4, 8, 12, m[s_[0]], m[s_[1]]);                             \
            G(v, 1, 5, 9, 13, m[s_[2]], m[s_[3]]);                             \
            G(v, 2, 6, 10, 14, m[s_[4]], m[s_[5]]);                            \
            G(v, 3, 7, 11, 15, m[s_[6]], m[s_[7]]);                            \
            G(v, 0, 5, 10, 15, m[s_[8]], m[s_[9]]);                            \
            G(v, 1, 6, 11, 12, m[s_[10]], m[s_[11]]);                          \
            G(v, 2, 7, 8, 13, m[s_[12]], m[s_[13]]);                           \
            G(v, 3, 4, 9, 14, m[s_[14]], m[s_[15]]);                           \
        }                                                                      \
    } while (0)

/*
 * Hashes n inputs, each exactly `blocks` full 64-byte blocks, from chaining
 * value `key`, writing one 32-byte chaining value per input to out. Input i
 * uses block counter `counter + i` when increment_counter, else `counter`.
 * flags go on every block, flags_start on the first, flags_end on the last.
 * The SIMD versions handle 4 (SSE4.1) or 8 (AVX2) inputs per call.
 */
/* The flags of block b of an input of `blocks` blocks, for the functions below. */
static inline uint8_t blake3_block_flags(size_t b, size_t blocks, uint8_t flags, uint8_t flags_start,
                                         uint8_t flags_end)
{
    return (uint8_t)(flags | (b == 0 ? flags_start : 0) | (b + 1 == blocks ? flags_end : 0));
}

typedef void blake3_hash_lanes_fn(const uint8_t *const *inputs, size_t blocks,
                                  const uint32_t key[8], uint64_t counter,
                                  bool increment_counter, uint8_t flags,
                                  uint8_t flags_start, uint8_t flags_end, uint8_t *out);

/*
 * One compression of one 64-byte block: cv becomes the new chaining value
 * (in place), or out gets the full 64-byte output (extended output). The
 * portable versions are in blake3.c, the SSE4.1 row versions in
 * blake3_row.c; blake3.c calls whichever blake3_get_one() picked.
 */
typedef void blake3_compress_fn(uint32_t cv[8], const uint8_t block[64], uint8_t block_len,
                                uint64_t counter, uint8_t flags);
typedef void blake3_compress_xof_fn(const uint32_t cv[8], const uint8_t block[64],
                                    uint8_t block_len, uint64_t counter, uint8_t flags,
                                    uint8_t out[64]);
blake3_compress_fn blake3_one_compress_portable;
blake3_compress_xof_fn blake3_one_compress_xof_portable;

#if defined(__x86_64__) || defined(__i386__)
#define BLAKE3_HAVE_X86 1
blake3_hash_lanes_fn blake3_hash4_sse41;
blake3_hash_lanes_fn blake3_hash8_avx2;
blake3_compress_fn blake3_one_compress_sse41;
blake3_compress_xof_fn blake3_one_compress_xof_sse41;
/* One input through the SSE4.1 row compression (blake3_row.c). */
blake3_hash_lanes_fn blake3_hash1_sse41;
#else
#define BLAKE3_HAVE_X86 0
#endif

#endif
