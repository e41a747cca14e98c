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
 * into an out-of-bounds read.
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
/* Type of the first value in a frame without validating it; -1 if empty or
 * not a valid header. */
int mp_peek_type(const void *data, size_t len);

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
