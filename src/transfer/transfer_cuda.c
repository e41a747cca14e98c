/*
 * transfer_cuda: the CUDA backend of the LMCache-driven path (contract and
 * status in transfer.h). The driver API is loaded at run time with
 * dlopen("libcuda.so.1"): the same lmcd runs on hosts without a driver.
 * The kernels (transfer_cuda.cu) arrive as a fatbin embedded at build time
 * (transfer_cuda_fatbin.c, generated) and are loaded per device, in that
 * device's primary context, when its first worker registers: a GPU no worker
 * uses gets no context (LMCache #4019). L1 is pinned by pin_main, slice by
 * slice, in the first such context; a copy (cu_copy) moves each object
 * straight to/from pinned L1 or, where its slices are not pinned, through
 * the registration's bounce slots, in pieces (run_piece) that the
 * completion thread (completion_main) finishes and reports.
 *
 * Threads: the pinning thread (pin_main), one completion thread per
 * registration, the watchdog (watchdog_main: copies stuck on a worker's
 * event) and the reaper (reaper_main). Freeing a registration's driver
 * resources (cuMemFree, cuMemFreeHost, cuIpcCloseMemHandle, syncing its
 * stream) waits for the device in practice, so for every stream on it,
 * including another worker's copy stuck on an event that never completes:
 * only the reaper makes those calls, with no lock held, and UNREGISTER,
 * re-registering and reaping return once the registration is out of the
 * table and queued to it. No lock is held across a driver call that may
 * wait for the device; the calls made under one (allocating, recording,
 * queueing on a stream from pinned memory, opening handles) are documented
 * as asynchronous or carry no synchronisation (loading the kernels, once
 * per device under b->lock, documents neither).
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
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include "metrics/metrics.h"
#include "transfer/transfer_layout.h"
#include "transfer/transfer_pin.h"
#include "util/clock.h"
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
    X(MemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2", (void *, CUdeviceptr, size_t, CUstream))                    \
    X(MemHostAlloc, "cuMemHostAlloc", (void **, size_t, unsigned))                                        \
    X(MemFreeHost, "cuMemFreeHost", (void *))                                                             \
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
/* Bounce buffers and device staging, per registration: slots of one chunk
 * object each, CU_BOUNCE_BYTES in all (at least 2 slots, at most
 * CU_BOUNCE_MAX), allocated on first need. A copy needing more is cut
 * into pieces; a piece waits for a slot when all are in use. */
#define CU_BOUNCE_BYTES (64ull << 20)
#define CU_BOUNCE_MAX 16
/* A piece's block table (its block ids and chunk addresses) goes to the
 * device from pinned memory, one buffer per queue slot (the piece's own
 * until its entry leaves the queue, by when its upload ran): an async copy
 * from pageable memory may synchronise with the stream first, which waits
 * on the worker's event, under g->lock. A piece holds at most this many
 * bytes of table. */
#define CU_TABLE_BYTES (64u << 10)
#define CU_PIN_POLL_NS 50000000L /* the pinning thread looks for newly committed slices this often */

enum { SL_UNPINNED = 0, SL_PINNED = 1, SL_FAILED = 2 };

struct cu_dev {
    CUdevice dev;
    char uuid[40]; /* "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" */
    CUcontext ctx; /* primary context, retained on first registration */
    CUmodule mod;
    CUfunction gather, scatter;
};

struct cu_map {
    uint8_t handle[CU_IPC_HANDLE_SIZE];
    CUdeviceptr base;
};

/* One transfer_copy, reported once when its last piece completed. */
struct cu_group {
    void (*done)(void *arg, bool ok);
    void *arg;
    unsigned pending; /* pieces queued, not completed (under g->lock) */
    bool ok, sealed;  /* sealed: no more pieces will come */
};

/* A queued piece of a copy that the completion thread waits for. */
struct cu_pending {
    struct cu_group *grp; /* NULL: nothing to report (an event-only record) */
    unsigned ev;          /* index in pool[] of the event recorded after the piece */
    uint64_t t_ns;        /* when it was queued (the watchdog's stuck test) */
    bool store;
    /* A piece that failed part-way (run_piece): what it queued may still
     * run, behind the worker's event, into its bounce slots or L1 objects.
     * No event of its own: the completion thread waits for the stream,
     * then frees its slots and fails the copy (its reservations are
     * dropped, its read locks released, only then). */
    bool fence;
    unsigned nb;                 /* bounce slots the piece holds */
    uint8_t slot[CU_BOUNCE_MAX]; /* store: copied to l1[i] once complete; all: freed then */
    void *l1[CU_BOUNCE_MAX];
};

struct cu_reg {
    int64_t instance;
    int dev;
    CUcontext ctx; /* its device's primary context (NULL: no driver resource was created) */
    struct transfer_backend *b;
    struct transfer_geom geom;
    CUstream stream;
    struct cu_map *maps;
    size_t n_maps;
    uint64_t *layer_base;
    uint32_t nlayers;
    struct tl_layout lay;
    CUdeviceptr d_layers;  /* layer_base[] on the device */
    CUdeviceptr d_scratch; /* block ids and chunk addresses of one piece */
    void *tbl_h[CU_QCAP];  /* pinned, CU_TABLE_BYTES each: the table of the piece in that queue slot */
    size_t scratch_cap;
    /* Outgrown scratch that queued copies may still read, freed with the
     * registration: freeing device memory waits for the device in practice
     * (here: on the worker's event, behind which the stream waits). Sizes
     * at least double: a few at most, under twice the last one in all. */
    CUdeviceptr scratch_old[48];
    unsigned n_scratch_old;
    uint64_t obj_bytes;    /* one full chunk object: the size of a bounce/staging slot */
    unsigned n_slots;      /* slots per piece (bounce and staging alike) */
    void *bounce_h[CU_BOUNCE_MAX]; /* pinned, device-mapped; [0, n_bounce) usable */
    CUdeviceptr bounce_d[CU_BOUNCE_MAX];
    unsigned n_bounce;     /* slots allocated and device-mapped (a failed allocation is retried) */
    uint32_t slot_busy;    /* bounce slots in use (under lock) */
    CUdeviceptr d_stage;   /* staging: n_slots objects on the device */
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
    struct cu_reg *reap_next; /* the reaper's queue, under b->all_mu */
};

struct transfer_backend {
    void *lib;
    struct cu_api cu;
    struct transfer_opts o;
    void *host_base; /* the L1 segment */
    size_t host_len;
    /* Pinned L1, slice by slice (transfer_pin.h), by the pinning thread in
     * the context of pin_dev (the first device a worker registered on).
     * sl_state and sl_dev are read lock-free by the copy path. */
    uint64_t slice, nslices;
    _Atomic unsigned char *sl_state; /* SL_* */
    _Atomic uint64_t *sl_dev;        /* [slice * ndev + dev]: device address of the slice, 0: not asked yet */
    int pin_dev;
    bool pin_started;
    pthread_t pin_thr;
    pthread_mutex_t pin_mu; /* pin_stop */
    pthread_cond_t pin_cv;
    bool pin_stop;
    atomic_bool pin_running, pin_gave_up, pin_lost;
    atomic_uint_fast64_t pin_gen; /* L1's generation when pinning began (o.host_gen) */
    atomic_uint_fast64_t n_pinned, n_failed, pinned_bytes;
    atomic_uint_fast64_t obj_direct, obj_staged, obj_bounced;
    int ndev;
    struct cu_dev devs[CU_MAX_DEVICES];
    pthread_mutex_t lock; /* regs[] and devs[].ctx/mod (registration is rare) */
    struct cu_reg **regs;
    size_t n_regs, cap_regs;
    /* Every registration with a completion thread, in the table or
     * detached; the watchdog walks it. */
    pthread_mutex_t all_mu; /* order: b->lock, all_mu, g->lock */
    pthread_cond_t all_cv; /* cb_active or dying dropped, watchdog stop */
    struct cu_reg *all;
    unsigned cb_active; /* done callbacks and STORE bounce copies into L1 running */
    /* The reaper (reaper_main): registrations retired with an empty queue
     * wait here to have their driver resources freed, which waits for the
     * device in practice, so for every stream on it. Under all_mu. */
    struct cu_reg *rp_head, *rp_tail;
    pthread_cond_t rp_cv; /* queued, rp_stop */
    unsigned dying;       /* queued for the reaper or being freed by it */
    bool rp_stop, rp_started;
    bool rp_abandoned; /* close() left it freeing (the device never drained): it detaches itself */
    pthread_t rp;
    bool closing;       /* close() passed its grace: no more done callbacks, nothing more freed */
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
static void *reaper_main(void *arg);

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
    if (host_base && host_len) {
        b->slice = tp_slice_bytes(host_len);
        b->nslices = tp_nslices(host_len, b->slice);
        b->sl_state = calloc(b->nslices, sizeof(*b->sl_state));
        b->sl_dev = calloc(b->nslices * (size_t)b->ndev, sizeof(*b->sl_dev));
        if (!b->sl_state || !b->sl_dev) {
            snprintf(why, why_len, "no memory for the pinning table");
            goto nodev;
        }
    }
    pthread_mutex_init(&b->pin_mu, NULL);
    pthread_cond_init(&b->pin_cv, NULL);
    pthread_mutex_init(&b->all_mu, NULL);
    cond_init_mono(&b->all_cv);
    pthread_cond_init(&b->rp_cv, NULL);
    if (pthread_create(&b->rp, NULL, reaper_main, b)) {
        snprintf(why, why_len, "no reaper thread");
        goto nothread;
    }
    if (pthread_create(&b->wd, NULL, watchdog_main, b)) {
        pthread_mutex_lock(&b->all_mu);
        b->rp_stop = true;
        pthread_cond_signal(&b->rp_cv);
        pthread_mutex_unlock(&b->all_mu);
        pthread_join(b->rp, NULL);
        snprintf(why, why_len, "no watchdog thread");
        goto nothread;
    }
    b->rp_started = b->wd_started = true;
    *out = b;
    return 0;
nothread:
    pthread_mutex_destroy(&b->all_mu);
    pthread_cond_destroy(&b->all_cv);
    pthread_cond_destroy(&b->rp_cv);
    pthread_mutex_destroy(&b->pin_mu);
    pthread_cond_destroy(&b->pin_cv);
nodev:
    pthread_mutex_destroy(&b->lock);
    free((void *)b->sl_state);
    free((void *)b->sl_dev);
    free(b);
    dlclose(lib);
    return -ENODEV;
}

static bool pin_stopping(struct transfer_backend *b)
{
    pthread_mutex_lock(&b->pin_mu);
    bool st = b->pin_stop;
    pthread_mutex_unlock(&b->pin_mu);
    return st;
}

/* The pinning thread: registers each committed slice of L1 for DMA
 * (portable: every context may use it; device-mapped: kernels address
 * it), in address order, and looks again for slices committed since,
 * until every slice is pinned, pinning failed for lack of lockable memory,
 * or lmcd stops. It holds no lock a request needs: the copy path reads
 * sl_state with an atomic load. Pinning faults every page of a slice in,
 * so a slice the lazy L1 has not committed is left alone (a pin would
 * commit it). */
/* Whether another process truncated L1 since pinning began (it was
 * restored in place: the pinned slices hold the old pages). Says so once,
 * and pinning stops. Any thread. */
static bool pin_stale(struct transfer_backend *b)
{
    if (!b->o.host_gen || b->o.host_gen(b->o.host_arg) == atomic_load(&b->pin_gen))
        return false;
    atomic_store(&b->pin_gave_up, true);
    if (!atomic_exchange(&b->pin_lost, true))
        log_warn("pinning L1: the segment was truncated by another process and restored; its pinned slices hold "
                 "the old pages, so GPU copies go through bounce buffers until lmcd restarts");
    return true;
}

static void *pin_main(void *arg)
{
    struct transfer_backend *b = arg;
    uint64_t t0 = clock_mono_ns();
    bool warned = false, announced = false;
    if (b->cu.CtxSetCurrent(b->devs[b->pin_dev].ctx) != CUDA_SUCCESS) {
        log_warn("pinning L1: no context on GPU %s; every copy goes through bounce buffers",
                 b->devs[b->pin_dev].uuid);
        atomic_store(&b->pin_gave_up, true);
        atomic_store(&b->pin_running, false);
        return NULL;
    }
    while (!pin_stopping(b)) {
        /* Another process truncated L1 and it was restored in place: the
         * pinned slices hold the old pages. The copy path sees the same
         * generation change and uses bounce buffers from then on; pinning
         * stops (the old registrations are released at stop). */
        if (pin_stale(b)) {
            atomic_store(&b->pin_running, false);
            return NULL;
        }
        bool waiting = false;
        for (uint64_t i = 0; i < b->nslices; i++) {
            if (atomic_load_explicit(&b->sl_state[i], memory_order_relaxed) != SL_UNPINNED)
                continue;
            uint64_t off, n;
            tp_slice_range(b->host_len, b->slice, i, &off, &n);
            if (b->o.host_backed && !b->o.host_backed(b->o.host_arg, off, n)) {
                waiting = true;
                continue;
            }
            if (pin_stopping(b))
                break;
            CUresult r = b->cu.MemHostRegister((uint8_t *)b->host_base + off, n,
                                               CU_MEMHOSTREGISTER_PORTABLE | CU_MEMHOSTREGISTER_DEVICEMAP);
            if (r == CUDA_SUCCESS) {
                atomic_fetch_add(&b->pinned_bytes, n);
                atomic_fetch_add(&b->n_pinned, 1);
                atomic_store_explicit(&b->sl_state[i], SL_PINNED, memory_order_release);
                /* Lowest committed slice first (a lazy L1 fills from its
                 * start; slices committed meanwhile below come next). */
                i = (uint64_t)-1;
                waiting = false;
                continue;
            }
            atomic_store_explicit(&b->sl_state[i], SL_FAILED, memory_order_release);
            atomic_fetch_add(&b->n_failed, 1);
            bool limit = r == CUDA_ERROR_OUT_OF_MEMORY;
            if (!warned)
                log_warn("pinning L1 failed at offset %llu (%llu bytes): %s; %llu of %zu bytes pinned. Copies to the "
                         "rest go through bounce buffers (slower, never failed). %s",
                         (unsigned long long)off, (unsigned long long)n, cu_err(b, r),
                         (unsigned long long)atomic_load(&b->pinned_bytes), b->host_len,
                         limit ? "Raise the locked-memory limit: LimitMEMLOCK=infinity in lmcd's systemd unit, "
                                 "--ulimit memlock=-1 for a container, or ulimit -l unlimited"
                               : "Other slices are still pinned");
            warned = true;
            if (limit) { /* every later slice would fail the same way */
                atomic_store(&b->pin_gave_up, true);
                atomic_store(&b->pin_running, false);
                return NULL;
            }
        }
        if (!waiting)
            break;
        if (!announced && atomic_load(&b->n_pinned)) {
            log_info("pinning L1: %llu bytes of the committed part pinned in %.1f s; the rest is pinned as the "
                     "lazy L1 commits it", (unsigned long long)atomic_load(&b->pinned_bytes),
                     (double)(clock_mono_ns() - t0) / 1e9);
            announced = true;
        }
        pthread_mutex_lock(&b->pin_mu);
        if (!b->pin_stop) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += CU_PIN_POLL_NS;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&b->pin_cv, &b->pin_mu, &ts);
        }
        pthread_mutex_unlock(&b->pin_mu);
    }
    if (!pin_stopping(b))
        log_info("pinning L1: done, %llu of %zu bytes in %llu slices pinned in %.1f s",
                 (unsigned long long)atomic_load(&b->pinned_bytes), b->host_len,
                 (unsigned long long)atomic_load(&b->n_pinned), (double)(clock_mono_ns() - t0) / 1e9);
    atomic_store(&b->pin_running, false);
    return NULL;
}

/* Starts pinning L1 in device i's context (its first registration).
 * Under b->lock. */
static void pin_start(struct transfer_backend *b, int i)
{
    if (b->pin_started || !b->nslices)
        return;
    b->pin_dev = i;
    atomic_store(&b->pin_gen, b->o.host_gen ? b->o.host_gen(b->o.host_arg) : 0);
    atomic_store(&b->pin_running, true);
    if (pthread_create(&b->pin_thr, NULL, pin_main, b)) {
        atomic_store(&b->pin_running, false);
        atomic_store(&b->pin_gave_up, true);
        log_warn("pinning L1: no thread; every copy goes through bounce buffers");
        return;
    }
    b->pin_started = true;
}

/* Stops the pinning thread and (unpin) unregisters every pinned slice, in
 * the context that pinned them: after every registration is gone, never
 * while a copy may still use them. */
static void pin_stop(struct transfer_backend *b, bool unpin)
{
    if (!b->pin_started)
        return;
    pthread_mutex_lock(&b->pin_mu);
    b->pin_stop = true;
    pthread_cond_broadcast(&b->pin_cv);
    pthread_mutex_unlock(&b->pin_mu);
    pthread_join(b->pin_thr, NULL);
    b->pin_started = false;
    if (!unpin || b->cu.CtxSetCurrent(b->devs[b->pin_dev].ctx) != CUDA_SUCCESS)
        return;
    for (uint64_t i = 0; i < b->nslices; i++)
        if (atomic_load(&b->sl_state[i]) == SL_PINNED) {
            uint64_t off, n;
            tp_slice_range(b->host_len, b->slice, i, &off, &n);
            b->cu.MemHostUnregister((uint8_t *)b->host_base + off);
            atomic_store(&b->sl_state[i], SL_UNPINNED);
        }
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
    /* Pin L1 in the background, in the context of a device a worker uses
     * (no context on a GPU nobody uses, LMCache #4019), never blocking this
     * registration or any request (LMCache pins at start, ~45 s for 80 GB:
     * #4018): until a slice is pinned, copies to it use bounce buffers. */
    pin_start(b, i);
    return 0;
}

/* Frees a registration's driver resources and memory. On the reaper thread
 * only: freeing device or pinned memory, closing an IPC mapping and
 * synchronising a stream wait for the device in practice (cuMemFree and
 * cuMemFreeHost synchronise it), so for every stream on it, including
 * another worker's copy stuck on its event. Its queue is empty (so its
 * stream idle: see CU_QCAP), its completion thread joined, and nothing
 * else refers to it. No lock held. */
static void reg_free(struct transfer_backend *b, struct cu_reg *g)
{
    if (g->ctx && b->cu.CtxSetCurrent(g->ctx) == CUDA_SUCCESS) {
        if (g->stream) {
            b->cu.StreamSynchronize(g->stream);
            b->cu.StreamDestroy(g->stream);
        }
        for (unsigned i = 0; i < g->n_pool; i++)
            b->cu.EventDestroy(g->pool[i]);
        if (g->d_layers)
            b->cu.MemFree(g->d_layers);
        if (g->d_scratch)
            b->cu.MemFree(g->d_scratch);
        for (unsigned i = 0; i < g->n_scratch_old; i++)
            b->cu.MemFree(g->scratch_old[i]);
        if (g->d_stage)
            b->cu.MemFree(g->d_stage);
        for (unsigned i = 0; i < CU_BOUNCE_MAX; i++)
            if (g->bounce_h[i])
                b->cu.MemFreeHost(g->bounce_h[i]);
        for (unsigned i = 0; i < CU_QCAP; i++)
            if (g->tbl_h[i])
                b->cu.MemFreeHost(g->tbl_h[i]);
        for (size_t i = 0; i < g->n_maps; i++)
            b->cu.IpcCloseMemHandle(g->maps[i].base);
    }
    pthread_mutex_destroy(&g->lock);
    pthread_cond_destroy(&g->cv);
    free(g->maps);
    free(g->layer_base);
    free(g);
}

/*
 * Hands g to the reaper, which joins its completion thread and frees it
 * (reg_free). g is out of the table, stopped, its queue empty; whoever
 * calls this touches g no more. Never waits on the GPU, so UNREGISTER,
 * re-registering and reaping return here. False: close() passed its grace
 * (`closing`): g is abandoned, left in b->all and never freed (a free could
 * wait on another's stuck stream).
 */
static bool reg_queue(struct transfer_backend *b, struct cu_reg *g)
{
    pthread_mutex_lock(&b->all_mu);
    if (b->closing) {
        pthread_mutex_unlock(&b->all_mu);
        return false;
    }
    if (g->in_all) { /* out of the watchdog's list: the reaper may free it */
        if (g->all_prev)
            g->all_prev->all_next = g->all_next;
        else
            b->all = g->all_next;
        if (g->all_next)
            g->all_next->all_prev = g->all_prev;
        g->in_all = false;
    }
    g->reap_next = NULL;
    if (b->rp_tail)
        b->rp_tail->reap_next = g;
    else
        b->rp_head = g;
    b->rp_tail = g;
    b->dying++;
    pthread_cond_signal(&b->rp_cv);
    pthread_mutex_unlock(&b->all_mu);
    return true;
}

/* The reaper: frees retired registrations one by one, in the order they
 * were retired, holding no lock while the driver waits for the device. It
 * stops at rp_stop with its queue empty, or at `closing` (close() passed
 * its grace: what is left is abandoned). */
static void *reaper_main(void *arg)
{
    struct transfer_backend *b = arg;
    pthread_mutex_lock(&b->all_mu);
    for (;;) {
        while (!b->rp_head && !b->rp_stop)
            pthread_cond_wait(&b->rp_cv, &b->all_mu);
        if (!b->rp_head || b->closing)
            break;
        struct cu_reg *g = b->rp_head;
        b->rp_head = g->reap_next;
        if (!b->rp_head)
            b->rp_tail = NULL;
        pthread_mutex_unlock(&b->all_mu);
        if (g->thr_started) /* ending or ended: its queue is empty and it was stopped */
            pthread_join(g->thr, NULL);
        reg_free(b, g);
        pthread_mutex_lock(&b->all_mu);
        b->dying--;
        pthread_cond_broadcast(&b->all_cv);
    }
    bool detach = b->rp_abandoned; /* set by close() with rp_stop, read after it */
    pthread_mutex_unlock(&b->all_mu);
    if (detach)
        pthread_detach(pthread_self());
    return NULL;
}

/* g->lock held: no new copies, no submitter inside, and the queued copies
 * given until deadline to drain (less if one is stuck on its event). */
static void reg_stop_locked(struct cu_reg *g, uint64_t deadline)
{
    g->stop = true;
    pthread_cond_broadcast(&g->cv);
    while (g->users)
        pthread_cond_wait(&g->cv, &g->lock);
    for (uint64_t now = now_ns(); g->q_n && !g->stuck && now < deadline; now = now_ns()) {
        struct timespec ts;
        deadline_ts(deadline - now > 1000000000ull ? now + 1000000000ull : deadline, &ts);
        pthread_cond_timedwait(&g->cv, &g->lock, &ts);
    }
}

/*
 * g has left the table (or never entered it). copy() calls that found it
 * earlier leave (one waiting for queue room sees stop); then its queued
 * copies are waited for until `deadline` (monotonic ns; 0: not at all) or
 * until the watchdog marks them stuck. An empty queue: g goes to the
 * reaper, which frees it. Copies left: g is detached, and its completion
 * thread hands it to the reaper after the last one completed (a GPU stream
 * wait cannot be cancelled, so mappings and stream must outlive it). Waits
 * for g's own copies only, never for the driver's frees (so never for
 * another registration's stream). Never holds b->lock.
 */
static void reg_retire(struct transfer_backend *b, struct cu_reg *g, uint64_t deadline)
{
    if (!g)
        return;
    pthread_mutex_lock(&g->lock);
    reg_stop_locked(g, deadline);
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
    reg_queue(b, g); /* false only once close() passed its grace, which retires nothing after */
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
static bool cb_run(struct transfer_backend *b, const struct cu_group *p, bool ok)
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
            /* Never waits for g->lock under all_mu: a copy() holds it across
             * driver calls (queueing a piece), and everyone's completions,
             * retirements and the stop take all_mu. Busy: next tick. */
            if (pthread_mutex_trylock(&g->lock))
                continue;
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
    bool ctx_ok = b->cu.CtxSetCurrent(g->ctx) == CUDA_SUCCESS;
    pthread_mutex_lock(&g->lock);
    for (;;) {
        /* Stopped, it ends only once no copy() is inside either (one may
         * still queue what it had begun; it broadcasts when it leaves). */
        while (!g->q_n && (!g->stop || g->users))
            pthread_cond_wait(&g->cv, &g->lock);
        if (!g->q_n)
            break;
        struct cu_pending p = g->q[g->q_head];
        CUevent ev = g->pool[p.ev];
        pthread_mutex_unlock(&g->lock);
        CUresult r = !ctx_ok   ? CUDA_ERROR_INVALID_CONTEXT
                     : p.fence ? b->cu.StreamSynchronize(g->stream)
                               : b->cu.EventSynchronize(ev);
        if (r != CUDA_SUCCESS)
            log_warn("instance %lld: a copy failed on the GPU: %s", (long long)g->instance, cu_err(b, r));
        if (p.fence)
            r = CUDA_ERROR_UNKNOWN; /* its piece failed: the copy fails (logged when it failed) */
        /* A STORE's bounced objects reach L1 before the engine publishes
         * them (the bounce slots are this piece's until freed below). */
        if (r == CUDA_SUCCESS && p.store && p.nb) {
            /* L1 may be unmapped once close() passed its grace: the copy
             * into it counts as a callback (close() waits for cb_active
             * after setting closing, so none runs past it). */
            pthread_mutex_lock(&b->all_mu);
            bool go = !b->closing;
            if (go)
                b->cb_active++;
            pthread_mutex_unlock(&b->all_mu);
            if (go) {
                for (unsigned i = 0; i < p.nb; i++)
                    memcpy(p.l1[i], g->bounce_h[p.slot[i]], g->obj_bytes);
                pthread_mutex_lock(&b->all_mu);
                b->cb_active--;
                pthread_cond_broadcast(&b->all_cv);
                pthread_mutex_unlock(&b->all_mu);
            } else {
                r = CUDA_ERROR_UNKNOWN; /* abandoned: nothing reached L1 */
            }
        }
        pthread_mutex_lock(&g->lock);
        for (unsigned i = 0; i < p.nb; i++)
            g->slot_busy &= ~(1u << p.slot[i]);
        bool fire = false;
        if (p.grp) {
            p.grp->pending--;
            p.grp->ok = p.grp->ok && r == CUDA_SUCCESS;
            fire = p.grp->sealed && !p.grp->pending;
        }
        pthread_cond_broadcast(&g->cv); /* bounce slots for a blocked copy() */
        pthread_mutex_unlock(&g->lock);
        /* The copy reports once, after its last piece (before that piece
         * leaves the queue, as reg_retire expects). */
        if (fire) {
            bool ran = cb_run(b, p.grp, p.grp->ok);
            free(p.grp);
            if (!ran)
                return NULL; /* close() abandoned it: touch nothing more */
        }
        pthread_mutex_lock(&g->lock);
        g->q_head = (g->q_head + 1) % CU_QCAP;
        g->q_n--;
        g->stuck = false; /* the next head gets its own time */
        pthread_cond_broadcast(&g->cv); /* room for a blocked copy(), progress for reg_retire */
    }
    bool detached = g->detached;
    pthread_mutex_unlock(&g->lock);
    /* Detached: the last copy completed; the reaper joins this thread and
     * closes everything. Abandoned by close() instead: nobody joins it. */
    if (detached && !reg_queue(b, g))
        pthread_detach(pthread_self());
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
     * copies complete, unless stuck on the worker's event), and the reaper
     * closes its mappings later: a handle reopened below in the same
     * context meanwhile only counts a reference and gets the same pointer,
     * as the driver documents. Outside b->lock: other workers' copies go on
     * meanwhile. b->lock is held only to set the device up (dev_ready) and
     * to enter the table; the driver calls of this registration run
     * without it (g is nobody else's until it is in the table). */
    pthread_mutex_lock(&b->lock);
    struct cu_reg *old = reg_take(b, instance);
    pthread_mutex_unlock(&b->lock);
    reg_retire(b, old, UINT64_MAX);
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
            pthread_mutex_lock(&b->lock);
            rc = dev_ready(b, dev, why, why_len); /* also makes its context current in this thread */
            g->ctx = rc ? NULL : b->devs[dev].ctx;
            pthread_mutex_unlock(&b->lock);
            if (rc)
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
    /* Once in the table g may be retired and freed by another thread at
     * any time: the log line below reads these instead. */
    struct tl_layout lay = g->lay;
    size_t n_maps = g->n_maps;
    int dev = g->dev;
    pthread_mutex_lock(&b->lock);
    if (b->n_regs == b->cap_regs) {
        size_t cap = b->cap_regs ? 2 * b->cap_regs : 8;
        struct cu_reg **n = realloc(b->regs, cap * sizeof(*n));
        if (!n) {
            pthread_mutex_unlock(&b->lock);
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
             "token rows, %d-byte accesses, %zu IPC mappings", (long long)instance, (unsigned)reg->n_descs,
             b->devs[dev].uuid, lay.kind, (long long)lay.nb, (long long)lay.bs, (long long)lay.row_bytes, lay.vec,
             n_maps);
    free(ipc);
    return 0;
fail:
    if (g->dev < 0)
        g->dev = 0;
    reg_retire(b, g, UINT64_MAX); /* nothing was queued: to the reaper at once */
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
    if (g->next_pool == g->n_pool) { /* the slot's first use (the pool grows to CU_EVENT_POOL) */
        r = b->cu.EventCreate(&g->pool[g->n_pool], CU_EVENT_INTERPROCESS | CU_EVENT_DISABLE_TIMING);
        if (r != CUDA_SUCCESS) {
            snprintf(why, why_len, "cuEventCreate: %s", cu_err(b, r));
            return -EIO;
        }
        g->n_pool++;
    }
    CUevent ev = g->pool[g->next_pool];
    CUipcEventHandle h;
    if ((r = b->cu.EventRecord(ev, g->stream)) != CUDA_SUCCESS || (r = b->cu.IpcGetEventHandle(&h, ev)) != CUDA_SUCCESS) {
        /* Not queued and never handed out: the slot stays next (recording
         * it again only moves its latest record later on the stream), so
         * a failure never shortens the reuse distance CU_QCAP relies on. */
        snprintf(why, why_len, "recording the reply event: %s", cu_err(b, r));
        return -EIO;
    }
    *idx = g->next_pool;
    g->next_pool = (g->next_pool + 1) % CU_EVENT_POOL;
    memcpy(event, h.reserved, TRANSFER_EVENT_BYTES);
    return 0;
}

/* Grows the registration's device scratch to `need` bytes. Under g->lock. */
static int scratch(struct transfer_backend *b, struct cu_reg *g, size_t need)
{
    if (need <= g->scratch_cap)
        return 0;
    if (g->d_scratch && g->n_scratch_old == sizeof(g->scratch_old) / sizeof(g->scratch_old[0]))
        return -ENOMEM; /* not reached: sizes at least double */
    if (g->d_scratch)
        g->scratch_old[g->n_scratch_old++] = g->d_scratch;
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

/* The queue slot the next queued piece takes. Under g->lock. */
static unsigned q_tail(const struct cu_reg *g)
{
    return (g->q_head + g->q_n) % CU_QCAP;
}

/* Queues p (stamped now, for the watchdog's stuck test) and wakes the
 * completion thread. Under g->lock, with room in the queue. */
static void q_push(struct cu_reg *g, struct cu_pending p)
{
    p.t_ns = now_ns();
    g->q[q_tail(g)] = p;
    g->q_n++;
    pthread_cond_broadcast(&g->cv);
}

/* Records the reply event after what the stream holds and queues it
 * without a callback (every record is queued: see CU_QCAP). Under g->lock,
 * with room in the queue. */
static int record_event_only(struct transfer_backend *b, struct cu_reg *g, uint8_t event[TRANSFER_EVENT_BYTES],
                             char *why, size_t why_len)
{
    unsigned ev = 0;
    int rc = record_event(b, g, event, &ev, why, why_len);
    if (rc)
        return rc; /* no valid event: the caller drops what it reserved */
    q_push(g, (struct cu_pending){.ev = ev});
    return 0;
}

/* Checks every block id of the copy before anything is queued: a store must
 * not publish bytes it never read; a retrieve writes only real blocks. */
static int check_blocks(struct transfer_backend *b, const struct cu_reg *g, const struct transfer_copy *c, char *why,
                        size_t why_len)
{
    const struct tl_layout *l = &g->lay;
    if (c->chunk_tokens == 0 || c->chunk_tokens % (uint64_t)l->bs) {
        snprintf(why, why_len, "chunk size %u is not a multiple of the block size %lld", c->chunk_tokens,
                 (long long)l->bs);
        return -EINVAL;
    }
    uint64_t bpc = c->chunk_tokens / (uint64_t)l->bs;
    if ((bpc + 1) * sizeof(uint64_t) > CU_TABLE_BYTES) {
        snprintf(why, why_len, "a chunk of %llu blocks (its block table exceeds %u bytes)", (unsigned long long)bpc,
                 CU_TABLE_BYTES);
        return -EINVAL;
    }
    for (size_t k = 0; k < c->n_chunks; k++) {
        uint64_t first = (uint64_t)c->chunk_index[k] * bpc;
        for (uint64_t j = 0; j < bpc; j++) {
            int64_t id = first + j < c->n_blocks ? c->block_ids[first + j] : b->o.null_block_id;
            if (id != b->o.null_block_id && (id < 0 || id >= l->nb)) {
                snprintf(why, why_len, "block id %lld outside the cache's %lld blocks", (long long)id,
                         (long long)l->nb);
                return -EINVAL;
            }
            if (c->store && id == b->o.null_block_id) {
                snprintf(why, why_len, "chunk %lld has a null block: not stored", (long long)c->chunk_index[k]);
                return -EINVAL;
            }
        }
    }
    return 0;
}

/* Where device `dev` sees slice i of L1 (0: not pinned). Asked of the
 * driver once per slice and device, in the caller's context (the device's
 * own), then read lock-free. */
struct slice_q {
    struct transfer_backend *b;
    int dev;
};

static uint64_t slice_dev(void *arg, uint64_t i)
{
    struct slice_q *q = arg;
    struct transfer_backend *b = q->b;
    if (atomic_load_explicit(&b->sl_state[i], memory_order_acquire) != SL_PINNED)
        return 0;
    _Atomic uint64_t *slot = &b->sl_dev[i * (uint64_t)b->ndev + (uint64_t)q->dev];
    uint64_t v = atomic_load_explicit(slot, memory_order_relaxed);
    if (!v) {
        CUdeviceptr d = 0;
        if (b->cu.MemHostGetDevicePointer(&d, (uint8_t *)b->host_base + i * b->slice, 0) != CUDA_SUCCESS || !d)
            return 0;
        v = (uint64_t)d;
        atomic_store_explicit(slot, v, memory_order_relaxed);
    }
    return v;
}

/* Whether the object at host address p (obj bytes) can move without a
 * bounce buffer: DIRECT needs its device address (contiguous over the
 * slices it spans), STAGING only its slices pinned (the DMA takes host
 * addresses). */
static bool obj_pinned(struct transfer_backend *b, const struct cu_reg *g, bool staging, const void *p, uint64_t obj,
                       uint64_t *dev)
{
    /* Pinned slices hold the pages of the generation pinning began in. A
     * copy that passes this check just before a loss writes only objects
     * the loss dropped (never published) or reads their old bytes. */
    if (!b->nslices || pin_stale(b))
        return false;
    uint64_t off = (uint64_t)((const uint8_t *)p - (const uint8_t *)b->host_base);
    if (staging) {
        uint64_t a, z;
        if (!tp_slices_of(b->host_len, b->slice, off, obj, &a, &z))
            return false;
        for (uint64_t i = a; i <= z; i++)
            if (atomic_load_explicit(&b->sl_state[i], memory_order_acquire) != SL_PINNED)
                return false;
        return true;
    }
    struct slice_q q = {b, g->dev};
    return tp_translate((uint64_t)(uintptr_t)b->host_base, b->host_len, b->slice, slice_dev, &q, off, obj, dev);
}

/* The registration's bounce slots (pinned, device-mapped) and, for the
 * staging path, its device staging: n_slots objects each, on first need.
 * Under g->lock. */
static int slots_ready(struct transfer_backend *b, struct cu_reg *g, bool staging, uint64_t obj, char *why,
                       size_t why_len)
{
    if (g->obj_bytes && g->obj_bytes != obj) {
        snprintf(why, why_len, "chunk objects of %llu bytes, the registration's are %llu",
                 (unsigned long long)obj, (unsigned long long)g->obj_bytes);
        return -EINVAL;
    }
    if (!g->obj_bytes) {
        uint64_t n = CU_BOUNCE_BYTES / obj;
        g->n_slots = n < 2 ? 2 : n > CU_BOUNCE_MAX ? CU_BOUNCE_MAX : (unsigned)n;
        g->obj_bytes = obj;
    }
    CUresult r;
    if (staging && !g->d_stage && (r = b->cu.MemAlloc(&g->d_stage, g->n_slots * obj)) != CUDA_SUCCESS) {
        g->d_stage = 0;
        snprintf(why, why_len, "device staging (%llu bytes): %s", (unsigned long long)(g->n_slots * obj),
                 cu_err(b, r));
        return -ENOMEM;
    }
    return 0;
}

/* The registration's bounce slots: pinned, device-mapped host memory, one
 * object each, on first need. A failed allocation keeps the slots made so
 * far (the reaper frees them with the registration: freeing pinned memory
 * waits for the device, never done under g->lock) and the next copy tries
 * again from there. Under g->lock. */
static int bounce_ready(struct transfer_backend *b, struct cu_reg *g, char *why, size_t why_len)
{
    for (unsigned i = g->n_bounce; i < g->n_slots; i++) {
        CUresult r = CUDA_SUCCESS;
        if (!g->bounce_h[i] &&
            (r = b->cu.MemHostAlloc(&g->bounce_h[i], g->obj_bytes, CU_MEMHOSTALLOC_PORTABLE |
                                                                   CU_MEMHOSTALLOC_DEVICEMAP)) != CUDA_SUCCESS)
            g->bounce_h[i] = NULL;
        if (r == CUDA_SUCCESS && (r = b->cu.MemHostGetDevicePointer(&g->bounce_d[i], g->bounce_h[i], 0)) ==
                                     CUDA_SUCCESS && !g->bounce_d[i])
            r = CUDA_ERROR_UNKNOWN;
        if (r != CUDA_SUCCESS) {
            snprintf(why, why_len, "bounce buffers (%u x %llu bytes): %s", g->n_slots,
                     (unsigned long long)g->obj_bytes, cu_err(b, r));
            return -ENOMEM;
        }
        g->n_bounce = i + 1;
    }
    return 0;
}

/* One object's DMA between device staging and host memory, queued on the
 * stream. Inside L1 it is cut at slice boundaries: each slice is its own
 * registration, and a copy is documented as pinned only within one. */
static CUresult stage_dma(struct transfer_backend *b, struct cu_reg *g, bool to_host, void *host, CUdeviceptr d,
                          uint64_t n)
{
    uint8_t *h = host, *lo = b->host_base, *hi = lo + b->host_len;
    while (n) {
        uint64_t part = n;
        if (h >= lo && h < hi) {
            uint64_t off = (uint64_t)(h - lo), end = (off / b->slice + 1) * b->slice;
            if (off + part > end)
                part = end - off;
        }
        CUresult r = to_host ? b->cu.MemcpyDtoHAsync(h, d, part, g->stream)
                             : b->cu.MemcpyHtoDAsync(d, h, part, g->stream);
        if (r != CUDA_SUCCESS)
            return r;
        h += part;
        d += part;
        n -= part;
    }
    return CUDA_SUCCESS;
}

/* One piece of a copy: chunks [k0, k0+n) of c. Object j is in pinned L1
 * (slot[j] < 0, dev[j] its device address for DIRECT) or in bounce slot
 * slot[j]. Queues on the stream: (RETRIEVE, STAGING: one HtoD per object
 * into staging), the block table (written into `tbl`, the pinned table
 * buffer of the queue slot the piece will take, at most CU_TABLE_BYTES),
 * one gather/scatter launch, (STORE, STAGING: one DtoH per object out of
 * staging), and the piece's event. Under g->lock. */
static int run_piece(struct transfer_backend *b, struct cu_reg *g, const struct transfer_copy *c, bool staging,
                     size_t k0, size_t n, const int *slot, const uint64_t *dev, void *tbl,
                     uint8_t event[TRANSFER_EVENT_BYTES], unsigned *ev, char *why, size_t why_len)
{
    const struct tl_layout *l = &g->lay;
    uint64_t bpc = c->chunk_tokens / (uint64_t)l->bs, obj = g->obj_bytes;
    size_t nb = n * bpc;
    size_t bytes = nb * sizeof(int64_t) + n * sizeof(uint64_t);
    uint8_t *host = tbl;
    int64_t *blocks = (int64_t *)host;
    uint64_t *addrs = (uint64_t *)(host + nb * sizeof(int64_t));
    int rc = 0;
    CUresult r = CUDA_SUCCESS;
    for (size_t j = 0; j < n; j++) {
        size_t k = k0 + j;
        uint64_t first = (uint64_t)c->chunk_index[k] * bpc;
        for (uint64_t t = 0; t < bpc; t++)
            blocks[j * bpc + t] = first + t < c->n_blocks ? c->block_ids[first + t] : b->o.null_block_id;
        const void *src = slot[j] >= 0 ? g->bounce_h[slot[j]] : c->chunk_ptr[k];
        if (!c->store && slot[j] >= 0) /* read-locked by the LOOKUP: stable */
            memcpy(g->bounce_h[slot[j]], c->chunk_ptr[k], obj);
        if (staging) {
            addrs[j] = (uint64_t)g->d_stage + j * obj;
            if (!c->store && (r = stage_dma(b, g, false, (void *)src, g->d_stage + j * obj, obj)) != CUDA_SUCCESS)
                goto drv;
        } else {
            addrs[j] = slot[j] >= 0 ? (uint64_t)g->bounce_d[slot[j]] : dev[j];
        }
    }
    /* Ordered before the kernel on the same stream (see cu_register). */
    if ((rc = scratch(b, g, bytes)) ||
        (r = b->cu.MemcpyHtoDAsync(g->d_scratch, host, bytes, g->stream)) != CUDA_SUCCESS) {
        snprintf(why, why_len, "uploading the block table failed");
        rc = rc ? rc : -EIO;
        goto out;
    }
    /* Chunk j of the piece is chunk k0 + j of the range, and a RETRIEVE
     * skips by position in the range. */
    int64_t skip = c->store ? 0 : c->skip_blocks - (int64_t)(k0 * bpc);
    struct tl_xfer x = {
        .lay = *l,
        .nlayers = g->nlayers,
        .nchunks = (uint32_t)n,
        .chunk_tokens = c->chunk_tokens,
        .last_tokens = c->chunk_tokens,
        .null_block = b->o.null_block_id,
        .skip_blocks = skip < 0 ? 0 : skip,
        .layer_base = (const uint64_t *)(uintptr_t)g->d_layers,
        .block_ids = (const int64_t *)(uintptr_t)g->d_scratch,
        .chunk_addr = (const uint64_t *)(uintptr_t)(g->d_scratch + nb * sizeof(int64_t)),
    };
    uint64_t items = (uint64_t)n * tl_items_per_chunk(&x);
    uint64_t grid = (items + 255) / 256;
    if (grid > 65535)
        grid = 65535; /* grid-stride loop covers the rest */
    void *params[] = { &x };
    r = b->cu.LaunchKernel(c->store ? b->devs[g->dev].gather : b->devs[g->dev].scatter, (unsigned)grid, 1, 1, 256, 1,
                           1, 0, g->stream, params, NULL);
    if (r != CUDA_SUCCESS) {
        snprintf(why, why_len, "the %s kernel failed: %s", c->store ? "gather" : "scatter", cu_err(b, r));
        rc = -EIO;
        goto out;
    }
    if (staging && c->store)
        for (size_t j = 0; j < n; j++) {
            void *dst = slot[j] >= 0 ? g->bounce_h[slot[j]] : c->chunk_ptr[k0 + j];
            if ((r = stage_dma(b, g, true, dst, g->d_stage + j * obj, obj)) != CUDA_SUCCESS)
                goto drv;
        }
    rc = record_event(b, g, event, ev, why, why_len);
    goto out;
drv:
    snprintf(why, why_len, "a staging copy failed: %s", cu_err(b, r));
    rc = -EIO;
out:
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
    struct cu_group *grp = NULL;
    int *slot = NULL;
    uint64_t *dev = NULL;
    bool have_ev = false; /* a piece recorded the reply's event */
    bool ev_bad = false;  /* the client's event could not be waited on */
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
    CUresult r = b->cu.CtxSetCurrent(g->ctx);
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
            r = b->cu.StreamWaitEvent(g->stream, cev, 0);
            b->cu.EventDestroy(cev); /* the wait is queued; the handle may go */
        }
        /* Without the wait a STORE would read blocks the worker is still
         * writing (and publish them), a RETRIEVE write blocks still in use:
         * nothing is copied, the reply says false. */
        if (r != CUDA_SUCCESS) {
            snprintf(why, why_len, "the worker's event cannot be waited on (%s): nothing copied", cu_err(b, r));
            ev_bad = true;
        }
    } else if (c->client_event_len) {
        snprintf(why, why_len, "a %u-byte event handle (isolated IPC) is not served; run the client with "
                               "lmcache.mp.isolated_ipc=false", (unsigned)c->client_event_len);
        rc = -ENOTSUP;
        goto out;
    }
    bool staging = b->o.copy_path == TRANSFER_PATH_STAGING;
    uint64_t obj = c->n_chunks ? tl_chunk_bytes(&g->lay, g->nlayers, c->chunk_tokens) : 0;
    int crc = ev_bad ? -EIO : c->n_chunks ? check_blocks(b, g, c, why, why_len) : -ENODATA;
    if (!crc && (crc = slots_ready(b, g, staging, obj, why, why_len)) == 0 &&
        (!(dev = malloc(c->n_chunks * sizeof(*dev))) || !(slot = malloc(c->n_chunks * sizeof(*slot))) ||
         !(grp = calloc(1, sizeof(*grp)))))
        crc = -ENOMEM;
    if (crc) { /* nothing to move: the reply's event still follows the client's */
        rc = record_event_only(b, g, event, why, why_len);
        goto out;
    }
    *grp = (struct cu_group){c->done, c->done_arg, 0, true, false};
    /* Pieces of at most n_slots objects when staging (the staging buffer's
     * size; reused in stream order), as many bounced objects as there are
     * free bounce slots, and as many objects as a block table of
     * CU_TABLE_BYTES holds. Each piece is one queue entry. */
    size_t max_tbl = CU_TABLE_BYTES / ((c->chunk_tokens / (uint64_t)g->lay.bs + 1) * sizeof(uint64_t));
    for (size_t k = 0; k < c->n_chunks;) {
        size_t n = 0;
        unsigned nbounce = 0;
        struct cu_pending p = {.grp = grp, .store = c->store};
        while (!g->stop && k + n < c->n_chunks && (!staging || n < g->n_slots) && n < max_tbl) {
            if (obj_pinned(b, g, staging, c->chunk_ptr[k + n], obj, &dev[n])) {
                slot[n] = -1;
                n++;
                continue;
            }
            if (nbounce == g->n_slots)
                break;
            if ((rc = bounce_ready(b, g, why, why_len)))
                break;
            unsigned free_slot = CU_BOUNCE_MAX;
            for (unsigned i = 0; i < g->n_slots && free_slot == CU_BOUNCE_MAX; i++)
                if (!(g->slot_busy & (1u << i)))
                    free_slot = i;
            if (free_slot == CU_BOUNCE_MAX) {
                if (n)
                    break; /* queue what we have; its completion frees slots */
                if (g->stuck) { /* the slots are held behind a copy stuck on the worker's event */
                    snprintf(why, why_len, "its bounce buffers are held behind a copy stuck on the worker's event "
                                           "for over %d s", b->o.event_timeout_s);
                    rc = -EBUSY;
                    break;
                }
                pthread_cond_wait(&g->cv, &g->lock);
                continue; /* and look again: pinning may have caught up meanwhile */
            }
            g->slot_busy |= 1u << free_slot;
            slot[n] = (int)free_slot;
            p.slot[nbounce] = (uint8_t)free_slot;
            p.l1[nbounce++] = c->chunk_ptr[k + n];
            n++;
        }
        /* room in the queue for this piece (a slot wait may have let it fill) */
        while (!rc && g->q_n >= TRANSFER_QUEUE_DEPTH && !g->stop && !g->stuck)
            pthread_cond_wait(&g->cv, &g->lock);
        if (!rc && g->stop) {
            snprintf(why, why_len, "instance unregistered meanwhile");
            rc = -ENOENT;
        } else if (!rc && g->q_n >= TRANSFER_QUEUE_DEPTH) {
            snprintf(why, why_len, "its copy queue is full behind a copy stuck on the worker's event for over %d s",
                     b->o.event_timeout_s);
            rc = -EBUSY;
        }
        /* The piece's block table: the pinned buffer of the queue slot it
         * takes (free: its last piece left the queue after completing). */
        unsigned qi = q_tail(g);
        if (!rc && !g->tbl_h[qi] &&
            (r = b->cu.MemHostAlloc(&g->tbl_h[qi], CU_TABLE_BYTES, CU_MEMHOSTALLOC_PORTABLE)) != CUDA_SUCCESS) {
            g->tbl_h[qi] = NULL;
            snprintf(why, why_len, "a pinned block table (%u bytes): %s", CU_TABLE_BYTES, cu_err(b, r));
            rc = -ENOMEM;
        }
        bool ran = !rc;
        if (!rc)
            rc = run_piece(b, g, c, staging, k, n, slot, dev, g->tbl_h[qi], event, &p.ev, why, why_len);
        if (rc && ran) { /* part of it may be on the stream: queued as a fence, holding its slots */
            p.fence = true;
            p.nb = nbounce;
            grp->pending++;
            q_push(g, p);
            break;
        }
        if (rc) {
            for (unsigned i = 0; i < nbounce; i++)
                g->slot_busy &= ~(1u << p.slot[i]);
            break;
        }
        have_ev = true;
        p.nb = nbounce;
        atomic_fetch_add(staging ? &b->obj_staged : &b->obj_direct, n - nbounce);
        atomic_fetch_add(&b->obj_bounced, nbounce);
        grp->pending++;
        q_push(g, p);
        k += n;
    }
    if (grp->pending) {
        /* Queued pieces report the copy; a piece that failed to queue makes
         * it a failure (a STORE is dropped, a RETRIEVE's blocks are
         * undefined), but the event recorded last is valid. */
        grp->ok = grp->ok && !rc;
        grp->sealed = true;
        grp = NULL;
        *copied = true;
        if (rc)
            log_warn("instance %lld: part of a copy could not be queued: %s", (long long)c->instance, why);
        rc = 0;
        if (!have_ev) /* only a fence queued: the reply's event still follows everything */
            rc = g->q_n < CU_QCAP - 1 ? record_event_only(b, g, event, why, why_len) : -EBUSY;
    } else if (rc && rc != -ENOENT && rc != -EBUSY) {
        while (g->q_n >= CU_QCAP - 1 && !g->stop && !g->stuck)
            pthread_cond_wait(&g->cv, &g->lock);
        int rc2 = g->q_n < CU_QCAP - 1 ? record_event_only(b, g, event, why, why_len) : rc;
        rc = rc2 ? rc2 : 0; /* not queued: nothing moved, the reply says so */
    }
out:
    free(grp);
    free(dev);
    free(slot);
    g->users--;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->lock);
    return rc;
}

static void cu_stats(struct transfer_backend *b, struct transfer_stats *o)
{
    memset(o, 0, sizeof(*o));
    o->copy_path = b->o.copy_path == TRANSFER_PATH_STAGING ? "staging" : "direct";
    o->host_bytes = b->host_len;
    o->slice_bytes = b->slice;
    o->slices = b->nslices;
    o->slices_pinned = atomic_load(&b->n_pinned);
    o->slices_failed = atomic_load(&b->n_failed);
    o->pinned_bytes = atomic_load(&b->pinned_bytes);
    o->pinning = atomic_load(&b->pin_running);
    o->pin_stopped = atomic_load(&b->pin_gave_up);
    o->obj_direct = atomic_load(&b->obj_direct);
    o->obj_staged = atomic_load(&b->obj_staged);
    o->obj_bounced = atomic_load(&b->obj_bounced);
}
/* At a stop with copies left: g stays in b->all (counted abandoned) and is
 * never freed; its completion thread, with copies queued, goes on waiting
 * (detached: it stops at the first callback, close() having passed). */
static void cu_abandon(struct cu_reg *g)
{
    pthread_mutex_lock(&g->lock);
    bool idle = !g->q_n;
    if (!idle)
        g->detached = true;
    pthread_mutex_unlock(&g->lock);
    if (idle && g->thr_started) { /* stopped with nothing queued: it ends now */
        pthread_join(g->thr, NULL);
        g->thr_started = false;
    }
}

/* Shutdown grace for queued copies: short, as a stop must be bounded. */
#define CU_CLOSE_GRACE_NS 2000000000ull

static void cu_close(struct transfer_backend *b)
{
    if (!b)
        return;
    uint64_t grace = (uint64_t)(b->o.event_timeout_s > 0 ? b->o.event_timeout_s : 60) * 1000000000ull;
    uint64_t deadline = now_ns() + (grace < CU_CLOSE_GRACE_NS ? grace : CU_CLOSE_GRACE_NS);
    /* Every registration out of the table; each copy gets the grace. */
    pthread_mutex_lock(&b->lock);
    struct cu_reg **gs = b->regs;
    size_t n = b->n_regs;
    b->regs = NULL;
    b->n_regs = b->cap_regs = 0;
    pthread_mutex_unlock(&b->lock);
    for (size_t i = 0; i < n; i++) {
        struct cu_reg *g = gs[i];
        pthread_mutex_lock(&g->lock);
        reg_stop_locked(g, deadline);
        pthread_mutex_unlock(&g->lock);
    }
    /* Detached registrations get the rest of the grace, then no callback
     * runs any more (the engine goes next). */
    pthread_mutex_lock(&b->all_mu);
    size_t in_all = 0;
    for (uint64_t now = now_ns();; now = now_ns()) {
        in_all = 0;
        for (struct cu_reg *g = b->all; g; g = g->all_next)
            in_all++;
        if (in_all <= n || now >= deadline)
            break;
        struct timespec ts;
        deadline_ts(deadline, &ts);
        pthread_cond_timedwait(&b->all_cv, &b->all_mu, &ts);
    }
    pthread_mutex_unlock(&b->all_mu);
    bool busy = in_all > n; /* detached ones still waiting */
    for (size_t i = 0; i < n && !busy; i++) {
        pthread_mutex_lock(&gs[i]->lock);
        busy = gs[i]->q_n > 0;
        pthread_mutex_unlock(&gs[i]->lock);
    }
    /* Freeing device memory waits for the device in practice: with a copy
     * still waiting on a worker's event, no registration is handed to the
     * reaper (all are abandoned below), or the stop would wait for that
     * event. */
    for (size_t i = 0; i < n; i++)
        if (!busy)
            reg_retire(b, gs[i], 0); /* queue empty: to the reaper */
        else
            cu_abandon(gs[i]);
    free(gs);
    /* The reaper frees what was retired (here, and by earlier UNREGISTERs
     * and reaps), each free waiting for the device: for a stuck stream
     * (busy), only until the grace ends; otherwise every stream is idle
     * and a grace of its own bounds it. What it has not freed then is
     * abandoned with the rest: nothing more is freed once `closing` is
     * set. */
    pthread_mutex_lock(&b->all_mu);
    uint64_t free_by = busy ? deadline : now_ns() + CU_CLOSE_GRACE_NS;
    for (uint64_t now = now_ns(); b->dying && now < free_by; now = now_ns()) {
        struct timespec ts;
        deadline_ts(free_by, &ts);
        pthread_cond_timedwait(&b->all_cv, &b->all_mu, &ts);
    }
    b->closing = true;
    b->wd_stop = true;
    b->rp_stop = true;
    b->rp_abandoned = b->dying > 0; /* still freeing: it detaches itself, b stays */
    bool rp_join = !b->rp_abandoned;
    pthread_cond_broadcast(&b->all_cv);
    pthread_cond_signal(&b->rp_cv);
    while (b->cb_active)
        pthread_cond_wait(&b->all_cv, &b->all_mu);
    size_t abandoned = b->dying;
    for (struct cu_reg *g = b->all; g; g = g->all_next)
        abandoned++;
    pthread_mutex_unlock(&b->all_mu);
    if (b->wd_started)
        pthread_join(b->wd, NULL);
    if (b->rp_started && rp_join)
        pthread_join(b->rp, NULL);
    pin_stop(b, !abandoned);
    if (abandoned) {
        /* A GPU stream wait cannot be cancelled: their DMA may still land
         * in their mappings and in pinned L1, so neither is released, and
         * the backend and the driver stay (the process is exiting), as
         * does the reaper if a free of its still waits for the device. */
        log_warn("GPU path: %zu registrations are left open, as copies still wait on their workers' events; lmcd "
                 "stops without waiting for them (their L1 memory is never reused: the process exits)", abandoned);
        return;
    }
    pthread_mutex_lock(&b->lock);
    /* The slices were unpinned above (pin_stop sets the context that
     * pinned them: this thread, the one that stops the server, may never
     * have had one). */
    for (int i = 0; i < b->ndev; i++)
        if (b->devs[i].ctx)
            b->cu.PrimaryCtxRelease(b->devs[i].dev);
    pthread_mutex_unlock(&b->lock);
    pthread_mutex_destroy(&b->lock);
    pthread_mutex_destroy(&b->pin_mu);
    pthread_cond_destroy(&b->pin_cv);
    free((void *)b->sl_state);
    free((void *)b->sl_dev);
    pthread_mutex_destroy(&b->all_mu);
    pthread_cond_destroy(&b->all_cv);
    pthread_cond_destroy(&b->rp_cv);
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
    .stats = cu_stats,
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
