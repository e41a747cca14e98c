/* transfer_layout: layout detection and the host builds of the batch copy
 * (contract in transfer_layout.h). */
#include "transfer/transfer_layout.h"

#include <errno.h>

static const struct {
    const char *name;
    enum tl_dtype dt;
    int size;
} dtypes[] = {
    {"bfloat16", TL_BF16, 2},        {"float16", TL_FP16, 2},       {"half", TL_FP16, 2},
    {"float32", TL_FP32, 4},         {"float", TL_FP32, 4},         {"uint8", TL_U8, 1},
    {"float8_e4m3fn", TL_U8, 1},     {"float8_e5m2", TL_U8, 1},     {"float8_e4m3fnuz", TL_U8, 1},
    {"float8_e5m2fnuz", TL_U8, 1},
};

int tl_dtype_from_name(const char *name, size_t len, enum tl_dtype *out)
{
    for (size_t i = 0; i < sizeof(dtypes) / sizeof(dtypes[0]); i++)
        if (strlen(dtypes[i].name) == len && memcmp(dtypes[i].name, name, len) == 0) {
            *out = dtypes[i].dt;
            return dtypes[i].size;
        }
    return 0;
}

/* Every axis of the cache, as the index function sees it. */
struct axes {
    int64_t nkv, nb, bs, nh, hs;
    int64_t s_kv, s_blk, s_tok, s_head, s_dim; /* elements */
};

static int vec_for(int64_t head_bytes, const int64_t *byte_strides, int n)
{
    int v = 16;
    while (v > 1) {
        bool ok = head_bytes % v == 0;
        for (int i = 0; i < n && ok; i++)
            ok = byte_strides[i] % v == 0;
        if (ok)
            break;
        v /= 2;
    }
    return v;
}

static int fill(const struct axes *a, int elem, struct tl_layout *o, const char **why)
{
    const int64_t n[5] = {a->nkv, a->nb, a->bs, a->nh, a->hs};
    const int64_t s[4] = {a->s_kv, a->s_blk, a->s_tok, a->s_head};
    for (int i = 0; i < 5; i++)
        if (n[i] <= 0 || n[i] > ((int64_t)1 << 31)) {
            *why = "an axis is empty or larger than 2^31";
            return -EINVAL;
        }
    if (a->s_dim != 1) {
        *why = "the head-size axis is not contiguous";
        return -EINVAL;
    }
    const int64_t sz[4] = {a->nkv, a->nb, a->bs, a->nh};
    for (int i = 0; i < 4; i++)
        if (s[i] < 0 || (sz[i] > 1 && s[i] == 0) || s[i] > ((int64_t)1 << 40)) {
            *why = "a stride is negative, zero on a real axis, or too large";
            return -EINVAL;
        }
    if (a->nh > 1 && a->s_head < a->hs) {
        *why = "heads overlap";
        return -EINVAL;
    }
    o->elem = elem;
    o->nkv = (int32_t)a->nkv;
    o->nb = a->nb;
    o->bs = a->bs;
    o->nh = a->nh;
    o->hs = a->hs;
    o->s_kv = a->s_kv * elem;
    o->s_blk = a->s_blk * elem;
    o->s_tok = a->s_tok * elem;
    o->s_head = a->s_head * elem;
    o->head_bytes = a->hs * elem;
    o->row_bytes = a->nh * o->head_bytes;
    int64_t bs4[4] = {o->s_kv, o->s_blk, o->s_tok, o->s_head};
    o->vec = vec_for(o->head_bytes, bs4, 4);
    o->span = o->s_kv * (a->nkv - 1) + o->s_blk * (a->nb - 1) + o->s_tok * (a->bs - 1) +
              o->s_head * (a->nh - 1) + o->head_bytes;
    return 0;
}

int tl_detect(const struct tl_desc *d, struct tl_layout *out, const char **why)
{
    static const char *dummy;
    if (!why)
        why = &dummy;
    memset(out, 0, sizeof(*out));
    enum tl_dtype dt;
    int elem = tl_dtype_from_name(d->dtype, d->dtype_len, &dt);
    if (!elem) {
        *why = "dtype not served (bfloat16, float16, float32, uint8/float8 are)";
        return -ENOTSUP;
    }
    out->dtype = dt;
    const int64_t *n = d->shape, *s = d->stride;
    struct axes a = {0};
    if (d->ndim == 3 && (d->hint == TL_HINT_NONE || d->hint == TL_HINT_MLA)) {
        a = (struct axes){1, n[0], n[1], 1, n[2], 0, s[0], s[1], 0, s[2]};
        out->kind = TL_MLA;
        return fill(&a, elem, out, why);
    }
    if (d->ndim != 5 || d->hint == TL_HINT_MLA) {
        *why = "not a paged KV shape ([2,NB,BS,NH,HS], [NB,2,BS,NH,HS] or [NB,BS,HS])";
        return -EINVAL;
    }
    bool fa;
    if (d->hint == TL_HINT_FLASH_ATTN)
        fa = true;
    else if (d->hint == TL_HINT_FLASHINFER)
        fa = false;
    else
        fa = n[0] == 2; /* vLLM's default backend wins when NB is 2 too */
    int kvd = fa ? 0 : 1, bd = fa ? 1 : 0;
    if (n[kvd] != 2) {
        *why = fa ? "flash-attention layout without a K/V axis of 2 first" : "flashinfer layout without a K/V axis of 2";
        return -EINVAL;
    }
    /* A contiguous physical HND shape names NH before BS; a logical NHD
     * shape with HND strides needs no hint, the strides say it. */
    int td = d->hnd ? 3 : 2, hd = d->hnd ? 2 : 3;
    a = (struct axes){2, n[bd], n[td], n[hd], n[4], s[kvd], s[bd], s[td], s[hd], s[4]};
    int rc = fill(&a, elem, out, why);
    if (rc)
        return rc;
    bool hnd = out->nh > 1 ? out->s_head > out->s_tok : d->hnd;
    out->kind = fa ? (hnd ? TL_FA_HND : TL_FA_NHD) : (hnd ? TL_FI_HND : TL_FI_NHD);
    return 0;
}

bool tl_chunk_has_null(const struct tl_xfer *x, uint32_t c, bool *all_null)
{
    uint32_t tokens = c + 1 == x->nchunks ? x->last_tokens : x->chunk_tokens;
    uint64_t bpc = x->chunk_tokens / (uint64_t)x->lay.bs;
    uint64_t nblk = (tokens + (uint64_t)x->lay.bs - 1) / (uint64_t)x->lay.bs;
    bool any = false, all = true;
    for (uint64_t j = 0; j < nblk; j++) {
        bool nul = x->block_ids[c * bpc + j] == x->null_block;
        any |= nul;
        all &= nul;
    }
    if (all_null)
        *all_null = all;
    return any;
}

void tl_gather_host(const struct tl_xfer *x)
{
    uint64_t n = x->nchunks * tl_items_per_chunk(x);
    for (uint64_t i = 0; i < n; i++)
        tl_gather_item(x, i);
}

void tl_scatter_host(const struct tl_xfer *x)
{
    uint64_t n = x->nchunks * tl_items_per_chunk(x);
    for (uint64_t i = 0; i < n; i++)
        tl_scatter_item(x, i);
}
