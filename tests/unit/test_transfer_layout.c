/*
 * transfer_layout: detection, block->address arithmetic and the host build
 * of the gather/scatter index function (the same code the CUDA kernels
 * compile), each checked against a plain nested-loop reference over host
 * buffers whose strides are computed here independently of the module.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "transfer/transfer_layout.h"

enum form { F_FA, F_FI, F_MLA };
enum desc_mode { D_NHD, D_HND_LOGICAL, D_HND_PHYSICAL };

struct cfg {
    enum form form;
    enum desc_mode mode;
    const char *dtype;
    int elem;
    int64_t nb, bs, nh, hs;
    int64_t pad; /* extra elements per block (non-dense block stride) */
};

/* The true element strides of logical (kv, block, token, head, dim). */
struct strides {
    int64_t kv, b, t, h, d, total;
};

static struct strides true_strides(const struct cfg *c)
{
    struct strides s = {0};
    s.d = 1;
    bool hnd = c->mode != D_NHD;
    int64_t blk = c->bs * c->nh * c->hs; /* one block of K or V */
    if (c->form == F_MLA) {
        s.t = c->hs;
        s.b = c->bs * c->hs + c->pad;
        s.total = s.b * c->nb;
        return s;
    }
    s.t = hnd ? c->hs : c->nh * c->hs;
    s.h = hnd ? c->bs * c->hs : c->hs;
    if (c->form == F_FA) {
        s.b = blk + c->pad;
        s.kv = s.b * c->nb;
        s.total = 2 * s.kv;
    } else {
        s.kv = blk;
        s.b = 2 * blk + c->pad;
        s.total = s.b * c->nb;
    }
    return s;
}

/* What the wrapper would carry: shape and stride (elements). */
static void describe(const struct cfg *c, const struct strides *s, struct tl_desc *d, int64_t *shape,
                     int64_t *stride)
{
    memset(d, 0, sizeof(*d));
    d->shape = shape;
    d->stride = stride;
    d->dtype = c->dtype;
    d->dtype_len = strlen(c->dtype);
    if (c->form == F_MLA) {
        d->ndim = 3;
        int64_t n[3] = {c->nb, c->bs, c->hs}, st[3] = {s->b, s->t, s->d};
        memcpy(shape, n, sizeof(n));
        memcpy(stride, st, sizeof(st));
        return;
    }
    d->ndim = 5;
    bool phys = c->mode == D_HND_PHYSICAL;
    d->hnd = phys;
    int64_t a = phys ? c->nh : c->bs, b = phys ? c->bs : c->nh;
    int64_t sa = phys ? s->h : s->t, sb = phys ? s->t : s->h;
    if (c->form == F_FA) {
        int64_t n[5] = {2, c->nb, a, b, c->hs}, st[5] = {s->kv, s->b, sa, sb, 1};
        memcpy(shape, n, sizeof(n));
        memcpy(stride, st, sizeof(st));
    } else {
        int64_t n[5] = {c->nb, 2, a, b, c->hs}, st[5] = {s->b, s->kv, sa, sb, 1};
        memcpy(shape, n, sizeof(n));
        memcpy(stride, st, sizeof(st));
    }
}

static void fill_random(uint8_t *p, size_t n, unsigned seed)
{
    srand(seed);
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)rand();
}

struct world {
    struct cfg c;
    struct strides s;
    struct tl_layout lay;
    uint32_t nlayers, nchunks, chunk_tokens, last_tokens;
    int64_t head0;            /* TP shard: first head of this worker */
    int64_t nh_view;          /* heads this worker sees */
    uint8_t **layers;         /* [nlayers] */
    uint64_t *bases;          /* [nlayers] shard view bases */
    int64_t *blocks;          /* [nchunks * bpc] */
    uint8_t **chunks;         /* [nchunks] */
    uint64_t *chunk_addr;
    size_t layer_bytes;
};

static size_t chunk_len(const struct world *w, uint32_t c)
{
    uint32_t t = c + 1 == w->nchunks ? w->last_tokens : w->chunk_tokens;
    return (size_t)(w->c.form == F_MLA ? 1 : 2) * w->nlayers * t * w->nh_view * w->c.hs * w->c.elem;
}

static void world_init(struct world *w, const struct cfg *c, uint32_t nlayers, uint32_t nchunks,
                       uint32_t chunk_tokens, uint32_t last_tokens, int64_t head0, int64_t nh_view)
{
    memset(w, 0, sizeof(*w));
    w->c = *c;
    w->s = true_strides(c);
    w->nlayers = nlayers;
    w->nchunks = nchunks;
    w->chunk_tokens = chunk_tokens;
    w->last_tokens = last_tokens;
    w->head0 = head0;
    w->nh_view = nh_view;
    /* The worker's view: its heads only, at an offset inside the storage. */
    int64_t shape[5], stride[5];
    struct tl_desc d;
    describe(c, &w->s, &d, shape, stride);
    if (c->form != F_MLA) {
        int hd = d.hnd ? 2 : 3;
        shape[hd] = nh_view;
    }
    const char *why = NULL;
    int rc = tl_detect(&d, &w->lay, &why);
    cr_assert_eq(rc, 0, "detect: %s", why ? why : "?");
    w->layer_bytes = (size_t)w->s.total * c->elem;
    w->layers = calloc(nlayers, sizeof(*w->layers));
    w->bases = calloc(nlayers, sizeof(*w->bases));
    for (uint32_t l = 0; l < nlayers; l++) {
        w->layers[l] = aligned_alloc(64, (w->layer_bytes + 63) / 64 * 64);
        fill_random(w->layers[l], w->layer_bytes, 1000 + l);
        w->bases[l] = (uint64_t)(uintptr_t)w->layers[l] + (uint64_t)(head0 * w->s.h * c->elem);
        cr_assert(w->lay.span + head0 * w->s.h * c->elem <= (int64_t)w->layer_bytes);
    }
    uint64_t bpc = chunk_tokens / c->bs;
    w->blocks = calloc(nchunks * bpc, sizeof(*w->blocks));
    /* distinct blocks, shuffled */
    int64_t *perm = calloc(c->nb, sizeof(*perm));
    for (int64_t i = 0; i < c->nb; i++)
        perm[i] = i;
    srand(7);
    for (int64_t i = c->nb - 1; i > 0; i--) {
        int64_t j = rand() % (i + 1), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    cr_assert(nchunks * bpc <= (uint64_t)c->nb);
    for (uint64_t i = 0; i < nchunks * bpc; i++)
        w->blocks[i] = perm[i];
    free(perm);
    w->chunks = calloc(nchunks, sizeof(*w->chunks));
    w->chunk_addr = calloc(nchunks, sizeof(*w->chunk_addr));
    for (uint32_t k = 0; k < nchunks; k++) {
        size_t n = chunk_len(w, k);
        w->chunks[k] = aligned_alloc(64, (n + 63) / 64 * 64);
        memset(w->chunks[k], 0xEE, n);
        w->chunk_addr[k] = (uint64_t)(uintptr_t)w->chunks[k];
    }
}

static void world_free(struct world *w)
{
    for (uint32_t l = 0; l < w->nlayers; l++)
        free(w->layers[l]);
    for (uint32_t k = 0; k < w->nchunks; k++)
        free(w->chunks[k]);
    free(w->layers);
    free(w->bases);
    free(w->blocks);
    free(w->chunks);
    free(w->chunk_addr);
}

static struct tl_xfer world_xfer(const struct world *w, int64_t null_block, int64_t skip_blocks)
{
    struct tl_xfer x = {
        .lay = w->lay,
        .nlayers = w->nlayers,
        .nchunks = w->nchunks,
        .chunk_tokens = w->chunk_tokens,
        .last_tokens = w->last_tokens,
        .null_block = null_block,
        .skip_blocks = skip_blocks,
        .layer_base = w->bases,
        .block_ids = w->blocks,
        .chunk_addr = w->chunk_addr,
    };
    return x;
}

/* Reference: element (kv, layer, token t of chunk k, head h, dim d). */
static size_t ref_paged(const struct world *w, int64_t kv, int64_t block, int64_t t, int64_t h, int64_t d)
{
    const struct strides *s = &w->s;
    return (size_t)((kv * s->kv + block * s->b + t * s->t + (w->head0 + h) * s->h + d * s->d) * w->c.elem);
}

static size_t ref_chunk(const struct world *w, uint32_t k, int64_t kv, int64_t layer, int64_t t, int64_t h,
                        int64_t d)
{
    int64_t tokens = k + 1 == w->nchunks ? w->last_tokens : w->chunk_tokens;
    return (size_t)((((kv * w->nlayers + layer) * tokens + t) * w->nh_view + h) * w->c.hs + d) * w->c.elem;
}

/* Checks every chunk byte after a gather: the paged bytes, or the 0xEE fill
 * for tokens of null blocks. */
static void check_gather(const struct world *w, int64_t null_block)
{
    int nkv = w->c.form == F_MLA ? 1 : 2;
    for (uint32_t k = 0; k < w->nchunks; k++) {
        int64_t tokens = k + 1 == w->nchunks ? w->last_tokens : w->chunk_tokens;
        for (int kv = 0; kv < nkv; kv++)
            for (uint32_t l = 0; l < w->nlayers; l++)
                for (int64_t t = 0; t < tokens; t++) {
                    int64_t blk = w->blocks[k * (w->chunk_tokens / w->c.bs) + t / w->c.bs];
                    for (int64_t h = 0; h < w->nh_view; h++)
                        for (int64_t d = 0; d < w->c.hs; d++) {
                            const uint8_t *got = w->chunks[k] + ref_chunk(w, k, kv, l, t, h, d);
                            if (blk == null_block) {
                                for (int e = 0; e < w->c.elem; e++)
                                    cr_assert_eq(got[e], 0xEE, "null block written");
                                continue;
                            }
                            const uint8_t *want = w->layers[l] + ref_paged(w, kv, blk, t % w->c.bs, h, d);
                            cr_assert(memcmp(got, want, w->c.elem) == 0,
                                      "chunk %u kv %d layer %u token %lld head %lld dim %lld", k, kv, l,
                                      (long long)t, (long long)h, (long long)d);
                        }
                }
    }
}

/* Scatter into fresh caches and compare against a reference scatter. */
static void check_scatter(struct world *w, int64_t null_block, int64_t skip_blocks)
{
    int nkv = w->c.form == F_MLA ? 1 : 2;
    uint8_t **want = calloc(w->nlayers, sizeof(*want));
    for (uint32_t l = 0; l < w->nlayers; l++) {
        fill_random(w->layers[l], w->layer_bytes, 5000 + l);
        want[l] = malloc(w->layer_bytes);
        memcpy(want[l], w->layers[l], w->layer_bytes);
    }
    /* reuse the chunks as sources: give them known content */
    for (uint32_t k = 0; k < w->nchunks; k++)
        fill_random(w->chunks[k], chunk_len(w, k), 9000 + k);
    for (uint32_t k = 0; k < w->nchunks; k++) {
        int64_t tokens = k + 1 == w->nchunks ? w->last_tokens : w->chunk_tokens;
        uint64_t bpc = w->chunk_tokens / w->c.bs;
        for (int kv = 0; kv < nkv; kv++)
            for (uint32_t l = 0; l < w->nlayers; l++)
                for (int64_t t = 0; t < tokens; t++) {
                    int64_t bi = (int64_t)(k * bpc) + t / w->c.bs;
                    int64_t blk = w->blocks[bi];
                    if (blk == null_block || bi < skip_blocks)
                        continue;
                    for (int64_t h = 0; h < w->nh_view; h++)
                        for (int64_t d = 0; d < w->c.hs; d++)
                            memcpy(want[l] + ref_paged(w, kv, blk, t % w->c.bs, h, d),
                                   w->chunks[k] + ref_chunk(w, k, kv, l, t, h, d), w->c.elem);
                }
    }
    struct tl_xfer x = world_xfer(w, null_block, skip_blocks);
    tl_scatter_host(&x);
    for (uint32_t l = 0; l < w->nlayers; l++) {
        cr_assert(memcmp(want[l], w->layers[l], w->layer_bytes) == 0, "layer %u differs after scatter", l);
        free(want[l]);
    }
    free(want);
}

static void roundtrip(const struct cfg *c, uint32_t nlayers, uint32_t nchunks, uint32_t chunk_tokens,
                      uint32_t last_tokens, int64_t null_block, int64_t skip_blocks)
{
    struct world w;
    world_init(&w, c, nlayers, nchunks, chunk_tokens, last_tokens, 0, c->nh);
    if (null_block >= 0 && nchunks > 1)
        w.blocks[1] = null_block; /* second block of the range is null */
    struct tl_xfer x = world_xfer(&w, null_block, 0);
    tl_gather_host(&x);
    check_gather(&w, null_block);
    check_scatter(&w, null_block, skip_blocks);
    world_free(&w);
}

static const struct {
    const char *name;
    int elem;
} dts[] = {{"bfloat16", 2}, {"float16", 2}, {"float32", 4}, {"uint8", 1}};

Test(transfer_layout, every_layout_and_dtype)
{
    const enum form forms[] = {F_FA, F_FI};
    const enum desc_mode modes[] = {D_NHD, D_HND_LOGICAL, D_HND_PHYSICAL};
    for (size_t di = 0; di < 4; di++) {
        for (size_t f = 0; f < 2; f++)
            for (size_t m = 0; m < 3; m++) {
                struct cfg c = {forms[f], modes[m], dts[di].name, dts[di].elem, 24, 4, 3, 16, 8};
                roundtrip(&c, 3, 3, 16, 16, -1, 0);   /* whole chunks */
                roundtrip(&c, 3, 3, 16, 7, 0, 2);     /* partial last, null 0, skip 2 blocks */
            }
        struct cfg mla = {F_MLA, D_NHD, dts[di].name, dts[di].elem, 24, 4, 1, 72, 16};
        roundtrip(&mla, 3, 3, 16, 16, -1, 0);
        roundtrip(&mla, 3, 3, 16, 5, 0, 1);
    }
}

Test(transfer_layout, detected_kinds_and_vectors)
{
    struct cfg cases[] = {
        {F_FA, D_NHD, "bfloat16", 2, 8, 16, 8, 128, 0},
        {F_FA, D_HND_LOGICAL, "bfloat16", 2, 8, 16, 8, 128, 0},
        {F_FA, D_HND_PHYSICAL, "bfloat16", 2, 8, 16, 8, 128, 0},
        {F_FI, D_NHD, "float16", 2, 8, 16, 8, 64, 0},
        {F_FI, D_HND_PHYSICAL, "float16", 2, 8, 16, 8, 64, 0},
        {F_MLA, D_NHD, "uint8", 1, 8, 16, 1, 576, 0},
        {F_FA, D_NHD, "float32", 4, 8, 16, 2, 3, 0}, /* 12-byte heads: 4-byte items */
        {F_FA, D_NHD, "uint8", 1, 8, 16, 2, 5, 0},   /* 5-byte heads: 1-byte items */
    };
    const int kinds[] = {TL_FA_NHD, TL_FA_HND, TL_FA_HND, TL_FI_NHD, TL_FI_HND, TL_MLA, TL_FA_NHD, TL_FA_NHD};
    const int vecs[] = {16, 16, 16, 16, 16, 16, 4, 1};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct strides s = true_strides(&cases[i]);
        int64_t shape[5], stride[5];
        struct tl_desc d;
        describe(&cases[i], &s, &d, shape, stride);
        struct tl_layout l;
        cr_assert_eq(tl_detect(&d, &l, NULL), 0, "case %zu", i);
        cr_assert_eq(l.kind, kinds[i], "case %zu kind %d", i, l.kind);
        cr_assert_eq(l.vec, vecs[i], "case %zu vec %d", i, l.vec);
        cr_assert_eq(l.row_bytes, cases[i].nh * cases[i].hs * cases[i].elem);
        cr_assert_eq(l.span, s.total * cases[i].elem, "case %zu span", i);
        /* the arithmetic: block b token t head h of V */
        if (cases[i].form != F_MLA) {
            int64_t want = (s.kv + 5 * s.b + 3 * s.t + 1 * s.h + 2) * cases[i].elem;
            cr_assert_eq(tl_paged_offset(&l, 1, 5, 3, l.head_bytes + 2 * cases[i].elem), want, "case %zu", i);
        }
    }
}

Test(transfer_layout, refusals)
{
    int64_t shape[5] = {2, 8, 16, 8, 128}, stride[5] = {8 * 16 * 8 * 128, 16 * 8 * 128, 8 * 128, 128, 1};
    struct tl_desc d = {5, shape, stride, "bfloat16", 8, TL_HINT_NONE, false};
    struct tl_layout l;
    const char *why = NULL;
    cr_assert_eq(tl_detect(&d, &l, &why), 0);
    d.dtype = "int64";
    d.dtype_len = 5;
    cr_assert_eq(tl_detect(&d, &l, &why), -ENOTSUP);
    cr_assert(why && strstr(why, "dtype"));
    d.dtype = "bfloat16";
    d.dtype_len = 8;
    d.ndim = 4;
    cr_assert_eq(tl_detect(&d, &l, &why), -EINVAL);
    d.ndim = 5;
    stride[4] = 2; /* head size not contiguous */
    cr_assert_eq(tl_detect(&d, &l, &why), -EINVAL);
    stride[4] = 1;
    shape[0] = 3; /* no K/V axis */
    cr_assert_eq(tl_detect(&d, &l, &why), -EINVAL);
    shape[0] = 2;
    d.hint = TL_HINT_FLASHINFER; /* dim 1 is 8, not 2 */
    cr_assert_eq(tl_detect(&d, &l, &why), -EINVAL);
    d.hint = TL_HINT_NONE;
    stride[3] = 64; /* heads overlap */
    cr_assert_eq(tl_detect(&d, &l, &why), -EINVAL);
    stride[3] = 128;
    stride[1] = -1;
    cr_assert_eq(tl_detect(&d, &l, &why), -EINVAL);
}

Test(transfer_layout, tp_shards)
{
    /* Two TP workers each see half the heads of one storage: each gathers
     * exactly its heads. */
    for (int mode = 0; mode < 3; mode++) {
        struct cfg c = {F_FA, (enum desc_mode)mode, "bfloat16", 2, 16, 4, 8, 16, 0};
        for (int64_t shard = 0; shard < 2; shard++) {
            struct world w;
            world_init(&w, &c, 4, 2, 8, 8, shard * 4, 4);
            struct tl_xfer x = world_xfer(&w, -1, 0);
            tl_gather_host(&x);
            check_gather(&w, -1);
            check_scatter(&w, -1, 1);
            world_free(&w);
        }
    }
}

Test(transfer_layout, hundreds_of_layers)
{
    struct cfg c = {F_FA, D_NHD, "bfloat16", 2, 12, 4, 2, 8, 0};
    roundtrip(&c, 320, 2, 16, 12, 0, 1);
    struct cfg m = {F_MLA, D_NHD, "uint8", 1, 12, 4, 1, 32, 0};
    roundtrip(&m, 320, 2, 16, 16, -1, 0);
}

Test(transfer_layout, null_chunks)
{
    struct cfg c = {F_FA, D_NHD, "bfloat16", 2, 16, 4, 2, 8, 0};
    struct world w;
    world_init(&w, &c, 2, 3, 8, 5, 0, 2);
    w.blocks[2] = 0;
    w.blocks[3] = 0; /* chunk 1 all null */
    w.blocks[0] = 0; /* chunk 0 partly null */
    if (w.blocks[1] == 0 || w.blocks[4] == 0 || w.blocks[5] == 0)
        w.blocks[1] = w.blocks[4] = w.blocks[5] = 15; /* keep the others real (shuffle may give 0) */
    struct tl_xfer x = world_xfer(&w, 0, 0);
    bool all;
    cr_assert(tl_chunk_has_null(&x, 0, &all) && !all);
    cr_assert(tl_chunk_has_null(&x, 1, &all) && all);
    cr_assert(!tl_chunk_has_null(&x, 2, &all) && !all);
    /* the partial last chunk (5 tokens, 2 blocks) looks only at its blocks */
    w.blocks[5] = 0;
    cr_assert(tl_chunk_has_null(&x, 2, &all) && !all);
    tl_gather_host(&x);
    check_gather(&w, 0);
    world_free(&w);
}

Test(transfer_layout, chunk_bytes_match_engine_layout)
{
    struct tl_layout l = {.nkv = 2, .row_bytes = 8 * 128 * 2};
    cr_assert_eq(tl_chunk_bytes(&l, 32, 256), 2ull * 32 * 256 * 8 * 128 * 2);
    /* K of layer 1 token 3 starts one layer plus three tokens in */
    cr_assert_eq(tl_chunk_offset(&l, 32, 256, 0, 1, 3, 0), (256ull + 3) * l.row_bytes);
    /* V starts after all K layers */
    cr_assert_eq(tl_chunk_offset(&l, 32, 256, 1, 0, 0, 0), 32ull * 256 * l.row_bytes);
}
