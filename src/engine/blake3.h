/*
 * blake3: the BLAKE3 hash (hash, keyed_hash and derive_key modes, any output
 * length), written from the BLAKE3 specification.
 *
 * Incremental: blake3_init*() then blake3_update() any number of times, then
 * blake3_finalize() (which leaves the hasher unchanged, so it may be called
 * again or followed by more updates). The caller owns struct blake3_hasher; it
 * holds no pointers and may live on the stack (about 1.8 KB) or be copied.
 *
 * Code paths: portable C, and SSE4.1 (4 lanes) / AVX2 (8 lanes) versions of
 * "hash many chunks at once", used by blake3_update() for long inputs and by
 * blake3_hash_batch() for many equal-length messages. The path is chosen once
 * from the CPU, or from $LMCD_BLAKE3_PATH (portable|sse41|avx2) read on first
 * use; blake3_set_path() overrides it (tests, benchmarks). Every path gives
 * the same bytes.
 *
 * Separately, the one-block compression that single inputs go through (a
 * session's token chain, the chunk in progress, parents, root output):
 * portable C, or SSE4.1 with the state in four row registers. Which is
 * faster depends on the CPU, so the first use (hasher_init() at start-up)
 * times a short chain of each, a fraction of a millisecond, and keeps the
 * faster; $LMCD_BLAKE3_ONE (portable|sse41) skips the timing, and
 * blake3_set_one() overrides both. Both give the same bytes.
 *
 * Threads: a hasher belongs to one thread at a time; all functions are
 * reentrant. blake3_set_path() and blake3_set_one() may be called from any
 * thread, but hashing in flight on other threads may run on either path
 * while they switch.
 *
 * Left out: multithreaded hashing of one input, AVX-512 and NEON paths,
 * seeking in the extended output.
 */
#ifndef LMCD_ENGINE_BLAKE3_H
#define LMCD_ENGINE_BLAKE3_H

#include <stddef.h>
#include <stdint.h>

#define BLAKE3_OUT_LEN 32
#define BLAKE3_KEY_LEN 32
#define BLAKE3_BLOCK_LEN 64
#define BLAKE3_CHUNK_LEN 1024
/* Enough chaining values for 2^54 chunks, BLAKE3's input length limit. */
#define BLAKE3_MAX_DEPTH 54

struct blake3_hasher {
    uint32_t key[8];
    uint32_t cv[8];           /* chaining value of the chunk in progress */
    uint64_t chunk_counter;   /* index of the chunk in progress */
    uint8_t buf[BLAKE3_BLOCK_LEN];
    uint8_t buf_len;
    uint8_t blocks_compressed; /* in the chunk in progress */
    uint8_t flags;            /* mode flags: 0, KEYED_HASH or DERIVE_KEY_* */
    uint8_t cv_stack_len;
    uint8_t cv_stack[BLAKE3_MAX_DEPTH * BLAKE3_OUT_LEN];
};

enum blake3_path { BLAKE3_PATH_PORTABLE = 0, BLAKE3_PATH_SSE41 = 1, BLAKE3_PATH_AVX2 = 2 };

void blake3_init(struct blake3_hasher *h);
void blake3_init_keyed(struct blake3_hasher *h, const uint8_t key[BLAKE3_KEY_LEN]);
/* derive_key mode: context is a NUL-terminated, hard-coded, globally unique string. */
void blake3_init_derive_key(struct blake3_hasher *h, const char *context);
void blake3_update(struct blake3_hasher *h, const void *data, size_t len);
/* Writes out_len bytes of output (any length; the first 32 are the digest). */
void blake3_finalize(const struct blake3_hasher *h, uint8_t *out, size_t out_len);

/* One-shot 32-byte digest. */
void blake3_hash(const void *data, size_t len, uint8_t out[BLAKE3_OUT_LEN]);

/* Hashes n messages of the same length len (hash mode, 32-byte digests, out[i]
 * for msgs[i]) across SIMD lanes: one message per lane, so it pays even when
 * each message is only one or two chunks long. */
void blake3_hash_batch(const uint8_t *const *msgs, size_t n, size_t len,
                       uint8_t (*out)[BLAKE3_OUT_LEN]);

/* 1 when this CPU (and build) can run the path, else 0. */
int blake3_path_supported(enum blake3_path p);
/* Forces a path: 0, or -ENOTSUP when the CPU lacks it, -EINVAL when unknown. */
int blake3_set_path(enum blake3_path p);
enum blake3_path blake3_get_path(void);
const char *blake3_path_name(enum blake3_path p);

enum blake3_one { BLAKE3_ONE_PORTABLE = 0, BLAKE3_ONE_SSE41 = 1 };

/* 1 when this CPU (and build) can run the one-block compression o, else 0. */
int blake3_one_supported(enum blake3_one o);
/* Forces one: 0, or -ENOTSUP when the CPU lacks it, -EINVAL when unknown. */
int blake3_set_one(enum blake3_one o);
/* The one in use; the first call picks it with blake3_one_detect(). */
enum blake3_one blake3_get_one(void);
const char *blake3_one_name(enum blake3_one o);
/* $LMCD_BLAKE3_ONE when it names a supported one (ns[] = 0), else
 * blake3_one_calibrate(ns). Sets nothing. */
enum blake3_one blake3_one_detect(double ns[2]);
/* Times a chain of compressions with each supported one, best of a few runs,
 * and returns the faster; ns[o] = nanoseconds per compression (0 where o is
 * unsupported). Sets nothing. */
enum blake3_one blake3_one_calibrate(double ns[2]);
/* What blake3_get_one()'s first call measured, ns per compression (portable,
 * sse41); zeros when it did not time them (environment, or set first). */
void blake3_one_measured(double ns[2]);

#endif
