/*
 * mp: the bounded msgpack reader and the writer the wire codec is built on
 * (internal to src/wire/).
 *
 * Why not msgpack-c's unpacker: it allocates an array's element storage from
 * the count in the header before reading any element, copies nothing we
 * could borrow without a zone, and offers no depth limit. This reader is a
 * cursor over one frame: it allocates nothing, returns views into the frame,
 * and checks every length/count against the bytes left (an element needs at
 * least one byte, a map entry two) before the caller acts on it.
 *
 * mp_validate() walks a whole document first (depth, counts, reserved bytes,
 * ext codes, trailing bytes); the typed decoders then read with mp_next(),
 * which still bounds-checks every access, so a bug in a decoder cannot turn
 * into an out-of-bounds read. mp_validate_cap() also decodes one long int
 * list (a key's token ids) in the same walk, so that list is read once, not
 * twice (struct mp_cap).
 *
 * The writer appends the smallest encoding of each value (msgspec's choice)
 * to a struct wire_buf; allocation failure is sticky in wire_buf.err.
 */
#ifndef LMCD_WIRE_MP_H
#define LMCD_WIRE_MP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "wire/wire.h"

enum mp_type { MP_NIL, MP_BOOL, MP_INT, MP_FLOAT, MP_STR, MP_BIN, MP_ARRAY, MP_MAP, MP_EXT };

struct mp_obj {
    enum mp_type type;
    bool neg;         /* MP_INT: value is negative (then i holds it) */
    bool b;           /* MP_BOOL */
    int64_t i;        /* MP_INT: the value when it fits int64 */
    uint64_t u;       /* MP_INT: the value when non-negative */
    double f;         /* MP_FLOAT */
    const uint8_t *p; /* MP_STR / MP_BIN / MP_EXT payload */
    uint32_t n;       /* byte length (STR/BIN/EXT) or element count (ARRAY/MAP) */
    int8_t ext;       /* MP_EXT type code */
    const uint8_t *start; /* first byte of this value's header */
};

struct mp_rd {
    const uint8_t *p;
    const uint8_t *end;
};

static inline void mp_rd_init(struct mp_rd *r, const void *data, size_t len)
{
    r->p = data;
    r->end = r->p + len;
}
static inline size_t mp_left(const struct mp_rd *r) { return (size_t)(r->end - r->p); }

/* Reads one value's header (scalars whole; for STR/BIN/EXT the payload is
 * consumed and viewed; for ARRAY/MAP only the count, the elements follow).
 * 0 or -WIRE_ETRUNC / -WIRE_EOVERSIZE / -WIRE_EMSGPACK. */
int mp_next(struct mp_rd *r, struct mp_obj *o);
/* Skips one whole value (depth-limited). */
int mp_skip(struct mp_rd *r, int depth);
/* Validates that [data, len) is exactly one msgpack document within
 * WIRE_MAX_DEPTH whose ext values all have type 1. */
int mp_validate(const void *data, size_t len);
/*
 * The token list captured while validating. mp_validate_cap() decodes the
 * first array of at least MP_CAP_MIN elements that are all in the forms
 * encoders give token ids (positive fixint, uint8/16/32) into 32-bit values
 * as it validates them; an array with any other element (or too short) is
 * validated as by mp_validate() and not captured, and a later one may be.
 * Validation itself is unchanged: the same documents pass and fail with the
 * same errors. The decoder takes the captured values for the array at `at`
 * (wire_rd_u32_list) instead of reading it again; its result is the one it
 * would have read, since it reads those forms to the same values. The
 * values live in memory owned by *own (the request), so a document that
 * fails later leaves nothing behind but what the request frees.
 */
#define MP_CAP_MIN 64
struct mp_cap {
    struct wire_alloc **own; /* where the value buffer is allocated */
    uint32_t *buf;           /* values (reused by a later try if one failed) */
    uint32_t buf_n;          /* its capacity */
    const uint8_t *at;       /* the captured array's header; NULL: none yet */
    const uint8_t *end;      /* just past its last element */
    uint32_t n;              /* its element count */
};
/* mp_validate(), capturing into *cap (see struct mp_cap; cap->own set, the
 * rest zeroed by the caller). A failed allocation only skips the capture. */
int mp_validate_cap(const void *data, size_t len, struct mp_cap *cap);

/* Type of the first value in a frame without validating it; -1 if empty or
 * not a valid header. */
int mp_peek_type(const void *data, size_t len);

/* Reads up to n elements at r->p that are in a token id's forms (positive
 * fixint, uint8/16/32, whole) into v, stopping at the first that is not;
 * returns how many. Each is a whole valid scalar: what mp_validate() would
 * step over, read to the value mp_next() gives. */
uint32_t mp_rd_u32s(struct mp_rd *r, uint32_t *v, uint32_t n);

/* Integer conversions: 0 or -WIRE_ERANGE. */
int mp_obj_i64(const struct mp_obj *o, int64_t *v);

/* Writer. */
void mp_w_raw(struct wire_buf *b, const void *p, size_t n);
void mp_w_nil(struct wire_buf *b);
void mp_w_bool(struct wire_buf *b, bool v);
void mp_w_int(struct wire_buf *b, int64_t v);
void mp_w_uint(struct wire_buf *b, uint64_t v);
void mp_w_float(struct wire_buf *b, double v);
void mp_w_str(struct wire_buf *b, const char *p, size_t n);
void mp_w_cstr(struct wire_buf *b, const char *s);
void mp_w_bin(struct wire_buf *b, const void *p, size_t n);
void mp_w_array(struct wire_buf *b, uint32_t n);
void mp_w_map(struct wire_buf *b, uint32_t n);
void mp_w_ext(struct wire_buf *b, int8_t type, const void *p, size_t n);

#endif
