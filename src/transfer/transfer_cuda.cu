/*
 * transfer_cuda kernels: gather every layer's blocks of every chunk of a
 * batch into chunk objects (spec 7.4 layout), and the scatter mirror. One
 * launch per batch; each thread moves work items of tl_item() (the same
 * index code the host tests run), 16 bytes at a time when the layout
 * allows (vec == 16), else vec bytes.
 *
 * Built by nvcc into a fatbin (sm_80, sm_90, PTX) embedded in lmcd and
 * loaded with cuModuleLoadData; extern "C" keeps the names unmangled for
 * cuModuleGetFunction. Not run on a GPU yet.
 */
#include <stdint.h>

#include "transfer/transfer_layout.h"

__device__ __forceinline__ void tl_move(uint64_t dst, uint64_t src, int vec)
{
    switch (vec) {
    case 16:
        *(uint4 *)dst = *(const uint4 *)src;
        break;
    case 8:
        *(uint2 *)dst = *(const uint2 *)src;
        break;
    case 4:
        *(uint32_t *)dst = *(const uint32_t *)src;
        break;
    case 2:
        *(uint16_t *)dst = *(const uint16_t *)src;
        break;
    default:
        *(uint8_t *)dst = *(const uint8_t *)src;
    }
}

/* One body for both directions: gather reads the paged cache into the
 * chunk objects, scatter writes them back. */
__device__ __forceinline__ void tl_run(const struct tl_xfer &x, bool gather)
{
    uint64_t n = (uint64_t)x.nchunks * tl_items_per_chunk(&x);
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
        struct tl_loc loc;
        if (tl_item(&x, i, &loc))
            tl_move(gather ? loc.chunk : loc.paged, gather ? loc.paged : loc.chunk, x.lay.vec);
    }
}

extern "C" __global__ void lmcd_gather(struct tl_xfer x) { tl_run(x, true); }

extern "C" __global__ void lmcd_scatter(struct tl_xfer x) { tl_run(x, false); }
