/*
 * pickle: a bounded reader for the ext-1 device IPC descriptor (spec 10).
 *
 * The ext-1 payload of REGISTER_KV_CACHE is `pickle.dumps(wrapper)` of an
 * LMCache CudaIPCWrapper / RawCudaIPCWrapper / DeviceIPCWrapper (any module
 * under `lmcache.`). This is not a general unpickler: it executes nothing.
 * It accepts exactly the opcodes such an object produces with protocols 2-5
 * (spec 10's set, plus the protocol 2/3 spellings GLOBAL, BINPUT,
 * LONG_BINPUT, and REDUCE of exactly `_codecs.encode(str, "latin1")` and
 * `bytes()`, which is how protocol 2 writes bytes), builds a small value
 * tree in fixed-size pools and extracts the wrapper's state. Any other
 * opcode, callable or shape is rejected with a distinct error.
 *
 * Limits: PICKLE_MAX_VALUES values, PICKLE_MAX_STACK stack entries,
 * PICKLE_MAX_MEMO memo slots, PICKLE_MAX_DIMS dimensions; lengths are
 * checked against the payload. Any input is safe (fuzzed: tests/fuzz/).
 *
 * Ownership: str/bytes views in the result point into the caller's payload,
 * except bytes that protocol 2 encodes as latin-1 text, which are decoded
 * into storage inside struct pickle_ipc itself. Keep the payload (and the
 * struct) alive while using the views. Any thread; no global state.
 */
#ifndef LMCD_WIRE_PICKLE_H
#define LMCD_WIRE_PICKLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "wire/wire.h"

#define PICKLE_MAX_VALUES 1024
#define PICKLE_MAX_STACK 256
#define PICKLE_MAX_MEMO 256
#define PICKLE_MAX_DIMS 8
#define PICKLE_LATIN1_STORE 1024

#define PICKLE_ERRORS(X)                                                               \
    X(EPROTO, 2100, "pickle protocol is not 2..5")                                     \
    X(EOPCODE, 2101, "pickle opcode outside the descriptor's set")                     \
    X(ETRUNC, 2102, "pickle truncated")                                                \
    X(ELIMIT, 2103, "pickle exceeds a reader limit (values, stack, memo, dims)")       \
    X(ESTACK, 2104, "pickle stack underflow or operand of the wrong kind")             \
    X(ECALL, 2105, "pickle calls a global that is not allowed")                        \
    X(ECLASS, 2106, "pickled object is not an lmcache device IPC wrapper")             \
    X(EFIELD, 2107, "wrapper state field missing or of the wrong type")                \
    X(ENOSTOP, 2108, "pickle has no STOP or bytes after it")

#define PICKLE_ERR_ENUM_(sym, val, msg) PICKLE_##sym = val,
enum pickle_err { PICKLE_ERRORS(PICKLE_ERR_ENUM_) };
#undef PICKLE_ERR_ENUM_

const char *pickle_strerror(int rc);

enum pickle_wrapper {
    PICKLE_CUDA_IPC,   /* CudaIPCWrapper */
    PICKLE_RAW_CUDA,   /* RawCudaIPCWrapper (TRT-LLM): handle None */
    PICKLE_DEVICE_IPC, /* DeviceIPCWrapper */
};

struct pickle_ipc {
    enum pickle_wrapper kind;
    struct wire_str module; /* e.g. "lmcache.v1.multiprocess.custom_types" */
    struct wire_str cls;    /* "CudaIPCWrapper", ... */

    /* handle: the 8-tuple of UntypedStorage._share_cuda_(), or None */
    bool has_handle;
    int64_t device_index;
    struct wire_bin storage_handle;
    int64_t storage_size_bytes;
    int64_t storage_offset_bytes;
    struct wire_bin ref_counter_handle;
    int64_t ref_counter_offset;
    struct wire_bin event_handle;
    bool event_sync_required;

    struct wire_str dtype; /* the torch attribute name, e.g. "bfloat16" */
    uint32_t ndim;
    int64_t shape[PICKLE_MAX_DIMS];
    uint32_t nstride;
    int64_t stride[PICKLE_MAX_DIMS];
    int64_t storage_offset; /* elements */
    struct wire_str device_uuid;

    /* RawCudaIPCWrapper only */
    bool has_ipc_handle_reserved;
    struct wire_bin ipc_handle_reserved;
    bool has_nbytes;
    int64_t nbytes;

    /* private: latin-1 bytes decoded from protocol 2 text */
    uint8_t store_[PICKLE_LATIN1_STORE];
    size_t store_used_;
};

/* Parses one descriptor. 0, -PICKLE_E*, or -ENOMEM. */
int pickle_parse_ipc(const void *data, size_t len, struct pickle_ipc *out);

#endif
