/*
 * transfer_layout: the paged-KV layout of a GPU worker's cache, and the one
 * index function that moves bytes between it and an L1 chunk object.
 *
 * Paged layouts (per layer, as REGISTER_KV_CACHE describes them, spec 6.8):
 *   vLLM flash-attention  [2, NB, BS, NH, HS]  (NHD)  or NH before BS (HND)
 *   flashinfer            [NB, 2, BS, NH, HS]  (NHD)  or NH before BS (HND)
 *   MLA                   [NB, BS, HS]
 * dtypes bf16, fp16, fp32 and fp8 (arriving as uint8). Only the element
 * size matters for copying; the innermost (head-size) axis must be
 * contiguous, every other axis may have any non-negative stride.
 *
 * Chunk object layout in L1 (spec 7.4), identical to what an engine-driven
 * worker stores, so either path can read what the other wrote:
 *   non-MLA [2, num_layers, chunk_tokens, NH*HS]  K/V-major, token-major
 *           (HND caches are permuted to token-major)
 *   MLA     [num_layers, chunk_tokens, HS]
 * A partial last chunk uses its own token count as chunk_tokens.
 *
 * The index function (tl_item) and the copy step (tl_gather_item /
 * tl_scatter_item) are `static inline` and compile both as host C (tested
 * in tests/unit/test_transfer_layout.c against a plain reference) and in the
 * CUDA kernels (src/transfer/transfer_cuda.cu) through TL_HD. One work item
 * moves `vec` bytes (16 when the head row allows it): a vector never spans
 * two heads, so it is contiguous on both sides.
 *
 * Null blocks: a block id equal to `null_block` is neither read nor written
 * (its items are skipped). Retrieve also skips the first `skip_blocks`
 * blocks of the range (vLLM's own prefix cache owns them).
 *
 * Threads: pure functions over caller-owned memory. tl_detect() is host-only.
 */
#ifndef LMCD_TRANSFER_LAYOUT_H
#define LMCD_TRANSFER_LAYOUT_H

#include <stdint.h>
#ifdef __CUDACC__
#define TL_HD __host__ __device__
#else
#include <stdbool.h>
#include <stddef.h>
#include <string.h>
#define TL_HD
#endif

enum tl_kind {
    TL_FA_NHD,  /* [2, NB, BS, NH, HS] */
    TL_FA_HND,  /* [2, NB, NH, BS, HS] physical */
    TL_FI_NHD,  /* [NB, 2, BS, NH, HS] */
    TL_FI_HND,  /* [NB, 2, NH, BS, HS] physical */
    TL_MLA,     /* [NB, BS, HS] */
    TL_KIND_N_,
};

enum tl_dtype { TL_BF16, TL_FP16, TL_FP32, TL_U8, TL_DTYPE_N_ };

/* What the client's hints say (REGISTER_KV_CACHE carries no explicit layout
 * in every era; TL_HINT_NONE lets shape and stride decide). */
enum tl_hint { TL_HINT_NONE, TL_HINT_FLASH_ATTN, TL_HINT_FLASHINFER, TL_HINT_MLA };

struct tl_layout {
    int32_t kind;   /* enum tl_kind */
    int32_t dtype;  /* enum tl_dtype */
    int32_t elem;   /* bytes per element */
    int32_t nkv;    /* 2 (K and V) or 1 (MLA) */
    int32_t vec;    /* bytes per work item: 16, 8, 4, 2 or 1 */
    int32_t pad_;
    int64_t nb, bs, nh, hs;
    /* byte strides of the logical axes (MLA: s_kv = 0, nh = 1) */
    int64_t s_kv, s_blk, s_tok, s_head;
    int64_t head_bytes; /* hs * elem */
    int64_t row_bytes;  /* nh * hs * elem: one token of one layer, K or V */
    int64_t span;       /* bytes from the layer base the cache reaches */
};

/* One batch of chunks to move between a registration's layers and L1. */
struct tl_xfer {
    struct tl_layout lay;
    uint32_t nlayers;
    uint32_t nchunks;
    uint32_t chunk_tokens; /* full chunk: a multiple of lay.bs */
    uint32_t last_tokens;  /* tokens of the last chunk (1..chunk_tokens) */
    int64_t null_block;
    int64_t skip_blocks;         /* retrieve: blocks of the range left alone */
    const uint64_t *layer_base;  /* [nlayers] addresses of each layer's cache */
    const int64_t *block_ids;    /* [nchunks * chunk_tokens / bs] */
    const uint64_t *chunk_addr;  /* [nchunks] addresses of the chunk objects */
};

/* Bytes of one chunk object holding `tokens` tokens. */
TL_HD static inline uint64_t tl_chunk_bytes(const struct tl_layout *l, uint32_t nlayers, uint32_t tokens)
{
    return (uint64_t)l->nkv * nlayers * tokens * (uint64_t)l->row_bytes;
}

/* Work items per chunk slot (a full chunk; the partial last one skips the
 * items past its tokens). */
TL_HD static inline uint64_t tl_items_per_chunk(const struct tl_xfer *x)
{
    return (uint64_t)x->lay.nkv * x->nlayers * x->chunk_tokens * (uint64_t)(x->lay.row_bytes / x->lay.vec);
}

/* Byte offset, from the layer's base, of `byte` within token `tok` of
 * block `block`, K (kv 0) or V (kv 1). `byte` < row_bytes. */
TL_HD static inline int64_t tl_paged_offset(const struct tl_layout *l, int64_t kv, int64_t block, int64_t tok,
                                            int64_t byte)
{
    int64_t head = byte / l->head_bytes;
    int64_t in_head = byte - head * l->head_bytes;
    return kv * l->s_kv + block * l->s_blk + tok * l->s_tok + head * l->s_head + in_head;
}

/* Byte offset within a chunk object of `tokens` tokens (spec 7.4). */
TL_HD static inline uint64_t tl_chunk_offset(const struct tl_layout *l, uint32_t nlayers, uint32_t tokens,
                                             uint32_t kv, uint32_t layer, uint32_t tok, uint64_t byte)
{
    return (((uint64_t)kv * nlayers + layer) * tokens + tok) * (uint64_t)l->row_bytes + byte;
}

/* Work item `gi` of the batch (0 <= gi < nchunks * tl_items_per_chunk):
 * where it reads/writes. Returns false for items that move nothing (past a
 * partial chunk's tokens, null blocks, skipped blocks). */
struct tl_loc {
    uint64_t paged; /* device address in the paged cache */
    uint64_t chunk; /* address in the chunk object */
};

TL_HD static inline bool tl_item(const struct tl_xfer *x, uint64_t gi, struct tl_loc *loc)
{
    const struct tl_layout *l = &x->lay;
    uint64_t per = tl_items_per_chunk(x);
    uint64_t c = gi / per;
    uint64_t i = gi - c * per;
    uint64_t rv = (uint64_t)(l->row_bytes / l->vec);
    uint64_t v = i % rv;
    i /= rv;
    uint64_t t = i % x->chunk_tokens;
    i /= x->chunk_tokens;
    uint64_t layer = i % x->nlayers;
    uint64_t kv = i / x->nlayers;
    uint32_t tokens = c + 1 == x->nchunks ? x->last_tokens : x->chunk_tokens;
    if (t >= tokens)
        return false;
    uint64_t bpc = x->chunk_tokens / (uint64_t)l->bs;
    uint64_t bi = c * bpc + t / (uint64_t)l->bs; /* block index within the range */
    int64_t block = x->block_ids[bi];
    if (block == x->null_block || (int64_t)bi < x->skip_blocks || block < 0 || block >= l->nb)
        return false;
    uint64_t byte = v * (uint64_t)l->vec;
    loc->paged = x->layer_base[layer] +
                 (uint64_t)tl_paged_offset(l, (int64_t)kv, block, (int64_t)(t % (uint64_t)l->bs), (int64_t)byte);
    loc->chunk = x->chunk_addr[c] + tl_chunk_offset(l, x->nlayers, tokens, (uint32_t)kv, (uint32_t)layer,
                                                    (uint32_t)t, byte);
    return true;
}

#ifndef __CUDACC__
/* Host builds of the copy step (the kernels do the same with 16-byte
 * vector loads when vec == 16). */
static inline void tl_gather_item(const struct tl_xfer *x, uint64_t gi)
{
    struct tl_loc loc;
    if (tl_item(x, gi, &loc))
        memcpy((void *)(uintptr_t)loc.chunk, (const void *)(uintptr_t)loc.paged, (size_t)x->lay.vec);
}

static inline void tl_scatter_item(const struct tl_xfer *x, uint64_t gi)
{
    struct tl_loc loc;
    if (tl_item(x, gi, &loc))
        memcpy((void *)(uintptr_t)loc.paged, (const void *)(uintptr_t)loc.chunk, (size_t)x->lay.vec);
}

/* Describes one layer as REGISTER_KV_CACHE's wrapper gives it. */
struct tl_desc {
    uint32_t ndim;
    const int64_t *shape;
    const int64_t *stride; /* elements */
    const char *dtype;     /* torch attribute name: "bfloat16", "uint8", ... */
    size_t dtype_len;
    enum tl_hint hint;
    bool hnd; /* hint: NH before BS in a contiguous (physical) shape */
};

/* Detects the layout of one layer. 0, or -EINVAL (shape/stride do not
 * describe a paged cache), -ENOTSUP (a dtype or form not served); *why
 * then names the reason (static string). */
int tl_detect(const struct tl_desc *d, struct tl_layout *out, const char **why);

/* Element size of a torch dtype name (0 when not served). */
int tl_dtype_from_name(const char *name, size_t len, enum tl_dtype *out);

/* Whether any / every block of chunk `c` is the null block. STORE skips
 * chunks with any null block (their bytes do not exist). */
bool tl_chunk_has_null(const struct tl_xfer *x, uint32_t c, bool *all_null);

/* The whole batch on the host (tests; a CPU fallback). */
void tl_gather_host(const struct tl_xfer *x);
void tl_scatter_host(const struct tl_xfer *x);
#endif

#endif
