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
 * STATUS: registration (wrapper decoding, device mapping, IPC mapping,
 * layout detection, refusals) and the STORE/RETRIEVE event protocol are
 * written against the driver API; the copy path into L1 is NOT wired yet:
 * STORE and RETRIEVE answer `(valid interprocess event, false)` (store
 * skipped; retrieve fails so the worker recomputes), the spec 9.3 answer of
 * a CUDA server that cannot serve the request. None of it has run on a GPU.
 *
 * Threads: every call may come from any pool thread; the backend locks its
 * own registration table. Errors: 0 / -errno; `why` gets one line.
 */
#ifndef LMCD_TRANSFER_TRANSFER_H
#define LMCD_TRANSFER_TRANSFER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "wire/wire.h"

struct transfer_backend;

struct transfer_opts {
    int64_t null_block_id;
    bool isolated_ipc; /* client's lmcache.mp.isolated_ipc: refused */
};

/* The event handle every STORE/RETRIEVE reply carries (64 bytes). */
#define TRANSFER_EVENT_BYTES 64

struct transfer_ops {
    const char *name;
    /* -ENODEV (no driver / no GPU), -ENOTSUP (a mode not served); why says
     * which. Creates no GPU context. */
    int (*open)(const struct transfer_opts *o, struct transfer_backend **out, char *why, size_t why_len);
    /* Replaces any earlier registration of the instance. */
    int (*register_kv)(struct transfer_backend *b, int64_t instance, const struct wire_register *reg,
                       char *why, size_t why_len);
    void (*unregister)(struct transfer_backend *b, int64_t instance);
    /* STORE / RETRIEVE: fills `event` with an interprocess event handle
     * recorded after the work (if any) and sets *ok. -ENOENT when the
     * instance is not registered (the caller then does not reply). */
    int (*transfer)(struct transfer_backend *b, int64_t instance, bool store, const struct wire_req *req,
                    uint8_t event[TRANSFER_EVENT_BYTES], bool *ok, char *why, size_t why_len);
    void (*close)(struct transfer_backend *b);
};

/* The CUDA backend, or NULL in a build without nvcc. */
const struct transfer_ops *transfer_cuda(void);

/* One line for `lmcd --version`: which GPU backend this binary carries. */
const char *transfer_build_desc(void);

#endif
