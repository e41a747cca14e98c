/*
 * fakecuda: an emulated CUDA driver (libcuda.so.1) for tests on hosts
 * without a GPU. The real lmcd dlopen()s it through LD_LIBRARY_PATH
 * (tests/e2e/test_gpu_emulated.py) and runs its whole GPU path over host
 * memory. It exports exactly the entry points src/transfer/transfer_cuda.c
 * resolves (CU_FNS there), with the prototypes of the CUDA 13 cuda.h, and
 * follows the documented driver semantics where they matter to a caller:
 *
 * - cuInit first (else CUDA_ERROR_NOT_INITIALIZED); FAKECUDA_DEVICES devices
 *   (default 1), UUID of device i: fa4ec0da-0000-4000-8000-0000000000ii.
 * - Primary contexts are retained/released with a count; the current
 *   context is per thread (cuCtxSetCurrent). Every call the driver documents
 *   with CUDA_ERROR_INVALID_CONTEXT fails so without a current context.
 * - "Device memory" is host memory. cuMemAlloc: aligned host memory.
 *   cuIpcOpenMemHandle: the 64-byte handle (what PyTorch wraps as
 *   [version]['c'][64 bytes]) is
 *       "fkcudaM\0" | u32 pid | u32 fd | u64 size | u32 device | zeros
 *   naming a memfd of the exporting (test) process, mapped through
 *   /proc/<pid>/fd/<fd>; reopening a handle in the same context counts a
 *   reference and returns the same pointer (as documented), opening one in
 *   its own exporting process fails. Device pointers are host pointers
 *   (UVA, as on every 64-bit CUDA host).
 * - Streams are ordered host work: one thread per stream runs its queue in
 *   order (kernels, event records, event waits, async copies). A kernel
 *   fault (an address outside device-accessible memory, a misaligned
 *   vector access) is sticky on the context, as on a GPU: every later call
 *   in that context returns it.
 * - cuMemcpyHtoD from pageable memory returns once the bytes are staged;
 *   the DMA itself runs on the context's legacy NULL stream, which streams
 *   created with CU_STREAM_NON_BLOCKING do not wait for (documented "API
 *   synchronization behavior"). The fake delays that DMA by a few ms so a
 *   kernel that relies on it being done reads stale bytes, as it could on a
 *   GPU.
 * - Events: an interprocess event is a memfd page {"fkcudaE\0", u64
 *   recorded, u64 completed}; its 64-byte handle is
 *       "fkcudaE\0" | u32 pid | u32 fd | zeros.
 *   cuEventRecord bumps `recorded` at once and sets `completed` when its
 *   stream reaches it; cuStreamWaitEvent waits (in the stream, never the
 *   host) for the record current at the call. A test client records and
 *   completes its own events by writing the page.
 * - cuMemHostRegister records the range; device access to it needs
 *   DEVICEMAP, and PORTABLE from other contexts. Like the driver's pinning,
 *   it faults every page of the range in (MADV_POPULATE_WRITE: a lazily
 *   committed tmpfs mapping gains those pages), and it can be slowed and
 *   failed: FAKECUDA_PIN_DELAY_MS (milliseconds per GiB registered, the
 *   real cost is about 0.5 s/GiB, LMCache #4018), FAKECUDA_PIN_FAIL=1
 *   (every registration fails with CUDA_ERROR_OUT_OF_MEMORY, as under a
 *   low memlock limit) and FAKECUDA_PIN_LIMIT_MB (registrations past that
 *   many MiB in all fail so). FAKECUDA_FAIL_EVENT_HANDLE=N fails the Nth
 *   cuIpcGetEventHandle (=N-M: the Nth to the Mth; the event is recorded,
 *   its handle not given).
 * - FAKECUDA_NO_UVA=1: registered and allocated host memory is seen by
 *   kernels at another address (a second mapping of the same pages, one
 *   per registration), as without unified addressing: only the address
 *   cuMemHostGetDevicePointer gives is device-addressable, so a kernel
 *   that uses the host address (or assumes two registrations adjacent on
 *   the host are adjacent on the device) faults.
 * - cuMemHostAlloc is page-aligned host memory registered at once (flags
 *   PORTABLE/DEVICEMAP as for cuMemHostRegister), freed by cuMemFreeHost.
 * - cuMemcpyDtoHAsync/cuMemcpyHtoDAsync between device memory and pinned
 *   host memory run in stream order and touch the host bytes only then (so
 *   a host buffer reused before the copy ran is caught); an async DtoH into
 *   pageable memory is refused (lmcd must only DMA into pinned memory); an
 *   async HtoD from pageable memory first waits for its stream to drain
 *   (the driver "may synchronize with the stream" to stage it), then
 *   stages the bytes at the call.
 * - cuModuleLoadData accepts an image with the fatbin magic; the functions
 *   lmcd_gather/lmcd_scatter run on the CPU with tl_item(), the index
 *   function the .cu kernels use, reading `struct tl_xfer` by value as the
 *   kernels declare it, copied at launch as the driver copies parameters.
 *
 * Not faithful (said so where it matters): no timing, no real pinning, no
 * peer-access rules, no check that the image holds the kernels, streams are
 * drained at cuStreamDestroy (the driver returns at once and releases later),
 * cuMemFree, cuMemFreeHost and cuIpcCloseMemHandle drain every stream of
 * the context first, another registration's stream waiting on a client
 * event included (the driver's frees synchronise the device in practice,
 * and an unmap is taken to do the same, the safe assumption for a caller);
 * allocating (cuMemAlloc, cuMemHostAlloc), opening IPC handles, creating
 * streams and events and recording never wait for the device, as the
 * driver documents no synchronisation for them and a caller must not need
 * it (lmcd allocates while another worker's copy may be stuck).
 *
 * Every failure it returns is printed as one line "fakecuda: <call>:
 * <error>: <why>" on stderr, and at unload it prints "fakecuda: leak: ..."
 * for every mapping, registration, stream, event or retained context left,
 * so tests can assert a clean run.
 */
#include <cuda.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "transfer/transfer_layout.h"

#define FK_MAX_DEV 8
#define FK_DMA_DELAY_NS 3000000L /* the legacy stream's late DMA (see above) */

static const char FK_MEM_MAGIC[8] = "fkcudaM";
static const char FK_EV_MAGIC[8] = "fkcudaE";

/* ---------------------------------------------------------------- state */

enum { R_ALLOC, R_IPC, R_HOST };

struct fk_region {
    uintptr_t base;
    size_t len;
    uintptr_t dbase; /* R_HOST under FAKECUDA_NO_UVA: where kernels see it (an alias mapping); 0: base */
    int kind;
    int dev;
    struct CUctx_st *ctx; /* R_IPC/R_HOST: the context that opened/registered it */
    unsigned flags;       /* R_HOST: CU_MEMHOSTREGISTER_* */
    bool host_alloc;      /* R_HOST: from cuMemHostAlloc (alloc is what to free) */
    int refs;             /* R_IPC */
    uint8_t handle[CU_IPC_HANDLE_SIZE];
    void *alloc; /* R_ALLOC: what to free */
};

struct CUctx_st {
    int dev;
    int retains;
    atomic_int sticky; /* a kernel fault: every later call fails */
    struct CUstream_st *legacy; /* the NULL stream's DMA thread */
};

struct CUmod_st {
    void *fk_next; /* fk.objs: freed at unload */
    struct CUctx_st *ctx;
};

struct CUfunc_st {
    void *fk_next; /* fk.objs */
    struct CUmod_st *mod;
    int gather;
};

struct fk_evpage {
    char magic[8];
    _Atomic uint64_t recorded;
    _Atomic uint64_t completed;
};

struct fk_evmap { /* one mapping of an event page, shared by waits in flight */
    struct fk_evpage *pg;
    int fd;
    atomic_int refs;
};

struct CUevent_st {
    struct CUctx_st *ctx;
    unsigned flags;
    bool imported;
    struct fk_evmap *map;
};

enum { OP_KERNEL, OP_RECORD, OP_WAIT, OP_COPY };

struct fk_op {
    int kind;
    struct fk_op *next;
    struct fk_evmap *ev;  /* RECORD/WAIT */
    uint64_t seq;         /* RECORD: the value; WAIT: the target */
    struct tl_xfer x;     /* KERNEL: parameters, copied at launch */
    int gather;
    void *dst, *src;      /* COPY: src is a staging copy, freed after, unless src_pinned */
    size_t len;
    bool src_pinned;
    long delay_ns;
};

struct CUstream_st {
    struct CUctx_st *ctx;
    pthread_t thr;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct fk_op *head, *tail;
    bool busy, stop;
    struct CUstream_st *next_in_ctx;
};

static struct {
    pthread_mutex_t mu; /* everything below */
    pthread_rwlock_t mem; /* held for reading while stream work touches memory, for writing to unmap */
    bool inited;
    int ndev;
    struct CUctx_st ctx[FK_MAX_DEV];
    struct fk_region *reg;
    size_t n_reg, cap_reg;
    struct CUstream_st *streams;
    int n_events, n_mods;
    uint64_t pinned_bytes; /* registered by cuMemHostRegister, for FAKECUDA_PIN_LIMIT_MB */
    void *objs; /* modules and functions (their first field links them), freed at unload */
} fk = {.mu = PTHREAD_MUTEX_INITIALIZER, .mem = PTHREAD_RWLOCK_INITIALIZER};

static __thread struct CUctx_st *fk_cur;

static const char *fk_name(CUresult r)
{
    switch (r) {
#define N_(x) \
    case x:   \
        return #x;
        N_(CUDA_SUCCESS) N_(CUDA_ERROR_INVALID_VALUE) N_(CUDA_ERROR_OUT_OF_MEMORY) N_(CUDA_ERROR_NOT_INITIALIZED)
        N_(CUDA_ERROR_NO_DEVICE) N_(CUDA_ERROR_INVALID_DEVICE) N_(CUDA_ERROR_INVALID_IMAGE)
        N_(CUDA_ERROR_INVALID_CONTEXT) N_(CUDA_ERROR_MAP_FAILED) N_(CUDA_ERROR_INVALID_HANDLE)
        N_(CUDA_ERROR_NOT_FOUND) N_(CUDA_ERROR_ILLEGAL_ADDRESS) N_(CUDA_ERROR_MISALIGNED_ADDRESS)
        N_(CUDA_ERROR_LAUNCH_FAILED) N_(CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED)
        N_(CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED) N_(CUDA_ERROR_CONTEXT_IS_DESTROYED)
#undef N_
    default:
        return NULL;
    }
}

__attribute__((format(printf, 3, 4))) static CUresult fk_fail(CUresult r, const char *fn, const char *fmt, ...)
{
    char msg[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, "fakecuda: %s: %s: %s\n", fn, fk_name(r) ? fk_name(r) : "CUDA error", msg);
    return r;
}

/* Initialised, and a context current in this thread (what destroying and
 * synchronising need: they work after a fault too). */
static CUresult fk_ctx_bound(const char *fn)
{
    if (!fk.inited)
        return fk_fail(CUDA_ERROR_NOT_INITIALIZED, fn, "cuInit was not called");
    if (!fk_cur)
        return fk_fail(CUDA_ERROR_INVALID_CONTEXT, fn, "no current context in this thread");
    return CUDA_SUCCESS;
}

/* The checks most calls start with: fk_ctx_bound, a live context, no
 * sticky fault. */
static CUresult fk_ctx_check(const char *fn)
{
    CUresult r = fk_ctx_bound(fn);
    if (r)
        return r;
    if (fk_cur->retains <= 0)
        return fk_fail(CUDA_ERROR_CONTEXT_IS_DESTROYED, fn, "the current primary context was released");
    int s = atomic_load(&fk_cur->sticky);
    if (s)
        return fk_fail((CUresult)s, fn, "sticky error from an earlier kernel fault");
    return CUDA_SUCCESS;
}

static int fk_reg_add(const struct fk_region *r)
{
    if (fk.n_reg == fk.cap_reg) {
        size_t cap = fk.cap_reg ? 2 * fk.cap_reg : 16;
        struct fk_region *n = realloc(fk.reg, cap * sizeof(*n));
        if (!n)
            return -ENOMEM;
        fk.reg = n;
        fk.cap_reg = cap;
    }
    fk.reg[fk.n_reg++] = *r;
    return 0;
}

static void fk_reg_del(size_t i) { fk.reg[i] = fk.reg[--fk.n_reg]; }

/* With FAKECUDA_TRACE set, one "fakecuda-trace:" line per IPC open/close
 * with the references left open (tests see a mapping close mid-run, e.g.
 * when lmcd reaps a worker). Under fk.mu. */
static void fk_trace_ipc(const char *what)
{
    if (!getenv("FAKECUDA_TRACE"))
        return;
    size_t open = 0;
    for (size_t i = 0; i < fk.n_reg; i++)
        if (fk.reg[i].kind == R_IPC)
            open += fk.reg[i].refs;
    fprintf(stderr, "fakecuda-trace: %s: IPC mappings open: %zu\n", what, open);
}

/* ---------------------------------------------------------------- init, devices, contexts */

CUresult CUDAAPI cuGetErrorName(CUresult error, const char **pStr)
{
    if (!pStr)
        return CUDA_ERROR_INVALID_VALUE;
    *pStr = fk_name(error);
    return *pStr ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult CUDAAPI cuInit(unsigned int Flags)
{
    if (Flags)
        return fk_fail(CUDA_ERROR_INVALID_VALUE, "cuInit", "flags must be 0");
    pthread_mutex_lock(&fk.mu);
    if (!fk.inited) {
        const char *e = getenv("FAKECUDA_DEVICES");
        int n = e ? atoi(e) : 1;
        fk.ndev = n < 0 ? 0 : n > FK_MAX_DEV ? FK_MAX_DEV : n;
        for (int i = 0; i < FK_MAX_DEV; i++)
            fk.ctx[i].dev = i;
        fk.inited = true;
    }
    pthread_mutex_unlock(&fk.mu);
    return fk.ndev ? CUDA_SUCCESS : fk_fail(CUDA_ERROR_NO_DEVICE, "cuInit", "FAKECUDA_DEVICES=0");
}

CUresult CUDAAPI cuDeviceGetCount(int *count)
{
    if (!fk.inited)
        return fk_fail(CUDA_ERROR_NOT_INITIALIZED, "cuDeviceGetCount", "cuInit was not called");
    if (!count)
        return fk_fail(CUDA_ERROR_INVALID_VALUE, "cuDeviceGetCount", "NULL");
    *count = fk.ndev;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGet(CUdevice *device, int ordinal)
{
    if (!fk.inited)
        return fk_fail(CUDA_ERROR_NOT_INITIALIZED, "cuDeviceGet", "cuInit was not called");
    if (!device)
        return fk_fail(CUDA_ERROR_INVALID_VALUE, "cuDeviceGet", "NULL");
    if (ordinal < 0 || ordinal >= fk.ndev)
        return fk_fail(CUDA_ERROR_INVALID_DEVICE, "cuDeviceGet", "ordinal %d of %d", ordinal, fk.ndev);
    *device = ordinal;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGetUuid_v2(CUuuid *uuid, CUdevice dev)
{
    if (!fk.inited)
        return fk_fail(CUDA_ERROR_NOT_INITIALIZED, "cuDeviceGetUuid_v2", "cuInit was not called");
    if (!uuid)
        return fk_fail(CUDA_ERROR_INVALID_VALUE, "cuDeviceGetUuid_v2", "NULL");
    if (dev < 0 || dev >= fk.ndev)
        return fk_fail(CUDA_ERROR_INVALID_DEVICE, "cuDeviceGetUuid_v2", "device %d", dev);
    static const unsigned char base[16] = {0xfa, 0x4e, 0xc0, 0xda, 0, 0, 0x40, 0, 0x80, 0, 0, 0, 0, 0, 0, 0};
    memcpy(uuid->bytes, base, 16);
    uuid->bytes[15] = (char)dev;
    return CUDA_SUCCESS;
}

static void *fk_stream_main(void *arg);

CUresult CUDAAPI cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev)
{
    if (!fk.inited)
        return fk_fail(CUDA_ERROR_NOT_INITIALIZED, "cuDevicePrimaryCtxRetain", "cuInit was not called");
    if (!pctx)
        return fk_fail(CUDA_ERROR_INVALID_VALUE, "cuDevicePrimaryCtxRetain", "NULL");
    if (dev < 0 || dev >= fk.ndev)
        return fk_fail(CUDA_ERROR_INVALID_DEVICE, "cuDevicePrimaryCtxRetain", "device %d", dev);
    pthread_mutex_lock(&fk.mu);
    struct CUctx_st *c = &fk.ctx[dev];
    if (c->retains++ == 0)
        atomic_store(&c->sticky, 0); /* a new activation starts clean */
    pthread_mutex_unlock(&fk.mu);
    *pctx = c;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDevicePrimaryCtxRelease_v2(CUdevice dev)
{
    if (!fk.inited)
        return fk_fail(CUDA_ERROR_NOT_INITIALIZED, "cuDevicePrimaryCtxRelease_v2", "cuInit was not called");
    if (dev < 0 || dev >= fk.ndev)
        return fk_fail(CUDA_ERROR_INVALID_DEVICE, "cuDevicePrimaryCtxRelease_v2", "device %d", dev);
    pthread_mutex_lock(&fk.mu);
    CUresult r = CUDA_SUCCESS;
    if (fk.ctx[dev].retains <= 0)
        r = fk_fail(CUDA_ERROR_INVALID_CONTEXT, "cuDevicePrimaryCtxRelease_v2", "device %d not retained", dev);
    else
        fk.ctx[dev].retains--;
    pthread_mutex_unlock(&fk.mu);
    return r;
}

CUresult CUDAAPI cuCtxSetCurrent(CUcontext ctx)
{
    if (!fk.inited)
        return fk_fail(CUDA_ERROR_NOT_INITIALIZED, "cuCtxSetCurrent", "cuInit was not called");
    if (ctx && (ctx < &fk.ctx[0] || ctx >= &fk.ctx[fk.ndev] || ctx->retains <= 0))
        return fk_fail(CUDA_ERROR_INVALID_CONTEXT, "cuCtxSetCurrent", "not a live context");
    fk_cur = ctx;
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- modules */

CUresult CUDAAPI cuModuleLoadData(CUmodule *module, const void *image)
{
    CUresult r = fk_ctx_check("cuModuleLoadData");
    if (r)
        return r;
    if (!module || !image)
        return fk_fail(CUDA_ERROR_INVALID_VALUE, "cuModuleLoadData", "NULL");
    uint32_t magic;
    memcpy(&magic, image, 4);
    if (magic != 0xBA55ED50u) /* nvcc's fatbin header */
        return fk_fail(CUDA_ERROR_INVALID_IMAGE, "cuModuleLoadData", "not a fatbin (magic %08x)", magic);
    struct CUmod_st *m = calloc(1, sizeof(*m));
    if (!m)
        return CUDA_ERROR_OUT_OF_MEMORY;
    m->ctx = fk_cur;
    pthread_mutex_lock(&fk.mu);
    fk.n_mods++;
    m->fk_next = fk.objs;
    fk.objs = m;
    pthread_mutex_unlock(&fk.mu);
    *module = m;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuModuleGetFunction(CUfunction *hfunc, CUmodule hmod, const char *name)
{
    CUresult r = fk_ctx_check("cuModuleGetFunction");
    if (r)
        return r;
    if (!hfunc || !hmod || !name)
        return fk_fail(CUDA_ERROR_INVALID_VALUE, "cuModuleGetFunction", "NULL");
    int gather = !strcmp(name, "lmcd_gather");
    if (!gather && strcmp(name, "lmcd_scatter"))
        return fk_fail(CUDA_ERROR_NOT_FOUND, "cuModuleGetFunction", "no kernel %s", name);
    struct CUfunc_st *f = calloc(1, sizeof(*f));
    if (!f)
        return CUDA_ERROR_OUT_OF_MEMORY;
    /* Functions live as long as their module; the driver frees them at
     * cuModuleUnload or context teardown. The fake frees them (and the
     * modules) at unload, counting nothing: lmcd never unloads its module. */
    f->mod = hmod;
    f->gather = gather;
    pthread_mutex_lock(&fk.mu);
    f->fk_next = fk.objs;
    fk.objs = f;
    pthread_mutex_unlock(&fk.mu);
    *hfunc = f;
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- streams */

static void fk_ev_put(struct fk_evmap *m)
{
    if (m && atomic_fetch_sub(&m->refs, 1) == 1) {
        munmap(m->pg, sizeof(*m->pg));
        close(m->fd);
        free(m);
    }
}

/* Whether [a, a+n) lies in memory `ctx` may address from a kernel. Over a
 * snapshot of the regions. */
static bool fk_addressable(const struct fk_region *rs, size_t nr, const struct CUctx_st *ctx, uintptr_t a, size_t n,
                           size_t *hint)
{
    if (*hint < nr) {
        const struct fk_region *r = &rs[*hint];
        uintptr_t b = r->dbase ? r->dbase : r->base;
        if (a >= b && a + n <= b + r->len && a + n >= a)
            return true;
    }
    for (size_t i = 0; i < nr; i++) {
        const struct fk_region *r = &rs[i];
        uintptr_t b = r->kind == R_HOST && r->dbase ? r->dbase : r->base;
        if (a < b || a + n > b + r->len || a + n < a)
            continue;
        bool ok = r->kind == R_ALLOC   ? r->dev == ctx->dev
                  : r->kind == R_IPC   ? r->ctx == ctx
                                       : (r->flags & CU_MEMHOSTREGISTER_DEVICEMAP) &&
                                           (r->ctx == ctx || (r->flags & CU_MEMHOSTREGISTER_PORTABLE));
        if (ok) {
            *hint = i;
            return true;
        }
    }
    return false;
}

static void fk_fault(struct CUctx_st *ctx, CUresult r, const char *what, uint64_t item, uintptr_t addr)
{
    int zero = 0;
    atomic_compare_exchange_strong(&ctx->sticky, &zero, (int)r);
    fk_fail(r, "kernel", "%s at item %llu, address 0x%llx", what, (unsigned long long)item,
            (unsigned long long)addr);
}

/* lmcd_gather / lmcd_scatter on the CPU: the kernels' grid-stride loop over
 * tl_item(), every access checked as the GPU's MMU would. */
static void fk_run_kernel(struct CUctx_st *ctx, const struct tl_xfer *x, int gather)
{
    pthread_mutex_lock(&fk.mu);
    size_t nr = fk.n_reg;
    struct fk_region *rs = malloc((nr ? nr : 1) * sizeof(*rs));
    if (rs)
        memcpy(rs, fk.reg, nr * sizeof(*rs));
    pthread_mutex_unlock(&fk.mu);
    if (!rs) {
        fk_fault(ctx, CUDA_ERROR_LAUNCH_FAILED, "out of host memory", 0, 0);
        return;
    }
    size_t h = 0;
    const struct tl_layout *l = &x->lay;
    /* Division by zero does not trap on a GPU (it yields garbage indices);
     * on the CPU it would: call it a launch failure. */
    if (!l->vec || !l->bs || !l->head_bytes || !x->chunk_tokens || !x->nlayers || !x->nchunks ||
        l->row_bytes % l->vec || x->chunk_tokens % l->bs) {
        fk_fault(ctx, CUDA_ERROR_LAUNCH_FAILED, "degenerate tl_xfer (zero or inconsistent sizes)", 0, 0);
        goto out;
    }
    uint64_t bpc = x->chunk_tokens / (uint64_t)l->bs;
    if (!fk_addressable(rs, nr, ctx, (uintptr_t)x->layer_base, x->nlayers * sizeof(uint64_t), &h)) {
        fk_fault(ctx, CUDA_ERROR_ILLEGAL_ADDRESS, "layer_base[] not in device memory", 0, (uintptr_t)x->layer_base);
        goto out;
    }
    if (!fk_addressable(rs, nr, ctx, (uintptr_t)x->block_ids, x->nchunks * bpc * sizeof(int64_t), &h)) {
        fk_fault(ctx, CUDA_ERROR_ILLEGAL_ADDRESS, "block_ids[] not in device memory", 0, (uintptr_t)x->block_ids);
        goto out;
    }
    if (!fk_addressable(rs, nr, ctx, (uintptr_t)x->chunk_addr, x->nchunks * sizeof(uint64_t), &h)) {
        fk_fault(ctx, CUDA_ERROR_ILLEGAL_ADDRESS, "chunk_addr[] not in device memory", 0, (uintptr_t)x->chunk_addr);
        goto out;
    }
    uint64_t n = (uint64_t)x->nchunks * tl_items_per_chunk(x);
    size_t hp = 0, hc = 0;
    for (uint64_t i = 0; i < n; i++) {
        struct tl_loc loc;
        if (!tl_item(x, i, &loc))
            continue;
        uintptr_t dst = gather ? loc.chunk : loc.paged, src = gather ? loc.paged : loc.chunk;
        size_t *hd = gather ? &hc : &hp, *hs = gather ? &hp : &hc;
        if ((dst | src) % (uintptr_t)l->vec) {
            fk_fault(ctx, CUDA_ERROR_MISALIGNED_ADDRESS, "misaligned vector access", i, dst % l->vec ? dst : src);
            goto out;
        }
        if (!fk_addressable(rs, nr, ctx, src, (size_t)l->vec, hs)) {
            fk_fault(ctx, CUDA_ERROR_ILLEGAL_ADDRESS, gather ? "read outside the paged cache" : "read outside L1", i,
                     src);
            goto out;
        }
        if (!fk_addressable(rs, nr, ctx, dst, (size_t)l->vec, hd)) {
            fk_fault(ctx, CUDA_ERROR_ILLEGAL_ADDRESS, gather ? "write outside L1" : "write outside the paged cache", i,
                     dst);
            goto out;
        }
        memcpy((void *)dst, (const void *)src, (size_t)l->vec);
    }
out:
    free(rs);
}

static void fk_run_op(struct CUstream_st *s, struct fk_op *op)
{
    switch (op->kind) {
    case OP_KERNEL:
        if (!atomic_load(&s->ctx->sticky)) {
            pthread_rwlock_rdlock(&fk.mem);
            fk_run_kernel(s->ctx, &op->x, op->gather);
            pthread_rwlock_unlock(&fk.mem);
        }
        break;
    case OP_RECORD: {
        uint64_t c = atomic_load(&op->ev->pg->completed);
        while (c < op->seq && !atomic_compare_exchange_weak(&op->ev->pg->completed, &c, op->seq))
            ;
        fk_ev_put(op->ev);
        break;
    }
    case OP_WAIT:
        /* The client completes its events from another process: poll. */
        while (atomic_load(&op->ev->pg->completed) < op->seq) {
            struct timespec ts = {0, 200000};
            nanosleep(&ts, NULL);
        }
        fk_ev_put(op->ev);
        break;
    case OP_COPY:
        if (op->delay_ns) {
            struct timespec ts = {0, op->delay_ns};
            nanosleep(&ts, NULL);
        }
        pthread_rwlock_rdlock(&fk.mem);
        memcpy(op->dst, op->src, op->len);
        pthread_rwlock_unlock(&fk.mem);
        if (!op->src_pinned)
            free(op->src);
        break;
    }
    free(op);
}

static void *fk_stream_main(void *arg)
{
    struct CUstream_st *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->head && !s->stop)
            pthread_cond_wait(&s->cv, &s->mu);
        if (!s->head)
            break;
        struct fk_op *op = s->head;
        s->head = op->next;
        if (!s->head)
            s->tail = NULL;
        s->busy = true;
        pthread_mutex_unlock(&s->mu);
        fk_run_op(s, op);
        pthread_mutex_lock(&s->mu);
        s->busy = false;
        pthread_cond_broadcast(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static void fk_push(struct CUstream_st *s, struct fk_op *op)
{
    op->next = NULL;
    pthread_mutex_lock(&s->mu);
    if (s->tail)
        s->tail->next = op;
    else
        s->head = op;
    s->tail = op;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static void fk_drain(struct CUstream_st *s)
{
    pthread_mutex_lock(&s->mu);
    while (s->head || s->busy)
        pthread_cond_wait(&s->cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
}

static struct CUstream_st *fk_stream_new(struct CUctx_st *ctx)
{
    struct CUstream_st *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->ctx = ctx;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    if (pthread_create(&s->thr, NULL, fk_stream_main, s)) {
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->cv);
        free(s);
        return NULL;
    }
    return s;
}

static void fk_stream_free(struct CUstream_st *s)
{
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thr, NULL); /* runs the queue out first */
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}

/* Whether `s` is a live stream of the current context. Under fk.mu. */
static bool fk_stream_ok(struct CUstream_st *s)
{
    for (struct CUstream_st *i = fk.streams; i; i = i->next_in_ctx)
        if (i == s)
            return s->ctx == fk_cur;
    return false;
}

CUresult CUDAAPI cuStreamCreate(CUstream *phStream, unsigned int Flags)
{
    CUresult r = fk_ctx_check("cuStreamCreate");
    if (r)
        return r;
    if (!phStream || (Flags & ~(unsigned)CU_STREAM_NON_BLOCKING))
        return fk_fail(CUDA_ERROR_INVALID_VALUE, "cuStreamCreate", "NULL or flags 0x%x", Flags);
    struct CUstream_st *s = fk_stream_new(fk_cur);
    if (!s)
        return fk_fail(CUDA_ERROR_OUT_OF_MEMORY, "cuStreamCreate", "no thread");
    pthread_mutex_lock(&fk.mu);
    s->next_in_ctx = fk.streams;
    fk.streams = s;
    pthread_mutex_unlock(&fk.mu);
    *phStream = s;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuStreamDestroy_v2(CUstream hStream)
{
    CUresult r0 = fk_ctx_bound("cuStreamDestroy_v2");
    if (r0)
        return r0;
    pthread_mutex_lock(&fk.mu);
    if (!hStream || !fk_stream_ok(hStream)) {
        pthread_mutex_unlock(&fk.mu);
        return fk_fail(CUDA_ERROR_INVALID_HANDLE, "cuStreamDestroy_v2", "not a stream of the current context");
    }
    for (struct CUstream_st **p = &fk.streams; *p; p = &(*p)->next_in_ctx)
        if (*p == hStream) {
            *p = hStream->next_in_ctx;
            break;
        }
    pthread_mutex_unlock(&fk.mu);
    fk_stream_free(hStream);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuStreamSynchronize(CUstream hStream)
{
    CUresult r0 = fk_ctx_bound("cuStreamSynchronize");
    if (r0)
        return r0;
    pthread_mutex_lock(&fk.mu);
    bool ok = hStream && fk_stream_ok(hStream);
    pthread_mutex_unlock(&fk.mu);
    if (!ok)
        return fk_fail(CUDA_ERROR_INVALID_HANDLE, "cuStreamSynchronize", "not a stream of the current context");
    fk_drain(hStream);
    int s = atomic_load(&fk_cur->sticky);
    return s ? fk_fail((CUresult)s, "cuStreamSynchronize", "a kernel faulted") : CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- events */

static struct fk_evmap *fk_evmap_open(int fd)
{
    struct fk_evmap *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->pg = mmap(NULL, sizeof(*m->pg), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m->pg == MAP_FAILED) {
        free(m);
        return NULL;
    }
    m->fd = fd;
    atomic_store(&m->refs, 1);
    return m;
}

CUresult CUDAAPI cuEventCreate(CUevent *phEvent, unsigned int Flags)
{
    CUresult r = fk_ctx_check("cuEventCreate");
    if (r)
        return r;
    unsigned all = CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING | CU_EVENT_INTERPROCESS;
    if (!phEvent || (Flags & ~all) ||
        ((Flags & CU_EVENT_INTERPROCESS) && !(Flags & CU_EVENT_DISABLE_TIMING)))
        return fk_fail(CUDA_ERROR_INVALID_VALUE, "cuEventCreate", "flags 0x%x (interprocess needs disable-timing)",
                       Flags);
    int fd = memfd_create("fakecuda-event", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, sizeof(struct fk_evpage))) {
        if (fd >= 0)
            close(fd);
        return fk_fail(CUDA_ERROR_OUT_OF_MEMORY, "cuEventCreate", "memfd: %s", strerror(errno));
    }
    struct fk_evmap *m = fk_evmap_open(fd);
    struct CUevent_st *e = calloc(1, sizeof(*e));
    if (!m || !e) {
        if (m)
            fk_ev_put(m);
        else
            close(fd);
        free(e);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    memcpy(m->pg->magic, FK_EV_MAGIC, 8);
    e->ctx = fk_cur;
    e->flags = Flags;
    e->map = m;
    pthread_mutex_lock(&fk.mu);
    fk.n_events++;
    pthread_mutex_unlock(&fk.mu);
    *phEvent = e;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuEventDestroy_v2(CUevent hEvent)
{
    CUresult r0 = fk_ctx_bound("cuEventDestroy_v2");
    if (r0)
        return r0;
    if (!hEvent)
        return fk_fail(CUDA_ERROR_INVALID_HANDLE, "cuEventDestroy_v2", "NULL");
    /* Work in flight keeps its own reference (as the driver releases a
     * recorded event's resources once the device is done with it). */
    fk_ev_put(hEvent->map);
    free(hEvent);
    pthread_mutex_lock(&fk.mu);
    fk.n_events--;
    pthread_mutex_unlock(&fk.mu);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuEventRecord(CUevent hEvent, CUstream hStream)
{
    CUresult r = fk_ctx_check("cuEventRecord");
    if (r)
        return r;
    if (!hEvent)
        return fk_fail(CUDA_ERROR_INVALID_HANDLE, "cuEventRecord", "NULL event");
    pthread_mutex_lock(&fk.mu);
    bool ok = hStream && fk_stream_ok(hStream);
    pthread_mutex_unlock(&fk.mu);
    if (!ok || hEvent->ctx != fk_cur)
        return fk_fail(CUDA_ERROR_INVALID_HANDLE, "cuEventRecord", "stream or event not of the current context");
    struct fk_op *op = calloc(1, sizeof(*op));
    if (!op)
        return CUDA_ERROR_OUT_OF_MEMORY;
    op->kind = OP_RECORD;
    op->ev = hEvent->map;
    atomic_fetch_add(&op->ev->refs, 1);
    op->seq = atomic_fetch_add(&hEvent->map->pg->recorded, 1) + 1;
    fk_push(hStream, op);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuStreamWaitEvent(CUstream hStream, CUevent hEvent, unsigned int Flags)
{
    CUresult r = fk_ctx_check("cuStreamWaitEvent");
    if (r)
        return r;
    if (Flags)
        return fk_fail(CUDA_ERROR_INVALID_VALUE, "cuStreamWaitEvent", "flags 0x%x", Flags);
    pthread_mutex_lock(&fk.mu);
    bool ok = hStream && fk_stream_ok(hStream);
    pthread_mutex_unlock(&fk.mu);
    if (!ok || !hEvent)
        return fk_fail(CUDA_ERROR_INVALID_HANDLE, "cuStreamWaitEvent", "stream or event invalid");
    struct fk_op *op = calloc(1, sizeof(*op));
    if (!op)
        return CUDA_ERROR_OUT_OF_MEMORY;
    op->kind = OP_WAIT;
    op->ev = hEvent->map;
    atomic_fetch_add(&op->ev->refs, 1);
    op->seq = atomic_load(&hEvent->map->pg->recorded); /* the record current now; 0: complete */
    fk_push(hStream, op);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuEventSynchronize(CUevent hEvent)
{
    CUresult r = fk_ctx_check("cuEventSynchronize");
    if (r)
        return r;
    if (!hEvent)
        return fk_fail(CUDA_ERROR_INVALID_HANDLE, "cuEventSynchronize", "NULL");
    /* The work captured by the latest record (none recorded: complete). */
    uint64_t target = atomic_load(&hEvent->map->pg->recorded);
    while (atomic_load(&hEvent->map->pg->completed) < target) {
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
    }
    /* Errors of earlier asynchronous work surface here, as documented. */
    int st = atomic_load(&hEvent->ctx->sticky);
    return st ? fk_fail((CUresult)st, "cuEventSynchronize", "a kernel faulted") : CUDA_SUCCESS;
}

CUresult CUDAAPI cuIpcGetEventHandle(CUipcEventHandle *pHandle, CUevent event)
{
    CUresult r = fk_ctx_check("cuIpcGetEventHandle");
    if (r)
        return r;
    if (!pHandle || !event)
        return fk_fail(CUDA_ERROR_INVALID_VALUE, "cuIpcGetEventHandle", "NULL");
    if (!(event->flags & CU_EVENT_INTERPROCESS) || event->imported)
        return fk_fail(CUDA_ERROR_INVALID_VALUE, "cuIpcGetEventHandle", "event not created with "
                                                                       "CU_EVENT_INTERPROCESS");
    /* FAKECUDA_FAIL_EVENT_HANDLE=N (or N-M): the Nth call (the Nth to the
     * Mth) fails (a driver error after the event was recorded on a
     * stream, behind queued work). */
    static atomic_uint n_calls;
    const char *e = getenv("FAKECUDA_FAIL_EVENT_HANDLE");
    unsigned call = atomic_fetch_add(&n_calls, 1) + 1, lo = e ? (unsigned)atoi(e) : 0, hi = lo;
    const char *dash = e ? strchr(e, '-') : NULL;
    if (dash)
        hi = (unsigned)atoi(dash + 1);
    if (lo && call >= lo && call <= hi)
        return fk_fail(CUDA_ERROR_UNKNOWN, "cuIpcGetEventHandle", "FAKECUDA_FAIL_EVENT_HANDLE=%s", e);
    memset(pHandle->reserved, 0, sizeof(pHandle->reserved));
    uint32_t pid = (uint32_t)getpid(), fd = (uint32_t)event->map->fd;
    memcpy(pHandle->reserved, FK_EV_MAGIC, 8);
    memcpy(pHandle->reserved + 8, &pid, 4);
    memcpy(pHandle->reserved + 12, &fd, 4);
    return CUDA_SUCCESS;
}

/* Opens /proc/<pid>/fd/<fd> named by a handle from another process. */
static int fk_open_peer_fd(const char *h, uint32_t *pid_out)
{
    uint32_t pid, fd;
    memcpy(&pid, h + 8, 4);
    memcpy(&fd, h + 12, 4);
    *pid_out = pid;
    char path[64];
    snprintf(path, sizeof(path), "/proc/%u/fd/%u", pid, fd);
    return open(path, O_RDWR | O_CLOEXEC);
}

CUresult CUDAAPI cuIpcOpenEventHandle(CUevent *phEvent, CUipcEventHandle handle)
{
    CUresult r = fk_ctx_check("cuIpcOpenEventHandle");
    if (r)
        return r;
    if (!phEvent)
        return fk_fail(CUDA_ERROR_INVALID_VALUE, "cuIpcOpenEventHandle", "NULL");
    if (memcmp(handle.reserved, FK_EV_MAGIC, 8))
        return fk_fail(CUDA_ERROR_INVALID_HANDLE, "cuIpcOpenEventHandle", "not an event handle");
    uint32_t pid;
    int fd = fk_open_peer_fd(handle.reserved, &pid);
    if (pid == (uint32_t)getpid()) {
        if (fd >= 0)
            close(fd);
        return fk_fail(CUDA_ERROR_INVALID_CONTEXT, "cuIpcOpenEventHandle", "handle of this very process");
    }
    if (fd < 0)
        return fk_fail(CUDA_ERROR_MAP_FAILED, "cuIpcOpenEventHandle", "pid %u: %s", pid, strerror(errno));
    struct fk_evmap *m = fk_evmap_open(fd);
    struct CUevent_st *e = calloc(1, sizeof(*e));
    if (!m || !e || memcmp(m->pg->magic, FK_EV_MAGIC, 8)) {
        bool bad = m && e;
        if (m)
            fk_ev_put(m);
        else
            close(fd);
        free(e);
        return bad ? fk_fail(CUDA_ERROR_INVALID_HANDLE, "cuIpcOpenEventHandle", "not an event page")
                   : fk_fail(CUDA_ERROR_MAP_FAILED, "cuIpcOpenEventHandle", "mmap");
    }
    e->ctx = fk_cur;
    e->flags = CU_EVENT_DISABLE_TIMING | CU_EVENT_INTERPROCESS;
    e->imported = true;
    e->map = m;
    pthread_mutex_lock(&fk.mu);
    fk.n_events++;
    pthread_mutex_unlock(&fk.mu);
    *phEvent = e;
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- memory */

CUresult CUDAAPI cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize)
{
    CUresult r = fk_ctx_check("cuMemAlloc_v2");
    if (r)
        return r;
    if (!dptr || !bytesize)
        return fk_fail(CUDA_ERROR_INVALID_VALUE, "cuMemAlloc_v2", "NULL or 0 bytes");
    void *p = NULL;
    if (posix_memalign(&p, 256, bytesize)) /* the driver aligns to at least 256 */
        return fk_fail(CUDA_ERROR_OUT_OF_MEMORY, "cuMemAlloc_v2", "%zu bytes", bytesize);
    memset(p, 0xA5, bytesize); /* device memory starts with garbage */
    struct fk_region reg = {.base = (uintptr_t)p, .len = bytesize, .kind = R_ALLOC, .dev = fk_cur->dev, .alloc = p};
    pthread_mutex_lock(&fk.mu);
    int rc = fk_reg_add(&reg);
    pthread_mutex_unlock(&fk.mu);
    if (rc) {
        free(p);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *dptr = (CUdeviceptr)(uintptr_t)p;
    return CUDA_SUCCESS;
}

static void fk_drain_ctx(struct CUctx_st *ctx)
{
    for (;;) {
        /* Streams can come and go meanwhile: drain one at a time, by a
         * fresh look at the list. */
        pthread_mutex_lock(&fk.mu);
        struct CUstream_st *busy = NULL;
        for (struct CUstream_st *s = fk.streams; s && !busy; s = s->next_in_ctx) {
            pthread_mutex_lock(&s->mu);
            if (s->ctx == ctx && (s->head || s->busy))
                busy = s;
            pthread_mutex_unlock(&s->mu);
        }
        if (!busy) {
            pthread_mutex_unlock(&fk.mu);
            return;
        }
        /* The stream cannot be destroyed while we wait: only its own
         * context's callers destroy it, and the wait is short. */
        pthread_mutex_unlock(&fk.mu);
        fk_drain(busy);
    }
}

CUresult CUDAAPI cuMemFree_v2(CUdeviceptr dptr)
{
    CUresult r0 = fk_ctx_bound("cuMemFree_v2");
    if (r0)
        return r0;
    fk_drain_ctx(fk_cur);
    if (fk_cur->legacy)
        fk_drain(fk_cur->legacy);
    pthread_rwlock_wrlock(&fk.mem);
    pthread_mutex_lock(&fk.mu);
    void *p = NULL;
    for (size_t i = 0; i < fk.n_reg; i++)
        if (fk.reg[i].kind == R_ALLOC && fk.reg[i].base == (uintptr_t)dptr) {
            p = fk.reg[i].alloc;
            fk_reg_del(i);
            break;
        }
    pthread_mutex_unlock(&fk.mu);
    pthread_rwlock_unlock(&fk.mem);
    if (!p)
        return fk_fail(CUDA_ERROR_INVALID_VALUE, "cuMemFree_v2", "0x%llx is not an allocation",
                       (unsigned long long)dptr);
    free(p);
    return CUDA_SUCCESS;
}

/* Whether [p, p+n) is wholly inside one device allocation of `ctx`'s
 * device. Under fk.mu. */
static bool fk_in_alloc(uintptr_t p, size_t n, const struct CUctx_st *ctx)
{
    for (size_t i = 0; i < fk.n_reg; i++) {
        const struct fk_region *r = &fk.reg[i];
        if ((r->kind == R_ALLOC && r->dev == ctx->dev) || (r->kind == R_IPC && r->ctx == ctx))
            if (p >= r->base && p + n <= r->base + r->len && p + n >= p)
                return true;
    }
    return false;
}

/* Whether [p, p+n) is wholly inside one pinned host range the current
 * context may use (its own, or PORTABLE). Under fk.mu. */
static bool fk_in_pinned(uintptr_t p, size_t n)
{
    for (size_t i = 0; i < fk.n_reg; i++) {
        const struct fk_region *r = &fk.reg[i];
        if (r->kind == R_HOST && (r->ctx == fk_cur || (r->flags & CU_MEMHOSTREGISTER_PORTABLE)) && p >= r->base &&
            p + n <= r->base + r->len && p + n >= p)
            return true;
    }
    return false;
}

/* Both copies from pageable memory stage the source at the call ("host
 * memory is copied to a staging buffer immediately") and write the device
 * later, in stream order: on hStream, or, for the synchronous call, on the
 * legacy NULL stream after a delay (see the header): streams created with
 * CU_STREAM_NON_BLOCKING do not wait for it. */
static CUresult fk_htod(const char *fn, CUdeviceptr dst, const void *src, size_t n, CUstream hStream)
{
    CUresult r = fk_ctx_check(fn);
    if (r)
        return r;
    if (!src && n)
        return fk_fail(CUDA_ERROR_INVALID_VALUE, fn, "NULL source");
    pthread_mutex_lock(&fk.mu);
    bool ok = fk_in_alloc((uintptr_t)dst, n, fk_cur);
    bool pinned = hStream && fk_in_pinned((uintptr_t)src, n);
    bool sok = !hStream || fk_stream_ok(hStream);
    if (ok && !hStream && !fk_cur->legacy)
        fk_cur->legacy = fk_stream_new(fk_cur);
    struct CUstream_st *st = hStream ? hStream : fk_cur->legacy;
    pthread_mutex_unlock(&fk.mu);
    if (!sok)
        return fk_fail(CUDA_ERROR_INVALID_HANDLE, fn, "not a stream of the current context");
    if (!ok)
        return fk_fail(CUDA_ERROR_INVALID_VALUE, fn, "destination 0x%llx+%zu not device memory",
                       (unsigned long long)dst, n);
    if (!n)
        return CUDA_SUCCESS;
    struct fk_op *op = calloc(1, sizeof(*op));
    /* From pinned memory the DMA reads the source when the stream gets
     * there, not at the call: a buffer reused too early shows. */
    void *stage = pinned ? (void *)src : malloc(n);
    if (!op || !stage || !st) {
        free(op);
        if (!pinned)
            free(stage);
        return fk_fail(CUDA_ERROR_OUT_OF_MEMORY, fn, "staging %zu bytes", n);
    }
    /* An async copy from pageable memory may first synchronise with its
     * stream ("API synchronization behavior"): the fake always does, so a
     * caller that queues one under a lock, behind a wait that never ends,
     * is seen waiting. */
    if (hStream && !pinned)
        fk_drain(hStream);
    if (!pinned)
        memcpy(stage, src, n);
    op->kind = OP_COPY;
    op->dst = (void *)(uintptr_t)dst;
    op->src = stage;
    op->src_pinned = pinned;
    op->len = n;
    op->delay_ns = hStream ? 0 : FK_DMA_DELAY_NS;
    fk_push(st, op);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemcpyHtoD_v2(CUdeviceptr dstDevice, const void *srcHost, size_t ByteCount)
{
    return fk_htod("cuMemcpyHtoD_v2", dstDevice, srcHost, ByteCount, NULL);
}

CUresult CUDAAPI cuMemcpyHtoDAsync_v2(CUdeviceptr dstDevice, const void *srcHost, size_t ByteCount, CUstream hStream)
{
    /* lmcd never passes the NULL stream; the fake does not model it here */
    if (!hStream)
        return fk_fail(CUDA_ERROR_INVALID_HANDLE, "cuMemcpyHtoDAsync_v2", "the NULL stream is not emulated");
    return fk_htod("cuMemcpyHtoDAsync_v2", dstDevice, srcHost, ByteCount, hStream);
}

CUresult CUDAAPI cuMemcpyDtoHAsync_v2(void *dstHost, CUdeviceptr srcDevice, size_t ByteCount, CUstream hStream)
{
    const char *fn = "cuMemcpyDtoHAsync_v2";
    CUresult r = fk_ctx_check(fn);
    if (r)
        return r;
    if (!dstHost && ByteCount)
        return fk_fail(CUDA_ERROR_INVALID_VALUE, fn, "NULL destination");
    pthread_mutex_lock(&fk.mu);
    bool ok = fk_in_alloc((uintptr_t)srcDevice, ByteCount, fk_cur);
    bool pinned = fk_in_pinned((uintptr_t)dstHost, ByteCount);
    bool sok = hStream && fk_stream_ok(hStream);
    pthread_mutex_unlock(&fk.mu);
    if (!sok)
        return fk_fail(CUDA_ERROR_INVALID_HANDLE, fn, "not a stream of the current context (the NULL stream is not "
                                                      "emulated)");
    if (!ok)
        return fk_fail(CUDA_ERROR_INVALID_VALUE, fn, "source 0x%llx+%zu not device memory",
                       (unsigned long long)srcDevice, ByteCount);
    /* The driver would copy into pageable memory synchronously; lmcd means
     * to DMA into pinned memory only, so the fake treats it as a bug. */
    if (!pinned)
        return fk_fail(CUDA_ERROR_INVALID_VALUE, fn, "destination %p+%zu is not pinned host memory", dstHost,
                       ByteCount);
    if (!ByteCount)
        return CUDA_SUCCESS;
    struct fk_op *op = calloc(1, sizeof(*op));
    if (!op)
        return CUDA_ERROR_OUT_OF_MEMORY;
    op->kind = OP_COPY;
    op->dst = dstHost;
    op->src = (void *)(uintptr_t)srcDevice;
    op->src_pinned = true; /* device memory: read in stream order, never freed here */
    op->len = ByteCount;
    fk_push(hStream, op);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuIpcOpenMemHandle_v2(CUdeviceptr *pdptr, CUipcMemHandle handle, unsigned int Flags)
{
    CUresult r = fk_ctx_check("cuIpcOpenMemHandle_v2");
    if (r)
        return r;
    if (!pdptr || Flags != CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS)
        return fk_fail(CUDA_ERROR_INVALID_VALUE, "cuIpcOpenMemHandle_v2", "NULL or flags %u", Flags);
    if (memcmp(handle.reserved, FK_MEM_MAGIC, 8))
        return fk_fail(CUDA_ERROR_INVALID_HANDLE, "cuIpcOpenMemHandle_v2", "not a memory handle");
    uint64_t size;
    memcpy(&size, handle.reserved + 16, 8);
    pthread_mutex_lock(&fk.mu);
    for (size_t i = 0; i < fk.n_reg; i++)
        if (fk.reg[i].kind == R_IPC && fk.reg[i].ctx == fk_cur &&
            !memcmp(fk.reg[i].handle, handle.reserved, CU_IPC_HANDLE_SIZE)) {
            fk.reg[i].refs++; /* documented: same context, same pointer, one more reference */
            *pdptr = (CUdeviceptr)fk.reg[i].base;
            fk_trace_ipc("cuIpcOpenMemHandle");
            pthread_mutex_unlock(&fk.mu);
            return CUDA_SUCCESS;
        }
    pthread_mutex_unlock(&fk.mu);
    uint32_t pid;
    int fd = fk_open_peer_fd(handle.reserved, &pid);
    if (pid == (uint32_t)getpid()) {
        if (fd >= 0)
            close(fd);
        return fk_fail(CUDA_ERROR_INVALID_CONTEXT, "cuIpcOpenMemHandle_v2", "handle of this very process");
    }
    if (fd < 0)
        return fk_fail(CUDA_ERROR_MAP_FAILED, "cuIpcOpenMemHandle_v2", "pid %u: %s", pid, strerror(errno));
    struct stat st;
    void *p = MAP_FAILED;
    if (!fstat(fd, &st) && size && (uint64_t)st.st_size >= size)
        p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED)
        return fk_fail(CUDA_ERROR_MAP_FAILED, "cuIpcOpenMemHandle_v2", "mapping %llu bytes failed",
                       (unsigned long long)size);
    struct fk_region reg = {.base = (uintptr_t)p, .len = size, .kind = R_IPC, .dev = fk_cur->dev, .ctx = fk_cur,
                            .refs = 1};
    memcpy(reg.handle, handle.reserved, CU_IPC_HANDLE_SIZE);
    pthread_mutex_lock(&fk.mu);
    int rc = fk_reg_add(&reg);
    if (!rc)
        fk_trace_ipc("cuIpcOpenMemHandle");
    pthread_mutex_unlock(&fk.mu);
    if (rc) {
        munmap(p, size);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *pdptr = (CUdeviceptr)(uintptr_t)p;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemGetAddressRange_v2(CUdeviceptr *pbase, size_t *psize, CUdeviceptr dptr)
{
    CUresult r = fk_ctx_check("cuMemGetAddressRange_v2");
    if (r)
        return r;
    /* Documented for cuMemAlloc allocations; the fake answers for IPC
     * mappings too (the allocation the handle maps), which a real driver
     * may or may not do: lmcd must not depend on it. */
    pthread_mutex_lock(&fk.mu);
    bool found = false;
    for (size_t i = 0; i < fk.n_reg && !found; i++) {
        const struct fk_region *g = &fk.reg[i];
        if ((g->kind == R_ALLOC || (g->kind == R_IPC && g->ctx == fk_cur)) && dptr >= g->base &&
            dptr < g->base + g->len) {
            if (pbase)
                *pbase = (CUdeviceptr)g->base;
            if (psize)
                *psize = g->len;
            found = true;
        }
    }
    pthread_mutex_unlock(&fk.mu);
    return found ? CUDA_SUCCESS
                 : fk_fail(CUDA_ERROR_NOT_FOUND, "cuMemGetAddressRange_v2", "0x%llx is not device memory",
                           (unsigned long long)dptr);
}

CUresult CUDAAPI cuIpcCloseMemHandle(CUdeviceptr dptr)
{
    CUresult r = fk_ctx_check("cuIpcCloseMemHandle");
    if (r)
        return r;
    /* Unmapping waits for the device, as the frees do (see the header). */
    fk_drain_ctx(fk_cur);
    pthread_rwlock_wrlock(&fk.mem); /* no stream work touches it meanwhile */
    pthread_mutex_lock(&fk.mu);
    void *unmap = NULL;
    size_t len = 0;
    bool found = false;
    for (size_t i = 0; i < fk.n_reg; i++)
        if (fk.reg[i].kind == R_IPC && fk.reg[i].ctx == fk_cur && fk.reg[i].base == (uintptr_t)dptr) {
            found = true;
            if (--fk.reg[i].refs == 0) {
                unmap = (void *)fk.reg[i].base;
                len = fk.reg[i].len;
                fk_reg_del(i);
            }
            break;
        }
    if (found)
        fk_trace_ipc("cuIpcCloseMemHandle");
    pthread_mutex_unlock(&fk.mu);
    if (unmap)
        munmap(unmap, len);
    pthread_rwlock_unlock(&fk.mem);
    return found ? CUDA_SUCCESS
                 : fk_fail(CUDA_ERROR_INVALID_VALUE, "cuIpcCloseMemHandle", "0x%llx was not opened here",
                           (unsigned long long)dptr);
}

static bool fk_no_uva(void)
{
    const char *e = getenv("FAKECUDA_NO_UVA");
    return e && atoi(e);
}

/* A second mapping of the (shared) pages of [p, p+n): the device's view
 * without unified addressing. 0 when it cannot be made. */
static uintptr_t fk_alias(uintptr_t p, size_t n)
{
    uintptr_t pa = p & ~(uintptr_t)4095;
    size_t len = (n + (p - pa) + 4095) & ~(size_t)4095;
    void *q = mremap((void *)pa, 0, len, MREMAP_MAYMOVE);
    return q == MAP_FAILED ? 0 : (uintptr_t)q + (p - pa);
}

static void fk_unalias(uintptr_t d, size_t n)
{
    uintptr_t da = d & ~(uintptr_t)4095;
    munmap((void *)da, (n + (d - da) + 4095) & ~(size_t)4095);
}

CUresult CUDAAPI cuMemHostRegister_v2(void *p, size_t bytesize, unsigned int Flags)
{
    CUresult r = fk_ctx_check("cuMemHostRegister_v2");
    if (r)
        return r;
    unsigned all = CU_MEMHOSTREGISTER_PORTABLE | CU_MEMHOSTREGISTER_DEVICEMAP | CU_MEMHOSTREGISTER_IOMEMORY |
                   CU_MEMHOSTREGISTER_READ_ONLY;
    if (!p || !bytesize || (Flags & ~all))
        return fk_fail(CUDA_ERROR_INVALID_VALUE, "cuMemHostRegister_v2", "NULL, 0 bytes or flags 0x%x", Flags);
    uintptr_t a = (uintptr_t)p;
    const char *e = getenv("FAKECUDA_PIN_FAIL");
    if (e && atoi(e))
        return fk_fail(CUDA_ERROR_OUT_OF_MEMORY, "cuMemHostRegister_v2", "FAKECUDA_PIN_FAIL (a memlock limit)");
    pthread_mutex_lock(&fk.mu);
    for (size_t i = 0; i < fk.n_reg; i++)
        if (fk.reg[i].kind == R_HOST && a < fk.reg[i].base + fk.reg[i].len && fk.reg[i].base < a + bytesize) {
            pthread_mutex_unlock(&fk.mu);
            return fk_fail(CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED, "cuMemHostRegister_v2", "overlaps 0x%llx",
                           (unsigned long long)fk.reg[i].base);
        }
    e = getenv("FAKECUDA_PIN_LIMIT_MB");
    if (e && fk.pinned_bytes + bytesize > (uint64_t)atoll(e) << 20) {
        pthread_mutex_unlock(&fk.mu);
        return fk_fail(CUDA_ERROR_OUT_OF_MEMORY, "cuMemHostRegister_v2", "FAKECUDA_PIN_LIMIT_MB=%s reached", e);
    }
    fk.pinned_bytes += bytesize;
    pthread_mutex_unlock(&fk.mu);
    /* Pinning faults every page in (the driver pins with write access):
     * pages of a lazily committed tmpfs mapping come into existence here. */
    if (madvise((void *)(a & ~(uintptr_t)4095), bytesize + (a & 4095), MADV_POPULATE_WRITE))
        for (uintptr_t q = a; q < a + bytesize; q += 4096)
            __atomic_fetch_add((volatile char *)q, 0, __ATOMIC_RELAXED);
    e = getenv("FAKECUDA_PIN_DELAY_MS");
    if (e && atol(e) > 0) { /* the driver's cost per GiB, slept outside every lock */
        uint64_t ns = (uint64_t)atol(e) * 1000000ull * bytesize / (1ull << 30);
        struct timespec ts = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
        nanosleep(&ts, NULL);
    }
    struct fk_region reg = {.base = a, .len = bytesize, .kind = R_HOST, .dev = fk_cur->dev, .ctx = fk_cur,
                            .flags = Flags};
    if (fk_no_uva() && !(reg.dbase = fk_alias(a, bytesize))) {
        pthread_mutex_lock(&fk.mu);
        fk.pinned_bytes -= bytesize;
        pthread_mutex_unlock(&fk.mu);
        return fk_fail(CUDA_ERROR_OUT_OF_MEMORY, "cuMemHostRegister_v2", "FAKECUDA_NO_UVA: no alias mapping "
                                                                         "(not a shared mapping?)");
    }
    pthread_mutex_lock(&fk.mu);
    int rc = fk_reg_add(&reg);
    if (rc)
        fk.pinned_bytes -= bytesize;
    pthread_mutex_unlock(&fk.mu);
    if (rc && reg.dbase)
        fk_unalias(reg.dbase, bytesize);
    /* Not faithful: no page is really locked (the memlock limit is the env
     * above), no IOMMU mapping. */
    return rc ? CUDA_ERROR_OUT_OF_MEMORY : CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemHostAlloc(void **pp, size_t bytesize, unsigned int Flags)
{
    CUresult r = fk_ctx_check("cuMemHostAlloc");
    if (r)
        return r;
    if (!pp || !bytesize || (Flags & ~(unsigned)(CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_DEVICEMAP |
                                                 CU_MEMHOSTALLOC_WRITECOMBINED)))
        return fk_fail(CUDA_ERROR_INVALID_VALUE, "cuMemHostAlloc", "NULL, 0 bytes or flags 0x%x", Flags);
    /* A shared mapping, so FAKECUDA_NO_UVA can alias it. */
    void *p = mmap(NULL, bytesize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return fk_fail(CUDA_ERROR_OUT_OF_MEMORY, "cuMemHostAlloc", "%zu bytes", bytesize);
    memset(p, 0x5A, bytesize);
    /* The ALLOC flags have the REGISTER flags' values (PORTABLE 1, DEVICEMAP 2). */
    struct fk_region reg = {.base = (uintptr_t)p, .len = bytesize, .kind = R_HOST, .dev = fk_cur->dev,
                            .ctx = fk_cur, .flags = Flags & 3u, .host_alloc = true, .alloc = p};
    if (fk_no_uva() && !(reg.dbase = fk_alias((uintptr_t)p, bytesize))) {
        munmap(p, bytesize);
        return fk_fail(CUDA_ERROR_OUT_OF_MEMORY, "cuMemHostAlloc", "FAKECUDA_NO_UVA: no alias mapping");
    }
    pthread_mutex_lock(&fk.mu);
    int rc = fk_reg_add(&reg);
    pthread_mutex_unlock(&fk.mu);
    if (rc) {
        if (reg.dbase)
            fk_unalias(reg.dbase, bytesize);
        munmap(p, bytesize);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *pp = p;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemFreeHost(void *p)
{
    CUresult r = fk_ctx_bound("cuMemFreeHost");
    if (r)
        return r;
    /* Stream work that may still touch it finishes first (the driver's free
     * synchronises in practice). */
    fk_drain_ctx(fk_cur);
    pthread_rwlock_wrlock(&fk.mem);
    pthread_mutex_lock(&fk.mu);
    void *a = NULL;
    size_t len = 0;
    uintptr_t d = 0;
    for (size_t i = 0; i < fk.n_reg; i++)
        if (fk.reg[i].kind == R_HOST && fk.reg[i].host_alloc && fk.reg[i].base == (uintptr_t)p) {
            a = fk.reg[i].alloc;
            len = fk.reg[i].len;
            d = fk.reg[i].dbase;
            fk_reg_del(i);
            break;
        }
    if (d)
        fk_unalias(d, len);
    if (a)
        munmap(a, len);
    pthread_mutex_unlock(&fk.mu);
    pthread_rwlock_unlock(&fk.mem);
    if (!a)
        return fk_fail(CUDA_ERROR_INVALID_VALUE, "cuMemFreeHost", "%p is not from cuMemHostAlloc", p);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemHostUnregister(void *p)
{
    CUresult r = fk_ctx_check("cuMemHostUnregister");
    if (r)
        return r;
    pthread_rwlock_wrlock(&fk.mem);
    pthread_mutex_lock(&fk.mu);
    bool found = false;
    for (size_t i = 0; i < fk.n_reg; i++)
        if (fk.reg[i].kind == R_HOST && !fk.reg[i].host_alloc && fk.reg[i].base == (uintptr_t)p) {
            fk.pinned_bytes -= fk.reg[i].len;
            if (fk.reg[i].dbase)
                fk_unalias(fk.reg[i].dbase, fk.reg[i].len);
            fk_reg_del(i);
            found = true;
            break;
        }
    pthread_mutex_unlock(&fk.mu);
    pthread_rwlock_unlock(&fk.mem);
    return found ? CUDA_SUCCESS
                 : fk_fail(CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED, "cuMemHostUnregister", "%p was not registered", p);
}

CUresult CUDAAPI cuMemHostGetDevicePointer_v2(CUdeviceptr *pdptr, void *p, unsigned int Flags)
{
    CUresult r = fk_ctx_check("cuMemHostGetDevicePointer_v2");
    if (r)
        return r;
    if (!pdptr || Flags)
        return fk_fail(CUDA_ERROR_INVALID_VALUE, "cuMemHostGetDevicePointer_v2", "NULL or flags %u", Flags);
    uintptr_t a = (uintptr_t)p, d = a; /* UVA: the same address */
    bool ok = false;
    pthread_mutex_lock(&fk.mu);
    for (size_t i = 0; i < fk.n_reg && !ok; i++) {
        const struct fk_region *g = &fk.reg[i];
        ok = g->kind == R_HOST && a >= g->base && a < g->base + g->len && (g->flags & CU_MEMHOSTREGISTER_DEVICEMAP) &&
             (g->ctx == fk_cur || (g->flags & CU_MEMHOSTREGISTER_PORTABLE));
        if (ok && g->dbase)
            d = g->dbase + (a - g->base);
    }
    pthread_mutex_unlock(&fk.mu);
    if (!ok)
        return fk_fail(CUDA_ERROR_INVALID_VALUE, "cuMemHostGetDevicePointer_v2",
                       "%p is not registered device-mapped for this context", p);
    *pdptr = (CUdeviceptr)d;
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- launch */

CUresult CUDAAPI cuLaunchKernel(CUfunction f, unsigned int gridDimX, unsigned int gridDimY, unsigned int gridDimZ,
                                unsigned int blockDimX, unsigned int blockDimY, unsigned int blockDimZ,
                                unsigned int sharedMemBytes, CUstream hStream, void **kernelParams, void **extra)
{
    CUresult r = fk_ctx_check("cuLaunchKernel");
    if (r)
        return r;
    if (!f || f->mod->ctx != fk_cur)
        return fk_fail(CUDA_ERROR_INVALID_HANDLE, "cuLaunchKernel", "function not of the current context");
    uint64_t threads = (uint64_t)blockDimX * blockDimY * blockDimZ;
    if (!gridDimX || !gridDimY || !gridDimZ || !threads || threads > 1024 || blockDimZ > 64 ||
        gridDimX > 0x7fffffffu || gridDimY > 65535 || gridDimZ > 65535 || sharedMemBytes > 48 * 1024)
        return fk_fail(CUDA_ERROR_INVALID_VALUE, "cuLaunchKernel", "launch configuration %ux%ux%u / %ux%ux%u",
                       gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ);
    if ((!kernelParams) == (!extra) || !kernelParams || !kernelParams[0])
        return fk_fail(CUDA_ERROR_INVALID_VALUE, "cuLaunchKernel", "exactly one of kernelParams/extra, and the "
                                                                  "kernel's one parameter");
    pthread_mutex_lock(&fk.mu);
    bool ok = hStream && fk_stream_ok(hStream);
    pthread_mutex_unlock(&fk.mu);
    if (!ok) /* lmcd never uses the NULL stream; the fake does not model it for kernels */
        return fk_fail(CUDA_ERROR_INVALID_HANDLE, "cuLaunchKernel", "not a stream of the current context");
    struct fk_op *op = calloc(1, sizeof(*op));
    if (!op)
        return CUDA_ERROR_OUT_OF_MEMORY;
    op->kind = OP_KERNEL;
    memcpy(&op->x, kernelParams[0], sizeof(op->x)); /* `struct tl_xfer x`, by value, copied at launch */
    op->gather = f->gather;
    fk_push(hStream, op);
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- unload */

__attribute__((destructor)) static void fk_unload(void)
{
    pthread_mutex_lock(&fk.mu);
    size_t ipc = 0, host = 0, halloc = 0, alloc = 0, streams = 0;
    for (size_t i = 0; i < fk.n_reg; i++) {
        ipc += fk.reg[i].kind == R_IPC;
        host += fk.reg[i].kind == R_HOST && !fk.reg[i].host_alloc;
        halloc += fk.reg[i].kind == R_HOST && fk.reg[i].host_alloc;
        alloc += fk.reg[i].kind == R_ALLOC;
    }
    for (struct CUstream_st *s = fk.streams; s; s = s->next_in_ctx)
        streams++;
    int retained = 0;
    for (int i = 0; i < fk.ndev; i++)
        retained += fk.ctx[i].retains;
    if (ipc || host || halloc || alloc || streams || fk.n_events || retained)
        fprintf(stderr,
                "fakecuda: leak: %zu IPC mappings, %zu host registrations, %zu pinned host allocations, %zu device "
                "allocations, %zu streams, %d events, %d primary-context retains left at unload\n",
                ipc, host, halloc, alloc, streams, fk.n_events, retained);
    struct CUstream_st *legacy[FK_MAX_DEV] = {0};
    for (int i = 0; i < FK_MAX_DEV; i++) {
        legacy[i] = fk.ctx[i].legacy;
        fk.ctx[i].legacy = NULL;
    }
    /* The driver frees modules with their context and its own tables with
     * the process; the fake frees its share here, unless a stream is still
     * running (lmcd abandoned a copy stuck on a client event at shutdown):
     * its thread may still read them. */
    void *objs = streams ? NULL : fk.objs;
    struct fk_region *reg = streams || fk.n_reg ? NULL : fk.reg;
    if (objs)
        fk.objs = NULL;
    if (reg) {
        fk.reg = NULL;
        fk.cap_reg = 0;
    }
    pthread_mutex_unlock(&fk.mu);
    for (int i = 0; i < FK_MAX_DEV; i++)
        if (legacy[i])
            fk_stream_free(legacy[i]);
    while (objs) {
        void *next = *(void **)objs;
        free(objs);
        objs = next;
    }
    free(reg);
}
