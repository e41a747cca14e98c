/*
 * transfer_cuda: the CUDA backend of the LMCache-driven path (contract and
 * status in transfer.h). The driver API is loaded at run time with
 * dlopen("libcuda.so.1"): the same lmcd runs on hosts without a driver.
 * The kernels (transfer_cuda.cu) arrive as a fatbin embedded at build time
 * (transfer_cuda_fatbin.c, generated) and are loaded per device, in that
 * device's primary context, when its first worker registers: a GPU no worker
 * uses gets no context (LMCache #4019).
 *
 * Built only with LMCD_CUDA=1 (the Makefile sets it when nvcc exists).
 * NOTHING HERE HAS RUN ON A GPU YET (no GPU on the build host or in CI).
 */
#include "transfer/transfer.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#if LMCD_CUDA

#include <cuda.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "metrics/metrics.h"
#include "transfer/transfer_layout.h"
#include "util/log.h"
#include "wire/pickle.h"

extern const unsigned char lmcd_cuda_fatbin[];
extern const unsigned long lmcd_cuda_fatbin_len;

/* Driver entry points, by their exported (versioned) symbol names. */
#define CU_FNS(X)                                                                                         \
    X(Init, "cuInit", (unsigned))                                                                         \
    X(GetErrorName, "cuGetErrorName", (CUresult, const char **))                                          \
    X(DeviceGetCount, "cuDeviceGetCount", (int *))                                                        \
    X(DeviceGet, "cuDeviceGet", (CUdevice *, int))                                                        \
    X(DeviceGetUuid, "cuDeviceGetUuid_v2", (CUuuid *, CUdevice))                                          \
    X(PrimaryCtxRetain, "cuDevicePrimaryCtxRetain", (CUcontext *, CUdevice))                              \
    X(PrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2", (CUdevice))                                      \
    X(CtxSetCurrent, "cuCtxSetCurrent", (CUcontext))                                                      \
    X(ModuleLoadData, "cuModuleLoadData", (CUmodule *, const void *))                                     \
    X(ModuleGetFunction, "cuModuleGetFunction", (CUfunction *, CUmodule, const char *))                   \
    X(IpcOpenMemHandle, "cuIpcOpenMemHandle_v2", (CUdeviceptr *, CUipcMemHandle, unsigned))               \
    X(IpcCloseMemHandle, "cuIpcCloseMemHandle", (CUdeviceptr))                                            \
    X(IpcOpenEventHandle, "cuIpcOpenEventHandle", (CUevent *, CUipcEventHandle))                         \
    X(IpcGetEventHandle, "cuIpcGetEventHandle", (CUipcEventHandle *, CUevent))                            \
    X(StreamCreate, "cuStreamCreate", (CUstream *, unsigned))                                             \
    X(StreamDestroy, "cuStreamDestroy_v2", (CUstream))                                                    \
    X(StreamSynchronize, "cuStreamSynchronize", (CUstream))                                               \
    X(StreamWaitEvent, "cuStreamWaitEvent", (CUstream, CUevent, unsigned))                                \
    X(EventCreate, "cuEventCreate", (CUevent *, unsigned))                                                \
    X(EventRecord, "cuEventRecord", (CUevent, CUstream))                                                  \
    X(EventDestroy, "cuEventDestroy_v2", (CUevent))                                                       \
    X(EventSynchronize, "cuEventSynchronize", (CUevent))                                                  \
    X(MemAlloc, "cuMemAlloc_v2", (CUdeviceptr *, size_t))                                                 \
    X(MemFree, "cuMemFree_v2", (CUdeviceptr))                                                             \
    X(MemGetAddressRange, "cuMemGetAddressRange_v2", (CUdeviceptr *, size_t *, CUdeviceptr))               \
    X(MemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2", (CUdeviceptr, const void *, size_t, CUstream))              \
    X(MemHostRegister, "cuMemHostRegister_v2", (void *, size_t, unsigned))                                \
    X(MemHostUnregister, "cuMemHostUnregister", (void *))                                                 \
    X(MemHostGetDevicePointer, "cuMemHostGetDevicePointer_v2", (CUdeviceptr *, void *, unsigned))         \
    X(LaunchKernel, "cuLaunchKernel",                                                                     \
      (CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream, void **, \
       void **))

#define CU_FIELD_(f, sym, args) CUresult(CUDAAPI *f) args;
struct cu_api {
    CU_FNS(CU_FIELD_)
};
#undef CU_FIELD_

#define CU_MAX_DEVICES 64
#define CU_EVENT_POOL 64 /* interprocess events per registration, reused round-robin */
/* Every recorded event is queued (copies and event-only replies alike), at
 * most CU_QCAP - 1 at once: an event is recorded again only CU_EVENT_POOL
 * records later, by when the completion thread is done with it. Copies
 * wait past TRANSFER_QUEUE_DEPTH (back-pressure), event-only records past
 * CU_QCAP - 1. With everything on the stream in the queue, an empty queue
 * means an idle stream: closing it never waits on a client event. */
#define CU_QCAP CU_EVENT_POOL
_Static_assert(CU_EVENT_POOL >= 2 * TRANSFER_QUEUE_DEPTH, "event pool smaller than twice the copy queue");

struct cu_dev {
    CUdevice dev;
    char uuid[40]; /* "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" */
    CUcontext ctx; /* primary context, retained on first registration */
    CUmodule mod;
    CUfunction gather, scatter;
    CUdeviceptr host_dev; /* the pinned L1 segment as this device addresses it */
};

struct cu_map {
    uint8_t handle[CU_IPC_HANDLE_SIZE];
    CUdeviceptr base;
};

/* A queued copy the completion thread waits for. */
struct cu_pending {
    void (*done)(void *arg, bool ok);
    void *arg;
    unsigned ev;   /* index in pool[] of the event recorded after the copy */
    uint64_t t_ns; /* when it was queued (the watchdog's stuck test) */
};

struct cu_reg {
    int64_t instance;
    int dev;
    struct transfer_backend *b;
    struct transfer_geom geom;
    CUstream stream;
    struct cu_map *maps;
    size_t n_maps;
    uint64_t *layer_base;
    uint32_t nlayers;
    struct tl_layout lay;
    CUdeviceptr d_layers;  /* layer_base[] on the device */
    CUdeviceptr d_scratch; /* block ids and chunk addresses of one copy */
    size_t scratch_cap;
    CUevent pool[CU_EVENT_POOL];
    unsigned n_pool, next_pool;
    pthread_mutex_t lock; /* this registration's stream, pool and queue */
    pthread_cond_t cv;    /* queue changed, stop, users */
    struct cu_pending q[CU_QCAP];
    unsigned q_head, q_n;
    unsigned users; /* copy() calls inside, which reg_retire waits out */
    bool stop;
    bool stuck;    /* the queue's head waited past event_timeout_s (the watchdog sets it) */
    bool warned;   /* that was reported (once per registration) */
    bool detached; /* out of the table with copies left: the completion thread frees it */
    bool thr_started;
    pthread_t thr; /* the completion thread */
    struct cu_reg *all_next, *all_prev; /* b->all, under b->all_mu */
    bool in_all;
};

struct transfer_backend {
    void *lib;
    struct cu_api cu;
    struct transfer_opts o;
    void *host_base; /* the L1 segment */
    size_t host_len;
    bool host_pinned;
    int pin_dev; /* the device whose context pinned L1 */
    int ndev;
    struct cu_dev devs[CU_MAX_DEVICES];
    pthread_mutex_t lock; /* regs[] and devs[].ctx/mod (registration is rare) */
    struct cu_reg **regs;
    size_t n_regs, cap_regs;
    /* Every registration with a completion thread, in the table or
     * detached; the watchdog walks it. */
    pthread_mutex_t all_mu; /* order: b->lock, all_mu, g->lock */
    pthread_cond_t all_cv; /* cb_active dropped, watchdog stop */
    struct cu_reg *all;
    unsigned cb_active; /* done callbacks running */
    unsigned dying;     /* registrations out of `all` still being freed */
    bool closing;       /* close() passed its grace: no more done callbacks */
    bool wd_stop, wd_started;
    pthread_t wd; /* the watchdog */
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void deadline_ts(uint64_t ns, struct timespec *ts)
{
    ts->tv_sec = (time_t)(ns / 1000000000ull);
    ts->tv_nsec = (long)(ns % 1000000000ull);
}

/* Condition variables on the monotonic clock (timed waits). */
static void cond_init_mono(pthread_cond_t *cv)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &ca);
    pthread_condattr_destroy(&ca);
}

static const char *cu_err(struct transfer_backend *b, CUresult r)
{
    const char *s = NULL;
    if (b->cu.GetErrorName && b->cu.GetErrorName(r, &s) == CUDA_SUCCESS && s)
        return s;
    return "CUDA error";
}

static void fmt_uuid(const CUuuid *u, char out[40])
{
    const unsigned char *p = (const unsigned char *)u->bytes;
    snprintf(out, 40, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", p[0], p[1], p[2],
             p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11], p[12], p[13], p[14], p[15]);
}

static void *watchdog_main(void *arg);

static int cu_open(const struct transfer_opts *o, void *host_base, size_t host_len, struct transfer_backend **out,
                   char *why, size_t why_len)
{
    *out = NULL;
    if (o->isolated_ipc) {
        snprintf(why, why_len, "--isolated-ipc is not served (81-byte timeline-semaphore events, "
                               "RawCudaIPCWrapper); run the clients with lmcache.mp.isolated_ipc=false");
        return -ENOTSUP;
    }
    void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        snprintf(why, why_len, "no CUDA driver (dlopen libcuda.so.1: %s)", dlerror());
        return -ENODEV;
    }
    struct transfer_backend *b = calloc(1, sizeof(*b));
    if (!b) {
        dlclose(lib);
        return -ENOMEM;
    }
    b->lib = lib;
    b->o = *o;
    b->host_base = host_base;
    b->host_len = host_len;
    pthread_mutex_init(&b->lock, NULL);
#define CU_LOAD_(f, sym, args)                                                                            \
    if (!(*(void **)&b->cu.f = dlsym(lib, sym))) {                                                        \
        snprintf(why, why_len, "the CUDA driver lacks %s (too old?)", sym);                              \
        goto nodev;                                                                                       \
    }
    CU_FNS(CU_LOAD_)
#undef CU_LOAD_
    CUresult r = b->cu.Init(0);
    if (r != CUDA_SUCCESS) {
        snprintf(why, why_len, "cuInit failed: %s", cu_err(b, r));
        goto nodev;
    }
    if ((r = b->cu.DeviceGetCount(&b->ndev)) != CUDA_SUCCESS || b->ndev <= 0) {
        snprintf(why, why_len, "no CUDA device (%s)", r == CUDA_SUCCESS ? "count 0" : cu_err(b, r));
        goto nodev;
    }
    if (b->ndev > CU_MAX_DEVICES)
        b->ndev = CU_MAX_DEVICES;
    for (int i = 0; i < b->ndev; i++) {
        CUuuid u;
        if ((r = b->cu.DeviceGet(&b->devs[i].dev, i)) != CUDA_SUCCESS ||
            (r = b->cu.DeviceGetUuid(&u, b->devs[i].dev)) != CUDA_SUCCESS) {
            snprintf(why, why_len, "device %d: %s", i, cu_err(b, r));
            goto nodev;
        }
        fmt_uuid(&u, b->devs[i].uuid);
    }
    pthread_mutex_init(&b->all_mu, NULL);
    cond_init_mono(&b->all_cv);
    if (pthread_create(&b->wd, NULL, watchdog_main, b)) {
        pthread_mutex_destroy(&b->all_mu);
        pthread_cond_destroy(&b->all_cv);
        snprintf(why, why_len, "no watchdog thread");
        goto nodev;
    }
    b->wd_started = true;
    *out = b;
    return 0;
nodev:
    pthread_mutex_destroy(&b->lock);
    free(b);
    dlclose(lib);
    return -ENODEV;
}

/* Primary context and kernels of device `i`, on first use. Under b->lock. */
static int dev_ready(struct transfer_backend *b, int i, char *why, size_t why_len)
{
    struct cu_dev *d = &b->devs[i];
    CUresult r;
    if (!d->ctx) {
        if ((r = b->cu.PrimaryCtxRetain(&d->ctx, d->dev)) != CUDA_SUCCESS) {
            d->ctx = NULL;
            snprintf(why, why_len, "device %d: primary context: %s", i, cu_err(b, r));
            return -EIO;
        }
    }
    if ((r = b->cu.CtxSetCurrent(d->ctx)) != CUDA_SUCCESS) {
        snprintf(why, why_len, "device %d: set context: %s", i, cu_err(b, r));
        return -EIO;
    }
    if (!d->mod) {
        if ((r = b->cu.ModuleLoadData(&d->mod, lmcd_cuda_fatbin)) != CUDA_SUCCESS ||
            (r = b->cu.ModuleGetFunction(&d->gather, d->mod, "lmcd_gather")) != CUDA_SUCCESS ||
            (r = b->cu.ModuleGetFunction(&d->scatter, d->mod, "lmcd_scatter")) != CUDA_SUCCESS) {
            d->mod = NULL;
            snprintf(why, why_len, "device %d: loading lmcd's kernels: %s", i, cu_err(b, r));
            return -EIO;
        }
    }
    /* Pin L1 once, portable (every context) and device-mapped, so kernels
     * write objects straight into it. Done at the first registration, in
     * the context of a device a worker uses; it blocks that registration
     * (LMCache pins at start, ~45 s for 80 GB: #4018). */
    if (!b->host_pinned && b->host_base && b->host_len) {
        r = b->cu.MemHostRegister(b->host_base, b->host_len, CU_MEMHOSTREGISTER_PORTABLE | CU_MEMHOSTREGISTER_DEVICEMAP);
        if (r != CUDA_SUCCESS) {
            snprintf(why, why_len, "pinning L1 (%zu bytes): %s (raise the memlock limit?)", b->host_len, cu_err(b, r));
            return -EIO;
        }
        b->host_pinned = true;
        b->pin_dev = i;
    }
    if (!d->host_dev && b->host_pinned) {
        if ((r = b->cu.MemHostGetDevicePointer(&d->host_dev, b->host_base, 0)) != CUDA_SUCCESS) {
            d->host_dev = 0;
            snprintf(why, why_len, "device %d: mapping pinned L1: %s", i, cu_err(b, r));
            return -EIO;
        }
    }
    return 0;
}

/* Frees a registration whose queue is empty and whose completion thread
 * has ended (or is the caller). No lock held. */
static void reg_destroy(struct transfer_backend *b, struct cu_reg *g)
{
    if (g->in_all) { /* out of the watchdog's list first; close() waits for `dying` */
        pthread_mutex_lock(&b->all_mu);
        if (g->all_prev)
            g->all_prev->all_next = g->all_next;
        else
            b->all = g->all_next;
        if (g->all_next)
            g->all_next->all_prev = g->all_prev;
        b->dying++;
        pthread_mutex_unlock(&b->all_mu);
    }
    if (b->devs[g->dev].ctx)
        b->cu.CtxSetCurrent(b->devs[g->dev].ctx);
    if (g->stream) {
        b->cu.StreamSynchronize(g->stream); /* idle: every record on it completed (see CU_QCAP) */
        b->cu.StreamDestroy(g->stream);
    }
    for (unsigned i = 0; i < g->n_pool; i++)
        b->cu.EventDestroy(g->pool[i]);
    if (g->d_layers)
        b->cu.MemFree(g->d_layers);
    if (g->d_scratch)
        b->cu.MemFree(g->d_scratch);
    for (size_t i = 0; i < g->n_maps; i++)
        b->cu.IpcCloseMemHandle(g->maps[i].base);
    pthread_mutex_destroy(&g->lock);
    pthread_cond_destroy(&g->cv);
    bool in_all = g->in_all;
    free(g->maps);
    free(g->layer_base);
    free(g);
    if (in_all) {
        pthread_mutex_lock(&b->all_mu);
        b->dying--;
        pthread_cond_broadcast(&b->all_cv);
        pthread_mutex_unlock(&b->all_mu);
    }
}

/*
 * g has left the table (or never entered it). copy() calls that found it
 * earlier leave (one waiting for queue room sees stop); then its queued
 * copies are waited for until `deadline` (monotonic ns; 0: not at all) or
 * until the watchdog marks them stuck. An empty queue: g is freed here.
 * Copies left: g is detached, and its completion thread frees it after the
 * last one completed (a GPU stream wait cannot be cancelled, so mappings
 * and stream must outlive it). Never holds b->lock.
 */
static void reg_retire(struct transfer_backend *b, struct cu_reg *g, uint64_t deadline)
{
    if (!g)
        return;
    pthread_mutex_lock(&g->lock);
    g->stop = true;
    pthread_cond_broadcast(&g->cv);
    while (g->users)
        pthread_cond_wait(&g->cv, &g->lock);
    for (uint64_t now = now_ns(); g->q_n && !g->stuck && now < deadline; now = now_ns()) {
        struct timespec ts;
        deadline_ts(deadline - now > 1000000000ull ? now + 1000000000ull : deadline, &ts);
        pthread_cond_timedwait(&g->cv, &g->lock, &ts);
    }
    if (g->q_n) {
        unsigned left = g->q_n;
        g->detached = true;
        pthread_mutex_unlock(&g->lock);
        log_warn("instance %lld: GPU registration closed with %u queued copies not completed (waiting on the "
                 "worker's event): detached; its mappings and stream close, and the L1 memory those copies use "
                 "is released, only once they complete", (long long)g->instance, left);
        return;
    }
    pthread_mutex_unlock(&g->lock);
    if (g->thr_started)
        pthread_join(g->thr, NULL);
    reg_destroy(b, g);
}

/* PyTorch's shareable handle: [version 1|2]['c'][64-byte cudaIpcMemHandle_t]
 * for caching-allocator blocks; 'e' marks an expandable segment. */
static int storage_handle(const struct wire_bin *h, const uint8_t **body, const char **why)
{
    if (h->len == CU_IPC_HANDLE_SIZE) { /* a bare cudaIpcMemHandle_t */
        *body = h->ptr;
        return 0;
    }
    if (h->len >= 2 && ((const uint8_t *)h->ptr)[1] == 'e') {
        *why = "an expandable-segment handle (the worker runs with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True; "
               "unset it for vLLM's KV cache)";
        return -ENOTSUP;
    }
    const uint8_t *p = h->ptr;
    if (h->len != CU_IPC_HANDLE_SIZE + 2 || (p[0] != 1 && p[0] != 2) || p[1] != 'c') {
        *why = "a storage handle of an unknown PyTorch format (expected version 1-2, type 'c', 64 bytes)";
        return -ENOTSUP;
    }
    *body = p + 2;
    return 0;
}

static bool str_eq(struct wire_str s, const char *lit)
{
    return s.len == strlen(lit) && memcmp(s.ptr, lit, s.len) == 0;
}

static int find_dev(struct transfer_backend *b, struct wire_str uuid)
{
    const char *p = uuid.ptr;
    size_t n = uuid.len;
    if (n > 4 && !memcmp(p, "GPU-", 4)) {
        p += 4;
        n -= 4;
    }
    for (int i = 0; i < b->ndev; i++)
        if (strlen(b->devs[i].uuid) == n && !strncasecmp(b->devs[i].uuid, p, n))
            return i;
    return -1;
}

static struct cu_reg **reg_slot(struct transfer_backend *b, int64_t instance)
{
    for (size_t i = 0; i < b->n_regs; i++)
        if (b->regs[i]->instance == instance)
            return &b->regs[i];
    return NULL;
}

/* Takes the instance's registration out of the table (under b->lock); the
 * caller retires it after dropping b->lock. */
static struct cu_reg *reg_take(struct transfer_backend *b, int64_t instance)
{
    struct cu_reg **s = reg_slot(b, instance);
    if (!s)
        return NULL;
    struct cu_reg *g = *s;
    *s = b->regs[--b->n_regs];
    return g;
}

/* Runs a done callback unless close() gave up on callbacks (the engine
 * behind them may be gone). False: abandoned. */
static bool cb_run(struct transfer_backend *b, const struct cu_pending *p, bool ok)
{
    pthread_mutex_lock(&b->all_mu);
    bool go = !b->closing;
    if (go)
        b->cb_active++;
    pthread_mutex_unlock(&b->all_mu);
    if (!go)
        return false;
    p->done(p->arg, ok);
    pthread_mutex_lock(&b->all_mu);
    b->cb_active--;
    pthread_cond_broadcast(&b->all_cv);
    pthread_mutex_unlock(&b->all_mu);
    return true;
}

/* Reports queue heads older than event_timeout_s, once per registration,
 * and marks them stuck so that unregister and close stop waiting. */
static void *watchdog_main(void *arg)
{
    struct transfer_backend *b = arg;
    uint64_t timeout = (uint64_t)(b->o.event_timeout_s > 0 ? b->o.event_timeout_s : 60) * 1000000000ull;
    uint64_t tick = timeout / 4 < 500000000ull ? timeout / 4 : 500000000ull;
    pthread_mutex_lock(&b->all_mu);
    while (!b->wd_stop) {
        struct timespec ts;
        deadline_ts(now_ns() + tick, &ts);
        pthread_cond_timedwait(&b->all_cv, &b->all_mu, &ts);
        uint64_t now = now_ns();
        for (struct cu_reg *g = b->all; g && !b->wd_stop; g = g->all_next) {
            pthread_mutex_lock(&g->lock);
            bool report = false;
            unsigned left = g->q_n;
            uint64_t t = g->q_n ? g->q[g->q_head].t_ns : now; /* queued after `now` was read: not old */
            if (g->q_n && !g->stuck && now > t && now - t > timeout) {
                g->stuck = true;
                report = !g->warned;
                g->warned = true;
                pthread_cond_broadcast(&g->cv);
            }
            pthread_mutex_unlock(&g->lock);
            if (report) {
                metrics_add(MET_GPU_EVENT_TIMEOUTS, 1);
                log_warn("instance %lld: a GPU copy has waited over %d s on the worker's event "
                         "(--gpu-event-timeout-seconds; %u queued): UNREGISTER, re-registering, reaping and shutdown "
                         "no longer wait for it; the L1 memory it uses stays reserved until it completes",
                         (long long)g->instance, b->o.event_timeout_s, left);
            }
        }
    }
    pthread_mutex_unlock(&b->all_mu);
    return NULL;
}

/* One per registration: waits for its queued copies in queue (= stream)
 * order and reports each, so a reply never waits for its copy and the
 * ZeroMQ loop and pool threads never wait on the GPU. */
static void *completion_main(void *arg)
{
    struct cu_reg *g = arg;
    struct transfer_backend *b = g->b;
    bool ctx_ok = b->cu.CtxSetCurrent(b->devs[g->dev].ctx) == CUDA_SUCCESS;
    pthread_mutex_lock(&g->lock);
    for (;;) {
        while (!g->q_n && !g->stop)
            pthread_cond_wait(&g->cv, &g->lock);
        if (!g->q_n)
            break;
        struct cu_pending p = g->q[g->q_head];
        CUevent ev = g->pool[p.ev];
        pthread_mutex_unlock(&g->lock);
        CUresult r = ctx_ok ? b->cu.EventSynchronize(ev) : CUDA_ERROR_INVALID_CONTEXT;
        if (r != CUDA_SUCCESS)
            log_warn("instance %lld: a copy failed on the GPU: %s", (long long)g->instance, cu_err(b, r));
        if (p.done && !cb_run(b, &p, r == CUDA_SUCCESS))
            return NULL; /* close() abandoned it: touch nothing more */
        pthread_mutex_lock(&g->lock);
        g->q_head = (g->q_head + 1) % CU_QCAP;
        g->q_n--;
        g->stuck = false; /* the next head gets its own time */
        pthread_cond_broadcast(&g->cv); /* room for a blocked copy(), progress for reg_retire */
    }
    bool detached = g->detached;
    pthread_mutex_unlock(&g->lock);
    if (detached) { /* nobody joins it: the last copy completed, close everything */
        pthread_detach(pthread_self());
        reg_destroy(b, g);
    }
    return NULL;
}

static int cu_register(struct transfer_backend *b, int64_t instance, const struct wire_register *reg,
                       struct transfer_geom *geom, char *why, size_t why_len)
{
    if (!reg->n_descs) {
        snprintf(why, why_len, "no layers");
        return -EINVAL;
    }
    struct pickle_ipc *ipc = malloc(sizeof(*ipc));
    struct cu_reg *g = calloc(1, sizeof(*g));
    if (!ipc || !g) {
        free(ipc);
        free(g);
        return -ENOMEM;
    }
    pthread_mutex_init(&g->lock, NULL);
    cond_init_mono(&g->cv);
    g->instance = instance;
    g->b = b;
    g->dev = -1;
    g->nlayers = (uint32_t)reg->n_descs;
    g->layer_base = calloc(reg->n_descs, sizeof(*g->layer_base));
    g->maps = calloc(reg->n_descs, sizeof(*g->maps));
    bool hint_hnd = str_eq(reg->kv_layout, "HND");
    int rc = -ENOMEM;
    /* Re-registering replaces: the old registration goes first (its queued
     * copies complete, unless stuck on the worker's event; its mappings
     * close; a handle reopened in the same context would only count a
     * reference, as the driver documents). Outside b->lock: other
     * workers' copies go on meanwhile. */
    pthread_mutex_lock(&b->lock);
    struct cu_reg *old = reg_take(b, instance);
    pthread_mutex_unlock(&b->lock);
    reg_retire(b, old, UINT64_MAX);
    pthread_mutex_lock(&b->lock);
    if (!g->layer_base || !g->maps)
        goto fail;
    for (size_t l = 0; l < reg->n_descs; l++) {
        rc = pickle_parse_ipc(reg->descs[l].ptr, reg->descs[l].len, ipc);
        if (rc) {
            snprintf(why, why_len, "layer %zu: %s (CuMemCudaIPCWrapper from lmcache.mp.use_vmm_api is not served; "
                                   "leave use_vmm_api off)", l, pickle_strerror(rc));
            rc = -ENOTSUP;
            goto fail;
        }
        if (ipc->kind == PICKLE_RAW_CUDA || !ipc->has_handle) {
            snprintf(why, why_len, "layer %zu: RawCudaIPCWrapper (isolated IPC) is not served; run the client "
                                   "with lmcache.mp.isolated_ipc=false", l);
            rc = -ENOTSUP;
            goto fail;
        }
        int dev = find_dev(b, ipc->device_uuid);
        if (dev < 0 || (g->dev >= 0 && dev != g->dev)) {
            snprintf(why, why_len, "layer %zu: device %.*s is %s", l, (int)ipc->device_uuid.len,
                     ipc->device_uuid.ptr, dev < 0 ? "not visible to lmcd" : "not the device of layer 0");
            rc = -ENODEV;
            goto fail;
        }
        if (g->dev < 0) {
            g->dev = dev;
            if ((rc = dev_ready(b, dev, why, why_len)))
                goto fail;
        }
        struct tl_desc d = {ipc->ndim, ipc->shape, ipc->stride, ipc->dtype.ptr, ipc->dtype.len, TL_HINT_NONE, false};
        if (ipc->ndim != ipc->nstride) {
            snprintf(why, why_len, "layer %zu: shape and stride differ in length", l);
            rc = -EINVAL;
            goto fail;
        }
        /* With an HND hint a contiguous shape is the physical order. */
        d.hnd = hint_hnd && ipc->ndim == 5 && ipc->stride[2] > ipc->stride[3];
        struct tl_layout lay;
        const char *lwhy = "?";
        if ((rc = tl_detect(&d, &lay, &lwhy))) {
            snprintf(why, why_len, "layer %zu: unknown paged layout (dtype %.*s, %u dims): %s", l,
                     (int)ipc->dtype.len, ipc->dtype.ptr, ipc->ndim, lwhy);
            goto fail;
        }
        if (l == 0) {
            g->lay = lay;
            snprintf(geom->dtype, sizeof(geom->dtype), "%.*s", (int)ipc->dtype.len, ipc->dtype.ptr);
        }
        else if (memcmp(&lay, &g->lay, sizeof(lay))) {
            snprintf(why, why_len, "layer %zu: layout differs from layer 0 (mixed layouts are not served)", l);
            rc = -ENOTSUP;
            goto fail;
        }
        const uint8_t *body;
        const char *hwhy = "?";
        if ((rc = storage_handle(&ipc->storage_handle, &body, &hwhy))) {
            snprintf(why, why_len, "layer %zu: %s", l, hwhy);
            goto fail;
        }
        /* storage_offset_bytes places the storage in its allocation; the
         * tensor lives storage_offset elements into the storage. */
        bool sane = ipc->storage_offset >= 0 && ipc->storage_offset <= (1ll << 44) &&
                    ipc->storage_offset_bytes >= 0 && ipc->storage_offset_bytes <= (1ll << 50);
        int64_t in_storage = sane ? ipc->storage_offset * lay.elem : 0;
        int64_t off = ipc->storage_offset_bytes + in_storage;
        if (!sane || in_storage + lay.span > ipc->storage_size_bytes) {
            snprintf(why, why_len, "layer %zu: the cache reaches past its storage (%lld + %lld > %lld bytes)", l,
                     (long long)in_storage, (long long)lay.span, (long long)ipc->storage_size_bytes);
            rc = -EINVAL;
            goto fail;
        }
        size_t m = 0;
        while (m < g->n_maps && memcmp(g->maps[m].handle, body, CU_IPC_HANDLE_SIZE))
            m++;
        if (m == g->n_maps) {
            CUipcMemHandle h;
            memcpy(h.reserved, body, CU_IPC_HANDLE_SIZE);
            CUresult r = b->cu.IpcOpenMemHandle(&g->maps[m].base, h, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS);
            if (r != CUDA_SUCCESS) {
                snprintf(why, why_len, "layer %zu: cuIpcOpenMemHandle: %s (is the worker on this host, sharing its "
                                       "IPC namespace?)", l, cu_err(b, r));
                rc = -EIO;
                goto fail;
            }
            memcpy(g->maps[m].handle, body, CU_IPC_HANDLE_SIZE);
            g->n_maps++;
        }
        /* The pickle's sizes are the client's word: the layer must also lie
         * inside the allocation the handle maps, or a kernel would fault,
         * and a fault is sticky on the device's primary context, which
         * every worker on that GPU shares. The driver documents the query
         * for cuMemAlloc allocations; when it cannot answer for an IPC
         * mapping, the pickle's bound above is all there is. */
        CUdeviceptr abase = 0;
        size_t asize = 0;
        if (b->cu.MemGetAddressRange(&abase, &asize, g->maps[m].base) == CUDA_SUCCESS &&
            (uint64_t)g->maps[m].base + (uint64_t)off + (uint64_t)lay.span > (uint64_t)abase + asize) {
            snprintf(why, why_len, "layer %zu: the cache reaches past the shared allocation (%lld + %lld bytes > "
                                   "%zu)", l, (long long)off, (long long)lay.span,
                     asize - (size_t)(g->maps[m].base - abase));
            rc = -EINVAL;
            goto fail;
        }
        g->layer_base[l] = (uint64_t)g->maps[m].base + (uint64_t)off;
        while (g->lay.vec > 1 && g->layer_base[l] % (uint64_t)g->lay.vec)
            g->lay.vec /= 2; /* 16-byte accesses need 16-byte aligned bases */
    }
    CUresult r = b->cu.StreamCreate(&g->stream, CU_STREAM_NON_BLOCKING);
    if (r != CUDA_SUCCESS) {
        g->stream = NULL;
        snprintf(why, why_len, "cuStreamCreate: %s", cu_err(b, r));
        rc = -EIO;
        goto fail;
    }
    size_t lb = g->nlayers * sizeof(*g->layer_base);
    /* On the registration's stream: a plain cuMemcpyHtoD from pageable
     * memory runs on the legacy NULL stream and may still be in flight when
     * it returns, and a non-blocking stream's kernel does not wait for it
     * (found by the emulated driver, tests/gpu/fakecuda). The source is
     * staged at the call, so layer_base may change later. */
    if ((r = b->cu.MemAlloc(&g->d_layers, lb)) != CUDA_SUCCESS ||
        (r = b->cu.MemcpyHtoDAsync(g->d_layers, g->layer_base, lb, g->stream)) != CUDA_SUCCESS) {
        snprintf(why, why_len, "uploading the layer table: %s", cu_err(b, r));
        rc = -EIO;
        goto fail;
    }
    geom->block_size = g->lay.bs;
    geom->num_layers = g->nlayers;
    geom->hidden = g->lay.nh * g->lay.hs;
    geom->mla = g->lay.kind == TL_MLA;
    g->geom = *geom;
    if (pthread_create(&g->thr, NULL, completion_main, g)) {
        snprintf(why, why_len, "no completion thread");
        rc = -EAGAIN;
        goto fail;
    }
    g->thr_started = true;
    pthread_mutex_lock(&b->all_mu);
    g->all_next = b->all;
    if (b->all)
        b->all->all_prev = g;
    b->all = g;
    g->in_all = true;
    pthread_mutex_unlock(&b->all_mu);
    if (b->n_regs == b->cap_regs) {
        size_t cap = b->cap_regs ? 2 * b->cap_regs : 8;
        struct cu_reg **n = realloc(b->regs, cap * sizeof(*n));
        if (!n) {
            rc = -ENOMEM;
            goto fail;
        }
        b->regs = n;
        b->cap_regs = cap;
    }
    struct cu_reg *dup = reg_take(b, instance); /* a registration of the same id that raced this one */
    b->regs[b->n_regs++] = g;
    pthread_mutex_unlock(&b->lock);
    reg_retire(b, dup, 0);
    log_info("instance %lld registered %u layers on GPU %s: layout %d, %lld blocks of %lld tokens, %lld-byte "
             "token rows, %d-byte accesses, %zu IPC mappings", (long long)instance, g->nlayers, b->devs[g->dev].uuid,
             g->lay.kind, (long long)g->lay.nb, (long long)g->lay.bs, (long long)g->lay.row_bytes, g->lay.vec,
             g->n_maps);
    free(ipc);
    return 0;
fail:
    if (g->dev < 0)
        g->dev = 0;
    pthread_mutex_unlock(&b->lock);
    reg_retire(b, g, UINT64_MAX); /* nothing was queued: freed at once */
    free(ipc);
    return rc;
}

static void cu_unregister(struct transfer_backend *b, int64_t instance, bool wait)
{
    pthread_mutex_lock(&b->lock);
    struct cu_reg *g = reg_take(b, instance);
    pthread_mutex_unlock(&b->lock);
    reg_retire(b, g, wait ? UINT64_MAX : 0);
}

static int cu_geometry(struct transfer_backend *b, int64_t instance, struct transfer_geom *out)
{
    pthread_mutex_lock(&b->lock);
    struct cu_reg **s = reg_slot(b, instance);
    if (s)
        *out = (*s)->geom;
    pthread_mutex_unlock(&b->lock);
    return s ? 0 : -ENOENT;
}

/* The event a reply carries: from the registration's pool, recorded on its
 * stream after everything queued so far. Under g->lock. */
static int record_event(struct transfer_backend *b, struct cu_reg *g, uint8_t event[TRANSFER_EVENT_BYTES],
                        unsigned *idx, char *why, size_t why_len)
{
    CUresult r;
    if (g->n_pool < CU_EVENT_POOL) {
        r = b->cu.EventCreate(&g->pool[g->n_pool], CU_EVENT_INTERPROCESS | CU_EVENT_DISABLE_TIMING);
        if (r != CUDA_SUCCESS) {
            snprintf(why, why_len, "cuEventCreate: %s", cu_err(b, r));
            return -EIO;
        }
        g->n_pool++;
    }
    *idx = g->next_pool;
    CUevent ev = g->pool[g->next_pool];
    g->next_pool = (g->next_pool + 1) % CU_EVENT_POOL;
    CUipcEventHandle h;
    if ((r = b->cu.EventRecord(ev, g->stream)) != CUDA_SUCCESS || (r = b->cu.IpcGetEventHandle(&h, ev)) != CUDA_SUCCESS) {
        snprintf(why, why_len, "recording the reply event: %s", cu_err(b, r));
        return -EIO;
    }
    memcpy(event, h.reserved, TRANSFER_EVENT_BYTES);
    return 0;
}

/* Grows the registration's device scratch to `need` bytes. Under g->lock. */
static int scratch(struct transfer_backend *b, struct cu_reg *g, size_t need)
{
    if (need <= g->scratch_cap)
        return 0;
    if (g->d_scratch)
        b->cu.MemFree(g->d_scratch);
    g->d_scratch = 0;
    g->scratch_cap = 0;
    size_t cap = need < 4096 ? 4096 : need * 2;
    if (b->cu.MemAlloc(&g->d_scratch, cap) != CUDA_SUCCESS) {
        g->d_scratch = 0;
        return -ENOMEM;
    }
    g->scratch_cap = cap;
    return 0;
}

/* The batch on the device: compacted block ids of the chunks to move and
 * their objects' device addresses, one kernel launch (queued, not waited
 * for). */
static int run_copy(struct transfer_backend *b, struct cu_reg *g, const struct transfer_copy *c, char *why,
                    size_t why_len)
{
    const struct tl_layout *l = &g->lay;
    if (c->chunk_tokens == 0 || c->chunk_tokens % (uint64_t)l->bs) {
        snprintf(why, why_len, "chunk size %u is not a multiple of the block size %lld", c->chunk_tokens,
                 (long long)l->bs);
        return -EINVAL;
    }
    uint64_t bpc = c->chunk_tokens / (uint64_t)l->bs;
    size_t nb = c->n_chunks * bpc;
    size_t bytes = nb * sizeof(int64_t) + c->n_chunks * sizeof(uint64_t);
    uint8_t *host = malloc(bytes);
    if (!host)
        return -ENOMEM;
    int64_t *blocks = (int64_t *)host;
    uint64_t *addrs = (uint64_t *)(host + nb * sizeof(int64_t));
    int rc = 0;
    for (size_t k = 0; k < c->n_chunks; k++) {
        uint64_t first = (uint64_t)c->chunk_index[k] * bpc;
        for (uint64_t j = 0; j < bpc; j++) {
            int64_t id = first + j < c->n_blocks ? c->block_ids[first + j] : b->o.null_block_id;
            /* A store must not publish bytes it never read; a retrieve
             * writes only real blocks. */
            if (id != b->o.null_block_id && (id < 0 || id >= l->nb)) {
                snprintf(why, why_len, "block id %lld outside the cache's %lld blocks", (long long)id,
                         (long long)l->nb);
                rc = -EINVAL;
                goto out;
            }
            if (c->store && id == b->o.null_block_id) {
                snprintf(why, why_len, "chunk %lld has a null block: not stored", (long long)c->chunk_index[k]);
                rc = -EINVAL;
                goto out;
            }
            blocks[k * bpc + j] = id;
        }
        addrs[k] = (uint64_t)b->devs[g->dev].host_dev + (uint64_t)((uint8_t *)c->chunk_ptr[k] - (uint8_t *)b->host_base);
    }
    CUresult r;
    /* Ordered before the kernel on the same stream (see cu_register). */
    if ((rc = scratch(b, g, bytes)) ||
        (r = b->cu.MemcpyHtoDAsync(g->d_scratch, host, bytes, g->stream)) != CUDA_SUCCESS) {
        snprintf(why, why_len, "uploading the block table failed");
        rc = rc ? rc : -EIO;
        goto out;
    }
    struct tl_xfer x = {
        .lay = *l,
        .nlayers = g->nlayers,
        .nchunks = (uint32_t)c->n_chunks,
        .chunk_tokens = c->chunk_tokens,
        .last_tokens = c->chunk_tokens,
        .null_block = b->o.null_block_id,
        .skip_blocks = c->store ? 0 : c->skip_blocks,
        .layer_base = (const uint64_t *)(uintptr_t)g->d_layers,
        .block_ids = (const int64_t *)(uintptr_t)g->d_scratch,
        .chunk_addr = (const uint64_t *)(uintptr_t)(g->d_scratch + nb * sizeof(int64_t)),
    };
    /* The chunk ranges passed here are whole chunks, but a RETRIEVE skips
     * by position in the range: chunk k of the batch is chunk index k. */
    uint64_t items = (uint64_t)c->n_chunks * tl_items_per_chunk(&x);
    uint64_t grid = (items + 255) / 256;
    if (grid > 65535)
        grid = 65535; /* grid-stride loop covers the rest */
    void *params[] = { &x };
    r = b->cu.LaunchKernel(c->store ? b->devs[g->dev].gather : b->devs[g->dev].scatter, (unsigned)grid, 1, 1, 256, 1,
                           1, 0, g->stream, params, NULL);
    if (r != CUDA_SUCCESS) {
        snprintf(why, why_len, "the %s kernel failed: %s", c->store ? "gather" : "scatter", cu_err(b, r));
        rc = -EIO;
    }
out:
    free(host);
    return rc;
}

static int cu_copy(struct transfer_backend *b, const struct transfer_copy *c, uint8_t event[TRANSFER_EVENT_BYTES],
                   bool *copied, char *why, size_t why_len)
{
    *copied = false;
    if (c->n_chunks && !c->done) {
        snprintf(why, why_len, "a copy without a completion callback");
        return -EINVAL;
    }
    pthread_mutex_lock(&b->lock);
    struct cu_reg **s = reg_slot(b, c->instance);
    if (!s) {
        pthread_mutex_unlock(&b->lock);
        snprintf(why, why_len, "instance not registered");
        return -ENOENT;
    }
    struct cu_reg *g = *s;
    /* Only this registration's copies serialise; b->lock is dropped first so
     * other workers' copies run in parallel. `users` keeps g alive until we
     * leave (reg_retire waits for it after setting stop). */
    pthread_mutex_lock(&g->lock);
    g->users++;
    pthread_mutex_unlock(&b->lock);
    int rc = 0;
    /* Back-pressure: a worker with a full queue waits here, in its pool
     * thread, never in the ZeroMQ loop. */
    unsigned room = c->n_chunks ? TRANSFER_QUEUE_DEPTH : CU_QCAP - 1;
    while (g->q_n >= room && !g->stop && !g->stuck)
        pthread_cond_wait(&g->cv, &g->lock);
    if (g->stop) {
        snprintf(why, why_len, "instance unregistered meanwhile");
        rc = -ENOENT;
        goto out;
    }
    if (g->q_n >= room) { /* full behind a copy stuck on the worker's event: no waiting forever */
        snprintf(why, why_len, "its copy queue is full behind a copy stuck on the worker's event for over %d s",
                 b->o.event_timeout_s);
        rc = -EBUSY;
        goto out;
    }
    CUresult r = b->cu.CtxSetCurrent(b->devs[g->dev].ctx);
    if (r != CUDA_SUCCESS) {
        snprintf(why, why_len, "set context: %s", cu_err(b, r));
        rc = -EIO;
        goto out;
    }
    if (c->client_event_len == CU_IPC_HANDLE_SIZE) {
        CUipcEventHandle h;
        CUevent cev;
        memcpy(h.reserved, c->client_event, CU_IPC_HANDLE_SIZE);
        if ((r = b->cu.IpcOpenEventHandle(&cev, h)) == CUDA_SUCCESS) {
            b->cu.StreamWaitEvent(g->stream, cev, 0);
            b->cu.EventDestroy(cev); /* the wait is queued; the handle may go */
        }
    } else if (c->client_event_len) {
        snprintf(why, why_len, "a %u-byte event handle (isolated IPC) is not served; run the client with "
                               "lmcache.mp.isolated_ipc=false", (unsigned)c->client_event_len);
        rc = -ENOTSUP;
        goto out;
    }
    int crc = c->n_chunks ? run_copy(b, g, c, why, why_len) : -ENODATA;
    unsigned ev = 0;
    if ((rc = record_event(b, g, event, &ev, why, why_len)))
        goto out; /* no valid event: the caller drops what it reserved */
    /* Queued either way (see CU_QCAP); only a copy has a callback. */
    g->q[(g->q_head + g->q_n) % CU_QCAP] = (struct cu_pending){crc ? NULL : c->done, c->done_arg, ev, now_ns()};
    g->q_n++;
    pthread_cond_broadcast(&g->cv);
    *copied = !crc;
out:
    g->users--;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->lock);
    return rc;
}

/* Shutdown grace for queued copies: short, as a stop must be bounded. */
#define CU_CLOSE_GRACE_NS 2000000000ull

static void cu_close(struct transfer_backend *b)
{
    if (!b)
        return;
    uint64_t grace = (uint64_t)(b->o.event_timeout_s > 0 ? b->o.event_timeout_s : 60) * 1000000000ull;
    uint64_t deadline = now_ns() + (grace < CU_CLOSE_GRACE_NS ? grace : CU_CLOSE_GRACE_NS);
    for (;;) {
        pthread_mutex_lock(&b->lock);
        struct cu_reg *g = b->n_regs ? reg_take(b, b->regs[0]->instance) : NULL;
        pthread_mutex_unlock(&b->lock);
        if (!g)
            break;
        reg_retire(b, g, deadline);
    }
    /* Detached registrations get the rest of the grace, then no callback
     * runs any more (the engine goes next). */
    pthread_mutex_lock(&b->all_mu);
    for (uint64_t now = now_ns(); b->all && now < deadline; now = now_ns()) {
        struct timespec ts;
        deadline_ts(deadline, &ts);
        pthread_cond_timedwait(&b->all_cv, &b->all_mu, &ts);
    }
    b->closing = true;
    b->wd_stop = true;
    pthread_cond_broadcast(&b->all_cv);
    while (b->cb_active || b->dying)
        pthread_cond_wait(&b->all_cv, &b->all_mu);
    size_t abandoned = 0;
    for (struct cu_reg *g = b->all; g; g = g->all_next)
        abandoned++;
    pthread_mutex_unlock(&b->all_mu);
    if (b->wd_started)
        pthread_join(b->wd, NULL);
    if (abandoned) {
        /* A GPU stream wait cannot be cancelled: their DMA may still land
         * in their mappings and in pinned L1, so neither is released, and
         * the backend and the driver stay (the process is exiting). */
        log_warn("GPU path: %zu registrations still have copies waiting on their workers' events; lmcd stops "
                 "without waiting for them (their L1 memory is never reused: the process exits)", abandoned);
        return;
    }
    pthread_mutex_lock(&b->lock);
    /* Unregistering needs a current context, and this thread (the one
     * that stops the server) may never have had one. */
    if (b->host_pinned && b->cu.CtxSetCurrent(b->devs[b->pin_dev].ctx) == CUDA_SUCCESS)
        b->cu.MemHostUnregister(b->host_base);
    for (int i = 0; i < b->ndev; i++)
        if (b->devs[i].ctx)
            b->cu.PrimaryCtxRelease(b->devs[i].dev);
    pthread_mutex_unlock(&b->lock);
    pthread_mutex_destroy(&b->lock);
    pthread_mutex_destroy(&b->all_mu);
    pthread_cond_destroy(&b->all_cv);
    free(b->regs);
    dlclose(b->lib);
    free(b);
}

static const struct transfer_ops cuda_ops = {
    .name = "cuda",
    .open = cu_open,
    .register_kv = cu_register,
    .unregister = cu_unregister,
    .geometry = cu_geometry,
    .copy = cu_copy,
    .close = cu_close,
};

const struct transfer_ops *transfer_cuda(void) { return &cuda_ops; }

const char *transfer_build_desc(void)
{
    return "GPU backend: CUDA driver API via dlopen, kernels embedded (sm_80, sm_90, PTX); built and host-tested, "
           "unrun on a GPU";
}

#else /* built without nvcc */

const struct transfer_ops *transfer_cuda(void) { return NULL; }

const char *transfer_build_desc(void) { return "GPU backend: none (built without nvcc: CPU-only, engine-driven path)"; }

#endif
