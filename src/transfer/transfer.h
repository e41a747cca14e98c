/*
 * transfer: backends that move KV bytes between a worker's device memory
 * and L1 for the LMCache-driven path (REGISTER_KV_CACHE, STORE, RETRIEVE).
 *
 * One backend today: CUDA (transfer_cuda.c), built only when nvcc was found
 * at build time (LMCD_CUDA=1; its kernels are embedded as a fatbin) and
 * usable only when libcuda.so.1 and a GPU are present at run time (the
 * driver API is loaded with dlopen; lmcd never links libcudart/libcuda).
 * Without it the server answers GPU requests as spec 9.3 says for a server
 * without CUDA. The engine and L1 know nothing of this module.
 *
 * STATUS: written against the driver API, compiled, and run end to end
 * against an emulated driver (tests/gpu/fakecuda); NOTHING HERE HAS RUN ON
 * A GPU. A copy is queued on the registration's stream and the call returns
 * at once with the reply event; each registration's completion thread
 * waits for its copies in order and reports each through the caller's
 * `done` callback. L1 is pinned in slices by a thread of the backend,
 * started at the first registration in that device's context, never
 * blocking a request (transfer_pin.h); objects whose extent is not pinned
 * yet go through pinned bounce buffers. See docs/gpu.md.
 *
 * Threads: every call may come from any pool thread; the backend locks its
 * own registration table. `done` callbacks run on a completion thread of
 * the backend, never the caller's. Errors: 0 / -errno; `why` gets one
 * line.
 */
#ifndef LMCD_TRANSFER_TRANSFER_H
#define LMCD_TRANSFER_TRANSFER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "wire/wire.h"

struct transfer_backend;

/* How a STORE/RETRIEVE moves an object between the worker's blocks and
 * pinned L1 (--gpu-copy-path, docs/gpu.md): DIRECT, the gather/scatter
 * kernel reads and writes device-mapped L1 itself; STAGING, the kernel
 * works on a device staging buffer and the DMA engine moves each object
 * (one copy per object). AUTO is DIRECT until a GPU run settles it.
 * Objects in L1 not pinned yet go through a pinned bounce buffer in
 * either mode. */
enum transfer_copy_path { TRANSFER_PATH_AUTO = 0, TRANSFER_PATH_DIRECT, TRANSFER_PATH_STAGING };

struct transfer_opts {
    int64_t null_block_id;
    bool isolated_ipc; /* client's lmcache.mp.isolated_ipc: refused */
    /* A queued copy not completed this long after it was queued (it waits
     * on a client event that never completes: a GPU stream wait cannot be
     * cancelled) is reported once (log line, metric) and from then on its
     * registration is "stuck": unregister and close stop waiting for it. */
    int event_timeout_s;
    enum transfer_copy_path copy_path;
    /* Whether the segment's pages in [off, off+len) exist (a lazy L1
     * commits them as it fills): only those are pinned, since pinning
     * faults every page in. NULL: all exist. Called from the pinning
     * thread; must take no lock a request holds. */
    bool (*host_backed)(void *arg, uint64_t off, uint64_t len);
    /* The segment's generation: it changes when the segment was truncated
     * by another process and restored in place with new pages, which the
     * slices pinned before do not hold (copies then use bounce buffers).
     * NULL: never. Lock-free, called per copy. */
    uint64_t (*host_gen)(void *arg);
    void *host_arg;
};

/* What /status and /metrics show of the backend. */
struct transfer_stats {
    const char *copy_path; /* "direct" or "staging" */
    uint64_t host_bytes, slice_bytes, slices, slices_pinned, slices_failed, pinned_bytes;
    bool pinning;          /* the pinning thread runs (slices left that are not committed yet) */
    bool pin_stopped;      /* pinning gave up (a memlock limit): the rest is served by bounce buffers */
    uint64_t obj_direct;   /* chunk objects moved by the kernel straight to/from pinned L1 */
    uint64_t obj_staged;   /* ... through device staging and one DMA per object */
    uint64_t obj_bounced;  /* ... through a pinned bounce buffer (their L1 extent was not pinned) */
};

/* The event handle every STORE/RETRIEVE reply carries (64 bytes). */
#define TRANSFER_EVENT_BYTES 64

/* What a registration looks like to the engine (its engine-driven twin:
 * same chunk object layout, spec 7.4). */
struct transfer_geom {
    int64_t block_size;
    int64_t num_layers;
    int64_t hidden; /* NH*HS, or HS for MLA */
    bool mla;
    char dtype[24]; /* torch name as sent, e.g. "bfloat16", "uint8" */
};

/* One STORE (gather into L1) or RETRIEVE (scatter from L1). */
struct transfer_copy {
    int64_t instance;
    bool store;
    const int64_t *block_ids; /* the range's blocks, chunk after chunk */
    size_t n_blocks;
    uint32_t chunk_tokens;
    const int64_t *chunk_index; /* [n_chunks] which chunk of the range each object is */
    void *const *chunk_ptr;     /* [n_chunks] the objects in L1 (host addresses) */
    size_t n_chunks;            /* 0: only wait on the client and record the event */
    int64_t skip_blocks;        /* RETRIEVE: leading blocks of the range left alone */
    const uint8_t *client_event;
    size_t client_event_len;
    /* Called once, on the registration's completion thread, when a queued
     * copy completed (ok) or failed. Required when n_chunks > 0. */
    void (*done)(void *arg, bool ok);
    void *done_arg;
};

/* Copies one registration may have queued and not yet completed; copy()
 * blocks past it (back-pressure on the calling pool thread). */
#define TRANSFER_QUEUE_DEPTH 32

struct transfer_ops {
    const char *name;
    /* -ENODEV (no driver / no GPU), -ENOTSUP (a mode not served); why says
     * which. Creates no GPU context. host_base/host_len: the L1 segment,
     * pinned (portable, device-mapped) in the background from the first
     * registration on, as far as it is committed (o->host_backed). */
    int (*open)(const struct transfer_opts *o, void *host_base, size_t host_len, struct transfer_backend **out,
                char *why, size_t why_len);
    /* Replaces any earlier registration of the instance, which is closed
     * as unregister with `wait` closes it (its driver resources are freed
     * later, by the backend, so a handle it still maps may be reopened
     * here: the driver counts a reference). */
    int (*register_kv)(struct transfer_backend *b, int64_t instance, const struct wire_register *reg,
                       struct transfer_geom *geom, char *why, size_t why_len);
    /* Takes the instance's registration out at once (later copies get
     * -ENOENT). With `wait`, waits for its queued copies (their `done`
     * callbacks run first) unless they are stuck past event_timeout_s; then
     * (or at once without `wait`) a registration with copies left is
     * detached: its mappings, stream and events stay open until its last
     * copy completed, its `done` callbacks still run, and it is closed
     * then. The driver resources are freed by a thread of the backend (the
     * frees wait for the device, so for any other registration's stuck
     * copy), never by the caller: this call waits for nothing but the
     * instance's own copies (with `wait`), and without `wait` it never
     * blocks on the GPU at all (the backend's locks only, none held across
     * a driver call): a reaper may call it under its own lock. */
    void (*unregister)(struct transfer_backend *b, int64_t instance, bool wait);
    /* The geometry of a registered instance; -ENOENT when not registered. */
    int (*geometry)(struct transfer_backend *b, int64_t instance, struct transfer_geom *out);
    /* Queues, on the instance's stream: a wait on the client's event, the
     * copy, and an interprocess event (filled into `event`) recorded after
     * it. 0: the event is valid; *copied says whether a copy was queued:
     * then c->done runs exactly once, later, with whether the bytes moved.
     * Not queued (a block id outside the cache, a null block in a stored chunk,
     * n_chunks 0): done never runs and nothing may be published. -ENOENT:
     * instance not registered; other errors: no valid event (with *copied
     * still set when part of a copy was queued: done runs then too).
     * *copied with `why` set (and 0): only part of it was queued, the
     * rest never moves (done reports a failure). */
    int (*copy)(struct transfer_backend *b, const struct transfer_copy *c, uint8_t event[TRANSFER_EVENT_BYTES],
                bool *copied, char *why, size_t why_len);
    /* Counters and pinning progress; any thread, takes no lock. */
    void (*stats)(struct transfer_backend *b, struct transfer_stats *out);
    /* Unregisters everything, waiting a short grace (at most 2 s and
     * event_timeout_s) for queued copies; registrations whose copies still
     * wait then are abandoned with one log line: their `done` callbacks
     * never run, and the backend is left allocated (and the driver loaded)
     * so a late completion touches nothing freed. Registrations retired
     * earlier whose freeing still waits for the device when the grace
     * ends are abandoned the same way. With nothing left waiting, the
     * frees get a grace of their own (2 s; the device is idle then).
     * Bounded in time. */
    void (*close)(struct transfer_backend *b);
};

/* The CUDA backend, or NULL in a build without nvcc. */
const struct transfer_ops *transfer_cuda(void);

/* One line for `lmcd --version`: which GPU backend this binary carries. */
const char *transfer_build_desc(void);

#endif
